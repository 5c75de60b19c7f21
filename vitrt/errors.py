"""vitrt's one exception family.

Every error vitrt raises on bad input is a :class:`VitrtError`; the subclass says which kind of
input was wrong, and the message says what was received and what was expected.
"""


class VitrtError(Exception):
    """Base class of every error vitrt raises on purpose."""


class ImageError(VitrtError, ValueError):
    """An image could not be used: missing, unreadable, not an image, too large or too small."""


class InputError(VitrtError, ValueError):
    """An array or argument has the wrong type, dtype, rank, shape or value."""


class ArtifactError(VitrtError):
    """An artifact (ONNX file, TensorRT plan, sidecar) is missing, unreadable or does not match."""


class MetadataError(ArtifactError):
    """An artifact has no vitrt metadata, or metadata that vitrt cannot use."""


class BackendError(VitrtError, RuntimeError):
    """The inference backend (ONNX Runtime, TensorRT, CUDA) is missing or failed."""


class BuildError(VitrtError, RuntimeError):
    """The build stage failed: export, precision pass, verification or engine build."""


class Overloaded(BackendError):
    """A request was refused or given up because the engine is busy: the in-process batcher's queue is
    full, or the request waited its ``timeout_ms`` without starting. Retry later, or add capacity."""
