//! Image -> tensor, per the manifest's `model.preprocessing`. One module, shared by every step
//! that feeds images (simplify's equivalence check now; calibrate, compare and benchmark later),
//! so a model is never compared on differently prepared pixels.

use camino::{Utf8Path, Utf8PathBuf};
use ndarray::Array4;

use crate::error::{Error, Result};
use crate::manifest::{ColorOrder, Layout, Preprocessing};

const EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];

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

/// Decode, resize to `size` ([h, w]), reorder channels, normalise: (x - mean) / std.
/// Returns a batch of one in the model's layout.
pub fn load_tensor(path: &Utf8Path, pre: &Preprocessing, layout: Layout) -> Result<Array4<f32>> {
    let img = image::open(path).map_err(|e| Error::usage(format!("cannot decode image {path}: {e}")))?.to_rgb8();
    let [h, w] = pre.size;
    let img = if img.dimensions() == (w, h) { img } else { image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle) };
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
    Ok(t)
}
