//! Packs: several models in one manifest, compared as a chain and released as one. The
//! built-in pack (random weights) everywhere; the shared pack (`examples/pack.yaml`: SCRFD,
//! MobileFaceNet, PFLD-68 and the built-in genderage) when ../shared is present. insightface
//! 2.1 from PyPI loads each release's `onnx/` folder as a deployment would.

mod common;
use common::*;

use facebuild::CompareReport;

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
                "recall {:.4} fp/img {:.3} cos min {:.5} mean {:.6} (largest face {:.5}/{:.6}) faces {}{}{}{}",
                f.recall,
                f.fp_per_image,
                f.cosine_min.unwrap_or(f64::NAN),
                f.cosine_mean.unwrap_or(f64::NAN),
                f.largest_cosine_min.unwrap_or(f64::NAN),
                f.largest_cosine_mean.unwrap_or(f64::NAN),
                f.faces,
                f.landmarks
                    .iter()
                    .map(|(m, l)| format!(" | {m} NME mean {:.4} max {:.4}", l.nme_mean, l.nme_max))
                    .collect::<String>(),
                f.attributes
                    .iter()
                    .map(|(m, a)| format!(
                        " | {m} gender flips {} age MAE {:.2} max {:.0}",
                        a.gender_flips, a.age_mae, a.age_error_max
                    ))
                    .collect::<String>(),
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

/// The built-in pack as shipped (`run --builtin pack`): four models, the chain with
/// landmark and attribute figures, a release gated on the chain's combination of exactly
/// its artifacts, each model's IR under `openvino/<model>/`, restored from the cache byte for
/// byte when the release folder is gone. Its `onnx/` loads in
/// insightface 2.1 through the V2 manifest (detector and recognizer), and, on a copy without
/// the manifest with the extra models beside them, through legacy routing, where the
/// 192-input landmark model and the 96-input attribute model route as InsightFace's own.
#[test]
fn builtin_pack_runs_and_loads_in_insightface() {
    let p = Project::new();
    let out = p.run(&["run", "--builtin", "pack", "--json"]);
    let r: RunReport = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(0), "{r:#?}");
    let chain: facebuild::ChainReport = p.report("out/pack/chain/report.json");
    say_chain(&chain);
    assert_eq!(chain.models, ["det", "rec", "lmk", "ga"]);
    let (fp16, attribution) = chain_figures(&chain, "all_fp16");
    assert_eq!(fp16.landmarks["lmk"].faces, fp16.faces, "{fp16:#?}");
    assert_eq!(fp16.attributes["ga"].faces, fp16.faces, "{fp16:#?}");
    assert_eq!(
        attribution.keys().collect::<Vec<_>>(),
        ["det", "ga", "lmk", "rec"]
    );
    // Swapping only the attribute model leaves every other figure at the reference's.
    assert_eq!(attribution["ga"].landmarks["lmk"].nme_max, 0.0);
    let meta: serde_json::Value = p.report("releases/pack/current/metadata.json");
    assert_eq!(meta["chain"]["shipped"], serde_json::json!(["all_fp16"]));
    assert_eq!(meta["chain"]["step"], "chain");
    for m in ["det", "rec", "lmk", "ga"] {
        let xml = p.path(&format!(
            "releases/pack/current/openvino/{m}/{m}_openvino_fp16/model.xml"
        ));
        assert!(xml.is_file(), "{}", xml.display());
    }
    // A cached pack release restored where its folder is gone (another machine, a cleaned
    // disk) comes back byte for byte: the package, the layouts and `openvino/<model>/`.
    let version = std::fs::read_to_string(p.path("releases/pack/CURRENT")).unwrap();
    let sums = std::fs::read_to_string(p.path("releases/pack/current/SHA256SUMS")).unwrap();
    std::fs::remove_dir_all(p.path("releases")).unwrap();
    run_ok(p.std_cmd().args(["run", "--builtin", "pack"]));
    let restored = p.path(&format!("releases/pack/{}", version.trim()));
    assert_eq!(
        std::fs::read_to_string(restored.join("SHA256SUMS")).unwrap(),
        sums
    );
    for f in [
        "onnx/extra/lmk.onnx",
        "openvino/ga/ga_openvino_fp16/model.bin",
    ] {
        assert!(sums.contains(&format!("  {f}\n")), "{f} not in SHA256SUMS");
        assert!(restored.join(f).is_file(), "{f}");
    }
    let python = insightface_venv(&p);
    let pkg = p.path("releases/pack/current/onnx");
    let scenes = p.path("cache/builtin");
    let scene = std::fs::read_dir(&scenes)
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("synthetic-scenes")
        })
        .map(|e| e.path().join("scene0.png"))
        .expect("the built-in scenes");
    let by_manifest = analyse(&python, &pkg, &scene, 320);
    assert_eq!(
        by_manifest["models"],
        serde_json::json!(["detection", "recognition"]),
        "{by_manifest}"
    );
    let legacy = p.path("legacy");
    std::fs::create_dir_all(&legacy).unwrap();
    for f in ["det.onnx", "rec.onnx", "extra/lmk.onnx", "extra/ga.onnx"] {
        let name = std::path::Path::new(f).file_name().unwrap();
        std::fs::copy(pkg.join(f), legacy.join(name)).unwrap();
    }
    let by_shape = analyse(&python, &legacy, &scene, 320);
    say(&format!(
        "insightface, legacy routing: {}",
        by_shape["models"]
    ));
    assert_eq!(
        by_shape["models"],
        serde_json::json!(["detection", "genderage", "landmark_2d_106", "recognition"]),
        "{by_shape}"
    );
    let faces = by_shape["faces"].as_array().unwrap();
    assert!(!faces.is_empty(), "{by_shape}");
    for key in ["landmark_2d_106", "gender", "age", "embedding"] {
        assert!(
            faces[0]["keys"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!(key)),
            "{by_shape}"
        );
    }
}

