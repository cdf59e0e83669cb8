//! Value types that the lower layers (preprocess, detect, cache) and the manifest share:
//! how images are fed, how a detector is decoded, where a step ran. They live here, below
//! the manifest, so that no lower layer imports it; the manifest's schema re-exports them.

use camino::Utf8PathBuf;
use serde::{Deserialize, Serialize};

pub use crate::head;

/// A detector family and its post-processing: decoding, score threshold, NMS.
///
/// `family: scrfd | retinaface` selects the native decoders; `preset:` and/or `head:`
/// describe any other head as data ([`head::HeadSpec`]), decoded by the generic decoder.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(try_from = "RawDetectorSpec")]
pub struct DetectorSpec {
    /// Which decoder: a native family, or `head` for a head described as data.
    pub family: DetectorFamily,
    /// The preset the head started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// The complete head (the preset with the manifest's overrides), for `family: head`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<Box<head::HeadSpec>>,
    /// Detections scoring below this are dropped before NMS.
    pub score_threshold: f32,
    /// IoU above which NMS suppresses the lower-scoring box.
    pub nms_iou: f32,
    /// Feature strides; default: SCRFD 8/16/32 (8..128 for 5-level heads), RetinaFace 8/16/32.
    #[serde(default)]
    pub strides: Option<Vec<u32>>,
    /// RetinaFace prior sizes per stride (default [[16, 32], [64, 128], [256, 512]]).
    #[serde(default)]
    pub min_sizes: Option<Vec<Vec<f32>>>,
    /// RetinaFace box variances (default [0.1, 0.2]).
    #[serde(default)]
    pub variance: Option<[f32; 2]>,
}

/// The manifest's spelling of a [`DetectorSpec`], before the preset is merged.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDetectorSpec {
    #[serde(default)]
    family: Option<DetectorFamily>,
    #[serde(default)]
    preset: Option<String>,
    #[serde(default)]
    head: Option<serde_json::Value>,
    #[serde(default = "default_score_threshold")]
    score_threshold: f32,
    #[serde(default = "default_nms_iou")]
    nms_iou: f32,
    #[serde(default)]
    strides: Option<Vec<u32>>,
    #[serde(default)]
    min_sizes: Option<Vec<Vec<f32>>>,
    #[serde(default)]
    variance: Option<[f32; 2]>,
}

impl TryFrom<RawDetectorSpec> for DetectorSpec {
    type Error = head::HeadError;

    fn try_from(r: RawDetectorSpec) -> Result<Self, head::HeadError> {
        let err = |m: String| Err(head::HeadError(m));
        let described = r.preset.is_some() || r.head.is_some();
        let family = match (r.family, described) {
            (Some(DetectorFamily::Head) | None, true) => DetectorFamily::Head,
            (Some(DetectorFamily::Head), false) => {
                return err("`family: head` needs a `head:` (or a `preset:`) describing it".into());
            }
            (Some(f), false) => f,
            (None, false) => {
                return err(format!(
                    "a detector needs `preset:` (one of {}) or `family: scrfd | retinaface`",
                    head::preset_names().join(", ")
                ));
            }
            (Some(f), true) => {
                return err(format!(
                    "`family: {}` is a native decoder; `preset:` and `head:` describe a head as data: keep one",
                    f.name()
                ));
            }
        };
        if family == DetectorFamily::Head
            && (r.strides.is_some() || r.min_sizes.is_some() || r.variance.is_some())
        {
            return err("`strides`, `min_sizes` and `variance` belong to `family: scrfd | retinaface`; for a preset, override `head.anchors` and `head.boxes`".into());
        }
        let head = match family {
            DetectorFamily::Head => Some(Box::new(head::resolve(
                r.preset.as_deref(),
                r.head.as_ref(),
            )?)),
            _ => None,
        };
        Ok(DetectorSpec {
            family,
            preset: r.preset,
            head,
            score_threshold: r.score_threshold,
            nms_iou: r.nms_iou,
            strides: r.strides,
            min_sizes: r.min_sizes,
            variance: r.variance,
        })
    }
}

