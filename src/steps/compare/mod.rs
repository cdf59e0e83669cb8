//! `compare` (recognition): every candidate artifact against the ONNX original on a validation
//! set. Images are decoded and prepared once (and memoized across runs); the reference runs in
//! ONNX Runtime fp32, each candidate in its own runtime, batched. Per candidate: cosine
//! similarity (min, p01, mean), embedding-norm shift, max abs error and, when the dataset has
//! identities, TAR at FAR 1e-2/1e-3, EER and decision flips at the reference's operating
//! threshold. Gates fail the step naming the artifact and the metric; the report is kept.
//! Reports hold no timings, so two runs give identical reports (timings are in the summary).

use std::collections::BTreeMap;
use std::time::Instant;

use ndarray::{Array4, Axis, s};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub(crate) mod attribute;
pub(crate) mod detection;
mod landmarks;
mod outputs;
mod pairs;
pub(crate) mod report;
mod swapper;

pub use report::{
    AttributeFigures, CandidateReport, CompareReport, LandmarkFigures, LandmarkSetup,
    OutputComparison, SwapperFigures, SwapperSetup,
};
use report::{CandidateVerification, DatasetSummary, MeanStd, NormShift, ReferenceSummary};

use super::{StepContext, StepOutcome};
use crate::error::{Error, Result};
use crate::manifest::{Preprocessing, Task};
use crate::metrics::gate::{self, Gates, Measurement, Naming};
use crate::metrics::uncertainty::{Bootstrap, Spread};
use crate::metrics::{self, Summary, similarity, verification};
use crate::runtime::{
    ExecutionInfo, LoadedModel, Runtime,
    onnxruntime::OnnxRuntime,
    openvino::{OpenVino, OpenVinoSettings},
};

