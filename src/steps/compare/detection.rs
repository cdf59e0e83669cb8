//! `compare` for detectors. The reference is the ONNX original in ONNX Runtime, its raw
//! outputs decoded (boxes, scores, five landmarks), thresholded and NMS'd in Rust; each
//! candidate's outputs go through the same decoder. Per image, candidate boxes are matched
//! one-to-one to reference boxes at IoU >= `match_iou`: recall, false positives per image,
//! score drift, landmark error (NME over sqrt(box area)) and NMS parity (the same kept set).
//! A model with dynamic H/W runs every `input_sizes` entry from one compiled artifact.

use std::collections::BTreeMap;
use std::time::Instant;

use ndarray::s;
use serde_json::json;

use super::report::{
    self, CandidateReport, CompareReport, DatasetSummary, DetectionTotals, MeanMax, MeanMin,
    ReferenceImage, ReferenceSummary, RoundedDetection, SizeMetrics,
};
use super::{CompareParams, Loaded, load_candidate, note_failures};
use crate::detect::{self, Detection, Matching};
use crate::error::{Error, Result};
use crate::manifest::Preprocessing;
use crate::metrics;
use crate::metrics::gate::{self, GateResult, Gates, Measurement, Naming};
use crate::metrics::uncertainty::{self, Bootstrap, Spread, UnitStat};
use crate::runtime::{LoadedModel, Runtime, onnxruntime::OnnxRuntime};
use crate::steps::{StepContext, StepOutcome};

/// Run `model` on every image of `tensor` (batch 1) and decode.
pub(crate) fn detect_all(
    model: &mut dyn LoadedModel,
    input: &str,
    tensor: &ndarray::Array4<f32>,
    spec: &crate::manifest::DetectorSpec,
) -> Result<(Vec<Vec<Detection>>, u64)> {
    let (h, w) = (tensor.shape()[2], tensor.shape()[3]);
    let mut all = Vec::with_capacity(tensor.shape()[0]);
    let mut spent = std::time::Duration::ZERO;
    for i in 0..tensor.shape()[0] {
        let x = tensor.slice(s![i..i + 1, .., .., ..]).to_owned().into_dyn();
        let t0 = Instant::now();
        let out = model.run(&[(input.to_string(), x)])?;
        spent += t0.elapsed();
        all.push(detect::decode(spec, &out, (h, w))?);
    }
    Ok((all, spent.as_millis() as u64))
}

/// Totals over every image and size, and per image for the bootstrap (an image compared at
/// several sizes is one unit).
#[derive(Default)]
pub(crate) struct Tally {
    images: usize,
    parity: usize,
    m: Matching,
    per_image: Vec<ImageTally>,
}

/// One image's share of the totals, over every size it ran at.
#[derive(Clone)]
struct ImageTally {
    runs: f64,
    reference: f64,
    matched: f64,
    unmatched: f64,
    parity: f64,
    drift: f64,
    nme: f64,
}

impl Default for ImageTally {
    fn default() -> Self {
        ImageTally {
            runs: 0.0,
            reference: 0.0,
            matched: 0.0,
            unmatched: 0.0,
            parity: 0.0,
            drift: f64::NAN,
            nme: f64::NAN,
        }
    }
}

/// The larger of two values where NaN means none.
fn max_of(a: f64, b: f64) -> f64 {
    if a.is_nan() { b } else { a.max(b) }
}

impl Tally {
    /// The matching of image `image` (its index in the dataset) at one size.
    pub(crate) fn add(&mut self, image: usize, m: Matching) {
        if self.per_image.len() <= image {
            self.per_image.resize(image + 1, ImageTally::default());
        }
        let t = &mut self.per_image[image];
        t.runs += 1.0;
        t.reference += m.reference as f64;
        t.matched += m.matched as f64;
        t.unmatched += (m.candidate - m.matched) as f64;
        t.parity += m.parity() as u8 as f64;
        for p in &m.pairs {
            t.drift = max_of(t.drift, p.1 as f64);
            if let Some(n) = p.2 {
                t.nme = max_of(t.nme, n as f64);
            }
        }
        self.images += 1;
        self.parity += m.parity() as usize;
        self.m.reference += m.reference;
        self.m.candidate += m.candidate;
        self.m.matched += m.matched;
        self.m.pairs.extend(m.pairs);
    }

