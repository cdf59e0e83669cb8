//! `simplify`: freeze declared static shapes (or keep named dims dynamic), simplify with
//! onnxsim/onnxslim from the toolchain, then prove the result equivalent: original and
//! simplified run in ONNX Runtime on seeded inputs (and dataset images when declared), and
//! the step fails unless every output's cosine similarity (and, if set, max abs error)
//! meets the gate. The evidence is in report.json either way.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{StepContext, StepOutcome};
use crate::error::{Error, Result};
use crate::manifest::Dim;
use crate::metrics;
use crate::onnx::inspect::DimInfo;
use crate::runtime::{NamedTensor, Runtime, onnxruntime::OnnxRuntime};

/// v3: the report is typed and carries `schema`. v4: model-local functions are inlined and
/// their constant branches folded before simplifying; -1 dims are read as dynamic.
pub(crate) const IMPL_VERSION: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Tool {
    Onnxsim,
    Onnxslim,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct SimplifyParams {
    pub tool: Tool,
    /// Input name -> shape to freeze. Integers freeze a dim, names keep it dynamic.
    /// Default: the manifest's declared input shape.
    pub freeze: Option<IndexMap<String, Vec<Dim>>>,
    /// Concrete sizes for dims left dynamic, used only for the equivalence check (default 1).
    pub test_dims: BTreeMap<String, u64>,
    /// Seeded random input samples for the equivalence check.
    pub samples: u32,
    pub seed: u64,
    /// A dataset of images to compare on as well (uses `model.preprocessing`).
    pub dataset: Option<String>,
    /// Gate: every output's minimum cosine similarity, original vs simplified.
    pub cosine_min: f64,
    /// Gate: largest absolute difference allowed on any output element (not gated if absent).
    pub max_abs_error: Option<f64>,
}

impl Default for SimplifyParams {
    fn default() -> Self {
        SimplifyParams {
            tool: Tool::Onnxsim,
            freeze: None,
            test_dims: BTreeMap::new(),
            samples: 8,
            seed: 0,
            dataset: None,
            cosine_min: 0.9999,
            max_abs_error: None,
        }
    }
}

impl SimplifyParams {
    pub(crate) fn toolchain_pieces(&self) -> Vec<&'static str> {
        match self.tool {
            Tool::Onnxsim => vec!["onnx", "onnxruntime", "onnxsim"],
            Tool::Onnxslim => vec!["onnx", "onnxruntime", "onnxslim"],
        }
    }

    pub(crate) fn validate(&self) -> std::result::Result<(), (String, Option<String>)> {
        if !(self.cosine_min > -1.0 && self.cosine_min <= 1.0) {
            return Err((
                format!("`cosine_min` must be in (-1, 1], got {}", self.cosine_min),
                Some("the default is 0.9999".into()),
            ));
        }
        if self.samples == 0 && self.dataset.is_none() {
            return Err((
                "`samples: 0` and no `dataset`: nothing to prove equivalence on".into(),
                Some("keep `samples` >= 1 or name a dataset".into()),
            ));
        }
        if matches!(self.max_abs_error, Some(x) if x < 0.0) {
            return Err(("`max_abs_error` must be >= 0".into(), None));
        }
        Ok(())
    }
}

/// The version of simplify's report shape.
pub(crate) const SCHEMA: &str = "facebuild.simplify/1";

/// `simplify`'s report.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimplifyReport {
    /// The report's schema version, e.g. `facebuild.compare/1`.
    pub schema: String,
    /// The step's name.
    pub step: String,
    /// The step's kind.
    pub kind: String,
    /// Whether every gate of the step passed.
    pub passed: bool,
    /// What the simplifier did.
    pub tool: ToolResult,
    /// Input name -> the shape frozen before simplifying.
    pub frozen_shapes: IndexMap<String, Vec<Dim>>,
    /// The equivalence gate.
    pub gate: SimplifyGate,
    /// What equivalence was proven on.
    pub samples: SampleCounts,
    /// Original against simplified, per output.
    pub outputs: Vec<OutputFidelity>,
    /// Every violated limit or mismatch, in words.
    pub problems: Vec<String>,
    /// How ONNX Runtime ran both models.
    pub execution: crate::runtime::ExecutionInfo,
    /// The toolchain versions the step used.
    pub toolchain: BTreeMap<String, String>,
}

