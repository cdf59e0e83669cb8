//! `chain`: a pack compared as it is deployed. InsightFace's `FaceAnalysis` runs the detector
//! at its size, keeps faces after NMS, and warps each face by its five keypoints into the
//! recognizer's ArcFace crop. The chain runs that way once with every model's ONNX original
//! (the reference) and once per named combination of artifacts, models left unnamed staying
//! ONNX. A candidate detector's own boxes and keypoints make its crops, so a detector that
//! moves keypoints shows in the recognizer's embeddings here, and nowhere in per-model
//! compare.
//!
//! Landmark and attribute models (`landmarks:`, `attributes:`) get each face's box crop (or
//! the crop their input declares), as `FaceAnalysis` feeds them, from the detector of the
//! run.
//!
//! Figures per combination: faces found (recall and false positives per image against the
//! reference chain's faces), the embedding cosine of every matched face (and of each image's
//! largest face, what per-model compare measures on aligned crops), each landmark model's
//! NME and each attribute model's gender flips and age error on matched faces, and
//! verification over the dataset's pairs through the whole chain (each image's largest
//! face). With more than one stage swapped, `attribution` gives the same figures with only
//! one stage swapped.

use std::collections::BTreeMap;

use camino::Utf8PathBuf;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::{Kind, Problem, StepContext, StepKind, StepOutcome};
use crate::error::{Error, Result};
use crate::manifest::{ModelSpec, Task};

mod figures;
mod stages;

pub(crate) use figures::failed_gates;

use stages::{Extra, Found, Memo};

/// v1: detector and recognizer. v2: landmark and attribute models, largest-face cosine.
const IMPL_VERSION: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChainParams {
    /// Photos (a folder per identity gives verification pairs).
    pub dataset: String,
    /// The pack's detector and recognizer, by their names under `models:`.
    pub detector: String,
    pub recognizer: String,
    /// The pack's landmark models, by name, each fed a box crop of every face.
    #[serde(default)]
    pub landmarks: Vec<String>,
    /// The pack's attribute models (genderage), by name.
    #[serde(default)]
    pub attributes: Vec<String>,
    /// Named combinations: model name -> the artifact step standing in for it.
    pub combinations: IndexMap<String, BTreeMap<String, String>>,
    /// The IoU at which a candidate face matches a reference face.
    #[serde(default = "default_iou")]
    pub min_iou: f32,
    /// Verification's operating FAR (flips are counted at the reference's threshold there).
    #[serde(default = "default_far")]
    pub operating_far: f64,
    /// Gates every combination must meet (see [`ChainGates`]).
    #[serde(default)]
    pub gates: ChainGates,
    /// Per-combination gates, by combination name, over `gates` (each limit set here
    /// replaces that limit there).
    #[serde(default)]
    pub combination_gates: BTreeMap<String, ChainGates>,
}

impl ChainGates {
    /// These gates with every limit `over` sets replaced by its.
    pub(crate) fn overridden(&self, over: Option<&ChainGates>) -> ChainGates {
        let Some(o) = over else {
            return self.clone();
        };
        ChainGates {
            recall_min: o.recall_min.or(self.recall_min),
            fp_per_image_max: o.fp_per_image_max.or(self.fp_per_image_max),
            cosine_min: o.cosine_min.or(self.cosine_min),
            largest_cosine_min: o.largest_cosine_min.or(self.largest_cosine_min),
            flips_max: o.flips_max.or(self.flips_max),
            eer_max: o.eer_max.or(self.eer_max),
            nme_mean_max: o.nme_mean_max.or(self.nme_mean_max),
            nme_max: o.nme_max.or(self.nme_max),
            gender_flips_max: o.gender_flips_max.or(self.gender_flips_max),
            age_mae_max: o.age_mae_max.or(self.age_mae_max),
        }
    }
}

fn default_iou() -> f32 {
    0.5
}