    pub(crate) fn totals(&self) -> DetectionTotals {
        let m = &self.m;
        let recall = if m.reference == 0 {
            1.0
        } else {
            m.matched as f64 / m.reference as f64
        };
        let fp = (m.candidate - m.matched) as f64 / self.images.max(1) as f64;
        let ious: Vec<f64> = m.pairs.iter().map(|p| p.0 as f64).collect();
        let drift: Vec<f64> = m.pairs.iter().map(|p| p.1 as f64).collect();
        let nme: Vec<f64> = m.pairs.iter().filter_map(|p| p.2.map(f64::from)).collect();
        let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        let max = |v: &[f64]| v.iter().copied().reduce(f64::max);
        DetectionTotals {
            images: self.images,
            reference_boxes: m.reference,
            candidate_boxes: m.candidate,
            matched: m.matched,
            recall,
            fp_per_image: fp,
            iou: MeanMin {
                mean: mean(&ious),
                min: ious.iter().copied().reduce(f64::min),
            },
            score_drift: MeanMax {
                mean: mean(&drift),
                max: max(&drift),
                max_ci95: None,
            },
            landmark_nme: MeanMax {
                mean: mean(&nme),
                max: max(&nme),
                max_ci95: None,
            },
            nms_parity: self.parity as f64 / self.images.max(1) as f64,
            recall_ci95: None,
            fp_per_image_ci95: None,
            nms_parity_ci95: None,
        }
    }

    /// The totals with the 95% intervals of every gated figure, resampled by image, and
    /// those intervals by figure name.
    pub(crate) fn totals_with(
        &self,
        boot: Option<&Bootstrap>,
    ) -> (DetectionTotals, BTreeMap<String, Spread>) {
        let mut t = self.totals();
        let Some(boot) = boot else {
            return (t, BTreeMap::new());
        };
        let col =
            |f: fn(&ImageTally) -> f64| -> Vec<f64> { self.per_image.iter().map(f).collect() };
        let (reference, matched, unmatched) = (
            col(|i| i.reference),
            col(|i| i.matched),
            col(|i| i.unmatched),
        );
        let (runs, parity, drift, nme) = (
            col(|i| i.runs),
            col(|i| i.parity),
            col(|i| i.drift),
            col(|i| i.nme),
        );
        let stats = [
            UnitStat::Ratio(&matched, &reference),
            UnitStat::Ratio(&unmatched, &runs),
            UnitStat::Ratio(&parity, &runs),
            UnitStat::Max(&drift),
            UnitStat::Max(&nme),
        ];
        let names = [
            "recall",
            "fp_per_image",
            "nms_parity",
            "score_drift",
            "landmark_nme",
        ];
        let spreads = uncertainty::unit_intervals(boot, self.per_image.len(), "image", &stats);
        let map: BTreeMap<String, Spread> = names
            .iter()
            .zip(spreads)
            .filter_map(|(n, s)| Some((n.to_string(), s?)))
            .collect();
        let ci = |k: &str| map.get(k).map(|s| s.ci95);
        t.recall_ci95 = ci("recall");
        t.fp_per_image_ci95 = ci("fp_per_image");
        t.nms_parity_ci95 = ci("nms_parity");
        t.score_drift.max_ci95 = ci("score_drift");
        t.landmark_nme.max_ci95 = ci("landmark_nme");
        (t, map)
    }
}

