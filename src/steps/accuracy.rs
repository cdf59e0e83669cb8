//! Accuracy-controlled INT8, for `convert` (OpenVINO, NNCF) and `quantize` (ONNX Runtime
//! Q/DQ): quantize everything and measure; when the metric misses its target, rank the
//! quantizable layers by how much keeping each alone in floating point recovers the metric,
//! then bisect for the fewest top-ranked layers that meet it. Layers stay in floating point
//! through the backends' own exclusions (NNCF `ignored_scope`, ONNX Runtime
//! `nodes_to_exclude`). The metric is `compare`'s, from the same code (decoding, matching,
//! verification), on the named dataset, against the ONNX original in ONNX Runtime. Every
//! trial is memoized in the cache by what it quantized and measured, so a rerun with another
//! target reuses the trials it shares.

use std::collections::{BTreeMap, HashMap};

use camino::Utf8Path;
use serde::{Deserialize, Serialize};

use super::StepContext;
use super::compare::{batch_for, detection, embed};
use crate::cache::{CacheKey, CacheKeyHasher};
use crate::detect::{self, Detection};
use crate::error::{Error, Result};
use crate::manifest::{Preprocessing, Task};
use crate::metrics::{self, similarity, verification};
use crate::runtime::{LoadedModel, Runtime, onnxruntime::OnnxRuntime};

/// Bumped when trials measured by older code must not be reused.
/// 2: a trial's memo holds its recall per face-height stratum.
const TRIAL_VERSION: u64 = 2;

/// `accuracy_control:` on an INT8 `convert` or `quantize` step.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccuracyControl {
    /// The search set (keep the gate's set for `compare`, so the search does not fit it).
    pub dataset: String,
    pub metric: AccuracyMetric,
    /// `recall` and `cosine_min` are floors (>= target); `tar_drop`, `landmark_nme` ceilings.
    pub target: f64,
    /// The most layers the search may keep in floating point.
    #[serde(default = "default_max_fp_layers")]
    pub max_fp_layers: usize,
    /// compare's metric params, with compare's defaults.
    #[serde(default)]
    pub input_sizes: Option<Vec<[u32; 2]>>,
    #[serde(default = "default_match_iou")]
    pub match_iou: f32,
    #[serde(default = "default_operating_far")]
    pub operating_far: f64,
    /// A dataset the result is measured on but never searched on (compare's, typically):
    /// the report then shows whether what the search set showed holds elsewhere.
    #[serde(default)]
    pub holdout: Option<String>,
    /// When everything quantized misses the target, first try the backend's other recipes
    /// (Q/DQ: minmax, entropy, percentile; per-channel or per-tensor), and search layers with
    /// the best. `false` keeps the step's own recipe.
    #[serde(default = "default_search_recipes")]
    pub search_recipes: bool,
    /// Detectors, `recall`: measure recall only on the reference's faces lower than this
    /// fraction of the input height (e.g. 0.05), the ones INT8 loses first.
    #[serde(default)]
    pub face_height_max: Option<f64>,
}

fn default_search_recipes() -> bool {
    true
}

fn default_max_fp_layers() -> usize {
    20
}
fn default_match_iou() -> f32 {
    0.5
}
fn default_operating_far() -> f64 {
    1e-3
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AccuracyMetric {
    Recall,
    CosineMin,
    TarDrop,
    LandmarkNme,
}

impl AccuracyMetric {
    fn name(self) -> &'static str {
        match self {
            AccuracyMetric::Recall => "recall",
            AccuracyMetric::CosineMin => "cosine_min",
            AccuracyMetric::TarDrop => "tar_drop",
            AccuracyMetric::LandmarkNme => "landmark_nme",
        }
    }

    /// A floor (higher is better) or a ceiling.
    fn floor(self) -> bool {
        matches!(self, AccuracyMetric::Recall | AccuracyMetric::CosineMin)
    }

    pub(crate) fn meets(self, value: f64, target: f64) -> bool {
        if self.floor() {
            value >= target
        } else {
            value <= target
        }
    }

    /// How much better `b` is than `a`.
    fn gain(self, a: f64, b: f64) -> f64 {
        if self.floor() { b - a } else { a - b }
    }
}

impl AccuracyControl {
    /// Static checks, with the task the model declares.
    pub(crate) fn validate(&self, task: Task) -> std::result::Result<(), super::Problem> {
        let detection = matches!(
            self.metric,
            AccuracyMetric::Recall | AccuracyMetric::LandmarkNme
        );
        if detection != (task == Task::Detection) {
            return Err((
                format!(
                    "`accuracy_control.metric: {}` does not apply to a `{}` model",
                    self.metric.name(),
                    serde_json::to_value(task)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default()
                ),
                Some(if task == Task::Detection {
                    "detectors are searched on `recall` or `landmark_nme`".into()
                } else {
                    "embedders are searched on `cosine_min` or `tar_drop`".into()
                }),
            ));
        }
        if self.max_fp_layers == 0 {
            return Err((
                "`accuracy_control.max_fp_layers` must be at least 1".into(),
                None,
            ));
        }
        if !self.target.is_finite() {
            return Err(("`accuracy_control.target` must be a number".into(), None));
        }
        if let Some(f) = self.face_height_max {
            if self.metric != AccuracyMetric::Recall {
                return Err((
                    "`accuracy_control.face_height_max` applies to `metric: recall`".into(),
                    Some("drop it, or search on `recall`".into()),
                ));
            }
            if !(f > 0.0 && f <= 1.0) {
                return Err((
                    format!("`accuracy_control.face_height_max` is {f}"),
                    Some("give a fraction of the input height in (0, 1], e.g. 0.05".into()),
                ));
            }
        }
        Ok(())
    }
}