impl DetectorSpec {
    /// A native family's spec with the default threshold and NMS.
    pub fn native(family: DetectorFamily) -> DetectorSpec {
        DetectorSpec {
            family,
            preset: None,
            head: None,
            score_threshold: default_score_threshold(),
            nms_iou: default_nms_iou(),
            strides: None,
            min_sizes: None,
            variance: None,
        }
    }

    /// A preset's spec with the default threshold and NMS.
    pub fn preset(name: &str) -> Result<DetectorSpec, head::HeadError> {
        Ok(DetectorSpec {
            family: DetectorFamily::Head,
            preset: Some(name.to_string()),
            head: Some(Box::new(head::resolve(Some(name), None)?)),
            ..DetectorSpec::native(DetectorFamily::Head)
        })
    }

    /// What the plan and reports call it: the preset, else the family.
    pub fn label(&self) -> String {
        match &self.preset {
            Some(p) => p.clone(),
            None => self.family.name().to_string(),
        }
    }

    /// Whether decoded faces carry InsightFace's five landmarks (what alignment needs).
    pub fn has_five_points(&self) -> bool {
        match &self.head {
            Some(h) => h.landmarks.as_ref().is_some_and(|l| l.five.is_some()),
            None => true,
        }
    }
}

/// The detector families facebuild decodes natively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectorFamily {
    /// InsightFace SCRFD: per-stride scores, box and keypoint distances from anchor centres.
    Scrfd,
    /// RetinaFace (Pytorch_Retinaface layout): prior boxes with variances, softmax scores.
    Retinaface,
    /// A head described as data (`preset:` / `head:`), decoded by the generic decoder.
    Head,
}

impl DetectorFamily {
    /// Its manifest spelling.
    pub fn name(self) -> &'static str {
        match self {
            DetectorFamily::Scrfd => "scrfd",
            DetectorFamily::Retinaface => "retinaface",
            DetectorFamily::Head => "head",
        }
    }
}

fn default_score_threshold() -> f32 {
    0.5
}
fn default_nms_iou() -> f32 {
    0.4
}

/// Tensor layout of an image input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// Batch, channels, height, width (ONNX's usual layout).
    NCHW,
    /// Batch, height, width, channels.
    NHWC,
}

impl Layout {
    /// The index of the channel axis.
    pub fn channel_axis(self) -> usize {
        match self {
            Layout::NCHW => 1,
            Layout::NHWC => 3,
        }
    }
}

/// The channel order a model expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColorOrder {
    /// Red, green, blue.
    RGB,
    /// Blue, green, red (OpenCV-trained models).
    BGR,
    /// One channel: the photo's luma, as OpenCV's `cvtColor(BGR2GRAY)` computes it
    /// (grayscale landmark and attribute models).
    GRAY,
}

impl ColorOrder {
    /// How many channels the input gets.
    pub fn channels(self) -> usize {
        match self {
            ColorOrder::GRAY => 1,
            ColorOrder::RGB | ColorOrder::BGR => 3,
        }
    }

    /// The channels' names, in order.
    pub fn describe(self) -> &'static str {
        match self {
            ColorOrder::RGB => "R, G, B",
            ColorOrder::BGR => "B, G, R",
            ColorOrder::GRAY => "gray",
        }
    }
}

/// An 8-bit pixel's luma as OpenCV's `cvtColor(BGR2GRAY)` computes it: fixed-point
/// 0.299 R + 0.587 G + 0.114 B with 14 fraction bits, rounded.
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 4899 + u32::from(g) * 9617 + u32::from(b) * 1868 + (1 << 13)) >> 14) as u8
}

/// How images become input tensors: `(pixel - mean) / std` per channel at `size`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocessing {
    /// Channel order.
    #[serde(default = "default_color")]
    pub color: ColorOrder,
    /// Per-channel mean subtracted, in the channel order above: one value per input channel
    /// (checked against the input shape when the manifest is read).
    #[serde(default = "default_mean")]
    pub mean: Vec<f32>,
    /// Per-channel divisor.
    #[serde(default = "default_std")]
    pub std: Vec<f32>,
    /// [height, width] the image is resized to.
    pub size: [u32; 2],
    /// How a whole image is brought to `size`: `center_crop` (crop to the aspect ratio, then
    /// resize) or `letterbox` (keep the aspect ratio, pad bottom/right, as SCRFD expects).
    /// Default: letterbox for detection models, center_crop otherwise.
    #[serde(default)]
    pub resize: Option<Resize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resize {
    CenterCrop,
    Letterbox,
}

