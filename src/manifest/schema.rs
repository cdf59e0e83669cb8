//! The manifest schema (version 1). Every struct denies unknown keys so a typo is an error
//! at its exact line, not a silently ignored setting.

use camino::Utf8PathBuf;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

pub(crate) const SCHEMA_VERSION: u32 = 1;

// The value types the lower layers (preprocess, detect, cache, toolchain) share live below
// the manifest; the schema re-exports them.
pub(crate) use crate::domain::AlignSpec;
pub(crate) use crate::domain::Resize;
pub use crate::domain::{ColorOrder, DetectorFamily, DetectorSpec, Layout, Preprocessing};
pub(crate) use crate::domain::{Crop, CropSpec, LandmarkSpec};
pub(crate) use crate::toolchain::ToolchainSpec;

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
    /// Face attributes with InsightFace genderage's contract: `[N, 3]`, gender logits then
    /// age / 100.
    Attribute,
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
    /// How a landmark model's output becomes points (`task: landmarks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landmarks: Option<LandmarkSpec>,
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
    /// How a dataset's detected faces are cropped for this input (datasets with `align:`):
    /// default `arcface` for recognition, `box` (scale 1.5) for landmarks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) crop: Option<CropSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DimRange {
    pub min: u64,
    pub opt: u64,
    pub max: u64,
}

impl InputSpec {
    /// The crop this input takes from a dataset's detected faces: its own, else the task's.
    pub(crate) fn crop_for(&self, task: Task) -> Crop {
        match (&self.crop, task) {
            (Some(c), _) => c.resolve(),
            (None, Task::Landmarks | Task::Attribute) => Crop::Box {
                scale: crate::domain::INSIGHTFACE_BOX_SCALE,
            },
            (None, _) => Crop::Arcface,
        }
    }

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
