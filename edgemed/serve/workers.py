"""Inference off the event loop: a bounded queue and two threads per pipeline.

Each :class:`~edgemed.pipeline.Pipeline` has two worker threads. A pipeline serialises
its model section (preprocess, backend call, decision), so N pipelines give N model
calls at once; the second thread decodes the next upload, and assembles and serialises
a finished result, while the first holds the model (the overlap the in-process API
gets from several threads calling one pipeline; one thread per pipeline left the model
idle during that work). A worker takes a job, decodes its
upload with the core readers (one file: ``read_image``; several DICOM parts:
``read_series``) and, when that is a single 2D slice, waits up to ``batch_window_s``
for more single slices so that they share one backend call (micro-batching through
:meth:`Pipeline.run_batch`, up to the pipeline's ``batch_size`` slices). Every job's
result is exactly what it would be alone: the batch only shares the call (the tests
compare bytes).

The queue is bounded: :meth:`WorkerPool.submit` refuses a job when it is full
(:class:`~edgemed.serve.errors.Busy`, answered 429 with ``Retry-After``), so a burst
costs the clients a retry, never the service its memory.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgemed.errors import BackendError, EdgemedError
from edgemed.pipeline import Pipeline, check_modality
from edgemed.serve.errors import Busy

__all__ = ["Job", "WorkerPool", "links_for", "read_upload"]

log = logging.getLogger("edgemed.serve")


@dataclass
class Job:
    """One request's work.

    Attributes:
        id: the result id the answer will carry.
        parts: the uploaded files (one item: a file; several: one DICOM series).
        check_modality: refuse DICOM of a modality the bundle does not list.
        spacing: ``(x, y[, z])`` mm for inputs that do not state their spacing.
        future: resolves to ``(result, answer_bytes)`` or an EdgemedError.
    """

    id: str
    parts: list[bytes | bytearray]
    check_modality: bool = True
    spacing: tuple[float, ...] | None = None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    enqueued: float = field(default_factory=time.perf_counter)


def read_upload(pipe: Pipeline, job: Job) -> Any:
    """The job's upload as a MedicalImage, read by the core readers under the
    pipeline's caps, the request's spacing applied, the modality checked."""
    from edgemed.io import read_image
    from edgemed.pipeline import apply_spacing

    if len(job.parts) == 1:
        image = read_image(job.parts[0], limits=pipe.options.limits)
    else:  # the bundle's series rules and id salt, as `edgemed run DIR`
        image, _ = pipe.read_series(job.parts, check_modality=job.check_modality)
    image = apply_spacing(image, job.spacing if job.spacing is not None else pipe.options.spacing)
    if job.check_modality:
        check_modality(image, pipe.bundle.modalities)
    return image


def links_for(rid: str, result: Any) -> dict[str, str]:
    """Where a result's files are: ``result.json`` and whatever the head serves."""
    base = f"/v1/results/{rid}"
    names = ["result.json"]
    if result.head is not None:
        names += list(result.head.artifacts(result))
    return {name: f"{base}/{name}" for name in names}


def answer(rid: str, result: Any, extra: dict[str, Any]) -> bytes:
    """The answer body: ``result.json``'s content plus ``id``, ``links`` and ``service``."""
    data = result.to_dict()
    data["id"] = rid
    data["links"] = links_for(rid, result)
    data["service"] = extra
    return json.dumps(data, separators=(",", ":")).encode()


