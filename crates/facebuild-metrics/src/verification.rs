//! Face-verification metrics: genuine/impostor pairs, TAR at a FAR, EER, and decision flips
//! at an operating threshold. A pair is accepted when its score is strictly above the
//! threshold.

use std::collections::HashMap;

use camino::{Utf8Path, Utf8PathBuf};
use serde::Serialize;

use super::similarity::PairSet;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy)]
pub struct Pair {
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
    /// With `max_impostor_pairs`: the sample of impostor pairs that was scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled: Option<SampledImpostors>,
    /// Folds the pairs carry in file order (LFW `pairs.txt`, an InsightFace `.bin`: 10),
    /// when every pair of the file is in the set: the LFW protocol is reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folds: Option<usize>,
}

/// A seeded sample of impostor pairs (`max_impostor_pairs`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SampledImpostors {
    /// The cap asked for.
    pub max_impostor_pairs: u64,
    /// The seed of the sample.
    pub seed: u64,
    /// Impostor pairs in the sample (each pair kept with probability cap / impostor pairs).
    pub kept: usize,
}

/// Pairs over `files` (indices): from a CSV (`file_x,file_y,Decision`, Decision Yes/No,
/// paths relative to `root`), or, when images sit in one folder per identity, every
/// same-identity pair and every cross-identity pair. None when there are no identities.
/// `bin`: the pairs file is an unpacked InsightFace `.bin`'s (10 folds in order).
pub fn pairs_for(
    files: &[Utf8PathBuf],
    root: &Utf8Path,
    pairs_csv: Option<&Utf8Path>,
    bin: bool,
) -> Result<Option<(PairSet, PairSource)>> {
    let index: HashMap<String, usize> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.strip_prefix(root).unwrap_or(f).to_string(), i))
        .collect();
    let mut pairs = Vec::new();
    let kind;
    let mut folds = None;
    if let Some(csv) = pairs_csv {
        let text = std::fs::read_to_string(csv).map_err(|e| Error::io(csv, e))?;
        let named: Vec<_> = if csv
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("txt"))
        {
            // The header's first number: `folds pairs_per_fold`.
            folds = text
                .split_whitespace()
                .next()
                .and_then(|f| f.parse::<usize>().ok());
            crate::preprocess::verification_sets::parse_lfw_pairs(csv, &text)?
                .into_iter()
                .map(|p| (0, p))
                .collect()
        } else {
            if bin {
                folds = Some(10);
            }
            parse_pairs_csv(csv, &text)?
        };
        let listed = named.len();
        for (line, p) in named {
            match (index.get(&p.a), index.get(&p.b)) {
                (Some(&a), Some(&b)) => pairs.push(Pair { a, b, same: p.same }),
                _ => {
                    // Outside the selected subset (`count`): skipped. Not there at all: an
                    // error, since the pairs file and the folder disagree.
                    for f in [&p.a, &p.b] {
                        if !root.join(f).is_file() {
                            let at = if line > 0 {
                                format!("{csv}:{line}")
                            } else {
                                csv.to_string()
                            };
                            return Err(Error::usage(format!(
                                "{at}: the pair names `{f}`, which is not in {root}"
                            ))
                            .with_hint(
                                "paths in a pairs file are relative to the dataset folder",
                            ));
                        }
                    }
                }
            }
        }
        kind = format!("pairs file {}", csv.file_name().unwrap_or_default());
        // Folds hold only when no pair was left out (`count`).
        if pairs.len() != listed {
            folds = None;
        }
    } else {
        return Ok(all_pairs(files, root));
    }
    let genuine = pairs.iter().filter(|p| p.same).count();
    if genuine == 0 || genuine == pairs.len() {
        return Ok(None);
    }
    let impostor = pairs.len() - genuine;
    Ok(Some((
        PairSet::Listed(pairs),
        PairSource {
            kind,
            genuine,
            impostor,
            sampled: None,
            folds: folds.filter(|f| *f >= 2),
        },
    )))
}

