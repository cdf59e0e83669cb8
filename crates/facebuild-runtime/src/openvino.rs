//! OpenVINO in-process through the `openvino` crate, with `libopenvino_c.so` loaded at run time
//! from the toolchain's openvino wheel. The CPU plugin's precision is a setting that changes
//! numbers (on AMX CPUs it executes bf16 unless told otherwise), so it is set explicitly and
//! the precision the compiled model reports is what every result records.

use std::sync::Mutex;

use camino::Utf8Path;
use ndarray::{ArrayD, IxDyn};
use openvino::{
    Core, DeviceType, ElementType, PartialShape, PropertyKey, RwPropertyKey, Shape, Tensor,
};

use super::{ExecutionInfo, LoadedModel, NamedTensor, Runtime};
use crate::elem::{self, Elem, FromF32};
use crate::error::{Error, Result};
use crate::toolchain::Toolchain;

/// One process loads one libopenvino_c; remember which.
static LOADED: Mutex<Option<String>> = Mutex::new(None);

/// How OpenVINO compiles a model.
#[derive(Debug, Clone)]
pub struct OpenVinoSettings {
    /// The device, e.g. `CPU`.
    pub device: String,
    /// INFERENCE_PRECISION_HINT: "f32", "bf16", "f16"; None leaves the plugin's default.
    pub precision_hint: Option<String>,
    /// INFERENCE_NUM_THREADS (default: the plugin's).
    pub threads: Option<usize>,
}

impl Default for OpenVinoSettings {
    fn default() -> Self {
        // f32 is the default for accuracy gates: a gate measures the conversion, not the
        // plugin's choice of bf16 on this CPU.
        OpenVinoSettings {
            device: "CPU".into(),
            precision_hint: Some("f32".into()),
            threads: None,
        }
    }
}

/// OpenVINO, loaded from the toolchain's wheel (`runtime-linking`).
pub struct OpenVino {
    version: String,
    settings: OpenVinoSettings,
    /// Batch size for models whose batch dim is dynamic (set before compiling).
    batch: Option<i64>,
}

impl OpenVino {
    /// OpenVINO from `toolchain`, compiling with `settings`.
    pub fn new(toolchain: &Toolchain, settings: OpenVinoSettings) -> Result<OpenVino> {
        let lib = toolchain.info.openvino_c_library.clone().ok_or_else(|| {
            Error::toolchain("the toolchain has no libopenvino_c.so")
                .with_hint("reinstall it with `facebuild toolchain install --force`")
        })?;
        let mut loaded = LOADED.lock().unwrap();
        match loaded.as_deref() {
            Some(l) if l != lib.as_str() => {
                return Err(Error::toolchain(format!(
                    "OpenVINO was already loaded from {l}; cannot also load {lib} in one process"
                )));
            }
            Some(_) => {}
            None => {
                openvino_sys::library::load_from(lib.as_std_path()).map_err(|e| {
                    Error::toolchain(format!("loading {lib}: {e}")).with_hint(
                        "reinstall the toolchain with `facebuild toolchain install --force`",
                    )
                })?;
                *loaded = Some(lib.to_string());
            }
        }
        Ok(OpenVino {
            version: toolchain
                .version("openvino")
                .unwrap_or("unknown")
                .to_string(),
            settings,
            batch: None,
        })
    }

    /// Reshape dynamic batch dims to `batch` before compiling (OpenVINO compiles a static batch).
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = Some(batch as i64);
        self
    }
}

fn ov_err(what: &str) -> impl Fn(openvino::InferenceError) -> Error + '_ {
    move |e| anyhow::anyhow!("OpenVINO {what}: {e}").into()
}

impl Runtime for OpenVino {
    fn name(&self) -> &'static str {
        "openvino"
    }

    /// `artifact` is the IR's .xml; its weights are the .bin beside it, or `<xml>.bin` when
    /// the store keeps them under their digests (see `load_ir`).
    fn load(&self, artifact: &Utf8Path) -> Result<Box<dyn LoadedModel>> {
        self.load_ir(artifact, &artifact.with_extension("bin"))
    }
}

