//! The command line. Parsing and rendering only: the work is in the library modules.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use camino::{Utf8Path, Utf8PathBuf};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::cache::remote::Remote;
use crate::cache::{Lock, Store};
use crate::context::BuildContext;
use crate::error::{Error, Result};
use crate::graph::plan::{Decision, plan};
use crate::manifest::Manifest;
use crate::scheduler::{self, RunReport, Status};
use crate::settings::{ContextSettings, Executor, Materialize, RemoteFlags, RunFlags, RunSettings};
use crate::toolchain::{Pins, Toolchain};
use crate::util::human_bytes;

#[derive(Parser)]
#[command(
    name = "facebuild",
    version,
    about = "Build, validate and gate face-model deployment artifacts from YAML pipelines"
)]
pub(crate) struct Cli {
    /// Cache directory (default: ./cache, or $FACEBUILD_CACHE)
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<Utf8PathBuf>,
    /// More log output (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline: every step not already cached, in dependency order
    Run {
        #[command(flatten)]
        pipeline: PipelineArg,
        #[command(flatten)]
        sel: Selection,
        /// Steps to run at once
        #[arg(long, short, default_value_t = default_jobs())]
        jobs: usize,
        /// After a failure, keep running every step that does not depend on it
        #[arg(long)]
        keep_going: bool,
        /// Rebuild every selected step, ignoring cached results
        #[arg(long)]
        no_cache: bool,
        #[command(flatten)]
        remote: RemoteArgs,
        /// Which outputs to copy to out/: every step's, only leaf steps', or none (a remote
        /// hit is then fetched only when a step that runs needs it)
        #[arg(long, value_enum, default_value_t = Materialize::All)]
        materialize: Materialize,
        /// Where steps run: as the manifest's `runs_on` says (auto), or all on this machine
        /// (local; keys are unchanged, so results are shared either way)
        #[arg(long, value_enum, default_value_t = Executor::Auto)]
        executor: Executor,
        #[arg(long)]
        json: bool,
    },
    /// Run one step as a worker (what a Slurm job runs; see docs/distributed.md): fetch the
    /// spec SPEC (a blake3 digest) and its inputs from the remote cache (FACEBUILD_REMOTE),
    /// check the key, run the step in a new folder under the current one, push the result
    /// and the log
    ExecStep {
        /// The spec's blake3 digest on the remote
        spec: String,
        /// (internal) do the work in this folder; the parent process records the log
        #[arg(long, hide = true)]
        child_dir: Option<Utf8PathBuf>,
    },
    /// Show the order and, for each step, whether it is cached or will run and why
    Plan {
        #[command(flatten)]
        pipeline: PipelineArg,
        #[command(flatten)]
        sel: Selection,
        #[arg(long)]
        json: bool,
    },
    /// Show each step's state against the lockfile and the cache
    Status {
        #[command(flatten)]
        pipeline: PipelineArg,
        #[arg(long)]
        json: bool,
    },
    /// Write a commented pipeline for an ONNX model (input, dynamic dims, task guessed from
    /// its outputs, InsightFace's preprocessing, the usual steps), or a built-in pipeline
    Init {
        /// The ONNX model to write a pipeline for
        #[arg(required_unless_present = "builtin", conflicts_with = "builtin")]
        model: Option<Utf8PathBuf>,
        /// Write this built-in pipeline instead: recognition or detection
        #[arg(long, value_name = "NAME")]
        builtin: Option<String>,
        /// Where to write it (default: pipelines/<name>.yaml; `-` for standard output)
        #[arg(short, long)]
        output: Option<Utf8PathBuf>,
        /// Replace an existing file
        #[arg(long)]
        force: bool,
    },
    /// Inspect and maintain the cache
    #[command(subcommand)]
    Cache(CacheCmd),
    /// Show or install the Python toolchain (onnx, onnxruntime, onnxsim, openvino, nncf)
    #[command(subcommand)]
    Toolchain(ToolchainCmd),
    /// List releases, or roll a pipeline back to an earlier release
    #[command(subcommand)]
    Release(ReleaseCmd),
    /// Measure one benchmark target in this process (started by the `benchmark` step)
    #[command(hide = true)]
    BenchTarget { spec: Utf8PathBuf },
    /// Write a built-in model to a file (for benchmarks and experiments)
    Builtin {
        /// iresnet-mini, iresnet18 or iresnet50
        name: String,
        #[arg(short, long)]
        output: Utf8PathBuf,
    },
}

