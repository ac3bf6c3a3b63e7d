"""``python -m protoseg`` = the ``protoseg`` command (used under torchrun)."""

import sys

from .cli import main

sys.exit(main())
