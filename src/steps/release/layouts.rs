//! Deploy layouts inside a release, one model per promoted artifact:
//! - a Triton model repository, `triton/<pipeline>_<artifact>/config.pbtxt` and
//!   `1/model.{onnx,plan,xml+bin}`;
//! - an OpenVINO Model Server repository, `ovms/config.json` and
//!   `ovms/models/<pipeline>_<artifact>/1/`, with `ovms/preprocessing.json` for what OVMS
//!   takes on its command line only.
//!
//! Tensors come from the source graph (a conversion keeps the I/O names and types) and the
//! manifest's declared shapes; batch sizes from the benchmark. Files are copies, not links:
//! `model_signing` refuses symlinks.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{IoContext, Result};
use crate::manifest::{Dim, InputSpec};
use crate::onnx::inspect::{DimInfo, ModelInfo, TensorInfo};
use crate::runtime::BenchMeasurement;

/// Which layouts a release writes (`layouts:`; default both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DeployLayout {
    Triton,
    Ovms,
}

pub(crate) fn default_layouts() -> Vec<DeployLayout> {
    vec![DeployLayout::Triton, DeployLayout::Ovms]
}

/// One promoted artifact as the layouts see it.
pub(super) struct Released<'a> {
    pub name: &'a str,
    /// The model it is an artifact of (its index in the models given to [`write`]).
    pub model: usize,
    /// The artifact's model files (`model.onnx`, `model.engine`, `model.xml` + `model.bin`)
    /// in the stage.
    pub files: BTreeMap<String, Utf8PathBuf>,
    pub precision: &'a str,
    /// The benchmark's figures for it, one per configuration.
    pub bench: Vec<&'a BenchMeasurement>,
    /// The precision OpenVINO computed in when compare measured it (`f32`, `bf16`).
    pub compared_precision: Option<&'a str>,
}

/// What the layouts are made from, besides the artifacts.
pub(super) struct Model<'a> {
    pub pipeline: &'a str,
    pub inputs: Vec<&'a InputSpec>,
    pub graph: &'a ModelInfo,
    pub preprocessing: Option<&'a crate::domain::Preprocessing>,
}

/// A tensor as both servers describe it: name, element type, every dim (-1 when dynamic).
#[derive(Debug, Clone, PartialEq)]
struct Tensor {
    name: String,
    elem_type: String,
    dims: Vec<i64>,
}

fn input_tensors(m: &Model) -> Vec<Tensor> {
    m.inputs
        .iter()
        .map(|i| Tensor {
            name: i.name.clone(),
            elem_type: graph_type(&m.graph.inputs, &i.name),
            dims: i
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => *n as i64,
                    Dim::Named(_) => -1,
                })
                .collect(),
        })
        .collect()
}

fn output_tensors(m: &Model) -> Vec<Tensor> {
    m.graph
        .outputs
        .iter()
        .map(|o| Tensor {
            name: o.name.clone(),
            elem_type: o.elem_type.clone(),
            dims: o
                .shape
                .as_ref()
                .map(|s| {
                    s.iter()
                        .map(|d| match d {
                            DimInfo::Static(n) if *n > 0 => *n,
                            _ => -1,
                        })
                        .collect()
                })
                .unwrap_or_else(|| vec![-1]),
        })
        .collect()
}

fn graph_type(tensors: &[TensorInfo], name: &str) -> String {
    tensors
        .iter()
        .find(|t| t.name == name)
        .map_or_else(|| "float32".into(), |t| t.elem_type.clone())
}

