//! Image -> tensor, per the manifest's `model.preprocessing`. One module, shared by every step
//! that feeds images (simplify's equivalence check, calibrate, compare, later benchmark), so
//! a model is never compared on differently prepared pixels.
//!
//! Aligned crops already at the model's size are used as they are; other images (whole
//! photos) are centre-cropped to the model's aspect ratio and resized — until landmark
//! alignment arrives with the detection pipeline. Which was used is recorded per image.
//!
//! Decoding multi-megapixel photos costs far more than running a face model on the crop, so
//! prepared tensors are memoized in the cache, keyed by the images' digests and the
//! preprocessing: a dataset is decoded once, not once per step or per run.

use facebuild_base::{domain, error, util};
use facebuild_cache as cache;
use facebuild_detect as detect;
use facebuild_runtime as runtime;
use facebuild_toolchain as toolchain;

pub mod align;
pub mod derive;
pub mod synthetic;
pub mod verification_sets;

use camino::{Utf8Path, Utf8PathBuf};
use ndarray::Array4;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cache::{CacheKey, CacheKeyHasher, Store};
use crate::domain::{ColorOrder, Crop, Layout, Preprocessing, Resize, luma};
use crate::error::{Error, Result};
use image::RgbImage;

const EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp"];
/// Bumped when the pixels this module produces change (4: large JPEGs are decoded
/// DCT-scaled before the resize; 5: down to the fitted size, not twice it; 6: each face's
/// crop, box and keypoints are kept beside the tensor; 7: box crops take the largest face
/// with or without keypoints; 8: a photo may give several rows, each row's photo is kept;
/// 9: JPEGs decode as libjpeg decodes them and letterboxing resizes as OpenCV does, so
/// detectors see what InsightFace feeds them). Steps that read images key on it too.
pub const PREPARE_VERSION: u64 = 9;

/// How an image was brought to the model's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fit {
    /// Already the model's size (an aligned crop): used as it is.
    AsIs,
    /// Centre-cropped to the model's aspect ratio, then resized (bilinear).
    CenterCropResize,
    /// Resized keeping the aspect ratio, padded bottom/right with black (detectors).
    Letterbox,
    /// A detected face warped onto the ArcFace template (`align:` datasets).
    Aligned,
    /// A square around a detected face's box (`align:` datasets, `crop: box`).
    BoxCrop,
    /// `align:` found no face: centre-cropped instead (reported, so it is never silent).
    NoFaceCenterCrop,
}

/// How images are fed: the model's preprocessing, layout, resize mode and, for datasets of
/// whole photos with `align:`, the detector that aligns them.
#[derive(Clone, Copy)]
pub struct Feed<'a> {
    pub pre: &'a Preprocessing,
    pub layout: Layout,
    pub resize: Resize,
    pub align: Option<&'a align::Aligner>,
    /// How `align` crops a detected face.
    pub crop: Crop,
    /// Which of a photo's faces `align` crops.
    pub faces: domain::FaceChoice,
}

/// Images in `dir` (recursively), sorted by path, then a seeded shuffle and the first `count`.
pub fn list_images(dir: &Utf8Path, count: Option<usize>, seed: u64) -> Result<Vec<Utf8PathBuf>> {
    let mut files: Vec<Utf8PathBuf> = util::files_under(dir)?
        .into_iter()
        .filter(|p| {
            p.extension()
                .is_some_and(|x| EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()))
        })
        .collect();
    if files.is_empty() {
        return Err(Error::usage(format!(
            "dataset folder {dir} has no images ({})",
            EXTENSIONS.join(", ")
        )));
    }
    if let Some(n) = count {
        // Fisher-Yates with a fixed generator: the same subset on every machine.
        let mut rng = util::SplitMix64::new(seed);
        for i in (1..files.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            files.swap(i, j);
        }
        files.truncate(n);
        files.sort();
    }
    Ok(files)
}

/// Decode and prepare one image; a batch of one in the model's layout (its first face's
/// crop when it is cropped).
pub fn load_tensor(path: &Utf8Path, feed: &Feed) -> Result<Array4<f32>> {
    load_with_fit(path, feed)?
        .into_iter()
        .next()
        .map(|r| r.0)
        .ok_or_else(|| Error::usage(format!("image {path} gave no row")))
}

/// Decode an image file (JPEG, PNG, WebP, by content) to RGB.
pub fn decode_image(path: &Utf8Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_bytes(path, &bytes)
}

