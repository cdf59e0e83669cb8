//! Gates: one type for every limit a manifest can set (in `compare` and in `release`), one
//! type for a measured figure, and one rule that decides pass or fail.
//!
//! The rule: a gate passes only on a [`Measurement::Value`] within its limit. A figure that
//! was not measured (no identities, no landmarks, an artifact that is unavailable), that
//! cannot be measured (a FAR below the set's resolution) or that is unreliable fails the
//! gate ("fail closed"): an artifact is never passed on missing evidence. A gate block may
//! say otherwise with `missing: pass`, which lets a figure that is absent pass; an
//! unreliable one still fails.

use serde::{Deserialize, Serialize};

/// A figure as a gate sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Measurement {
    /// Measured.
    Value(f64),
    /// Nothing to measure it on (the reason says why).
    NotMeasured(String),
    /// The data cannot resolve it (e.g. a FAR below 1 / impostor pairs).
    NotMeasurable(String),
    /// Measured, but too short or too noisy to trust.
    Unreliable(f64, String),
}

impl Measurement {
    /// A value, or `NotMeasured(why)` when there is none.
    pub fn from_option(v: Option<f64>, why: impl Into<String>) -> Measurement {
        match v {
            Some(x) => Measurement::Value(x),
            None => Measurement::NotMeasured(why.into()),
        }
    }

    /// The number, when one was measured (reliable or not).
    pub fn value(&self) -> Option<f64> {
        match self {
            Measurement::Value(v) | Measurement::Unreliable(v, _) => Some(*v),
            _ => None,
        }
    }

    /// The status word recorded beside a gate that did not get a plain value.
    fn status(&self) -> Option<&'static str> {
        match self {
            Measurement::Value(_) => None,
            Measurement::NotMeasured(_) => Some("not measured"),
            Measurement::NotMeasurable(_) => Some("not measurable"),
            Measurement::Unreliable(..) => Some("unreliable"),
        }
    }

    fn why(&self) -> Option<&str> {
        match self {
            Measurement::Value(_) => None,
            Measurement::NotMeasured(w)
            | Measurement::NotMeasurable(w)
            | Measurement::Unreliable(_, w) => Some(w),
        }
    }
}

/// What a gate does with a figure that is not measured or not measurable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissing {
    /// Fail the gate (the default): no promotion on missing evidence.
    #[default]
    Fail,
    /// Let it pass; the report still says the figure was missing.
    Pass,
}

/// Every limit a manifest can set. `compare` takes the accuracy gates, `release` all of
/// them; `*_min` are floors, `*_max` ceilings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    /// Minimum per-image cosine similarity to the ONNX original.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosine_min: Option<f64>,
    /// Largest allowed drop of TAR at the operating FAR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tar_drop_max: Option<f64>,
    /// Most accept/reject decisions allowed to flip at the reference's threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flips_max: Option<u64>,
    /// Detection: matched reference boxes / reference boxes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall_min: Option<f64>,
    /// Detection: unmatched candidate boxes per image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp_per_image_max: Option<f64>,
    /// Detection: largest landmark error of a matched box, over sqrt(box area).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landmark_nme_max: Option<f64>,
    /// Detection: largest |score difference| of a matched box.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_drift_max: Option<f64>,
    /// Detection: fraction of images whose kept set after NMS is the reference's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nms_parity_min: Option<f64>,
    /// Benchmark: batch-1 p99 latency, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms_max: Option<f64>,
    /// Benchmark: batch-1 median latency, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms_max: Option<f64>,
    /// Benchmark: best throughput over batch sizes, images/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_min: Option<f64>,
    /// Benchmark: peak resident memory of the measuring process, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_mib_max: Option<f64>,
    /// Benchmark: process spawn to first output, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start_ms_max: Option<f64>,
    /// Per-output compare (`generic`, `landmarks`): absolute tolerance. An element is out of
    /// tolerance when it exceeds both `atol` and `rtol` (Polygraphy's elementwise rule);
    /// an unset one of the two counts as 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atol: Option<f64>,
    /// Per-output compare: relative tolerance, |candidate - reference| / |reference|.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtol: Option<f64>,
    /// What a figure that is not measured does to its gate (default: fail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<OnMissing>,
}

/// A gate's metric: its manifest key, and whether the limit is a floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// The manifest key, e.g. `cosine_min`.
    pub key: &'static str,
    /// The figure's name in compare's reports, e.g. `cosine_min` or `recall`.
    pub figure: &'static str,
    /// A floor (`*_min`) or a ceiling (`*_max`).
    pub at_least: bool,
}

