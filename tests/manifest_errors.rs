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
    assert!(nothing_ran(&p), "nothing may run");
    // The whole message, as a reviewer should see it change.
    snapshot(&p, "", &stderr);
    stderr
}

/// No step left an action record in the project's cache.
fn nothing_ran(p: &Project) -> bool {
    !p.path("cache/actions").exists()
        || std::fs::read_dir(p.path("cache/actions"))
            .unwrap()
            .next()
            .is_none()
}

/// A cycle is reported with its whole path, at the first step in it.
#[test]
fn cycle_is_located_with_its_path() {
    let steps = indoc! {"
          a:
            kind: check
            needs: [c]
          b:
            kind: check
            needs: [a]
          c:
            kind: check
            needs: [b]
    "};
    // Line 10 is `  a:`; the cycle is printed in full.
    expect_error(
        &builtin_manifest(steps),
        &["bad.yaml:11:5", "dependency cycle: a -> b -> c -> a"],
    );
}

/// An unknown params key is located at the key, with the known ones.
#[test]
fn unknown_key_is_located() {
    let steps = indoc! {"
          s:
            kind: simplify
            params:
              cosine_mn: 0.9
    "};
    expect_error(
        &builtin_manifest(steps),
        &["bad.yaml:13:7", "unknown field `cosine_mn`", "cosine_min"],
    );
}

/// A value of the wrong type is located at the value.
#[test]
fn wrong_type_is_located() {
    let steps = indoc! {"
          s:
            kind: simplify
            params:
              samples: many
    "};
    expect_error(&builtin_manifest(steps), &["bad.yaml:13:16", "samples"]);
}

/// An unknown step kind lists the known ones.
#[test]
fn unknown_step_kind_lists_the_known_ones() {
    expect_error(
        &builtin_manifest("  s:\n    kind: simplfy\n"),
        &["bad.yaml:11:11", "simplfy", "check", "simplify"],
    );
}

/// A `needs` naming no step is located at the reference.
#[test]
fn missing_needs_target_is_located() {
    expect_error(
        &builtin_manifest("  s:\n    kind: check\n    needs: [nope]\n"),
        &["bad.yaml:12:13", "`nope`, which is not a step"],
    );
}

/// An unknown top-level key and an unsupported schema are located.
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

/// `from` must name a step that produces a model.
#[test]
fn from_must_name_a_model_producing_step() {
    expect_error(
        &builtin_manifest("  a:\n    kind: check\n  b:\n    kind: check\n    from: a\n"),
        &["bad.yaml:14:11", "produces no model"],
    );
}

/// A manifest that is not there is a usage error.
#[test]
fn missing_manifest_is_a_usage_error() {
    let p = Project::new();
    let out = p.run(&["plan", "nope.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read manifest nope.yaml"));
}

/// Several independent mistakes are reported together, each located.
#[test]
fn several_errors_are_reported_in_one_go() {
    let steps = indoc! {"
          a:
            kind: check
            needs: [nope]
          b:
            kind: check
            from: a
          c:
            kind: compare
            params: {dataset: missing, candidates: [a]}
    "};
    let err = expect_error(
        &builtin_manifest(steps),
        &[
            "bad.yaml:12:13",
            "`nope`, which is not a step",
            "bad.yaml:15:11",
            "produces no model",
            "dataset `missing`",
            "names `a`, a `check` step",
            "problems in the manifest",
        ],
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// Names that would escape their folder (`..`, `.`, hidden) are refused where they are
/// written: the pipeline's name and a step's.
#[test]
fn names_that_escape_their_folder_are_refused() {
    let m = builtin_manifest("  s:\n    kind: check\n");
    expect_error(
        &m.replace("name: t", "name: '..'"),
        &["bad.yaml", "invalid name `..`", "not starting with `.`"],
    );
    expect_error(&m.replace("name: t", "name: ."), &["invalid name `.`"]);
    expect_error(
        &builtin_manifest("  ..:\n    kind: check\n"),
        &["bad.yaml:11:5", "invalid name `..`"],
    );
}

/// The second line of defence: `release rollback` refuses a pipeline or version that
/// would leave the releases folder, before touching anything.
#[test]
fn rollback_refuses_paths_that_escape_the_releases_folder() {
    let p = Project::new();
    std::fs::create_dir_all(p.path("releases")).unwrap();
    for (pipeline, version) in [("..", "x"), ("p", ".."), ("a/b", "x")] {
        let out = p.run(&[
            "release", "rollback", pipeline, version, "--dir", "releases",
        ]);
        assert_eq!(out.status.code(), Some(2), "{pipeline} {version}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("would escape that folder"), "{stderr}");
    }
}

/// `preprocessing.size` written width first against a static input (what a new user wrote
/// for Ultra-Light RFB-320's `[1, 3, 240, 320]`) is caught before anything runs, saying the
/// two are swapped and how to write it.
#[test]
fn preprocessing_size_contradicting_a_static_input_is_caught() {
    let yaml = indoc! {"
        schema: 1
        name: rfb
        model:
          task: detection
          input: {name: input, shape: [1, 3, 240, 320]}
          preprocessing: {color: RGB, mean: [127, 127, 127], std: [128, 128, 128], size: [320, 240]}
        steps:
          check: {kind: check}
    "};
    let err = expect_error(
        yaml,
        &[
            "bad.yaml:",
            "`model.preprocessing.size` is [320, 240]",
            "240 x 320 (height x width): width and height are swapped",
            "size: [240, 320]",
        ],
    );
    assert!(!err.contains("panicked"));
}

/// Custom toolchain pins must be hash-locked before anything installs them: a run without
/// the lock says which command writes it, and a lock written for other pins is refused.
#[test]
fn custom_pins_need_their_own_lock() {
    let p = Project::new();
    let yaml = builtin_manifest("check: {kind: check}\n").replace(
        "steps:\n",
        "toolchain:\n  python: {onnx: \"1.17.0\"}\nsteps:\n",
    );
    p.write("pins.yaml", &yaml);
    let out = p.run(&["run", "pins.yaml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("custom `toolchain.python` pins have no lock")
            && err.contains("facebuild toolchain lock"),
        "{err}"
    );
    // A lock written for the default pins does not serve these.
    let default_lock = p.run(&["toolchain", "lock"]);
    assert!(default_lock.status.success());
    std::fs::write(p.path("pins.toolchain.lock"), &default_lock.stdout).unwrap();
    let out = p.run(&["run", "pins.yaml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("was locked for other pins")
            && err.contains("facebuild toolchain lock pins.yaml"),
        "{err}"
    );
}

/// Mean and std give one value per channel; a channels-last input declared NCHW is caught
/// with the layout to write.
#[test]
fn mean_std_and_channel_count_are_checked_against_the_input() {
    let yaml = indoc! {"
        schema: 1
        name: chans
        model:
          task: recognition
          input: {name: input, shape: [1, 3, 112, 112]}
          preprocessing: {color: BGR, mean: [127.5], std: [127.5, 127.5, 127.5, 1], size: [112, 112]}
        steps:
          check: {kind: check}
    "};
    expect_error(
        yaml,
        &[
            "bad.yaml:4:3:",
            "`model.preprocessing.mean` has 1 value(s); the input has 3 channels (B, G, R)",
            "`model.preprocessing.std` has 4 value(s)",
            "give one per channel, in the `color` order: `mean: [127.5, 127.5, 127.5]`",
        ],
    );
    let yaml = indoc! {"
        schema: 1
        name: nhwc
        model:
          task: recognition
          input: {name: input, shape: [1, 112, 112, 3]}
          preprocessing: {size: [112, 112]}
        steps:
          check: {kind: check}
    "};
    expect_error(
        yaml,
        &[
            "has 112 channels (NCHW), and `model.preprocessing.color: RGB` feeds 3",
            "the channels come last: set `layout: NHWC`",
        ],
    );
}

/// `detector.family` is checked against the outputs the model really has, before any step.
#[test]
fn detector_family_must_match_the_model_outputs() {
    let Some(shared) = shared() else { return };
    let yaml = format!(
        indoc! {"
            schema: 1
            name: fam
            model:
              path: {m}
              task: detection
              input: {{name: input0, shape: [1, 3, 640, 640]}}
              preprocessing: {{color: BGR, mean: [104, 117, 123], std: [1, 1, 1], size: [640, 640]}}
              detector: {{family: scrfd}}
            steps:
              check: {{kind: check}}
        "},
        m = shared.join("models/retinaface_mnet_640.onnx").display()
    );
    let p = Project::new();
    p.write("bad.yaml", &yaml);
    for cmd in ["plan", "run"] {
        let out = p.run(&[cmd, "bad.yaml"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {err}");
        for n in [
            "bad.yaml:4:",
            "`model.detector.family` is `scrfd`, but",
            "RetinaFace's outputs: boxes (N x 4), scores (N x 2) and landmarks (N x 10)",
            "output0 [1, Concatoutput0_dim_1, 4]",
            "set `family: retinaface`",
        ] {
            assert!(err.contains(n), "{cmd}: missing `{n}` in:\n{err}");
        }
        assert!(nothing_ran(&p), "{cmd}: nothing may run");
    }
}

/// A manifest that parses but has several independent mistakes reports all of them at once,
/// each located.
#[test]
fn several_errors_are_reported_together() {
    let yaml = indoc! {"
        schema: 1
        name: many
        model:
          task: detection
          input: {name: input, shape: [1, 3, 240, 320]}
          preprocessing: {color: RGB, mean: [127, 127], std: [128, 128, 128], size: [320, 240]}
        datasets:
          photos: {path: \"<REPLACE: a folder of photos with faces>\"}
          both: {path: x, builtin: synthetic-faces}
        steps:
          check: {kind: check}
          simplify: {kind: simplify, needs: [chek]}
          compare: {kind: compare, params: {dataset: nope, candidates: [simplify]}}
    "};
    let err = expect_error(
        yaml,
        &[
            "width and height are swapped",
            "`model.preprocessing.mean` has 2 value(s)",
            "bad.yaml:8:",
            "dataset `photos` still has the placeholder `facebuild init` wrote",
            "dataset `both` needs exactly one of `path`, `builtin` and `derive`",
            "needs `chek`, which is not a step in this pipeline",
            "nope",
        ],
    );
    assert!(err.matches("bad.yaml:").count() >= 6, "{err}");
}

/// Two built-in models under `models:`, then `steps`.
fn pack_manifest(steps: &str) -> String {
    format!(
        "{}datasets:
  faces: {{builtin: synthetic-faces, count: 4}}
steps:
{steps}",
        builtin_pack_models("127.5, 127.5, 127.5")
    )
}

/// A pack's steps must say which model they build, and name only declared models; a
/// one-model pipeline takes neither `model:` nor `each:`; `model:` and `models:` exclude
/// each other. Every problem at its line, with the fix.
#[test]
fn pack_steps_name_their_models() {
    let steps = indoc! {"
          simplify: {kind: simplify, each: [det, lmk], params: {samples: 1}}
          check: {kind: check}
          fp16: {kind: convert, model: recognizer, params: {backend: openvino, precision: fp16}}
    "};
    expect_error(
        &pack_manifest(&textwrap_indent(steps)),
        &[
            "`each` names `lmk`, which is not among `models:` (det, rec)",
            "step `check`: which model does it build?",
            "`model: recognizer` is not among `models:`",
        ],
    );
    let one = builtin_manifest(indoc! {"
          s: {kind: simplify, model: rec, each: [rec]}
    "});
    expect_error(&one, &["has `each:`, but the pipeline has one `model:`"]);
    let both = pack_manifest("  s: {kind: check, model: det}\n").replace(
        "models:\n",
        "model: {builtin: iresnet-mini, task: recognition, input: {name: input.1, shape: [1, 3, 112, 112]}}\nmodels:\n",
    );
    expect_error(&both, &["both `model:` and `models:`"]);
}

fn textwrap_indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

/// A derived dataset's mistakes are located at the dataset, each with its fix, all at once.
#[test]
fn derived_dataset_settings_are_checked() {
    let yaml = format!(
        "{}{}",
        builtin_manifest("a: {kind: calibrate, params: {dataset: crowd}}\n"),
        indoc! {"
            datasets:
              portraits: {builtin: synthetic-faces}
              crowd:
                derive:
                  from: portrait
                  mosaic: {count: 0, face_sizes: [0.7]}
                  rotate: [90]
              both:
                path: photos
                derive: {from: portraits, flip: true}
        "}
    );
    expect_error(
        &yaml,
        &[
            "dataset `crowd`: `derive.from` names `portrait`, which is not a dataset",
            "`derive.mosaic.count` is 0",
            "`derive.mosaic.face_sizes` is [0.7]",
            "`derive.rotate` is [90.0]",
            "dataset `both` has `derive` and `path` or `builtin`",
        ],
    );
}

/// A detector head described as data is checked against the model's outputs before any
/// step, and a preset name that does not exist lists the ones that do.
#[test]
fn detector_heads_are_checked_against_the_model() {
    let Some(shared) = shared() else { return };
    let manifest = |detector: &str| {
        format!(
            indoc! {"
                schema: 1
                name: head
                model:
                  path: {m}
                  task: detection
                  input: {{name: data, shape: [1, 3, 640, 640]}}
                  preprocessing: {{color: RGB, mean: [0, 0, 0], std: [255, 255, 255], size: [640, 640]}}
                  detector: {d}
                steps:
                  check: {{kind: check}}
            "},
            m = shared.join("models/wild/yolov5n_0.5_face.onnx").display(),
            d = detector,
        )
    };
    let p = Project::new();
    p.write("bad.yaml", &manifest("{preset: yunet}"));
    let out = p.run(&["plan", "bad.yaml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for n in [
        "bad.yaml:4:",
        "`model.detector` (`yunet`) does not fit",
        "no boxes (an output named `bbox_{stride}`)",
        "stride_8 [1, 3, 80, 80, 16]",
        "pick the preset `facebuild init` names",
    ] {
        assert!(err.contains(n), "missing `{n}` in:\n{err}");
    }
    assert!(nothing_ran(&p));
    p.write("ok.yaml", &manifest("{preset: yolov5_face}"));
    let out = p.run(&["plan", "ok.yaml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = p.run(&["plan", "bad.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    p.write("bad.yaml", &manifest("{preset: yunett}"));
    let err = String::from_utf8_lossy(&p.run(&["plan", "bad.yaml"]).stderr).to_string();
    for n in [
        "unknown detector preset `yunett`",
        "yunet, yolov5_face, yolov5_face_cat",
    ] {
        assert!(err.contains(n), "missing `{n}` in:\n{err}");
    }
    p.write("bad.yaml", &manifest("{head: {anchors: none}}"));
    let err = String::from_utf8_lossy(&p.run(&["plan", "bad.yaml"]).stderr).to_string();
    assert!(err.contains("missing field `boxes`"), "{err}");
}

/// ArcFace alignment needs InsightFace's five points: a dataset aligned by a head without
/// them (BlazeFace's six keypoints) is refused when the plan is made.
#[test]
fn alignment_needs_a_head_with_the_five_points() {
    let yaml = builtin_manifest(indoc! {"
        check: {kind: check}
    "})
    .replace(
        "steps:\n",
        "datasets:\n  photos:\n    path: photos\n    align: {model: det.onnx, detector: {preset: blazeface_front}}\nsteps:\n",
    );
    expect_error(
        &yaml,
        &[
            "dataset `photos`: `align.detector` (`blazeface_front`) gives no InsightFace five points",
            "crop by box",
        ],
    );
}
