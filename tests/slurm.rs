//! Distributed execution on a real one-node Slurm cluster (munged, slurmctld and slurmd on
//! 127.0.0.1, started by each test) with a real remote cache (nginx with WebDAV PUT) between
//! the submitter and the jobs. Jobs run in their own empty folder with their own cache, so
//! nothing reaches them but through the remote. Tests take one cluster at a time.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::servers::Nginx;
use common::slurm::Cluster;
use common::*;

/// One cluster at a time: each binds its own ports, but they share the node's CPUs.
static CLUSTER: Mutex<()> = Mutex::new(());

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/trtexec-standin"
);

/// Everything a test needs: the cluster, the remote, and a project whose facebuild talks
/// to both.
struct Setup {
    _guard: std::sync::MutexGuard<'static, ()>,
    cluster: Cluster,
    nginx: Nginx,
    p: Project,
}

fn setup() -> Option<Setup> {
    let guard = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start()?;
    let nginx = Nginx::start()?;
    let p = Project::new();
    // The node's facebuild: the same binary (workers run the submitter's version).
    let bin = assert_cmd::cargo::cargo_bin("facebuild");
    let node = cluster.dir.path().join("node-facebuild");
    std::fs::write(
        &node,
        format!("#!/bin/sh\nexec '{}' \"$@\"\n", bin.display()),
    )
    .unwrap();
    chmod_x(&node);
    Some(Setup {
        _guard: guard,
        cluster,
        nginx,
        p,
    })
}

