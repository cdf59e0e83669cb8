//! The Slurm executor: one batch job per step that missed the cache.
//!
//! The step's inputs and a self-contained spec go to the remote cache first (a cluster needs
//! no shared filesystem); `sbatch` submits a job that runs `facebuild exec-step <spec>` on a
//! node that matches the step's `runs_on` (partition, constraint = node Features, gres). The
//! job is followed with `squeue` (one call answers for every job the run follows), then
//! `scontrol show job` for its final state (Debian's Slurm keeps no accounting database, so
//! no `sacct`), at a polling interval that grows to a bound. Its result is the action record the worker pushed: nothing is downloaded until
//! something needs it. Ctrl-C or SIGTERM cancels the job (`scancel`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::worker::{WorkerSpec, prepare};
use super::{Executed, Executor, Job};
use crate::context::BuildContext;
use crate::error::{Error, Result};
use crate::progress;

/// The longest any one Slurm command may take (sbatch retries an absent controller for ~9 s).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Polling starts here and grows by half each time, to [`poll_max`].
const POLL_START: Duration = Duration::from_millis(200);
/// Consecutive failed polls before the job is given up (and cancelled).
const MAX_POLL_FAILURES: u32 = 5;
/// Lines of a failed job's log shown in the step's error.
const LOG_TAIL: usize = 25;

/// Submits steps to Slurm. One per run: the controller is checked once, and one `squeue`
/// answers for every job the run follows.
pub(crate) struct Slurm {
    preflight: OnceLock<std::result::Result<(), String>>,
    queue: Mutex<Queue>,
}

/// The jobs being followed, and what the last `squeue` said of them.
#[derive(Default)]
struct Queue {
    following: BTreeSet<String>,
    polled: BTreeSet<String>,
    at: Option<Instant>,
    /// Job id -> `state|reason|node`.
    lines: BTreeMap<String, String>,
}

/// A `squeue` answer younger than this serves every follower that asks.
const SHARED_POLL: Duration = Duration::from_millis(100);

/// What a command printed, or why it did not finish.
struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Output {
    /// stderr, else stdout, on one line.
    fn message(&self) -> String {
        let s = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        s.trim().replace('\n', " | ")
    }
}

