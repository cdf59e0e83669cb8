//! `chain`: a pack compared as it is deployed. InsightFace's `FaceAnalysis` runs the detector
//! at its size, keeps faces after NMS, and warps each face by its five keypoints into the
//! recognizer's ArcFace crop. The chain runs that way once with every model's ONNX original
//! (the reference) and once per named combination of artifacts, models left unnamed staying
//! ONNX. A candidate detector's own boxes and keypoints make its crops, so a detector that
//! moves keypoints shows in the recognizer's embeddings here, and nowhere in per-model
//! compare.
//!
//! Figures per combination: faces found (recall and false positives per image against the
//! reference chain's faces), the embedding cosine of every matched face, and verification
//! over the dataset's pairs through the whole chain (each image's largest face). With more
//! than one stage swapped, `attribution` gives the same figures with only one stage swapped.

use std::collections::BTreeMap;

use camino::Utf8PathBuf;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::{Kind, Problem, StepContext, StepKind, StepOutcome};
use crate::detect::Detection;
use crate::error::{Error, Result};
use crate::manifest::{ModelSpec, Task};
use crate::runtime::{LoadedModel, Runtime};

/// v1: detector and recognizer.
const IMPL_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChainParams {
    /// Photos (a folder per identity gives verification pairs).
    pub dataset: String,
    /// The pack's detector and recognizer, by their names under `models:`.
    pub detector: String,
    pub recognizer: String,
    /// Named combinations: model name -> the artifact step standing in for it.
    pub combinations: IndexMap<String, BTreeMap<String, String>>,
    /// The IoU at which a candidate face matches a reference face.
    #[serde(default = "default_iou")]
    pub min_iou: f32,
    /// Verification's operating FAR (flips are counted at the reference's threshold there).
    #[serde(default = "default_far")]
    pub operating_far: f64,
    /// Per-combination gates: `recall_min`, `fp_per_image_max`, `cosine_min`, `flips_max`.
    #[serde(default)]
    pub gates: ChainGates,
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
    #[serde(default)]
    pub cosine_min: Option<f64>,
    #[serde(default)]
    pub flips_max: Option<usize>,
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
    /// Matched faces.
    pub faces: usize,
    /// Through the chain: TAR at the operating FAR, EER, and pairs whose decision at the
    /// reference's threshold differs (None without identities).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<ChainVerification>,
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
    /// Photos run through every chain.
    pub images: usize,
    /// Faces the reference chain found.
    pub reference_faces: usize,
    /// Every combination, in the manifest's order.
    pub combinations: Vec<ChainCombination>,
}

/// The reference's or one combination's models, loaded.
struct Stages {
    det: Box<dyn LoadedModel>,
    rec: Box<dyn LoadedModel>,
}

/// What one chain run found in one image: its faces, and each face's embedding.
#[derive(Clone)]
struct Found {
    faces: Vec<Detection>,
    embeddings: Vec<Vec<f32>>,
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

/// Load the model for stage `model`: the artifact `swapped` names, else its ONNX source.
fn load(
    ctx: &StepContext,
    model: &str,
    swapped: &BTreeMap<String, String>,
) -> Result<Box<dyn LoadedModel>> {
    let ort = crate::runtime::onnxruntime::OnnxRuntime::new(ctx.toolchain, None)?;
    let Some(step) = swapped.get(model) else {
        let src = ctx.sources.get(model).ok_or_else(|| {
            anyhow::anyhow!("the source of `{model}` was not resolved for this step")
        })?;
        return ort.load(src);
    };
    let outs = ctx
        .upstream
        .get(step)
        .ok_or_else(|| anyhow::anyhow!("{}", super::unavailable_upstream(step)))?;
    if let (Some(xml), Some(bin)) = (outs.get("model.xml"), outs.get("model.bin")) {
        let ov = crate::runtime::openvino::OpenVino::new(ctx.toolchain, Default::default())?;
        return ov.load_ir(xml, bin);
    }
    if let Some(onnx) = outs.get("model.onnx") {
        return ort.load(onnx);
    }
    Err(Error::Step {
        step: ctx.step.name.clone(),
        message: format!("`{step}` has no model the chain can run here (model.onnx or model.xml)"),
        hint: Some("TensorRT engines run in the chain where TensorRT is installed; not yet".into()),
    })
}

/// Run the chain on one photo: detect at the detector's size, then each face's ArcFace crop
/// through the recognizer (L2-normalised), largest face first.
fn run_one(
    stages: &mut Stages,
    (det, rec): (&ModelSpec, &ModelSpec),
    img: &image::RgbImage,
) -> Result<Found> {
    let dpre = det
        .preprocessing
        .clone()
        .unwrap_or_else(|| crate::domain::Preprocessing::scrfd([640, 640]));
    // A recognizer declared without preprocessing is fed as ArcFace is.
    let (fitted, scale) = crate::preprocess::letterbox(img, dpre.size);
    let t = crate::preprocess::to_tensor(&fitted, &dpre, det.input.layout);
    let out = stages.det.run(&[(det.input.name.clone(), t.into_dyn())])?;
    let spec = det
        .detector
        .as_ref()
        .ok_or_else(|| Error::usage("the chain's detector declares no `detector:`"))?;
    let [h, w] = dpre.size;
    let mut faces: Vec<Detection> = crate::detect::decode(spec, &out, (h as usize, w as usize))?
        .into_iter()
        .filter(|d| d.kps.is_some())
        .map(|d| d.scaled(scale))
        .collect();
    faces.sort_by(|a, b| b.area().total_cmp(&a.area()));
    let rpre = rec
        .preprocessing
        .clone()
        .unwrap_or_else(|| crate::domain::Preprocessing {
            color: crate::domain::ColorOrder::RGB,
            mean: vec![127.5; 3],
            std: vec![127.5; 3],
            size: [112, 112],
            resize: None,
        });
    let size = rpre.size;
    let mut embeddings = Vec::new();
    for f in &faces {
        let kps = f.kps.as_ref().expect("filtered");
        let m = crate::preprocess::align::arcface_transform(kps, size);
        let crop = crate::preprocess::align::warp(img, &m, size[1], size[0]);
        let t = crate::preprocess::to_tensor(&crop, &rpre, rec.input.layout);
        let out = stages.rec.run(&[(rec.input.name.clone(), t.into_dyn())])?;
        let v: Vec<f32> = out
            .first()
            .map(|(_, a)| a.iter().copied().collect())
            .unwrap_or_default();
        embeddings.push(crate::metrics::similarity::normalized(&[v]).row(0).to_vec());
    }
    Ok(Found { faces, embeddings })
}

/// Every pair of `set`, listed.
fn listed(set: &crate::metrics::similarity::PairSet) -> Vec<crate::metrics::verification::Pair> {
    use crate::metrics::similarity::PairSet;
    match set {
        PairSet::Listed(p) => p.clone(),
        PairSet::All { ids } => {
            let mut v = Vec::new();
            for a in 0..ids.len() {
                for b in a + 1..ids.len() {
                    v.push(crate::metrics::verification::Pair {
                        a,
                        b,
                        same: ids[a] == ids[b],
                    });
                }
            }
            v
        }
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64) * (*y as f64))
        .sum()
}

