# facebuild helper: explicit (Q/DQ) INT8 quantization of an ONNX model with
# onnxruntime.quantization, in the form TensorRT's explicit-quantization mode consumes:
# QDQ format, signed int8, symmetric activations and weights, per-channel weights, a
# dedicated Q/DQ pair per consumer, bias left in float, and Q/DQ on the inputs of weighted
# ops but not on their outputs (TensorRT's placement recommendation).
# argv: src dst inputs-json method per_channel(0|1) equalize(0|1) [exclude-json [prepared]];
# prints one JSON line. prepared: a path where the pre-processed (and equalized) model is kept
# for the next call with the same model, calibration and `equalize` (an accuracy-control
# search quantizes the same prepared model once per trial).
# inputs-json: every model input, [{"name", "shape", "calib": .npy}], fed as one dict per
# calibration item. exclude-json: names of nodes left in floating point (nodes_to_exclude).
# With `--list src` instead: the quantizable nodes' names (after the same pre-processing).
import json, os, shutil, sys, tempfile
import numpy as np
import onnx
import onnxruntime
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

QUANTIZABLE = ("Conv", "ConvTranspose", "Gemm", "MatMul")

F16, F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT

def widen(model):
    """A float16 model (half-precision exports, float16 I/O) in float32: ORT's quantizer
    calibrates and quantizes float32 graphs only. Initializers, constants, casts and every
    declared type; the Q/DQ model then takes and gives float32, as TensorRT engines built from
    it do. Returns how many tensors were widened."""
    from onnx import numpy_helper
    n = 0
    def tensor(t):
        nonlocal n
        if t.data_type == F16:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
            n += 1
    def graph(g):
        for t in g.initializer:
            tensor(t)
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            if vi.type.tensor_type.elem_type == F16:
                vi.type.tensor_type.elem_type = F32
        for node in g.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    tensor(a.t)
                elif a.type == onnx.AttributeProto.GRAPH:
                    graph(a.g)
                elif a.name == "to" and a.i == F16:
                    a.i = F32
    graph(model.graph)
    return n

def prepare(src, tmp):
    """opset 13+, float32, ORT's pre-processing, and a name on every node (nodes_to_exclude
    needs them)."""
    global upgraded_from, widened
    # Per-channel QuantizeLinear/DequantizeLinear (the `axis` attribute) need opset 13, and so
    # does TensorRT's explicit quantization: older exports are converted first.
    model = onnx.load(src)
    widened = widen(model)
    if widened:
        src = os.path.join(tmp, "float32.onnx")
        onnx.save(model, src)
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

HOMOGENEOUS = ("Relu", "PRelu", "LeakyRelu")

def equalize(path, feeds, cap=1e4):
    """Equalize the per-channel ranges of every depthwise conv's input, in place, exactly.

    A depthwise conv fed (through Relu/PRelu/LeakyRelu, which commute with a positive
    per-channel scale) by a conv's output channel c can take s_c * that channel if its own
    weights for c are divided by s_c: the float model computes the same. Per-channel weight
    scales absorb either factor, but the activation between them is quantized per tensor, so
    a channel whose range is a small fraction of the tensor's rounds to a few levels or to
    zero. BN-folded exports (a Paddle MobileFaceNet: 6.8% of the last depthwise conv's input
    channels below one step, weights of 156.7 against a median of 0.5 behind them) lose
    everything there; NNCF avoids it with per-channel activation scales, which TensorRT's
    explicit quantization does not take. Scaling each channel up to the tensor's max range
    is the same cure in a form it does take (cross-layer equalization). Returns the count."""
    from onnx import helper, numpy_helper
    m = onnx.load(path)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    uses = {}
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    outputs = {o.name for o in g.output}
    pairs = []
    for d in g.node:
        if d.op_type != "Conv" or len(d.input) < 2 or d.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[d.input[1]])
        group = next((a.i for a in d.attribute if a.name == "group"), 1)
        if not (w.ndim == 4 and w.shape[1] == 1 and group == w.shape[0] and group > 1):
            continue
        chain, t = [], d.input[0]
        while t in prod and prod[t].op_type in HOMOGENEOUS:
            chain.append(prod[t])
            t = prod[t].input[0]
        p = prod.get(t)
        if p is None or p.op_type != "Conv" or len(p.input) < 2 or p.input[1] not in inits:
            continue
        pw = numpy_helper.to_array(inits[p.input[1]])
        between = [t] + [n.output[0] for n in chain]
        params = [p.input[1], d.input[1]] + list(p.input[2:3])
        if pw.shape[0] != w.shape[0] or any(uses.get(v, 0) != 1 or v in outputs for v in between + params):
            continue
        pairs.append((p, d))
    if not pairs:
        return 0
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    for _, d in pairs:
        probe.graph.output.append(helper.make_tensor_value_info(d.input[0], onnx.TensorProto.FLOAT, None))
    s = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    first = len(g.output)
    ranges = [None] * len(pairs)
    for f in feeds:
        for k, v in enumerate(s.run(None, f)[first:]):
            r = np.abs(v).max(axis=(0, 2, 3))
            ranges[k] = r if ranges[k] is None else np.maximum(ranges[k], r)
    def put(name, a):
        inits[name].CopyFrom(numpy_helper.from_array(a.astype(np.float32), name))
    for (p, d), r in zip(pairs, ranges):
        top = float(r.max())
        if top <= 0:
            continue
        # Up to the widest channel; a dead channel (all zero here) stays as it is.
        s_c = np.where(r > 0, top / np.maximum(r, top / cap), 1.0).astype(np.float32)
        put(p.input[1], numpy_helper.to_array(inits[p.input[1]]) * s_c.reshape(-1, 1, 1, 1))
        if len(p.input) > 2 and p.input[2]:
            put(p.input[2], numpy_helper.to_array(inits[p.input[2]]) * s_c)
        put(d.input[1], numpy_helper.to_array(inits[d.input[1]]) / s_c.reshape(-1, 1, 1, 1))
    onnx.save(m, path)
    return len(pairs)

