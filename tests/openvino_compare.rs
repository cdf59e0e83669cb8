//! OpenVINO conversion, calibration and the compare gate, with real OpenVINO, NNCF and ONNX
//! Runtime: on the real MobileFaceNet and labelled face pairs in ../shared (skipped, with a
//! message, when absent), and on the built-in pipeline everywhere.

mod common;
use common::*;
use facebuild::CompareReport;

/// MobileFaceNet from ../shared: simplify, FP32/FP16/INT8 IRs and a gated compare on the
/// labelled pairs, with `extra_steps` appended.
fn mobilefacenet_pipeline(shared: &std::path::Path, calib_seed: u64, extra_steps: &str) -> String {
    mobilefacenet_head(shared, "mfn")
        + &format!(
            r#"datasets:
  faces: {{path: {faces}, pairs: pairs.csv}}
  calib: {{path: {faces}, count: 24, seed: {calib_seed}}}
steps:
  simplify: {{kind: simplify, params: {{samples: 2}}}}
  ov_fp32: {{kind: convert, from: simplify, params: {{backend: openvino, precision: fp32}}}}
  ov_fp16: {{kind: convert, from: simplify, params: {{backend: openvino, precision: fp16}}}}
  calibrate: {{kind: calibrate, params: {{dataset: calib}}}}
  ov_int8: {{kind: convert, from: simplify, params: {{backend: openvino, precision: int8, calibration: calibrate}}}}
  compare:
    kind: compare
    params:
      dataset: faces
      candidates: [ov_fp32, ov_fp16, ov_int8]
      cosine_min: 0.9
      candidate_gates: {{ov_fp32: {{cosine_min: 0.9999}}, ov_fp16: {{cosine_min: 0.999}}}}
{extra_steps}"#,
            faces = shared.join("faces/pairs").display()
        )
}

/// Real MobileFaceNet: FP32/FP16/INT8 figures, a reproducible report, and a calibration
/// change that reruns only the INT8 branch.
#[test]
fn real_recognition_model_fp32_fp16_int8_and_calibration_rerun_rule() {
    let Some(shared) = shared() else { return };
    let p = Project::new();
    p.write("m.yaml", &mobilefacenet_pipeline(&shared, 1, ""));
    let (code, r) = p.run_json("m.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    let rep: CompareReport = p.report("out/mfn/compare/report.json");
    let pairs = rep.dataset.pairs.as_ref().unwrap();
    assert_eq!(pairs.genuine, 38, "{:#?}", rep.dataset);
    // shared/README says 261 different pairs; pairs.csv holds 262 (300 rows, CRLF).
    assert_eq!(pairs.impostor, 262);
    let c = |label: &str| rep.candidates.iter().find(|c| c.label == label).unwrap();
    let (fp32, fp16, int8) = (c("ov_fp32"), c("ov_fp16"), c("ov_int8"));
    assert_eq!(
        fp32.execution.as_ref().unwrap().precision,
        "f32",
        "accuracy gates run OpenVINO with the f32 hint"
    );
    assert!(fp32.cosine.unwrap().min >= 0.9999, "{fp32:#?}");
    assert!(fp16.cosine.unwrap().min >= 0.999, "{fp16:#?}");
    // 262 impostor pairs resolve FARs down to 1/262: TAR at 1e-3 is not measurable.
    let v = int8.verification.as_ref().unwrap();
    assert_eq!(v.candidate.far_resolution, 1.0 / 262.0);
    assert_eq!(v.candidate.tar_at_far_1e3, None, "{int8:#?}");
    assert!(v.candidate.tar_at_far_1e2.is_some());
    assert!(
        v.tar_at_operating_far.is_none(),
        "operating FAR 1e-3 is below the resolution"
    );
    for x in [fp32, fp16, int8] {
        let v = x.verification.as_ref().unwrap();
        let cos = x.cosine.unwrap();
        say(&format!(
            "mobilefacenet {}: executed {}, cosine min {:.6} p01 {:.6} mean {:.6}, TAR@1e-2 {:?} (TAR@1e-3 {:?}: FAR resolution {:.2e}), EER {:.4}, flips {}",
            x.label,
            x.execution.as_ref().unwrap().precision,
            cos.min,
            cos.p01,
            cos.mean,
            v.candidate.tar_at_far_1e2,
            v.candidate.tar_at_far_1e3,
            v.candidate.far_resolution,
            v.candidate.eer,
            v.flips_at_reference_threshold
        ));
    }
    say(&format!(
        "mobilefacenet reference: {:?}",
        rep.reference.verification
    ));

    // Same inputs, same outputs: the report is reproducible byte for byte.
    let first = std::fs::read(p.path("out/mfn/compare/report.json")).unwrap();
    let (_, _) = p.run_json("m.yaml", &["--no-cache", "--target", "compare"]);
    assert_eq!(
        first,
        std::fs::read(p.path("out/mfn/compare/report.json")).unwrap(),
        "compare reports must be identical across runs"
    );

    // Changing only the calibration set reruns calibrate and the INT8 branch, nothing else.
    p.write("m.yaml", &mobilefacenet_pipeline(&shared, 2, ""));
    let plan = p.plan_json("m.yaml");
    let reasons: Vec<String> = plan
        .steps
        .iter()
        .filter_map(|s| match &s.decision {
            Decision::Run { reasons, .. } => Some(format!("{}: {reasons:?}", s.step)),
            _ => None,
        })
        .collect();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].contains("calibrate") && reasons[0].contains("input `dataset:calib` changed"),
        "{reasons:?}"
    );
    let (code, r) = p.run_json("m.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    for (step, want) in [
        ("simplify", Status::Cached),
        ("ov_fp32", Status::Cached),
        ("ov_fp16", Status::Cached),
        ("calibrate", Status::Built),
        ("ov_int8", Status::Built),
        ("compare", Status::Built),
    ] {
        assert_eq!(status_of(&r, step), want, "{step}: {r:#?}");
    }
}

