//! Landmark figures: a landmark model's points read from its output, as InsightFace's
//! `model_zoo/landmark.py` and PFLD's authors read them, and NME between two sets of points
//! of one face: the mean point distance over a normaliser, the outer-eye-corner distance for
//! the schemes known by name, the box size otherwise.

use crate::domain::{LandmarkCoords, LandmarkScheme, LandmarkSpec};

/// InsightFace's 3D-68 output width (`1k3d68`): 1,103 rows of (x, y, z), the last 68 the face.
pub const INSIGHTFACE_3D68_WIDTH: usize = 3309;

/// Why an output cannot be read as points, in words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotPoints(String);

/// How one face's row of the output becomes points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointLayout {
    pub points: usize,
    /// 2 (x, y) or 3 (x, y, z); z is read and left out of NME.
    pub dim: usize,
    pub coords: LandmarkCoords,
    pub scheme: LandmarkScheme,
}

impl PointLayout {
    /// The layout of an output `width` values wide, as `spec` says or as its width implies.
    pub fn of(width: usize, spec: &LandmarkSpec) -> Result<PointLayout, NotPoints> {
        let (points, dim) = match spec.points {
            None if width == INSIGHTFACE_3D68_WIDTH => (68, 3),
            None if width >= 2 && width.is_multiple_of(2) => (width / 2, 2),
            None => {
                return Err(NotPoints(format!(
                    "an output {width} wide is not (x, y) pairs: set `model.landmarks.points`"
                )));
            }
            Some(k) if k > 0 && width == 2 * k => (k, 2),
            Some(k) if k > 0 && width >= 3 * k && width.is_multiple_of(3) => (k, 3),
            Some(k) => {
                return Err(NotPoints(format!(
                    "`model.landmarks.points: {k}` does not fit an output {width} wide (2 x points, or rows of 3 ending in the points)"
                )));
            }
        };
        let scheme = spec.scheme.unwrap_or(match points {
            68 => LandmarkScheme::Ibug68,
            98 => LandmarkScheme::Wflw98,
            _ => LandmarkScheme::Box,
        });
        let needed = match scheme {
            LandmarkScheme::Ibug68 => 68,
            LandmarkScheme::Wflw98 => 98,
            LandmarkScheme::Insightface106 => 106,
            LandmarkScheme::Box => 0,
        };
        if needed > 0 && points != needed {
            return Err(NotPoints(format!(
                "scheme `{}` has {needed} points, the output {points}",
                scheme.name()
            )));
        }
        Ok(PointLayout {
            points,
            dim,
            coords: spec.coords.unwrap_or(LandmarkCoords::Signed),
            scheme,
        })
    }

    /// One face's points in crop pixels (`size` [h, w]). InsightFace scales both axes by
    /// the width (`input_size[0] // 2`); its crops are square.
    pub fn decode(&self, row: &[f32], [h, w]: [u32; 2]) -> Vec<[f64; 2]> {
        let rows = row.len() / self.dim;
        let start = rows.saturating_sub(self.points);
        (start..rows)
            .map(|i| {
                let (x, y) = (row[i * self.dim] as f64, row[i * self.dim + 1] as f64);
                match self.coords {
                    LandmarkCoords::Unit => [x * w as f64, y * h as f64],
                    LandmarkCoords::Signed => {
                        let half = (w / 2) as f64;
                        [(x + 1.0) * half, (y + 1.0) * half]
                    }
                }
            })
            .collect()
    }
}

impl PointLayout {
    /// One face's 3D points in crop pixels: (x, y) as [`PointLayout::decode`] reads them, z
    /// scaled as x is (InsightFace's `pred[:, 2] *= input_size // 2`). None for 2D layouts.
    pub fn decode3(&self, row: &[f32], size: [u32; 2]) -> Option<Vec<[f64; 3]>> {
        if self.dim != 3 {
            return None;
        }
        let xy = self.decode(row, size);
        let rows = row.len() / 3;
        let start = rows.saturating_sub(self.points);
        let zscale = match self.coords {
            LandmarkCoords::Unit => size[1] as f64,
            LandmarkCoords::Signed => (size[1] / 2) as f64,
        };
        Some(
            xy.iter()
                .zip(start..rows)
                .map(|(p, i)| [p[0], p[1], row[i * 3 + 2] as f64 * zscale])
                .collect(),
        )
    }
}

