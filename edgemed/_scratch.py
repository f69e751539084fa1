"""Reusable per-thread work arrays for the CPU pre- and postprocessing.

Why: a fresh multi-megabyte NumPy array is fresh memory. Between two inferences ONNX
Runtime's own allocations push such blocks out to the OS, so each new array pays page
faults on first touch; measured on the demo model with a 512x512 input, the same
postprocessing steps ran 1.5-2x slower right after an inference than in a tight loop.
Keeping the intermediates of the last call (per thread, so concurrent callers never
share one) removes that cost. Arrays handed to callers are never taken from here.
"""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["MAX_BYTES", "scratch"]

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
