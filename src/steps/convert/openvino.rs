//! `convert` with `backend: openvino`: IR (XML + BIN) with `ovc` from the toolchain for fp32
//! (`--compress_to_fp16=False`) and fp16 (`--compress_to_fp16=True`), NNCF post-training
//! quantization on the `calibrate` artifact for int8. Every IR is then loaded and run
//! in-process once, beside ONNX Runtime on the same input, as a smoke check; the fidelity
//! gate proper is `compare`.

use std::process::{Command, Stdio};

use serde_json::json;

use super::{BiasCorrection, ConvertParams, Precision, Preset, Ranges};
use crate::error::{Error, Result};
use crate::manifest::Dim;
use crate::runtime::{
    Runtime,
    onnxruntime::OnnxRuntime,
    openvino::{OpenVino, OpenVinoSettings},
};
use crate::steps::{StepContext, StepOutcome};

/// ovc's `--input` value: fixed dims as they are, a declared range as `min..max` (OpenVINO
/// then compiles for that range), an undeclared named dim as `?` (fully dynamic).
fn ovc_input(
    name: &str,
    shape: &[Dim],
    ranges: &indexmap::IndexMap<String, crate::manifest::DimRange>,
) -> String {
    let dims: Vec<String> = shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => n.to_string(),
            Dim::Named(s) => ranges
                .get(s)
                .map(|r| {
                    if r.min == r.max {
                        r.min.to_string()
                    } else {
                        format!("{}..{}", r.min, r.max)
                    }
                })
                .unwrap_or_else(|| "?".into()),
        })
        .collect();
    format!("{name}[{}]", dims.join(","))
}

/// NNCF post-training quantization (quantize.py), as accuracy control drives it.
struct Nncf {
    /// Every input: name, shape and calibration file ([`crate::steps::inputs::script_inputs`]).
    inputs_json: String,
    /// The image input's shape, for the settings.
    shape_json: String,
    preset: String,
    subset: usize,
    ranges: Ranges,
    bias: BiasCorrection,
}

impl crate::steps::accuracy::Quantizer for Nncf {
    fn layers(&self, ctx: &StepContext) -> Result<Vec<String>> {
        crate::steps::accuracy::list_layers(
            ctx,
            crate::toolchain::scripts::QUANTIZE,
            &["--list", ctx.model.as_str(), &self.inputs_json],
            "listing quantizable ops",
        )
    }
    fn quantize(
        &self,
        ctx: &StepContext,
        fp: &[String],
        dir: &camino::Utf8Path,
    ) -> Result<serde_json::Value> {
        let ignored = serde_json::to_string(fp).map_err(anyhow::Error::from)?;
        ctx.toolchain.run_script(
            crate::toolchain::scripts::QUANTIZE,
            &[
                ctx.model.as_str(),
                dir.join("model.xml").as_str(),
                &self.inputs_json,
                &self.preset,
                &self.subset.to_string(),
                self.ranges.name(),
                self.bias.name(),
                &ignored,
            ],
            "NNCF quantization",
        )
    }
    fn load(
        &self,
        ctx: &StepContext,
        dir: &camino::Utf8Path,
    ) -> Result<Box<dyn crate::runtime::LoadedModel>> {
        // As compare runs candidates by default: f32, so bf16 does not blur INT8's effect.
        let settings = OpenVinoSettings {
            precision_hint: Some("f32".into()),
            ..Default::default()
        };
        OpenVino::new(ctx.toolchain, settings)?
            .load_ir(&dir.join("model.xml"), &dir.join("model.bin"))
    }
    fn settings(&self) -> serde_json::Value {
        let mut v = json!({"tool": "nncf", "impl": super::IMPL_VERSION, "shape": self.shape_json, "preset": self.preset, "subset": self.subset});
        // Only when not NNCF's defaults, so earlier searches keep their memo keys.
        if (self.ranges, self.bias) != (Ranges::Default, BiasCorrection::Fast) {
            v["ranges"] = json!(self.ranges.name());
            v["bias_correction"] = json!(self.bias.name());
        }
        v
    }
    fn recipe(&self) -> String {
        format!(
            "nncf {} preset, {} ranges, {} bias correction, {} samples",
            self.preset,
            self.ranges.name(),
            self.bias.name(),
            self.subset
        )
    }
    /// Histogram and minmax activation ranges, with full bias correction first: on three
    /// independent MobileFaceNets they moved INT8's min cosine from 0.9879-0.9952 (NNCF's
    /// defaults) to 0.9931-0.9975, with every layer quantized.
    fn alternatives(&self) -> Vec<Box<dyn crate::steps::accuracy::Quantizer + '_>> {
        use BiasCorrection::{Fast, Full};
        [
            (Ranges::Histogram, Full),
            (Ranges::Minmax, Full),
            (Ranges::Histogram, Fast),
            (Ranges::Default, Full),
            (Ranges::Minmax, Fast),
            (Ranges::Default, Fast),
        ]
        .into_iter()
        .filter(|r| *r != (self.ranges, self.bias))
        .map(|(ranges, bias)| {
            Box::new(Nncf {
                inputs_json: self.inputs_json.clone(),
                shape_json: self.shape_json.clone(),
                preset: self.preset.clone(),
                subset: self.subset,
                ranges,
                bias,
            }) as Box<dyn crate::steps::accuracy::Quantizer + '_>
        })
        .collect()
    }
}

