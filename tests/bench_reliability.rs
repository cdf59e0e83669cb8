//! Speed gates on a busy machine: the default pipeline beside two CPU hogs (each
//! `sh -c 'while :; do :; done'`, started and stopped by this test). A test binary of its
//! own: cargo runs binaries one after another, so the hogs slow no other test.
//!
//! - Limits far from the figures: the release promotes FP16 and INT8 beside the hogs, every
//!   speed gate `pass` on its interval, INT8's speedup over FP32 measured in paired rounds.
//! - A limit at an earlier run's median: runs under the same conditions never split into one
//!   `pass` and one `fail`; the interval holds the limit, so they say `inconclusive`.

mod common;
use common::*;

use std::process::{Child, Command, Stdio};

/// Two busy loops, one per core of the CI machine; killed on drop, whatever the test did.
struct Hogs(Vec<Child>);

impl Hogs {
    fn start(n: usize) -> Hogs {
        Hogs(
            (0..n)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .stdin(Stdio::null())
                        .spawn()
                        .unwrap()
                })
                .collect(),
        )
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The release's speed gates.
const SPEED: [&str; 6] = [
    "speedup_min",
    "p99_ms_max",
    "p50_ms_max",
    "throughput_min",
    "rss_mib_max",
    "cold_start_ms_max",
];

/// The default pipeline with `benchmark` and `release` replaced by `tail`.
fn default_pipeline_ending(tail: &str) -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/pipelines/recognition.yaml"
    ))
    .unwrap();
    let start = text
        .find("  # Speed, cold start and memory")
        .expect("the default pipeline's benchmark comment");
    format!("{}{tail}", &text[..start])
}

/// The default pipeline's own gates, without benchmark_app (it decides nothing) or the
/// artifacts this machine cannot build.
fn default_gates() -> String {
    default_pipeline_ending(
        "  benchmark:
    kind: benchmark
    params:
      targets: [openvino_fp32, openvino_fp16, openvino_int8]
      batch_sizes: [1, 8]
      iterations: 100000
      time_budget_s: 0.35
      processes: 3
  release:
    kind: release
    params:
      artifacts: [openvino_fp16, openvino_int8]
      compare: compare
      benchmark: benchmark
      gates: {cosine_min: 0.999, tar_drop_max: 0.05, p99_ms_max: 50, throughput_min: 50, rss_mib_max: 2048, cold_start_ms_max: 10000}
      artifact_gates: {openvino_int8: {cosine_min: 0.95, speedup_min: {over: openvino_fp32, value: 1.1}}}
",
    )
}

/// FP16's batch-1 median gated at `limit`; `warmup` varies so each run measures afresh.
fn median_gate(limit: f64, warmup: usize) -> String {
    default_pipeline_ending(&format!(
        "  benchmark:
    kind: benchmark
    params:
      targets: [openvino_fp16]
      openvino_hints: [latency]
      iterations: 100000
      warmup: {warmup}
      time_budget_s: 0.35
      processes: 3
      retry: {{attempts: 5, total_s: 8}}
  release:
    kind: release
    params:
      artifacts: [openvino_fp16]
      benchmark: benchmark
      gates: {{p50_ms_max: {limit}}}
"
    ))
}

/// The p50 gate of a run: its status and interval.
fn p50_gate(p: &Project) -> (String, [f64; 2], f64) {
    let rep: facebuild::ReleaseReport = p.report("pipelines/out/recognition/release/report.json");
    let g = rep.verdicts[0]
        .gates
        .iter()
        .find(|g| g.metric == "p50_ms_max")
        .unwrap()
        .clone();
    (g.status.unwrap(), g.interval.unwrap(), g.value.unwrap())
}

#[test]
fn beside_two_cpu_hogs_far_limits_promote_and_a_median_limit_never_flips() {
    let p = Project::new();
    p.write("pipelines/recognition.yaml", &default_gates());
    // What the benchmark measures is built before the hogs start: building under them is not
    // this test's subject.
    let (code, r) = p.run_json("pipelines/recognition.yaml", &["-t", "compare"]);
    assert_eq!(code, 0, "{r:#?}");
    {
        let _hogs = Hogs::start(2);
        let (code, r) = p.run_json("pipelines/recognition.yaml", &[]);
        released(p.dir.path(), code, &r);
        let rep: facebuild::ReleaseReport =
            p.report("pipelines/out/recognition/release/report.json");
        assert_eq!(rep.promoted, ["openvino_fp16", "openvino_int8"], "{rep:#?}");
        for v in &rep.verdicts {
            for g in v
                .gates
                .iter()
                .filter(|g| SPEED.contains(&g.metric.as_str()))
            {
                assert_eq!(g.status.as_deref(), Some("pass"), "{}: {g:?}", v.artifact);
            }
        }
        let b: facebuild::BenchmarkReport =
            p.report("pipelines/out/recognition/benchmark/report.json");
        let ratio = &b.ratios_for("openvino_int8", "openvino_fp32")[0].speedup;
        // What the machine was doing is in the report: the hogs' load.
        let load = b.results[0].processes[0]
            .measured
            .machine_state
            .as_ref()
            .and_then(|m| m.load_before)
            .unwrap();
        say(&format!(
            "beside two hogs: promoted {:?}; INT8 over FP32 {:.3} [{:.3}, {:.3}]; load {load:.2}",
            rep.promoted, ratio.value, ratio.spread.ci95[0], ratio.spread.ci95[1]
        ));
    }

    // A limit at a first quiet run's median, then two quiet runs and two beside the hogs.
    p.write("pipelines/recognition.yaml", &median_gate(1000.0, 10));
    let (code, r) = p.run_json("pipelines/recognition.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    let (_, _, median) = p50_gate(&p);
    let mut runs = Vec::new();
    for (k, busy) in [false, false, true, true].into_iter().enumerate() {
        let _hogs = busy.then(|| Hogs::start(2));
        p.write("pipelines/recognition.yaml", &median_gate(median, 11 + k));
        let (_, r) = p.run_json("pipelines/recognition.yaml", &["--keep-going"]);
        assert!(step(&r, "benchmark").status == Status::Built, "{r:#?}");
        let (status, iv, value) = p50_gate(&p);
        say(&format!(
            "limit {median:.4} ms, {}: {status}, p50 {value:.4} [{:.4}, {:.4}]",
            if busy { "two hogs" } else { "quiet" },
            iv[0],
            iv[1]
        ));
        runs.push(status);
    }
    for pair in runs.chunks(2) {
        assert!(
            !(pair.contains(&"pass".to_string()) && pair.contains(&"fail".to_string())),
            "two runs under the same conditions split: {runs:?}"
        );
    }
}
