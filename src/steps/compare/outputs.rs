//! `compare` for `generic` and `landmarks` models: every output by name, as Polygraphy
//! compares them. Reference and candidates run the same batches; per output: max absolute and
//! relative error, mean absolute error, cosine per image, elements out of `atol`/`rtol`
//! (out when an element exceeds both, Polygraphy's elementwise rule) and non-finite values.
//! One cosine over all outputs concatenated would hide a broken output behind healthy ones;
//! each output here has its own gates.

use std::collections::BTreeMap;
use std::time::Instant;

use ndarray::{ArrayViewD, Axis};
use serde_json::json;

use super::report::{CandidateReport, CompareReport, OutputComparison};
use super::{
    CompareParams, Loaded, batch_for, common_batch, load_candidate, note_failures,
    record_not_compared,
};
use crate::error::{Error, Result};
use crate::manifest::Preprocessing;
use crate::metrics::Summary;
use crate::metrics::gate::{self, GateResult, Gates, Measurement, Policy};
use crate::runtime::{NamedTensor, Runtime, onnxruntime::OnnxRuntime};
use crate::steps::{StepContext, StepOutcome};

/// Running figures of one output of one candidate.
#[derive(Debug, Default)]
struct OutputAcc {
    shape: Vec<usize>,
    elements: u64,
    max_abs: f64,
    max_rel: f64,
    sum_abs: f64,
    cosines: Vec<f64>,
    out_of_tolerance: u64,
    non_finite: u64,
}

impl OutputAcc {
    /// Add one inference's output. `rows`: how many images of the batch are real when the
    /// output's first dim is the batch (padding rows are left out, and cosines are per
    /// image); `None` compares the output whole.
    fn add(
        &mut self,
        r: &ArrayViewD<f32>,
        c: &ArrayViewD<f32>,
        rows: Option<usize>,
        tol: &Gates,
    ) -> std::result::Result<(), String> {
        if r.shape() != c.shape() {
            return Err(format!(
                "shape {:?}, the reference's {:?}",
                c.shape(),
                r.shape()
            ));
        }
        self.shape = r.shape().to_vec();
        match rows {
            Some(n) => {
                for i in 0..n.min(r.shape()[0]) {
                    self.add_one(&r.index_axis(Axis(0), i), &c.index_axis(Axis(0), i), tol);
                }
            }
            None => self.add_one(r, c, tol),
        }
        Ok(())
    }

    fn add_one(&mut self, r: &ArrayViewD<f32>, c: &ArrayViewD<f32>, tol: &Gates) {
        let check = tol.has_tolerance();
        let (mut dot, mut nr, mut nc) = (0f64, 0f64, 0f64);
        for (&a, &b) in r.iter().zip(c.iter()) {
            let (a, b) = (a as f64, b as f64);
            if !a.is_finite() {
                // Nothing to measure against where the reference itself is not finite.
                continue;
            }
            if !b.is_finite() {
                self.non_finite += 1;
                continue;
            }
            let abs = (b - a).abs();
            let rel = if a != 0.0 {
                abs / a.abs()
            } else if abs == 0.0 {
                0.0
            } else {
                f64::INFINITY
            };
            self.max_abs = self.max_abs.max(abs);
            if rel.is_finite() {
                self.max_rel = self.max_rel.max(rel);
            }
            self.sum_abs += abs;
            self.elements += 1;
            if check && tol.out_of_tolerance(abs, rel) {
                self.out_of_tolerance += 1;
            }
            dot += a * b;
            nr += a * a;
            nc += b * b;
        }
        // Two all-zero outputs are identical; one all-zero output is orthogonal to anything.
        let cos = match (nr == 0.0, nc == 0.0) {
            (true, true) => 1.0,
            (false, false) => dot / (nr.sqrt() * nc.sqrt()),
            _ => 0.0,
        };
        self.cosines.push(cos);
    }

    fn finish(self, name: &str, candidate_name: Option<String>, tol: &Gates) -> OutputComparison {
        OutputComparison {
            name: name.to_string(),
            candidate_name,
            shape: self.shape,
            elements: self.elements,
            max_abs_error: self.max_abs,
            max_rel_error: self.max_rel,
            mean_abs_error: self.sum_abs / self.elements.max(1) as f64,
            cosine: Summary::of(&self.cosines),
            out_of_tolerance: tol.has_tolerance().then_some(self.out_of_tolerance),
            non_finite: self.non_finite,
        }
    }
}