/// One quantization tried, and what it measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Trial {
    /// Why it was tried: `all quantized`, `sensitivity`, `bisection`, `confirm`.
    pub purpose: String,
    /// The layers kept in floating point.
    pub fp_layers: Vec<String>,
    pub metric: f64,
    /// Taken from an earlier run's memo, not quantized again.
    #[serde(default)]
    pub memoized: bool,
    /// Detectors: recall per face-height stratum.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub strata: Vec<metrics::faces::Stratum>,
}

/// What the search found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SearchReport {
    pub metric: String,
    pub target: f64,
    pub dataset: String,
    pub quantizable_layers: usize,
    /// Every layer with the metric recovered by keeping it alone in floating point, best first.
    pub ranking: Vec<(String, f64)>,
    pub trials: Vec<Trial>,
    /// The layers kept in floating point in the result.
    pub fp_layers: Vec<String>,
    pub achieved: f64,
    /// Share of the quantizable layers left quantized.
    pub quantized_fraction: f64,
    /// The metric against the number of floating-point layers, per order of taking them.
    pub frontier: Vec<Frontier>,
    /// The order the chosen layers were taken in (absent when nothing stays in floating point).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
    /// The metric on the holdout set, for everything quantized and for the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout: Option<Holdout>,
    /// What the figures mean when the search had nothing to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The recipe the result was quantized with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<String>,
    /// Every recipe tried with everything quantized, and its metric (the step's own first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipes: Vec<RecipeTrial>,
    /// The reference's faces on the search set at its first input size (detectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faces: Option<metrics::faces::FaceStats>,
}

/// One recipe tried with everything quantized.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RecipeTrial {
    pub recipe: String,
    pub metric: f64,
    #[serde(default)]
    pub memoized: bool,
}

impl SearchReport {
    /// What a step's one-line summary shows of the search.
    pub(crate) fn add_to_summary(&self, summary: &mut serde_json::Value) {
        summary["fp_layers"] = serde_json::json!(self.fp_layers.len());
        summary[self.metric.as_str()] = serde_json::json!(self.achieved);
        summary["trials"] = serde_json::json!(self.trials.len());
        if let Some(h) = &self.holdout {
            summary[format!("holdout_{}", self.metric)] = serde_json::json!(h.chosen);
        }
    }
}

/// The result measured on a set the search never saw.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Holdout {
    pub dataset: String,
    pub all_quantized: f64,
    pub chosen: f64,
    /// Whether the result meets the target there too.
    pub met: bool,
}

/// Quantize with these layers in floating point (for this purpose) and measure: the metric,
/// and whether it came from the memo.
pub(crate) type Measure<'a> = dyn FnMut(&[String], &str) -> Result<(f64, bool)> + 'a;

