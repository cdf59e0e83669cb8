//! Gates that know their uncertainty: the LFW protocol cross-checked against an independent
//! Python implementation (numpy, scikit-learn's KFold, scipy's interp1d), and on the real
//! MobileFaceNet and the shared pairs, an INT8 gate the point estimate passes that the
//! interval cannot decide, with release's fail-closed rule and its `inconclusive: pass`.

mod common;
use common::*;
use facebuild::uncertainty::{lfw_protocol, squared_distances};
use facebuild::{CompareReport, ReleaseReport};

/// The protocol as InsightFace's verification.py describes it, written from its description
/// (not copied): unshuffled KFold(10), accuracy thresholds 0..4 step 0.01 on the squared L2
/// distance of L2-normalised embeddings (each summed with its flip's first when flipping),
/// the best on the nine training folds; VAL@FAR=1e-3 at the threshold interpolated by
/// scipy's interp1d on the training FARs, thresholds 0..4 step 0.001.
const PROTOCOL_PY: &str = r#"
import json, sys
import numpy as np
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize
from scipy import interpolate

emb = np.loadtxt(sys.argv[1], dtype=np.float32)
flip = np.loadtxt(sys.argv[2], dtype=np.float32)
same = np.loadtxt(sys.argv[3], dtype=np.int64).astype(bool)

def protocol(e):
    e = normalize(e.astype(np.float64))
    d = np.sum(np.square(e[0::2] - e[1::2]), 1)
    n = len(same)
    folds = KFold(n_splits=10, shuffle=False)
    acc_t = np.arange(0, 4, 0.01)
    val_t = np.arange(0, 4, 0.001)
    def acc(t, idx):
        p = d[idx] < t
        return np.sum(p == same[idx]) / len(idx)
    def val_far(t, idx):
        p = d[idx] < t
        s = same[idx]
        return np.sum(p & s) / np.sum(s), np.sum(p & ~s) / np.sum(~s)
    accs, vals, fars = [], [], []
    for train, test in folds.split(np.arange(n)):
        best = int(np.argmax([acc(t, train) for t in acc_t]))
        accs.append(acc(acc_t[best], test))
        far_train = np.array([val_far(t, train)[1] for t in val_t])
        if np.max(far_train) >= 1e-3:
            # verification.py asks for kind='slinear'; scipy >= 1.9 refuses the repeated FARs
            # that always occur there (InsightFace issue #2152). Between two distinct FARs,
            # 'linear' interpolates between the same two points old 'slinear' did: the last
            # at or below the target and the first above it.
            t = float(interpolate.interp1d(far_train, val_t, kind="linear")(1e-3))
        else:
            t = 0.0
        v, f = val_far(t, test)
        vals.append(v)
        fars.append(f)
    return {"acc_mean": float(np.mean(accs)), "acc_std": float(np.std(accs)),
            "val_mean": float(np.mean(vals)), "val_std": float(np.std(vals)),
            "far_mean": float(np.mean(fars))}

json.dump({"plain": protocol(emb), "flip": protocol(emb + flip)}, open(sys.argv[4], "w"))
"#;