/// FP32/FP16: OpenVINO's `ovc` converts the ONNX model to an IR (`model.xml` in the
/// workdir); returns what ran, for the report.
fn run_ovc(
    ctx: &StepContext,
    p: &ConvertParams,
    shape: &[Dim],
    xml: &camino::Utf8Path,
) -> Result<serde_json::Value> {
    let decl = &ctx.manifest.model.input;
    let ovc = ctx.toolchain.info.bin_dir.join("ovc");
    // Every input: `--input target[1,3,128,128],source[1,512]`.
    let input = std::iter::once(ovc_input(&decl.name, shape, &decl.dims))
        .chain(
            ctx.manifest
                .model
                .extra_inputs
                .iter()
                .map(|i| ovc_input(&i.name, &i.shape, &i.dims)),
        )
        .collect::<Vec<_>>()
        .join(",");
    let compress = if p.precision == Precision::Fp16 {
        "True"
    } else {
        "False"
    };
    // Run in the scratch folder with a relative output: ovc records `output_model` in
    // the IR's rt_info, and an absolute scratch path would differ on every build.
    let args = vec![
        crate::util::absolute(ctx.model).to_string(),
        "--output_model".into(),
        "model.xml".into(),
        "--input".into(),
        input,
        format!("--compress_to_fp16={compress}"),
    ];
    ctx.progress
        .set_message(format!("ovc {:?}", p.precision).to_lowercase());
    let out = Command::new(&ovc)
        .args(&args)
        .current_dir(ctx.workdir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            Error::toolchain(format!("cannot run {ovc}: {e}"))
                .with_hint("reinstall the toolchain: `facebuild toolchain install --force`")
        })?;
    if !out.status.success() || !xml.exists() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(Error::Step {
            step: ctx.step.name.clone(),
            message: format!("ovc failed ({}):\n{}", out.status, tail.join("\n")),
            hint: None,
        });
    }
    Ok(
        json!({"tool": "ovc", "args": args[1..], "openvino_version": ctx.toolchain.version("openvino")}),
    )
}

