//! Face alignment for recognition: detect the face in a whole photo, then warp it onto the
//! ArcFace 112x112 five-point template with a similarity transform (rotation, uniform scale,
//! translation) fitted to the detector's landmarks by least squares (Umeyama's method; in
//! 2-D its closed form is the complex-number solution below). This is how InsightFace feeds
//! its recognition models, and what the models were trained on.

use std::sync::Mutex;

use camino::Utf8Path;
use image::RgbImage;

use crate::detect::Detection;
use crate::domain::{AlignSpec, DetectorSpec, Layout, Preprocessing};
use crate::error::Result;
use crate::runtime::{LoadedModel, Runtime, onnxruntime::OnnxRuntime};
use crate::toolchain::Toolchain;

/// InsightFace's ArcFace template for 112x112 crops: eyes, nose tip, mouth corners.
pub(crate) const ARCFACE_112: [[f32; 2]; 5] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// The 2x3 similarity transform mapping `src` points onto `dst` with least squared error.
pub(crate) fn similarity(src: &[[f32; 2]; 5], dst: &[[f32; 2]; 5]) -> [[f64; 3]; 2] {
    let n = src.len() as f64;
    let mean = |p: &[[f32; 2]; 5]| {
        (
            p.iter().map(|q| q[0] as f64).sum::<f64>() / n,
            p.iter().map(|q| q[1] as f64).sum::<f64>() / n,
        )
    };
    let (sx, sy) = mean(src);
    let (dx, dy) = mean(dst);
    // With centred points as complex numbers s_i, d_i, the optimal z = a + ib in d = z s
    // is sum(conj(s_i) d_i) / sum(|s_i|^2): a = scale cos(theta), b = scale sin(theta).
    let (mut re, mut im, mut norm) = (0.0, 0.0, 0.0);
    for (s, d) in src.iter().zip(dst) {
        let (ax, ay) = (s[0] as f64 - sx, s[1] as f64 - sy);
        let (bx, by) = (d[0] as f64 - dx, d[1] as f64 - dy);
        re += ax * bx + ay * by;
        im += ax * by - ay * bx;
        norm += ax * ax + ay * ay;
    }
    let (a, b) = if norm > 0.0 {
        (re / norm, im / norm)
    } else {
        (1.0, 0.0)
    };
    [
        [a, -b, dx - (a * sx - b * sy)],
        [b, a, dy - (b * sx + a * sy)],
    ]
}

/// Warp `img` with `m` (source -> output coordinates) into a `w` x `h` image, sampling
/// bilinearly; pixels that map outside the photo are black, as with cv2.warpAffine.
pub(crate) fn warp(img: &RgbImage, m: &[[f64; 3]; 2], w: u32, h: u32) -> RgbImage {
    let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    // Inverse of the linear part, applied to (x - tx, y - ty).
    let inv = [
        [m[1][1] / det, -m[0][1] / det],
        [-m[1][0] / det, m[0][0] / det],
    ];
    let (iw, ih) = img.dimensions();
    let px = |x: i64, y: i64, c: usize| -> f64 {
        if x < 0 || y < 0 || x >= iw as i64 || y >= ih as i64 {
            0.0
        } else {
            img.get_pixel(x as u32, y as u32)[c] as f64
        }
    };
    RgbImage::from_fn(w, h, |x, y| {
        let (ox, oy) = (x as f64 - m[0][2], y as f64 - m[1][2]);
        let (sx, sy) = (
            inv[0][0] * ox + inv[0][1] * oy,
            inv[1][0] * ox + inv[1][1] * oy,
        );
        let (x0, y0) = (sx.floor() as i64, sy.floor() as i64);
        let (fx, fy) = (sx - x0 as f64, sy - y0 as f64);
        image::Rgb(std::array::from_fn(|c| {
            let v = px(x0, y0, c) * (1.0 - fx) * (1.0 - fy)
                + px(x0 + 1, y0, c) * fx * (1.0 - fy)
                + px(x0, y0 + 1, c) * (1.0 - fx) * fy
                + px(x0 + 1, y0 + 1, c) * fx * fy;
            v.round().clamp(0.0, 255.0) as u8
        }))
    })
}

