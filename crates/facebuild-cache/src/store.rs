//! The content-addressed store: blobs named by their blake3 digest, action records mapping
//! an action key to the blobs a step produced. Every write is temp + rename; blobs are
//! read-only; a blob whose digest no longer matches is treated as missing and rebuilt.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};

use super::memo::{DigestMemo, hash_file};
use crate::error::{Error, IoContext, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub digest: String,
    pub size: u64,
}

/// What a finished step left in the cache: the run-cache entry of DVC, keyed by action key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionRecord {
    pub key: String,
    pub pipeline: String,
    pub step: String,
    /// What the key was computed from.
    #[serde(flatten)]
    pub parts: crate::KeyParts,
    pub outputs: BTreeMap<String, BlobRef>,
    /// A short machine-readable result of the step (gate figures etc.), shown by status.
    #[serde(default)]
    pub summary: serde_json::Value,
    pub created_unix: u64,
    pub duration_ms: u64,
    /// Where it ran, when not on the machine that ran facebuild (a Slurm job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ran_on: Option<crate::domain::RanOn>,
}

pub struct Store {
    pub root: Utf8PathBuf,
    pub memo: DigestMemo,
}

/// A digest split into its fan-out folder and the rest. Callers pass validated digests; one
/// that is not (too short, not hex) lands in a folder of its own instead of panicking or
/// naming a path outside the store.
fn fan_out(digest: &str) -> (&str, &str) {
    if super::validate::is_digest(digest) {
        digest.split_at(2)
    } else {
        ("invalid", "invalid")
    }
}

pub fn write_atomic(path: &Utf8Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Utf8Path::new("."));
    std::fs::create_dir_all(dir).fs_context(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).fs_context(dir)?;
    tmp.write_all(bytes).fs_context(path)?;
    tmp.as_file().sync_data().fs_context(path)?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

impl Store {
    pub fn open(root: &Utf8Path) -> Result<Store> {
        for d in ["cas", "actions", "tmp"] {
            std::fs::create_dir_all(root.join(d)).fs_context(root.join(d))?;
        }
        let memo = DigestMemo::load(root.join("memo.json"));
        Ok(Store {
            root: root.to_owned(),
            memo,
        })
    }

    pub fn blob_path(&self, digest: &str) -> Utf8PathBuf {
        let (dir, rest) = fan_out(digest);
        self.root.join("cas").join(dir).join(rest)
    }

    pub fn action_path(&self, key: &str) -> Utf8PathBuf {
        let (dir, rest) = fan_out(key);
        self.root
            .join("actions")
            .join(dir)
            .join(format!("{rest}.json"))
    }

    /// A fresh scratch folder for a running step, on the same filesystem as the store so
    /// outputs can be moved in with a rename. Named with this process's id, so a later run
    /// can tell the folders of a killed process from those of a running one.
    pub fn scratch(&self) -> Result<tempfile::TempDir> {
        let tmp = self.root.join("tmp");
        tempfile::Builder::new()
            .prefix(&format!("step-{}-", std::process::id()))
            .tempdir_in(&tmp)
            .fs_context(tmp)
    }

