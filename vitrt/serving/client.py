"""``vitrt.Client``: the Engine's API against a ``vitrt serve`` server (Triton's HTTP protocol, on
tritonclient). It sends encoded image files, not pixels: a path's bytes as they are, bytes as given,
PIL images and arrays as PNG; the server decodes and preprocesses them exactly as Engine does.

    client = vitrt.Client("localhost:8000")          # model b16_384
    client.predict("cat.jpg")                        # [Prediction(index=281, ...), ...]
    client.embed(["a.jpg", "b.png"])                 # float32 (2, 768)

A server error is a VitrtError carrying the server's message: ImageError for a refused image (HTTP 400),
BackendError for the rest (a full queue is HTTP 503).

Admin calls (``statistics()``) send the header ``vitrt-admin-key`` with the token from ``admin_token=``,
else ``$VITRT_ADMIN_TOKEN``, else, for a server on loopback only, the file ``vitrt serve`` wrote
(vitrt/serving/security.py); inference needs none.

Through a gateway (deploy/kubernetes.yaml: TLS, client authentication):

    vitrt.Client("https://vitrt.example.com", ca_file="ca.pem",        # verified by default: system CAs
                 cert_file="client.pem", key_file="client.key",       # a client certificate (mutual TLS)
                 basic_auth=("user", "password"), headers={"X-Api-Key": "..."})
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
                 admin_token: str | None = None, *, ca_file: str | os.PathLike | None = None,
                 cert_file: str | os.PathLike | None = None, key_file: str | os.PathLike | None = None,
                 basic_auth: tuple[str, str] | None = None, headers: dict[str, str] | None = None):
        """``url``: ``host:port[/base]``, ``http://...`` or ``https://...`` (TLS, the certificate verified
        against ``ca_file``, else the system's CAs, and its host name checked). ``cert_file``/``key_file``:
        a client certificate for a gateway that asks for one. ``basic_auth``: (user, password), sent as
        ``Authorization: Basic`` on every request (over TLS, or to loopback only). ``headers``: sent on
        every request (a gateway's API key)."""
        try:
            import tritonclient.http as http
        except (ImportError, RuntimeError):  # tritonclient without its http extra raises RuntimeError
            raise BackendError("tritonclient is not installed; expected `pip install 'tritonclient[http]'`") from None
        self._http = http
        self.scheme, self.host, self.port, self.url = _parse_url(url)
        self.model, self._timeout = model, timeout
        self._admin_token = admin_token
        if admin_token is not None:
            _clear_token(self.scheme, self.host, "admin_token")
        self._headers = _headers(headers, basic_auth, self.scheme, self.host)
        self._tls = _tls_options(self.scheme, ca_file, cert_file, key_file)
        # tritonclient.http's client runs on gevent and is not thread-safe (shared between threads it
        # fails with greenlet's "Cannot switch to a different thread"): one per thread that calls us
        self._local, self._lock, self._clients = threading.local(), threading.Lock(), []
        try:
            config = self.client.get_model_config(model, headers=self._headers)
        except Exception as exc:
            status = _status(exc)
            raise BackendError(f"no vitrt model {model!r} at {self.scheme}://{self.url} ("
                               + (f"HTTP {status}: " if status else "") + f"{_message(exc)}); expected `vitrt serve` "
                               "running there" + _hint(exc, status)) from None
        self.max_batch = int(config.get("max_batch_size") or 1)
        self.labels = _labels(config)

    @property
    def client(self):
        """This thread's tritonclient.http client."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._http.InferenceServerClient(self.url, connection_timeout=self._timeout,
                                                      network_timeout=self._timeout, **self._tls)
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

        token = client_token(self._admin_token, self.host, self.port)
        if token is None:
            raise BackendError("statistics are an admin API of vitrt serve and no admin token was found; expected "
                               "admin_token=..., $VITRT_ADMIN_TOKEN, or the file vitrt serve named at start (read for a "
                               "server on loopback only)")
        _clear_token(self.scheme, self.host, "$VITRT_ADMIN_TOKEN" if self._admin_token is None else "admin_token")
        try:
            return self.client.get_inference_statistics(self.model, headers={**self._headers, ADMIN_HEADER: token})
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
            result = self.client.infer(self.model, [inp], outputs=outs, headers=self._headers)
        except Exception as exc:
            status = _status(exc)
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


def _parse_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, tritonclient's ``host:port[/base]``) of a Client's ``url``."""
    from urllib.parse import urlsplit

    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InputError(f"url {url!r}: {exc}; expected host:port, http://host:port or https://host:port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise InputError(f"url {url!r}; expected host:port[/path], http://host:port or https://host:port")
    if parts.username or parts.password:
        raise InputError(f"url {parts.scheme}://{parts.hostname}... carries credentials; expected basic_auth=(user, "
                         "password) instead (a URL's credentials end up in logs)")
    port = port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    return parts.scheme, host, port, f"{shown}:{port}{parts.path.rstrip('/')}"


def _clear_token(scheme: str, host: str, where: str) -> None:
    """Refuse (InputError) to send the admin token in the clear off this machine, as basic_auth is."""
    from .security import is_loopback

    if scheme != "https" and not is_loopback(host):
        raise InputError(f"the admin token ({where}) over http:// to {host} would be sent in the clear; expected an "
                         "https:// url (a gateway with TLS in front of vitrt serve), or a server on loopback")


def _headers(headers: dict | None, basic_auth: tuple[str, str] | None, scheme: str, host: str) -> dict[str, str]:
    from .security import ADMIN_HEADER, is_loopback

    out = {}
    for k, v in (headers or {}).items():
        if not isinstance(k, str) or not isinstance(v, str) or not k or any(c in k + v for c in "\r\n\0"):
            raise InputError(f"header {k!r}; expected a dict of str names and values without line breaks")
        if k.lower() == ADMIN_HEADER:
            raise InputError(f"header {k!r} is the admin token's; expected admin_token=... (sent on admin calls only)")
        out[k] = v
    if basic_auth is not None:
        import base64

        if not (isinstance(basic_auth, (tuple, list)) and len(basic_auth) == 2 and all(isinstance(x, str) for x in basic_auth)):
            raise InputError("basic_auth; expected a (user, password) pair of str")
        if scheme != "https" and not is_loopback(host):
            raise InputError(f"basic_auth over http:// to {host} would send the password in the clear; expected "
                             "an https:// url")
        out["Authorization"] = "Basic " + base64.b64encode(":".join(basic_auth).encode()).decode()
    return out


def _tls_options(scheme: str, ca_file, cert_file, key_file) -> dict:
    """tritonclient.http's TLS arguments: a context with the system's or ``ca_file``'s CAs, the host name
    checked, and the client certificate where given."""
    given = {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file}
    if scheme != "https":
        named = [k for k, v in given.items() if v is not None]
        if named:
            raise InputError(f"{', '.join(named)} given for an http:// url; expected an https:// url")
        return {}
    if key_file is not None and cert_file is None:
        raise InputError("key_file without cert_file; expected cert_file (and key_file where the key is apart)")
    for name, value in given.items():
        if value is not None and not Path(value).is_file():
            raise InputError(f"{name}={os.fspath(value)!r} is not a file; expected a PEM file")

    def context(*_, **__):  # tritonclient's transport is gevent's: its SSLContext
        import gevent.ssl

        try:
            ctx = gevent.ssl.create_default_context(cafile=os.fspath(ca_file) if ca_file else None)
            if cert_file is not None:
                ctx.load_cert_chain(os.fspath(cert_file), os.fspath(key_file) if key_file else None)
        except (OSError, ValueError) as exc:
            raise InputError(f"TLS files ({', '.join(f'{k}={os.fspath(v)!r}' for k, v in given.items() if v)}) "
                             f"cannot be used ({exc}); expected PEM certificates and a matching key") from None
        return ctx

    context()  # the files are read now, so a bad one fails here rather than at the first request
    return {"ssl": True, "ssl_context_factory": context, "insecure": False}


def _status(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    return str((status() if callable(status) else status) or "")


def _hint(exc: Exception, status: str) -> str:
    if status in ("401", "403"):
        return "; the server or a gateway in front refused the credentials: pass basic_auth= or headers= as it expects"
    text = _message(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return "; the server's certificate was not verified: pass ca_file= the CA that signed it"
    if "alert" in text.lower() and "certificate" in text.lower():
        return "; the server asked for a client certificate: pass cert_file= and key_file="
    return ""


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