impl OpenVino {
    /// A core configured with these settings (and a PERFORMANCE_HINT, if given), and the IR.
    fn core_and_model(
        &self,
        xml: &Utf8Path,
        bin: &Utf8Path,
        performance_hint: Option<&str>,
    ) -> Result<(Core, openvino::Model, DeviceType<'static>)> {
        let mut core = Core::new()
            .map_err(|e| Error::toolchain(format!("creating the OpenVINO core: {e}")))?;
        let device = DeviceType::from(self.settings.device.as_str()).to_owned();
        if let Some(h) = performance_hint {
            core.set_property(&device, &RwPropertyKey::HintPerformanceMode, h)
                .map_err(ov_err("setting PERFORMANCE_HINT"))?;
        }
        if let Some(p) = &self.settings.precision_hint {
            core.set_property(&device, &RwPropertyKey::HintInferencePrecision, p)
                .map_err(ov_err("setting INFERENCE_PRECISION_HINT"))?;
        }
        if let Some(t) = self.settings.threads {
            core.set_property(&device, &RwPropertyKey::InferenceNumThreads, &t.to_string())
                .map_err(ov_err("setting INFERENCE_NUM_THREADS"))?;
        }
        let model = core
            .read_model_from_file(xml.as_str(), bin.as_str())
            .map_err(|e| Error::Model {
                path: xml.to_owned(),
                message: format!("OpenVINO cannot read this IR: {e}"),
                hint: None,
            })?;
        Ok((core, model, device))
    }

    /// Load an IR from its `model.xml` and `model.bin` (store blobs have no matching names).
    pub fn load_ir(&self, xml: &Utf8Path, bin: &Utf8Path) -> Result<Box<dyn LoadedModel>> {
        let (mut core, mut model, device) = self.core_and_model(xml, bin, None)?;
        if let Some(b) = self.batch {
            batch_inputs(&mut model, b)?;
        }
        let (input_name, input_shape) = input_shapes(&model)?
            .into_iter()
            .next()
            .map(|(n, d)| (n, d.unwrap_or_default()))
            .ok_or_else(|| anyhow::anyhow!("the IR {xml} has no input"))?;
        let mut input_types = std::collections::BTreeMap::new();
        for i in 0..model.get_inputs_len().map_err(ov_err("counting inputs"))? {
            let node = model
                .get_input_by_index(i)
                .map_err(ov_err("reading inputs"))?;
            let (name, ty) = (
                node.get_name().map_err(ov_err("reading input names"))?,
                node.get_element_type()
                    .map_err(ov_err("reading input types"))?,
            );
            let elem = Elem::from_openvino(ty).ok_or_else(|| Error::Model {
                path: xml.to_owned(),
                message: format!("input `{name}` is {ty:?}, which facebuild cannot feed"),
                hint: None,
            })?;
            input_types.insert(name, elem);
        }
        let mut outputs = Vec::new();
        for i in 0..model
            .get_outputs_len()
            .map_err(ov_err("counting outputs"))?
        {
            outputs.push(
                model
                    .get_output_by_index(i)
                    .and_then(|n| n.get_name())
                    .map_err(ov_err("reading output names"))?,
            );
        }
        let mut compiled = core
            .compile_model(&model, device)
            .map_err(ov_err("compiling the model"))?;
        let precision = compiled
            .get_property(&PropertyKey::Rw(RwPropertyKey::HintInferencePrecision))
            .map(|c| c.to_string())
            .unwrap_or_else(|_| "unknown".into());
        let threads = compiled
            .get_property(&PropertyKey::Rw(RwPropertyKey::InferenceNumThreads))
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let request = compiled
            .create_infer_request()
            .map_err(ov_err("creating an infer request"))?;
        let mut settings = std::collections::BTreeMap::new();
        settings.insert(
            "precision_hint".to_string(),
            self.settings
                .precision_hint
                .clone()
                .unwrap_or_else(|| "plugin default".into()),
        );
        Ok(Box::new(OvModel {
            _compiled: compiled,
            request,
            input_name,
            input_shape,
            input_types,
            outputs,
            info: ExecutionInfo {
                runtime: "openvino".into(),
                version: self.version.clone(),
                device: self.settings.device.clone(),
                threads,
                precision,
                settings,
            },
        }))
    }
}

