//! What feeds a model's inputs besides its image input (`model.inputs`): seeded random
//! values where only shapes matter (smoke runs), the description the INT8 scripts read
//! (every input's shape and calibration file), and the values a dataset gives each input:
//! rows of a `.npy` file, or, for a swapper's source latent, a recognizer's embedding of a
//! face of another identity, made as InsightFace's INSwapper makes it (`inswapper.py`: the
//! normed embedding times `emap`, normed again).

use std::collections::BTreeMap;

use camino::{Utf8Path, Utf8PathBuf};
use ndarray::{Array2, ArrayD, Axis, IxDyn};
use serde_json::json;

use super::StepContext;
use crate::error::{Error, Result};
use crate::manifest::{Dim, EmbeddingFeed, Feed, InputSpec, Layout, Manifest, Preprocessing};
use crate::metrics::similarity::PairSet;
use crate::runtime::{LoadedModel, NamedTensor, Runtime, onnxruntime::OnnxRuntime};

/// Seeded random values in [0, 1) for every input: the image input at `image`, the others
/// at their declared shapes (named dims at `opt`, else 1).
pub(crate) fn random_inputs(m: &Manifest, image: &[usize], seed: u64) -> Vec<NamedTensor> {
    let mut rng = crate::util::SplitMix64::new(seed);
    let shapes = std::iter::once((m.model.input.name.clone(), image.to_vec())).chain(
        m.model
            .extra_inputs
            .iter()
            .map(|i| (i.name.clone(), m.concrete_shape_of(i, &i.shape))),
    );
    shapes
        .map(|(n, s)| {
            let data = (0..s.iter().product::<usize>())
                .map(|_| rng.unit())
                .collect();
            (
                n,
                ArrayD::from_shape_vec(IxDyn(&s), data).expect("sized to shape"),
            )
        })
        .collect()
}

/// The calibration file of an input among a `calibrate` step's outputs: `calibration.npy`
/// for the image input, `calibration.<input>.npy` for the others.
pub(crate) fn calibration_file(m: &Manifest, input: &str) -> String {
    if input == m.model.input.name {
        "calibration.npy".into()
    } else {
        let safe: String = input
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        format!("calibration.{safe}.npy")
    }
}

/// Every input as the INT8 scripts take it (JSON): name, shape (the image input's as
/// given, named dims as names) and, with a `calibrate` step's outputs, its calibration file.
pub(crate) fn script_inputs(
    ctx: &StepContext,
    image_shape: &[Dim],
    calib: Option<&BTreeMap<String, Utf8PathBuf>>,
) -> Result<String> {
    let m = ctx.manifest;
    let mut list = Vec::new();
    for i in m.model.all_inputs() {
        let shape = if i.name == m.model.input.name {
            image_shape
        } else {
            &i.shape[..]
        };
        let file = match calib {
            Some(outputs) => {
                let name = calibration_file(m, &i.name);
                let f = outputs.get(&name).ok_or_else(|| Error::Step {
                    step: ctx.step.name.clone(),
                    message: format!("the calibration step has no `{name}` for input `{}`", i.name),
                    hint: Some("rebuild the calibrate step with this facebuild: `facebuild run --force <calibrate step>`".into()),
                })?;
                Some(f.as_str().to_string())
            }
            None => None,
        };
        list.push(json!({"name": i.name, "shape": shape, "calib": file}));
    }
    Ok(serde_json::to_string(&list).map_err(anyhow::Error::from)?)
}

/// The recognizer behind an embedding feed: an ONNX model in ONNX Runtime, or an OpenVINO
/// IR (a recognizer as another pipeline built and released it) in OpenVINO at f32.
pub(crate) struct Recognizer {
    /// As the manifest names it: its path, or `builtin:<name>`.
    pub label: String,
    pub pre: Preprocessing,
    pub input: String,
    pub model: Box<dyn LoadedModel>,
}

