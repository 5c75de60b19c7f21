"""The build pipeline behind ``make engine``: weights -> fp32 ONNX -> precision variants -> plans.

Builds only what was asked and reuses what is up to date: every artifact stores its recipe (the
inputs that made it) and is reused only when the recipe matches and its parity report is beside it
(export/publish.py). Every artifact is published after its parity gate, by one function. The parity
set's inputs and PyTorch FP32 outputs are written beside the artifacts (``NAME.reference.npz``) so
that ``vitrt verify`` can apply the same gate where an artifact serves.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Callable

from vitrt import artifacts
from vitrt.errors import BuildError, VitrtError
from vitrt.metadata import Metadata, sha256_file

from . import defaults as D
from .precision import (CPU_PRECISIONS, CPU_RECIPES, FP16_RANGE_IMAGES, VARIANT_REVISION, calibration_method,
                        check_cpu_recipe)
from .publish import publish, up_to_date

PRECISION_CHOICES = ("fp32", "fp16", "int8", "fp8", "int8-cpu", "all")
VARIANTS = ("fp16", "int8", "fp8", "int8-cpu")  # in build order; "all" is every one


@dataclasses.dataclass
class BuildOptions:
    model: str | None = None  # None: the checkpoint folder's architecture, else defaults.MODEL
    weights: str = "hub"
    seed: int = 0
    model_kwargs: dict | None = None
    class_names: str | None = None  # a file: text, JSON list or object, or a config.json (export/checkpoints.py)
    output_dir: Path = Path(D.OUTPUT_DIR)
    name: str = D.NAME
    input_format: str = "uint8"
    tokens: bool = False
    opset: int = D.OPSET
    max_batch: int = D.MAX_BATCH_ONNX
    precision: str = D.PRECISION
    calib_dir: str | None = None
    calib_method: str = D.CALIB_METHOD
    calib_max: int = D.CALIB_MAX
    fp16_keep_fp32: list[str] = dataclasses.field(default_factory=list)
    fp16_range_images: int = FP16_RANGE_IMAGES
    calibration_eps: list[str] = dataclasses.field(default_factory=lambda: ["cpu"])
    quantize_op_types: list[str] | None = None
    quantize_attention: bool = False
    quant_recipe: str = D.QUANT_RECIPE  # int8/fp8 for TensorRT: export/precision.py RECIPES
    cpu_recipe: str = D.CPU_RECIPE  # int8-cpu: export/precision.py CPU_RECIPES
    allow_parity_failure: bool = False
    gate: list[str] = dataclasses.field(default_factory=list)  # PRECISION.SUBSET.OUTPUT.METRIC=VALUE
    plan: str = "auto"  # auto: build TensorRT plans where a flavour can; yes: fail where none can; no
    trt: str = D.TRT_FLAVOUR  # auto, tensorrt or tensorrt-rtx
    targets: str | None = None  # TensorRT-RTX compute capabilities (default: defaults.RTX_TARGETS)
    min_batch: int = D.MIN_BATCH
    opt_batch: int = D.OPT_BATCH
    max_batch_plan: int = D.MAX_BATCH_PLAN
    workspace_gib: float = D.WORKSPACE_GIB
    opt_level: int = D.OPT_LEVEL
    timing_cache: Path | None = None  # default: <output_dir>/timing.cache (full TensorRT only)
    device: int = 0
    force: bool = False
    verify: bool = True

    @classmethod
    def from_args(cls, args) -> "BuildOptions":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in fields})

    @property
    def fp32_path(self) -> Path:
        return artifacts.onnx_path(self.output_dir, self.name, "fp32")

    def variant_path(self, precision: str) -> Path:
        return artifacts.onnx_path(self.output_dir, self.name, precision)

    @property
    def reference_path(self) -> Path:
        return artifacts.reference_path(self.output_dir, self.name)

    @property
    def precisions(self) -> list[str]:
        """The variants asked for, besides the fp32 graph every build starts from."""
        asked = [p.strip() for p in str(self.precision).split(",") if p.strip()]
        bad = [p for p in asked if p not in PRECISION_CHOICES]
        if bad or not asked:
            raise BuildError(f"PRECISION={self.precision!r}; expected one of {', '.join(PRECISION_CHOICES)} "
                             "or a comma-separated list")
        if "all" in asked:
            return list(VARIANTS)
        return [p for p in VARIANTS if p in asked]


def _onnx_recipe(path: Path) -> dict | None:
    return Metadata.from_onnx(path).data.get("recipe")


def _plan_recipe(plan: Path) -> dict | None:
    """A plan's recipe, from its sidecar, when the sidecar is the plan's (same sha256)."""
    info = Metadata.from_json_file(artifacts.sidecar_path(plan)).data
    return info["recipe"] if info["plan"]["sha256"] == sha256_file(plan) else None


class _Context:
    """Model, images and PyTorch reference outputs, computed once per build and only when needed."""

    def __init__(self, opts: BuildOptions, log: Callable[[str], None]):
        import timm.data

        from .graph import ImageModel
        from .onnx_export import build_metadata, recipe
        from .weights import load

        self.opts, self.log = opts, log
        loaded = load(opts.model, opts.weights, seed=opts.seed, model_kwargs=opts.model_kwargs, default_model=D.MODEL)
        self.model, self.provenance = loaded.model, loaded.provenance
        self.model_name, self.model_kwargs = loaded.model_name, loaded.model_kwargs
        if self.provenance["source"] == "random":
            log(f"WARNING: building with random weights (seed {opts.seed}); the artifact's predictions are meaningless")
        elif self.model_kwargs != (opts.model_kwargs or {}):
            log(f"{self.model_name} with {self.model_kwargs} (from the checkpoint)")
        self.class_names = self._class_names(loaded.class_names)
        self.data_config = timm.data.resolve_model_data_config(self.model)
        self.size = tuple(int(v) for v in self.data_config["input_size"][-2:])
        self.wrapper = ImageModel(self.model, self.data_config, opts.input_format, opts.tokens).eval()
        self.fp32_meta = build_metadata(self.model, self.data_config, self.provenance, model_name=self.model_name,
                                        model_kwargs=self.model_kwargs, input_format=opts.input_format,
                                        tokens=opts.tokens, opset=opts.opset, max_batch=opts.max_batch,
                                        class_names=self.class_names)
        self.fp32_recipe = recipe(self.fp32_meta)
        self._reference: tuple[dict, dict] | None = None

    def _class_names(self, from_checkpoint: list[str] | None) -> list[str] | None:
        """CLASS_NAMES= over the checkpoint's own names; one per class of the model's head."""
        from .checkpoints import read_class_names

        names = read_class_names(self.opts.class_names) if self.opts.class_names else from_checkpoint
        n = int(self.model.num_classes)
        if names is not None and len(names) != n:
            where = f"CLASS_NAMES {Path(self.opts.class_names).name}" if self.opts.class_names else "the checkpoint's config"
            raise BuildError(f"{where} has {len(names)} names and the model's head {n} classes; expected one name per "
                             "class, in the head's order")
        return names

    @property
    def random_weights(self) -> bool:
        return self.provenance["source"] == "random"

    def gate(self, precision: str) -> dict:
        """The parity thresholds for ``precision``: the stated ones, with any --gate overrides."""
        from . import gate

        return gate.apply_overrides(gate.thresholds_for(precision, self.random_weights,
                                                        self.opts.cpu_recipe if precision == "int8-cpu" else self.opts.quant_recipe), precision,
                                    gate.parse_gate_overrides(self.opts.gate))

    def reference(self) -> tuple[dict, dict]:
        """(inputs, PyTorch outputs) of the parity set; read from NAME.reference.npz when that file
        was made for this fp32 recipe, else computed and written there."""
        if self._reference is None:
            from vitrt.verify import load_reference, save_reference

            from . import gate

            path = self.opts.reference_path
            try:
                inputs, outputs, info = load_reference(path)
                if info.get("recipe") == self.fp32_recipe:
                    self._reference = (inputs, outputs)
                    return self._reference
            except VitrtError:
                pass
            images = gate.image_set(size=self.size)
            inputs, outputs = gate.reference_outputs(self.wrapper, self.data_config, images)
            save_reference(path, inputs, outputs, {
                "recipe": self.fp32_recipe, "weights": self.provenance, "model": self.model_name,
                "photos": [p.name for p in images["photos"]],
                "synthetic": "export.images.synthetic_batch(12, seed 0): noise, gradients, blocks",
                "reference": "PyTorch FP32; photos through timm's eval transform"})
            self._reference = (inputs, outputs)
        return self._reference

    def check(self, precision: str, artifact_name: str, backend: str, **info: Any) -> Callable[[Path], dict]:
        """The gate for one candidate, as a ``check(tmp_path) -> report`` for :func:`publish`."""
        from . import gate

        def run(tmp: Path) -> dict:
            inputs, outputs = self.reference()
            notes: list[str] = []
            candidate = gate.candidate_outputs(tmp, inputs, notes=notes)
            if notes:
                info["evaluation"] = notes[0]
                self.log(notes[0])
            report = gate.parity_report(outputs, candidate, self.gate(precision), artifact=artifact_name,
                                        precision=precision, backend=backend, random_weights=self.random_weights,
                                        images={s: int(len(x)) for s, x in inputs.items()},
                                        batch_sizes=list(gate.BATCH_SIZES), **info,
                                        note=("top-1/top-5 agreement reported, not gated: random weights"
                                              if self.random_weights else None))
            self.log(gate.format_report(report))
            return report
        return run


def build(opts: BuildOptions, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Build what ``opts`` asks for; returns the artifact paths by precision (plans as plan_<precision>)."""
    from vitrt.atomic import remove_stale_temp_files

    from . import gate
    from .calibration import load_calibration
    from .onnx_export import export_onnx

    precisions = opts.precisions
    gate.parse_gate_overrides(opts.gate)  # a typo fails now, not after the export
    quantized = [p for p in precisions if p != "fp16"]
    for precision in quantized:  # a method or option a recipe cannot take fails now, not after the others
        calibration_method(precision, opts.calib_method, opts.cpu_recipe)
        if precision in CPU_PRECISIONS:
            check_cpu_recipe(opts.cpu_recipe, opts.calib_method, opts.quantize_op_types, opts.quantize_attention)
    if quantized and not (opts.calib_dir and str(opts.calib_dir).strip()):
        load_calibration(None)  # raises the error that says what to pass, before any heavy work
    if opts.plan not in ("auto", "yes", "no"):
        raise BuildError(f"PLAN={opts.plan!r}; expected auto, yes or no")
    Path(opts.output_dir).mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temp_files(opts.output_dir):
        log(f"removed {stale.name}, left by an interrupted build")
    ctx = _Context(opts, log)
    fp32 = opts.fp32_path
    ref_meta = {"reference": {"file": opts.reference_path.name}}
    if not opts.force and up_to_date(fp32, ctx.fp32_recipe, _onnx_recipe):
        log(f"{fp32} is up to date (same model, weights and graph options); reusing it")
    else:
        export_onnx(ctx.model, fp32, model_name=ctx.model_name, provenance=ctx.provenance, model_kwargs=ctx.model_kwargs,
                    input_format=opts.input_format, tokens=opts.tokens, opset=opts.opset, max_batch=opts.max_batch,
                    verify=opts.verify, reference=ctx.reference() if opts.verify else None,
                    extra_metadata=ref_meta, class_names=ctx.class_names, log=log)
        log(f"wrote {fp32}")
    if opts.verify:
        ctx.reference()  # NAME.reference.npz exists after every build, also when everything was reused
    built = {"fp32": fp32}
    calib = calib_prov = None
    if precisions:
        calib_dir = opts.calib_dir if (opts.calib_dir and str(opts.calib_dir).strip()) else "builtin"
        limit = opts.calib_max if quantized else opts.fp16_range_images
        calib, calib_prov = load_calibration(calib_dir, ctx.data_config, limit=limit, log=log,
                                             warn_small=bool(quantized))
    fp32_sha = sha256_file(fp32) if precisions else None  # hashed once: every variant records it
    for precision in precisions:
        built[precision] = _build_variant(ctx, precision, calib, calib_prov, fp32_sha, ref_meta, log)
    gpu_precisions = [p for p in precisions if p not in CPU_PRECISIONS]
    if opts.plan == "yes" or (opts.plan == "auto" and gpu_precisions):
        # plans for the GPU precisions asked; PRECISION=fp32 or int8-cpu alone asks for none (a CPU
        # deployment wants no plan), unless PLAN=yes, which then builds the fp32 one
        built.update(_build_plans(ctx, built, gpu_precisions or ["fp32"], log))
    elif opts.plan == "auto":
        log(f"No TensorRT plan: PRECISION={opts.precision} asks for no GPU precision (fp16, int8, fp8); "
            f"PLAN=yes builds {artifacts.plan_path(opts.output_dir, opts.name, 'fp32').name}.")
    relabel(built, ctx.class_names, log)
    _say_what_serves_here(built, log)
    return built


