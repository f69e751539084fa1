"""The service's settings, as one frozen object (built by ``edgemed serve`` or by a
caller of :func:`edgemed.serve.app.create_app`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from edgemed.errors import UsageError
from edgemed.settings import Options

__all__ = ["MIB", "ServeConfig"]

MIB = 1 << 20


@dataclass(frozen=True)
class ServeConfig:
    """How the service runs.

    Attributes:
        bundle: bundle directory (None: the demo bundle).
        options: the pipelines' options (backend, precision, threads, batch size,
            spacing for inputs that do not state it, caps...). Its ``check_modality`` is
            the default for requests that do not say ``any_modality``.
        workers: pipelines (two worker threads each: see serve.workers).
        queue: jobs that may wait beyond the running ones; more get 429.
        max_upload_bytes: a request body's cap (413 while reading beyond it).
        max_parts: multipart parts per request.
        body_timeout_s: time a body may take to arrive (408 after it).
        batch_window_ms: how long a worker holding one 2D slice waits for more to share
            its backend call (0: no micro-batching).
        store_count, store_bytes: the result store's caps (oldest evicted).
        token: the bearer token every ``/v1`` and ``/metrics`` request must carry
            (None: no authentication; only allowed on a loopback address).
    """

    bundle: str | os.PathLike[str] | None = None
    options: Options = field(default_factory=Options)
    workers: int = 1
    queue: int = 16
    max_upload_bytes: int = 256 * MIB
    max_parts: int = 1024
    body_timeout_s: float = 60.0
    batch_window_ms: float = 2.0
    store_count: int = 64
    store_bytes: int = 512 * MIB
    token: str | None = None

    def __post_init__(self) -> None:
        checks = {
            "workers": self.workers >= 1,
            "queue": self.queue >= 1,
            "max_upload_bytes": self.max_upload_bytes >= 1,
            "max_parts": self.max_parts >= 1,
            "body_timeout_s": self.body_timeout_s > 0,
            "batch_window_ms": 0 <= self.batch_window_ms <= 1000,
            "store_count": self.store_count >= 1,
            "store_bytes": self.store_bytes >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise UsageError(f"serve: out-of-range settings: {', '.join(bad)}")
        if self.token is not None and len(self.token) < 16:
            raise UsageError("the bearer token must be at least 16 characters")

    @property
    def bundle_path(self) -> Path:
        from edgemed.pipeline import demo_bundle

        return Path(self.bundle) if self.bundle is not None else demo_bundle()