/// A detector candidate's gates, by the one rule (metrics::gate): landmark error and score
/// drift with no matched box (or no landmarks) are "not measured", and fail unless the
/// gates say `missing: pass`.
fn detection_gates(
    gates: &Gates,
    t: &DetectionTotals,
    intervals: &BTreeMap<String, Spread>,
) -> Vec<GateResult> {
    gates.check(gate::DETECTION, Naming::Figure, |m| {
        let v = match m.key {
            "recall_min" => Some(t.recall),
            "fp_per_image_max" => Some(t.fp_per_image),
            "landmark_nme_max" => t.landmark_nme.max,
            "score_drift_max" => t.score_drift.max,
            _ => Some(t.nms_parity),
        };
        let why = "no matched boxes (or no landmarks) to measure it on";
        let measured = Measurement::from_option(v, why);
        (measured.with_spread(intervals.get(m.figure)), None)
    })
}

fn round2(d: &Detection) -> RoundedDetection {
    let r = |v: f32| (v * 100.0).round() / 100.0;
    RoundedDetection {
        bbox: d.bbox.map(r),
        score: (d.score * 1e4).round() / 1e4,
        kps: d.kps.map(|k| k.map(|p| p.map(r))),
    }
}

pub(super) fn run(
    ctx: &StepContext,
    p: &CompareParams,
    pre: &Preprocessing,
) -> Result<StepOutcome> {
    let t_total = Instant::now();
    let step = &ctx.step.name;
    let spec = ctx.manifest.model.detector.as_ref().ok_or_else(|| Error::Step {
        step: step.clone(),
        message: "comparing a detector needs `model.detector` to decode its outputs".into(),
        hint: Some("declare e.g. `model.detector: {family: scrfd, score_threshold: 0.5, nms_iou: 0.4}`".into()),
    })?;
    p.refuse_gates_except(
        step,
        ("a detection model", "its faces are matched box by box"),
        (gate::DETECTION, ""),
    )?;
    let input = ctx.manifest.model.input.name.clone();
    let dspec = &ctx.manifest.datasets[&p.dataset];
    let files = crate::preprocess::list_images(&ctx.datasets[&p.dataset], dspec.count, dspec.seed)?;
    let sizes = p.input_sizes.clone().unwrap_or_else(|| vec![pre.size]);

    let ort = OnnxRuntime::new(ctx.toolchain, p.threads)?;
    let mut reference = ort.load(ctx.model)?;
    check_sizes(step, reference.as_ref(), &sizes)?;

    let mut timing = BTreeMap::new();
    let per_size = reference_per_size(
        ctx,
        reference.as_mut(),
        (&input, spec),
        &files,
        (pre, &sizes),
        &mut timing,
    )?;

    let boot = p.bootstrap();
    let (candidates, failures, table) =
        compare_candidates(ctx, p, &ort, (&input, spec), &per_size, &mut timing)?;
    let passed = failures.is_empty();
    let images = reference_images(&per_size);
    let report = CompareReport {
        schema: report::SCHEMA.into(),
        step: step.clone(),
        kind: "compare".into(),
        task: Some("detection".into()),
        passed,
        detector: Some(spec.clone()),
        match_iou: Some(p.match_iou),
        landmarks: None,
        swapper: None,
        model_note: None,
        dataset: DatasetSummary {
            name: p.dataset.clone(),
            images: files.len(),
            input_sizes: Some(sizes.clone()),
            resampling: boot.map(|b| report::Resampling::by_image(&b, files.len())),
            faces: per_size
                .first()
                .map(|(size, _, dets)| metrics::faces::FaceStats::measure(&p.dataset, *size, dets)),
            ..Default::default()
        },
        reference: ReferenceSummary {
            images: Some(images),
            ..ReferenceSummary::onnx(reference.execution())
        },
        candidates,
        failures,
        toolchain: ctx.toolchain.fingerprint(super::TOOLCHAIN),
    };
    let mut md = markdown(
        ctx,
        p,
        spec,
        (files.len(), &sizes),
        &reference.execution().version,
        &table,
    );
    if let Some(f) = &report.dataset.faces {
        md += &format!("\nFaces the reference finds: {}.\n", f.line());
    }
    md += &strata_md(&report.candidates);
    md += &report.uncertainty_md();
    md += &super::failed_gates_md(&report.failures);
    let worst_recall = report
        .candidates
        .iter()
        .filter_map(|c| c.total.as_ref().map(|t| t.recall))
        .fold(1.0, f64::min);
    let ref_boxes: usize = per_size
        .iter()
        .map(|(_, _, d)| d.iter().map(Vec::len).sum::<usize>())
        .sum();
    let summary = json!({"images": files.len(), "sizes": sizes.len(), "reference_boxes": ref_boxes, "candidates": p.candidates.len(), "worst_recall": worst_recall});
    super::finish(ctx, &report, (md, "detection"), timing, t_total, summary)
}

