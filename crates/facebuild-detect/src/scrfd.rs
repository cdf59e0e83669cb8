//! SCRFD (InsightFace) decoding. Per feature stride the network emits, for every location and
//! anchor, a score, four box distances and (in `kps` models) ten keypoint distances, all in
//! units of the stride, measured from the anchor centre (x, y) = (col * stride, row * stride).
//! Outputs come as `[1, N, C]` or `[N, C]`; they are grouped by C (1 scores, 4 boxes, 10
//! keypoints) and by N (most rows = finest stride), so the decoder does not depend on the
//! exporter's output order. Anchors per location are derived from N, not assumed.

use super::{Detection, rows};
use crate::error::Result;
use crate::runtime::NamedTensor;

struct Level<'a> {
    stride: usize,
    scores: &'a [f32],
    boxes: &'a [f32],
    kps: Option<&'a [f32]>,
    /// Feature map width, anchors per location.
    width: usize,
    anchors: usize,
}

fn group(outputs: &[NamedTensor], c: usize) -> Vec<(usize, Vec<f32>)> {
    let mut g: Vec<(usize, Vec<f32>)> = outputs
        .iter()
        .map(|(_, t)| rows(t))
        .filter(|(_, cc, _)| *cc == c)
        .map(|(n, _, v)| (n, v))
        .collect();
    // Stable: equal sizes keep the model's order.
    g.sort_by_key(|x| std::cmp::Reverse(x.0));
    g
}

pub fn decode(
    outputs: &[NamedTensor],
    (h, w): (usize, usize),
    strides: Option<&[u32]>,
    threshold: f32,
) -> Result<Vec<Detection>> {
    let scores = group(outputs, 1);
    let boxes = group(outputs, 4);
    let kps = group(outputs, 10);
    let levels = scores.len();
    if levels == 0 || boxes.len() != levels || !(kps.is_empty() || kps.len() == levels) {
        let shapes: Vec<String> = outputs
            .iter()
            .map(|(n, t)| format!("{n} {:?}", t.shape()))
            .collect();
        return Err(anyhow::anyhow!("not an SCRFD output set: expected per stride a score (N x 1), box (N x 4) and optional keypoint (N x 10) output; got {}", shapes.join(", ")).into());
    }
    let default: Vec<u32> = if levels == 5 {
        vec![8, 16, 32, 64, 128]
    } else {
        vec![8, 16, 32]
    };
    let strides = strides.unwrap_or(&default);
    if strides.len() != levels {
        return Err(anyhow::anyhow!(
            "SCRFD outputs have {levels} levels but {} strides are configured ({strides:?})",
            strides.len()
        )
        .into());
    }
    let mut lv = Vec::with_capacity(levels);
    for (i, &s) in strides.iter().enumerate() {
        let s = s as usize;
        let n = scores[i].0;
        // InsightFace feeds multiples of 32 (floor = ceil); a padded export rounds up.
        let (fw, fh) = [(w / s, h / s), (w.div_ceil(s), h.div_ceil(s))]
            .into_iter()
            .find(|(fw, fh)| fw * fh > 0 && n.is_multiple_of(fw * fh))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "SCRFD stride {s}: {n} rows do not fit a {}x{} feature map of a {w}x{h} input",
                    w / s,
                    h / s
                )
            })?;
        if boxes[i].0 != n || kps.get(i).is_some_and(|k| k.0 != n) {
            return Err(anyhow::anyhow!("SCRFD stride {s}: score, box and keypoint outputs disagree on the number of anchors").into());
        }
        lv.push(Level {
            stride: s,
            scores: &scores[i].1,
            boxes: &boxes[i].1,
            kps: kps.get(i).map(|k| k.1.as_slice()),
            width: fw,
            anchors: n / (fw * fh),
        });
    }
    let mut out = Vec::new();
    for l in &lv {
        for (idx, &score) in l.scores.iter().enumerate() {
            if score < threshold {
                continue;
            }
            let loc = idx / l.anchors;
            let (cx, cy) = (
                ((loc % l.width) * l.stride) as f32,
                ((loc / l.width) * l.stride) as f32,
            );
            let s = l.stride as f32;
            let d = &l.boxes[idx * 4..idx * 4 + 4];
            let bbox = [cx - d[0] * s, cy - d[1] * s, cx + d[2] * s, cy + d[3] * s];
            let kps = l.kps.map(|k| {
                let k = &k[idx * 10..idx * 10 + 10];
                std::array::from_fn(|p| [cx + k[2 * p] * s, cy + k[2 * p + 1] * s])
            });
            out.push(Detection { bbox, score, kps });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    /// A 64x64 input, strides 8/16/32, 2 anchors: one hot anchor at stride 16, row 1, col 2,
    /// second anchor; its box distances (1, 1, 2, 2) and keypoints (0.5, 0.5)... in strides.
    #[test]
    fn decodes_anchor_centres_distances_and_keypoints() {
        let mut outs = Vec::new();
        let sizes = [(8usize, 8usize), (16, 4), (32, 2)];
        let mut scores = Vec::new();
        let mut boxes = Vec::new();
        let mut kps = Vec::new();
        for (s, f) in sizes {
            let n = f * f * 2;
            let mut sc = vec![0.1f32; n];
            let mut b = vec![1.0f32; n * 4];
            let mut k = vec![0.5f32; n * 10];
            if s == 16 {
                let idx = (4 + 2) * 2 + 1;
                sc[idx] = 0.9;
                b[idx * 4..idx * 4 + 4].copy_from_slice(&[1.0, 1.0, 2.0, 2.0]);
                k[idx * 10] = -1.0;
            }
            scores.push((
                "s".to_string(),
                ArrayD::from_shape_vec(IxDyn(&[1, n, 1]), sc).unwrap(),
            ));
            boxes.push((
                "b".to_string(),
                ArrayD::from_shape_vec(IxDyn(&[n, 4]), b).unwrap(),
            ));
            kps.push((
                "k".to_string(),
                ArrayD::from_shape_vec(IxDyn(&[n, 10]), k).unwrap(),
            ));
        }
        outs.extend(scores);
        outs.extend(boxes);
        outs.extend(kps);
        let d = decode(&outs, (64, 64), None, 0.5).unwrap();
        assert_eq!(d.len(), 1);
        // Centre (2 * 16, 1 * 16) = (32, 16).
        assert_eq!(d[0].bbox, [16.0, 0.0, 64.0, 48.0]);
        let k = d[0].kps.unwrap();
        assert_eq!(k[0], [16.0, 24.0]);
        assert_eq!(k[1], [40.0, 24.0]);
    }

    #[test]
    fn rejects_outputs_of_another_family() {
        let t = ("x".to_string(), ArrayD::zeros(IxDyn(&[1, 100, 2])));
        assert!(
            decode(&[t], (64, 64), None, 0.5)
                .unwrap_err()
                .to_string()
                .contains("not an SCRFD output set")
        );
    }
}
