//! `quantize`: explicit INT8 quantization of the ONNX model as Q/DQ (QuantizeLinear /
//! DequantizeLinear pairs), from the `calibrate` artifact, with onnxruntime.quantization.
//! Modern TensorRT builds INT8 engines from such a model (explicit quantization) rather than
//! calibrating itself; the Q/DQ model is also an ONNX model that ONNX Runtime runs on the
//! CPU, so `compare` gates it here, for real, before any GPU builds an engine from it.
//! Output `model.onnx` (a `from:` source for `convert` with `backend: tensorrt`), `report.json`.

use camino::Utf8Path;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{StepContext, StepOutcome};
use crate::error::Result;

/// v2: every node carries a name before quantization (nodes_to_exclude needs them);
/// accuracy control.
/// v3: pre-processing falls back without symbolic shape inference (then without any) when it
/// fails on a real export, and says so.
pub(crate) const IMPL_VERSION: u32 = 3;
pub(crate) const TOOLCHAIN: &[&str] = &["onnx", "onnxruntime"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Method {
    MinMax,
    Entropy,
    Percentile,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QuantizeParams {
    /// The `calibrate` step whose tensor sets the activation ranges.
    pub calibration: String,
    /// Range estimation: minmax (default; what TensorRT's own max calibration does), entropy, percentile.
    #[serde(default = "default_method")]
    pub method: Method,
    /// Per-channel weight scales (default true; TensorRT supports them on Conv/Gemm).
    #[serde(default = "yes")]
    pub per_channel: bool,
    /// Scale each depthwise conv's input channels to one range before quantizing (default
    /// true): exact in float, and what lets per-tensor activation scales keep narrow channels.
    #[serde(default = "yes")]
    pub equalize: bool,
    /// Keep the fewest layers in floating point that meet a compare metric (see
    /// `steps::accuracy`).
    #[serde(default)]
    pub accuracy_control: Option<super::accuracy::AccuracyControl>,
}

fn default_method() -> Method {
    Method::MinMax
}
fn yes() -> bool {
    true
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What the Q/DQ helper (qdq.py) reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct QdqResult {
    onnxruntime_version: String,
    onnx_version: String,
    calibration_items: u64,
    method: String,
    per_channel: bool,
    /// Depthwise convs whose input channels were equalized first.
    #[serde(default)]
    equalized: u64,
    /// The opset the model had before it was raised to 13 (Q/DQ per-channel needs 13).
    opset_upgraded_from: Option<i64>,
    /// Float16 tensors widened to float32 first (ORT's quantizer takes float32 graphs).
    #[serde(default, skip_serializing_if = "is_zero")]
    widened_from_float16: u64,
    /// ONNX Runtime's pre-processing: `full`, or what was left out because it failed.
    #[serde(default)]
    pre_process: Option<String>,
    quantize_linear: u64,
    dequantize_linear: u64,
    settings: QdqSettings,
    /// Nodes left in floating point.
    #[serde(default)]
    excluded: Vec<String>,
}

/// How the Q/DQ model was quantized.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct QdqSettings {
    format: String,
    activations: String,
    weights: String,
    bias: String,
    dedicated_qdq_pair: bool,
    /// Conv/Gemm/MatMul outputs: `float` (no Q/DQ after them; TensorRT fuses what follows).
    #[serde(default)]
    weighted_outputs: Option<String>,
}

/// onnxruntime.quantization's Q/DQ (qdq.py), as accuracy control drives it: one recipe.
struct Qdq<'a> {
    /// Every input with its calibration file ([`super::inputs::script_inputs`]).
    inputs_json: &'a str,
    method: Method,
    per_channel: bool,
    equalize: bool,
    /// Where the helper keeps the pre-processed (and equalized) model between calls: a
    /// search's trials differ only in recipe and excluded layers, and preparing is half of
    /// each call (3.4 s against 7.7 s on a MobileFaceNet).
    prepared: Option<&'a Utf8Path>,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::MinMax => "minmax",
            Method::Entropy => "entropy",
            Method::Percentile => "percentile",
        }
    }
}

impl Qdq<'_> {
    fn run(&self, ctx: &StepContext, exclude: &[String], out: &Utf8Path) -> Result<QdqResult> {
        let exclude = serde_json::to_string(exclude).map_err(anyhow::Error::from)?;
        ctx.toolchain.run_script(
            crate::toolchain::scripts::QDQ,
            &[
                ctx.model.as_str(),
                out.as_str(),
                self.inputs_json,
                self.method.name(),
                if self.per_channel { "1" } else { "0" },
                if self.equalize { "1" } else { "0" },
                &exclude,
                self.prepared.map(|p| p.as_str()).unwrap_or_default(),
            ],
            "Q/DQ quantization",
        )
    }
}

