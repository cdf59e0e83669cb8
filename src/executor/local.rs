//! The local executor: the step runs in a scratch folder of this machine's cache.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use camino::{Utf8Path, Utf8PathBuf};

use super::{Executed, Executor, Job};
use crate::cache::ActionRecord;
use crate::context::BuildContext;
use crate::error::{Error, Result};
use crate::progress;
use crate::steps::StepContext;

/// Runs steps on this machine.
pub(crate) struct Local;

impl Executor for Local {
    fn execute(&self, ctx: &BuildContext, job: &Job, cancel: &AtomicBool) -> Result<Executed> {
        execute(ctx, job, cancel)
    }
}

/// Run one step in a scratch folder; on success move its outputs into the store and write
/// the action record; on failure keep its report in the output folder as evidence.
pub(crate) fn execute(ctx: &BuildContext, job: &Job, cancel: &AtomicBool) -> Result<Executed> {
    let toolchain = ctx
        .toolchain
        .as_ref()
        .ok_or_else(|| Error::toolchain("not installed"))?;
    let name = job.name.as_str();
    let step = ctx.manifest.step(name);
    let key = job.parts.key();
    let pb = progress::spinner("starting");
    pb.set_prefix(name.to_string());
    // One build per action on this cache: a concurrent run building it makes this one wait,
    // then take its result.
    let waiting = |holder: &str| {
        let who = holder.split(':').next().unwrap_or(holder);
        progress::println_err(&format!("  waiting for `{name}` ({who})"));
        pb.set_message(format!("waiting for `{name}` ({who})"));
    };
    let _action_lock = ctx.store.lock_action(
        &key,
        &format!("{} step `{name}`", ctx.manifest.name),
        cancel,
        &waiting,
    )?;
    // (Unless --no-cache asked for a rebuild.)
    if !job.no_cache
        && let Some(rec) = ctx.store.lookup(&key, Some(&job.parts.kind))?
    {
        pb.finish_and_clear();
        return Ok(Executed {
            outputs: rec.outputs,
            summary: rec.summary,
            by_other_run: true,
            remote_record: None,
        });
    }
    // Benchmarks hold the machine: any other step running beside one, in this run or another
    // facebuild process, would spoil the figures that get cached.
    let _machine_lock = machine_lock(
        step.spec.params.kind().exclusive(),
        &format!("{} step `{name}`", ctx.manifest.name),
        cancel,
        &pb,
    )?;
    // A GPU class's keys say what machine this is: check before anything is built.
    ctx.check_class(step)?;
    let scratch = ctx.store.scratch()?;
    let workdir = Utf8Path::from_path(scratch.path())
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 cache path"))?
        .to_owned();
    let mut datasets = BTreeMap::new();
    for d in step.spec.params.kind().datasets() {
        datasets.insert(d.clone(), ctx.dataset_dir(&d)?);
    }
    // TensorRT steps need it; a benchmark uses it for engines when it is there.
    let tensorrt = if step.spec.params.kind().may_use_tensorrt() {
        ctx.tensorrt().as_ref().ok()
    } else {
        None
    };
    let mut sources = BTreeMap::new();
    if step.spec.params.kind().spans_models() {
        for m in ctx.manifest.models.keys() {
            sources.insert(m.clone(), ctx.source_file(Some(m))?);
        }
    }
    let sctx = StepContext {
        sources,
        manifest: ctx.manifest_for(step),
        step,
        model: &job.model,
        datasets,
        toolchain,
        tensorrt,
        store: &ctx.store,
        upstream: job.upstream.clone(),
        failed: job.failed.clone(),
        workdir: &workdir,
        releases_dir: &ctx.releases_dir,
        signing_key: ctx.signing_key.as_deref(),
        invocation: &ctx.invocation,
        cancel,
        progress: &pb,
    };
    let started = Instant::now();
    let outcome = step.spec.params.kind().run(&sctx);
    pb.finish_and_clear();
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => return Err(keep_evidence(ctx, name, &workdir, e)?),
    };
    let mut outputs = BTreeMap::new();
    for (oname, path) in &outcome.outputs {
        outputs.insert(oname.clone(), ctx.store.ingest(path)?);
    }
    let rec = ActionRecord {
        key: job.parts.key(),
        pipeline: ctx.manifest.name.clone(),
        step: name.to_string(),
        parts: job.parts.clone(),
        outputs: outputs.clone(),
        summary: outcome.summary.clone(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        duration_ms: started.elapsed().as_millis() as u64,
        ran_on: job.ran_on.clone(),
    };
    ctx.store.write_action(&rec)?;
    if let Some(remote) = &ctx.remote {
        remote.upload(&rec, &ctx.store);
    }
    Ok(Executed {
        outputs,
        summary: outcome.summary,
        by_other_run: false,
        remote_record: None,
    })
}

