//! Helpers for integration tests: each test gets its own project folder and cache, and all
//! share one toolchain (installed once, under a file lock) so the suite stays fast.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
pub(crate) use facebuild::{Decision, Plan, RunReport, Status, StepResult};
pub(crate) use indoc::indoc;

pub(crate) mod servers;
pub(crate) mod slurm;

pub(crate) struct Project {
    pub dir: tempfile::TempDir,
}

pub(crate) fn toolchain_dir() -> PathBuf {
    std::env::var_os("FACEBUILD_TOOLCHAIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("cache/toolchains"))
}

/// The tests' shared toolchain (installed when missing), where [`toolchain_dir`] says.
#[allow(dead_code)]
pub(crate) fn toolchain() -> facebuild::Toolchain {
    let dir = camino::Utf8PathBuf::from_path_buf(toolchain_dir()).expect("a UTF-8 path");
    let place = facebuild::ToolchainPlace {
        root: dir,
        pip: false,
        python: None,
    };
    facebuild::Toolchain::ensure(&place, &facebuild::Pins::resolve(&Default::default(), None))
        .expect("toolchain")
}

/// `../shared` (or $FACEBUILD_SHARED) with the real models and faces, when present.
/// Tests that need it print a clear SKIP line and return when it is absent; under CI its
/// absence fails them.
pub(crate) fn shared() -> Option<PathBuf> {
    let p = std::env::var_os("FACEBUILD_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    if p.join("models").is_dir() {
        Some(p.canonicalize().unwrap())
    } else if std::env::var_os("CI").is_some() {
        // CI proves what the real models prove: a missing ../shared fails the run, as a
        // missing tool does, instead of passing on SKIPs.
        panic!(
            "{} not found, and CI is set: the real-model tests need ../shared beside the \
             checkout (or FACEBUILD_SHARED)",
            p.display()
        );
    } else {
        // Written to stderr directly: the test harness captures `eprintln!`, and a skip
        // must be visible in CI logs.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: {} not found: real-model tests need ../shared (or FACEBUILD_SHARED)",
            p.display()
        );
        None
    }
}

impl Project {
    pub(crate) fn new() -> Project {
        Project {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub(crate) fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    pub(crate) fn cmd(&self) -> Command {
        Command::from_std(self.std_cmd())
    }

    /// The facebuild command of this project, as a std Command (to spawn and signal it).
    pub(crate) fn std_cmd(&self) -> std::process::Command {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("facebuild"));
        c.current_dir(self.dir.path())
            .env("FACEBUILD_CACHE", self.path("cache"))
            .env("FACEBUILD_TOOLCHAIN_DIR", toolchain_dir())
            .env_remove("FACEBUILD_LOG")
            // A remote in the developer's environment must not leak into tests.
            .env_remove("FACEBUILD_REMOTE")
            .env_remove("FACEBUILD_REMOTE_SIGNING_KEY")
            .env_remove("FACEBUILD_REMOTE_TRUSTED_KEYS")
            .env_remove("FACEBUILD_REMOTE_READ_ONLY");
        c
    }

    /// Run facebuild with args; return the output without asserting on the status.
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// `facebuild run FILE --json` -> (exit code, the typed run report).
    pub(crate) fn run_json(&self, file: &str, extra: &[&str]) -> (i32, RunReport) {
        let mut args = vec!["run", file, "--json"];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked"),
            "facebuild panicked:\n{stderr}"
        );
        let v = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no JSON report ({e}); stderr:\n{stderr}"));
        (out.status.code().unwrap_or(-1), v)
    }

    /// `facebuild plan FILE --json`, typed.
    pub(crate) fn plan_json(&self, file: &str) -> Plan {
        let out = self.run(&["plan", file, "--json"]);
        assert!(
            out.status.success(),
            "plan failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// A step's typed report, read from the output folder (`out/<pipeline>/<step>/report.json`).
    pub(crate) fn report<T: serde::de::DeserializeOwned>(&self, rel: &str) -> T {
        let path = self.path(rel);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }
}

/// step name -> status, from a run report.
pub(crate) fn statuses(report: &RunReport) -> Vec<(String, Status)> {
    report
        .steps
        .iter()
        .map(|s| (s.step.clone(), s.status))
        .collect()
}

/// One step's result in a run report.
pub(crate) fn step<'a>(report: &'a RunReport, name: &str) -> &'a StepResult {
    report
        .steps
        .iter()
        .find(|s| s.step == name)
        .unwrap_or_else(|| panic!("no step {name} in report"))
}

