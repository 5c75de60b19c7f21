"""vitrt/serving/security.py and vitrt/serving/triton_home.py without a running server: the table of
vulnerable releases, the exposure rule, the admin token, the flags, and where Triton is found. The
servers that enforce them are probed in tests/test_serve.py."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vitrt.errors import BackendError, InputError
from vitrt.serving import security, triton_home
from vitrt.serving.security import FIXES, MIN_SAFE_NGC, MIN_SAFE_VERSION, check_exposure, vulnerable


def test_the_table_in_both_numbering_schemes():
    """One row per fixing release, ordered, in NGC YY.MM and Triton 2.x, both growing together."""
    ngc = [security._key(r[0]) for r in FIXES]
    v2 = [security._key(r[1]) for r in FIXES]
    assert ngc == sorted(ngc) and v2 == sorted(v2) and len(set(ngc)) == len(FIXES)
    assert all(r[2] and all(c.startswith("CVE-20") for c in r[2]) for r in FIXES)
    assert (MIN_SAFE_NGC, MIN_SAFE_VERSION) == (FIXES[-1][0], FIXES[-1][1]) == ("26.06", "2.70.0")


@pytest.mark.parametrize("version, ngc, unfixed", [
    ("2.51.0", "24.10", 4),  # nvidia-pytriton 0.7.0's binary
    ("2.51.0", None, 4),
    ("2.59.1", None, 3), ("2.60.0", "25.08", 2), ("2.69.0", "26.05", 1),
    ("2.70.0", "26.06", 0), ("2.73.0", None, 0), (None, "26.11", 0),
    (None, None, 4),  # an unknown release is treated as the oldest
])
def test_vulnerable_releases(version, ngc, unfixed):
    assert len(vulnerable(version, ngc)) == unfixed


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_a_vulnerable_triton_on_loopback_starts_with_one_warning(host):
    warning = check_exposure(host, "2.51.0", "24.10")
    assert warning.startswith("warning: Triton 2.51.0 (NGC 24.10) predates NGC 26.06 (2.70.0)") and "\n" not in warning


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "192.0.2.1", "vitrt.example.com", "localhost.evil"])
def test_a_vulnerable_triton_on_any_other_address_is_refused(host):
    with pytest.raises(BackendError) as info:
        check_exposure(host, "2.51.0", "24.10")
    msg = str(info.value)
    assert f"refusing to bind Triton 2.51.0 (NGC 24.10) to {host}" in msg
    for row in FIXES:
        assert all(c in msg for c in row[2])
    assert "26.06-py3" in msg and "--triton-home" in msg and "--allow-vulnerable-triton" in msg
    assert check_exposure(host, "2.51.0", "24.10", allow_vulnerable=True).startswith("warning:")  # on record
    assert check_exposure(host, "2.70.0", "26.06") is None  # patched: no word


def test_restricted_flags_close_every_admin_group_behind_one_header():
    flags = security.restricted_flags("t" * 43)
    rule = "shared-memory,model-repository,statistics,trace,logging:vitrt-admin-key=" + "t" * 43
    assert flags == [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]
    assert security.GRPC_HEADER == "triton-grpc-protocol-vitrt-admin-key"
    # open by design: inference, health, metadata, and the config (vitrt.Client reads it)
    assert not {"inference", "health", "metadata", "model-config"} & set(security.RESTRICTED)


def test_token_from_the_environment_or_a_new_0600_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("VITRT_ADMIN_TOKEN", raising=False)
    a, path = security.server_token(8000)
    assert path == tmp_path / "run" / "vitrt" / "admin-token-8000" == security.token_file(8000)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text().strip() == a and len(a) >= 40
    security.remove_token_file(path, a)  # that server stopped
    b, _ = security.server_token(8000)
    assert b != a and path.read_text().strip() == b  # a new one per start
    assert not list(path.parent.glob(".*tmp*"))  # written beside, renamed into place
    assert security.client_token() == b  # the file
    security.remove_token_file(path, b)
    monkeypatch.setenv("VITRT_ADMIN_TOKEN", "from-a-kubernetes-secret-0123")
    assert security.server_token() == ("from-a-kubernetes-secret-0123", None)
    assert security.client_token() == "from-a-kubernetes-secret-0123"  # the environment before the file
    assert security.client_token("explicit") == "explicit"  # the argument before both
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert security.token_file(9000) == Path.home() / ".cache" / "vitrt" / "serve" / "admin-token-9000"


def test_a_cache_folder_made_under_umask_002_does_not_stop_serve(tmp_path, monkeypatch):
    """Without XDG_RUNTIME_DIR the token goes under ~/.cache/vitrt, which vitrt's caches (TensorRT-RTX's
    runtime cache, the real weights) create with the umask's mode: 0775 under umask 002. The token's own
    folder is made 0700 inside it (before, the shared folder itself was refused as others-writable)."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("VITRT_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    shared = tmp_path / ".cache" / "vitrt"
    shared.mkdir(parents=True)
    shared.chmod(0o775)
    token, path = security.server_token(8123)
    try:
        assert path.parent == shared / "serve" and (path.parent.stat().st_mode & 0o777) == 0o700
        assert security.client_token(host="127.0.0.1", port=8123) == token
    finally:
        security.remove_token_file(path, token)


