//! Step kinds. Each kind lives in one module with its params, its validation, the toolchain
//! pieces it depends on (for its cache key), and its `run`. This file is the registry.

pub(crate) mod accuracy;
pub(crate) mod benchmark;
pub(crate) mod calibrate;
pub(crate) mod chain;
pub(crate) mod check;
pub(crate) mod compare;
pub(crate) mod convert;
pub(crate) mod inputs;
pub(crate) mod provenance;
pub(crate) mod quantize;
pub(crate) mod release;
pub(crate) mod simplify;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use camino::{Utf8Path, Utf8PathBuf};
use indexmap::IndexMap;

use crate::error::Result;
use serde::{Deserialize, Serialize};

use crate::manifest::{DatasetSpec, Manifest, Step};
use crate::toolchain::Toolchain;

/// Everything a running step may use. Steps write their outputs into `workdir`.
pub(crate) struct StepContext<'a> {
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
    /// Referenced steps that failed or were skipped, with why (only those listed by
    /// [`Kind::reports_failures_of`]).
    pub failed: BTreeMap<String, String>,
    pub workdir: &'a Utf8Path,
    /// Where releases go when a release step names no `releases_dir` (settings).
    pub releases_dir: &'a Utf8Path,
    /// `FACEBUILD_RELEASE_SIGNING_KEY` (settings): a PEM file's path or the PEM text.
    pub signing_key: Option<&'a str>,
    /// This invocation (settings), for release provenance.
    pub invocation: &'a crate::settings::Invocation,
    /// Every pack model's source file, by name, for steps that span models (a chain).
    pub sources: BTreeMap<String, Utf8PathBuf>,
    pub cancel: &'a AtomicBool,
    pub progress: &'a indicatif::ProgressBar,
}

impl StepContext<'_> {
    /// How reports name the model this step works on: as the manifest wrote it, or the
    /// `from` step's output; never an absolute path, so two machines write the same reports.
    pub(crate) fn model_label(&self) -> String {
        match (&self.step.spec.from, &self.manifest.model.path) {
            (Some(f), _) => format!("{}:model.onnx", f.value),
            (None, Some(p)) => p.to_string(),
            (None, None) => format!(
                "builtin:{}",
                self.manifest
                    .model
                    .builtin
                    .as_deref()
                    .unwrap_or("iresnet-mini")
            ),
        }
    }

    /// The aligner of a dataset declared with `align:` (its detector loaded), else None.
    pub(crate) fn aligner(
        &self,
        dataset: &str,
    ) -> Result<Option<crate::preprocess::align::Aligner>> {
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
    pub(crate) fn feed<'b>(
        &'b self,
        pre: &'b crate::manifest::Preprocessing,
        align: Option<&'b crate::preprocess::align::Aligner>,
    ) -> crate::preprocess::Feed<'b> {
        crate::preprocess::Feed {
            pre,
            layout: self.manifest.model.input.layout,
            resize: pre.resize_for(self.manifest.model.task),
            align,
            crop: self.manifest.model.input.crop_for(self.manifest.model.task),
            faces: self.manifest.model.input.faces(),
        }
    }

    pub(crate) fn check_cancelled(&self) -> Result<()> {
        if self.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            Err(crate::error::Error::Interrupted)
        } else {
            Ok(())
        }
    }
}

/// What a successful step produced: named output files (in its workdir) and a summary.
pub(crate) struct StepOutcome {
    pub outputs: BTreeMap<String, Utf8PathBuf>,
    pub summary: serde_json::Value,
}

/// A problem found in a step's params: (message, hint).
pub(crate) type Problem = (String, Option<String>);

