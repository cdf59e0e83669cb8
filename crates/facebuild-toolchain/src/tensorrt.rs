//! TensorRT discovery and fingerprint. TensorRT cannot be provisioned from PyPI (its wheels
//! download the libraries from NVIDIA's own host), so facebuild finds an installed one:
//! `toolchain.tensorrt` in the manifest, then `$TENSORRT_HOME/bin/trtexec`, then `trtexec`
//! on PATH; the GPU comes from `nvidia-smi`. TensorRT version, CUDA version, driver, GPU
//! name and compute capability all enter the cache key of every TensorRT step, so an engine
//! built for one GPU class or TensorRT version is never reused for another.
//!
//! What is found is memoized under the cache, keyed by the executables' paths and stats, so
//! a no-op run does not start trtexec or nvidia-smi.
//!
//! Tests exercise the orchestration with a stand-in trtexec (a script that prints
//! [`STANDIN_MARKER`]). A stand-in is refused unless `FACEBUILD_ALLOW_TRTEXEC_STANDIN=1`,
//! and everything built with one is labelled as such: nothing claims a TensorRT result that
//! no TensorRT produced.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Printed by the test stand-in for trtexec; never by TensorRT.
pub const STANDIN_MARKER: &str = "FACEBUILD-TEST-STANDIN";
pub const ALLOW_STANDIN_ENV: &str = "FACEBUILD_ALLOW_TRTEXEC_STANDIN";

/// `toolchain.tensorrt` in the manifest.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TensorRtSpec {
    /// The trtexec executable (default: `$TENSORRT_HOME/bin/trtexec`, else PATH).
    #[serde(default)]
    pub trtexec: Option<Utf8PathBuf>,
    /// A Python with the `tensorrt` module and `cuda-python`, to run engines (default: the
    /// Python of the toolchain, which has none unless you installed it there).
    #[serde(default)]
    pub python: Option<Utf8PathBuf>,
}

/// What was found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TensorRt {
    pub trtexec: Utf8PathBuf,
    /// e.g. "10.3.0"
    pub version: String,
    pub cuda: String,
    pub driver: String,
    pub gpu: String,
    pub compute_capability: String,
    /// True for the test stand-in: results are labelled, never passed off as TensorRT's.
    pub standin: bool,
}

impl TensorRt {
    /// The cache-key fingerprint of every TensorRT step.
    pub fn fingerprint(&self) -> BTreeMap<String, String> {
        let version = if self.standin {
            format!("{} (test stand-in)", self.version)
        } else {
            self.version.clone()
        };
        fingerprint(
            version,
            self.cuda.clone(),
            self.driver.clone(),
            self.gpu.clone(),
            self.compute_capability.clone(),
        )
    }

    /// "TensorRT 10.3.0 on NVIDIA A100 (sm 8.0), CUDA 12.4, driver 550.54"
    pub fn describe(&self) -> String {
        let s = format!(
            "TensorRT {} on {} (sm {}), CUDA {}, driver {}",
            self.version, self.gpu, self.compute_capability, self.cuda, self.driver
        );
        if self.standin {
            format!("{s} [TEST STAND-IN, not TensorRT]")
        } else {
            s
        }
    }
}

/// The TensorRT part of a cache key, by the names every key uses: what discovery finds here
/// and what a GPU class declares must produce the same map for the same machine.
pub fn fingerprint(
    tensorrt: String,
    cuda: String,
    driver: String,
    gpu: String,
    compute_capability: String,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("tensorrt".to_string(), tensorrt),
        ("cuda".to_string(), cuda),
        ("nvidia_driver".to_string(), driver),
        ("gpu".to_string(), gpu),
        ("compute_capability".to_string(), compute_capability),
    ])
}

/// Why TensorRT cannot be used here, in words for `unavailable: ...`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

impl From<String> for Unavailable {
    fn from(why: String) -> Unavailable {
        Unavailable(why)
    }
}

/// Discovery's answer: found, or what is missing.
pub type Discovery = std::result::Result<TensorRt, Unavailable>;

