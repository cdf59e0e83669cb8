//! Planning: for each step, in order, is it cached, or will it run — and why. The "why" is
//! a diff of the step's key parts against its lockfile entry: new input digest, changed
//! param, changed toolchain, new implementation, or a cache entry that went missing.

use serde::Serialize;

use crate::context::{BuildContext, KeyParts};
use crate::error::Result;
use crate::manifest::Step;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// The action key is in the cache with intact outputs.
    Cached { key: String },
    /// The step will run; `reasons` say what changed.
    Run {
        key: Option<String>,
        reasons: Vec<String>,
    },
    /// Depends on a step that will run; decided when that finishes (it may still hit).
    Waits { on: Vec<String> },
    /// Cannot run on this machine: its backend (TensorRT) is not installed.
    Unavailable { reason: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct StepPlan {
    pub step: String,
    pub kind: String,
    pub needs: Vec<String>,
    #[serde(flatten)]
    pub decision: Decision,
}

/// The input a step reads as its model: the source, or the `model.onnx` of its `from`.
pub fn model_input_digest(
    step: &Step,
    source_digest: &str,
    upstream: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    match &step.spec.from {
        None => Some(source_digest.to_string()),
        Some(f) => upstream(&f.value),
    }
}

/// Why a step with these key parts is not a cache hit, compared with its lockfile entry.
pub fn reasons(ctx: &BuildContext, step: &str, parts: &KeyParts) -> Vec<String> {
    let Some(prev) = ctx.lock.steps.get(step) else {
        return vec!["never built (no lockfile entry)".into()];
    };
    let mut r = Vec::new();
    if prev.kind != parts.kind {
        r.push(format!("kind changed: {} -> {}", prev.kind, parts.kind));
    }
    if prev.impl_version != parts.impl_version {
        r.push(format!(
            "{} implementation changed: v{} -> v{}",
            parts.kind, prev.impl_version, parts.impl_version
        ));
    }
    for (k, v) in &parts.inputs {
        match prev.inputs.get(k) {
            None => r.push(format!("new input `{k}`")),
            Some(p) if p != v => {
                r.push(format!("input `{k}` changed: {} -> {}", short(p), short(v)))
            }
            _ => {}
        }
    }
    for k in prev
        .inputs
        .keys()
        .filter(|k| !parts.inputs.contains_key(*k))
    {
        r.push(format!("input `{k}` removed"));
    }
    diff_json("", &prev.params, &parts.params, &mut r);
    for (k, v) in &parts.toolchain {
        match prev.toolchain.get(k) {
            Some(p) if p != v => r.push(format!("toolchain `{k}` changed: {p} -> {v}")),
            None => r.push(format!("toolchain `{k}` is new: {v}")),
            _ => {}
        }
    }
    if r.is_empty() {
        r.push(
            "nothing changed since the lockfile, but its cache entry is missing or corrupt".into(),
        );
    }
    r
}

fn diff_json(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                diff_json(
                    &p,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if a != b => {
            let p = path.strip_prefix("step.").unwrap_or(path);
            out.push(format!("param `{p}` changed: {a} -> {b}"));
        }
        _ => {}
    }
}

pub fn short(d: &str) -> &str {
    &d[..d.len().min(12)]
}

/// Plan the selected steps without running anything.
pub fn plan(ctx: &BuildContext, selected: &[String], no_cache: bool) -> Result<Vec<StepPlan>> {
    let source = ctx.source()?;
    let mut out: Vec<StepPlan> = Vec::new();
    // Outputs of upstream steps known from cache hits.
    let mut known: std::collections::HashMap<
        String,
        std::collections::BTreeMap<String, crate::cache::BlobRef>,
    > = std::collections::HashMap::new();
    for name in selected {
        let step = ctx.manifest.step(name);
        let needs: Vec<String> = ctx.dag.deps(name).into_iter().map(String::from).collect();
        let decision_of = |d: &str| out.iter().find(|p| p.step == d).map(|p| &p.decision);
        let waits: Vec<String> = needs
            .iter()
            .filter(|d| {
                !matches!(
                    decision_of(d),
                    Some(Decision::Cached { .. } | Decision::Unavailable { .. }) | None
                )
            })
            .cloned()
            .collect();
        let unavailable_dep = |d: &str| match decision_of(d) {
            Some(Decision::Unavailable { reason }) => Some(reason.clone()),
            _ => None,
        };
        let decision = if let Some(reason) = ctx.unavailable(step, &unavailable_dep) {
            Decision::Unavailable { reason }
        } else if !waits.is_empty() {
            Decision::Waits { on: waits }
        } else if ctx.toolchain.is_none() {
            Decision::Run {
                key: None,
                reasons: vec![format!(
                    "toolchain {} is not installed yet (run installs it)",
                    ctx.pins.id()
                )],
            }
        } else {
            let model = |s: &str| {
                known
                    .get(s)
                    .and_then(|o| o.get("model.onnx"))
                    .map(|b| b.digest.clone())
            };
            let digest = model_input_digest(step, &source.digest, &model).unwrap_or_default();
            let parts = ctx.key_parts(step, &digest, &|s| match decision_of(s) {
                Some(Decision::Unavailable { .. }) => Some(BuildContext::absent_outputs()),
                _ => known.get(s).cloned(),
            })?;
            let key = parts.key();
            if !no_cache && ctx.store.lookup(&key)?.is_some() {
                Decision::Cached { key }
            } else if no_cache {
                Decision::Run {
                    key: Some(key),
                    reasons: vec!["--no-cache".into()],
                }
            } else {
                Decision::Run {
                    reasons: reasons(ctx, name, &parts),
                    key: Some(key),
                }
            }
        };
        if let Decision::Cached { key } = &decision {
            let rec = ctx.store.read_action(key);
            known.insert(name.clone(), rec.map(|r| r.outputs).unwrap_or_default());
        }
        out.push(StepPlan {
            step: name.clone(),
            kind: step.spec.kind.to_string(),
            needs,
            decision,
        });
    }
    Ok(out)
}
