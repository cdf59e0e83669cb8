//! The scheduler: walks the DAG in topological order, resolves each ready step against the
//! cache on the calling thread (a hit costs a few stats), and runs misses on a rayon pool
//! bounded by `--jobs`. A failure stops its dependants; without `--keep-going` no new steps
//! start; Ctrl-C stops launching, lets running steps notice, and keeps what finished.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use camino::Utf8PathBuf;
use serde::Serialize;

use crate::cache::{ActionRecord, BlobRef, LockEntry};
use crate::context::{BuildContext, KeyParts};
use crate::error::{Error, Result};
use crate::graph::plan::{model_input_digest, reasons};
use crate::report::progress;
use crate::steps::{self, StepContext};

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub targets: Vec<String>,
    pub jobs: usize,
    pub keep_going: bool,
    pub no_cache: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Cached,
    Built,
    Failed,
    /// An upstream step failed.
    Skipped,
    /// Not started: the run stopped (first failure without --keep-going, or Ctrl-C).
    NotRun,
    /// Its backend is not installed here (TensorRT): never cached, never a pass; fails the
    /// run only when the step is `required: true`.
    Unavailable,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputInfo {
    pub digest: String,
    pub size: u64,
    pub path: Utf8PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub step: String,
    pub kind: String,
    pub status: Status,
    pub key: Option<String>,
    /// Why it ran (empty when cached).
    pub reasons: Vec<String>,
    pub duration_ms: u64,
    pub outputs: BTreeMap<String, OutputInfo>,
    pub summary: serde_json::Value,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub pipeline: String,
    pub manifest: Utf8PathBuf,
    pub ok: bool,
    pub interrupted: bool,
    pub source: String,
    pub toolchain: String,
    pub duration_ms: u64,
    pub steps: Vec<StepResult>,
}

enum State {
    Pending,
    Running,
    Done(BTreeMap<String, BlobRef>),
    Failed,
    Skipped(String),
    Unavailable(String),
}

struct Finished {
    name: String,
    result: Result<(BTreeMap<String, BlobRef>, serde_json::Value)>,
    duration_ms: u64,
}

