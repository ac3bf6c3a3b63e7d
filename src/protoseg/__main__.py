"""``python -m protoseg`` = the ``protoseg`` command (used under torchrun)."""

import sys

from .launcher import main

sys.exit(main())
