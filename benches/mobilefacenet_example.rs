//! `examples/mobilefacenet.yaml` end to end, as written: the real MobileFaceNet, aligned
//! photo pairs, the accuracy-controlled Q/DQ search (about 5 minutes on 2 cores), the
//! benchmark with its real budget and benchmark_app reference, and the release with the
//! example's own gates. Tests run the example up to `compare` without the search; its
//! timings and the search belong here, on a quiet machine. Prints each step's wall time and
//! summary, and writes target/bench/mobilefacenet_example.json. Needs ../shared (or
//! FACEBUILD_SHARED); prints SKIP without it.

use std::process::Command;
use std::time::Instant;

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = std::env::var_os("FACEBUILD_SHARED")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("../shared"));
    if !shared.join("models/mobilefacenet.onnx").exists() {
        println!(
            "SKIP: {} has no models/mobilefacenet.onnx",
            shared.display()
        );
        return;
    }
    let shared = shared.canonicalize().unwrap();
    let toolchains = std::env::var("FACEBUILD_TOOLCHAIN_DIR")
        .unwrap_or_else(|_| root.join("cache/toolchains").display().to_string());
    let dir = tempfile::tempdir().unwrap();
    let manifest = std::fs::read_to_string(root.join("examples/mobilefacenet.yaml"))
        .unwrap()
        .replace("../../shared", shared.to_str().unwrap());
    std::fs::write(dir.path().join("m.yaml"), manifest).unwrap();

    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_facebuild"))
        .args(["run", "m.yaml", "--json"])
        .current_dir(dir.path())
        .env("FACEBUILD_CACHE", dir.path().join("cache"))
        .env("FACEBUILD_TOOLCHAIN_DIR", &toolchains)
        .output()
        .unwrap();
    let wall = t.elapsed().as_secs_f64();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no run report ({e}):\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    println!(
        "examples/mobilefacenet.yaml: exit {:?} in {wall:.1} s",
        out.status.code()
    );
    let steps = report["steps"].as_array().cloned().unwrap_or_default();
    for s in &steps {
        println!(
            "  {:<14} {:<8} {:>8.1} s  {}",
            s["step"].as_str().unwrap_or("?"),
            s["status"].as_str().unwrap_or("?"),
            s["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0,
            s["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| s["summary"].to_string())
        );
    }
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir).unwrap();
    let json = serde_json::json!({
        "example": "examples/mobilefacenet.yaml",
        "exit_code": out.status.code(),
        "wall_s": wall,
        "steps": steps,
    });
    std::fs::write(
        out_dir.join("mobilefacenet_example.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
}
