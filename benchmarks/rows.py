"""The rows ``make bench`` times: PyTorch peers, vitrt artifacts, and the CPU peers (benchmarks/cpu_peers.py).

- :func:`quick_rows` (``make bench``, the default): PyTorch eager FP32, the artifact vitrt's fleet rule
  picks for this machine on the runtime it picks, and OpenVINO's best accurate path on this CPU (NNCF
  INT8 where OpenVINO's int8 kernels run, i.e. the CPUs of ``vitrt.fleet.OPENVINO_ISA["int8-cpu"]``;
  OpenVINO FP32 elsewhere, as on AVX2 alone, where its int8 measured slower than ONNX Runtime's).
- :func:`peers` (``QUICK=0``): every PyTorch peer, every CPU peer, every artifact on each CPU runtime.

Each row has ``infer(uint8 batch)``, ``predict(jpegs)``, ``sync()``, and may have ``release(batch)`` to
free what it compiled for one batch size (the full sweep calls it after each batch size: bounded memory).
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

    from vitrt.fleet import OPENVINO_ISA

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

        why = cpu_peers.missing("openvino")
        int8 = any(isa in read_cpuinfo().isa for isa in OPENVINO_ISA["int8-cpu"])
        if int8:
            why = why or cpu_peers.missing("nncf")
        if why:
            skipped["OpenVINO"] = why
        elif int8:
            log("bench: quantizing the fp32 ONNX with NNCF (OpenVINO's int8 path on this CPU)")
            calib = cpu_peers.calibration_images(fp32, data_config, calib_dir, skipped)
            out.append(cpu_peers.nncf_int8(fp32, calib, threads))
        else:
            log("bench: opening the fp32 ONNX on OpenVINO FP32 (its int8 is slower on this CPU: vitrt.fleet)")
            out.append(cpu_peers.OpenVINOPeer("OpenVINO FP32", fp32, threads, "f32"))
    else:
        out.append(TorchPeer("PyTorch FP16 autocast", model, data_config, device, autocast=torch.float16))
    return out


def peers(artifacts: list[Path], threads: int, include_compile: bool = True, folder: Path | None = None,
          skipped: dict | None = None, weights: str | None = None, calib_dir: str | None = None, log=print) -> list:
    """PyTorch eager, autocast and torch.compile (same weights as the artifacts); on a CPU, the CPU peers
    (benchmarks/cpu_peers.py); then every artifact on the runtime Engine picks for it, and on a CPU the
    int8-cpu and fp32 ONNX on the other CPU runtime too. ``skipped`` receives the rows left out, with why."""
    from vitrt.fleet import OPENVINO_PRECISIONS

    import timm.data
    import torch

    onnx = next(p for p in artifacts if p.suffix == ".onnx")
    model, meta = reference_model(onnx, weights)
    data_config = timm.data.resolve_model_data_config(model)
    device = torch_device()
    skipped = {} if skipped is None else skipped
    out: list = [TorchPeer("PyTorch eager FP32", model, data_config, device)]
    if device == "cuda":
        out.append(TorchPeer("PyTorch FP16 autocast", model, data_config, device, autocast=torch.float16))
    else:
        out.append(TorchPeer("PyTorch bf16 autocast", model, data_config, device, autocast=torch.bfloat16))
    if include_compile:
        out.append(TorchPeer("torch.compile FP32", model, data_config, device, compile=True))
    if device == "cpu":
        from . import cpu_peers

        out += cpu_peers.cpu_peers(onnx, model, data_config, threads, skipped, include_compile, calib_dir, log=log)
    default = _cpu_default(folder or onnx.parent) if device == "cpu" else None
    for p in artifacts:
        runner = VitrtPeer(p, threads)
        runner.default = p == default
        out.append(runner)
        if p.suffix == ".onnx" and device == "cpu" and runner.engine.metadata.precision in OPENVINO_PRECISIONS:
            other = "onnxruntime" if runner.engine.backend.name.startswith("openvino") else "openvino"
            from benchmarks.cpu_peers import missing

            if other == "onnxruntime" or not missing("openvino"):
                out.append(VitrtPeer(p, threads, backend=other))
            else:
                skipped[f"{p.name} on OpenVINO"] = missing("openvino")
    return out


def _cpu_default(folder: Path) -> Path | None:
    """The artifact ``vitrt.Engine(folder)`` runs on this machine, or None where the rule finds none."""
    from vitrt.errors import VitrtError
    from vitrt.fleet import choose

    try:
        return choose(folder)[0]
    except VitrtError:
        return None
