//! `facebuild bench-target` (hidden): measure one benchmark target in this process.

use camino::Utf8PathBuf;
use clap::Args;

use crate::error::{Error, Result};

/// `bench-target`'s arguments.
#[derive(Args)]
pub(super) struct BenchTargetArgs {
    pub(super) spec: Utf8PathBuf,
}

pub(super) fn bench_target_cmd(args: BenchTargetArgs) -> Result<i32> {
    let spec = args.spec;
    let bytes = std::fs::read(&spec).map_err(|e| Error::io(&spec, e))?;
    let spec: crate::runtime::bench::BenchSpec =
        serde_json::from_slice(&bytes).map_err(|e| Error::usage(format!("bench-target: {e}")))?;
    let v = crate::runtime::bench::run_child(&spec)?;
    println!(
        "{}",
        serde_json::to_string(&v).map_err(anyhow::Error::from)?
    );
    Ok(0)
}
