//! The lockfile next to the manifest (`recognition.lock`), DVC's dvc.lock for facebuild:
//! per step its action key, params, input/output digests and toolchain versions, so a
//! diff of the lockfile in CI shows exactly what changed and `plan` can say why.

use std::collections::BTreeMap;

use camino::Utf8Path;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::store::{BlobRef, write_atomic};
use crate::error::Result;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Lock {
    pub schema: u32,
    pub pipeline: String,
    #[serde(default)]
    pub steps: IndexMap<String, LockEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockEntry {
    pub key: String,
    /// What the key was computed from.
    #[serde(flatten)]
    pub parts: crate::KeyParts,
    pub outputs: BTreeMap<String, BlobRef>,
}

impl Lock {
    /// A missing or unreadable lockfile is an empty one (with a warning for the latter):
    /// it records history, it never decides correctness — the cache keys do.
    pub fn load(path: &Utf8Path) -> Lock {
        match std::fs::read_to_string(path) {
            Ok(text) => match serde_saphyr::from_str::<Lock>(&text) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("ignoring unreadable lockfile {path}: {e}");
                    Lock::default()
                }
            },
            Err(_) => Lock::default(),
        }
    }

    pub fn save(&self, path: &Utf8Path) -> Result<()> {
        let text = serde_saphyr::to_string(self)
            .map_err(|e| anyhow::anyhow!("serializing lockfile: {e}"))?;
        let header =
            "# Written by facebuild; do not edit. Commit it to see what changed between runs.\n";
        write_atomic(path, format!("{header}{text}").as_bytes())
    }
}
