//! `compare` for face swappers (`task: swapper`), fed as InsightFace's INSwapper is
//! (`model_zoo/inswapper.py`): each target face's ArcFace crop (at 128, `estimate_norm`'s
//! 128 branch) with the latent of a face of another identity (the recognizer's normed
//! embedding times `emap`, normed). The reference and every candidate swap the same pairs;
//! each candidate's swapped faces are compared with the reference's as pictures (PSNR, SSIM,
//! the largest pixel difference, on 0..255 RGB) and as a user sees them: the recognizer's
//! embedding of the candidate's swapped face against that of the reference's (cosine), and
//! whether it still matches the source identity where the reference's does (flips at
//! `identity_threshold`).

use std::time::{Duration, Instant};

use ndarray::{Array4, ArrayD, Axis, s};
use serde_json::json;

use super::report::{CandidateReport, CompareReport, SwapperFigures, SwapperSetup};
use super::{CompareParams, batch_for, load_candidate, note_failures, record_not_compared};
use crate::domain::Crop;
use crate::error::{Error, Result};
use crate::manifest::{Layout, Preprocessing};
use crate::metrics::gate::{self, GateResult, Gates, Measurement, Naming};
use crate::metrics::image::{Planes, max_abs_diff, psnr, ssim};
use crate::runtime::{LoadedModel, NamedTensor, Runtime, onnxruntime::OnnxRuntime};
use crate::steps::inputs::{Recognizer, SourceLatents};
use crate::steps::{StepContext, StepOutcome};

/// Columns of report.md's table.
const COLUMNS: usize = 10;

/// The default threshold of identity flips: a cosine ArcFace-family recognizers commonly
/// accept the same person at; set the recognizer's own with `identity_threshold`.
const DEFAULT_IDENTITY_THRESHOLD: f64 = 0.3;

/// Each swapped face (0..1 RGB planes, as the model gives them) of a model over the pairs.
struct Swapped {
    faces: Vec<Vec<f32>>,
    /// Height and width of each face.
    hw: (usize, usize),
    spent: Duration,
}

