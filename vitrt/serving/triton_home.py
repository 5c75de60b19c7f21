"""Which Triton Inference Server ``vitrt serve`` runs, and which release it is.

Looked for in this order (the first found wins):

1. ``--triton-home PATH``, 2. ``$VITRT_TRITON_HOME``, 3. ``/opt/tritonserver`` (NVIDIA's NGC
   ``tritonserver`` containers): a system Triton, patched by whoever maintains it;
4. the binary bundled in the ``nvidia-pytriton`` wheel (Triton 2.51 in 0.7.0, the newest wheel).

Two layouts: NGC's (``bin/tritonserver``, ``backends/python/`` with the stub built for the container's
Python and numpy) and nvidia-pytriton's (``bin/tritonserver``, ``backends/python/``, and one stub per
Python version in ``python_backend_stubs/X.Y/``). Only the bundled stub needs numpy < 2
(vitrt/serving/server.py says why).

The release is known before the server binds its address: an NGC container's
``NVIDIA_TRITON_SERVER_VERSION`` (YY.MM) / ``TRITON_SERVER_VERSION`` (2.x) for ``/opt/tritonserver``;
nvidia-pytriton's own version for the bundled binary (:data:`PYTRITON_TRITON`); otherwise the binary
is started once on loopback, on a free port with an empty repository, and ``GET /v2`` says.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ..errors import BackendError

NGC_HOME = Path("/opt/tritonserver")
HOME_ENV = "VITRT_TRITON_HOME"
#: nvidia-pytriton release -> the Triton it bundles: 0.7.0 measured (its binary's `GET /v2`: 2.51.0,
#: NGC 24.10); 0.5.4-0.5.6 from PyTriton's CHANGELOG. Any other release is probed.
PYTRITON_TRITON = {"0.7.0": ("2.51.0", "24.10"), "0.5.6": ("2.44.0", "24.03"), "0.5.5": ("2.44.0", "24.03"),
                   "0.5.4": ("2.44.0", "24.03")}
HOW = ("`make serve` (a serving venv with nvidia-pytriton and numpy < 2), NVIDIA's tritonserver container "
       "(deploy/Dockerfile), or --triton-home PATH to a Triton installation")


@dataclasses.dataclass
class Triton:
    home: Path
    layout: str  # "ngc" | "pytriton"
    found_by: str  # "--triton-home", "$VITRT_TRITON_HOME", "/opt/tritonserver", "nvidia-pytriton X.Y.Z"
    version: str | None = None  # 2.x
    ngc: str | None = None  # YY.MM
    version_from: str = "unknown"

    @property
    def binary(self) -> Path:
        return self.home / "bin" / "tritonserver"

    @property
    def bundled(self) -> bool:
        return self.layout == "pytriton"

    def describe(self) -> str:
        release = f"Triton {self.version or '?'}" + (f" (NGC {self.ngc})" if self.ngc else "")
        return f"{release} at {self.home} (found by {self.found_by}; version from {self.version_from})"

    def backend_dir(self, into: Path) -> Path:
        """The ``--backend-directory``: NGC's own; for the bundled one, a folder whose ``python/`` holds
        the stub built for this interpreter's version."""
        if not self.bundled:
            return self.home / "backends"
        minor = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = self.home / "python_backend_stubs" / minor / "triton_python_backend_stub"
        if not stub.is_file():
            raise BackendError(f"the nvidia-pytriton wheel has no Python backend stub for Python {minor}; expected 3.8-3.13")
        python = into / "python"
        python.mkdir(parents=True, exist_ok=True)
        for src in (self.home / "backends/python/libtriton_python.so",
                    self.home / "backends/python/triton_python_backend_utils.py", stub):
            dst = python / src.name
            if not dst.exists():
                dst.symlink_to(src)
        return into

    def has_option(self, option: str) -> bool:
        """Whether this binary's ``--help`` lists ``option`` (e.g. ``--http-max-input-size``)."""
        if not hasattr(self, "_help"):
            try:
                out = subprocess.run([str(self.binary), "--help"], capture_output=True, text=True, timeout=30)
                self._help = out.stdout + out.stderr
            except (OSError, subprocess.TimeoutExpired):
                self._help = ""
        return f"{option} " in self._help or f"{option}=" in self._help or f"{option}\n" in self._help


