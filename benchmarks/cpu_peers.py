"""The CPU peers of vitrt's CPU default in ``make bench``, each with the recipe its own docs give.

- OpenVINO FP32 (``INFERENCE_PRECISION_HINT=f32``) on the fp32 artifact, and OpenVINO bf16 where the
  CPU has AVX-512 BF16 or AMX (OpenVINO's default there). Static shapes, one compiled model per batch
  size, ``PERFORMANCE_HINT=LATENCY``, the benchmark's thread count.
- OpenVINO INT8 from NNCF: ``nncf.quantize(model_type=TRANSFORMER, preset=MIXED)`` on the same
  calibration images as int8-cpu (the artifact's metadata names them).
- PyTorch dynamic int8: ``torch.ao.quantization.quantize_dynamic`` on ``nn.Linear``.
- PyTorch 2 export int8 on Inductor: torchao's ``X86InductorQuantizer``, ``prepare_pt2e`` /
  ``convert_pt2e`` on the same calibration images, then ``torch.compile`` with freezing.

Every peer takes the artifacts' uint8 NHWC input (normalization inside the model), so that model-only
rows compare the same work; end to end, they decode with vitrt's preprocessing. A peer whose package
is missing is left out with the reason (:func:`missing`, :func:`openvino_rows`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

#: The OpenVINO settings of every OpenVINO peer row (OpenVINO's latency recipe; vitrt's own backend
#: keeps its settings in vitrt/backends/openvino.py).
OV_CONFIG = {"PERFORMANCE_HINT": "LATENCY"}


#: ``make bench``'s quick run times one OpenVINO row, OpenVINO's fastest accurate path on the CPU, where a
#: measurement says which that is: keyed by the instruction set the CPU runs int8 matmuls on
#: (:func:`int8_isa`), with the figures that chose it (ViT-B/16-384, random seed 0, model only at batch 1,
#: 2 threads, the rows interleaved in one process: ``make bench`` where none was stored). Where none is
#: stored for a CPU's (AMX, AVX-VNNI, AVX-512 without VNNI: not measured) the quick run times the
#: candidates side by side and the verdict takes the faster one, so the pick is that run's measurement.
OPENVINO_PEER = {
    "AVX-512 VNNI": ("OpenVINO NNCF INT8", "AMD EPYC with AVX-512 VNNI, 2026-12-02: NNCF INT8 213.5 ms, OpenVINO "
                                          "FP32 645.9 ms (3.0x)"),
    # the two within noise (their calls overlap at every point); FP32 the faster median, exact, and no
    # 84 s of NNCF quantization, which had put the quick run over its 5 minutes (344 s; docs/benchmarks.md)
    "AVX2": ("OpenVINO FP32", "AMD EPYC with AVX2 only, 2026-12-04: OpenVINO FP32 759.8 ms (749.6-913.0), NNCF "
                              "INT8 779.7 ms (746.9-806.5), 1.03x; batch 8 7386 against 7823 ms (1.06x)"),
}
#: What the quick run times where no measurement picks: every accurate OpenVINO row it can build.
OPENVINO_CANDIDATES = ("OpenVINO NNCF INT8", "OpenVINO FP32")
#: The packages each OpenVINO row needs.
OPENVINO_NEEDS = {"OpenVINO NNCF INT8": ("openvino", "nncf"), "OpenVINO FP32": ("openvino",)}
#: The instruction sets int8 matmuls run on, fastest first (vitrt.cpu's names): a CPU's first is its kernel.
INT8_ISAS = ("AMX-INT8", "AVX-512 VNNI", "AVX-VNNI", "AVX-512", "AVX2")


def int8_isa(isa) -> str | None:
    """The instruction set a CPU with ``isa`` (vitrt.cpu.CpuInfo.isa) runs int8 matmuls on."""
    return next((name for name in INT8_ISAS if name in isa), None)


def openvino_rows(isa) -> tuple[tuple[str, ...], str, dict[str, str]]:
    """(the OpenVINO rows the quick run times on a CPU with ``isa``, why, {row it cannot build: why}).
    A row whose package is missing is left out alone: the other candidates still run (also in place of
    a measured pick that cannot, since they are then the best OpenVINO path that runs here)."""
    kernel = int8_isa(isa)
    cannot = {row: why for row in OPENVINO_CANDIDATES
              if (why := next((r for r in map(missing, OPENVINO_NEEDS[row]) if r), None))}
    if kernel in OPENVINO_PEER:
        row, figures = OPENVINO_PEER[kernel]
        rows, why = (row,), f"{kernel}: {figures}"
        if row in cannot:
            rows, why = OPENVINO_CANDIDATES, f"{why}; {row} cannot run here, so the others do"
    else:
        rows, why = OPENVINO_CANDIDATES, (f"no measurement for int8 on {kernel or 'this CPU'} ("
                                          + ", ".join(OPENVINO_PEER) + " have one): both timed, the verdict "
                                          "takes the faster")
    return tuple(r for r in rows if r not in cannot), why, {r: w for r, w in cannot.items() if r in rows}


def missing(package: str) -> str | None:
    """Why a peer needing ``package`` cannot run here, or None."""
    return None if importlib.util.find_spec(package) else f"{package} is not installed (pip install '.[peers]')"


class CropPeer:
    """A peer that runs uint8 crops; end to end it decodes with vitrt.preprocess and takes the top 5."""

    name = "?"

    def predict(self, jpegs: list[bytes]):
        import vitrt

        logits = self.infer(np.stack([vitrt.preprocess(j) for j in jpegs]))["logits"]
        return np.argsort(-logits, axis=1)[:, :5]

    def sync(self):
        pass


class OpenVINOPeer(CropPeer):
    """An OpenVINO model (a path or an ``ov.Model``) compiled for the CPU, one static shape per batch size."""

    def __init__(self, name: str, model, threads: int, precision: str = "f32"):
        import openvino as ov

        self.name, self.core, self.threads, self.precision = name, ov.Core(), threads, precision
        self.model = self.core.read_model(str(model)) if isinstance(model, (str, Path)) else model
        self.compiled: dict[int, object] = {}

    def _compiled(self, batch: int):
        if batch not in self.compiled:
            m = self.model.clone()
            m.reshape({m.inputs[0].any_name: [batch, *m.inputs[0].get_partial_shape()[1:].to_shape()]})
            self.compiled[batch] = self.core.compile_model(m, "CPU", {
                **OV_CONFIG, "INFERENCE_PRECISION_HINT": self.precision, "INFERENCE_NUM_THREADS": self.threads})
        return self.compiled[batch]

    def infer(self, batch: np.ndarray) -> dict:
        c = self._compiled(len(batch))
        out = c(batch)
        return {o.any_name: out[o] for o in c.outputs}

    def release(self, batch: int) -> None:
        """Free the model compiled for ``batch`` (each holds its own copy of the weights)."""
        self.compiled.pop(batch, None)


def nncf_int8(fp32_onnx: Path, calib: np.ndarray, threads: int) -> OpenVINOPeer:
    """OpenVINO INT8 from NNCF (MIXED preset, TRANSFORMER model type) on ``calib``."""
    import nncf
    import openvino as ov

    quantized = nncf.quantize(ov.Core().read_model(str(fp32_onnx)), nncf.Dataset(list(calib), lambda x: x[None]),
                              model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.MIXED,
                              subset_size=len(calib))
    return OpenVINOPeer("OpenVINO NNCF INT8", quantized, threads, "f32")


class TorchCropPeer(CropPeer):
    """A PyTorch module over uint8 NHWC crops (``export.graph.ImageModel``), already prepared."""

    def __init__(self, name: str, module):
        self.name, self.module = name, module

    def infer(self, batch: np.ndarray) -> dict:
        import torch

        with torch.inference_mode():
            logits, embedding = self.module(torch.from_numpy(np.ascontiguousarray(batch)))[:2]
        return {"logits": logits.float().numpy(), "embedding": embedding.float().numpy()}


def torch_dynamic_int8(model, data_config: dict) -> TorchCropPeer:
    """``quantize_dynamic`` on every ``nn.Linear``: int8 weights, activations quantized per call."""
    import copy

    import torch

    from export.graph import ImageModel

    module = ImageModel(copy.deepcopy(model), data_config).eval()
    q = torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)
    return TorchCropPeer("PyTorch dynamic int8", q)


def torch_pt2e_int8(model, data_config: dict, calib: np.ndarray) -> TorchCropPeer:
    """PyTorch's X86 Inductor int8 recipe: export, ``X86InductorQuantizer`` (static, per-channel
    weights), calibrate, ``convert_pt2e``, then ``torch.compile`` with freezing."""
    import copy

    import torch
    import torch._inductor.config as inductor_config
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from export.graph import ImageModel

    module = ImageModel(copy.deepcopy(model), data_config).eval()
    example = (torch.from_numpy(calib[:2]),)  # batch 2: an example batch of 1 specializes the dimension
    exported = torch.export.export(module, example, dynamic_shapes=({0: torch.export.Dim.AUTO},)).module()
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for x in calib:
            prepared(torch.from_numpy(x[None]))
    converted = convert_pt2e(prepared)
    inductor_config.freezing = True  # constant-fold the int8 weights: PyTorch's docs for this recipe
    return TorchCropPeer("PyTorch PT2E int8 (Inductor)", torch.compile(converted, dynamic=False))


def calibration_images(fp32_onnx: Path, data_config: dict, calib_dir: str | None = None,
                       skipped: dict | None = None) -> np.ndarray:
    """The images int8-cpu was calibrated on: ``calib_dir`` (CALIB_DIR=; the metadata keeps the folder's
    name and sha256, not its path), the builtin set where int8-cpu used it or is absent; otherwise the
    builtin set, and ``skipped`` says the peers calibrated on other images than int8-cpu."""
    from export.calibration import BUILTIN, load_calibration
    from vitrt.artifacts import metadata_of, onnx_path

    int8 = onnx_path(fp32_onnx.parent, fp32_onnx.stem, "int8-cpu")
    used = (metadata_of(int8).data.get("calibration") or {}).get("source") if int8.is_file() else BUILTIN
    source = calib_dir or BUILTIN
    if used not in (BUILTIN, None) and not calib_dir and skipped is not None:
        skipped["the same calibration images as int8-cpu"] = (
            f"int8-cpu was calibrated on the folder {used!r}, whose path its metadata does not keep; the NNCF and "
            "PT2E peers used the builtin set: pass CALIB_DIR= to make bench")
    return load_calibration(source, data_config, log=lambda m: None, warn_small=False)[0]
