"""``cli()``: the command line as a user meets it, in a real subprocess.

Shared by tests/test_cli.py, tests/test_modality.py and tests/export/ (``from tests.cli_run
import cli``); :func:`cli_command` and :func:`cli_env` for a test that starts the process
itself (two at once, a signal mid-run, a private mount namespace).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def cli_command(*args: str) -> list[str]:
    """The argv of ``python -m edgemed.cli *args``."""
    return [sys.executable, "-m", "edgemed.cli", *args]


def python_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The inherited environment for a ``python -m edgemed...`` child, plus ``env``.

    ``PYTHONSAFEPATH`` (Python 3.11+) keeps the working directory off the child's
    ``sys.path``: run from the checkout's root, ``-m`` would otherwise import the source
    tree's ``edgemed`` in place of the installed one, and the source tree has no
    ``edgemed.export`` (export/ is mapped in only by the install): the CLI a user gets is
    the installed one, wherever they stand.
    """
    return {**os.environ, "PYTHONSAFEPATH": "1", **(env or {})}


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """:func:`python_env` with one ORT thread, plus (overridden by) ``env``."""
    return python_env({"EDGEMED_ORT_THREADS": "1", **(env or {})})


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
        cli_command(*args),
        capture_output=True,
        text=True,
        env=cli_env(env),
        cwd=cwd,
        timeout=timeout,
        **run_kwargs,
    )
