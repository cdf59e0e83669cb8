//! A configuration's figures with their intervals, from the fresh processes that measured it
//! (facebuild-metrics' `speed`), paired ratios between artifacts, and the figure a speed gate
//! reads: the one place `benchmark` (deciding whether to add processes) and `release`
//! (deciding the verdict) both take it from.

use crate::metrics::gate::{GateResult, Gates, Measurement, Metric};
use crate::metrics::speed::{self, SpeedFigure};
use crate::metrics::uncertainty::Bootstrap;
use serde::{Deserialize, Serialize};

use super::{BenchEntry, BenchmarkReport};
use crate::domain::LatencyMs;
use crate::runtime::{BenchMeasurement, ColdStart, ThroughputPoint};

/// The bootstrap every speed interval draws (seeded: the same samples give the same interval).
pub(crate) const BOOT: Bootstrap = Bootstrap {
    replicates: 1000,
    seed: 0x5eed_5eed,
};

/// One fresh process's measurement of a configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessRun {
    /// The round it ran in: round r measures every configuration once, in turn, so two
    /// configurations' processes of one round saw about the same machine.
    pub round: usize,
    /// Spawn to exit, s.
    pub wall_s: f64,
    /// What the process measured (its latencies, throughput windows, machine state).
    #[serde(flatten)]
    pub measured: BenchMeasurement,
}

/// A configuration's figures, each with its intervals over processes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Figures {
    /// Batch-1 median latency, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<SpeedFigure>,
    /// Batch-1 p99 latency, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<SpeedFigure>,
    /// The best batch size's throughput, images/s, over windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<SpeedFigure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_batch: Option<usize>,
    /// Spawn to first output, ms: one per process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start_ms: Option<SpeedFigure>,
    /// Peak resident memory, MiB: one per process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_mib: Option<SpeedFigure>,
}

fn latencies(p: &ProcessRun) -> Vec<f64> {
    p.measured
        .latency_batch1_samples_ms
        .clone()
        .unwrap_or_default()
}

impl Figures {
    pub(crate) fn of(processes: &[ProcessRun]) -> Figures {
        let lat: Vec<Vec<f64>> = processes.iter().map(latencies).collect();
        let pct = speed::percentiles(&lat, &[0.5, 0.99], &BOOT).unwrap_or_default();
        let mut it = pct.into_iter();
        let (p50_ms, p99_ms) = (it.next(), it.next());
        // The batch size with the best mean throughput, and its windows in every process.
        let batches: Vec<usize> = processes
            .iter()
            .flat_map(|p| p.measured.throughput.iter().map(|t| t.batch))
            .collect();
        let windows = |b: usize| -> Vec<Vec<f64>> {
            processes
                .iter()
                .map(|p| {
                    p.measured
                        .throughput
                        .iter()
                        .find(|t| t.batch == b)
                        .and_then(|t| {
                            t.windows_images_per_s
                                .clone()
                                .or_else(|| t.images_per_s.map(|x| vec![x]))
                        })
                        .unwrap_or_default()
                })
                .collect()
        };
        let best = batches
            .iter()
            .filter_map(|&b| Some((b, speed::window_mean(&windows(b), &BOOT)?)))
            .max_by(|a, b| a.1.value.total_cmp(&b.1.value));
        let per_process = |f: fn(&BenchMeasurement) -> Option<f64>| {
            let xs: Vec<f64> = processes.iter().filter_map(|p| f(&p.measured)).collect();
            speed::process_mean(&xs)
        };
        Figures {
            p50_ms,
            p99_ms,
            throughput_batch: best.as_ref().map(|b| b.0),
            throughput: best.map(|b| b.1),
            cold_start_ms: per_process(|m| Some(m.cold_start.as_ref()?.spawn_to_first_output_ms)),
            rss_mib: per_process(|m| m.peak_rss_mib),
        }
    }

    /// The figure a gate key reads.
    pub(crate) fn get(&self, key: &str) -> Option<&SpeedFigure> {
        match key {
            "p99_ms_max" => self.p99_ms.as_ref(),
            "p50_ms_max" => self.p50_ms.as_ref(),
            "throughput_min" => self.throughput.as_ref(),
            "rss_mib_max" => self.rss_mib.as_ref(),
            "cold_start_ms_max" => self.cold_start_ms.as_ref(),
            _ => None,
        }
    }
}

