//! facebuild: a build system for face-model deployment pipelines.
//!
//! A YAML manifest (`manifest/`) describes a DAG (`graph/`) of steps (`steps/`, one module
//! per kind behind the [`steps::Kind`](crate) trait) that take an ONNX model to validated
//! artifacts. The scheduler (`scheduler/`) decides every step through one resolution path
//! (hit, miss and why, unavailable), runs misses in parallel where independent, and caches
//! every result by a blake3 action key (`cache/`) over its inputs, params and the versions of
//! the toolchain (`toolchain/`) it used. Models run through one runtime trait (`runtime/`);
//! `metrics/` and `report/` turn results into gates and readable output.
//!
//! The binary is [`main`]. The library's public surface is what integration tests, benches
//! and tools reading facebuild's files need: the typed reports each step writes, the run
//! report, the gate types, and the runtimes and preprocessing used to check results
//! independently. Everything else is private to the crate.

#![warn(missing_docs)]

// The lower layers, each a crate under crates/: named here as they were as modules, so the
// upper layers read `crate::cache::...` as before.
use facebuild_base::{domain, error, progress, util};
use facebuild_cache as cache;
use facebuild_detect as detect;
use facebuild_metrics as metrics;
use facebuild_onnx as onnx;
use facebuild_preprocess as preprocess;
use facebuild_runtime as runtime;
use facebuild_signing as signing;
use facebuild_toolchain as toolchain;

mod commands;
mod context;
mod executor;
mod graph;
mod manifest;
mod report;
mod scheduler;
mod settings;
mod steps;

pub use cache::remote::RemoteReport;
pub use commands::main;
pub use detect::{Detection, decode, iou, match_detections};
pub use error::{Error, Location, Result};
pub use graph::plan::{Decision, Plan, StepPlan};
pub use manifest::{
    ColorOrder, DetectorFamily, DetectorSpec, ExecutorKind, GpuClass, Layout, Preprocessing, RanOn,
    RunsOn,
};
pub use metrics::gate::{GateResult, Gates, Measurement};
/// Bootstrap intervals, the LFW protocol and the coverage simulation, for benches and
/// independent checks.
pub mod uncertainty {
    pub use crate::metrics::lfw::{LfwFigures, lfw_protocol, squared_distances};
    pub use crate::metrics::uncertainty::{
        Bootstrap, PairIntervals, PairedScores, Spread, mcnemar_exact, simulation,
    };
}
pub use preprocess::{decode_image, letterbox, to_tensor};
/// Face crops as InsightFace's `face_align` makes them, for independent checks.
pub mod face_align {
    pub use crate::preprocess::align::{
        Affine, arcface_transform, arcface128_transform, box_transform, warp,
    };
}
/// Head pose from 3D-68 points as InsightFace estimates it, for independent checks.
pub mod face_pose {
    pub use crate::metrics::landmarks::rotation_between;
}
pub use runtime::onnxruntime::OnnxRuntime;
pub use runtime::openvino::{OpenVino, OpenVinoSettings};
pub use runtime::tensorrt::TensorRtRuntime;
pub use runtime::{BenchMeasurement, ExecutionInfo, LoadedModel, NamedTensor, Runtime};
pub use scheduler::{Origin, OutputInfo, RunReport, Status, StepResult};
pub use settings::Materialize;
pub use steps::benchmark::BenchmarkReport;
pub use steps::chain::{
    ChainAttributes, ChainCombination, ChainFigures, ChainLandmarks, ChainReport, ChainVerification,
};
pub use steps::check::CheckReport;
pub use steps::compare::{
    AttributeFigures, CandidateReport, CompareReport, LandmarkFigures, LandmarkSetup,
    OutputComparison, SwapperFigures, SwapperSetup,
};
pub use steps::release::{ReleaseEntry, ReleaseReport};
pub use steps::simplify::SimplifyReport;
pub use toolchain::{Pins, Place as ToolchainPlace, Toolchain};
