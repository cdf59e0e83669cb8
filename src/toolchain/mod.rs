//! The Python toolchain facebuild provisions for itself: a venv keyed by the pin set,
//! holding onnx, onnxruntime, onnxsim, onnxslim, openvino and nncf. Native libraries
//! (libonnxruntime, libopenvino_c) are loaded from these wheels, so one pin set decides
//! every version a step uses. The installed versions are written to `toolchain.json`
//! once, and read from there afterwards: a no-op run never starts Python.

pub(crate) mod tensorrt;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};

use crate::cache::{CacheKey, CacheKeyHasher, cache_key};
use crate::error::{Error, IoContext, Result};
use crate::manifest::ToolchainSpec;

/// Default pins. Exact versions: the cache key trusts them.
pub(crate) const DEFAULT_PINS: &[(&str, &str)] = &[
    ("onnx", "1.23.2"),
    ("onnxruntime", "1.32.0"),
    ("onnxsim", "0.8.1"),
    ("onnxslim", "0.1.98"),
    ("openvino", "2026.4.1"),
    ("nncf", "3.4.0"),
];

/// Bumped when the install procedure or the helper scripts change what an env contains.
const LAYOUT_VERSION: u32 = 1;

/// The Python packages facebuild's steps run with, pinned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pins {
    /// The Python interpreter that creates the environment.
    pub interpreter: String,
    /// Package -> pinned version.
    pub packages: BTreeMap<String, String>,
}

impl CacheKey for Pins {
    fn cache_key(&self, s: &mut CacheKeyHasher) {
        (LAYOUT_VERSION as u64).cache_key(s);
        self.interpreter.cache_key(s);
        self.packages.cache_key(s);
    }
}

impl Pins {
    /// The default pins with the manifest's overrides (and FACEBUILD_PYTHON).
    pub fn resolve(spec: &ToolchainSpec) -> Pins {
        let mut packages: BTreeMap<String, String> = DEFAULT_PINS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (k, v) in &spec.python {
            packages.insert(k.clone(), v.clone());
        }
        let interpreter = spec
            .interpreter
            .clone()
            .or_else(|| std::env::var("FACEBUILD_PYTHON").ok())
            .unwrap_or_else(|| "python3".into());
        Pins {
            interpreter,
            packages,
        }
    }

    /// A short id of the pins: the toolchain's folder name.
    pub fn id(&self) -> String {
        cache_key(self)[..16].to_string()
    }
}

/// What an installed environment holds, as recorded right after installing it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolchainInfo {
    pub python_version: String,
    pub platform: String,
    /// Every installed distribution (name lower-cased) -> version.
    pub packages: BTreeMap<String, String>,
    pub onnxruntime_library: Option<Utf8PathBuf>,
    pub openvino_c_library: Option<Utf8PathBuf>,
    pub openvino_libs_dir: Option<Utf8PathBuf>,
    pub bin_dir: Utf8PathBuf,
}

/// An installed toolchain: a venv with the pinned packages and their native libraries.
#[derive(Debug, Clone)]
pub struct Toolchain {
    /// What it was installed from.
    pub pins: Pins,
    /// Its folder.
    pub dir: Utf8PathBuf,
    /// The versions and library paths recorded at install.
    pub info: ToolchainInfo,
}

pub(crate) fn root_dir(cache_dir: &Utf8Path) -> Utf8PathBuf {
    match std::env::var("FACEBUILD_TOOLCHAIN_DIR") {
        Ok(d) if !d.is_empty() => Utf8PathBuf::from(d),
        _ => cache_dir.join("toolchains"),
    }
}

pub(crate) fn env_dir(cache_dir: &Utf8Path, pins: &Pins) -> Utf8PathBuf {
    root_dir(cache_dir).join(pins.id())
}

impl Toolchain {
    /// The installed toolchain for these pins, or None when it is not installed yet.
    pub fn find(cache_dir: &Utf8Path, pins: &Pins) -> Option<Toolchain> {
        let dir = env_dir(cache_dir, pins);
        let bytes = std::fs::read(dir.join("toolchain.json")).ok()?;
        let info: ToolchainInfo = serde_json::from_slice(&bytes).ok()?;
        Some(Toolchain {
            pins: pins.clone(),
            dir,
            info,
        })
    }

    /// The installed toolchain in `dir` (for child processes handed its folder).
    pub fn at(dir: &Utf8Path) -> Result<Toolchain> {
        let read = |f: &str| std::fs::read(dir.join(f)).fs_context(dir.join(f));
        let info: ToolchainInfo = serde_json::from_slice(&read("toolchain.json")?)
            .map_err(|e| Error::toolchain(format!("{dir}/toolchain.json: {e}")))?;
        let pins: Pins = serde_json::from_slice(&read("pins.json")?)
            .map_err(|e| Error::toolchain(format!("{dir}/pins.json: {e}")))?;
        Ok(Toolchain {
            pins,
            dir: dir.to_owned(),
            info,
        })
    }

    /// Find or install. Installation is serialized by a file lock so parallel runs (or
    /// parallel tests) sharing a toolchain dir install it once.
    pub fn ensure(cache_dir: &Utf8Path, pins: &Pins) -> Result<Toolchain> {
        if let Some(t) = Self::find(cache_dir, pins) {
            return Ok(t);
        }
        let root = root_dir(cache_dir);
        std::fs::create_dir_all(&root).fs_context(&root)?;
        let lock_path = root.join(format!("{}.lock", pins.id()));
        let lock = std::fs::File::create(&lock_path).fs_context(&lock_path)?;
        lock.lock().fs_context(&lock_path)?;
        if let Some(t) = Self::find(cache_dir, pins) {
            return Ok(t);
        }
        let result = install(&env_dir(cache_dir, pins), pins);
        let _ = lock.unlock();
        result?;
        Self::find(cache_dir, pins)
            .ok_or_else(|| Error::toolchain("installation finished but toolchain.json is missing"))
    }

