//! The worker side of remote execution: `facebuild exec-step <spec>`, which a Slurm job runs.
//!
//! The submitter writes a self-contained [`WorkerSpec`] (the manifest's text, the step, the
//! key it expects, the digests of the step's input files and of its upstream outputs) to the
//! remote cache as a blob, and pushes every blob the spec names. The worker needs nothing
//! else from the submitting machine: in an empty folder of its own, with its own cache, it
//! fetches the spec and the blobs (each verified), recomputes the step's key and refuses to
//! run if it differs, runs the step, and pushes its outputs and record. Its whole output is
//! pushed as a log blob, which the submitter shows.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};

use super::{Job, Outputs};
use crate::cache::remote::Remote;
use crate::cache::{BlobRef, KeyParts, Lock, LockEntry};
use crate::context::BuildContext;
use crate::error::{Error, IoContext, Result};
use crate::manifest::{Manifest, RanOn};

/// The spec format this facebuild writes and reads.
pub(crate) const SPEC_FORMAT: &str = "facebuild.exec-step/1";

/// The most of a job's output kept in its log blob (the tail, if it is longer).
const MAX_LOG: usize = 4 << 20;

/// Everything a worker needs to run one step, by digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerSpec {
    pub format: String,
    pub pipeline: String,
    /// The manifest's file name: its lockfile and outputs are named after it.
    pub manifest_name: String,
    /// The manifest exactly as the submitter read it.
    pub manifest_text: String,
    /// The toolchain lock beside the manifest, if there is one: (file name, text).
    #[serde(default)]
    pub toolchain_lock: Option<(String, String)>,
    pub step: String,
    /// The key the submitter computed; the worker must compute the same.
    pub key: String,
    pub parts: KeyParts,
    /// The step's input files and folders, by the path the manifest writes.
    pub inputs: Vec<SpecInput>,
    /// Every upstream step's outputs.
    pub upstream: BTreeMap<String, Outputs>,
    /// Referenced steps that failed, with why (compare reports them).
    #[serde(default)]
    pub failed: BTreeMap<String, String>,
    /// The submitting machine (for logs).
    pub submitted_from: String,
}

/// One input file, or folder of files, named as the manifest writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SpecInput {
    pub path: Utf8PathBuf,
    /// A folder (a dataset): `files` are relative to it. A file: one entry, named "".
    pub dir: bool,
    pub files: Vec<(String, BlobRef)>,
}

impl WorkerSpec {
    /// Check every field the worker turns into a path, a digest or a key, as records are
    /// checked (`cache::validate`): the spec comes from the remote, so it is outside data.
    pub(crate) fn validate(&self) -> std::result::Result<(), crate::cache::validate::Invalid> {
        use crate::cache::validate::{check_blob, check_name, invalid, is_digest};
        let name = |field: &str, v: &str| check_name(field, v);
        name("pipeline", &self.pipeline)?;
        name("step", &self.step)?;
        name("manifest_name", &self.manifest_name)?;
        if let Some((lock, _)) = &self.toolchain_lock {
            name("toolchain_lock", lock)?;
        }
        if !is_digest(&self.key) || self.parts.key() != self.key {
            return Err(invalid("key", "is not the hash of the spec's key parts"));
        }
        for (i, input) in self.inputs.iter().enumerate() {
            if input.path.as_str().is_empty() || input.path.as_str().contains('\0') {
                return Err(invalid(format!("inputs[{i}].path"), "is not a path"));
            }
            if !input.dir && input.files.len() != 1 {
                return Err(invalid(
                    format!("inputs[{i}]"),
                    format!("is a file with {} blobs", input.files.len()),
                ));
            }
            for (rel, b) in &input.files {
                check_blob(&format!("inputs[{i}].files"), b)?;
                let plain = Utf8Path::new(rel)
                    .components()
                    .all(|c| matches!(c, camino::Utf8Component::Normal(_)));
                if input.dir && (rel.is_empty() || !plain) {
                    return Err(invalid(
                        format!("inputs[{i}].files"),
                        format!(
                            "names `{}`, which would escape its folder",
                            rel.escape_debug()
                        ),
                    ));
                }
            }
        }
        for (step, outputs) in &self.upstream {
            name("upstream", step)?;
            for (o, b) in outputs {
                name(&format!("upstream.{step}"), o)?;
                check_blob(&format!("upstream.{step}.{o}"), b)?;
            }
        }
        for step in self.failed.keys() {
            name("failed", step)?;
        }
        Ok(())
    }