/// What every step kind provides. Each kind's params type implements it in its own module;
/// the registry below ties the manifest's `kind:` to the type. A new kind is one module and
/// one registry line.
pub(crate) trait Kind {
    /// Implementation version: bump it when a change to the step's code changes what it
    /// produces, and every cached result of that kind is rebuilt.
    fn impl_version(&self) -> u32;
    /// The toolchain pieces whose versions enter this step's cache key.
    fn toolchain_pieces(&self) -> Vec<&'static str>;
    /// Datasets the step reads (names from the manifest's `datasets:`).
    fn datasets(&self) -> Vec<String> {
        vec![]
    }
    /// Steps named in params (beyond `needs`/`from`): their outputs are this step's inputs.
    fn references(&self) -> Vec<String> {
        vec![]
    }
    /// Referenced steps whose failure this step reports instead of being skipped: compare
    /// lists a failed candidate as failed, with its error, and compares the others.
    fn reports_failures_of(&self) -> Vec<String> {
        vec![]
    }
    /// Whether `target`, a referenced step of kind `kind`, is of a kind this step can use.
    fn check_reference(&self, target: &str, kind: StepKind) -> std::result::Result<(), Problem> {
        let _ = (target, kind);
        Ok(())
    }
    /// Whether this step can take `from:` a step of kind `from` (None: the source model).
    fn check_from(&self, from: Option<StepKind>) -> std::result::Result<(), Problem> {
        let _ = from;
        Ok(())
    }
    /// Files named in params that are inputs (a legacy TensorRT calibration cache).
    fn extra_files(&self) -> Vec<Utf8PathBuf> {
        vec![]
    }
    /// Static validation of the params on their own.
    fn validate(&self) -> Vec<Problem> {
        vec![]
    }
    /// What the plan should say about this step beyond its decision: something it will
    /// leave out, and why.
    fn plan_notes(&self, manifest: &Manifest) -> Vec<String> {
        let _ = manifest;
        vec![]
    }
    /// What beyond its params enters the step's key, read from the rest of the manifest
    /// (a benchmark measures until its releases' speed gates are decided, so they are its
    /// params in effect).
    fn key_extra(&self, manifest: &Manifest, step: &str) -> Option<serde_json::Value> {
        let _ = (manifest, step);
        None
    }
    /// Whether the step needs TensorRT (its versions enter the key, and it is
    /// `unavailable` where TensorRT is not installed).
    fn uses_tensorrt(&self) -> bool {
        false
    }
    /// Whether the step's outputs depend on the CPU's instruction set: it runs inference whose
    /// figures enter its outputs (kernels differ by ISA, and OpenVINO's CPU plugin runs bf16
    /// by default where the CPU has it), or NNCF gathers statistics. Such a step carries the
    /// CPU's ISA class in its key, so a shared cache never hands one class's result to another.
    fn isa_dependent(&self) -> bool {
        false
    }
    /// Whether the step needs the machine to itself: a benchmark measured while another
    /// step converts or compares reads that step's load as its own slowness. The scheduler
    /// starts it only when nothing else runs, and nothing else while it runs.
    fn exclusive(&self) -> bool {
        false
    }
    /// Whether the step's figures belong to the machine that measured them (a benchmark): its
    /// key carries the machine (or its GPU class's), and on Slurm it needs a class.
    fn measures_machine(&self) -> bool {
        false
    }
    /// Whether the step uses TensorRT when it is there, without needing it (a benchmark of
    /// engines); [`Kind::uses_tensorrt`] steps need it.
    fn may_use_tensorrt(&self) -> bool {
        self.uses_tensorrt()
    }
    /// Why the step cannot run on Slurm, if it cannot (a release is written where facebuild
    /// runs): (message, hint).
    fn slurm_refusal(&self) -> Option<(&'static str, &'static str)> {
        None
    }
    /// Whether the step reads every model of a pack (a chain): it builds none of them, its
    /// key holds every model's source, and its context has every source's file.
    fn spans_models(&self) -> bool {
        false
    }
    /// Whether the step says it must run (`required: true`): unavailable then fails the run.
    fn required(&self) -> bool {
        false
    }
    /// Run the step in `ctx.workdir`.
    fn run(&self, ctx: &StepContext) -> Result<StepOutcome>;
}

/// "a `convert`, `quantize` or `simplify` step": what artifact references must name.
pub(crate) fn expect_artifact(target: &str, kind: StepKind) -> std::result::Result<(), Problem> {
    expect(
        target,
        kind,
        &[StepKind::Convert, StepKind::Simplify, StepKind::Quantize],
        "a `convert`, `quantize` or `simplify` step",
    )
}

