//! How sure a figure is: seeded bootstrap intervals over the units a set is made of, the
//! exact McNemar test on paired decisions, and the set size that would resolve a gate.
//!
//! A replicate draws the units (identities, or images) with replacement; a unit drawn k
//! times weighs k. Pair figures weigh a pair by its units: a genuine pair (or any pair inside
//! one unit) by w_a, a pair across units by w_a * w_b, so pairs that share a person move
//! together, as NIST's subject-level resampling does. Percentile intervals; replicates run in
//! parallel, each from its own seed, so the result does not depend on the thread count.

use std::collections::HashMap;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::util::SplitMix64;

/// Replicates when a manifest does not say.
pub const DEFAULT_REPLICATES: usize = 1000;

/// The confidences intervals are kept at (`confidence:` takes one of these).
pub const CONFIDENCES: [f64; 3] = [0.90, 0.95, 0.99];

/// A figure's bootstrap intervals, and what was resampled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// 90% percentile interval, `[low, high]`.
    pub ci90: [f64; 2],
    /// 95% percentile interval.
    pub ci95: [f64; 2],
    /// 99% percentile interval.
    pub ci99: [f64; 2],
    /// What a replicate draws: `identity`, `genuine-pair component` or `image`.
    pub resampled_by: String,
    /// How many of them the set holds.
    pub units: usize,
    /// Replicates that gave a value.
    pub replicates: usize,
}

impl Spread {
    /// The intervals of replicate values (NaN ones, where a replicate has no value, are
    /// left out); None without any value.
    pub fn from_replicates(
        mut values: Vec<f64>,
        resampled_by: &str,
        units: usize,
    ) -> Option<Spread> {
        values.retain(|v| !v.is_nan());
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let at = |c: f64| {
            [
                quantile(&values, (1.0 - c) / 2.0),
                quantile(&values, (1.0 + c) / 2.0),
            ]
        };
        Some(Spread {
            ci90: at(0.90),
            ci95: at(0.95),
            ci99: at(0.99),
            resampled_by: resampled_by.to_string(),
            units,
            replicates: values.len(),
        })
    }

    /// The interval at `confidence` (one of [`CONFIDENCES`]).
    pub fn at(&self, confidence: f64) -> Option<[f64; 2]> {
        match confidence {
            c if (c - 0.90).abs() < 1e-9 => Some(self.ci90),
            c if (c - 0.95).abs() < 1e-9 => Some(self.ci95),
            c if (c - 0.99).abs() < 1e-9 => Some(self.ci99),
            _ => None,
        }
    }
}

/// Linear interpolation between order statistics (R's type 7) of ascending `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    let h = (v.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    v[lo] + (h - lo as f64) * (v[hi] - v[lo])
}

/// How a bootstrap draws: replicates and seed (`bootstrap_replicates`, `bootstrap_seed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bootstrap {
    /// Replicates to draw.
    pub replicates: usize,
    /// The seed of replicate 0; replicate b's is derived from it.
    pub seed: u64,
}

