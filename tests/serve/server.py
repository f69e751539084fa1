"""A real ``edgemed serve`` in a subprocess for the tests: free loopback port (the OS
picks it: ``--port 0``, read back from the server's first line), ready when /readyz
says so, always stopped (and killed if it will not stop)."""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cli_run import cli_command, python_env

__all__ = ["Server", "peak_rss", "raw_request", "rss"]

START_TIMEOUT_S = 120.0


def _status(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def rss(pid: int) -> int:
    return _status(pid, "VmRSS")


def peak_rss(pid: int) -> int:
    return _status(pid, "VmHWM")


class Server:
    """``edgemed serve ARGS --port 0`` on 127.0.0.1.

    Args:
        args: extra command-line arguments.
        log: file that receives the server's stderr (read it in assertions).
        env: extra environment variables.
    """

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._lines: queue.Queue[str] = queue.Queue()
        cmd = cli_command("serve", "--port", "0", *args)
        full_env = python_env({"PYTHONUNBUFFERED": "1", **(env or {})})
        self._err = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self._err, env=full_env, text=True
        )
        threading.Thread(target=self._read_stdout, daemon=True).start()
        try:
            line = self._lines.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            self.stop()
            raise AssertionError(
                f"the server printed no address; log:\n{self.read_log()}"
            ) from None
        if "listening on http://" not in line:
            self.stop()
            raise AssertionError(f"unexpected first line {line!r}; log:\n{self.read_log()}")
        self.url = line.strip().rsplit(" ", 1)[-1]
        self.port = int(self.url.rsplit(":", 1)[-1])

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_log(self) -> str:
        if not self._err.closed:
            self._err.flush()
        return self.log.read_text(errors="replace")

    def client(self, **kw: Any) -> httpx.Client:
        kw.setdefault("timeout", 120.0)
        return httpx.Client(base_url=self.url, **kw)

    def wait_ready(self, timeout: float = START_TIMEOUT_S, headers: dict | None = None) -> dict:
        """Poll /readyz until 200; returns its JSON."""
        deadline = time.monotonic() + timeout
        last: Any = None
        with self.client(timeout=10.0) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"server exited {self.proc.returncode}:\n{self.read_log()}"
                    )
                try:
                    r = c.get("/readyz", headers=headers)
                    last = r.json()
                    if r.status_code == 200:
                        return last
                except httpx.TransportError as exc:
                    last = exc
                time.sleep(0.2)
        raise AssertionError(f"not ready after {timeout} s: {last}\n{self.read_log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signal the server, wait for it (kill it after ``timeout``); its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._err.close()
        return self.proc.returncode


def raw_request(port: int, head: bytes, timeout: float = 30.0) -> bytes:
    """Send ``head`` as is over a fresh socket (no client normalises it) and return
    everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def start(args: list[str], tmp: Path, name: str, **kw: Any) -> Server:
    """A started and ready server (the test is failed, not errored, when it is not)."""
    try:
        server = Server(args, tmp / f"{name}.log", **kw)
    except AssertionError as exc:
        pytest.fail(str(exc))
    try:
        server.wait_ready()
    except AssertionError:
        server.stop()
        raise
    return server
