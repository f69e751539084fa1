"""The pipeline's GPU stages: CUDA preprocessing, and segmentation postprocessing.

Two modes, decided by the backend's declared device I/O (:attr:`Backend.device_io`):

* **Device I/O** (TensorRT): the preprocessing kernel writes the batch straight into the
  engine's input buffer on the engine's stream (no float tensor crosses the bus), and
  when the head decodes on the device (segmentation) the postprocessing kernel reads the
  logits where the engine left them, so only the uint8 masks come back.
* **Any other backend** (ONNX Runtime on the CPU, as the reference): the kernel writes
  into a device buffer that is copied into the pipeline's host input buffer. Useful to
  check the kernels against the CPU path inside a real pipeline; not faster.

Slices arrive as the readers give them: float32 in physical units (the reader already
applied RescaleSlope/Intercept), so the kernels run with slope 1 and intercept 0.
Buffers grow to the largest slice seen and are reused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgemed.cuda.device import CudaDevice, DeviceBuffer, cuda_errors
from edgemed.cuda.launchers import CudaPreprocessor, CudaSegmentPostprocessor
from edgemed.cuda.packing import check_preprocess_spec
from edgemed.preprocess.cpu import Placement
from edgemed.preprocess.spec import PreprocessSpec

if TYPE_CHECKING:
    from edgemed.heads.base import Head

__all__ = ["CudaStages"]


class CudaStages:
    """CUDA pre- (and, with TensorRT, segmentation post-) processing for a pipeline.

    Args:
        head: the pipeline's task head (its spec, labels and decoded output name).
        spec: the preprocessing spec as the pipeline runs it (dtype = model input's).
        backend: the pipeline's backend.
        max_batch: most slices per call.
        cubin_dir: cubins from ``edgemed build`` (used when they match this GPU).

    Raises:
        UsageError: ``USAGE_GPU_UNSUPPORTED`` for a spec the kernels cannot honour.
        MissingDependencyError: pycuda missing (``edgemed[gpu]``).
        BackendError: ``GPU_*`` codes.
    """

    def __init__(
        self,
        head: Head,
        spec: PreprocessSpec,
        backend: Any,
        max_batch: int,
        cubin_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        check_preprocess_spec(spec)
        self.spec = spec
        self.max_batch = max_batch
        self._slots = 0  # slices the current launchers and buffers hold
        self._backend = backend
        self._cubins = Path(cubin_dir) if cubin_dir is not None else None
        self.on_engine = backend.device_io
        # The engine's own GPU and stream, or a context of our own for other backends.
        self._device: CudaDevice = backend.gpu if self.on_engine else CudaDevice.open(0)
        self._pre: CudaPreprocessor | None = None
        self._post: CudaSegmentPostprocessor | None = None
        self._dst: DeviceBuffer | None = None
        self._max_pixels = 0
        out = {o.name: o for o in backend.outputs}.get(head.output)
        self.masks_on_gpu = self.on_engine and out is not None and head.decodes_on_device(out.dtype)
        self._head = head
        self._closed = False

    @property
    def stream(self) -> Any:
        return self._device.stream

    def _ensure(self, slices: Sequence[np.ndarray]) -> None:
        """(Re)create the launchers when a call has more slices, or a larger slice, than
        any so far: buffers are sized by what runs, not by the batch size the pipeline
        allows (up to 1024 slices beside a backend without a batch bound)."""
        pixels = max(int(s.shape[0]) * int(s.shape[1]) for s in slices)
        n = len(slices)
        if pixels <= self._max_pixels and n <= self._slots:
            return
        # Grow geometrically so a series of slowly growing slices reallocates rarely.
        if pixels > self._max_pixels:
            self._max_pixels = max(pixels, 2 * self._max_pixels)
        if n > self._slots:
            # Beside an engine the batch is bounded by its profile, and launchers are
            # compiled per creation: size them once for that bound.
            want = self.max_batch if self.on_engine else max(n, 2 * self._slots)
            self._slots = min(self.max_batch, want)
        for old in (self._pre, self._post):
            if old is not None:
                old.close()  # inside the active context: freed now, not at detach
        self._pre = CudaPreprocessor(
            self.spec, self._slots, self._max_pixels, cubin_dir=self._cubins
        )
        if self.masks_on_gpu:
            self._post = CudaSegmentPostprocessor(
                self._head.spec,  # type: ignore[arg-type]  # masks_on_gpu: a segmentation head
                self._head.labels,
                self._slots,
                self._max_pixels,
                cubin_dir=self._cubins,
            )
        if not self.on_engine:
            nbytes = (
                self._slots
                * self.spec.num_channels
                * self.spec.height
                * self.spec.width
                * np.dtype(self.spec.dtype).itemsize
            )
            if self._dst is None or self._dst.nbytes < nbytes:
                if self._dst is not None:
                    self._dst.free()
                self._dst = DeviceBuffer(nbytes)

    def preprocess(
        self, slices: Sequence[np.ndarray], host_out: np.ndarray
    ) -> tuple[np.ndarray | None, list[Placement]]:
        """Preprocess ``slices`` on the GPU.

        With TensorRT the batch lands in the engine's input (returns ``None``); otherwise
        it is copied into ``host_out[:n]`` (returned). Waits for the stream either way,
        so the pipeline's preprocess timing is the kernels' real time.
        """
        n = len(slices)
        raw = [np.ascontiguousarray(s, dtype=np.float32) for s in slices]
        shape = (n, self.spec.num_channels, self.spec.height, self.spec.width)
        with self._device.active(), cuda_errors("CUDA preprocessing"):
            self._ensure(raw)
            assert self._pre is not None
            if self.on_engine:
                name = self._backend.inputs[0].name
                ptr, _, _ = self._backend.device_input(name, shape)
                placements = self._pre.run(raw, None, None, ptr, self.stream)
                self.stream.synchronize()
                return None, placements
            assert self._dst is not None
            placements = self._pre.run(raw, None, None, self._dst.ptr, self.stream)
            batch = host_out[:n]
            self._dst.download(batch, self.stream)
            self.stream.synchronize()
            return batch, placements

    def infer(self) -> dict[str, np.ndarray]:
        """Run the engine on the input :meth:`preprocess` filled. For segmentation with
        the mask kernel the logits stay on the GPU (returns ``{}``); otherwise the
        outputs come back as the backend's ``infer`` gives them. Waits either way, so
        the pipeline's infer timing is the engine's real time."""
        if not self.masks_on_gpu:
            return self._backend.infer_device()
        self._backend.infer_device(fetch=())
        with self._device.active(), cuda_errors("TensorRT inference"):
            self.stream.synchronize()
        return {}

    def segment(self, placements: list[Placement]) -> list[np.ndarray]:
        """Masks from the logits :meth:`infer` left on the GPU; only the
        uint8 masks are copied back."""
        out = self._head.output
        with self._device.active(), cuda_errors("CUDA postprocessing"):
            assert self._post is not None
            ptr, shape, dtype = self._backend.device_output(out)
            return self._post.run(ptr, shape, placements, self.stream, dtype)

    def close(self) -> None:
        """Release the launchers' staging, statistics and mask buffers and their events
        inside the context, while it lives: pycuda skips every free in a detached context,
        so anything released after the device closes would leak. (Buffers still alive
        then are freed by :meth:`CudaDevice.close` itself.)"""
        if self._closed:
            return
        self._closed = True
        if self._device.closed:  # its close() freed every buffer already
            self._pre = self._post = self._dst = None
            return
        try:
            with self._device.active():
                # The last references: pycuda frees their memory and destroys their
                # events right here, with this context current.
                self._pre = self._post = self._dst = None
        finally:
            if not self.on_engine:  # the context is ours, not the engine's
                self._device.close()
