//! Step kinds. Each kind lives in one module with its params, its validation, the toolchain
//! pieces it depends on (for its cache key), and its `run`. This file is the registry.

pub mod benchmark;
pub mod calibrate;
pub mod check;
pub mod compare;
pub mod convert;
pub mod quantize;
pub mod release;
pub mod simplify;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use camino::{Utf8Path, Utf8PathBuf};
use indexmap::IndexMap;

use crate::error::Result;
use crate::manifest::{DatasetSpec, Manifest, Step, StepKind, StepParams};
use crate::toolchain::Toolchain;

/// Everything a running step may use. Steps write their outputs into `workdir`.
pub struct StepContext<'a> {
    pub manifest: &'a Manifest,
    pub step: &'a Step,
    /// The model this step works on: the source model or the `model` output of `from`.
    pub model: &'a Utf8Path,
    /// Named datasets the step uses, resolved to folders.
    pub datasets: BTreeMap<String, Utf8PathBuf>,
    pub toolchain: &'a Toolchain,
    /// TensorRT, for the steps that use it (found before they are scheduled).
    pub tensorrt: Option<&'a crate::toolchain::tensorrt::TensorRt>,
    /// The cache, for memoized intermediate data (prepared image tensors).
    pub store: &'a crate::cache::Store,
    /// Outputs of the steps this one depends on: step -> output name -> file in the store.
    pub upstream: BTreeMap<String, BTreeMap<String, Utf8PathBuf>>,
    pub workdir: &'a Utf8Path,
    pub cancel: &'a AtomicBool,
    pub progress: &'a indicatif::ProgressBar,
}

impl StepContext<'_> {
    /// The aligner of a dataset declared with `align:` (its detector loaded), else None.
    pub fn aligner(&self, dataset: &str) -> Result<Option<crate::preprocess::align::Aligner>> {
        let Some(a) = &self.manifest.datasets[dataset].align else {
            return Ok(None);
        };
        let path = self.manifest.resolve(&a.model);
        let digest = self.store.memo.blake3(&path)?.blake3;
        Ok(Some(crate::preprocess::align::Aligner::new(
            self.toolchain,
            &path,
            &digest,
            a,
        )?))
    }

    /// How this pipeline's model is fed images with `pre`.
    pub fn feed<'b>(
        &'b self,
        pre: &'b crate::manifest::Preprocessing,
        align: Option<&'b crate::preprocess::align::Aligner>,
    ) -> crate::preprocess::Feed<'b> {
        crate::preprocess::Feed {
            pre,
            layout: self.manifest.model.input.layout,
            resize: pre.resize_for(self.manifest.model.task),
            align,
        }
    }

    pub fn check_cancelled(&self) -> Result<()> {
        if self.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            Err(crate::error::Error::Interrupted)
        } else {
            Ok(())
        }
    }
}

/// What a successful step produced: named output files (in its workdir) and a summary.
pub struct StepOutcome {
    pub outputs: BTreeMap<String, Utf8PathBuf>,
    pub summary: serde_json::Value,
}

/// Implementation version per kind: bump it when a change to a step's code changes what it
/// produces, and every cached result of that kind is rebuilt.
pub fn impl_version(kind: StepKind) -> u32 {
    match kind {
        StepKind::Check => check::IMPL_VERSION,
        StepKind::Simplify => simplify::IMPL_VERSION,
        StepKind::Calibrate => calibrate::IMPL_VERSION,
        StepKind::Convert => convert::IMPL_VERSION,
        StepKind::Quantize => quantize::IMPL_VERSION,
        StepKind::Compare => compare::IMPL_VERSION,
        StepKind::Benchmark => benchmark::IMPL_VERSION,
        StepKind::Release => release::IMPL_VERSION,
    }
}

