//! `benchmark`: latency, throughput, cold start and peak memory of each target artifact, in
//! each runtime configuration, each measured in several fresh child processes
//! (`facebuild bench-target`, see runtime/bench.rs) so that nothing warm in one process
//! flatters another, and every figure's interval spans the processes. Processes run in
//! rounds, every configuration once per round in turn (A B A B...), so two configurations of
//! one round saw about the same machine and their ratio cancels its load. While a release's
//! speed gate on these figures is inconclusive, the step adds rounds for the configurations
//! it reads, within `retry:`. ONNX Runtime runs with the declared thread count; OpenVINO with each
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
use crate::runtime::{BenchMeasurement, ColdStart, ThroughputPoint};

mod figures;
mod machine;
mod reference;
mod report_md;

pub(crate) use figures::{Figures, ProcessRun, Ratio};
pub(crate) use figures::{SpeedGates, gate_figure};
pub(crate) use machine::Machine;
pub(crate) use machine::{isa_class, machine, machine_fingerprint};
pub(crate) use reference::Agreement;

/// v2: the report is typed and carries `schema`.
/// v3: benchmark_app's recorded arguments hold no scratch path.
/// v4: each measurement says whether it is reliable (long and steady enough).
/// v5: an unreliable measurement is measured again with a longer budget (`retry:`), and
/// every attempt is reported.
/// v6: every figure is measured across fresh processes in interleaved rounds and carries an
/// interval; rounds are added while a release's speed gate is inconclusive.
pub(crate) const IMPL_VERSION: u32 = 6;
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
    /// ...or a time budget per measurement, whichever ends first (per process).
    #[serde(default)]
    pub time_budget_s: Option<f64>,
    /// Fresh processes per configuration, in interleaved rounds: the intervals span them,
    /// and cold start and peak RSS have one figure per process (at least 2).
    #[serde(default = "default_processes")]
    pub processes: usize,
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
    /// Measure each IR with OpenVINO's benchmark_app too, in every round, and report the
    /// ratio with its interval.
    #[serde(default)]
    pub reference: Option<Reference>,
    /// No longer used: benchmark_app runs as many inferences as facebuild's own process
    /// timed, in as many processes (kept so older manifests still read).
    #[serde(default, skip_serializing)]
    #[allow(dead_code)]
    pub reference_seconds: Option<u64>,
    /// While a release's speed gate on these figures is inconclusive, more rounds are
    /// measured for the configurations it reads, within these bounds.
    #[serde(default)]
    pub retry: Retry,
}

