//! What a record claims, checked before anything uses it. A record read from the remote or
//! from the local store is data from outside this process: its output names become file
//! names under `out/`, its digests become paths in the store, its sizes drive downloads.
//! Every one is checked here, beside the cache, so no caller has to remember to.

use super::store::{ActionRecord, BlobRef};

/// The largest blob size a record may claim (1 TiB): larger is a corrupt or hostile record.
pub const MAX_BLOB_SIZE: u64 = 1 << 40;
/// The most outputs one record may list.
const MAX_OUTPUTS: usize = 4096;
/// The longest name (step, pipeline, output) a record may carry.
const MAX_NAME: usize = 255;

/// A field of a record (or a worker's spec) that failed its check: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub why: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "field `{}` {}", self.field, self.why)
    }
}

impl std::error::Error for Invalid {}

pub fn invalid(field: impl Into<String>, why: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        why: why.into(),
    }
}

/// A blake3 digest as the store names blobs and keys: 64 lowercase hex digits.
pub fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A name facebuild writes as one path component: letters, digits, `_`, `-`, `.`, not
/// starting with `.` (so never `.`, `..` or a hidden temp name), not empty, bounded.
pub fn check_name(field: &str, s: &str) -> Result<(), Invalid> {
    let why = |w: String| Err(invalid(field, w));
    if s.is_empty() {
        return why("is empty".into());
    }
    if s.len() > MAX_NAME {
        return why(format!("is {} bytes long (at most {MAX_NAME})", s.len()));
    }
    if s.starts_with('.') {
        return why(format!("`{}` starts with `.`", shown(s)));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return why(format!(
            "`{}` is not a plain name (letters, digits, `_`, `-`, `.`): it could name a path outside its folder",
            shown(s)
        ));
    }
    Ok(())
}

/// A name as a message may show it: bounded, control characters escaped.
fn shown(s: &str) -> String {
    let t: String = s.chars().take(80).collect();
    let t = t.escape_debug().to_string();
    if s.chars().count() > 80 {
        format!("{t}...")
    } else {
        t
    }
}

/// A blob reference's digest and size.
pub fn check_blob(field: &str, b: &BlobRef) -> Result<(), Invalid> {
    if !is_digest(&b.digest) {
        return Err(invalid(
            format!("{field}.digest"),
            format!(
                "`{}` is not a blake3 digest (64 lowercase hex digits)",
                shown(&b.digest)
            ),
        ));
    }
    if b.size > MAX_BLOB_SIZE {
        return Err(invalid(
            format!("{field}.size"),
            format!("{} is larger than any blob (at most 1 TiB)", b.size),
        ));
    }
    Ok(())
}

