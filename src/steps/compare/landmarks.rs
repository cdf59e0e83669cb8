//! `compare` for landmark models (`task: landmarks`), as a user of the points sees them:
//! each face is cropped as the model is fed (a box crop by default, InsightFace's
//! `face_align.transform`), the reference and every candidate run on the same crops, their
//! points are read from the output (`model.landmarks`) and mapped back to the photo through
//! the crop's inverse transform, and each face's NME is the mean point distance over its
//! normaliser: the outer-eye-corner distance of the reference's points for schemes known by
//! name (iBUG 68, WFLW 98), the detected box's sqrt(w h) otherwise. Gates: `nme_mean_max`
//! (mean over faces) and `nme_max` (worst face; 0.05 unless set). With `atol`/`rtol` the
//! outputs are compared one by one instead (`outputs`).

use std::time::{Duration, Instant};

use ndarray::Array4;
use serde_json::json;

use super::report::{CandidateReport, CompareReport, LandmarkFigures, LandmarkSetup};
use super::{CompareParams, batch_for, load_candidate, note_failures, record_not_compared};
use crate::error::{Error, Result};
use crate::manifest::{Crop, Preprocessing};
use crate::metrics::Summary;
use crate::metrics::gate::{self, GateResult, Gates, Measurement, Naming};
use crate::metrics::landmarks::{PointLayout, point_errors, rotation_between};
use crate::preprocess::align::FaceCrop;
use crate::runtime::{LoadedModel, NamedTensor, Runtime, onnxruntime::OnnxRuntime};
use crate::steps::{StepContext, StepOutcome};

/// `nme_max` when no landmark gate says otherwise: 5% of the normaliser on the worst face.
pub(crate) const DEFAULT_NME_MAX: f64 = 0.05;

/// Columns of report.md's table.
const COLUMNS: usize = 10;

/// Why no output can be read as one row per face, in words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Unreadable(pub String);

/// One face as compared: where its crop sits in the photo and what normalises its NME.
struct Face {
    image: usize,
    crop: Option<FaceCrop>,
    /// The reference's points in photo pixels.
    reference: Vec<[f64; 2]>,
    /// 3D models: the reference's points with z, in photo pixels, for the pose.
    reference3: Option<Vec<[f64; 3]>>,
    normaliser: f64,
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
            "a landmark model",
            "its points are compared as NME per face",
        ),
        (
            gate::LANDMARKS,
            " (or atol/rtol, which compare the outputs one by one)",
        ),
    )?;
    let input = ctx.manifest.model.input.name.clone();
    let mut set = super::prepare_set(ctx, p, pre)?;
    let mut timing = std::mem::take(&mut set.timing);
    let (prepared, aligned) = (&set.prepared, set.aligner.is_some());

    ctx.check_cancelled()?;
    ctx.progress.set_message("reference landmarks");
    let ort = OnnxRuntime::new(ctx.toolchain, p.threads)?;
    let mut reference = ort.load(ctx.model)?;
    let batch = batch_for(reference.as_ref(), p.batch);
    let spec = ctx.manifest.model.landmarks.clone().unwrap_or_default();
    let names = reference.outputs();
    let (ref_rows, ref_ms, out_idx) = rows_of(
        ctx,
        reference.as_mut(),
        (&input, &prepared.tensor, batch),
        &|outs| pick_output(outs, &spec, &names),
    )?;
    let out_name = names.get(out_idx).cloned().unwrap_or_default();
    let width = ref_rows.first().map_or(0, Vec::len);
    let layout = PointLayout::of(width, &spec).map_err(|e| Error::Step {
        step: step.clone(),
        message: format!("output `{out_name}`: {e}"),
        hint: Some("describe the output under `model.landmarks` (docs/manifest.md)".into()),
    })?;
    timing.insert(
        "reference".to_string(),
        json!({"ms": ref_ms.as_millis() as u64, "batch": batch}),
    );
    let size = pre.size;
    let faces = faces_of(&layout, &ref_rows, prepared, aligned, size);

    let mut table = Vec::new();
    let mut failures = Vec::new();
    let mut candidates = Vec::new();
    for cand in &p.candidates {
        ctx.check_cancelled()?;
        let label = cand.label();
        match load_candidate(ctx, p, cand, &ort)? {
            Err(why) => record_not_compared(
                &label,
                cand.step(),
                &why,
                COLUMNS,
                (&gates_for(p, &label), gate::LANDMARKS),
                &mut table,
                &mut candidates,
                &mut failures,
            ),
            Ok(l) => {
                let r = Reference {
                    input: &input,
                    tensor: &prepared.tensor,
                    layout: &layout,
                    faces: &faces,
                    output: (&out_name, out_idx),
                    size,
                };
                let (c, row) =
                    compare_candidate(ctx, p, cand, l, &r, (&mut timing, &mut failures))?;
                table.push(row);
                candidates.push(c);
            }
        }
    }

    let setup = setup_of(
        ctx,
        pre,
        aligned,
        (&layout, &faces),
        out_name,
        &prepared.faces,
    );
    let mut report = super::task_report(
        ctx,
        p,
        ("landmarks", &set),
        reference.execution(),
        (candidates, failures),
    );
    report.landmarks = Some(setup);
    let worst = report
        .candidates
        .iter()
        .filter_map(|c| c.nme_max)
        .fold(0.0, f64::max);
    let summary = json!({"images": set.files.len(), "faces": faces.len(), "candidates": p.candidates.len(), "points": layout.points, "worst_nme": worst});
    let md = markdown(ctx, &report, &table);
    super::finish(ctx, &report, (md, "landmark"), timing, t_total, summary)
}

