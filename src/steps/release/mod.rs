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

use super::benchmark::BenchmarkReport;
use super::compare::CompareReport;
use super::{StepContext, StepOutcome};
use crate::error::{Error, IoContext, Result};
use crate::metrics::gate::{self, GateResult, Gates, Measurement, Metric, Naming};

mod chain_gate;
mod layouts;
mod package;
pub(crate) use package::PackageSpec;
pub(crate) mod publish;
pub(crate) use layouts::DeployLayout;

/// v2: the report is typed and carries `schema`.
/// v3: metadata.json names the source model as the manifest does (no absolute path).
/// v4: latency and throughput gates fail on unreliable measurements.
/// v5: refusals say why a figure was not compared (`unreliable (CV 0.62 > 0.5)`), and
/// `unreliable: pass` gates warn.
/// v6: Triton and OVMS layouts inside the release (`layouts:`); a pack's `onnx/` package.
/// v7: a pack's chain gates (`chain:`, `chain_gates:`); its IRs under `openvino/<model>/`.
pub(crate) const IMPL_VERSION: u32 = 7;
pub(crate) const TOOLCHAIN: &[&str] = &["onnx", "onnxruntime", "openvino", "nncf", "onnxsim"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReleaseParams {
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
    pub gates: Gates,
    /// ...and per-artifact overrides, by step name.
    #[serde(default)]
    pub artifact_gates: BTreeMap<String, Gates>,
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
    /// Deploy layouts written inside the release: `triton`, `ovms` (default both).
    #[serde(default = "layouts::default_layouts")]
    pub layouts: Vec<DeployLayout>,
    /// A pack's release: `onnx/` as an InsightFace model package of these models.
    #[serde(default)]
    pub package: Option<PackageSpec>,
    /// A pack's `chain` step: its combination swapping in exactly the promoted artifacts
    /// must meet `chain_gates`, and the chain's figures go in metadata.json.
    #[serde(default)]
    pub chain: Option<String>,
    #[serde(default)]
    pub chain_gates: Option<Box<super::chain::ChainGates>>,
}

impl ReleaseParams {
    pub(crate) fn validate(&self) -> std::result::Result<(), (String, Option<String>)> {
        if self.artifacts.is_empty() {
            return Err(("`artifacts` is empty: nothing to release".into(), None));
        }
        let all = || std::iter::once(&self.gates).chain(self.artifact_gates.values());
        let accuracy = [
            gate::RECOGNITION,
            gate::DETECTION,
            gate::LANDMARKS,
            gate::ATTRIBUTE,
            gate::SWAPPER,
        ]
        .concat();
        let acc = all().any(|g| !g.set_among(&accuracy).is_empty());
        let perf = all().any(|g| !g.set_among(gate::PERFORMANCE).is_empty());
        if all().any(Gates::has_tolerance) {
            return Err((
                "`atol`/`rtol` are compare's per-output tolerances, not release gates".into(),
                Some("set them on the `compare` step; gate release on its `cosine_min`".into()),
            ));
        }
        if let Some(problem) = all().find_map(Gates::confidence_problem) {
            return Err(problem);
        }
        if self.chain_gates.is_some() && self.chain.is_none() {
            return Err((
                "`chain_gates` are set but no `chain:` step is named".into(),
                Some("name the pack's chain step: `chain: chain`".into()),
            ));
        }
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

    /// The warning for a gate block that still says `unreliable:`, read as `inconclusive:`.
    pub(crate) fn old_unreliable(&self) -> Option<String> {
        let blocks: Vec<String> = std::iter::once(("gates".to_string(), &self.gates))
            .chain(
                self.artifact_gates
                    .iter()
                    .map(|(a, g)| (format!("artifact_gates.{a}"), g)),
            )
            .filter(|(_, g)| g.unreliable.is_some() && g.inconclusive.is_none())
            .map(|(n, _)| format!("`{n}`"))
            .collect();
        (!blocks.is_empty()).then(|| {
            format!(
                "{} say `unreliable:`, now read as `inconclusive:` (speed gates decide on intervals): rename it",
                blocks.join(", ")
            )
        })
    }

    pub(crate) fn referenced(&self) -> Vec<String> {
        let mut v = self.artifacts.clone();
        v.extend(self.compare.iter().cloned());
        v.extend(self.benchmark.iter().cloned());
        v.extend(self.chain.iter().cloned());
        v.extend(self.audit_artifacts.iter().cloned());
        v
    }
}

pub(crate) fn sha256_file(p: &Utf8Path) -> Result<String> {
    let mut h = sha2::Sha256::new();
    let mut f = std::fs::File::open(p).fs_context(p)?;
    std::io::copy(&mut f, &mut h).fs_context(p)?;
    Ok(format!("{:x}", h.finalize()))
}

/// `release`'s report.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseReport {
    /// The report's schema version, e.g. `facebuild.compare/1`.
    pub schema: String,
    /// The step's name.
    pub step: String,
    /// The step's kind.
    pub kind: String,
    /// The version promoted (absent when every artifact was refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The version folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_dir: Option<Utf8PathBuf>,
    /// Artifacts that met every gate.
    pub promoted: Vec<String>,
    /// Artifacts refused, each with why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<Vec<String>>,
    /// Every artifact's gates with their measured values.
    pub verdicts: Vec<Verdict>,
    /// The release this one follows (null for the first; absent when refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Option<String>>,
    /// `model.sig` and its key's sha256, or `unsigned` (absent when refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// The report's schema version.
pub(crate) const SCHEMA: &str = "facebuild.release/1";

/// One artifact's verdict: every gate with its measured value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub artifact: String,
    pub passed: bool,
    pub refused_because: Vec<String>,
    pub gates: Vec<GateResult>,
}

/// The figure a release gate reads for `artifact`, from compare's or benchmark's report, and
/// where it came from. Speed figures are the best configuration's, with their intervals.
fn measure(
    m: &Metric,
    artifact: &str,
    gates: &Gates,
    compare: Option<(&str, &CompareReport)>,
    bench: Option<(&str, &BenchmarkReport)>,
) -> (Measurement, Option<String>) {
    // The source is named beside every refusal, so the reason does not repeat it.
    let missing = format!("nothing measured for `{artifact}`");
    if gate::PERFORMANCE.contains(&m.key) {
        // Speed figures carry intervals over processes, and the gate decides on them.
        return match bench {
            Some((_, b)) => {
                let (measured, src, _) = super::benchmark::gate_figure(b, m, artifact, gates);
                (measured, Some(src))
            }
            None => (Measurement::NotMeasured(missing), None),
        };
    }
    let src = format!("compare `{}`", compare.map(|c| c.0).unwrap_or_default());
    let c = compare.and_then(|(_, c)| c.candidate_of_step(artifact));
    // A TAR compare measured on too few impostor pairs is not measurable, not missing.
    if m.key == "tar_drop_max"
        && let Some(v) = c.and_then(|c| c.verification.as_ref())
        && v.tar_at_operating_far.is_none()
    {
        let why = format!(
            "the operating FAR is below the resolution {:.2e} of {src}'s set (1 / impostor pairs)",
            v.candidate.far_resolution
        );
        return (Measurement::NotMeasurable(why), Some(src));
    }
    let v = c.and_then(|c| match m.key {
        "cosine_min" => c.cosine.map(|s| s.min),
        "tar_drop_max" => c
            .verification
            .as_ref()?
            .tar_at_operating_far
            .map(|t| t.drop),
        "flips_max" => c
            .verification
            .as_ref()
            .map(|v| v.flips_at_reference_threshold as f64),
        "recall_min" => c.total.as_ref().map(|t| t.recall),
        "fp_per_image_max" => c.total.as_ref().map(|t| t.fp_per_image),
        "landmark_nme_max" => c.total.as_ref()?.landmark_nme.max,
        "score_drift_max" => c.total.as_ref()?.score_drift.max,
        "nme_mean_max" => c.nme_mean,
        "nme_max" => c.nme_max,
        "pose_error_max" => c.landmarks.as_ref()?.pose_error_deg.as_ref().map(|p| p.max),
        "gender_flips_max" => c.gender_flips.map(|n| n as f64),
        "age_mae_max" => c.age_mae,
        "age_error_max" => c.attribute.as_ref().map(|a| a.age_error_max),
        "psnr_min" => c.psnr_min,
        "ssim_min" => c.ssim_min,
        "identity_cosine_min" => c.identity_cosine_min,
        "psnr_mean_min" => c.swapper.as_ref().map(|f| f.psnr_mean),
        "ssim_mean_min" => c.swapper.as_ref().map(|f| f.ssim_mean),
        "pixel_error_max" => c.swapper.as_ref().map(|f| f.pixel_error_max),
        "identity_cosine_mean_min" => c.swapper.as_ref().map(|f| f.identity_cosine_mean),
        "identity_flips_max" => c.swapper.as_ref().map(|f| f.identity_flips as f64),
        "nms_parity_min" => c.total.as_ref().map(|t| t.nms_parity),
        // Performance gates are read from the benchmark, never here.
        _ => None,
    });
    let why = missing;
    let spread = c.and_then(|c| c.intervals.as_ref()?.get(m.figure));
    let measured = Measurement::from_option(v, why);
    (measured.with_spread(spread), Some(src))
}

/// Every refused artifact, with why: `` `a`: <gate refusal>; <gate refusal> ``.
fn refusals(verdicts: &[Verdict]) -> Vec<String> {
    verdicts
        .iter()
        .filter(|v| !v.passed)
        .map(|v| format!("`{}`: {}", v.artifact, v.refused_because.join("; ")))
        .collect()
}

/// The step error of a release that promoted nothing. The hint follows the refusals: an
/// inconclusive speed figure needs more processes (the benchmark's `retry:`) or a limit that
/// is not the figure itself, not a quieter machine.
fn refused_error(step: &str, refused: &[String]) -> Error {
    let unreliable = refused.iter().any(|r| r.contains(": inconclusive: "));
    Error::Step {
        step: step.to_string(),
        message: format!(
            "release refused, no artifact meets its gates: {}",
            refused.join(" | ")
        ),
        hint: Some(if unreliable {
            "an inconclusive gate's interval holds its limit: the benchmark adds processes while a gate is inconclusive, up to its `retry: {attempts, total_s}`, so raise those, or set the limit where a figure and its noise do not reach it; `inconclusive: pass` on the gate block passes it with a warning; report.json has every gate with its interval".into()
        } else {
            "see report.json for every gate with its measured value".into()
        }),
    }
}

pub(crate) fn run(ctx: &StepContext, p: &ReleaseParams) -> Result<StepOutcome> {
    let step = &ctx.step.name;
    let started = now();
    let compare: Option<CompareReport> = p
        .compare
        .as_ref()
        .map(|c| super::read_report(&ctx.upstream[c]["report.json"]))
        .transpose()?;
    let bench: Option<BenchmarkReport> = p
        .benchmark
        .as_ref()
        .map(|b| super::read_report(&ctx.upstream[b]["report.json"]))
        .transpose()?;
    let compare_of = p.compare.as_deref().zip(compare.as_ref());
    let bench_of = p.benchmark.as_deref().zip(bench.as_ref());
    let (verdicts, promoted) = verdicts(ctx, p, compare_of, bench_of);

    let report_path = ctx.workdir.join("report.json");
    let refused = refusals(&verdicts);
    if promoted.is_empty() {
        let report = ReleaseReport {
            schema: SCHEMA.into(),
            step: step.clone(),
            kind: "release".into(),
            version: None,
            release_dir: None,
            promoted: vec![],
            refused: None,
            verdicts,
            previous: None,
            signature: None,
        };
        super::write_report(ctx.workdir, "report.json", &report)?;
        return Err(refused_error(step, &refused));
    }

    let chain = chain_gate::of_release(ctx, p, &promoted)?;

    // Stage the release in the step's workdir, then promote it.
    let stage = ctx.workdir.join("release");
    let (mut files, artifacts_meta) = stage_artifacts(
        ctx,
        p,
        &promoted,
        (compare.as_ref(), bench.as_ref()),
        &stage,
    )?;
    if let Some(spec) = &p.package {
        files.extend(package::write(ctx, spec, &stage)?);
    }
    files.extend(deploy_layouts(
        ctx,
        p,
        &promoted,
        (compare.as_ref(), bench.as_ref()),
        &stage,
    )?);
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
        None => ctx.releases_dir.to_owned(),
    };
    let pipeline_dir = crate::util::child_of(&root, &ctx.manifest.name)?;
    let history = read_history(&pipeline_dir);
    let previous = history
        .iter()
        .rev()
        .find(|h| h.event == "promote" && h.version != version)
        .cloned();
    let metadata = metadata(
        ctx,
        (&version, &source_sha256),
        (&artifacts_meta, &verdicts),
        (bench.as_ref(), chain),
        previous.as_ref(),
    )?;
    std::fs::write(
        stage.join("metadata.json"),
        serde_json::to_vec_pretty(&metadata).map_err(anyhow::Error::from)?,
    )
    .fs_context(&stage)?;
    let rollback = rollback_text(&ctx.manifest.name, &version, previous.as_ref(), &root);
    std::fs::write(stage.join("ROLLBACK.md"), rollback).fs_context(&stage)?;
    let signature = seal(
        ctx,
        (&stage, &version),
        (&mut sums, &digests),
        (started, &artifacts_meta, &source_sha256),
    )?;

    let vdir = promote(step, &pipeline_dir, &stage, &version, &sums, digests)?;

    let report = ReleaseReport {
        schema: SCHEMA.into(),
        step: step.clone(),
        kind: "release".into(),
        version: Some(version.clone()),
        release_dir: Some(vdir.clone()),
        promoted: promoted.clone(),
        refused: Some(refused.clone()),
        verdicts,
        previous: Some(previous.as_ref().map(|p| p.version.clone())),
        signature: Some(signature),
    };
    super::write_report(ctx.workdir, "report.json", &report)?;
    Ok(released(&report, report_path, &stage))
}

