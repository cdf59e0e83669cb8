//! A detector head described as data: where candidates come from, how their boxes, scores
//! and landmarks are encoded, which outputs (and channels of them) hold each part, and how
//! NMS merges them. One generic decoder (`facebuild_detect::head`) reads every head; a
//! family is a preset file in `presets/`, and a manifest overrides any field of it or
//! writes a head with no preset at all (see docs/detectors.md).

use serde::{Deserialize, Serialize};

/// A complete head: every part the decoder needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadSpec {
    /// Where the candidates' anchors come from.
    pub anchors: Anchors,
    /// How a candidate's four box values become a box.
    pub boxes: BoxEncoding,
    /// How the score columns become one face score.
    pub scores: Scores,
    /// The landmark points, when the head predicts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landmarks: Option<Landmarks>,
    /// Which outputs, and which channels of them, hold each part.
    pub outputs: Binding,
    /// How overlapping detections are merged.
    #[serde(default)]
    pub nms: NmsKind,
    /// How the family's authors feed it; `init` writes it as the preprocessing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<HeadInput>,
    /// The score threshold and NMS IoU its authors use; `init` writes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<HeadDefaults>,
}

/// Post-processing figures a family's authors use.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadDefaults {
    /// Score threshold.
    pub score_threshold: f32,
    /// NMS IoU.
    pub nms_iou: f32,
}

/// Candidate anchors, in the network's output order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Anchors {
    /// One or more anchors per feature-map cell, per stride (SCRFD, YuNet, YOLO).
    Grid(Grid),
    /// SSD prior boxes (RetinaFace, FaceBoxes, SSD).
    Priors(Priors),
    /// MediaPipe's `SsdAnchorsCalculator` (BlazeFace).
    Mediapipe(MediapipeAnchors),
    /// The outputs are already decoded boxes (UltraFace, YOLOv8-face exports).
    None,
}

/// Per-stride grids of anchor points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grid {
    /// Feature strides, finest first.
    pub strides: Vec<u32>,
    /// Anchors per cell; when unset, the output rows decide it (SCRFD exports have 1 or 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_cell: Option<usize>,
    /// Where in the cell the anchor sits, in cells: 0 (SCRFD, YuNet, YOLO) or 0.5.
    #[serde(default)]
    pub offset: f32,
    /// YOLO anchor sizes, (w, h) pixels per anchor, one list per stride; without them an
    /// anchor is one stride square.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sizes: Option<Vec<Vec<[f32; 2]>>>,
    /// The anchor index varies slowest (YOLO's `[1, A, H, W, C]`), not fastest.
    #[serde(default)]
    pub anchors_outer: bool,
}

/// SSD prior boxes: per step, `min_sizes` squares centred on each cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Priors {
    /// Feature steps, finest first.
    pub steps: Vec<u32>,
    /// Prior sizes in pixels, one list per step.
    pub min_sizes: Vec<Vec<f32>>,
    /// Clip priors to the image ([0, 1]).
    #[serde(default)]
    pub clip: bool,
    /// FaceBoxes' densification: priors of `min_size` repeated on a `grid` x `grid` lattice
    /// of each cell (4 at 32, 2 at 64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub densify: Vec<Densify>,
}

/// One densified prior size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Densify {
    /// The prior size it applies to.
    pub min_size: f32,
    /// Offsets per cell side.
    pub grid: u32,
}

/// MediaPipe's SSD anchor options (`ssd_anchors_calculator.proto`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediapipeAnchors {
    /// Layers (entries of `strides`).
    pub num_layers: usize,
    /// Smallest and largest anchor scale.
    pub min_scale: f32,
    /// Largest anchor scale.
    pub max_scale: f32,
    /// Stride per layer; equal neighbours share one feature map.
    pub strides: Vec<u32>,
    /// Aspect ratios of each layer's anchors.
    pub aspect_ratios: Vec<f32>,
    /// Anchor centre within the cell.
    #[serde(default = "half")]
    pub offset: f32,
    /// Every anchor has size 1 x 1 (BlazeFace).
    #[serde(default)]
    pub fixed_anchor_size: bool,
    /// An extra anchor per scale, at the geometric mean of this scale and the next.
    #[serde(default)]
    pub interpolated_scale_aspect_ratio: f32,
    /// The lowest layer gets three fixed anchors (scale 0.1, ratios 1, 2, 0.5).
    #[serde(default)]
    pub reduce_boxes_in_lowest_layer: bool,
}

fn half() -> f32 {
    0.5
}

