//! `check`: is this ONNX model what the manifest says it is, and does it load?
//! Native protobuf inspection (IR, opsets, I/O with symbolic dims, initializers, external
//! data), the ONNX checker from the toolchain, and a load in ONNX Runtime.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{StepContext, StepOutcome};
use crate::error::{Error, Result};
use crate::manifest::{Dim, Layout, Manifest, fmt_shape};
use crate::onnx::inspect::{DimInfo, ModelInfo, inspect, load_model};
use crate::runtime::{Runtime, onnxruntime::OnnxRuntime};

pub const IMPL_VERSION: u32 = 1;
pub const TOOLCHAIN: &[&str] = &["onnx", "onnxruntime"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckParams {
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

/// Compare the manifest's declared input with the graph. Returns the problems found.
pub fn declared_input_problems(m: &Manifest, info: &ModelInfo) -> Vec<String> {
    let decl = &m.model.input;
    let mut problems = Vec::new();
    let Some(actual) = info.inputs.iter().find(|i| i.name == decl.name) else {
        let names: Vec<&str> = info.inputs.iter().map(|i| i.name.as_str()).collect();
        problems.push(format!("the manifest declares input `{}`, but the graph's inputs are [{}]; set `model.input.name` to one of them", decl.name, names.join(", ")));
        return problems;
    };
    if actual.elem_type != "float32" {
        problems.push(format!(
            "input `{}` is {}, facebuild feeds float32",
            actual.name, actual.elem_type
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
    if let Some(DimInfo::Static(ch)) = shape.get(c)
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

pub fn run(ctx: &StepContext, p: &CheckParams) -> Result<StepOutcome> {
    ctx.progress.set_message("parsing ModelProto");
    let model = load_model(ctx.model)?;
    let info = inspect(&model, ctx.model)?;
    drop(model);
    let problems = declared_input_problems(ctx.manifest, &info);

    ctx.check_cancelled()?;
    ctx.progress.set_message("running the ONNX checker");
    let checker = ctx.toolchain.run_script(
        include_str!("../toolchain/python/check.py"),
        &[ctx.model.as_str(), if p.full_check { "1" } else { "0" }],
        "onnx checker",
    )?;

    ctx.check_cancelled()?;
    let ort = if p.ort_load {
        ctx.progress.set_message("loading in ONNX Runtime");
        let rt = OnnxRuntime::new(ctx.toolchain, None)?;
        match rt.load(ctx.model) {
            Ok(m) => {
                json!({"loaded": true, "inputs": m.inputs(), "outputs": m.outputs(), "execution": m.execution()})
            }
            Err(e) => json!({"loaded": false, "error": e.to_string()}),
        }
    } else {
        json!({"loaded": null})
    };

    let checker_ok = checker["ok"].as_bool().unwrap_or(false);
    let ort_ok = ort["loaded"].as_bool() != Some(false);
    let passed = problems.is_empty() && checker_ok && ort_ok;
    let report = json!({
        "step": ctx.step.name,
        "kind": "check",
        "passed": passed,
        "model": {"path": ctx.model, "declared_input": ctx.manifest.model.input},
        "graph": info,
        "problems": problems,
        "onnx_checker": checker,
        "onnxruntime": ort,
        "toolchain": ctx.toolchain.fingerprint(TOOLCHAIN),
    });
    let path = super::write_report(ctx.workdir, "report.json", &report)?;
    if !passed {
        let mut reasons = problems.clone();
        if !checker_ok {
            reasons.push(format!(
                "onnx checker: {}",
                checker["error"].as_str().unwrap_or("failed")
            ));
        }
        if !ort_ok {
            reasons.push(format!(
                "ONNX Runtime: {}",
                ort["error"].as_str().unwrap_or("cannot load")
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
    let summary = json!({
        "ir_version": info.ir_version,
        "opset": info.opsets.iter().find(|o| o.domain == "ai.onnx").map(|o| o.version),
        "inputs": info.inputs.iter().map(|i| format!("{} {}", i.name, i.shape.as_deref().map(fmt_dims).unwrap_or_default())).collect::<Vec<_>>(),
        "outputs": info.outputs.iter().map(|i| format!("{} {}", i.name, i.shape.as_deref().map(fmt_dims).unwrap_or_default())).collect::<Vec<_>>(),
        "nodes": info.node_count,
        "initializer_mib": (info.initializer_bytes as f64 / 1048576.0 * 10.0).round() / 10.0,
    });
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
