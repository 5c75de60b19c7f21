"""Each plan's time by TensorRT's rules, against the fp16 plan: a per-layer roofline on H100 and L4.

No GPU here: the model in export/plan_estimate.py gives every kernel ``max(FLOPs / peak, bytes /
bandwidth)`` at the precision its tensors have, with TensorRT's fusions (fused MHA in FP16 or 8 bits,
Q/DQ fused into the neighbouring pointwise ops). The build stores the same estimate in each int8/fp8
variant (``plan_estimate``), and vitrt.fleet ranks a plan ahead of fp16 only where it is faster.

    python -m benchmarks.plan_estimate                      # the recipes on ViT-B/16-384 and the real-weights ViT-S
    python -m benchmarks.plan_estimate --artifacts artifacts  # every ONNX variant there, from its own graph

Writes reports/plan_estimate.{json,md}; the table in docs/tensorrt.md is its output.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import REPORTS, markdown_table, write_reports

#: (label, Linear precision, attention, everything else): what each recipe's graph holds
#: (export/precision.py RECIPES; export/plan_estimate.py reads the same from a built graph).
RECIPES = [("fp16 (b16_384.plan)", "fp16", "fp16", "fp16"),
           ("int8, accurate (FP16 around)", "int8", "fp16", "fp16"),
           ("fp8, accurate (FP16 around)", "fp8", "fp16", "fp16"),
           ("fp8 + FP8 MHA (--quantize-attention)", "fp8", "fp8", "fp16"),
           ("int8, fp32 recipe (2026-12-01: FP32 around)", "int8", "fp32", "fp32")]
MODELS = {"ViT-B/16-384": (12, 768, 12, 3072), "ViT-S/16-384 (WEIGHTS=dinov2)": (12, 384, 6, 1536)}
BATCHES = (1, 32)


def graph(dims, linear: str, attention: str, around: str):
    from export.plan_estimate import LINEAR, Graph

    depth, width, heads, hidden = dims
    return Graph(depth=depth, width=width, heads=heads, hidden=hidden, tokens=577, patch_k=768, classes=1000,
                 linear=[{k: linear for k in LINEAR} for _ in range(depth)], around=around, attention=attention)


def rows_for(label: str, g) -> list[list[str]]:
    from export.plan_estimate import GPUS, estimate, speedup_vs_fp16

    out = []
    for batch in BATCHES:
        est, ratio = estimate(g, batch), speedup_vs_fp16(g, batch)
        out.append([label, str(batch)] + [f"{est[gpu]['ms']:.3f} ms ({ratio[gpu]:.2f}x)" for gpu in GPUS])
    return out


def per_layer(g, batch: int, gpu: str) -> dict[str, float]:
    """Time per layer kind (summed over blocks), in ms."""
    from export.plan_estimate import GPUS, kernel_time, kernels

    out: dict[str, float] = {}
    for k in kernels(g, batch):
        key = k["layer"].split(".", 2)[2] if k["layer"].startswith("blocks.") else k["layer"]
        out[key] = out.get(key, 0.0) + kernel_time(k, GPUS[gpu]) * 1e3
    return out


def run(artifacts: Path | None = None) -> tuple[dict, str]:
    from export.plan_estimate import GPUS, from_onnx

    data: dict = {"gpus": GPUS, "models": {}, "artifacts": {}}
    md = []
    header = ["plan", "batch"] + [f"{gpu}: time per batch (x fp16 throughput)" for gpu in GPUS]
    if artifacts is None:
        for model, dims in MODELS.items():
            table = []
            for label, lin, att, around in RECIPES:
                table += rows_for(label, graph(dims, lin, att, around))
            data["models"][model] = table
            md.append(f"### {model}\n\n" + markdown_table(header, table, "ll" + "r" * len(GPUS)))
        g16, g8 = graph(MODELS["ViT-B/16-384"], "fp16", "fp16", "fp16"), graph(MODELS["ViT-B/16-384"], "int8", "fp16", "fp16")
        g32 = graph(MODELS["ViT-B/16-384"], "int8", "fp32", "fp32")
        layers = [per_layer(x, 32, "H100 SXM") for x in (g16, g8, g32)]
        keys = list(dict.fromkeys(k for lay in layers for k in lay))
        table = [[k] + [f"{lay[k]:.3f}" if k in lay else "-" for lay in layers] for k in keys]
        table.append(["total"] + [f"{sum(lay.values()):.3f}" for lay in layers])
        data["per_layer_vit_b_h100_batch32"] = table
        md.append("### ViT-B/16-384, H100 SXM, batch 32: ms per layer kind (12 blocks)\n\n" + markdown_table(
            ["layer", "fp16", "int8 accurate", "int8 fp32 recipe"], table, "lrrr"))
    else:
        import onnx

        table = []
        for path in sorted(Path(artifacts).glob("*.onnx")):
            model = onnx.load(str(path), load_external_data=False)
            try:
                g = from_onnx(model)
            except (ValueError, StopIteration, KeyError) as exc:
                table.append([path.name, "-", f"not a ViT graph the estimate reads: {exc}"] + [""] * (len(GPUS) - 1))
                continue
            table += rows_for(f"{path.name} ({g.linear[0]['qkv']} Linear, {g.attention} attention, {g.around} around)", g)
        data["artifacts"] = table
        md.append(markdown_table(header, table, "ll" + "r" * len(GPUS)))
    return data, "\n\n".join(md)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, default=None,
                   help="estimate every ONNX variant in this folder from its graph (default: the recipes, by their layout)")
    p.add_argument("--out", type=Path, default=REPORTS, help="report folder (default: %(default)s)")
    args = p.parse_args(argv)
    data, md = run(args.artifacts)
    write_reports("plan_estimate", data, md, folder=args.out)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
