//! Manifest loading and validation: YAML -> typed pipeline, with every error located.

pub(crate) mod init;
pub(crate) mod pack;
mod placement;
pub(crate) mod schema;
pub(crate) mod step;

use camino::{Utf8Path, Utf8PathBuf};
use indexmap::IndexMap;

pub(crate) use placement::Placement;
pub use placement::{ExecutorKind, GpuClass, RanOn, RunsOn};
pub use schema::*;
pub(crate) use step::{StepKind, StepSpec};

use crate::error::{Error, Location, Result};

/// A validated step: its name, spec and where it is written.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub name: String,
    pub spec: StepSpec,
    pub location: Location,
    /// The model of `models:` the step builds (None in a one-`model:` pipeline).
    pub model: Option<String>,
}

impl Step {
    /// The upstream steps this one depends on: `needs`, `from`, and steps its params name
    /// (a calibration set, compare candidates), each with its (line, column) when known.
    pub(crate) fn deps(&self) -> Vec<(String, Option<(u64, u64)>)> {
        let spanned = self
            .spec
            .needs
            .iter()
            .chain(self.spec.from.iter())
            .map(|d| {
                (
                    d.value.clone(),
                    Some((d.referenced.line(), d.referenced.column())).filter(|(l, _)| *l > 0),
                )
            });
        let from_params = self
            .spec
            .params
            .kind()
            .references()
            .into_iter()
            .map(|n| (n, None));
        spanned.chain(from_params).collect()
    }
}

/// A pack's models by name, each with where it is declared.
pub(crate) type Models = IndexMap<String, (ModelSpec, Location)>;

#[derive(Debug, Clone)]
pub(crate) struct Manifest {
    pub file: Utf8PathBuf,
    pub dir: Utf8PathBuf,
    pub name: String,
    pub output_dir: Utf8PathBuf,
    /// The model the steps of this view build: the pipeline's one `model:`, or in a pack
    /// (see [`Manifest::view`]) one of `models:` (the first, in the pack itself).
    pub model: ModelSpec,
    /// Where `model:` is written, for errors found later against the model file.
    pub model_location: Location,
    /// A pack's models by name, each with where it is declared (empty with one `model:`).
    pub models: IndexMap<String, (ModelSpec, Location)>,
    pub datasets: IndexMap<String, DatasetSpec>,
    pub toolchain: ToolchainSpec,
    pub steps: IndexMap<String, Step>,
    /// blake3 of the manifest bytes (recorded in reports).
    pub digest: String,
    /// The manifest's text as read: a Slurm job gets exactly this.
    pub text: std::sync::Arc<str>,
    /// Where steps run: the pipeline's default, and each kind's.
    pub runs_on: Option<RunsOn>,
    pub runs_on_kinds: IndexMap<StepKind, RunsOn>,
    /// GPU classes, each with its declared fingerprint.
    pub gpu_classes: IndexMap<String, GpuClass>,
    /// On a worker: the local copy of each input file or folder, by the path the manifest
    /// writes (so keys and steps see the same names as on the submitting machine).
    pub relocated: std::collections::BTreeMap<Utf8PathBuf, Utf8PathBuf>,
}