    /// Where the worker's log goes on the remote.
    pub(crate) fn log_path(spec_digest: &str, job_id: &str) -> String {
        format!("logs/{spec_digest}-{job_id}.log")
    }
}

/// The spec of `job`, and every blob it names with the local file it comes from (the
/// submitter pushes them before it submits).
pub(crate) fn prepare(
    ctx: &BuildContext,
    job: &Job,
) -> Result<(WorkerSpec, Vec<(BlobRef, Utf8PathBuf)>)> {
    let step = ctx.manifest.step(&job.name);
    // A pack step reads its own model's file.
    let m = ctx.manifest_for(step);
    let kind = step.spec.params.kind();
    // The files and folders the step reads, as the manifest writes them.
    let mut files: Vec<Utf8PathBuf> = Vec::new();
    let mut dirs: Vec<Utf8PathBuf> = Vec::new();
    // The source model, unless the step reads an upstream model or a built-in one.
    if step.spec.from.is_none()
        && let Some(p) = &m.model.path
    {
        files.push(p.clone());
    }
    files.extend(kind.extra_files());
    for d in kind.datasets() {
        let spec = &m.datasets[&d];
        if let Some(a) = &spec.align {
            files.push(a.model.clone());
        }
        match &spec.path {
            Some(p) if spec.is_bin() => files.push(p.clone()),
            Some(p) => dirs.push(p.clone()),
            None => {} // built-in: the worker generates the same files
        }
    }
    let mut blobs = Vec::new();
    // A local file as a blob (digest by the stat memo), queued for the push.
    let mut push = |path: Utf8PathBuf| -> Result<BlobRef> {
        let b = BlobRef {
            digest: ctx.store.memo.blake3(&path)?.blake3,
            size: std::fs::metadata(&path).fs_context(&path)?.len(),
        };
        blobs.push((b.clone(), path));
        Ok(b)
    };
    let mut inputs = Vec::new();
    for written in files {
        let b = push(m.resolve(&written))?;
        inputs.push(SpecInput {
            path: written,
            dir: false,
            files: vec![(String::new(), b)],
        });
    }
    for written in dirs {
        let dir = m.resolve(&written);
        let mut files = Vec::new();
        for f in crate::util::files_under(&dir)? {
            let rel = f.strip_prefix(&dir).unwrap_or(&f).to_string();
            files.push((rel, push(f)?));
        }
        inputs.push(SpecInput {
            path: written,
            dir: true,
            files,
        });
    }
    // Upstream outputs: local ones are pushed from the store; remote hits are there already.
    for outs in job.upstream_blobs.values() {
        for b in outs.values() {
            blobs.push((b.clone(), ctx.store.blob_path(&b.digest)));
        }
    }
    let lock_path = crate::toolchain::Pins::lock_path(&m.file);
    let toolchain_lock = std::fs::read_to_string(&lock_path)
        .ok()
        .and_then(|t| Some((lock_path.file_name()?.to_string(), t)));
    let spec = WorkerSpec {
        format: SPEC_FORMAT.into(),
        pipeline: m.name.clone(),
        manifest_name: m.file.file_name().unwrap_or("pipeline.yaml").to_string(),
        manifest_text: m.text.to_string(),
        toolchain_lock,
        step: job.name.clone(),
        key: job.parts.key(),
        parts: job.parts.clone(),
        inputs,
        upstream: job.upstream_blobs.clone(),
        failed: job.failed.clone(),
        submitted_from: crate::util::hostname(),
    };
    Ok((spec, blobs))
}

