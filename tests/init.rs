//! `facebuild init`: a pipeline written from an ONNX file plans once its dataset placeholders
//! are filled in (and is refused, placeholder by placeholder, before), and on the real models
//! in ../shared it builds and passes `compare` as written.

mod common;
use common::*;

/// Runs `init MODEL -o pipelines/<name>.yaml` in the project; returns the written text.
fn init(p: &Project, model: &std::path::Path, name: &str) -> String {
    let out = p.run(&[
        "init",
        model.to_str().unwrap(),
        "-o",
        &format!("pipelines/{name}.yaml"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "init {}: {}",
        model.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("next: fill in the 1 path(s)")
            || stdout.contains("next: fill in the 2 path(s)"),
        "{stdout}"
    );
    std::fs::read_to_string(p.path(&format!("pipelines/{name}.yaml"))).unwrap()
}

/// `plan` refuses the written file only for its placeholders, each located; `fill` then
/// replaces the placeholder line, and `plan` succeeds.
fn plans_once_filled(p: &Project, name: &str, text: &str, fill: &str) -> String {
    let file = format!("pipelines/{name}.yaml");
    let out = p.run(&["plan", &file]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{name}: {err}");
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.contains(&format!("{name}.yaml:")))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "{name}: only the placeholder may fail:\n{err}"
    );
    assert!(
        errors[0].contains("still has the placeholder `facebuild init` wrote"),
        "{err}"
    );
    let line = text
        .lines()
        .find(|l| l.contains("<REPLACE: "))
        .expect("a placeholder");
    let filled = text.replace(line, fill);
    p.write(&file, &filled);
    let out = p.run(&["plan", &file]);
    assert!(
        out.status.success(),
        "{name}: plan after filling in: {}\n{filled}",
        String::from_utf8_lossy(&out.stderr)
    );
    filled
}

/// Every built-in model: init guesses its task, and the pipeline plans with built-in data.
#[test]
fn init_on_the_builtin_models() {
    let p = Project::new();
    for (model, task, data) in [
        ("iresnet-mini", "recognition", "synthetic-faces"),
        ("iresnet18", "recognition", "synthetic-faces"),
        ("iresnet50", "recognition", "synthetic-faces"),
        ("scrfd-mini", "detection", "synthetic-scenes"),
    ] {
        let onnx = p.path(&format!("{model}.onnx"));
        let out = p.run(&["builtin", model, "-o", onnx.to_str().unwrap()]);
        assert!(out.status.success());
        let text = init(&p, &onnx, model);
        snapshot(&p, &format!("_{model}"), &text);
        assert!(text.contains(&format!("  task: {task}\n")), "{text}");
        if model == "scrfd-mini" {
            assert!(text.contains("shape: [1, 3, H, W]") && text.contains("family: scrfd"));
        } else {
            // A dynamic batch is fed as 1, and said so.
            assert!(
                text.contains("shape: [1, 3, 112, 112]")
                    && text.contains("batch dim is dynamic (`batch`)"),
                "{text}"
            );
        }
        plans_once_filled(&p, model, &text, &format!("    builtin: {data}"));
    }
    // Landmark and attribute models: box crops of the faces a detector finds, InsightFace's
    // feeding; on built-in data (already crops) the detector goes.
    let align = "    align:\n      model: \"<REPLACE: a face detector ONNX model for the crops, e.g. SCRFD>\"\n      detector: {family: scrfd}\n";
    for (model, task, size) in [
        ("lmk106-mini", "landmarks", 192),
        ("lmk3d68-mini", "landmarks", 192),
        ("genderage-mini", "attribute", 96),
    ] {
        let onnx = p.path(&format!("{model}.onnx"));
        let out = p.run(&["builtin", model, "-o", onnx.to_str().unwrap()]);
        assert!(out.status.success());
        let text = init(&p, &onnx, model);
        snapshot(&p, &format!("_{model}"), &text);
        for want in [
            format!("  task: {task}\n"),
            format!("shape: [1, 3, {size}, {size}]"),
            "    crop: {mode: box, scale: 1.5}\n".into(),
            "    mean: [127.5, 127.5, 127.5]\n    std: [128, 128, 128]".into(),
            align.into(),
        ] {
            assert!(text.contains(&want), "{model}: `{want}` not in\n{text}");
        }
        let text = text.replace(align, "");
        p.write(&format!("pipelines/{model}.yaml"), &text);
        plans_once_filled(&p, model, &text, "    builtin: synthetic-faces");
    }
}

/// A model whose graph says `-1` for the batch (how Paddle2ONNX spells a dynamic dim): init
/// calls it dynamic and feeds batch 1, and its own `check` accepts what it wrote.
#[test]
fn init_reads_minus_one_as_dynamic_and_check_accepts_it() {
    let p = Project::new();
    let onnx = p.path("mini.onnx");
    let out = p.run(&["builtin", "iresnet-mini", "-o", onnx.to_str().unwrap()]);
    assert!(out.status.success());
    let patched = p.path("paddle_style.onnx");
    let script = "import onnx, sys
m = onnx.load(sys.argv[1])
for v in (m.graph.input[0], m.graph.output[0]):
    d = v.type.tensor_type.shape.dim[0]
    d.Clear()
    d.dim_value = -1
onnx.save(m, sys.argv[2])";
    run_toolchain_python(script, &[&onnx, &patched]);
    let text = init(&p, &patched, "paddle_style");
    assert!(
        text.contains("shape: [1, 3, 112, 112]") && text.contains("batch dim is dynamic (`?0`)"),
        "{text}"
    );
    plans_once_filled(&p, "paddle_style", &text, "    builtin: synthetic-faces");
    let (code, r) = p.run_json("pipelines/paddle_style.yaml", &["-t", "check"]);
    assert_eq!(code, 0, "{r:#?}");
}

/// InsightFace-shaped landmark models (192 x 192 input; 2d106det's `[N, 212]`, 1k3d68's
/// `[N, 3309]`), built small with the `onnx` package: init calls them `landmarks` and writes
/// InsightFace's feeding (box crop 1.5, RGB, (x - 127.5) / 128, points in [-1, 1]) without a
/// CHECK on it, 2d106det's eye corners for 106 points, a pose gate for 3D-68, and a
/// detector placeholder for the crops.
#[test]
fn init_reads_insightface_landmark_models() {
    let p = Project::new();
    let script = "import onnx, sys
from onnx import helper, TensorProto
import numpy as np
width = int(sys.argv[2])
w = helper.make_tensor('w', TensorProto.FLOAT, [3, width], np.full(3 * width, 0.01, np.float32).tolist())
g = helper.make_graph(
    [helper.make_node('GlobalAveragePool', ['data'], ['p']),
     helper.make_node('Flatten', ['p'], ['f']),
     helper.make_node('MatMul', ['f', 'w'], ['fc1'])],
    'lmk', [helper.make_tensor_value_info('data', TensorProto.FLOAT, ['N', 3, 192, 192])],
    [helper.make_tensor_value_info('fc1', TensorProto.FLOAT, ['N', width])], [w])
m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 13)])
m.ir_version = 8
onnx.checker.check_model(m)
onnx.save(m, sys.argv[1])";
    for (name, width, says, reads) in [
        (
            "lmk106",
            "212",
            "106 landmark points",
            "  landmarks: {coords: signed, scheme: insightface106}\n",
        ),
        (
            "lmk3d68",
            "3309",
            "InsightFace's 3D-68 landmarks",
            "      pose_error_max: 2.0\n",
        ),
    ] {
        let onnx = p.path(&format!("{name}.onnx"));
        run_toolchain_python(script, &[&onnx, std::path::Path::new(width)]);
        let text = init(&p, &onnx, name);
        for want in [
            "  task: landmarks\n",
            says,
            "    crop: {mode: box, scale: 1.5}\n",
            "    mean: [127.5, 127.5, 127.5]\n    std: [128, 128, 128]\n    size: [192, 192]",
            "  landmarks: {coords: signed",
            reads,
            "<REPLACE: a face detector ONNX model for the crops, e.g. SCRFD>",
            "      nme_max: 0.05\n",
        ] {
            assert!(text.contains(want), "{name}: `{want}` not in\n{text}");
        }
        assert!(!text.contains("CHECK: a square around"), "{text}");
    }
}