/// v4: the report is typed and carries `schema`; v5: verification figures from one sort,
/// with the FAR resolution, and TARs below it "not measurable"; v6: pair scores by blocked
/// matrix products of normalised embeddings (f32), streamed; v7: `generic` and `landmarks`
/// models compared output by output; v8: `max_impostor_pairs` sampling, and beyond 20M
/// impostor pairs the top scores kept exactly and the EER from a histogram; v9: bootstrap
/// intervals, McNemar, score differences and the LFW protocol; v10: detectors report the
/// faces of their set and recall by face height.
pub(crate) const IMPL_VERSION: u32 = 10;
pub(crate) const TOOLCHAIN: &[&str] = &["onnxruntime", "openvino"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum CandidateSpec {
    Step(String),
    Detailed(CandidateDetail),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CandidateDetail {
    pub step: String,
    /// Report name (default: the step name).
    #[serde(default)]
    pub label: Option<String>,
    /// How the deployment feeds this artifact, when it differs from `model.preprocessing`.
    #[serde(default)]
    pub preprocessing: Option<Preprocessing>,
    /// OpenVINO INFERENCE_PRECISION_HINT for this candidate (default: the step's).
    #[serde(default)]
    pub precision_hint: Option<String>,
}

impl CandidateSpec {
    pub(crate) fn step(&self) -> &str {
        match self {
            CandidateSpec::Step(s) => s,
            CandidateSpec::Detailed(d) => &d.step,
        }
    }
    pub(crate) fn label(&self) -> String {
        match self {
            CandidateSpec::Step(s) => s.clone(),
            CandidateSpec::Detailed(d) => d.label.clone().unwrap_or_else(|| d.step.clone()),
        }
    }
    pub(crate) fn detail(&self) -> Option<&CandidateDetail> {
        match self {
            CandidateSpec::Detailed(d) => Some(d),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CompareParams {
    /// The validation set (a dataset from `datasets:`).
    pub dataset: String,
    /// Steps whose artifacts to compare (`model.onnx` or OpenVINO `model.xml`/`.bin`).
    pub candidates: Vec<CandidateSpec>,
    /// Batch size where a model's batch dim is dynamic; a static batch is used as it is.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// OpenVINO INFERENCE_PRECISION_HINT for candidates (default f32: a gate should measure the
    /// conversion, not the plugin's bf16 default on AMX CPUs). `default` keeps the plugin's.
    #[serde(default = "default_hint")]
    pub precision_hint: String,
    #[serde(default)]
    pub threads: Option<usize>,
    /// FAR at which the reference's operating threshold is set (for flips and TAR drop).
    #[serde(default = "default_far")]
    pub operating_far: f64,
    /// Gates for every candidate (`cosine_min` defaults to 0.99), written flat in params
    /// as users always have: `cosine_min: 0.99`, `recall_min: 0.95`...
    #[serde(flatten)]
    pub gates: Gates,
    /// Per-candidate gate overrides, by candidate label.
    #[serde(default)]
    pub candidate_gates: BTreeMap<String, Gates>,
    /// Score a seeded sample of about this many impostor pairs instead of all of them
    /// (genuine pairs are always all scored); the report states the sample.
    #[serde(default)]
    pub max_impostor_pairs: Option<u64>,
    /// The seed of `max_impostor_pairs`'s sample.
    #[serde(default)]
    pub sample_seed: u64,
    /// Detectors: input sizes ([h, w]) to compare at; a model with dynamic H/W runs every
    /// size from one compiled artifact. Default: `model.preprocessing.size`.
    #[serde(default)]
    pub input_sizes: Option<Vec<[u32; 2]>>,
    /// Detectors: IoU at which a candidate box matches a reference box.
    #[serde(default = "default_match_iou")]
    pub match_iou: f32,
    /// Bootstrap replicates behind every gated figure's intervals (0: no intervals).
    #[serde(default = "default_replicates")]
    pub bootstrap_replicates: usize,
    /// The bootstrap's seed.
    #[serde(default)]
    pub bootstrap_seed: u64,
    /// LFW protocol: sum each embedding with its horizontal flip's (InsightFace's option).
    #[serde(default)]
    pub lfw_flip: bool,
    /// Swappers: the cosine at which a swapped face matches its source identity, for
    /// `identity_flips` (default 0.3; set your recognizer's own operating threshold).
    #[serde(default)]
    pub identity_threshold: Option<f64>,
    /// Keys that are not params: collected so validation can name them (serde's flatten
    /// cannot be combined with `deny_unknown_fields`).
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, serde::de::IgnoredAny>,
}

fn default_replicates() -> usize {
    metrics::uncertainty::DEFAULT_REPLICATES
}

fn default_match_iou() -> f32 {
    0.5
}

fn default_batch() -> usize {
    8
}
fn default_hint() -> String {
    "f32".into()
}
fn default_far() -> f64 {
    1e-3
}

impl CompareParams {
    pub(crate) fn validate(&self) -> std::result::Result<(), (String, Option<String>)> {
        if let Some(k) = self.unknown.keys().next() {
            let keys: Vec<&str> = COMPARE_KEYS
                .iter()
                .copied()
                .chain(Gates::METRICS.iter().map(|m| m.key))
                .chain([
                    "atol",
                    "rtol",
                    "missing",
                    "unreliable",
                    "confidence",
                    "inconclusive",
                ])
                .collect();
            return Err((
                format!("unknown field `{k}` in compare params"),
                Some(format!("expected one of {}", keys.join(", "))),
            ));
        }
        if let Some(perf) = self.gates.set_among(gate::PERFORMANCE).first() {
            return Err((
                format!("`{perf}` is a release gate: compare measures accuracy"),
                Some("set performance gates on the `release` step".into()),
            ));
        }
        if let Some(t) = self.identity_threshold
            && !(-1.0..=1.0).contains(&t)
        {
            return Err((
                format!("`identity_threshold: {t}` is not a cosine"),
                Some("give the recognizer's operating threshold, between -1 and 1 (ArcFace-family models sit near 0.2 to 0.4)".into()),
            ));
        }
        if self.candidates.is_empty() {
            return Err((
                "`candidates` is empty: nothing to compare".into(),
                Some("list convert/simplify steps, e.g. `candidates: [openvino_fp32]`".into()),
            ));
        }
        if self.batch == 0 {
            return Err(("`batch` must be at least 1".into(), None));
        }
        if let Some(sz) = &self.input_sizes
            && (sz.is_empty() || sz.iter().any(|s| s[0] == 0 || s[1] == 0))
        {
            return Err((
                "`input_sizes` needs at least one [height, width] with both > 0".into(),
                Some("e.g. `input_sizes: [[640, 640], [480, 640]]`".into()),
            ));
        }
        if !(self.match_iou > 0.0 && self.match_iou <= 1.0) {
            return Err(("`match_iou` must be in (0, 1]".into(), None));
        }
        if self.max_impostor_pairs == Some(0) {
            return Err((
                "`max_impostor_pairs` must be at least 1".into(),
                Some("leave it out to score every impostor pair".into()),
            ));
        }
        if !(self.operating_far > 0.0 && self.operating_far < 1.0) {
            return Err(("`operating_far` must be in (0, 1)".into(), None));
        }
        for c in &self.candidates {
            if let Some((m, h)) = c
                .detail()
                .and_then(|d| d.preprocessing.as_ref())
                .and_then(|p| p.problems().into_iter().next())
            {
                return Err((
                    format!("candidate `{}`: `preprocessing.{}", c.label(), &m[1..]),
                    Some(h),
                ));
            }
        }
        for g in std::iter::once(&self.gates).chain(self.candidate_gates.values()) {
            if let Some(problem) = g.confidence_problem() {
                return Err(problem);
            }
            if g.confidence.is_some() && self.bootstrap_replicates == 0 {
                return Err((
                    "`confidence` judges intervals, and `bootstrap_replicates: 0` measures none"
                        .into(),
                    Some("drop `bootstrap_replicates: 0`, or drop `confidence`".into()),
                ));
            }
        }
        let labels: Vec<String> = self.candidates.iter().map(CandidateSpec::label).collect();
        for k in self.candidate_gates.keys() {
            if !labels.contains(k) {
                return Err((
                    format!("`candidate_gates` names `{k}`, which is not a candidate"),
                    Some(format!("candidates: {}", labels.join(", "))),
                ));
            }
        }
        Ok(())
    }

    /// The gates for one candidate: its overrides over the step's; `cosine_min` is 0.99
    /// unless set.
    /// One candidate's gates: its overrides over the step's, and when none of the task's
    /// `keys` is set, the task's `defaults`.
    pub(super) fn gates_or(
        &self,
        label: &str,
        keys: &[&str],
        defaults: impl FnOnce(&mut Gates),
    ) -> Gates {
        let mut g = self.gates.overridden_by(self.candidate_gates.get(label));
        if g.set_among(keys).is_empty() {
            defaults(&mut g);
        }
        g
    }

    fn gates_for(&self, label: &str) -> Gates {
        let mut g = self.gates.overridden_by(self.candidate_gates.get(label));
        g.cosine_min = g.cosine_min.or(Some(0.99));
        g
    }

    /// Impostor pairs `src` will score (all, or `max_impostor_pairs`' sample).
    fn expected_impostors(&self, src: &verification::PairSource) -> usize {
        self.max_impostor_pairs
            .map_or(src.impostor, |m| src.impostor.min(m as usize))
    }

    /// Where one model's pair scores go: thresholds are needed up to FAR
    /// `max(1e-2, operating_far)`.
    fn score_sink(&self, src: &verification::PairSource) -> verification::ScoreSink {
        verification::ScoreSink::new(
            self.expected_impostors(src),
            self.operating_far.max(1e-2),
            verification::EXACT_IMPOSTORS,
        )
    }

    /// The bootstrap behind intervals; None with `bootstrap_replicates: 0`.
    pub(crate) fn bootstrap(&self) -> Option<Bootstrap> {
        (self.bootstrap_replicates > 0).then_some(Bootstrap {
            replicates: self.bootstrap_replicates,
            seed: self.bootstrap_seed,
        })
    }

    /// A gate set on the step or a candidate that this task has no figure for is an error
    /// that names it: `what` the model is ("a landmark model"), how it is `compared`, and
    /// the gates that fit it (`own`, with a `note` after them).
    pub(super) fn refuse_gates_except(
        &self,
        step: &str,
        (what, compared): (&str, &str),
        (own, note): (&[&str], &str),
    ) -> Result<()> {
        let others: Vec<&str> = [
            gate::RECOGNITION,
            gate::DETECTION,
            gate::LANDMARKS,
            gate::ATTRIBUTE,
            gate::SWAPPER,
        ]
        .concat()
        .into_iter()
        .filter(|k| !own.contains(k))
        .collect();
        let set = std::iter::once(&self.gates)
            .chain(self.candidate_gates.values())
            .find_map(|g| g.set_among(&others).first().copied());
        match set {
            None => Ok(()),
            Some(k) => {
                let list = match own.split_last() {
                    Some((last, rest)) if !rest.is_empty() => {
                        format!("{} and {last}", rest.join(", "))
                    }
                    _ => own.join(""),
                };
                Err(Error::Step {
                    step: step.to_string(),
                    message: format!("`{k}` is set on {what}: {compared}"),
                    hint: Some(format!("gate it with {list}{note}")),
                })
            }
        }
    }
}

/// The params compare takes besides gates (for the unknown-key message).
const COMPARE_KEYS: &[&str] = &[
    "dataset",
    "identity_threshold",
    "candidates",
    "batch",
    "precision_hint",
    "threads",
    "operating_far",
    "max_impostor_pairs",
    "sample_seed",
    "candidate_gates",
    "input_sizes",
    "match_iou",
    "bootstrap_replicates",
    "bootstrap_seed",
    "lfw_flip",
];

/// An embedder candidate's gates, by the one rule (metrics::gate): a TAR or flips gate on a
/// dataset without identities is "not measured", and fails unless the gates say
/// `missing: pass`.
fn recognition_gates(
    gates: &Gates,
    cosine_min: f64,
    verification: Option<&CandidateVerification>,
    intervals: &BTreeMap<String, Spread>,
    dataset: &str,
) -> Vec<gate::GateResult> {
    gates.check(gate::RECOGNITION, Naming::Figure, |m| {
        let no_ids = || {
            Measurement::NotMeasured(format!(
                "dataset `{dataset}` has no identities (add `pairs:` or a folder per person)"
            ))
        };
        let measured = match (m.key, verification) {
            ("cosine_min", _) => Measurement::Value(cosine_min),
            (_, None) => no_ids(),
            ("tar_drop_max", Some(v)) => match v.tar_at_operating_far {
                Some(t) => Measurement::Value(t.drop),
                None => Measurement::NotMeasurable(format!(
                    "the operating FAR is below the set's resolution {:.2e} (1 / impostor pairs); lower `operating_far` needs more impostor pairs",
                    v.candidate.far_resolution
                )),
            },
            (_, Some(v)) => Measurement::Value(v.flips_at_reference_threshold as f64),
        };
        (measured.with_spread(intervals.get(m.figure)), None)
    })
}

/// Embeddings of every image, and the inference time in ms.
type Embedded = (Vec<Vec<f32>>, u64);

/// `embed`, and with `flip` also of every image mirrored left-right (the LFW protocol's
/// flip: InsightFace mirrors the preprocessed NCHW batch along W).
fn embed_with_flip(
    model: &mut dyn LoadedModel,
    input: &str,
    t: &Array4<f32>,
    batch: usize,
    flip: bool,
) -> Result<WithFlip> {
    let plain = embed(model, input, t, batch)?;
    let flipped = if flip {
        let mirrored = t.slice(s![.., .., .., ..;-1]).to_owned();
        Some(embed(model, input, &mirrored, batch)?.0)
    } else {
        None
    };
    Ok((plain, flipped))
}

/// Embeddings of every image, in batches padded to a fixed size (OpenVINO compiles a static
/// batch). Returns one flattened first output per image, and the inference time.
pub(crate) fn embed(
    model: &mut dyn LoadedModel,
    input: &str,
    t: &Array4<f32>,
    batch: usize,
) -> Result<Embedded> {
    let mut out = Vec::with_capacity(t.shape()[0]);
    let spent = in_batches(
        model,
        &[(input, t.view().into_dyn())],
        batch,
        |(start, end), r| {
            let (name, y) = r
                .first()
                .ok_or_else(|| anyhow::anyhow!("the model gave no output"))?;
            if y.shape().first() != Some(&batch) {
                return Err(anyhow::anyhow!(
                    "output `{name}` has shape {:?}; expected batch {batch} first",
                    y.shape()
                )
                .into());
            }
            out.extend(
                (0..end - start).map(|i| y.index_axis(Axis(0), i).iter().copied().collect()),
            );
            Ok(())
        },
    )?;
    Ok((out, spent.as_millis() as u64))
}

/// Run `model` over every row of `feed`, `batch` rows at a time (the last batch padded with
/// zeros, which fixed-batch models need), handing `each` the rows `start..end` and the
/// outputs; the time spent in the model, summed as a Duration (per-batch milliseconds would
/// truncate fast batches to zero).
pub(crate) fn in_batches(
    model: &mut dyn LoadedModel,
    feed: &[(&str, ndarray::ArrayViewD<f32>)],
    batch: usize,
    mut each: impl FnMut((usize, usize), &[crate::runtime::NamedTensor]) -> Result<()>,
) -> Result<std::time::Duration> {
    let n = feed.first().map_or(0, |(_, t)| t.shape()[0]);
    let mut spent = std::time::Duration::ZERO;
    let mut start = 0;
    while start < n {
        let end = (start + batch).min(n);
        let x = batch_of(feed, (start, end), batch);
        let t0 = Instant::now();
        let out = model.run(&x)?;
        spent += t0.elapsed();
        each((start, end), &out)?;
        start = end;
    }
    Ok(spent)
}

/// Borrowed views of a feed's inputs, for [`batch_of`] and [`in_batches`].
pub(crate) fn views_of(
    feed: &[crate::runtime::NamedTensor],
) -> Vec<(&str, ndarray::ArrayViewD<'_, f32>)> {
    feed.iter().map(|(n, t)| (n.as_str(), t.view())).collect()
}

/// A worker thread's result; a panic there becomes the step's error, not the process's.
fn join_inference<T>(h: std::thread::ScopedJoinHandle<'_, Result<T>>) -> Result<T> {
    h.join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("an inference thread panicked").into()))
}

/// The one batch every model of a lockstep comparison runs at: the first fixed batch dim
/// among `models` (a dynamic-batch model takes any batch), else `want`.
pub(crate) fn common_batch<'a>(
    models: impl IntoIterator<Item = &'a dyn LoadedModel>,
    want: usize,
) -> usize {
    models
        .into_iter()
        .map(|m| batch_for(m, 0))
        .find(|&b| b > 0)
        .unwrap_or(want)
}

/// The batch a model can take: `want` when its batch dim is dynamic, else its fixed size.
pub(crate) fn batch_for(model: &dyn LoadedModel, want: usize) -> usize {
    match model.inputs().first().and_then(|(_, s)| s.first().copied()) {
        Some(d) if d > 0 => d as usize,
        _ => want,
    }
}

fn norms(e: &[Vec<f32>]) -> Vec<f64> {
    e.iter()
        .map(|v| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt())
        .collect()
}

fn mean_std(x: &[f64]) -> (f64, f64) {
    let m = x.iter().sum::<f64>() / x.len().max(1) as f64;
    let v = x.iter().map(|a| (a - m).powi(2)).sum::<f64>() / x.len().max(1) as f64;
    (m, v.sqrt())
}

/// Decode and prepare `files` for the feed (in parallel, memoized), showing images decoded
/// per second; the step's timing map starts with how long it took.
pub(crate) fn prepare_images(
    ctx: &StepContext,
    files: &[camino::Utf8PathBuf],
    pre: &Preprocessing,
    aligner: Option<&crate::preprocess::align::Aligner>,
) -> Result<(
    crate::preprocess::Prepared,
    BTreeMap<String, serde_json::Value>,
)> {
    ctx.progress
        .set_message(format!("preparing {} images", files.len()));
    let t_prep = Instant::now();
    let prepared = crate::preprocess::prepare_with_progress(
        ctx.store,
        files,
        &ctx.feed(pre, aligner),
        &|done, total| {
            let rate = done as f64 / t_prep.elapsed().as_secs_f64().max(1e-9);
            ctx.progress.set_message(format!(
                "decoded {done}/{total} images ({rate:.0} images/s)"
            ));
        },
    )?;
    let mut timing = BTreeMap::new();
    timing.insert(
        "prepare_ms".to_string(),
        json!({"ms": prepared.prepare_ms, "from_cache": prepared.cached}),
    );
    Ok((prepared, timing))
}

/// A validation set as the kinds that feed one tensor per image take it: its files, the
/// dataset's aligner, the prepared tensor, and the timing map its preparation starts.
pub(crate) struct PreparedSet {
    pub files: Vec<camino::Utf8PathBuf>,
    pub aligner: Option<crate::preprocess::align::Aligner>,
    pub prepared: crate::preprocess::Prepared,
    pub timing: BTreeMap<String, serde_json::Value>,
}

/// Compare's dataset, listed, aligned when it says so, and prepared for the model.
pub(crate) fn prepare_set(
    ctx: &StepContext,
    p: &CompareParams,
    pre: &Preprocessing,
) -> Result<PreparedSet> {
    let spec = &ctx.manifest.datasets[&p.dataset];
    let files = crate::preprocess::list_images(&ctx.datasets[&p.dataset], spec.count, spec.seed)?;
    let aligner = ctx.aligner(&p.dataset)?;
    let (prepared, timing) = prepare_images(ctx, &files, pre, aligner.as_ref())?;
    Ok(PreparedSet {
        files,
        aligner,
        prepared,
        timing,
    })
}

/// The report of a compare kind that decodes no detections: `task`, the set, the reference,
/// and every candidate with the failures.
pub(crate) fn task_report(
    ctx: &StepContext,
    p: &CompareParams,
    (task, set): (&str, &PreparedSet),
    reference: ExecutionInfo,
    (candidates, failures): (Vec<CandidateReport>, Vec<String>),
) -> CompareReport {
    CompareReport {
        schema: report::SCHEMA.into(),
        step: ctx.step.name.clone(),
        kind: "compare".into(),
        task: Some(task.into()),
        passed: failures.is_empty(),
        detector: None,
        match_iou: None,
        landmarks: None,
        swapper: None,
        model_note: None,
        dataset: DatasetSummary {
            name: p.dataset.clone(),
            images: set.files.len(),
            fit: Some(set.prepared.fit_counts()),
            ..Default::default()
        },
        reference: ReferenceSummary::onnx(reference),
        candidates,
        failures,
        toolchain: ctx.toolchain.fingerprint(TOOLCHAIN),
    }
}

/// The end of a report.md after the kind's account of its set: the reference, the
/// candidates' table under `head`, and the failed gates.
pub(crate) fn table_md(r: &CompareReport, head: &[&str], rows: &[String]) -> String {
    let e = &r.reference.execution;
    let mut s = format!(
        "Reference: ONNX original in {} {} ({}).\n\n",
        e.runtime, e.version, e.precision
    );
    s += &format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len()));
    for row in rows {
        s += row;
        s.push('\n');
    }
    s + &failed_gates_md(&r.failures)
}