/// Which pipeline: a manifest file, or one built into the binary (no checkout needed).
#[derive(Args)]
struct PipelineArg {
    /// The pipeline's manifest, e.g. pipelines/recognition.yaml
    #[arg(required_unless_present = "builtin", conflicts_with = "builtin")]
    file: Option<Utf8PathBuf>,
    /// A built-in pipeline instead of a file: recognition or detection (read as
    /// ./<name>.yaml: outputs in out/<name>, lockfile <name>.lock)
    #[arg(long, value_name = "NAME")]
    builtin: Option<String>,
}

impl PipelineArg {
    fn load(&self) -> Result<Manifest> {
        match (&self.file, &self.builtin) {
            (_, Some(name)) => Manifest::builtin(name),
            (Some(f), None) => Manifest::load(f),
            (None, None) => Err(Error::usage("name a manifest file or --builtin NAME")),
        }
    }
}

/// The remote cache of a run (see docs/remote-cache.md).
#[derive(Args, Clone)]
struct RemoteArgs {
    /// Shared cache: s3://bucket/prefix, http(s)://host/prefix or file:///path (default:
    /// $FACEBUILD_REMOTE)
    #[arg(long, value_name = "URL")]
    remote: Option<String>,
    /// Read the remote, never write it (untrusted builds such as fork pull requests)
    #[arg(long)]
    remote_read_only: bool,
    /// Fail the run when the remote is unavailable or an upload fails
    #[arg(long)]
    remote_required: bool,
}

impl RemoteArgs {
    fn flags(&self) -> RemoteFlags {
        RemoteFlags {
            url: self.remote.clone(),
            read_only: self.remote_read_only,
            required: self.remote_required,
        }
    }

    /// The remote these flags and the environment name, opened.
    fn open(&self) -> Result<Option<Remote>> {
        crate::settings::remote(&self.flags())?
            .map(Remote::open)
            .transpose()
    }
}

#[derive(Args)]
struct Selection {
    /// Only this step and what it needs (repeatable)
    #[arg(long = "target", short = 't', value_name = "STEP")]
    targets: Vec<String>,
}

