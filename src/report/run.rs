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
use serde_json::Value;

use crate::context::BuildContext;
use crate::error::{IoContext, Result};
use crate::scheduler::{RunReport, Status};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn read(p: &Utf8Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

/// A histogram of `values` as an inline SVG.
pub fn histogram_svg(title: &str, values: &[f64], x_label: &str, bins: usize) -> String {
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

/// Throughput (images/s) against batch size, one line per configuration.
pub fn throughput_svg(title: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
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

fn num(v: &Value, prec: usize) -> String {
    v.as_f64()
        .map(|x| format!("{x:.prec$}"))
        .unwrap_or_else(|| "-".into())
}

fn compare_section(name: &str, r: &Value) -> String {
    let mut s = format!("<h2>compare <code>{}</code></h2>", esc(name));
    let cands = r["candidates"].as_array().cloned().unwrap_or_default();
    let pass = |c: &Value| match c["passed"].as_bool() {
        Some(true) => "pass".to_string(),
        Some(false) => "FAIL".to_string(),
        None => format!("unavailable: {}", c["unavailable"].as_str().unwrap_or("")),
    };
    if r["task"] == "detection" {
        let rows: Vec<Vec<String>> = cands
            .iter()
            .map(|c| {
                vec![
                    c["label"].as_str().unwrap_or("").into(),
                    format!(
                        "{} {}",
                        c["artifact"].as_str().unwrap_or("-"),
                        c["artifact_precision"].as_str().unwrap_or("")
                    ),
                    c["execution"]["precision"].as_str().unwrap_or("-").into(),
                    num(&c["total"]["recall"], 4),
                    num(&c["total"]["fp_per_image"], 3),
                    num(&c["total"]["score_drift"]["max"], 4),
                    num(&c["total"]["landmark_nme"]["max"], 5),
                    num(&c["total"]["nms_parity"], 3),
                    pass(c),
                ]
            })
            .collect();
        s += &table(
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
        return s;
    }
    let rows: Vec<Vec<String>> = cands
        .iter()
        .map(|c| {
            vec![
                c["label"].as_str().unwrap_or("").into(),
                format!(
                    "{} {}",
                    c["artifact"].as_str().unwrap_or("-"),
                    c["artifact_precision"].as_str().unwrap_or("")
                ),
                c["execution"]["precision"].as_str().unwrap_or("-").into(),
                num(&c["cosine"]["min"], 6),
                num(&c["cosine"]["p01"], 6),
                num(&c["cosine"]["mean"], 6),
                num(&c["verification"]["tar_at_operating_far"]["candidate"], 4),
                c["verification"]["flips_at_reference_threshold"]
                    .as_u64()
                    .map(|f| f.to_string())
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
    for c in &cands {
        let v: Vec<f64> = c["cosine_per_image"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        if !v.is_empty() {
            s += &format!(
                "<figure>{}</figure>",
                histogram_svg(
                    &format!(
                        "{}: cosine vs ONNX, per image",
                        c["label"].as_str().unwrap_or("")
                    ),
                    &v,
                    "cosine similarity",
                    20
                )
            );
        }
    }
    s + "</div>"
}

fn benchmark_section(name: &str, r: &Value) -> String {
    let m = &r["machine"];
    let mut s = format!(
        "<h2>benchmark <code>{}</code></h2><p>{} — {} logical cores; ISA {}; GPU {}.</p>",
        esc(name),
        esc(m["cpu"].as_str().unwrap_or("")),
        m["logical_cores"],
        esc(&m["isa"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "))
            .unwrap_or_default()),
        esc(m["gpu"].as_str().unwrap_or("none"))
    );
    let results = r["results"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|x| {
            if x["available"] == false {
                return vec![
                    x["label"].as_str().unwrap_or("").into(),
                    format!("unavailable: {}", x["unavailable"].as_str().unwrap_or("")),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ];
            }
            vec![
                x["label"].as_str().unwrap_or("").into(),
                format!(
                    "{} {} ({})",
                    x["artifact"].as_str().unwrap_or(""),
                    x["artifact_precision"].as_str().unwrap_or(""),
                    x["execution"]["precision"].as_str().unwrap_or("")
                ),
                num(&x["cold_start"]["spawn_to_first_output_ms"], 1),
                num(&x["latency_batch1_ms"]["median"], 3),
                num(&x["latency_batch1_ms"]["p99"], 3),
                x["throughput"]
                    .as_array()
                    .map(|t| {
                        t.iter()
                            .map(|b| {
                                format!(
                                    "b{} {}",
                                    b["batch"],
                                    b["images_per_s"]
                                        .as_f64()
                                        .map(|v| format!("{v:.0}/s"))
                                        .unwrap_or_else(|| "unsupported".into())
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default(),
                num(&x["peak_rss_mib"], 1),
                x["reference"]["throughput_ratio"]
                    .as_f64()
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
            "p50 ms",
            "p99 ms",
            "throughput",
            "peak RSS MiB",
            "vs benchmark_app",
        ],
        &rows,
    );
    s += "<div class=plots>";
    for x in results.iter().filter(|x| x["available"] == true) {
        let v: Vec<f64> = x["latency_batch1_samples_ms"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        s += &format!(
            "<figure>{}</figure>",
            histogram_svg(
                &format!("{}: batch-1 latency", x["label"].as_str().unwrap_or("")),
                &v,
                "ms",
                24
            )
        );
    }
    let series: Vec<(String, Vec<(f64, f64)>)> = results
        .iter()
        .filter(|x| x["available"] == true)
        .map(|x| {
            (
                x["label"].as_str().unwrap_or("").to_string(),
                x["throughput"]
                    .as_array()
                    .map(|t| {
                        t.iter()
                            .filter_map(|b| {
                                Some((b["batch"].as_f64()?, b["images_per_s"].as_f64()?))
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
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

fn release_section(name: &str, r: &Value) -> String {
    let s = format!(
        "<h2>release <code>{}</code></h2><p>version <b>{}</b> in <code>{}</code></p>",
        esc(name),
        esc(r["version"].as_str().unwrap_or("(none: refused)")),
        esc(r["release_dir"].as_str().unwrap_or("-"))
    );
    let mut rows = Vec::new();
    for v in r["verdicts"].as_array().cloned().unwrap_or_default() {
        for g in v["gates"].as_array().cloned().unwrap_or_default() {
            rows.push(vec![
                v["artifact"].as_str().unwrap_or("").into(),
                g["metric"].as_str().unwrap_or("").into(),
                num(&g["value"], 4),
                num(&g["limit"], 4),
                g["source"].as_str().unwrap_or("").into(),
                if g["passed"] == true {
                    "pass".into()
                } else {
                    "FAIL".into()
                },
            ]);
        }
        for why in v["refused_because"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|x| x.as_str())
            .filter(|w| w.contains("unavailable"))
        {
            rows.push(vec![
                v["artifact"].as_str().unwrap_or("").into(),
                "available".into(),
                "-".into(),
                "-".into(),
                why.into(),
                "FAIL".into(),
            ]);
        }
    }
    s + &table(
        &["artifact", "gate", "measured", "limit", "source", "result"],
        &rows,
    )
}

/// Gate test cases: (suite, case, failure message if failed).
fn gate_cases(step: &str, r: &Value) -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    match r["kind"].as_str() {
        Some("compare") => {
            for c in r["candidates"].as_array().cloned().unwrap_or_default() {
                for g in c["gates"].as_array().cloned().unwrap_or_default() {
                    let failed = g["passed"] == false;
                    out.push((
                        format!("{step}.{}", c["label"].as_str().unwrap_or("")),
                        g["metric"].as_str().unwrap_or("").to_string(),
                        failed.then(|| {
                            format!(
                                "{} {} violates limit {}",
                                g["metric"].as_str().unwrap_or(""),
                                g["value"],
                                g["limit"]
                            )
                        }),
                    ));
                }
            }
        }
        Some("release") => {
            for v in r["verdicts"].as_array().cloned().unwrap_or_default() {
                for g in v["gates"].as_array().cloned().unwrap_or_default() {
                    let failed = g["passed"] == false;
                    out.push((
                        format!("{step}.{}", v["artifact"].as_str().unwrap_or("")),
                        g["metric"].as_str().unwrap_or("").to_string(),
                        failed.then(|| {
                            format!(
                                "measured {} vs limit {} ({})",
                                g["value"],
                                g["limit"],
                                g["source"].as_str().unwrap_or("")
                            )
                        }),
                    ));
                }
            }
        }
        _ => {}
    }
    out
}

pub fn junit(run: &RunReport, reports: &[(String, Value)]) -> String {
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

pub fn html(run: &RunReport, ctx: &BuildContext, reports: &[(String, Value)]) -> String {
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
    body += &table(&["step", "kind", "status", "error / reason"], &rows);
    for (step, r) in reports {
        body += &match r["kind"].as_str() {
            Some("compare") => compare_section(step, r),
            Some("benchmark") => benchmark_section(step, r),
            Some("release") => release_section(step, r),
            _ => String::new(),
        };
    }
    format!(
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>facebuild {}</title><style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}th{{background:#f3f3f3}}.pass{{color:#176317}}.fail{{color:#b00020;font-weight:bold}}.plots{{display:flex;flex-wrap:wrap;gap:8px}}figure{{margin:0}}</style></head><body>{body}</body></html>\n",
        esc(&run.pipeline)
    )
}

/// Write report.html and junit.xml into the pipeline's output folder (only when changed).
pub fn write(run: &RunReport, ctx: &BuildContext) -> Result<(Utf8PathBuf, Utf8PathBuf)> {
    let dir = &ctx.manifest.output_dir;
    let (h, j) = (dir.join("report.html"), dir.join("junit.xml"));
    let shown = |s: &crate::scheduler::StepResult| {
        matches!(s.kind.as_str(), "compare" | "benchmark" | "release")
    };
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
                s.outputs.get("report.json").map(|o| &o.digest)
            ))
            .collect::<Vec<_>>()
    );
    for s in run
        .steps
        .iter()
        .filter(|s| shown(s) && !s.outputs.contains_key("report.json"))
    {
        basis += &std::fs::read_to_string(ctx.step_out_dir(&s.step).join("report.json"))
            .unwrap_or_default();
    }
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
    for s in run.steps.iter().filter(|s| shown(s)) {
        if let Some(v) = read(&ctx.step_out_dir(&s.step).join("report.json")) {
            reports.push((s.step.clone(), v));
        }
    }
    std::fs::create_dir_all(dir).fs_context(dir)?;
    for (path, text) in [(&h, html(run, ctx, &reports)), (&j, junit(run, &reports))] {
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
        assert!(t.contains("<polyline") || t.contains("<path"), "{t}");
        assert_eq!(histogram_svg("empty", &[], "x", 10), "");
    }
}
