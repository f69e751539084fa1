"""The backend protocol: what every inference engine wrapper provides.

Template (as Polygraphy's runners): the public :meth:`Backend.infer` validates names,
ranks, fixed dimensions and dtypes against the model's own IO description, then calls
the backend's :meth:`Backend._infer`. Backends never cast silently: a dtype mismatch is
an error, so the precision that runs is the precision that was asked for.
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from edgemed.errors import BackendError

__all__ = ["Backend", "TensorSpec"]


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the engine reports it.

    ``shape`` entries are ints for fixed dimensions and strings (or ``None``) for
    dynamic ones.
    """

    name: str
    shape: tuple[int | str | None, ...]
    dtype: np.dtype

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """True when a concrete ``shape`` fits this spec."""
        if len(shape) != len(self.shape):
            return False
        return all(not isinstance(d, int) or d == s for d, s in zip(self.shape, shape, strict=True))


class Backend(abc.ABC):
    """An inference engine bound to one model artifact.

    Attributes:
        name: registry name (``onnxruntime``, ``tensorrt``).
        precision: the precision of the artifact that runs (``fp32``/``fp16``/``int8``).
        device: where it runs, in words.
        version: the engine library's version.
        reason: why this backend was chosen (set by the registry).
    """

    name: str = "base"
    #: Device I/O (see :meth:`device_input`): the backend can run on inputs written in
    #: its device memory and leave outputs there, so CUDA preprocessing can write the
    #: model input in place and a CUDA decoder can read the outputs where they are.
    device_io: ClassVar[bool] = False

    def __init__(self, *, precision: str, device: str, version: str) -> None:
        self.precision = precision
        self.device = device
        self.version = version
        self.reason = ""
        self._closed = False

    # What the engine reports, in the model's order: set by each backend's constructor
    # (or :attr:`inputs` / :attr:`outputs` overridden, as a wrapper does).
    _inputs: list[TensorSpec]
    _outputs: list[TensorSpec]

    @property
    def inputs(self) -> list[TensorSpec]:
        """Model inputs, in the model's order."""
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        """Model outputs, in the model's order."""
        return self._outputs

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model once.

        Args:
            feeds: one C-contiguous array per model input, by name.

        Returns:
            One array per output, by name. Backends may reuse output buffers: an array
            returned here is valid until the next call; copy it to keep it.

        Raises:
            BackendError: ``BACKEND_CLOSED``, ``BACKEND_IO_MISMATCH`` or
                ``BACKEND_INFERENCE_FAILED``.
        """
        self._check_open()
        specs = {s.name: s for s in self.inputs}
        if set(feeds) != set(specs):
            raise BackendError(
                f"inputs {sorted(feeds)} do not match the model's {sorted(specs)}",
                code="BACKEND_IO_MISMATCH",
            )
        for name, arr in feeds.items():
            spec = specs[name]
            if arr.dtype != spec.dtype:
                raise BackendError(
                    f"input '{name}' is {arr.dtype}, the model takes {spec.dtype}",
                    code="BACKEND_IO_MISMATCH",
                )
            if not spec.accepts(arr.shape):
                raise BackendError(
                    f"input '{name}' has shape {arr.shape}, the model takes {spec.shape}",
                    code="BACKEND_IO_MISMATCH",
                )
            if not arr.flags.c_contiguous:
                raise BackendError(
                    f"input '{name}' must be C-contiguous", code="BACKEND_IO_MISMATCH"
                )
        return self._infer(feeds)

    @property
    def max_batch(self) -> int | None:
        """The largest batch the loaded model accepts when its batch axis is dynamic
        (a TensorRT profile's maximum); ``None`` where any batch runs."""
        return None

    # -- device I/O (backends with ``device_io``) ----------------------------------------

    @property
    def gpu(self) -> Any:
        """The CUDA device (:class:`edgemed.cuda.device.CudaDevice`) the backend runs
        on and whose stream device-I/O work must be queued on; ``None`` on the host."""
        return None

    def device_input(self, name: str, shape: tuple[int, ...]) -> tuple[int, tuple[int, ...], Any]:
        """Set input ``name`` to ``shape``; returns ``(device pointer, shape, dtype)``.
        Whatever is queued on ``gpu.stream`` that writes the input there (C order) is the
        input of the next :meth:`infer_device`."""
        raise self._no_device_io()

    def infer_device(self, fetch: Collection[str] | None = None) -> dict[str, np.ndarray]:
        """Run on the device inputs filled through :meth:`device_input`. ``fetch``: the
        outputs to copy back (default all); the others stay on the device for
        :meth:`device_output` (then the call need not wait for the device)."""
        raise self._no_device_io()

    def device_output(self, name: str) -> tuple[int, tuple[int, ...], Any]:
        """``(device pointer, shape, dtype)`` of output ``name`` after
        :meth:`infer_device` left it on the device."""
        raise self._no_device_io()

    def last_stage_ms(self) -> Mapping[str, float]:
        """Milliseconds of the parts of the last call a device backend can time: host
        copies ``h2d``/``d2h`` and, by device events, ``device_h2d``, ``device_infer``,
        ``device_d2h``. Empty for a backend computing in host memory."""
        return {}

    def _no_device_io(self) -> BackendError:
        return BackendError(
            f"the {self.name} backend has no device I/O", code="BACKEND_IO_MISMATCH"
        )

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"{self.name} backend is closed", code="BACKEND_CLOSED")

    @abc.abstractmethod
    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run validated inputs; map library failures to :class:`BackendError`."""

    def close(self) -> None:
        """Release the engine and its buffers; further calls raise ``BACKEND_CLOSED``."""
        self._closed = True

    def info(self) -> dict[str, Any]:
        """Provenance fields describing this backend."""
        return {
            "backend": self.name,
            "backend_version": self.version,
            "precision": self.precision,
            "device": self.device,
            "backend_reason": self.reason,
        }

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