upgraded_from = None
widened = 0
pre_process = None
if sys.argv[1] == "--list":
    with tempfile.TemporaryDirectory() as tmp:
        _, m = prepare(sys.argv[2], tmp)
        print(json.dumps({"layers": [n.name for n in m.graph.node if n.op_type in QUANTIZABLE]}))
    sys.exit(0)

src, dst, spec, method, per_channel, equalize_on = sys.argv[1:7]
exclude = json.loads(sys.argv[7]) if len(sys.argv) > 7 else []
prepared = sys.argv[8] if len(sys.argv) > 8 else ""
# Every input with its calibration rows: each item feeds all of them, row by row.
calib = {f["name"]: np.load(f["calib"]).astype(np.float32) for f in json.loads(spec)}
count = min(a.shape[0] for a in calib.values())

def feed_types(path):
    """The calibration rows in each input's own element type (facebuild writes them in
    float32): integers rounded and saturated, as facebuild feeds them."""
    m = onnx.load(path, load_external_data=False)
    for i in m.graph.input:
        if i.name not in calib:
            continue
        ty = onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
        a = calib[i.name]
        if np.issubdtype(ty, np.integer):
            info = np.iinfo(ty)
            a = np.clip(np.rint(a), info.min, info.max)
        calib[i.name] = a.astype(ty)

class Reader(CalibrationDataReader):
    def __init__(self):
        self.items = iter([{n: a[i : i + 1] for n, a in calib.items()} for i in range(count)])
    def get_next(self):
        return next(self.items, None)

with tempfile.TemporaryDirectory() as tmp:
    if prepared and os.path.exists(prepared + ".json"):
        pre = prepared
        with open(prepared + ".json") as f:
            upgraded_from, pre_process, equalized, widened = json.load(f)
        feed_types(pre)
    else:
        pre, _ = prepare(src, tmp)
        feed_types(pre)
        equalized = equalize(pre, [{n: a[i : i + 1] for n, a in calib.items()} for i in range(count)]) if equalize_on == "1" else 0
        if prepared:
            # The model first, its facts last: the facts' presence means both are whole.
            os.replace(shutil.copy(pre, prepared + ".part"), prepared)
            with open(prepared + ".json.part", "w") as f:
                json.dump([upgraded_from, pre_process, equalized, widened], f)
            os.replace(prepared + ".json.part", prepared + ".json")
    quantize_static(
        pre, dst, Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=per_channel == "1",
        calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[method],
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "AddQDQPairToWeight": True, "DedicatedQDQPair": True, "QuantizeBias": False,
                       # TensorRT's recommendation: Q/DQ on the inputs of weighted ops, not on
                       # their outputs. A quantized conv output before a PReLU with small
                       # negative slopes spends its range on values the PReLU then shrinks.
                       "OpTypesToExcludeOutputQuantization": list(QUANTIZABLE)},
        nodes_to_exclude=exclude,
    )
m = onnx.load(dst)
ops = {}
for n in m.graph.node:
    ops[n.op_type] = ops.get(n.op_type, 0) + 1
print(json.dumps({"onnxruntime_version": onnxruntime.__version__, "onnx_version": onnx.__version__, "calibration_items": int(count),
                  "method": method, "per_channel": per_channel == "1", "equalized": equalized, "excluded": exclude, "opset_upgraded_from": upgraded_from, "widened_from_float16": widened, "pre_process": pre_process, "quantize_linear": ops.get("QuantizeLinear", 0), "dequantize_linear": ops.get("DequantizeLinear", 0),
                  "settings": {"format": "QDQ", "activations": "int8 symmetric", "weights": "int8 symmetric", "bias": "float", "dedicated_qdq_pair": True, "weighted_outputs": "float"}}))
