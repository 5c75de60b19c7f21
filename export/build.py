"""The build pipeline behind ``make engine``: weights -> fp32 ONNX -> precision variants.

Builds only what was asked, reuses artifacts that are up to date (same model, weights, options and
calibration set), and publishes each artifact only after it passed its parity gate.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from vitrt.errors import BuildError, VitrtError
from vitrt.metadata import Metadata, sha256_file

from . import DEFAULT_MODEL
from .precision import FP16_RANGE_IMAGES

PRECISION_CHOICES = ("fp32", "fp16", "int8", "fp8", "all")


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
    precision: str = "fp16"
    calib_dir: str | None = None
    calib_method: str = "max"
    calib_max: int = 512
    fp16_keep_fp32: list[str] = dataclasses.field(default_factory=list)
    fp16_range_images: int = FP16_RANGE_IMAGES
    calibration_eps: list[str] = dataclasses.field(default_factory=lambda: ["cpu"])
    quantize_op_types: list[str] | None = None
    quantize_attention: bool = False
    allow_parity_failure: bool = False
    gate: list[str] = dataclasses.field(default_factory=list)  # PRECISION.SUBSET.OUTPUT.METRIC=VALUE
    plan: str = "auto"  # auto: build TensorRT plans where a GPU and TensorRT are present; yes; no
    min_batch: int = 1
    opt_batch: int = 8
    max_batch_plan: int = 32
    workspace_gib: float = 4.0
    opt_level: int = 3
    timing_cache: Path | None = None  # default: <output_dir>/timing.cache
    device: int = 0
    force: bool = False
    verify: bool = True

    @classmethod
    def from_args(cls, args) -> "BuildOptions":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in fields})

    @property
    def fp32_path(self) -> Path:
        return Path(self.output_dir) / f"{self.name}.onnx"

    def variant_path(self, precision: str) -> Path:
        return self.fp32_path if precision == "fp32" else Path(self.output_dir) / f"{self.name}_{precision}.onnx"

    @property
    def precisions(self) -> list[str]:
        """The variants asked for, besides the fp32 graph every build starts from."""
        asked = [p.strip() for p in str(self.precision).split(",") if p.strip()]
        bad = [p for p in asked if p not in PRECISION_CHOICES]
        if bad or not asked:
            raise BuildError(f"PRECISION={self.precision!r}; expected one of {', '.join(PRECISION_CHOICES)} "
                             "or a comma-separated list")
        if "all" in asked:
            return ["fp16", "int8", "fp8"]
        return [p for p in ("fp16", "int8", "fp8") if p in asked]


def recipe(meta: dict) -> dict[str, Any]:
    """What decides the fp32 artifact's content: equal recipes mean it can be reused. (Variants store
    their recipe in their metadata, see _build_variant.)"""
    w = meta["weights"]
    return {
        "format": meta["format"], "model": meta["model"]["name"], "kwargs": meta["model"].get("kwargs") or {},
        "weights": (w.get("source"), w.get("sha256"), w.get("seed")),
        "input": (meta["input"]["dtype"], meta["input"]["layout"]), "outputs": sorted(meta["outputs"]),
        "max_batch": meta["batch"]["max"], "precision": meta["precision"], "opset": meta["onnx"]["opset"],
    }


def _existing(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return Metadata.from_onnx(path).data
    except VitrtError:
        return None


def _current(path: Path, wanted: dict) -> bool:
    meta = _existing(path)
    try:
        return meta is not None and recipe(meta) == recipe(wanted)
    except (KeyError, TypeError):
        return False


class _Context:
    """Model, images and PyTorch reference outputs, computed once per build and only when needed."""

    def __init__(self, opts: BuildOptions, log: Callable[[str], None]):
        import timm.data

        from .graph import ImageModel
        from .onnx_export import build_metadata
        from .weights import load_model

        self.opts, self.log = opts, log
        self.model, self.provenance = load_model(opts.model, opts.weights, seed=opts.seed,
                                                 model_kwargs=opts.model_kwargs)
        if self.provenance["source"] == "random":
            log(f"WARNING: building with random weights (seed {opts.seed}); the artifact's predictions are meaningless")
        self.data_config = timm.data.resolve_model_data_config(self.model)
        self.size = tuple(int(v) for v in self.data_config["input_size"][-2:])
        self.wrapper = ImageModel(self.model, self.data_config, opts.input_format, opts.tokens).eval()
        self.fp32_meta = build_metadata(self.model, self.data_config, self.provenance, model_name=opts.model,
                                        model_kwargs=opts.model_kwargs, input_format=opts.input_format,
                                        tokens=opts.tokens, opset=opts.opset, max_batch=opts.max_batch)
        self._reference: tuple[dict, dict] | None = None

    @property
    def random_weights(self) -> bool:
        return self.provenance["source"] == "random"

    def gate(self, precision: str) -> dict:
        """The parity thresholds for ``precision``: the stated ones, with any --gate overrides."""
        from . import parity

        return parity.apply_overrides(parity.thresholds_for(precision, self.random_weights), precision,
                                      parity.parse_gate_overrides(self.opts.gate))

    def reference(self) -> tuple[dict, dict]:
        if self._reference is None:
            from . import parity

            images = parity.image_set(size=self.size)
            self._reference = (images, parity.reference_outputs(self.wrapper, self.data_config, images))
        return self._reference


def build(opts: BuildOptions, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Build what ``opts`` asks for; returns the artifact paths by precision."""
    from .calibration import load_calibration
    from .onnx_export import export_onnx

    precisions = opts.precisions
    from . import parity

    parity.parse_gate_overrides(opts.gate)  # a typo fails now, not after the export
    quantized = [p for p in precisions if p in ("int8", "fp8")]
    if quantized and not (opts.calib_dir and str(opts.calib_dir).strip()):
        load_calibration(None)  # raises the error that says what to pass, before any heavy work
    ctx = _Context(opts, log)
    fp32 = opts.fp32_path
    if not opts.force and _current(fp32, ctx.fp32_meta):
        log(f"{fp32} is up to date (same model, weights and graph options); reusing it")
    else:
        images, reference = ctx.reference() if opts.verify else (None, None)
        export_onnx(ctx.model, fp32, model_name=opts.model, provenance=ctx.provenance, model_kwargs=opts.model_kwargs,
                    input_format=opts.input_format, tokens=opts.tokens, opset=opts.opset, max_batch=opts.max_batch,
                    verify=opts.verify, images=images, reference=reference, log=log)
        log(f"wrote {fp32}")
    built = {"fp32": fp32}
    calib = calib_prov = None
    if precisions:
        calib_dir = opts.calib_dir if (opts.calib_dir and str(opts.calib_dir).strip()) else "builtin"
        limit = opts.calib_max if quantized else opts.fp16_range_images
        calib, calib_prov = load_calibration(calib_dir, ctx.data_config, limit=limit, log=log,
                                             warn_small=bool(quantized))
    fp32_sha = sha256_file(fp32) if precisions else None  # hashed once: every variant records it
    for precision in precisions:
        built[precision] = _build_variant(ctx, precision, calib, calib_prov, fp32_sha, log)
    if opts.plan != "no":
        built.update(_build_plans(ctx, built, precisions or ["fp32"], log))
    return built


