//! The remote cache: one store shared by a CI fleet, behind `object_store` (S3-compatible
//! stores, plain HTTP with WebDAV PUT such as nginx, or a shared filesystem).
//!
//! Layout under the remote's prefix: `cas/<blake3>` holds blobs, `ac/<key>.json` action
//! records. A record is an envelope (`facebuild.action/1`) carrying the record's JSON as a
//! string and, from trusted writers, an ed25519 signature over exactly those bytes.
//!
//! Rules, after Bazel and sccache:
//! - lookup goes local, then remote; a remote record is used only after its format, its key
//!   and (when trusted keys are configured) its signature check out;
//! - blobs are fetched only when needed, and re-hashed with blake3 before they enter the local
//!   store: a mismatch is warned about, refused, and the step is rebuilt;
//! - uploads go blobs first (HEAD, then PUT if missing), the record last, in parallel with a
//!   bound; create-only PUTs are never relied on (nginx and some S3 servers ignore them): a
//!   blob's name is its content, so a racing overwrite writes the same bytes;
//! - a remote that is down, slow or refuses credentials gives one warning and the run goes on
//!   locally; an upload failure never fails a build unless `--remote-required` is set.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use futures::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::store::{ActionRecord, BlobRef, Store};
use crate::error::{Error, Result};

/// The envelope format this facebuild writes and reads. A record in another format is a
/// miss: an older facebuild never misreads a newer record.
pub const RECORD_FORMAT: &str = "facebuild.action/1";

/// Uploads and downloads in flight at once.
const PARALLEL: usize = 4;
/// Range size of a ranged download (blobs of 4 ranges or more are fetched in ranges).
const RANGE: u64 = 8 << 20;
/// Larger claimed sizes are not preallocated (the digest check refuses them anyway).
const MAX_RANGED: u64 = 64 << 30;
/// A record envelope larger than this is refused unread (records are a few KiB).
const MAX_RECORD_BYTES: u64 = 16 << 20;

/// How the remote is used (resolved by `settings::remote`).
#[derive(Clone)]
pub struct RemoteConfig {
    pub url: String,
    pub read_only: bool,
    pub required: bool,
    pub signing_key: Option<SigningKey>,
    pub trusted: Vec<VerifyingKey>,
    pub timeout: Duration,
}

impl std::fmt::Debug for RemoteConfig {
    // Never prints key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteConfig")
            .field("url", &redact(&self.url))
            .field("read_only", &self.read_only)
            .field("signing", &self.signing_key.is_some())
            .field("trusted_keys", &self.trusted.len())
            .finish()
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn parse_signing_key(s: &str) -> Result<SigningKey> {
    let b: [u8; 32] = unhex(s).and_then(|v| v.try_into().ok()).ok_or_else(|| {
        Error::usage("FACEBUILD_REMOTE_SIGNING_KEY is not 64 hex characters (an ed25519 seed)")
            .with_hint("make a key pair with `facebuild cache keygen`")
    })?;
    Ok(SigningKey::from_bytes(&b))
}

pub fn parse_public_key(s: &str) -> Result<VerifyingKey> {
    let bad = || {
        Error::usage(format!(
            "FACEBUILD_REMOTE_TRUSTED_KEYS: `{}` is not an ed25519 public key (64 hex characters)",
            s.chars().take(16).collect::<String>()
        ))
        .with_hint("use the `public` line that `facebuild cache keygen` printed")
    };
    let b: [u8; 32] = unhex(s).and_then(|v| v.try_into().ok()).ok_or_else(bad)?;
    VerifyingKey::from_bytes(&b).map_err(|_| bad())
}

/// A new signing key and its public key, hex.
pub fn keygen() -> Result<(String, String)> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    let k = SigningKey::from_bytes(&seed);
    Ok((hex(&seed), hex(k.verifying_key().as_bytes())))
}

/// The URL with any user:password removed, for logs and reports.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (auth, tail) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            match auth.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}{tail}"),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

/// What the remote did in a run, for the summary and `--json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RemoteReport {
    /// The remote, credentials removed.
    pub url: String,
    /// `read-write` or `read-only`.
    pub mode: String,
    /// `ok`, or `unavailable (<reason>)`.
    pub status: String,
    /// Steps whose record came from the remote.
    pub hits: u64,
    /// Blobs downloaded (each verified).
    pub blobs_downloaded: u64,
    /// Bytes downloaded.
    pub bytes_downloaded: u64,
    /// Blobs uploaded (missing on the remote).
    pub blobs_uploaded: u64,
    /// Bytes uploaded.
    pub bytes_uploaded: u64,
    /// Action records uploaded.
    pub records_uploaded: u64,
    /// Records or blobs refused: unknown format, bad or missing signature, wrong key, or a
    /// blob whose content does not match its name.
    pub refused: Vec<String>,
    /// Uploads that failed (the build went on).
    pub upload_failures: Vec<String>,
    /// Objects written again because this run refused them (or a record pointing at them):
    /// a rebuilt step's record and every one of its blobs, PUT whatever HEAD said.
    #[serde(default)]
    pub healed: u64,
    /// Refused objects this run could not repair because the remote is read-only here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_healed: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    format: String,
    /// The record's JSON, exactly the bytes that were signed.
    record: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signature: Option<RecordSignature>,
}

