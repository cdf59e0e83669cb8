//! Face crops as InsightFace makes them (`utils/face_align.py`): detect the face in a whole
//! photo, then either warp it onto the ArcFace 112x112 five-point template with a similarity
//! transform (rotation, uniform scale, translation) fitted to the detector's landmarks by
//! least squares (Umeyama's method; in 2-D its closed form is the complex-number solution
//! below), as recognizers are fed (`norm_crop`), or crop a square around the detected box
//! (`transform`), as landmark and attribute models are fed. The transform is kept, so a
//! model's points map back to the photo.

use std::sync::Mutex;

use camino::Utf8Path;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::detect::Detection;
use crate::domain::{AlignSpec, Crop, DetectorSpec, FaceChoice, Layout, Preprocessing};
use crate::error::Result;
use crate::runtime::{LoadedModel, Runtime, onnxruntime::OnnxRuntime};
use crate::toolchain::Toolchain;

/// InsightFace's ArcFace template for 112x112 crops: eyes, nose tip, mouth corners.
pub const ARCFACE_112: [[f32; 2]; 5] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// The 2x3 similarity transform mapping `src` points onto `dst` with least squared error.
pub fn similarity(src: &[[f32; 2]; 5], dst: &[[f32; 2]; 5]) -> [[f64; 3]; 2] {
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

/// A 2x3 affine transform from photo pixels to crop pixels.
pub type Affine = [[f64; 3]; 2];

/// A face as it was cropped: the transform from photo to crop pixels and the detected box.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FaceCrop {
    pub m: Affine,
    /// x1, y1, x2, y2 in photo pixels.
    pub bbox: [f32; 4],
    /// The detector's five keypoints in photo pixels, when it gives them.
    #[serde(default)]
    pub kps: Option<[[f32; 2]; 5]>,
}

impl FaceCrop {
    /// A point of the crop in photo pixels (the inverse transform).
    pub fn in_photo(&self, [x, y]: [f64; 2]) -> [f64; 2] {
        let m = &self.m;
        let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
        let (ox, oy) = (x - m[0][2], y - m[1][2]);
        [
            (m[1][1] * ox - m[0][1] * oy) / det,
            (-m[1][0] * ox + m[0][0] * oy) / det,
        ]
    }
}

/// InsightFace's `face_align.transform` with no rotation, as `landmark.py` and
/// `attribute.py` call it: centre the box, scale by `width / (scale * max(w, h))`, put the
/// centre at the crop's centre.
pub fn box_transform(bbox: [f32; 4], [h, w]: [u32; 2], scale: f32) -> Affine {
    let (bw, bh) = ((bbox[2] - bbox[0]) as f64, (bbox[3] - bbox[1]) as f64);
    let (cx, cy) = (
        (bbox[2] + bbox[0]) as f64 / 2.0,
        (bbox[3] + bbox[1]) as f64 / 2.0,
    );
    let s = w as f64 / (scale as f64 * bw.max(bh).max(1e-6));
    [
        [s, 0.0, w as f64 / 2.0 - cx * s],
        [0.0, s, h as f64 / 2.0 - cy * s],
    ]
}

/// InsightFace's `estimate_norm`, as `norm_crop` uses it: the keypoints onto the ArcFace
/// template, scaled by width / 112; for a width that is a multiple of 128 and not of 112 (the
/// swapper's 128 crop), scaled by width / 128 and moved right by 8 of those pixels.
pub fn arcface_transform(kps: &[[f32; 2]; 5], size: [u32; 2]) -> Affine {
    let (ratio, shift) = arcface_frame(size[1], false);
    let dst = ARCFACE_112.map(|p| [p[0] * ratio + shift, p[1] * ratio]);
    similarity(kps, &dst)
}

/// [`arcface_transform`] on the 128 branch whatever the width (`crop: {mode: arcface128}`).
pub fn arcface128_transform(kps: &[[f32; 2]; 5], size: [u32; 2]) -> Affine {
    let (ratio, shift) = arcface_frame(size[1], true);
    let dst = ARCFACE_112.map(|p| [p[0] * ratio + shift, p[1] * ratio]);
    similarity(kps, &dst)
}

/// How an ArcFace crop of width `w` places the 112 template: (scale, x shift). The 128
/// branch when forced, or for a width that is a multiple of 128 and not of 112.
pub fn arcface_frame(w: u32, force128: bool) -> (f32, f32) {
    if force128 || (!w.is_multiple_of(112) && w.is_multiple_of(128)) {
        let r = w as f32 / 128.0;
        (r, 8.0 * r)
    } else {
        (w as f32 / 112.0, 0.0)
    }
}