/// What the simplifier (simplify.py) did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolResult {
    pub tool: String,
    pub tool_version: String,
    pub onnx_version: String,
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub ops_before: IndexMap<String, u64>,
    pub ops_after: IndexMap<String, u64>,
    /// Model-local functions inlined before simplifying (dynamo exports), and the `If`
    /// nodes left after (those ovc cannot convert).
    #[serde(default)]
    pub inlined_functions: usize,
    #[serde(default)]
    pub if_after: usize,
    /// Shapes as the simplified graph keeps them: sizes, names, and -1 (or 0) for an
    /// unnamed dynamic dim, as Paddle and some exporters write it.
    pub inputs_after: IndexMap<String, Vec<DimInfo>>,
    pub outputs_after: IndexMap<String, Vec<DimInfo>>,
}

/// The equivalence gate's limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimplifyGate {
    pub cosine_min: f64,
    pub max_abs_error: Option<f64>,
}

/// What equivalence was proven on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SampleCounts {
    pub random: u32,
    pub seed: u64,
    pub images: usize,
    pub dataset: Option<String>,
}

/// One output, original against simplified.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputFidelity {
    pub name: String,
    pub shape: Vec<usize>,
    pub cosine: metrics::Summary,
    pub max_abs_error: f64,
    pub mean_abs_error: f64,
    pub samples: usize,
}

pub(crate) fn run(ctx: &StepContext, p: &SimplifyParams) -> Result<StepOutcome> {
    // Every input's declared shape, unless `freeze` says otherwise.
    let shapes: IndexMap<String, Vec<Dim>> = p.freeze.clone().unwrap_or_else(|| {
        ctx.manifest
            .model
            .all_inputs()
            .map(|i| (i.name.clone(), i.shape.clone()))
            .collect()
    });
    let out_model = ctx.workdir.join("model.onnx");
    let sim = simplify_with_tool(ctx, p, &shapes, &out_model)?;

    ctx.check_cancelled()?;
    ctx.progress
        .set_message("proving equivalence in ONNX Runtime");
    let rt = OnnxRuntime::new(ctx.toolchain, None)?.without_graph_optimizations();
    let mut original = rt.load(ctx.model)?;
    let mut simplified = rt.load(&out_model)?;

    let samples = equivalence_samples(ctx, p, &shapes, &simplified.inputs())?;

    let (per_output, mut problems) =
        run_samples(ctx, &samples, original.as_mut(), simplified.as_mut())?;

    let (outputs, worst_cos, worst_abs) = fidelity(&per_output, p, &mut problems);
    let passed = problems.is_empty();
    let report = SimplifyReport {
        schema: SCHEMA.into(),
        step: ctx.step.name.clone(),
        kind: "simplify".into(),
        passed,
        tool: sim,
        frozen_shapes: shapes,
        gate: SimplifyGate {
            cosine_min: p.cosine_min,
            max_abs_error: p.max_abs_error,
        },
        samples: SampleCounts {
            random: p.samples,
            seed: p.seed,
            images: samples.len() - p.samples as usize,
            dataset: p.dataset.clone(),
        },
        outputs,
        problems: problems.clone(),
        execution: original.execution(),
        toolchain: ctx.toolchain.fingerprint(&p.toolchain_pieces()),
    };
    let report_path = super::write_report(ctx.workdir, "report.json", &report)?;
    if !passed {
        return Err(Error::Step {
            step: ctx.step.name.clone(),
            message: format!("equivalence gate failed: {}", problems.join("; ")),
            hint: Some("the simplified model does not match the original; try `tool: onnxslim`, or inspect report.json".into()),
        });
    }
    let summary = json!({
        "tool": format!("{} {}", tool_name(p.tool), report.tool.tool_version),
        "nodes": format!("{} -> {}", report.tool.nodes_before, report.tool.nodes_after),
        "cosine_min": worst_cos,
        "max_abs_error": worst_abs,
        "samples": samples.len(),
    });
    Ok(StepOutcome {
        outputs: [
            ("model.onnx".to_string(), out_model),
            ("report.json".to_string(), report_path),
        ]
        .into(),
        summary,
    })
}

