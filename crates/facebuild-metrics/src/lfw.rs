//! The LFW verification protocol as InsightFace computes it (recognition/arcface_torch/eval/
//! verification.py): embeddings L2-normalised (optionally each summed with its horizontal
//! flip's first), squared L2 distance per pair, an unshuffled 10-fold split of the pairs in
//! file order. Accuracy per fold at the threshold (0 to 4 in steps of 0.01, accepted when
//! the distance is below it) that is best on the other nine folds; VAL at FAR 1e-3 at the
//! threshold (0 to 4 in steps of 0.001) linearly interpolated to that FAR on the other nine.
//! Reported as mean and (population) standard deviation over the folds.

use serde::{Deserialize, Serialize};

/// LFW-protocol figures of one model on one fold-carrying pair set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LfwFigures {
    /// Folds the pairs were split into (in file order).
    pub folds: usize,
    /// Whether each embedding was summed with its horizontal flip's.
    pub flip: bool,
    /// Accuracy over the folds.
    pub accuracy: FoldStat,
    /// VAL (TAR) at FAR 1e-3 over the folds, and the FAR actually reached.
    pub val_at_far_1e3: ValAtFar,
}

/// Mean and population standard deviation over folds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct FoldStat {
    pub mean: f64,
    pub std: f64,
}

/// VAL at a FAR over folds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct ValAtFar {
    pub mean: f64,
    pub std: f64,
    /// Mean FAR reached on the test folds.
    pub far: f64,
}

/// Squared L2 distances of the normalised embeddings of each pair (f64). With `flipped`,
/// each embedding is first summed with its flip's.
pub fn squared_distances(
    emb: &[Vec<f32>],
    flipped: Option<&[Vec<f32>]>,
    pairs: &[(usize, usize)],
) -> Vec<f64> {
    let unit = |i: usize| -> Vec<f64> {
        let v: Vec<f64> = match flipped {
            Some(f) => emb[i]
                .iter()
                .zip(&f[i])
                .map(|(a, b)| *a as f64 + *b as f64)
                .collect(),
            None => emb[i].iter().map(|a| *a as f64).collect(),
        };
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        // sklearn's normalize leaves a zero vector as it is.
        let n = if n == 0.0 { 1.0 } else { n };
        v.into_iter().map(|x| x / n).collect()
    };
    pairs
        .iter()
        .map(|&(a, b)| {
            let (x, y) = (unit(a), unit(b));
            x.iter().zip(&y).map(|(p, q)| (p - q) * (p - q)).sum()
        })
        .collect()
}

/// scikit-learn's unshuffled `KFold(n_splits)`: consecutive folds, the first `n % k` one
/// larger.
fn folds(n: usize, k: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::with_capacity(k);
    let mut start = 0;
    for f in 0..k {
        let size = n / k + usize::from(f < n % k);
        out.push(start..start + size);
        start += size;
    }
    out
}

fn mean_std(v: &[f64]) -> FoldStat {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    FoldStat {
        mean,
        std: var.sqrt(),
    }
}

/// The protocol over `dist` (squared L2 per pair, in file order) and `same`, in `k` folds;
/// None when a fold holds no genuine or no impostor pair (its VAL or FAR would be 0 / 0).
pub fn lfw_protocol(dist: &[f64], same: &[bool], k: usize, flip: bool) -> Option<LfwFigures> {
    let n = dist.len().min(same.len());
    let split = folds(n, k);
    let genuine = same[..n].iter().filter(|s| **s).count();
    for f in &split {
        let g = same[f.clone()].iter().filter(|s| **s).count();
        if g == 0 || g == f.len() || genuine - g == 0 || (n - f.len()) - (genuine - g) == 0 {
            return None;
        }
    }
    let acc_thresholds: Vec<f64> = (0..400).map(|i| i as f64 * 0.01).collect();
    let val_thresholds: Vec<f64> = (0..4000).map(|i| i as f64 * 0.001).collect();
    let (mut accuracy, mut val, mut far) = (Vec::new(), Vec::new(), Vec::new());
    for test in &split {
        let train: Vec<usize> = (0..n).filter(|i| !test.contains(i)).collect();
        let test: Vec<usize> = test.clone().collect();
        // Accuracy: the first best threshold on the training folds.
        let mut best = (f64::NEG_INFINITY, 0.0);
        for &t in &acc_thresholds {
            let a = fold_accuracy(t, dist, same, &train);
            if a > best.0 {
                best = (a, t);
            }
        }
        accuracy.push(fold_accuracy(best.1, dist, same, &test));
        // VAL: the threshold where the training FAR crosses 1e-3, by scipy's slinear
        // interp1d over (FAR, threshold); 0 when no threshold reaches that FAR.
        // FAR at each threshold by binary search over the sorted training impostors.
        let mut imp: Vec<f64> = train
            .iter()
            .filter(|&&i| !same[i])
            .map(|&i| dist[i])
            .collect();
        imp.sort_by(f64::total_cmp);
        let far_train: Vec<f64> = val_thresholds
            .iter()
            .map(|&t| imp.partition_point(|d| *d < t) as f64 / imp.len() as f64)
            .collect();
        let target = 1e-3;
        let t = if far_train.iter().copied().fold(f64::NEG_INFINITY, f64::max) >= target {
            slinear(&far_train, &val_thresholds, target)
        } else {
            0.0
        };
        let (v, f) = val_far(t, dist, same, &test);
        val.push(v);
        far.push(f);
    }
    let v = mean_std(&val);
    Some(LfwFigures {
        folds: k,
        flip,
        accuracy: mean_std(&accuracy),
        val_at_far_1e3: ValAtFar {
            mean: v.mean,
            std: v.std,
            far: far.iter().sum::<f64>() / far.len().max(1) as f64,
        },
    })
}

