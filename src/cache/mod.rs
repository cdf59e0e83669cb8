//! The cache: content-addressed blobs, action records (run-cache), the stat-keyed digest
//! memo, the lockfile, and action keys.

pub(crate) mod key;
pub(crate) mod lock;
pub(crate) mod memo;
pub(crate) mod remote;
pub(crate) mod store;
pub(crate) mod validate;

pub(crate) use key::{CacheKey, CacheKeyHasher, KeyParts, cache_key};
pub(crate) use lock::{Lock, LockEntry};
pub(crate) use store::{ActionRecord, BlobRef, Store};