/// What every candidate is compared with.
struct Reference<'a> {
    input: &'a str,
    tensor: &'a Array4<f32>,
    layout: &'a PointLayout,
    faces: &'a [Face],
    /// The points output's name and index in the reference.
    output: (&'a str, usize),
    size: [u32; 2],
}

/// One loaded candidate: its points, figures and gates; its report entry and table row.
fn compare_candidate(
    ctx: &StepContext,
    p: &CompareParams,
    cand: &super::CandidateSpec,
    mut l: super::Loaded,
    r: &Reference,
    (timing, failures): (
        &mut std::collections::BTreeMap<String, serde_json::Value>,
        &mut Vec<String>,
    ),
) -> Result<(CandidateReport, String)> {
    let label = cand.label();
    ctx.progress.set_message(format!("landmarks of `{label}`"));
    let own = batch_for(l.model.as_ref(), p.batch);
    let cnames = l.model.outputs();
    let (rows, ms, _) = rows_of(ctx, l.model.as_mut(), (r.input, r.tensor, own), &|outs| {
        candidate_output(outs, r.output.0, r.output.1, &cnames)
    })?;
    timing.insert(
        label.clone(),
        json!({"ms": ms.as_millis() as u64, "load_ms": l.load_ms, "batch": own, "step": cand.step(), "precision_hint": l.hint}),
    );
    let figures = figures_of(r.layout, r.faces, &rows, r.size);
    let results = judge(&gates_for(p, &label), &figures);
    let exec = l.model.execution();
    let what = format!("{} {}, executed {}", l.artifact, l.weights, exec.precision);
    let passed = note_failures(&label, &what, &results, failures);
    let row = row(&label, &what, &figures, passed);
    Ok((
        CandidateReport {
            label: label.clone(),
            step: cand.step().into(),
            artifact: Some(l.artifact.into()),
            artifact_precision: Some(l.weights.clone()),
            execution: Some(exec),
            preprocessing: Some("model.preprocessing".into()),
            nme_mean: finite(figures.nme.mean),
            nme_max: finite(figures.nme.max),
            landmarks: Some(figures),
            gates: Some(results),
            passed: Some(passed),
            ..Default::default()
        },
        row,
    ))
}

/// The report's account of how points were read, normalised and cropped.
fn setup_of(
    ctx: &StepContext,
    pre: &Preprocessing,
    aligned: bool,
    (layout, faces): (&PointLayout, &[Face]),
    output: String,
    rows: &[Option<FaceCrop>],
) -> LandmarkSetup {
    LandmarkSetup {
        output,
        points: layout.points,
        dims: layout.dim,
        coords: serde_json::to_value(layout.coords)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        scheme: layout.scheme.name().into(),
        normaliser: layout.scheme.describe(),
        crop: match (aligned, ctx.feed(pre, None).crop) {
            (false, _) => "as_is (the images are the crops)".into(),
            (true, Crop::Arcface) => "arcface".into(),
            (true, Crop::Arcface128) => "arcface128".into(),
            (true, Crop::Box { scale }) => format!("box, scale {scale}"),
        },
        faces: faces.len(),
        // Photos where no face was chosen: each gave one centre-cropped row, left out.
        no_face: if aligned {
            rows.iter().filter(|f| f.is_none()).count()
        } else {
            0
        },
        mean_normaliser_px: faces.iter().map(|f| f.normaliser).sum::<f64>()
            / faces.len().max(1) as f64,
        reference_eyes_vs_detector: eyes_vs_detector(layout, faces),
    }
}