/// An export whose boxes are already decoded (UltraFace RFB-320's contract: input 1x3x240x320,
/// `scores` [1, 4420, 2], `boxes` [1, 4420, 4] as corners in [0, 1]), built small: init does
/// not call it RetinaFace (its 4420 rows are not RetinaFace's 3160 priors at 240x320) but
/// the `ultraface` preset (decoded corners), with a CHECK; and a manifest that declares it RetinaFace is refused at `plan`, at
/// the model's line, before anything is built.
#[test]
fn already_decoded_boxes_are_never_a_prior_decoded_family() {
    let p = Project::new();
    let onnx = p.path("ultraface_like.onnx");
    let script = "import onnx, sys
from onnx import helper, TensorProto
import numpy as np
n = 4420
def w(name, k):
    return helper.make_tensor(name, TensorProto.FLOAT, [3, k], np.full(3 * k, 0.01, np.float32).tolist())
def shape(name, dims):
    return helper.make_tensor(name, TensorProto.INT64, [3], dims)
g = helper.make_graph(
    [helper.make_node('GlobalAveragePool', ['input'], ['p']),
     helper.make_node('Flatten', ['p'], ['f']),
     helper.make_node('MatMul', ['f', 'ws'], ['s0']),
     helper.make_node('Reshape', ['s0', 'ss'], ['s1']),
     helper.make_node('Softmax', ['s1'], ['scores'], axis=2),
     helper.make_node('MatMul', ['f', 'wb'], ['b0']),
     helper.make_node('Reshape', ['b0', 'sb'], ['b1']),
     helper.make_node('Sigmoid', ['b1'], ['boxes'])],
    'ultraface_like', [helper.make_tensor_value_info('input', TensorProto.FLOAT, [1, 3, 240, 320])],
    [helper.make_tensor_value_info('scores', TensorProto.FLOAT, [1, n, 2]),
     helper.make_tensor_value_info('boxes', TensorProto.FLOAT, [1, n, 4])],
    [w('ws', 2 * n), w('wb', 4 * n), shape('ss', [1, n, 2]), shape('sb', [1, n, 4])])
m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 13)])
m.ir_version = 8
onnx.checker.check_model(m)
onnx.save(m, sys.argv[1])";
    run_toolchain_python(script, &[&onnx]);
    let text = init(&p, &onnx, "ultraface_like");
    assert!(text.contains("  task: detection\n"), "{text}");
    assert!(text.contains("    preset: ultraface\n"), "{text}");
    assert!(!text.contains("family: retinaface"), "{text}");
    assert!(
        text.contains(
            "4420 rows are not its 3160 priors at 240x320: the boxes are likely decoded already"
        ),
        "{text}"
    );
    let yaml = format!(
        indoc! {"
            schema: 1
            name: u
            model:
              path: {}
              task: detection
              input: {{name: input, shape: [1, 3, 240, 320]}}
              preprocessing: {{color: RGB, mean: [127, 127, 127], std: [128, 128, 128], size: [240, 320]}}
              detector: {{family: retinaface}}
            steps:
              check: {{kind: check}}
        "},
        onnx.display()
    );
    p.write("u.yaml", &yaml);
    let out = p.run(&["plan", "u.yaml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("u.yaml:4:")
            && err.contains("has 3160 priors, but")
            && err.contains("box output has 4420 rows")
            && err.contains("already decoded"),
        "{err}"
    );
    assert!(!p.path("cache/actions").exists(), "nothing may be built");
}

/// An already-quantized model (ONNX Runtime's dynamic quantization: ConvInteger,
/// DynamicQuantizeLinear): init says so and writes no INT8 steps, and the pipeline it wrote
/// builds up to compare.
#[test]
fn init_writes_no_int8_steps_for_a_quantized_model() {
    let p = Project::new();
    let onnx = p.path("mini.onnx");
    let out = p.run(&["builtin", "iresnet-mini", "-o", onnx.to_str().unwrap()]);
    assert!(out.status.success());
    let quantized = p.path("dynamic_int8.onnx");
    quantize_dynamic(&onnx, &quantized);
    let text = init(&p, &quantized, "dynamic_int8");
    assert!(
        text.contains("# No INT8 steps: the model is already quantized (")
            && text.contains("ConvInteger"),
        "{text}"
    );
    for int8 in ["calibrate:", "openvino_int8", "quantize:", "tensorrt_int8"] {
        assert!(!text.contains(int8), "`{int8}` in:\n{text}");
    }
    assert!(
        text.contains("candidates: [openvino_fp32, openvino_fp16]"),
        "{text}"
    );
    assert!(text.contains("artifacts: [openvino_fp16]"), "{text}");
    plans_once_filled(&p, "dynamic_int8", &text, "    builtin: synthetic-faces");
    let (code, r) = p.run_json("pipelines/dynamic_int8.yaml", &["-t", "compare"]);
    assert_eq!(code, 0, "{r:#?}");
}

/// A real export whose output size is symbolic (`[batch_size, Divoutput_dim_1]`, PyTorch
/// opset 19): init reads it from one run in ONNX Runtime and calls the model a recognizer.
#[test]
fn init_reads_a_symbolic_output_size_from_one_run() {
    let Some(shared) = shared() else { return };
    let p = Project::new();
    let text = init(
        &p,
        &shared.join("models/mobilefacenet_opset19.onnx"),
        "opset19",
    );
    assert!(text.contains("  task: recognition\n"), "{text}");
    assert!(
        text.contains("output sizes read from one run in ONNX Runtime on zeros [1, 3, 112, 112]: `output` [1, 128]"),
        "{text}"
    );
}

/// `init --builtin` writes the built-in pipeline, the same text `run --builtin` runs.
#[test]
fn init_builtin_writes_the_default_pipeline() {
    let p = Project::new();
    let out = p.run(&["init", "--builtin", "recognition"]);
    assert!(out.status.success());
    let written = std::fs::read_to_string(p.path("pipelines/recognition.yaml")).unwrap();
    let repo = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/pipelines/recognition.yaml"
    ))
    .unwrap();
    assert_eq!(written, repo);
    // Not overwritten without --force.
    let out = p.run(&["init", "--builtin", "recognition"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    // Planned without a file.
    for builtin in ["detection", "landmarks"] {
        let plan = p.run(&["plan", "--builtin", builtin]);
        assert!(
            plan.status.success(),
            "{builtin}: {}",
            String::from_utf8_lossy(&plan.stderr)
        );
    }
    let unknown = p.run(&["plan", "--builtin", "segmentation"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&unknown.stderr)
            .contains("built-in pipelines: recognition, detection")
    );
}

/// (step, words its error holds).
type Refusals = &'static [(&'static str, &'static [&'static str])];