fn default_far() -> f64 {
    1e-2
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChainGates {
    #[serde(default)]
    pub recall_min: Option<f64>,
    #[serde(default)]
    pub fp_per_image_max: Option<f64>,
    /// The worst matched face's embedding cosine.
    #[serde(default)]
    pub cosine_min: Option<f64>,
    /// The worst cosine over each image's largest face.
    #[serde(default)]
    pub largest_cosine_min: Option<f64>,
    /// Verification pairs whose decision flips at the reference's threshold.
    #[serde(default)]
    pub flips_max: Option<usize>,
    /// The candidate chain's EER.
    #[serde(default)]
    pub eer_max: Option<f64>,
    /// Every landmark model's mean and worst-face NME.
    #[serde(default)]
    pub nme_mean_max: Option<f64>,
    #[serde(default)]
    pub nme_max: Option<f64>,
    /// Every attribute model's gender flips and mean age error (years).
    #[serde(default)]
    pub gender_flips_max: Option<usize>,
    #[serde(default)]
    pub age_mae_max: Option<f64>,
}

/// The chain's figures for one combination.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainFigures {
    /// Reference faces matched by a candidate face (IoU >= min_iou), over reference faces.
    pub recall: f64,
    /// Candidate faces matching none, per image.
    pub fp_per_image: f64,
    /// Embedding cosine of matched faces: min and mean (None without matched faces).
    pub cosine_min: Option<f64>,
    /// Mean embedding cosine of matched faces.
    pub cosine_mean: Option<f64>,
    /// The same over each image's largest reference face, when matched: the faces per-model
    /// compare crops from a dataset's `align:`.
    #[serde(default)]
    pub largest_cosine_min: Option<f64>,
    /// Mean cosine over each image's largest reference face.
    #[serde(default)]
    pub largest_cosine_mean: Option<f64>,
    /// Matched faces.
    pub faces: usize,
    /// Through the chain: TAR at the operating FAR, EER, and pairs whose decision at the
    /// reference's threshold differs (None without identities).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<ChainVerification>,
    /// Each landmark model's NME on matched faces.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub landmarks: BTreeMap<String, ChainLandmarks>,
    /// Each attribute model's answers on matched faces.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, ChainAttributes>,
}

/// A landmark model's points through the chain against the reference chain's, per matched
/// face: mean point distance over the reference's normaliser (its scheme's outer-eye-corner
/// distance, or sqrt(w h) of the reference face's box).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainLandmarks {
    /// Matched faces compared.
    pub faces: usize,
    /// Mean NME over faces.
    pub nme_mean: f64,
    /// The worst face's NME.
    pub nme_max: f64,
}

/// An attribute model's answers through the chain against the reference chain's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainAttributes {
    /// Matched faces compared.
    pub faces: usize,
    /// Faces whose gender differs (a non-finite answer counts).
    pub gender_flips: usize,
    /// Mean |age difference| in years.
    pub age_mae: f64,
    /// Worst |age difference| in years.
    pub age_error_max: f64,
}

/// Verification over the dataset's pairs through a whole chain, against the reference chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainVerification {
    /// TAR at the operating FAR through the candidate chain (None: below the set's FAR
    /// resolution)...
    pub tar_at_operating_far: Option<f64>,
    /// ...and through the reference chain.
    pub reference_tar_at_operating_far: Option<f64>,
    /// Equal error rate through the candidate chain...
    pub eer: f64,
    /// ...and through the reference chain.
    pub reference_eer: f64,
    /// Pairs whose decision at the reference chain's threshold the candidate reverses.
    pub flips: usize,
    /// Pairs scored.
    pub pairs: usize,
}

/// One combination's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainCombination {
    /// The combination's name.
    pub name: String,
    /// Model -> artifact step swapped in.
    pub swapped: BTreeMap<String, String>,
    /// The chain's figures against the reference chain.
    pub figures: ChainFigures,
    /// With several stages swapped: each stage alone, by model name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attribution: BTreeMap<String, ChainFigures>,
    /// Gates that failed, with the figure and the limit.
    pub failed_gates: Vec<String>,
}

