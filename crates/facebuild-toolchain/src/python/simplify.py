# facebuild helper: freeze input shapes and simplify a model; print one JSON line.
# argv: src dst spec-json {"tool": "onnxsim"|"onnxslim", "shapes": {input: [int|str, ...]}}
import collections, json, sys
import onnx

src, dst, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
model = onnx.load(src)

def ops(m):
    return dict(collections.Counter(n.op_type for n in m.graph.node))

def shape_of(vi):
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in vi.type.tensor_type.shape.dim]

before_nodes, before_ops = len(model.graph.node), ops(model)

# Model-local functions (PyTorch's dynamo exporter puts the whole network in them) are
# inlined: ovc converts none of them. The exporter's convolutions then leave `If`s on
# constant conditions; ONNX Runtime's basic offline optimizations fold constants, and the
# simplifier folds the branches. facebuild proves the result equivalent afterwards.
inlined = len(model.functions)
if inlined:
    import os, tempfile
    import onnx.inliner
    import onnxruntime as ort
    model = onnx.inliner.inline_local_functions(model)
    with tempfile.TemporaryDirectory() as tmp:
        a, b = os.path.join(tmp, "inlined.onnx"), os.path.join(tmp, "folded.onnx")
        onnx.save(model, a)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = b
        so.log_severity_level = 3
        ort.InferenceSession(a, so, providers=["CPUExecutionProvider"])
        model = onnx.load(b)
inputs = {i.name: i for i in model.graph.input}
for name, dims in spec["shapes"].items():
    if name not in inputs:
        print(json.dumps({"error": f"freeze names input `{name}`, but the graph's inputs are {sorted(inputs)}"}))
        sys.exit(0)
    shape = inputs[name].type.tensor_type.shape
    if len(shape.dim) != len(dims):
        print(json.dumps({"error": f"freeze gives {len(dims)} dims for `{name}`, the graph has {len(shape.dim)}"}))
        sys.exit(0)
    for d, v in zip(shape.dim, dims):
        if isinstance(v, int):
            d.ClearField("dim_param"); d.dim_value = v
        else:
            d.ClearField("dim_value"); d.dim_param = v
# Intermediate shapes recorded by the exporter may contradict the frozen ones.
del model.graph.value_info[:]
dynamic = any(isinstance(v, str) for dims in spec["shapes"].values() for v in dims)

if spec["tool"] == "onnxsim":
    import onnxsim
    version = getattr(onnxsim, "__version__", "unknown")
    # check_n=0: facebuild proves equivalence itself, in ONNX Runtime, with its own gate.
    out, _ = onnxsim.simplify(model, check_n=0, dynamic_input_shape=dynamic)
else:
    import onnxslim
    version = getattr(onnxslim, "__version__", "unknown")
    out = onnxslim.slim(model)

big = out.ByteSize() > 2_000_000_000 if hasattr(out, "ByteSize") else False
onnx.save(out, dst, save_as_external_data=big)
print(json.dumps({
    "tool": spec["tool"], "tool_version": version, "onnx_version": onnx.__version__,
    "nodes_before": before_nodes, "nodes_after": len(out.graph.node),
    "ops_before": before_ops, "ops_after": ops(out),
    "inlined_functions": inlined, "if_after": ops(out).get("If", 0),
    "inputs_after": {i.name: shape_of(i) for i in out.graph.input},
    "outputs_after": {o.name: shape_of(o) for o in out.graph.output},
}))