/// The largest batch Triton may form, or 0 when the model cannot batch on its first dim:
/// every input's first dim is declared dynamic with a range, and every output's first dim is
/// the same graph dim as the inputs' (a detector's anchor count is not a batch).
fn max_batch(m: &Model) -> u64 {
    let batch_param = |t: &TensorInfo| match t.shape.as_ref()?.first()? {
        DimInfo::Symbolic(s) => Some(s.clone()),
        DimInfo::Static(n) if *n <= 0 => Some(String::new()),
        DimInfo::Static(_) => None,
    };
    let mut max = u64::MAX;
    let mut param = None;
    for i in &m.inputs {
        let Some(Dim::Named(d)) = i.shape.first() else {
            return 0;
        };
        let Some(r) = i.dims.get(d) else { return 0 };
        max = max.min(r.max);
        let Some(p) = m
            .graph
            .inputs
            .iter()
            .find(|t| t.name == i.name)
            .and_then(batch_param)
        else {
            return 0;
        };
        if param.get_or_insert(p.clone()) != &p {
            return 0;
        }
    }
    let Some(param) = param else { return 0 };
    let outputs_batch = m.graph.outputs.iter().all(|o| {
        batch_param(o).is_some_and(|p| p == param && !p.is_empty())
            && o.shape.as_ref().is_some_and(|s| s.len() >= 2)
    });
    if outputs_batch && max != u64::MAX {
        max
    } else {
        0
    }
}

/// Triton's name for an ONNX element type.
fn triton_type(t: &str) -> &'static str {
    match t {
        "float32" => "TYPE_FP32",
        "float16" => "TYPE_FP16",
        "bfloat16" => "TYPE_BF16",
        "float64" => "TYPE_FP64",
        "int8" => "TYPE_INT8",
        "uint8" => "TYPE_UINT8",
        "int16" => "TYPE_INT16",
        "uint16" => "TYPE_UINT16",
        "int32" => "TYPE_INT32",
        "uint32" => "TYPE_UINT32",
        "int64" => "TYPE_INT64",
        "uint64" => "TYPE_UINT64",
        "bool" => "TYPE_BOOL",
        "string" => "TYPE_STRING",
        _ => "TYPE_INVALID",
    }
}

/// How an artifact is served: Triton's platform or backend line and its model file names.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Served {
    Onnx,
    Plan,
    OpenVino,
}

impl Served {
    fn of(files: &BTreeMap<String, Utf8PathBuf>) -> Option<Served> {
        if files.contains_key("model.engine") {
            Some(Served::Plan)
        } else if files.contains_key("model.xml") {
            Some(Served::OpenVino)
        } else if files.contains_key("model.onnx") {
            Some(Served::Onnx)
        } else {
            None
        }
    }

    /// (file in the release stage, name in the version folder).
    fn copies(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Served::Onnx => &[("model.onnx", "model.onnx")],
            Served::Plan => &[("model.engine", "model.plan")],
            Served::OpenVino => &[("model.xml", "model.xml"), ("model.bin", "model.bin")],
        }
    }
}

fn model_name(pipeline: &str, artifact: &str) -> String {
    format!("{pipeline}_{artifact}")
}

/// The batch with the best throughput in the artifact's benchmark, at most `max`.
fn preferred_batch(a: &Released, max: u64) -> Option<u64> {
    a.bench
        .iter()
        .flat_map(|b| &b.throughput)
        .filter(|t| (t.batch as u64) <= max)
        .filter_map(|t| Some((t.images_per_s?, t.batch as u64)))
        .max_by(|x, y| x.0.total_cmp(&y.0))
        .map(|(_, b)| b)
}