fn remote_from_env() -> Result<Remote> {
    let flags = crate::settings::RemoteFlags {
        required: true,
        ..Default::default()
    };
    let cfg = crate::settings::remote(&flags)?.ok_or_else(|| {
        Error::usage("exec-step needs the remote cache the submitter used: FACEBUILD_REMOTE is not set")
            .with_hint("the Slurm executor passes it in the job's environment; set it (and its credentials) when running exec-step by hand")
    })?;
    Remote::open(cfg)
}

/// `facebuild exec-step SPEC`: run the step the spec blob names, in a new folder under the
/// current one, and push its output as a log. Returns the exit code.
pub(crate) fn exec_step(spec_digest: &str, cancel: &AtomicBool) -> Result<i32> {
    if spec_digest.len() != 64 || !spec_digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::usage(format!(
            "exec-step: `{spec_digest}` is not a blake3 digest (64 hex digits)"
        )));
    }
    let remote = remote_from_env()?;
    let ran_on = RanOn::from_slurm_env();
    let job_id = ran_on
        .as_ref()
        .map(|r| r.job_id.clone())
        .unwrap_or_else(|| "local".into());
    let cwd = crate::util::absolute(Utf8Path::new("."));
    let dir = cwd.join(format!("facebuild-job-{job_id}-{}", &spec_digest[..12]));
    std::fs::create_dir_all(&dir).fs_context(&dir)?;
    let exe = std::env::current_exe().map_err(|e| Error::io(Utf8Path::new("facebuild"), e))?;
    // The work runs in a child, so that everything it prints (even a crash) is in the log.
    let mut child = std::process::Command::new(exe)
        .args(["exec-step", spec_digest, "--child-dir", dir.as_str()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(&dir, e))?;
    let log = Arc::new(Mutex::new(Vec::<u8>::new()));
    let tee = |r: Box<dyn std::io::Read + Send>| {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(r).lines().map_while(|l| l.ok()) {
                eprintln!("{line}");
                if let Ok(mut l) = log.lock() {
                    l.extend_from_slice(line.as_bytes());
                    l.push(b'\n');
                    if l.len() > 2 * MAX_LOG {
                        let cut = l.len() - MAX_LOG;
                        l.drain(..cut);
                    }
                }
            }
        })
    };
    let readers = [
        tee(Box::new(child.stdout.take().expect("piped"))),
        tee(Box::new(child.stderr.take().expect("piped"))),
    ];
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| Error::io(&dir, e))? {
            break s;
        }
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = child.kill();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    for r in readers {
        let _ = r.join();
    }
    let code = status.code().unwrap_or(1);
    let mut text = log.lock().map(|l| l.clone()).unwrap_or_default();
    if text.len() > MAX_LOG {
        text.drain(..text.len() - MAX_LOG);
    }
    let _ = writeln!(
        text,
        "exec-step: exit code {code} on {}",
        crate::util::hostname()
    );
    match remote.put_bytes(&WorkerSpec::log_path(spec_digest, &job_id), text) {
        // Slurm's own copy of the output (`--output=facebuild-%j.out`) is redundant once
        // the log is on the remote; without that, it is the only evidence, and stays.
        Ok(()) if ran_on.is_some() => {
            let _ = std::fs::remove_file(cwd.join(format!("facebuild-{job_id}.out")));
        }
        Ok(()) => {}
        Err(e) => eprintln!("warning: could not push this job's log to the remote: {e}"),
    }
    if !crate::settings::keep_job_dir() {
        let _ = make_writable_and_remove(&dir);
    }
    Ok(code)
}

/// Store blobs are read-only; remove the job's folder all the same.
fn make_writable_and_remove(dir: &Utf8Path) -> std::io::Result<()> {
    for f in crate::util::files_under(dir).unwrap_or_default() {
        if let Ok(m) = std::fs::metadata(&f) {
            let mut p = m.permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            p.set_readonly(false);
            let _ = std::fs::set_permissions(&f, p);
        }
    }
    std::fs::remove_dir_all(dir)
}

