"""Reusable per-thread work arrays for the CPU pre- and postprocessing.

Why: a fresh multi-megabyte NumPy array is fresh memory. Between two inferences ONNX
Runtime's own allocations push such blocks out to the OS, so each new array pays page
faults on first touch; measured on the demo model with a 512x512 input, the same
postprocessing steps ran 1.5-2x slower right after an inference than in a tight loop.
Keeping the intermediates of the last call (per thread, so concurrent callers never
share one) removes that cost. Arrays handed to callers are never taken from here.

Also here: a small persistent pool of worker threads (each with its own work arrays)
over which a step's rows can be split (:func:`in_bands`; the softmax of large boxes).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = ["MAX_BYTES", "in_bands", "parts", "scratch"]

#: Arrays larger than this are not kept, so a huge one-off slice does not stay resident
#: (a 512x512 slice's largest work array, 5 float32 class planes, is 5 MB; a thread keeps
#: about 15 MB for it).
MAX_BYTES = 16 * 1024 * 1024


class _Scratch(threading.local):
    """One array per key and thread, reallocated when the shape or dtype changes."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def get(self, key: str, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """An uninitialised array of ``shape``/``dtype`` owned by this thread under ``key``.

        Valid until the same thread asks for ``key`` again.
        """
        dt = np.dtype(dtype)
        a = self.arrays.get(key)
        if a is not None and a.shape == shape and a.dtype == dt:
            return a
        a = np.empty(shape, dtype=dt)
        if a.nbytes <= MAX_BYTES:
            self.arrays[key] = a
        else:
            self.arrays.pop(key, None)
        return a

    def view(self, key: str, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """Like :meth:`get`, but any kept array of ``dtype`` with at least as many
        elements serves (its start, reshaped): for work arrays whose shape changes from
        call to call (blocks of rows of varying height), which :meth:`get` would
        reallocate each time. Keys used here are not used with :meth:`get`.
        """
        dt = np.dtype(dtype)
        n = 1
        for d in shape:
            n *= d
        a = self.arrays.get(key)
        if a is None or a.dtype != dt or a.ndim != 1 or a.size < n:
            a = np.empty(n, dtype=dt)
            if a.nbytes <= MAX_BYTES:
                self.arrays[key] = a
            else:
                self.arrays.pop(key, None)
        return a[:n].reshape(shape)


#: The process-wide per-thread store.
scratch = _Scratch()


# --- row bands over threads -----------------------------------------------------------

#: Most threads one step is split over (the caller's is one of them).
_MAX_THREADS = 4
#: Threads to use; ``None``: ``os.cpu_count()``, at most ``_MAX_THREADS`` (1: no pool).
_THREADS: int | None = None
#: Read once, not per step.
_CPUS = os.cpu_count() or 1

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_pid = -1
_pool_lock = threading.Lock()


def parts(pixels: int, least: int) -> int:
    """How many row bands a step over ``pixels`` pixels is split into (1 below
    ``least``)."""
    n = _THREADS if _THREADS is not None else min(_CPUS, _MAX_THREADS)
    return 1 if pixels < least else max(1, n)


def _executor(workers: int) -> ThreadPoolExecutor:
    """The persistent worker pool (recreated after a fork: a child has no threads)."""
    global _pool, _pool_size, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid() or _pool_size < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgemed-work")
            _pool_size, _pool_pid = workers, os.getpid()
        return _pool


def in_bands(fn: Callable[[int, int], Any], rows: int, n: int) -> list[Any]:
    """``fn(start, stop)`` over ``n`` contiguous row bands of ``rows`` rows, the
    first band in this thread and the others in the pool; the results in band order.

    Why it pays: the steps are NumPy calls on large arrays, which release the GIL, and
    between inferences ONNX Runtime's threads are idle. Per element, a band does the
    same operations as the whole array would, so the bits are the same.
    """
    edges = [rows * k // n for k in range(n + 1)]
    bands = [(a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]
    if len(bands) <= 1:
        return [fn(0, rows)]
    pool = _executor(len(bands) - 1)
    futures: list[Future[Any]] = [pool.submit(fn, a, b) for a, b in bands[1:]]
    try:
        first = fn(*bands[0])
    finally:
        # The bands write into the caller's arrays: none may outlive this call.
        for f in futures:
            f.exception()
    return [first] + [f.result() for f in futures]
