//! `release`: promote artifacts that meet every gate. Accuracy gates read the `compare`
//! report, performance gates the `benchmark` report; each gate is reported pass/fail with the
//! measured value. Passing artifacts are copied into `releases/<pipeline>/<version>/` with
//! `metadata.json` (source ONNX sha256, toolchain versions, precision, shapes/profiles,
//! execution settings, gate results, facebuild version, manifest digest), `SHA256SUMS` and
//! `ROLLBACK.md` (the previous release's digests and the exact command to restore it); the
//! new version becomes `releases/<pipeline>/current/`. Releases are immutable: a version
//! that exists with other contents is an error. `facebuild release list` and
//! `facebuild release rollback` work on that folder (functions below).

use std::collections::BTreeMap;

use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Digest;

use super::{StepContext, StepOutcome};
use crate::error::{Error, IoContext, Result};

pub const IMPL_VERSION: u32 = 1;
pub const TOOLCHAIN: &[&str] = &["onnx", "onnxruntime", "openvino", "nncf", "onnxsim"];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseGates {
    pub cosine_min: Option<f64>,
    pub tar_drop_max: Option<f64>,
    pub flips_max: Option<f64>,
    pub recall_min: Option<f64>,
    pub fp_per_image_max: Option<f64>,
    pub landmark_nme_max: Option<f64>,
    pub p99_ms_max: Option<f64>,
    pub p50_ms_max: Option<f64>,
    pub throughput_min: Option<f64>,
    pub rss_mib_max: Option<f64>,
    pub cold_start_ms_max: Option<f64>,
}

