//! Gates: one type for every limit a manifest can set (in `compare` and in `release`), one
//! type for a measured figure, and one rule that decides pass or fail.
//!
//! The rule: a gate passes only on a [`Measurement::Value`] within its limit, or on an
//! interval wholly within it. A figure that was not measured (no identities, no landmarks,
//! an artifact that is unavailable) or that cannot be measured (a FAR below the set's
//! resolution) fails the gate ("fail closed"): an artifact is never passed on missing
//! evidence. A gate block may say otherwise with `missing: pass`.
//!
//! Speed figures ([`Measurement::Speed`]) are always judged on their interval, at the
//! block's `confidence` (0.95 by default): pass when all of it meets the limit, fail when
//! none does, inconclusive otherwise, which fails unless `inconclusive: pass`. The
//! benchmark adds processes while a gate is inconclusive, within its `retry:` budget.
//! `unreliable:` is the old name of `inconclusive:` (docs/release.md).

use serde::{Deserialize, Serialize};

use super::speed::SpeedFigure;
use super::uncertainty::{CONFIDENCES, Spread, units_to_resolve};

/// A figure as a gate sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Measurement {
    /// Measured.
    Value(f64),
    /// Nothing to measure it on (the reason says why).
    NotMeasured(String),
    /// The data cannot resolve it (e.g. a FAR below 1 / impostor pairs).
    NotMeasurable(String),
    /// A speed figure measured across processes: always judged on its interval. The
    /// string, when there is one, is a note for the refusal (an FP16 IR that executed in
    /// f32, so its speed is FP32's).
    Speed(SpeedFigure, Option<String>),
    /// Measured, with bootstrap intervals: judged on the point unless the gate block sets
    /// `confidence`, then on the interval at that confidence.
    Estimate(f64, Spread),
}

impl Measurement {
    /// A value, or `NotMeasured(why)` when there is none.
    pub fn from_option(v: Option<f64>, why: impl Into<String>) -> Measurement {
        match v {
            Some(x) => Measurement::Value(x),
            None => Measurement::NotMeasured(why.into()),
        }
    }

    /// A plain value with the bootstrap intervals of its figure, when there are any.
    pub fn with_spread(self, spread: Option<&Spread>) -> Measurement {
        match (self, spread) {
            (Measurement::Value(v), Some(s)) => Measurement::Estimate(v, s.clone()),
            (m, _) => m,
        }
    }

    /// The number, when one was measured (reliable or not).
    pub fn value(&self) -> Option<f64> {
        match self {
            Measurement::Value(v) | Measurement::Estimate(v, _) => Some(*v),
            Measurement::Speed(f, _) => Some(f.value),
            _ => None,
        }
    }

    /// The status word recorded beside a gate that did not get a plain value.
    fn status(&self) -> Option<&'static str> {
        match self {
            Measurement::Value(_) | Measurement::Estimate(..) | Measurement::Speed(..) => None,
            Measurement::NotMeasured(_) => Some("not measured"),
            Measurement::NotMeasurable(_) => Some("not measurable"),
        }
    }

    fn why(&self) -> Option<&str> {
        match self {
            Measurement::Value(_) | Measurement::Estimate(..) | Measurement::Speed(..) => None,
            Measurement::NotMeasured(w) | Measurement::NotMeasurable(w) => Some(w),
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

/// What a gate does when the interval of its figure straddles the limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnInconclusive {
    /// Fail the gate (the default): a set too small to decide is no evidence.
    #[default]
    Fail,
    /// Let it pass; the report still says it was inconclusive.
    Pass,
}

/// A relative speed gate: at least `value` times as fast as the artifact `over`, measured
/// in the same benchmark in interleaved pairs of processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Speedup {
    /// Another artifact step of the same benchmark, e.g. `openvino_fp32`.
    pub over: String,
    /// The least ratio: `over`'s batch-1 median latency over this artifact's.
    pub value: f64,
}

/// A limit's number, whatever its form in the manifest.
trait Limit {
    fn value(&self) -> f64;
}

impl Limit for f64 {
    fn value(&self) -> f64 {
        *self
    }
}

