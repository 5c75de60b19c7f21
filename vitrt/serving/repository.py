"""The Triton model repository ``vitrt serve`` runs and ``make triton`` writes: one Python-backend model
that wraps :class:`vitrt.Engine`, so any artifact (ONNX or plan) serves the same wire contract.

    <repo>/<NAME>/config.pbtxt     backend "python"; input image BYTES [1]; outputs logits [classes]
                                   (label_filename: classification extension) and embedding [width];
                                   dynamic batching up to the artifact's max batch with a bounded queue
    <repo>/<NAME>/labels.txt       one class name a line (Triton's classification extension)
    <repo>/<NAME>/1/model.py       vitrt/serving/triton_model.py
    <repo>/<NAME>/1/<artifact>     with copy=True (make triton): the artifact and what travels with it;
                                   with link=True (vitrt serve): a symbolic link to the artifact, which
                                   the model resolves on the server side

The config names the artifact by file name and sha256 only: ``GET /v2/models/<NAME>/config`` is open
to every client (vitrt.Client reads the max batch and the class count there), so it must hold no path
of the server's filesystem.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..artifacts import parity_path, set_name, sidecar_path
from ..atomic import write_bytes
from ..errors import ArtifactError
from ..metadata import Metadata, sha256_file

#: Defaults, measured in benchmarks/serve.py (docs/benchmarks.md, "Serving"): a short queue delay lets
#: concurrent requests meet in one execution without adding much to a lone request's latency; the
#: queue bound turns overload into 503s instead of an unbounded wait.
QUEUE_DELAY_US = 2000
MAX_QUEUE_SIZE = 64
QUEUE_TIMEOUT_MS = 30_000
#: The largest encoded image the model accepts, refused before it is decoded (HTTP 400). Measured
#: (python -m benchmarks.image_bytes; docs/benchmarks.md, "Image bytes"): photos with camera grain at
#: vitrt's pixel limit (89 MP) are 17.6-18.6 MB as JPEG quality 95; as PNG, 36 MB at 24 MP and 72 MB at
#: 48 MP. 64 MiB admits every JPEG and WebP vitrt would decode and PNGs to about 40 MP, and equals
#: Triton's own HTTP request limit (--http-max-input-size, where the release has it). It runs in the
#: model, after Triton has read the request and copied it into shared memory: over gRPC (no cap in any
#: Triton: security.TRITON_GRPC_MAX_MESSAGE_BYTES) and over 2.51's HTTP only a gateway caps a request
#: (docs/serving.md, "What caps what").
MAX_IMAGE_BYTES = 64 * 2**20


def _param(key: str, value) -> str:
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")  # a protobuf text string
    return f'  {{ key: "{key}" value: {{ string_value: "{text}" }} }}'


def config_pbtxt(meta: Metadata, model_name: str, artifact: str, sha256: str, *, queue_delay_us: int = QUEUE_DELAY_US,
                 max_queue_size: int = MAX_QUEUE_SIZE, queue_timeout_ms: int = QUEUE_TIMEOUT_MS, instances: int = 1,
                 decode_threads: int = 0, max_pixels: int | None = None, max_image_bytes: int = MAX_IMAGE_BYTES) -> str:
    d = meta.data
    outputs = []
    for name, spec in d["outputs"].items():
        dims = ", ".join(str(int(x)) for x in spec["shape"][1:])
        label = '\n    label_filename: "labels.txt"' if name == "logits" else ""
        outputs.append(f'  {{\n    name: "{name}"\n    data_type: TYPE_FP32\n    dims: [ {dims} ]{label}\n  }}')
    # the names clients show (vitrt.Client reads them here): a label set's name, or the list as JSON
    labels = json.dumps(d["class_names"]) if d.get("class_names") else (d.get("labels") or "")
    params = [_param("artifact", artifact), _param("precision", d["precision"]), _param("sha256", sha256),
              _param("labels", labels),
              _param("decode_threads", decode_threads), _param("max_image_bytes", int(max_image_bytes))]
    if max_pixels is not None:
        params.append(_param("max_pixels", max_pixels))
    outputs_text, params_text = ",\n".join(outputs), ",\n".join(params)
    timeout = (f"\n    timeout_action: REJECT\n    default_timeout_microseconds: {int(queue_timeout_ms) * 1000}"
               "\n    allow_timeout_override: true" if queue_timeout_ms else "")
    return f'''name: "{model_name}"
backend: "python"
max_batch_size: {int(meta.max_batch)}
input [
  {{
    name: "image"
    data_type: TYPE_STRING
    dims: [ 1 ]
  }}
]
output [
{outputs_text}
]
dynamic_batching {{
  max_queue_delay_microseconds: {int(queue_delay_us)}
  default_queue_policy {{
    max_queue_size: {int(max_queue_size)}{timeout}
  }}
}}
instance_group [
  {{
    count: {int(instances)}
    kind: KIND_CPU
  }}
]
parameters [
{params_text}
]
'''


def write_repository(artifact: str | os.PathLike, repo: str | os.PathLike, model_name: str | None = None, *,
                     copy: bool = False, link: bool = False, **config) -> Path:
    """Write the model repository for ``artifact`` (a .onnx or .plan); returns the model's folder.
    ``copy`` puts the artifact (and its sidecar, report and reference file) inside the repository, for
    a Triton container; ``link`` a symbolic link to it (its companions stay beside the original, where
    the model finds them after resolving the link). One of the two: the config names the file only."""
    if copy == link:
        raise ValueError("write_repository needs exactly one of copy=True (make triton) and link=True (vitrt serve)")
    from ..artifacts import metadata_of, reference_for

    artifact = Path(artifact).resolve()
    if not artifact.is_file():
        raise ArtifactError(f"artifact {artifact} does not exist; expected a .onnx or .plan built by `make engine`")
    meta = metadata_of(artifact)
    name = model_name or set_name(artifact)
    folder = Path(repo) / name
    version = folder / "1"
    version.mkdir(parents=True, exist_ok=True)
    sha = (meta.data.get("plan") or {}).get("sha256") or sha256_file(artifact)
    if link:
        dst = version / artifact.name
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        dst.symlink_to(artifact)
    else:
        companions = [artifact, parity_path(artifact)]
        if artifact.suffix == ".plan":
            companions.append(sidecar_path(artifact))
        try:
            companions.append(reference_for(artifact, meta.data))
        except ArtifactError:
            pass
        for src in companions:
            if src.is_file():
                dst = version / src.name
                if dst.exists():
                    dst.unlink()
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
    write_bytes(folder / "config.pbtxt", config_pbtxt(meta, name, artifact.name, sha, **config).encode())
    bad = [n for n in meta.labels if "\n" in n or "\r" in n]
    if bad:
        raise ArtifactError(f"class name {bad[0]!r} holds a line break; expected one-line names (labels.txt has "
                            "one name a line)")
    write_bytes(folder / "labels.txt", ("\n".join(meta.labels) + "\n").encode())
    write_bytes(version / "model.py", (Path(__file__).parent / "triton_model.py").read_bytes())
    return folder
