//! Every face-model family beyond recognition and detection, on real models where
//! ../shared has one and on the built-in ones (random weights: their figures prove the
//! plumbing, not fidelity):
//! - landmarks: PFLD-68 from ../shared, fed as its authors feed it (a box crop 1.1 times the
//!   SCRFD box, RGB, pixels / 255), built to OpenVINO FP32, FP16 and INT8 and ONNX Runtime
//!   Q/DQ, and compared as NME per face in photo pixels; the built-in 2d106det-shaped model;
//! - attributes: the built-in genderage-shaped model, gender flips and age error;
//! - crops: facebuild's against insightface 2.1's own `utils/face_align.py`, in a test venv.

mod common;
use camino::Utf8PathBuf;
use common::*;
use facebuild::{CompareReport, DetectorFamily, DetectorSpec, Preprocessing, Runtime, Status};

fn pfld_manifest(shared: &std::path::Path, int8_nme_max: f64) -> String {
    let s = shared.display();
    format!(
        indoc! {"
            schema: 1
            name: pfld68
            model:
              path: {s}/models/pfld68.onnx
              task: landmarks
              input:
                name: input
                shape: [batch, 3, 112, 112]
                dims: {{batch: {{min: 1, opt: 1, max: 8}}}}
                crop: {{mode: box, scale: 1.1}}
              preprocessing: {{color: RGB, mean: [0, 0, 0], std: [255, 255, 255], size: [112, 112]}}
              landmarks: {{coords: unit}}
            datasets:
              faces:
                path: {s}/faces/pairs
                align:
                  model: {s}/models/scrfd_500m_kps.onnx
                  detector: {{family: scrfd}}
              calib:
                path: {s}/faces/pairs
                count: 32
                seed: 1
                align:
                  model: {s}/models/scrfd_500m_kps.onnx
                  detector: {{family: scrfd}}
            steps:
              check: {{kind: check}}
              simplify:
                kind: simplify
                needs: [check]
                params: {{samples: 4, dataset: faces, cosine_min: 0.9999}}
              openvino_fp32: {{kind: convert, from: simplify, params: {{backend: openvino, precision: fp32}}}}
              openvino_fp16: {{kind: convert, from: simplify, params: {{backend: openvino, precision: fp16}}}}
              calibrate: {{kind: calibrate, params: {{dataset: calib}}}}
              openvino_int8: {{kind: convert, from: simplify, params: {{backend: openvino, precision: int8, calibration: calibrate}}}}
              quantize: {{kind: quantize, from: simplify, params: {{calibration: calibrate}}}}
              compare:
                kind: compare
                params:
                  dataset: faces
                  candidates: [openvino_fp32, openvino_fp16, openvino_int8, quantize]
                  nme_max: {int8_nme_max}
                  candidate_gates:
                    openvino_fp32: {{nme_max: 0.001}}
                    openvino_fp16: {{nme_max: 0.005}}
        "},
        s = s,
        int8_nme_max = int8_nme_max
    )
}

/// Every artifact of PFLD-68 builds and is compared by NME over the outer-eye-corner
/// distance; the reference's eye centres sit where SCRFD put the eyes (the feeding is right);
/// FP32 is exact, FP16 within 0.5% of the eye distance; a gate tighter than INT8's worst
/// face fails with the figure.
#[test]
fn pfld68_builds_and_compares_by_nme_in_photo_pixels() {
    let Some(shared) = shared() else { return };
    let p = Project::new();
    p.write("m.yaml", &pfld_manifest(&shared, 0.5));
    let (code, r) = p.run_json("m.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    let rep: CompareReport = p.report("out/pfld68/compare/report.json");
    let setup = rep.landmarks.as_ref().expect("landmark setup");
    assert_eq!(
        (setup.points, setup.scheme.as_str(), setup.coords.as_str()),
        (68, "ibug68", "unit")
    );
    assert_eq!(setup.crop, "box, scale 1.1");
    assert_eq!((setup.faces, setup.no_face), (61, 0), "{setup:#?}");
    let eyes = setup.reference_eyes_vs_detector.unwrap();
    assert!(eyes < 0.1, "the reference is fed wrong: {eyes}");
    let nme = |label: &str| {
        let c = rep.candidates.iter().find(|c| c.label == label).unwrap();
        (c.nme_mean.unwrap(), c.nme_max.unwrap())
    };
    for (label, max) in [("openvino_fp32", 1e-4), ("openvino_fp16", 5e-3)] {
        let (mean, worst) = nme(label);
        assert!(mean <= worst && worst < max, "{label}: {mean} {worst}");
    }
    let (int8_mean, int8_max) = nme("openvino_int8");
    let (qdq_mean, _) = nme("quantize");
    assert!(int8_mean > 0.0 && qdq_mean > 0.0);
    eprintln!(
        "NME: fp32 {:?} fp16 {:?} int8 {:?} qdq {:?}; eyes vs detector {eyes:.3}",
        nme("openvino_fp32"),
        nme("openvino_fp16"),
        nme("openvino_int8"),
        nme("quantize")
    );

    // A gate below INT8's worst face fails compare, naming the figure; the artifacts are
    // cached, so only compare runs again.
    let tight = int8_max * 0.9;
    p.write("m.yaml", &pfld_manifest(&shared, tight));
    let (code, r) = p.run_json("m.yaml", &["-t", "compare"]);
    assert_eq!(code, 1);
    let err = error_of(&r, "compare");
    assert!(
        err.contains("candidate `openvino_int8`") && err.contains("nme_max"),
        "{err}"
    );
    assert_eq!(status_of(&r, "openvino_int8"), Status::Cached);
}

/// `faces: all` compares every face of a photo above `min_face`, as FaceAnalysis runs its
/// landmark model on every face: PFLD-68 on the group photos of ../shared/faces/scenes gives
/// a face per detected face, fewer as `min_face` grows, and one per photo with the default
/// (the largest face). A recognizer cannot take every face: plan refuses it at its line.
#[test]
fn landmarks_compare_every_face_above_a_minimum_size() {
    let Some(shared) = shared() else { return };
    let s = shared.display();
    let p = Project::new();
    let manifest = |crop: &str| {
        format!(
            indoc! {"
                schema: 1
                name: scenes
                model:
                  path: {s}/models/pfld68.onnx
                  task: landmarks
                  input:
                    name: input
                    shape: [batch, 3, 112, 112]
                    dims: {{batch: {{min: 1, opt: 1, max: 8}}}}
                    crop: {crop}
                  preprocessing: {{color: RGB, mean: [0, 0, 0], std: [255, 255, 255], size: [112, 112]}}
                  landmarks: {{coords: unit}}
                datasets:
                  scenes:
                    path: {s}/faces/scenes
                    align:
                      model: {s}/models/scrfd_500m_kps.onnx
                      detector: {{family: scrfd}}
                steps:
                  openvino_fp16: {{kind: convert, params: {{backend: openvino, precision: fp16}}}}
                  compare:
                    kind: compare
                    params: {{dataset: scenes, candidates: [openvino_fp16], nme_max: 0.01}}
            "},
            s = s,
            crop = crop
        )
    };
    let mut counts = Vec::new();
    for crop in [
        "{mode: box, scale: 1.1}",
        "{mode: box, scale: 1.1, faces: all}",
        "{mode: box, scale: 1.1, faces: all, min_face: 40}",
    ] {
        p.write("m.yaml", &manifest(crop));
        let (code, r) = p.run_json("m.yaml", &[]);
        assert_eq!(code, 0, "{crop}: {r:#?}");
        let rep: CompareReport = p.report("out/scenes/compare/report.json");
        let setup = rep.landmarks.unwrap();
        let c = &rep.candidates[0];
        assert_eq!(c.landmarks.as_ref().unwrap().nme.n, setup.faces);
        assert!(c.nme_max.unwrap() < 0.01, "{crop}: {c:#?}");
        counts.push((setup.faces, setup.no_face, rep.dataset.images));
    }
    eprintln!("faces compared (faces, no_face, photos): largest, all, all >= 40 px: {counts:?}");
    let [(largest, _, photos), (all, _, _), (big, _, _)] = counts[..] else {
        unreachable!()
    };
    assert_eq!((largest, photos), (4, 4));
    assert!(all > 2 * photos, "{counts:?}");
    assert!(big < all && big >= largest, "{counts:?}");

    let rec = indoc! {"
        schema: 1
        name: rec
        model:
          task: recognition
          input:
            name: input.1
            shape: [1, 3, 112, 112]
            crop: {mode: arcface, faces: all}
        datasets:
          faces: {builtin: synthetic-faces}
        steps:
          check: {kind: check}
    "};
    p.write("rec.yaml", rec);
    let out = p.run(&["plan", "rec.yaml"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("faces: all") && err.contains("rec.yaml:") && err.contains("recognition"),
        "{err}"
    );
}

/// The built-in landmark pipeline, whose model has 2d106det's contract and random weights
/// (its figures prove the plumbing, not fidelity), runs end to end: check, simplify, OpenVINO
/// FP32/FP16/INT8, Q/DQ, compare by NME, benchmark (a short budget, no benchmark_app) and
/// release.
#[test]
fn builtin_landmarks_pipeline_runs_end_to_end() {
    let p = Project::new();
    let short = builtin_pipeline_short_benchmark("landmarks");
    p.write("landmarks.yaml", &short);
    let (code, r) = p.run_json("landmarks.yaml", &[]);
    released(p.dir.path(), code, &r);
    let how = "released";
    let rep: CompareReport = p.report("out/landmarks/compare/report.json");
    let setup = rep.landmarks.as_ref().unwrap();
    assert_eq!(
        (setup.points, setup.coords.as_str(), setup.scheme.as_str()),
        (106, "signed", "box")
    );
    assert_eq!(
        (setup.faces, setup.crop.as_str()),
        (60, "as_is (the images are the crops)")
    );
    let nme_max = |label: &str| {
        rep.candidates
            .iter()
            .find(|c| c.label == label)
            .and_then(|c| c.nme_max)
            .unwrap()
    };
    assert!(nme_max("openvino_fp32") < 1e-4);
    assert!(nme_max("openvino_fp16") < 5e-3);
    assert!(nme_max("openvino_int8") > 0.0 && nme_max("quantize") > 0.0);
    eprintln!("built-in landmarks: {how:?}");
}

/// A 3D-68 model (the built-in with 1k3d68's `[N, 3309]` contract, random weights): its
/// points are the last 68 rows of (x, y, z), and each candidate's pose error (the rotation
/// between the reference's and its points, as InsightFace estimates pose) is gated. FP32 is
/// the reference's pose to a thousandth of a degree; a gate below INT8's worst face fails
/// with the figure.
#[test]
fn builtin_3d68_landmarks_are_compared_with_their_pose() {
    let p = Project::new();
    let manifest = |pose_max: f64| {
        format!(
            indoc! {"
                schema: 1
                name: lmk3d
                model:
                  builtin: lmk3d68-mini
                  task: landmarks
                  input: {{name: data, shape: [1, 3, 192, 192]}}
                  preprocessing: {{color: RGB, mean: [127.5, 127.5, 127.5], std: [128, 128, 128], size: [192, 192]}}
                  landmarks: {{coords: signed}}
                datasets:
                  faces: {{builtin: synthetic-faces, count: 24}}
                steps:
                  openvino_fp32: {{kind: convert, params: {{backend: openvino, precision: fp32}}}}
                  calibrate: {{kind: calibrate, params: {{dataset: faces, count: 16}}}}
                  openvino_int8: {{kind: convert, params: {{backend: openvino, precision: int8, calibration: calibrate}}}}
                  compare:
                    kind: compare
                    params:
                      dataset: faces
                      candidates: [openvino_fp32, openvino_int8]
                      nme_max: 1.0
                      pose_error_max: {pose_max}
                      candidate_gates:
                        openvino_fp32: {{pose_error_max: 0.001}}
            "},
            pose_max = pose_max
        )
    };
    p.write("m.yaml", &manifest(90.0));
    let (code, r) = p.run_json("m.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    let rep: CompareReport = p.report("out/lmk3d/compare/report.json");
    let setup = rep.landmarks.as_ref().unwrap();
    assert_eq!(
        (setup.points, setup.dims, setup.scheme.as_str()),
        (68, 3, "ibug68")
    );
    let pose = |label: &str| {
        let c = rep.candidates.iter().find(|c| c.label == label).unwrap();
        let f = c.landmarks.as_ref().unwrap();
        f.pose_error_deg.expect("3D points have a pose")
    };
    let (fp32, int8) = (pose("openvino_fp32"), pose("openvino_int8"));
    assert_eq!(fp32.n, 24);
    assert!(fp32.max < 1e-3, "{fp32:?}");
    assert!(int8.max > fp32.max, "{int8:?}");
    eprintln!("pose error, degrees: fp32 {fp32:?}; int8 {int8:?}");

    p.write("m.yaml", &manifest(int8.max * 0.9));
    let (code, r) = p.run_json("m.yaml", &["-t", "compare"]);
    assert_eq!(code, 1);
    let err = error_of(&r, "compare");
    assert!(
        err.contains("candidate `openvino_int8`") && err.contains("pose_error_max"),
        "{err}"
    );
}

/// A venv with insightface 2.1 (without its model-zoo dependencies), OpenCV and
/// scikit-image.
fn insightface_venv(dir: &std::path::Path) -> std::path::PathBuf {
    uv_venv(
        dir,
        &[
            &["--no-deps", "insightface==2.1"],
            &["numpy", "opencv-python-headless", "scikit-image"],
        ],
    )
}

#[test]
fn crops_match_insightface_face_align() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let tc = toolchain();
    let rt = facebuild::OnnxRuntime::new(&tc, Some(2)).unwrap();
    let mut det = rt
        .load(&Utf8PathBuf::from_path_buf(shared.join("models/scrfd_500m_kps.onnx")).unwrap())
        .unwrap();
    let input = det.inputs()[0].0.clone();
    let feed = Preprocessing::scrfd([640, 640]);
    let spec = DetectorSpec::native(DetectorFamily::Scrfd);
    let mut cases = Vec::new();
    let mut photos: Vec<_> = std::fs::read_dir(shared.join("faces/pairs"))
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    photos.sort();
    for (i, path) in photos.iter().take(6).enumerate() {
        let photo =
            facebuild::decode_image(&Utf8PathBuf::from_path_buf(path.clone()).unwrap()).unwrap();
        let (boxed, scale) = facebuild::letterbox(&photo, feed.size);
        let t = facebuild::to_tensor(&boxed, &feed, facebuild::Layout::NCHW);
        let out = det.run(&[(input.clone(), t.into_dyn())]).unwrap();
        let d = facebuild::decode(&spec, &out, (640, 640))
            .unwrap()
            .into_iter()
            .max_by(|a, b| a.area().total_cmp(&b.area()))
            .expect("a face")
            .scaled(scale);
        let kps = d.kps.expect("SCRFD gives keypoints");
        // The same pixels on both sides: the decoded photo, losslessly.
        let png = dir.path().join(format!("photo{i}.png"));
        photo.save(&png).unwrap();
        for (mode, size, box_scale) in [
            ("arcface", 112u32, 0.0f32),
            ("arcface", 128, 0.0),
            ("box", 192, 1.5),
            ("box", 96, 1.5),
        ] {
            let m = if mode == "arcface" {
                facebuild::face_align::arcface_transform(&kps, [size, size])
            } else {
                facebuild::face_align::box_transform(d.bbox, [size, size], box_scale)
            };
            let crop = facebuild::face_align::warp(&photo, &m, size, size);
            let name = format!("photo{i}_{mode}{size}");
            let crop_path = dir.path().join(format!("{name}.png"));
            crop.save(&crop_path).unwrap();
            cases.push(serde_json::json!({
                "name": name, "photo": png, "crop": crop_path, "mode": mode, "size": size,
                "scale": box_scale, "bbox": d.bbox, "kps": kps, "m": m,
            }));
        }
    }
    let cases_path = dir.path().join("cases.json");
    std::fs::write(&cases_path, serde_json::to_vec(&cases).unwrap()).unwrap();
    let python = insightface_venv(dir.path());
    let out = run_ok(
        std::process::Command::new(python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/insightface_face_align.py"
            ))
            .arg(&cases_path),
    );
    let results: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), cases.len());
    for r in &results {
        eprintln!("{r}");
        let (t, mad) = (
            r["transform_px"].as_f64().unwrap(),
            r["crop_mad"].as_f64().unwrap(),
        );
        assert!(t < 1e-3, "{r}");
        assert!(mad <= 1.0, "{r}");
    }
}

/// facebuild's head pose from 3D-68 points is insightface 2.1's own
/// (`utils/transform.py`, run in a test venv on its `meanshape_68.pkl`): the mean shape turned
/// by known angles, scaled, moved and jittered by half a pixel gives the same pitch, yaw and
/// roll to 1e-6 degrees, and both recover the turn to within a degree.
#[test]
fn pose_matches_insightface_transform() {
    let dir = tempfile::tempdir().unwrap();
    let python = insightface_venv(dir.path());
    let out = run_ok(std::process::Command::new(python).arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/insightface_pose.py"
    )));
    let points = |v: &serde_json::Value| -> Vec<[f64; 3]> {
        serde_json::from_value(v.clone()).expect("68 rows of (x, y, z)")
    };
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    for c in &lines {
        let ours = facebuild::face_pose::rotation_between(&points(&c["mean"]), &points(&c["pred"]))
            .expect("a pose");
        let theirs: Vec<f64> = serde_json::from_value(c["insightface"].clone()).unwrap();
        let turned: Vec<f64> = serde_json::from_value(c["turned_by"].clone()).unwrap();
        eprintln!("turned by {turned:?}: insightface {theirs:?}, facebuild {ours:?}");
        for i in 0..3 {
            assert!((ours[i] - theirs[i]).abs() < 1e-6, "{ours:?} {theirs:?}");
            assert!((ours[i] - turned[i]).abs() < 1.0, "{ours:?} {turned:?}");
        }
    }
}

/// The built-in attribute pipeline (genderage's contract, random weights) runs end to end:
/// check, simplify, OpenVINO FP32/FP16/INT8, Q/DQ, compare face by face (gender flips, age
/// error in years), benchmark (a short budget) and release.
#[test]
fn builtin_attribute_pipeline_runs_end_to_end() {
    let p = Project::new();
    p.write(
        "attribute.yaml",
        &builtin_pipeline_short_benchmark("attribute"),
    );
    let (code, r) = p.run_json("attribute.yaml", &[]);
    released(p.dir.path(), code, &r);
    let how = "released";
    let rep: CompareReport = p.report("out/attribute/compare/report.json");
    assert_eq!(rep.task.as_deref(), Some("attribute"));
    let cand = |label: &str| rep.candidates.iter().find(|c| c.label == label).unwrap();
    let fp32 = cand("openvino_fp32");
    assert_eq!((fp32.gender_flips, fp32.age_mae), (Some(0), Some(0.0)));
    assert_eq!(fp32.attribute.as_ref().unwrap().faces, 60);
    for label in ["openvino_fp16", "openvino_int8", "quantize"] {
        let c = cand(label);
        assert!(c.gender_flips.is_some() && c.age_mae.is_some(), "{c:#?}");
    }
    eprintln!(
        "built-in attribute: {how:?}; int8 age MAE {:?}",
        cand("openvino_int8").age_mae
    );
}

/// The built-in swapper pipeline (INSwapper's two inputs and `emap`, random weights: its
/// figures prove the plumbing, not fidelity) runs end to end: check, simplify, OpenVINO
/// FP32/FP16/INT8 (NNCF calibrated on target and latent tuples), Q/DQ, compare pair by pair
/// (PSNR, SSIM, identity through the recognizer), benchmark of both inputs (a short budget)
/// and release.
#[test]
fn builtin_swapper_pipeline_runs_end_to_end() {
    let p = Project::new();
    p.write("swapper.yaml", &builtin_pipeline_short_benchmark("swapper"));
    let (code, r) = p.run_json("swapper.yaml", &[]);
    released(p.dir.path(), code, &r);
    let how = "released";
    let rep: CompareReport = p.report("out/swapper/compare/report.json");
    assert_eq!(rep.task.as_deref(), Some("swapper"));
    let setup = rep.swapper.as_ref().unwrap();
    assert_eq!(
        (setup.pairs, setup.source_input.as_str(), setup.emap),
        (60, "source", true)
    );
    assert!(
        setup.identities.starts_with("identity folders"),
        "{setup:#?}"
    );
    let cand = |label: &str| rep.candidates.iter().find(|c| c.label == label).unwrap();
    let fp32 = cand("openvino_fp32");
    assert!(fp32.psnr_min.unwrap() > 60.0 && fp32.identity_cosine_min.unwrap() > 0.9999);
    for label in ["openvino_fp16", "openvino_int8", "quantize"] {
        let f = cand(label).swapper.as_ref().unwrap();
        assert!(
            f.psnr_min <= f.psnr_mean && f.ssim_min <= f.ssim_mean,
            "{f:#?}"
        );
        assert_eq!(f.faces, 60);
    }
    let nncf: serde_json::Value = p.report("out/swapper/openvino_int8/report.json");
    assert_eq!(
        nncf["conversion"]["result"]["inputs"],
        serde_json::json!(["target", "source"]),
        "NNCF is fed (target, source) tuples"
    );
    let bench: serde_json::Value = p.report("out/swapper/benchmark/report.json");
    assert!(bench.to_string().contains("openvino_int8"), "{bench:#}");
    assert!(
        rep.model_note.as_deref().is_some_and(
            |n| n.contains("`inswapper-mini`") && n.contains("not a trained model's fidelity")
        ),
        "{:?}",
        rep.model_note
    );
    let md = std::fs::read_to_string(p.path("out/swapper/compare/report.md")).unwrap();
    assert!(
        md.contains("\n\n> The model is facebuild's built-in `inswapper-mini`"),
        "{md}"
    );
    let html = std::fs::read_to_string(p.path("out/swapper/report.html")).unwrap();
    assert!(html.contains("PSNR min (dB)") && html.contains("identity flips"));
    eprintln!(
        "built-in swapper: {how:?}; int8 PSNR min {:?} identity cosine min {:?}",
        cand("openvino_int8").psnr_min,
        cand("openvino_int8").identity_cosine_min
    );
}

/// A swapper fed from real photos: targets are ArcFace-128 crops of ../shared/faces/pairs by
/// the shared SCRFD, each paired with a face the pairs file says is another person, whose
/// latent is a recognizer's embedding (the built-in 512-d iresnet: the real recognizers here
/// are 128-d, and no real 512-d swapper can be had) times the swapper's `emap`.
#[test]
fn swapper_compare_feeds_targets_and_latents_from_real_photos() {
    let Some(shared) = shared() else { return };
    let s = shared.display();
    let p = Project::new();
    p.write(
        "m.yaml",
        &format!(
            indoc! {"
                schema: 1
                name: swap
                model:
                  builtin: inswapper-mini
                  task: swapper
                  inputs:
                    target: {{shape: [1, 3, 128, 128]}}
                    source: {{shape: [1, 512], feed: {{embedding: {{builtin: iresnet-mini, emap: true}}}}}}
                  preprocessing: {{color: RGB, mean: [0, 0, 0], std: [255, 255, 255], size: [128, 128]}}
                datasets:
                  faces:
                    path: {s}/faces/pairs
                    pairs: pairs.csv
                    align: {{model: {s}/models/scrfd_500m_kps.onnx, detector: {{family: scrfd}}}}
                steps:
                  check: {{kind: check}}
                  openvino_fp16: {{kind: convert, needs: [check], params: {{backend: openvino, precision: fp16}}}}
                  compare:
                    kind: compare
                    params: {{dataset: faces, candidates: [openvino_fp16], psnr_min: 40}}
            "},
            s = s
        ),
    );
    let (code, r) = p.run_json("m.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    let rep: CompareReport = p.report("out/swap/compare/report.json");
    let setup = rep.swapper.as_ref().unwrap();
    assert!(setup.identities.starts_with("pairs file"), "{setup:#?}");
    // Every photo with a face and a different-person pair in pairs.csv is a target: the
    // file's 262 different pairs name 25 photos.
    assert_eq!(setup.pairs, 25, "{setup:#?}");
    let fp16 = rep
        .candidates
        .iter()
        .find(|c| c.label == "openvino_fp16")
        .unwrap();
    assert!(fp16.psnr_min.unwrap() > 40.0, "{fp16:#?}");
    eprintln!(
        "real photos: {} pairs; reference to source {:.3}, to target {:.3}; fp16 PSNR min {:?}",
        setup.pairs, setup.reference_to_source_mean, setup.reference_to_target_mean, fp16.psnr_min
    );
}

/// The source latents can come from a recognizer as another pipeline built it: an OpenVINO
/// IR (here the built-in recognizer's FP32 IR from a recognition pipeline in the same
/// project) gives the same swaps as the ONNX original, and its .bin is part of the key.
#[test]
fn swapper_latents_from_a_recognizer_ir_built_by_another_pipeline() {
    let p = Project::new();
    p.write(
        "rec.yaml",
        indoc! {"
            schema: 1
            name: rec
            model: {builtin: iresnet-mini, task: recognition, input: {name: input.1, shape: [1, 3, 112, 112]}}
            datasets:
              faces: {builtin: synthetic-faces}
            steps:
              openvino_fp32: {kind: convert, params: {backend: openvino, precision: fp32}}
        "},
    );
    let (code, r) = p.run_json("rec.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    let swap = |recognizer: &str| {
        format!(
            indoc! {"
                schema: 1
                name: swap
                model:
                  builtin: inswapper-mini
                  task: swapper
                  inputs:
                    target: {{shape: [1, 3, 128, 128]}}
                    source: {{shape: [1, 512], feed: {{embedding: {{{recognizer}, emap: true}}}}}}
                  preprocessing: {{color: RGB, mean: [0, 0, 0], std: [255, 255, 255], size: [128, 128]}}
                datasets:
                  faces: {{builtin: synthetic-faces, count: 20}}
                steps:
                  openvino_fp32: {{kind: convert, params: {{backend: openvino, precision: fp32}}}}
                  compare:
                    kind: compare
                    params: {{dataset: faces, candidates: [openvino_fp32], psnr_min: 60}}
            "},
            recognizer = recognizer
        )
    };
    let mut setups = Vec::new();
    for rec in [
        "builtin: iresnet-mini",
        "model: out/rec/openvino_fp32/model.xml",
    ] {
        p.write("swap.yaml", &swap(rec));
        let (code, r) = p.run_json("swap.yaml", &[]);
        assert_eq!(code, 0, "{rec}: {r:#?}");
        let rep: CompareReport = p.report("out/swap/compare/report.json");
        setups.push(rep.swapper.unwrap());
    }
    let (onnx, ir) = (&setups[0], &setups[1]);
    assert_eq!(ir.recognizer, "out/rec/openvino_fp32/model.xml");
    assert_eq!(onnx.pairs, ir.pairs);
    for (a, b) in [
        (onnx.reference_to_source_mean, ir.reference_to_source_mean),
        (onnx.reference_to_target_mean, ir.reference_to_target_mean),
    ] {
        assert!((a - b).abs() < 1e-3, "{onnx:#?} {ir:#?}");
    }
    eprintln!(
        "source latents, ONNX vs IR recognizer: to source {:.5} / {:.5}, to target {:.5} / {:.5}",
        onnx.reference_to_source_mean,
        ir.reference_to_source_mean,
        onnx.reference_to_target_mean,
        ir.reference_to_target_mean
    );
}

/// Accuracy control runs a model on its image input alone: on a two-input swapper it is a
/// located error that says what to do instead, not an ONNX Runtime failure mid-search.
#[test]
fn accuracy_control_refuses_a_model_with_a_second_input() {
    let p = Project::new();
    p.write(
        "m.yaml",
        indoc! {"
            schema: 1
            name: swap
            model:
              builtin: inswapper-mini
              task: swapper
              inputs:
                target: {shape: [1, 3, 128, 128]}
                source: {shape: [1, 512], feed: {embedding: {builtin: iresnet-mini, emap: true}}}
              preprocessing: {color: RGB, mean: [0, 0, 0], std: [255, 255, 255], size: [128, 128]}
            datasets:
              faces: {builtin: synthetic-faces, count: 12}
            steps:
              calibrate: {kind: calibrate, params: {dataset: faces}}
              quantize_ac:
                kind: quantize
                params:
                  calibration: calibrate
                  accuracy_control: {dataset: faces, metric: cosine_min, target: 0.99, max_fp_layers: 2}
        "},
    );
    let (code, r) = p.run_json("m.yaml", &[]);
    assert_eq!(code, 1, "{r:#?}");
    let err = error_of(&r, "quantize_ac");
    assert!(
        err.contains("also has input `source`") && err.contains("without `accuracy_control`"),
        "{err}"
    );
}

/// A two-input model compared output by output (`task: generic`), its second input fed rows
/// of a `.npy` file: every artifact runs on both inputs, image by image, and a file whose
/// rows do not fit the input is an error naming it.
#[test]
fn generic_two_input_model_is_compared_with_an_npy_feed() {
    let p = Project::new();
    run_toolchain_python(
        "import numpy as np, sys\nrng = np.random.default_rng(0)\nv = rng.standard_normal((7, 512)).astype(np.float32)\nnp.save(sys.argv[1], v / np.linalg.norm(v, axis=1, keepdims=True))\nnp.save(sys.argv[2], np.zeros((3, 128), np.float32))",
        &[&p.path("latents.npy"), &p.path("short.npy")],
    );
    let manifest = |npy: &str| {
        format!(
            indoc! {"
                schema: 1
                name: two
                model:
                  builtin: inswapper-mini
                  task: generic
                  inputs:
                    target: {{shape: [1, 3, 128, 128]}}
                    source: {{shape: [1, 512], feed: {{npy: {npy}}}}}
                  preprocessing: {{color: RGB, mean: [0, 0, 0], std: [255, 255, 255], size: [128, 128]}}
                datasets:
                  faces: {{builtin: synthetic-faces, count: 12}}
                steps:
                  openvino_fp32: {{kind: convert, params: {{backend: openvino, precision: fp32}}}}
                  openvino_fp16: {{kind: convert, params: {{backend: openvino, precision: fp16}}}}
                  compare:
                    kind: compare
                    params: {{dataset: faces, candidates: [openvino_fp32, openvino_fp16], batch: 1, cosine_min: 0.999}}
            "},
            npy = npy
        )
    };
    p.write("m.yaml", &manifest("latents.npy"));
    let (code, r) = p.run_json("m.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    let rep: CompareReport = p.report("out/two/compare/report.json");
    for c in &rep.candidates {
        let out = &c.outputs.as_ref().unwrap()[0];
        assert!(out.cosine.min > 0.999, "{}: {out:#?}", c.label);
    }
    p.write("m.yaml", &manifest("short.npy"));
    let (code, r) = p.run_json("m.yaml", &["-t", "compare"]);
    assert_eq!(code, 1);
    let err = error_of(&r, "compare");
    assert!(err.contains("short.npy") && err.contains("[512]"), "{err}");
}
