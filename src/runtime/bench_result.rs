//! What one benchmark measurement reports, in the schema every runtime shares: written by
//! the `bench-target` child (ONNX Runtime, OpenVINO) or parsed from trtexec, carried inside
//! `benchmark`'s report, read by `release` and the run report.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::metrics::LatencyMs;

/// One artifact measured in one runtime configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchMeasurement {
    /// What ran, and with which settings.
    pub execution: BenchExecution,
    /// Process-level cold start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start: Option<ColdStart>,
    /// Batch-1 latency (null for a TensorRT engine measured at another batch only).
    pub latency_batch1_ms: Option<LatencyMs>,
    /// How many batch-1 inferences the latency figures summarise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_samples: Option<usize>,
    /// Every batch-1 latency, for the run report's histogram (rounded to 0.1 µs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_batch1_samples_ms: Option<Vec<f64>>,
    /// Throughput per batch size.
    pub throughput: Vec<ThroughputPoint>,
    /// trtexec's own timings (TensorRT engines only).
    #[serde(flatten)]
    pub tensorrt: Option<TrtTimings>,
    /// Peak resident memory of the measuring process (VmHWM), MiB.
    pub peak_rss_mib: Option<f64>,
    /// Spawn to exit of the measuring process, as the parent saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_wall_ms: Option<f64>,
    /// OpenVINO's benchmark_app on the same IR, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<BenchmarkApp>,
}

impl BenchMeasurement {
    /// Throughput at batch 1, images/s.
    pub fn batch1(&self) -> Option<&ThroughputPoint> {
        self.throughput.iter().find(|t| t.batch == 1)
    }

    /// The best throughput over batch sizes, images/s.
    pub fn best_throughput(&self) -> Option<f64> {
        self.throughput
            .iter()
            .filter_map(|t| t.images_per_s)
            .reduce(f64::max)
    }
}

/// How the runtime ran: what actually executed, with the settings that change figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchExecution {
    pub runtime: String,
    pub version: String,
    pub device: String,
    /// The precision the runtime computed in (`f32`, `bf16`; `as built` for engines).
    pub precision: String,
    pub threads: Option<usize>,
    /// OpenVINO PERFORMANCE_HINT.
    pub hint: Option<String>,
    pub requests: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams: Option<String>,
    pub settings: BTreeMap<String, String>,
}

/// Process-level cold start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColdStart {
    pub spawn_to_first_output_ms: f64,
    pub load_ms: Option<f64>,
    pub compile_ms: Option<f64>,
    pub first_inference_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Throughput at one batch size, or why that size could not run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ThroughputPoint {
    pub batch: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_in_flight: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inferences: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<LatencyMs>,
    /// A static batch dim that refuses this size: the runtime's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsupported: Option<String>,
}

impl ThroughputPoint {
    /// A batch size the artifact cannot take.
    pub fn unsupported(batch: usize, why: &str) -> ThroughputPoint {
        ThroughputPoint {
            batch,
            unsupported: Some(why.lines().next().unwrap_or_default().to_string()),
            ..Default::default()
        }
    }
}

/// trtexec's timing breakdown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrtTimings {
    pub gpu_compute_ms: LatencyMs,
    pub h2d_ms: LatencyMs,
    pub d2h_ms: LatencyMs,
    pub enqueue_ms: LatencyMs,
    pub total_host_walltime_s: Option<f64>,
    pub total_gpu_compute_s: Option<f64>,
}

/// OpenVINO's benchmark_app on the same IR, shape, hint and precision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchmarkApp {
    pub tool: String,
    pub args: Vec<String>,
    pub throughput_fps: Option<f64>,
    pub median_ms: Option<f64>,
    pub count: Option<f64>,
    pub first_inference_ms: Option<f64>,
    /// Our batch-1 throughput over benchmark_app's.
    #[serde(default)]
    pub throughput_ratio: Option<f64>,
    /// Our batch-1 median latency over benchmark_app's.
    #[serde(default)]
    pub median_latency_ratio: Option<f64>,
}
