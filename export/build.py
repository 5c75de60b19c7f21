"""The build pipeline behind ``make engine``: weights -> fp32 ONNX (reused when up to date) -> ..."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from vitrt.errors import VitrtError
from vitrt.metadata import Metadata

from . import DEFAULT_MODEL


@dataclasses.dataclass
class BuildOptions:
    model: str = DEFAULT_MODEL
    weights: str = "hub"
    seed: int = 0
    model_kwargs: dict | None = None
    output_dir: Path = Path("artifacts")
    name: str = "b16_384"
    input_format: str = "uint8"
    tokens: bool = False
    opset: int = 18
    max_batch: int = 32
    force: bool = False
    verify: bool = True

    @classmethod
    def from_args(cls, args) -> "BuildOptions":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in fields})

    @property
    def fp32_path(self) -> Path:
        return Path(self.output_dir) / f"{self.name}.onnx"


def recipe(meta: dict) -> dict[str, Any]:
    """What decides an fp32 artifact's content: equal recipes mean the artifact can be reused."""
    w = meta["weights"]
    return {
        "format": meta["format"], "model": meta["model"]["name"], "kwargs": meta["model"].get("kwargs") or {},
        "weights": (w.get("source"), w.get("sha256"), w.get("seed")),
        "input": (meta["input"]["dtype"], meta["input"]["layout"]), "outputs": sorted(meta["outputs"]),
        "opset": meta["onnx"]["opset"], "max_batch": meta["batch"]["max"],
    }


def _current(path: Path, wanted: dict) -> bool:
    if not path.is_file():
        return False
    try:
        meta = Metadata.from_onnx(path).data
        return meta.get("precision") == "fp32" and recipe(meta) == recipe(wanted)
    except (VitrtError, KeyError, TypeError):
        return False


def build(opts: BuildOptions, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Build what ``opts`` asks for; returns the artifact paths by precision."""
    import timm.data

    from .onnx_export import build_metadata, export_onnx
    from .weights import load_model

    model, provenance = load_model(opts.model, opts.weights, seed=opts.seed, model_kwargs=opts.model_kwargs)
    if provenance["source"] == "random":
        log(f"WARNING: building with random weights (seed {opts.seed}); the artifact's predictions are meaningless")
    data_config = timm.data.resolve_model_data_config(model)
    wanted = build_metadata(model, data_config, provenance, model_name=opts.model, model_kwargs=opts.model_kwargs,
                            input_format=opts.input_format, tokens=opts.tokens, opset=opts.opset,
                            max_batch=opts.max_batch)
    fp32 = opts.fp32_path
    if not opts.force and _current(fp32, wanted):
        log(f"{fp32} is up to date (same model, weights and graph options); reusing it")
    else:
        export_onnx(model, fp32, model_name=opts.model, provenance=provenance, model_kwargs=opts.model_kwargs,
                    input_format=opts.input_format, tokens=opts.tokens, opset=opts.opset,
                    max_batch=opts.max_batch, verify=opts.verify, log=log)
        log(f"wrote {fp32}")
    return {"fp32": fp32}
