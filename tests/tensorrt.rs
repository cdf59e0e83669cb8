//! The TensorRT backend where no TensorRT is: the `unavailable` path, and the orchestration
//! (flags, profiles, cache keys per GPU and TensorRT version, timing cache, metadata)
//! exercised with a clearly named stand-in for trtexec (tests/fixtures/trtexec-standin),
//! which facebuild refuses outside its tests. The explicit-quantization half (Q/DQ INT8
//! ONNX) runs for real, in ONNX Runtime, on the real recognition model when ../shared is here.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use facebuild::CompareReport;

/// What these tests read of the quantize step's report.
#[derive(serde::Deserialize)]
struct QuantizeReport {
    result: QdqCounts,
}

#[derive(serde::Deserialize)]
struct QdqCounts {
    quantize_linear: u64,
}

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/trtexec-standin"
);

/// The built-in SCRFD-layout detector with Q/DQ INT8 and two TensorRT engines; `extra`
/// goes into the FP16 engine's params.
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

/// Without TensorRT its steps are `unavailable`, never cached, and fail the run only when
/// `required: true`; compare and plan say so.
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
        let r: RunReport = serde_json::from_slice(&out.stdout).unwrap();
        for s in ["trt_fp16", "trt_int8"] {
            assert_eq!(
                status_of(&r, s),
                Status::Unavailable,
                "round {round}: {r:#?}"
            );
            assert!(error_of(&r, s).contains("trtexec not found"), "{r:#?}");
        }
        assert_eq!(
            status_of(&r, "compare"),
            if round == 0 {
                Status::Built
            } else {
                Status::Cached
            }
        );
    }
    // The compare report names the absent candidates; they are neither passed nor failed.
    let rep: CompareReport = p.report("out/trt/compare/report.json");
    let c = &rep.candidates;
    assert_eq!(
        c.iter().filter(|x| x.available == Some(false)).count(),
        2,
        "{rep:#?}"
    );
    assert_eq!(
        c.iter().find(|x| x.label == "quantize").unwrap().passed,
        Some(true)
    );
    let md = std::fs::read_to_string(p.path("out/trt/compare/report.md")).unwrap();
    assert!(
        md.contains("| trt_fp16 | - | unavailable: step `trt_fp16` is unavailable on this machine"),
        "{md}"
    );
    // plan says so too.
    let plan: Plan =
        serde_json::from_slice(&no_trt(&p, &["plan", "t.yaml", "--json"]).stdout).unwrap();
    let d = planned(&plan, "trt_fp16");
    assert!(matches!(d, Decision::Unavailable { .. }), "{d:#?}");
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

