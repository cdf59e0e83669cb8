//! The scheduler: walks the DAG in topological order, resolves each ready step against the
//! cache on the calling thread (a hit costs a few stats), and runs misses each on its own
//! thread, at most `--jobs` at once. A failure stops its dependants; without `--keep-going` no new steps
//! start; Ctrl-C stops launching, lets running steps notice, and keeps what finished.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};

use crate::cache::{ActionRecord, KeyParts, LockEntry};
use crate::context::BuildContext;
use crate::error::{Error, Result};
use crate::executor::{Executed, Executor, Job};
use crate::manifest::{ExecutorKind, RanOn};
use crate::progress;

mod resolve;

pub use resolve::Origin;
use resolve::Outputs;
pub(crate) use resolve::{Resolution, Upstream, failed_outputs, miss_reasons, resolve};

#[derive(Debug, Clone, Default)]
pub(crate) struct RunOptions {
    pub targets: Vec<String>,
    pub jobs: usize,
    pub keep_going: bool,
    pub no_cache: bool,
}

/// What happened to a step in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Its result came from the cache.
    Cached,
    /// It ran and succeeded.
    Built,
    /// It ran and failed (including a failed gate).
    Failed,
    /// An upstream step failed.
    Skipped,
    /// Not started: the run stopped (first failure without --keep-going, or Ctrl-C).
    NotRun,
    /// Its backend is not installed here (TensorRT): never cached, never a pass; fails the
    /// run only when the step is `required: true`.
    Unavailable,
}

/// One output of a step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputInfo {
    /// blake3 of the file.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Where the output was copied for people to read.
    pub path: Utf8PathBuf,
}

/// One step's result in a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepResult {
    /// The step's name.
    pub step: String,
    /// The step's kind.
    pub kind: String,
    /// What happened.
    pub status: Status,
    /// The action key (none for steps that were never keyed).
    pub key: Option<String>,
    /// Why it ran (empty when cached).
    pub reasons: Vec<String>,
    /// Wall time, ms.
    pub duration_ms: u64,
    /// Outputs by name.
    pub outputs: BTreeMap<String, OutputInfo>,
    /// The step's short summary (figures shown on the run line), as it wrote it.
    pub summary: serde_json::Value,
    /// Why it failed, was skipped or is unavailable.
    pub error: Option<String>,
    /// For a cached step: which cache held it (`local` or `remote`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<Origin>,
    /// Where it ran, when not here (a Slurm job's id and node), or where a cached result
    /// was built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ran_on: Option<RanOn>,
}

/// What `facebuild run --json` prints: the run and every step's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// The pipeline's name.
    pub pipeline: String,
    /// The manifest file.
    pub manifest: Utf8PathBuf,
    /// Whether every step was cached, built or (not required and) unavailable.
    pub ok: bool,
    /// Whether Ctrl-C or SIGTERM stopped the run.
    pub interrupted: bool,
    /// The source model and its digest.
    pub source: String,
    /// The toolchain id.
    pub toolchain: String,
    /// Wall time, ms.
    pub duration_ms: u64,
    /// Every selected step, in pipeline order.
    pub steps: Vec<StepResult>,
    /// The remote cache's part in the run, when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<crate::cache::remote::RemoteReport>,
    /// What the run found doubtful without failing a step: a calibration or search set
    /// whose faces are larger than those of the set it is compared on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

enum State {
    Pending,
    Running,
    Done(Outputs),
    Failed,
    Skipped(String),
    Unavailable(String),
}

struct Finished {
    name: String,
    result: Result<Executed>,
    duration_ms: u64,
}

/// A step that resolved to a miss and may start when a slot is free.
struct Launch {
    name: String,
    parts: KeyParts,
    reasons: Vec<String>,
}

