//! The Python toolchain facebuild provisions for itself: a venv holding onnx, onnxruntime,
//! onnxsim, onnxslim, openvino and nncf and every package they pull in, installed from a
//! hash-locked requirements file (`uv pip compile --universal --generate-hashes`) with
//! `uv pip sync --require-hashes`. The lock for the default pins ships inside facebuild;
//! `facebuild toolchain lock FILE` writes one beside a manifest with custom pins. The
//! toolchain's id, and so every cache key, is the hash of the lock and the interpreter: two
//! machines with the same id run the same bytes of every Python package, which is what a
//! shared cache needs. Native libraries (libonnxruntime, libopenvino_c) are loaded from these
//! wheels. The installed versions are written to `toolchain.json` once, and read from there
//! afterwards: a no-op run never starts Python.

use facebuild_base::{error, progress};
use facebuild_cache as cache;

pub mod tensorrt;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use camino::{Utf8Path, Utf8PathBuf};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::cache::{CacheKey, CacheKeyHasher, cache_key};
use crate::error::{Error, IoContext, Result};

/// Default pins. Exact versions: the cache key trusts them.
pub const DEFAULT_PINS: &[(&str, &str)] = &[
    ("onnx", "1.23.2"),
    ("onnxruntime", "1.32.0"),
    ("onnxsim", "0.8.1"),
    ("onnxslim", "0.1.98"),
    ("openvino", "2026.4.1"),
    ("nncf", "3.4.0"),
];

/// Bumped when the install procedure or the helper scripts change what an env contains
/// (2: installed from a hash-locked requirements file).
const LAYOUT_VERSION: u32 = 2;

/// The hash-locked requirements of the default pins: every package, with the sha256 of
/// each of its wheels. Regenerate with `facebuild toolchain lock > crates/facebuild-toolchain/src/python/toolchain.lock`.
pub const DEFAULT_LOCK: &str = include_str!("python/toolchain.lock");

/// The helper scripts the steps run in the toolchain's Python, kept beside the lock they run
/// under (`python/`).
pub mod scripts {
    /// `check`: the ONNX checker and an ONNX Runtime load.
    pub const CHECK: &str = include_str!("python/check.py");
    /// `simplify`: onnxsim/onnxslim and the equivalence proof.
    pub const SIMPLIFY: &str = include_str!("python/simplify.py");
    /// `convert`: NNCF INT8 quantization.
    pub const QUANTIZE: &str = include_str!("python/quantize.py");
    /// `quantize`: ONNX Runtime's Q/DQ quantization.
    pub const QDQ: &str = include_str!("python/qdq.py");
    /// TensorRT's persistent benchmark worker.
    pub const TRT_WORKER: &str = include_str!("python/trt_worker.py");
}

/// The uv that installs toolchains and writes locks (itself from PyPI, pinned).
pub const UV_VERSION: &str = "0.13.9";

/// The Python packages facebuild's steps run with, pinned, and their lock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pins {
    /// The Python interpreter that creates the environment.
    pub interpreter: String,
    /// Package -> pinned version (the top-level requirements).
    pub packages: BTreeMap<String, String>,
    /// The hash-locked requirements of every package; None for custom pins whose lock has
    /// not been written yet (`facebuild toolchain lock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<String>,
    /// Where the lock came from: `built-in`, or the lock file beside the manifest.
    #[serde(default)]
    pub lock_source: String,
}

impl CacheKey for Pins {
    fn cache_key(&self, s: &mut CacheKeyHasher) {
        (LAYOUT_VERSION as u64).cache_key(s);
        self.interpreter.cache_key(s);
        match &self.lock {
            // The lock names every package and every file's hash: it is the toolchain.
            Some(l) => l.cache_key(s),
            None => self.packages.cache_key(s),
        }
    }
}

/// The `# pins:` line a lock records: what it was compiled from.
fn pins_line(packages: &BTreeMap<String, String>) -> String {
    let reqs: Vec<String> = packages.iter().map(|(k, v)| format!("{k}=={v}")).collect();
    format!("# pins: {}", reqs.join(" "))
}

