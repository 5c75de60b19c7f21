"""What keeps ``vitrt serve`` safe on a network: Triton's admin APIs behind one token, hardening flags,
and the Triton releases known to be exploitable from the network (docs/serving.md, "Security").

- **Admin APIs** (system and CUDA shared memory, model repository, statistics, trace, logging) are
  restricted over HTTP and gRPC with Triton's own ``--http-restricted-api`` / ``--grpc-restricted-protocol``:
  a call without the header ``vitrt-admin-key: TOKEN`` gets HTTP 403 / gRPC UNAVAILABLE. Inference,
  model metadata and config, health and metrics stay open. The Python backend's shared-memory segments
  are the target of CVE-2025-23320 -> 23319 -> 23334 (register the segment, then read and write it
  through inference): the restriction is what closes it on every Triton release.
- **The token**: ``$VITRT_ADMIN_TOKEN`` (a deployment passes it from a Secret), else a random one per
  start, written with mode 0600 to :func:`token_file`, one file per server (its HTTP port), in a folder
  this user owns and no one else can write, removed when the server exits. A Client reads that file
  only for a server on loopback. It is never printed or logged; Triton takes it on
  its command line, so local users see it in the process list (run the server in a container).
- **Known-vulnerable Triton**: :data:`FIXES` lists, per NVIDIA's security bulletins, the releases that
  fixed a network-reachable CVE; a Triton older than the newest of them is refused on any address but
  loopback unless the operator says a gateway stands in front (``--allow-vulnerable-triton``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from pathlib import Path

from ..errors import BackendError, InputError

ADMIN_HEADER = "vitrt-admin-key"
TOKEN_ENV = "VITRT_ADMIN_TOKEN"
#: Triton's API groups closed behind the token (its names; "shared-memory" is system and CUDA shared memory)
RESTRICTED = ("shared-memory", "model-repository", "statistics", "trace", "logging")
#: gRPC clients send the header as metadata with Triton's prefix
GRPC_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"
#: Accepted by Triton 2.51 with vitrt's Python-backend model (shared/TOOLCHAIN-NOTES.md): no model
#: loading or unloading over the network, no SageMaker / Vertex AI listeners, no tracing, quiet logs.
HARDENING = ("--model-control-mode=none", "--allow-sagemaker=false", "--allow-vertex-ai=false",
             "--trace-config=level=off", "--log-verbose=0")
#: ``--http-max-input-size`` where the Triton release has it (2.51 does not): Triton's own default, 64 MiB.
#: The gateway in deploy/ caps HTTP and gRPC bodies at the same size (tests/test_deploy.py checks it).
MAX_HTTP_INPUT_BYTES = 64 * 2**20
#: Triton's gRPC message limit, in every release: its gRPC server sets ``SetMaxMessageSize(
#: MAX_GRPC_MESSAGE_SIZE)``, INT32_MAX, and no flag changes it (2.51's ``--help`` lists none). A
#: ModelInfer up to this size is read whole and copied into the Python backend's shared memory before
#: vitrt's per-image cap can refuse it; only a gateway in front caps gRPC (docs/serving.md, "What caps what").
TRITON_GRPC_MAX_MESSAGE_BYTES = 2**31 - 1

#: Triton releases that fixed a network-reachable CVE, as NVIDIA's security bulletins list them
#: (https://www.nvidia.com/en-us/security/, product "Triton Inference Server"), in both numbering
#: schemes: the NGC container release YY.MM and the server's own 2.x (which `GET /v2` reports). The 2.x
#: of each release is from Triton's release notes
#: (https://docs.nvidia.com/deeplearning/triton-inference-server/release-notes/rel-YY-MM.html): 24.10 is
#: 2.51.0 (measured: the nvidia-pytriton 0.7.0 binary's `GET /v2`), 25.07 is 2.59.1, later months one
#: minor release each (26.05 is 2.69.0). Earlier fixes (25.05, 25.06) are older than 25.07 and need no row.
FIXES = (
    ("25.07", "2.59.1", ("CVE-2025-23310", "CVE-2025-23311", "CVE-2025-23317", "CVE-2025-23319", "CVE-2025-23320",
                         "CVE-2025-23334"), "chunked-request stack overflow (crash, RCE); shared-memory leak to RCE chain"),
    ("25.08", "2.60.0", ("CVE-2025-23316",), "RCE through the model name in the model-control APIs (CVSS 9.8)"),
    ("26.03", "2.67.0", ("CVE-2026-24207",), "authentication bypass (CVSS 9.8)"),
    ("26.06", "2.70.0", ("CVE-2026-47627",), "CVSS 9.8"),
)
MIN_SAFE_NGC, MIN_SAFE_VERSION = FIXES[-1][0], FIXES[-1][1]


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version)[:3])


def vulnerable(version: str | None = None, ngc: str | None = None) -> list[tuple[str, str, tuple, str]]:
    """The rows of :data:`FIXES` that ``version`` (2.x) or ``ngc`` (YY.MM, preferred) predates."""
    if ngc:
        return [row for row in FIXES if _key(ngc) < _key(row[0])]
    if version:
        return [row for row in FIXES if _key(version) < _key(row[1])]
    return list(FIXES)  # unknown: assume the worst


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False



def check_exposure(host: str, version: str | None, ngc: str | None, allow_vulnerable: bool = False) -> str | None:
    """Refuse (BackendError) to bind a known-vulnerable Triton to ``host`` unless it is loopback or
    ``allow_vulnerable``; returns the one-line warning to print, or None for a patched Triton."""
    rows = vulnerable(version, ngc)
    if not rows:
        return None
    cves = sorted({c for row in rows for c in row[2]})
    name = f"Triton {version or '?'}" + (f" (NGC {ngc})" if ngc else "")
    if is_loopback(host):
        return (f"warning: {name} predates NGC {MIN_SAFE_NGC} ({MIN_SAFE_VERSION}) and has {len(cves)} known "
                f"network-reachable CVEs; it is bound to loopback ({host}) only")
    if allow_vulnerable:
        return (f"warning: {name} has known network-reachable CVEs ({', '.join(cves)}) and is bound to {host} "
                "with --allow-vulnerable-triton: the gateway in front must authenticate clients and buffer request bodies")
    raise BackendError(
        f"refusing to bind {name} to {host}: releases before NGC {MIN_SAFE_NGC} ({MIN_SAFE_VERSION}) have known "
        f"network-reachable vulnerabilities ({', '.join(cves)}); expected a patched Triton: NVIDIA's tritonserver "
        f"container {MIN_SAFE_NGC}-py3 or later (deploy/Dockerfile), or --triton-home PATH to one; or bind loopback "
        "(--host 127.0.0.1); or --allow-vulnerable-triton if a gateway stands in front (docs/serving.md, \"Security\")")


def grpc_exposure(host: str, grpc_port: int) -> str | None:
    """The one-line warning for gRPC served beyond loopback (Triton cannot cap its messages), or None."""
    if grpc_port == 0 or is_loopback(host):
        return None
    return (f"warning: gRPC on {host}:{grpc_port} has no request size cap in Triton (a message up to "
            f"{TRITON_GRPC_MAX_MESSAGE_BYTES / 2**30:.0f} GiB is read whole and copied into /dev/shm before the "
            f"per-image cap); a gateway in front must cap it (deploy/kubernetes.yaml caps gRPC bodies at "
            f"{MAX_HTTP_INPUT_BYTES // 2**20} MiB), or serve HTTP only with --grpc-port 0")


def token_file(port: int = 8000) -> Path:
    """Where the generated token of the server on HTTP ``port`` is written: ``$XDG_RUNTIME_DIR/vitrt/``,
    else ``~/.cache/vitrt/serve/``, ``admin-token-PORT`` (one file per server: a second one does not
    overwrite the first's). A folder of its own under ~/.cache/vitrt, which vitrt's caches create with
    the umask's mode (0775 under umask 002, which the folder check refuses)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(runtime) / "vitrt" if runtime else Path.home() / ".cache" / "vitrt" / "serve"
    return folder / f"admin-token-{int(port)}"


def _private_dir(folder: Path, create: bool = True) -> int:
    """An open descriptor of ``folder``, created 0700 where absent (``create``); refused (BackendError) where it is a
    link or not a folder, another user owns it, or others can write it (``XDG_RUNTIME_DIR=/tmp``: anyone
    could have made ``/tmp/vitrt`` first). Checked on the descriptor, and the files in it are made through
    it: a folder swapped after the check is not the one written to."""
    import stat as stat_mod

    if create:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise BackendError(f"{folder} is not a folder (a link or a file: {exc.strerror}); expected a folder of this "
                           "user's for the admin token") from None
    st = os.fstat(fd)
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        os.close(fd)
        raise BackendError(f"{folder} is owned by uid {st.st_uid} with mode {stat_mod.S_IMODE(st.st_mode):04o}; expected "
                           f"a folder owned by this user (uid {os.getuid()}) that no one else can write, for the admin "
                           "token: remove it, or set XDG_RUNTIME_DIR to a private folder")
    return fd


#: The token files this process's servers hold: path -> (folder fd, lock fd). A lock is held (flock) for
#: the server's life, so a second server on the same port is refused instead of replacing the token.
_HELD: dict[Path, tuple[int, int]] = {}


def _hold(dfd: int, path: Path, port: int) -> int:
    """The lock beside ``path`` (``.NAME.lock``), held; BackendError where another live start holds it."""
    import fcntl

    name = f".{path.name}.lock"
    while True:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BackendError(f"another vitrt serve for port {port} is running: it holds {path} (its admin token); "
                               "expected a free --http-port, or that server stopped first") from None
        try:  # a start that exited between our open and our lock unlinked that file: lock the current one
            same = os.stat(name, dir_fd=dfd, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def check_token(token: str, where: str) -> str:
    """A token Triton's flag syntax can carry (it splits on ',', ':' and '='); the message never shows it."""
    if len(token) < 16 or not re.fullmatch(r"[A-Za-z0-9._~+/-]+", token):
        raise InputError(f"the admin token in {where} has {len(token)} characters, or characters Triton's "
                         "--http-restricted-api cannot carry; expected 16 or more of A-Z a-z 0-9 . _ ~ + / -")
    return token


def server_token(port: int = 8000) -> tuple[str, Path | None]:
    """(token, file): ``$VITRT_ADMIN_TOKEN`` (file None), else a new random token written to
    :func:`token_file` (``port``'s) with mode 0600 (created that way under a random name, then renamed
    into place), its lock held until :func:`remove_token_file`: a second start for the same port, while
    this one runs, is refused (BackendError) and leaves this one's token as it is."""
    named = os.environ.get(TOKEN_ENV)
    if named:
        return check_token(named, f"${TOKEN_ENV}"), None
    token = secrets.token_urlsafe(32)
    path = token_file(port)
    dfd = _private_dir(path.parent)
    try:
        lock = _hold(dfd, path, port)
    except BaseException:
        os.close(dfd)
        raise
    tmp = f".{path.name}.{secrets.token_hex(8)}.tmp"  # random: a start killed here leaves no name the next trips on
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        try:
            os.write(fd, (token + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        for name in (tmp, f".{path.name}.lock"):
            try:
                os.unlink(name, dir_fd=dfd)
            except OSError:
                pass
        os.close(lock)
        os.close(dfd)
        raise
    _HELD[path] = (dfd, lock)
    return token, path


def remove_token_file(path: Path | None, token: str) -> None:
    """At the server's exit: its token file goes (if it still holds this start's token), then its lock.
    Safe to call twice (the server's exit path and atexit)."""
    if path is None or path not in _HELD:
        return
    dfd, lock = _HELD.pop(path)
    try:
        try:
            with open(os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)) as f:
                mine = f.read().strip() == token
            if mine:
                os.unlink(path.name, dir_fd=dfd)
        except OSError:
            pass
        try:  # unlinked while held: a start waiting on it sees the name gone and takes a new one (_hold)
            os.unlink(f".{path.name}.lock", dir_fd=dfd)
        except OSError:
            pass
    finally:
        os.close(lock)
        os.close(dfd)


def client_token(explicit: str | None = None, host: str = "localhost", port: int = 8000) -> str | None:
    """The token a client sends: the argument, else ``$VITRT_ADMIN_TOKEN``, else, for a server on loopback
    only, the file :func:`token_file` names for its port, where this user can read it; None when there is
    none. A server elsewhere never gets this machine's token file unless it is passed."""
    if explicit:
        return explicit
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    if not is_loopback(host):
        return None
    return _read_token_file(token_file(port))


def _read_token_file(path: Path) -> str | None:
    """The token in ``path`` where the server side's rules hold (a folder of this user's no one else can
    write, :func:`_private_dir`; a plain file of this user's, not a link, that only this user can read),
    else None: a token file another user could have placed (``XDG_RUNTIME_DIR=/tmp``, a link to a file of
    ours) is never read and sent."""
    import stat as stat_mod

    try:
        dfd = _private_dir(path.parent, create=False)
    except BackendError:
        return None
    try:
        fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
        with open(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat_mod.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
                return None
            token = f.read(4096).decode("ascii").strip()
        return check_token(token, str(path))
    except (OSError, UnicodeDecodeError, InputError):
        return None
    finally:
        os.close(dfd)


def restricted_flags(token: str) -> list[str]:
    """Triton's flags that close :data:`RESTRICTED` over HTTP and gRPC (the separator before the header
    must be a colon: 2.51 rejects the comma form its --help shows)."""
    rule = f"{','.join(RESTRICTED)}:{ADMIN_HEADER}={token}"
    return [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]