impl Manifest {
    pub(crate) fn load(file: &Utf8Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(file).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                Some("check the path; pipelines live in `pipelines/`, e.g. `facebuild run pipelines/recognition.yaml`")
            } else {
                None
            };
            let err = Error::usage(format!("cannot read manifest {file}: {e}"));
            match hint {
                Some(h) => err.with_hint(h),
                None => err,
            }
        })?;
        Self::parse(file, &text)
    }

    /// A built-in pipeline (`run --builtin recognition`), read as if it were `<name>.yaml` in
    /// the current folder: outputs go to `out/<name>`, its lockfile is `<name>.lock`.
    pub(crate) fn builtin(name: &str) -> Result<Manifest> {
        let text = init::builtin_pipeline(name)?;
        Self::parse(Utf8Path::new(&format!("{name}.yaml")), text)
    }

    pub(crate) fn parse(file: &Utf8Path, text: &str) -> Result<Manifest> {
        let raw: RawManifest = serde_saphyr::from_str(text).map_err(|e| yaml_error(file, &e))?;
        let loc = |l: &serde_saphyr::Location| Location {
            file: file.to_owned(),
            line: l.line(),
            column: l.column(),
        };

        if raw.schema.value != SCHEMA_VERSION {
            return Err(Error::manifest(
                loc(&raw.schema.referenced),
                format!(
                    "unsupported schema version {}; this facebuild reads schema {SCHEMA_VERSION}",
                    raw.schema.value
                ),
            )
            .with_hint(format!(
                "set `schema: {SCHEMA_VERSION}` and check docs/manifest.md for the format"
            )));
        }
        let dir = match file.parent() {
            Some(p) if !p.as_str().is_empty() => p.to_owned(),
            _ => Utf8PathBuf::from("."),
        };
        let name = raw
            .name
            .clone()
            .unwrap_or_else(|| file.file_stem().unwrap_or("pipeline").to_string());
        // Everything below is checked, and every problem reported in one go: a manifest with
        // several mistakes should not take several runs to fix.
        let mut errors = Vec::new();
        let whole_file = Location {
            file: file.to_owned(),
            line: 0,
            column: 0,
        };
        if let Err(m) = validate_name(&name) {
            errors.push(Error::manifest(whole_file.clone(), m));
        }

        let (model, model_location, models) =
            resolve_models(raw.model, raw.models, &loc, &whole_file, &mut errors)?;

        let mut datasets: IndexMap<String, DatasetSpec> = IndexMap::new();
        let mut raw_locations: Vec<(String, Location)> = Vec::new();
        for (k, v) in raw.datasets {
            let l = loc(&v.referenced);
            raw_locations.push((k.clone(), l.clone()));
            errors.extend(dataset_problems(&k, &v.value, &l));
            datasets.insert(k, v.value);
        }
        for (k, v) in &raw_locations {
            if let Some(d) = &datasets[k].derive {
                errors.extend(derive_problems(k, d, &datasets, v));
            }
            errors.extend(align_points_problem(k, &datasets[k], &model, v));
        }

        let plain: IndexMap<String, ModelSpec> = models
            .iter()
            .map(|(k, (m, _))| (k.clone(), m.clone()))
            .collect();
        let steps = pack::expand(raw.steps, &plain, &loc, &mut errors);
        if steps.is_empty() {
            errors.push(Error::manifest(
                whole_file,
                "`steps:` is empty; a pipeline needs at least one step",
            ));
        }
        errors.extend(validate_steps(file, &steps, &datasets));
        let gpu_classes: IndexMap<String, GpuClass> = raw
            .gpu_classes
            .iter()
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect();
        errors.extend(placement::validate(
            file,
            &steps,
            raw.runs_on.as_ref(),
            &raw.runs_on_kinds,
            &gpu_classes,
        ));
        if !errors.is_empty() {
            return Err(Error::many(errors));
        }

        let output_dir = match raw.output {
            Some(o) => dir.join(o),
            None => dir.join("out").join(&name),
        };
        Ok(Manifest {
            file: file.to_owned(),
            dir,
            name,
            output_dir,
            model,
            model_location,
            models,
            datasets,
            toolchain: raw.toolchain,
            steps,
            digest: blake3::hash(text.as_bytes()).to_hex().to_string(),
            text: text.into(),
            runs_on: raw.runs_on.map(|r| r.value),
            runs_on_kinds: raw
                .runs_on_kinds
                .into_iter()
                .map(|(k, v)| (k, v.value))
                .collect(),
            gpu_classes,
            relocated: Default::default(),
        })
    }

    /// The pack model step `step` builds (None in a one-model pipeline, or for a step that
    /// spans models).
    pub(crate) fn model_of_step(&self, step: &str) -> Option<&str> {
        self.steps.get(step).and_then(|s| s.model.as_deref())
    }

    /// The manifest as the steps of pack model `model` see it: `model` is that model. The
    /// manifest itself for a one-model pipeline (`model` None).
    pub(crate) fn view(&self, model: Option<&str>) -> Manifest {
        let mut v = self.clone();
        if let Some((m, l)) = model.and_then(|m| self.models.get(m)) {
            v.model = m.clone();
            v.model_location = l.clone();
        }
        v
    }

    pub(crate) fn resolve(&self, rel: &Utf8Path) -> Utf8PathBuf {
        if let Some(copy) = self.relocated.get(rel) {
            return copy.clone();
        }
        if rel.is_absolute() {
            rel.to_owned()
        } else {
            self.dir.join(rel)
        }
    }

    /// The lockfile sits next to the manifest: `recognition.yaml` -> `recognition.lock`.
    pub(crate) fn lock_path(&self) -> Utf8PathBuf {
        self.file.with_extension("lock")
    }

    /// A concrete shape for `shape` (the model input's): named dims at their declared `opt`,
    /// else, for the H/W positions of an image model, `model.preprocessing.size`, else 1.
    pub(crate) fn concrete_shape(&self, shape: &[Dim]) -> Vec<usize> {
        self.concrete_shape_of(&self.model.input, shape)
    }

    /// [`Manifest::concrete_shape`] for any of the model's inputs: only the image input
    /// takes its H/W from `model.preprocessing.size`.
    pub(crate) fn concrete_shape_of(&self, input: &InputSpec, shape: &[Dim]) -> Vec<usize> {
        let layout = input.layout;
        let (hi, wi) = match layout {
            Layout::NCHW => (2, 3),
            Layout::NHWC => (1, 2),
        };
        let size = (input.feed.is_image())
            .then(|| self.model.preprocessing.as_ref().map(|p| p.size))
            .flatten();
        shape
            .iter()
            .enumerate()
            .map(|(i, d)| match d {
                Dim::Fixed(n) => *n as usize,
                Dim::Named(s) => match (input.dims.get(s), size) {
                    (Some(r), _) => r.opt as usize,
                    (None, Some(sz)) if shape.len() == 4 && i == hi => sz[0] as usize,
                    (None, Some(sz)) if shape.len() == 4 && i == wi => sz[1] as usize,
                    _ => 1,
                },
            })
            .collect()
    }

    /// `model.detector.family` against the model file's outputs, before any step runs: a
    /// family that does not match what it would decode fails here, with the fix, rather
    /// than inside `compare`. Models that cannot be read, or whose outputs' last dims are not
    /// fixed, are left to the `check` step.
    pub(crate) fn check_against_model(&self) -> Result<()> {
        use crate::onnx::layout::{OutputLayout, shapes};
        let (Some(d), Some(p), Task::Detection) =
            (&self.model.detector, &self.model.path, self.model.task)
        else {
            return Ok(());
        };
        let file = self.resolve(p);
        let Ok(info) = crate::onnx::inspect::load_model(&file)
            .and_then(|proto| crate::onnx::inspect::inspect(&proto, &file))
        else {
            return Ok(());
        };
        let fixed = info.outputs.iter().all(|o| {
            matches!(
                o.shape.as_deref(),
                Some([.., crate::onnx::inspect::DimInfo::Static(_)])
            )
        });
        if let Some(h) = &d.head {
            return self.check_head(d, h, &file, &info.outputs);
        }
        let layout = OutputLayout::of(&info.outputs);
        let name = |f: DetectorFamily| f.name();
        match layout.family() {
            Some(DetectorFamily::Retinaface) if d.family == DetectorFamily::Retinaface => {
                self.check_prior_count(d, &file, &info.outputs)
            }
            Some(f) if f == d.family => Ok(()),
            Some(f) => Err(Error::manifest(
                self.model_location.clone(),
                format!(
                    "`model.detector.family` is `{}`, but {file} has {}: {}",
                    name(d.family),
                    layout.describe(),
                    shapes(&info.outputs)
                ),
            )
            .with_hint(format!("set `family: {}`", name(f)))),
            None if fixed => Err(Error::manifest(
                self.model_location.clone(),
                format!(
                    "`model.detector.family` is `{}`, but {file}'s outputs are neither SCRFD's (per stride N x 1, N x 4, N x 10) nor RetinaFace's (N x 4, N x 2, N x 10): {}",
                    name(d.family),
                    shapes(&info.outputs)
                ),
            )
            .with_hint("facebuild decodes SCRFD and RetinaFace heads; compare other models output by output with `task: generic`")),
            None => Ok(()),
        }
    }

    /// A head described as data against the model's outputs, at the size compare feeds:
    /// every part found, and the candidate counts the anchors imply. Outputs with dynamic
    /// dims beyond the batch are left to compare.
    fn check_head(
        &self,
        d: &DetectorSpec,
        h: &crate::domain::head::HeadSpec,
        file: &Utf8Path,
        outputs: &[crate::onnx::inspect::TensorInfo],
    ) -> Result<()> {
        let (Some(pre), Some(shapes)) = (
            &self.model.preprocessing,
            crate::onnx::inspect::static_shapes(outputs),
        ) else {
            return Ok(());
        };
        let [hh, ww] = pre.size.map(|x| x as usize);
        match crate::detect::head::binds(h, &shapes, (hh, ww)) {
            Ok(()) => Ok(()),
            Err(e) => Err(Error::manifest(
                self.model_location.clone(),
                format!(
                    "`model.detector` (`{}`) does not fit {file} at {hh}x{ww}: {e}",
                    d.label()
                ),
            )
            .with_hint(
                "pick the preset `facebuild init` names for this model, or override `detector.head` (docs/detectors.md)",
            )),
        }
    }

    /// A prior-decoded family's priors at the size compare feeds against the box output's
    /// fixed row count (see [`crate::detect::retinaface::prior_mismatch`]).
    fn check_prior_count(
        &self,
        d: &DetectorSpec,
        file: &Utf8Path,
        outputs: &[crate::onnx::inspect::TensorInfo],
    ) -> Result<()> {
        let Some(pre) = &self.model.preprocessing else {
            return Ok(());
        };
        let [h, w] = pre.size.map(|x| x as usize);
        let (steps, min_sizes) =
            crate::detect::retinaface::prior_settings(d.strides.as_ref(), d.min_sizes.as_ref());
        let Some((rows, priors)) =
            crate::detect::retinaface::prior_mismatch(outputs, [h, w], &steps, &min_sizes)
        else {
            return Ok(());
        };
        Err(Error::manifest(
            self.model_location.clone(),
            format!(
                "`model.detector.family: retinaface` at {h}x{w} (strides {steps:?}, min_sizes {min_sizes:?}) has {priors} priors, but {file}'s box output has {rows} rows"
            ),
        )
        .with_hint(
            "if the model's boxes are already decoded (as UltraFace exports emit corner boxes in [0, 1]), it is not prior-decoded: compare it with `task: generic`; otherwise set `preprocessing.size`, `detector.strides` and `detector.min_sizes` to the model's own",
        ))
    }

    pub(crate) fn step(&self, name: &str) -> &Step {
        &self.steps[name]
    }

    /// Where a step runs: its own `runs_on`, else its kind's, else the pipeline's, else
    /// here; a class fills in the Slurm options the step leaves out. (`--executor local` is
    /// applied by the build context: [`Placement::here`].)
    pub(crate) fn placement(&self, step: &Step) -> Placement {
        let mut r = placement::effective(
            step.spec.runs_on.as_ref().map(|s| &s.value),
            self.runs_on_kinds.get(&step.spec.kind),
            self.runs_on.as_ref(),
        )
        .cloned()
        .unwrap_or_default();
        let class = r
            .class
            .as_ref()
            .and_then(|c| self.gpu_classes.get(c).map(|g| (c.clone(), g.clone())));
        if let Some((_, g)) = &class {
            r.partition = r.partition.or_else(|| g.partition.clone());
            r.constraint = r.constraint.or_else(|| g.constraint.clone());
            r.gres = r.gres.or_else(|| g.gres.clone());
        }
        Placement { runs_on: r, class }
    }
}

