//! Intervals for speed figures measured across several fresh processes.
//!
//! A process is the unit that varies most on a shared machine (what else runs, where the
//! scheduler puts threads, the CPU's frequency at that moment), so every interval here
//! resamples processes first, then what each process measured:
//! - latency percentiles: a two-level bootstrap, processes drawn with replacement, then a
//!   moving-block bootstrap inside each (blocks of about n^(1/3) consecutive inferences,
//!   because consecutive latencies are correlated and an iid resample is too narrow);
//!   a high percentile also needs enough samples for any of them to bound it (299 for a
//!   one-sided 95% bound on p99), and its upper end stays open until it has them;
//! - throughput: the same over windows of the measurement;
//! - one figure per process (cold start, peak RSS): Student's t on the processes' mean;
//! - paired ratios (A over B, each round measuring both in turn): the bootstrap draws rounds,
//!   so a slow round slows both sides and cancels in the ratio.

use serde::{Deserialize, Serialize};

use crate::uncertainty::{Bootstrap, CONFIDENCES, Spread};
use crate::util::SplitMix64;

/// What a replicate draws in every speed interval.
pub const UNIT: &str = "process";

/// Type-7 quantile of `v` (unsorted; reordered in place), None when empty.
fn quantile_mut(v: &mut [f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let h = (v.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    let (_, a, rest) = v.select_nth_unstable_by(lo, f64::total_cmp);
    let a = *a;
    let b = if hi == lo {
        a
    } else {
        rest.iter().copied().fold(f64::INFINITY, f64::min)
    };
    Some(a + (h - lo as f64) * (b - a))
}

/// The q-quantile of every sample of every process together.
pub fn pooled_quantile(processes: &[Vec<f64>], q: f64) -> Option<f64> {
    let mut all: Vec<f64> = processes.iter().flatten().copied().collect();
    quantile_mut(&mut all, q)
}

/// Samples needed before the largest of them bounds the q-quantile from above with one-sided
/// confidence `one_sided`: 1 - q^n >= one_sided (299 for p99 at 95%).
pub fn samples_to_bound(q: f64, one_sided: f64) -> usize {
    if q <= 0.0 {
        return 1;
    }
    ((1.0 - one_sided).ln() / q.ln()).ceil().max(1.0) as usize
}

/// Why an interval's upper end is open: too few samples to bound a high percentile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenAbove {
    /// The percentile, e.g. 0.99.
    pub quantile: f64,
    /// Samples measured, over every process.
    pub samples: usize,
    /// Samples needed at each kept confidence (0.9, 0.95, 0.99): each two-sided interval's
    /// upper end is a one-sided bound at (1 + c) / 2.
    pub needed: [usize; 3],
}

impl OpenAbove {
    fn of(q: f64, samples: usize) -> Option<OpenAbove> {
        let needed = CONFIDENCES.map(|c| samples_to_bound(q, (1.0 + c) / 2.0));
        (samples < needed[2]).then_some(OpenAbove {
            quantile: q,
            samples,
            needed,
        })
    }

    /// Why the upper end at `confidence` is open, or None when the samples bound it.
    pub fn at(&self, confidence: f64) -> Option<String> {
        let i = CONFIDENCES
            .iter()
            .position(|c| (c - confidence).abs() < 1e-9)
            .unwrap_or(1);
        (self.samples < self.needed[i]).then(|| {
            format!(
                "{} samples cannot bound p{:.0} from above at {:.0}% (it needs {})",
                self.samples,
                self.quantile * 100.0,
                confidence * 100.0,
                self.needed[i]
            )
        })
    }
}

/// A speed figure: its point estimate and intervals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeedFigure {
    /// The point estimate over every process.
    pub value: f64,
    /// Its intervals; `resampled_by` is `process` and `units` the processes.
    pub spread: Spread,
    /// How the interval was made: `two-level block bootstrap`, `student t`...
    pub method: String,
    /// A high percentile measured with too few samples: its upper end is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_above: Option<OpenAbove>,
}