/// The "Failed gates" list that ends a report.md (nothing when every gate passed).
pub(crate) fn failed_gates_md(failures: &[String]) -> String {
    if failures.is_empty() {
        return String::new();
    }
    let mut s = "\nFailed gates:\n".to_string();
    for x in failures {
        s += &format!("- {x}\n");
    }
    s
}

/// Pairs scored so far, with a rate, on the step's progress line.
fn pairs_progress(ctx: &StepContext, who: &str, done: usize, total: usize, since: Instant) {
    let rate = done as f64 / since.elapsed().as_secs_f64().max(1e-9);
    ctx.progress.set_message(format!(
        "{who}: scored {done}/{total} pairs ({:.1} M pairs/s)",
        rate / 1e6
    ));
}

/// A candidate loaded in its runtime, with what describes it in reports.
pub(crate) struct Loaded {
    pub model: Box<dyn LoadedModel>,
    pub artifact: &'static str,
    /// The artifact's own precision (fp32/fp16/int8), from its convert report.
    pub weights: String,
    pub hint: String,
    pub load_ms: u64,
}

/// Why a candidate was not compared.
#[derive(Debug, Clone)]
pub(crate) enum NotCompared {
    /// Its step was unavailable (TensorRT absent), or its engine cannot run on this machine:
    /// reported as such, neither passed nor failed.
    Unavailable(String),
    /// Its step failed or was skipped: its gates judge the missing figures by the one rule
    /// (they fail unless `missing: pass`).
    Failed(String),
}