fn run_standin(p: &Project, home: &Path, gpu: Option<&str>) -> RunReport {
    let out = with_standin(p, home, gpu, &["run", "t.yaml", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What these tests read of a TensorRT convert step's report.
#[derive(serde::Deserialize)]
struct EngineReport {
    standin: bool,
    built_by: String,
    tensorrt: BTreeMap<String, String>,
    flags: Vec<String>,
    source_onnx: SourceOnnx,
    timing_cache: TimingCache,
}

#[derive(serde::Deserialize)]
struct SourceOnnx {
    from: Option<String>,
    explicitly_quantized: bool,
}

#[derive(serde::Deserialize)]
struct TimingCache {
    path: String,
    reused: bool,
}

fn report(p: &Project, step: &str) -> EngineReport {
    p.report(&format!("out/trt/{step}/report.json"))
}

/// The labelled stand-in trtexec: TensorRT 10 flags and profiles, keys per GPU and TensorRT
/// version, one timing cache per fingerprint, metadata; refused outside tests.
#[test]
fn standin_trtexec_exercises_flags_profiles_keys_timing_cache_and_metadata() {
    let p = Project::new();
    p.write("t.yaml", &manifest(""));
    let v10_3 = standin_home(p.dir.path(), "100300");
    let r = run_standin(&p, &v10_3, None);
    for s in ["trt_fp16", "trt_int8"] {
        assert_eq!(status_of(&r, s), Status::Built, "{r:#?}");
    }
    let fp16 = report(&p, "trt_fp16");
    assert!(fp16.standin);
    assert!(fp16.built_by.contains("NOT a TensorRT engine"));
    assert_eq!(fp16.tensorrt["tensorrt"], "10.3.0 (test stand-in)");
    assert_eq!(fp16.tensorrt["gpu"], "STAND-IN GPU A");
    assert_eq!(fp16.tensorrt["compute_capability"], "8.0");
    assert_eq!(fp16.tensorrt["cuda"], "12.4");
    let flags = &fp16.flags;
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
    let flags8 = &int8.flags;
    assert!(
        flags8.contains(&"--int8".to_string()) && flags8.contains(&"--fp16".to_string()),
        "{flags8:?}"
    );
    assert_eq!(int8.source_onnx.from.as_deref(), Some("quantize"));
    assert!(int8.source_onnx.explicitly_quantized);
    // One timing cache per TensorRT/GPU: the second build of the run found the first's.
    let reused: Vec<bool> = [&fp16, &int8]
        .iter()
        .map(|x| x.timing_cache.reused)
        .collect();
    assert!(
        reused.contains(&true) && reused.contains(&false),
        "{reused:?}"
    );
    assert_eq!(fp16.timing_cache.path, int8.timing_cache.path);
    // compare never runs a stand-in "engine".
    let cmp: CompareReport = p.report("out/trt/compare/report.json");
    let c = cmp
        .candidates
        .iter()
        .find(|c| c.label == "trt_fp16")
        .unwrap();
    assert!(
        c.unavailable.as_deref().unwrap().contains("test stand-in"),
        "{c:#?}"
    );

    // Same everything: cached.
    let r = run_standin(&p, &v10_3, None);
    assert!(
        statuses(&r).iter().all(|(_, s)| *s == Status::Cached),
        "{r:#?}"
    );

    // Another GPU: the engines are rebuilt (the key has the GPU), with their own timing cache.
    let plan: Plan = serde_json::from_slice(
        &with_standin(&p, &v10_3, Some("1"), &["plan", "t.yaml", "--json"]).stdout,
    )
    .unwrap();
    let Decision::Run { reasons, .. } = planned(&plan, "trt_fp16") else {
        panic!("{plan:#?}")
    };
    let why = reasons.join("; ");
    assert!(
        why.contains("toolchain `gpu` changed: STAND-IN GPU A -> STAND-IN GPU B")
            && why.contains("compute_capability"),
        "{why}"
    );
    let r = run_standin(&p, &v10_3, Some("1"));
    assert_eq!(status_of(&r, "trt_fp16"), Status::Built);
    assert_eq!(
        status_of(&r, "quantize"),
        Status::Cached,
        "only TensorRT steps depend on the GPU"
    );
    let b = report(&p, "trt_fp16");
    assert_eq!(b.tensorrt["gpu"], "STAND-IN GPU B");
    assert_ne!(b.timing_cache.path, fp16.timing_cache.path);

    // Another TensorRT version: rebuilt again.
    let v10_11 = standin_home(p.dir.path(), "101100");
    let r = run_standin(&p, &v10_11, None);
    assert_eq!(status_of(&r, "trt_int8"), Status::Built);
    let lock = std::fs::read_to_string(p.path("t.lock")).unwrap();
    assert!(
        lock.contains("10.11.0 (test stand-in)"),
        "the lockfile records the TensorRT version"
    );

    // Back on the first GPU and version: both engines come from the cache.
    let r = run_standin(&p, &v10_3, None);
    assert_eq!(status_of(&r, "trt_fp16"), Status::Cached);
    assert_eq!(status_of(&r, "trt_int8"), Status::Cached);

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
    let r: RunReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status_of(&r, "trt_fp16"), Status::Unavailable);
    assert!(
        error_of(&r, "trt_fp16").contains("test stand-in for trtexec, not TensorRT"),
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
        &(mobilefacenet_head(&shared, "q")
            + &format!(
            indoc! {"
                datasets:
                  faces: {{path: {faces}, pairs: pairs.csv, {align}}}
                  calib: {{path: {faces}, count: 32, seed: 1, {align}}}
                steps:
                  simplify: {{kind: simplify, params: {{samples: 2}}}}
                  calibrate: {{kind: calibrate, params: {{dataset: calib}}}}
                  quantize: {{kind: quantize, from: simplify, params: {{calibration: calibrate}}}}
                  trt_int8: {{kind: convert, from: quantize, params: {{backend: tensorrt, precision: int8}}}}
                  compare: {{kind: compare, params: {{dataset: faces, candidates: [quantize, trt_int8], operating_far: 1.0e-2, cosine_min: 0.95, tar_drop_max: 0.05}}}}
            "},
            faces = shared.join("faces/pairs").display(),
            align = align
        )),
    );
    let out = no_trt(&p, &["run", "q.yaml", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep: CompareReport = p.report("out/q/compare/report.json");
    let q = rep
        .candidates
        .iter()
        .find(|c| c.label == "quantize")
        .unwrap();
    assert_eq!(q.artifact_precision.as_deref(), Some("int8"));
    assert_eq!(q.passed, Some(true), "{q:#?}");
    let qr: QuantizeReport = p.report("out/q/quantize/report.json");
    assert!(qr.result.quantize_linear > 10);
    let (cos, v) = (q.cosine.unwrap(), q.verification.as_ref().unwrap());
    say(&format!(
        "mobilefacenet Q/DQ INT8 (onnxruntime.quantization, {} Q/DQ pairs) in ONNX Runtime: cosine min {:.6} p01 {:.6} mean {:.6}, TAR@FAR=1e-2 {:.4} (ref {:.4}), EER {:.4}, flips {}",
        qr.result.quantize_linear,
        cos.min,
        cos.p01,
        cos.mean,
        v.tar_at_operating_far.unwrap().candidate,
        v.tar_at_operating_far.unwrap().reference,
        v.candidate.eer,
        v.flips_at_reference_threshold
    ));
}

/// The engine worker's framed protocol end to end, through the real Python worker in its
/// stand-in mode (no TensorRT here: it doubles its input).
#[test]
fn engine_worker_protocol_round_trips_tensors() {
    use facebuild::{Runtime, TensorRtRuntime};
    let tc = toolchain();
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

/// A swapper's two inputs, both with a dynamic batch: one TensorRT profile over both
/// (`--minShapes=target:1x3x128x128,source:1x512`...) for the engine built from the
/// simplified model and for the one built from its Q/DQ INT8, whose calibration fed both
/// inputs; the stand-in refuses a shape for an input the model has not.
#[test]
fn standin_trtexec_builds_two_input_swappers_with_one_profile_over_both() {
    let p = Project::new();
    p.write(
        "t.yaml",
        indoc! {"
            schema: 1
            name: trt
            model:
              builtin: inswapper-mini
              task: swapper
              inputs:
                target: {shape: [batch, 3, 128, 128], dims: {batch: {min: 1, opt: 2, max: 4}}}
                source:
                  shape: [batch, 512]
                  dims: {batch: {min: 1, opt: 2, max: 4}}
                  feed: {embedding: {builtin: iresnet-mini, emap: true}}
              preprocessing: {color: RGB, mean: [0, 0, 0], std: [255, 255, 255], size: [128, 128]}
            datasets:
              faces: {builtin: synthetic-faces, count: 12}
            steps:
              simplify: {kind: simplify, params: {samples: 1}}
              calibrate: {kind: calibrate, params: {dataset: faces}}
              quantize: {kind: quantize, from: simplify, params: {calibration: calibrate}}
              trt_fp16: {kind: convert, from: simplify, params: {backend: tensorrt, precision: fp16}}
              trt_int8: {kind: convert, from: quantize, params: {backend: tensorrt, precision: int8}}
        "},
    );
    let home = standin_home(p.dir.path(), "100300");
    let r = run_standin(&p, &home, None);
    for s in ["trt_fp16", "trt_int8"] {
        assert_eq!(status_of(&r, s), Status::Built, "{r:#?}");
        let flags = report(&p, s).flags;
        for f in [
            "--minShapes=target:1x3x128x128,source:1x512",
            "--optShapes=target:2x3x128x128,source:2x512",
            "--maxShapes=target:4x3x128x128,source:4x512",
        ] {
            assert!(
                flags.contains(&f.to_string()),
                "{s}: {f} missing from {flags:?}"
            );
        }
    }
    let q: serde_json::Value = p.report("out/trt/quantize/report.json");
    assert_eq!(q["result"]["calibration_items"], 12, "{q:#}");
    let c: serde_json::Value = p.report("out/trt/calibrate/report.json");
    assert_eq!(
        c["other_inputs"]["source"]["shape"],
        serde_json::json!([12, 512])
    );

    // An input the model has not fails the build before any engine, naming it.
    p.write(
        "t.yaml",
        &std::fs::read_to_string(p.dir.path().join("t.yaml"))
            .unwrap()
            .replace("source:\n      shape", "latent:\n      shape"),
    );
    let out = with_standin(&p, &home, None, &["run", "t.yaml", "-t", "trt_fp16"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("latent"), "{err}");
}
