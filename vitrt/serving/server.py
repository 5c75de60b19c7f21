"""``vitrt serve``: the real Triton Inference Server (a system one, e.g. NVIDIA's container, or the
``tritonserver`` binary that ships inside the ``nvidia-pytriton`` wheel: vitrt/serving/triton_home.py)
serving one vitrt model from a repository of ours, with its admin APIs closed (vitrt/serving/security.py).

What this module owns, because the binary and its Python backend need it (shared/TOOLCHAIN-NOTES.md):
- a backend folder with the Python backend and the stub built for *this* interpreter's version;
- ``LD_LIBRARY_PATH`` with this interpreter's own ``libpython`` (a pyenv Python otherwise picks up the
  system's, and the stub fails in ``initialize``), and this environment's ``bin/`` first on PATH (the
  stub finds its packages through it);
- numpy < 2 in this environment for the bundled binary: its stub is built with a pybind11 that reads
  numpy 1's array descriptor layout, so under numpy 2 every tensor it hands to Python has stride 0
  (measured: a 5-byte BYTES element arrives as nine 0x05 bytes). ``make serve`` makes such an
  environment; an NGC container's stub is built for that container's own Python and numpy;
- security: the restricted admin APIs and the token, the hardening flags, the request size limit where
  the release has it, and the refusal to expose a known-vulnerable release (vitrt/serving/security.py);
- signals: SIGTERM/SIGINT are forwarded, Triton drains in-flight requests for ``grace`` seconds and
  refuses new ones, and the exit status is Triton's; the child dies with us (PR_SET_PDEATHSIG) so a
  kill -9 leaves no orphan; the Python backend's shared memory is named after this start (pid and a
  nonce: :data:`SHM_PREFIX`) and guarded by a lock the server holds; segments whose lock is free are
  removed at the next start, also when the next start has the same pid (PID 1 in a container); an
  older vitrt's pid-only names are left and named in the log.
"""

from __future__ import annotations

import ctypes
import glob
import os
import re
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

from ..errors import BackendError
from .triton_home import HOW, Triton

def check_numpy() -> None:
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        raise BackendError(f"numpy {numpy.__version__} in {sys.prefix}: the bundled Triton's Python backend stub needs "
                           f"numpy < 2 (it passes every tensor with stride 0 under numpy 2); expected a serving "
                           f"environment: {HOW}")


#: The Python backend's shared-memory segments are named ``vitrt<pid>-<nonce>_...``: a new nonce at each
#: start. The pid alone was not enough: in a container ``vitrt serve`` is PID 1 at every start, and a
#: memory-backed /dev/shm outlives a kill -9 or an OOM kill of the container's process. Beside them the
#: server holds ``<prefix>lock`` locked (flock) while it lives; a lock that can be taken is a server
#: that is gone, whatever its pid is now (also across pid namespaces sharing one /dev/shm).
SHM_PREFIX = "vitrt{pid}-{nonce}_"
SHM_LOCK = "lock"
_SHM_NAME = re.compile(r"vitrt(\d+)(-[0-9a-f]+)?_")  # without a nonce: vitrt 0.x's names, pid only


def hold_shm_lock(root: str = "/dev/shm") -> tuple[str, int]:
    """A new segment prefix for this start, and the fd of its lock, locked (released when this process
    dies, however). The lock file is locked before it gets its name: no other start sees it unlocked."""
    import fcntl

    prefix = SHM_PREFIX.format(pid=os.getpid(), nonce=os.urandom(4).hex())
    tmp = os.path.join(root, f".{prefix}{SHM_LOCK}")
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise BackendError(f"cannot create {tmp} ({exc.strerror}); expected a writable {root} (Triton's Python "
                           "backend keeps its tensors there)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(tmp, os.path.join(root, prefix + SHM_LOCK))
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return prefix, fd


def _lock_is_free(path: str) -> bool:
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def remove_stale_shm(root: str = "/dev/shm") -> list[str]:
    """Remove the shared-memory segments of vitrt servers that are gone: those whose lock can be taken
    (segments first, the lock last). Segments of live servers stay, and so do the old pid-only names
    (:func:`legacy_shm`): a pid does not say whether its server lives where /dev/shm is shared across
    pid namespaces (PID 1 in every container), so those are left for a person to remove."""
    removed = []
    groups: dict[str, list[str]] = {}
    for path in sorted(glob.glob(os.path.join(root, "vitrt*_*"))):
        m = _SHM_NAME.match(os.path.basename(path))
        if m and m.group(2):
            groups.setdefault(m.group(0), []).append(path)
    for prefix, paths in groups.items():
        lock = os.path.join(root, prefix + SHM_LOCK)
        if lock in paths and _lock_is_free(lock):  # no lock file: being removed by another start; left alone
            removed += _unlink([p for p in paths if p != lock] + [lock])
    return removed


def legacy_shm(root: str = "/dev/shm") -> list[str]:
    """Segments with the pid-only names of vitrt before the per-start lock (``vitrtPID_*``)."""
    return [p for p in sorted(glob.glob(os.path.join(root, "vitrt*_*")))
            if (m := _SHM_NAME.match(os.path.basename(p))) and not m.group(2)]


def _unlink(paths: list[str]) -> list[str]:
    done = []
    for path in paths:
        try:
            os.unlink(path)
            done.append(path)
        except OSError:
            pass
    return done


def _die_with_parent() -> None:  # runs in the child before exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def command(repo: Path, backends: Path, *, host: str, http_port: int, grpc_port: int, metrics_port: int,
            grace: int, triton: Triton, token: str, shm: str) -> list[str]:
    from .security import HARDENING, MAX_HTTP_INPUT_BYTES, restricted_flags

    grpc = [f"--grpc-address={host}", f"--grpc-port={grpc_port}"] if grpc_port else ["--allow-grpc=false"]
    cmd = [str(triton.binary), f"--model-repository={repo}", f"--backend-directory={backends}",
           f"--http-address={host}", f"--http-port={http_port}", *grpc,
           f"--metrics-address={host}", f"--metrics-port={metrics_port}", "--allow-metrics=true",
           f"--exit-timeout-secs={int(grace)}", "--strict-readiness=true",
           f"--backend-config=python,shm-region-prefix-name={shm}",
           *HARDENING, *restricted_flags(token)]
    if triton.has_option("--http-max-input-size"):
        cmd.append(f"--http-max-input-size={MAX_HTTP_INPUT_BYTES}")
    return cmd


