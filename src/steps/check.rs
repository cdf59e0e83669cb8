//! `check`: is this ONNX model what the manifest says it is, and does it load?
//! Native protobuf inspection (IR, opsets, I/O with symbolic dims, initializers, external
//! data), the ONNX checker from the toolchain, and a load in ONNX Runtime.

use std::collections::BTreeMap;

use camino::Utf8PathBuf;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{StepContext, StepOutcome};
use crate::error::{Error, Result};
use crate::manifest::{Dim, InputSpec, Layout, Manifest, fmt_shape};
use crate::onnx::inspect::{DimInfo, ModelInfo, inspect, load_model};
use crate::runtime::elem::Elem;
use crate::runtime::{Runtime, onnxruntime::OnnxRuntime};

/// v2: the report is typed and carries `schema`.
/// v3: the report names the model as the manifest does, not by its absolute path.
/// v4: weights held by `Constant` nodes are counted (`constant_count`, `constant_bytes`).
pub(crate) const IMPL_VERSION: u32 = 4;
pub(crate) const TOOLCHAIN: &[&str] = &["onnx", "onnxruntime"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct CheckParams {
    /// Run `onnx.checker.check_model(full_check=True)` (adds strict shape inference).
    pub full_check: bool,
    /// Load the model in ONNX Runtime as a loadability check.
    pub ort_load: bool,
}

impl Default for CheckParams {
    fn default() -> Self {
        CheckParams {
            full_check: true,
            ort_load: true,
        }
    }
}

/// Compare the manifest's declared inputs with the graph's (initializers listed as inputs
/// by old exports are not inputs). Returns the problems found.
pub(crate) fn declared_input_problems(m: &Manifest, info: &ModelInfo) -> Vec<String> {
    let mut problems: Vec<String> = m
        .model
        .all_inputs()
        .flat_map(|decl| input_problems(decl, info))
        .collect();
    let undeclared: Vec<&str> = info
        .inputs
        .iter()
        .map(|i| i.name.as_str())
        .filter(|n| m.model.all_inputs().all(|d| d.name != *n))
        .collect();
    if !undeclared.is_empty() {
        problems.push(format!(
            "the graph's input(s) [{}] are not declared, and every input must be fed; declare each under `model.inputs` with what feeds it (`feed: {{embedding: ...}}` or `feed: {{npy: file.npy}}`)",
            undeclared.join(", ")
        ));
    }
    problems
}

/// One declared input against the graph's.
fn input_problems(decl: &InputSpec, info: &ModelInfo) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(actual) = info.inputs.iter().find(|i| i.name == decl.name) else {
        let names: Vec<&str> = info.inputs.iter().map(|i| i.name.as_str()).collect();
        problems.push(format!("the manifest declares input `{}`, but the graph's inputs are [{}]; set the input's name to one of them", decl.name, names.join(", ")));
        return problems;
    };
    // Every input is prepared in f32 and fed in the model's own type (runtime::elem).
    if Elem::from_onnx_name(&actual.elem_type).is_none() {
        let fed: Vec<&str> = Elem::ONNX_NAMES.iter().map(|(n, _)| *n).collect();
        problems.push(format!(
            "input `{}` is {}, which facebuild cannot feed (it feeds {})",
            actual.name,
            actual.elem_type,
            fed.join(", ")
        ));
    }
    let Some(shape) = &actual.shape else {
        return problems;
    };
    if shape.len() != decl.shape.len() {
        problems.push(format!(
            "input `{}` has rank {} in the graph ({}) but the manifest declares {} dims {}",
            actual.name,
            shape.len(),
            fmt_dims(shape),
            decl.shape.len(),
            fmt_shape(&decl.shape)
        ));
        return problems;
    }
    for (i, (d, g)) in decl.shape.iter().zip(shape).enumerate() {
        match (d, g) {
            (Dim::Fixed(a), DimInfo::Static(b)) if *a as i64 != *b => problems.push(format!(
                "input `{}` dim {i} is {b} in the graph but the manifest declares {a} (graph shape {}, declared {})",
                actual.name,
                fmt_dims(shape),
                fmt_shape(&decl.shape)
            )),
            (Dim::Named(n), DimInfo::Static(b)) => problems.push(format!("the manifest declares dim {i} of `{}` dynamic (`{n}`), but the graph fixes it to {b}", actual.name)),
            _ => {}
        }
    }
    let c = decl.layout.channel_axis();
    if decl.feed.is_image()
        && let Some(DimInfo::Static(ch)) = shape.get(c)
        && *ch != 1
        && *ch != 3
    {
        let other = if decl.layout == Layout::NCHW {
            "NHWC"
        } else {
            "NCHW"
        };
        problems.push(format!("layout {:?} puts channels at dim {c}, which is {ch} in the graph; is the layout {other}?", decl.layout));
    }
    problems
}

fn fmt_dims(s: &[DimInfo]) -> String {
    let v: Vec<String> = s
        .iter()
        .map(|d| match d {
            DimInfo::Static(n) => n.to_string(),
            DimInfo::Symbolic(p) => p.clone(),
        })
        .collect();
    format!("[{}]", v.join(", "))
}

/// The version of check's report shape.
pub(crate) const SCHEMA: &str = "facebuild.check/1";