def test_one_token_file_per_server_read_for_loopback_only_and_removed_at_exit(tmp_path, monkeypatch):
    """Two servers (ports 8000 and 9000) keep their own tokens (before, the second overwrote the first's,
    which was never printed); a Client finds its server's by port, and only on loopback: this machine's
    token file is never sent to another host unless passed; each file goes when its server exits, unless
    it no longer holds that server's token (then only the lock goes)."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("VITRT_ADMIN_TOKEN", raising=False)
    a, pa = security.server_token(8000)
    b, pb = security.server_token(9000)
    assert pa != pb and pa.read_text().strip() == a and pb.read_text().strip() == b
    assert security.client_token(host="127.0.0.1", port=8000) == a
    assert security.client_token(host="localhost", port=9000) == b and security.client_token(host="::1", port=9000) == b
    assert security.client_token(host="gateway.example.com", port=8000) is None
    assert security.client_token(host="10.0.0.7", port=8000) is None
    assert security.client_token("passed", host="gateway.example.com") == "passed"
    security.remove_token_file(pa, a)
    assert not pa.exists() and pb.is_file()
    pb.write_text("a-token-someone-else-wrote-0123\n")  # replaced by hand (or another tool): not ours to delete
    security.remove_token_file(pb, b)
    assert [p.name for p in pb.parent.iterdir()] == [pb.name]  # its lock went, the file it did not write stayed
    pb.unlink()


def test_the_client_reads_a_token_file_only_where_the_server_would_have_written_it(tmp_path, monkeypatch):
    """The reading side of the folder rules: XDG_RUNTIME_DIR=/tmp lets anyone make /tmp/vitrt/ or place
    admin-token-PORT as a link to a file of ours (~/.netrc) and listen on that port, so a Client would send
    that file as its admin header. A link, a file others can read or that is not ours, a folder others can
    write, and content that is no token: none is read (None; the Client then sends no token)."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("VITRT_ADMIN_TOKEN", raising=False)
    token, path = security.server_token(8000)
    assert security.client_token(port=8000) == token  # the server's own file: read
    security.remove_token_file(path, token)
    secret = tmp_path / "netrc"
    secret.write_text("machine-password-0123456789abcdef\n")
    os.chmod(secret, 0o600)
    path.symlink_to(secret)
    assert security.client_token(port=8000) is None  # a link, even to a file of ours that reads as a token
    path.unlink()
    path.write_text(token + "\n")
    for mode in (0o644, 0o640):
        os.chmod(path, mode)
        assert security.client_token(port=8000) is None, oct(mode)
    os.chmod(path, 0o600)
    assert security.client_token(port=8000) == token
    os.chmod(path.parent, 0o777)  # a folder others can write: anyone could have put the file there
    assert security.client_token(port=8000) is None
    os.chmod(path.parent, 0o700)
    path.write_text("not a token\n")
    assert security.client_token(port=8000) is None
    path.write_text(token + "\n")
    real_fstat, st_file = os.fstat, path.stat()

    def other_owner(fd):  # as if another user had made the file (the tests run as one user)
        st = real_fstat(fd)
        if (st.st_dev, st.st_ino) == (st_file.st_dev, st_file.st_ino):
            return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, os.getuid() + 1, st.st_gid,
                                   st.st_size, st.st_atime, st.st_mtime, st.st_ctime))
        return st

    monkeypatch.setattr(security.os, "fstat", other_owner)
    assert security.client_token(port=8000) is None


