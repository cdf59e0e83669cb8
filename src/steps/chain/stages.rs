//! One chain run over one photo, as `FaceAnalysis.get` runs it: the detector at its size,
//! then for each face the ArcFace crop for the recognizer and a box crop (or the crop the
//! model declares) for each landmark and attribute model.

use std::collections::BTreeMap;

use crate::detect::Detection;
use crate::error::{Error, Result};
use crate::manifest::{ModelSpec, Preprocessing, Task};
use crate::metrics::landmarks::PointLayout;
use crate::preprocess::align::{FaceCrop, box_transform, face_transform};
use crate::runtime::{LoadedModel, Runtime};
use crate::steps::StepContext;
use crate::steps::compare::attribute::{Answer, answer};

/// A landmark or attribute model of the chain, by its name under `models:`.
pub(super) struct Extra<'a> {
    pub name: &'a str,
    pub spec: &'a ModelSpec,
    pub pre: &'a Preprocessing,
}

/// What one chain run found in one image: its faces (largest first) and, per face, its
/// embedding, each landmark model's points (photo pixels) and each attribute model's answer.
#[derive(Clone)]
pub(super) struct Found {
    pub faces: Vec<Detection>,
    pub embeddings: Vec<Vec<f32>>,
    /// Landmark model -> per face, the points (empty when the output was unreadable).
    pub points: BTreeMap<String, Vec<Vec<[f64; 2]>>>,
    /// Attribute model -> per face, the answer (None when not finite).
    pub answers: BTreeMap<String, Vec<Option<Answer>>>,
}

/// Load the model for stage `model`: the artifact `swapped` names, else its ONNX source.
pub(super) fn load(
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
        .ok_or_else(|| anyhow::anyhow!("{}", crate::steps::unavailable_upstream(step)))?;
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

/// How the recognizer is fed when it declares no preprocessing: as ArcFace is.
pub(super) fn arcface_feed() -> Preprocessing {
    Preprocessing {
        color: crate::domain::ColorOrder::RGB,
        mean: vec![127.5; 3],
        std: vec![127.5; 3],
        size: [112, 112],
        resize: None,
    }
}

/// Each image's rows of one model's output, one per face.
type Rows = std::rc::Rc<Vec<Vec<Vec<f32>>>>;

/// Each stage's output over every image, computed once per distinct (detector artifact,
/// model artifact): attribution and combinations share most stages, and the detector and
/// models load once per artifact.
pub(super) struct Memo<'a> {
    images: &'a [image::RgbImage],
    models: BTreeMap<(String, Option<String>), Box<dyn LoadedModel>>,
    /// Detector artifact (None: ONNX) -> each image's faces, largest first.
    faces: BTreeMap<Option<String>, std::rc::Rc<Vec<Vec<Detection>>>>,
    /// (detector artifact, model, its artifact) -> each image's per-face outputs.
    outputs: BTreeMap<(Option<String>, String, Option<String>), Rows>,
}

