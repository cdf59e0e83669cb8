//! TensorRT engines behind the runtime trait, and trtexec's performance summary.
//!
//! Engines run in a worker process: the TensorRT Python API (with cuda-python for device
//! memory) in a Python that has them, speaking a small framed protocol over stdin/stdout:
//! each message is a little-endian u32 length, a JSON header, then the raw little-endian f32
//! tensors the header describes. The worker says what it loaded first (inputs, outputs,
//! TensorRT version, GPU), then answers one `run` per request. A process boundary keeps
//! CUDA out of facebuild's own process, and a crash in TensorRT cannot take a build down.
//!
//! `python/trt_worker.py` has a stand-in mode for facebuild's tests (it doubles its input,
//! only with `FACEBUILD_ALLOW_TRTEXEC_STANDIN=1`) so the protocol is tested where no GPU is.

use std::io::{BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use camino::{Utf8Path, Utf8PathBuf};
use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ExecutionInfo, LoadedModel, NamedTensor, Runtime};
use crate::error::{Error, Result};

pub const WORKER: &str = crate::toolchain::scripts::TRT_WORKER;

/// Write one frame: length-prefixed JSON header, then each tensor's f32 data.
pub fn write_frame(
    w: &mut impl Write,
    header: &serde_json::Value,
    tensors: &[&ArrayD<f32>],
) -> std::io::Result<()> {
    let h = serde_json::to_vec(header)?;
    w.write_all(&(h.len() as u32).to_le_bytes())?;
    w.write_all(&h)?;
    for t in tensors {
        let mut buf = Vec::with_capacity(t.len() * 4);
        for v in t.iter() {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        w.write_all(&buf)?;
    }
    w.flush()
}

#[derive(Debug, Deserialize)]
struct TensorMeta {
    name: String,
    shape: Vec<usize>,
}

/// Read one frame: the header, and the tensors listed under `key` in it.
pub fn read_frame(
    r: &mut impl Read,
    key: &str,
) -> std::io::Result<(serde_json::Value, Vec<NamedTensor>)> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let mut h = vec![0u8; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut h)?;
    let header: serde_json::Value = serde_json::from_slice(&h)?;
    let metas: Vec<TensorMeta> =
        serde_json::from_value(header.get(key).cloned().unwrap_or(json!([])))?;
    let mut out = Vec::with_capacity(metas.len());
    for m in metas {
        let n: usize = m.shape.iter().product();
        let mut bytes = vec![0u8; n * 4];
        r.read_exact(&mut bytes)?;
        let data: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let arr = ArrayD::from_shape_vec(IxDyn(&m.shape), data)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        out.push((m.name, arr));
    }
    Ok((header, out))
}

/// TensorRT engines, run by a Python worker process with TensorRT and cuda-python.
pub struct TensorRtRuntime {
    /// The Python that has `tensorrt` and `cuda-python`.
    pub python: Utf8PathBuf,
    /// Tests only: the worker's stand-in mode (no TensorRT, doubles its input).
    pub standin: bool,
}

impl Runtime for TensorRtRuntime {
    fn name(&self) -> &'static str {
        "tensorrt"
    }

    fn load(&self, engine: &Utf8Path) -> Result<Box<dyn LoadedModel>> {
        let mut cmd = Command::new(&self.python);
        cmd.arg("-u")
            .arg("-c")
            .arg(WORKER)
            .arg(if self.standin { "standin" } else { "tensorrt" })
            .arg(engine.as_str());
        if self.standin {
            // Only tests construct a stand-in runtime; no manifest setting leads here.
            cmd.env(crate::toolchain::tensorrt::ALLOW_STANDIN_ENV, "1");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                Error::toolchain(format!(
                    "cannot start the TensorRT worker with {}: {e}",
                    self.python
                ))
            })?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let stderr = child.stderr.take().expect("piped");
        let err_log = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut s);
            s
        });
        let hello = read_frame(&mut stdout, "none");
        let (h, _) = match hello {
            Ok(x) => x,
            Err(e) => {
                let _ = child.wait();
                let log = err_log.join().unwrap_or_default();
                return Err(Error::Model {
                    path: engine.to_owned(),
                    message: format!(
                        "the TensorRT worker did not start ({e}): {}",
                        log.lines()
                            .rev()
                            .take(8)
                            .collect::<Vec<_>>()
                            .into_iter()
                            .rev()
                            .collect::<Vec<_>>()
                            .join("\n")
                    ),
                    hint: None,
                });
            }
        };
        if let Some(e) = h.get("error").and_then(|e| e.as_str()) {
            let _ = child.wait();
            return Err(Error::Model {
                path: engine.to_owned(),
                message: format!("TensorRT cannot load this engine: {e}"),
                hint: Some(
                    "engines are specific to the TensorRT version and GPU they were built with"
                        .into(),
                ),
            });
        }
        let inputs: Vec<(String, Vec<i64>)> =
            serde_json::from_value(h["inputs"].clone()).unwrap_or_default();
        let outputs: Vec<String> = serde_json::from_value(h["outputs"].clone()).unwrap_or_default();
        let info = ExecutionInfo {
            runtime: "tensorrt".into(),
            version: h["tensorrt"].as_str().unwrap_or("unknown").to_string(),
            device: h["device"].as_str().unwrap_or("unknown").to_string(),
            threads: 1,
            precision: h["precision"].as_str().unwrap_or("as built").to_string(),
            settings: [(
                "worker".to_string(),
                if self.standin {
                    "test stand-in (not TensorRT)"
                } else {
                    "tensorrt python api"
                }
                .to_string(),
            )]
            .into(),
        };
        Ok(Box::new(Worker {
            child,
            stdin,
            stdout,
            err_log: Some(err_log),
            inputs,
            outputs,
            info,
        }))
    }
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    err_log: Option<std::thread::JoinHandle<String>>,
    inputs: Vec<(String, Vec<i64>)>,
    outputs: Vec<String>,
    info: ExecutionInfo,
}

