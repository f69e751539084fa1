"""``python -m edgemed.cli``: the same as the ``edgemed`` command."""

from __future__ import annotations

import sys

from edgemed.cli import main

__all__: list[str] = []

sys.exit(main())
