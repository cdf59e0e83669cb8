//! Small shared helpers.

/// splitmix64: seeded, tiny, and its stream never changes with a crate upgrade, which keeps
/// generated models and test inputs reproducible across versions.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Human-readable byte size.
pub fn human_bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// Every file below `dir`, recursively, sorted by path (stable across filesystems).
pub fn files_under(dir: &camino::Utf8Path) -> crate::Result<Vec<camino::Utf8PathBuf>> {
    use crate::error::IoContext;
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).fs_context(&d)? {
            let e = e.fs_context(&d)?;
            let Ok(p) = camino::Utf8PathBuf::from_path_buf(e.path()) else {
                continue;
            };
            if p.is_dir() {
                stack.push(p)
            } else {
                files.push(p)
            }
        }
    }
    files.sort();
    Ok(files)
}

/// `root/name`, where `name` must be one plain path component: not empty, `.`, `..`, absolute
/// or containing a separator. A second line of defence behind name validation, so that no
/// pipeline, step or release name can make facebuild write or remove outside `root`.
pub fn child_of(root: &camino::Utf8Path, name: &str) -> crate::Result<camino::Utf8PathBuf> {
    let mut parts = camino::Utf8Path::new(name).components();
    match (parts.next(), parts.next()) {
        (Some(camino::Utf8Component::Normal(n)), None) if n == name => Ok(root.join(name)),
        _ => Err(crate::Error::usage(format!(
            "refusing to use `{name}` as a folder name under {root}: it would escape that folder"
        ))
        .with_hint("names are letters, digits, `_`, `-` and `.`, and do not start with `.`")),
    }
}

/// `p` made absolute against the current directory (without resolving links); `p` itself
/// if that fails.
pub fn absolute(p: &camino::Utf8Path) -> camino::Utf8PathBuf {
    std::path::absolute(p)
        .ok()
        .and_then(|a| camino::Utf8PathBuf::from_path_buf(a).ok())
        .unwrap_or_else(|| p.to_owned())
}

/// This machine's host name (from the kernel; `unknown` where it cannot be read).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Write a secret (a private key) readable by its owner only, never over an existing file.
pub fn write_private(path: &camino::Utf8Path, bytes: &[u8]) -> crate::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(path).map_err(|e| crate::error::Error::io(path, e))?;
    f.write_all(bytes)
        .map_err(|e| crate::error::Error::io(path, e))?;
    Ok(())
}

/// Unix seconds as an RFC 3339 UTC time (`2026-12-02T16:10:00Z`), as SLSA's timestamps are
/// written (the civil-from-days algorithm of Howard Hinnant's date library).
pub fn rfc3339(unix: u64) -> String {
    let (days, secs) = ((unix / 86_400) as i64, unix % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_writes_utc_civil_time() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_227_200), "2026-12-02T16:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
    use super::*;

    /// Only a single plain component is accepted under a root.
    #[test]
    fn child_of_refuses_names_that_escape() {
        let root = camino::Utf8Path::new("out");
        assert_eq!(child_of(root, "compare").unwrap(), root.join("compare"));
        assert_eq!(child_of(root, "v1.2").unwrap(), root.join("v1.2"));
        for bad in ["", ".", "..", "../x", "a/b", "/etc", "a/.."] {
            assert!(child_of(root, bad).is_err(), "{bad:?} accepted");
        }
    }
}
