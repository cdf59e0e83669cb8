//! `compare`'s report.json, as typed structs: written by both compare kinds (embedders and
//! detectors), read by `release`, the run report and the CLI. Fields that one kind does not
//! write are `None` and left out of the file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::manifest::DetectorSpec;
use crate::metrics::Summary;
use crate::metrics::gate::GateResult;
use crate::metrics::lfw::LfwFigures;
use crate::metrics::uncertainty::{ScoreDifferences, Spread};
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
    /// Landmark models: how points were read and NME normalised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landmarks: Option<LandmarkSetup>,
    /// Swappers: how target and source were fed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swapper: Option<SwapperSetup>,
    /// What the figures can say about the model: set for facebuild's built-in models, whose
    /// weights are seeded random numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_note: Option<String>,
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
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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
    /// What the bootstrap intervals resample, and how.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resampling: Option<Resampling>,
    /// The reference's faces on the set at the first input size (detectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faces: Option<crate::metrics::faces::FaceStats>,
}

/// How intervals were drawn: the units, their count, replicates and seed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Resampling {
    /// `identity` (a folder per person), `genuine-pair component` (a pairs file or `.bin`,
    /// which name no person) or `image`.
    pub by: String,
    pub units: usize,
    pub replicates: usize,
    pub seed: u64,
    /// How the units were found, in words.
    pub note: String,
}

impl Resampling {
    /// Detection figures: every size of an image is one unit.
    pub(crate) fn by_image(
        boot: &crate::metrics::uncertainty::Bootstrap,
        images: usize,
    ) -> Resampling {
        Resampling {
            by: "image".into(),
            units: images,
            replicates: boot.replicates,
            seed: boot.seed,
            note: "detection figures resampled by image (every size of an image together)".into(),
        }
    }
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
    /// Pair sets with folds: the LFW protocol's figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lfw: Option<LfwFigures>,
    /// Detectors: every reference detection, per image and size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<ReferenceImage>>,
}

impl ReferenceSummary {
    /// The ONNX original as `execution` ran it, with no figures yet.
    pub(crate) fn onnx(execution: ExecutionInfo) -> ReferenceSummary {
        ReferenceSummary {
            model: "ONNX original".into(),
            execution,
            norm: None,
            verification: None,
            operating_far: None,
            lfw: None,
            images: None,
        }
    }
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
    /// 95% interval of `cosine.min`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosine_min_ci95: Option<[f64; 2]>,
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
    /// Detectors: recall per face height (fraction of the input height), over every size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall_by_height: Option<Vec<crate::metrics::faces::Stratum>>,
    /// Detectors: over every size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<DetectionTotals>,
    /// Landmark models: mean NME over faces (the figure `nme_mean_max` gates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nme_mean: Option<f64>,
    /// Landmark models: NME of the worst face (the figure `nme_max` gates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nme_max: Option<f64>,
    /// Attribute models: faces whose gender differs from the reference's (the figure
    /// `gender_flips_max` gates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gender_flips: Option<u64>,
    /// Attribute models: mean |age difference| in years (the figure `age_mae_max` gates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_mae: Option<f64>,
    /// Attribute models: the figures behind `gender_flips` and `age_mae`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute: Option<AttributeFigures>,
    /// Landmark models: the figures behind `nme_mean` and `nme_max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landmarks: Option<LandmarkFigures>,
    /// Swappers: the worst face's PSNR against the reference's swapped face, dB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psnr_min: Option<f64>,
    /// Swappers: the worst face's SSIM against the reference's swapped face.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssim_min: Option<f64>,
    /// Swappers: the worst face's cosine between the recognizer's embeddings of the
    /// candidate's and the reference's swapped faces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_cosine_min: Option<f64>,
    /// Swappers: every figure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swapper: Option<SwapperFigures>,
    /// `generic` models (and landmark models gated by `atol`/`rtol`): every output
    /// compared by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<OutputComparison>>,
    /// Every gated figure's bootstrap intervals, by figure (`tar_drop`, `recall`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intervals: Option<BTreeMap<String, Spread>>,
    /// Every gate with its measured value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gates: Option<Vec<GateResult>>,
    /// null for a candidate that could not be compared.
    pub passed: Option<bool>,
}