def _build_plans(ctx: _Context, built: dict[str, Path], precisions: list[str], log: Callable[[str], None]) -> dict:
    """TensorRT plans for the precisions asked; a plain message (not an error) without a GPU in auto mode."""
    from . import parity
    from .trt_build import build_plan, have_tensorrt, plan_path_for

    opts = ctx.opts
    reason = have_tensorrt()
    if reason is not None:
        if opts.plan == "yes":
            raise BuildError(f"cannot build TensorRT plans here: {reason}")
        log(f"TensorRT plans need an NVIDIA GPU with TensorRT: {reason}. Built the ONNX artifacts only; "
            "run `make engine` on a GPU machine for the .plan files.")
        return {}
    import tensorrt as trt

    from vitrt import cuda

    cc = cuda.device_properties(opts.device)["compute_capability"]
    plans = {}
    for precision in precisions:
        onnx_path = built[precision]
        plan = plan_path_for(onnx_path, precision)
        sidecar = plan.with_name(plan.name + ".json")
        profile = {"min": opts.min_batch, "opt": opts.opt_batch, "max": opts.max_batch_plan, "dynamic": True}
        if not opts.force and plan.is_file() and sidecar.is_file():
            try:
                info = Metadata.from_json_file(sidecar).data
                p = info.get("plan", {})
                if (p.get("source_onnx", {}).get("sha256") == sha256_file(onnx_path) and p.get("tensorrt") == trt.__version__
                        and p.get("compute_capability") == cc and info.get("batch") == profile
                        and p.get("sha256") == sha256_file(plan)):
                    log(f"{plan} is up to date (same ONNX, TensorRT, GPU and batch profile); reusing it")
                    plans[f"plan_{precision}"] = plan
                    continue
            except VitrtError:
                pass
        images, reference = ctx.reference()

        def verify(tmp_plan: Path, precision=precision, plan=plan) -> None:
            candidate = parity.candidate_outputs(tmp_plan, images)
            report = parity.parity_report(reference, candidate, ctx.gate(precision),
                                          artifact=plan.name, precision=precision, backend="tensorrt",
                                          random_weights=ctx.random_weights)
            log(parity.format_report(report))
            from .atomic import write_json

            if not report["passed"] and not opts.allow_parity_failure:
                write_json(plan.with_name(plan.name + ".parity-failed.json"), report)
                raise BuildError(f"the TensorRT plan {plan.name} failed the parity gate; not published")
            write_json(plan.with_name(plan.name + ".parity.json"), report)

        build_plan(onnx_path, plan, device=opts.device, min_batch=opts.min_batch, opt_batch=opts.opt_batch,
                   max_batch=opts.max_batch_plan, workspace_gib=opts.workspace_gib, opt_level=opts.opt_level,
                   timing_cache=opts.timing_cache or Path(opts.output_dir) / "timing.cache", verify=verify, log=log)
        plans[f"plan_{precision}"] = plan
    return plans


