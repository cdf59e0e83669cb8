//! `compare` for attribute models (`task: attribute`) with InsightFace genderage's contract
//! (`model_zoo/attribute.py`): one `[N, 3]` output per face crop, gender the argmax of the
//! first two values, age `round(p[2] * 100)` years. Faces are cropped as the model is fed (a
//! box crop 1.5 times the detected face by default, as InsightFace feeds it), the reference
//! and every candidate run on the same crops, and each candidate's answers are compared face
//! by face with the reference's: gender flips (count and rate) and age error in years (mean
//! and worst). Gates: `gender_flips_max`, `age_mae_max`, `age_error_max` (0 flips and a
//! mean age error of 1 year when none is set).

use std::time::Instant;

use serde_json::json;

use super::landmarks::{Unreadable, candidate_output, rows_of};
use super::report::{AttributeFigures, CandidateReport, CompareReport};
use super::{CompareParams, batch_for, load_candidate, note_failures, record_not_compared};
use crate::error::Result;
use crate::manifest::Preprocessing;
use crate::metrics::gate::{self, GateResult, Gates, Measurement, Naming};
use crate::runtime::{NamedTensor, Runtime, onnxruntime::OnnxRuntime};
use crate::steps::{StepContext, StepOutcome};

/// Columns of report.md's table.
const COLUMNS: usize = 8;

/// One face's answer: gender (0 or 1, the argmax of the first two values, the first on a
/// tie as numpy's) and age in years.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Answer {
    pub gender: usize,
    pub age: f64,
}

/// A row of the output as InsightFace reads it; None when it is not finite.
pub(crate) fn answer(row: &[f32]) -> Option<Answer> {
    let v = row.get(..3)?;
    if v.iter().any(|x| !x.is_finite()) {
        return None;
    }
    Some(Answer {
        gender: usize::from(v[1] > v[0]),
        age: (v[2] as f64 * 100.0).round(),
    })
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
            "an attribute model",
            "its answers are compared face by face",
        ),
        (
            gate::ATTRIBUTE,
            " (or atol/rtol, which compare the outputs one by one)",
        ),
    )?;
    let input = ctx.manifest.model.input.name.clone();
    let mut set = super::prepare_set(ctx, p, pre)?;
    let mut timing = std::mem::take(&mut set.timing);
    let (prepared, aligned) = (&set.prepared, set.aligner.is_some());

    ctx.check_cancelled()?;
    ctx.progress.set_message("reference attributes");
    let ort = OnnxRuntime::new(ctx.toolchain, p.threads)?;
    let mut reference = ort.load(ctx.model)?;
    let batch = batch_for(reference.as_ref(), p.batch);
    let names = reference.outputs();
    let (ref_rows, ref_ms, out_idx) = rows_of(
        ctx,
        reference.as_mut(),
        (&input, &prepared.tensor, batch),
        &|outs| pick_output(outs, &names),
    )?;
    timing.insert(
        "reference".to_string(),
        json!({"ms": ref_ms.as_millis() as u64, "batch": batch}),
    );
    // Faces: every image whose face was found (every image when the images are the crops),
    // with the reference's answer.
    let faces: Vec<(usize, Answer)> = ref_rows
        .iter()
        .enumerate()
        .filter(|(i, _)| !aligned || prepared.faces.get(*i).is_some_and(Option::is_some))
        .filter_map(|(i, row)| Some((i, answer(row)?)))
        .collect();
    let out_name = names.get(out_idx).cloned().unwrap_or_default();

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
                    (&gates, gate::ATTRIBUTE),
                    &mut table,
                    &mut candidates,
                    &mut failures,
                );
                continue;
            }
        };
        ctx.progress.set_message(format!("attributes of `{label}`"));
        let own = batch_for(l.model.as_ref(), p.batch);
        let cnames = l.model.outputs();
        let (rows, ms, _) = rows_of(
            ctx,
            l.model.as_mut(),
            (&input, &prepared.tensor, own),
            &|outs| candidate_output(outs, &out_name, out_idx, &cnames),
        )?;
        timing.insert(
            label.clone(),
            json!({"ms": ms.as_millis() as u64, "load_ms": l.load_ms, "batch": own, "step": cand.step(), "precision_hint": l.hint}),
        );
        let (c, row) = candidate_report(cand, &l, figures_of(&faces, &rows), &gates, &mut failures);
        table.push(row);
        candidates.push(c);
    }

    let report = super::task_report(
        ctx,
        p,
        ("attribute", &set),
        reference.execution(),
        (candidates, failures),
    );
    let flips: u64 = report
        .candidates
        .iter()
        .filter_map(|c| c.gender_flips)
        .max()
        .unwrap_or(0);
    let summary = json!({"images": set.files.len(), "faces": faces.len(), "candidates": p.candidates.len(), "most_gender_flips": flips});
    let md = markdown(ctx, &report, (&out_name, faces.len()), &table);
    super::finish(ctx, &report, (md, "attribute"), timing, t_total, summary)
}

