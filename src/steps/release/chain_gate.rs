//! A pack's release gated on its chain: the chain step's combination that swaps in exactly
//! the promoted artifacts (one per model that has one) must meet `chain_gates`, and its
//! figures go in metadata.json with every other combination's.

use std::collections::BTreeMap;

use serde_json::json;

use crate::error::{Error, Result};
use crate::steps::StepContext;
use crate::steps::chain::{ChainCombination, ChainGates, ChainReport};

/// The combinations that describe what is shipped: every swap is a promoted artifact, and
/// every chain model with a promoted artifact is swapped.
fn shipped<'a>(
    report: &'a ChainReport,
    promoted_models: &BTreeMap<String, Vec<String>>,
) -> Vec<&'a ChainCombination> {
    report
        .combinations
        .iter()
        .filter(|c| {
            c.swapped
                .iter()
                .all(|(m, s)| promoted_models.get(m).is_some_and(|v| v.contains(s)))
                && promoted_models
                    .keys()
                    .filter(|m| report.models.contains(m))
                    .all(|m| c.swapped.contains_key(m))
        })
        .collect()
}

/// The release's chain gates checked, when it names a chain: metadata's `chain` entry.
pub(super) fn of_release(
    ctx: &StepContext,
    p: &super::ReleaseParams,
    promoted: &[String],
) -> Result<Option<serde_json::Value>> {
    p.chain
        .as_deref()
        .map(|c| {
            let gates = p.chain_gates.as_deref().cloned().unwrap_or_default();
            check(ctx, (c, &gates), promoted)
        })
        .transpose()
}

/// Check the shipped chain against `gates`; Ok(metadata's `chain` entry) or the refusal.
fn check(
    ctx: &StepContext,
    (step, gates): (&str, &ChainGates),
    promoted: &[String],
) -> Result<serde_json::Value> {
    let report: ChainReport = crate::steps::read_report(&ctx.upstream[step]["report.json"])?;
    let mut promoted_models: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in promoted {
        if let Some(m) = ctx.manifest.model_of_step(a) {
            promoted_models
                .entry(m.to_string())
                .or_default()
                .push(a.clone());
        }
    }
    let found = shipped(&report, &promoted_models);
    let refuse = |message: String, hint: String| Error::Step {
        step: ctx.step.name.clone(),
        message,
        hint: Some(hint),
    };
    if found.is_empty() {
        return Err(refuse(
            format!(
                "chain `{step}` has no combination that swaps in exactly the promoted artifacts ({})",
                promoted.join(", ")
            ),
            format!(
                "add one to `{step}`'s `combinations`, e.g. `shipped: {{{}}}`",
                promoted_models
                    .iter()
                    .map(|(m, s)| format!("{m}: {}", s[0]))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let mut failed = Vec::new();
    for c in &found {
        let f = crate::steps::chain::failed_gates(gates, &c.figures);
        if !f.is_empty() {
            failed.push(format!("`{}`: {}", c.name, f.join("; ")));
        }
    }
    if !failed.is_empty() {
        return Err(refuse(
            format!("chain gates failed: {}", failed.join(" | ")),
            format!("{step}'s report.json has the chain's figures and each stage's attribution"),
        ));
    }
    Ok(json!({
        "step": step,
        "gates": gates,
        "shipped": found.iter().map(|c| &c.name).collect::<Vec<_>>(),
        "images": report.images,
        "reference_faces": report.reference_faces,
        "combinations": report.combinations,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(combos: &[(&str, &[(&str, &str)])]) -> ChainReport {
        let figures = json!({"recall": 1.0, "fp_per_image": 0.0, "cosine_min": 1.0, "cosine_mean": 1.0, "faces": 1});
        serde_json::from_value(json!({
            "schema": "facebuild.chain/1", "step": "chain", "kind": "chain",
            "models": ["det", "rec", "lmk"], "images": 1, "reference_faces": 1,
            "combinations": combos.iter().map(|(name, swaps)| json!({
                "name": name,
                "swapped": swaps.iter().map(|(m, s)| (m.to_string(), s.to_string())).collect::<BTreeMap<_, _>>(),
                "figures": figures, "failed_gates": [],
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    /// The shipped combination swaps exactly the promoted artifacts of the chain's models:
    /// not one that leaves a promoted model at ONNX, nor one that swaps in an artifact the
    /// release does not ship; models outside the chain do not count.
    #[test]
    fn shipped_is_the_combination_of_exactly_what_is_promoted() {
        let r = report(&[
            ("all_fp16", &[("det", "det_fp16"), ("rec", "rec_fp16")]),
            ("rec_fp16", &[("rec", "rec_fp16")]),
            ("all_int8", &[("det", "det_int8"), ("rec", "rec_int8")]),
        ]);
        let promoted = |list: &[(&str, &str)]| -> BTreeMap<String, Vec<String>> {
            let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (model, step) in list {
                m.entry(model.to_string())
                    .or_default()
                    .push(step.to_string());
            }
            m
        };
        let names = |p| {
            shipped(&r, &p)
                .iter()
                .map(|c| c.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(promoted(&[
                ("det", "det_fp16"),
                ("rec", "rec_fp16"),
                ("swapper", "sw")
            ])),
            ["all_fp16"]
        );
        assert_eq!(names(promoted(&[("rec", "rec_fp16")])), ["rec_fp16"]);
        assert!(names(promoted(&[("det", "det_fp16"), ("rec", "rec_int8")])).is_empty());
    }
}
