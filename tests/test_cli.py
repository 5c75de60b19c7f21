"""The command lines: ``vitrt predict|info`` and ``python -m export``."""

from __future__ import annotations

import json
import subprocess
import sys


from vitrt.cli import main as vitrt_main


def test_predict_text_and_json(small_onnx, photos, capsys):
    assert vitrt_main(["predict", str(photos[0]), str(photos[1]), "--engine", str(small_onnx), "--topk", "3"]) == 0
    text = capsys.readouterr().out
    assert photos[0].name in text and photos[1].name in text and len(text.strip().splitlines()) == 8
    assert vitrt_main(["predict", str(photos[0]), "--engine", str(small_onnx), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["image"] == str(photos[0]) and len(data[0]["predictions"]) == 5
    assert set(data[0]["predictions"][0]) == {"index", "label", "prob"}


def test_predict_errors_exit_1(small_onnx, tmp_path, capsys):
    assert vitrt_main(["predict", str(tmp_path / "no.jpg"), "--engine", str(small_onnx)]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert vitrt_main(["predict", str(small_onnx), "--engine", str(tmp_path / "none.onnx")]) == 1
    assert "artifact" in capsys.readouterr().err


def test_info(small_onnx, capsys):
    assert vitrt_main(["info", str(small_onnx), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["input"]["name"] == "image" and meta["precision"] == "fp32"
    assert vitrt_main(["info", str(small_onnx)]) == 0
    text = capsys.readouterr().out
    assert "precision  fp32" in text and "input      image uint8 NHWC" in text and "flavour" not in text


def test_verify_applies_the_build_gate_without_torch(small_build, tmp_path, capsys):
    """`vitrt verify` reruns the build's gate from NAME.reference.npz; a reference that disagrees fails it."""

    from vitrt.verify import load_reference, save_reference

    paths, _ = small_build
    for precision in ("fp32", "int8"):
        assert vitrt_main(["verify", str(paths[precision]), "--report", str(tmp_path / "r.json")]) == 0
        out = capsys.readouterr().out
        assert "PASSED" in out and "FAIL " not in out
        report = json.loads((tmp_path / "r.json").read_text())
        assert report["passed"] and report["images"] == {"photos": 8, "synthetic": 12}
        build_report = json.loads(paths[precision].with_name(paths[precision].name + ".parity.json").read_text())
        # the same gate, the same limits (the values may differ: on some CPUs verify runs on OpenVINO)
        gate = lambda r: {k: (v["limit"], v["bound"]) for k, v in r["thresholds"].items()}  # noqa: E731
        assert gate(report) == gate(build_report)
    inputs, outputs, info = load_reference(paths["fp32"].with_name("m.reference.npz"))
    outputs["photos"]["embedding"] = outputs["photos"]["embedding"][::-1].copy()  # photos swapped: cosine drops
    save_reference(tmp_path / "bad.npz", inputs, outputs, info)
    assert vitrt_main(["verify", str(paths["fp16"]), "--reference", str(tmp_path / "bad.npz")]) == 1
    out = capsys.readouterr().out
    assert "FAIL photos.embedding.cosine_min" not in out and "FAIL embedding.cosine_min" in out and "FAILED" in out
    assert vitrt_main(["verify", str(paths["fp16"]), "--reference", str(tmp_path / "missing.npz")]) == 1
    assert "reference outputs" in capsys.readouterr().err
    # a subprocess that may not import torch: verify must not need it
    code = ("import sys; sys.modules['torch'] = None; sys.modules['timm'] = None; from vitrt.cli import main; "
            f"raise SystemExit(main(['verify', {str(paths['fp16'])!r}]))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_helps_are_timm_style():
    """Every option says its default once, as "(default: X)" (no argparse-added second one)."""
    import argparse

    from export.cli import build_parser as export_parser
    from vitrt.cli import build_parser as vitrt_parser

    parsers = [export_parser()] + [a.choices[c] for a in vitrt_parser()._actions
                                   if isinstance(a, argparse._SubParsersAction) for c in a.choices]
    for parser in parsers:
        for action in parser._actions:
            if action.option_strings and action.dest != "help" and not action.required:
                assert action.help.count("(default:") == 1, (parser.prog, action.option_strings, action.help)
    out = subprocess.run([sys.executable, "-m", "export", "--help"], capture_output=True, text=True, check=True).stdout
    assert "(default: None)" not in out and "--calib-dir" in out


def test_export_cli_reports_bad_weights(tmp_path):
    out = subprocess.run([sys.executable, "-m", "export", "--weights", str(tmp_path / "missing.pth"),
                          "--output-dir", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 1 and "error: weights file" in out.stderr and "WEIGHTS=random" in out.stderr
    assert list(tmp_path.iterdir()) == []
