"""int8-cpu's default quantization: NNCF's post-training INT8 on the ONNX graph, run by
export/precision.py in a fresh interpreter (this process never imports ModelOpt, which patches ONNX
Runtime when it is imported).

    python -m export.nncf_quantize SRC.onnx OUT.onnx CALIB.npy INFO.json '{}'

``nncf.quantize`` with its ONNX backend and OpenVINO's recipe for transformers (``model_type=TRANSFORMER``,
``preset=MIXED``: symmetric per-channel int8 weights, asymmetric int8 activations, the attention's Q·Kᵀ
in int8, fast bias correction), every calibration image, with two changes measured on the real-weights
model (docs/precision.md, "INT8 and FP8 on real weights"), photos worst / mean, synthetic worst, on
ONNX Runtime:

- activation ranges by min/max (``RangeEstimatorParametersSet.MINMAX``) instead of NNCF's quantile
  default for transformers: 0.9930 / 0.9980 -> 0.9978 / 0.9986 (the trained activations' tails matter);
- no SmoothQuant (``AdvancedSmoothQuantParameters(matmul=-1)``; TRANSFORMER migrates every MatMul at
  alpha 0.95): synthetic 0.897 -> 0.9965, photos 0.9970 / 0.9985. The migration, fitted to photos,
  wrecked inputs unlike them (uniform noise) without helping the photos.

The result is a QDQ ONNX graph that ONNX Runtime and OpenVINO both run; make bench's OpenVINO NNCF INT8
peer (benchmarks/cpu_peers.py) is NNCF's own recipe on OpenVINO's IR, at the same speed on OpenVINO.
INFO.json receives what was done.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

#: What nncf.quantize is told (enum names; the module doc has why).
NNCF_QUANT = {"model_type": "TRANSFORMER", "preset": "MIXED", "activations_range": "MINMAX", "smooth_quant": False}


def exact_int8_sessions() -> bool:
    """NNCF's fast bias correction runs each quantized layer on ONNX Runtime with ORT's default options
    (nncf/onnx/engine.py): where ORT's u8 x s8 kernel saturates (no VNNI: docs/precision.md, "Without
    VNNI"), the bias shift it fits would make up for the saturation, which vitrt's exact sessions do not
    have. So every session of this process gets vitrt's exact mode there; True where it did."""
    import onnxruntime as rt

    from vitrt.backends.onnxruntime import X64_QUANT_PRECISION, _saturates_here

    if not _saturates_here():
        return False
    base = rt.SessionOptions

    class ExactSessionOptions(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_session_config_entry(X64_QUANT_PRECISION, "1")

    rt.SessionOptions = ExactSessionOptions
    return True


def quantize(src: Path, out: Path, calib: np.ndarray) -> dict:
    exact = exact_int8_sessions()
    import nncf
    import onnx
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    model = onnx.load(str(src))
    feed = model.graph.input[0].name
    items = [calib[i:i + 1] for i in range(len(calib))]
    quantized = nncf.quantize(model, nncf.Dataset(items, lambda x: {feed: x}),
                              model_type=getattr(nncf.ModelType, NNCF_QUANT["model_type"]),
                              preset=getattr(nncf.QuantizationPreset, NNCF_QUANT["preset"]),
                              subset_size=len(items), advanced_parameters=AdvancedQuantizationParameters(
                                  activations_range_estimator_params=getattr(
                                      RangeEstimatorParametersSet, NNCF_QUANT["activations_range"]),
                                  smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1, convolution=-1)))
    onnx.save(quantized, str(out))
    return {"tool": "nncf.quantize", "nncf": nncf.__version__, **NNCF_QUANT, "subset_size": len(items),
            "calibration_images": int(len(calib)), "exact_int8_sessions": exact}


def main(argv: list[str] | None = None) -> int:
    src, out, calib, info, _opts = argv if argv is not None else sys.argv[1:]
    done = quantize(Path(src), Path(out), np.load(calib))
    Path(info).write_text(json.dumps(done))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
