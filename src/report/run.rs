//! The run report: after every `run`, `<output>/report.html` (one self-contained file: the
//! steps, compare tables with cosine-similarity histograms, benchmark tables with latency
//! histograms and throughput-vs-batch plots, release verdicts; plots are inline SVG drawn
//! with plotters) and `<output>/junit.xml` (every step and every gate as a test case, for CI
//! systems). Both are built from the steps' own report.json files in the output folder, so
//! a failed gate (whose step failed) is in them too. They are rewritten only when what they
//! show changed, so a no-op run stays a no-op.

use std::fmt::Write as _;

use camino::{Utf8Path, Utf8PathBuf};
use plotters::prelude::*;

use crate::steps::benchmark::BenchmarkReport;
use crate::steps::compare::{CandidateReport, CompareReport};
use crate::steps::release::ReleaseReport;

use crate::context::BuildContext;
use crate::error::{IoContext, Result};
use crate::scheduler::{RunReport, Status};
use crate::steps::{ReportSection, StepKind};

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A step report the run report shows, read by its step's kind.
enum StepReport {
    Compare(Box<CompareReport>),
    Benchmark(Box<BenchmarkReport>),
    Release(Box<ReleaseReport>),
}

/// The run report's section for a step's kind (the registry's column), if it has one.
fn section(s: &crate::scheduler::StepResult) -> Option<ReportSection> {
    StepKind::from_name(&s.kind).and_then(StepKind::report_section)
}

/// Read a shown step's report; None when it is absent or not of this facebuild's schema.
fn read(section: ReportSection, p: &Utf8Path) -> Option<StepReport> {
    match section {
        ReportSection::Compare => crate::steps::read_report(p)
            .ok()
            .map(|r| StepReport::Compare(Box::new(r))),
        ReportSection::Benchmark => crate::steps::read_report(p)
            .ok()
            .map(|r| StepReport::Benchmark(Box::new(r))),
        ReportSection::Release => crate::steps::read_report(p)
            .ok()
            .map(|r| StepReport::Release(Box::new(r))),
    }
}

/// A histogram of `values` as an inline SVG.
pub(crate) fn histogram_svg(title: &str, values: &[f64], x_label: &str, bins: usize) -> String {
    let mut buf = String::new();
    if values.is_empty() {
        return buf;
    }
    let (mut lo, mut hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(*v), b.max(*v))
        });
    if hi - lo < 1e-12 {
        let pad = lo.abs().max(1e-6) * 1e-3;
        lo -= pad;
        hi += pad;
    }
    let w = (hi - lo) / bins as f64;
    let mut counts = vec![0u32; bins];
    for v in values {
        counts[(((v - lo) / w) as usize).min(bins - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1);
    {
        let root = SVGBackend::with_string(&mut buf, (440, 240)).into_drawing_area();
        let _ = root.fill(&WHITE);
        if let Ok(mut chart) = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(40)
            .build_cartesian_2d(lo..hi, 0u32..top + top / 10 + 1)
        {
            let _ = chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc("count")
                .x_labels(5)
                .draw();
            let _ = chart.draw_series(counts.iter().enumerate().map(|(i, c)| {
                Rectangle::new(
                    [(lo + i as f64 * w, 0), (lo + (i + 1) as f64 * w, *c)],
                    BLUE.mix(0.55).filled(),
                )
            }));
        }
        let _ = root.present();
    }
    buf
}

/// Counts per labelled bin as an inline SVG bar chart.
pub(crate) fn bars_svg(title: &str, labels: &[String], counts: &[usize], x_label: &str) -> String {
    let mut buf = String::new();
    let n = counts.len().max(1);
    let top = counts.iter().copied().max().unwrap_or(1).max(1);
    {
        let root = SVGBackend::with_string(&mut buf, (440, 240)).into_drawing_area();
        let _ = root.fill(&WHITE);
        if let Ok(mut chart) = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(40)
            .build_cartesian_2d(0f64..n as f64, 0usize..top + top / 10 + 1)
        {
            let _ = chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc("faces")
                .x_labels(n + 1)
                .x_label_formatter(&|x| {
                    let i = x.floor() as usize;
                    if (x - x.floor()).abs() < 1e-9 {
                        String::new()
                    } else {
                        labels.get(i).cloned().unwrap_or_default()
                    }
                })
                .draw();
            let _ = chart.draw_series(counts.iter().enumerate().map(|(i, c)| {
                Rectangle::new(
                    [(i as f64 + 0.1, 0), (i as f64 + 0.9, *c)],
                    BLUE.mix(0.55).filled(),
                )
            }));
            // Bin labels at the bars' centres.
            let _ = chart.draw_series(labels.iter().enumerate().map(|(i, l)| {
                Text::new(l.clone(), (i as f64 + 0.15, top / 20), ("sans-serif", 10))
            }));
        }
        let _ = root.present();
    }
    buf
}

/// Throughput (images/s) against batch size, one line per configuration.
pub(crate) fn throughput_svg(title: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let mut buf = String::new();
    let pts: Vec<(f64, f64)> = series.iter().flat_map(|(_, s)| s.iter().copied()).collect();
    if pts.is_empty() {
        return buf;
    }
    let xmax = pts.iter().map(|p| p.0).fold(1.0, f64::max);
    let ymax = pts.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    {
        let root = SVGBackend::with_string(&mut buf, (520, 280)).into_drawing_area();
        let _ = root.fill(&WHITE);
        if let Ok(mut chart) = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(56)
            .build_cartesian_2d(0.5..xmax + 0.5, 0.0..ymax)
        {
            let _ = chart
                .configure_mesh()
                .x_desc("batch size")
                .y_desc("images/s")
                .draw();
            for (i, (label, s)) in series.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                if let Ok(a) =
                    chart.draw_series(LineSeries::new(s.iter().copied(), color.stroke_width(2)))
                {
                    a.label(label.clone()).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                    });
                }
                let _ = chart.draw_series(s.iter().map(|p| Circle::new(*p, 3, color.filled())));
            }
            let _ = chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::LowerRight)
                .draw();
        }
        let _ = root.present();
    }
    buf
}

