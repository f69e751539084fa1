"""The worker of tests/io/test_io_fuzz.py: each mutated input read from its path and from
its bytes, in a subprocess, below the readers' catch-all boundary.

The test drives benchmarks/fuzz_readers.py's mutations and its ``Worker`` (a subprocess
with a per-input timeout, restarted after a crash); :class:`FormsWorker` only swaps the
command for this script. For each input path (one per stdin line) it prints one JSON line:
the path read's outcome (as the benchmark's own worker reports it), plus

* ``bytes``: the outcome of reading the file's bytes (a series folder: ``read_series`` of
  its files' bytes), with a digest of the image for reads and the path an error named;
* ``bytes_expected``: ``"path"`` when the bytes must give the path's outcome, or
  ``"noext"`` when the path read relied on the file's extension (bytes have no name and
  count as a file without an extension), with ``noext``: the outcome of the same bytes
  in a file without an extension.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import fuzz_readers as fuzz


class FormsWorker(fuzz.Worker):  # type: ignore[misc,name-defined]
    """The benchmark's worker process, running this module (``python -m``, from the
    repository root, so ``tests`` and ``benchmarks`` import) instead of the benchmark."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "tests.io.fuzz_forms", str(self.memory_limit_mb)]


def _digest(image: Any) -> str:
    """Everything a MedicalImage carries, hashed: equal digests, equal images."""
    facts = (
        image.array.shape,
        str(image.array.dtype),
        image.spacing,
        image.origin,
        None if image.direction is None else image.direction.tobytes(),
        image.modality,
        image.photometric,
        sorted(image.metadata.items()),
    )
    return hashlib.sha256(image.array.tobytes() + repr(facts).encode()).hexdigest()


def _classify(read: Callable[[], Any]) -> dict[str, Any]:
    """The benchmark's outcome, plus the path a refusal named or the image's digest."""
    outcome, result = fuzz.classify(read)
    if outcome["status"] == "refused":
        outcome["named"] = result.path
    elif outcome["status"] != "crash":
        outcome["digest"] = _digest(result)
    return outcome


def _detected(source: Any) -> str | None:
    from edgemed.errors import EdgemedError
    from edgemed.io.read import detect_format

    try:
        return detect_format(source)
    except EdgemedError:
        return None


def read_forms(path: Path) -> dict[str, Any]:
    """The path read's outcome with the bytes read's (see the module docstring)."""
    from edgemed.io.read import _read
    from edgemed.io.series import _read_series
    from edgemed.limits import DEFAULT_LIMITS

    outcome = _classify(lambda: _read(path, DEFAULT_LIMITS))
    if path.is_dir():
        items = [p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()]
        outcome["bytes"] = _classify(lambda: _read_series(items, DEFAULT_LIMITS)[0])
        outcome["bytes_expected"] = "path"
    else:
        data = path.read_bytes()
        outcome["bytes"] = _classify(lambda: _read(data, DEFAULT_LIMITS))
        outcome["bytes_expected"] = "path"
        if _detected(data) != _detected(path):  # the path read went by its name
            copy = path.with_name("input-without-extension")
            copy.write_bytes(data)
            outcome["bytes_expected"] = "noext"
            outcome["noext"] = _classify(lambda: _read(copy, DEFAULT_LIMITS))
    outcome["rss_kb"] = fuzz._peak_rss_kb()
    return outcome


if __name__ == "__main__":
    # The benchmark's worker loop (memory limit, stdout kept for the protocol, readers
    # imported before the first timed read) with this module's read.
    fuzz.worker_main(int(sys.argv[1]), read_forms)