/// The corpus: every recognizer, detector and landmark model in ../shared. (model, task,
/// family, dataset, expected refusals).
// (model, task, family, dataset, expected refusals: (step, words its error holds)).
const CORPUS: &[(&str, &str, Option<&str>, &str, Refusals)] = &[
    ("mobilefacenet", "recognition", None, "faces/pairs", &[]),
    (
        "mobilefacenet_opset19",
        "recognition",
        None,
        "faces/pairs",
        &[],
    ),
    // A Paddle export whose plain Q/DQ lost everything (0.13) before its depthwise
    // convs' input channels were equalized.
    ("mobileface_paddle", "recognition", None, "faces/pairs", &[]),
    (
        "scrfd_500m_kps",
        "detection",
        Some("scrfd"),
        "faces/scenes",
        &[],
    ),
    (
        "scrfd_2.5g_bnkps",
        "detection",
        Some("scrfd"),
        "faces/scenes",
        &[],
    ),
    (
        "retinaface_mnet_640",
        "detection",
        Some("retinaface"),
        "faces/scenes",
        &[],
    ),
    ("pfld68", "landmarks", None, "faces/pairs", &[]),
];

/// `init` on a corpus model: the task and family it guesses, the pipeline it wrote
/// (snapshotted when `snap`), placeholders filled with ../shared paths, planned.
fn init_corpus_model(
    p: &Project,
    shared: &std::path::Path,
    (model, task, family, data): (&str, &str, Option<&str>, &str),
    snap: bool,
) {
    let onnx = shared.join(format!("models/{model}.onnx"));
    let text = init(p, &onnx, model);
    if snap {
        snapshot(p, &format!("_{model}"), &text);
    }
    assert!(
        text.contains(&format!("  task: {task}\n")),
        "{model}: {text}"
    );
    if let Some(f) = family {
        assert!(text.contains(&format!("family: {f}")), "{model}: {text}");
    }
    // The photos are not aligned crops: a recognizer's set says how to align them.
    // A landmark model's set names the detector whose boxes are cropped: fill it first.
    let text = if task == "landmarks" {
        let line = text
            .lines()
            .find(|l| l.contains("<REPLACE: a face detector"))
            .expect("the detector placeholder");
        let filled = text.replace(
            line,
            &format!(
                "      model: {}",
                shared.join("models/scrfd_500m_kps.onnx").display()
            ),
        );
        p.write(&format!("pipelines/{model}.yaml"), &filled);
        filled
    } else {
        text
    };
    let align = if task == "recognition" {
        format!(
            "\n    pairs: pairs.csv\n    align: {{model: {}, detector: {{family: scrfd}}}}",
            shared.join("models/scrfd_500m_kps.onnx").display()
        )
    } else {
        String::new()
    };
    plans_once_filled(
        p,
        model,
        &text,
        &format!("    path: {}{align}", shared.join(data).display()),
    );
}

