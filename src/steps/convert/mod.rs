//! `convert`: ONNX -> deployment artifact. The params and their validation live here; each
//! backend in its own module: `openvino` (IR via ovc / NNCF) and `tensorrt` (engines via
//! trtexec, when TensorRT is installed).

mod openvino;
pub(crate) mod tensorrt;

use serde::{Deserialize, Serialize};

use super::{StepContext, StepOutcome};
use crate::error::Result;
use crate::manifest::{Dim, StepKind};

/// v3: ovc runs in the scratch folder, so the IR records no absolute path.
pub(crate) const IMPL_VERSION: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Backend {
    Openvino,
    Tensorrt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Precision {
    Fp32,
    Fp16,
    Int8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Preset {
    /// Symmetric quantization of weights and activations: fastest.
    Performance,
    /// Asymmetric activations: better for non-ReLU activations such as PReLU.
    Mixed,
}

/// How NNCF estimates activation ranges (its `RangeEstimatorParametersSet`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Ranges {
    /// NNCF's own choice for the preset.
    Default,
    /// The extremes seen in calibration.
    Minmax,
    /// A histogram-based range that minimises the quantization error.
    Histogram,
}

/// NNCF's bias correction after quantizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BiasCorrection {
    /// NNCF's default: one pass per layer on its outputs' means.
    Fast,
    /// Layer by layer on the quantized model's own activations: slower, and closer.
    Full,
}

impl Ranges {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Ranges::Default => "default",
            Ranges::Minmax => "minmax",
            Ranges::Histogram => "histogram",
        }
    }
}