def test_a_second_start_for_a_running_servers_port_is_refused_and_leaves_its_token(tmp_path, monkeypatch):
    """The review's case: server A runs on 8000; another `vitrt serve` for 8000 (a second host address,
    or one whose Triton cannot bind) used to replace A's file and then delete it at its exit: A's token,
    never printed, was lost. Now the second start is refused before it writes anything, in this process
    or in another one (flock conflicts between open files, so both are real), and A's file is intact;
    once A stops, a start for 8000 works again."""
    import subprocess
    import sys

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("VITRT_ADMIN_TOKEN", raising=False)
    a, pa = security.server_token(8000)
    with pytest.raises(BackendError, match=f"another vitrt serve for port 8000 is running: it holds {pa}"):
        security.server_token(8000)
    other = subprocess.run([sys.executable, "-c", "from vitrt.serving import security; security.server_token(8000)"],
                           capture_output=True, text=True, timeout=60, env={**os.environ})
    assert other.returncode != 0 and "another vitrt serve for port 8000 is running" in other.stderr, other.stderr
    assert pa.read_text().strip() == a and a not in other.stderr
    security.remove_token_file(pa, a)
    security.remove_token_file(pa, a)  # twice (the exit path and atexit): harmless
    b, pb = security.server_token(8000)
    assert pb == pa and pa.read_text().strip() == b != a
    security.remove_token_file(pb, b)
    assert not list(pa.parent.iterdir())


def test_a_link_in_place_of_the_token_folder_is_refused(tmp_path, monkeypatch):
    """A vitrt/ that is a link to a folder someone else chose is not followed."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("VITRT_ADMIN_TOKEN", raising=False)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "vitrt").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BackendError, match="is not a folder .a link or a file"):
        security.server_token(8000)
    assert not list((tmp_path / "elsewhere").iterdir())


def test_a_token_folder_others_can_write_is_refused(tmp_path, monkeypatch):
    """XDG_RUNTIME_DIR=/tmp (the Dockerfile's): a vitrt/ folder another user made, or one others can write,
    is refused rather than used; the message names its owner and mode, not a token."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("VITRT_ADMIN_TOKEN", raising=False)
    (tmp_path / "vitrt").mkdir(mode=0o777)
    os.chmod(tmp_path / "vitrt", 0o777)
    with pytest.raises(BackendError, match="mode 0777; expected a folder owned by this user .* that no one else can write"):
        security.server_token(8000)
    assert not list((tmp_path / "vitrt").iterdir())
    os.chmod(tmp_path / "vitrt", 0o700)
    real_fstat, folder = os.fstat, (tmp_path / "vitrt").stat()

    def other_owner(fd):  # as if another user had made it (the tests run as one user)
        st = real_fstat(fd)
        if (st.st_dev, st.st_ino) == (folder.st_dev, folder.st_ino):
            return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, os.getuid() + 1, st.st_gid,
                                   st.st_size, st.st_atime, st.st_mtime, st.st_ctime))
        return st

    monkeypatch.setattr(security.os, "fstat", other_owner)
    with pytest.raises(BackendError, match=f"owned by uid {os.getuid() + 1}"):
        security.server_token(8000)


