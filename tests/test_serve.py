"""`vitrt serve` for real: Triton Inference Server on loopback, free ports, the small test ViT, over HTTP
and gRPC. Every server started here is stopped by its fixture or test, also when an assertion fails.

Tolerance against Engine: the server runs the same .onnx on ONNX Runtime's CPU provider, but from the
serving venv (another onnxruntime release) and inside dynamic batches of other sizes, so the
summation order may differ: 1e-4 of the largest output, the fp32 gate's own bound for ORT vs
PyTorch (export/gate.py), measured here at about 1e-6.
"""

from __future__ import annotations

import base64
import glob
import io
import json
import os
import shutil
import signal
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vitrt
from benchmarks.serve_process import ServeProcess, children, free_ports, pid_namespace_refused, serve_python

if serve_python() is None:  # raises when make test's VITRT_SERVE_PYTHON names nothing
    pytest.skip("no serving venv (`make test` builds .venv-serve)", allow_module_level=True)

QUEUE = 8  # --max-queue-size of the shared server: room for the 7 requests of the batch test; 24 overflow it
CAP = 2_000_000  # --max-image-bytes of the shared server: above every image the tests send (photos <= 0.8 MB, 1.1 MB as base64)


def _jpeg(seed: int, size=(96, 64)) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def artifact(small_onnx) -> Path:
    return small_onnx


@pytest.fixture(scope="module")
def server(artifact, tmp_path_factory):
    # a 100 ms batching window so that concurrent requests meet in one execution
    srv = ServeProcess(artifact, "--model-name", "m", "--queue-delay-us", "100000", "--max-queue-size", str(QUEUE),
                       "--max-image-bytes", str(CAP), log=tmp_path_factory.mktemp("serve") / "server.log",
                       env={"XDG_RUNTIME_DIR": str(tmp_path_factory.mktemp("xdg"))})  # the token file's folder
    with srv:
        yield srv
        t0 = time.monotonic()
        srv.stop()
        # Triton's drain waits for open keep-alive connections up to the grace (30 s): a quick stop says
        # that no test left a client connected (one did, and teardown took the whole grace)
        assert time.monotonic() - t0 < 15, "a test left a connection to the server open"


@pytest.fixture(scope="module")
def engine(artifact):
    with vitrt.Engine(artifact, providers=["CPUExecutionProvider"]) as e:
        yield e


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * float(np.abs(b).max()))


def _http(url: str, body: dict, path: str = "/v2/models/m/infer") -> tuple[int, dict]:
    req = urllib.request.Request(f"http://{url}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_outputs_equal_engine_on_the_same_bytes(server, engine, photos):
    blobs = [Path(p).read_bytes() for p in photos[:4]]
    with vitrt.Client(server.url, "m") as client:
        got = client.infer(blobs)
        want = engine.infer(np.stack([engine.preprocess(b) for b in blobs]))
        for k in ("logits", "embedding"):
            _close(got[k], want[k])
        assert [p.index for p in client.predict(blobs[0])] == [p.index for p in engine.predict(blobs[0])]
        assert client.embed(photos[:6]).shape == (6, engine.metadata.data["model"]["num_features"])  # split: max 4
        # one Client shared by threads, as in a service: each thread gets its own connection
        with ThreadPoolExecutor(4) as pool:
            many = list(pool.map(lambda b: client.infer(b)["logits"], blobs * 3))
        for i, logits in enumerate(many):
            _close(logits, want["logits"][i % 4][None])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_bad_request_fails_alone_in_its_batch(server, engine, protocol):
    """Good and bad images sent together meet in dynamic batches: each bad one gets its own 400 /
    INVALID_ARGUMENT with vitrt's message, each good one its right answer."""
    if protocol == "http":
        import tritonclient.http as tc

        # one client per request: tritonclient.http's client runs on gevent and is not thread-safe (shared
        # between threads it fails with greenlet's "Cannot switch to a different thread"); gRPC's is
        def connect():
            return tc.InferenceServerClient(server.url)
    else:
        import tritonclient.grpc as tc

        shared = tc.InferenceServerClient(f"127.0.0.1:{server.grpc}")

        def connect():
            return shared
    good = [_jpeg(i) for i in range(3)]
    jpeg = _jpeg(9, (200, 150))
    bad = {"corrupt": b"\xff\xd8\xff\xe0" + os.urandom(200), "truncated": jpeg[: len(jpeg) // 3],
           "text": b"hello, not an image\n" * 5, "empty": b""}
    payloads = [("good", b) for b in good] + list(bad.items())

    def send(item):
        kind, blob = item
        inp = tc.InferInput("image", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[blob]], dtype=np.object_))
        client = connect()
        try:
            return kind, blob, client.infer("m", [inp]).as_numpy("logits"), None
        except Exception as exc:  # tritonclient's InferenceServerException
            return kind, blob, None, exc
        finally:
            if protocol == "http":
                client.close()

    stats0 = _stats(server)
    with ThreadPoolExecutor(len(payloads)) as pool:
        results = list(pool.map(send, payloads))
    stats1 = _stats(server)
    if protocol == "grpc":
        shared.close()  # an open connection would hold the server's drain at teardown for its whole grace
    for kind, blob, logits, exc in results:
        if kind == "good":
            assert exc is None, exc
            _close(logits, engine.infer(engine.preprocess(blob)[None])["logits"])
        else:
            assert exc is not None and "expected" in str(exc), (kind, exc)
            assert str(exc.status()) in ("400", "StatusCode.INVALID_ARGUMENT"), (kind, exc.status())
    executions = stats1["execution_count"] - stats0["execution_count"]
    requests = stats1["inference_count"] - stats0["inference_count"]
    assert executions < requests, (executions, requests)  # batches were formed: errors stayed per request
    assert server.ready()


