//! The build context shared by plan, status and run: the manifest, the cache, the toolchain,
//! the lockfile, and how a step's action key is computed from its inputs.

use std::collections::BTreeMap;

use camino::Utf8PathBuf;
use serde_json::json;

use crate::cache::remote::Remote;
use crate::cache::{CacheKey, CacheKeyHasher, KeyParts, Lock, Store};
use crate::error::{Error, IoContext, Result};
use crate::graph::Dag;
use crate::manifest::{Manifest, Placement, Step};
use crate::onnx::builtin::BuiltinModel;
use crate::settings::{ContextSettings, Executor, Materialize};
use crate::steps;
use crate::toolchain::{Pins, Toolchain};

pub(crate) struct BuildContext {
    pub manifest: Manifest,
    pub dag: Dag,
    pub store: Store,
    pub cache_dir: Utf8PathBuf,
    pub pins: Pins,
    pub toolchain: Option<Toolchain>,
    pub lock: Lock,
    /// TensorRT, looked for on first use only (a pipeline without TensorRT steps never does).
    tensorrt: std::sync::OnceLock<crate::toolchain::tensorrt::Discovery>,
    /// Each source model (by pack model name; "" for a one-model pipeline), resolved on
    /// first use (every root step's key needs its digest).
    sources: std::sync::Mutex<BTreeMap<String, Source>>,
    /// The manifest as each pack model's steps see it ([`Manifest::view`]).
    views: BTreeMap<String, Manifest>,
    /// The remote cache, when `--remote` or `FACEBUILD_REMOTE` names one.
    pub remote: Option<Remote>,
    /// Which outputs reach `out/`.
    pub materialize: Materialize,
    /// Where steps run (`--executor`).
    executor: Executor,
    /// Where releases go unless a release step says (settings).
    pub releases_dir: Utf8PathBuf,
    /// The key releases are signed with (settings).
    pub signing_key: Option<String>,
    /// This invocation, for release provenance (settings).
    pub invocation: crate::settings::Invocation,
    /// The longest wait between two polls of a Slurm job (settings).
    pub slurm_poll_max: std::time::Duration,
    /// Where the toolchain is found or installed (settings).
    toolchain_place: crate::toolchain::Place,
    /// `TENSORRT_HOME` (settings).
    tensorrt_home: Option<Utf8PathBuf>,
}

/// The resolved source model: where it is and what it hashes to.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub path: Utf8PathBuf,
    pub digest: String,
    /// How the manifest named it: a path, or `builtin:<name>`.
    pub label: String,
}

impl BuildContext {
    /// A context for `manifest` with resolved settings; its remote (if any) is opened here.
    pub(crate) fn open(manifest: Manifest, settings: &ContextSettings) -> Result<BuildContext> {
        let remote = settings.remote.clone().map(Remote::open).transpose()?;
        BuildContext::with_remote(manifest, settings, remote)
    }

    /// As [`BuildContext::open`], with a remote already open (a worker fetched its spec
    /// through it); `settings.remote` is not read.
    pub(crate) fn with_remote(
        manifest: Manifest,
        settings: &ContextSettings,
        remote: Option<Remote>,
    ) -> Result<BuildContext> {
        let cache_dir = settings.cache_dir.clone();
        let dag = Dag::build(&manifest)?;
        manifest.check_against_model()?;
        let store = Store::open(&cache_dir)?;
        let pins = Pins::for_manifest(
            &manifest.toolchain,
            &manifest.file,
            settings.toolchain.python.as_deref(),
        )?;
        let toolchain = Toolchain::find(&settings.toolchain, &pins);
        let lock = Lock::load(&manifest.lock_path());
        let views: BTreeMap<String, Manifest> = manifest
            .models
            .keys()
            .map(|m| (m.clone(), manifest.view(Some(m))))
            .collect();
        for v in views.values() {
            v.check_against_model()?;
        }
        Ok(BuildContext {
            views,
            manifest,
            dag,
            store,
            cache_dir,
            pins,
            toolchain,
            lock,
            tensorrt: std::sync::OnceLock::new(),
            sources: Default::default(),
            remote,
            materialize: settings.materialize,
            executor: settings.executor,
            releases_dir: settings.releases_dir.clone(),
            signing_key: settings.signing_key.clone(),
            invocation: settings.invocation.clone(),
            toolchain_place: settings.toolchain.clone(),
            tensorrt_home: settings.tensorrt_home.clone(),
            slurm_poll_max: settings.slurm_poll_max,
        })
    }

