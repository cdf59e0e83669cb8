//! Action keys, in the manner of uv's `uv-cache-key`: every input is fed to blake3 through
//! `CacheKey`, typed and length-prefixed, so `("ab","c")` and `("a","bc")` never collide and
//! nothing depends on HashMap iteration order.

use std::collections::BTreeMap;

pub struct CacheKeyHasher(blake3::Hasher);

impl Default for CacheKeyHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl CacheKeyHasher {
    pub fn new() -> Self {
        // Domain separation: a key from another tool, or another key format, cannot collide.
        CacheKeyHasher(blake3::Hasher::new_derive_key("facebuild action key v1"))
    }
    pub fn write_tag(&mut self, tag: u8) {
        self.0.update(&[tag]);
    }
    pub fn write_u64(&mut self, v: u64) {
        self.0.update(&v.to_le_bytes());
    }
    pub fn write_bytes(&mut self, b: &[u8]) {
        self.write_u64(b.len() as u64);
        self.0.update(b);
    }
    pub fn finish(&self) -> String {
        self.0.finalize().to_hex().to_string()
    }
}

pub trait CacheKey {
    fn cache_key(&self, state: &mut CacheKeyHasher);
}

impl CacheKey for str {
    fn cache_key(&self, s: &mut CacheKeyHasher) {
        s.write_tag(b's');
        s.write_bytes(self.as_bytes());
    }
}
impl CacheKey for String {
    fn cache_key(&self, s: &mut CacheKeyHasher) {
        self.as_str().cache_key(s)
    }
}
impl CacheKey for u64 {
    fn cache_key(&self, s: &mut CacheKeyHasher) {
        s.write_tag(b'u');
        s.write_u64(*self);
    }
}
impl CacheKey for u32 {
    fn cache_key(&self, s: &mut CacheKeyHasher) {
        u64::from(*self).cache_key(s)
    }
}
impl CacheKey for bool {
    fn cache_key(&self, s: &mut CacheKeyHasher) {
        s.write_tag(b'b');
        s.write_tag(*self as u8);
    }
}
impl<T: CacheKey + ?Sized> CacheKey for &T {
    fn cache_key(&self, s: &mut CacheKeyHasher) {
        (**self).cache_key(s)
    }
}
impl<T: CacheKey> CacheKey for Option<T> {
    fn cache_key(&self, s: &mut CacheKeyHasher) {
        match self {
            None => s.write_tag(b'N'),
            Some(v) => {
                s.write_tag(b'S');
                v.cache_key(s)
            }
        }
    }
}
impl<T: CacheKey> CacheKey for [T] {
    fn cache_key(&self, s: &mut CacheKeyHasher) {
        s.write_tag(b'[');
        s.write_u64(self.len() as u64);
        for v in self {
            v.cache_key(s);
        }
    }
}
impl<T: CacheKey> CacheKey for Vec<T> {
    fn cache_key(&self, s: &mut CacheKeyHasher) {
        self.as_slice().cache_key(s)
    }
}
impl<K: CacheKey, V: CacheKey> CacheKey for BTreeMap<K, V> {
    fn cache_key(&self, s: &mut CacheKeyHasher) {
        s.write_tag(b'{');
        s.write_u64(self.len() as u64);
        for (k, v) in self {
            k.cache_key(s);
            v.cache_key(s);
        }
    }
}
impl<A: CacheKey, B: CacheKey> CacheKey for (A, B) {
    fn cache_key(&self, s: &mut CacheKeyHasher) {
        s.write_tag(b'(');
        self.0.cache_key(s);
        self.1.cache_key(s);
    }
}

/// Params are serde structs; they are keyed through their JSON value with object keys
/// sorted, numbers by exact bit pattern, every variant tagged.
impl CacheKey for serde_json::Value {
    fn cache_key(&self, s: &mut CacheKeyHasher) {
        use serde_json::Value;
        match self {
            Value::Null => s.write_tag(b'n'),
            Value::Bool(b) => b.cache_key(s),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    u.cache_key(s)
                } else if let Some(i) = n.as_i64() {
                    s.write_tag(b'i');
                    s.write_u64(i as u64);
                } else {
                    s.write_tag(b'f');
                    s.write_u64(n.as_f64().unwrap_or(f64::NAN).to_bits());
                }
            }
            Value::String(x) => x.cache_key(s),
            Value::Array(a) => a.cache_key(s),
            Value::Object(o) => {
                let sorted: BTreeMap<&String, &Value> = o.iter().collect();
                s.write_tag(b'{');
                s.write_u64(sorted.len() as u64);
                for (k, v) in sorted {
                    k.cache_key(s);
                    v.cache_key(s);
                }
            }
        }
    }
}

pub fn cache_key<T: CacheKey + ?Sized>(v: &T) -> String {
    let mut s = CacheKeyHasher::new();
    v.cache_key(&mut s);
    s.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefix_prevents_concatenation_collisions() {
        assert_ne!(
            cache_key(&("ab".to_string(), "c".to_string())),
            cache_key(&("a".to_string(), "bc".to_string()))
        );
    }

    #[test]
    fn json_objects_are_order_independent_and_typed() {
        let a: serde_json::Value = serde_json::from_str(r#"{"x":1,"y":"2"}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{"y":"2","x":1}"#).unwrap();
        let c: serde_json::Value = serde_json::from_str(r#"{"x":"1","y":"2"}"#).unwrap();
        assert_eq!(cache_key(&a), cache_key(&b));
        assert_ne!(cache_key(&a), cache_key(&c));
    }

    #[test]
    fn none_differs_from_empty() {
        assert_ne!(cache_key(&None::<String>), cache_key(&Some(String::new())));
    }
}

/// Everything that goes into a step's action key. Action records and lockfile entries embed
/// it, so `plan` can say what changed since the last build.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KeyParts {
    pub kind: String,
    pub impl_version: u32,
    pub params: serde_json::Value,
    pub inputs: BTreeMap<String, String>,
    pub toolchain: BTreeMap<String, String>,
}

impl CacheKey for KeyParts {
    fn cache_key(&self, s: &mut CacheKeyHasher) {
        self.kind.cache_key(s);
        self.impl_version.cache_key(s);
        self.params.cache_key(s);
        self.inputs.cache_key(s);
        self.toolchain.cache_key(s);
    }
}

impl KeyParts {
    /// The action key: blake3 over the length-prefixed parts.
    pub fn key(&self) -> String {
        cache_key(self)
    }
}