/// Run the simplifier (onnxsim or onnxslim) in the toolchain, with `shapes` frozen.
fn simplify_with_tool(
    ctx: &StepContext,
    p: &SimplifyParams,
    shapes: &IndexMap<String, Vec<Dim>>,
    out_model: &camino::Utf8Path,
) -> Result<ToolResult> {
    let spec = json!({
        "tool": p.tool,
        "shapes": shapes,
    });
    ctx.progress
        .set_message(format!("{} simplifying", tool_name(p.tool)));
    // simplify.py answers what it did, or why it refused (a bad `freeze`).
    let answer: serde_json::Value = ctx.toolchain.run_script(
        crate::toolchain::scripts::SIMPLIFY,
        &[ctx.model.as_str(), out_model.as_str(), &spec.to_string()],
        "simplify",
    )?;
    if let Some(error) = answer.get("error").and_then(|e| e.as_str()) {
        return Err(Error::Step {
            step: ctx.step.name.clone(),
            message: error.to_string(),
            hint: Some(
                "check `params.freeze` against the graph's inputs (`facebuild run --target check`)"
                    .into(),
            ),
        });
    }
    crate::toolchain::read_answer(answer, "simplify")
}

/// The equivalence samples: `p.samples` seeded random tensors (dynamic dims at `test_dims`,
/// else their declared `opt`), then the dataset's images when one is named.
fn equivalence_samples(
    ctx: &StepContext,
    p: &SimplifyParams,
    shapes: &IndexMap<String, Vec<Dim>>,
    inputs: &[(String, Vec<i64>)],
) -> Result<Vec<(String, Vec<NamedTensor>)>> {
    let decl = &ctx.manifest.model.input;
    // Dynamic dims are tested at `test_dims`, else their declared `opt` (see concrete_shape).
    let concrete = |name: &str, ort_shape: &[i64]| -> Vec<usize> {
        match shapes.get(name) {
            Some(dims) => {
                let fallback = match ctx.manifest.model.all_inputs().find(|i| i.name == name) {
                    Some(i) => ctx.manifest.concrete_shape_of(i, dims),
                    None => ctx.manifest.concrete_shape(dims),
                };
                dims.iter()
                    .zip(fallback)
                    .map(|(d, f)| match d {
                        Dim::Fixed(n) => *n as usize,
                        Dim::Named(s) => p.test_dims.get(s).map(|v| *v as usize).unwrap_or(f),
                    })
                    .collect()
            }
            None => ort_shape
                .iter()
                .map(|&d| if d < 0 { 1 } else { d as usize })
                .collect(),
        }
    };
    let mut samples: Vec<(String, Vec<NamedTensor>)> = Vec::new();
    let mut rng = crate::util::SplitMix64::new(p.seed);
    let mut random = |name: &String, s: &[i64]| {
        let shape = concrete(name, s);
        let n: usize = shape.iter().product();
        // Normalised-image range: what a preprocessed face crop looks like to the model.
        let data: Vec<f32> = (0..n).map(|_| rng.unit()).collect();
        (
            name.clone(),
            ArrayD::from_shape_vec(IxDyn(&shape), data).expect("sized to shape"),
        )
    };
    for i in 0..p.samples {
        let feed = inputs.iter().map(|(name, s)| random(name, s)).collect();
        samples.push((format!("random#{i}"), feed));
    }
    if let Some(ds) = &p.dataset {
        let pre = ctx.manifest.model.preprocessing.as_ref().ok_or_else(|| Error::Step {
            step: ctx.step.name.clone(),
            message: format!("dataset `{ds}` needs `model.preprocessing` to turn images into tensors"),
            hint: Some("declare `model.preprocessing: {color: RGB, mean: [127.5,127.5,127.5], std: [127.5,127.5,127.5], size: [112, 112]}`".into()),
        })?;
        let spec = &ctx.manifest.datasets[ds];
        let files = crate::preprocess::list_images(&ctx.datasets[ds], spec.count, spec.seed)?;
        let aligner = ctx.aligner(ds)?;
        let feed = ctx.feed(pre, aligner.as_ref());
        for f in files {
            let t = crate::preprocess::load_tensor(&f, &feed)?;
            // The other inputs (a swapper's latent) take seeded random values.
            let others = inputs
                .iter()
                .filter(|(n, _)| *n != decl.name)
                .map(|(n, s)| random(n, s));
            samples.push((
                format!("image:{}", f.file_name().unwrap_or_default()),
                std::iter::once((decl.name.clone(), t.into_dyn()))
                    .chain(others)
                    .collect(),
            ));
        }
    }
    Ok(samples)
}