pub(super) fn run(
    ctx: &StepContext,
    p: &CompareParams,
    pre: &Preprocessing,
) -> Result<StepOutcome> {
    let t_total = Instant::now();
    let step = &ctx.step.name;
    p.refuse_gates_except(
        step,
        (
            "a swapper",
            "its swapped faces are compared as pictures and identities",
        ),
        (gate::SWAPPER, ""),
    )?;
    let mut set = super::prepare_set(ctx, p, pre)?;
    let mut timing = std::mem::take(&mut set.timing);
    let t_feed = Instant::now();
    let feeds =
        crate::steps::inputs::dataset_feeds(ctx, (&p.dataset, set.aligner.as_ref()), &set.files)?;
    let mut latents = feeds.latents.ok_or_else(|| Error::Step {
        step: step.clone(),
        message: "comparing a swapper needs a source input fed by a recognizer".into(),
        hint: Some("declare it under `model.inputs`, e.g. `source: {shape: [1, 512], feed: {embedding: {model: models/w600k_r50.onnx, emap: true}}}`".into()),
    })?;
    timing.insert(
        "source_latents_ms".into(),
        json!(t_feed.elapsed().as_millis() as u64),
    );
    let pairs = swap_pairs(&latents, &set, (step, &p.dataset))?;
    let targets: Vec<usize> = pairs.iter().map(|(t, _)| *t).collect();
    let target_crop = ctx.manifest.model.input.crop_for(ctx.manifest.model.task);
    let feed = pair_feed(ctx, &set.prepared.tensor, &feeds.tensors, &targets);

    ctx.check_cancelled()?;
    ctx.progress
        .set_message(format!("reference swaps of {} pairs", pairs.len()));
    let ort = OnnxRuntime::new(ctx.toolchain, p.threads)?;
    let mut reference = ort.load(ctx.model)?;
    let batch = batch_for(reference.as_ref(), p.batch);
    let reference_swaps = swap_all(reference.as_mut(), &feed, batch)?;
    let ref_ids = identities(&mut latents.recognizer, &reference_swaps, target_crop)?;
    timing.insert(
        "reference".to_string(),
        json!({"ms": reference_swaps.spent.as_millis() as u64, "batch": batch}),
    );
    let threshold = p.identity_threshold.unwrap_or(DEFAULT_IDENTITY_THRESHOLD);
    let source_emb: Vec<&[f32]> = pairs
        .iter()
        .map(|(_, s)| latents.embeddings[*s].as_deref().unwrap_or(&[]))
        .collect();
    let setup = setup_of(ctx, &latents, &pairs, threshold, &ref_ids, &source_emb);
    let r = Reference {
        swaps: &reference_swaps,
        ids: &ref_ids,
        sources: &source_emb,
        threshold,
    };

    let mut table = Vec::new();
    let mut failures = Vec::new();
    let mut candidates = Vec::new();
    for cand in &p.candidates {
        ctx.check_cancelled()?;
        let label = cand.label();
        let gates = gates_for(p, &label);
        let mut l = match load_candidate(ctx, p, cand, &ort)? {
            Ok(l) => l,
            Err(why) => {
                record_not_compared(
                    &label,
                    cand.step(),
                    &why,
                    COLUMNS,
                    (&gates, gate::SWAPPER),
                    &mut table,
                    &mut candidates,
                    &mut failures,
                );
                continue;
            }
        };
        ctx.progress.set_message(format!("swaps of `{label}`"));
        let own = batch_for(l.model.as_ref(), p.batch);
        let swaps = swap_all(l.model.as_mut(), &feed, own)?;
        let ids = identities(&mut latents.recognizer, &swaps, target_crop)?;
        timing.insert(
            label.clone(),
            json!({"ms": swaps.spent.as_millis() as u64, "load_ms": l.load_ms, "batch": own, "step": cand.step(), "precision_hint": l.hint}),
        );
        let f = figures_of(&r, &swaps, &ids);
        let (c, row) = candidate_report(cand, &l, f, &gates, &mut failures);
        table.push(row);
        candidates.push(c);
    }

    let mut report = super::task_report(
        ctx,
        p,
        ("swapper", &set),
        reference.execution(),
        (candidates, failures),
    );
    report.swapper = Some(setup);
    let worst = report
        .candidates
        .iter()
        .filter_map(|c| c.psnr_min)
        .fold(f64::INFINITY, f64::min);
    let summary = json!({"images": set.files.len(), "pairs": pairs.len(), "candidates": p.candidates.len(), "worst_psnr_db": worst.is_finite().then_some(worst)});
    let md = markdown(ctx, &report, &table);
    super::finish(ctx, &report, (md, "swapper"), timing, t_total, summary)
}

/// (target, source) image pairs: every target whose face was found (every image when the
/// images are the crops) and that has a source of another identity.
fn swap_pairs(
    latents: &SourceLatents,
    set: &super::PreparedSet,
    (step, dataset): (&str, &str),
) -> Result<Vec<(usize, usize)>> {
    let aligned = set.aligner.is_some();
    let pairs: Vec<(usize, usize)> = latents
        .source_of
        .iter()
        .enumerate()
        .filter_map(|(t, s)| {
            let s = (*s)?;
            (!aligned || set.prepared.faces[t].is_some()).then_some((t, s))
        })
        .collect();
    if pairs.is_empty() {
        return Err(Error::Step {
            step: step.to_string(),
            message: format!("no target face in `{dataset}` has a source face of another identity"),
            hint: Some("give the dataset a folder per identity (two or more), or a pairs file with different-identity pairs".into()),
        });
    }
    Ok(pairs)
}

/// The reference's swaps and what the candidates are measured against.
struct Reference<'a> {
    swaps: &'a Swapped,
    /// The recognizer's unit embedding of each reference swap.
    ids: &'a [Vec<f32>],
    /// The source identity's unit embedding, per pair.
    sources: &'a [&'a [f32]],
    threshold: f64,
}

/// Every input's rows for the pairs' targets: the image crops and each other input.
fn pair_feed(
    ctx: &StepContext,
    images: &Array4<f32>,
    others: &[(String, ArrayD<f32>)],
    targets: &[usize],
) -> Vec<NamedTensor> {
    std::iter::once((
        ctx.manifest.model.input.name.clone(),
        images.select(Axis(0), targets).into_dyn(),
    ))
    .chain(
        others
            .iter()
            .map(|(n, a)| (n.clone(), a.select(Axis(0), targets))),
    )
    .collect()
}

