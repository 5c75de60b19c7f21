"""vitrt: timm's ViT-B/16-384 as fast, verified inference artifacts.

``import vitrt`` is light: numpy and Pillow only. The backend (onnxruntime or TensorRT) is imported
when an :class:`Engine` opens an artifact; torch, timm and onnx are never imported here.
"""

from .batch import embed_files, predict_files
from .client import Client
from .engine import Engine, Prediction
from .errors import ArtifactError, BackendError, BuildError, ImageError, InputError, MetadataError, VitrtError
from .preprocess import preprocess

__version__ = "0.1.0"

__all__ = [
    "Engine", "Client", "Prediction", "preprocess", "embed_files", "predict_files", "__version__",
    "VitrtError", "ImageError", "InputError", "ArtifactError", "MetadataError", "BackendError", "BuildError",
]
