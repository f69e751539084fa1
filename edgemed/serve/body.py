"""Reading an upload: streamed, counted, capped and timed while it arrives.

The body is never buffered whole before it is checked: a ``Content-Length`` over the
cap is refused before the first byte is read, and a chunked or lying body is refused
the moment the count passes the cap (413). The whole body must arrive within the
timeout (408), so a client trickling one byte a second holds nothing for long; other
requests are served meanwhile (reading is asynchronous). Multipart bodies are parsed
as they stream by python-multipart's parser into memory (Starlette's form parser
would spool large parts to temporary files: nothing may touch the disk).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio

from edgemed.serve.errors import RequestError, RequestTimeout, TooLarge, UnsupportedMediaType

__all__ = ["UPLOAD_TYPES", "ClientGone", "UploadLimits", "read_body"]

#: Content types taken as one image file (the format comes from the content, as
#: ``read_image`` finds it); anything else but multipart/form-data is 415.
UPLOAD_TYPES = frozenset(
    {
        "application/octet-stream",
        "application/dicom",
        "application/gzip",
        "application/x-gzip",
        "application/x-nifti",
        "application/x-npy",
        "image/png",
        "image/jpeg",
        "image/tiff",
    }
)


class ClientGone(Exception):
    """The client disconnected before its body was complete (nothing to answer)."""


@dataclass(frozen=True)
class UploadLimits:
    """``max_bytes``: the whole body; ``max_parts``: multipart parts; ``timeout_s``: the
    time the whole body may take to arrive."""

    max_bytes: int
    max_parts: int = 1024
    timeout_s: float = 60.0


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)


class _Multipart:
    """python-multipart's streaming parser, collecting ``file`` parts in memory."""

    def __init__(self, boundary: bytes, max_parts: int) -> None:
        from python_multipart.multipart import MultipartParser

        self.max_parts = max_parts
        self.parts: list[_Part] = []
        self._field = b""
        self._value = b""
        self._ended = False
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_part_data": self._data,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_done,
                "on_end": self._end,
            },
        )

    def _begin(self) -> None:
        if len(self.parts) >= self.max_parts:
            raise RequestError(
                f"more than {self.max_parts} parts in one request (--max-parts)",
                code="REQUEST_TOO_MANY_PARTS",
            )
        self.parts.append(_Part())

    def _data(self, data: bytes, start: int, end: int) -> None:
        self.parts[-1].chunks.append(data[start:end])

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self.parts[-1].headers[name] = self._value.decode("latin-1")
        self._field = self._value = b""

    def _headers_done(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self.parts[-1].headers.get("content-disposition", ""))
        name = options.get(b"name", b"").decode("latin-1")
        if name != "file":
            # Never echo the field name: it is client text of any length.
            raise RequestError(
                "multipart fields must be named 'file' (one per uploaded file)",
                code="REQUEST_MULTIPART",
            )

    def _end(self) -> None:
        self._ended = True

    def feed(self, chunk: bytes) -> None:
        from python_multipart.exceptions import MultipartParseError

        try:
            self.parser.write(chunk)
        except MultipartParseError as exc:
            raise RequestError("malformed multipart body", code="REQUEST_MULTIPART") from exc

    def files(self) -> list[bytes | bytearray]:
        if not self._ended:
            raise RequestError("the multipart body ends early", code="REQUEST_MULTIPART")
        if not self.parts:
            raise RequestError("no 'file' part in the multipart body", code="REQUEST_NO_FILE")
        return [b"".join(p.chunks) for p in self.parts]


def _content_type(headers: Any) -> tuple[str, dict[bytes, bytes]]:
    from python_multipart.multipart import parse_options_header

    raw = headers.get("content-type")
    if not raw:
        return "application/octet-stream", {}
    ctype, options = parse_options_header(raw)
    return ctype.decode("latin-1").lower(), options


async def read_body(request: Any, limits: UploadLimits) -> list[bytes | bytearray]:
    """The uploaded files of ``request``: one for a plain body, one per ``file`` part of
    a multipart body.

    Raises:
        UnsupportedMediaType: neither an image upload nor multipart/form-data (415).
        TooLarge: over ``limits.max_bytes`` (413), checked while reading.
        RequestTimeout: the body took longer than ``limits.timeout_s`` (408).
        RequestError: a malformed multipart body or one with too many parts (400).
        ClientGone: the client disconnected mid-upload.
    """
    ctype, options = _content_type(request.headers)
    multipart: _Multipart | None = None
    if ctype == "multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise RequestError("multipart body without a boundary", code="REQUEST_MULTIPART")
        try:
            multipart = _Multipart(boundary, limits.max_parts)
        except Exception as exc:  # python-multipart refuses an over-long boundary
            raise RequestError("unusable multipart boundary", code="REQUEST_MULTIPART") from exc
    elif ctype not in UPLOAD_TYPES:
        raise UnsupportedMediaType(
            "send the image file as the body (application/octet-stream, application/dicom, "
            "image/png, ...) or as multipart/form-data with 'file' parts"
        )
    too_large = TooLarge(f"the upload is over the {limits.max_bytes} byte cap (--max-upload-mb)")
    declared = request.headers.get("content-length")
    size = int(declared) if declared is not None and declared.isdigit() else None
    if size is not None and size > limits.max_bytes:
        raise too_large  # refused before a byte of it is read
    # A declared length: the chunks after the first go straight into place as they
    # arrive, so the copy overlaps the transfer (joining them after the last byte put
    # a whole extra copy of the body on the answer's path, ~0.1 ms per MB).
    buffer: bytearray | None = None
    chunks: list[bytes] = []
    total = 0
    more = True
    try:
        # The ASGI messages as they come (Starlette's request.stream() adds nothing
        # here but its own steps).
        async with _time_limit(limits.timeout_s):
            while more:
                message = await request.receive()
                if message["type"] != "http.request":  # http.disconnect
                    raise ClientGone()
                more = message.get("more_body", False)
                chunk = message.get("body", b"")
                start, total = total, total + len(chunk)
                if total > limits.max_bytes:
                    raise too_large
                if multipart is not None:
                    multipart.feed(chunk)
                elif buffer is not None:
                    if total > len(buffer):
                        raise _length_error()
                    buffer[start:total] = chunk
                elif more and not chunks and size is not None and size >= total:
                    buffer = bytearray(size)
                    buffer[:total] = chunk
                else:
                    chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(
            f"the body did not arrive within {limits.timeout_s:g} s (--body-timeout-s)"
        ) from None
    if multipart is not None:
        return multipart.files()
    if buffer is not None:
        if total != len(buffer):
            raise _length_error()
        return [buffer]
    return [b"".join(chunks)]  # one chunk: that chunk itself, no copy


def _length_error() -> RequestError:
    return RequestError("the body's length is not its Content-Length", code="REQUEST_LENGTH")


@contextlib.asynccontextmanager
async def _time_limit(seconds: float) -> AsyncIterator[None]:
    """Raises TimeoutError when its block takes over ``seconds``.

    asyncio's own (3.11+) where there is one. Traced in the service, caches cold after
    the model call (HTTP may add at most 2 ms in all), reading the body took 0.21 ms
    (39 kB) and 0.73 ms (1 MB) under anyio's ``fail_after``, 0.06 and 0.46 ms under
    ``asyncio.timeout``. Python 3.10 (JetPack 6) keeps anyio's.
    """
    timeout = getattr(asyncio, "timeout", None)
    if timeout is None:
        with anyio.fail_after(seconds):
            yield
    else:
        async with timeout(seconds):
            yield