/// Every reference, `from` and params problem of every step, each located at the step (or
/// the reference itself): a manifest with several mistakes reports them in one go.
fn validate_steps(
    file: &Utf8Path,
    steps: &IndexMap<String, Step>,
    datasets: &IndexMap<String, DatasetSpec>,
) -> Vec<Error> {
    let mut errors = Vec::new();
    let at_step = |step: &Step, (m, h): crate::steps::Problem| {
        let e = Error::manifest(step.location.clone(), format!("step `{}`: {m}", step.name));
        match h {
            Some(h) => e.with_hint(h),
            None => e,
        }
    };
    for step in steps.values() {
        // Every `needs`/`from` must name a step; located at the reference itself.
        let mut deps_ok = true;
        for (dep, at) in step.deps() {
            let l = at
                .map(|(line, column)| Location {
                    file: file.to_owned(),
                    line,
                    column,
                })
                .unwrap_or_else(|| step.location.clone());
            if !steps.contains_key(&dep) {
                deps_ok = false;
                let known: Vec<&str> = steps.keys().map(|s| s.as_str()).collect();
                errors.push(
                    Error::manifest(
                        l,
                        format!(
                            "step `{}` needs `{dep}`, which is not a step in this pipeline",
                            step.name
                        ),
                    )
                    .with_hint(format!("known steps: {}", known.join(", "))),
                );
            } else if dep == step.name {
                deps_ok = false;
                errors.push(Error::manifest(
                    l,
                    format!("step `{}` depends on itself", step.name),
                ));
            }
        }
        let kind = step.spec.params.kind();
        if deps_ok {
            if let Some(f) = &step.spec.from {
                let up = steps[&f.value].spec.kind;
                if !up.produces_model() {
                    let l = Location {
                        file: file.to_owned(),
                        line: f.referenced.line(),
                        column: f.referenced.column(),
                    };
                    errors.push(Error::manifest(l, format!("step `{}` takes `from: {}`, but a `{up}` step produces no model", step.name, f.value))
                        .with_hint("`from` names a step with a `model.onnx` output, such as a `simplify` step; use `needs` for ordering only"));
                }
            }
            let from_kind = step.spec.from.as_ref().map(|f| steps[&f.value].spec.kind);
            if let Err(p) = kind.check_from(from_kind) {
                errors.push(at_step(step, p));
            }
            for r in kind.references() {
                if let Err((m, h)) = kind.check_reference(&r, steps[&r].spec.kind) {
                    // "step `x` names `y`, a ... step": no colon after the step name.
                    let e =
                        Error::manifest(step.location.clone(), format!("step `{}` {m}", step.name));
                    errors.push(match h {
                        Some(h) => e.with_hint(h),
                        None => e,
                    });
                }
            }
        }
        errors.extend(
            crate::steps::validate(step, datasets)
                .into_iter()
                .map(|p| at_step(step, p)),
        );
    }
    errors
}