/// How a candidate's four box values are encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum BoxEncoding {
    /// Distances left, top, right, bottom from the anchor point, in strides (SCRFD).
    Distance,
    /// Centre offset times variance times prior size, size = prior x exp(v x variance)
    /// (RetinaFace, SSD, FaceBoxes).
    CenterVariance {
        /// Centre and size variances.
        variance: [f32; 2],
    },
    /// Centre = anchor + v x stride, size = exp(v) x stride (YuNet).
    CenterExp,
    /// YOLOv5: centre = (2 sig(v) - 0.5) x stride + cell, size = (2 sig(v))^2 x anchor.
    Yolo {
        /// Apply the sigmoid (false when the export already did).
        #[serde(default = "yes")]
        sigmoid: bool,
    },
    /// Centre = v / scale x anchor size + anchor centre, size = v / scale x anchor size
    /// (MediaPipe's `TensorsToDetections`, BlazeFace).
    Scaled {
        /// x, y, w, h scales (the input size for BlazeFace).
        scale: [f32; 4],
    },
    /// The network's boxes are final.
    Decoded {
        /// Corners (x1, y1, x2, y2) or centre and size (cx, cy, w, h).
        form: BoxForm,
        /// Values in [0, 1] of the input size instead of pixels.
        #[serde(default)]
        normalized: bool,
    },
}

fn yes() -> bool {
    true
}

/// The form of decoded boxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoxForm {
    /// x1, y1, x2, y2.
    Corners,
    /// cx, cy, w, h.
    Center,
}

/// Score columns to one face score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scores {
    /// Applied to the class (and objectness) values.
    #[serde(default)]
    pub activation: Activation,
    /// How class and objectness combine.
    #[serde(default)]
    pub combine: Combine,
    /// The face class's column among the class channels.
    #[serde(default)]
    pub class: usize,
}

/// A score activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Already applied in the graph.
    #[default]
    None,
    /// 1 / (1 + e^-x).
    Sigmoid,
    /// Over the class channels.
    Softmax,
}

/// How class and objectness combine into the face score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// The class score alone.
    #[default]
    Class,
    /// objectness x class (YOLO).
    ObjTimesClass,
    /// sqrt(class x objectness), each clamped to [0, 1] (OpenCV's YuNet).
    SqrtClassObj,
}

/// Landmark points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Landmarks {
    /// Points per face.
    pub count: usize,
    /// 2 for (x, y), 3 for (x, y, visibility) as YOLOv8-face writes them.
    #[serde(default = "two")]
    pub values_per_point: usize,
    /// How a point is encoded relative to its anchor.
    pub encoding: PointEncoding,
    /// Where InsightFace's five points (left eye, right eye, nose, left and right mouth
    /// corner) are among the points; unset when the head lacks them (BlazeFace's six
    /// keypoints have a mouth centre), which rules out alignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub five: Option<[usize; 5]>,
}

fn two() -> usize {
    2
}

/// How a landmark value is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PointEncoding {
    /// anchor point + v x stride (SCRFD, YuNet).
    Stride,
    /// anchor centre + v x variance x prior size (RetinaFace).
    Variance,
    /// anchor point + v x anchor size (YOLOv5-face).
    AnchorSize,
    /// anchor centre + v / scale x anchor size (BlazeFace).
    Scaled,
    /// Final pixel coordinates.
    Decoded,
    /// Final coordinates in [0, 1] of the input size.
    DecodedNormalized,
}

/// Which output tensors hold each part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// `rows`: `[.., N, C]`, every leading dim folded (also `[1, A, H, W, C]`);
    /// `channels_first`: `[1, C, N]` (YOLOv8).
    #[serde(default)]
    pub layout: RowLayout,
    /// The four box values.
    pub boxes: Part,
    /// The class score(s).
    pub scores: Part,
    /// Objectness, when the head has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objectness: Option<Part>,
    /// Landmark values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landmarks: Option<Part>,
}

/// Rows and channels of an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowLayout {
    /// `[.., N, C]`.
    #[default]
    Rows,
    /// `[1, C, N]`.
    ChannelsFirst,
}

/// Where one part lives: a tensor and a channel range of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    /// The tensor(s).
    pub tensor: TensorRef,
    /// `[start, end)` channels; all when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<[usize; 2]>,
}

/// A tensor by name, or every output with a given channel count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TensorRef {
    /// An output name; `{stride}` in it means one output per stride (`cls_{stride}`).
    Name(String),
    /// Every output whose channel count is `columns`, most rows (finest stride) first.
    Columns {
        /// The channel count.
        columns: usize,
        /// One such output per stride (a raw per-stride head), not one for all candidates.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        per_stride: bool,
    },
}

/// How overlapping detections are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NmsKind {
    /// Keep the best, drop overlaps.
    #[default]
    Greedy,
    /// Average each cluster weighted by score, keep the best's score (MediaPipe's
    /// `WEIGHTED`, BlazeFace).
    Weighted,
}

/// How the family's authors feed the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadInput {
    /// RGB or BGR.
    pub color: crate::domain::ColorOrder,
    /// Per-channel mean.
    pub mean: Vec<f32>,
    /// Per-channel std.
    pub std: Vec<f32>,
    /// The size the family was trained at, [h, w].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<[u32; 2]>,
    /// What the family's exports disagree on, for `init` to write as a CHECK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
}