/// One output's gates: its cosine floor (0.99 unless set), its `atol`/`rtol` count when
/// either is set, and no non-finite values.
fn output_gates(g: &Gates, o: &OutputComparison) -> Vec<GateResult> {
    let policy = g.policy();
    let mut v = vec![GateResult::judge(
        &format!("{}: cosine_min", o.name),
        true,
        &Measurement::from_option(
            (o.cosine.n > 0).then_some(o.cosine.min),
            "no finite elements to compare",
        ),
        g.cosine_min.unwrap_or(0.99),
        policy,
        None,
    )];
    if let Some(n) = o.out_of_tolerance {
        v.push(GateResult::judge(
            &format!(
                "{}: elements out of atol {} / rtol {}",
                o.name,
                g.atol.unwrap_or(0.0),
                g.rtol.unwrap_or(0.0)
            ),
            false,
            &Measurement::Value(n as f64),
            0.0,
            policy,
            None,
        ));
    }
    v.push(GateResult::judge(
        &format!("{}: non_finite", o.name),
        false,
        &Measurement::Value(o.non_finite as f64),
        0.0,
        Policy::default(),
        None,
    ));
    v
}

/// A candidate being compared: its model, its outputs' running figures, and how its output
/// names map to the reference's.
struct Running {
    label: String,
    step: String,
    loaded: Loaded,
    gates: Gates,
    accs: Vec<OutputAcc>,
    /// Per reference output: the candidate output's index and, when it was matched by
    /// position, its own name.
    map: Vec<Option<(usize, Option<String>)>>,
    /// Outputs that could not be compared, with why.
    broken: BTreeMap<String, String>,
    ms: std::time::Duration,
}

/// Map the reference's outputs to a candidate's: by name; by position when no name matches
/// and the counts agree (converters sometimes rename outputs).
fn map_outputs(reference: &[String], candidate: &[String]) -> Vec<Option<(usize, Option<String>)>> {
    let by_name: Vec<Option<usize>> = reference
        .iter()
        .map(|n| candidate.iter().position(|c| c == n))
        .collect();
    if by_name.iter().all(Option::is_none) && reference.len() == candidate.len() {
        return (0..reference.len())
            .map(|i| Some((i, Some(candidate[i].clone()))))
            .collect();
    }
    by_name.into_iter().map(|i| i.map(|i| (i, None))).collect()
}

pub(super) fn run(
    ctx: &StepContext,
    p: &CompareParams,
    pre: &Preprocessing,
) -> Result<StepOutcome> {
    let t_total = Instant::now();
    let step = &ctx.step.name;
    let task = ctx.manifest.model.task;
    let task_name = serde_json::to_value(task)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    p.refuse_gates_except(
        step,
        (
            &format!("a `{task_name}` model"),
            "its outputs are compared one by one",
        ),
        (&gate::RECOGNITION[..1], ", atol and rtol (per output)"),
    )?;
    let input = ctx.manifest.model.input.name.clone();
    let mut set = super::prepare_set(ctx, p, pre)?;

    ctx.check_cancelled()?;
    let ort = OnnxRuntime::new(ctx.toolchain, p.threads)?;
    let mut reference = ort.load(ctx.model)?;
    let ref_names = reference.outputs();
    let mut loaded = Vec::new();
    for cand in &p.candidates {
        refuse_own_preprocessing(step, cand)?;
        loaded.push((cand, load_candidate(ctx, p, cand, &ort)?));
    }
    // Outputs are compared batch by batch, so every model runs at one batch: the fixed batch
    // dim of whichever model has one (a dynamic-batch ONNX source with artifacts built at
    // batch 1 runs at 1), else the step's `batch`.
    let batch = common_batch(
        std::iter::once(reference.as_ref()).chain(
            loaded
                .iter()
                .filter_map(|(_, l)| l.as_ref().ok().map(|l| l.model.as_ref())),
        ),
        p.batch,
    );

    let mut table = Vec::new();
    let mut failures = Vec::new();
    let mut candidates: Vec<CandidateReport> = Vec::new();
    let mut running: Vec<Running> = Vec::new();
    for (cand, loaded) in loaded {
        let label = cand.label();
        match loaded {
            Ok(l) => running.push(start_candidate(step, p, cand, l, &ref_names, batch)?),
            Err(why) => record_not_compared(
                &label,
                cand.step(),
                &why,
                12,
                (&p.gates_for(&label), &["cosine_min"]),
                &mut table,
                &mut candidates,
                &mut failures,
            ),
        }
    }

    // Every input, image by image: the images, and what feeds the model's other inputs.
    let others =
        crate::steps::inputs::dataset_feeds(ctx, (&p.dataset, set.aligner.as_ref()), &set.files)?;
    let feed: Vec<NamedTensor> =
        std::iter::once((input, set.prepared.tensor.as_ref().clone().into_dyn()))
            .chain(others.tensors)
            .collect();
    let ref_ms = run_batches(ctx, &feed, reference.as_mut(), &mut running, batch)?;
    set.timing.insert(
        "reference".to_string(),
        json!({"ms": ref_ms.as_millis() as u64, "batch": batch}),
    );

    for c in running {
        candidates.push(finish_candidate(
            c,
            &ref_names,
            batch,
            (&mut table, &mut failures, &mut set.timing),
        ));
    }

    let timing = std::mem::take(&mut set.timing);
    let report = super::task_report(
        ctx,
        p,
        (&task_name, &set),
        reference.execution(),
        (candidates, failures),
    );
    let md = markdown(ctx, &report, &ref_names, &table);
    let summary = json!({"images": set.files.len(), "candidates": p.candidates.len(), "outputs": ref_names.len(), "worst_cosine": super::worst_cosine(&report.candidates)});
    super::finish(ctx, &report, (md, "output"), timing, t_total, summary)
}