/// Every process's measurement pooled into one, for the tables and the run report: every
/// latency together, the mean throughput per batch size, the mean cold start and RSS.
pub(crate) fn pooled(processes: &[ProcessRun]) -> Option<BenchMeasurement> {
    let first = processes.first()?;
    let lat: Vec<f64> = processes.iter().flat_map(latencies).collect();
    let mean = |xs: Vec<f64>| (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64);
    let mut m = first.measured.clone();
    m.latency_batch1_ms = Some(LatencyMs::of(&lat));
    m.latency_samples = Some(lat.len());
    m.latency_batch1_samples_ms = Some(lat);
    m.throughput = first
        .measured
        .throughput
        .iter()
        .map(|t| {
            let same = || {
                processes
                    .iter()
                    .filter_map(|p| p.measured.throughput.iter().find(|x| x.batch == t.batch))
            };
            ThroughputPoint {
                images_per_s: mean(same().filter_map(|x| x.images_per_s).collect()),
                inferences: Some(same().filter_map(|x| x.inferences).sum()),
                wall_ms: Some(same().filter_map(|x| x.wall_ms).sum()),
                windows_images_per_s: Some(
                    same()
                        .flat_map(|x| x.windows_images_per_s.clone().unwrap_or_default())
                        .collect(),
                ),
                ..t.clone()
            }
        })
        .collect();
    let colds: Vec<&ColdStart> = processes
        .iter()
        .filter_map(|p| p.measured.cold_start.as_ref())
        .collect();
    if let Some(c) = m.cold_start.as_mut() {
        c.spawn_to_first_output_ms =
            mean(colds.iter().map(|c| c.spawn_to_first_output_ms).collect())
                .unwrap_or(c.spawn_to_first_output_ms);
        c.load_ms = mean(colds.iter().filter_map(|c| c.load_ms).collect());
        c.compile_ms = mean(colds.iter().filter_map(|c| c.compile_ms).collect());
        c.first_inference_ms = mean(colds.iter().filter_map(|c| c.first_inference_ms).collect());
    }
    m.peak_rss_mib = mean(
        processes
            .iter()
            .filter_map(|p| p.measured.peak_rss_mib)
            .collect(),
    );
    m.child_wall_ms = mean(processes.iter().map(|p| p.wall_s * 1e3).collect());
    m.reliability = Some(crate::runtime::Reliability::of(
        m.latency_batch1_samples_ms.as_deref().unwrap_or_default(),
        &[],
    ));
    m.machine_state = None;
    Some(m)
}

/// How much faster one artifact's configuration is than another's, from paired rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratio {
    /// The faster-hoped artifact step, and its configuration's label.
    pub artifact: String,
    pub label: String,
    /// The artifact step it is measured against, and that configuration's label.
    pub over: String,
    pub over_label: String,
    /// `over`'s batch-1 median latency over `artifact`'s, with its intervals over rounds.
    pub speedup: SpeedFigure,
    /// What each executed in (`bf16`, `f32`), beside what its IR holds.
    pub executed: [String; 2],
    pub ir_precision: [String; 2],
}

