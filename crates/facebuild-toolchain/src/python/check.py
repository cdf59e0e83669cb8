# facebuild helper: run the ONNX checker on a model path; print one JSON line.
import json, sys
import onnx

path, full = sys.argv[1], sys.argv[2] == "1"
try:
    # A path (not a loaded proto) lets the checker handle >2 GB models and external data.
    onnx.checker.check_model(path, full_check=full)
    print(json.dumps({"ok": True, "onnx_version": onnx.__version__, "full_check": full}))
except Exception as e:  # the checker raises ValidationError, and protobuf errors on bad files
    msg = str(e).strip().splitlines()
    print(json.dumps({"ok": False, "onnx_version": onnx.__version__, "full_check": full, "error": " ".join(msg[:6])[:2000]}))
