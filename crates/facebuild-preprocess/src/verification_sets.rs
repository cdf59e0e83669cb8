//! Verification-set formats beside folders and CSV pairs: InsightFace's `.bin` (a pickle of
//! `(list of encoded images, list of issame bools)`, images 2i and 2i+1 forming pair i) and
//! LFW's `pairs.txt` (10 folds). A `.bin` is unpacked once, by its digest, into a folder of
//! image files and a `pairs.csv`, so every step reads it as an ordinary dataset folder.

use camino::{Utf8Path, Utf8PathBuf};
use serde_pickle::Value;

use crate::error::{Error, IoContext, Result};

/// The file, inside an unpacked `.bin` folder, that lists its pairs.
pub const BIN_PAIRS: &str = "pairs.csv";

/// Unpack the InsightFace verification `.bin` at `bin` (blake3 `digest`) under `cache_dir`:
/// `images/NNNNN.<ext>` with the encoded bytes as they are, and `pairs.csv`. Done once per
/// digest; a partial unpack is never used (written to a temp folder, then renamed).
pub fn unpack_bin(bin: &Utf8Path, digest: &str, cache_dir: &Utf8Path) -> Result<Utf8PathBuf> {
    let dir = cache_dir
        .join("datasets")
        .join(format!("bin-{}", &digest[..16]));
    if dir.join(BIN_PAIRS).is_file() {
        return Ok(dir);
    }
    let (images, issame) = read_bin(bin)?;
    let parent = dir.parent().expect("under cache_dir");
    std::fs::create_dir_all(parent).fs_context(parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(".bin-")
        .tempdir_in(parent)
        .fs_context(parent)?;
    let tmp_path =
        Utf8Path::from_path(tmp.path()).ok_or_else(|| anyhow::anyhow!("non-UTF-8 cache path"))?;
    std::fs::create_dir_all(tmp_path.join("images")).fs_context(tmp_path)?;
    let mut names = Vec::with_capacity(images.len());
    for (i, bytes) in images.iter().enumerate() {
        let name = format!("images/{i:05}.{}", extension(bytes));
        let p = tmp_path.join(&name);
        std::fs::write(&p, bytes).fs_context(&p)?;
        names.push(name);
    }
    let mut csv = String::from("file_x,file_y,Decision\n");
    for (k, same) in issame.iter().enumerate() {
        let d = if *same { "Yes" } else { "No" };
        csv += &format!("{},{},{d}\n", names[2 * k], names[2 * k + 1]);
    }
    let p = tmp_path.join(BIN_PAIRS);
    std::fs::write(&p, csv).fs_context(&p)?;
    let kept = tmp.keep();
    if let Err(e) = std::fs::rename(&kept, &dir) {
        let _ = std::fs::remove_dir_all(&kept);
        // Another run unpacked the same digest first: theirs is as good as ours.
        if !dir.join(BIN_PAIRS).is_file() {
            return Err(Error::io(&dir, e));
        }
    }
    Ok(dir)
}

/// The image format by its magic bytes (the `.bin` holds JPEG, sometimes PNG).
fn extension(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(b"\x89PNG") {
        "png"
    } else if bytes.starts_with(b"RIFF") {
        "webp"
    } else {
        "jpg"
    }
}

/// Read a `.bin`: (encoded images, issame per pair). Python 2's `str` images (protocol-2
/// SHORT_BINSTRING/BINSTRING) and Python 3's `bytes` both arrive as bytes.
pub fn read_bin(bin: &Utf8Path) -> Result<(Vec<Vec<u8>>, Vec<bool>)> {
    let bad = |what: String| {
        Error::usage(format!("{bin}: not an InsightFace verification .bin: {what}")).with_hint(
            "a .bin is a pickle of (list of encoded images, list of issame bools), images 2i and 2i+1 forming pair i",
        )
    };
    let f = std::fs::File::open(bin).fs_context(bin)?;
    let value =
        serde_pickle::value_from_reader(std::io::BufReader::new(f), serde_pickle::DeOptions::new())
            .map_err(|e| bad(format!("unreadable pickle ({e})")))?;
    let parts = match value {
        Value::Tuple(p) | Value::List(p) if p.len() == 2 => p,
        _ => return Err(bad("the top level is not a pair (images, issame)".into())),
    };
    let mut parts = parts.into_iter();
    let (imgs, flags) = (parts.next(), parts.next());
    let images = match imgs {
        Some(Value::List(v) | Value::Tuple(v)) => v
            .into_iter()
            .enumerate()
            .map(|(i, x)| match x {
                Value::Bytes(b) => Ok(b),
                // A Python 2 str saved with `decode_strings`-style pickles, or unicode.
                Value::String(s) => Ok(s.into_bytes()),
                other => Err(bad(format!("image {i} is not bytes but {}", kind(&other)))),
            })
            .collect::<Result<Vec<_>>>()?,
        _ => return Err(bad("the first element is not a list of images".into())),
    };
    let issame = match flags {
        Some(Value::List(v) | Value::Tuple(v)) => v
            .into_iter()
            .enumerate()
            .map(|(i, x)| match x {
                Value::Bool(b) => Ok(b),
                Value::I64(n) if n == 0 || n == 1 => Ok(n == 1),
                other => Err(bad(format!(
                    "issame {i} is not a bool but {}",
                    kind(&other)
                ))),
            })
            .collect::<Result<Vec<_>>>()?,
        _ => {
            return Err(bad(
                "the second element is not a list of issame bools".into()
            ));
        }
    };
    if images.len() % 2 != 0 {
        return Err(bad(format!(
            "{} images: an odd count cannot form pairs",
            images.len()
        )));
    }
    if images.len() != 2 * issame.len() {
        return Err(bad(format!(
            "{} images for {} issame flags; expected two images per flag",
            images.len(),
            issame.len()
        )));
    }
    Ok((images, issame))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "a bool",
        Value::I64(_) | Value::Int(_) => "an int",
        Value::F64(_) => "a float",
        Value::Bytes(_) => "bytes",
        Value::String(_) => "a str",
        Value::List(_) => "a list",
        Value::Tuple(_) => "a tuple",
        Value::Set(_) | Value::FrozenSet(_) => "a set",
        Value::Dict(_) => "a dict",
    }
}

