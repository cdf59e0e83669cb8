//! Cache hit/miss rules on the real binary with real ONNX Runtime and onnxsim.

mod common;
use common::*;
use facebuild::{CompareReport, SimplifyReport};

/// How many action records `cache ls` lists.
fn cached_results(p: &Project) -> usize {
    let out = p.run(&["cache", "ls", "--json"]);
    serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(&out.stdout)
        .unwrap()
        .len()
}

const STEPS: &str = indoc! {"
      check:
        kind: check
      simplify:
        kind: simplify
        needs: [check]
        params:
          samples: 2
          cosine_min: 0.9999
      check_simplified:
        kind: check
        from: simplify
"};

/// A second run is all cache hits; an edit reruns exactly what it changed.
#[test]
fn second_run_is_cached_and_edits_rerun_only_what_changed() {
    let p = Project::new();
    p.write("p.yaml", &builtin_manifest(STEPS));
    let (code, r) = p.run_json("p.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    assert_eq!(
        statuses(&r)
            .iter()
            .filter(|(_, s)| *s == Status::Built)
            .count(),
        3,
        "{r:#?}"
    );
    assert!(p.path("p.lock").exists(), "lockfile next to the manifest");
    assert!(
        p.path("out/t/simplify/model.onnx").exists(),
        "outputs materialized"
    );

    // Nothing changed: everything cached, nothing runs.
    let (code, r) = p.run_json("p.yaml", &[]);
    assert_eq!(code, 0);
    assert!(
        statuses(&r).iter().all(|(_, s)| *s == Status::Cached),
        "{r:#?}"
    );

    // A param that changes simplify's output: simplify and its dependant rerun, check does not.
    p.write(
        "p.yaml",
        &builtin_manifest(&STEPS.replace("samples: 2\n", "samples: 2\n    tool: onnxslim\n")),
    );
    let plan = p.plan_json("p.yaml");
    assert!(matches!(planned(&plan, "check"), Decision::Cached { .. }));
    let Decision::Run { reasons, .. } = planned(&plan, "simplify") else {
        panic!("{plan:#?}")
    };
    assert!(reasons[0].contains("param `tool` changed"), "{reasons:?}");
    assert!(matches!(
        planned(&plan, "check_simplified"),
        Decision::Waits { .. }
    ));
    let (code, r) = p.run_json("p.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    assert_eq!(status_of(&r, "check"), Status::Cached);
    assert_eq!(status_of(&r, "simplify"), Status::Built);
    assert_eq!(status_of(&r, "check_simplified"), Status::Built);

    // A gate-only param: simplify reruns; its output bytes are identical, so the dependant
    // keyed on that content stays cached (early cutoff).
    p.write(
        "p.yaml",
        &builtin_manifest(
            &STEPS
                .replace("samples: 2\n", "samples: 2\n    tool: onnxslim\n")
                .replace("0.9999", "0.999"),
        ),
    );
    let plan = p.plan_json("p.yaml");
    let Decision::Run { reasons, .. } = planned(&plan, "simplify") else {
        panic!("{plan:#?}")
    };
    assert!(
        reasons[0].contains("param `cosine_min` changed: 0.9999 -> 0.999"),
        "{reasons:?}"
    );
    let (_, r) = p.run_json("p.yaml", &[]);
    assert_eq!(status_of(&r, "simplify"), Status::Built);
    assert_eq!(status_of(&r, "check_simplified"), Status::Cached);

    // --no-cache rebuilds everything selected; --target selects a step and its needs only.
    let (_, r) = p.run_json("p.yaml", &["--no-cache", "--target", "simplify"]);
    assert_eq!(
        statuses(&r),
        vec![
            ("check".into(), Status::Built),
            ("simplify".into(), Status::Built)
        ]
    );
}

/// A corrupted blob is found by `cache verify` and by the next run, which rebuilds it.
#[test]
fn corrupted_blob_is_detected_and_rebuilt() {
    let p = Project::new();
    p.write("p.yaml", &builtin_manifest(STEPS));
    let (code, r) = p.run_json("p.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    let digest = step(&r, "simplify").outputs["model.onnx"].digest.clone();
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
    assert_eq!(code, 0, "{r:#?}");
    assert_eq!(status_of(&r, "check"), Status::Cached);
    assert_eq!(
        status_of(&r, "simplify"),
        Status::Built,
        "corrupt output must be rebuilt: {r:#?}"
    );
    assert_eq!(
        step(&r, "simplify").outputs["model.onnx"].digest,
        digest,
        "rebuild is reproducible"
    );
    let out = p.run(&["cache", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A failed gate stops its dependants, keeps its report, and `--keep-going` runs the rest.
#[test]
fn failed_gate_stops_dependants_keeps_report_and_keep_going_runs_the_rest() {
    let p = Project::new();
    // max_abs_error 0: BN folding changes the last bits, so the gate must fail.
    let steps = indoc! {"
          simplify:
            kind: simplify
            params:
              samples: 2
              max_abs_error: 0
          check_simplified:
            kind: check
            from: simplify
          check:
            kind: check
    "};
    p.write("p.yaml", &builtin_manifest(steps));
    let (code, r) = p.run_json("p.yaml", &["--jobs", "1"]);
    assert_eq!(code, 1, "{r:#?}");
    assert_eq!(status_of(&r, "simplify"), Status::Failed);
    assert_eq!(status_of(&r, "check_simplified"), Status::Skipped);
    assert_eq!(
        status_of(&r, "check"),
        Status::NotRun,
        "without --keep-going nothing new starts after a failure"
    );
    let err = error_of(&r, "simplify");
    assert!(
        err.contains("max abs error") && err.contains("report kept at"),
        "{err}"
    );
    let report: SimplifyReport = p.report("out/t/simplify/report.json");
    assert!(!report.passed);
    assert!(report.outputs[0].max_abs_error > 0.0);

    let (code, r) = p.run_json("p.yaml", &["--jobs", "1", "--keep-going"]);
    assert_eq!(code, 1);
    assert_eq!(status_of(&r, "check"), Status::Built);
    assert_eq!(status_of(&r, "check_simplified"), Status::Skipped);
    // A failure is never cached: the next run tries again.
    let (_, r) = p.run_json("p.yaml", &["--keep-going"]);
    assert_eq!(status_of(&r, "simplify"), Status::Failed);
    assert_eq!(status_of(&r, "check"), Status::Cached);
}

/// A compare whose candidate failed still compares the others and lists the failed one as
/// failed, with its error; its gates fail by the missing-figure rule (or pass by
/// `missing: pass`). Without --keep-going nothing else new starts, but the compare over the
/// failure still reports.
#[test]
fn compare_reports_a_failed_candidate_and_compares_the_rest() {
    let p = Project::new();
    let manifest = |missing: &str| {
        builtin_manifest(&format!(
            "{}{missing}",
            indoc! {"
              simplify:
                kind: simplify
                params:
                  samples: 2
                  max_abs_error: 0
              openvino_fp32:
                kind: convert
                params: {backend: openvino, precision: fp32}
              check:
                kind: check
                needs: [compare]
              compare:
                kind: compare
                params:
                  dataset: samples
                  candidates: [openvino_fp32, simplify]
                  cosine_min: 0.999
            "}
        ))
        .replace(
            "steps:\n",
            "  preprocessing: {color: RGB, mean: [127.5, 127.5, 127.5], std: [127.5, 127.5, 127.5], size: [112, 112]}\ndatasets:\n  samples: {builtin: synthetic-faces}\nsteps:\n",
        )
    };
    p.write("p.yaml", &manifest(""));
    let (code, r) = p.run_json("p.yaml", &["--jobs", "1"]);
    assert_eq!(code, 1, "{r:#?}");
    assert_eq!(status_of(&r, "simplify"), Status::Failed);
    assert_eq!(status_of(&r, "openvino_fp32"), Status::Built);
    assert_eq!(status_of(&r, "compare"), Status::Failed, "{r:#?}");
    assert_eq!(
        status_of(&r, "check"),
        Status::Skipped,
        "a step after the failed compare is skipped"
    );
    let err = error_of(&r, "compare");
    assert!(
        err.contains("candidate `simplify` (not built)") && err.contains("not measured"),
        "{err}"
    );
    assert!(
        !err.contains("candidate `openvino_fp32`"),
        "the built candidate passes: {err}"
    );
    let report: CompareReport = p.report("out/t/compare/report.json");
    let by = |l: &str| report.candidates.iter().find(|c| c.label == l).unwrap();
    assert_eq!(by("openvino_fp32").passed, Some(true));
    assert!(by("openvino_fp32").cosine.as_ref().unwrap().min > 0.9999);
    let failed = by("simplify");
    assert_eq!(failed.passed, Some(false));
    let why = failed.failed.as_deref().unwrap();
    assert!(
        why.contains("its step failed") && why.contains("max abs error"),
        "{why}"
    );
    let md = std::fs::read_to_string(p.path("out/t/compare/report.md")).unwrap();
    assert!(
        md.contains("| simplify | - | failed: its step failed"),
        "{md}"
    );

    // `missing: pass` lets the missing figures pass: compare passes, and says so.
    p.write(
        "p.yaml",
        &manifest("    candidate_gates: {simplify: {missing: pass}}\n"),
    );
    let (code, r) = p.run_json("p.yaml", &["--keep-going"]);
    assert_eq!(code, 1, "simplify still fails the run: {r:#?}");
    assert_eq!(status_of(&r, "compare"), Status::Built, "{r:#?}");
    assert_eq!(status_of(&r, "check"), Status::Built);
    let report: CompareReport = p.report("out/t/compare/report.json");
    let g = &report
        .candidates
        .iter()
        .find(|c| c.label == "simplify")
        .unwrap();
    assert!(
        g.gates.as_ref().unwrap()[0]
            .warning
            .as_deref()
            .unwrap()
            .contains("passed by `missing: pass`")
    );
}

/// What a user reads: `plan` before a run, the run's progress and summary, `status` after,
/// and `plan` again (every step cached), as insta snapshots.
#[test]
fn plan_run_and_status_text() {
    let p = Project::new();
    p.write("p.yaml", &builtin_manifest(STEPS));
    let text = |args: &[&str]| {
        let out = p.run(args);
        format!(
            "exit: {:?}\n--- stdout\n{}--- stderr\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    snapshot(&p, "_plan", &text(&["plan", "p.yaml"]));
    snapshot(&p, "_plan_json", &text(&["plan", "p.yaml", "--json"]));
    snapshot(&p, "_run", &text(&["run", "p.yaml", "--jobs", "1"]));
    snapshot(&p, "_status", &text(&["status", "p.yaml"]));
    snapshot(&p, "_status_json", &text(&["status", "p.yaml", "--json"]));
    snapshot(&p, "_plan_cached", &text(&["plan", "p.yaml"]));
    // `run --json`'s shape is an interface scripts read.
    snapshot(&p, "_run_json", &text(&["run", "p.yaml", "--json"]));
}

/// `cache gc` keeps exactly what the lockfile references.
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
    assert_eq!(cached_results(&p), 4);

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
    assert_eq!(cached_results(&p), 3);
    let (_, r) = p.run_json("p.yaml", &[]);
    assert!(
        statuses(&r).iter().all(|(_, s)| *s == Status::Cached),
        "{r:#?}"
    );
}

/// A pack: two built-in models, steps written once with `each:` and expanded per model (the
/// plan shows `<model>_<step>`, each copy's `from` its own model's), compare steps that find
/// their model from their candidates, and a chain over both. Editing one model's declaration
/// rebuilds only its steps and the chain; the other model's stay cached.
#[test]
fn pack_steps_expand_per_model_and_keys_stay_per_model() {
    let p = Project::new();
    let pack = |rec_std: &str| {
        format!(
            "{}datasets:
  faces: {{builtin: synthetic-faces, count: 6}}
  scenes: {{builtin: synthetic-scenes}}
steps:
  simplify: {{kind: simplify, each: [det, rec], params: {{samples: 1}}}}
  openvino_fp16: {{kind: convert, each: [det, rec], from: simplify, params: {{backend: openvino, precision: fp16}}}}
  rec_compare: {{kind: compare, params: {{dataset: faces, candidates: [rec_openvino_fp16]}}}}
  det_compare: {{kind: compare, params: {{dataset: scenes, candidates: [det_openvino_fp16]}}}}
  chain: {{kind: chain, params: {{dataset: scenes, detector: det, recognizer: rec, combinations: {{rec_fp16: {{rec: rec_openvino_fp16}}}}}}}}
",
            builtin_pack_models(rec_std)
        )
    };
    p.write("pack.yaml", &pack("127.5, 127.5, 127.5"));
    let plan = p.plan_json("pack.yaml");
    let names: Vec<&str> = plan.steps.iter().map(|d| d.step.as_str()).collect();
    assert_eq!(
        names,
        [
            "det_simplify",
            "rec_simplify",
            "det_openvino_fp16",
            "rec_openvino_fp16",
            "rec_compare",
            "det_compare",
            "chain"
        ]
    );
    let (code, r) = p.run_json("pack.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    assert!(r.steps.iter().all(|s| s.status == Status::Built), "{r:#?}");
    assert!(
        r.source.contains("det: builtin:scrfd-mini")
            && r.source.contains("rec: builtin:iresnet-mini"),
        "{}",
        r.source
    );
    // The recognizer's declaration changes: its steps and the chain rebuild, the detector's
    // stay cached.
    p.write("pack.yaml", &pack("128, 128, 128"));
    let (code, r) = p.run_json("pack.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    let mut st = statuses(&r);
    st.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        st,
        [
            ("chain".to_string(), Status::Built),
            ("det_compare".to_string(), Status::Cached),
            ("det_openvino_fp16".to_string(), Status::Cached),
            ("det_simplify".to_string(), Status::Cached),
            ("rec_compare".to_string(), Status::Built),
            ("rec_openvino_fp16".to_string(), Status::Built),
            ("rec_simplify".to_string(), Status::Built),
        ]
    );
}
