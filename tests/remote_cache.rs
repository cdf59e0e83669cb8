//! The remote cache on real servers: nginx (HTTP with WebDAV PUT) and s3s-fs (S3 with SigV4).
//! "Two CI machines": machine A builds and uploads; machine B, in another folder with an empty
//! cache, another hostname (under `unshare --uts` where it works) and, over HTTP, its own
//! toolchain folder, gets every step from the remote. Then the faults: a corrupt blob, a
//! server that stops, read-only mode, altered or foreign-signed records, wrong credentials.

mod common;
use common::servers::{Nginx, S3, S3_SECRET, files_under};
use common::*;

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// How one facebuild process runs: where, with which toolchain folder, env and hostname.
struct Machine<'a> {
    project: &'a Project,
    toolchains: PathBuf,
    env: Vec<(String, String)>,
    hostname: Option<&'a str>,
}

impl<'a> Machine<'a> {
    fn new(project: &'a Project) -> Machine<'a> {
        Machine {
            project,
            toolchains: toolchain_dir(),
            env: Vec::new(),
            hostname: None,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let exe = assert_cmd::cargo::cargo_bin("facebuild");
        let mut c = match self.hostname {
            Some(h) if unshare_works() => {
                let mut c = Command::new("unshare");
                c.args(["--uts", "sh", "-c"])
                    .arg(format!("hostname {h} && exec \"$0\" \"$@\""))
                    .arg(exe);
                c
            }
            _ => Command::new(exe),
        };
        c.args(args)
            .current_dir(self.project.dir.path())
            .env("FACEBUILD_CACHE", self.project.path("cache"))
            .env("FACEBUILD_TOOLCHAIN_DIR", &self.toolchains)
            .env_remove("FACEBUILD_LOG")
            .env_remove("FACEBUILD_REMOTE")
            .env_remove("FACEBUILD_REMOTE_SIGNING_KEY")
            .env_remove("FACEBUILD_REMOTE_TRUSTED_KEYS")
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// `facebuild run FILE --json ARGS` -> (exit code, report, stderr).
    fn run(&self, file: &str, args: &[&str]) -> (i32, RunReport, String) {
        let mut all = vec!["run", file, "--json"];
        all.extend_from_slice(args);
        let out = self.command(&all).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!stderr.contains("panicked"), "panicked:\n{stderr}");
        let r: RunReport = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no JSON report ({e}); stderr:\n{stderr}"));
        (out.status.code().unwrap_or(-1), r, stderr)
    }
}

/// Whether this process may make a UTS namespace (root, or a kernel that allows it).
fn unshare_works() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        Command::new("unshare")
            .args(["--uts", "sh", "-c", "hostname fb-probe"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The default pipeline; the cache is the subject here, not the benchmark's figures.
fn default_manifest() -> String {
    default_pipeline_short_benchmark()
}

/// A small pipeline on the built-in model: check, simplify, an FP32 IR.
fn small_manifest() -> String {
    builtin_manifest(indoc! {"
        check: {kind: check}
        simplify: {kind: simplify, needs: [check], params: {samples: 2}}
        openvino_fp32: {kind: convert, from: simplify, params: {backend: openvino, precision: fp32}}
    "})
}

/// Every output digest of a run, by step and output name.
fn digests(r: &RunReport) -> Vec<(String, String, String)> {
    r.steps
        .iter()
        .flat_map(|s| {
            s.outputs
                .iter()
                .map(|(k, o)| (s.step.clone(), k.clone(), o.digest.clone()))
        })
        .collect()
}

/// Every step of B that can run here came from the remote, and nothing was built.
fn all_remote_hits(r: &RunReport) {
    for s in &r.steps {
        if s.status == Status::Unavailable {
            continue;
        }
        assert_eq!(
            (s.status, s.cache),
            (Status::Cached, Some(facebuild::Origin::Remote)),
            "step `{}` should be a remote hit: {s:#?}",
            s.step
        );
    }
    assert!(r.steps.iter().all(|s| s.status != Status::Built));
}

/// Machine A: a new project with `manifest` as `file`, built, released and uploaded to `url`.
fn built_on_a(file: &str, manifest: &str, url: &str) -> (Project, RunReport) {
    let a = Project::new();
    a.write(file, manifest);
    let (code, ra, err) = Machine::new(&a).run(file, &["--remote", url]);
    assert_eq!(code, 0, "{err}");
    released(a.dir.path(), code, &ra);
    (a, ra)
}

/// B's run of the default pipeline: released, every step a remote hit.
fn same_outcome_as_a(b: &Project, code: i32, rb: &RunReport, err: &str) {
    assert_eq!(code, 0, "{err}");
    released(b.dir.path(), code, rb);
    all_remote_hits(rb);
}

/// A new machine runs the small pipeline against `url`: exit 0, every step a remote hit,
/// nothing refused. Returns its stderr.
fn clean_hits_on_a_new_machine(url: &str) -> String {
    let p = Project::new();
    p.write("s.yaml", &small_manifest());
    let (code, r, err) = Machine::new(&p).run("s.yaml", &["--remote", url]);
    assert_eq!(code, 0, "{err}");
    all_remote_hits(&r);
    assert!(r.remote.as_ref().unwrap().refused.is_empty(), "{err}");
    err
}

/// Machine A builds the default pipeline and uploads to nginx; machine B (another folder,
/// empty cache, its own toolchain folder, another hostname) gets every step from the remote.
/// With `--materialize none` it downloads no blob at all (nginx's access log has no GET
/// under cas/); materialized, every output is A's, digest for digest.
#[test]
fn two_ci_machines_share_an_http_cache() {
    let Some(nginx) = Nginx::start() else { return };
    let url = nginx.url();
    let (a, ra) = built_on_a("pipelines/recognition.yaml", &default_manifest(), &url);
    let rem = ra.remote.clone().expect("the remote is reported");
    assert_eq!(rem.status, "ok", "{rem:#?}");
    let built = ra
        .steps
        .iter()
        .filter(|s| s.status == Status::Built)
        .count();
    assert_eq!(rem.records_uploaded as usize, built, "{rem:#?}");
    assert!(rem.blobs_uploaded > 0 && rem.upload_failures.is_empty());

    let b = Project::new();
    b.write("pipelines/recognition.yaml", &default_manifest());
    let mut mb = Machine::new(&b);
    mb.toolchains = b.path("toolchains");
    mb.hostname = Some("fb-machine-b");
    let before = nginx.requests().len();
    let (code, rb, err) = mb.run(
        "pipelines/recognition.yaml",
        &["--remote", &url, "--materialize", "none"],
    );
    same_outcome_as_a(&b, code, &rb, &err);
    // Lazy: no blob fetched.
    let gets: Vec<String> = nginx.requests()[before..]
        .iter()
        .filter(|r| r.starts_with("GET /cache/cas/"))
        .cloned()
        .collect();
    assert!(gets.is_empty(), "lazy: no blob fetched, got {gets:?}");
    assert_eq!(rb.remote.as_ref().unwrap().blobs_downloaded, 0);

    // Materialized: every output fetched, verified, and identical to A's.
    let (code, rb, err) = mb.run("pipelines/recognition.yaml", &["--remote", &url]);
    same_outcome_as_a(&b, code, &rb, &err);
    assert_eq!(digests(&ra), digests(&rb));
    for s in rb.steps.iter().filter(|s| s.status == Status::Cached) {
        for o in s.outputs.values() {
            let bytes = std::fs::read(b.dir.path().join(&o.path)).unwrap();
            assert_eq!(blake3::hash(&bytes).to_hex().to_string(), o.digest);
        }
    }
    // The cached release recreated B's release folder from the cache, byte for byte, and
    // made it current.
    let release = |p: &Project| {
        let dir = p.path("releases/recognition/current");
        let sums = std::fs::read_to_string(dir.join("SHA256SUMS"))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let files: Vec<String> = files_under(&dir);
        (sums, files)
    };
    assert_eq!(release(&a), release(&b));
    assert!(err.contains("restored release"), "{err}");
}

/// The same over S3 (s3s-fs, SigV4-checked), credentials from the standard AWS variables.
#[test]
fn two_ci_machines_share_an_s3_cache() {
    let Some(s3) = S3::start() else { return };
    let a = Project::new();
    a.write("pipelines/recognition.yaml", &default_manifest());
    let mut ma = Machine::new(&a);
    ma.env = s3.env(S3_SECRET);
    let (code, ra, err) = ma.run("pipelines/recognition.yaml", &["--remote", &s3.url()]);
    assert_eq!(code, 0, "{err}");
    released(a.dir.path(), code, &ra);
    assert_eq!(ra.remote.as_ref().unwrap().status, "ok", "{:#?}", ra.remote);
    assert!(!files_under(&s3.root()).is_empty());

    let b = Project::new();
    b.write("pipelines/recognition.yaml", &default_manifest());
    let mut mb = Machine::new(&b);
    mb.env = s3.env(S3_SECRET);
    mb.hostname = Some("fb-machine-b");
    let (code, rb, err) = mb.run(
        "pipelines/recognition.yaml",
        &["--remote", &s3.url(), "--materialize", "none"],
    );
    same_outcome_as_a(&b, code, &rb, &err);
    assert_eq!(rb.remote.as_ref().unwrap().blobs_downloaded, 0);
    let (code, rb, err) = mb.run("pipelines/recognition.yaml", &["--remote", &s3.url()]);
    same_outcome_as_a(&b, code, &rb, &err);
    assert_eq!(digests(&ra), digests(&rb));

    // Wrong credentials: one clear warning naming the remote; the run goes on locally.
    let c = Project::new();
    c.write("s.yaml", &small_manifest());
    let mut mc = Machine::new(&c);
    mc.env = s3.env("not-the-secret");
    let (code, rc, err) = mc.run("s.yaml", &["--remote", &s3.url()]);
    assert_eq!(code, 0, "{err}");
    let st = &rc.remote.as_ref().unwrap().status;
    assert!(st.starts_with("unavailable ("), "{st}");
    assert!(
        err.contains("remote cache s3://fbcache/cache is unavailable"),
        "{err}"
    );
    assert!(!err.contains("not-the-secret") && !st.contains("not-the-secret"));
    assert_eq!(
        err.matches("is unavailable").count(),
        1,
        "one warning:\n{err}"
    );
}

/// A blob corrupted on the server is detected by its digest, never materialized, and its
/// step is rebuilt locally (to the same digest); read-only mode writes nothing.
#[test]
fn corrupt_blobs_are_refused_and_read_only_writes_nothing() {
    let Some(nginx) = Nginx::start() else { return };
    let url = nginx.url();
    let (_a, ra) = built_on_a("s.yaml", &small_manifest(), &url);
    let simplify = ra.steps.iter().find(|s| s.step == "simplify").unwrap();
    let digest = simplify.outputs["model.onnx"].digest.clone();
    let blob = nginx.root().join("cas").join(&digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();

    let b = Project::new();
    b.write("s.yaml", &small_manifest());
    let (code, rb, err) = Machine::new(&b).run("s.yaml", &["--remote", &url]);
    assert_eq!(code, 0, "{err}");
    let s = rb.steps.iter().find(|s| s.step == "simplify").unwrap();
    assert_eq!(s.status, Status::Built, "rebuilt locally: {s:#?}");
    assert_eq!(s.outputs["model.onnx"].digest, digest);
    let local = std::fs::read(b.dir.path().join(&s.outputs["model.onnx"].path)).unwrap();
    assert_eq!(blake3::hash(&local).to_hex().to_string(), digest);
    let rem = rb.remote.as_ref().unwrap();
    assert!(
        rem.refused
            .iter()
            .any(|r| r.contains(&digest) && r.contains("corrupt")),
        "{rem:#?}"
    );
    assert!(err.contains("corrupt, refused"), "{err}");
    // B healed the remote: the step's record and every blob of it were written again,
    // whatever HEAD said, so the server holds the right bytes now.
    assert!(rem.healed >= 2, "record and blobs re-PUT: {rem:#?}");
    let healed = std::fs::read(&blob).unwrap();
    assert_eq!(blake3::hash(&healed).to_hex().to_string(), digest);
    // A third machine gets a clean remote hit, with no warning.
    let err = clean_hits_on_a_new_machine(&url);
    assert!(
        !err.contains("refused") && !err.contains("corrupt"),
        "{err}"
    );

    // Read-only: a build with nothing on this prefix uploads nothing.
    let c = Project::new();
    c.write("s.yaml", &small_manifest());
    let before = nginx.requests().len();
    let ro = format!("http://127.0.0.1:{}/readonly", nginx.port);
    let (code, rc, err) = Machine::new(&c).run("s.yaml", &["--remote", &ro, "--remote-read-only"]);
    assert_eq!(code, 0, "{err}");
    assert!(rc.steps.iter().all(|s| s.status == Status::Built));
    let writes: Vec<String> = nginx.requests()[before..]
        .iter()
        .filter(|r| !r.starts_with("GET ") && !r.starts_with("HEAD "))
        .cloned()
        .collect();
    assert!(writes.is_empty(), "read-only wrote: {writes:?}");
    assert!(!nginx.dir.path().join("www/readonly").exists());
    assert_eq!(rc.remote.as_ref().unwrap().mode, "read-only");
}

/// Rewrite the record of `key` on the server: its record JSON goes through `edit`. The
/// envelope stays unsigned, as records are where no keys are configured (the default).
fn poison_record(nginx: &Nginx, key: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = nginx.root().join("ac").join(format!("{key}.json"));
    let mut env: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut rec: serde_json::Value = serde_json::from_str(env["record"].as_str().unwrap()).unwrap();
    edit(&mut rec);
    env["record"] = rec.to_string().into();
    std::fs::write(&path, serde_json::to_vec(&env).unwrap()).unwrap();
}

/// Rename one output of a record (the JSON of an action record).
fn rename_output(rec: &mut serde_json::Value, from: &str, to: &str) {
    let outputs = rec["outputs"].as_object_mut().unwrap();
    let blob = outputs.remove(from).unwrap();
    outputs.insert(to.to_string(), blob);
}

/// Every path under `dir` whose file name is `name`.
fn find_named(dir: &std::path::Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().contains(name) {
            out.push(p.clone());
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(find_named(&p, name));
        }
    }
    out
}

/// A record whose output names escape (`../../../escaped.xml`, an absolute path) is refused
/// as a miss naming the remote and the field, never enters the local store, and its step is
/// rebuilt with exit 0; the rebuild heals the remote. A run without the remote then
/// succeeds, and nothing exists outside the run's folders. A poisoned local record is
/// dropped and rebuilt the same way.
#[test]
fn poisoned_records_are_refused_rebuilt_and_healed() {
    let Some(nginx) = Nginx::start() else { return };
    let url = nginx.url();
    let (_a, ra) = built_on_a("s.yaml", &small_manifest(), &url);
    let key_of = |r: &RunReport, s: &str| step(r, s).key.clone().unwrap();
    let abs = std::env::temp_dir().join(format!("facebuild-abs-{}.onnx", std::process::id()));
    poison_record(&nginx, &key_of(&ra, "openvino_fp32"), |r| {
        rename_output(r, "model.xml", "../../../escaped.xml")
    });
    poison_record(&nginx, &key_of(&ra, "simplify"), |r| {
        rename_output(r, "model.onnx", abs.to_str().unwrap())
    });

    let b = Project::new();
    b.write("s.yaml", &small_manifest());
    let mb = Machine::new(&b);
    let (code, rb, err) = mb.run("s.yaml", &["--remote", &url]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status_of(&rb, "check"), Status::Cached);
    assert_eq!(status_of(&rb, "simplify"), Status::Built, "{err}");
    assert_eq!(status_of(&rb, "openvino_fp32"), Status::Built, "{err}");
    assert_eq!(digests(&ra), digests(&rb));
    let rem = rb.remote.as_ref().unwrap();
    assert_eq!(rem.refused.len(), 2, "{rem:#?}");
    assert!(
        err.contains(&format!("remote cache {url}")) && err.contains("field `outputs["),
        "the warning names the remote and the field:\n{err}"
    );
    assert!(
        err.contains("escaped.xml") && err.contains("not a plain name"),
        "{err}"
    );
    assert!(rem.healed >= 2, "both records written again: {rem:#?}");
    // Nothing outside the run's folders.
    assert!(!abs.exists(), "{} was written", abs.display());
    let parent = b.dir.path().parent().unwrap();
    assert!(find_named(b.dir.path(), "escaped").is_empty());
    assert!(!parent.join("escaped.xml").exists());
    // The local store took none of the poisoned records: a run without the remote is
    // all cached.
    let (code, rb2, err) = mb.run("s.yaml", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        rb2.steps.iter().all(|s| s.status == Status::Cached),
        "{err}"
    );
    // The healed remote serves a third machine cleanly.
    clean_hits_on_a_new_machine(&url);

    // A poisoned local record: dropped with a warning and rebuilt, exit 0, and the
    // run after it is cached again.
    let key = key_of(&rb, "openvino_fp32");
    let local = b
        .path("cache/actions")
        .join(&key[..2])
        .join(format!("{}.json", &key[2..]));
    let mut rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&local).unwrap()).unwrap();
    rename_output(&mut rec, "model.xml", "../../../escaped.xml");
    std::fs::write(&local, rec.to_string()).unwrap();
    let (code, rb3, err) = mb.run("s.yaml", &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status_of(&rb3, "openvino_fp32"), Status::Built, "{err}");
    assert!(
        err.contains("is invalid") && err.contains("rebuilt"),
        "{err}"
    );
    assert!(find_named(b.dir.path(), "escaped").is_empty());
    let (code, rb4, err) = mb.run("s.yaml", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        rb4.steps.iter().all(|s| s.status == Status::Cached),
        "{err}"
    );
    // `cache verify` reports and removes a record that fails validation.
    std::fs::write(&local, rec.to_string()).unwrap();
    let out = mb.command(&["cache", "verify", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let removed = v["invalid_records_removed"].as_array().unwrap();
    assert_eq!(removed.len(), 1, "{v}");
    assert!(removed[0].as_str().unwrap().contains("outputs["), "{v}");
    assert!(!local.exists());
}

/// Signed records: readers holding only the public key accept what the trusted writer
/// signed, and refuse a record altered on the server or signed by another key (the step is
/// then rebuilt).
#[test]
fn altered_or_foreign_records_are_refused() {
    let Some(nginx) = Nginx::start() else { return };
    let keys = |p: &Project| {
        let out = Machine::new(p)
            .command(&["cache", "keygen"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap()
                .to_string()
        };
        (
            get("FACEBUILD_REMOTE_SIGNING_KEY="),
            get("FACEBUILD_REMOTE_TRUSTED_KEYS="),
        )
    };
    let a = Project::new();
    a.write("s.yaml", &small_manifest());
    let (private, public) = keys(&a);
    let (other_private, _) = keys(&a);
    let signed = format!("http://127.0.0.1:{}/signed", nginx.port);
    let mut ma = Machine::new(&a);
    ma.env = vec![("FACEBUILD_REMOTE_SIGNING_KEY".into(), private)];
    let (code, _, err) = ma.run("s.yaml", &["--remote", &signed]);
    assert_eq!(code, 0, "{err}");
    // A reader with the public key: every step a remote hit.
    let b = Project::new();
    b.write("s.yaml", &small_manifest());
    let mut mb = Machine::new(&b);
    mb.env = vec![("FACEBUILD_REMOTE_TRUSTED_KEYS".into(), public.clone())];
    let (code, rb, err) = mb.run("s.yaml", &["--remote", &signed, "--materialize", "none"]);
    assert_eq!(code, 0, "{err}");
    all_remote_hits(&rb);

    // Alter one record on the server: its signature no longer holds.
    let ac = nginx.dir.path().join("www/signed/ac");
    let key = rb
        .steps
        .iter()
        .find(|s| s.step == "check")
        .unwrap()
        .key
        .clone()
        .unwrap();
    let path = ac.join(format!("{key}.json"));
    let text = std::fs::read_to_string(&path).unwrap();
    let altered = text.replacen("\\\"passed\\\":true", "\\\"passed\\\":false", 1);
    let altered = if altered == text {
        text.replacen("duration_ms", "duration_mz", 1)
    } else {
        altered
    };
    assert_ne!(altered, text);
    std::fs::write(&path, altered).unwrap();
    let c = Project::new();
    c.write("s.yaml", &small_manifest());
    let mut mc = Machine::new(&c);
    mc.env = vec![("FACEBUILD_REMOTE_TRUSTED_KEYS".into(), public.clone())];
    let (code, rc, err) = mc.run("s.yaml", &["--remote", &signed, "--materialize", "none"]);
    assert_eq!(code, 0, "{err}");
    let check = rc.steps.iter().find(|s| s.step == "check").unwrap();
    assert_eq!(check.status, Status::Built, "refused and rebuilt: {err}");
    assert!(err.contains("bad signature"), "{err}");

    // Records signed with another key are refused, every one.
    let foreign = format!("http://127.0.0.1:{}/foreign", nginx.port);
    let d = Project::new();
    d.write("s.yaml", &small_manifest());
    let mut md = Machine::new(&d);
    md.env = vec![("FACEBUILD_REMOTE_SIGNING_KEY".into(), other_private)];
    let (code, _, err) = md.run("s.yaml", &["--remote", &foreign]);
    assert_eq!(code, 0, "{err}");
    let e = Project::new();
    e.write("s.yaml", &small_manifest());
    let mut me = Machine::new(&e);
    me.env = vec![("FACEBUILD_REMOTE_TRUSTED_KEYS".into(), public)];
    let (code, re, err) = me.run("s.yaml", &["--remote", &foreign, "--remote-read-only"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        re.steps.iter().all(|s| s.status == Status::Built),
        "{re:#?}"
    );
    assert!(
        err.contains("not in FACEBUILD_REMOTE_TRUSTED_KEYS"),
        "{err}"
    );
}

/// A server that is down from the start, or stops mid-run: the run completes locally with
/// one warning and exit 0, and says `remote: unavailable (...)`.
#[test]
fn a_remote_that_goes_down_never_fails_the_build() {
    let Some(mut nginx) = Nginx::start() else {
        return;
    };
    let url = nginx.url();
    // Stopped mid-run: after the first step is built.
    let a = Project::new();
    a.write("s.yaml", &small_manifest());
    let mut child = Machine::new(&a)
        .command(&["run", "s.yaml", "--json", "--remote", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut lines = std::io::BufReader::new(stderr).lines();
    for _ in 0..10_000 {
        let Some(Ok(l)) = lines.next() else { break };
        let first_built = l.contains("built   check");
        seen.push(l);
        if first_built {
            nginx.stop();
            break;
        }
    }
    for l in lines.map_while(|l| l.ok()).take(10_000) {
        seen.push(l);
    }
    let out = child.wait_with_output().unwrap();
    let err = seen.join("\n");
    assert_eq!(out.status.code(), Some(0), "{err}");
    let r: RunReport = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r.ok);
    assert!(r.steps.iter().all(|s| s.status == Status::Built));
    let st = &r.remote.as_ref().unwrap().status;
    assert!(st.starts_with("unavailable ("), "{st}\n{err}");
    assert_eq!(
        err.matches("is unavailable").count(),
        1,
        "one warning:\n{err}"
    );

    // Down from the start, and required: the run fails, saying why.
    let b = Project::new();
    b.write("s.yaml", &small_manifest());
    let (code, rb, err) = Machine::new(&b).run("s.yaml", &["--remote", &url, "--remote-required"]);
    assert_eq!(code, 1, "{err}");
    assert!(!rb.ok && rb.steps.iter().all(|s| s.status == Status::Built));
    assert!(err.contains("--remote-required"), "{err}");
}

/// `cache push` seeds a remote (here a shared folder, `file://`) from a local cache, and
/// `cache gc --remote` keeps what the lockfiles reference and deletes the rest.
#[test]
fn push_seeds_a_remote_and_remote_gc_keeps_what_lockfiles_reference() {
    let shared = tempfile::tempdir().unwrap();
    let url = format!("file://{}", shared.path().display());
    let a = Project::new();
    a.write("s.yaml", &small_manifest());
    let ma = Machine::new(&a);
    let (code, ra, err) = ma.run("s.yaml", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(ra.remote.is_none(), "no remote configured");
    let out = ma
        .command(&["cache", "push", "s.lock", "--remote", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("pushed 3 step results"), "{text}");
    let ac = |p: &std::path::Path| files_under(&p.join("ac")).len();
    assert_eq!(ac(shared.path()), 3);

    let b = Project::new();
    b.write("s.yaml", &small_manifest());
    let (code, rb, err) = Machine::new(&b).run("s.yaml", &["--remote", &url]);
    assert_eq!(code, 0, "{err}");
    all_remote_hits(&rb);

    // A changed param: simplify is rebuilt and uploaded (its model is the same, so the IR
    // still hits); its old result is referenced by no lockfile any more, and gc removes it
    // with the blobs only it used.
    a.write(
        "s.yaml",
        &small_manifest().replace("samples: 2", "samples: 3"),
    );
    let (code, _, err) = ma.run("s.yaml", &["--remote", &url]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(ac(shared.path()), 4);
    let blobs_before = files_under(&shared.path().join("cas")).len();
    let out = ma
        .command(&[
            "cache",
            "gc",
            "s.lock",
            "--remote",
            &url,
            "--keep-days",
            "0",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ac(shared.path()), 3, "{text}");
    let blobs_after = files_under(&shared.path().join("cas")).len();
    assert!(blobs_after < blobs_before, "{text}");
    // What is left is exactly what the lockfile needs: a fresh machine still hits it all.
    let c = Project::new();
    c.write(
        "s.yaml",
        &small_manifest().replace("samples: 2", "samples: 3"),
    );
    let (code, rc, err) = Machine::new(&c).run("s.yaml", &["--remote", &url]);
    assert_eq!(code, 0, "{err}");
    all_remote_hits(&rc);
}

/// HTTPS: nginx on loopback with a certificate from a CA made by `openssl`. Trusted through
/// the usual CA-bundle variable (`SSL_CERT_FILE`), A uploads and a new machine gets clean
/// hits; without it the certificate is refused, the warning says so, and the run goes on
/// locally. (TLS runs on rustls with ring's provider: a client with no provider installed
/// would panic on its first connection.)
#[test]
fn https_remote_trusted_through_the_ca_bundle() {
    let Some(nginx) = Nginx::start_tls() else {
        return;
    };
    let url = nginx.url();
    assert!(url.starts_with("https://"), "{url}");
    let ca = (
        "SSL_CERT_FILE".to_string(),
        nginx.ca().display().to_string(),
    );

    let a = Project::new();
    a.write("s.yaml", &small_manifest());
    let mut ma = Machine::new(&a);
    ma.env = vec![ca.clone()];
    let (code, ra, err) = ma.run("s.yaml", &["--remote", &url]);
    assert_eq!(code, 0, "{err}");
    let rem = ra.remote.as_ref().unwrap();
    assert_eq!(rem.status, "ok", "{rem:#?}\n{err}");
    assert!(
        rem.records_uploaded > 0 && rem.upload_failures.is_empty(),
        "{rem:#?}"
    );

    let b = Project::new();
    b.write("s.yaml", &small_manifest());
    let mut mb = Machine::new(&b);
    mb.env = vec![ca];
    let (code, rb, err) = mb.run("s.yaml", &["--remote", &url]);
    assert_eq!(code, 0, "{err}");
    all_remote_hits(&rb);
    assert!(
        nginx
            .requests()
            .iter()
            .any(|r| r.starts_with("GET /cache/cas/"))
    );

    // Not trusted: the remote is unavailable, said once, and the run builds locally.
    let c = Project::new();
    c.write("s.yaml", &small_manifest());
    let (code, rc, err) = Machine::new(&c).run("s.yaml", &["--remote", &url]);
    assert_eq!(code, 0, "{err}");
    let st = &rc.remote.as_ref().unwrap().status;
    assert!(st.starts_with("unavailable ("), "{st}");
    assert!(
        err.contains(&format!("remote cache {url} is unavailable")),
        "{err}"
    );
    assert!(
        rc.steps.iter().all(|s| s.status == Status::Built),
        "{rc:#?}"
    );
}

/// A release manifest for publishing: one OpenVINO artifact, version `version`.
fn release_manifest(precision: &str, version: &str) -> String {
    format!(
        "schema: 1
name: rec
model:
  builtin: iresnet-mini
  task: recognition
  input: {{name: input.1, shape: [1, 3, 112, 112]}}
  preprocessing: {{color: RGB, mean: [127.5, 127.5, 127.5], std: [127.5, 127.5, 127.5], size: [112, 112]}}
steps:
  ov: {{kind: convert, params: {{backend: openvino, precision: {precision}}}}}
  release: {{kind: release, params: {{artifacts: [ov], version: {version}}}}}
"
    )
}

/// Runs facebuild in `p` with `env`; (exit code, stdout JSON or Null, stderr).
fn fb(p: &Project, env: &[(String, String)], args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = p
        .std_cmd()
        .args(args)
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Every file of a folder with its bytes, by relative path.
fn tree(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    files_under(dir)
        .into_iter()
        .map(|f| {
            let b = std::fs::read(dir.join(&f)).unwrap();
            (f, b)
        })
        .collect()
}

/// Machine A publishes two signed releases and moves `prod`; machine B, with its own cache
/// and only the public key, pulls `rec@prod` byte for byte, verified. A tampered blob, an
/// unsigned index and a foreign key are refused with nothing written; read-only refuses
/// publish and promote; rollback moves `prod` back and B gets the earlier version.
fn releases_travel_between_machines(url: &str, root: &std::path::Path, env: Vec<(String, String)>) {
    let a = Project::new();
    let (c, _, err) = fb(&a, &env, &["release", "keygen", "--out", "keys"]);
    assert_eq!(c, 0, "{err}");
    fb(&a, &env, &["release", "keygen", "--out", "other"]);
    let mut env_a = env.clone();
    env_a.push((
        "FACEBUILD_RELEASE_SIGNING_KEY".into(),
        a.path("keys/release-signing.pem").display().to_string(),
    ));
    let build = |precision: &str, version: &str| {
        a.write("m.yaml", &release_manifest(precision, version));
        let (c, _, err) = fb(&a, &env_a, &["run", "m.yaml"]);
        assert_eq!(c, 0, "{err}");
    };
    let publish = |r: &str, extra: &[&str]| {
        let mut args = vec!["release", "publish", r, "--remote", url, "--json"];
        args.extend_from_slice(extra);
        fb(&a, &env_a, &args)
    };
    build("fp16", "v1");
    let (c, first, err) = publish("rec@v1", &[]);
    assert_eq!(c, 0, "{err}");
    assert!(first["blobs_uploaded"].as_u64().unwrap() > 0, "{first:#}");
    // Published again: every blob is already there, nothing is sent.
    let (c, again, err) = publish("rec", &[]);
    assert_eq!(c, 0, "{err}");
    assert_eq!(again["blobs_uploaded"], 0, "{again:#}");
    assert_eq!(again["already_published"], true);
    let promote = |r: &str, extra: &[&str]| {
        let mut args = vec![
            "release",
            "promote",
            r,
            "--channel",
            "prod",
            "--remote",
            url,
        ];
        args.extend_from_slice(extra);
        fb(&a, &env_a, &args)
    };
    let (c, _, err) = promote("rec@v1", &[]);
    assert_eq!(c, 0, "{err}");
    build("fp32", "v2");
    // Read-only refuses publish and promote, and writes nothing.
    let index = root.join("releases/rec/index.json");
    let before = std::fs::read(&index).unwrap();
    let (c, _, err) = publish("rec@v2", &["--remote-read-only"]);
    assert_ne!(c, 0);
    assert!(err.contains("read-only"), "{err}");
    let (c, _, err) = promote("rec@v1", &["--remote-read-only"]);
    assert!(c != 0 && err.contains("read-only"), "{err}");
    assert_eq!(std::fs::read(&index).unwrap(), before);
    let (c, _, err) = publish("rec@v2", &[]);
    assert_eq!(c, 0, "{err}");
    let (c, _, err) = promote("rec@v2", &[]);
    assert_eq!(c, 0, "{err}");

    // Machine B: its own folder and cache, the public key only.
    let b = Project::new();
    let public = a.path("keys/release-signing.pub.pem");
    let pull = |r: &str, to: &str, key: &std::path::Path| {
        let to = b.path(to);
        let (c, j, err) = fb(
            &b,
            &env,
            &[
                "release",
                "pull",
                r,
                "--to",
                to.to_str().unwrap(),
                "--public-key",
                key.to_str().unwrap(),
                "--remote",
                url,
                "--json",
            ],
        );
        (c, j, err, to)
    };
    let (c, got, err, deploy) = pull("rec@prod", "deploy/rec", &public);
    assert_eq!(c, 0, "{err}");
    assert_eq!(got["version"], "v2", "{got:#}");
    assert_eq!(tree(&deploy), tree(&a.path("releases/rec/v2")));
    let (c, _, err) = fb(
        &b,
        &env,
        &[
            "release",
            "verify",
            deploy.to_str().unwrap(),
            "--public-key",
            public.to_str().unwrap(),
        ],
    );
    assert_eq!(c, 0, "{err}");

    // A foreign key, an unsigned index, a tampered blob: refused, nothing written.
    let (c, _, err, to) = pull(
        "rec@prod",
        "foreign",
        &a.path("other/release-signing.pub.pem"),
    );
    assert!(c != 0 && err.contains("no trusted key signed it"), "{err}");
    assert!(!to.exists());
    let signed = std::fs::read(&index).unwrap();
    let mut env_json: serde_json::Value = serde_json::from_slice(&signed).unwrap();
    env_json["signatures"] = serde_json::json!([]);
    std::fs::write(&index, serde_json::to_vec(&env_json).unwrap()).unwrap();
    let (c, _, err, to) = pull("rec@prod", "unsigned", &public);
    assert!(c != 0 && err.contains("unsigned"), "{err}");
    assert!(!to.exists());
    std::fs::write(&index, &signed).unwrap();
    let bin = a.path("releases/rec/v2/ov/model.bin");
    let digest = blake3::hash(&std::fs::read(&bin).unwrap())
        .to_hex()
        .to_string();
    let blob = root.join("cas").join(&digest);
    let good = std::fs::read(&blob).unwrap();
    let mut bad = good.clone();
    bad[100] ^= 0xff;
    std::fs::write(&blob, &bad).unwrap();
    let c_proj = Project::new();
    let to = c_proj.path("tampered");
    let (c, _, err) = fb(
        &c_proj,
        &env,
        &[
            "release",
            "pull",
            "rec@v2",
            "--to",
            to.to_str().unwrap(),
            "--public-key",
            public.to_str().unwrap(),
            "--remote",
            url,
        ],
    );
    assert!(
        c != 0 && err.contains(&digest) && err.contains("corrupt"),
        "{err}"
    );
    assert!(!to.exists());
    std::fs::write(&blob, &good).unwrap();

    // Rollback moves prod back; B's next pull gets v1, byte for byte.
    let (c, moved, err) = fb(
        &a,
        &env_a,
        &[
            "release",
            "rollback",
            "rec",
            "--channel",
            "prod",
            "--remote",
            url,
            "--json",
        ],
    );
    assert_eq!(c, 0, "{err}");
    assert_eq!(moved["current"], "v1", "{moved:#}");
    assert_eq!(moved["history"].as_array().unwrap().len(), 3, "{moved:#}");
    let (c, got, err, deploy) = pull("rec@prod", "deploy/rec", &public);
    assert_eq!(c, 0, "{err}");
    assert_eq!(got["version"], "v1");
    assert_eq!(tree(&deploy), tree(&a.path("releases/rec/v1")));
}

#[test]
fn releases_publish_promote_pull_and_roll_back_over_http() {
    let Some(nginx) = Nginx::start() else { return };
    releases_travel_between_machines(&nginx.url(), &nginx.root(), vec![]);
}

#[test]
fn releases_publish_promote_pull_and_roll_back_over_s3() {
    let Some(s3) = S3::start() else { return };
    releases_travel_between_machines(&s3.url(), &s3.root(), s3.env(S3_SECRET));
}

#[test]
fn releases_publish_promote_pull_and_roll_back_over_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    releases_travel_between_machines(&url, dir.path(), vec![]);
}