def _stats(server) -> dict:
    """Triton's statistics: an admin API, so with the token (vitrt/serving/security.py)."""
    req = urllib.request.Request(f"http://{server.url}/v2/models/m/stats", headers=server.admin_headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        s = json.loads(r.read())["model_stats"][0]
    return {"execution_count": int(s["execution_count"]), "inference_count": int(s["inference_count"])}


def test_base64_text_gets_the_same_answer(server, photos):
    raw = Path(photos[1]).read_bytes()
    outputs = [{"name": "logits"}]
    s1, a = _http(server.url, {"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                                            "data": [base64.b64encode(raw).decode()]}], "outputs": outputs})
    with vitrt.Client(server.url, "m") as client:
        want = client.infer(raw)["logits"]
    assert s1 == 200
    np.testing.assert_array_equal(np.array(a["outputs"][0]["data"], np.float32).reshape(want.shape), want)
    uri = "data:image/png;base64," + base64.b64encode(raw).decode()
    s2, b = _http(server.url, {"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES", "data": [uri]}],
                               "outputs": outputs})
    assert s2 == 200 and b["outputs"][0]["data"] == a["outputs"][0]["data"]


def test_the_classification_extension(server, engine, photos):
    raw = Path(photos[2]).read_bytes()
    status, body = _http(server.url, {"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                                                  "data": [base64.b64encode(raw).decode()]}],
                                      "outputs": [{"name": "logits", "parameters": {"classification": 3}}]})
    assert status == 200
    top = [entry.split(":", 2) for entry in body["outputs"][0]["data"]]
    want = engine.predict(raw, topk=3)
    assert [int(i) for _, i, _ in top] == [p.index for p in want]
    assert [label for _, _, label in top] == [p.label for p in want]  # labels.txt beside the model


def test_a_full_queue_answers_503_at_once(server, engine):
    """Many more concurrent requests than the queue holds: the excess gets 503 (UNAVAILABLE, "Exceeds
    maximum queue size"), the accepted ones their right answer, every request one answer (the server's
    own success count equals the client's), and the server stays ready. How many are accepted depends
    on how fast the queue drains, so the test asserts both outcomes happen, not a split."""
    import tritonclient.http as tc

    n = 24
    client = tc.InferenceServerClient(server.url, concurrency=n)
    blob = _jpeg(5, (640, 480))
    inp = tc.InferInput("image", [4, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[blob]] * 4, dtype=np.object_))
    want = engine.infer(np.stack([engine.preprocess(blob)] * 4))["logits"]
    before = _success(server)
    t0 = time.monotonic()
    futures = [client.async_infer("m", [inp]) for _ in range(n)]
    ok = rejected = 0
    for f in futures:
        try:
            _close(f.get_result().as_numpy("logits"), want)
            ok += 1
        except Exception as exc:
            assert str(exc.status()) == "503" and "Exceeds maximum queue size" in str(exc), exc
            rejected += 1
    client.close()
    assert ok >= 1 and rejected >= 1 and ok + rejected == n, (ok, rejected)
    deadline = time.monotonic() + 5  # Triton updates its statistics just after it answers
    while _success(server) - before < ok and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _success(server) - before == ok  # nothing answered twice, nothing run that was refused
    assert time.monotonic() - t0 < 60 and server.ready()


