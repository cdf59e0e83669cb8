//! `benchmark`: latency, throughput, cold start and peak memory of each target artifact, in
//! each runtime configuration, each measured in its own fresh child process
//! (`facebuild bench-target`, see runtime/bench.rs) so that nothing warm in one process
//! flatters another. ONNX Runtime runs with the declared thread count; OpenVINO with each
//! declared PERFORMANCE_HINT (the number of infer requests it finds optimal is recorded);
//! TensorRT engines with trtexec where TensorRT is installed (unavailable otherwise). When
//! asked (`reference: benchmark_app`), OpenVINO's own benchmark_app measures the same IR at
//! the same shape and hint, and the ratio is reported. Results share one JSON schema across
//! runtimes, with the machine described (CPU, cores, ISA flags, GPU).
//!
//! Benchmarks depend on the machine: its description is part of this step's cache key, so a
//! cache shared across machines never hands one machine's figures to another.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::compare::CandidateSpec;
use super::{StepContext, StepOutcome};
use crate::error::{Error, Result};
use crate::runtime::bench::BenchSpec;
use crate::runtime::{BenchMeasurement, BenchmarkApp, ColdStart, ThroughputPoint};

/// v2: the report is typed and carries `schema`.
/// v3: benchmark_app's recorded arguments hold no scratch path.
/// v4: each measurement says whether it is reliable (long and steady enough).
/// v5: an unreliable measurement is measured again with a longer budget (`retry:`), and
/// every attempt is reported.
pub(crate) const IMPL_VERSION: u32 = 5;
pub(crate) const TOOLCHAIN: &[&str] = &["onnxruntime", "openvino"];
pub(crate) const SCHEMA: &str = "facebuild.benchmark/1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hint {
    Latency,
    Throughput,
}

impl Hint {
    fn ov(self) -> &'static str {
        match self {
            Hint::Latency => "LATENCY",
            Hint::Throughput => "THROUGHPUT",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Reference {
    BenchmarkApp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BenchmarkParams {
    /// Steps whose artifacts to measure (as compare's candidates: a name, or
    /// `{step, label, precision_hint}`).
    pub targets: Vec<CandidateSpec>,
    /// Batch sizes for throughput (latency is always batch 1). A static batch dim that cannot
    /// take a size is reported as unsupported at that size.
    #[serde(default = "default_batches")]
    pub batch_sizes: Vec<usize>,
    #[serde(default = "default_warmup")]
    pub warmup: usize,
    /// Fixed iteration count per measurement...
    #[serde(default = "default_iterations")]
    pub iterations: usize,
    /// ...or a time budget per measurement, whichever ends first.
    #[serde(default)]
    pub time_budget_s: Option<f64>,
    /// ONNX Runtime intra-op threads and OpenVINO INFERENCE_NUM_THREADS (default: all cores).
    #[serde(default)]
    pub threads: Option<usize>,
    /// OpenVINO PERFORMANCE_HINTs to measure each IR with.
    #[serde(default = "default_hints")]
    pub openvino_hints: Vec<Hint>,
    /// OpenVINO INFERENCE_PRECISION_HINT (default: the plugin's, as a deployment runs it;
    /// bf16 on AMX CPUs). Reports say what executed.
    #[serde(default)]
    pub precision_hint: Option<String>,
    /// Measure each IR with OpenVINO's benchmark_app too and report the ratio.
    #[serde(default)]
    pub reference: Option<Reference>,
    #[serde(default = "default_reference_seconds")]
    pub reference_seconds: u64,
    /// A measurement judged unreliable is measured again with a longer budget, within
    /// these bounds. The release step only reads what the last attempt measured.
    #[serde(default)]
    pub retry: Retry,
}

/// How hard the benchmark tries before it reports an unreliable figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Retry {
    /// Measurements per configuration at most, the first included (1: no retry).
    #[serde(default = "default_attempts")]
    pub attempts: usize,
    /// Seconds the step may spend on retries, over all its configurations.
    #[serde(default = "default_retry_seconds")]
    pub total_s: f64,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: default_attempts(),
            total_s: default_retry_seconds(),
        }
    }
}

fn default_attempts() -> usize {
    3
}
fn default_retry_seconds() -> f64 {
    60.0
}

fn default_batches() -> Vec<usize> {
    vec![1]
}
fn default_warmup() -> usize {
    10
}
fn default_iterations() -> usize {
    200
}
fn default_hints() -> Vec<Hint> {
    vec![Hint::Latency, Hint::Throughput]
}
fn default_reference_seconds() -> u64 {
    10
}

