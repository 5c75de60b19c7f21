"""vitrt's build stage: weights -> ONNX (fp32, then precision variants) -> TensorRT plans.

Imports torch, timm, onnx and ModelOpt, inside the functions that need them. The runtime (``vitrt``)
never imports this package.
"""

DEFAULT_MODEL = "vit_base_patch16_384.augreg_in21k_ft_in1k"