impl Recognizer {
    pub(crate) fn load(ctx: &StepContext, e: &EmbeddingFeed) -> Result<Recognizer> {
        let (path, label) = match (&e.model, &e.builtin) {
            (Some(p), _) => (ctx.manifest.resolve(p), p.to_string()),
            (None, b) => {
                let name = b.as_deref().unwrap_or("iresnet-mini");
                let model = crate::onnx::builtin::BuiltinModel::from_name(name)
                    .ok_or_else(|| Error::usage(format!("unknown built-in recognizer `{name}`")))?;
                (
                    model.materialize(&ctx.store.root)?,
                    format!("builtin:{name}"),
                )
            }
        };
        let model = if path.extension() == Some("xml") {
            let bin = path.with_extension("bin");
            crate::runtime::openvino::OpenVino::new(ctx.toolchain, Default::default())?
                .with_batch(16)
                .load_ir(&path, &bin)?
        } else {
            OnnxRuntime::new(ctx.toolchain, None)?.load(&path)?
        };
        let (input, shape) = model.inputs().first().cloned().unwrap_or_default();
        let size = match shape[..] {
            [_, _, h, w] if h > 0 && w > 0 => [h as u32, w as u32],
            _ => [112, 112],
        };
        // ArcFace's feeding (insightface `arcface_onnx.py`): RGB, (x - 127.5) / 127.5.
        let pre = e.preprocessing.clone().unwrap_or(Preprocessing {
            color: crate::manifest::ColorOrder::RGB,
            mean: vec![127.5; 3],
            std: vec![127.5; 3],
            size,
            resize: None,
        });
        Ok(Recognizer {
            label,
            pre,
            input,
            model,
        })
    }

    /// Unit embeddings of NCHW tensors already prepared for this recognizer.
    pub(crate) fn embed(&mut self, t: &ndarray::Array4<f32>) -> Result<Vec<Vec<f32>>> {
        let batch = super::compare::batch_for(self.model.as_ref(), 16);
        let (e, _) = super::compare::embed(self.model.as_mut(), &self.input, t, batch)?;
        Ok(crate::metrics::similarity::normalized(&e)
            .outer_iter()
            .map(|r| r.to_vec())
            .collect())
    }
}

/// A swapper's source latents over a dataset: for each image as the target, the image of
/// another identity whose face's embedding feeds it.
pub(crate) struct SourceLatents {
    /// The input they feed.
    pub input: String,
    pub recognizer: Recognizer,
    pub emap: bool,
    /// Per target image: its source image, when one of another identity was found.
    pub source_of: Vec<Option<usize>>,
    /// How identities were known: `identity folders`, `pairs file`, or `unlabelled` (every
    /// other image taken as another identity).
    pub identities: &'static str,
    /// Per image: its face's unit embedding (None where no face was found).
    pub embeddings: Vec<Option<Vec<f32>>>,
    /// Per target image: the latent fed (zeros where it has no source).
    pub latents: Array2<f32>,
}

/// Values of every non-image input for `files` (one row per image), and the source
/// latents when an input is fed embeddings.
pub(crate) struct ExtraFeeds {
    pub tensors: Vec<(String, ArrayD<f32>)>,
    pub latents: Option<SourceLatents>,
}

/// What a dataset gives each non-image input, image by image.
pub(crate) fn dataset_feeds(
    ctx: &StepContext,
    (dataset, aligner): (&str, Option<&crate::preprocess::align::Aligner>),
    files: &[Utf8PathBuf],
) -> Result<ExtraFeeds> {
    let mut out = ExtraFeeds {
        tensors: Vec::new(),
        latents: None,
    };
    for i in &ctx.manifest.model.extra_inputs {
        match &i.feed {
            Feed::Image => {}
            Feed::Npy(path) => {
                let t = npy_rows(ctx, i, &ctx.manifest.resolve(path), files.len())?;
                out.tensors.push((i.name.clone(), t));
            }
            Feed::Embedding(e) => {
                ctx.progress
                    .set_message(format!("source latents for `{}`", i.name));
                let l = source_latents(ctx, (i, e), (dataset, aligner), files)?;
                out.tensors
                    .push((i.name.clone(), l.latents.clone().into_dyn()));
                out.latents = Some(l);
            }
        }
    }
    Ok(out)
}