/// A candidate fed with the wrong normalisation fails its gate with a readable message.
#[test]
fn a_candidate_fed_with_the_wrong_normalisation_fails_the_gate() {
    let Some(shared) = shared() else { return };
    let p = Project::new();
    let broken = r#"  compare_broken:
    kind: compare
    params:
      dataset: faces
      candidates:
        - {step: ov_fp32, label: fp32_wrong_mean_std, preprocessing: {color: RGB, mean: [0, 0, 0], std: [1, 1, 1], size: [112, 112]}}
      cosine_min: 0.99
"#;
    p.write("m.yaml", &mobilefacenet_pipeline(&shared, 1, broken));
    let (code, r) = p.run_json("m.yaml", &["--keep-going"]);
    assert_eq!(code, 1, "{r:#?}");
    assert_eq!(
        status_of(&r, "compare"),
        Status::Built,
        "the correct candidates still pass"
    );
    assert_eq!(status_of(&r, "compare_broken"), Status::Failed);
    let err = error_of(&r, "compare_broken").to_string();
    assert!(
        err.contains("candidate `fp32_wrong_mean_std`")
            && err.contains("cosine_min")
            && err.contains("violates limit 0.99"),
        "{err}"
    );
    let md = std::fs::read_to_string(p.path("out/mfn/compare_broken/report.md")).unwrap();
    assert!(md.contains("**FAIL**"), "{md}");
    say(&format!(
        "broken candidate: {}",
        err.lines().next().unwrap()
    ));
}

/// The default pipeline builds every artifact (TensorRT unavailable), then is all cached.
#[test]
fn default_pipeline_builds_every_artifact_and_then_is_fully_cached() {
    let p = Project::new();
    let yaml = default_pipeline_short_benchmark();
    p.write("pipelines/recognition.yaml", &yaml);
    let (code, r) = p.run_json("pipelines/recognition.yaml", &[]);
    released(p.dir.path(), code, &r);
    // TensorRT is not installed on these machines: its steps say so, everything else builds.
    assert!(
        statuses(&r).iter().all(|(n, s)| *s == Status::Built
            || (n.starts_with("tensorrt") && *s == Status::Unavailable)),
        "{r:#?}"
    );
    for f in [
        "openvino_fp32/model.xml",
        "quantize/model.onnx",
        "openvino_fp16/model.bin",
        "openvino_int8/model.xml",
        "calibrate/calibration.npy",
        "compare/report.md",
    ] {
        assert!(
            p.path(&format!("pipelines/out/recognition/{f}")).exists(),
            "{f}"
        );
    }
    let rep: CompareReport = p.report("pipelines/out/recognition/compare/report.json");
    assert_eq!(
        rep.dataset.pairs.unwrap().kind,
        "folder per identity (12 identities)"
    );
    let (code, r) = p.run_json("pipelines/recognition.yaml", &[]);
    released(p.dir.path(), code, &r);
    assert!(
        statuses(&r).iter().all(|(n, s)| *s == Status::Cached
            || (n.starts_with("tensorrt") && *s == Status::Unavailable)),
        "{r:#?}"
    );
}
