//! Derived datasets: a set that looks like deployment, made from photos that do not.
//! Portraits have one large face each; a detector deployed on crowds sees many small ones.
//! From the originals' faces (found by the reference detector) this writes mosaics of faces
//! scaled to given heights, copies fitted into a fraction of the canvas, mirrored and
//! rotated copies, and `faces.json` with every face's box and keypoints carried over from
//! the originals. Deterministic for a seed: the same files on every machine.

use camino::{Utf8Path, Utf8PathBuf};
use image::{Rgb, RgbImage};
use rayon::prelude::*;
use serde::Serialize;

use super::align::{Affine, warp};
use crate::detect::Detection;
use crate::domain::DeriveSpec;
use crate::error::{Error, Result};
use crate::util::SplitMix64;

/// Bumped whenever the written pixels or labels change. 2: originals held at most twice
/// the canvas's longer side.
pub const DERIVE_VERSION: u32 = 2;

/// Fill of canvas area no tile or photo covers (what YOLO-style letterboxes use).
const GRAY: Rgb<u8> = Rgb([114, 114, 114]);
/// Faces smaller than this (box height, in the original) are not cut for tiles: scaled
/// down they would be mush, not small faces.
const MIN_SOURCE_FACE: f32 = 48.0;

/// An original photo and the faces the reference detector found on it.
pub struct Original {
    pub path: Utf8PathBuf,
    pub image: RgbImage,
    pub faces: Vec<Detection>,
}

impl Original {
    /// An original held for deriving: at most twice the canvas's longer side (no tile or
    /// copy needs more), with its faces scaled to match, so a large folder of large photos
    /// does not fill memory.
    pub fn new(
        path: Utf8PathBuf,
        image: RgbImage,
        faces: Vec<Detection>,
        canvas: [u32; 2],
    ) -> Original {
        let cap = 2.0 * canvas[0].max(canvas[1]) as f32;
        let (image, s) = fit(
            &image,
            cap / image.width().max(image.height()).max(1) as f32,
        );
        let faces = faces.into_iter().map(|d| d.scaled(1.0 / s)).collect();
        Original { path, image, faces }
    }
}