/// `n` rows of a `.npy` file for input `i`, cycled, each of the input's shape past batch.
fn npy_rows(ctx: &StepContext, i: &InputSpec, path: &Utf8Path, n: usize) -> Result<ArrayD<f32>> {
    let bad = |message: String| Error::Step {
        step: ctx.step.name.clone(),
        message,
        hint: Some(format!(
            "`model.inputs.{}.feed.npy` is a float32 .npy of [rows, ...the input's shape past batch], relative to the manifest",
            i.name
        )),
    };
    let a: ArrayD<f32> = ndarray_npy::read_npy(path)
        .map_err(|e| bad(format!("cannot read {path} for input `{}`: {e}", i.name)))?;
    let want = ctx.manifest.concrete_shape_of(i, &i.shape);
    if a.ndim() != want.len() || a.shape()[1..] != want[1..] || a.shape()[0] == 0 {
        return Err(bad(format!(
            "{path} is {:?}; input `{}` takes rows of {:?}",
            a.shape(),
            i.name,
            &want[1..]
        )));
    }
    let rows: Vec<_> = (0..n)
        .map(|k| a.index_axis(Axis(0), k % a.shape()[0]))
        .collect();
    Ok(ndarray::stack(Axis(0), &rows).map_err(anyhow::Error::from)?)
}

/// Each image's source: an image of another identity (a folder per identity, or a pairs
/// file's different-identity pairs), the first after it in a fixed order. None when none
/// is known; without any identity labels every other image counts as another identity.
pub(crate) fn sources(n: usize, pairs: Option<&PairSet>) -> Vec<Option<usize>> {
    match pairs {
        Some(PairSet::All { ids }) => (0..n)
            .map(|i| (1..n).map(|k| (i + k) % n).find(|&j| ids[j] != ids[i]))
            .collect(),
        Some(PairSet::Listed(listed)) => {
            let mut other: Vec<Option<usize>> = vec![None; n];
            for p in listed.iter().filter(|p| !p.same) {
                other[p.a].get_or_insert(p.b);
                other[p.b].get_or_insert(p.a);
            }
            other
        }
        None => (0..n).map(|i| (n > 1).then_some((i + 1) % n)).collect(),
    }
}

/// The recognizer's embedding of every image's face (cropped by the step's own `aligner`,
/// whose detections it reuses), and each target's latent.
fn source_latents(
    ctx: &StepContext,
    (i, e): (&InputSpec, &EmbeddingFeed),
    (dataset, aligner): (&str, Option<&crate::preprocess::align::Aligner>),
    files: &[Utf8PathBuf],
) -> Result<SourceLatents> {
    let mut rec = Recognizer::load(ctx, e)?;
    let feed = crate::preprocess::Feed {
        pre: &rec.pre,
        layout: Layout::NCHW,
        resize: rec.pre.resize_for(crate::manifest::Task::Recognition),
        align: aligner,
        crop: crate::domain::Crop::Arcface,
        faces: crate::domain::FaceChoice::LARGEST,
    };
    let prepared = crate::preprocess::prepare(ctx.store, files, &feed)?;
    let unit = rec.embed(&prepared.tensor)?;
    let embeddings: Vec<Option<Vec<f32>>> = unit
        .into_iter()
        .enumerate()
        .map(|(k, v)| (aligner.is_none() || prepared.faces[k].is_some()).then_some(v))
        .collect();
    let pairs = super::compare::pairs_of(ctx, dataset, files)?;
    let identities = match pairs.as_ref().map(|(s, _)| s) {
        Some(PairSet::All { .. }) => "identity folders",
        Some(PairSet::Listed(_)) => "pairs file (different-identity pairs)",
        None => "unlabelled (each image's source is the next image)",
    };
    let source_of: Vec<Option<usize>> = sources(files.len(), pairs.as_ref().map(|(s, _)| s))
        .into_iter()
        .map(|s| s.filter(|&j| embeddings[j].is_some()))
        .collect();
    let d = ctx.manifest.concrete_shape_of(i, &i.shape)[1];
    let emap = if e.emap {
        Some(read_emap(ctx, d)?)
    } else {
        None
    };
    let mut latents = Array2::<f32>::zeros((files.len(), d));
    for (t, s) in source_of.iter().enumerate() {
        let Some(v) = s.and_then(|j| embeddings[j].as_ref()) else {
            continue;
        };
        let row = latent(v, emap.as_deref(), d).map_err(|m| Error::Step {
            step: ctx.step.name.clone(),
            message: format!("input `{}`: {m}", i.name),
            hint: Some(format!(
                "`model.inputs.{}.shape` must match the recognizer {}'s embedding size",
                i.name, rec.label
            )),
        })?;
        latents.row_mut(t).assign(&ndarray::Array1::from(row));
    }
    Ok(SourceLatents {
        input: i.name.clone(),
        recognizer: rec,
        emap: e.emap,
        source_of,
        identities,
        embeddings,
        latents,
    })
}