/// The presets shipped in the repository, by name: each is a head in YAML.
pub const PRESETS: &[(&str, &str)] = &[
    ("scrfd", include_str!("../presets/scrfd.yaml")),
    ("retinaface", include_str!("../presets/retinaface.yaml")),
    (
        "retinaface_concat",
        include_str!("../presets/retinaface_concat.yaml"),
    ),
    ("yunet", include_str!("../presets/yunet.yaml")),
    ("yolov5_face", include_str!("../presets/yolov5_face.yaml")),
    (
        "yolov5_face_cat",
        include_str!("../presets/yolov5_face_cat.yaml"),
    ),
    ("yolov8_face", include_str!("../presets/yolov8_face.yaml")),
    (
        "blazeface_front",
        include_str!("../presets/blazeface_front.yaml"),
    ),
    (
        "blazeface_back",
        include_str!("../presets/blazeface_back.yaml"),
    ),
    ("faceboxes", include_str!("../presets/faceboxes.yaml")),
    ("ultraface", include_str!("../presets/ultraface.yaml")),
];

/// The presets `init` tries on a detector it has no native decoder for, most specific
/// binding first (a decoded-boxes head binds any row count, so it comes last).
pub const INIT_ORDER: &[&str] = &[
    "yunet",
    "yolov5_face",
    "yolov8_face",
    "retinaface_concat",
    "blazeface_front",
    "blazeface_back",
    "yolov5_face_cat",
    "faceboxes",
    "ultraface",
];

/// Names of the shipped presets.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}

/// Fields whose value is one variant of an enum: an override naming another variant
/// replaces the preset's instead of merging into it.
const VARIANT_FIELDS: &[&str] = &["anchors", "boxes"];

/// Why a head cannot be built: an unknown preset, or a field that does not fit (its path).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct HeadError(pub String);

/// A preset's head, with `overrides` merged into it field by field (maps merge, anything
/// else replaces), or the head `overrides` alone describes when `preset` is None.
pub fn resolve(
    preset: Option<&str>,
    overrides: Option<&serde_json::Value>,
) -> Result<HeadSpec, HeadError> {
    let mut value = match preset {
        Some(name) => {
            let (_, text) = PRESETS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
                HeadError(format!(
                    "unknown detector preset `{name}`; the presets are {}",
                    preset_names().join(", ")
                ))
            })?;
            serde_saphyr::from_str::<serde_json::Value>(text)
                .map_err(|e| HeadError(format!("preset `{name}` does not parse: {e}")))?
        }
        None => serde_json::Value::Object(Default::default()),
    };
    if let Some(o) = overrides {
        merge(&mut value, o, 0);
    }
    serde_path_to_error::deserialize::<_, HeadSpec>(value).map_err(|e| {
        let at = e.path().to_string();
        HeadError(format!("`detector.head.{at}`: {}", e.inner()))
    })
}

fn merge(base: &mut serde_json::Value, over: &serde_json::Value, depth: usize) {
    use serde_json::Value::Object;
    match (base, over) {
        (Object(b), Object(o)) => {
            for (k, v) in o {
                let replace = depth == 0
                    && VARIANT_FIELDS.contains(&k.as_str())
                    && match (b.get(k), v) {
                        (Some(Object(bv)), Object(ov)) => {
                            ov.keys().next().is_some_and(|ok| !bv.contains_key(ok))
                        }
                        _ => true,
                    };
                match b.get_mut(k) {
                    Some(slot) if !replace => merge(slot, v, depth + 1),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses_into_a_complete_head() {
        for (name, _) in PRESETS {
            resolve(Some(name), None).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn overrides_merge_into_a_preset_and_a_new_variant_replaces() {
        let o: serde_json::Value = serde_json::json!({
            "scores": {"class": 1},
            "anchors": {"grid": {"offset": 0.5}},
        });
        let h = resolve(Some("yunet"), Some(&o)).unwrap();
        assert_eq!(h.scores.class, 1);
        assert_eq!(h.scores.combine, Combine::SqrtClassObj);
        let Anchors::Grid(g) = &h.anchors else {
            panic!()
        };
        assert_eq!((g.offset, g.strides.clone()), (0.5, vec![8, 16, 32]));
        let o = serde_json::json!({"anchors": {"priors": {"steps": [8], "min_sizes": [[16.0]]}}});
        let h = resolve(Some("yunet"), Some(&o)).unwrap();
        assert!(matches!(h.anchors, Anchors::Priors(_)));
        let o = serde_json::json!({"anchors": "none"});
        assert_eq!(
            resolve(Some("yunet"), Some(&o)).unwrap().anchors,
            Anchors::None
        );
    }

    #[test]
    fn a_head_without_a_preset_must_be_complete_and_says_what_is_missing() {
        let e = resolve(None, Some(&serde_json::json!({"anchors": "none"}))).unwrap_err();
        assert!(e.0.contains("boxes"), "{e}");
        let e = resolve(Some("nope"), None).unwrap_err();
        assert!(e.0.contains("yunet"), "{e}");
    }
}