/// The toolchain pieces whose versions enter this step's cache key.
pub fn toolchain_pieces(params: &StepParams) -> Vec<&'static str> {
    match params {
        StepParams::Check(_) => check::TOOLCHAIN.to_vec(),
        StepParams::Simplify(p) => p.toolchain_pieces(),
        StepParams::Calibrate(_) => calibrate::TOOLCHAIN.to_vec(),
        StepParams::Convert(p) => p.toolchain_pieces(),
        StepParams::Quantize(_) => quantize::TOOLCHAIN.to_vec(),
        StepParams::Compare(_) => compare::TOOLCHAIN.to_vec(),
        StepParams::Benchmark(_) => benchmark::TOOLCHAIN.to_vec(),
        StepParams::Release(_) => release::TOOLCHAIN.to_vec(),
    }
}

/// Whether a kind produces a `model` output that a later step can take `from`.
pub fn produces_model(kind: StepKind) -> bool {
    matches!(kind, StepKind::Simplify | StepKind::Quantize)
}

/// Whether a step needs TensorRT (then its versions enter the key, and it is `unavailable`
/// where TensorRT is not installed).
pub fn uses_tensorrt(params: &StepParams) -> bool {
    matches!(params, StepParams::Convert(p) if p.backend == convert::Backend::Tensorrt)
}

/// Whether the step says it must run (`required: true`): unavailable then fails the run.
pub fn required(params: &StepParams) -> bool {
    matches!(params, StepParams::Convert(p) if p.required)
}

/// Files named in params that are inputs (a legacy TensorRT calibration cache).
pub fn extra_files(params: &StepParams) -> Vec<Utf8PathBuf> {
    match params {
        StepParams::Convert(p) => p.calib_cache.iter().cloned().collect(),
        _ => vec![],
    }
}

/// Datasets a step reads (names from the manifest's `datasets:`).
pub fn datasets_used(params: &StepParams) -> Vec<String> {
    match params {
        StepParams::Check(_)
        | StepParams::Convert(_)
        | StepParams::Quantize(_)
        | StepParams::Benchmark(_)
        | StepParams::Release(_) => vec![],
        StepParams::Simplify(p) => p.dataset.iter().cloned().collect(),
        StepParams::Calibrate(p) => vec![p.dataset.clone()],
        StepParams::Compare(p) => vec![p.dataset.clone()],
    }
}

/// Steps named in params (beyond `needs`/`from`): their outputs are this step's inputs.
pub fn referenced_steps(params: &StepParams) -> Vec<String> {
    match params {
        StepParams::Convert(p) => p.calibration.iter().cloned().collect(),
        StepParams::Quantize(p) => vec![p.calibration.clone()],
        StepParams::Compare(p) => p.candidates.iter().map(|c| c.step().to_string()).collect(),
        StepParams::Benchmark(p) => p.targets.iter().map(|c| c.step().to_string()).collect(),
        StepParams::Release(p) => p.referenced(),
        _ => vec![],
    }
}

/// Which kinds a referenced step must be, per referencing kind.
pub fn check_reference(
    params: &StepParams,
    target: &str,
    target_kind: StepKind,
) -> std::result::Result<(), (String, Option<String>)> {
    let ok = match params {
        StepParams::Convert(_) | StepParams::Quantize(_) => target_kind == StepKind::Calibrate,
        StepParams::Compare(_) | StepParams::Benchmark(_) => matches!(
            target_kind,
            StepKind::Convert | StepKind::Simplify | StepKind::Quantize
        ),
        StepParams::Release(p) => {
            let want = if p.compare.as_deref() == Some(target) {
                (target_kind == StepKind::Compare, "a `compare` step")
            } else if p.benchmark.as_deref() == Some(target) {
                (target_kind == StepKind::Benchmark, "a `benchmark` step")
            } else {
                (
                    matches!(
                        target_kind,
                        StepKind::Convert | StepKind::Simplify | StepKind::Quantize
                    ),
                    "a `convert`, `quantize` or `simplify` step",
                )
            };
            if want.0 {
                return Ok(());
            }
            return Err((
                format!(
                    "names `{target}`, a `{target_kind}` step, where {} is expected",
                    want.1
                ),
                None,
            ));
        }
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        let want = if matches!(params, StepParams::Convert(_) | StepParams::Quantize(_)) {
            "a `calibrate` step"
        } else {
            "a `convert`, `quantize` or `simplify` step"
        };
        Err((
            format!("names `{target}`, a `{target_kind}` step, where {want} is expected"),
            None,
        ))
    }
}