/// `metadata.json`: what was released, from what, with which tools and gates.
fn metadata(
    ctx: &StepContext,
    (version, source_sha256): (&str, &str),
    (artifacts_meta, verdicts): (&[serde_json::Value], &[Verdict]),
    (bench, chain): (Option<&BenchmarkReport>, Option<serde_json::Value>),
    previous: Option<&HistoryEntry>,
) -> Result<serde_json::Value> {
    Ok(json!({
        "pipeline": ctx.manifest.name,
        "version": version,
        "facebuild_version": env!("CARGO_PKG_VERSION"),
        "manifest": {"file": ctx.manifest.file, "blake3": ctx.manifest.digest},
        "source_onnx": {"path": ctx.model_label(), "sha256": source_sha256},
        "model": {"task": ctx.manifest.model.task, "input": ctx.manifest.model.input, "preprocessing": ctx.manifest.model.preprocessing, "detector": ctx.manifest.model.detector},
        "toolchain": {"python_packages": ctx.toolchain.fingerprint(TOOLCHAIN), "all": ctx.toolchain.info.packages},
        "artifacts": artifacts_meta,
        "gates": verdicts,
        "machine": bench.as_ref().map(|b| &b.machine),
        "previous": previous.as_ref().map(|p| &p.version),
        "pack": pack_sources(ctx)?,
        "chain": chain,
    }))
}

