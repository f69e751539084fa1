"""The ``edgemed`` command line.

Exit codes: 0 ok, 2 usage, 3 input error, 4 bundle error, 5 backend error (also a
missing extra), 6 accuracy gate failed, 7 output could not be written, 8 export failed,
1 internal error.
Errors print one line naming the code and the file; ``--debug`` adds the traceback.
Without ``--debug`` nothing else reaches stderr from the libraries underneath (Python
warnings, OpenCV's native log). ``--debug`` and ``-v`` are accepted before or after the
command. SIGTERM stops a command like Ctrl-C (exit 143, 130 for Ctrl-C), cleanup included.

Each command group is a module with ``register(subparsers)``, which adds its parsers and
sets ``handler``; a new command is one module plus one entry in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from edgemed._version import __version__
from edgemed.cli import (
    bench,
    check,
    engine,
    export,
    gallery,
    info,
    listen,
    run,
    serve,
    signing,
    spool,
    triton,
)
from edgemed.cli.outdir import discard_unpublished
from edgemed.cli.signals import (
    forget_handled_interrupts,
    ignore_from_now,
    ignored,
    terminate_as_interrupt,
)
from edgemed.errors import EdgemedError
from edgemed.settings import load_settings

__all__ = ["COMMANDS", "main"]

log = logging.getLogger("edgemed")

# Registration order is the order of `edgemed --help`.
COMMANDS = (
    run, info, signing, export, bench, engine, check, listen, spool, serve, triton, gallery
)  # fmt: skip


def _common_flags(p: argparse.ArgumentParser, default: object) -> None:
    """``--debug`` and ``-v``, on the top-level parser (``default`` False) and on every
    command's (``default`` SUPPRESS: a command's parser then leaves the top-level value
    alone unless the flag is given after the command)."""
    p.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="show tracebacks, debug logs and library warnings",
    )
    p.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="log what happens (INFO)"
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgemed", description="Edge inference for medical imaging.")
    p.add_argument("--version", action="version", version=f"edgemed {__version__}")
    _common_flags(p, False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS:
        module.register(sub)
    # Here, not in each module: a command added later gets them without an edit.
    for command in sub.choices.values():
        _common_flags(command, argparse.SUPPRESS)
    return p


@contextmanager
def _quiet_stderr(debug: bool) -> Iterator[None]:
    """Without ``--debug``, library chatter stays off stderr: the promise is one line
    per error. Python warnings (nibabel's overflow warnings on odd geometry, say) are
    ignored, and OpenCV's native log (libtiff's complaints about a broken TIFF) is
    silenced; the typed error says what went wrong."""
    import cv2

    level = cv2.utils.logging.getLogLevel()
    with warnings.catch_warnings():
        if debug:
            warnings.simplefilter("default")
        else:
            warnings.simplefilter("ignore")
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        try:
            yield
        finally:
            cv2.utils.logging.setLogLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    try:
        return _main(argv)
    except KeyboardInterrupt as exc:
        # An interrupt outside the command (parsing the arguments, or while an error
        # was being reported): the same exit as within it, never death by the signal.
        return _interrupted(exc)
    finally:
        # Whatever interrupt reached here was handled: the exit code says so.
        forget_handled_interrupts()


def _interrupted(exc: KeyboardInterrupt) -> int:
    """Ctrl-C or SIGTERM (edgemed.cli.signals.Terminated): no staging folder stays,
    one line, exit 128 + the signal's number."""
    signum = getattr(exc, "signum", 2)
    with ignored():  # whatever point the interrupt reached, no staging folder stays
        discard_unpublished()
    print(f"edgemed: {'terminated' if signum != 2 else 'interrupted'}", file=sys.stderr)
    # The exit is decided now: a second Ctrl-C must not turn it into death by the
    # signal (see also forget_handled_interrupts, which main() runs last).
    ignore_from_now()
    return 128 + signum


def _main(argv: Sequence[str] | None) -> int:
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
        with _quiet_stderr(args.debug), terminate_as_interrupt():
            return args.handler(args)
    except EdgemedError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"edgemed: error {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (suppresses the flush-at-exit error)
        return 0
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (edgemed.cli.signals.Terminated)
        return _interrupted(exc)
    except Exception as exc:  # a bug: say so in one line, details with --debug
        if args.debug:
            traceback.print_exc()
        print(
            f"edgemed: internal error {exc.__class__.__name__} (rerun with --debug)",
            file=sys.stderr,
        )
        return 1