def relabel(built: dict[str, Path], class_names: list[str] | None, log: Callable[[str], None]) -> list[Path]:
    """Give every artifact of the set ``class_names`` (None: none of its own) where its metadata has other
    names, without rebuilding any graph or plan: new names on reused artifacts. Each file is rewritten
    atomically; a rewritten ONNX file has a new sha256, so the recipes of what was made from it (its
    variants, its plan) are updated to it in the same pass, and they stay up to date. Returns what changed."""
    import json

    from vitrt.atomic import write_json

    from .onnx_export import rewrite_metadata

    new_sha: dict[str, tuple[str, str]] = {}  # file name -> (old sha256, new sha256) of ONNX files rewritten here
    changed = []

    def follow(source: dict | None) -> bool:
        """Point a recorded source (file, sha256) at the rewritten file, if it was the one rewritten."""
        if source and source.get("file") in new_sha and source.get("sha256") == new_sha[source["file"]][0]:
            source["sha256"] = new_sha[source["file"]][1]
            return True
        return False

    onnx_files = [p for k, p in built.items() if not k.startswith("plan_")]
    for path in onnx_files:  # fp32 first: the variants record it
        data = dict(Metadata.from_onnx(path).data)
        moved = follow(data.get("source_onnx"))
        recipe = dict(data.get("recipe") or {})
        if moved and recipe.get("source_sha256") != data["source_onnx"]["sha256"]:
            recipe["source_sha256"] = data["source_onnx"]["sha256"]
            data["recipe"] = recipe
        if data.get("class_names") == class_names and not moved:
            continue
        data["class_names"] = class_names
        old = sha256_file(path)
        rewrite_metadata(path, data)
        new_sha[path.name] = (old, sha256_file(path))
        changed.append(path)
    for key, plan in built.items():
        if not key.startswith("plan_"):
            continue
        sidecar = artifacts.sidecar_path(plan)
        data = json.loads(sidecar.read_text("utf-8"))
        moved = follow(data["plan"].get("source_onnx"))
        if moved and data.get("recipe"):
            data["recipe"]["source_sha256"] = data["plan"]["source_onnx"]["sha256"]
        if data.get("class_names") == class_names and not moved:
            continue
        data["class_names"] = class_names
        Metadata(data, source=str(sidecar))  # validate before writing
        write_json(sidecar, data)
        changed.append(sidecar)
    if changed:
        log(f"class names {'set' if class_names else 'removed'} in {', '.join(p.name for p in changed)} "
            "(metadata only: no graph or plan rebuilt)")
    return changed