/// `check`'s report.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckReport {
    /// The report's schema version, e.g. `facebuild.compare/1`.
    pub schema: String,
    /// The step's name.
    pub step: String,
    /// The step's kind.
    pub kind: String,
    /// Whether every gate of the step passed.
    pub passed: bool,
    /// The model checked.
    pub model: CheckedModel,
    /// What the graph declares, read natively.
    pub graph: ModelInfo,
    /// Where the graph contradicts the manifest's `model.input`.
    pub problems: Vec<String>,
    /// What the ONNX checker said.
    pub onnx_checker: CheckerResult,
    /// Whether ONNX Runtime loads it.
    pub onnxruntime: OrtLoad,
    /// The toolchain versions the step used.
    pub toolchain: BTreeMap<String, String>,
}

/// The model checked, and what the manifest declares of its input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckedModel {
    pub path: Utf8PathBuf,
    pub declared_input: InputSpec,
}

/// What the ONNX checker (check.py) said.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckerResult {
    pub ok: bool,
    pub onnx_version: String,
    pub full_check: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Whether ONNX Runtime loads the model (null when not asked to).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OrtLoad {
    pub loaded: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<(String, Vec<i64>)>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<crate::runtime::ExecutionInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub(crate) fn run(ctx: &StepContext, p: &CheckParams) -> Result<StepOutcome> {
    ctx.progress.set_message("parsing ModelProto");
    let model = load_model(ctx.model)?;
    let info = inspect(&model, ctx.model)?;
    drop(model);
    let problems = declared_input_problems(ctx.manifest, &info);

    ctx.check_cancelled()?;
    ctx.progress.set_message("running the ONNX checker");
    let checker: CheckerResult = ctx.toolchain.run_script(
        crate::toolchain::scripts::CHECK,
        &[ctx.model.as_str(), if p.full_check { "1" } else { "0" }],
        "onnx checker",
    )?;

    ctx.check_cancelled()?;
    let ort = if p.ort_load {
        ctx.progress.set_message("loading in ONNX Runtime");
        let rt = OnnxRuntime::new(ctx.toolchain, None)?;
        match rt.load(ctx.model) {
            Ok(m) => OrtLoad {
                loaded: Some(true),
                inputs: Some(m.inputs()),
                outputs: Some(m.outputs()),
                execution: Some(m.execution()),
                error: None,
            },
            Err(e) => OrtLoad {
                loaded: Some(false),
                error: Some(e.to_string()),
                ..OrtLoad::default()
            },
        }
    } else {
        OrtLoad::default()
    };

    let ort_ok = ort.loaded != Some(false);
    let passed = problems.is_empty() && checker.ok && ort_ok;
    let report = CheckReport {
        schema: SCHEMA.into(),
        step: ctx.step.name.clone(),
        kind: "check".into(),
        passed,
        model: CheckedModel {
            path: ctx.model_label().into(),
            declared_input: ctx.manifest.model.input.clone(),
        },
        graph: info.clone(),
        problems: problems.clone(),
        onnx_checker: checker,
        onnxruntime: ort,
        toolchain: ctx.toolchain.fingerprint(TOOLCHAIN),
    };
    let path = super::write_report(ctx.workdir, "report.json", &report)?;
    if !passed {
        let mut reasons = problems;
        if !report.onnx_checker.ok {
            reasons.push(format!(
                "onnx checker: {}",
                report.onnx_checker.error.as_deref().unwrap_or("failed")
            ));
        }
        if !ort_ok {
            reasons.push(format!(
                "ONNX Runtime: {}",
                report.onnxruntime.error.as_deref().unwrap_or("cannot load")
            ));
        }
        return Err(Error::Step {
            step: ctx.step.name.clone(),
            message: reasons.join("; "),
            hint: Some(
                "fix `model.input` in the manifest to match the graph, or fix the model".into(),
            ),
        });
    }
    let mut summary = json!({
        "ir_version": info.ir_version,
        "opset": info.opsets.iter().find(|o| o.domain == "ai.onnx").map(|o| o.version),
        "inputs": info.inputs.iter().map(|i| format!("{} {}", i.name, i.shape.as_deref().map(fmt_dims).unwrap_or_default())).collect::<Vec<_>>(),
        "outputs": info.outputs.iter().map(|i| format!("{} {}", i.name, i.shape.as_deref().map(fmt_dims).unwrap_or_default())).collect::<Vec<_>>(),
        "nodes": info.node_count,
        "initializer_mib": (info.initializer_bytes as f64 / 1048576.0 * 10.0).round() / 10.0,
    });
    if info.constant_bytes > 0 {
        summary["constant_mib"] =
            json!((info.constant_bytes as f64 / 1048576.0 * 10.0).round() / 10.0);
    }
    Ok(StepOutcome {
        outputs: [("report.json".to_string(), path)].into(),
        summary,
    })
}

impl super::Kind for CheckParams {
    fn impl_version(&self) -> u32 {
        IMPL_VERSION
    }
    fn toolchain_pieces(&self) -> Vec<&'static str> {
        TOOLCHAIN.to_vec()
    }
    fn run(&self, ctx: &StepContext) -> Result<StepOutcome> {
        run(ctx, self)
    }
}
