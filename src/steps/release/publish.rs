//! Releases on the remote: `release publish`, `pull`, `promote` and channel `rollback`.
//!
//! A published release is its files in the remote's CAS (`cas/<blake3>`, the cache's own:
//! a blob already there is not sent again) and an entry in the pipeline's index,
//! `releases/<pipeline>/index.json`: every version with each file's path, size, blake3 and
//! sha256, and every channel with the stack of versions promoted to it and its history. The
//! index is a DSSE envelope signed with the release key, so a machine that pulls trusts
//! nothing the remote says until a key it trusts has signed it; then each blob is checked by
//! blake3 as it arrives, each file by sha256, and the folder by its SHA256SUMS and model.sig.

use std::collections::BTreeMap;

use camino::{Utf8Path, Utf8PathBuf};
use p256::ecdsa::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::cache::remote::Remote;
use crate::cache::{BlobRef, Store};
use crate::error::{Error, IoContext, Result};

const INDEX_FORMAT: &str = "facebuild.release-index/1";

/// The pipeline's index on the remote.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Index {
    pub format: String,
    pub pipeline: String,
    /// Published versions by name.
    pub versions: BTreeMap<String, PublishedVersion>,
    /// Channels by name (`prod`, `staging`...).
    pub channels: BTreeMap<String, Channel>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PublishedVersion {
    pub published: String,
    pub files: Vec<RemoteFile>,
}

/// One file of a release on the remote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RemoteFile {
    pub path: String,
    pub size: u64,
    pub blake3: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Channel {
    /// The versions promoted and not rolled back, oldest first: the last is current.
    pub stack: Vec<String>,
    /// Every move, oldest first.
    pub history: Vec<ChannelEvent>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ChannelEvent {
    pub event: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub at: String,
}

fn index_path(pipeline: &str) -> String {
    format!("releases/{pipeline}/index.json")
}

fn remote_err(what: &str, e: crate::cache::remote::RemoteError) -> Error {
    Error::usage(format!("{what}: {e}"))
        .with_hint("check the remote's URL and credentials (--remote, FACEBUILD_REMOTE, AWS_*)")
}

fn check_pipeline_name(pipeline: &str) -> Result<()> {
    crate::cache::validate::check_name("pipeline", pipeline)
        .map_err(|e| Error::usage(e.to_string()))
}

/// The index as the remote holds it, checked against `trusted`: None when there is none. An
/// index no trusted key signed is refused.
fn read_index(remote: &Remote, pipeline: &str, trusted: &[VerifyingKey]) -> Result<Option<Index>> {
    check_pipeline_name(pipeline)?;
    let path = index_path(pipeline);
    let Some(bytes) = remote
        .get_bytes(&path)
        .map_err(|e| remote_err(&format!("reading {path}"), e))?
    else {
        return Ok(None);
    };
    let refused = |why: String| {
        Error::usage(format!(
            "refusing the release index {path} on {}: {why}",
            remote.display()
        ))
        .with_hint("publish it again from the machine that holds the release key, or trust its public key (--public-key, FACEBUILD_RELEASE_TRUSTED_KEYS)")
    };
    let env: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| refused(format!("not JSON ({e})")))?;
    let mut unsigned = false;
    for key in trusted {
        match crate::signing::open_envelope(&env, key) {
            Ok((statement, Some(true))) => {
                let index: Index = serde_json::from_value(statement)
                    .map_err(|e| refused(format!("not an index ({e})")))?;
                if index.format != INDEX_FORMAT || index.pipeline != pipeline {
                    return Err(refused(format!(
                        "it is `{}` for `{}`, not {INDEX_FORMAT} for `{pipeline}`",
                        index.format, index.pipeline
                    )));
                }
                return Ok(Some(index));
            }
            Ok((_, None)) => unsigned = true,
            Ok((_, Some(false))) => {}
            Err(e) => return Err(refused(e.to_string())),
        }
    }
    Err(refused(if unsigned {
        "it is unsigned".into()
    } else {
        format!("no trusted key signed it ({} trusted)", trusted.len())
    }))
}

fn write_index(remote: &Remote, index: &Index, key: &SigningKey) -> Result<()> {
    let statement = serde_json::to_value(index).map_err(anyhow::Error::from)?;
    let env = crate::signing::envelope(&statement, Some(key))?;
    let bytes = serde_json::to_vec_pretty(&env).map_err(anyhow::Error::from)?;
    let path = index_path(&index.pipeline);
    remote
        .put_bytes(&path, bytes)
        .map_err(|e| remote_err(&format!("writing {path}"), e))
}