def environment() -> dict[str, str]:
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    return env


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BackendError(f"tritonserver exited with status {proc.returncode} before it was ready "
                               "(its log says why); expected it to load the model")
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise BackendError(f"tritonserver was not ready after {timeout:.0f} s at {url}; expected /v2/health/ready = 200")


def serve(artifact: Path, *, model_name: str | None = None, host: str = "127.0.0.1", http_port: int = 8000,
          grpc_port: int = 8001, metrics_port: int = 8002, grace: int = 30, ready_timeout: float = 300,
          triton_home: str | os.PathLike | None = None, allow_vulnerable_triton: bool = False,
          log=print, **config) -> int:
    """Serve ``artifact`` until SIGTERM/SIGINT; returns tritonserver's exit status."""
    from .repository import write_repository
    from .security import check_exposure, grpc_exposure, remove_token_file, server_token
    from .triton_home import identify, locate

    triton = locate(triton_home)
    if triton.bundled:
        check_numpy()
    identify(triton, environment())
    log(f"vitrt serve: {triton.describe()}")
    warning = check_exposure(host, triton.version, triton.ngc, allow_vulnerable_triton)  # before binding
    for warning in (warning, grpc_exposure(host, grpc_port)):
        if warning:
            log(f"vitrt serve: {warning}")
    token, token_path = server_token(http_port)
    import atexit

    atexit.register(remove_token_file, token_path, token)  # also when a step below fails before Triton starts
    log("vitrt serve: admin APIs (shared memory, repository, statistics, trace, logging) need the header "
        "vitrt-admin-key: the token " + (f"in {token_path} (mode 0600)" if token_path else "from $VITRT_ADMIN_TOKEN"))
    try:
        remove_stale_shm()
        old = legacy_shm()
        if old:
            log(f"vitrt serve: left {len(old)} shared-memory segment(s) with an older vitrt's pid-only names in "
                f"/dev/shm (e.g. {os.path.basename(old[0])}); expected them removed by hand (rm /dev/shm/vitrt<PID>_*) "
                "once no older vitrt serve uses this /dev/shm: their pid cannot say whether their server lives")
        shm, shm_lock = hold_shm_lock()
    except BaseException:
        remove_token_file(token_path, token)  # a caller's retry in this process is not refused by our own lock
        raise
    proc = None
    try:
        with tempfile.TemporaryDirectory(prefix="vitrt-serve-") as tmp:
            repo = Path(tmp) / "models"
            folder = write_repository(artifact, repo, model_name, link=True, **config)
            backends = triton.backend_dir(Path(tmp) / "backends")
            cmd = command(repo, backends, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                          grace=grace, triton=triton, token=token, shm=shm)
            proc = subprocess.Popen(cmd, env=environment(), preexec_fn=_die_with_parent)
            stop = {"signal": None}

            def forward(signum, frame):
                stop["signal"] = signum
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)  # Triton drains in-flight requests, refuses new ones

            old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
            try:
                shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
                url = f"http://{shown}:{http_port}"
                wait_ready(url, proc, ready_timeout)
                grpc = f"gRPC {shown}:{grpc_port}" if grpc_port else "no gRPC"
                log(f"vitrt serve: {folder.name} ready at {url} ({grpc}, metrics "
                    f"http://{shown}:{metrics_port}/metrics), serving {Path(artifact).resolve()}")
                while proc.poll() is None:
                    try:
                        proc.wait(timeout=0.5)
                    except subprocess.TimeoutExpired:
                        pass
                return proc.returncode
            except BaseException:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=grace + 10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                raise
            finally:
                if proc.poll() is None and stop["signal"] is not None:
                    try:
                        proc.wait(timeout=grace + 10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                for s, h in old.items():
                    signal.signal(s, h)
                if proc.poll() is not None:
                    remove_token_file(token_path, token)  # the file outlives no server
    finally:
        if proc is None or proc.poll() is not None:  # ours, now that Triton is gone (its stubs with it)
            remove_token_file(token_path, token)  # also where a step failed before Triton started
            lock = f"/dev/shm/{shm}{SHM_LOCK}"
            _unlink([p for p in glob.glob(f"/dev/shm/{shm}*") if p != lock] + [lock])  # the lock last
        os.close(shm_lock)
