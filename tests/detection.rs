//! Detection pipelines with real ONNX Runtime and OpenVINO: the built-in SCRFD-layout
//! detector everywhere; the real SCRFD (static and dynamic) and RetinaFace models and photos
//! in ../shared when present (skipped with a message otherwise). Also: Rust decoding checked
//! box by box against an independent numpy decoder written from InsightFace's scrfd.py and
//! Pytorch_Retinaface, and detector-based alignment for recognition.

mod common;
use common::*;

use camino::Utf8PathBuf;
use facebuild::{DetectorFamily, DetectorSpec, Preprocessing};
use facebuild::{OnnxRuntime, Runtime};
use facebuild::{Pins, Toolchain};

fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn report(p: &Project, rel: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .unwrap()
}

fn candidate<'a>(rep: &'a serde_json::Value, label: &str) -> &'a serde_json::Value {
    rep["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["label"] == label)
        .unwrap_or_else(|| panic!("no candidate {label}"))
}

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
        statuses(&r)
            .iter()
            .all(|(n, s)| s == "built" || (n.starts_with("tensorrt") && s == "unavailable")),
        "{r:#?}"
    );
    let rep = report(&p, "pipelines/out/detection/compare/report.json");
    assert_eq!(rep["task"], "detection");
    let fp32 = candidate(&rep, "openvino_fp32");
    let sizes = fp32["sizes"].as_array().unwrap();
    assert_eq!(sizes.len(), 2, "two input sizes from one IR");
    assert_ne!(sizes[0]["input_size"], sizes[1]["input_size"]);
    for s in sizes {
        let m = &s["metrics"];
        assert!(
            m["reference_boxes"].as_u64().unwrap() > 0,
            "the built-in detector must detect something: {m:#}"
        );
        assert_eq!(m["recall"], 1.0, "{m:#}");
        assert_eq!(m["candidate_boxes"], m["reference_boxes"], "{m:#}");
    }
    // The IR was converted once: a dynamic H/W IR (ovc ranges from `model.input.dims`).
    let conv = report(&p, "pipelines/out/detection/openvino_fp32/report.json");
    let args = conv["conversion"]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect::<Vec<_>>();
    assert!(
        args.contains(&"input.1[1,3,320..640,320..640]".to_string()),
        "{args:?}"
    );
    let (_, r) = p.run_json("pipelines/detection.yaml", &[]);
    assert!(
        statuses(&r)
            .iter()
            .all(|(n, s)| s == "cached" || (n.starts_with("tensorrt") && s == "unavailable")),
        "{r:#?}"
    );
}