impl Pins {
    /// The default pins with the manifest's overrides; `python` is the interpreter when
    /// the manifest names none (settings: `FACEBUILD_PYTHON`).
    pub fn resolve(spec: &ToolchainSpec, python: Option<&str>) -> Pins {
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
            .or_else(|| python.map(String::from))
            .unwrap_or_else(|| "python3".into());
        // The built-in lock holds for the default pins only.
        let default = DEFAULT_LOCK.lines().any(|l| l == pins_line(&packages));
        Pins {
            interpreter,
            packages,
            lock: default.then(|| DEFAULT_LOCK.to_string()),
            lock_source: if default { "built-in" } else { "" }.into(),
        }
    }

    /// Where a manifest's own lock lives: `<manifest stem>.toolchain.lock` beside it.
    pub fn lock_path(manifest: &Utf8Path) -> Utf8PathBuf {
        manifest.with_extension("toolchain.lock")
    }

    /// The manifest's pins with their lock: the built-in one for the default pins, else the
    /// lock file beside the manifest, which must have been written for exactly these pins.
    pub fn for_manifest(
        spec: &ToolchainSpec,
        manifest: &Utf8Path,
        python: Option<&str>,
    ) -> Result<Pins> {
        let mut p = Pins::resolve(spec, python);
        if p.lock.is_some() {
            return Ok(p);
        }
        let path = Pins::lock_path(manifest);
        if let Ok(text) = std::fs::read_to_string(&path) {
            if !text.lines().any(|l| l == pins_line(&p.packages)) {
                return Err(Error::toolchain(format!(
                    "{path} was locked for other pins than `toolchain.python` in {manifest}"
                ))
                .with_hint(format!(
                    "regenerate it: `facebuild toolchain lock {manifest}`"
                )));
            }
            p.lock = Some(text);
            p.lock_source = path.to_string();
        }
        Ok(p)
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

/// Where toolchains live and how they are installed, as settings resolved them
/// (`FACEBUILD_TOOLCHAIN_DIR`, `FACEBUILD_TOOLCHAIN_INSTALLER`, `FACEBUILD_PYTHON`).
#[derive(Debug, Clone)]
pub struct Place {
    /// The folder holding one environment per pins id.
    pub root: Utf8PathBuf,
    /// Install with pip's hash-checking mode instead of uv.
    pub pip: bool,
    /// The interpreter when a manifest names none.
    pub python: Option<String>,
}

impl Place {
    /// The default: `toolchains/` in the cache, installed with uv, `python3`.
    pub fn under(cache_dir: &Utf8Path) -> Place {
        Place {
            root: cache_dir.join("toolchains"),
            pip: false,
            python: None,
        }
    }

    /// The environment folder for these pins.
    pub fn env_dir(&self, pins: &Pins) -> Utf8PathBuf {
        self.root.join(pins.id())
    }
}

impl Toolchain {
    /// The installed toolchain for these pins, or None when it is not installed yet.
    pub fn find(place: &Place, pins: &Pins) -> Option<Toolchain> {
        let dir = place.env_dir(pins);
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
    pub fn ensure(place: &Place, pins: &Pins) -> Result<Toolchain> {
        if let Some(t) = Self::find(place, pins) {
            return Ok(t);
        }
        if pins.lock.is_none() {
            return Err(Error::toolchain(
                "custom `toolchain.python` pins have no lock: every package must be hash-locked before it is installed",
            )
            .with_hint("write the lock beside the manifest: `facebuild toolchain lock <manifest>`, and commit it"));
        }
        let root = &place.root;
        std::fs::create_dir_all(root).fs_context(root)?;
        let lock_path = root.join(format!("{}.lock", pins.id()));
        let lock = std::fs::File::create(&lock_path).fs_context(&lock_path)?;
        lock.lock().fs_context(&lock_path)?;
        if let Some(t) = Self::find(place, pins) {
            return Ok(t);
        }
        let result = install(&place.env_dir(pins), pins, place.pip);
        let _ = lock.unlock();
        result?;
        Self::find(place, pins)
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
            return Err(helper_failure(what, &out.status.to_string(), &stderr));
        }
        let last = stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .unwrap_or("");
        let value: serde_json::Value = serde_json::from_str(last).map_err(|e| {
            anyhow::anyhow!(
                "{what}: the helper printed no JSON answer ({e}); it printed: {}",
                stdout.trim()
            )
        })?;
        read_answer(value, what)
    }
}

/// A helper's JSON answer as `T`; where it does not fit, the error says where and what
/// facebuild expected there, in words, with the answer.
pub fn read_answer<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    what: &str,
) -> Result<T> {
    let shown = value.to_string();
    serde_path_to_error::deserialize(value).map_err(|e| {
        let at = e.path().to_string();
        Error::toolchain(format!(
            "{what}: facebuild cannot read the helper's answer at `{at}`: {}; the answer was {}",
            e.inner(),
            if shown.len() > 2000 {
                &shown[..shown.floor_char_boundary(2000)]
            } else {
                &shown
            },
        ))
        .with_hint("this is a facebuild bug: report it with the model, and the answer above")
    })
}

/// A helper's failure as a value: the exception's last line, the innermost frame, and the
/// likely cause of failures facebuild knows; the whole stderr as the traceback.
pub fn helper_failure(what: &str, status: &str, stderr: &str) -> Error {
    let lines: Vec<&str> = stderr.lines().collect();
    // The exception is the last line that is not indented, after a traceback.
    let exception = lines
        .iter()
        .rev()
        .map(|l| l.trim_end())
        .find(|l| !l.is_empty() && !l.starts_with(' ') && !l.starts_with("facebuild:"))
        .map(str::to_string)
        .unwrap_or_else(|| format!("the helper exited with {status} and no message"));
    // `  File "/.../symbolic_shape_infer.py", line 1224, in _infer_Expand`
    let origin = lines.iter().rev().find_map(|l| {
        let rest = l.trim_start().strip_prefix("File \"")?;
        let (file, rest) = rest.split_once("\", line ")?;
        let (line, func) = rest.split_once(", in ").unwrap_or((rest, "?"));
        let file = file.rsplit('/').next().unwrap_or(file);
        Some(format!("{file}:{line} in {func}"))
    });
    Error::Helper {
        what: what.to_string(),
        hint: likely_cause(stderr, &exception),
        exception,
        origin,
        traceback: stderr.to_string(),
    }
}

/// The likely cause and fix of helper failures seen on real models.
fn likely_cause(stderr: &str, exception: &str) -> Option<String> {
    let hint = if stderr.contains("symbolic_shape_infer") {
        "ONNX Runtime's symbolic shape inference cannot follow this graph: simplify the model first (`from: simplify`), or give its input a static shape"
    } else if exception.starts_with("KeyError") && exception.contains("_scale") {
        "the model already holds quantized operators: quantizing it again fails; build FP32/FP16 artifacts of it instead (`facebuild init` leaves INT8 steps out for such models)"
    } else if exception.starts_with("ModuleNotFoundError") || exception.starts_with("ImportError") {
        "the toolchain's environment is incomplete: run `facebuild toolchain install`"
    } else if exception.starts_with("MemoryError") || stderr.contains("std::bad_alloc") {
        "the helper ran out of memory: fewer calibration items (`count:`) or a smaller model"
    } else if exception.contains("opset") || exception.contains("Opset") {
        "the model's opset is outside what the toolchain's onnx supports: re-export it at opset 13 to 19"
    } else {
        return None;
    };
    Some(hint.to_string())
}

/// The pinned uv, installed once per toolchain root from PyPI into its own venv.
fn ensure_uv(
    interpreter: &str,
    root: &Utf8Path,
    pb: &indicatif::ProgressBar,
) -> Result<Utf8PathBuf> {
    let home = root.join(format!("uv-{UV_VERSION}"));
    let uv = home.join("bin/uv");
    if uv.exists() {
        return Ok(uv);
    }
    pb.set_message(format!("installing uv {UV_VERSION}"));
    let _ = std::fs::remove_dir_all(&home);
    let run = |c: &mut Command, what: &str| -> Result<()> {
        let out = c
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::toolchain(format!("{what}: {e}")))?;
        if !out.status.success() {
            return Err(Error::toolchain(format!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
            .with_hint("uv comes from PyPI: check that PyPI is reachable"));
        }
        Ok(())
    };
    run(
        Command::new(interpreter).args(["-m", "venv"]).arg(&home),
        "creating uv's environment",
    )?;
    run(
        Command::new(home.join("bin/python")).args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            &format!("uv=={UV_VERSION}"),
        ]),
        "installing uv",
    )?;
    Ok(uv)
}

