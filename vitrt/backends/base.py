"""The backend interface every runner implements, in the style of Polygraphy's runners."""

from __future__ import annotations

import abc

import numpy as np


class Backend(abc.ABC):
    """Runs an artifact: name -> array dict in, name -> array dict out.

    Inputs are checked by :class:`vitrt.Engine` before they get here; a backend only sees batches
    within the artifact's batch range, with the right dtype and shape.
    """

    #: short name for reports, e.g. "onnxruntime[CPUExecutionProvider]" or "tensorrt"
    name: str = "backend"

    @abc.abstractmethod
    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; returns every output as a host numpy array the caller owns."""

    def close(self) -> None:
        """Free the session and its memory. Safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
