//! The cache: content-addressed blobs, action records (run-cache), the stat-keyed digest
//! memo, the lockfile, and action keys.

use facebuild_base::{domain, error, progress, util};

pub mod key;
pub mod lock;
pub mod memo;
pub mod remote;
pub mod store;
pub mod validate;

pub use key::{CacheKey, CacheKeyHasher, KeyParts, cache_key};
pub use lock::{Lock, LockEntry};
pub use store::{ActionRecord, BlobRef, Store};
