//! Accuracy-controlled INT8 on the built-in model, through the real binary, ONNX Runtime's
//! Q/DQ quantizer and compare's metric: an unreachable target fails with the frontier in its
//! message, and a rerun with a reachable target reuses the memoized trials. (The searches
//! on real models take minutes; docs/manifest.md gives their figures.)

mod common;
use common::*;

fn manifest(target: f64, holdout: &str) -> String {
    builtin_manifest(&format!(
        indoc! {"
            calibrate: {{kind: calibrate, params: {{dataset: faces, count: 8}}}}
            quantize_ac:
              kind: quantize
              params:
                calibration: calibrate
                accuracy_control: {{dataset: search, metric: cosine_min, target: {target}, max_fp_layers: 2{holdout}}}
        "},
        target = target,
        holdout = holdout
    ))
    .replace(
        "steps:\n",
        "datasets:\n  faces: {builtin: synthetic-faces}\n  search: {builtin: synthetic-faces, count: 12, seed: 3}\nsteps:\n",
    )
    .replace(
        "    shape: [1, 3, 112, 112]\n",
        "    shape: [1, 3, 112, 112]\n  preprocessing: {color: RGB, mean: [127.5, 127.5, 127.5], std: [127.5, 127.5, 127.5], size: [112, 112]}\n",
    )
}

#[test]
fn unreachable_target_fails_with_the_frontier_and_trials_are_memoized() {
    let p = Project::new();
    // A min cosine no INT8 model reaches with two layers in floating point.
    p.write("ac.yaml", &manifest(0.999999, ""));
    let (code, r) = p.run_json("ac.yaml", &[]);
    assert_eq!(code, 1, "{r:#?}");
    let err = error_of(&r, "quantize_ac").to_string();
    for n in [
        "accuracy control: cosine_min >= 0.999999 is not reached with at most 2 of",
        "frontier (fp layers: cosine_min): sensitivity: 0: ",
        "from the output: 0: ",
        "from the input: 0: ",
        "most sensitive layers alone: ",
        "raise `max_fp_layers`",
        // Before layers, every other recipe with everything quantized; the layers are
        // searched with the best.
        "recipes tried, everything quantized: minmax, per-channel 0.",
        "percentile, per-channel 0.",
        "minmax, per-tensor 0.",
        "percentile, per-tensor 0.",
        "; layers searched with `",
    ] {
        assert!(err.contains(n), "missing `{n}` in:\n{err}");
    }
    let trials = std::fs::read_dir(p.path("cache/trials")).unwrap().count();
    assert!(trials > 3, "every trial is memoized ({trials})");

    // A looser target: a new step key, but the all-quantized trial is reused, and met; the
    // result is measured on a holdout set the search never saw.
    p.write("ac.yaml", &manifest(0.5, ", holdout: faces"));
    let (code, r) = p.run_json("ac.yaml", &[]);
    assert_eq!(code, 0, "{r:#?}");
    let rep: serde_json::Value = p.report("out/t/quantize_ac/report.json");
    let ac = &rep["accuracy_control"];
    assert_eq!(ac["fp_layers"], serde_json::json!([]));
    assert_eq!(ac["trials"][0]["memoized"], serde_json::json!(true), "{ac}");
    assert_eq!(ac["quantized_fraction"], serde_json::json!(1.0));
    // The step's own recipe met the target: no other recipe was tried.
    assert_eq!(ac["recipe"], "minmax, per-channel", "{ac}");
    assert_eq!(ac["recipes"].as_array().unwrap().len(), 1, "{ac}");
    assert!(
        ac["note"]
            .as_str()
            .unwrap()
            .contains("already meets the target"),
        "{ac}"
    );
    let h = &ac["holdout"];
    assert_eq!(h["dataset"], "faces");
    assert!(
        h["chosen"].as_f64().unwrap() > 0.5 && h["met"] == true,
        "{h}"
    );
    assert_eq!(
        std::fs::read_dir(p.path("cache/trials")).unwrap().count(),
        trials
    );
}