impl ReleaseGates {
    fn merged(&self, o: Option<&ReleaseGates>) -> ReleaseGates {
        let Some(o) = o else { return self.clone() };
        ReleaseGates {
            cosine_min: o.cosine_min.or(self.cosine_min),
            tar_drop_max: o.tar_drop_max.or(self.tar_drop_max),
            flips_max: o.flips_max.or(self.flips_max),
            recall_min: o.recall_min.or(self.recall_min),
            fp_per_image_max: o.fp_per_image_max.or(self.fp_per_image_max),
            landmark_nme_max: o.landmark_nme_max.or(self.landmark_nme_max),
            p99_ms_max: o.p99_ms_max.or(self.p99_ms_max),
            p50_ms_max: o.p50_ms_max.or(self.p50_ms_max),
            throughput_min: o.throughput_min.or(self.throughput_min),
            rss_mib_max: o.rss_mib_max.or(self.rss_mib_max),
            cold_start_ms_max: o.cold_start_ms_max.or(self.cold_start_ms_max),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseParams {
    /// Steps whose artifacts to promote (convert, quantize or simplify steps).
    pub artifacts: Vec<String>,
    /// The compare step with the artifacts' accuracy (required when an accuracy gate is set).
    #[serde(default)]
    pub compare: Option<String>,
    /// The benchmark step with their speed and memory (required when a performance gate is set).
    #[serde(default)]
    pub benchmark: Option<String>,
    /// Gates for every artifact...
    #[serde(default)]
    pub gates: ReleaseGates,
    /// ...and per-artifact overrides, by step name.
    #[serde(default)]
    pub artifact_gates: BTreeMap<String, ReleaseGates>,
    /// Release version (a folder name); default: `r-` and 12 hex digits of the release's content.
    #[serde(default)]
    pub version: Option<String>,
    /// Where releases go (default: $FACEBUILD_RELEASES, else `releases` in the working folder).
    #[serde(default)]
    pub releases_dir: Option<Utf8PathBuf>,
    /// Also copy the FP32 artifacts named here into the release, under `audit/` (not promoted).
    #[serde(default)]
    pub keep_fp32_for_audit: bool,
    #[serde(default)]
    pub audit_artifacts: Vec<String>,
}

impl ReleaseParams {
    pub fn validate(&self) -> std::result::Result<(), (String, Option<String>)> {
        if self.artifacts.is_empty() {
            return Err(("`artifacts` is empty: nothing to release".into(), None));
        }
        let g = &self.gates;
        let acc = g.cosine_min.is_some()
            || g.tar_drop_max.is_some()
            || g.flips_max.is_some()
            || g.recall_min.is_some()
            || g.fp_per_image_max.is_some()
            || g.landmark_nme_max.is_some();
        let perf = g.p99_ms_max.is_some()
            || g.p50_ms_max.is_some()
            || g.throughput_min.is_some()
            || g.rss_mib_max.is_some()
            || g.cold_start_ms_max.is_some();
        if acc && self.compare.is_none() {
            return Err((
                "accuracy gates are set but no `compare:` step is named".into(),
                Some("name the compare step whose report holds the artifacts' accuracy".into()),
            ));
        }
        if perf && self.benchmark.is_none() {
            return Err((
                "performance gates are set but no `benchmark:` step is named".into(),
                None,
            ));
        }
        if self.keep_fp32_for_audit && self.audit_artifacts.is_empty() {
            return Err((
                "`keep_fp32_for_audit: true` needs `audit_artifacts: [<fp32 convert step>]`".into(),
                None,
            ));
        }
        if let Some(v) = &self.version
            && (v.is_empty()
                || v == "current"
                || !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)))
        {
            return Err((
                format!(
                    "`version` `{v}` must be letters, digits, `.`, `_`, `-` (and not `current`)"
                ),
                None,
            ));
        }
        for k in self.artifact_gates.keys() {
            if !self.artifacts.contains(k) {
                return Err((
                    format!("`artifact_gates` names `{k}`, which is not in `artifacts`"),
                    None,
                ));
            }
        }
        Ok(())
    }

    pub fn referenced(&self) -> Vec<String> {
        let mut v = self.artifacts.clone();
        v.extend(self.compare.iter().cloned());
        v.extend(self.benchmark.iter().cloned());
        v.extend(self.audit_artifacts.iter().cloned());
        v
    }
}

pub fn releases_root(explicit: Option<&Utf8Path>) -> Utf8PathBuf {
    if let Some(d) = explicit {
        return d.to_owned();
    }
    match std::env::var("FACEBUILD_RELEASES") {
        Ok(d) if !d.is_empty() => Utf8PathBuf::from(d),
        _ => Utf8PathBuf::from("releases"),
    }
}

fn read_json(p: &Utf8Path) -> Result<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(p).fs_context(p)?)
        .map_err(|e| anyhow::anyhow!("{p}: {e}").into())
}

pub fn sha256_file(p: &Utf8Path) -> Result<String> {
    let mut h = sha2::Sha256::new();
    let mut f = std::fs::File::open(p).fs_context(p)?;
    std::io::copy(&mut f, &mut h).fs_context(p)?;
    Ok(format!("{:x}", h.finalize()))
}

/// One gate check: (metric, measured, limit, passed, where the figure comes from).
type Check = (String, Option<f64>, f64, bool, String);

fn check(
    out: &mut Vec<Check>,
    name: &str,
    limit: Option<f64>,
    value: Option<f64>,
    at_least: bool,
    source: &str,
) {
    if let Some(l) = limit {
        // A gate with nothing measured fails: an artifact is never promoted on missing evidence.
        let ok = value.is_some_and(|v| if at_least { v >= l } else { v <= l });
        out.push((name.to_string(), value, l, ok, source.to_string()));
    }
}

/// Best figure over the artifact's benchmark configurations (each gate names which one).
fn best(
    results: &[&serde_json::Value],
    f: impl Fn(&serde_json::Value) -> Option<f64>,
    lower_is_better: bool,
) -> Option<(f64, String)> {
    results
        .iter()
        .filter_map(|r| f(r).map(|v| (v, r["label"].as_str().unwrap_or("").to_string())))
        .min_by(|a, b| {
            if lower_is_better {
                a.0.total_cmp(&b.0)
            } else {
                b.0.total_cmp(&a.0)
            }
        })
}

