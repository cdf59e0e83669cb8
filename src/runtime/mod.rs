//! Runtimes behind one trait: load an artifact, run named f32 tensors, and say exactly what
//! executed (runtime, version, device, threads, precision) — that is part of every result.
//! ONNX Runtime is here; OpenVINO and TensorRT plug in behind the same trait.

pub(crate) mod bench;
mod bench_result;
pub(crate) mod onnxruntime;
pub(crate) mod openvino;
pub(crate) mod tensorrt;

pub use bench_result::BenchMeasurement;
pub(crate) use bench_result::{
    BenchExecution, BenchmarkApp, ColdStart, ThroughputPoint, TrtTimings,
};

use camino::Utf8Path;

use ndarray::ArrayD;
use serde::Serialize;

use crate::error::Result;

/// The settings that change numbers, recorded with every result.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ExecutionInfo {
    pub runtime: String,
    pub version: String,
    pub device: String,
    pub threads: usize,
    /// The precision the runtime actually computed in (e.g. "f32", "bf16").
    pub precision: String,
    /// Other settings that can change numbers (graph optimization level, hints...).
    pub settings: std::collections::BTreeMap<String, String>,
}

pub type NamedTensor = (String, ArrayD<f32>);

pub trait Runtime: Send + Sync {
    fn name(&self) -> &'static str;
    fn load(&self, artifact: &Utf8Path) -> Result<Box<dyn LoadedModel>>;
}

pub trait LoadedModel: Send {
    /// Input names with their shapes as the runtime sees them (-1 for dynamic dims).
    fn inputs(&self) -> Vec<(String, Vec<i64>)>;
    fn outputs(&self) -> Vec<String>;
    fn run(&mut self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>>;
    fn execution(&self) -> ExecutionInfo;
}