/// The worker proper (`exec-step SPEC --child-dir DIR`): everything happens in `dir`.
pub(crate) fn run_child(spec_digest: &str, dir: &Utf8Path, cancel: &AtomicBool) -> Result<i32> {
    let t0 = std::time::Instant::now();
    let remote = remote_from_env()?;
    let spec = read_spec(&remote, spec_digest)?;
    eprintln!(
        "exec-step: pipeline `{}`, step `{}`, key {}, from {}, in {dir}",
        spec.pipeline,
        spec.step,
        &spec.key[..12],
        spec.submitted_from
    );
    let project = dir.join("project");
    std::fs::create_dir_all(&project).fs_context(&project)?;
    let manifest_path = project.join(&spec.manifest_name);
    std::fs::write(&manifest_path, &spec.manifest_text).fs_context(&manifest_path)?;
    if let Some((name, text)) = &spec.toolchain_lock {
        let p = project.join(name);
        std::fs::write(&p, text).fs_context(&p)?;
    }
    let mut manifest = Manifest::parse(&manifest_path, &spec.manifest_text)?;
    let cache_dir = dir.join("cache");
    lay_out_inputs(&spec, dir, &cache_dir, &remote, &mut manifest)?;
    // The step runs into this job's own cache, and pushes to the remote the spec came from.
    let settings = crate::settings::ContextSettings {
        remote: None,
        ..crate::settings::ContextSettings::local(Some(&cache_dir))
    };
    let mut ctx = BuildContext::with_remote(manifest, &settings, Some(remote))?;
    ctx.ensure_toolchain()?;
    let remote = ctx
        .remote
        .as_ref()
        .ok_or_else(|| Error::usage("exec-step: the worker's context has no remote"))?;
    let step = ctx
        .manifest
        .steps
        .get(&spec.step)
        .ok_or_else(|| {
            Error::usage(format!(
                "exec-step: no step `{}` in the spec's manifest",
                spec.step
            ))
        })?
        .clone();
    let model_digest = match &step.spec.from {
        None => ctx.source(step.model.as_deref())?.digest,
        Some(f) => spec
            .upstream
            .get(&f.value)
            .and_then(|o| o.get("model.onnx"))
            .map(|b| b.digest.clone())
            .ok_or_else(|| {
                Error::usage(format!("exec-step: the spec lacks `{}`'s model", f.value))
            })?,
    };
    let parts = key_parts_as_submitted(&ctx, &spec, &step, &model_digest)?;
    let upstream_blobs: Vec<BlobRef> = spec
        .upstream
        .values()
        .flat_map(|o| o.values().cloned())
        .collect();
    remote
        .fetch(&upstream_blobs, &ctx.store)
        .map_err(|e| Error::usage(format!("exec-step: fetching upstream outputs: {e}")))?;
    let model = match &step.spec.from {
        None => ctx.source_file(step.model.as_deref())?,
        Some(_) => ctx.store.blob_path(&model_digest),
    };
    let upstream = spec
        .upstream
        .iter()
        .map(|(s, outs)| {
            let paths = outs
                .iter()
                .map(|(k, b)| (k.clone(), ctx.store.blob_path(&b.digest)))
                .collect();
            (s.clone(), paths)
        })
        .collect();
    let job = Job {
        name: spec.step.clone(),
        no_cache: true,
        model,
        upstream,
        upstream_blobs: spec.upstream.clone(),
        failed: spec.failed.clone(),
        parts,
        ran_on: RanOn::from_slurm_env(),
    };
    let executed = super::local::execute(&ctx, &job, cancel)?;
    let report = remote.finish();
    if let Some(why) = remote.required_and_failed(&report) {
        return Err(Error::Step {
            step: spec.step.clone(),
            message: format!("built, but its result could not be pushed: {why}"),
            hint: Some("the submitter takes the result from the remote cache; check the workers' credentials for it".into()),
        });
    }
    eprintln!(
        "exec-step: `{}` built in {:.1}s: {} output(s), {} pushed ({} blobs, {})",
        spec.step,
        t0.elapsed().as_secs_f64(),
        executed.outputs.len(),
        report.records_uploaded,
        report.blobs_uploaded,
        crate::util::human_bytes(report.bytes_uploaded)
    );
    Ok(0)
}

