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

/// Check the shipped chain against `gates`; Ok(metadata's `chain` entry) or the refusal.
pub(super) fn check(
    ctx: &StepContext,
    (step, gates): (&str, &ChainGates),
    promoted: &[String],
) -> Result<serde_json::Value> {
    let report: ChainReport = crate::steps::read_report(&ctx.upstream[step]["report.json"])?;
    let mut promoted_models: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in promoted {
        if let Some(m) = ctx.manifest.steps.get(a).and_then(|s| s.model.clone()) {
            promoted_models.entry(m).or_default().push(a.clone());
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
