"""What the machine is and what it does while a benchmark runs.

* :func:`device_info`: CPU, cores, memory, OS, library versions, GPUs, Jetson model.
* :class:`PeakRss`: the process's peak resident memory over one configuration. On
  Linux the kernel keeps the peak itself (``VmHWM``), and writing ``5`` to
  ``/proc/self/clear_refs`` resets it, so the figure is exact and costs nothing while
  the benchmark runs; elsewhere ``psutil`` samples RSS from a thread.
* :class:`Sensors`: GPU memory, temperature and power where the system exposes them
  (``nvidia-smi``; ``tegrastats`` on Jetson; ``/sys/class/thermal``), each reported as
  absent with the reason where it does not. Nothing is sampled (and no thread runs)
  when no source exists, so a CPU-only run is not perturbed.

``psutil`` comes from the ``bench`` extra and is imported only when used.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from edgemed._lazy import require

__all__ = [
    "PeakRss",
    "Sensors",
    "cpu_model",
    "device_info",
    "parse_nvidia_smi",
    "parse_tegrastats",
    "read_thermal_zones",
]

_MIB = 1024.0 * 1024.0
_NVSMI_FIELDS = "name,memory.used,memory.total,temperature.gpu,power.draw"


def _psutil():
    return require("psutil", "bench", "edgemed bench (memory figures)")


def cpu_model() -> str:
    """The CPU's marketing name, or the architecture where the system does not say."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "Model") and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def _jetson_model() -> str | None:
    # Jetson boards name themselves in the device tree ("NVIDIA Jetson AGX Orin ...").
    with contextlib.suppress(OSError):
        model = Path("/proc/device-tree/model").read_bytes().rstrip(b"\0").decode(errors="replace")
        if "jetson" in model.lower() or "nvidia" in model.lower():
            return model.strip()
    return None


def parse_nvidia_smi(text: str) -> list[dict[str, Any]]:
    """Rows of ``nvidia-smi --query-gpu=name,memory.used,memory.total,temperature.gpu,
    power.draw --format=csv,noheader,nounits``; ``[N/A]`` fields become ``None``."""

    def num(v: str) -> float | None:
        try:
            return float(v)
        except ValueError:
            return None  # "[N/A]", "[Not Supported]"

    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 5:
            continue
        gpus.append(
            {
                "name": parts[0],
                "memory_used_mib": num(parts[1]),
                "memory_total_mib": num(parts[2]),
                "temperature_c": num(parts[3]),
                "power_w": num(parts[4]),
            }
        )
    return gpus


def _nvidia_smi() -> list[dict[str, Any]] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run(
            [exe, f"--query-gpu={_NVSMI_FIELDS}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvidia_smi(proc.stdout) if proc.returncode == 0 else None


_POWER = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?![0-9A-Za-z])")
_TEMP = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%")


def parse_tegrastats(line: str) -> dict[str, Any]:
    """One ``tegrastats`` line: RAM (MiB), GPU load (%), temperatures (C), power rails
    (instantaneous W). Rails are named as the board names them (``VDD_IN`` is the whole
    module on Orin; older boards print ``POM_5V_IN`` or bare rail names)."""
    out: dict[str, Any] = {"power_w": {}, "temperature_c": {}}
    if m := _RAM.search(line):
        out["ram_used_mib"], out["ram_total_mib"] = float(m.group(1)), float(m.group(2))
    if m := _GR3D.search(line):
        out["gpu_load_percent"] = float(m.group(1))
    for name, value in _TEMP.findall(line):
        out["temperature_c"][name] = float(value)
    for name, now, _avg in _POWER.findall(line):
        if name not in ("RAM", "SWAP", "IRAM", "LFB"):
            out["power_w"][name] = float(now) / 1000.0
    return out


def read_thermal_zones(root: str | os.PathLike[str] = "/sys/class/thermal") -> dict[str, float]:
    """``{zone type: degrees C}`` from the kernel's thermal zones (empty where none)."""
    temps: dict[str, float] = {}
    for zone in sorted(Path(root).glob("thermal_zone*")):
        with contextlib.suppress(OSError, ValueError):
            kind = (zone / "type").read_text().strip() or zone.name
            temps[kind if kind not in temps else f"{kind}.{zone.name}"] = (
                int((zone / "temp").read_text().strip()) / 1000.0
            )
    return temps


def device_info() -> dict[str, Any]:
    """The machine and the libraries the numbers depend on."""
    import cv2
    import numpy as np

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "cores_logical": os.cpu_count(),
        "cores_usable": usable,
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "onnxruntime": None,
        "jetson": _jetson_model(),
        "gpus": _nvidia_smi(),
    }
    with contextlib.suppress(ImportError):
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    ps = _psutil()
    info["cores_physical"] = ps.cpu_count(logical=False)
    info["memory_total_mib"] = round(ps.virtual_memory().total / _MIB, 1)
    if info["gpus"] is None:
        info["gpus_reason"] = "nvidia-smi not found or not answering: no NVIDIA GPU visible"
    return info