/// Each pair's score through the chain: the cosine of the two images' largest faces (-1
/// when either has none, a certain rejection).
fn pair_scores(found: &[Found], pairs: &[crate::metrics::verification::Pair]) -> Vec<f64> {
    pairs
        .iter()
        .map(
            |p| match (found[p.a].embeddings.first(), found[p.b].embeddings.first()) {
                (Some(a), Some(b)) => cosine(a, b),
                _ => -1.0,
            },
        )
        .collect()
}

/// The figures of `cand` against `reference`.
fn figures(
    reference: &[Found],
    cand: &[Found],
    pairs: Option<&[crate::metrics::verification::Pair]>,
    p: &ChainParams,
) -> ChainFigures {
    let (mut ref_faces, mut matched, mut extra) = (0usize, 0usize, 0usize);
    let mut cosines = Vec::new();
    for (r, c) in reference.iter().zip(cand) {
        let m = crate::detect::match_detections(&r.faces, &c.faces, p.min_iou);
        ref_faces += m.reference;
        matched += m.matched;
        extra += m.candidate - m.matched;
        for (i, j) in &m.indices {
            cosines.push(cosine(&r.embeddings[*i], &c.embeddings[*j]));
        }
    }
    let verification = pairs.filter(|p| !p.is_empty()).map(|pairs| {
        use crate::metrics::verification::{SortedScores, verification_of};
        let sorted = |scores: &[f64]| {
            let (mut g, mut i) = (Vec::new(), Vec::new());
            for (pair, s) in pairs.iter().zip(scores) {
                if pair.same { g.push(*s) } else { i.push(*s) }
            }
            SortedScores::from_vecs(g, i)
        };
        let rs = pair_scores(reference, pairs);
        let cs = pair_scores(cand, pairs);
        let (rsorted, csorted) = (sorted(&rs), sorted(&cs));
        let rv = verification_of(&rsorted, p.operating_far);
        let cv = verification_of(&csorted, p.operating_far);
        let th = rv.threshold_at_operating_far;
        ChainVerification {
            tar_at_operating_far: csorted.tar_at_far(p.operating_far),
            reference_tar_at_operating_far: rsorted.tar_at_far(p.operating_far),
            eer: cv.eer,
            reference_eer: rv.eer,
            // Decisions at the reference's threshold that the candidate chain reverses.
            flips: rs
                .iter()
                .zip(&cs)
                .filter(|(r, c)| (**r >= th) != (**c >= th))
                .count(),
            pairs: pairs.len(),
        }
    });
    ChainFigures {
        recall: if ref_faces == 0 {
            1.0
        } else {
            matched as f64 / ref_faces as f64
        },
        fp_per_image: extra as f64 / reference.len().max(1) as f64,
        cosine_min: cosines.iter().copied().reduce(f64::min),
        cosine_mean: (!cosines.is_empty())
            .then(|| cosines.iter().sum::<f64>() / cosines.len() as f64),
        faces: matched,
        verification,
    }
}

