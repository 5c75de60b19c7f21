"""``vitrt serve`` as a child process on loopback, for the server tests and the load benchmark: free
ports, a bounded wait for readiness, and a stop that always happens (SIGTERM, then SIGKILL), even when
the caller fails. The server runs in the serving venv (``$VITRT_SERVE_PYTHON``, else .venv-serve)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def serve_python() -> Path | None:
    """The serving venv's python (`make serve-venv`), or None when there is none. A
    ``$VITRT_SERVE_PYTHON`` that names no file is an error (`make test` sets it: the venv must be there)."""
    named = os.environ.get("VITRT_SERVE_PYTHON")
    path = Path(named or ROOT / ".venv-serve" / "bin" / "python")
    if named and not path.is_file():
        raise RuntimeError(f"VITRT_SERVE_PYTHON={named} does not exist; expected the serving venv's python")
    return path if path.is_file() else None


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _terminate_with_parent() -> None:  # runs in the child before exec
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _kill_with_parent() -> None:  # unshare waits out a SIGTERM; its SIGKILL takes the server (--kill-child)
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


#: ``vitrt serve`` as PID 1 of a new pid namespace, as in a container (util-linux unshare; root, or a
#: user namespace the kernel allows). ``--kill-child``: the server dies with the unshare process.
PID_NAMESPACE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]


def pid_namespace_refused() -> str | None:
    """Why this machine cannot run a process as PID 1 of a new pid namespace, or None when it can."""
    try:
        r = subprocess.run([*PID_NAMESPACE, "sh", "-c", "echo $$"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{PID_NAMESPACE[0]}: {exc}"
    return None if r.returncode == 0 and r.stdout.strip() == "1" else f"unshare --pid refused: {r.stderr.strip()}"


class ServeProcess:
    """``with ServeProcess(artifact) as srv:`` ... ``srv.url``; extra ``vitrt serve`` flags in ``args``;
    ``pid_namespace=True``: the server is PID 1 of its own pid namespace (:data:`PID_NAMESPACE`)."""

    def __init__(self, artifact: Path, *args: str, ports: list[int] | None = None, log: Path | None = None,
                 ready_timeout: float = 180.0, env: dict[str, str] | None = None, pid_namespace: bool = False):
        python = serve_python()
        if python is None:
            raise RuntimeError("no serving venv: run `make serve-venv` (or set VITRT_SERVE_PYTHON)")
        self.http, self.grpc, self.metrics = ports or free_ports(3)
        self.url = f"127.0.0.1:{self.http}"
        self.log_path = log or Path(os.environ.get("TMPDIR", "/tmp")) / f"vitrt-serve-{self.http}.log"
        self.cmd = [*(PID_NAMESPACE if pid_namespace else []), str(python), "-m", "vitrt", "serve", str(artifact),
                    "--http-port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics),
                    *args]
        self.pid_namespace = pid_namespace
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None
        # the admin token: $VITRT_ADMIN_TOKEN where given, else the file vitrt serve writes into its own
        # XDG_RUNTIME_DIR: one per server here, so that servers started side by side do not share it
        self.env = {k: v for k, v in os.environ.items() if k != "VITRT_ADMIN_TOKEN"}
        self.env.update(env or {})
        if "VITRT_ADMIN_TOKEN" not in self.env and "XDG_RUNTIME_DIR" not in (env or {}):
            import tempfile

            self._runtime_dir = tempfile.TemporaryDirectory(prefix="vitrt-serve-xdg-")
            self.env["XDG_RUNTIME_DIR"] = self._runtime_dir.name

    @property
    def token(self) -> str:
        """The server's admin token (vitrt/serving/security.py), for the admin APIs (statistics)."""
        if self.env.get("VITRT_ADMIN_TOKEN"):
            return self.env["VITRT_ADMIN_TOKEN"]
        return (Path(self.env["XDG_RUNTIME_DIR"]) / "vitrt" / f"admin-token-{self.http}").read_text().strip()

    @property
    def admin_headers(self) -> dict[str, str]:
        from vitrt.serving.security import ADMIN_HEADER

        return {ADMIN_HEADER: self.token}

    def start(self) -> "ServeProcess":
        self._log = open(self.log_path, "w")
        # SIGTERM (a drain) when the process that started it dies, even by kill -9: no server outlives its
        # test or benchmark (vitrt serve's own tritonserver child dies with it the same way)
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True,
                                     preexec_fn=_kill_with_parent if self.pid_namespace else _terminate_with_parent)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vitrt serve exited with {self.proc.returncode}: {self.log()[-3000:]}")
            if self.ready():
                return self
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"vitrt serve not ready after {self.ready_timeout:.0f} s: {self.log()[-3000:]}")

    @property
    def pid(self) -> int:
        """The ``vitrt serve`` process's pid here (in a pid namespace: the unshare process's child)."""
        if not self.pid_namespace:
            return self.proc.pid
        deadline = time.monotonic() + 10
        while not (kids := children(self.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if len(kids) != 1:
            raise RuntimeError(f"unshare {self.proc.pid} has children {kids}; expected the one vitrt serve")
        return kids[0]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, grace: float = 40.0) -> int | None:
        """SIGTERM (drain), then SIGKILL to the whole group after ``grace``; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:  # to vitrt serve itself: unshare returns its exit status
                os.kill(self.pid if self.pid_namespace else self.proc.pid, signal.SIGTERM)
            except (ProcessLookupError, RuntimeError):
                pass
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left in its group (none, normally)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "ServeProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


if __name__ == "__main__":  # a quick manual check: python -m benchmarks.serve_process ARTIFACT
    with ServeProcess(Path(sys.argv[1])) as srv:
        print("ready at", srv.url)
