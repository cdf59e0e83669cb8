//! Stat-keyed digest memo (as ninja's and DVC's): a file whose size, mtime, ctime and inode
//! are unchanged keeps its recorded digest, so a 170 MB model is hashed once, not per run.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
}

impl Stamp {
    fn of(md: &std::fs::Metadata) -> Stamp {
        Stamp {
            size: md.len(),
            mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
            ctime_ns: md.ctime() as i128 * 1_000_000_000 + md.ctime_nsec() as i128,
            ino: md.ino(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    stamp: Stamp,
    blake3: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
}

#[derive(Default, Serialize, Deserialize)]
struct MemoFile {
    entries: BTreeMap<String, Entry>,
}

pub struct DigestMemo {
    path: Utf8PathBuf,
    inner: Mutex<(MemoFile, bool)>,
}

/// Digest of a file, with its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    pub blake3: String,
    pub size: u64,
}

impl DigestMemo {
    pub fn load(path: Utf8PathBuf) -> DigestMemo {
        // A memo that cannot be read is simply empty: it only saves time, never changes results.
        let file = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        DigestMemo {
            path,
            inner: Mutex::new((file, false)),
        }
    }

    fn lookup(&self, path: &Utf8Path, stamp: &Stamp) -> Option<Entry> {
        let g = self.inner.lock().unwrap();
        g.0.entries
            .get(path.as_str())
            .filter(|e| &e.stamp == stamp)
            .cloned()
    }

    fn store(&self, path: &Utf8Path, entry: Entry) {
        let mut g = self.inner.lock().unwrap();
        g.0.entries.insert(path.to_string(), entry);
        g.1 = true;
    }

    /// blake3 of `path`, from the memo when the file's stat is unchanged.
    pub fn blake3(&self, path: &Utf8Path) -> Result<FileDigest> {
        let md = std::fs::metadata(path).fs_context(path)?;
        let stamp = Stamp::of(&md);
        if let Some(e) = self.lookup(path, &stamp) {
            return Ok(FileDigest {
                blake3: e.blake3,
                size: stamp.size,
            });
        }
        let digest = hash_file(path)?;
        self.store(
            path,
            Entry {
                stamp: stamp.clone(),
                blake3: digest.clone(),
                sha256: None,
            },
        );
        Ok(FileDigest {
            blake3: digest,
            size: stamp.size,
        })
    }

    /// sha256 of `path` (for users' pins), memoized the same way.
    pub fn sha256(&self, path: &Utf8Path) -> Result<String> {
        let md = std::fs::metadata(path).fs_context(path)?;
        let stamp = Stamp::of(&md);
        if let Some(e) = self.lookup(path, &stamp)
            && let Some(s) = e.sha256
        {
            return Ok(s);
        }
        use sha2::Digest;
        let mut f = std::fs::File::open(path).fs_context(path)?;
        let mut h = sha2::Sha256::new();
        std::io::copy(&mut f, &mut h).fs_context(path)?;
        let sha = format!("{:x}", h.finalize());
        let b3 = match self.lookup(path, &stamp) {
            Some(e) => e.blake3,
            None => hash_file(path)?,
        };
        self.store(
            path,
            Entry {
                stamp,
                blake3: b3,
                sha256: Some(sha.clone()),
            },
        );
        Ok(sha)
    }

    /// Forget a path (after it was found corrupt or removed).
    pub fn forget(&self, path: &Utf8Path) {
        let mut g = self.inner.lock().unwrap();
        if g.0.entries.remove(path.as_str()).is_some() {
            g.1 = true;
        }
    }

    pub fn save(&self) -> Result<()> {
        let mut g = self.inner.lock().unwrap();
        if !g.1 {
            return Ok(());
        }
        // Drop entries for files that are gone, so the memo does not grow without bound.
        g.0.entries.retain(|p, _| Utf8Path::new(p).exists());
        let bytes = serde_json::to_vec(&g.0).map_err(anyhow::Error::from)?;
        super::store::write_atomic(&self.path, &bytes)?;
        g.1 = false;
        Ok(())
    }
}

pub fn hash_file(path: &Utf8Path) -> Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_mmap_rayon(path).fs_context(path)?;
    Ok(h.finalize().to_hex().to_string())
}
