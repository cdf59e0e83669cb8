//! INT8 detectors that keep small faces: a set derived from portraits (mosaics of their faces
//! at crowd sizes) covers the group photos' faces and portraits do not, which `run` says;
//! derived sets are cached like any dataset. On the real SCRFD-500M in ../shared, a static
//! 640x640 export whose input and outputs have other names than SCRFD-2.5GF's.
//! And YuNet, a head described as data (the `yunet` preset): the derived set, INT8
//! calibration and accuracy control all decode through the generic head decoder.

mod common;
use common::*;

use std::collections::BTreeSet;

use facebuild::CompareReport;

fn manifest(shared: &std::path::Path) -> String {
    let s = shared.display();
    format!(
        "schema: 1
name: small
model:
  path: {s}/models/scrfd_500m_kps.onnx
  task: detection
  input: {{name: images, shape: [1, 3, 640, 640]}}
  preprocessing: {{color: RGB, mean: [127.5, 127.5, 127.5], std: [128, 128, 128], size: [640, 640], resize: letterbox}}
  detector: {{family: scrfd, score_threshold: 0.5, nms_iou: 0.4}}
datasets:
  scenes: {{path: {s}/faces/scenes}}
  portraits: {{path: portraits}}
  crowd:
    derive:
      from: portraits
      originals: false
      mosaic: {{count: 4, face_sizes: [0.011, 0.013, 0.016, 0.024, 0.05]}}
      flip: true
      rotate: [-10, 10]
steps:
  check: {{kind: check}}
  simplify: {{kind: simplify, needs: [check], params: {{samples: 1}}}}
  cal_portraits: {{kind: calibrate, params: {{dataset: portraits}}}}
  cal_crowd: {{kind: calibrate, params: {{dataset: crowd}}}}
  int8_portraits: {{kind: convert, from: simplify, params: {{backend: openvino, precision: int8, calibration: cal_portraits}}}}
  int8_crowd: {{kind: convert, from: simplify, params: {{backend: openvino, precision: int8, calibration: cal_crowd}}}}
  compare:
    kind: compare
    params:
      dataset: scenes
      candidates: [int8_portraits, int8_crowd]
      input_sizes: [[640, 640]]
      recall_min: 0.5
      fp_per_image_max: 5
      landmark_nme_max: 1
"
    )
}

fn built(r: &RunReport) -> BTreeSet<String> {
    statuses(r)
        .into_iter()
        .filter(|(_, s)| *s == Status::Built)
        .map(|(n, _)| n)
        .collect()
}