/// A failed step's error, with its evidence kept in its output folder: every report it wrote
/// before failing, and a helper's traceback (the message then says where they are).
fn keep_evidence(ctx: &BuildContext, name: &str, workdir: &Utf8Path, e: Error) -> Result<Error> {
    // Keep the evidence: every report the step wrote before failing.
    let mut kept = false;
    let dir = ctx.step_out_dir(name)?;
    for r in ["report.json", "report.md"] {
        if workdir.join(r).exists() {
            let _ = std::fs::create_dir_all(&dir);
            kept |= std::fs::copy(workdir.join(r), dir.join(r)).is_ok();
        }
    }
    Ok(match e {
        Error::Step {
            step,
            message,
            hint,
        } if kept => Error::Step {
            step,
            message: format!("{message}\n  report kept at {}", dir.join("report.json")),
            hint,
        },
        // A helper's traceback goes to a file beside the reports; the message says
        // what failed, where, and the likely cause.
        Error::Helper {
            what,
            exception,
            origin,
            traceback,
            hint,
        } => {
            let file = dir.join("traceback.txt");
            let kept = std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(&file, &traceback))
                .is_ok();
            let origin = origin.map(|o| format!(" (in {o})")).unwrap_or_default();
            Error::Step {
                step: name.to_string(),
                message: if kept {
                    format!("{what} failed: {exception}{origin}\n  traceback kept at {file}")
                } else {
                    format!("{what} failed: {exception}{origin}")
                },
                hint,
            }
        }
        other => other,
    })
}

/// The machine lock every local step takes: shared for ordinary steps, exclusive for a
/// benchmark, across every facebuild process on this machine (a file lock in the temp
/// folder). A benchmark so waits for the steps running beside it to finish, and no step
/// starts while it measures. Benchmarks take precedence: a waiting one holds a turnstile
/// that new shared holders pass through, so a stream of short steps cannot starve it.
fn machine_lock(
    exclusive: bool,
    what: &str,
    cancel: &AtomicBool,
    pb: &indicatif::ProgressBar,
) -> Result<crate::cache::store::FileLock> {
    use crate::cache::store::FileLock;
    let tmp = Utf8PathBuf::from_path_buf(std::env::temp_dir())
        .map_err(|p| anyhow::anyhow!("non-UTF-8 temp dir {}", p.display()))?;
    let (lock, turnstile) = (
        tmp.join("facebuild-machine.lock"),
        tmp.join("facebuild-machine.turnstile"),
    );
    let waiting = |holder: &str| {
        let who = if holder.is_empty() {
            "steps of another facebuild run".to_string()
        } else {
            holder.to_string()
        };
        if exclusive {
            progress::println_err(&format!(
                "  waiting for the machine: a benchmark runs alone ({who})"
            ));
        }
        pb.set_message(format!("waiting for the machine ({who})"));
    };
    let gate = FileLock::acquire_as(&turnstile, what, false, cancel, &waiting)?;
    if exclusive {
        // Hold the turnstile until the machine is ours: no new step starts meanwhile.
        let held = FileLock::acquire_as(&lock, what, false, cancel, &waiting)?;
        drop(gate);
        Ok(held)
    } else {
        drop(gate);
        FileLock::acquire_as(&lock, what, true, cancel, &waiting)
    }
}
