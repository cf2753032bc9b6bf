"""``python -m spr.cli``: the same entry point as the ``spr`` command."""

import sys

from spr.cli import main

sys.exit(main())
