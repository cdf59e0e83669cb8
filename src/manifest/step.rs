//! A step entry: `kind`, `needs`, `from`, `params`. Parsed by hand (not an internally tagged
//! enum) because serde's tagged enums buffer the map and lose the line of a bad param;
//! here `params` is deserialized straight from the YAML with its kind's type, so every
//! error points at the exact key.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::steps::{
    benchmark::BenchmarkParams, calibrate::CalibrateParams, check::CheckParams,
    compare::CompareParams, convert::ConvertParams, quantize::QuantizeParams,
    release::ReleaseParams, simplify::SimplifyParams,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Check,
    Simplify,
    Calibrate,
    Convert,
    Quantize,
    Compare,
    Benchmark,
    Release,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Check => "check",
            StepKind::Simplify => "simplify",
            StepKind::Calibrate => "calibrate",
            StepKind::Convert => "convert",
            StepKind::Quantize => "quantize",
            StepKind::Benchmark => "benchmark",
            StepKind::Release => "release",
            StepKind::Compare => "compare",
        }
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum StepParams {
    Check(CheckParams),
    Simplify(SimplifyParams),
    Calibrate(CalibrateParams),
    Convert(ConvertParams),
    Quantize(QuantizeParams),
    Compare(CompareParams),
    Benchmark(BenchmarkParams),
    Release(ReleaseParams),
}

#[derive(Debug, Clone)]
pub struct StepSpec {
    pub kind: StepKind,
    pub needs: Vec<Spanned<String>>,
    /// The upstream step whose `model` output this step consumes; absent: the source model.
    pub from: Option<Spanned<String>>,
    pub params: StepParams,
    pub description: Option<String>,
}

impl StepSpec {
    pub fn kind(&self) -> StepKind {
        self.kind
    }
}

const FIELDS: &[&str] = &["kind", "needs", "from", "params", "description"];

impl<'de> Deserialize<'de> for StepSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(StepVisitor)
    }
}

struct StepVisitor;

impl<'de> Visitor<'de> for StepVisitor {
    type Value = StepSpec;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a step: a map with `kind`, and optionally `needs`, `from`, `params`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StepSpec, A::Error> {
        let mut kind: Option<StepKind> = None;
        let mut needs = None;
        let mut from = None;
        let mut params = None;
        let mut description = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "kind" => kind = Some(map.next_value()?),
                "needs" => needs = Some(map.next_value()?),
                "from" => from = Some(map.next_value()?),
                "description" => description = Some(map.next_value()?),
                "params" => {
                    let Some(k) = kind else {
                        return Err(de::Error::custom(
                            "`params` comes before `kind`; write `kind:` first so the params can be checked against it",
                        ));
                    };
                    params = Some(match k {
                        StepKind::Check => StepParams::Check(map.next_value()?),
                        StepKind::Simplify => StepParams::Simplify(map.next_value()?),
                        StepKind::Calibrate => StepParams::Calibrate(map.next_value()?),
                        StepKind::Convert => StepParams::Convert(map.next_value()?),
                        StepKind::Quantize => StepParams::Quantize(map.next_value()?),
                        StepKind::Benchmark => StepParams::Benchmark(map.next_value()?),
                        StepKind::Release => StepParams::Release(map.next_value()?),
                        StepKind::Compare => StepParams::Compare(map.next_value()?),
                    });
                }
                other => return Err(de::Error::unknown_field(other, FIELDS)),
            }
        }
        let kind = kind.ok_or_else(|| de::Error::missing_field("kind"))?;
        let params = match params {
            Some(p) => p,
            None => default_params(kind).ok_or_else(|| {
                de::Error::custom(format!(
                    "a `{kind}` step needs `params:` (see docs/manifest.md)"
                ))
            })?,
        };
        Ok(StepSpec {
            kind,
            needs: needs.unwrap_or_default(),
            from,
            params,
            description,
        })
    }
}

/// Params of kinds that need none; None for kinds with required params.
fn default_params(kind: StepKind) -> Option<StepParams> {
    match kind {
        StepKind::Check => Some(StepParams::Check(CheckParams::default())),
        StepKind::Simplify => Some(StepParams::Simplify(SimplifyParams::default())),
        StepKind::Calibrate
        | StepKind::Convert
        | StepKind::Quantize
        | StepKind::Compare
        | StepKind::Benchmark
        | StepKind::Release => None,
    }
}