#[derive(Subcommand)]
enum CacheCmd {
    /// List cached step results
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every blob and report corrupt ones
    Verify {
        /// Remove corrupt blobs and the records that use them, so the next run rebuilds them
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete everything the given lockfiles (default: pipelines/*.lock and ./*.lock) do not reference
    Gc {
        /// Lockfiles or manifests whose results to keep
        files: Vec<Utf8PathBuf>,
        #[arg(long)]
        dry_run: bool,
        /// Collect the remote cache instead (URL, or FACEBUILD_REMOTE when none is given):
        /// keep what the lockfiles reference and whatever is younger than --keep-days
        #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = "")]
        remote: Option<String>,
        /// With --remote: also keep objects younger than this many days
        #[arg(long, default_value_t = 7)]
        keep_days: u64,
    },
    /// Upload every result the given lockfiles (default: pipelines/*.lock, ./*.lock)
    /// reference to the remote, to seed it from this cache
    Push {
        files: Vec<Utf8PathBuf>,
        #[command(flatten)]
        remote: RemoteArgs,
        #[arg(long)]
        json: bool,
    },
    /// Make an ed25519 key pair for signing remote records
    Keygen,
}

#[derive(Subcommand)]
enum ReleaseCmd {
    /// Every pipeline's releases, oldest first, and which is current
    List {
        /// The releases folder (default: $FACEBUILD_RELEASES, else ./releases)
        #[arg(long)]
        dir: Option<Utf8PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Make an earlier release current again, byte for byte (sha256 checked)
    Rollback {
        pipeline: String,
        version: String,
        #[arg(long)]
        dir: Option<Utf8PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ToolchainCmd {
    /// Versions and paths of the toolchain a manifest uses (default pins without one)
    Show {
        file: Option<Utf8PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Install the toolchain now (run does this on first use)
    Install {
        file: Option<Utf8PathBuf>,
        /// Remove and reinstall
        #[arg(long)]
        force: bool,
    },
    /// Hash-lock every Python package of a manifest's pins with uv, into
    /// `<manifest>.toolchain.lock` beside it (commit it); without a manifest, print the lock
    /// of the default pins
    Lock {
        file: Option<Utf8PathBuf>,
        /// Write here instead
        #[arg(short, long)]
        output: Option<Utf8PathBuf>,
    },
}

/// `facebuild init`: write the manifest, say what was guessed and what to fill in.
fn init(
    model: Option<&Utf8Path>,
    builtin: Option<&str>,
    output: Option<Utf8PathBuf>,
    force: bool,
    cache_dir: &Utf8Path,
) -> Result<i32> {
    use crate::manifest::init;
    let cwd = crate::util::absolute(Utf8Path::new("."));
    let (name, text, summary) = match (model, builtin) {
        (_, Some(b)) => (
            b.to_string(),
            init::builtin_pipeline(b)?.to_string(),
            format!("the built-in `{b}` pipeline (built-in model and data; runs as it is)"),
        ),
        (Some(m), None) => {
            let proto = crate::onnx::inspect::load_model(m)?;
            let mut info = crate::onnx::inspect::inspect(&proto, m)?;
            let sized = size_symbolic_outputs(m, &mut info, cache_dir);
            let first: Vec<(String, String)> = proto
                .graph
                .as_ref()
                .map(|g| {
                    g.node
                        .iter()
                        .take(8)
                        .map(|n| (n.name.clone(), n.op_type.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let mut g = init::guess(m, &info, &first)?;
            g.notes.extend(sized);
            let name = init::pipeline_name(m);
            let out_dir = match &output {
                Some(o) if o.as_str() != "-" => crate::util::absolute(o)
                    .parent()
                    .map(Utf8Path::to_owned)
                    .unwrap_or_else(|| cwd.clone()),
                Some(_) => cwd.clone(),
                None => cwd.join("pipelines"),
            };
            let rel = init::relative_to(&crate::util::absolute(m), &out_dir);
            let text = init::manifest_text(&name, &rel, m.file_name().unwrap_or("the model"), &g);
            let summary = format!(
                "task `{}` ({}){}",
                g.task(),
                g.layout_of_outputs.describe(),
                if g.dims.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", dynamic {}",
                        g.dims
                            .iter()
                            .map(|(n, _)| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            );
            (name, text, summary)
        }
        (None, None) => return Err(Error::usage("name an ONNX model or --builtin NAME")),
    };
    let out = output.unwrap_or_else(|| Utf8PathBuf::from(format!("pipelines/{name}.yaml")));
    if out.as_str() == "-" {
        print!("{text}");
        return Ok(0);
    }
    if out.exists() && !force {
        return Err(Error::usage(format!("{out} already exists"))
            .with_hint("pass --force to replace it, or -o to write elsewhere"));
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::write(&out, &text).map_err(|e| Error::io(&out, e))?;
    let placeholders = text.matches("<REPLACE: ").count();
    println!("wrote {out}: {summary}");
    if placeholders > 0 {
        println!(
            "next: fill in the {placeholders} dataset path(s) marked REPLACE, review the lines marked CHECK, then `facebuild plan {out}`"
        );
    } else {
        println!("next: `facebuild run {out}`");
    }
    Ok(0)
}

fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Parse the command line, run the command, and return the process exit code (0 ok, 1 a
/// build or gate failed, 2 a usage or manifest error).
pub fn main() -> i32 {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("FACEBUILD_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!("facebuild={level},ort=error"))
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();

    let cancel = Arc::new(AtomicBool::new(false));
    {
        let c = cancel.clone();
        // First Ctrl-C: stop launching steps and finish cleanly. Second: leave now.
        let _ = ctrlc::set_handler(move || {
            if c.swap(true, Ordering::SeqCst) {
                eprintln!("\nfacebuild: interrupted again, exiting");
                std::process::exit(130);
            }
            eprintln!(
                "\nfacebuild: interrupt received; finishing running steps (Ctrl-C again to exit now)"
            );
        });
    }
    match dispatch(cli, &cancel) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

fn dispatch(cli: Cli, cancel: &AtomicBool) -> Result<i32> {
    // Commands that only look open their context with these; `run` resolves its own.
    let local = ContextSettings::local(cli.cache_dir.as_deref());
    let cache_dir = local.cache_dir.clone();
    match cli.command {
        Command::Run {
            pipeline,
            sel,
            jobs,
            keep_going,
            no_cache,
            remote,
            materialize,
            executor,
            json,
        } => {
            let settings = RunSettings::resolve(RunFlags {
                cache_dir: cli.cache_dir,
                targets: sel.targets,
                jobs,
                keep_going,
                no_cache,
                remote: remote.flags(),
                materialize,
                executor,
            })?;
            let mut ctx = BuildContext::open(pipeline.load()?, &settings.context)?;
            let report = scheduler::run(&mut ctx, &settings.options, cancel)?;
            let written = crate::report::run::write(&report, &ctx);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).map_err(anyhow::Error::from)?
                );
            } else {
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
        Command::Plan {
            pipeline,
            sel,
            json,
        } => {
            let ctx = BuildContext::open(pipeline.load()?, &local)?;
            let selected = ctx.dag.select(&sel.targets)?;
            let p = plan(&ctx, &selected, false)?;
            if json {
                let v = crate::graph::plan::Plan {
                    pipeline: ctx.manifest.name.clone(),
                    toolchain: ctx.pins.id(),
                    toolchain_installed: ctx.toolchain.is_some(),
                    steps: p,
                };
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).map_err(anyhow::Error::from)?
                );
            } else {
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
        Command::ExecStep { spec, child_dir } => match child_dir {
            Some(dir) => crate::executor::worker::run_child(&spec, &dir, cancel),
            None => crate::executor::worker::exec_step(&spec, cancel),
        },
        Command::Status { pipeline, json } => status(&pipeline.load()?, &local, json),
        Command::Init {
            model,
            builtin,
            output,
            force,
        } => init(
            model.as_deref(),
            builtin.as_deref(),
            output,
            force,
            &cache_dir,
        ),
        Command::Cache(c) => cache_cmd(c, &cache_dir),
        Command::Toolchain(t) => toolchain_cmd(t, &cache_dir),
        Command::Release(ReleaseCmd::List { dir, json }) => {
            let root = crate::steps::release::releases_root(dir.as_deref());
            let all = crate::steps::release::list(&root)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&all).map_err(anyhow::Error::from)?
                );
            } else if all.is_empty() {
                println!("no releases in {root}");
            } else {
                println!("releases in {root}:");
                for r in &all {
                    println!(
                        "  {} {:<16} {} {}",
                        if r.current { "*" } else { " " },
                        r.pipeline,
                        r.version,
                        r.artifacts.join(", ")
                    );
                }
                println!("(* = current)");
            }
            Ok(0)
        }
        Command::Release(ReleaseCmd::Rollback {
            pipeline,
            version,
            dir,
            json,
        }) => {
            let root = crate::steps::release::releases_root(dir.as_deref());
            let r = crate::steps::release::rollback(&root, &pipeline, &version)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&r).map_err(anyhow::Error::from)?
                );
            } else {
                println!(
                    "{pipeline}: current is now {version} (was {}); {} files verified against its SHA256SUMS in {}",
                    r.previous_current.as_deref().unwrap_or("none"),
                    r.verified_files,
                    r.current_dir
                );
            }
            Ok(0)
        }
        Command::BenchTarget { spec } => {
            let bytes = std::fs::read(&spec).map_err(|e| Error::io(&spec, e))?;
            let spec: crate::runtime::bench::BenchSpec = serde_json::from_slice(&bytes)
                .map_err(|e| Error::usage(format!("bench-target: {e}")))?;
            let v = crate::runtime::bench::run_child(&spec)?;
            println!(
                "{}",
                serde_json::to_string(&v).map_err(anyhow::Error::from)?
            );
            Ok(0)
        }
        Command::Builtin { name, output } => {
            let b = crate::onnx::builtin::BuiltinModel::from_name(&name).ok_or_else(|| {
                Error::usage(format!("unknown built-in model `{name}`")).with_hint(format!(
                    "choose one of {}",
                    crate::onnx::builtin::BuiltinModel::names().join(", ")
                ))
            })?;
            let bytes = b.bytes();
            crate::cache::store::write_atomic(&output, &bytes)?;
            println!(
                "wrote {} ({}) to {output}",
                b.name(),
                human_bytes(bytes.len() as u64)
            );
            Ok(0)
        }
    }
}

fn summary_line(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(o) => o
            .iter()
            // Nested objects (timings) are for machines: `--json` has them.
            .filter(|(_, v)| !v.is_object())
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k} {s}"),
                // Six decimals are enough to read a cosine; trailing zeros are noise.
                serde_json::Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() != 0.0) => {
                    format!(
                        "{k} {}",
                        (n.as_f64().unwrap_or_default() * 1e6).round() / 1e6
                    )
                }
                serde_json::Value::Array(a) => format!(
                    "{k} {}",
                    a.iter()
                        .map(|x| x
                            .as_str()
                            .map(String::from)
                            .unwrap_or_else(|| x.to_string()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                other => format!("{k} {other}"),
            })
            .collect::<Vec<_>>()
            .join(" | "),
        _ => String::new(),
    }
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

fn status(m: &Manifest, settings: &ContextSettings, json_out: bool) -> Result<i32> {
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
    if json_out {
        println!("{}", serde_json::to_string_pretty(&json!({"pipeline": ctx.manifest.name, "lockfile": ctx.manifest.lock_path(), "steps": rows})).map_err(anyhow::Error::from)?);
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

fn cache_cmd(c: CacheCmd, cache_dir: &Utf8Path) -> Result<i32> {
    let store = Store::open(cache_dir)?;
    match c {
        CacheCmd::Ls { json } => {
            let recs = store.actions()?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&recs).map_err(anyhow::Error::from)?
                );
                return Ok(0);
            }
            println!("cache {cache_dir}: {} step results", recs.len());
            for r in &recs {
                let size: u64 = r.outputs.values().map(|b| b.size).sum();
                println!(
                    "  {}  {:<14} {:<10} {:<9} {:>10}  {}",
                    &r.key[..12],
                    r.pipeline,
                    r.step,
                    r.parts.kind,
                    human_bytes(size),
                    r.outputs.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
            let total: u64 = store
                .blobs()?
                .iter()
                .filter_map(|(_, p)| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum();
            println!("blobs: {}", human_bytes(total));
            Ok(0)
        }
        CacheCmd::Verify { repair, json } => {
            let total: u64 = store
                .blobs()?
                .iter()
                .filter_map(|(_, p)| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum();
            let pb = crate::progress::bytes_bar(total, "verifying blobs");
            let corrupt = store.verify_all(repair, |n| pb.inc(n))?;
            pb.finish_and_clear();
            // Invalid records are removed whatever --repair says: nothing can use them.
            let invalid = store.drop_invalid_records()?;
            store.memo.save()?;
            if json {
                println!(
                    "{}",
                    json!({"corrupt": corrupt, "repaired": repair, "invalid_records_removed": invalid})
                );
            } else if corrupt.is_empty() {
                println!(
                    "cache {cache_dir}: all {} blobs intact ({})",
                    store.blobs()?.len(),
                    human_bytes(total)
                );
            } else {
                for d in &corrupt {
                    println!("corrupt: {d}{}", if repair { " (removed)" } else { "" });
                }
                if !repair {
                    println!(
                        "hint: `facebuild cache verify --repair` removes them; the next run rebuilds the affected steps"
                    );
                }
            }
            if !json {
                for r in &invalid {
                    println!("invalid record (removed): {r}");
                }
            }
            Ok(if corrupt.is_empty() || repair { 0 } else { 1 })
        }
        CacheCmd::Keygen => {
            let (private, public) = crate::cache::remote::keygen()?;
            println!("# Keep the signing key secret: set it only where trusted builds run.");
            println!("FACEBUILD_REMOTE_SIGNING_KEY={private}");
            println!("# Give the public key to every reader (fork builds, cluster workers).");
            println!("FACEBUILD_REMOTE_TRUSTED_KEYS={public}");
            Ok(0)
        }
        CacheCmd::Push {
            files,
            remote,
            json,
        } => {
            let Some(remote) = remote.open()? else {
                return Err(Error::usage("no remote to push to")
                    .with_hint("pass --remote URL or set FACEBUILD_REMOTE"));
            };
            if !remote.writable() {
                return Err(Error::usage(
                    "the remote is read-only here: nothing can be pushed",
                ));
            }
            let files = lockfiles_or_default(files);
            let keep = kept_keys(&files)?;
            let mut records = Vec::new();
            let mut missing = 0;
            for k in &keep {
                match store.lookup(k, None)? {
                    Some(r) => records.push(r),
                    None => missing += 1,
                }
            }
            let r = remote.push(&records, &store);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r).map_err(anyhow::Error::from)?
                );
            } else {
                println!(
                    "pushed {} step results from {} lockfile(s) to {}: {} blobs uploaded ({}), {} records; {missing} not in the local cache; remote {}",
                    records.len(),
                    files.len(),
                    r.url,
                    r.blobs_uploaded,
                    human_bytes(r.bytes_uploaded),
                    r.records_uploaded,
                    r.status
                );
            }
            Ok(if r.status == "ok" && r.upload_failures.is_empty() {
                0
            } else {
                1
            })
        }
        CacheCmd::Gc {
            files,
            dry_run,
            remote,
            keep_days,
        } => {
            let files = lockfiles_or_default(files);
            let keep = kept_keys(&files)?;
            if let Some(url) = remote {
                let args = RemoteArgs {
                    remote: Some(url).filter(|u| !u.is_empty()),
                    remote_read_only: false,
                    remote_required: false,
                };
                let Some(remote) = args.open()? else {
                    return Err(Error::usage("--remote needs a URL")
                        .with_hint("pass --remote URL or set FACEBUILD_REMOTE"));
                };
                return remote_gc_cmd(&remote, &store, &keep, keep_days, dry_run);
            }
            let stats = store.gc(&keep, dry_run)?;
            store.memo.save()?;
            println!(
                "{}kept {} step results ({}) referenced by {} lockfile(s); removed {} results, {} blobs, {}",
                if dry_run { "dry run: " } else { "" },
                stats.kept_actions,
                human_bytes(stats.kept_bytes),
                files.len(),
                stats.removed_actions,
                stats.removed_blobs,
                human_bytes(stats.removed_bytes)
            );
            Ok(0)
        }
    }
}

fn lockfiles_or_default(files: Vec<Utf8PathBuf>) -> Vec<Utf8PathBuf> {
    if files.is_empty() {
        default_lockfiles()
    } else {
        files
    }
}

/// The action keys the lockfiles (or the manifests beside them) reference.
fn kept_keys(files: &[Utf8PathBuf]) -> Result<BTreeSet<String>> {
    let mut keep = BTreeSet::new();
    for f in files {
        let lock_path = if f.extension() == Some("lock") {
            f.clone()
        } else {
            f.with_extension("lock")
        };
        if !lock_path.exists() {
            return Err(Error::usage(format!("no lockfile {lock_path}"))
                .with_hint("name lockfiles (or manifests) whose results to keep"));
        }
        keep.extend(Lock::load(&lock_path).steps.values().map(|e| e.key.clone()));
    }
    Ok(keep)
}

/// `cache gc --remote`: delete remote records neither referenced by the lockfiles nor
/// younger than `keep_days`, then blobs no kept record references and that are old enough.
fn remote_gc_cmd(
    remote: &Remote,
    store: &Store,
    keep: &BTreeSet<String>,
    keep_days: u64,
    dry_run: bool,
) -> Result<i32> {
    let young = std::time::Duration::from_secs(keep_days * 86_400);
    let fail = |e: String| Error::usage(format!("remote {}: {e}", remote.display()));
    let records = remote.list("ac").map_err(fail)?;
    let blobs = remote.list("cas").map_err(fail)?;
    let mut live_blobs = BTreeSet::new();
    let mut drop_records = Vec::new();
    for (name, (_, age)) in &records {
        let key = name.trim_end_matches(".json");
        if keep.contains(key) || *age < young {
            match remote.lookup(key, None) {
                Some(r) => live_blobs.extend(r.outputs.values().map(|b| b.digest.clone())),
                // Unreadable or refused records keep nothing alive.
                None => drop_records.push(format!("ac/{name}")),
            }
        } else {
            drop_records.push(format!("ac/{name}"));
        }
    }
    // Blobs the local lockfiles reference stay too (a record may not be uploaded yet).
    for k in keep {
        if let Some(r) = store.read_action(k) {
            live_blobs.extend(r.outputs.values().map(|b| b.digest.clone()));
        }
    }
    let mut drop_blobs = Vec::new();
    let mut freed = 0u64;
    for (name, (size, age)) in &blobs {
        if !live_blobs.contains(name) && *age >= young {
            drop_blobs.push(format!("cas/{name}"));
            freed += size;
        }
    }
    // Slurm jobs' logs (and, in cas/, their specs) are kept for the same time, no longer:
    // nothing references them once their run has shown them.
    let logs = remote.list("logs").map_err(fail)?;
    let drop_logs: Vec<String> = logs
        .iter()
        .filter(|(_, (_, age))| *age >= young)
        .map(|(name, _)| format!("logs/{name}"))
        .collect();
    if !dry_run {
        remote.delete(&drop_records).map_err(fail)?;
        remote.delete(&drop_blobs).map_err(fail)?;
        remote.delete(&drop_logs).map_err(fail)?;
    }
    println!(
        "{}remote {}: kept {} of {} records and {} of {} blobs; removed {} records, {} blobs ({}), {} job logs",
        if dry_run { "dry run: " } else { "" },
        remote.display(),
        records.len() - drop_records.len(),
        records.len(),
        blobs.len() - drop_blobs.len(),
        blobs.len(),
        drop_records.len(),
        drop_blobs.len(),
        human_bytes(freed),
        drop_logs.len()
    );
    Ok(0)
}

fn default_lockfiles() -> Vec<Utf8PathBuf> {
    let mut v = Vec::new();
    for dir in ["pipelines", "."] {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if let Ok(p) = Utf8PathBuf::from_path_buf(e.path())
                    && p.extension() == Some("lock")
                {
                    v.push(p);
                }
            }
        }
    }
    v.sort();
    v
}

/// Outputs whose size the graph leaves symbolic (`[batch_size, Divoutput_dim_1]`, a PyTorch
/// export) get it from one run in ONNX Runtime on zeros, when the toolchain is installed:
/// `init` guesses the task from the outputs' last dims. Returns a note for the manifest.
fn size_symbolic_outputs(
    model: &Utf8Path,
    info: &mut crate::onnx::inspect::ModelInfo,
    cache_dir: &Utf8Path,
) -> Option<String> {
    use crate::onnx::inspect::DimInfo;
    use crate::runtime::Runtime;
    let symbolic = |o: &crate::onnx::inspect::TensorInfo| {
        !matches!(o.shape.as_deref(), Some([.., DimInfo::Static(_)]))
    };
    if !info.outputs.iter().any(symbolic) {
        return None;
    }
    let names: Vec<String> = info
        .outputs
        .iter()
        .filter(|o| symbolic(o))
        .map(|o| o.name.clone())
        .collect();
    let Some(tc) = Toolchain::find(cache_dir, &Pins::resolve(&Default::default())) else {
        return Some(format!(
            "CHECK: the size of output(s) {} is symbolic in the graph; with the toolchain installed (`facebuild toolchain install`) init runs the model once to read it",
            names.join(", ")
        ));
    };
    // Batch 1; other dynamic dims 112 (a face crop: detectors take any multiple of 16).
    let input = info.inputs.first()?;
    let shape: Vec<usize> = input
        .shape
        .as_deref()?
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            DimInfo::Static(v) if *v > 0 => *v as usize,
            _ if i == 0 => 1,
            _ => 112,
        })
        .collect();
    let run = || -> Result<Vec<crate::runtime::NamedTensor>> {
        let mut loaded =
            crate::runtime::onnxruntime::OnnxRuntime::new(&tc, Some(1))?.load(model)?;
        let zeros = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&shape));
        loaded.run(&[(input.name.clone(), zeros)])
    };
    match run() {
        Ok(outs) => {
            let mut read = Vec::new();
            for (name, t) in outs {
                let Some(o) = info
                    .outputs
                    .iter_mut()
                    .find(|o| o.name == name && symbolic(o))
                else {
                    continue;
                };
                let (Some(dims), Some(&last)) = (o.shape.as_mut(), t.shape().last()) else {
                    continue;
                };
                if dims.len() == t.ndim() {
                    if let Some(d) = dims.last_mut() {
                        *d = DimInfo::Static(last as i64);
                    }
                    read.push(format!("`{name}` {:?}", t.shape()));
                }
            }
            Some(format!(
                "output sizes read from one run in ONNX Runtime on zeros {shape:?}: {}",
                read.join(", ")
            ))
        }
        Err(e) => Some(format!(
            "CHECK: output(s) {} have a symbolic size, and one run in ONNX Runtime to read it failed: {}",
            names.join(", "),
            e.to_string().lines().next().unwrap_or_default()
        )),
    }
}

fn pins_for(file: Option<&Utf8Path>) -> Result<Pins> {
    Ok(match file {
        Some(f) => {
            let m = Manifest::load(f)?;
            Pins::for_manifest(&m.toolchain, &m.file)?
        }
        None => Pins::resolve(&Default::default()),
    })
}

/// TensorRT as a manifest (or, without one, the environment) would find it.
fn tensorrt_for(
    file: Option<&Utf8Path>,
    cache_dir: &Utf8Path,
) -> Result<crate::toolchain::tensorrt::Discovery> {
    Ok(match file {
        Some(f) => {
            let m = Manifest::load(f)?;
            crate::toolchain::tensorrt::discover(m.toolchain.tensorrt.as_ref(), &m.dir, cache_dir)
        }
        None => crate::toolchain::tensorrt::discover(None, Utf8Path::new("."), cache_dir),
    })
}

fn toolchain_cmd(t: ToolchainCmd, cache_dir: &Utf8Path) -> Result<i32> {
    match t {
        ToolchainCmd::Show { file, json } => {
            let pins = pins_for(file.as_deref())?;
            let tc = Toolchain::find(cache_dir, &pins);
            let dir = crate::toolchain::env_dir(cache_dir, &pins);
            let trt = tensorrt_for(file.as_deref(), cache_dir)?;
            if json {
                let trt_json = match &trt {
                    Ok(t) => json!({"available": true, "found": t, "fingerprint": t.fingerprint()}),
                    Err(e) => json!({"available": false, "missing": e}),
                };
                println!("{}", serde_json::to_string_pretty(&json!({"id": pins.id(), "dir": dir, "installed": tc.is_some(), "pins": pins, "info": tc.as_ref().map(|t| &t.info), "tensorrt": trt_json})).map_err(anyhow::Error::from)?);
                return Ok(0);
            }
            println!("toolchain {} at {dir}", pins.id());
            println!("  interpreter {}", pins.interpreter);
            match &tc {
                None => {
                    println!(
                        "  not installed (`facebuild toolchain install`, or any `run`, installs it)"
                    );
                    for (k, v) in &pins.packages {
                        println!("  {k:<12} {v} (pinned)");
                    }
                }
                Some(t) => {
                    println!(
                        "  python       {} ({})",
                        t.info.python_version, t.info.platform
                    );
                    for k in pins.packages.keys() {
                        println!("  {k:<12} {}", t.version(k).unwrap_or("missing"));
                    }
                    println!(
                        "  libonnxruntime {}",
                        t.info
                            .onnxruntime_library
                            .as_ref()
                            .map(|p| p.as_str())
                            .unwrap_or("missing")
                    );
                    println!(
                        "  libopenvino_c  {}",
                        t.info
                            .openvino_c_library
                            .as_ref()
                            .map(|p| p.as_str())
                            .unwrap_or("missing")
                    );
                }
            }
            match &trt {
                Ok(t) => println!("  tensorrt     {} ({})", t.describe(), t.trtexec),
                Err(e) => println!("  tensorrt     unavailable: {e}"),
            }
            Ok(0)
        }
        ToolchainCmd::Lock { file, output } => {
            let (pins, dest) = match &file {
                Some(f) => {
                    let m = Manifest::load(f)?;
                    (
                        Pins::resolve(&m.toolchain),
                        Some(output.unwrap_or_else(|| Pins::lock_path(&m.file))),
                    )
                }
                None => (Pins::resolve(&Default::default()), output),
            };
            let text = crate::toolchain::lock(&pins, &crate::toolchain::root_dir(cache_dir))?;
            let n = text
                .lines()
                .filter(|l| l.contains("==") && !l.starts_with('#'))
                .count();
            match dest {
                Some(d) => {
                    crate::cache::store::write_atomic(&d, text.as_bytes())?;
                    println!("locked {n} packages with their hashes into {d}");
                }
                None => print!("{text}"),
            }
            Ok(0)
        }
        ToolchainCmd::Install { file, force } => {
            let pins = pins_for(file.as_deref())?;
            if force {
                let dir = crate::toolchain::env_dir(cache_dir, &pins);
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
                }
            }
            let t = Toolchain::ensure(cache_dir, &pins)?;
            println!("toolchain {} ready at {}", pins.id(), t.dir);
            Ok(0)
        }
    }
}