/// `init` on every corpus model: the pipeline it writes (a snapshot each, whose paths take
/// every form), its task and family, and a plan once its placeholders are filled. Fast:
/// `.ci/run` runs it again with the temporary folder and ../shared side by side.
#[test]
fn corpus_init_writes_each_shared_models_pipeline() {
    let Some(shared) = shared() else { return };
    for (model, task, family, data, _) in CORPUS {
        init_corpus_model(&Project::new(), &shared, (model, task, *family, data), true);
    }
}

/// Every corpus model's pipeline, as `init` wrote it and filled, runs up to compare
/// with --keep-going, and every step either builds or refuses as the table expects, with a
/// message that says what and why. compare reports every candidate it was given.
#[test]
fn corpus_every_shared_model_builds_or_refuses_clearly() {
    let Some(shared) = shared() else { return };
    let mut table = Vec::new();
    for (model, task, family, data, refusals) in CORPUS {
        let p = Project::new();
        init_corpus_model(&p, &shared, (model, task, *family, data), false);
        let (code, r) = p.run_json(
            &format!("pipelines/{model}.yaml"),
            &["-t", "compare", "--keep-going"],
        );
        assert_eq!(code, i32::from(!refusals.is_empty()), "{model}: {r:#?}");
        for s in &r.steps {
            let expected = refusals.iter().find(|(step, _)| *step == s.step);
            match (s.status, expected) {
                (Status::Built, None) => {}
                (Status::Failed, Some((_, words))) => {
                    let err = s.error.as_deref().unwrap_or_default();
                    for w in *words {
                        assert!(err.contains(w), "{model}: {}: `{w}` not in {err}", s.step);
                    }
                }
                (status, _) => panic!("{model}: step `{}` {status:?}: {:?}", s.step, s.error),
            }
        }
        let report: facebuild::CompareReport =
            p.report(&format!("pipelines/out/{}/compare/report.json", r.pipeline));
        let cands: Vec<String> = report
            .candidates
            .iter()
            .map(|c| {
                let fig = headline(c).unwrap_or_else(|| "-".into());
                format!(
                    "{} {} ({fig})",
                    c.label,
                    if c.passed == Some(true) {
                        "pass"
                    } else {
                        "FAIL"
                    }
                )
            })
            .collect();
        assert!(cands.len() >= 3, "{model}: {cands:?}");
        table.push(format!("{model}: {}", cands.join(", ")));
    }
    eprintln!("corpus:\n{}", table.join("\n"));
}