macro_rules! metrics {
    ($($field:ident => $figure:literal, $at_least:literal;)*) => {
        impl Gates {
            /// Every metric, in a fixed order (the order of reports).
            pub const METRICS: &'static [Metric] = &[
                $(Metric { key: stringify!($field), figure: $figure, at_least: $at_least },)*
            ];

            /// The limit set for `metric`, if any.
            pub fn limit(&self, metric: &str) -> Option<f64> {
                match metric {
                    $(stringify!($field) => self.$field.map(|v| v as f64),)*
                    _ => None,
                }
            }

            /// `self`, with every limit `over` sets taking precedence.
            pub fn overridden_by(&self, over: Option<&Gates>) -> Gates {
                let Some(o) = over else { return self.clone() };
                Gates {
                    $($field: o.$field.or(self.$field),)*
                    atol: o.atol.or(self.atol),
                    rtol: o.rtol.or(self.rtol),
                    missing: o.missing.or(self.missing),
                }
            }
        }
    };
}

metrics! {
    cosine_min => "cosine_min", true;
    tar_drop_max => "tar_drop", false;
    flips_max => "flips", false;
    recall_min => "recall", true;
    fp_per_image_max => "fp_per_image", false;
    landmark_nme_max => "landmark_nme", false;
    score_drift_max => "score_drift", false;
    nms_parity_min => "nms_parity", true;
    p99_ms_max => "p99_ms_max", false;
    p50_ms_max => "p50_ms_max", false;
    throughput_min => "throughput_min", true;
    rss_mib_max => "rss_mib_max", false;
    cold_start_ms_max => "cold_start_ms_max", false;
}

/// The metrics a `compare` of embedders measures.
pub(crate) const RECOGNITION: &[&str] = &["cosine_min", "tar_drop_max", "flips_max"];
/// The metrics a `compare` of detectors measures.
pub(crate) const DETECTION: &[&str] = &[
    "recall_min",
    "fp_per_image_max",
    "landmark_nme_max",
    "score_drift_max",
    "nms_parity_min",
];
/// The metrics a `benchmark` measures.
pub(crate) const PERFORMANCE: &[&str] = &[
    "p99_ms_max",
    "p50_ms_max",
    "throughput_min",
    "rss_mib_max",
    "cold_start_ms_max",
];

impl Gates {
    /// Whether `atol` or `rtol` is set: per-output compare then counts elements out of
    /// tolerance.
    pub fn has_tolerance(&self) -> bool {
        self.atol.is_some() || self.rtol.is_some()
    }

    /// Whether an element is out of tolerance: its error exceeds both `atol` and `rtol`
    /// (unset ones are 0), Polygraphy's elementwise rule. `rel` is infinite where the
    /// reference is 0 and the candidate is not.
    pub fn out_of_tolerance(&self, abs: f64, rel: f64) -> bool {
        abs > self.atol.unwrap_or(0.0) && rel > self.rtol.unwrap_or(0.0)
    }

    /// The keys of the limits that are set, among `keys`.
    pub fn set_among(&self, keys: &[&str]) -> Vec<&'static str> {
        Self::METRICS
            .iter()
            .filter(|m| keys.contains(&m.key) && self.limit(m.key).is_some())
            .map(|m| m.key)
            .collect()
    }

    /// Check every limit set among `keys` against `measure(metric)`, by the one rule. Results
    /// are named by the figure (compare's reports) or by the manifest key (release's).
    pub fn check(
        &self,
        keys: &[&str],
        naming: Naming,
        mut measure: impl FnMut(&Metric) -> (Measurement, Option<String>),
    ) -> Vec<GateResult> {
        let on_missing = self.missing.unwrap_or_default();
        Self::METRICS
            .iter()
            .filter(|m| keys.contains(&m.key))
            .filter_map(|m| {
                let limit = self.limit(m.key)?;
                let (measured, source) = measure(m);
                let name = match naming {
                    Naming::Figure => m.figure,
                    Naming::Key => m.key,
                };
                Some(GateResult::judge(
                    name, m.at_least, &measured, limit, on_missing, source,
                ))
            })
            .collect()
    }
}

/// How gate results are named in a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// By the figure (`cosine_min`, `tar_drop`, `recall`): compare's reports.
    Figure,
    /// By the manifest key (`tar_drop_max`): release's reports.
    Key,
}

