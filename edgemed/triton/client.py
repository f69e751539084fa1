"""Client helper for an edgemed model served by Triton (on ``tritonclient``).

Example::

    from edgemed.triton import infer
    out = infer("localhost:8000", "edgemed-demo-ct-tissue", "CT_small.dcm")
    out.result["outputs"]["stats"]["lung"], out.mask.shape   # as the in-process call

A path to a directory is sent as one DICOM series (its files as the rows of one
request, as ``edgemed run DIR`` reads the folder). Several servers (the shape of a
multi-node deployment behind a load balancer): :class:`TritonClient` with several URLs
sends each call to the next server in turn.

Errors: a response carrying edgemed's code (``INPUT_CORRUPT: ...``) raises the
matching :class:`edgemed.EdgemedError` subclass with that code; a server that cannot be
reached raises ``BackendError`` ``BACKEND_UNAVAILABLE``.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgemed._lazy import require
from edgemed.errors import (
    BackendError,
    BundleError,
    EdgemedError,
    InputError,
    OutputError,
    UsageError,
)
from edgemed.triton import wire

__all__ = ["RemoteResult", "TritonClient", "infer"]

Item = str | os.PathLike[str] | bytes | bytearray | memoryview

_FAMILIES: dict[str, type[EdgemedError]] = {
    "INPUT": InputError,
    "USAGE": UsageError,
    "BUNDLE": BundleError,
    "OUTPUT": OutputError,
}
_CODE = re.compile(r"\b([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+):\s")


@dataclass
class RemoteResult:
    """What the model returned for one input.

    Attributes:
        result: ``result.json`` as ``edgemed run`` writes it (``Result.to_dict()``).
        mask: segmentation: the mask in the input's own grid, shaped as the in-process
            ``Result.mask`` (``(Y, X)`` or ``(Z, Y, X)``); None for other tasks.
    """

    result: dict[str, Any]
    mask: np.ndarray | None

    @property
    def stats(self) -> dict[str, Any]:
        """Per-label statistics (segmentation: ``outputs.labels`` of result.json), as
        ``Result.stats``; empty for other tasks."""
        return dict(self.result.get("outputs", {}).get("labels", {}))

    def to_dict(self) -> dict[str, Any]:
        return self.result


def _error(message: str) -> EdgemedError:
    """The EdgemedError a Triton error message carries (``CODE: message``)."""
    m = _CODE.search(message)
    if m is None:
        return BackendError(f"Triton: {message}", code="BACKEND_FAILED")
    code = m.group(1)
    cls = _FAMILIES.get(code.split("_", 1)[0], BackendError)
    text = message[m.end() :].strip()
    return cls(text, code=code)


def _files(item: Item) -> tuple[list[bytes], bool]:
    """The bytes to send and whether they are one series."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        return [bytes(item)], False
    path = Path(item)
    try:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file())
            if not files:
                raise InputError("the folder holds no files", code="INPUT_EMPTY_SERIES", path=path)
            return [p.read_bytes() for p in files], True
        return [path.read_bytes()], False
    except FileNotFoundError as exc:
        raise InputError("file does not exist", code="INPUT_NOT_FOUND", path=path) from exc
    except OSError as exc:
        raise InputError("cannot be read", code="INPUT_UNREADABLE", path=path) from exc


