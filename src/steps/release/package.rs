//! A pack release's `onnx/`: an InsightFace model package that insightface's
//! `FaceAnalysis(name=<that folder>)` loads as it is (insightface 2.1,
//! `model_zoo/package_manifest.py`). Its V2 `manifest.json` (`manifest_version: 2`,
//! `model_id`, `license: MODEL.LICENSE`, `tasks` with file and sha256) names the detector and
//! the recognizer, the only tasks it knows besides verification; with it, FaceAnalysis loads
//! only what it names, and checks each file's sha256 before it builds a session. Models it
//! cannot name (landmarks, attributes) go to `onnx/extra/`, where FaceAnalysis does not glob,
//! and `metadata.json` lists them. The files are the pack's ONNX originals: the chain's
//! reference.

use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{Error, IoContext, Result};
use crate::steps::StepContext;

/// `package:` on a pack's release.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PackageSpec {
    /// The pack's detector and recognizer, by their names under `models:`.
    pub detector: String,
    pub recognizer: String,
    /// Other models shipped beside them, under `onnx/extra/`.
    #[serde(default)]
    pub extra: Vec<String>,
    /// The models' licence, a file relative to the manifest (default: a note that the
    /// licences are the models' authors').
    #[serde(default)]
    pub license: Option<Utf8PathBuf>,
}

/// Why the package leaves its detector out: FaceAnalysis decodes SCRFD heads only
/// (insightface's model_zoo routes a detector to its SCRFD/RetinaFace classes, which read
/// SCRFD's outputs). None when it can decode it.
pub(crate) fn left_out(manifest: &crate::manifest::Manifest, spec: &PackageSpec) -> Option<String> {
    let (m, _) = manifest.models.get(&spec.detector)?;
    let d = m.detector.as_ref()?;
    (d.family != crate::domain::DetectorFamily::Scrfd).then(|| {
        format!(
            "`onnx/` leaves the detector `{}` (`{}`) out: insightface's FaceAnalysis decodes SCRFD heads only; deploy it with facebuild's decoder (its IRs are in the release)",
            spec.detector,
            d.label()
        )
    })
}

/// One scalar mean and std, as the package's `preprocessing` takes them.
fn scalar_pre(ctx: &StepContext, model: &str) -> Result<serde_json::Value> {
    let spec = &ctx.manifest.models[model].0;
    let Some(p) = &spec.preprocessing else {
        return Ok(json!("embedded"));
    };
    let same = |v: &[f32]| v.windows(2).all(|w| w[0] == w[1]);
    if !same(&p.mean) || !same(&p.std) {
        return Err(Error::Step {
            step: ctx.step.name.clone(),
            message: format!(
                "`{model}` has per-channel mean/std; InsightFace's package manifest takes one mean and one std"
            ),
            hint: Some(
                "ship this model without `package:`, or with one value per channel repeated".into(),
            ),
        });
    }
    Ok(
        json!({"mean": p.mean.first().copied().unwrap_or(0.0), "std": p.std.first().copied().unwrap_or(1.0)}),
    )
}

/// Write `onnx/` into `stage`: the files written, relative to it.
pub(super) fn write(
    ctx: &StepContext,
    spec: &PackageSpec,
    stage: &Utf8Path,
) -> Result<Vec<Utf8PathBuf>> {
    let mut written = Vec::new();
    let dir = stage.join("onnx");
    std::fs::create_dir_all(dir.join("extra")).fs_context(&dir)?;
    let mut copy = |model: &str, rel: String| -> Result<String> {
        let src = ctx.sources.get(model).ok_or_else(|| Error::Step {
            step: ctx.step.name.clone(),
            message: format!("`package` names `{model}`, which is not among `models:`"),
            hint: Some("name the pack's models by their names under `models:`".into()),
        })?;
        let to = stage.join(&rel);
        std::fs::copy(src, &to).fs_context(src)?;
        written.push(Utf8PathBuf::from(&rel));
        super::sha256_file(&to)
    };
    let det_file = format!("{}.onnx", spec.detector);
    let rec_file = format!("{}.onnx", spec.recognizer);
    let left = left_out(ctx.manifest, spec);
    let det_sha = match left {
        None => Some(copy(&spec.detector, format!("onnx/{det_file}"))?),
        Some(_) => None,
    };
    let rec_sha = copy(&spec.recognizer, format!("onnx/{rec_file}"))?;
    for e in &spec.extra {
        copy(e, format!("onnx/extra/{e}.onnx"))?;
    }
    let rec_spec = &ctx.manifest.models[&spec.recognizer].0;
    let size = rec_spec
        .preprocessing
        .as_ref()
        .map_or([112, 112], |p| p.size);
    let graph = crate::onnx::inspect::inspect(
        &crate::onnx::inspect::load_model(&ctx.sources[&spec.recognizer])?,
        &ctx.sources[&spec.recognizer],
    )?;
    let dim = graph
        .outputs
        .first()
        .and_then(|o| o.shape.as_ref()?.last().cloned())
        .and_then(|d| match d {
            crate::onnx::inspect::DimInfo::Static(n) if n > 0 => Some(n),
            _ => None,
        })
        .unwrap_or(512);
    let mut tasks = serde_json::Map::new();
    if let Some(sha) = &det_sha {
        tasks.insert(
            "detection".into(),
            json!({"file": det_file, "sha256": sha, "preprocessing": scalar_pre(ctx, &spec.detector)?}),
        );
    }
    tasks.insert(
        "recognition".into(),
        json!({
            "file": rec_file, "sha256": rec_sha, "preprocessing": scalar_pre(ctx, &spec.recognizer)?,
            "input_size": size, "embedding_dimension": dim,
        }),
    );
    let mut manifest = json!({
        "manifest_version": 2,
        "model_id": ctx.manifest.name,
        "display_name": ctx.manifest.name,
        "license": "MODEL.LICENSE",
        "tasks": tasks,
    });
    if let Some(why) = &left {
        manifest["left_out"] = json!([why]);
    }
    let to = dir.join("manifest.json");
    std::fs::write(
        &to,
        serde_json::to_vec_pretty(&manifest).map_err(anyhow::Error::from)?,
    )
    .fs_context(&to)?;
    written.push("onnx/manifest.json".into());
    let license = match &spec.license {
        Some(f) => {
            let p = ctx.manifest.resolve(f);
            std::fs::read(&p).fs_context(&p)?
        }
        None => format!(
            "The models of `{}` are their authors', under their own licences; facebuild grants none.\nmetadata.json names each model's source and digest.\n",
            ctx.manifest.name
        )
        .into_bytes(),
    };
    let to = dir.join("MODEL.LICENSE");
    std::fs::write(&to, license).fs_context(&to)?;
    written.push("onnx/MODEL.LICENSE".into());
    if spec.extra.is_empty() {
        let _ = std::fs::remove_dir(dir.join("extra"));
    }
    Ok(written)
}