fn decode_bytes(path: &Utf8Path, bytes: &[u8]) -> Result<RgbImage> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF])
        && let Some((img, _)) = decode_jpeg(bytes, |_| Some(8))
    {
        return Ok(img);
    }
    // By content, not extension: real datasets hold WebP files named .jpg.
    let decode = || -> std::result::Result<image::DynamicImage, String> {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| e.to_string())?
            .decode()
            .map_err(|e| e.to_string())
    };
    Ok(decode()
        .map_err(|e| {
            Error::usage(format!("cannot decode image {path}: {e}"))
                .with_hint("facebuild reads JPEG, PNG and WebP; remove or convert this file")
        })?
        .to_rgb8())
}

/// How many original pixels one input pixel covers when `(iw, ih)` is fitted to `[h, w]`.
fn shrink_ratio((iw, ih): (u32, u32), [h, w]: [u32; 2], resize: Resize) -> f64 {
    let (rx, ry) = (iw as f64 / w.max(1) as f64, ih as f64 / h.max(1) as f64);
    match resize {
        // The whole image fits inside: the larger ratio.
        Resize::Letterbox => rx.max(ry),
        // The centred window fills the input: the smaller ratio.
        Resize::CenterCrop => rx.min(ry),
    }
}

/// Decode for a fit to `size`, with the image's full size. A JPEG at least 2x larger than
/// needed is decoded at 1/2, 1/4 or 1/8 scale by the IDCT, never below the fitted size (as
/// PIL's `Image.draft` does); the final resize is a filtered (triangle) resample, so it
/// averages whatever it still shrinks. Decoding a 1.5 MP photo at full scale for a 112x112
/// input spends most of its time on pixels the resize then throws away.
fn decode_for_fit(
    path: &Utf8Path,
    size: [u32; 2],
    resize: Resize,
) -> Result<(RgbImage, (u32, u32))> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF])
        && let Some(scaled) = decode_jpeg_scaled(&bytes, size, resize)
    {
        return Ok(scaled);
    }
    // Anything the scaled path does not take (other formats, CMYK, a decode error, whose
    // message the image crate's decoder gives) goes the ordinary way.
    let img = decode_bytes(path, &bytes)?;
    let dims = img.dimensions();
    Ok((img, dims))
}

fn decode_jpeg_scaled(
    bytes: &[u8],
    size: [u32; 2],
    resize: Resize,
) -> Option<(RgbImage, (u32, u32))> {
    decode_jpeg(bytes, |dims| {
        let k = shrink_ratio(dims, size, resize);
        // The smallest scale (in eighths) that keeps one decoded pixel per input pixel.
        [1u8, 2, 4].into_iter().find(|&e| e as f64 * k >= 8.0)
    })
}

/// A JPEG decoded by libjpeg (mozjpeg's, libjpeg-turbo's decoder) at the scale `eighths`
/// picks from its size (None: not taken here), with its full size. At full scale this is
/// bit-identical to OpenCV's `cv2.imread`, which InsightFace reads photos with; the image
/// crate's decoder differs in a tenth of values by up to 4 levels, enough to move a small
/// detector's keypoints.
fn decode_jpeg(
    bytes: &[u8],
    eighths: impl FnOnce((u32, u32)) -> Option<u8> + std::panic::UnwindSafe,
) -> Option<(RgbImage, (u32, u32))> {
    // libjpeg reports errors by unwinding (resume_unwind, so no panic message is printed);
    // catch_unwind turns any of them into "not taken here", and the caller's ordinary decode
    // then gives the error its message.
    std::panic::catch_unwind(|| -> std::io::Result<Option<(RgbImage, (u32, u32))>> {
        let mut d = mozjpeg::Decompress::new_mem(bytes)?;
        let (iw, ih) = (d.width() as u32, d.height() as u32);
        let Some(eighths) = eighths((iw, ih)) else {
            return Ok(None);
        };
        if eighths < 8 {
            d.scale(eighths);
        }
        let mut started = d.rgb()?;
        let (w, h) = (started.width() as u32, started.height() as u32);
        let px: Vec<u8> = started.read_scanlines()?;
        started.finish()?;
        Ok(RgbImage::from_raw(w, h, px).map(|img| (img, (iw, ih))))
    })
    .ok()?
    .ok()?
}

