import subprocess
import sys


def test_import_vitrt_is_light():
    """The runtime must not pull in the build stage (DESIGN.md) nor a backend at import time."""
    code = ("import sys, vitrt; heavy = [m for m in ('torch', 'timm', 'onnx', 'torchvision', 'onnxruntime', "
            "'tensorrt', 'modelopt', 'skimage') if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import vitrt loaded: {out.stdout.strip()}"


def test_engine_on_onnx_does_not_import_build_stage(small_onnx):
    code = ("import sys, numpy as np, vitrt; e = vitrt.Engine(sys.argv[1]); "
            "e.predict(np.zeros((50, 60, 3), np.uint8)); "
            "print(','.join(m for m in ('torch', 'timm', 'onnx', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(small_onnx)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_api():
    import vitrt

    for name in ("Engine", "Prediction", "VitrtError", "ImageError", "InputError", "ArtifactError",
                 "MetadataError", "BackendError", "preprocess"):
        assert hasattr(vitrt, name)
    assert issubclass(vitrt.ImageError, vitrt.VitrtError)
    assert issubclass(vitrt.MetadataError, vitrt.ArtifactError)