fn on_path(exe: &str) -> Option<Utf8PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter_map(|d| Utf8PathBuf::from_path_buf(d.join(exe)).ok())
        .find(|p| is_executable(p))
}

fn is_executable(p: &Utf8Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Where trtexec is, by the documented order, or why none was found.
pub fn locate_trtexec(
    spec: Option<&TensorRtSpec>,
    manifest_dir: &Utf8Path,
    home: Option<&Utf8Path>,
) -> std::result::Result<Utf8PathBuf, Unavailable> {
    if let Some(p) = spec.and_then(|s| s.trtexec.as_ref()) {
        let p = if p.is_absolute() {
            p.clone()
        } else {
            manifest_dir.join(p)
        };
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(Unavailable(format!(
                "`toolchain.tensorrt.trtexec` names {p}, which is not an executable file"
            )))
        };
    }
    if let Some(home) = home {
        let p = home.join("bin/trtexec");
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(Unavailable(format!(
                "TENSORRT_HOME is set but {p} is not an executable file"
            )))
        };
    }
    on_path("trtexec").ok_or_else(|| "trtexec not found (no `toolchain.tensorrt.trtexec`, no TENSORRT_HOME, not on PATH); TensorRT engines are built on an NVIDIA GPU machine with TensorRT installed, see docs/tensorrt.md".to_string().into())
}

/// "[TensorRT v100300]" -> "10.3.0"; 8.x prints "[TensorRT v8601]" -> "8.6.1".
pub fn parse_version_banner(text: &str) -> Option<String> {
    let start = text.find("[TensorRT v")? + "[TensorRT v".len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let n: u64 = digits.parse().ok()?;
    Some(if n >= 100_000 {
        format!("{}.{}.{}", n / 10_000, (n / 100) % 100, n % 100)
    } else {
        format!("{}.{}.{}", n / 1000, (n / 100) % 10, n % 100)
    })
}

/// `nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader`, first GPU.
pub fn parse_gpu_query(csv: &str) -> Option<(String, String, String)> {
    let line = csv.lines().find(|l| !l.trim().is_empty())?;
    let f: Vec<&str> = line.split(',').map(str::trim).collect();
    (f.len() >= 3).then(|| (f[0].to_string(), f[1].to_string(), f[2].to_string()))
}

/// "CUDA Version: 12.4" from nvidia-smi's banner.
pub fn parse_cuda_version(banner: &str) -> Option<String> {
    let i = banner.find("CUDA Version:")? + "CUDA Version:".len();
    banner[i..]
        .split_whitespace()
        .next()
        .map(|s| s.trim_end_matches('|').to_string())
}

fn run(exe: &Utf8Path, args: &[&str]) -> std::result::Result<String, Unavailable> {
    let out = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Unavailable(format!("cannot run {exe}: {e}")))?;
    // trtexec prints its banner even when it exits non-zero (e.g. `--help` on some versions).
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

#[derive(Serialize, Deserialize)]
struct Memo {
    stamp: String,
    found: TensorRt,
}

/// What the memo is valid for: the executables (an upgrade changes them), the GPU selection,
/// and this boot of this host (a GPU swap needs a reboot; a cache folder shared between
/// machines must not hand one machine's GPU to another).
fn stamp(paths: &[&Utf8Path]) -> String {
    use std::os::unix::fs::MetadataExt;
    let mut parts: Vec<String> = paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .map(|m| format!("{p}:{}:{}:{}", m.len(), m.mtime(), m.ino()))
                .unwrap_or_else(|_| format!("{p}:missing"))
        })
        .collect();
    parts.push(format!("gpu:{}", selected_gpu().unwrap_or_default()));
    let read = |f: &str| {
        std::fs::read_to_string(f)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    parts.push(format!(
        "host:{}:{}",
        read("/proc/sys/kernel/hostname"),
        read("/proc/sys/kernel/random/boot_id")
    ));
    parts.join("|")
}

