"""Stopping a command: SIGTERM (systemd, ``docker stop``, a device's supervisor) ends a
command like Ctrl-C does, so its cleanup runs (a staging directory removed, a partial
``index.json`` marked incomplete) instead of the process vanishing mid-write."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["Terminated", "ignore_from_now", "ignored", "terminate_as_interrupt"]


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
