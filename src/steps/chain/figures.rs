//! A combination's figures against the reference chain, and its gates.

use std::collections::BTreeMap;

use super::stages::Found;
use super::{
    ChainAttributes, ChainFigures, ChainGates, ChainLandmarks, ChainParams, ChainVerification,
};
use crate::manifest::ModelSpec;
use crate::metrics::verification::Pair;

/// Every pair of `set`, listed.
pub(super) fn listed(set: &crate::metrics::similarity::PairSet) -> Vec<Pair> {
    use crate::metrics::similarity::PairSet;
    match set {
        PairSet::Listed(p) => p.clone(),
        PairSet::All { ids } => {
            let mut v = Vec::new();
            for a in 0..ids.len() {
                for b in a + 1..ids.len() {
                    v.push(Pair {
                        a,
                        b,
                        same: ids[a] == ids[b],
                    });
                }
            }
            v
        }
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64) * (*y as f64))
        .sum()
}

/// Each pair's score through the chain: the cosine of the two images' largest faces (-1
/// when either has none, a certain rejection).
fn pair_scores(found: &[Found], pairs: &[Pair]) -> Vec<f64> {
    pairs
        .iter()
        .map(
            |p| match (found[p.a].embeddings.first(), found[p.b].embeddings.first()) {
                (Some(a), Some(b)) => cosine(a, b),
                _ => -1.0,
            },
        )
        .collect()
}

fn min_mean(v: &[f64]) -> (Option<f64>, Option<f64>) {
    (
        v.iter().copied().reduce(f64::min),
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64),
    )
}

fn verification(
    reference: &[Found],
    cand: &[Found],
    pairs: &[Pair],
    operating_far: f64,
) -> ChainVerification {
    use crate::metrics::verification::{SortedScores, verification_of};
    let sorted = |scores: &[f64]| {
        let (mut g, mut i) = (Vec::new(), Vec::new());
        for (pair, s) in pairs.iter().zip(scores) {
            if pair.same { g.push(*s) } else { i.push(*s) }
        }
        SortedScores::from_vecs(g, i)
    };
    let rs = pair_scores(reference, pairs);
    let cs = pair_scores(cand, pairs);
    let (rsorted, csorted) = (sorted(&rs), sorted(&cs));
    let rv = verification_of(&rsorted, operating_far);
    let cv = verification_of(&csorted, operating_far);
    let th = rv.threshold_at_operating_far;
    ChainVerification {
        tar_at_operating_far: csorted.tar_at_far(operating_far),
        reference_tar_at_operating_far: rsorted.tar_at_far(operating_far),
        eer: cv.eer,
        reference_eer: rv.eer,
        // Decisions at the reference's threshold that the candidate chain reverses.
        flips: rs
            .iter()
            .zip(&cs)
            .filter(|(r, c)| (**r >= th) != (**c >= th))
            .count(),
        pairs: pairs.len(),
    }
}

/// Running sums of one landmark or attribute model over matched faces.
#[derive(Default)]
struct Extras {
    nme: BTreeMap<String, Vec<f64>>,
    attrs: BTreeMap<String, (usize, usize, Vec<f64>)>,
}

impl Extras {
    /// Add face `i` of the reference and `j` of the candidate of one image.
    fn add(&mut self, (r, c): (&Found, &Found), (i, j): (usize, usize), models: &Models) {
        for (name, rp) in &r.points {
            let (Some(a), Some(b), Some(m)) = (
                rp.get(i),
                c.points.get(name).and_then(|p| p.get(j)),
                models.get(name),
            ) else {
                continue;
            };
            let scheme = super::stages::scheme_of(m, a.len());
            let bbox = r.faces[i].bbox.map(f64::from);
            let norm = scheme.normaliser(a, bbox).max(1e-9);
            let (mean, _) = crate::metrics::landmarks::point_errors(a, b);
            self.nme.entry(name.clone()).or_default().push(mean / norm);
        }
        for (name, ra) in &r.answers {
            let e = self.attrs.entry(name.clone()).or_default();
            e.0 += 1;
            match (
                ra.get(i).copied().flatten(),
                c.answers
                    .get(name)
                    .and_then(|a| a.get(j))
                    .copied()
                    .flatten(),
            ) {
                (Some(a), Some(b)) => {
                    e.1 += usize::from(a.gender != b.gender);
                    e.2.push((a.age - b.age).abs());
                }
                // A non-finite answer is a flip and an unbounded age error.
                _ => {
                    e.1 += 1;
                    e.2.push(f64::INFINITY);
                }
            }
        }
    }