/// The GPU CUDA will use first: the first entry of CUDA_VISIBLE_DEVICES (an index or UUID).
fn selected_gpu() -> Option<String> {
    let v = std::env::var("CUDA_VISIBLE_DEVICES").ok()?;
    v.split(',')
        .next()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

/// Find TensorRT and describe it, memoized in `<cache>/tensorrt/found.json`.
/// `home` is `TENSORRT_HOME` as settings read it.
pub fn discover(
    spec: Option<&TensorRtSpec>,
    manifest_dir: &Utf8Path,
    cache_dir: &Utf8Path,
    home: Option<&Utf8Path>,
) -> Discovery {
    let trtexec = locate_trtexec(spec, manifest_dir, home)?;
    let smi = on_path("nvidia-smi").ok_or_else(|| format!("found {trtexec}, but nvidia-smi is not on PATH: no NVIDIA driver, so no GPU to build for"))?;
    let stamp = stamp(&[&trtexec, &smi]);
    let memo_path = cache_dir.join("tensorrt").join("found.json");
    if let Some(m) = std::fs::read(&memo_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Memo>(&b).ok())
        && m.stamp == stamp
        && m.found.trtexec == trtexec
    {
        return check_standin(m.found);
    }
    let banner = run(&trtexec, &["--help"])?;
    let version = parse_version_banner(&banner).ok_or_else(|| format!("{trtexec} did not print a TensorRT version banner (`[TensorRT vNNNNNN]`); is it trtexec?"))?;
    let standin = banner.contains(STANDIN_MARKER);
    let mut query = vec![
        "--query-gpu=name,driver_version,compute_cap".to_string(),
        "--format=csv,noheader".to_string(),
    ];
    if let Some(g) = selected_gpu() {
        query.extend(["-i".to_string(), g]);
    }
    let query: Vec<&str> = query.iter().map(String::as_str).collect();
    let (gpu, driver, cc) = parse_gpu_query(&run(&smi, &query)?).ok_or_else(|| {
        "nvidia-smi lists no GPU (or not the one CUDA_VISIBLE_DEVICES selects)".to_string()
    })?;
    let cuda = parse_cuda_version(&run(&smi, &[])?).unwrap_or_else(|| "unknown".into());
    let found = TensorRt {
        trtexec,
        version,
        cuda,
        driver,
        gpu,
        compute_capability: cc,
        standin,
    };
    if let Ok(bytes) = serde_json::to_vec_pretty(&Memo {
        stamp,
        found: found.clone(),
    }) {
        let _ = crate::cache::store::write_atomic(&memo_path, &bytes);
    }
    check_standin(found)
}

fn check_standin(t: TensorRt) -> Discovery {
    if t.standin && std::env::var(ALLOW_STANDIN_ENV).as_deref() != Ok("1") {
        return Err(Unavailable(format!(
            "{} is facebuild's test stand-in for trtexec, not TensorRT; it runs only in facebuild's tests ({ALLOW_STANDIN_ENV}=1)",
            t.trtexec
        )));
    }
    Ok(t)
}

pub fn check_python(python: &Utf8Path) -> Result<String> {
    let out = Command::new(python)
        .args(["-c", "import tensorrt, sys; print(tensorrt.__version__)"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {python}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(anyhow::anyhow!("{python} has no `tensorrt` module").into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_banners_of_10_and_8() {
        assert_eq!(
            parse_version_banner(
                "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --help"
            )
            .as_deref(),
            Some("10.3.0")
        );
        assert_eq!(
            parse_version_banner("&&&& RUNNING TensorRT.trtexec [TensorRT v101100] # trtexec")
                .as_deref(),
            Some("10.11.0")
        );
        assert_eq!(
            parse_version_banner("&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec")
                .as_deref(),
            Some("8.6.1")
        );
        assert_eq!(parse_version_banner("usage: something else"), None);
    }

    #[test]
    fn gpu_query_and_cuda_banner() {
        assert_eq!(
            parse_gpu_query("NVIDIA A100-SXM4-80GB, 550.54.15, 8.0\n"),
            Some((
                "NVIDIA A100-SXM4-80GB".into(),
                "550.54.15".into(),
                "8.0".into()
            ))
        );
        assert_eq!(parse_gpu_query("\n"), None);
        let banner =
            "| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4     |";
        assert_eq!(parse_cuda_version(banner).as_deref(), Some("12.4"));
    }
}