impl ActionRecord {
    /// Check every field a reader uses: the key (well-formed, the one it is stored under,
    /// and the hash of the parts it carries), names, output names (one plain path component
    /// each), digests and sizes. `kind`, when given, is the kind of the manifest's step.
    pub fn validate(&self, key: &str, kind: Option<&str>) -> Result<(), Invalid> {
        if !is_digest(&self.key) {
            return Err(invalid(
                "key",
                format!("`{}` is not an action key", shown(&self.key)),
            ));
        }
        if self.key != key {
            return Err(invalid(
                "key",
                "does not match the key it is stored under".to_string(),
            ));
        }
        if self.parts.key() != key {
            return Err(invalid(
                "parts",
                "do not hash to the record's key (altered)".to_string(),
            ));
        }
        if let Some(k) = kind
            && self.parts.kind != k
        {
            return Err(invalid(
                "parts.kind",
                format!("is `{}`, but the step is a `{k}`", shown(&self.parts.kind)),
            ));
        }
        check_name("pipeline", &self.pipeline)?;
        check_name("step", &self.step)?;
        if self.outputs.len() > MAX_OUTPUTS {
            return Err(invalid(
                "outputs",
                format!(
                    "lists {} outputs (at most {MAX_OUTPUTS})",
                    self.outputs.len()
                ),
            ));
        }
        for (name, blob) in &self.outputs {
            check_name(&format!("outputs[{}]", shown(name)), name)?;
            check_blob(&format!("outputs.{name}"), blob)?;
        }
        if let Some(r) = &self.ran_on {
            for (f, v) in [
                ("executor", &r.executor),
                ("job_id", &r.job_id),
                ("node", &r.node),
            ] {
                if v.len() > MAX_NAME || v.chars().any(char::is_control) {
                    return Err(invalid(
                        format!("ran_on.{f}"),
                        format!("`{}` is not a plain value", shown(v)),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Test helpers for what comes from the remote (here and in the crates above, whose tests
/// fuzz the same records): a valid record and a bounded, seeded mutator.
#[doc(hidden)]
pub mod testing {
    use super::*;

    /// A valid record of `kind` with the given outputs, keyed by its parts.
    pub fn record(outputs: &[(&str, &str)]) -> ActionRecord {
        let parts = crate::KeyParts {
            kind: "check".into(),
            impl_version: 1,
            params: serde_json::json!({}),
            inputs: Default::default(),
            toolchain: Default::default(),
        };
        ActionRecord {
            key: parts.key(),
            pipeline: "p".into(),
            step: "check".into(),
            parts,
            outputs: outputs
                .iter()
                .map(|(n, d)| {
                    (
                        n.to_string(),
                        BlobRef {
                            digest: d.to_string(),
                            size: 5,
                        },
                    )
                })
                .collect(),
            summary: serde_json::Value::Null,
            created_unix: 0,
            duration_ms: 0,
            ran_on: None,
        }
    }

    /// A small deterministic mutator for the fuzz tests of what comes from the remote
    /// (records, envelopes, specs): cargo-fuzz needs nightly, so this runs on stable, bounded
    /// in count, with a fixed seed so a failure reproduces.
    pub struct Mutator(u64);

    impl Mutator {
        pub fn new(seed: u64) -> Mutator {
            Mutator(seed.max(1))
        }

        pub fn next_u64(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        pub fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n.max(1) as u64) as usize
        }

        /// A hostile or broken value for any JSON field.
        fn value(&mut self) -> serde_json::Value {
            use serde_json::json;
            let long = "x".repeat(1 << 16);
            let choices = [
                json!("../../../escaped.xml"),
                json!("/etc/passwd"),
                json!("/tmp/abs.xml"),
                json!(""),
                json!("."),
                json!(".."),
                json!("a/b"),
                json!(".hidden"),
                json!("nul\u{0}byte"),
                json!("A".repeat(64)),
                json!("a".repeat(63)),
                json!("a".repeat(65)),
                json!("zz"),
                json!(long),
                json!(u64::MAX),
                json!(-1),
                json!(1e308),
                json!(0),
                json!(null),
                json!(true),
                json!([]),
                json!({}),
                json!({"../x": {"digest": "a", "size": 1}}),
            ];
            choices[self.below(choices.len())].clone()
        }

        /// `v` with one field (at any depth) replaced, removed, or a key renamed.
        pub fn mutate(&mut self, v: &serde_json::Value) -> serde_json::Value {
            let mut out = v.clone();
            let mut paths = Vec::new();
            collect(&out, &mut Vec::new(), &mut paths);
            if paths.is_empty() {
                return self.value();
            }
            let path = paths[self.below(paths.len())].clone();
            let action = self.below(4);
            let replacement = self.value();
            let renamed = match self.value() {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            let mut cur = &mut out;
            for (i, k) in path.iter().enumerate() {
                let last = i + 1 == path.len();
                match cur {
                    serde_json::Value::Object(m) if last => {
                        match action {
                            0 => {
                                m.remove(k);
                            }
                            1 => {
                                if let Some(x) = m.remove(k) {
                                    m.insert(renamed.clone(), x);
                                }
                            }
                            _ => {
                                m.insert(k.clone(), replacement.clone());
                            }
                        }
                        break;
                    }
                    serde_json::Value::Array(a) if last => {
                        if let Ok(i) = k.parse::<usize>()
                            && i < a.len()
                        {
                            a[i] = replacement.clone();
                        }
                        break;
                    }
                    serde_json::Value::Object(m) => match m.get_mut(k) {
                        Some(next) => cur = next,
                        None => break,
                    },
                    serde_json::Value::Array(a) => {
                        match k.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                            Some(next) => cur = next,
                            None => break,
                        }
                    }
                    _ => break,
                }
            }
            out
        }

        /// Bytes cut short, or with one byte changed.
        pub fn damage(&mut self, bytes: &[u8]) -> Vec<u8> {
            let mut b = bytes.to_vec();
            if b.is_empty() {
                return b;
            }
            let at = self.below(b.len());
            if self.below(2) == 0 {
                b.truncate(at);
            } else {
                b[at] = (self.next_u64() & 0xff) as u8;
            }
            b
        }
    }

    fn collect(v: &serde_json::Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    prefix.push(k.clone());
                    out.push(prefix.clone());
                    collect(x, prefix, out);
                    prefix.pop();
                }
            }
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    prefix.push(i.to_string());
                    out.push(prefix.clone());
                    collect(x, prefix, out);
                    prefix.pop();
                }
            }
            _ => {}
        }
    }

    /// Whether `name`, joined to a folder, stays inside it (one plain component).
    pub fn stays_inside(name: &str) -> bool {
        let mut c = camino::Utf8Path::new(name).components();
        matches!(
            (c.next(), c.next()),
            (Some(camino::Utf8Component::Normal(n)), None) if n == name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn names_that_could_escape_are_refused() {
        for ok in ["report.json", "model.xml", "SHA256SUMS", "v1.2", "a-b_c"] {
            assert!(check_name("t", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../../../escaped.xml",
            "/etc/passwd",
            "a/b",
            ".hidden",
            "a\\b",
            "nul\0",
            "new\nline",
            "é",
        ] {
            assert!(check_name("t", bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_name("t", &"x".repeat(256)).is_err());
    }

    #[test]
    fn every_field_is_checked() {
        let d = "a".repeat(64);
        let rec = record(&[("report.json", &d)]);
        let key = rec.key.clone();
        assert!(rec.validate(&key, Some("check")).is_ok());
        let e = rec.validate(&key, Some("compare")).unwrap_err();
        assert_eq!(e.field, "parts.kind");
        assert_eq!(
            rec.validate(&"b".repeat(64), None).unwrap_err().field,
            "key"
        );
        let e = record(&[("../../../escaped.xml", &d)])
            .validate(&key, None)
            .unwrap_err();
        assert!(e.field.starts_with("outputs["), "{e}");
        let e = record(&[("/abs.xml", &d)])
            .validate(&key, None)
            .unwrap_err();
        assert!(e.to_string().contains("not a plain name"), "{e}");
        let e = record(&[("x", "ab")]).validate(&key, None).unwrap_err();
        assert_eq!(e.field, "outputs.x.digest");
        let e = record(&[("x", &"A".repeat(64))])
            .validate(&key, None)
            .unwrap_err();
        assert_eq!(e.field, "outputs.x.digest");
        let mut big = record(&[("x", &d)]);
        big.outputs.get_mut("x").unwrap().size = u64::MAX;
        assert_eq!(
            big.validate(&key, None).unwrap_err().field,
            "outputs.x.size"
        );
        let mut altered = record(&[("x", &d)]);
        altered.parts.impl_version = 2;
        assert_eq!(altered.validate(&key, None).unwrap_err().field, "parts");
        let mut step = record(&[("x", &d)]);
        step.step = "../s".into();
        assert_eq!(step.validate(&key, None).unwrap_err().field, "step");
    }
}