/// A compared candidate's report entry and table row, its gates judged.
fn candidate_report(
    cand: &super::CandidateSpec,
    l: &super::Loaded,
    f: AttributeFigures,
    gates: &Gates,
    failures: &mut Vec<String>,
) -> (CandidateReport, String) {
    let label = cand.label();
    let results = judge(gates, &f);
    let exec = l.model.execution();
    let what = format!("{} {}, executed {}", l.artifact, l.weights, exec.precision);
    let passed = note_failures(&label, &what, &results, failures);
    let row = format!(
        "| {label} | {what} | {} | {} ({:.4}) | {:.3} | {:.0} | {} | {} |",
        f.faces,
        f.gender_flips,
        f.gender_flip_rate,
        f.age_mae,
        f.age_error_max,
        f.non_finite,
        if passed { "pass" } else { "**FAIL**" }
    );
    let report = CandidateReport {
        label: label.clone(),
        step: cand.step().into(),
        artifact: Some(l.artifact.into()),
        artifact_precision: Some(l.weights.clone()),
        execution: Some(exec),
        preprocessing: Some("model.preprocessing".into()),
        gender_flips: Some(f.gender_flips),
        age_mae: f.age_mae.is_finite().then_some(f.age_mae),
        attribute: Some(f),
        gates: Some(results),
        passed: Some(passed),
        ..Default::default()
    };
    (report, row)
}

/// One candidate's attribute gates: its overrides over the step's; 0 gender flips and a
/// mean age error of 1 year when none is set.
fn gates_for(p: &CompareParams, label: &str) -> Gates {
    p.gates_or(label, gate::ATTRIBUTE, |g| {
        g.gender_flips_max = Some(0);
        g.age_mae_max = Some(1.0);
    })
}

/// The first `[N, >= 3]` output.
fn pick_output(outs: &[NamedTensor], names: &[String]) -> std::result::Result<usize, Unreadable> {
    outs.iter()
        .position(|(_, t)| t.ndim() == 2 && t.shape()[1] >= 3)
        .ok_or_else(|| {
            format!(
                "no output of shape [N, 3] (gender logits, age / 100) among {}",
                names.join(", ")
            )
        })
        .map_err(Unreadable)
}

/// A candidate's answers against the reference's over every face.
fn figures_of(faces: &[(usize, Answer)], rows: &[Vec<f32>]) -> AttributeFigures {
    let (mut flips, mut errors, mut non_finite) = (0u64, Vec::new(), 0);
    for (i, r) in faces {
        match answer(&rows[*i]) {
            Some(c) => {
                flips += u64::from(c.gender != r.gender);
                errors.push((c.age - r.age).abs());
            }
            None => {
                flips += 1;
                non_finite += 1;
            }
        }
    }
    let n = faces.len();
    AttributeFigures {
        faces: n,
        gender_flips: flips,
        gender_flip_rate: flips as f64 / n.max(1) as f64,
        age_mae: if errors.is_empty() {
            f64::NAN
        } else {
            errors.iter().sum::<f64>() / errors.len() as f64
        },
        age_error_max: errors.iter().copied().fold(0.0, f64::max),
        non_finite,
    }
}

