//! What one benchmark measurement reports, in the schema every runtime shares: written by
//! the `bench-target` child (ONNX Runtime, OpenVINO) or parsed from trtexec, carried inside
//! `benchmark`'s report, read by `release` and the run report.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::LatencyMs;

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
    /// The judge's diagnostics on the latencies (samples, CV, drift): reported, no longer
    /// deciding (absent for trtexec's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reliability: Option<Reliability>,
    /// What the machine was doing around the measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_state: Option<MachineState>,
}

/// What the machine was doing around one measuring process: "the runner was busy" as a
/// measured fact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineState {
    /// 1-minute load average before and after.
    pub load_before: Option<f64>,
    pub load_after: Option<f64>,
    /// CPU seconds the process got (user + system) while measuring...
    pub cpu_s: f64,
    /// ...against the wall seconds it measured for.
    pub wall_s: f64,
    /// A fixed calibration kernel's time before and after, ms: it grows when the process
    /// shares its core.
    pub calibration_before_ms: f64,
    pub calibration_after_ms: f64,
}

impl MachineState {
    /// The 1-minute load average.
    pub fn load() -> Option<f64> {
        std::fs::read_to_string("/proc/loadavg")
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// CPU seconds (user + system) this process has had.
    pub fn cpu_seconds() -> f64 {
        // Fields 14 and 15 of /proc/self/stat, in clock ticks (USER_HZ, 100 on Linux),
        // counted after the command name, which may hold spaces.
        let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<f64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|x| x.parse().ok())
            .collect();
        f.iter().sum::<f64>() / 100.0
    }

    /// The calibration kernel: a fixed chain of dependent floating-point operations, ms.
    pub fn calibrate() -> f64 {
        let t = std::time::Instant::now();
        let mut x = 1.000_000_1f64;
        for i in 0..2_000_000u32 {
            x = x * 1.000_000_01 + f64::from(i & 1) * 1e-12;
        }
        std::hint::black_box(x);
        t.elapsed().as_secs_f64() * 1e3
    }
}

/// Whether a measurement is long and steady enough to trust. A figure from a few dozen
/// inferences, or from a run whose speed drifted (another process, CPU frequency), reads
/// like any other number; this says which are not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reliability {
    pub reliable: bool,
    /// Why not; empty when reliable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// The same reasons in brief, each a figure against the judge's threshold
    /// (`CV 0.62 > 0.5`), for gate messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub brief: Vec<String>,
    /// Batch-1 inferences timed.
    pub samples: usize,
    /// Seconds they took together.
    pub timed_s: f64,
    /// Standard deviation over mean of the batch-1 latencies.
    pub latency_cv: Option<f64>,
    /// How far the medians of the run's four quarters differ, over the overall median:
    /// the speed changed during the measurement.
    pub drift: Option<f64>,
}

impl Reliability {
    /// Fewer inferences than this give unstable percentiles (p99 is the 99th of 100).
    pub const MIN_SAMPLES: usize = 100;
    /// Shorter than this, timer and scheduler noise weigh on every figure.
    pub const MIN_TIMED_S: f64 = 0.5;
    pub const MAX_CV: f64 = 0.5;
    pub const MAX_DRIFT: f64 = 0.25;