def _success(server) -> int:
    req = urllib.request.Request(f"http://{server.url}/v2/models/m/stats", headers=server.admin_headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        return int(json.loads(r.read())["model_stats"][0]["inference_stats"]["success"]["count"])


def test_sigterm_drains_then_kill9_leaves_nothing_behind(artifact, tmp_path, photos):
    """SIGTERM with requests in flight: they complete, the process exits 0 within the grace. Then kill -9:
    no tritonserver left, its shared memory removed at the next start, which binds the same ports."""
    import http.client
    import threading

    import tritonclient.http as tc

    ports = free_ports(3)
    blob = Path(photos[0]).read_bytes()
    srv = ServeProcess(artifact, "--model-name", "m", "--grace", "20", "--queue-delay-us", "2000000",
                       ports=ports, log=tmp_path / "a.log").start()
    token_file = Path(srv.env["XDG_RUNTIME_DIR"]) / "vitrt" / f"admin-token-{srv.http}"
    assert token_file.is_file()
    inp = tc.InferInput("image", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[blob]], dtype=np.object_))
    body, json_size = tc.InferenceServerClient.generate_request_body([inp])
    n = 3  # under the artifact's max_batch (4): the batch waits the whole window rather than running full
    sent = [threading.Event() for _ in range(n)]

    def one(i: int):  # a plain thread and socket: the request is on the wire before SIGTERM, not when
        conn = http.client.HTTPConnection("127.0.0.1", srv.http, timeout=60)  # a gevent pool gets to it
        try:
            conn.request("POST", "/v2/models/m/infer", body, {"Inference-Header-Content-Length": str(json_size),
                                                               "Connection": "close"})
            sent[i].set()
            r = conn.getresponse()
            data, when = r.read(), time.monotonic()
            length = r.getheader("Inference-Header-Content-Length")
            return r.status, tc.InferenceServerClient.parse_response_body(
                data, header_length=int(length) if length else None), when
        finally:
            conn.close()  # Triton's drain also waits for open keep-alive connections (docs/serving.md)

    try:
        with ThreadPoolExecutor(n) as pool:
            futures = [pool.submit(one, i) for i in range(n)]
            assert all(e.wait(30) for e in sent)
            time.sleep(0.5)  # read by Triton and waiting in the 2 s batching window
            t0 = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            answers = [f.result(timeout=60) for f in futures]
        assert [a[0] for a in answers] == [200] * n, srv.log()[-3000:]
        assert [a[1].as_numpy("logits").shape for a in answers] == [(1, 1000)] * n
        code = srv.proc.wait(timeout=30)
        assert code == 0 and time.monotonic() - t0 < 20, srv.log()[-3000:]
        # sent before the signal, answered after it: in flight when it came (Triton's own "in-flight
        # inferences" count in its log leaves out requests still waiting in the batcher's queue)
        assert all(a[2] > t0 for a in answers)
        assert not srv.ready()
        assert not token_file.exists(), "the token file outlived its server"
    finally:
        srv.stop()
    # kill -9, then a start under the same pid: vitrt serve is PID 1 of a new pid namespace both times, as
    # in a container whose memory-backed /dev/shm outlives the killed process (where unshare is refused,
    # the two starts have different pids and the same-pid case is shown by test_stale_shm_* alone)
    same_pid = pid_namespace_refused() is None
    srv = ServeProcess(artifact, "--model-name", "m", ports=ports, log=tmp_path / "b.log",
                       pid_namespace=same_pid).start()
    try:
        pid = srv.pid
        inner = 1 if same_pid else pid  # the pid vitrt serve sees and names its segments after
        triton = children(pid)
        assert triton, "vitrt serve runs tritonserver as its child"
        shm = glob.glob(f"/dev/shm/vitrt{inner}[-_]*")
        assert shm, "the Python backend's shared memory is named after the server"
        os.kill(pid, signal.SIGKILL)
        srv.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{t}").exists() for t in triton) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(Path(f"/proc/{t}").exists() and "zombie" not in Path(f"/proc/{t}/status").read_text().lower()
                       for t in triton), "tritonserver outlived vitrt serve"
        assert all(Path(p).exists() for p in shm), "a kill -9 leaves the segments (nothing could remove them)"
    finally:
        srv.stop()
    again = ServeProcess(artifact, "--model-name", "m", ports=ports, log=tmp_path / "c.log",
                         pid_namespace=same_pid).start()
    try:
        assert not [p for p in shm if Path(p).exists()]  # the dead server's segments are gone
        assert set(glob.glob(f"/dev/shm/vitrt{inner if same_pid else again.pid}[-_]*")).isdisjoint(shm)  # new names
        with vitrt.Client(again.url, "m") as client:
            assert client.embed(blob).ndim == 1
        time.sleep(0.5)
    finally:
        assert again.stop() == 0, again.log()[-3000:]


