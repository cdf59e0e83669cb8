//! Keys and outputs are the same on every machine: two checkouts in different folders, each
//! with its own cache, build the default pipeline to identical keys and bit-identical
//! outputs, and no output holds a checkout's or a cache's absolute path. This is what lets one
//! remote cache serve a fleet.

mod common;
use common::*;

/// The whole default pipeline from two project folders and two caches; the second one's
/// cache is given as a relative path, as the README's command does (tools run in scratch
/// folders still find it). Every key and output is identical except what benchmark timings
/// make differ: the benchmark's reports, and the release's metadata, report (the gates'
/// measured figures) and SHA256SUMS (which lists the metadata); a release that promoted other
/// artifacts than the other (a busy machine's refusal) is not compared. No output holds a path.
#[test]
fn two_checkouts_build_identical_outputs() {
    // Its benchmark's figures are timings, compared for nothing here: a short budget.
    let manifest = default_pipeline_short_benchmark();
    let (a, b) = (Project::new(), Project::new());
    let mut reports = Vec::new();
    for (p, cache) in [(&a, None), (&b, Some("cache"))] {
        p.write("pipelines/recognition.yaml", &manifest);
        let mut c = p.std_cmd();
        if let Some(rel) = cache {
            c.env("FACEBUILD_CACHE", rel);
        }
        let out = c
            .args(["run", "pipelines/recognition.yaml", "--json"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let r = serde_json::from_slice::<RunReport>(&out.stdout)
            .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{err}"));
        let code = out.status.code().unwrap_or(-1);
        released(p.dir.path(), code, &r);
        reports.push(r);
    }
    let (ra, rb) = (&reports[0], &reports[1]);
    // Both promote the same artifacts (speed gates decide on intervals, far from their
    // limits here), so the two releases are compared whole.
    let promoted = |p: &Project, r: &RunReport| {
        p.report::<facebuild::ReleaseReport>(&format!(
            "pipelines/out/{}/release/report.json",
            r.pipeline
        ))
        .promoted
    };
    assert_eq!(promoted(&a, ra), promoted(&b, rb));
    assert_eq!(ra.steps.len(), rb.steps.len());
    let mut compared = 0;
    // Timings, and what is derived from them: the release's figures and version, which
    // ROLLBACK.md names. The provenance records when the release was built and by which
    // invocation, so it differs per build by design (it is still checked for paths below).
    let timed = |step: &str, name: &str| {
        step == "benchmark"
            || (step == "release"
                && matches!(
                    name,
                    "metadata.json"
                        | "report.json"
                        | "SHA256SUMS"
                        | "ROLLBACK.md"
                        | "provenance.intoto.json"
                ))
    };
    for (x, y) in ra.steps.iter().zip(&rb.steps) {
        assert_eq!(x.step, y.step);
        // The release's key covers the benchmark's (timed) report.
        if x.step != "release" {
            assert_eq!(x.key, y.key, "step `{}`: keys differ", x.step);
        }
        for (name, o) in &x.outputs {
            if !timed(&x.step, name) {
                assert_eq!(
                    Some(&o.digest),
                    y.outputs.get(name).map(|o| &o.digest),
                    "step `{}` output `{name}` differs between checkouts",
                    x.step
                );
                compared += 1;
            }
            let bytes = std::fs::read(a.dir.path().join(&o.path)).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            for dir in [a.dir.path(), b.dir.path()] {
                let d = dir.to_string_lossy();
                assert!(
                    !text.contains(d.as_ref()),
                    "step `{}` output `{name}` holds the path {d}",
                    x.step
                );
            }
        }
    }
    assert!(compared >= 10, "{compared} outputs compared");
}
