"""The parity gate's metrics over several random-init seeds: where the INT8/FP8 limits come from.

For each seed: the fp32 export, then the int8 and fp8 variants (builtin calibration, max), each
compared with PyTorch FP32 on the gate's image set; failures are recorded, not fatal. Writes
reports/gate_spread.{json,md}: per precision, subset, output and metric, the value of every seed
and the worst. The limits in export/gate.py cite this report's numbers.

    python -m benchmarks.gate_spread --seeds 0,1,2,3,99              # the full ViT-B/16-384 (~4 min a seed)
    python -m benchmarks.gate_spread --small --seeds 0,1,2,3,4,5,6,7  # the 2-block test ViT (seconds)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .common import REPORTS, markdown_table, write_reports

#: logit_err (logits only): the worst logit error in units of the reference logits' spread; the
#: gate's decisive_margin for top-k agreement is derived from it (export/gate.py).
METRICS = ("cosine_min", "cosine_mean", "logit_err")


def run(seeds: list[int], work: Path, small: bool, precisions=("fp16", "int8", "fp8", "int8-cpu"), log=print,
        **options) -> dict:
    """``options``: BuildOptions of the variant passes (quantize_op_types, calib_method, ...), one change
    at a time against the defaults (docs/precision.md, the INT8/FP8 recipe)."""
    from export.build import BuildOptions, build
    from vitrt.artifacts import parity_path

    kwargs = {"depth": 2, "embed_dim": 64, "num_heads": 2} if small else None
    rows: dict[str, dict] = {}
    for seed in seeds:
        t0 = time.perf_counter()
        out = work / f"seed{seed}"
        built = build(BuildOptions(weights="random", seed=seed, model_kwargs=kwargs, output_dir=out, name="m",
                                   precision=",".join(precisions), calib_dir="builtin", plan="no",
                                   allow_parity_failure=True, gate=[], **options), log=lambda m: None)
        for precision in precisions:
            path = built[precision]
            report = json.loads((parity_path(path) if parity_path(path).is_file()
                                 else parity_path(path, failed=True)).read_text())
            rows.setdefault(precision, {})[str(seed)] = {
                subset: {o: {m: report["metrics"][subset][o][m] for m in METRICS if m in report["metrics"][subset][o]}
                         for o in ("logits", "embedding")}
                for subset in report["metrics"]}
        log(f"seed {seed}: {time.perf_counter() - t0:.0f} s")
    return {"model": "small test ViT (depth 2, width 64)" if small else "vit_base_patch16_384 (random init)",
            "calibration": f"builtin (32 images), {options.get('calib_method', 'auto')}", "options": options,
            "seeds": seeds, "values": rows}


def to_markdown(data: dict) -> str:
    header = ["precision", "subset", "output", "metric"] + [f"seed {s}" for s in data["seeds"]] + ["worst"]
    table = []
    for precision, by_seed in data["values"].items():
        first = next(iter(by_seed.values()))
        for subset, outs in first.items():
            for output in outs:
                for metric in (m for m in METRICS if m in outs[output]):
                    vals = [by_seed[str(s)][subset][output][metric] for s in data["seeds"]]
                    worst = max(vals) if metric == "logit_err" else min(vals)
                    table.append([precision, subset, output, metric] + [f"{v:.4f}" for v in vals] + [f"{worst:.4f}"])
    return f"Gate metrics over seeds: {data['model']}, calibration {data['calibration']}\n\n" + markdown_table(
        header, table, "llll" + "r" * (len(header) - 4))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2,3,99", help="random-init seeds (default: %(default)s)")
    p.add_argument("--small", action="store_true", help="the 2-block test ViT instead of ViT-B/16-384 (default: off)")
    p.add_argument("--work", type=Path, default=Path("reports/gate_spread_work"),
                   help="where the per-seed builds go (default: %(default)s)")
    p.add_argument("--out", type=Path, default=REPORTS, help="report folder (default: %(default)s)")
    p.add_argument("--precisions", default="fp16,int8,fp8,int8-cpu", help="variants to measure (default: %(default)s)")
    p.add_argument("--quantize-op-types", default=None, metavar="OPS",
                   help="op types int8/fp8 quantize, e.g. MatMul (default: the build's)")
    p.add_argument("--calib-method", default=None, help="max or entropy (default: the build's)")
    p.add_argument("--quant-recipe", default=None, help="accurate, smooth, fp32 or fast (default: the build's)")
    p.add_argument("--cpu-recipe", default=None, help="int8-cpu: nncf, modelopt, smooth or ort (default: the build's)")
    p.add_argument("--name", default=None, help="report name (default: gate_spread[_small])")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    options = {k: v for k, v in (("quantize_op_types", args.quantize_op_types and args.quantize_op_types.split(",")),
                                 ("calib_method", args.calib_method), ("quant_recipe", args.quant_recipe),
                                 ("cpu_recipe", args.cpu_recipe)) if v}
    precisions = tuple(args.precisions.split(","))
    if "int8-cpu" in precisions:  # the build checks the same; failing here saves the first seed's export
        from export.defaults import CPU_RECIPE
        from export.precision import check_cpu_recipe
        from vitrt.errors import BuildError

        try:
            check_cpu_recipe(args.cpu_recipe or CPU_RECIPE, args.calib_method or "auto",
                             options.get("quantize_op_types"))
        except BuildError as exc:
            p.error(f"{exc} (or leave int8-cpu out of --precisions)")
    data = run(seeds, args.work, args.small, precisions, **options)
    md = to_markdown(data)
    write_reports(args.name or ("gate_spread_small" if args.small else "gate_spread"), data, md, folder=args.out)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
