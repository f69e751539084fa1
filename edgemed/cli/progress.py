"""Progress of ``run`` on stderr: a live line on a terminal, one log line per input
otherwise.

A 60-slice series can take half a minute on a small device; a silent terminal for that
long looks hung. On a terminal (and without ``--quiet``) the line shows the input and
slice being worked on, through tqdm when it is installed (the ``bench`` extra) and as a
plain carriage-return line when not. Logs and pipes never get the live line (it would
fill a log file with carriage returns); they get one INFO line per input instead (shown
with ``-v``), which names the input by position, never by file name.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

__all__ = ["Progress"]

log = logging.getLogger("edgemed.cli")

_MIN_REDRAW_S = 0.1  # a terminal redrawn on every batch of a fast model only flickers


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


class Progress:
    """Progress of ``inputs`` inputs (1-based positions).

    Args:
        inputs: how many inputs the run has.
        quiet: no live display even on a terminal (``--quiet``).
        stream: where the live display goes (stderr).
        use_tqdm: ``None`` for tqdm when it imports; ``False`` for the plain line.
        unit: what the pipeline's progress counts: ``slice`` (2D models), ``window``
            (3D models' sliding windows).
    """

    def __init__(
        self,
        inputs: int,
        *,
        quiet: bool = False,
        stream: TextIO | None = None,
        use_tqdm: bool | None = None,
        unit: str = "slice",
    ) -> None:
        self.inputs = inputs
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.live = not quiet and _is_terminal(self.stream)
        self._tqdm: Any = None
        if self.live and use_tqdm is not False:
            try:
                from tqdm import tqdm

                self._tqdm = tqdm
            except ImportError:
                pass
        self._bar: Any = None
        self._shown = 0  # characters of the plain line now on screen
        self._drawn_at = 0.0
        self._input = 0
        self._slices = (0, 0)
        self._started = time.perf_counter()
        self._input_started = self._started

    # -- events --------------------------------------------------------------------------

    def begin(self, position: int) -> None:
        """Input ``position`` starts (it is being read)."""
        self._input, self._slices = position, (0, 0)
        self._input_started = time.perf_counter()
        self._draw(force=True)

    def slices(self, done: int, total: int) -> None:
        """``Pipeline.run_batch``'s progress callback: slices (or windows) done of the
        input's total."""
        self._slices = (done, total)
        self._draw(force=done >= total)

    def end(self, position: int, outcome: str) -> None:
        """Input ``position`` is finished: ``outcome`` is ``ok`` or the error code."""
        seconds = time.perf_counter() - self._input_started
        done, total = self._slices
        slices = f", {total} {self.unit}s" if total > 1 else ""
        log.info("input %d/%d %s (%.1f s%s)", position, self.inputs, outcome, seconds, slices)
        if self._bar is not None and self.inputs > 1:
            self._bar.update(1)
        self._draw(force=True)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Clear the live line while other lines are printed, then draw it again."""
        self._clear()
        try:
            yield
        finally:
            self._draw(force=True)

    def close(self) -> None:
        """Remove the live display (before the last lines of a run)."""
        self._clear()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # -- drawing -------------------------------------------------------------------------

    def _text(self) -> str:
        parts = []
        if self.inputs > 1:
            parts.append(f"input {self._input}/{self.inputs}")
        done, total = self._slices
        if total > 1:
            parts.append(f"{self.unit} {done}/{total}")
        elif total == 0:
            parts.append("reading")
        return ", ".join(parts)

    def _draw(self, force: bool = False) -> None:
        if not self.live or self._input == 0:
            return
        now = time.perf_counter()
        if not force and now - self._drawn_at < _MIN_REDRAW_S:
            return
        self._drawn_at = now
        if self._tqdm is not None:
            self._draw_tqdm()
            return
        text = f"edgemed run: {self._text()}  {now - self._started:.0f} s"
        pad = " " * max(0, self._shown - len(text))  # no ANSI codes: any terminal
        self.stream.write(f"\r{text}{pad}")
        self.stream.flush()
        self._shown = len(text)

    def _draw_tqdm(self) -> None:
        done, total = self._slices
        if self._bar is None:
            several = self.inputs > 1
            self._bar = self._tqdm(
                total=self.inputs if several else None,
                unit="input" if several else self.unit,
                desc="edgemed run",
                file=self.stream,
                leave=False,
                dynamic_ncols=True,
            )
        if self.inputs > 1:
            self._bar.set_postfix_str(self._text().partition(", ")[2], refresh=False)
        elif total:
            self._bar.total = total
            self._bar.n = done
        self._bar.refresh()

    def _clear(self) -> None:
        if not self.live:
            return
        if self._bar is not None:
            self._bar.clear()
        elif self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0