/// The configuration of `over` that pairs with `e`: the same runtime settings (hint).
fn partner<'a>(e: &BenchEntry, over: &'a [&'a BenchEntry]) -> Option<&'a BenchEntry> {
    let suffix = |l: &str| l.rsplit_once(" [").map(|(_, s)| s.to_string());
    over.iter()
        .find(|o| suffix(&o.label) == suffix(&e.label))
        .copied()
}

/// Paired ratios of `artifact` over `over`, one per configuration they share.
pub(crate) fn ratios(results: &[BenchEntry], artifact: &str, over: &str) -> Vec<Ratio> {
    let of = |s: &str| -> Vec<&BenchEntry> {
        results
            .iter()
            .filter(|e| e.step == s && !e.processes.is_empty())
            .collect()
    };
    let others = of(over);
    of(artifact)
        .into_iter()
        .filter_map(|e| {
            let o = partner(e, &others)?;
            // Rounds both measured, in order.
            let rounds: Vec<usize> = e
                .processes
                .iter()
                .map(|p| p.round)
                .filter(|r| o.processes.iter().any(|q| q.round == *r))
                .collect();
            let side = |x: &BenchEntry| -> Vec<Vec<f64>> {
                rounds
                    .iter()
                    .map(|r| {
                        x.processes
                            .iter()
                            .filter(|p| p.round == *r)
                            .flat_map(latencies)
                            .collect()
                    })
                    .collect()
            };
            let speedup = speed::paired_speedup(&side(e), &side(o), &BOOT)?;
            let executed = |x: &BenchEntry| {
                x.processes
                    .first()
                    .map(|p| p.measured.execution.precision.clone())
                    .unwrap_or_default()
            };
            let ir = |x: &BenchEntry| x.artifact_precision.clone().unwrap_or_default();
            Some(Ratio {
                artifact: artifact.into(),
                label: e.label.clone(),
                over: over.into(),
                over_label: o.label.clone(),
                speedup,
                executed: [executed(e), executed(o)],
                ir_precision: [ir(e), ir(o)],
            })
        })
        .collect()
}

/// Why a ratio's speed is not its IR's: an FP16 or FP32 IR that executed in another
/// precision on this CPU (OpenVINO runs bf16 where the CPU has it, f32 where it lacks f16).
fn precision_note(r: &Ratio) -> Option<String> {
    let differs = |ir: &str, exec: &str| match ir {
        "fp16" => !matches!(exec, "f16" | "fp16"),
        "fp32" => !matches!(exec, "f32" | "fp32"),
        _ => false,
    };
    let notes: Vec<String> = [(&r.artifact, 0), (&r.over, 1)]
        .into_iter()
        .filter(|(_, i)| differs(&r.ir_precision[*i], &r.executed[*i]))
        .map(|(name, i)| {
            format!(
                "`{name}` is an {} IR but executed in {} on this CPU",
                r.ir_precision[i], r.executed[i]
            )
        })
        .collect();
    (!notes.is_empty()).then(|| notes.join("; "))
}

/// The figure the speed gate `m` reads for `artifact` from the benchmark's report (the best
/// configuration's, by its interval), where it comes from, and the configurations it used.
pub(crate) fn gate_figure(
    report: &BenchmarkReport,
    m: &Metric,
    artifact: &str,
    gates: &Gates,
) -> (Measurement, String, Vec<String>) {
    let src = format!("benchmark `{}`", report.step);
    if m.key == "speedup_min" {
        let Some(want) = gates.speedup_min.as_ref() else {
            return (
                Measurement::NotMeasured("no speedup gate".into()),
                src,
                vec![],
            );
        };
        let rs = report.ratios_for(artifact, &want.over);
        // The configuration whose interval reaches furthest toward passing decides: one
        // decided configuration is enough evidence, a noisy one beside it is not against it.
        let Some(best) = rs
            .into_iter()
            .max_by(|a, b| a.speedup.spread.ci95[0].total_cmp(&b.speedup.spread.ci95[0]))
        else {
            let why = format!(
                "no paired measurement of `{artifact}` and `{}`: both must be targets of {src}",
                want.over
            );
            return (Measurement::NotMeasured(why), src, vec![]);
        };
        let src = format!("{src}, {} over {}", best.label, best.over_label);
        let used = vec![best.label.clone(), best.over_label.clone()];
        return (
            Measurement::Speed(best.speedup.clone(), precision_note(best)),
            src,
            used,
        );
    }
    let best = report
        .results
        .iter()
        .filter(|e| e.step == artifact && e.available)
        .filter_map(|e| Some((e, e.figures.as_ref()?.get(m.key)?)))
        // The configuration whose interval reaches furthest toward the limit's good side
        // (an open upper end counts as unbounded).
        .min_by(|a, b| {
            let upper = |f: &SpeedFigure| {
                if f.open_above.as_ref().and_then(|o| o.at(0.95)).is_some() {
                    f64::INFINITY
                } else {
                    f.spread.ci95[1]
                }
            };
            if m.at_least {
                b.1.spread.ci95[0].total_cmp(&a.1.spread.ci95[0])
            } else {
                upper(a.1).total_cmp(&upper(b.1))
            }
        });
    match best {
        Some((e, f)) => (
            Measurement::Speed(f.clone(), None),
            format!("{src}, best config {}", e.label),
            vec![e.label.clone()],
        ),
        None => (
            Measurement::NotMeasured(format!("nothing measured for `{artifact}`")),
            src,
            vec![],
        ),
    }
}

/// A speed gate a release sets on one of this benchmark's artifacts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SpeedGates {
    pub artifact: String,
    pub gates: Gates,
}

/// The configurations whose gates are still inconclusive: those the benchmark measures again.
pub(crate) fn undecided(report: &BenchmarkReport, wanted: &[SpeedGates]) -> Vec<String> {
    let mut labels = Vec::new();
    for w in wanted {
        let policy = w.gates.policy();
        for m in Gates::METRICS
            .iter()
            .filter(|m| crate::metrics::gate::PERFORMANCE.contains(&m.key))
        {
            let Some(limit) = w.gates.limit(m.key) else {
                continue;
            };
            let (measured, _, used) = gate_figure(report, m, &w.artifact, &w.gates);
            let r = GateResult::judge(m.key, m.at_least, &measured, limit, policy, None);
            if r.status.as_deref() == Some("inconclusive") {
                labels.extend(used);
            }
        }
    }
    labels.sort();
    labels.dedup();
    labels
}