def test_deploy_manifests_match_the_real_server(server):
    """deploy/*.yaml: the `vitrt serve` command line parses with vitrt's own CLI, the ports the probes and
    Services name are the ones it sets, and each probe path, and each path the Ingress routes (for this
    server's model name), answers 200 on the real server here without the admin token."""
    import yaml

    from vitrt.cli import build_parser

    root = Path(__file__).resolve().parents[1] / "deploy"
    containers, routes = [], []
    for manifest in sorted(root.glob("*.yaml")):
        for doc in yaml.safe_load_all(manifest.read_text()):
            if doc["kind"] == "Ingress":
                routes += [(p["path"], doc["metadata"]["annotations"].get("nginx.ingress.kubernetes.io/backend-protocol"))
                           for r in doc["spec"]["rules"] for p in r["http"]["paths"]]
            if doc["kind"] not in ("Deployment", "InferenceService"):
                continue
            spec = doc["spec"]
            pod = spec["template"]["spec"] if doc["kind"] == "Deployment" else spec["predictor"]
            containers += [(manifest.name, pod, c) for c in pod.get("containers", [])]
    assert {m for m, _, _ in containers} == {"kubernetes.yaml", "kserve.yaml"}
    for manifest, pod, c in containers:
        assert c["command"][:2] == ["vitrt", "serve"], manifest
        args = build_parser().parse_args(c["command"][1:])
        assert args.host == "0.0.0.0"
        named = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if probe not in c:
                continue
            get = c[probe]["httpGet"]
            port = named.get(get["port"], get["port"])
            assert port == args.http_port, (manifest, probe, port)
            with urllib.request.urlopen(f"http://{server.url}{get['path']}", timeout=10) as r:
                assert r.status == 200, (manifest, probe)
        if any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod.get("volumes", [])):
            assert any(m["mountPath"] == "/dev/shm" for m in c["volumeMounts"])
        if named:
            assert named.get("grpc", args.grpc_port) == args.grpc_port
            assert named.get("metrics", args.metrics_port) == args.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=10) as r:
        assert "nv_inference_queue_duration_us" in r.read().decode()  # the HPA's metric exists
    http_routes = [p.replace("/b16_384", "/m") for p, proto in routes if proto != "GRPC"]
    assert "/v2/models/m/infer" in http_routes
    for path in http_routes:
        if path.endswith("/infer"):
            status, _ = _http(server.url, {"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                                                       "data": [base64.b64encode(_jpeg(7)).decode()]}]}, path)
        else:
            with urllib.request.urlopen(f"http://{server.url}{path}", timeout=10) as r:
                status = r.status
        assert status == 200, path
    import tritonclient.grpc as tc  # the gRPC routes are the inference service's methods the client uses

    grpc_methods = {p.rsplit("/", 1)[1] for p, proto in routes if proto == "GRPC"}
    assert grpc_methods == {"ModelInfer", "ModelMetadata", "ModelConfig", "ModelReady"}
    client = tc.InferenceServerClient(f"127.0.0.1:{server.grpc}")
    try:
        assert client.is_model_ready("m") and client.get_model_metadata("m") and client.get_model_config("m")
    finally:
        client.close()


# --- security (vitrt/serving/security.py, docs/serving.md "Security"): probed as an attacker would ---------


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_admin_apis_are_closed_without_the_token(server, protocol):
    """Every admin API answers 403 (HTTP) / UNAVAILABLE (gRPC) without the token: shared memory (the
    backend's own segment cannot be registered, so no inference can read or write it: CVE-2025-23320 ->
    23319 -> 23334), repository, model unload, statistics, logging, trace. The server stays up."""
    from benchmarks.serve_probes import CLOSED, backend_segment, grpc_probes, http_probes

    segment = backend_segment(server.proc.pid)
    assert segment and segment.startswith(f"/vitrt{server.proc.pid}-"), segment  # what an attacker would name
    if protocol == "http":
        got = http_probes(server.url, "m", segment)
        assert {k: v for k, (_, v) in got.items()} == dict.fromkeys(got, CLOSED), got
        statuses = {k: s for k, (s, _) in got.items()}
        # the two inferences name a region that could not be registered: Triton's own 404 for it
        assert statuses.pop("shm read through an inference input") == 404
        assert statuses.pop("shm write through an inference output") == 404
        assert statuses.pop("model config shows a path") == 200  # open, and without a path (next test)
        assert set(statuses.values()) == {403}, statuses
        assert len(statuses) == 9
    else:
        got = grpc_probes(f"127.0.0.1:{server.grpc}", "m", segment)
        assert len(got) == 8 and set(got.values()) == {("UNAVAILABLE", CLOSED)}, got
    assert server.ready()


def test_admin_apis_answer_with_the_token(server, monkeypatch):
    """With the token, statistics answer over HTTP (vitrt.Client.statistics: the token from its argument,
    else $VITRT_ADMIN_TOKEN, else the file vitrt serve wrote) and gRPC (metadata); a wrong token is refused."""
    import tritonclient.grpc as tc

    from vitrt.serving.security import GRPC_HEADER

    with vitrt.Client(server.url, "m", admin_token=server.token) as client:
        assert client.statistics()["model_stats"][0]["name"] == "m"
    monkeypatch.delenv("VITRT_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", server.env["XDG_RUNTIME_DIR"])  # the file, as a local admin reads it
    with vitrt.Client(server.url, "m") as client:
        assert client.statistics()["model_stats"][0]["name"] == "m"
    monkeypatch.setenv("VITRT_ADMIN_TOKEN", "not-the-token-0123456789")
    with vitrt.Client(server.url, "m") as client:
        with pytest.raises(vitrt.BackendError, match="refused statistics"):
            client.statistics()
    grpc = tc.InferenceServerClient(f"127.0.0.1:{server.grpc}")
    try:
        stats = grpc.get_inference_statistics("m", headers={GRPC_HEADER: server.token}, as_json=True)
        assert stats["model_stats"][0]["name"] == "m"
    finally:
        grpc.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from tls_gateway import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))


