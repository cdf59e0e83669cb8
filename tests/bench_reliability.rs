//! Benchmark reliability on a busy machine: the default pipeline's release with two CPU hogs
//! beside it (each `sh -c 'while :; do :; done'`, started and stopped by this test). A test
//! binary of its own: cargo runs binaries one after another, so the hogs slow no other test.
//!
//! - A tiny budget without retries: every figure is too short to trust, the release is refused,
//!   and the message names the unreliable figure and why, against the judge's thresholds.
//! - With retries: the first attempt (0.2 s) is always too short, so every measurement is
//!   retried with a longer budget and every attempt is in the report; the release then either
//!   promotes or is refused with the same kind of message. Which one depends on the hogs.

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

/// The default pipeline with its benchmark's params from `batch_sizes` on replaced by
/// `params` (no benchmark_app reference: it has no retries and only lengthens the test), and
/// only the two OpenVINO artifacts it releases measured, to keep the test short.
fn default_pipeline_with(params: &str) -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/pipelines/recognition.yaml"
    ))
    .unwrap()
    .replace(
        "targets: [simplify, openvino_fp32, openvino_fp16, openvino_int8, quantize, tensorrt_fp16, tensorrt_int8]",
        "targets: [openvino_fp16, openvino_int8]",
    );
    assert!(text.contains("targets: [openvino_fp16, openvino_int8]"));
    let start = text.find("      batch_sizes: [1, 8]").unwrap();
    let end = text[start..].find("\n\n").unwrap() + start;
    format!("{}{params}{}", &text[..start], &text[end..])
}

/// The release's error, the benchmark's report, and the run's exit code.
fn run(p: &Project) -> (i32, RunReport, facebuild::BenchmarkReport) {
    let (code, r) = p.run_json("pipelines/recognition.yaml", &["--keep-going"]);
    let b: facebuild::BenchmarkReport = p.report("pipelines/out/recognition/benchmark/report.json");
    (code, r, b)
}

#[test]
fn release_under_two_cpu_hogs_retries_or_says_why() {
    let p = Project::new();

    // A tiny budget and no retries: refused, and the message says why.
    p.write(
        "pipelines/recognition.yaml",
        &default_pipeline_with(
            "      batch_sizes: [1, 8]\n      iterations: 100000\n      time_budget_s: 0.05\n      retry: {attempts: 1}",
        ),
    );
    // What the benchmark measures is built before the hogs start: building under them is not
    // this test's subject, and it doubled the time of a test that has the machine to itself.
    let (code, r) = p.run_json("pipelines/recognition.yaml", &["-t", "compare"]);
    assert_eq!(code, 0, "{r:#?}");
    let _hogs = Hogs::start(2);
    let (code, r, b) = run(&p);
    assert_eq!(code, 1, "{r:#?}");
    let err = error_of(&r, "release");
    assert!(
        err.contains(": unreliable (")
            && err.contains("timed 0.05 s < 0.5 s")
            && err.contains("not compared with the limit"),
        "{err}"
    );
    assert!(err.contains("`retry:`"), "the hint names the retry: {err}");
    for e in b.results.iter().filter(|e| e.measured.is_some()) {
        assert_eq!(e.attempts.len(), 1, "{}: {:?}", e.label, e.attempts);
    }
    let junit = std::fs::read_to_string(p.path("pipelines/out/recognition/junit.xml")).unwrap();
    assert!(junit.contains("not compared with the limit"), "{junit}");
    let rep: facebuild::ReleaseReport = p.report("pipelines/out/recognition/release/report.json");
    assert!(
        rep.verdicts
            .iter()
            .flat_map(|v| &v.refused_because)
            .any(|w| w.contains("unreliable (")),
        "{rep:#?}"
    );

    // With retries: every first attempt is too short, so each is measured again (once: a
    // second retry would show nothing the first does not, and lengthen a test run alone).
    p.write(
        "pipelines/recognition.yaml",
        &default_pipeline_with(
            "      batch_sizes: [1, 8]\n      iterations: 100000\n      time_budget_s: 0.2\n      retry: {attempts: 2, total_s: 40}",
        ),
    );
    let (code, r, b) = run(&p);
    let measured: Vec<_> = b.results.iter().filter(|e| e.measured.is_some()).collect();
    assert!(!measured.is_empty());
    let retried = measured.iter().filter(|e| e.attempts.len() > 1).count();
    assert!(retried > 0, "{measured:#?}");
    for e in &measured {
        let first = &e.attempts[0];
        assert_eq!(first.time_budget_s, Some(0.2));
        assert!(first.reliability.as_ref().is_some_and(|r| !r.reliable));
        // Each retry had a longer budget, and the last attempt is what is reported.
        for w in e.attempts.windows(2) {
            assert!(w[1].time_budget_s > w[0].time_budget_s, "{:?}", e.attempts);
        }
        let last = e.attempts.last().unwrap();
        assert_eq!(
            last.reliability.as_ref().map(|r| r.samples),
            e.measured
                .as_ref()
                .unwrap()
                .reliability
                .as_ref()
                .map(|r| r.samples)
        );
        // A measurement left unreliable says why no further attempt was made.
        if last.reliability.as_ref().is_some_and(|r| !r.reliable) {
            assert!(last.stopped.is_some(), "{:?}", e.attempts);
        }
    }
    let md =
        std::fs::read_to_string(p.path("pipelines/out/recognition/benchmark/report.md")).unwrap();
    assert!(
        md.contains("Retried measurements") && md.contains("attempt 2"),
        "{md}"
    );
    match code {
        0 => {
            let rep: facebuild::ReleaseReport =
                p.report("pipelines/out/recognition/release/report.json");
            assert!(!rep.promoted.is_empty());
            eprintln!(
                "under two hogs: promoted {:?} after {retried} of {} measurements were retried",
                rep.promoted,
                measured.len()
            );
        }
        _ => {
            let err = error_of(&r, "release");
            assert!(err.contains(": unreliable ("), "{err}");
            eprintln!("under two hogs: refused after retries: {err}");
        }
    }
}