/// Every candidate against the reference's detections: their reports, failed gates and
/// table rows.
fn compare_candidates(
    ctx: &StepContext,
    p: &CompareParams,
    ort: &OnnxRuntime,
    (input, spec): (&str, &crate::manifest::DetectorSpec),
    per_size: &[SizeRun],
    timing: &mut BTreeMap<String, serde_json::Value>,
) -> Result<(Vec<CandidateReport>, Vec<String>, Vec<String>)> {
    let step = &ctx.step.name;
    let mut failures = Vec::new();
    let mut candidates: Vec<CandidateReport> = Vec::new();
    let mut table = Vec::new();
    for cand in &p.candidates {
        ctx.check_cancelled()?;
        let label = cand.label();
        if cand.detail().is_some_and(|d| d.preprocessing.is_some()) {
            return Err(Error::Step {
                step: step.clone(),
                message: format!(
                    "candidate `{label}`: per-candidate preprocessing is not supported for detectors yet"
                ),
                hint: None,
            });
        }
        ctx.progress.set_message(format!("candidate {label}"));
        let Loaded {
            mut model,
            artifact,
            weights,
            hint,
            load_ms,
        } = match load_candidate(ctx, p, cand, ort)? {
            Ok(l) => l,
            Err(why) => {
                super::record_not_compared(
                    &label,
                    cand.step(),
                    &why,
                    13,
                    (&p.gates_for(&label), gate::DETECTION),
                    &mut table,
                    &mut candidates,
                    &mut failures,
                );
                continue;
            }
        };
        let c = Candidate {
            label: &label,
            step: cand.step(),
            artifact,
            weights,
            hint: &hint,
            load_ms,
        };
        candidates.push(compare_candidate(
            p,
            c,
            model.as_mut(),
            (input, spec),
            per_size,
            (&mut table, &mut failures, timing),
        )?);
    }

    Ok((candidates, failures, table))
}

/// Refuse sizes a detector with a fixed input cannot run at.
fn check_sizes(step: &str, reference: &dyn LoadedModel, sizes: &[[u32; 2]]) -> Result<()> {
    let step = step.to_string();
    let static_hw: Option<(i64, i64)> = reference
        .inputs()
        .first()
        .and_then(|(_, s)| (s.len() == 4 && s[2] > 0 && s[3] > 0).then(|| (s[2], s[3])));
    if let Some((h, w)) = static_hw
        && let Some(bad) = sizes
            .iter()
            .find(|sz| (sz[0] as i64, sz[1] as i64) != (h, w))
    {
        return Err(Error::Step {
            step,
            message: format!(
                "the model's input is fixed at {h}x{w}; it cannot run at {}x{}",
                bad[0], bad[1]
            ),
            hint: Some("drop `input_sizes`, or export the detector with dynamic H/W".into()),
        });
    }
    Ok(())
}

/// One size's images, prepared once, with the reference's detections on them.
type SizeRun = ([u32; 2], crate::preprocess::Prepared, Vec<Vec<Detection>>);

