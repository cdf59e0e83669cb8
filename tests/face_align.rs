//! facebuild's face crops against insightface 2.1's own `utils/face_align.py`, run in a test
//! venv (insightface 2.1, a pure-Python wheel, with OpenCV and scikit-image from PyPI): the
//! ArcFace crop at 112 and at 128 (the swapper's target, `estimate_norm`'s 128 branch) and
//! the box crop as InsightFace's landmark and attribute models take it, on real photos with
//! boxes and keypoints from the shared SCRFD.

mod common;
use camino::Utf8PathBuf;
use common::*;
use facebuild::{DetectorFamily, DetectorSpec, Preprocessing, Runtime};

/// A venv with insightface 2.1 (without its model-zoo dependencies), OpenCV and
/// scikit-image, made with the toolchain's uv.
fn insightface_venv(dir: &std::path::Path) -> std::path::PathBuf {
    let uv = std::fs::read_dir(toolchain_dir())
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path().join("bin/uv")))
        .find(|p| p.is_file())
        .expect("the toolchain's uv (run `facebuild toolchain install`)");
    let venv = dir.join("venv");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&uv)
            .args(args)
            .env("VIRTUAL_ENV", &venv)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "uv {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let python = toolchain_python();
    run(&[
        "venv",
        "-q",
        venv.to_str().unwrap(),
        "--python",
        python.to_str().unwrap(),
    ]);
    run(&["pip", "install", "-q", "--no-deps", "insightface==2.1"]);
    run(&[
        "pip",
        "install",
        "-q",
        "numpy",
        "opencv-python-headless",
        "scikit-image",
    ]);
    venv.join("bin/python")
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
    let spec = DetectorSpec {
        family: DetectorFamily::Scrfd,
        score_threshold: 0.5,
        nms_iou: 0.4,
        strides: None,
        min_sizes: None,
        variance: None,
    };
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
    let out = std::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/insightface_face_align.py"
        ))
        .arg(&cases_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
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
