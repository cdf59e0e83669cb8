//! No-op run benchmark: how long `facebuild run` takes when every step is cached, on a
//! pipeline of three steps over a ~174 MB model (the built-in iresnet50, the size of
//! InsightFace's w600k_r50). Timed as a user sees it: process start to exit.
//!
//! `cargo bench --bench noop` (FACEBUILD_TOOLCHAIN_DIR to reuse a toolchain; NOOP_RUNS to
//! change the count). Writes target/bench/noop.json.

use std::process::Command;
use std::time::Instant;

fn main() {
    let exe = env!("CARGO_BIN_EXE_facebuild");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let toolchains = std::env::var("FACEBUILD_TOOLCHAIN_DIR")
        .unwrap_or_else(|_| root.join("cache/toolchains").display().to_string());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fb = |args: &[&str]| {
        let out = Command::new(exe)
            .args(args)
            .current_dir(d)
            .env("FACEBUILD_CACHE", d.join("cache"))
            .env("FACEBUILD_TOOLCHAIN_DIR", &toolchains)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "facebuild {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    fb(&["builtin", "iresnet50", "-o", "model.onnx"]);
    let size = std::fs::metadata(d.join("model.onnx")).unwrap().len();
    // Three stages, as in the DVC comparison: validate, simplify, validate the result.
    let manifest = "schema: 1\nname: noop\nmodel:\n  path: model.onnx\n  task: recognition\n  input: {name: input.1, layout: NCHW, shape: [1, 3, 112, 112]}\n\
steps:\n  check:\n    kind: check\n  simplify:\n    kind: simplify\n    needs: [check]\n  check_simplified:\n    kind: check\n    from: simplify\n";
    std::fs::write(d.join("p.yaml"), manifest).unwrap();

    let t = Instant::now();
    fb(&["run", "p.yaml"]);
    let cold = t.elapsed().as_secs_f64();
    let out = fb(&["run", "p.yaml", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    assert!(
        steps.iter().all(|s| s["status"] == "cached"),
        "the benchmark must measure a no-op: {report:#}"
    );

    let runs: usize = std::env::var("NOOP_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let mut ms: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            fb(&["run", "p.yaml"]);
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| ms[((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    let result = serde_json::json!({
        "benchmark": "noop_run",
        "model_bytes": size,
        "steps": 3,
        "runs": runs,
        "cold_run_s": cold,
        "median_ms": pct(0.5),
        "p90_ms": pct(0.9),
        "min_ms": ms[0],
        "max_ms": ms[ms.len() - 1],
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(
        out_dir.join("noop.json"),
        serde_json::to_string_pretty(&result).unwrap(),
    )
    .unwrap();
    println!("{}", serde_json::to_string_pretty(&result).unwrap());
}
