//! A step entry: `kind`, `needs`, `from`, `params`. Parsed by hand (not an internally tagged
//! enum) because serde's tagged enums buffer the map and lose the line of a bad param;
//! here `params` is deserialized straight from the YAML with its kind's type, so every
//! error points at the exact key.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_saphyr::Spanned;

pub(crate) use crate::steps::{StepKind, StepParams};

#[derive(Debug, Clone)]
pub(crate) struct StepSpec {
    pub kind: StepKind,
    pub needs: Vec<Spanned<String>>,
    /// The upstream step whose `model` output this step consumes; absent: the source model.
    pub from: Option<Spanned<String>>,
    pub params: StepParams,
    pub description: Option<String>,
    /// Where this step runs (over its kind's and the pipeline's `runs_on`).
    pub runs_on: Option<Spanned<super::placement::RunsOn>>,
    /// Which of `models:` the step builds.
    pub model: Option<Spanned<String>>,
    /// One copy of the step per model named, `<model>_<step>` (`models:` pipelines).
    pub each: Option<Spanned<Vec<String>>>,
}

const FIELDS: &[&str] = &[
    "kind",
    "needs",
    "from",
    "params",
    "description",
    "runs_on",
    "model",
    "each",
];

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
        let mut runs_on = None;
        let mut model = None;
        let mut each = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "kind" => kind = Some(map.next_value()?),
                "needs" => needs = Some(map.next_value()?),
                "from" => from = Some(map.next_value()?),
                "description" => description = Some(map.next_value()?),
                "runs_on" => runs_on = Some(map.next_value()?),
                "model" => model = Some(map.next_value()?),
                "each" => each = Some(map.next_value()?),
                "params" => {
                    let Some(k) = kind else {
                        return Err(de::Error::custom(
                            "`params` comes before `kind`; write `kind:` first so the params can be checked against it",
                        ));
                    };
                    params = Some(StepParams::deserialize_as(k, &mut map)?);
                }
                other => return Err(de::Error::unknown_field(other, FIELDS)),
            }
        }
        let kind = kind.ok_or_else(|| de::Error::missing_field("kind"))?;
        let params = match params {
            Some(p) => p,
            None => kind.default_params().ok_or_else(|| {
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
            runs_on,
            model,
            each,
        })
    }
}
