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
    assert vitrt_main(["info", str(small_onnx)]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["input"]["name"] == "image" and meta["precision"] == "fp32"


def test_helps_are_timm_style():
    for cmd in ([sys.executable, "-m", "export", "--help"], [sys.executable, "-m", "vitrt", "predict", "--help"]):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        assert "--" in out and "(default:" in out


def test_export_cli_reports_bad_weights(tmp_path):
    out = subprocess.run([sys.executable, "-m", "export", "--weights", str(tmp_path / "missing.pth"),
                          "--output-dir", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 1 and "error: weights file" in out.stderr and "WEIGHTS=random" in out.stderr
    assert list(tmp_path.iterdir()) == []
