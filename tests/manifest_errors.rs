//! Bad manifests are rejected before anything runs, with file:line:col, and exit code 2.

mod common;
use common::*;

fn expect_error(yaml: &str, needles: &[&str]) -> String {
    let p = Project::new();
    p.write("bad.yaml", yaml);
    let out = p.run(&["run", "bad.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "exit code; stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "missing `{n}` in:\n{stderr}");
    }
    assert!(
        !p.path("cache/actions").exists()
            || std::fs::read_dir(p.path("cache/actions"))
                .unwrap()
                .next()
                .is_none(),
        "nothing may run"
    );
    stderr
}

#[test]
fn cycle_is_located_with_its_path() {
    let steps = "  a:\n    kind: check\n    needs: [c]\n  b:\n    kind: check\n    needs: [a]\n  c:\n    kind: check\n    needs: [b]\n";
    // Line 10 is `  a:`; the cycle is printed in full.
    expect_error(
        &builtin_manifest(steps),
        &["bad.yaml:11:5", "dependency cycle: a -> b -> c -> a"],
    );
}

#[test]
fn unknown_key_is_located() {
    let steps = "  s:\n    kind: simplify\n    params:\n      cosine_mn: 0.9\n";
    expect_error(
        &builtin_manifest(steps),
        &["bad.yaml:13:7", "unknown field `cosine_mn`", "cosine_min"],
    );
}

#[test]
fn wrong_type_is_located() {
    let steps = "  s:\n    kind: simplify\n    params:\n      samples: many\n";
    expect_error(&builtin_manifest(steps), &["bad.yaml:13:16", "samples"]);
}

#[test]
fn unknown_step_kind_lists_the_known_ones() {
    expect_error(
        &builtin_manifest("  s:\n    kind: simplfy\n"),
        &["bad.yaml:11:11", "simplfy", "check", "simplify"],
    );
}

#[test]
fn missing_needs_target_is_located() {
    expect_error(
        &builtin_manifest("  s:\n    kind: check\n    needs: [nope]\n"),
        &["bad.yaml:12:13", "`nope`, which is not a step"],
    );
}

#[test]
fn unknown_top_level_key_and_bad_schema() {
    expect_error(
        &builtin_manifest("  s:\n    kind: check\n").replace("name: t", "nam: t"),
        &["bad.yaml:2:1", "unknown field `nam`"],
    );
    expect_error(
        &builtin_manifest("  s:\n    kind: check\n").replace("schema: 1", "schema: 9"),
        &["bad.yaml:1:9", "unsupported schema version 9"],
    );
}

#[test]
fn from_must_name_a_model_producing_step() {
    expect_error(
        &builtin_manifest("  a:\n    kind: check\n  b:\n    kind: check\n    from: a\n"),
        &["bad.yaml:14:11", "produces no model"],
    );
}

#[test]
fn missing_manifest_is_a_usage_error() {
    let p = Project::new();
    let out = p.run(&["plan", "nope.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read manifest nope.yaml"));
}
