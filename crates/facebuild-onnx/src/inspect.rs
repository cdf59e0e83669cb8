//! Native inspection of an ONNX file (no Python): header, inputs/outputs with symbolic dims,
//! initializer statistics, and external-data references checked against path escapes.

use camino::{Utf8Component, Utf8Path};
use prost::Message;
use serde::{Deserialize, Serialize};

use super::proto::{ModelProto, TensorProto, ValueInfoProto, elem_bits, elem_type_name};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum DimInfo {
    Static(i64),
    Symbolic(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TensorInfo {
    pub name: String,
    pub elem_type: String,
    /// None for non-tensor values or a missing shape.
    pub shape: Option<Vec<DimInfo>>,
}

impl TensorInfo {
    pub fn is_dynamic(&self) -> bool {
        self.shape
            .as_ref()
            .is_none_or(|s| s.iter().any(|d| matches!(d, DimInfo::Symbolic(_))))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opset {
    pub domain: String,
    pub version: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExternalRef {
    pub tensor: String,
    pub location: String,
    pub length: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    pub ir_version: i64,
    pub opsets: Vec<Opset>,
    pub producer: String,
    pub graph_name: String,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    pub node_count: usize,
    pub op_types: std::collections::BTreeMap<String, usize>,
    pub initializer_count: usize,
    pub initializer_bytes: u64,
    /// Tensors held by `Constant` nodes: some exporters store every weight there, with no
    /// initializers at all.
    #[serde(default)]
    pub constant_count: usize,
    #[serde(default)]
    pub constant_bytes: u64,
    pub external_data: Vec<ExternalRef>,
}

fn tensor_info(v: &ValueInfoProto) -> TensorInfo {
    match v.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()) {
        Some(tt) => TensorInfo {
            name: v.name.clone(),
            elem_type: elem_type_name(tt.elem_type).to_string(),
            shape: tt.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .enumerate()
                    .map(|(i, d)| match (&d.dim_value, &d.dim_param) {
                        // -1 and 0 are how Paddle2ONNX and other exporters spell a dynamic
                        // dim; only a positive value fixes one.
                        (Some(v), _) if *v > 0 => DimInfo::Static(*v),
                        (_, Some(p)) if !p.is_empty() => DimInfo::Symbolic(p.clone()),
                        // An unnamed dynamic dim: name it by position so reports stay readable.
                        _ => DimInfo::Symbolic(format!("?{i}")),
                    })
                    .collect()
            }),
        },
        None => TensorInfo {
            name: v.name.clone(),
            elem_type: "non-tensor".into(),
            shape: None,
        },
    }
}

fn tensor_bytes(t: &TensorProto) -> u64 {
    if t.data_location == 1 {
        return t
            .external_data
            .iter()
            .find(|e| e.key == "length")
            .and_then(|e| e.value.parse().ok())
            .unwrap_or(0);
    }
    if !t.raw_data.is_empty() {
        return t.raw_data.len() as u64;
    }
    let n = t.float_data.len()
        + t.int32_data.len()
        + t.int64_data.len()
        + t.double_data.len()
        + t.uint64_data.len();
    if n > 0 {
        // Typed fields hold the element count (int32_data also carries 8/16-bit types).
        let count: u64 = t.dims.iter().map(|d| (*d).max(0) as u64).product();
        return count * elem_bits(t.data_type) / 8;
    }
    t.string_data.iter().map(|s| s.len() as u64).sum()
}

/// The graph's last initializer as a float32 matrix (rows, columns, values row-major):
/// INSwapper's `emap`, which InsightFace reads as `graph.initializer[-1]`.
pub fn last_initializer_matrix(
    model: &ModelProto,
    path: &Utf8Path,
) -> Result<(usize, usize, Vec<f32>)> {
    let bad = |message: String| {
        Error::Model {
        path: path.to_owned(),
        message,
        hint: Some(
            "INSwapper keeps `emap` (D x D float32) as its last initializer; set `emap: false` if this model has none".into(),
        ),
    }
    };
    let t = model
        .graph
        .as_ref()
        .and_then(|g| g.initializer.last())
        .ok_or_else(|| bad("the model has no initializer to read `emap` from".into()))?;
    let [rows, cols] = t.dims[..] else {
        return Err(bad(format!(
            "its last initializer `{}` has dims {:?}, not a D x D matrix",
            t.name, t.dims
        )));
    };
    if t.data_type != 1 || t.data_location == 1 || rows <= 0 || cols <= 0 {
        return Err(bad(format!(
            "its last initializer `{}` is not an inline float32 matrix (type {}, dims {:?})",
            t.name, t.data_type, t.dims
        )));
    }
    let n = (rows * cols) as usize;
    let values: Vec<f32> = if !t.raw_data.is_empty() {
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    } else {
        t.float_data.clone()
    };
    if values.len() != n {
        return Err(bad(format!(
            "its last initializer `{}` holds {} values for dims {:?}",
            t.name,
            values.len(),
            t.dims
        )));
    }
    Ok((rows as usize, cols as usize, values))
}

/// Read and decode a model file. A truncated or non-ONNX file is an error naming the file.
pub fn load_model(path: &Utf8Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).map_err(|e| Error::Model {
        path: path.to_owned(),
        message: format!("cannot read: {e}"),
        hint: None,
    })?;
    decode_model(path, &bytes)
}

pub fn decode_model(path: &Utf8Path, bytes: &[u8]) -> Result<ModelProto> {
    let model = ModelProto::decode(bytes).map_err(|e| Error::Model {
        path: path.to_owned(),
        message: format!("not a valid ONNX ModelProto ({} bytes): {e}", bytes.len()),
        hint: Some("the file is truncated or not ONNX; re-export or re-download it (pin `model.sha256` to catch this early)".into()),
    })?;
    if model.graph.is_none() || model.ir_version <= 0 {
        return Err(Error::Model {
            path: path.to_owned(),
            message: format!(
                "decodes as protobuf but is not an ONNX model (ir_version {}, graph {})",
                model.ir_version,
                if model.graph.is_some() {
                    "present"
                } else {
                    "missing"
                }
            ),
            hint: Some("the file is truncated or not ONNX; re-export or re-download it".into()),
        });
    }
    Ok(model)
}

/// Inspect a decoded model. `dir` is the model's folder, against which external-data paths
/// are resolved; a path that is absolute or climbs out of it is rejected.
pub fn inspect(model: &ModelProto, model_path: &Utf8Path) -> Result<ModelInfo> {
    let g = model.graph.as_ref().expect("decode_model checks the graph");
    let inits: std::collections::HashSet<&str> =
        g.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut op_types = std::collections::BTreeMap::new();
    for n in &g.node {
        *op_types
            .entry(if n.domain.is_empty() {
                n.op_type.clone()
            } else {
                format!("{}:{}", n.domain, n.op_type)
            })
            .or_insert(0) += 1;
    }
    let mut external = Vec::new();
    let dir = model_path.parent().unwrap_or(Utf8Path::new("."));
    let constant_tensors = g
        .node
        .iter()
        .flat_map(|n| n.attribute.iter().filter_map(|a| a.t.as_ref()));
    for t in g.initializer.iter().chain(constant_tensors) {
        if t.data_location != 1 {
            continue;
        }
        let location = t
            .external_data
            .iter()
            .find(|e| e.key == "location")
            .map(|e| e.value.clone())
            .unwrap_or_default();
        let rel = Utf8Path::new(&location);
        let escapes = location.is_empty()
            || rel.is_absolute()
            || rel.components().any(|c| {
                matches!(
                    c,
                    Utf8Component::ParentDir | Utf8Component::RootDir | Utf8Component::Prefix(_)
                )
            });
        if escapes {
            return Err(Error::Model {
                path: model_path.to_owned(),
                message: format!("tensor `{}` stores its data at `{location}`, outside the model's folder", t.name),
                hint: Some("external data must be a relative path inside the model's folder; re-save with onnx.save(..., location='weights.bin')".into()),
            });
        }
        if !dir.join(rel).exists() {
            return Err(Error::Model {
                path: model_path.to_owned(),
                message: format!(
                    "tensor `{}` refers to external data `{location}`, which does not exist next to the model",
                    t.name
                ),
                hint: Some("copy the external data file beside the .onnx file".into()),
            });
        }
        external.push(ExternalRef {
            tensor: t.name.clone(),
            location,
            length: t
                .external_data
                .iter()
                .find(|e| e.key == "length")
                .and_then(|e| e.value.parse().ok()),
        });
    }
    let constants = || {
        g.node
            .iter()
            .filter(|n| n.op_type == "Constant" && n.domain.is_empty())
            .flat_map(|n| n.attribute.iter().filter_map(|a| a.t.as_ref()))
    };
    Ok(ModelInfo {
        ir_version: model.ir_version,
        opsets: model
            .opset_import
            .iter()
            .map(|o| Opset {
                domain: if o.domain.is_empty() {
                    "ai.onnx".into()
                } else {
                    o.domain.clone()
                },
                version: o.version,
            })
            .collect(),
        producer: format!("{} {}", model.producer_name, model.producer_version)
            .trim()
            .to_string(),
        graph_name: g.name.clone(),
        inputs: g
            .input
            .iter()
            .filter(|v| !inits.contains(v.name.as_str()))
            .map(tensor_info)
            .collect(),
        outputs: g.output.iter().map(tensor_info).collect(),
        node_count: g.node.len(),
        op_types,
        initializer_count: g.initializer.len(),
        initializer_bytes: g.initializer.iter().map(tensor_bytes).sum(),
        constant_count: constants().count(),
        constant_bytes: constants().map(tensor_bytes).sum(),
        external_data: external,
    })
}

/// Output shapes with a dynamic batch taken as 1; None when another dim is dynamic (what a
/// detector head's binding can be checked against before anything runs).
pub fn static_shapes(outputs: &[TensorInfo]) -> Option<Vec<(String, Vec<usize>)>> {
    outputs
        .iter()
        .map(|o| {
            let dims = o
                .shape
                .as_ref()?
                .iter()
                .enumerate()
                .map(|(i, d)| match d {
                    DimInfo::Static(v) => usize::try_from(*v).ok(),
                    DimInfo::Symbolic(_) if i == 0 => Some(1),
                    DimInfo::Symbolic(_) => None,
                })
                .collect::<Option<Vec<usize>>>()?;
            Some((o.name.clone(), dims))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_model_is_a_clear_error() {
        let m = crate::builtin::BuiltinModel::from_name("iresnet-mini")
            .unwrap()
            .build();
        let bytes = Message::encode_to_vec(&m);
        let e = decode_model("m.onnx".into(), &bytes[..bytes.len() / 2])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m.onnx") && (e.contains("not a valid ONNX") || e.contains("not an ONNX")),
            "{e}"
        );
    }

    #[test]
    fn external_data_may_not_escape_the_model_folder() {
        use crate::proto::{StringStringEntryProto, TensorProto};
        let mut m = crate::builtin::BuiltinModel::from_name("iresnet-mini")
            .unwrap()
            .build();
        let t = &mut m.graph.as_mut().unwrap().initializer[0];
        *t = TensorProto {
            name: t.name.clone(),
            dims: t.dims.clone(),
            data_type: 1,
            data_location: 1,
            external_data: vec![StringStringEntryProto {
                key: "location".into(),
                value: "../../etc/passwd".into(),
            }],
            ..Default::default()
        };
        let e = inspect(&m, "models/m.onnx".into()).unwrap_err().to_string();
        assert!(e.contains("outside the model's folder"), "{e}");
    }

    /// Exporters spell a dynamic dim as -1 or 0 (Paddle2ONNX), or name it oddly (`None`):
    /// all three are dynamic, and only a positive value is fixed.
    #[test]
    fn minus_one_zero_and_odd_names_are_dynamic() {
        use crate::proto::Dimension;
        let mut m = crate::builtin::BuiltinModel::from_name("iresnet-mini")
            .unwrap()
            .build();
        let input = &mut m.graph.as_mut().unwrap().input[0];
        let shape = input
            .r#type
            .as_mut()
            .and_then(|t| t.tensor_type.as_mut())
            .and_then(|t| t.shape.as_mut())
            .unwrap();
        let dim = |v: Option<i64>, p: Option<&str>| Dimension {
            dim_value: v,
            dim_param: p.map(String::from),
        };
        shape.dim = vec![
            dim(Some(-1), None),
            dim(Some(3), None),
            dim(Some(0), None),
            dim(None, Some("None")),
        ];
        let info = inspect(&m, "m.onnx".into()).unwrap();
        assert_eq!(
            info.inputs[0].shape.as_deref().unwrap(),
            [
                DimInfo::Symbolic("?0".into()),
                DimInfo::Static(3),
                DimInfo::Symbolic("?2".into()),
                DimInfo::Symbolic("None".into()),
            ]
        );
    }

    /// Weights stored in `Constant` nodes (no initializers) are counted as weights.
    #[test]
    fn constant_node_weights_are_counted() {
        use crate::proto::{AttributeProto, NodeProto};
        let mut m = crate::builtin::BuiltinModel::from_name("iresnet-mini")
            .unwrap()
            .build();
        let before = inspect(&m, "m.onnx".into()).unwrap();
        let g = m.graph.as_mut().unwrap();
        let consts: Vec<NodeProto> = g
            .initializer
            .drain(..)
            .map(|t| NodeProto {
                output: vec![t.name.clone()],
                op_type: "Constant".into(),
                attribute: vec![AttributeProto {
                    name: "value".into(),
                    r#type: 4,
                    t: Some(t),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        let n = consts.len();
        g.node.splice(0..0, consts);
        let after = inspect(&m, "m.onnx".into()).unwrap();
        assert_eq!((after.initializer_count, after.initializer_bytes), (0, 0));
        assert_eq!(after.constant_count, n);
        assert_eq!(after.constant_bytes, before.initializer_bytes);
        assert_eq!(after.outputs[0].shape, before.outputs[0].shape);
    }

    #[test]
    fn builtin_inspects_as_declared() {
        let m = crate::builtin::BuiltinModel::from_name("iresnet-mini")
            .unwrap()
            .build();
        let info = inspect(&m, "m.onnx".into()).unwrap();
        assert_eq!(info.inputs.len(), 1);
        assert_eq!(info.inputs[0].name, "input.1");
        assert_eq!(
            info.inputs[0].shape.as_ref().unwrap()[0],
            DimInfo::Symbolic("batch".into())
        );
        assert_eq!(
            info.outputs[0].shape.as_ref().unwrap()[1],
            DimInfo::Static(512)
        );
        assert!(info.op_types.contains_key("PRelu"));
    }
}
