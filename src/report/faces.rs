//! Whether a detector's INT8 was calibrated and searched on faces like those it is judged
//! on. Each step that sees a detector's set reports its faces (`faces` in calibrate's
//! report, `accuracy_control.faces` in a searched step's, `dataset.faces` in compare's);
//! after a run, every compared candidate's calibration and search sets are held against
//! the compare set. A cached step's report serves as well as a built one's.

use std::fmt::Write as _;

use serde::Deserialize;

use crate::context::BuildContext;
use crate::metrics::faces::{FaceStats, HEIGHT_EDGES, uncovered};
use crate::scheduler::RunReport;

/// The parts of any step's report that carry a set's faces.
#[derive(Deserialize)]
struct Carrier {
    #[serde(default)]
    faces: Option<FaceStats>,
    #[serde(default)]
    accuracy_control: Option<Inner>,
    /// Compare's dataset summary; other steps name their dataset here as a string.
    #[serde(default)]
    dataset: serde_json::Value,
}

#[derive(Deserialize)]
struct Inner {
    #[serde(default)]
    faces: Option<FaceStats>,
}

/// A set's faces as one step of the run reported them.
pub(crate) struct SetFaces {
    pub step: String,
    /// `compared`, `calibration` or `accuracy-control search`.
    pub role: &'static str,
    pub stats: FaceStats,
}

/// Every set a step of this run reports faces for: each step's report read once.
pub(crate) fn sets(run: &RunReport, ctx: &BuildContext) -> Vec<SetFaces> {
    let mut out = Vec::new();
    for s in &run.steps {
        let Some(mut c) = ctx
            .step_out_dir(&s.step)
            .ok()
            .and_then(|d| std::fs::read(d.join("report.json")).ok())
            .and_then(|b| serde_json::from_slice::<Carrier>(&b).ok())
        else {
            continue;
        };
        for (role, stats) in [
            (
                "compared",
                c.dataset
                    .get_mut("faces")
                    .and_then(|f| serde_json::from_value(f.take()).ok()),
            ),
            ("calibration", c.faces),
            (
                "accuracy-control search",
                c.accuracy_control.and_then(|a| a.faces),
            ),
        ] {
            if let Some(stats) = stats {
                out.push(SetFaces {
                    step: s.step.clone(),
                    role,
                    stats,
                });
            }
        }
    }
    out
}

/// A warning for each compared candidate whose calibration set (a calibrate step it
/// references) or search set (its own accuracy control) misses the compare set's small
/// faces.
pub(crate) fn coverage(sets: &[SetFaces], ctx: &BuildContext) -> Vec<String> {
    let of = |step: &str, role: &str| {
        sets.iter()
            .find(|x| x.step == step && x.role == role)
            .map(|x| &x.stats)
    };
    let references = |step: &str| {
        ctx.manifest
            .steps
            .get(step)
            .map(|s| s.spec.params.kind().references())
            .unwrap_or_default()
    };
    let mut warnings = Vec::new();
    for compared in sets.iter().filter(|x| x.role == "compared") {
        for c in references(&compared.step) {
            let mut sources: Vec<(String, &FaceStats)> = references(&c)
                .into_iter()
                .filter_map(|r| Some((r.clone(), of(&r, "calibration")?)))
                .collect();
            if let Some(f) = of(&c, "accuracy-control search") {
                sources.push((format!("{c} (accuracy control)"), f));
            }
            for (from, f) in sources {
                if let Some(w) = uncovered(f, &compared.stats) {
                    warnings.push(format!(
                        "step `{}`, candidate `{c}`: {w} (set of `{from}`); calibrate and search on a set with faces that small, e.g. a derived mosaic (docs/manifest.md, derived datasets)",
                        compared.step
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
pub(crate) fn html(sets: &[SetFaces], warnings: &[String]) -> String {
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
    for SetFaces {
        step,
        role,
        stats: f,
    } in sets
    {
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