impl Limit for u64 {
    fn value(&self) -> f64 {
        *self as f64
    }
}

impl Limit for Speedup {
    fn value(&self) -> f64 {
        self.value
    }
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
    /// Landmarks: mean NME over faces (point distance over the normaliser).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nme_mean_max: Option<f64>,
    /// Landmarks: NME of the worst face.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nme_max: Option<f64>,
    /// 3D landmarks: the worst face's pose error, the largest of pitch, yaw and roll
    /// between the reference's and the candidate's points, degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pose_error_max: Option<f64>,
    /// Attribute: faces whose gender differs from the reference's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gender_flips_max: Option<u64>,
    /// Attribute: mean |age difference| from the reference, years.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_mae_max: Option<f64>,
    /// Attribute: largest |age difference| from the reference, years.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_error_max: Option<f64>,
    /// Swapper: the worst face's PSNR of the swapped image against the reference's, dB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psnr_min: Option<f64>,
    /// Swapper: mean PSNR over faces, dB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psnr_mean_min: Option<f64>,
    /// Swapper: the worst face's SSIM against the reference's swapped image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssim_min: Option<f64>,
    /// Swapper: mean SSIM over faces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssim_mean_min: Option<f64>,
    /// Swapper: largest |pixel difference| from the reference's swapped image, in 0..255.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pixel_error_max: Option<f64>,
    /// Swapper: the worst face's cosine between the recognizer's embeddings of the
    /// candidate's and the reference's swapped faces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_cosine_min: Option<f64>,
    /// Swapper: mean of those cosines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_cosine_mean_min: Option<f64>,
    /// Swapper: faces whose match with the source identity (at `identity_threshold`)
    /// differs from the reference's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_flips_max: Option<u64>,
    /// Detection: largest |score difference| of a matched box.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_drift_max: Option<f64>,
    /// Detection: fraction of images whose kept set after NMS is the reference's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nms_parity_min: Option<f64>,
    /// Benchmark: how much faster than another artifact of the same run, measured in
    /// interleaved pairs of processes: its batch-1 median latency over this one's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speedup_min: Option<Speedup>,
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
    /// The old name of `inconclusive:`, from when speed figures were judged reliable or
    /// not: read as `inconclusive:` (when that is not set), with a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreliable: Option<OnInconclusive>,
    /// Judge figures that carry bootstrap intervals on the whole interval at this
    /// confidence (0.9, 0.95 or 0.99) instead of the point estimate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// What a gate whose interval straddles its limit does (default: fail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inconclusive: Option<OnInconclusive>,
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
                    $(stringify!($field) => self.$field.as_ref().map(Limit::value),)*
                    _ => None,
                }
            }

            /// `self`, with every limit `over` sets taking precedence.
            pub fn overridden_by(&self, over: Option<&Gates>) -> Gates {
                let Some(o) = over else { return self.clone() };
                Gates {
                    $($field: o.$field.clone().or_else(|| self.$field.clone()),)*
                    atol: o.atol.or(self.atol),
                    rtol: o.rtol.or(self.rtol),
                    missing: o.missing.or(self.missing),
                    unreliable: o.unreliable.or(self.unreliable),
                    confidence: o.confidence.or(self.confidence),
                    inconclusive: o.inconclusive.or(self.inconclusive),
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
    nme_mean_max => "nme_mean", false;
    nme_max => "nme_max", false;
    pose_error_max => "pose_error_max", false;
    gender_flips_max => "gender_flips", false;
    age_mae_max => "age_mae", false;
    age_error_max => "age_error_max", false;
    nms_parity_min => "nms_parity", true;
    psnr_min => "psnr_min", true;
    psnr_mean_min => "psnr_mean", true;
    ssim_min => "ssim_min", true;
    ssim_mean_min => "ssim_mean", true;
    pixel_error_max => "pixel_error_max", false;
    identity_cosine_min => "identity_cosine_min", true;
    identity_cosine_mean_min => "identity_cosine_mean", true;
    identity_flips_max => "identity_flips", false;
    speedup_min => "speedup_min", true;
    p99_ms_max => "p99_ms_max", false;
    p50_ms_max => "p50_ms_max", false;
    throughput_min => "throughput_min", true;
    rss_mib_max => "rss_mib_max", false;
    cold_start_ms_max => "cold_start_ms_max", false;
}

/// The metrics a `compare` of embedders measures.
pub const RECOGNITION: &[&str] = &["cosine_min", "tar_drop_max", "flips_max"];
/// The metrics a `compare` of detectors measures.
pub const DETECTION: &[&str] = &[
    "recall_min",
    "fp_per_image_max",
    "landmark_nme_max",
    "score_drift_max",
    "nms_parity_min",
];
/// The metrics a `compare` of landmark models measures.
pub const LANDMARKS: &[&str] = &["nme_mean_max", "nme_max", "pose_error_max"];
/// The metrics a `compare` of attribute models measures.
pub const ATTRIBUTE: &[&str] = &["gender_flips_max", "age_mae_max", "age_error_max"];
/// The metrics a `compare` of swappers measures.
pub const SWAPPER: &[&str] = &[
    "psnr_min",
    "psnr_mean_min",
    "ssim_min",
    "ssim_mean_min",
    "pixel_error_max",
    "identity_cosine_min",
    "identity_cosine_mean_min",
    "identity_flips_max",
];
/// The metrics a `benchmark` measures.
pub const PERFORMANCE: &[&str] = &[
    "speedup_min",
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

    /// What this block does with figures that are not plain values.
    pub fn policy(&self) -> Policy {
        Policy {
            missing: self.missing.unwrap_or_default(),
            confidence: self.confidence,
            inconclusive: self.inconclusive.or(self.unreliable).unwrap_or_default(),
        }
    }

    /// Why `confidence` is not one of the kept confidences, with the fix.
    pub fn confidence_problem(&self) -> Option<(String, Option<String>)> {
        let c = self.confidence?;
        (!CONFIDENCES.iter().any(|k| (k - c).abs() < 1e-9)).then(|| {
            (
                format!("`confidence: {c}` is not a confidence compare keeps intervals at"),
                Some("use 0.9, 0.95 or 0.99".into()),
            )
        })
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
        let policy = self.policy();
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
                    name, m.at_least, &measured, limit, policy, source,
                ))
            })
            .collect()
    }
}