impl SpeedFigure {
    /// The interval at `confidence`, None when it is not a kept one.
    pub fn interval(&self, confidence: f64) -> Option<[f64; 2]> {
        self.spread.at(confidence)
    }
}

/// The wider of two intervals at each confidence: the two-level bootstrap of the pooled
/// samples, and Student t over one figure per process (on logs for times and rates, which are
/// positive and skewed). With a handful of processes a
/// bootstrap draws few distinct resamples and understates how much a next process may differ
/// (its variance is about (n-1)/n of theirs, before small-sample error); t does not.
fn widen(spread: &mut Spread, per_process: &[f64], map: fn(f64) -> f64, back: fn(f64) -> f64) {
    let Some((_, t)) = t_spread(per_process, map, back) else {
        return;
    };
    for (iv, w) in [
        (&mut spread.ci90, t.ci90),
        (&mut spread.ci95, t.ci95),
        (&mut spread.ci99, t.ci99),
    ] {
        iv[0] = iv[0].min(w[0]);
        iv[1] = iv[1].max(w[1]);
    }
}

/// A moving-block resample of `xs` into `out` (same length), blocks of `len`.
fn block_resample(xs: &[f64], len: usize, rng: &mut SplitMix64, out: &mut Vec<f64>) {
    let n = xs.len();
    if n == 0 {
        return;
    }
    let len = len.clamp(1, n);
    let starts = n - len + 1;
    let mut k = 0;
    while k < n {
        let s = ((rng.next_u64() as u128 * starts as u128) >> 64) as usize;
        let take = len.min(n - k);
        out.extend_from_slice(&xs[s..s + take]);
        k += take;
    }
}

/// Block length for n correlated samples: about n^(1/3) (Hall, Horowitz and Jing).
fn block_len(n: usize) -> usize {
    ((n as f64).cbrt().round() as usize).max(1)
}