class TritonClient:
    """Calls to one model on one or more Triton servers (round robin).

    Args:
        urls: ``host:port`` of each server's HTTP endpoint (or gRPC with
            ``protocol="grpc"``).
        model: the model name (``edgemed triton-repo`` uses the bundle's name).
        protocol: ``http`` or ``grpc``.
        timeout: seconds per call.

    Thread-safe: each thread gets its own connections (tritonclient's are not shared).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        model: str,
        *,
        protocol: str = "http",
        timeout: float = 120.0,
    ) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise UsageError("give at least one server URL")
        if protocol not in ("http", "grpc"):
            raise UsageError(f"protocol must be http or grpc, got {protocol!r}")
        self.model = model
        self.protocol = protocol
        self.timeout = timeout
        self._next = itertools.cycle(range(len(self.urls)))
        self._lock = threading.Lock()
        self._local = threading.local()
        self._mod = require(
            f"tritonclient.{protocol}", "triton", purpose="the Triton client helper"
        )
        self._utils = require("tritonclient.utils", "triton", purpose="the Triton client helper")

    def _client(self, index: int) -> Any:
        clients = self._local.__dict__.setdefault("clients", {})
        if index not in clients:
            url = self.urls[index]
            if self.protocol == "http":
                clients[index] = self._mod.InferenceServerClient(
                    url, connection_timeout=self.timeout, network_timeout=self.timeout
                )
            else:
                clients[index] = self._mod.InferenceServerClient(url)
        return clients[index]

    def infer(self, item: Item) -> RemoteResult:
        """One input (a file path, a series folder, or a file's bytes) on the next server."""
        return self.infer_files(*_files(item))

    def infer_files(self, files: Sequence[bytes], series: bool = False) -> RemoteResult:
        """Files' bytes as one request: one image, or one series when ``series``."""
        results = self._call(files, series)
        if len(results) != 1:
            raise BackendError(f"expected one result, got {len(results)}", code="BACKEND_FAILED")
        return results[0]

    def infer_batch(self, files: Sequence[bytes]) -> list[RemoteResult]:
        """Several images' files in one request (one result each, in order)."""
        return self._call(files, False)

    def _call(self, files: Sequence[bytes], series: bool) -> list[RemoteResult]:
        mod = self._mod
        rows, lengths = wire.pack(list(files))
        inputs = [mod.InferInput(wire.INPUT, list(rows.shape), "UINT8")]
        inputs[0].set_data_from_numpy(rows)
        if lengths is not None:
            inputs.append(mod.InferInput(wire.LENGTH, list(lengths.shape), "INT64"))
            inputs[1].set_data_from_numpy(lengths)
        with self._lock:
            index = next(self._next)
        kwargs: dict[str, Any] = {"parameters": {wire.SERIES: True}} if series else {}
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout
        try:
            response = self._client(index).infer(self.model, inputs, **kwargs)
        except self._utils.InferenceServerException as exc:
            message = exc.message() or str(exc)
            status = str(exc.status() or "")
            # No HTTP status (HTTP client) or gRPC's UNAVAILABLE, and no edgemed code:
            # nothing answered.
            if (not status or "UNAVAILABLE" in status) and _CODE.search(message) is None:
                raise BackendError(
                    f"Triton at {self.urls[index]} cannot be reached: {message}",
                    code="BACKEND_UNAVAILABLE",
                ) from exc
            raise _error(message) from exc
        except OSError as exc:  # connection refused / reset (HTTP client)
            raise BackendError(
                f"Triton at {self.urls[index]} cannot be reached: {exc}",
                code="BACKEND_UNAVAILABLE",
            ) from exc
        texts = response.as_numpy(wire.RESULT).reshape(-1)
        masks = response.as_numpy(wire.MASK)
        out = []
        for k, raw in enumerate(texts):
            result = wire.parse_result(raw)
            mask = None if masks is None else wire.crop_mask(masks[k], result)
            out.append(RemoteResult(result, mask))
        return out

    def close(self) -> None:
        for client in self._local.__dict__.get("clients", {}).values():
            client.close()
        self._local = threading.local()

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def infer(url: str, model: str, path_or_bytes: Item, *, protocol: str = "http") -> RemoteResult:
    """Run one input (file path, series folder or file bytes) on ``model`` at ``url``.

    Returns the same ``result.json`` dict and mask as the in-process call
    (:class:`RemoteResult`).
    """
    with TritonClient(url, model, protocol=protocol) as client:
        return client.infer(path_or_bytes)
