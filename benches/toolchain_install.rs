//! Toolchain install time on an empty toolchain folder, uv against pip, median of 3 (not a
//! timed test: `cargo bench --bench toolchain_install`; it downloads ~600 MB from PyPI per
//! run). Each run starts with empty uv and pip caches, so every wheel is downloaded, and
//! includes creating the venv (and, for uv, installing uv itself). Both install the same
//! hash-locked files. Writes target/bench/toolchain_install.json.

use std::process::Command;
use std::time::Instant;

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = env!("CARGO_BIN_EXE_facebuild");
    let runs: usize = std::env::var("FACEBUILD_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let lock =
        std::fs::read_to_string(root.join("crates/facebuild-toolchain/src/python/toolchain.lock"))
            .unwrap();
    let packages = lock
        .lines()
        .filter(|l| l.contains("==") && !l.starts_with('#'))
        .count();
    let mut rows = Vec::new();
    for installer in ["uv", "pip"] {
        let mut secs = Vec::new();
        for _ in 0..runs {
            let tc = tempfile::tempdir().unwrap();
            let caches = tempfile::tempdir().unwrap();
            let t = Instant::now();
            let out = Command::new(exe)
                .args(["toolchain", "install"])
                .env("FACEBUILD_TOOLCHAIN_DIR", tc.path())
                .env("FACEBUILD_TOOLCHAIN_INSTALLER", installer)
                .env("UV_CACHE_DIR", caches.path().join("uv"))
                .env("PIP_CACHE_DIR", caches.path().join("pip"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            secs.push(t.elapsed().as_secs_f64());
        }
        secs.sort_by(f64::total_cmp);
        let median = secs[secs.len() / 2];
        println!(
            "{installer}: median {median:.1} s of {runs} ({secs:?}), {packages} locked packages"
        );
        rows.push(serde_json::json!({"installer": installer, "median_s": median, "runs_s": secs, "packages": packages}));
    }
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("toolchain_install.json"),
        serde_json::to_vec_pretty(&rows).unwrap(),
    )
    .unwrap();
}