/// An ArcFace-aligned dataset needs InsightFace's five points: a detector whose head has none
/// (BlazeFace's six keypoints, UltraFace and FaceBoxes with no landmarks) is refused here,
/// when the plan is made, instead of yielding no crops.
fn align_points_problem(
    k: &str,
    d: &DatasetSpec,
    model: &ModelSpec,
    l: &Location,
) -> Option<Error> {
    let a = d.align.as_ref()?;
    let crop = model.input.crop_for(model.task);
    let crop = match crop {
        _ if a.detector.has_five_points() => return None,
        Crop::Box { .. } => return None,
        Crop::Arcface => "ArcFace",
        Crop::Arcface128 => "ArcFace-128",
    };
    Some(
        Error::manifest(
            l.clone(),
            format!(
                "dataset `{k}`: `align.detector` (`{}`) gives no InsightFace five points (eyes, nose, mouth corners), which the {crop} crop aligns on",
                a.detector.label()
            ),
        )
        .with_hint("align with a detector whose head has them (scrfd, retinaface, yunet, yolov5_face, yolov8_face), or crop by box (`model.input.crop: {mode: box}`)"),
    )
}

/// What is wrong with dataset `k` (at `l`): neither or both of path and builtin, an unknown
/// built-in, `init`'s placeholder still there, a bad `align:`.
fn dataset_problems(k: &str, d: &DatasetSpec, l: &Location) -> Vec<Error> {
    let mut errors = Vec::new();
    let builtins = || {
        format!(
            "built-in datasets: {}",
            crate::preprocess::synthetic::names().join(", ")
        )
    };
    match (&d.path, &d.builtin) {
        (None, None) if d.derive.is_some() => {}
        _ if d.derive.is_some() => errors.push(
            Error::manifest(
                l.clone(),
                format!(
                    "dataset `{k}` has `derive` and `path` or `builtin`: it is one or the other"
                ),
            )
            .with_hint(format!(
                "a derived set's photos come from `derive.from`: drop `datasets.{k}.path`/`builtin`"
            )),
        ),
        (Some(_), Some(_)) | (None, None) => errors.push(
            Error::manifest(
                l.clone(),
                format!("dataset `{k}` needs exactly one of `path`, `builtin` and `derive`"),
            )
            .with_hint(builtins()),
        ),
        (None, Some(b)) if !crate::preprocess::synthetic::names().contains(&b.as_str()) => errors
            .push(
                Error::manifest(
                    l.clone(),
                    format!("dataset `{k}`: unknown built-in dataset `{b}`"),
                )
                .with_hint(builtins()),
            ),
        (Some(p), None) if init::is_placeholder(p.as_str()) => errors.push(
            Error::manifest(
                l.clone(),
                format!("dataset `{k}` still has the placeholder `facebuild init` wrote: {p}"),
            )
            .with_hint(format!(
                "set `datasets.{k}.path` to {}, relative to this file",
                init::placeholder_text(p.as_str())
            )),
        ),
        _ => {}
    }
    if let Some(a) = &d.align {
        if init::is_placeholder(a.model.as_str()) {
            errors.push(
                Error::manifest(
                    l.clone(),
                    format!(
                        "dataset `{k}`: `align.model` still has the placeholder `facebuild init` wrote: {}",
                        a.model
                    ),
                )
                .with_hint(format!(
                    "set `datasets.{k}.align.model` to {}, relative to this file",
                    init::placeholder_text(a.model.as_str())
                )),
            );
        }
        if let Err(e) = validate_detector(&a.detector) {
            errors.push(Error::manifest(
                l.clone(),
                format!("dataset `{k}`: `align.detector`: {e}"),
            ));
        }
        for (m, h) in a.preprocessing.iter().flat_map(Preprocessing::problems) {
            errors.push(
                Error::manifest(
                    l.clone(),
                    format!("dataset `{k}`: `align.preprocessing.{}", &m[1..]),
                )
                .with_hint(h),
            );
        }
    }
    errors
}

