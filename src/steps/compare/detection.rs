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

use super::{CompareParams, Loaded, load_candidate};
use crate::detect::{self, Detection, Matching};
use crate::error::{Error, Result};
use crate::manifest::Preprocessing;
use crate::runtime::{LoadedModel, Runtime, onnxruntime::OnnxRuntime};
use crate::steps::{StepContext, StepOutcome};

/// Run `model` on every image of `tensor` (batch 1) and decode.
fn detect_all(
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

/// Totals over every image and size.
#[derive(Default)]
struct Tally {
    images: usize,
    parity: usize,
    m: Matching,
}

impl Tally {
    fn add(&mut self, m: Matching) {
        self.images += 1;
        self.parity += m.parity() as usize;
        self.m.reference += m.reference;
        self.m.candidate += m.candidate;
        self.m.matched += m.matched;
        self.m.pairs.extend(m.pairs);
    }

    fn json(&self) -> serde_json::Value {
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
        let mean = |v: &[f64]| {
            if v.is_empty() {
                serde_json::Value::Null
            } else {
                json!(v.iter().sum::<f64>() / v.len() as f64)
            }
        };
        let max = |v: &[f64]| {
            v.iter()
                .copied()
                .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))))
        };
        json!({
            "images": self.images,
            "reference_boxes": m.reference, "candidate_boxes": m.candidate, "matched": m.matched,
            "recall": recall, "fp_per_image": fp,
            "iou": {"mean": mean(&ious), "min": ious.iter().copied().fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.min(x))))},
            "score_drift": {"mean": mean(&drift), "max": max(&drift)},
            "landmark_nme": {"mean": mean(&nme), "max": max(&nme)},
            "nms_parity": self.parity as f64 / self.images.max(1) as f64,
        })
    }
}

