"""Stopping a command: SIGTERM (systemd, ``docker stop``, a device's supervisor) ends a
command like Ctrl-C does, so its cleanup runs (a staging directory removed, a partial
``index.json`` marked incomplete) instead of the process vanishing mid-write."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = [
    "Terminated",
    "forget_handled_interrupts",
    "ignore_from_now",
    "ignored",
    "terminate_as_interrupt",
]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is (a KeyboardInterrupt, so the same
    cleanup runs); ``signum`` says which signal."""

    signum = signal.SIGTERM


#: The signals that stop a command.
_STOPPING = (signal.SIGINT, signal.SIGTERM)


def _main_thread() -> bool:
    # signal.signal works only there (an API user may call main() from a worker thread).
    return threading.current_thread() is threading.main_thread()


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated`."""
    if not _main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def ignored() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM are ignored (finishing what an interrupt
    left: a second Ctrl-C must not cut it short)."""
    if not _main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in _STOPPING}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def ignore_from_now() -> None:
    """The command is ending after an interrupt: from here on SIGINT and SIGTERM are
    ignored, so that a later one (a second Ctrl-C, or a signal raised again while the
    interpreter tears down) cannot turn the exit code into death by the signal after
    the one line was printed. Main thread only."""
    if _main_thread():
        for s in _STOPPING:
            signal.signal(s, signal.SIG_IGN)


def forget_handled_interrupts() -> None:
    """Clear CPython's "unhandled KeyboardInterrupt" mark before the command returns.

    CPython sets that mark whenever a KeyboardInterrupt leaves code that ``exec`` or
    ``eval`` ran from a string (``run_eval_code_obj`` in pythonrun.c), and catching the
    exception later does not clear it. ``dataclasses`` builds every ``__init__``,
    ``__repr__`` and ``__eq__`` that way, so a Ctrl-C that lands while a module defining
    dataclasses is first imported leaves the mark set; the command then handles the
    interrupt, prints its one line and returns 130, and after the interpreter finished,
    ``Py_RunMain`` sees the mark and kills the process with SIGINT (exit -2 instead of
    130). Found with an LD_PRELOAD shim logging ``sigaction``/``kill`` for SIGINT:
    ``Py_RunMain`` itself reset SIGINT to the default and raised it, after
    ``sys.exit(130)``. CPython resets the mark at every ``eval`` of a string, so one
    such ``eval`` (of a constant) here is the whole fix.
    """
    eval("None")
