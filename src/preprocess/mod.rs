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

pub mod synthetic;

use camino::{Utf8Path, Utf8PathBuf};
use ndarray::{s, Array4};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cache::{CacheKey, CacheKeyHasher, Store};
use crate::error::{Error, Result};
use crate::manifest::{ColorOrder, Layout, Preprocessing};

const EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp"];
/// Bumped when the pixels this module produces change.
const PREPARE_VERSION: u64 = 2;

/// How an image was brought to the model's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fit {
    /// Already the model's size (an aligned crop): used as it is.
    AsIs,
    /// Centre-cropped to the model's aspect ratio, then resized (bilinear).
    CenterCropResize,
}

/// Images in `dir` (recursively), sorted by path, then a seeded shuffle and the first `count`.
pub fn list_images(dir: &Utf8Path, count: Option<usize>, seed: u64) -> Result<Vec<Utf8PathBuf>> {
    let mut files: Vec<Utf8PathBuf> = crate::util::files_under(dir)?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| EXTENSIONS.contains(&x.to_ascii_lowercase().as_str())))
        .collect();
    if files.is_empty() {
        return Err(Error::usage(format!("dataset folder {dir} has no images ({})", EXTENSIONS.join(", "))));
    }
    if let Some(n) = count {
        // Fisher-Yates with a fixed generator: the same subset on every machine.
        let mut rng = crate::util::SplitMix64::new(seed);
        for i in (1..files.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            files.swap(i, j);
        }
        files.truncate(n);
        files.sort();
    }
    Ok(files)
}

/// Decode and prepare one image; a batch of one in the model's layout.
pub fn load_tensor(path: &Utf8Path, pre: &Preprocessing, layout: Layout) -> Result<Array4<f32>> {
    Ok(load_with_fit(path, pre, layout)?.0)
}

fn load_with_fit(path: &Utf8Path, pre: &Preprocessing, layout: Layout) -> Result<(Array4<f32>, Fit)> {
    // By content, not extension: real datasets hold WebP files named .jpg.
    let decode = || -> std::result::Result<image::DynamicImage, String> { image::ImageReader::open(path).map_err(|e| e.to_string())?.with_guessed_format().map_err(|e| e.to_string())?.decode().map_err(|e| e.to_string()) };
    let img = decode().map_err(|e| Error::usage(format!("cannot decode image {path}: {e}")).with_hint("facebuild reads JPEG, PNG and WebP; remove or convert this file"))?.to_rgb8();
    let [h, w] = pre.size;
    let (iw, ih) = img.dimensions();
    let (img, fit) = if (iw, ih) == (w, h) {
        (img, Fit::AsIs)
    } else {
        // Largest centred window with the target's aspect ratio.
        let (cw, ch) = if iw as u64 * h as u64 > ih as u64 * w as u64 { ((ih as u64 * w as u64 / h as u64) as u32, ih) } else { (iw, (iw as u64 * h as u64 / w as u64) as u32) };
        let crop = image::imageops::crop_imm(&img, (iw - cw) / 2, (ih - ch) / 2, cw, ch).to_image();
        (image::imageops::resize(&crop, w, h, image::imageops::FilterType::Triangle), Fit::CenterCropResize)
    };
    let (h, w) = (h as usize, w as usize);
    let order = match pre.color {
        ColorOrder::RGB => [0, 1, 2],
        ColorOrder::BGR => [2, 1, 0],
    };
    let mut t = match layout {
        Layout::NCHW => Array4::<f32>::zeros((1, 3, h, w)),
        Layout::NHWC => Array4::<f32>::zeros((1, h, w, 3)),
    };
    for (x, y, px) in img.enumerate_pixels() {
        for (c, &src) in order.iter().enumerate() {
            let v = (px[src] as f32 - pre.mean[c]) / pre.std[c];
            match layout {
                Layout::NCHW => t[[0, c, y as usize, x as usize]] = v,
                Layout::NHWC => t[[0, y as usize, x as usize, c]] = v,
            }
        }
    }
    Ok((t, fit))
}

/// A prepared image set: one tensor of all images, in `files` order.
pub struct Prepared {
    pub tensor: Array4<f32>,
    pub files: Vec<Utf8PathBuf>,
    pub fits: Vec<Fit>,
    /// True when it came from the cache (no image was decoded).
    pub cached: bool,
    pub prepare_ms: u64,
}

impl Prepared {
    pub fn fit_counts(&self) -> serde_json::Value {
        let as_is = self.fits.iter().filter(|f| **f == Fit::AsIs).count();
        serde_json::json!({"as_is": as_is, "center_crop_resize": self.fits.len() - as_is})
    }
}

struct PrepKey<'a> {
    digests: &'a [String],
    pre: &'a Preprocessing,
    layout: Layout,
}

impl CacheKey for PrepKey<'_> {
    fn cache_key(&self, s: &mut CacheKeyHasher) {
        PREPARE_VERSION.cache_key(s);
        self.digests.cache_key(s);
        serde_json::to_value(self.pre).unwrap_or_default().cache_key(s);
        serde_json::to_value(self.layout).unwrap_or_default().cache_key(s);
    }
}

/// Prepare `files` (decoded in parallel), memoized in the cache's `prepared/` folder.
pub fn prepare(store: &Store, files: &[Utf8PathBuf], pre: &Preprocessing, layout: Layout) -> Result<Prepared> {
    let t0 = std::time::Instant::now();
    let digests: Vec<String> = files.iter().map(|f| store.memo.blake3(f).map(|d| d.blake3)).collect::<Result<_>>()?;
    let key = crate::cache::cache_key(&PrepKey { digests: &digests, pre, layout });
    let dir = store.root.join("prepared");
    let (npy, fits_path) = (dir.join(format!("{key}.npy")), dir.join(format!("{key}.json")));
    if let (Ok(t), Ok(fits)) = (ndarray_npy::read_npy::<_, Array4<f32>>(&npy), std::fs::read(&fits_path).map_err(|_| ()).and_then(|b| serde_json::from_slice::<Vec<Fit>>(&b).map_err(|_| ()))) {
        if t.shape()[0] == files.len() && fits.len() == files.len() {
            return Ok(Prepared { tensor: t, files: files.to_vec(), fits, cached: true, prepare_ms: t0.elapsed().as_millis() as u64 });
        }
    }
    let loaded: Vec<(Array4<f32>, Fit)> = files.par_iter().map(|f| load_with_fit(f, pre, layout)).collect::<Result<_>>()?;
    let per = loaded.first().map(|(t, _)| t.shape().to_vec()).unwrap_or_default();
    let mut tensor = Array4::<f32>::zeros((files.len(), per[1], per[2], per[3]));
    for (i, (t, _)) in loaded.iter().enumerate() {
        tensor.slice_mut(s![i..i + 1, .., .., ..]).assign(t);
    }
    let fits: Vec<Fit> = loaded.iter().map(|(_, f)| *f).collect();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    // Write to temp names and rename: a concurrent reader never sees half a tensor.
    let tmp = dir.join(format!(".{key}.npy.tmp"));
    ndarray_npy::write_npy(&tmp, &tensor).map_err(|e| anyhow::anyhow!("writing {tmp}: {e}"))?;
    std::fs::rename(&tmp, &npy).map_err(|e| Error::io(&npy, e))?;
    crate::cache::store::write_atomic(&fits_path, &serde_json::to_vec(&fits).map_err(anyhow::Error::from)?)?;
    Ok(Prepared { tensor, files: files.to_vec(), fits, cached: false, prepare_ms: t0.elapsed().as_millis() as u64 })
}
