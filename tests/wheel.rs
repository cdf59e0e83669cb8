//! The pip-installable wheel: built with maturin by scripts/build-wheel (reusing the release
//! build), tagged manylinux_2_28, installed into a fresh venv, and run from an empty folder
//! with nothing but that venv on PATH: the built-in recognition pipeline end to end (written
//! by `init --builtin`, with the tests' short benchmark).
//!
//! maturin and ziglang come from PyPI (.ci/run installs them and sets MATURIN). Without
//! them the test says SKIP, except under CI, where a skip would hide a broken wheel.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn maturin() -> Option<PathBuf> {
    let from_env = std::env::var_os("MATURIN").map(PathBuf::from);
    let on_path = || {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("maturin"))
                .find(|m| m.is_file())
        })
    };
    let found = from_env.filter(|m| m.is_file()).or_else(on_path);
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "maturin not found under CI: .ci/run installs it (pip install maturin ziglang) and sets MATURIN"
        );
        say(
            "SKIP: maturin not found (pip install maturin ziglang, or set MATURIN): the wheel test needs it",
        );
    }
    found
}

#[test]
fn wheel_installs_into_a_fresh_venv_and_runs_the_builtin_pipeline() {
    let Some(maturin) = maturin() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = tempfile::tempdir().unwrap();
    let dist = work.path().join("dist");

    // 1. Build: maturin packages the release build's binary, relinked for glibc 2.28.
    let t = Instant::now();
    let mut build = Command::new(root.join("scripts/build-wheel"));
    // cargo test sets CARGO_MANIFEST_DIR, CARGO_PKG_* ... for this process. ring's build script
    // declares `rerun-if-env-changed=CARGO_MANIFEST_DIR`, so a nested `cargo build` that
    // inherits them sees ring's environment changed and rebuilds it, rustls, object_store
    // and facebuild (about 100 s on 2 cores) instead of reusing the release build.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        if k == "CARGO_MANIFEST_DIR"
            || k == "CARGO_MANIFEST_PATH"
            || k == "CARGO_CRATE_NAME"
            || k == "CARGO_PRIMARY_PACKAGE"
            || k == "CARGO_TARGET_TMPDIR"
            || k == "CARGO_RUSTC_CURRENT_DIR"
            || k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_")
        {
            build.env_remove(&k);
        }
    }
    let out = build.arg(&dist).env("MATURIN", &maturin).output().unwrap();
    assert!(
        out.status.success(),
        "build-wheel: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    say(&format!(
        "wheel built in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    let wheel = std::fs::read_dir(&dist)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .expect("a wheel");
    let name = wheel.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        name.starts_with(&format!("facebuild-{}-", env!("CARGO_PKG_VERSION")))
            && name.ends_with("-py3-none-manylinux_2_28_x86_64.whl"),
        "{name}"
    );
    let size_mib = std::fs::metadata(&wheel).unwrap().len() as f64 / (1 << 20) as f64;
    say(&format!("wheel {name}: {size_mib:.1} MiB"));
    // The tag inside agrees with the name.
    let listing = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); print(z.read(next(n for n in z.namelist() if n.endswith('.dist-info/WHEEL'))).decode())",
        ])
        .arg(&wheel)
        .output()
        .unwrap();
    let meta = String::from_utf8_lossy(&listing.stdout);
    assert!(
        meta.contains("Tag: py3-none-manylinux_2_28_x86_64"),
        "{meta}"
    );

    // 2. A fresh venv; the wheel installs offline.
    let venv = work.path().join("venv");
    let st = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .unwrap();
    assert!(st.success());
    let t = Instant::now();
    let out = Command::new(venv.join("bin/pip"))
        .args(["install", "--no-index", "--quiet"])
        .arg(&wheel)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 3. Nothing but the venv on PATH, in an empty folder.
    let empty = work.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let home = work.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let bare = |args: &[&str]| {
        let mut c = Command::new("/usr/bin/env");
        c.arg("-i")
            .arg(format!("PATH={}", venv.join("bin").display()))
            .arg(format!("HOME={}", home.display()))
            // The toolchain every test shares (installing it again would only cost time).
            .arg(format!(
                "FACEBUILD_TOOLCHAIN_DIR={}",
                toolchain_dir().display()
            ))
            .args(args)
            .current_dir(&empty);
        c
    };
    let v = bare(&["facebuild", "--version"]).output().unwrap();
    say(&format!(
        "pip install to first `facebuild --version`: {:.2} s",
        t.elapsed().as_secs_f64()
    ));
    assert!(v.status.success());
    assert_eq!(
        String::from_utf8_lossy(&v.stdout).trim(),
        format!("facebuild {}", env!("CARGO_PKG_VERSION"))
    );
    let which = bare(&["/bin/sh", "-c", "command -v facebuild"])
        .output()
        .unwrap();
    let which = String::from_utf8_lossy(&which.stdout).trim().to_string();
    assert_eq!(
        Path::new(&which),
        venv.join("bin/facebuild"),
        "facebuild must come from the venv"
    );

    // 4. The built-in default pipeline, end to end, with no checkout: the wheel's binary writes
    // it (`init --builtin`: the text `run --builtin` runs), and runs it with the tests' short
    // benchmark. Its full benchmark measured nothing this test reads, for 40 of the test's
    // 70 s, and this test has the machine to itself.
    run_ok(&mut bare(&[
        "facebuild",
        "init",
        "--builtin",
        "recognition",
        "-o",
        "recognition.yaml",
    ]));
    let written = std::fs::read_to_string(empty.join("recognition.yaml")).unwrap();
    let repo = std::fs::read_to_string(root.join("pipelines/recognition.yaml")).unwrap();
    assert_eq!(
        written, repo,
        "the wheel's built-in pipeline is the checkout's"
    );
    std::fs::write(
        empty.join("recognition.yaml"),
        default_pipeline_short_benchmark(),
    )
    .unwrap();
    let t = Instant::now();
    let run = bare(&["facebuild", "run", "recognition.yaml", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    let report: RunReport = serde_json::from_slice(&run.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{stderr}"));
    say(&format!(
        "the built-in recognition pipeline from the wheel: {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    assert!(empty.join("out/recognition/report.html").is_file());
    let code = run.status.code().unwrap_or(-1);
    released(&empty, code, &report);
    assert!(report.ok);
    assert_eq!(status_of(&report, "release"), Status::Built, "{stderr}");
    assert!(empty.join("releases/recognition/current").exists());
}
