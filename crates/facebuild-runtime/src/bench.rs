//! Measuring one artifact in one runtime configuration, inside a fresh child process
//! (`facebuild bench-target SPEC`): the `benchmark` step starts one per target so cold start
//! is a real process-level cold start (load + compile + first inference, nothing warm in
//! the process) and peak RSS is that target's alone. The child prints one JSON object; its
//! schema is the same for every runtime (see docs/manifest.md, `benchmark`).

use std::time::{Duration, Instant};

use camino::Utf8PathBuf;
use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};

use super::{
    BenchExecution, BenchMeasurement, ColdStart, LoadedModel, MachineState, Runtime,
    ThroughputPoint,
    onnxruntime::OnnxRuntime,
    openvino::{OpenVino, OpenVinoSettings},
};
use crate::domain::LatencyMs;
use crate::error::Result;
use crate::toolchain::Toolchain;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchSpec {
    pub toolchain_dir: Utf8PathBuf,
    /// "onnxruntime" or "openvino".
    pub runtime: String,
    /// model.onnx, or the IR's model.xml.
    pub artifact: Utf8PathBuf,
    /// The IR's model.bin.
    pub weights: Option<Utf8PathBuf>,
    pub input_name: String,
    /// The input at batch 1.
    pub input_shape: Vec<i64>,
    /// The model's other inputs (a swapper's latent), each at batch 1.
    #[serde(default)]
    pub extra_inputs: Vec<(String, Vec<i64>)>,
    pub batch_sizes: Vec<usize>,
    pub warmup: usize,
    pub iterations: usize,
    pub time_budget_ms: Option<u64>,
    pub threads: Option<usize>,
    /// OpenVINO: INFERENCE_PRECISION_HINT (None: the plugin's default).
    pub precision_hint: Option<String>,
    /// OpenVINO: PERFORMANCE_HINT, LATENCY or THROUGHPUT.
    pub hint: Option<String>,
    /// When the parent spawned this process (unix ns): cold start is measured from here.
    pub spawned_at_unix_ns: u128,
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

pub fn spawn_time() -> u128 {
    now_ns()
}

/// Peak resident set of this process (VmHWM), MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

impl BenchSpec {
    /// Every input's shape at batch `b`, the image input first.
    pub fn shapes_at(&self, b: usize) -> Vec<(String, Vec<i64>)> {
        std::iter::once((self.input_name.clone(), self.input_shape.clone()))
            .chain(self.extra_inputs.iter().cloned())
            .map(|(n, s)| (n, with_batch(&s, b)))
            .collect()
    }

    /// Seeded random tensors for every input at batch `b`.
    fn feed_at(&self, b: usize) -> Vec<super::NamedTensor> {
        self.shapes_at(b)
            .into_iter()
            .map(|(n, s)| (n, random_input(&s)))
            .collect()
    }
}

fn with_batch(shape: &[i64], b: usize) -> Vec<i64> {
    let mut s = shape.to_vec();
    if let Some(first) = s.first_mut() {
        *first = b as i64;
    }
    s
}

fn random_input(shape: &[i64]) -> ArrayD<f32> {
    let dims: Vec<usize> = shape.iter().map(|&d| d.max(1) as usize).collect();
    let mut rng = crate::util::SplitMix64::new(7);
    ArrayD::from_shape_vec(
        IxDyn(&dims),
        (0..dims.iter().product::<usize>())
            .map(|_| rng.unit())
            .collect(),
    )
    .expect("sized to shape")
}

/// Run `f` `warmup` times, then until `iterations` runs or the time budget (at least one);
/// returns the per-run latencies (ms) and the wall time.
fn timed_loop(
    warmup: usize,
    iterations: usize,
    budget: Option<Duration>,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(Vec<f64>, f64)> {
    for _ in 0..warmup {
        f()?;
    }
    let start = Instant::now();
    let mut lat = Vec::with_capacity(iterations);
    while lat.is_empty() || (lat.len() < iterations && budget.is_none_or(|b| start.elapsed() < b)) {
        let t = Instant::now();
        f()?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((lat, start.elapsed().as_secs_f64() * 1e3))
}

pub fn run_child(spec: &BenchSpec) -> Result<BenchMeasurement> {
    let tc = Toolchain::at(&spec.toolchain_dir)?;
    let budget = spec.time_budget_ms.map(Duration::from_millis);
    let (load_before, calibration_before_ms) = (MachineState::load(), MachineState::calibrate());
    let (cpu0, t0) = (MachineState::cpu_seconds(), Instant::now());
    let mut m = match spec.runtime.as_str() {
        "onnxruntime" => onnxruntime(spec, &tc, budget),
        "openvino" => openvino(spec, &tc, budget),
        other => Err(anyhow::anyhow!("bench-target: unknown runtime `{other}`").into()),
    }?;
    let (cpu_s, wall_s) = (
        MachineState::cpu_seconds() - cpu0,
        t0.elapsed().as_secs_f64(),
    );
    m.machine_state = Some(MachineState {
        load_before,
        load_after: MachineState::load(),
        cpu_s,
        wall_s,
        calibration_before_ms,
        calibration_after_ms: MachineState::calibrate(),
    });
    Ok(m)
}

fn cold_start(spec: &BenchSpec, load_ms: f64, compile_ms: Option<f64>, first: f64) -> ColdStart {
    ColdStart {
        spawn_to_first_output_ms: (now_ns().saturating_sub(spec.spawned_at_unix_ns)) as f64 / 1e6,
        load_ms: Some(load_ms),
        compile_ms,
        first_inference_ms: Some(first),
        note: None,
    }
}

/// Throughput is measured in this many consecutive windows, so its interval has more than
/// one figure per process to draw from.
pub const WINDOWS: usize = 5;

fn point(
    batch: usize,
    requests: usize,
    lat: &[f64],
    wall: f64,
    windows: Vec<f64>,
) -> ThroughputPoint {
    ThroughputPoint {
        batch,
        windows_images_per_s: (!windows.is_empty()).then_some(windows),
        images_per_s: Some((lat.len() * batch) as f64 / (wall / 1e3)),
        requests_in_flight: Some(requests),
        inferences: Some(lat.len()),
        wall_ms: Some(wall),
        latency_ms: Some(LatencyMs::of(lat)),
        unsupported: None,
    }
}

fn onnxruntime(
    spec: &BenchSpec,
    tc: &Toolchain,
    budget: Option<Duration>,
) -> Result<BenchMeasurement> {
    let t0 = Instant::now();
    let rt = OnnxRuntime::new(tc, spec.threads)?;
    let mut m: Box<dyn LoadedModel> = rt.load(&spec.artifact)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let x1 = spec.feed_at(1);
    let t1 = Instant::now();
    m.run(&x1)?;
    let first_ms = t1.elapsed().as_secs_f64() * 1e3;
    let cold = cold_start(spec, load_ms, None, first_ms);
    let (lat, _) = timed_loop(spec.warmup, spec.iterations, budget, || {
        m.run(&x1).map(|_| ())
    })?;
    let mut tput = Vec::new();
    for &b in &spec.batch_sizes {
        let x = spec.feed_at(b);
        // A static batch dim refuses other sizes: reported, not hidden.
        if let Err(e) = m.run(&x) {
            tput.push(ThroughputPoint::unsupported(b, &e.to_string()));
            continue;
        }
        let (l, wall) = timed_loop(spec.warmup.min(3), spec.iterations, budget, || {
            m.run(&x).map(|_| ())
        })?;
        // One request at a time: a window's throughput is its inferences over their time.
        let windows = l
            .chunks(l.len().div_ceil(WINDOWS).max(1))
            .map(|w| (w.len() * b) as f64 / (w.iter().sum::<f64>() / 1e3))
            .collect();
        tput.push(point(b, 1, &l, wall, windows));
    }
    let exec = m.execution();
    let execution = BenchExecution {
        runtime: exec.runtime,
        version: exec.version,
        device: exec.device,
        precision: exec.precision,
        threads: Some(exec.threads),
        hint: None,
        requests: 1,
        streams: None,
        settings: exec.settings,
    };
    Ok(result(execution, cold, &lat, tput))
}

fn openvino(
    spec: &BenchSpec,
    tc: &Toolchain,
    budget: Option<Duration>,
) -> Result<BenchMeasurement> {
    let hint = spec.hint.clone().unwrap_or_else(|| "LATENCY".into());
    let ov = OpenVino::new(
        tc,
        OpenVinoSettings {
            device: "CPU".into(),
            precision_hint: spec.precision_hint.clone(),
            threads: spec.threads,
        },
    )?;
    let xml = &spec.artifact;
    let bin = spec
        .weights
        .clone()
        .unwrap_or_else(|| xml.with_extension("bin"));
    let mut m = ov.compile_for_bench(xml, &bin, &hint, &spec.shapes_at(1))?;
    let t1 = Instant::now();
    m.run(1, 1, None)?;
    let first_ms = t1.elapsed().as_secs_f64() * 1e3;
    let cold = cold_start(spec, m.read_ms, Some(m.compile_ms), first_ms);
    // Latency: one request at a time, batch 1.
    m.run(1, spec.warmup, None)?;
    let (_, lat) = m.run(1, spec.iterations, budget)?;
    let (requests, precision, streams) = (m.requests, m.precision.clone(), m.streams.clone());
    let mut tput = Vec::new();
    for &b in &spec.batch_sizes {
        let mut mb = if b == 1 {
            None
        } else {
            match ov.compile_for_bench(xml, &bin, &hint, &spec.shapes_at(b)) {
                Ok(x) => Some(x),
                Err(e) => {
                    tput.push(ThroughputPoint::unsupported(b, &e.to_string()));
                    continue;
                }
            }
        };
        let model = mb.as_mut().unwrap_or(&mut m);
        let n = model.requests;
        model.run(n, spec.warmup.max(n), None)?;
        // Requests overlap, so windows are consecutive runs, each a share of the budget.
        let (mut wall, mut l, mut windows) = (0.0, Vec::new(), Vec::new());
        let per = budget.map(|d| d / WINDOWS as u32);
        for _ in 0..WINDOWS {
            let (w, lw) = model.run(n, (spec.iterations / WINDOWS).max(n), per)?;
            windows.push((lw.len() * b) as f64 / (w / 1e3));
            wall += w;
            l.extend(lw);
        }
        tput.push(point(b, n, &l, wall, windows));
    }
    let settings = [
        (
            "precision_hint".to_string(),
            spec.precision_hint
                .clone()
                .unwrap_or_else(|| "plugin default".into()),
        ),
        ("performance_hint".to_string(), hint.clone()),
    ]
    .into();
    let execution = BenchExecution {
        runtime: "openvino".into(),
        version: tc.version("openvino").unwrap_or("unknown").into(),
        device: "CPU".into(),
        precision,
        threads: spec.threads,
        hint: Some(hint),
        requests,
        streams: Some(streams),
        settings,
    };
    Ok(result(execution, cold, &lat, tput))
}

/// The child's answer, in the schema every runtime shares.
fn result(
    execution: BenchExecution,
    cold: ColdStart,
    lat: &[f64],
    throughput: Vec<ThroughputPoint>,
) -> BenchMeasurement {
    BenchMeasurement {
        execution,
        cold_start: Some(cold),
        latency_batch1_ms: Some(LatencyMs::of(lat)),
        latency_samples: Some(lat.len()),
        latency_batch1_samples_ms: Some(lat.iter().map(|x| (x * 1e4).round() / 1e4).collect()),
        throughput: throughput.clone(),
        tensorrt: None,
        peak_rss_mib: peak_rss_mib(),
        child_wall_ms: None,
        reference: None,
        reliability: Some(super::Reliability::of(lat, &throughput)),
        machine_state: None,
    }
}
