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
from benchmarks.serve_process import ServeProcess, children, free_ports, serve_python

if serve_python() is None:  # raises when make test's VITRT_SERVE_PYTHON names nothing
    pytest.skip("no serving venv (`make test` builds .venv-serve)", allow_module_level=True)

QUEUE = 8  # --max-queue-size of the shared server: room for the 7 requests of the batch test; 24 overflow it


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
                       log=tmp_path_factory.mktemp("serve") / "server.log")
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
    with urllib.request.urlopen(f"http://{server.url}/v2/models/m/stats", timeout=10) as r:
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
    with urllib.request.urlopen(f"http://{server.url}/v2/models/m/stats", timeout=10) as r:
        return int(json.loads(r.read())["model_stats"][0]["inference_stats"]["success"]["count"])


def test_sigterm_drains_then_kill9_leaves_nothing_behind(artifact, tmp_path, photos):
    """SIGTERM with requests in flight: they complete, the process exits 0 within the grace. Then kill -9:
    no tritonserver left, its shared memory removed at the next start, which binds the same ports."""
    ports = free_ports(3)
    blob = Path(photos[0]).read_bytes()
    srv = ServeProcess(artifact, "--model-name", "m", "--grace", "20", "--queue-delay-us", "300000",
                       ports=ports, log=tmp_path / "a.log").start()
    try:
        import tritonclient.http as tc

        client = tc.InferenceServerClient(srv.url, concurrency=4)
        inp = tc.InferInput("image", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[blob]], dtype=np.object_))
        futures = [client.async_infer("m", [inp]) for _ in range(4)]
        time.sleep(0.1)  # they wait in the 300 ms batching window
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        answers = [f.get_result().as_numpy("logits").shape for f in futures]
        client.close()  # Triton's drain also waits for open keep-alive connections (docs/serving.md)
        assert answers == [(1, 1000)] * 4
        assert srv.proc.wait(timeout=30) == 0 and time.monotonic() - t0 < 20
        assert not srv.ready()
    finally:
        srv.stop()
    srv = ServeProcess(artifact, "--model-name", "m", ports=ports, log=tmp_path / "b.log").start()
    try:
        pid = srv.proc.pid
        triton = children(pid)
        assert triton, "vitrt serve runs tritonserver as its child"
        shm = glob.glob(f"/dev/shm/vitrt{pid}_*")
        assert shm, "the Python backend's shared memory is named after the server"
        os.kill(pid, signal.SIGKILL)
        srv.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{t}").exists() for t in triton) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(Path(f"/proc/{t}").exists() and "zombie" not in Path(f"/proc/{t}/status").read_text().lower()
                       for t in triton), "tritonserver outlived vitrt serve"
    finally:
        srv.stop()
    again = ServeProcess(artifact, "--model-name", "m", ports=ports, log=tmp_path / "c.log").start()
    try:
        assert not [p for p in shm if Path(p).exists()]  # the dead server's segments are gone
        with vitrt.Client(again.url, "m") as client:
            assert client.embed(blob).ndim == 1
        time.sleep(0.5)
    finally:
        assert again.stop() == 0


def test_deploy_manifests_match_the_real_server(server):
    """deploy/*.yaml: the `vitrt serve` command line parses with vitrt's own CLI, the ports the probes and
    Services name are the ones it sets, and each probe path answers 200 on the real server here."""
    import yaml

    from vitrt.cli import build_parser

    root = Path(__file__).resolve().parents[1] / "deploy"
    containers = []
    for manifest in sorted(root.glob("*.yaml")):
        for doc in yaml.safe_load_all(manifest.read_text()):
            spec = doc["spec"]
            pod = spec["template"]["spec"] if doc["kind"] == "Deployment" else spec.get("predictor", {})
            containers += [(manifest.name, doc, c) for c in pod.get("containers", [])]
            if doc["kind"] == "Deployment":
                assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod["volumes"])  # /dev/shm
    assert {m for m, _, _ in containers} == {"kubernetes.yaml", "kserve.yaml"}
    for manifest, doc, c in containers:
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
            if any(v.get("emptyDir", {}).get("medium") == "Memory" for v in
                   (doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc["spec"]["predictor"]).get("volumes", [])):
                assert any(m["mountPath"] == "/dev/shm" for m in c["volumeMounts"])
        if named:
            assert named.get("grpc", args.grpc_port) == args.grpc_port
            assert named.get("metrics", args.metrics_port) == args.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=10) as r:
        assert "nv_inference_queue_duration_us" in r.read().decode()  # the HPA's metric exists


def test_serve_refuses_numpy_2_with_the_reason(artifact):
    """The build venv has numpy 2, which Triton's Python backend stub cannot read: a clear error, no server."""
    import subprocess
    import sys

    import numpy

    if int(numpy.__version__.split(".")[0]) < 2:
        pytest.skip("this venv has numpy < 2")
    out = subprocess.run([sys.executable, "-m", "vitrt", "serve", str(artifact), "--http-port", str(free_ports(1)[0])],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "needs numpy < 2" in out.stderr and "make serve" in out.stderr, out.stderr


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
