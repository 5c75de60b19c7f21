"""Your own ViT (export/checkpoints.py, export/weights.py): a timm fine-tune with its own head and names,
Hugging Face transformers ViT folders checked against transformers itself, timm's other 384 ViTs, class
names in every form, and metadata without paths of the build machine.

Small configs keep the suite fast: depth 1-2 at the families' real widths (the full ViT-B/16-384 is
tests/test_full_model.py's). Tolerances: the fp32 ONNX against the PyTorch forward it was exported
from agrees to ~1e-6 (the fp32 gate's own bound is 1e-4 of the largest logit, export/gate.py); timm's
forward on converted tensors against transformers' own differs by summation order and the same
LayerNorm eps, measured at cosine 0.99999994 on ViT-B: 0.99999 leaves 10x room.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import vitrt
from vitrt.errors import BuildError

transformers = pytest.importorskip("transformers")

HF_SMALL = dict(image_size=384, patch_size=16, hidden_size=384, num_attention_heads=6, intermediate_size=1536,
                num_hidden_layers=2)  # ViT-S/16 widths, 2 layers
LABELS7 = ["apple", "banana", "cherry", "date", "elderberry", "fig", "grape"]


def cosine(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    """A transformers ViTForImageClassification (random init, seed 0, 7 labels) with its PIL processor,
    saved as save_pretrained writes it."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    torch.manual_seed(0)
    cfg = ViTConfig(**HF_SMALL, num_labels=7, id2label=dict(enumerate(LABELS7)),
                    label2id={n: i for i, n in enumerate(LABELS7)})
    folder = tmp_path_factory.mktemp("hf") / "vit-fruit"
    ViTForImageClassification(cfg).eval().save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 384, "width": 384}).save_pretrained(folder)
    return folder


def _export(weights, out: Path, **kw) -> Path:
    from conftest import _quiet
    from export.build import BuildOptions, build

    opts = BuildOptions(weights=str(weights), output_dir=out, name="m", precision="fp32", plan="no", **kw)
    return build(opts, log=_quiet)["fp32"]