#[allow(clippy::too_many_arguments)]
fn detector_pipeline(
    shared: &std::path::Path,
    model: &str,
    input: &str,
    shape: &str,
    extra_model: &str,
    feed: &str,
    detector: &str,
    sizes: &str,
) -> String {
    format!(
        r#"schema: 1
name: det
model:
  path: {m}
  task: detection
  input: {{name: "{input}", shape: {shape}{extra_model}}}
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
"#,
        m = shared.join("models").join(model).display(),
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
    let rep = report(&p, "out/det/compare/report.json");
    let fp32 = candidate(&rep, "ov_fp32");
    assert_eq!(fp32["execution"]["precision"], "f32");
    assert_eq!(fp32["sizes"].as_array().unwrap().len(), want_sizes);
    for s in fp32["sizes"].as_array().unwrap() {
        let m = &s["metrics"];
        assert!(
            m["reference_boxes"].as_u64().unwrap() >= 4,
            "{name}: the scenes hold many faces: {m:#}"
        );
        assert_eq!(
            m["recall"], 1.0,
            "{name} FP32 IR recall at {}: {m:#}",
            s["input_size"]
        );
        assert_eq!(
            m["fp_per_image"], 0.0,
            "{name} FP32 IR extra detections at {}: {m:#}",
            s["input_size"]
        );
    }
    for label in ["ov_fp32", "ov_fp16"] {
        for s in candidate(&rep, label)["sizes"].as_array().unwrap() {
            let m = &s["metrics"];
            say(&format!(
                "{name} {label} at {}: boxes {} ref / {} cand, recall {}, fp/img {}, score drift max {}, IoU min {}, landmark NME max {}, NMS parity {}",
                s["input_size"],
                m["reference_boxes"],
                m["candidate_boxes"],
                m["recall"],
                m["fp_per_image"],
                m["score_drift"]["max"],
                m["iou"]["min"],
                m["landmark_nme"]["max"],
                m["nms_parity"]
            ));
        }
    }
}

#[test]
fn real_scrfd_static_640() {
    let Some(shared) = shared() else { return };
    check_real_detector(
        "scrfd_500m_kps",
        detector_pipeline(
            &shared,
            "scrfd_500m_kps.onnx",
            "images",
            "[1, 3, 640, 640]",
            "",
            SCRFD_FEED,
            "{family: scrfd}",
            "",
        ),
        1,
    );
}

#[test]
fn real_scrfd_dynamic_hw_at_two_sizes_from_one_ir() {
    let Some(shared) = shared() else { return };
    let dims = ", dims: {H: {min: 320, opt: 640, max: 640}, W: {min: 320, opt: 640, max: 640}}";
    check_real_detector(
        "scrfd_2.5g_bnkps",
        detector_pipeline(
            &shared,
            "scrfd_2.5g_bnkps.onnx",
            "input.1",
            "[1, 3, H, W]",
            dims,
            SCRFD_FEED,
            "{family: scrfd}",
            "input_sizes: [[640, 640], [320, 320]], ",
        ),
        2,
    );
}

#[test]
fn real_retinaface_640() {
    let Some(shared) = shared() else { return };
    check_real_detector(
        "retinaface_mnet_640",
        detector_pipeline(
            &shared,
            "retinaface_mnet_640.onnx",
            "input0",
            "[1, 3, 640, 640]",
            "",
            RETINA_FEED,
            "{family: retinaface, score_threshold: 0.6}",
            "",
        ),
        1,
    );
}

fn toolchain() -> Toolchain {
    // root_dir() honours FACEBUILD_TOOLCHAIN_DIR, else <cache>/toolchains: the tests' shared one.
    let cache = Utf8PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/cache"));
    Toolchain::ensure(&cache, &Pins::resolve(&Default::default())).expect("toolchain")
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
        mean: [104.0, 117.0, 123.0],
        std: [1.0; 3],
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
            let theirs: Vec<serde_json::Value> = serde_json::from_slice(&res.stdout).unwrap();
            assert_eq!(
                ours.len(),
                theirs.len(),
                "{model} {img} at {h}x{w}: kept {} boxes, the reference {}",
                ours.len(),
                theirs.len()
            );
            for (a, b) in ours.iter().zip(&theirs) {
                let bb: Vec<f32> = b["bbox"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect();
                for k in 0..4 {
                    assert!(
                        (a.bbox[k] - bb[k]).abs() < 1e-2,
                        "{model} {img}: box {:?} vs reference {bb:?}",
                        a.bbox
                    );
                }
                assert!((a.score - b["score"].as_f64().unwrap() as f32).abs() < 1e-6);
                let kp = b["kps"].as_array().unwrap();
                for (p, q) in a.kps.unwrap().iter().zip(kp) {
                    assert!(
                        (p[0] - q[0].as_f64().unwrap() as f32).abs() < 1e-2
                            && (p[1] - q[1].as_f64().unwrap() as f32).abs() < 1e-2,
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
        format!(
            "schema: 1\nname: al\nmodel:\n  path: {}\n  task: recognition\n  input: {{name: input, shape: [1, 3, 112, 112]}}\n  preprocessing: {{color: RGB, mean: [127.5, 127.5, 127.5], std: [127.5, 127.5, 127.5], size: [112, 112]}}\ndatasets:\n  faces: {{path: {}, pairs: pairs.csv{align}}}\nsteps:\n  ov_fp32: {{kind: convert, params: {{backend: openvino, precision: fp32}}}}\n  compare: {{kind: compare, params: {{dataset: faces, candidates: [ov_fp32]}}}}\n",
            shared.join("models/mobilefacenet.onnx").display(),
            shared.join("faces/pairs").display()
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
        let rep = report(&p, "out/al/compare/report.json");
        let v = rep["reference"]["verification"].clone();
        say(&format!(
            "mobilefacenet on 299 pairs, {label}: fit {}, TAR@FAR=1e-3 {}, TAR@FAR=1e-2 {}, EER {}",
            rep["dataset"]["fit"], v["tar_at_far_1e3"], v["tar_at_far_1e2"], v["eer"]
        ));
        figures.push((
            rep["dataset"]["fit"].clone(),
            v["eer"].as_f64().unwrap(),
            v["tar_at_far_1e2"].as_f64().unwrap(),
        ));
    }
    let (centre, aligned) = (&figures[0], &figures[1]);
    assert_eq!(
        aligned.0["aligned"], 61,
        "every photo had a face: {}",
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
