"""vitrt's build stage: weights -> ONNX (fp32, then precision variants) -> TensorRT plans.

Imports torch, timm, onnx and ModelOpt, inside the functions that need them. The runtime (``vitrt``)
never imports this package.
"""

from .defaults import MODEL as DEFAULT_MODEL  # noqa: E402,F401
