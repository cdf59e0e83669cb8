//! benchmark -> release -> rollback, and the run report, with real ONNX Runtime and OpenVINO
//! on the built-in model (and, for the benchmark figures, the real MobileFaceNet in
//! ../shared when present). No timing is asserted: figures are printed, gates are set far
//! from any plausible measurement so that which way they go is certain.

mod common;
use common::*;

use std::path::Path;

use facebuild::{BenchmarkReport, GateResult, ReleaseEntry};

/// What these tests read of a release's metadata.json.
#[derive(serde::Deserialize)]
struct Metadata {
    version: String,
    facebuild_version: String,
    source_onnx: Digests,
    manifest: Digests,
    toolchain: MetaToolchain,
    artifacts: Vec<MetaArtifact>,
    gates: Vec<Verdict>,
}

#[derive(serde::Deserialize)]
struct Digests {
    #[serde(alias = "blake3")]
    sha256: String,
}

#[derive(serde::Deserialize)]
struct MetaToolchain {
    python_packages: std::collections::BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct MetaArtifact {
    name: String,
    precision: String,
    audit_only: bool,
}

#[derive(serde::Deserialize)]
struct Verdict {
    gates: Vec<GateResult>,
}

fn metadata(p: &Path) -> Metadata {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

/// simplify, two IRs, compare, benchmark and a release with `release_params`.
fn pipeline(release_params: &str) -> String {
    builtin_manifest(&format!(
        r#"  simplify: {{kind: simplify, params: {{samples: 1}}}}
  ov_fp32: {{kind: convert, from: simplify, params: {{backend: openvino, precision: fp32}}}}
  ov_fp16: {{kind: convert, from: simplify, params: {{backend: openvino, precision: fp16}}}}
  compare: {{kind: compare, params: {{dataset: faces, candidates: [ov_fp32, ov_fp16], cosine_min: 0.999}}}}
  benchmark:
    kind: benchmark
    params: {{targets: [simplify, ov_fp32, ov_fp16], batch_sizes: [1, 4], warmup: 2, iterations: 100000, time_budget_s: 0.25, processes: 2}}
  release:
    kind: release
    params: {release_params}
"#
    ))
    .replace("steps:\n", "datasets:\n  faces: {builtin: synthetic-faces}\nsteps:\n")
    .replace("    shape: [1, 3, 112, 112]\n", "    shape: [1, 3, 112, 112]\n  preprocessing: {color: RGB, mean: [127.5, 127.5, 127.5], std: [127.5, 127.5, 127.5], size: [112, 112]}\n")
}

fn release_err(r: &RunReport) -> String {
    error_of(r, "release").to_string()
}

/// Benchmark figures in one schema; a release that passes, one refused by a latency gate
/// and one by an accuracy gate; rollback restores every byte; the run report and JUnit.
#[test]
fn benchmark_then_release_passes_refuses_and_rolls_back_byte_identically() {
    let p = Project::new();
    let rel = p.path("rel");
    let common = format!(
        "compare: compare, benchmark: benchmark, releases_dir: {}",
        rel.display()
    );
    // 1. A release that passes, on gates of both kinds (compare's cosine, the benchmark's
    //    latency, throughput, memory and cold start, each decided on its interval over
    //    processes: far from its limit, it passes on a busy machine too).
    p.write("r.yaml", &pipeline(&format!("{{artifacts: [ov_fp16], {common}, version: v1, gates: {{cosine_min: 0.99, p99_ms_max: 1000, throughput_min: 1, rss_mib_max: 100000, cold_start_ms_max: 600000}}, keep_fp32_for_audit: true, audit_artifacts: [ov_fp32]}}")));
    let (code, r) = p.run_json("r.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");

    // The benchmark: one schema for every runtime, machine described, each target measured.
    let b: BenchmarkReport = p.report("out/t/benchmark/report.json");
    assert_eq!(b.schema, "facebuild.benchmark/1");
    assert!(!b.machine.cpu.is_empty() && b.machine.logical_cores >= 1);
    assert_eq!(
        b.results.len(),
        5,
        "simplify in ONNX Runtime, two IRs x two OpenVINO hints: {b:#?}"
    );
    for x in &b.results {
        let m = x.measured.as_ref().expect("every target is measured here");
        let cold = m.cold_start.as_ref().unwrap();
        assert!(cold.spawn_to_first_output_ms > 0.0, "{x:#?}");
        assert!(cold.load_ms.unwrap() > 0.0 && cold.first_inference_ms.unwrap() > 0.0);
        let lat = m.latency_batch1_ms.clone().unwrap();
        for v in [lat.median, lat.p90, lat.p99, lat.max] {
            assert!(v.unwrap() > 0.0, "{x:#?}");
        }
        assert!(m.peak_rss_mib.unwrap() > 10.0);
        assert!(!m.execution.precision.is_empty());
        assert_eq!(m.throughput.len(), 2);
        assert!(m.throughput[0].images_per_s.unwrap() > 0.0);
        say(&format!(
            "bench {}: executed {} cold {:.0} ms p50 {:.3} ms p99 {:.3} ms rss {:.0} MiB throughput {:?}",
            x.label,
            m.execution.precision,
            cold.spawn_to_first_output_ms,
            lat.median.unwrap(),
            lat.p99.unwrap(),
            m.peak_rss_mib.unwrap(),
            m.throughput
                .iter()
                .map(|t| (t.batch, t.images_per_s))
                .collect::<Vec<_>>()
        ));
    }
    let hints: Vec<&str> = b
        .results
        .iter()
        .filter_map(|x| x.measured.as_ref()?.execution.hint.as_deref())
        .collect();
    assert!(
        hints.contains(&"LATENCY") && hints.contains(&"THROUGHPUT"),
        "{hints:?}"
    );
    // The simplified ONNX has a static batch of 1: batch 4 is reported unsupported, not faked.
    let ort = b.results.iter().find(|x| x.label == "simplify").unwrap();
    let ort_b4 = &ort.measured.as_ref().unwrap().throughput[1];
    assert!(ort_b4.unsupported.is_some(), "{ort:#?}");

    // The release: metadata, sums, rollback notes, current.
    let v1 = rel.join("t/v1");
    let meta = metadata(&v1.join("metadata.json"));
    assert_eq!(meta.version, "v1");
    assert_eq!(meta.source_onnx.sha256.len(), 64);
    assert_eq!(meta.manifest.sha256.len(), 64);
    assert!(meta.toolchain.python_packages.contains_key("openvino"));
    assert_eq!(meta.facebuild_version, env!("CARGO_PKG_VERSION"));
    assert!(
        meta.artifacts
            .iter()
            .any(|a| a.name == "ov_fp16" && a.precision == "fp16" && !a.audit_only)
    );
    assert!(
        meta.artifacts
            .iter()
            .any(|a| a.name == "ov_fp32" && a.audit_only),
        "FP32 kept for audit"
    );
    assert!(v1.join("ov_fp16/model.xml").exists() && v1.join("audit/ov_fp32/model.bin").exists());
    let gates = &meta.gates[0].gates;
    assert_eq!(gates.len(), 5);
    assert!(
        gates.iter().all(|g| g.passed && g.value.is_some()),
        "{gates:#?}"
    );
    let sums = std::fs::read_to_string(v1.join("SHA256SUMS")).unwrap();
    assert!(sums.contains("  ov_fp16/model.bin") && sums.contains("  metadata.json"));
    assert!(
        std::fs::read_to_string(v1.join("ROLLBACK.md"))
            .unwrap()
            .contains("first release")
    );
    // Which version is current sits beside `current/`, not in it: `current/` holds the
    // version's files only, so its signature verifies there too.
    assert_eq!(
        std::fs::read_to_string(rel.join("t/CURRENT"))
            .unwrap()
            .trim(),
        "v1"
    );
    assert!(!rel.join("t/current/RELEASE").exists());

    // 2. Refused by a latency gate, with the measured value, its interval and the limit.
    p.write(
        "r.yaml",
        &pipeline(&format!(
            "{{artifacts: [ov_fp16], {common}, version: v2, gates: {{p99_ms_max: 0.000001}}}}"
        )),
    );
    let (code, r) = p.run_json("r.yaml", &[]);
    assert_eq!(code, 1);
    let e = release_err(&r);
    assert!(
        e.contains("release refused")
            && e.contains("p99_ms_max: measured")
            && e.contains("(95% interval [")
            && e.contains("vs limit 0.000001"),
        "{e}"
    );
    say(&format!("latency gate: {}", e.lines().next().unwrap()));

    // 3. Refused by an accuracy gate.
    p.write("r.yaml", &pipeline(&format!("{{artifacts: [ov_fp16], {common}, version: v2, gates: {{cosine_min: 0.999}}, artifact_gates: {{ov_fp16: {{cosine_min: 1.5}}}}}}")));
    let (code, r) = p.run_json("r.yaml", &[]);
    assert_eq!(code, 1);
    let e = release_err(&r);
    assert!(
        e.contains("cosine_min: measured")
            && e.contains("vs limit 1.5")
            && e.contains("compare `compare`"),
        "{e}"
    );
    say(&format!("accuracy gate: {}", e.lines().next().unwrap()));
    assert!(
        !rel.join("t/v2").exists(),
        "a refused release promotes nothing"
    );

    // 4. A second release; its ROLLBACK.md names v1 and how to restore it.
    p.write(
        "r.yaml",
        &pipeline(&format!(
            "{{artifacts: [ov_fp32, ov_fp16], {common}, version: v2, gates: {{cosine_min: 0.99}}}}"
        )),
    );
    let (code, r) = p.run_json("r.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    let rb = std::fs::read_to_string(rel.join("t/v2/ROLLBACK.md")).unwrap();
    assert!(
        rb.contains("**v1**")
            && rb.contains(&format!(
                "facebuild release rollback t v1 --dir {}",
                rel.display()
            )),
        "{rb}"
    );
    let v1_bin = sums
        .lines()
        .find(|l| l.ends_with("  ov_fp16/model.bin"))
        .unwrap()
        .split("  ")
        .next()
        .unwrap();
    assert!(rb.contains(v1_bin), "names v1's digests");
    assert_eq!(
        std::fs::read_to_string(rel.join("t/CURRENT"))
            .unwrap()
            .trim(),
        "v2"
    );
    let list = p.run(&["release", "list", "--dir", rel.to_str().unwrap(), "--json"]);
    let l: Vec<ReleaseEntry> = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(
        l.iter()
            .map(|x| (x.version.as_str(), x.current))
            .collect::<Vec<_>>(),
        [("v1", false), ("v2", true)]
    );

    // 5. Roll back: current is v1 again, byte for byte.
    let out = p.run(&[
        "release",
        "rollback",
        "t",
        "v1",
        "--dir",
        rel.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("current is now v1 (was v2)"));
    for line in sums.lines() {
        let (_, f) = line.split_once("  ").unwrap();
        assert_eq!(
            std::fs::read(v1.join(f)).unwrap(),
            std::fs::read(rel.join("t/current").join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(
        !rel.join("t/current/ov_fp32/model.xml").exists(),
        "nothing of v2 is left in current"
    );
    let bad = p.run(&[
        "release",
        "rollback",
        "t",
        "v9",
        "--dir",
        rel.to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("releases of `t`: v1, v2"));

    // The run report: self-contained HTML with the plots, JUnit with steps and gates.
    let html = std::fs::read_to_string(p.path("out/t/report.html")).unwrap();
    assert!(
        html.matches("<svg").count() >= 7,
        "2 cosine histograms, 5 latency histograms, a throughput plot"
    );
    assert!(
        html.contains("cosine similarity")
            && html.contains("throughput vs batch size")
            && html.contains("batch-1 latency")
    );
    assert!(
        !html.contains("<script") && !html.contains("src=\"http"),
        "self-contained"
    );
    let junit = std::fs::read_to_string(p.path("out/t/junit.xml")).unwrap();
    assert!(
        junit.contains("<testsuite name=\"steps\"")
            && junit.contains("<testsuite name=\"gates.compare\"")
            && junit.contains("<testsuite name=\"gates.release\""),
        "{junit}"
    );
}

/// Benchmark JSON for the real recognition model in every runtime configuration the issue
/// names, with OpenVINO's benchmark_app as the reference (ratios printed, not asserted).
#[test]
fn real_model_benchmark_with_benchmark_app_reference() {
    let Some(shared) = shared() else { return };
    let p = Project::new();
    p.write(
        "m.yaml",
        &(mobilefacenet_head(&shared, "m")
            + &format!(
            indoc! {"
                datasets:
                  calib: {{path: {}, count: 16}}
                steps:
                  ov_fp32: {{kind: convert, params: {{backend: openvino, precision: fp32}}}}
                  ov_fp16: {{kind: convert, params: {{backend: openvino, precision: fp16}}}}
                  calibrate: {{kind: calibrate, params: {{dataset: calib}}}}
                  ov_int8: {{kind: convert, params: {{backend: openvino, precision: int8, calibration: calibrate}}}}
                  onnx: {{kind: simplify, params: {{samples: 1}}}}
                  benchmark:
                    kind: benchmark
                    params:
                      targets: [onnx, {{step: ov_fp32, label: ov_fp32_f32, precision_hint: f32}}, {{step: ov_fp32, label: ov_fp32_bf16, precision_hint: bf16}}, ov_fp16, ov_int8]
                      openvino_hints: [throughput]
                      iterations: 100
                      time_budget_s: 0.5
                      reference: benchmark_app
                      reference_seconds: 1
            "},
            shared.join("faces/pairs").display()
        )),
    );
    let (code, r) = p.run_json("m.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    let b: BenchmarkReport = p.report("out/m/benchmark/report.json");
    for x in &b.results {
        let m = x.measured.as_ref().unwrap();
        let reference = m.reference.as_ref();
        let ratio = reference.and_then(|r| r.throughput_ratio);
        if x.artifact == "openvino-ir" {
            assert!(ratio.is_some(), "{x:#?}");
        }
        say(&format!(
            "mobilefacenet {}: executed {}, p50 {:.3} ms, throughput b1 {:.0}/s, benchmark_app {:?} /s, ratio {:?}",
            x.label,
            m.execution.precision,
            m.latency_batch1_ms.as_ref().unwrap().median.unwrap(),
            m.throughput[0].images_per_s.unwrap(),
            reference.and_then(|r| r.throughput_fps),
            ratio
        ));
    }
}

/// A budget too short to bound a p99 (20 inferences per process, where a 95% bound needs
/// 368): without rounds to add, the gate is inconclusive whatever its limit, and the refusal
/// says how many samples it needs; with `retry:` room, the benchmark adds a round with the
/// time those samples take, and the same gate passes.
#[test]
fn a_p99_needs_its_samples_and_the_benchmark_adds_them() {
    let p = Project::new();
    let manifest = |retry: &str| {
        builtin_manifest(&format!(
            "
ov_fp32: {{kind: convert, params: {{backend: openvino, precision: fp32}}}}
benchmark:
  kind: benchmark
  params: {{targets: [ov_fp32], openvino_hints: [latency], warmup: 1, iterations: 20, time_budget_s: 0.05, processes: 2, retry: {retry}}}
release:
  kind: release
  params: {{artifacts: [ov_fp32], benchmark: benchmark, gates: {{p99_ms_max: 100000, rss_mib_max: 100000}}}}
"
        ))
    };
    p.write("tiny.yaml", &manifest("{attempts: 2}"));
    let (code, r) = p.run_json("tiny.yaml", &["--keep-going"]);
    assert_eq!(code, 1, "the release must be refused: {r:#?}");
    let b: BenchmarkReport = p.report("out/t/benchmark/report.json");
    assert_eq!(b.results[0].processes.len(), 2);
    assert!(
        b.sequential.as_deref().is_some_and(
            |s| s.contains("0 round(s) added") && s.contains("2 of `retry.attempts: 2`")
        ),
        "{:?}",
        b.sequential
    );
    let err = release_err(&r);
    assert!(
        err.contains("p99_ms_max")
            && err.contains(
                "inconclusive: 40 samples cannot bound p99 from above at 95% (it needs 368)"
            ),
        "{err}"
    );
    let rep: facebuild::ReleaseReport = p.report("out/t/release/report.json");
    let gates = &rep.verdicts[0].gates;
    let g = |m: &str| gates.iter().find(|g| g.metric == m).unwrap();
    assert_eq!(g("p99_ms_max").status.as_deref(), Some("inconclusive"));
    assert!(g("rss_mib_max").passed && g("rss_mib_max").status.as_deref() == Some("pass"));
    let md = std::fs::read_to_string(p.path("out/t/benchmark/report.md")).unwrap();
    assert!(md.contains(", open] |"), "{md}");

    // Room for more rounds: the first takes the samples the p99 lacks (twice the time they
    // took so far), and the gate is decided.
    p.write("tiny.yaml", &manifest("{attempts: 4, total_s: 30}"));
    let (code, r) = p.run_json("tiny.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    let b: BenchmarkReport = p.report("out/t/benchmark/report.json");
    assert!(b.results[0].processes.len() >= 3, "{:?}", b.sequential);
    assert!(b.sequential.as_deref().unwrap().contains("round(s) added"));
    let samples: usize = b.results[0]
        .processes
        .iter()
        .map(|p| p.measured.latency_samples.unwrap())
        .sum();
    assert!(samples >= 368, "{samples}");
}

/// Releases are signed in the OpenSSF model-signing format, and sigstore's own tool accepts
/// them: with a key from `release keygen` (a file) and one from `openssl` (the PEM text, as
/// CI secrets come), `model_signing verify key` (model-signing 1.1.1 from PyPI, in its own
/// venv) passes on the version folder and on `current/`, and `facebuild release verify`
/// agrees, also on a release restored from the cache without the key. One changed byte, or
/// one added file, fails both, and facebuild names the file. A release built without a key
/// says so, and `release verify` reports it unsigned.
#[test]
fn signed_releases_verify_with_model_signing_and_tampering_is_named() {
    let p = Project::new();
    let manifest = indoc! {"
        schema: 1
        name: rec
        model:
          builtin: iresnet-mini
          task: recognition
          input: {name: input.1, shape: [1, 3, 112, 112]}
          preprocessing: {color: RGB, mean: [127.5, 127.5, 127.5], std: [127.5, 127.5, 127.5], size: [112, 112]}
        datasets:
          faces: {builtin: synthetic-faces, count: 12}
        steps:
          openvino_fp16: {kind: convert, params: {backend: openvino, precision: fp16}}
          compare: {kind: compare, params: {dataset: faces, candidates: [openvino_fp16], cosine_min: 0.99}}
          release: {kind: release, params: {artifacts: [openvino_fp16], compare: compare}}
    "};
    p.write("m.yaml", manifest);
    let python = uv_venv(p.dir.path(), &[&["model-signing==1.1.1", "pyopenssl"]]);
    let model_signing = python.with_file_name("model_signing");
    let ms_verify = |dir: &Path, public: &Path| {
        let out = std::process::Command::new(&model_signing)
            .args(["verify", "key", "--signature"])
            .arg(dir.join("model.sig"))
            .arg("--public_key")
            .arg(public)
            .arg(dir)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let fb_verify = |dir: &Path, public: &Path| {
        let out = p.run(&[
            "release",
            "verify",
            dir.to_str().unwrap(),
            "--public-key",
            public.to_str().unwrap(),
        ]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    // Unsigned: the release says so, and verify reports it.
    let (code, r) = p.run_json("m.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    let out = p.run(&["release", "keygen", "--out", "keys"]);
    assert!(out.status.success(), "{out:?}");
    let (keygen_private, keygen_public) = (
        p.path("keys/release-signing.pem"),
        p.path("keys/release-signing.pub.pem"),
    );
    let current = p.path("releases/rec/current");
    let (code, err) = fb_verify(&current, &keygen_public);
    assert_eq!(code, Some(1));
    assert!(err.contains("unsigned"), "{err}");

    let openssl = |args: &[&str]| {
        run_ok(
            std::process::Command::new("openssl")
                .args(args)
                .current_dir(p.dir.path()),
        );
    };
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        "o.pem",
    ]);
    openssl(&["pkey", "-in", "o.pem", "-pubout", "-out", "o.pub.pem"]);
    let openssl_pem = std::fs::read_to_string(p.path("o.pem")).unwrap();
    for (key, public) in [
        (
            keygen_private.to_str().unwrap().to_string(),
            keygen_public.clone(),
        ),
        (openssl_pem, p.path("o.pub.pem")),
    ] {
        let _ = std::fs::remove_dir_all(p.path("releases"));
        run_ok(
            p.std_cmd()
                .args(["run", "m.yaml", "--no-cache", "--json"])
                .env("FACEBUILD_RELEASE_SIGNING_KEY", &key)
                .env("GITHUB_SERVER_URL", "https://github.com")
                .env("GITHUB_REPOSITORY", "acme/faces")
                .env("GITHUB_RUN_ID", "42"),
        );
        let version = std::fs::read_to_string(p.path("releases/rec/CURRENT")).unwrap();
        let vdir = p.path(&format!("releases/rec/{}", version.trim()));
        for dir in [&vdir, &current] {
            let (ok, err) = ms_verify(dir, &public);
            assert!(ok, "model_signing on {}: {err}", dir.display());
            assert_eq!(fb_verify(dir, &public).0, Some(0));
        }
        check_provenance(&vdir);
    }

    // A release restored from the cache (a cleaned disk, another machine) comes back with
    // its signature, without the key.
    let public = p.path("o.pub.pem");
    std::fs::remove_dir_all(p.path("releases")).unwrap();
    let (code, r) = p.run_json("m.yaml", &[]);
    assert_eq!((code, status_of(&r, "release")), (0, Status::Cached));
    assert!(ms_verify(&current, &public).0);
    assert_eq!(fb_verify(&current, &public).0, Some(0));

    // One byte changed, one file added: both tools fail, facebuild names the files.
    let xml = current.join("openvino_fp16/model.xml");
    let mut bytes = std::fs::read(&xml).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&xml, bytes).unwrap();
    assert!(!ms_verify(&current, &public).0);
    let (code, err) = fb_verify(&current, &public);
    assert_eq!(code, Some(1));
    assert!(err.contains("`openvino_fp16/model.xml` changed"), "{err}");
    assert!(
        err.contains("`openvino_fp16/model.xml` differs from what provenance.intoto.json says"),
        "{err}"
    );
    let version = std::fs::read_to_string(p.path("releases/rec/CURRENT")).unwrap();
    let vdir = p.path(&format!("releases/rec/{}", version.trim()));
    std::fs::write(vdir.join("NOTES.txt"), "added later").unwrap();
    assert!(!ms_verify(&vdir, &public).0);
    let (code, err) = fb_verify(&vdir, &public);
    assert_eq!(code, Some(1));
    assert!(err.contains("`NOTES.txt` is not signed"), "{err}");
    // Another key: refused.
    let (code, err) = fb_verify(&vdir, &keygen_public);
    assert_eq!(code, Some(1));
    assert!(err.contains("another key"), "{err}");
}

/// The release's SLSA provenance: a signed DSSE envelope over an in-toto statement whose
/// subjects are every file but `model.sig` and itself, built from the manifest, the source
/// model, the datasets and the locked toolchain, in the CI run the environment names.
fn check_provenance(vdir: &Path) {
    use base64::Engine;
    let env: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vdir.join("provenance.intoto.json")).unwrap())
            .unwrap();
    assert_eq!(env["payloadType"], "application/vnd.in-toto+json");
    assert_eq!(env["signatures"].as_array().unwrap().len(), 1);
    let payload = base64::engine::general_purpose::STANDARD
        .decode(env["payload"].as_str().unwrap())
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(st["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(st["predicateType"], "https://slsa.dev/provenance/v1");
    let mut names: Vec<&str> = st["subject"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ROLLBACK.md",
            "SHA256SUMS",
            "metadata.json",
            "openvino_fp16/model.bin",
            "openvino_fp16/model.xml",
            "ovms/README.md",
            "ovms/config.json",
            "ovms/models/rec_openvino_fp16/1/model.bin",
            "ovms/models/rec_openvino_fp16/1/model.xml",
            "ovms/preprocessing.json",
            "triton/rec_openvino_fp16/1/model.bin",
            "triton/rec_openvino_fp16/1/model.xml",
            "triton/rec_openvino_fp16/config.pbtxt",
        ]
    );
    let pred = &st["predicate"];
    assert_eq!(
        pred["buildDefinition"]["externalParameters"]["pipeline"],
        "rec"
    );
    let deps = pred["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap();
    assert!(deps.iter().any(
        |d| d["name"] == "source model" && d["digest"]["sha256"].as_str().unwrap().len() == 64
    ));
    assert!(deps.iter().any(|d| d["name"] == "dataset faces"));
    assert!(
        deps.iter().any(|d| d["name"] == "openvino"
            && !d["annotations"]["locked_sha256"]
                .as_array()
                .unwrap()
                .is_empty()),
        "{deps:#?}"
    );
    assert_eq!(
        pred["runDetails"]["metadata"]["invocationId"],
        "https://github.com/acme/faces/actions/runs/42/attempts/1"
    );
    assert!(
        pred["runDetails"]["builder"]["id"]
            .as_str()
            .unwrap()
            .starts_with("https://facebuild.dev/facebuild@")
    );
}

/// Reads every `<dir>/*/config.pbtxt` with protobuf's text_format into Triton's ModelConfig
/// (tritonclient's model_config_pb2, loaded by path: its package imports grpc) and prints
/// them as JSON, by model.
const PARSE_TRITON: &str = r#"
import glob, importlib.util, json, os, sys
import tritonclient
from google.protobuf import json_format, text_format
path = os.path.join(os.path.dirname(tritonclient.__file__), "grpc", "model_config_pb2.py")
spec = importlib.util.spec_from_file_location("model_config_pb2", path)
pb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pb)
out = {}
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*", "config.pbtxt"))):
    cfg = text_format.Parse(open(f).read(), pb.ModelConfig())
    out[os.path.basename(os.path.dirname(f))] = json_format.MessageToDict(
        cfg, preserving_proto_field_name=True)
print(json.dumps(out))
"#;

/// Serves `ovms/config.json` the way OpenVINO Model Server loads it, in OpenVINO itself:
/// each model from its `base_path` (relative to the config), with the config's layout and
/// shape ranges, the preprocessing.json's mean/scale applied by PrePostProcessor as OVMS's
/// `--mean`/`--scale` do, compiled with its plugin_config, and run on raw pixels at two batch
/// sizes. The output must equal the model's on pixels normalized by hand. Prints
/// `name batch max_abs_diff` per model and batch.
const APPLY_OVMS: &str = r#"
import json, os, sys
import numpy as np
import openvino as ov
root = sys.argv[1]
config = json.load(open(os.path.join(root, "config.json")))
pre = json.load(open(os.path.join(root, "preprocessing.json")))["models"]
core = ov.Core()
for entry in config["model_config_list"]:
    c = entry["config"]
    vdir = os.path.join(root, c["base_path"], "1")
    files = [f for f in os.listdir(vdir) if f.endswith((".xml", ".onnx"))]
    assert len(files) == 1, files
    name = c["name"]
    p = pre[name]
    mean = json.loads(p["mean"]); scale = json.loads(p["scale"])
    def load(with_pre):
        m = core.read_model(os.path.join(vdir, files[0]))
        inp = p["input"]
        shape = c["shape"][inp].strip("()").replace(":", "..")
        m.reshape({inp: ov.PartialShape("[" + shape + "]")})
        ppp = ov.preprocess.PrePostProcessor(m)
        ppp.input(inp).model().set_layout(ov.Layout(c["layout"][inp]))
        if with_pre:
            ppp.input(inp).preprocess().mean(mean).scale(scale)
        m = ppp.build()
        return core.compile_model(m, c["target_device"], c.get("plugin_config", {}))
    served, plain = load(True), load(False)
    rng = np.random.default_rng(0)
    for batch in (1, 3):
        raw = rng.integers(0, 256, (batch, 3, 112, 112)).astype(np.float32)
        by_hand = (raw - np.array(mean, np.float32)[None, :, None, None]) / np.array(scale, np.float32)[None, :, None, None]
        a = served(raw)[0]; b = plain(by_hand)[0]
        assert a.shape[0] == batch, a.shape
        print(name, batch, float(np.abs(a - b).max()))
"#;

/// The keys OVMS's config.json schema accepts in a model's `config` (openvinotoolkit/
/// model_server, src/schema.cpp, MODEL_CONFIG_DEFINITION, `additionalProperties: false`).
const OVMS_CONFIG_KEYS: &[&str] = &[
    "name",
    "base_path",
    "batch_size",
    "graph_path",
    "subconfig",
    "model_version_policy",
    "shape",
    "layout",
    "nireq",
    "target_device",
    "allow_cache",
    "plugin_config",
    "custom_loader_options",
];

/// Every artifact kind gets a Triton model whose config.pbtxt parses into Triton's own
/// ModelConfig, with dims, batch and profiles as the manifest declares them; the OVMS layout
/// keeps to OVMS's schema and, applied in OpenVINO as OVMS applies it, computes what the
/// model computes on normalized pixels. A cached release restored elsewhere brings both.
#[test]
fn deploy_layouts_parse_as_triton_configs_and_apply_as_ovms_does() {
    let p = Project::new();
    p.write(
        "m.yaml",
        indoc! {"
        schema: 1
        name: rec
        model:
          builtin: iresnet-mini
          task: recognition
          input: {name: input.1, shape: [batch, 3, 112, 112], dims: {batch: {min: 1, opt: 4, max: 8}}}
          preprocessing: {color: RGB, mean: [127.5, 127.5, 127.5], std: [127.5, 127.5, 127.5], size: [112, 112]}
        datasets:
          faces: {builtin: synthetic-faces, count: 8}
        steps:
          onnx_fp32: {kind: simplify, params: {samples: 1}}
          calibrate: {kind: calibrate, params: {dataset: faces}}
          qdq_int8: {kind: quantize, from: onnx_fp32, params: {calibration: calibrate}}
          ov_fp32: {kind: convert, params: {backend: openvino, precision: fp32}}
          ov_fp16: {kind: convert, params: {backend: openvino, precision: fp16}}
          ov_int8: {kind: convert, params: {backend: openvino, precision: int8, calibration: calibrate}}
          trt_fp16: {kind: convert, from: onnx_fp32, params: {backend: tensorrt, precision: fp16}}
          compare: {kind: compare, params: {dataset: faces, candidates: [ov_fp32, ov_fp16, ov_int8, qdq_int8], cosine_min: 0.5}}
          bench: {kind: benchmark, params: {targets: [ov_fp16], batch_sizes: [1, 4], time_budget_s: 0.2, iterations: 5, warmup: 1}}
          release: {kind: release, params: {artifacts: [onnx_fp32, qdq_int8, ov_fp32, ov_fp16, ov_int8, trt_fp16], compare: compare, benchmark: bench}}
    "},
    );
    // The labelled trtexec stand-in makes the plan: no TensorRT can be installed here.
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/trtexec-standin"
    );
    let home = p.path("trt");
    std::fs::create_dir_all(home.join("bin")).unwrap();
    std::fs::copy(format!("{fixture}/bin/trtexec"), home.join("bin/trtexec")).unwrap();
    let path = format!("{fixture}/driver:{}", std::env::var("PATH").unwrap());
    let out = run_ok(
        p.std_cmd()
            .args(["run", "m.yaml", "--json"])
            .env("TENSORRT_HOME", &home)
            .env("PATH", &path)
            .env("FACEBUILD_ALLOW_TRTEXEC_STANDIN", "1"),
    );
    let r: RunReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status_of(&r, "release"), Status::Built, "{r:#?}");
    let current = p.path("releases/rec/current");

    // Triton: one model per artifact, parsed by Triton's own proto.
    let python = uv_venv(p.dir.path(), &[&["tritonclient==2.73.0", "protobuf"]]);
    let out = run_ok(
        std::process::Command::new(&python)
            .args(["-c", PARSE_TRITON])
            .arg(current.join("triton")),
    );
    let configs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    say(&format!("triton configs: {configs:#}"));
    let expect = [
        (
            "rec_onnx_fp32",
            Some("onnxruntime_onnx"),
            None,
            "KIND_CPU",
            "model.onnx",
        ),
        (
            "rec_qdq_int8",
            Some("onnxruntime_onnx"),
            None,
            "KIND_GPU",
            "model.onnx",
        ),
        (
            "rec_ov_fp32",
            None,
            Some("openvino"),
            "KIND_CPU",
            "model.xml",
        ),
        (
            "rec_ov_fp16",
            None,
            Some("openvino"),
            "KIND_CPU",
            "model.xml",
        ),
        (
            "rec_ov_int8",
            None,
            Some("openvino"),
            "KIND_CPU",
            "model.bin",
        ),
        (
            "rec_trt_fp16",
            Some("tensorrt_plan"),
            None,
            "KIND_GPU",
            "model.plan",
        ),
    ];
    assert_eq!(
        configs.as_object().unwrap().len(),
        expect.len(),
        "{configs:#}"
    );
    for (name, platform, backend, kind, file) in expect {
        let c = &configs[name];
        assert_eq!(c["name"], name);
        assert_eq!(c["platform"].as_str(), platform, "{name}");
        assert_eq!(c["backend"].as_str(), backend, "{name}");
        // The batch dim is the manifest's `batch`, up to its max; the rest as declared.
        assert_eq!(c["max_batch_size"], 8, "{name}");
        assert_eq!(c["input"][0]["name"], "input.1");
        assert_eq!(c["input"][0]["data_type"], "TYPE_FP32");
        assert_eq!(
            c["input"][0]["dims"],
            serde_json::json!(["3", "112", "112"])
        );
        assert_eq!(c["output"][0]["dims"], serde_json::json!(["512"]), "{name}");
        assert_eq!(c["instance_group"][0]["kind"], kind, "{name}");
        assert!(
            current
                .join("triton")
                .join(name)
                .join("1")
                .join(file)
                .is_file()
        );
    }
    // The benchmark's best batch of ov_fp16 is one of those it measured.
    let preferred = &configs["rec_ov_fp16"]["dynamic_batching"]["preferred_batch_size"][0];
    assert!(preferred == 1 || preferred == 4, "{preferred}");
    // Profiles: the Q/DQ model through ONNX Runtime's TensorRT accelerator, the plan's
    // instances on its profile 0, both the declared min/opt/max.
    let trt = &configs["rec_qdq_int8"]["optimization"]["execution_accelerators"]["gpu_execution_accelerator"]
        [0];
    assert_eq!(trt["name"], "tensorrt");
    for (k, v) in [
        ("trt_profile_min_shapes", "input.1:1x3x112x112"),
        ("trt_profile_opt_shapes", "input.1:4x3x112x112"),
        ("trt_profile_max_shapes", "input.1:8x3x112x112"),
        ("precision_mode", "INT8"),
    ] {
        assert_eq!(trt["parameters"][k], v, "{trt:#}");
    }
    let plan = &configs["rec_trt_fp16"];
    assert_eq!(
        plan["instance_group"][0]["profile"],
        serde_json::json!(["0"])
    );
    assert_eq!(
        plan["parameters"]["facebuild_profile_max_shapes"]["string_value"],
        "input.1:8x3x112x112"
    );

    // OVMS: IR and ONNX models (not plans), keys OVMS's schema accepts, applied as it does.
    let ovms: serde_json::Value =
        serde_json::from_slice(&std::fs::read(current.join("ovms/config.json")).unwrap()).unwrap();
    let list = ovms["model_config_list"].as_array().unwrap();
    assert_eq!(list.len(), 5, "{ovms:#}");
    for e in list {
        for k in e["config"].as_object().unwrap().keys() {
            assert!(OVMS_CONFIG_KEYS.contains(&k.as_str()), "OVMS refuses `{k}`");
        }
        assert_eq!(e["config"]["shape"]["input.1"], "(1:8,3,112,112)");
        assert_eq!(e["config"]["layout"]["input.1"], "NCHW");
    }
    let out = run_ok(
        std::process::Command::new(toolchain_python())
            .args(["-c", APPLY_OVMS])
            .arg(current.join("ovms")),
    );
    let applied = String::from_utf8_lossy(&out.stdout).to_string();
    say(&format!("ovms applied:\n{applied}"));
    assert_eq!(applied.lines().count(), 10, "{applied}");
    for l in applied.lines() {
        let diff: f64 = l.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(diff < 1e-3, "{l}");
    }

    // Every layout file is signed for in SHA256SUMS and comes back from the cache.
    let sums = std::fs::read_to_string(current.join("SHA256SUMS")).unwrap();
    for f in [
        "triton/rec_trt_fp16/config.pbtxt",
        "triton/rec_trt_fp16/1/model.plan",
        "ovms/config.json",
        "ovms/models/rec_ov_int8/1/model.bin",
    ] {
        assert!(sums.contains(&format!("  {f}\n")), "{f} not in SHA256SUMS");
    }
    let version = std::fs::read_to_string(p.path("releases/rec/CURRENT")).unwrap();
    std::fs::remove_dir_all(p.path("releases")).unwrap();
    run_ok(
        p.std_cmd()
            .args(["run", "m.yaml"])
            .env("TENSORRT_HOME", &home)
            .env("PATH", &path)
            .env("FACEBUILD_ALLOW_TRTEXEC_STANDIN", "1"),
    );
    let restored = p.path(&format!("releases/rec/{}", version.trim()));
    let again = std::fs::read_to_string(restored.join("SHA256SUMS")).unwrap();
    assert_eq!(again, sums);
    assert!(restored.join("triton/rec_trt_fp16/config.pbtxt").is_file());
}
