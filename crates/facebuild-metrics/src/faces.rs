//! What faces a set holds, as the reference detector sees them at the model's input: their
//! heights as a fraction of the input height, how many per image, their scores. A detector
//! calibrated or searched on portraits (one large face each) and deployed on crowds (many
//! small ones) loses the small faces; these figures say when two sets differ that way.

use serde::{Deserialize, Serialize};

use crate::detect::Detection;

/// Upper edges of the height histogram's bins (fractions of the input height); each bin
/// doubles, the last holds everything larger.
pub const HEIGHT_EDGES: [f64; 7] = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, f64::INFINITY];

/// A set's faces at one input size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaceStats {
    /// The dataset.
    pub dataset: String,
    /// [h, w] the images were fitted to.
    pub input: [u32; 2],
    pub images: usize,
    pub faces: usize,
    pub images_without_faces: usize,
    pub faces_per_image_mean: f64,
    pub faces_per_image_max: usize,
    /// Box height / input height.
    pub height: Quantiles,
    pub score: Quantiles,
    /// Faces per height bin: `[upper edge, faces]`; the last edge is null (no limit).
    pub histogram: Vec<(Option<f64>, usize)>,
}

/// Quantiles by the nearest rank; all zero for an empty set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    pub min: f64,
    pub p01: f64,
    pub p10: f64,
    pub p50: f64,
    pub p90: f64,
    pub max: f64,
}

impl Quantiles {
    fn of(mut v: Vec<f64>) -> Quantiles {
        v.sort_by(f64::total_cmp);
        let q = |p: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            v[i]
        };
        Quantiles {
            min: v.first().copied().unwrap_or(0.0),
            p01: q(0.01),
            p10: q(0.10),
            p50: q(0.50),
            p90: q(0.90),
            max: v.last().copied().unwrap_or(0.0),
        }
    }
}

impl FaceStats {
    /// From each image's detections in input pixels (the fitted image the model saw).
    pub fn measure(dataset: &str, input: [u32; 2], per_image: &[Vec<Detection>]) -> FaceStats {
        let h = input[0].max(1) as f64;
        let heights: Vec<f64> = per_image
            .iter()
            .flatten()
            .map(|d| ((d.bbox[3] - d.bbox[1]).max(0.0) as f64) / h)
            .collect();
        let scores = per_image.iter().flatten().map(|d| d.score as f64).collect();
        let mut histogram: Vec<(Option<f64>, usize)> = HEIGHT_EDGES
            .iter()
            .map(|e| (e.is_finite().then_some(*e), 0))
            .collect();
        for v in &heights {
            let bin = HEIGHT_EDGES
                .iter()
                .position(|e| v < e)
                .unwrap_or(HEIGHT_EDGES.len() - 1);
            histogram[bin].1 += 1;
        }
        let faces = heights.len();
        FaceStats {
            dataset: dataset.to_string(),
            input,
            images: per_image.len(),
            faces,
            images_without_faces: per_image.iter().filter(|d| d.is_empty()).count(),
            faces_per_image_mean: faces as f64 / per_image.len().max(1) as f64,
            faces_per_image_max: per_image.iter().map(Vec::len).max().unwrap_or(0),
            height: Quantiles::of(heights),
            score: Quantiles::of(scores),
            histogram,
        }
    }

    /// One line: faces, per image, and the height quantiles.
    pub fn line(&self) -> String {
        format!(
            "`{}` at {}x{}: {} faces in {} images ({:.1} per image, at most {}); height / input: p01 {:.3}, p10 {:.3}, median {:.3}, p90 {:.3}",
            self.dataset,
            self.input[0],
            self.input[1],
            self.faces,
            self.images,
            self.faces_per_image_mean,
            self.faces_per_image_max,
            self.height.p01,
            self.height.p10,
            self.height.p50,
            self.height.p90
        )
    }
}

/// How much smaller than `source`'s smallest faces `target`'s may be and still count as
/// covered. Both sets bottom out where the detector stops finding faces (about 8 px), so
/// two sets that reach it differ there by noise; a bin of the histogram is a factor 2.
pub const COVERAGE_SLACK: f64 = 0.8;