/// A referenced step must be one of `kinds`.
pub(crate) fn expect(
    target: &str,
    kind: StepKind,
    kinds: &[StepKind],
    want: &str,
) -> std::result::Result<(), Problem> {
    if kinds.contains(&kind) {
        Ok(())
    } else {
        Err((
            format!("names `{target}`, a `{kind}` step, where {want} is expected"),
            None,
        ))
    }
}

/// Which section of the run's report.html and junit.xml a kind's `report.json` fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReportSection {
    /// Every candidate's figures and gates.
    Compare,
    /// Latency and throughput per target.
    Benchmark,
    /// The release's gates and what was released.
    Release,
}

/// The registry: one line per kind (its manifest name, module, params type, whether it
/// produces a `model.onnx` that a later step can take `from`, its default params when
/// `params:` may be left out, and the run report's section its report fills).
macro_rules! registry {
    ($($variant:ident => $name:literal, $params:ty, produces_model: $pm:literal, default: $def:expr, section: $sec:expr;)*) => {
        /// A step kind, as `kind:` names it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub(crate) enum StepKind {
            $($variant,)*
        }

        impl StepKind {
            /// The manifest's name for the kind.
            pub(crate) fn as_str(self) -> &'static str {
                match self {
                    $(StepKind::$variant => $name,)*
                }
            }

            /// Whether the kind produces a `model` output that a later step can take `from`.
            pub(crate) fn produces_model(self) -> bool {
                match self {
                    $(StepKind::$variant => $pm,)*
                }
            }

            /// The kind `name` names, as the manifest and the run's results spell it.
            pub(crate) fn from_name(name: &str) -> Option<StepKind> {
                match name {
                    $($name => Some(StepKind::$variant),)*
                    _ => None,
                }
            }

            /// The section of the run report this kind's `report.json` fills, if any.
            pub(crate) fn report_section(self) -> Option<ReportSection> {
                match self {
                    $(StepKind::$variant => $sec,)*
                }
            }

            /// Params of kinds that need none; None for kinds with required params.
            pub(crate) fn default_params(self) -> Option<StepParams> {
                match self {
                    $(StepKind::$variant => $def.map(StepParams::$variant),)*
                }
            }
        }

        /// A step's params, typed by its kind.
        #[derive(Debug, Clone, Serialize)]
        #[serde(untagged)]
        pub(crate) enum StepParams {
            $($variant($params),)*
        }

        impl StepParams {
            /// The kind's behaviour.
            pub(crate) fn kind(&self) -> &dyn Kind {
                match self {
                    $(StepParams::$variant(p) => p,)*
                }
            }

            /// The params of `kind` from JSON (a pack step's copy, its references renamed).
            pub(crate) fn from_json(
                kind: StepKind,
                v: serde_json::Value,
            ) -> serde_json::Result<StepParams> {
                Ok(match kind {
                    $(StepKind::$variant => StepParams::$variant(serde_json::from_value(v)?),)*
                })
            }

            /// Deserialize the params of `kind` straight from the manifest, so every
            /// error points at the exact key.
            pub(crate) fn deserialize_as<'de, A: serde::de::MapAccess<'de>>(
                kind: StepKind,
                map: &mut A,
            ) -> std::result::Result<StepParams, A::Error> {
                Ok(match kind {
                    $(StepKind::$variant => StepParams::$variant(map.next_value()?),)*
                })
            }
        }
    };
}

registry! {
    Check => "check", check::CheckParams, produces_model: false, default: Some(check::CheckParams::default()), section: None;
    Simplify => "simplify", simplify::SimplifyParams, produces_model: true, default: Some(simplify::SimplifyParams::default()), section: None;
    Calibrate => "calibrate", calibrate::CalibrateParams, produces_model: false, default: None, section: None;
    Convert => "convert", convert::ConvertParams, produces_model: false, default: None, section: None;
    Quantize => "quantize", quantize::QuantizeParams, produces_model: true, default: None, section: None;
    Compare => "compare", compare::CompareParams, produces_model: false, default: None, section: Some(ReportSection::Compare);
    Benchmark => "benchmark", benchmark::BenchmarkParams, produces_model: false, default: None, section: Some(ReportSection::Benchmark);
    Release => "release", release::ReleaseParams, produces_model: false, default: None, section: Some(ReportSection::Release);
    Chain => "chain", chain::ChainParams, produces_model: false, default: None, section: None;
}