/// Run every row of `feed` through `model` in batches of `batch` (the last padded with
/// zeros); the first output of each row, flattened, with its height and width.
fn swap_all(model: &mut dyn LoadedModel, feed: &[NamedTensor], batch: usize) -> Result<Swapped> {
    let mut faces = Vec::new();
    let mut hw = (0, 0);
    let spent = super::in_batches(model, &super::views_of(feed), batch, |(start, end), out| {
        let (name, y) = out
            .first()
            .ok_or_else(|| anyhow::anyhow!("the model gave no output"))?;
        if y.ndim() != 4 || y.shape()[0] != batch || y.shape()[1] != 3 {
            return Err(anyhow::anyhow!(
                "output `{name}` has shape {:?}; a swapper gives [batch, 3, H, W] faces",
                y.shape()
            )
            .into());
        }
        hw = (y.shape()[2], y.shape()[3]);
        faces.extend((0..end - start).map(|i| y.index_axis(Axis(0), i).iter().copied().collect()));
        Ok(())
    })?;
    Ok(Swapped { faces, hw, spent })
}

/// The recognizer's unit embedding of each swapped face: the face back to 0..255 RGB as
/// InsightFace pastes it (`clip(255 x, 0, 255)` as uint8), its ArcFace-112 crop taken from
/// the swap's ArcFace crop (the 128 crop is the 112 template shifted 8 px right), fed as the
/// recognizer is fed.
fn identities(rec: &mut Recognizer, s: &Swapped, crop: Crop) -> Result<Vec<Vec<f32>>> {
    let (h, w) = s.hw;
    let size = rec.pre.size;
    let (ratio, shift) =
        crate::preprocess::align::arcface_frame(w as u32, crop == Crop::Arcface128);
    let (ratio, shift) = (ratio as f64, shift as f64);
    let k = size[1] as f64 / (112.0 * ratio);
    let m = [[k, 0.0, -shift * k], [0.0, k, 0.0]];
    let mut t = Array4::<f32>::zeros((s.faces.len(), 3, size[0] as usize, size[1] as usize));
    for (i, f) in s.faces.iter().enumerate() {
        let img = image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
            let px = |c: usize| {
                let v = f[c * h * w + y as usize * w + x as usize];
                (v * 255.0).clamp(0.0, 255.0) as u8
            };
            image::Rgb([px(0), px(1), px(2)])
        });
        let crop = crate::preprocess::align::warp(&img, &m, size[1], size[0]);
        let x = crate::preprocess::to_tensor(&crop, &rec.pre, Layout::NCHW);
        t.slice_mut(s![i..i + 1, .., .., ..]).assign(&x);
    }
    rec.embed(&t)
}

/// How the swapper was fed, and the reference's own identity figures.
fn setup_of(
    ctx: &StepContext,
    l: &SourceLatents,
    pairs: &[(usize, usize)],
    threshold: f64,
    ref_ids: &[Vec<f32>],
    sources: &[&[f32]],
) -> SwapperSetup {
    let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let to_source = mean(
        ref_ids
            .iter()
            .zip(sources)
            .map(|(a, b)| crate::metrics::cosine(a, b))
            .collect(),
    );
    let to_target = mean(
        ref_ids
            .iter()
            .zip(pairs)
            .filter_map(|(a, (t, _))| Some(crate::metrics::cosine(a, l.embeddings[*t].as_ref()?)))
            .collect(),
    );
    SwapperSetup {
        target_input: ctx.manifest.model.input.name.clone(),
        source_input: l.input.clone(),
        recognizer: l.recognizer.label.clone(),
        emap: l.emap,
        pairs: pairs.len(),
        identities: l.identities.into(),
        identity_threshold: threshold,
        reference_to_source_mean: to_source,
        reference_to_target_mean: to_target,
    }
}