/// Compile a hash-locked requirements file for `pins` with uv: universal (every platform's
/// wheels, with markers) for the interpreter's Python version. Returns the lock's text.
pub fn lock(pins: &Pins, root: &Utf8Path) -> Result<String> {
    std::fs::create_dir_all(root).fs_context(root)?;
    let pb = progress::spinner("locking the toolchain");
    let uv = ensure_uv(&pins.interpreter, root, &pb)?;
    let version = Command::new(&pins.interpreter)
        .args([
            "-c",
            "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')",
        ])
        .output()
        .map_err(|e| Error::toolchain(format!("cannot run `{}`: {e}", pins.interpreter)))?;
    let py = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let tmp = tempfile::tempdir_in(root).fs_context(root)?;
    let reqs = tmp.path().join("requirements.in");
    let body: String = pins
        .packages
        .iter()
        .map(|(k, v)| format!("{k}=={v}\n"))
        .collect();
    std::fs::write(&reqs, body).map_err(|e| Error::toolchain(format!("{e}")))?;
    pb.set_message(format!("uv pip compile for Python {py}"));
    let out = Command::new(&uv)
        .args([
            "pip",
            "compile",
            "--universal",
            "--generate-hashes",
            "--no-header",
            "--quiet",
            "--python-version",
            &py,
        ])
        .arg(&reqs)
        .env("UV_PYTHON_DOWNLOADS", "never")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::toolchain(format!("cannot run uv: {e}")))?;
    pb.finish_and_clear();
    if !out.status.success() {
        return Err(Error::toolchain(format!(
            "uv pip compile failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
        .with_hint("check the pins under `toolchain.python` exist on PyPI"));
    }
    Ok(format!(
        "# facebuild toolchain lock: uv {UV_VERSION} pip compile --universal --generate-hashes --python-version {py}\n{}\n{}",
        pins_line(&pins.packages),
        String::from_utf8_lossy(&out.stdout)
    ))
}

fn install(dir: &Utf8Path, pins: &Pins, pip: bool) -> Result<()> {
    // Installed in place (a venv cannot be moved: its console scripts such as `ovc` hard-code
    // its path); `toolchain.json`, written last, marks it complete.
    let partial = dir.to_owned();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).fs_context(dir)?;
    let pb = progress::spinner(format!(
        "toolchain {}: creating Python environment",
        pins.id()
    ));
    let venv = partial.join("venv");

    create_venv(pins, &venv, pip)?;
    let lock = pins.lock.as_deref().expect("checked by ensure");
    let lock_file = partial.join("toolchain.lock");
    std::fs::write(&lock_file, lock).fs_context(&lock_file)?;
    let cmd = if pip {
        // The slower path, kept for comparison and for machines where uv cannot run:
        // pip's hash-checking mode installs the same locked files.
        let mut c = Command::new(venv.join("bin/python"));
        c.args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
            "--require-hashes",
            "--no-deps",
            "-r",
        ])
        .arg(&lock_file);
        c
    } else {
        let uv = ensure_uv(&pins.interpreter, dir.parent().unwrap_or(dir), &pb)?;
        let mut c = Command::new(uv);
        c.args(["pip", "sync", "--require-hashes", "--python"])
            .arg(venv.join("bin/python"))
            .arg(&lock_file)
            // Never a Python from elsewhere: the venv's interpreter is the toolchain's.
            .env("UV_PYTHON_DOWNLOADS", "never")
            .env("UV_NO_PROGRESS", "1");
        c
    };
    pb.set_message(format!(
        "toolchain {}: installing {} locked packages ({})",
        pins.id(),
        lock.lines()
            .filter(|l| l.contains("==") && !l.starts_with('#'))
            .count(),
        if pip { "pip" } else { "uv" }
    ));
    run_installer(cmd, pins, &pb)?;
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
    cache::store::write_atomic(&partial.join("toolchain.json"), &json)?;
    pb.finish_and_clear();
    eprintln!("toolchain {} installed at {dir}", pins.id());
    Ok(())
}

