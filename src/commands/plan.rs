//! `facebuild plan`: the order, and for each step whether it is cached or will run, and why.

use clap::Args;

use crate::context::BuildContext;
use crate::error::Result;
use crate::graph::plan::{Decision, plan};
use crate::settings::ContextSettings;

use super::{PipelineArg, Selection};

/// `plan`'s flags.
#[derive(Args)]
pub(super) struct PlanArgs {
    #[command(flatten)]
    pub(super) pipeline: PipelineArg,
    #[command(flatten)]
    pub(super) sel: Selection,
    #[arg(long)]
    pub(super) json: bool,
}

pub(super) fn plan_cmd(
    args: PlanArgs,
    local: &ContextSettings,
    out: super::Printer,
) -> Result<i32> {
    let PlanArgs {
        pipeline,
        sel,
        json: _,
    } = args;
    let ctx = BuildContext::open(pipeline.load()?, local)?;
    let selected = ctx.dag.select(&sel.targets)?;
    let p = plan(&ctx, &selected, false)?;
    if !out.json(|| crate::graph::plan::Plan {
        pipeline: ctx.manifest.name.clone(),
        toolchain: ctx.pins.id(),
        toolchain_installed: ctx.toolchain.is_some(),
        steps: p.clone(),
    })? {
        println!(
            "plan for `{}` ({}), toolchain {}",
            ctx.manifest.name,
            ctx.manifest.file,
            ctx.pins.id()
        );
        let w = p.iter().map(|s| s.step.len()).max().unwrap_or(0);
        for (i, s) in p.iter().enumerate() {
            let what = match &s.decision {
                Decision::Cached { .. } => "cached".to_string(),
                Decision::Run { reasons, .. } => match &s.runs_on {
                    Some(on) => format!("will run on {on}: {}", reasons.join("; ")),
                    None => format!("will run: {}", reasons.join("; ")),
                },
                Decision::Waits { on } => {
                    format!("will run if `{}` changes its outputs", on.join("`, `"))
                }
                Decision::Unavailable { reason } => format!("unavailable: {reason}"),
            };
            println!("{:>3}. {:<w$}  {:<9} {}", i + 1, s.step, s.kind, what);
            for n in &s.notes {
                println!("     note: {n}");
            }
        }
        let n = p
            .iter()
            .filter(|s| {
                !matches!(
                    s.decision,
                    Decision::Cached { .. } | Decision::Unavailable { .. }
                )
            })
            .count();
        println!("{n} of {} steps to run", p.len());
    }
    Ok(0)
}
