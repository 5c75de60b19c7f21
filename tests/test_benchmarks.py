"""make parity / make bench: the metrics and report builders on inputs whose answers are known, and a
quick end-to-end run of both on the small ViT."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from benchmarks import bench, common, parity
from vitrt.errors import InputError


# --- timing math (a fake clock: no timed tests) -----------------------------------------------------
def test_measure_and_summarize_with_a_fake_clock(monkeypatch):
    clock = {"t": 100.0}
    costs = iter([0.5] * 2 + [0.010, 0.020, 0.030, 0.040] + [0.010] * 100)  # 2 warm-ups, then timed calls

    def fn():
        clock["t"] += next(costs)

    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock["t"])
    m = bench.measure(fn, warmup=2, min_iters=4, seconds=0.0)
    assert m["iters"] == 4 and m["seconds"] == pytest.approx(0.1)
    assert m["p50"] == pytest.approx(25.0) and m["p90"] == pytest.approx(37.0) and m["p99"] == pytest.approx(39.7)
    s = bench.summarize(m, batch=8)
    assert s["img_s"] == pytest.approx(8 * 4 / 0.1)  # images over the timed seconds, warm-up excluded
    m = bench.measure(fn, warmup=0, min_iters=1, seconds=0.05)  # duration-bound: 5 more calls of 10 ms
    assert m["iters"] == 5


def test_percentiles_match_numpy():
    x = np.random.default_rng(0).exponential(0.01, 1000)
    p = common.percentiles(x)
    assert p == {"p50": pytest.approx(1e3 * np.percentile(x, 50)), "p90": pytest.approx(1e3 * np.percentile(x, 90)),
                 "p99": pytest.approx(1e3 * np.percentile(x, 99))}


def test_the_openvino_peer_follows_a_stored_measurement_or_both_are_timed(monkeypatch):
    from benchmarks import cpu_peers
    from benchmarks.cpu_peers import OPENVINO_CANDIDATES, OPENVINO_PEER, openvino_rows

    monkeypatch.setattr(cpu_peers, "missing", lambda package: None)  # every package here
    for isa, (row, figures) in OPENVINO_PEER.items():
        assert row in OPENVINO_CANDIDATES and " ms" in figures and "MEASURE" not in figures  # the figures that chose it
        assert openvino_rows(("AVX2", "FMA", isa))[0] == (row,)
    # the CPU's int8 kernel names the row: AMX and AVX-VNNI CPUs have AVX2 too, and no figure of theirs is stored
    for isa in (("AVX2", "FMA", "AVX-VNNI"), ("AVX2", "AVX-512", "AVX-512 VNNI", "AMX-INT8"), ("SSE4.2",)):
        rows, why, cannot = openvino_rows(isa)
        assert rows == OPENVINO_CANDIDATES and "both timed" in why and cannot == {}, isa


def test_an_openvino_row_whose_package_is_missing_is_left_out_alone(monkeypatch):
    """Without NNCF, OpenVINO FP32 still runs where both are timed (it was dropped with NNCF) and in place
    of a measured NNCF INT8 pick; without OpenVINO, neither; each left-out row says why."""
    from benchmarks import cpu_peers

    monkeypatch.setattr(cpu_peers, "missing", lambda package: f"{package} absent" if package == "nncf" else None)
    assert cpu_peers.openvino_rows(("AVX-VNNI",))[::2] == (("OpenVINO FP32",), {"OpenVINO NNCF INT8": "nncf absent"})
    # a measured NNCF INT8 pick (AVX-512 VNNI) that cannot run: OpenVINO FP32 runs in its place
    assert cpu_peers.openvino_rows(("AVX2", "AVX-512 VNNI")) == (
        ("OpenVINO FP32",), cpu_peers.openvino_rows(("AVX2", "AVX-512 VNNI"))[1], {"OpenVINO NNCF INT8": "nncf absent"})
    assert "cannot run here" in cpu_peers.openvino_rows(("AVX-512 VNNI",))[1]
    assert cpu_peers.openvino_rows(("AVX2",)) == (("OpenVINO FP32",), cpu_peers.openvino_rows(("AVX2",))[1], {})
    monkeypatch.setattr(cpu_peers, "missing", lambda package: f"{package} absent")
    assert cpu_peers.openvino_rows(("AVX-VNNI",))[::2] == ((), {"OpenVINO NNCF INT8": "openvino absent",
                                                                "OpenVINO FP32": "openvino absent"})


def test_the_verdict_calls_overlapping_spreads_within_noise():
    """Made-up points (ms): a 1.2x lead whose calls overlap the peer's is "within noise", as is a 0.95x
    one; apart, the ratio decides; a peer below PEER_WORST does not count."""
    from benchmarks.standing import verdict

    def row(p50, lo, hi):
        return {"1": {"p50": p50, "min": lo, "max": hi, "iters": 5}}

    acc = {"v": {"cos_mean": 0.999, "cos_worst": 0.998}, "peer": {"cos_mean": 0.999, "cos_worst": 0.99},
           "inaccurate": {"cos_mean": 0.9, "cos_worst": 0.5}}
    cases = [((100, 90, 130), (120, 110, 140), "within noise"),   # 1.2x, but 130 ms >= the peer's fastest 110
             ((100, 95, 105), (120, 110, 140), "first"),          # 1.2x, apart
             ((100, 95, 105), (90, 80, 94), "not first"),         # 0.9x, apart
             ((100, 90, 110), (95, 85, 120), "within noise")]     # 0.95x, overlapping
    for mine, theirs, call in cases:
        results = {"model": {"v": row(*mine), "peer": row(*theirs), "inaccurate": row(10, 9, 11)}}
        p = verdict(results, acc, "v", [1])["points"]["model b1"]
        assert p["fastest_peer"] == "peer" and p["call"] == call and p["first"] == (call == "first"), (mine, theirs)
        assert p["ratio"] == pytest.approx(theirs[0] / mine[0]) and p["spread_ms"]["v"] == list(mine[1:])


def test_markdown_table():
    md = common.markdown_table(["a", "b"], [["x", "1.0"], ["y", "2.0"]])
    assert md.splitlines() == ["| a | b |", "| --- | ---: |", "| x | 1.0 |", "| y | 2.0 |"]


# --- parity metrics -----------------------------------------------------------------------------------
def test_accuracy_counts_only_labelled_items():
    logits = np.zeros((4, 10))
    logits[0, 3] = 5      # top-1 3
    logits[1, [1, 2]] = [5, 4]  # top-1 1, label 2 in top-5
    logits[2, 7] = 5
    acc = parity.accuracy(logits, [3, 2, 9, None])  # row 2: top-5 is 7, 0, 1, 2, 3 (stable ties)
    assert acc == {"top1": pytest.approx(1 / 3), "top5": pytest.approx(2 / 3), "n": 3}
    assert parity.accuracy(logits, [None] * 4) is None


def test_evaluate_identical_and_disturbed_candidates():
    rng = np.random.default_rng(0)
    ref = {"logits": rng.normal(size=(6, 1000)), "embedding": rng.normal(size=(6, 768))}
    flipped = {"logits": -ref["logits"], "embedding": ref["embedding"] * 2.0}  # cos -1 / +1
    res = parity.evaluate(ref, {"same": {"outputs": ref, "backend": "x", "precision": "fp32"},
                                "flipped": {"outputs": flipped, "backend": "y", "precision": "int8"}}, [None] * 6)
    same, bad = res["candidates"]["same"]["metrics"], res["candidates"]["flipped"]["metrics"]
    assert same["logits"]["cosine_min"] == pytest.approx(1.0) and same["logits"]["top1_agree"] == 1.0
    assert bad["logits"]["cosine_mean"] == pytest.approx(-1.0) and bad["logits"]["top1_agree"] == 0.0
    assert bad["embedding"]["cosine_min"] == pytest.approx(1.0) and bad["embedding"]["max_abs"] > 1.0
    res["meta"] = {"model": "m", "weights": "random", "images": 6, "image_set": "t", "date": "d",
                   "machine": {"cpu": "c"}}
    md = parity.to_markdown(res)
    assert "| flipped | y | -1.0000000 |" in md and "top-1 acc" not in md


# --- labels and image sets ---------------------------------------------------------------------------
def test_labels_from_csv_and_class_folders(tmp_path, photos):
    import shutil

    csv = tmp_path / "labels.csv"
    csv.write_text("file,class_index\na.jpg,281\nb.png,3\n")
    assert parity.read_labels(tmp_path, csv) == {"a.jpg": 281, "b.png": 3}
    csv.write_text("a.jpg,tabby\n")
    with pytest.raises(InputError, match="expected 'file,class_index'"):
        parity.read_labels(tmp_path, csv)
    root = tmp_path / "val"
    (root / "n02123045").mkdir(parents=True)
    (root / "7").mkdir()
    shutil.copy(photos[1], root / "n02123045" / "cat.png")
    shutil.copy(photos[0], root / "7" / "x.png")
    assert parity.read_labels(root, None) == {"n02123045/cat.png": 281, "7/x.png": 7}
    items = parity.image_set(root)
    assert [(i["name"], i["label"]) for i in items] == [("7/x.png", 7), ("n02123045/cat.png", 281)]
    (root / "cats").mkdir()
    with pytest.raises(InputError, match="class folder 'cats'"):
        parity.read_labels(root, None)


def test_default_image_set_is_deterministic():
    a, b = parity.image_set(synthetic=4), parity.image_set(synthetic=4)
    assert [i["name"] for i in a] == [i["name"] for i in b] and all(x["data"] == y["data"] for x, y in zip(a, b))
    assert sum(i["name"].startswith("synthetic") for i in a) == 4 and len(a) >= 12


# --- both commands, end to end, on the small ViT --------------------------------------------------------
@pytest.fixture(scope="module")
def small_artifacts(small_build):
    """The session's small build (every precision, name "m"; tests/conftest.py): no second build."""
    return small_build[0]["fp32"].parent