/// A number for the report, or None when it is not finite (no faces, or non-finite points).
fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// One candidate's landmark gates: its overrides over the step's, `nme_max` 0.05 unless set.
fn gates_for(p: &CompareParams, label: &str) -> Gates {
    p.gates_or(label, gate::LANDMARKS, |g| {
        g.nme_max = Some(DEFAULT_NME_MAX)
    })
}

/// The reference's points output: the one `model.landmarks.output` names, else the first
/// two-dimensional output.
fn pick_output(
    outs: &[NamedTensor],
    spec: &crate::manifest::LandmarkSpec,
    names: &[String],
) -> std::result::Result<usize, Unreadable> {
    if let Some(want) = &spec.output {
        return outs.iter().position(|(n, _)| n == want).ok_or_else(|| {
            format!(
                "`model.landmarks.output: {want}` is not an output of the model (its outputs: {})",
                names.join(", ")
            )
        })
        .map_err(Unreadable);
    }
    outs.iter().position(|(_, t)| t.ndim() == 2).ok_or_else(|| {
        format!(
            "no output of shape [N, points x 2] (outputs: {}): name it in `model.landmarks.output`",
            names.join(", ")
        )
    })
    .map_err(Unreadable)
}

/// The candidate's points output: the reference's by name, else at the same position
/// (converters sometimes rename outputs).
pub(super) fn candidate_output(
    outs: &[NamedTensor],
    name: &str,
    idx: usize,
    names: &[String],
) -> std::result::Result<usize, Unreadable> {
    outs.iter()
        .position(|(n, _)| n == name)
        .or_else(|| (idx < outs.len()).then_some(idx))
        .ok_or_else(|| {
            format!(
                "the candidate has no output `{name}` (its outputs: {})",
                names.join(", ")
            )
        })
        .map_err(Unreadable)
}

/// Every image's row of one output (chosen by `pick` on the first run), batch by batch,
/// with the time spent in the model and the output's index. Attribute compare reads its
/// models the same way.
pub(super) fn rows_of(
    ctx: &StepContext,
    model: &mut dyn LoadedModel,
    (input, tensor, batch): (&str, &Array4<f32>, usize),
    pick: &dyn Fn(&[NamedTensor]) -> std::result::Result<usize, Unreadable>,
) -> Result<(Vec<Vec<f32>>, Duration, usize)> {
    let mut rows = Vec::with_capacity(tensor.shape()[0]);
    let mut chosen = None;
    let feed = [(input, tensor.view().into_dyn())];
    let ms = super::in_batches(model, &feed, batch, |(start, end), out| {
        ctx.check_cancelled()?;
        let idx = match chosen {
            Some(i) => i,
            None => {
                let i = pick(out).map_err(|e| Error::Step {
                    step: ctx.step.name.clone(),
                    message: e.0,
                    hint: None,
                })?;
                chosen = Some(i);
                i
            }
        };
        let (name, t) = &out[idx];
        if t.ndim() != 2 || t.shape()[0] < end - start {
            return Err(Error::Step {
                step: ctx.step.name.clone(),
                message: format!(
                    "output `{name}` has shape {:?} for a batch of {batch}: one row per face, [N, W], is read",
                    t.shape()
                ),
                hint: Some("compare the outputs one by one with `atol`/`rtol`, or export the model with a [N, W] output".into()),
            });
        }
        rows.extend(
            (0..end - start).map(|i| t.index_axis(ndarray::Axis(0), i).iter().copied().collect()),
        );
        Ok(())
    })?;
    Ok((rows, ms, chosen.unwrap_or(0)))
}

/// The faces compared: every image whose face was found (every image when the images are the
/// crops), with the reference's points in photo pixels and the face's normaliser.
fn faces_of(
    layout: &PointLayout,
    ref_rows: &[Vec<f32>],
    prepared: &crate::preprocess::Prepared,
    aligned: bool,
    size: [u32; 2],
) -> Vec<Face> {
    ref_rows
        .iter()
        .enumerate()
        .filter_map(|(i, row)| {
            let crop = prepared.faces.get(i).copied().flatten();
            if aligned && crop.is_none() {
                return None;
            }
            let reference = points_in_photo(&layout.decode(row, size), crop.as_ref());
            let bbox = match &crop {
                Some(c) => c.bbox.map(f64::from),
                None => [0.0, 0.0, size[1] as f64, size[0] as f64],
            };
            let normaliser = layout.scheme.normaliser(&reference, bbox);
            let reference3 = layout
                .decode3(row, size)
                .map(|p| points3_in_photo(&p, crop.as_ref()));
            Some(Face {
                image: i,
                crop,
                reference,
                reference3,
                normaliser,
            })
        })
        .collect()
}