@pytest.mark.parametrize("bad", ["short", "has space in it 0123456789", "comma,breaks:the=flag-0123456789"])
def test_an_unusable_token_is_refused_without_showing_it(bad, monkeypatch):
    monkeypatch.setenv("VITRT_ADMIN_TOKEN", bad)
    with pytest.raises(InputError) as info:
        security.server_token()
    assert bad not in str(info.value) and "$VITRT_ADMIN_TOKEN" in str(info.value)


# --- where Triton is found (vitrt/serving/triton_home.py) ---------------------------------------------


def _fake_home(root: Path, layout: str) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tritonserver").write_text("#!/bin/sh\n")
    (root / "backends" / "python").mkdir(parents=True)
    if layout == "ngc":
        (root / "backends" / "python" / "triton_python_backend_stub").write_text("")
    else:
        (root / "python_backend_stubs" / "3.11").mkdir(parents=True)
    return root


def test_the_order_triton_is_looked_for_in(tmp_path, monkeypatch):
    given, env_home, ngc = (_fake_home(tmp_path / n, "ngc") for n in ("given", "env", "opt"))
    monkeypatch.setenv("VITRT_TRITON_HOME", str(env_home))
    t = triton_home.locate(given, ngc_home=ngc)
    assert (t.home, t.layout, t.found_by) == (given, "ngc", "--triton-home")
    t = triton_home.locate(None, ngc_home=ngc)
    assert (t.home, t.found_by) == (env_home, "$VITRT_TRITON_HOME")
    monkeypatch.delenv("VITRT_TRITON_HOME")
    t = triton_home.locate(None, ngc_home=ngc)
    assert (t.home, t.found_by, t.bundled) == (ngc, str(ngc), False)
    assert t.backend_dir(tmp_path / "unused") == ngc / "backends"  # NGC's own stub, no numpy rule
    with pytest.raises(BackendError, match="'/nowhere' is not a Triton installation; expected bin/tritonserver"):
        triton_home.locate("/nowhere", ngc_home=ngc)


def test_the_release_comes_from_ngcs_variables_the_wheels_version_or_a_probe(tmp_path):
    ngc = _fake_home(tmp_path / "opt", "ngc")
    t = triton_home.identify(triton_home.Triton(ngc, "ngc", str(ngc)),
                             {"NVIDIA_TRITON_SERVER_VERSION": "26.06", "TRITON_SERVER_VERSION": "2.70.0"}, ngc_home=ngc)
    assert (t.ngc, t.version, t.version_from) == ("26.06", "2.70.0", "the NGC container's environment")
    bundled = triton_home.Triton(tmp_path, "pytriton", "nvidia-pytriton 0.7.0")
    t = triton_home.identify(bundled, {}, ngc_home=ngc)
    assert (t.version, t.ngc) == ("2.51.0", "24.10") and "bundled release" in t.version_from
    # a Triton elsewhere with NGC's variables set is not trusted on them: it is probed (here: a fake that
    # cannot answer, so the probe's error says so)
    other = _fake_home(tmp_path / "other", "ngc")
    (other / "bin" / "tritonserver").chmod(0o755)
    with pytest.raises(BackendError, match="did not answer GET /v2 on loopback"):
        triton_home.identify(triton_home.Triton(other, "ngc", "--triton-home"),
                             {"NVIDIA_TRITON_SERVER_VERSION": "26.06", "PATH": os.environ["PATH"]}, ngc_home=ngc)


def _real_bundled() -> Path:
    from benchmarks.serve_process import serve_python

    python = serve_python()
    if python is None:
        pytest.skip("no serving venv (`make test` builds .venv-serve)")
    return next(Path(python).parents[1].glob("lib/python3*/site-packages/pytriton/tritonserver"))