impl super::accuracy::Quantizer for Qdq<'_> {
    fn layers(&self, ctx: &StepContext) -> Result<Vec<String>> {
        super::accuracy::list_layers(
            ctx,
            crate::toolchain::scripts::QDQ,
            &["--list", ctx.model.as_str()],
            "listing quantizable nodes",
        )
    }
    fn quantize(
        &self,
        ctx: &StepContext,
        fp: &[String],
        dir: &Utf8Path,
    ) -> Result<serde_json::Value> {
        let r = self.run(ctx, fp, &dir.join("model.onnx"))?;
        Ok(serde_json::to_value(r).map_err(anyhow::Error::from)?)
    }
    fn load(
        &self,
        ctx: &StepContext,
        dir: &Utf8Path,
    ) -> Result<Box<dyn crate::runtime::LoadedModel>> {
        use crate::runtime::Runtime;
        crate::runtime::onnxruntime::OnnxRuntime::new(ctx.toolchain, None)?
            .load(&dir.join("model.onnx"))
    }
    fn settings(&self) -> serde_json::Value {
        json!({"tool": "onnxruntime.quantization", "impl": IMPL_VERSION, "method": self.method.name(), "per_channel": self.per_channel, "equalize": self.equalize})
    }
    fn recipe(&self) -> String {
        let scales = if self.per_channel {
            "per-channel"
        } else {
            "per-tensor"
        };
        format!("{}, {scales}", self.method.name())
    }
    /// minmax and percentile ranges with per-channel and per-tensor weight scales: all of them
    /// symmetric int8, as TensorRT's explicit quantization takes them. Not entropy:
    /// `quantize_static` passes no bin counts to ONNX Runtime's entropy calibrator, whose
    /// defaults (128 bins, 128 quantized bins) leave the full range as its only threshold, so
    /// it measured exactly minmax's figures on both real recognizers.
    fn alternatives(&self) -> Vec<Box<dyn super::accuracy::Quantizer + '_>> {
        let mut v: Vec<Box<dyn super::accuracy::Quantizer + '_>> = Vec::new();
        for per_channel in [self.per_channel, !self.per_channel] {
            for method in [Method::MinMax, Method::Percentile] {
                if (method, per_channel) != (self.method, self.per_channel) {
                    v.push(Box::new(Qdq {
                        inputs_json: self.inputs_json,
                        method,
                        per_channel,
                        equalize: self.equalize,
                        prepared: self.prepared,
                    }));
                }
            }
        }
        v
    }
}

pub(crate) fn run(ctx: &StepContext, p: &QuantizeParams) -> Result<StepOutcome> {
    let calib = &ctx.upstream[&p.calibration]["calibration.npy"];
    let inputs_json = super::inputs::script_inputs(
        ctx,
        &ctx.manifest.model.input.shape,
        Some(&ctx.upstream[&p.calibration]),
    )?;
    let out = ctx.workdir.join("model.onnx");
    ctx.progress
        .set_message("onnxruntime.quantization: static Q/DQ INT8");
    // A search prepares the model once for all its trials; a plain run prepares it once anyway.
    let scratch = match &p.accuracy_control {
        Some(_) => Some(
            tempfile::tempdir_in(ctx.workdir)
                .map_err(|e| crate::error::Error::io(ctx.workdir, e))?,
        ),
        None => None,
    };
    let prepared = scratch
        .as_ref()
        .and_then(|d| Utf8Path::from_path(d.path()).map(|d| d.join("prepared.onnx")));
    let qdq = Qdq {
        inputs_json: &inputs_json,
        method: p.method,
        per_channel: p.per_channel,
        equalize: p.equalize,
        prepared: prepared.as_deref(),
    };
    let (r, search) = match &p.accuracy_control {
        Some(ac) => {
            let (search, tool) = super::accuracy::control(ctx, ac, &qdq, calib, ctx.workdir)?;
            let r: QdqResult = serde_json::from_value(tool).map_err(anyhow::Error::from)?;
            (r, Some(search))
        }
        None => (qdq.run(ctx, &[], &out)?, None),
    };
    let report = json!({
        "step": ctx.step.name,
        "kind": "quantize",
        "precision": "int8",
        "format": "onnx-qdq",
        "calibration": p.calibration,
        "result": r,
        "accuracy_control": search,
        "model": {"blake3": crate::cache::memo::hash_file(&out)?, "bytes": std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0)},
        "toolchain": ctx.toolchain.fingerprint(TOOLCHAIN),
    });
    let report_path = super::write_report(ctx.workdir, "report.json", &report)?;
    // The recipe quantized with: the step's own, or the one accuracy control chose.
    let mut summary = json!({"qdq_pairs": r.quantize_linear, "method": r.method, "per_channel": r.per_channel, "calibration_items": r.calibration_items});
    if r.equalized > 0 {
        summary["equalized"] = json!(r.equalized);
    }
    if r.widened_from_float16 > 0 {
        summary["widened_from_float16"] = json!(r.widened_from_float16);
    }
    if let Some(s) = &search {
        s.add_to_summary(&mut summary);
    }
    if let Some(pre) = r.pre_process.as_deref().filter(|p| *p != "full") {
        summary["pre_process"] = json!(pre);
    }
    Ok(StepOutcome {
        outputs: [
            ("model.onnx".to_string(), out),
            ("report.json".to_string(), report_path),
        ]
        .into(),
        summary,
    })
}

impl super::Kind for QuantizeParams {
    fn isa_dependent(&self) -> bool {
        true
    }
    fn impl_version(&self) -> u32 {
        IMPL_VERSION
    }
    fn toolchain_pieces(&self) -> Vec<&'static str> {
        TOOLCHAIN.to_vec()
    }
    fn references(&self) -> Vec<String> {
        vec![self.calibration.clone()]
    }
    fn datasets(&self) -> Vec<String> {
        self.accuracy_control
            .iter()
            .flat_map(|a| std::iter::once(a.dataset.clone()).chain(a.holdout.clone()))
            .collect()
    }
    fn check_reference(
        &self,
        target: &str,
        kind: super::StepKind,
    ) -> std::result::Result<(), super::Problem> {
        super::expect(
            target,
            kind,
            &[super::StepKind::Calibrate],
            "a `calibrate` step",
        )
    }
    fn run(&self, ctx: &StepContext) -> Result<StepOutcome> {
        run(ctx, self)
    }
}
