"""Where preprocessing runs: the one function that decides it.

The pipeline and ``edgemed doctor`` both call :func:`choose_preprocess`, so what doctor
reports is what a run does. ``cuda`` is honoured or refused, never quietly replaced;
``auto`` takes the GPU only beside a backend with device I/O (with ONNX Runtime on the
CPU, GPU preprocessing would add copies), only for a spec the kernels honour and only
where the kernels can be loaded (cubins stored by ``edgemed build``, or nvcc), else the
CPU with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgemed.errors import BackendError, EdgemedError

if TYPE_CHECKING:
    from edgemed.preprocess.spec import PreprocessSpec

__all__ = ["PreprocessChoice", "choose_preprocess"]


@dataclass(frozen=True)
class PreprocessChoice:
    """What :func:`choose_preprocess` decided.

    Attributes:
        device: ``cpu`` or ``cuda``.
        reason: why, in words.
        skipped: ``(device, why not)`` for what was not taken.
        warn: ``auto`` fell back for a reason the user can fix (missing kernels): worth
            a warning rather than an info line.
        error: for ``cuda`` that cannot be honoured, the error to raise (device is then
            ``cpu`` only for reporting).
    """

    device: str
    reason: str
    skipped: tuple[tuple[str, str], ...] = ()
    warn: bool = False
    error: EdgemedError | None = field(default=None, compare=False)


def choose_preprocess(
    mode: str,
    spec: PreprocessSpec,
    *,
    backend: str | None,
    device_io: bool,
    cubin_dir: str | os.PathLike[str] | None,
    arch: Callable[[], str],
) -> PreprocessChoice:
    """Where ``--preprocess mode`` runs beside ``backend``.

    Args:
        mode: ``auto``, ``cpu`` or ``cuda``.
        spec: the preprocessing spec as the pipeline runs it.
        backend: the chosen backend's name (for the reason), or ``None``.
        device_io: whether that backend has device I/O.
        cubin_dir: where ``edgemed build`` stored the kernels' cubins.
        arch: returns the GPU's architecture (``sm_87``); raises an ``EdgemedError``
            where there is no GPU. Called only when it matters.
    """
    if mode == "cpu":
        return PreprocessChoice("cpu", "asked for (--preprocess cpu)")
    if mode == "auto" and not device_io:
        why = f"beside {backend or 'no backend'} the CPU path is used (no device I/O)"
        return PreprocessChoice("cpu", why, (("cuda", why),))
    # Imported here: only GPU runs need them (no pycuda import happens for these).
    from edgemed.cuda.launchers import kernels_unavailable
    from edgemed.cuda.packing import check_preprocess_spec

    try:
        check_preprocess_spec(spec)
        gpu_arch = arch()
    except EdgemedError as exc:
        return _refused(mode, exc, warn=False)
    missing = kernels_unavailable(cubin_dir, gpu_arch)
    if missing:
        return _refused(mode, BackendError(missing, code="GPU_TOOLCHAIN"), warn=True)
    return PreprocessChoice("cuda", "the CUDA kernels support this bundle's preprocessing spec")


def _refused(mode: str, exc: EdgemedError, *, warn: bool) -> PreprocessChoice:
    error = exc if mode == "cuda" else None
    return PreprocessChoice("cpu", exc.message, (("cuda", exc.message),), warn, error)