impl BiasCorrection {
    pub(crate) fn name(self) -> &'static str {
        match self {
            BiasCorrection::Fast => "fast",
            BiasCorrection::Full => "full",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum HwCompat {
    /// `--hardwareCompatibilityLevel=ampere+`: one engine for Ampere and newer GPUs.
    #[serde(rename = "ampere+")]
    AmperePlus,
    /// `--hardwareCompatibilityLevel=sameComputeCapability` (TensorRT 10.4+).
    #[serde(rename = "same_compute_capability")]
    SameComputeCapability,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConvertParams {
    pub backend: Backend,
    pub precision: Precision,
    /// OpenVINO int8: the `calibrate` step whose tensor drives NNCF quantization.
    #[serde(default)]
    pub calibration: Option<String>,
    /// Input shape to convert with; default: the manifest's `model.input.shape`.
    #[serde(default)]
    pub input_shape: Option<Vec<Dim>>,
    /// OpenVINO int8: NNCF preset (default mixed).
    #[serde(default)]
    pub preset: Option<Preset>,
    /// OpenVINO int8: calibration items NNCF uses at most (default 300, its own default).
    #[serde(default)]
    pub subset_size: Option<usize>,
    /// OpenVINO int8: how NNCF estimates activation ranges (default: NNCF's own choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_ranges: Option<Ranges>,
    /// OpenVINO int8: NNCF's bias correction, `fast` (default) or `full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias_correction: Option<BiasCorrection>,
    /// OpenVINO int8: keep the fewest layers in floating point that meet a compare metric
    /// (see `steps::accuracy`).
    #[serde(default)]
    pub accuracy_control: Option<super::accuracy::AccuracyControl>,
    /// TensorRT: builder workspace pool in MiB (`--memPoolSize=workspace:<N>M`; default 1024).
    #[serde(default)]
    pub workspace_mib: Option<u64>,
    /// TensorRT: `--versionCompatible` (an engine later TensorRT versions can run).
    #[serde(default)]
    pub version_compatible: bool,
    /// TensorRT: `--hardwareCompatibilityLevel`.
    #[serde(default)]
    pub hardware_compatibility_level: Option<HwCompat>,
    /// TensorRT: `--builderOptimizationLevel` (0-5; TensorRT's default is 3).
    #[serde(default)]
    pub builder_optimization_level: Option<u8>,
    /// TensorRT int8, legacy: an existing calibration cache (`--calib=FILE`), relative to the
    /// manifest, instead of a Q/DQ model.
    #[serde(default)]
    pub calib_cache: Option<camino::Utf8PathBuf>,
    /// When the backend is not installed here (TensorRT), fail the run instead of reporting
    /// the step `unavailable`.
    #[serde(default)]
    pub required: bool,
}

impl ConvertParams {
    pub(crate) fn toolchain_pieces(&self) -> Vec<&'static str> {
        match (self.backend, self.precision) {
            // TensorRT's versions (TensorRT, CUDA, driver, GPU) are added by the context.
            (Backend::Tensorrt, _) => vec![],
            (Backend::Openvino, Precision::Int8) => vec!["openvino", "nncf", "onnxruntime"],
            (Backend::Openvino, _) => vec!["openvino", "onnxruntime"],
        }
    }

    pub(crate) fn validate(&self) -> std::result::Result<(), (String, Option<String>)> {
        match self.backend {
            Backend::Openvino => {
                let trt_only = [
                    ("workspace_mib", self.workspace_mib.is_some()),
                    ("version_compatible", self.version_compatible),
                    (
                        "hardware_compatibility_level",
                        self.hardware_compatibility_level.is_some(),
                    ),
                    (
                        "builder_optimization_level",
                        self.builder_optimization_level.is_some(),
                    ),
                    ("calib_cache", self.calib_cache.is_some()),
                    ("required", self.required),
                ];
                if let Some((k, _)) = trt_only.iter().find(|(_, set)| *set) {
                    return Err((
                        format!("`{k}` is a TensorRT setting; this step's backend is openvino"),
                        None,
                    ));
                }
                if self.accuracy_control.is_some() && self.precision != Precision::Int8 {
                    return Err((
                        "`accuracy_control` applies to `precision: int8`".into(),
                        None,
                    ));
                }
                match (self.precision, &self.calibration) {
                    (Precision::Int8, None) => Err((
                        "`precision: int8` needs `calibration: <calibrate step>`".into(),
                        Some("add a `kind: calibrate` step and name it here".into()),
                    )),
                    (Precision::Fp32 | Precision::Fp16, Some(_)) => Err((
                        "`calibration` is only used with `precision: int8`".into(),
                        None,
                    )),
                    _ => Ok(()),
                }
            }
            Backend::Tensorrt => {
                if self.calibration.is_some()
                    || self.preset.is_some()
                    || self.subset_size.is_some()
                    || self.activation_ranges.is_some()
                    || self.bias_correction.is_some()
                    || self.accuracy_control.is_some()
                {
                    return Err(("`calibration`, `preset`, `subset_size`, `activation_ranges`, `bias_correction` and `accuracy_control` are OpenVINO/NNCF settings".into(), Some("TensorRT INT8 is built from a Q/DQ model: add a `kind: quantize` step (accuracy control goes there) and take `from:` it".into())));
                }
                if self.calib_cache.is_some() && self.precision != Precision::Int8 {
                    return Err((
                        "`calib_cache` is only used with `precision: int8`".into(),
                        None,
                    ));
                }
                if matches!(self.builder_optimization_level, Some(l) if l > 5) {
                    return Err(("`builder_optimization_level` is 0-5".into(), None));
                }
                if self.workspace_mib == Some(0) {
                    return Err(("`workspace_mib` must be at least 1".into(), None));
                }
                Ok(())
            }
        }
    }

    /// TensorRT INT8 needs explicit quantization: a Q/DQ model from a `quantize` step (or a
    /// legacy calibration cache). `from` is the kind of the step this one converts.
    pub(crate) fn check_from(
        &self,
        from: Option<StepKind>,
    ) -> std::result::Result<(), (String, Option<String>)> {
        if self.backend == Backend::Tensorrt
            && self.precision == Precision::Int8
            && self.calib_cache.is_none()
            && from != Some(StepKind::Quantize)
        {
            return Err((
                "TensorRT INT8 needs an explicitly quantized (Q/DQ) model, and this step does not take `from:` a `quantize` step".into(),
                Some("add `quantize: {kind: quantize, from: simplify, params: {calibration: calibrate}}` and set `from: quantize` here (or give a legacy `calib_cache`)".into()),
            ));
        }
        Ok(())
    }
}

pub(crate) fn run(ctx: &StepContext, p: &ConvertParams) -> Result<StepOutcome> {
    match p.backend {
        Backend::Openvino => openvino::run(ctx, p),
        Backend::Tensorrt => tensorrt::run(ctx, p),
    }
}

impl super::Kind for ConvertParams {
    fn isa_dependent(&self) -> bool {
        true
    }
    fn impl_version(&self) -> u32 {
        IMPL_VERSION
    }
    fn toolchain_pieces(&self) -> Vec<&'static str> {
        ConvertParams::toolchain_pieces(self)
    }
    fn references(&self) -> Vec<String> {
        self.calibration.iter().cloned().collect()
    }
    fn datasets(&self) -> Vec<String> {
        self.accuracy_control
            .iter()
            .flat_map(|a| std::iter::once(a.dataset.clone()).chain(a.holdout.clone()))
            .collect()
    }
    fn check_reference(
        &self,
        target: &str,
        kind: StepKind,
    ) -> std::result::Result<(), super::Problem> {
        super::expect(target, kind, &[StepKind::Calibrate], "a `calibrate` step")
    }
    fn check_from(&self, from: Option<StepKind>) -> std::result::Result<(), super::Problem> {
        ConvertParams::check_from(self, from)
    }
    fn extra_files(&self) -> Vec<camino::Utf8PathBuf> {
        self.calib_cache.iter().cloned().collect()
    }
    fn validate(&self) -> Vec<super::Problem> {
        ConvertParams::validate(self).err().into_iter().collect()
    }
    fn uses_tensorrt(&self) -> bool {
        self.backend == Backend::Tensorrt
    }
    fn required(&self) -> bool {
        self.required
    }
    fn run(&self, ctx: &StepContext) -> Result<StepOutcome> {
        run(ctx, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(v: serde_json::Value) -> ConvertParams {
        serde_json::from_value(v).expect("params")
    }

    /// NNCF's recipe settings parse, stay out of the cache key when unset (earlier steps keep
    /// their keys), and are refused on TensorRT, which builds INT8 from a Q/DQ model.
    #[test]
    fn nncf_recipe_settings_are_openvino_only_and_absent_from_old_keys() {
        let ov = params(
            serde_json::json!({"backend": "openvino", "precision": "int8", "calibration": "c",
            "activation_ranges": "histogram", "bias_correction": "full"}),
        );
        assert_eq!(ov.activation_ranges, Some(Ranges::Histogram));
        assert_eq!(ov.bias_correction, Some(BiasCorrection::Full));
        assert!(ov.validate().is_ok());
        let plain = params(
            serde_json::json!({"backend": "openvino", "precision": "int8", "calibration": "c"}),
        );
        let v = serde_json::to_value(&plain).unwrap();
        assert!(v.get("activation_ranges").is_none() && v.get("bias_correction").is_none());
        let trt = params(
            serde_json::json!({"backend": "tensorrt", "precision": "int8",
            "activation_ranges": "minmax"}),
        );
        let (msg, hint) = trt.validate().unwrap_err();
        assert!(msg.contains("`activation_ranges`"), "{msg}");
        assert!(hint.unwrap().contains("kind: quantize"));
    }
}