/// `chain`'s report.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainReport {
    /// `facebuild.chain/1`.
    pub schema: String,
    /// The step's name.
    pub step: String,
    /// `chain`.
    pub kind: String,
    /// The chain's models by their names under `models:`: detector, recognizer, then the
    /// landmark and attribute models.
    #[serde(default)]
    pub models: Vec<String>,
    /// Photos run through every chain.
    pub images: usize,
    /// Faces the reference chain found.
    pub reference_faces: usize,
    /// Every combination, in the manifest's order.
    pub combinations: Vec<ChainCombination>,
}

fn model_of<'a>(ctx: &'a StepContext, name: &str) -> Result<&'a ModelSpec> {
    ctx.manifest
        .models
        .get(name)
        .map(|(m, _)| m)
        .ok_or_else(|| Error::Step {
            step: ctx.step.name.clone(),
            message: format!("`{name}` is not among the pipeline's `models:`"),
            hint: Some("a chain names its pack's models by the names under `models:`".into()),
        })
}

/// Model -> the artifact step swapped in for it.
type Swaps = BTreeMap<String, String>;

/// The pack's models as the chain runs them.
struct Pack<'a> {
    det: &'a ModelSpec,
    rec: &'a ModelSpec,
    /// The recognizer's feeding: its preprocessing, else ArcFace's.
    rec_pre: crate::manifest::Preprocessing,
    extras: Vec<Extra<'a>>,
}

impl<'a> Pack<'a> {
    fn of(ctx: &'a StepContext, p: &'a ChainParams) -> Result<Pack<'a>> {
        let det = model_of(ctx, &p.detector)?;
        let rec = model_of(ctx, &p.recognizer)?;
        if let Some(why) = task_problem(det, rec) {
            return Err(Error::Step {
                step: ctx.step.name.clone(),
                message: why,
                hint: Some(
                    "name the pack's detector and recognizer by their names under `models:`".into(),
                ),
            });
        }
        let mut extras = Vec::new();
        for (name, task) in p
            .landmarks
            .iter()
            .map(|n| (n, Task::Landmarks))
            .chain(p.attributes.iter().map(|n| (n, Task::Attribute)))
        {
            let spec = model_of(ctx, name)?;
            let step = || ctx.step.name.clone();
            if spec.task != task {
                return Err(Error::Step {
                    step: step(),
                    message: format!(
                        "`{name}` is a {:?} model, listed under `{}`",
                        spec.task,
                        if task == Task::Landmarks {
                            "landmarks"
                        } else {
                            "attributes"
                        }
                    ),
                    hint: Some(
                        "`landmarks:` lists landmark models, `attributes:` attribute models".into(),
                    ),
                });
            }
            let pre = spec.preprocessing.as_ref().ok_or_else(|| Error::Step {
                step: step(),
                message: format!("model `{name}` declares no `preprocessing`, which its crops need"),
                hint: Some("e.g. `preprocessing: {color: RGB, mean: [0, 0, 0], std: [1, 1, 1], size: [192, 192]}`".into()),
            })?;
            extras.push(Extra { name, spec, pre });
        }
        let rec_pre = rec
            .preprocessing
            .clone()
            .unwrap_or_else(stages::arcface_feed);
        Ok(Pack {
            det,
            rec,
            rec_pre,
            extras,
        })
    }

    /// The landmark models by name, for their point schemes.
    fn landmark_models(&self) -> figures::Models<'a> {
        self.extras
            .iter()
            .filter(|x| x.spec.task == Task::Landmarks)
            .map(|x| (x.name.to_string(), x.spec))
            .collect()
    }
}

