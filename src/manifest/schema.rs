//! The manifest schema (version 1). Every struct denies unknown keys so a typo is an error
//! at its exact line, not a silently ignored setting.

use camino::Utf8PathBuf;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

pub(crate) const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawManifest {
    pub schema: Spanned<u32>,
    #[serde(default)]
    pub name: Option<String>,
    /// Where materialized outputs go, relative to the manifest; default `out/<name>`.
    #[serde(default)]
    pub output: Option<Utf8PathBuf>,
    pub model: Spanned<ModelSpec>,
    #[serde(default)]
    pub datasets: IndexMap<String, Spanned<DatasetSpec>>,
    #[serde(default)]
    pub toolchain: ToolchainSpec,
    pub steps: IndexMap<String, Spanned<super::step::StepSpec>>,
    /// Where every step runs unless its kind or the step says otherwise.
    #[serde(default)]
    pub runs_on: Option<Spanned<super::placement::RunsOn>>,
    /// Where steps of a kind run, e.g. `convert: {executor: slurm, class: h100}`.
    #[serde(default)]
    pub runs_on_kinds: IndexMap<super::step::StepKind, Spanned<super::placement::RunsOn>>,
    /// GPU classes steps are built for, each with the fingerprint its machines must have.
    #[serde(default)]
    pub gpu_classes: IndexMap<String, Spanned<super::placement::GpuClass>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Recognition,
    Detection,
    Landmarks,
    Swapper,
    Generic,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModelSpec {
    /// Path to the ONNX model, relative to the manifest. Absent: the built-in model.
    #[serde(default)]
    pub path: Option<Utf8PathBuf>,
    /// Which built-in model to generate when `path` is absent (default `iresnet-mini`).
    #[serde(default)]
    pub builtin: Option<String>,
    /// Optional sha256 pin of the model file; a mismatch stops the run before any step.
    #[serde(default)]
    pub sha256: Option<Spanned<String>>,
    pub task: Task,
    pub input: InputSpec,
    #[serde(default)]
    pub preprocessing: Option<Preprocessing>,
    /// How a detector's raw outputs become boxes (required by detection `compare`).
    #[serde(default)]
    pub detector: Option<DetectorSpec>,
}

/// A detector family and its post-processing: decoding, score threshold, NMS.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DetectorSpec {
    /// Which head layout to decode.
    pub family: DetectorFamily,
    /// Detections scoring below this are dropped before NMS.
    #[serde(default = "default_score_threshold")]
    pub score_threshold: f32,
    /// IoU above which NMS suppresses the lower-scoring box.
    #[serde(default = "default_nms_iou")]
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

/// The detector families facebuild decodes natively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectorFamily {
    /// InsightFace SCRFD: per-stride scores, box and keypoint distances from anchor centres.
    Scrfd,
    /// RetinaFace (Pytorch_Retinaface layout): prior boxes with variances, softmax scores.
    Retinaface,
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

/// One dimension of a declared shape: a fixed size or a named dynamic dimension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(u64),
    Named(String),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Named(s) => write!(f, "{s}"),
        }
    }
}

pub(crate) fn fmt_shape(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    #[serde(default = "default_layout")]
    pub layout: Layout,
    pub shape: Vec<Dim>,
    /// Realistic ranges of the named (dynamic) dims: OpenVINO conversion bounds them,
    /// TensorRT profiles are built from them, and `opt` is the size used where one concrete
    /// size is needed (equivalence checks, smoke runs).
    #[serde(default)]
    pub dims: IndexMap<String, DimRange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DimRange {
    pub min: u64,
    pub opt: u64,
    pub max: u64,
}

impl InputSpec {
    /// The declared shape with every named dim at its `opt` size; None for a named dim
    /// with no declared range.
    pub fn opt_shape(&self) -> Vec<Option<u64>> {
        self.shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => Some(*n),
                Dim::Named(s) => self.dims.get(s).map(|r| r.opt),
            })
            .collect()
    }
}

fn default_layout() -> Layout {
    Layout::NCHW
}

/// The channel order a model expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColorOrder {
    /// Red, green, blue.
    RGB,
    /// Blue, green, red (OpenCV-trained models).
    BGR,
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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DatasetSpec {
    /// A folder of images, relative to the manifest (searched recursively; a folder per
    /// person gives identities), or an InsightFace verification `.bin`.
    #[serde(default)]
    pub path: Option<Utf8PathBuf>,
    /// A built-in dataset instead of `path`: `synthetic-faces`.
    #[serde(default)]
    pub builtin: Option<String>,
    /// Verification pairs, relative to the dataset folder: a CSV (`file_x,file_y,Decision`)
    /// or LFW's `pairs.txt` (by its `.txt` extension). A `.bin` dataset brings its own.
    #[serde(default)]
    pub pairs: Option<Utf8PathBuf>,
    /// Use at most this many images (after a seeded shuffle); all when absent.
    #[serde(default)]
    pub count: Option<usize>,
    #[serde(default)]
    pub seed: u64,
    /// Detect and align faces before use: whole photos become ArcFace-aligned crops.
    #[serde(default)]
    pub align: Option<AlignSpec>,
}

impl DatasetSpec {
    /// Whether `path` names an InsightFace verification `.bin` rather than a folder.
    pub(crate) fn is_bin(&self) -> bool {
        self.path
            .as_ref()
            .and_then(|p| p.extension())
            .is_some_and(|e| e.eq_ignore_ascii_case("bin"))
    }

    /// The pairs file, relative to the dataset folder: `pairs:`, or the one a `.bin` holds.
    pub(crate) fn pairs_file(&self) -> Option<Utf8PathBuf> {
        self.pairs.clone().or_else(|| {
            self.is_bin()
                .then(|| crate::preprocess::verification_sets::BIN_PAIRS.into())
        })
    }
}

/// Alignment of whole photos to the ArcFace 112x112 five-point template, with a detector's
/// landmarks (a 5-point similarity transform, Umeyama).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AlignSpec {
    /// The detector ONNX model, relative to the manifest.
    pub model: Utf8PathBuf,
    pub detector: DetectorSpec,
    /// How the detector is fed (default: SCRFD's RGB, (x - 127.5) / 128, letterbox 640x640).
    #[serde(default)]
    pub preprocessing: Option<Preprocessing>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ToolchainSpec {
    /// Python packages to pin, `name: version`; merged over facebuild's defaults.
    #[serde(default)]
    pub python: IndexMap<String, String>,
    /// The Python interpreter used to create the environment (default `python3`).
    #[serde(default)]
    pub interpreter: Option<String>,
    /// Where TensorRT is (it cannot be installed from PyPI): see docs/tensorrt.md.
    #[serde(default)]
    pub tensorrt: Option<crate::toolchain::tensorrt::TensorRtSpec>,
}