/// How far the benchmark goes to decide an inconclusive speed gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Retry {
    /// Processes per configuration at most, the first `processes` included.
    #[serde(default = "default_attempts")]
    pub attempts: usize,
    /// Seconds the step may spend on added rounds, over all its configurations.
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
    8
}
fn default_processes() -> usize {
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
        if self.processes < 2 {
            return Err((
                format!(
                    "`processes: {}` gives no interval: cold start and peak RSS have one figure per process",
                    self.processes
                ),
                Some("measure in at least 2 processes (3 is the default)".into()),
            ));
        }
        if self.retry.attempts == 0 || self.retry.total_s.is_nan() || self.retry.total_s < 0.0 {
            return Err((
                "`retry.attempts` must be at least 1 and `retry.total_s` at least 0".into(),
                Some("`retry: {attempts: 1}` adds no rounds to an inconclusive gate".into()),
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
    /// Rounds measured: every configuration once each in the first `processes`, then the
    /// configurations of inconclusive gates.
    #[serde(default)]
    pub rounds: usize,
    /// Rounds added for inconclusive gates, and why they stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequential: Option<String>,
    /// Paired speed ratios a release's `speedup_min` gates read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ratios: Vec<Ratio>,
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

    /// The paired ratios of `artifact` over `over`.
    pub fn ratios_for<'a>(&'a self, artifact: &'a str, over: &'a str) -> Vec<&'a Ratio> {
        self.ratios
            .iter()
            .filter(|r| r.artifact == artifact && r.over == over)
            .collect()
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
    /// Processes per configuration in the first rounds.
    #[serde(default)]
    pub processes: usize,
    /// Processes per configuration at most, and seconds for added rounds in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_attempts: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_total_s: Option<f64>,
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
    /// Every process that measured it, in the order run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<ProcessRun>,
    /// Its figures, with intervals over the processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub figures: Option<Figures>,
    /// facebuild's throughput against benchmark_app's, over rounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement: Option<Agreement>,
    /// Every process pooled: all latencies, mean throughput, cold start and RSS.
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

/// One process of configuration `c` in round `round`: a fresh child (trtexec for an
/// engine), with benchmark_app beside it in the first rounds when asked.
fn measure_process(
    ctx: &StepContext,
    p: &BenchmarkParams,
    c: &Config,
    spec: &BenchSpec,
    round: usize,
    k: usize,
) -> Result<ProcessRun> {
    let started = std::time::Instant::now();
    let (mut v, wall) = if spec.runtime == "tensorrt" {
        trtexec_bench(ctx, spec, p)?
    } else {
        run_child(spec, ctx.workdir, round * 1000 + k)?
    };
    v.child_wall_ms = Some(wall);
    if p.reference == Some(Reference::BenchmarkApp)
        && spec.runtime == "openvino"
        && round <= p.processes
    {
        let ours = v.batch1().and_then(|x| x.images_per_s);
        // As many inferences as facebuild's own process timed: the same seconds.
        let niter = match (ours, p.time_budget_s) {
            (Some(ips), Some(t)) => ((ips * t).round() as usize).clamp(10, p.iterations.max(10)),
            _ => p.iterations,
        };
        ctx.progress.set_message(format!(
            "round {round}: {}: benchmark_app, {niter} inferences",
            c.label
        ));
        let mut r = reference::benchmark_app(ctx, spec, niter)?;
        r.throughput_ratio = ours.zip(r.throughput_fps).map(|(a, b)| a / b);
        r.median_latency_ratio = v
            .latency_batch1_ms
            .as_ref()
            .and_then(|l| l.median)
            .zip(r.median_ms)
            .map(|(a, b)| a / b);
        v.reference = Some(r);
    }
    Ok(ProcessRun {
        round,
        wall_s: started.elapsed().as_secs_f64(),
        measured: v,
    })
}

/// Recompute every entry's figures, pooled measurement and agreement, and the ratios.
pub(crate) fn refresh(report: &mut BenchmarkReport, pairs: &[(String, String)]) {
    for e in report
        .results
        .iter_mut()
        .filter(|e| !e.processes.is_empty())
    {
        e.figures = Some(Figures::of(&e.processes));
        let ratios: Vec<f64> = e
            .processes
            .iter()
            .filter_map(|p| p.measured.reference.as_ref()?.throughput_ratio)
            .collect();
        e.agreement = reference::agreement(&ratios);
        let mut m = figures::pooled(&e.processes);
        if let Some(m) = m.as_mut() {
            let refs: Vec<&crate::runtime::BenchmarkApp> = e
                .processes
                .iter()
                .filter_map(|p| p.measured.reference.as_ref())
                .collect();
            m.reference = refs.first().map(|r| {
                let mut r = (*r).clone();
                let fps: Vec<f64> = refs.iter().filter_map(|r| r.throughput_fps).collect();
                r.throughput_fps =
                    (!fps.is_empty()).then(|| fps.iter().sum::<f64>() / fps.len() as f64);
                r.throughput_ratio = e.agreement.as_ref().map(|a| a.throughput_ratio.value);
                r
            });
        }
        e.measured = m;
    }
    report.ratios = pairs
        .iter()
        .flat_map(|(a, o)| figures::ratios(&report.results, a, o))
        .collect();
}

/// The speed gates the manifest's releases set on this benchmark's artifacts: the
/// benchmark measures until they are decided, so they are part of its key.
pub(crate) fn speed_gates(manifest: &crate::manifest::Manifest, step: &str) -> Vec<SpeedGates> {
    let mut out = Vec::new();
    for s in manifest.steps.values() {
        let super::StepParams::Release(r) = &s.spec.params else {
            continue;
        };
        if r.benchmark.as_deref() != Some(step) {
            continue;
        }
        for a in &r.artifacts {
            let g = r.gates.overridden_by(r.artifact_gates.get(a));
            let gates = crate::metrics::gate::Gates {
                speedup_min: g.speedup_min.clone(),
                p99_ms_max: g.p99_ms_max,
                p50_ms_max: g.p50_ms_max,
                throughput_min: g.throughput_min,
                rss_mib_max: g.rss_mib_max,
                cold_start_ms_max: g.cold_start_ms_max,
                confidence: g.confidence,
                inconclusive: g.inconclusive.or(g.unreliable),
                ..Default::default()
            };
            if !gates
                .set_among(crate::metrics::gate::PERFORMANCE)
                .is_empty()
            {
                out.push(SpeedGates {
                    artifact: a.clone(),
                    gates,
                });
            }
        }
    }
    out
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
    let wanted = speed_gates(ctx.manifest, step);
    let pairs: Vec<(String, String)> = wanted
        .iter()
        .filter_map(|w| {
            Some((
                w.artifact.clone(),
                w.gates.speedup_min.as_ref()?.over.clone(),
            ))
        })
        .collect();
    let mut report = BenchmarkReport {
        schema: SCHEMA.into(),
        step: step.clone(),
        kind: "benchmark".into(),
        machine: machine(),
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
            processes: p.processes,
            retry_attempts: Some(p.retry.attempts),
            retry_total_s: Some(p.retry.total_s),
        },
        results: configs.iter().map(entry).collect(),
        rounds: 0,
        ratios: Vec::new(),
        sequential: None,
        toolchain: ctx.toolchain.fingerprint(TOOLCHAIN),
    };
    let measurable: Vec<usize> = (0..configs.len())
        .filter(|&i| configs[i].spec.is_some())
        .collect();
    // The first rounds: every configuration once per round, in turn.
    for round in 1..=p.processes {
        run_round(ctx, p, &configs, &mut report, (&measurable, None), round)?;
    }
    refresh(&mut report, &pairs);
    report.sequential = add_rounds(
        ctx,
        p,
        &configs,
        &mut report,
        &measurable,
        (&wanted, &pairs),
    )?;
    let report_path = super::write_report(ctx.workdir, "report.json", &report)?;
    let md_path = ctx.workdir.join("report.md");
    let md = report_md::markdown(ctx, p, &report, &configs_meta(&configs));
    std::fs::write(&md_path, md).map_err(|e| Error::io(&md_path, e))?;
    let summary = summary(&report, measurable.len());
    Ok(StepOutcome {
        outputs: [
            ("report.json".to_string(), report_path),
            ("report.md".to_string(), md_path),
        ]
        .into(),
        summary,
    })
}

/// Round `round` over the configurations `which` (indices into `configs`), in turn, each
/// process with the step's time budget or, when given, a longer one (seconds).
fn run_round(
    ctx: &StepContext,
    p: &BenchmarkParams,
    configs: &[Config],
    report: &mut BenchmarkReport,
    (which, budget_s): (&[usize], Option<f64>),
    round: usize,
) -> Result<()> {
    for (k, &i) in which.iter().enumerate() {
        ctx.check_cancelled()?;
        let (c, Some(spec)) = (&configs[i], &configs[i].spec) else {
            continue;
        };
        let longer;
        let spec = match budget_s {
            Some(s) if spec.time_budget_ms.is_some_and(|ms| (ms as f64) < s * 1e3) => {
                let mut x = spec.clone();
                x.time_budget_ms = Some((s * 1e3) as u64);
                x.iterations = x.iterations.max(1_000_000);
                longer = x;
                &longer
            }
            _ => spec,
        };
        ctx.progress.set_message(format!(
            "round {round}: [{}/{}] {}: fresh process, {} warm-up + {} iterations{}",
            k + 1,
            which.len(),
            c.label,
            p.warmup,
            p.iterations,
            p.time_budget_s
                .map(|t| format!(" (or {t} s)"))
                .unwrap_or_default()
        ));
        let run = measure_process(ctx, p, c, spec, round, k)?;
        report.results[i].processes.push(run);
    }
    report.rounds = report.rounds.max(round);
    Ok(())
}

/// While a speed gate is inconclusive, measure the configurations it reads in another round,
/// within `retry:`. What was added and why it stopped, for the report.
fn add_rounds(
    ctx: &StepContext,
    p: &BenchmarkParams,
    configs: &[Config],
    report: &mut BenchmarkReport,
    measurable: &[usize],
    (wanted, pairs): (&[SpeedGates], &[(String, String)]),
) -> Result<Option<String>> {
    let (mut spent, mut added) = (0.0f64, 0usize);
    loop {
        let open = figures::undecided(report, wanted);
        let which: Vec<usize> = measurable
            .iter()
            .copied()
            .filter(|&i| open.contains(&configs[i].label))
            .collect();
        if which.is_empty() {
            return Ok((added > 0).then(|| {
                format!("{added} round(s) added ({spent:.1} s) until every speed gate was decided")
            }));
        }
        let most = which
            .iter()
            .map(|&i| report.results[i].processes.len())
            .max()
            .unwrap_or(0);
        let estimate: f64 = which
            .iter()
            .filter_map(|&i| report.results[i].processes.last().map(|r| r.wall_s))
            .sum();
        let stop = if most >= p.retry.attempts {
            Some(format!(
                "{most} of `retry.attempts: {}` processes measured",
                p.retry.attempts
            ))
        } else if spent + estimate > p.retry.total_s {
            Some(format!(
                "another round (about {estimate:.1} s) would pass `retry.total_s: {}` ({spent:.1} s spent)",
                p.retry.total_s
            ))
        } else if ctx.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            Some("interrupted".into())
        } else {
            None
        };
        if let Some(why) = stop {
            return Ok(Some(format!(
                "{added} round(s) added; {} still inconclusive, stopped: {why}",
                open.join(", ")
            )));
        }
        let t = std::time::Instant::now();
        let round = report.rounds + 1;
        // A p99 whose upper end is open needs samples more than processes: give this round's
        // processes the time to take what is missing, within what is left of the budget.
        let budget = which
            .iter()
            .filter_map(|&i| {
                let f = report.results[i].figures.as_ref()?.p99_ms.as_ref()?;
                let open = f.open_above.as_ref()?;
                let missing = open.needed[1].saturating_sub(open.samples) as f64;
                let per_sample_s = report.results[i].figures.as_ref()?.p50_ms.as_ref()?.value / 1e3;
                // Twice the time: latencies on a busy machine grow while it measures.
                (missing > 0.0).then_some(missing * per_sample_s * 2.0)
            })
            .reduce(f64::max)
            .map(|s| s.min((p.retry.total_s - spent) / which.len().max(1) as f64 / 2.0));
        run_round(ctx, p, configs, report, (&which, budget), round)?;
        spent += t.elapsed().as_secs_f64();
        added += 1;
        refresh(report, pairs);
    }
}

/// A configuration's entry before it is measured (or why it cannot be).
fn entry(c: &Config) -> BenchEntry {
    BenchEntry {
        label: c.label.clone(),
        step: c.step.clone(),
        artifact: c.artifact.into(),
        artifact_precision: c.spec.as_ref().map(|_| c.weights.clone()),
        available: c.spec.is_some(),
        unavailable: c.unavailable.clone(),
        processes: Vec::new(),
        figures: None,
        agreement: None,
        measured: None,
    }
}

/// What report.md says of each configuration beyond its entry: its artifact's precision.
fn configs_meta(configs: &[Config]) -> Vec<(String, String)> {
    configs
        .iter()
        .map(|c| (c.label.clone(), format!("{} {}", c.artifact, c.weights)))
        .collect()
}

/// The step's summary: what was measured, the fastest at batch 1, rounds, disagreements with
/// benchmark_app.
fn summary(report: &BenchmarkReport, measured: usize) -> serde_json::Value {
    let best = report
        .results
        .iter()
        .filter_map(|r| Some((r.figures.as_ref()?.p50_ms.as_ref()?.value, r.label.clone())))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    let mut summary = json!({
        "targets": report.results.len(),
        "measured": measured,
        "rounds": report.rounds,
        "fastest_p50": best.map(|(m, l)| format!("{l} {m:.2} ms")).unwrap_or_default(),
    });
    let flagged = report
        .results
        .iter()
        .filter(|e| e.agreement.as_ref().is_some_and(|a| !a.agrees))
        .count();
    if flagged > 0 {
        summary["disagrees_with_benchmark_app"] = json!(flagged);
    }
    if let Some(s) = &report.sequential {
        summary["added_rounds"] = json!(s);
    }
    summary
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
    fn key_extra(
        &self,
        manifest: &crate::manifest::Manifest,
        step: &str,
    ) -> Option<serde_json::Value> {
        let gates = speed_gates(manifest, step);
        (!gates.is_empty()).then(|| json!(gates))
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