/// Every input's name and dims (-1 where dynamic; None for a dynamic rank), in order.
fn input_shapes(model: &openvino::Model) -> Result<Vec<(String, Option<Vec<i64>>)>> {
    let n = model
        .get_inputs_len()
        .map_err(ov_err("counting the model's inputs"))?;
    (0..n)
        .map(|i| {
            let input = model
                .get_input_by_index(i)
                .map_err(ov_err("reading the model's input"))?;
            let name = input.get_name().map_err(ov_err("reading the input name"))?;
            let ps = input
                .get_partial_shape()
                .map_err(ov_err("reading the input shape"))?;
            let dims = (!ps.get_rank().is_dynamic()).then(|| {
                ps.get_dimensions()
                    .iter()
                    .map(|d| if d.is_dynamic() { -1 } else { d.get_min() })
                    .collect()
            });
            Ok((name, dims))
        })
        .collect()
}

/// Reshape every input at once to static `shapes` (a model with several inputs cannot be
/// reshaped one input at a time).
fn reshape_all(
    model: &mut openvino::Model,
    shapes: &[(String, Vec<i64>)],
) -> std::result::Result<(), openvino::InferenceError> {
    let ps: Vec<PartialShape> = shapes
        .iter()
        .map(|(_, d)| PartialShape::new_static(d.len() as i64, d))
        .collect::<std::result::Result<_, _>>()?;
    let pairs: Vec<(&str, &PartialShape)> = shapes
        .iter()
        .zip(&ps)
        .map(|((n, _), p)| (n.as_str(), p))
        .collect();
    model.reshape(&pairs)
}

/// Set every input's dynamic batch dim to `b`.
fn batch_inputs(model: &mut openvino::Model, b: i64) -> Result<()> {
    let mut shapes = Vec::new();
    let mut changed = false;
    for (name, dims) in input_shapes(model)? {
        // A dynamic rank cannot be reshaped by batch; leave such models alone.
        let Some(mut dims) = dims else {
            return Ok(());
        };
        // Only a dynamic batch dim is set: a static one may be baked into the graph
        // (e.g. a Reshape to [1, -1]), and reshaping it would silently mix images.
        if dims.is_empty() || dims[1..].iter().any(|&d| d <= 0) {
            return Ok(());
        }
        if dims[0] < 0 {
            dims[0] = b;
            changed = true;
        }
        shapes.push((name, dims));
    }
    if !changed {
        return Ok(());
    }
    reshape_all(model, &shapes).map_err(ov_err("reshaping to the batch size"))
}

struct OvModel {
    _compiled: openvino::CompiledModel,
    request: openvino::InferRequest,
    input_name: String,
    input_shape: Vec<i64>,
    /// Each input's element type: facebuild's f32 tensors are converted to it.
    input_types: std::collections::BTreeMap<String, Elem>,
    outputs: Vec<String>,
    info: ExecutionInfo,
}

// SAFETY: an OvModel is used by one thread at a time (it moves into a step's worker);
// OpenVINO's compiled models and infer requests may be used from any thread.
unsafe impl Send for OvModel {}

impl LoadedModel for OvModel {
    fn inputs(&self) -> Vec<(String, Vec<i64>)> {
        vec![(self.input_name.clone(), self.input_shape.clone())]
    }

    fn outputs(&self) -> Vec<String> {
        self.outputs.clone()
    }