def test_the_real_bundled_binary_probes_as_2_51_and_lacks_the_size_flag():
    """The probe for real (GET /v2 on loopback), and the option check by --help: 2.51 has the restricted
    APIs but not --http-max-input-size, which vitrt serve passes only where the binary lists it."""
    home = _real_bundled()
    assert triton_home.probe_version(home / "bin" / "tritonserver") == "2.51.0"
    t = triton_home.Triton(home, "pytriton", "nvidia-pytriton 0.7.0")
    assert t.has_option("--http-restricted-api") and t.has_option("--grpc-restricted-protocol")
    assert not t.has_option("--http-max-input-size")
    import re

    grpc_options = set(re.findall(r"--grpc-[a-z0-9-]+", t._help))
    assert "--grpc-port" in grpc_options and t.has_option("--allow-grpc")  # what --grpc-port 0 turns off
    assert not {o for o in grpc_options if "message" in o or "input" in o or "max-size" in o}, grpc_options  # no cap


def test_the_command_line_carries_the_restrictions_hardening_and_size_limit_where_known(tmp_path):
    from vitrt.serving.server import command

    t = triton_home.Triton(tmp_path, "ngc", "--triton-home")
    kw = dict(host="127.0.0.1", http_port=1, grpc_port=2, metrics_port=3, grace=5, triton=t, token="x" * 43,
              shm="vitrt1-2-0a0b0c0d_")
    t._help = "  --http-max-input-size <integer>\n"  # a release that has the flag (26.x): what --help would list
    cmd = command(tmp_path / "repo", tmp_path / "backends", **kw)
    assert set(security.HARDENING) <= set(cmd) and set(security.restricted_flags("x" * 43)) <= set(cmd)
    assert f"--http-max-input-size={64 * 2**20}" in cmd
    t._help = ""
    assert not [c for c in command(tmp_path / "repo", tmp_path / "backends", **kw) if "max-input-size" in c]


def test_grpc_port_0_turns_grpc_off_and_grpc_beyond_loopback_warns(tmp_path):
    """Triton cannot cap a gRPC message (security.TRITON_GRPC_MAX_MESSAGE_BYTES): beyond loopback vitrt
    serve says a gateway must, and --grpc-port 0 serves HTTP only."""
    from vitrt.serving.server import command

    t = triton_home.Triton(tmp_path, "ngc", "--triton-home")
    t._help = ""
    kw = dict(host="0.0.0.0", http_port=1, grpc_port=0, metrics_port=3, grace=5, triton=t, token="x" * 43,
              shm="vitrt1-0a0b0c0d_")
    off = command(tmp_path / "repo", tmp_path / "backends", **kw)
    assert "--allow-grpc=false" in off and not [c for c in off if c.startswith(("--grpc-port", "--grpc-address"))]
    on = command(tmp_path / "repo", tmp_path / "backends", **{**kw, "grpc_port": 2})
    assert {"--grpc-port=2", "--grpc-address=0.0.0.0"} <= set(on) and "--allow-grpc=false" not in on
    assert security.TRITON_GRPC_MAX_MESSAGE_BYTES == 2**31 - 1  # INT32_MAX: MAX_GRPC_MESSAGE_SIZE in Triton's source
    for host, port in (("127.0.0.1", 8001), ("::1", 8001), ("localhost", 8001), ("0.0.0.0", 0), ("10.0.0.5", 0)):
        assert security.grpc_exposure(host, port) is None, (host, port)
    for host in ("0.0.0.0", "::", "10.0.0.5"):
        warning = security.grpc_exposure(host, 8001)
        assert warning.startswith("warning: gRPC on") and "no request size cap in Triton" in warning
        assert "--grpc-port 0" in warning and f"{security.MAX_HTTP_INPUT_BYTES // 2**20} MiB" in warning


