//! Cache hit/miss rules on the real binary with real ONNX Runtime and onnxsim.

mod common;
use common::*;

const STEPS: &str = "  check:\n    kind: check\n  simplify:\n    kind: simplify\n    needs: [check]\n    params:\n      samples: 2\n      cosine_min: 0.9999\n  check_simplified:\n    kind: check\n    from: simplify\n";

#[test]
fn second_run_is_cached_and_edits_rerun_only_what_changed() {
    let p = Project::new();
    p.write("p.yaml", &builtin_manifest(STEPS));
    let (code, r) = p.run_json("p.yaml", &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(
        statuses(&r).iter().filter(|(_, s)| s == "built").count(),
        3,
        "{r:#}"
    );
    assert!(p.path("p.lock").exists(), "lockfile next to the manifest");
    assert!(
        p.path("out/t/simplify/model.onnx").exists(),
        "outputs materialized"
    );

    // Nothing changed: everything cached, nothing runs.
    let (code, r) = p.run_json("p.yaml", &[]);
    assert_eq!(code, 0);
    assert!(statuses(&r).iter().all(|(_, s)| s == "cached"), "{r:#}");

    // A param that changes simplify's output: simplify and its dependant rerun, check does not.
    p.write(
        "p.yaml",
        &builtin_manifest(&STEPS.replace("samples: 2\n", "samples: 2\n      tool: onnxslim\n")),
    );
    let plan = p.plan_json("p.yaml");
    let steps = plan["steps"].as_array().unwrap();
    assert_eq!(steps[0]["decision"], "cached");
    assert_eq!(steps[1]["decision"], "run");
    assert!(
        steps[1]["reasons"][0]
            .as_str()
            .unwrap()
            .contains("param `tool` changed"),
        "{plan:#}"
    );
    assert_eq!(steps[2]["decision"], "waits");
    let (code, r) = p.run_json("p.yaml", &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(status_of(&r, "check"), "cached");
    assert_eq!(status_of(&r, "simplify"), "built");
    assert_eq!(status_of(&r, "check_simplified"), "built");

    // A gate-only param: simplify reruns; its output bytes are identical, so the dependant
    // keyed on that content stays cached (early cutoff).
    p.write(
        "p.yaml",
        &builtin_manifest(
            &STEPS
                .replace("samples: 2\n", "samples: 2\n      tool: onnxslim\n")
                .replace("0.9999", "0.999"),
        ),
    );
    let plan = p.plan_json("p.yaml");
    assert!(
        plan["steps"][1]["reasons"][0]
            .as_str()
            .unwrap()
            .contains("param `cosine_min` changed: 0.9999 -> 0.999"),
        "{plan:#}"
    );
    let (_, r) = p.run_json("p.yaml", &[]);
    assert_eq!(status_of(&r, "simplify"), "built");
    assert_eq!(status_of(&r, "check_simplified"), "cached");

    // --no-cache rebuilds everything selected; --target selects a step and its needs only.
    let (_, r) = p.run_json("p.yaml", &["--no-cache", "--target", "simplify"]);
    assert_eq!(
        statuses(&r),
        vec![
            ("check".into(), "built".into()),
            ("simplify".into(), "built".into())
        ]
    );
}

#[test]
fn corrupted_blob_is_detected_and_rebuilt() {
    let p = Project::new();
    p.write("p.yaml", &builtin_manifest(STEPS));
    let (code, r) = p.run_json("p.yaml", &[]);
    assert_eq!(code, 0, "{r:#}");
    let digest = r["steps"][1]["outputs"]["model.onnx"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = p.path(&format!("cache/cas/{}/{}", &digest[..2], &digest[2..]));
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xFF; // same size: only a content check can see it
    let mut perms = std::fs::metadata(&blob).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&blob, perms).unwrap();
    std::fs::write(&blob, &bytes).unwrap();

    let out = p.run(&["cache", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("corrupt: {digest}")));

    let (code, r) = p.run_json("p.yaml", &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(status_of(&r, "check"), "cached");
    assert_eq!(
        status_of(&r, "simplify"),
        "built",
        "corrupt output must be rebuilt: {r:#}"
    );
    assert_eq!(
        r["steps"][1]["outputs"]["model.onnx"]["digest"],
        digest.as_str(),
        "rebuild is reproducible"
    );
    let out = p.run(&["cache", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn failed_gate_stops_dependants_keeps_report_and_keep_going_runs_the_rest() {
    let p = Project::new();
    // max_abs_error 0: BN folding changes the last bits, so the gate must fail.
    let steps = "  simplify:\n    kind: simplify\n    params:\n      samples: 2\n      max_abs_error: 0\n  check_simplified:\n    kind: check\n    from: simplify\n  check:\n    kind: check\n";
    p.write("p.yaml", &builtin_manifest(steps));
    let (code, r) = p.run_json("p.yaml", &["--jobs", "1"]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(status_of(&r, "simplify"), "failed");
    assert_eq!(status_of(&r, "check_simplified"), "skipped");
    assert_eq!(
        status_of(&r, "check"),
        "not_run",
        "without --keep-going nothing new starts after a failure"
    );
    let err = r["steps"][0]["error"].as_str().unwrap();
    assert!(
        err.contains("max abs error") && err.contains("report kept at"),
        "{err}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.path("out/t/simplify/report.json")).unwrap())
            .unwrap();
    assert_eq!(report["passed"], false);
    assert!(report["outputs"][0]["max_abs_error"].as_f64().unwrap() > 0.0);

    let (code, r) = p.run_json("p.yaml", &["--jobs", "1", "--keep-going"]);
    assert_eq!(code, 1);
    assert_eq!(status_of(&r, "check"), "built");
    assert_eq!(status_of(&r, "check_simplified"), "skipped");
    // A failure is never cached: the next run tries again.
    let (_, r) = p.run_json("p.yaml", &["--keep-going"]);
    assert_eq!(status_of(&r, "simplify"), "failed");
    assert_eq!(status_of(&r, "check"), "cached");
}

#[test]
fn gc_keeps_what_the_lockfile_references() {
    let p = Project::new();
    p.write("p.yaml", &builtin_manifest(STEPS));
    assert_eq!(p.run_json("p.yaml", &[]).0, 0);
    // A second version of simplify's result, which the lockfile then no longer references.
    p.write(
        "p.yaml",
        &builtin_manifest(&STEPS.replace("samples: 2", "samples: 3")),
    );
    assert_eq!(p.run_json("p.yaml", &[]).0, 0);
    let out = p.run(&["cache", "ls", "--json"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        4
    );

    let out = p.run(&["cache", "gc", "p.lock"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("removed 1 results"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = p.run(&["cache", "ls", "--json"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let (_, r) = p.run_json("p.yaml", &[]);
    assert!(statuses(&r).iter().all(|(_, s)| s == "cached"), "{r:#}");
}
