"""vitrt: timm's ViT-B/16-384 as fast, verified inference artifacts.

``import vitrt`` is light: numpy and Pillow only. The backend (onnxruntime, OpenVINO or TensorRT) is
imported when an :class:`Engine` opens an artifact; torch, timm and onnx are never imported here.

The layers, each importing only those below it: the runtime core (``Engine``, ``Batcher``,
preprocessing, metadata, ``vitrt.backends``); serving (``vitrt.serving``: ``vitrt serve``, ``Client``);
jobs over collections (``vitrt.jobs``: ``embed_files``, ``predict_files``). The upper layers' names are
loaded here on first use.
"""

from .batcher import Batcher
from .engine import Engine, Prediction
from .errors import (ArtifactError, BackendError, BuildError, ImageError, InputError, MetadataError, Overloaded,
                     VitrtError)
from .preprocess import preprocess

__version__ = "0.1.0"

__all__ = [
    "Engine", "Batcher", "Client", "Prediction", "preprocess", "embed_files", "predict_files", "__version__",
    "VitrtError", "ImageError", "InputError", "ArtifactError", "MetadataError", "BackendError", "BuildError",
    "Overloaded",
]

_LAZY = {"Client": "vitrt.serving.client", "embed_files": "vitrt.jobs.local", "predict_files": "vitrt.jobs.local"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vitrt' has no attribute {name!r}")