/// One step's status in a run report.
pub(crate) fn status_of(report: &RunReport, name: &str) -> Status {
    step(report, name).status
}

/// The error a step reported.
pub(crate) fn error_of<'a>(report: &'a RunReport, name: &str) -> &'a str {
    step(report, name).error.as_deref().unwrap_or("")
}

/// One step of a plan.
pub(crate) fn planned<'a>(plan: &'a Plan, name: &str) -> &'a Decision {
    &plan
        .steps
        .iter()
        .find(|s| s.step == name)
        .unwrap_or_else(|| panic!("no step {name} in plan"))
        .decision
}

/// The head of a manifest named `name` on the real MobileFaceNet in `shared`: schema, name
/// and `model:` with InsightFace's preprocessing. Datasets and steps follow it.
pub(crate) fn mobilefacenet_head(shared: &Path, name: &str) -> String {
    format!(
        indoc! {"
            schema: 1
            name: {}
            model:
              path: {}
              task: recognition
              input: {{name: input, shape: [1, 3, 112, 112]}}
              preprocessing: {{color: RGB, mean: [127.5, 127.5, 127.5], std: [127.5, 127.5, 127.5], size: [112, 112]}}
        "},
        name,
        shared.join("models/mobilefacenet.onnx").display()
    )
}

/// The default pipeline, for tests that need its steps but not benchmark_app's figures: no
/// benchmark_app reference, and only what the release reads measured. The gates are the
/// default pipeline's own, decided on intervals.
pub(crate) fn default_pipeline_short_benchmark() -> String {
    builtin_pipeline_short_benchmark("recognition")
}

/// A built-in pipeline (`pipelines/<name>.yaml`) with a shorter benchmark: no benchmark_app
/// beside it, and only the artifacts its release reads.
pub(crate) fn builtin_pipeline_short_benchmark(name: &str) -> String {
    let yaml = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("pipelines/{name}.yaml")),
    )
    .unwrap()
    .replace("      reference: benchmark_app\n", "")
    // Every pipeline benchmarks only what it releases (and FP32, which INT8's speedup gate
    // is measured against): the other targets' runs measure nothing these tests read.
    .replace(
        "      targets: [simplify, openvino_fp32, openvino_fp16, openvino_int8, quantize]\n",
        "      targets: [openvino_fp32, openvino_fp16, openvino_int8]\n",
    )
    .replace(
        "      targets: [simplify, openvino_fp32, openvino_fp16, openvino_int8, quantize, tensorrt_fp16, tensorrt_int8]\n",
        "      targets: [openvino_fp32, openvino_fp16, openvino_int8, tensorrt_fp16, tensorrt_int8]\n",
    );
    assert!(
        yaml.contains("processes: 3")
            && !yaml.contains("reference: benchmark_app")
            && !yaml.contains("targets: [simplify"),
        "the default pipeline's benchmark params changed: update this helper's budget"
    );
    yaml
}