fn default_color() -> ColorOrder {
    ColorOrder::RGB
}
fn default_mean() -> Vec<f32> {
    vec![127.5; 3]
}
fn default_std() -> Vec<f32> {
    vec![127.5; 3]
}

/// How a detected face becomes a model input, as InsightFace's `face_align` makes it:
/// `arcface` warps the five keypoints onto the ArcFace template (`norm_crop`; recognizers,
/// and at 128 the swapper's target), `box` is a square centred on the detected box whose side
/// is `scale` times the box's longer side, neither rotated nor sheared (`transform`; landmark
/// and attribute models). Pixels outside the photo are black.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CropSpec {
    pub mode: CropMode,
    /// `box`: the crop's side over the box's longer side (default 1.5, InsightFace's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f32>,
    /// Which faces of a photo: `largest` (the default), or `all`, as InsightFace's
    /// `FaceAnalysis` runs its landmark and attribute models on every detected face.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faces: Option<FacePick>,
    /// Faces whose box's longer side is below this many photo pixels are left out
    /// (default 0: every face the detector keeps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_face: Option<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FacePick {
    Largest,
    All,
}

/// Which of a photo's detected faces become crops, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FaceChoice {
    pub all: bool,
    /// The smallest box (longer side, photo pixels) kept.
    pub min_face: f32,
}

impl FaceChoice {
    /// One face per photo, the largest, whatever its size: what crops were before the choice.
    pub const LARGEST: FaceChoice = FaceChoice {
        all: false,
        min_face: 0.0,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CropMode {
    Arcface,
    /// The ArcFace crop on `estimate_norm`'s 128 branch whatever the size (INSwapper's target).
    Arcface128,
    Box,
}

/// A crop with its settings resolved.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Crop {
    Arcface,
    Arcface128,
    Box { scale: f32 },
}

/// InsightFace's box-crop scale (`landmark.py`, `attribute.py`: `size / (1.5 * max(w, h))`).
pub const INSIGHTFACE_BOX_SCALE: f32 = 1.5;

impl CropSpec {
    pub fn faces(&self) -> FaceChoice {
        FaceChoice {
            all: self.faces == Some(FacePick::All),
            min_face: self.min_face.unwrap_or(0.0),
        }
    }

    pub fn resolve(&self) -> Crop {
        match self.mode {
            CropMode::Arcface => Crop::Arcface,
            CropMode::Arcface128 => Crop::Arcface128,
            CropMode::Box => Crop::Box {
                scale: self.scale.unwrap_or(INSIGHTFACE_BOX_SCALE),
            },
        }
    }
}

/// How a landmark model's output is read: `points` (x, y) pairs per face, or InsightFace's
/// 3D-68 (`[N, 3309]`: the last 68 rows of x, y, z), in the crop's coordinates.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LandmarkSpec {
    /// The output holding the points (default: the first output whose width is 2 x points,
    /// or 3309).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Points per face (default: from the output's width; 68 for 3309).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points: Option<usize>,
    /// `unit`: [0, 1] of the crop (PFLD); `signed`: [-1, 1] (InsightFace's 2d106det and
    /// 1k3d68, `(p + 1) * size / 2`). Default `signed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coords: Option<LandmarkCoords>,
    /// The point scheme, which says how NME is normalised: `ibug68` (300-W: outer eye
    /// corners 36 and 45), `wflw98` (60 and 72), `insightface106` (2d106det's markup: 35
    /// and 93), or `box` (sqrt(w h) of the detected box). Default: `ibug68` for 68 points,
    /// `wflw98` for 98, `box` otherwise (106 points may be 2d106det's or JD-106's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<LandmarkScheme>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LandmarkCoords {
    Unit,
    Signed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LandmarkScheme {
    Ibug68,
    Wflw98,
    Insightface106,
    Box,
}

/// Alignment of whole photos to the ArcFace 112x112 five-point template, with a detector's
/// landmarks (a 5-point similarity transform, Umeyama).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlignSpec {
    /// The detector ONNX model, relative to the manifest.
    pub model: Utf8PathBuf,
    pub detector: DetectorSpec,
    /// How the detector is fed (default: SCRFD's RGB, (x - 127.5) / 128, letterbox 640x640).
    #[serde(default)]
    pub preprocessing: Option<Preprocessing>,
}

