# facebuild helper: INT8 post-training quantization of an ONNX model with NNCF, saved as
# OpenVINO IR. argv: onnx xml inputs-json preset subset_size ranges bias [ignored-json].
# ranges: default | minmax | histogram (NNCF's activation range estimator; default leaves
# NNCF's own choice); bias: fast | full (bias correction). inputs-json
# lists every model input: [{"name", "shape" (named dims as names), "calib": .npy}];
# ignored-json names the ops NNCF leaves in floating point (its ignored_scope).
# With `--list onnx inputs-json` instead: the quantizable ops' names, in order.
import json, sys
import numpy as np
import openvino as ov

QUANTIZABLE = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")

def model_inputs(spec):
    return [(f["name"], [d if isinstance(d, int) else -1 for d in f["shape"]]) for f in spec]

if sys.argv[1] == "--list":
    src, spec = sys.argv[2], json.loads(sys.argv[3])
    model = ov.convert_model(src, input=model_inputs(spec))
    print(json.dumps({"layers": [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in QUANTIZABLE]}))
    sys.exit(0)

import nncf

from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
from nncf.quantization.range_estimator import RangeEstimatorParametersSet

src, xml, spec, preset, subset, ranges, bias = sys.argv[1:8]
spec = json.loads(spec)
ignored = json.loads(sys.argv[8]) if len(sys.argv) > 8 else []
model = ov.convert_model(src, input=model_inputs(spec))
calib = {f["name"]: np.load(f["calib"]) for f in spec}
count = min(a.shape[0] for a in calib.values())
# One sample per item, batch 1: the model's declared batch. A model with several inputs is
# fed a tuple in the converted model's input order.
order = [p.get_any_name() for p in model.inputs]
if len(calib) == 1:
    (only,) = calib.values()
    items = [only[i : i + 1] for i in range(count)]
else:
    items = [tuple(calib[n][i : i + 1] for n in order) for i in range(count)]
q = nncf.quantize(
    model,
    nncf.Dataset(items),
    preset=nncf.QuantizationPreset.MIXED if preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
    subset_size=min(int(subset), len(items)),
    ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None,
    fast_bias_correction=bias != "full",
    advanced_parameters=None if ranges == "default" else AdvancedQuantizationParameters(
        activations_range_estimator_params={"minmax": RangeEstimatorParametersSet.MINMAX, "histogram": RangeEstimatorParametersSet.HISTOGRAM}[ranges]),
)
ov.save_model(q, xml, compress_to_fp16=False)
ops = {}
for op in q.get_ops():
    ops[op.get_type_name()] = ops.get(op.get_type_name(), 0) + 1
print(json.dumps({"nncf_version": nncf.__version__, "openvino_version": ov.__version__, "calibration_items": len(items), "inputs": order,
                  "fake_quantize_ops": ops.get("FakeQuantize", 0), "preset": preset, "ranges": ranges, "bias_correction": bias, "ignored": ignored}))
