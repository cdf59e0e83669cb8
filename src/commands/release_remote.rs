//! `facebuild release publish | promote | pull` and `release rollback --channel`: releases
//! on the remote (the logic is in `steps::release::publish`).

use camino::{Utf8Path, Utf8PathBuf};

use super::{Printer, RemoteArgs};
use crate::cache::Store;
use crate::cache::remote::Remote;
use crate::error::{Error, Result};
use crate::settings::ContextSettings;
use crate::steps::release::publish;

/// `NAME` or `NAME@REF`.
fn split_ref(release: &str) -> (&str, Option<&str>) {
    match release.split_once('@') {
        Some((n, r)) => (n, Some(r)),
        None => (release, None),
    }
}

fn open_remote(r: &RemoteArgs) -> Result<Remote> {
    r.open()?.ok_or_else(|| {
        Error::usage("no remote: releases are published to and pulled from the remote")
            .with_hint("pass --remote URL (s3://, http(s)://, file://) or set FACEBUILD_REMOTE")
    })
}

/// The release key: publishing and moving channels sign the index with it.
fn release_key(settings: &ContextSettings, what: &str) -> Result<p256::ecdsa::SigningKey> {
    let Some(k) = settings.signing_key.as_deref() else {
        return Err(Error::usage(format!(
            "{what} signs the release index, and FACEBUILD_RELEASE_SIGNING_KEY is not set"
        ))
        .with_hint("set it to the release key (a PEM file or its text): `facebuild release keygen` makes one"));
    };
    crate::signing::signing_key(k)
}

pub(super) fn publish(
    release: &str,
    dir: Option<&Utf8Path>,
    r: &RemoteArgs,
    settings: &ContextSettings,
    out: Printer,
) -> Result<i32> {
    let (pipeline, version) = split_ref(release);
    let key = release_key(settings, "publishing")?;
    let remote = open_remote(r)?;
    let root = crate::settings::releases_dir(dir);
    let p = publish::publish(&remote, &root, pipeline, version, &key)?;
    if !out.json(|| &p)? {
        println!(
            "{}@{} {} to {}: {} files, {} blobs sent ({}), {} already there",
            p.pipeline,
            p.version,
            if p.already_published {
                "was already published"
            } else {
                "published"
            },
            p.remote,
            p.files,
            p.blobs_uploaded,
            crate::util::human_bytes(p.bytes_uploaded),
            p.blobs_reused
        );
    }
    Ok(0)
}

pub(super) fn promote(
    release: &str,
    channel: &str,
    r: &RemoteArgs,
    settings: &ContextSettings,
    out: Printer,
) -> Result<i32> {
    let (pipeline, Some(version)) = split_ref(release) else {
        return Err(
            Error::usage(format!("`{release}`: promote takes NAME@VERSION")).with_hint(
                "e.g. `facebuild release promote recognition@r-0123456789ab --channel prod`",
            ),
        );
    };
    let key = release_key(settings, "promoting")?;
    let remote = open_remote(r)?;
    let m = publish::promote(&remote, pipeline, version, channel, &key)?;
    print_move(&m, out)
}

pub(super) fn rollback_channel(
    pipeline: &str,
    channel: &str,
    r: &RemoteArgs,
    settings: &ContextSettings,
    out: Printer,
) -> Result<i32> {
    let key = release_key(settings, "rolling a channel back")?;
    let remote = open_remote(r)?;
    let m = publish::rollback_channel(&remote, pipeline, channel, &key)?;
    print_move(&m, out)
}

fn print_move(m: &publish::ChannelMove, out: Printer) -> Result<i32> {
    if !out.json(|| m)? {
        println!(
            "{} channel {}: {} (was {}); {} moves in its history",
            m.pipeline,
            m.channel,
            m.current,
            m.previous.as_deref().unwrap_or("nothing"),
            m.history.len()
        );
    }
    Ok(0)
}

pub(super) fn pull(
    release: &str,
    to: &Utf8Path,
    keys: &[Utf8PathBuf],
    r: &RemoteArgs,
    settings: &ContextSettings,
    out: Printer,
) -> Result<i32> {
    let (pipeline, reference) = split_ref(release);
    let paths = if keys.is_empty() {
        crate::settings::release_trusted_keys()
    } else {
        keys.to_vec()
    };
    let trusted = paths
        .iter()
        .map(|p| crate::signing::public_key(p))
        .collect::<Result<Vec<_>>>()?;
    let remote = open_remote(r)?;
    let store = Store::open(&settings.cache_dir)?;
    let p = publish::pull(&remote, &store, pipeline, reference, to, &trusted)?;
    if !out.json(|| &p)? {
        println!(
            "{}@{}{} -> {}: {} files verified (SHA256SUMS, model.sig: {}), {} blobs downloaded",
            p.pipeline,
            p.version,
            p.channel
                .as_ref()
                .map(|c| format!(" (channel {c})"))
                .unwrap_or_default(),
            p.dir,
            p.files,
            p.signature,
            p.blobs_downloaded
        );
    }
    Ok(0)
}