fn refuse_read_only(remote: &Remote, what: &str) -> Result<()> {
    if remote.read_only() {
        return Err(Error::usage(format!(
            "the remote {} is read-only: {what} writes to it",
            remote.display()
        ))
        .with_hint("run it where the remote is writable (no --remote-read-only / FACEBUILD_REMOTE_READ_ONLY)"));
    }
    Ok(())
}

fn now() -> String {
    crate::util::rfc3339(super::now())
}

/// What `release publish` did.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Published {
    pub pipeline: String,
    pub version: String,
    pub remote: String,
    pub files: usize,
    /// Blobs sent, and blobs the remote already held (not sent again).
    pub blobs_uploaded: u64,
    pub bytes_uploaded: u64,
    pub blobs_reused: u64,
    /// Whether the version was already in the index with these files.
    pub already_published: bool,
}

/// Publish `releases/<pipeline>/<version>` (default: current) to the remote. The release
/// must verify here first: SHA256SUMS and a model.sig made with `key`.
pub(crate) fn publish(
    remote: &Remote,
    root: &Utf8Path,
    pipeline: &str,
    version: Option<&str>,
    key: &SigningKey,
) -> Result<Published> {
    refuse_read_only(remote, "publish")?;
    check_pipeline_name(pipeline)?;
    let pipeline_dir = crate::util::child_of(root, pipeline)?;
    let version = match version {
        Some(v) => v.to_string(),
        None => super::current_version(&pipeline_dir).ok_or_else(|| {
            Error::usage(format!("{pipeline_dir} has no current release"))
                .with_hint("build one with `facebuild run`, or name a version: NAME@VERSION")
        })?,
    };
    let vdir = crate::util::child_of(&pipeline_dir, &version)?;
    if !vdir.is_dir() {
        return Err(Error::usage(format!("no release {vdir}"))
            .with_hint("`facebuild release list` shows the releases here"));
    }
    let mut problems = super::verify_version(&vdir)?;
    if vdir.join(crate::signing::SIGNATURE_FILE).is_file() {
        problems.extend(crate::signing::verify_dir(&vdir, key.verifying_key())?);
    } else {
        problems.push("it is unsigned (built without FACEBUILD_RELEASE_SIGNING_KEY); rebuild it with the key: `facebuild run FILE --no-cache --target <release step>`".into());
    }
    if !problems.is_empty() {
        return Err(Error::usage(format!(
            "refusing to publish {vdir}: {}",
            problems.join("; ")
        ))
        .with_hint("only a release that verifies with the release key is published"));
    }
    let digests = crate::signing::files_of(&vdir)?;
    let mut files = Vec::new();
    let mut blobs = Vec::new();
    // model.sig is among what is published (files_of leaves it out: it signs the others).
    let mut paths: Vec<String> = digests.keys().cloned().collect();
    paths.push(crate::signing::SIGNATURE_FILE.into());
    for rel in paths {
        let local = vdir.join(&rel);
        let sha256 = match digests.get(&rel) {
            Some(d) => d.clone(),
            None => super::sha256_file(&local)?,
        };
        let bytes = std::fs::read(&local).fs_context(&local)?;
        let blake3 = blake3::hash(&bytes).to_hex().to_string();
        let size = bytes.len() as u64;
        blobs.push((
            BlobRef {
                digest: blake3.clone(),
                size,
            },
            local,
        ));
        files.push(RemoteFile {
            path: rel,
            size,
            blake3,
            sha256,
        });
    }
    let trusted = [*key.verifying_key()];
    let mut index = read_index(remote, pipeline, &trusted)?.unwrap_or_else(|| Index {
        format: INDEX_FORMAT.into(),
        pipeline: pipeline.into(),
        ..Default::default()
    });
    let already = match index.versions.get(&version) {
        Some(v) if v.files == files => true,
        Some(_) => {
            return Err(Error::usage(format!(
                "{pipeline}@{version} is already published with other files; releases are immutable"
            ))
            .with_hint("give the release a new `version:` (or leave it unset: the default is derived from the content)"));
        }
        None => false,
    };
    remote
        .ensure_blobs(&blobs)
        .map_err(|e| remote_err("uploading the release's files", e))?;
    let sent = remote.finish();
    if !already {
        index.versions.insert(
            version.clone(),
            PublishedVersion {
                published: now(),
                files: files.clone(),
            },
        );
        write_index(remote, &index, key)?;
    }
    Ok(Published {
        pipeline: pipeline.into(),
        version,
        remote: remote.display().to_string(),
        files: files.len(),
        blobs_uploaded: sent.blobs_uploaded,
        bytes_uploaded: sent.bytes_uploaded,
        blobs_reused: files.len() as u64 - sent.blobs_uploaded.min(files.len() as u64),
        already_published: already,
    })
}

