//! Helpers for integration tests: each test gets its own project folder and cache, and all
//! share one toolchain (installed once, under a file lock) so the suite stays fast.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

pub(crate) struct Project {
    pub dir: tempfile::TempDir,
}

pub(crate) fn toolchain_dir() -> PathBuf {
    std::env::var_os("FACEBUILD_TOOLCHAIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("cache/toolchains"))
}

/// `../shared` (or $FACEBUILD_SHARED) with the real models and faces, when present.
/// Tests that need it print a clear SKIP line and return when it is absent.
pub(crate) fn shared() -> Option<PathBuf> {
    let p = std::env::var_os("FACEBUILD_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    if p.join("models").is_dir() {
        Some(p.canonicalize().unwrap())
    } else {
        // Written to stderr directly: the test harness captures `eprintln!`, and a skip
        // must be visible in CI logs.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: {} not found: real-model tests need ../shared (or FACEBUILD_SHARED)",
            p.display()
        );
        None
    }
}

impl Project {
    pub(crate) fn new() -> Project {
        Project {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub(crate) fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    pub(crate) fn cmd(&self) -> Command {
        let mut c = Command::cargo_bin("facebuild").unwrap();
        c.current_dir(self.dir.path())
            .env("FACEBUILD_CACHE", self.path("cache"))
            .env("FACEBUILD_TOOLCHAIN_DIR", toolchain_dir())
            .env_remove("FACEBUILD_LOG");
        c
    }

    /// Run facebuild with args; return the output without asserting on the status.
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// `facebuild run FILE --json` -> (exit code, parsed report).
    pub(crate) fn run_json(&self, file: &str, extra: &[&str]) -> (i32, serde_json::Value) {
        let mut args = vec!["run", file, "--json"];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked"),
            "facebuild panicked:\n{stderr}"
        );
        let v = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no JSON report ({e}); stderr:\n{stderr}"));
        (out.status.code().unwrap_or(-1), v)
    }

    pub(crate) fn plan_json(&self, file: &str) -> serde_json::Value {
        let out = self.run(&["plan", file, "--json"]);
        assert!(
            out.status.success(),
            "plan failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// step name -> status, from a run report.
pub(crate) fn statuses(report: &serde_json::Value) -> Vec<(String, String)> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub(crate) fn status_of(report: &serde_json::Value, step: &str) -> String {
    statuses(report)
        .into_iter()
        .find(|(n, _)| n == step)
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("no step {step} in report"))
}

/// A recognition manifest on the built-in model with the given steps section.
pub(crate) fn builtin_manifest(steps: &str) -> String {
    format!(
        "schema: 1\nname: t\nmodel:\n  task: recognition\n  input:\n    name: input.1\n    layout: NCHW\n    shape: [1, 3, 112, 112]\nsteps:\n{steps}"
    )
}