/// A recognition manifest on the built-in model with the given steps section.
/// Its steps start on line 10 (tests check error locations).
pub(crate) fn builtin_manifest(steps: &str) -> String {
    let head = indoc! {"
        schema: 1
        name: t
        model:
          task: recognition
          input:
            name: input.1
            layout: NCHW
            shape: [1, 3, 112, 112]
        steps:
    "};
    // Steps written flush left (as `indoc!` leaves them) go under `steps:`.
    let steps = if steps.starts_with(' ') {
        steps.to_string()
    } else {
        steps.lines().map(|l| format!("  {l}\n")).collect()
    };
    format!("{head}{steps}")
}

/// A pack of the two built-in models, `det` (SCRFD-mini, 320) and `rec` (iresnet-mini, its
/// std `rec_std`), as `name:` and `models:` (schema line included); datasets and steps follow.
pub(crate) fn builtin_pack_models(rec_std: &str) -> String {
    format!(
        "schema: 1
name: pack
models:
  det:
    builtin: scrfd-mini
    task: detection
    input: {{name: input.1, shape: [1, 3, 320, 320]}}
    preprocessing: {{color: RGB, mean: [127.5, 127.5, 127.5], std: [128, 128, 128], size: [320, 320]}}
    detector: {{family: scrfd}}
  rec:
    builtin: iresnet-mini
    task: recognition
    input: {{name: input.1, shape: [1, 3, 112, 112]}}
    preprocessing: {{color: RGB, mean: [127.5, 127.5, 127.5], std: [{rec_std}], size: [112, 112]}}
"
    )
}

/// A run that ends in a release promoted (exit 0). Speed gates decide on intervals over
/// processes, so limits far from the figures pass on a busy machine too: a refusal here is a
/// failure, whatever the machine was doing. Panics with the release's refusals otherwise.
pub(crate) fn released(dir: &Path, code: i32, r: &RunReport) {
    if code == 0 {
        return;
    }
    let manifest = dir.join(r.manifest.as_std_path());
    let path = manifest
        .parent()
        .unwrap()
        .join(format!("out/{}/release/report.json", r.pipeline));
    let refusals = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<facebuild::ReleaseReport>(&b).ok())
        .map(|rep| format!("{:#?}", rep.refused))
        .unwrap_or_else(|| format!("no release report at {}", path.display()));
    panic!("the run did not release (exit {code}): {refusals}\n{r:#?}");
}

/// The Python of the shared toolchain (it has the `onnx` package), for tests that build small
/// ONNX models the built-in ones do not cover.
pub(crate) fn toolchain_python() -> PathBuf {
    let root = toolchain_dir();
    std::fs::read_dir(&root)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run `facebuild toolchain install`)",
                root.display()
            )
        })
        .filter_map(|e| Some(e.ok()?.path().join("venv/bin/python")))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no toolchain venv under {}", root.display()))
}

/// Runs `cmd`; panics with the command and its stderr unless it succeeds. Its output.
pub(crate) fn run_ok(cmd: &mut std::process::Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A line on stderr, which the test harness shows with `--nocapture` (figures for notes).
pub(crate) fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A candidate's entry in a compare report.
pub(crate) fn candidate<'a>(
    rep: &'a facebuild::CompareReport,
    label: &str,
) -> &'a facebuild::CandidateReport {
    rep.candidates
        .iter()
        .find(|c| c.label == label)
        .unwrap_or_else(|| panic!("no candidate {label}"))
}

/// Runs `script` in the toolchain's Python with `args`; panics with its stderr if it fails.
pub(crate) fn run_toolchain_python(script: &str, args: &[&Path]) {
    run_ok(
        std::process::Command::new(toolchain_python())
            .args(["-c", script])
            .args(args),
    );
}

/// `src` quantized by ONNX Runtime's dynamic quantization (ConvInteger,
/// DynamicQuantizeLinear) into `dst`: a model that is already quantized.
pub(crate) fn quantize_dynamic(src: &Path, dst: &Path) {
    run_toolchain_python(
        "import sys
from onnxruntime.quantization import quantize_dynamic
quantize_dynamic(sys.argv[1], sys.argv[2])",
        &[src, dst],
    );
}