/// Why `source` (a calibration or search set) does not look like `target` (what is
/// compared, standing for deployment): `target`'s small faces (its 10th percentile of
/// height) are more than a fifth smaller than nearly all of `source`'s (its 1st
/// percentile). None when it covers them, or when either set has no faces.
pub fn uncovered(source: &FaceStats, target: &FaceStats) -> Option<String> {
    if source.faces == 0
        || target.faces == 0
        || target.height.p10 >= COVERAGE_SLACK * source.height.p01
    {
        return None;
    }
    Some(format!(
        "`{}` does not cover the face sizes of `{}`: a tenth of `{}`'s faces are {:.3} of the input height or smaller, but 99% of `{}`'s are {:.3} or larger",
        source.dataset,
        target.dataset,
        target.dataset,
        target.height.p10,
        source.dataset,
        source.height.p01
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faces(heights: &[f32]) -> Vec<Detection> {
        heights
            .iter()
            .map(|&h| Detection {
                bbox: [0.0, 0.0, h, h],
                score: 0.8,
                kps: None,
            })
            .collect()
    }

    #[test]
    fn portraits_do_not_cover_a_crowd_and_a_mosaic_does() {
        let portraits = FaceStats::measure("portraits", [640, 640], &vec![faces(&[300.0]); 50]);
        let crowd = FaceStats::measure(
            "scenes",
            [640, 640],
            &[
                faces(&[8.0, 10.0, 12.0, 20.0, 40.0, 60.0, 9.0, 11.0, 30.0, 25.0]),
                vec![],
            ],
        );
        let mosaic = FaceStats::measure(
            "mosaic",
            [640, 640],
            &[faces(&[6.0, 10.0, 20.0, 40.0, 80.0, 160.0])],
        );
        let w = uncovered(&portraits, &crowd).unwrap();
        assert!(
            w.contains("`portraits` does not cover the face sizes of `scenes`"),
            "{w}"
        );
        assert!(uncovered(&mosaic, &crowd).is_none());
        assert_eq!(crowd.images_without_faces, 1);
        assert_eq!(crowd.faces_per_image_max, 10);
        // 8/640 = 0.0125 -> the 0.02 bin; 300/640 -> the last bin.
        assert_eq!(crowd.histogram[0].1, 0);
        assert_eq!(crowd.histogram[1].1, 5);
        assert_eq!(portraits.histogram.last().unwrap(), &(None, 50));
        assert!(
            (crowd.height.p50 - 12.0 / 640.0).abs() < 1e-9,
            "{:?}",
            crowd.height
        );
    }
}

/// Upper edges of the height strata recall is reported by (fractions of the input height).
pub const STRATA: [f64; 4] = [0.02, 0.05, 0.1, f64::INFINITY];

/// Recall on the reference faces of one height stratum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stratum {
    /// Faces lower than this fraction of the input height (and at least the previous
    /// stratum's); null: no limit.
    pub below: Option<f64>,
    pub faces: usize,
    /// None when the stratum holds no face.
    pub recall: Option<f64>,
}

/// One input size's detections: (input height, reference boxes per image, candidate boxes
/// per image).
pub type HeightRun<'a> = (u32, &'a [Vec<Detection>], &'a [Vec<Detection>]);

/// Recall per height stratum (`edges`, ascending, fractions of the input height), over
/// runs at one input size each: (input height, reference boxes per image, candidate boxes
/// per image). A stratum's reference faces are matched one-to-one against all of the
/// candidate's boxes.
pub fn recall_by_height(runs: &[HeightRun], edges: &[f64], min_iou: f32) -> Vec<Stratum> {
    let images: Vec<(&Vec<Detection>, &Vec<Detection>, u32)> = runs
        .iter()
        .flat_map(|(h, r, c)| r.iter().zip(c.iter()).map(|(r, c)| (r, c, *h)))
        .collect();
    let mut lo = 0.0;
    edges
        .iter()
        .map(|&hi| {
            let (mut faces, mut matched) = (0usize, 0usize);
            for (r, c, h) in &images {
                let inside: Vec<Detection> = r
                    .iter()
                    .filter(|d| {
                        let f = ((d.bbox[3] - d.bbox[1]) as f64) / (*h).max(1) as f64;
                        f >= lo && f < hi
                    })
                    .cloned()
                    .collect();
                faces += inside.len();
                matched += crate::detect::match_detections(&inside, c, min_iou).matched;
            }
            lo = hi;
            Stratum {
                below: hi.is_finite().then_some(hi),
                faces,
                recall: (faces > 0).then(|| matched as f64 / faces as f64),
            }
        })
        .collect()
}

#[cfg(test)]
mod strata_tests {
    use super::*;

    #[test]
    fn a_lost_small_face_shows_in_its_stratum_only() {
        let d = |y: f32, h: f32| Detection {
            bbox: [10.0, y, 10.0 + h, y + h],
            score: 0.9,
            kps: None,
        };
        let reference = vec![d(0.0, 8.0), d(100.0, 200.0), d(400.0, 20.0)];
        let candidate = vec![d(100.0, 200.0), d(400.0, 20.0)];
        let s = recall_by_height(&[(640, &[reference], &[candidate])], &STRATA, 0.5);
        assert_eq!(
            s[0],
            Stratum {
                below: Some(0.02),
                faces: 1,
                recall: Some(0.0)
            }
        );
        assert_eq!(s[1].recall, Some(1.0));
        assert_eq!(s[2].faces, 0);
        assert_eq!(
            s[3],
            Stratum {
                below: None,
                faces: 1,
                recall: Some(1.0)
            }
        );
    }
}