/// A detector ready to align photos: the model in ONNX Runtime (one image at a time), its
/// decoder settings and how it is fed.
pub(crate) struct Aligner {
    model: Mutex<Box<dyn LoadedModel>>,
    input: String,
    detector: DetectorSpec,
    feed: Preprocessing,
    /// What identifies this aligner in cache keys: the detector's digest and settings.
    pub identity: String,
}

impl Aligner {
    pub(crate) fn new(
        toolchain: &Toolchain,
        model_path: &Utf8Path,
        model_digest: &str,
        spec: &AlignSpec,
    ) -> Result<Aligner> {
        let model = OnnxRuntime::new(toolchain, None)?.load(model_path)?;
        let input = model
            .inputs()
            .first()
            .map(|(n, _)| n.clone())
            .unwrap_or_default();
        let feed = spec
            .preprocessing
            .clone()
            .unwrap_or_else(|| Preprocessing::scrfd([640, 640]));
        let identity = crate::cache::cache_key(
            &serde_json::json!({"detector": model_digest, "spec": spec.detector, "feed": feed}),
        );
        Ok(Aligner {
            model: Mutex::new(model),
            input,
            detector: spec.detector.clone(),
            feed,
            identity,
        })
    }

    /// The most prominent face (largest box) in `img`, in the photo's pixel coordinates.
    pub(crate) fn detect(&self, img: &RgbImage) -> Result<Option<Detection>> {
        let (fitted, scale) = super::letterbox(img, self.feed.size);
        let t = super::to_tensor(&fitted, &self.feed, Layout::NCHW);
        let [h, w] = self.feed.size;
        let out = self
            .model
            .lock()
            .map_err(|_| anyhow::anyhow!("alignment detector poisoned by an earlier panic"))?
            .run(&[(self.input.clone(), t.into_dyn())])?;
        let dets = crate::detect::decode(&self.detector, &out, (h as usize, w as usize))?;
        Ok(dets
            .into_iter()
            .filter(|d| d.kps.is_some())
            .max_by(|a, b| a.area().total_cmp(&b.area()))
            .map(|d| d.scaled(scale)))
    }

    /// The aligned crop at `size` ([h, w]; the template scales with the width), or None when
    /// no face with landmarks is found.
    pub(crate) fn align(&self, img: &RgbImage, size: [u32; 2]) -> Result<Option<RgbImage>> {
        let Some(d) = self.detect(img)? else {
            return Ok(None);
        };
        let r = size[1] as f32 / 112.0;
        let dst = ARCFACE_112.map(|p| [p[0] * r, p[1] * r]);
        let m = similarity(&d.kps.expect("filtered on kps"), &dst);
        Ok(Some(warp(img, &m, size[1], size[0])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_recovers_a_known_transform() {
        // Rotate 30 degrees, scale 2, translate (5, -3).
        let (c, s) = (
            2.0 * 30f32.to_radians().cos(),
            2.0 * 30f32.to_radians().sin(),
        );
        let src = ARCFACE_112;
        let dst = src.map(|p| [c * p[0] - s * p[1] + 5.0, s * p[0] + c * p[1] - 3.0]);
        let m = similarity(&src, &dst);
        assert!(
            (m[0][0] - c as f64).abs() < 1e-4 && (m[1][0] - s as f64).abs() < 1e-4,
            "{m:?}"
        );
        assert!(
            (m[0][2] - 5.0).abs() < 1e-3 && (m[1][2] + 3.0).abs() < 1e-3,
            "{m:?}"
        );
    }

    #[test]
    fn warp_with_identity_copies_the_image() {
        let img = RgbImage::from_fn(20, 10, |x, y| image::Rgb([x as u8 * 10, y as u8 * 20, 7]));
        let out = warp(&img, &[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], 20, 10);
        assert_eq!(img, out);
        // Shifted by 5 to the right: the first five columns come from outside, black.
        let shifted = warp(&img, &[[1.0, 0.0, 5.0], [0.0, 1.0, 0.0]], 20, 10);
        assert_eq!(shifted.get_pixel(2, 3)[0], 0);
        assert_eq!(shifted.get_pixel(7, 3), img.get_pixel(2, 3));
    }
}
