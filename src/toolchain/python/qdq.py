# facebuild helper: explicit (Q/DQ) INT8 quantization of an ONNX model with
# onnxruntime.quantization, in the form TensorRT's explicit-quantization mode consumes:
# QDQ format, signed int8, symmetric activations and weights, per-channel weights, a
# dedicated Q/DQ pair per consumer, bias left in float.
# argv: src dst inputs-json method per_channel(0|1) [exclude-json]; prints one JSON line.
# inputs-json: every model input, [{"name", "shape", "calib": .npy}], fed as one dict per
# calibration item. exclude-json: names of nodes left in floating point (nodes_to_exclude).
# With `--list src` instead: the quantizable nodes' names (after the same pre-processing).
import json, os, sys, tempfile
import numpy as np
import onnx
import onnxruntime
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

QUANTIZABLE = ("Conv", "ConvTranspose", "Gemm", "MatMul")

def prepare(src, tmp):
    """opset 13+, ORT's pre-processing, and a name on every node (nodes_to_exclude needs them)."""
    global upgraded_from
    # Per-channel QuantizeLinear/DequantizeLinear (the `axis` attribute) need opset 13, and so
    # does TensorRT's explicit quantization: older exports are converted first.
    model = onnx.load(src)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < 13:
        from onnx import version_converter
        upgraded_from = opset
        model = version_converter.convert_version(model, 13)
        src = os.path.join(tmp, "opset13.onnx")
        onnx.save(model, src)
    pre = os.path.join(tmp, "pre.onnx")
    # Shape inference and constant folding first, as onnxruntime recommends before quantizing.
    # Its symbolic shape inference fails on some real exports (PyTorch opset 19: a TypeError
    # in _infer_Expand): then ONNX's own shape inference alone, then none.
    global pre_process
    try:
        quant_pre_process(src, pre, skip_optimization=False)
        pre_process = "full"
    except Exception as e:
        why = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        try:
            quant_pre_process(src, pre, skip_optimization=False, skip_symbolic_shape=True)
            pre_process = f"without symbolic shape inference (it failed: {why})"
        except Exception as e2:
            why2 = f"{type(e2).__name__}: {e2}".splitlines()[0][:200]
            onnx.save(onnx.load(src), pre)
            pre_process = f"none (symbolic shape inference failed: {why}; ONNX shape inference and optimization failed: {why2})"
        print(f"facebuild: pre-processing {pre_process}", file=sys.stderr)
    m = onnx.load(pre)
    for i, n in enumerate(m.graph.node):
        if not n.name:
            n.name = f"{n.op_type}_{i}"
    onnx.save(m, pre)
    return pre, m

upgraded_from = None
pre_process = None
if sys.argv[1] == "--list":
    with tempfile.TemporaryDirectory() as tmp:
        _, m = prepare(sys.argv[2], tmp)
        print(json.dumps({"layers": [n.name for n in m.graph.node if n.op_type in QUANTIZABLE]}))
    sys.exit(0)

src, dst, spec, method, per_channel = sys.argv[1:6]
exclude = json.loads(sys.argv[6]) if len(sys.argv) > 6 else []
# Every input with its calibration rows: each item feeds all of them, row by row.
calib = {f["name"]: np.load(f["calib"]).astype(np.float32) for f in json.loads(spec)}
count = min(a.shape[0] for a in calib.values())

class Reader(CalibrationDataReader):
    def __init__(self):
        self.items = iter([{n: a[i : i + 1] for n, a in calib.items()} for i in range(count)])
    def get_next(self):
        return next(self.items, None)

with tempfile.TemporaryDirectory() as tmp:
    pre, _ = prepare(src, tmp)
    quantize_static(
        pre, dst, Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=per_channel == "1",
        calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[method],
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "AddQDQPairToWeight": True, "DedicatedQDQPair": True, "QuantizeBias": False},
        nodes_to_exclude=exclude,
    )
m = onnx.load(dst)
ops = {}
for n in m.graph.node:
    ops[n.op_type] = ops.get(n.op_type, 0) + 1
print(json.dumps({"onnxruntime_version": onnxruntime.__version__, "onnx_version": onnx.__version__, "calibration_items": int(count),
                  "method": method, "per_channel": per_channel == "1", "excluded": exclude, "opset_upgraded_from": upgraded_from, "pre_process": pre_process, "quantize_linear": ops.get("QuantizeLinear", 0), "dequantize_linear": ops.get("DequantizeLinear", 0),
                  "settings": {"format": "QDQ", "activations": "int8 symmetric", "weights": "int8 symmetric", "bias": "float", "dedicated_qdq_pair": True}}))