/// Warp `img` with `m` (source -> output coordinates) into a `w` x `h` image, sampling
/// bilinearly; pixels that map outside the photo are black, as with cv2.warpAffine.
pub fn warp(img: &RgbImage, m: &[[f64; 3]; 2], w: u32, h: u32) -> RgbImage {
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
pub struct Aligner {
    model: Mutex<Box<dyn LoadedModel>>,
    input: String,
    detector: DetectorSpec,
    feed: Preprocessing,
    /// What identifies this aligner in cache keys: the detector's digest and settings.
    pub identity: String,
    /// Each photo's faces, largest first, by path and whether keypoints were required: a
    /// dataset cropped two ways (a swapper's target and its recognizer's crop) is detected
    /// once.
    seen: Mutex<std::collections::HashMap<(camino::Utf8PathBuf, bool), Vec<Detection>>>,
}

impl Aligner {
    pub fn new(
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
            seen: Mutex::default(),
        })
    }

    /// Every face in `img`, largest box first, in the photo's pixel coordinates; only faces
    /// with keypoints when `with_kps` (an ArcFace crop needs them, a box crop does not).
    fn detect(&self, img: &RgbImage, with_kps: bool) -> Result<Vec<Detection>> {
        let mut model = self
            .model
            .lock()
            .map_err(|_| anyhow::anyhow!("alignment detector poisoned by an earlier panic"))?;
        detect_faces(
            model.as_mut(),
            (&self.input, &self.detector, &self.feed, Layout::NCHW),
            img,
            with_kps,
        )
    }

    /// Every face in `img`, with or without keypoints, largest first.
    pub fn faces(&self, img: &RgbImage) -> Result<Vec<Detection>> {
        self.detect(img, false)
    }

    /// The faces `faces` chooses, each cropped at `size` ([h, w]) as `crop` says, with its
    /// transform; largest first, none when no face is found (with keypoints, for `arcface`)
    /// or none is large enough.
    pub fn crops(
        &self,
        (path, img): (&Utf8Path, &RgbImage),
        size: [u32; 2],
        (crop, faces): (Crop, FaceChoice),
    ) -> Result<Vec<(RgbImage, FaceCrop)>> {
        let arcface = matches!(crop, Crop::Arcface | Crop::Arcface128);
        let key = (path.to_owned(), arcface);
        let known = self.seen.lock().ok().and_then(|s| s.get(&key).cloned());
        let found = match known {
            Some(d) => d,
            None => {
                let d = self.detect(img, arcface)?;
                if let Ok(mut s) = self.seen.lock() {
                    s.insert(key, d.clone());
                }
                d
            }
        };
        let longer = |d: &Detection| (d.bbox[2] - d.bbox[0]).max(d.bbox[3] - d.bbox[1]);
        let take = if faces.all { usize::MAX } else { 1 };
        // The largest face decides for `largest`: a photo whose largest face is too small
        // has none, rather than a smaller face standing in for it.
        let chosen = found
            .iter()
            .take(take)
            .filter(|d| longer(d) >= faces.min_face);
        Ok(chosen
            .filter_map(|d| {
                let m = face_transform(crop, d, size)?;
                Some((
                    warp(img, &m, size[1], size[0]),
                    FaceCrop {
                        m,
                        bbox: d.bbox,
                        kps: d.kps,
                    },
                ))
            })
            .collect())
    }
}

/// Every face a detector finds in `img`: letterboxed to its input size as InsightFace feeds
/// SCRFD, decoded, in the photo's pixel coordinates, largest box first; only faces with
/// keypoints when `with_kps` (an ArcFace crop needs them, a box crop does not).
pub fn detect_faces(
    model: &mut dyn LoadedModel,
    (input, detector, feed, layout): (&str, &DetectorSpec, &Preprocessing, Layout),
    img: &RgbImage,
    with_kps: bool,
) -> Result<Vec<Detection>> {
    let (fitted, scale) = super::letterbox(img, feed.size);
    let t = super::to_tensor(&fitted, feed, layout);
    let [h, w] = feed.size;
    let out = model.run(&[(input.to_string(), t.into_dyn())])?;
    let dets = crate::detect::decode(detector, &out, (h as usize, w as usize))?;
    let mut faces: Vec<Detection> = dets
        .into_iter()
        .filter(|d| !with_kps || d.kps.is_some())
        .map(|d| d.scaled(scale))
        .collect();
    faces.sort_by(|a, b| b.area().total_cmp(&a.area()));
    Ok(faces)
}