/// The reference's eye centres against the detector's eye keypoints, mean over faces, over
/// each face's normaliser: how well the reference is fed (see `LandmarkSetup`).
fn eyes_vs_detector(layout: &PointLayout, faces: &[Face]) -> Option<f64> {
    let d: Vec<f64> = faces
        .iter()
        .filter_map(|f| {
            let kps = f.crop.as_ref()?.kps?;
            let eyes = layout.scheme.eye_centres(&f.reference)?;
            let k = |i: usize| [kps[i][0] as f64, kps[i][1] as f64];
            Some(
                (crate::metrics::landmarks::dist(eyes[0], k(0))
                    + crate::metrics::landmarks::dist(eyes[1], k(1)))
                    / 2.0
                    / f.normaliser.max(1e-9),
            )
        })
        .collect();
    (!d.is_empty()).then(|| d.iter().sum::<f64>() / d.len() as f64)
}

fn points_in_photo(points: &[[f64; 2]], crop: Option<&FaceCrop>) -> Vec<[f64; 2]> {
    match crop {
        Some(c) => points.iter().map(|p| c.in_photo(*p)).collect(),
        None => points.to_vec(),
    }
}

/// 3D points in photo pixels: (x, y) as [`points_in_photo`], z over the crop's scale (as
/// InsightFace's `trans_points3d`).
fn points3_in_photo(points: &[[f64; 3]], crop: Option<&FaceCrop>) -> Vec<[f64; 3]> {
    let Some(c) = crop else {
        return points.to_vec();
    };
    let scale = (c.m[0][0].powi(2) + c.m[0][1].powi(2)).sqrt().max(1e-12);
    points
        .iter()
        .map(|p| {
            let [x, y] = c.in_photo([p[0], p[1]]);
            [x, y, p[2] / scale]
        })
        .collect()
}

/// A candidate's figures over every face.
fn figures_of(
    layout: &PointLayout,
    faces: &[Face],
    rows: &[Vec<f32>],
    size: [u32; 2],
) -> LandmarkFigures {
    let (mut nme, mut px_sum, mut px_max, mut non_finite) = (Vec::new(), 0.0, 0f64, 0);
    let mut pose = Vec::new();
    for f in faces {
        let row = &rows[f.image];
        if row.iter().any(|x| !x.is_finite()) {
            non_finite += 1;
            continue;
        }
        let cand = points_in_photo(&layout.decode(row, size), f.crop.as_ref());
        let (mean, max) = point_errors(&f.reference, &cand);
        nme.push(mean / f.normaliser.max(1e-9));
        px_sum += mean;
        px_max = px_max.max(max);
        if let (Some(r3), Some(c3)) = (&f.reference3, layout.decode3(row, size)) {
            let c3 = points3_in_photo(&c3, f.crop.as_ref());
            // A degenerate set (all points equal) has no pose: counted as a full turn off.
            let angles = rotation_between(r3, &c3).unwrap_or([180.0; 3]);
            pose.push(angles.iter().fold(0f64, |m, a| m.max(a.abs())));
        }
    }
    LandmarkFigures {
        px_mean: px_sum / nme.len().max(1) as f64,
        nme: Summary::of(&nme),
        px_max,
        non_finite,
        pose_error_deg: (layout.dim == 3).then(|| Summary::of(&pose)),
    }
}

/// The landmark gates, by the one rule: a face with non-finite points leaves `nme_max`
/// unmeasured, which fails it.
fn judge(gates: &Gates, f: &LandmarkFigures) -> Vec<GateResult> {
    gates.check(gate::LANDMARKS, Naming::Figure, |m| {
        let m = if f.nme.n == 0 {
            Measurement::NotMeasured("no face to compare".into())
        } else if m.key == "nme_max" && f.non_finite > 0 {
            Measurement::NotMeasured(format!("{} face(s) with non-finite points", f.non_finite))
        } else if m.key == "pose_error_max" {
            match &f.pose_error_deg {
                None => Measurement::NotMeasured(
                    "2D points have no pose: pose_error_max needs a 3D-68 model".into(),
                ),
                Some(_) if f.non_finite > 0 => Measurement::NotMeasured(format!(
                    "{} face(s) with non-finite points",
                    f.non_finite
                )),
                Some(p) => Measurement::Value(p.max),
            }
        } else if m.key == "nme_max" {
            Measurement::Value(f.nme.max)
        } else {
            Measurement::Value(f.nme.mean)
        };
        (m, None)
    })
}

