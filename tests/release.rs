//! benchmark -> release -> rollback, and the run report, with real ONNX Runtime and OpenVINO
//! on the built-in model (and, for the benchmark figures, the real MobileFaceNet in
//! ../shared when present). No timing is asserted: figures are printed, gates are set far
//! from any plausible measurement so that which way they go is certain.

mod common;
use common::*;

use std::path::Path;

fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

fn pipeline(release_params: &str) -> String {
    builtin_manifest(&format!(
        r#"  simplify: {{kind: simplify, params: {{samples: 1}}}}
  ov_fp32: {{kind: convert, from: simplify, params: {{backend: openvino, precision: fp32}}}}
  ov_fp16: {{kind: convert, from: simplify, params: {{backend: openvino, precision: fp16}}}}
  compare: {{kind: compare, params: {{dataset: faces, candidates: [ov_fp32, ov_fp16], cosine_min: 0.999}}}}
  benchmark:
    kind: benchmark
    params: {{targets: [simplify, ov_fp32, ov_fp16], batch_sizes: [1, 4], warmup: 2, iterations: 30, time_budget_s: 0.5}}
  release:
    kind: release
    params: {release_params}
"#
    ))
    .replace("steps:\n", "datasets:\n  faces: {builtin: synthetic-faces}\nsteps:\n")
    .replace("    shape: [1, 3, 112, 112]\n", "    shape: [1, 3, 112, 112]\n  preprocessing: {color: RGB, mean: [127.5, 127.5, 127.5], std: [127.5, 127.5, 127.5], size: [112, 112]}\n")
}