/// Per-output compare feeds every candidate the model's own preprocessing.
fn refuse_own_preprocessing(step: &str, cand: &super::CandidateSpec) -> Result<()> {
    let label = cand.label();
    if cand.detail().is_some_and(|d| d.preprocessing.is_some()) {
        return Err(Error::Step {
            step: step.to_string(),
            message: format!(
                "candidate `{label}`: per-candidate preprocessing is not supported for per-output compare"
            ),
            hint: Some("compare candidates that take the model's own preprocessing".into()),
        });
    }
    Ok(())
}

/// A loaded candidate ready to run beside the reference: its outputs mapped to the
/// reference's, and its batch checked against the reference's.
fn start_candidate(
    step: &str,
    p: &CompareParams,
    cand: &super::CandidateSpec,
    loaded: Loaded,
    ref_names: &[String],
    batch: usize,
) -> Result<Running> {
    let label = cand.label();
    let own = batch_for(loaded.model.as_ref(), batch);
    if own != batch {
        return Err(Error::Step {
            step: step.to_string(),
            message: format!(
                "candidate `{label}` runs batches of {own}, another model of this compare batches of {batch}: outputs are compared batch by batch"
            ),
            hint: Some(
                "build the artifacts with the same batch dim (or a dynamic one), e.g. the same `input.shape` on every convert step".into()
            ),
        });
    }
    let map = map_outputs(ref_names, &loaded.model.outputs());
    let broken = ref_names
        .iter()
        .zip(&map)
        .filter(|(_, m)| m.is_none())
        .map(|(n, _)| {
            (
                n.clone(),
                format!(
                    "the candidate has no output `{n}` (its outputs: {})",
                    loaded.model.outputs().join(", ")
                ),
            )
        })
        .collect();
    Ok(Running {
        gates: p.gates_for(&label),
        label,
        step: cand.step().to_string(),
        loaded,
        accs: ref_names.iter().map(|_| OutputAcc::default()).collect(),
        map,
        broken,
        ms: std::time::Duration::ZERO,
    })
}

