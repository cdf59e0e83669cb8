# facebuild's TensorRT worker: runs a serialized engine with the TensorRT Python API and
# cuda-python, answering framed requests on stdin/stdout (see crates/facebuild-runtime/src/tensorrt.rs):
# a little-endian u32 length, a JSON header, then raw little-endian f32 tensors.
# argv: mode ("tensorrt" | "standin") engine_path.
# "standin" is for facebuild's own tests only: no TensorRT, it returns 2 * its input, and
# refuses to start unless FACEBUILD_ALLOW_TRTEXEC_STANDIN=1.
import json, os, struct, sys
import numpy as np

inp, out = sys.stdin.buffer, sys.stdout.buffer

def read_exact(n):
    b = inp.read(n)
    if b is None or len(b) < n:
        raise EOFError
    return b

def read_frame():
    (n,) = struct.unpack("<I", read_exact(4))
    header = json.loads(read_exact(n))
    arrays = []
    for t in header.get("inputs", []):
        count = int(np.prod(t["shape"])) if t["shape"] else 1
        arrays.append((t["name"], np.frombuffer(read_exact(count * 4), dtype="<f4").reshape(t["shape"])))
    return header, arrays

def write_frame(header, arrays=()):
    h = json.dumps(header).encode()
    out.write(struct.pack("<I", len(h)) + h)
    for a in arrays:
        out.write(np.ascontiguousarray(a, dtype="<f4").tobytes())
    out.flush()

class StandIn:
    def __init__(self, path):
        if os.environ.get("FACEBUILD_ALLOW_TRTEXEC_STANDIN") != "1":
            raise RuntimeError("the stand-in worker runs only in facebuild's tests")
        self.hello = {"inputs": [["x", [-1]]], "outputs": ["y"], "tensorrt": "test stand-in (not TensorRT)", "device": "none", "precision": "stand-in"}

    def run(self, feeds):
        return [("y", feeds[0][1] * 2.0)]

class Engine:
    def __init__(self, path):
        import tensorrt as trt
        try:
            from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
        except ImportError:
            from cuda import cudart
        self.trt, self.cudart = trt, cudart
        self.logger = trt.Logger(trt.Logger.WARNING)
        with open(path, "rb") as f:
            self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise RuntimeError("deserialize_cuda_engine returned None (built with another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        err, self.stream = cudart.cudaStreamCreate()
        self.check(err)
        err, props = cudart.cudaGetDeviceProperties(0)
        self.check(err)
        dtypes = sorted({str(self.engine.get_tensor_dtype(n)) for n in names})
        self.hello = {"inputs": [[n, list(self.engine.get_tensor_shape(n))] for n in self.inputs], "outputs": self.outputs,
                      "tensorrt": trt.__version__, "device": props.name.decode(errors="replace").strip("\x00"),
                      "precision": "as built (I/O " + ", ".join(dtypes) + ")"}

    def check(self, err):
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {err}")

    def run(self, feeds):
        cudart, trt = self.cudart, self.trt
        buffers = []
        try:
            for name, a in feeds:
                a = np.ascontiguousarray(a.astype(trt.nptype(self.engine.get_tensor_dtype(name))))
                self.context.set_input_shape(name, a.shape)
                err, ptr = cudart.cudaMalloc(a.nbytes); self.check(err); buffers.append(ptr)
                self.check(cudart.cudaMemcpyAsync(ptr, a.ctypes.data, a.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream)[0])
                self.context.set_tensor_address(name, ptr)
            host = []
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                h = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
                err, ptr = cudart.cudaMalloc(max(h.nbytes, 1)); self.check(err); buffers.append(ptr)
                self.context.set_tensor_address(name, ptr)
                host.append((name, h, ptr))
            if not self.context.execute_async_v3(self.stream):
                raise RuntimeError("execute_async_v3 failed")
            for name, h, ptr in host:
                self.check(cudart.cudaMemcpyAsync(h.ctypes.data, ptr, h.nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream)[0])
            self.check(cudart.cudaStreamSynchronize(self.stream)[0])
            return [(name, h.astype(np.float32)) for name, h, _ in host]
        finally:
            for p in buffers:
                cudart.cudaFree(p)

def main():
    mode, path = sys.argv[1], sys.argv[2]
    try:
        model = StandIn(path) if mode == "standin" else Engine(path)
    except Exception as e:  # report it to facebuild rather than dying silently
        write_frame({"error": f"{type(e).__name__}: {e}"})
        return 1
    write_frame(model.hello)
    while True:
        try:
            header, feeds = read_frame()
        except EOFError:
            return 0
        if header.get("op") == "quit":
            return 0
        try:
            results = model.run(feeds)
        except Exception as e:
            write_frame({"error": f"{type(e).__name__}: {e}", "outputs": []})
            continue
        write_frame({"outputs": [{"name": n, "shape": list(a.shape)} for n, a in results]}, [a for _, a in results])

sys.exit(main())
