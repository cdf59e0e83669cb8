//! Measuring one artifact in one runtime configuration, inside a fresh child process
//! (`facebuild bench-target SPEC`): the `benchmark` step starts one per target so cold start
//! is a real process-level cold start (load + compile + first inference, nothing warm in
//! the process) and peak RSS is that target's alone. The child prints one JSON object; its
//! schema is the same for every runtime (see docs/manifest.md, `benchmark`).

use std::time::{Duration, Instant};

use camino::Utf8PathBuf;
use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    LoadedModel, Runtime,
    onnxruntime::OnnxRuntime,
    openvino::{OpenVino, OpenVinoSettings},
};
use crate::error::Result;
use crate::metrics::LatencyMs;
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

pub fn run_child(spec: &BenchSpec) -> Result<serde_json::Value> {
    let tc = Toolchain::at(&spec.toolchain_dir)?;
    let budget = spec.time_budget_ms.map(Duration::from_millis);
    match spec.runtime.as_str() {
        "onnxruntime" => onnxruntime(spec, &tc, budget),
        "openvino" => openvino(spec, &tc, budget),
        other => Err(anyhow::anyhow!("bench-target: unknown runtime `{other}`").into()),
    }
}

fn onnxruntime(
    spec: &BenchSpec,
    tc: &Toolchain,
    budget: Option<Duration>,
) -> Result<serde_json::Value> {
    let t0 = Instant::now();
    let rt = OnnxRuntime::new(tc, spec.threads)?;
    let mut m: Box<dyn LoadedModel> = rt.load(&spec.artifact)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let x1 = random_input(&spec.input_shape);
    let t1 = Instant::now();
    m.run(&[(spec.input_name.clone(), x1.clone())])?;
    let first_ms = t1.elapsed().as_secs_f64() * 1e3;
    let cold = json!({"spawn_to_first_output_ms": (now_ns().saturating_sub(spec.spawned_at_unix_ns)) as f64 / 1e6, "load_ms": load_ms, "compile_ms": null, "first_inference_ms": first_ms});
    let (lat, _) = timed_loop(spec.warmup, spec.iterations, budget, || {
        m.run(&[(spec.input_name.clone(), x1.clone())]).map(|_| ())
    })?;
    let mut tput = Vec::new();
    for &b in &spec.batch_sizes {
        let shape = with_batch(&spec.input_shape, b);
        let x = random_input(&shape);
        // A static batch dim refuses other sizes: reported, not hidden.
        if let Err(e) = m.run(&[(spec.input_name.clone(), x.clone())]) {
            tput.push(json!({"batch": b, "unsupported": e.to_string().lines().next().unwrap_or_default()}));
            continue;
        }
        let (l, wall) = timed_loop(spec.warmup.min(3), spec.iterations, budget, || {
            m.run(&[(spec.input_name.clone(), x.clone())]).map(|_| ())
        })?;
        tput.push(json!({"batch": b, "images_per_s": (l.len() * b) as f64 / (wall / 1e3), "requests_in_flight": 1, "inferences": l.len(), "wall_ms": wall, "latency_ms": LatencyMs::of(&l)}));
    }
    let exec = m.execution();
    Ok(result(
        json!({"runtime": exec.runtime, "version": exec.version, "device": exec.device, "precision": exec.precision, "threads": exec.threads, "hint": null, "requests": 1, "settings": exec.settings}),
        cold,
        &lat,
        tput,
    ))
}

fn openvino(
    spec: &BenchSpec,
    tc: &Toolchain,
    budget: Option<Duration>,
) -> Result<serde_json::Value> {
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
    let mut m = ov.compile_for_bench(xml, &bin, &hint, &spec.input_shape)?;
    let t1 = Instant::now();
    m.run(1, 1, None)?;
    let first_ms = t1.elapsed().as_secs_f64() * 1e3;
    let cold = json!({"spawn_to_first_output_ms": (now_ns().saturating_sub(spec.spawned_at_unix_ns)) as f64 / 1e6, "load_ms": m.read_ms, "compile_ms": m.compile_ms, "first_inference_ms": first_ms});
    // Latency: one request at a time, batch 1.
    m.run(1, spec.warmup, None)?;
    let (_, lat) = m.run(1, spec.iterations, budget)?;
    let (requests, precision, streams) = (m.requests, m.precision.clone(), m.streams.clone());
    let mut tput = Vec::new();
    for &b in &spec.batch_sizes {
        let mut mb = if b == 1 {
            None
        } else {
            match ov.compile_for_bench(xml, &bin, &hint, &with_batch(&spec.input_shape, b)) {
                Ok(x) => Some(x),
                Err(e) => {
                    tput.push(json!({"batch": b, "unsupported": e.to_string().lines().next().unwrap_or_default()}));
                    continue;
                }
            }
        };
        let model = mb.as_mut().unwrap_or(&mut m);
        let n = model.requests;
        model.run(n, spec.warmup.max(n), None)?;
        let (wall, l) = model.run(n, spec.iterations.max(n), budget)?;
        tput.push(json!({"batch": b, "images_per_s": (l.len() * b) as f64 / (wall / 1e3), "requests_in_flight": n, "inferences": l.len(), "wall_ms": wall, "latency_ms": LatencyMs::of(&l)}));
    }
    let execution = json!({"runtime": "openvino", "version": tc.version("openvino").unwrap_or("unknown"), "device": "CPU", "precision": precision, "threads": spec.threads, "hint": hint, "requests": requests, "streams": streams,
                           "settings": {"precision_hint": spec.precision_hint.clone().unwrap_or_else(|| "plugin default".into()), "performance_hint": hint}});
    Ok(result(execution, cold, &lat, tput))
}

/// The child's answer, in the schema every runtime shares.
fn result(
    execution: serde_json::Value,
    cold: serde_json::Value,
    lat: &[f64],
    throughput: Vec<serde_json::Value>,
) -> serde_json::Value {
    json!({
        "execution": execution,
        "cold_start": cold,
        "latency_batch1_ms": LatencyMs::of(lat),
        "latency_samples": lat.len(),
        "latency_batch1_samples_ms": lat.iter().map(|x| (x * 1e4).round() / 1e4).collect::<Vec<_>>(),
        "throughput": throughput,
        "peak_rss_mib": peak_rss_mib(),
    })
}