/// Run every batch through the reference once, then through each candidate; only the
/// running figures are kept, so memory does not grow with the set. The reference's time.
fn run_batches(
    ctx: &StepContext,
    feed: &[NamedTensor],
    reference: &mut dyn crate::runtime::LoadedModel,
    running: &mut [Running],
    batch: usize,
) -> Result<std::time::Duration> {
    let n = feed.first().map_or(0, |(_, t)| t.shape()[0]);
    let feed = super::views_of(feed);
    let mut ref_ms = std::time::Duration::ZERO;
    let t_run = Instant::now();
    let mut start = 0;
    while start < n {
        ctx.check_cancelled()?;
        let end = (start + batch).min(n);
        let x = super::batch_of(&feed, (start, end), batch);
        let t0 = Instant::now();
        let r = reference.run(&x)?;
        ref_ms += t0.elapsed();
        for c in running.iter_mut() {
            let t0 = Instant::now();
            let out = c.loaded.model.run(&x)?;
            c.ms += t0.elapsed();
            for (i, (name, rv)) in r.iter().enumerate() {
                let Some((j, _)) = &c.map[i] else { continue };
                if c.broken.contains_key(name) {
                    continue;
                }
                let Some((_, cv)) = out.get(*j) else {
                    c.broken
                        .insert(name.clone(), format!("output {j} missing from a run"));
                    continue;
                };
                let rows = (rv.shape().first() == Some(&batch)).then_some(end - start);
                if let Err(why) = c.accs[i].add(&rv.view(), &cv.view(), rows, &c.gates) {
                    c.broken.insert(name.clone(), why);
                }
            }
        }
        let rate = end as f64 / t_run.elapsed().as_secs_f64().max(1e-9);
        ctx.progress.set_message(format!(
            "compared {end}/{n} images on {} candidate(s) ({rate:.0} images/s)",
            running.len()
        ));
        start = end;
    }
    Ok(ref_ms)
}

/// A candidate's report from its running figures: every output judged against its gates,
/// its table rows, timing and failed gates added.
fn finish_candidate(
    c: Running,
    ref_names: &[String],
    batch: usize,
    (table, failures, timing): (
        &mut Vec<String>,
        &mut Vec<String>,
        &mut BTreeMap<String, serde_json::Value>,
    ),
) -> CandidateReport {
    let Running {
        label,
        step: cand_step,
        loaded,
        gates: g,
        accs,
        map,
        broken,
        ms,
    } = c;
    let exec = loaded.model.execution();
    let mut outputs = Vec::new();
    let mut gates = Vec::new();
    for ((name, acc), m) in ref_names.iter().zip(accs).zip(map) {
        if let Some(why) = broken.get(name) {
            gates.push(GateResult::judge(
                &format!("{name}: compared"),
                true,
                &Measurement::NotMeasured(why.clone()),
                1.0,
                Policy::default(),
                None,
            ));
            table.push(format!(
                "| {label} | {} {} | {} | `{name}` | - | - | - | - | - | - | not compared: {why} |",
                loaded.artifact, loaded.weights, exec.precision
            ));
            continue;
        }
        let o = acc.finish(name, m.and_then(|(_, n)| n), &g);
        let og = output_gates(&g, &o);
        let ok = og.iter().all(|x| x.passed);
        table.push(format!(
            "| {label} | {} {} | {} | `{name}` | {:?} | {:.3e} | {:.3e} | {:.3e} | {:.6} | {} | {} |",
            loaded.artifact,
            loaded.weights,
            exec.precision,
            o.shape,
            o.max_abs_error,
            o.max_rel_error,
            o.mean_abs_error,
            o.cosine.min,
            o.out_of_tolerance
                .map(|x| format!("{x} / {}", o.elements))
                .unwrap_or_else(|| "-".into()),
            if ok { "pass" } else { "**FAIL**" }
        ));
        gates.extend(og);
        outputs.push(o);
    }
    let what = format!(
        "{} {}, executed {}",
        loaded.artifact, loaded.weights, exec.precision
    );
    let passed = note_failures(&label, &what, &gates, failures);
    timing.insert(
        label.clone(),
        json!({"ms": ms.as_millis() as u64, "load_ms": loaded.load_ms, "batch": batch, "step": cand_step, "precision_hint": loaded.hint}),
    );
    let all_cos: Vec<f64> = outputs.iter().map(|o| o.cosine.min).collect();
    CandidateReport {
        label,
        step: cand_step,
        artifact: Some(loaded.artifact.into()),
        artifact_precision: Some(loaded.weights),
        execution: Some(exec),
        preprocessing: Some("model.preprocessing".into()),
        // The worst output's cosine is the candidate's: what `release` gates on.
        cosine: (!all_cos.is_empty()).then(|| Summary::of(&all_cos)),
        max_abs_error: outputs.iter().map(|o| o.max_abs_error).reduce(f64::max),
        outputs: Some(outputs),
        gates: Some(gates),
        passed: Some(passed),
        ..Default::default()
    }
}

