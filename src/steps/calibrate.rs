//! `calibrate`: a representative image set, prepared exactly as the model is fed, as one
//! tensor (`calibration.npy`, N x C x H x W float32). Every INT8 step consumes this artifact
//! (OpenVINO/NNCF now, TensorRT's Q/DQ path later), so they all calibrate on the same pixels,
//! and changing the set reruns exactly this step and the INT8 branch.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{StepContext, StepOutcome};
use crate::error::{Error, Result};

pub(crate) const IMPL_VERSION: u32 = 1;
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
    let t = &prepared.tensor;
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
    });
    let report_path = super::write_report(ctx.workdir, "report.json", &report)?;
    let summary = json!({"images": files.len(), "shape": format!("{:?}", t.shape()), "fit": serde_json::to_string(&prepared.fit_counts()).unwrap_or_default()});
    Ok(StepOutcome {
        outputs: [
            ("calibration.npy".to_string(), out),
            ("report.json".to_string(), report_path),
        ]
        .into(),
        summary,
    })
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