#[derive(Serialize, Deserialize)]
struct RecordSignature {
    algorithm: String,
    public_key: String,
    value: String,
}

/// A configured remote, with its connection and what happened so far in this run.
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    cfg: RemoteConfig,
    display: String,
    rt: tokio::runtime::Runtime,
    /// Set on the first failure that is not "not found": the run goes on locally.
    down: Mutex<Option<String>>,
    /// Keys whose remote record or blobs were refused in this run.
    refused_keys: Mutex<HashSet<String>>,
    /// Blobs refused in this run (wrong digest or size): a later upload writes them again.
    refused_blobs: Arc<Mutex<HashSet<String>>>,
    refused: Mutex<Vec<String>>,
    not_healed: Mutex<Vec<String>>,
    upload_failures: Arc<Mutex<Vec<String>>>,
    uploads: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    gate: Arc<tokio::sync::Semaphore>,
    hits: AtomicU64,
    blobs_down: AtomicU64,
    bytes_down: AtomicU64,
    up: Counters,
    records_up: Arc<AtomicU64>,
    upload_started: Mutex<Option<Instant>>,
}

/// Why a remote operation failed, in one line for a warning, a report or an error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    /// Marked down earlier in this run; the words of the failure that did it.
    #[error("the remote is unavailable ({0})")]
    Unavailable(String),
    /// This machine only reads the remote (`--remote-read-only` or its settings).
    #[error("the remote {0} is read-only")]
    ReadOnly(String),
    /// The store answered with an error: network, credentials, the server.
    #[error("{0}")]
    Store(String),
    /// What the remote holds was refused: missing, or not the size or digest its record says.
    #[error("{0}")]
    Refused(String),
    /// A file here could not be read or written.
    #[error("{path}: {message}")]
    Local { path: String, message: String },
}

impl RemoteError {
    fn local(path: impl std::fmt::Display, e: impl std::fmt::Display) -> RemoteError {
        RemoteError::Local {
            path: path.to_string(),
            message: e.to_string(),
        }
    }
}

type RemoteResult<T> = std::result::Result<T, RemoteError>;

fn obj_err(e: object_store::Error) -> RemoteError {
    // One line, bounded: the warning names the remote, and the reason must stay readable.
    let s = e.to_string().replace('\n', " ");
    RemoteError::Store(if s.len() > 300 {
        format!("{}...", &s[..s.floor_char_boundary(300)])
    } else {
        s
    })
}

/// What one upload counts: blobs and bytes written, and objects healed.
#[derive(Clone)]
struct Counters {
    blobs: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    healed: Arc<AtomicU64>,
}

