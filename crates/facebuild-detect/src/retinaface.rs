//! RetinaFace decoding (the Pytorch_Retinaface layout, as in `retinaface_mnet_640.onnx`):
//! prior boxes per stride (`min_sizes` per level, centred on each cell), box offsets with
//! variances, softmax scores (the face class is column 1), landmark offsets. Outputs are
//! recognised by their last dim: 4 boxes, 2 scores, 10 landmarks.

use super::{Detection, rows};
use crate::domain::DetectorSpec;
use crate::error::Result;
use crate::runtime::NamedTensor;

/// The strides and prior sizes `spec` decodes with (Pytorch_Retinaface's when unset).
pub fn prior_settings(
    strides: Option<&Vec<u32>>,
    min_sizes: Option<&Vec<Vec<f32>>>,
) -> (Vec<u32>, Vec<Vec<f32>>) {
    (
        strides.cloned().unwrap_or_else(|| vec![8, 16, 32]),
        min_sizes
            .cloned()
            .unwrap_or_else(|| vec![vec![16.0, 32.0], vec![64.0, 128.0], vec![256.0, 512.0]]),
    )
}

/// How many priors an `h` x `w` input has: what the box and score outputs' rows must be.
pub fn prior_count(h: usize, w: usize, steps: &[u32], min_sizes: &[Vec<f32>]) -> usize {
    steps
        .iter()
        .zip(min_sizes)
        .map(|(&s, m)| h.div_ceil(s as usize) * w.div_ceil(s as usize) * m.len())
        .sum()
}

/// The box output's fixed row count against the priors at `h` x `w`: Some((rows, priors))
/// when they differ. An export whose boxes are already decoded (UltraFace's corner boxes in
/// [0, 1]) has as many rows as its own anchors, which RetinaFace's priors rarely match, and
/// decoding it again would measure nothing. None when they match or no output has fixed
/// `[.., N, 4]` rows.
pub fn prior_mismatch(
    outputs: &[crate::onnx::inspect::TensorInfo],
    [h, w]: [usize; 2],
    steps: &[u32],
    min_sizes: &[Vec<f32>],
) -> Option<(usize, usize)> {
    use crate::onnx::inspect::DimInfo;
    let rows = outputs.iter().find_map(|o| match o.shape.as_deref() {
        Some([.., DimInfo::Static(n), DimInfo::Static(4)]) => Some(*n as usize),
        _ => None,
    })?;
    let priors = prior_count(h, w, steps, min_sizes);
    (rows != priors).then_some((rows, priors))
}

/// Priors as (cx, cy, w, h), relative to the input size, in the network's order.
pub fn priors(h: usize, w: usize, steps: &[u32], min_sizes: &[Vec<f32>]) -> Vec<[f32; 4]> {
    let mut p = Vec::new();
    for (k, &step) in steps.iter().enumerate() {
        let s = step as usize;
        let (fh, fw) = (h.div_ceil(s), w.div_ceil(s));
        for i in 0..fh {
            for j in 0..fw {
                for &m in &min_sizes[k] {
                    p.push([
                        (j as f32 + 0.5) * s as f32 / w as f32,
                        (i as f32 + 0.5) * s as f32 / h as f32,
                        m / w as f32,
                        m / h as f32,
                    ]);
                }
            }
        }
    }
    p
}

pub fn decode(
    outputs: &[NamedTensor],
    (h, w): (usize, usize),
    spec: &DetectorSpec,
) -> Result<Vec<Detection>> {
    let find = |c: usize| {
        outputs
            .iter()
            .map(|(_, t)| rows(t))
            .find(|(_, cc, _)| *cc == c)
    };
    let (Some(loc), Some(conf)) = (find(4), find(2)) else {
        let shapes: Vec<String> = outputs
            .iter()
            .map(|(n, t)| format!("{n} {:?}", t.shape()))
            .collect();
        return Err(anyhow::anyhow!(
            "not a RetinaFace output set: expected boxes (N x 4) and scores (N x 2); got {}",
            shapes.join(", ")
        )
        .into());
    };
    let landms = find(10);
    let (steps, min_sizes) = prior_settings(spec.strides.as_ref(), spec.min_sizes.as_ref());
    let [v0, v1] = spec.variance.unwrap_or([0.1, 0.2]);
    let pr = priors(h, w, &steps, &min_sizes);
    if pr.len() != loc.0 || conf.0 != loc.0 || landms.as_ref().is_some_and(|l| l.0 != loc.0) {
        return Err(anyhow::anyhow!("RetinaFace: {} priors for a {w}x{h} input with strides {steps:?}, but the outputs have {} boxes and {} scores", pr.len(), loc.0, conf.0)
            .context("check `detector.strides` / `detector.min_sizes` against the model")
            .into());
    }
    let (wf, hf) = (w as f32, h as f32);
    let mut out = Vec::new();
    for (i, p) in pr.iter().enumerate() {
        let score = conf.2[i * 2 + 1];
        if score < spec.score_threshold {
            continue;
        }
        let l = &loc.2[i * 4..i * 4 + 4];
        let (cx, cy) = (p[0] + l[0] * v0 * p[2], p[1] + l[1] * v0 * p[3]);
        let (bw, bh) = (p[2] * (l[2] * v1).exp(), p[3] * (l[3] * v1).exp());
        let bbox = [
            (cx - bw / 2.0) * wf,
            (cy - bh / 2.0) * hf,
            (cx + bw / 2.0) * wf,
            (cy + bh / 2.0) * hf,
        ];
        let kps = landms.as_ref().map(|lm| {
            let d = &lm.2[i * 10..i * 10 + 10];
            std::array::from_fn(|k| {
                [
                    (p[0] + d[2 * k] * v0 * p[2]) * wf,
                    (p[1] + d[2 * k + 1] * v0 * p[3]) * hf,
                ]
            })
        });
        out.push(Detection { bbox, score, kps });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prior_count_matches_the_640_export() {
        // retinaface_mnet_640: 80*80*2 + 40*40*2 + 20*20*2 = 16800 priors.
        let p = priors(
            640,
            640,
            &[8, 16, 32],
            &[vec![16.0, 32.0], vec![64.0, 128.0], vec![256.0, 512.0]],
        );
        assert_eq!(p.len(), 16800);
        assert_eq!(p[0], [4.0 / 640.0, 4.0 / 640.0, 16.0 / 640.0, 16.0 / 640.0]);
        let (s, m) = prior_settings(None, None);
        assert_eq!(prior_count(640, 640, &s, &m), 16800);
        // UltraFace RFB-320's 4420 boxes are not RetinaFace's priors at 240 x 320.
        assert_eq!(prior_count(240, 320, &s, &m), 3160);
    }
}
