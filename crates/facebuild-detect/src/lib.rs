//! Face-detector post-processing in Rust: raw network outputs -> boxes, scores and five
//! landmarks, then the score threshold and NMS. Native decoders for SCRFD and RetinaFace, and
//! the generic [`head`] decoder for any head described as data (a preset, or a manifest's
//! `detector.head`), behind [`decode`]; everything downstream
//! (compare's matching, alignment) sees only [`Detection`]s.
//!
//! Coordinates are in network-input pixels (the letterboxed image); [`Detection::scaled`]
//! maps them back to the original photo.

use facebuild_base::{domain, error};
use facebuild_onnx as onnx;
use facebuild_runtime as runtime;

pub mod head;
pub mod retinaface;
pub mod scrfd;

use serde::Serialize;

use crate::domain::{DetectorFamily, DetectorSpec};
use crate::error::Result;
use crate::runtime::NamedTensor;

/// One decoded face: box, score and (when the head predicts them) five landmarks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Detection {
    /// x1, y1, x2, y2.
    pub bbox: [f32; 4],
    /// Confidence after the family's activation (sigmoid or softmax).
    pub score: f32,
    /// Five (x, y) points: left eye, right eye, nose, left and right mouth corners.
    pub kps: Option<[[f32; 2]; 5]>,
}

impl Detection {
    /// The box's area in pixels (0 for a degenerate box).
    pub fn area(&self) -> f32 {
        (self.bbox[2] - self.bbox[0]).max(0.0) * (self.bbox[3] - self.bbox[1]).max(0.0)
    }

    /// Divide every coordinate by `s` (input pixels -> original pixels for a letterbox scale).
    pub fn scaled(&self, s: f32) -> Detection {
        Detection {
            bbox: self.bbox.map(|v| v / s),
            score: self.score,
            kps: self.kps.map(|k| k.map(|p| [p[0] / s, p[1] / s])),
        }
    }
}

/// Intersection over union, continuous coordinates (no +1 pixel convention).
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// Greedy NMS: highest score first, dropping boxes overlapping a kept one above `thresh`.
/// Ties in score keep their decode order, so the kept set is deterministic.
pub fn nms(mut dets: Vec<Detection>, thresh: f32) -> Vec<Detection> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut keep: Vec<Detection> = Vec::new();
    for d in dets {
        if keep.iter().all(|k| iou(&k.bbox, &d.bbox) <= thresh) {
            keep.push(d);
        }
    }
    keep
}

/// Decode raw outputs of one image (batch 1) at network input size `hw`, then threshold
/// and NMS, per the detector spec.
pub fn decode(
    spec: &DetectorSpec,
    outputs: &[NamedTensor],
    hw: (usize, usize),
) -> Result<Vec<Detection>> {
    let raw = match spec.family {
        DetectorFamily::Scrfd => {
            scrfd::decode(outputs, hw, spec.strides.as_deref(), spec.score_threshold)?
        }
        DetectorFamily::Retinaface => retinaface::decode(outputs, hw, spec)?,
        DetectorFamily::Head => {
            let Some(h) = &spec.head else {
                return Err(anyhow::anyhow!("`family: head` without a head").into());
            };
            let raw = head::decode(h, outputs, hw, spec.score_threshold)?;
            return Ok(head::suppress(h.nms, raw, spec.nms_iou));
        }
    };
    Ok(nms(raw, spec.nms_iou))
}

/// Rows of a raw output: every leading dim folded, the last kept (`[1, N, C]` and `[N, C]`
/// both give N rows of C).
pub fn rows(t: &ndarray::ArrayD<f32>) -> (usize, usize, Vec<f32>) {
    let c = t.shape().last().copied().unwrap_or(1).max(1);
    let v: Vec<f32> = t.iter().copied().collect();
    (v.len() / c, c, v)
}