/// Prepare every size once, and the reference's detections per size.
fn reference_per_size(
    ctx: &StepContext,
    reference: &mut dyn LoadedModel,
    (input, spec): (&str, &crate::manifest::DetectorSpec),
    files: &[camino::Utf8PathBuf],
    (pre, sizes): (&Preprocessing, &[[u32; 2]]),
    timing: &mut BTreeMap<String, serde_json::Value>,
) -> Result<Vec<SizeRun>> {
    let mut per_size = Vec::new();
    for &size in sizes {
        ctx.check_cancelled()?;
        ctx.progress.set_message(format!(
            "reference at {}x{}: {} images",
            size[0],
            size[1],
            files.len()
        ));
        let sized = Preprocessing {
            size,
            ..pre.clone()
        };
        let prepared = crate::preprocess::prepare(ctx.store, files, &ctx.feed(&sized, None))?;
        let (dets, ms) = detect_all(reference, input, &prepared.tensor, spec)?;
        timing.insert(
            format!("reference_{}x{}", size[0], size[1]),
            json!({"ms": ms, "prepare_ms": prepared.prepare_ms}),
        );
        per_size.push((size, prepared, dets));
    }
    Ok(per_size)
}

/// A loaded candidate, as the report names it.
struct Candidate<'a> {
    label: &'a str,
    step: &'a str,
    artifact: &'static str,
    weights: String,
    hint: &'a str,
    load_ms: u64,
}

/// Run one candidate at every size against the reference's detections: its report, its
/// table rows and timing, and its failed gates.
fn compare_candidate(
    p: &CompareParams,
    c: Candidate<'_>,
    model: &mut dyn LoadedModel,
    (input, spec): (&str, &crate::manifest::DetectorSpec),
    per_size: &[SizeRun],
    (table, failures, timing): (
        &mut Vec<String>,
        &mut Vec<String>,
        &mut BTreeMap<String, serde_json::Value>,
    ),
) -> Result<CandidateReport> {
    let Candidate {
        label,
        step,
        artifact,
        weights,
        hint,
        load_ms,
    } = c;
    let boot = p.bootstrap();
    let exec = model.execution();
    let mut total = Tally::default();
    let mut size_metrics = Vec::new();
    let mut all_dets = Vec::new();
    let first_row = table.len();
    for (size, prepared, ref_dets) in per_size {
        let (dets, ms) = detect_all(model, input, &prepared.tensor, spec)?;
        timing.insert(
            format!("{label}_{}x{}", size[0], size[1]),
            json!({"ms": ms, "load_ms": load_ms, "precision_hint": hint}),
        );
        let mut t = Tally::default();
        for (i, (r, c)) in ref_dets.iter().zip(&dets).enumerate() {
            let m = detect::match_detections(r, c, p.match_iou);
            t.add(i, m.clone());
            total.add(i, m);
        }
        let (j, _) = t.totals_with(boot.as_ref());
        table.push(format!(
            "| {label} | {artifact} {weights} | {} | {}x{} | {} | {} | {:.4} | {:.3} | {} | {} | {} | {:.3} |",
            exec.precision,
            size[0],
            size[1],
            j.reference_boxes,
            j.candidate_boxes,
            j.recall,
            j.fp_per_image,
            fmt_opt(j.score_drift.max, 4),
            fmt_opt(j.iou.min, 4),
            fmt_opt(j.landmark_nme.max, 5),
            j.nms_parity
        ));
        size_metrics.push(SizeMetrics {
            input_size: *size,
            metrics: j,
        });
        all_dets.push(dets);
    }
    let runs: Vec<metrics::faces::HeightRun> = per_size
        .iter()
        .zip(&all_dets)
        .map(|((size, _, r), c)| (size[0], &r[..], &c[..]))
        .collect();
    let strata = metrics::faces::recall_by_height(&runs, &metrics::faces::STRATA, p.match_iou);
    let (tj, intervals) = total.totals_with(boot.as_ref());
    let gates = detection_gates(&p.gates_for(label), &tj, &intervals);
    let what = format!("{artifact} {weights}, executed {}", exec.precision);
    let passed = note_failures(label, &what, &gates, failures);
    for row in &mut table[first_row..] {
        row.push_str(if passed { " pass |" } else { " **FAIL** |" });
    }
    Ok(CandidateReport {
        label: label.to_string(),
        step: step.into(),
        artifact: Some(artifact.into()),
        artifact_precision: Some(weights),
        execution: Some(exec),
        sizes: Some(size_metrics),
        recall_by_height: Some(strata),
        total: Some(tj),
        intervals: (!intervals.is_empty()).then_some(intervals),
        gates: Some(gates),
        passed: Some(passed),
        ..Default::default()
    })
}