/// One gated figure across candidates: each value with its 95% interval as an error bar,
/// and the limit as a dashed line. Empty when no candidate has an interval.
pub(crate) fn interval_svg(
    title: &str,
    rows: &[(String, f64, [f64; 2])],
    limit: Option<f64>,
) -> String {
    let mut buf = String::new();
    if rows.is_empty() {
        return buf;
    }
    let lows = rows.iter().map(|r| r.2[0]).chain(limit);
    let highs = rows.iter().map(|r| r.2[1]).chain(limit);
    let (lo, hi) = (
        lows.fold(f64::INFINITY, f64::min),
        highs.fold(f64::NEG_INFINITY, f64::max),
    );
    let pad = ((hi - lo) * 0.1).max(1e-6);
    let n = rows.len() as f64;
    {
        let root = SVGBackend::with_string(&mut buf, (520, 240)).into_drawing_area();
        let _ = root.fill(&WHITE);
        if let Ok(mut chart) = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(64)
            .build_cartesian_2d(-0.5..n - 0.5, lo - pad..hi + pad)
        {
            let labels: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
            let _ = chart
                .configure_mesh()
                .x_labels(rows.len())
                .x_label_formatter(&|x| {
                    let i = x.round();
                    if (x - i).abs() < 1e-6 && i >= 0.0 {
                        labels.get(i as usize).cloned().unwrap_or_default()
                    } else {
                        String::new()
                    }
                })
                .y_desc("value (95% interval)")
                .draw();
            let color = Palette99::pick(0).to_rgba();
            let _ = chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
                ErrorBar::new_vertical(i as f64, r.2[0], r.1, r.2[1], color.stroke_width(2), 12)
            }));
            if let Some(l) = limit {
                let _ = chart.draw_series(DashedLineSeries::new(
                    vec![(-0.5, l), (n - 0.5, l)],
                    6,
                    4,
                    RED.stroke_width(1),
                ));
            }
        }
        let _ = root.present();
    }
    buf
}