fn row(label: &str, what: &str, f: &LandmarkFigures, passed: bool) -> String {
    let pose = f
        .pose_error_deg
        .as_ref()
        .map_or("–".into(), |p| format!("{:.3}", p.max));
    format!(
        "| {label} | {what} | {} | {:.5} | {:.5} | {:.3} | {:.3} | {pose} | {} | {} |",
        f.nme.n,
        f.nme.mean,
        f.nme.max,
        f.px_mean,
        f.px_max,
        f.non_finite,
        if passed { "pass" } else { "**FAIL**" }
    )
}

fn markdown(ctx: &StepContext, r: &CompareReport, rows: &[String]) -> String {
    let mut s = format!(
        "# compare `{}` — pipeline `{}` (landmarks)\n\n",
        ctx.step.name, ctx.manifest.name
    );
    if let Some(l) = &r.landmarks {
        s += &format!(
            "Validation set `{}`: {} images, {} faces compared ({} without a face left out). \
             Points: {} from output `{}` ({} coordinates, scheme `{}`), crop: {}.\n\n\
             NME is the mean point distance over the {} (mean {:.1} px), per face.\n\n",
            r.dataset.name,
            r.dataset.images,
            l.faces,
            l.no_face,
            l.points,
            l.output,
            l.coords,
            l.scheme,
            l.crop,
            l.normaliser,
            l.mean_normaliser_px
        );
        if let Some(e) = l.reference_eyes_vs_detector {
            s += &format!(
                "Feeding check: the reference's eye centres lie {e:.3} normalisers from the detector's eye keypoints{}.\n\n",
                if e > 0.15 {
                    " — **far off: check `model.input.crop`, `model.landmarks.coords` and the preprocessing**"
                } else {
                    ""
                }
            );
        }
    }
    s + &super::table_md(
        r,
        &[
            "candidate",
            "artifact",
            "faces",
            "NME mean",
            "NME max",
            "px mean",
            "px max",
            "pose max °",
            "non-finite",
            "gates",
        ],
        rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{LandmarkCoords, LandmarkScheme};

    #[test]
    fn figures_are_measured_in_photo_pixels_over_the_normaliser() {
        let layout = PointLayout {
            points: 2,
            dim: 2,
            coords: LandmarkCoords::Unit,
            scheme: LandmarkScheme::Box,
        };
        // The crop is the photo at half scale: a crop pixel is two photo pixels.
        let crop = FaceCrop {
            m: [[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]],
            bbox: [0.0, 0.0, 40.0, 10.0],
            kps: None,
        };
        let faces = vec![Face {
            image: 0,
            crop: Some(crop),
            reference: vec![[20.0, 20.0], [40.0, 40.0]],
            reference3: None,
            normaliser: 20.0,
        }];
        // In a 40-px crop the reference is at 0.25 and 0.5; the second point moved by one
        // crop pixel, two photo pixels.
        let rows = vec![vec![0.25, 0.25, 0.525, 0.5]];
        let f = figures_of(&layout, &faces, &rows, [40, 40]);
        assert!(
            (f.px_mean - 1.0).abs() < 1e-5 && (f.px_max - 2.0).abs() < 1e-5,
            "{f:?}"
        );
        assert!((f.nme.max - 0.05).abs() < 1e-6, "{f:?}");
        let g = judge(
            &Gates {
                nme_max: Some(0.04),
                nme_mean_max: Some(0.1),
                ..Default::default()
            },
            &f,
        );
        assert_eq!(
            g.iter()
                .map(|g| (g.metric.as_str(), g.passed))
                .collect::<Vec<_>>(),
            vec![("nme_mean", true), ("nme_max", false)]
        );
        // 2D points have no pose: a pose gate on them is unmeasured, which fails it.
        let pose = judge(
            &Gates {
                pose_error_max: Some(1.0),
                ..Default::default()
            },
            &f,
        );
        assert!(!pose[0].passed && f.pose_error_deg.is_none(), "{pose:?}");
        let bad = figures_of(&layout, &faces, &[vec![f32::NAN, 0.1, 0.3, 0.2]], [40, 40]);
        assert_eq!(bad.non_finite, 1);
        assert!(
            !judge(
                &Gates {
                    nme_max: Some(1.0),
                    ..Default::default()
                },
                &bad
            )[0]
            .passed
        );
    }
}