def test_the_client_reaches_a_tls_gateway_with_its_credentials_and_nothing_else(server, engine, pki, photos,
                                                                                monkeypatch):
    """vitrt.Client through an HTTPS gateway on loopback (tests/tls_gateway.py: a CA the test makes, basic
    auth, an API key, a client certificate), in front of the real server: the same outputs as the Engine.
    The certificate is verified by default (the system's CAs, another CA and another host name fail), each
    missing credential is refused, and no admin token travels with the requests."""
    from tls_gateway import TLSGateway

    monkeypatch.delenv("VITRT_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", server.env["XDG_RUNTIME_DIR"])  # the server's token file is readable
    auth, key = ("ml-user", "pass:with-colon"), "k-0123456789"
    creds = dict(cert_file=pki["client"], key_file=pki["client_key"], basic_auth=auth, headers={"X-Api-Key": key})
    with TLSGateway(server.url, pki, basic_auth=auth, api_key=key, client_cert=True) as gw:
        url = f"https://localhost:{gw.port}"
        with vitrt.Client(url, "m", ca_file=pki["ca"], **creds) as client:
            _close(client.embed(photos[0]), engine.embed(photos[0]))
            assert client.predict(photos[0])[0].index == engine.predict(photos[0])[0].index
            assert client.infer([photos[0]] * 6)["logits"].shape == (6, 1000)  # split at max_batch 4: two requests
            with pytest.raises(vitrt.BackendError, match="no admin token was found"):
                client.statistics()  # the server's token file is for its own port, and never for the gateway
        reached = len(gw.seen)
        assert reached >= 4 and all(h["x-api-key"] == key and h["authorization"].startswith("Basic ") for h in gw.seen)
        assert not [h for h in gw.seen if "vitrt-admin-key" in h]

        def refused(match: str, target: str = url, **kw) -> None:
            with pytest.raises(vitrt.BackendError, match=match):
                vitrt.Client(target, "m", **{**creds, **kw})

        refused("not verified: pass ca_file")  # the system's CAs do not know the test CA
        refused("not verified: pass ca_file", ca_file=pki["other_ca"])
        refused("Hostname mismatch|not verified", f"https://127.0.0.1:{gw.port}", ca_file=pki["ca"])  # names localhost
        refused("no vitrt model", ca_file=pki["ca"], cert_file=None, key_file=None)  # no client certificate
        refused("(?s)HTTP 401: .*pass basic_auth", ca_file=pki["ca"], basic_auth=(auth[0], "wrong"))
        refused("HTTP 403", ca_file=pki["ca"], headers={"X-Api-Key": "wrong"})
        refused("no vitrt model", f"http://localhost:{gw.port}", basic_auth=auth, headers={"X-Api-Key": key},
                cert_file=None, key_file=None)  # plain HTTP to the TLS port: what the Client did with https:// before
        assert len(gw.seen) == reached and gw.refused == [401, 403]  # nothing else reached the server
    with TLSGateway(server.url, pki, server_cert="other_server") as gw:  # signed by the other CA: that CA verifies it
        with vitrt.Client(f"https://localhost:{gw.port}", "m", ca_file=pki["other_ca"]) as client:
            assert client.embed(photos[0]).shape == (64,)


