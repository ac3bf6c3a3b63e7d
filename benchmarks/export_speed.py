"""Export time and inference speed of the exported files against PyTorch, side by side (CPU).

For each method: build the network (no weights are loaded: speed does not depend on them), export it
to ONNX (``protoseg.export``, dynamo exporter, opset 18, dynamic batch / size) and to ``torch.export``
(``.pt2``), then time in interleaved rounds (``protoseg.benchmark.timing``) the same batch through
PyTorch eager (the network's inference graph under ``inference_mode``), onnxruntime (CPU execution
provider) and the reloaded ``torch.export`` program, with the largest logit difference to PyTorch:

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/export_speed.py --threads 1 --repeats 20
    PYTHONPATH=src python benchmarks/export_speed.py --backbone tiny --methods protoseg --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from protoseg.launcher import apply_process_defaults

apply_process_defaults()

import torch  # noqa: E402

import protoseg  # noqa: E402
from protoseg.benchmark.tables import markdown_table  # noqa: E402
from protoseg.benchmark.timing import interleaved_times, paired_ratio  # noqa: E402
from protoseg.export import export_model, inference_graph, onnx_session, run_onnx  # noqa: E402
from protoseg.export.check import load_exported  # noqa: E402

RUNTIMES = ("pytorch", "onnxruntime", "torch_export")


def measure(method: str, args: argparse.Namespace, folder: Path) -> dict:
    torch.manual_seed(0)
    model = protoseg.create_model(
        method, num_classes=11, backbone=args.backbone, has_background=True, overrides=args.set
    ).eval()
    images = torch.randn(args.batch, 3, *args.size)
    exports = {
        runtime: export_model(model.network, folder / f"{method}{suffix}", images, runtime_format)
        for runtime, runtime_format, suffix in (
            ("onnxruntime", "onnx", ".onnx"),
            ("torch_export", "torch_export", ".pt2"),
        )
    }
    graph = inference_graph(model.network)
    session = onnx_session(exports["onnxruntime"].path, threads=args.threads)
    program = load_exported(exports["torch_export"].path, "torch_export")

    def pytorch():
        with torch.inference_mode():
            return graph(images)

    def onnxruntime():
        return run_onnx(session, images)

    def torch_export():
        with torch.inference_mode():
            return program(images)

    calls = {"pytorch": pytorch, "onnxruntime": onnxruntime, "torch_export": torch_export}
    reference = pytorch()
    differences = {name: float((call() - reference).abs().max()) for name, call in calls.items()}
    times = interleaved_times(calls, torch.device("cpu"), args.warmup, args.repeats)
    return {
        "method": method,
        "output": graph.output_name,
        "export_seconds": {name: result.seconds for name, result in exports.items()},
        "onnx_megabytes": exports["onnxruntime"].path.stat().st_size / 2**20,
        "onnx_input_shape": exports["onnxruntime"].input_shape,
        "notes": {name: result.notes for name, result in exports.items()},
        "median_ms": {name: 1000 * statistics.median(values) for name, values in times.items()},
        "ratio_to_pytorch": {name: paired_ratio(times[name], times["pytorch"]) for name in calls},
        "max_abs_diff": differences,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="tf_efficientnet_lite0", help="tiny or a timm name")
    parser.add_argument("--methods", nargs="+", default=["linear", "protoseg", "contrast", "cam"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=[128, 128], metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        results = []
        for method in args.methods:
            results.append(measure(method, args, Path(folder)))
            print(f"measured {method}: {json.dumps(results[-1]['median_ms'])}", file=sys.stderr, flush=True)
    headers = ["method", "output", "export s (onnx / pt2)", "onnx MiB"]
    headers += [f"{runtime} ms" for runtime in RUNTIMES] + [
        "ort / pytorch",
        "pt2 / pytorch",
        "max abs diff (ort)",
    ]
    rows = [
        [
            result["method"],
            result["output"],
            f"{result['export_seconds']['onnxruntime']:.1f} / {result['export_seconds']['torch_export']:.1f}",
            result["onnx_megabytes"],
            *(result["median_ms"][runtime] for runtime in RUNTIMES),
            result["ratio_to_pytorch"]["onnxruntime"],
            result["ratio_to_pytorch"]["torch_export"],
            f"{result['max_abs_diff']['onnxruntime']:.1e}",
        ]
        for result in results
    ]
    print(
        f"backbone {args.backbone}, batch {args.batch}, {args.size[0]} x {args.size[1]}, "
        f"{args.threads} thread(s), median of {args.repeats} interleaved rounds"
    )
    print(markdown_table(headers, rows))
    for result in results:
        for runtime, notes in result["notes"].items():
            for note in notes:
                print(f"{result['method']} ({runtime}): {note}")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