def test_stale_shm_goes_by_its_lock_not_its_pid(tmp_path):
    """Segments of a start that is gone are removed even where its pid is alive again (PID 1 of a restarted
    container: here this process's own pid names the dead start); a live start's segments stay."""
    import fcntl
    import subprocess
    import sys

    from vitrt.serving.server import SHM_LOCK, hold_shm_lock, legacy_shm, remove_stale_shm

    me = os.getpid()
    live, fd = hold_shm_lock(str(tmp_path))  # this start: its lock is held
    assert live.startswith(f"vitrt{me}-") and (tmp_path / f"{live}{SHM_LOCK}").is_file()
    try:
        with pytest.raises(OSError):  # held: no other open file description can take it
            other = os.open(tmp_path / f"{live}{SHM_LOCK}", os.O_RDWR)
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(other)
        # a start killed with -9 in another process, and one that had this process's pid before it
        killed = subprocess.run([sys.executable, "-c", "import os, sys; from vitrt.serving.server import "
                                 f"hold_shm_lock; p, _ = hold_shm_lock({str(tmp_path)!r}); print(p); sys.stdout.flush(); "
                                 "os.kill(os.getpid(), 9)"], capture_output=True, text=True).stdout.strip()
        assert killed.startswith("vitrt") and (tmp_path / f"{killed}{SHM_LOCK}").is_file()
        same_pid = f"vitrt{me}-0badc0de_"
        dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process can have it
        files = {f"{live}seg": True, f"{killed}seg": False, f"{killed}{SHM_LOCK}": False, f"{same_pid}seg": False,
                 f"{same_pid}{SHM_LOCK}": False, f"vitrt{me}-00000001_seg": True,  # no lock: another start removing it
                 # pid-only names (an older vitrt): kept, whatever their pid; in a /dev/shm shared across pid
                 # namespaces a pid dead here, or this process's own, may be a live server's elsewhere
                 f"vitrt{me}_seg": True, "vitrt1_seg": True, f"vitrt{dead}_seg": True,
                 "other_seg": True, "vitrtx_seg": True}
        for name in files:
            (tmp_path / name).touch()
        removed = {os.path.basename(p) for p in remove_stale_shm(str(tmp_path))}
        kept = {p.name for p in tmp_path.iterdir()}
        assert removed == {n for n, keep in files.items() if not keep}
        assert kept == {n for n, keep in files.items() if keep} | {f"{live}{SHM_LOCK}"}
    finally:
        os.close(fd)
    assert {os.path.basename(p) for p in remove_stale_shm(str(tmp_path))} == {f"{live}seg", f"{live}{SHM_LOCK}"}
    assert [os.path.basename(p) for p in legacy_shm(str(tmp_path))] == sorted([f"vitrt{me}_seg", "vitrt1_seg", f"vitrt{dead}_seg"])


def test_a_serve_that_fails_before_triton_starts_lets_a_retry_in_the_same_process_start(tmp_path, monkeypatch):
    """serve() used as a library: a step after the token (the repository, here a missing artifact) raised
    and the token's lock stayed held until the interpreter exited, so the caller's retry for the same port
    was refused as "another vitrt serve". Now the failed start removes its file and lock at once."""
    from types import SimpleNamespace

    from vitrt.errors import VitrtError
    from vitrt.serving import server, triton_home

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("VITRT_ADMIN_TOKEN", raising=False)
    fake = SimpleNamespace(bundled=False, version="2.70.0", ngc=None, describe=lambda: "a stand-in Triton")
    monkeypatch.setattr(triton_home, "locate", lambda home=None: fake)  # no Triton runs: it fails before one would
    monkeypatch.setattr(triton_home, "identify", lambda triton, env: None)
    monkeypatch.setattr(server, "remove_stale_shm", lambda root="/dev/shm": [])
    real_hold = server.hold_shm_lock
    monkeypatch.setattr(server, "hold_shm_lock", lambda root="/dev/shm": real_hold(str(tmp_path)))  # not /dev/shm
    for _ in range(2):  # the second start is the retry
        with pytest.raises(VitrtError, match="missing.onnx"):
            server.serve(tmp_path / "missing.onnx", http_port=8123, log=lambda m: None)
    assert not list((tmp_path / "run" / "vitrt").iterdir())  # neither its token file nor its lock is left