fn dims_text(dims: &[i64]) -> String {
    dims.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `config.pbtxt` in protobuf text format (Triton's `ModelConfig`).
fn triton_config(m: &Model, a: &Released, served: Served) -> Result<String> {
    let name = model_name(m.pipeline, a.name);
    let batch = max_batch(m);
    let skip = usize::from(batch > 0);
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "name: \"{name}\"");
    let _ = match served {
        Served::Onnx => writeln!(w, "platform: \"onnxruntime_onnx\""),
        Served::Plan => writeln!(w, "platform: \"tensorrt_plan\""),
        Served::OpenVino => writeln!(w, "backend: \"openvino\""),
    };
    let _ = writeln!(w, "max_batch_size: {batch}");
    for (field, tensors) in [("input", input_tensors(m)), ("output", output_tensors(m))] {
        let _ = writeln!(w, "{field} [");
        for (k, t) in tensors.iter().enumerate() {
            let _ = writeln!(
                w,
                "  {{\n    name: \"{}\"\n    data_type: {}\n    dims: [ {} ]\n  }}{}",
                t.name,
                triton_type(&t.elem_type),
                dims_text(&t.dims[skip.min(t.dims.len())..]),
                if k + 1 < tensors.len() { "," } else { "" }
            );
        }
        let _ = writeln!(w, "]");
    }
    if batch > 0 {
        let _ = writeln!(w, "dynamic_batching {{");
        if let Some(b) = preferred_batch(a, batch) {
            let _ = writeln!(w, "  preferred_batch_size: [ {b} ]");
        }
        let _ = writeln!(w, "}}");
    }
    let inputs: Vec<(&InputSpec, &[Dim])> = m.inputs.iter().map(|i| (*i, &i.shape[..])).collect();
    let profile = crate::steps::convert::tensorrt::declared_profile(&inputs)?;
    let gpu = served == Served::Plan || (served == Served::Onnx && a.precision == "int8");
    let _ = writeln!(
        w,
        "instance_group [\n  {{\n    count: 1\n    kind: {}{}\n  }}\n]",
        if gpu { "KIND_GPU" } else { "KIND_CPU" },
        // The engine holds the profiles; instances use the first (the declared min/opt/max).
        if served == Served::Plan && profile.is_some() {
            "\n    profile: [ \"0\" ]"
        } else {
            ""
        }
    );
    // A Q/DQ model is TensorRT's explicit quantization: served through ONNX Runtime's
    // TensorRT accelerator, with the profile the manifest declares.
    if served == Served::Onnx && gpu {
        let _ = writeln!(
            w,
            "optimization {{\n  execution_accelerators {{\n    gpu_execution_accelerator: [\n      {{\n        name: \"tensorrt\"\n        parameters {{ key: \"precision_mode\" value: \"INT8\" }}"
        );
        if let Some(p) = &profile {
            for (k, v) in [
                ("trt_profile_min_shapes", &p.min),
                ("trt_profile_opt_shapes", &p.opt),
                ("trt_profile_max_shapes", &p.max),
            ] {
                let _ = writeln!(w, "        parameters {{ key: \"{k}\" value: \"{v}\" }}");
            }
        }
        let _ = writeln!(w, "      }}\n    ]\n  }}\n}}");
    }
    // The plan's profile as it was built, for who reads the config (Triton takes it from the
    // engine).
    if let (Served::Plan, Some(p)) = (served, &profile) {
        for (k, v) in [
            ("facebuild_profile_min_shapes", &p.min),
            ("facebuild_profile_opt_shapes", &p.opt),
            ("facebuild_profile_max_shapes", &p.max),
        ] {
            let _ = writeln!(
                w,
                "parameters {{\n  key: \"{k}\"\n  value {{ string_value: \"{v}\" }}\n}}"
            );
        }
    }
    Ok(s)
}

/// OVMS's shape for an input: `(1:8,3,112,112)`, ranges from the declared dims.
fn ovms_shape(i: &InputSpec) -> String {
    let dims: Vec<String> = i
        .shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => n.to_string(),
            Dim::Named(s) => i
                .dims
                .get(s)
                .map_or_else(|| "-1".into(), |r| format!("{}:{}", r.min, r.max)),
        })
        .collect();
    format!("({})", dims.join(","))
}

/// The layout OVMS is told for an input: the manifest's for the image input (no
/// transposition), `NC` for a flat one (an embedding).
fn ovms_layout(i: &InputSpec, image: bool) -> Option<String> {
    if image {
        Some(format!("{:?}", i.layout))
    } else {
        (i.shape.len() == 2).then(|| "NC".into())
    }
}

/// One entry of `model_config_list`, with only keys OVMS's config schema accepts (its
/// `src/schema.cpp`: name, base_path, shape, layout, target_device, plugin_config...).
fn ovms_entry(m: &Model, a: &Released) -> serde_json::Value {
    let name = model_name(m.pipeline, a.name);
    let mut shape = serde_json::Map::new();
    let mut layout = serde_json::Map::new();
    for (k, i) in m.inputs.iter().enumerate() {
        shape.insert(i.name.clone(), ovms_shape(i).into());
        if let Some(l) = ovms_layout(i, k == 0) {
            layout.insert(i.name.clone(), l.into());
        }
    }
    let mut config = json!({
        "name": name,
        "base_path": format!("models/{name}"),
        "shape": shape,
        "layout": layout,
        "target_device": "CPU",
    });
    // The gates were measured in this precision (f32 when nothing measured it); OVMS's CPU
    // plugin would otherwise pick its own (bf16 where the CPU has it).
    config["plugin_config"] =
        json!({"INFERENCE_PRECISION_HINT": a.compared_precision.unwrap_or("f32")});
    json!({"config": config})
}

