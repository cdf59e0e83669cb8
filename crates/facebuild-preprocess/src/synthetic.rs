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

/// Built-in datasets: `synthetic-faces` (aligned 112x112 crops, a folder per identity) and
/// `synthetic-scenes` (whole pictures of several sizes and aspect ratios with 1-5 such faces
/// at different scales, for detectors).
pub fn names() -> &'static [&'static str] {
    &["synthetic-faces", "synthetic-scenes"]
}

pub const SCENES: usize = 8;

/// Write the set under `dir` (if not already complete) and return the folder.
pub fn ensure(cache_dir: &Utf8Path, name: &str) -> Result<Utf8PathBuf> {
    let dir = cache_dir.join("builtin").join(format!("{name}-g{VERSION}"));
    let done = dir.join(".complete");
    if done.exists() {
        return Ok(dir);
    }
    // Two steps of one run may need the set at once, and the temporary folder is per
    // process: one writes it, the other waits and finds it complete.
    static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = WRITING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if done.exists() {
        return Ok(dir);
    }
    let tmp = cache_dir
        .join("builtin")
        .join(format!(".{name}-g{VERSION}.tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let save = |img: RgbImage, p: Utf8PathBuf| {
        img.save(&p)
            .map_err(|e| anyhow::anyhow!("writing {p}: {e}"))
    };
    if name == "synthetic-scenes" {
        for i in 0..SCENES {
            save(scene(i as u64), tmp.join(format!("scene{i}.png")))?;
        }
    } else {
        for id in 0..IDENTITIES {
            let sub = tmp.join(format!("id{id:02}"));
            std::fs::create_dir_all(&sub).map_err(|e| Error::io(&sub, e))?;
            for k in 0..PER_IDENTITY {
                save(face(id as u64, k as u64), sub.join(format!("{k}.png")))?;
            }
        }
    }
    std::fs::write(tmp.join(".complete"), b"").map_err(|e| Error::io(&tmp, e))?;
    // Another process may have finished first; either copy is identical.
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(dir)
}

/// A picture with a few faces: a noisy gradient background, sizes and aspect ratios varied
/// (landscape, portrait, square) so letterboxing is exercised.
fn scene(i: u64) -> RgbImage {
    let mut g = SplitMix64::new(0x5CE_0000 + i);
    let (w, h) = [(640, 480), (480, 640), (800, 600), (512, 512)][i as usize % 4];
    let (c0, c1) = (
        [
            unit01(&mut g) * 255.0,
            unit01(&mut g) * 255.0,
            unit01(&mut g) * 255.0,
        ],
        [
            unit01(&mut g) * 255.0,
            unit01(&mut g) * 255.0,
            unit01(&mut g) * 255.0,
        ],
    );
    let mut img = RgbImage::from_fn(w, h, |x, y| {
        let t = (x + y) as f32 / (w + h) as f32;
        let n = 10.0 * g.unit();
        Rgb([0, 1, 2].map(|c| (c0[c] * (1.0 - t) + c1[c] * t + n).clamp(0.0, 255.0) as u8))
    });
    let faces = 1 + (g.next_u64() % 5) as u32;
    for k in 0..faces {
        let size = 40 + (g.next_u64() % 160) as u32;
        let crop = image::imageops::resize(
            &face((i * 7 + k as u64) % IDENTITIES as u64, k as u64),
            size,
            size,
            image::imageops::FilterType::Triangle,
        );
        let (x, y) = (
            (g.next_u64() % (w - size) as u64) as i64,
            (g.next_u64() % (h - size) as u64) as i64,
        );
        image::imageops::replace(&mut img, &crop, x, y);
    }
    img
}

fn unit01(r: &mut SplitMix64) -> f32 {
    (r.unit() + 1.0) / 2.0
}

fn face(id: u64, k: u64) -> RgbImage {
    let mut g = SplitMix64::new(0xFACE_0000 + id);
    // Identity: geometry and colours.
    let skin = [
        150.0 + 90.0 * unit01(&mut g),
        110.0 + 80.0 * unit01(&mut g),
        80.0 + 70.0 * unit01(&mut g),
    ];
    let hair = [
        40.0 * unit01(&mut g),
        30.0 * unit01(&mut g),
        20.0 + 60.0 * unit01(&mut g),
    ];
    let bg = [
        60.0 + 150.0 * unit01(&mut g),
        60.0 + 150.0 * unit01(&mut g),
        60.0 + 150.0 * unit01(&mut g),
    ];
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