def _layout(home: Path) -> str | None:
    if not (home / "bin" / "tritonserver").is_file():
        return None
    if (home / "python_backend_stubs").is_dir():
        return "pytriton"
    if (home / "backends" / "python" / "triton_python_backend_stub").is_file():
        return "ngc"
    return None


def _bundled() -> Triton | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    home = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    if _layout(home) != "pytriton":
        return None
    return Triton(home, "pytriton", f"nvidia-pytriton {importlib.metadata.version('nvidia-pytriton')}")


def locate(explicit: str | os.PathLike | None = None, ngc_home: Path = NGC_HOME) -> Triton:
    """The Triton to run (module docstring: the order), its release not yet known."""
    named = [(Path(explicit), "--triton-home")] if explicit else []
    if os.environ.get(HOME_ENV):
        named.append((Path(os.environ[HOME_ENV]), f"${HOME_ENV}"))
    for home, by in named:  # named by the operator: must be usable
        layout = _layout(home)
        if layout is None:
            raise BackendError(f"{by} {os.fspath(home)!r} is not a Triton installation; expected bin/tritonserver and "
                               "backends/python/triton_python_backend_stub (NGC's layout) or nvidia-pytriton's")
        return Triton(home, layout, by)
    if _layout(ngc_home) is not None:
        return Triton(ngc_home, _layout(ngc_home), os.fspath(ngc_home))
    bundled = _bundled()
    if bundled is None:
        raise BackendError(f"Triton Inference Server is not installed here (no {ngc_home}, no nvidia-pytriton); expected {HOW}")
    return bundled


def identify(triton: Triton, environment: dict[str, str] | None = None, ngc_home: Path = NGC_HOME) -> Triton:
    """Fill in ``triton``'s release before it serves (module docstring: from where)."""
    env = os.environ if environment is None else environment
    if not triton.bundled and triton.home.resolve() == ngc_home.resolve() and (
            env.get("NVIDIA_TRITON_SERVER_VERSION") or env.get("TRITON_SERVER_VERSION")):
        triton.ngc = env.get("NVIDIA_TRITON_SERVER_VERSION") or None
        triton.version = env.get("TRITON_SERVER_VERSION") or None
        triton.version_from = "the NGC container's environment"
        return triton
    if triton.bundled:
        release = triton.found_by.split()[-1]
        if release in PYTRITON_TRITON:
            triton.version, triton.ngc = PYTRITON_TRITON[release]
            triton.version_from = f"nvidia-pytriton {release}'s bundled release"
            return triton
    triton.version = probe_version(triton.binary, env)
    triton.version_from = "GET /v2 of the binary started once on loopback"
    return triton


def probe_version(binary: Path, env=None, timeout: float = 60.0) -> str:
    """Start ``binary`` on loopback (a free HTTP port, gRPC and metrics off, an empty repository) and
    read its version from ``GET /v2``; the process is always stopped."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="vitrt-probe-") as repo:
        cmd = [str(binary), f"--model-repository={repo}", "--http-address=127.0.0.1", f"--http-port={port}",
               "--allow-grpc=false", "--allow-metrics=false", "--exit-timeout-secs=1", "--log-verbose=0"]
        proc = subprocess.Popen(cmd, env=dict(env or os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2", timeout=2) as r:
                        return str(json.loads(r.read())["version"])
                except (OSError, ValueError, KeyError):
                    time.sleep(0.2)
            raise BackendError(f"{binary} did not answer GET /v2 on loopback within {timeout:.0f} s (exit status "
                               f"{proc.poll()}); expected a working tritonserver")
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
