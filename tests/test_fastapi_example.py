"""examples/fastapi_app.py for real: uvicorn on loopback with the small ViT, concurrent good, bad and
oversized uploads, then SIGTERM. The server is always stopped (SIGTERM, then SIGKILL) and dies with the
test process. Probabilities against Engine.predict: the same artifact and backend, batched with other
requests by the in-process batcher, so ONNX Runtime may sum in another order: 1e-4 absolute."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import vitrt
from benchmarks.serve_process import _terminate_with_parent, free_ports

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")
ROOT = Path(__file__).resolve().parents[1]
LIMIT = 2_000_000  # VITRT_MAX_BODY_BYTES for the test: above every photo sent (<= 0.8 MB)


def post(url: str, data: bytes, name: str = "x.png", query: str = "") -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{url}/predict{query}", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def app_server(small_onnx, tmp_path_factory):
    port = free_ports(1)[0]
    log = open(tmp_path_factory.mktemp("fastapi") / "uvicorn.log", "w")
    env = {**os.environ, "VITRT_ARTIFACT": str(small_onnx), "VITRT_MAX_BODY_BYTES": str(LIMIT)}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=_terminate_with_parent)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, Path(log.name).read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            raise AssertionError("uvicorn did not answer /healthz within 60 s")
        yield url, proc, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def test_concurrent_good_bad_and_oversized_uploads(app_server, small_onnx, photos):
    url, proc, _ = app_server
    good = [(p.name, p.read_bytes()) for p in photos[:8]]
    bad = [("corrupt.jpg", b"\xff\xd8\xff\xe0" + os.urandom(300)), ("notes.txt", b"not an image\n" * 20)]
    big = [("big.png", os.urandom(LIMIT + 1))]
    jobs = [("good", n, d) for n, d in good] + [("bad", n, d) for n, d in bad] + [("big", n, d) for n, d in big]
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda j: (j, post(url, j[2], j[1], "?embedding=1")), jobs))
    counts = {"good": 0, "bad": 0, "big": 0}
    with vitrt.Engine(small_onnx, providers=["CPUExecutionProvider"]) as engine:
        for (kind, name, data), (status, body) in answers:
            if kind == "good":
                want = engine.predict(data, topk=5)
                assert status == 200, (name, body)
                assert [(p["index"], p["label"]) for p in body["predictions"]] == [(p.index, p.label) for p in want]
                assert all(abs(p["prob"] - q.prob) < 1e-4 for p, q in zip(body["predictions"], want))
                assert len(body["embedding"]) == engine.metadata.data["model"]["num_features"]
            elif kind == "bad":
                assert status == 400 and "expected" in body["detail"], (name, status, body)
            else:
                assert status == 413 and f"at most {LIMIT} bytes" in body["detail"], (status, body)
            counts[kind] += 1
    assert counts == {"good": 8, "bad": 2, "big": 1}
    with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:  # still up
        assert json.loads(r.read())["status"] == "ok"
    assert proc.poll() is None


def test_sigterm_stops_it_cleanly(app_server):
    url, proc, log = app_server
    proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal it caught (since 0.29): exit -15 or 0
    assert proc.wait(timeout=15) in (0, -signal.SIGTERM)
    log.flush()
    text = Path(log.name).read_text()
    assert "Waiting for application shutdown" in text and "Finished server process" in text, text[-2000:]
    assert "Traceback" not in text


def test_overloaded_is_503(small_onnx, monkeypatch):
    """The mapping of vitrt.Overloaded, in process (ASGI) with a backend that is always full."""
    httpx = pytest.importorskip("httpx")
    import asyncio

    monkeypatch.setenv("VITRT_ARTIFACT", str(small_onnx))
    sys.path.insert(0, str(ROOT))
    try:
        from examples import fastapi_app
    finally:
        sys.path.remove(str(ROOT))

    async def run():
        async with fastapi_app.lifespan(fastapi_app.app):
            async def full(*a, **k):
                raise vitrt.Overloaded("the queue holds 16 of max_queue=16 images")

            monkeypatch.setattr(fastapi_app.engine, "ainfer", full)
            transport = httpx.ASGITransport(app=fastapi_app.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await client.post("/predict", files={"file": ("x.png", png)})

    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, "PNG")
    png = buf.getvalue()
    r = asyncio.run(run())
    assert r.status_code == 503 and "max_queue=16" in r.json()["detail"]
