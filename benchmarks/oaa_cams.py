"""OAA's accumulated maps of a training run as CAM files, for ``protoseg seeds-eval`` / ``pseudo-label``:

    python benchmarks/oaa_cams.py RUN --out CAMS [--normalisation max|minmax] [--set data.root=...]

The run's training set (its ``config.yaml``, with ``--set`` overrides such as another ``data.root``) gives
the image names, sizes and tags; the maps come from ``RUN/oaa/`` (written by ``model.method: oaa`` and by
RCA on the ``oaa`` base). Prints the summary of :func:`protoseg.wsss.oaa_cams.write_accumulated_cams` as
JSON. (The step a ``protoseg cam RUN --from-oaa`` flag would run.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from protoseg.engine.datasets import build_split_dataset  # noqa: E402
from protoseg.engine.loading import config_for  # noqa: E402
from protoseg.methods.oaa import OAA_FOLDER  # noqa: E402
from protoseg.ops.cams import CAM_NORMALISATIONS  # noqa: E402
from protoseg.wsss.oaa_cams import write_accumulated_cams  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir")
    parser.add_argument("--out", required=True)
    parser.add_argument("--normalisation", default="max", choices=CAM_NORMALISATIONS)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    cfg = config_for(args.run_dir, args.set)
    dataset = build_split_dataset(cfg.data, cfg.data.train_split, train=True)
    summary = write_accumulated_cams(
        Path(args.run_dir) / OAA_FOLDER, dataset, args.out, args.normalisation, progress=not args.no_progress
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