pub(super) fn run(ctx: &StepContext, p: &ConvertParams) -> Result<StepOutcome> {
    let decl = &ctx.manifest.model.input;
    let shape = p.input_shape.clone().unwrap_or_else(|| decl.shape.clone());
    let xml = ctx.workdir.join("model.xml");
    let mut accuracy = None;
    let tool = match p.precision {
        Precision::Fp32 | Precision::Fp16 => run_ovc(ctx, p, &shape, &xml)?,
        Precision::Int8 => {
            let calib_step = p.calibration.as_deref().expect("validated");
            let calib = &ctx.upstream[calib_step]["calibration.npy"];
            let inputs_json =
                crate::steps::inputs::script_inputs(ctx, &shape, Some(&ctx.upstream[calib_step]))?;
            ctx.progress.set_message("NNCF post-training quantization");
            // Named dims stay dynamic (-1) in the quantized IR; ranges are not needed by NNCF.
            let shape_json = serde_json::to_string(&shape).map_err(anyhow::Error::from)?;
            let preset = serde_json::to_value(p.preset.unwrap_or(Preset::Mixed))
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            let subset = p.subset_size.unwrap_or(300);
            let nncf = Nncf {
                inputs_json,
                shape_json,
                preset,
                subset,
                ranges: p.activation_ranges.unwrap_or(Ranges::Default),
                bias: p.bias_correction.unwrap_or(BiasCorrection::Fast),
            };
            let (r, search) = match &p.accuracy_control {
                Some(ac) => {
                    let (search, r) =
                        crate::steps::accuracy::control(ctx, ac, &nncf, calib, ctx.workdir)?;
                    (r, Some(search))
                }
                None => (
                    crate::steps::accuracy::Quantizer::quantize(&nncf, ctx, &[], ctx.workdir)?,
                    None,
                ),
            };
            accuracy = search;
            json!({"tool": "nncf.quantize", "result": r, "calibration": calib_step})
        }
    };
    let bin = xml.with_extension("bin");

    // Smoke check: the IR loads and runs in-process, and agrees roughly with ONNX Runtime.
    ctx.check_cancelled()?;
    ctx.progress.set_message("loading the IR in OpenVINO");
    let dims = ctx.manifest.concrete_shape(&shape);
    let feed = crate::steps::inputs::random_inputs(ctx.manifest, &dims, 0);
    let mut ir = OpenVino::new(ctx.toolchain, OpenVinoSettings::default())?.load_ir(&xml, &bin)?;
    let ov_out = ir.run(&feed)?;
    let mut onnx = OnnxRuntime::new(ctx.toolchain, None)?.load(ctx.model)?;
    let ort_out = onnx.run(&feed)?;
    let (a, b) = (&ov_out[0].1, &ort_out[0].1);
    let smoke_cos = if a.len() == b.len() {
        crate::metrics::cosine(
            &a.iter().copied().collect::<Vec<_>>(),
            &b.iter().copied().collect::<Vec<_>>(),
        )
    } else {
        f64::NAN
    };

    let digest = |f: &camino::Utf8Path| crate::cache::memo::hash_file(f);
    let size = |f: &camino::Utf8Path| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
    let report = json!({
        "step": ctx.step.name,
        "kind": "convert",
        "backend": p.backend,
        "precision": p.precision,
        "input": {"name": decl.name, "shape": shape},
        "conversion": tool,
        "ir": {"xml": {"blake3": digest(&xml)?, "bytes": size(&xml)}, "bin": {"blake3": digest(&bin)?, "bytes": size(&bin)}},
        "accuracy_control": accuracy,
        "smoke": {"output": ov_out[0].0, "shape": a.shape(), "cosine_vs_onnxruntime": smoke_cos, "execution": ir.execution()},
        "toolchain": ctx.toolchain.fingerprint(&p.toolchain_pieces()),
    });
    let report_path = crate::steps::write_report(ctx.workdir, "report.json", &report)?;
    let mut summary = json!({
        "ir": format!("{:?} {}", p.precision, crate::util::human_bytes(size(&bin))).to_lowercase(),
        "smoke_cosine": smoke_cos,
        "executed": ir.execution().precision,
    });
    // The NNCF recipe that ran (the step's own, or the one accuracy control chose), when it
    // is not NNCF's defaults.
    if let Some(ran) = tool.get("result") {
        let (ranges, bias) = (&ran["ranges"], &ran["bias_correction"]);
        if ranges.is_string() && (ranges != "default" || bias != "fast") {
            summary["activation_ranges"] = ranges.clone();
            summary["bias_correction"] = bias.clone();
        }
    }
    if let Some(s) = &accuracy {
        s.add_to_summary(&mut summary);
    }
    Ok(StepOutcome {
        outputs: [
            ("model.xml".to_string(), xml),
            ("model.bin".to_string(), bin),
            ("report.json".to_string(), report_path),
        ]
        .into(),
        summary,
    })
}