fn round2(d: &Detection) -> serde_json::Value {
    let r = |v: f32| (v * 100.0).round() / 100.0;
    json!({"bbox": d.bbox.map(r), "score": (d.score * 1e4).round() / 1e4, "kps": d.kps.map(|k| k.map(|p| p.map(r)))})
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
    if p.has_recognition_gates() {
        return Err(Error::Step { step: step.clone(), message: "embedding gates (cosine_min, tar_drop_max, flips_max) are set on a detection model".into(), hint: Some("use recall_min, fp_per_image_max, landmark_nme_max, score_drift_max and nms_parity_min".into()) });
    }
    let input = ctx.manifest.model.input.name.clone();
    let dspec = &ctx.manifest.datasets[&p.dataset];
    let files = crate::preprocess::list_images(&ctx.datasets[&p.dataset], dspec.count, dspec.seed)?;
    let sizes = p.input_sizes.clone().unwrap_or_else(|| vec![pre.size]);

    let ort = OnnxRuntime::new(ctx.toolchain, p.threads)?;
    let mut reference = ort.load(ctx.model)?;
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
            step: step.clone(),
            message: format!(
                "the model's input is fixed at {h}x{w}; it cannot run at {}x{}",
                bad[0], bad[1]
            ),
            hint: Some("drop `input_sizes`, or export the detector with dynamic H/W".into()),
        });
    }

    // Prepare every size once; the reference's detections per size.
    let mut timing = BTreeMap::new();
    let mut per_size = Vec::new();
    for &size in &sizes {
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
        let prepared = crate::preprocess::prepare(ctx.store, &files, &ctx.feed(&sized, None))?;
        let (dets, ms) = detect_all(reference.as_mut(), &input, &prepared.tensor, spec)?;
        timing.insert(
            format!("reference_{}x{}", size[0], size[1]),
            json!({"ms": ms, "prepare_ms": prepared.prepare_ms}),
        );
        per_size.push((size, prepared, dets));
    }

    let mut failures = Vec::new();
    let mut cands_json = Vec::new();
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
        } = match load_candidate(ctx, p, cand, &ort)? {
            Ok(l) => l,
            Err(why) => {
                super::record_unavailable(
                    &label,
                    cand.step(),
                    &why,
                    13,
                    &mut table,
                    &mut cands_json,
                );
                continue;
            }
        };
        let exec = model.execution();
        let mut total = Tally::default();
        let mut sizes_json = Vec::new();
        let first_row = table.len();
        for (size, prepared, ref_dets) in &per_size {
            let (dets, ms) = detect_all(model.as_mut(), &input, &prepared.tensor, spec)?;
            timing.insert(
                format!("{label}_{}x{}", size[0], size[1]),
                json!({"ms": ms, "load_ms": load_ms, "precision_hint": hint}),
            );
            let mut t = Tally::default();
            for (r, c) in ref_dets.iter().zip(&dets) {
                let m = detect::match_detections(r, c, p.match_iou);
                t.add(m.clone());
                total.add(m);
            }
            let j = t.json();
            table.push(format!(
                "| {label} | {artifact} {weights} | {} | {}x{} | {} | {} | {:.4} | {:.3} | {} | {} | {} | {:.3} |",
                exec.precision, size[0], size[1], j["reference_boxes"], j["candidate_boxes"], j["recall"].as_f64().unwrap_or(f64::NAN), j["fp_per_image"].as_f64().unwrap_or(f64::NAN),
                fmt_opt(&j["score_drift"]["max"], 4), fmt_opt(&j["iou"]["min"], 4), fmt_opt(&j["landmark_nme"]["max"], 5), j["nms_parity"].as_f64().unwrap_or(f64::NAN)
            ));
            sizes_json.push(json!({"input_size": size, "metrics": j}));
        }
        let tj = total.json();
        let g = p.gates_for(&label);
        let val = |k: &str, sub: Option<&str>| -> Option<f64> {
            sub.map_or(&tj[k], |s| &tj[k][s]).as_f64()
        };
        // (metric, measured, limit, passed); a metric with nothing to measure (no landmarks,
        // no matches) passes vacuously and says so with a null value.
        let mut checks: Vec<(&str, Option<f64>, f64, bool)> = Vec::new();
        let mut gate = |name: &'static str, limit: Option<f64>, v: Option<f64>, at_least: bool| {
            if let Some(l) = limit {
                checks.push((
                    name,
                    v,
                    l,
                    v.is_none_or(|x| if at_least { x >= l } else { x <= l }),
                ));
            }
        };
        gate("recall", g.recall_min, val("recall", None), true);
        gate(
            "fp_per_image",
            g.fp_per_image_max,
            val("fp_per_image", None),
            false,
        );
        gate(
            "landmark_nme",
            g.landmark_nme_max,
            val("landmark_nme", Some("max")),
            false,
        );
        gate(
            "score_drift",
            g.score_drift_max,
            val("score_drift", Some("max")),
            false,
        );
        gate(
            "nms_parity",
            g.nms_parity_min,
            val("nms_parity", None),
            true,
        );
        for (metric, value, limit, ok) in &checks {
            if !ok {
                failures.push(format!("candidate `{label}` ({artifact} {weights}, executed {}): {metric} {:.6} violates limit {limit}", exec.precision, value.unwrap_or(f64::NAN)));
            }
        }
        let gates: Vec<serde_json::Value> = checks
            .iter()
            .map(|(m, v, l, ok)| json!({"metric": m, "value": v, "limit": l, "passed": ok}))
            .collect();
        let passed = checks.iter().all(|c| c.3);
        for row in &mut table[first_row..] {
            row.push_str(if passed { " pass |" } else { " **FAIL** |" });
        }
        cands_json.push(json!({"label": label, "step": cand.step(), "artifact": artifact, "artifact_precision": weights, "execution": exec, "sizes": sizes_json, "total": tj, "gates": gates, "passed": passed}));
    }

    let passed = failures.is_empty();
    let images: Vec<serde_json::Value> = per_size
        .iter()
        .flat_map(|(size, prepared, dets)| {
            prepared.files.iter().zip(dets).zip(&prepared.scales).map(move |((f, d), sc)| json!({"file": f.file_name(), "input_size": size, "scale": sc, "detections": d.iter().map(round2).collect::<Vec<_>>()}))
        })
        .collect();
    let report = json!({
        "step": step,
        "kind": "compare",
        "task": "detection",
        "passed": passed,
        "detector": spec,
        "match_iou": p.match_iou,
        "dataset": {"name": p.dataset, "images": files.len(), "input_sizes": sizes},
        "reference": {"model": "ONNX original", "execution": reference.execution(), "images": images},
        "candidates": cands_json,
        "failures": failures,
        "toolchain": ctx.toolchain.fingerprint(super::TOOLCHAIN),
    });
    let report_path = crate::steps::write_report(ctx.workdir, "report.json", &report)?;
    let mut md = format!(
        "# compare `{step}` — pipeline `{}` (detector, {:?})\n\n",
        ctx.manifest.name, spec.family
    );
    md += &format!(
        "Validation set `{}`: {} images at {}; score threshold {}, NMS IoU {}, matched at IoU >= {}. Reference: ONNX original in ONNX Runtime {}.\n\n",
        p.dataset,
        files.len(),
        sizes
            .iter()
            .map(|s| format!("{}x{}", s[0], s[1]))
            .collect::<Vec<_>>()
            .join(", "),
        spec.score_threshold,
        spec.nms_iou,
        p.match_iou,
        reference.execution().version
    );
    md += "| candidate | artifact | executed | input | ref boxes | cand boxes | recall | FP/img | score drift max | IoU min | landmark NME max | NMS parity | gate |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for row in &table {
        md += row;
        md.push('\n');
    }
    if !passed {
        md += "\nFailed gates:\n";
        for f in &report["failures"].as_array().cloned().unwrap_or_default() {
            md += &format!("- {}\n", f.as_str().unwrap_or(""));
        }
    }
    let md_path = ctx.workdir.join("report.md");
    std::fs::write(&md_path, md).map_err(|e| Error::io(&md_path, e))?;
    if !passed {
        return Err(Error::Step {
            step: step.clone(),
            message: format!(
                "detection gate failed: {}",
                report["failures"]
                    .as_array()
                    .map(|f| f
                        .iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join("; "))
                    .unwrap_or_default()
            ),
            hint: Some("see report.md beside report.json for every candidate's figures".into()),
        });
    }
    timing.insert(
        "total_ms".into(),
        json!(t_total.elapsed().as_millis() as u64),
    );
    let worst_recall = report["candidates"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|x| x["total"]["recall"].as_f64())
                .fold(1.0, f64::min)
        })
        .unwrap_or(1.0);
    let ref_boxes: usize = per_size
        .iter()
        .map(|(_, _, d)| d.iter().map(Vec::len).sum::<usize>())
        .sum();
    let mut summary = json!({"images": files.len(), "sizes": sizes.len(), "reference_boxes": ref_boxes, "candidates": p.candidates.len(), "worst_recall": worst_recall, "timing": timing});
    super::note_unavailable(
        &mut summary,
        report["candidates"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default(),
    );
    Ok(StepOutcome {
        outputs: [
            ("report.json".to_string(), report_path),
            ("report.md".to_string(), md_path),
        ]
        .into(),
        summary,
    })
}

fn fmt_opt(v: &serde_json::Value, prec: usize) -> String {
    v.as_f64()
        .map(|x| format!("{x:.prec$}"))
        .unwrap_or_else(|| "-".into())
}
