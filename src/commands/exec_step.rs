//! `facebuild exec-step`: run one step as a worker (what a Slurm job runs).

use std::sync::atomic::AtomicBool;

use camino::Utf8PathBuf;
use clap::Args;

use crate::error::Result;

/// `exec-step`'s arguments.
#[derive(Args)]
pub(super) struct ExecStepArgs {
    /// The spec's blake3 digest on the remote
    pub(super) spec: String,
    /// (internal) do the work in this folder; the parent process records the log
    #[arg(long, hide = true)]
    pub(super) child_dir: Option<Utf8PathBuf>,
}

pub(super) fn exec_step_cmd(args: ExecStepArgs, cancel: &AtomicBool) -> Result<i32> {
    match args.child_dir {
        Some(dir) => crate::executor::worker::run_child(&args.spec, &dir, cancel),
        None => crate::executor::worker::exec_step(&args.spec, cancel),
    }
}
