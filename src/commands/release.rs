//! `facebuild release`: list releases, or roll a pipeline back.

use camino::Utf8PathBuf;
use clap::Subcommand;

use crate::error::Result;

#[derive(Subcommand)]
pub(super) enum ReleaseCmd {
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

impl ReleaseCmd {
    pub(super) fn json(&self) -> bool {
        match self {
            ReleaseCmd::List { json, .. } | ReleaseCmd::Rollback { json, .. } => *json,
        }
    }
}

pub(super) fn release_cmd(r: ReleaseCmd, out: super::Printer) -> Result<i32> {
    match r {
        ReleaseCmd::List { dir, .. } => {
            let root = crate::settings::releases_dir(dir.as_deref());
            let all = crate::steps::release::list(&root)?;
            if out.json(|| &all)? {
                return Ok(0);
            }
            if all.is_empty() {
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
        ReleaseCmd::Rollback {
            pipeline,
            version,
            dir,
            ..
        } => {
            let root = crate::settings::releases_dir(dir.as_deref());
            let r = crate::steps::release::rollback(&root, &pipeline, &version)?;
            if !out.json(|| &r)? {
                println!(
                    "{pipeline}: current is now {version} (was {}); {} files verified against its SHA256SUMS in {}",
                    r.previous_current.as_deref().unwrap_or("none"),
                    r.verified_files,
                    r.current_dir
                );
            }
            Ok(0)
        }
    }
}
