"""One exception tree for everything edgemed refuses.

Every error carries a stable string ``code`` (tests and callers match on it, never on
the message text) and the CLI exit code of its family. Messages never contain
patient-identifying DICOM values: name the file and the problem, nothing else.
"""

from __future__ import annotations

__all__ = [
    "EdgemedError",
    "UsageError",
    "InputError",
    "DecoderMissingError",
    "GalleryError",
    "BundleError",
    "BackendError",
    "MissingDependencyError",
    "OutputError",
    "AccuracyGateError",
    "ExportError",
    "EXIT_CODES",
]


class EdgemedError(Exception):
    """Base of every error edgemed raises on purpose.

    Attributes:
        code: stable machine-readable code, e.g. ``INPUT_TRUNCATED``.
        path: the file or directory concerned, when there is one.
        exit_code: what the CLI exits with for this error family.
    """

    exit_code = 1
    default_code = "EDGEMED_ERROR"

    def __init__(self, message: str, *, code: str | None = None, path: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.path = None if path is None else str(path)

    def __str__(self) -> str:
        where = f" ({self.path})" if self.path else ""
        return f"{self.code}: {self.message}{where}"


class UsageError(EdgemedError):
    """The caller asked for something that does not make sense (bad option, bad shape)."""

    exit_code = 2
    default_code = "USAGE"


class InputError(EdgemedError):
    """An input image cannot be read or is not what it claims to be (codes ``INPUT_*``)."""

    exit_code = 3
    default_code = "INPUT_INVALID"


class DecoderMissingError(InputError):
    """Pixel data is compressed and no installed decoder handles it."""

    default_code = "INPUT_DECODER_MISSING"


class GalleryError(InputError):
    """A similar-case gallery cannot be used (codes ``GALLERY_*``): not found, malformed,
    its embeddings do not match their sha256 (``GALLERY_INTEGRITY``), or it was made by
    another model than the one asked to match against it (``GALLERY_BUNDLE_MISMATCH``:
    embeddings of two models are not comparable)."""

    default_code = "GALLERY_INVALID"


class BundleError(EdgemedError):
    """A bundle is missing, malformed, or fails verification (codes ``BUNDLE_*``)."""

    exit_code = 4
    default_code = "BUNDLE_INVALID"


class BackendError(EdgemedError):
    """An inference backend cannot be created or fails (codes ``BACKEND_*``, ``ENGINE_*``,
    ``GPU_*``)."""

    exit_code = 5
    default_code = "BACKEND_FAILED"


class MissingDependencyError(BackendError):
    """An optional extra is needed for what was asked; the message names the pip command."""

    default_code = "DEPENDENCY_MISSING"

    def __init__(self, module: str, extra: str, *, purpose: str = "") -> None:
        why = f" for {purpose}" if purpose else ""
        super().__init__(
            f"the Python module '{module}' is needed{why}: pip install \"edgemed[{extra}]\""
        )
        self.module = module
        self.extra = extra


class OutputError(EdgemedError):
    """Results could not be written (unwritable directory, disk full)."""

    exit_code = 7
    default_code = "OUTPUT_WRITE_FAILED"


class AccuracyGateError(EdgemedError):
    """Export: a precision variant disagrees with the FP32 model beyond the thresholds.

    Attributes:
        report: the accuracy report (per variant, per class) that failed, as JSON data.
        table: the same as a readable per-class table (the CLI prints it).
    """

    exit_code = 6
    default_code = "ACCURACY_GATE"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        path: object = None,
        report: dict | None = None,
        table: str = "",
    ) -> None:
        super().__init__(message, code=code, path=path)
        self.report = report or {}
        self.table = table


class ExportError(EdgemedError):
    """Export: the model cannot be loaded, exported, checked or converted (``EXPORT_*``)."""

    exit_code = 8
    default_code = "EXPORT_FAILED"


#: CLI exit codes by meaning; README documents the same table.
EXIT_CODES = {
    "ok": 0,
    "usage": UsageError.exit_code,
    "input": InputError.exit_code,
    "bundle": BundleError.exit_code,
    "backend": BackendError.exit_code,
    "accuracy_gate": AccuracyGateError.exit_code,
    "output": OutputError.exit_code,
    "export": ExportError.exit_code,
}