    fn finish(
        self,
    ) -> (
        BTreeMap<String, ChainLandmarks>,
        BTreeMap<String, ChainAttributes>,
    ) {
        let lm = self
            .nme
            .into_iter()
            .map(|(k, v)| {
                let figs = ChainLandmarks {
                    faces: v.len(),
                    nme_mean: v.iter().sum::<f64>() / v.len().max(1) as f64,
                    nme_max: v.iter().copied().fold(0.0, f64::max),
                };
                (k, figs)
            })
            .collect();
        let at = self
            .attrs
            .into_iter()
            .map(|(k, (faces, flips, ages))| {
                let figs = ChainAttributes {
                    faces,
                    gender_flips: flips,
                    age_mae: ages.iter().sum::<f64>() / ages.len().max(1) as f64,
                    age_error_max: ages.iter().copied().fold(0.0, f64::max),
                };
                (k, figs)
            })
            .collect();
        (lm, at)
    }
}

/// The chain's landmark models by name, for their point schemes.
pub(super) type Models<'a> = BTreeMap<String, &'a ModelSpec>;

/// The figures of `cand` against `reference`.
pub(super) fn figures(
    (reference, cand): (&[Found], &[Found]),
    pairs: Option<&[Pair]>,
    p: &ChainParams,
    models: &Models,
) -> ChainFigures {
    let (mut ref_faces, mut matched, mut extra) = (0usize, 0usize, 0usize);
    let (mut cosines, mut largest) = (Vec::new(), Vec::new());
    let mut extras = Extras::default();
    for (r, c) in reference.iter().zip(cand) {
        let m = crate::detect::match_detections(&r.faces, &c.faces, p.min_iou);
        ref_faces += m.reference;
        matched += m.matched;
        extra += m.candidate - m.matched;
        for &(i, j) in &m.indices {
            let cos = cosine(&r.embeddings[i], &c.embeddings[j]);
            cosines.push(cos);
            if i == 0 {
                largest.push(cos);
            }
            extras.add((r, c), (i, j), models);
        }
    }
    let (cosine_min, cosine_mean) = min_mean(&cosines);
    let (largest_min, largest_mean) = min_mean(&largest);
    let (landmarks, attributes) = extras.finish();
    ChainFigures {
        recall: if ref_faces == 0 {
            1.0
        } else {
            matched as f64 / ref_faces as f64
        },
        fp_per_image: extra as f64 / reference.len().max(1) as f64,
        cosine_min,
        cosine_mean,
        largest_cosine_min: largest_min,
        largest_cosine_mean: largest_mean,
        faces: matched,
        verification: pairs
            .filter(|p| !p.is_empty())
            .map(|pairs| verification(reference, cand, pairs, p.operating_far)),
        landmarks,
        attributes,
    }
}

/// Each failed gate as `name: figure vs limit`.
pub(crate) fn failed_gates(g: &ChainGates, f: &ChainFigures) -> Vec<String> {
    let mut out = Vec::new();
    let mut above = |name: &str, limit: Option<f64>, x: f64| {
        if let Some(max) = limit
            && (x.is_nan() || x > max)
        {
            out.push(format!("{name}: {x:.6} > {max}"));
        }
    };
    above("fp_per_image_max", g.fp_per_image_max, f.fp_per_image);
    for (m, l) in &f.landmarks {
        above(&format!("nme_mean_max ({m})"), g.nme_mean_max, l.nme_mean);
        above(&format!("nme_max ({m})"), g.nme_max, l.nme_max);
    }
    for (m, a) in &f.attributes {
        above(&format!("age_mae_max ({m})"), g.age_mae_max, a.age_mae);
        above(
            &format!("gender_flips_max ({m})"),
            g.gender_flips_max.map(|x| x as f64),
            a.gender_flips as f64,
        );
    }
    if let Some(v) = &f.verification {
        above("eer_max", g.eer_max, v.eer);
        above("flips_max", g.flips_max.map(|x| x as f64), v.flips as f64);
    } else if g.flips_max.is_some() || g.eer_max.is_some() {
        out.push("flips_max/eer_max: the dataset has no identities, nothing measured".into());
    }
    if let Some(min) = g.recall_min
        && f.recall < min
    {
        out.push(format!("recall_min: {:.4} < {min}", f.recall));
    }
    for (name, min, x) in [
        ("cosine_min", g.cosine_min, f.cosine_min),
        (
            "largest_cosine_min",
            g.largest_cosine_min,
            f.largest_cosine_min,
        ),
    ] {
        match (min, x) {
            (None, _) => {}
            (Some(min), Some(c)) if c >= min => {}
            (Some(min), Some(c)) => out.push(format!("{name}: {c:.6} < {min}")),
            (Some(_), None) => out.push(format!("{name}: no matched face, nothing measured")),
        }
    }
    out
}
