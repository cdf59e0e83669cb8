# facebuild helper: INT8 post-training quantization of an ONNX model with NNCF, saved as
# OpenVINO IR. argv: onnx xml calibration.npy input_name shape-json preset subset_size
# [ignored-json]: the names of ops NNCF leaves in floating point (its ignored_scope).
# With `--list onnx input_name shape-json` instead: the quantizable ops' names, in order.
import json, sys
import numpy as np
import openvino as ov

QUANTIZABLE = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")

if sys.argv[1] == "--list":
    src, input_name, shape = sys.argv[2:5]
    shape = [d if isinstance(d, int) else -1 for d in json.loads(shape)]
    model = ov.convert_model(src, input=[(input_name, shape)])
    print(json.dumps({"layers": [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in QUANTIZABLE]}))
    sys.exit(0)

import nncf

src, xml, calib_path, input_name, shape, preset, subset = sys.argv[1:8]
ignored = json.loads(sys.argv[8]) if len(sys.argv) > 8 else []
shape = [d if isinstance(d, int) else -1 for d in json.loads(shape)]
calib = np.load(calib_path)
model = ov.convert_model(src, input=[(input_name, shape)])
# One sample per item, batch 1: the model's declared batch.
items = [calib[i : i + 1] for i in range(calib.shape[0])]
q = nncf.quantize(
    model,
    nncf.Dataset(items),
    preset=nncf.QuantizationPreset.MIXED if preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
    subset_size=min(int(subset), len(items)),
    ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None,
)
ov.save_model(q, xml, compress_to_fp16=False)
ops = {}
for op in q.get_ops():
    ops[op.get_type_name()] = ops.get(op.get_type_name(), 0) + 1
print(json.dumps({"nncf_version": nncf.__version__, "openvino_version": ov.__version__, "calibration_items": len(items),
                  "fake_quantize_ops": ops.get("FakeQuantize", 0), "preset": preset, "ignored": ignored}))