    /// Remove scratch folders whose process is gone (killed with `kill -9`, or a crash):
    /// every run does this at start, so they never pile up waiting for a gc. Returns how
    /// many were removed.
    pub fn reclaim_scratch(&self) -> usize {
        let Ok(rd) = std::fs::read_dir(self.root.join("tmp")) else {
            return 0;
        };
        let mut n = 0;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            // step-<pid>-<random>; older folders without a pid are left to `cache gc`.
            let Some(pid) = name
                .strip_prefix("step-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !std::path::Path::new(&format!("/proc/{pid}")).exists()
                && std::fs::remove_dir_all(e.path()).is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// Hold the lock of one action while it is built, so two runs on this cache never
    /// build the same action at once: the second waits (saying for whom, through
    /// `waiting`), then finds the first one's result in the cache. Polls, so Ctrl-C still
    /// stops a waiting run.
    pub fn lock_action(
        &self,
        key: &str,
        step: &str,
        cancel: &std::sync::atomic::AtomicBool,
        waiting: &dyn Fn(&str),
    ) -> Result<FileLock> {
        let dir = self.root.join("locks");
        std::fs::create_dir_all(&dir).fs_context(&dir)?;
        FileLock::acquire(&dir.join(format!("{key}.lock")), step, cancel, waiting)
    }

    /// Move (or copy) a file into the store; returns its digest.
    pub fn ingest(&self, file: &Utf8Path) -> Result<BlobRef> {
        let digest = hash_file(file)?;
        let size = std::fs::metadata(file).fs_context(file)?.len();
        let dest = self.blob_path(&digest);
        if self.verify_blob(&digest)? {
            return Ok(BlobRef { digest, size });
        }
        let dir = dest.parent().expect("blob paths have a parent");
        std::fs::create_dir_all(dir).fs_context(dir)?;
        // Copy to a temp name in the destination folder, then rename: readers never see
        // a half-written blob, and a crash leaves only a temp file for gc.
        let tmp = tempfile::NamedTempFile::new_in(dir).fs_context(dir)?;
        std::fs::copy(file, tmp.path()).fs_context(file)?;
        let mut perms = std::fs::metadata(tmp.path())
            .fs_context(file)?
            .permissions();
        perms.set_readonly(true);
        std::fs::set_permissions(tmp.path(), perms).fs_context(&dest)?;
        tmp.persist(&dest).map_err(|e| Error::io(&dest, e.error))?;
        Ok(BlobRef { digest, size })
    }

    /// True when the blob exists and its content matches its name. Uses the stat memo, so
    /// an untouched blob is not re-read; a blob touched since it was verified is re-hashed.
    pub fn verify_blob(&self, digest: &str) -> Result<bool> {
        let p = self.blob_path(digest);
        if !p.exists() {
            return Ok(false);
        }
        let d = self.memo.blake3(&p)?;
        if d.blake3 == digest {
            return Ok(true);
        }
        tracing::warn!(
            "cache blob {digest} is corrupt (content hashes to {}); removing it",
            d.blake3
        );
        self.remove_blob(digest);
        Ok(false)
    }

    fn remove_blob(&self, digest: &str) {
        let p = self.blob_path(digest);
        self.memo.forget(&p);
        let _ = std::fs::remove_file(&p);
    }

    /// The record stored under `key`, if it parses and passes [`ActionRecord::validate`].
    /// One that does not is dropped with a warning: it can never be used, and keeping it
    /// would make every later run trip over it.
    pub fn read_action(&self, key: &str) -> Option<ActionRecord> {
        self.read_valid(key, None)
    }

    fn read_valid(&self, key: &str, kind: Option<&str>) -> Option<ActionRecord> {
        if !super::validate::is_digest(key) {
            return None;
        }
        let path = self.action_path(key);
        let bytes = std::fs::read(&path).ok()?;
        let problem = match serde_json::from_slice::<ActionRecord>(&bytes) {
            Ok(rec) => match rec.validate(key, kind) {
                Ok(()) => return Some(rec),
                Err(e) => e.to_string(),
            },
            Err(e) => format!("does not parse ({e})"),
        };
        tracing::warn!(
            "local cache record {path} is invalid: {problem}; dropped, its step will be rebuilt"
        );
        self.drop_action(key);
        None
    }

    /// Remove the record under `key` (a record that cannot be used: its step is rebuilt).
    pub fn drop_action(&self, key: &str) {
        if super::validate::is_digest(key) {
            let _ = std::fs::remove_file(self.action_path(key));
        }
    }

    /// A valid action record (of the step kind `kind`, when given) whose every output blob is
    /// present, of the recorded size and intact; otherwise None (and the broken record is
    /// dropped so the step is rebuilt).
    pub fn lookup(&self, key: &str, kind: Option<&str>) -> Result<Option<ActionRecord>> {
        let Some(rec) = self.read_valid(key, kind) else {
            return Ok(None);
        };
        for (name, blob) in &rec.outputs {
            let size = std::fs::metadata(self.blob_path(&blob.digest)).map(|m| m.len());
            if !self.verify_blob(&blob.digest)? || size.ok() != Some(blob.size) {
                tracing::warn!(
                    "cached output `{name}` of step `{}` is missing, corrupt or not its recorded size; the step will be rebuilt",
                    rec.step
                );
                self.drop_action(key);
                return Ok(None);
            }
        }
        Ok(Some(rec))
    }

    /// Write a record, after the same validation every reader applies: an invalid record
    /// never enters the store.
    pub fn write_action(&self, rec: &ActionRecord) -> Result<()> {
        rec.validate(&rec.key, None).map_err(|e| {
            Error::usage(format!(
                "refusing to store the record of step `{}`: {e}",
                rec.step
            ))
        })?;
        let bytes = serde_json::to_vec_pretty(rec).map_err(anyhow::Error::from)?;
        write_atomic(&self.action_path(&rec.key), &bytes)
    }

    pub fn actions(&self) -> Result<Vec<ActionRecord>> {
        let mut out = Vec::new();
        for (_, _, path) in self.fanned("actions")? {
            if let Ok(b) = std::fs::read(&path)
                && let Ok(r) = serde_json::from_slice::<ActionRecord>(&b)
                && r.validate(&r.key, None).is_ok()
                && self.action_path(&r.key) == path
            {
                out.push(r);
            }
        }
        out.sort_by(|a, b| {
            (a.pipeline.as_str(), a.step.as_str(), a.created_unix).cmp(&(
                b.pipeline.as_str(),
                b.step.as_str(),
                b.created_unix,
            ))
        });
        Ok(out)
    }

    /// Every file in the fan-out folders under `dir` (`cas`, `actions`): its fan-out
    /// prefix, its own name and its path.
    fn fanned(&self, dir: &str) -> Result<Vec<(String, String, Utf8PathBuf)>> {
        let mut out = Vec::new();
        let dir = self.root.join(dir);
        for sub in std::fs::read_dir(&dir).fs_context(&dir)? {
            let sub = sub.fs_context(&dir)?;
            let prefix = sub.file_name().to_string_lossy().to_string();
            let Ok(entries) = std::fs::read_dir(sub.path()) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if let Ok(p) = Utf8PathBuf::from_path_buf(e.path()) {
                    out.push((prefix.clone(), name, p));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn blobs(&self) -> Result<Vec<(String, Utf8PathBuf)>> {
        Ok(self
            .fanned("cas")?
            .into_iter()
            .filter(|(_, name, _)| !name.starts_with(".tmp"))
            .map(|(prefix, name, p)| (format!("{prefix}{name}"), p))
            .collect())
    }

    /// Every action record that does not parse or fails [`ActionRecord::validate`] against
    /// the key its file name gives, removed; returns each as `<file>: <why>`. Such a record
    /// can never be used, so removing it loses nothing (`cache verify`).
    pub fn drop_invalid_records(&self) -> Result<Vec<String>> {
        let mut bad = Vec::new();
        for (prefix, name, path) in self.fanned("actions")? {
            let Some(stem) = name.strip_suffix(".json") else {
                continue;
            };
            let key = format!("{prefix}{stem}");
            let why = match std::fs::read(&path) {
                Err(err) => Some(format!("unreadable ({err})")),
                Ok(b) => match serde_json::from_slice::<ActionRecord>(&b) {
                    Err(err) => Some(format!("does not parse ({err})")),
                    Ok(r) => r.validate(&key, None).err().map(|e| e.to_string()),
                },
            };
            if let Some(why) = why {
                let _ = std::fs::remove_file(&path);
                bad.push(format!("actions/{prefix}/{name}: {why}"));
            }
        }
        Ok(bad)
    }

    /// Re-hash every blob (ignoring the memo). Returns the corrupt ones; with `repair`, removes
    /// them and the action records that point at them, so the next run rebuilds those steps.
    pub fn verify_all(&self, repair: bool, mut progress: impl FnMut(u64)) -> Result<Vec<String>> {
        let mut corrupt = Vec::new();
        for (digest, path) in self.blobs()? {
            let actual = hash_file(&path)?;
            progress(std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0));
            if actual != digest {
                corrupt.push(digest);
            }
        }
        if repair && !corrupt.is_empty() {
            let bad: BTreeSet<&String> = corrupt.iter().collect();
            for rec in self.actions()? {
                if rec.outputs.values().any(|b| bad.contains(&b.digest)) {
                    let _ = std::fs::remove_file(self.action_path(&rec.key));
                }
            }
            for d in &corrupt {
                self.remove_blob(d);
            }
        }
        Ok(corrupt)
    }

    /// Remove action records not in `keep` and blobs no kept record references.
    pub fn gc(&self, keep: &BTreeSet<String>, dry_run: bool) -> Result<GcStats> {
        let mut stats = GcStats::default();
        let mut live = BTreeSet::new();
        for rec in self.actions()? {
            if keep.contains(&rec.key) {
                live.extend(rec.outputs.values().map(|b| b.digest.clone()));
                stats.kept_actions += 1;
            } else {
                stats.removed_actions += 1;
                if !dry_run {
                    let _ = std::fs::remove_file(self.action_path(&rec.key));
                }
            }
        }
        for (digest, path) in self.blobs()? {
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if live.contains(&digest) {
                stats.kept_bytes += size;
            } else {
                stats.removed_blobs += 1;
                stats.removed_bytes += size;
                if !dry_run {
                    self.remove_blob(&digest);
                }
            }
        }
        // Scratch folders of interrupted runs.
        if !dry_run && let Ok(rd) = std::fs::read_dir(self.root.join("tmp")) {
            for e in rd.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(stats)
    }
}

/// An exclusive lock on a file, held until dropped. The holder writes its pid and what it
/// does into the file, for the message of whoever waits.
#[derive(Debug)]
pub struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    pub fn acquire(
        path: &Utf8Path,
        what: &str,
        cancel: &std::sync::atomic::AtomicBool,
        waiting: &dyn Fn(&str),
    ) -> Result<FileLock> {
        Self::acquire_as(path, what, false, cancel, waiting)
    }

    /// A shared lock (many holders at once, none while an exclusive one is held) or an
    /// exclusive one. Only an exclusive holder writes its name into the file.
    pub fn acquire_as(
        path: &Utf8Path,
        what: &str,
        shared: bool,
        cancel: &std::sync::atomic::AtomicBool,
        waiting: &dyn Fn(&str),
    ) -> Result<FileLock> {
        use std::fs::TryLockError;
        use std::io::{Read, Seek};
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .fs_context(path)?;
        let try_lock = |f: &std::fs::File| {
            if shared {
                f.try_lock_shared()
            } else {
                f.try_lock()
            }
        };
        match try_lock(&file) {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                waiting(holder.trim());
                loop {
                    if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                        return Err(Error::Interrupted);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    match try_lock(&file) {
                        Ok(()) => break,
                        Err(TryLockError::WouldBlock) => continue,
                        Err(TryLockError::Error(e)) => return Err(Error::io(path, e)),
                    }
                }
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(path, e)),
        }
        if shared {
            return Ok(FileLock { _file: file });
        }
        file.set_len(0).fs_context(path)?;
        let _ = file.rewind();
        let _ = write!(file, "pid {}: {what}", std::process::id());
        Ok(FileLock { _file: file })
    }
}

#[derive(Debug, Default, Serialize)]
pub struct GcStats {
    pub kept_actions: usize,
    pub removed_actions: usize,
    pub removed_blobs: usize,
    pub removed_bytes: u64,
    pub kept_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_verify_and_detect_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let root = Utf8PathBuf::from_path_buf(dir.path().to_owned()).unwrap();
        let store = Store::open(&root.join("c")).unwrap();
        let f = root.join("x.txt");
        std::fs::write(&f, b"hello").unwrap();
        let b = store.ingest(&f).unwrap();
        assert!(store.verify_blob(&b.digest).unwrap());
        let p = store.blob_path(&b.digest);
        let mut perms = std::fs::metadata(&p).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(&p, perms).unwrap();
        std::fs::write(&p, b"jello").unwrap();
        assert!(!store.verify_blob(&b.digest).unwrap());
        assert!(!p.exists());
    }
}
