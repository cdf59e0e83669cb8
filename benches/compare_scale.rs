//! `compare` at dataset scale (not a timed test: run with `cargo bench --bench compare_scale`).
//!
//! Folder-per-identity sets of 200, 1000 and 5000 images (50 identity folders of distinct
//! copies of the photos in ../shared/faces/pairs: each copy gets unique trailing bytes, so no
//! cache dedupes it) and an InsightFace `.bin` of 6000 pairs, compared by MobileFaceNet against
//! its FP32 IR. The IR is built first; the measured run then builds `compare` alone with a
//! cold tensor cache. Reports wall time per phase (decode, inference, scoring) from the step's
//! own timing, and the peak RSS of the facebuild process (GNU time's %M). Writes
//! target/bench/compare_scale.json. Needs ../shared; prints SKIP without it.
//! `FACEBUILD_BENCH_BOOTSTRAP=N` sets compare's `bootstrap_replicates` (default 1000; 0 for
//! none), `FACEBUILD_BENCH_SIZES=1000` the folder sizes, `FACEBUILD_BENCH_BIN=0` skips the .bin.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared");
    if !shared.join("models/mobilefacenet.onnx").exists() {
        eprintln!("SKIP: ../shared not found: the scale benchmark needs MobileFaceNet and photos");
        return;
    }
    let shared = shared.canonicalize().unwrap();
    let exe = env!("CARGO_BIN_EXE_facebuild");
    let toolchains = std::env::var("FACEBUILD_TOOLCHAIN_DIR")
        .unwrap_or_else(|_| root.join("cache/toolchains").display().to_string());
    let photos: Vec<PathBuf> = {
        let mut v: Vec<PathBuf> = std::fs::read_dir(shared.join("faces/pairs"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
            .collect();
        v.sort();
        v
    };
    let work = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    let sizes: Vec<usize> = std::env::var("FACEBUILD_BENCH_SIZES")
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|_| vec![200, 1000, 5000]);
    for n in sizes {
        let dir = work.path().join(format!("set{n}"));
        for k in 0..n {
            let id = dir.join(format!("id{:02}", k % 50));
            std::fs::create_dir_all(&id).unwrap();
            let mut bytes = std::fs::read(&photos[k % photos.len()]).unwrap();
            bytes.extend_from_slice(format!("facebuild-copy-{k}").as_bytes());
            std::fs::write(id.join(format!("{k:05}.jpg")), bytes).unwrap();
        }
        let row = run(
            exe,
            &toolchains,
            &shared,
            work.path(),
            &format!("{{path: {}}}", dir.display()),
            &format!("folder {n}"),
        );
        rows.push(row);
    }
    // A 6000-pair .bin (12000 distinct image copies), written with the toolchain's pickle.
    if std::env::var("FACEBUILD_BENCH_BIN")
        .map(|v| v != "0")
        .unwrap_or(true)
    {
        let bin = work.path().join("v6000.bin");
        let script = r#"
import pickle, sys, glob
photos = sorted(glob.glob(sys.argv[1] + "/*.jpg"))
data = [open(p, "rb").read() for p in photos]
bins, issame = [], []
for i in range(6000):
    a, b = i % len(data), (i * 7 + (0 if i % 2 else 1)) % len(data)
    bins.append(data[a] + b"pair-%d-a" % i)
    bins.append(data[b] + b"pair-%d-b" % i)
    issame.append(i % 2 == 0)
pickle.dump((bins, issame), open(sys.argv[2], "wb"), protocol=4)
"#;
        let python = Path::new(&toolchains);
        let python = std::fs::read_dir(python)
            .unwrap()
            .flatten()
            .map(|e| e.path().join("venv/bin/python"))
            .find(|p| p.exists())
            .expect("an installed toolchain");
        let st = Command::new(python)
            .args(["-c", script])
            .arg(shared.join("faces/pairs"))
            .arg(&bin)
            .status()
            .unwrap();
        assert!(st.success());
        rows.push(run(
            exe,
            &toolchains,
            &shared,
            work.path(),
            &format!("{{path: {}}}", bin.display()),
            ".bin 6000 pairs",
        ));
    }
    println!(
        "| set | images | pairs | decode s | inference s | scoring s | compare s | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |",
            r["set"].as_str().unwrap(),
            r["images"],
            r["pairs"],
            r["decode_s"].as_f64().unwrap(),
            r["inference_s"].as_f64().unwrap(),
            r["scoring_s"].as_f64().unwrap(),
            r["compare_s"].as_f64().unwrap(),
            r["peak_rss_mib"].as_f64().unwrap()
        );
    }
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("compare_scale.json"),
        serde_json::to_vec_pretty(&rows).unwrap(),
    )
    .unwrap();
}