#[test]
fn portraits_do_not_cover_the_scenes_a_derived_mosaic_does_and_is_cached() {
    let Some(shared) = shared() else { return };
    let p = Project::new();
    let mut photos: Vec<_> = std::fs::read_dir(shared.join("faces/pairs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|f| f.extension().is_some_and(|x| x == "jpg"))
        .collect();
    photos.sort();
    std::fs::create_dir_all(p.path("portraits")).unwrap();
    for f in &photos[..8] {
        std::fs::copy(f, p.path("portraits").join(f.file_name().unwrap())).unwrap();
    }
    p.write("small.yaml", &manifest(&shared));

    let (code, r) = p.run_json("small.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    // One warning: the portraits' calibration set, against the scenes; none for the mosaics.
    assert_eq!(r.warnings.len(), 1, "{:#?}", r.warnings);
    let w = &r.warnings[0];
    say(&format!("warning: {w}"));
    assert!(
        w.contains("candidate `int8_portraits`")
            && w.contains("`portraits` does not cover the face sizes of `scenes`"),
        "{w}"
    );
    assert!(!w.contains("crowd"), "{w}");
    // What each step saw: the same figures the warning read.
    let cal: serde_json::Value = p.report("out/small/cal_crowd/report.json");
    let crowd_p01 = cal["faces"]["height"]["p01"].as_f64().unwrap();
    let cmp: CompareReport = p.report("out/small/compare/report.json");
    let scenes = serde_json::to_value(&cmp).unwrap()["dataset"]["faces"].clone();
    let scenes_p10 = scenes["height"]["p10"].as_f64().unwrap();
    let cal: serde_json::Value = p.report("out/small/cal_portraits/report.json");
    let portraits_p01 = cal["faces"]["height"]["p01"].as_f64().unwrap();
    say(&format!(
        "face height / input: scenes p10 {scenes_p10:.4}, mosaics p01 {crowd_p01:.4}, portraits p01 {portraits_p01:.4}"
    ));
    assert!(scenes_p10 >= 0.8 * crowd_p01 && scenes_p10 < 0.8 * portraits_p01);
    let recall = |c: &str| candidate(&cmp, c).total.as_ref().unwrap().recall;
    say(&format!(
        "recall on the scenes: portraits-calibrated {:.4}, mosaic-calibrated {:.4}",
        recall("int8_portraits"),
        recall("int8_crowd")
    ));

    // The derived set's labels: 4 mosaics + a mirrored and two rotated copies of each photo.
    let derived: Vec<_> = std::fs::read_dir(p.path("cache/derived"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(derived.len(), 1, "{derived:?}");
    let faces: serde_json::Value =
        serde_json::from_slice(&std::fs::read(derived[0].join("faces.json")).unwrap()).unwrap();
    let images = faces["images"].as_array().unwrap();
    assert_eq!(images.len(), 4 + 8 * 3, "{faces:#}");
    let mosaic_faces: usize = images
        .iter()
        .filter(|i| i["origin"] == "mosaic")
        .map(|i| i["faces"].as_array().unwrap().len())
        .sum();
    assert!(mosaic_faces > 100, "{mosaic_faces} faces in 4 mosaics");

    // A rerun builds nothing.
    let (code, r) = p.run_json("small.yaml", &[]);
    assert_eq!(code, 0);
    assert!(built(&r).is_empty(), "{:?}", built(&r));
    assert_eq!(r.warnings.len(), 1, "a cached run warns as well");

    // One source photo changes: exactly what reads the portraits, directly or derived.
    std::fs::copy(
        &photos[20],
        p.path("portraits").join(photos[0].file_name().unwrap()),
    )
    .unwrap();
    let (code, r) = p.run_json("small.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    let expect: BTreeSet<String> = [
        "cal_portraits",
        "cal_crowd",
        "int8_portraits",
        "int8_crowd",
        "compare",
    ]
    .map(String::from)
    .into();
    assert_eq!(built(&r), expect);
    assert_eq!(
        std::fs::read_dir(p.path("cache/derived")).unwrap().count(),
        2,
        "the changed source derives a new set"
    );
}

/// Downstream of a head described as data: YuNet (the `yunet` preset) finds the faces a
/// derived crowd set is cut from, calibrates INT8 on it, and accuracy control searches for
/// the recall target on other mosaics, all decoding through the generic head decoder.
#[test]
fn yunet_int8_from_a_derived_crowd_set_with_accuracy_control() {
    let Some(shared) = shared() else { return };
    let s = shared.display();
    let p = Project::new();
    p.write(
        "yunet.yaml",
        &format!(
            "schema: 1
name: yunet_ac
model:
  path: {s}/models/wild/yunet_2023mar.onnx
  task: detection
  input: {{name: input, shape: [1, 3, 640, 640]}}
  preprocessing: {{color: BGR, mean: [0, 0, 0], std: [1, 1, 1], size: [640, 640], resize: letterbox}}
  detector: {{preset: yunet, score_threshold: 0.6, nms_iou: 0.3}}
datasets:
  scenes: {{path: {s}/faces/scenes}}
  portraits: {{path: {s}/faces/pairs}}
  calib_crowd:
    count: 32
    seed: 0
    derive:
      from: portraits
      originals: false
      mosaic: {{count: 16, face_sizes: [0.015, 0.03, 0.06, 0.12, 0.25]}}
      flip: true
  search_crowd:
    seed: 1
    derive:
      from: portraits
      originals: false
      mosaic: {{count: 6, face_sizes: [0.02, 0.04, 0.08]}}
steps:
  calibrate: {{kind: calibrate, params: {{dataset: calib_crowd}}}}
  int8_ac:
    kind: convert
    params:
      backend: openvino
      precision: int8
      calibration: calibrate
      accuracy_control: {{dataset: search_crowd, metric: recall, target: 0.95, max_fp_layers: 6}}
  compare:
    kind: compare
    params: {{dataset: scenes, candidates: [int8_ac], recall_min: 0.9, fp_per_image_max: 1}}
"
        ),
    );
    let (code, r) = p.run_json("yunet.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    let summary = |step: &str| {
        r.steps
            .iter()
            .find(|x| x.step == step)
            .unwrap_or_else(|| panic!("no step {step}"))
            .summary
            .clone()
    };
    let cal = summary("calibrate");
    assert!(cal["faces"].as_u64().unwrap() > 100, "{cal}");
    let ac = summary("int8_ac");
    assert!(ac["recall"].as_f64().unwrap() >= 0.95, "{ac}");
    let compare: CompareReport = p.report("out/yunet_ac/compare/report.json");
    let c = candidate(&compare, "int8_ac");
    say(&format!(
        "yunet INT8 on a derived crowd set, accuracy control: {} faces in the calibration mosaics, search recall {:.4} ({} trials, {} layers in fp), scenes recall {:.4}",
        cal["faces"],
        ac["recall"].as_f64().unwrap(),
        ac["trials"],
        ac["fp_layers"],
        c.total.as_ref().unwrap().recall
    ));
    assert_eq!(c.passed, Some(true));
}
