//! The manifest schema (version 1). Every struct denies unknown keys so a typo is an error
//! at its exact line, not a silently ignored setting.

use camino::Utf8PathBuf;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

pub(crate) const SCHEMA_VERSION: u32 = 1;

// The value types the lower layers (preprocess, detect, cache, toolchain) share live below
// the manifest; the schema re-exports them.
pub(crate) use crate::domain::{AlignSpec, DeriveSpec};
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
    /// The one model of a single-model pipeline...
    #[serde(default)]
    pub model: Option<Spanned<ModelSpec>>,
    /// ...or a pack's models by name (a detector, a recognizer...): steps say which they
    /// build (`model:`, or `each:` for one step per model).
    #[serde(default)]
    pub models: IndexMap<String, Spanned<ModelSpec>>,
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

pub(crate) use crate::domain::Task;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(try_from = "RawModelSpec")]
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
    /// The image input: `model.input`, or the one of `model.inputs` fed images.
    pub input: InputSpec,
    /// The other inputs of `model.inputs` (a swapper's source latent...), in their order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_inputs: Vec<InputSpec>,
    #[serde(default)]
    pub preprocessing: Option<Preprocessing>,
    /// How a detector's raw outputs become boxes (required by detection `compare`).
    #[serde(default)]
    pub detector: Option<DetectorSpec>,
    /// How a landmark model's output becomes points (`task: landmarks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landmarks: Option<LandmarkSpec>,
}

/// `model:` as written: one image `input`, or several `inputs` by name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModelSpec {
    #[serde(default)]
    path: Option<Utf8PathBuf>,
    #[serde(default)]
    builtin: Option<String>,
    #[serde(default)]
    sha256: Option<Spanned<String>>,
    task: Task,
    #[serde(default)]
    input: Option<InputSpec>,
    /// Every input of a model that takes several, by graph name, in order.
    #[serde(default)]
    inputs: IndexMap<String, InputSpec>,
    #[serde(default)]
    preprocessing: Option<Preprocessing>,
    #[serde(default)]
    detector: Option<DetectorSpec>,
    #[serde(default)]
    landmarks: Option<LandmarkSpec>,
}

impl TryFrom<RawModelSpec> for ModelSpec {
    type Error = String;

    /// One image input, wherever it is written; the others in `extra_inputs`.
    fn try_from(r: RawModelSpec) -> Result<ModelSpec, String> {
        let (input, extra_inputs) = match (r.input, r.inputs.is_empty()) {
            (Some(_), false) => {
                return Err("`model` has both `input` and `inputs`: write one image input as `input`, or every input under `inputs`".into());
            }
            (None, true) => {
                return Err(
                    "`model` needs `input` (its image input) or `inputs` (every input by name)"
                        .into(),
                );
            }
            (Some(i), true) if !i.feed.is_image() => {
                return Err(format!(
                    "`model.input` is fed images; an input fed `{}` goes under `model.inputs`, beside the image input",
                    i.feed.name()
                ));
            }
            (Some(i), true) if i.name.is_empty() => {
                return Err("`model.input.name` is missing: give the graph's input name (`facebuild init` reads it)".into());
            }
            (Some(i), true) => (i, Vec::new()),
            (None, false) => split_inputs(r.inputs)?,
        };
        Ok(ModelSpec {
            path: r.path,
            builtin: r.builtin,
            sha256: r.sha256,
            task: r.task,
            input,
            extra_inputs,
            preprocessing: r.preprocessing,
            detector: r.detector,
            landmarks: r.landmarks,
        })
    }
}

/// `model.inputs`, named by their keys, as the image input and the others.
fn split_inputs(
    inputs: IndexMap<String, InputSpec>,
) -> Result<(InputSpec, Vec<InputSpec>), String> {
    let mut image = None;
    let mut extra = Vec::new();
    for (k, mut i) in inputs {
        if !i.name.is_empty() && i.name != k {
            return Err(format!(
                "`model.inputs.{k}` has `name: {}`; the key is the input's name: remove `name`",
                i.name
            ));
        }
        i.name = k;
        match (&i.feed, &image) {
            (Feed::Image, Some(first)) => {
                let first: &InputSpec = first;
                return Err(format!(
                    "`model.inputs` feeds images to both `{}` and `{}`; facebuild feeds one image input per model: give the other `feed: {{npy: file.npy}}` or `feed: {{embedding: ...}}`",
                    first.name, i.name
                ));
            }
            (Feed::Image, None) => image = Some(i),
            _ => extra.push(i),
        }
    }
    let image = image.ok_or_else(|| "no input of `model.inputs` is fed images (`feed: image`, the default); facebuild's steps prepare images for one input".to_string())?;
    Ok((image, extra))
}

/// What feeds a model input.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub(crate) enum Feed {
    /// The dataset's images (or face crops), through `model.preprocessing`.
    #[default]
    Image,
    /// A recognizer's embedding of a face of another identity (a swapper's source latent).
    Embedding(EmbeddingFeed),
    /// Rows of a `.npy` file (relative to the manifest), one per image, cycled.
    Npy(Utf8PathBuf),
}

impl Feed {
    pub(crate) fn is_image(&self) -> bool {
        matches!(self, Feed::Image)
    }
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Feed::Image => "image",
            Feed::Embedding(_) => "embedding",
            Feed::Npy(_) => "npy",
        }
    }
}

/// A recognizer's embedding, as InSwapper's source latent is made: the recognizer's
/// embedding of an ArcFace crop, L2-normalised, times `emap` when set, L2-normalised again.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmbeddingFeed {
    /// The recognizer's ONNX file, relative to the manifest; or an OpenVINO IR's `.xml`
    /// (its `.bin` beside it), such as a recognizer pipeline's released FP16 artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<Utf8PathBuf>,
    /// A built-in recognizer instead (`iresnet-mini`, 512-d).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<String>,
    /// Multiply by the model's `emap` (its last initializer, a D x D matrix), as INSwapper
    /// does; read from the source ONNX model.
    #[serde(default)]
    pub emap: bool,
    /// How the recognizer is fed (default ArcFace's: RGB, (x - 127.5) / 127.5, 112 x 112).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocessing: Option<Preprocessing>,
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
    /// The graph's input name (the key, under `model.inputs`).
    #[serde(default)]
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
    /// What feeds it (`model.inputs`): images (the default), an embedding or a `.npy` file.
    #[serde(default, skip_serializing_if = "Feed::is_image")]
    pub(crate) feed: Feed,
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
            (None, Task::Swapper) => Crop::Arcface128,
            (None, _) => Crop::Arcface,
        }
    }

    /// Which of a photo's faces this input takes: its crop's choice, else the largest.
    pub(crate) fn faces(&self) -> crate::domain::FaceChoice {
        self.crop
            .as_ref()
            .map_or(crate::domain::FaceChoice::LARGEST, |c| c.faces())
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

impl ModelSpec {
    /// Every input: the image one, then the others in their order.
    pub(crate) fn all_inputs(&self) -> impl Iterator<Item = &InputSpec> {
        std::iter::once(&self.input).chain(&self.extra_inputs)
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
    /// Derived from another dataset's photos instead of `path`/`builtin`: mosaics of small
    /// faces, rescaled, mirrored and rotated copies.
    #[serde(default)]
    pub derive: Option<DeriveSpec>,
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
