//! The one resolution path: for one step, given what is known of its upstream steps, is it
//! a cache hit, a miss (and why), unavailable here, waiting on upstream steps, or skipped
//! because one failed. `plan`, `status` and `run` all decide through [`resolve`]; the world
//! it asks (keys, cache lookups, backends) is the [`World`] trait, so a remote cache or
//! another executor plugs in behind it without a second copy of these rules.

use std::collections::BTreeMap;

use crate::cache::{ActionRecord, BlobRef, KeyParts, Lock};
use crate::context::BuildContext;
use crate::error::Result;
use crate::manifest::Step;

/// Outputs of a step: name -> blob.
pub(crate) type Outputs = BTreeMap<String, BlobRef>;

/// What the resolver knows of an upstream step.
#[derive(Debug, Clone)]
pub(crate) enum Upstream {
    /// Its outputs are known (a hit, or built).
    Done(Outputs),
    /// It cannot run on this machine, and why.
    Unavailable(String),
    /// Not decided yet, or still running: its outputs are unknown.
    Pending,
    /// It failed or was skipped.
    Failed,
}

/// What the resolver asks of the world: keys, the cache, the machine.
pub(crate) trait World {
    /// Why no key can be computed yet (e.g. the toolchain is not installed), if so.
    fn cannot_key(&self) -> Option<String>;
    /// Why this step's backend cannot run here (e.g. TensorRT absent), if so.
    fn backend_unavailable(&self, step: &Step) -> Option<String>;
    /// The digest of the source model.
    fn source_digest(&self, model: Option<&str>) -> Result<String>;
    /// The parts of the step's action key, from its model input and upstream outputs.
    fn key_parts(
        &self,
        step: &Step,
        model_digest: &str,
        upstream: &dyn Fn(&str) -> Option<Outputs>,
    ) -> Result<KeyParts>;
    /// The cached result under `key`: a local record with intact outputs, else a verified
    /// remote record (whose blobs are fetched only when needed).
    fn lookup(&self, key: &str, kind: &str) -> Result<Option<(ActionRecord, Origin)>>;
    /// Why a step with these key parts is not a hit (against the lockfile).
    fn miss_reasons(&self, step: &str, parts: &KeyParts) -> Vec<String>;
}

/// Where a cached result came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// This machine's cache.
    #[default]
    Local,
    /// The remote cache (`--remote`).
    Remote,
}

/// The decision for one step.
#[derive(Debug, Clone)]
pub(crate) enum Resolution {
    /// In the cache with intact outputs (a remote hit's blobs may still be on the remote).
    Hit {
        parts: KeyParts,
        record: Box<ActionRecord>,
        origin: Origin,
    },
    /// Will run; `parts` is None when no key can be computed yet.
    Miss {
        parts: Option<KeyParts>,
        reasons: Vec<String>,
    },
    /// Depends on steps whose outputs are not known yet.
    Waits { on: Vec<String> },
    /// Cannot run on this machine.
    Unavailable { reason: String },
    /// An upstream step failed.
    Skipped { upstream: String },
}

