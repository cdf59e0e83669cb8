//! Packs: `models:` by name, steps that say which model they build (`model:`), and steps
//! written once for several models (`each: [det, rec]`), expanded here into one step per
//! model, `<model>_<step>`, before anything else reads the manifest. In a copy for model `m`,
//! every reference to another `each` step that covers `m` (`from`, `needs`, and the step
//! names in its params) is renamed to `m`'s copy, so a template reads as one model's
//! pipeline; `{model}` in a string param is `m` (a dataset per model: `"calib_{model}"`).

use indexmap::IndexMap;
use serde_saphyr::Spanned;

use super::step::StepSpec;
use super::{Location, ModelSpec, Step};
use crate::error::Error;
use crate::steps::StepParams;

/// The name of `step`'s copy for `model`.
pub(crate) fn copy_name(model: &str, step: &str) -> String {
    format!("{model}_{step}")
}

/// Rename, in `v`, every string that names a step `rename` knows.
fn rename_strings(v: &mut serde_json::Value, rename: &dyn Fn(&str) -> Option<String>) {
    match v {
        serde_json::Value::String(s) => {
            if let Some(n) = rename(s) {
                *s = n;
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| rename_strings(x, rename)),
        serde_json::Value::Object(o) => o.values_mut().for_each(|x| rename_strings(x, rename)),
        _ => {}
    }
}

/// `spec`'s copy for `model`, its references to the `each` steps covering `model` renamed.
fn copy_for(
    spec: &StepSpec,
    model: &str,
    each_of: &IndexMap<String, Vec<String>>,
) -> Result<StepSpec, String> {
    let rename = |s: &str| {
        each_of
            .get(s)
            .filter(|ms| ms.iter().any(|m| m == model))
            .map(|_| copy_name(model, s))
    };
    let mut c = spec.clone();
    c.each = None;
    c.model = None;
    if let Some(f) = c.from.as_mut()
        && let Some(n) = rename(&f.value)
    {
        f.value = n;
    }
    for d in &mut c.needs {
        if let Some(n) = rename(&d.value) {
            d.value = n;
        }
    }
    let mut params = serde_json::to_value(&c.params).map_err(|e| e.to_string())?;
    // `{model}` in a string param is the copy's model (`dataset: "calib_{model}"`).
    rename_strings(&mut params, &|s| {
        s.contains("{model}").then(|| s.replace("{model}", model))
    });
    // Only the names the kind reads as step references are renamed: a dataset or a backend
    // that happens to share a step's name stays.
    let refs = c.params.kind().references();
    rename_strings(&mut params, &|s| {
        refs.iter().any(|r| r == s).then(|| rename(s)).flatten()
    });
    c.params = StepParams::from_json(c.kind, params).map_err(|e| e.to_string())?;
    Ok(c)
}

/// The model a step that names none builds: the one its `from`, `needs` and referenced
/// steps build, when they agree; the only model of a one-model pack.
fn inferred(
    spec: &StepSpec,
    steps: &IndexMap<String, Step>,
    models: &IndexMap<String, ModelSpec>,
) -> Option<String> {
    let mut named: Vec<&String> = spec
        .from
        .iter()
        .chain(spec.needs.iter())
        .map(|d| &d.value)
        .filter_map(|d| steps.get(d)?.model.as_ref())
        .collect();
    let refs = spec.params.kind().references();
    named.extend(refs.iter().filter_map(|r| steps.get(r)?.model.as_ref()));
    named.dedup();
    match (named.as_slice(), models.len()) {
        ([one], _) => Some((*one).clone()),
        ([], 1) => models.keys().next().cloned(),
        _ => None,
    }
}

/// The steps as written, each `each` step expanded into its copies, every step with its
/// model (None in a one-`model:` pipeline). Problems go to `errors`.
pub(super) fn expand(
    raw: IndexMap<String, Spanned<StepSpec>>,
    models: &IndexMap<String, ModelSpec>,
    loc: &dyn Fn(&serde_saphyr::Location) -> Location,
    errors: &mut Vec<Error>,
) -> IndexMap<String, Step> {
    let each_of: IndexMap<String, Vec<String>> = raw
        .iter()
        .filter_map(|(n, s)| Some((n.clone(), s.value.each.as_ref()?.value.clone())))
        .collect();
    let known = || models.keys().cloned().collect::<Vec<_>>().join(", ");
    let mut steps: IndexMap<String, Step> = IndexMap::new();
    for (name, spanned) in raw {
        let location = loc(&spanned.referenced);
        if let Err(m) = super::validate_name(&name) {
            errors.push(Error::manifest(location.clone(), m));
        }
        let spec = spanned.value;
        let problem = |at: &Option<serde_saphyr::Location>, m: String, h: String| {
            Error::manifest(at.as_ref().map_or(location.clone(), loc), m).with_hint(h)
        };
        if let Some(each) = &spec.each {
            let at = Some(each.referenced);
            if models.is_empty() {
                errors.push(problem(&at, format!("step `{name}` has `each:`, but the pipeline has one `model:`"), "`each:` copies a step for several of `models:`; drop it, or declare the pipeline's models under `models:`".into()));
                continue;
            }
            if spec.model.is_some() {
                errors.push(problem(
                    &at,
                    format!("step `{name}` has both `model:` and `each:`"),
                    "`each: [a, b]` already says which models; drop `model:`".into(),
                ));
                continue;
            }
            for m in &each.value {
                if !models.contains_key(m) {
                    errors.push(problem(
                        &at,
                        format!(
                            "step `{name}`: `each` names `{m}`, which is not among `models:` ({})",
                            known()
                        ),
                        "name models declared under `models:`".into(),
                    ));
                    continue;
                }
                match copy_for(&spec, m, &each_of) {
                    Ok(c) => {
                        let n = copy_name(m, &name);
                        if let Err(why) = super::validate_name(&n) {
                            errors.push(Error::manifest(location.clone(), why));
                        }
                        steps.insert(
                            n.clone(),
                            Step {
                                name: n,
                                spec: c,
                                location: location.clone(),
                                model: Some(m.clone()),
                            },
                        );
                    }
                    Err(why) => errors.push(Error::manifest(
                        location.clone(),
                        format!("step `{name}`: its copy for `{m}`: {why}"),
                    )),
                }
            }
            continue;
        }
        let model = match (&spec.model, models.is_empty()) {
            (Some(m), true) => {
                errors.push(problem(
                    &Some(m.referenced),
                    format!(
                        "step `{name}` names `model: {}`, but the pipeline has one `model:`",
                        m.value
                    ),
                    "drop the step's `model:`, or declare the pipeline's models under `models:`"
                        .into(),
                ));
                None
            }
            (None, true) => None,
            (Some(m), false) if models.contains_key(&m.value) => Some(m.value.clone()),
            (Some(m), false) => {
                errors.push(problem(
                    &Some(m.referenced),
                    format!(
                        "step `{name}`: `model: {}` is not among `models:` ({})",
                        m.value,
                        known()
                    ),
                    "name one of the models declared under `models:`".into(),
                ));
                None
            }
            // A chain reads every model: it builds none.
            (None, false) if spec.params.kind().spans_models() => None,
            (None, false) => {
                let m = inferred(&spec, &steps, models);
                if m.is_none() {
                    errors.push(problem(&None, format!("step `{name}`: which model does it build? The pipeline has {} models ({}) and its `from`, `needs` and referenced steps do not say", models.len(), known()), "give the step `model: <name>`, or `each: [<name>, ...]` for one copy per model".into()));
                }
                m
            }
        };
        steps.insert(
            name.clone(),
            Step {
                name,
                spec,
                location,
                model,
            },
        );
    }
    steps
}

#[cfg(test)]
mod tests {
    /// A template's references to other templates become its own model's copies; names
    /// that are not step references (a dataset called like a step) stay; a step that names
    /// no model takes the one its references agree on.
    #[test]
    fn each_copies_rename_their_references() {
        let yaml = "schema: 1
name: p
models:
  det: {builtin: scrfd-mini, task: detection, input: {name: input.1, shape: [1, 3, 320, 320]}, detector: {family: scrfd}}
  rec: {builtin: iresnet-mini, task: recognition, input: {name: input.1, shape: [1, 3, 112, 112]}}
datasets:
  calibrate: {builtin: synthetic-faces, count: 4}
steps:
  calibrate: {kind: calibrate, each: [det, rec], params: {dataset: calibrate}}
  quantize: {kind: quantize, each: [rec], needs: [calibrate], params: {calibration: calibrate}}
  cmp: {kind: compare, params: {dataset: calibrate, candidates: [rec_quantize]}}
";
        let m = crate::manifest::Manifest::parse(camino::Utf8Path::new("p.yaml"), yaml).unwrap();
        let names: Vec<&str> = m.steps.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["det_calibrate", "rec_calibrate", "rec_quantize", "cmp"]
        );
        let q = &m.steps["rec_quantize"];
        assert_eq!(q.model.as_deref(), Some("rec"));
        assert_eq!(q.spec.needs[0].value, "rec_calibrate");
        assert_eq!(q.spec.params.kind().references(), ["rec_calibrate"]);
        assert_eq!(q.spec.params.kind().datasets(), Vec::<String>::new());
        let c = &m.steps["det_calibrate"];
        assert_eq!(c.spec.params.kind().datasets(), ["calibrate"]);
        assert_eq!(m.steps["cmp"].model.as_deref(), Some("rec"));
        assert_eq!(
            m.view(Some("det")).model.task,
            crate::manifest::Task::Detection
        );
    }
}
