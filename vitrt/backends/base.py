"""The backend interface every runner implements, in the style of Polygraphy's runners."""

from __future__ import annotations

import abc

import numpy as np

from ..errors import ArtifactError, BackendError


class Backend(abc.ABC):
    """Runs an artifact: name -> array dict in, name -> array dict out.

    Inputs are checked by :class:`vitrt.Engine` before they get here; a backend only sees batches
    within the artifact's batch range, with the right dtype and shape. :meth:`run` refuses a closed
    backend; subclasses implement :meth:`_run` and :meth:`_close`.
    """

    #: short name for reports, e.g. "onnxruntime[CPUExecutionProvider]" or "tensorrt[NVIDIA H100 ...]"
    name: str = "backend"
    closed: bool = False

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; returns every output as a host numpy array the caller owns."""
        if self.closed:
            raise BackendError("this engine is closed; expected an open one: create a new vitrt.Engine")
        return self._run(feed)

    @abc.abstractmethod
    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The backend's own run."""

    def close(self) -> None:
        """Free the session and its memory. Safe to call twice."""
        if not self.closed:
            self.closed = True
            self._close()

    def _close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_io(got_in: list, got_out: dict, meta, path: str) -> None:
    """A runtime's view of the graph's I/O (``got_in``: [(name, dtype, shape with "N")], ``got_out``:
    {name: (dtype, shape after the batch)}) must be the metadata's: the graph is the truth."""
    want_in = [(meta.input_name, meta.input_dtype, ["N", *meta.item_shape])]
    want_out = {n: (s["dtype"], list(s["shape"][1:])) for n, s in meta.data["outputs"].items()}
    if got_in != want_in or got_out != want_out:
        raise ArtifactError(f"{path}: the graph's I/O is inputs {got_in}, outputs {got_out}; its metadata says "
                            f"inputs {want_in}, outputs {want_out}. The graph is the truth: expected metadata "
                            "that matches it; rebuild the artifact with `make engine`")
