//! ONNX Runtime in-process through `ort`, with `libonnxruntime.so` loaded at run time from the
//! toolchain's onnxruntime wheel (no download at build time, and the version that runs is
//! exactly the pinned one).

use std::sync::OnceLock;

use camino::{Utf8Path, Utf8PathBuf};
use ndarray::ArrayD;
use ort::session::{Session, builder::GraphOptimizationLevel};
use ort::value::{PrimitiveTensorElementType, Tensor, TensorElementType, ValueType};

use crate::elem::{self, Elem, FromF32};

use super::{ExecutionInfo, LoadedModel, NamedTensor, Runtime};
use crate::error::{Error, Result};
use crate::toolchain::Toolchain;

/// ort's library is process-global: the first toolchain to initialize it wins, and a
/// different library later is an error rather than a silent mix.
static ENV: OnceLock<std::result::Result<(Utf8PathBuf, ort::environment::Environment), String>> =
    OnceLock::new();

/// ONNX Runtime, loaded from the toolchain's wheel (`load-dynamic`).
pub struct OnnxRuntime {
    version: String,
    threads: usize,
    graph_optimizations: bool,
}

impl OnnxRuntime {
    /// ONNX Runtime from `toolchain`, with `threads` intra-op threads (default: all cores).
    pub fn new(toolchain: &Toolchain, threads: Option<usize>) -> Result<OnnxRuntime> {
        let lib = toolchain.info.onnxruntime_library.clone().ok_or_else(|| {
            Error::toolchain("the toolchain has no libonnxruntime.so")
                .with_hint("reinstall it with `facebuild toolchain install --force`")
        })?;
        let entry = ENV.get_or_init(|| {
            let env = ort::init_from(lib.as_std_path())
                .map_err(|e| format!("loading {lib}: {e}"))?
                .with_name("facebuild")
                .with_telemetry(false)
                .build()
                .map_err(|e| format!("creating the ONNX Runtime environment from {lib}: {e}"))?;
            Ok((lib.clone(), env))
        });
        match entry {
            Ok((loaded, _)) if *loaded != lib => {
                return Err(Error::toolchain(format!(
                    "ONNX Runtime was already loaded from {loaded}; cannot also load {lib} in one process"
                )));
            }
            Err(e) => {
                return Err(Error::toolchain(e.clone()).with_hint(
                    "reinstall the toolchain with `facebuild toolchain install --force`",
                ));
            }
            _ => {}
        }
        let threads = threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        Ok(OnnxRuntime {
            version: toolchain
                .version("onnxruntime")
                .unwrap_or("unknown")
                .to_string(),
            threads,
            graph_optimizations: true,
        })
    }

    /// Run graphs exactly as written: equivalence checks use this so that ORT's own
    /// fusions, applied alike to both graphs, cannot hide what a rewrite changed.
    pub fn without_graph_optimizations(mut self) -> Self {
        self.graph_optimizations = false;
        self
    }

    fn env() -> &'static ort::environment::Environment {
        &ENV.get()
            .and_then(|r| r.as_ref().ok())
            .expect("OnnxRuntime::new initializes the environment")
            .1
    }
}

impl Runtime for OnnxRuntime {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    fn load(&self, artifact: &Utf8Path) -> Result<Box<dyn LoadedModel>> {
        let fail = |e: ort::Error| Error::Model {
            path: artifact.to_owned(),
            message: format!("ONNX Runtime cannot load it: {e}"),
            hint: None,
        };
        let session = Session::builder(Self::env())
            .map_err(fail)?
            .with_intra_threads(self.threads)
            .map_err(|e| fail(e.into()))?
            .with_optimization_level(if self.graph_optimizations {
                GraphOptimizationLevel::All
            } else {
                GraphOptimizationLevel::Disable
            })
            .map_err(|e| fail(e.into()))?
            .commit_from_file(artifact.as_std_path())
            .map_err(fail)?;
        Ok(Box::new(OrtModel {
            session,
            info: ExecutionInfo {
                runtime: "onnxruntime".into(),
                version: self.version.clone(),
                device: "CPU".into(),
                threads: self.threads,
                precision: "f32".into(),
                settings: [(
                    "graph_optimization_level".to_string(),
                    if self.graph_optimizations {
                        "all"
                    } else {
                        "disabled"
                    }
                    .to_string(),
                )]
                .into(),
            },
        }))
    }
}

struct OrtModel {
    session: Session,
    info: ExecutionInfo,
}

fn shape_of(t: &ValueType) -> Vec<i64> {
    match t {
        ValueType::Tensor { shape, .. } => shape.iter().copied().collect(),
        _ => vec![],
    }
}

impl LoadedModel for OrtModel {
    fn inputs(&self) -> Vec<(String, Vec<i64>)> {
        self.session
            .inputs()
            .iter()
            .map(|o| (o.name().to_string(), shape_of(o.dtype())))
            .collect()
    }

    fn outputs(&self) -> Vec<String> {
        self.session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect()
    }

    fn run(&mut self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>> {
        let mut feed = Vec::with_capacity(inputs.len());
        for (name, arr) in inputs {
            let ty = self
                .session
                .inputs()
                .iter()
                .find(|i| i.name() == name)
                .and_then(|i| i.dtype().tensor_type());
            feed.push((name.clone(), feed_value(name, arr, ty)?));
        }
        let names = self.outputs();
        let out = self
            .session
            .run(feed)
            .map_err(|e| anyhow::anyhow!("ONNX Runtime inference failed: {e}"))?;
        let mut res = Vec::with_capacity(names.len());
        for name in names {
            let v = read_value(&out[name.as_str()])
                .map_err(|e| anyhow::anyhow!("output `{name}`: {e}"))?;
            res.push((name, v));
        }
        Ok(res)
    }

    fn execution(&self) -> ExecutionInfo {
        self.info.clone()
    }
}

/// `arr` as a tensor of the type the model's input takes (f32 where it is not a tensor).
fn feed_value(
    name: &str,
    arr: &ArrayD<f32>,
    ty: Option<TensorElementType>,
) -> Result<ort::value::DynValue> {
    fn tensor<T: FromF32 + PrimitiveTensorElementType + std::fmt::Debug + 'static>(
        arr: &ArrayD<f32>,
    ) -> ort::Result<ort::value::DynValue> {
        Ok(Tensor::from_array(elem::cast::<T>(arr))?.into_dyn())
    }
    let elem = match ty {
        None => Elem::F32,
        Some(t) => Elem::from_ort(t).ok_or_else(|| {
            anyhow::anyhow!("input `{name}` is {t:?}, which facebuild cannot feed")
        })?,
    };
    let v = elem::with_type!(elem, T => tensor::<T>(arr));
    Ok(v.map_err(|e| anyhow::anyhow!("input `{name}`: {e}"))?)
}

/// An output of any numeric type, as f32.
fn read_value(v: &ort::value::DynValue) -> std::result::Result<ArrayD<f32>, String> {
    fn read<T: FromF32 + PrimitiveTensorElementType>(
        v: &ort::value::DynValue,
    ) -> std::result::Result<ArrayD<f32>, String> {
        v.try_extract_array::<T>()
            .map(|a| a.mapv(T::to_f32))
            .map_err(|e| e.to_string())
    }
    let ty = v
        .dtype()
        .tensor_type()
        .ok_or_else(|| format!("is a {:?}, not a tensor", v.dtype()))?;
    let elem =
        Elem::from_ort(ty).ok_or_else(|| format!("is {ty:?}, which facebuild cannot read"))?;
    elem::with_type!(elem, T => read::<T>(v))
}
