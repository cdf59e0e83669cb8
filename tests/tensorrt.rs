//! The TensorRT backend where no TensorRT is: the `unavailable` path, and the orchestration
//! (flags, profiles, cache keys per GPU and TensorRT version, timing cache, metadata)
//! exercised with a clearly named stand-in for trtexec (tests/fixtures/trtexec-standin),
//! which facebuild refuses outside its tests. The explicit-quantization half (Q/DQ INT8
//! ONNX) runs for real, in ONNX Runtime, on the real recognition model when ../shared is here.

mod common;
use common::*;

use std::path::{Path, PathBuf};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/trtexec-standin"
);

fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn manifest(extra: &str) -> String {
    format!(
        r#"schema: 1
name: trt
model:
  builtin: scrfd-mini
  task: detection
  input: {{name: input.1, shape: [1, 3, H, W], dims: {{H: {{min: 320, opt: 640, max: 640}}, W: {{min: 320, opt: 640, max: 640}}}}}}
  preprocessing: {{color: RGB, mean: [127.5, 127.5, 127.5], std: [128, 128, 128], size: [640, 640]}}
  detector: {{family: scrfd}}
datasets:
  scenes: {{builtin: synthetic-scenes}}
steps:
  simplify: {{kind: simplify, params: {{samples: 1}}}}
  calibrate: {{kind: calibrate, params: {{dataset: scenes}}}}
  quantize: {{kind: quantize, from: simplify, params: {{calibration: calibrate}}}}
  trt_fp16: {{kind: convert, from: simplify, params: {{backend: tensorrt, precision: fp16, version_compatible: true{extra}}}}}
  trt_int8: {{kind: convert, from: quantize, params: {{backend: tensorrt, precision: int8}}}}
  compare: {{kind: compare, params: {{dataset: scenes, candidates: [quantize, trt_fp16, trt_int8]}}}}
"#
    )
}

/// PATH without any folder that holds a trtexec: a developer's real TensorRT must not leak in.
fn path_without_trtexec() -> String {
    let p = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&p)
        .filter(|d| !d.join("trtexec").exists() && !d.join("nvidia-smi").exists())
        .collect();
    std::env::join_paths(dirs).unwrap().into_string().unwrap()
}

fn no_trt(p: &Project, args: &[&str]) -> std::process::Output {
    p.cmd()
        .args(args)
        .env_remove("TENSORRT_HOME")
        .env_remove("FACEBUILD_ALLOW_TRTEXEC_STANDIN")
        .env("PATH", path_without_trtexec())
        .output()
        .unwrap()
}

#[test]
fn without_tensorrt_steps_are_unavailable_never_cached_and_fail_only_when_required() {
    let p = Project::new();
    p.write("t.yaml", &manifest(""));
    for round in 0..2 {
        let out = no_trt(&p, &["run", "t.yaml", "--json"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for s in ["trt_fp16", "trt_int8"] {
            assert_eq!(status_of(&r, s), "unavailable", "round {round}: {r:#?}");
            let step = r["steps"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["step"] == s)
                .unwrap();
            assert!(
                step["error"]
                    .as_str()
                    .unwrap()
                    .contains("trtexec not found"),
                "{step:#}"
            );
        }
        assert_eq!(
            status_of(&r, "compare"),
            if round == 0 { "built" } else { "cached" }
        );
    }
    // The compare report names the absent candidates; they are neither passed nor failed.
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.path("out/trt/compare/report.json")).unwrap())
            .unwrap();
    let c = rep["candidates"].as_array().unwrap();
    assert_eq!(
        c.iter().filter(|x| x["available"] == false).count(),
        2,
        "{rep:#}"
    );
    assert_eq!(
        c.iter().find(|x| x["label"] == "quantize").unwrap()["passed"],
        true
    );
    let md = std::fs::read_to_string(p.path("out/trt/compare/report.md")).unwrap();
    assert!(
        md.contains("| trt_fp16 | - | unavailable: step `trt_fp16` is unavailable on this machine"),
        "{md}"
    );
    // plan says so too.
    let plan: serde_json::Value =
        serde_json::from_slice(&no_trt(&p, &["plan", "t.yaml", "--json"]).stdout).unwrap();
    let d = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "trt_fp16")
        .unwrap();
    assert_eq!(d["decision"], "unavailable", "{d:#}");
    // `required: true` turns unavailable into a failed run, with the reason.
    p.write("t.yaml", &manifest(", required: true"));
    let out = no_trt(&p, &["run", "t.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("unavailable, and the step is `required: true`: trtexec not found"),
        "{text}"
    );
}

