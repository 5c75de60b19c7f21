"""The rows ``make bench`` times: PyTorch peers, vitrt artifacts, and the CPU peers (benchmarks/cpu_peers.py).

- :func:`quick_rows` (``make bench``, the default): PyTorch eager FP32, the artifact vitrt's fleet rule
  picks for this machine on the runtime it picks, and OpenVINO's best accurate path on this CPU: the
  row a measurement picked for its instruction sets (``benchmarks.cpu_peers.OPENVINO_PEER``, with the
  figures), else NNCF INT8 and OpenVINO FP32 side by side (the verdict takes the faster).
- :func:`full_specs` (``QUICK=0``): every PyTorch peer, every CPU peer, every artifact on each CPU runtime,
  as specs that :func:`build_row` builds, one row per process (benchmarks/sweep.py).

Each row has ``infer(uint8 batch)``, ``predict(jpegs)``, ``sync()``, and may have ``release(batch)`` to
free what it compiled for one batch size (both modes call it after each batch size: bounded memory).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from .common import reference_model


class TorchPeer:
    """A PyTorch peer over the same uint8-in graph as the artifacts (ImageModel: normalize in-model)."""

    def __init__(self, name: str, model, data_config: dict, device: str, autocast: Any = None, compile: bool = False):
        import torch

        from export.graph import ImageModel

        self.name, self.device, self.autocast = name, device, autocast
        self.module = ImageModel(model, data_config).eval().to(device)
        # model only: uint8 in, normalized in the module (the artifacts' graph); end to end: timm's
        # normalized tensor into the timm model. Both compiled for the torch.compile peer.
        self.fn = torch.compile(self.module) if compile else self.module
        self.model_fn = torch.compile(self.module.model) if compile else self.module.model
        self.data_config = data_config
        self.tf = None
        self.compiled = compile

    def release(self, batch: int) -> None:
        """torch.compile's graphs for the batch size just measured (the next one compiles its own)."""
        if self.compiled:
            import torch

            torch._dynamo.reset()

    def _run(self, x):
        import torch

        with torch.inference_mode():
            if self.autocast is not None:
                with torch.autocast(self.device, dtype=self.autocast):
                    return self.fn(x)
            return self.fn(x)

    def infer(self, batch: np.ndarray) -> dict:
        import torch

        out = self._run(torch.from_numpy(batch).to(self.device))
        return {"logits": out[0].float().cpu().numpy(), "embedding": out[1].float().cpu().numpy()}

    def predict(self, jpegs: list[bytes]):
        """timm's own pipeline: decode, timm transform, model, softmax top-5."""
        import timm.data
        import torch
        from PIL import Image

        if self.tf is None:
            self.tf = timm.data.create_transform(**self.data_config, is_training=False)
        x = torch.stack([self.tf(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs]).to(self.device)
        with torch.inference_mode():
            if self.autocast is not None:
                with torch.autocast(self.device, dtype=self.autocast):
                    logits = self.model_fn(x)
            else:
                logits = self.model_fn(x)
            return torch.topk(logits.float().softmax(-1), 5).indices.cpu().numpy()

    def sync(self):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()


class VitrtPeer:
    def __init__(self, artifact: Path, threads: int, backend: str | None = None):
        import vitrt

        self.engine = vitrt.Engine(artifact, threads=threads, backend=backend)
        self.name = f"{artifact.name} ({self.engine.backend.name})"
        self.max_batch = self.engine.metadata.max_batch
        self.default = False  # vitrt's CPU default: the fleet rule's artifact on the runtime Engine picks

    def infer(self, batch: np.ndarray):
        return self.engine.infer(batch)

    def predict(self, jpegs: list[bytes]):
        return self.engine.predict(jpegs)

    def sync(self):  # Engine.infer returns host arrays: it has synchronized already
        pass


def torch_device() -> str:
    """Where the PyTorch peers run: "cuda" with an NVIDIA GPU that torch sees (FP16 autocast), else
    "cpu" (bf16 autocast)."""
    import torch

    from vitrt.cuda import gpu_count

    return "cuda" if gpu_count() and torch.cuda.is_available() else "cpu"


def quick_rows(folder: Path, threads: int, skipped: dict, weights: str | None = None, calib_dir: str | None = None,
               log=print) -> list:
    """``make bench``'s three rows (module docstring), built one after the other."""
    import timm.data
    import torch

    default = _cpu_default(folder) if torch_device() == "cpu" else None
    from vitrt.fleet import choose

    from vitrt.artifacts import onnx_path, set_name

    picked = default or choose(folder)[0]
    fp32 = onnx_path(folder, set_name(picked), "fp32")
    log(f"bench: building PyTorch eager FP32 (the reference) from {fp32.name}'s weights")
    model, meta = reference_model(fp32, weights)
    data_config = timm.data.resolve_model_data_config(model)
    device = torch_device()
    out: list = [TorchPeer("PyTorch eager FP32", model, data_config, device)]
    log(f"bench: opening {picked.name}, the artifact vitrt picks here")
    row = VitrtPeer(picked, threads)
    row.default = True
    out.append(row)
    if device == "cpu":
        from . import cpu_peers
        from vitrt.cpu import read_cpuinfo

        rows, why_rows, cannot = cpu_peers.openvino_rows(read_cpuinfo().isa)
        skipped.update(cannot)
        log(f"bench: OpenVINO rows {', '.join(rows) or 'none'} ({why_rows})")
        for name in rows:
            if name == "OpenVINO NNCF INT8":
                log("bench: quantizing the fp32 ONNX with NNCF (OpenVINO's int8 path)")
                calib = cpu_peers.calibration_images(fp32, data_config, calib_dir, skipped)
                out.append(cpu_peers.nncf_int8(fp32, calib, threads))
            else:
                log("bench: opening the fp32 ONNX on OpenVINO FP32")
                out.append(cpu_peers.OpenVINOPeer("OpenVINO FP32", fp32, threads, "f32"))
    else:
        out.append(TorchPeer("PyTorch FP16 autocast", model, data_config, device, autocast=torch.float16))
    return out


def full_specs(artifacts: list[Path], include_compile: bool = True, folder: Path | None = None,
               skipped: dict | None = None) -> list[dict]:
    """``QUICK=0``'s rows, as specs :func:`build_row` builds (each in its own process: benchmarks/sweep.py),
    decided without building anything: PyTorch eager (first: the reference), autocast and torch.compile;
    on a CPU, the CPU peers (benchmarks/cpu_peers.py); then every artifact on the runtime Engine picks
    for it, and on a CPU the fp32 and int8-cpu ONNX on the other CPU runtime too. ``skipped`` receives
    the rows left out, with why."""
    from vitrt.artifacts import metadata_of
    from vitrt.fleet import OPENVINO_PRECISIONS

    from .cpu_peers import missing

    skipped = {} if skipped is None else skipped
    reference = next(p for p in artifacts if p.suffix == ".onnx").name
    cpu = torch_device() == "cpu"
    kinds = ["eager", "autocast"] + (["compile"] if include_compile else [])
    if cpu:
        from vitrt.cpu import read_cpuinfo

        why = missing("openvino") or missing("nncf")
        if why:
            skipped["OpenVINO FP32 / bf16 / NNCF INT8"] = why
        else:
            bf16 = {"AVX-512 BF16", "AMX-BF16"} & set(read_cpuinfo().isa)
            kinds += ["ov-f32"] + (["ov-bf16"] if bf16 else []) + ["nncf"]
        kinds.append("dynamic-int8")
        why = missing("torchao") or (None if include_compile else "--no-compile")
        if why:
            skipped["PyTorch PT2E int8 (Inductor)"] = why
        else:
            kinds.append("pt2e")
    specs = [{"kind": k, "reference": reference} for k in kinds]
    default = _cpu_default(folder or artifacts[0].parent) if cpu else None
    for p in artifacts:
        specs.append({"kind": "artifact", "artifact": p.name, "reference": reference, "default": p == default})
        if p.suffix == ".onnx" and cpu and metadata_of(p).precision in OPENVINO_PRECISIONS:
            if missing("openvino"):
                skipped[f"{p.name} on the other CPU runtime"] = missing("openvino")
            else:
                specs.append({"kind": "artifact", "artifact": p.name, "reference": reference, "other_runtime": True})
    return specs


def build_row(spec: dict, folder: Path, threads: int, skipped: dict, weights: str | None = None,
              calib_dir: str | None = None, log=print):
    """The row ``spec`` names (:func:`full_specs`), built; with the reference model's MACs for the
    eager row (the limit in the report), else None."""
    if spec["kind"] == "artifact":
        runner = VitrtPeer(folder / spec["artifact"], threads)
        if spec.get("other_runtime"):
            other = "onnxruntime" if runner.engine.backend.name.startswith("openvino") else "openvino"
            runner.engine.close()
            runner = VitrtPeer(folder / spec["artifact"], threads, backend=other)
        runner.default = bool(spec.get("default"))
        return runner, None
    import timm.data
    import torch

    from . import cpu_peers

    onnx = folder / spec["reference"]
    model, _ = reference_model(onnx, weights)
    data_config = timm.data.resolve_model_data_config(model)
    device, kind = torch_device(), spec["kind"]
    if kind == "eager":
        from .standing import vit_macs

        return TorchPeer("PyTorch eager FP32", model, data_config, device), vit_macs(model)
    if kind == "autocast":
        dtype = torch.float16 if device == "cuda" else torch.bfloat16
        return TorchPeer(f"PyTorch {'FP16' if device == 'cuda' else 'bf16'} autocast", model, data_config, device,
                         autocast=dtype), None
    if kind == "compile":
        return TorchPeer("torch.compile FP32", model, data_config, device, compile=True), None
    if kind in ("ov-f32", "ov-bf16"):
        return cpu_peers.OpenVINOPeer(f"OpenVINO {'FP32' if kind == 'ov-f32' else 'bf16'}", onnx, threads,
                                      kind[3:]), None
    if kind == "dynamic-int8":
        return cpu_peers.torch_dynamic_int8(model, data_config), None
    calib = cpu_peers.calibration_images(onnx, data_config, calib_dir, skipped)
    if kind == "nncf":
        return cpu_peers.nncf_int8(onnx, calib, threads), None
    if kind == "pt2e":
        return cpu_peers.torch_pt2e_int8(model, data_config, calib), None
    raise ValueError(f"unknown bench row kind {kind!r}; expected one of eager, autocast, compile, ov-f32, ov-bf16, "
                     "nncf, dynamic-int8, pt2e, artifact")


def _cpu_default(folder: Path) -> Path | None:
    """The artifact ``vitrt.Engine(folder)`` runs on this machine, or None where the rule finds none."""
    from vitrt.errors import VitrtError
    from vitrt.fleet import choose

    try:
        return choose(folder)[0]
    except VitrtError:
        return None
