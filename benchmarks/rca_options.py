"""The measurements behind RCA's (and OAA's) option defaults: short single-seed WSSS stage-1 runs on the
built-in benchmark, each followed by its CAM seeds (the threshold sweep of ``seeds-eval``), one variant at
a time.

    python benchmarks/rca_options.py --out runs/rca_options [--only NAME ...] [--seed 0]

Variants (the 96-px setting, ``configs/shapes/wsss_rca.yaml`` and its neighbours; 400 iterations at
batch 8): ``cam`` and ``oaa`` (the bases), ``rca`` (today's defaults), then one option changed at a time:
the paper-mode aggregation's similarity (``dot`` scaled by 1 / sqrt(D), ``cosine`` at inverse temperature
10), the release's aggregation, region mask, heads, query projection and contrast reduction, all of the
release's parts together, and RCA on the ``oaa`` base (seeds from the accumulated maps). Runs that
finished (``seeds.json``) are reused; ``OUT/results.md`` holds the table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from shapes_results import finished, protoseg_command, run  # noqa: E402

ITERATIONS = 400  # the 96-px configs' schedule
THRESHOLDS = "0.05:0.8:0.05"  # wider than shapes_results' 0.6: accumulated maps peak higher

EFFICIENTNET_DIM = 320  # channels of tf_efficientnet_lite0's last level: D of the aggregation
RELEASED = [
    "model.rca.aggregation=released",
    "model.rca.region_mask=released",
    "model.rca.head=released",
    "model.rca.query_projection=released",
    "model.rca.contrast_reduction=released",
]
COSINE = ["model.rca.attention=cosine", "model.rca.attention_scale=10.0"]
OAA_AS_CAM = ["model.oaa.lr_groups=uniform", "model.oaa.nesterov=false"]  # wsss_rca.yaml's recipe
VARIANTS: dict[str, tuple[str, list[str], str]] = {
    # name: (config under configs/shapes, overrides, seeds from: "cam" inference or "oaa" maps)
    "cam": ("wsss_cam", [], "cam"),
    "oaa": ("wsss_oaa", [], "oaa"),
    "oaa_probability": ("wsss_oaa", ["model.oaa.filter=probability"], "oaa"),
    "oaa_map16": ("wsss_oaa", ["model.oaa.map_size=16"], "oaa"),
    "oaa_probability_start0": (
        "wsss_oaa",
        ["model.oaa.filter=probability", "model.oaa.start_epoch=0"],
        "oaa",
    ),
    "rca": ("wsss_rca", [], "cam"),
    "rca_dot_rsqrt": ("wsss_rca", [f"model.rca.attention_scale={EFFICIENTNET_DIM**-0.5:.4f}"], "cam"),
    "rca_cosine_10": ("wsss_rca", COSINE, "cam"),
    "rca_aggregation_released": ("wsss_rca", ["model.rca.aggregation=released"], "cam"),
    "rca_mask_released": ("wsss_rca", ["model.rca.region_mask=released"], "cam"),
    "rca_head_released": ("wsss_rca", ["model.rca.head=released"], "cam"),
    "rca_query_released": ("wsss_rca", ["model.rca.query_projection=released"], "cam"),
    "rca_reduction_released": ("wsss_rca", ["model.rca.contrast_reduction=released"], "cam"),
    "rca_all_released": ("wsss_rca", RELEASED, "cam"),
    "rca_cosine_10_query_released": ("wsss_rca", [*COSINE, "model.rca.query_projection=released"], "cam"),
    "rca_oaa": ("wsss_rca", ["model.rca.base=oaa", *OAA_AS_CAM], "oaa"),
    "rca_oaa_probability_start0": (
        "wsss_rca",
        ["model.rca.base=oaa", *OAA_AS_CAM, "model.oaa.filter=probability", "model.oaa.start_epoch=0"],
        "oaa",
    ),
    "rca_oaa_cosine_10_probability_start0": (
        "wsss_rca",
        [
            "model.rca.base=oaa",
            *OAA_AS_CAM,
            "model.oaa.filter=probability",
            "model.oaa.start_epoch=0",
            *COSINE,
        ],
        "oaa",
    ),
}


def chain(name: str, data: str, out: Path, seed: int) -> dict:
    config, overrides, source = VARIANTS[name]
    run_dir = out / f"{name}_s{seed}"
    record = run_dir / f"seeds_{THRESHOLDS.replace(':', '-')}.json"
    if record.is_file():
        return json.loads(record.read_text())
    log = out / f"{name}_s{seed}.log"
    command = protoseg_command(
        "train", str(ROOT / f"configs/shapes/{config}.yaml"), "--run-dir", str(run_dir), "--overwrite",
        "--no-progress",
    )  # fmt: skip
    for item in [f"data.root={data}", "data.num_workers=1", f"train.seed={seed}", *overrides]:
        command += ["--set", item]
    started = time.perf_counter()
    if not finished(run_dir, ITERATIONS):  # a finished run (another sweep of its seeds) is kept
        run(command, log)
    trained = time.perf_counter() - started
    cams = run_dir / "cams"
    maps = None  # OAA: images and tagged classes without an accumulated map
    if source == "oaa":
        shutil.rmtree(cams, ignore_errors=True)  # written afresh, so that the summary counts every image
        output = run([sys.executable, str(ROOT / "benchmarks/oaa_cams.py"), str(run_dir), "--out", str(cams),
                      "--no-progress", "--set", f"data.root={data}"], log)  # fmt: skip
        maps = json.loads(output.strip().splitlines()[-1])
    else:
        run(protoseg_command("cam", str(run_dir), "--split", "train", "--out", str(cams), "--scales", "1.0",
                             "1.5", "--no-progress", "--set", f"data.root={data}"), log)  # fmt: skip
    output = run(
        protoseg_command("seeds-eval", str(cams), "--data", data, "--split", "train", "--thresholds",
                         THRESHOLDS, "--json"),
        log,
    )  # fmt: skip
    seeds = json.loads(output.strip().splitlines()[-1])
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in metrics if r["split"] == "train"]
    result = {
        "name": name,
        "seed": seed,
        "overrides": overrides,
        "seed_mIoU": seeds["best_metrics"]["mIoU"],
        "seed_threshold": seeds["best_threshold"],
        "oaa_maps": maps,
        "seconds_per_iter": sum(r["seconds_per_iter"] for r in train_records) / max(1, len(train_records)),
        "train_seconds": trained,
    }
    record.write_text(json.dumps(result, indent=2))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="data/shapes")
    parser.add_argument("--out", default="runs/rca_options")
    parser.add_argument("--only", nargs="*", help=f"subset of {list(VARIANTS)}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = str(Path(args.data).resolve())
    names = args.only or list(VARIANTS)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown} (valid: {list(VARIANTS)})")
    results = {}
    for name in names:
        try:
            results[name] = chain(name, data, out, args.seed)
        except RuntimeError as error:
            print(f"{name}: {error}", file=sys.stderr)
            continue
        print(json.dumps(results[name]), flush=True)
    lines = [
        "| variant | overrides | CAM seed mIoU (%) | best threshold | s / iteration |",
        "|---|---|---|---|---|",
    ]
    for name, result in results.items():
        overrides = " ".join(f"`{item.removeprefix('model.')}`" for item in result["overrides"]) or "(config)"
        lines.append(
            f"| {name} | {overrides} | {result['seed_mIoU']:.2f} | {result['seed_threshold']:.2f} "
            f"| {result['seconds_per_iter']:.3f} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
