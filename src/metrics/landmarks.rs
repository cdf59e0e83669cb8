//! Landmark figures: a landmark model's points read from its output, as InsightFace's
//! `model_zoo/landmark.py` and PFLD's authors read them, and NME between two sets of points
//! of one face: the mean point distance over a normaliser, the outer-eye-corner distance for
//! the schemes known by name, the box size otherwise.

use crate::domain::{LandmarkCoords, LandmarkScheme, LandmarkSpec};

/// InsightFace's 3D-68 output width (`1k3d68`): 1,103 rows of (x, y, z), the last 68 the face.
pub(crate) const INSIGHTFACE_3D68_WIDTH: usize = 3309;

/// Why an output cannot be read as points, in words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct NotPoints(String);

/// How one face's row of the output becomes points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PointLayout {
    pub points: usize,
    /// 2 (x, y) or 3 (x, y, z); z is read and left out of NME.
    pub dim: usize,
    pub coords: LandmarkCoords,
    pub scheme: LandmarkScheme,
}

impl PointLayout {
    /// The layout of an output `width` values wide, as `spec` says or as its width implies.
    pub(crate) fn of(width: usize, spec: &LandmarkSpec) -> Result<PointLayout, NotPoints> {
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
    pub(crate) fn decode(&self, row: &[f32], [h, w]: [u32; 2]) -> Vec<[f64; 2]> {
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

impl LandmarkScheme {
    pub(crate) fn name(self) -> &'static str {
        match self {
            LandmarkScheme::Ibug68 => "ibug68",
            LandmarkScheme::Wflw98 => "wflw98",
            LandmarkScheme::Box => "box",
        }
    }

    /// The points whose distance normalises NME, when the scheme has them.
    fn outer_eye_corners(self) -> Option<(usize, usize)> {
        match self {
            LandmarkScheme::Ibug68 => Some((36, 45)),
            LandmarkScheme::Wflw98 => Some((60, 72)),
            LandmarkScheme::Box => None,
        }
    }

    /// The centres of the eye on the photo's left and on its right (the detector's first two
    /// keypoints), when the scheme says which points outline them.
    pub(crate) fn eye_centres(self, points: &[[f64; 2]]) -> Option<[[f64; 2]; 2]> {
        let (left, right) = match self {
            LandmarkScheme::Ibug68 => (36..42, 42..48),
            LandmarkScheme::Wflw98 => (60..68, 68..76),
            LandmarkScheme::Box => return None,
        };
        let centre = |r: std::ops::Range<usize>| {
            let pts = points.get(r)?;
            let n = pts.len() as f64;
            Some([
                pts.iter().map(|p| p[0]).sum::<f64>() / n,
                pts.iter().map(|p| p[1]).sum::<f64>() / n,
            ])
        };
        Some([centre(left)?, centre(right)?])
    }

    /// The normaliser in words, for reports.
    pub(crate) fn describe(self) -> String {
        match self.outer_eye_corners() {
            Some((a, b)) => format!(
                "outer-eye-corner distance of the reference's points ({}: points {a} and {b})",
                self.name()
            ),
            None => "sqrt(w h) of the detected face's box, or of the crop when the images are the crops (no eye corners known for these points)"
                .into(),
        }
    }

    /// The normaliser of one face: from the reference's points, or its box (x1, y1, x2, y2,
    /// in the points' coordinates).
    pub(crate) fn normaliser(self, reference: &[[f64; 2]], bbox: [f64; 4]) -> f64 {
        match self.outer_eye_corners() {
            Some((a, b)) if reference.len() > a.max(b) => dist(reference[a], reference[b]),
            _ => ((bbox[2] - bbox[0]).max(0.0) * (bbox[3] - bbox[1]).max(0.0)).sqrt(),
        }
    }
}

pub(crate) fn dist(a: [f64; 2], b: [f64; 2]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

/// Mean point distance and largest point distance between two sets of one face's points.
pub(crate) fn point_errors(reference: &[[f64; 2]], candidate: &[[f64; 2]]) -> (f64, f64) {
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