fn release_err(r: &serde_json::Value) -> String {
    r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "release")
        .unwrap()["error"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn benchmark_then_release_passes_refuses_and_rolls_back_byte_identically() {
    let p = Project::new();
    let rel = p.path("rel");
    let common = format!(
        "compare: compare, benchmark: benchmark, releases_dir: {}",
        rel.display()
    );
    // 1. A release that passes: loose gates, both kinds.
    p.write("r.yaml", &pipeline(&format!("{{artifacts: [ov_fp16], {common}, version: v1, gates: {{cosine_min: 0.99, p99_ms_max: 10000, throughput_min: 0.001, rss_mib_max: 100000, cold_start_ms_max: 600000}}, keep_fp32_for_audit: true, audit_artifacts: [ov_fp32]}}")));
    let (code, r) = p.run_json("r.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");

    // The benchmark: one schema for every runtime, machine described, each target measured.
    let b = json(&p.path("out/t/benchmark/report.json"));
    assert_eq!(b["schema"], "facebuild.benchmark/1");
    assert!(
        b["machine"]["cpu"].is_string()
            && b["machine"]["isa"].is_array()
            && b["machine"]["logical_cores"].as_u64().unwrap() >= 1
    );
    let results = b["results"].as_array().unwrap();
    assert_eq!(
        results.len(),
        5,
        "simplify in ONNX Runtime, two IRs x two OpenVINO hints: {b:#}"
    );
    for x in results {
        for k in ["spawn_to_first_output_ms", "load_ms", "first_inference_ms"] {
            assert!(x["cold_start"][k].as_f64().unwrap() > 0.0, "{k}: {x:#}");
        }
        for k in ["median", "p90", "p99", "max"] {
            assert!(
                x["latency_batch1_ms"][k].as_f64().unwrap() > 0.0,
                "{k}: {x:#}"
            );
        }
        assert!(x["peak_rss_mib"].as_f64().unwrap() > 10.0);
        assert!(x["execution"]["precision"].is_string());
        let t = x["throughput"].as_array().unwrap();
        assert_eq!(t.len(), 2);
        assert!(t[0]["images_per_s"].as_f64().unwrap() > 0.0);
        say(&format!(
            "bench {}: executed {} cold {:.0} ms p50 {:.3} ms p99 {:.3} ms rss {:.0} MiB throughput {}",
            x["label"],
            x["execution"]["precision"],
            x["cold_start"]["spawn_to_first_output_ms"]
                .as_f64()
                .unwrap(),
            x["latency_batch1_ms"]["median"].as_f64().unwrap(),
            x["latency_batch1_ms"]["p99"].as_f64().unwrap(),
            x["peak_rss_mib"].as_f64().unwrap(),
            x["throughput"]
        ));
    }
    let hints: Vec<&str> = results
        .iter()
        .filter_map(|x| x["execution"]["hint"].as_str())
        .collect();
    assert!(
        hints.contains(&"LATENCY") && hints.contains(&"THROUGHPUT"),
        "{hints:?}"
    );
    // The simplified ONNX has a static batch of 1: batch 4 is reported unsupported, not faked.
    let ort = results.iter().find(|x| x["label"] == "simplify").unwrap();
    assert!(ort["throughput"][1]["unsupported"].is_string(), "{ort:#}");

    // The release: metadata, sums, rollback notes, current.
    let v1 = rel.join("t/v1");
    let meta = json(&v1.join("metadata.json"));
    assert_eq!(meta["version"], "v1");
    assert_eq!(meta["source_onnx"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(meta["manifest"]["blake3"].as_str().unwrap().len(), 64);
    assert!(meta["toolchain"]["python_packages"]["openvino"].is_string());
    assert_eq!(meta["facebuild_version"], env!("CARGO_PKG_VERSION"));
    let arts = meta["artifacts"].as_array().unwrap();
    assert!(
        arts.iter().any(|a| a["name"] == "ov_fp16"
            && a["precision"] == "fp16"
            && a["audit_only"] == false)
    );
    assert!(
        arts.iter()
            .any(|a| a["name"] == "ov_fp32" && a["audit_only"] == true),
        "FP32 kept for audit"
    );
    assert!(v1.join("ov_fp16/model.xml").exists() && v1.join("audit/ov_fp32/model.bin").exists());
    let gates = meta["gates"][0]["gates"].as_array().unwrap();
    assert_eq!(gates.len(), 5);
    assert!(
        gates
            .iter()
            .all(|g| g["passed"] == true && g["value"].is_number()),
        "{gates:#?}"
    );
    let sums = std::fs::read_to_string(v1.join("SHA256SUMS")).unwrap();
    assert!(sums.contains("  ov_fp16/model.bin") && sums.contains("  metadata.json"));
    assert!(
        std::fs::read_to_string(v1.join("ROLLBACK.md"))
            .unwrap()
            .contains("first release")
    );
    assert_eq!(
        std::fs::read_to_string(rel.join("t/current/RELEASE"))
            .unwrap()
            .trim(),
        "v1"
    );

    // 2. Refused by a latency gate, with the measured value and the limit.
    p.write(
        "r.yaml",
        &pipeline(&format!(
            "{{artifacts: [ov_fp16], {common}, version: v2, gates: {{p99_ms_max: 0.000001}}}}"
        )),
    );
    let (code, r) = p.run_json("r.yaml", &[]);
    assert_eq!(code, 1);
    let e = release_err(&r);
    assert!(
        e.contains("release refused")
            && e.contains("p99_ms_max: measured")
            && e.contains("vs limit 0.000001"),
        "{e}"
    );
    say(&format!("latency gate: {}", e.lines().next().unwrap()));

    // 3. Refused by an accuracy gate.
    p.write("r.yaml", &pipeline(&format!("{{artifacts: [ov_fp16], {common}, version: v2, gates: {{cosine_min: 0.999}}, artifact_gates: {{ov_fp16: {{cosine_min: 1.5}}}}}}")));
    let (code, r) = p.run_json("r.yaml", &[]);
    assert_eq!(code, 1);
    let e = release_err(&r);
    assert!(
        e.contains("cosine_min: measured")
            && e.contains("vs limit 1.5")
            && e.contains("compare `compare`"),
        "{e}"
    );
    say(&format!("accuracy gate: {}", e.lines().next().unwrap()));
    assert!(
        !rel.join("t/v2").exists(),
        "a refused release promotes nothing"
    );

    // 4. A second release; its ROLLBACK.md names v1 and how to restore it.
    p.write(
        "r.yaml",
        &pipeline(&format!(
            "{{artifacts: [ov_fp32, ov_fp16], {common}, version: v2, gates: {{cosine_min: 0.99}}}}"
        )),
    );
    let (code, r) = p.run_json("r.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    let rb = std::fs::read_to_string(rel.join("t/v2/ROLLBACK.md")).unwrap();
    assert!(
        rb.contains("**v1**")
            && rb.contains(&format!(
                "facebuild release rollback t v1 --dir {}",
                rel.display()
            )),
        "{rb}"
    );
    let v1_bin = sums
        .lines()
        .find(|l| l.ends_with("  ov_fp16/model.bin"))
        .unwrap()
        .split("  ")
        .next()
        .unwrap();
    assert!(rb.contains(v1_bin), "names v1's digests");
    assert_eq!(
        std::fs::read_to_string(rel.join("t/current/RELEASE"))
            .unwrap()
            .trim(),
        "v2"
    );
    let list = p.run(&["release", "list", "--dir", rel.to_str().unwrap(), "--json"]);
    let l: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(
        l.as_array()
            .unwrap()
            .iter()
            .map(|x| (
                x["version"].as_str().unwrap(),
                x["current"].as_bool().unwrap()
            ))
            .collect::<Vec<_>>(),
        [("v1", false), ("v2", true)]
    );

    // 5. Roll back: current is v1 again, byte for byte.
    let out = p.run(&[
        "release",
        "rollback",
        "t",
        "v1",
        "--dir",
        rel.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("current is now v1 (was v2)"));
    for line in sums.lines() {
        let (_, f) = line.split_once("  ").unwrap();
        assert_eq!(
            std::fs::read(v1.join(f)).unwrap(),
            std::fs::read(rel.join("t/current").join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(
        !rel.join("t/current/ov_fp32/model.xml").exists(),
        "nothing of v2 is left in current"
    );
    let bad = p.run(&[
        "release",
        "rollback",
        "t",
        "v9",
        "--dir",
        rel.to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("releases of `t`: v1, v2"));

    // The run report: self-contained HTML with the plots, JUnit with steps and gates.
    let html = std::fs::read_to_string(p.path("out/t/report.html")).unwrap();
    assert!(
        html.matches("<svg").count() >= 7,
        "2 cosine histograms, 5 latency histograms, a throughput plot"
    );
    assert!(
        html.contains("cosine similarity")
            && html.contains("throughput vs batch size")
            && html.contains("batch-1 latency")
    );
    assert!(
        !html.contains("<script") && !html.contains("src=\"http"),
        "self-contained"
    );
    let junit = std::fs::read_to_string(p.path("out/t/junit.xml")).unwrap();
    assert!(
        junit.contains("<testsuite name=\"steps\"")
            && junit.contains("<testsuite name=\"gates.compare\"")
            && junit.contains("<testsuite name=\"gates.release\""),
        "{junit}"
    );
}

/// Benchmark JSON for the real recognition model in every runtime configuration the issue
/// names, with OpenVINO's benchmark_app as the reference (ratios printed, not asserted).
#[test]
fn real_model_benchmark_with_benchmark_app_reference() {
    let Some(shared) = shared() else { return };
    let p = Project::new();
    p.write(
        "m.yaml",
        &format!(
            "schema: 1\nname: m\nmodel:\n  path: {}\n  task: recognition\n  input: {{name: input, shape: [1, 3, 112, 112]}}\n  preprocessing: {{color: RGB, mean: [127.5, 127.5, 127.5], std: [127.5, 127.5, 127.5], size: [112, 112]}}\ndatasets:\n  calib: {{path: {}, count: 16}}\nsteps:\n  ov_fp32: {{kind: convert, params: {{backend: openvino, precision: fp32}}}}\n  ov_fp16: {{kind: convert, params: {{backend: openvino, precision: fp16}}}}\n  calibrate: {{kind: calibrate, params: {{dataset: calib}}}}\n  ov_int8: {{kind: convert, params: {{backend: openvino, precision: int8, calibration: calibrate}}}}\n  onnx: {{kind: simplify, params: {{samples: 1}}}}\n  benchmark:\n    kind: benchmark\n    params:\n      targets: [onnx, {{step: ov_fp32, label: ov_fp32_f32, precision_hint: f32}}, {{step: ov_fp32, label: ov_fp32_bf16, precision_hint: bf16}}, ov_fp16, ov_int8]\n      openvino_hints: [throughput]\n      iterations: 100\n      time_budget_s: 0.5\n      reference: benchmark_app\n      reference_seconds: 1\n",
            shared.join("models/mobilefacenet.onnx").display(),
            shared.join("faces/pairs").display()
        ),
    );
    let (code, r) = p.run_json("m.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    let b = json(&p.path("out/m/benchmark/report.json"));
    for x in b["results"].as_array().unwrap() {
        let ratio = &x["reference"]["throughput_ratio"];
        if x["artifact"] == "openvino-ir" {
            assert!(ratio.as_f64().is_some(), "{x:#}");
        }
        say(&format!(
            "mobilefacenet {}: executed {}, p50 {:.3} ms, throughput b1 {:.0}/s, benchmark_app {} /s, ratio {}",
            x["label"],
            x["execution"]["precision"],
            x["latency_batch1_ms"]["median"].as_f64().unwrap(),
            x["throughput"][0]["images_per_s"].as_f64().unwrap(),
            x["reference"]["throughput_fps"],
            ratio
        ));
    }
}
