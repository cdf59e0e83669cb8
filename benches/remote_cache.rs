//! Remote cache: machine B's fully remote-hit run against machine A's cold build, over nginx
//! (HTTP) and s3s-fs (S3), for a 3-step pipeline over the 174 MB built-in iresnet50 and for
//! the default pipeline, with the toolchain already installed. Also upload MB/s (`cache
//! push` of A's cache to an empty prefix) and download MB/s (B's materialized run). Not a
//! timed test: `cargo bench --bench remote_cache`. Writes target/bench/remote_cache.json.
//! Needs nginx and s3s-fs (as .ci/run installs them).

#[path = "../tests/common/servers.rs"]
#[allow(dead_code)]
mod servers;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

const BIG: &str = "schema: 1
name: big
model:
  builtin: iresnet50
  task: recognition
  input: {name: input.1, layout: NCHW, shape: [1, 3, 112, 112]}
steps:
  check: {kind: check}
  simplify: {kind: simplify, needs: [check], params: {samples: 2}}
  openvino_fp32: {kind: convert, from: simplify, params: {backend: openvino, precision: fp32}}
";

/// A backend's label, URL and the environment that reaches it.
type Backend = (&'static str, String, Vec<(String, String)>);

struct Run {
    secs: f64,
    report: serde_json::Value,
}

fn run(dir: &Path, file: &str, args: &[&str], env: &[(String, String)]) -> Run {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_facebuild"))
        .args(["run", file, "--json"])
        .args(args)
        .current_dir(dir)
        .env("FACEBUILD_CACHE", dir.join("cache"))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Run {
        secs,
        report: serde_json::from_slice(&out.stdout).unwrap(),
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let toolchains = std::env::var("FACEBUILD_TOOLCHAIN_DIR")
        .unwrap_or_else(|_| root.join("cache/toolchains").display().to_string());
    // SAFETY: set before any thread starts.
    unsafe { std::env::set_var("FACEBUILD_TOOLCHAIN_DIR", &toolchains) };
    let default = std::fs::read_to_string(root.join("pipelines/recognition.yaml")).unwrap();
    let (Some(nginx), Some(s3)) = (servers::Nginx::start(), servers::S3::start()) else {
        eprintln!("SKIP: nginx or s3s-fs missing");
        return;
    };
    let mut rows = Vec::new();
    let backends: Vec<Backend> = vec![
        ("http (nginx)", nginx.url(), vec![]),
        ("s3 (s3s-fs)", s3.url(), s3.env(servers::S3_SECRET)),
    ];
    for (backend, url, env) in &backends {
        for (name, manifest) in [("iresnet50 3 steps", BIG), ("default pipeline", &default)] {
            let url = format!("{url}/{}", name.replace(' ', "-"));
            let (a, b, c) = (
                tempfile::tempdir().unwrap(),
                tempfile::tempdir().unwrap(),
                tempfile::tempdir().unwrap(),
            );
            for d in [&a, &b, &c] {
                std::fs::write(d.path().join("p.yaml"), manifest).unwrap();
            }
            let cold = run(a.path(), "p.yaml", &["--remote", &url], env);
            let hit = run(b.path(), "p.yaml", &["--remote", &url], env);
            // Only what nothing else consumes (the artifacts a CI job publishes).
            let leaves = run(
                c.path(),
                "p.yaml",
                &["--remote", &url, "--materialize", "leaves"],
                env,
            );
            let rem = &hit.report["remote"];
            let down = rem["bytes_downloaded"].as_f64().unwrap_or(0.0);
            // Upload throughput: push A's cache to an empty prefix.
            let push_url = format!("{url}-push");
            let t = Instant::now();
            let out = Command::new(env!("CARGO_BIN_EXE_facebuild"))
                .args(["cache", "push", "p.lock", "--remote", &push_url, "--json"])
                .current_dir(a.path())
                .env("FACEBUILD_CACHE", a.path().join("cache"))
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .output()
                .unwrap();
            let push_s = t.elapsed().as_secs_f64();
            let pushed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let up = pushed["bytes_uploaded"].as_f64().unwrap_or(0.0);
            let row = serde_json::json!({
                "backend": backend,
                "pipeline": name,
                "cold_build_s": cold.secs,
                "remote_hit_s": hit.secs,
                "ratio": hit.secs / cold.secs,
                "remote_hit_leaves_s": leaves.secs,
                "ratio_leaves": leaves.secs / cold.secs,
                "hits": rem["hits"],
                "downloaded_mib": down / 1048576.0,
                "download_mib_s": down / 1048576.0 / hit.secs,
                "uploaded_mib": up / 1048576.0,
                "upload_mib_s": up / 1048576.0 / push_s,
            });
            println!("{row}");
            rows.push(row);
        }
    }
    println!(
        "| backend | pipeline | cold build s | remote-hit run s | ratio | --materialize leaves s | ratio | downloaded MiB | download MiB/s (whole run) | upload MiB/s (push) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {} | {} | {:.1} | {:.2} | {:.3} | {:.2} | {:.3} | {:.0} | {:.0} | {:.0} |",
            r["backend"].as_str().unwrap_or_default(),
            r["pipeline"].as_str().unwrap_or_default(),
            f("cold_build_s"),
            f("remote_hit_s"),
            f("ratio"),
            f("remote_hit_leaves_s"),
            f("ratio_leaves"),
            f("downloaded_mib"),
            f("download_mib_s"),
            f("upload_mib_s"),
        );
    }
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("remote_cache.json"),
        serde_json::to_vec_pretty(&rows).unwrap(),
    )
    .unwrap();
}