/// Error-bar plots of every gated figure that has intervals, one per figure.
fn interval_plots(r: &CompareReport) -> String {
    let mut figures: Vec<&str> = Vec::new();
    for c in &r.candidates {
        for g in c.gates.iter().flatten() {
            if c.intervals
                .as_ref()
                .is_some_and(|m| m.contains_key(&g.metric))
                && !figures.contains(&g.metric.as_str())
            {
                figures.push(&g.metric);
            }
        }
    }
    let mut s = String::new();
    for f in figures {
        let mut limit = None;
        let rows: Vec<(String, f64, [f64; 2])> = r
            .candidates
            .iter()
            .filter_map(|c| {
                let g = c.gates.iter().flatten().find(|g| g.metric == f)?;
                let sp = c.intervals.as_ref()?.get(f)?;
                limit = Some(g.limit);
                Some((c.label.clone(), g.value?, sp.ci95))
            })
            .collect();
        let svg = interval_svg(
            &format!("{f}: value and 95% interval; limit dashed"),
            &rows,
            limit,
        );
        if !svg.is_empty() {
            s += &format!("<figure>{svg}</figure>");
        }
    }
    s
}

fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::from("<table><tr>");
    for h in head {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s += "</tr>";
    for r in rows {
        s += "<tr>";
        for c in r {
            let class = if c == "pass" {
                " class=pass"
            } else if c.starts_with("FAIL") {
                " class=fail"
            } else {
                ""
            };
            let _ = write!(s, "<td{class}>{}</td>", esc(c));
        }
        s += "</tr>";
    }
    s + "</table>"
}

fn num(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}"))
        .unwrap_or_else(|| "-".into())
}

/// A candidate's verdict cell.
fn pass(c: &CandidateReport) -> String {
    match c.passed {
        Some(true) => "pass".to_string(),
        Some(false) => match &c.failed {
            Some(why) => format!("FAIL (not built: {})", why.lines().next().unwrap_or("")),
            None => "FAIL".to_string(),
        },
        None => format!("unavailable: {}", c.unavailable.as_deref().unwrap_or("")),
    }
}

fn artifact(c: &CandidateReport) -> String {
    format!(
        "{} {}",
        c.artifact.as_deref().unwrap_or("-"),
        c.artifact_precision.as_deref().unwrap_or("")
    )
}

fn executed(c: &CandidateReport) -> String {
    c.execution
        .as_ref()
        .map(|e| e.precision.clone())
        .unwrap_or_else(|| "-".into())
}

fn compare_section(name: &str, r: &CompareReport) -> String {
    let mut s = format!("<h2>compare <code>{}</code></h2>", esc(name));
    if let Some(n) = &r.model_note {
        s += &format!("<p><em>{}</em></p>", esc(n));
    }
    if r.is_detection() {
        return s + &detection_table(r);
    }
    if r.landmarks.is_some() {
        return s + &landmarks_table(r);
    }
    if r.task.as_deref() == Some("attribute") {
        return s + &attribute_table(r);
    }
    if r.swapper.is_some() {
        return s + &swapper_table(r);
    }
    s + &embedding_table(r)
}

fn swapper_table(r: &CompareReport) -> String {
    let mut s = String::new();
    if let Some(x) = &r.swapper {
        s += &format!(
            "<p>{} pairs ({}); latents from {}{}; identity flips at cosine {}.</p>",
            x.pairs,
            esc(&x.identities),
            esc(&x.recognizer),
            if x.emap { " through emap" } else { "" },
            x.identity_threshold
        );
    }
    let rows: Vec<Vec<String>> = r
        .candidates
        .iter()
        .map(|c| {
            let f = c.swapper.as_ref();
            vec![
                c.label.clone(),
                artifact(c),
                executed(c),
                num(c.psnr_min, 2),
                num(c.ssim_min, 4),
                num(f.map(|f| f.pixel_error_max), 0),
                num(c.identity_cosine_min, 4),
                f.map(|f| f.identity_flips.to_string())
                    .unwrap_or_else(|| "-".into()),
                pass(c),
            ]
        })
        .collect();
    let head = [
        "candidate",
        "artifact",
        "executed",
        "PSNR min (dB)",
        "SSIM min",
        "max pixel error",
        "identity cosine min",
        "identity flips",
        "gate",
    ];
    s + &table(&head, &rows)
}

fn detection_table(r: &CompareReport) -> String {
    let rows: Vec<Vec<String>> = r
        .candidates
        .iter()
        .map(|c| {
            let t = c.total.clone().unwrap_or_default();
            let has = c.total.is_some();
            vec![
                c.label.clone(),
                artifact(c),
                executed(c),
                num(has.then_some(t.recall), 4),
                num(has.then_some(t.fp_per_image), 3),
                num(t.score_drift.max, 4),
                num(t.landmark_nme.max, 5),
                num(has.then_some(t.nms_parity), 3),
                pass(c),
            ]
        })
        .collect();
    let s = table(
        &[
            "candidate",
            "artifact",
            "executed",
            "recall",
            "FP/img",
            "score drift max",
            "landmark NME max",
            "NMS parity",
            "gate",
        ],
        &rows,
    );
    s + "<div class=plots>" + &interval_plots(r) + "</div>"
}

