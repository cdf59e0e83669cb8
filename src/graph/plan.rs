//! Planning: for each step, in order, is it cached, or will it run — and why. Decided by
//! the scheduler's one resolution path ([`crate::scheduler::resolve`]); the "why" is a diff
//! of the step's key parts against its lockfile entry: new input digest, changed param,
//! changed toolchain, new implementation, or a cache entry that went missing.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::context::BuildContext;
use crate::error::Result;
use crate::scheduler::{Resolution, Upstream, resolve};

/// What `plan` decided for a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// The action key is in the cache with intact outputs.
    Cached {
        /// The action key.
        key: String,
        /// Which cache holds it.
        #[serde(default)]
        cache: crate::scheduler::Origin,
    },
    /// The step will run; `reasons` say what changed.
    Run {
        /// The action key (none before the toolchain is installed).
        key: Option<String>,
        /// What changed since the lockfile.
        reasons: Vec<String>,
    },
    /// Depends on a step that will run; decided when that finishes (it may still hit).
    Waits {
        /// The upstream steps that will run first.
        on: Vec<String>,
    },
    /// Cannot run on this machine: its backend (TensorRT) is not installed.
    Unavailable {
        /// What is missing.
        reason: String,
    },
}

/// One step of a plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepPlan {
    /// The step's name.
    pub step: String,
    /// The step's kind.
    pub kind: String,
    /// The steps it depends on.
    pub needs: Vec<String>,
    /// The manifest's `description:` of the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where it runs when it is not here: e.g. `slurm (constraint h100, class h100)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_on: Option<String>,
    /// What will happen to it.
    #[serde(flatten)]
    pub decision: Decision,
    /// What the step will leave out, and why (e.g. a detector an InsightFace package
    /// cannot hold).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// What `facebuild plan --json` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// The pipeline's name.
    pub pipeline: String,
    /// The toolchain id.
    pub toolchain: String,
    /// Whether that toolchain is installed (keys need it).
    pub toolchain_installed: bool,
    /// Every selected step, in order.
    pub steps: Vec<StepPlan>,
}

/// Plan the selected steps without running anything: the run's own resolution, with every
/// step that would run leaving its dependants waiting.
pub(crate) fn plan(
    ctx: &BuildContext,
    selected: &[String],
    no_cache: bool,
) -> Result<Vec<StepPlan>> {
    let mut known: HashMap<String, Upstream> = HashMap::new();
    let mut out = Vec::new();
    for name in selected {
        let step = ctx.manifest.step(name);
        let deps = ctx.dag.deps(name);
        let up = |d: &str| known.get(d).cloned().unwrap_or(Upstream::Pending);
        let (decision, state) = match resolve(ctx, step, &deps, &up, no_cache)? {
            Resolution::Hit { record, origin, .. } => (
                Decision::Cached {
                    key: record.key.clone(),
                    cache: origin,
                },
                Upstream::Done(record.outputs),
            ),
            Resolution::Miss { parts, reasons } => (
                Decision::Run {
                    key: parts.map(|p| p.key()),
                    reasons,
                },
                Upstream::Pending,
            ),
            Resolution::Waits { on } => (Decision::Waits { on }, Upstream::Pending),
            Resolution::Unavailable { reason } => (
                Decision::Unavailable {
                    reason: reason.clone(),
                },
                Upstream::Unavailable(reason),
            ),
            // Nothing fails in a plan.
            Resolution::Skipped { upstream } => {
                (Decision::Waits { on: vec![upstream] }, Upstream::Pending)
            }
        };
        known.insert(name.clone(), state);
        out.push(StepPlan {
            step: name.clone(),
            kind: step.spec.kind.to_string(),
            needs: deps.into_iter().map(String::from).collect(),
            description: step.spec.description.clone(),
            runs_on: {
                let p = ctx.placement(step);
                (p.executor() != crate::manifest::ExecutorKind::Local).then(|| p.describe())
            },
            decision,
            notes: step.spec.params.kind().plan_notes(&ctx.manifest),
        });
    }
    Ok(out)
}