/// The built-in swapper (two inputs, an image at 128 and a 512 latent, `emap` last): init
/// routes it as InsightFace routes INSwapper, writes both inputs under `model.inputs` (the
/// target's ArcFace crop, the latent fed a recognizer through `emap`), INSwapper's feeding
/// and the swapper gates; plan refuses each of the three placeholders at its line, and
/// plans once they are filled.
#[test]
fn init_routes_two_input_swappers() {
    let p = Project::new();
    let onnx = p.path("inswapper-mini.onnx");
    let out = p.run(&["builtin", "inswapper-mini", "-o", onnx.to_str().unwrap()]);
    assert!(out.status.success());
    let out = p.run(&[
        "init",
        onnx.to_str().unwrap(),
        "-o",
        "pipelines/swapper.yaml",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("next: fill in the 3 path(s)"));
    let text = std::fs::read_to_string(p.path("pipelines/swapper.yaml")).unwrap();
    snapshot(&p, "_inswapper-mini", &text);
    for want in [
        "  task: swapper\n",
        "  inputs:\n    target:\n",
        "      shape: [1, 3, 128, 128]\n",
        "      crop: {mode: arcface128}\n",
        "    source:\n      shape: [1, 512]\n",
        "          emap: true\n",
        "    mean: [0, 0, 0]\n    std: [255, 255, 255]",
        "      psnr_min: 40\n",
    ] {
        assert!(text.contains(want), "`{want}` not in\n{text}");
    }
    let out = p.run(&["plan", "pipelines/swapper.yaml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`model.inputs.source.feed.embedding.model` still has the placeholder"),
        "{err}"
    );
    // Filled in with built-in data and recognizer: the built-in faces are the crops.
    let align = "    align:\n      model: \"<REPLACE: a face detector ONNX model for the crops, e.g. SCRFD>\"\n      detector: {family: scrfd}\n";
    let filled = text
        .replace(align, "")
        .replace(
            "    path: \"<REPLACE: a folder of photos with faces>\"",
            "    builtin: synthetic-faces",
        )
        .replace(
            "          model: \"<REPLACE: a face recognizer ONNX whose embedding has 512 values, e.g. w600k_r50.onnx>\"",
            "          builtin: iresnet-mini",
        );
    p.write("pipelines/swapper.yaml", &filled);
    let out = p.run(&["plan", "pipelines/swapper.yaml"]);
    assert!(
        out.status.success(),
        "{}\n{filled}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn climbs_name_the_place_they_reach() {
    let p = |s: &str| std::path::PathBuf::from(s);
    assert_eq!(
        climb_to(&p("/tmp/fresh/shared"), &p("/tmp/.tmpAB/pipelines")).as_deref(),
        Some("../../fresh/shared")
    );
    assert_eq!(climb_to(&p("/w/shared"), &p("/x/y")), None);
    assert_eq!(climb_to(&p("/w/a"), &p("/w/a/b")), None);
}

/// Every `.onnx` under `../shared/models/`, found by walking it (a model added there later is
/// tested without a code change), that the named corpus above does not already run: `init`
/// writes its pipeline, the placeholders are filled with `../shared`'s photos, and `run -t
/// compare --keep-going` builds every step. A step may fail only on a gate (a judgement,
/// recorded); compare reports figures for every artifact. A refusal by `init` is allowed only
/// for the models named in `REFUSED`, with words its message must hold.
#[test]
fn every_model_under_shared_gets_through_init_and_run() {
    let Some(shared) = shared() else { return };
    // (model, words init's refusal holds, why).
    const REFUSED: [(&str, &str, &str); 1] = [(
        "facefusion_landmarker_68_5",
        "not an image",
        "its one input is [1, 5, 2] points: tensor datasets are not built yet (issue 44)",
    )];
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "onnx") {
                out.push(p);
            }
        }
    }
    let mut models = Vec::new();
    walk(&shared.join("models"), &mut models);
    models.sort();
    // The corpus above already runs its models.
    models.retain(|m| {
        !CORPUS
            .iter()
            .any(|c| m.file_stem().is_some_and(|n| n == c.0))
    });
    assert!(!models.is_empty(), "no models under {}", shared.display());
    let table: Vec<String> = models
        .iter()
        .map(|onnx| init_fill_run(&shared, onnx, &REFUSED))
        .collect();
    eprintln!("models from the wild:\n{}", table.join("\n"));
}