/// OpenCV's `cv2.resize(img, (w, h))` (INTER_LINEAR on 8-bit pixels), which InsightFace's
/// detectors use: half-pixel centres, two taps per axis without antialiasing, weights in
/// 11-bit fixed point (on a 1000x1500 portrait to 426x640, 0.01% of values differ from
/// opencv-python 5.1's, by one level). Matching it keeps facebuild's
/// detector input, and so its boxes and keypoints, the ones FaceAnalysis sees; an
/// antialiasing filter moves keypoints on downscaled photos enough to change embeddings.
pub fn resize_linear(img: &RgbImage, nw: u32, nh: u32) -> RgbImage {
    const ONE: i64 = 1 << 11;
    let (iw, ih) = img.dimensions();
    if iw == 0 || ih == 0 || nw == 0 || nh == 0 {
        return RgbImage::new(nw, nh);
    }
    // Per output coordinate: the first source index and its two fixed-point weights.
    let taps = |dst: u32, src: u32| -> Vec<(usize, i64, i64)> {
        let scale = src as f64 / dst as f64;
        (0..dst)
            .map(|d| {
                let s = (d as f64 + 0.5) * scale - 0.5;
                let (mut i, mut f) = (s.floor() as i64, s - s.floor());
                if i < 0 {
                    (i, f) = (0, 0.0);
                }
                if i >= src as i64 - 1 {
                    (i, f) = (src as i64 - 1, 0.0);
                }
                let c0 = ((1.0 - f) * ONE as f64).round() as i64;
                (i as usize, c0, ONE - c0)
            })
            .collect()
    };
    let (xs, ys) = (taps(nw, iw), taps(nh, ih));
    let (iw, ih) = (iw as usize, ih as usize);
    let raw = img.as_raw();
    let row = |y: usize| -> Vec<i64> {
        let line = &raw[y * iw * 3..(y + 1) * iw * 3];
        let mut out = Vec::with_capacity(xs.len() * 3);
        for &(x0, c0, c1) in &xs {
            let x1 = (x0 + 1).min(iw - 1);
            for c in 0..3 {
                out.push(line[x0 * 3 + c] as i64 * c0 + line[x1 * 3 + c] as i64 * c1);
            }
        }
        out
    };
    let mut rows: std::collections::HashMap<usize, Vec<i64>> = Default::default();
    let mut px = Vec::with_capacity(nw as usize * nh as usize * 3);
    for &(y0, b0, b1) in &ys {
        let y1 = (y0 + 1).min(ih - 1);
        for y in [y0, y1] {
            rows.entry(y).or_insert_with(|| row(y));
        }
        // Rows above y0 are done with: the source rows only move down.
        rows.retain(|&y, _| y >= y0);
        let (r0, r1) = (&rows[&y0], &rows[&y1]);
        px.extend(
            r0.iter()
                .zip(r1)
                // OpenCV's vectorised vertical pass, which x86 and ARM builds run: each row
                // to 16 bits, a multiply-high by the weight, then a rounded shift by two.
                .map(|(a, b)| ((((a >> 4) * b0) >> 16) + (((b >> 4) * b1) >> 16) + 2) >> 2)
                .map(|v| v.clamp(0, 255) as u8),
        );
    }
    RgbImage::from_raw(nw, nh, px).unwrap_or_else(|| RgbImage::new(nw, nh))
}

/// Keep the aspect ratio, fit inside `size` ([h, w]), pad bottom/right with black, as
/// InsightFace's SCRFD does (its resize included: [`resize_linear`]). Returns the image and the scale (input px per original px).
pub fn letterbox(img: &RgbImage, [h, w]: [u32; 2]) -> (RgbImage, f32) {
    let (iw, ih) = img.dimensions();
    let (nw, nh) = if ih as u64 * w as u64 > h as u64 * iw as u64 {
        (((h as u64 * iw as u64) / ih as u64).max(1) as u32, h)
    } else {
        (w, ((w as u64 * ih as u64) / iw as u64).max(1) as u32)
    };
    let scale = nh as f32 / ih as f32;
    let resized = if (nw, nh) == (iw, ih) {
        img.clone()
    } else {
        resize_linear(img, nw, nh)
    };
    let mut out = RgbImage::new(w, h);
    image::imageops::replace(&mut out, &resized, 0, 0);
    (out, scale)
}

