"""Small helpers shared by test modules (import as ``tests.support``)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgemed.errors import EdgemedError


def error_code(
    call: Callable[..., Any],
    *args: Any,
    kind: type[EdgemedError] | tuple[type[EdgemedError], ...] = EdgemedError,
    **kwargs: Any,
) -> str:
    """The stable code of the ``kind`` error that ``call(*args, **kwargs)`` raises (the
    test fails if it raises nothing or something else)."""
    with pytest.raises(kind) as excinfo:
        call(*args, **kwargs)
    return excinfo.value.code


def one_error_line(proc: subprocess.CompletedProcess, code: str) -> str:
    """The CLI's stderr is exactly one ``edgemed: error ...`` line naming ``code`` (and no
    traceback); returns that line."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("edgemed: error ") and code in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    return lines[0]


def limit_file_size(limit: int) -> Callable[[], None]:
    """A ``preexec_fn`` capping the files the child writes at ``limit`` bytes: a write
    beyond it fails with a real EFBIG from the kernel (SIGXFSZ ignored)."""

    def preexec() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def dicom_series(
    source: str | Path,
    folder: Path,
    count: int,
    *,
    step_mm: float = 5.0,
    name: Callable[[int], str] = "s{}.dcm".format,
    edit: Callable[[Any, int], None] | None = None,
) -> Path:
    """``count`` copies of the DICOM file ``source`` written into ``folder`` as one
    series: slice ``k`` at z = ``k * step_mm``, with its own SOPInstanceUID, named
    ``name(k)``; ``edit(ds, k)`` may change each slice before it is saved. Returns
    ``folder``."""
    import pydicom

    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        ds = pydicom.dcmread(source)
        ds.ImagePositionPatient = [0.0, 0.0, step_mm * k]
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        if edit is not None:
            edit(ds, k)
        ds.save_as(folder / name(k))
    return folder
