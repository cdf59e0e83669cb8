//! Image fidelity of one picture against another (a swapper's output against the ONNX
//! original's): PSNR, SSIM and the largest pixel difference, on 0..255 RGB planes.

/// An RGB picture as three planes of `h x w` values in 0..255.
pub struct Planes<'a> {
    pub data: &'a [f32],
    pub h: usize,
    pub w: usize,
}

impl Planes<'_> {
    fn luma(&self) -> Vec<f64> {
        let n = self.h * self.w;
        (0..n)
            .map(|i| {
                0.299 * self.data[i] as f64
                    + 0.587 * self.data[n + i] as f64
                    + 0.114 * self.data[2 * n + i] as f64
            })
            .collect()
    }
}

/// PSNR against `reference` on 0..255 values, dB; identical pictures count as 100 dB (a
/// finite figure a gate and a mean can use).
pub fn psnr(reference: &[f32], other: &[f32]) -> f64 {
    let n = reference.len().min(other.len()).max(1);
    let mse = reference
        .iter()
        .zip(other)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum::<f64>()
        / n as f64;
    if mse <= 1e-10 {
        100.0
    } else {
        (10.0 * (255.0f64 * 255.0 / mse).log10()).min(100.0)
    }
}

/// The largest |difference| of two pictures' values.
pub fn max_abs_diff(reference: &[f32], other: &[f32]) -> f64 {
    reference
        .iter()
        .zip(other)
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .fold(0.0, f64::max)
}

/// SSIM (Wang, Bovik, Sheikh, Simoncelli 2004) on luma: an 11 x 11 Gaussian window of
/// sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255, the mean over every position where the window
/// fits (scikit-image's `gaussian_weights=True` and the paper's setting).
pub fn ssim(reference: &Planes, other: &Planes) -> f64 {
    let (h, w) = (reference.h, reference.w);
    if h < 11 || w < 11 || other.h != h || other.w != w {
        return f64::NAN;
    }
    let (x, y) = (reference.luma(), other.luma());
    let g: Vec<f64> = {
        let raw: Vec<f64> = (0..11)
            .map(|i| (-((i as f64 - 5.0).powi(2)) / (2.0 * 1.5 * 1.5)).exp())
            .collect();
        let s: f64 = raw.iter().sum();
        raw.iter().map(|v| v / s).collect()
    };
    // Separable Gaussian filtering of a plane, "valid" positions only.
    let filter = |p: &[f64]| -> Vec<f64> {
        let (oh, ow) = (h - 10, w - 10);
        let mut rows = vec![0.0; h * ow];
        for r in 0..h {
            for c in 0..ow {
                rows[r * ow + c] = (0..11).map(|k| g[k] * p[r * w + c + k]).sum();
            }
        }
        let mut out = vec![0.0; oh * ow];
        for r in 0..oh {
            for c in 0..ow {
                out[r * ow + c] = (0..11).map(|k| g[k] * rows[(r + k) * ow + c]).sum();
            }
        }
        out
    };
    let prod = |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(p, q)| p * q).collect() };
    let (mx, my) = (filter(&x), filter(&y));
    let (sxx, syy, sxy) = (
        filter(&prod(&x, &x)),
        filter(&prod(&y, &y)),
        filter(&prod(&x, &y)),
    );
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let n = mx.len();
    (0..n)
        .map(|i| {
            let (ux, uy) = (mx[i], my[i]);
            let (vx, vy, cxy) = (sxx[i] - ux * ux, syy[i] - uy * uy, sxy[i] - ux * uy);
            ((2.0 * ux * uy + c1) * (2.0 * cxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        })
        .sum::<f64>()
        / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture(h: usize, w: usize, f: impl Fn(usize, usize, usize) -> f32) -> Vec<f32> {
        let mut v = Vec::with_capacity(3 * h * w);
        for c in 0..3 {
            for r in 0..h {
                for x in 0..w {
                    v.push(f(c, r, x));
                }
            }
        }
        v
    }

    #[test]
    fn identical_pictures_are_perfect_and_noise_lowers_every_figure() {
        let a = picture(32, 32, |c, r, x| ((r * 7 + x * 3 + c * 50) % 256) as f32);
        let pa = Planes {
            data: &a,
            h: 32,
            w: 32,
        };
        assert_eq!(psnr(&a, &a), 100.0);
        assert!((ssim(&pa, &pa) - 1.0).abs() < 1e-12);
        assert_eq!(max_abs_diff(&a, &a), 0.0);
        // A uniform offset of 5 grey levels: MSE 25, PSNR 20 log10(255 / 5) = 34.15 dB.
        let b: Vec<f32> = a.iter().map(|v| v + 5.0).collect();
        assert!((psnr(&a, &b) - 34.151).abs() < 1e-3, "{}", psnr(&a, &b));
        assert_eq!(max_abs_diff(&a, &b), 5.0);
        let pb = Planes {
            data: &b,
            h: 32,
            w: 32,
        };
        let s = ssim(&pa, &pb);
        assert!(s < 1.0 && s > 0.99, "{s}");
        // Structure destroyed: SSIM falls far.
        let c = picture(32, 32, |_, r, x| if (r + x) % 2 == 0 { 0.0 } else { 255.0 });
        let pc = Planes {
            data: &c,
            h: 32,
            w: 32,
        };
        assert!(ssim(&pa, &pc) < 0.2);
        // Too small for the window: not measured.
        let tiny = picture(8, 8, |_, _, _| 1.0);
        let pt = Planes {
            data: &tiny,
            h: 8,
            w: 8,
        };
        assert!(ssim(&pt, &pt).is_nan());
    }
}