/// Record a candidate that could not be compared: a table row of `columns` cells, its
/// report entry, and (when its step failed) its gates on the missing figures, `keys` of
/// `gates`, with any failure added to `failures`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_not_compared(
    label: &str,
    step: &str,
    why: &NotCompared,
    columns: usize,
    (gates, keys): (&Gates, &[&str]),
    table: &mut Vec<String>,
    candidates: &mut Vec<CandidateReport>,
    failures: &mut Vec<String>,
) {
    match why {
        NotCompared::Unavailable(why) => {
            table.push(format!(
                "| {label} | - | unavailable: {why} |{} not compared |",
                " - |".repeat(columns - 4)
            ));
            candidates.push(CandidateReport {
                label: label.into(),
                step: step.into(),
                available: Some(false),
                unavailable: Some(why.into()),
                ..Default::default()
            });
        }
        NotCompared::Failed(why) => {
            // The first line names the failure; the step's own report has the rest.
            let first = why.lines().next().unwrap_or_default();
            let results = gates.check(keys, Naming::Figure, |_| {
                (Measurement::NotMeasured(first.to_string()), None)
            });
            let passed = note_failures(label, "not built", &results, failures);
            table.push(format!(
                "| {label} | - | failed: {} |{} {} |",
                first.replace('|', "\\|"),
                " - |".repeat(columns - 4),
                if passed { "pass" } else { "**FAIL**" }
            ));
            candidates.push(CandidateReport {
                label: label.into(),
                step: step.into(),
                failed: Some(why.clone()),
                gates: Some(results),
                passed: Some(passed),
                ..Default::default()
            });
        }
    }
}

/// Write `report.md` beside report.json; when a gate failed, fail the step with every
/// failure (`what`: "fidelity", "output" or "detection"), the reports kept as evidence.
fn write_markdown_or_fail(
    ctx: &StepContext,
    md: String,
    report: &CompareReport,
    what: &str,
) -> Result<camino::Utf8PathBuf> {
    let md_path = ctx.workdir.join("report.md");
    std::fs::write(&md_path, md).map_err(|e| Error::io(&md_path, e))?;
    if !report.passed {
        return Err(Error::Step {
            step: ctx.step.name.clone(),
            message: format!("{what} gate failed: {}", report.failures.join("; ")),
            hint: Some("see report.md beside report.json for every candidate's figures".into()),
        });
    }
    Ok(md_path)
}

/// Add every failed gate of a candidate to `failures`, in words naming the candidate and
/// what ran (`what`); true when every gate passed.
pub(crate) fn note_failures(
    label: &str,
    what: &str,
    gates: &[gate::GateResult],
    failures: &mut Vec<String>,
) -> bool {
    for g in gates.iter().filter(|g| !g.passed) {
        failures.push(format!("candidate `{label}` ({what}): {}", g.describe()));
    }
    gates.iter().all(|g| g.passed)
}

/// The summary's word on candidates: how many were unavailable, and every candidate's gates
/// (value, limit, verdict, interval) under `gates.<label>`, for `run --json` (an object, so
/// the text summary line leaves it out).
fn note_candidates(summary: &mut serde_json::Value, candidates: &[CandidateReport]) {
    let n = candidates
        .iter()
        .filter(|c| c.available == Some(false))
        .count();
    if n > 0 {
        summary["unavailable"] = json!(n);
    }
    let gates: serde_json::Map<String, serde_json::Value> = candidates
        .iter()
        .filter_map(|c| Some((c.label.clone(), json!(c.gates.as_ref()?))))
        .collect();
    if !gates.is_empty() {
        summary["gates"] = serde_json::Value::Object(gates);
    }
}

pub(crate) fn load_candidate(
    ctx: &StepContext,
    p: &CompareParams,
    cand: &CandidateSpec,
    ort: &OnnxRuntime,
) -> Result<std::result::Result<Loaded, NotCompared>> {
    if let Some(why) = ctx.failed.get(cand.step()) {
        return Ok(Err(NotCompared::Failed(why.clone())));
    }
    let Some(outputs) = ctx.upstream.get(cand.step()) else {
        return Ok(Err(NotCompared::Unavailable(super::unavailable_upstream(
            cand.step(),
        ))));
    };
    let hint = cand
        .detail()
        .and_then(|d| d.precision_hint.clone())
        .unwrap_or_else(|| p.precision_hint.clone());
    let info = super::artifact_info(outputs)?;
    let t_load = Instant::now();
    let (model, artifact): (Box<dyn LoadedModel>, &str) = if let (Some(xml), Some(bin)) =
        (outputs.get("model.xml"), outputs.get("model.bin"))
    {
        let settings = OpenVinoSettings {
            precision_hint: if hint == "default" {
                None
            } else {
                Some(hint.clone())
            },
            threads: p.threads,
            ..Default::default()
        };
        (
            OpenVino::new(ctx.toolchain, settings)?
                .with_batch(p.batch)
                .load_ir(xml, bin)?,
            "openvino-ir",
        )
    } else if let Some(engine) = outputs.get("model.engine") {
        if info.standin {
            return Ok(Err(NotCompared::Unavailable(format!(
                "{}: nothing to run",
                super::STANDIN_ENGINE
            ))));
        }
        // The Python with TensorRT and cuda-python: the manifest's, else the toolchain's.
        let python = ctx
            .manifest
            .toolchain
            .tensorrt
            .as_ref()
            .and_then(|t| t.python.clone())
            .map(|p| ctx.manifest.resolve(&p))
            .unwrap_or_else(|| ctx.toolchain.python());
        if let Err(e) = crate::toolchain::tensorrt::check_python(&python) {
            return Ok(Err(NotCompared::Unavailable(format!(
                "cannot run TensorRT engines here: {e} (set `toolchain.tensorrt.python` to a Python with tensorrt and cuda-python)"
            ))));
        }
        (
            crate::runtime::tensorrt::TensorRtRuntime {
                python,
                standin: false,
            }
            .load(engine)?,
            "tensorrt-engine",
        )
    } else if let Some(onnx) = outputs.get("model.onnx") {
        (ort.load(onnx)?, "onnx")
    } else {
        return Err(Error::Step {
            step: ctx.step.name.clone(),
            message: format!(
                "candidate `{}` has no model output (model.onnx, model.xml or model.engine)",
                cand.step()
            ),
            hint: Some("candidates are convert, quantize or simplify steps".into()),
        });
    };
    // An INT8 artifact runs its quantized ops in int8 whatever the hint says for the rest.
    Ok(Ok(Loaded {
        model,
        artifact,
        weights: info.precision,
        hint,
        load_ms: t_load.elapsed().as_millis() as u64,
    }))
}

