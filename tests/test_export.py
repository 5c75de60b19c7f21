"""The build stage on the small ViT: weights, graph contract, verification gate, atomicity, reuse."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from conftest import MODEL, SMALL_KWARGS, export_small
from vitrt.errors import BuildError
from vitrt.metadata import Metadata, sha256_file


def test_graph_contract(small_onnx):
    import onnx

    model = onnx.load(small_onnx)
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["LayerNormalization"] == 2 * SMALL_KWARGS["depth"] + 1  # norm1, norm2 per block + final norm
    (inp,) = model.graph.input
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [384, 384, 3]
    outs = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert set(outs) == {"logits", "embedding"}
    assert outs["logits"][1] == 1000 and outs["embedding"][1] == SMALL_KWARGS["embed_dim"]


def test_outputs_equal_timm_forward(small_onnx, small_model, photos):
    """logits == model(x) and embedding == forward_head(forward_features(x), pre_logits=True)."""
    import timm.data
    from PIL import Image

    import vitrt

    model = small_model[0]
    tf = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in photos[:3]])
    with torch.inference_mode():
        logits = model(x).numpy()
        emb = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
    with vitrt.Engine(small_onnx) as e:
        out = e.infer(np.stack([e.preprocess(p) for p in photos[:3]]))
    # FP32 on both sides; same tolerance argument as export.parity.THRESHOLDS["fp32"]
    np.testing.assert_allclose(out["logits"], logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["embedding"], emb, rtol=1e-4, atol=1e-5)


def test_parity_report_written(small_onnx):
    import json

    report = json.loads(small_onnx.with_name(small_onnx.name + ".parity.json").read_text())
    assert report["passed"] is True and report["precision"] == "fp32"
    assert report["batch_sizes"] == [1, 3, 8] and report["images"] == {"photos": 8, "synthetic": 12}
    assert set(report["thresholds"]) == {"logits.cosine_min", "logits.rel", "embedding.cosine_min", "embedding.rel"}


def test_verification_failure_leaves_no_file(tmp_path, small_model, monkeypatch):
    """A candidate that disagrees with PyTorch fails the build; nothing appears under the final name."""
    from export import gate

    real = gate.candidate_outputs

    def skewed(path, inputs, threads=None):
        out = real(path, inputs, threads)
        out["photos"]["logits"] = out["photos"]["logits"] * 1.01  # a 1 % error: 100x the tolerance
        return out

    monkeypatch.setattr(gate, "candidate_outputs", skewed)
    with pytest.raises(BuildError, match="bad.onnx failed its parity gate.*disagrees with PyTorch"):
        export_small(tmp_path / "bad.onnx", small_model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx.parity-failed.json"]  # the report, no artifact


def test_tokens_output(tmp_path, small_model):
    import vitrt

    path = export_small(tmp_path / "tok.onnx", small_model, tokens=True, verify=False)
    with vitrt.Engine(path) as e:
        out = e.infer(np.zeros((2, 384, 384, 3), np.uint8))
    assert out["tokens"].shape == (2, 577, SMALL_KWARGS["embed_dim"])
    assert e.metadata.data["outputs"]["tokens"]["shape"] == ["N", 577, SMALL_KWARGS["embed_dim"]]


def test_opset_below_18_refused(tmp_path, small_model):
    with pytest.raises(BuildError, match="opset 17 requested; expected >= 18"):
        export_small(tmp_path / "x.onnx", small_model, opset=17)


# --- weights -------------------------------------------------------------------------------------
def test_random_weights_are_seeded_and_labelled():
    from export.weights import load_model

    a, pa = load_model(MODEL, "random", seed=1, model_kwargs=SMALL_KWARGS)
    b, _ = load_model(MODEL, "random", seed=1, model_kwargs=SMALL_KWARGS)
    c, _ = load_model(MODEL, "random", seed=2, model_kwargs=SMALL_KWARGS)
    assert pa["source"] == "random" and pa["seed"] == 1
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_local_checkpoint(tmp_path, suffix):
    from safetensors.torch import save_file

    from export.weights import create_model, load_model

    torch.manual_seed(123)
    src = create_model(MODEL, SMALL_KWARGS, pretrained=False)
    path = tmp_path / f"ckpt{suffix}"
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)  # a training checkpoint
    model, prov = load_model(MODEL, str(path), model_kwargs=SMALL_KWARGS)
    assert prov["source"] == "file" and prov["sha256"] == sha256_file(path) and prov["file"] == path.name
    got = model.state_dict()
    assert all(torch.equal(got[k], state[k]) for k in state)


class _Evil:
    def __reduce__(self):
        return (print, ("this ran while unpickling",))


def test_checkpoint_with_code_is_not_unpickled(tmp_path, capsys):
    from export.weights import load_model

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "hook": _Evil()}, path)  # unpickling it would call a function
    with pytest.raises(BuildError, match="could not read weights file"):
        load_model(MODEL, str(path), model_kwargs=SMALL_KWARGS)
    assert "this ran" not in capsys.readouterr().out


def test_bad_checkpoints(tmp_path):
    from safetensors.torch import save_file

    from export.weights import load_model

    with pytest.raises(BuildError, match="does not exist; expected WEIGHTS=hub, WEIGHTS=random or a path"):
        load_model(MODEL, str(tmp_path / "missing.safetensors"))
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(BuildError, match="suffix '.npz'"):
        load_model(MODEL, str(tmp_path / "w.npz"))
    save_file({"head.weight": torch.zeros(10, 64)}, tmp_path / "small.safetensors")
    with pytest.raises(BuildError, match="does not fit"):
        load_model(MODEL, str(tmp_path / "small.safetensors"), model_kwargs=SMALL_KWARGS)


def test_hub_unreachable_names_the_alternatives(monkeypatch):
    import huggingface_hub

    from export.weights import load_model

    def offline(**kw):
        raise huggingface_hub.errors.LocalEntryNotFoundError("cannot reach huggingface.co")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(BuildError) as info:
        load_model(MODEL, "hub")
    msg = str(info.value)
    assert "Hugging Face hub" in msg and "WEIGHTS=/path/to/model.safetensors" in msg and "WEIGHTS=random" in msg


def test_hub_loads_the_downloaded_file(tmp_path, monkeypatch):
    """The hub path: download (faked: no network here) then timm's own pretrained loading of that file."""
    import huggingface_hub
    from safetensors.torch import save_file

    from export.weights import create_model, load_model

    torch.manual_seed(7)
    src = create_model(MODEL, SMALL_KWARGS, pretrained=False)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, tmp_path / "model.safetensors")
    asked = {}

    def fake_download(repo_id, filename, **kw):
        asked.update(repo_id=repo_id, filename=filename)
        return str(tmp_path / "model.safetensors")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    model, prov = load_model(MODEL, "hub", model_kwargs=SMALL_KWARGS)
    assert asked == {"repo_id": "timm/vit_base_patch16_384.augreg_in21k_ft_in1k", "filename": "model.safetensors"}
    assert prov == {"source": "hub", "repo": asked["repo_id"], "file": "model.safetensors",
                    "sha256": sha256_file(tmp_path / "model.safetensors")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in src.state_dict().items())


