//! `compare`'s report.json, as typed structs: written by both compare kinds (embedders and
//! detectors), read by `release`, the run report and the CLI. Fields that one kind does not
//! write are `None` and left out of the file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::manifest::DetectorSpec;
use crate::metrics::Summary;
use crate::metrics::gate::GateResult;
use crate::metrics::verification::{PairSource, Verification};
use crate::runtime::ExecutionInfo;

/// The version of this report's shape.
pub(crate) const SCHEMA: &str = "facebuild.compare/1";

/// A compare step's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareReport {
    /// The report's schema version, e.g. `facebuild.compare/1`.
    pub schema: String,
    /// The step's name.
    pub step: String,
    /// The step's kind.
    pub kind: String,
    /// `detection` for detectors; absent for embedders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Whether every gate of the step passed.
    pub passed: bool,
    /// Detectors: how outputs were decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detector: Option<DetectorSpec>,
    /// Detectors: the IoU at which boxes match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_iou: Option<f32>,
    /// The validation set.
    pub dataset: DatasetSummary,
    /// The ONNX original, as the reference ran it.
    pub reference: ReferenceSummary,
    /// Every candidate's figures and gates.
    pub candidates: Vec<CandidateReport>,
    /// Every failed gate, in words.
    pub failures: Vec<String>,
    /// The toolchain versions the step used.
    pub toolchain: BTreeMap<String, String>,
}

impl CompareReport {
    /// The entry for an artifact step: the one labelled as the step, else the first.
    pub fn candidate_of_step(&self, step: &str) -> Option<&CandidateReport> {
        self.candidates
            .iter()
            .find(|c| c.step == step && c.label == step)
            .or_else(|| self.candidates.iter().find(|c| c.step == step))
    }

    /// Whether this is a detector's report.
    pub fn is_detection(&self) -> bool {
        self.task.as_deref() == Some("detection")
    }
}

/// The validation set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetSummary {
    pub name: String,
    pub images: usize,
    /// How images fitted the input (embedders): `as_is`, `center_crop`... -> count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fit: Option<BTreeMap<String, u64>>,
    /// Verification pairs (embedders with identities).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairs: Option<PairSource>,
    /// Input sizes compared at (detectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_sizes: Option<Vec<[u32; 2]>>,
}

/// The ONNX original, as the reference ran it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReferenceSummary {
    pub model: String,
    pub execution: ExecutionInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm: Option<MeanStd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operating_far: Option<f64>,
    /// Detectors: every reference detection, per image and size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<ReferenceImage>>,
}

/// Mean and standard deviation.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct MeanStd {
    pub mean: f64,
    pub std: f64,
}

/// One candidate's figures, or why it could not be compared.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CandidateReport {
    /// The candidate's label (default: its step).
    pub label: String,
    /// The artifact step.
    pub step: String,
    /// `false` when the candidate could not be compared here (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<bool>,
    /// Why it could not be compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    /// Its step failed or was skipped, and why: its gates judged missing figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// `openvino-ir`, `onnx` or `tensorrt-engine`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    /// The artifact's own precision (fp32, fp16, int8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_precision: Option<String>,
    /// What actually executed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<ExecutionInfo>,
    /// Embedders: `model.preprocessing` or `candidate's own`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocessing: Option<String>,
    /// Embedders: per-image cosine similarity to the reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosine: Option<Summary>,
    /// Embedders: largest absolute difference of any embedding element.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_abs_error: Option<f64>,
    /// Per image, for the run report's histograms (rounded: the report is diffed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosine_per_image: Option<Vec<f64>>,
    /// Embedders: embedding norms against the reference's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm: Option<NormShift>,
    /// Embedders with identities: verification figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<CandidateVerification>,
    /// Detectors: per input size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sizes: Option<Vec<SizeMetrics>>,
    /// Detectors: over every size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<DetectionTotals>,
    /// `generic` and `landmarks` models: every output compared by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<OutputComparison>>,
    /// Every gate with its measured value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gates: Option<Vec<GateResult>>,
    /// null for a candidate that could not be compared.
    pub passed: Option<bool>,
}

/// One output of a candidate against the same output of the reference, over every image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputComparison {
    /// The reference's output name.
    pub name: String,
    /// The candidate's output it was compared with, when its name differs (matched by
    /// position: some converters rename outputs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_name: Option<String>,
    /// The output's shape, per inference.
    pub shape: Vec<usize>,
    /// Elements compared, over every image.
    pub elements: u64,
    /// Largest |candidate - reference|.
    pub max_abs_error: f64,
    /// Largest |candidate - reference| / |reference|, over elements whose reference is not 0.
    pub max_rel_error: f64,
    /// Mean |candidate - reference|.
    pub mean_abs_error: f64,
    /// Cosine similarity per image (per inference when the output has no batch dim).
    pub cosine: Summary,
    /// Elements out of `atol`/`rtol` (when either is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_tolerance: Option<u64>,
    /// NaN or infinite candidate elements where the reference is finite.
    pub non_finite: u64,
}

/// Embedding norms against the reference's.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct NormShift {
    pub reference_mean: f64,
    pub reference_std: f64,
    pub mean: f64,
    pub std: f64,
    pub relative_shift: f64,
}

/// A candidate's verification figures beside the reference's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CandidateVerification {
    pub candidate: Verification,
    /// Null where the operating FAR is below the set's resolution (1 / impostor pairs).
    pub tar_at_operating_far: Option<TarAtOperatingFar>,
    pub flips_at_reference_threshold: u64,
}

/// TAR at the operating FAR, reference and candidate.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct TarAtOperatingFar {
    pub reference: f64,
    pub candidate: f64,
    pub drop: f64,
}

/// Detection figures at one input size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SizeMetrics {
    pub input_size: [u32; 2],
    pub metrics: DetectionTotals,
}

/// Detection figures over a set of images.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DetectionTotals {
    pub images: usize,
    pub reference_boxes: usize,
    pub candidate_boxes: usize,
    pub matched: usize,
    pub recall: f64,
    pub fp_per_image: f64,
    pub iou: MeanMin,
    pub score_drift: MeanMax,
    pub landmark_nme: MeanMax,
    pub nms_parity: f64,
}

/// Mean and minimum; null where there was nothing to average.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct MeanMin {
    pub mean: Option<f64>,
    pub min: Option<f64>,
}

/// Mean and maximum; null where there was nothing to average.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct MeanMax {
    pub mean: Option<f64>,
    pub max: Option<f64>,
}

/// The reference's detections on one image at one size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReferenceImage {
    pub file: Option<String>,
    pub input_size: [u32; 2],
    pub scale: f32,
    pub detections: Vec<RoundedDetection>,
}

/// A detection rounded for the report (0.01 px, 1e-4 score), so reports diff cleanly.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundedDetection {
    pub bbox: [f32; 4],
    pub score: f32,
    pub kps: Option<[[f32; 2]; 5]>,
}
