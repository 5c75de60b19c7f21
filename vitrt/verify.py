"""Parity that travels with the artifacts: reference outputs, the gate, and ``vitrt verify``.

The build writes ``<name>.reference.npz`` beside the artifacts: the uint8 inputs of the parity set
(the photos as vitrt preprocesses them, which is pixel-equal to timm's transform, and the synthetic
batch) with PyTorch FP32's outputs on them. Each artifact's metadata records the gate it passed
(``gate``: subset -> output -> metric -> limit). :func:`verify` runs any artifact on those inputs,
on the machine where it will serve, and applies that gate: the same check as at build time, with
numpy only (no torch, no timm).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtifactError
from .metrics import compare

#: Batch sizes the synthetic images are split into: 1 + 3 + 8 = 12 images; also exercises the
#: dynamic batch axis.
BATCH_SIZES = (1, 3, 8)
REFERENCE_FORMAT = 1
SUBSETS = ("photos", "synthetic")
#: Metrics that are upper bounds; every other metric is a lower bound.
UPPER_BOUNDS = ("max_abs", "rel", "mean_abs", "logit_err")
#: Entries of a gate that are parameters of its metrics, not limits: ``decisive_margin`` (under
#: ``<subset>.logits``) makes top-k agreement count only decisive samples (vitrt.metrics).
PARAMETERS = ("decisive_margin",)
#: Agreement over no decisive sample: nothing to measure, so the limit holds (and the report says so).
AGREEMENT = ("top1_agree", "top5_agree")


# --- the reference file ---------------------------------------------------------------------------
def save_reference(path: str | os.PathLike, inputs: dict[str, np.ndarray], outputs: dict[str, dict[str, np.ndarray]],
                   info: dict[str, Any]) -> None:
    """Write the reference npz atomically: ``<subset>.input`` (uint8) and ``<subset>.<output>`` arrays."""
    from .atomic import atomic_path

    arrays = {f"{s}.input": np.ascontiguousarray(inputs[s], dtype=np.uint8) for s in inputs}
    for s, outs in outputs.items():
        arrays.update({f"{s}.{name}": np.asarray(v, dtype=np.float32) for name, v in outs.items()})
    arrays["info"] = np.frombuffer(json.dumps({**info, "format": REFERENCE_FORMAT}, sort_keys=True).encode(), np.uint8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def load_reference(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]], dict]:
    """(inputs, outputs, info) from a reference npz; ArtifactError when it is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"reference outputs {os.fspath(path)!r} are missing; expected the "
                            "<name>.reference.npz that `make engine` writes beside the artifacts")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ArtifactError(f"{os.fspath(path)!r} is not a readable reference npz ({exc}); rebuild it with "
                            "`make engine`") from None
    try:
        info = json.loads(arrays.pop("info").tobytes().decode("utf-8"))
        assert isinstance(info, dict) and info.get("format") == REFERENCE_FORMAT
        inputs = {s: arrays[f"{s}.input"] for s in SUBSETS if f"{s}.input" in arrays}
        outputs = {s: {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(s + ".") and not k.endswith(".input")}
                   for s in inputs}
        assert inputs and all(x.dtype == np.uint8 and x.ndim == 4 for x in inputs.values())
        assert all("logits" in o and "embedding" in o for o in outputs.values())
    except (KeyError, AssertionError, ValueError, UnicodeDecodeError):
        raise ArtifactError(f"{os.fspath(path)!r} is not a vitrt reference file (format {REFERENCE_FORMAT}: "
                            "<subset>.input uint8 arrays, logits and embedding outputs, info); rebuild it with "
                            "`make engine`") from None
    return inputs, outputs, info