/// Each image's identity, numbered by its folder (relative to `root`), and how many there
/// are; None unless every image sits in a folder and there are at least two.
pub fn folder_identities(files: &[Utf8PathBuf], root: &Utf8Path) -> Option<(Vec<u32>, usize)> {
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
        return None;
    }
    let number: HashMap<&String, u32> = distinct
        .iter()
        .enumerate()
        .map(|(k, id)| (*id, k as u32))
        .collect();
    Some((
        ids.iter().flatten().map(|id| number[id]).collect(),
        distinct.len(),
    ))
}

/// Every pair of images that sit in one folder per identity; None without two identities.
fn all_pairs(files: &[Utf8PathBuf], root: &Utf8Path) -> Option<(PairSet, PairSource)> {
    // Every pair i < j, never listed: scored block by block (metrics::similarity).
    let (ids, identities) = folder_identities(files, root)?;
    let mut per_id = vec![0usize; identities];
    for id in &ids {
        per_id[*id as usize] += 1;
    }
    let genuine: usize = per_id.iter().map(|k| k * k.saturating_sub(1) / 2).sum();
    if genuine == 0 {
        return None;
    }
    let set = PairSet::All { ids };
    let total = set.len();
    let kind = format!("folder per identity ({identities} identities)");
    Some((
        set,
        PairSource {
            kind,
            genuine,
            impostor: total - genuine,
            sampled: None,
            folds: None,
        },
    ))
}

/// `file_x,file_y,Decision` lines (a header optional), each with its line number.
fn parse_pairs_csv(
    csv: &Utf8Path,
    text: &str,
) -> Result<Vec<(usize, crate::preprocess::verification_sets::NamedPair)>> {
    let mut out = Vec::new();
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
        out.push((
            n + 1,
            crate::preprocess::verification_sets::NamedPair {
                a: cols[0].to_string(),
                b: cols[1].to_string(),
                same,
            },
        ));
    }
    Ok(out)
}

/// Genuine and impostor scores, each sorted once: every figure (thresholds, TAR at a FAR,
/// EER) then costs a binary search or one merged sweep, so a set of P pairs costs
/// O(P log P) whatever is asked of it. A pair is accepted when its score is strictly above
/// the threshold. Beyond [`EXACT_IMPOSTORS`] impostor pairs only the highest impostor scores
/// are kept (exactly: every threshold at a FAR up to the kept share is exact) and the EER comes
/// from a histogram of all of them, which the figures then state.
pub struct SortedScores {
    /// Ascending.
    genuine: Vec<f64>,
    /// Ascending: every impostor score, or the highest ones (see `histogram`).
    impostor: Vec<f64>,
    /// Impostor pairs in all.
    impostors: usize,
    /// When only the highest impostor scores are kept: every impostor score's bin.
    histogram: Option<Vec<u64>>,
}

/// Up to this many impostor pairs every score is kept (8 bytes each: 160 MB); beyond, the
/// highest ones and a histogram.
pub const EXACT_IMPOSTORS: usize = 20_000_000;
/// Histogram bins over cosine scores in [-1, 1]: a score resolution of 3.05e-5.
const BINS: usize = 65_536;

fn bin_of(s: f64) -> usize {
    (((s.clamp(-1.0, 1.0) + 1.0) / 2.0 * BINS as f64) as usize).min(BINS - 1)
}

/// Collects one score set as it streams by: genuine scores all, impostor scores all up to
/// `exact_limit`, else the top `keep` exactly (pruned by selection, amortised O(1) a score)
/// and a histogram of all.
pub struct ScoreSink {
    genuine: Vec<f64>,
    impostor: Vec<f64>,
    impostors: usize,
    /// `(keep, lowest kept so far, histogram)` beyond the exact limit.
    tail: Option<(usize, f64, Vec<u64>)>,
}

