//! A release's SLSA provenance (`provenance.intoto.json`): a DSSE envelope over an in-toto
//! Statement v1 with the SLSA v1 predicate, saying what the release was built from (the
//! manifest, the source model, every dataset, the toolchain's locked packages), by which
//! facebuild, in which CI run, and when. Signed with the release key when there is one; the
//! release's `model.sig` covers it in turn.

use camino::Utf8Path;
use serde_json::{Value, json};

use super::StepContext;
use crate::error::{Error, Result};

/// The provenance's name at the release's root.
pub(crate) const PROVENANCE_FILE: &str = "provenance.intoto.json";
const SLSA_PREDICATE: &str = "https://slsa.dev/provenance/v1";
const BUILD_TYPE: &str = "https://facebuild.dev/release/v1";

/// Write `stage/provenance.intoto.json` over `staged`, every file staged so far with its
/// sha256 (as the release step computed them). `artifacts` is the release metadata's account
/// of each artifact (precision, conversion, TensorRT's build); `source` the source model's
/// sha256.
pub(crate) fn write(
    ctx: &StepContext,
    stage: &Utf8Path,
    (started, artifacts): (u64, &[Value]),
    (source, staged): (&str, &std::collections::BTreeMap<String, String>),
    key: Option<&p256::ecdsa::SigningKey>,
) -> Result<()> {
    let subject: Vec<Value> = staged
        .iter()
        .map(|(name, d)| json!({"name": name, "digest": {"sha256": d}}))
        .collect();
    let statement = json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": subject,
        "predicateType": SLSA_PREDICATE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "manifest": {"path": ctx.manifest.file, "digest": {"blake3": ctx.manifest.digest}},
                    "pipeline": ctx.manifest.name,
                    "arguments": ctx.invocation.args,
                },
                "internalParameters": {
                    "toolchain": ctx.toolchain.pins.id(),
                    "artifacts": artifacts,
                },
                "resolvedDependencies": dependencies(ctx, source)?,
            },
            "runDetails": {
                "builder": {
                    "id": format!("https://facebuild.dev/facebuild@{}", env!("CARGO_PKG_VERSION")),
                    "version": {"facebuild": env!("CARGO_PKG_VERSION")},
                },
                "metadata": {
                    "invocationId": ctx.invocation.id,
                    "startedOn": crate::util::rfc3339(started),
                    "finishedOn": crate::util::rfc3339(super::release::now()),
                },
            },
        },
    });
    let env = crate::signing::envelope(&statement, key)?;
    let path = stage.join(PROVENANCE_FILE);
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&env).map_err(anyhow::Error::from)?,
    )
    .map_err(|e| Error::io(&path, e))
}

/// The source model, every dataset (a digest over its files' blake3 in path order; built-in
/// data by name), and every locked toolchain package with the hashes its lock allows.
fn dependencies(ctx: &StepContext, source: &str) -> Result<Vec<Value>> {
    let mut deps = vec![json!({
        "name": "source model",
        "uri": ctx.model_label(),
        "digest": {"sha256": source},
    })];
    for (name, spec) in &ctx.manifest.datasets {
        let Some(path) = &spec.path else {
            deps.push(json!({"name": format!("dataset {name}"), "uri": format!("builtin:{}", spec.builtin.as_deref().unwrap_or("data"))}));
            continue;
        };
        let dir = ctx.manifest.resolve(path);
        let mut h = blake3::Hasher::new();
        let files = if dir.is_dir() {
            crate::util::files_under(&dir)?
        } else {
            vec![dir.clone()]
        };
        for f in &files {
            h.update(f.strip_prefix(&dir).unwrap_or(f).as_str().as_bytes());
            h.update(ctx.store.memo.blake3(f)?.blake3.as_bytes());
        }
        deps.push(json!({
            "name": format!("dataset {name}"),
            // As the manifest writes it: a checkout's own path would make two builds differ.
            "uri": path,
            "digest": {"blake3": h.finalize().to_hex().to_string()},
            "annotations": {"files": files.len()},
        }));
    }
    let locked = locked_hashes(ctx.toolchain.pins.lock.as_deref().unwrap_or(""));
    for (pkg, version) in &ctx.toolchain.info.packages {
        deps.push(json!({
            "name": pkg,
            "uri": format!("pkg:pypi/{pkg}@{version}"),
            "annotations": {"locked_sha256": locked.get(pkg).cloned().unwrap_or_default()},
        }));
    }
    Ok(deps)
}

/// A hash-locked requirements file's `--hash=sha256:` values per package (name lower-cased,
/// `_` as `-`).
fn locked_hashes(lock: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut current = None;
    for line in lock.lines() {
        let t = line.trim();
        if let Some((name, _)) = t.split_once("==") {
            current = Some(name.trim().to_lowercase().replace('_', "-"));
        }
        for h in t.split_whitespace() {
            if let (Some(hash), Some(c)) = (h.strip_prefix("--hash=sha256:"), &current) {
                out.entry(c.clone()).or_default().push(hash.to_string());
            }
        }
    }
    out
}

/// What does not verify in `dir`'s provenance: a subject that changed or is missing, a file
/// it does not name, a signature that is not `key`'s. "unsigned" when it has no signature.
pub(crate) fn verify(dir: &Utf8Path, key: &p256::ecdsa::VerifyingKey) -> Result<Vec<String>> {
    let path = dir.join(PROVENANCE_FILE);
    let text = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let env: Value = serde_json::from_slice(&text)
        .map_err(|e| Error::usage(format!("{path} is not JSON: {e}")))?;
    let (statement, signed) = crate::signing::open_envelope(&env, key)?;
    let mut problems = Vec::new();
    match signed {
        None => problems.push(format!("{PROVENANCE_FILE} is unsigned")),
        Some(false) => problems.push(format!(
            "{PROVENANCE_FILE}'s signature does not verify with this key"
        )),
        Some(true) => {}
    }
    if statement["predicateType"] != SLSA_PREDICATE {
        problems.push(format!("{PROVENANCE_FILE} is not SLSA v1 provenance"));
    }
    let named: std::collections::BTreeMap<String, String> = statement["subject"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            Some((
                s["name"].as_str()?.to_string(),
                s["digest"]["sha256"].as_str()?.to_string(),
            ))
        })
        .collect();
    let actual = crate::signing::files_of(dir)?;
    for (f, d) in actual.iter().filter(|(f, _)| *f != PROVENANCE_FILE) {
        match named.get(f) {
            None => problems.push(format!("`{f}` is not in {PROVENANCE_FILE}")),
            Some(n) if n != d => problems.push(format!(
                "`{f}` differs from what {PROVENANCE_FILE} says was built"
            )),
            Some(_) => {}
        }
    }
    for f in named.keys().filter(|f| !actual.contains_key(*f)) {
        problems.push(format!("`{f}` is in {PROVENANCE_FILE} but missing"));
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    #[test]
    fn locked_hashes_are_read_per_package() {
        let lock = "numpy==2.1.0 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\nonnx_graphsurgeon==0.5 --hash=sha256:cc\n";
        let h = super::locked_hashes(lock);
        assert_eq!(h["numpy"], vec!["aa", "bb"]);
        assert_eq!(h["onnx-graphsurgeon"], vec!["cc"]);
    }
}
