//! Detection pipelines with real ONNX Runtime and OpenVINO: the built-in SCRFD-layout
//! detector everywhere; the real SCRFD (static and dynamic) and RetinaFace models and photos
//! in ../shared when present (skipped with a message otherwise). Also: Rust decoding checked
//! box by box against an independent numpy decoder written from InsightFace's scrfd.py and
//! Pytorch_Retinaface, and detector-based alignment for recognition.

mod common;
use common::*;

use camino::Utf8PathBuf;
use facebuild::{CompareReport, DetectorFamily, DetectorSpec, Preprocessing};
use facebuild::{OnnxRuntime, Runtime};

fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A candidate's entry in a compare report.
fn candidate<'a>(rep: &'a CompareReport, label: &str) -> &'a facebuild::CandidateReport {
    rep.candidates
        .iter()
        .find(|c| c.label == label)
        .unwrap_or_else(|| panic!("no candidate {label}"))
}

/// What a convert step's report says of its conversion (the fields these tests read).
#[derive(serde::Deserialize)]
struct ConvertReport {
    conversion: Conversion,
}

#[derive(serde::Deserialize)]
struct Conversion {
    args: Vec<String>,
}

/// One detection as the numpy reference decoder prints it.
#[derive(serde::Deserialize)]
struct RefDetection {
    bbox: [f32; 4],
    score: f32,
    kps: Vec<[f32; 2]>,
}

/// The default detection pipeline compares one dynamic IR at two sizes, then is all cached.
#[test]
fn default_detection_pipeline_runs_one_dynamic_ir_at_two_sizes() {
    let p = Project::new();
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/pipelines/detection.yaml"
    ))
    .unwrap();
    p.write("pipelines/detection.yaml", &yaml);
    let (code, r) = p.run_json("pipelines/detection.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    assert!(
        statuses(&r).iter().all(|(n, s)| *s == Status::Built
            || (n.starts_with("tensorrt") && *s == Status::Unavailable)),
        "{r:#?}"
    );
    let rep: CompareReport = p.report("pipelines/out/detection/compare/report.json");
    assert!(rep.is_detection());
    let fp32 = candidate(&rep, "openvino_fp32");
    let sizes = fp32.sizes.as_ref().unwrap();
    assert_eq!(sizes.len(), 2, "two input sizes from one IR");
    assert_ne!(sizes[0].input_size, sizes[1].input_size);
    for s in sizes {
        let m = &s.metrics;
        assert!(
            m.reference_boxes > 0,
            "the built-in detector must detect something: {m:#?}"
        );
        assert_eq!(m.recall, 1.0, "{m:#?}");
        assert_eq!(m.candidate_boxes, m.reference_boxes, "{m:#?}");
    }
    // The IR was converted once: a dynamic H/W IR (ovc ranges from `model.input.dims`).
    let conv: ConvertReport = p.report("pipelines/out/detection/openvino_fp32/report.json");
    let args = conv.conversion.args;
    assert!(
        args.contains(&"input.1[1,3,320..640,320..640]".to_string()),
        "{args:?}"
    );
    let (_, r) = p.run_json("pipelines/detection.yaml", &[]);
    assert!(
        statuses(&r).iter().all(|(n, s)| *s == Status::Cached
            || (n.starts_with("tensorrt") && *s == Status::Unavailable)),
        "{r:#?}"
    );
}

/// A real detector from ../shared, as the manifest declares it.
struct Detector<'a> {
    model: &'a str,
    input: &'a str,
    shape: &'a str,
    /// Appended to `model.input` (e.g. `, dims: {...}`).
    extra_input: &'a str,
    feed: &'a str,
    detector: &'a str,
    /// Compare params prepended to the gates (e.g. `input_sizes: [...], `).
    sizes: &'a str,
}