/// A TENSORRT_HOME holding the stand-in trtexec, claiming TensorRT `version`.
fn standin_home(dir: &Path, version: &str) -> PathBuf {
    let home = dir.join(format!("trt-{version}"));
    std::fs::create_dir_all(home.join("bin")).unwrap();
    let script = std::fs::read_to_string(format!("{FIXTURE}/bin/trtexec"))
        .unwrap()
        .replace("VERSION=100300", &format!("VERSION={version}"));
    let exe = home.join("bin/trtexec");
    std::fs::write(&exe, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    home
}

fn with_standin(
    p: &Project,
    home: &Path,
    gpu: Option<&str>,
    args: &[&str],
) -> std::process::Output {
    let mut c = p.cmd();
    c.args(args)
        .env("TENSORRT_HOME", home)
        .env(
            "PATH",
            format!("{FIXTURE}/driver:{}", path_without_trtexec()),
        )
        .env("FACEBUILD_ALLOW_TRTEXEC_STANDIN", "1")
        .env("FACEBUILD_STANDIN_ARGS_LOG", p.path("standin-args.log"));
    match gpu {
        Some(g) => c.env("CUDA_VISIBLE_DEVICES", g),
        None => c.env_remove("CUDA_VISIBLE_DEVICES"),
    };
    c.output().unwrap()
}

fn run_standin(p: &Project, home: &Path, gpu: Option<&str>) -> serde_json::Value {
    let out = with_standin(p, home, gpu, &["run", "t.yaml", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn report(p: &Project, step: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p.path(&format!("out/trt/{step}/report.json"))).unwrap())
        .unwrap()
}

#[test]
fn standin_trtexec_exercises_flags_profiles_keys_timing_cache_and_metadata() {
    let p = Project::new();
    p.write("t.yaml", &manifest(""));
    let v10_3 = standin_home(p.dir.path(), "100300");
    let r = run_standin(&p, &v10_3, None);
    for s in ["trt_fp16", "trt_int8"] {
        assert_eq!(status_of(&r, s), "built", "{r:#?}");
    }
    let fp16 = report(&p, "trt_fp16");
    assert_eq!(fp16["standin"], true);
    assert!(
        fp16["built_by"]
            .as_str()
            .unwrap()
            .contains("NOT a TensorRT engine")
    );
    assert_eq!(fp16["tensorrt"]["tensorrt"], "10.3.0 (test stand-in)");
    assert_eq!(fp16["tensorrt"]["gpu"], "STAND-IN GPU A");
    assert_eq!(fp16["tensorrt"]["compute_capability"], "8.0");
    assert_eq!(fp16["tensorrt"]["cuda"], "12.4");
    let flags: Vec<String> = serde_json::from_value(fp16["flags"].clone()).unwrap();
    for f in [
        "--fp16",
        "--minShapes=input.1:1x3x320x320",
        "--optShapes=input.1:1x3x640x640",
        "--maxShapes=input.1:1x3x640x640",
        "--memPoolSize=workspace:1024M",
        "--versionCompatible",
        "--skipInference",
    ] {
        assert!(flags.contains(&f.to_string()), "{f} not in {flags:?}");
    }
    assert!(
        p.path("out/trt/trt_fp16/build.log").exists()
            && p.path("out/trt/trt_fp16/model.engine").exists()
    );
    let int8 = report(&p, "trt_int8");
    let flags8: Vec<String> = serde_json::from_value(int8["flags"].clone()).unwrap();
    assert!(
        flags8.contains(&"--int8".to_string()) && flags8.contains(&"--fp16".to_string()),
        "{flags8:?}"
    );
    assert_eq!(int8["source_onnx"]["from"], "quantize");
    assert_eq!(int8["source_onnx"]["explicitly_quantized"], true);
    // One timing cache per TensorRT/GPU: the second build of the run found the first's.
    let reused: Vec<bool> = [&fp16, &int8]
        .iter()
        .map(|x| x["timing_cache"]["reused"].as_bool().unwrap())
        .collect();
    assert!(
        reused.contains(&true) && reused.contains(&false),
        "{reused:?}"
    );
    assert_eq!(fp16["timing_cache"]["path"], int8["timing_cache"]["path"]);
    // compare never runs a stand-in "engine".
    let cmp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.path("out/trt/compare/report.json")).unwrap())
            .unwrap();
    let c = cmp["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["label"] == "trt_fp16")
        .unwrap();
    assert!(
        c["unavailable"].as_str().unwrap().contains("test stand-in"),
        "{c:#}"
    );

    // Same everything: cached.
    let r = run_standin(&p, &v10_3, None);
    assert!(statuses(&r).iter().all(|(_, s)| s == "cached"), "{r:#?}");

    // Another GPU: the engines are rebuilt (the key has the GPU), with their own timing cache.
    let plan: serde_json::Value = serde_json::from_slice(
        &with_standin(&p, &v10_3, Some("1"), &["plan", "t.yaml", "--json"]).stdout,
    )
    .unwrap();
    let why = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "trt_fp16")
        .unwrap()["reasons"]
        .to_string();
    assert!(
        why.contains("toolchain `gpu` changed: STAND-IN GPU A -> STAND-IN GPU B")
            && why.contains("compute_capability"),
        "{why}"
    );
    let r = run_standin(&p, &v10_3, Some("1"));
    assert_eq!(status_of(&r, "trt_fp16"), "built");
    assert_eq!(
        status_of(&r, "quantize"),
        "cached",
        "only TensorRT steps depend on the GPU"
    );
    let b = report(&p, "trt_fp16");
    assert_eq!(b["tensorrt"]["gpu"], "STAND-IN GPU B");
    assert_ne!(b["timing_cache"]["path"], fp16["timing_cache"]["path"]);

    // Another TensorRT version: rebuilt again.
    let v10_11 = standin_home(p.dir.path(), "101100");
    let r = run_standin(&p, &v10_11, None);
    assert_eq!(status_of(&r, "trt_int8"), "built");
    let lock = std::fs::read_to_string(p.path("t.lock")).unwrap();
    assert!(
        lock.contains("10.11.0 (test stand-in)"),
        "the lockfile records the TensorRT version"
    );

    // Back on the first GPU and version: both engines come from the cache.
    let r = run_standin(&p, &v10_3, None);
    assert_eq!(status_of(&r, "trt_fp16"), "cached");
    assert_eq!(status_of(&r, "trt_int8"), "cached");

    // The stand-in is refused outside facebuild's tests.
    let out = p
        .cmd()
        .args([
            "run",
            "t.yaml",
            "--json",
            "--no-cache",
            "--target",
            "trt_fp16",
        ])
        .env("TENSORRT_HOME", &v10_3)
        .env(
            "PATH",
            format!("{FIXTURE}/driver:{}", path_without_trtexec()),
        )
        .env_remove("FACEBUILD_ALLOW_TRTEXEC_STANDIN")
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status_of(&r, "trt_fp16"), "unavailable");
    assert!(
        r.to_string()
            .contains("test stand-in for trtexec, not TensorRT"),
        "{r:#?}"
    );
    let args = std::fs::read_to_string(p.path("standin-args.log")).unwrap();
    assert!(!args.contains("--workspace="), "{args}");
}

