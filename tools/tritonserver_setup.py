"""A real NVIDIA Triton Inference Server for edgemed's tests and benchmarks, set up once.

Usage::

    python tools/tritonserver_setup.py [--cache .cache/tritonserver] [--check]

What it builds under the cache folder (idempotent: a second run with the same pins only
checks the stamp; concurrent runs wait on a lock):

``venv/``
    A virtual environment of the running interpreter's Python version. It holds the
    ``nvidia-pytriton`` 0.7.0 wheel (installed ``--no-deps``: only its ``tritonserver``
    binary, Triton 2.51 with the Python backend, and its bundled libraries are used) and
    is the environment the model runs in: Triton's Python backend stub for this Python
    version is copied into the server's ``backends/python/``, and the generated
    repository points ``EXECUTION_ENV_PATH`` here (``edgemed triton-repo --python-env``).
    It pins ``numpy<2``: the stub's pybind11 reads NumPy 1.x array descriptors, and with
    NumPy 2 every output tensor comes back with a byte size of 0 (checked here:
    ``output tensor shape does not match size of output``). OpenCV is kept below 5 for
    the same reason (5.x needs NumPy 2); edgemed's other runtime dependencies (read from
    pyproject.toml) and ``cryptography`` are pinned to the calling interpreter's
    versions, so the server computes what the caller's ``edgemed run`` computes.
    edgemed itself is this checkout, put on the path by a ``.pth`` file (the working
    tree under test, not a copy).
``perf/``
    ``perf_analyzer`` from ``tritonclient==2.51.0`` (newer builds need glibc 2.38) and
    ``libcudart.so.12`` from ``nvidia-cuda-runtime-cu12``, installed ``--no-deps --target``
    (tritonclient 2.51 pins protobuf<5, which onnx 1.23 cannot share a venv with). It
    also needs Debian's ``libb64-0d``.

The Python 3.x stub embeds ``libpython3.x.so``; unless the interpreter's ``LIBDIR``
comes first on ``LD_LIBRARY_PATH`` it may load Debian's system one and fail with
``'_thread.RLock' object has no attribute '_recursion_count'``: :meth:`Triton.env` puts
it first. :class:`TritonServer` starts the binary on free loopback ports and waits for
``/v2/health/ready``; tests and ``benchmarks/triton_compare.py`` use it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_CACHE",
    "SetupError",
    "Triton",
    "TritonServer",
    "ensure",
    "find",
    "free_port",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO_ROOT / ".cache" / "tritonserver"
PYTRITON = "nvidia-pytriton==0.7.0"
PERF = ("tritonclient==2.51.0", "nvidia-cuda-runtime-cu12")
STAMP = "setup.json"


class SetupError(RuntimeError):
    """The server could not be set up here (no network, no matching Python)."""


@dataclass(frozen=True)
class Triton:
    """Where the pieces of a set-up server are."""

    root: Path
    venv: Path
    server: Path
    backends: Path
    libdir: str
    perf_analyzer: Path | None
    perf_libs: Path | None

    @property
    def python(self) -> Path:
        """The model environment's interpreter."""
        return self.venv / "bin" / "python"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for ``tritonserver``: the interpreter's LIBDIR first (see module
        doc), no PYTHONPATH/PYTHONHOME of the caller leaking into the model's Python."""
        env = dict(os.environ if base is None else base)
        for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
            env.pop(name, None)
        old = env.get("LD_LIBRARY_PATH", "")
        env["LD_LIBRARY_PATH"] = self.libdir + (":" + old if old else "")
        return env

    def perf_env(self) -> dict[str, str]:
        """Environment for ``perf_analyzer`` (libcudart.so.12 from the wheel)."""
        env = dict(os.environ)
        if self.perf_libs is not None:
            old = env.get("LD_LIBRARY_PATH", "")
            env["LD_LIBRARY_PATH"] = str(self.perf_libs) + (":" + old if old else "")
        return env


def _pins() -> list[str]:
    """edgemed's runtime dependencies (pyproject.toml) and the signing extra, each at
    the calling interpreter's version where it has one; NumPy below 2 and OpenCV below 5
    (see the module doc)."""
    import re

    try:
        import tomllib
    except ImportError:  # Python 3.10: the installed edgemed's metadata says the same
        wanted = [
            r.split(";")[0]
            for r in importlib.metadata.requires("edgemed") or []
            if "extra ==" not in r or 'extra == "signing"' in r
        ]
    else:
        project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
        wanted = list(project["dependencies"]) + list(
            project.get("optional-dependencies", {}).get("signing", [])
        )
    pins = []
    for requirement in wanted:
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip()
        if name == "numpy":
            pins.append("numpy<2")
            continue
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pins.append(requirement)
            continue
        if name == "opencv-python-headless" and not version.startswith("4."):
            pins.append("opencv-python-headless<5")
        else:
            pins.append(f"{name}=={version}")
    return pins


