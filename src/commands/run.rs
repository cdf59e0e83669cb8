//! `facebuild run`: resolve the settings once, run the pipeline, print the run.

use std::sync::atomic::AtomicBool;

use camino::Utf8PathBuf;
use clap::Args;

use crate::context::BuildContext;
use crate::error::{Error, Result};
use crate::scheduler::{self, RunReport, Status};
use crate::settings::{Executor, Materialize, RunFlags, RunSettings};
use crate::util::human_bytes;

use super::{PipelineArg, RemoteArgs, Selection, default_jobs, summary_line};

/// `run`'s flags.
#[derive(Args)]
pub(super) struct RunArgs {
    #[command(flatten)]
    pub(super) pipeline: PipelineArg,
    #[command(flatten)]
    pub(super) sel: Selection,
    /// Steps to run at once
    #[arg(long, short, default_value_t = default_jobs())]
    pub(super) jobs: usize,
    /// After a failure, keep running every step that does not depend on it
    #[arg(long)]
    pub(super) keep_going: bool,
    /// Rebuild every selected step, ignoring cached results
    #[arg(long)]
    pub(super) no_cache: bool,
    #[command(flatten)]
    pub(super) remote: RemoteArgs,
    /// Which outputs to copy to out/: every step's, only leaf steps', or none (a remote
    /// hit is then fetched only when a step that runs needs it)
    #[arg(long, value_enum, default_value_t = Materialize::All)]
    pub(super) materialize: Materialize,
    /// Where steps run: as the manifest's `runs_on` says (auto), or all on this machine
    /// (local; keys are unchanged, so results are shared either way)
    #[arg(long, value_enum, default_value_t = Executor::Auto)]
    pub(super) executor: Executor,
    #[arg(long)]
    pub(super) json: bool,
}

pub(super) fn run(
    args: RunArgs,
    cache_flag: Option<Utf8PathBuf>,
    cancel: &AtomicBool,
    out: super::Printer,
) -> Result<i32> {
    let RunArgs {
        pipeline,
        sel,
        jobs,
        keep_going,
        no_cache,
        remote,
        materialize,
        executor,
        json: _,
    } = args;
    let settings = RunSettings::resolve(RunFlags {
        cache_dir: cache_flag,
        targets: sel.targets,
        jobs,
        keep_going,
        no_cache,
        remote: remote.flags(),
        materialize,
        executor,
    })?;
    let mut ctx = BuildContext::open(pipeline.load()?, &settings.context)?;
    let mut report = scheduler::run(&mut ctx, &settings.options, cancel)?;
    // Each step's report read once, for the warnings and report.html.
    let faces = crate::report::faces::sets(&report, &ctx);
    report.warnings = crate::report::faces::coverage(&faces, &ctx);
    let written = crate::report::run::write(&report, &ctx, &faces);
    if !out.json(|| &report)? {
        print_run(&report, &ctx);
        match &written {
            Ok((h, j)) => println!("run report {h} | junit {j}"),
            Err(e) => eprintln!("warning: could not write the run report: {e}"),
        }
    }
    if report.interrupted {
        return Err(Error::Interrupted);
    }
    Ok(if report.ok { 0 } else { 1 })
}

fn print_run(r: &RunReport, ctx: &BuildContext) {
    let count = |s: Status| r.steps.iter().filter(|x| x.status == s).count();
    println!(
        "{}: {} steps: {} built, {} cached, {} failed, {} skipped, {} not run{} ({:.2}s)",
        r.pipeline,
        r.steps.len(),
        count(Status::Built),
        count(Status::Cached),
        count(Status::Failed),
        count(Status::Skipped),
        count(Status::NotRun),
        match count(Status::Unavailable) {
            0 => String::new(),
            n => format!(", {n} unavailable"),
        },
        r.duration_ms as f64 / 1000.0
    );
    let w = r.steps.iter().map(|s| s.step.len()).max().unwrap_or(0);
    let status_of = |s: &scheduler::StepResult| {
        serde_json::to_value(s.status)
            .ok()
            .and_then(|v| v.as_str().map(|x| x.replace('_', " ")))
            .unwrap_or_default()
    };
    let sw = r
        .steps
        .iter()
        .map(|s| status_of(s).len())
        .max()
        .unwrap_or(0)
        .max(8);
    for s in &r.steps {
        let status = status_of(s);
        let detail = match (&s.error, s.status) {
            (Some(e), Status::Unavailable) => e
                .trim_start_matches("unavailable: ")
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
            (Some(e), _) => e.lines().next().unwrap_or_default().to_string(),
            (None, Status::Built) => format!(
                "{:.1}s  {}",
                s.duration_ms as f64 / 1000.0,
                summary_line(&s.summary)
            ),
            _ => summary_line(&s.summary),
        };
        let detail = match &s.ran_on {
            Some(on) if s.status == Status::Built => {
                format!(
                    "{detail}  [{} job {} on {}]",
                    on.executor, on.job_id, on.node
                )
            }
            _ => detail,
        };
        println!("  {:<w$}  {:<sw$} {}", s.step, status, detail);
    }
    println!(
        "source {} | outputs in {} | lockfile {}",
        r.source,
        ctx.manifest.output_dir,
        ctx.manifest.lock_path()
    );
    if let Some(rm) = &r.remote {
        let hits = r
            .steps
            .iter()
            .filter(|s| s.cache == Some(scheduler::Origin::Remote))
            .count();
        println!(
            "remote {} ({}): {} | {hits} remote hits, downloaded {} blobs ({}), uploaded {} blobs ({}) and {} records{}",
            rm.url,
            rm.mode,
            rm.status,
            rm.blobs_downloaded,
            human_bytes(rm.bytes_downloaded),
            rm.blobs_uploaded,
            human_bytes(rm.bytes_uploaded),
            rm.records_uploaded,
            match (rm.refused.len(), rm.upload_failures.len()) {
                (0, 0) => String::new(),
                (a, b) => format!(" | {a} refused, {b} upload failures"),
            } + &match (rm.healed, rm.not_healed.len()) {
                (0, 0) => String::new(),
                (h, 0) => format!(" | healed {h} objects"),
                (h, n) => format!(" | healed {h} objects, {n} bad left (read-only)"),
            }
        );
    }
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
}