/// What a gate block does with figures that are not plain values.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Policy {
    /// Not measured or not measurable.
    pub missing: OnMissing,
    /// Judge intervals at this confidence (None: the point estimate; speed figures: 0.95).
    pub confidence: Option<f64>,
    /// An interval that straddles the limit.
    pub inconclusive: OnInconclusive,
}

/// How gate results are named in a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// By the figure (`cosine_min`, `tar_drop`, `recall`): compare's reports.
    Figure,
    /// By the manifest key (`tar_drop_max`): release's reports.
    Key,
}

/// Why an interval cannot decide a gate, and about how large a set would.
fn straddle(value: f64, iv: [f64; 2], confidence: f64, limit: f64, spread: &Spread) -> String {
    let pct = (confidence * 100.0).round();
    let unit = &spread.resampled_by;
    let units = match unit.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None if unit.ends_with('s') => format!("{unit}es"),
        None => format!("{unit}s"),
    };
    let size = match units_to_resolve(value, iv, limit, spread.units) {
        Some(n) => format!(
            "about {n} {units} ({:.1}x the {} measured) would resolve it",
            n as f64 / spread.units.max(1) as f64,
            spread.units,
        ),
        None => "the figure sits on the limit: no set size resolves it".into(),
    };
    format!(
        "the {pct}% interval [{:.6}, {:.6}] straddles the limit {limit} (resampled by {unit}, {} {units}); {size}",
        iv[0], iv[1], spread.units
    )
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
    /// `not measured`, `not measurable` or `inconclusive`; for a speed figure always one of
    /// `pass`, `fail`, `inconclusive`; absent for a plain value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Why the figure is missing, or why its interval cannot decide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// Where the figure comes from (release: the compare or benchmark step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// A gate that passed on a figure that is not a plain value (`missing: pass`,
    /// `inconclusive: pass`) says so here, as does a gate block that still says
    /// `unreliable:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// The figure's bootstrap interval at `confidence` (0.95 when the gate judged the point).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<[f64; 2]>,
    /// The confidence the gate judged the interval at (absent: it judged the point).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
}

