//! Whether a detector's INT8 was calibrated and searched on faces like those it is judged
//! on. Each step that sees a detector's set reports its faces (`faces` in calibrate's
//! report, `accuracy_control.faces` in a searched step's, `dataset.faces` in compare's);
//! after a run, every compared candidate's calibration and search sets are held against
//! the compare set. A cached step's report serves as well as a built one's.

use std::fmt::Write as _;

use camino::Utf8Path;
use serde::Deserialize;

use crate::context::BuildContext;
use crate::metrics::faces::{FaceStats, HEIGHT_EDGES, uncovered};
use crate::scheduler::RunReport;
use crate::steps::compare::report::CompareReport;

/// The parts of any step's report that carry a set's faces.
#[derive(Deserialize)]
struct Carrier {
    #[serde(default)]
    faces: Option<FaceStats>,
    #[serde(default)]
    accuracy_control: Option<SearchFaces>,
}

#[derive(Deserialize)]
struct SearchFaces {
    #[serde(default)]
    faces: Option<FaceStats>,
}

fn read<T: for<'de> Deserialize<'de>>(ctx: &BuildContext, step: &str) -> Option<T> {
    let p = ctx.step_out_dir(step).ok()?.join("report.json");
    read_file(&p)
}

fn read_file<T: for<'de> Deserialize<'de>>(p: &Utf8Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

/// Every set a step of this run reports faces for, with the step: (step, role, stats).
pub(crate) fn sets(run: &RunReport, ctx: &BuildContext) -> Vec<(String, &'static str, FaceStats)> {
    let mut out = Vec::new();
    for s in &run.steps {
        if let Some(r) = read::<CompareReport>(ctx, &s.step)
            && let Some(f) = r.dataset.faces
        {
            out.push((s.step.clone(), "compared", f));
            continue;
        }
        if let Some(c) = read::<Carrier>(ctx, &s.step) {
            if let Some(f) = c.faces {
                out.push((s.step.clone(), "calibration", f));
            }
            if let Some(f) = c.accuracy_control.and_then(|a| a.faces) {
                out.push((s.step.clone(), "accuracy-control search", f));
            }
        }
    }
    out
}

/// A warning for each compared candidate whose calibration set (a calibrate step it
/// references) or search set (its own accuracy control) misses the compare set's small
/// faces.
pub(crate) fn coverage(run: &RunReport, ctx: &BuildContext) -> Vec<String> {
    let mut warnings = Vec::new();
    for s in &run.steps {
        let Some(r) = read::<CompareReport>(ctx, &s.step) else {
            continue;
        };
        let Some(target) = &r.dataset.faces else {
            continue;
        };
        for c in &r.candidates {
            let Some(step) = ctx.manifest.steps.get(&c.step) else {
                continue;
            };
            let mut sources: Vec<(String, FaceStats)> = step
                .spec
                .params
                .kind()
                .references()
                .into_iter()
                .filter_map(|r| Some((r.clone(), read::<Carrier>(ctx, &r)?.faces?)))
                .collect();
            if let Some(f) = read::<Carrier>(ctx, &c.step).and_then(|x| x.accuracy_control?.faces) {
                sources.push((format!("{} (accuracy control)", c.step), f));
            }
            for (from, f) in sources {
                if let Some(w) = uncovered(&f, target) {
                    warnings.push(format!(
                        "step `{}`, candidate `{}`: {w} (set of `{from}`); calibrate and search on a set with faces that small, e.g. a derived mosaic (docs/manifest.md, derived datasets)",
                        s.step, c.step
                    ));
                }
            }
        }
    }
    warnings.sort();
    warnings.dedup();
    warnings
}

/// report.html's section: each set's face heights as bars, and the warnings.
pub(crate) fn html(sets: &[(String, &'static str, FaceStats)], warnings: &[String]) -> String {
    if sets.is_empty() {
        return String::new();
    }
    let mut h = String::from(
        "<h2>Faces per set</h2><p>Heights of the faces the reference detector finds, as a fraction of the input height. A calibration or search set should reach as low as the set it is compared on.</p>",
    );
    for w in warnings {
        let _ = write!(h, "<p class=fail>warning: {}</p>", super::run::esc(w));
    }
    h += "<div class=plots>";
    for (step, role, f) in sets {
        let labels: Vec<String> = HEIGHT_EDGES
            .iter()
            .scan(0.0, |lo, e| {
                let l = if e.is_finite() {
                    format!("{lo}-{e}")
                } else {
                    format!(">{lo}")
                };
                *lo = *e;
                Some(l)
            })
            .collect();
        let counts: Vec<usize> = f.histogram.iter().map(|(_, n)| *n).collect();
        let title = format!("{}: {} faces ({role}, {step})", f.dataset, f.faces);
        let _ = write!(
            h,
            "<figure>{}<figcaption>{}</figcaption></figure>",
            super::run::bars_svg(&title, &labels, &counts, "face height / input height"),
            super::run::esc(&f.line())
        );
    }
    h + "</div>"
}
