//! `calibrate`: a representative image set, prepared exactly as the model is fed, as one
//! tensor (`calibration.npy`, N x C x H x W float32). Every INT8 step consumes this artifact
//! (OpenVINO/NNCF now, TensorRT's Q/DQ path later), so they all calibrate on the same pixels,
//! and changing the set reruns exactly this step and the INT8 branch.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{StepContext, StepOutcome};
use crate::error::{Error, Result};

/// 2: a detector's report gives the faces its reference finds in the set.
pub(crate) const IMPL_VERSION: u32 = 2;
pub(crate) const TOOLCHAIN: &[&str] = &[];

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CalibrateParams {
    /// A dataset from `datasets:`.
    pub dataset: String,
    /// How many images (a seeded subset); default: the dataset's `count`, or all.
    #[serde(default)]
    pub count: Option<usize>,
    /// Seed of the subset; default: the dataset's `seed`.
    #[serde(default)]
    pub seed: Option<u64>,
}

pub(crate) fn run(ctx: &StepContext, p: &CalibrateParams) -> Result<StepOutcome> {
    let pre = ctx.manifest.model.preprocessing.as_ref().ok_or_else(|| Error::Step {
        step: ctx.step.name.clone(),
        message: "calibration needs `model.preprocessing` to turn images into tensors".into(),
        hint: Some("declare `model.preprocessing: {color: RGB, mean: [127.5,127.5,127.5], std: [127.5,127.5,127.5], size: [112, 112]}`".into()),
    })?;
    let spec = &ctx.manifest.datasets[&p.dataset];
    let dir = &ctx.datasets[&p.dataset];
    let files =
        crate::preprocess::list_images(dir, p.count.or(spec.count), p.seed.unwrap_or(spec.seed))?;
    ctx.progress
        .set_message(format!("preparing {} images", files.len()));
    let aligner = ctx.aligner(&p.dataset)?;
    let prepared = crate::preprocess::prepare(ctx.store, &files, &ctx.feed(pre, aligner.as_ref()))?;
    let out = ctx.workdir.join("calibration.npy");
    ndarray_npy::write_npy(&out, prepared.tensor.as_ref())
        .map_err(|e| anyhow::anyhow!("writing {out}: {e}"))?;
    // The model's other inputs, row by row with the images: INT8 calibrates on tuples.
    // Row by row: with `faces: all` a photo gives a row per face.
    let extra = super::inputs::dataset_feeds(ctx, (&p.dataset, aligner.as_ref()), &prepared.files)?;
    let mut outputs: std::collections::BTreeMap<String, camino::Utf8PathBuf> =
        [("calibration.npy".to_string(), out.clone())].into();
    let mut extra_shapes = serde_json::Map::new();
    for (name, t) in &extra.tensors {
        let file = super::inputs::calibration_file(ctx.manifest, name);
        let path = ctx.workdir.join(&file);
        ndarray_npy::write_npy(&path, t).map_err(|e| anyhow::anyhow!("writing {path}: {e}"))?;
        extra_shapes.insert(name.clone(), json!({"file": file, "shape": t.shape()}));
        outputs.insert(file, path);
    }
    let t = &prepared.tensor;
    let faces = face_stats(ctx, p, pre, t)?;
    let mean = t.mean().unwrap_or(0.0) as f64;
    let std = t.std(0.0) as f64;
    let report = json!({
        "step": ctx.step.name,
        "kind": "calibrate",
        "dataset": p.dataset,
        "images": files.iter().map(|f| f.strip_prefix(dir).unwrap_or(f).to_string()).collect::<Vec<_>>(),
        "shape": t.shape(),
        "preprocessing": pre,
        "layout": ctx.manifest.model.input.layout,
        // How whole photos were fitted: aligned (dataset `align:`), letterboxed or centre-cropped.
        "fit": prepared.fit_counts(),
        "pixel_stats": {"mean": mean, "std": std},
        "other_inputs": extra_shapes,
        "faces": faces,
    });
    let report_path = super::write_report(ctx.workdir, "report.json", &report)?;
    let mut summary = json!({"images": files.len(), "shape": format!("{:?}", t.shape()), "fit": serde_json::to_string(&prepared.fit_counts()).unwrap_or_default()});
    if let Some(f) = &faces {
        summary["faces"] = json!(f.faces);
        summary["face_height_p10"] = json!((f.height.p10 * 1e4).round() / 1e4);
    }
    outputs.insert("report.json".to_string(), report_path);
    Ok(StepOutcome { outputs, summary })
}

/// A detector's calibration set, as its reference sees it: the faces in the very tensors
/// INT8 calibrates on. None for other models.
fn face_stats(
    ctx: &StepContext,
    p: &CalibrateParams,
    pre: &crate::manifest::Preprocessing,
    t: &ndarray::Array4<f32>,
) -> Result<Option<crate::metrics::faces::FaceStats>> {
    let Some(spec) = ctx.manifest.model.detector.as_ref() else {
        return Ok(None);
    };
    if ctx.manifest.model.task != crate::manifest::Task::Detection {
        return Ok(None);
    }
    ctx.progress
        .set_message(format!("finding faces in {} images", t.shape()[0]));
    use crate::runtime::Runtime;
    let ort = crate::runtime::onnxruntime::OnnxRuntime::new(ctx.toolchain, None)?;
    let mut reference = ort.load(ctx.model)?;
    let input = &ctx.manifest.model.input.name;
    let (dets, _) = super::compare::detection::detect_all(reference.as_mut(), input, t, spec)?;
    Ok(Some(crate::metrics::faces::FaceStats::measure(
        &p.dataset, pre.size, &dets,
    )))
}

impl super::Kind for CalibrateParams {
    fn impl_version(&self) -> u32 {
        IMPL_VERSION
    }
    fn toolchain_pieces(&self) -> Vec<&'static str> {
        TOOLCHAIN.to_vec()
    }
    fn datasets(&self) -> Vec<String> {
        vec![self.dataset.clone()]
    }
    fn run(&self, ctx: &StepContext) -> Result<StepOutcome> {
        run(ctx, self)
    }
}