class WorkerPool:
    """N pipelines, ``threads_per_pipeline`` worker threads each, fed by one bounded queue.

    Args:
        pipelines: the pool's pipelines (it closes them).
        queue_size: jobs that may wait beyond those being run.
        batch_window_s: how long a worker holding one 2D slice waits for more.
        observe: ``observe(stage, seconds)`` for the metrics' queue wait (the route
            observes the other stages from the result, once the answer is out: what
            this thread does after an answer holds the GIL the event loop needs to send
            it).
        on_batch: ``on_batch(size)`` for the metrics.
        threads_per_pipeline: worker threads sharing each pipeline (see the module's
            docstring). Under load, batches still form: a thread that takes its next
            job after a model call finds the jobs queued meanwhile.
    """

    def __init__(
        self,
        pipelines: Sequence[Pipeline],
        *,
        queue_size: int,
        batch_window_s: float = 0.002,
        observe: Callable[[str, float], None] | None = None,
        on_batch: Callable[[int], None] | None = None,
        threads_per_pipeline: int = 2,
    ) -> None:
        if not pipelines:
            raise ValueError("a pool needs at least one pipeline")
        self.pipelines = list(pipelines)
        self.queue_size = queue_size
        self.batch_window_s = batch_window_s
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=queue_size)
        self._observe = observe or (lambda stage, s: None)
        self._on_batch = on_batch or (lambda n: None)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._expecting = 0  # requests admitted whose bodies are still arriving
        self._service_s = 0.5  # running mean of a job's time, for Retry-After
        #: Set when a pipeline met a fatal GPU error: it refuses all work from then on.
        self.fatal: EdgemedError | None = None
        self._threads = [
            threading.Thread(
                target=self._work, args=(p,), name=f"edgemed-worker-{i}.{k}", daemon=True
            )
            for i, p in enumerate(self.pipelines)
            for k in range(max(1, threads_per_pipeline))
        ]
        for t in self._threads:
            t.start()

    # -- the request side (event loop) ---------------------------------------------------

    @property
    def depth(self) -> int:
        """Jobs waiting in the queue."""
        return self._queue.qsize()

    @property
    def in_flight(self) -> int:
        """Jobs being run by a worker now."""
        return self._in_flight

    @property
    def receiving(self) -> int:
        """Admitted requests whose bodies are still arriving."""
        return self._expecting

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the queue's expected drain time."""
        waiting = self.depth + self._in_flight
        return max(1, math.ceil(waiting * self._service_s / len(self.pipelines)))

    def full(self) -> bool:
        """Whether a job submitted now would be refused."""
        return self._queue.full()

    def busy(self) -> Busy:
        return Busy(
            f"the queue is full ({self.queue_size} waiting); retry later",
            retry_after=self.retry_after(),
        )

    def expect(self) -> None:
        """A request was admitted and its body is being read (workers holding a single
        slice wait for it, within the batch window)."""
        with self._lock:
            self._expecting += 1

    def arrived(self) -> None:
        """The body :meth:`expect` announced was read (or the request ended)."""
        with self._lock:
            self._expecting -= 1

    def submit(self, job: Job) -> concurrent.futures.Future:
        """Queue ``job``; raises :class:`Busy` when the queue is full."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise self.busy() from None
        return job.future

    # -- the worker side ---------------------------------------------------------------------

    def _next(self, timeout: float) -> Job | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _work(self, pipe: Pipeline) -> None:
        while True:
            job = self._next(0.1)
            if job is None:
                if self._stop.is_set():
                    return
                continue
            with self._lock:
                self._in_flight += 1
            try:
                self._run(pipe, job)
            finally:
                with self._lock:
                    self._in_flight -= 1

    def _prepare(self, pipe: Pipeline, job: Job) -> tuple[Any, float] | None:
        """Read the job's upload; on failure its future gets the error and None returns."""
        if not job.future.set_running_or_notify_cancel():
            return None  # the client went away while it waited
        self._observe("queue", time.perf_counter() - job.enqueued)
        t0 = time.perf_counter()
        try:
            image = read_upload(pipe, job)
        except EdgemedError as exc:
            job.future.set_exception(exc)
            return None
        except Exception as exc:  # a reader bug: the client gets a 500, the worker lives
            log.exception("reading an upload failed unexpectedly")
            job.future.set_exception(exc)
            return None
        return image, (time.perf_counter() - t0) * 1e3

    def _run(self, pipe: Pipeline, first: Job) -> None:
        prepared = self._prepare(pipe, first)
        if prepared is None:
            return
        batch = [(first, *prepared)]
        later: list[tuple[Job, Any, float]] = []
        if self._single_slice(prepared[0]) and self.batch_window_s > 0:
            # Gather single slices up to one backend call's worth: those already queued,
            # then, while other requests are still arriving (bodies being read), those
            # that arrive within the window. A lone request never waits. A volume that
            # turns up meanwhile runs on its own afterwards.
            deadline = time.perf_counter() + self.batch_window_s
            while len(batch) < pipe.batch_size:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    if self._expecting <= 0 or time.perf_counter() >= deadline:
                        break
                    time.sleep(0.0005)
                    continue
                with self._lock:
                    self._in_flight += 1
                got = self._prepare(pipe, job)
                if got is None:
                    with self._lock:
                        self._in_flight -= 1
                    continue
                (batch if self._single_slice(got[0]) else later).append((job, *got))
        try:
            self._execute(pipe, batch)
            for item in later:
                self._execute(pipe, [item])
        finally:
            with self._lock:
                self._in_flight -= len(batch) - 1 + len(later)

    @staticmethod
    def _single_slice(image: Any) -> bool:
        return image.num_slices == 1

    def _execute(self, pipe: Pipeline, batch: list[tuple[Job, Any, float]]) -> None:
        t0 = time.perf_counter()
        self._on_batch(len(batch))
        try:
            results = pipe.run_batch([image for _, image, _ in batch])
        except Exception as exc:
            if isinstance(exc, BackendError) and exc.code == "GPU_FATAL":
                self.fatal = exc
            elif not isinstance(exc, EdgemedError):
                log.exception("inference failed unexpectedly")
            for job, _, _ in batch:
                job.future.set_exception(exc)
            return
        for (job, _, read_ms), result in zip(batch, results, strict=True):
            # The pipeline was given a decoded image: its `read` is the reorientation
            # only; the decoding done here belongs to it too.
            result.timings["read"] += read_ms
            result.timings["total"] += read_ms
            try:
                body = answer(job.id, result, {"batch": len(batch)})
            except Exception as exc:
                log.exception("serialising a result failed unexpectedly")
                job.future.set_exception(exc)
                continue
            job.future.set_result((result, body))
        elapsed = (time.perf_counter() - t0) / len(batch)
        self._service_s = 0.8 * self._service_s + 0.2 * elapsed

    # -- stopping --------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Finish the queued jobs, stop the workers and close the pipelines."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        for pipe in self.pipelines:
            try:
                pipe.close()
            except Exception:  # closing must not hide the others
                log.exception("closing a pipeline failed")
