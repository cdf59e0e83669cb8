//! What a model's outputs look like: an embedding, SCRFD's or RetinaFace's heads, or
//! something else. `facebuild init` guesses the task from it, and the manifest's
//! `detector.family` is checked against it before anything runs.

use super::inspect::{DimInfo, TensorInfo};
use crate::domain::DetectorFamily;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputLayout {
    /// One `[N, 128|512]` output: a face embedding.
    Embedding { dim: i64 },
    /// Per stride a score (N x 1), a box (N x 4) and optionally keypoints (N x 10) output.
    Scrfd { levels: usize, keypoints: bool },
    /// Boxes (N x 4), two-class scores (N x 2) and optionally landmarks (N x 10).
    Retinaface { landmarks: bool },
    /// A first output `[N, W]` of face landmarks: W = 136 (68 points), 196 (98), 212 (106)
    /// or 3309 (InsightFace's 3D-68).
    Landmarks { width: i64 },
    /// One `[N, 3]` output of a 96 x 96 model: InsightFace's genderage (set by `init`, which
    /// sees the input; the outputs alone could be any 3-class head).
    Attribute,
    /// Anything else, or outputs whose last dim is not fixed.
    Other,
}

impl OutputLayout {
    /// Classify by the outputs' ranks and fixed last dims (the anchor dim may be symbolic).
    pub fn of(outputs: &[TensorInfo]) -> OutputLayout {
        let last: Option<Vec<i64>> = outputs
            .iter()
            .map(|o| match o.shape.as_deref() {
                Some([.., DimInfo::Static(c)]) => Some(*c),
                _ => None,
            })
            .collect();
        let Some(last) = last else {
            return OutputLayout::Other;
        };
        let rank_ok = outputs
            .iter()
            .all(|o| o.shape.as_ref().is_some_and(|s| (2..=3).contains(&s.len())));
        if outputs.len() == 1
            && outputs[0].shape.as_ref().is_some_and(|s| s.len() == 2)
            && matches!(last[0], 128 | 512)
        {
            return OutputLayout::Embedding { dim: last[0] };
        }
        // Landmark models may add feature maps (PFLD-106): only the first output counts.
        if outputs[0].shape.as_ref().is_some_and(|s| s.len() == 2)
            && matches!(last[0], 136 | 196 | 212 | 3309)
        {
            return OutputLayout::Landmarks { width: last[0] };
        }
        if !rank_ok {
            return OutputLayout::Other;
        }
        let count = |c: i64| last.iter().filter(|&&x| x == c).count();
        let (c1, c2, c4, c10) = (count(1), count(2), count(4), count(10));
        if c1 > 0
            && c1 == c4
            && (c10 == 0 || c10 == c1)
            && c1 + c4 + c10 == last.len()
            && matches!(c1, 3 | 5)
        {
            return OutputLayout::Scrfd {
                levels: c1,
                keypoints: c10 > 0,
            };
        }
        if c4 == 1 && c2 == 1 && c10 <= 1 && c2 + c4 + c10 == last.len() {
            return OutputLayout::Retinaface {
                landmarks: c10 == 1,
            };
        }
        OutputLayout::Other
    }

    pub fn family(&self) -> Option<DetectorFamily> {
        match self {
            OutputLayout::Scrfd { .. } => Some(DetectorFamily::Scrfd),
            OutputLayout::Retinaface { .. } => Some(DetectorFamily::Retinaface),
            _ => None,
        }
    }

    /// In words, for comments and errors.
    pub fn describe(&self) -> String {
        match self {
            OutputLayout::Embedding { dim } => format!("one [N, {dim}] output: an embedding"),
            OutputLayout::Scrfd { levels, keypoints } => format!(
                "{} outputs in SCRFD's layout: per stride ({levels}) a score (N x 1), a box (N x 4){}",
                levels * if *keypoints { 3 } else { 2 },
                if *keypoints {
                    " and keypoints (N x 10)"
                } else {
                    ""
                }
            ),
            OutputLayout::Retinaface { landmarks } => format!(
                "RetinaFace's outputs: boxes (N x 4), scores (N x 2){}",
                if *landmarks {
                    " and landmarks (N x 10)"
                } else {
                    ""
                }
            ),
            OutputLayout::Landmarks { width: 3309 } => {
                "one [N, 3309] output first: InsightFace's 3D-68 landmarks".into()
            }
            OutputLayout::Landmarks { width } => format!(
                "one [N, {width}] output first: {} landmark points (x, y)",
                width / 2
            ),
            OutputLayout::Attribute => {
                "one [N, 3] output of a 96x96 input: InsightFace's genderage (gender logits, age / 100)".into()
            }
            OutputLayout::Other => {
                "neither an embedding, a known detector head nor landmarks".into()
            }
        }
    }
}

/// The outputs as `name [d0, d1, ...]`, for messages.
pub fn shapes(outputs: &[TensorInfo]) -> String {
    outputs
        .iter()
        .map(|o| {
            let dims = o
                .shape
                .as_ref()
                .map(|s| {
                    s.iter()
                        .map(|d| match d {
                            DimInfo::Static(v) => v.to_string(),
                            DimInfo::Symbolic(n) => n.clone(),
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|| "?".into());
            format!("{} [{dims}]", o.name)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, dims: &[i64]) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            elem_type: "float32".into(),
            shape: Some(
                dims.iter()
                    .map(|&d| {
                        if d < 0 {
                            DimInfo::Symbolic("n".into())
                        } else {
                            DimInfo::Static(d)
                        }
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn classifies_the_insightface_families() {
        assert_eq!(
            OutputLayout::of(&[t("fc1", &[1, 512])]),
            OutputLayout::Embedding { dim: 512 }
        );
        let scrfd: Vec<TensorInfo> = [1, 1, 1, 4, 4, 4, 10, 10, 10]
            .iter()
            .map(|&c| t("o", &[-1, c]))
            .collect();
        assert_eq!(
            OutputLayout::of(&scrfd),
            OutputLayout::Scrfd {
                levels: 3,
                keypoints: true
            }
        );
        assert_eq!(
            OutputLayout::of(&scrfd[..6]),
            OutputLayout::Scrfd {
                levels: 3,
                keypoints: false
            }
        );
        let retina = [
            t("loc", &[1, -1, 4]),
            t("conf", &[1, -1, 2]),
            t("landms", &[1, -1, 10]),
        ];
        assert_eq!(
            OutputLayout::of(&retina),
            OutputLayout::Retinaface { landmarks: true }
        );
        // Landmark regressors: 2d106det, 1k3d68, PFLD-106 with its feature map after.
        assert_eq!(
            OutputLayout::of(&[t("lm", &[1, 212])]),
            OutputLayout::Landmarks { width: 212 }
        );
        assert_eq!(
            OutputLayout::of(&[t("lm", &[1, 3309])]),
            OutputLayout::Landmarks { width: 3309 }
        );
        assert_eq!(
            OutputLayout::of(&[t("lm", &[1, 212]), t("feat", &[1, 64, 28, 28])]),
            OutputLayout::Landmarks { width: 212 }
        );
        // A two-output embedder, a symbolic last dim, a 5-point regressor: something else.
        assert_eq!(OutputLayout::of(&[t("lm", &[1, 10])]), OutputLayout::Other);
        assert_eq!(
            OutputLayout::of(&[t("a", &[1, 512]), t("b", &[1, 512])]),
            OutputLayout::Other
        );
        assert_eq!(OutputLayout::of(&[t("x", &[1, -1])]), OutputLayout::Other);
    }
}