/// One pair of LFW's `pairs.txt`: two image paths relative to the dataset folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPair {
    pub a: String,
    pub b: String,
    pub same: bool,
}

/// Parse LFW's `pairs.txt`: a first line `folds<TAB>pairs_per_fold`, then per fold that many
/// same-person lines `name n1 n2` and as many different-person lines `name1 n1 name2 n2`;
/// images are `name/name_NNNN.jpg`. Errors name the file and line.
pub fn parse_lfw_pairs(path: &Utf8Path, text: &str) -> Result<Vec<NamedPair>> {
    let at = |line: usize, what: String| {
        Error::usage(format!("{path}:{line}: {what}"))
            .with_hint("LFW pairs.txt: a first line `folds pairs_per_fold`, then `name n1 n2` (same person) or `name1 n1 name2 n2` (different people)")
    };
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (n0, head) = lines.next().ok_or_else(|| at(1, "empty file".into()))?;
    let counts: Vec<usize> = head
        .split_whitespace()
        .map(|x| x.parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| {
            at(
                n0 + 1,
                format!("expected `folds pairs_per_fold`, got `{head}`"),
            )
        })?;
    let expected = match counts[..] {
        [folds, per_fold] => folds * per_fold * 2,
        // Some copies give the pair count alone.
        [pairs] => pairs * 2,
        _ => {
            return Err(at(
                n0 + 1,
                format!("expected `folds pairs_per_fold`, got `{head}`"),
            ));
        }
    };
    let img = |name: &str, n: &str, line: usize| -> Result<String> {
        let n: u32 = n
            .parse()
            .map_err(|_| at(line, format!("`{n}` is not an image number")))?;
        Ok(format!("{name}/{name}_{n:04}.jpg"))
    };
    let mut pairs = Vec::new();
    for (n, line) in lines {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let pair = match cols[..] {
            [name, a, b] => NamedPair {
                a: img(name, a, n + 1)?,
                b: img(name, b, n + 1)?,
                same: true,
            },
            [n1, a, n2, b] => NamedPair {
                a: img(n1, a, n + 1)?,
                b: img(n2, b, n + 1)?,
                same: false,
            },
            _ => {
                return Err(at(
                    n + 1,
                    format!("expected `name n1 n2` or `name1 n1 name2 n2`, got `{line}`"),
                ));
            }
        };
        pairs.push(pair);
    }
    if pairs.len() != expected {
        return Err(at(
            n0 + 1,
            format!(
                "the header promises {expected} pairs, the file holds {}",
                pairs.len()
            ),
        ));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_file(bytes: &[u8]) -> (tempfile::TempDir, Utf8PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = Utf8PathBuf::from_path_buf(d.path().join("v.bin")).unwrap();
        std::fs::write(&p, bytes).unwrap();
        (d, p)
    }

    /// A protocol-2 pickle as Python 2 wrote InsightFace's files: images as `str`
    /// (SHORT_BINSTRING, and BINSTRING for a long one), issame as bools.
    fn python2_bin(images: &[&[u8]], issame: &[bool]) -> Vec<u8> {
        let mut p = vec![0x80, 2]; // PROTO 2
        p.push(b']'); // EMPTY_LIST
        p.push(b'('); // MARK
        for img in images {
            if img.len() < 256 {
                p.push(b'U'); // SHORT_BINSTRING
                p.push(img.len() as u8);
            } else {
                p.push(b'T'); // BINSTRING
                p.extend_from_slice(&(img.len() as u32).to_le_bytes());
            }
            p.extend_from_slice(img);
        }
        p.push(b'e'); // APPENDS
        p.push(b']');
        p.push(b'(');
        for s in issame {
            p.push(if *s { 0x88 } else { 0x89 }); // NEWTRUE / NEWFALSE
        }
        p.push(b'e');
        p.push(0x86); // TUPLE2
        p.push(b'.'); // STOP
        p
    }

    /// Python 2 `str` images (short and long) come out as bytes, with their flags.
    #[test]
    fn python2_protocol2_bin_is_read() {
        let long = vec![0xFFu8; 300];
        let bytes = python2_bin(&[b"\xFF\xD8a", b"\x89PNGb", &long, b"d"], &[true, false]);
        let (_d, p) = tmp_file(&bytes);
        let (images, issame) = read_bin(&p).unwrap();
        assert_eq!(images.len(), 4);
        assert_eq!(images[1], b"\x89PNGb");
        assert_eq!(images[2].len(), 300);
        assert_eq!(issame, [true, false]);
        assert_eq!(extension(&images[1]), "png");
    }

    /// Truncated, odd or mismatched files are errors naming the file, never panics.
    #[test]
    fn malformed_bins_are_clear_errors() {
        let good = python2_bin(&[b"a", b"b"], &[true]);
        let (_d, p) = tmp_file(&good[..good.len() / 2]);
        let e = read_bin(&p).unwrap_err().to_string();
        assert!(
            e.contains("v.bin") && e.contains("unreadable pickle"),
            "{e}"
        );
        let (_d, p) = tmp_file(&python2_bin(&[b"a", b"b", b"c"], &[true]));
        let e = read_bin(&p).unwrap_err().to_string();
        assert!(e.contains("odd count"), "{e}");
        let (_d, p) = tmp_file(&python2_bin(&[b"a", b"b"], &[true, false]));
        let e = read_bin(&p).unwrap_err().to_string();
        assert!(e.contains("2 images for 2 issame flags"), "{e}");
    }

    /// LFW's 10-fold pairs.txt: same- and different-person lines, and located errors.
    #[test]
    fn lfw_pairs_txt_is_parsed() {
        let p = Utf8Path::new("pairs.txt");
        let text = "1\t2\nAbel_Pacheco\t1\t4\nAkhmed_Zakayev\t1\t3\nAbdel_Madi_Shabneh\t1\tDean_Barker\t1\nAbdel_Madi_Shabneh\t1\tGiancarlo_Fisichella\t1\n";
        let pairs = parse_lfw_pairs(p, text).unwrap();
        assert_eq!(pairs.len(), 4);
        assert_eq!(
            pairs[0],
            NamedPair {
                a: "Abel_Pacheco/Abel_Pacheco_0001.jpg".into(),
                b: "Abel_Pacheco/Abel_Pacheco_0004.jpg".into(),
                same: true
            }
        );
        assert!(!pairs[2].same);
        assert_eq!(
            pairs[3].b,
            "Giancarlo_Fisichella/Giancarlo_Fisichella_0001.jpg"
        );
        let e = parse_lfw_pairs(p, "1\t2\nA\t1\t2\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pairs.txt:1") && e.contains("promises 4 pairs"),
            "{e}"
        );
        let e = parse_lfw_pairs(p, "1\t1\nA\tx\t2\nB\t1\tC\t2\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pairs.txt:2") && e.contains("`x`"), "{e}");
        let e = parse_lfw_pairs(p, "1\t1\nA\t1\nB\t1\tC\t2\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pairs.txt:2"), "{e}");
    }
}