/// How a landmark model's points were read, and what NME is normalised by.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LandmarkSetup {
    /// The output the points were read from.
    pub output: String,
    /// Points per face.
    pub points: usize,
    /// 2 (x, y) or 3 (x, y, z; z is left out of NME).
    pub dims: usize,
    /// `unit` ([0, 1] of the crop) or `signed` ([-1, 1]).
    pub coords: String,
    /// `ibug68`, `wflw98`, `insightface106` or `box`.
    pub scheme: String,
    /// The normaliser, in words.
    pub normaliser: String,
    /// How faces were cropped: `box` with its scale, `arcface`, or `as_is` (the images are
    /// the crops).
    pub crop: String,
    /// Faces compared (images whose face was found, or every image without `align:`).
    pub faces: usize,
    /// Images of the set where no face was found: left out of every figure.
    pub no_face: usize,
    /// The reference's mean normaliser in photo pixels, to read NME as pixels.
    pub mean_normaliser_px: f64,
    /// A check of how the model is fed: the reference's eye centres against the detector's
    /// eye keypoints, mean over faces, over the normaliser. A few hundredths when the crop,
    /// coordinates and preprocessing are right; far above 0.1 when they are not. Absent for
    /// schemes without known eyes, or a detector without keypoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_eyes_vs_detector: Option<f64>,
}

/// An attribute model's answers against the reference's, per face.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttributeFigures {
    /// Faces compared.
    pub faces: usize,
    /// Faces whose gender (argmax of the first two outputs) differs from the reference's.
    pub gender_flips: u64,
    /// `gender_flips` over `faces`.
    pub gender_flip_rate: f64,
    /// Mean |age difference| in years (age = round(output 2 x 100), as InsightFace reads it).
    pub age_mae: f64,
    /// Largest |age difference| in years.
    pub age_error_max: f64,
    /// Faces whose candidate outputs are not all finite (they count as flips and fail the
    /// age gates).
    pub non_finite: usize,
}

/// A swapper's swapped faces against the reference's, face by face.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SwapperFigures {
    /// Target faces swapped (each with a source of another identity).
    pub faces: usize,
    /// The worst face's PSNR against the reference's swapped face (0..255 RGB), dB. A face
    /// identical to the reference's counts as 100 dB.
    pub psnr_min: f64,
    /// Mean PSNR over faces, dB.
    pub psnr_mean: f64,
    /// The worst face's SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, on luma).
    pub ssim_min: f64,
    /// Mean SSIM over faces.
    pub ssim_mean: f64,
    /// Largest |pixel difference| in 0..255.
    pub pixel_error_max: f64,
    /// The worst face's cosine between the recognizer's embeddings of the candidate's and
    /// the reference's swapped faces.
    pub identity_cosine_min: f64,
    /// Mean of those cosines.
    pub identity_cosine_mean: f64,
    /// Faces whose match with the source identity (cosine to the source's embedding at or
    /// above `identity_threshold`) differs from the reference's.
    pub identity_flips: u64,
    /// Faces whose swapped output is not all finite (they fail every gate).
    pub non_finite: usize,
}

/// How a swapper was fed: its source latents' recognizer, and the pairs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwapperSetup {
    /// The input fed target face crops.
    pub target_input: String,
    /// The input fed source latents.
    pub source_input: String,
    /// The recognizer whose embeddings make the latents, as the manifest names it.
    pub recognizer: String,
    /// Whether the latent is multiplied by the model's `emap`, as INSwapper does.
    pub emap: bool,
    /// Target faces paired with a source of another identity.
    pub pairs: usize,
    /// How identities were known: identity folders, a pairs file, or unlabelled.
    pub identities: String,
    /// The threshold identity flips are counted at.
    pub identity_threshold: f64,
    /// Mean cosine of the reference's swapped faces to their source identity.
    pub reference_to_source_mean: f64,
    /// Mean cosine of the reference's swapped faces to their target identity.
    pub reference_to_target_mean: f64,
}

/// A landmark model's points against the reference's, per face.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LandmarkFigures {
    /// NME per face: mean point distance over the face's normaliser.
    pub nme: Summary,
    /// Mean point distance over every face, in photo pixels.
    pub px_mean: f64,
    /// Largest distance of any point of any face, in photo pixels.
    pub px_max: f64,
    /// Faces whose candidate points are not all finite (they count as failing `nme_max`).
    pub non_finite: usize,
    /// 3D models: per face, the largest of the pitch, yaw and roll (degrees) that turn the
    /// reference's points into the candidate's, estimated as InsightFace estimates pose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pose_error_deg: Option<Summary>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flips_at_reference_threshold_ci95: Option<[f64; 2]>,
    /// Flips the reference accepted and the candidate rejects.
    #[serde(default)]
    pub flips_accept_to_reject: u64,
    /// Flips the reference rejected and the candidate accepts.
    #[serde(default)]
    pub flips_reject_to_accept: u64,
    /// Exact McNemar test of the two flip counts (two-sided): small means the candidate
    /// decides differently, not by chance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcnemar_p: Option<f64>,
    /// candidate - reference score, per pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_difference: Option<ScoreDifferences>,
    /// Pair sets with folds: the candidate's LFW figures and the difference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lfw: Option<LfwComparison>,
}