    /// Where a step runs: the manifest's placement; `--executor local` keeps its class (and
    /// so its keys) but runs it here.
    pub(crate) fn placement(&self, step: &Step) -> Placement {
        let p = self.manifest.placement(step);
        match self.executor {
            Executor::Auto => p,
            Executor::Local => p.here(),
        }
    }

    /// TensorRT as found for this manifest, or what is missing.
    pub(crate) fn tensorrt(&self) -> &crate::toolchain::tensorrt::Discovery {
        self.tensorrt.get_or_init(|| {
            crate::toolchain::tensorrt::discover(
                self.manifest.toolchain.tensorrt.as_ref(),
                &self.manifest.dir,
                &self.cache_dir,
                self.tensorrt_home.as_deref(),
            )
        })
    }

    /// Install the toolchain if needed (run does this; plan and status only look).
    pub(crate) fn ensure_toolchain(&mut self) -> Result<&Toolchain> {
        if self.toolchain.is_none() {
            self.toolchain = Some(Toolchain::ensure(&self.toolchain_place, &self.pins)?);
        }
        Ok(self.toolchain.as_ref().expect("just set"))
    }

    /// The manifest as `step`'s model sees it: its pack model's view, or the manifest.
    pub(crate) fn manifest_for(&self, step: &Step) -> &Manifest {
        self.manifest_of(step.model.as_deref())
    }

    /// The manifest as pack model `model`'s steps see it (the manifest for None).
    pub(crate) fn manifest_of(&self, model: Option<&str>) -> &Manifest {
        model
            .and_then(|m| self.views.get(m))
            .unwrap_or(&self.manifest)
    }