impl ScoreSink {
    /// A sink for `expected` impostor pairs whose thresholds are needed up to FAR `top_far`.
    pub fn new(expected: usize, top_far: f64, exact_limit: usize) -> ScoreSink {
        let tail = (expected > exact_limit).then(|| {
            // A margin over the expected count: a sampled set's size varies a little.
            let keep = (top_far * expected as f64 * 1.1).ceil() as usize + 16;
            (keep, f64::NEG_INFINITY, vec![0u64; BINS])
        });
        ScoreSink {
            genuine: Vec::new(),
            impostor: Vec::new(),
            impostors: 0,
            tail,
        }
    }

    pub fn push(&mut self, same: bool, s: f64) {
        if same {
            self.genuine.push(s);
            return;
        }
        self.impostors += 1;
        let Some((keep, floor, hist)) = &mut self.tail else {
            self.impostor.push(s);
            return;
        };
        hist[bin_of(s)] += 1;
        if s < *floor {
            return;
        }
        self.impostor.push(s);
        if self.impostor.len() >= 2 * *keep {
            // Keep the `keep` highest: everything below the cut can never be needed.
            let cut = self.impostor.len() - *keep;
            self.impostor.select_nth_unstable_by(cut, f64::total_cmp);
            self.impostor.drain(..cut);
            *floor = self.impostor.iter().copied().fold(f64::INFINITY, f64::min);
        }
    }

    pub fn finish(self) -> SortedScores {
        let mut s = SortedScores::from_vecs(self.genuine, self.impostor);
        if let Some((keep, _, hist)) = self.tail {
            let n = s.impostor.len();
            s.impostor.drain(..n.saturating_sub(keep));
            s.impostors = self.impostors;
            s.histogram = Some(hist);
        }
        s
    }
}

/// A deterministic sample of impostor pairs: each is kept with probability `max / total`,
/// decided by a hash of the seed and the pair's position in the (fixed) visiting order, so
/// every score set visited in that order keeps the same pairs.
#[derive(Debug, Clone)]
pub struct ImpostorSample {
    seed: u64,
    /// Keep when the hash is below this (probability x 2^64).
    below: u64,
    next: u64,
}

impl ImpostorSample {
    /// None when `total` does not exceed `max` (nothing to sample).
    pub fn new(max: u64, total: u64, seed: u64) -> Option<ImpostorSample> {
        (total > max).then(|| ImpostorSample {
            seed,
            below: ((max as f64 / total as f64) * u64::MAX as f64) as u64,
            next: 0,
        })
    }

    /// Whether the next impostor pair in visiting order is in the sample.
    pub fn keep(&mut self) -> bool {
        let mut h =
            crate::util::SplitMix64::new(self.seed ^ self.next.wrapping_mul(0xA24B_AED4_963E_E407));
        self.next += 1;
        h.next_u64() < self.below
    }
}

impl SortedScores {
    #[cfg(test)]
    pub fn new(genuine: &[f64], impostor: &[f64]) -> SortedScores {
        Self::from_vecs(genuine.to_vec(), impostor.to_vec())
    }

    /// Sort the vectors in place (no copy: large sets hold tens of millions of scores).
    pub fn from_vecs(mut genuine: Vec<f64>, mut impostor: Vec<f64>) -> SortedScores {
        genuine.sort_unstable_by(f64::total_cmp);
        impostor.sort_unstable_by(f64::total_cmp);
        let impostors = impostor.len();
        SortedScores {
            genuine,
            impostor,
            impostors,
            histogram: None,
        }
    }

    /// The smallest FAR this set can resolve: one impostor pair, 1 / impostors.
    pub fn far_resolution(&self) -> f64 {
        1.0 / self.impostors.max(1) as f64
    }

    /// Whether a TAR at `far` can be measured: at least one impostor may be accepted.
    pub fn resolves(&self, far: f64) -> bool {
        far * self.impostors as f64 >= 1.0
    }

    /// Impostor pairs in the set.
    pub fn impostor_pairs(&self) -> usize {
        self.impostors
    }

