//! Built-in sample faces: procedurally drawn 112x112 "aligned crops", several identities with
//! several images each (folder per identity), generated deterministically so a fresh machine
//! can exercise calibration and the verification metrics without shipping anyone's photos.
//! They are cartoons: good for exercising the machinery, meaningless as accuracy evidence.

use camino::{Utf8Path, Utf8PathBuf};
use image::{Rgb, RgbImage};

use crate::error::{Error, Result};
use crate::util::SplitMix64;

/// Bumped whenever the generated pixels change.
pub const VERSION: u32 = 1;
pub const IDENTITIES: usize = 12;
pub const PER_IDENTITY: usize = 5;

pub fn names() -> &'static [&'static str] {
    &["synthetic-faces"]
}

/// Write the set under `dir` (if not already complete) and return the folder.
pub fn ensure(cache_dir: &Utf8Path) -> Result<Utf8PathBuf> {
    let dir = cache_dir.join("builtin").join(format!("synthetic-faces-g{VERSION}"));
    let done = dir.join(".complete");
    if done.exists() {
        return Ok(dir);
    }
    let tmp = cache_dir.join("builtin").join(format!(".synthetic-faces-g{VERSION}.tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    for id in 0..IDENTITIES {
        let sub = tmp.join(format!("id{id:02}"));
        std::fs::create_dir_all(&sub).map_err(|e| Error::io(&sub, e))?;
        for k in 0..PER_IDENTITY {
            let p = sub.join(format!("{k}.png"));
            face(id as u64, k as u64).save(&p).map_err(|e| anyhow::anyhow!("writing {p}: {e}"))?;
        }
    }
    std::fs::write(tmp.join(".complete"), b"").map_err(|e| Error::io(&tmp, e))?;
    // Another process may have finished first; either copy is identical.
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(dir)
}

fn unit01(r: &mut SplitMix64) -> f32 {
    (r.unit() + 1.0) / 2.0
}

fn face(id: u64, k: u64) -> RgbImage {
    let mut g = SplitMix64::new(0xFACE_0000 + id);
    // Identity: geometry and colours.
    let skin = [150.0 + 90.0 * unit01(&mut g), 110.0 + 80.0 * unit01(&mut g), 80.0 + 70.0 * unit01(&mut g)];
    let hair = [40.0 * unit01(&mut g), 30.0 * unit01(&mut g), 20.0 + 60.0 * unit01(&mut g)];
    let bg = [60.0 + 150.0 * unit01(&mut g), 60.0 + 150.0 * unit01(&mut g), 60.0 + 150.0 * unit01(&mut g)];
    let (rx, ry) = (30.0 + 10.0 * unit01(&mut g), 40.0 + 10.0 * unit01(&mut g));
    let eye_dx = 14.0 + 6.0 * unit01(&mut g);
    let eye_y = -8.0 - 6.0 * unit01(&mut g);
    let eye_r = 3.0 + 3.0 * unit01(&mut g);
    let mouth_w = 8.0 + 10.0 * unit01(&mut g);
    let mouth_y = 18.0 + 8.0 * unit01(&mut g);
    let hair_line = -ry + 8.0 + 14.0 * unit01(&mut g);
    // Image: pose, light and noise.
    let mut v = SplitMix64::new(0xBEEF_0000 + id * 1000 + k);
    let (cx, cy) = (56.0 + 3.0 * v.unit(), 58.0 + 3.0 * v.unit());
    let light = 1.0 + 0.12 * v.unit();
    let smile = 2.0 * v.unit();
    let mut img = RgbImage::new(112, 112);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let (dx, dy) = (x as f32 - cx, y as f32 - cy);
        let in_face = (dx / rx).powi(2) + (dy / ry).powi(2) <= 1.0;
        let mut c = if !in_face {
            bg
        } else if dy < hair_line {
            hair
        } else {
            skin
        };
        let eye = |ex: f32| ((dx - ex).powi(2) + (dy - eye_y).powi(2)).sqrt() < eye_r;
        if in_face && (eye(-eye_dx) || eye(eye_dx)) {
            c = [20.0, 20.0, 30.0];
        }
        let mouth_curve = mouth_y + smile * (1.0 - (dx / mouth_w).powi(2));
        if in_face && dx.abs() < mouth_w && (dy - mouth_curve).abs() < 2.0 {
            c = [150.0, 40.0, 50.0];
        }
        let n = 6.0 * v.unit();
        *px = Rgb([0, 1, 2].map(|i| (c[i] * light + n).clamp(0.0, 255.0) as u8));
    }
    img
}