/// What is wrong with derived dataset `k`'s settings: an unknown or derived source, sizes
/// out of range, a bad detector.
fn derive_problems(
    k: &str,
    d: &DeriveSpec,
    datasets: &IndexMap<String, DatasetSpec>,
    l: &Location,
) -> Vec<Error> {
    let mut errors = Vec::new();
    let mut bad = |m: String, h: String| {
        errors.push(Error::manifest(l.clone(), format!("dataset `{k}`: {m}")).with_hint(h))
    };
    match datasets.get(&d.from) {
        None => bad(
            format!("`derive.from` names `{}`, which is not a dataset", d.from),
            format!(
                "datasets here: {}",
                datasets.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ),
        Some(s) if s.derive.is_some() => bad(
            format!("`derive.from` names `{}`, which is derived itself", d.from),
            "derive from a folder or built-in dataset; one derivation can mosaic, rescale, flip and rotate at once".into(),
        ),
        Some(s) if s.is_bin() => bad(
            format!("`derive.from` names `{}`, a verification `.bin` of aligned crops", d.from),
            "derive from whole photos: a folder of portraits or scenes".into(),
        ),
        Some(_) => {}
    }
    if let Some(m) = &d.mosaic {
        if !(1..=10_000).contains(&m.count) {
            bad(
                format!("`derive.mosaic.count` is {}", m.count),
                "use 1 to 10000 mosaics".into(),
            );
        }
        if m.face_sizes.is_empty() || m.face_sizes.iter().any(|f| !(*f > 0.0 && *f <= 0.5)) {
            bad(
                format!("`derive.mosaic.face_sizes` is {:?}", m.face_sizes),
                "list face heights as fractions of the canvas height, each in (0, 0.5], e.g. [0.02, 0.04, 0.08, 0.16]".into(),
            );
        }
        if !(1.0..=8.0).contains(&m.context) {
            bad(
                format!("`derive.mosaic.context` is {}", m.context),
                "a tile is 1 to 8 face heights wide (default 2)".into(),
            );
        }
    }
    if d.rescale.iter().any(|f| !(*f > 0.0 && *f <= 1.0)) {
        bad(
            format!("`derive.rescale` is {:?}", d.rescale),
            "list fractions of the canvas in (0, 1], e.g. [0.5, 0.25]".into(),
        );
    }
    if d.rotate.iter().any(|a| !a.is_finite() || a.abs() > 45.0) {
        bad(
            format!("`derive.rotate` is {:?}", d.rotate),
            "list small angles in degrees, at most 45 either way, e.g. [-10, 10]".into(),
        );
    }
    if d.canvas
        .is_some_and(|[h, w]| h < 32 || w < 32 || h > 4096 || w > 4096)
    {
        bad(
            format!("`derive.canvas` is {:?}", d.canvas),
            "give [height, width] of the detector's input, 32 to 4096 each".into(),
        );
    }
    if d.mosaic.is_none() && d.rescale.is_empty() && !d.flip && d.rotate.is_empty() {
        bad(
            "`derive` adds nothing to the originals".into(),
            "add `mosaic`, `rescale`, `flip` or `rotate`".into(),
        );
    }
    if let Some(a) = &d.detector {
        if init::is_placeholder(a.model.as_str()) {
            bad(
                format!(
                    "`derive.detector.model` still has the placeholder `facebuild init` wrote: {}",
                    a.model
                ),
                format!(
                    "set it to {}, relative to this file",
                    init::placeholder_text(a.model.as_str())
                ),
            );
        }
        if let Err(e) = validate_detector(&a.detector) {
            bad(
                format!("`derive.detector.detector`: {e}"),
                "see docs/manifest.md, detectors".into(),
            );
        }
    }
    errors
}

fn validate_name(name: &str) -> std::result::Result<(), String> {
    // A name is a folder name (outputs, releases): never `.`, `..` or a hidden folder.
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid name `{name}`: use letters, digits, `_`, `-` and `.` only, not starting with `.`"
        ))
    }
}

