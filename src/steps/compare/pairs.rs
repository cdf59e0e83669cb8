//! An embedder compare's pair figures and how sure they are: the candidate scored in
//! lockstep with the reference (TAR at the operating FAR, decision flips), bootstrap
//! intervals resampled by identity, the exact McNemar test of the flips, the distribution of
//! per-pair score differences, and the LFW protocol on pair sets that carry folds.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use camino::{Utf8Path, Utf8PathBuf};
use ndarray::Array2;

use super::report::{CandidateVerification, LfwComparison, Resampling, TarAtOperatingFar};
use super::{CompareParams, pairs_progress};
use crate::error::{Error, Result};
use crate::metrics::lfw::{self, LfwFigures};
use crate::metrics::similarity::{self, PairSet};
use crate::metrics::uncertainty::{self, Bootstrap, PairIntervals, PairedScores, Spread, UnitStat};
use crate::metrics::verification::{
    self, ImpostorSample, PairSource, SortedScores, Verification, VerificationCi95,
};
use crate::steps::StepContext;

/// The unit each image belongs to for resampling.
pub(super) struct Units {
    pub of_image: Vec<u32>,
    pub count: usize,
    pub by: &'static str,
    pub note: String,
}

impl Units {
    pub(super) fn resampling(&self, boot: &Bootstrap) -> Resampling {
        Resampling {
            by: self.by.into(),
            units: self.count,
            replicates: boot.replicates,
            seed: boot.seed,
            note: self.note.clone(),
        }
    }
}

/// Units of a set: its identities (a folder per person), else the connected components of
/// its genuine pairs (a pairs file or `.bin` names no person), else its images.
pub(super) fn units_of(
    files: &[Utf8PathBuf],
    root: &Utf8Path,
    pairs: Option<&(PairSet, PairSource)>,
) -> Units {
    match pairs.map(|(set, _)| set) {
        Some(PairSet::All { ids }) => {
            let count = ids.iter().collect::<BTreeSet<_>>().len();
            Units {
                of_image: ids.clone(),
                count,
                by: "identity",
                note: format!("{count} identity folders"),
            }
        }
        Some(PairSet::Listed(listed)) => {
            if let Some((of_image, count)) = verification::folder_identities(files, root) {
                return Units {
                    of_image,
                    count,
                    by: "identity",
                    note: format!("{count} identity folders"),
                };
            }
            let (of_image, count) = uncertainty::genuine_components(
                files.len(),
                listed.iter().filter(|p| p.same).map(|p| (p.a, p.b)),
            );
            Units {
                of_image,
                count,
                by: "genuine-pair component",
                note: format!(
                    "the pairs name no person: {count} connected components of the genuine pairs stand in for identities"
                ),
            }
        }
        None => Units {
            of_image: (0..files.len() as u32).collect(),
            count: files.len(),
            by: "image",
            note: "no identities: resampled by image".into(),
        },
    }
}

/// The interval of the smallest per-image cosine, resampled by unit.
pub(super) fn cosine_min_spread(cos: &[f64], units: &Units, boot: &Bootstrap) -> Option<Spread> {
    let mut per_unit = vec![f64::NAN; units.count];
    for (c, u) in cos.iter().zip(&units.of_image) {
        let m = &mut per_unit[*u as usize];
        *m = if m.is_nan() { *c } else { m.min(*c) };
    }
    uncertainty::unit_intervals(boot, units.count, units.by, &[UnitStat::Min(&per_unit)])
        .pop()
        .flatten()
}

/// LFW-protocol figures of one model, on a listed set that carries folds.
pub(super) fn lfw_figures(
    emb: &[Vec<f32>],
    flipped: Option<&[Vec<f32>]>,
    set: &PairSet,
    src: &PairSource,
) -> Option<LfwFigures> {
    let PairSet::Listed(listed) = set else {
        return None;
    };
    let folds = src.folds?;
    let idx: Vec<(usize, usize)> = listed.iter().map(|p| (p.a, p.b)).collect();
    let same: Vec<bool> = listed.iter().map(|p| p.same).collect();
    let dist = lfw::squared_distances(emb, flipped, &idx);
    lfw::lfw_protocol(&dist, &same, folds, flipped.is_some())
}

/// Whether to embed mirrored images too (`lfw_flip`): only a pair set with folds takes it.
pub(super) fn flip_for(
    p: &CompareParams,
    pairs: Option<&(PairSet, PairSource)>,
    step: &str,
) -> Result<bool> {
    if p.lfw_flip && pairs.is_none_or(|(_, s)| s.folds.is_none()) {
        return Err(Error::Step {
            step: step.to_string(),
            message: format!(
                "`lfw_flip` needs a pair set with folds; dataset `{}` has none (or `count` left pairs out)",
                p.dataset
            ),
            hint: Some(
                "use LFW's pairs.txt or an InsightFace .bin with every pair, or drop `lfw_flip`"
                    .into(),
            ),
        });
    }
    Ok(p.lfw_flip)
}

/// What the reference's scoring leaves for every candidate.
pub(super) struct Reference<'a> {
    pub set: &'a PairSet,
    pub src: &'a PairSource,
    pub unit: &'a Array2<f32>,
    pub sorted: &'a SortedScores,
    pub verification: &'a Verification,
    pub sample: Option<ImpostorSample>,
    pub lfw: Option<&'a LfwFigures>,
}