fn center_crop_resize(img: &RgbImage, [h, w]: [u32; 2]) -> RgbImage {
    let (iw, ih) = img.dimensions();
    // Largest centred window with the target's aspect ratio.
    let (cw, ch) = if iw as u64 * h as u64 > ih as u64 * w as u64 {
        ((ih as u64 * w as u64 / h as u64) as u32, ih)
    } else {
        (iw, (iw as u64 * h as u64 / w as u64) as u32)
    };
    let crop = image::imageops::crop_imm(img, (iw - cw) / 2, (ih - ch) / 2, cw, ch).to_image();
    image::imageops::resize(&crop, w, h, image::imageops::FilterType::Triangle)
}

/// Pixels -> normalised tensor (colour order, mean, std, layout): a batch of one.
pub fn to_tensor(img: &RgbImage, pre: &Preprocessing, layout: Layout) -> Array4<f32> {
    let (w, h) = img.dimensions();
    let (h, w) = (h as usize, w as usize);
    let n = pre.color.channels();
    let mut t = match layout {
        Layout::NCHW => Array4::<f32>::zeros((1, n, h, w)),
        Layout::NHWC => Array4::<f32>::zeros((1, h, w, n)),
    };
    let mut put = |c: usize, x: u32, y: u32, raw: u8| {
        let v = (raw as f32 - pre.mean[c]) / pre.std[c];
        match layout {
            Layout::NCHW => t[[0, c, y as usize, x as usize]] = v,
            Layout::NHWC => t[[0, y as usize, x as usize, c]] = v,
        }
    };
    for (x, y, px) in img.enumerate_pixels() {
        match pre.color {
            ColorOrder::RGB => (0..3).for_each(|c| put(c, x, y, px[c])),
            ColorOrder::BGR => (0..3).for_each(|c| put(c, x, y, px[2 - c])),
            ColorOrder::GRAY => put(0, x, y, luma(px[0], px[1], px[2])),
        }
    }
    t
}

/// One image as fitted: its tensor, how it was fitted, the scale from original to input
/// pixels, and for a detected face its crop.
type Fitted = (Array4<f32>, Fit, f32, Option<align::FaceCrop>);

/// One image as rows: one, or with `faces: all` one per face chosen (at least one: a photo
/// without a face is centre-cropped, and reported so).
fn load_with_fit(path: &Utf8Path, feed: &Feed) -> Result<Vec<Fitted>> {
    let size = feed.pre.size;
    // Alignment warps from the full image (a face may be small in it); a plain fit can
    // decode DCT-scaled.
    let (img, (iw, ih)) = match feed.align {
        Some(_) => {
            let img = decode_image(path)?;
            let dims = img.dimensions();
            (img, dims)
        }
        None => decode_for_fit(path, size, feed.resize)?,
    };
    let rows: Vec<(RgbImage, Fit, f32, Option<align::FaceCrop>)> = if (iw, ih) == (size[1], size[0])
    {
        vec![(img, Fit::AsIs, 1.0, None)]
    } else if let Some(a) = feed.align {
        let crops = a
            .crops((path, &img), size, (feed.crop, feed.faces))
            .map_err(|e| anyhow::anyhow!("aligning {path}: {e}"))?;
        let fit = match feed.crop {
            Crop::Arcface | Crop::Arcface128 => Fit::Aligned,
            Crop::Box { .. } => Fit::BoxCrop,
        };
        if crops.is_empty() {
            vec![(
                center_crop_resize(&img, size),
                Fit::NoFaceCenterCrop,
                1.0,
                None,
            )]
        } else {
            crops
                .into_iter()
                .map(|(crop, f)| (crop, fit, 1.0, Some(f)))
                .collect()
        }
    } else {
        vec![match feed.resize {
            Resize::Letterbox => {
                let (out, s) = letterbox(&img, size);
                // Input pixels per original pixel, whatever scale the JPEG was decoded at.
                (
                    out,
                    Fit::Letterbox,
                    s * img.height() as f32 / ih as f32,
                    None,
                )
            }
            Resize::CenterCrop => (
                center_crop_resize(&img, size),
                Fit::CenterCropResize,
                1.0,
                None,
            ),
        }]
    };
    Ok(rows
        .into_iter()
        .map(|(img, fit, scale, face)| (to_tensor(&img, feed.pre, feed.layout), fit, scale, face))
        .collect())
}