/// Every problem of `model:`, each as (message, hint).
/// The pipeline's model (`model:`, or the first of `models:`), where it is written, and a
/// pack's models by name; each checked, problems into `errors`. Both or neither is an error.
fn resolve_models(
    model: Option<serde_saphyr::Spanned<ModelSpec>>,
    raw_models: IndexMap<String, serde_saphyr::Spanned<ModelSpec>>,
    loc: &dyn Fn(&serde_saphyr::Location) -> Location,
    whole_file: &Location,
    errors: &mut Vec<Error>,
) -> Result<(ModelSpec, Location, Models)> {
    let mut models: IndexMap<String, (ModelSpec, Location)> = IndexMap::new();
    for (k, v) in raw_models {
        let l = loc(&v.referenced);
        if let Err(m) = validate_name(&k) {
            errors.push(Error::manifest(l.clone(), format!("model {m}")));
        }
        errors.extend(
            validate_model(&v.value)
                .into_iter()
                .map(|(m, h)| Error::manifest(l.clone(), format!("model `{k}`: {m}")).with_hint(h)),
        );
        models.insert(k, (v.value, l));
    }
    let (model, model_location) = match (model, models.first()) {
        (Some(m), None) => {
            let l = loc(&m.referenced);
            errors.extend(
                validate_model(&m.value)
                    .into_iter()
                    .map(|(msg, h)| Error::manifest(l.clone(), msg).with_hint(h)),
            );
            (m.value, l)
        }
        (None, Some((_, (m, l)))) => (m.clone(), l.clone()),
        (Some(m), Some(_)) => {
            return Err(Error::manifest(
                loc(&m.referenced),
                "the pipeline has both `model:` and `models:`",
            )
            .with_hint("one model: `model:`; a pack: every model under `models:`, by name"));
        }
        (None, None) => {
            return Err(
                Error::manifest(whole_file.clone(), "the pipeline names no model").with_hint(
                    "add `model:` (see `facebuild init MODEL.onnx`), or `models:` for a pack",
                ),
            );
        }
    };
    Ok((model, model_location, models))
}

fn validate_model(m: &ModelSpec) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if let Err(p) = validate_model_fields(m) {
        problems.push(p);
    }
    problems.extend(validate_preprocessing(m));
    if let Some(d) = &m.detector
        && let Err(e) = validate_detector(d)
    {
        problems.push((
            format!("`model.detector`: {e}"),
            "see docs/manifest.md, `model.detector`".to_string(),
        ));
    }
    problems.extend(validate_crop_and_landmarks(m));
    problems
}

/// `model.input.crop` and `model.landmarks`: a scale only on box crops, positive; points
/// only on landmark models.
fn validate_crop_and_landmarks(m: &ModelSpec) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if let Some(c) = &m.input.crop {
        match (c.mode, c.scale) {
            (crate::domain::CropMode::Arcface | crate::domain::CropMode::Arcface128, Some(_)) => {
                problems.push((
                    "`model.input.crop.scale` applies to `mode: box`".into(),
                    "the ArcFace crop is fixed by the five-point template: remove `scale`".into(),
                ))
            }
            (_, Some(s)) if !(s.is_finite() && s > 0.0) => problems.push((
                format!("`model.input.crop.scale: {s}` must be a positive number"),
                "InsightFace crops 1.5 times the box's longer side; PFLD's authors 1.1".into(),
            )),
            _ => {}
        }
        if let Some(f) = c.min_face
            && !(f.is_finite() && f >= 0.0)
        {
            problems.push((
                format!("`model.input.crop.min_face: {f}` must be 0 or more photo pixels"),
                "the smallest face kept, as its box's longer side in pixels; 0 keeps every face"
                    .into(),
            ));
        }
        if c.faces().all && !matches!(m.task, Task::Landmarks | Task::Attribute) {
            problems.push((
                format!(
                    "`model.input.crop.faces: all` is set on a `{}` model",
                    serde_json::to_value(m.task)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default()
                ),
                "every face of a photo is compared for landmark and attribute models; recognizers and swappers pair photos, so they take the largest face: remove `faces`".into(),
            ));
        }
    }
    if m.landmarks.is_some() && m.task != Task::Landmarks {
        problems.push((
            "`model.landmarks` is set on a model whose task is not `landmarks`".into(),
            "set `task: landmarks`, or remove `model.landmarks`".into(),
        ));
    }
    if let Some(0) = m.landmarks.as_ref().and_then(|l| l.points) {
        problems.push((
            "`model.landmarks.points` is 0".into(),
            "give the points per face (68, 98, 106...), or leave it out to read it from the output's width".into(),
        ));
    }
    problems
}