/// What `release promote` or a channel rollback did.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ChannelMove {
    pub pipeline: String,
    pub channel: String,
    pub current: String,
    pub previous: Option<String>,
    pub history: Vec<ChannelEvent>,
}

fn moved(index: &Index, pipeline: &str, channel: &str, previous: Option<String>) -> ChannelMove {
    let c = &index.channels[channel];
    ChannelMove {
        pipeline: pipeline.into(),
        channel: channel.into(),
        current: c.stack.last().cloned().unwrap_or_default(),
        previous,
        history: c.history.clone(),
    }
}

/// The pipeline's index, for a command (`what`) that moves `channel`: the remote writable,
/// the channel a plain name, the index signed by `key`.
fn index_to_move(
    remote: &Remote,
    pipeline: &str,
    channel: &str,
    key: &SigningKey,
    what: &str,
) -> Result<Index> {
    refuse_read_only(remote, what)?;
    crate::cache::validate::check_name("channel", channel)
        .map_err(|e| Error::usage(e.to_string()))?;
    read_index(remote, pipeline, &[*key.verifying_key()])?
        .ok_or_else(|| not_published(remote, pipeline))
}

/// Make `version` current on `channel`.
pub(crate) fn promote(
    remote: &Remote,
    pipeline: &str,
    version: &str,
    channel: &str,
    key: &SigningKey,
) -> Result<ChannelMove> {
    let mut index = index_to_move(remote, pipeline, channel, key, "promote")?;
    if !index.versions.contains_key(version) {
        return Err(Error::usage(format!(
            "{pipeline}@{version} is not published on {} (published: {})",
            remote.display(),
            index
                .versions
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .with_hint("publish it first: `facebuild release publish NAME@VERSION`"));
    }
    let c = index.channels.entry(channel.to_string()).or_default();
    let previous = c.stack.last().cloned();
    if previous.as_deref() != Some(version) {
        c.stack.push(version.to_string());
        c.history.push(ChannelEvent {
            event: "promote".into(),
            version: version.into(),
            from: previous.clone(),
            at: now(),
        });
        write_index(remote, &index, key)?;
    }
    Ok(moved(&index, pipeline, channel, previous))
}

fn not_published(remote: &Remote, pipeline: &str) -> Error {
    Error::usage(format!(
        "nothing of `{pipeline}` is published on {}",
        remote.display()
    ))
    .with_hint("publish a release first: `facebuild release publish NAME`")
}

/// Move `channel` back to the version promoted before its current one.
pub(crate) fn rollback_channel(
    remote: &Remote,
    pipeline: &str,
    channel: &str,
    key: &SigningKey,
) -> Result<ChannelMove> {
    let mut index = index_to_move(remote, pipeline, channel, key, "rollback")?;
    let Some(c) = index.channels.get_mut(channel) else {
        return Err(Error::usage(format!(
            "`{pipeline}` has no channel `{channel}` on {}",
            remote.display()
        ))
        .with_hint(
            "promote a version first: `facebuild release promote NAME@VERSION --channel CHANNEL`",
        ));
    };
    if c.stack.len() < 2 {
        return Err(Error::usage(format!(
            "`{pipeline}` channel `{channel}` has no earlier version to roll back to (it holds {})",
            c.stack.last().map_or("nothing", String::as_str)
        ))
        .with_hint("promote the version you want instead"));
    }
    let from = c.stack.pop();
    let to = c.stack.last().cloned().unwrap_or_default();
    c.history.push(ChannelEvent {
        event: "rollback".into(),
        version: to,
        from: from.clone(),
        at: now(),
    });
    write_index(remote, &index, key)?;
    Ok(moved(&index, pipeline, channel, from))
}

/// What `release pull` did.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Pulled {
    pub pipeline: String,
    pub version: String,
    /// The channel asked for, when it was one.
    pub channel: Option<String>,
    pub dir: Utf8PathBuf,
    pub files: usize,
    pub blobs_downloaded: u64,
    /// `signed` and the key's sha256 hint.
    pub signature: String,
}

/// Pull `pipeline@reference` (a channel, a version; default: the newest published) into
/// `to`: every file checked, the folder verified with a trusted key, or nothing is written.
pub(crate) fn pull(
    remote: &Remote,
    store: &Store,
    pipeline: &str,
    reference: Option<&str>,
    to: &Utf8Path,
    trusted: &[VerifyingKey],
) -> Result<Pulled> {
    if trusted.is_empty() {
        return Err(Error::usage("no trusted release key: a pull verifies what it gets")
            .with_hint("give the release's public key: --public-key PEM (or FACEBUILD_RELEASE_TRUSTED_KEYS)"));
    }
    let index =
        read_index(remote, pipeline, trusted)?.ok_or_else(|| not_published(remote, pipeline))?;
    let (version, channel) = resolve(remote, &index, reference)?;
    let files = &index.versions[&version].files;
    for f in files {
        if f.path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(Error::usage(format!(
                "refusing {pipeline}@{version}: its index names the path `{}`, outside the release",
                f.path
            )));
        }
    }
    let blobs: Vec<BlobRef> = files
        .iter()
        .map(|f| BlobRef {
            digest: f.blake3.clone(),
            size: f.size,
        })
        .collect();
    remote.fetch(&blobs, store).map_err(|e| {
        Error::usage(format!("refusing {pipeline}@{version}: {e}"))
            .with_hint("the remote holds other bytes than were published: publish the release again from the machine that built it")
    })?;
    let parent = to
        .parent()
        .filter(|p| !p.as_str().is_empty())
        .unwrap_or(Utf8Path::new("."));
    std::fs::create_dir_all(parent).fs_context(parent)?;
    let tmp = parent.join(format!(
        ".{}.pull{}",
        to.file_name().unwrap_or("release"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = materialize(store, files, &tmp, trusted);
    let hint = match result {
        Ok(h) => h,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(Error::usage(format!(
                "refusing {pipeline}@{version} from {}: {e}",
                remote.display()
            ))
            .with_hint("nothing was written; the release on the remote does not verify with the trusted keys"));
        }
    };
    // Replace what `to` held only once the new release verified.
    if to.exists() {
        let old = parent.join(format!(
            ".{}.old{}",
            to.file_name().unwrap_or("release"),
            std::process::id()
        ));
        std::fs::rename(to, &old).fs_context(to)?;
        std::fs::rename(&tmp, to).fs_context(to)?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&tmp, to).fs_context(to)?;
    }
    let downloaded = remote.finish();
    Ok(Pulled {
        pipeline: pipeline.into(),
        version,
        channel,
        dir: to.to_owned(),
        files: files.len(),
        blobs_downloaded: downloaded.blobs_downloaded,
        signature: format!("signed (public key sha256 {hint})"),
    })
}

/// The version `reference` names in `index` (a channel's current, a version; none: the
/// newest published), and the channel when it was one.
fn resolve(
    remote: &Remote,
    index: &Index,
    reference: Option<&str>,
) -> Result<(String, Option<String>)> {
    let pipeline = &index.pipeline;
    Ok(match reference {
        Some(r) if index.channels.contains_key(r) => (
            index.channels[r].stack.last().cloned().ok_or_else(|| {
                Error::usage(format!("channel `{r}` of `{pipeline}` holds no version"))
            })?,
            Some(r.to_string()),
        ),
        Some(r) if index.versions.contains_key(r) => (r.to_string(), None),
        Some(r) => {
            return Err(Error::usage(format!(
                "`{pipeline}@{r}`: no such channel or version on {} (channels: {}; versions: {})",
                remote.display(),
                index
                    .channels
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                index
                    .versions
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .with_hint("pull NAME@CHANNEL or NAME@VERSION"));
        }
        None => (
            index
                .versions
                .iter()
                .max_by(|a, b| a.1.published.cmp(&b.1.published))
                .map(|(v, _)| v.clone())
                .ok_or_else(|| not_published(remote, pipeline))?,
            None,
        ),
    })
}

/// Write `files` from the store into `tmp`, each checked by sha256, and verify the folder
/// (SHA256SUMS, model.sig and provenance) with one of `trusted`: that key's hint.
fn materialize(
    store: &Store,
    files: &[RemoteFile],
    tmp: &Utf8Path,
    trusted: &[VerifyingKey],
) -> Result<String> {
    for f in files {
        let dest = tmp.join(&f.path);
        std::fs::create_dir_all(dest.parent().unwrap_or(tmp)).fs_context(&dest)?;
        let src = store.blob_path(&f.blake3);
        std::fs::copy(&src, &dest).fs_context(&src)?;
        let got = super::sha256_file(&dest)?;
        if got != f.sha256 {
            return Err(Error::usage(format!(
                "`{}` has sha256 {got}, the signed index says {}",
                f.path, f.sha256
            )));
        }
    }
    let mut problems = super::verify_version(tmp)?;
    if !tmp.join(crate::signing::SIGNATURE_FILE).is_file() {
        problems.push("it has no model.sig".into());
        return Err(Error::usage(problems.join("; ")));
    }
    for key in trusted {
        let mut p = crate::signing::verify_dir(tmp, key)?;
        if tmp
            .join(super::super::provenance::PROVENANCE_FILE)
            .is_file()
        {
            p.extend(super::super::provenance::verify(tmp, key)?);
        }
        if p.is_empty() && problems.is_empty() {
            return crate::signing::key_hint(key);
        }
        problems.extend(p);
    }
    Err(Error::usage(problems.join("; ")))
}