/// A pack's models with their sources' sha256 and where `onnx/` put each (None for a
/// one-model pipeline).
fn pack_sources(ctx: &StepContext) -> Result<Option<serde_json::Value>> {
    if ctx.sources.is_empty() {
        return Ok(None);
    }
    let mut m = serde_json::Map::new();
    for (name, path) in &ctx.sources {
        let spec = &ctx.manifest.models[name].0;
        let label = spec.path.as_ref().map_or_else(
            || {
                format!(
                    "builtin:{}",
                    spec.builtin.as_deref().unwrap_or("iresnet-mini")
                )
            },
            |p| p.to_string(),
        );
        m.insert(
            name.clone(),
            json!({"source": label, "sha256": sha256_file(path)?, "task": spec.task}),
        );
    }
    Ok(Some(serde_json::Value::Object(m)))
}

/// The step's outputs (what the cache keeps to restore the release elsewhere) and summary.
fn released(report: &ReleaseReport, report_path: Utf8PathBuf, stage: &Utf8Path) -> StepOutcome {
    let summary = json!({"version": report.version, "promoted": report.promoted.join(", "), "refused": report.refused.as_ref().map_or(0, Vec::len), "to": report.release_dir, "signature": report.signature});
    let mut outputs: BTreeMap<String, Utf8PathBuf> = [
        ("report.json".to_string(), report_path),
        ("metadata.json".to_string(), stage.join("metadata.json")),
        ("SHA256SUMS".to_string(), stage.join("SHA256SUMS")),
        ("ROLLBACK.md".to_string(), stage.join("ROLLBACK.md")),
    ]
    .into();
    for f in [
        crate::signing::SIGNATURE_FILE,
        super::provenance::PROVENANCE_FILE,
    ] {
        if stage.join(f).is_file() {
            outputs.insert(f.to_string(), stage.join(f));
        }
    }
    // The layouts' configs are the release's own files; their model files are the
    // artifacts' (restore copies them from there).
    let sums = std::fs::read_to_string(stage.join("SHA256SUMS")).unwrap_or_default();
    for rel in sums
        .lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(_, f)| f)
    {
        if layouts::is_generated(rel) {
            outputs.insert(layouts::output_name(rel), stage.join(rel));
        }
    }
    StepOutcome { outputs, summary }
}