impl<'a> Memo<'a> {
    pub(super) fn new(images: &'a [image::RgbImage]) -> Memo<'a> {
        Memo {
            images,
            models: BTreeMap::new(),
            faces: BTreeMap::new(),
            outputs: BTreeMap::new(),
        }
    }

    fn model(
        &mut self,
        ctx: &StepContext,
        name: &str,
        swapped: &BTreeMap<String, String>,
    ) -> Result<&mut Box<dyn LoadedModel>> {
        let key = (name.to_string(), swapped.get(name).cloned());
        if !self.models.contains_key(&key) {
            let m = load(ctx, name, swapped)?;
            self.models.insert(key.clone(), m);
        }
        Ok(self.models.get_mut(&key).expect("inserted"))
    }

    /// Every image's faces with the detector `swapped` names.
    fn faces(
        &mut self,
        ctx: &StepContext,
        (name, det): (&str, &ModelSpec),
        swapped: &BTreeMap<String, String>,
    ) -> Result<std::rc::Rc<Vec<Vec<Detection>>>> {
        let key = swapped.get(name).cloned();
        if let Some(f) = self.faces.get(&key) {
            return Ok(f.clone());
        }
        let images = self.images;
        let model = self.model(ctx, name, swapped)?;
        let mut all = Vec::new();
        for img in images {
            ctx.check_cancelled()?;
            all.push(detect(model.as_mut(), det, img)?);
        }
        let all = std::rc::Rc::new(all);
        self.faces.insert(key, all.clone());
        Ok(all)
    }

    /// Every image's per-face output rows of `model` fed crops of the detector's faces.
    fn outputs(
        &mut self,
        ctx: &StepContext,
        (det, model): (&str, &Extra),
        (swapped, faces): (&BTreeMap<String, String>, &[Vec<Detection>]),
    ) -> Result<Rows> {
        let key = (
            swapped.get(det).cloned(),
            model.name.to_string(),
            swapped.get(model.name).cloned(),
        );
        if let Some(o) = self.outputs.get(&key) {
            return Ok(o.clone());
        }
        let images = self.images;
        let loaded = self.model(ctx, model.name, swapped)?;
        let mut all = Vec::new();
        for (img, fs) in images.iter().zip(faces) {
            ctx.check_cancelled()?;
            let mut rows = Vec::new();
            for f in fs {
                let [h, w] = model.pre.size;
                let crop =
                    crate::preprocess::align::warp(img, &face_crop(f, model.spec, [h, w]).m, w, h);
                let t = crate::preprocess::to_tensor(&crop, model.pre, model.spec.input.layout);
                let out = loaded.run(&[(model.spec.input.name.clone(), t.into_dyn())])?;
                rows.push(row_of(model, &out)?);
            }
            all.push(rows);
        }
        let all = std::rc::Rc::new(all);
        self.outputs.insert(key, all.clone());
        Ok(all)
    }
}

/// The detector on one photo at its size, faces with keypoints, largest first.
fn detect(
    model: &mut dyn LoadedModel,
    det: &ModelSpec,
    img: &image::RgbImage,
) -> Result<Vec<Detection>> {
    let dpre = det
        .preprocessing
        .clone()
        .unwrap_or_else(|| Preprocessing::scrfd([640, 640]));
    let spec = det
        .detector
        .as_ref()
        .ok_or_else(|| Error::usage("the chain's detector declares no `detector:`"))?;
    // Faces with keypoints only: each one's recognizer crop needs them.
    crate::preprocess::align::detect_faces(
        model,
        (&det.input.name, spec, &dpre, det.input.layout),
        img,
        true,
    )
}

/// The chain with the stages `swapped` names, over every image: the detector's faces, then
/// each face through the recognizer (L2-normalised) and every extra, as FaceAnalysis runs
/// them.
pub(super) fn run_chain(
    ctx: &StepContext,
    memo: &mut Memo,
    (det, rec, extras): ((&str, &ModelSpec), &Extra, &[Extra]),
    swapped: &BTreeMap<String, String>,
) -> Result<Vec<Found>> {
    let faces = memo.faces(ctx, det, swapped)?;
    let emb = memo.outputs(ctx, (det.0, rec), (swapped, &faces))?;
    let mut found: Vec<Found> = faces
        .iter()
        .zip(emb.iter())
        .map(|(fs, rows)| Found {
            faces: fs.clone(),
            embeddings: rows
                .iter()
                .map(|v| {
                    crate::metrics::similarity::normalized(std::slice::from_ref(v))
                        .row(0)
                        .to_vec()
                })
                .collect(),
            points: BTreeMap::new(),
            answers: BTreeMap::new(),
        })
        .collect();
    for x in extras {
        let rows = memo.outputs(ctx, (det.0, x), (swapped, &faces))?;
        for (f, rs) in found.iter_mut().zip(rows.iter()) {
            if x.spec.task == Task::Landmarks {
                let pts = f
                    .faces
                    .iter()
                    .zip(rs)
                    .map(|(d, row)| points_of(x, row, &face_crop(d, x.spec, x.pre.size)))
                    .collect::<Result<_>>()?;
                f.points.insert(x.name.to_string(), pts);
            } else {
                let ans = rs.iter().map(|row| answer(row)).collect();
                f.answers.insert(x.name.to_string(), ans);
            }
        }
    }
    Ok(found)
}

/// Where one face's crop for `model` at `size` ([h, w]) comes from: the crop the model's
/// input declares, else its task's (ArcFace for a recognizer, a 1.5x box otherwise).
fn face_crop(f: &Detection, model: &ModelSpec, size: [u32; 2]) -> FaceCrop {
    // The chain keeps only faces with keypoints; a box stands in for none.
    let m = face_transform(model.input.crop_for(model.task), f, size)
        .unwrap_or_else(|| box_transform(f.bbox, size, crate::domain::INSIGHTFACE_BOX_SCALE));
    FaceCrop {
        m,
        bbox: f.bbox,
        kps: f.kps,
    }
}

/// The row of the output an extra is read from: the landmark spec's output, else the first
/// two-dimensional output (`[1, points x 2]`, or genderage's `[1, 3]`).
fn row_of(x: &Extra, out: &[crate::runtime::NamedTensor]) -> Result<Vec<f32>> {
    let want = x.spec.landmarks.as_ref().and_then(|l| l.output.as_deref());
    let found = match want {
        Some(name) => out.iter().find(|(n, _)| n == name),
        None => out.iter().find(|(_, t)| t.ndim() == 2),
    };
    let (_, t) = found.ok_or_else(|| {
        Error::usage(format!(
            "model `{}` has no output of shape [N, values]{}",
            x.name,
            want.map(|w| format!(" named `{w}`")).unwrap_or_default()
        ))
        .with_hint("name the output in the model's `landmarks: {output: ...}`")
    })?;
    Ok(t.iter().copied().collect())
}

/// One face's points in photo pixels.
fn points_of(x: &Extra, row: &[f32], fc: &FaceCrop) -> Result<Vec<[f64; 2]>> {
    let spec = x.spec.landmarks.clone().unwrap_or_default();
    let layout = PointLayout::of(row.len(), &spec).map_err(|e| {
        Error::usage(format!("model `{}`: {e}", x.name))
            .with_hint("describe the output under the model's `landmarks:` (docs/manifest.md)")
    })?;
    Ok(layout
        .decode(row, x.pre.size)
        .into_iter()
        .map(|p| fc.in_photo(p))
        .collect())
}

/// The point scheme of a landmark model giving `points` points, for its NME normaliser.
pub(super) fn scheme_of(spec: &ModelSpec, points: usize) -> crate::domain::LandmarkScheme {
    let l = spec.landmarks.clone().unwrap_or_default();
    PointLayout::of(points * 2, &l).map_or(crate::domain::LandmarkScheme::Box, |p| p.scheme)
}
