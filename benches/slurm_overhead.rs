//! Slurm: the overhead per dispatched step, from submission to the result being available
//! (push the inputs and the spec, sbatch, queue wait, the worker's start, fetch, key check
//! and push, the submitter's polls), against the same step run locally. One-node cluster
//! on 127.0.0.1 (tests/common/slurm.rs) with nginx as the remote; the toolchain already
//! installed. Each step is rebuilt (`--no-cache`) `REPS` times both ways; medians of the
//! step's own duration in the run report. Not a timed test: `cargo bench --bench
//! slurm_overhead`. Writes target/bench/slurm_overhead.json. Needs Debian's Slurm, munge
//! and nginx (as .ci/run installs them).

#[path = "../tests/common/servers.rs"]
#[allow(dead_code)]
mod servers;
#[path = "../tests/common/slurm.rs"]
#[allow(dead_code)]
mod slurm;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

const REPS: usize = 7;

fn pipeline(workdir: &Path, slurm: bool) -> String {
    let on = if slurm {
        format!(
            "\n    runs_on: {{executor: slurm, workdir: {}}}",
            workdir.display()
        )
    } else {
        String::new()
    };
    format!(
        "schema: 1
name: bench
model:
  path: model.onnx
  task: recognition
  input: {{name: input.1, layout: NCHW, shape: [1, 3, 112, 112]}}
steps:
  check:
    kind: check{on}
  simplify:
    kind: simplify
    params: {{samples: 2}}{on}
"
    )
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let toolchains = std::env::var("FACEBUILD_TOOLCHAIN_DIR")
        .unwrap_or_else(|_| root.join("cache/toolchains").display().to_string());
    let (Some(cluster), Some(nginx)) = (slurm::Cluster::start(), servers::Nginx::start()) else {
        eprintln!("SKIP: Slurm or nginx missing");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let exe = env!("CARGO_BIN_EXE_facebuild");
    let ok = Command::new(exe)
        .args(["builtin", "iresnet-mini", "-o"])
        .arg(dir.path().join("model.onnx"))
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::write(
        dir.path().join("local.yaml"),
        pipeline(&cluster.workdir, false),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("slurm.yaml"),
        pipeline(&cluster.workdir, true),
    )
    .unwrap();
    let run = |file: &str| -> (f64, serde_json::Value) {
        let t = Instant::now();
        let out = Command::new(exe)
            .args(["run", file, "--json", "--no-cache", "--materialize", "none"])
            .current_dir(dir.path())
            .env("FACEBUILD_CACHE", dir.path().join("cache"))
            .env("FACEBUILD_TOOLCHAIN_DIR", &toolchains)
            .env("FACEBUILD_REMOTE", nginx.url())
            .env("SLURM_CONF", &cluster.conf)
            .env("FACEBUILD_WORKER_BIN", exe)
            .env("FACEBUILD_SLURM_POLL_MAX_MS", "250")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            t.elapsed().as_secs_f64(),
            serde_json::from_slice(&out.stdout).unwrap(),
        )
    };
    // Warm both ways once (toolchain memo, the node's first job).
    run("local.yaml");
    run("slurm.yaml");
    let mut rows = Vec::new();
    let mut per_step: std::collections::BTreeMap<(String, bool), Vec<f64>> = Default::default();
    let mut wall: std::collections::BTreeMap<bool, Vec<f64>> = Default::default();
    for _ in 0..REPS {
        for slurm in [false, true] {
            let (secs, report) = run(if slurm { "slurm.yaml" } else { "local.yaml" });
            wall.entry(slurm).or_default().push(secs);
            for s in report["steps"].as_array().unwrap() {
                let ms = s["duration_ms"].as_f64().unwrap();
                per_step
                    .entry((s["step"].as_str().unwrap().to_string(), slurm))
                    .or_default()
                    .push(ms / 1000.0);
                if slurm {
                    assert!(s["ran_on"]["job_id"].is_string(), "{s}");
                }
            }
        }
    }
    println!("step       local (s)  slurm (s)  overhead (s)");
    for step in ["check", "simplify"] {
        let l = median(per_step.get_mut(&(step.to_string(), false)).unwrap());
        let s = median(per_step.get_mut(&(step.to_string(), true)).unwrap());
        println!("{step:<10} {l:>9.2} {s:>10.2} {:>13.2}", s - l);
        rows.push(serde_json::json!({
            "step": step, "local_s": l, "slurm_s": s, "overhead_s": s - l, "reps": REPS,
        }));
    }
    let wl = median(wall.get_mut(&false).unwrap());
    let ws = median(wall.get_mut(&true).unwrap());
    println!(
        "whole run: local {wl:.2} s, two Slurm steps {ws:.2} s (steps run concurrently on Slurm)"
    );
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("slurm_overhead.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "steps": rows, "run_local_s": wl, "run_slurm_s": ws,
            "poll_max_ms": 250, "cluster": "one node, 2 CPUs, 127.0.0.1", "remote": "nginx (WebDAV)",
        }))
        .unwrap(),
    )
    .unwrap();
    println!("wrote target/bench/slurm_overhead.json");
}