/// Run a Slurm command with a time limit; Err when it cannot start or overruns.
fn run(
    program: &str,
    args: &[String],
    stdin: Option<&str>,
    env: &[(&str, &str)],
) -> std::result::Result<Output, String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("`{program}` is not on PATH: Slurm's client commands (Debian: slurm-client) are needed to run steps on Slurm")
        } else {
            format!("cannot start `{program}`: {e}")
        }
    })?;
    if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
        let _ = w.write_all(text.as_bytes());
    }
    let read = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = read(child.stdout.take().map(|r| Box::new(r) as _));
    let err = read(child.stderr.take().map(|r| Box::new(r) as _));
    let t0 = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if t0.elapsed() > COMMAND_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`{program}` did not answer within {} s (is slurmctld up? SLURM_CONF={})",
                    COMMAND_TIMEOUT.as_secs(),
                    std::env::var("SLURM_CONF").unwrap_or_else(|_| "default".into())
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("`{program}`: {e}")),
        }
    };
    Ok(Output {
        ok: status.success(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// A job's state as `scontrol show job -o` gives it.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct JobInfo {
    pub state: String,
    pub reason: String,
    pub exit_code: String,
    pub node: String,
}

/// Parse one line of `scontrol show job -o` (space-separated `Key=Value`s).
pub(crate) fn parse_scontrol(line: &str) -> Option<JobInfo> {
    let mut info = JobInfo::default();
    for tok in line.split_whitespace() {
        let Some((k, v)) = tok.split_once('=') else {
            continue;
        };
        match k {
            "JobState" => info.state = v.to_string(),
            "Reason" => info.reason = v.to_string(),
            "ExitCode" => info.exit_code = v.to_string(),
            "NodeList" if v != "(null)" => info.node = v.to_string(),
            _ => {}
        }
    }
    (!info.state.is_empty()).then_some(info)
}

/// `squeue -o %i|%T|%r|%N` lines: job id -> `state|reason|node`.
pub(crate) fn parse_squeue(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| {
            let (id, rest) = l.trim().split_once('|')?;
            Some((id.to_string(), rest.to_string()))
        })
        .collect()
}

/// Whether a job in this state has not ended yet.
pub(crate) fn active(state: &str) -> bool {
    matches!(
        state,
        "PENDING"
            | "RUNNING"
            | "CONFIGURING"
            | "COMPLETING"
            | "SUSPENDED"
            | "REQUEUED"
            | "REQUEUE_HOLD"
            | "REQUEUE_FED"
            | "RESIZING"
            | "SIGNALING"
            | "STAGE_OUT"
            | "STOPPED"
    )
}

/// What a job's end means for its step, in words; None for success.
pub(crate) fn failure(info: &JobInfo) -> Option<String> {
    let what = match info.state.as_str() {
        "COMPLETED" => return None,
        "FAILED" => "failed (the worker exited non-zero)",
        "TIMEOUT" => "ran out of time (its `runs_on.time` limit)",
        "CANCELLED" => "was cancelled (scancel, or an administrator)",
        "OUT_OF_MEMORY" => "ran out of memory",
        "NODE_FAIL" => "lost its node",
        "PREEMPTED" => "was preempted",
        "BOOT_FAIL" => "could not boot its node",
        "DEADLINE" => "missed its deadline",
        _ => "ended",
    };
    let mut s = format!("{} {what}", info.state);
    let mut detail = Vec::new();
    if !info.reason.is_empty() && info.reason != "None" {
        detail.push(format!("reason {}", info.reason));
    }
    if !info.exit_code.is_empty() && info.exit_code != "0:0" {
        detail.push(format!("exit code {}", info.exit_code));
    }
    if !info.node.is_empty() {
        detail.push(format!("on {}", info.node));
    }
    if !detail.is_empty() {
        s.push_str(&format!(" ({})", detail.join(", ")));
    }
    Some(s)
}

/// The last `n` lines of a log, indented.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Slurm {
    pub(crate) fn new() -> Slurm {
        Slurm {
            preflight: OnceLock::new(),
            queue: Mutex::new(Queue::default()),
        }
    }

    /// Follow `id` (or stop following it) in the shared `squeue`.
    fn watch(&self, id: &str, on: bool) {
        if let Ok(mut q) = self.queue.lock() {
            if on {
                q.following.insert(id.to_string());
            } else {
                q.following.remove(id);
            }
        }
    }

    /// What `squeue` says of `id` (`state|reason|node`), or None when it no longer lists
    /// it. One `squeue -j <every followed id>` serves every follower for [`SHARED_POLL`].
    fn queue_line(&self, id: &str) -> std::result::Result<Option<String>, String> {
        let mut q = self
            .queue
            .lock()
            .map_err(|_| "the job queue state is poisoned".to_string())?;
        let fresh = q.at.is_some_and(|t| t.elapsed() < SHARED_POLL) && q.polled.contains(id);
        if !fresh {
            let mut ids = q.following.clone();
            ids.insert(id.to_string());
            let list = ids.iter().cloned().collect::<Vec<_>>().join(",");
            let o = run(
                "squeue",
                &[
                    "-h".into(),
                    "-j".into(),
                    list,
                    "-o".into(),
                    "%i|%T|%r|%N".into(),
                ],
                None,
                &[],
            )?;
            // A job purged from the controller's memory is "invalid": it has ended, and the
            // others are still listed.
            if !o.ok && !o.stderr.contains("Invalid job id") {
                return Err(o.message());
            }
            q.lines = parse_squeue(&o.stdout);
            q.polled = ids;
            q.at = Some(Instant::now());
        }
        Ok(q.lines.get(id).cloned())
    }

    /// Is the controller there? `scontrol ping` answers at once either way, where sbatch
    /// would retry for seconds and squeue for longer.
    fn preflight(&self) -> std::result::Result<(), String> {
        self.preflight
            .get_or_init(|| {
                let o = run("scontrol", &["ping".into()], None, &[])?;
                if o.ok && o.stdout.contains("UP") {
                    Ok(())
                } else {
                    Err(format!(
                        "the Slurm controller is not reachable: `scontrol ping` says: {}",
                        o.message()
                    ))
                }
            })
            .clone()
    }

    /// `scancel` a job, best effort (the run is ending anyway).
    fn cancel_job(id: &str) {
        match run("scancel", &[id.to_string()], None, &[]) {
            Ok(o) if o.ok => progress::println_err(&format!("  scancel job {id}")),
            Ok(o) => tracing::warn!("scancel {id}: {}", o.message()),
            Err(e) => tracing::warn!("scancel {id}: {e}"),
        }
    }

    /// Follow job `id` until it ends: its final state. `Ok(None)` when the run was
    /// interrupted (the job is cancelled).
    fn follow(
        &self,
        id: &str,
        pb: &indicatif::ProgressBar,
        cancel: &AtomicBool,
        poll_max: Duration,
    ) -> std::result::Result<Option<JobInfo>, String> {
        let mut delay = POLL_START;
        let mut failures = 0;
        let mut last;
        loop {
            // Sleep in slices, so Ctrl-C is seen within 50 ms.
            let until = Instant::now() + delay;
            while Instant::now() < until {
                if cancel.load(Ordering::Relaxed) {
                    Self::cancel_job(id);
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(50).min(delay));
            }
            delay = (delay * 3 / 2).min(poll_max);
            let listed = match self.queue_line(id) {
                Ok(l) => l,
                Err(e) => {
                    failures += 1;
                    last = e;
                    if failures >= MAX_POLL_FAILURES {
                        break;
                    }
                    continue;
                }
            };
            if let Some(line) = listed {
                let mut f = line.split('|');
                let state = f.next().unwrap_or("").to_string();
                let reason = f.next().unwrap_or("");
                let node = f.next().unwrap_or("");
                if active(&state) {
                    failures = 0;
                    let where_ = if node.is_empty() {
                        format!("({reason})")
                    } else {
                        format!("on {node}")
                    };
                    pb.set_message(format!("slurm job {id}: {state} {where_}"));
                    continue;
                }
            }
            // Not listed any more, or in a final state: scontrol has the details.
            match run(
                "scontrol",
                &["show".into(), "job".into(), "-o".into(), id.into()],
                None,
                &[],
            ) {
                Ok(o) if o.ok => match o.stdout.lines().find_map(parse_scontrol) {
                    Some(info) if active(&info.state) => continue,
                    Some(info) => return Ok(Some(info)),
                    None => {
                        failures += 1;
                        last = format!("unreadable `scontrol show job`: {}", o.message());
                    }
                },
                Ok(o) if o.stderr.contains("Invalid job id") => {
                    return Ok(Some(JobInfo {
                        state: "UNKNOWN".into(),
                        reason: "purged from the controller before its end was seen".into(),
                        ..Default::default()
                    }));
                }
                Ok(o) => {
                    failures += 1;
                    last = o.message();
                }
                Err(e) => {
                    failures += 1;
                    last = e;
                }
            }
            if failures >= MAX_POLL_FAILURES {
                break;
            }
        }
        Self::cancel_job(id);
        Err(format!(
            "lost track of Slurm job {id} after {MAX_POLL_FAILURES} failed polls (last: {last}); it was cancelled"
        ))
    }
}

