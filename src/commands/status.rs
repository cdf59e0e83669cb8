//! `facebuild status`: each step's state against the lockfile and the cache.

use clap::Args;
use serde_json::json;

use crate::context::BuildContext;
use crate::error::Result;
use crate::graph::plan::{Decision, plan};
use crate::manifest::Manifest;
use crate::settings::ContextSettings;

use super::{PipelineArg, summary_line};

/// `status`'s flags.
#[derive(Args)]
pub(super) struct StatusArgs {
    #[command(flatten)]
    pub(super) pipeline: PipelineArg,
    #[arg(long)]
    pub(super) json: bool,
}

pub(super) fn status_cmd(
    args: StatusArgs,
    local: &ContextSettings,
    out: super::Printer,
) -> Result<i32> {
    status(&args.pipeline.load()?, local, out)
}

/// One step's state, as `status` shows it.
#[derive(serde::Serialize)]
struct StatusRow {
    step: String,
    kind: String,
    /// up-to-date, not-built, stale, stale-upstream or unavailable.
    state: &'static str,
    detail: StatusDetail,
    outputs: Vec<String>,
}

#[derive(serde::Serialize)]
struct StatusDetail {
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasons: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<Vec<String>>,
}

pub(super) fn status(m: &Manifest, settings: &ContextSettings, out: super::Printer) -> Result<i32> {
    let ctx = BuildContext::open(m.clone(), settings)?;
    let selected = ctx.dag.select(&[])?;
    let p = plan(&ctx, &selected, false)?;
    let mut rows = Vec::new();
    for s in &p {
        let lock = ctx.lock.steps.get(&s.step);
        let mut detail = StatusDetail {
            key: None,
            summary: None,
            reasons: None,
            upstream: None,
        };
        let state = match &s.decision {
            Decision::Cached { key, .. } => {
                let rec = ctx.store.read_action(key);
                detail.key = Some(key.clone());
                detail.summary = Some(rec.map(|r| r.summary).unwrap_or_default());
                "up-to-date"
            }
            Decision::Run { reasons, .. } => {
                detail.reasons = Some(reasons.clone());
                if lock.is_none() { "not-built" } else { "stale" }
            }
            Decision::Waits { on } => {
                detail.upstream = Some(on.clone());
                "stale-upstream"
            }
            Decision::Unavailable { reason } => {
                detail.reasons = Some(vec![reason.clone()]);
                "unavailable"
            }
        };
        let outputs: Vec<String> = lock
            .map(|l| {
                l.outputs
                    .keys()
                    .map(|k| ctx.manifest.output_dir.join(&s.step).join(k).to_string())
                    .collect()
            })
            .unwrap_or_default();
        rows.push(StatusRow {
            step: s.step.clone(),
            kind: s.kind.clone(),
            state,
            detail,
            outputs,
        });
    }
    if out.json(
        || json!({"pipeline": ctx.manifest.name, "lockfile": ctx.manifest.lock_path(), "steps": rows}),
    )? {
        return Ok(0);
    }
    println!(
        "{} ({}), lockfile {}",
        ctx.manifest.name,
        ctx.manifest.file,
        ctx.manifest.lock_path()
    );
    let w = rows.iter().map(|r| r.step.len()).max().unwrap_or(0);
    for r in &rows {
        let d = &r.detail;
        let detail = match (&d.summary, &d.upstream, &d.reasons) {
            (Some(summary), _, _) => summary_line(summary),
            (_, Some(up), _) => format!("upstream {} will rebuild", json!(up)),
            (_, _, Some(reasons)) => reasons.join("; "),
            _ => String::new(),
        };
        println!("  {:<w$}  {:<15} {}", r.step, r.state, detail);
    }
    Ok(0)
}