/// A prepared image set: one tensor of all images, in `files` order; with `faces: all`, one
/// row per face, and `files` names each row's photo (a photo with three faces, three times).
pub struct Prepared {
    /// Shared with the thread that writes it to the cache while the caller runs models.
    pub tensor: std::sync::Arc<Array4<f32>>,
    pub files: Vec<Utf8PathBuf>,
    pub fits: Vec<Fit>,
    /// Per image: input pixels per original pixel (letterbox), 1 otherwise.
    pub scales: Vec<f32>,
    /// Per image: the detected face's crop (`align:` datasets), when one was found.
    pub faces: Vec<Option<align::FaceCrop>>,
    /// True when it came from the cache (no image was decoded).
    pub cached: bool,
    pub prepare_ms: u64,
    /// Writing the freshly prepared tensor to the cache, joined on drop.
    writer: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Drop for Prepared {
    /// The cache entry is complete (or its failure reported) before the step ends; a failed
    /// write only costs a re-decode next time, so it is a warning.
    fn drop(&mut self) {
        if let Some(w) = self.writer.take() {
            match w.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("prepared tensors not cached: {e}"),
                Err(_) => tracing::warn!("prepared tensors not cached: the writer panicked"),
            }
        }
    }
}

impl Prepared {
    pub fn fit_counts(&self) -> std::collections::BTreeMap<String, u64> {
        let mut m: std::collections::BTreeMap<String, u64> = Default::default();
        for f in &self.fits {
            *m.entry(
                serde_json::to_value(f)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
            )
            .or_default() += 1;
        }
        m
    }
}

struct PrepKey<'a> {
    digests: &'a [String],
    feed: &'a Feed<'a>,
}

impl CacheKey for PrepKey<'_> {
    fn cache_key(&self, s: &mut CacheKeyHasher) {
        PREPARE_VERSION.cache_key(s);
        self.digests.cache_key(s);
        serde_json::to_value(self.feed.pre)
            .unwrap_or_default()
            .cache_key(s);
        serde_json::to_value(self.feed.layout)
            .unwrap_or_default()
            .cache_key(s);
        serde_json::to_value(self.feed.resize)
            .unwrap_or_default()
            .cache_key(s);
        self.feed.align.map(|a| a.identity.as_str()).cache_key(s);
        // Only when it is not the ArcFace crop, so earlier prepared sets keep their keys.
        if self.feed.align.is_some() && self.feed.crop != Crop::Arcface {
            serde_json::to_value(self.feed.crop)
                .unwrap_or_default()
                .cache_key(s);
        }
        if self.feed.align.is_some() && self.feed.faces != domain::FaceChoice::LARGEST {
            serde_json::to_value(self.feed.faces)
                .unwrap_or_default()
                .cache_key(s);
        }
    }
}

/// Prepare `files` (decoded in parallel), memoized in the cache's `prepared/` folder.
pub fn prepare(store: &Store, files: &[Utf8PathBuf], feed: &Feed) -> Result<Prepared> {
    prepare_with_progress(store, files, feed, &|_, _| {})
}

