//! `benchmark`'s report.md: every figure with its interval, the paired ratios, the
//! agreement with benchmark_app, and what the machine was doing in each process.

use crate::metrics::speed::SpeedFigure;

use super::{BenchEntry, BenchmarkParams, BenchmarkReport, StepContext};

/// `1.23 [1.10, 1.41]`: a figure and its 95% interval.
fn fig(f: Option<&SpeedFigure>, digits: usize) -> String {
    match f {
        Some(f) => {
            let [lo, hi] = f.spread.ci95;
            let open = f.open_above.as_ref().and_then(|o| o.at(0.95)).is_some();
            let hi = if open {
                "open".to_string()
            } else {
                format!("{hi:.digits$}")
            };
            format!("{:.digits$} [{lo:.digits$}, {hi}]", f.value)
        }
        None => "-".into(),
    }
}

fn row(e: &BenchEntry, artifact: &str) -> String {
    let Some(f) = e.figures.as_ref() else {
        return format!(
            "| {} | {artifact} | unavailable: {} | - | - | - | - | - | - | - |",
            e.label,
            e.unavailable.clone().unwrap_or_default()
        );
    };
    let executed = e
        .processes
        .first()
        .map(|p| {
            format!(
                "{} {}",
                p.measured.execution.runtime, p.measured.execution.precision
            )
        })
        .unwrap_or_default();
    let reference = match &e.agreement {
        Some(a) => format!(
            "{}{}",
            fig(Some(&a.throughput_ratio), 3),
            if a.agrees { "" } else { " **disagrees**" }
        ),
        None => "-".into(),
    };
    format!(
        "| {} | {artifact} | {executed} | {} | {} | {} | {}{} | {} | {} | {reference} |",
        e.label,
        e.processes.len(),
        fig(f.p50_ms.as_ref(), 3),
        fig(f.p99_ms.as_ref(), 3),
        fig(f.throughput.as_ref(), 0),
        f.throughput_batch
            .map(|b| format!(" (b{b})"))
            .unwrap_or_default(),
        fig(f.cold_start_ms.as_ref(), 1),
        fig(f.rss_mib.as_ref(), 1),
    )
}

/// One line per process: what the machine was doing, and the judge's diagnostics.
fn process_lines(e: &BenchEntry) -> Vec<String> {
    let f = |x: Option<f64>| x.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
    e.processes
        .iter()
        .map(|p| {
            let m = p.measured.machine_state.as_ref();
            let r = p.measured.reliability.as_ref();
            format!(
                "| {} | {} | {} → {} | {:.2} / {:.2} | {} → {} | {} | {} | {} |",
                e.label,
                p.round,
                f(m.and_then(|m| m.load_before)),
                f(m.and_then(|m| m.load_after)),
                m.map(|m| m.cpu_s).unwrap_or(0.0),
                m.map(|m| m.wall_s).unwrap_or(0.0),
                f(m.map(|m| m.calibration_before_ms)),
                f(m.map(|m| m.calibration_after_ms)),
                f(p.measured.latency_batch1_ms.as_ref().and_then(|l| l.median)),
                f(r.and_then(|r| r.latency_cv)),
                f(r.and_then(|r| r.drift)),
            )
        })
        .collect()
}

pub(super) fn markdown(
    ctx: &StepContext,
    p: &BenchmarkParams,
    report: &BenchmarkReport,
    artifacts: &[(String, String)],
) -> String {
    let (step, decl) = (&ctx.step.name, &ctx.manifest.model.input);
    let m = &report.machine;
    let mut md = format!(
        "# benchmark `{step}` — pipeline `{}`\n\nMachine: {} ({} logical cores; {}{}). Input {} {:?} (batch 1 for latency). Every configuration was measured in {} fresh processes at first, in {} interleaved rounds in all; each figure is the pooled value with its 95% interval over processes (two-level block bootstrap for percentiles and throughput windows, Student t for cold start and RSS).\n\n",
        ctx.manifest.name,
        m.cpu,
        m.logical_cores,
        m.isa.join(" "),
        m.gpu
            .as_deref()
            .map(|g| format!("; GPU {g}"))
            .unwrap_or_default(),
        decl.name,
        report.input.shape_batch1,
        p.processes,
        report.rounds,
    );
    md += "| target | artifact | executed | processes | p50 ms | p99 ms | throughput /s | cold start ms | peak RSS MiB | b1 throughput vs benchmark_app |\n|---|---|---|---|---|---|---|---|---|---|\n";
    for e in &report.results {
        let artifact = artifacts
            .iter()
            .find(|(l, _)| *l == e.label)
            .map(|(_, a)| a.as_str())
            .unwrap_or("-");
        md += &row(e, artifact);
        md.push('\n');
    }
    if !report.ratios.is_empty() {
        md += "\nPaired speedups (the other's batch-1 median latency over this one's, rounds paired):\n\n| artifact | over | speedup [95%] | executed |\n|---|---|---|---|\n";
        for r in &report.ratios {
            md += &format!(
                "| {} | {} | {} | {} ({} IR) / {} ({} IR) |\n",
                r.label,
                r.over_label,
                fig(Some(&r.speedup), 3),
                r.executed[0],
                r.ir_precision[0],
                r.executed[1],
                r.ir_precision[1]
            );
        }
    }
    if let Some(s) = &report.sequential {
        md += &format!("\nAdded rounds: {s}.\n");
    }
    let flagged: Vec<&String> = report
        .results
        .iter()
        .filter_map(|e| e.agreement.as_ref()?.flag.as_ref())
        .collect();
    if !flagged.is_empty() {
        md += "\nDisagreements with benchmark_app:\n";
        for (e, f) in report
            .results
            .iter()
            .filter_map(|e| Some((e, e.agreement.as_ref()?.flag.as_ref()?)))
        {
            md += &format!("- {}: {f}\n", e.label);
        }
    }
    md += "\nWhat the machine was doing, per process (diagnostics; they do not decide):\n\n| target | round | load 1m | CPU s / wall s | calibration ms | p50 ms | CV | drift |\n|---|---|---|---|---|---|---|---|\n";
    for e in &report.results {
        for l in process_lines(e) {
            md += &l;
            md.push('\n');
        }
    }
    md
}