/// The shared pack, `examples/pack.yaml` as shipped (../shared swapped in for its relative
/// paths): every combination's chain figures with attribution (printed for the closing
/// note), the chain's `rec_int8` on each photo's largest face reproducing per-model compare
/// of the same artifact on the same aligned crops, and the release's `onnx/` in insightface
/// 2.1 finding the reference chain's faces and embeddings.
#[test]
fn shared_pack_chain_figures() {
    let Some(shared) = shared() else { return };
    let p = Project::new();
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pack.yaml"),
    )
    .unwrap()
    .replace("../../shared", shared.to_str().unwrap());
    p.write("pack.yaml", &example);
    let (code, r) = p.run_json("pack.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    let chain: facebuild::ChainReport = p.report("out/pack/chain/report.json");
    say_chain(&chain);
    assert_eq!(chain.combinations.len(), 7);
    let (fp32, _) = chain_figures(&chain, "all_fp32");
    assert!(fp32.cosine_min.unwrap() > 0.9999, "{fp32:#?}");
    let (_, attribution) = chain_figures(&chain, "all_int8");
    assert_eq!(
        attribution.keys().collect::<Vec<_>>(),
        ["det", "ga", "lmk", "rec"]
    );
    // Where chain and per-model compare overlap they agree: the recognizer's INT8 IR on each
    // photo's largest face, cropped by the ONNX detector, is what compare measures on the
    // dataset's aligned crops.
    let (rec_int8, _) = chain_figures(&chain, "rec_int8");
    let rec: CompareReport = p.report("out/pack/rec_compare/report.json");
    let per_model = candidate(&rec, "rec_openvino_int8").cosine.unwrap();
    say(&format!(
        "per-model rec_openvino_int8 on aligned crops: cosine min {:.6} mean {:.6}; chain rec_int8 largest faces: min {:.6} mean {:.6}",
        per_model.min,
        per_model.mean,
        rec_int8.largest_cosine_min.unwrap(),
        rec_int8.largest_cosine_mean.unwrap()
    ));
    assert!((rec_int8.largest_cosine_min.unwrap() - per_model.min).abs() < 1e-4);
    assert!((rec_int8.largest_cosine_mean.unwrap() - per_model.mean).abs() < 1e-5);
    insightface_matches_the_reference_chain(&p, &shared);
}