    /// The venv's Python.
    pub fn python(&self) -> Utf8PathBuf {
        self.dir.join("venv/bin/python")
    }

    /// The installed version of `package`.
    pub fn version(&self, package: &str) -> Option<&str> {
        self.info.packages.get(package).map(String::as_str)
    }

    /// The versions a step depends on, for its cache key and the lockfile. The platform and
    /// Python version are always part of it: kernels differ by ISA and interpreter.
    pub fn fingerprint(&self, pieces: &[&str]) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("python".into(), self.info.python_version.clone());
        m.insert("platform".into(), self.info.platform.clone());
        for p in pieces {
            m.insert(
                (*p).to_string(),
                self.version(p).unwrap_or("missing").to_string(),
            );
        }
        m
    }

    /// Run one of facebuild's helper scripts in the toolchain's Python. The script prints one
    /// JSON object on its last stdout line; a failure carries the script's stderr tail.
    /// Run a helper script; its last JSON line is its answer, parsed as `T`.
    pub fn run_script<T: serde::de::DeserializeOwned>(
        &self,
        script: &str,
        args: &[&str],
        what: &str,
    ) -> Result<T> {
        let out = Command::new(self.python())
            .arg("-c")
            .arg(script)
            .args(args)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                Error::toolchain(format!("cannot start {}: {e}", self.python()))
                    .with_hint("run `facebuild toolchain install` to (re)create the environment")
            })?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let tail: Vec<&str> = stderr
                .lines()
                .rev()
                .take(12)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            return Err(
                anyhow::anyhow!("{what} failed ({}):\n{}", out.status, tail.join("\n")).into(),
            );
        }
        let last = stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .unwrap_or("");
        serde_json::from_str(last).map_err(|e| {
            anyhow::anyhow!("{what}: unreadable helper output ({e}): {}", stdout.trim()).into()
        })
    }
}

fn install(dir: &Utf8Path, pins: &Pins) -> Result<()> {
    // Installed in place (a venv cannot be moved: its console scripts such as `ovc` hard-code
    // its path); `toolchain.json`, written last, marks it complete.
    let partial = dir.to_owned();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).fs_context(dir)?;
    let pb = crate::report::progress::spinner(format!(
        "toolchain {}: creating Python environment",
        pins.id()
    ));
    let venv = partial.join("venv");
    let status = Command::new(&pins.interpreter)
        .args(["-m", "venv"])
        .arg(&venv)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| {
            Error::toolchain(format!("cannot run `{}`: {e}", pins.interpreter)).with_hint("install Python 3.11 (python3 with venv), or set FACEBUILD_PYTHON / `toolchain.interpreter`")
        })?;
    if !status.success() {
        return Err(Error::toolchain(format!(
            "`{} -m venv {venv}` failed ({status})",
            pins.interpreter
        ))
        .with_hint("install the venv module (Debian: apt-get install python3-venv)"));
    }
    let reqs: Vec<String> = pins
        .packages
        .iter()
        .map(|(k, v)| format!("{k}=={v}"))
        .collect();
    pb.set_message(format!(
        "toolchain {}: pip install {}",
        pins.id(),
        reqs.join(" ")
    ));
    let mut child = Command::new(venv.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
        ])
        .args(&reqs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::toolchain(format!("cannot run pip: {e}")))?;
    let stderr = child.stderr.take().expect("piped");
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        for l in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            s.push_str(&l);
            s.push('\n');
        }
        s
    });
    for line in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(|l| l.ok())
    {
        let l = line.trim();
        if l.starts_with("Collecting")
            || l.starts_with("Installing")
            || l.starts_with("Successfully")
        {
            crate::report::progress::note(&pb, &format!("toolchain: {l}"));
            pb.set_message(format!("toolchain {}: {l}", pins.id()));
        }
    }
    let status = child
        .wait()
        .map_err(|e| Error::toolchain(format!("pip: {e}")))?;
    let err = err_thread.join().unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = err
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(Error::toolchain(format!("pip install failed ({status}):\n{}", tail.join("\n")))
            .with_hint("check that PyPI is reachable and the pinned versions exist (`pip index versions NAME`); pins live under `toolchain.python` in the manifest"));
    }
    pb.set_message("toolchain: recording versions");
    let out = Command::new(venv.join("bin/python"))
        .arg("-c")
        .arg(include_str!("python/describe.py"))
        .output()
        .map_err(|e| Error::toolchain(format!("describe: {e}")))?;
    if !out.status.success() {
        return Err(Error::toolchain(format!(
            "toolchain self-description failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let info: ToolchainInfo = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::toolchain(format!("describe output: {e}")))?;
    std::fs::write(
        partial.join("pins.json"),
        serde_json::to_vec_pretty(pins).map_err(anyhow::Error::from)?,
    )
    .fs_context(&partial)?;
    let json = serde_json::to_vec_pretty(&info).map_err(anyhow::Error::from)?;
    crate::cache::store::write_atomic(&partial.join("toolchain.json"), &json)?;
    pb.finish_and_clear();
    eprintln!("toolchain {} installed at {dir}", pins.id());
    Ok(())
}