pub(crate) fn run(ctx: &StepContext, p: &CompareParams) -> Result<StepOutcome> {
    let t_total = Instant::now();
    let step = &ctx.step.name;
    let pre = preprocessing(ctx)?;
    if let Some(other) = route(ctx, p, pre)? {
        return Ok(other);
    }
    let input = ctx.manifest.model.input.name.clone();
    let (spec, dir) = (
        &ctx.manifest.datasets[&p.dataset],
        &ctx.datasets[&p.dataset],
    );
    let files = crate::preprocess::list_images(dir, spec.count, spec.seed)?;
    let mut pairs = pairs_of(ctx, &p.dataset, &files)?;
    let flip = pairs::flip_for(p, pairs.as_ref(), step)?;
    let units = pairs::units_of(&files, dir, pairs.as_ref());
    let aligner = ctx.aligner(&p.dataset)?;
    let split = split_threads(p);
    let (prepared, mut timing) = prepare_images(ctx, &files, pre, aligner.as_ref())?;
    ctx.check_cancelled()?;
    ctx.progress.set_message("loading models");
    // Reference: the ONNX original in ONNX Runtime, fp32.
    let t_load = Instant::now();
    let ort = OnnxRuntime::new(ctx.toolchain, split.threads)?;
    let mut reference = ort.load(ctx.model)?;
    let load_ms = t_load.elapsed().as_millis() as u64;
    let mut loaded = load_all(ctx, &split, &files, aligner.as_ref(), &ort)?;
    let ref_batch = batch_for(reference.as_ref(), p.batch);
    ctx.check_cancelled()?;
    ctx.progress.set_message(format!(
        "inference: reference and {} candidate(s) on {} image(s)",
        loaded.iter().filter(|(l, _)| l.is_ok()).count(),
        files.len()
    ));
    let t_inference = Instant::now();
    let (ref_run, cand_runs) = infer_all(
        p,
        (&input, &prepared.tensor, flip),
        (reference.as_mut(), ref_batch),
        &mut loaded,
    );
    // Wall time of all models together; each model's own time is under its name.
    timing.insert(
        "inference_wall_ms".to_string(),
        json!(t_inference.elapsed().as_millis() as u64),
    );
    let ((ref_emb, ms), ref_flipped) = ref_run?;
    timing.insert(
        "reference".to_string(),
        json!({"ms": ms, "load_ms": load_ms, "batch": ref_batch}),
    );
    let ref_norms = norms(&ref_emb);
    let ref_unit = similarity::normalized(&ref_emb);
    // The reference's scores, sorted once for its figures and every candidate's TAR. With
    // `max_impostor_pairs`, every score set keeps the same seeded sample of impostors.
    let t_score = Instant::now();
    let (ref_sorted, sample) = score_reference(ctx, p, &mut pairs, &ref_unit, t_score);
    let ref_ver = ref_sorted
        .as_ref()
        .map(|s| verification::verification_of(s, p.operating_far));
    let ref_lfw = pairs
        .as_ref()
        .and_then(|(set, src)| pairs::lfw_figures(&ref_emb, ref_flipped.as_deref(), set, src));
    timing.insert(
        "reference_scoring_ms".to_string(),
        json!(t_score.elapsed().as_millis() as u64),
    );
    let r = RefFigures {
        emb: &ref_emb,
        norms: &ref_norms,
        unit: &ref_unit,
        pairs: pairs.as_ref(),
        sorted: ref_sorted.as_ref(),
        verification: ref_ver.as_ref(),
        lfw: ref_lfw.as_ref(),
        sample: sample.as_ref(),
        units: &units,
    };
    let (candidates, failures, table, ref_ci) =
        compare_candidates(ctx, p, loaded, cand_runs, &r, &mut timing)?;
    let passed = failures.is_empty();
    let (ref_mean, ref_std) = mean_std(&ref_norms);
    let report = CompareReport {
        schema: report::SCHEMA.into(),
        step: step.clone(),
        kind: "compare".into(),
        task: None,
        passed,
        detector: None,
        match_iou: None,
        landmarks: None,
        swapper: None,
        model_note: None,
        dataset: DatasetSummary {
            name: p.dataset.clone(),
            images: files.len(),
            fit: Some(prepared.fit_counts()),
            pairs: pairs.as_ref().map(|(_, s)| s.clone()),
            input_sizes: None,
            resampling: p.bootstrap().map(|b| units.resampling(&b)),
            faces: None,
        },
        reference: ReferenceSummary {
            verification: ref_ver.map(|v| v.with_ci95(ref_ci.unwrap_or_default())),
            operating_far: Some(p.operating_far),
            lfw: ref_lfw,
            norm: Some(MeanStd {
                mean: ref_mean,
                std: ref_std,
            }),
            ..ReferenceSummary::onnx(reference.execution())
        },
        candidates,
        failures,
        toolchain: ctx.toolchain.fingerprint(TOOLCHAIN),
    };
    let summary = json!({"images": files.len(), "candidates": p.candidates.len(), "worst_cosine": worst_cosine(&report.candidates)});
    let md = markdown(ctx, &report, &table);
    finish(ctx, &report, (md, "fidelity"), timing, t_total, summary)
}

/// Rows `start..end` of every input of `feed`, each padded with zeros to `batch` rows (the
/// static batch OpenVINO compiles).
pub(crate) fn batch_of(
    feed: &[(&str, ndarray::ArrayViewD<f32>)],
    (start, end): (usize, usize),
    batch: usize,
) -> Vec<crate::runtime::NamedTensor> {
    feed.iter()
        .map(|(name, t)| {
            let mut shape = t.shape().to_vec();
            shape[0] = batch;
            let mut b = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&shape));
            b.slice_axis_mut(Axis(0), (0..end - start).into())
                .assign(&t.slice_axis(Axis(0), (start..end).into()));
            (name.to_string(), b)
        })
        .collect()
}

/// A dataset's verification pairs over `files` (a list of its images), when it has any.
pub(crate) fn pairs_of(
    ctx: &StepContext,
    dataset: &str,
    files: &[camino::Utf8PathBuf],
) -> Result<Option<(similarity::PairSet, verification::PairSource)>> {
    let spec = &ctx.manifest.datasets[dataset];
    let dir = &ctx.datasets[dataset];
    verification::pairs_for(
        files,
        dir,
        spec.pairs_file().map(|f| dir.join(f)).as_deref(),
        spec.is_bin(),
    )
}