impl Executor for Slurm {
    fn execute(&self, ctx: &BuildContext, job: &Job, cancel: &AtomicBool) -> Result<Executed> {
        let name = job.name.as_str();
        let placement = ctx.placement(ctx.manifest.step(name));
        let fail = |message: String, hint: Option<String>| Error::Step {
            step: name.to_string(),
            message,
            hint,
        };
        let remote = job_remote(ctx, &fail)?;
        self.preflight().map_err(|why| {
            fail(
                why,
                Some(format!(
                    "start slurmctld (and slurmd on the nodes), or check SLURM_CONF ({}); `--executor local` runs every step here",
                    std::env::var("SLURM_CONF").unwrap_or_else(|_| "unset: /etc/slurm/slurm.conf".into())
                )),
            )
        })?;
        let pb = progress::spinner("pushing inputs to the remote cache");
        pb.set_prefix(name.to_string());
        let spec_digest = push_spec(ctx, job, remote, &fail)?;
        let key = job.parts.key();
        let workdir = placement
            .runs_on
            .workdir
            .as_ref()
            .map(|w| w.to_string())
            .unwrap_or_else(|| "/tmp".into());
        pb.set_message("sbatch");
        let id = submit(ctx, job, remote, &spec_digest, &workdir, &fail)?;
        progress::println_err(&format!(
            "  slurm   {name}: job {id} submitted ({})",
            placement.describe()
        ));
        pb.set_message(format!("slurm job {id}: submitted"));
        self.watch(&id, true);
        let info = self.follow(&id, &pb, cancel, ctx.slurm_poll_max);
        self.watch(&id, false);
        let info = info.map_err(|e| fail(e, None))?;
        pb.finish_and_clear();
        let Some(info) = info else {
            return Err(Error::Interrupted);
        };
        let (log_file, log_note) = job_log(ctx, name, remote, (&spec_digest, &id), &info, &workdir);
        if let Some(why) = failure(&info) {
            return Err(fail(format!("Slurm job {id} {why}{log_note}"), None));
        }
        let Some(rec) = remote.lookup_built(&key, Some(&job.parts.kind)) else {
            return Err(fail(
                format!(
                    "Slurm job {id} completed, but no result is on the remote under key {}{log_note}",
                    &key[..12]
                ),
                None,
            ));
        };
        progress::println_err(&format!(
            "  slurm   {name}: job {id} COMPLETED on {}{}",
            if info.node.is_empty() {
                "?"
            } else {
                &info.node
            },
            log_file.map(|p| format!(", log {p}")).unwrap_or_default()
        ));
        Ok(Executed {
            outputs: rec.outputs.clone(),
            summary: rec.summary.clone(),
            by_other_run: false,
            remote_record: Some(Box::new(rec)),
        })
    }
}

