"""Entry point of the ``protoseg`` command (and ``python -m protoseg``): process settings that must be
made before ``torch`` is imported, then the command line of :mod:`protoseg.cli`."""

from __future__ import annotations

import os

PROCESS_DEFAULTS = {
    # Large CPU tensors (activations, gradients, the contrast loss's full-size gradient buffer) on
    # transparent huge pages: a fresh 128 MiB tensor then costs ~20 ms of page faults instead of
    # ~100 ms on a 4 KiB-page heap. PyTorch reads the variable once, when it is imported; it has no
    # effect on CUDA memory or on results. Set THP_MEM_ALLOC_ENABLE=0 to turn it off.
    "THP_MEM_ALLOC_ENABLE": "1",
}


def apply_process_defaults() -> None:
    """Set each of :data:`PROCESS_DEFAULTS` the user has not set; effective only before torch is imported."""
    for name, value in PROCESS_DEFAULTS.items():
        os.environ.setdefault(name, value)


def main(argv: list[str] | None = None) -> int:
    apply_process_defaults()
    from .cli import main as cli_main

    return cli_main(argv)