/// The model's preprocessing, which compare needs to turn images into tensors.
fn preprocessing<'a>(ctx: &StepContext<'a>) -> Result<&'a Preprocessing> {
    ctx.manifest.model.preprocessing.as_ref().ok_or_else(|| Error::Step {
        step: ctx.step.name.clone(),
        message: "compare needs `model.preprocessing` to turn images into tensors".into(),
        hint: Some("declare `model.preprocessing: {color: RGB, mean: [127.5,127.5,127.5], std: [127.5,127.5,127.5], size: [112, 112]}`".into()),
    })
}

/// Reference and candidates run side by side, each on its share of the cores: these models
/// take a static batch of one, where a second intra-op thread buys little (MobileFaceNet:
/// 3.5 ms on one thread, 2.1 ms on two), so one thread per model finishes sooner than the
/// models one after another on every core.
fn split_threads(p: &CompareParams) -> CompareParams {
    CompareParams {
        threads: p.threads.or_else(|| {
            let models = 1 + p.candidates.len();
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (models > 1).then(|| (cores / models).max(1))
        }),
        ..p.clone()
    }
}

/// The end every compare kind shares: report.json and report.md written (the step fails on
/// a failed gate, `what` naming the gates), the total time added to `timing`, and the step's
/// summary: the kind's own figures, then the timing, then every candidate's gates.
pub(crate) fn finish(
    ctx: &StepContext,
    report: &CompareReport,
    (md, what): (String, &str),
    mut timing: BTreeMap<String, serde_json::Value>,
    t_total: Instant,
    mut summary: serde_json::Value,
) -> Result<StepOutcome> {
    // A built-in model's figures say so, in both reports.
    let mut report = report.clone();
    report.model_note = builtin_note(ctx);
    let md = match (&report.model_note, md.split_once("\n\n")) {
        (Some(n), Some((head, rest))) => format!("{head}\n\n> {n}\n\n{rest}"),
        _ => md,
    };
    let report = &report;
    let report_path = super::write_report(ctx.workdir, "report.json", report)?;
    let md_path = write_markdown_or_fail(ctx, md, report, what)?;
    timing.insert(
        "total_ms".to_string(),
        json!(t_total.elapsed().as_millis() as u64),
    );
    summary["timing"] = json!(timing);
    note_candidates(&mut summary, &report.candidates);
    Ok(StepOutcome {
        outputs: [
            ("report.json".to_string(), report_path),
            ("report.md".to_string(), md_path),
        ]
        .into(),
        summary,
    })
}

/// For a built-in model (no `model.path`): what its figures can and cannot say.
fn builtin_note(ctx: &StepContext) -> Option<String> {
    ctx.manifest.model.path.is_none().then(|| {
        format!(
            "The model is facebuild's built-in `{}`, with seeded random weights: these figures prove the pipeline's plumbing (feeding, conversion, comparison, gates), not a trained model's fidelity.",
            ctx.manifest.model.builtin.as_deref().unwrap_or("iresnet-mini")
        )
    })
}

/// The smallest cosine over every candidate (1 when none was compared).
fn worst_cosine(candidates: &[CandidateReport]) -> f64 {
    candidates
        .iter()
        .filter_map(|c| c.cosine.map(|s| s.min))
        .fold(1.0, f64::min)
}

/// Models other than embedders are compared by their own kind's code; gates of another
/// task are refused. None for a recognition model, which `run` compares.
fn route(ctx: &StepContext, p: &CompareParams, pre: &Preprocessing) -> Result<Option<StepOutcome>> {
    let step = &ctx.step.name;
    let task = ctx.manifest.model.task;
    let tolerance = p.gates.has_tolerance() || p.candidate_gates.values().any(Gates::has_tolerance);
    match task {
        Task::Generic => return outputs::run(ctx, p, pre).map(Some),
        Task::Landmarks | Task::Attribute if tolerance => {
            return outputs::run(ctx, p, pre).map(Some);
        }
        Task::Landmarks => return landmarks::run(ctx, p, pre).map(Some),
        Task::Attribute => return attribute::run(ctx, p, pre).map(Some),
        Task::Swapper => return swapper::run(ctx, p, pre).map(Some),
        _ if tolerance => {
            return Err(Error::Step {
                step: step.clone(),
                message: "`atol`/`rtol` are per-output tolerances: they apply to `generic`, `landmarks` and `attribute` models".into(),
                hint: Some(if task == Task::Detection {
                    "gate detectors with recall_min, score_drift_max, landmark_nme_max...".into()
                } else {
                    "gate embedders with cosine_min, tar_drop_max and flips_max".into()
                }),
            });
        }
        Task::Detection => return detection::run(ctx, p, pre).map(Some),
        Task::Recognition => {}
    }
    p.refuse_gates_except(
        step,
        (
            "a recognition model",
            "its embeddings are compared by cosine and verification",
        ),
        (gate::RECOGNITION, ""),
    )?;
    Ok(None)
}

/// A candidate as loaded (or why not), with its own prepared images when it has its own
/// preprocessing.
type LoadedCandidate = (
    std::result::Result<Loaded, NotCompared>,
    Option<crate::preprocess::Prepared>,
);

/// Load every candidate, and prepare the images of those with their own preprocessing.
fn load_all(
    ctx: &StepContext,
    p: &CompareParams,
    files: &[camino::Utf8PathBuf],
    aligner: Option<&crate::preprocess::align::Aligner>,
    ort: &OnnxRuntime,
) -> Result<Vec<LoadedCandidate>> {
    let loaded = p
        .candidates
        .iter()
        .map(|cand| load_candidate(ctx, p, cand, ort))
        .collect::<Result<Vec<_>>>()?;
    loaded
        .into_iter()
        .zip(&p.candidates)
        .map(|(l, cand)| {
            let own = match (&l, cand.detail().and_then(|d| d.preprocessing.as_ref())) {
                (Ok(_), Some(pp)) => Some(crate::preprocess::prepare(
                    ctx.store,
                    files,
                    &ctx.feed(pp, aligner),
                )?),
                _ => None,
            };
            Ok((l, own))
        })
        .collect::<Result<Vec<_>>>()
}

/// A model's embeddings, and with `lfw_flip` those of the mirrored images.
type WithFlip = (Embedded, Option<Vec<Vec<f32>>>);

/// A candidate's embeddings, with the batch it ran.
type CandidateRun = Result<(WithFlip, usize)>;

/// Reference and candidates side by side, each on its own thread.
fn infer_all(
    p: &CompareParams,
    (input, tensor, flip): (&str, &Array4<f32>, bool),
    (reference, ref_batch): (&mut dyn LoadedModel, usize),
    loaded: &mut [LoadedCandidate],
) -> (Result<WithFlip>, Vec<Option<CandidateRun>>) {
    std::thread::scope(|s| {
        let r = s.spawn(move || embed_with_flip(reference, input, tensor, ref_batch, flip));
        let c: Vec<_> = loaded
            .iter_mut()
            .map(|(l, own)| {
                let own = own.as_ref().map(|o| o.tensor.as_ref());
                l.as_mut().ok().map(|l| {
                    let model = l.model.as_mut();
                    s.spawn(move || {
                        let batch = batch_for(model, p.batch);
                        embed_with_flip(model, input, own.unwrap_or(tensor), batch, flip)
                            .map(|e| (e, batch))
                    })
                })
            })
            .collect();
        (
            join_inference(r),
            c.into_iter()
                .map(|h| h.map(join_inference))
                .collect::<Vec<_>>(),
        )
    })
}