/// The model's own fields, up to the first problem (later checks build on earlier ones).
fn validate_model_fields(m: &ModelSpec) -> std::result::Result<(), (String, String)> {
    if m.path.is_some() && m.builtin.is_some() {
        return Err((
            "`model` has both `path` and `builtin`".into(),
            "keep one: `path` for your ONNX file, `builtin` for a generated model".into(),
        ));
    }
    if let Some(b) = &m.builtin
        && crate::onnx::builtin::BuiltinModel::from_name(b).is_none()
    {
        return Err((
            format!("unknown built-in model `{b}`"),
            format!(
                "built-in models: {}",
                crate::onnx::builtin::BuiltinModel::names().join(", ")
            ),
        ));
    }
    if let Some(s) = m.sha256.as_ref().map(|s| &s.value)
        && (s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err((
            format!("`sha256` must be 64 hex characters, got `{s}`"),
            "compute it with `sha256sum model.onnx`".into(),
        ));
    }
    if m.input.shape.is_empty() {
        return Err((
            "`model.input.shape` is empty".into(),
            "declare the input shape, e.g. `shape: [1, 3, 112, 112]`".into(),
        ));
    }
    if m.input.shape.len() != 4
        && matches!(
            m.task,
            Task::Recognition | Task::Detection | Task::Landmarks | Task::Attribute
        )
    {
        return Err((
            format!(
                "`model.input.shape` has {} dims; image models take 4 ({:?})",
                m.input.shape.len(),
                m.input.layout
            ),
            "declare all four dims, e.g. `shape: [1, 3, 112, 112]` for NCHW".into(),
        ));
    }
    for i in m.all_inputs() {
        validate_dims(&key_of(m, i), i)?;
    }
    for i in &m.extra_inputs {
        validate_extra_input(&key_of(m, i), i)?;
    }
    Ok(())
}

/// How errors name an input: `model.input`, or `model.inputs.<name>`.
fn key_of(m: &ModelSpec, i: &InputSpec) -> String {
    if m.extra_inputs.is_empty() {
        "model.input".into()
    } else {
        format!("model.inputs.{}", i.name)
    }
}

/// An input's `dims` against its shape's named dims, each range ordered.
fn validate_dims(key: &str, i: &InputSpec) -> std::result::Result<(), (String, String)> {
    let named: Vec<&str> = i
        .shape
        .iter()
        .filter_map(|d| match d {
            Dim::Named(n) => Some(n.as_str()),
            _ => None,
        })
        .collect();
    for (k, r) in &i.dims {
        if !named.contains(&k.as_str()) {
            return Err((
                format!(
                    "`{key}.dims` declares `{k}`, which is not a named dim of `{key}.shape` {}",
                    fmt_shape(&i.shape)
                ),
                format!(
                    "named dims: [{}]; write e.g. `shape: [1, 3, H, W]`",
                    named.join(", ")
                ),
            ));
        }
        if !(1 <= r.min && r.min <= r.opt && r.opt <= r.max) {
            return Err((
                format!(
                    "`{key}.dims.{k}` needs 1 <= min <= opt <= max, got min {} opt {} max {}",
                    r.min, r.opt, r.max
                ),
                "e.g. `H: {min: 320, opt: 640, max: 640}`".into(),
            ));
        }
    }
    Ok(())
}

/// An input not fed images: a shape, no crop, and a feed that names its source once.
fn validate_extra_input(key: &str, i: &InputSpec) -> std::result::Result<(), (String, String)> {
    if i.shape.is_empty() {
        return Err((
            format!("`{key}.shape` is empty"),
            "declare the input's shape, e.g. `shape: [1, 512]` for a source latent".into(),
        ));
    }
    if i.crop.is_some() {
        return Err((
            format!("`{key}.crop` is set on an input fed `{}`", i.feed.name()),
            "crops apply to the image input: remove `crop` here".into(),
        ));
    }
    if let Feed::Embedding(e) = &i.feed {
        if let Some(m) = e
            .model
            .as_ref()
            .filter(|m| init::is_placeholder(m.as_str()))
        {
            return Err((
                format!(
                    "`{key}.feed.embedding.model` still has the placeholder `facebuild init` wrote: {m}"
                ),
                format!(
                    "set it to {}, relative to this file",
                    init::placeholder_text(m.as_str())
                ),
            ));
        }
        match (&e.model, &e.builtin) {
            (Some(_), Some(_)) | (None, None) => {
                return Err((
                    format!("`{key}.feed.embedding` needs exactly one of `model` and `builtin`"),
                    "name the recognizer whose embedding feeds it: `model: models/w600k_r50.onnx`, or `builtin: iresnet-mini`".into(),
                ));
            }
            (None, Some(b)) if !b.starts_with("iresnet") => {
                return Err((
                    format!("`{key}.feed.embedding.builtin: {b}` is not a built-in recognizer"),
                    "built-in recognizers: iresnet-mini, iresnet18, iresnet50".into(),
                ));
            }
            _ => {}
        }
        if i.shape.len() != 2 {
            return Err((
                format!(
                    "`{key}.shape` {} is fed an embedding; embeddings are [batch, D]",
                    fmt_shape(&i.shape)
                ),
                "declare e.g. `shape: [1, 512]`".into(),
            ));
        }
    }
    Ok(())
}

