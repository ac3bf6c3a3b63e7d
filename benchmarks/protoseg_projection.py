"""ProtoSeg's projection variants against the linear head, side by side.

The head of methods.md adds a projection MLP (1x1 conv Cin -> Cin, ReLU, 1x1 conv Cin -> D) before the
prototype matmul, then a normalisation of the projected features (``model.protoseg.projection_norm``:
``batch`` by default, ``spatial_rms`` in the shapes config, ``none`` the paper's, ``released`` the
release's width-axis L2), and the release's head a 3x3 ``cls_head`` before it;
``model.protoseg.projection=none`` embeds the decoder features directly. This script times inference
(``Segmentor.predict``) and the training step of the chosen variants in the same interleaved rounds,
with each one's FLOPs and its time ratio to the linear head:

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/protoseg_projection.py --repeats 30
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/protoseg_projection.py --variants linear \
        "protoseg (mlp, none)" "protoseg (mlp, batch)" --repeats 40
    PYTHONPATH=src python benchmarks/protoseg_projection.py --preset gpu --device cuda --repeats 30
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from protoseg.launcher import apply_process_defaults

apply_process_defaults()

import torch  # noqa: E402

from protoseg.benchmark.settings import preset_settings  # noqa: E402
from protoseg.benchmark.steps import MethodBench  # noqa: E402
from protoseg.benchmark.suites import add_flops, compare_times, inference_flops, step_flops  # noqa: E402
from protoseg.benchmark.tables import markdown_table  # noqa: E402
from protoseg.benchmark.timing import interleaved_times  # noqa: E402

VARIANTS = {
    "linear": ("linear", []),
    "protoseg (mlp, none)": ("protoseg", ["model.protoseg.projection_norm=none"]),
    "protoseg (mlp, batch)": ("protoseg", ["model.protoseg.projection_norm=batch"]),
    "protoseg (mlp, released)": ("protoseg", ["model.protoseg.projection_norm=released"]),
    "protoseg (mlp, spatial_rms)": ("protoseg", ["model.protoseg.projection_norm=spatial_rms"]),
    "protoseg (mlp, batch_rms)": ("protoseg", ["model.protoseg.projection_norm=batch_rms"]),
    "protoseg (released head)": (
        "protoseg",
        [
            "model.protoseg.projection_norm=released",
            "model.protoseg.cls_head=true",
            "model.protoseg.assignment=gumbel",
        ],
    ),
    "protoseg (no projection, batch)": (
        "protoseg",
        ["model.protoseg.projection=none", "model.protoseg.projection_norm=batch"],
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    if "linear" not in args.variants:
        args.variants.insert(0, "linear")
    device = torch.device(args.device)
    settings = preset_settings(args.preset, device)
    benches = {
        name: MethodBench(method, dataclasses.replace(settings, user_overrides=overrides))
        for name, (method, overrides) in VARIANTS.items()
        if name in args.variants
    }
    results = {}
    for suite, calls, count in (
        ("inference", {name: bench.infer for name, bench in benches.items()}, inference_flops),
        ("step", {name: bench.train_step for name, bench in benches.items()}, step_flops),
    ):
        methods = compare_times(interleaved_times(calls, device, args.warmup, args.repeats), "linear")
        add_flops(methods, {name: count(bench) for name, bench in benches.items()}, "linear")
        results[suite] = methods
        rows = [
            [
                name,
                values["median_ms"],
                values["ratio"],
                "{:.3f} - {:.3f}".format(*values["ratio_quartiles"]),
                values["gflops"],
                values["flop_ratio"],
            ]
            for name, values in methods.items()
        ]
        print(f"\n{suite} ({args.preset} preset, {args.repeats} interleaved rounds, ratio to linear):")
        headers = ["head", "median ms", "time ratio", "per-round ratio IQR", "GFLOP", "FLOP ratio"]
        print(markdown_table(headers, rows))
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"preset": args.preset, "device": str(device), "results": results}, file, indent=1)


if __name__ == "__main__":
    main()