/// Decide one step. `deps` are its upstream steps (in order); `upstream` tells what is
/// known of each. Pure: everything it learns comes through `world` and `upstream`.
pub(crate) fn resolve(
    world: &dyn World,
    step: &Step,
    deps: &[&str],
    upstream: &dyn Fn(&str) -> Upstream,
    no_cache: bool,
) -> Result<Resolution> {
    // A step that reports on its failed references (compare's candidates) runs without
    // them; any other failed dependency skips it.
    // A step it takes its model `from` is never one: without its model nothing can run.
    let from = step.spec.from.as_ref().map(|f| f.value.as_str());
    let reported = step.spec.params.kind().reports_failures_of();
    let tolerated = |d: &str| Some(d) != from && reported.iter().any(|r| r == d);
    if let Some(bad) = deps
        .iter()
        .find(|d| matches!(upstream(d), Upstream::Failed) && !tolerated(d))
    {
        return Ok(Resolution::Skipped {
            upstream: bad.to_string(),
        });
    }
    if let Some(f) = &step.spec.from
        && let Upstream::Unavailable(why) = upstream(&f.value)
    {
        return Ok(Resolution::Unavailable {
            reason: format!(
                "its model comes from `{}`, which is unavailable ({why})",
                f.value
            ),
        });
    }
    if let Some(reason) = world.backend_unavailable(step) {
        return Ok(Resolution::Unavailable { reason });
    }
    let waits: Vec<String> = deps
        .iter()
        .filter(|d| matches!(upstream(d), Upstream::Pending))
        .map(|d| d.to_string())
        .collect();
    if !waits.is_empty() {
        return Ok(Resolution::Waits { on: waits });
    }
    if let Some(why) = world.cannot_key() {
        return Ok(Resolution::Miss {
            parts: None,
            reasons: vec![why],
        });
    }
    let model_digest = match &step.spec.from {
        None => world.source_digest(step.model.as_deref())?,
        Some(f) => match upstream(&f.value) {
            Upstream::Done(o) => o
                .get("model.onnx")
                .map(|b| b.digest.clone())
                .ok_or_else(|| anyhow::anyhow!("`{}` has no model.onnx output", f.value))?,
            _ => unreachable!("`from` is a dep, and every dep is done or unavailable here"),
        },
    };
    let outputs_of = |s: &str| match upstream(s) {
        Upstream::Done(o) => Some(o),
        Upstream::Unavailable(_) => Some(absent_outputs()),
        Upstream::Failed => Some(failed_outputs()),
        Upstream::Pending => None,
    };
    let parts = world.key_parts(step, &model_digest, &outputs_of)?;
    let key = parts.key();
    if no_cache {
        return Ok(Resolution::Miss {
            parts: Some(parts),
            reasons: vec!["--no-cache".into()],
        });
    }
    if let Some((record, origin)) = world.lookup(&key, &parts.kind)? {
        let record = Box::new(record);
        return Ok(Resolution::Hit {
            parts,
            record,
            origin,
        });
    }
    let reasons = world.miss_reasons(&step.name, &parts);
    Ok(Resolution::Miss {
        parts: Some(parts),
        reasons,
    })
}

/// Why a step with these key parts is not a cache hit, compared with its lockfile entry.
pub(crate) fn miss_reasons(lock: &Lock, step: &str, parts: &KeyParts) -> Vec<String> {
    let Some(prev) = lock.steps.get(step) else {
        return vec!["never built (no lockfile entry)".into()];
    };
    let mut r = Vec::new();
    if prev.parts.kind != parts.kind {
        r.push(format!(
            "kind changed: {} -> {}",
            prev.parts.kind, parts.kind
        ));
    }
    if prev.parts.impl_version != parts.impl_version {
        r.push(format!(
            "{} implementation changed: v{} -> v{}",
            parts.kind, prev.parts.impl_version, parts.impl_version
        ));
    }
    for (k, v) in &parts.inputs {
        match prev.parts.inputs.get(k) {
            None => r.push(format!("new input `{k}`")),
            Some(p) if p != v => {
                r.push(format!("input `{k}` changed: {} -> {}", short(p), short(v)))
            }
            _ => {}
        }
    }
    for k in prev
        .parts
        .inputs
        .keys()
        .filter(|k| !parts.inputs.contains_key(*k))
    {
        r.push(format!("input `{k}` removed"));
    }
    diff_json("", &prev.parts.params, &parts.params, &mut r);
    for (k, v) in &parts.toolchain {
        match prev.parts.toolchain.get(k) {
            Some(p) if p != v => r.push(format!("toolchain `{k}` changed: {p} -> {v}")),
            None => r.push(format!("toolchain `{k}` is new: {v}")),
            _ => {}
        }
    }
    if r.is_empty() {
        r.push(
            "nothing changed since the lockfile, but its cache entry is missing or corrupt".into(),
        );
    }
    r
}