fn chmod_x(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

impl Setup {
    /// facebuild in the project, pointed at the cluster and the remote.
    fn facebuild(&self, args: &[&str]) -> std::process::Command {
        let mut c = self.p.std_cmd();
        c.args(args)
            .env("SLURM_CONF", &self.cluster.conf)
            .env(
                "FACEBUILD_WORKER_BIN",
                self.cluster.dir.path().join("node-facebuild"),
            )
            .env("FACEBUILD_SLURM_POLL_MAX_MS", "500")
            .env("FACEBUILD_REMOTE", self.nginx.url())
            .stdin(Stdio::null());
        c
    }

    /// Run to the end (at most `limit`), returning (exit code, report or None, stderr).
    fn run(&self, args: &[&str], limit: Duration) -> (i32, Option<RunReport>, String) {
        self.run_adjusted(args, limit, |_| {})
    }

    /// [`Setup::run`] of a `--json` run, its command adjusted (environment) by `adjust`:
    /// (exit code, report, stderr). No report is a failure that shows stderr.
    fn run_report(
        &self,
        args: &[&str],
        limit: Duration,
        adjust: impl FnOnce(&mut std::process::Command),
    ) -> (i32, RunReport, String) {
        let (code, report, err) = self.run_adjusted(args, limit, adjust);
        let report = report.unwrap_or_else(|| panic!("no JSON report; stderr:\n{err}"));
        (code, report, err)
    }

    fn run_adjusted(
        &self,
        args: &[&str],
        limit: Duration,
        adjust: impl FnOnce(&mut std::process::Command),
    ) -> (i32, Option<RunReport>, String) {
        let mut c = self.facebuild(args);
        adjust(&mut c);
        let child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = wait_bounded(child, limit);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !stderr.contains("panicked"),
            "facebuild panicked:\n{stderr}"
        );
        (
            out.status.code().unwrap_or(-1),
            serde_json::from_slice(&out.stdout).ok(),
            stderr,
        )
    }

    /// Every job id the controller knows of.
    fn jobs(&self) -> Vec<String> {
        let out = self
            .cluster
            .command("squeue")
            .args(["-h", "-t", "all", "-o", "%i"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    fn scontrol(&self, id: &str) -> String {
        let out = self
            .cluster
            .command("scontrol")
            .args(["show", "job", "-o", id])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Wait for a child at most `limit`; past it, kill it and fail: nothing may hang.
fn wait_bounded(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let t0 = Instant::now();
    // Drain the pipes while waiting, so a chatty child never blocks on a full pipe.
    let take = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    };
    let out = take(child.stdout.take().map(|r| Box::new(r) as _));
    let err = take(child.stderr.take().map(|r| Box::new(r) as _));
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let e = err.join().unwrap_or_default();
            panic!(
                "facebuild did not finish within {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&e)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// A folder dataset of aligned-size crops, a folder per identity (written with `image`).
fn write_faces(dir: &Path) {
    for id in 0..4u32 {
        for k in 0..3u32 {
            let img = image::RgbImage::from_fn(112, 112, |x, y| {
                let v = (x * (id + 3) + y * (k + 5) + id * 40) % 256;
                image::Rgb([v as u8, ((v + 85 * id) % 256) as u8, ((x + y) % 256) as u8])
            });
            let p = dir.join(format!("person{id}/{k}.png"));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            img.save(&p).unwrap();
        }
    }
}

/// The pipeline: `simplify` on the node with the `h100sim` Feature, `compare` on any node,
/// the rest here. Its model and its dataset are files of the project.
fn pipeline(workdir: &Path) -> String {
    let w = workdir.display();
    format!(
        "{}{}",
        indoc! {"
            schema: 1
            name: dist
            model:
              path: model.onnx
              task: recognition
              input: {name: input.1, layout: NCHW, shape: [1, 3, 112, 112]}
              preprocessing: {size: [112, 112]}
            datasets:
              faces: {path: faces}
        "},
        format!(
            "steps:\n  check: {{kind: check}}\n  simplify:\n    kind: simplify\n    needs: [check]\n    runs_on: {{executor: slurm, constraint: h100sim, time: \"00:10:00\", workdir: {w}}}\n    params: {{tool: onnxsim, samples: 4, cosine_min: 0.9999}}\n  openvino_fp32:\n    kind: convert\n    from: simplify\n    params: {{backend: openvino, precision: fp32}}\n  compare:\n    kind: compare\n    runs_on: {{executor: slurm, workdir: {w}}}\n    params: {{dataset: faces, candidates: [openvino_fp32], batch: 4, cosine_min: 0.99}}\n"
        )
    )
}

fn write_project(s: &Setup) {
    let out =
        s.p.cmd()
            .args(["builtin", "iresnet-mini", "-o", "model.onnx"])
            .output()
            .unwrap();
    assert!(out.status.success());
    write_faces(&s.p.path("faces"));
    s.p.write("p.yaml", &pipeline(&s.cluster.workdir));
}

/// Two steps run as Slurm jobs (one constrained to a Feature), the rest here; every output
/// digest equals an all-local run's; the records carry the job ids; a rerun submits nothing.
#[test]
fn slurm_steps_match_an_all_local_run_and_a_rerun_submits_nothing() {
    let Some(s) = setup() else { return };
    write_project(&s);
    let limit = Duration::from_secs(600);

    // All here, in a cache of its own, without the remote.
    let (code, all_local, err) = s.run_report(
        &["run", "p.yaml", "--json", "--executor", "local"],
        limit,
        |c| {
            c.env("FACEBUILD_CACHE", s.p.path("cache-local"))
                .env_remove("FACEBUILD_REMOTE");
        },
    );
    assert_eq!(code, 0, "{err}");
    assert!(all_local.steps.iter().all(|r| r.ran_on.is_none()));
    assert_eq!(s.jobs().len(), 0, "--executor local submitted jobs");

    let (code, report, err) = s.run(&["run", "p.yaml", "--json"], limit);
    assert_eq!(code, 0, "{err}\n{}", s.cluster.log());
    let r = report.unwrap();
    for (x, y) in r.steps.iter().zip(&all_local.steps) {
        assert_eq!(x.status, Status::Built, "{}: {:?}", x.step, x.error);
        assert_eq!(x.key, y.key, "step `{}`: keys differ", x.step);
        assert_eq!(x.outputs.len(), y.outputs.len());
        for (name, o) in &x.outputs {
            assert_eq!(
                o.digest, y.outputs[name].digest,
                "{}/{name}: Slurm and local outputs differ",
                x.step
            );
        }
    }
    let mut ids = Vec::new();
    for name in ["simplify", "compare"] {
        let ran = step(&r, name)
            .ran_on
            .clone()
            .unwrap_or_else(|| panic!("`{name}` did not run on Slurm"));
        assert_eq!(ran.executor, "slurm");
        let job = s.scontrol(&ran.job_id);
        assert!(job.contains("JobState=COMPLETED"), "{job}");
        assert!(
            job.contains(&format!("JobName=facebuild:dist:{name}:")),
            "{job}"
        );
        assert!(
            job.contains(&format!("WorkDir={}", s.cluster.workdir.display())),
            "{job}"
        );
        if name == "simplify" {
            assert!(job.contains("Features=h100sim"), "{job}");
        }
        // The job's log is the step's, and shows it worked in a folder of its own.
        let log =
            std::fs::read_to_string(s.p.path(&format!("out/dist/{name}/slurm-{}.log", ran.job_id)))
                .unwrap();
        assert!(
            log.contains(&format!(
                "in {}/facebuild-job-{}",
                s.cluster.workdir.display(),
                ran.job_id
            )),
            "{log}"
        );
        assert!(log.contains("exec-step: exit code 0"), "{log}");
        ids.push(ran.job_id);
    }
    assert_ne!(ids[0], ids[1]);
    let html = std::fs::read_to_string(s.p.path("out/dist/report.html")).unwrap();
    for id in &ids {
        assert!(
            html.contains(&format!("slurm job {id} on ")),
            "the HTML report misses job {id}"
        );
    }
    for name in ["check", "openvino_fp32"] {
        assert!(step(&r, name).ran_on.is_none(), "`{name}` should run here");
    }
    // The remote's records carry the job ids.
    let ac = s.nginx.root().join("ac");
    let records: String = std::fs::read_dir(&ac)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    for id in &ids {
        assert!(
            records.contains(&format!("\\\"job_id\\\":\\\"{id}\\\"")),
            "no record names job {id}"
        );
    }
    // Nothing is left in the jobs' folder: each job removed its folder and, with its log
    // on the remote, Slurm's output file.
    let left: Vec<_> = std::fs::read_dir(&s.cluster.workdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("facebuild-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // A rerun: every step cached, no job submitted.
    let before = s.jobs();
    let rerun = |args: &[&str]| {
        let (code, r, err) = s.run_report(args, limit, |_| {});
        assert_eq!(code, 0, "{err}");
        assert!(
            r.steps.iter().all(|x| x.status == Status::Cached),
            "{:?}",
            statuses(&r)
        );
        assert_eq!(s.jobs(), before, "the rerun submitted jobs");
        r
    };
    rerun(&["run", "p.yaml", "--json"]);
    // Even with an empty local cache, the remote answers: still nothing submitted.
    std::fs::remove_dir_all(s.p.path("cache/actions")).unwrap();
    let r = rerun(&["run", "p.yaml", "--json", "--materialize", "none"]);
    assert_eq!(
        step(&r, "compare").ran_on.as_ref().map(|x| &x.job_id),
        Some(&ids[1])
    );
}

impl Setup {
    /// Hold the node with a job of its own, so facebuild's jobs wait in the queue.
    fn block_node(&self) -> String {
        let out = self
            .cluster
            .command("sbatch")
            .args([
                "--parsable",
                "--exclusive",
                "--job-name=blocker",
                "--chdir=/tmp",
                "--output=/dev/null",
                "--wrap",
                "sleep 300",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The id of facebuild's queued job for `step` (waiting at most 120 s for it).
    fn queued_job(&self, step: &str) -> String {
        let t0 = Instant::now();
        loop {
            let out = self
                .cluster
                .command("squeue")
                .args(["-h", "-o", "%i|%j"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if let Some(id) = text
                .lines()
                .find(|l| l.contains(&format!("facebuild:dist:{step}:")))
                .and_then(|l| l.split('|').next())
            {
                return id.to_string();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "no facebuild job appeared: {text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A job cancelled with `scancel` is a failed step that says so.
#[test]
fn a_cancelled_job_is_a_failed_step_with_its_reason() {
    let Some(s) = setup() else { return };
    write_project(&s);
    let blocker = s.block_node();
    let child = s
        .facebuild(&["run", "p.yaml", "--json", "--target", "simplify"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = s.queued_job("simplify");
    let out = s.cluster.command("scancel").arg(&id).output().unwrap();
    assert!(out.status.success());
    let out = wait_bounded(child, Duration::from_secs(120));
    let _ = s.cluster.command("scancel").arg(&blocker).output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let r: RunReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status_of(&r, "simplify"), Status::Failed);
    let e = error_of(&r, "simplify");
    assert!(
        e.contains(&format!("Slurm job {id} CANCELLED was cancelled")),
        "{e}"
    );
    assert!(e.contains("the job never started facebuild"), "{e}");
    assert_eq!(status_of(&r, "check"), Status::Built);
}

/// SIGTERM (as a CI runner sends when a job is cancelled) cancels the jobs facebuild
/// submitted: none is left in the queue.
#[test]
fn sigterm_cancels_the_submitted_jobs() {
    let Some(s) = setup() else { return };
    write_project(&s);
    let blocker = s.block_node();
    let child = s
        .facebuild(&["run", "p.yaml", "--target", "simplify"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = s.queued_job("simplify");
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = wait_bounded(child, Duration::from_secs(120));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains(&format!("scancel job {id}")), "{err}");
    let job = s.scontrol(&id);
    let _ = s.cluster.command("scancel").arg(&blocker).output();
    assert!(job.contains("JobState=CANCELLED"), "{job}");
}

/// Errors before anything runs: an unknown Feature (sbatch's own message), an unknown
/// class (located in the manifest), a Slurm step without a remote.
#[test]
fn unknown_constraints_and_classes_and_missing_remotes_are_clear_errors() {
    let Some(s) = setup() else { return };
    write_project(&s);
    let text = pipeline(&s.cluster.workdir).replace("constraint: h100sim", "constraint: nosuch");
    s.p.write("p.yaml", &text);
    let (code, report, err) = s.run(&["run", "p.yaml", "--json"], Duration::from_secs(300));
    assert_eq!(code, 1, "{err}");
    let e = error_of(report.as_ref().unwrap(), "simplify").to_string();
    assert!(
        e.contains("sbatch refused the job") && e.contains("Invalid feature specification"),
        "{e}"
    );
    assert!(e.contains("constraint nosuch"), "{e}");
    assert!(s.jobs().is_empty());

    let text = pipeline(&s.cluster.workdir).replace("constraint: h100sim", "class: b200");
    s.p.write("p.yaml", &text);
    let (code, _, err) = s.run(&["run", "p.yaml"], Duration::from_secs(60));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("p.yaml:15:") && err.contains("unknown GPU class `b200`"),
        "{err}"
    );

    s.p.write("p.yaml", &pipeline(&s.cluster.workdir));
    let (_, r, _) = s.run_report(
        &["run", "p.yaml", "--json"],
        Duration::from_secs(300),
        |c| {
            c.env_remove("FACEBUILD_REMOTE");
        },
    );
    let e = error_of(&r, "simplify");
    assert!(
        e.contains("needs a writable remote cache") && e.contains("--remote"),
        "{e}"
    );
}

/// With slurmctld and slurmd stopped, a Slurm step fails at once with a clear error.
#[test]
fn slurm_daemons_down_is_a_clear_error_not_a_hang() {
    let Some(mut s) = setup() else { return };
    write_project(&s);
    s.cluster.stop_daemons();
    let t0 = Instant::now();
    let (code, report, err) = s.run(&["run", "p.yaml", "--json"], Duration::from_secs(300));
    assert_eq!(code, 1, "{err}");
    let r = report.unwrap();
    let e = error_of(&r, "simplify");
    assert!(e.contains("the Slurm controller is not reachable"), "{e}");
    assert!(e.contains("SLURM_CONF"), "{e}");
    eprintln!(
        "daemons down: failed in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// A TensorRT step routed to a GPU class is submitted from a machine without TensorRT; the
/// node (with the labelled trtexec stand-in) checks its fingerprint against the class.
#[test]
fn tensorrt_steps_of_a_gpu_class_run_on_its_node_with_the_labelled_standin() {
    let Some(s) = setup() else { return };
    write_project(&s);
    // The node has "TensorRT" (the stand-in) and a "GPU"; this machine has neither.
    let home = s.cluster.dir.path().join("trt");
    std::fs::create_dir_all(home.join("bin")).unwrap();
    std::fs::copy(format!("{FIXTURE}/bin/trtexec"), home.join("bin/trtexec")).unwrap();
    chmod_x(&home.join("bin/trtexec"));
    let bin = assert_cmd::cargo::cargo_bin("facebuild");
    let node = s.cluster.dir.path().join("node-facebuild");
    std::fs::write(
        &node,
        format!(
            "#!/bin/sh\nexport TENSORRT_HOME='{}' FACEBUILD_ALLOW_TRTEXEC_STANDIN=1 PATH='{FIXTURE}/driver':\"$PATH\"\nexec '{}' \"$@\"\n",
            home.display(),
            bin.display()
        ),
    )
    .unwrap();
    chmod_x(&node);
    let w = s.cluster.workdir.display();
    let text = format!(
        "{}gpu_classes:\n  sim_a: {{tensorrt: \"10.3.0 (test stand-in)\", cuda: \"12.4\", driver: \"550.54.15\", gpu: STAND-IN GPU A, compute_capability: \"8.0\", constraint: h100sim}}\n  sim_b: {{tensorrt: \"10.3.0 (test stand-in)\", cuda: \"12.4\", driver: \"550.54.15\", gpu: STAND-IN GPU B, compute_capability: \"8.9\", constraint: h100sim}}\nsteps:\n  trt_a:\n    kind: convert\n    runs_on: {{executor: slurm, class: sim_a, workdir: {w}}}\n    params: {{backend: tensorrt, precision: fp16}}\n  trt_b:\n    kind: convert\n    runs_on: {{executor: slurm, class: sim_b, workdir: {w}}}\n    params: {{backend: tensorrt, precision: fp16}}\n",
        indoc! {"
            schema: 1
            name: trt
            model:
              path: model.onnx
              task: recognition
              input: {name: input.1, layout: NCHW, shape: [1, 3, 112, 112]}
        "}
    );
    s.p.write("trt.yaml", &text);
    let (_, r, err) = s.run_report(
        &["run", "trt.yaml", "--json", "--keep-going"],
        Duration::from_secs(600),
        |c| {
            c.env_remove("TENSORRT_HOME")
                .env_remove("FACEBUILD_ALLOW_TRTEXEC_STANDIN");
        },
    );
    assert_eq!(status_of(&r, "trt_a"), Status::Built, "{err}");
    assert!(step(&r, "trt_a").ran_on.is_some());
    // The engine's report says what built it: the stand-in, never TensorRT.
    let report: serde_json::Value = s.p.report("out/trt/trt_a/report.json");
    assert_eq!(report["standin"], true, "{report}");
    // GPU B is not what the node has: the worker refuses before building.
    assert_eq!(status_of(&r, "trt_b"), Status::Failed);
    let e = error_of(&r, "trt_b");
    assert!(
        e.contains("is not GPU class `sim_b`")
            && e.contains("gpu: class says `STAND-IN GPU B`, this machine has `STAND-IN GPU A`"),
        "{e}"
    );
    // Forced here, where there is no TensorRT: unavailable, as before.
    let (_, r, _) = s.run_report(
        &["run", "trt.yaml", "--json", "--executor", "local"],
        Duration::from_secs(300),
        |c| {
            c.env_remove("TENSORRT_HOME");
        },
    );
    assert_eq!(status_of(&r, "trt_b"), Status::Unavailable);
}

/// Jobs reach an S3 remote (s3s-fs, which checks SigV4) with the submitter's credentials,
/// which travel in the job's environment; no other path connects them.
#[test]
fn jobs_use_an_s3_remote_with_the_submitters_credentials() {
    let Some(s) = setup() else { return };
    let Some(s3) = servers::S3::start() else {
        return;
    };
    write_project(&s);
    let w = s.cluster.workdir.display();
    s.p.write(
        "s3.yaml",
        &pipeline(&s.cluster.workdir)
            .replace("name: dist", "name: s3")
            .replace(
                "  check: {kind: check}\n",
                &format!("  check: {{kind: check, runs_on: {{executor: slurm, workdir: {w}}}}}\n"),
            ),
    );
    let run = |secret: &str| {
        s.run_report(
            &["run", "s3.yaml", "--json", "--target", "check"],
            Duration::from_secs(300),
            |c| {
                c.env("FACEBUILD_REMOTE", s3.url()).envs(s3.env(secret));
            },
        )
    };
    let (code, r, err) = run(servers::S3_SECRET);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status_of(&r, "check"), Status::Built);
    assert!(step(&r, "check").ran_on.is_some());
    // The record is in the bucket, under the step's key.
    let key = step(&r, "check").key.clone().unwrap();
    assert!(s3.root().join(format!("ac/{key}.json")).exists());
    // A wrong secret: the remote is unavailable to the submitter, which says so.
    std::fs::remove_dir_all(s.p.path("cache")).unwrap();
    let (code, r, _) = run("wrong-secret");
    assert_eq!(code, 1);
    let e = error_of(&r, "check");
    assert!(
        e.contains("runs on Slurm") && e.contains("unavailable"),
        "{e}"
    );
}
