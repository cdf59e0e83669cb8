//! Pair similarities at dataset scale. Embeddings are L2-normalised once; a set of listed
//! pairs (a pairs file, a `.bin`) is scored pair by pair, and a folder-per-identity set (every
//! pair of N images, N(N-1)/2 of them) by blocked matrix products of the normalised
//! embeddings (ndarray's `dot`, matrixmultiply GEMM), visiting the upper triangle block by
//! block. No pair list is materialised, so memory holds the scores only.

use ndarray::{Array2, ArrayView2, Axis, s};

use super::verification::Pair;

/// Which pairs a verification set compares.
#[derive(Debug, Clone)]
pub enum PairSet {
    /// Listed pairs (a pairs file or a `.bin`).
    Listed(Vec<Pair>),
    /// Every pair i < j of images labelled by identity (a folder per identity).
    All {
        /// Identity of each image.
        ids: Vec<u32>,
    },
}

impl PairSet {
    /// How many pairs the set holds.
    pub fn len(&self) -> usize {
        match self {
            PairSet::Listed(p) => p.len(),
            PairSet::All { ids } => ids.len() * ids.len().saturating_sub(1) / 2,
        }
    }

    /// Whether the set holds no pair.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Rows of `e`, L2-normalised (in f64, stored as f32). A zero row stays zero.
pub fn normalized(e: &[Vec<f32>]) -> Array2<f32> {
    let d = e.first().map(Vec::len).unwrap_or(0);
    let mut out = Array2::<f32>::zeros((e.len(), d));
    for (mut row, v) in out.axis_iter_mut(Axis(0)).zip(e) {
        let n = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        if n > 0.0 {
            for (o, x) in row.iter_mut().zip(v) {
                *o = (*x as f64 / n) as f32;
            }
        }
    }
    out
}

/// Rows per block: a block of scores is `BLOCK x N` f32, 4 MiB per 1000 images.
const BLOCK: usize = 1024;

/// Visit the cosine score of every pair of `set` under each embedding matrix in `embs`
/// (rows normalised; all of the same images), in a fixed order: listed order, or row-major
/// over i < j. `visit(same, scores)` gets one score per matrix, so a reference and a
/// candidate are compared pair by pair without storing either; it also gets the pair's
/// image indices. `progress(done, total)` is called after each block.
pub fn for_each_score(
    embs: &[&Array2<f32>],
    set: &PairSet,
    mut visit: impl FnMut(usize, usize, bool, &[f32]),
    mut progress: impl FnMut(usize, usize),
) {
    let total = set.len();
    let mut scores = vec![0f32; embs.len()];
    match set {
        PairSet::Listed(pairs) => {
            for (k, p) in pairs.iter().enumerate() {
                for (s, e) in scores.iter_mut().zip(embs) {
                    *s = e.row(p.a).dot(&e.row(p.b));
                }
                visit(p.a, p.b, p.same, &scores);
                if (k + 1) % (BLOCK * 64) == 0 {
                    progress(k + 1, total);
                }
            }
            progress(total, total);
        }
        PairSet::All { ids } => {
            let n = ids.len();
            let mut done = 0;
            for i0 in (0..n).step_by(BLOCK) {
                let i1 = (i0 + BLOCK).min(n);
                // Scores of rows i0..i1 against rows i0..n: the block's part of the upper
                // triangle.
                let blocks: Vec<Array2<f32>> = embs
                    .iter()
                    .map(|e| block_scores(e.slice(s![i0..i1, ..]), e.slice(s![i0.., ..])))
                    .collect();
                for i in i0..i1 {
                    for j in i + 1..n {
                        for (s, b) in scores.iter_mut().zip(&blocks) {
                            *s = b[[i - i0, j - i0]];
                        }
                        visit(i, j, ids[i] == ids[j], &scores);
                    }
                    done += n - i - 1;
                }
                progress(done, total);
            }
        }
    }
}

fn block_scores(rows: ArrayView2<f32>, cols: ArrayView2<f32>) -> Array2<f32> {
    rows.dot(&cols.t())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocked matrix products give every pair's cosine, as the pairwise definition does.
    #[test]
    fn blocked_products_match_pairwise_cosines() {
        let mut rng = crate::util::SplitMix64::new(3);
        let n = BLOCK + 37; // more than one block
        let e: Vec<Vec<f32>> = (0..n)
            .map(|_| (0..16).map(|_| rng.unit()).collect())
            .collect();
        let ids: Vec<u32> = (0..n as u32).map(|i| i % 7).collect();
        let norm = normalized(&e);
        let set = PairSet::All { ids: ids.clone() };
        let mut got = Vec::new();
        let mut same_count = 0;
        for_each_score(
            &[&norm],
            &set,
            |_, _, same, s| {
                same_count += same as usize;
                got.push(s[0]);
            },
            |_, _| {},
        );
        assert_eq!(got.len(), set.len());
        let mut k = 0;
        let mut want_same = 0;
        for i in 0..n {
            for j in i + 1..n {
                let c = crate::cosine(&e[i], &e[j]);
                assert!((got[k] as f64 - c).abs() < 1e-5, "pair {i},{j}");
                want_same += (ids[i] == ids[j]) as usize;
                k += 1;
            }
        }
        assert_eq!(same_count, want_same);
        // Listed pairs, with two matrices in lockstep.
        let doubled = norm.mapv(|x| x * 2.0);
        let listed = PairSet::Listed(vec![Pair {
            a: 0,
            b: 5,
            same: true,
        }]);
        for_each_score(
            &[&norm, &doubled],
            &listed,
            |_, _, same, s| {
                assert!(same);
                assert!((s[1] - 4.0 * s[0]).abs() < 1e-5);
            },
            |_, _| {},
        );
    }
}