/// The job's spec from the remote: its digest checked, its format this facebuild's, every
/// field validated (it is outside data).
fn read_spec(remote: &Remote, spec_digest: &str) -> Result<WorkerSpec> {
    let bytes = remote
        .get_bytes(&format!("cas/{spec_digest}"))
        .map_err(|e| {
            Error::usage(format!(
                "exec-step: cannot read the spec from {}: {e}",
                remote.display()
            ))
        })?
        .ok_or_else(|| {
            Error::usage(format!(
                "exec-step: spec {spec_digest} is not on the remote {}",
                remote.display()
            ))
            .with_hint("the worker must use the submitter's remote cache (FACEBUILD_REMOTE)")
        })?;
    let got = blake3::hash(&bytes).to_hex().to_string();
    if got != spec_digest {
        return Err(Error::usage(format!(
            "exec-step: the spec from the remote hashes to {got}, not {spec_digest}: refused"
        )));
    }
    let spec: WorkerSpec = serde_json::from_slice(&bytes)
        .map_err(|e| Error::usage(format!("exec-step: unreadable spec: {e}")))?;
    if spec.format != SPEC_FORMAT {
        return Err(Error::usage(format!(
            "exec-step: spec format `{}`, but this facebuild reads `{SPEC_FORMAT}`",
            spec.format
        ))
        .with_hint(
            "install the same facebuild version on the workers as on the submitting machine",
        ));
    }
    spec.validate().map_err(|why| {
        Error::usage(format!(
            "exec-step: spec {spec_digest} is invalid: {why}; refused"
        ))
    })?;
    Ok(spec)
}

/// Fetch the job's inputs (verified) into its own store under `cache_dir`, lay them out
/// under `dir/inputs/` with their own names (tools look at extensions), and point the
/// manifest's paths there.
fn lay_out_inputs(
    spec: &WorkerSpec,
    dir: &Utf8Path,
    cache_dir: &Utf8Path,
    remote: &Remote,
    manifest: &mut Manifest,
) -> Result<()> {
    let store = crate::cache::Store::open(cache_dir)?;
    let all: Vec<BlobRef> = spec
        .inputs
        .iter()
        .flat_map(|i| i.files.iter().map(|(_, b)| b.clone()))
        .collect();
    remote
        .fetch(&all, &store)
        .map_err(|e| Error::usage(format!("exec-step: fetching inputs: {e}")))?;
    for (i, input) in spec.inputs.iter().enumerate() {
        let name = input.path.file_name().unwrap_or("input");
        let base = dir.join("inputs").join(i.to_string()).join(name);
        for (rel, b) in &input.files {
            let dest = if input.dir {
                // A relative path from the spec: plain names only, so nothing escapes.
                let rel = Utf8Path::new(rel);
                if rel
                    .components()
                    .any(|c| !matches!(c, camino::Utf8Component::Normal(_)))
                {
                    return Err(Error::usage(format!(
                        "exec-step: the spec names input file `{rel}`, which would escape {base}"
                    )));
                }
                base.join(rel)
            } else {
                base.clone()
            };
            if let Some(p) = dest.parent() {
                std::fs::create_dir_all(p).fs_context(p)?;
            }
            let src = store.blob_path(&b.digest);
            if std::fs::hard_link(&src, &dest).is_err() {
                std::fs::copy(&src, &dest).fs_context(&dest)?;
            }
        }
        manifest.relocated.insert(input.path.clone(), base);
    }
    drop(store);
    Ok(())
}