/// One written image and its faces, as `faces.json` lists them.
#[derive(Debug, Clone, Serialize)]
pub struct Labelled {
    pub file: String,
    /// How it was made: `original`, `mosaic`, `flip`, `rotate:<deg>`, `rescale:<f>`.
    pub origin: String,
    /// The originals it was made from (file names).
    pub sources: Vec<String>,
    pub faces: Vec<LabelledFace>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LabelledFace {
    /// x1, y1, x2, y2 in the written image's pixels.
    pub bbox: [f32; 4],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kps: Option<[[f32; 2]; 5]>,
}

/// Write the derived set into `dir` (complete when `.complete` exists) and return it.
pub fn ensure(
    dir: &Utf8Path,
    originals: &dyn Fn() -> Result<Vec<Original>>,
    spec: &DeriveSpec,
    canvas: [u32; 2],
    seed: u64,
) -> Result<Utf8PathBuf> {
    // Two steps of one run may read the same set at once: one derives it, the other waits
    // and finds it complete (the temporary folder is per process, not per thread).
    static DERIVING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = DERIVING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if dir.join(".complete").exists() {
        return Ok(dir.to_owned());
    }
    let parent = dir.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = parent.join(format!(
        ".{}.tmp{}",
        dir.file_name().unwrap_or("derived"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let originals = originals()?;
    let labels = write_all(&tmp, &originals, spec, canvas, seed)?;
    let json = serde_json::to_vec_pretty(&serde_json::json!({
        "format": "facebuild.derived/1",
        "canvas": canvas,
        "images": labels,
    }))
    .map_err(anyhow::Error::from)?;
    let faces = tmp.join("faces.json");
    std::fs::write(&faces, json).map_err(|e| Error::io(&faces, e))?;
    std::fs::write(tmp.join(".complete"), b"").map_err(|e| Error::io(&tmp, e))?;
    // Another process may have finished first; either copy is identical.
    if std::fs::rename(&tmp, dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(dir.to_owned())
}

fn write_all(
    dir: &Utf8Path,
    originals: &[Original],
    spec: &DeriveSpec,
    canvas: [u32; 2],
    seed: u64,
) -> Result<Vec<Labelled>> {
    // Copies of each original, in parallel; each job writes its own files.
    let copies: Vec<Vec<Labelled>> = originals
        .par_iter()
        .enumerate()
        .map(|(i, o)| copies_of(dir, (i, o), spec, canvas, seed))
        .collect::<Result<_>>()?;
    let mut labels: Vec<Labelled> = copies.into_iter().flatten().collect();
    if let Some(mosaic) = &spec.mosaic {
        let pool: Vec<(usize, usize)> = originals
            .iter()
            .enumerate()
            .flat_map(|(i, o)| {
                o.faces
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| d.bbox[3] - d.bbox[1] >= MIN_SOURCE_FACE)
                    .map(move |(j, _)| (i, j))
            })
            .collect();
        if pool.is_empty() {
            return Err(Error::usage(format!(
                "no face of at least {MIN_SOURCE_FACE} px was found on the originals to build mosaics from"
            ))
            .with_hint("derive mosaics from photos with large faces (portraits), or check the detector's settings"));
        }
        let tiles = Tiles {
            originals,
            pool: &pool,
            spec,
            canvas,
        };
        let made: Vec<Labelled> = (0..mosaic.count)
            .into_par_iter()
            .map(|k| -> Result<Labelled> {
                let (img, faces, sources) = tiles.mosaic(seed ^ (0x3051_A1C0_0000 + k as u64));
                let file = format!("mosaic_{k:04}.png");
                save(&img, &dir.join(&file))?;
                let mut names: Vec<String> = sources.iter().map(|&i| name(&originals[i])).collect();
                names.sort();
                names.dedup();
                Ok(Labelled {
                    file,
                    origin: "mosaic".into(),
                    sources: names,
                    faces,
                })
            })
            .collect::<Result<_>>()?;
        labels.extend(made);
    }
    labels.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(labels)
}

/// The original `o` (the `i`th) as it is, mirrored, rotated and rescaled, as `spec` asks.
fn copies_of(
    dir: &Utf8Path,
    (i, o): (usize, &Original),
    spec: &DeriveSpec,
    canvas: [u32; 2],
    seed: u64,
) -> Result<Vec<Labelled>> {
    let longer = canvas[0].max(canvas[1]);
    let mut out = Vec::new();
    if spec.originals {
        let file = format!("original_{i:04}_{}", name(o));
        let to = dir.join(&file);
        std::fs::copy(&o.path, &to).map_err(|e| Error::io(&to, e))?;
        out.push(Labelled {
            file,
            origin: "original".into(),
            sources: vec![name(o)],
            faces: o.faces.iter().map(face).collect(),
        });
    }
    let mut emit =
        |img: &RgbImage, file: String, origin: String, faces: Vec<LabelledFace>| -> Result<()> {
            save(img, &dir.join(&file))?;
            out.push(Labelled {
                file,
                origin,
                sources: vec![name(o)],
                faces,
            });
            Ok(())
        };
    // Copies need no more pixels than the detector sees.
    let (small, s) = fit(
        &o.image,
        longer as f32 / o.image.width().max(o.image.height()) as f32,
    );
    let scaled: Vec<LabelledFace> = o
        .faces
        .iter()
        .map(|d| moved(d, &scale_m(s), false))
        .collect();
    let (w, h) = small.dimensions();
    if spec.flip {
        let m: Affine = [[-1.0, 0.0, w as f64 - 1.0], [0.0, 1.0, 0.0]];
        let faces = scaled.iter().map(|f| moved_face(f, &m, true)).collect();
        emit(
            &image::imageops::flip_horizontal(&small),
            format!("flip_{i:04}_{}.png", stem(o)),
            "flip".into(),
            faces,
        )?;
    }
    for &deg in &spec.rotate {
        let m = about_centre(
            deg,
            false,
            [w as f64 / 2.0, h as f64 / 2.0],
            [w as f64 / 2.0, h as f64 / 2.0],
            1.0,
        );
        let faces = scaled.iter().map(|f| moved_face(f, &m, false)).collect();
        emit(
            &warp(&small, &m, w, h),
            format!("rotate{deg}_{i:04}_{}.png", stem(o)),
            format!("rotate:{deg}"),
            faces,
        )?;
    }
    for (k, &frac) in spec.rescale.iter().enumerate() {
        let mut rng = SplitMix64::new(seed ^ (0xA5CA_1E00 + ((i as u64) << 8) + k as u64));
        let fit_s = frac * (canvas[1] as f32 / w as f32).min(canvas[0] as f32 / h as f32);
        let (img, s2) = fit(&small, fit_s);
        let (iw, ih) = img.dimensions();
        let x0 = (rng.next_u64() % (canvas[1].saturating_sub(iw) as u64 + 1)) as u32;
        let y0 = (rng.next_u64() % (canvas[0].saturating_sub(ih) as u64 + 1)) as u32;
        let mut c = RgbImage::from_pixel(canvas[1], canvas[0], GRAY);
        image::imageops::replace(&mut c, &img, x0 as i64, y0 as i64);
        let m: Affine = [[s2 as f64, 0.0, x0 as f64], [0.0, s2 as f64, y0 as f64]];
        let faces = scaled.iter().map(|f| moved_face(f, &m, false)).collect();
        emit(
            &c,
            format!("rescale{frac}_{i:04}_{}.png", stem(o)),
            format!("rescale:{frac}"),
            faces,
        )?;
    }
    Ok(out)
}

struct Tiles<'a> {
    originals: &'a [Original],
    /// (original, face) pairs large enough to cut tiles from.
    pool: &'a [(usize, usize)],
    spec: &'a DeriveSpec,
    canvas: [u32; 2],
}

impl Tiles<'_> {
    /// One mosaic: rows of square tiles, each row at one face size, until the canvas is full.
    fn mosaic(&self, seed: u64) -> (RgbImage, Vec<LabelledFace>, Vec<usize>) {
        let Some(m) = &self.spec.mosaic else {
            return (RgbImage::new(1, 1), vec![], vec![]);
        };
        let mut rng = SplitMix64::new(seed);
        let [ch, cw] = self.canvas;
        let mut img = RgbImage::from_pixel(cw, ch, GRAY);
        let (mut faces, mut sources) = (Vec::new(), Vec::new());
        let mut y = 0u32;
        loop {
            let fits: Vec<f32> = m
                .face_sizes
                .iter()
                .copied()
                .filter(|f| {
                    let side = tile_side(*f, m.context, ch);
                    y + side <= ch && side <= cw
                })
                .collect();
            if fits.is_empty() {
                break;
            }
            let f = fits[(rng.next_u64() % fits.len() as u64) as usize];
            let side = tile_side(f, m.context, ch);
            let cols = (cw / side).max(1);
            let gap = (cw - cols * side) / cols;
            for c in 0..cols {
                let x = c * (side + gap) + gap / 2;
                let (i, j) = self.pool[(rng.next_u64() % self.pool.len() as u64) as usize];
                let (tile, face) = self.tile(i, j, f * ch as f32, side, &mut rng);
                image::imageops::replace(&mut img, &tile, x as i64, y as i64);
                let shift: Affine = [[1.0, 0.0, x as f64], [0.0, 1.0, y as f64]];
                faces.push(moved_face(&face, &shift, false));
                sources.push(i);
            }
            y += side;
        }
        (img, faces, sources)
    }

    /// Face `j` of original `i` scaled to `face_h` pixels high, centred in a `side` tile,
    /// perhaps mirrored and rotated; and its box and keypoints in the tile.
    fn tile(
        &self,
        i: usize,
        j: usize,
        face_h: f32,
        side: u32,
        rng: &mut SplitMix64,
    ) -> (RgbImage, LabelledFace) {
        let o = &self.originals[i];
        let d = &o.faces[j];
        let s = (face_h / (d.bbox[3] - d.bbox[1]).max(1.0)) as f64;
        let centre = [
            (d.bbox[0] + d.bbox[2]) as f64 / 2.0,
            (d.bbox[1] + d.bbox[3]) as f64 / 2.0,
        ];
        let flip = self.spec.flip && rng.next_u64() % 2 == 1;
        let n = self.spec.rotate.len() as u64 + 1;
        let deg = match (rng.next_u64() % n) as usize {
            0 => 0.0,
            k => self.spec.rotate[k - 1],
        };
        // Shrink the face's surroundings with an area filter first: a bilinear warp alone
        // would alias a 400 px face down to 12 px, which no camera does.
        let half = side as f64 / s * 0.75;
        let (region, origin, rs) = shrink_region(&o.image, centre, half, s);
        let rc = [
            (centre[0] - origin[0]) * rs[0],
            (centre[1] - origin[1]) * rs[1],
        ];
        let t = side as f64 / 2.0;
        let m = about_centre(deg, flip, rc, [t, t], s / rs[0].max(1e-9));
        let tile = warp(&region, &m, side, side);
        // The same transform from the original's pixels: into the region, then the tile.
        let into_region: Affine = [
            [rs[0], 0.0, -origin[0] * rs[0]],
            [0.0, rs[1], -origin[1] * rs[1]],
        ];
        let full = compose(&m, &into_region);
        (tile, moved(d, &full, flip))
    }
}

fn name(o: &Original) -> String {
    o.path.file_name().unwrap_or("image").to_string()
}

fn stem(o: &Original) -> String {
    o.path.file_stem().unwrap_or("image").to_string()
}

fn tile_side(face: f32, context: f32, canvas_h: u32) -> u32 {
    ((face * context * canvas_h as f32).round() as u32).max(4)
}

/// The square around `centre` of half-side `half` (clipped to the photo), resized by about
/// `s` when that shrinks it; with its top-left in photo pixels and the actual scales.
fn shrink_region(
    img: &RgbImage,
    centre: [f64; 2],
    half: f64,
    s: f64,
) -> (RgbImage, [f64; 2], [f64; 2]) {
    let (w, h) = img.dimensions();
    let x0 = (centre[0] - half).floor().clamp(0.0, w as f64 - 1.0) as u32;
    let y0 = (centre[1] - half).floor().clamp(0.0, h as f64 - 1.0) as u32;
    let x1 = ((centre[0] + half).ceil() as u32).clamp(x0 + 1, w);
    let y1 = ((centre[1] + half).ceil() as u32).clamp(y0 + 1, h);
    let view = image::imageops::crop_imm(img, x0, y0, x1 - x0, y1 - y0).to_image();
    if s >= 1.0 {
        return (view, [x0 as f64, y0 as f64], [1.0, 1.0]);
    }
    let (vw, vh) = view.dimensions();
    let nw = ((vw as f64 * s).round() as u32).max(1);
    let nh = ((vh as f64 * s).round() as u32).max(1);
    let small = image::imageops::resize(&view, nw, nh, image::imageops::FilterType::Triangle);
    (
        small,
        [x0 as f64, y0 as f64],
        [nw as f64 / vw as f64, nh as f64 / vh as f64],
    )
}

/// Resize by `s` (area filter) when it shrinks; the image and the scale used.
fn fit(img: &RgbImage, s: f32) -> (RgbImage, f32) {
    if s >= 1.0 {
        return (img.clone(), 1.0);
    }
    let (w, h) = img.dimensions();
    let nw = ((w as f32 * s).round() as u32).max(1);
    let nh = ((h as f32 * s).round() as u32).max(1);
    (
        image::imageops::resize(img, nw, nh, image::imageops::FilterType::Triangle),
        nw as f32 / w as f32,
    )
}

fn scale_m(s: f32) -> Affine {
    [[s as f64, 0.0, 0.0], [0.0, s as f64, 0.0]]
}

/// Scale by `s`, mirror when `flip`, rotate by `deg` (counter-clockwise on screen), with
/// `from` landing on `to`.
fn about_centre(deg: f32, flip: bool, from: [f64; 2], to: [f64; 2], s: f64) -> Affine {
    let (sin, cos) = (-(deg as f64).to_radians()).sin_cos();
    let fx = if flip { -1.0 } else { 1.0 };
    let (a, b, c, d) = (s * cos * fx, -s * sin, s * sin * fx, s * cos);
    [
        [a, b, to[0] - a * from[0] - b * from[1]],
        [c, d, to[1] - c * from[0] - d * from[1]],
    ]
}

/// `a` after `b`.
fn compose(a: &Affine, b: &Affine) -> Affine {
    std::array::from_fn(|r| {
        [
            a[r][0] * b[0][0] + a[r][1] * b[1][0],
            a[r][0] * b[0][1] + a[r][1] * b[1][1],
            a[r][0] * b[0][2] + a[r][1] * b[1][2] + a[r][2],
        ]
    })
}

fn apply(m: &Affine, [x, y]: [f32; 2]) -> [f32; 2] {
    let (x, y) = (x as f64, y as f64);
    [
        (m[0][0] * x + m[0][1] * y + m[0][2]) as f32,
        (m[1][0] * x + m[1][1] * y + m[1][2]) as f32,
    ]
}

fn face(d: &Detection) -> LabelledFace {
    LabelledFace {
        bbox: d.bbox,
        kps: d.kps,
    }
}

fn moved(d: &Detection, m: &Affine, mirrored: bool) -> LabelledFace {
    moved_face(&face(d), m, mirrored)
}

/// A face under `m`: the box that holds its moved corners; keypoints moved, and swapped
/// left for right when `mirrored` so that a left eye stays a left eye.
fn moved_face(f: &LabelledFace, m: &Affine, mirrored: bool) -> LabelledFace {
    let [x1, y1, x2, y2] = f.bbox;
    let corners = [[x1, y1], [x2, y1], [x1, y2], [x2, y2]].map(|p| apply(m, p));
    let (xs, ys) = (corners.map(|p| p[0]), corners.map(|p| p[1]));
    let lo = |v: [f32; 4]| v.into_iter().fold(f32::INFINITY, f32::min);
    let hi = |v: [f32; 4]| v.into_iter().fold(f32::NEG_INFINITY, f32::max);
    let kps = f.kps.map(|k| {
        let mut p = k.map(|q| apply(m, q));
        if mirrored {
            p.swap(0, 1);
            p.swap(3, 4);
        }
        p
    });
    LabelledFace {
        bbox: [lo(xs), lo(ys), hi(xs), hi(ys)],
        kps,
    }
}

fn save(img: &RgbImage, path: &Utf8Path) -> Result<()> {
    img.save(path)
        .map_err(|e| anyhow::anyhow!("writing {path}: {e}").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn portrait(seed: u64) -> Original {
        let mut g = SplitMix64::new(seed);
        let image = RgbImage::from_fn(300, 400, |x, y| {
            let v = ((x * 7 + y * 3) % 255) as u8;
            Rgb([v, (g.next_u64() % 255) as u8, 255 - v])
        });
        Original {
            path: format!("/nowhere/p{seed}.jpg").into(),
            image,
            faces: vec![Detection {
                bbox: [100.0, 100.0, 200.0, 240.0],
                score: 0.9,
                kps: Some([
                    [130.0, 150.0],
                    [170.0, 150.0],
                    [150.0, 180.0],
                    [135.0, 210.0],
                    [165.0, 210.0],
                ]),
            }],
        }
    }

    fn spec() -> DeriveSpec {
        DeriveSpec {
            from: "p".into(),
            detector: None,
            canvas: None,
            originals: false,
            mosaic: Some(crate::domain::MosaicSpec {
                count: 2,
                face_sizes: vec![0.05, 0.1],
                context: 2.0,
            }),
            rescale: vec![0.5],
            flip: true,
            rotate: vec![10.0],
        }
    }

    #[test]
    fn mosaics_carry_faces_at_the_declared_sizes_and_are_deterministic() {
        let originals = vec![portrait(1), portrait(2)];
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let da = Utf8Path::from_path(a.path()).unwrap().join("set");
        let db = Utf8Path::from_path(b.path()).unwrap().join("set");
        for d in [&da, &db] {
            ensure(
                d,
                &|| Ok(vec![portrait(1), portrait(2)]),
                &spec(),
                [320, 320],
                7,
            )
            .unwrap();
        }
        let labels = write_all(&da, &originals, &spec(), [320, 320], 7).unwrap();
        // 2 flips, 2 rotations, 2 rescaled, 2 mosaics.
        assert_eq!(labels.len(), 8);
        let mosaic = labels.iter().find(|l| l.origin == "mosaic").unwrap();
        assert!(mosaic.faces.len() > 10, "{}", mosaic.faces.len());
        for f in &mosaic.faces {
            let h = f.bbox[3] - f.bbox[1];
            // Rotated tiles grow their box by up to sin/cos of 10 degrees.
            let near = |t: f32| (h / (t * 320.0) - 1.0).abs() < 0.3;
            assert!(near(0.05) || near(0.1), "face height {h}");
            assert!(f.bbox[0] >= -1.0 && f.bbox[3] <= 321.0, "{:?}", f.bbox);
        }
        let flip = labels.iter().find(|l| l.origin == "flip").unwrap();
        let k = flip.faces[0].kps.unwrap();
        // The mirrored left eye is still the one on the image's left.
        assert!(k[0][0] < k[1][0], "{k:?}");
        for l in &labels {
            let x = std::fs::read(da.join(&l.file)).unwrap();
            let y = std::fs::read(db.join(&l.file)).unwrap();
            assert_eq!(x, y, "{} differs between two runs", l.file);
        }
    }

    #[test]
    fn rotation_about_the_centre_keeps_the_centre() {
        let m = about_centre(30.0, true, [10.0, 20.0], [5.0, 6.0], 0.5);
        assert_eq!(apply(&m, [10.0, 20.0]), [5.0, 6.0]);
    }
}