/// A candidate's LFW-protocol figures against the reference's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LfwComparison {
    pub candidate: LfwFigures,
    /// Reference accuracy mean - candidate's.
    pub accuracy_drop: f64,
    /// Reference VAL@FAR=1e-3 mean - candidate's.
    pub val_drop: f64,
}

/// TAR at the operating FAR, reference and candidate.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct TarAtOperatingFar {
    pub reference: f64,
    pub candidate: f64,
    pub drop: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_ci95: Option<[f64; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_ci95: Option<[f64; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_ci95: Option<[f64; 2]>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall_ci95: Option<[f64; 2]>,
    pub fp_per_image: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp_per_image_ci95: Option<[f64; 2]>,
    pub iou: MeanMin,
    pub score_drift: MeanMax,
    pub landmark_nme: MeanMax,
    pub nms_parity: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nms_parity_ci95: Option<[f64; 2]>,
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
    /// 95% interval of `max` (resampled by image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ci95: Option<[f64; 2]>,
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

impl CompareReport {
    /// The markdown section on how sure each gated figure is: its 95% interval beside the
    /// verdict, the McNemar test of flips, and the LFW protocol's figures. Empty without
    /// intervals or LFW figures.
    pub(crate) fn uncertainty_md(&self) -> String {
        let mut s = String::new();
        if let Some(r) = &self.dataset.resampling {
            s += &format!(
                "\n\n## How sure\n\n95% bootstrap intervals: {} replicates (seed {}), resampled by {} ({} units; {}).\n\n| candidate | figure | value | 95% interval | limit | verdict |\n|---|---|---|---|---|---|\n",
                r.replicates, r.seed, r.by, r.units, r.note
            );
            for c in &self.candidates {
                for g in c.gates.iter().flatten() {
                    let iv = c
                        .intervals
                        .as_ref()
                        .and_then(|m| m.get(&g.metric))
                        .map(|sp| format!("[{:.6}, {:.6}]", sp.ci95[0], sp.ci95[1]))
                        .unwrap_or_else(|| "-".into());
                    let verdict = match (g.passed, g.status.as_deref()) {
                        (_, Some(st)) => {
                            format!("{} ({st})", if g.passed { "pass" } else { "FAIL" })
                        }
                        (true, None) => "pass".into(),
                        (false, None) => "FAIL".into(),
                    };
                    s += &format!(
                        "| {} | {} | {} | {iv} | {} | {verdict} |\n",
                        c.label,
                        g.metric,
                        g.value.map_or("-".into(), |v| format!("{v:.6}")),
                        g.limit
                    );
                }
            }
        }
        let flips: Vec<String> = self
            .candidates
            .iter()
            .filter_map(|c| {
                let v = c.verification.as_ref()?;
                Some(format!(
                    "| {} | {} | {} | {} | {} |\n",
                    c.label,
                    v.flips_accept_to_reject,
                    v.flips_reject_to_accept,
                    v.mcnemar_p.map_or("-".into(), |p| format!("{p:.4}")),
                    v.score_difference.as_ref().map_or("-".into(), |d| format!(
                        "{:+.5} ± {:.5} (p01 {:+.5}, p99 {:+.5})",
                        d.mean, d.std, d.p01, d.p99
                    ))
                ))
            })
            .collect();
        if !flips.is_empty() {
            s += "\n\nPaired decisions at the reference's threshold (exact McNemar test; a small p means the candidate decides differently, not by chance):\n\n| candidate | accept -> reject | reject -> accept | McNemar p | score difference (candidate - reference) |\n|---|---|---|---|---|\n";
            s += &flips.concat();
        }
        if let Some(l) = &self.reference.lfw {
            s += &format!(
                "\n\nLFW protocol ({} folds in file order{}): reference accuracy {:.4} ± {:.4}, VAL@FAR=1e-3 {:.4} ± {:.4} (FAR {:.5}).\n\n| candidate | accuracy | accuracy drop | VAL@FAR=1e-3 | VAL drop |\n|---|---|---|---|---|\n",
                l.folds,
                if l.flip { ", with flip" } else { "" },
                l.accuracy.mean,
                l.accuracy.std,
                l.val_at_far_1e3.mean,
                l.val_at_far_1e3.std,
                l.val_at_far_1e3.far
            );
            for c in &self.candidates {
                if let Some(x) = c.verification.as_ref().and_then(|v| v.lfw.as_ref()) {
                    s += &format!(
                        "| {} | {:.4} ± {:.4} | {:+.4} | {:.4} ± {:.4} | {:+.4} |\n",
                        c.label,
                        x.candidate.accuracy.mean,
                        x.candidate.accuracy.std,
                        x.accuracy_drop,
                        x.candidate.val_at_far_1e3.mean,
                        x.candidate.val_at_far_1e3.std,
                        x.val_drop
                    );
                }
            }
        }
        s
    }
}