/// The step's key parts as this worker computes them; an error saying what differs when
/// they do not give the key the submitter expects.
fn key_parts_as_submitted(
    ctx: &BuildContext,
    spec: &WorkerSpec,
    step: &crate::manifest::Step,
    model_digest: &str,
) -> Result<KeyParts> {
    let parts = ctx.key_parts(step, model_digest, &|s| {
        spec.upstream.get(s).cloned().or_else(|| {
            spec.failed
                .contains_key(s)
                .then(crate::scheduler::failed_outputs)
        })
    })?;
    if parts.key() != spec.key {
        // Say what differs, as `plan` says why a step reruns.
        let mut lock = Lock::default();
        lock.steps.insert(
            spec.step.clone(),
            LockEntry {
                key: spec.key.clone(),
                parts: spec.parts.clone(),
                outputs: Default::default(),
            },
        );
        let why = crate::scheduler::miss_reasons(&lock, &spec.step, &parts);
        return Err(Error::Step {
            step: spec.step.clone(),
            message: format!(
                "this worker computes key {} but the submitter expects {}: {}",
                &parts.key()[..12],
                &spec.key[..12],
                why.join("; ")
            ),
            hint: Some("workers need the same facebuild and toolchain lock as the submitter; machine-specific parts (TensorRT, GPU, ISA) must be declared by a GPU class (docs/distributed.md)".into()),
        });
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::validate::testing::{Mutator, stays_inside};

    fn spec() -> WorkerSpec {
        let parts = KeyParts {
            kind: "check".into(),
            impl_version: 1,
            params: serde_json::json!({}),
            inputs: Default::default(),
            toolchain: Default::default(),
        };
        let blob = BlobRef {
            digest: "c".repeat(64),
            size: 3,
        };
        WorkerSpec {
            format: SPEC_FORMAT.into(),
            pipeline: "p".into(),
            manifest_name: "p.yaml".into(),
            manifest_text: "schema: 1\n".into(),
            toolchain_lock: Some(("p.toolchain.lock".into(), String::new())),
            step: "check".into(),
            key: parts.key(),
            parts,
            inputs: vec![SpecInput {
                path: "faces".into(),
                dir: true,
                files: vec![("a/1.jpg".into(), blob.clone())],
            }],
            upstream: [(
                "simplify".to_string(),
                [("model.onnx".to_string(), blob)].into(),
            )]
            .into(),
            failed: Default::default(),
            submitted_from: "ci".into(),
        }
    }

    /// Specs come from the remote: mutated fields and damaged bytes never panic the reader,
    /// and a spec it accepts names nothing outside the job's folder.
    #[test]
    fn fuzzed_specs_never_panic_or_escape() {
        assert_eq!(spec().validate(), Ok(()));
        let good = serde_json::to_value(spec()).unwrap();
        let mut m = Mutator::new(0xfeed_beef);
        let (mut cases, mut panics, mut escapes, mut accepted) = (0, 0, 0, 0);
        for i in 0..3000 {
            let mut v = good.clone();
            for _ in 0..=m.below(3) {
                v = m.mutate(&v);
            }
            let mut bytes = serde_json::to_vec(&v).unwrap();
            if i % 5 == 4 {
                bytes = m.damage(&bytes);
            }
            cases += 1;
            let r = std::panic::catch_unwind(|| {
                let s: WorkerSpec = serde_json::from_slice(&bytes).ok()?;
                s.validate().ok().map(|()| s)
            });
            match r {
                Err(_) => panics += 1,
                Ok(Some(s)) => {
                    accepted += 1;
                    let rel_ok = s.inputs.iter().all(|i| {
                        !i.dir
                            || i.files.iter().all(|(r, _)| {
                                Utf8Path::new(r)
                                    .components()
                                    .all(|c| matches!(c, camino::Utf8Component::Normal(_)))
                            })
                    });
                    let names = std::iter::once(s.manifest_name.as_str())
                        .chain(s.toolchain_lock.iter().map(|(n, _)| n.as_str()))
                        .chain(
                            s.upstream
                                .values()
                                .flat_map(|o| o.keys().map(String::as_str)),
                        );
                    if !rel_ok || !names.into_iter().all(stays_inside) {
                        escapes += 1;
                    }
                }
                Ok(None) => {}
            }
        }
        eprintln!(
            "fuzz specs: {cases} cases, {accepted} accepted, {panics} panics, {escapes} escapes"
        );
        assert_eq!((panics, escapes), (0, 0));
        assert!(accepted > 0 && accepted < cases);
    }
}