/// Run every sample through both models; per-output statistics, and what did not match.
fn run_samples(
    ctx: &StepContext,
    samples: &[(String, Vec<NamedTensor>)],
    original: &mut dyn crate::runtime::LoadedModel,
    simplified: &mut dyn crate::runtime::LoadedModel,
) -> Result<(BTreeMap<String, OutputStats>, Vec<String>)> {
    let mut per_output: BTreeMap<String, OutputStats> = BTreeMap::new();
    let mut problems = Vec::new();
    for (i, (label, feed)) in samples.iter().enumerate() {
        ctx.check_cancelled()?;
        ctx.progress
            .set_message(format!("equivalence sample {}/{}", i + 1, samples.len()));
        let a = original.run(feed)?;
        let b = simplified.run(feed)?;
        for ((na, va), (nb, vb)) in a.iter().zip(b.iter()) {
            if na != nb || va.shape() != vb.shape() {
                problems.push(format!(
                    "{label}: output `{na}` {:?} vs simplified `{nb}` {:?}",
                    va.shape(),
                    vb.shape()
                ));
                continue;
            }
            let (xa, xb) = (
                va.as_slice()
                    .map(<[f32]>::to_vec)
                    .unwrap_or_else(|| va.iter().copied().collect()),
                vb.as_slice()
                    .map(<[f32]>::to_vec)
                    .unwrap_or_else(|| vb.iter().copied().collect()),
            );
            let e = per_output.entry(na.clone()).or_insert_with(|| OutputStats {
                shape: va.shape().to_vec(),
                ..Default::default()
            });
            e.cosines.push(metrics::cosine(&xa, &xb));
            e.max_abs = e.max_abs.max(metrics::max_abs_diff(&xa, &xb));
            e.mean_abs_sum += metrics::mean_abs_diff(&xa, &xb);
        }
        if a.len() != b.len() {
            problems.push(format!(
                "original has {} outputs, simplified has {}",
                a.len(),
                b.len()
            ));
        }
    }
    Ok((per_output, problems))
}

/// Each output's fidelity against the gates (problems added for those it fails), and the
/// worst cosine and absolute error over all outputs.
fn fidelity(
    per_output: &BTreeMap<String, OutputStats>,
    p: &SimplifyParams,
    problems: &mut Vec<String>,
) -> (Vec<OutputFidelity>, f64, f64) {
    let mut outputs = Vec::new();
    let mut worst_cos = 1.0f64;
    let mut worst_abs = 0.0f64;
    for (name, o) in per_output {
        let (max_abs, n) = (&o.max_abs, o.cosines.len());
        let s = metrics::Summary::of(&o.cosines);
        worst_cos = worst_cos.min(s.min);
        worst_abs = worst_abs.max(*max_abs);
        if s.min < p.cosine_min || s.min.is_nan() {
            problems.push(format!(
                "output `{name}`: min cosine {:.6} < cosine_min {}",
                s.min, p.cosine_min
            ));
        }
        if let Some(lim) = p.max_abs_error
            && *max_abs > lim
        {
            problems.push(format!(
                "output `{name}`: max abs error {max_abs:.3e} > max_abs_error {lim:e}"
            ));
        }
        outputs.push(OutputFidelity {
            name: name.clone(),
            shape: o.shape.clone(),
            cosine: s,
            max_abs_error: *max_abs,
            mean_abs_error: o.mean_abs_sum / n as f64,
            samples: n,
        });
    }
    (outputs, worst_cos, worst_abs)
}

/// Per-output comparison accumulated over all samples.
#[derive(Default)]
struct OutputStats {
    shape: Vec<usize>,
    cosines: Vec<f64>,
    max_abs: f64,
    mean_abs_sum: f64,
}

fn tool_name(t: Tool) -> &'static str {
    match t {
        Tool::Onnxsim => "onnxsim",
        Tool::Onnxslim => "onnxslim",
    }
}

impl super::Kind for SimplifyParams {
    fn isa_dependent(&self) -> bool {
        true
    }
    fn impl_version(&self) -> u32 {
        IMPL_VERSION
    }
    fn toolchain_pieces(&self) -> Vec<&'static str> {
        SimplifyParams::toolchain_pieces(self)
    }
    fn datasets(&self) -> Vec<String> {
        self.dataset.iter().cloned().collect()
    }
    fn validate(&self) -> Vec<super::Problem> {
        SimplifyParams::validate(self).err().into_iter().collect()
    }
    fn run(&self, ctx: &StepContext) -> Result<StepOutcome> {
        run(ctx, self)
    }
}