/// A candidate's swaps against the reference's, pair by pair.
fn figures_of(r: &Reference, c: &Swapped, ids: &[Vec<f32>]) -> SwapperFigures {
    let (h, w) = r.swaps.hw;
    let to255 =
        |f: &[f32]| -> Vec<f32> { f.iter().map(|v| (v * 255.0).clamp(0.0, 255.0)).collect() };
    let (mut psnrs, mut ssims, mut cosines) = (Vec::new(), Vec::new(), Vec::new());
    let (mut pixel_max, mut flips, mut non_finite) = (0.0f64, 0u64, 0usize);
    for (k, (a, b)) in r.swaps.faces.iter().zip(&c.faces).enumerate() {
        if b.iter().any(|v| !v.is_finite()) || c.hw != r.swaps.hw {
            non_finite += 1;
            flips += 1;
            continue;
        }
        let (a, b) = (to255(a), to255(b));
        psnrs.push(psnr(&a, &b));
        ssims.push(ssim(&Planes { data: &a, h, w }, &Planes { data: &b, h, w }));
        pixel_max = pixel_max.max(max_abs_diff(&a, &b));
        cosines.push(crate::metrics::cosine(&r.ids[k], &ids[k]));
        let matches = |e: &[f32]| crate::metrics::cosine(e, r.sources[k]) >= r.threshold;
        flips += u64::from(matches(&r.ids[k]) != matches(&ids[k]));
    }
    let min = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::min);
    let mean = |v: &[f64]| {
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    SwapperFigures {
        faces: r.swaps.faces.len(),
        psnr_min: min(&psnrs),
        psnr_mean: mean(&psnrs),
        ssim_min: min(&ssims),
        ssim_mean: mean(&ssims),
        pixel_error_max: pixel_max,
        identity_cosine_min: min(&cosines),
        identity_cosine_mean: mean(&cosines),
        identity_flips: flips,
        non_finite,
    }
}

/// A compared candidate's report entry and table row, its gates judged.
fn candidate_report(
    cand: &super::CandidateSpec,
    l: &super::Loaded,
    f: SwapperFigures,
    gates: &Gates,
    failures: &mut Vec<String>,
) -> (CandidateReport, String) {
    let label = cand.label();
    let results = judge(gates, &f);
    let exec = l.model.execution();
    let what = format!("{} {}, executed {}", l.artifact, l.weights, exec.precision);
    let passed = note_failures(&label, &what, &results, failures);
    let row = format!(
        "| {label} | {what} | {} | {:.2} / {:.2} | {:.4} / {:.4} | {:.0} | {:.4} / {:.4} | {} | {} |",
        f.faces,
        f.psnr_min,
        f.psnr_mean,
        f.ssim_min,
        f.ssim_mean,
        f.pixel_error_max,
        f.identity_cosine_min,
        f.identity_cosine_mean,
        f.identity_flips,
        if passed { "pass" } else { "**FAIL**" }
    );
    let finite = |x: f64| x.is_finite().then_some(x);
    let report = CandidateReport {
        label: label.clone(),
        step: cand.step().into(),
        artifact: Some(l.artifact.into()),
        artifact_precision: Some(l.weights.clone()),
        execution: Some(exec),
        preprocessing: Some("model.preprocessing".into()),
        psnr_min: finite(f.psnr_min),
        ssim_min: finite(f.ssim_min),
        identity_cosine_min: finite(f.identity_cosine_min),
        swapper: Some(f),
        gates: Some(results),
        passed: Some(passed),
        ..Default::default()
    };
    (report, row)
}

/// One candidate's swapper gates: its overrides over the step's; PSNR 35 dB and an
/// identity cosine of 0.98 when none is set.
fn gates_for(p: &CompareParams, label: &str) -> Gates {
    p.gates_or(label, gate::SWAPPER, |g| {
        g.psnr_min = Some(35.0);
        g.identity_cosine_min = Some(0.98);
    })
}

/// The swapper gates by the one rule: with no pair, or a swap that is not finite, every
/// figure but the flips is not measured, which fails its gate.
fn judge(gates: &Gates, f: &SwapperFigures) -> Vec<GateResult> {
    gates.check(gate::SWAPPER, Naming::Figure, |m| {
        let measured = match m.key {
            _ if f.faces == 0 => Measurement::NotMeasured("no pair to compare".into()),
            "identity_flips_max" => Measurement::Value(f.identity_flips as f64),
            _ if f.non_finite > 0 => {
                Measurement::NotMeasured(format!("{} swapped face(s) not finite", f.non_finite))
            }
            "psnr_min" => Measurement::Value(f.psnr_min),
            "psnr_mean_min" => Measurement::Value(f.psnr_mean),
            "ssim_min" => Measurement::Value(f.ssim_min),
            "ssim_mean_min" => Measurement::Value(f.ssim_mean),
            "pixel_error_max" => Measurement::Value(f.pixel_error_max),
            "identity_cosine_min" => Measurement::Value(f.identity_cosine_min),
            _ => Measurement::Value(f.identity_cosine_mean),
        };
        (measured, None)
    })
}