/// The head rotation that takes one set of a face's 3D points to another, as (pitch, yaw,
/// roll) in degrees, estimated as InsightFace estimates a face's pose from its 3D-68
/// points (`utils/transform.py`): a least-squares 3D affine map (`estimate_affine_matrix_3d23d`),
/// its first two rows normalised and crossed into a rotation (`P2sRt`), then Euler angles
/// (`matrix2angle`). InsightFace maps from its mean shape; from the reference's own points
/// it gives the candidate's pose error. None when the points are degenerate.
pub fn rotation_between(from: &[[f64; 3]], to: &[[f64; 3]]) -> Option<[f64; 3]> {
    if from.len() != to.len() || from.len() < 4 {
        return None;
    }
    // Normal equations of X_homo P^T = Y: (X^T X) P^T = X^T Y, 4 x 4 by 4 x 3.
    let mut a = [[0.0f64; 7]; 4];
    for (x, y) in from.iter().zip(to) {
        let h = [x[0], x[1], x[2], 1.0];
        for r in 0..4 {
            for c in 0..4 {
                a[r][c] += h[r] * h[c];
            }
            for c in 0..3 {
                a[r][4 + c] += h[r] * y[c];
            }
        }
    }
    // Gauss-Jordan with partial pivoting.
    for col in 0..4 {
        let pivot = (col..4).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        let d = a[col][col];
        a[col].iter_mut().for_each(|v| *v /= d);
        for r in 0..4 {
            if r != col {
                let f = a[r][col];
                let src = a[col];
                a[r].iter_mut().zip(src).for_each(|(v, s)| *v -= f * s);
            }
        }
    }
    // Row k of P (3 x 4) is column k of the solution; its first three entries are R's row.
    let row = |k: usize| [a[0][4 + k], a[1][4 + k], a[2][4 + k]];
    let unit = |v: [f64; 3]| {
        let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        (n > 1e-12).then(|| v.map(|x| x / n))
    };
    let (r1, r2) = (unit(row(0))?, unit(row(1))?);
    let r3 = [
        r1[1] * r2[2] - r1[2] * r2[1],
        r1[2] * r2[0] - r1[0] * r2[2],
        r1[0] * r2[1] - r1[1] * r2[0],
    ];
    let r = [r1, r2, r3];
    let sy = (r[0][0] * r[0][0] + r[1][0] * r[1][0]).sqrt();
    let (x, y, z) = if sy >= 1e-6 {
        (
            r[2][1].atan2(r[2][2]),
            (-r[2][0]).atan2(sy),
            r[1][0].atan2(r[0][0]),
        )
    } else {
        ((-r[1][2]).atan2(r[1][1]), (-r[2][0]).atan2(sy), 0.0)
    };
    Some([x, y, z].map(f64::to_degrees))
}

pub use crate::domain::dist;