/// The reference's scores, sorted once for its figures and every candidate's TAR. With
/// `max_impostor_pairs`, every score set keeps the same seeded sample of impostors, and the
/// pair source says so.
fn score_reference(
    ctx: &StepContext,
    p: &CompareParams,
    pairs: &mut Option<(similarity::PairSet, verification::PairSource)>,
    ref_unit: &ndarray::Array2<f32>,
    t_score: Instant,
) -> (
    Option<verification::SortedScores>,
    Option<verification::ImpostorSample>,
) {
    let sample = pairs.as_ref().and_then(|(_, src)| {
        p.max_impostor_pairs
            .and_then(|m| verification::ImpostorSample::new(m, src.impostor as u64, p.sample_seed))
    });
    let ref_sorted = pairs.as_ref().map(|(set, src)| {
        let mut scores = p.score_sink(src);
        let mut sample = sample.clone();
        similarity::for_each_score(
            &[ref_unit],
            set,
            |_, _, same, s| {
                if same || sample.as_mut().is_none_or(|x| x.keep()) {
                    scores.push(same, s[0] as f64)
                }
            },
            |done, total| pairs_progress(ctx, "reference", done, total, t_score),
        );
        scores.finish()
    });
    if let (Some((_, src)), Some(r), Some(m)) = (pairs.as_mut(), &ref_sorted, p.max_impostor_pairs)
        && sample.is_some()
    {
        src.sampled = Some(verification::SampledImpostors {
            max_impostor_pairs: m,
            seed: p.sample_seed,
            kept: r.impostor_pairs(),
        });
    }
    (ref_sorted, sample)
}

/// Every candidate's report, the failed gates, report.md's table rows, and the reference's
/// pair intervals.
type Compared = (
    Vec<CandidateReport>,
    Vec<String>,
    Vec<String>,
    Option<verification::VerificationCi95>,
);

/// Every candidate against the reference: their reports, failed gates and table rows, and
/// the reference's pair intervals.
fn compare_candidates(
    ctx: &StepContext,
    p: &CompareParams,
    loaded: Vec<LoadedCandidate>,
    cand_runs: Vec<Option<CandidateRun>>,
    r: &RefFigures<'_>,
    timing: &mut BTreeMap<String, serde_json::Value>,
) -> Result<Compared> {
    let (mut candidates, mut failures, mut table, mut ref_ci) =
        (Vec::new(), Vec::new(), Vec::new(), None);
    for ((cand, (l, own)), run) in p.candidates.iter().zip(loaded).zip(cand_runs) {
        ctx.check_cancelled()?;
        let label = cand.label();
        ctx.progress.set_message(format!("candidate {label}"));
        let (
            Loaded {
                model,
                artifact,
                weights,
                hint,
                load_ms,
            },
            run,
        ) = match (l, run) {
            (Ok(l), Some(run)) => (l, run),
            (Err(why), _) => {
                record_not_compared(
                    &label,
                    cand.step(),
                    &why,
                    11,
                    (&p.gates_for(&label), gate::RECOGNITION),
                    &mut table,
                    &mut candidates,
                    &mut failures,
                );
                continue;
            }
            // Every loaded candidate was given a thread above.
            (Ok(_), None) => {
                return Err(anyhow::anyhow!("candidate `{label}` was loaded but not run").into());
            }
        };
        let (c, pair_ci) = compare_candidate(
            ctx,
            p,
            cand,
            (model, (artifact, weights), hint, load_ms, own.is_some()),
            run?,
            r,
            (&mut table, &mut failures, timing),
        )?;
        ref_ci = ref_ci.or(pair_ci);
        candidates.push(c);
    }

    Ok((candidates, failures, table, ref_ci))
}

/// What the reference gives every candidate's figures.
struct RefFigures<'a> {
    emb: &'a [Vec<f32>],
    norms: &'a [f64],
    unit: &'a ndarray::Array2<f32>,
    pairs: Option<&'a (similarity::PairSet, verification::PairSource)>,
    sorted: Option<&'a verification::SortedScores>,
    verification: Option<&'a verification::Verification>,
    lfw: Option<&'a metrics::lfw::LfwFigures>,
    sample: Option<&'a verification::ImpostorSample>,
    units: &'a pairs::Units,
}

/// One candidate's figures against the reference: cosine, norm shift, pair figures with
/// their intervals, gates; its table row and timing are added, and its failed gates. With
/// it, the reference's own pair intervals (from the first candidate's bootstrap).
fn compare_candidate(
    ctx: &StepContext,
    p: &CompareParams,
    cand: &CandidateSpec,
    (model, (artifact, weights), hint, load_ms, own_pre): (
        Box<dyn LoadedModel>,
        (&'static str, String),
        String,
        u64,
        bool,
    ),
    run: (WithFlip, usize),
    r: &RefFigures<'_>,
    (table, failures, timing): (
        &mut Vec<String>,
        &mut Vec<String>,
        &mut BTreeMap<String, serde_json::Value>,
    ),
) -> Result<(CandidateReport, Option<verification::VerificationCi95>)> {
    let (step, label) = (&ctx.step.name, cand.label());
    let (((emb, ms), flipped), batch) = run;
    let exec: ExecutionInfo = model.execution();
    if emb.first().map(Vec::len) != r.emb.first().map(Vec::len) {
        return Err(Error::Step {
            step: step.clone(),
            message: format!(
                "candidate `{label}` gives {}-d outputs, the reference {}-d",
                emb[0].len(),
                r.emb[0].len()
            ),
            hint: None,
        });
    }

    let (cos, cs, max_abs) = cosine_figures(r.emb, &emb);
    let (rm, rs) = mean_std(r.norms);
    let (cm, csd) = mean_std(&norms(&emb));
    let (verification, pair_intervals, scoring_ms) = match (r.pairs, r.verification, r.sorted) {
        (Some((set, src)), Some(rv), Some(sorted)) => {
            let reference = pairs::Reference {
                set,
                src,
                unit: r.unit,
                sorted,
                verification: rv,
                sample: r.sample.cloned(),
                lfw: r.lfw,
            };
            let (v, i, ms) = pairs::verify_candidate(
                ctx,
                p,
                &label,
                &reference,
                (&emb, flipped.as_deref()),
                r.units,
            );
            (Some(v), i, ms)
        }
        _ => (None, None, 0),
    };
    let ref_ci = pair_intervals.as_ref().map(|i| pairs::ci95_of(Some(i), 0));
    let (intervals, cosine_min_ci95) =
        pairs::figure_intervals(p, &cos, r.units, pair_intervals.as_ref());
    timing.insert(
        label.clone(),
        json!({"ms": ms, "load_ms": load_ms, "batch": batch, "step": cand.step(), "precision_hint": hint, "scoring_ms": scoring_ms}),
    );
    let gates = recognition_gates(
        &p.gates_for(&label),
        cs.min,
        verification.as_ref(),
        &intervals,
        &p.dataset,
    );
    let what = format!("{artifact} {weights}, executed {}", exec.precision);
    let passed = note_failures(&label, &what, &gates, failures);
    table.push(row(
        &label,
        &format!("{artifact} {weights}"),
        &exec.precision,
        (&cs, cm / rm - 1.0, max_abs),
        verification.as_ref(),
        passed,
    ));
    let report = CandidateReport {
        label: label.clone(),
        step: cand.step().into(),
        artifact: Some(artifact.into()),
        artifact_precision: Some(weights),
        execution: Some(exec),
        preprocessing: Some(
            if own_pre {
                "candidate's own"
            } else {
                "model.preprocessing"
            }
            .into(),
        ),
        cosine: Some(cs),
        cosine_min_ci95,
        max_abs_error: Some(max_abs),
        cosine_per_image: Some(cos.iter().map(|c| (c * 1e6).round() / 1e6).collect()),
        norm: Some(NormShift {
            reference_mean: rm,
            reference_std: rs,
            mean: cm,
            std: csd,
            relative_shift: cm / rm - 1.0,
        }),
        verification,
        intervals: (!intervals.is_empty()).then_some(intervals),
        gates: Some(gates),
        passed: Some(passed),
        ..Default::default()
    };
    Ok((report, ref_ci))
}

/// Per-image cosine against the reference, its summary, and the largest absolute error.
fn cosine_figures(reference: &[Vec<f32>], emb: &[Vec<f32>]) -> (Vec<f64>, Summary, f64) {
    let cos: Vec<f64> = reference
        .iter()
        .zip(emb)
        .map(|(a, b)| metrics::cosine(a, b))
        .collect();
    let max_abs = reference
        .iter()
        .zip(emb)
        .map(|(a, b)| metrics::max_abs_diff(a, b))
        .fold(0.0, f64::max);
    let cs = Summary::of(&cos);
    (cos, cs, max_abs)
}

/// A candidate's row of report.md's table.
fn row(
    label: &str,
    artifact: &str,
    executed: &str,
    (cs, shift, max_abs): (&Summary, f64, f64),
    verification: Option<&CandidateVerification>,
    passed: bool,
) -> String {
    format!(
        "| {label} | {artifact} | {executed} | {:.6} | {:.6} | {:.6} | {:+.4} | {:.3e} | {} | {} | {} |",
        cs.min,
        cs.p01,
        cs.mean,
        shift,
        max_abs,
        match verification {
            Some(v) => measurable(v.tar_at_operating_far.map(|t| t.candidate)),
            None => "-".into(),
        },
        verification
            .map(|v| v.flips_at_reference_threshold.to_string())
            .unwrap_or_else(|| "-".into()),
        if passed { "pass" } else { "**FAIL**" }
    )
}

/// A TAR as the table prints it: four decimals, or why there is none.
fn measurable(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.4}"))
        .unwrap_or_else(|| "not measurable".into())
}