/// The state of one `run`: every selected step's state and result so far.
struct RunState<'a> {
    ctx: &'a BuildContext,
    opts: &'a RunOptions,
    selected: Vec<String>,
    state: HashMap<String, State>,
    results: HashMap<String, StepResult>,
    parts_of: HashMap<String, KeyParts>,
    /// Misses waiting for a free slot, so their keys are not computed again.
    ready: HashMap<String, (KeyParts, Vec<String>)>,
    running: usize,
    /// Of `running`, the steps running elsewhere (Slurm jobs): they take no local slot.
    running_elsewhere: usize,
    /// An exclusive step (a benchmark) is running: nothing else starts until it ends.
    exclusive_running: bool,
    /// No new step starts: a step failed without `--keep-going` (the steps that report on
    /// the failure still run), or the run was interrupted (nothing starts).
    stop: bool,
    interrupted: bool,
    /// Steps some selected step depends on (not leaves, for `--materialize leaves`).
    needed: std::collections::HashSet<String>,
    /// Remote hits whose blobs are not local yet: fetched when a running step consumes
    /// them, or when they are materialized.
    remote_hits: HashMap<String, ActionRecord>,
    /// Keys whose cached result was dropped in this run because it could not be
    /// materialized: a second failure is the run's error, not another retry.
    dropped: std::collections::HashSet<String>,
    /// Steps that run on another machine (Slurm jobs), from the manifest's placements.
    elsewhere: std::collections::HashSet<String>,
}

impl<'a> RunState<'a> {
    fn new(ctx: &'a BuildContext, opts: &'a RunOptions, selected: Vec<String>) -> Self {
        let state = selected
            .iter()
            .map(|s| (s.clone(), State::Pending))
            .collect();
        let needed = selected
            .iter()
            .flat_map(|s| ctx.dag.deps(s))
            .map(String::from)
            .collect();
        let elsewhere = selected
            .iter()
            .filter(|s| {
                let step = ctx.manifest.step(s);
                ctx.placement(step).executor() != ExecutorKind::Local
            })
            .cloned()
            .collect();
        RunState {
            ctx,
            opts,
            selected,
            state,
            results: HashMap::new(),
            parts_of: HashMap::new(),
            ready: HashMap::new(),
            running: 0,
            running_elsewhere: 0,
            exclusive_running: false,
            stop: false,
            interrupted: false,
            needed,
            remote_hits: HashMap::new(),
            dropped: Default::default(),
            elsewhere,
        }
    }

    /// Whether a step runs on another machine (a Slurm job).
    fn elsewhere(&self, name: &str) -> bool {
        self.elsewhere.contains(name)
    }

    /// Whether a step needs this machine to itself (a local benchmark).
    fn exclusive(&self, name: &str) -> bool {
        self.ctx.manifest.step(name).spec.params.kind().exclusive() && !self.elsewhere(name)
    }

    /// Whether `name` cannot start now: every slot is taken, or it needs the machine alone
    /// and something runs, or an exclusive step runs (or is about to). A step that runs
    /// elsewhere takes no local slot, and is never held back by a local benchmark.
    fn no_room(&self, name: &str, launches: &[Launch]) -> bool {
        if self.elsewhere(name) {
            return false;
        }
        let local_launches: Vec<&Launch> = launches
            .iter()
            .filter(|l| !self.elsewhere(&l.name))
            .collect();
        let busy = self.running - self.running_elsewhere + local_launches.len();
        self.exclusive_running
            || local_launches.iter().any(|l| self.exclusive(&l.name))
            || busy >= self.opts.jobs.max(1)
            || (busy > 0 && self.exclusive(name))
    }

    /// Whether a step's outputs are copied to `out/` (`--materialize`).
    fn materializes(&self, name: &str) -> bool {
        use crate::settings::Materialize;
        match self.ctx.materialize {
            Materialize::All => true,
            Materialize::Leaves => !self.needed.contains(name),
            Materialize::None => false,
        }
    }

    /// Fetch a remote hit's blobs (verified) and keep its record locally, so the next run
    /// hits locally. Err says why the blobs were refused.
    fn fetch_remote(
        &mut self,
        name: &str,
        record: &ActionRecord,
    ) -> std::result::Result<(), crate::cache::remote::RemoteError> {
        let Some(remote) = &self.ctx.remote else {
            return Ok(());
        };
        let blobs: Vec<_> = record.outputs.values().cloned().collect();
        let bytes: u64 = blobs.iter().map(|b| b.size).sum();
        progress::println_err(&format!(
            "  fetch   {name}: {} blob(s), {}",
            blobs.len(),
            crate::util::human_bytes(bytes)
        ));
        remote.fetch(&blobs, &self.ctx.store)?;
        self.remote_hits.remove(name);
        // A local record from now on; failing to write it only costs a remote lookup.
        let _ = self.ctx.store.write_action(record);
        Ok(())
    }