/// Write the deploy layouts of the promoted artifacts into `stage`: the files written.
fn deploy_layouts(
    ctx: &StepContext,
    p: &ReleaseParams,
    promoted: &[String],
    (compare, bench): (Option<&CompareReport>, Option<&BenchmarkReport>),
    stage: &Utf8Path,
) -> Result<Vec<Utf8PathBuf>> {
    if p.layouts.is_empty() {
        return Ok(vec![]);
    }
    // Each artifact's model: its step's pack model, or the pipeline's one model.
    let mut names: Vec<Option<String>> = promoted
        .iter()
        .map(|a| ctx.manifest.model_of_step(a).map(String::from))
        .collect();
    names.sort();
    names.dedup();
    let mut graphs = Vec::new();
    for n in &names {
        let file = match n {
            Some(m) if ctx.sources.contains_key(m) => ctx.sources[m].as_path(),
            _ => ctx.model,
        };
        graphs.push(crate::onnx::inspect::inspect(
            &crate::onnx::inspect::load_model(file)?,
            file,
        )?);
    }
    let models: Vec<layouts::Model> = names
        .iter()
        .zip(&graphs)
        .map(|(n, graph)| {
            let spec = n
                .as_ref()
                .and_then(|m| ctx.manifest.models.get(m))
                .map_or(&ctx.manifest.model, |(m, _)| m);
            layouts::Model {
                pipeline: &ctx.manifest.name,
                inputs: spec.all_inputs().collect(),
                graph,
                preprocessing: spec.preprocessing.as_ref(),
            }
        })
        .collect();
    let mut precisions = Vec::new();
    for a in promoted {
        let outs = ctx.upstream.get(a).cloned().unwrap_or_default();
        precisions.push(super::artifact_info(&outs)?.precision);
    }
    let released: Vec<layouts::Released> = promoted
        .iter()
        .zip(&precisions)
        .map(|(a, precision)| layouts::Released {
            name: a,
            model: names
                .iter()
                .position(|n| n.as_deref() == ctx.manifest.model_of_step(a))
                .unwrap_or(0),
            files: ["model.onnx", "model.engine", "model.xml", "model.bin"]
                .into_iter()
                .map(|f| (f.to_string(), stage.join(a).join(f)))
                .filter(|(_, p)| p.is_file())
                .collect(),
            precision,
            bench: bench
                .map(|b| b.measured_for(a).map(|(_, m)| m).collect())
                .unwrap_or_default(),
            compared_precision: compare
                .and_then(|c| c.candidate_of_step(a))
                .and_then(|c| c.execution.as_ref())
                // ONNX Runtime's CPU computes in f32: OVMS must not pick bf16 for a model
                // gated in f32.
                .map(|e| match e.runtime.as_str() {
                    "openvino" => e.precision.as_str(),
                    _ => "f32",
                }),
        })
        .collect();
    layouts::write(&models, &released, &p.layouts, stage)
}

/// Finish the staged release: `SHA256SUMS` (the artifacts' `digests` in `sums`, then
/// metadata.json and ROLLBACK.md), the provenance over every staged file, and `model.sig`
/// when there is a key. Each file's sha256 is computed once. What the report says of the
/// signature.
fn seal(
    ctx: &StepContext,
    (stage, version): (&Utf8Path, &str),
    (sums, digests): (&mut String, &BTreeMap<String, String>),
    (started, artifacts_meta, source_sha256): (u64, &[serde_json::Value], &str),
) -> Result<String> {
    let mut staged = digests.clone();
    for f in ["metadata.json", "ROLLBACK.md"] {
        let d = sha256_file(&stage.join(f))?;
        *sums += &format!("{d}  {f}\n");
        staged.insert(f.to_string(), d);
    }
    std::fs::write(stage.join("SHA256SUMS"), &*sums).fs_context(stage)?;
    staged.insert(
        "SHA256SUMS".into(),
        format!("{:x}", sha2::Sha256::digest(sums.as_bytes())),
    );
    let key = release_key(ctx)?;
    super::provenance::write(
        ctx,
        stage,
        (started, artifacts_meta),
        (source_sha256, &staged),
        key.as_ref(),
    )?;
    sign_stage(key.as_ref(), stage, version)
}

/// `FACEBUILD_RELEASE_SIGNING_KEY` (settings), when one is set.
fn release_key(ctx: &StepContext) -> Result<Option<p256::ecdsa::SigningKey>> {
    let Some(k) = ctx.signing_key else {
        return Ok(None);
    };
    crate::signing::signing_key(k)
        .map(Some)
        .map_err(|e| match e {
            Error::Usage { message, hint } => Error::Step {
                step: ctx.step.name.clone(),
                message: format!("FACEBUILD_RELEASE_SIGNING_KEY: {message}"),
                hint,
            },
            other => other,
        })
}

/// Sign the staged release when there is a key: `model.sig` over every file, in the OpenSSF
/// model-signing format. What the report says of it: the key's sha256, or `unsigned`.
fn sign_stage(
    key: Option<&p256::ecdsa::SigningKey>,
    stage: &Utf8Path,
    version: &str,
) -> Result<String> {
    let Some(key) = key else {
        return Ok("unsigned (no FACEBUILD_RELEASE_SIGNING_KEY)".into());
    };
    let bundle = crate::signing::sign_dir(stage, version, key)?;
    std::fs::write(stage.join(crate::signing::SIGNATURE_FILE), bundle).fs_context(stage)?;
    Ok(format!(
        "{} (ECDSA P-256, public key sha256 {})",
        crate::signing::SIGNATURE_FILE,
        crate::signing::key_hint(key.verifying_key())?
    ))
}