/// `ovms/preprocessing.json`: mean, scale and color per model, as OVMS's `--mean`,
/// `--scale` and `--color_format` spell them. Its config.json schema refuses these keys.
fn ovms_preprocessing(models: &[Model], served: &[&Released]) -> Option<serde_json::Value> {
    let list = |v: &[f32]| {
        format!(
            "[{}]",
            v.iter().map(f32::to_string).collect::<Vec<_>>().join(",")
        )
    };
    let each: serde_json::Map<String, serde_json::Value> = served
        .iter()
        .filter_map(|a| {
            let m = &models[a.model];
            let p = m.preprocessing?;
            Some((
                model_name(m.pipeline, a.name),
                json!({
                    "input": &m.inputs.first()?.name,
                    "mean": list(&p.mean),
                    "scale": list(&p.std),
                    "color_format": format!("{:?}", p.color),
                }),
            ))
        })
        .collect();
    (!each.is_empty()).then(|| json!({
        "models": each,
        "note": "OVMS applies these with --mean, --scale and --color_format when it serves one model (see README.md here); its config.json schema does not accept them",
    }))
}

fn ovms_readme(models: &[Model], served: &[&Released]) -> String {
    let pipeline = models.first().map_or("", |m| m.pipeline);
    let mut s = format!(
        "# OpenVINO Model Server layout of `{pipeline}`\n\nEvery model in `config.json`:\n\n```sh\novms --config_path ovms/config.json --port 9000 --rest_port 8000\n```\n\nOne model, with the preprocessing the gates were measured with (clients then send raw pixels in the model's colour order):\n\n"
    );
    let list = |v: &[f32]| v.iter().map(f32::to_string).collect::<Vec<_>>().join(",");
    for a in served {
        let m = &models[a.model];
        let (Some(p), Some(i)) = (m.preprocessing, m.inputs.first()) else {
            continue;
        };
        let n = model_name(m.pipeline, a.name);
        s += &format!(
            "```sh\novms --model_path ovms/models/{n} --model_name {n} --shape \"{}\" --layout {:?} --mean \"[{}]\" --scale \"[{}]\" --color_format {:?} --port 9000\n```\n",
            ovms_shape(i),
            i.layout,
            list(&p.mean),
            list(&p.std),
            p.color
        );
    }
    s
}

