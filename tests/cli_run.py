"""``cli()``: the command line as a user meets it, in a real subprocess.

Shared by tests/test_cli.py, tests/test_modality.py and tests/export/ (``from tests.cli_run
import cli``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def cli(
    *args: str,
    cwd: Path | None = None,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    **run_kwargs,
) -> subprocess.CompletedProcess:
    """Run ``python -m edgemed.cli *args`` with one ORT thread; capture text output.

    ``env`` entries are added to (and override) the inherited environment; ``run_kwargs``
    go to ``subprocess.run`` (e.g. ``preexec_fn``).
    """
    return subprocess.run(
        [sys.executable, "-m", "edgemed.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "EDGEMED_ORT_THREADS": "1", **(env or {})},
        cwd=cwd,
        timeout=timeout,
        **run_kwargs,
    )