pub fn run(ctx: &StepContext, p: &ReleaseParams) -> Result<StepOutcome> {
    let step = &ctx.step.name;
    let compare = p
        .compare
        .as_ref()
        .map(|c| read_json(&ctx.upstream[c]["report.json"]))
        .transpose()?;
    let bench = p
        .benchmark
        .as_ref()
        .map(|b| read_json(&ctx.upstream[b]["report.json"]))
        .transpose()?;
    let mut verdicts = Vec::new();
    let mut promoted = Vec::new();
    for a in &p.artifacts {
        let g = p.gates.merged(p.artifact_gates.get(a));
        let mut checks: Vec<Check> = Vec::new();
        let mut missing = Vec::new();
        if !ctx.upstream.contains_key(a) {
            missing.push(super::unavailable_upstream(a));
        }
        let cand = compare.as_ref().and_then(|c| {
            c["candidates"]
                .as_array()
                .and_then(|cs| {
                    cs.iter()
                        .find(|x| x["step"] == a.as_str() && x["label"] == a.as_str())
                        .or_else(|| cs.iter().find(|x| x["step"] == a.as_str()))
                })
                .cloned()
        });
        let cv = |path: &[&str]| -> Option<f64> {
            let mut v = cand.as_ref()?;
            for k in path {
                v = v.get(*k)?;
            }
            v.as_f64()
        };
        let src = format!("compare `{}`", p.compare.clone().unwrap_or_default());
        check(
            &mut checks,
            "cosine_min",
            g.cosine_min,
            cv(&["cosine", "min"]),
            true,
            &src,
        );
        check(
            &mut checks,
            "tar_drop_max",
            g.tar_drop_max,
            cv(&["verification", "tar_at_operating_far", "drop"]),
            false,
            &src,
        );
        check(
            &mut checks,
            "flips_max",
            g.flips_max,
            cv(&["verification", "flips_at_reference_threshold"]),
            false,
            &src,
        );
        check(
            &mut checks,
            "recall_min",
            g.recall_min,
            cv(&["total", "recall"]),
            true,
            &src,
        );
        check(
            &mut checks,
            "fp_per_image_max",
            g.fp_per_image_max,
            cv(&["total", "fp_per_image"]),
            false,
            &src,
        );
        check(
            &mut checks,
            "landmark_nme_max",
            g.landmark_nme_max,
            cv(&["total", "landmark_nme", "max"]),
            false,
            &src,
        );
        let rows: Vec<&serde_json::Value> = bench
            .as_ref()
            .and_then(|b| b["results"].as_array())
            .map(|r| {
                r.iter()
                    .filter(|x| x["step"] == a.as_str() && x["available"] == true)
                    .collect()
            })
            .unwrap_or_default();
        let mut perf = |name: &str,
                        limit: Option<f64>,
                        f: &dyn Fn(&serde_json::Value) -> Option<f64>,
                        lower: bool| {
            if limit.is_some() {
                let b = best(&rows, f, lower);
                let src = format!(
                    "benchmark `{}`{}",
                    p.benchmark.clone().unwrap_or_default(),
                    b.as_ref()
                        .map(|(_, l)| format!(", best config {l}"))
                        .unwrap_or_default()
                );
                check(&mut checks, name, limit, b.map(|x| x.0), !lower, &src);
            }
        };
        perf(
            "p99_ms_max",
            g.p99_ms_max,
            &|r| r["latency_batch1_ms"]["p99"].as_f64(),
            true,
        );
        perf(
            "p50_ms_max",
            g.p50_ms_max,
            &|r| r["latency_batch1_ms"]["median"].as_f64(),
            true,
        );
        perf(
            "throughput_min",
            g.throughput_min,
            &|r| {
                r["throughput"].as_array().and_then(|t| {
                    t.iter()
                        .filter_map(|x| x["images_per_s"].as_f64())
                        .reduce(f64::max)
                })
            },
            false,
        );
        perf(
            "rss_mib_max",
            g.rss_mib_max,
            &|r| r["peak_rss_mib"].as_f64(),
            true,
        );
        perf(
            "cold_start_ms_max",
            g.cold_start_ms_max,
            &|r| r["cold_start"]["spawn_to_first_output_ms"].as_f64(),
            true,
        );
        let passed = missing.is_empty() && checks.iter().all(|c| c.3);
        let reasons: Vec<String> = missing
            .iter()
            .cloned()
            .chain(
                checks
                    .iter()
                    .filter(|c| !c.3)
                    .map(|(m, v, l, _, s)| match v {
                        Some(v) => format!("{m}: measured {v:.6} vs limit {l} ({s})"),
                        None => format!("{m}: nothing measured for `{a}` in {s} (limit {l})"),
                    }),
            )
            .collect();
        verdicts.push(json!({
            "artifact": a, "passed": passed, "refused_because": reasons,
            "gates": checks.iter().map(|(m, v, l, ok, s)| json!({"metric": m, "value": v, "limit": l, "passed": ok, "source": s})).collect::<Vec<_>>(),
        }));
        if passed {
            promoted.push(a.clone());
        }
    }

    let report_path = ctx.workdir.join("report.json");
    let refused: Vec<String> = verdicts
        .iter()
        .filter(|v| v["passed"] == false)
        .map(|v| {
            format!(
                "`{}`: {}",
                v["artifact"].as_str().unwrap_or(""),
                v["refused_because"]
                    .as_array()
                    .map(|r| r
                        .iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join("; "))
                    .unwrap_or_default()
            )
        })
        .collect();
    if promoted.is_empty() {
        let report = json!({"step": step, "kind": "release", "promoted": [], "verdicts": verdicts});
        super::write_report(ctx.workdir, "report.json", &report)?;
        return Err(Error::Step {
            step: step.clone(),
            message: format!(
                "release refused, no artifact meets its gates: {}",
                refused.join(" | ")
            ),
            hint: Some("see report.json for every gate with its measured value".into()),
        });
    }

    // Stage the release in the step's workdir, then promote it.
    let stage = ctx.workdir.join("release");
    let mut files: Vec<Utf8PathBuf> = Vec::new();
    let copy = |from: &Utf8Path, rel: &str, files: &mut Vec<Utf8PathBuf>| -> Result<()> {
        let to = stage.join(rel);
        std::fs::create_dir_all(to.parent().expect("has a parent")).fs_context(&to)?;
        std::fs::copy(from, &to).fs_context(from)?;
        files.push(Utf8PathBuf::from(rel));
        Ok(())
    };
    let mut artifacts_meta = Vec::new();
    for (dir, list) in [
        ("", &promoted),
        (
            "audit/",
            &if p.keep_fp32_for_audit {
                p.audit_artifacts.clone()
            } else {
                vec![]
            },
        ),
    ] {
        for a in list {
            let Some(outs) = ctx.upstream.get(a) else {
                continue;
            };
            let mut names = Vec::new();
            for (name, path) in outs {
                if matches!(
                    name.as_str(),
                    "model.xml" | "model.bin" | "model.onnx" | "model.engine"
                ) {
                    copy(path, &format!("{dir}{a}/{name}"), &mut files)?;
                    names.push(name.clone());
                }
            }
            let info = super::artifact_info(outs);
            let rep = info.report.unwrap_or(json!({}));
            artifacts_meta.push(json!({
                "name": a, "audit_only": !dir.is_empty(), "files": names, "precision": info.precision, "backend": rep["backend"].clone(),
                "conversion": rep.get("conversion").or(rep.get("flags")).cloned(), "profiles": rep.get("profiles").cloned(), "tensorrt": rep.get("tensorrt").cloned(),
                "execution_compare": compare.as_ref().and_then(|c| c["candidates"].as_array().and_then(|x| x.iter().find(|y| y["step"] == a.as_str()).map(|y| y["execution"].clone()))),
                "execution_benchmark": bench.as_ref().and_then(|b| b["results"].as_array().map(|x| x.iter().filter(|y| y["step"] == a.as_str()).map(|y| json!({"label": y["label"], "execution": y["execution"]})).collect::<Vec<_>>())),
            }));
        }
    }
    let source_sha256 = sha256_file(ctx.model)?;
    let mut sums = String::new();
    files.sort();
    let mut digests = BTreeMap::new();
    for f in &files {
        let d = sha256_file(&stage.join(f))?;
        sums += &format!("{d}  {f}\n");
        digests.insert(f.to_string(), d);
    }
    let version = p
        .version
        .clone()
        .unwrap_or_else(|| format!("r-{}", &blake3::hash(sums.as_bytes()).to_hex()[..12]));
    let root = match &p.releases_dir {
        Some(d) => ctx.manifest.resolve(d),
        None => releases_root(None),
    };
    let pipeline_dir = root.join(&ctx.manifest.name);
    let history = read_history(&pipeline_dir);
    let previous = history
        .iter()
        .rev()
        .find(|h| h["event"] == "promote" && h["version"] != version.as_str())
        .cloned();
    let metadata = json!({
        "pipeline": ctx.manifest.name,
        "version": version,
        "facebuild_version": env!("CARGO_PKG_VERSION"),
        "manifest": {"file": ctx.manifest.file, "blake3": ctx.manifest.digest},
        "source_onnx": {"path": ctx.model, "sha256": source_sha256},
        "model": {"task": ctx.manifest.model.task, "input": ctx.manifest.model.input, "preprocessing": ctx.manifest.model.preprocessing, "detector": ctx.manifest.model.detector},
        "toolchain": {"python_packages": ctx.toolchain.fingerprint(TOOLCHAIN), "all": ctx.toolchain.info.packages},
        "artifacts": artifacts_meta,
        "gates": verdicts,
        "machine": bench.as_ref().map(|b| b["machine"].clone()),
        "previous": previous.as_ref().map(|p| p["version"].clone()),
    });
    std::fs::write(
        stage.join("metadata.json"),
        serde_json::to_vec_pretty(&metadata).map_err(anyhow::Error::from)?,
    )
    .fs_context(&stage)?;
    let rollback = match &previous {
        Some(prev) => format!(
            "# Rolling back `{}` from {version}\n\nThe previous release is **{}** (promoted {}). Its files and sha256:\n\n```\n{}```\n\nRestore it as `current` (every file's sha256 is checked against its SHA256SUMS):\n\n```sh\nfacebuild release rollback {} {} --dir {root}\n```\n",
            ctx.manifest.name,
            prev["version"].as_str().unwrap_or(""),
            prev["unix_time"],
            prev["sha256"]
                .as_object()
                .map(|m| m
                    .iter()
                    .map(|(f, d)| format!("{}  {f}\n", d.as_str().unwrap_or("")))
                    .collect::<String>())
                .unwrap_or_default(),
            ctx.manifest.name,
            prev["version"].as_str().unwrap_or(""),
        ),
        None => format!(
            "# Rolling back `{}` from {version}\n\nThis is the first release of `{}`: there is no earlier version to restore. To withdraw it, remove `{root}/{}/current`.\n",
            ctx.manifest.name, ctx.manifest.name, ctx.manifest.name
        ),
    };
    std::fs::write(stage.join("ROLLBACK.md"), rollback).fs_context(&stage)?;
    for f in ["metadata.json", "ROLLBACK.md"] {
        let d = sha256_file(&stage.join(f))?;
        sums += &format!("{d}  {f}\n");
    }
    std::fs::write(stage.join("SHA256SUMS"), &sums).fs_context(&stage)?;

    // Promote: immutable version folder, then `current`.
    let vdir = pipeline_dir.join(&version);
    if vdir.exists() {
        let existing = std::fs::read_to_string(vdir.join("SHA256SUMS")).unwrap_or_default();
        if strip_meta(&existing) != strip_meta(&sums) {
            return Err(Error::Step { step: step.clone(), message: format!("release {version} already exists in {vdir} with other artifacts; releases are immutable"), hint: Some("set a new `version:` (or leave it unset: the default is derived from the content)".into()) });
        }
    } else {
        let tmp = pipeline_dir.join(format!(".{version}.tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        copy_tree(&stage, &tmp)?;
        std::fs::rename(&tmp, &vdir).fs_context(&vdir)?;
        append_history(
            &pipeline_dir,
            json!({"event": "promote", "version": version, "unix_time": now(), "sha256": digests}),
        )?;
    }
    set_current(&pipeline_dir, &version)?;

    let report = json!({"step": step, "kind": "release", "version": version, "release_dir": vdir, "promoted": promoted, "refused": refused, "verdicts": verdicts, "previous": metadata["previous"]});
    std::fs::write(
        &report_path,
        serde_json::to_vec_pretty(&report).map_err(anyhow::Error::from)?,
    )
    .fs_context(&report_path)?;
    let summary = json!({"version": version, "promoted": promoted.join(", "), "refused": refused.len(), "to": vdir.to_string()});
    Ok(StepOutcome {
        outputs: [
            ("report.json".to_string(), report_path),
            ("metadata.json".to_string(), stage.join("metadata.json")),
            ("SHA256SUMS".to_string(), stage.join("SHA256SUMS")),
            ("ROLLBACK.md".to_string(), stage.join("ROLLBACK.md")),
        ]
        .into(),
        summary,
    })
}

/// SHA256SUMS without metadata.json / ROLLBACK.md lines: they differ between two promotions
/// of the same artifacts (the time, the previous release), the artifacts do not.
fn strip_meta(s: &str) -> String {
    s.lines()
        .filter(|l| !l.ends_with("  metadata.json") && !l.ends_with("  ROLLBACK.md"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn copy_tree(from: &Utf8Path, to: &Utf8Path) -> Result<()> {
    for f in crate::util::files_under(from)? {
        let rel = f.strip_prefix(from).expect("under from");
        let dest = to.join(rel);
        std::fs::create_dir_all(dest.parent().expect("has a parent")).fs_context(&dest)?;
        std::fs::copy(&f, &dest).fs_context(&f)?;
    }
    Ok(())
}

fn read_history(pipeline_dir: &Utf8Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(pipeline_dir.join("history.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn append_history(pipeline_dir: &Utf8Path, entry: serde_json::Value) -> Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(pipeline_dir).fs_context(pipeline_dir)?;
    let p = pipeline_dir.join("history.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .fs_context(&p)?;
    writeln!(f, "{entry}").fs_context(&p)
}

/// Verify a version folder against its SHA256SUMS: the list of bad files.
pub fn verify_version(vdir: &Utf8Path) -> Result<Vec<String>> {
    let sums =
        std::fs::read_to_string(vdir.join("SHA256SUMS")).fs_context(vdir.join("SHA256SUMS"))?;
    let mut bad = Vec::new();
    for line in sums.lines() {
        let Some((d, f)) = line.split_once("  ") else {
            continue;
        };
        match sha256_file(&vdir.join(f)) {
            Ok(x) if x == d => {}
            Ok(x) => bad.push(format!("{f}: sha256 {x}, expected {d}")),
            Err(e) => bad.push(format!("{f}: {e}")),
        }
    }
    Ok(bad)
}

/// Make `version` the pipeline's `current/` (a verified copy), atomically by rename.
fn set_current(pipeline_dir: &Utf8Path, version: &str) -> Result<()> {
    let vdir = pipeline_dir.join(version);
    let bad = verify_version(&vdir)?;
    if !bad.is_empty() {
        return Err(
            Error::usage(format!("release {vdir} is damaged: {}", bad.join("; ")))
                .with_hint("restore it from your artifact store, or roll back to another version"),
        );
    }
    let tmp = pipeline_dir.join(format!(".current.tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    copy_tree(&vdir, &tmp)?;
    std::fs::write(tmp.join("RELEASE"), format!("{version}\n")).fs_context(&tmp)?;
    // The copy must match the version byte for byte before it replaces `current`.
    let copied = verify_version(&tmp)?;
    if !copied.is_empty() {
        return Err(anyhow::anyhow!(
            "copying {vdir} produced different bytes: {}",
            copied.join("; ")
        )
        .into());
    }
    let cur = pipeline_dir.join("current");
    let old = pipeline_dir.join(format!(".current.old{}", std::process::id()));
    if cur.exists() {
        std::fs::rename(&cur, &old).fs_context(&cur)?;
    }
    std::fs::rename(&tmp, &cur).fs_context(&cur)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// `facebuild release rollback PIPELINE VERSION`: make an earlier version current again.
pub fn rollback(root: &Utf8Path, pipeline: &str, version: &str) -> Result<serde_json::Value> {
    let pdir = root.join(pipeline);
    let vdir = pdir.join(version);
    if !vdir.join("SHA256SUMS").exists() {
        let known = list(root)?
            .into_iter()
            .filter(|r| r["pipeline"] == pipeline)
            .map(|r| r["version"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>();
        return Err(
            Error::usage(format!("no release `{version}` of `{pipeline}` in {root}")).with_hint(
                if known.is_empty() {
                    format!("`facebuild release list --dir {root}` shows the releases there")
                } else {
                    format!("releases of `{pipeline}`: {}", known.join(", "))
                },
            ),
        );
    }
    let from = std::fs::read_to_string(pdir.join("current/RELEASE"))
        .map(|s| s.trim().to_string())
        .ok();
    set_current(&pdir, version)?;
    let sums = std::fs::read_to_string(vdir.join("SHA256SUMS")).fs_context(&vdir)?;
    append_history(
        &pdir,
        json!({"event": "rollback", "version": version, "from": from, "unix_time": now()}),
    )?;
    Ok(
        json!({"pipeline": pipeline, "current": version, "previous_current": from, "verified_files": sums.lines().count(), "current_dir": pdir.join("current")}),
    )
}

/// `facebuild release list`: every pipeline's versions, oldest first, with which is current.
pub fn list(root: &Utf8Path) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(root) else {
        return Ok(out);
    };
    let mut pipelines: Vec<Utf8PathBuf> = rd
        .flatten()
        .filter_map(|e| Utf8PathBuf::from_path_buf(e.path()).ok())
        .filter(|p| p.is_dir())
        .collect();
    pipelines.sort();
    for pdir in pipelines {
        let name = pdir.file_name().unwrap_or("").to_string();
        let current = std::fs::read_to_string(pdir.join("current/RELEASE"))
            .map(|s| s.trim().to_string())
            .ok();
        for h in read_history(&pdir)
            .into_iter()
            .filter(|h| h["event"] == "promote")
        {
            let v = h["version"].as_str().unwrap_or("").to_string();
            let meta = read_json(&pdir.join(&v).join("metadata.json")).unwrap_or(json!({}));
            let arts: Vec<String> = meta["artifacts"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|x| x["audit_only"] != true)
                        .map(|x| {
                            format!(
                                "{} ({})",
                                x["name"].as_str().unwrap_or(""),
                                x["precision"].as_str().unwrap_or("")
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(json!({"pipeline": name, "version": v, "current": current.as_deref() == Some(v.as_str()), "unix_time": h["unix_time"], "artifacts": arts, "dir": pdir.join(&v)}));
        }
    }
    Ok(out)
}