def _run(cmd: Sequence[str], log: Path) -> None:
    with log.open("a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.run(list(cmd), stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise SetupError(f"{cmd[0]} {' '.join(cmd[1:3])} failed: " + " | ".join(tail))


def _site_packages(venv: Path) -> Path:
    found = sorted((venv / "lib").glob("python3.*/site-packages"))
    if not found:
        raise SetupError(f"no site-packages in {venv}")
    return found[0]


def _describe(root: Path) -> Triton:
    stamp = json.loads((root / STAMP).read_text())
    perf = root / "perf" / "bin" / "perf_analyzer"
    libs = root / "perf" / "nvidia" / "cuda_runtime" / "lib"
    return Triton(
        root=root,
        venv=root / "venv",
        server=Path(stamp["server"]),
        backends=Path(stamp["backends"]),
        libdir=stamp["libdir"],
        perf_analyzer=perf if perf.is_file() else None,
        perf_libs=libs if libs.is_dir() else None,
    )


def find(cache: str | os.PathLike[str] = DEFAULT_CACHE) -> Triton | None:
    """The set-up server in ``cache``, or None when :func:`ensure` has not completed."""
    root = Path(cache)
    if not (root / STAMP).is_file():
        return None
    try:
        triton = _describe(root)
    except (OSError, ValueError, KeyError):
        return None
    return triton if triton.server.is_file() else None


def ensure(
    cache: str | os.PathLike[str] = DEFAULT_CACHE, *, python: str | None = None, quiet: bool = False
) -> Triton:
    """Set up (or reuse) the server, the model environment and perf_analyzer.

    Args:
        cache: the folder (git-ignored ``.cache/`` by default).
        python: interpreter whose version the venv gets (default: the running one's base
            interpreter); its Python version must have a stub in the wheel (3.8-3.13).
        quiet: no progress lines.

    Raises:
        SetupError: pip could not fetch the wheels (no network), or no stub matches.
    """
    root = Path(cache).resolve()
    root.mkdir(parents=True, exist_ok=True)
    say = (lambda _m: None) if quiet else (lambda m: print(f"tritonserver_setup: {m}", flush=True))
    want = {"pytriton": PYTRITON, "perf": list(PERF), "pins": _pins(), "repo": str(REPO_ROOT)}
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second caller waits, then finds the stamp
        stamp_path = root / STAMP
        if stamp_path.is_file():
            with contextlib.suppress(ValueError, OSError):
                have = json.loads(stamp_path.read_text())
                if all(have.get(k) == v for k, v in want.items()) and find(root):
                    return _describe(root)
            stamp_path.unlink()
        log = root / "setup.log"
        venv = root / "venv"
        base = str(python or getattr(sys, "_base_executable", None) or sys.executable)
        if not (venv / "bin" / "python").exists():
            say(f"creating {venv}")
            _run([base, "-m", "venv", str(venv)], log)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        say("installing the model environment: " + " ".join(want["pins"]))
        _run([*pip, *want["pins"]], log)
        say(f"installing {PYTRITON} (the tritonserver binary)")
        _run([*pip, "--no-deps", PYTRITON], log)
        say("installing perf_analyzer: " + " ".join(PERF))
        _run([*pip, "--no-deps", "--upgrade", "--target", str(root / "perf"), *PERF], log)
        site = _site_packages(venv)
        (site / "edgemed-checkout.pth").write_text(str(REPO_ROOT) + "\n")
        probe = (
            "import sys, sysconfig; "
            "print(f'{sys.version_info[0]}.{sys.version_info[1]}'); "
            "print(sysconfig.get_config_var('LIBDIR'))"
        )
        proc = subprocess.run(
            [str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise SetupError(f"the model environment's Python does not run: {proc.stderr[-300:]}")
        out = proc.stdout.split("\n")
        version, libdir = out[0].strip(), out[1].strip()
        tritonserver = site / "pytriton" / "tritonserver"
        stub = tritonserver / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise SetupError(f"the wheel has no Python backend stub for Python {version}")
        backends = tritonserver / "backends"
        shutil.copy2(stub, backends / "python" / stub.name)
        server = tritonserver / "bin" / "tritonserver"
        server.chmod(0o755)
        record = {**want, "server": str(server), "backends": str(backends), "libdir": libdir}
        stamp_path.write_text(json.dumps(record, indent=2) + "\n")  # last: marks it complete
        say(f"ready: {server}")
        return _describe(root)


def free_port() -> int:
    """A loopback port the OS says is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, urllib.error.URLError):
        return 0


class TritonServer:
    """``tritonserver`` on free loopback ports, in explicit model-control mode.

    Args:
        triton: from :func:`ensure`.
        repository: the model repository.
        models: models loaded at start-up (others with the client's ``load_model``).
        log: file for the server's output (default: ``repository/../tritonserver.log``).
        extra: more ``tritonserver`` flags.
        env: more environment variables for the server and its models (``EDGEMED_*``).

    Use as a context manager; :meth:`stop` kills the whole process group (the server and
    its Python stub processes).
    """

    def __init__(
        self,
        triton: Triton,
        repository: str | os.PathLike[str],
        models: Sequence[str] = (),
        *,
        log: str | os.PathLike[str] | None = None,
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.triton = triton
        self.env = dict(env or {})
        self.repository = Path(repository)
        self.models = list(models)
        self.log = Path(log) if log else self.repository.parent / "tritonserver.log"
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None
        self.http_port = self.grpc_port = self.metrics_port = 0

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        cmd = [
            str(self.triton.server),
            "--model-repository",
            str(self.repository),
            "--backend-directory",
            str(self.triton.backends),
            "--http-address",
            "127.0.0.1",
            "--grpc-address",
            "127.0.0.1",
            "--http-port",
            str(self.http_port),
            "--grpc-port",
            str(self.grpc_port),
            "--metrics-port",
            str(self.metrics_port),
            "--allow-metrics",
            "false",
            "--model-control-mode",
            "explicit",
            "--exit-timeout-secs",
            "5",
        ]
        for m in self.models:
            cmd += ["--load-model", m]
        return cmd + self.extra

    def start(self, timeout: float = 180.0) -> TritonServer:
        """Start and wait until ``/v2/health/ready`` (every start-up model loaded).

        Raises:
            RuntimeError: the server exited or did not become ready (log tail included).
        """
        for _attempt in range(3):  # a port taken between free_port() and bind: retry
            self.http_port, self.grpc_port, self.metrics_port = (
                free_port(),
                free_port(),
                free_port(),
            )
            with self.log.open("ab") as out:
                self.proc = subprocess.Popen(
                    self.command(),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**self.triton.env(), **self.env},
                    start_new_session=True,
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if _get(f"http://{self.url}/v2/health/ready") == 200:
                    return self
                time.sleep(0.2)
            exited = self.proc.poll() is not None
            self.stop()
            if not (exited and "Address already in use" in self.log_text()):
                break
        raise RuntimeError(f"tritonserver did not become ready; log tail:\n{self.log_tail()}")

    def wait_model(self, name: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _get(f"http://{self.url}/v2/models/{name}/ready") == 200:
                return
            time.sleep(0.2)
        raise RuntimeError(f"model {name} not ready; log tail:\n{self.log_tail()}")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            if proc is not None:
                _kill_group(proc.pid, signal.SIGKILL)  # stubs left behind, if any
            return
        _kill_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        _kill_group(proc.pid, signal.SIGKILL)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@contextlib.contextmanager
def running(
    triton: Triton, repository: str | os.PathLike[str], models: Sequence[str] = ()
) -> Iterator[TritonServer]:
    """``with running(triton, repo, ["m"]) as server:`` -- started and stopped."""
    server = TritonServer(triton, repository, models)
    try:
        yield server.start()
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="cache folder")
    p.add_argument("--python", default=None, help="interpreter for the model environment")
    p.add_argument(
        "--check", action="store_true", help="start the server on an empty repository once"
    )
    args = p.parse_args(argv)
    try:
        triton = ensure(args.cache, python=args.python)
    except SetupError as exc:
        print(f"tritonserver_setup: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"server": str(triton.server), "python": str(triton.python)}, indent=2))
    if args.check:
        empty = triton.root / "empty-repository"
        empty.mkdir(exist_ok=True)
        with running(triton, empty) as server:
            print(f"tritonserver ready on {server.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