/// Where a step ran, as its action record and run report say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RanOn {
    /// `slurm`.
    pub executor: String,
    /// The Slurm job id.
    pub job_id: String,
    /// The node it ran on.
    #[serde(default)]
    pub node: String,
}

impl RanOn {
    /// The worker's own placement, from the environment Slurm gives a job.
    pub fn from_slurm_env() -> Option<RanOn> {
        let job_id = std::env::var("SLURM_JOB_ID").ok()?;
        let node = std::env::var("SLURMD_NODENAME")
            .or_else(|_| std::env::var("SLURM_JOB_NODELIST"))
            .unwrap_or_default();
        Some(RanOn {
            executor: "slurm".into(),
            job_id,
            node,
        })
    }
}

/// A dataset derived from another one's photos so that it looks like deployment: mosaics of
/// small faces, rescaled, mirrored and rotated copies. Keyed by the source's digest, these
/// settings and the detector that finds the faces on the originals.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeriveSpec {
    /// The dataset whose photos are the material (a folder or built-in dataset).
    pub from: String,
    /// The detector that finds the faces on the originals; default: the pipeline's
    /// detector model, fed as it declares.
    #[serde(default)]
    pub detector: Option<AlignSpec>,
    /// [h, w] of mosaics and rescaled copies; default: the detector's input size.
    #[serde(default)]
    pub canvas: Option<[u32; 2]>,
    /// Keep the originals in the set (default true).
    #[serde(default = "yes")]
    pub originals: bool,
    #[serde(default)]
    pub mosaic: Option<MosaicSpec>,
    /// Copies of each original fitted into this fraction of the canvas, at a seeded place
    /// on it: the same photo with smaller faces.
    #[serde(default)]
    pub rescale: Vec<f32>,
    /// A mirrored copy of each original; mosaic tiles are mirrored at random.
    #[serde(default)]
    pub flip: bool,
    /// A copy of each original rotated by each angle (degrees); mosaic tiles take one of
    /// them (or none) at random.
    #[serde(default)]
    pub rotate: Vec<f32>,
}

fn yes() -> bool {
    true
}

/// Mosaics: faces cut from the originals with some context, scaled to the given heights
/// and tiled row by row over a canvas, as a crowd fills a frame.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MosaicSpec {
    /// How many mosaics.
    pub count: usize,
    /// Face heights as fractions of the canvas height; each row takes one at random.
    pub face_sizes: Vec<f32>,
    /// Tile side over face height (default 2: a face with half its height around it).
    #[serde(default = "default_context")]
    pub context: f32,
}

fn default_context() -> f32 {
    2.0
}

/// Latency statistics in milliseconds, as every runtime's benchmark reports them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct LatencyMs {
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
    pub median: Option<f64>,
    pub p90: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

impl LatencyMs {
    /// Percentiles by nearest rank (the value below which that share of samples fall).
    pub fn of(xs: &[f64]) -> LatencyMs {
        if xs.is_empty() {
            return LatencyMs::default();
        }
        let mut v = xs.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        LatencyMs {
            min: Some(v[0]),
            max: Some(v[v.len() - 1]),
            mean: Some(v.iter().sum::<f64>() / v.len() as f64),
            median: Some(q(0.5)),
            p90: Some(q(0.9)),
            p95: Some(q(0.95)),
            p99: Some(q(0.99)),
        }
    }
}