/// The attribute gates, by the one rule: with no face, or a face whose outputs are not
/// finite, the age figures are not measured, which fails their gates.
fn judge(gates: &Gates, f: &AttributeFigures) -> Vec<GateResult> {
    gates.check(gate::ATTRIBUTE, Naming::Figure, |m| {
        let measured = match m.key {
            _ if f.faces == 0 => Measurement::NotMeasured("no face to compare".into()),
            "gender_flips_max" => Measurement::Value(f.gender_flips as f64),
            _ if f.non_finite > 0 => Measurement::NotMeasured(format!(
                "{} face(s) with non-finite outputs",
                f.non_finite
            )),
            "age_mae_max" => Measurement::Value(f.age_mae),
            _ => Measurement::Value(f.age_error_max),
        };
        (measured, None)
    })
}

fn markdown(
    ctx: &StepContext,
    r: &CompareReport,
    (output, faces): (&str, usize),
    rows: &[String],
) -> String {
    let mut s = format!(
        "# compare `{}` — pipeline `{}` (attributes)\n\n",
        ctx.step.name, ctx.manifest.name
    );
    s += &format!(
        "Validation set `{}`: {} images, {faces} faces compared. Output `{output}` read as \
         InsightFace reads genderage: gender = argmax of the first two values, age = \
         round(third x 100) years.\n\n",
        r.dataset.name, r.dataset.images
    );
    s + &super::table_md(
        r,
        &[
            "candidate",
            "artifact",
            "faces",
            "gender flips (rate)",
            "age MAE",
            "age error max",
            "non-finite",
            "gates",
        ],
        rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_flips_and_age_errors_are_read_as_insightface_reads_them() {
        assert_eq!(
            answer(&[0.2, 0.9, 0.314]),
            Some(Answer {
                gender: 1,
                age: 31.0
            })
        );
        // A tie is the first class, as numpy's argmax.
        assert_eq!(answer(&[0.5, 0.5, 0.2]).unwrap().gender, 0);
        assert_eq!(answer(&[f32::NAN, 0.5, 0.2]), None);
        let faces = vec![
            (
                0,
                Answer {
                    gender: 1,
                    age: 30.0,
                },
            ),
            (
                2,
                Answer {
                    gender: 0,
                    age: 40.0,
                },
            ),
        ];
        let rows = vec![vec![0.1, 0.7, 0.33], vec![9.0; 3], vec![0.8, 0.1, 0.38]];
        let f = figures_of(&faces, &rows);
        assert_eq!((f.faces, f.gender_flips, f.non_finite), (2, 0, 0));
        assert_eq!((f.age_mae, f.age_error_max), (2.5, 3.0));
        let g = judge(
            &Gates {
                gender_flips_max: Some(0),
                age_mae_max: Some(2.0),
                age_error_max: Some(5.0),
                ..Default::default()
            },
            &f,
        );
        let verdicts: Vec<(&str, bool)> = g.iter().map(|g| (g.metric.as_str(), g.passed)).collect();
        assert_eq!(
            verdicts,
            vec![
                ("gender_flips", true),
                ("age_mae", false),
                ("age_error_max", true)
            ]
        );
        let bad = figures_of(&faces, &[vec![f32::NAN; 3], vec![], vec![0.1, 0.8, 0.4]]);
        assert_eq!((bad.gender_flips, bad.non_finite), (2, 1));
        assert!(
            judge(
                &Gates {
                    age_mae_max: Some(9.0),
                    ..Default::default()
                },
                &bad
            )
            .iter()
            .all(|g| !g.passed)
        );
    }
}