def _build_variant(ctx: _Context, precision: str, calib, calib_prov: dict, fp32_sha: str,
                   log: Callable[[str], None]) -> Path:
    import hashlib

    import onnx

    from vitrt.metadata import FORMAT

    from . import parity
    from .atomic import atomic_path, write_json
    from .precision import make_variant

    opts = ctx.opts
    path = opts.variant_path(precision)
    quantized = precision != "fp16"
    used = calib if quantized else calib[:opts.fp16_range_images]
    wanted = {"format": FORMAT, "precision": precision, "source_sha256": fp32_sha,
              "calibration_sha256": hashlib.sha256(used.tobytes()).hexdigest(),
              "method": opts.calib_method if quantized else None,
              "keep_fp32_ops": None if quantized else sorted(opts.fp16_keep_fp32),
              "calibration_eps": list(opts.calibration_eps) if quantized else None,
              "op_types": opts.quantize_op_types if quantized else None,
              "quantize_attention": opts.quantize_attention if quantized else None}
    existing = _existing(path)
    if not opts.force and existing is not None and existing.get("recipe") == wanted:
        log(f"{path} is up to date (same fp32 source, options and calibration images); reusing it")
        return path
    log(f"making {precision} from {opts.fp32_path.name} ...")
    model, meta = make_variant(precision, opts.fp32_path, Metadata.from_onnx(opts.fp32_path).data, used, calib_prov,
                               method=opts.calib_method, keep_fp32_ops=opts.fp16_keep_fp32,
                               op_types=opts.quantize_op_types, quantize_attention=opts.quantize_attention,
                               eps=opts.calibration_eps, recipe=wanted, log=log)
    images, reference = ctx.reference()
    gate = ctx.gate(precision)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
        del model
        candidate = parity.candidate_outputs(tmp, images)
        report = parity.parity_report(reference, candidate, gate, artifact=path.name, precision=precision,
                                      photos=[p.name for p in images["photos"]], synthetic=len(images["synthetic"]),
                                      batch_sizes=list(parity.BATCH_SIZES), random_weights=ctx.random_weights,
                                      calibration=meta["calibration"],
                                      note=("top-1/top-5 agreement reported, not gated: random weights"
                                            if ctx.random_weights else None))
        log(parity.format_report(report))
        if not report["passed"]:
            if not opts.allow_parity_failure:
                write_json(path.with_name(path.name + ".parity-failed.json"), report)
                raise BuildError(f"the {precision} variant failed the parity gate (see the FAIL lines above; report in "
                                 f"{path.name}.parity-failed.json). Calibrate on more or better images, or pass "
                                 "--allow-parity-failure (ALLOW_PARITY_FAILURE=1) to publish it anyway.")
            report["overridden"] = True
            log(f"WARNING: publishing {path.name} although it failed the parity gate (--allow-parity-failure)")
    write_json(path.with_name(path.name + ".parity.json"), report)
    log(f"wrote {path}")
    return path