    /// Judge batch-1 latencies (ms, in the order measured) and the throughput points.
    pub fn of(latencies_ms: &[f64], throughput: &[ThroughputPoint]) -> Reliability {
        let n = latencies_ms.len();
        let timed_s = latencies_ms.iter().sum::<f64>() / 1e3;
        let mut reasons = Vec::new();
        let mut brief = Vec::new();
        if n < Self::MIN_SAMPLES {
            reasons.push(format!(
                "only {n} batch-1 inferences (at least {} give stable percentiles): raise `iterations` or `time_budget_s`",
                Self::MIN_SAMPLES
            ));
            brief.push(format!("{n} samples < {}", Self::MIN_SAMPLES));
        }
        if timed_s < Self::MIN_TIMED_S {
            reasons.push(format!(
                "timed for only {timed_s:.2} s (at least {} s): raise `time_budget_s`",
                Self::MIN_TIMED_S
            ));
            brief.push(format!("timed {timed_s:.2} s < {} s", Self::MIN_TIMED_S));
        }
        let mean = timed_s * 1e3 / n.max(1) as f64;
        let latency_cv = (n >= 2 && mean > 0.0).then(|| {
            let var = latencies_ms.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            var.sqrt() / mean
        });
        if let Some(cv) = latency_cv.filter(|&cv| cv > Self::MAX_CV) {
            reasons.push(format!(
                "batch-1 latency varies too much (coefficient of variation {cv:.2}, above {}): the machine was busy",
                Self::MAX_CV
            ));
            brief.push(format!("CV {cv:.2} > {}", Self::MAX_CV));
        }
        let drift = (n >= 8).then(|| {
            let median = |xs: &[f64]| {
                let mut v = xs.to_vec();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let q: Vec<f64> = latencies_ms.chunks(n.div_ceil(4)).map(median).collect();
            let (lo, hi) = q
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
            (hi - lo) / median(latencies_ms).max(1e-9)
        });
        if let Some(d) = drift.filter(|&d| d > Self::MAX_DRIFT) {
            reasons.push(format!(
                "speed drifted {:.0}% between the run's quarters (above {:.0}%): the machine was busy or changed frequency",
                d * 100.0,
                Self::MAX_DRIFT * 100.0
            ));
            brief.push(format!(
                "drift {:.0}% > {:.0}%",
                d * 100.0,
                Self::MAX_DRIFT * 100.0
            ));
        }
        for t in throughput {
            if let (Some(k), Some(w)) = (t.inferences, t.wall_ms)
                && (k < 10 || w < Self::MIN_TIMED_S * 1e3)
            {
                reasons.push(format!(
                    "batch-{} throughput from {k} inferences in {:.2} s (at least 10 and {} s)",
                    t.batch,
                    w / 1e3,
                    Self::MIN_TIMED_S
                ));
                brief.push(format!(
                    "batch-{} throughput from {k} inferences in {:.2} s < 10 in {} s",
                    t.batch,
                    w / 1e3,
                    Self::MIN_TIMED_S
                ));
            }
        }
        Reliability {
            reliable: reasons.is_empty(),
            reasons,
            brief,
            samples: n,
            timed_s,
            latency_cv,
            drift,
        }
    }
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
    /// Images/s in each of the measurement's consecutive windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows_images_per_s: Option<Vec<f64>>,
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
    /// Why benchmark_app's figure, and so the ratios, cannot be trusted (too few iterations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreliable: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_noisy_or_drifting_measurements_are_flagged() {
        let steady: Vec<f64> = (0..400).map(|i| 5.0 + (i % 7) as f64 * 0.01).collect();
        let r = Reliability::of(&steady, &[]);
        assert!(r.reliable, "{r:?}");
        assert!(r.latency_cv.unwrap() < 0.01 && r.drift.unwrap() < 0.01);
        // 20 inferences in 0.1 s: too few and too short.
        let r = Reliability::of(&steady[..20], &[]);
        // (0.1 s)
        assert!(!r.reliable);
        assert_eq!(r.reasons.len(), 2, "{r:?}");
        assert!(r.reasons[0].contains("only 20 batch-1 inferences"));
        assert_eq!(r.brief, ["20 samples < 100", "timed 0.10 s < 0.5 s"]);
        // The machine slowed down halfway: the quarters' medians differ by 100%.
        let drifting: Vec<f64> = (0..400).map(|i| if i < 200 { 5.0 } else { 7.0 }).collect();
        let r = Reliability::of(&drifting, &[]);
        assert!(r.reasons.iter().any(|x| x.contains("drifted")), "{r:?}");
        // A throughput point of 3 inferences.
        let t = ThroughputPoint {
            batch: 8,
            inferences: Some(3),
            wall_ms: Some(40.0),
            ..Default::default()
        };
        let r = Reliability::of(&steady, &[t]);
        assert!(
            r.reasons
                .iter()
                .any(|x| x.contains("batch-8 throughput from 3")),
            "{r:?}"
        );
    }
}