/// Each artifact's verdict against its gates, and the artifacts that passed every one.
fn verdicts(
    ctx: &StepContext,
    p: &ReleaseParams,
    compare_of: Option<(&str, &CompareReport)>,
    bench_of: Option<(&str, &BenchmarkReport)>,
) -> (Vec<Verdict>, Vec<String>) {
    let step = &ctx.step.name;
    if let Some(w) = p.old_unreliable() {
        tracing::warn!("release `{step}`: {w}");
    }
    let mut verdicts = Vec::new();
    let mut promoted = Vec::new();
    for a in &p.artifacts {
        let g = p.gates.overridden_by(p.artifact_gates.get(a));
        let mut missing = Vec::new();
        if !ctx.upstream.contains_key(a) {
            missing.push(super::unavailable_upstream(a));
        }
        let all: Vec<&str> = Gates::METRICS.iter().map(|m| m.key).collect();
        let gates = g.check(&all, Naming::Key, |m| {
            measure(m, a, &g, compare_of, bench_of)
        });
        let passed = missing.is_empty() && gates.iter().all(|c| c.passed);
        let reasons: Vec<String> = missing
            .iter()
            .cloned()
            .chain(gates.iter().filter(|c| !c.passed).map(GateResult::refusal))
            .collect();
        for (metric, w) in gates
            .iter()
            .filter_map(|c| Some((&c.metric, c.warning.as_ref()?)))
        {
            tracing::warn!("release `{step}`: `{a}` gate {metric} passed with a warning: {w}");
        }
        verdicts.push(Verdict {
            artifact: a.clone(),
            passed,
            refused_because: reasons,
            gates,
        });
        if passed {
            promoted.push(a.clone());
        }
    }
    (verdicts, promoted)
}

/// Copy the promoted artifacts' model files (and the audit ones under `audit/`) into
/// `stage`: the files copied, relative to it, and each artifact's metadata.
fn stage_artifacts(
    ctx: &StepContext,
    p: &ReleaseParams,
    promoted: &[String],
    (compare, bench): (Option<&CompareReport>, Option<&BenchmarkReport>),
    stage: &Utf8Path,
) -> Result<(Vec<Utf8PathBuf>, Vec<serde_json::Value>)> {
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
        ("", &promoted.to_vec()),
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
            // A pack's IRs go under `openvino/<model>/`, the step's folder inside it.
            let model = ctx.manifest.model_of_step(a);
            let at = match model {
                Some(m) if dir.is_empty() && outs.contains_key("model.xml") => {
                    format!("openvino/{m}/{a}")
                }
                _ => format!("{dir}{a}"),
            };
            for (name, path) in outs {
                if matches!(
                    name.as_str(),
                    "model.xml" | "model.bin" | "model.onnx" | "model.engine"
                ) {
                    copy(path, &format!("{at}/{name}"), &mut files)?;
                    names.push(name.clone());
                }
            }
            let info = super::artifact_info(outs)?;
            artifacts_meta.push(json!({
                "name": a, "model": model, "dir": at, "audit_only": !dir.is_empty(), "files": names, "precision": info.precision, "backend": info.backend,
                "conversion": info.conversion, "profiles": info.profiles, "tensorrt": info.tensorrt,
                "execution_compare": compare.and_then(|c| c.candidates.iter().find(|y| y.step == *a).map(|y| &y.execution)),
                "execution_benchmark": bench.map(|b| b.results.iter().filter(|y| y.step == *a).map(|y| json!({"label": y.label, "execution": y.measured.as_ref().map(|m| &m.execution)})).collect::<Vec<_>>()),
            }));
        }
    }
    Ok((files, artifacts_meta))
}

/// ROLLBACK.md: how to go back to the previous release, or that there is none.
fn rollback_text(
    pipeline: &str,
    version: &str,
    previous: Option<&HistoryEntry>,
    root: &Utf8Path,
) -> String {
    match previous {
        Some(prev) => format!(
            "# Rolling back `{}` from {version}\n\nThe previous release is **{}** (promoted {}). Its files and sha256:\n\n```\n{}```\n\nRestore it as `current` (every file's sha256 is checked against its SHA256SUMS):\n\n```sh\nfacebuild release rollback {} {} --dir {root}\n```\n",
            pipeline,
            prev.version,
            prev.unix_time,
            prev.sha256
                .iter()
                .flatten()
                .map(|(f, d)| format!("{d}  {f}\n"))
                .collect::<String>(),
            pipeline,
            prev.version,
        ),
        None => format!(
            "# Rolling back `{}` from {version}\n\nThis is the first release of `{}`: there is no earlier version to restore. To withdraw it, remove `{root}/{}/current`.\n",
            pipeline, pipeline, pipeline
        ),
    }
}