fn diff_json(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                diff_json(
                    &p,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if a != b => {
            let p = path.strip_prefix("step.").unwrap_or(path);
            out.push(format!("param `{p}` changed: {a} -> {b}"));
        }
        _ => {}
    }
}

fn short(d: &str) -> &str {
    &d[..d.len().min(12)]
}

impl World for BuildContext {
    fn cannot_key(&self) -> Option<String> {
        self.toolchain.is_none().then(|| {
            format!(
                "toolchain {} is not installed yet (run installs it)",
                self.pins.id()
            )
        })
    }

    fn backend_unavailable(&self, step: &Step) -> Option<String> {
        // A step sent to a GPU class's nodes runs there: its key comes from the class.
        let placement = self.placement(step);
        if placement.executor() != crate::manifest::ExecutorKind::Local && placement.class.is_some()
        {
            return None;
        }
        if step.spec.params.kind().uses_tensorrt() {
            return self.tensorrt().as_ref().err().map(ToString::to_string);
        }
        None
    }

    fn source_digest(&self, model: Option<&str>) -> Result<String> {
        Ok(self.source(model)?.digest)
    }

    fn key_parts(
        &self,
        step: &Step,
        model_digest: &str,
        upstream: &dyn Fn(&str) -> Option<Outputs>,
    ) -> Result<KeyParts> {
        BuildContext::key_parts(self, step, model_digest, upstream)
    }

    fn lookup(&self, key: &str, kind: &str) -> Result<Option<(ActionRecord, Origin)>> {
        if let Some(r) = self.store.lookup(key, Some(kind))? {
            return Ok(Some((r, Origin::Local)));
        }
        Ok(self
            .remote
            .as_ref()
            .and_then(|r| r.lookup(key, Some(kind)))
            .map(|r| (r, Origin::Remote)))
    }

    fn miss_reasons(&self, step: &str, parts: &KeyParts) -> Vec<String> {
        miss_reasons(&self.lock, step, parts)
    }
}

/// What a dependant's key records for an unavailable upstream step: when the step becomes
/// available its real outputs change the key, and the dependant reruns.
pub(crate) fn absent_outputs() -> Outputs {
    [(
        "unavailable".to_string(),
        BlobRef {
            digest: "unavailable".into(),
            size: 0,
        },
    )]
    .into()
}