/// The toolchain's venv, made by the pinned interpreter (without pip when uv installs).
fn create_venv(pins: &Pins, venv: &Utf8Path, pip: bool) -> Result<()> {
    let status = Command::new(&pins.interpreter)
        .args(["-m", "venv"])
        // uv installs into the venv from outside it: no pip to bootstrap.
        .args((!pip).then_some("--without-pip"))
        .arg(venv)
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
    Ok(())
}

/// Run the installer, showing what it collects and installs; its stderr's tail is the error.
fn run_installer(mut cmd: Command, pins: &Pins, pb: &indicatif::ProgressBar) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::toolchain(format!("cannot run the installer: {e}")))?;
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
            progress::note(pb, &format!("toolchain: {l}"));
            pb.set_message(format!("toolchain {}: {l}", pins.id()));
        }
    }
    let status = child
        .wait()
        .map_err(|e| Error::toolchain(format!("installer: {e}")))?;
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
        return Err(Error::toolchain(format!("installing the locked toolchain failed ({status}):\n{}", tail.join("\n")))
            .with_hint("check that PyPI is reachable; a hash mismatch means a file on the index changed since the lock was written (`facebuild toolchain lock` rewrites it)"));
    }
    Ok(())
}

/// The manifest's `toolchain:` block.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ToolchainSpec {
    /// Python packages to pin, `name: version`; merged over facebuild's defaults.
    #[serde(default)]
    pub python: IndexMap<String, String>,
    /// The Python interpreter used to create the environment (default `python3`).
    #[serde(default)]
    pub interpreter: Option<String>,
    /// Where TensorRT is (it cannot be installed from PyPI): see docs/tensorrt.md.
    #[serde(default)]
    pub tensorrt: Option<tensorrt::TensorRtSpec>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The failure of issue 28 (ONNX Runtime's symbolic shape inference on a PyTorch opset 19
    /// export): the exception, where, and the likely cause; the traceback kept apart.
    #[test]
    fn a_python_traceback_becomes_a_located_error() {
        let stderr = r#"Traceback (most recent call last):
  File "<string>", line 60, in <module>
  File "/venv/lib/python3.11/site-packages/onnxruntime/quantization/shape_inference.py", line 81, in quant_pre_process
    model = SymbolicShapeInference.infer_shapes(
  File "/venv/lib/python3.11/site-packages/onnxruntime/tools/symbolic_shape_infer.py", line 1224, in _infer_Expand
    if len(new_shape) < len(input_shape):
TypeError: object of type 'NoneType' has no len()
"#;
        let e = helper_failure("Q/DQ quantization", "exit status: 1", stderr);
        let Error::Helper {
            exception,
            origin,
            traceback,
            ..
        } = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!(
            exception,
            "TypeError: object of type 'NoneType' has no len()"
        );
        assert_eq!(
            origin.as_deref(),
            Some("symbolic_shape_infer.py:1224 in _infer_Expand")
        );
        assert_eq!(traceback, stderr);
        let text = e.to_string();
        assert!(!text.contains("Traceback"), "{text}");
        assert!(
            text.contains("symbolic shape inference cannot follow"),
            "{text}"
        );
        // Nothing on stderr at all is still a message.
        let e = helper_failure("x", "signal: 9 (SIGKILL)", "");
        assert!(e.to_string().contains("exited with signal: 9"), "{e}");
    }
}
