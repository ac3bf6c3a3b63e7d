"""Reproduce the README's results tables on the built-in benchmark.

Every run uses the shipped ``configs/shapes/*.yaml`` (same backbone, seed and schedule); the WSSS
chains run stage 1 (CAM network from tags), multi-scale CAMs on the train split, the seed
threshold sweep, pseudo labels at the best threshold, and stage 2 (linear head on the pseudo
masks, evaluated on the real val masks).

    python benchmarks/shapes_results.py --data data/shapes --out runs/results --seeds 0 1 2
    python benchmarks/shapes_results.py --out runs/results_1600 --iterations 1600 --only linear ...
    python benchmarks/shapes_results.py --out runs/wsss --seeds 0 1 2 --jobs 1 \
        --only wsss_cam wsss_seam wsss_eps wsss_ppc_cam wsss_ppc_seam wsss_ppc_eps
    python benchmarks/shapes_results.py --out runs/wsss --seeds 0 1 2 --jobs 1 \
        --only wsss_oaa wsss_rca_cam wsss_rca_oaa wsss_rca_eps

``--iterations N`` runs every selected training for N iterations instead of the configs' 400
(validation every N / 4), for the longer-schedule table. ``--seeds`` runs each row once per seed
(``train.seed``, stage 1 and stage 2 of a WSSS chain alike); the tables give the mean and standard
deviation over the seeds. Finished runs (their last validation in ``metrics.jsonl``) and finished
WSSS chains (``chain.json``) are reused, so an interrupted invocation continues where it stopped.

WSSS rows ``wsss_<base>`` (base ``cam``, ``seam``, ``eps``, ``oaa``), ``wsss_ppc_<base>`` and
``wsss_rca_<base>`` (RCA on ``cam``, ``oaa``, ``eps``) use the 224-px setting of ``configs/shapes/wsss224``
on ``--wsss-data`` (written when missing: 224-px shapes, 500 / 100 images, synthetic saliency maps of
quality 0.7); ``wsss96_*`` rows the 96-px setting of
``configs/shapes/wsss_*.yaml`` on ``--data``. The OAA rows (``wsss_oaa``, ``wsss_rca_oaa``) take their seeds
from the accumulated maps of stage 1 (``benchmarks/oaa_cams.py``) instead of ``protoseg cam``.

Two job streams run side by side (one thread each; ``--jobs 1`` for one); the table is printed at the
end and written to ``OUT/results.md`` / ``OUT/results.json``.
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
    # the release's head exactly: its cls_head, the width-axis L2, the Gumbel update, random prototypes
    "protoseg_k10_released": (
        "protoseg",
        [
            "model.protoseg.init=random",
            "model.protoseg.projection_norm=released",
            "model.protoseg.cls_head=true",
            "model.protoseg.assignment=gumbel",
        ],
    ),
    # every labelled pixel moves its prototype, not only the correctly predicted ones as released
    "protoseg_k10_update_all": ("protoseg", ["model.protoseg.update_pixels=all"]),
    "protoseg_k1_update_all": (
        "protoseg",
        ["model.protoseg.num_prototypes=1", "model.protoseg.update_pixels=all"],
    ),
    # the prototypes' momentum (protoseg.yaml: 0.99; the release and library default: 0.999)
    "protoseg_k10_momentum_0.9": ("protoseg", ["model.protoseg.momentum=0.9"]),
    "protoseg_k10_momentum_0.999": ("protoseg", ["model.protoseg.momentum=0.999"]),
    "protoseg_k1_momentum_0.999": (
        "protoseg",
        ["model.protoseg.num_prototypes=1", "model.protoseg.momentum=0.999"],
    ),
    # the paper's head without a normalisation of the projection, random prototypes
    "protoseg_k10_no_norm_random_init": (
        "protoseg",
        ["model.protoseg.init=random", "model.protoseg.projection_norm=none"],
    ),
    # without the projection MLP: the decoder features are embedded (inference at the linear cost)
    "protoseg_k10_no_projection": ("protoseg", ["model.protoseg.projection=none"]),
    "contrast": ("contrast", []),
    "protoseg_contrast": ("protoseg_contrast", []),
}
WSSS: dict[str, tuple[str, str, list[str], str]] = {
    # name: (stage-1 config, dataset (wsss: --wsss-data, shapes: --data), CAM scales, stage-2 config)
    **{
        f"wsss_{method}": (f"wsss224/{method}", "wsss", ["1.0"], "wsss224/stage2")
        for method in (
            *("cam", "seam", "eps", "oaa"),
            *("ppc_cam", "ppc_seam", "ppc_eps"),
            *("rca_cam", "rca_oaa", "rca_eps"),
        )
    },
    "wsss96_cam": ("wsss_cam", "shapes", ["1.0", "1.5"], "wsss_stage2"),
    "wsss96_ppc": ("wsss_ppc", "shapes", ["1.0", "1.5"], "wsss_stage2"),
    "wsss96_rca": ("wsss_rca", "shapes", ["1.0", "1.5"], "wsss_stage2"),
}
WSSS["wsss_ppc_cam"] = ("wsss224/ppc", "wsss", ["1.0"], "wsss224/stage2")
SALIENCY_QUALITY = 0.7
ACCUMULATED_SEEDS = {"wsss_oaa", "wsss_rca_oaa"}
"""Rows whose CAM files are OAA's accumulated maps (benchmarks/oaa_cams.py), not ``protoseg cam``'s."""


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


def val_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if r["split"] == "val"]


def final_val(run_dir: Path) -> dict:
    return val_records(run_dir)[-1]


def finished(run_dir: Path, iterations: int) -> bool:
    return any(r["iteration"] == iterations for r in val_records(run_dir))


ITERATIONS: list[str] = []  # schedule overrides from --iterations, applied to every training
SCHEDULE = {"iterations": 400}


def train(config: str, run_dir: Path, data: str, extra: list[str], log: Path) -> float:
    if finished(run_dir, SCHEDULE["iterations"]):
        return float("nan")
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


def supervised(name: str, data: str, out: Path, seed: int = 0) -> dict:
    config, extra = SUPERVISED[name]
    run_dir = out / f"{name}_s{seed}"
    seconds = train(config, run_dir, data, [*extra, f"train.seed={seed}"], out / f"{name}_s{seed}.log")
    trajectory = {str(r["iteration"]): r["mIoU"] for r in val_records(run_dir)}
    return {
        "name": name,
        "seed": seed,
        "val_mIoU": final_val(run_dir)["mIoU"],
        "trajectory": trajectory,
        "train_seconds": seconds,
    }


def wsss_chain(name: str, data: str, out: Path, seed: int = 0) -> dict:
    config, _, scales, stage2_config = WSSS[name]
    log = out / f"{name}_s{seed}.log"
    run_dir = out / f"{name}_s{seed}"
    record = run_dir / "chain.json"
    if record.is_file():
        return json.loads(record.read_text())
    started = time.perf_counter()
    seed_set = [f"train.seed={seed}"]
    saliency = [f"data.saliency_dir={data}/SaliencyMaps"] if "eps" in name else []
    seconds = train(config, run_dir, data, seed_set + saliency, log)
    cams = run_dir / "cams"
    cam_started = time.perf_counter()
    if name in ACCUMULATED_SEEDS:
        writer = [sys.executable, str(ROOT / "benchmarks/oaa_cams.py"), str(run_dir)]
    else:
        writer = protoseg_command("cam", str(run_dir), "--split", "train", "--scales", *scales)
    run([*writer, "--out", str(cams), "--no-progress", "--set", f"data.root={data}"], log)
    cam_seconds = time.perf_counter() - cam_started
    seeds = json.loads(
        run(
            protoseg_command(
                "seeds-eval", str(cams), "--data", data, "--split", "train", "--thresholds", "0.05:0.6:0.05",
                "--json",
            ),
            log,
        )
        .strip()
        .splitlines()[-1]
    )  # fmt: skip
    threshold = seeds["best_threshold"]
    pseudo = run_dir / "pseudo"
    run(
        protoseg_command(
            "pseudo-label", str(cams), "--threshold", str(threshold), "--out", str(pseudo), "--data", data,
            "--no-progress",
        ),
        log,
    )  # fmt: skip
    stage2 = out / f"stage2_{name}_s{seed}"
    stage2_seconds = train(stage2_config, stage2, data, [f"data.label_dir={pseudo}", *seed_set], log)
    result = {
        "name": name,
        "seed": seed,
        "seed_mIoU": seeds["best_metrics"]["mIoU"],
        "seed_threshold": threshold,
        "cam_val_mIoU": final_val(run_dir)["mIoU"],
        "stage2_val_mIoU": final_val(stage2)["mIoU"],
        "train_seconds": seconds,
        "cam_seconds": cam_seconds,
        "stage2_seconds": stage2_seconds,
        "chain_seconds": time.perf_counter() - started,
    }
    record.write_text(json.dumps(result, indent=2))
    return result


def ensure_wsss_data(root: str, log: Path) -> None:
    """The 224-px shapes set with synthetic saliency maps (what ``protoseg make-data shapes --size 224
    --num-train 500 --num-val 100 --saliency 0.7`` writes)."""
    from protoseg.data.saliency import SALIENCY_FOLDER, write_synthetic_saliency
    from protoseg.data.shapes import generate_shapes

    if not (Path(root) / "ImageSets/Segmentation/train.txt").is_file():
        generate_shapes(root, size=224, num_train=500, num_val=100, seed=0)
    if not (Path(root) / SALIENCY_FOLDER).is_dir():
        summary = write_synthetic_saliency(root, quality=SALIENCY_QUALITY, seed=0)
        with open(log, "a") as file:
            file.write(json.dumps(summary) + "\n")


def _mean_std(values: list[float]) -> str:
    import statistics

    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(results: dict) -> str:
    lines = [
        "| fully supervised | seeds | val mIoU (%) at each quarter of the schedule | final val mIoU (%) |",
        "|---|---|---|---|",
    ]
    for name in SUPERVISED:
        runs = [r for key, r in sorted(results.items()) if key.rsplit("_s", 1)[0] == name]
        if not runs:
            continue
        points = sorted({int(it) for r in runs for it in r["trajectory"]})
        quarters = " / ".join(
            _mean_std([r["trajectory"][str(it)] for r in runs if str(it) in r["trajectory"]]) for it in points
        )
        final = _mean_std([r["val_mIoU"] for r in runs])
        seeds = ",".join(str(r["seed"]) for r in runs)
        lines.append(f"| {name} | {seeds} | {quarters} | **{final}** |")
    lines += [
        "",
        "| WSSS method | seeds | CAM seed mIoU, train (%) | best threshold | stage-2 val mIoU (%) "
        "| chain (min) |",
        "|---|---|---|---|---|---|",
    ]
    for name in WSSS:
        runs = [
            r for key, r in sorted(results.items()) if key.rsplit("_s", 1)[0] == name and "seed_mIoU" in r
        ]
        if not runs:
            continue
        seeds = ",".join(str(r.get("seed", 0)) for r in runs)
        cells = [
            _mean_std([r[key] for r in runs]) for key in ("seed_mIoU", "seed_threshold", "stage2_val_mIoU")
        ]
        minutes = [r["chain_seconds"] / 60 for r in runs if r.get("chain_seconds")]
        cells.append(_mean_std(minutes) if minutes else "")
        lines.append(f"| {name} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="data/shapes")
    parser.add_argument(
        "--wsss-data", default="data/shapes_wsss", help="the 224-px WSSS set (made if missing)"
    )
    parser.add_argument("--out", default="runs/results")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", nargs="*", help=f"subset of {list(SUPERVISED) + list(WSSS)}")
    parser.add_argument(
        "--iterations", type=int, help="training iterations of every run (default: the configs')"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="train.seed of each run")
    args = parser.parse_args()
    SCHEDULE["iterations"] = args.iterations or 400
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
    unknown = sorted(set(wanted) - set(SUPERVISED) - set(WSSS))
    if unknown:
        parser.error(f"unknown rows {unknown} (valid: {list(SUPERVISED) + list(WSSS)})")
    wsss_data = str(Path(args.wsss_data).resolve())
    if any(WSSS[name][1] == "wsss" for name in wanted if name in WSSS):
        ensure_wsss_data(wsss_data, out / "make_data.log")
    roots = {"wsss": wsss_data, "shapes": data}
    # longest chains first so the two streams finish together
    jobs = [
        (f"{name}_s{seed}", wsss_chain, (name, roots[WSSS[name][1]], out, seed))
        for seed in args.seeds
        for name in WSSS
        if name in wanted
    ] + [
        (f"{n}_s{seed}", supervised, (n, data, out, seed))
        for seed in args.seeds
        for n in SUPERVISED
        if n in wanted
    ]
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {name: pool.submit(function, *arguments) for name, function, arguments in jobs}
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