    fn run(&mut self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>> {
        for (name, arr) in inputs {
            let n = if name.is_empty() {
                self.input_name.as_str()
            } else {
                name.as_str()
            };
            let elem = self.input_types.get(n).copied().unwrap_or(Elem::F32);
            let dims: Vec<i64> = arr.shape().iter().map(|&d| d as i64).collect();
            let mut t = Tensor::new(
                elem.to_openvino(),
                &Shape::new(&dims).map_err(ov_err("shape"))?,
            )
            .map_err(ov_err("allocating a tensor"))?;
            fill(&mut t, elem, arr)?;
            self.request
                .set_tensor(n, &t)
                .map_err(ov_err("setting the input"))?;
        }
        self.request.infer().map_err(ov_err("inference"))?;
        let mut out = Vec::with_capacity(self.outputs.len());
        for (i, name) in self.outputs.iter().enumerate() {
            let t = self
                .request
                .get_output_tensor_by_index(i)
                .map_err(ov_err("reading an output"))?;
            let shape: Vec<usize> = t
                .get_shape()
                .map_err(ov_err("output shape"))?
                .get_dimensions()
                .iter()
                .map(|&d| d as usize)
                .collect();
            let data = read_tensor(&t)?;
            out.push((
                name.clone(),
                ArrayD::from_shape_vec(IxDyn(&shape), data).map_err(anyhow::Error::from)?,
            ));
        }
        Ok(out)
    }

    fn execution(&self) -> ExecutionInfo {
        self.info.clone()
    }
}

/// A model compiled for benchmarking: a performance hint, a fixed input shape, and as many
/// infer requests as the plugin finds optimal (OPTIMAL_NUMBER_OF_INFER_REQUESTS).
pub struct OvBench {
    compiled: openvino::CompiledModel,
    /// Every input fed, by name, at its shape.
    inputs: Vec<(String, Vec<i64>)>,
    pub read_ms: f64,
    pub compile_ms: f64,
    pub requests: usize,
    pub precision: String,
    pub streams: String,
}

// SAFETY: as for OvModel; a benchmark uses it from one thread.
unsafe impl Send for OvBench {}

impl OpenVino {
    /// Read and compile the IR with PERFORMANCE_HINT `hint` ("LATENCY" or "THROUGHPUT") at
    /// input `shape` (reshaping the model when it differs; an error if the graph forbids it).
    pub fn compile_for_bench(
        &self,
        xml: &Utf8Path,
        bin: &Utf8Path,
        hint: &str,
        shapes: &[(String, Vec<i64>)],
    ) -> Result<OvBench> {
        let t0 = std::time::Instant::now();
        let (mut core, mut model, device) = self.core_and_model(xml, bin, Some(hint))?;
        let mut inputs = Vec::new();
        let mut current = Vec::new();
        for (i, (name, dims)) in input_shapes(&model)?.into_iter().enumerate() {
            let dims = dims.unwrap_or_default();
            // The first input is the image input's when the IR names it otherwise (an
            // IR from another tool); the rest are fed by name.
            let want = shapes
                .iter()
                .find(|(s, _)| *s == name)
                .or_else(|| (i == 0).then(|| &shapes[0]))
                .map(|(_, s)| s.clone())
                .ok_or_else(|| {
                    anyhow::anyhow!("the IR's input `{name}` is not among the inputs fed")
                })?;
            current.push(dims);
            inputs.push((name, want));
        }
        if inputs.iter().zip(&current).any(|((_, w), c)| w != c) {
            let wanted: Vec<&Vec<i64>> = inputs.iter().map(|(_, s)| s).collect();
            reshape_all(&mut model, &inputs).map_err(|e| {
                anyhow::anyhow!(
                    "this IR cannot run at input shape(s) {wanted:?} (its graph fixes {current:?}): {e}"
                )
            })?;
        }
        let read_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = std::time::Instant::now();
        let mut compiled = core
            .compile_model(&model, device)
            .map_err(ov_err("compiling the model"))?;
        let compile_ms = t1.elapsed().as_secs_f64() * 1e3;
        let get = |c: &mut openvino::CompiledModel, k: PropertyKey| {
            c.get_property(&k)
                .map(|v| v.to_string())
                .unwrap_or_default()
        };
        let requests = get(&mut compiled, PropertyKey::OptimalNumberOfInferRequests)
            .parse()
            .unwrap_or(1usize)
            .max(1);
        let precision = get(
            &mut compiled,
            PropertyKey::Rw(RwPropertyKey::HintInferencePrecision),
        );
        let streams = get(&mut compiled, PropertyKey::Rw(RwPropertyKey::NumStreams));
        Ok(OvBench {
            compiled,
            inputs,
            read_ms,
            compile_ms,
            requests,
            precision,
            streams,
        })
    }
}

impl OvBench {
    /// Keep `requests` infer requests in flight (async) until `iterations` inferences have
    /// finished or `budget` has passed (whichever first, after at least one each). Returns
    /// the wall time and each inference's latency (start to completion), in ms.
    pub fn run(
        &mut self,
        requests: usize,
        iterations: usize,
        budget: Option<std::time::Duration>,
    ) -> Result<(f64, Vec<f64>)> {
        let mut rng = crate::util::SplitMix64::new(1);
        let mut reqs = Vec::with_capacity(requests);
        for _ in 0..requests.max(1) {
            let mut r = self
                .compiled
                .create_infer_request()
                .map_err(ov_err("creating an infer request"))?;
            let mut tensors = Vec::with_capacity(self.inputs.len());
            for (name, dims) in &self.inputs {
                let shape = Shape::new(dims).map_err(ov_err("shape"))?;
                let mut t =
                    Tensor::new(ElementType::F32, &shape).map_err(ov_err("allocating a tensor"))?;
                for v in t.get_data_mut::<f32>().map_err(ov_err("tensor data"))? {
                    *v = rng.unit();
                }
                r.set_tensor(name, &t)
                    .map_err(ov_err("setting the input"))?;
                tensors.push(t);
            }
            reqs.push((r, tensors, std::time::Instant::now()));
        }
        let start = std::time::Instant::now();
        let mut lat = Vec::with_capacity(iterations);
        let mut started = 0usize;
        let mut busy = vec![false; reqs.len()];
        for (k, (r, _, t0)) in reqs.iter_mut().enumerate() {
            if started < iterations.max(1) {
                *t0 = std::time::Instant::now();
                r.infer_async().map_err(ov_err("starting inference"))?;
                busy[k] = true;
                started += 1;
            }
        }
        // Requests finish in about the order they started: wait on them round-robin.
        let mut k = 0usize;
        while busy.iter().any(|b| *b) {
            if busy[k] {
                let (r, _, t0) = &mut reqs[k];
                r.wait(600_000).map_err(ov_err("waiting for inference"))?;
                lat.push(t0.elapsed().as_secs_f64() * 1e3);
                let over = budget.is_some_and(|b| start.elapsed() >= b);
                if started < iterations && !over {
                    *t0 = std::time::Instant::now();
                    r.infer_async().map_err(ov_err("starting inference"))?;
                    started += 1;
                } else {
                    busy[k] = false;
                }
            }
            k = (k + 1) % reqs.len();
        }
        Ok((start.elapsed().as_secs_f64() * 1e3, lat))
    }
}

/// Writes `arr` into `t`, converted to `elem`, the tensor's element type.
fn fill(t: &mut Tensor, elem: Elem, arr: &ArrayD<f32>) -> Result<()> {
    fn write<T: FromF32>(t: &mut Tensor, arr: &ArrayD<f32>) -> Result<()> {
        let dst = t.get_data_mut::<T>().map_err(ov_err("tensor data"))?;
        elem::write_into(dst, arr);
        Ok(())
    }
    elem::with_type!(elem, T => write::<T>(t, arr))
}

/// An output tensor of any numeric type, as f32.
fn read_tensor(t: &Tensor) -> Result<Vec<f32>> {
    fn read<T: FromF32>(t: &Tensor) -> Result<Vec<f32>> {
        Ok(elem::read_from(
            t.get_data::<T>().map_err(ov_err("output data"))?,
        ))
    }
    let ty = t.get_element_type().map_err(ov_err("output type"))?;
    let elem = Elem::from_openvino(ty)
        .ok_or_else(|| anyhow::anyhow!("an output is {ty:?}, which facebuild cannot read"))?;
    elem::with_type!(elem, T => read::<T>(t))
}