/// `init` on `onnx`, its placeholders filled with ../shared's photos (and SCRFD where a
/// detector is asked for), then `run -t compare --keep-going`: every step builds or fails on a
/// gate (a judgement, recorded), and compare has a figure for every artifact. A refusal by
/// `init` is allowed only for the models `refused` names: (model, words its message holds,
/// why). Returns a table row: the task, each step's outcome, compare's figures.
fn init_fill_run(
    shared: &std::path::Path,
    onnx: &std::path::Path,
    refused: &[(&str, &str, &str)],
) -> String {
    let model = onnx.file_stem().unwrap().to_str().unwrap();
    let p = Project::new();
    if let Some((_, words, why)) = refused.iter().find(|(m, _, _)| *m == model) {
        let out = p.run(&["init", onnx.to_str().unwrap(), "-o", "p.yaml"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{model}: init did not refuse: {stderr}"
        );
        assert!(stderr.contains(words), "{model}: `{words}` not in {stderr}");
        return format!("{model}: refused by init ({why})");
    }
    let text = init(&p, onnx, model);
    let task = text
        .lines()
        .find_map(|l| l.strip_prefix("  task: "))
        .unwrap_or("?")
        .to_string();
    let photos = shared.join(if task == "detection" {
        "faces/scenes"
    } else {
        "faces/pairs"
    });
    let detector = shared.join("models/scrfd_500m_kps.onnx");
    let filled: Vec<String> = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("path: \"<REPLACE:") {
                let indent = &l[..l.len() - l.trim_start().len()];
                let mut s = format!("{indent}path: {}", photos.display());
                if task == "recognition" {
                    s += &format!(
                        "\n{indent}pairs: pairs.csv\n{indent}align: {{model: {}, detector: {{family: scrfd}}}}",
                        detector.display()
                    );
                }
                s
            } else if l.trim_start().starts_with("model: \"<REPLACE: a face detector") {
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}model: {}", detector.display())
            } else {
                l.to_string()
            }
        })
        .collect();
    let filled = filled.join("\n") + "\n";
    assert!(
        !filled.contains("<REPLACE"),
        "{model}: a placeholder is left:\n{filled}"
    );
    p.write(&format!("pipelines/{model}.yaml"), &filled);
    let (_, r) = p.run_json(
        &format!("pipelines/{model}.yaml"),
        &["-t", "compare", "--keep-going"],
    );
    let mut steps = Vec::new();
    for s in &r.steps {
        let err = s.error.as_deref().unwrap_or_default();
        match s.status {
            Status::Built | Status::Cached => steps.push(format!("{} ok", s.step)),
            // A gate's judgement, not a crash.
            Status::Failed if err.contains("gate failed") => steps.push(format!("{} gate", s.step)),
            status => panic!("{model}: step `{}` {status:?}: {err}\n{filled}", s.step),
        }
    }
    let report: facebuild::CompareReport =
        p.report(&format!("pipelines/out/{}/compare/report.json", r.pipeline));
    let mut figures = Vec::new();
    for c in &report.candidates {
        assert!(
            c.failed.is_none() && c.unavailable.is_none(),
            "{model}: candidate `{}` was not compared: {:?} {:?}",
            c.label,
            c.failed,
            c.unavailable
        );
        let fig =
            headline(c).unwrap_or_else(|| panic!("{model}: candidate `{}` has no figure", c.label));
        let verdict = if c.passed == Some(true) {
            "pass"
        } else {
            "FAIL"
        };
        figures.push(format!("{} {verdict} ({fig})", c.label));
    }
    // Every artifact the run built is a candidate (a quantized model gets no INT8 steps).
    let artifacts = r
        .steps
        .iter()
        .filter(|s| !["check", "simplify", "calibrate", "compare"].contains(&s.step.as_str()))
        .count();
    assert!(
        artifacts >= 2 && figures.len() == artifacts,
        "{model}: {figures:?}"
    );
    format!(
        "{model} [{task}]: {}; compare: {}",
        steps.join(", "),
        figures.join(", ")
    )
}