fn markdown(ctx: &StepContext, r: &CompareReport, rows: &[String]) -> String {
    let mut s = format!(
        "# compare `{}` — pipeline `{}`\n\n",
        ctx.step.name, ctx.manifest.name
    );
    let fit = serde_json::to_string(&r.dataset.fit).unwrap_or_default();
    s += &format!(
        "Validation set `{}`: {} images ({fit}); pairs: {}.\n\n",
        r.dataset.name,
        r.dataset.images,
        r.dataset
            .pairs
            .as_ref()
            .map(|ps| format!(
                "{}, {} genuine / {} impostor{}",
                ps.kind,
                ps.genuine,
                ps.impostor,
                ps.sampled
                    .as_ref()
                    .map(|x| format!(
                        " (a seeded sample of {} impostor pairs scored: max_impostor_pairs {}, seed {})",
                        x.kept, x.max_impostor_pairs, x.seed
                    ))
                    .unwrap_or_default()
            ))
            .unwrap_or_else(|| "none (no identities)".into())
    );
    s += &format!(
        "Reference: ONNX original in ONNX Runtime {} ({}).",
        r.reference.execution.version, r.reference.execution.precision
    );
    if let Some(v) = &r.reference.verification {
        s += &format!(
            " Reference TAR@FAR=1e-3 {}, TAR@FAR=1e-2 {}, EER {:.4} (FAR resolution {:.2e}: 1 / impostor pairs).",
            measurable(v.tar_at_far_1e3),
            measurable(v.tar_at_far_1e2),
            v.eer,
            v.far_resolution
        );
        for a in &v.approximate {
            s += &format!(" Approximate: {a}.");
        }
    }
    s += "\n\n| candidate | artifact | executed (hint) | cos min | cos p01 | cos mean | norm shift | max abs | TAR@op FAR | flips | gate |\n|---|---|---|---|---|---|---|---|---|---|---|\n";
    for row in rows {
        s += row;
        s.push('\n');
    }
    s + &r.uncertainty_md() + &failed_gates_md(&r.failures)
}

impl super::Kind for CompareParams {
    fn isa_dependent(&self) -> bool {
        true
    }
    fn impl_version(&self) -> u32 {
        IMPL_VERSION
    }
    fn toolchain_pieces(&self) -> Vec<&'static str> {
        TOOLCHAIN.to_vec()
    }
    fn datasets(&self) -> Vec<String> {
        vec![self.dataset.clone()]
    }
    fn references(&self) -> Vec<String> {
        self.candidates
            .iter()
            .map(|c| c.step().to_string())
            .collect()
    }
    fn reports_failures_of(&self) -> Vec<String> {
        self.references()
    }
    fn check_reference(
        &self,
        target: &str,
        kind: super::StepKind,
    ) -> std::result::Result<(), super::Problem> {
        super::expect_artifact(target, kind)
    }
    fn validate(&self) -> Vec<super::Problem> {
        CompareParams::validate(self).err().into_iter().collect()
    }
    fn run(&self, ctx: &StepContext) -> Result<StepOutcome> {
        run(ctx, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A swapper's identity threshold is a cosine.
    #[test]
    fn identity_threshold_is_a_cosine() {
        let p = |t: &str| -> CompareParams {
            serde_saphyr::from_str(&format!(
                "{{dataset: faces, candidates: [a], identity_threshold: {t}}}"
            ))
            .unwrap()
        };
        assert!(p("0.28").validate().is_ok());
        let (m, _) = p("28").validate().unwrap_err();
        assert!(
            m.contains("`identity_threshold: 28` is not a cosine"),
            "{m}"
        );
    }

    /// A gate of another task, on the step or on one candidate, is refused with the
    /// model's own gates in the hint; the task's own gates pass.
    #[test]
    fn gates_of_another_task_are_refused_with_the_tasks_own() {
        let p = |yaml: &str| -> CompareParams { serde_saphyr::from_str(yaml).unwrap() };
        let own = p("{dataset: faces, candidates: [a], nme_max: 0.1, pose_error_max: 2}");
        let lmk = (
            "a landmark model",
            "its points are compared as NME per face",
        );
        assert!(
            own.refuse_gates_except("c", lmk, (gate::LANDMARKS, ""))
                .is_ok()
        );
        let other = p("{dataset: faces, candidates: [a], candidate_gates: {a: {psnr_min: 30}}}");
        let e = other
            .refuse_gates_except("c", lmk, (gate::LANDMARKS, ""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`psnr_min` is set on a landmark model")
                && e.contains("nme_mean_max, nme_max and pose_error_max"),
            "{e}"
        );
    }

    /// A TAR gate on a dataset without identities is not measured: it fails by the one
    /// rule, and passes only where the gates say `missing: pass`.
    #[test]
    fn missing_tar_follows_the_one_rule() {
        let mut g = Gates {
            cosine_min: Some(0.99),
            tar_drop_max: Some(0.05),
            ..Default::default()
        };
        let r = recognition_gates(&g, 0.995, None, &BTreeMap::new(), "crops");
        assert_eq!(r.len(), 2);
        assert!(r[0].passed, "cosine is measured and within its limit");
        assert!(!r[1].passed);
        assert_eq!(r[1].status.as_deref(), Some("not measured"));
        assert!(
            r[1].describe().contains("has no identities"),
            "{}",
            r[1].describe()
        );
        g.missing = Some(gate::OnMissing::Pass);
        assert!(
            recognition_gates(&g, 0.995, None, &BTreeMap::new(), "crops")
                .iter()
                .all(|x| x.passed)
        );
    }
}
