//! Where steps run: `runs_on` (on a step, per step kind in `runs_on_kinds`, or for the whole
//! pipeline) and the GPU classes steps are built for (`gpu_classes`). A class names the
//! fingerprint its machines must have; the keys of TensorRT steps and benchmarks routed to a
//! class use that declared fingerprint, so a GPU-less runner computes the same keys as the
//! GPU node, and the node checks its real fingerprint before it runs anything.

use std::collections::BTreeMap;

use camino::Utf8PathBuf;
use serde::{Deserialize, Serialize};

/// Which executor runs a step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// On this machine (the default).
    #[default]
    Local,
    /// A Slurm job per step, through `sbatch` (see docs/distributed.md).
    Slurm,
}

impl std::fmt::Display for ExecutorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ExecutorKind::Local => "local",
            ExecutorKind::Slurm => "slurm",
        })
    }
}

/// `runs_on:` a step's placement. Slurm fields are passed to `sbatch`; a `class` fills in
/// the partition, constraint and gres it declares unless the step sets its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsOn {
    /// `local` (default) or `slurm`.
    #[serde(default)]
    pub executor: ExecutorKind,
    /// `sbatch --partition`.
    #[serde(default)]
    pub partition: Option<String>,
    /// `sbatch --constraint`: node Features, e.g. `h100`.
    #[serde(default)]
    pub constraint: Option<String>,
    /// `sbatch --gres`, e.g. `gpu:1`.
    #[serde(default)]
    pub gres: Option<String>,
    /// `sbatch --time`, e.g. `00:30:00`.
    #[serde(default)]
    pub time: Option<String>,
    /// A GPU class from `gpu_classes`: its declared fingerprint enters the step's key.
    #[serde(default)]
    pub class: Option<String>,
    /// The job's working folder on the node (`sbatch --chdir`; default `/tmp`). Each job
    /// works in an empty folder of its own inside it, with its own cache.
    #[serde(default)]
    pub workdir: Option<Utf8PathBuf>,
}

impl RunsOn {
    /// The options passed to `sbatch` as `--<name>=<value>`, by name.
    pub(crate) fn slurm_options(&self) -> [(&'static str, Option<&str>); 4] {
        [
            ("partition", self.partition.as_deref()),
            ("constraint", self.constraint.as_deref()),
            ("gres", self.gres.as_deref()),
            ("time", self.time.as_deref()),
        ]
    }
}

/// Which `runs_on` applies to a step: its own, else its kind's, else the pipeline's (whole,
/// never merged). The one precedence rule, for validation and for [`super::Manifest::placement`].
pub(crate) fn effective<'a>(
    own: Option<&'a RunsOn>,
    kind: Option<&'a RunsOn>,
    pipeline: Option<&'a RunsOn>,
) -> Option<&'a RunsOn> {
    own.or(kind).or(pipeline)
}

/// `name value` for each value that is set.
fn labelled<'a>(pairs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> Vec<String> {
    pairs
        .into_iter()
        .filter_map(|(k, v)| Some(format!("{k} {}", v?)))
        .collect()
}

/// A GPU class: what its machines are, as its keys record it. Every field is compared with
/// what the node finds before a step runs there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuClass {
    /// TensorRT version as trtexec prints it, e.g. `10.3.0`.
    #[serde(default)]
    pub tensorrt: Option<String>,
    /// CUDA version as nvidia-smi prints it, e.g. `12.4`.
    #[serde(default)]
    pub cuda: Option<String>,
    /// NVIDIA driver version, e.g. `550.54.15`.
    #[serde(default)]
    pub driver: Option<String>,
    /// GPU name as nvidia-smi prints it, e.g. `NVIDIA H100 80GB HBM3`.
    #[serde(default)]
    pub gpu: Option<String>,
    /// Compute capability, e.g. `9.0`.
    #[serde(default)]
    pub compute_capability: Option<String>,
    /// The CPU's ISA class as facebuild names it (`facebuild toolchain show`), for steps whose
    /// results depend on it (inference, benchmarks).
    #[serde(default)]
    pub isa: Option<String>,
    /// Its default Slurm `--partition`.
    #[serde(default)]
    pub partition: Option<String>,
    /// Its default `--constraint` (node Features).
    #[serde(default)]
    pub constraint: Option<String>,
    /// Its default `--gres`.
    #[serde(default)]
    pub gres: Option<String>,
}