fn landmarks_table(r: &CompareReport) -> String {
    let mut s = String::new();
    if let Some(l) = &r.landmarks {
        s += &format!(
            "<p>{} points from <code>{}</code> ({}); NME over the {}; {} faces, crop: {}.</p>",
            l.points,
            esc(&l.output),
            esc(&l.coords),
            esc(&l.normaliser),
            l.faces,
            esc(&l.crop)
        );
        let rows: Vec<Vec<String>> = r
            .candidates
            .iter()
            .map(|c| {
                let f = c.landmarks.as_ref();
                vec![
                    c.label.clone(),
                    artifact(c),
                    executed(c),
                    num(c.nme_mean, 5),
                    num(c.nme_max, 5),
                    num(f.map(|f| f.px_mean), 3),
                    num(f.map(|f| f.px_max), 3),
                    pass(c),
                ]
            })
            .collect();
        let head = [
            "candidate",
            "artifact",
            "executed",
            "NME mean",
            "NME max",
            "px mean",
            "px max",
            "gate",
        ];
        s += &table(&head, &rows);
    }
    s
}

fn attribute_table(r: &CompareReport) -> String {
    let rows: Vec<Vec<String>> = r
        .candidates
        .iter()
        .map(|c| {
            let f = c.attribute.as_ref();
            vec![
                c.label.clone(),
                artifact(c),
                executed(c),
                c.gender_flips
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into()),
                num(c.age_mae, 3),
                num(f.map(|f| f.age_error_max), 0),
                pass(c),
            ]
        })
        .collect();
    let head = [
        "candidate",
        "artifact",
        "executed",
        "gender flips",
        "age MAE (years)",
        "age error max",
        "gate",
    ];
    table(&head, &rows)
}

fn embedding_table(r: &CompareReport) -> String {
    let mut s = String::new();
    let rows: Vec<Vec<String>> = r
        .candidates
        .iter()
        .map(|c| {
            let v = c.verification.as_ref();
            vec![
                c.label.clone(),
                artifact(c),
                executed(c),
                num(c.cosine.map(|x| x.min), 6),
                num(c.cosine.map(|x| x.p01), 6),
                num(c.cosine.map(|x| x.mean), 6),
                num(
                    v.and_then(|v| v.tar_at_operating_far).map(|t| t.candidate),
                    4,
                ),
                v.map(|v| v.flips_at_reference_threshold.to_string())
                    .unwrap_or_else(|| "-".into()),
                pass(c),
            ]
        })
        .collect();
    s += &table(
        &[
            "candidate",
            "artifact",
            "executed",
            "cos min",
            "cos p01",
            "cos mean",
            "TAR@op FAR",
            "flips",
            "gate",
        ],
        &rows,
    );
    s += "<div class=plots>";
    s += &interval_plots(r);
    for c in &r.candidates {
        let v = c.cosine_per_image.clone().unwrap_or_default();
        if !v.is_empty() {
            s += &format!(
                "<figure>{}</figure>",
                histogram_svg(
                    &format!("{}: cosine vs ONNX, per image", c.label),
                    &v,
                    "cosine similarity",
                    20
                )
            );
        }
    }
    s + "</div>"
}