/// One image's detections, matched against a reference's: the evidence for recall, false
/// positives, score drift, landmark error and NMS parity.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Matching {
    pub reference: usize,
    pub candidate: usize,
    pub matched: usize,
    /// Per matched pair: IoU, |score difference|, landmark NME (None without landmarks).
    pub pairs: Vec<(f32, f32, Option<f32>)>,
    /// Per matched pair: (reference index, candidate index).
    #[serde(skip)]
    pub indices: Vec<(usize, usize)>,
}

impl Matching {
    /// The same boxes were kept: every reference box has a partner and nothing else was kept.
    pub fn parity(&self) -> bool {
        self.matched == self.reference && self.matched == self.candidate
    }
}

/// Greedy one-to-one matching, reference boxes by descending score, each to the unmatched
/// candidate box with the highest IoU >= `min_iou`. Landmark error is the mean point distance
/// normalised by the reference box's size (sqrt(w * h)).
pub fn match_detections(
    reference: &[Detection],
    candidate: &[Detection],
    min_iou: f32,
) -> Matching {
    let mut used = vec![false; candidate.len()];
    let mut order: Vec<usize> = (0..reference.len()).collect();
    order.sort_by(|&a, &b| reference[b].score.total_cmp(&reference[a].score));
    let mut m = Matching {
        reference: reference.len(),
        candidate: candidate.len(),
        ..Default::default()
    };
    for i in order {
        let r = &reference[i];
        let best = candidate
            .iter()
            .enumerate()
            .filter(|(j, _)| !used[*j])
            .map(|(j, c)| (j, iou(&r.bbox, &c.bbox)))
            .filter(|(_, v)| *v >= min_iou)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((j, v)) = best {
            used[j] = true;
            let c = &candidate[j];
            let nme = match (r.kps, c.kps) {
                (Some(a), Some(b)) => {
                    let size = r.area().sqrt().max(1e-6);
                    Some(
                        a.iter()
                            .zip(b.iter())
                            .map(|(p, q)| ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt())
                            .sum::<f32>()
                            / 5.0
                            / size,
                    )
                }
                _ => None,
            };
            m.matched += 1;
            m.pairs.push((v, (r.score - c.score).abs(), nme));
            m.indices.push((i, j));
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x: f32, y: f32, s: f32, score: f32) -> Detection {
        Detection {
            bbox: [x, y, x + s, y + s],
            score,
            kps: Some([[x + 1.0, y + 1.0]; 5]),
        }
    }

    #[test]
    fn iou_of_known_boxes() {
        assert_eq!(iou(&[0.0, 0.0, 10.0, 10.0], &[0.0, 0.0, 10.0, 10.0]), 1.0);
        assert!(
            (iou(&[0.0, 0.0, 10.0, 10.0], &[5.0, 0.0, 15.0, 10.0]) - 50.0 / 150.0).abs() < 1e-6
        );
        assert_eq!(iou(&[0.0, 0.0, 1.0, 1.0], &[2.0, 2.0, 3.0, 3.0]), 0.0);
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes() {
        let kept = nms(
            vec![
                det(0.0, 0.0, 10.0, 0.6),
                det(1.0, 0.0, 10.0, 0.9),
                det(50.0, 50.0, 10.0, 0.7),
            ],
            0.4,
        );
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].score, 0.9);
        assert_eq!(kept[1].score, 0.7);
    }

    #[test]
    fn matching_counts_misses_extras_and_landmark_error() {
        let r = vec![det(0.0, 0.0, 10.0, 0.9), det(50.0, 50.0, 10.0, 0.8)];
        let mut shifted = det(0.0, 0.0, 10.0, 0.85);
        shifted.kps = Some([[2.0, 1.0]; 5]);
        let c = vec![shifted, det(100.0, 100.0, 10.0, 0.7)];
        let m = match_detections(&r, &c, 0.5);
        assert_eq!((m.reference, m.candidate, m.matched), (2, 2, 1));
        assert!(!m.parity());
        let (v, ds, nme) = m.pairs[0];
        assert_eq!(v, 1.0);
        assert!((ds - 0.05).abs() < 1e-6);
        assert!((nme.unwrap() - 0.1).abs() < 1e-6, "{nme:?}");
    }
}
