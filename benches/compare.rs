//! Compare-step throughput against the runtimes alone.
//!
//! Builds a recognition pipeline (the real MobileFaceNet and labelled photos from ../shared
//! when present, else the built-in model and synthetic faces), then re-runs only `compare`
//! (a gate param changes) RUNS times and reads its timings. "Runtimes alone" runs the same
//! artifacts, same batch sizes and precision hints, on ready-made tensors through the same
//! runtime trait: only inference. The ratio is images/s of the compare step's data path
//! (prepare + inference + metrics; model loading excluded, as it is for the runtimes alone)
//! over images/s of the runtimes alone. End-to-end figures (loading included) and the cold
//! first-run image preparation are reported too. Writes target/bench/compare.json.

use std::process::Command;
use std::time::Instant;

use camino::Utf8PathBuf;
use facebuild::{LoadedModel, OnnxRuntime, OpenVino, OpenVinoSettings, Runtime};
use ndarray::{ArrayD, IxDyn};

fn main() {
    let exe = env!("CARGO_BIN_EXE_facebuild");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let toolchains = std::env::var("FACEBUILD_TOOLCHAIN_DIR")
        .unwrap_or_else(|_| root.join("cache/toolchains").display().to_string());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let shared = root.join("../shared");
    let real = shared.join("models/mobilefacenet.onnx").exists();
    let manifest = if real {
        let s = shared.canonicalize().unwrap();
        format!(
            "schema: 1\nname: b\nmodel:\n  path: {}\n  task: recognition\n  input: {{name: input, shape: [1, 3, 112, 112]}}\n  preprocessing: {{color: RGB, mean: [127.5, 127.5, 127.5], std: [127.5, 127.5, 127.5], size: [112, 112]}}\ndatasets:\n  faces: {{path: {}, pairs: pairs.csv}}\nsteps:\n  ov_fp32: {{kind: convert, params: {{backend: openvino, precision: fp32}}}}\n  ov_fp16: {{kind: convert, params: {{backend: openvino, precision: fp16}}}}\n  compare:\n    kind: compare\n    params: {{dataset: faces, candidates: [ov_fp32, ov_fp16], batch: 8, cosine_min: GATE}}\n",
            s.join("models/mobilefacenet.onnx").display(),
            s.join("faces/pairs").display()
        )
    } else {
        std::fs::read_to_string(root.join("pipelines/recognition.yaml"))
            .unwrap()
            .replace("      cosine_min: 0.99\n", "      cosine_min: GATE\n")
    };
    let fb = |args: &[&str]| {
        let out = Command::new(exe)
            .args(args)
            .current_dir(d)
            .env("FACEBUILD_CACHE", d.join("cache"))
            .env("FACEBUILD_TOOLCHAIN_DIR", &toolchains)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "facebuild {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let compare_of = |r: &serde_json::Value| {
        r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == "compare")
            .unwrap()
            .clone()
    };
    std::fs::write(d.join("p.yaml"), manifest.replace("GATE", "0.9")).unwrap();
    let first = compare_of(&fb(&["run", "p.yaml", "--json"]));
    let cold_prepare_ms = first["summary"]["timing"]["prepare_ms"]["ms"]
        .as_u64()
        .unwrap();

    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let mut samples = Vec::new();
    for i in 0..runs {
        std::fs::write(
            d.join("p.yaml"),
            manifest.replace("GATE", &format!("0.9{}", i + 1)),
        )
        .unwrap();
        let c = compare_of(&fb(&["run", "p.yaml", "--json"]));
        assert_eq!(c["status"], "built");
        samples.push(c);
    }
    let t = &samples[samples.len() / 2]["summary"]["timing"];
    let images = samples[0]["summary"]["images"].as_u64().unwrap() as f64;
    let models: Vec<(String, serde_json::Value)> = t
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v.get("load_ms").is_some())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let median = |key: &str| {
        let mut v: Vec<f64> = samples
            .iter()
            .map(|s| s["summary"]["timing"][key].as_f64().unwrap_or_default())
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let total_ms = median("total_ms");
    let load_ms: f64 = models
        .iter()
        .map(|(_, v)| v["load_ms"].as_f64().unwrap())
        .sum();
    let data_path_ms = total_ms - load_ms;
    let passes = images * models.len() as f64;

    // The runtimes alone: the same artifacts and batches, inference only.
    let pins = facebuild::Pins::resolve(&Default::default(), None);
    let place = facebuild::ToolchainPlace {
        root: Utf8PathBuf::from(toolchains.clone()),
        pip: false,
        python: None,
    };
    let tc =
        facebuild::Toolchain::find(&place, &pins).expect("toolchain installed by the first run");
    let pipeline = if real { "b" } else { "recognition" };
    let ort = OnnxRuntime::new(&tc, None).unwrap();
    let mut alone_ms = 0.0;
    for (label, v) in &models {
        let batch = v["batch"].as_u64().unwrap() as usize;
        let mut m: Box<dyn LoadedModel> = if label == "reference" {
            let src = if real {
                shared
                    .join("models/mobilefacenet.onnx")
                    .canonicalize()
                    .unwrap()
            } else {
                d.join("cache/builtin/iresnet-mini-g1.onnx")
            };
            ort.load(&Utf8PathBuf::from_path_buf(src).unwrap()).unwrap()
        } else {
            let ir = Utf8PathBuf::from_path_buf(d.join(format!(
                "out/{pipeline}/{}/model.xml",
                v["step"].as_str().unwrap()
            )))
            .unwrap();
            let hint = v["precision_hint"].as_str().unwrap_or("f32");
            let settings = OpenVinoSettings {
                precision_hint: if hint == "default" {
                    None
                } else {
                    Some(hint.to_string())
                },
                ..Default::default()
            };
            OpenVino::new(&tc, settings)
                .unwrap()
                .with_batch(batch)
                .load(&ir)
                .unwrap()
        };
        let name = m.inputs()[0].0.clone();
        let x = ArrayD::<f32>::from_elem(IxDyn(&[batch, 3, 112, 112]), 0.1);
        let n_batches = (images as usize).div_ceil(batch);
        m.run(&[(name.clone(), x.clone())]).unwrap(); // warm-up, as compare's first batch is
        let t0 = Instant::now();
        for _ in 0..n_batches {
            m.run(&[(name.clone(), x.clone())]).unwrap();
        }
        alone_ms += t0.elapsed().as_secs_f64() * 1000.0;
    }
    let result = serde_json::json!({
        "benchmark": "compare_throughput",
        "model": if real { "mobilefacenet (../shared)" } else { "builtin iresnet-mini" },
        "images": images,
        "models_run": models.iter().map(|(k, v)| serde_json::json!({"label": k, "batch": v["batch"], "infer_ms": v["ms"], "load_ms": v["load_ms"]})).collect::<Vec<_>>(),
        "runs": runs,
        "compare_total_ms_median": total_ms,
        "compare_data_path_ms": data_path_ms,
        "compare_images_per_s_data_path": passes / (data_path_ms / 1000.0),
        "compare_images_per_s_end_to_end": passes / (total_ms / 1000.0),
        "runtimes_alone_ms": alone_ms,
        "runtimes_alone_images_per_s": passes / (alone_ms / 1000.0),
        "ratio_data_path": alone_ms / data_path_ms,
        "ratio_end_to_end": alone_ms / total_ms,
        "prepare_ms_cold_first_run": cold_prepare_ms,
        "prepare_ms_warm_median": median_prepare(&samples),
    });
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(
        out_dir.join("compare.json"),
        serde_json::to_string_pretty(&result).unwrap(),
    )
    .unwrap();
    println!("{}", serde_json::to_string_pretty(&result).unwrap());
}

fn median_prepare(samples: &[serde_json::Value]) -> f64 {
    let mut v: Vec<f64> = samples
        .iter()
        .map(|s| {
            s["summary"]["timing"]["prepare_ms"]["ms"]
                .as_f64()
                .unwrap_or_default()
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