fn benchmark_section(name: &str, r: &BenchmarkReport) -> String {
    let m = &r.machine;
    let mut s = format!(
        "<h2>benchmark <code>{}</code></h2><p>{} — {} logical cores; ISA {}; GPU {}.</p>",
        esc(name),
        esc(&m.cpu),
        m.logical_cores,
        esc(&m.isa.join(" ")),
        esc(m.gpu.as_deref().unwrap_or("none"))
    );
    let rows: Vec<Vec<String>> = r
        .results
        .iter()
        .map(|x| {
            let Some(v) = x.measured.as_ref().filter(|_| x.available) else {
                let mut row = vec![
                    x.label.clone(),
                    format!("unavailable: {}", x.unavailable.as_deref().unwrap_or("")),
                ];
                row.extend(std::iter::repeat_n("-".to_string(), 6));
                return row;
            };
            let lat = v.latency_batch1_ms.clone().unwrap_or_default();
            // A figure with its 95% interval over processes, where the report has one.
            let with_iv =
                |f: Option<&crate::metrics::speed::SpeedFigure>, plain: Option<f64>| match f {
                    Some(f) => format!(
                        "{:.3} [{:.3}, {:.3}]",
                        f.value, f.spread.ci95[0], f.spread.ci95[1]
                    ),
                    None => num(plain, 3),
                };
            let figs = x.figures.as_ref();
            vec![
                x.label.clone(),
                format!(
                    "{} {} ({})",
                    x.artifact,
                    x.artifact_precision.as_deref().unwrap_or(""),
                    v.execution.precision
                ),
                num(v.cold_start.as_ref().map(|c| c.spawn_to_first_output_ms), 1),
                with_iv(figs.and_then(|f| f.p50_ms.as_ref()), lat.median),
                with_iv(figs.and_then(|f| f.p99_ms.as_ref()), lat.p99),
                v.throughput
                    .iter()
                    .map(|b| {
                        format!(
                            "b{} {}",
                            b.batch,
                            b.images_per_s
                                .map(|v| format!("{v:.0}/s"))
                                .unwrap_or_else(|| "unsupported".into())
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                num(v.peak_rss_mib, 1),
                v.reference
                    .as_ref()
                    .and_then(|r| r.throughput_ratio)
                    .map(|v| format!("{v:.3}"))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    s += &table(
        &[
            "target",
            "artifact (executed)",
            "cold start ms",
            "p50 ms [95%]",
            "p99 ms [95%]",
            "throughput",
            "peak RSS MiB",
            "vs benchmark_app",
        ],
        &rows,
    );
    s += "<div class=plots>";
    let measured: Vec<(&str, &crate::runtime::BenchMeasurement)> = r
        .results
        .iter()
        .filter(|x| x.available)
        .filter_map(|x| x.measured.as_ref().map(|m| (x.label.as_str(), m)))
        .collect();
    for (label, x) in &measured {
        let v = x.latency_batch1_samples_ms.clone().unwrap_or_default();
        s += &format!(
            "<figure>{}</figure>",
            histogram_svg(&format!("{label}: batch-1 latency"), &v, "ms", 24)
        );
    }
    let series: Vec<(String, Vec<(f64, f64)>)> = measured
        .iter()
        .map(|(label, x)| {
            (
                label.to_string(),
                x.throughput
                    .iter()
                    .filter_map(|b| Some((b.batch as f64, b.images_per_s?)))
                    .collect(),
            )
        })
        .filter(|(_, p): &(String, Vec<(f64, f64)>)| !p.is_empty())
        .collect();
    s += &format!(
        "<figure class=wide>{}</figure>",
        throughput_svg("throughput vs batch size", &series)
    );
    s + "</div>"
}

fn release_section(name: &str, r: &ReleaseReport) -> String {
    let s = format!(
        "<h2>release <code>{}</code></h2><p>version <b>{}</b> in <code>{}</code></p>",
        esc(name),
        esc(r.version.as_deref().unwrap_or("(none: refused)")),
        esc(r.release_dir.as_ref().map(|d| d.as_str()).unwrap_or("-"))
    );
    let mut rows = Vec::new();
    for v in &r.verdicts {
        for g in &v.gates {
            rows.push(vec![
                v.artifact.clone(),
                g.metric.clone(),
                num(g.value, 4),
                num(Some(g.limit), 4),
                g.source.clone().unwrap_or_default(),
                gate_result(g),
            ]);
        }
        for why in v
            .refused_because
            .iter()
            .filter(|w| w.contains("unavailable"))
        {
            rows.push(vec![
                v.artifact.clone(),
                "available".into(),
                "-".into(),
                "-".into(),
                why.clone(),
                "FAIL".into(),
            ]);
        }
    }
    s + &table(
        &["artifact", "gate", "measured", "limit", "source", "result"],
        &rows,
    )
}

/// A gate's result cell: pass or FAIL, with why a figure was not compared, or the warning
/// of a gate that passed on one (`missing: pass`, `unreliable: pass`).
fn gate_result(g: &crate::metrics::gate::GateResult) -> String {
    match (g.passed, &g.status, &g.warning) {
        (true, _, Some(w)) => format!("pass (warning: {w})"),
        (true, _, None) => "pass".into(),
        (false, Some(s), _) if s == "inconclusive" => format!(
            "FAIL: inconclusive ({})",
            g.why.as_deref().unwrap_or_default()
        ),
        (false, Some(s), _) => format!(
            "FAIL: {s}{}, not compared with the limit",
            g.why
                .as_deref()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default()
        ),
        (false, None, _) => "FAIL".into(),
    }
}

/// Gate test cases: (suite, case, failure message if failed).
fn gate_cases(step: &str, r: &StepReport) -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    match r {
        StepReport::Compare(r) => {
            for c in &r.candidates {
                for g in c.gates.iter().flatten() {
                    out.push((
                        format!("{step}.{}", c.label),
                        g.metric.clone(),
                        (!g.passed).then(|| g.describe()),
                    ));
                }
            }
        }
        StepReport::Release(r) => {
            for v in &r.verdicts {
                for g in &v.gates {
                    out.push((
                        format!("{step}.{}", v.artifact),
                        g.metric.clone(),
                        (!g.passed).then(|| g.refusal()),
                    ));
                }
            }
        }
        StepReport::Benchmark(_) => {}
    }
    out
}

fn junit(run: &RunReport, reports: &[(String, StepReport)]) -> String {
    let mut suites: Vec<(String, Vec<String>, usize, usize)> = Vec::new();
    let mut steps = Vec::new();
    let (mut failures, mut skipped) = (0, 0);
    for s in &run.steps {
        let body = match s.status {
            Status::Failed => {
                failures += 1;
                format!(
                    "<failure message=\"{}\"/>",
                    esc(s.error.as_deref().unwrap_or("failed"))
                )
            }
            Status::Skipped | Status::NotRun | Status::Unavailable => {
                skipped += 1;
                format!(
                    "<skipped message=\"{}\"/>",
                    esc(s.error.as_deref().unwrap_or("not run"))
                )
            }
            _ => String::new(),
        };
        steps.push(format!(
            "<testcase classname=\"{}.steps\" name=\"{}\" time=\"{:.3}\">{body}</testcase>",
            esc(&run.pipeline),
            esc(&s.step),
            s.duration_ms as f64 / 1000.0
        ));
    }
    suites.push(("steps".into(), steps, failures, skipped));
    for (step, r) in reports {
        let cases = gate_cases(step, r);
        if cases.is_empty() {
            continue;
        }
        let f = cases.iter().filter(|c| c.2.is_some()).count();
        let xml = cases
            .iter()
            .map(|(cls, name, fail)| {
                format!(
                    "<testcase classname=\"{}.{}\" name=\"{}\">{}</testcase>",
                    esc(&run.pipeline),
                    esc(cls),
                    esc(name),
                    fail.as_ref()
                        .map(|m| format!("<failure message=\"{}\"/>", esc(m)))
                        .unwrap_or_default()
                )
            })
            .collect();
        suites.push((format!("gates.{step}"), xml, f, 0));
    }
    let total: usize = suites.iter().map(|s| s.1.len()).sum();
    let tf: usize = suites.iter().map(|s| s.2).sum();
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"facebuild {}\" tests=\"{total}\" failures=\"{tf}\">\n",
        esc(&run.pipeline)
    );
    for (name, cases, f, sk) in &suites {
        let _ = writeln!(
            x,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{f}\" skipped=\"{sk}\">",
            esc(name),
            cases.len()
        );
        for c in cases {
            let _ = writeln!(x, "    {c}");
        }
        x += "  </testsuite>\n";
    }
    x + "</testsuites>\n"
}

fn html(
    run: &RunReport,
    ctx: &BuildContext,
    reports: &[(String, StepReport)],
    faces: &[crate::report::faces::SetFaces],
) -> String {
    let mut body = format!(
        "<h1>facebuild — <code>{}</code></h1><p>manifest <code>{}</code> (blake3 {}), source {}, toolchain {}. {}</p>",
        esc(&run.pipeline),
        esc(run.manifest.as_str()),
        &ctx.manifest.digest[..12],
        esc(&run.source),
        esc(&run.toolchain),
        if run.ok {
            "<b class=pass>run ok</b>"
        } else {
            "<b class=fail>run failed</b>"
        }
    );
    let rows: Vec<Vec<String>> = run
        .steps
        .iter()
        .map(|s| {
            vec![
                s.step.clone(),
                s.kind.clone(),
                serde_json::to_value(s.status)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                match (&s.ran_on, s.status) {
                    (Some(r), _) => format!("{} job {} on {}", r.executor, r.job_id, r.node),
                    (None, Status::Built) => "here".into(),
                    _ => String::new(),
                },
                s.error
                    .clone()
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
            ]
        })
        .collect();
    body += &table(
        &["step", "kind", "status", "ran on", "error / reason"],
        &rows,
    );
    body += &crate::report::faces::html(faces, &run.warnings);
    for (step, r) in reports {
        body += &match r {
            StepReport::Compare(r) => compare_section(step, r),
            StepReport::Benchmark(r) => benchmark_section(step, r),
            StepReport::Release(r) => release_section(step, r),
        };
    }
    format!(
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>facebuild {}</title><style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}th{{background:#f3f3f3}}.pass{{color:#176317}}.fail{{color:#b00020;font-weight:bold}}.plots{{display:flex;flex-wrap:wrap;gap:8px}}figure{{margin:0}}</style></head><body>{body}</body></html>\n",
        esc(&run.pipeline)
    )
}

/// Write report.html and junit.xml into the pipeline's output folder (only when changed).
/// `faces`: the sets the run's steps report faces for ([`crate::report::faces::sets`]).
pub(crate) fn write(
    run: &RunReport,
    ctx: &BuildContext,
    faces: &[crate::report::faces::SetFaces],
) -> Result<(Utf8PathBuf, Utf8PathBuf)> {
    let dir = &ctx.manifest.output_dir;
    let (h, j) = (dir.join("report.html"), dir.join("junit.xml"));
    let shown = |s: &crate::scheduler::StepResult| section(s).is_some();
    // What the report shows: step statuses and errors, and the reports' contents: their
    // digests when the step succeeded, the file itself when it failed (kept, not stored).
    let mut basis = format!(
        "{:?}",
        run.steps
            .iter()
            .map(|s| (
                &s.step,
                s.status,
                &s.error,
                &s.ran_on,
                s.outputs.get("report.json").map(|o| &o.digest)
            ))
            .collect::<Vec<_>>()
    );
    for s in run
        .steps
        .iter()
        .filter(|s| shown(s) && !s.outputs.contains_key("report.json"))
    {
        basis += &std::fs::read_to_string(ctx.step_out_dir(&s.step)?.join("report.json"))
            .unwrap_or_default();
    }
    basis += &format!("{:?}", run.warnings);
    let key = blake3::hash(basis.as_bytes()).to_hex().to_string();
    let key_path = dir.join(".report.key");
    // A no-op run reads no report: the key says nothing changed.
    if std::fs::read_to_string(&key_path).ok().as_deref() == Some(key.as_str())
        && h.exists()
        && j.exists()
    {
        return Ok((h, j));
    }
    let mut reports = Vec::new();
    for s in &run.steps {
        let Some(sec) = section(s) else { continue };
        if let Some(v) = read(sec, &ctx.step_out_dir(&s.step)?.join("report.json")) {
            reports.push((s.step.clone(), v));
        }
    }
    std::fs::create_dir_all(dir).fs_context(dir)?;
    for (path, text) in [
        (&h, html(run, ctx, &reports, faces)),
        (&j, junit(run, &reports)),
    ] {
        crate::cache::store::write_atomic(path, text.as_bytes())?;
        // Atomic writes create private temp files; these are for people and CI to read.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).fs_context(path)?;
    }
    std::fs::write(&key_path, key).fs_context(&key_path)?;
    Ok((h, j))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_svg_with_bars_and_lines() {
        let h = histogram_svg("t", &[0.99, 0.995, 0.999, 1.0, 1.0], "cosine", 10);
        assert!(
            h.starts_with("<svg") && h.matches("<rect").count() > 5,
            "{h}"
        );
        let t = throughput_svg("tp", &[("a".into(), vec![(1.0, 100.0), (8.0, 400.0)])]);
        let e = interval_svg("iv", &[("ov_int8".into(), 0.01, [0.0, 0.03])], Some(0.005));
        assert!(e.starts_with("<svg") && e.contains("ov_int8"), "{e}");
        assert_eq!(interval_svg("none", &[], None), "");
        assert!(t.contains("<polyline") || t.contains("<path"), "{t}");
        assert_eq!(histogram_svg("empty", &[], "x", 10), "");
    }
}
