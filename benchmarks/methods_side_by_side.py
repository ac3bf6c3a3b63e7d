"""Every method against its baseline in one run: training step, memory, inference, host syncs,
component scaling and data loading (the same library code as ``protoseg benchmark``).

    PYTHONPATH=src python benchmarks/methods_side_by_side.py --quick
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/methods_side_by_side.py --threads 1 --out cpu.json
    PYTHONPATH=src python benchmarks/methods_side_by_side.py --preset gpu --device cuda --out gpu.json

Options: ``protoseg benchmark --help``.
"""

from __future__ import annotations

import sys

from protoseg.benchmark.command import main

if __name__ == "__main__":
    sys.exit(main())