/// Recall per face height, a row per candidate.
fn strata_md(candidates: &[CandidateReport]) -> String {
    let Some(first) = candidates.iter().find_map(|c| c.recall_by_height.as_ref()) else {
        return String::new();
    };
    let mut lo = 0.0;
    let bands: Vec<String> = first
        .iter()
        .map(|s| {
            let b = match s.below {
                Some(b) if lo == 0.0 => format!("< {b}"),
                Some(b) => format!("{lo}-{b}"),
                None => format!(">= {lo}"),
            };
            lo = s.below.unwrap_or(lo);
            b
        })
        .collect();
    let mut md = format!(
        "\nRecall by face height (fraction of the input height; reference faces in each band):\n\n| candidate | {} |\n|---|{}\n",
        first
            .iter()
            .zip(&bands)
            .map(|(s, b)| format!("{b} ({})", s.faces))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(first.len())
    );
    for c in candidates {
        if let Some(st) = &c.recall_by_height {
            md += &format!(
                "| {} | {} |\n",
                c.label,
                st.iter()
                    .map(|s| fmt_opt(s.recall, 4))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
    }
    md
}

/// Every reference detection, per image and size, for the report.
fn reference_images(per_size: &[SizeRun]) -> Vec<ReferenceImage> {
    per_size
        .iter()
        .flat_map(|(size, prepared, dets)| {
            prepared
                .files
                .iter()
                .zip(dets)
                .zip(&prepared.scales)
                .map(move |((f, d), sc)| ReferenceImage {
                    file: f.file_name().map(String::from),
                    input_size: *size,
                    scale: *sc,
                    detections: d.iter().map(round2).collect(),
                })
        })
        .collect()
}

/// report.md's header and table.
fn markdown(
    ctx: &StepContext,
    p: &CompareParams,
    spec: &crate::manifest::DetectorSpec,
    (images, sizes): (usize, &[[u32; 2]]),
    ort_version: &str,
    table: &[String],
) -> String {
    let step = &ctx.step.name;
    let mut md = format!(
        "# compare `{step}` — pipeline `{}` (detector, {:?})\n\n",
        ctx.manifest.name, spec.family
    );
    md += &format!(
        "Validation set `{}`: {} images at {}; score threshold {}, NMS IoU {}, matched at IoU >= {}. Reference: ONNX original in ONNX Runtime {}.\n\n",
        p.dataset,
        images,
        sizes
            .iter()
            .map(|s| format!("{}x{}", s[0], s[1]))
            .collect::<Vec<_>>()
            .join(", "),
        spec.score_threshold,
        spec.nms_iou,
        p.match_iou,
        ort_version
    );
    md += "| candidate | artifact | executed | input | ref boxes | cand boxes | recall | FP/img | score drift max | IoU min | landmark NME max | NMS parity | gate |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for row in table {
        md += row;
        md.push('\n');
    }
    md
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}"))
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No landmarks to measure: the landmark gate fails, as release would, unless the gates
    /// say `missing: pass` (before the one rule, detection passed it silently).
    #[test]
    fn missing_landmarks_follow_the_one_rule() {
        let t = DetectionTotals {
            recall: 1.0,
            ..Default::default()
        };
        let mut g = Gates {
            recall_min: Some(0.99),
            landmark_nme_max: Some(0.01),
            ..Default::default()
        };
        let none = BTreeMap::new();
        let r = detection_gates(&g, &t, &none);
        assert!(r[0].passed && !r[1].passed);
        assert_eq!(r[1].status.as_deref(), Some("not measured"));
        g.missing = Some(gate::OnMissing::Pass);
        assert!(detection_gates(&g, &t, &none).iter().all(|x| x.passed));
    }
}