# --- the build pipeline ----------------------------------------------------------------------------
def test_build_reuses_up_to_date_fp32(tmp_path):
    from export.build import BuildOptions, build

    logs: list[str] = []
    opts = BuildOptions(weights="random", model_kwargs=SMALL_KWARGS, output_dir=tmp_path, name="m", precision="fp32",
                        plan="no")
    path = build(opts, log=logs.append)["fp32"]
    meta = Metadata.from_onnx(path).data
    assert meta["weights"]["source"] == "random" and meta["model"]["kwargs"] == SMALL_KWARGS
    mtime = path.stat().st_mtime_ns
    logs.clear()
    build(opts, log=logs.append)
    assert path.stat().st_mtime_ns == mtime and any("up to date" in m for m in logs)
    build(BuildOptions(weights="random", seed=5, model_kwargs=SMALL_KWARGS, output_dir=tmp_path, name="m", precision="fp32",
                       plan="no"), log=logs.append)
    assert path.stat().st_mtime_ns != mtime and Metadata.from_onnx(path).data["weights"]["seed"] == 5
    # no temp files left; the reference was rewritten for the new weights
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.parity.json", "m.reference.npz"]
    from vitrt.verify import load_reference

    assert load_reference(tmp_path / "m.reference.npz")[2]["weights"]["seed"] == 5


def test_atomic_path_cleans_up(tmp_path):
    from vitrt.atomic import atomic_path

    final = tmp_path / "a.onnx"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    final.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"new, half")
            raise RuntimeError("interrupted")
    assert final.read_bytes() == b"old"