impl GpuClass {
    /// The TensorRT part of a key, by the names [`crate::toolchain::tensorrt::fingerprint`]
    /// gives discovery too; None when the class does not declare all of it.
    pub(crate) fn tensorrt_fingerprint(&self) -> Option<BTreeMap<String, String>> {
        Some(crate::toolchain::tensorrt::fingerprint(
            self.tensorrt.clone()?,
            self.cuda.clone()?,
            self.driver.clone()?,
            self.gpu.clone()?,
            self.compute_capability.clone()?,
        ))
    }

    /// What a benchmark's key records as its machine.
    pub(crate) fn machine(&self, name: &str) -> String {
        let class = format!("class {name}");
        let parts = labelled([
            ("gpu", self.gpu.as_deref()),
            ("cc", self.compute_capability.as_deref()),
            ("trt", self.tensorrt.as_deref()),
            ("cuda", self.cuda.as_deref()),
            ("driver", self.driver.as_deref()),
            ("isa", self.isa.as_deref()),
        ]);
        std::iter::once(class)
            .chain(parts)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A step's placement, resolved: the executor, its Slurm options (the class's filled in),
/// and the class, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement {
    pub runs_on: RunsOn,
    pub class: Option<(String, GpuClass)>,
}

impl Placement {
    pub(crate) fn executor(&self) -> ExecutorKind {
        self.runs_on.executor
    }

    /// The same placement run on this machine (`--executor local`): the class, and so the
    /// keys, stay.
    pub(crate) fn here(mut self) -> Placement {
        self.runs_on.executor = ExecutorKind::Local;
        self
    }

    /// One line for logs: `slurm (partition gpu, constraint h100, class h100)`.
    pub(crate) fn describe(&self) -> String {
        let r = &self.runs_on;
        let parts = labelled(
            r.slurm_options()
                .into_iter()
                .chain([("class", r.class.as_deref())]),
        );
        if parts.is_empty() {
            r.executor.to_string()
        } else {
            format!("{} ({})", r.executor, parts.join(", "))
        }
    }
}

pub use crate::domain::RanOn;

/// Every placement problem, located at the `runs_on` (or the step) it comes from: unknown
/// classes, Slurm options on a local placement, TensorRT steps routed to Slurm without a
/// class that declares TensorRT, and releases sent to a cluster.
pub(crate) fn validate(
    file: &camino::Utf8Path,
    steps: &indexmap::IndexMap<String, super::Step>,
    pipeline: Option<&serde_saphyr::Spanned<RunsOn>>,
    kinds: &indexmap::IndexMap<super::StepKind, serde_saphyr::Spanned<RunsOn>>,
    classes: &indexmap::IndexMap<String, GpuClass>,
) -> Vec<crate::error::Error> {
    use crate::error::{Error, Location};
    let at = |s: &serde_saphyr::Spanned<RunsOn>| Location {
        file: file.to_owned(),
        line: s.referenced.line(),
        column: s.referenced.column(),
    };
    let mut errors = Vec::new();
    let mut check = |what: String, s: &serde_saphyr::Spanned<RunsOn>| {
        let r = &s.value;
        if let Some(c) = &r.class
            && !classes.contains_key(c)
        {
            let known: Vec<&str> = classes.keys().map(String::as_str).collect();
            errors.push(
                Error::manifest(at(s), format!("{what}: unknown GPU class `{c}`")).with_hint(
                    if known.is_empty() {
                        "declare it under `gpu_classes:` with its fingerprint (see docs/distributed.md)".to_string()
                    } else {
                        format!("declared classes: {}", known.join(", "))
                    },
                ),
            );
        }
        if r.executor == ExecutorKind::Local {
            let workdir = ("workdir", r.workdir.as_ref().map(|w| w.as_str()));
            for (k, v) in r.slurm_options().into_iter().chain([workdir]) {
                if v.is_some() {
                    errors.push(
                        Error::manifest(
                            at(s),
                            format!("{what}: `{k}` is a Slurm option, but the executor is local"),
                        )
                        .with_hint("add `executor: slurm`, or remove the option"),
                    );
                }
            }
        }
        for (k, v) in r.slurm_options() {
            if let Some(v) = v
                && (v.trim().is_empty() || v.chars().any(|c| c.is_whitespace() || c == '\''))
            {
                errors.push(Error::manifest(
                    at(s),
                    format!("{what}: `{k}: {v:?}` is empty or has spaces or quotes"),
                ));
            }
        }
    };
    if let Some(p) = pipeline {
        check("`runs_on`".into(), p);
    }
    for (k, s) in kinds {
        check(format!("`runs_on_kinds.{k}`"), s);
    }
    for step in steps.values() {
        if let Some(s) = &step.spec.runs_on {
            check(format!("step `{}`: `runs_on`", step.name), s);
        }
    }
    // The placement each step ends up with.
    for step in steps.values() {
        let Some(r) = effective(
            step.spec.runs_on.as_ref().map(|s| &s.value),
            kinds.get(&step.spec.kind).map(|s| &s.value),
            pipeline.map(|s| &s.value),
        ) else {
            continue;
        };
        if r.executor != ExecutorKind::Slurm {
            continue;
        }
        check_on_slurm(step, r, classes, &mut errors);
    }
    errors
}