/// Snapshot CLI text with insta (`tests/snapshots/<test crate>__<test><suffix>.snap`, reviewed
/// in the diff), named after the running test. What changes from run to run is filtered out:
/// the project's temporary folder, ../shared, digests and times.
pub(crate) fn snapshot(p: &Project, suffix: &str, text: &str) {
    fn escape(s: &str) -> String {
        s.chars()
            .flat_map(|c| {
                let meta = "\\.+*?()|[]{}^$#&-~".contains(c);
                meta.then_some('\\').into_iter().chain(std::iter::once(c))
            })
            .collect()
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .replace("::", "__");
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/snapshots"));
    let dir = p.dir.path().to_string_lossy().to_string();
    // The canonical form too: macOS and some CI runners reach /tmp through a symlink.
    let canonical = p
        .dir
        .path()
        .canonicalize()
        .map(|c| c.to_string_lossy().to_string())
        .unwrap_or_else(|_| dir.clone());
    for (form, label) in path_forms(p.dir.path(), &canonical, &dir) {
        settings.add_filter(&escape(&form), label);
    }
    settings.add_filter(r"\b[0-9a-f]{12,64}\b", "[HASH]");
    settings.add_filter(r"\b\d+(\.\d+)? ?(ms|s)\b", "[TIME]");
    // Figures whose last digits belong to the CPU's kernels.
    settings.add_filter(
        // A summary's `name value` or a JSON `"name": value`; never a manifest's `name: limit`.
        r#"\b(cosine_min|max_abs_error|smoke_cosine)(": | )-?[0-9][0-9.e-]*"#,
        "$1$2[FIG]",
    );
    settings.add_filter("\"([a-z_]*_ms)\": \\d+", "\"$1\": [MS]");
    // A report's size moves with the digits of its figures.
    settings.add_filter("\"size\": \\d+", "\"size\": [SIZE]");
    // A test that snapshots more than once gets `-2`, `-3`... in call order.
    thread_local! {
        static TAKEN: std::cell::RefCell<std::collections::HashMap<String, usize>> =
            Default::default();
    }
    let mut name = format!("{}__{test}{suffix}", env!("CARGO_CRATE_NAME"));
    let n = TAKEN.with(|t| {
        let mut t = t.borrow_mut();
        let n = t.entry(name.clone()).or_insert(0);
        *n += 1;
        *n
    });
    if n > 1 {
        name = format!("{name}-{n}");
    }
    settings.bind(|| insta::assert_snapshot!(name, text));
}

/// Every form the project's and ../shared's paths take in a command's output, longest first
/// (so a longer form is replaced before a shorter one inside it): absolute, canonical, and
/// relative to any folder of the project (where a manifest may sit, as `init` writes its
/// model path) or to the tests' working directory. Relative forms that only climb (`..`)
/// are left alone: they name no place.
fn path_forms<'a>(project: &Path, canonical: &str, dir: &str) -> Vec<(String, &'a str)> {
    let mut targets = vec![
        (PathBuf::from(canonical), "[PROJECT]"),
        (PathBuf::from(dir), "[PROJECT]"),
    ];
    if let Some(s) = shared() {
        targets.push((s, "[SHARED]"));
    }
    // The folders a path may be written relative to: the project's, to a depth of three,
    // and the checkout (the tests' working directory).
    let mut bases = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR"))];
    let mut level = vec![project.to_path_buf(), PathBuf::from(canonical)];
    for _ in 0..3 {
        let next: Vec<PathBuf> = level
            .iter()
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        bases.append(&mut level);
        level = next;
    }
    bases.append(&mut level);
    let mut forms: Vec<(String, &str)> = Vec::new();
    for (target, label) in &targets {
        forms.push((target.to_string_lossy().into_owned(), label));
        for base in &bases {
            if let Some(rel) = climb_to(target, base) {
                forms.push((rel, label));
            }
        }
    }
    forms.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
    forms.dedup();
    forms
}

/// `to` relative to the folder `from`, as facebuild writes a relative path (a climb out of
/// `from`, then down); None where they share only the root (facebuild then writes the
/// absolute path) or where the result names no folder.
pub(crate) fn climb_to(to: &Path, from: &Path) -> Option<String> {
    let t: Vec<_> = to.components().collect();
    let f: Vec<_> = from.components().collect();
    let common = t.iter().zip(&f).take_while(|(a, b)| a == b).count();
    if common <= 1 || common == t.len() {
        return None;
    }
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    Some(out.to_string_lossy().into_owned())
}

/// A venv in `dir` made with the toolchain's uv, with each group of `installs` pip-installed
/// in turn (a group may carry flags, e.g. `--no-deps`); its python.
pub(crate) fn uv_venv(dir: &Path, installs: &[&[&str]]) -> PathBuf {
    let uv = std::fs::read_dir(toolchain_dir())
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path().join("bin/uv")))
        .find(|p| p.is_file())
        .expect("the toolchain's uv (run `facebuild toolchain install`)");
    let venv = dir.join("venv");
    let run = |args: &[&str]| {
        run_ok(
            std::process::Command::new(&uv)
                .args(args)
                .env("VIRTUAL_ENV", &venv),
        );
    };
    let python = toolchain_python();
    run(&[
        "venv",
        "-q",
        venv.to_str().unwrap(),
        "--python",
        python.to_str().unwrap(),
    ]);
    for group in installs {
        let mut args = vec!["pip", "install", "-q"];
        args.extend_from_slice(group);
        run(&args);
    }
    venv.join("bin/python")
}
