"""Reproduce the README's results table on the built-in benchmark.

Every run uses the shipped ``configs/shapes/*.yaml`` (same backbone, seed and schedule); the WSSS
chains run stage 1 (CAM network from tags), multi-scale CAMs on the train split, the seed
threshold sweep, pseudo labels at the best threshold, and stage 2 (linear head on the pseudo
masks, evaluated on the real val masks).

    python benchmarks/shapes_results.py --data data/shapes --out runs/results --jobs 2
    python benchmarks/shapes_results.py --out runs/results_1600 --iterations 1600 --only linear ...

``--iterations N`` runs every selected training for N iterations instead of the configs' 400
(validation every N / 4), for the longer-schedule table.

Two job streams run side by side (one thread each); the table is printed at the end and written
to ``OUT/results.md`` / ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUPERVISED = {
    "linear": ("linear", []),
    "linear_tiny_scratch": ("linear", ["model.backbone.name=tiny", "model.backbone.pretrained=false"]),
    "protoseg_k1": ("protoseg", ["model.protoseg.num_prototypes=1"]),
    "protoseg_k10": ("protoseg", []),
    # the paper's initialisation (the shapes configs use init: data, see the README)
    "protoseg_k1_random_init": (
        "protoseg",
        ["model.protoseg.num_prototypes=1", "model.protoseg.init=random"],
    ),
    "protoseg_k10_random_init": ("protoseg", ["model.protoseg.init=random"]),
    # without the projection MLP: the decoder features are embedded (inference at the linear cost)
    "protoseg_k10_no_projection": ("protoseg", ["model.protoseg.projection=none"]),
    "contrast": ("contrast", []),
    "protoseg_contrast": ("protoseg_contrast", []),
}
WSSS = ("cam", "ppc", "rca")
CAM_SCALES = ["1.0", "1.5"]


def protoseg_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "protoseg", *args]


def run(command: list[str], log: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with open(log, "a") as file:
        file.write("$ " + " ".join(command) + "\n")
        file.flush()
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=file, text=True, env=env, cwd=ROOT)
        file.write(result.stdout)
    if result.returncode != 0:
        raise RuntimeError(f"command failed (see {log}): {' '.join(command)}")
    return result.stdout


def final_val(run_dir: Path) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["split"] == "val"][-1]


ITERATIONS: list[str] = []  # schedule overrides from --iterations, applied to every training


def train(config: str, run_dir: Path, data: str, extra: list[str], log: Path) -> float:
    sets = [f"data.root={data}", "data.num_workers=1", *ITERATIONS, *extra]
    command = protoseg_command(
        "train",
        str(ROOT / f"configs/shapes/{config}.yaml"),
        "--run-dir",
        str(run_dir),
        "--overwrite",
        "--no-progress",
    )
    for item in sets:
        command += ["--set", item]
    started = time.perf_counter()
    run(command, log)
    return time.perf_counter() - started


def supervised(name: str, data: str, out: Path) -> dict:
    config, extra = SUPERVISED[name]
    run_dir = out / name
    seconds = train(config, run_dir, data, extra, out / f"{name}.log")
    return {"name": name, "val_mIoU": final_val(run_dir)["mIoU"], "train_seconds": seconds}


def wsss_chain(method: str, data: str, out: Path) -> dict:
    log = out / f"wsss_{method}.log"
    run_dir = out / f"wsss_{method}"
    seconds = train(f"wsss_{method}", run_dir, data, [], log)
    cams = run_dir / "cams"
    run(
        protoseg_command(
            "cam",
            str(run_dir),
            "--split",
            "train",
            "--out",
            str(cams),
            "--scales",
            *CAM_SCALES,
            "--no-progress",
            "--set",
            f"data.root={data}",
        ),
        log,
    )
    seeds = json.loads(
        run(
            protoseg_command(
                "seeds-eval",
                str(cams),
                "--data",
                data,
                "--split",
                "train",
                "--thresholds",
                "0.05:0.6:0.05",
                "--json",
            ),
            log,
        )
        .strip()
        .splitlines()[-1]
    )
    threshold = seeds["best_threshold"]
    pseudo = run_dir / "pseudo"
    run(
        protoseg_command(
            "pseudo-label",
            str(cams),
            "--threshold",
            str(threshold),
            "--out",
            str(pseudo),
            "--data",
            data,
            "--no-progress",
        ),
        log,
    )
    stage2 = out / f"stage2_{method}"
    train("wsss_stage2", stage2, data, [f"data.label_dir={pseudo}"], log)
    return {
        "name": method,
        "seed_mIoU": seeds["best_metrics"]["mIoU"],
        "seed_threshold": threshold,
        "cam_val_mIoU": final_val(run_dir)["mIoU"],
        "stage2_val_mIoU": final_val(stage2)["mIoU"],
        "train_seconds": seconds,
    }


def table(results: dict) -> str:
    lines = ["| method | head / stage | val mIoU (%) |", "|---|---|---|"]
    for name in SUPERVISED:
        if name in results:
            lines.append(f"| fully supervised | {name} | {results[name]['val_mIoU']:.2f} |")
    lines += [
        "",
        "| WSSS method | CAM seed mIoU, train (%) | best threshold | stage-2 val mIoU (%) |",
        "|---|---|---|---|",
    ]
    for method in WSSS:
        if method in results:
            r = results[method]
            values = (r["seed_mIoU"], r["seed_threshold"], r["stage2_val_mIoU"])
            row = [method, *(f"{value:.2f}" for value in values)]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="data/shapes")
    parser.add_argument("--out", default="runs/results")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", nargs="*", help=f"subset of {list(SUPERVISED) + list(WSSS)}")
    parser.add_argument(
        "--iterations", type=int, help="training iterations of every run (default: the configs')"
    )
    args = parser.parse_args()
    if args.iterations:
        interval = max(1, args.iterations // 4)
        ITERATIONS[:] = [
            f"train.iterations={args.iterations}",
            f"train.val_interval={interval}",
            f"train.checkpoint_interval={interval}",
        ]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = str(Path(args.data).resolve())
    if not (Path(data) / "ImageSets/Segmentation/train.txt").is_file():
        run(protoseg_command("make-data", "shapes", "--out", data), out / "make_data.log")
    wanted = args.only or list(SUPERVISED) + list(WSSS)
    # longest chains first so the two streams finish together
    jobs = [(wsss_chain, m) for m in WSSS if m in wanted] + [
        (supervised, n) for n in SUPERVISED if n in wanted
    ]
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {name: pool.submit(function, name, data, out) for function, name in jobs}
        for name, future in futures.items():
            try:
                results[name] = future.result()
            except RuntimeError as error:
                print(f"{name}: {error}", file=sys.stderr)
            results_path.write_text(json.dumps(results, indent=2))
    text = table(results)
    (out / "results.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