fn failed_gates(g: &ChainGates, f: &ChainFigures) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(min) = g.recall_min
        && f.recall < min
    {
        out.push(format!("recall_min: {:.4} < {min}", f.recall));
    }
    if let Some(max) = g.fp_per_image_max
        && f.fp_per_image > max
    {
        out.push(format!("fp_per_image_max: {:.4} > {max}", f.fp_per_image));
    }
    if let Some(min) = g.cosine_min {
        match f.cosine_min {
            Some(c) if c >= min => {}
            Some(c) => out.push(format!("cosine_min: {c:.6} < {min}")),
            None => out.push("cosine_min: no matched face, nothing measured".into()),
        }
    }
    if let Some(max) = g.flips_max {
        match &f.verification {
            Some(v) if v.flips <= max => {}
            Some(v) => out.push(format!("flips_max: {} > {max}", v.flips)),
            None => out.push("flips_max: the dataset has no identities, nothing measured".into()),
        }
    }
    out
}

/// Model -> the artifact step swapped in for it.
type Swaps = BTreeMap<String, String>;

/// One chain over every image, with the stages `swapped` names.
fn run_chain(
    ctx: &StepContext,
    p: &ChainParams,
    swapped: &BTreeMap<String, String>,
    (det, rec): (&ModelSpec, &ModelSpec),
    images: &[image::RgbImage],
) -> Result<Vec<Found>> {
    let mut stages = Stages {
        det: load(ctx, &p.detector, swapped)?,
        rec: load(ctx, &p.recognizer, swapped)?,
    };
    ctx.progress.set_message(if swapped.is_empty() {
        "chain: the ONNX originals".to_string()
    } else {
        format!(
            "chain: {}",
            swapped.values().cloned().collect::<Vec<_>>().join(" + ")
        )
    });
    images
        .iter()
        .map(|img| {
            ctx.check_cancelled()?;
            run_one(&mut stages, (det, rec), img)
        })
        .collect()
}

fn run(ctx: &StepContext, p: &ChainParams) -> Result<StepOutcome> {
    let det = model_of(ctx, &p.detector)?;
    let rec = model_of(ctx, &p.recognizer)?;
    let dir = &ctx.datasets[&p.dataset];
    let spec = &ctx.manifest.datasets[&p.dataset];
    let files = crate::preprocess::list_images(dir, spec.count, spec.seed)?;
    let images: Vec<image::RgbImage> = files
        .iter()
        .map(|f| crate::preprocess::decode_image(f))
        .collect::<Result<_>>()?;
    if let Some(why) = task_problem(det, rec) {
        return Err(Error::Step {
            step: ctx.step.name.clone(),
            message: why,
            hint: Some(
                "name the pack's detector and recognizer by their names under `models:`".into(),
            ),
        });
    }
    let pairs = super::compare::pairs_of(ctx, &p.dataset, &files)?.map(|(set, _)| listed(&set));
    // A stage swapped alone (attribution) is often a combination of its own: each set of
    // swaps runs once.
    let memo: std::cell::RefCell<BTreeMap<Swaps, std::rc::Rc<Vec<Found>>>> = Default::default();
    let chain = |swapped: &BTreeMap<String, String>| -> Result<std::rc::Rc<Vec<Found>>> {
        if let Some(f) = memo.borrow().get(swapped) {
            return Ok(f.clone());
        }
        let found = std::rc::Rc::new(run_chain(ctx, p, swapped, (det, rec), &images)?);
        memo.borrow_mut().insert(swapped.clone(), found.clone());
        Ok(found)
    };
    let reference = chain(&BTreeMap::new())?;
    let mut combinations = Vec::new();
    for (name, swapped) in &p.combinations {
        let cand = chain(swapped)?;
        let figs = figures(&reference, &cand, pairs.as_deref(), p);
        let mut attribution = BTreeMap::new();
        if swapped.len() > 1 {
            for (model, step) in swapped {
                let one: BTreeMap<String, String> = [(model.clone(), step.clone())].into();
                let alone = chain(&one)?;
                attribution.insert(
                    model.clone(),
                    figures(&reference, &alone, pairs.as_deref(), p),
                );
            }
        }
        combinations.push(ChainCombination {
            name: name.clone(),
            swapped: swapped.clone(),
            failed_gates: failed_gates(&p.gates, &figs),
            figures: figs,
            attribution,
        });
    }
    let report = ChainReport {
        schema: "facebuild.chain/1".into(),
        step: ctx.step.name.clone(),
        kind: "chain".into(),
        images: images.len(),
        reference_faces: reference.iter().map(|f| f.faces.len()).sum(),
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
    let outputs: BTreeMap<String, Utf8PathBuf> = [("report.json".to_string(), path)].into();
    Ok(StepOutcome { outputs, summary })
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
        for (name, c) in &self.combinations {
            for model in c.keys() {
                if model != &self.detector && model != &self.recognizer {
                    v.push((
                        format!("combination `{name}` swaps `{model}`, which is neither the chain's detector (`{}`) nor its recognizer (`{}`)", self.detector, self.recognizer),
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