/// What insightface 2.1's FaceAnalysis finds in a photo with a package folder: the models it
/// loaded and each face's box, normed embedding and attributes' names, as JSON.
const FACE_ANALYSIS: &str = r#"
import json, sys
import cv2
from insightface.app import FaceAnalysis
app = FaceAnalysis(name=sys.argv[1], providers=["CPUExecutionProvider"])
size = int(sys.argv[3])
app.prepare(ctx_id=-1, det_size=(size, size))
faces = app.get(cv2.imread(sys.argv[2]))
print(json.dumps({"models": sorted(app.models), "faces": [{"bbox": [float(x) for x in f.bbox], "embedding": [float(x) for x in f.normed_embedding], "keys": sorted(f.keys())} for f in faces]}))
"#;

/// FaceAnalysis over every photo of the chain's `reference.json`, each reference face
/// matched to its best-overlapping FaceAnalysis face: faces each side, unmatched reference
/// faces, and the worst box IoU and embedding cosine, as JSON.
const AGAINST_REFERENCE: &str = r#"
import json, os, sys
import cv2, numpy as np
from insightface.app import FaceAnalysis
pkg, data, ref = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
app = FaceAnalysis(name=pkg, providers=["CPUExecutionProvider"])
app.prepare(ctx_id=-1, det_size=(640, 640))
def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0])); iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return float(ix * iy / u) if u > 0 else 0.0
ious, cosines, unmatched, theirs, ours = [], [], 0, 0, 0
for im in ref["images"]:
    faces = app.get(cv2.imread(os.path.join(data, im["file"])))
    theirs += len(faces); ours += len(im["faces"])
    for r in im["faces"]:
        best = max(faces, key=lambda f: iou(r["bbox"], f.bbox), default=None)
        if best is None or iou(r["bbox"], best.bbox) < 0.5:
            unmatched += 1
            continue
        ious.append(iou(r["bbox"], best.bbox))
        e = np.asarray(r["embedding"])
        cosines.append(float(np.dot(e, best.normed_embedding) / np.linalg.norm(e)))
print(json.dumps({"models": sorted(app.models), "reference_faces": ours, "insightface_faces": theirs, "unmatched": unmatched, "iou_min": min(ious), "cosine_min": min(cosines), "cosine_mean": float(np.mean(cosines))}))
"#;

/// A venv with insightface 2.1 from PyPI and the toolchain's onnxruntime version.
fn insightface_venv(p: &Project) -> std::path::PathBuf {
    let version = std::process::Command::new(toolchain_python())
        .args(["-c", "import onnxruntime; print(onnxruntime.__version__)"])
        .output()
        .unwrap();
    let ort = format!(
        "onnxruntime=={}",
        String::from_utf8_lossy(&version.stdout).trim()
    );
    uv_venv(
        p.dir.path(),
        &[&["insightface==2.1", "opencv-python-headless", &ort]],
    )
}

