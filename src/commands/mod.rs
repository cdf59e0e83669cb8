//! The command line: one file per command. Each takes its parsed arguments and the resolved
//! settings and returns the exit status; the work is in the library modules.

mod bench_target;
mod builtin;
mod cache;
mod exec_step;
mod init;
mod plan;
mod release;
mod release_remote;
mod run;
mod status;
mod toolchain;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use camino::Utf8PathBuf;
use clap::{Args, Parser, Subcommand};

use crate::cache::remote::Remote;
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::settings::{ContextSettings, RemoteFlags};

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
    Run(run::RunArgs),
    /// Run one step as a worker (what a Slurm job runs; see docs/distributed.md): fetch the
    /// spec SPEC (a blake3 digest) and its inputs from the remote cache (FACEBUILD_REMOTE),
    /// check the key, run the step in a new folder under the current one, push the result
    /// and the log
    ExecStep(exec_step::ExecStepArgs),
    /// Show the order and, for each step, whether it is cached or will run and why
    Plan(plan::PlanArgs),
    /// Show each step's state against the lockfile and the cache
    Status(status::StatusArgs),
    /// Write a commented pipeline for an ONNX model (input, dynamic dims, task guessed from
    /// its outputs, InsightFace's preprocessing, the usual steps), or a built-in pipeline
    Init(init::InitArgs),
    /// Inspect and maintain the cache
    #[command(subcommand)]
    Cache(cache::CacheCmd),
    /// Show or install the Python toolchain (onnx, onnxruntime, onnxsim, openvino, nncf)
    #[command(subcommand)]
    Toolchain(toolchain::ToolchainCmd),
    /// List releases, or roll a pipeline back to an earlier release
    #[command(subcommand)]
    Release(release::ReleaseCmd),
    /// Measure one benchmark target in this process (started by the `benchmark` step)
    #[command(hide = true)]
    BenchTarget(bench_target::BenchTargetArgs),
    /// Write a built-in model to a file (for benchmarks and experiments)
    Builtin(builtin::BuiltinArgs),
}

/// Which pipeline: a manifest file, or one built into the binary (no checkout needed).
#[derive(Args)]
pub(super) struct PipelineArg {
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
pub(super) struct RemoteArgs {
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
pub(super) struct Selection {
    /// Only this step and what it needs (repeatable)
    #[arg(long = "target", short = 't', value_name = "STEP")]
    targets: Vec<String>,
}

pub(super) fn default_jobs() -> usize {
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
    let out = Printer {
        json: cli.command.json(),
    };
    match cli.command {
        Command::Run(a) => run::run(a, cli.cache_dir, cancel, out),
        Command::ExecStep(a) => exec_step::exec_step_cmd(a, cancel),
        Command::Plan(a) => plan::plan_cmd(a, &local, out),
        Command::Status(a) => status::status_cmd(a, &local, out),
        Command::Init(a) => init::init_cmd(a, &local.cache_dir),
        Command::Cache(c) => cache::cache_cmd(c, &local.cache_dir, out),
        Command::Toolchain(t) => toolchain::toolchain_cmd(t, &local.cache_dir, out),
        Command::Release(r) => release::release_cmd(r, &local, out),
        Command::BenchTarget(a) => bench_target::bench_target_cmd(a),
        Command::Builtin(a) => builtin::builtin_cmd(a),
    }
}

/// How a command answers: text for people, or pretty JSON (`--json`) for machines. The
/// dispatcher makes it once from the command's flag, and every command answers through it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Printer {
    json: bool,
}

impl Printer {
    /// The one way a command answers `--json`: with it, `value()` goes to stdout as pretty
    /// JSON and this returns true, and the caller prints nothing else; without, false, and
    /// the caller prints its text.
    pub(super) fn json<T: serde::Serialize>(self, value: impl FnOnce() -> T) -> Result<bool> {
        if self.json {
            let text = serde_json::to_string_pretty(&value()).map_err(anyhow::Error::from)?;
            println!("{text}");
        }
        Ok(self.json)
    }
}

impl Command {
    /// Whether the command was asked for `--json` (commands without it answer in text).
    fn json(&self) -> bool {
        match self {
            Command::Run(a) => a.json,
            Command::Plan(a) => a.json,
            Command::Status(a) => a.json,
            Command::Cache(c) => c.json(),
            Command::Toolchain(t) => t.json(),
            Command::Release(r) => r.json(),
            Command::ExecStep(_)
            | Command::Init(_)
            | Command::BenchTarget(_)
            | Command::Builtin(_) => false,
        }
    }
}

/// One line of a step's summary figures, as the run and status print them.
pub(super) fn summary_line(v: &serde_json::Value) -> String {
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
