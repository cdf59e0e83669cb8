//! Runtimes behind one trait: load an artifact, run named f32 tensors, and say exactly what
//! executed (runtime, version, device, threads, precision) — that is part of every result.
//! ONNX Runtime is here; OpenVINO and TensorRT plug in behind the same trait.

use facebuild_base::{domain, error, util};
use facebuild_toolchain as toolchain;

pub mod bench;
mod bench_result;
pub mod elem;
pub mod onnxruntime;
pub mod openvino;
pub mod tensorrt;

pub use bench_result::BenchMeasurement;
pub use bench_result::{
    BenchExecution, BenchmarkApp, ColdStart, MachineState, Reliability, ThroughputPoint, TrtTimings,
};

use camino::Utf8Path;

use ndarray::ArrayD;
use serde::Serialize;

use crate::error::Result;

/// The settings that change numbers, recorded with every result.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ExecutionInfo {
    /// `onnxruntime`, `openvino` or `tensorrt`.
    pub runtime: String,
    /// The runtime's version.
    pub version: String,
    /// The device it ran on (e.g. `CPU`).
    pub device: String,
    /// Inference threads.
    pub threads: usize,
    /// The precision the runtime actually computed in (e.g. "f32", "bf16").
    pub precision: String,
    /// Other settings that can change numbers (graph optimization level, hints...).
    pub settings: std::collections::BTreeMap<String, String>,
}

/// A tensor with its input or output name.
pub type NamedTensor = (String, ArrayD<f32>);

/// An inference runtime that loads artifacts.
pub trait Runtime: Send + Sync {
    /// The runtime's name, as reports record it.
    fn name(&self) -> &'static str;
    /// Load an artifact (ONNX, IR, engine) ready to run.
    fn load(&self, artifact: &Utf8Path) -> Result<Box<dyn LoadedModel>>;
}

/// A model loaded in a runtime.
pub trait LoadedModel: Send {
    /// Input names with their shapes as the runtime sees them (-1 for dynamic dims).
    fn inputs(&self) -> Vec<(String, Vec<i64>)>;
    /// Output names, in the model's order.
    fn outputs(&self) -> Vec<String>;
    /// Run one inference; outputs in the model's order.
    fn run(&mut self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>>;
    /// What actually executes: runtime, device, threads, precision, settings.
    fn execution(&self) -> ExecutionInfo;
}