/// HEAD `remote`; when it is missing, PUT the file `local` there and count it (blobs,
/// bytes). A blob's name is its content, so one already there is never written again,
/// unless `heal`: this run refused it (or a record that pointed at it), so what is there
/// may be bad, and it is written whatever HEAD says.
async fn put_if_missing(
    st: &dyn ObjectStore,
    remote: &ObjPath,
    local: &camino::Utf8Path,
    heal: bool,
    c: &Counters,
    unreadable: impl FnOnce(std::io::Error) -> RemoteError,
) -> RemoteResult<()> {
    if !heal {
        match st.head(remote).await {
            Ok(_) => return Ok(()),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(obj_err(e)),
        }
    }
    let data = tokio::fs::read(local).await.map_err(unreadable)?;
    let n = data.len() as u64;
    st.put(remote, PutPayload::from(data))
        .await
        .map_err(obj_err)?;
    c.blobs.fetch_add(1, Ordering::Relaxed);
    c.bytes.fetch_add(n, Ordering::Relaxed);
    if heal {
        c.healed.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

impl Remote {
    /// Connect (lazily: nothing is sent until the first lookup).
    pub fn open(cfg: RemoteConfig) -> Result<Remote> {
        use object_store::{BackoffConfig, ClientOptions, RetryConfig};
        let display = redact(&cfg.url);
        let bad = |why: String| {
            Error::usage(format!("remote `{display}`: {why}")).with_hint(
                "use s3://bucket/prefix, http(s)://host/prefix or file:///path (--remote or FACEBUILD_REMOTE)",
            )
        };
        // reqwest is built without a crypto provider (no aws-lc-sys): TLS uses ring's. A
        // provider already installed (by an embedding program) is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let options = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(cfg.timeout)
            .with_allow_http(true);
        // Bounded: a remote that is down costs seconds, never a hung run.
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 2,
            retry_timeout: Duration::from_secs(15),
        };
        let (store, prefix): (Arc<dyn ObjectStore>, String) = if let Some(rest) =
            cfg.url.strip_prefix("s3://")
        {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket".into()));
            }
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_client_options(options)
                .with_retry(retry);
            if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err()
            {
                b = b.with_region("us-east-1");
            }
            // Self-hosted stores (an endpoint is set) are addressed path-style.
            if std::env::var("AWS_ENDPOINT_URL").is_ok() || std::env::var("AWS_ENDPOINT").is_ok() {
                b = b.with_virtual_hosted_style_request(false);
            }
            (
                Arc::new(b.build().map_err(|e| bad(obj_err(e).to_string()))?),
                prefix.to_string(),
            )
        } else if cfg.url.starts_with("http://") || cfg.url.starts_with("https://") {
            let s = object_store::http::HttpBuilder::new()
                .with_url(cfg.url.trim_end_matches('/'))
                .with_client_options(options)
                .with_retry(retry)
                .build()
                .map_err(|e| bad(obj_err(e).to_string()))?;
            (Arc::new(s), String::new())
        } else if let Some(path) = cfg.url.strip_prefix("file://") {
            std::fs::create_dir_all(path).map_err(|e| bad(e.to_string()))?;
            let s = object_store::local::LocalFileSystem::new_with_prefix(path)
                .map_err(|e| bad(obj_err(e).to_string()))?;
            (Arc::new(s), String::new())
        } else {
            return Err(bad("unknown scheme".into()));
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("facebuild-remote")
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)?;
        Ok(Remote {
            store,
            prefix: ObjPath::from(prefix.trim_matches('/')),
            display,
            cfg,
            rt,
            down: Mutex::new(None),
            refused_keys: Mutex::new(HashSet::new()),
            refused_blobs: Arc::new(Mutex::new(HashSet::new())),
            refused: Mutex::new(Vec::new()),
            not_healed: Mutex::new(Vec::new()),
            upload_failures: Arc::new(Mutex::new(Vec::new())),
            uploads: Mutex::new(Vec::new()),
            gate: Arc::new(tokio::sync::Semaphore::new(PARALLEL)),
            hits: AtomicU64::new(0),
            blobs_down: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            up: Counters {
                blobs: Arc::new(AtomicU64::new(0)),
                bytes: Arc::new(AtomicU64::new(0)),
                healed: Arc::new(AtomicU64::new(0)),
            },
            records_up: Arc::new(AtomicU64::new(0)),
            upload_started: Mutex::new(None),
        })
    }

    /// The remote as logs name it (no credentials).
    pub fn display(&self) -> &str {
        &self.display
    }

    fn path(&self, rel: &str) -> ObjPath {
        if self.prefix.as_ref().is_empty() {
            ObjPath::from(rel)
        } else {
            ObjPath::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn record_path(&self, key: &str) -> ObjPath {
        self.path(&format!("ac/{key}.json"))
    }

    fn blob_path(&self, digest: &str) -> ObjPath {
        self.path(&format!("cas/{digest}"))
    }

    /// Why the remote is not being used, if it failed in this run.
    pub fn unavailable(&self) -> Option<String> {
        self.down.lock().ok().and_then(|d| d.clone())
    }

    /// Stop using the remote for this run, with one warning.
    fn mark_down(&self, why: String) {
        let Ok(mut d) = self.down.lock() else { return };
        if d.is_none() {
            tracing::warn!(
                "remote cache {} is unavailable ({why}); continuing with the local cache",
                self.display
            );
            *d = Some(why);
        }
    }

    fn refuse(&self, key: &str, why: String) {
        tracing::warn!("remote cache {}: {why}", self.display);
        if let Ok(mut r) = self.refused_keys.lock() {
            r.insert(key.to_string());
        }
        if let Ok(mut r) = self.refused.lock() {
            r.push(why);
        }
    }

    /// Whether `key` was refused in this run (a bad record or a blob that failed its digest).
    pub fn is_refused(&self, key: &str) -> bool {
        self.refused_keys
            .lock()
            .map(|r| r.contains(key))
            .unwrap_or(false)
    }

    /// Mark `key` refused: its blobs failed verification, so the step is rebuilt.
    pub fn refuse_key(&self, key: &str, why: String) {
        self.refuse(key, why);
    }

    /// The remote's URL as configured (with any credentials: for a job's environment only).
    pub fn url(&self) -> &str {
        &self.cfg.url
    }

    /// The validated record under `key` (of the step kind `kind`, when given), or None
    /// (absent, refused, or the remote is down).
    pub fn lookup(&self, key: &str, kind: Option<&str>) -> Option<ActionRecord> {
        let r = self.lookup_built(key, kind);
        if r.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// [`Remote::lookup`] of a result a job built for this run (not counted as a hit).
    pub fn lookup_built(&self, key: &str, kind: Option<&str>) -> Option<ActionRecord> {
        if self.unavailable().is_some() || self.is_refused(key) {
            return None;
        }
        if !super::validate::is_digest(key) {
            return None;
        }
        let path = self.record_path(key);
        let got = self.rt.block_on(async {
            match self.store.get(&path).await {
                Ok(r) if r.meta.size > MAX_RECORD_BYTES => Ok(Some(Err(r.meta.size))),
                Ok(r) => r.bytes().await.map(|b| Some(Ok(b))),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        let bytes = match got {
            Ok(Some(Ok(b))) => b,
            Ok(Some(Err(size))) => {
                self.refuse(
                    key,
                    format!(
                        "record {key}: {size} bytes, larger than any record ({MAX_RECORD_BYTES}); treated as a miss"
                    ),
                );
                return None;
            }
            Ok(None) => return None,
            Err(e) => {
                self.mark_down(obj_err(e).to_string());
                return None;
            }
        };
        match open_envelope(key, &bytes, &self.cfg.trusted, kind) {
            Ok(rec) => Some(rec),
            Err(why) => {
                self.refuse(key, format!("record {key}: {why}; treated as a miss"));
                None
            }
        }
    }

    /// Fetch every blob of `blobs` that the local store lacks, verifying each with blake3
    /// before it enters the store. Err names the first blob that failed.
    pub fn fetch(&self, blobs: &[BlobRef], store: &Store) -> RemoteResult<()> {
        if let Some(why) = self.unavailable() {
            return Err(RemoteError::Unavailable(why));
        }
        for b in blobs {
            super::validate::check_blob("blob", b)
                .map_err(|e| RemoteError::Refused(format!("refused: {e}")))?;
        }
        let missing: Vec<&BlobRef> = blobs
            .iter()
            .filter(|b| !store.verify_blob(&b.digest).unwrap_or(false))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let results: Vec<RemoteResult<u64>> = self.rt.block_on(async {
            futures::stream::iter(missing.iter().map(|b| self.fetch_one(b, store)))
                .buffer_unordered(PARALLEL)
                .collect()
                .await
        });
        for r in results {
            let n = r?;
            self.blobs_down.fetch_add(1, Ordering::Relaxed);
            self.bytes_down.fetch_add(n, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn fetch_one(&self, blob: &BlobRef, store: &Store) -> RemoteResult<u64> {
        let dest = store.blob_path(&blob.digest);
        let dir = dest.parent().expect("blob paths have a parent");
        std::fs::create_dir_all(dir).map_err(|e| RemoteError::local(dir, e))?;
        let mut tmp =
            tempfile::NamedTempFile::new_in(dir).map_err(|e| RemoteError::local(dir, e))?;
        // Large blobs come in ranges, in parallel: one stream from a server such as s3s-fs
        // is far slower than the link. The record's size is only a hint: a wrong one fails
        // the digest check like any other corruption.
        if blob.size >= 4 * RANGE && blob.size <= MAX_RANGED {
            return self.fetch_ranged(blob, tmp, &dest).await;
        }
        let mut stream = self
            .store
            .get(&self.blob_path(&blob.digest))
            .await
            .map_err(|e| self.transfer_error(e, blob))?
            .into_stream();
        let mut hasher = blake3::Hasher::new();
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.transfer_error(e, blob))?;
            hasher.update(&chunk);
            n += chunk.len() as u64;
            // Stop as soon as it is longer than its record says: a hostile or corrupt
            // object never fills the disk.
            if n > blob.size {
                return Err(self.refuse_blob(
                    blob,
                    format!(
                        "blob {} on the remote is longer than its record's {} bytes: corrupt, refused",
                        blob.digest, blob.size
                    ),
                ));
            }
            tmp.write_all(&chunk)
                .map_err(|e| RemoteError::local(&dest, e))?;
        }
        if n != blob.size {
            return Err(self.refuse_blob(
                blob,
                format!(
                    "blob {} from the remote is {n} bytes, its record says {}: corrupt, refused",
                    blob.digest, blob.size
                ),
            ));
        }
        let got = hasher.finalize().to_hex().to_string();
        self.keep(blob, &got, tmp, &dest)?;
        Ok(n)
    }

    /// A failed download in words: a blob that is not there is a refusal of that blob; any
    /// other failure marks the remote down for the rest of the run.
    fn transfer_error(&self, e: object_store::Error, blob: &BlobRef) -> RemoteError {
        if let object_store::Error::NotFound { .. } = e {
            return RemoteError::Refused(format!("blob {} is not on the remote", blob.digest));
        }
        let why = obj_err(e);
        self.mark_down(why.to_string());
        why
    }

    /// Download a large blob as parallel range requests written in place, then hash it.
    async fn fetch_ranged(
        &self,
        blob: &BlobRef,
        tmp: tempfile::NamedTempFile,
        dest: &camino::Utf8Path,
    ) -> RemoteResult<u64> {
        use std::os::unix::fs::FileExt;
        let path = self.blob_path(&blob.digest);
        tmp.as_file()
            .set_len(blob.size)
            .map_err(|e| RemoteError::local(dest, e))?;
        let ranges: Vec<std::ops::Range<u64>> = (0..blob.size)
            .step_by(RANGE as usize)
            .map(|s| s..(s + RANGE).min(blob.size))
            .collect();
        let file = tmp.as_file();
        let results: Vec<RemoteResult<()>> =
            futures::stream::iter(ranges.into_iter().map(|r| {
                let path = path.clone();
                async move {
                    let bytes = self
                        .store
                        .get_range(&path, r.clone())
                        .await
                        .map_err(|e| self.transfer_error(e, blob))?;
                    if bytes.len() as u64 != r.end - r.start {
                        return Err(self.refuse_blob(
                            blob,
                            format!(
                                "blob {} is shorter on the remote than its record says: corrupt, refused",
                                blob.digest
                            ),
                        ));
                    }
                    file.write_all_at(&bytes, r.start)
                        .map_err(|e| RemoteError::local(dest, e))
                }
            }))
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        results.into_iter().collect::<RemoteResult<Vec<()>>>()?;
        let mut hasher = blake3::Hasher::new();
        hasher
            .update_mmap_rayon(tmp.path())
            .map_err(|e| RemoteError::local(dest, e))?;
        let got = hasher.finalize().to_hex().to_string();
        self.keep(blob, &got, tmp, dest)?;
        Ok(blob.size)
    }

    /// Remember a refused blob (so a later upload of it writes it again); returns `why`.
    fn refuse_blob(&self, blob: &BlobRef, why: String) -> RemoteError {
        if let Ok(mut r) = self.refused_blobs.lock() {
            r.insert(blob.digest.clone());
        }
        RemoteError::Refused(why)
    }

    /// Move a downloaded blob into the store if it hashes to its name; refuse it otherwise.
    fn keep(
        &self,
        blob: &BlobRef,
        got: &str,
        tmp: tempfile::NamedTempFile,
        dest: &camino::Utf8Path,
    ) -> RemoteResult<()> {
        if got != blob.digest {
            return Err(self.refuse_blob(
                blob,
                format!(
                    "blob {} from the remote hashes to {got}: corrupt, refused",
                    blob.digest
                ),
            ));
        }
        let mut perms = tmp
            .as_file()
            .metadata()
            .map_err(|e| RemoteError::local(dest, e))?
            .permissions();
        perms.set_readonly(true);
        std::fs::set_permissions(tmp.path(), perms).map_err(|e| RemoteError::local(dest, e))?;
        tmp.persist(dest)
            .map_err(|e| RemoteError::local(dest, e.error))?;
        Ok(())
    }

    /// Whether this run writes to the remote.
    pub fn read_only(&self) -> bool {
        self.cfg.read_only
    }

    pub fn writable(&self) -> bool {
        !self.cfg.read_only
    }

    /// Queue the upload of a built step: its blobs (HEAD, PUT when missing), then its
    /// record, signed when a signing key is set. Returns at once; [`Remote::finish`] waits.
    pub fn upload(&self, rec: &ActionRecord, store: &Store) {
        // Refused in this run, the record or one of its blobs: what the remote holds may be
        // bad, so every object of the step is written again.
        let heal = self.is_refused(&rec.key)
            || self
                .refused_blobs
                .lock()
                .is_ok_and(|r| rec.outputs.values().any(|b| r.contains(&b.digest)));
        if !self.writable() {
            if heal {
                tracing::warn!(
                    "remote cache {} holds a bad record or blob for step `{}` (key {}); this machine is read-only, so it is not repaired",
                    self.display,
                    rec.step,
                    &rec.key[..rec.key.len().min(12)]
                );
                if let Ok(mut n) = self.not_healed.lock() {
                    n.push(format!("step `{}` (key {})", rec.step, rec.key));
                }
            }
            return;
        }
        if self.unavailable().is_some() {
            return;
        }
        let Ok(record) = serde_json::to_string(rec) else {
            return;
        };
        let signature = self.cfg.signing_key.as_ref().map(|k| RecordSignature {
            algorithm: "ed25519".into(),
            public_key: hex(k.verifying_key().as_bytes()),
            value: hex(&k.sign(record.as_bytes()).to_bytes()),
        });
        let Ok(envelope) = serde_json::to_vec_pretty(&Envelope {
            format: RECORD_FORMAT.into(),
            record,
            signature,
        }) else {
            return;
        };
        if let Ok(mut t) = self.upload_started.lock() {
            t.get_or_insert_with(Instant::now);
        }
        let blobs: Vec<(ObjPath, camino::Utf8PathBuf)> = rec
            .outputs
            .values()
            .map(|b| (self.blob_path(&b.digest), store.blob_path(&b.digest)))
            .collect();
        let (st, gate, failures) = (
            self.store.clone(),
            self.gate.clone(),
            self.upload_failures.clone(),
        );
        let (counters, records_up) = (self.up.clone(), self.records_up.clone());
        let record_path = self.record_path(&rec.key);
        let step = rec.step.clone();
        let h = self.rt.spawn(async move {
            let put_blob = |remote: ObjPath, local: camino::Utf8PathBuf| {
                let (st, gate, counters) = (st.clone(), gate.clone(), counters.clone());
                async move {
                    let _permit = gate
                        .acquire()
                        .await
                        .map_err(|e| RemoteError::Store(e.to_string()))?;
                    put_if_missing(&*st, &remote, &local, heal, &counters, |e| {
                        RemoteError::local(&local, e)
                    })
                    .await
                }
            };
            let results: Vec<RemoteResult<()>> =
                futures::future::join_all(blobs.into_iter().map(|(r, l)| put_blob(r, l))).await;
            if let Some(e) = results.into_iter().find_map(|r| r.err()) {
                if let Ok(mut f) = failures.lock() {
                    f.push(format!("step `{step}`: {e}"));
                }
                return;
            }
            // The record last: a reader never finds a record whose blobs are not there yet.
            match st.put(&record_path, PutPayload::from(envelope)).await {
                Ok(_) => {
                    records_up.fetch_add(1, Ordering::Relaxed);
                    if heal {
                        counters.healed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    if let Ok(mut f) = failures.lock() {
                        f.push(format!("step `{step}` record: {}", obj_err(e)));
                    }
                }
            }
        });
        if let Ok(mut u) = self.uploads.lock() {
            u.push(h);
        }
    }

    /// Wait for every queued upload (with a progress line), and report the run's traffic.
    pub fn finish(&self) -> RemoteReport {
        let handles: Vec<_> = self
            .uploads
            .lock()
            .map(|mut u| u.drain(..).collect())
            .unwrap_or_default();
        if !handles.is_empty() {
            let pb = crate::progress::spinner("uploading to the remote cache");
            pb.set_prefix("remote");
            self.rt.block_on(async {
                for h in handles {
                    let _ = h.await;
                    pb.set_message(format!(
                        "uploaded {} blobs ({}), {} records",
                        self.up.blobs.load(Ordering::Relaxed),
                        crate::util::human_bytes(self.up.bytes.load(Ordering::Relaxed)),
                        self.records_up.load(Ordering::Relaxed)
                    ));
                }
            });
            pb.finish_and_clear();
        }
        let failures = self
            .upload_failures
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default();
        if let Some(first) = failures.first() {
            tracing::warn!(
                "remote cache {}: {} upload(s) failed, the build is kept locally; first: {first}",
                self.display,
                failures.len()
            );
        }
        RemoteReport {
            url: self.display.clone(),
            mode: if self.cfg.read_only {
                "read-only"
            } else {
                "read-write"
            }
            .into(),
            status: match self.unavailable() {
                Some(why) => format!("unavailable ({why})"),
                None => "ok".into(),
            },
            hits: self.hits.load(Ordering::Relaxed),
            blobs_downloaded: self.blobs_down.load(Ordering::Relaxed),
            bytes_downloaded: self.bytes_down.load(Ordering::Relaxed),
            blobs_uploaded: self.up.blobs.load(Ordering::Relaxed),
            bytes_uploaded: self.up.bytes.load(Ordering::Relaxed),
            records_uploaded: self.records_up.load(Ordering::Relaxed),
            refused: self.refused.lock().map(|r| r.clone()).unwrap_or_default(),
            upload_failures: failures,
            healed: self.up.healed.load(Ordering::Relaxed),
            not_healed: self
                .not_healed
                .lock()
                .map(|n| n.clone())
                .unwrap_or_default(),
        }
    }

    /// Whether `--remote-required` makes this run fail: the remote was unavailable or an
    /// upload failed.
    pub fn required_and_failed(&self, r: &RemoteReport) -> Option<String> {
        if !self.cfg.required {
            return None;
        }
        if r.status != "ok" {
            return Some(format!("remote {} {}", r.url, r.status));
        }
        r.upload_failures
            .first()
            .map(|f| format!("upload to {} failed: {f}", r.url))
    }

    /// Upload what `records` reference (for `cache push`), waiting for it.
    pub fn push(&self, records: &[ActionRecord], store: &Store) -> RemoteReport {
        for r in records {
            self.upload(r, store);
        }
        self.finish()
    }

    /// Make sure every blob of `blobs` is on the remote, now: HEAD each, PUT the missing ones
    /// from the local file given with it. A Slurm job reads its inputs from the remote, so unlike
    /// [`Remote::upload`] this waits, and its failure stops the submission.
    pub fn ensure_blobs(&self, blobs: &[(BlobRef, camino::Utf8PathBuf)]) -> RemoteResult<()> {
        if let Some(why) = self.unavailable() {
            return Err(RemoteError::Unavailable(why));
        }
        if self.cfg.read_only {
            return Err(RemoteError::ReadOnly(self.display.clone()));
        }
        let results: Vec<RemoteResult<()>> = self.rt.block_on(async {
            futures::stream::iter(blobs.iter().map(|(b, local)| {
                let remote = self.blob_path(&b.digest);
                let heal = self
                    .refused_blobs
                    .lock()
                    .is_ok_and(|r| r.contains(&b.digest));
                async move {
                    put_if_missing(&*self.store, &remote, local, heal, &self.up, |e| {
                        RemoteError::Refused(format!(
                            "blob {} is neither on the remote nor here ({local}: {e})",
                            b.digest
                        ))
                    })
                    .await
                }
            }))
            .buffer_unordered(PARALLEL)
            .collect()
            .await
        });
        results.into_iter().collect()
    }

    /// Write a small object under the prefix (a job's spec or log), waiting for it.
    pub fn put_bytes(&self, rel: &str, bytes: Vec<u8>) -> RemoteResult<()> {
        if self.cfg.read_only {
            return Err(RemoteError::ReadOnly(self.display.clone()));
        }
        let path = self.path(rel);
        self.rt
            .block_on(self.store.put(&path, PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(obj_err)
    }

    /// Read a small object under the prefix; Ok(None) when it is not there.
    pub fn get_bytes(&self, rel: &str) -> RemoteResult<Option<Vec<u8>>> {
        let path = self.path(rel);
        self.rt.block_on(async {
            match self.store.get(&path).await {
                Ok(r) => r.bytes().await.map(|b| Some(b.to_vec())).map_err(obj_err),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(obj_err(e)),
            }
        })
    }

    /// Every record key on the remote with its age (for `cache gc --remote`).
    pub fn list(&self, dir: &str) -> RemoteResult<BTreeMap<String, (u64, Duration)>> {
        let prefix = self.path(dir);
        let now = chrono_now();
        self.rt.block_on(async {
            let mut out = BTreeMap::new();
            let mut s = self.store.list(Some(&prefix));
            while let Some(m) = s.next().await {
                let m = m.map_err(obj_err)?;
                let name = m.location.filename().unwrap_or_default().to_string();
                let age = now
                    .checked_sub(Duration::from_secs(
                        m.last_modified.timestamp().max(0) as u64
                    ))
                    .unwrap_or_default();
                out.insert(name, (m.size, age));
            }
            Ok(out)
        })
    }

    /// Delete `rel` paths under the prefix.
    pub fn delete(&self, rel: &[String]) -> RemoteResult<u64> {
        self.rt.block_on(async {
            let mut n = 0;
            for r in rel {
                match self.store.delete(&self.path(r)).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => n += 1,
                    Err(e) => return Err(obj_err(e)),
                }
            }
            Ok(n)
        })
    }
}

/// Check a record envelope: format, signature (when trusted keys are set), key.
fn open_envelope(
    key: &str,
    bytes: &[u8],
    trusted: &[VerifyingKey],
    kind: Option<&str>,
) -> std::result::Result<ActionRecord, String> {
    let env: Envelope =
        serde_json::from_slice(bytes).map_err(|e| format!("not a record envelope ({e})"))?;
    if env.format != RECORD_FORMAT {
        return Err(format!(
            "record format `{}` is not one this facebuild reads ({RECORD_FORMAT})",
            env.format
        ));
    }
    if !trusted.is_empty() {
        let sig = env
            .signature
            .as_ref()
            .ok_or("unsigned, and trusted keys are set")?;
        let pk = unhex(&sig.public_key)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .and_then(|b| VerifyingKey::from_bytes(&b).ok())
            .ok_or("its signature names a malformed public key")?;
        if !trusted.contains(&pk) {
            return Err(format!(
                "signed by key {}..., which is not in FACEBUILD_REMOTE_TRUSTED_KEYS",
                &sig.public_key[..sig.public_key.len().min(12)]
            ));
        }
        let s = unhex(&sig.value)
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .map(|b| ed25519_dalek::Signature::from_bytes(&b))
            .ok_or("malformed signature")?;
        pk.verify(env.record.as_bytes(), &s)
            .map_err(|_| "bad signature: the record was altered or signed by another key")?;
    }
    let rec: ActionRecord =
        serde_json::from_str(&env.record).map_err(|e| format!("unreadable record ({e})"))?;
    if rec.key != key || rec.parts.key() != key {
        return Err("its key does not match what it was stored under".into());
    }
    rec.validate(key, kind)
        .map_err(|e| format!("invalid {e}"))?;
    Ok(rec)
}

fn chrono_now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Credentials in a URL never reach logs or reports.
    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact("https://user:secret@cache.example/p"),
            "https://***@cache.example/p"
        );
        assert_eq!(redact("s3://bucket/prefix"), "s3://bucket/prefix");
        assert_eq!(redact("http://h:1/x"), "http://h:1/x");
    }

    fn envelope(record: &str, signer: Option<&SigningKey>, format: &str) -> Vec<u8> {
        serde_json::to_vec(&Envelope {
            format: format.into(),
            record: record.into(),
            signature: signer.map(|k| RecordSignature {
                algorithm: "ed25519".into(),
                public_key: hex(k.verifying_key().as_bytes()),
                value: hex(&k.sign(record.as_bytes()).to_bytes()),
            }),
        })
        .unwrap()
    }

    fn open_envelope_t(
        key: &str,
        bytes: &[u8],
        trusted: &[VerifyingKey],
    ) -> std::result::Result<ActionRecord, String> {
        open_envelope(key, bytes, trusted, None)
    }

    /// An envelope is opened only in a format this facebuild knows, with the key it is
    /// stored under, and (with trusted keys) a valid signature of a trusted key.
    #[test]
    fn envelopes_are_checked() {
        let rec = crate::validate::testing::record(&[]);
        let key = rec.key.clone();
        let text = serde_json::to_string(&rec).unwrap();
        let (k1, k2) = (
            SigningKey::from_bytes(&[1; 32]),
            SigningKey::from_bytes(&[2; 32]),
        );
        let trusted = [k1.verifying_key()];
        assert!(open_envelope_t(&key, &envelope(&text, None, RECORD_FORMAT), &[]).is_ok());
        let e = open_envelope_t(&key, &envelope(&text, None, "facebuild.action/2"), &[]);
        assert!(e.unwrap_err().contains("not one this facebuild reads"));
        let e = open_envelope_t(
            "0".repeat(64).as_str(),
            &envelope(&text, None, RECORD_FORMAT),
            &[],
        );
        assert!(e.unwrap_err().contains("does not match"));
        assert!(
            open_envelope_t(&key, &envelope(&text, Some(&k1), RECORD_FORMAT), &trusted).is_ok()
        );
        let e = open_envelope_t(&key, &envelope(&text, None, RECORD_FORMAT), &trusted);
        assert!(e.unwrap_err().contains("unsigned"));
        let e = open_envelope_t(&key, &envelope(&text, Some(&k2), RECORD_FORMAT), &trusted);
        assert!(
            e.unwrap_err()
                .contains("not in FACEBUILD_REMOTE_TRUSTED_KEYS")
        );
        let mut env: Envelope =
            serde_json::from_slice(&envelope(&text, Some(&k1), RECORD_FORMAT)).unwrap();
        env.record = env
            .record
            .replace("\"pipeline\":\"p\"", "\"pipeline\":\"q\"");
        let e = open_envelope_t(&key, &serde_json::to_vec(&env).unwrap(), &trusted);
        assert!(e.unwrap_err().contains("bad signature"));
        assert!(open_envelope_t(&key, b"{not json", &[]).is_err());
    }

    /// Fuzz what the remote hands a reader: records with mutated fields (names, digests,
    /// sizes, JSON types, huge values), wrapped in envelopes or damaged as bytes. Bounded in
    /// count, seeded. No input may panic the reader; every accepted record names only
    /// outputs that stay inside their folder; and a poisoned local record never wedges
    /// the store: the next lookup drops it, and a good record then takes its place.
    #[test]
    fn fuzzed_records_never_panic_escape_or_wedge() {
        use crate::validate::testing::{Mutator, record, stays_inside};
        let dir = tempfile::tempdir().unwrap();
        let root = camino::Utf8PathBuf::from_path_buf(dir.path().to_owned()).unwrap();
        let store = Store::open(&root.join("cache")).unwrap();
        // A good record whose blobs are in the store.
        let out = root.join("report.json");
        std::fs::write(&out, b"{}").unwrap();
        let blob = store.ingest(&out).unwrap();
        let mut good = record(&[("report.json", &blob.digest)]);
        good.outputs.get_mut("report.json").unwrap().size = blob.size;
        let key = good.key.clone();
        let good_json = serde_json::to_value(&good).unwrap();
        let (mut cases, mut panics, mut escapes, mut wedged, mut accepted) = (0, 0, 0, 0, 0);
        let mut m = Mutator::new(0x5eed_f00d);
        for i in 0..3000 {
            let mut v = good_json.clone();
            for _ in 0..=m.below(3) {
                v = m.mutate(&v);
            }
            let text = v.to_string();
            let bytes = if i % 5 == 4 {
                m.damage(&envelope(&text, None, RECORD_FORMAT))
            } else {
                envelope(&text, None, RECORD_FORMAT)
            };
            cases += 1;
            // The remote reader.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                open_envelope(&key, &bytes, &[], Some("check"))
            })) {
                Err(_) => panics += 1,
                Ok(Ok(rec)) => {
                    accepted += 1;
                    if !rec.outputs.keys().all(|n| stays_inside(n)) {
                        escapes += 1;
                    }
                }
                Ok(Err(_)) => {}
            }
            // The same bytes as a poisoned local record: the next lookup must not panic or
            // fail, and must leave the store usable.
            let path = store.action_path(&key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text.as_bytes()).unwrap();
            let looked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                store.lookup(&key, Some("check"))
            }));
            match looked {
                Err(_) => panics += 1,
                Ok(Err(_)) => wedged += 1,
                Ok(Ok(Some(r))) if !r.outputs.keys().all(|n| stays_inside(n)) => escapes += 1,
                Ok(Ok(_)) => {}
            }
            store.write_action(&good).unwrap();
            if store.lookup(&key, Some("check")).ok().flatten().is_none() {
                wedged += 1;
            }
        }
        eprintln!(
            "fuzz records: {cases} cases, {accepted} accepted, {panics} panics, {escapes} escapes, {wedged} wedged caches"
        );
        assert_eq!((panics, escapes, wedged), (0, 0, 0));
        assert!(accepted < cases, "the mutations must reach the checks");
        // Nothing was written outside the test's folder.
        assert!(root.join("escaped.xml").symlink_metadata().is_err());
    }

    /// A key pair signs and verifies; keys round-trip through hex.
    #[test]
    fn keys_round_trip() {
        let (seed, public) = keygen().unwrap();
        let k = parse_signing_key(&seed).unwrap();
        let p = parse_public_key(&public).unwrap();
        let sig = k.sign(b"record");
        assert!(p.verify(b"record", &sig).is_ok());
        assert!(p.verify(b"recorD", &sig).is_err());
        assert!(parse_public_key("abc").is_err());
        assert!(parse_signing_key("zz").is_err());
    }
}