impl Worker {
    fn failure(&mut self, what: String) -> Error {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = self
            .err_log
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        anyhow::anyhow!(
            "TensorRT worker: {what}\n{}",
            log.lines()
                .rev()
                .take(8)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        )
        .into()
    }
}

impl LoadedModel for Worker {
    fn inputs(&self) -> Vec<(String, Vec<i64>)> {
        self.inputs.clone()
    }

    fn outputs(&self) -> Vec<String> {
        self.outputs.clone()
    }

    fn run(&mut self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>> {
        let metas: Vec<serde_json::Value> = inputs
            .iter()
            .map(|(n, a)| json!({"name": n, "shape": a.shape()}))
            .collect();
        let arrays: Vec<&ArrayD<f32>> = inputs.iter().map(|(_, a)| a).collect();
        if let Err(e) = write_frame(
            &mut self.stdin,
            &json!({"op": "run", "inputs": metas}),
            &arrays,
        ) {
            return Err(self.failure(format!("sending inputs: {e}")));
        }
        match read_frame(&mut self.stdout, "outputs") {
            Ok((h, _)) if h.get("error").is_some() => {
                let e = h["error"].as_str().unwrap_or("").to_string();
                Err(anyhow::anyhow!("TensorRT inference failed: {e}").into())
            }
            Ok((_, out)) => Ok(out),
            Err(e) => Err(self.failure(format!("reading outputs: {e}"))),
        }
    }

    fn execution(&self) -> ExecutionInfo {
        self.info.clone()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = write_frame(&mut self.stdin, &json!({"op": "quit"}), &[]);
        let _ = self.child.wait();
    }
}

pub use crate::domain::LatencyMs;

/// trtexec's `=== Performance summary ===`, parsed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrtexecPerf {
    pub throughput_qps: Option<f64>,
    /// Host latency: H2D + GPU compute + D2H, per inference.
    pub latency_ms: LatencyMs,
    pub enqueue_ms: LatencyMs,
    pub h2d_ms: LatencyMs,
    pub gpu_compute_ms: LatencyMs,
    pub d2h_ms: LatencyMs,
    pub total_host_walltime_s: Option<f64>,
    pub total_gpu_compute_s: Option<f64>,
}

/// trtexec's arguments to benchmark a built engine at one input shape: `warmup_ms` of
/// warm-up, then at least `iterations` inferences (TensorRT 10 flags).
pub fn bench_args(
    engine: &Utf8Path,
    shapes: &[(String, Vec<i64>)],
    warmup_ms: u64,
    iterations: usize,
    duration_s: u64,
) -> Vec<String> {
    // Every input, comma-separated: `--shapes=target:1x3x128x128,source:1x512`.
    let shapes: Vec<String> = shapes
        .iter()
        .map(|(n, s)| {
            let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
            format!("{n}:{}", dims.join("x"))
        })
        .collect();
    vec![
        format!("--loadEngine={engine}"),
        format!("--shapes={}", shapes.join(",")),
        format!("--warmUp={warmup_ms}"),
        format!("--iterations={iterations}"),
        format!("--duration={duration_s}"),
        "--percentile=90,95,99".into(),
    ]
}

