"""The model Triton's Python backend runs (copied as ``<repo>/<NAME>/1/model.py``): vitrt.Engine
behind the wire contract of docs/serving.md.

Per execution (a dynamic batch of requests): every image of every request is decoded and preprocessed
in a thread pool (Pillow releases the GIL), exactly as ``Engine.predict`` does; the good ones run as
one batch; a request with a bad image (corrupt, truncated, not an image, too large, empty) gets its
own error response (HTTP 400 / gRPC INVALID_ARGUMENT, with the VitrtError text) and the others their
results. A payload that is base64 text of an image (curl with JSON) is decoded first. A payload larger
than the config's ``max_image_bytes`` is refused before any decoding (base64 included).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

_BASE64 = re.compile(rb"^[A-Za-z0-9+/\s]+={0,2}\s*$")


def payload_bytes(value, max_bytes: int | None = None) -> bytes:
    """The encoded image in one BYTES element: raw file bytes, or base64 text of them (a data: URL too).
    Over ``max_bytes`` (after base64 decoding; its text is 4/3 as long) it is refused before decoding."""
    data = bytes(value)
    if max_bytes is not None and len(data) > max_bytes:
        # base64 text of an image within the cap: 4/3 as long, plus line breaks (3 %) and a data: prefix
        text = len(data) <= max_bytes * 4 // 3 * 103 // 100 + 100 and (data.startswith(b"data:") or _BASE64.match(data[:4096]))
        if not text:
            raise _too_large(len(data), max_bytes)
    if data.startswith(b"data:") and b";base64," in data[:100]:
        data = data.split(b",", 1)[1]
    elif not _BASE64.match(data[:4096]) or len(data) < 8:
        return data
    try:
        data = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        return data
    if max_bytes is not None and len(data) > max_bytes:
        raise _too_large(len(data), max_bytes)
    return data


def _too_large(n: int, cap: int):
    from vitrt.errors import ImageError

    return ImageError(f"image payload of {n} bytes is larger than this server's cap of {cap} bytes "
                      "(vitrt serve --max-image-bytes); refused before decoding; expected an encoded image within the cap")


class TritonPythonModel:
    def initialize(self, args):
        import vitrt

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in (config.get("parameters") or {}).items()}
        artifact = Path(params["artifact"])
        if not artifact.is_absolute():
            artifact = Path(args["model_repository"]) / args["model_version"] / artifact
        artifact = artifact.resolve()  # vitrt serve links the artifact in: its companions are beside the original
        self.max_bytes = int(params.get("max_image_bytes") or 0) or None
        kwargs = {"max_pixels": int(params["max_pixels"])} if params.get("max_pixels") else {}
        self.engine = vitrt.Engine(artifact, **kwargs)
        self.errors = (vitrt.VitrtError,)
        # Warm-up before Triton reports ready: the first batches of 1 and 2 would otherwise pay the
        # backend's per-shape setup (OpenVINO compiles those two for their static shape: about a
        # second each for the full ViT; vitrt/backends/openvino.py).
        meta = self.engine.metadata
        for n in range(1, min(2, meta.max_batch) + 1):
            self.engine.infer(np.zeros((n, *meta.item_shape), dtype=meta.input_dtype))
        threads = int(params.get("decode_threads") or 0) or min(32, (os.cpu_count() or 1) + 2)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="vitrt-decode")
        self.outputs = [o["name"] for o in config["output"]]

    def _crop(self, value):
        try:
            return self.engine.preprocess(payload_bytes(value, self.max_bytes))
        except self.errors as exc:
            return exc

    def execute(self, requests):
        items = []  # per request: the futures of its images
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "image").as_numpy().reshape(-1)
            items.append([self.pool.submit(self._crop, v) for v in values])
        crops, spans, errors = [], [], {}
        for i, futures in enumerate(items):
            got = [f.result() for f in futures]
            bad = next((g for g in got if isinstance(g, BaseException)), None)
            if bad is not None:
                errors[i] = str(bad)
                spans.append(None)
                continue
            spans.append((len(crops), len(crops) + len(got)))
            crops.extend(got)
        out = self.engine.infer(np.stack(crops)) if crops else {}
        responses = []
        for i, span in enumerate(spans):
            if span is None:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(errors[i], pb_utils.TritonError.INVALID_ARG)))
                continue
            a, b = span
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor(name, np.ascontiguousarray(out[name][a:b], dtype=np.float32)) for name in self.outputs]))
        return responses

    def finalize(self):
        self.pool.shutdown(wait=True)
        self.engine.close()