fn markdown(ctx: &StepContext, r: &CompareReport, rows: &[String]) -> String {
    let mut s = format!(
        "# compare `{}` — pipeline `{}` (face swapper)\n\n",
        ctx.step.name, ctx.manifest.name
    );
    if let Some(x) = &r.swapper {
        s += &format!(
            "Validation set `{}`: {} images, {} target faces, each swapped with the source \
             latent of a face of another identity ({}; input `{}`: the embedding of {}{}, normed). \
             Swapped faces are compared with the reference's as 0..255 RGB pictures (PSNR, \
             SSIM on luma, largest pixel difference) and as identities: the recognizer's \
             embedding of each swapped face against the reference's (cosine), and flips of \
             its match with the source at cosine {}. The reference's swaps sit at mean cosine \
             {:.3} to the source and {:.3} to the target.\n\n",
            r.dataset.name,
            r.dataset.images,
            x.pairs,
            x.identities,
            x.source_input,
            x.recognizer,
            if x.emap { " times `emap`" } else { "" },
            x.identity_threshold,
            x.reference_to_source_mean,
            x.reference_to_target_mean,
        );
    }
    s + &super::table_md(
        r,
        &[
            "candidate",
            "artifact",
            "pairs",
            "PSNR dB min / mean",
            "SSIM min / mean",
            "max pixel error",
            "identity cosine min / mean",
            "identity flips",
            "gates",
        ],
        rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_compare_pictures_and_identities_pair_by_pair() {
        let face = |v: f32| vec![v; 3 * 16 * 16];
        let r_swaps = Swapped {
            faces: vec![face(0.5), face(0.2)],
            hw: (16, 16),
            spent: Duration::ZERO,
        };
        let ids = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let src_a = [1.0f32, 0.0];
        let src_b = [1.0f32, 0.0];
        let sources: Vec<&[f32]> = vec![&src_a, &src_b];
        let r = Reference {
            swaps: &r_swaps,
            ids: &ids,
            sources: &sources,
            threshold: 0.3,
        };
        // The same swaps: perfect; a candidate whose first face is 1/255 brighter and
        // whose second face's identity turned to the source: one flip.
        let same = figures_of(&r, &r_swaps, &ids);
        assert_eq!((same.psnr_min, same.identity_flips), (100.0, 0));
        assert!((same.ssim_min - 1.0).abs() < 1e-9);
        let c = Swapped {
            faces: vec![face(0.5 + 1.0 / 255.0), face(0.2)],
            hw: (16, 16),
            spent: Duration::ZERO,
        };
        let c_ids = vec![vec![1.0, 0.0], vec![1.0, 0.1]];
        let f = figures_of(&r, &c, &c_ids);
        assert!((f.pixel_error_max - 1.0).abs() < 1e-4);
        assert!((f.psnr_min - 48.13).abs() < 0.01, "{}", f.psnr_min);
        assert_eq!(f.identity_flips, 1);
        assert!(f.identity_cosine_min < 0.2);
        let g = judge(
            &Gates {
                psnr_min: Some(40.0),
                identity_flips_max: Some(0),
                ..Default::default()
            },
            &f,
        );
        let v: Vec<(&str, bool)> = g.iter().map(|g| (g.metric.as_str(), g.passed)).collect();
        assert_eq!(v, vec![("psnr_min", true), ("identity_flips", false)]);
        // A non-finite swap fails every figure's gate.
        let bad = Swapped {
            faces: vec![vec![f32::NAN; 3 * 16 * 16], face(0.2)],
            hw: (16, 16),
            spent: Duration::ZERO,
        };
        let fb = figures_of(&r, &bad, &ids);
        assert_eq!(fb.non_finite, 1);
        assert!(
            judge(
                &Gates {
                    psnr_min: Some(1.0),
                    ..Default::default()
                },
                &fb
            )
            .iter()
            .all(|g| !g.passed)
        );
    }
}
