//! Executors: where a step that missed the cache runs. [`Local`] runs it on this machine
//! (today's path: a scratch folder, the store, the action record); [`Slurm`] submits it as a
//! job that runs `facebuild exec-step` on a cluster node, and takes its result from the
//! remote cache. The scheduler decides *what* runs; an executor decides *where*.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use camino::Utf8PathBuf;

use crate::cache::{ActionRecord, BlobRef, KeyParts};
use crate::context::BuildContext;
use crate::error::Result;

mod local;
mod slurm;
pub(crate) mod worker;

pub(crate) use local::Local;
pub(crate) use slurm::Slurm;

/// Outputs of a step: name -> blob.
pub(crate) type Outputs = BTreeMap<String, BlobRef>;

/// Everything needed to run one step that missed the cache.
pub(crate) struct Job {
    pub name: String,
    /// `--no-cache`: rebuild even when another run has just built it.
    pub no_cache: bool,
    /// The model file the step reads (a local path; a Slurm job gets it by digest).
    pub model: Utf8PathBuf,
    /// Every upstream step's outputs as files in the local store (for a local run).
    pub upstream: BTreeMap<String, BTreeMap<String, Utf8PathBuf>>,
    /// Every upstream step's outputs as blobs (for a job elsewhere).
    pub upstream_blobs: BTreeMap<String, Outputs>,
    /// Referenced steps that failed, with why: the step reports them (compare).
    pub failed: BTreeMap<String, String>,
    pub parts: KeyParts,
    /// Where it runs, when not here: written into the action record.
    pub ran_on: Option<crate::manifest::RanOn>,
}

/// What running a step gave.
pub(crate) struct Executed {
    pub outputs: Outputs,
    pub summary: serde_json::Value,
    /// A concurrent run on the same cache built it while this one waited for its lock.
    pub by_other_run: bool,
    /// Built elsewhere: its record, whose blobs are on the remote until something needs them.
    pub remote_record: Option<Box<ActionRecord>>,
}

/// Where a step runs. Implementations block the calling (scheduler worker) thread until the
/// step's result is in the cache, or it failed; `cancel` (Ctrl-C, SIGTERM) stops them.
pub(crate) trait Executor: Sync {
    /// Run `job` and return its outputs.
    fn execute(&self, ctx: &BuildContext, job: &Job, cancel: &AtomicBool) -> Result<Executed>;
}
