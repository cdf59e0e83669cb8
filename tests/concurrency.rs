//! One machine, several runs: runs that need the same action build it once (the others wait
//! for its lock, then take its result); runs of different pipelines do not wait for each
//! other; scratch folders of killed runs are reclaimed by the next run; SIGTERM stops a run
//! like Ctrl-C.

mod common;
use common::*;

use std::process::{Child, Command, Stdio};

fn small(samples: u32) -> String {
    builtin_manifest(&format!(
        "check: {{kind: check}}\nsimplify: {{kind: simplify, needs: [check], params: {{samples: {samples}}}}}\nopenvino_fp32: {{kind: convert, from: simplify, params: {{backend: openvino, precision: fp32}}}}\n"
    ))
}

fn spawn(p: &Project, file: &str) -> Child {
    let mut c = p.std_cmd();
    c.args(["run", file, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(c: Child) -> (RunReport, String) {
    let out = c.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(0), "{err}");
    (serde_json::from_slice(&out.stdout).unwrap(), err)
}

/// Four concurrent runs of one pipeline on one cache: every step is built exactly once
/// across them; the others say whom they waited for and report the step cached.
#[test]
fn concurrent_runs_build_each_action_once() {
    let p = Project::new();
    p.write("s.yaml", &small(2));
    let children: Vec<Child> = (0..4).map(|_| spawn(&p, "s.yaml")).collect();
    let runs: Vec<(RunReport, String)> = children.into_iter().map(finish).collect();
    for step in ["check", "simplify", "openvino_fp32"] {
        let built = runs
            .iter()
            .filter(|(r, _)| status_of(r, step) == Status::Built)
            .count();
        assert_eq!(built, 1, "`{step}` built {built} times");
        assert!(
            runs.iter()
                .all(|(r, _)| matches!(status_of(r, step), Status::Built | Status::Cached))
        );
    }
    let waited = runs
        .iter()
        .filter(|(_, e)| e.contains("waiting for `"))
        .count();
    assert!(waited >= 1, "some run waited for another's build");
    let e = &runs
        .iter()
        .find(|(_, e)| e.contains("waiting for `"))
        .unwrap()
        .1;
    assert!(e.contains("(pid "), "the wait names the builder's pid: {e}");

    // Two different pipelines at once share no action: neither waits for the other.
    let q = Project::new();
    q.write("a.yaml", &small(3).replace("name: t", "name: a"));
    // (Their IRs differ too: the simplified models are identical, so one IR would be a
    // shared action.)
    q.write(
        "b.yaml",
        &small(4)
            .replace("name: t", "name: b")
            .replace("precision: fp32", "precision: fp16"),
    );
    // The check step is the same action in both (same model, same params): build it first.
    let (code, _) = q.run_json("a.yaml", &["-t", "check"]);
    assert_eq!(code, 0);
    let (a, b) = (spawn(&q, "a.yaml"), spawn(&q, "b.yaml"));
    for (r, e) in [finish(a), finish(b)] {
        assert!(!e.contains("waiting for"), "{e}");
        assert_eq!(status_of(&r, "simplify"), Status::Built);
    }
}

/// Scratch folders of a killed run are removed by the next run, not left for a gc.
#[test]
fn scratch_of_killed_runs_is_reclaimed() {
    let p = Project::new();
    p.write("s.yaml", &small(2));
    let (code, _) = p.run_json("s.yaml", &["-t", "check"]);
    assert_eq!(code, 0);
    // What `kill -9` leaves: a scratch folder named for a process that is gone.
    let dead = p.path("cache/tmp/step-4000000-abc123");
    std::fs::create_dir_all(&dead).unwrap();
    std::fs::write(dead.join("model.xml"), "half written").unwrap();
    // And one of a live process (this test's) that must stay.
    let live = p.path(&format!("cache/tmp/step-{}-xyz", std::process::id()));
    std::fs::create_dir_all(&live).unwrap();
    let (code, _) = p.run_json("s.yaml", &[]);
    assert_eq!(code, 0);
    assert!(!dead.exists(), "the dead run's scratch is gone");
    assert!(live.exists(), "a live process's scratch stays");
}

/// SIGTERM (CI cancellation) stops a run as Ctrl-C does: running steps are told, the run
/// reports itself interrupted, and the process exits 130 instead of dying mid-write.
#[test]
fn sigterm_stops_a_run_cleanly() {
    let p = Project::new();
    p.write("s.yaml", &small(2));
    let mut c = p.std_cmd();
    let child = c
        .args(["run", "s.yaml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupt received"), "{err}");
    let leftovers = std::fs::read_dir(p.path("cache/tmp"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(leftovers, 0, "no scratch folder left behind");
}