def test_a_hugging_face_vit_folder_matches_transformers(hf_folder, tmp_path, photos):
    """The fp32 ONNX built from the folder: its crop equals the PIL processor's resized image, its
    logits and embedding (the CLS token after the final LayerNorm) match transformers' own forward,
    its labels are id2label's, and its metadata holds names and sha256, no path."""
    import torch
    from transformers import ViTForImageClassification, ViTImageProcessor, ViTImageProcessorPil

    onnx = _export(hf_folder, tmp_path)
    meta = vitrt.Engine(onnx).metadata.data
    assert meta["model"]["name"] == "vit_small_patch16_384"
    assert meta["model"]["kwargs"] == {"norm_eps": 1e-12, "depth": 2, "num_classes": 7}
    assert meta["class_names"] == LABELS7 and meta["labels"] is None
    assert meta["data_config"]["crop_mode"] == "squash" and meta["data_config"]["interpolation"] == "bilinear"
    assert meta["weights"]["source"] == "transformers" and meta["weights"]["file"] == "model.safetensors"
    assert set(meta["weights"]["configs"]) == {"config.json", "preprocessor_config.json"}
    assert str(tmp_path) not in json.dumps(meta) and str(hf_folder) not in json.dumps(meta)
    hf = ViTForImageClassification.from_pretrained(hf_folder).eval()
    pil = ViTImageProcessorPil.from_pretrained(hf_folder)
    tv = ViTImageProcessor.from_pretrained(hf_folder)  # transformers 5: the torchvision backend
    with vitrt.Engine(onnx) as engine:
        for photo in photos[:6]:
            crop = engine.preprocess(photo)
            from PIL import Image

            img = Image.open(photo).convert("RGB")
            resized = pil(img, do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"][0]
            assert np.array_equal(crop, resized.transpose(1, 2, 0).round().astype(np.uint8)), photo.name  # exact
            other = tv(img, do_rescale=False, do_normalize=False, return_tensors="pt")["pixel_values"][0]
            diff = np.abs(crop.astype(int) - other.numpy().transpose(1, 2, 0).round().astype(int))
            assert diff.max() <= 1, photo.name  # torchvision's bilinear: one level at most
            got = engine.infer(crop[None])
            with torch.inference_mode():
                x = pil(img, return_tensors="pt")["pixel_values"]
                out = hf(x, output_hidden_states=False)
                cls = hf.vit(x).last_hidden_state[:, 0]
            assert cosine(got["logits"][0], out.logits[0].numpy()) >= 0.99999
            assert cosine(got["embedding"][0], cls[0].numpy()) >= 0.99999
            top = engine.predict(photo, topk=3)
            assert [p.label for p in top] == [LABELS7[p.index] for p in top]
            assert top[0].index == int(out.logits.argmax())


def test_the_weights_file_with_config_beside_it_reads_as_the_folder(hf_folder):
    """WEIGHTS= the folder's model.safetensors, its config.json beside it: the same architecture, head and
    names as the folder (without building again: the folder's build is the test above)."""
    from export.weights import load

    a, b = load(None, str(hf_folder)), load(None, str(hf_folder / "model.safetensors"))
    assert (a.model_name, a.model_kwargs, a.class_names) == (b.model_name, b.model_kwargs, b.class_names)
    assert b.class_names == LABELS7 and b.provenance["source"] == "transformers"
    for (k, v), (k2, v2) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert k == k2 and bool((v == v2).all()), k


@pytest.mark.parametrize("change, message", [
    ({"image_size": 224}, "image_size 224 and patch_size 16; expected a Hugging Face ViT"),
    ({"patch_size": 32}, "patch_size 32"),
    ({"hidden_size": 512}, "hidden_size 512"),
    ({"model_type": "deit"}, "is a 'deit' model"),
])
def test_a_config_that_is_not_a_vit_16_at_384_is_refused_with_what_it_is(hf_folder, tmp_path, change, message):
    folder = tmp_path / "other"
    shutil.copytree(hf_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(BuildError, match=message) as info:
        _export(folder, tmp_path / "out")
    if "hidden_size" not in change:  # a ViT of another size or patch: how to get one vitrt takes
        assert "fine-tune the model at 384" in str(info.value)


def test_conversion_reads_transformers_5_in_memory_names_too(hf_folder):
    """A state dict saved with torch.save(model.state_dict()) under transformers 5 uses its new names
    (layers.N.attention.q_proj): the same timm tensors come out."""
    from safetensors.torch import load_file
    from transformers import ViTForImageClassification

    from export.checkpoints import convert_hf_state

    legacy = convert_hf_state(load_file(hf_folder / "model.safetensors"), 2)
    memory = convert_hf_state(ViTForImageClassification.from_pretrained(hf_folder).state_dict(), 2)
    assert legacy.keys() == memory.keys()
    assert all(np.array_equal(legacy[k].numpy(), memory[k].numpy()) for k in legacy)
    with pytest.raises(BuildError, match="no classifier"):
        convert_hf_state({k: v for k, v in load_file(hf_folder / "model.safetensors").items()
                          if not k.startswith("classifier")}, 2)


@pytest.fixture(scope="module")
def finetune5(tmp_path_factory):
    """A timm fine-tune of the small ViT with a 5-class head, saved as .safetensors (as timm's train.py)."""
    import torch
    from safetensors.torch import save_file

    from conftest import MODEL, SMALL_KWARGS
    from export.weights import create_model

    torch.manual_seed(5)
    model = create_model(MODEL, {**SMALL_KWARGS, "num_classes": 5})
    path = tmp_path_factory.mktemp("ft") / "ft5.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def test_a_timm_finetune_gets_its_head_from_the_checkpoint(finetune5, tmp_path, photos):
    from conftest import SMALL_KWARGS

    names = tmp_path / "names.json"
    names.write_text(json.dumps({str(i): f"defect {i}" for i in range(5)}))
    onnx = _export(finetune5, tmp_path, model_kwargs=SMALL_KWARGS, class_names=str(names))
    with vitrt.Engine(onnx) as engine:
        assert engine.metadata.num_classes == 5 and engine.labels == tuple(f"defect {i}" for i in range(5))
        assert engine.metadata.data["model"]["kwargs"] == {**SMALL_KWARGS, "num_classes": 5}
        assert engine.metadata.data["weights"] == {"source": "file", "file": "ft5.safetensors",
                                                   "sha256": engine.metadata.data["weights"]["sha256"]}  # no path
    # the batch job's topk_label and `vitrt predict` show the names
    pq = pytest.importorskip("pyarrow.parquet")
    from vitrt.jobs.local import run

    src = tmp_path / "photos"
    src.mkdir()
    for photo in photos[:3]:
        shutil.copy(photo, src / photo.name)
    with vitrt.Engine(onnx) as engine:
        run(engine, src, tmp_path / "out", task="predict", topk=3, progress=False)
        want = {p.name: [q.label for q in engine.predict(p, topk=3)] for p in src.iterdir()}
    table = pq.read_table(tmp_path / "out").to_pydict()
    assert {Path(f).name: labels for f, labels in zip(table["path"], table["topk_label"])} == want
    assert all(label.startswith("defect ") for labels in want.values() for label in labels)
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "vitrt", "predict", str(photos[0]), "--engine", str(onnx), "--topk", "2"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "defect " in out.stdout, out.stderr
    wrong = tmp_path / "three.txt"
    wrong.write_text("a\nb\nc\n")
    with pytest.raises(BuildError, match="has 3 names and the model's head 5 classes"):
        _export(finetune5, tmp_path / "x", model_kwargs=SMALL_KWARGS, class_names=str(wrong))


def test_a_mismatch_that_is_not_the_head_names_the_fix(finetune5, tmp_path):
    with pytest.raises(BuildError) as info:
        _export(finetune5, tmp_path, model_kwargs={"depth": 3, "embed_dim": 64, "num_heads": 2})
    msg = str(info.value)
    assert "does not fit" in msg and "MODEL=" in msg and "--model-kwargs" in msg


@pytest.mark.parametrize("form", ["txt", "list", "object", "hf", "timm"])
def test_class_names_in_every_form(tmp_path, form):
    from export.checkpoints import read_class_names

    names = ["cat", "dog", "horse, pony"]
    path = tmp_path / ("n.txt" if form == "txt" else "n.json")
    path.write_text({"txt": "cat\ndog\nhorse, pony\n", "list": json.dumps(names),
                     "object": json.dumps({"2": "horse, pony", "0": "cat", "1": "dog"}),
                     "hf": json.dumps({"model_type": "vit", "id2label": {"0": "cat", "1": "dog", "2": "horse, pony"}}),
                     "timm": json.dumps({"architecture": "vit_base_patch16_384", "label_names": names})}[form])
    assert read_class_names(path) == names


@pytest.mark.parametrize("text, message", [("a\n\nb\n", "name 1 is blank"), ('{"0": "a", "2": "b"}', "expected 0..1"),
                                           ("[1, 2]", "holds a list"), ("", "no names")])
def test_bad_class_names_say_what_is_wrong(tmp_path, text, message):
    from export.checkpoints import read_class_names

    path = tmp_path / "n.txt"
    path.write_text(text)
    with pytest.raises(BuildError, match=message):
        read_class_names(path)


def _build_named(finetune5, out, names: list[str], **opts):
    """Build the fine-tune's set into ``out`` with ``names`` as its CLASS_NAMES; (built, log lines)."""
    from conftest import SMALL_KWARGS
    from export.build import BuildOptions, build
    from export.gate import TOY_VIT_GATE

    logs = []
    path = out.parent / "names.txt"
    path.write_text("\n".join(names) + "\n")
    built = build(BuildOptions(weights=str(finetune5), model_kwargs=SMALL_KWARGS, output_dir=out, name="m",
                               class_names=str(path), gate=TOY_VIT_GATE, **opts), log=logs.append)
    return built, logs


def test_renaming_rewrites_metadata_only(finetune5, tmp_path):
    """New CLASS_NAMES on a built set: no graph rebuilt (the fp32 export and the int8-cpu pass are not run
    again), every file's names replaced atomically, and the variant still up to date on the next build."""
    def run(names):
        return _build_named(finetune5, tmp_path / "art", names, precision="int8-cpu", calib_dir="builtin", plan="no")

    built, logs = run([f"a{i}" for i in range(5)])
    assert any("wrote" in ln and "m_int8_cpu.onnx" in ln for ln in logs)
    built, logs = run([f"b{i}" for i in range(5)])
    assert not any(ln.startswith(("exported", "making")) for ln in logs), logs  # nothing rebuilt
    assert any("class names set in m.onnx, m_int8_cpu.onnx" in ln for ln in logs), logs
    for path in built.values():
        assert vitrt.Engine(path, backend="onnxruntime").labels == tuple(f"b{i}" for i in range(5))
    built, logs = run([f"b{i}" for i in range(5)])
    assert any("m_int8_cpu.onnx is up to date" in ln for ln in logs) and not any("class names" in ln for ln in logs)
    assert not list((tmp_path / "art").glob(".*tmp*"))


def test_renaming_reaches_the_plan_and_its_sidecar_only(finetune5, tmp_path):
    """The same with a TensorRT-RTX plan in the set: the new names land in its sidecar, the plan file's
    bytes stay as built (no plan rebuilt), and the sidecar still names the plan's sha256."""
    pytest.importorskip("tensorrt_rtx")
    from vitrt.artifacts import sidecar_path
    from vitrt.metadata import sha256_file

    def run(names):
        return _build_named(finetune5, tmp_path / "art", names, precision="fp16", plan="yes", trt="tensorrt-rtx")

    built, _ = run([f"a{i}" for i in range(5)])
    plan = next(p for k, p in built.items() if k.startswith("plan_"))
    before = sha256_file(plan)
    built, logs = run([f"b{i}" for i in range(5)])
    assert not any(ln.startswith(("exported", "making", "building")) for ln in logs), logs  # nothing rebuilt
    side = json.loads(sidecar_path(plan).read_text())
    assert side["class_names"] == [f"b{i}" for i in range(5)]
    assert sha256_file(plan) == before == side["plan"]["sha256"]


# --- timm's other 384 ViTs, small -------------------------------------------------------------------------
FAMILIES = {  # the tested names (README, "Your own model"): each at depth 1 with its real width and data config
    "vit_small_patch16_384.augreg_in21k_ft_in1k": 384,
    "vit_base_patch16_384.augreg_in21k_ft_in1k": 768,
    "vit_large_patch16_384.augreg_in21k_ft_in1k": 1024,
    "vit_base_patch16_384.orig_in21k_ft_in1k": 768,
    "deit_base_patch16_384": 768,
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_timms_other_384_vits_build_and_match_timm(name, tmp_path, photos):
    """MODEL=<name> with WEIGHTS=random at depth 1: the data config is timm's own for that name (DeiT:
    ImageNet's mean and std), the width reaches the outputs, and the fp32 ONNX matches the timm model on
    timm's own transform of real photos."""
    import timm.data
    import torch
    from PIL import Image

    from export.weights import load

    onnx = _export("random", tmp_path, model=name, model_kwargs={"depth": 1})
    loaded = load(name, "random", seed=0, model_kwargs={"depth": 1})
    dc = timm.data.resolve_model_data_config(loaded.model)
    transform = timm.data.create_transform(**dc)
    with vitrt.Engine(onnx) as engine:
        meta = engine.metadata
        assert meta.data["model"]["num_features"] == FAMILIES[name] and meta.data["outputs"]["embedding"]["shape"] == ["N", FAMILIES[name]]
        assert list(meta.data_config["mean"]) == list(dc["mean"]) and meta.data_config["interpolation"] == dc["interpolation"]
        for photo in photos[:3]:
            got = engine.infer(engine.preprocess(photo)[None])
            with torch.inference_mode():
                x = transform(Image.open(photo).convert("RGB"))[None]
                want = loaded.model.forward_head(loaded.model.forward_features(x), pre_logits=True)
            assert cosine(got["embedding"][0], want[0].numpy()) >= 0.99999
    if name.startswith("deit"):
        assert tuple(meta.data_config["mean"]) == (0.485, 0.456, 0.406)


@pytest.mark.parametrize("proc", [
    {"size": 384},  # ViTFeatureExtractor's legacy form (google/vit-* folders)
    {"size": [384, 384]},
    {"size": {"height": 384, "width": 384}},
    {"size": 438, "do_center_crop": True, "crop_size": 384},  # legacy ints with a crop
    {"size": {"shortest_edge": 438}, "do_center_crop": True, "crop_size": {"height": 384, "width": 384}},
])
def test_every_processor_size_form_transformers_reads_gives_its_pixels(tmp_path, photos, proc):
    """Each form of ``size`` / ``crop_size`` transformers' ViT processor accepts becomes the data config whose
    crops equal the processor's own resized (and cropped) image, pixel for pixel."""
    from PIL import Image
    from transformers import ViTImageProcessorPil

    from export.checkpoints import hf_data_config

    cfg = {"image_processor_type": "ViTImageProcessor", "do_resize": True, "resample": 2, **proc}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    hf = ViTImageProcessorPil.from_pretrained(tmp_path)
    data = hf_data_config(cfg)
    for photo in photos[:3]:
        want = hf(Image.open(photo).convert("RGB"), do_rescale=False, do_normalize=False,
                  return_tensors="np")["pixel_values"][0].transpose(1, 2, 0).round().astype(np.uint8)
        assert want.shape == (384, 384, 3)
        assert np.array_equal(vitrt.preprocess(photo, data), want), (proc, photo.name)


def test_a_processor_size_of_another_form_is_refused():
    from export.checkpoints import hf_data_config

    with pytest.raises(BuildError, match="size '384'; expected an int, \\[height, width\\]"):
        hf_data_config({"size": "384"})
    with pytest.raises(BuildError, match="a longest_edge or other keys resize differently"):  # caps the long side
        hf_data_config({"size": {"shortest_edge": 384, "longest_edge": 600}})