/// A trtexec summary in the benchmark schema every runtime shares (batch = the shape's).
pub fn perf_to_schema(
    p: &TrtexecPerf,
    batch: usize,
    version: &str,
    gpu: &str,
) -> super::BenchMeasurement {
    super::BenchMeasurement {
        execution: super::BenchExecution {
            runtime: "tensorrt".into(),
            version: version.into(),
            device: gpu.into(),
            precision: "as built".into(),
            threads: None,
            hint: None,
            requests: 1,
            streams: None,
            settings: [("tool".to_string(), "trtexec".to_string())].into(),
        },
        cold_start: None,
        latency_batch1_ms: (batch == 1).then(|| p.latency_ms.clone()),
        latency_samples: None,
        latency_batch1_samples_ms: None,
        throughput: vec![super::ThroughputPoint {
            batch,
            images_per_s: p.throughput_qps.map(|q| q * batch as f64),
            requests_in_flight: Some(1),
            latency_ms: Some(p.latency_ms.clone()),
            ..Default::default()
        }],
        tensorrt: Some(super::TrtTimings {
            gpu_compute_ms: p.gpu_compute_ms.clone(),
            h2d_ms: p.h2d_ms.clone(),
            d2h_ms: p.d2h_ms.clone(),
            enqueue_ms: p.enqueue_ms.clone(),
            total_host_walltime_s: p.total_host_walltime_s,
            total_gpu_compute_s: p.total_gpu_compute_s,
        }),
        peak_rss_mib: None,
        child_wall_ms: None,
        reference: None,
        // trtexec's own stability warnings are in its log; not judged here.
        reliability: None,
        machine_state: None,
    }
}

/// Parse "min = 2.05 ms, max = 2.59 ms, mean = ..., median = ..., percentile(90%) = ... ms"
/// (TensorRT 8.4+ prints 90/95/99; older ones only 99).
fn parse_stats(s: &str) -> LatencyMs {
    let mut l = LatencyMs::default();
    for part in s.split(',') {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        let num = v.trim().trim_end_matches("ms").trim().parse::<f64>().ok();
        match k.trim() {
            "min" => l.min = num,
            "max" => l.max = num,
            "mean" => l.mean = num,
            "median" => l.median = num,
            "percentile(90%)" => l.p90 = num,
            "percentile(95%)" => l.p95 = num,
            "percentile(99%)" => l.p99 = num,
            _ => {}
        }
    }
    l
}