impl GateResult {
    /// The one rule (see the module doc).
    pub fn judge(
        name: &str,
        at_least: bool,
        measured: &Measurement,
        limit: f64,
        policy: Policy,
        source: Option<String>,
    ) -> GateResult {
        let within = |v: f64| if at_least { v >= limit } else { v <= limit };
        let mut interval = None;
        let mut confidence = None;
        let mut inconclusive = None;
        let mut speed_status = None;
        let (passed, warning) = match measured {
            Measurement::Value(v) => (within(*v), None),
            Measurement::Estimate(v, spread) => {
                match policy.confidence.and_then(|c| Some((c, spread.at(c)?))) {
                    None => {
                        interval = Some(spread.ci95);
                        (within(*v), None)
                    }
                    Some((c, iv)) => {
                        interval = Some(iv);
                        confidence = Some(c);
                        match (within(iv[0]), within(iv[1])) {
                            (true, true) => (true, None),
                            (false, false) => (false, None),
                            _ => {
                                let why = straddle(*v, iv, c, limit, spread);
                                let pass = policy.inconclusive == OnInconclusive::Pass;
                                let warning = pass.then(|| {
                                    format!("inconclusive ({why}), passed by `inconclusive: pass`")
                                });
                                inconclusive = Some(why);
                                (pass, warning)
                            }
                        }
                    }
                }
            }
            Measurement::NotMeasured(w) | Measurement::NotMeasurable(w) => {
                let pass = policy.missing == OnMissing::Pass;
                let warning = pass.then(|| {
                    format!(
                        "{} ({w}), passed by `missing: pass`",
                        measured.status().unwrap_or_default()
                    )
                });
                (pass, warning)
            }
            Measurement::Speed(f, _) => {
                let c = policy.confidence.unwrap_or(0.95);
                let iv = f.interval(c).unwrap_or(f.spread.ci95);
                interval = Some(iv);
                confidence = Some(c);
                // A percentile with too few samples has no upper bound yet: it cannot pass a
                // ceiling, though its lower end can already fail it.
                let open = (!at_least).then(|| f.open_above.as_ref()?.at(c)).flatten();
                let status = match (within(iv[0]), within(iv[1]), &open) {
                    (true, true, None) => "pass",
                    (false, false, _) => "fail",
                    _ => "inconclusive",
                };
                speed_status = Some(status);
                if status == "inconclusive" {
                    let why = open.unwrap_or_else(|| straddle(f.value, iv, c, limit, &f.spread));
                    let pass = policy.inconclusive == OnInconclusive::Pass;
                    let warning = pass
                        .then(|| format!("inconclusive ({why}), passed by `inconclusive: pass`"));
                    inconclusive = Some(why);
                    (pass, warning)
                } else {
                    (status == "pass", None)
                }
            }
        };
        let status = match (&inconclusive, speed_status) {
            (Some(_), _) => Some("inconclusive".to_string()),
            (None, Some(s)) => Some(s.to_string()),
            (None, None) => measured.status().map(String::from),
        };
        let why = match measured {
            Measurement::Speed(_, Some(note)) if !passed => Some(match &inconclusive {
                Some(w) => format!("{w}; {note}"),
                None => note.clone(),
            }),
            _ => inconclusive.or_else(|| measured.why().map(String::from)),
        };
        GateResult {
            metric: name.to_string(),
            value: measured.value(),
            limit,
            passed,
            status,
            why,
            source,
            warning,
            interval,
            confidence,
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
        match (self.value, self.status.as_deref()) {
            (Some(v), None) => format!("{} {} violates limit {}", self.metric, num(v), self.limit),
            (Some(v), Some("fail" | "pass")) => format!(
                "{} {}{} violates limit {}{}",
                self.metric,
                num(v),
                self.interval_text(),
                self.limit,
                self.note()
            ),
            _ => self.not_compared(),
        }
    }

    /// ` (95% interval [a, b])` for a gate judged on an interval, else nothing.
    fn interval_text(&self) -> String {
        match (self.interval, self.confidence) {
            (Some([lo, hi]), Some(c)) => {
                format!(" ({:.0}% interval [{lo:.6}, {hi:.6}])", c * 100.0)
            }
            _ => String::new(),
        }
    }

    /// `: <why>` for a decided gate that carries a note (an FP16 IR executed in f32).
    fn note(&self) -> String {
        self.why
            .as_deref()
            .map(|w| format!(": {w}"))
            .unwrap_or_default()
    }

    /// Why a release refused on this gate, with where the figure comes from: the measured
    /// value against the limit, or why no value was compared with it.
    pub fn refusal(&self) -> String {
        let source = self
            .source
            .as_deref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        match (self.value, self.status.as_deref()) {
            (Some(v), None) => format!(
                "{}: measured {v:.6} vs limit {}{source}",
                self.metric, self.limit
            ),
            (Some(v), Some("fail" | "pass")) => format!(
                "{}: measured {v:.6}{} vs limit {}{source}{}",
                self.metric,
                self.interval_text(),
                self.limit,
                self.note()
            ),
            _ => format!("{}{source}", self.not_compared()),
        }
    }

    /// `<metric>: <status> (<why>): [<value>] not compared with the limit <limit>`, or for an
    /// interval that straddles the limit, `<metric> <value>: inconclusive: <why>`.
    fn not_compared(&self) -> String {
        if self.status.as_deref() == Some("inconclusive") {
            return format!(
                "{} {:.6}: inconclusive: {}",
                self.metric,
                self.value.unwrap_or(f64::NAN),
                self.why.as_deref().unwrap_or_default()
            );
        }
        let status = self.status.as_deref().unwrap_or("not measured");
        let why = self
            .why
            .as_deref()
            .map(|w| format!(" ({w})"))
            .unwrap_or_default();
        let value = self
            .value
            .map(|v| format!("measured {v:.6}, "))
            .unwrap_or_default();
        format!(
            "{}: {status}{why}: {value}not compared with the limit {}",
            self.metric, self.limit
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(key: &str, m: Measurement, limit: f64, on: OnMissing) -> GateResult {
        let metric = Gates::METRICS.iter().find(|x| x.key == key).unwrap();
        let policy = Policy {
            missing: on,
            ..Default::default()
        };
        GateResult::judge(key, metric.at_least, &m, limit, policy, None)
    }

    fn speed(value: f64, lo: f64, hi: f64) -> Measurement {
        let spread = Spread {
            ci90: [lo, hi],
            ci95: [lo, hi],
            ci99: [lo, hi],
            resampled_by: "process".into(),
            units: 3,
            replicates: 1000,
        };
        let f = SpeedFigure {
            value,
            spread,
            method: "test".into(),
            open_above: None,
        };
        Measurement::Speed(f, None)
    }

    /// Speed figures are judged on their interval whatever the block says: pass, fail or
    /// inconclusive, which fails unless `inconclusive: pass` (or its old name
    /// `unreliable: pass`).
    #[test]
    fn speed_figures_decide_on_their_interval() {
        let p = Policy::default();
        let r = GateResult::judge("p99_ms_max", false, &speed(1.95, 1.7, 6.5), 50.0, p, None);
        assert!(r.passed && r.status.as_deref() == Some("pass"), "{r:?}");
        assert_eq!(r.confidence, Some(0.95));
        let r = GateResult::judge("p99_ms_max", false, &speed(7.0, 6.0, 8.0), 5.0, p, None);
        assert!(!r.passed && r.status.as_deref() == Some("fail"));
        assert!(
            r.refusal()
                .contains("measured 7.000000 (95% interval [6.000000, 8.000000]) vs limit 5")
        );
        let r = GateResult::judge("p99_ms_max", false, &speed(5.0, 4.0, 6.0), 5.0, p, None);
        assert!(!r.passed && r.status.as_deref() == Some("inconclusive"));
        assert!(
            r.why
                .unwrap()
                .contains("straddles the limit 5 (resampled by process, 3 processes)")
        );
        let old: Gates =
            serde_json::from_str(r#"{"p99_ms_max": 5, "unreliable": "pass"}"#).unwrap();
        let r = GateResult::judge(
            "p99_ms_max",
            false,
            &speed(5.0, 4.0, 6.0),
            5.0,
            old.policy(),
            None,
        );
        assert!(r.passed && r.warning.unwrap().contains("`inconclusive: pass`"));
        // Too few samples for a p99: the upper end is open, so the gate cannot pass...
        let Measurement::Speed(mut f, _) = speed(1.0, 0.9, 1.1) else {
            unreachable!()
        };
        f.open_above = crate::speed::percentiles(
            &[vec![1.0; 50]],
            &[0.99],
            &crate::uncertainty::Bootstrap {
                replicates: 10,
                seed: 1,
            },
        )
        .unwrap()[0]
            .open_above
            .clone();
        let m = Measurement::Speed(f, None);
        let r = GateResult::judge("p99_ms_max", false, &m, 50.0, p, None);
        assert_eq!(r.status.as_deref(), Some("inconclusive"));
        assert!(r.why.unwrap().contains("50 samples cannot bound p99"));
        // ...but can already fail it.
        let r = GateResult::judge("p99_ms_max", false, &m, 0.5, p, None);
        assert_eq!(r.status.as_deref(), Some("fail"));
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

    /// Missing figures fail closed unless the gate says `missing: pass`; the status is
    /// recorded.
    #[test]
    fn missing_figures_fail_closed_by_default() {
        let nm = Measurement::NotMeasured("no boxes".into());
        let r = judge("recall_min", nm.clone(), 0.9, OnMissing::Fail);
        assert!(!r.passed);
        assert_eq!(r.status.as_deref(), Some("not measured"));
        assert!(judge("recall_min", nm, 0.9, OnMissing::Pass).passed);
        let nmb = Measurement::NotMeasurable("FAR 1e-3 < 1/261".into());
        assert!(!judge("recall_min", nmb, 0.9, OnMissing::Fail).passed);
    }

    /// With `confidence`, a figure with intervals passes only when the whole interval is
    /// within the limit, fails when none of it is, and is inconclusive (failing unless
    /// `inconclusive: pass`) when it straddles; without it, the point decides as before.
    #[test]
    fn intervals_decide_with_confidence() {
        let spread = |lo: f64, hi: f64| Spread {
            ci90: [lo, hi],
            ci95: [lo, hi],
            ci99: [lo, hi],
            resampled_by: "identity".into(),
            units: 20,
            replicates: 1000,
        };
        let est = Measurement::Estimate(0.004, spread(-0.02, 0.03));
        let mut policy = Policy::default();
        let r = GateResult::judge("tar_drop", false, &est, 0.005, policy, None);
        assert!(r.passed && r.status.is_none() && r.confidence.is_none());
        assert_eq!(r.interval, Some([-0.02, 0.03]));
        policy.confidence = Some(0.95);
        let r = GateResult::judge("tar_drop", false, &est, 0.005, policy, None);
        assert!(!r.passed);
        assert_eq!(r.status.as_deref(), Some("inconclusive"));
        let why = r.why.clone().unwrap();
        assert!(
            why.contains("straddles") && why.contains("20 identities"),
            "{why}"
        );
        assert!(why.contains("would resolve it"), "{why}");
        assert!(
            r.describe()
                .starts_with("tar_drop 0.004000: inconclusive: the 95% interval")
        );
        let inside = Measurement::Estimate(0.001, spread(0.0, 0.004));
        assert!(GateResult::judge("tar_drop", false, &inside, 0.005, policy, None).passed);
        let outside = Measurement::Estimate(0.02, spread(0.01, 0.03));
        let r = GateResult::judge("tar_drop", false, &outside, 0.005, policy, None);
        assert!(!r.passed && r.status.is_none());
        policy.inconclusive = OnInconclusive::Pass;
        let r = GateResult::judge("tar_drop", false, &est, 0.005, policy, None);
        assert!(r.passed && r.warning.unwrap().contains("`inconclusive: pass`"));
        let g = Gates {
            confidence: Some(0.8),
            ..Default::default()
        };
        assert!(g.confidence_problem().is_some());
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
