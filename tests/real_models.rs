//! The real InsightFace-family models in ../shared (skipped, with a message, when absent).

mod common;
use common::*;

#[test]
fn check_reports_every_real_model() {
    let Some(shared) = shared() else { return };
    let cases = [
        ("mobilefacenet.onnx", "input", "[1, 3, 112, 112]", false),
        ("scrfd_500m_kps.onnx", "images", "[1, 3, 640, 640]", false),
        ("scrfd_2.5g_bnkps.onnx", "input.1", "[1, 3, H, W]", true),
        (
            "retinaface_mnet_640.onnx",
            "input0",
            "[1, 3, 640, 640]",
            false,
        ),
    ];
    for (file, input, shape, dynamic) in cases {
        let p = Project::new();
        let task = if file.contains("facenet") {
            "recognition"
        } else {
            "detection"
        };
        p.write("p.yaml", &format!("schema: 1\nname: t\nmodel:\n  path: {}\n  task: {task}\n  input:\n    name: {input}\n    shape: {shape}\nsteps:\n  check:\n    kind: check\n", shared.join("models").join(file).display()));
        let (code, r) = p.run_json("p.yaml", &[]);
        assert_eq!(code, 0, "{file}: {r:#?}");
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(p.path("out/t/check/report.json")).unwrap())
                .unwrap();
        assert_eq!(report["onnx_checker"]["ok"], true, "{file}");
        assert_eq!(report["onnxruntime"]["loaded"], true, "{file}");
        let dims = &report["graph"]["inputs"][0]["shape"];
        assert_eq!(dims[2].is_string(), dynamic, "{file}: {dims}");
        eprintln!("{file}: {}", r["steps"][0]["summary"]);
    }
}

#[test]
fn mobilefacenet_example_simplifies_equivalently_on_aligned_real_faces() {
    let Some(shared) = shared() else { return };
    let p = Project::new();
    let m = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/mobilefacenet.yaml"
    ))
    .unwrap()
    .replace("../../shared", shared.to_str().unwrap())
    // The example's benchmark is sized for real figures; a test only needs it to run.
    .replace("iterations: 1000", "iterations: 30")
    .replace("time_budget_s: 3", "time_budget_s: 0.3")
    .replace("reference_seconds: 10", "reference_seconds: 1")
    .replace("cold_start_ms_max: 2000", "cold_start_ms_max: 60000")
    .replace("p99_ms_max: 20", "p99_ms_max: 2000")
    .replace("throughput_min: 200", "throughput_min: 1");
    p.write("m.yaml", &m);
    let (code, r) = p.run_json("m.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(p.path("out/mobilefacenet/simplify/report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        report["samples"]["images"], 61,
        "every photo of the pairs set, aligned"
    );
    let cos = report["outputs"][0]["cosine"]["min"].as_f64().unwrap();
    assert!(cos >= 0.9999, "{cos}");
    assert!(report["tool"]["nodes_after"].as_u64() < report["tool"]["nodes_before"].as_u64());
    assert_eq!(
        report["execution"]["settings"]["graph_optimization_level"],
        "disabled"
    );
}

#[test]
fn dynamic_detector_keeps_named_dims_when_asked() {
    let Some(shared) = shared() else { return };
    let p = Project::new();
    let model = shared.join("models/scrfd_2.5g_bnkps.onnx");
    p.write(
        "d.yaml",
        &format!(
            "schema: 1\nname: d\nmodel:\n  path: {}\n  task: detection\n  input:\n    name: input.1\n    shape: [1, 3, H, W]\nsteps:\n  simplify:\n    kind: simplify\n    params:\n      samples: 2\n      test_dims: {{H: 320, W: 256}}\n      cosine_min: 0.999\n",
            model.display()
        ),
    );
    let (code, r) = p.run_json("d.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.path("out/d/simplify/report.json")).unwrap())
            .unwrap();
    assert_eq!(
        report["tool"]["inputs_after"]["input.1"],
        serde_json::json!([1, 3, "H", "W"]),
        "{report:#}"
    );
    assert_eq!(report["outputs"].as_array().unwrap().len(), 9);
}
