"""Fixtures of the DICOM node tests; every process they start is stopped at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dicomnode.harness import Listener, Orthanc, StoreSCP, need

pytest.importorskip("pynetdicom", reason="the listen extra: pip install 'edgemed[listen]'")
pytest.importorskip("highdicom", reason="the listen extra: pip install 'edgemed[listen]'")


@pytest.fixture
def listeners(tmp_path: Path) -> Iterator[list[Listener]]:
    """Factory list: ``start(spool, *args)`` appends a started listener."""
    started: list[Listener] = []
    yield started
    for listener in started:
        listener.kill()


@pytest.fixture
def listen(tmp_path: Path, listeners: list[Listener]):
    """``listen(*args, spool=...)`` -> a started ``edgemed listen`` (stopped afterwards)."""
    need("storescu")

    def start(*args: str, spool: Path | None = None) -> Listener:
        listener = Listener(spool or tmp_path / "spool", *args)
        listeners.append(listener)
        return listener.start()

    return start


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    need("Orthanc")
    server = Orthanc(tmp_path / "orthanc").start()
    yield server
    server.stop()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    server = StoreSCP(tmp_path / "storescp").start()
    yield server
    server.stop()