/// Static validation at load time: (message, hint) on error.
pub fn validate(
    step: &Step,
    datasets: &IndexMap<String, DatasetSpec>,
) -> std::result::Result<(), (String, Option<String>)> {
    for d in datasets_used(&step.spec.params) {
        if !datasets.contains_key(&d) {
            let known: Vec<&str> = datasets.keys().map(String::as_str).collect();
            return Err((
                format!("uses dataset `{d}`, which is not declared under `datasets:`"),
                Some(format!("declared datasets: [{}]", known.join(", "))),
            ));
        }
    }
    match &step.spec.params {
        StepParams::Check(_) | StepParams::Calibrate(_) | StepParams::Quantize(_) => Ok(()),
        StepParams::Simplify(p) => p.validate(),
        StepParams::Convert(p) => p.validate(),
        StepParams::Compare(p) => p.validate(),
        StepParams::Benchmark(p) => p.validate(),
        StepParams::Release(p) => p.validate(),
    }
}

pub fn run(ctx: &StepContext) -> Result<StepOutcome> {
    match &ctx.step.spec.params {
        StepParams::Check(p) => check::run(ctx, p),
        StepParams::Simplify(p) => simplify::run(ctx, p),
        StepParams::Calibrate(p) => calibrate::run(ctx, p),
        StepParams::Convert(p) => convert::run(ctx, p),
        StepParams::Quantize(p) => quantize::run(ctx, p),
        StepParams::Compare(p) => compare::run(ctx, p),
        StepParams::Benchmark(p) => benchmark::run(ctx, p),
        StepParams::Release(p) => release::run(ctx, p),
    }
}

/// What an artifact step's own report.json says about the artifact, for the steps that use
/// it (compare, benchmark, release).
pub struct ArtifactInfo {
    pub report: Option<serde_json::Value>,
    /// fp32 / fp16 / int8: the artifact's precision (fp32 when its report does not say).
    pub precision: String,
    /// Made by the test stand-in for trtexec: never run, never passed off as TensorRT's.
    pub standin: bool,
}

pub fn artifact_info(outputs: &BTreeMap<String, Utf8PathBuf>) -> ArtifactInfo {
    let report: Option<serde_json::Value> = outputs
        .get("report.json")
        .and_then(|r| std::fs::read(r).ok())
        .and_then(|b| serde_json::from_slice(&b).ok());
    let precision = report
        .as_ref()
        .and_then(|r| r["precision"].as_str().map(String::from))
        .unwrap_or_else(|| "fp32".into());
    let standin = report.as_ref().is_some_and(|r| r["standin"] == true);
    ArtifactInfo {
        report,
        precision,
        standin,
    }
}

pub const STANDIN_ENGINE: &str =
    "its engine was made by facebuild's test stand-in for trtexec, not by TensorRT";

/// Why an upstream artifact is missing from `ctx.upstream`: its step was unavailable.
pub fn unavailable_upstream(step: &str) -> String {
    format!("step `{step}` is unavailable on this machine")
}

/// Write a report into the workdir as pretty JSON and return its path. It goes through
/// `serde_json::Value` so that typed reports print exactly as the `json!` ones did (f32
/// fields widened to f64).
pub fn write_report<T: serde::Serialize>(
    workdir: &Utf8Path,
    name: &str,
    report: &T,
) -> Result<Utf8PathBuf> {
    let p = workdir.join(name);
    let value = serde_json::to_value(report).map_err(anyhow::Error::from)?;
    let bytes = serde_json::to_vec_pretty(&value).map_err(anyhow::Error::from)?;
    std::fs::write(&p, bytes).map_err(|e| crate::error::Error::io(&p, e))?;
    Ok(p)
}

/// Read a step's typed report (report.json) from the store. A report that does not parse as
/// `T` is an error naming the file: a renamed field is found here, not read as "nothing".
pub fn read_report<T: serde::de::DeserializeOwned>(path: &Utf8Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| crate::error::Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        crate::error::Error::from(anyhow::anyhow!(
            "{path}: not a report this facebuild can read ({e})"
        ))
    })
}