/// The remote a Slurm job reads its inputs from and pushes its result to: it must be there,
/// reachable and writable.
fn job_remote<'a>(
    ctx: &'a BuildContext,
    fail: &dyn Fn(String, Option<String>) -> Error,
) -> Result<&'a crate::cache::remote::Remote> {
    Ok(match &ctx.remote {
        Some(r) if r.writable() && r.unavailable().is_none() => r,
        Some(r) if !r.writable() => {
            return Err(fail(
                format!("runs on Slurm, but the remote cache {} is read-only: the job pushes its result there", r.display()),
                Some("drop --remote-read-only (and FACEBUILD_REMOTE_READ_ONLY), or run it here with `--executor local`".into()),
            ));
        }
        Some(r) => {
            return Err(fail(
                format!(
                    "runs on Slurm, but the remote cache {} is unavailable ({}): jobs get their inputs from it and push their results to it",
                    r.display(),
                    r.unavailable().unwrap_or_default()
                ),
                None,
            ));
        }
        None => {
            return Err(fail(
                "runs on Slurm, which needs a writable remote cache: jobs get their inputs from it and push their results to it (no shared filesystem is assumed)".into(),
                Some("pass --remote URL (or set FACEBUILD_REMOTE): s3://, http(s):// or file:// on a shared filesystem; or run everything here with `--executor local`".into()),
            ));
        }
    })
}

/// Push the job's inputs and its spec to the remote; the spec's digest names the job.
fn push_spec(
    ctx: &BuildContext,
    job: &Job,
    remote: &crate::cache::remote::Remote,
    fail: &dyn Fn(String, Option<String>) -> Error,
) -> Result<String> {
    let (spec, blobs) = prepare(ctx, job)?;
    remote.ensure_blobs(&blobs).map_err(|e| {
        fail(
            format!("could not push its inputs to the remote cache: {e}"),
            None,
        )
    })?;
    let spec_bytes = serde_json::to_vec(&spec).map_err(anyhow::Error::from)?;
    let spec_digest = blake3::hash(&spec_bytes).to_hex().to_string();
    remote
        .put_bytes(&format!("cas/{spec_digest}"), spec_bytes)
        .map_err(|e| {
            fail(
                format!("could not push its job spec to the remote cache: {e}"),
                None,
            )
        })?;
    Ok(spec_digest)
}

