"""Series completion and processing: a waiting series that has been quiet for
``stable_seconds`` goes through the pipeline as one volume; its SEG and SR go to the
outbox.

The volume is assembled by :func:`edgemed.io.series.read_series`, the same grouping,
sorting and checks ``edgemed run DIR`` applies to a folder, so a series gives the same
mask whether it came over the network or from disk. A series the bundle cannot use
(inconsistent geometry, uneven spacing, another modality, an unreadable instance) is
``skipped`` with the reader's code; any other error leaves it ``failed`` with its code
(``edgemed spool --retry`` re-queues it).
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgemed.dicomnode.spool import SeriesState, Spool
from edgemed.errors import EdgemedError, InputError

__all__ = ["Processor", "make_results"]

log = logging.getLogger("edgemed.dicomnode")


def make_results(
    pipe: Any, spool: Spool, sid: str, rid: str, files: Sequence[Path], timings: dict[str, float]
) -> dict[str, bytes]:
    """Run the pipeline on one series' instances; the encoded SEG and SR by file name.
    ``timings`` receives the pipeline's per-stage milliseconds and ``encode`` (SEG + SR).

    Raises:
        EdgemedError: the reader's or pipeline's error (InputError: the series is not
            one the bundle can use).
    """
    import pydicom

    from edgemed.render import dicom_objects

    # The bundle's series rules (image type, orientation, slice count...) as for a
    # folder: a series the model cannot use is skipped with its code before decoding.
    image, order = pipe.read_series(files)
    result = pipe(image)
    sources = [pydicom.dcmread(files[i], stop_before_pixels=True) for i in order]
    timings.update(result.timings)
    t0 = time.perf_counter()
    # UIDs fixed by the result id: made again after a crash, the objects are the same
    # ones, and a receiver that got them once stores them once.
    objects = dicom_objects(result, sources, rid)
    out = {}
    for name, ds in objects.items():
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out[name] = buffer.getvalue()
    timings["encode"] = (time.perf_counter() - t0) * 1e3
    return out


class Processor:
    """Finds complete series and runs them, ``len(pipelines)`` at a time.

    Args:
        spool: the spool.
        pipelines: one pipeline per worker thread (a pipeline serialises its calls).
        stable_seconds: a series is complete when no instance arrived for this long.
        on_result: called with the result id after each new result (the forwarder's
            wake-up).
    """

    def __init__(
        self,
        spool: Spool,
        pipelines: Sequence[Any],
        *,
        stable_seconds: float = 5.0,
        on_result: Callable[[str], None] | None = None,
    ) -> None:
        self.spool = spool
        self.pipelines = list(pipelines)
        self.stable_seconds = stable_seconds
        self.on_result = on_result
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._queued: set[str] = set()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = 0.0  # wall-clock time of start(); scans before it need none

    def start(self) -> None:
        self._started = time.time()
        self._threads = [
            threading.Thread(target=self._scan_loop, name="edgemed-scan", daemon=True),
            *(
                threading.Thread(
                    target=self._work, args=(p,), name=f"edgemed-work-{k}", daemon=True
                )
                for k, p in enumerate(self.pipelines)
            ),
        ]
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        for _ in self.pipelines:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout)

    def scan(self, full: bool = True) -> None:
        """Queue every waiting series that has been quiet for ``stable_seconds``.

        ``full=False`` trusts the states this process knows (finished series are not
        read again); a full scan also sees series another process re-queued
        (``edgemed spool --retry``)."""
        now = time.time()
        known = self.spool.known_states()
        for sid in self.spool.series_ids():
            if sid in self._queued:
                continue
            if not full and known.get(sid) in ("done", "skipped", "failed"):
                continue
            # "processing" but not ours: its end could not be recorded (disk full);
            # it is waiting in truth, as after a restart.
            if self.spool.read_series(sid).state not in ("waiting", "processing"):
                continue
            # After a (re)start every series gets a full window from the start: the node
            # was down, not the series quiet; its sender may be about to resume.
            quiet_since = max(self.spool.last_received(sid), self._started)
            if now - quiet_since >= self.stable_seconds:
                self._queued.add(sid)
                self._queue.put(sid)

    def _scan_loop(self) -> None:
        tick = min(0.5, max(0.05, self.stable_seconds / 4))
        last_full = 0.0
        while not self._stop.wait(tick):
            full = time.monotonic() - last_full > 10.0
            if full:
                last_full = time.monotonic()
            try:
                self.scan(full)
            except Exception:  # a bad spool entry must not stop the node
                log.exception("scan failed")

    def _work(self, pipe: Any) -> None:
        while True:
            sid = self._queue.get()
            if sid is None:
                return
            try:
                self.process(pipe, sid)
            except Exception:
                log.exception("series %s: internal error", sid)
            finally:
                self._queued.discard(sid)

    def process(self, pipe: Any, sid: str) -> str:
        """Process one waiting series (or one left ``processing`` by an attempt whose end
        could not be recorded); returns its new state. The caller makes sure no other
        thread processes the same series."""
        spool = self.spool
        with spool.lock:
            if spool.read_series(sid).state not in ("waiting", "processing"):
                return "busy"
            files = spool.instances(sid)
            spool.write_series(SeriesState(sid, "processing"))
        rid = spool.result_id(sid, files)
        t0 = time.perf_counter()
        state = SeriesState(sid, "done", result=rid)
        timings: dict[str, float] = {}
        made: dict[str, bytes] | None = None
        why = ""
        if spool.has_result(rid):  # made before a crash: never a second set
            log.info("series %s: results %s already made", sid, rid)
        else:
            try:
                made = make_results(pipe, spool, sid, rid, files, timings)
            except InputError as exc:
                state = SeriesState(sid, "skipped", code=exc.code)
                if exc.code == "INPUT_NO_SERIES_MATCH":  # rule names only: no header values
                    why = f" ({exc.message})"
            except EdgemedError as exc:
                state = SeriesState(sid, "failed", code=exc.code)
            except Exception as exc:  # a library's own error (highdicom on odd input)
                state = SeriesState(sid, "failed", code=f"INTERNAL_{type(exc).__name__}")
        # Under the lock, so no instance can arrive between the check and the results
        # appearing: results of an instance set that is no longer the series' whole are
        # never published (they would be delivered as if final).
        with spool.lock:
            if spool.instances(sid) != files:  # more arrived meanwhile: do it again
                state = SeriesState(sid, "waiting")
            elif made is not None:
                try:
                    spool.add_result(rid, sid, made)
                except EdgemedError as exc:
                    state = SeriesState(sid, "failed", code=exc.code)
            spool.write_series(state)
        ms = (time.perf_counter() - t0) * 1e3
        if state.state == "done":
            stages = ", ".join(
                f"{k} {timings[k]:.0f}" for k in ("read", "infer", "encode") if k in timings
            )
            log.info(
                "series %s: %d instances -> result %s (%.0f ms; %s)",
                sid,
                len(files),
                rid,
                ms,
                stages or "made before",
            )
            if self.on_result is not None:
                self.on_result(rid)
        else:
            log.info(
                "series %s: %d instances %s %s%s",
                sid,
                len(files),
                state.state,
                state.code or "",
                why,
            )
        return state.state