def _say_what_serves_here(built: dict[str, Path], log: Callable[[str], None]) -> None:
    """Without an NVIDIA GPU: which artifact is the fast one on this machine (docs/benchmarks.md)."""
    from vitrt.cuda import gpu_count

    if gpu_count():
        return
    from vitrt.fleet import Machine, cpu_backend

    machine = Machine.here()
    if "int8-cpu" in built:
        runtime, why = cpu_backend(machine, "int8-cpu")
        log(f"On this machine (no NVIDIA GPU) serve {built['int8-cpu']}: the INT8 CPU variant, the fastest here "
            f"(`make bench` measures it beside the others), on {runtime} ({why}).")
    else:
        runtime, why = cpu_backend(machine, "fp32")
        log(f"On this machine (no NVIDIA GPU) serve {built['fp32']} on {runtime} ({why}); "
            "`make engine PRECISION=int8-cpu CALIB_DIR=...` makes the faster INT8 CPU variant.")


def _build_variant(ctx: _Context, precision: str, calib, calib_prov: dict, fp32_sha: str, ref_meta: dict,
                   log: Callable[[str], None]) -> Path:
    import onnx

    from vitrt.metadata import FORMAT

    from .precision import make_variant

    opts = ctx.opts
    path = opts.variant_path(precision)
    quantized = precision != "fp16"
    used = calib if quantized else calib[:opts.fp16_range_images]
    wanted = {"format": FORMAT, "precision": precision, "revision": VARIANT_REVISION[precision], "source_sha256": fp32_sha,
              "calibration_sha256": hashlib.sha256(used.tobytes()).hexdigest(),
              "method": calibration_method(precision, opts.calib_method, opts.cpu_recipe),
              "keep_fp32_ops": None if quantized else sorted(opts.fp16_keep_fp32),
              "calibration_eps": list(opts.calibration_eps) if precision in ("int8", "fp8") or (
                  precision == "int8-cpu" and "module" not in CPU_RECIPES.get(opts.cpu_recipe, {})) else None,
              "op_types": opts.quantize_op_types if quantized else None,
              "quantize_attention": opts.quantize_attention if quantized else None,
              "recipe": opts.quant_recipe if precision in ("int8", "fp8") else opts.cpu_recipe if quantized else None}
    if not opts.force and up_to_date(path, wanted, _onnx_recipe):
        log(f"{path} is up to date (same fp32 source, options and calibration images); reusing it")
        return path
    log(f"making {precision} from {opts.fp32_path.name} ...")
    model, meta = make_variant(precision, opts.fp32_path, Metadata.from_onnx(opts.fp32_path).data, used, calib_prov,
                               method=opts.calib_method, keep_fp32_ops=opts.fp16_keep_fp32,
                               op_types=opts.quantize_op_types, quantize_attention=opts.quantize_attention,
                               quant_recipe=opts.quant_recipe, cpu_recipe=opts.cpu_recipe,
                               eps=opts.calibration_eps, recipe=wanted,
                               extra_metadata={**ref_meta, "gate": ctx.gate(precision)}, workdir=opts.output_dir,
                               log=log)

    def write(tmp: Path) -> None:
        nonlocal model
        onnx.save(model, str(tmp))
        model = None

    check = ctx.check(precision, path.name, "onnxruntime[CPUExecutionProvider]", calibration=meta["calibration"])
    publish(path, write, check if opts.verify else None, allow_failure=opts.allow_parity_failure, log=log,
            failure_hint="Calibrate on more or better images, or pass --allow-parity-failure "
                         "(ALLOW_PARITY_FAILURE=1) to publish it anyway.")
    log(f"wrote {path}")
    return path


