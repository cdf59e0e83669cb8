//! `convert` with `backend: tensorrt`: an engine built by trtexec with TensorRT 10/11 flags.
//! Optimization profiles come from the manifest's dynamic-dim ranges (`model.input.dims`);
//! the workspace is `--memPoolSize=workspace:<N>M` (trtexec 10 removed `--workspace`); a
//! timing cache per TensorRT/GPU fingerprint is kept in the facebuild cache so rebuilds are
//! fast; `--skipInference` keeps the build a build. INT8 is explicit: the engine is built
//! from a Q/DQ model (a `quantize` step) with `--int8 --fp16`, or from a legacy calibration
//! cache with `--calib`. Alongside the engine: `report.json` (the engine's metadata: source
//! ONNX digest, TensorRT/CUDA/driver/GPU, precision, profiles, the exact flags) and
//! `build.log`. The step only runs when TensorRT was found; otherwise the scheduler reports
//! it `unavailable` (see toolchain/tensorrt.rs).

use std::process::{Command, Stdio};
use std::time::Instant;

use camino::{Utf8Path, Utf8PathBuf};
use serde_json::json;

use super::{ConvertParams, HwCompat, Precision};
use crate::error::{Error, Result};
use crate::manifest::{Dim, InputSpec};
use crate::steps::{StepContext, StepOutcome};
use crate::toolchain::tensorrt::TensorRt;

pub(crate) const DEFAULT_WORKSPACE_MIB: u64 = 1024;

/// One optimization profile: min/opt/max shapes of the input, as trtexec spells them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct Profile {
    pub input: String,
    pub min: String,
    pub opt: String,
    pub max: String,
}

/// The profile for the declared input, or None when every dim is fixed (a static engine).
fn profile(input: &InputSpec, shape: &[Dim]) -> std::result::Result<Option<Profile>, String> {
    if shape.iter().all(|d| matches!(d, Dim::Fixed(_))) {
        return Ok(None);
    }
    let mut dims = [Vec::new(), Vec::new(), Vec::new()];
    for d in shape {
        let (a, b, c) = match d {
            Dim::Fixed(n) => (*n, *n, *n),
            Dim::Named(s) => {
                let r = input.dims.get(s).ok_or_else(|| format!("dim `{s}` of `{}` is dynamic but has no range: TensorRT needs min/opt/max for its optimization profile", input.name))?;
                (r.min, r.opt, r.max)
            }
        };
        dims[0].push(a.to_string());
        dims[1].push(b.to_string());
        dims[2].push(c.to_string());
    }
    let f = |v: &Vec<String>| format!("{}:{}", input.name, v.join("x"));
    Ok(Some(Profile {
        input: input.name.clone(),
        min: f(&dims[0]),
        opt: f(&dims[1]),
        max: f(&dims[2]),
    }))
}

/// One profile over every input (trtexec's `--minShapes=a:1x3x128x128,b:1x512`): each
/// input's dims, fixed ones included, when any input has a dynamic dim; None when none has.
fn profile_all(inputs: &[(&InputSpec, &[Dim])]) -> std::result::Result<Option<Profile>, String> {
    let mut each = Vec::new();
    for (i, shape) in inputs {
        let fixed = shape.iter().map(|d| match d {
            Dim::Fixed(n) => n.to_string(),
            Dim::Named(_) => String::new(),
        });
        match profile(i, shape)? {
            Some(p) => each.push(p),
            None => {
                let f = format!("{}:{}", i.name, fixed.collect::<Vec<_>>().join("x"));
                each.push(Profile {
                    input: i.name.clone(),
                    min: f.clone(),
                    opt: f.clone(),
                    max: f,
                });
            }
        }
    }
    let dynamic = inputs
        .iter()
        .any(|(_, s)| s.iter().any(|d| matches!(d, Dim::Named(_))));
    if !dynamic {
        return Ok(None);
    }
    let join =
        |f: fn(&Profile) -> &String| each.iter().map(f).cloned().collect::<Vec<_>>().join(",");
    Ok(Some(Profile {
        input: join(|p| &p.input),
        min: join(|p| &p.min),
        opt: join(|p| &p.opt),
        max: join(|p| &p.max),
    }))
}