/// [`prepare`], calling `progress(decoded, total)` as images are decoded (every 32 images,
/// from the decoding threads).
pub fn prepare_with_progress(
    store: &Store,
    files: &[Utf8PathBuf],
    feed: &Feed,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Prepared> {
    let t0 = std::time::Instant::now();
    let digests: Vec<String> = files
        .iter()
        .map(|f| store.memo.blake3(f).map(|d| d.blake3))
        .collect::<Result<_>>()?;
    let key = cache::cache_key(&PrepKey {
        digests: &digests,
        feed,
    });
    let dir = store.root.join("prepared");
    let (npy, fits_path) = (
        dir.join(format!("{key}.npy")),
        dir.join(format!("{key}.json")),
    );
    if let (Ok(t), Ok(RowsMeta { rows, meta })) = (
        ndarray_npy::read_npy::<_, Array4<f32>>(&npy),
        std::fs::read(&fits_path)
            .map_err(|_| ())
            .and_then(|b| serde_json::from_slice::<RowsMeta>(&b).map_err(|_| ())),
    ) && t.shape()[0] == rows.len()
        && meta.len() == rows.len()
        && rows.iter().all(|&r| r < files.len())
    {
        return Ok(Prepared {
            tensor: std::sync::Arc::new(t),
            files: rows.iter().map(|&r| files[r].clone()).collect(),
            fits: meta.iter().map(|m| m.0).collect(),
            scales: meta.iter().map(|m| m.1).collect(),
            faces: meta.iter().map(|m| m.2).collect(),
            cached: true,
            prepare_ms: t0.elapsed().as_millis() as u64,
            writer: None,
        });
    }
    if files.is_empty() {
        return Err(Error::usage("no images to prepare"));
    }
    let (tensor, RowsMeta { rows, meta }) = if feed.align.is_some() && feed.faces.all {
        fill_per_face(files, feed, progress)?
    } else {
        fill_slots(files, feed, progress)?
    };
    let tensor = std::sync::Arc::new(tensor);
    // Written in the background: for 1,000 images the 150 MB file takes ~0.35 s, which
    // would otherwise sit between decoding and inference.
    let writer = {
        let tensor = tensor.clone();
        let fits_json = serde_json::to_vec(&RowsMeta {
            rows: rows.clone(),
            meta: meta.clone(),
        })
        .map_err(anyhow::Error::from)?;
        std::thread::spawn(move || -> Result<()> {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            // Write to temp names and rename: a concurrent reader never sees half a tensor.
            let tmp = dir.join(format!(".{key}.npy.tmp"));
            ndarray_npy::write_npy(&tmp, tensor.as_ref())
                .map_err(|e| anyhow::anyhow!("writing {tmp}: {e}"))?;
            std::fs::rename(&tmp, &npy).map_err(|e| Error::io(&npy, e))?;
            cache::store::write_atomic(&fits_path, &fits_json)
        })
    };
    Ok(Prepared {
        tensor,
        files: rows.iter().map(|&r| files[r].clone()).collect(),
        fits: meta.iter().map(|m| m.0).collect(),
        scales: meta.iter().map(|m| m.1).collect(),
        faces: meta.iter().map(|m| m.2).collect(),
        cached: false,
        prepare_ms: t0.elapsed().as_millis() as u64,
        writer: Some(writer),
    })
}

/// What each row of a prepared tensor is: its photo (an index into the files), how it was
/// fitted, its scale and its face; the JSON written beside the tensor.
#[derive(Serialize, Deserialize)]
struct RowsMeta {
    rows: Vec<usize>,
    meta: Vec<(Fit, f32, Option<align::FaceCrop>)>,
}

/// One row per image: each is decoded straight into its slot of the batch tensor, in
/// parallel, so peak memory is the tensor, not the tensor plus a copy of every image.
fn fill_slots(
    files: &[Utf8PathBuf],
    feed: &Feed,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<(Array4<f32>, RowsMeta)> {
    // Every prepared image is `preprocessing.size` in the feed's layout.
    let [h, w] = feed.pre.size.map(|x| x as usize);
    let n = feed.pre.color.channels();
    let per: Vec<usize> = match feed.layout {
        Layout::NCHW => vec![1, n, h, w],
        Layout::NHWC => vec![1, h, w, n],
    };
    let len = per[1] * per[2] * per[3];
    let mut tensor = Array4::<f32>::zeros((files.len(), per[1], per[2], per[3]));
    let done = std::sync::atomic::AtomicUsize::new(0);
    let slots = tensor
        .as_slice_mut()
        .expect("a new array is contiguous")
        .par_chunks_mut(len);
    let meta: Vec<(Fit, f32, Option<align::FaceCrop>)> = slots
        .zip(files.par_iter())
        .map(|(slot, f)| {
            // Without `faces: all`, an image is one row.
            let Some((t, fit, scale, face)) = load_with_fit(f, feed)?.into_iter().next() else {
                return Err(Error::usage(format!("image {f} gave no row")));
            };
            if t.shape() != per.as_slice() {
                return Err(Error::usage(format!(
                    "image {f} prepared to {:?}, the others to {per:?}",
                    t.shape()
                )));
            }
            for (o, x) in slot.iter_mut().zip(t.iter()) {
                *o = *x;
            }
            let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n.is_multiple_of(32) || n == files.len() {
                progress(n, files.len());
            }
            Ok((fit, scale, face))
        })
        .collect::<Result<_>>()?;
    let rows = (0..files.len()).collect();
    Ok((tensor, RowsMeta { rows, meta }))
}

/// A row per chosen face (`faces: all`): each photo's rows are made in parallel, then
/// stacked in the files' order.
fn fill_per_face(
    files: &[Utf8PathBuf],
    feed: &Feed,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<(Array4<f32>, RowsMeta)> {
    let done = std::sync::atomic::AtomicUsize::new(0);
    let per_file: Vec<Vec<Fitted>> = files
        .par_iter()
        .map(|f| {
            let rows = load_with_fit(f, feed)?;
            let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n.is_multiple_of(32) || n == files.len() {
                progress(n, files.len());
            }
            Ok(rows)
        })
        .collect::<Result<_>>()?;
    let views: Vec<ndarray::ArrayView4<f32>> = per_file
        .iter()
        .flat_map(|rows| rows.iter().map(|r| r.0.view()))
        .collect();
    let tensor = ndarray::concatenate(ndarray::Axis(0), &views)
        .map_err(|e| Error::usage(format!("the crops differ in shape: {e}")))?;
    let mut rows = Vec::with_capacity(views.len());
    let mut meta = Vec::with_capacity(views.len());
    for (i, fitted) in per_file.iter().enumerate() {
        for (_, fit, scale, face) in fitted {
            rows.push(i);
            meta.push((*fit, *scale, *face));
        }
    }
    Ok((tensor, RowsMeta { rows, meta }))
}

#[cfg(test)]
mod tests {
    /// Halving with OpenCV's INTER_LINEAR averages each 2x2 block (sample points fall
    /// halfway between source pixels), rounding half up; no antialiasing reaches further.
    #[test]
    fn resize_linear_halves_as_opencv_does() {
        let img = RgbImage::from_fn(4, 4, |x, y| {
            image::Rgb([(x * 10 + y) as u8, 200, (x * y) as u8])
        });
        let out = resize_linear(&img, 2, 2);
        let avg = |x: u32, y: u32, c: usize| {
            let sum: u32 = [(0, 0), (1, 0), (0, 1), (1, 1)]
                .iter()
                .map(|(dx, dy)| img.get_pixel(2 * x + dx, 2 * y + dy)[c] as u32)
                .sum();
            ((sum * 2 + 4) / 8) as u8
        };
        for (x, y) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            for c in 0..3 {
                assert_eq!(
                    out.get_pixel(x, y)[c],
                    avg(x, y, c),
                    "({x}, {y}) channel {c}"
                );
            }
        }
        // Upscaling keeps the edges: the first and last output pixels are the source's.
        let up = resize_linear(&img, 8, 8);
        assert_eq!(up.get_pixel(0, 0), img.get_pixel(0, 0));
        assert_eq!(up.get_pixel(7, 7), img.get_pixel(3, 3));
    }

    use super::*;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
        });
        let mut buf = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 90)
            .encode_image(&img)
            .unwrap();
        buf
    }

    #[test]
    fn large_jpegs_decode_at_the_smallest_scale_still_covering_the_input() {
        let buf = jpeg(1000, 800);
        // 800 / 112 = 7.1 original pixels per input pixel: 1/4 scale keeps 1.8.
        let (img, full) = decode_jpeg_scaled(&buf, [112, 112], Resize::CenterCrop).unwrap();
        assert_eq!(full, (1000, 800));
        assert_eq!(img.dimensions(), (250, 200));
        // Letterbox fits the longer side: 1000 / 640 = 1.6, less than 2: no scaled decode.
        assert!(decode_jpeg_scaled(&buf, [640, 640], Resize::Letterbox).is_none());
    }

    #[test]
    fn broken_jpegs_are_declined_not_panics() {
        let buf = jpeg(1000, 800);
        // libjpeg's errors unwind; each must come back as "not taken here".
        let mut garbage = vec![0xFF, 0xD8, 0xFF, 0xE0];
        garbage.extend(std::iter::repeat_n(0x55u8, 500));
        assert!(decode_jpeg_scaled(&garbage, [112, 112], Resize::CenterCrop).is_none());
        for cut in [4, 100, buf.len() / 2] {
            // A truncated scan may still decode (libjpeg pads it); it must not panic.
            let _ = decode_jpeg_scaled(&buf[..cut], [112, 112], Resize::CenterCrop);
        }
        // Through the file path, a file that no decoder takes is an error naming it.
        let dir = tempfile::tempdir().unwrap();
        let path = Utf8PathBuf::from_path_buf(dir.path().join("bad.jpg")).unwrap();
        std::fs::write(&path, &garbage).unwrap();
        let e = decode_for_fit(&path, [112, 112], Resize::CenterCrop).unwrap_err();
        assert!(e.to_string().contains("bad.jpg"), "{e}");
    }
}