pub fn run(ctx: &mut BuildContext, opts: &RunOptions, cancel: &AtomicBool) -> Result<RunReport> {
    let t0 = Instant::now();
    let selected = ctx.dag.select(&opts.targets)?;
    ctx.ensure_toolchain()?;
    let ctx: &BuildContext = ctx;
    let source = ctx.source()?;
    let toolchain = ctx.toolchain.as_ref().expect("ensured above");

    let mut state: HashMap<String, State> = selected
        .iter()
        .map(|s| (s.clone(), State::Pending))
        .collect();
    let mut results: HashMap<String, StepResult> = HashMap::new();
    let mut parts_of: HashMap<String, KeyParts> = HashMap::new();
    let mut stop = false;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.jobs.max(1))
        .thread_name(|i| format!("facebuild-step-{i}"))
        .build()
        .map_err(anyhow::Error::from)?;
    let (tx, rx) = mpsc::channel::<Finished>();

    pool.in_place_scope(|scope| -> Result<()> {
        let mut running = 0usize;
        loop {
            if cancel.load(Ordering::Relaxed) {
                stop = true;
            }
            // Launch everything that is ready; cache hits resolve inline and may make
            // their dependants ready, so repeat until nothing changes.
            let mut changed = true;
            while changed && !stop {
                changed = false;
                for name in &selected {
                    if !matches!(state[name], State::Pending) {
                        continue;
                    }
                    let deps = ctx.dag.deps(name);
                    if let Some(bad) = deps
                        .iter()
                        .find(|d| matches!(state.get(**d), Some(State::Failed | State::Skipped(_))))
                    {
                        state.insert(
                            name.clone(),
                            State::Skipped(format!("upstream `{bad}` did not build")),
                        );
                        changed = true;
                        continue;
                    }
                    if !deps.iter().all(|d| {
                        matches!(state.get(*d), Some(State::Done(_) | State::Unavailable(_)))
                    }) {
                        continue;
                    }
                    let step = ctx.manifest.step(name);
                    let unavailable_dep = |d: &str| match state.get(d) {
                        Some(State::Unavailable(why)) => Some(why.clone()),
                        _ => None,
                    };
                    if let Some(why) = ctx.unavailable(step, &unavailable_dep) {
                        progress::println_err(&format!("  unavailable  {name}: {why}"));
                        let mut r = result_of(
                            ctx,
                            name,
                            Status::Unavailable,
                            None,
                            vec![],
                            0,
                            &BTreeMap::new(),
                            serde_json::Value::Null,
                            Some(format!("unavailable: {why}")),
                        );
                        if steps::required(&step.spec.params) {
                            r.error = Some(format!(
                                "unavailable, and the step is `required: true`: {why}"
                            ));
                        }
                        results.insert(name.clone(), r);
                        state.insert(name.clone(), State::Unavailable(why));
                        changed = true;
                        continue;
                    }
                    let upstream = |s: &str| match state.get(s) {
                        Some(State::Done(o)) => o.get("model.onnx").map(|b| b.digest.clone()),
                        _ => None,
                    };
                    let model_digest = model_input_digest(step, &source.digest, &upstream)
                        .expect("validated: `from` names a model-producing step that is done");
                    let outputs_of = |s: &str| match state.get(s) {
                        Some(State::Done(o)) => Some(o.clone()),
                        Some(State::Unavailable(_)) => Some(BuildContext::absent_outputs()),
                        _ => None,
                    };
                    let parts = ctx.key_parts(step, &model_digest, &outputs_of)?;
                    let key = parts.key();
                    if !opts.no_cache
                        && let Some(rec) = ctx.store.lookup(&key)?
                    {
                        ctx.materialize(name, &rec.outputs)?;
                        results.insert(
                            name.clone(),
                            result_of(
                                ctx,
                                name,
                                Status::Cached,
                                Some(key),
                                vec![],
                                0,
                                &rec.outputs,
                                rec.summary.clone(),
                                None,
                            ),
                        );
                        progress::println_err(&format!("  cached  {name}"));
                        state.insert(name.clone(), State::Done(rec.outputs));
                        parts_of.insert(name.clone(), parts);
                        changed = true;
                        continue;
                    }
                    // Launch only into a free slot: a queued step would still start after a
                    // failure that should have stopped the run.
                    if running >= opts.jobs.max(1) {
                        continue;
                    }
                    let why = if opts.no_cache {
                        vec!["--no-cache".to_string()]
                    } else {
                        reasons(ctx, name, &parts)
                    };
                    progress::println_err(&format!("  run     {name}: {}", why.join("; ")));
                    let model_path = match &step.spec.from {
                        None => source.path.clone(),
                        Some(f) => match &state[&f.value] {
                            State::Done(o) => ctx.store.blob_path(&o["model.onnx"].digest),
                            _ => unreachable!("deps are done"),
                        },
                    };
                    results.insert(
                        name.clone(),
                        result_of(
                            ctx,
                            name,
                            Status::NotRun,
                            Some(key.clone()),
                            why,
                            0,
                            &BTreeMap::new(),
                            serde_json::Value::Null,
                            None,
                        ),
                    );
                    state.insert(name.clone(), State::Running);
                    running += 1;
                    // Every upstream step's outputs, as files in the store.
                    let upstream: BTreeMap<String, BTreeMap<String, Utf8PathBuf>> = deps
                        .iter()
                        .filter_map(|d| match state.get(*d) {
                            Some(State::Done(o)) => Some((
                                d.to_string(),
                                o.iter()
                                    .map(|(k, b)| (k.clone(), ctx.store.blob_path(&b.digest)))
                                    .collect(),
                            )),
                            _ => None,
                        })
                        .collect();
                    let tx = tx.clone();
                    let name = name.clone();
                    let parts_c = parts.clone();
                    parts_of.insert(name.clone(), parts);
                    scope.spawn(move |_| {
                        let t = Instant::now();
                        let result = execute(
                            ctx,
                            &name,
                            &model_path,
                            upstream,
                            &key,
                            &parts_c,
                            toolchain,
                            cancel,
                        );
                        let _ = tx.send(Finished {
                            name,
                            result,
                            duration_ms: t.elapsed().as_millis() as u64,
                        });
                    });
                }
            }
            if running == 0 {
                break;
            }
            let f = rx.recv().expect("a running step always reports");
            running -= 1;
            let r = results.get_mut(&f.name).expect("registered at launch");
            r.duration_ms = f.duration_ms;
            match f.result {
                Ok((outputs, summary)) => {
                    ctx.materialize(&f.name, &outputs)?;
                    progress::println_err(&format!(
                        "  built   {} in {:.1}s",
                        f.name,
                        f.duration_ms as f64 / 1000.0
                    ));
                    *r = result_of(
                        ctx,
                        &f.name,
                        Status::Built,
                        r.key.clone(),
                        r.reasons.clone(),
                        f.duration_ms,
                        &outputs,
                        summary,
                        None,
                    );
                    state.insert(f.name, State::Done(outputs));
                }
                Err(e) => {
                    let interrupted = matches!(e, Error::Interrupted);
                    let msg = e.to_string();
                    if !interrupted {
                        progress::println_err(&format!("  FAILED  {}: {msg}", f.name));
                    }
                    r.status = if interrupted {
                        Status::NotRun
                    } else {
                        Status::Failed
                    };
                    r.error = Some(msg);
                    state.insert(f.name, State::Failed);
                    if !opts.keep_going {
                        stop = true;
                    }
                }
            }
        }
        Ok(())
    })?;

    // Steps never reached: skipped because of an upstream failure, or not run.
    let mut steps_out = Vec::new();
    for name in &selected {
        let r = match results.remove(name) {
            Some(r) => r,
            None => {
                // Topological order: a step's upstream states are final by now.
                let failed_dep = ctx
                    .dag
                    .deps(name)
                    .into_iter()
                    .find(|d| matches!(state.get(*d), Some(State::Failed | State::Skipped(_))))
                    .map(String::from);
                let (status, error) = match (&state[name], failed_dep) {
                    (State::Skipped(why), _) => (Status::Skipped, Some(why.clone())),
                    (_, Some(d)) => {
                        state.insert(
                            name.clone(),
                            State::Skipped(format!("upstream `{d}` did not build")),
                        );
                        (
                            Status::Skipped,
                            Some(format!("upstream `{d}` did not build")),
                        )
                    }
                    _ => (Status::NotRun, None),
                };
                result_of(
                    ctx,
                    name,
                    status,
                    None,
                    vec![],
                    0,
                    &BTreeMap::new(),
                    serde_json::Value::Null,
                    error,
                )
            }
        };
        steps_out.push(r);
    }
    update_lock(ctx, &state, &parts_of)?;
    ctx.store.memo.save()?;
    let interrupted = cancel.load(Ordering::Relaxed);
    let required_missing = steps_out.iter().any(|r| {
        r.status == Status::Unavailable && steps::required(&ctx.manifest.step(&r.step).spec.params)
    });
    let ok = !interrupted
        && !required_missing
        && steps_out.iter().all(|r| {
            matches!(
                r.status,
                Status::Cached | Status::Built | Status::Unavailable
            )
        });
    Ok(RunReport {
        pipeline: ctx.manifest.name.clone(),
        manifest: ctx.manifest.file.clone(),
        ok,
        interrupted,
        source: format!("{} (blake3 {})", source.label, &source.digest[..12]),
        toolchain: ctx.pins.id(),
        duration_ms: t0.elapsed().as_millis() as u64,
        steps: steps_out,
    })
}

