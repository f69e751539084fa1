"""Real processes for the DICOM node tests: ``edgemed listen`` itself, DCMTK's
``storescu``/``echoscu``/``storescp`` and Orthanc, each on free loopback ports, polled
until ready (never a fixed sleep as synchronisation) and always stopped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from tests.cli_run import cli_command, python_env
from tests.support import dicom_series

#: Generous: CI is a slower 2-core machine shared by other jobs.
TIMEOUT = 120.0

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    """Poll ``check()`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(delay)
        delay = min(0.5, delay * 1.5)


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (Debian: tools/system_deps.sh)")
    return path


def dcmtk_env() -> dict[str, str]:
    # Without TCP_NODELAY, DCMTK stalls ~45 ms per message on loopback.
    return {**os.environ, "TCP_NODELAY": "1"}


def storescu(
    port: int,
    files: Sequence[str | Path],
    *,
    aet: str = "STORESCU",
    called: str = "EDGEMED",
    extra: Sequence[str] = (),
    timeout: float = TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Send ``files`` with DCMTK's storescu (``-R``: propose only what the files need)."""
    cmd = [need("storescu"), "-R", "-aet", aet, "-aec", called, *extra, "127.0.0.1", str(port)]
    return subprocess.run(
        [*cmd, *map(str, files)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def echo(port: int, *, aet: str = "ECHOSCU", extra: Sequence[str] = ()) -> bool:
    """C-ECHO with DCMTK's echoscu: True when answered."""
    out = subprocess.run(
        [need("echoscu"), "-aet", aet, "-aec", "EDGEMED", *extra, "127.0.0.1", str(port)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    return out.returncode == 0


def ct_series(
    folder: Path,
    count: int,
    *,
    step_mm: float = 2.5,
    source: str | None = None,
    edit: Callable[[Any, int], None] | None = None,
) -> list[Path]:
    """A new CT series (own Study/Series UIDs) of ``count`` copies of pydicom's real
    CT_small.dcm stacked ``step_mm`` apart; returns its files in slice order."""
    study, series = generate_uid(), generate_uid()

    def uids(ds: Any, k: int) -> None:
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.InstanceNumber = k + 1
        if edit is not None:
            edit(ds, k)

    dicom_series(
        source or get_testdata_file("CT_small.dcm"), folder, count, step_mm=step_mm, edit=uids
    )
    return [folder / f"s{k}.dcm" for k in range(count)]


class Listener:
    """``edgemed listen`` in a subprocess on a free port, ready when it says so."""

    def __init__(
        self, spool: Path, *args: str, log: Path | None = None, threads: int | None = 1
    ) -> None:
        self.spool = spool
        # One ONNX Runtime thread by default: the tests share a 2-core machine.
        self.args = [*(["--threads", str(threads)] if threads else []), *args]
        self.log = log or spool.parent / f"listen-{spool.name}.log"
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.tls_port: int | None = None

    def start(self, timeout: float = TIMEOUT) -> Listener:
        env = python_env({"OMP_NUM_THREADS": "1"})
        cmd = [
            *cli_command("listen"),
            "--spool",
            str(self.spool),
            "--port",
            "0",
            *self.args,
        ]
        err = open(self.log, "a")  # noqa: SIM115 (handed to the child)
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT
        )
        err.close()
        ready: list[str] = []

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                if line.startswith("edgemed listen: ready"):
                    ready.append(line)

        threading.Thread(target=read, daemon=True).start()
        wait_until(
            lambda: ready or self.proc.poll() is not None, "edgemed listen to start", timeout
        )
        if not ready:
            raise AssertionError(f"edgemed listen exited: {self.log.read_text()[-2000:]}")
        words = ready[0].split()
        self.port = int(words[3].rsplit(":", 1)[1])
        if len(words) > 4 and words[4].startswith("tls:"):
            self.tls_port = int(words[4][4:])
        return self

    def kill(self) -> None:
        """``kill -9``: no cleanup of any kind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(TIMEOUT)

    def stop(self) -> int | None:
        """SIGTERM, as a supervisor stops it; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(TIMEOUT)
        return self.proc.returncode

    def listing(self) -> dict[str, Any]:
        """``edgemed spool DIR --json``."""
        out = subprocess.run(
            [sys.executable, "-m", "edgemed.cli", "spool", str(self.spool), "--json"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=ROOT,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def series_states(self) -> list[str]:
        return [s["state"] for s in self.listing()["series"]]

    def wait_settled(self, count: int, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        """Wait until ``count`` series are all done, skipped or failed."""

        def settled() -> list[dict[str, Any]] | None:
            series = self.listing()["series"]
            final = [s for s in series if s["state"] in ("done", "skipped", "failed")]
            return series if len(series) == count and len(final) == count else None

        return wait_until(settled, f"{count} series to be processed", timeout)


class Orthanc:
    """Orthanc on free loopback ports with its own storage, no authentication."""

    def __init__(self, root: Path, *, edgemed_port: int = 11112) -> None:
        self.root = root
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.config = root / "orthanc.json"
        root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            json.dumps(
                {
                    "Name": "edgemed-test",
                    "HttpPort": self.http_port,
                    "DicomPort": self.dicom_port,
                    "DicomAet": "ORTHANC",
                    "StorageDirectory": str(root / "storage"),
                    "IndexDirectory": str(root / "index"),
                    "RemoteAccessAllowed": False,
                    "AuthenticationEnabled": False,
                    "Plugins": [],
                    "DicomModalities": {"edgemed": ["EDGEMED", "127.0.0.1", edgemed_port]},
                }
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Orthanc:
        log = open(self.root / "orthanc.log", "ab")  # noqa: SIM115 (handed to the child)
        self.proc = subprocess.Popen(
            [need("Orthanc"), str(self.config)], stdout=log, stderr=subprocess.STDOUT, cwd=self.root
        )
        log.close()
        wait_until(self._up, "Orthanc's REST API")
        return self

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError((self.root / "orthanc.log").read_text()[-2000:])
        try:
            return bool(self.get("/system"))
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(TIMEOUT)
        self.proc = None

    def raw(self, path: str) -> bytes:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=30) as r:  # noqa: S310 (loopback)
            return r.read()

    def get(self, path: str) -> Any:
        return json.loads(self.raw(path))

    @property
    def forward(self) -> str:
        return f"ORTHANC@127.0.0.1:{self.dicom_port}"

    def instances(self) -> list[dict[str, Any]]:
        """Every stored instance: its Orthanc id and main tags."""
        out = []
        for oid in self.get("/instances"):
            tags = self.get(f"/instances/{oid}/simplified-tags")
            out.append({"id": oid, **tags})
        return out

    def dataset(self, oid: str) -> pydicom.Dataset:
        import io

        return pydicom.dcmread(io.BytesIO(self.raw(f"/instances/{oid}/file")))


class StoreSCP:
    """DCMTK's storescp writing every received object under a unique file name: a count
    of its files is a count of deliveries (a second copy of an object is a second file)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.out = root / "received"
        self.out.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> StoreSCP:
        log = open(self.root / "storescp.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [need("storescp"), "-aet", "PACS", "-uf", "-od", str(self.out), "+xa", str(self.port)],
            env=dcmtk_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_until(self._up, "storescp to listen")
        return self

    def _up(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    @property
    def forward(self) -> str:
        return f"PACS@127.0.0.1:{self.port}"

    def received(self) -> list[pydicom.Dataset]:
        return [
            pydicom.dcmread(p, stop_before_pixels=True)
            for p in sorted(self.out.iterdir())
            if p.is_file()
        ]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)
