//! Face-verification metrics: genuine/impostor pairs, TAR at a FAR, EER, and decision flips
//! at an operating threshold. A pair is accepted when its score is strictly above the
//! threshold.

use std::collections::HashMap;

use camino::{Utf8Path, Utf8PathBuf};
use serde::Serialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy)]
pub(crate) struct Pair {
    pub a: usize,
    pub b: usize,
    pub same: bool,
}

/// Where the pairs came from, for the report.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PairSource {
    pub kind: String,
    pub genuine: usize,
    pub impostor: usize,
}

/// Pairs over `files` (indices): from a CSV (`file_x,file_y,Decision`, Decision Yes/No,
/// paths relative to `root`), or, when images sit in one folder per identity, every
/// same-identity pair and every cross-identity pair. None when there are no identities.
pub(crate) fn pairs_for(
    files: &[Utf8PathBuf],
    root: &Utf8Path,
    pairs_csv: Option<&Utf8Path>,
) -> Result<Option<(Vec<Pair>, PairSource)>> {
    let index: HashMap<String, usize> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.strip_prefix(root).unwrap_or(f).to_string(), i))
        .collect();
    let mut pairs = Vec::new();
    let kind;
    if let Some(csv) = pairs_csv {
        let text = std::fs::read_to_string(csv).map_err(|e| Error::io(csv, e))?;
        for (n, line) in text.lines().enumerate() {
            let cols: Vec<&str> = line.split(',').map(str::trim).collect();
            if n == 0
                && cols
                    .first()
                    .is_some_and(|c| c.eq_ignore_ascii_case("file_x"))
                || line.trim().is_empty()
            {
                continue;
            }
            if cols.len() < 3 {
                return Err(Error::usage(format!(
                    "{csv}:{}: expected `file_x,file_y,Decision`, got `{line}`",
                    n + 1
                )));
            }
            let same = match cols[2].to_ascii_lowercase().as_str() {
                "yes" | "1" | "true" | "same" => true,
                "no" | "0" | "false" | "different" => false,
                other => {
                    return Err(Error::usage(format!(
                        "{csv}:{}: Decision `{other}` is not Yes/No",
                        n + 1
                    )));
                }
            };
            // Pairs naming images outside the selected subset are skipped, not errors.
            if let (Some(&a), Some(&b)) = (index.get(cols[0]), index.get(cols[1])) {
                pairs.push(Pair { a, b, same });
            }
        }
        kind = format!("pairs file {}", csv.file_name().unwrap_or_default());
    } else {
        let ids: Vec<Option<String>> = files
            .iter()
            .map(|f| {
                f.strip_prefix(root)
                    .ok()
                    .and_then(|r| r.parent())
                    .map(|p| p.to_string())
                    .filter(|p| !p.is_empty())
            })
            .collect();
        let distinct: std::collections::BTreeSet<&String> = ids.iter().flatten().collect();
        if distinct.len() < 2 || ids.iter().any(Option::is_none) {
            return Ok(None);
        }
        for i in 0..files.len() {
            for j in i + 1..files.len() {
                pairs.push(Pair {
                    a: i,
                    b: j,
                    same: ids[i] == ids[j],
                });
            }
        }
        kind = format!("folder per identity ({} identities)", distinct.len());
    }
    let genuine = pairs.iter().filter(|p| p.same).count();
    if genuine == 0 || genuine == pairs.len() {
        return Ok(None);
    }
    Ok(Some((
        pairs.clone(),
        PairSource {
            kind,
            genuine,
            impostor: pairs.len() - genuine,
        },
    )))
}

/// Threshold at which at most `far` of impostors are accepted (score > threshold). Placed
/// midway between the boundary impostor's score and the next higher score of any pair, so a
/// candidate differing by rounding noise does not flip the boundary pair.
pub(crate) fn threshold_at_far(genuine: &[f64], impostor: &[f64], far: f64) -> f64 {
    let mut s = impostor.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    let allowed = (far * s.len() as f64).floor() as usize;
    if allowed >= s.len() {
        return f64::NEG_INFINITY;
    }
    let base = s[allowed];
    let next = genuine
        .iter()
        .chain(impostor)
        .copied()
        .filter(|&x| x > base)
        .fold(f64::INFINITY, f64::min);
    if next.is_finite() {
        (base + next) / 2.0
    } else {
        base
    }
}

pub(crate) fn accept_rate(scores: &[f64], threshold: f64) -> f64 {
    if scores.is_empty() {
        return f64::NAN;
    }
    scores.iter().filter(|&&x| x > threshold).count() as f64 / scores.len() as f64
}

/// Equal error rate: the point where false accepts and false rejects cross.
pub(crate) fn eer(genuine: &[f64], impostor: &[f64]) -> f64 {
    let mut thresholds: Vec<f64> = genuine.iter().chain(impostor).copied().collect();
    thresholds.sort_by(|a, b| a.total_cmp(b));
    let mut best = (f64::INFINITY, 0.5);
    for t in thresholds {
        let far = accept_rate(impostor, t);
        let frr = 1.0 - accept_rate(genuine, t);
        let gap = (far - frr).abs();
        if gap < best.0 {
            best = (gap, (far + frr) / 2.0);
        }
    }
    best.1
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Verification {
    pub tar_at_far_1e2: f64,
    pub tar_at_far_1e3: f64,
    pub eer: f64,
    pub threshold_at_operating_far: f64,
}

pub(crate) fn verification(pairs: &[Pair], scores: &[f64], operating_far: f64) -> Verification {
    let (g, i) = split(pairs, scores);
    Verification {
        tar_at_far_1e2: accept_rate(&g, threshold_at_far(&g, &i, 1e-2)),
        tar_at_far_1e3: accept_rate(&g, threshold_at_far(&g, &i, 1e-3)),
        eer: eer(&g, &i),
        threshold_at_operating_far: threshold_at_far(&g, &i, operating_far),
    }
}

pub(crate) fn split(pairs: &[Pair], scores: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let g = pairs
        .iter()
        .zip(scores)
        .filter(|(p, _)| p.same)
        .map(|(_, s)| *s)
        .collect();
    let i = pairs
        .iter()
        .zip(scores)
        .filter(|(p, _)| !p.same)
        .map(|(_, s)| *s)
        .collect();
    (g, i)
}

/// Pairs whose accept/reject decision at `threshold` differs between two score sets.
pub(crate) fn flips(a: &[f64], b: &[f64], threshold: f64) -> usize {
    a.iter()
        .zip(b)
        .filter(|(x, y)| (**x > threshold) != (**y > threshold))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_far_and_eer_on_a_known_case() {
        let genuine = [0.9, 0.8, 0.7, 0.3];
        let impostor = [0.1, 0.2, 0.35, 0.6];
        // One impostor (0.6) may pass at FAR 0.25: midway between 0.35 and the next score, 0.6.
        assert!((threshold_at_far(&genuine, &impostor, 0.25) - 0.475).abs() < 1e-12);
        assert_eq!(accept_rate(&genuine, 0.475), 0.75);
        assert!((threshold_at_far(&genuine, &impostor, 1e-3) - 0.65).abs() < 1e-12);
        assert_eq!(accept_rate(&impostor, 0.65), 0.0);
        assert_eq!(eer(&genuine, &impostor), 0.25);
        assert_eq!(flips(&[0.5, 0.7], &[0.7, 0.7], 0.6), 1);
    }
}
