//! Verification-set formats on real photos: an InsightFace `.bin` written here with the
//! toolchain's own Python pickle gives exactly the CSV path's verification figures.

mod common;
use common::*;

use facebuild::CompareReport;

/// MobileFaceNet compared with its simplified self on the dataset `faces` given by
/// `dataset` (the figures compared are the reference's, so the candidate only has to run).
fn manifest(shared: &std::path::Path, dataset: &str) -> String {
    let rest = format!(
        indoc! {"
            datasets:
              faces: {}
            steps:
              simplify: {{kind: simplify, params: {{samples: 1}}}}
              compare: {{kind: compare, params: {{dataset: faces, candidates: [simplify], operating_far: 1.0e-2}}}}
        "},
        dataset
    );
    mobilefacenet_head(shared, "v") + &rest
}

/// Python 3's pickle of (image bytes, issame) from `pairs.csv`, as InsightFace's tools
/// write verification sets: images 2i and 2i+1 form pair i.
const WRITE_BIN: &str = r#"
import csv, pickle, sys
root, out = sys.argv[1], sys.argv[2]
with open(f"{root}/pairs.csv", newline="") as f:
    rows = [(r["file_x"].strip(), r["file_y"].strip(), r["Decision"].strip().lower() == "yes")
            for r in csv.DictReader(f)]
# Laid out as LFW's folds are: 10 folds in order, each its genuine pairs then its impostors
# (dealt round-robin), so the LFW protocol's folds each hold both kinds.
folds = [[] for _ in range(10)]
for kind in (True, False):
    for i, r in enumerate([r for r in rows if r[2] == kind]):
        folds[i % 10].append(r)
bins, issame = [], []
for fold in folds:
    for a, b, same in fold:
        for name in (a, b):
            with open(f"{root}/{name}", "rb") as img:
                bins.append(img.read())
        issame.append(same)
with open(out, "wb") as f:
    pickle.dump((bins, issame), f, protocol=4)
print(len(issame))
"#;

/// A `.bin` of the shared pairs gives the same reference verification figures as the CSV.
#[test]
fn insightface_bin_matches_the_csv_path() {
    let Some(shared) = shared() else { return };
    let p = Project::new();
    let faces = shared.join("faces/pairs");
    p.write(
        "csv.yaml",
        &manifest(
            &shared,
            &format!("{{path: {}, pairs: pairs.csv}}", faces.display()),
        ),
    );
    let (code, r) = p.run_json("csv.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    let from_csv: CompareReport = p.report("out/v/compare/report.json");

    // Write the .bin with the toolchain's Python.
    let tc = toolchain();
    let bin = p.path("pairs.bin");
    let out = std::process::Command::new(tc.python())
        .args(["-c", WRITE_BIN])
        .arg(&faces)
        .arg(&bin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    p.write("bin.yaml", &manifest(&shared, "{path: pairs.bin}"));
    let (code, r) = p.run_json("bin.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    let from_bin: CompareReport = p.report("out/v/compare/report.json");

    let (a, b) = (
        from_csv.dataset.pairs.as_ref().unwrap(),
        from_bin.dataset.pairs.as_ref().unwrap(),
    );
    assert_eq!((a.genuine, a.impostor), (b.genuine, b.impostor));
    let (va, vb) = (
        from_csv.reference.verification.as_ref().unwrap(),
        from_bin.reference.verification.as_ref().unwrap(),
    );
    assert_eq!(va.eer, vb.eer);
    assert_eq!(va.tar_at_far_1e2, vb.tar_at_far_1e2);
    assert_eq!(va.tar_at_far_1e3, vb.tar_at_far_1e3);
    assert_eq!(va.threshold_at_operating_far, vb.threshold_at_operating_far);
    assert_eq!(va.far_resolution, vb.far_resolution);
    assert_eq!(from_bin.dataset.images, 2 * (b.genuine + b.impostor));
    // A .bin carries 10 folds in order: the LFW protocol is reported, for the reference and
    // each candidate; a CSV pairs file carries none.
    assert_eq!(b.folds, Some(10));
    assert!(a.folds.is_none() && from_csv.reference.lfw.is_none());
    let lfw = from_bin.reference.lfw.as_ref().unwrap();
    assert_eq!(lfw.folds, 10);
    assert!((0.0..=1.0).contains(&lfw.accuracy.mean), "{lfw:?}");
    let cand = from_bin.candidates[0].verification.as_ref().unwrap();
    assert!(
        cand.lfw.as_ref().unwrap().accuracy_drop.abs() < 0.05,
        "{cand:?}"
    );
    // Neither names a person: both resample the components of their genuine pairs (the
    // .bin's are more, as each of its pairs holds its own two image copies).
    for r in [&from_csv, &from_bin] {
        assert_eq!(
            r.dataset.resampling.as_ref().unwrap().by,
            "genuine-pair component"
        );
    }

    // A truncated .bin is an error naming the file, before any step runs.
    let bytes = std::fs::read(&bin).unwrap();
    std::fs::write(&bin, &bytes[..bytes.len() / 2]).unwrap();
    p.write(
        "bin.yaml",
        &manifest(&shared, "{path: pairs.bin, count: 10}"),
    );
    let out = p.run(&["run", "bin.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("pairs.bin: not an InsightFace verification .bin: unreadable pickle")
            && !stderr.contains("panicked"),
        "{stderr}"
    );
}

/// `max_impostor_pairs` scores a seeded sample of the impostor pairs: every genuine pair is
/// kept, the report states the sample and its FAR resolution follows it, and the same seed
/// gives the same figures while another seed gives another sample.
#[test]
fn impostor_pairs_are_sampled_with_a_seed() {
    let Some(shared) = shared() else { return };
    let p = Project::new();
    let faces = shared.join("faces/pairs");
    let with = |extra: &str| {
        let m = manifest(
            &shared,
            &format!("{{path: {}, pairs: pairs.csv}}", faces.display()),
        );
        m.replace(
            "operating_far: 1.0e-2",
            &format!("operating_far: 1.0e-1{extra}"),
        )
    };
    let mut seen = Vec::new();
    for seed in [1, 1, 2] {
        p.write(
            "s.yaml",
            &with(&format!(", max_impostor_pairs: 100, sample_seed: {seed}")),
        );
        let (code, r) = p.run_json("s.yaml", &[]);
        assert_eq!(code, 0, "{r:#?}");
        let rep: CompareReport = p.report("out/v/compare/report.json");
        let src = rep.dataset.pairs.clone().unwrap();
        let sampled = src.sampled.clone().expect("the sample is stated");
        assert_eq!((src.genuine, src.impostor), (38, 262));
        assert_eq!((sampled.max_impostor_pairs, sampled.seed), (100, seed));
        assert!((60..140).contains(&sampled.kept), "{sampled:?}");
        let v = rep.reference.verification.clone().unwrap();
        assert_eq!(v.far_resolution, 1.0 / sampled.kept as f64);
        let md = std::fs::read_to_string(p.path("out/v/compare/report.md")).unwrap();
        assert!(md.contains("a seeded sample of"), "{md}");
        seen.push((sampled.kept, v.eer, v.threshold_at_operating_far));
    }
    assert_eq!(seen[0], seen[1], "same seed, same sample");
    assert_ne!(seen[0], seen[2], "another seed, another sample");
}