# --- running a candidate --------------------------------------------------------------------------
def candidate_outputs(engine, inputs: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """``engine``'s outputs on the reference inputs: photos as one batch, synthetic in BATCH_SIZES."""
    from .preprocess import normalize_nchw

    meta = engine.metadata
    prep = (lambda b: normalize_nchw(b, meta.data_config)) if meta.input_layout == "NCHW" else (lambda b: b)
    out: dict[str, dict[str, np.ndarray]] = {}
    for subset, batch in inputs.items():
        sizes = BATCH_SIZES if subset == "synthetic" and len(batch) == sum(BATCH_SIZES) else (len(batch),)
        parts, start = [], 0
        for n in sizes:
            parts.append(engine.infer(prep(batch[start:start + n])))
            start += n
        out[subset] = {k: np.concatenate([p[k] for p in parts]) for k in ("logits", "embedding")}
    return out


# --- the gate -------------------------------------------------------------------------------------
def check_thresholds(metrics: dict, thresholds: dict[str, dict[str, dict[str, float]]]) -> dict:
    """Every threshold with its value and whether it held.

    ``thresholds`` maps subset ("photos", "synthetic", or "*" for the worst over all subsets) ->
    output -> metric -> limit. Limits on ``max_abs``/``rel``/``mean_abs`` are upper bounds, all
    others lower bounds. A limit whose metric was not measured fails (it cannot be said to hold)."""
    checks = {}
    for subset, outputs in thresholds.items():
        subsets = list(metrics) if subset == "*" else [subset]
        for output, limits in outputs.items():
            for metric, limit in limits.items():
                if metric in PARAMETERS:
                    continue
                upper = metric in UPPER_BOUNDS
                values = [metrics[s][output][metric] for s in subsets
                          if s in metrics and output in metrics[s] and metric in metrics[s][output]]
                key = f"{output}.{metric}" if subset == "*" else f"{subset}.{output}.{metric}"
                if metric in AGREEMENT and values and all(v is None for v in values):
                    checks[key] = {"value": None, "limit": limit, "bound": "min", "held": True,
                                   "note": "no decisive image (every reference top-k lead is within the margin)"}
                    continue
                values = [v for v in values if v is not None]
                if not values:
                    checks[key] = {"value": None, "limit": limit, "bound": "max" if upper else "min", "held": False}
                    continue
                value = max(values) if upper else min(values)
                held = value <= limit if upper else value >= limit
                checks[key] = {"value": value, "limit": limit, "bound": "max" if upper else "min", "held": bool(held)}
    return checks


def margin_of(thresholds: dict, subset: str) -> float | None:
    """The gate's ``decisive_margin`` for ``subset`` (or for every subset, under "*")."""
    for key in (subset, "*"):
        value = thresholds.get(key, {}).get("logits", {}).get("decisive_margin")
        if value is not None:
            return float(value)
    return None


def parity_report(reference: dict, candidate: dict, thresholds: dict, **info: Any) -> dict:
    metrics = {subset: compare(reference[subset], candidate[subset], margin_of(thresholds, subset))
               for subset in reference}
    checks = check_thresholds(metrics, thresholds)
    return {**info, "metrics": metrics, "thresholds": checks, "passed": all(c["held"] for c in checks.values())}


def format_report(report: dict) -> str:
    """A few lines for the terminal: per subset, the headline numbers, then each threshold."""
    nan = float("nan")
    lines = [f"parity of {report.get('artifact', '?')} ({report.get('precision', '?')}) vs PyTorch FP32"
             + (f" on {report['backend']}" if report.get("backend") else "") + ":"]
    for subset, m in report["metrics"].items():
        lg, em = m.get("logits", {}), m.get("embedding", {})
        agree = " ".join(f"top{k} " + ("n/a" if lg.get(f"top{k}_agree") is None else f"{lg[f'top{k}_agree']:.3f}")
                         + (f" of {lg[f'top{k}_decisive']} decisive" if f"top{k}_decisive" in lg else "") for k in (1, 5))
        lines.append(f"  {subset:<9} n={len(lg.get('cosine', []))}: logits cos min {lg.get('cosine_min', nan):.7f} "
                     f"max|d| {lg.get('max_abs', nan):.3g}  embedding cos min {em.get('cosine_min', nan):.7f} "
                     f"max|d| {em.get('max_abs', nan):.3g}  {agree}")
    for name, c in report["thresholds"].items():
        op = "<=" if c["bound"] == "max" else ">="
        value = (c.get("note") or "not measured") if c["value"] is None else f"{c['value']:.7g}"
        lines.append(f"  {'ok  ' if c['held'] else 'FAIL'} {name} = {value} {op} {c['limit']}")
    return "\n".join(lines)


# --- vitrt verify ---------------------------------------------------------------------------------
def verify(engine, reference: str | os.PathLike | None = None, gate: dict | None = None) -> dict:
    """Run ``engine`` on its reference inputs and apply its gate; returns the parity report.

    ``reference`` defaults to the file the artifact's metadata names, beside the artifact; ``gate``
    to the one the artifact passed at build time (its metadata's ``gate``)."""
    from .artifacts import reference_for

    meta = engine.metadata
    path = Path(reference) if reference is not None else reference_for(engine.path, meta.data)
    inputs, outputs, info = load_reference(path)
    weights = meta.data.get("weights") or {}
    ref_weights = info.get("weights") or {}
    for key in ("source", "sha256", "seed"):
        if ref_weights.get(key) != weights.get(key):
            raise ArtifactError(f"{os.fspath(path)!r} holds reference outputs for other weights ({key} "
                                f"{ref_weights.get(key)!r}; {engine.path.name} has {weights.get(key)!r}); expected "
                                "the reference file built with this artifact")
    gate = gate if gate is not None else meta.data.get("gate")
    if not isinstance(gate, dict) or not gate:
        raise ArtifactError(f"{engine.path.name} records no parity gate in its metadata; expected a 'gate' "
                            "(built by vitrt >= 0.2). Pass gate=... or rebuild with `make engine`")
    want = meta.image_size
    for subset, x in inputs.items():
        if tuple(x.shape[1:3]) != want:
            raise ArtifactError(f"{os.fspath(path)!r}: {subset} inputs are {x.shape[1]}x{x.shape[2]}; "
                                f"{engine.path.name} takes {want[0]}x{want[1]}")
    candidate = candidate_outputs(engine, inputs)
    return parity_report(outputs, candidate, gate, artifact=engine.path.name, precision=meta.precision,
                         backend=engine.backend.name, reference_file=path.name,
                         images={s: int(len(x)) for s, x in inputs.items()})