/// FP32 and FP16 IRs of `d`, compared on the scenes in ../shared.
fn detector_pipeline(shared: &std::path::Path, d: &Detector) -> String {
    format!(
        indoc! {r#"
            schema: 1
            name: det
            model:
              path: {m}
              task: detection
              input: {{name: "{input}", shape: {shape}{extra}}}
              preprocessing: {feed}
              detector: {detector}
            datasets:
              scenes: {{path: {scenes}}}
            steps:
              ov_fp32: {{kind: convert, params: {{backend: openvino, precision: fp32}}}}
              ov_fp16: {{kind: convert, params: {{backend: openvino, precision: fp16}}}}
              compare:
                kind: compare
                params: {{dataset: scenes, candidates: [ov_fp32, ov_fp16], {sizes}recall_min: 0.9, candidate_gates: {{ov_fp32: {{recall_min: 1.0, fp_per_image_max: 0.0, nms_parity_min: 1.0}}}}}}
        "#},
        m = shared.join("models").join(d.model).display(),
        input = d.input,
        shape = d.shape,
        extra = d.extra_input,
        feed = d.feed,
        detector = d.detector,
        sizes = d.sizes,
        scenes = shared.join("faces/scenes").display()
    )
}

const SCRFD_FEED: &str =
    "{color: RGB, mean: [127.5, 127.5, 127.5], std: [128, 128, 128], size: [640, 640]}";
const RETINA_FEED: &str = "{color: BGR, mean: [104, 117, 123], std: [1, 1, 1], size: [640, 640]}";

fn check_real_detector(name: &str, yaml: String, want_sizes: usize) {
    let p = Project::new();
    p.write("d.yaml", &yaml);
    let (code, r) = p.run_json("d.yaml", &[]);
    assert_eq!(code, 0, "{name}: {r:#?}");
    let rep: CompareReport = p.report("out/det/compare/report.json");
    let fp32 = candidate(&rep, "ov_fp32");
    assert_eq!(fp32.execution.as_ref().unwrap().precision, "f32");
    let sizes = fp32.sizes.as_ref().unwrap();
    assert_eq!(sizes.len(), want_sizes);
    for s in sizes {
        let m = &s.metrics;
        assert!(
            m.reference_boxes >= 4,
            "{name}: the scenes hold many faces: {m:#?}"
        );
        assert_eq!(
            m.recall, 1.0,
            "{name} FP32 IR recall at {:?}: {m:#?}",
            s.input_size
        );
        assert_eq!(
            m.fp_per_image, 0.0,
            "{name} FP32 IR extra detections at {:?}: {m:#?}",
            s.input_size
        );
    }
    // Every gated figure has a 95% interval, resampled by image: recall 1 on every image
    // cannot move, score drift can.
    let total = fp32.total.as_ref().unwrap();
    assert_eq!(total.recall_ci95, Some([1.0, 1.0]), "{total:#?}");
    let drift = total.score_drift.max_ci95.unwrap();
    assert!(
        drift[0] <= total.score_drift.max.unwrap() && drift[1] >= drift[0],
        "{total:#?}"
    );
    let res = rep.dataset.resampling.as_ref().unwrap();
    assert_eq!((res.by.as_str(), res.units), ("image", 4));
    for label in ["ov_fp32", "ov_fp16"] {
        for s in candidate(&rep, label).sizes.as_ref().unwrap() {
            let m = &s.metrics;
            say(&format!(
                "{name} {label} at {:?}: boxes {} ref / {} cand, recall {}, fp/img {}, score drift max {:?}, IoU min {:?}, landmark NME max {:?}, NMS parity {}",
                s.input_size,
                m.reference_boxes,
                m.candidate_boxes,
                m.recall,
                m.fp_per_image,
                m.score_drift.max,
                m.iou.min,
                m.landmark_nme.max,
                m.nms_parity
            ));
        }
    }
}

/// Real SCRFD-0.5GF at 640: FP32 IR recall 1, no extra boxes.
#[test]
fn real_scrfd_static_640() {
    let Some(shared) = shared() else { return };
    check_real_detector(
        "scrfd_500m_kps",
        detector_pipeline(
            &shared,
            &Detector {
                model: "scrfd_500m_kps.onnx",
                input: "images",
                shape: "[1, 3, 640, 640]",
                extra_input: "",
                feed: SCRFD_FEED,
                detector: "{family: scrfd}",
                sizes: "",
            },
        ),
        1,
    );
}

/// Real SCRFD-2.5GF with dynamic H/W: two sizes from one IR.
#[test]
fn real_scrfd_dynamic_hw_at_two_sizes_from_one_ir() {
    let Some(shared) = shared() else { return };
    let dims = ", dims: {H: {min: 320, opt: 640, max: 640}, W: {min: 320, opt: 640, max: 640}}";
    check_real_detector(
        "scrfd_2.5g_bnkps",
        detector_pipeline(
            &shared,
            &Detector {
                model: "scrfd_2.5g_bnkps.onnx",
                input: "input.1",
                shape: "[1, 3, H, W]",
                extra_input: dims,
                feed: SCRFD_FEED,
                detector: "{family: scrfd}",
                sizes: "input_sizes: [[640, 640], [320, 320]], ",
            },
        ),
        2,
    );
}

/// Real RetinaFace-MobileNet at 640.
#[test]
fn real_retinaface_640() {
    let Some(shared) = shared() else { return };
    check_real_detector(
        "retinaface_mnet_640",
        detector_pipeline(
            &shared,
            &Detector {
                model: "retinaface_mnet_640.onnx",
                input: "input0",
                shape: "[1, 3, 640, 640]",
                extra_input: "",
                feed: RETINA_FEED,
                detector: "{family: retinaface, score_threshold: 0.6}",
                sizes: "",
            },
        ),
        1,
    );
}

/// Rust's decoding of a real model's raw outputs, box by box, against the numpy reference.
#[test]
fn rust_decoding_matches_the_reference_decoder_on_real_outputs() {
    let Some(shared) = shared() else { return };
    let tc = toolchain();
    let rt = OnnxRuntime::new(&tc, Some(2)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let retina_feed = Preprocessing {
        color: facebuild::ColorOrder::BGR,
        mean: vec![104.0, 117.0, 123.0],
        std: vec![1.0; 3],
        size: [640, 640],
        resize: None,
    };
    let cases = [
        (
            "scrfd_500m_kps.onnx",
            DetectorFamily::Scrfd,
            Preprocessing::scrfd([640, 640]),
        ),
        (
            "scrfd_2.5g_bnkps.onnx",
            DetectorFamily::Scrfd,
            Preprocessing::scrfd([640, 640]),
        ),
        (
            "scrfd_2.5g_bnkps.onnx",
            DetectorFamily::Scrfd,
            Preprocessing::scrfd([320, 320]),
        ),
        (
            "retinaface_mnet_640.onnx",
            DetectorFamily::Retinaface,
            retina_feed,
        ),
    ];
    let mut total = 0;
    for (model, family, feed) in cases {
        let spec = DetectorSpec {
            family,
            score_threshold: 0.5,
            nms_iou: 0.4,
            strides: None,
            min_sizes: None,
            variance: None,
        };
        let mut m = rt
            .load(&Utf8PathBuf::from_path_buf(shared.join("models").join(model)).unwrap())
            .unwrap();
        let input = m.inputs()[0].0.clone();
        for img in [
            "selfie.jpg",
            "two_people.jpg",
            "obama_and_biden.jpg",
            "many_face.png",
        ] {
            let photo = facebuild::decode_image(
                &Utf8PathBuf::from_path_buf(shared.join("faces/scenes").join(img)).unwrap(),
            )
            .unwrap();
            let (boxed, _) = facebuild::letterbox(&photo, feed.size);
            let t = facebuild::to_tensor(&boxed, &feed, facebuild::Layout::NCHW);
            let out = m.run(&[(input.clone(), t.into_dyn())]).unwrap();
            let (h, w) = (feed.size[0] as usize, feed.size[1] as usize);
            let ours = facebuild::decode(&spec, &out, (h, w)).unwrap();
            let mut args = vec![
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/reference_decode.py"
                )
                .to_string(),
                format!("{family:?}").to_lowercase(),
                h.to_string(),
                w.to_string(),
                "0.5".into(),
                "0.4".into(),
            ];
            for (i, (_, a)) in out.iter().enumerate() {
                let f = dir.path().join(format!("out{i}.npy"));
                ndarray_npy::write_npy(&f, a).unwrap();
                args.push(f.display().to_string());
            }
            let res = std::process::Command::new(tc.python())
                .args(&args)
                .output()
                .unwrap();
            assert!(
                res.status.success(),
                "{}",
                String::from_utf8_lossy(&res.stderr)
            );
            let theirs: Vec<RefDetection> = serde_json::from_slice(&res.stdout).unwrap();
            assert_eq!(
                ours.len(),
                theirs.len(),
                "{model} {img} at {h}x{w}: kept {} boxes, the reference {}",
                ours.len(),
                theirs.len()
            );
            for (a, b) in ours.iter().zip(&theirs) {
                let bb = b.bbox;
                for k in 0..4 {
                    assert!(
                        (a.bbox[k] - bb[k]).abs() < 1e-2,
                        "{model} {img}: box {:?} vs reference {bb:?}",
                        a.bbox
                    );
                }
                assert!((a.score - b.score).abs() < 1e-6);
                for (p, q) in a.kps.unwrap().iter().zip(&b.kps) {
                    assert!(
                        (p[0] - q[0]).abs() < 1e-2 && (p[1] - q[1]).abs() < 1e-2,
                        "{model} {img}: landmarks differ"
                    );
                }
            }
            total += ours.len();
        }
    }
    say(&format!(
        "decoding: {total} kept boxes over 4 model/size cases x 4 photos match the numpy reference decoder"
    ));
    assert!(total > 50);
}

/// Photos aligned with a detector's landmarks separate identities far better than centre
/// crops: the reference model's own verification figures on the 299 labelled pairs.
#[test]
fn alignment_separates_identities_far_better_than_centre_crops() {
    let Some(shared) = shared() else { return };
    let p = Project::new();
    let manifest = |align: &str| {
        mobilefacenet_head(&shared, "al")
            + &format!(
                indoc! {"
                datasets:
                  faces: {{path: {}, pairs: pairs.csv{}}}
                steps:
                  ov_fp32: {{kind: convert, params: {{backend: openvino, precision: fp32}}}}
                  compare: {{kind: compare, params: {{dataset: faces, candidates: [ov_fp32]}}}}
            "},
                shared.join("faces/pairs").display(),
                align
            )
    };
    let mut figures = Vec::new();
    for (label, align) in [
        ("centre crops", String::new()),
        (
            "aligned",
            format!(
                ", align: {{model: {}, detector: {{family: scrfd}}}}",
                shared.join("models/scrfd_500m_kps.onnx").display()
            ),
        ),
    ] {
        p.write("a.yaml", &manifest(&align));
        let (code, r) = p.run_json("a.yaml", &[]);
        assert_eq!(code, 0, "{r:#?}");
        let rep: CompareReport = p.report("out/al/compare/report.json");
        let v = rep.reference.verification.clone().unwrap();
        let fit = rep.dataset.fit.clone().unwrap_or_default();
        say(&format!(
            "mobilefacenet on 299 pairs, {label}: fit {fit:?}, TAR@FAR=1e-3 {:?}, TAR@FAR=1e-2 {:?}, EER {}",
            v.tar_at_far_1e3, v.tar_at_far_1e2, v.eer
        ));
        figures.push((
            fit,
            v.eer,
            v.tar_at_far_1e2.expect("1e-2 is resolved by 262 impostors"),
        ));
    }
    let (centre, aligned) = (&figures[0], &figures[1]);
    assert_eq!(
        aligned.0.get("aligned"),
        Some(&61),
        "every photo had a face: {:?}",
        aligned.0
    );
    assert!(
        aligned.1 < 0.05 && centre.1 > 0.2,
        "EER aligned {} vs centre crops {}",
        aligned.1,
        centre.1
    );
    assert!(
        aligned.2 > 0.9 && aligned.2 > centre.2 + 0.5,
        "TAR@1e-2 aligned {} vs centre crops {}",
        aligned.2,
        centre.2
    );
}

/// A detector run as `generic`: every one of SCRFD-2.5GF's nine outputs is compared by name,
/// so the FP16 IR's drift in the box and landmark outputs is caught by `atol`/`rtol` while its
/// score outputs pass; loosened per candidate, the step passes. Tolerances on a detection
/// model are refused.
#[test]
fn detector_as_generic_is_compared_output_by_output() {
    let Some(shared) = shared() else { return };
    let p = Project::new();
    let manifest = |task: &str, gates: &str| {
        format!(
            indoc! {r#"
                schema: 1
                name: gen
                model:
                  path: {m}
                  task: {task}
                  input: {{name: "input.1", shape: [1, 3, H, W], dims: {{H: {{min: 320, opt: 640, max: 640}}, W: {{min: 320, opt: 640, max: 640}}}}}}
                  preprocessing: {{color: RGB, mean: [127.5, 127.5, 127.5], std: [128, 128, 128], size: [640, 640], resize: letterbox}}
                  detector: {{family: scrfd}}
                datasets:
                  scenes: {{path: {scenes}}}
                steps:
                  ov_fp32: {{kind: convert, params: {{backend: openvino, precision: fp32}}}}
                  ov_fp16: {{kind: convert, params: {{backend: openvino, precision: fp16}}}}
                  compare:
                    kind: compare
                    params: {{dataset: scenes, candidates: [ov_fp32, ov_fp16], atol: 1.0e-3, rtol: 1.0e-3{gates}}}
            "#},
            m = shared.join("models/scrfd_2.5g_bnkps.onnx").display(),
            scenes = shared.join("faces/scenes").display(),
            task = task,
            gates = gates,
        )
    };
    p.write("g.yaml", &manifest("generic", ""));
    let (code, r) = p.run_json("g.yaml", &[]);
    assert_ne!(code, 0, "FP16 boxes drift beyond 1e-3: {r:#?}");
    let err = error_of(&r, "compare");
    let rep: CompareReport = p.report("out/gen/compare/report.json");
    assert_eq!(rep.task.as_deref(), Some("generic"));
    for c in &rep.candidates {
        let outs = c.outputs.as_ref().expect("per-output figures");
        assert_eq!(outs.len(), 9, "{}: every output", c.label);
        for o in outs {
            let last = *o.shape.last().unwrap();
            let out = o.out_of_tolerance.unwrap();
            say(&format!(
                "scrfd_2.5g as generic, {} output {} {:?}: max abs {:.2e}, max rel {:.2e}, cos min {:.6}, out of tolerance {out}/{}",
                c.label,
                o.name,
                o.shape,
                o.max_abs_error,
                o.max_rel_error,
                o.cosine.min,
                o.elements
            ));
            assert_eq!(o.non_finite, 0);
            assert!(
                o.cosine.min > 0.999,
                "{} {}: {:?}",
                c.label,
                o.name,
                o.cosine
            );
            if c.label == "ov_fp32" || last == 1 {
                assert_eq!(out, 0, "{} {} is within 1e-3", c.label, o.name);
            }
        }
        let drifted = outs
            .iter()
            .filter(|o| o.out_of_tolerance != Some(0))
            .count();
        assert_eq!(c.passed, Some(drifted == 0), "{}", c.label);
    }
    assert_eq!(candidate(&rep, "ov_fp32").passed, Some(true));
    assert!(
        err.contains("ov_fp16") && !err.contains("ov_fp32") && err.contains("out of atol"),
        "{err}"
    );
    // Loosened for the FP16 IR alone: the step passes.
    p.write(
        "g.yaml",
        &manifest("generic", ", candidate_gates: {ov_fp16: {atol: 0.1}}"),
    );
    let (code, r) = p.run_json("g.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    // Tolerances belong to per-output compares.
    p.write("g.yaml", &manifest("detection", ""));
    let (code, r) = p.run_json("g.yaml", &[]);
    assert_ne!(code, 0);
    assert!(
        error_of(&r, "compare").contains("per-output tolerances"),
        "{}",
        error_of(&r, "compare")
    );
}

/// A pack of a detector and a recognizer, with FP16 and INT8 IRs of each and a chain over
/// `dataset`; per-model compares of the recognizer and the detector beside it.
fn pack_yaml(
    (det, det_input, det_shape, det_size): (&str, &str, &str, u32),
    (rec, rec_input): (&str, &str),
    (faces, calib_rec, scenes): (&str, &str, &str),
) -> String {
    format!(
        r#"schema: 1
name: pack
models:
  det:
    {det}
    task: detection
    input: {{name: "{det_input}", shape: {det_shape}}}
    preprocessing: {{color: RGB, mean: [127.5, 127.5, 127.5], std: [128, 128, 128], size: [{det_size}, {det_size}]}}
    detector: {{family: scrfd}}
  rec:
    {rec}
    task: recognition
    input: {{name: "{rec_input}", shape: [1, 3, 112, 112]}}
    preprocessing: {{color: RGB, mean: [127.5, 127.5, 127.5], std: [127.5, 127.5, 127.5], size: [112, 112]}}
datasets:
  faces: {faces}
  calib_det: {scenes}
  calib_rec: {calib_rec}
steps:
  openvino_fp16: {{kind: convert, each: [det, rec], params: {{backend: openvino, precision: fp16}}}}
  calibrate: {{kind: calibrate, each: [det, rec], params: {{dataset: "calib_{{model}}"}}}}
  openvino_int8: {{kind: convert, each: [det, rec], params: {{backend: openvino, precision: int8, calibration: calibrate}}}}
  rec_compare: {{kind: compare, params: {{dataset: calib_rec, candidates: [rec_openvino_int8], cosine_min: 0.5}}}}
  release:
    kind: release
    params: {{artifacts: [det_openvino_fp16, rec_openvino_fp16], layouts: [], package: {{detector: det, recognizer: rec}}}}
  chain:
    kind: chain
    params:
      dataset: faces
      detector: det
      recognizer: rec
      combinations:
        all_fp16: {{det: det_openvino_fp16, rec: rec_openvino_fp16}}
        all_int8: {{det: det_openvino_int8, rec: rec_openvino_int8}}
        det_int8: {{det: det_openvino_int8}}
        rec_int8: {{rec: rec_openvino_int8}}
"#
    )
}

fn chain_figures(
    r: &facebuild::ChainReport,
    name: &str,
) -> (
    facebuild::ChainFigures,
    std::collections::BTreeMap<String, facebuild::ChainFigures>,
) {
    let c = r
        .combinations
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no combination {name}"));
    (c.figures.clone(), c.attribution.clone())
}

fn say_chain(r: &facebuild::ChainReport) {
    say(&format!(
        "chain: {} images, {} reference faces",
        r.images, r.reference_faces
    ));
    for c in &r.combinations {
        let line = |f: &facebuild::ChainFigures| {
            format!(
                "recall {:.4} fp/img {:.3} cos min {:.5} mean {:.6} faces {}{}",
                f.recall,
                f.fp_per_image,
                f.cosine_min.unwrap_or(f64::NAN),
                f.cosine_mean.unwrap_or(f64::NAN),
                f.faces,
                f.verification
                    .as_ref()
                    .map(|v| format!(
                        " | TAR {:?} (ref {:?}) EER {:.4} (ref {:.4}) flips {}/{}",
                        v.tar_at_operating_far,
                        v.reference_tar_at_operating_far,
                        v.eer,
                        v.reference_eer,
                        v.flips,
                        v.pairs
                    ))
                    .unwrap_or_default()
            )
        };
        say(&format!("  {:<9} {}", c.name, line(&c.figures)));
        for (m, f) in &c.attribution {
            say(&format!("    only {m:<4} {}", line(f)));
        }
    }
}

/// The chain on the built-in pack: the detector's own keypoints make the recognizer's crops,
/// so an INT8 detector moves the recognizer's chain embeddings while the recognizer's
/// per-model compare is untouched by it (cached, the same report); combinations that swap
/// two stages carry each stage alone as attribution; the FP16 chain stays near the reference.
#[test]
fn builtin_pack_chain_attributes_a_perturbed_detector() {
    let p = Project::new();
    let yaml = pack_yaml(
        ("builtin: scrfd-mini", "input.1", "[1, 3, 320, 320]", 320),
        ("builtin: iresnet-mini", "input.1"),
        (
            "{builtin: synthetic-scenes, count: 12}",
            // The built-in faces are crops already: no alignment.
            "{builtin: synthetic-faces, count: 12}",
            "{builtin: synthetic-scenes, count: 12}",
        ),
    );
    p.write("pack.yaml", &yaml);
    let (code, r) = p.run_json("pack.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    let chain: facebuild::ChainReport = p.report("out/pack/chain/report.json");
    say_chain(&chain);
    assert!(chain.reference_faces > 0);
    let (fp16, _) = chain_figures(&chain, "all_fp16");
    assert!(
        fp16.recall >= 0.99 && fp16.cosine_min.unwrap() > 0.999,
        "{fp16:#?}"
    );
    let (det_int8, none) = chain_figures(&chain, "det_int8");
    assert!(none.is_empty(), "one stage swapped: no attribution");
    // The recognizer is its ONNX original here: only the detector's crops moved it.
    assert!(det_int8.cosine_min.unwrap() < 0.99999, "{det_int8:#?}");
    let (all, attribution) = chain_figures(&chain, "all_int8");
    assert_eq!(
        attribution.keys().collect::<Vec<_>>(),
        ["det", "rec"],
        "{attribution:#?}"
    );
    assert_eq!(attribution["det"].cosine_min, det_int8.cosine_min);
    assert!(all.faces > 0);
    // The recognizer's per-model compare does not see the detector at all.
    let before = std::fs::read(p.path("out/pack/rec_compare/report.json")).unwrap();
    p.write(
        "pack.yaml",
        &yaml.replace(
            "calib_det: {builtin: synthetic-scenes, count: 12}",
            "calib_det: {builtin: synthetic-scenes, count: 6}",
        ),
    );
    let (code, r) = p.run_json("pack.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    assert_eq!(status_of(&r, "det_openvino_int8"), Status::Built, "{r:#?}");
    assert_eq!(status_of(&r, "rec_compare"), Status::Cached, "{r:#?}");
    assert_eq!(status_of(&r, "chain"), Status::Built, "{r:#?}");
    assert_eq!(
        std::fs::read(p.path("out/pack/rec_compare/report.json")).unwrap(),
        before
    );
}

/// The shared pack: SCRFD-500M + MobileFaceNet on the shared portraits, chain figures for
/// every combination (printed for the closing note).
#[test]
fn shared_pack_chain_figures() {
    let Some(shared) = shared() else { return };
    let p = Project::new();
    let m = |f: &str| shared.join("models").join(f).display().to_string();
    let pairs = shared.join("faces/pairs").display().to_string();
    let yaml = pack_yaml(
        (
            &format!("path: {}", m("scrfd_500m_kps.onnx")),
            "images",
            "[1, 3, 640, 640]",
            640,
        ),
        (&format!("path: {}", m("mobilefacenet.onnx")), "input"),
        (
            &format!("{{path: {pairs}, pairs: pairs.csv}}"),
            &format!(
                "{{path: {pairs}, align: {{model: {}, detector: {{family: scrfd}}}}}}",
                m("scrfd_500m_kps.onnx")
            ),
            &format!("{{path: {}}}", shared.join("faces/scenes").display()),
        ),
    );
    p.write("pack.yaml", &yaml);
    let (code, r) = p.run_json("pack.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    let chain: facebuild::ChainReport = p.report("out/pack/chain/report.json");
    say_chain(&chain);
    let (fp16, _) = chain_figures(&chain, "all_fp16");
    assert!(fp16.recall >= 0.99, "{fp16:#?}");
    assert!(fp16.verification.is_some());
    let rec: CompareReport = p.report("out/pack/rec_compare/report.json");
    say(&format!(
        "per-model rec_openvino_int8 on aligned crops: cosine min {:?}",
        candidate(&rec, "rec_openvino_int8")
            .cosine
            .as_ref()
            .map(|c| c.min)
    ));
    insightface_loads_the_package(&p, &shared);
}

/// What insightface 2.1's FaceAnalysis finds in a photo with a package folder: the models it
/// loaded, the faces' boxes and embedding sizes, as JSON.
const FACE_ANALYSIS: &str = r#"
import json, sys
import cv2
from insightface.app import FaceAnalysis
app = FaceAnalysis(name=sys.argv[1], providers=["CPUExecutionProvider"])
app.prepare(ctx_id=-1, det_size=(640, 640))
faces = app.get(cv2.imread(sys.argv[2]))
print(json.dumps({"models": sorted(app.models), "faces": [{"bbox": [round(float(x), 3) for x in f.bbox], "dim": int(f.embedding.shape[0])} for f in faces]}))
"#;

/// The pack release's `onnx/` loads in insightface 2.1 from PyPI, through its V2 manifest
/// and, on a copy without it, through legacy shape routing: both find the same two faces
/// with 128-d embeddings in two_people.jpg. A model file changed after the release fails
/// insightface's own sha256 check.
fn insightface_loads_the_package(p: &Project, shared: &std::path::Path) {
    let version = std::process::Command::new(toolchain_python())
        .args(["-c", "import onnxruntime; print(onnxruntime.__version__)"])
        .output()
        .unwrap();
    let ort = format!(
        "onnxruntime=={}",
        String::from_utf8_lossy(&version.stdout).trim()
    );
    let python = uv_venv(
        p.dir.path(),
        &[&["insightface==2.1", "opencv-python-headless", &ort]],
    );
    let pkg = p.path("releases/pack/current/onnx");
    let photo = shared.join("faces/scenes/two_people.jpg");
    let analyse = |dir: &std::path::Path| {
        std::process::Command::new(&python)
            .args(["-c", FACE_ANALYSIS])
            .arg(dir)
            .arg(&photo)
            .output()
            .unwrap()
    };
    let out = analyse(&pkg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let by_manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    say(&format!("insightface, V2 manifest: {by_manifest}"));
    assert_eq!(
        by_manifest["models"],
        serde_json::json!(["detection", "recognition"])
    );
    let faces = by_manifest["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 2, "{by_manifest}");
    assert!(faces.iter().all(|f| f["dim"] == 128));
    // Legacy routing: the same models without the manifest.
    let legacy = p.path("legacy");
    std::fs::create_dir_all(&legacy).unwrap();
    for f in ["det.onnx", "rec.onnx"] {
        std::fs::copy(pkg.join(f), legacy.join(f)).unwrap();
    }
    let out = analyse(&legacy);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let by_shape: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(by_shape["faces"], by_manifest["faces"], "{by_shape}");
    // A model changed after the release: insightface refuses it by its sha256.
    let tampered = p.path("tampered");
    std::fs::create_dir_all(&tampered).unwrap();
    for f in ["det.onnx", "rec.onnx", "manifest.json", "MODEL.LICENSE"] {
        std::fs::copy(pkg.join(f), tampered.join(f)).unwrap();
    }
    let mut bytes = std::fs::read(tampered.join("rec.onnx")).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x01;
    std::fs::write(tampered.join("rec.onnx"), bytes).unwrap();
    let out = analyse(&tampered);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("SHA-256 mismatch"),
        "{err}"
    );
}