    /// Resolve a source model (`model`: a pack's model by name; None: the pipeline's one
    /// model): the file the manifest names, or a generated built-in. A sha256 pin is
    /// checked here, before any step runs.
    pub(crate) fn source(&self, model: Option<&str>) -> Result<Source> {
        let key = model.unwrap_or_default().to_string();
        if let Some(s) = self.sources.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(s);
        }
        let s = self.resolve_source(model)?;
        if let Ok(mut m) = self.sources.lock() {
            m.entry(key).or_insert_with(|| s.clone());
        }
        Ok(s)
    }

    fn resolve_source(&self, model: Option<&str>) -> Result<Source> {
        let m = self.manifest_of(model);
        let (path, label) = match &m.model.path {
            Some(p) => {
                let path = m.resolve(p);
                if !path.exists() {
                    return Err(Error::Model {
                        path: path.clone(),
                        message: "model file not found".into(),
                        hint: Some(format!(
                            "`model.path` in {} is relative to the manifest's folder",
                            m.file
                        )),
                    });
                }
                (path, p.to_string())
            }
            None => {
                let b = m
                    .model
                    .builtin
                    .as_deref()
                    .map(|n| BuiltinModel::from_name(n).expect("validated"))
                    .unwrap_or(BuiltinModel::DEFAULT);
                let label = format!("builtin:{}", b.name());
                if m.model.sha256.is_none() {
                    // Its digest is known without generating it: generated when a step
                    // runs on it (`source_file`), never on a fully cached run.
                    return Ok(Source {
                        path: self.builtin_path(b),
                        digest: b.digest().to_string(),
                        label,
                    });
                }
                (self.builtin_model(b)?, label)
            }
        };
        let d = self.store.memo.blake3(&path)?;
        if let Some(pin) = &m.model.sha256 {
            let actual = self.store.memo.sha256(&path)?;
            if !actual.eq_ignore_ascii_case(&pin.value) {
                let at = crate::error::Location {
                    file: m.file.clone(),
                    line: pin.referenced.line(),
                    column: pin.referenced.column(),
                };
                return Err(Error::manifest(at, format!("model {path} has sha256 {actual}, but `model.sha256` pins {}", pin.value))
                    .with_hint("the model changed: update the pin if the change is intended, or restore the pinned file"));
            }
        }
        Ok(Source {
            path,
            digest: d.blake3,
            label,
        })
    }

    fn builtin_path(&self, b: BuiltinModel) -> Utf8PathBuf {
        b.path_in(&self.cache_dir)
    }

    /// Generate a built-in model once per generator version, into the cache.
    pub(crate) fn builtin_model(&self, b: BuiltinModel) -> Result<Utf8PathBuf> {
        b.materialize(&self.cache_dir)
    }

    /// A source model's file (see [`BuildContext::source`]), generating a built-in model
    /// on first need.
    pub(crate) fn source_file(&self, model: Option<&str>) -> Result<Utf8PathBuf> {
        let s = self.source(model)?;
        if !s.path.exists()
            && let Some(b) = s
                .label
                .strip_prefix("builtin:")
                .and_then(BuiltinModel::from_name)
        {
            return self.builtin_model(b);
        }
        Ok(s.path)
    }

    /// Digest of a dataset folder: every file's relative path and blake3, sorted.
    pub(crate) fn dataset_digest(&self, name: &str) -> Result<(Utf8PathBuf, String)> {
        let spec = &self.manifest.datasets[name];
        if let Some(d) = &spec.derive {
            return self.derived_digest(name, d);
        }
        let dir = match (&spec.path, &spec.builtin) {
            // An InsightFace verification .bin: unpacked once per digest into a folder.
            (Some(p), _) if spec.is_bin() => {
                let bin = self.manifest.resolve(p);
                if !bin.is_file() {
                    return Err(
                        Error::usage(format!("dataset `{name}`: {bin} does not exist")).with_hint(
                            format!(
                                "`datasets.{name}.path` is relative to {}",
                                self.manifest.dir
                            ),
                        ),
                    );
                }
                let digest = self.store.memo.blake3(&bin)?.blake3;
                crate::preprocess::verification_sets::unpack_bin(&bin, &digest, &self.cache_dir)?
            }
            (Some(p), _) => self.manifest.resolve(p),
            (None, b) => crate::preprocess::synthetic::ensure(
                &self.cache_dir,
                b.as_deref().unwrap_or("synthetic-faces"),
            )?,
        };
        if !dir.is_dir() {
            return Err(
                Error::usage(format!("dataset `{name}`: folder {dir} does not exist")).with_hint(
                    format!(
                        "`datasets.{name}.path` is relative to {}",
                        self.manifest.dir
                    ),
                ),
            );
        }
        let files = crate::util::files_under(&dir)?;
        let mut entries = Vec::with_capacity(files.len());
        for f in &files {
            let rel = f.strip_prefix(&dir).unwrap_or(f).to_string();
            entries.push((rel, self.store.memo.blake3(f)?.blake3));
        }
        // count/seed select a subset: they are part of the dataset's identity.
        let mut h = CacheKeyHasher::new();
        h.write_tag(b'D');
        entries.cache_key(&mut h);
        spec.count.map(|c| c as u64).cache_key(&mut h);
        spec.seed.cache_key(&mut h);
        // Alignment changes every crop: its settings and its detector are part of the data.
        match &spec.align {
            Some(a) => {
                let model = self.manifest.resolve(&a.model);
                if !model.is_file() {
                    return Err(Error::usage(format!(
                        "dataset `{name}`: alignment detector {model} does not exist"
                    ))
                    .with_hint(format!(
                        "`datasets.{name}.align.model` is relative to {}",
                        self.manifest.dir
                    )));
                }
                serde_json::to_value(a)
                    .map_err(anyhow::Error::from)?
                    .cache_key(&mut h);
                self.store.memo.blake3(&model)?.blake3.cache_key(&mut h);
            }
            None => h.write_tag(b'N'),
        }
        Ok((dir, h.finish()))
    }

    /// A dataset's folder, ready to read: a derived set is written on first need.
    pub(crate) fn dataset_dir(&self, name: &str) -> Result<Utf8PathBuf> {
        let (dir, _) = self.dataset_digest(name)?;
        let spec = &self.manifest.datasets[name];
        let Some(d) = &spec.derive else {
            return Ok(dir);
        };
        let (model, digest, align) = self.derive_detector(name, d)?;
        let canvas = derive_canvas(d, &align);
        let originals = || -> Result<Vec<crate::preprocess::derive::Original>> {
            let tc = self
                .toolchain
                .as_ref()
                .ok_or_else(|| Error::toolchain("not installed"))?;
            let model = match &model {
                Some(p) => p.clone(),
                None => self.source_file(self.detection_model().flatten().as_deref())?,
            };
            let aligner = crate::preprocess::align::Aligner::new(tc, &model, &digest, &align)?;
            let src = &self.manifest.datasets[&d.from];
            let from = self.dataset_dir(&d.from)?;
            let files = crate::preprocess::list_images(&from, src.count, src.seed)?;
            let mut out = Vec::with_capacity(files.len());
            for path in files {
                let image = crate::preprocess::decode_image(&path)?;
                let faces = aligner.faces(&image)?;
                out.push(crate::preprocess::derive::Original::new(
                    path, image, faces, canvas,
                ));
            }
            Ok(out)
        };
        crate::preprocess::derive::ensure(&dir, &originals, d, canvas, spec.seed)
    }

    /// The one detection model of this pipeline, which finds faces for a derived set that
    /// names no `detector:`: `Some(None)` for a one-model pipeline's own model, `Some(name)`
    /// for a pack's, None when there is no single one.
    fn detection_model(&self) -> Option<Option<String>> {
        use crate::manifest::Task;
        if self.manifest.models.is_empty() {
            return (self.manifest.model.task == Task::Detection).then_some(None);
        }
        let found: Vec<&String> = self
            .manifest
            .models
            .iter()
            .filter(|(_, (m, _))| m.task == Task::Detection)
            .map(|(k, _)| k)
            .collect();
        match found[..] {
            [one] => Some(Some(one.clone())),
            _ => None,
        }
    }

    /// The detector of derived dataset `name`: its file when `detector:` names one (None:
    /// the pipeline's detector, generated on need when built in), digest and settings.
    fn derive_detector(
        &self,
        name: &str,
        d: &crate::manifest::DeriveSpec,
    ) -> Result<(Option<Utf8PathBuf>, String, crate::manifest::AlignSpec)> {
        if let Some(a) = &d.detector {
            let model = self.manifest.resolve(&a.model);
            if !model.is_file() {
                return Err(Error::usage(format!(
                    "dataset `{name}`: derive detector {model} does not exist"
                ))
                .with_hint(format!(
                    "`datasets.{name}.derive.detector.model` is relative to {}",
                    self.manifest.dir
                )));
            }
            let digest = self.store.memo.blake3(&model)?.blake3;
            return Ok((Some(model), digest, a.clone()));
        }
        let no_detector = || {
            Error::usage(format!(
                "dataset `{name}`: `derive` needs a detector to find the faces on the originals"
            ))
            .with_hint(format!(
                "add `datasets.{name}.derive.detector: {{model: <detector.onnx>, detector: {{family: scrfd}}}}`, or derive it in a pipeline with exactly one detection model"
            ))
        };
        let key = self.detection_model().ok_or_else(no_detector)?;
        let m = &self.manifest_of(key.as_deref()).model;
        let detector = m.detector.clone().ok_or_else(no_detector)?;
        let align = crate::manifest::AlignSpec {
            model: m.path.clone().unwrap_or_default(),
            detector,
            preprocessing: m.preprocessing.clone(),
        };
        Ok((None, self.source(key.as_deref())?.digest, align))
    }

    /// A derived set's digest: its source's, its settings, its detector's, without
    /// writing it (a plan or a fully cached run never does).
    fn derived_digest(
        &self,
        name: &str,
        d: &crate::manifest::DeriveSpec,
    ) -> Result<(Utf8PathBuf, String)> {
        let spec = &self.manifest.datasets[name];
        let (_, from) = self.dataset_digest(&d.from)?;
        let (_, detector, align) = self.derive_detector(name, d)?;
        let mut h = CacheKeyHasher::new();
        h.write_tag(b'V');
        u64::from(crate::preprocess::derive::DERIVE_VERSION).cache_key(&mut h);
        from.cache_key(&mut h);
        detector.cache_key(&mut h);
        // The detector's file name is not part of it: its digest is.
        let settings = serde_json::json!({
            "derive": {"detector": align.detector, "feed": align.preprocessing, "canvas": derive_canvas(d, &align),
                "originals": d.originals, "mosaic": d.mosaic, "rescale": d.rescale, "flip": d.flip, "rotate": d.rotate},
            "count": spec.count, "seed": spec.seed, "align": spec.align,
        });
        settings.cache_key(&mut h);
        let digest = h.finish();
        let dir = self
            .cache_dir
            .join("derived")
            .join(format!("{name}-{}", &digest[..16.min(digest.len())]));
        Ok((dir, digest))
    }

    /// Key parts for a step, given the digest of its model input and the outputs of the
    /// steps its params reference (a calibration set, compare candidates).
    pub(crate) fn key_parts(
        &self,
        step: &Step,
        model_digest: &str,
        upstream: &dyn Fn(&str) -> Option<BTreeMap<String, crate::cache::BlobRef>>,
    ) -> Result<KeyParts> {
        let tc = self
            .toolchain
            .as_ref()
            .ok_or_else(|| Error::toolchain("not installed"))?;
        let mut inputs = BTreeMap::new();
        inputs.insert("model".to_string(), model_digest.to_string());
        if step.spec.params.kind().spans_models() {
            for m in self.manifest.models.keys() {
                inputs.insert(format!("source:{m}"), self.source(Some(m))?.digest);
            }
        }
        for r in step.spec.params.kind().references() {
            let outs = upstream(&r)
                .ok_or_else(|| anyhow::anyhow!("outputs of `{r}` are not known yet"))?;
            for (name, blob) in outs {
                inputs.insert(format!("{r}/{name}"), blob.digest);
            }
        }
        for d in step.spec.params.kind().datasets() {
            inputs.insert(format!("dataset:{d}"), self.dataset_digest(&d)?.1);
        }
        if !step.spec.params.kind().datasets().is_empty() {
            inputs.insert(
                "facebuild:preprocess".into(),
                crate::preprocess::PREPARE_VERSION.to_string(),
            );
        }
        for f in step.spec.params.kind().extra_files() {
            let path = self.manifest.resolve(&f);
            if !path.is_file() {
                return Err(
                    Error::usage(format!("step `{}`: {path} does not exist", step.name)).with_hint(
                        format!("paths in params are relative to {}", self.manifest.dir),
                    ),
                );
            }
            inputs.insert(format!("file:{f}"), self.store.memo.blake3(&path)?.blake3);
        }
        // Files feeding the model's other inputs (a recognizer, a .npy) are read with the
        // datasets: they are inputs of the steps that read datasets.
        if !step.spec.params.kind().datasets().is_empty() {
            for f in self
                .manifest_for(step)
                .model
                .extra_inputs
                .iter()
                .filter_map(|i| match &i.feed {
                    crate::manifest::Feed::Npy(p) => Some(p),
                    crate::manifest::Feed::Embedding(e) => e.model.as_ref(),
                    crate::manifest::Feed::Image => None,
                })
            {
                let path = self.manifest.resolve(f);
                if !path.is_file() {
                    return Err(Error::usage(format!(
                        "step `{}`: {path}, which feeds a model input, does not exist",
                        step.name
                    ))
                    .with_hint(format!(
                        "paths in `model.inputs` are relative to {}",
                        self.manifest.dir
                    )));
                }
                inputs.insert(format!("file:{f}"), self.store.memo.blake3(&path)?.blake3);
                // An OpenVINO IR recognizer's weights are in the .bin beside its .xml.
                let bin = path.with_extension("bin");
                if path.extension() == Some("xml") && bin.is_file() {
                    inputs.insert(
                        format!("file:{f}.bin"),
                        self.store.memo.blake3(&bin)?.blake3,
                    );
                }
            }
            for i in &self.manifest_for(step).model.extra_inputs {
                if let crate::manifest::Feed::Embedding(e) = &i.feed
                    && let Some(b) = e.builtin.as_deref().and_then(BuiltinModel::from_name)
                {
                    inputs.insert(format!("builtin:{}", b.name()), b.digest().to_string());
                }
            }
        }
        // The manifest's model declaration is a param of every step: check compares
        // against it and simplify freezes it. Other inputs enter only when there are some,
        // so single-input pipelines keep their keys.
        let spec = &self.manifest_for(step).model;
        let mut model =
            json!({"task": spec.task, "input": spec.input, "preprocessing": spec.preprocessing});
        if !spec.extra_inputs.is_empty() {
            model["inputs"] = json!(spec.extra_inputs);
        }
        let mut params = json!({"step": step.spec.params, "model": model});
        if let Some(extra) = step
            .spec
            .params
            .kind()
            .key_extra(self.manifest_for(step), &step.name)
        {
            params["extra"] = extra;
        }
        // A step that reads every model of a pack (a chain) feeds each as declared: every
        // declaration is its param, so editing one model's feeding rebuilds it.
        if step.spec.params.kind().spans_models() {
            params["models"] = self.model_declarations();
        }
        let mut toolchain = tc.fingerprint(&step.spec.params.kind().toolchain_pieces());
        toolchain.extend(self.machine_parts(step)?);
        Ok(KeyParts {
            kind: step.spec.kind.to_string(),
            impl_version: step.spec.params.kind().impl_version(),
            params,
            inputs,
            toolchain,
        })
    }

    /// Every pack model's declaration, by name: what a step that spans models keys on.
    fn model_declarations(&self) -> serde_json::Value {
        self.manifest
            .models
            .iter()
            .map(|(name, (m, _))| {
                let decl = json!({"task": m.task, "input": m.input, "inputs": m.extra_inputs, "preprocessing": m.preprocessing, "detector": m.detector, "landmarks": m.landmarks});
                (name.clone(), decl)
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    /// The machine-specific parts of a step's key: TensorRT, CUDA and GPU for engines, the
    /// machine for benchmarks, the ISA class for inference. A step of a GPU class takes
    /// them from the class's declaration, so a machine without that GPU (a CI runner that
    /// sends the step to Slurm) computes the key the GPU node will; the node checks them
    /// against what it really is ([`BuildContext::check_class`]).
    pub(crate) fn machine_parts(&self, step: &Step) -> Result<BTreeMap<String, String>> {
        let placement = self.placement(step);
        let class = placement.class.as_ref();
        let mut parts = BTreeMap::new();
        let kind = step.spec.params.kind();
        // An engine is specific to its TensorRT version and GPU: all of it is in the key.
        if kind.uses_tensorrt() {
            match class.and_then(|(_, c)| c.tensorrt_fingerprint()) {
                Some(fp) => parts.extend(fp),
                None => {
                    let trt = self
                        .tensorrt()
                        .as_ref()
                        .map_err(|e| Error::toolchain(format!("TensorRT unavailable: {e}")))?;
                    parts.extend(trt.fingerprint());
                }
            }
        }
        // Measurements belong to the machine that made them.
        if kind.measures_machine() {
            let m = match class {
                Some((n, c)) => c.machine(n),
                None => steps::benchmark::machine_fingerprint(),
            };
            parts.insert("machine".into(), m);
        }
        // Inference results and NNCF statistics belong to the CPU's ISA class.
        if kind.isa_dependent() {
            let isa = class
                .and_then(|(_, c)| c.isa.clone())
                .unwrap_or_else(steps::benchmark::isa_class);
            parts.insert("isa".into(), isa);
        }
        Ok(parts)
    }

    /// Before a step of a GPU class runs here: this machine must be what the class declares,
    /// or its results would be cached under another machine's key.
    pub(crate) fn check_class(&self, step: &Step) -> Result<()> {
        let placement = self.placement(step);
        let Some((name, class)) = &placement.class else {
            return Ok(());
        };
        let kind = step.spec.params.kind();
        let mut actual = BTreeMap::new();
        let mut declared = BTreeMap::new();
        if kind.may_use_tensorrt()
            && let Some(fp) = class.tensorrt_fingerprint()
        {
            let trt = self.tensorrt().as_ref().map_err(|e| {
                Error::toolchain(format!(
                    "step `{}` is built for GPU class `{name}`, but TensorRT is unavailable on this machine: {e}",
                    step.name
                ))
            })?;
            declared.extend(fp);
            actual.extend(trt.fingerprint());
        }
        if let Some(isa) = &class.isa {
            declared.insert("isa".to_string(), isa.clone());
            actual.insert("isa".to_string(), steps::benchmark::isa_class());
        }
        let differ: Vec<String> = declared
            .iter()
            .filter(|(k, v)| actual.get(*k) != Some(*v))
            .map(|(k, v)| {
                format!(
                    "{k}: class says `{v}`, this machine has `{}`",
                    actual.get(k).map(String::as_str).unwrap_or("nothing")
                )
            })
            .collect();
        if differ.is_empty() {
            return Ok(());
        }
        Err(Error::toolchain(format!(
            "step `{}`: this machine ({}) is not GPU class `{name}`: {}",
            step.name,
            crate::util::hostname(),
            differ.join("; ")
        ))
        .with_hint(format!(
            "route the class to matching nodes (`constraint`/`partition` in `gpu_classes.{name}`), or correct the class's declared fingerprint"
        )))
    }

    /// Where a step's outputs are copied for people to read: `<output>/<step>/`.
    pub(crate) fn step_out_dir(&self, step: &str) -> Result<Utf8PathBuf> {
        crate::util::child_of(&self.manifest.output_dir, step)
    }

    /// Copy a step's outputs out of the store, unless the copy there is already identical
    /// (checked by the stat memo, so a no-op run reads nothing).
    pub(crate) fn materialize(
        &self,
        step: &str,
        outputs: &BTreeMap<String, crate::cache::BlobRef>,
    ) -> Result<()> {
        let dir = self.step_out_dir(step)?;
        std::fs::create_dir_all(&dir).fs_context(&dir)?;
        for (name, blob) in outputs {
            // Names were validated with their record; this keeps a bad one inside `dir` even so.
            let dest = crate::util::child_of(&dir, name)?;
            if dest.exists()
                && self
                    .store
                    .memo
                    .blake3(&dest)
                    .map(|d| d.blake3 == blob.digest)
                    .unwrap_or(false)
            {
                continue;
            }
            let src = self.store.blob_path(&blob.digest);
            // A temp name of its own: concurrent runs may materialize the same output.
            let tmp = tempfile::Builder::new()
                .prefix(&format!(".{name}."))
                .tempfile_in(&dir)
                .fs_context(&dir)?;
            std::fs::copy(&src, tmp.path()).fs_context(&src)?;
            // Store blobs are read-only; the user's copy is not.
            let mut perms = std::fs::metadata(tmp.path())
                .fs_context(&dest)?
                .permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            std::fs::set_permissions(tmp.path(), perms).fs_context(&dest)?;
            tmp.persist(&dest).map_err(|e| Error::io(&dest, e.error))?;
        }
        Ok(())
    }
}

/// The canvas of a derived set: declared, else its detector's input size.
fn derive_canvas(d: &crate::manifest::DeriveSpec, a: &crate::manifest::AlignSpec) -> [u32; 2] {
    d.canvas
        .or_else(|| a.preprocessing.as_ref().map(|p| p.size))
        .unwrap_or([640, 640])
}
