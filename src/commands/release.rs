//! `facebuild release`: list releases, roll a pipeline back, make a signing key, verify a
//! release's signature.

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
    /// Make an earlier release current again, byte for byte (sha256 checked); with
    /// `--channel`, move a channel on the remote back to the version promoted before
    Rollback {
        pipeline: String,
        /// The version to make current here (not with `--channel`)
        version: Option<String>,
        /// A channel on the remote (`prod`...) to move back
        #[arg(long)]
        channel: Option<String>,
        #[arg(long)]
        dir: Option<Utf8PathBuf>,
        #[command(flatten)]
        remote: super::RemoteArgs,
        #[arg(long)]
        json: bool,
    },
    /// Upload a release to the remote (blobs by digest, a signed per-pipeline index)
    Publish {
        /// NAME or NAME@VERSION (default: the pipeline's current release)
        release: String,
        #[arg(long)]
        dir: Option<Utf8PathBuf>,
        #[command(flatten)]
        remote: super::RemoteArgs,
        #[arg(long)]
        json: bool,
    },
    /// Make a published version current on a channel of the remote
    Promote {
        /// NAME@VERSION
        release: String,
        #[arg(long)]
        channel: String,
        #[command(flatten)]
        remote: super::RemoteArgs,
        #[arg(long)]
        json: bool,
    },
    /// Download a published release, verified against trusted keys, into a folder
    Pull {
        /// NAME, NAME@VERSION or NAME@CHANNEL (NAME alone: the newest published)
        release: String,
        /// Where the release goes (replaced only once the new one verified)
        #[arg(long)]
        to: Utf8PathBuf,
        /// A trusted public key (PEM); repeatable (default: $FACEBUILD_RELEASE_TRUSTED_KEYS)
        #[arg(long)]
        public_key: Vec<Utf8PathBuf>,
        #[command(flatten)]
        remote: super::RemoteArgs,
        #[arg(long)]
        json: bool,
    },
    /// Make a P-256 key pair for signing releases (FACEBUILD_RELEASE_SIGNING_KEY)
    Keygen {
        /// Where the keys go: release-signing.pem (private, mode 600) and
        /// release-signing.pub.pem
        #[arg(long, default_value = ".")]
        out: Utf8PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Verify a release folder's model.sig and SHA256SUMS: every file as signed, none added
    Verify {
        /// A release's version folder (or `current/`)
        dir: Utf8PathBuf,
        /// The public key (PEM) the release must be signed with
        #[arg(long)]
        public_key: Utf8PathBuf,
        #[arg(long)]
        json: bool,
    },
}

impl ReleaseCmd {
    pub(super) fn json(&self) -> bool {
        match self {
            ReleaseCmd::List { json, .. }
            | ReleaseCmd::Rollback { json, .. }
            | ReleaseCmd::Keygen { json, .. }
            | ReleaseCmd::Verify { json, .. }
            | ReleaseCmd::Publish { json, .. }
            | ReleaseCmd::Promote { json, .. }
            | ReleaseCmd::Pull { json, .. } => *json,
        }
    }
}

/// What `release verify` found.
#[derive(serde::Serialize)]
struct Verified {
    dir: Utf8PathBuf,
    verified: bool,
    /// `signed`, or `unsigned` (no model.sig).
    signature: &'static str,
    /// What does not verify: files changed, added or missing, or the wrong key.
    problems: Vec<String>,
}

fn verify(dir: Utf8PathBuf, public_key: &camino::Utf8Path, out: super::Printer) -> Result<i32> {
    let key = crate::signing::public_key(public_key)?;
    let signed = dir.join(crate::signing::SIGNATURE_FILE).is_file();
    let mut problems = crate::steps::release::verify_version(&dir)?;
    let provenance = dir.join(crate::steps::provenance::PROVENANCE_FILE);
    if provenance.is_file() {
        problems.extend(crate::steps::provenance::verify(&dir, &key)?);
    }
    if signed {
        problems.extend(crate::signing::verify_dir(&dir, &key)?);
    } else {
        problems.push(format!(
            "unsigned: {dir} has no {} (the release was built without FACEBUILD_RELEASE_SIGNING_KEY)",
            crate::signing::SIGNATURE_FILE
        ));
    }
    let v = Verified {
        verified: problems.is_empty(),
        signature: if signed { "signed" } else { "unsigned" },
        problems,
        dir,
    };
    if !out.json(|| &v)? {
        if v.verified {
            println!("{}: verified (model.sig and SHA256SUMS, every file)", v.dir);
        } else {
            eprintln!("error: {} does not verify:", v.dir);
            for p in &v.problems {
                eprintln!("  {p}");
            }
        }
    }
    Ok(if v.verified { 0 } else { 1 })
}

fn keygen(dir: &camino::Utf8Path, out: super::Printer) -> Result<i32> {
    let (private, public) = crate::signing::keygen()?;
    std::fs::create_dir_all(dir).map_err(|e| crate::error::Error::io(dir, e))?;
    let (key, pubkey) = (
        dir.join("release-signing.pem"),
        dir.join("release-signing.pub.pem"),
    );
    if key.exists() {
        return Err(
            crate::error::Error::usage(format!("{key} exists: not overwritten"))
                .with_hint("move it away first, or give another `--out`"),
        );
    }
    crate::util::write_private(&key, private.as_bytes())?;
    std::fs::write(&pubkey, public).map_err(|e| crate::error::Error::io(&pubkey, e))?;
    let made = serde_json::json!({"private_key": key, "public_key": pubkey});
    if !out.json(|| &made)? {
        println!(
            "wrote {key} (keep it secret: FACEBUILD_RELEASE_SIGNING_KEY={key}) and {pubkey} (give it to who verifies)"
        );
    }
    Ok(0)
}

pub(super) fn release_cmd(
    r: ReleaseCmd,
    settings: &crate::settings::ContextSettings,
    out: super::Printer,
) -> Result<i32> {
    use super::release_remote as remote;
    match r {
        ReleaseCmd::Rollback {
            pipeline,
            channel: Some(channel),
            version: None,
            remote: r,
            ..
        } => remote::rollback_channel(&pipeline, &channel, &r, settings, out),
        ReleaseCmd::Rollback {
            channel: Some(_),
            version: Some(v),
            ..
        } => Err(crate::error::Error::usage(format!(
            "`--channel` moves the channel back one version; it takes no VERSION (`{v}`)"
        ))
        .with_hint("to put a given version on the channel: `facebuild release promote NAME@VERSION --channel CHANNEL`")),
        ReleaseCmd::Rollback { version: None, .. } => Err(crate::error::Error::usage(
            "`release rollback` needs a VERSION (here) or `--channel CHANNEL` (on the remote)",
        )
        .with_hint("`facebuild release list` shows the versions here")),
        ReleaseCmd::Publish {
            release, dir, remote: r, ..
        } => remote::publish(&release, dir.as_deref(), &r, settings, out),
        ReleaseCmd::Promote {
            release,
            channel,
            remote: r,
            ..
        } => remote::promote(&release, &channel, &r, settings, out),
        ReleaseCmd::Pull {
            release,
            to,
            public_key,
            remote: r,
            ..
        } => remote::pull(&release, &to, &public_key, &r, settings, out),
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
            version: Some(version),
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
        ReleaseCmd::Keygen { out: dir, .. } => keygen(&dir, out),
        ReleaseCmd::Verify {
            dir, public_key, ..
        } => verify(dir, &public_key, out),
    }
}