    /// What is approximate about this set's figures, in words (nothing when exact).
    pub fn approximations(&self) -> Vec<String> {
        match &self.histogram {
            None => Vec::new(),
            Some(_) => vec![format!(
                "eer from a histogram of {BINS} bins over [-1, 1] (score resolution {:.2e}): {} impostor pairs exceed the {EXACT_IMPOSTORS} kept exactly; TAR at FAR <= {:.2e} is exact (the {} highest impostor scores are kept)",
                2.0 / BINS as f64,
                self.impostors,
                self.impostor.len() as f64 / self.impostors.max(1) as f64,
                self.impostor.len()
            )],
        }
    }

    /// The smallest score of either kind strictly above `x`.
    fn next_above(&self, x: f64) -> Option<f64> {
        let first = |v: &[f64]| v.get(v.partition_point(|y| *y <= x)).copied();
        match (first(&self.genuine), first(&self.impostor)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Threshold at which at most `far` of impostors are accepted. Placed midway between the
    /// boundary impostor's score and the next higher score of any pair, so a candidate
    /// differing by rounding noise does not flip the boundary pair.
    pub fn threshold_at_far(&self, far: f64) -> f64 {
        let n = self.impostors;
        let allowed = (far * n as f64).floor() as usize;
        if allowed >= n {
            return f64::NEG_INFINITY;
        }
        let m = self.impostor.len();
        if allowed >= m {
            // Beyond the kept scores (a FAR above what was asked for): the histogram's edge.
            return self.histogram_threshold(allowed);
        }
        // The (allowed+1)-th highest impostor score.
        let base = self.impostor[m - 1 - allowed];
        match self.next_above(base) {
            Some(next) => (base + next) / 2.0,
            None => base,
        }
    }

    /// The lowest bin edge with at most `allowed` impostors above it.
    fn histogram_threshold(&self, allowed: usize) -> f64 {
        let Some(h) = &self.histogram else {
            return f64::NEG_INFINITY;
        };
        let mut above = 0u64;
        for b in (0..BINS).rev() {
            if above + h[b] > allowed as u64 {
                return -1.0 + (b + 1) as f64 * 2.0 / BINS as f64;
            }
            above += h[b];
        }
        f64::NEG_INFINITY
    }

    /// Share of genuine pairs accepted at `threshold` (NaN without genuine pairs).
    pub fn tar(&self, threshold: f64) -> f64 {
        rate_above(&self.genuine, threshold)
    }

    /// TAR at `far`, or None where the set cannot resolve that FAR.
    pub fn tar_at_far(&self, far: f64) -> Option<f64> {
        self.resolves(far)
            .then(|| self.tar(self.threshold_at_far(far)))
    }

    /// Equal error rate: where false accepts and false rejects cross, over every score as a
    /// threshold (ascending; the first closest crossing wins). One sweep over the distinct
    /// scores of both sorted lists; over the histogram's bin edges when only the highest
    /// impostor scores were kept.
    pub fn eer(&self) -> f64 {
        let mut best = (f64::INFINITY, 0.5);
        if let Some(h) = &self.histogram {
            let n = self.impostors.max(1) as f64;
            let mut above = self.impostors as u64;
            for (b, count) in h.iter().enumerate() {
                above -= count;
                let t = -1.0 + (b + 1) as f64 * 2.0 / BINS as f64;
                let far = above as f64 / n;
                let frr = 1.0 - rate_above(&self.genuine, t);
                let gap = (far - frr).abs();
                if gap < best.0 {
                    best = (gap, (far + frr) / 2.0);
                }
            }
            return best.1;
        }
        let mut t = match (self.genuine.first(), self.impostor.first()) {
            (Some(a), Some(b)) => Some(a.min(*b)),
            (a, b) => a.or(b).copied(),
        };
        while let Some(x) = t {
            let far = rate_above(&self.impostor, x);
            let frr = 1.0 - rate_above(&self.genuine, x);
            let gap = (far - frr).abs();
            if gap < best.0 {
                best = (gap, (far + frr) / 2.0);
            }
            t = self.next_above(x);
        }
        best.1
    }
}

/// Share of `sorted` (ascending) strictly above `threshold`; NaN when empty.
fn rate_above(sorted: &[f64], threshold: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    (sorted.len() - sorted.partition_point(|x| *x <= threshold)) as f64 / sorted.len() as f64
}

/// Verification figures of one score set. A TAR at a FAR below the set's resolution
/// (1 / impostor pairs) is not measurable: it is null, and named in `not_measurable`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Verification {
    /// TAR at FAR 1e-2.
    pub tar_at_far_1e2: Option<f64>,
    /// TAR at FAR 1e-3.
    pub tar_at_far_1e3: Option<f64>,
    /// Equal error rate.
    pub eer: f64,
    /// The accept threshold at the operating FAR.
    pub threshold_at_operating_far: f64,
    /// The smallest FAR the set resolves: 1 / impostor pairs.
    #[serde(default)]
    pub far_resolution: f64,
    /// Figures the set cannot measure (FARs below its resolution).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_measurable: Vec<String>,
    /// What is approximate, and to what resolution (nothing when every figure is exact).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approximate: Vec<String>,
    /// 95% bootstrap interval of `tar_at_far_1e2` (resampled by identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tar_at_far_1e2_ci95: Option<[f64; 2]>,
    /// 95% bootstrap interval of `tar_at_far_1e3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tar_at_far_1e3_ci95: Option<[f64; 2]>,
    /// 95% bootstrap interval of `eer` (sets up to 200,000 pairs, every impostor scored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eer_ci95: Option<[f64; 2]>,
}

/// The 95% intervals of TAR at FAR 1e-2, at 1e-3, and of the EER.
pub type VerificationCi95 = (Option<[f64; 2]>, Option<[f64; 2]>, Option<[f64; 2]>);

impl Verification {
    /// These figures with the 95% intervals of `(tar 1e-2, tar 1e-3, eer)`.
    pub fn with_ci95(self, (tar_1e2, tar_1e3, eer): VerificationCi95) -> Verification {
        Verification {
            tar_at_far_1e2_ci95: tar_1e2.filter(|_| self.tar_at_far_1e2.is_some()),
            tar_at_far_1e3_ci95: tar_1e3.filter(|_| self.tar_at_far_1e3.is_some()),
            eer_ci95: eer,
            ..self
        }
    }
}

/// The figures of listed pairs with their scores (the streaming path is
/// `similarity::for_each_score` then [`verification_of`]).
#[cfg(test)]
pub fn verification(pairs: &[Pair], scores: &[f64], operating_far: f64) -> Verification {
    let (g, i) = split(pairs, scores);
    verification_of(&SortedScores::from_vecs(g, i), operating_far)
}

/// The verification figures of sorted scores.
pub fn verification_of(s: &SortedScores, operating_far: f64) -> Verification {
    let mut not_measurable = Vec::new();
    let mut tar = |far: f64, name: &str| {
        let t = s.tar_at_far(far);
        if t.is_none() {
            not_measurable.push(name.to_string());
        }
        t
    };
    let tar_at_far_1e2 = tar(1e-2, "tar_at_far_1e2");
    let tar_at_far_1e3 = tar(1e-3, "tar_at_far_1e3");
    if !s.resolves(operating_far) {
        not_measurable.push("tar_at_operating_far".into());
    }
    Verification {
        tar_at_far_1e2,
        tar_at_far_1e3,
        eer: s.eer(),
        threshold_at_operating_far: s.threshold_at_far(operating_far),
        far_resolution: s.far_resolution(),
        not_measurable,
        approximate: s.approximations(),
        tar_at_far_1e2_ci95: None,
        tar_at_far_1e3_ci95: None,
        eer_ci95: None,
    }
}

#[cfg(test)]
pub fn split(pairs: &[Pair], scores: &[f64]) -> (Vec<f64>, Vec<f64>) {
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
#[cfg(test)]
pub fn flips(a: &[f64], b: &[f64], threshold: f64) -> usize {
    a.iter()
        .zip(b)
        .filter(|(x, y)| (**x > threshold) != (**y > threshold))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The brute-force definitions the sorted versions must match exactly.
    mod brute {
        pub(super) fn threshold_at_far(genuine: &[f64], impostor: &[f64], far: f64) -> f64 {
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

        pub(super) fn accept_rate(scores: &[f64], threshold: f64) -> f64 {
            if scores.is_empty() {
                return f64::NAN;
            }
            scores.iter().filter(|&&x| x > threshold).count() as f64 / scores.len() as f64
        }

        pub(super) fn eer(genuine: &[f64], impostor: &[f64]) -> f64 {
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
    }

    /// Scores on a coarse grid, so ties are common (the hard case for a sweep).
    fn random_scores(rng: &mut crate::util::SplitMix64, n: usize, shift: f32) -> Vec<f64> {
        (0..n)
            .map(|_| (((rng.unit() + shift) * 50.0).round() / 50.0) as f64)
            .collect()
    }

    /// TAR at a FAR, thresholds and EER from one sort are identical, bit for bit, to the
    /// brute-force definitions, on random score sets with many ties.
    #[test]
    fn sorted_metrics_match_brute_force() {
        let mut rng = crate::util::SplitMix64::new(42);
        for case in 0..200 {
            let ng = 1 + case % 37;
            let ni = 1 + (case * 7) % 211;
            let g = random_scores(&mut rng, ng, 0.4);
            let i = random_scores(&mut rng, ni, -0.2);
            let s = SortedScores::new(&g, &i);
            for far in [0.0, 1e-3, 1e-2, 0.05, 0.1, 0.5, 1.0] {
                let t = s.threshold_at_far(far);
                assert_eq!(t.to_bits(), brute::threshold_at_far(&g, &i, far).to_bits());
                assert_eq!(
                    s.tar(t).to_bits(),
                    brute::accept_rate(&g, t).to_bits(),
                    "case {case} far {far}"
                );
            }
            assert_eq!(
                s.eer().to_bits(),
                brute::eer(&g, &i).to_bits(),
                "case {case}"
            );
            let t = s.threshold_at_far(0.1);
            let moved: Vec<f64> = g.iter().map(|x| x + 0.01).collect();
            assert_eq!(
                flips(&g, &moved, t),
                g.iter()
                    .zip(&moved)
                    .filter(|(a, b)| (**a > t) != (**b > t))
                    .count()
            );
        }
    }

    /// Beyond the exact limit, the kept top impostor scores give thresholds and TARs
    /// identical to the exact path up to the kept FAR, and the histogram's EER is within
    /// its resolution; the report says which figure is approximate.
    #[test]
    fn tail_and_histogram_match_the_exact_figures() {
        let mut rng = crate::util::SplitMix64::new(11);
        let g: Vec<f64> = (0..400).map(|_| (rng.unit() * 0.3 + 0.5) as f64).collect();
        let i: Vec<f64> = (0..50_000).map(|_| (rng.unit() * 0.5) as f64).collect();
        let exact = SortedScores::new(&g, &i);
        let mut sink = ScoreSink::new(i.len(), 1e-2, 1000);
        for (same, s) in g
            .iter()
            .map(|s| (true, *s))
            .chain(i.iter().map(|s| (false, *s)))
        {
            sink.push(same, s);
        }
        let tail = sink.finish();
        assert!(
            tail.impostor.len() <= 600,
            "only the top kept: {}",
            tail.impostor.len()
        );
        assert_eq!(tail.far_resolution(), exact.far_resolution());
        for far in [1e-4, 1e-3, 5e-3, 1e-2] {
            assert_eq!(
                tail.threshold_at_far(far).to_bits(),
                exact.threshold_at_far(far).to_bits(),
                "far {far}"
            );
            assert_eq!(tail.tar_at_far(far), exact.tar_at_far(far));
        }
        let bin = 2.0 / BINS as f64;
        // The EER moves by at most the share of scores within one bin of the crossing.
        assert!(
            (tail.eer() - exact.eer()).abs() < 0.01,
            "{} vs {}",
            tail.eer(),
            exact.eer()
        );
        let v = verification_of(&tail, 1e-3);
        assert_eq!(v.approximate.len(), 1);
        assert!(
            v.approximate[0].contains("histogram")
                && v.approximate[0].contains(&format!("{bin:.2e}"))
        );
        assert!(verification_of(&exact, 1e-3).approximate.is_empty());
    }

    /// A sample keeps about `max` pairs, the same ones for every score set visited in the
    /// same order, and another seed keeps others.
    #[test]
    fn impostor_samples_are_seeded_and_sized() {
        assert!(ImpostorSample::new(100, 100, 1).is_none());
        let kept = |seed| {
            let mut s = ImpostorSample::new(10_000, 1_000_000, seed).unwrap();
            (0..1_000_000).map(|_| s.keep()).collect::<Vec<bool>>()
        };
        let (a, b, c) = (kept(1), kept(1), kept(2));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let n = a.iter().filter(|k| **k).count();
        assert!((9_500..10_500).contains(&n), "{n}");
    }

    /// A known case, by hand.
    #[test]
    fn tar_far_and_eer_on_a_known_case() {
        let genuine = [0.9, 0.8, 0.7, 0.3];
        let impostor = [0.1, 0.2, 0.35, 0.6];
        let s = SortedScores::new(&genuine, &impostor);
        // One impostor (0.6) may pass at FAR 0.25: midway between 0.35 and the next score, 0.6.
        assert!((s.threshold_at_far(0.25) - 0.475).abs() < 1e-12);
        assert_eq!(s.tar(0.475), 0.75);
        assert!((s.threshold_at_far(1e-3) - 0.65).abs() < 1e-12);
        assert_eq!(s.eer(), 0.25);
        assert_eq!(flips(&[0.5, 0.7], &[0.7, 0.7], 0.6), 1);
    }

    /// With 261 impostor pairs a FAR of 1e-3 cannot be resolved: its TAR is not measurable,
    /// and the report says so; 1e-2 (2.6 impostors) is.
    #[test]
    fn far_resolution_is_reported_and_enforced() {
        let mut rng = crate::util::SplitMix64::new(7);
        let g = random_scores(&mut rng, 38, 0.4);
        let i = random_scores(&mut rng, 261, -0.2);
        let pairs: Vec<Pair> = (0..g.len() + i.len())
            .map(|k| Pair {
                a: k,
                b: k,
                same: k < g.len(),
            })
            .collect();
        let scores: Vec<f64> = g.iter().chain(&i).copied().collect();
        let v = verification(&pairs, &scores, 1e-3);
        assert_eq!(v.far_resolution, 1.0 / 261.0);
        assert_eq!(v.tar_at_far_1e3, None);
        assert!(v.tar_at_far_1e2.is_some());
        assert_eq!(v.not_measurable, ["tar_at_far_1e3", "tar_at_operating_far"]);
        let v = verification(&pairs, &scores, 1e-2);
        assert_eq!(v.not_measurable, ["tar_at_far_1e3"]);
    }

    /// A pairs file naming an image that is not in the folder is an error at its line;
    /// one left out by `count` is skipped.
    #[test]
    fn pairs_naming_missing_images_are_located_errors() {
        let d = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(d.path()).unwrap();
        for f in ["a.jpg", "b.jpg", "c.jpg"] {
            std::fs::write(root.join(f), b"x").unwrap();
        }
        let csv = root.join("pairs.csv");
        std::fs::write(
            &csv,
            "file_x,file_y,Decision\na.jpg,b.jpg,Yes\na.jpg,c.jpg,No\n",
        )
        .unwrap();
        // c.jpg exists but is not selected: its pair is skipped (and no impostor is left).
        let files = vec![root.join("a.jpg"), root.join("b.jpg")];
        assert!(
            pairs_for(&files, root, Some(&csv), false)
                .unwrap()
                .is_none()
        );
        std::fs::write(
            &csv,
            "file_x,file_y,Decision\na.jpg,b.jpg,Yes\na.jpg,gone.jpg,No\n",
        )
        .unwrap();
        let e = pairs_for(&files, root, Some(&csv), false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("pairs.csv:3") && e.contains("`gone.jpg`"), "{e}");
    }
}