impl BenchmarkParams {
    pub(crate) fn validate(&self) -> std::result::Result<(), (String, Option<String>)> {
        if self.targets.is_empty() {
            return Err((
                "`targets` is empty: nothing to measure".into(),
                Some("list convert/quantize/simplify steps".into()),
            ));
        }
        if self.batch_sizes.is_empty() || self.batch_sizes.contains(&0) {
            return Err((
                "`batch_sizes` needs at least one size, each >= 1".into(),
                None,
            ));
        }
        if self.iterations == 0 || self.time_budget_s.is_some_and(|t| t <= 0.0) {
            return Err((
                "`iterations` and `time_budget_s` must be positive".into(),
                None,
            ));
        }
        if self.retry.attempts == 0 || self.retry.total_s.is_nan() || self.retry.total_s < 0.0 {
            return Err((
                "`retry.attempts` must be at least 1 and `retry.total_s` at least 0".into(),
                Some("`retry: {attempts: 1}` measures once, without retrying".into()),
            ));
        }
        if self
            .targets
            .iter()
            .any(|t| t.detail().is_some_and(|d| d.preprocessing.is_some()))
        {
            return Err((
                "a benchmark target takes no `preprocessing` (inputs are random tensors)".into(),
                None,
            ));
        }
        Ok(())
    }
}

/// What the machine is: part of every benchmark's result and of its cache key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub logical_cores: usize,
    /// The ISA flags that change inference speed (AVX-512, VNNI, AMX...).
    pub isa: Vec<String>,
    pub memory_gib: Option<f64>,
    pub gpu: Option<String>,
    pub os: String,
    pub arch: String,
}

/// This machine, read once per process (plan and run key every benchmark step with it).
pub(crate) fn machine() -> Machine {
    static MACHINE: std::sync::OnceLock<Machine> = std::sync::OnceLock::new();
    MACHINE.get_or_init(describe_machine).clone()
}

fn describe_machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |k: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let flags = field("flags").unwrap_or_default();
    let isa: Vec<String> = [
        "avx2",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
        "avx_vnni",
    ]
    .into_iter()
    .filter(|f| flags.split_whitespace().any(|x| x == *f))
    .map(String::from)
    .collect();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kb| (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0);
    let gpu = Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    Machine {
        cpu: field("model name").unwrap_or_else(|| "unknown".into()),
        logical_cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        isa,
        memory_gib: mem,
        gpu,
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
    }
}

/// The CPU's ISA class: the architecture and the instruction-set extensions that change
/// inference results (bf16 and int8 paths, vector widths). Part of the key of every step
/// that runs inference, so CI runners of one class share results and other classes do not.
pub(crate) fn isa_class() -> String {
    let m = machine();
    format!(
        "{} {}",
        m.arch,
        if m.isa.is_empty() {
            "baseline".to_string()
        } else {
            m.isa.join(",")
        }
    )
}

/// The part of the machine description that changes figures: the cache key's `machine`.
pub(crate) fn machine_fingerprint() -> String {
    let m = machine();
    format!(
        "{} | {} cores | {} | gpu {}",
        m.cpu,
        m.logical_cores,
        m.isa.join(","),
        m.gpu.as_deref().unwrap_or("none")
    )
}

/// `benchmark`'s report.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchmarkReport {
    /// The report's schema version, e.g. `facebuild.compare/1`.
    pub schema: String,
    /// The step's name.
    pub step: String,
    /// The step's kind.
    pub kind: String,
    /// The machine measured on.
    pub machine: Machine,
    /// The input fed.
    pub input: BenchInput,
    /// The params that shaped the figures.
    pub params: BenchParamsEcho,
    /// Every target in every configuration.
    pub results: Vec<BenchEntry>,
    /// The toolchain versions the step used.
    pub toolchain: BTreeMap<String, String>,
}

impl BenchmarkReport {
    /// The measured configurations of one artifact step.
    pub fn measured_for<'a>(
        &'a self,
        step: &'a str,
    ) -> impl Iterator<Item = (&'a BenchEntry, &'a BenchMeasurement)> + 'a {
        self.results
            .iter()
            .filter(move |r| r.step == step && r.available)
            .filter_map(|r| r.measured.as_ref().map(|m| (r, m)))
    }
}

/// The input the benchmark fed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchInput {
    pub name: String,
    pub shape_batch1: Vec<i64>,
}

/// The params that shaped the figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchParamsEcho {
    pub batch_sizes: Vec<usize>,
    pub warmup: usize,
    pub iterations: usize,
    pub time_budget_s: Option<f64>,
    pub threads: Option<usize>,
    pub openvino_hints: Vec<Hint>,
    pub precision_hint: Option<String>,
    /// Attempts per configuration at most, and seconds for retries in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_attempts: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_total_s: Option<f64>,
}