/// Parse the performance summary out of a trtexec log (with or without the `[date] [I] `
/// prefixes). None when the log has no summary (a build with `--skipInference`).
pub fn parse_trtexec_perf(log: &str) -> Option<TrtexecPerf> {
    let start = log.find("=== Performance summary ===")?;
    let mut p = TrtexecPerf::default();
    for line in log[start..].lines().skip(1) {
        // Drop "[11/25/2026-10:00:00] [I] " style prefixes.
        let body = match line.rfind("] ") {
            Some(i) if line.trim_start().starts_with('[') => &line[i + 2..],
            _ => line.trim(),
        };
        let Some((key, rest)) = body.split_once(':') else {
            continue;
        };
        let rest = rest.trim();
        let secs = || rest.trim_end_matches('s').trim().parse::<f64>().ok();
        match key.trim() {
            "Throughput" => p.throughput_qps = rest.trim_end_matches("qps").trim().parse().ok(),
            "Latency" => p.latency_ms = parse_stats(rest),
            "Enqueue Time" => p.enqueue_ms = parse_stats(rest),
            "H2D Latency" => p.h2d_ms = parse_stats(rest),
            "GPU Compute Time" => p.gpu_compute_ms = parse_stats(rest),
            "D2H Latency" => p.d2h_ms = parse_stats(rest),
            "Total Host Walltime" => p.total_host_walltime_s = secs(),
            "Total GPU Compute Time" => p.total_gpu_compute_s = secs(),
            _ => {}
        }
    }
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The summary as TensorRT's documentation and trtexec 8.6-10.x print it.
    const LOG: &str = "[11/25/2026-10:00:00] [I] === Performance summary ===
[11/25/2026-10:00:00] [I] Throughput: 476.66 qps
[11/25/2026-10:00:00] [I] Latency: min = 2.05615 ms, max = 2.59482 ms, mean = 2.09467 ms, median = 2.08276 ms, percentile(90%) = 2.1 ms, percentile(95%) = 2.2 ms, percentile(99%) = 2.58971 ms
[11/25/2026-10:00:00] [I] Enqueue Time: min = 0.00244141 ms, max = 0.0256348 ms, mean = 0.00720864 ms, median = 0.00634766 ms, percentile(90%) = 0.01 ms, percentile(95%) = 0.012 ms, percentile(99%) = 0.0192261 ms
[11/25/2026-10:00:00] [I] H2D Latency: min = 0 ms, max = 0 ms, mean = 0 ms, median = 0 ms, percentile(90%) = 0 ms, percentile(95%) = 0 ms, percentile(99%) = 0 ms
[11/25/2026-10:00:00] [I] GPU Compute Time: min = 2.05615 ms, max = 2.59482 ms, mean = 2.09467 ms, median = 2.08276 ms, percentile(90%) = 2.1 ms, percentile(95%) = 2.2 ms, percentile(99%) = 2.58971 ms
[11/25/2026-10:00:00] [I] D2H Latency: min = 0 ms, max = 0 ms, mean = 0 ms, median = 0 ms, percentile(90%) = 0 ms, percentile(95%) = 0 ms, percentile(99%) = 0 ms
[11/25/2026-10:00:00] [I] Total Host Walltime: 3.00424 s
[11/25/2026-10:00:00] [I] Total GPU Compute Time: 2.99956 s
[11/25/2026-10:00:00] [W] * GPU compute time is unstable, with coefficient of variance = 1.04731%.
&&&& PASSED TensorRT.trtexec [TensorRT v100300] # trtexec --loadEngine=m.engine";

    #[test]
    fn parses_the_performance_summary() {
        let p = parse_trtexec_perf(LOG).unwrap();
        assert_eq!(p.throughput_qps, Some(476.66));
        assert_eq!(p.latency_ms.median, Some(2.08276));
        assert_eq!(p.latency_ms.p90, Some(2.1));
        assert_eq!(p.latency_ms.p99, Some(2.58971));
        assert_eq!(p.gpu_compute_ms.mean, Some(2.09467));
        assert_eq!(p.enqueue_ms.min, Some(0.00244141));
        assert_eq!(p.h2d_ms.max, Some(0.0));
        assert_eq!(p.total_host_walltime_s, Some(3.00424));
        assert_eq!(p.total_gpu_compute_s, Some(2.99956));
    }

    #[test]
    fn older_summaries_without_90_95_and_without_prefixes() {
        let log = "=== Performance summary ===\nThroughput: 2.54521e+06 qps\nLatency: min = 9.47876 ms, max = 51.4163 ms, mean = 16.5801 ms, median = 11.6239 ms, percentile(99%) = 47.6256 ms\n";
        let p = parse_trtexec_perf(log).unwrap();
        assert_eq!(p.throughput_qps, Some(2.54521e6));
        assert_eq!(p.latency_ms.p99, Some(47.6256));
        assert_eq!(p.latency_ms.p90, None);
        assert!(parse_trtexec_perf("[I] Engine built in 12.3 sec.").is_none());
    }

    #[test]
    fn benchmark_command_and_schema() {
        let a = bench_args(
            Utf8Path::new("m.engine"),
            &[("input.1".into(), vec![1, 3, 112, 112])],
            200,
            500,
            3,
        );
        assert_eq!(
            a,
            [
                "--loadEngine=m.engine",
                "--shapes=input.1:1x3x112x112",
                "--warmUp=200",
                "--iterations=500",
                "--duration=3",
                "--percentile=90,95,99"
            ]
        );
        // A swapper's two inputs, both shaped.
        let two = bench_args(
            Utf8Path::new("m.engine"),
            &[
                ("target".into(), vec![1, 3, 128, 128]),
                ("source".into(), vec![1, 512]),
            ],
            0,
            1,
            0,
        );
        assert_eq!(two[1], "--shapes=target:1x3x128x128,source:1x512");
        let v = perf_to_schema(&parse_trtexec_perf(LOG).unwrap(), 1, "10.3.0", "NVIDIA L4");
        assert_eq!(v.throughput[0].images_per_s, Some(476.66));
        assert_eq!(v.latency_batch1_ms.unwrap().p99, Some(2.58971));
        assert_eq!(v.tensorrt.unwrap().gpu_compute_ms.median, Some(2.08276));
        assert_eq!(v.execution.runtime, "tensorrt");
    }

    #[test]
    fn frames_round_trip() {
        let a = ArrayD::from_shape_vec(IxDyn(&[1, 2, 3]), (0..6).map(|x| x as f32 * 0.5).collect())
            .unwrap();
        let mut buf = Vec::new();
        write_frame(
            &mut buf,
            &json!({"outputs": [{"name": "y", "shape": [1, 2, 3]}]}),
            &[&a],
        )
        .unwrap();
        let (h, t) = read_frame(&mut buf.as_slice(), "outputs").unwrap();
        assert_eq!(h["outputs"][0]["name"], "y");
        assert_eq!(t[0].1, a);
    }
}