/// The Q/DQ INT8 model that a TensorRT INT8 engine is built from, checked here for real:
/// MobileFaceNet in ONNX Runtime against its fp32 original on the labelled, aligned pairs.
#[test]
fn qdq_int8_of_the_real_recognition_model_passes_compare_in_onnxruntime() {
    let Some(shared) = shared() else { return };
    let p = Project::new();
    let align = format!(
        "align: {{model: {}, detector: {{family: scrfd}}}}",
        shared.join("models/scrfd_500m_kps.onnx").display()
    );
    p.write(
        "q.yaml",
        &format!(
            "schema: 1\nname: q\nmodel:\n  path: {model}\n  task: recognition\n  input: {{name: input, shape: [1, 3, 112, 112]}}\n  preprocessing: {{color: RGB, mean: [127.5, 127.5, 127.5], std: [127.5, 127.5, 127.5], size: [112, 112]}}\ndatasets:\n  faces: {{path: {faces}, pairs: pairs.csv, {align}}}\n  calib: {{path: {faces}, count: 32, seed: 1, {align}}}\nsteps:\n  simplify: {{kind: simplify, params: {{samples: 2}}}}\n  calibrate: {{kind: calibrate, params: {{dataset: calib}}}}\n  quantize: {{kind: quantize, from: simplify, params: {{calibration: calibrate}}}}\n  trt_int8: {{kind: convert, from: quantize, params: {{backend: tensorrt, precision: int8}}}}\n  compare: {{kind: compare, params: {{dataset: faces, candidates: [quantize, trt_int8], cosine_min: 0.95, tar_drop_max: 0.05}}}}\n",
            model = shared.join("models/mobilefacenet.onnx").display(),
            faces = shared.join("faces/pairs").display()
        ),
    );
    let out = no_trt(&p, &["run", "q.yaml", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.path("out/q/compare/report.json")).unwrap())
            .unwrap();
    let q = rep["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["label"] == "quantize")
        .unwrap()
        .clone();
    assert_eq!(q["artifact_precision"], "int8");
    assert_eq!(q["passed"], true, "{q:#}");
    let qr: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.path("out/q/quantize/report.json")).unwrap())
            .unwrap();
    assert!(
        qr["result"]["quantize_linear"].as_u64().unwrap() > 10,
        "{qr:#}"
    );
    say(&format!(
        "mobilefacenet Q/DQ INT8 (onnxruntime.quantization, {} Q/DQ pairs) in ONNX Runtime: cosine min {:.6} p01 {:.6} mean {:.6}, TAR@FAR=1e-3 {:.4} (ref {:.4}), EER {:.4}, flips {}",
        qr["result"]["quantize_linear"],
        q["cosine"]["min"].as_f64().unwrap(),
        q["cosine"]["p01"].as_f64().unwrap(),
        q["cosine"]["mean"].as_f64().unwrap(),
        q["verification"]["tar_at_operating_far"]["candidate"]
            .as_f64()
            .unwrap(),
        q["verification"]["tar_at_operating_far"]["reference"]
            .as_f64()
            .unwrap(),
        q["verification"]["candidate"]["eer"].as_f64().unwrap(),
        q["verification"]["flips_at_reference_threshold"]
    ));
}