/// What a step placed on Slurm must declare: a kind that can run there, the class a
/// benchmark or a TensorRT engine needs for its key.
fn check_on_slurm(
    step: &super::Step,
    r: &RunsOn,
    classes: &indexmap::IndexMap<String, GpuClass>,
    errors: &mut Vec<crate::error::Error>,
) {
    use crate::error::Error;
    let here = step.location.clone();
    if let Some((why, hint)) = step.spec.params.kind().slurm_refusal() {
        errors.push(
            Error::manifest(here.clone(), format!("step `{}`: {why}", step.name)).with_hint(hint),
        );
    }
    // A benchmark's key names the machine it measures: a node's, which the submitter
    // cannot know unless a class declares it.
    if step.spec.params.kind().measures_machine() && r.class.is_none() {
        errors.push(
            Error::manifest(
                here.clone(),
                format!(
                    "step `{}` benchmarks on Slurm but names no class: its key records the machine it measures, which this machine cannot know",
                    step.name
                ),
            )
            .with_hint("add `class: <name>` to its `runs_on`, declared under `gpu_classes:` (for CPU nodes, a class with just `isa` and a `constraint` will do)"),
        );
    }
    if step.spec.params.kind().uses_tensorrt() {
        let declared = r
            .class
            .as_ref()
            .and_then(|c| classes.get(c))
            .map(|c| c.tensorrt_fingerprint().is_some());
        match (&r.class, declared) {
            (None, _) => errors.push(
                Error::manifest(
                    here,
                    format!(
                        "step `{}` builds TensorRT engines on Slurm but names no GPU class: its key needs the GPU's fingerprint, which this machine cannot measure",
                        step.name
                    ),
                )
                .with_hint("add `class: <name>` to its `runs_on`, declared under `gpu_classes:` with tensorrt, cuda, driver, gpu and compute_capability"),
            ),
            (Some(c), Some(false)) => errors.push(
                Error::manifest(
                    here,
                    format!(
                        "step `{}` builds TensorRT engines for class `{c}`, which does not declare all of tensorrt, cuda, driver, gpu and compute_capability",
                        step.name
                    ),
                )
                .with_hint(format!("complete `gpu_classes.{c}`; `trtexec --help` and `nvidia-smi` on a node of the class print them")),
            ),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use indoc::indoc;

    use crate::manifest::{ExecutorKind, Manifest};

    fn parse(text: &str) -> crate::error::Result<Manifest> {
        Manifest::parse(camino::Utf8Path::new("p.yaml"), text)
    }

    const HEAD: &str = indoc! {"
        schema: 1
        name: t
        model:
          task: recognition
          input: {name: x, shape: [1, 3, 112, 112]}
    "};

    /// A step's own `runs_on` wins over its kind's, which wins over the pipeline's; a class
    /// fills in the Slurm options the step leaves out; `--executor local` keeps the class.
    #[test]
    fn placement_precedence_and_class_defaults() {
        let text = format!(
            "{HEAD}{}",
            indoc! {"
                runs_on: {executor: slurm, partition: cpu}
                runs_on_kinds:
                  convert: {executor: slurm, class: h100}
                gpu_classes:
                  h100: {tensorrt: '10.3.0', cuda: '12.4', driver: '550.54', gpu: NVIDIA H100, compute_capability: '9.0', constraint: h100, gres: 'gpu:1'}
                steps:
                  a: {kind: check}
                  b: {kind: check, runs_on: {executor: local}}
                  c: {kind: convert, params: {backend: tensorrt, precision: fp16}}
                  d: {kind: convert, params: {backend: tensorrt, precision: fp16}, runs_on: {executor: slurm, class: h100, constraint: h100_80g}}
            "}
        );
        let m = parse(&text).unwrap();
        let p = |m: &Manifest, s: &str| m.placement(m.step(s));
        assert_eq!(p(&m, "a").runs_on.partition.as_deref(), Some("cpu"));
        assert_eq!(p(&m, "b").executor(), ExecutorKind::Local);
        let c = p(&m, "c");
        assert_eq!(c.executor(), ExecutorKind::Slurm);
        assert_eq!(c.runs_on.constraint.as_deref(), Some("h100"));
        assert_eq!(c.runs_on.gres.as_deref(), Some("gpu:1"));
        assert_eq!(c.class.as_ref().unwrap().0, "h100");
        assert_eq!(
            p(&m, "d").runs_on.constraint.as_deref(),
            Some("h100_80g"),
            "the step's own option wins over its class's"
        );
        assert_eq!(
            c.describe(),
            "slurm (constraint h100, gres gpu:1, class h100)"
        );
        let c = p(&m, "c").here();
        assert_eq!(c.executor(), ExecutorKind::Local);
        assert!(
            c.class.is_some(),
            "keys keep the class under --executor local"
        );
    }

    /// Every placement mistake, located, in one go.
    #[test]
    fn placement_errors_are_located() {
        let text = format!(
            "{HEAD}{}",
            indoc! {"
                gpu_classes:
                  partial: {gpu: NVIDIA L4}
                steps:
                  a: {kind: check, runs_on: {executor: slurm, class: b200}}
                  b: {kind: check, runs_on: {constraint: h100}}
                  c:
                    kind: convert
                    params: {backend: tensorrt, precision: fp16}
                    runs_on: {executor: slurm, constraint: h100}
                  d:
                    kind: convert
                    params: {backend: tensorrt, precision: fp16}
                    runs_on: {executor: slurm, class: partial}
                  e: {kind: release, params: {artifacts: [d]}, runs_on: {executor: slurm}}
                  f: {kind: check, runs_on: {executor: slurm, gres: 'gpu: 1'}}
                  h: {kind: benchmark, params: {targets: [d]}, runs_on: {executor: slurm}}
                  g: {kind: check, runs_on: {executor: slurm, nodes: 2}}
            "}
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("unknown field `nodes`"), "{e}");
        let text = text.replace(
            "  g: {kind: check, runs_on: {executor: slurm, nodes: 2}}\n",
            "",
        );
        let e = parse(&text).unwrap_err().to_string();
        for want in [
            "p.yaml:9:29: step `a`: `runs_on`: unknown GPU class `b200`",
            "declared classes: partial",
            "p.yaml:10:29: step `b`: `runs_on`: `constraint` is a Slurm option, but the executor is local",
            "p.yaml:12:5: step `c` builds TensorRT engines on Slurm but names no GPU class",
            "p.yaml:16:5: step `d` builds TensorRT engines for class `partial`, which does not declare all of",
            "step `e`: a release is written on the machine that runs facebuild",
            "`gres: \"gpu: 1\"` is empty or has spaces",
            "step `h` benchmarks on Slurm but names no class",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
    }
}