fn rng_for(b: &Bootstrap, r: usize) -> SplitMix64 {
    SplitMix64::new(b.seed ^ (r as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Draw `n` indices in 0..n with replacement.
fn draw(rng: &mut SplitMix64, n: usize) -> impl Iterator<Item = usize> + '_ {
    (0..n).map(move |_| ((rng.next_u64() as u128 * n as u128) >> 64) as usize)
}

/// Percentiles `qs` of latencies measured in several processes (each in the order
/// measured), with two-level block-bootstrap intervals. None without samples.
pub fn percentiles(
    processes: &[Vec<f64>],
    qs: &[f64],
    boot: &Bootstrap,
) -> Option<Vec<SpeedFigure>> {
    let procs: Vec<&Vec<f64>> = processes.iter().filter(|p| !p.is_empty()).collect();
    let total: usize = procs.iter().map(|p| p.len()).sum();
    if procs.is_empty() {
        return None;
    }
    let reps = boot.replicates.max(1);
    let rows: Vec<Vec<f64>> = {
        use rayon::prelude::*;
        (0..reps)
            .into_par_iter()
            .map(|r| {
                let mut rng = rng_for(boot, r);
                let mut buf = Vec::with_capacity(total);
                let picks: Vec<usize> = draw(&mut rng, procs.len()).collect();
                for i in picks {
                    let p = procs[i];
                    block_resample(p, block_len(p.len()), &mut rng, &mut buf);
                }
                qs.iter()
                    .map(|&q| quantile_mut(&mut buf, q).unwrap_or(f64::NAN))
                    .collect()
            })
            .collect()
    };
    qs.iter()
        .enumerate()
        .map(|(i, &q)| {
            let value = pooled_quantile(processes, q)?;
            let mut spread =
                Spread::from_replicates(rows.iter().map(|r| r[i]).collect(), UNIT, procs.len())?;
            let own: Vec<f64> = procs
                .iter()
                .filter_map(|p| quantile_mut(&mut p.to_vec(), q))
                .collect();
            widen(&mut spread, &own, f64::ln, f64::exp);
            Some(SpeedFigure {
                value,
                spread,
                method: "two-level block bootstrap (processes, then blocks of inferences), widened to Student t over the logs of the processes' own figures".into(),
                open_above: OpenAbove::of(q, total),
            })
        })
        .collect()
}

/// The mean over windows measured in several processes (throughput per window), with a
/// two-level bootstrap interval (processes, then windows).
pub fn window_mean(processes: &[Vec<f64>], boot: &Bootstrap) -> Option<SpeedFigure> {
    let procs: Vec<&Vec<f64>> = processes.iter().filter(|p| !p.is_empty()).collect();
    if procs.is_empty() {
        return None;
    }
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    let value = mean(
        &procs
            .iter()
            .flat_map(|p| p.iter().copied())
            .collect::<Vec<_>>(),
    );
    let values = (0..boot.replicates.max(1))
        .map(|r| {
            let mut rng = rng_for(boot, r);
            let mut buf = Vec::new();
            let picks: Vec<usize> = draw(&mut rng, procs.len()).collect();
            for i in picks {
                let p = procs[i];
                let idx: Vec<usize> = draw(&mut rng, p.len()).collect();
                buf.extend(idx.into_iter().map(|j| p[j]));
            }
            mean(&buf)
        })
        .collect();
    let mut spread = Spread::from_replicates(values, UNIT, procs.len())?;
    let own: Vec<f64> = procs.iter().map(|p| mean(p)).collect();
    widen(&mut spread, &own, f64::ln, f64::exp);
    Some(SpeedFigure {
        value,
        spread,
        method: "two-level bootstrap (processes, then windows), widened to Student t over the logs of the processes' means".into(),
        open_above: None,
    })
}

/// Two-sided Student t critical values at 90%, 95% and 99%, for 1 to 30 degrees of freedom
/// (then the normal's).
fn t_critical(df: usize) -> [f64; 3] {
    const T: [[f64; 3]; 30] = [
        [6.314, 12.706, 63.657],
        [2.920, 4.303, 9.925],
        [2.353, 3.182, 5.841],
        [2.132, 2.776, 4.604],
        [2.015, 2.571, 4.032],
        [1.943, 2.447, 3.707],
        [1.895, 2.365, 3.499],
        [1.860, 2.306, 3.355],
        [1.833, 2.262, 3.250],
        [1.812, 2.228, 3.169],
        [1.796, 2.201, 3.106],
        [1.782, 2.179, 3.055],
        [1.771, 2.160, 3.012],
        [1.761, 2.145, 2.977],
        [1.753, 2.131, 2.947],
        [1.746, 2.120, 2.921],
        [1.740, 2.110, 2.898],
        [1.734, 2.101, 2.878],
        [1.729, 2.093, 2.861],
        [1.725, 2.086, 2.845],
        [1.721, 2.080, 2.831],
        [1.717, 2.074, 2.819],
        [1.714, 2.069, 2.807],
        [1.711, 2.064, 2.797],
        [1.708, 2.060, 2.787],
        [1.706, 2.056, 2.779],
        [1.703, 2.052, 2.771],
        [1.701, 2.048, 2.763],
        [1.699, 2.045, 2.756],
        [1.697, 2.042, 2.750],
    ];
    match df {
        0 => [f64::INFINITY; 3],
        1..=30 => T[df - 1],
        _ => [1.645, 1.960, 2.576],
    }
}

/// Student t intervals on the mean of `xs`, through `map` and back (identity, or log/exp for
/// ratios). None with fewer than 2 values.
fn t_spread(xs: &[f64], map: fn(f64) -> f64, back: fn(f64) -> f64) -> Option<(f64, Spread)> {
    let n = xs.len();
    if n < 2 {
        return None;
    }
    let ys: Vec<f64> = xs.iter().map(|&x| map(x)).collect();
    let mean = ys.iter().sum::<f64>() / n as f64;
    let sd = (ys.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    let se = sd / (n as f64).sqrt();
    let t = t_critical(n - 1);
    let at = |k: usize| [back(mean - t[k] * se), back(mean + t[k] * se)];
    Some((
        back(mean),
        Spread {
            ci90: at(0),
            ci95: at(1),
            ci99: at(2),
            resampled_by: UNIT.into(),
            units: n,
            replicates: 0,
        },
    ))
}

/// The mean of one figure per process (cold start, peak RSS), with Student t intervals; a
/// time or a size is never negative, so neither is the interval's lower end.
pub fn process_mean(xs: &[f64]) -> Option<SpeedFigure> {
    let (value, mut spread) = t_spread(xs, |x| x, |x| x)?;
    for iv in [&mut spread.ci90, &mut spread.ci95, &mut spread.ci99] {
        iv[0] = iv[0].max(0.0);
    }
    Some(SpeedFigure {
        value,
        spread,
        method: "student t over processes".into(),
        open_above: None,
    })
}

/// The geometric mean of per-round ratios (ours over a reference tool's, each round
/// measuring both), with Student t intervals on their logarithms.
pub fn paired_scalar_ratio(ratios: &[f64]) -> Option<SpeedFigure> {
    let ratios: Vec<f64> = ratios.iter().copied().filter(|r| *r > 0.0).collect();
    let (value, spread) = t_spread(&ratios, f64::ln, f64::exp)?;
    Some(SpeedFigure {
        value,
        spread,
        method: "student t on the log ratios of paired rounds".into(),
        open_above: None,
    })
}

/// How much faster A is than B: B's median latency over A's, from rounds that measured both
/// (a[r] and b[r] are round r's latencies). The bootstrap draws rounds, then blocks inside
/// each side's process, so a round the machine slowed weighs on both sides at once.
pub fn paired_speedup(a: &[Vec<f64>], b: &[Vec<f64>], boot: &Bootstrap) -> Option<SpeedFigure> {
    let rounds: Vec<(&Vec<f64>, &Vec<f64>)> = a
        .iter()
        .zip(b)
        .filter(|(x, y)| !x.is_empty() && !y.is_empty())
        .collect();
    if rounds.is_empty() {
        return None;
    }
    let value = pooled_quantile(b, 0.5)? / pooled_quantile(a, 0.5)?;
    let values = {
        use rayon::prelude::*;
        (0..boot.replicates.max(1))
            .into_par_iter()
            .map(|r| {
                let mut rng = rng_for(boot, r);
                let (mut ba, mut bb) = (Vec::new(), Vec::new());
                let picks: Vec<usize> = draw(&mut rng, rounds.len()).collect();
                for i in picks {
                    let (x, y) = rounds[i];
                    block_resample(x, block_len(x.len()), &mut rng, &mut ba);
                    block_resample(y, block_len(y.len()), &mut rng, &mut bb);
                }
                match (quantile_mut(&mut ba, 0.5), quantile_mut(&mut bb, 0.5)) {
                    (Some(x), Some(y)) if x > 0.0 => y / x,
                    _ => f64::NAN,
                }
            })
            .collect()
    };
    let mut spread = Spread::from_replicates(values, "round", rounds.len())?;
    let own: Vec<f64> = rounds
        .iter()
        .filter_map(|(x, y)| {
            let (x, y) = (
                quantile_mut(&mut x.to_vec(), 0.5)?,
                quantile_mut(&mut y.to_vec(), 0.5)?,
            );
            (x > 0.0 && y > 0.0).then_some(y / x)
        })
        .collect();
    widen(&mut spread, &own, f64::ln, f64::exp);
    Some(SpeedFigure {
        value,
        spread,
        method: "paired two-level block bootstrap (rounds, then blocks of inferences), widened to Student t over the rounds' log ratios".into(),
        open_above: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot() -> Bootstrap {
        Bootstrap {
            replicates: 400,
            seed: 3,
        }
    }

    #[test]
    fn p99_needs_299_samples_for_a_one_sided_95_percent_bound() {
        assert_eq!(samples_to_bound(0.99, 0.95), 299);
        assert_eq!(samples_to_bound(0.5, 0.95), 5);
        let few = vec![(0..100).map(|i| 1.0 + i as f64 * 0.01).collect::<Vec<_>>()];
        let f = &percentiles(&few, &[0.99], &boot()).unwrap()[0];
        let open = f.open_above.as_ref().unwrap();
        assert!(
            open.at(0.95).unwrap().contains("(it needs 368)"),
            "{open:?}"
        );
        let many = vec![vec![1.0; 400], vec![1.1; 400]];
        let f = &percentiles(&many, &[0.99], &boot()).unwrap()[0];
        assert!(f.open_above.as_ref().is_none_or(|o| o.at(0.95).is_none()));
    }

    /// A process that ran slower widens the interval: it spans the processes, not only the
    /// inferences inside one.
    #[test]
    fn intervals_span_the_variation_between_processes() {
        let mut rng = SplitMix64::new(9);
        let proc = |base: f64, rng: &mut SplitMix64| -> Vec<f64> {
            (0..300).map(|_| base + 0.05 * rng.unit() as f64).collect()
        };
        let same: Vec<Vec<f64>> = (0..4).map(|_| proc(2.0, &mut rng)).collect();
        let mixed: Vec<Vec<f64>> = [2.0, 2.0, 2.6, 2.0]
            .iter()
            .map(|&b| proc(b, &mut rng))
            .collect();
        let w = |ps: &[Vec<f64>]| {
            let f = &percentiles(ps, &[0.5], &boot()).unwrap()[0];
            f.spread.ci95[1] - f.spread.ci95[0]
        };
        assert!(w(&mixed) > 5.0 * w(&same), "{} vs {}", w(&mixed), w(&same));
    }

    /// Both sides of a round slowed together: the paired ratio stays near its quiet value
    /// while the absolute medians move.
    #[test]
    fn paired_rounds_cancel_a_shared_slowdown() {
        let round = |scale: f64, speed: f64| vec![scale / speed; 200];
        let slow = [1.0, 2.5, 1.0, 3.0];
        let a: Vec<Vec<f64>> = slow.iter().map(|&s| round(s, 1.25)).collect();
        let b: Vec<Vec<f64>> = slow.iter().map(|&s| round(s, 1.0)).collect();
        let f = paired_speedup(&a, &b, &boot()).unwrap();
        assert!((f.spread.ci95[0] - 1.25).abs() < 1e-9 && (f.spread.ci95[1] - 1.25).abs() < 1e-9);
        let abs = &percentiles(&b, &[0.5], &boot()).unwrap()[0];
        assert!(abs.spread.ci95[1] - abs.spread.ci95[0] > 1.0, "{abs:?}");
    }

    #[test]
    fn per_process_figures_use_student_t() {
        let f = process_mean(&[100.0, 110.0, 90.0]).unwrap();
        assert!((f.value - 100.0).abs() < 1e-9);
        // sd 10, se 5.77, t(2) 4.303
        assert!((f.spread.ci95[1] - (100.0 + 4.303 * 10.0 / 3f64.sqrt())).abs() < 1e-6);
        assert!(process_mean(&[1.0]).is_none());
        let r = paired_scalar_ratio(&[1.0, 1.1, 0.9]).unwrap();
        assert!(r.spread.ci95[0] < 1.0 && r.spread.ci95[1] > 1.0);
    }

    #[test]
    fn window_means_pool_processes() {
        let f = window_mean(&[vec![10.0, 12.0], vec![20.0, 22.0]], &boot()).unwrap();
        assert!((f.value - 16.0).abs() < 1e-9);
        assert!(f.spread.ci95[0] < 14.0 && f.spread.ci95[1] > 18.0, "{f:?}");
    }
}
