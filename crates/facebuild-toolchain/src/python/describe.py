# Prints what this environment holds, as JSON: facebuild records it once after installing.
import glob, json, os, platform, sys
from importlib import metadata

pk = {}
for d in metadata.distributions():
    name = (d.metadata["Name"] or "").lower().replace("_", "-")
    if name:
        pk[name] = d.version

def first(pattern):
    m = sorted(glob.glob(pattern))
    return m[0] if m else None

site = next(p for p in sys.path if p.endswith("site-packages"))
ov_libs = os.path.join(site, "openvino", "libs")
print(json.dumps({
    "python_version": platform.python_version(),
    "platform": f"{platform.machine()}-{sys.platform}",
    "packages": pk,
    "onnxruntime_library": first(os.path.join(site, "onnxruntime", "capi", "libonnxruntime.so.*")),
    "openvino_c_library": first(os.path.join(ov_libs, "libopenvino_c.so.*")),
    "openvino_libs_dir": ov_libs if os.path.isdir(ov_libs) else None,
    "bin_dir": os.path.dirname(sys.executable),
}))