/// A candidate's pair figures, their intervals, and the scoring time.
pub(super) fn verify_candidate(
    ctx: &StepContext,
    p: &CompareParams,
    label: &str,
    r: &Reference,
    (emb, flipped): (&[Vec<f32>], Option<&[Vec<f32>]>),
    units: &Units,
) -> (CandidateVerification, Option<PairIntervals>, u64) {
    // Reference and candidate scored in lockstep: decisions compared pair by pair at the
    // reference's operating threshold; only the candidate's scores are kept, and with them
    // each pair's units for the bootstrap.
    let unit = similarity::normalized(emb);
    let t = r.verification.threshold_at_operating_far;
    let expected = p.expected_impostors(r.src);
    let mut scores = p.score_sink(r.src);
    let mut paired = match r.set {
        PairSet::All { .. } => {
            let mut sizes = vec![0usize; units.count];
            for u in &units.of_image {
                sizes[*u as usize] += 1;
            }
            let rate = r
                .src
                .sampled
                .as_ref()
                .map_or(1.0, |s| s.kept as f64 / r.src.impostor.max(1) as f64);
            PairedScores::all_pairs(sizes, t, p.operating_far, rate, expected)
        }
        PairSet::Listed(_) => PairedScores::listed(units.count, units.by, t, p.operating_far),
    };
    let mut f = 0usize;
    let mut sample = r.sample.clone();
    let t_score = Instant::now();
    let of = &units.of_image;
    similarity::for_each_score(
        &[r.unit, &unit],
        r.set,
        |a, b, same, s| {
            if !same && sample.as_mut().is_some_and(|x| !x.keep()) {
                return;
            }
            let (rs, cs) = (s[0] as f64, s[1] as f64);
            f += ((rs > t) != (cs > t)) as usize;
            scores.push(same, cs);
            paired.push(same, of[a], of[b], s[0], s[1]);
        },
        |done, total| pairs_progress(ctx, label, done, total, t_score),
    );
    let cand_sorted = scores.finish();
    let intervals = p.bootstrap().map(|b| paired.intervals(&b));
    let cv = verification::verification_of(&cand_sorted, p.operating_far)
        .with_ci95(ci95_of(intervals.as_ref(), 1));
    let ci = |s: Option<&Spread>| s.map(|s| s.ci95);
    let tar = r
        .sorted
        .tar_at_far(p.operating_far)
        .zip(cand_sorted.tar_at_far(p.operating_far))
        .map(|(reference, candidate)| TarAtOperatingFar {
            reference,
            candidate,
            drop: reference - candidate,
            reference_ci95: ci(intervals.as_ref().and_then(|i| i.tar_reference.as_ref())),
            candidate_ci95: ci(intervals.as_ref().and_then(|i| i.tar_candidate.as_ref())),
            drop_ci95: ci(intervals.as_ref().and_then(|i| i.tar_drop.as_ref())),
        });
    let (a2r, r2a) = paired.flip_counts();
    let lfw = r.lfw.and_then(|reference| {
        let candidate = lfw_figures(emb, flipped, r.set, r.src)?;
        Some(LfwComparison {
            accuracy_drop: reference.accuracy.mean - candidate.accuracy.mean,
            val_drop: reference.val_at_far_1e3.mean - candidate.val_at_far_1e3.mean,
            candidate,
        })
    });
    let v = CandidateVerification {
        candidate: cv,
        tar_at_operating_far: tar,
        flips_at_reference_threshold: f as u64,
        flips_at_reference_threshold_ci95: ci(intervals.as_ref().and_then(|i| i.flips.as_ref())),
        flips_accept_to_reject: a2r,
        flips_reject_to_accept: r2a,
        mcnemar_p: Some(paired.mcnemar_p()),
        score_difference: Some(paired.differences()),
        lfw,
    };
    (v, intervals, t_score.elapsed().as_millis() as u64)
}

/// The 95% intervals of TAR at 1e-2, 1e-3 and the EER: the reference's (`which` 0) or the
/// candidate's (1).
pub(super) fn ci95_of(i: Option<&PairIntervals>, which: usize) -> VerificationCi95 {
    let ci = |s: &[Option<Spread>; 2]| s[which].as_ref().map(|s| s.ci95);
    i.map_or((None, None, None), |i| {
        (ci(&i.tar_1e2), ci(&i.tar_1e3), ci(&i.eer))
    })
}

/// The intervals of an embedder candidate's gated figures, by figure name, and the 95% one
/// of its smallest per-image cosine.
pub(super) fn figure_intervals(
    p: &CompareParams,
    cos: &[f64],
    units: &Units,
    pairs: Option<&PairIntervals>,
) -> (BTreeMap<String, Spread>, Option<[f64; 2]>) {
    let cosine_min = p
        .bootstrap()
        .and_then(|b| cosine_min_spread(cos, units, &b));
    let ci95 = cosine_min.as_ref().map(|s| s.ci95);
    let mut m = BTreeMap::new();
    if let Some(s) = cosine_min {
        m.insert("cosine_min".to_string(), s);
    }
    if let Some(i) = pairs {
        for (k, s) in [("tar_drop", &i.tar_drop), ("flips", &i.flips)] {
            if let Some(s) = s {
                m.insert(k.to_string(), s.clone());
            }
        }
    }
    (m, ci95)
}