/// INSwapper's latent of a unit embedding: `e @ emap`, normed (just `e` without `emap`).
fn latent(e: &[f32], emap: Option<&[f32]>, d: usize) -> std::result::Result<Vec<f32>, String> {
    if e.len() != d {
        return Err(format!(
            "the recognizer's embedding has {} values, the input takes {d}",
            e.len()
        ));
    }
    let Some(m) = emap else {
        return Ok(e.to_vec());
    };
    let mut out = vec![0.0f64; d];
    for (r, x) in e.iter().enumerate() {
        for (c, o) in out.iter_mut().enumerate() {
            *o += *x as f64 * m[r * d + c] as f64;
        }
    }
    let norm = out.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
    Ok(out.iter().map(|v| (v / norm) as f32).collect())
}

/// The source model's `emap` (its last initializer), `d x d`.
fn read_emap(ctx: &StepContext, d: usize) -> Result<Vec<f32>> {
    let path = match (&ctx.manifest.model.path, &ctx.manifest.model.builtin) {
        (Some(p), _) => ctx.manifest.resolve(p),
        (None, b) => {
            let name = b.as_deref().unwrap_or("iresnet-mini");
            crate::onnx::builtin::BuiltinModel::from_name(name)
                .ok_or_else(|| Error::usage(format!("unknown built-in model `{name}`")))?
                .materialize(&ctx.store.root)?
        }
    };
    let proto = crate::onnx::inspect::load_model(&path)?;
    let (r, c, v) = crate::onnx::inspect::last_initializer_matrix(&proto, &path)?;
    if (r, c) != (d, d) {
        return Err(Error::Model {
            path,
            message: format!(
                "its last initializer (`emap`) is {r} x {c}; the latent input takes {d}"
            ),
            hint: Some("check `emap: true` against the model, or the latent input's shape".into()),
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::verification::Pair;

    #[test]
    fn sources_are_another_identity_in_a_fixed_order() {
        let ids = PairSet::All {
            ids: vec![0, 0, 1, 1, 2],
        };
        assert_eq!(
            sources(5, Some(&ids)),
            vec![Some(2), Some(2), Some(4), Some(4), Some(0)]
        );
        let one = PairSet::All { ids: vec![0, 0] };
        assert_eq!(sources(2, Some(&one)), vec![None, None]);
        let listed = PairSet::Listed(vec![
            Pair {
                a: 0,
                b: 1,
                same: true,
            },
            Pair {
                a: 0,
                b: 2,
                same: false,
            },
            Pair {
                a: 3,
                b: 0,
                same: false,
            },
        ]);
        assert_eq!(
            sources(4, Some(&listed)),
            vec![Some(2), None, Some(0), Some(0)]
        );
        assert_eq!(sources(3, None), vec![Some(1), Some(2), Some(0)]);
    }

    #[test]
    fn latents_are_the_normed_embedding_through_emap() {
        let e = [0.6f32, 0.8];
        assert_eq!(latent(&e, None, 2).unwrap(), vec![0.6, 0.8]);
        // emap swaps the two values and doubles one: [1.6, 0.6] normed.
        let m = [0.0f32, 1.0, 2.0, 0.0];
        let l = latent(&e, Some(&m), 2).unwrap();
        let n = (1.6f64 * 1.6 + 0.36).sqrt();
        assert!((l[0] as f64 - 1.6 / n).abs() < 1e-6 && (l[1] as f64 - 0.6 / n).abs() < 1e-6);
        assert!(latent(&e, None, 3).unwrap_err().contains("2 values"));
    }
}
