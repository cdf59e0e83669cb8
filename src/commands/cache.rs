//! `facebuild cache`: list, verify, collect, push, and make signing keys.

use std::collections::BTreeSet;

use camino::{Utf8Path, Utf8PathBuf};
use clap::Subcommand;
use serde_json::json;

use crate::cache::remote::Remote;
use crate::cache::{Lock, Store};
use crate::error::{Error, Result};
use crate::util::human_bytes;

use super::RemoteArgs;

#[derive(Subcommand)]
pub(super) enum CacheCmd {
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

impl CacheCmd {
    pub(super) fn json(&self) -> bool {
        matches!(
            self,
            CacheCmd::Ls { json: true }
                | CacheCmd::Verify { json: true, .. }
                | CacheCmd::Push { json: true, .. }
        )
    }
}

pub(super) fn cache_cmd(c: CacheCmd, cache_dir: &Utf8Path, out: super::Printer) -> Result<i32> {
    let store = Store::open(cache_dir)?;
    match c {
        CacheCmd::Ls { .. } => ls(&store, cache_dir, out),
        CacheCmd::Verify { repair, .. } => verify(&store, cache_dir, repair, out),
        CacheCmd::Keygen => keygen(),
        CacheCmd::Push { files, remote, .. } => push(&store, files, &remote, out),
        CacheCmd::Gc {
            files,
            dry_run,
            remote,
            keep_days,
        } => gc(&store, files, dry_run, remote, keep_days),
    }
}

/// The bytes the store's blobs take on disk.
fn blob_bytes(store: &Store) -> Result<u64> {
    Ok(store
        .blobs()?
        .iter()
        .filter_map(|(_, p)| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum())
}

/// `cache ls`: every cached step result.
fn ls(store: &Store, cache_dir: &Utf8Path, out: super::Printer) -> Result<i32> {
    let recs = store.actions()?;
    if out.json(|| &recs)? {
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
    let total = blob_bytes(store)?;
    println!("blobs: {}", human_bytes(total));
    Ok(0)
}

/// `cache verify`: re-hash every blob; `repair` removes the corrupt ones.
fn verify(store: &Store, cache_dir: &Utf8Path, repair: bool, out: super::Printer) -> Result<i32> {
    let total = blob_bytes(store)?;
    let pb = crate::progress::bytes_bar(total, "verifying blobs");
    let corrupt = store.verify_all(repair, |n| pb.inc(n))?;
    pb.finish_and_clear();
    // Invalid records are removed whatever --repair says: nothing can use them.
    let invalid = store.drop_invalid_records()?;
    store.memo.save()?;
    let code = if corrupt.is_empty() || repair { 0 } else { 1 };
    if out.json(
        || json!({"corrupt": corrupt, "repaired": repair, "invalid_records_removed": invalid}),
    )? {
        return Ok(code);
    }
    if corrupt.is_empty() {
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
    for r in &invalid {
        println!("invalid record (removed): {r}");
    }
    Ok(code)
}

/// `cache keygen`: an ed25519 key pair for signing remote records.
fn keygen() -> Result<i32> {
    let (private, public) = crate::cache::remote::keygen()?;
    println!("# Keep the signing key secret: set it only where trusted builds run.");
    println!("FACEBUILD_REMOTE_SIGNING_KEY={private}");
    println!("# Give the public key to every reader (fork builds, cluster workers).");
    println!("FACEBUILD_REMOTE_TRUSTED_KEYS={public}");
    Ok(0)
}

/// `cache push`: upload what the lockfiles reference.
fn push(
    store: &Store,
    files: Vec<Utf8PathBuf>,
    remote: &RemoteArgs,
    out: super::Printer,
) -> Result<i32> {
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
    let r = remote.push(&records, store);
    if !out.json(|| &r)? {
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

/// `cache gc`: remove what no lockfile references, here or on the remote.
fn gc(
    store: &Store,
    files: Vec<Utf8PathBuf>,
    dry_run: bool,
    remote: Option<String>,
    keep_days: u64,
) -> Result<i32> {
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
        return remote_gc_cmd(&remote, store, &keep, keep_days, dry_run);
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
    let fail = |e: crate::cache::remote::RemoteError| {
        Error::usage(format!("remote {}: {e}", remote.display()))
    };
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