/// `sbatch` the job's worker script; the job id Slurm gave it.
fn submit(
    ctx: &BuildContext,
    job: &Job,
    remote: &crate::cache::remote::Remote,
    spec_digest: &str,
    workdir: &str,
    fail: &dyn Fn(String, Option<String>) -> Error,
) -> Result<String> {
    let name = job.name.as_str();
    let step = ctx.manifest.step(name);
    let placement = ctx.placement(step);
    let key = job.parts.key();
    let r = &placement.runs_on;
    let mut args = vec![
        "--parsable".to_string(),
        format!(
            "--job-name=facebuild:{}:{name}:{}",
            ctx.manifest.name,
            &key[..12]
        ),
        format!("--chdir={workdir}"),
        "--output=facebuild-%j.out".to_string(),
        // Explicit, over a site's SBATCH_EXPORT: the job needs the remote's settings.
        "--export=ALL".to_string(),
    ];
    for (flag, v) in r.slurm_options() {
        if let Some(v) = v {
            args.push(format!("--{flag}={v}"));
        }
    }
    // A benchmark's figures need the node to itself.
    if step.spec.params.kind().exclusive() {
        args.push("--exclusive".into());
    }
    let script = format!(
        "#!/bin/sh\n# facebuild: pipeline `{}`, step `{name}`, key {key}\nexec \"${{FACEBUILD_WORKER_BIN:-facebuild}}\" exec-step {spec_digest}\n",
        ctx.manifest.name
    );
    // The job inherits this environment (--export=ALL), with the remote.
    let out = run(
        "sbatch",
        &args,
        Some(&script),
        &[("FACEBUILD_REMOTE", remote.url())],
    )
    .map_err(|e| fail(e, None))?;
    if !out.ok {
        return Err(fail(
            format!("sbatch refused the job: {}", out.message()),
            Some(format!(
                "check the step's `runs_on` ({}): a constraint must be a node Feature and a partition must exist (`sinfo -o '%P %N %f %G'` lists them)",
                placement.describe()
            )),
        ));
    }
    let id = out
        .stdout
        .trim()
        .split(';')
        .next()
        .unwrap_or("")
        .to_string();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(fail(
            format!("sbatch printed no job id: {}", out.message()),
            None,
        ));
    }
    Ok(id)
}

/// The job's log, pushed by the worker, saved as the step's log: where it was saved, and the
/// words an error adds about it.
fn job_log(
    ctx: &BuildContext,
    name: &str,
    remote: &crate::cache::remote::Remote,
    (spec_digest, id): (&str, &str),
    info: &JobInfo,
    workdir: &str,
) -> (Option<camino::Utf8PathBuf>, String) {
    // The job's log, pushed by the worker, becomes the step's log.
    let log = remote
        .get_bytes(&WorkerSpec::log_path(spec_digest, id))
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let log_file = ctx.step_out_dir(name).ok().and_then(|d| {
        let text = log.as_deref()?;
        std::fs::create_dir_all(&d).ok()?;
        let p = d.join(format!("slurm-{id}.log"));
        std::fs::write(&p, text).ok()?;
        Some(p)
    });
    let log_note = match (&log, &log_file) {
        (Some(text), Some(p)) => format!("\n  log {p}, last lines:\n{}", tail(text, LOG_TAIL)),
        (Some(text), None) => format!("\n  log, last lines:\n{}", tail(text, LOG_TAIL)),
        (None, _) => format!(
            "\n  no log on the remote: the job never started facebuild (or could not push its log); Slurm's own output is {workdir}/facebuild-{id}.out on {}",
            if info.node.is_empty() {
                "its node"
            } else {
                &info.node
            }
        ),
    };
    (log_file, log_note)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scontrol_lines_parse() {
        let line = "JobId=7 JobName=facebuild:p:s:abc UserId=root(0) JobState=CANCELLED Reason=None Dependency=(null) ExitCode=0:15 NodeList=vm BatchHost=vm";
        let i = parse_scontrol(line).unwrap();
        assert_eq!(i.state, "CANCELLED");
        assert_eq!(i.exit_code, "0:15");
        assert_eq!(i.node, "vm");
        assert!(!active(&i.state));
        let why = failure(&i).unwrap();
        assert!(why.starts_with("CANCELLED was cancelled"), "{why}");
        assert!(
            why.contains("exit code 0:15") && why.contains("on vm"),
            "{why}"
        );
        assert_eq!(parse_scontrol("nothing here"), None);
        let pending =
            parse_scontrol("JobId=8 JobState=PENDING Reason=Resources NodeList=(null)").unwrap();
        assert!(active(&pending.state));
        assert_eq!(pending.node, "");
        assert!(
            failure(&JobInfo {
                state: "COMPLETED".into(),
                ..Default::default()
            })
            .is_none()
        );
    }

    #[test]
    fn squeue_lines_parse_by_job() {
        let m = parse_squeue("12|RUNNING|None|vm\n13|PENDING|Resources|\n\n");
        assert_eq!(m["12"], "RUNNING|None|vm");
        assert_eq!(m["13"], "PENDING|Resources|");
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn log_tails_keep_the_last_lines() {
        let log: String = (0..40).map(|i| format!("line {i}\n")).collect();
        let t = tail(&log, 3);
        assert_eq!(t, "    | line 37\n    | line 38\n    | line 39");
    }
}