    /// Make the outputs of every upstream step of `name` local before it runs. Returns the
    /// upstream step whose remote blobs were refused: it is rebuilt first.
    fn fetch_upstream(&mut self, name: &str) -> Option<String> {
        for d in self.ctx.dag.deps(name) {
            let Some(rec) = self.remote_hits.get(d).cloned() else {
                continue;
            };
            if let Err(why) = self.fetch_remote(d, &rec) {
                if let Some(r) = &self.ctx.remote {
                    r.refuse_key(&rec.key, format!("step `{d}`: {why}; rebuilding it"));
                }
                return Some(d.to_string());
            }
        }
        None
    }

    /// The params of a `release` step.
    fn release_params(&self, name: &str) -> Option<crate::steps::release::ReleaseParams> {
        match &self.ctx.manifest.step(name).spec.params {
            crate::steps::StepParams::Release(p) => Some(p.clone()),
            _ => None,
        }
    }

    /// A cached release whose folder is missing is restored from the cache (its own outputs
    /// and its upstream steps' artifacts, fetched from the remote when they are there).
    fn restore_release(
        &mut self,
        name: &str,
        p: &crate::steps::release::ReleaseParams,
        record: &ActionRecord,
    ) -> Result<()> {
        let ctx = self.ctx;
        let deps = ctx.dag.deps(name);
        // Everything restored must be local: its own outputs and its upstream steps'.
        if let Some(remote) = &ctx.remote {
            let own: Vec<_> = record.outputs.values().cloned().collect();
            remote
                .fetch(&own, &ctx.store)
                .map_err(anyhow::Error::from)?;
        }
        for d in &deps {
            if let Some(rec) = self.remote_hits.get(*d).cloned() {
                self.fetch_remote(d, &rec).map_err(anyhow::Error::from)?;
            }
        }
        let paths = |outputs: &Outputs| -> BTreeMap<String, Utf8PathBuf> {
            outputs
                .iter()
                .map(|(k, b)| (k.clone(), ctx.store.blob_path(&b.digest)))
                .collect()
        };
        let own = paths(&record.outputs);
        let mut upstream = BTreeMap::new();
        for d in deps {
            if let Some(State::Done(o)) = self.state.get(d) {
                upstream.insert(d.to_string(), paths(o));
            }
        }
        match crate::steps::release::restore(
            &self.ctx.manifest,
            p,
            &own,
            &upstream,
            &self.ctx.releases_dir,
        ) {
            Ok(Some(dir)) => {
                progress::println_err(&format!("  restored {name}: {dir} from the cache"));
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Forget what was decided for a step, so it is resolved (and rebuilt) again.
    fn reset(&mut self, name: &str) {
        self.state.insert(name.into(), State::Pending);
        self.results.remove(name);
        self.parts_of.remove(name);
        self.remote_hits.remove(name);
    }

    /// The failed (or skipped) steps that `name` reports on rather than being skipped by
    /// (compare's candidates), with why.
    fn failed_reported_by(&self, name: &str) -> BTreeMap<String, String> {
        let step = self.ctx.manifest.step(name);
        let from = step.spec.from.as_ref().map(|f| f.value.as_str());
        step.spec
            .params
            .kind()
            .reports_failures_of()
            .into_iter()
            // Its `from` step gives it its model: that failure skips it (see `resolve`).
            .filter(|d| Some(d.as_str()) != from)
            .filter_map(|d| {
                let why = match self.state.get(&d)? {
                    State::Failed => format!(
                        "its step failed: {}",
                        self.results
                            .get(&d)
                            .and_then(|r| r.error.as_deref())
                            .unwrap_or("(no message)")
                    ),
                    State::Skipped(w) => format!("its step was skipped: {w}"),
                    _ => return None,
                };
                Some((d, why))
            })
            .collect()
    }

    /// After a failure without `--keep-going` nothing new starts, except a pending compare
    /// that reports on the failed step, and what it still needs: the failure then comes with
    /// the other candidates' figures.
    fn still_runs(&self, name: &str) -> bool {
        let failed = |d: &str| matches!(self.state.get(d), Some(State::Failed | State::Skipped(_)));
        self.selected
            .iter()
            .filter(|s| matches!(self.state[*s], State::Pending))
            .filter(|s| {
                let reported = self.failed_reported_by(s);
                !reported.is_empty()
                    && !self
                        .ctx
                        .dag
                        .deps(s)
                        .iter()
                        .any(|d| failed(d) && !reported.contains_key(*d))
            })
            .any(|s| {
                self.ctx
                    .dag
                    .select(std::slice::from_ref(s))
                    .is_ok_and(|needed| needed.iter().any(|n| n == name))
            })
    }

    /// What the resolver knows of a step from this run.
    fn upstream(&self, step: &str) -> Upstream {
        match self.state.get(step) {
            Some(State::Done(o)) => Upstream::Done(o.clone()),
            Some(State::Unavailable(why)) => Upstream::Unavailable(why.clone()),
            Some(State::Failed | State::Skipped(_)) => Upstream::Failed,
            _ => Upstream::Pending,
        }
    }

    /// Resolve every pending step; hits, skips and unavailable steps settle at once and may
    /// make their dependants ready, so repeat until nothing changes. Returns the misses
    /// that can start now, within the free slots.
    fn settle(&mut self) -> Result<Vec<Launch>> {
        let mut launches = Vec::new();
        let mut changed = true;
        while changed && !self.interrupted {
            changed = false;
            for name in self.selected.clone() {
                if !matches!(self.state[&name], State::Pending) {
                    continue;
                }
                if self.stop && !self.still_runs(&name) {
                    continue;
                }
                if self.ready.contains_key(&name) && self.no_room(&name, &launches) {
                    continue;
                }
                let resolution = match self.ready.remove(&name) {
                    Some((parts, reasons)) => Resolution::Miss {
                        parts: Some(parts),
                        reasons,
                    },
                    None => self.resolve(&name)?,
                };
                changed |= self.apply(&name, resolution, &mut launches)?;
            }
        }
        Ok(launches)
    }

    fn resolve(&self, name: &str) -> Result<Resolution> {
        let step = self.ctx.manifest.step(name);
        let deps = self.ctx.dag.deps(name);
        resolve(
            self.ctx,
            step,
            &deps,
            &|d| self.upstream(d),
            self.opts.no_cache,
        )
    }

    /// Record a resolution; true when the step settled (its dependants may be ready now).
    fn apply(
        &mut self,
        name: &str,
        resolution: Resolution,
        launches: &mut Vec<Launch>,
    ) -> Result<bool> {
        match resolution {
            Resolution::Waits { .. } => Ok(false),
            Resolution::Skipped { upstream } => {
                self.state.insert(
                    name.into(),
                    State::Skipped(format!("upstream `{upstream}` did not build")),
                );
                Ok(true)
            }
            Resolution::Unavailable { reason } => {
                progress::println_err(&format!("  unavailable  {name}: {reason}"));
                let mut r = self.result(name, Status::Unavailable);
                r.error = Some(format!("unavailable: {reason}"));
                if self.ctx.manifest.step(name).spec.params.kind().required() {
                    r.error = Some(format!(
                        "unavailable, and the step is `required: true`: {reason}"
                    ));
                }
                self.results.insert(name.into(), r);
                self.state.insert(name.into(), State::Unavailable(reason));
                Ok(true)
            }
            Resolution::Hit {
                parts,
                record,
                origin,
            } => self.apply_hit(name, parts, *record, origin),
            Resolution::Miss { parts, reasons } => {
                let parts = parts.ok_or_else(|| Error::toolchain("not installed"))?;
                // Its inputs must be local before it runs here (a job elsewhere fetches
                // them from the remote); a refused upstream is rebuilt first, and this step
                // waits for it.
                if !self.elsewhere(name)
                    && let Some(bad) = self.fetch_upstream(name)
                {
                    self.reset(&bad);
                    return Ok(true);
                }
                // Launch only into a free slot: a queued step would still start after a
                // failure that should have stopped the run.
                if self.no_room(name, launches) {
                    self.ready.insert(name.into(), (parts, reasons));
                } else {
                    launches.push(Launch {
                        name: name.into(),
                        parts,
                        reasons,
                    });
                    self.state.insert(name.into(), State::Running);
                }
                Ok(false)
            }
        }
    }

    /// A cache hit: fetch a remote one's blobs, lay its outputs out, restore a release; a
    /// result that cannot be used is dropped, and the step rebuilt.
    fn apply_hit(
        &mut self,
        name: &str,
        parts: KeyParts,
        record: ActionRecord,
        origin: Origin,
    ) -> Result<bool> {
        let wanted = self.materializes(name);
        if origin == Origin::Remote {
            self.remote_hits.insert(name.into(), record.clone());
            if wanted && let Err(why) = self.fetch_remote(name, &record) {
                // Refused: the next resolution misses, and the step is rebuilt.
                if let Some(r) = &self.ctx.remote {
                    r.refuse_key(&record.key, format!("step `{name}`: {why}; rebuilding it"));
                }
                self.remote_hits.remove(name);
                return Ok(true);
            }
        }
        if wanted && let Err(e) = self.ctx.materialize(name, &record.outputs) {
            if !self.dropped.insert(record.key.clone()) {
                return Err(e);
            }
            // A cached result that cannot be laid out is dropped and rebuilt, never
            // a run that fails on every try until someone cleans the cache.
            progress::println_err(&format!(
                "  warning {name}: its cached outputs could not be materialized ({e}); dropping the cached result and rebuilding it"
            ));
            match origin {
                Origin::Local => self.ctx.store.drop_action(&record.key),
                Origin::Remote => {
                    self.remote_hits.remove(name);
                    if let Some(r) = &self.ctx.remote {
                        r.refuse_key(
                            &record.key,
                            format!("step `{name}`: its outputs could not be materialized ({e}); rebuilding it"),
                        );
                    }
                }
            }
            return Ok(true);
        }
        // `--materialize none` fetches nothing, releases included.
        if self.ctx.materialize != crate::settings::Materialize::None
            && let Some(p) = self.release_params(name)
            && let Err(why) = self.restore_release(name, &p, &record)
        {
            progress::println_err(&format!("  FAILED  {name}: {why}"));
            let mut r = self.result(name, Status::Failed);
            r.key = Some(record.key.clone());
            r.error = Some(why.to_string());
            self.results.insert(name.into(), r);
            self.state.insert(name.into(), State::Failed);
            if !self.opts.keep_going {
                self.stop = true;
            }
            return Ok(true);
        }
        let mut r = self.result(name, Status::Cached);
        r.key = Some(record.key.clone());
        r.outputs = self.output_infos(name, &record.outputs);
        r.summary = record.summary;
        r.cache = Some(origin);
        r.ran_on = record.ran_on.clone();
        self.results.insert(name.into(), r);
        progress::println_err(&match origin {
            Origin::Local => format!("  cached  {name}"),
            Origin::Remote => format!("  cached  {name} (remote)"),
        });
        self.state.insert(name.into(), State::Done(record.outputs));
        self.parts_of.insert(name.into(), parts);
        Ok(true)
    }

    /// A result with nothing in it yet.
    fn result(&self, name: &str, status: Status) -> StepResult {
        StepResult {
            step: name.to_string(),
            kind: self.ctx.manifest.step(name).spec.kind.to_string(),
            status,
            key: None,
            reasons: vec![],
            duration_ms: 0,
            outputs: BTreeMap::new(),
            summary: serde_json::Value::Null,
            error: None,
            cache: None,
            ran_on: None,
        }
    }

    fn output_infos(&self, name: &str, outputs: &Outputs) -> BTreeMap<String, OutputInfo> {
        let dir = self
            .ctx
            .step_out_dir(name)
            .unwrap_or_else(|_| self.ctx.manifest.output_dir.clone());
        outputs
            .iter()
            .map(|(k, b)| {
                let info = OutputInfo {
                    digest: b.digest.clone(),
                    size: b.size,
                    path: dir.join(k),
                };
                (k.clone(), info)
            })
            .collect()
    }

    /// Everything a launched step needs, taken from the run's state.
    fn job(&mut self, l: Launch, source: &Utf8Path) -> Job {
        let ctx = self.ctx;
        progress::println_err(&format!("  run     {}: {}", l.name, l.reasons.join("; ")));
        let step = ctx.manifest.step(&l.name);
        let done = |s: &str| match self.state.get(s) {
            Some(State::Done(o)) => Some(o),
            _ => None,
        };
        let model = match &step.spec.from {
            None => source.to_owned(),
            Some(f) => done(&f.value)
                .and_then(|o| o.get("model.onnx"))
                .map(|b| ctx.store.blob_path(&b.digest))
                .unwrap_or_else(|| source.to_owned()),
        };
        let upstream_blobs = ctx
            .dag
            .deps(&l.name)
            .into_iter()
            .filter_map(|d| Some((d.to_string(), done(d)?.clone())))
            .collect();
        // Every upstream step's outputs, as files in the store.
        let upstream = ctx
            .dag
            .deps(&l.name)
            .into_iter()
            .filter_map(|d| {
                let paths = done(d)?
                    .iter()
                    .map(|(k, b)| (k.clone(), ctx.store.blob_path(&b.digest)))
                    .collect();
                Some((d.to_string(), paths))
            })
            .collect();
        let failed = self.failed_reported_by(&l.name);
        let mut r = self.result(&l.name, Status::NotRun);
        r.key = Some(l.parts.key());
        r.reasons = l.reasons;
        self.results.insert(l.name.clone(), r);
        self.parts_of.insert(l.name.clone(), l.parts.clone());
        self.running += 1;
        if self.elsewhere(&l.name) {
            self.running_elsewhere += 1;
        }
        self.exclusive_running |= self.exclusive(&l.name);
        Job {
            name: l.name,
            no_cache: self.opts.no_cache,
            model,
            upstream,
            upstream_blobs,
            failed,
            parts: l.parts,
            ran_on: None,
        }
    }

    /// A step finished: record its outputs, or its failure.
    fn finish(&mut self, f: Finished) -> Result<()> {
        self.running -= 1;
        if self.elsewhere(&f.name) {
            self.running_elsewhere -= 1;
        }
        if self.exclusive(&f.name) {
            self.exclusive_running = false;
        }
        match f.result {
            Ok(Executed {
                outputs,
                summary,
                by_other_run,
                remote_record,
            }) => {
                let ran_on = remote_record.as_ref().and_then(|r| r.ran_on.clone());
                let wanted = self.materializes(&f.name);
                // Built elsewhere: its blobs stay on the remote until something needs them.
                let local = match remote_record {
                    None => true,
                    Some(rec) => {
                        self.remote_hits.insert(f.name.clone(), (*rec).clone());
                        let fetched = wanted.then(|| self.fetch_remote(&f.name, &rec));
                        if let Some(Err(why)) = &fetched {
                            progress::println_err(&format!(
                                "  warning {}: its outputs could not be fetched: {why}",
                                f.name
                            ));
                        }
                        matches!(fetched, Some(Ok(())))
                    }
                };
                if wanted && local {
                    self.ctx.materialize(&f.name, &outputs)?;
                }
                progress::println_err(&if by_other_run {
                    format!("  cached  {} (built by a concurrent run)", f.name)
                } else {
                    format!(
                        "  built   {} in {:.1}s",
                        f.name,
                        f.duration_ms as f64 / 1000.0
                    )
                });
                let infos = self.output_infos(&f.name, &outputs);
                let r = self.results.get_mut(&f.name).expect("registered at launch");
                r.status = if by_other_run {
                    r.cache = Some(Origin::Local);
                    Status::Cached
                } else {
                    Status::Built
                };
                r.duration_ms = f.duration_ms;
                r.outputs = infos;
                r.summary = summary;
                r.ran_on = ran_on;
                self.state.insert(f.name, State::Done(outputs));
            }
            Err(e) => {
                let interrupted = matches!(e, Error::Interrupted);
                let msg = e.to_string();
                if !interrupted {
                    progress::println_err(&format!("  FAILED  {}: {msg}", f.name));
                }
                let r = self.results.get_mut(&f.name).expect("registered at launch");
                r.duration_ms = f.duration_ms;
                r.status = if interrupted {
                    Status::NotRun
                } else {
                    Status::Failed
                };
                r.error = Some(msg);
                self.state.insert(f.name, State::Failed);
                if !self.opts.keep_going {
                    self.stop = true;
                }
            }
        }
        Ok(())
    }

    /// Results in pipeline order; steps never reached are skipped (an upstream step failed)
    /// or not run (the run stopped).
    fn step_results(&mut self) -> Vec<StepResult> {
        let mut out = Vec::new();
        for name in self.selected.clone() {
            if let Some(r) = self.results.remove(&name) {
                out.push(r);
                continue;
            }
            // Topological order: a step's upstream states are final by now. A failed step
            // it reports on (compare's candidate) does not skip it.
            let reported = self.failed_reported_by(&name);
            let failed_dep = self
                .ctx
                .dag
                .deps(&name)
                .into_iter()
                .find(|d| {
                    matches!(self.state.get(*d), Some(State::Failed | State::Skipped(_)))
                        && !reported.contains_key(*d)
                })
                .map(String::from);
            let mut r = self.result(&name, Status::NotRun);
            match (&self.state[&name], failed_dep) {
                (State::Skipped(why), _) => {
                    r.status = Status::Skipped;
                    r.error = Some(why.clone());
                }
                (_, Some(d)) => {
                    let why = format!("upstream `{d}` did not build");
                    self.state.insert(name.clone(), State::Skipped(why.clone()));
                    r.status = Status::Skipped;
                    r.error = Some(why);
                }
                _ => {}
            }
            out.push(r);
        }
        out
    }
}

pub(crate) fn run(
    ctx: &mut BuildContext,
    opts: &RunOptions,
    cancel: &AtomicBool,
) -> Result<RunReport> {
    let t0 = Instant::now();
    let selected = ctx.dag.select(&opts.targets)?;
    ctx.ensure_toolchain()?;
    let ctx: &BuildContext = ctx;
    let reclaimed = ctx.store.reclaim_scratch();
    if reclaimed > 0 {
        tracing::info!("removed {reclaimed} scratch folder(s) left by killed runs");
    }
    let source = ctx.source(None)?;
    let mut run = RunState::new(ctx, opts, selected);
    let slurm = crate::executor::Slurm::new();
    // A step running elsewhere blocks a thread while it follows its job, but takes no local
    // slot (`no_room` counts those): one thread more for each.
    //
    // Steps run on plain threads, not a rayon pool: a step that waits inside a parallel
    // iterator would otherwise pick up another step's job on its own stack. Seen as a
    // deadlock: `calibrate`, holding the machine lock shared, waited in its image decoding
    // under `openvino_fp32`, which waited on the turnstile held by a benchmark in another
    // run, which waited for `calibrate`'s shared hold to end. `settle` bounds how many start.
    let (tx, rx) = mpsc::channel::<Finished>();

    std::thread::scope(|scope| -> Result<()> {
        loop {
            if cancel.load(Ordering::Relaxed) {
                run.stop = true;
                run.interrupted = true;
            }
            for launch in run.settle()? {
                let model = ctx.manifest.step(&launch.name).model.clone();
                let job = run.job(launch, &ctx.source_file(model.as_deref())?);
                let tx = tx.clone();
                let executor: &dyn Executor = if run.elsewhere(&job.name) {
                    &slurm
                } else {
                    &crate::executor::Local
                };
                std::thread::Builder::new()
                    .name(format!("facebuild-step-{}", job.name))
                    .spawn_scoped(scope, move || {
                        let t = Instant::now();
                        let result = executor.execute(ctx, &job, cancel);
                        let _ = tx.send(Finished {
                            name: job.name,
                            result,
                            duration_ms: t.elapsed().as_millis() as u64,
                        });
                    })
                    .map_err(|e| anyhow::anyhow!("starting a step thread: {e}"))?;
            }
            if run.running == 0 {
                return Ok(());
            }
            let f = rx.recv().expect("a running step always reports");
            run.finish(f)?;
        }
    })?;

    let steps_out = run.step_results();
    update_lock(ctx, &run.state, &run.parts_of)?;
    ctx.store.memo.save()?;
    // Uploads finish before the run reports: a CI job that ends must have published.
    let remote = ctx.remote.as_ref().map(|r| {
        let report = r.finish();
        (r.required_and_failed(&report), report)
    });
    let remote_failed = remote.as_ref().and_then(|(f, _)| f.clone());
    if let Some(why) = &remote_failed {
        progress::println_err(&format!("  FAILED  --remote-required: {why}"));
    }
    let interrupted = cancel.load(Ordering::Relaxed);
    let required_missing = steps_out.iter().any(|r| {
        r.status == Status::Unavailable && ctx.manifest.step(&r.step).spec.params.kind().required()
    });
    let ok = !interrupted
        && !required_missing
        && remote_failed.is_none()
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
        source: sources_line(ctx, &source),
        toolchain: ctx.pins.id(),
        duration_ms: t0.elapsed().as_millis() as u64,
        steps: steps_out,
        remote: remote.map(|(_, r)| r),
        warnings: vec![],
    })
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
                key: p.key(),
                parts: p.clone(),
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

/// The run's source model as the summary names it; a pack's models each by name.
fn sources_line(ctx: &BuildContext, first: &crate::context::Source) -> String {
    let one = |s: &crate::context::Source| format!("{} (blake3 {})", s.label, &s.digest[..12]);
    if ctx.manifest.models.is_empty() {
        return one(first);
    }
    ctx.manifest
        .models
        .keys()
        .map(|m| match ctx.source(Some(m)) {
            Ok(s) => format!("{m}: {}", one(&s)),
            Err(e) => format!("{m}: {e}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