/// `model.preprocessing` against the input it feeds: its size against a static H x W, and
/// one mean and std per channel. Independent of each other, so all are reported.
fn validate_preprocessing(m: &ModelSpec) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let Some(pre) = &m.preprocessing else {
        return problems;
    };
    let (hi, wi, ci) = match m.input.layout {
        Layout::NCHW => (2, 3, 1),
        Layout::NHWC => (1, 2, 3),
    };
    let image = m.input.shape.len() == 4;
    // The tensors every step feeds are `preprocessing.size`: a static input's H x W must be
    // that size, or the first inference fails deep inside a step. Height comes first.
    if image
        && let (Dim::Fixed(h), Dim::Fixed(w)) = (&m.input.shape[hi], &m.input.shape[wi])
        && [*h, *w] != [pre.size[0] as u64, pre.size[1] as u64]
    {
        let swapped = [*w, *h] == [pre.size[0] as u64, pre.size[1] as u64];
        problems.push((
            format!(
                "`model.preprocessing.size` is [{}, {}] but `model.input.shape` {} fixes the input at {h} x {w} (height x width){}",
                pre.size[0],
                pre.size[1],
                fmt_shape(&m.input.shape),
                if swapped {
                    ": width and height are swapped"
                } else {
                    ""
                }
            ),
            format!("write `size: [{h}, {w}]`: [height, width], as the input shape orders them"),
        ));
    }
    // Images are fed as 3 channels (RGB or BGR) or one (GRAY): one mean and one std per
    // channel.
    let fed = pre.color.channels();
    let channels = match m.input.shape.get(ci) {
        Some(Dim::Fixed(c)) if image => *c as usize,
        _ => fed,
    };
    if channels != fed {
        let last = m.input.shape.last();
        problems.push((
            format!(
                "`model.input.shape` {} has {channels} channel{} ({:?}), and `model.preprocessing.color: {:?}` feeds {fed}",
                fmt_shape(&m.input.shape),
                if channels == 1 { "" } else { "s" },
                m.input.layout,
                pre.color
            ),
            if channels == 1 {
                "a grayscale model: set `color: GRAY` (luma as OpenCV's cvtColor(BGR2GRAY)), with one `mean` and one `std`".to_string()
            } else if [Some(&Dim::Fixed(3)), Some(&Dim::Fixed(1))].contains(&last)
                && m.input.layout == Layout::NCHW
            {
                "the channels come last: set `layout: NHWC`".to_string()
            } else {
                "declare the layout that puts the channels where the model has them (`layout: NCHW` or `NHWC`), and `color` for their count (RGB or BGR for 3, GRAY for 1)".to_string()
            },
        ));
    }
    if channels == fed {
        problems.extend(
            pre.problems()
                .into_iter()
                .map(|(m, h)| (m.replacen('`', "`model.preprocessing.", 1), h)),
        );
    }
    problems
}

fn validate_detector(d: &DetectorSpec) -> std::result::Result<(), String> {
    if !(0.0..=1.0).contains(&d.score_threshold) || !(0.0..=1.0).contains(&d.nms_iou) {
        return Err("`score_threshold` and `nms_iou` must be in [0, 1]".into());
    }
    if let (Some(s), Some(m)) = (&d.strides, &d.min_sizes)
        && s.len() != m.len()
    {
        return Err(format!(
            "{} strides but {} `min_sizes` rows: one row per stride",
            s.len(),
            m.len()
        ));
    }
    if d.family == DetectorFamily::Scrfd && (d.min_sizes.is_some() || d.variance.is_some()) {
        return Err(
            "`min_sizes` and `variance` are RetinaFace settings; SCRFD decodes from anchor centres"
                .into(),
        );
    }
    Ok(())
}

/// Turn serde-saphyr's error into a located manifest error. It renders a snippet of the
/// offending lines, which we keep (with the real file name) because it shows the fix.
fn yaml_error(file: &Utf8Path, e: &serde_saphyr::Error) -> Error {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let rendered = e.to_string().replace("<input>", file.as_str());
    // The first line reads "error: line L column C: <message>"; keep just the message.
    let mut lines = rendered.lines();
    let first = lines.next().unwrap_or_default();
    let message = first.trim_start_matches("error: ");
    let message = match message.split_once(": ") {
        Some((pos, rest)) if pos.starts_with("line ") => rest,
        _ => message,
    };
    let snippet: Vec<&str> = lines.collect();
    let mut msg = message.to_string();
    if !snippet.is_empty() {
        msg.push('\n');
        msg.push_str(&snippet.join("\n"));
    }
    Error::manifest(
        Location {
            file: file.to_owned(),
            line,
            column,
        },
        msg,
    )
}