/// Mean point distance and largest point distance between two sets of one face's points.
pub fn point_errors(reference: &[[f64; 2]], candidate: &[[f64; 2]]) -> (f64, f64) {
    let d: Vec<f64> = reference
        .iter()
        .zip(candidate)
        .map(|(a, b)| dist(*a, *b))
        .collect();
    let mean = d.iter().sum::<f64>() / d.len().max(1) as f64;
    (mean, d.iter().copied().fold(0.0, f64::max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_follow_the_output_width() {
        let any = LandmarkSpec::default();
        let l = PointLayout::of(136, &any).unwrap();
        assert_eq!((l.points, l.dim, l.scheme), (68, 2, LandmarkScheme::Ibug68));
        let l = PointLayout::of(212, &any).unwrap();
        assert_eq!((l.points, l.scheme), (106, LandmarkScheme::Box));
        let l = PointLayout::of(INSIGHTFACE_3D68_WIDTH, &any).unwrap();
        assert_eq!((l.points, l.dim), (68, 3));
        assert!(PointLayout::of(7, &any).is_err());
        let five = LandmarkSpec {
            points: Some(5),
            ..Default::default()
        };
        assert!(PointLayout::of(136, &five).is_err());
        let named = LandmarkSpec {
            scheme: Some(LandmarkScheme::Ibug68),
            ..Default::default()
        };
        assert!(PointLayout::of(212, &named).is_err());
    }

    #[test]
    fn decoding_reads_unit_and_signed_coordinates_and_the_last_rows() {
        let unit = PointLayout {
            points: 2,
            dim: 2,
            coords: LandmarkCoords::Unit,
            scheme: LandmarkScheme::Box,
        };
        assert_eq!(
            unit.decode(&[0.5, 0.25, 1.0, 0.0], [112, 112]),
            vec![[56.0, 28.0], [112.0, 0.0]]
        );
        // 3D: three rows, the last two are the face's; signed, 192 wide: (p + 1) * 96.
        let signed = PointLayout {
            points: 2,
            dim: 3,
            coords: LandmarkCoords::Signed,
            scheme: LandmarkScheme::Box,
        };
        assert_eq!(
            signed.decode(&[9.0, 9.0, 9.0, 0.0, -1.0, 5.0, 1.0, 0.5, 5.0], [192, 192]),
            vec![[96.0, 0.0], [192.0, 144.0]]
        );
    }

    /// Points rotated by known angles come back as those angles, in InsightFace's
    /// convention (R = Rz(roll) Ry(yaw) Rx(pitch), applied to the fixed points).
    #[test]
    fn rotation_between_recovers_known_angles() {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % 2000) as f64 / 10.0 - 100.0
        };
        let from: Vec<[f64; 3]> = (0..68).map(|_| [next(), next(), next()]).collect();
        let (p, y, r) = (10f64.to_radians(), -20f64.to_radians(), 5f64.to_radians());
        let rx = [
            [1.0, 0.0, 0.0],
            [0.0, p.cos(), -p.sin()],
            [0.0, p.sin(), p.cos()],
        ];
        let ry = [
            [y.cos(), 0.0, y.sin()],
            [0.0, 1.0, 0.0],
            [-y.sin(), 0.0, y.cos()],
        ];
        let rz = [
            [r.cos(), -r.sin(), 0.0],
            [r.sin(), r.cos(), 0.0],
            [0.0, 0.0, 1.0],
        ];
        let mul = |a: [[f64; 3]; 3], b: [[f64; 3]; 3]| {
            let mut m = [[0.0; 3]; 3];
            for i in 0..3 {
                for j in 0..3 {
                    m[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
                }
            }
            m
        };
        let rot = mul(rz, mul(ry, rx));
        // Scaled and shifted too, as a crop would: neither changes the rotation.
        let to: Vec<[f64; 3]> = from
            .iter()
            .map(|v| {
                let m = |i: usize| 1.7 * (0..3).map(|k| rot[i][k] * v[k]).sum::<f64>();
                [m(0) + 40.0, m(1) - 3.0, m(2) + 8.0]
            })
            .collect();
        let got = rotation_between(&from, &to).unwrap();
        for (g, want) in got.iter().zip([10.0, -20.0, 5.0]) {
            assert!((g - want).abs() < 1e-6, "{got:?}");
        }
        let same = rotation_between(&from, &from).unwrap();
        assert!(same.iter().all(|a| a.abs() < 1e-9), "{same:?}");
        assert!(rotation_between(&from[..3], &to[..3]).is_none());
        assert!(rotation_between(&vec![[1.0, 2.0, 3.0]; 10], &to[..10]).is_none());
    }

    #[test]
    fn insightface_106_eyes_are_its_markups() {
        let mut pts = vec![[0.0, 0.0]; 106];
        for i in [33, 35, 36, 37, 39, 40, 41, 42] {
            pts[i] = [30.0, 40.0];
        }
        for i in [87, 89, 90, 91, 93, 94, 95, 96] {
            pts[i] = [70.0, 40.0];
        }
        pts[35] = [20.0, 40.0];
        pts[93] = [80.0, 40.0];
        let s = LandmarkScheme::Insightface106;
        assert_eq!(s.normaliser(&pts, [0.0; 4]), 60.0);
        let [l, r] = s.eye_centres(&pts).unwrap();
        assert!((l[0] - 28.75).abs() < 1e-9 && (r[0] - 71.25).abs() < 1e-9);
        let any = LandmarkSpec {
            scheme: Some(s),
            ..Default::default()
        };
        assert_eq!(PointLayout::of(212, &any).unwrap().scheme, s);
        assert!(PointLayout::of(136, &any).is_err());
    }

    #[test]
    fn nme_uses_the_eye_corners_or_the_box() {
        let mut pts = vec![[0.0, 0.0]; 68];
        pts[36] = [10.0, 50.0];
        pts[45] = [50.0, 50.0];
        assert_eq!(
            LandmarkScheme::Ibug68.normaliser(&pts, [0.0, 0.0, 100.0, 100.0]),
            40.0
        );
        assert_eq!(
            LandmarkScheme::Box.normaliser(&pts, [0.0, 0.0, 100.0, 64.0]),
            80.0
        );
        let moved: Vec<[f64; 2]> = pts.iter().map(|p| [p[0] + 3.0, p[1] + 4.0]).collect();
        assert_eq!(point_errors(&pts, &moved), (5.0, 5.0));
    }
}