def test_parity_end_to_end(small_artifacts, tmp_path):
    res = parity.run(small_artifacts, out=tmp_path, synthetic=4, progress=False)
    assert set(res["candidates"]) == {"m.onnx", "m_fp16.onnx", "m_int8.onnx", "m_fp8.onnx", "m_int8_cpu.onnx"}
    fp32 = res["candidates"]["m.onnx"]["metrics"]
    assert fp32["embedding"]["cosine_min"] > 0.99999 and fp32["logits"]["top1_agree"] == 1.0
    data = json.loads((tmp_path / "parity.json").read_text())
    assert data["meta"]["images"] == len(data["meta"]["image_names"]) >= 12
    assert (tmp_path / "parity.md").read_text().startswith("Parity vs PyTorch FP32")
    assert (tmp_path / "parity.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_quick_end_to_end(small_artifacts, tmp_path):
    """`make bench` (quick): PyTorch eager FP32, the artifact the fleet rule picks here, and OpenVINO's
    best accurate path on this CPU (cpu_peers.OPENVINO_PEER's measured pick, or both candidates), in five
    interleaved rounds: model only at batches 1 and 8, end to end at 1 (bench.QUICK); accuracy on 8
    photos; the in-process batching rows; a progress line per row and phase."""
    from benchmarks.cpu_peers import openvino_rows
    from vitrt.cpu import read_cpuinfo

    lines = []
    res = bench.run(small_artifacts, threads=2, out=tmp_path, log=lines.append, concurrency=(1, 4))
    names = list(res["results"]["model"])
    cpu = bench.torch_device() == "cpu"
    if cpu:
        ov = list(openvino_rows(read_cpuinfo().isa)[0])  # the measured pick, or both where none is stored
        assert names[0] == "PyTorch eager FP32" and names[1].startswith("m_int8_cpu.onnx (") and names[2:] == ov
    assert res["config"]["quick"] and res["config"]["batches"] == [1, 8] and res["config"]["rounds"] == 5
    for mode, sizes in (("model", {"1", "8"}), ("e2e", {"1"})):
        assert list(res["results"][mode]) == names
        for name, per_batch in res["results"][mode].items():
            assert set(per_batch) == sizes
            for r in per_batch.values():
                # at least half the runs take >= p50, so the mean is >= p50 / 2, and the mean is at most
                # the slowest run (p99 interpolates up to it): both fail when a unit (s, ms) is mixed up
                mean_ms = r["seconds"] / r["iters"] * 1000
                assert r["iters"] == 5 and r["img_s"] > 0 and r["p50"] / 2 <= mean_ms <= 2 * r["p99"]
                assert r["min"] <= r["p50"] <= r["max"] and r["min"] <= mean_ms <= r["max"]  # the spread, in ms
    assert res["results"]["model"]["PyTorch eager FP32"]["1"]["vs_eager"] == pytest.approx(1.0)
    acc = res["accuracy"]  # FP32 rows exact to 1e-4; this small ViT's int8 rows near 0.999 (0.95 fails a broken one)
    assert set(acc) == set(names) and acc["PyTorch eager FP32"]["cos_worst"] == pytest.approx(1.0)
    for name, a in acc.items():
        assert a["n"] == 8 and a["cos_worst"] > (0.9999 if "FP32" in name else 0.95), (name, a)
    v = res["verdict"]
    if cpu:
        assert v["default"] == names[1] and set(v["points"]) == {"model b1", "model b8", "e2e b1"}
        for p in v["points"].values():
            assert p["calls"] == [5, 5] and p["call"] in ("first", "not first", "within noise")
    conc = res["concurrency"]
    assert [(r["batching"], r["callers"]) for r in conc] == [(False, 1), (False, 4), (True, 1), (True, 4)]
    assert all(r["requests"] == r["callers"] and r["img_s"] > 0 for r in conc)
    assert all(r["threads"] == 2 for r in conc)  # the benchmark's --threads, not the Engine's default
    assert 0 < res["peak_rss_gb"]["self"] < 6  # the bound for the quick run (the full model: docs)
    phases = [ln.split("] ", 1)[1] for ln in lines]
    assert any(p.startswith("bench: opening m_int8_cpu.onnx") for p in phases)
    assert [p for p in phases if p.startswith("batch ")] == [
        f"batch {b}, {m}, round {k}/5: {len(names)} rows" for b, m in ((1, "model"), (1, "e2e"), (8, "model"))
        for k in range(1, 6)]
    assert len([p for p in phases if p.startswith("timing ")]) == 15 * len(names)  # a line per row and phase
    md = (tmp_path / "bench.md").read_text()
    assert "Model only" in md and "In-process batching" in md and "peak resident memory" in md
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_full_builds_every_peer(small_artifacts, tmp_path):
    """QUICK=0's rows on the small ViT (torch.compile and PT2E left out here: their compilation is the
    slow part, and each is one call of PyTorch's own): every CPU peer runs or is listed as skipped, and
    each artifact runs on both CPU runtimes; each row in a process of its own (bounded memory), its
    progress passed on, its memory and the machine probe reported."""
    from benchmarks.cpu_peers import missing

    lines = []
    res = bench.run(small_artifacts, quick=False, threads=2, batches=[1], seconds=0.0, out=tmp_path, log=lines.append,
                    include_compile=False, only=["m.onnx", "m_int8_cpu.onnx"], concurrency=())
    names = list(res["results"]["model"])
    cpu = bench.torch_device() == "cpu"
    autocast = "PyTorch FP16 autocast" if not cpu else "PyTorch bf16 autocast"
    assert names[:2] == ["PyTorch eager FP32", autocast]
    peers = ["PyTorch dynamic int8"] if cpu else []
    if cpu:
        ov = not (missing("openvino") or missing("nncf"))
        bf16 = {"AVX-512 BF16", "AMX-BF16"} & set(res["machine"]["cpu_isa"])
        peers = (["OpenVINO FP32"] + (["OpenVINO bf16"] if bf16 else []) + ["OpenVINO NNCF INT8"] if ov else []) + peers
        assert "PyTorch PT2E int8 (Inductor)" in res["skipped"] and res["concurrency"] is None
    assert names[2:2 + len(peers)] == peers
    artifacts = [n.split(" (")[0] for n in names[2 + len(peers):]]
    assert artifacts == (["m.onnx", "m.onnx", "m_int8_cpu.onnx", "m_int8_cpu.onnx"]
                         if cpu and not missing("openvino") else ["m.onnx", "m_int8_cpu.onnx"])
    assert len(set(names)) == len(names)  # the two runtimes of one artifact are two rows
    assert all(set(per_batch) == {"1"} for per_batch in res["results"]["model"].values())
    assert all(set(per_batch) == {"1"} for per_batch in res["results"]["e2e"].values())
    assert res["accuracy"]["PyTorch eager FP32"]["cos_worst"] == pytest.approx(1.0)  # its own reference
    assert all(a["n"] == 16 for a in res["accuracy"].values())
    for name, a in res["accuracy"].items():  # as in the quick test: FP32 rows exact to 1e-4, int8 near 0.999
        assert a["cos_worst"] > (0.9999 if "FP32" in name or name.startswith("m.onnx") else 0.95), (name, a)
    rows = res["rows"]
    assert [r["name"] for r in rows] == names
    assert len({r["pid"] for r in rows}) == len(rows) and os.getpid() not in {r["pid"] for r in rows}
    # every row process loads torch and a model: well over 0.1 GB; none near the 12 GB bound
    assert all(0.1 < r["peak_rss_gb"] < 12 and r["probe_ms"] > 0 and r["seconds"] > 0 for r in rows)
    assert res["peak_rss_gb"]["children"] >= max(r["peak_rss_gb"] for r in rows) * 0.99
    phases = [ln.split("] ", 1)[1] for ln in lines]
    assert [p for p in phases if p.startswith("timing ")] == [f"timing {n}: batch 1, {m}" for n in names
                                                              for m in ("model", "e2e")]
    assert len([p for p in phases if p.startswith("row ") and " done: " in p]) == len(rows)
    assert "Row processes" in (tmp_path / "bench.md").read_text()


def test_bench_full_lists_a_failed_row_and_goes_on(small_artifacts, tmp_path):
    """A row whose process fails is named under "Not run" with its last line, and the sweep goes on; the
    reference row failing stops the sweep with what happened (no row could be compared)."""
    from benchmarks import sweep
    from vitrt.errors import VitrtError

    cfg = {**bench.FULL, "batches": [1], "e2e_batches": [1], "seconds": 0.0, "photo_step": 8}
    # artifact rows only (their processes need no torch: fast); the eager reference is the test above's
    specs = [{"kind": "artifact", "artifact": "m.onnx", "reference": "m.onnx"},
             {"kind": "artifact", "artifact": "gone.onnx", "reference": "m.onnx"},
             {"kind": "artifact", "artifact": "m_int8_cpu.onnx", "reference": "m.onnx"}]
    skipped: dict = {}
    rows = sweep.sweep(specs, small_artifacts, cfg, 2, skipped, say=lambda m: None)
    assert [r["name"].split(" (")[0] for r in rows] == ["m.onnx", "m_int8_cpu.onnx"]
    assert rows[0]["accuracy"]["cos_worst"] == pytest.approx(1.0) and rows[1]["accuracy"]["cos_worst"] < 1 - 1e-6
    assert list(skipped) == ["gone.onnx"] and "exited with 1" in skipped["gone.onnx"] and "gone.onnx" in skipped["gone.onnx"]
    with pytest.raises(VitrtError, match="reference row .*gone.onnx.*failed"):
        sweep.sweep([{**specs[1], "kind": "artifact"}], small_artifacts, cfg, 2, {}, say=lambda m: None)


def test_reports_refuse_an_empty_folder(tmp_path):
    from vitrt.errors import ArtifactError

    with pytest.raises(ArtifactError, match="no vitrt artifacts"):
        parity.run(tmp_path, out=tmp_path, progress=False)
    with pytest.raises(ArtifactError, match="no vitrt artifacts"):
        bench.run(tmp_path, out=tmp_path, progress=False)


# --- benchmarks/gpu_check.py: what can be checked without a GPU ---------------------------------------
def test_gpu_check_rtx_verdict_with_the_real_enums():
    """The refusal the GPU check expects on an H100 (sm_90): INVALID with UNSUPPORTED_CC."""
    trt = pytest.importorskip("tensorrt_rtx")
    from benchmarks.gpu_check import rtx_verdict

    h100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    cc_bit = int(trt.EngineInvalidityDiagnostics.UNSUPPORTED_CC)
    assert rtx_verdict(trt, trt.EngineValidity.INVALID, cc_bit, h100)[0] == "PASS"
    assert rtx_verdict(trt, trt.EngineValidity.INVALID, 0, h100)[0] == "FAIL"  # what a machine without a GPU says
    assert rtx_verdict(trt, trt.EngineValidity.VALID, 0, h100)[0] == "FAIL"
    ada = {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}
    assert rtx_verdict(trt, trt.EngineValidity.VALID, 0, ada)[0] == "PASS"


def test_gpu_check_without_a_gpu_fails_cleanly_with_a_report(tmp_path, capsys):
    from benchmarks import gpu_check
    from vitrt.cuda import gpu_count

    if gpu_count():
        pytest.skip("a GPU is here: benchmarks/gpu_check.sh runs the real thing")
    gpu_check.RESULTS.clear()
    assert gpu_check.main(["--out-dir", str(tmp_path)]) == 1
    report = json.loads((tmp_path / "no-gpu.json").read_text())
    assert report["results"][0]["check"] == "gpu" and report["results"][0]["status"] == "FAIL"
    assert "1 failed" in capsys.readouterr().out


# --- benchmarks/batch.py and benchmarks/serve.py, small and short ------------------------------------
def test_batch_benchmark_end_to_end(small_onnx, tmp_path):
    from benchmarks import batch

    r = batch.run(small_onnx, tmp_path, n=8, workers=(1, 2), batches=(1, 4), log=lambda m: None)
    assert len(r["sweep"]) == 4 and all(x["img_s"] > 0 and x["vs_model"] > 0 for x in r["sweep"])
    assert r["naive_img_s"] > 0 and r["stages"]["decode_ms"] > 0 and r["gpu"]["workers_needed"] > 0
    md = (tmp_path / "batch.md").read_text()
    assert "end to end / model" in md and "bound by" in md


def test_serve_benchmark_end_to_end(small_onnx, tmp_path):
    from benchmarks import serve
    from benchmarks.serve_process import serve_python

    if serve_python() is None:
        pytest.skip("no serving venv (`make test` builds .venv-serve)")
    r = serve.run(small_onnx, tmp_path, step_s=1.0, max_requests=20, concurrency=(1, 2), log=lambda m: None)
    assert [s["clients"] for s in r["steps"]] == [1, 2] and all(s["accepted"] > 0 for s in r["steps"])
    assert all(s["sent"] <= 20 for s in r["steps"]) and r["goals"]["saturation_vs_ceiling"] > 0
    paired = r["paired_c1"]  # concurrency 1 alternated with the in-process call
    assert paired["n"] == 5 and paired["server_p50"] > 0 and paired["inprocess_p50"] > 0
    assert r["goals"]["c1_p50_minus_inprocess_b1_p50_ms"] == paired["p50_difference_ms"]
    # Triton's own split of a request's time adds up: queue and compute inside "in server"
    split = r["steps"][0]["server_ms"]
    assert 0 < split["queue"] + split["compute_infer"] <= split["success"] * 1.01
    assert (tmp_path / "serve.md").read_text().startswith("Serving small.onnx")
    assert (tmp_path / "serve.png").read_bytes()[:4] == b"\x89PNG"