fn python_json(
    python: &std::path::Path,
    script: &str,
    args: &[&std::path::Path],
) -> serde_json::Value {
    let out = run_ok(
        std::process::Command::new(python)
            .args(["-c", script])
            .args(args),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn analyse(
    python: &std::path::Path,
    dir: &std::path::Path,
    photo: &std::path::Path,
    size: u32,
) -> serde_json::Value {
    let size = size.to_string();
    python_json(
        python,
        FACE_ANALYSIS,
        &[dir, photo, std::path::Path::new(&size)],
    )
}

/// The pack release's `onnx/` in insightface 2.1: through its V2 manifest FaceAnalysis loads
/// the detector and the recognizer and finds the reference chain's faces (IoU >= 0.99) with
/// its embeddings (cosine >= 0.9999) on every photo of the chain's dataset; through legacy
/// shape routing on a copy of those two without the manifest, the same faces in
/// two_people.jpg; a model file changed after the release fails insightface's own sha256
/// check.
fn insightface_matches_the_reference_chain(p: &Project, shared: &std::path::Path) {
    let python = insightface_venv(p);
    let pkg = p.path("releases/pack/current/onnx");
    let against = python_json(
        &python,
        AGAINST_REFERENCE,
        &[
            &pkg,
            &shared.join("faces/pairs"),
            &p.path("out/pack/chain/reference.json"),
        ],
    );
    say(&format!(
        "insightface 2.1 against the reference chain: {against}"
    ));
    assert_eq!(
        against["models"],
        serde_json::json!(["detection", "recognition"])
    );
    assert_eq!(against["unmatched"], 0, "{against}");
    assert_eq!(
        against["reference_faces"], against["insightface_faces"],
        "{against}"
    );
    assert!(against["iou_min"].as_f64().unwrap() >= 0.99, "{against}");
    assert!(
        against["cosine_min"].as_f64().unwrap() >= 0.9999,
        "{against}"
    );
    let photo = shared.join("faces/scenes/two_people.jpg");
    let by_manifest = analyse(&python, &pkg, &photo, 640);
    assert_eq!(
        by_manifest["faces"].as_array().unwrap().len(),
        2,
        "{by_manifest}"
    );
    // Legacy routing: the same two models without the manifest (PFLD's 112 input would
    // route as a second recognizer, which is why it ships under extra/).
    let legacy = p.path("legacy");
    std::fs::create_dir_all(&legacy).unwrap();
    for f in ["det.onnx", "rec.onnx"] {
        std::fs::copy(pkg.join(f), legacy.join(f)).unwrap();
    }
    let by_shape = analyse(&python, &legacy, &photo, 640);
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
    let out = std::process::Command::new(&python)
        .args(["-c", FACE_ANALYSIS])
        .arg(&tampered)
        .arg(&photo)
        .arg("640")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("SHA-256 mismatch"),
        "{err}"
    );
}

/// A pack whose detector is YuNet (the `yunet` preset) and whose recognizer is MobileFaceNet:
/// the chain runs, and the recognizer's crops are aligned on YuNet's five points. The proof:
/// on the same photos, each largest face's reference embedding is that of the same pack with
/// SCRFD as its detector (cosine > 0.9; a crop aligned on wrong or mirrored points is not).
#[test]
fn yunet_pack_chain_aligns_the_recognizer_on_yunets_landmarks() {
    let Some(shared) = shared() else { return };
    let photos = tempfile::tempdir().unwrap();
    for i in 1..=12 {
        let f = format!("img{i}.jpg");
        std::fs::copy(shared.join("faces/pairs").join(&f), photos.path().join(&f)).unwrap();
    }
    let run = |det: &str| -> (
        facebuild::ChainReport,
        serde_json::Value,
        String,
        serde_json::Value,
    ) {
        let p = Project::new();
        p.write(
            "pack.yaml",
            &format!(
                r#"schema: 1
name: pack
models:
  det:
    {det}
    task: detection
  rec:
    path: {rec}
    task: recognition
    input: {{name: input, shape: [1, 3, 112, 112]}}
    preprocessing: {{color: RGB, mean: [127.5, 127.5, 127.5], std: [127.5, 127.5, 127.5], size: [112, 112]}}
datasets:
  faces: {{path: {faces}}}
steps:
  openvino_fp16: {{kind: convert, each: [det, rec], params: {{backend: openvino, precision: fp16}}}}
  chain:
    kind: chain
    params:
      dataset: faces
      detector: det
      recognizer: rec
      combinations:
        all_fp16: {{det: det_openvino_fp16, rec: rec_openvino_fp16}}
  release:
    kind: release
    params: {{artifacts: [det_openvino_fp16, rec_openvino_fp16], layouts: [], package: {{detector: det, recognizer: rec}}}}
"#,
                rec = shared.join("models/mobilefacenet.onnx").display(),
                faces = photos.path().display(),
            ),
        );
        let plan = String::from_utf8_lossy(&p.run(&["plan", "pack.yaml"]).stdout).into_owned();
        let (code, r) = p.run_json("pack.yaml", &[]);
        assert_eq!(code, 0, "{r:#?}");
        let chain: facebuild::ChainReport = p.report("out/pack/chain/report.json");
        let reference: serde_json::Value = p.report("out/pack/chain/reference.json");
        let package: serde_json::Value = p.report("releases/pack/current/onnx/manifest.json");
        (chain, reference, plan, package)
    };
    let yunet = format!(
        "path: {}\n    input: {{name: input, shape: [1, 3, 640, 640]}}\n    preprocessing: {{color: BGR, mean: [0, 0, 0], std: [1, 1, 1], size: [640, 640], resize: letterbox}}\n    detector: {{preset: yunet, score_threshold: 0.6, nms_iou: 0.3}}",
        shared.join("models/wild/yunet_2023mar.onnx").display()
    );
    let scrfd = format!(
        "path: {}\n    input: {{name: images, shape: [1, 3, 640, 640]}}\n    preprocessing: {{color: RGB, mean: [127.5, 127.5, 127.5], std: [128, 128, 128], size: [640, 640], resize: letterbox}}\n    detector: {{family: scrfd}}",
        shared.join("models/scrfd_500m_kps.onnx").display()
    );
    let (chain, yref, plan, package) = run(&yunet);
    let (_, sref, scrfd_plan, scrfd_package) = run(&scrfd);
    // The InsightFace package holds what FaceAnalysis decodes: SCRFD, not YuNet; the plan
    // says so before anything runs.
    assert!(
        plan.contains("note: `onnx/` leaves the detector `det` (`yunet`) out"),
        "{plan}"
    );
    assert!(!scrfd_plan.contains("note:"), "{scrfd_plan}");
    assert_eq!(package["tasks"].get("detection"), None, "{package}");
    assert!(
        package["left_out"][0]
            .as_str()
            .unwrap()
            .contains("SCRFD heads only")
    );
    assert!(scrfd_package["tasks"].get("detection").is_some());
    say_chain(&chain);
    let (fp16, _) = chain_figures(&chain, "all_fp16");
    assert!(
        fp16.recall > 0.9 && fp16.cosine_min.unwrap() > 0.9,
        "{fp16:#?}"
    );
    let largest = |r: &serde_json::Value, i: usize| -> Option<(Vec<f64>, Vec<[f64; 2]>)> {
        let f = r["images"][i]["faces"].get(0)?;
        let e = serde_json::from_value(f["embedding"].clone()).ok()?;
        let k = serde_json::from_value(f["kps"].clone()).ok()?;
        Some((e, k))
    };
    let mut cosines = Vec::new();
    for i in 0..yref["images"].as_array().unwrap().len() {
        let (Some((a, k)), Some((b, _))) = (largest(&yref, i), largest(&sref, i)) else {
            continue;
        };
        // InsightFace's order: the eye on the image's left first, the nose below the eyes.
        assert!(
            k[0][0] < k[1][0] && k[2][1] > k[0][1],
            "photo {i}: YuNet's points {k:?}"
        );
        let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        cosines.push(dot / n(&a) / n(&b));
    }
    let min = cosines.iter().copied().fold(f64::INFINITY, f64::min);
    say(&format!(
        "yunet + mobilefacenet pack: {} photos, the largest face's embedding on YuNet's alignment vs SCRFD's: cosine min {min:.4}",
        cosines.len()
    ));
    assert!(cosines.len() >= 10 && min > 0.9, "{cosines:?}");
}