impl std::fmt::Display for StepKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Validation of one step against the pipeline's datasets: every problem found.
pub(crate) fn validate(step: &Step, datasets: &IndexMap<String, DatasetSpec>) -> Vec<Problem> {
    let kind = step.spec.params.kind();
    let mut problems = Vec::new();
    for d in kind.datasets() {
        if !datasets.contains_key(&d) {
            let known: Vec<&str> = datasets.keys().map(String::as_str).collect();
            problems.push((
                format!("uses dataset `{d}`, which is not declared under `datasets:`"),
                Some(format!("declared datasets: [{}]", known.join(", "))),
            ));
        }
    }
    problems.extend(kind.validate());
    problems
}

/// What an artifact step's own report.json (convert, quantize, simplify) says about the
/// artifact, for the steps that use it (compare, benchmark, release). Read typed: a report
/// without these fields describes an fp32 artifact that is not a stand-in.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ArtifactInfo {
    /// fp32 / fp16 / int8: the artifact's precision.
    #[serde(default = "fp32")]
    pub precision: String,
    /// Made by the test stand-in for trtexec: never run, never passed off as TensorRT's.
    #[serde(default)]
    pub standin: bool,
    /// The conversion backend, for release metadata.
    #[serde(default)]
    pub backend: Option<String>,
    /// How it was made (OpenVINO conversion; TensorRT: `flags`), passed through verbatim into
    /// release metadata.
    #[serde(default, alias = "flags")]
    pub conversion: Option<serde_json::Value>,
    /// TensorRT optimization profiles, passed through into release metadata.
    #[serde(default)]
    pub profiles: Option<serde_json::Value>,
    /// TensorRT and GPU versions, passed through into release metadata.
    #[serde(default)]
    pub tensorrt: Option<serde_json::Value>,
}

fn fp32() -> String {
    "fp32".into()
}

/// The artifact's info from its report; a step without a report is an fp32 artifact, a
/// report that does not parse is an error naming it.
pub(crate) fn artifact_info(outputs: &BTreeMap<String, Utf8PathBuf>) -> Result<ArtifactInfo> {
    match outputs.get("report.json") {
        Some(r) => read_report(r),
        None => Ok(ArtifactInfo {
            precision: fp32(),
            ..Default::default()
        }),
    }
}

pub(crate) const STANDIN_ENGINE: &str =
    "its engine was made by facebuild's test stand-in for trtexec, not by TensorRT";

/// Why an upstream artifact is missing from `ctx.upstream`: its step was unavailable.
pub(crate) fn unavailable_upstream(step: &str) -> String {
    format!("step `{step}` is unavailable on this machine")
}

/// Write a report into the workdir as pretty JSON and return its path. It goes through
/// `serde_json::Value` so that typed reports print exactly as the `json!` ones did (f32
/// fields widened to f64).
pub(crate) fn write_report<T: Serialize>(
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
pub(crate) fn read_report<T: serde::de::DeserializeOwned>(path: &Utf8Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| crate::error::Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        crate::error::Error::from(anyhow::anyhow!(
            "{path}: not a report this facebuild can read ({e})"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registry's name column is what the manifest and the run's results spell, and
    /// its section column is what the run report shows: nothing else decides either.
    #[test]
    fn kinds_are_found_by_name_and_say_their_report_section() {
        for name in [
            "check",
            "simplify",
            "calibrate",
            "convert",
            "quantize",
            "compare",
            "benchmark",
            "release",
        ] {
            let kind = StepKind::from_name(name).expect(name);
            assert_eq!(kind.as_str(), name);
            let serde: StepKind = serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!(serde, kind);
        }
        assert_eq!(StepKind::from_name("train"), None);
        let shown: Vec<_> = ["compare", "benchmark", "release", "check", "convert"]
            .iter()
            .map(|n| StepKind::from_name(n).and_then(StepKind::report_section))
            .collect();
        assert_eq!(
            shown,
            [
                Some(ReportSection::Compare),
                Some(ReportSection::Benchmark),
                Some(ReportSection::Release),
                None,
                None
            ]
        );
    }
}