#[allow(clippy::too_many_arguments)]
fn result_of(
    ctx: &BuildContext,
    name: &str,
    status: Status,
    key: Option<String>,
    reasons: Vec<String>,
    duration_ms: u64,
    outputs: &BTreeMap<String, BlobRef>,
    summary: serde_json::Value,
    error: Option<String>,
) -> StepResult {
    let dir = ctx.step_out_dir(name);
    StepResult {
        step: name.to_string(),
        kind: ctx.manifest.step(name).spec.kind.to_string(),
        status,
        key,
        reasons,
        duration_ms,
        outputs: outputs
            .iter()
            .map(|(k, b)| {
                (
                    k.clone(),
                    OutputInfo {
                        digest: b.digest.clone(),
                        size: b.size,
                        path: dir.join(k),
                    },
                )
            })
            .collect(),
        summary,
        error,
    }
}

/// Run one step in a scratch folder; on success move its outputs into the store and write
/// the action record; on failure keep its report in the output folder as evidence.
#[allow(clippy::too_many_arguments)]
fn execute(
    ctx: &BuildContext,
    name: &str,
    model: &camino::Utf8Path,
    upstream: BTreeMap<String, BTreeMap<String, Utf8PathBuf>>,
    key: &str,
    parts: &KeyParts,
    toolchain: &crate::toolchain::Toolchain,
    cancel: &AtomicBool,
) -> Result<(BTreeMap<String, BlobRef>, serde_json::Value)> {
    let step = ctx.manifest.step(name);
    let scratch = ctx.store.scratch()?;
    let workdir = camino::Utf8Path::from_path(scratch.path())
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 cache path"))?
        .to_owned();
    let pb = progress::spinner("starting");
    pb.set_prefix(name.to_string());
    let mut datasets = BTreeMap::new();
    for d in steps::datasets_used(&step.spec.params) {
        datasets.insert(d.clone(), ctx.dataset_digest(&d)?.0);
    }
    // TensorRT steps need it; a benchmark uses it for engines when it is there.
    let tensorrt = if steps::uses_tensorrt(&step.spec.params)
        || step.spec.kind == crate::manifest::StepKind::Benchmark
    {
        ctx.tensorrt().as_ref().ok()
    } else {
        None
    };
    let sctx = StepContext {
        manifest: &ctx.manifest,
        step,
        model,
        datasets,
        toolchain,
        tensorrt,
        store: &ctx.store,
        upstream,
        workdir: &workdir,
        cancel,
        progress: &pb,
    };
    let started = Instant::now();
    let outcome = steps::run(&sctx);
    pb.finish_and_clear();
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            // Keep the evidence: every report the step wrote before failing.
            let dir = ctx.step_out_dir(name);
            let mut kept = false;
            for r in ["report.json", "report.md"] {
                if workdir.join(r).exists() {
                    let _ = std::fs::create_dir_all(&dir);
                    kept |= std::fs::copy(workdir.join(r), dir.join(r)).is_ok();
                }
            }
            return Err(match e {
                Error::Step {
                    step,
                    message,
                    hint,
                } if kept => Error::Step {
                    step,
                    message: format!("{message}\n  report kept at {}", dir.join("report.json")),
                    hint,
                },
                other => other,
            });
        }
    };
    let mut outputs = BTreeMap::new();
    for (oname, path) in &outcome.outputs {
        outputs.insert(oname.clone(), ctx.store.ingest(path)?);
    }
    let rec = ActionRecord {
        key: key.to_string(),
        pipeline: ctx.manifest.name.clone(),
        step: name.to_string(),
        kind: parts.kind.clone(),
        impl_version: parts.impl_version,
        params: parts.params.clone(),
        inputs: parts.inputs.clone(),
        toolchain: parts.toolchain.clone(),
        outputs: outputs.clone(),
        summary: outcome.summary.clone(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        duration_ms: started.elapsed().as_millis() as u64,
    };
    ctx.store.write_action(&rec)?;
    Ok((outputs, outcome.summary))
}

fn update_lock(
    ctx: &BuildContext,
    state: &HashMap<String, State>,
    parts_of: &HashMap<String, KeyParts>,
) -> Result<()> {
    let mut lock = ctx.lock.clone();
    let before = (lock.pipeline.clone(), lock.steps.clone());
    lock.schema = 1;
    lock.pipeline = ctx.manifest.name.clone();
    let mut steps = indexmap::IndexMap::new();
    for name in ctx.manifest.steps.keys() {
        let entry = match (state.get(name), parts_of.get(name)) {
            (Some(State::Done(outputs)), Some(p)) => Some(LockEntry {
                kind: p.kind.clone(),
                impl_version: p.impl_version,
                key: p.key(),
                params: p.params.clone(),
                inputs: p.inputs.clone(),
                toolchain: p.toolchain.clone(),
                outputs: outputs.clone(),
            }),
            _ => lock.steps.get(name).cloned(),
        };
        if let Some(e) = entry {
            steps.insert(name.clone(), e);
        }
    }
    lock.steps = steps;
    if (lock.pipeline.clone(), lock.steps.clone()) != before {
        lock.save(&ctx.manifest.lock_path())?;
    }
    Ok(())
}
