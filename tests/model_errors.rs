//! Broken or mismatched models give clear errors and never a panic.

mod common;
use common::*;
use facebuild::CheckReport;

/// A one-step manifest (check) on the model at `path`; `model:` is on line 3.
fn manifest_for(path: &str, input: &str, shape: &str) -> String {
    format!(
        indoc! {"
            schema: 1
            name: t
            model:
              path: {}
              task: recognition
              input:
                name: {}
                shape: {}
            steps:
              check:
                kind: check
        "},
        path, input, shape
    )
}

fn builtin_bytes(p: &Project) -> Vec<u8> {
    let out = p.run(&["builtin", "iresnet-mini", "-o", "m.onnx"]);
    assert!(out.status.success());
    std::fs::read(p.path("m.onnx")).unwrap()
}

/// A truncated ONNX file fails check naming the file, with a hint.
#[test]
fn truncated_onnx_is_a_clear_error() {
    let p = Project::new();
    let bytes = builtin_bytes(&p);
    std::fs::write(p.path("trunc.onnx"), &bytes[..bytes.len() / 3]).unwrap();
    p.write(
        "p.yaml",
        &manifest_for("trunc.onnx", "input.1", "[1, 3, 112, 112]"),
    );
    let (code, r) = p.run_json("p.yaml", &[]);
    assert_eq!(code, 1);
    let err = error_of(&r, "check");
    assert!(
        err.contains("trunc.onnx") && err.contains("not a valid ONNX ModelProto"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
}

/// An input the graph does not have, or a wrong dim, fails check with the fix.
#[test]
fn declared_input_mismatch_fails_check_with_the_fix() {
    let p = Project::new();
    builtin_bytes(&p);
    p.write(
        "p.yaml",
        &manifest_for("m.onnx", "data", "[1, 3, 112, 112]"),
    );
    let (code, r) = p.run_json("p.yaml", &[]);
    assert_eq!(code, 1);
    let err = error_of(&r, "check");
    assert!(
        err.contains("declares input `data`") && err.contains("input.1"),
        "{err}"
    );

    p.write(
        "p.yaml",
        &manifest_for("m.onnx", "input.1", "[1, 3, 224, 224]"),
    );
    let (code, r) = p.run_json("p.yaml", &[]);
    assert_eq!(code, 1);
    let err = error_of(&r, "check");
    assert!(
        err.contains("dim 2 is 112 in the graph but the manifest declares 224"),
        "{err}"
    );
    let report: CheckReport = p.report("out/t/check/report.json");
    assert!(!report.passed);
    assert!(!report.problems.is_empty());
}

/// A sha256 pin that does not match stops the run before any step, located.
#[test]
fn sha256_pin_mismatch_stops_before_any_step() {
    let p = Project::new();
    builtin_bytes(&p);
    let m = manifest_for("m.onnx", "input.1", "[1, 3, 112, 112]")
        .replace("  task:", &format!("  sha256: {}\n  task:", "0".repeat(64)));
    p.write("p.yaml", &m);
    let out = p.run(&["run", "p.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pins 0000") && stderr.contains("p.yaml:5:11"),
        "{stderr}"
    );
}

/// A model file that is not there is named with its path.
#[test]
fn missing_model_file_names_the_path() {
    let p = Project::new();
    p.write(
        "p.yaml",
        &manifest_for("nowhere.onnx", "input.1", "[1, 3, 112, 112]"),
    );
    let out = p.run(&["plan", "p.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere.onnx: model file not found"));
}

/// A helper's Python failure is a located step error: what failed, the exception, where it
/// was raised and the likely cause; the traceback goes to a file beside the reports, not in
/// the message. (Q/DQ on a model that ONNX Runtime already quantized fails in its quantizer.)
#[test]
fn a_helper_traceback_is_kept_apart_and_the_error_says_why() {
    let p = Project::new();
    builtin_bytes(&p);
    quantize_dynamic(&p.path("m.onnx"), &p.path("q.onnx"));
    p.write(
        "p.yaml",
        &manifest_for("q.onnx", "input.1", "[1, 3, 112, 112]").replace(
            "steps:\n",
            indoc! {"
                  preprocessing: {color: RGB, mean: [127.5, 127.5, 127.5], std: [127.5, 127.5, 127.5], size: [112, 112]}
                datasets:
                  faces: {builtin: synthetic-faces}
                steps:
                  calibrate: {kind: calibrate, params: {dataset: faces, count: 4}}
                  quantize: {kind: quantize, params: {calibration: calibrate}}
            "},
        ),
    );
    let (code, r) = p.run_json("p.yaml", &["-t", "quantize"]);
    assert_eq!(code, 1, "{r:#?}");
    assert_eq!(status_of(&r, "calibrate"), Status::Built, "{r:#?}");
    let err = error_of(&r, "quantize");
    assert!(err.contains("Q/DQ quantization failed: "), "{err}");
    assert!(err.contains(" (in ") && err.contains(".py:"), "{err}");
    assert!(!err.contains("Traceback (most recent call last)"), "{err}");
    let kept = p.path("out/t/quantize/traceback.txt");
    assert!(err.contains("traceback kept at "), "{err}");
    let tb = std::fs::read_to_string(&kept).unwrap();
    assert!(tb.contains("Traceback (most recent call last)"), "{tb}");
    eprintln!("{err}");
}