/// The profile the manifest declares over `inputs`, for who serves the model (a release's
/// Triton layout): what [`profile_all`] gives, its refusal as a usage error.
pub(crate) fn declared_profile(inputs: &[(&InputSpec, &[Dim])]) -> Result<Option<Profile>> {
    profile_all(inputs).map_err(|why| {
        Error::usage(why)
            .with_hint("declare min/opt/max for every dynamic dim under the input's `dims:`")
    })
}

/// trtexec's arguments for a build.
pub(crate) fn build_args(
    onnx: &Utf8Path,
    engine: &Utf8Path,
    timing_cache: &Utf8Path,
    p: &ConvertParams,
    profile: Option<&Profile>,
    calib_cache: Option<&Utf8Path>,
) -> Vec<String> {
    let mut a = vec![format!("--onnx={onnx}"), format!("--saveEngine={engine}")];
    match p.precision {
        Precision::Fp32 => {}
        Precision::Fp16 => a.push("--fp16".into()),
        // Explicit quantization: Q/DQ layers run in INT8, everything else may use FP16.
        Precision::Int8 => a.extend(["--int8".to_string(), "--fp16".to_string()]),
    }
    if let Some(c) = calib_cache {
        a.push(format!("--calib={c}"));
    }
    if let Some(pr) = profile {
        a.push(format!("--minShapes={}", pr.min));
        a.push(format!("--optShapes={}", pr.opt));
        a.push(format!("--maxShapes={}", pr.max));
    }
    a.push(format!(
        "--memPoolSize=workspace:{}M",
        p.workspace_mib.unwrap_or(DEFAULT_WORKSPACE_MIB)
    ));
    a.push(format!("--timingCacheFile={timing_cache}"));
    if p.version_compatible {
        a.push("--versionCompatible".into());
    }
    match p.hardware_compatibility_level {
        Some(HwCompat::AmperePlus) => a.push("--hardwareCompatibilityLevel=ampere+".into()),
        Some(HwCompat::SameComputeCapability) => {
            a.push("--hardwareCompatibilityLevel=sameComputeCapability".into())
        }
        None => {}
    }
    if let Some(l) = p.builder_optimization_level {
        a.push(format!("--builderOptimizationLevel={l}"));
    }
    a.push("--skipInference".into());
    a
}

/// Where the timing cache of one TensorRT/GPU fingerprint lives: shared by every build with
/// that fingerprint, never by another (a cache from another GPU would mislead the builder).
pub(crate) fn timing_cache_path(cache_root: &Utf8Path, trt: &TensorRt) -> Utf8PathBuf {
    let fp = crate::cache::cache_key(&trt.fingerprint());
    cache_root
        .join("tensorrt")
        .join("timing")
        .join(format!("{}.cache", &fp[..16]))
}

/// A failed engine build, in words: the log's error lines (else its last ten), where the
/// whole log is, and the command to rerun.
fn trtexec_failure(
    step: &str,
    status: &std::process::ExitStatus,
    log: &str,
    log_path: &Utf8Path,
    command: &str,
) -> Error {
    let tail: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("[E]") || l.contains("Error") || l.contains("FAILED"))
        .take(12)
        .collect();
    let shown = if tail.is_empty() {
        let last: Vec<&str> = log.lines().rev().take(10).collect();
        last.into_iter().rev().collect::<Vec<_>>().join("\n")
    } else {
        tail.join("\n")
    };
    Error::Step {
        step: step.to_string(),
        message: format!("trtexec failed ({status}):\n{shown}"),
        hint: Some(format!(
            "the whole build log: {log_path} (kept in the output folder as build.log); command: {command}"
        )),
    }
}