/// The engine worker's framed protocol end to end, through the real Python worker in its
/// stand-in mode (no TensorRT here: it doubles its input).
#[test]
fn engine_worker_protocol_round_trips_tensors() {
    use facebuild::{Runtime, TensorRtRuntime};
    let cache = camino::Utf8PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/cache"));
    let tc = facebuild::Toolchain::ensure(&cache, &facebuild::Pins::resolve(&Default::default()))
        .unwrap();
    let rt = TensorRtRuntime {
        python: tc.python(),
        standin: true,
    };
    let mut m = rt.load(camino::Utf8Path::new("no-engine")).unwrap();
    assert_eq!(
        m.execution().settings["worker"],
        "test stand-in (not TensorRT)"
    );
    for n in [1usize, 7, 3 * 112 * 112] {
        let x = ndarray::ArrayD::from_shape_vec(
            ndarray::IxDyn(&[1, n]),
            (0..n).map(|i| i as f32 * 0.25 - 3.0).collect(),
        )
        .unwrap();
        let y = m.run(&[("x".into(), x.clone())]).unwrap();
        assert_eq!(y.len(), 1);
        assert_eq!(y[0].1, x.mapv(|v| v * 2.0));
    }
    // Without the stand-in flag the worker needs TensorRT, which is not installed here.
    let err = TensorRtRuntime {
        python: tc.python(),
        standin: false,
    }
    .load(camino::Utf8Path::new("no-engine"))
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("TensorRT cannot load this engine") && err.contains("tensorrt"),
        "{err}"
    );
}