/// Promote the staged release: an immutable version folder (the same content again is a
/// no-op, other content an error), then `current`. The version folder.
fn promote(
    step: &str,
    pipeline_dir: &Utf8Path,
    stage: &Utf8Path,
    version: &str,
    sums: &str,
    digests: BTreeMap<String, String>,
) -> Result<Utf8PathBuf> {
    let vdir = crate::util::child_of(pipeline_dir, version)?;
    if vdir.exists() {
        let existing = std::fs::read_to_string(vdir.join("SHA256SUMS")).unwrap_or_default();
        if strip_meta(&existing) != strip_meta(sums) {
            return Err(Error::Step { step: step.to_string(), message: format!("release {version} already exists in {vdir} with other artifacts; releases are immutable"), hint: Some("set a new `version:` (or leave it unset: the default is derived from the content)".into()) });
        }
    } else {
        let tmp = pipeline_dir.join(format!(".{version}.tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        copy_tree(stage, &tmp)?;
        std::fs::rename(&tmp, &vdir).fs_context(&vdir)?;
        append_history(
            pipeline_dir,
            &HistoryEntry {
                event: "promote".into(),
                version: version.to_string(),
                unix_time: now(),
                sha256: Some(digests),
                from: None,
            },
        )?;
    }
    set_current(pipeline_dir, version)?;
    Ok(vdir)
}

/// SHA256SUMS without metadata.json / ROLLBACK.md lines: they differ between two promotions
/// of the same artifacts (the time, the previous release), the artifacts do not.
fn strip_meta(s: &str) -> String {
    s.lines()
        .filter(|l| !l.ends_with("  metadata.json") && !l.ends_with("  ROLLBACK.md"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub(super) fn now() -> u64 {
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

/// One line of a pipeline's `history.jsonl`: a promotion or a rollback.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HistoryEntry {
    /// `promote` or `rollback`.
    pub event: String,
    pub version: String,
    pub unix_time: u64,
    /// Promotions: every released file's sha256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<BTreeMap<String, String>>,
    /// Rollbacks: the version that was current before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

fn read_history(pipeline_dir: &Utf8Path) -> Vec<HistoryEntry> {
    std::fs::read_to_string(pipeline_dir.join("history.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn append_history(pipeline_dir: &Utf8Path, entry: &HistoryEntry) -> Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(pipeline_dir).fs_context(pipeline_dir)?;
    let p = pipeline_dir.join("history.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .fs_context(&p)?;
    writeln!(
        f,
        "{}",
        serde_json::to_string(entry).map_err(anyhow::Error::from)?
    )
    .fs_context(&p)
}

/// Verify a version folder against its SHA256SUMS: the list of bad files.
pub(crate) fn verify_version(vdir: &Utf8Path) -> Result<Vec<String>> {
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

/// A cached release whose version folder is missing (a fresh CI machine whose steps all came
/// from a remote cache, a cleaned disk): rebuild `releases/<pipeline>/<version>/` from the
/// cache, the artifacts from the upstream steps' outputs and `metadata.json`/`ROLLBACK.md`
/// from the release's own, every file checked against the cached `SHA256SUMS`. It becomes
/// `current` when the pipeline has none. Returns the folder when it was restored.
pub(crate) fn restore(
    manifest: &crate::manifest::Manifest,
    p: &ReleaseParams,
    own: &BTreeMap<String, Utf8PathBuf>,
    upstream: &BTreeMap<String, BTreeMap<String, Utf8PathBuf>>,
    releases_dir: &Utf8Path,
) -> Result<Option<Utf8PathBuf>> {
    let (Some(report), Some(sums_file)) = (own.get("report.json"), own.get("SHA256SUMS")) else {
        return Ok(None);
    };
    let report: ReleaseReport = super::read_report(report)?;
    let Some(version) = report.version else {
        return Ok(None);
    };
    let root = match &p.releases_dir {
        Some(d) => manifest.resolve(d),
        None => releases_dir.to_owned(),
    };
    let pipeline_dir = crate::util::child_of(&root, &manifest.name)?;
    let vdir = crate::util::child_of(&pipeline_dir, &version)?;
    if vdir.exists() {
        return Ok(None);
    }
    let sums = std::fs::read_to_string(sums_file).fs_context(sums_file)?;
    let tmp = pipeline_dir.join(format!(".{version}.restore{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let mut digests = BTreeMap::new();
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let bad = || anyhow::anyhow!("{sums_file}: unreadable line `{line}`");
        let (digest, rel) = line.split_once("  ").ok_or_else(bad)?;
        let src = match rel {
            "metadata.json" | "ROLLBACK.md" => own.get(rel),
            _ if layouts::is_generated(rel) => own.get(&layouts::output_name(rel)),
            _ if let Some((step, name)) = layouts::model_source(&manifest.name, rel) => {
                upstream.get(&step).and_then(|o| o.get(name))
            }
            _ => {
                // `<step>/<file>`, `audit/<step>/<file>` or a pack's `openvino/<model>/<step>/<file>`.
                let rel = match rel.strip_prefix("openvino/") {
                    Some(r) => r.split_once('/').ok_or_else(bad)?.1,
                    None => rel.strip_prefix("audit/").unwrap_or(rel),
                };
                let (step, name) = rel.split_once('/').ok_or_else(bad)?;
                upstream.get(step).and_then(|o| o.get(name))
            }
        }
        .ok_or_else(|| {
            Error::usage(format!(
                "cannot restore release {version}: `{rel}` is not among the cached outputs"
            ))
            .with_hint(
                "rebuild the release: `facebuild run FILE --no-cache --target <release step>`",
            )
        })?;
        // A path from the cache stays inside the release folder.
        if rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(bad().into());
        }
        let to = tmp.join(rel);
        std::fs::create_dir_all(to.parent().expect("has a parent")).fs_context(&to)?;
        std::fs::copy(src, &to).fs_context(src)?;
        let got = sha256_file(&to)?;
        if got != digest {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(Error::usage(format!(
                "cannot restore release {version}: `{rel}` has sha256 {got}, SHA256SUMS says {digest}"
            ))
            .with_hint("the cache holds other bytes than were released: `facebuild cache verify --repair`, then run again"));
        }
        if !matches!(rel, "metadata.json" | "ROLLBACK.md") {
            digests.insert(rel.to_string(), got);
        }
    }
    std::fs::copy(sums_file, tmp.join("SHA256SUMS")).fs_context(sums_file)?;
    // The signature and provenance were made where the release was built; they come back
    // with the rest.
    for f in [
        crate::signing::SIGNATURE_FILE,
        super::provenance::PROVENANCE_FILE,
    ] {
        if let Some(src) = own.get(f) {
            std::fs::copy(src, tmp.join(f)).fs_context(src)?;
        }
    }
    std::fs::rename(&tmp, &vdir).fs_context(&vdir)?;
    append_history(
        &pipeline_dir,
        &HistoryEntry {
            event: "restore".into(),
            version: version.clone(),
            unix_time: now(),
            sha256: Some(digests),
            from: None,
        },
    )?;
    if !pipeline_dir.join("current").exists() {
        set_current(&pipeline_dir, &version)?;
    }
    Ok(Some(vdir))
}

/// Make `version` the pipeline's `current/` (a verified copy), atomically by rename.
fn set_current(pipeline_dir: &Utf8Path, version: &str) -> Result<()> {
    let vdir = crate::util::child_of(pipeline_dir, version)?;
    let bad = verify_version(&vdir)?;
    if !bad.is_empty() {
        return Err(
            Error::usage(format!("release {vdir} is damaged: {}", bad.join("; ")))
                .with_hint("restore it from your artifact store, or roll back to another version"),
        );
    }
    let tmp = pipeline_dir.join(format!(".current.tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    // A copy of the version, file for file: its signature verifies on it as on the version.
    copy_tree(&vdir, &tmp)?;
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
    // Which version `current/` is, beside it (inside, it would be a file the signature
    // does not cover).
    crate::cache::store::write_atomic(
        &pipeline_dir.join(CURRENT_FILE),
        format!("{version}\n").as_bytes(),
    )
}

/// The file beside `current/` that names its version.
const CURRENT_FILE: &str = "CURRENT";

/// The version `current/` holds: `CURRENT`, or the marker inside `current/` that releases
/// before signatures wrote.
fn current_version(pipeline_dir: &Utf8Path) -> Option<String> {
    std::fs::read_to_string(pipeline_dir.join(CURRENT_FILE))
        .or_else(|_| std::fs::read_to_string(pipeline_dir.join("current/RELEASE")))
        .map(|s| s.trim().to_string())
        .ok()
}

/// `facebuild release rollback PIPELINE VERSION`: make an earlier version current again.
/// What `release rollback` did.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Rollback {
    pub pipeline: String,
    pub current: String,
    pub previous_current: Option<String>,
    pub verified_files: usize,
    pub current_dir: Utf8PathBuf,
}

/// One release, as `release list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseEntry {
    /// The pipeline released.
    pub pipeline: String,
    /// The version folder's name.
    pub version: String,
    /// Whether it is the pipeline's `current/`.
    pub current: bool,
    /// When it was promoted.
    pub unix_time: u64,
    /// `name (precision)` of each promoted artifact.
    pub artifacts: Vec<String>,
    /// The version folder.
    pub dir: Utf8PathBuf,
}

pub(crate) fn rollback(root: &Utf8Path, pipeline: &str, version: &str) -> Result<Rollback> {
    let pdir = crate::util::child_of(root, pipeline)?;
    let vdir = crate::util::child_of(&pdir, version)?;
    if !vdir.join("SHA256SUMS").exists() {
        let known = list(root)?
            .into_iter()
            .filter(|r| r.pipeline == pipeline)
            .map(|r| r.version)
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
    let from = current_version(&pdir);
    set_current(&pdir, version)?;
    let sums = std::fs::read_to_string(vdir.join("SHA256SUMS")).fs_context(&vdir)?;
    append_history(
        &pdir,
        &HistoryEntry {
            event: "rollback".into(),
            version: version.into(),
            unix_time: now(),
            sha256: None,
            from: from.clone(),
        },
    )?;
    Ok(Rollback {
        pipeline: pipeline.into(),
        current: version.into(),
        previous_current: from,
        verified_files: sums.lines().count(),
        current_dir: pdir.join("current"),
    })
}

/// `facebuild release list`: every pipeline's versions, oldest first, with which is current.
/// What `release list` reads of a release's metadata.json.
#[derive(Deserialize)]
struct MetadataArtifacts {
    artifacts: Vec<MetadataArtifact>,
}

#[derive(Deserialize)]
struct MetadataArtifact {
    name: String,
    #[serde(default)]
    precision: String,
    #[serde(default)]
    audit_only: bool,
}

pub(crate) fn list(root: &Utf8Path) -> Result<Vec<ReleaseEntry>> {
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
        let current = current_version(&pdir);
        for h in read_history(&pdir)
            .into_iter()
            .filter(|h| h.event == "promote")
        {
            let v = h.version.clone();
            let meta: Option<MetadataArtifacts> =
                super::read_report(&pdir.join(&v).join("metadata.json")).ok();
            let arts: Vec<String> = meta
                .map(|m| m.artifacts)
                .unwrap_or_default()
                .into_iter()
                .filter(|x| !x.audit_only)
                .map(|x| format!("{} ({})", x.name, x.precision))
                .collect();
            out.push(ReleaseEntry {
                pipeline: name.clone(),
                current: current.as_deref() == Some(v.as_str()),
                unix_time: h.unix_time,
                artifacts: arts,
                dir: pdir.join(&v),
                version: v,
            });
        }
    }
    Ok(out)
}

impl super::Kind for ReleaseParams {
    fn plan_notes(&self, manifest: &crate::manifest::Manifest) -> Vec<String> {
        self.package
            .as_ref()
            .and_then(|p| package::left_out(manifest, p))
            .into_iter()
            .chain(self.old_unreliable())
            .collect()
    }
    fn impl_version(&self) -> u32 {
        IMPL_VERSION
    }
    fn slurm_refusal(&self) -> Option<(&'static str, &'static str)> {
        Some((
            "a release is written on the machine that runs facebuild; it cannot run on Slurm",
            "give the release step `runs_on: {executor: local}`",
        ))
    }
    fn toolchain_pieces(&self) -> Vec<&'static str> {
        TOOLCHAIN.to_vec()
    }
    fn references(&self) -> Vec<String> {
        self.referenced()
    }
    fn check_reference(
        &self,
        target: &str,
        kind: super::StepKind,
    ) -> std::result::Result<(), super::Problem> {
        use super::StepKind;
        if self.compare.as_deref() == Some(target) {
            super::expect(target, kind, &[StepKind::Compare], "a `compare` step")
        } else if self.benchmark.as_deref() == Some(target) {
            super::expect(target, kind, &[StepKind::Benchmark], "a `benchmark` step")
        } else if self.chain.as_deref() == Some(target) {
            super::expect(target, kind, &[StepKind::Chain], "a `chain` step")
        } else {
            super::expect_artifact(target, kind)
        }
    }
    fn validate(&self) -> Vec<super::Problem> {
        ReleaseParams::validate(self).err().into_iter().collect()
    }
    fn spans_models(&self) -> bool {
        self.package.is_some()
    }
    fn extra_files(&self) -> Vec<Utf8PathBuf> {
        self.package
            .iter()
            .filter_map(|p| p.license.clone())
            .collect()
    }
    fn run(&self, ctx: &StepContext) -> Result<StepOutcome> {
        run(ctx, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compare_without(artifact: &str) -> CompareReport {
        serde_json::from_value(serde_json::json!({
            "schema": "facebuild.compare/1", "step": "compare", "kind": "compare",
            "passed": true,
            "dataset": {"name": "d", "images": 1},
            "reference": {"model": "ONNX original", "execution": {"runtime": "onnxruntime",
                "version": "1", "device": "CPU", "threads": 1, "precision": "f32",
                "settings": {}}},
            "candidates": [{"label": artifact, "step": artifact, "available": false,
                "unavailable": "absent", "passed": null}],
            "failures": [], "toolchain": {},
        }))
        .unwrap()
    }

    /// A release gate on an artifact compare could not measure fails by the one rule, with
    /// its status recorded, and passes only where the gates say `missing: pass`.
    #[test]
    fn missing_figure_follows_the_one_rule() {
        let c = compare_without("openvino_fp16");
        let mut g = Gates {
            cosine_min: Some(0.99),
            ..Default::default()
        };
        let all: Vec<&str> = Gates::METRICS.iter().map(|m| m.key).collect();
        let check = |g: &Gates| {
            g.check(&all, Naming::Key, |m| {
                measure(m, "openvino_fp16", g, Some(("compare", &c)), None)
            })
        };
        let r = check(&g);
        assert_eq!(r.len(), 1);
        assert!(!r[0].passed);
        assert_eq!(r[0].metric, "cosine_min");
        assert_eq!(r[0].status.as_deref(), Some("not measured"));
        assert_eq!(r[0].source.as_deref(), Some("compare `compare`"));
        g.missing = Some(gate::OnMissing::Pass);
        assert!(check(&g)[0].passed);
    }

    /// A benchmark report whose configurations were each measured in `procs` processes:
    /// (step, label, base latency ms, per-process slowdowns).
    fn bench_with(rows: &[(&str, &str, f64, Vec<f64>)]) -> BenchmarkReport {
        let results: Vec<serde_json::Value> = rows
            .iter()
            .map(|(step, label, base, slow)| {
                let processes: Vec<serde_json::Value> = slow
                    .iter()
                    .enumerate()
                    .map(|(r, k)| {
                        let lat: Vec<f64> = (0..400)
                            .map(|i| base * k * (1.0 + (i % 7) as f64 * 0.02))
                            .collect();
                        let ips = 1e3 / (base * k);
                        json!({"round": r + 1, "wall_s": 1.0,
                            "execution": {"runtime": "openvino", "version": "1", "device": "CPU",
                                "precision": "f32", "threads": null, "hint": "THROUGHPUT",
                                "requests": 1, "settings": {}},
                            "cold_start": {"spawn_to_first_output_ms": 100.0 * k, "load_ms": null,
                                "compile_ms": null, "first_inference_ms": null},
                            "latency_batch1_ms": null, "latency_batch1_samples_ms": lat,
                            "throughput": [{"batch": 1, "images_per_s": ips,
                                "windows_images_per_s": [ips, ips * 0.98, ips * 1.02]}],
                            "peak_rss_mib": 100.0})
                    })
                    .collect();
                json!({"label": label, "step": step, "artifact": "openvino-ir",
                    "artifact_precision": "fp16", "available": true, "processes": processes})
            })
            .collect();
        let mut b: BenchmarkReport = serde_json::from_value(json!({
            "schema": super::super::benchmark::SCHEMA, "step": "benchmark", "kind": "benchmark",
            "machine": {"cpu": "c", "logical_cores": 2, "isa": [], "memory_gib": null,
                "gpu": null, "os": "linux", "arch": "x86_64"},
            "input": {"name": "input", "shape_batch1": [1, 3, 112, 112]},
            "params": {"batch_sizes": [1], "warmup": 1, "iterations": 1, "time_budget_s": 1.0,
                "threads": null, "openvino_hints": ["throughput"], "precision_hint": null},
            "results": results, "toolchain": {},
        }))
        .unwrap();
        super::super::benchmark::refresh(
            &mut b,
            &[("openvino_int8".into(), "openvino_fp16".into())],
        );
        b
    }

    fn verdicts_of(b: &BenchmarkReport, gates: &[(&str, Gates)]) -> Vec<Verdict> {
        let all: Vec<&str> = Gates::METRICS.iter().map(|m| m.key).collect();
        gates
            .iter()
            .map(|(a, g)| {
                let r = g.check(&all, Naming::Key, |m| {
                    measure(m, a, g, None, Some(("benchmark", b)))
                });
                Verdict {
                    artifact: a.to_string(),
                    passed: r.iter().all(|c| c.passed),
                    refused_because: r
                        .iter()
                        .filter(|c| !c.passed)
                        .map(GateResult::refusal)
                        .collect(),
                    gates: r,
                }
            })
            .collect()
    }

    /// Speed gates decide on intervals over processes: a process that ran three times slower
    /// (a busy machine) widens FP16's interval, yet 50 ms is far above all of it, so it
    /// passes; a limit inside the interval is inconclusive, one below it fails; the paired
    /// speedup of INT8 over FP16 is read from rounds and names the FP16 IR executed in f32.
    #[test]
    fn speed_gates_decide_on_intervals_and_name_why() {
        let b = bench_with(&[
            (
                "openvino_fp16",
                "openvino_fp16 [latency]",
                2.0,
                vec![1.0, 3.0, 1.1],
            ),
            (
                "openvino_int8",
                "openvino_int8 [latency]",
                1.6,
                vec![1.0, 3.0, 1.1],
            ),
        ]);
        let gates = |p99: f64| Gates {
            throughput_min: Some(50.0),
            p99_ms_max: Some(p99),
            cold_start_ms_max: Some(10_000.0),
            ..Default::default()
        };
        let v = verdicts_of(&b, &[("openvino_fp16", gates(50.0))]);
        assert!(v[0].passed, "{v:#?}");
        assert!(
            v[0].gates
                .iter()
                .all(|g| g.status.as_deref() == Some("pass"))
        );
        let int8 = Gates {
            speedup_min: Some(gate::Speedup {
                over: "openvino_fp16".into(),
                value: 1.5,
            }),
            ..gates(50.0)
        };
        let v = verdicts_of(
            &b,
            &[
                ("openvino_fp16", gates(4.0)),
                ("openvino_fp16", gates(1.0)),
                ("openvino_int8", int8),
            ],
        );
        assert!(v.iter().all(|v| !v.passed));
        let e = refused_error("release", &refusals(&v));
        insta::assert_snapshot!(e.to_string());
    }
}