pub(crate) fn run(ctx: &StepContext, p: &ConvertParams) -> Result<StepOutcome> {
    let step = &ctx.step.name;
    let trt = ctx.tensorrt.ok_or_else(|| Error::Step {
        step: step.clone(),
        message: "TensorRT is not available".into(),
        hint: None,
    })?;
    let decl = &ctx.manifest.model.input;
    let shape = p.input_shape.clone().unwrap_or_else(|| decl.shape.clone());
    let shapes: Vec<(&InputSpec, &[Dim])> = std::iter::once((decl, shape.as_slice()))
        .chain(
            ctx.manifest
                .model
                .extra_inputs
                .iter()
                .map(|i| (i, i.shape.as_slice())),
        )
        .collect();
    let profile = profile_all(&shapes).map_err(|m| Error::Step {
        step: step.clone(),
        message: m,
        hint: Some("declare the dim's range in the input's `dims`, e.g. `model.input.dims: {H: {min: 320, opt: 640, max: 640}}`".into()),
    })?;
    let engine = ctx.workdir.join("model.engine");
    let log_path = ctx.workdir.join("build.log");
    let timing = timing_cache_path(&ctx.store.root, trt);
    std::fs::create_dir_all(timing.parent().expect("has a parent"))
        .map_err(|e| Error::io(&timing, e))?;
    let calib = p.calib_cache.as_ref().map(|c| ctx.manifest.resolve(c));
    let args = build_args(
        ctx.model,
        &engine,
        &timing,
        p,
        profile.as_ref(),
        calib.as_deref(),
    );

    // One build at a time per GPU fingerprint: parallel builds would share the timing cache
    // file and skew each other's kernel timings.
    let lock_path = timing.with_extension("lock");
    let lock = std::fs::File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
    ctx.progress.set_message(format!(
        "waiting for the TensorRT builder lock ({lock_path})"
    ));
    lock.lock().map_err(|e| Error::io(&lock_path, e))?;
    let timing_reused = timing.exists();
    ctx.progress.set_message(
        format!(
            "trtexec building {:?} engine{}",
            p.precision,
            if timing_reused {
                " (timing cache warm)"
            } else {
                ""
            }
        )
        .to_lowercase(),
    );
    let t0 = Instant::now();
    let out = Command::new(&trt.trtexec)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::toolchain(format!("cannot run {}: {e}", trt.trtexec)))?;
    let build_s = t0.elapsed().as_secs_f64();
    let _ = lock.unlock();
    let mut log = out.stdout.clone();
    log.extend_from_slice(&out.stderr);
    std::fs::write(&log_path, &log).map_err(|e| Error::io(&log_path, e))?;
    let text = String::from_utf8_lossy(&log);
    if !out.status.success() || !engine.exists() {
        return Err(trtexec_failure(
            step,
            &out.status,
            &text,
            &log_path,
            &format!("{} {}", trt.trtexec, args.join(" ")),
        ));
    }
    let digest = crate::cache::memo::hash_file(&engine)?;
    let bytes = std::fs::metadata(&engine).map(|m| m.len()).unwrap_or(0);
    let source = crate::cache::memo::hash_file(ctx.model)?;
    let report = json!({
        "step": step,
        "kind": "convert",
        "backend": "tensorrt",
        "precision": p.precision,
        "built_by": if trt.standin { "facebuild's test stand-in for trtexec: NOT a TensorRT engine" } else { "trtexec" },
        "standin": trt.standin,
        "source_onnx": {"blake3": source, "from": ctx.step.spec.from.as_ref().map(|f| f.value.clone()), "explicitly_quantized": p.precision == Precision::Int8 && calib.is_none()},
        "tensorrt": trt.fingerprint(),
        "gpu": {"name": trt.gpu, "compute_capability": trt.compute_capability, "driver": trt.driver, "cuda": trt.cuda},
        "profiles": profile.iter().collect::<Vec<_>>(),
        "input": {"name": decl.name, "shape": shape},
        "flags": args,
        "trtexec": trt.trtexec,
        "version_compatible": p.version_compatible,
        "hardware_compatibility_level": p.hardware_compatibility_level,
        "timing_cache": {"path": timing, "reused": timing_reused},
        "engine": {"blake3": digest, "bytes": bytes},
        "build_seconds": (build_s * 1000.0).round() / 1000.0,
    });
    let report_path = crate::steps::write_report(ctx.workdir, "report.json", &report)?;
    let summary = json!({
        "engine": format!("{:?} {}", p.precision, crate::util::human_bytes(bytes)).to_lowercase(),
        "built_with": trt.describe(),
        "profile": profile.as_ref().map(|p| format!("{} .. {} .. {}", p.min, p.opt, p.max)).unwrap_or_else(|| "static".into()),
        "timing_cache": if timing_reused { "reused" } else { "new" },
    });
    Ok(StepOutcome {
        outputs: [
            ("model.engine".to_string(), engine),
            ("report.json".to_string(), report_path),
            ("build.log".to_string(), log_path),
        ]
        .into(),
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::DimRange;

    /// A failed build says its error lines, else the log's last ten, where the log is, and
    /// the command to rerun.
    #[test]
    fn trtexec_failure_shows_the_error_lines_or_the_tail() {
        use std::os::unix::process::ExitStatusExt;
        let status = std::process::ExitStatus::from_raw(256);
        let log = "[I] parsing\n[E] Error[4]: network has dynamic input\n[I] done\n";
        let e = trtexec_failure(
            "s",
            &status,
            log,
            Utf8Path::new("out/build.log"),
            "trtexec --onnx=m.onnx",
        )
        .to_string();
        assert!(
            e.contains("trtexec failed (exit status: 1):\n[E] Error[4]"),
            "{e}"
        );
        assert!(!e.contains("[I] parsing"), "{e}");
        assert!(
            e.contains("out/build.log") && e.contains("command: trtexec --onnx=m.onnx"),
            "{e}"
        );
        let plain: String = (1..=12).map(|i| format!("line {i}\n")).collect();
        let e = trtexec_failure("s", &status, &plain, Utf8Path::new("b.log"), "t").to_string();
        assert!(
            e.contains("line 3\nline 4") && e.contains("line 12") && !e.contains("line 2\n"),
            "{e}"
        );
    }

    fn params(precision: &str, extra: &str) -> ConvertParams {
        serde_saphyr::from_str(&format!(
            "{{backend: tensorrt, precision: {precision}{extra}}}"
        ))
        .unwrap()
    }

    fn detector_input() -> InputSpec {
        InputSpec {
            name: "input.1".into(),
            layout: crate::manifest::Layout::NCHW,
            shape: vec![
                Dim::Named("N".into()),
                Dim::Fixed(3),
                Dim::Named("H".into()),
                Dim::Named("W".into()),
            ],
            dims: [
                (
                    "N".to_string(),
                    DimRange {
                        min: 1,
                        opt: 4,
                        max: 8,
                    },
                ),
                (
                    "H".to_string(),
                    DimRange {
                        min: 320,
                        opt: 640,
                        max: 640,
                    },
                ),
                (
                    "W".to_string(),
                    DimRange {
                        min: 320,
                        opt: 640,
                        max: 960,
                    },
                ),
            ]
            .into_iter()
            .collect(),
            crop: None,
            feed: Default::default(),
        }
    }

    #[test]
    fn profiles_come_from_declared_dim_ranges() {
        let i = detector_input();
        let p = profile(&i, &i.shape).unwrap().unwrap();
        assert_eq!(p.min, "input.1:1x3x320x320");
        assert_eq!(p.opt, "input.1:4x3x640x640");
        assert_eq!(p.max, "input.1:8x3x640x960");
        // Fixed shapes build a static engine, with no shape flags.
        assert_eq!(
            profile(
                &i,
                &[
                    Dim::Fixed(1),
                    Dim::Fixed(3),
                    Dim::Fixed(112),
                    Dim::Fixed(112)
                ]
            )
            .unwrap(),
            None
        );
        // A dynamic dim without a range cannot make a profile.
        let mut j = i.clone();
        j.dims.shift_remove("W");
        assert!(profile(&j, &j.shape).unwrap_err().contains("dim `W`"));
    }

    /// A swapper's two inputs share one profile, each input's shapes comma-separated.
    #[test]
    fn two_inputs_make_one_profile_over_both() {
        let yaml = |t: &str| -> InputSpec { serde_saphyr::from_str(t).unwrap() };
        let target = yaml(
            "{name: target, shape: [batch, 3, 128, 128], dims: {batch: {min: 1, opt: 4, max: 8}}}",
        );
        let source =
            yaml("{name: source, shape: [batch, 512], dims: {batch: {min: 1, opt: 4, max: 8}}}");
        let p = profile_all(&[(&target, &target.shape), (&source, &source.shape)])
            .unwrap()
            .unwrap();
        assert_eq!(p.min, "target:1x3x128x128,source:1x512");
        assert_eq!(p.opt, "target:4x3x128x128,source:4x512");
        assert_eq!(p.max, "target:8x3x128x128,source:8x512");
        let a = build_args(
            Utf8Path::new("m.onnx"),
            Utf8Path::new("e"),
            Utf8Path::new("t"),
            &params("fp16", ""),
            Some(&p),
            None,
        );
        assert!(a.contains(&"--minShapes=target:1x3x128x128,source:1x512".to_string()));
        // A fixed input beside a dynamic one is given its one shape; all fixed, no flags.
        let fixed = yaml("{name: source, shape: [1, 512]}");
        let q = profile_all(&[(&target, &target.shape), (&fixed, &fixed.shape)])
            .unwrap()
            .unwrap();
        assert_eq!(q.max, "target:8x3x128x128,source:1x512");
        let t1 = yaml("{name: target, shape: [1, 3, 128, 128]}");
        assert_eq!(
            profile_all(&[(&t1, &t1.shape), (&fixed, &fixed.shape)]).unwrap(),
            None
        );
    }

    #[test]
    fn flags_per_precision_use_tensorrt_10_spellings() {
        let (onnx, eng, tc) = (
            Utf8Path::new("m.onnx"),
            Utf8Path::new("m.engine"),
            Utf8Path::new("t.cache"),
        );
        let fp16 = build_args(onnx, eng, tc, &params("fp16", ""), None, None);
        assert_eq!(
            fp16,
            [
                "--onnx=m.onnx",
                "--saveEngine=m.engine",
                "--fp16",
                "--memPoolSize=workspace:1024M",
                "--timingCacheFile=t.cache",
                "--skipInference"
            ]
        );
        assert!(
            !fp16.iter().any(|a| a.starts_with("--workspace")),
            "--workspace was removed in TensorRT 10"
        );
        let fp32 = build_args(
            onnx,
            eng,
            tc,
            &params("fp32", ", workspace_mib: 4096"),
            None,
            None,
        );
        assert!(!fp32.iter().any(|a| a == "--fp16" || a == "--int8"));
        assert!(fp32.contains(&"--memPoolSize=workspace:4096M".to_string()));
        let int8 = build_args(onnx, eng, tc, &params("int8", ""), None, None);
        assert!(
            int8.contains(&"--int8".to_string()) && int8.contains(&"--fp16".to_string()),
            "Q/DQ INT8 with FP16 fallback"
        );
        let legacy = build_args(
            onnx,
            eng,
            tc,
            &params("int8", ", calib_cache: calib.cache"),
            None,
            Some(Utf8Path::new("/abs/calib.cache")),
        );
        assert!(legacy.contains(&"--calib=/abs/calib.cache".to_string()));
    }

    #[test]
    fn version_specific_and_profile_flags() {
        let i = detector_input();
        let pr = profile(&i, &i.shape).unwrap();
        let a = build_args(
            Utf8Path::new("m.onnx"),
            Utf8Path::new("e"),
            Utf8Path::new("t"),
            &params(
                "fp16",
                ", version_compatible: true, hardware_compatibility_level: ampere+, builder_optimization_level: 5",
            ),
            pr.as_ref(),
            None,
        );
        for f in [
            "--minShapes=input.1:1x3x320x320",
            "--optShapes=input.1:4x3x640x640",
            "--maxShapes=input.1:8x3x640x960",
            "--versionCompatible",
            "--hardwareCompatibilityLevel=ampere+",
            "--builderOptimizationLevel=5",
        ] {
            assert!(a.contains(&f.to_string()), "{f} missing from {a:?}");
        }
        let s = build_args(
            Utf8Path::new("m.onnx"),
            Utf8Path::new("e"),
            Utf8Path::new("t"),
            &params(
                "fp16",
                ", hardware_compatibility_level: same_compute_capability",
            ),
            None,
            None,
        );
        assert!(s.contains(&"--hardwareCompatibilityLevel=sameComputeCapability".to_string()));
    }

    #[test]
    fn int8_without_explicit_quantization_is_refused_at_load() {
        let p = params("int8", "");
        assert!(
            p.check_from(Some(crate::manifest::StepKind::Simplify))
                .is_err()
        );
        assert!(p.check_from(None).is_err());
        assert!(
            p.check_from(Some(crate::manifest::StepKind::Quantize))
                .is_ok()
        );
        assert!(
            params("int8", ", calib_cache: c.cache")
                .check_from(None)
                .is_ok()
        );
        assert!(params("fp16", "").check_from(None).is_ok());
        assert!(
            params("fp16", ", calibration: calibrate")
                .validate()
                .is_err()
        );
    }
}