/// The search, whatever the backend and metric: `measure(fp_layers, purpose)` quantizes with
/// those layers kept in floating point and returns the metric. Errors with the frontier when
/// `max_fp_layers` cannot reach the target.
pub(crate) fn search(
    layers: &[String],
    ac: &AccuracyControl,
    measure: &mut Measure<'_>,
    progress: &dyn Fn(&str),
) -> Result<SearchReport> {
    let metric = ac.metric;
    let n = layers.len();
    // The all-quantized trial, one per layer, then per order the top-k ones (log2 + 2).
    let planned = 1 + n + 4 * (2 + (usize::BITS - ac.max_fp_layers.leading_zeros()) as usize);
    let mut trials: Vec<Trial> = Vec::new();
    let mut seen: HashMap<Vec<String>, f64> = HashMap::new();
    let mut run = |fp: &[String], purpose: &str, trials: &mut Vec<Trial>| -> Result<f64> {
        let mut key = fp.to_vec();
        key.sort();
        if let Some(v) = seen.get(&key) {
            return Ok(*v);
        }
        let (v, memoized) = measure(fp, purpose)?;
        progress(&format!(
            "trial {}/~{planned} ({purpose}, {} fp layer(s)): {} {v:.4}",
            trials.len() + 1,
            fp.len(),
            metric.name()
        ));
        trials.push(Trial {
            purpose: purpose.into(),
            fp_layers: fp.to_vec(),
            metric: v,
            memoized,
            strata: vec![],
        });
        seen.insert(key, v);
        Ok(v)
    };
    let base = run(&[], "all quantized", &mut trials)?;
    let finish = |fp, achieved, trials, ranking, frontier| {
        SearchReport::new(ac, n, fp, achieved, trials, ranking, frontier)
    };
    if metric.meets(base, ac.target) {
        let f = Frontier::new("sensitivity", BTreeMap::from([(0, base)]));
        let mut r = finish(vec![], base, trials, vec![], vec![f]);
        r.note = Some(format!(
            "everything quantized already meets the target on `{}`: nothing there for the search to recover; what it does not show (e.g. small faces), it cannot find",
            ac.dataset
        ));
        return Ok(r);
    }
    // Sensitivity: each layer alone in floating point.
    let mut ranking: Vec<(String, f64)> = Vec::with_capacity(n);
    for l in layers {
        let v = run(std::slice::from_ref(l), "sensitivity", &mut trials)?;
        ranking.push((l.clone(), metric.gain(base, v)));
    }
    // Best first; ties keep the graph order (a stable sort).
    ranking.sort_by(|a, b| b.1.total_cmp(&a.1));
    let orders = orders(layers, &ranking);
    let kmax = ac.max_fp_layers.min(n);
    let mut frontiers: Vec<Frontier> = Vec::new();
    let mut best: Option<(usize, f64, Vec<String>, String)> = None;
    for (name, order) in &orders {
        let mut points: BTreeMap<usize, f64> = BTreeMap::from([(0, base)]);
        if kmax == 0 {
            frontiers.push(Frontier::new(name, points));
            continue;
        }
        let purpose = format!("bisection, {name}");
        let at_max = run(&order[..kmax], &purpose, &mut trials)?;
        points.insert(kmax, at_max);
        if metric.meets(at_max, ac.target) {
            // The fewest layers in this order that meet the target: bisection over k,
            // assuming more floating-point layers never hurt within one order.
            let (mut lo, mut hi) = (1, kmax);
            // No order need look past the best found so far.
            if let Some((k, ..)) = &best {
                hi = hi.min(*k);
            }
            while lo < hi {
                let mid = (lo + hi) / 2;
                let v = run(&order[..mid], &purpose, &mut trials)?;
                points.insert(mid, v);
                if metric.meets(v, ac.target) {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            let v = run(&order[..hi], &purpose, &mut trials)?;
            points.insert(hi, v);
            let better = best
                .as_ref()
                .is_none_or(|(k, bv, ..)| hi < *k || (hi == *k && metric.gain(*bv, v) > 0.0));
            if metric.meets(v, ac.target) && better {
                best = Some((hi, v, order[..hi].to_vec(), name.to_string()));
            }
        }
        frontiers.push(Frontier::new(name, points));
    }
    let Some((_, achieved, chosen, order)) = best else {
        let mut e = unreachable_target(ac, n, &frontiers);
        if let Error::Step { message, .. } = &mut e {
            message.push_str(&format!(
                "\nmost sensitive layers alone: {}",
                ranking
                    .iter()
                    .take(5)
                    .map(|(l, g)| format!("{l} ({g:+.4})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        return Err(e);
    };
    let mut r = finish(chosen, achieved, trials, ranking, frontiers);
    r.order = Some(order);
    Ok(r)
}

/// The orders to take layers in, each named.
fn orders(layers: &[String], ranking: &[(String, f64)]) -> Vec<(&'static str, Vec<String>)> {
    let n = layers.len();
    // Orders to take layers in: by sensitivity; and, as Polygraphy's `debug precision`
    // bisects, in graph order from the output and from the input. Errors that only show
    // together (each layer alone recovers little) are found by the graph orders.
    // And from both ends at once (last, first, second to last, second...): quantization
    // error often enters at the input and matters most at the output.
    let both_ends: Vec<String> = (0..n)
        .map(|i| {
            if i % 2 == 0 {
                layers[n - 1 - i / 2].clone()
            } else {
                layers[i / 2].clone()
            }
        })
        .collect();
    vec![
        ("sensitivity", ranking.iter().map(|r| r.0.clone()).collect()),
        ("from the output", layers.iter().rev().cloned().collect()),
        ("from the input", layers.to_vec()),
        ("from both ends", both_ends),
    ]
}

impl SearchReport {
    /// The search's report, keeping `fp` in floating point for `achieved`.
    fn new(
        ac: &AccuracyControl,
        n: usize,
        fp: Vec<String>,
        achieved: f64,
        trials: Vec<Trial>,
        ranking: Vec<(String, f64)>,
        frontier: Vec<Frontier>,
    ) -> SearchReport {
        SearchReport {
            metric: ac.metric.name().into(),
            target: ac.target,
            dataset: ac.dataset.clone(),
            quantizable_layers: n,
            ranking,
            quantized_fraction: if n == 0 {
                1.0
            } else {
                (n - fp.len()) as f64 / n as f64
            },
            fp_layers: fp,
            achieved,
            trials,
            frontier,
            order: None,
            holdout: None,
            note: None,
            recipe: None,
            recipes: vec![],
            faces: None,
        }
    }
}

/// The metric against the number of floating-point layers, in one order of taking them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Frontier {
    pub order: String,
    pub points: Vec<(usize, f64)>,
}

impl Frontier {
    fn new(order: &str, points: BTreeMap<usize, f64>) -> Frontier {
        Frontier {
            order: order.into(),
            points: points.into_iter().collect(),
        }
    }
}

fn unreachable_target(ac: &AccuracyControl, n: usize, frontiers: &[Frontier]) -> Error {
    Error::Step {
        step: String::new(),
        message: format!(
            "accuracy control: {} {} {} is not reached with at most {} of {n} layers in floating point; frontier (fp layers: {}): {}",
            ac.metric.name(),
            if ac.metric.floor() { ">=" } else { "<=" },
            ac.target,
            ac.max_fp_layers.min(n),
            ac.metric.name(),
            frontiers
                .iter()
                .map(|f| format!(
                    "{}: {}",
                    f.order,
                    f.points
                        .iter()
                        .map(|(k, v)| format!("{k}: {v:.4}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        hint: Some(
            "raise `max_fp_layers`, loosen `target`, calibrate on more representative images, or deploy FP16"
                .into(),
        ),
    }
}

/// The search set prepared once, with the reference's outputs: compare's metric for any
/// candidate model.
pub(crate) struct Evaluator {
    metric: AccuracyMetric,
    input: String,
    kind: Eval,
}

enum Eval {
    Detection {
        spec: crate::manifest::DetectorSpec,
        match_iou: f32,
        per_size: Vec<(crate::preprocess::Prepared, Vec<Vec<Detection>>)>,
        face_height_max: Option<f64>,
    },
    Embedding {
        // Boxed: the detection variant is a Vec, and a Prepared is large.
        prepared: Box<crate::preprocess::Prepared>,
        reference: Vec<Vec<f32>>,
        pairs: Option<(similarity::PairSet, verification::PairSource)>,
        reference_tar: Option<f64>,
        operating_far: f64,
    },
}

impl Evaluator {
    pub(crate) fn new(ctx: &StepContext, ac: &AccuracyControl) -> Result<Evaluator> {
        let step = &ctx.step.name;
        let pre = ctx
            .manifest
            .model
            .preprocessing
            .as_ref()
            .ok_or_else(|| Error::Step {
                step: step.clone(),
                message: "accuracy control measures on images: it needs `model.preprocessing`"
                    .into(),
                hint: None,
            })?;
        let input = ctx.manifest.model.input.name.clone();
        let spec = &ctx.manifest.datasets[&ac.dataset];
        let dir = &ctx.datasets[&ac.dataset];
        let files = crate::preprocess::list_images(dir, spec.count, spec.seed)?;
        let ort = OnnxRuntime::new(ctx.toolchain, None)?;
        let mut reference = ort.load(ctx.model)?;
        let kind = if ctx.manifest.model.task == Task::Detection {
            let dspec = ctx
                .manifest
                .model
                .detector
                .clone()
                .ok_or_else(|| Error::Step {
                    step: step.clone(),
                    message: "accuracy control on a detector needs `model.detector` to decode it"
                        .into(),
                    hint: None,
                })?;
            let mut per_size = Vec::new();
            for size in ac.input_sizes.clone().unwrap_or_else(|| vec![pre.size]) {
                let sized = Preprocessing {
                    size,
                    ..pre.clone()
                };
                let prepared =
                    crate::preprocess::prepare(ctx.store, &files, &ctx.feed(&sized, None))?;
                let (dets, _) =
                    detection::detect_all(reference.as_mut(), &input, &prepared.tensor, &dspec)?;
                per_size.push((prepared, dets));
            }
            Eval::Detection {
                spec: dspec,
                match_iou: ac.match_iou,
                per_size,
                face_height_max: ac.face_height_max,
            }
        } else {
            let aligner = ctx.aligner(&ac.dataset)?;
            let prepared =
                crate::preprocess::prepare(ctx.store, &files, &ctx.feed(pre, aligner.as_ref()))?;
            let b = batch_for(reference.as_ref(), 8);
            let (emb, _) = embed(reference.as_mut(), &input, &prepared.tensor, b)?;
            let pairs = verification::pairs_for(
                &files,
                dir,
                spec.pairs_file().map(|f| dir.join(f)).as_deref(),
                spec.is_bin(),
            )?;
            if ac.metric == AccuracyMetric::TarDrop && pairs.is_none() {
                return Err(Error::Step {
                    step: step.clone(),
                    message: format!(
                        "`tar_drop` needs identities: dataset `{}` has neither a folder per identity nor a pairs file",
                        ac.dataset
                    ),
                    hint: Some("search on `cosine_min`, or give the dataset `pairs:`".into()),
                });
            }
            let reference_tar = pairs
                .as_ref()
                .and_then(|(set, src)| tar(&emb, set, src, ac.operating_far));
            if ac.metric == AccuracyMetric::TarDrop && reference_tar.is_none() {
                return Err(Error::Step {
                    step: step.clone(),
                    message: format!(
                        "TAR at FAR {} is not measurable on dataset `{}`: it has too few impostor pairs",
                        ac.operating_far, ac.dataset
                    ),
                    hint: Some("raise `operating_far` above 1 / impostor pairs".into()),
                });
            }
            Eval::Embedding {
                prepared: Box::new(prepared),
                reference: emb,
                pairs,
                reference_tar,
                operating_far: ac.operating_far,
            }
        };
        Ok(Evaluator {
            metric: ac.metric,
            input,
            kind,
        })
    }

    /// The reference's faces on the search set at its first input size; None for other
    /// tasks.
    pub(crate) fn faces(&self, dataset: &str) -> Option<metrics::faces::FaceStats> {
        match &self.kind {
            Eval::Detection { per_size, .. } => per_size.first().map(|(prepared, dets)| {
                let sh = prepared.tensor.shape();
                metrics::faces::FaceStats::measure(dataset, [sh[2] as u32, sh[3] as u32], dets)
            }),
            Eval::Embedding { .. } => None,
        }
    }

    /// The metric of `model` against the reference, as compare computes it.
    pub(crate) fn measure(&self, model: &mut dyn LoadedModel) -> Result<f64> {
        Ok(self.measure_strata(model)?.0)
    }

    /// The metric, and for detectors the recall per face-height stratum.
    pub(crate) fn measure_strata(
        &self,
        model: &mut dyn LoadedModel,
    ) -> Result<(f64, Vec<metrics::faces::Stratum>)> {
        match &self.kind {
            Eval::Detection {
                spec,
                match_iou,
                per_size,
                face_height_max,
            } => {
                let mut total = detection::Tally::default();
                let mut runs = Vec::new();
                for (prepared, ref_dets) in per_size {
                    let (dets, _) =
                        detection::detect_all(model, &self.input, &prepared.tensor, spec)?;
                    for (i, (r, c)) in ref_dets.iter().zip(&dets).enumerate() {
                        total.add(i, detect::match_detections(r, c, *match_iou));
                    }
                    runs.push((prepared.tensor.shape()[2] as u32, ref_dets, dets));
                }
                let runs: Vec<metrics::faces::HeightRun> =
                    runs.iter().map(|(h, r, c)| (*h, &r[..], &c[..])).collect();
                let strata =
                    metrics::faces::recall_by_height(&runs, &metrics::faces::STRATA, *match_iou);
                let t = total.totals();
                let v = match (self.metric, face_height_max) {
                    // No face that small: nothing lost.
                    (AccuracyMetric::Recall, Some(f)) => {
                        metrics::faces::recall_by_height(&runs, &[*f], *match_iou)[0]
                            .recall
                            .unwrap_or(1.0)
                    }
                    (AccuracyMetric::Recall, None) => t.recall,
                    // As compare's `landmark_nme_max` gate reads it: the worst matched face.
                    _ => t.landmark_nme.max.unwrap_or(f64::INFINITY),
                };
                Ok((v, strata))
            }
            Eval::Embedding {
                prepared,
                reference,
                pairs,
                reference_tar,
                operating_far,
            } => {
                let b = batch_for(model, 8);
                let (emb, _) = embed(model, &self.input, &prepared.tensor, b)?;
                let v = match self.metric {
                    AccuracyMetric::CosineMin => reference
                        .iter()
                        .zip(&emb)
                        .map(|(a, b)| metrics::cosine(a, b))
                        .fold(f64::INFINITY, f64::min),
                    _ => {
                        let (set, src) = pairs.as_ref().expect("checked in new");
                        let c = tar(&emb, set, src, *operating_far).unwrap_or(0.0);
                        reference_tar.unwrap_or(0.0) - c
                    }
                };
                Ok((v, vec![]))
            }
        }
    }
}

/// TAR at `far` of embeddings over a pair set, as compare scores it.
fn tar(
    emb: &[Vec<f32>],
    set: &similarity::PairSet,
    src: &verification::PairSource,
    far: f64,
) -> Option<f64> {
    let unit = similarity::normalized(emb);
    let mut sink =
        verification::ScoreSink::new(src.impostor, far.max(1e-2), verification::EXACT_IMPOSTORS);
    similarity::for_each_score(
        &[&unit],
        set,
        |_, _, same, s| sink.push(same, s[0] as f64),
        |_, _| {},
    );
    sink.finish().tar_at_far(far)
}

/// What the helpers' `--list` mode prints.
#[derive(Deserialize)]
struct LayerList {
    layers: Vec<String>,
}

/// The quantizable layers a helper script's `--list` mode names (`args` include `--list`).
pub(crate) fn list_layers(
    ctx: &StepContext,
    script: &str,
    args: &[&str],
    what: &str,
) -> Result<Vec<String>> {
    let l: LayerList = ctx.toolchain.run_script(script, args, what)?;
    Ok(l.layers)
}

/// A quantizer the search drives: NNCF for OpenVINO IR, onnxruntime.quantization for Q/DQ.
pub(crate) trait Quantizer {
    /// The quantizable layers' names (as the backend's exclusion list takes them), in order.
    fn layers(&self, ctx: &StepContext) -> Result<Vec<String>>;
    /// Quantize with `fp` kept in floating point, into `dir`; returns what the tool reported.
    fn quantize(
        &self,
        ctx: &StepContext,
        fp: &[String],
        dir: &Utf8Path,
    ) -> Result<serde_json::Value>;
    /// The quantized artifact in `dir`, loaded for measuring.
    fn load(&self, ctx: &StepContext, dir: &Utf8Path) -> Result<Box<dyn LoadedModel>>;
    /// Everything that changes what `quantize` produces (for the trial memo).
    fn settings(&self) -> serde_json::Value;
    /// The recipe, as reports name it (`minmax, per-channel`).
    fn recipe(&self) -> String;
    /// The other recipes the search may try before it keeps layers in floating point
    /// (calibration method, per-channel or per-tensor scales); none by default.
    fn alternatives(&self) -> Vec<Box<dyn Quantizer + '_>> {
        vec![]
    }
}

/// Search as configured, then quantize the chosen configuration into `out_dir`. Returns the
/// search report and the tool's report on the final quantization.
/// What the search cannot take: settings that do not fit the model, or a model fed more
/// than images (the search runs it on the image input alone, as its metrics read it).
fn refuse(ctx: &StepContext, ac: &AccuracyControl) -> Result<()> {
    let step = ctx.step.name.clone();
    ac.validate(ctx.manifest.model.task)
        .map_err(|(m, h)| Error::Step {
            step: step.clone(),
            message: m,
            hint: h,
        })?;
    if let Some(other) = ctx.manifest.model.extra_inputs.first() {
        return Err(Error::Step {
            step,
            message: format!(
                "`accuracy_control` searches models fed images alone; this one also has input `{}`",
                other.name
            ),
            hint: Some(
                "quantize it without `accuracy_control`, and gate the INT8 artifact in compare"
                    .into(),
            ),
        });
    }
    Ok(())
}

pub(crate) fn control(
    ctx: &StepContext,
    ac: &AccuracyControl,
    q: &dyn Quantizer,
    calibration: &Utf8Path,
    out_dir: &Utf8Path,
) -> Result<(SearchReport, serde_json::Value)> {
    let step = ctx.step.name.clone();
    refuse(ctx, ac)?;
    ctx.progress
        .set_message(format!("accuracy control: reference on `{}`", ac.dataset));
    let eval = Evaluator::new(ctx, ac)?;
    let layers = q.layers(ctx)?;
    let memo = &ctx.store.memo;
    let model = memo.blake3(ctx.model)?.blake3;
    let calib = memo.blake3(calibration)?.blake3;
    let dspec = &ctx.manifest.datasets[&ac.dataset];
    let dataset: Vec<String> =
        crate::preprocess::list_images(&ctx.datasets[&ac.dataset], dspec.count, dspec.seed)?
            .iter()
            .map(|f| memo.blake3(f).map(|d| d.blake3))
            .collect::<Result<_>>()?;
    let isa = super::benchmark::isa_class();
    let trials_dir = ctx.store.root.join("trials");
    std::fs::create_dir_all(&trials_dir).map_err(|e| Error::io(&trials_dir, e))?;
    let mut n = 0usize;
    // Each trial's strata, by recipe and layers, for the report's trials.
    let mut strata: HashMap<(String, Vec<String>), Vec<metrics::faces::Stratum>> =
        Default::default();
    let mut measure_with = |q: &dyn Quantizer, fp: &[String]| -> Result<(f64, bool)> {
        ctx.check_cancelled()?;
        let key = crate::cache::cache_key(&TrialKey {
            model: &model,
            calibration: &calib,
            backend: &q.settings(),
            dataset: &dataset,
            control: ac,
            fp_layers: fp,
            isa: &isa,
        });
        let memo_file = trials_dir.join(format!("{key}.json"));
        if let Some(memo) = std::fs::read(&memo_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<TrialMemo>(&b).ok())
        {
            strata.insert((q.recipe(), fp.to_vec()), memo.strata);
            return Ok((memo.metric, true));
        }
        n += 1;
        let dir = ctx.workdir.join(format!("trial-{n}"));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        q.quantize(ctx, fp, &dir)?;
        let mut m = q.load(ctx, &dir)?;
        let (v, st) = eval.measure_strata(m.as_mut())?;
        drop(m);
        let _ = std::fs::remove_dir_all(&dir);
        let memo = TrialMemo {
            metric: v,
            fp_layers: fp.to_vec(),
            strata: st,
        };
        crate::cache::store::write_atomic(
            &memo_file,
            &serde_json::to_vec(&memo).map_err(anyhow::Error::from)?,
        )?;
        strata.insert((q.recipe(), fp.to_vec()), memo.strata);
        Ok((v, false))
    };
    // The recipe first: a calibration method or scale granularity that fits the model may
    // reach the target with nothing in floating point, and the layer search starts from
    // the best one.
    let alternatives = if ac.search_recipes {
        q.alternatives()
    } else {
        vec![]
    };
    let (chosen, recipes) = choose_recipe(ctx, ac, q, &alternatives, &mut measure_with)?;
    let q = chosen;
    let report = search(&layers, ac, &mut |fp, _purpose| measure_with(q, fp), &|m| {
        ctx.progress
            .set_message(format!("accuracy control ({}): {m}", q.recipe()))
    })
    .map_err(|e| match e {
        Error::Step { message, hint, .. } => Error::Step {
            step: step.clone(),
            message: if recipes.len() > 1 {
                format!(
                    "{message}\nrecipes tried, everything quantized: {}; layers searched with `{}`",
                    recipes
                        .iter()
                        .map(|r| format!("{} {:.4}", r.recipe, r.metric))
                        .collect::<Vec<_>>()
                        .join(", "),
                    q.recipe()
                )
            } else {
                message
            },
            hint,
        },
        e => e,
    })?;
    let mut report = report;
    for t in &mut report.trials {
        t.strata = strata
            .remove(&(q.recipe(), t.fp_layers.clone()))
            .unwrap_or_default();
    }
    report.faces = eval.faces(&ac.dataset);
    report.recipe = Some(q.recipe());
    report.recipes = recipes;
    ctx.progress.set_message(format!(
        "accuracy control: final model, {} layer(s) in floating point",
        report.fp_layers.len()
    ));
    let tool = q.quantize(ctx, &report.fp_layers, out_dir)?;
    report.holdout = measure_holdout(ctx, ac, q, out_dir, &report)?;
    Ok((report, tool))
}

/// The result, and everything quantized, measured on the holdout set the search never saw.
fn measure_holdout(
    ctx: &StepContext,
    ac: &AccuracyControl,
    q: &dyn Quantizer,
    out_dir: &Utf8Path,
    report: &SearchReport,
) -> Result<Option<Holdout>> {
    let Some(h) = &ac.holdout else {
        return Ok(None);
    };
    ctx.progress
        .set_message(format!("accuracy control: measuring on holdout `{h}`"));
    let hold = AccuracyControl {
        dataset: h.clone(),
        ..ac.clone()
    };
    let eval = Evaluator::new(ctx, &hold)?;
    let chosen = eval.measure(q.load(ctx, out_dir)?.as_mut())?;
    let all_quantized = if report.fp_layers.is_empty() {
        chosen
    } else {
        let dir = ctx.workdir.join("holdout-all-quantized");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        q.quantize(ctx, &[], &dir)?;
        let v = eval.measure(q.load(ctx, &dir)?.as_mut())?;
        let _ = std::fs::remove_dir_all(&dir);
        v
    };
    Ok(Some(Holdout {
        dataset: h.clone(),
        all_quantized,
        chosen,
        met: ac.metric.meets(chosen, ac.target),
    }))
}

/// Quantize with a recipe and these layers in floating point, and measure (memoized).
type MeasureWith<'a> = dyn FnMut(&dyn Quantizer, &[String]) -> Result<(f64, bool)> + 'a;

/// The recipe to search layers with: the step's own when everything quantized meets the
/// target with it, else the first alternative that does, else the best of all; with every
/// recipe tried and its metric.
fn choose_recipe<'q>(
    ctx: &StepContext,
    ac: &AccuracyControl,
    own: &'q dyn Quantizer,
    alternatives: &'q [Box<dyn Quantizer + 'q>],
    measure: &mut MeasureWith<'_>,
) -> Result<(&'q dyn Quantizer, Vec<RecipeTrial>)> {
    let mut chosen = own;
    let (mut best, memoized) = measure(own, &[])?;
    let mut recipes = vec![RecipeTrial {
        recipe: own.recipe(),
        metric: best,
        memoized,
    }];
    if ac.metric.meets(best, ac.target) {
        return Ok((chosen, recipes));
    }
    for (i, alt) in alternatives.iter().enumerate() {
        ctx.progress.set_message(format!(
            "accuracy control: recipe {}/{} ({}), everything quantized",
            i + 2,
            alternatives.len() + 1,
            alt.recipe()
        ));
        let (v, memoized) = measure(alt.as_ref(), &[])?;
        recipes.push(RecipeTrial {
            recipe: alt.recipe(),
            metric: v,
            memoized,
        });
        if ac.metric.gain(best, v) > 0.0 {
            best = v;
            chosen = alt.as_ref();
        }
        if ac.metric.meets(v, ac.target) {
            break;
        }
    }
    Ok((chosen, recipes))
}

/// What a trial's memo file holds.
#[derive(Serialize, Deserialize)]
struct TrialMemo {
    metric: f64,
    fp_layers: Vec<String>,
    #[serde(default)]
    strata: Vec<metrics::faces::Stratum>,
}

/// The memo key of one trial: what was quantized (source, calibration, backend settings),
/// which layers stayed in floating point, and what measured it (dataset, metric settings).
pub(crate) struct TrialKey<'a> {
    pub model: &'a str,
    pub calibration: &'a str,
    pub backend: &'a serde_json::Value,
    pub dataset: &'a [String],
    pub control: &'a AccuracyControl,
    pub fp_layers: &'a [String],
    pub isa: &'a str,
}

impl CacheKey for TrialKey<'_> {
    fn cache_key(&self, s: &mut CacheKeyHasher) {
        TRIAL_VERSION.cache_key(s);
        self.model.cache_key(s);
        self.calibration.cache_key(s);
        self.backend.cache_key(s);
        self.dataset.cache_key(s);
        // The target and max_fp_layers do not change what a trial measures.
        serde_json::json!({
            "dataset": self.control.dataset,
            "metric": self.control.metric,
            "input_sizes": self.control.input_sizes,
            "match_iou": self.control.match_iou,
            "operating_far": self.control.operating_far,
        })
        .cache_key(s);
        // Absent, it leaves the keys of searches that do not use it as they were.
        if let Some(f) = self.control.face_height_max {
            f.to_bits().cache_key(s);
        }
        let mut fp = self.fp_layers.to_vec();
        fp.sort();
        fp.cache_key(s);
        self.isa.cache_key(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(target: f64, max_fp_layers: usize) -> AccuracyControl {
        AccuracyControl {
            dataset: "d".into(),
            metric: AccuracyMetric::Recall,
            target,
            max_fp_layers,
            input_sizes: None,
            match_iou: 0.5,
            operating_far: 1e-3,
            holdout: None,
            search_recipes: true,
            face_height_max: None,
        }
    }

    /// A synthetic model: all quantized gives 0.80; keeping a layer in floating point
    /// recovers its own share, independently.
    fn synthetic(fp: &[String]) -> f64 {
        let share = |l: &str| match l {
            "conv3" => 0.10,
            "conv7" => 0.06,
            "conv1" => 0.03,
            "conv5" => 0.005,
            _ => 0.001,
        };
        0.80 + fp.iter().map(|l| share(l)).sum::<f64>()
    }

    fn layers() -> Vec<String> {
        (0..10).map(|i| format!("conv{i}")).collect()
    }

    #[test]
    fn search_keeps_the_fewest_most_sensitive_layers() {
        let mut calls = 0;
        let r = search(
            &layers(),
            &control(0.955, 5),
            &mut |fp, _| {
                calls += 1;
                Ok((synthetic(fp), false))
            },
            &|_| {},
        )
        .unwrap();
        // conv3 + conv7 reach 0.96; conv3 alone 0.90 does not.
        assert_eq!(r.fp_layers, vec!["conv3", "conv7"]);
        assert!((r.achieved - 0.96).abs() < 1e-9);
        assert_eq!(r.ranking[0].0, "conv3");
        assert_eq!(r.ranking[1].0, "conv7");
        assert_eq!(r.ranking[2].0, "conv1");
        assert!((r.quantized_fraction - 0.8).abs() < 1e-9);
        // One trial per set, none twice: base + 10 singles + top-5 + bisection.
        assert_eq!(calls, r.trials.len());
        assert!(calls <= 1 + 10 + 4 * 5, "{calls}");
        // Already met: a single trial, nothing in floating point.
        let r = search(
            &layers(),
            &control(0.7, 5),
            &mut |fp, _| Ok((synthetic(fp), false)),
            &|_| {},
        )
        .unwrap();
        assert!(r.fp_layers.is_empty() && r.trials.len() == 1);
    }

    #[test]
    fn an_unreachable_target_fails_with_the_frontier() {
        let e = search(
            &layers(),
            &control(0.995, 3),
            &mut |fp, _| Ok((synthetic(fp), false)),
            &|_| {},
        )
        .unwrap_err()
        .to_string();
        // 0 fp layers: 0.80; the top 3 (conv3, conv7, conv1): 0.99, short of 0.995.
        assert!(
            e.contains("recall >= 0.995 is not reached with at most 3 of 10 layers"),
            "{e}"
        );
        assert!(e.contains("sensitivity: 0: 0.8000, 3: 0.9900"), "{e}");
        assert!(e.contains("from the output: 0: 0.8000, 3: 0.8620"), "{e}");
        // conv9, conv0, conv8.
        assert!(e.contains("from both ends: 0: 0.8000, 3: 0.8030"), "{e}");
        assert!(e.contains("conv3 (+0.1000)"), "{e}");
    }

    /// Errors that only show together: no layer alone recovers anything, but the last three
    /// together do. Taking layers from the output finds them.
    #[test]
    fn graph_order_finds_what_single_layers_miss() {
        let tail = ["conv7", "conv8", "conv9"];
        let r = search(
            &layers(),
            &control(0.95, 5),
            &mut |fp, _| {
                let all = tail.iter().all(|t| fp.iter().any(|l| l == t));
                Ok((if all { 0.97 } else { 0.80 }, false))
            },
            &|_| {},
        )
        .unwrap();
        assert_eq!(r.fp_layers, vec!["conv9", "conv8", "conv7"]);
        assert_eq!(r.order.as_deref(), Some("from the output"));
    }

    #[test]
    fn ceilings_search_downwards() {
        let mut c = control(0.05, 4);
        c.metric = AccuracyMetric::LandmarkNme;
        // NME 0.2 all quantized; conv3 in fp brings it to 0.04.
        let r = search(
            &layers(),
            &c,
            &mut |fp, _| {
                Ok((
                    if fp.contains(&"conv3".to_string()) {
                        0.04
                    } else {
                        0.2
                    },
                    false,
                ))
            },
            &|_| {},
        )
        .unwrap();
        assert_eq!(r.fp_layers, vec!["conv3"]);
    }
}