impl Bootstrap {
    /// Unit weights of replicate `b`: `units` draws with replacement.
    pub fn weights(&self, b: usize, units: usize) -> Vec<u32> {
        let mut w = vec![0u32; units];
        if units == 0 {
            return w;
        }
        let mut rng =
            SplitMix64::new(self.seed ^ (b as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
        for _ in 0..units {
            let k = ((rng.next_u64() as u128 * units as u128) >> 64) as usize;
            w[k] += 1;
        }
        w
    }

    /// `stats(weights, out)` over every replicate: `k` figures each, returned per figure.
    pub fn run(
        &self,
        units: usize,
        k: usize,
        stats: impl Fn(&[u32], &mut [f64]) + Sync,
    ) -> Vec<Vec<f64>> {
        let rows: Vec<Vec<f64>> = (0..self.replicates)
            .into_par_iter()
            .map(|b| {
                let w = self.weights(b, units);
                let mut out = vec![f64::NAN; k];
                stats(&w, &mut out);
                out
            })
            .collect();
        (0..k)
            .map(|i| rows.iter().map(|r| r[i]).collect())
            .collect()
    }
}

/// The weight of a pair of units `a`, `b` in a replicate.
fn pair_weight(w: &[u32], a: u32, b: u32) -> f64 {
    if a == b {
        w[a as usize] as f64
    } else {
        w[a as usize] as f64 * w[b as usize] as f64
    }
}

/// One scored pair: reference and candidate scores, and the units of its two images.
#[derive(Debug, Clone, Copy)]
struct Scored {
    r: f32,
    c: f32,
    a: u32,
    b: u32,
}

/// The total impostor weight of a replicate.
enum ImpostorTotal {
    /// Listed pairs: impostor pairs per pair of units.
    Counts(HashMap<(u32, u32), f64>),
    /// Every pair across units of these sizes (a folder per identity), of which a share
    /// `rate` was scored (`max_impostor_pairs`).
    AllAcross { sizes: Vec<f64>, rate: f64 },
}

/// Impostor pairs kept for the bootstrap beyond this many: the highest by either score (the
/// TAR at the operating FAR only reads the top of the impostor scores).
const KEEP_IMPOSTORS: usize = 200_000;

/// A reference and a candidate scored on the same pairs, kept with the pairs' units for
/// identity-resampled intervals of TAR at the operating FAR, its drop, and decision flips
/// at the reference's threshold.
pub struct PairedScores {
    units: usize,
    resampled_by: String,
    threshold: f64,
    far: f64,
    genuine: Vec<Scored>,
    impostor: Vec<Scored>,
    /// Lowest max(r, c) kept once impostors are pruned.
    floor: f32,
    keep: usize,
    truncated: bool,
    total: ImpostorTotal,
    flips: Vec<(u32, u32)>,
    accept_to_reject: u64,
    reject_to_accept: u64,
    diff: DiffStats,
}

impl PairedScores {
    /// Listed pairs over `units` units: the total impostor weight is counted as pairs come.
    pub fn listed(units: usize, resampled_by: &str, threshold: f64, far: f64) -> PairedScores {
        Self::new(
            units,
            resampled_by,
            threshold,
            far,
            ImpostorTotal::Counts(HashMap::new()),
            0,
        )
    }

    /// Every pair across units (a folder per identity; `sizes[u]` images in unit `u`), of
    /// which about `expected_impostors` are scored (a share `rate` of all).
    pub fn all_pairs(
        sizes: Vec<usize>,
        threshold: f64,
        far: f64,
        rate: f64,
        expected_impostors: usize,
    ) -> PairedScores {
        let units = sizes.len();
        let sizes = sizes.into_iter().map(|s| s as f64).collect();
        // TAR is resampled at the operating FAR and at 1e-2: keep four times that share.
        let keep = (4.0 * far.max(1e-2) * expected_impostors as f64).ceil() as usize;
        Self::new(
            units,
            "identity",
            threshold,
            far,
            ImpostorTotal::AllAcross { sizes, rate },
            keep,
        )
    }

    fn new(
        units: usize,
        resampled_by: &str,
        threshold: f64,
        far: f64,
        total: ImpostorTotal,
        keep: usize,
    ) -> PairedScores {
        PairedScores {
            units,
            resampled_by: resampled_by.into(),
            threshold,
            far,
            genuine: Vec::new(),
            impostor: Vec::new(),
            floor: f32::NEG_INFINITY,
            keep: keep.max(KEEP_IMPOSTORS),
            truncated: false,
            total,
            flips: Vec::new(),
            accept_to_reject: 0,
            reject_to_accept: 0,
            diff: DiffStats::default(),
        }
    }

    /// One pair, in visiting order: its kind, its images' units, and both scores.
    pub fn push(&mut self, same: bool, a: u32, b: u32, r: f32, c: f32) {
        let (a, b) = if a <= b { (a, b) } else { (b, a) };
        let t = self.threshold;
        let (ra, ca) = (r as f64 > t, c as f64 > t);
        if ra != ca {
            self.flips.push((a, b));
            if ra {
                self.accept_to_reject += 1;
            } else {
                self.reject_to_accept += 1;
            }
        }
        self.diff.push(c as f64 - r as f64);
        let s = Scored { r, c, a, b };
        if same {
            self.genuine.push(s);
            return;
        }
        if let ImpostorTotal::Counts(m) = &mut self.total {
            *m.entry((a, b)).or_default() += 1.0;
        }
        if r.max(c) < self.floor {
            return;
        }
        self.impostor.push(s);
        if self.impostor.len() >= 2 * self.keep {
            let cut = self.impostor.len() - self.keep;
            self.impostor
                .select_nth_unstable_by(cut, |x, y| x.r.max(x.c).total_cmp(&y.r.max(y.c)));
            self.impostor.drain(..cut);
            self.floor = self
                .impostor
                .iter()
                .map(|x| x.r.max(x.c))
                .fold(f32::INFINITY, f32::min);
            self.truncated = true;
        }
    }

    /// Decision flips at the reference's threshold, accept -> reject and reject -> accept.
    pub fn flip_counts(&self) -> (u64, u64) {
        (self.accept_to_reject, self.reject_to_accept)
    }

    /// The exact McNemar p-value of the flips (two-sided).
    pub fn mcnemar_p(&self) -> f64 {
        mcnemar_exact(self.accept_to_reject, self.reject_to_accept)
    }

    /// candidate - reference, per pair.
    pub fn differences(&self) -> ScoreDifferences {
        self.diff.finish()
    }

    /// Intervals of TAR at the operating FAR (reference, candidate), its drop, flips, TAR at
    /// FAR 1e-2 and 1e-3 and, up to [`EER_PAIRS`] pairs with every impostor kept, the EER.
    pub fn intervals(&self, boot: &Bootstrap) -> PairIntervals {
        let desc = |score: fn(&Scored) -> f32| {
            let mut o: Vec<u32> = (0..self.impostor.len() as u32).collect();
            o.sort_unstable_by(|x, y| {
                score(&self.impostor[*y as usize]).total_cmp(&score(&self.impostor[*x as usize]))
            });
            o
        };
        let (by_r, by_c) = (desc(|p| p.r), desc(|p| p.c));
        // Every pair ascending by each score, for the EER sweep.
        let sweep = (!self.truncated && self.genuine.len() + self.impostor.len() <= EER_PAIRS)
            .then(|| {
                let all: Vec<(Scored, bool)> = self
                    .genuine
                    .iter()
                    .map(|p| (*p, true))
                    .chain(self.impostor.iter().map(|p| (*p, false)))
                    .collect();
                let asc = |score: fn(&Scored) -> f32| {
                    let mut v: Vec<(f32, u32, u32, bool)> =
                        all.iter().map(|(p, g)| (score(p), p.a, p.b, *g)).collect();
                    v.sort_unstable_by(|x, y| x.0.total_cmp(&y.0));
                    v
                };
                (asc(|p| p.r), asc(|p| p.c))
            });
        let cols = boot.run(self.units, 10, |w, out| {
            let total = self.impostor_weight(w);
            let g: f64 = self.genuine.iter().map(|p| pair_weight(w, p.a, p.b)).sum();
            let tar = |far: f64, order: &[u32], score: fn(&Scored) -> f32| -> f64 {
                if g <= 0.0 || total * far < 1.0 {
                    return f64::NAN;
                }
                let t = self.threshold_in(w, order, score, far * total);
                if t.is_nan() {
                    return f64::NAN;
                }
                let above: f64 = self
                    .genuine
                    .iter()
                    .filter(|p| score(p) as f64 > t)
                    .map(|p| pair_weight(w, p.a, p.b))
                    .sum();
                above / g
            };
            let (rt, ct) = (tar(self.far, &by_r, |p| p.r), tar(self.far, &by_c, |p| p.c));
            out[0] = rt;
            out[1] = ct;
            out[2] = rt - ct;
            out[3] = self.flips.iter().map(|(a, b)| pair_weight(w, *a, *b)).sum();
            out[4] = tar(1e-2, &by_r, |p| p.r);
            out[5] = tar(1e-2, &by_c, |p| p.c);
            out[6] = tar(1e-3, &by_r, |p| p.r);
            out[7] = tar(1e-3, &by_c, |p| p.c);
            if let Some((r, c)) = &sweep {
                out[8] = weighted_eer(r, w);
                out[9] = weighted_eer(c, w);
            }
        });
        let mut it = cols
            .into_iter()
            .map(|c| Spread::from_replicates(c, &self.resampled_by, self.units));
        let mut next = || it.next().flatten();
        PairIntervals {
            tar_reference: next(),
            tar_candidate: next(),
            tar_drop: next(),
            flips: next(),
            tar_1e2: [next(), next()],
            tar_1e3: [next(), next()],
            eer: [next(), next()],
        }
    }

    /// The impostor weight of a replicate.
    fn impostor_weight(&self, w: &[u32]) -> f64 {
        match &self.total {
            ImpostorTotal::Counts(m) => {
                m.iter().map(|((a, b), n)| n * pair_weight(w, *a, *b)).sum()
            }
            ImpostorTotal::AllAcross { sizes, rate } => {
                let (mut s, mut sq) = (0.0, 0.0);
                for (n, k) in sizes.iter().zip(w) {
                    let x = n * *k as f64;
                    s += x;
                    sq += x * x;
                }
                (s * s - sq) / 2.0 * rate
            }
        }
    }

    /// The score of the first impostor (descending `order`) whose cumulative weight exceeds
    /// `allowed`: accepting strictly above it lets at most `allowed` through.
    fn threshold_in(
        &self,
        w: &[u32],
        order: &[u32],
        score: fn(&Scored) -> f32,
        allowed: f64,
    ) -> f64 {
        let mut cum = 0.0;
        for &i in order {
            let p = &self.impostor[i as usize];
            cum += pair_weight(w, p.a, p.b);
            if cum > allowed {
                return score(p) as f64;
            }
        }
        if self.truncated {
            f64::NAN
        } else {
            f64::NEG_INFINITY
        }
    }
}

/// Pairs up to which EER intervals are resampled (each replicate sweeps every pair).
pub const EER_PAIRS: usize = 200_000;

/// The EER of weighted pairs sorted ascending by score: over every distinct score as the
/// threshold (accepted strictly above), where false accepts and false rejects are closest
/// (the first such, ascending), as the point estimate defines it.
fn weighted_eer(asc: &[(f32, u32, u32, bool)], w: &[u32]) -> f64 {
    let (mut g, mut i) = (0.0, 0.0);
    for (_, a, b, same) in asc {
        let x = pair_weight(w, *a, *b);
        if *same { g += x } else { i += x }
    }
    if g <= 0.0 || i <= 0.0 {
        return f64::NAN;
    }
    let (mut g_le, mut i_le) = (0.0, 0.0);
    let mut best = (f64::INFINITY, 0.5);
    let mut k = 0;
    while k < asc.len() {
        let x = asc[k].0;
        while k < asc.len() && asc[k].0 == x {
            let (_, a, b, same) = asc[k];
            let v = pair_weight(w, a, b);
            if same {
                g_le += v
            } else {
                i_le += v
            }
            k += 1;
        }
        let far = (i - i_le) / i;
        let frr = g_le / g;
        let gap = (far - frr).abs();
        if gap < best.0 {
            best = (gap, (far + frr) / 2.0);
        }
    }
    best.1
}

/// Intervals of a candidate's pair figures.
#[derive(Debug, Clone)]
pub struct PairIntervals {
    /// The reference's TAR at the operating FAR.
    pub tar_reference: Option<Spread>,
    /// The candidate's TAR at the operating FAR.
    pub tar_candidate: Option<Spread>,
    /// reference - candidate.
    pub tar_drop: Option<Spread>,
    /// Decision flips at the reference's threshold.
    pub flips: Option<Spread>,
    /// TAR at FAR 1e-2, reference and candidate.
    pub tar_1e2: [Option<Spread>; 2],
    /// TAR at FAR 1e-3, reference and candidate.
    pub tar_1e3: [Option<Spread>; 2],
    /// EER, reference and candidate (up to [`EER_PAIRS`] pairs, every impostor kept).
    pub eer: [Option<Spread>; 2],
}

/// Streaming statistics of per-pair score differences; quantiles from a histogram of
/// 1e-5-wide bins over [-2, 2].
#[derive(Debug, Clone)]
struct DiffStats {
    n: u64,
    sum: f64,
    sum_sq: f64,
    sum_abs: f64,
    min: f64,
    max: f64,
    hist: Vec<u32>,
}

const DIFF_BINS: usize = 400_000;

impl Default for DiffStats {
    fn default() -> Self {
        DiffStats {
            n: 0,
            sum: 0.0,
            sum_sq: 0.0,
            sum_abs: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            hist: Vec::new(),
        }
    }
}

impl DiffStats {
    fn push(&mut self, d: f64) {
        if self.hist.is_empty() {
            self.hist = vec![0; DIFF_BINS];
        }
        self.n += 1;
        self.sum += d;
        self.sum_sq += d * d;
        self.sum_abs += d.abs();
        self.min = self.min.min(d);
        self.max = self.max.max(d);
        let bin =
            (((d.clamp(-2.0, 2.0) + 2.0) / 4.0 * DIFF_BINS as f64) as usize).min(DIFF_BINS - 1);
        self.hist[bin] += 1;
    }

    fn finish(&self) -> ScoreDifferences {
        let q = |p: f64| {
            let rank = ((p * self.n as f64).ceil() as u64).clamp(1, self.n.max(1));
            let mut seen = 0u64;
            for (b, k) in self.hist.iter().enumerate() {
                seen += *k as u64;
                if seen >= rank {
                    let center = -2.0 + (b as f64 + 0.5) * 4.0 / DIFF_BINS as f64;
                    return center.clamp(self.min, self.max);
                }
            }
            f64::NAN
        };
        let n = self.n.max(1) as f64;
        let mean = self.sum / n;
        ScoreDifferences {
            pairs: self.n,
            mean,
            std: (self.sum_sq / n - mean * mean).max(0.0).sqrt(),
            mean_abs: self.sum_abs / n,
            min: self.min,
            p01: q(0.01),
            p50: q(0.5),
            p99: q(0.99),
            max: self.max,
        }
    }
}

/// The distribution of candidate - reference score over the pairs (quantiles to 1e-5).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScoreDifferences {
    pub pairs: u64,
    pub mean: f64,
    pub std: f64,
    pub mean_abs: f64,
    pub min: f64,
    pub p01: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Exact two-sided McNemar test: under no difference, each of the `b + c` discordant pairs
/// is b or c with probability 1/2; p = 2 P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), at
/// most 1. Summed in log space, so large counts do not underflow.
pub fn mcnemar_exact(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // ln C(n, i) by the recurrence C(n, i+1) = C(n, i) (n - i) / (i + 1).
    let ln_half_n = n as f64 * 0.5f64.ln();
    let mut ln_c = 0.0;
    let mut terms = Vec::with_capacity(k as usize + 1);
    for i in 0..=k {
        terms.push(ln_c + ln_half_n);
        ln_c += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
    }
    let top = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let tail = top.exp() * terms.iter().map(|t| (t - top).exp()).sum::<f64>();
    (2.0 * tail).min(1.0)
}

/// How many units would about resolve a gate whose `interval` straddles `limit`: an
/// interval narrows as 1/sqrt(units), so the half-width toward the limit must shrink to the
/// distance between the figure and the limit. None when the figure sits on the limit.
pub fn units_to_resolve(value: f64, interval: [f64; 2], limit: f64, units: usize) -> Option<usize> {
    let gap = (value - limit).abs();
    if gap <= f64::EPSILON * value.abs().max(1.0) {
        return None;
    }
    let half = if limit < value {
        value - interval[0]
    } else {
        interval[1] - value
    };
    let factor = (half / gap).powi(2);
    Some(((units as f64) * factor).ceil().max(units as f64 + 1.0) as usize)
}

/// Units of a listed pair set without identities: the connected components of its genuine
/// pairs over `images` images (an image in no genuine pair is a unit of its own).
pub fn genuine_components(
    images: usize,
    genuine: impl Iterator<Item = (usize, usize)>,
) -> (Vec<u32>, usize) {
    let mut uf = petgraph::unionfind::UnionFind::<usize>::new(images);
    for (a, b) in genuine {
        uf.union(a, b);
    }
    let mut number: HashMap<usize, u32> = HashMap::new();
    let labels = (0..images)
        .map(|i| {
            let root = uf.find(i);
            let next = number.len() as u32;
            *number.entry(root).or_insert(next)
        })
        .collect();
    (labels, number.len())
}

/// Per-unit figures resampled by unit: ratio of sums, or extremes of per-unit values.
#[derive(Debug, Clone, Copy)]
pub enum UnitStat<'a> {
    /// Σ w num / Σ w den.
    Ratio(&'a [f64], &'a [f64]),
    /// Max over units drawn at least once (NaN values: units without one).
    Max(&'a [f64]),
    /// Min over units drawn at least once.
    Min(&'a [f64]),
}

impl UnitStat<'_> {
    fn eval(&self, w: &[u32]) -> f64 {
        match self {
            UnitStat::Ratio(num, den) => {
                let (mut n, mut d) = (0.0, 0.0);
                for ((x, y), k) in num.iter().zip(*den).zip(w) {
                    n += x * *k as f64;
                    d += y * *k as f64;
                }
                if d > 0.0 { n / d } else { f64::NAN }
            }
            UnitStat::Max(v) => extreme(v, w, f64::max),
            UnitStat::Min(v) => extreme(v, w, f64::min),
        }
    }
}

fn extreme(v: &[f64], w: &[u32], pick: fn(f64, f64) -> f64) -> f64 {
    v.iter()
        .zip(w)
        .filter(|(x, k)| **k > 0 && !x.is_nan())
        .map(|(x, _)| *x)
        .reduce(pick)
        .unwrap_or(f64::NAN)
}

/// Intervals of several per-unit figures from the same replicates.
pub fn unit_intervals(
    boot: &Bootstrap,
    units: usize,
    resampled_by: &str,
    stats: &[UnitStat],
) -> Vec<Option<Spread>> {
    boot.run(units, stats.len(), |w, out| {
        for (o, s) in out.iter_mut().zip(stats) {
            *o = s.eval(w);
        }
    })
    .into_iter()
    .map(|c| Spread::from_replicates(c, resampled_by, units))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known McNemar values: b = 0, c = 5 gives 2 / 32; b = c gives 1; large counts stay
    /// finite.
    #[test]
    fn mcnemar_exact_known_values() {
        assert!((mcnemar_exact(0, 5) - 2.0 / 32.0).abs() < 1e-12);
        assert!((mcnemar_exact(1, 4) - 2.0 * 6.0 / 32.0).abs() < 1e-12);
        assert_eq!(mcnemar_exact(3, 3), 1.0);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        let p = mcnemar_exact(4000, 5000);
        assert!(p > 0.0 && p < 1e-20, "{p}");
    }

    /// Percentile intervals by type-7 quantiles, NaN replicates left out.
    #[test]
    fn spread_quantiles() {
        let v: Vec<f64> = (0..=100).map(f64::from).chain([f64::NAN]).collect();
        let s = Spread::from_replicates(v, "image", 5).unwrap();
        let near =
            |a: [f64; 2], b: [f64; 2]| (a[0] - b[0]).abs() < 1e-9 && (a[1] - b[1]).abs() < 1e-9;
        assert!(
            near(s.ci95, [2.5, 97.5]) && near(s.ci90, [5.0, 95.0]),
            "{s:?}"
        );
        assert_eq!(s.replicates, 101);
        assert_eq!(s.at(0.95), Some(s.ci95));
        assert_eq!(s.at(0.8), None);
    }

    /// Components of genuine pairs: images joined by genuine pairs share a unit.
    #[test]
    fn components_of_genuine_pairs() {
        let (labels, n) = genuine_components(5, [(0, 1), (1, 2)].into_iter());
        assert_eq!(n, 3);
        assert_eq!(labels[0], labels[2]);
        assert_ne!(labels[3], labels[4]);
    }

    /// Replicates are seeded: the same seed draws the same weights, whatever the threads.
    #[test]
    fn replicates_are_deterministic() {
        let b = Bootstrap {
            replicates: 50,
            seed: 9,
        };
        let v: Vec<f64> = (0..40).map(f64::from).collect();
        let ones = vec![1.0; 40];
        let a = unit_intervals(&b, 40, "image", &[UnitStat::Ratio(&v, &ones)]);
        let c = unit_intervals(&b, 40, "image", &[UnitStat::Ratio(&v, &ones)]);
        assert_eq!(a[0], c[0]);
        assert_eq!(b.weights(3, 40).iter().sum::<u32>(), 40);
    }

    /// The coverage check, small: 95% intervals of TAR at FAR 1e-2 cover the truth in most
    /// of 60 identity-clustered sets (the 1,000-trial version is `cargo bench --bench
    /// uncertainty`, which must land in 93-97%).
    #[test]
    fn intervals_cover_the_truth() {
        let boot = Bootstrap {
            replicates: 400,
            seed: 1,
        };
        let c = simulation::coverage(60, 80, 3, 1e-2, &boot);
        assert!((0.85..=1.0).contains(&c), "coverage {c}");
    }

    /// Copies of the same photos add pairs, not people: an identity-resampled interval does
    /// not narrow, where more identities do.
    #[test]
    fn copies_do_not_narrow_identity_intervals() {
        let boot = Bootstrap {
            replicates: 300,
            seed: 2,
        };
        let width = |ids: usize, per: usize, copies: usize| {
            let mut s = PairedScores::all_pairs(vec![per * copies; ids], 0.3, 1e-2, 1.0, 1);
            let mut rng = SplitMix64::new(5);
            let score: Vec<Vec<f32>> = (0..ids * per)
                .map(|_| (0..ids * per).map(|_| rng.unit()).collect())
                .collect();
            let n = ids * per * copies;
            for i in 0..n {
                for j in i + 1..n {
                    let (oi, oj) = (i / copies, j / copies);
                    if oi == oj {
                        // A photo against its own copy: no pair of the original set.
                        continue;
                    }
                    let (a, b) = (oi / per, oj / per);
                    let x = if a == b {
                        0.5 + 0.3 * score[oi][oj]
                    } else {
                        0.2 * score[oi][oj]
                    };
                    let c = x + 0.05 * score[oj][oi];
                    s.push(a == b, a as u32, b as u32, x, c);
                }
            }
            let iv = s.intervals(&boot).tar_drop.unwrap().ci95;
            iv[1] - iv[0]
        };
        let (base, copied, more) = (width(20, 3, 1), width(20, 3, 3), width(80, 3, 1));
        assert!(
            copied > 0.7 * base,
            "copies narrowed it: {base} -> {copied}"
        );
        assert!(
            more < 0.75 * base,
            "more identities should narrow it: {base} -> {more}"
        );
    }

    /// The same gate (`tar_drop_max: 0.01` at 95% confidence) on the same kind of candidate:
    /// inconclusive on a set of 40 identities, decided (pass or fail) on 4,000.
    #[test]
    fn many_identities_resolve_what_few_cannot() {
        use crate::gate::{GateResult, Measurement, Policy};
        let boot = Bootstrap {
            replicates: 500,
            seed: 3,
        };
        let verdict = |ids: usize| {
            let mut rng = SplitMix64::new(17);
            let mut s = PairedScores::listed(ids, "identity", 0.0, 1e-2);
            let mut pairs = Vec::new();
            // Per identity: 3 genuine pairs, and impostor pairs to 30 other identities.
            for a in 0..ids as u32 {
                for _ in 0..3 {
                    pairs.push((true, a, a, 0.2 + 0.2 * rng.unit()));
                }
                for k in 1..=30u32 {
                    pairs.push((false, a, (a + k) % ids as u32, 0.15 * rng.unit()));
                }
            }
            // The reference's threshold at FAR 1e-2, as compare sets it.
            let mut imp: Vec<f32> = pairs.iter().filter(|p| !p.0).map(|p| p.3).collect();
            imp.sort_by(|x, y| y.total_cmp(x));
            let t = imp[(imp.len() as f64 * 1e-2) as usize] as f64;
            s.threshold = t;
            let (mut g, mut gr, mut gc) = (0.0, 0.0, 0.0);
            let mut cand_imp = Vec::new();
            let noisy: Vec<(bool, u32, u32, f32, f32)> = pairs
                .iter()
                .map(|&(same, a, b, r)| (same, a, b, r, r + 0.03 * rng.unit()))
                .collect();
            for &(same, a, b, r, c) in &noisy {
                s.push(same, a, b, r, c);
                if !same {
                    cand_imp.push(c);
                }
            }
            cand_imp.sort_by(|x, y| y.total_cmp(x));
            let tc = cand_imp[(cand_imp.len() as f64 * 1e-2) as usize];
            for &(same, _, _, r, c) in &noisy {
                if same {
                    g += 1.0;
                    gr += (r as f64 > t) as u8 as f64;
                    gc += (c > tc) as u8 as f64;
                }
            }
            let drop = gr / g - gc / g;
            let spread = s.intervals(&boot).tar_drop.unwrap();
            let policy = Policy {
                confidence: Some(0.95),
                ..Default::default()
            };
            let r = GateResult::judge(
                "tar_drop",
                false,
                &Measurement::Estimate(drop, spread),
                0.01,
                policy,
                None,
            );
            (r.status, r.interval.unwrap(), drop)
        };
        let (few, iv_few, d_few) = verdict(40);
        assert_eq!(few.as_deref(), Some("inconclusive"), "{d_few} {iv_few:?}");
        let (many, iv_many, d_many) = verdict(4000);
        eprintln!("40 identities: drop {d_few} {iv_few:?}; 4000: drop {d_many} {iv_many:?}");
        assert_eq!(many, None, "decided: {d_many} {iv_many:?}");
        assert!(iv_many[1] - iv_many[0] < 0.3 * (iv_few[1] - iv_few[0]));
    }

    /// With every unit drawn once, the weighted EER sweep is the point EER (to rounding).
    #[test]
    fn weighted_eer_with_unit_weights_is_the_point_eer() {
        let mut rng = SplitMix64::new(23);
        let g: Vec<f64> = (0..50)
            .map(|_| ((rng.unit() * 20.0).round() / 40.0 + 0.4) as f64)
            .collect();
        let i: Vec<f64> = (0..300)
            .map(|_| ((rng.unit() * 20.0).round() / 40.0) as f64)
            .collect();
        let point = crate::verification::SortedScores::new(&g, &i).eer();
        let mut asc: Vec<(f32, u32, u32, bool)> = g
            .iter()
            .map(|s| (*s as f32, 0, 0, true))
            .chain(i.iter().map(|s| (*s as f32, 0, 1, false)))
            .collect();
        asc.sort_by(|x, y| x.0.total_cmp(&y.0));
        assert!((weighted_eer(&asc, &[1, 1]) - point).abs() < 1e-12);
    }

    /// The size that would resolve: half-width toward the limit over the gap, squared.
    #[test]
    fn units_to_resolve_scales_as_the_square() {
        // Value 0.01, interval [0.0, 0.03], limit 0.02: half-width 0.02 over gap 0.01.
        assert_eq!(units_to_resolve(0.01, [0.0, 0.03], 0.02, 100), Some(400));
        assert_eq!(units_to_resolve(0.02, [0.0, 0.03], 0.02, 100), None);
    }
}

/// A simulation with a known truth, for the coverage check (a test, and `cargo bench
/// --bench uncertainty` at 1,000 trials).
pub mod simulation {
    use super::{Bootstrap, PairedScores};
    use crate::util::SplitMix64;

    /// The score model: a genuine pair of identity k scores `GENUINE_MEAN + u_k + e`, an
    /// impostor pair of identities a, b scores `v_a + v_b + e'`; u, v, e, e' normal. Pairs
    /// that share a person are correlated, as in real sets.
    const GENUINE_MEAN: f64 = 0.45;
    const SD_U: f64 = 0.08;
    const SD_E: f64 = 0.08;
    const SD_V: f64 = 0.05;
    const SD_E_IMP: f64 = 0.10;

    fn normal(rng: &mut SplitMix64) -> f64 {
        // Box-Muller.
        let u1 = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let u2 = ((rng.next_u64() >> 11) as f64) / (1u64 << 53) as f64;
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// The standard normal CDF (erfc by Numerical Recipes' Chebyshev fit, |error| < 1.2e-7).
    fn phi(x: f64) -> f64 {
        let z = x.abs() / std::f64::consts::SQRT_2;
        let t = 1.0 / (1.0 + 0.5 * z);
        let r = t
            * (-z * z - 1.265_512_23
                + t * (1.000_023_68
                    + t * (0.374_091_96
                        + t * (0.096_784_18
                            + t * (-0.186_288_06
                                + t * (0.278_868_07
                                    + t * (-1.135_203_98
                                        + t * (1.488_515_87
                                            + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
                .exp();
        let erfc = r;
        if x >= 0.0 {
            1.0 - erfc / 2.0
        } else {
            erfc / 2.0
        }
    }

    /// The population's TAR at `far`: the impostor marginal's (1 - far) quantile (by
    /// bisection), then the genuine marginal above it.
    pub fn true_tar(far: f64) -> f64 {
        let sd_i = (2.0 * SD_V * SD_V + SD_E_IMP * SD_E_IMP).sqrt();
        let sd_g = (SD_U * SD_U + SD_E * SD_E).sqrt();
        let (mut lo, mut hi) = (-10.0, 10.0);
        for _ in 0..200 {
            let mid = (lo + hi) / 2.0;
            if 1.0 - phi(mid) > far {
                lo = mid
            } else {
                hi = mid
            }
        }
        let t = (lo + hi) / 2.0 * sd_i;
        1.0 - phi((t - GENUINE_MEAN) / sd_g)
    }

    /// One set of `identities` x `per_identity` images, every pair scored (reference =
    /// candidate), and its TAR-at-`far` 95% interval.
    pub fn interval(
        identities: usize,
        per_identity: usize,
        far: f64,
        boot: &Bootstrap,
        seed: u64,
    ) -> Option<[f64; 2]> {
        let mut rng = SplitMix64::new(seed);
        let u: Vec<f64> = (0..identities).map(|_| SD_U * normal(&mut rng)).collect();
        let v: Vec<f64> = (0..identities).map(|_| SD_V * normal(&mut rng)).collect();
        let n = identities * per_identity;
        let id = |i: usize| i / per_identity;
        let impostors = n * (n - 1) / 2 - identities * per_identity * (per_identity - 1) / 2;
        let mut s =
            PairedScores::all_pairs(vec![per_identity; identities], 0.0, far, 1.0, impostors);
        for i in 0..n {
            for j in i + 1..n {
                let (a, b) = (id(i), id(j));
                let x = if a == b {
                    GENUINE_MEAN + u[a] + SD_E * normal(&mut rng)
                } else {
                    v[a] + v[b] + SD_E_IMP * normal(&mut rng)
                } as f32;
                s.push(a == b, a as u32, b as u32, x, x);
            }
        }
        s.intervals(boot).tar_reference.map(|sp| sp.ci95)
    }

    /// Of `trials` sets, the share whose 95% interval covers the true TAR at `far`.
    pub fn coverage(
        trials: usize,
        identities: usize,
        per_identity: usize,
        far: f64,
        boot: &Bootstrap,
    ) -> f64 {
        let truth = true_tar(far);
        let covered = (0..trials)
            .filter(|t| {
                interval(identities, per_identity, far, boot, 1000 + *t as u64)
                    .is_some_and(|[lo, hi]| lo <= truth && truth <= hi)
            })
            .count();
        covered as f64 / trials as f64
    }
}