/// Every combination's figures and attribution, each set of swaps run once.
fn combinations(
    ctx: &StepContext,
    p: &ChainParams,
    pack: &Pack,
    (images, pairs): (
        &[image::RgbImage],
        Option<&[crate::metrics::verification::Pair]>,
    ),
) -> Result<(std::rc::Rc<Vec<Found>>, Vec<ChainCombination>)> {
    // A stage swapped alone (attribution) is often a combination of its own, and most
    // stages are shared between combinations: each runs once.
    let mut memo: BTreeMap<Swaps, std::rc::Rc<Vec<Found>>> = BTreeMap::new();
    let mut per_stage = Memo::new(images);
    let rec = Extra {
        name: &p.recognizer,
        spec: pack.rec,
        pre: &pack.rec_pre,
    };
    let mut chain = |swapped: &Swaps| -> Result<std::rc::Rc<Vec<Found>>> {
        if let Some(f) = memo.get(swapped) {
            return Ok(f.clone());
        }
        ctx.progress.set_message(if swapped.is_empty() {
            "chain: the ONNX originals".to_string()
        } else {
            format!(
                "chain: {}",
                swapped.values().cloned().collect::<Vec<_>>().join(" + ")
            )
        });
        let found = std::rc::Rc::new(stages::run_chain(
            ctx,
            &mut per_stage,
            ((&p.detector, pack.det), &rec, &pack.extras),
            swapped,
        )?);
        memo.insert(swapped.clone(), found.clone());
        Ok(found)
    };
    let models = pack.landmark_models();
    let reference = chain(&BTreeMap::new())?;
    let mut out = Vec::new();
    for (name, swapped) in &p.combinations {
        let cand = chain(swapped)?;
        let figs = figures::figures((&reference, &cand), pairs, p, &models);
        let mut attribution = BTreeMap::new();
        if swapped.len() > 1 {
            for (model, step) in swapped {
                let one: Swaps = [(model.clone(), step.clone())].into();
                let alone = chain(&one)?;
                let f = figures::figures((&reference, &alone), pairs, p, &models);
                attribution.insert(model.clone(), f);
            }
        }
        out.push(ChainCombination {
            name: name.clone(),
            swapped: swapped.clone(),
            failed_gates: failed_gates(&p.gates.overridden(p.combination_gates.get(name)), &figs),
            figures: figs,
            attribution,
        });
    }
    Ok((reference, out))
}

fn run(ctx: &StepContext, p: &ChainParams) -> Result<StepOutcome> {
    let pack = Pack::of(ctx, p)?;
    let dir = &ctx.datasets[&p.dataset];
    let spec = &ctx.manifest.datasets[&p.dataset];
    let files = crate::preprocess::list_images(dir, spec.count, spec.seed)?;
    let images: Vec<image::RgbImage> = files
        .iter()
        .map(|f| crate::preprocess::decode_image(f))
        .collect::<Result<_>>()?;
    let pairs =
        super::compare::pairs_of(ctx, &p.dataset, &files)?.map(|(set, _)| figures::listed(&set));
    let (reference, combinations) = combinations(ctx, p, &pack, (&images, pairs.as_deref()))?;
    let reference_faces = reference.iter().map(|f| f.faces.len()).sum();
    let faces = reference_faces_json(dir, &files, &reference);
    let faces_path = super::write_report(ctx.workdir, "reference.json", &faces)?;
    let report = ChainReport {
        schema: "facebuild.chain/1".into(),
        step: ctx.step.name.clone(),
        kind: "chain".into(),
        models: [&p.detector, &p.recognizer]
            .into_iter()
            .chain(&p.landmarks)
            .chain(&p.attributes)
            .cloned()
            .collect(),
        images: images.len(),
        reference_faces,
        combinations,
    };
    let path = super::write_report(ctx.workdir, "report.json", &report)?;
    let failed: Vec<String> = report
        .combinations
        .iter()
        .filter(|c| !c.failed_gates.is_empty())
        .map(|c| format!("`{}`: {}", c.name, c.failed_gates.join("; ")))
        .collect();
    if !failed.is_empty() {
        return Err(Error::Step {
            step: ctx.step.name.clone(),
            message: format!("chain gates failed: {}", failed.join(" | ")),
            hint: Some("report.json has every combination's figures and attribution".into()),
        });
    }
    let worst = report
        .combinations
        .iter()
        .filter_map(|c| c.figures.cosine_min)
        .reduce(f64::min);
    let summary = serde_json::json!({
        "images": report.images,
        "reference_faces": report.reference_faces,
        "combinations": report.combinations.len(),
        "worst_cosine": worst,
        "worst_recall": report.combinations.iter().map(|c| c.figures.recall).reduce(f64::min),
    });
    let outputs: BTreeMap<String, Utf8PathBuf> = [
        ("report.json".to_string(), path),
        ("reference.json".to_string(), faces_path),
    ]
    .into();
    Ok(StepOutcome { outputs, summary })
}