def _build_plans(ctx: _Context, built: dict[str, Path], precisions: list[str], log: Callable[[str], None]) -> dict:
    """TensorRT plans for the precisions asked, with the flavour that can build here."""
    from vitrt.cuda import device_properties, gpu_count

    from . import trt_build

    opts = ctx.opts
    flavour, why = trt_build.choose(opts.trt)
    if flavour is None:
        if opts.plan == "yes":
            raise BuildError(f"cannot build TensorRT plans here: {why}")
        log(f"No TensorRT flavour can build plans here ({why}). Built the ONNX artifacts only.")
        return {}
    log(f"TensorRT plans: {why}")
    targets = trt_build.parse_targets(opts.targets) if flavour.targets else None
    here = device_properties(opts.device)["compute_capability"] if gpu_count() > opts.device else None
    plans = {}
    for precision in precisions:
        onnx_path = built[precision]
        plan = artifacts.plan_path(opts.output_dir, opts.name, precision)
        plan_targets = None
        if flavour.targets:
            plan_targets = trt_build.targets_for(precision, targets)
            if not plan_targets:
                need = ".".join(map(str, trt_build.MIN_COMPUTE[precision]))
                raise BuildError(f"{plan.name}: {precision} needs compute capability >= {need} and TARGETS has none "
                                 f"({', '.join(targets)}); expected at least one such target, e.g. TARGETS=sm89,sm120 "
                                 f"(vitrt never drops a precision silently)")
            runs_here = here is not None and here in plan_targets
        else:
            runs_here = True  # full TensorRT builds on the GPU it targets
        profile = {"min": opts.min_batch, "opt": opts.opt_batch, "max": opts.max_batch_plan}
        wanted = {"source_sha256": sha256_file(onnx_path), "flavour": flavour.name, "tensorrt": flavour.version,
                  "targets": plan_targets or [here], "batch": profile, "workspace_gib": opts.workspace_gib,
                  "opt_level": opts.opt_level, "verified_here": runs_here and opts.verify}
        if not opts.force and up_to_date(plan, wanted, _plan_recipe):
            log(f"{plan} is up to date (same ONNX, {flavour.name} version, targets and batch profile); reusing it")
            plans[f"plan_{precision}"] = plan
            continue
        # the closures below run inside this iteration's publish(): they see this iteration's values
        gate_run = ctx.check(precision, plan.name, f"{flavour.name}[{here}]") if runs_here and opts.verify else None
        extra = {"recipe": wanted, "gate": ctx.gate(precision)}

        def write(tmp: Path) -> None:
            trt_build.build_plan(onnx_path, tmp, flavour, targets=plan_targets, device=opts.device,
                                 min_batch=opts.min_batch, opt_batch=opts.opt_batch, max_batch=opts.max_batch_plan,
                                 workspace_gib=opts.workspace_gib, opt_level=opts.opt_level,
                                 timing_cache=opts.timing_cache or Path(opts.output_dir) / "timing.cache",
                                 extra=extra, name=plan.name, log=log)

        def check(tmp: Path) -> dict:
            report = gate_run(tmp) if gate_run is not None else {
                "artifact": plan.name, "precision": precision, "passed": None,
                "note": trt_build.NOT_RUN.format(plan=plan.name)}
            trt_build.record_parity(artifacts.sidecar_path(tmp), report)  # the sidecar says how it went
            return report

        publish(plan, write, check, allow_failure=opts.allow_parity_failure,
                companions=(artifacts.sidecar_path,), log=log)
        log(f"wrote {plan}" + ("" if runs_here and opts.verify else f" ({trt_build.NOT_RUN.format(plan=plan.name)})"))
        plans[f"plan_{precision}"] = plan
    return plans