impl Preprocessing {
    /// What is wrong with the values themselves: one mean and one std per channel (images
    /// are decoded to 3), finite, no zero std. Each as (message, hint), keys relative to
    /// this block.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        for (key, values) in [("mean", &self.mean), ("std", &self.std)] {
            let example = format!("`{key}: [127.5, 127.5, 127.5]`");
            let n = self.color.channels();
            if values.len() != n {
                problems.push((
                    format!(
                        "`{key}` has {} value(s); the input has {n} channel{} ({})",
                        values.len(),
                        if n == 1 { "" } else { "s" },
                        self.color.describe()
                    ),
                    if n == 1 {
                        format!("give one value for the gray channel: `{key}: [127.5]`")
                    } else {
                        format!("give one per channel, in the `color` order: {example}")
                    },
                ));
            }
            if values.iter().any(|v| !v.is_finite()) || (key == "std" && values.contains(&0.0)) {
                problems.push((
                    format!(
                        "`{key}` must be finite numbers{}",
                        if key == "std" { ", none zero" } else { "" }
                    ),
                    format!("e.g. {example}"),
                ));
            }
        }
        problems
    }

    /// The resize mode in force: the declared one, else letterbox for detectors.
    pub fn resize_for(&self, task: Task) -> Resize {
        self.resize.unwrap_or(if task == Task::Detection {
            Resize::Letterbox
        } else {
            Resize::CenterCrop
        })
    }

    /// SCRFD's own feeding (InsightFace): RGB, (x - 127.5) / 128, letterboxed.
    pub fn scrfd(size: [u32; 2]) -> Preprocessing {
        Preprocessing {
            color: ColorOrder::RGB,
            mean: vec![127.5; 3],
            std: vec![128.0; 3],
            size,
            resize: Some(Resize::Letterbox),
        }
    }
}

/// What a model does, which decides how it is fed, decoded and compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Recognition,
    Detection,
    Landmarks,
    /// Face attributes with InsightFace genderage's contract: `[N, 3]`, gender logits then
    /// age / 100.
    Attribute,
    Swapper,
    Generic,
}

impl LandmarkScheme {
    pub fn name(self) -> &'static str {
        match self {
            LandmarkScheme::Ibug68 => "ibug68",
            LandmarkScheme::Wflw98 => "wflw98",
            LandmarkScheme::Insightface106 => "insightface106",
            LandmarkScheme::Box => "box",
        }
    }

    /// The points whose distance normalises NME, when the scheme has them.
    fn outer_eye_corners(self) -> Option<(usize, usize)> {
        match self {
            LandmarkScheme::Ibug68 => Some((36, 45)),
            LandmarkScheme::Wflw98 => Some((60, 72)),
            // 2d106det's markup numbers the eyes out of contour order: the outer corners
            // are 35 (photo's left) and 93, the points iBUG-68's 36 and 45 map from.
            LandmarkScheme::Insightface106 => Some((35, 93)),
            LandmarkScheme::Box => None,
        }
    }

    /// The centres of the eye on the photo's left and on its right (the detector's first two
    /// keypoints), when the scheme says which points outline them.
    pub fn eye_centres(self, points: &[[f64; 2]]) -> Option<[[f64; 2]; 2]> {
        let (left, right): (&[usize], &[usize]) = match self {
            LandmarkScheme::Ibug68 => (&[36, 37, 38, 39, 40, 41], &[42, 43, 44, 45, 46, 47]),
            LandmarkScheme::Wflw98 => (
                &[60, 61, 62, 63, 64, 65, 66, 67],
                &[68, 69, 70, 71, 72, 73, 74, 75],
            ),
            // The eight points outlining each eye in 2d106det's markup.
            LandmarkScheme::Insightface106 => (
                &[33, 35, 36, 37, 39, 40, 41, 42],
                &[87, 89, 90, 91, 93, 94, 95, 96],
            ),
            LandmarkScheme::Box => return None,
        };
        let centre = |idx: &[usize]| {
            let pts = idx
                .iter()
                .map(|&i| points.get(i))
                .collect::<Option<Vec<_>>>()?;
            let n = pts.len() as f64;
            Some([
                pts.iter().map(|p| p[0]).sum::<f64>() / n,
                pts.iter().map(|p| p[1]).sum::<f64>() / n,
            ])
        };
        Some([centre(left)?, centre(right)?])
    }

    /// The normaliser in words, for reports.
    pub fn describe(self) -> String {
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
    pub fn normaliser(self, reference: &[[f64; 2]], bbox: [f64; 4]) -> f64 {
        match self.outer_eye_corners() {
            Some((a, b)) if reference.len() > a.max(b) => dist(reference[a], reference[b]),
            _ => ((bbox[2] - bbox[0]).max(0.0) * (bbox[3] - bbox[1]).max(0.0)).sqrt(),
        }
    }
}

/// The Euclidean distance between two points.
pub fn dist(a: [f64; 2], b: [f64; 2]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}
