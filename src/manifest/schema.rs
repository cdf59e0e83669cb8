//! The manifest schema (version 1). Every struct denies unknown keys so a typo is an error
//! at its exact line, not a silently ignored setting.

use camino::Utf8PathBuf;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
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
pub struct ModelSpec {
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    NCHW,
    NHWC,
}

impl Layout {
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

pub fn fmt_shape(dims: &[Dim]) -> String {
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
}

fn default_layout() -> Layout {
    Layout::NCHW
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColorOrder {
    RGB,
    BGR,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocessing {
    #[serde(default = "default_color")]
    pub color: ColorOrder,
    #[serde(default = "default_mean")]
    pub mean: [f32; 3],
    #[serde(default = "default_std")]
    pub std: [f32; 3],
    /// [height, width] the image is resized to.
    pub size: [u32; 2],
}

fn default_color() -> ColorOrder {
    ColorOrder::RGB
}
fn default_mean() -> [f32; 3] {
    [127.5; 3]
}
fn default_std() -> [f32; 3] {
    [127.5; 3]
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// A folder of images, relative to the manifest (searched recursively; a folder per
    /// person gives identities).
    #[serde(default)]
    pub path: Option<Utf8PathBuf>,
    /// A built-in dataset instead of `path`: `synthetic-faces`.
    #[serde(default)]
    pub builtin: Option<String>,
    /// A verification pairs CSV (`file_x,file_y,Decision`), relative to the dataset folder.
    #[serde(default)]
    pub pairs: Option<Utf8PathBuf>,
    /// Use at most this many images (after a seeded shuffle); all when absent.
    #[serde(default)]
    pub count: Option<usize>,
    #[serde(default)]
    pub seed: u64,
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
}
