"""The ``edgemed`` command line.

Exit codes: 0 ok, 2 usage, 3 input error, 4 bundle error, 5 backend error (also a
missing extra), 6 accuracy gate failed, 7 output could not be written, 8 export failed,
1 internal error.
Errors print one line naming the code and the file; ``--debug`` adds the traceback.

Each command group is a module with ``register(subparsers)``, which adds its parsers and
sets ``handler``; a new command is one module plus one entry in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from edgemed._version import __version__
from edgemed.cli import bench, engine, export, info, run, signing
from edgemed.errors import EdgemedError
from edgemed.settings import load_settings

__all__ = ["COMMANDS", "main"]

log = logging.getLogger("edgemed")

# Registration order is the order of `edgemed --help`.
COMMANDS = (run, info, signing, export, bench, engine)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgemed", description="Edge inference for medical imaging.")
    p.add_argument("--version", action="version", version=f"edgemed {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens (INFO)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS:
        module.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    try:  # read once; a bad variable is a usage error before anything runs
        args.settings = load_settings()
    except EdgemedError as exc:
        print(f"edgemed: error {exc}", file=sys.stderr)
        return exc.exit_code
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else None
    if level is None:
        level = getattr(logging, args.settings.log_level)
    logging.basicConfig(level=level, format="edgemed %(levelname)s %(name)s: %(message)s")
    if args.debug:  # the library silences pydicom (it can quote element values)
        from edgemed._setup import quiet_libraries

        quiet_libraries(debug=True)
    try:
        return args.handler(args)
    except EdgemedError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"edgemed: error {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (suppresses the flush-at-exit error)
        return 0
    except KeyboardInterrupt:
        print("edgemed: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: say so in one line, details with --debug
        if args.debug:
            traceback.print_exc()
        print(
            f"edgemed: internal error {exc.__class__.__name__} (rerun with --debug)",
            file=sys.stderr,
        )
        return 1