/// LFW 10-fold accuracy and VAL@FAR=1e-3, with and without flip, equal the independent
/// Python implementation's to 1e-6, on 6,000 pairs of synthetic embeddings whose genuine and
/// impostor distances overlap (so thresholds matter).
#[test]
fn lfw_protocol_matches_an_independent_python_implementation() {
    let dir = tempfile::tempdir().unwrap();
    let (pairs, dim) = (6000usize, 64usize);
    let mut state = 0x1234_5678_u64;
    let mut unit = move || {
        // xorshift: the test's own numbers, no dependency.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let mut emb: Vec<Vec<f32>> = Vec::new();
    let mut flipped: Vec<Vec<f32>> = Vec::new();
    let mut same = Vec::new();
    for k in 0..pairs {
        // As LFW's pairs.txt: per fold of 600, 300 genuine then 300 impostor.
        let genuine = (k % 600) < 300;
        let a: Vec<f32> = (0..dim).map(|_| unit()).collect();
        let noise = 1.8 + 1.5 * unit().abs();
        let b: Vec<f32> = if genuine {
            a.iter().map(|x| x + noise * unit()).collect()
        } else {
            (0..dim).map(|_| unit()).collect()
        };
        for v in [a, b] {
            flipped.push(v.iter().map(|x| x + 0.3 * unit()).collect());
            emb.push(v);
        }
        same.push(genuine);
    }
    let write = |name: &str, rows: &[Vec<f32>]| {
        let text: Vec<String> = rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|x| format!("{x:e}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let p = dir.path().join(name);
        std::fs::write(&p, text.join("\n")).unwrap();
        p
    };
    let (e, f) = (write("emb.txt", &emb), write("flip.txt", &flipped));
    let s = dir.path().join("same.txt");
    let same_text: Vec<&str> = same.iter().map(|x| if *x { "1" } else { "0" }).collect();
    std::fs::write(&s, same_text.join("\n")).unwrap();
    let out = dir.path().join("out.json");
    run_toolchain_python(PROTOCOL_PY, &[&e, &f, &s, &out]);
    let py: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();

    let idx: Vec<(usize, usize)> = (0..pairs).map(|k| (2 * k, 2 * k + 1)).collect();
    for (key, flip) in [("plain", None), ("flip", Some(flipped.as_slice()))] {
        let d = squared_distances(&emb, flip, &idx);
        let r = lfw_protocol(&d, &same, 10, flip.is_some()).unwrap();
        let want = &py[key];
        let got = [
            ("acc_mean", r.accuracy.mean),
            ("acc_std", r.accuracy.std),
            ("val_mean", r.val_at_far_1e3.mean),
            ("val_std", r.val_at_far_1e3.std),
            ("far_mean", r.val_at_far_1e3.far),
        ];
        say(&format!("{key}: facebuild {got:?}; python {want}"));
        for (name, v) in got {
            let w = want[name].as_f64().unwrap();
            assert!(
                (v - w).abs() <= 1e-6,
                "{key} {name}: facebuild {v} vs python {w}"
            );
        }
        // The set is neither trivial nor hopeless, so thresholds were exercised.
        assert!(r.accuracy.mean > 0.6 && r.accuracy.mean < 0.99, "{r:?}");
    }
}

/// The first candidate's `tar_drop` gate.
fn tar_drop_gate(r: &CompareReport) -> &facebuild::GateResult {
    r.candidates[0]
        .gates
        .iter()
        .flatten()
        .find(|g| g.metric == "tar_drop")
        .unwrap()
}

/// On the shared pairs (38 genuine, 262 impostor, no person named), an INT8 MobileFaceNet's
/// TAR drop passes `tar_drop_max: 0.005` on the point estimate while its 95% interval
/// straddles the limit. compare with `confidence: 0.95` reports the gate inconclusive (and
/// fails, closed); release with `confidence` refuses on it; `inconclusive: pass` releases,
/// with a warning.
#[test]
fn shared_pairs_int8_gate_is_inconclusive_and_release_fails_closed() {
    let Some(shared) = shared() else { return };
    let p = Project::new();
    let manifest = mobilefacenet_head(&shared, "mfn")
        + &format!(
            r#"datasets:
  faces: {{path: {faces}, pairs: pairs.csv}}
  calib: {{path: {faces}, count: 24, seed: 1}}
steps:
  calibrate: {{kind: calibrate, params: {{dataset: calib}}}}
  ov_int8: {{kind: convert, params: {{backend: openvino, precision: int8, calibration: calibrate}}}}
  compare:
    kind: compare
    params: {{dataset: faces, candidates: [ov_int8], operating_far: 0.01, cosine_min: 0.9, tar_drop_max: 0.005}}
  compare_sure:
    kind: compare
    params: {{dataset: faces, candidates: [ov_int8], operating_far: 0.01, cosine_min: 0.9, tar_drop_max: 0.005, confidence: 0.95}}
  release_sure:
    kind: release
    params: {{compare: compare, artifacts: [ov_int8], gates: {{tar_drop_max: 0.005, confidence: 0.95}}}}
  release_lenient:
    kind: release
    params: {{compare: compare, artifacts: [ov_int8], gates: {{tar_drop_max: 0.005, confidence: 0.95, inconclusive: pass}}}}
"#,
            faces = shared.join("faces/pairs").display()
        );
    p.write("m.yaml", &manifest);
    let (code, r) = p.run_json("m.yaml", &["--keep-going"]);
    assert_ne!(code, 0, "compare_sure and release_sure fail closed: {r:#?}");

    // The point estimate passes; the interval straddles the limit.
    let rep: CompareReport = p.report("out/mfn/compare/report.json");
    assert!(rep.passed, "{:#?}", rep.failures);
    let c = &rep.candidates[0];
    let g = tar_drop_gate(&rep);
    let iv = g.interval.unwrap();
    say(&format!("tar_drop {:?} ci95 {iv:?}", g.value));
    assert!(g.passed && g.value.unwrap() <= 0.005);
    assert!(iv[0] < 0.005 && 0.005 < iv[1], "straddles: {iv:?}");
    let v = c.verification.as_ref().unwrap();
    assert_eq!(v.tar_at_operating_far.unwrap().drop_ci95, Some(iv));
    assert!(v.mcnemar_p.is_some() && v.score_difference.is_some());
    let res = rep.dataset.resampling.as_ref().unwrap();
    assert_eq!(res.by, "genuine-pair component");
    assert!(
        res.note
            .contains("connected components of the genuine pairs"),
        "{res:?}"
    );
    // `run --json` carries every gate with its interval.
    let json_gates = &step(&r, "compare").summary["gates"]["ov_int8"];
    let tar = json_gates
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["metric"] == "tar_drop")
        .unwrap();
    assert_eq!(tar["interval"][1].as_f64(), Some(iv[1]), "{json_gates}");
    let md = std::fs::read_to_string(p.path("out/mfn/compare/report.md")).unwrap();
    assert!(md.contains("## How sure") && md.contains("McNemar"), "{md}");

    // compare with `confidence`: inconclusive, failed closed, with the set size that would
    // resolve it.
    assert_eq!(status_of(&r, "compare_sure"), Status::Failed);
    let e = error_of(&r, "compare_sure");
    assert!(
        e.contains("tar_drop") && e.contains("inconclusive") && e.contains("would resolve it"),
        "{e}"
    );
    let sure: CompareReport = p.report("out/mfn/compare_sure/report.json");
    let g = tar_drop_gate(&sure);
    assert_eq!(g.status.as_deref(), Some("inconclusive"));
    assert_eq!(g.confidence, Some(0.95));
    assert!(!g.passed);

    // release: fail closed on inconclusive, unless the gate says `inconclusive: pass`.
    assert_eq!(status_of(&r, "release_sure"), Status::Failed);
    let e = error_of(&r, "release_sure");
    assert!(e.contains("inconclusive"), "{e}");
    assert_eq!(status_of(&r, "release_lenient"), Status::Built);
    let rel: ReleaseReport = p.report("out/mfn/release_lenient/report.json");
    let json = serde_json::to_string(&rel).unwrap();
    assert!(json.contains("passed by `inconclusive: pass`"), "{json}");
}