/// The transform (photo -> crop pixels) of a detected face's crop at `size` ([h, w]) as
/// `crop` says; None for an ArcFace crop of a face without keypoints.
pub fn face_transform(crop: Crop, d: &Detection, size: [u32; 2]) -> Option<Affine> {
    Some(match (crop, &d.kps) {
        (Crop::Arcface, Some(kps)) => arcface_transform(kps, size),
        (Crop::Arcface128, Some(kps)) => arcface128_transform(kps, size),
        (Crop::Arcface | Crop::Arcface128, None) => return None,
        (Crop::Box { scale }, _) => box_transform(d.bbox, size, scale),
    })
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

    /// `arcface` follows `estimate_norm` (the 128 branch only for widths that are multiples
    /// of 128 and not of 112); `arcface128` takes the 128 branch at any width.
    #[test]
    fn arcface128_forces_estimate_norms_128_branch() {
        assert_eq!(arcface_frame(112, false), (1.0, 0.0));
        assert_eq!(arcface_frame(128, false), (1.0, 8.0));
        assert_eq!(arcface_frame(128, true), (1.0, 8.0));
        assert_eq!(arcface_frame(224, false), (2.0, 0.0));
        assert_eq!(arcface_frame(224, true), (1.75, 14.0));
        // The template itself, placed on the 128 branch at 256: scale 2, 16 px right.
        let m = arcface128_transform(&ARCFACE_112, [256, 256]);
        assert!(
            (m[0][0] - 2.0).abs() < 1e-4 && (m[0][2] - 16.0).abs() < 1e-3,
            "{m:?}"
        );
        assert_eq!(
            arcface_transform(&ARCFACE_112, [128, 128]),
            arcface128_transform(&ARCFACE_112, [128, 128])
        );
    }

    #[test]
    fn box_crop_centres_the_box_and_maps_back() {
        // A 40x20 box centred at (100, 50), cropped at 1.5 into 120x120: side 60 -> 120 px.
        let m = box_transform([80.0, 40.0, 120.0, 60.0], [120, 120], 1.5);
        assert_eq!(m, [[2.0, 0.0, -140.0], [0.0, 2.0, -40.0]]);
        let c = FaceCrop {
            m,
            bbox: [80.0, 40.0, 120.0, 60.0],
            kps: None,
        };
        assert_eq!(c.in_photo([60.0, 60.0]), [100.0, 50.0]);
        let back = c.in_photo([0.0, 0.0]);
        assert!((back[0] - 70.0).abs() < 1e-9 && (back[1] - 20.0).abs() < 1e-9);
        // And the inverse of a rotation too.
        let r = FaceCrop {
            m: similarity(
                &ARCFACE_112,
                &ARCFACE_112.map(|p| [-p[1] + 3.0, p[0] - 1.0]),
            ),
            bbox: [0.0; 4],
            kps: None,
        };
        let p = r.in_photo([-51.6963 + 3.0, 38.2946 - 1.0]);
        assert!(
            (p[0] - 38.2946).abs() < 1e-3 && (p[1] - 51.6963).abs() < 1e-3,
            "{p:?}"
        );
    }

    /// ../shared/README.md's PFLD-68 feeding: a square of side max(w, h) x 1.1 centred on
    /// the box, resized to 112; a point (x, y) in [0, 1] of the crop is at
    /// (x side + left, y side + top) in the photo.
    #[test]
    fn box_crop_at_1_1_is_pflds_square_crop() {
        let bbox = [30.0f32, 50.0, 130.0, 170.0];
        let side = 120.0 * 1.1;
        let (left, top) = (80.0 - side / 2.0, 110.0 - side / 2.0);
        let c = FaceCrop {
            m: box_transform(bbox, [112, 112], 1.1),
            bbox,
            kps: None,
        };
        for (x, y) in [(0.0, 0.0), (0.25, 0.75), (1.0, 1.0)] {
            let p = c.in_photo([x * 112.0, y * 112.0]);
            assert!(
                (p[0] - (x * side + left)).abs() < 1e-4 && (p[1] - (y * side + top)).abs() < 1e-4,
                "{p:?}"
            );
        }
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