/// The synthetic matrix: small models built with the `onnx` package in the toolchain's Python
/// (tests/fixtures/synthetic_models.py), each differing from a plain conv net on one axis of
/// the generic path, go through `init` and `run -t compare` as the models from the wild do.
#[test]
fn synthetic_matrix_gets_through_init_and_run() {
    let Some(shared) = shared() else { return };
    let cells = [
        "base",
        "f16",
        "u8",
        "nhwc",
        "gray",
        "dyn_batch",
        "minus1",
        "odd_param",
        "functions",
        "functions_if",
        "qdq",
        "dynamic",
    ];
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/synthetic_models.py"
    );
    run_ok(
        std::process::Command::new(toolchain_python())
            .arg(script)
            .arg(dir.path())
            .args(cells),
    );
    let table: Vec<String> = cells
        .iter()
        .map(|c| init_fill_run(&shared, &dir.path().join(format!("{c}.onnx")), &[]))
        .collect();
    eprintln!("synthetic matrix:\n{}", table.join("\n"));
}

/// A compared candidate's headline figure: min cosine (embedders), recall (detectors),
/// largest NME (landmark models), else the worst output's min cosine.
fn headline(c: &facebuild::CandidateReport) -> Option<String> {
    c.cosine
        .as_ref()
        .map(|x| format!("cos min {:.4}", x.min))
        .or_else(|| c.total.as_ref().map(|t| format!("recall {:.3}", t.recall)))
        .or_else(|| c.nme_max.map(|n| format!("nme max {n:.4}")))
        .or_else(|| {
            c.outputs.as_ref().map(|o| {
                let worst = o.iter().map(|x| x.cosine.min).fold(f64::INFINITY, f64::min);
                format!("worst output cos {worst:.4}")
            })
        })
}