/// One gate's verdict, as reports record it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    /// The figure's name (compare: `cosine_min`, `recall`...; release: the manifest key).
    pub metric: String,
    /// The measured value (null when there is none).
    pub value: Option<f64>,
    /// The limit set in the manifest.
    pub limit: f64,
    /// Whether the gate passed, by the one rule.
    pub passed: bool,
    /// `not measured`, `not measurable` or `unreliable`; absent for a plain value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Why the figure is missing or unreliable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// Where the figure comes from (release: the compare or benchmark step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl GateResult {
    /// The one rule (see the module doc).
    pub fn judge(
        name: &str,
        at_least: bool,
        measured: &Measurement,
        limit: f64,
        on_missing: OnMissing,
        source: Option<String>,
    ) -> GateResult {
        let passed = match measured {
            Measurement::Value(v) => {
                if at_least {
                    *v >= limit
                } else {
                    *v <= limit
                }
            }
            Measurement::NotMeasured(_) | Measurement::NotMeasurable(_) => {
                on_missing == OnMissing::Pass
            }
            Measurement::Unreliable(..) => false,
        };
        GateResult {
            metric: name.to_string(),
            value: measured.value(),
            limit,
            passed,
            status: measured.status().map(String::from),
            why: measured.why().map(String::from),
            source,
        }
    }

    /// One line for a person: what was measured against what.
    pub fn describe(&self) -> String {
        // Counts (flips, elements) read as counts; other figures to six decimals.
        let num = |v: f64| {
            if v.fract() == 0.0 && v.abs() < 1e15 {
                format!("{v:.0}")
            } else {
                format!("{v:.6}")
            }
        };
        match (self.value, &self.status) {
            (Some(v), None) => format!("{} {} violates limit {}", self.metric, num(v), self.limit),
            (v, Some(s)) => format!(
                "{} {s}{}{} (limit {})",
                self.metric,
                v.map(|v| format!(" at {}", num(v))).unwrap_or_default(),
                self.why
                    .as_deref()
                    .map(|w| format!(": {w}"))
                    .unwrap_or_default(),
                self.limit
            ),
            (None, None) => format!("{}: nothing measured (limit {})", self.metric, self.limit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(key: &str, m: Measurement, limit: f64, on: OnMissing) -> GateResult {
        let metric = Gates::METRICS.iter().find(|x| x.key == key).unwrap();
        GateResult::judge(key, metric.at_least, &m, limit, on, None)
    }

    /// A value within the limit passes; floors and ceilings point the right way.
    #[test]
    fn values_are_judged_against_floors_and_ceilings() {
        let fail = OnMissing::Fail;
        assert!(judge("cosine_min", Measurement::Value(0.995), 0.99, fail).passed);
        assert!(!judge("cosine_min", Measurement::Value(0.98), 0.99, fail).passed);
        assert!(judge("tar_drop_max", Measurement::Value(0.01), 0.05, fail).passed);
        assert!(!judge("tar_drop_max", Measurement::Value(0.06), 0.05, fail).passed);
    }

    /// Missing figures fail closed unless the gate says `missing: pass`; unreliable ones
    /// always fail; the status is recorded.
    #[test]
    fn missing_figures_fail_closed_by_default() {
        let nm = Measurement::NotMeasured("no boxes".into());
        let r = judge("recall_min", nm.clone(), 0.9, OnMissing::Fail);
        assert!(!r.passed);
        assert_eq!(r.status.as_deref(), Some("not measured"));
        assert!(judge("recall_min", nm, 0.9, OnMissing::Pass).passed);
        let nmb = Measurement::NotMeasurable("FAR 1e-3 < 1/261".into());
        assert!(!judge("recall_min", nmb, 0.9, OnMissing::Fail).passed);
        let un = Measurement::Unreliable(0.99, "cv 40%".into());
        assert!(!judge("recall_min", un, 0.9, OnMissing::Pass).passed);
    }

    /// Per-artifact overrides replace only what they set.
    #[test]
    fn overrides_replace_only_what_they_set() {
        let base = Gates {
            cosine_min: Some(0.99),
            tar_drop_max: Some(0.05),
            ..Default::default()
        };
        let over = Gates {
            cosine_min: Some(0.95),
            ..Default::default()
        };
        let g = base.overridden_by(Some(&over));
        assert_eq!(g.cosine_min, Some(0.95));
        assert_eq!(g.tar_drop_max, Some(0.05));
        assert_eq!(g.set_among(RECOGNITION), vec!["cosine_min", "tar_drop_max"]);
    }
}