/// One measurement of a configuration: its budget and how it was judged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchAttempt {
    /// 1 for the first measurement.
    pub attempt: usize,
    /// The time budget per measurement, s (none: `iterations` alone).
    pub time_budget_s: Option<f64>,
    /// The iteration cap per measurement.
    pub iterations: usize,
    /// How long the measuring process ran, s.
    pub wall_s: f64,
    /// The judge's verdict on it: samples, CV, drift, and why not reliable.
    pub reliability: Option<crate::runtime::Reliability>,
    /// Why no further attempt was made, on the last one that stayed unreliable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

/// One target in one configuration: measured, or why not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchEntry {
    pub label: String,
    pub step: String,
    pub artifact: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_precision: Option<String>,
    pub available: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    /// Every measurement made, the reported one last (one unless a retry was needed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<BenchAttempt>,
    #[serde(flatten)]
    pub measured: Option<BenchMeasurement>,
}

/// One measurement to make: a target in one runtime configuration.
struct Config {
    label: String,
    step: String,
    artifact: &'static str,
    weights: String,
    spec: Option<BenchSpec>,
    unavailable: Option<String>,
}

fn run_child(
    spec: &BenchSpec,
    workdir: &camino::Utf8Path,
    n: usize,
) -> Result<(BenchMeasurement, f64)> {
    let spec_path = workdir.join(format!("bench-spec-{n}.json"));
    let mut spec = spec.clone();
    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("cannot find facebuild's own executable: {e}"))?;
    let t = std::time::Instant::now();
    spec.spawned_at_unix_ns = crate::runtime::bench::spawn_time();
    std::fs::write(
        &spec_path,
        serde_json::to_vec(&spec).map_err(anyhow::Error::from)?,
    )
    .map_err(|e| Error::io(&spec_path, e))?;
    let out = Command::new(exe)
        .arg("bench-target")
        .arg(&spec_path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("starting the benchmark child: {e}"))?;
    let wall = t.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        return Err(anyhow::anyhow!(
            "benchmark of {} in {} failed: {}",
            spec.artifact,
            spec.runtime,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    let v: BenchMeasurement = serde_json::from_slice(&out.stdout)
        .map_err(|e| anyhow::anyhow!("benchmark child output: {e}"))?;
    Ok((v, wall))
}

/// benchmark_app on the same IR, shape, hint and precision: (throughput FPS, median ms).
fn benchmark_app(ctx: &StepContext, spec: &BenchSpec, seconds: u64) -> Result<BenchmarkApp> {
    let exe = ctx.toolchain.info.bin_dir.join("benchmark_app");
    // benchmark_app finds the weights and the format by file name; store blobs have neither.
    let xml = ctx.workdir.join("benchmark_app-model.xml");
    let _ = std::fs::remove_file(&xml);
    let _ = std::fs::remove_file(xml.with_extension("bin"));
    let abs = |p: &camino::Utf8Path| p.canonicalize_utf8().map_err(|e| Error::io(p, e));
    std::os::unix::fs::symlink(abs(&spec.artifact)?, &xml).map_err(|e| Error::io(&xml, e))?;
    std::os::unix::fs::symlink(
        abs(&spec
            .weights
            .clone()
            .unwrap_or_else(|| spec.artifact.with_extension("bin")))?,
        xml.with_extension("bin"),
    )
    .map_err(|e| Error::io(&xml, e))?;
    // Every input: `-shape target[1,3,128,128],source[1,512]`.
    let shape = spec
        .shapes_at(1)
        .iter()
        .map(|(n, s)| {
            let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
            format!("{n}[{}]", dims.join(","))
        })
        .collect::<Vec<_>>()
        .join(",");
    // Relative to the scratch folder it runs in: the report records the arguments.
    let mut args = vec![
        "-m".to_string(),
        "benchmark_app-model.xml".to_string(),
        "-d".into(),
        "CPU".into(),
        "-hint".into(),
        spec.hint.clone().unwrap_or_default().to_lowercase(),
        "-t".into(),
        seconds.to_string(),
        "-shape".into(),
        shape,
    ];
    if let Some(p) = &spec.precision_hint {
        args.extend(["-infer_precision".to_string(), p.clone()]);
    }
    if let Some(t) = spec.threads {
        args.extend(["-nthreads".to_string(), t.to_string()]);
    }
    let out = Command::new(&exe)
        .args(&args)
        .current_dir(ctx.workdir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::toolchain(format!("cannot run {exe}: {e}")))?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let num = |key: &str| {
        text.lines()
            .find(|l| l.contains(key))
            .and_then(|l| l.split(key).nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    // Durations come as "1.43 ms" or, below a millisecond in some versions, "658.66 us".
    let ms = |key: &str| {
        let rest = text
            .lines()
            .find(|l| l.contains(key))?
            .split(key)
            .nth(1)?
            .to_string();
        let mut it = rest.split_whitespace();
        let v: f64 = it.next()?.parse().ok()?;
        Some(match it.next() {
            Some("us") => v / 1e3,
            Some("s") => v * 1e3,
            _ => v,
        })
    };
    if !out.status.success() {
        return Err(anyhow::anyhow!(
            "benchmark_app failed ({}): {}",
            out.status,
            text.lines()
                .rev()
                .take(6)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        )
        .into());
    }
    let count = num("Count:");
    let unreliable = match count {
        Some(c) if c < crate::runtime::Reliability::MIN_SAMPLES as f64 => Some(format!(
            "benchmark_app ran only {c:.0} iterations in {seconds} s (at least {}): raise `reference_seconds`",
            crate::runtime::Reliability::MIN_SAMPLES
        )),
        None => Some("benchmark_app printed no iteration count".to_string()),
        _ => None,
    };
    Ok(BenchmarkApp {
        tool: "benchmark_app".into(),
        throughput_fps: num("Throughput:"),
        median_ms: ms("Median:"),
        count,
        first_inference_ms: ms("First inference took"),
        args,
        throughput_ratio: None,
        median_latency_ratio: None,
        unreliable,
    })
}

/// An engine measured by trtexec: a one-inference run for the process-level cold start
/// (deserializing the engine included), then the measured run, parsed into the shared schema.
fn trtexec_bench(
    ctx: &StepContext,
    spec: &BenchSpec,
    p: &BenchmarkParams,
) -> Result<(BenchMeasurement, f64)> {
    let trt = ctx
        .tensorrt
        .ok_or_else(|| anyhow::anyhow!("TensorRT is not available"))?;
    let run = |args: Vec<String>| -> Result<(String, f64)> {
        let t = std::time::Instant::now();
        let out = Command::new(&trt.trtexec)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::toolchain(format!("cannot run {}: {e}", trt.trtexec)))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(anyhow::anyhow!(
                "trtexec {} failed: {}",
                args.join(" "),
                text.lines()
                    .filter(|l| l.contains("[E]"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
            .into());
        }
        Ok((text, t.elapsed().as_secs_f64() * 1e3))
    };
    let (_, cold) = run(crate::runtime::tensorrt::bench_args(
        &spec.artifact,
        &spec.shapes_at(1),
        0,
        1,
        0,
    ))?;
    let mut throughput = Vec::new();
    let mut first = None;
    for &b in &p.batch_sizes {
        let secs = p.time_budget_s.map(|t| t.ceil() as u64).unwrap_or(3);
        match run(crate::runtime::tensorrt::bench_args(
            &spec.artifact,
            &spec.shapes_at(b),
            200,
            p.iterations,
            secs,
        )) {
            Ok((text, _)) => {
                let perf = crate::runtime::tensorrt::parse_trtexec_perf(&text)
                    .ok_or_else(|| anyhow::anyhow!("trtexec printed no performance summary"))?;
                let v = crate::runtime::tensorrt::perf_to_schema(&perf, b, &trt.version, &trt.gpu);
                throughput.extend(v.throughput.first().cloned());
                if b == 1 || first.is_none() {
                    first = Some(v);
                }
            }
            Err(e) => throughput.push(ThroughputPoint::unsupported(b, &e.to_string())),
        }
    }
    let mut v = first
        .ok_or_else(|| anyhow::anyhow!("trtexec could not run the engine at any batch size"))?;
    v.throughput = throughput;
    v.cold_start = Some(ColdStart {
        spawn_to_first_output_ms: cold,
        load_ms: None,
        compile_ms: None,
        first_inference_ms: None,
        note: Some("one trtexec process: deserialize + 1 inference".into()),
    });
    Ok((v, cold))
}

/// Measure one configuration in its own process; while the judge finds it unreliable, measure
/// it again with twice the budget (and at least what the judge asks for), within
/// `retry.attempts` and the step's `retry.total_s`. Returns the last measurement, its wall
/// time, and every attempt.
fn measure_with_retries(
    ctx: &StepContext,
    spec: &BenchSpec,
    p: &BenchmarkParams,
    k: usize,
    label: &str,
    spent_s: &mut f64,
) -> Result<(BenchMeasurement, f64, Vec<BenchAttempt>)> {
    let mut spec = spec.clone();
    let mut attempts: Vec<BenchAttempt> = Vec::new();
    loop {
        let n = attempts.len() + 1;
        let started = std::time::Instant::now();
        let (v, wall) = run_child(&spec, ctx.workdir, k * 100 + n)?;
        let wall_s = started.elapsed().as_secs_f64();
        if n > 1 {
            *spent_s += wall_s;
        }
        let reliability = v.reliability.clone();
        attempts.push(BenchAttempt {
            attempt: n,
            time_budget_s: spec.time_budget_ms.map(|ms| ms as f64 / 1e3),
            iterations: spec.iterations,
            wall_s,
            reliability: reliability.clone(),
            stopped: None,
        });
        if reliability.as_ref().is_none_or(|r| r.reliable) {
            return Ok((v, wall, attempts));
        }
        // The next budget: twice this one, and never below what the judge needs.
        let min_ms = (crate::runtime::Reliability::MIN_TIMED_S * 1.5 * 1e3) as u64;
        let next_ms = spec.time_budget_ms.map(|ms| (ms * 2).max(min_ms));
        // Iterations too: when the cap ended the measurement early, scale it to the time
        // the judge asks for.
        let want_s = crate::runtime::Reliability::MIN_TIMED_S * 1.5;
        let scaled = reliability
            .as_ref()
            .filter(|r| r.timed_s > 0.0 && r.timed_s < want_s)
            .map(|r| (spec.iterations as f64 * want_s / r.timed_s).ceil() as usize)
            .unwrap_or(0);
        let next_iters = spec
            .iterations
            .saturating_mul(2)
            .max(scaled)
            .clamp(crate::runtime::Reliability::MIN_SAMPLES * 2, 10_000_000);
        // This attempt's cost, scaled to the next budget: what a retry would take.
        let estimate_s = wall_s * 2.0;
        let stop = if n >= p.retry.attempts {
            Some(format!("{n} of {} attempts made", p.retry.attempts))
        } else if *spent_s + estimate_s > p.retry.total_s {
            Some(format!(
                "the next attempt (about {estimate_s:.1} s) would pass the step's {:.0} s for retries ({:.1} s spent)",
                p.retry.total_s, *spent_s
            ))
        } else if ctx.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            Some("interrupted".into())
        } else {
            None
        };
        if let Some(why) = stop {
            if let Some(last) = attempts.last_mut() {
                last.stopped = Some(why);
            }
            return Ok((v, wall, attempts));
        }
        ctx.progress.set_message(format!(
            "{label}: unreliable ({}), attempt {} with {}",
            reliability
                .as_ref()
                .map(|r| r.brief.join(", "))
                .unwrap_or_default(),
            n + 1,
            next_ms
                .map(|ms| format!("{:.1} s", ms as f64 / 1e3))
                .unwrap_or_else(|| format!("{next_iters} iterations"))
        ));
        match next_ms {
            Some(ms) => {
                spec.time_budget_ms = Some(ms);
                spec.iterations = spec.iterations.max(next_iters);
            }
            None => spec.iterations = next_iters,
        }
    }
}

/// One line of report.md per attempt: its budget and the judge's figures.
fn describe_attempt(a: &BenchAttempt) -> String {
    let r = a.reliability.as_ref();
    let f = |x: Option<f64>| x.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
    format!(
        "  - attempt {}: budget {} ({} iterations at most), {:.1} s: {} samples in {:.2} s, CV {}, drift {}: {}{}",
        a.attempt,
        a.time_budget_s
            .map(|t| format!("{t:.2} s"))
            .unwrap_or_else(|| "none".into()),
        a.iterations,
        a.wall_s,
        r.map(|r| r.samples).unwrap_or(0),
        r.map(|r| r.timed_s).unwrap_or(0.0),
        f(r.and_then(|r| r.latency_cv)),
        f(r.and_then(|r| r.drift)),
        match r {
            Some(r) if r.reliable => "reliable".to_string(),
            Some(r) => format!("unreliable ({})", r.brief.join(", ")),
            None => "not judged".to_string(),
        },
        a.stopped
            .as_deref()
            .map(|s| format!("; no retry: {s}"))
            .unwrap_or_default()
    )
}

pub(crate) fn run(ctx: &StepContext, p: &BenchmarkParams) -> Result<StepOutcome> {
    let step = &ctx.step.name;
    let decl = &ctx.manifest.model.input;
    let shape: Vec<i64> = ctx
        .manifest
        .concrete_shape(&decl.shape)
        .into_iter()
        .enumerate()
        .map(|(i, d)| if i == 0 { 1 } else { d as i64 })
        .collect();
    let base = base_spec(ctx, p, &shape);
    let configs = configs(ctx, p, &base)?;

    let machine = machine();
    let mut results = Vec::new();
    let mut rows = Vec::new();
    // Measurements too short or too noisy to trust, with why.
    let mut unreliable: Vec<String> = Vec::new();
    let total = configs.iter().filter(|c| c.spec.is_some()).count();
    let mut k = 0;
    // Seconds spent on retries so far, against `retry.total_s`.
    let mut retry_spent_s = 0.0;
    let mut attempt_lines: Vec<String> = Vec::new();
    for c in &configs {
        ctx.check_cancelled()?;
        let Some(spec) = &c.spec else {
            let (row, entry) = unavailable(c);
            rows.push(row);
            results.push(entry);
            continue;
        };
        k += 1;
        ctx.progress.set_message(format!(
            "[{k}/{total}] {}: cold start, {} warm-up + {} iterations{}",
            c.label,
            p.warmup,
            p.iterations,
            p.time_budget_s
                .map(|t| format!(" (or {t} s)"))
                .unwrap_or_default()
        ));
        let (v, attempts) = measure(ctx, p, spec, (k, total), &c.label, &mut retry_spent_s)?;
        let reasons: Vec<String> = v
            .reliability
            .iter()
            .flat_map(|r| r.reasons.clone())
            .chain(v.reference.iter().filter_map(|r| r.unreliable.clone()))
            .collect();
        if !reasons.is_empty() {
            unreliable.push(format!("- {}: {}", c.label, reasons.join("; ")));
        }
        if attempts.len() > 1 {
            attempt_lines.push(format!("- {}:", c.label));
            attempt_lines.extend(attempts.iter().map(describe_attempt));
        }
        rows.push(row(c, &v, reasons.is_empty()));
        results.push(BenchEntry {
            label: c.label.clone(),
            step: c.step.clone(),
            artifact: c.artifact.into(),
            artifact_precision: Some(c.weights.clone()),
            available: true,
            unavailable: None,
            attempts,
            measured: Some(v),
        });
    }
    let report = BenchmarkReport {
        schema: SCHEMA.into(),
        step: step.clone(),
        kind: "benchmark".into(),
        machine,
        input: BenchInput {
            name: decl.name.clone(),
            shape_batch1: shape.clone(),
        },
        params: BenchParamsEcho {
            batch_sizes: p.batch_sizes.clone(),
            warmup: p.warmup,
            iterations: p.iterations,
            time_budget_s: p.time_budget_s,
            threads: p.threads,
            openvino_hints: p.openvino_hints.clone(),
            precision_hint: p.precision_hint.clone(),
            retry_attempts: Some(p.retry.attempts),
            retry_total_s: Some(p.retry.total_s),
        },
        results,
        toolchain: ctx.toolchain.fingerprint(TOOLCHAIN),
    };
    let report_path = super::write_report(ctx.workdir, "report.json", &report)?;
    let md = markdown(
        ctx,
        p,
        &report,
        &shape,
        (&rows, &attempt_lines, &unreliable),
    );
    let md_path = ctx.workdir.join("report.md");
    std::fs::write(&md_path, md).map_err(|e| Error::io(&md_path, e))?;
    let summary = summary(step, &report, total, unreliable.len());
    Ok(StepOutcome {
        outputs: [
            ("report.json".to_string(), report_path),
            ("report.md".to_string(), md_path),
        ]
        .into(),
        summary,
    })
}

/// What every configuration's child is given; each sets its runtime and artifact.
fn base_spec(ctx: &StepContext, p: &BenchmarkParams, shape: &[i64]) -> BenchSpec {
    let decl = &ctx.manifest.model.input;
    BenchSpec {
        toolchain_dir: ctx.toolchain.dir.clone(),
        runtime: String::new(),
        artifact: Default::default(),
        weights: None,
        input_name: decl.name.clone(),
        input_shape: shape.to_vec(),
        extra_inputs: ctx
            .manifest
            .model
            .extra_inputs
            .iter()
            .map(|i| {
                let s = ctx.manifest.concrete_shape_of(i, &i.shape);
                (i.name.clone(), s.into_iter().map(|d| d as i64).collect())
            })
            .collect(),
        batch_sizes: p.batch_sizes.clone(),
        warmup: p.warmup,
        iterations: p.iterations,
        time_budget_ms: p.time_budget_s.map(|s| (s * 1000.0) as u64),
        threads: p.threads,
        precision_hint: None,
        hint: None,
        spawned_at_unix_ns: 0,
    }
}

/// An unavailable target's row and entry.
fn unavailable(c: &Config) -> (String, BenchEntry) {
    let row = format!(
        "| {} | {} | unavailable: {} | - | - | - | - | - | - | - | - | - |",
        c.label,
        c.artifact,
        c.unavailable.clone().unwrap_or_default()
    );
    let entry = BenchEntry {
        label: c.label.clone(),
        step: c.step.clone(),
        artifact: c.artifact.into(),
        artifact_precision: None,
        available: false,
        unavailable: c.unavailable.clone(),
        attempts: Vec::new(),
        measured: None,
    };
    (row, entry)
}

/// The step's summary: what was measured, the fastest at batch 1, retries and unreliable
/// figures (with a warning).
fn summary(
    step: &str,
    report: &BenchmarkReport,
    measured: usize,
    unreliable: usize,
) -> serde_json::Value {
    let best = report
        .results
        .iter()
        .filter_map(|r| {
            let m = r.measured.as_ref()?.latency_batch1_ms.as_ref()?.median?;
            Some((m, r.label.clone()))
        })
        .min_by(|a, b| a.0.total_cmp(&b.0));
    let mut summary = json!({"targets": report.results.len(), "measured": measured, "fastest_p50": best.map(|(m, l)| format!("{l} {m:.2} ms")).unwrap_or_default()});
    let retried = report
        .results
        .iter()
        .filter(|r| r.attempts.len() > 1)
        .count();
    if retried > 0 {
        summary["retried"] = json!(retried);
    }
    if unreliable > 0 {
        summary["unreliable"] = json!(unreliable);
        tracing::warn!(
            "benchmark `{step}`: {} measurement(s) too short or too noisy to trust; see its report.md",
            unreliable
        );
    }
    summary
}

/// Every (target, configuration) to measure, or why a target cannot be.
fn configs(ctx: &StepContext, p: &BenchmarkParams, base: &BenchSpec) -> Result<Vec<Config>> {
    let step = &ctx.step.name;
    let mut configs = Vec::new();
    for t in &p.targets {
        let label = t.label();
        let hint = t
            .detail()
            .and_then(|d| d.precision_hint.clone())
            .or_else(|| p.precision_hint.clone())
            .filter(|h| h != "default");
        let Some(outputs) = ctx.upstream.get(t.step()) else {
            configs.push(Config {
                label,
                step: t.step().into(),
                artifact: "-",
                weights: "-".into(),
                spec: None,
                unavailable: Some(super::unavailable_upstream(t.step())),
            });
            continue;
        };
        let info = super::artifact_info(outputs)?;
        let weights = info.precision.clone();
        if let (Some(xml), Some(bin)) = (outputs.get("model.xml"), outputs.get("model.bin")) {
            for h in &p.openvino_hints {
                let spec = BenchSpec {
                    runtime: "openvino".into(),
                    artifact: xml.clone(),
                    weights: Some(bin.clone()),
                    precision_hint: hint.clone(),
                    hint: Some(h.ov().into()),
                    ..base.clone()
                };
                configs.push(Config {
                    label: format!("{label} [{}]", h.ov().to_lowercase()),
                    step: t.step().into(),
                    artifact: "openvino-ir",
                    weights: weights.clone(),
                    spec: Some(spec),
                    unavailable: None,
                });
            }
        } else if let Some(onnx) = outputs.get("model.onnx") {
            let spec = BenchSpec {
                runtime: "onnxruntime".into(),
                artifact: onnx.clone(),
                ..base.clone()
            };
            configs.push(Config {
                label,
                step: t.step().into(),
                artifact: "onnx",
                weights,
                spec: Some(spec),
                unavailable: None,
            });
        } else if let Some(engine) = outputs.get("model.engine") {
            let why = if info.standin {
                Some(super::STANDIN_ENGINE.to_string())
            } else if ctx.tensorrt.is_none() {
                Some("TensorRT is not installed here: engines are benchmarked on the GPU machine that built them".to_string())
            } else {
                None
            };
            // The engine's benchmark is trtexec's own: the spec carries what it needs.
            let spec = why.is_none().then(|| BenchSpec {
                runtime: "tensorrt".into(),
                artifact: engine.clone(),
                ..base.clone()
            });
            configs.push(Config {
                label,
                step: t.step().into(),
                artifact: "tensorrt-engine",
                weights,
                spec,
                unavailable: why,
            });
        } else {
            return Err(Error::Step {
                step: step.clone(),
                message: format!("target `{}` has no model output", t.step()),
                hint: Some("targets are convert, quantize or simplify steps".into()),
            });
        }
    }
    Ok(configs)
}

/// Measure one configuration (`k` of `total`): in a fresh child with retries, or trtexec
/// for an engine; with benchmark_app beside it when asked. The attempts, when retried.
fn measure(
    ctx: &StepContext,
    p: &BenchmarkParams,
    spec: &BenchSpec,
    (k, total): (usize, usize),
    label: &str,
    retry_spent_s: &mut f64,
) -> Result<(BenchMeasurement, Vec<BenchAttempt>)> {
    let (mut v, wall, attempts) = if spec.runtime == "tensorrt" {
        let (v, wall) = trtexec_bench(ctx, spec, p)?;
        (v, wall, Vec::new())
    } else {
        measure_with_retries(ctx, spec, p, k, label, retry_spent_s)?
    };
    v.child_wall_ms = Some(wall);
    if p.reference == Some(Reference::BenchmarkApp) && spec.runtime == "openvino" {
        ctx.progress.set_message(format!(
            "[{k}/{total}] {}: benchmark_app for {} s",
            label, p.reference_seconds
        ));
        let mut r = benchmark_app(ctx, spec, p.reference_seconds)?;
        let b1 = v.batch1();
        r.throughput_ratio = b1
            .and_then(|x| x.images_per_s)
            .zip(r.throughput_fps)
            .map(|(a, b)| a / b);
        r.median_latency_ratio = b1
            .and_then(|x| x.latency_ms.as_ref()?.median)
            .zip(r.median_ms)
            .map(|(a, b)| a / b);
        v.reference = Some(r);
    }
    Ok((v, attempts))
}

/// The configuration's row of report.md's table.
fn row(c: &Config, v: &BenchMeasurement, reliable: bool) -> String {
    let f = |x: Option<f64>| x.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
    let tput: Vec<String> = v
        .throughput
        .iter()
        .map(|t| match t.images_per_s {
            Some(ips) => format!("b{}: {ips:.0}/s", t.batch),
            None => format!("b{}: unsupported", t.batch),
        })
        .collect();
    let lat = v.latency_batch1_ms.clone().unwrap_or_default();
    format!(
        "| {} | {} {} | {} {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        c.label,
        c.artifact,
        c.weights,
        v.execution.runtime,
        v.execution.precision,
        f(v.cold_start.as_ref().map(|c| c.spawn_to_first_output_ms)),
        f(lat.median),
        f(lat.p90),
        f(lat.p99),
        f(lat.max),
        tput.join(", "),
        f(v.peak_rss_mib),
        v.reference
            .as_ref()
            .and_then(|r| r.throughput_ratio.map(|x| (x, r.throughput_fps)))
            .map(|(x, fps)| format!("{x:.3} ({:.0}/s)", fps.unwrap_or(f64::NAN)))
            .unwrap_or_else(|| "-".into()),
        if reliable { "yes" } else { "**no**" },
    )
}

/// report.md: the machine, the table, retried and unreliable measurements.
fn markdown(
    ctx: &StepContext,
    p: &BenchmarkParams,
    report: &BenchmarkReport,
    shape: &[i64],
    (rows, attempt_lines, unreliable): (&[String], &[String], &[String]),
) -> String {
    let (step, decl) = (&ctx.step.name, &ctx.manifest.model.input);
    let mut md = format!(
        "# benchmark `{step}` — pipeline `{}`\n\nMachine: {} ({} logical cores; {}{}). Input {} {:?} (batch 1 for latency). Each row is its own fresh process.\n\n",
        ctx.manifest.name,
        report.machine.cpu,
        report.machine.logical_cores,
        report.machine.isa.join(" "),
        report
            .machine
            .gpu
            .as_deref()
            .map(|g| format!("; GPU {g}"))
            .unwrap_or_default(),
        decl.name,
        shape
    );
    md += "| target | artifact | executed | cold start ms | p50 ms | p90 ms | p99 ms | max ms | throughput | peak RSS MiB | vs benchmark_app (b1 throughput) | reliable |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for r in rows {
        md += r;
        md.push('\n');
    }
    if !attempt_lines.is_empty() {
        md += &format!(
            "\nRetried measurements (at most {} attempts each, {:.0} s of retries in all; the last attempt is the one reported):\n",
            p.retry.attempts, p.retry.total_s
        );
        for l in attempt_lines {
            md += l;
            md.push('\n');
        }
    }
    if !unreliable.is_empty() {
        md += "\nUnreliable figures (release gates on them fail unless they say `unreliable: pass`):\n";
        for u in unreliable {
            md += u;
            md.push('\n');
        }
    }
    md
}

impl super::Kind for BenchmarkParams {
    fn impl_version(&self) -> u32 {
        IMPL_VERSION
    }
    fn toolchain_pieces(&self) -> Vec<&'static str> {
        TOOLCHAIN.to_vec()
    }
    fn references(&self) -> Vec<String> {
        self.targets.iter().map(|c| c.step().to_string()).collect()
    }
    fn exclusive(&self) -> bool {
        true
    }
    fn measures_machine(&self) -> bool {
        true
    }
    fn may_use_tensorrt(&self) -> bool {
        true
    }
    fn check_reference(
        &self,
        target: &str,
        kind: super::StepKind,
    ) -> std::result::Result<(), super::Problem> {
        super::expect_artifact(target, kind)
    }
    fn validate(&self) -> Vec<super::Problem> {
        BenchmarkParams::validate(self).err().into_iter().collect()
    }
    fn run(&self, ctx: &StepContext) -> Result<StepOutcome> {
        run(ctx, self)
    }
}
