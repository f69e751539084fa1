"""``read_body`` on ASGI messages as a server hands them over: a declared length is
filled in place chunk by chunk, a single chunk is passed on as it is, and a body whose
length is not the declared one is refused."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed")

from starlette.requests import Request  # noqa: E402

from edgemed.serve.body import ClientGone, UploadLimits, read_body  # noqa: E402
from edgemed.serve.errors import RequestError, TooLarge  # noqa: E402


def _read(chunks: list[bytes], length: int | None, *, disconnect: bool = False, cap: int = 100):
    headers = [(b"content-type", b"application/octet-stream")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    scope = {"type": "http", "method": "POST", "path": "/v1/infer", "headers": headers}
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1 or disconnect}
        for i, c in enumerate(chunks)
    ]
    if disconnect:
        messages.append({"type": "http.disconnect"})

    async def receive() -> dict:
        return messages.pop(0)

    return asyncio.run(read_body(Request(scope, receive), UploadLimits(max_bytes=cap)))


def test_a_declared_length_is_filled_in_place():
    (body,) = _read([b"abc", b"defg", b"hij"], 10)
    assert isinstance(body, bytearray) and body == b"abcdefghij"


def test_one_chunk_is_passed_on_as_it_is():
    chunk = b"x" * 50
    (body,) = _read([chunk], 50)
    assert body is chunk


def test_a_body_without_a_length_is_joined():
    (body,) = _read([b"ab", b"cd"], None)
    assert body == b"abcd"


@pytest.mark.parametrize(("chunks", "length"), [([b"abc", b"de"], 9), ([b"abc", b"def"], 4)])
def test_a_body_that_is_not_its_declared_length_is_refused(chunks, length):
    with pytest.raises(RequestError) as err:
        _read(chunks, length)
    assert err.value.code == "REQUEST_LENGTH"


def test_the_cap_holds_while_chunks_arrive():
    with pytest.raises(TooLarge):
        _read([b"x" * 60, b"x" * 60], None, cap=100)


def test_a_client_gone_mid_body_is_told_apart():
    with pytest.raises(ClientGone):
        _read([b"abc"], 10, disconnect=True)