fn markdown(ctx: &StepContext, r: &CompareReport, outputs: &[String], rows: &[String]) -> String {
    let mut s = format!(
        "# compare `{}` — pipeline `{}` (per output)\n\n",
        ctx.step.name, ctx.manifest.name
    );
    s += &format!(
        "Validation set `{}`: {} images. Reference: ONNX original in ONNX Runtime {} ({}). Outputs: {}.\n\n",
        r.dataset.name,
        r.dataset.images,
        r.reference.execution.version,
        r.reference.execution.precision,
        outputs.join(", ")
    );
    s += "An element is out of tolerance when |c - r| > atol and |c - r| / |r| > rtol.\n\n";
    s += "| candidate | artifact | executed (hint) | output | shape | max abs | max rel | mean abs | cos min | out of tol | gate |\n|---|---|---|---|---|---|---|---|---|---|---|\n";
    for row in rows {
        s += row;
        s.push('\n');
    }
    s + &super::failed_gates_md(&r.failures)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    fn arr(shape: &[usize], v: Vec<f32>) -> ArrayD<f32> {
        ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
    }

    /// Errors, cosine and the elementwise tolerance rule, on hand-computed values; padding
    /// rows beyond the real images are left out.
    #[test]
    fn figures_match_hand_computed_values() {
        let tol = Gates {
            atol: Some(0.05),
            rtol: Some(0.1),
            ..Default::default()
        };
        let r = arr(&[3, 2], vec![1.0, 2.0, 0.0, 4.0, 9.0, 9.0]);
        // Row 0: diffs 0.09 (rel 0.09: within rtol) and 0.02 (within atol); row 1: the 0
        // reference gets 0.03 (within atol), 4 -> 3 (out: abs 1, rel 0.25); row 2 is padding.
        let c = arr(&[3, 2], vec![1.09, 2.02, 0.03, 3.0, -5.0, 0.0]);
        let mut acc = OutputAcc::default();
        acc.add(&r.view(), &c.view(), Some(2), &tol).unwrap();
        assert_eq!(acc.elements, 4);
        assert!((acc.max_abs - 1.0).abs() < 1e-6);
        assert!((acc.max_rel - 0.25).abs() < 1e-6, "{}", acc.max_rel);
        assert_eq!(acc.out_of_tolerance, 1);
        assert_eq!(acc.cosines.len(), 2);
        let dot = 1.0 * 1.09 + 2.0 * 2.02;
        let want = dot / ((1.0f64 + 4.0).sqrt() * (1.09f64 * 1.09 + 2.02 * 2.02).sqrt());
        assert!((acc.cosines[0] - want).abs() < 1e-6);
        let o = acc.finish("out", None, &tol);
        assert_eq!(o.out_of_tolerance, Some(1));
        let g = output_gates(&tol, &o);
        assert!(g[0].passed, "cosines are high");
        assert!(!g[1].passed, "one element is out of tolerance");
        assert!(g[2].passed);
    }

    /// A NaN where the reference is finite is counted and fails its gate; shapes must agree.
    #[test]
    fn non_finite_and_shape_mismatch_are_caught() {
        let tol = Gates::default();
        let r = arr(&[4], vec![1.0, 2.0, 3.0, 4.0]);
        let c = arr(&[4], vec![1.0, f32::NAN, 3.0, 4.0]);
        let mut acc = OutputAcc::default();
        acc.add(&r.view(), &c.view(), None, &tol).unwrap();
        assert_eq!(acc.non_finite, 1);
        let o = acc.finish("x", None, &tol);
        assert_eq!(
            o.out_of_tolerance, None,
            "no tolerance set: nothing counted"
        );
        let g = output_gates(&tol, &o);
        assert!(!g.last().unwrap().passed);
        let bad = arr(&[2, 2], vec![0.0; 4]);
        assert!(
            OutputAcc::default()
                .add(&r.view(), &bad.view(), None, &tol)
                .unwrap_err()
                .contains("[2, 2]")
        );
    }

    /// Outputs map by name; by position only when no name matches and the counts agree.
    #[test]
    fn outputs_map_by_name_then_position() {
        let r = vec!["a".to_string(), "b".to_string()];
        let m = map_outputs(&r, &["b".into(), "a".into()]);
        assert_eq!(m, vec![Some((1, None)), Some((0, None))]);
        let m = map_outputs(&r, &["x".into(), "y".into()]);
        assert_eq!(
            m,
            vec![Some((0, Some("x".into()))), Some((1, Some("y".into())))]
        );
        let m = map_outputs(&r, &["a".into()]);
        assert_eq!(m, vec![Some((0, None)), None]);
    }
}