/// What a dependant's key records for a failed reference it reports on (compare's failed
/// candidate): once the reference builds, its real outputs change the key.
pub(crate) fn failed_outputs() -> Outputs {
    [(
        "failed".to_string(),
        BlobRef {
            digest: "failed".into(),
            size: 0,
        },
    )]
    .into()
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::{HashMap, HashSet};

    use indoc::indoc;

    use super::*;
    use crate::manifest::Manifest;

    /// A world of fake keys: a step's key covers its name, its model and its upstream
    /// outputs; `cached` holds the keys that hit.
    struct FakeWorld {
        cached: HashSet<String>,
        no_backend: HashSet<String>,
        toolchain: bool,
        lookups: RefCell<Vec<String>>,
    }

    impl FakeWorld {
        fn new() -> FakeWorld {
            FakeWorld {
                cached: HashSet::new(),
                no_backend: HashSet::new(),
                toolchain: true,
                lookups: RefCell::new(vec![]),
            }
        }
    }

    impl World for FakeWorld {
        fn cannot_key(&self) -> Option<String> {
            (!self.toolchain).then(|| "toolchain not installed".into())
        }
        fn backend_unavailable(&self, step: &Step) -> Option<String> {
            self.no_backend
                .contains(&step.name)
                .then(|| "no backend".into())
        }
        fn source_digest(&self, _model: Option<&str>) -> Result<String> {
            Ok("src".into())
        }
        fn key_parts(
            &self,
            step: &Step,
            model_digest: &str,
            upstream: &dyn Fn(&str) -> Option<Outputs>,
        ) -> Result<KeyParts> {
            let mut inputs = BTreeMap::from([("model".to_string(), model_digest.to_string())]);
            for (d, _) in step.deps() {
                for (n, b) in upstream(&d).unwrap_or_default() {
                    inputs.insert(format!("{d}/{n}"), b.digest);
                }
            }
            Ok(KeyParts {
                kind: step.name.clone(),
                impl_version: 1,
                params: serde_json::Value::Null,
                inputs,
                toolchain: BTreeMap::new(),
            })
        }
        fn lookup(&self, key: &str, _kind: &str) -> Result<Option<(ActionRecord, Origin)>> {
            self.lookups.borrow_mut().push(key.to_string());
            Ok(self
                .cached
                .contains(key)
                .then(|| (record(key), Origin::Local)))
        }
        fn miss_reasons(&self, _step: &str, _parts: &KeyParts) -> Vec<String> {
            vec!["not cached".into()]
        }
    }

    fn record(key: &str) -> ActionRecord {
        let blob = BlobRef {
            digest: format!("out-of-{key}"),
            size: 1,
        };
        ActionRecord {
            key: key.into(),
            pipeline: "t".into(),
            step: "s".into(),
            parts: KeyParts::default(),
            outputs: [("model.onnx".to_string(), blob)].into(),
            summary: serde_json::Value::Null,
            created_unix: 0,
            duration_ms: 0,
            ran_on: None,
        }
    }

    /// a -> b (from a) -> c (needs b); d alone.
    fn manifest() -> Manifest {
        let text = indoc! {"
            schema: 1
            name: t
            model:
              task: recognition
              input: {name: x, shape: [1, 3, 112, 112]}
            steps:
              a: {kind: simplify}
              b: {kind: simplify, from: a}
              c: {kind: check, needs: [b]}
              d: {kind: check}
        "};
        Manifest::parse(camino::Utf8Path::new("t.yaml"), text).unwrap()
    }

    /// Resolve every step in order, as `plan` does: hits make their outputs known,
    /// anything else leaves dependants waiting.
    fn plan(world: &FakeWorld) -> HashMap<String, Resolution> {
        let m = manifest();
        let mut known: HashMap<String, Upstream> = HashMap::new();
        let mut out = HashMap::new();
        for (name, step) in &m.steps {
            let deps: Vec<String> = step.deps().into_iter().map(|d| d.0).collect();
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            let up = |d: &str| known.get(d).cloned().unwrap_or(Upstream::Pending);
            let r = resolve(world, step, &deps, &up, false).unwrap();
            known.insert(
                name.clone(),
                match &r {
                    Resolution::Hit { record, .. } => Upstream::Done(record.outputs.clone()),
                    Resolution::Unavailable { reason } => Upstream::Unavailable(reason.clone()),
                    _ => Upstream::Pending,
                },
            );
            out.insert(name.clone(), r);
        }
        out
    }

    fn key_of(world: &FakeWorld, name: &str, up: &dyn Fn(&str) -> Upstream) -> String {
        let m = manifest();
        let step = m.step(name);
        let deps: Vec<String> = step.deps().into_iter().map(|d| d.0).collect();
        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
        match resolve(world, step, &deps, up, true).unwrap() {
            Resolution::Miss { parts: Some(p), .. } => p.key(),
            other => panic!("{other:?}"),
        }
    }

    /// An empty cache: roots miss, their dependants wait on them.
    #[test]
    fn empty_cache_misses_roots_and_waits_below() {
        let r = plan(&FakeWorld::new());
        assert!(matches!(r["a"], Resolution::Miss { .. }));
        assert!(matches!(&r["b"], Resolution::Waits { on } if on == &["a"]));
        assert!(matches!(&r["c"], Resolution::Waits { on } if on == &["b"]));
        assert!(matches!(r["d"], Resolution::Miss { .. }));
    }

    /// A hit makes its outputs known, so the next step's key can be looked up.
    #[test]
    fn hits_chain_through_outputs() {
        let mut w = FakeWorld::new();
        let ka = key_of(&w, "a", &|_| Upstream::Pending);
        w.cached.insert(ka.clone());
        let kb = key_of(&w, "b", &|_| Upstream::Done(record(&ka).outputs));
        w.cached.insert(kb);
        let r = plan(&w);
        assert!(matches!(r["a"], Resolution::Hit { .. }));
        assert!(matches!(r["b"], Resolution::Hit { .. }));
        assert!(matches!(r["c"], Resolution::Miss { .. }));
    }

    /// A step whose model comes from an unavailable step is unavailable too, and says why.
    #[test]
    fn unavailable_propagates_through_from() {
        let mut w = FakeWorld::new();
        w.no_backend.insert("a".into());
        let r = plan(&w);
        assert!(matches!(&r["a"], Resolution::Unavailable { reason } if reason == "no backend"));
        assert!(
            matches!(&r["b"], Resolution::Unavailable { reason } if reason.contains("comes from `a`"))
        );
    }

    /// A failed upstream step skips its dependants; nothing is looked up for them.
    #[test]
    fn failed_upstream_skips() {
        let w = FakeWorld::new();
        let m = manifest();
        let r = resolve(&w, m.step("b"), &["a"], &|_| Upstream::Failed, false).unwrap();
        assert!(matches!(r, Resolution::Skipped { upstream } if upstream == "a"));
        assert!(w.lookups.borrow().is_empty());
    }

    /// A compare runs over a failed candidate, with `failed` in its key where the candidate's
    /// outputs would be; a failed step it takes its model `from` still skips it.
    #[test]
    fn compare_runs_over_a_failed_candidate_but_not_a_failed_from() {
        let text = indoc! {"
            schema: 1
            name: t
            model:
              task: recognition
              input: {name: x, shape: [1, 3, 112, 112]}
            datasets:
              d: {builtin: synthetic-faces}
            steps:
              a: {kind: simplify}
              b: {kind: simplify}
              c: {kind: compare, params: {dataset: d, candidates: [a, b]}}
              e: {kind: compare, from: a, params: {dataset: d, candidates: [a, b]}}
        "};
        let m = Manifest::parse(camino::Utf8Path::new("t.yaml"), text).unwrap();
        let w = FakeWorld::new();
        let done: Outputs = [(
            "model.onnx".to_string(),
            BlobRef {
                digest: "b".into(),
                size: 1,
            },
        )]
        .into();
        let up = |d: &str| match d {
            "a" => Upstream::Failed,
            _ => Upstream::Done(done.clone()),
        };
        let r = resolve(&w, m.step("c"), &["a", "b"], &up, false).unwrap();
        let Resolution::Miss {
            parts: Some(parts), ..
        } = r
        else {
            panic!("{r:?}")
        };
        assert_eq!(parts.inputs["a/failed"], "failed");
        assert_eq!(parts.inputs["b/model.onnx"], "b");
        let r = resolve(&w, m.step("e"), &["a", "b"], &up, false).unwrap();
        assert!(matches!(r, Resolution::Skipped { upstream } if upstream == "a"));
    }

    /// Without a toolchain no key exists: every ready step is a miss that says so.
    #[test]
    fn no_toolchain_is_a_miss_without_a_key() {
        let mut w = FakeWorld::new();
        w.toolchain = false;
        let r = plan(&w);
        assert!(
            matches!(&r["a"], Resolution::Miss { parts: None, reasons } if reasons[0].contains("toolchain"))
        );
    }

    /// `--no-cache` never looks the key up.
    #[test]
    fn no_cache_never_looks_up() {
        let w = FakeWorld::new();
        let _ = key_of(&w, "d", &|_| Upstream::Pending);
        assert!(w.lookups.borrow().is_empty());
    }
}