/// `reference.json`: what the reference chain found in each photo (path relative to the
/// dataset): every face's box, score, keypoints and embedding, largest first, and its
/// landmark models' points and attribute models' answers. A client of the ONNX pack
/// (FaceAnalysis) can be checked against it face by face.
fn reference_faces_json(
    dir: &camino::Utf8Path,
    files: &[Utf8PathBuf],
    reference: &[Found],
) -> serde_json::Value {
    let images: Vec<serde_json::Value> = files
        .iter()
        .zip(reference)
        .map(|(f, found)| {
            let faces: Vec<serde_json::Value> = found
                .faces
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    serde_json::json!({
                        "bbox": d.bbox,
                        "score": d.score,
                        "kps": d.kps,
                        "embedding": found.embeddings.get(i),
                        "landmarks": found.points.iter().map(|(m, p)| (m.clone(), p.get(i))).collect::<BTreeMap<_, _>>(),
                        "attributes": found.answers.iter().map(|(m, a)| (m.clone(), a.get(i).copied().flatten().map(|a| serde_json::json!({"gender": a.gender, "age": a.age})))).collect::<BTreeMap<_, _>>(),
                    })
                })
                .collect();
            serde_json::json!({"file": f.strip_prefix(dir).unwrap_or(f), "faces": faces})
        })
        .collect();
    serde_json::json!({"schema": "facebuild.chain-reference/1", "images": images})
}

impl Kind for ChainParams {
    fn impl_version(&self) -> u32 {
        IMPL_VERSION
    }
    fn toolchain_pieces(&self) -> Vec<&'static str> {
        vec!["onnxruntime", "openvino"]
    }
    fn datasets(&self) -> Vec<String> {
        vec![self.dataset.clone()]
    }
    fn references(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .combinations
            .values()
            .flat_map(|c| c.values().cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    }
    fn check_reference(&self, target: &str, kind: StepKind) -> std::result::Result<(), Problem> {
        super::expect_artifact(target, kind)
    }
    fn validate(&self) -> Vec<Problem> {
        let mut v = Vec::new();
        if self.combinations.is_empty() {
            v.push((
                "`combinations` is empty: nothing to compare with the reference chain".into(),
                Some("e.g. `all_fp16: {det: det_openvino_fp16, rec: rec_openvino_fp16}`".into()),
            ));
        }
        for name in self.combination_gates.keys() {
            if !self.combinations.contains_key(name) {
                v.push((
                    format!("`combination_gates` names `{name}`, which is not in `combinations`"),
                    None,
                ));
            }
        }
        for (name, c) in &self.combinations {
            for model in c.keys() {
                if model != &self.detector
                    && model != &self.recognizer
                    && !self.landmarks.contains(model)
                    && !self.attributes.contains(model)
                {
                    v.push((
                        format!("combination `{name}` swaps `{model}`, which is not one of the chain's models (detector `{}`, recognizer `{}`, landmarks, attributes)", self.detector, self.recognizer),
                        Some("a combination maps the chain's model names to artifact steps".into()),
                    ));
                }
            }
        }
        v
    }
    fn isa_dependent(&self) -> bool {
        true
    }
    fn spans_models(&self) -> bool {
        true
    }
    fn slurm_refusal(&self) -> Option<(&'static str, &'static str)> {
        Some((
            "a chain reads every model of its pack, and runs where they are",
            "run it locally: `runs_on: {executor: local}`",
        ))
    }
    fn run(&self, ctx: &StepContext) -> Result<StepOutcome> {
        run(ctx, self)
    }
}

/// Whether the models' tasks fit a chain: a detector with keypoints and a recognizer.
pub(crate) fn task_problem(det: &ModelSpec, rec: &ModelSpec) -> Option<String> {
    (det.task != Task::Detection || rec.task != Task::Recognition).then(|| {
        "a chain's `detector` must be a detection model and its `recognizer` a recognition model"
            .into()
    })
}