def test_inference_health_metadata_and_metrics_stay_open_and_the_config_shows_no_path(server, artifact, photos):
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/m", "/v2/models/m/config"):
        with urllib.request.urlopen(f"http://{server.url}{path}", timeout=10) as r:
            assert r.status == 200, path
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=10) as r:
        assert "nv_inference_request_success" in r.read().decode()
    with urllib.request.urlopen(f"http://{server.url}/v2/models/m/config", timeout=10) as r:
        text = r.read().decode()
    params = {k: v["string_value"] for k, v in json.loads(text)["parameters"].items()}
    assert params["artifact"] == "small.onnx" and len(params["sha256"]) == 64  # named by file name and sha256
    assert not [v for v in params.values() if "/" in v], params
    assert str(artifact.parent) not in text and "vitrt-serve-" not in text  # neither the artifact's nor the repository's folder
    with vitrt.Client(server.url, "m") as client:  # no token: inference is open
        assert client.embed(photos[0]).ndim == 1


def test_the_token_never_appears_in_the_servers_output(server):
    """The token is generated per start into a 0600 file in a 0700 folder, whose path (not the token) is
    printed; Triton's own startup table does not show the restricted-API flags' value either."""
    token_file = Path(server.env["XDG_RUNTIME_DIR"]) / "vitrt" / f"admin-token-{server.http}"  # its own, by port
    assert (token_file.stat().st_mode & 0o777, token_file.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    log = server.log()
    assert len(server.token) >= 40 and server.token not in log
    assert f"the token in {token_file} (mode 0600)" in log
    warnings = [ln for ln in log.splitlines() if "warning: Triton 2.51.0 (NGC 24.10) predates NGC" in ln]
    assert len(warnings) == 1 and "bound to loopback (127.0.0.1) only" in warnings[0]  # the loopback warning


def test_an_image_over_the_byte_cap_gets_400_before_it_is_decoded(server, engine):
    """A valid PNG of 3 MB against the server's 2 MB cap: refused with the cap's message, as raw bytes and
    as base64 text, though the same bytes decode fine (Engine preprocesses them); a small image in the
    same batch still gets its answer."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)).save(buf, "PNG")
    big = buf.getvalue()
    assert len(big) > CAP and engine.preprocess(big).shape == (384, 384, 3)
    with vitrt.Client(server.url, "m") as client:
        with pytest.raises(vitrt.ImageError, match=f"image payload of {len(big)} bytes is larger than this server's "
                                                   f"cap of {CAP} bytes"):
            client.infer(big)
        assert client.infer(_jpeg(3))["logits"].shape == (1, 1000)
    status, body = _http(server.url, {"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                                                  "data": [base64.b64encode(big).decode()]}]})
    assert status == 400 and f"cap of {CAP} bytes" in body["error"], body
    assert server.ready()


def test_a_public_bind_of_a_vulnerable_triton_is_refused(artifact):
    """The bundled Triton 2.51 asked to bind a non-loopback address: refused before anything binds, with
    the version, the CVEs and the ways out. 192.0.2.1 (TEST-NET-1) is on no interface here, so even a
    broken check could not expose a server from a test."""
    import subprocess

    out = subprocess.run([str(serve_python()), "-m", "vitrt", "serve", str(artifact), "--host", "192.0.2.1",
                          "--http-port", str(free_ports(1)[0])], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 1, out.stdout + out.stderr
    err = out.stderr
    assert "refusing to bind Triton 2.51.0 (NGC 24.10) to 192.0.2.1" in err
    assert "CVE-2025-23310" in err and "CVE-2026-47627" in err
    assert "26.06-py3" in err and "--triton-home" in err and "--allow-vulnerable-triton" in err
    assert "Started HTTPService" not in out.stdout  # no server started


def test_grpc_port_0_serves_http_only(artifact, tmp_path, photos):
    """--grpc-port 0: nothing listens on a gRPC port (Triton's --allow-grpc=false), HTTP inference works."""
    import socket

    srv = ServeProcess(artifact, "--model-name", "m", "--grpc-port", "0", log=tmp_path / "s.log")
    with srv:
        with socket.socket() as s:  # the port ServeProcess would have given gRPC: free, and nobody took it
            s.settimeout(5)
            assert s.connect_ex(("127.0.0.1", srv.grpc)) != 0
        assert "Started HTTPService" in srv.log() and "Started GRPCInferenceService" not in srv.log()
        with vitrt.Client(srv.url, "m") as client:
            assert client.embed(Path(photos[0]).read_bytes()).ndim == 1


@pytest.fixture(scope="module")
def named_artifact(artifact, tmp_path_factory) -> Path:
    """The small ViT with class names of its own in its metadata (as CLASS_NAMES= gives a fine-tune)."""
    from export.onnx_export import rewrite_metadata
    from vitrt.metadata import Metadata

    folder = tmp_path_factory.mktemp("named")
    path = folder / "small.onnx"
    shutil.copy(artifact, path)
    for companion in artifact.parent.glob(artifact.name + ".*"):
        shutil.copy(companion, folder / companion.name)
    meta = Metadata.from_onnx(path).data
    rewrite_metadata(path, {**meta, "class_names": [f"part {i}" for i in range(1000)]})
    return path


def test_an_ngc_layout_triton_home_serves_the_artifacts_class_names(named_artifact, tmp_path, photos):
    """--triton-home with NVIDIA's container layout (bin/tritonserver, backends/python with its own stub),
    built here from the bundled binary by symbolic links: the stub comes from backends/python, the release
    from a probe (GET /v2 on loopback, as for any Triton outside /opt/tritonserver without NGC's variables).
    The artifact has class names of its own: the classification extension, vitrt.Client and `vitrt
    predict --server` show them, as Engine does."""
    import subprocess
    import sys

    python = Path(serve_python())
    bundled = next(python.parents[1].glob("lib/python3*/site-packages/pytriton/tritonserver"))
    home = tmp_path / "tritonserver"
    (home / "bin").mkdir(parents=True)
    (home / "backends" / "python").mkdir(parents=True)
    (home / "bin" / "tritonserver").symlink_to(bundled / "bin" / "tritonserver")
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        (home / "backends" / "python" / name).symlink_to(bundled / "backends" / "python" / name)
    minor = subprocess_minor(python)
    (home / "backends" / "python" / "triton_python_backend_stub").symlink_to(
        bundled / "python_backend_stubs" / minor / "triton_python_backend_stub")
    raw = Path(photos[2]).read_bytes()
    with vitrt.Engine(named_artifact, providers=["CPUExecutionProvider"]) as engine:
        want = engine.predict(raw, topk=3)
    assert all(p.label == f"part {p.index}" for p in want)
    with ServeProcess(named_artifact, "--model-name", "m", "--triton-home", str(home), log=tmp_path / "ngc.log") as srv:
        status, body = _http(srv.url, {"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                                                   "data": [base64.b64encode(raw).decode()]}],
                                       "outputs": [{"name": "logits", "parameters": {"classification": 3}}]})
        assert status == 200
        assert [e.split(":", 2)[2] for e in body["outputs"][0]["data"]] == [p.label for p in want]
        with vitrt.Client(srv.url, "m") as client:
            got = client.predict(raw, topk=3)
            assert [(p.index, p.label) for p in got] == [(p.index, p.label) for p in want]
        out = subprocess.run([sys.executable, "-m", "vitrt", "predict", str(photos[2]), "--json", "--server", srv.url,
                              "--model-name", "m", "--topk", "3"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert [p["label"] for p in json.loads(out.stdout)[0]["predictions"]] == [p.label for p in want]
        log = srv.log()
    assert f"Triton 2.51.0 at {home} (found by --triton-home; version from GET /v2 of the binary" in log


def subprocess_minor(python: Path) -> str:
    import subprocess

    return subprocess.run([str(python), "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_serve_refuses_numpy_2_with_the_reason(artifact):
    """The build venv has numpy 2, which the bundled Triton's Python backend stub cannot read: a clear
    error, no server. The bundled layout is named with --triton-home (this venv has no nvidia-pytriton)."""
    import subprocess
    import sys

    import numpy

    if int(numpy.__version__.split(".")[0]) < 2:
        pytest.skip("this venv has numpy < 2")
    bundled = next(Path(serve_python()).parents[1].glob("lib/python3*/site-packages/pytriton/tritonserver"))
    out = subprocess.run([sys.executable, "-m", "vitrt", "serve", str(artifact), "--http-port", str(free_ports(1)[0]),
                          "--triton-home", str(bundled)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "needs numpy < 2" in out.stderr and "make serve" in out.stderr, out.stderr
    assert "bundled Triton's Python backend stub" in out.stderr


def test_vitrt_predict_over_the_server_prints_what_the_engine_prints(server, artifact, photos):
    import subprocess
    import sys

    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "vitrt", "predict", str(photos[3]), "--json", *args],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return [(p["index"], p["label"]) for p in json.loads(out.stdout)[0]["predictions"]]

    assert cli("--server", server.url, "--model-name", "m") == cli("--engine", str(artifact))


def test_a_server_started_by_a_test_dies_with_it(tmp_path):
    """ServeProcess's children get SIGTERM when the process that started them dies, even by kill -9 (a
    test run killed mid-way leaves no server). Shown with a stand-in child: the mechanism
    (PR_SET_PDEATHSIG in preexec_fn) is the same for `vitrt serve`."""
    import subprocess
    import sys

    script = ("import subprocess, sys, time\n"
              "from benchmarks.serve_process import _terminate_with_parent\n"
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], "
              "preexec_fn=_terminate_with_parent, start_new_session=True)\n"
              "print(p.pid, flush=True)\n"
              "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1],
                              stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert children(parent.pid) == [child]
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            try:  # a zombie until init reaps it: gone for our purpose once its state is Z
                if Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            except FileNotFoundError:
                break
            time.sleep(0.05)
        else:
            os.kill(child, signal.SIGKILL)
            raise AssertionError("the child outlived the process that started it")
    finally:
        if parent.poll() is None:
            parent.kill()
