"""``vitrt.Client``: the Engine's API against a ``vitrt serve`` server (Triton's HTTP protocol, on
tritonclient). It sends encoded image files, not pixels: a path's bytes as they are, bytes as given,
PIL images and arrays as PNG; the server decodes and preprocesses them exactly as Engine does.

    client = vitrt.Client("localhost:8000")          # model b16_384
    client.predict("cat.jpg")                        # [Prediction(index=281, ...), ...]
    client.embed(["a.jpg", "b.png"])                 # float32 (2, 768)

A server error is a VitrtError carrying the server's message: ImageError for a refused image (HTTP 400),
BackendError for the rest (a full queue is HTTP 503).

Admin calls (``statistics()``) send the header ``vitrt-admin-key`` with the token from ``admin_token=``,
else ``$VITRT_ADMIN_TOKEN``, else the file ``vitrt serve`` wrote (vitrt/serving/security.py); inference
needs none.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError, ImageError, InputError


def encode(image: Any) -> bytes:
    """The bytes a client sends for one image."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ImageError(f"{os.fspath(path)!r} cannot be read ({exc.strerror}); expected a path to an image file") from None
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    from ..preprocess import to_pil

    buf = io.BytesIO()
    to_pil(image).save(buf, format="PNG")  # arrays and PIL images, checked as Engine checks them
    return buf.getvalue()


class Client:
    def __init__(self, url: str = "localhost:8000", model: str = "b16_384", timeout: float = 60.0,
                 admin_token: str | None = None):
        try:
            import tritonclient.http as http
        except (ImportError, RuntimeError):  # tritonclient without its http extra raises RuntimeError
            raise BackendError("tritonclient is not installed; expected `pip install 'tritonclient[http]'`") from None
        self._http = http
        url = url.split("://", 1)[-1].rstrip("/")
        self.url, self.model, self._timeout = url, model, timeout
        self._admin_token = admin_token
        # tritonclient.http's client runs on gevent and is not thread-safe (shared between threads it
        # fails with greenlet's "Cannot switch to a different thread"): one per thread that calls us
        self._local, self._lock, self._clients = threading.local(), threading.Lock(), []
        try:
            config = self.client.get_model_config(model)
        except Exception as exc:
            raise BackendError(f"no vitrt model {model!r} at {url} ({_message(exc)}); expected `vitrt serve` "
                               "running there") from None
        self.max_batch = int(config.get("max_batch_size") or 1)
        self.labels = _labels(config)

    @property
    def client(self):
        """This thread's tritonclient.http client."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._http.InferenceServerClient(self.url, connection_timeout=self._timeout,
                                                      network_timeout=self._timeout)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def statistics(self) -> dict:
        """Triton's statistics for this model (an admin API: sends the admin token)."""
        from .security import ADMIN_HEADER, client_token

        host, _, port = self.url.rpartition(":") if ":" in self.url else (self.url, "", "80")
        token = client_token(self._admin_token, host or self.url, int(port) if port.isdigit() else 80)
        if token is None:
            raise BackendError("statistics are an admin API of vitrt serve and no admin token was found; expected "
                               "admin_token=..., $VITRT_ADMIN_TOKEN, or the file vitrt serve named at start (read for a "
                               "server on loopback only)")
        try:
            return self.client.get_inference_statistics(self.model, headers={ADMIN_HEADER: token})
        except Exception as exc:
            raise BackendError(f"server {self.url} refused statistics ({_message(exc)}); expected the admin token of "
                               "the running vitrt serve") from None

    def infer(self, images: Any) -> dict[str, np.ndarray]:
        """Raw outputs for one image or many (batches larger than the server's max batch are split)."""
        from ..preprocess import is_single

        items = [images] if is_single(images) else list(images)
        if not items:
            raise InputError("got an empty list of images; expected at least one image")
        blobs = [encode(im) for im in items]
        parts = [self._request(blobs[i:i + self.max_batch]) for i in range(0, len(blobs), self.max_batch)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _request(self, blobs: list[bytes]) -> dict[str, np.ndarray]:
        http = self._http
        inp = http.InferInput("image", [len(blobs), 1], "BYTES")
        inp.set_data_from_numpy(np.array(blobs, dtype=np.object_).reshape(-1, 1), binary_data=True)
        outs = [http.InferRequestedOutput(n, binary_data=True) for n in ("logits", "embedding")]
        try:
            result = self.client.infer(self.model, [inp], outputs=outs)
        except Exception as exc:
            status = str(getattr(exc, "status", lambda: "")() or "")
            msg = f"server {self.url} refused the request ({status or 'no answer'}): {_message(exc)}"
            if status == "400":  # the server's ImageError text, which says what was expected
                raise ImageError(msg) from None
            raise BackendError(msg + ("" if "expected" in msg else
                                      "; expected a running vitrt server with room in its queue")) from None
        return {n: result.as_numpy(n) for n in ("logits", "embedding")}

    def predict(self, images: Any, topk: int = 5):
        from ..engine import softmax, top_k
        from ..preprocess import is_single

        if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or not 1 <= topk <= len(self.labels):
            raise InputError(f"topk={topk!r}; expected an integer from 1 to {len(self.labels)}")
        single = is_single(images)
        probs = softmax(self.infer(images)["logits"])
        results = [top_k(p, int(topk), self.labels) for p in probs]
        return results[0] if single else results

    def embed(self, images: Any) -> np.ndarray:
        from ..preprocess import is_single

        single = is_single(images)
        emb = self.infer(images)["embedding"].astype(np.float32, copy=False)
        return emb[0] if single else emb


def _labels(config: dict) -> tuple[str, ...]:
    """The class names the server's model shows (its config parameter ``labels``: a JSON list of the
    artifact's own names, or a label set's name); a server from before that parameter: ImageNet's names
    for 1000 classes, as it did."""
    import json

    from ..labels import labels_for

    width = next(int(o["dims"][0]) for o in config["output"] if o["name"] == "logits")
    params = config.get("parameters") or {}
    if "labels" not in params:
        return labels_for("imagenet-1k", width)
    text = params["labels"].get("string_value", "")
    if text.startswith("["):
        try:
            return labels_for(None, width, json.loads(text))
        except ValueError as exc:
            raise BackendError(f"the server's class names do not fit its {width} classes ({exc}); expected a "
                               "model written by vitrt serve") from None
    return labels_for(text or None, width)


def _message(exc: Exception) -> str:
    text = getattr(exc, "message", None)
    text = text() if callable(text) else text
    return str(text or exc)