def _read_hwm_kib() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class PeakRss:
    """Peak resident memory of this process between :meth:`start` and :meth:`stop`.

    Args:
        interval_s: sampling period of the psutil fallback (unused where the kernel
            keeps the peak).
    """

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self._kernel = False
        self._peak = 0
        self._start = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Reset the peak to the current resident memory."""
        proc = _psutil().Process()
        self._start = proc.memory_info().rss
        self._kernel = _read_hwm_kib() is not None and _reset_hwm()
        if self._kernel:
            return
        self._peak = self._start
        self._stop.clear()

        def sample() -> None:
            while not self._stop.wait(self.interval_s):
                self._peak = max(self._peak, proc.memory_info().rss)

        self._thread = threading.Thread(target=sample, name="edgemed-bench-rss", daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        """``{"peak_rss_mib", "rss_at_start_mib", "method", "process_peak_rss_mib"}``
        for the interval (the process's whole resident memory, libraries included)."""
        proc_peak = _process_peak_mib()
        at_start = round(self._start / _MIB, 1)
        if self._kernel:
            kib = _read_hwm_kib() or 0
            return {
                "peak_rss_mib": round(kib / 1024.0, 1),
                "rss_at_start_mib": at_start,
                "method": "kernel VmHWM, reset through /proc/self/clear_refs at the start",
                "process_peak_rss_mib": proc_peak,
            }
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._peak = max(self._peak, _psutil().Process().memory_info().rss)
        return {
            "peak_rss_mib": round(self._peak / _MIB, 1),
            "rss_at_start_mib": at_start,
            "method": f"psutil RSS sampled every {self.interval_s * 1e3:g} ms",
            "process_peak_rss_mib": proc_peak,
        }


def _process_peak_mib() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return round(peak / (_MIB if sys.platform == "darwin" else 1024.0), 1)


class Sensors:
    """GPU memory, temperature and power over one configuration, where exposed.

    Args:
        interval_s: sampling period for ``nvidia-smi`` and the thermal zones.
        nvidia_smi: how to query GPUs (injectable for tests); ``None`` disables.
        thermal: how to read thermal zones (injectable for tests).
        tegrastats: the ``tegrastats`` command, or ``None`` when it is not installed.
    """

    def __init__(
        self,
        interval_s: float = 0.5,
        *,
        nvidia_smi: Callable[[], list[dict[str, Any]] | None] | None = _nvidia_smi,
        thermal: Callable[[], dict[str, float]] = read_thermal_zones,
        tegrastats: str | None = None,
    ) -> None:
        self.interval_s = interval_s
        if nvidia_smi is _nvidia_smi and shutil.which("nvidia-smi") is None:
            nvidia_smi = None  # nothing to ask: no sampling thread for it
        self._nvsmi = nvidia_smi
        self._thermal = thermal
        self._tegra_cmd = tegrastats if tegrastats is not None else shutil.which("tegrastats")
        self._gpu: list[list[dict[str, Any]]] = []
        self._temps: list[dict[str, float]] = []
        self._tegra: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._proc: subprocess.Popen[str] | None = None
        self._has_thermal = bool(self._thermal())

    @property
    def active(self) -> bool:
        """Whether any source exists here (otherwise nothing is sampled)."""
        return bool(self._nvsmi or self._tegra_cmd or self._has_thermal)

    def _sample_once(self) -> None:
        if self._nvsmi is not None and (gpus := self._nvsmi()):
            self._gpu.append(gpus)
        if self._has_thermal:
            self._temps.append(self._thermal())

    def start(self) -> None:
        """Begin sampling (a no-op when :attr:`active` is false)."""
        self._gpu, self._temps, self._tegra = [], [], []
        self._stop.clear()
        if not self.active:
            return
        self._sample_once()

        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                self._sample_once()

        self._threads = [threading.Thread(target=loop, name="edgemed-bench-sensors", daemon=True)]
        if self._tegra_cmd:
            with contextlib.suppress(OSError):
                ms = str(max(100, int(self.interval_s * 1000)))
                self._proc = subprocess.Popen(
                    [self._tegra_cmd, "--interval", ms],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
                self._threads.append(
                    threading.Thread(
                        target=self._read_tegra, name="edgemed-tegrastats", daemon=True
                    )
                )
        for t in self._threads:
            t.start()

    def _read_tegra(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._tegra.append(parse_tegrastats(line))

    def stop(self) -> dict[str, Any]:
        """Summaries with an ``absent`` map giving the reason for every missing figure."""
        if self.active:
            self._sample_once()
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
            self._proc = None
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []
        return self.summary()

    def summary(self) -> dict[str, Any]:
        """What the samples taken so far show."""
        absent: dict[str, str] = {}
        out: dict[str, Any] = {"samples": len(self._gpu) + len(self._temps) + len(self._tegra)}
        if self._gpu:
            n = len(self._gpu[0])
            out["gpu"] = [
                {
                    "name": self._gpu[0][i]["name"],
                    "memory_used_mib_max": _max(s[i]["memory_used_mib"] for s in self._gpu),
                    "memory_total_mib": self._gpu[0][i]["memory_total_mib"],
                    "temperature_c_max": _max(s[i]["temperature_c"] for s in self._gpu),
                    "power_w_mean": _mean(s[i]["power_w"] for s in self._gpu),
                }
                for i in range(n)
            ]
        else:
            out["gpu"] = None
            absent["gpu"] = (
                "nvidia-smi not found: no NVIDIA GPU visible"
                if self._nvsmi is None
                else "nvidia-smi gave no readings"
            )
        temps: dict[str, float] = {}
        for sample in self._temps + [t["temperature_c"] for t in self._tegra]:
            for k, v in sample.items():
                temps[k] = max(v, temps.get(k, v))
        out["temperature_c_max"] = temps or None
        if not temps:
            absent["temperature_c_max"] = "no /sys/class/thermal zones and no tegrastats here"
        rails: dict[str, list[float]] = {}
        for t in self._tegra:
            for k, v in t["power_w"].items():
                rails.setdefault(k, []).append(v)
        out["power_w_mean"] = {k: round(sum(v) / len(v), 3) for k, v in rails.items()} or None
        if not rails:
            absent["power_w_mean"] = (
                "tegrastats gave no power rails"
                if self._tegra_cmd
                else "tegrastats not found (power rails are read on Jetson only)"
            )
        out["absent"] = absent
        return out


def _max(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return max(vals) if vals else None


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(sum(vals) / len(vals), 3) if vals else None