/// The layouts' files written into `stage`, relative to it.
pub(super) fn write(
    models: &[Model],
    artifacts: &[Released],
    layouts: &[DeployLayout],
    stage: &Utf8Path,
) -> Result<Vec<Utf8PathBuf>> {
    let mut written = Vec::new();
    let mut put = |rel: String, bytes: &[u8]| -> Result<()> {
        let to = stage.join(&rel);
        std::fs::create_dir_all(to.parent().unwrap_or(stage)).fs_context(&to)?;
        std::fs::write(&to, bytes).fs_context(&to)?;
        written.push(Utf8PathBuf::from(rel));
        Ok(())
    };
    let copy = |from: &Utf8Path, rel: &str, written: &mut Vec<Utf8PathBuf>| -> Result<()> {
        let to = stage.join(rel);
        std::fs::create_dir_all(to.parent().unwrap_or(stage)).fs_context(&to)?;
        std::fs::copy(from, &to).fs_context(from)?;
        written.push(Utf8PathBuf::from(rel));
        Ok(())
    };
    let mut copies = Vec::new();
    if layouts.contains(&DeployLayout::Triton) {
        for a in artifacts {
            let Some(served) = Served::of(&a.files) else {
                continue;
            };
            let m = &models[a.model];
            let dir = format!("triton/{}", model_name(m.pipeline, a.name));
            put(
                format!("{dir}/config.pbtxt"),
                triton_config(m, a, served)?.as_bytes(),
            )?;
            for (from, to) in served.copies() {
                copies.push((a.files[*from].clone(), format!("{dir}/1/{to}")));
            }
        }
    }
    if layouts.contains(&DeployLayout::Ovms) {
        let served: Vec<&Released> = artifacts
            .iter()
            .filter(|a| matches!(Served::of(&a.files), Some(Served::OpenVino | Served::Onnx)))
            .collect();
        if !served.is_empty() {
            let list: Vec<serde_json::Value> = served
                .iter()
                .map(|a| ovms_entry(&models[a.model], a))
                .collect();
            let config = json!({ "model_config_list": list });
            put(
                "ovms/config.json".into(),
                &serde_json::to_vec_pretty(&config).map_err(anyhow::Error::from)?,
            )?;
            if let Some(p) = ovms_preprocessing(models, &served) {
                put(
                    "ovms/preprocessing.json".into(),
                    &serde_json::to_vec_pretty(&p).map_err(anyhow::Error::from)?,
                )?;
            }
            put(
                "ovms/README.md".into(),
                ovms_readme(models, &served).as_bytes(),
            )?;
            for a in served {
                let served = Served::of(&a.files).unwrap_or(Served::Onnx);
                for (from, to) in served.copies() {
                    copies.push((
                        a.files[*from].clone(),
                        format!(
                            "ovms/models/{}/1/{to}",
                            model_name(models[a.model].pipeline, a.name)
                        ),
                    ));
                }
            }
        }
    }
    for (from, rel) in copies {
        copy(&from, &rel, &mut written)?;
    }
    Ok(written)
}

/// Whether `rel` is a layout's generated file (a config, kept among the release step's
/// outputs), rather than a copy of an artifact's model file.
pub(super) fn is_generated(rel: &str) -> bool {
    // A pack's InsightFace package (`onnx/`) is the release's own, models included: they
    // are the pack's sources, which no upstream step outputs.
    rel.starts_with("onnx/")
        || ((rel.starts_with("triton/") || rel.starts_with("ovms/"))
            && model_source("", rel).is_none())
}

/// The cache output name that holds a generated layout file (one plain name).
pub(super) fn output_name(rel: &str) -> String {
    format!("layout_{}", rel.replace('/', "__"))
}

/// For a layout's copy of a model file, the artifact (step) and its output it copies, when
/// the pipeline is `pipeline`: `triton/<pipeline>_<a>/1/model.plan` is `a`'s `model.engine`.
pub(super) fn model_source(pipeline: &str, rel: &str) -> Option<(String, &'static str)> {
    let parts: Vec<&str> = rel.split('/').collect();
    let (model, file) = match parts.as_slice() {
        ["triton", model, "1", file] | ["ovms", "models", model, "1", file] => (*model, *file),
        _ => return None,
    };
    let output = match file {
        "model.plan" => "model.engine",
        "model.onnx" => "model.onnx",
        "model.xml" => "model.xml",
        "model.bin" => "model.bin",
        _ => return None,
    };
    let artifact = if pipeline.is_empty() {
        model.to_string()
    } else {
        model.strip_prefix(&format!("{pipeline}_"))?.to_string()
    };
    Some((artifact, output))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_copies_map_back_to_their_artifacts() {
        assert_eq!(
            model_source("rec", "triton/rec_trt_fp16/1/model.plan"),
            Some(("trt_fp16".into(), "model.engine"))
        );
        assert_eq!(
            model_source("rec", "ovms/models/rec_ov/1/model.bin"),
            Some(("ov".into(), "model.bin"))
        );
        assert_eq!(model_source("rec", "triton/rec_ov/config.pbtxt"), None);
        assert!(is_generated("triton/rec_ov/config.pbtxt"));
        assert!(is_generated("ovms/config.json"));
        assert!(!is_generated("triton/rec_ov/1/model.xml"));
        assert!(!is_generated("ov/model.xml"));
        assert_eq!(
            output_name("triton/rec_ov/config.pbtxt"),
            "layout_triton__rec_ov__config.pbtxt"
        );
    }
}