/// Build the IR, then time `compare` alone on `dataset` with a cold tensor cache.
fn run(
    exe: &str,
    toolchains: &str,
    shared: &Path,
    work: &Path,
    dataset: &str,
    label: &str,
) -> serde_json::Value {
    let proj = tempfile::tempdir_in(work).unwrap();
    // FACEBUILD_BENCH_BOOTSTRAP=0 measures compare without intervals (issue 24's 1.2x check).
    let replicates = std::env::var("FACEBUILD_BENCH_BOOTSTRAP").unwrap_or_else(|_| "1000".into());
    let manifest = format!(
        "schema: 1\nname: s\nmodel:\n  path: {}\n  task: recognition\n  input: {{name: input, shape: [1, 3, 112, 112]}}\n  preprocessing: {{color: RGB, mean: [127.5, 127.5, 127.5], std: [127.5, 127.5, 127.5], size: [112, 112]}}\ndatasets:\n  faces: {dataset}\nsteps:\n  ov_fp32: {{kind: convert, params: {{backend: openvino, precision: fp32}}}}\n  compare: {{kind: compare, params: {{dataset: faces, candidates: [ov_fp32], batch: 16, bootstrap_replicates: {replicates}}}}}\n",
        shared.join("models/mobilefacenet.onnx").display()
    );
    std::fs::write(proj.path().join("s.yaml"), manifest).unwrap();
    let fb = |args: &[&str], timed: bool| {
        let mut c = if timed {
            let mut c = Command::new("/usr/bin/time");
            c.args(["-f", "peak_rss_kib=%M"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        let out = c
            .args(args)
            .current_dir(proj.path())
            .env("FACEBUILD_CACHE", proj.path().join("cache"))
            .env("FACEBUILD_TOOLCHAIN_DIR", toolchains)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "facebuild {args:?}:\n{stderr}");
        (
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
            stderr,
        )
    };
    fb(&["run", "s.yaml", "--target", "ov_fp32", "--json"], false);
    let (r, stderr) = fb(&["run", "s.yaml", "--json"], true);
    let step = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "compare")
        .unwrap()
        .clone();
    let t = &step["summary"]["timing"];
    let ms = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0) / 1000.0;
    let rss = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("peak_rss_kib="))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(f64::NAN)
        / 1024.0;
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(proj.path().join("out/s/compare/report.json")).unwrap(),
    )
    .unwrap();
    let pairs = &report["dataset"]["pairs"];
    let scoring = ms(&t["reference_scoring_ms"]) + ms(&t["ov_fp32"]["scoring_ms"]);
    let row = serde_json::json!({
        "set": label,
        "images": step["summary"]["images"],
        "pairs": pairs["genuine"].as_u64().unwrap_or(0) + pairs["impostor"].as_u64().unwrap_or(0),
        "decode_s": ms(&t["prepare_ms"]["ms"]),
        // Reference and candidate run side by side: the phase's wall time.
        "inference_s": ms(&t["inference_wall_ms"]),
        "scoring_s": scoring,
        "compare_s": step["duration_ms"].as_f64().unwrap() / 1000.0,
        "peak_rss_mib": rss,
        "timing": t,
    });
    eprintln!("{label}: {row}");
    row
}