/// Share of pairs decided right when a distance below `t` means the same person.
fn fold_accuracy(t: f64, dist: &[f64], same: &[bool], idx: &[usize]) -> f64 {
    let right = idx.iter().filter(|&&i| (dist[i] < t) == same[i]).count();
    right as f64 / idx.len().max(1) as f64
}

/// (VAL, FAR) at threshold `t`.
fn val_far(t: f64, dist: &[f64], same: &[bool], idx: &[usize]) -> (f64, f64) {
    let (mut ta, mut fa, mut ns, mut nd) = (0usize, 0usize, 0usize, 0usize);
    for &i in idx {
        let accept = dist[i] < t;
        if same[i] {
            ns += 1;
            ta += usize::from(accept);
        } else {
            nd += 1;
            fa += usize::from(accept);
        }
    }
    (ta as f64 / ns as f64, fa as f64 / nd as f64)
}

/// verification.py's `interp1d(x, y, kind='slinear')(at)` for non-decreasing `x`, as scipy
/// computed it when the protocol was written: a degree-1 B-spline with knots [x0, x0, x1,
/// ..., xm, xm], evaluated in the interval [x_j, x_j+1) with the largest j (at most m - 1)
/// whose x_j <= at, so repeated x are steps. (scipy >= 1.9 refuses repeated x for 'slinear',
/// InsightFace issue #2152; its 'linear' and numpy's `interp` pick the same two points.)
fn slinear(x: &[f64], y: &[f64], at: f64) -> f64 {
    let m = x.len();
    let j = x[..m - 1].partition_point(|v| *v <= at).saturating_sub(1);
    let (t0, t1) = (x[j], x[j + 1]);
    let h0 = (t1 - at) / (t1 - t0);
    let h1 = (at - t0) / (t1 - t0);
    y[j] * h0 + y[j + 1] * h1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kfold_matches_sklearn_sizes() {
        let f = folds(23, 10);
        assert_eq!(f[0], 0..3);
        assert_eq!(f[2], 6..9);
        assert_eq!(f[3], 9..11);
        assert_eq!(f[9].end, 23);
    }

    #[test]
    fn slinear_interpolates_and_steps() {
        let x = [0.0, 0.0, 0.5, 1.0];
        let y = [0.0, 1.0, 2.0, 3.0];
        assert!((slinear(&x, &y, 0.25) - 1.5).abs() < 1e-12);
        assert!((slinear(&x, &y, 0.0) - 1.0).abs() < 1e-12);
        assert!((slinear(&x, &y, 1.0) - 3.0).abs() < 1e-12);
    }

    /// Separable pairs are decided right in every fold.
    #[test]
    fn separable_pairs_are_all_right() {
        let same: Vec<bool> = (0..600).map(|i| (i / 30) % 2 == 0).collect();
        let dist: Vec<f64> = same
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if *s {
                    0.5 + (i % 7) as f64 * 0.01
                } else {
                    1.8 + (i % 5) as f64 * 0.01
                }
            })
            .collect();
        let f = lfw_protocol(&dist, &same, 10, false).unwrap();
        assert!(lfw_protocol(&dist[..10], &same[..10], 10, false).is_none());
        assert_eq!(f.accuracy.mean, 1.0);
        assert_eq!(f.accuracy.std, 0.0);
        assert_eq!(f.val_at_far_1e3.mean, 1.0);
    }
}
