"""``edgemed doctor``: what this machine has for running edgemed, and what ``auto`` picks.

Each ``*_facts`` function returns a plain dict and never raises: anything absent or
broken is a fact too (``{"installed": False, "error": ...}``). :func:`gather` collects
them; :func:`format_report` turns them into the lines the CLI prints.
"""

from __future__ import annotations

import importlib
import importlib.util
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgemed._version import __version__

__all__ = [
    "EXTRAS",
    "backend_facts",
    "cuda_facts",
    "extras_facts",
    "format_report",
    "gather",
    "gpu_facts",
    "module_facts",
    "openvino_facts",
    "platform_facts",
]

_TIMEOUT = 10  # seconds for nvcc / nvidia-smi

#: The optional extras of pyproject.toml and what each installs, as (distribution, the
#: module it is imported as). tests/engine/test_engine_cli_doctor.py holds this table to
#: pyproject.toml's optional-dependencies (the development extras test, dev and
#: export-test aside).
EXTRAS: dict[str, tuple[tuple[str, str], ...]] = {
    "dicom": (
        ("pylibjpeg", "pylibjpeg"),
        ("pylibjpeg-libjpeg", "libjpeg"),
        ("pylibjpeg-openjpeg", "openjpeg"),
        ("pylibjpeg-rle", "rle"),
    ),
    "signing": (("cryptography", "cryptography"),),
    # TensorRT is in no extra: it must match the machine's CUDA (or come with JetPack).
    "gpu": (("pycuda", "pycuda"), ("cuda-bindings", "cuda.bindings")),
    "jetson": (("pycuda", "pycuda"), ("cuda-bindings", "cuda.bindings")),
    "bench": (("matplotlib", "matplotlib"), ("psutil", "psutil"), ("tqdm", "tqdm")),
    "openvino": (("openvino", "openvino"),),
    "serve": (
        ("fastapi", "fastapi"),
        ("uvicorn", "uvicorn"),
        ("uvloop", "uvloop"),
        ("httptools", "httptools"),
        ("python-multipart", "python_multipart"),
        ("prometheus-client", "prometheus_client"),
    ),
    "listen": (("pynetdicom", "pynetdicom"), ("highdicom", "highdicom")),
    "triton": (("tritonclient", "tritonclient"),),
    "faiss": (("faiss-cpu", "faiss"),),
    "export": (
        ("torch", "torch"),
        ("nvidia-modelopt", "modelopt"),
        ("onnxscript", "onnxscript"),
        ("onnxslim", "onnxslim"),
        ("onnx-graphsurgeon", "onnx_graphsurgeon"),
        ("polygraphy", "polygraphy"),
        ("ml_dtypes", "ml_dtypes"),
        ("lief", "lief"),
    ),
}

_NVIDIA_PCI_VENDOR = "0x10de"


def _import(name: str) -> tuple[Any | None, str]:
    try:
        return importlib.import_module(name), ""
    except Exception as exc:  # ImportError, or a broken install raising anything else
        return None, f"{exc.__class__.__name__}: {exc}"


def module_facts(name: str) -> dict[str, Any]:
    """Whether ``name`` imports, and its version."""
    module, error = _import(name)
    if module is None:
        return {"installed": False, "error": error.splitlines()[0] if error else ""}
    version = getattr(module, "__version__", None) or getattr(module, "VERSION_TEXT", None)
    return {"installed": True, "version": str(version) if version is not None else "unknown"}


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, a blocked module
        return False


def extras_facts() -> dict[str, dict[str, Any]]:
    """Per extra of :data:`EXTRAS`: whether all its modules are there (found, not
    imported: importing torch to say it exists would take seconds), and the
    distributions of those that are not."""
    facts = {}
    for extra, parts in EXTRAS.items():
        missing = [dist for dist, module in parts if not _findable(module)]  # pip's names
        facts[extra] = {"installed": not missing, "missing": missing}
    return facts


def platform_facts() -> dict[str, Any]:
    """Python, OS, CPU architecture, and the Jetson L4T release when there is one."""
    facts: dict[str, Any] = {
        "edgemed": __version__,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
    }
    tegra = Path("/etc/nv_tegra_release")
    try:
        facts["jetson_l4t"] = tegra.read_text(errors="replace").splitlines()[0].strip()
    except (OSError, IndexError):
        facts["jetson_l4t"] = None
    return facts


def _run(
    cmd: list[str], which: Callable[[str], str | None]
) -> subprocess.CompletedProcess[str] | None:
    """``cmd``'s outcome (text output captured), or None when it cannot be run."""
    exe = which(cmd[0])
    if exe is None:
        return None
    try:
        return subprocess.run(
            [exe, *cmd[1:]], capture_output=True, text=True, timeout=_TIMEOUT, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None


def _pci_gpus(root: Path) -> list[str] | None:
    """Addresses of NVIDIA display/3D controllers on the PCI bus (what the kernel sees,
    driver or not); None when the bus cannot be read (not Linux, no /sys)."""
    bus = root / "sys" / "bus" / "pci" / "devices"
    try:
        devices = sorted(bus.iterdir())
    except OSError:
        return None
    found = []
    for dev in devices:
        try:
            vendor = (dev / "vendor").read_text().strip().lower()
            klass = (dev / "class").read_text().strip().lower()
        except OSError:
            continue
        if vendor == _NVIDIA_PCI_VENDOR and klass.startswith("0x03"):  # display class
            found.append(dev.name)
    return found


def gpu_facts(
    which: Callable[[str], str | None] = shutil.which, root: Path = Path("/")
) -> dict[str, Any]:
    """Whether this machine has an NVIDIA GPU, and how that was decided.

    ``present`` is True (a GPU was seen), False (looked, and there is none) or None
    (could not look): "no GPU" and "could not check" are different answers. Asked in
    turn: pycuda (the runtime's own view: name, compute capability), ``nvidia-smi``, a
    Jetson's L4T release, the PCI bus under ``/sys`` (sees a GPU even without its driver).
    ``root`` is where ``/etc`` and ``/sys`` are read from.
    """
    notes = []
    pycuda, error = _import("pycuda.driver")
    if pycuda is None:
        notes.append("pycuda not installed")
    else:
        try:
            from edgemed.cuda.device import query_device

            info = query_device(0)
            return {
                "present": True,
                "source": "pycuda",
                "name": info.name,
                "compute_capability": info.cc,
                "integrated": info.integrated,
                "total_memory_gib": round(info.total_memory / 2**30, 1),
            }
        except Exception as exc:
            text = f"{exc.__class__.__name__}: {exc}"
            # cuInit's "no CUDA-capable device", or a driver that counts zero devices
            no_device = ("no CUDA-capable device", "CUDA_ERROR_NO_DEVICE", "machine has 0)")
            if any(marker in text for marker in no_device):
                return {
                    "present": False,
                    "source": "pycuda",
                    "reason": "the CUDA driver sees no device",
                }
            notes.append(f"pycuda: {text.splitlines()[0]}")
    smi = _run(
        ["nvidia-smi", "--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader"],
        which,
    )
    said = "" if smi is None else (smi.stdout + smi.stderr).strip()
    if smi is None:
        notes.append("no nvidia-smi")
    elif smi.returncode == 0 and said:
        parts = [p.strip() for p in said.splitlines()[0].split(",")]
        return {
            "present": True,
            "source": "nvidia-smi",
            "name": parts[0],
            "compute_capability": parts[1] if len(parts) > 1 else None,
            "integrated": None,
            "total_memory": parts[2] if len(parts) > 2 else None,
        }
    elif "No devices were found" in said:
        return {"present": False, "source": "nvidia-smi", "reason": "nvidia-smi finds no device"}
    else:
        first = said.splitlines()[0] if said else f"exit {smi.returncode}"
        notes.append(f"nvidia-smi failed: {first}")
    if (root / "etc" / "nv_tegra_release").is_file():
        return {
            "present": True,
            "source": "jetson",
            "name": "Jetson integrated GPU",
            "compute_capability": None,
            "integrated": True,
            "note": "; ".join(notes),
        }
    pci = _pci_gpus(root)
    if pci is None:
        notes.append("no PCI bus to read")
        return {"present": None, "source": None, "reason": "could not check: " + ", ".join(notes)}
    if pci:
        return {
            "present": True,
            "source": "pci",
            "name": f"NVIDIA device at PCI {pci[0]}"
            + (f" (+{len(pci) - 1})" if len(pci) > 1 else ""),
            "compute_capability": None,
            "integrated": False,
            "note": "; ".join(notes),
        }
    return {
        "present": False,
        "source": "pci",
        "reason": "no NVIDIA display or 3D controller on the PCI bus, not a Jetson",
    }


def cuda_facts(which: Callable[[str], str | None] = shutil.which) -> dict[str, Any]:
    """CUDA driver version, the CUDA version pycuda was built for, and nvcc's."""
    facts: dict[str, Any] = {"driver": None, "pycuda_built_for": None, "nvcc": None}
    drv, _ = _import("pycuda.driver")
    if drv is not None:
        try:
            drv.init()
            v = int(drv.get_driver_version())
            facts["driver"] = f"{v // 1000}.{v % 1000 // 10}"
            facts["pycuda_built_for"] = ".".join(str(p) for p in drv.get_version())
        except Exception as exc:
            facts["driver_error"] = f"{exc.__class__.__name__}: {exc}"
    nvcc = _run(["nvcc", "--version"], which)
    if nvcc is not None and nvcc.returncode == 0 and nvcc.stdout.strip():
        m = re.search(r"release (\d+\.\d+)", nvcc.stdout)
        facts["nvcc"] = m.group(1) if m else nvcc.stdout.strip().splitlines()[-1]
    return facts


def backend_facts(bundle: Any | None, options: Any | None = None) -> dict[str, Any]:
    """Per registered backend: why it cannot run the bundle ("" if it can), and what
    ``auto`` picks for backend and preprocessing: the same functions the pipeline calls
    (:func:`edgemed.backends.choose_backend`, :func:`edgemed.cuda.choice.choose_preprocess`)
    with the same options (``EDGEMED_*`` unless given), so doctor and ``run`` agree."""
    from edgemed.backends.registry import backend_names, choose_backend, entry, probe
    from edgemed.settings import Options

    if bundle is None:
        from edgemed.bundle import Bundle
        from edgemed.pipeline import demo_bundle

        try:
            bundle = Bundle.load(demo_bundle())
        except Exception as exc:
            return {"error": f"demo bundle: {exc}"}
    try:
        opts = options or Options.resolve()
    except Exception as exc:
        return {"error": f"settings: {exc}"}
    facts: dict[str, Any] = {"bundle": bundle.name, "precision": opts.precision, "backends": {}}
    for name in backend_names():
        try:
            facts["backends"][name] = probe(name, bundle, opts)
        except Exception as exc:
            facts["backends"][name] = f"{exc.__class__.__name__}: {exc}"
    try:
        choice = choose_backend(bundle, opts)
    except Exception as exc:
        return {**facts, "error": f"{exc.__class__.__name__}: {exc}"}
    facts["auto"] = choice.name
    facts["auto_reason"] = choice.reason.removeprefix("auto: ")
    device_io = choice.name is not None and entry(choice.name).device_io
    facts["preprocess"], facts["preprocess_reason"] = _preprocess_choice(
        bundle, opts, choice.name, device_io
    )
    return facts


def _preprocess_choice(
    bundle: Any, opts: Any, backend: str | None, device_io: bool
) -> tuple[str, str]:
    """Where ``--preprocess`` (``opts.preprocess``) would run beside ``backend``."""
    from edgemed.backends.tensorrt.cache import EngineCache
    from edgemed.cuda.choice import choose_preprocess

    def arch() -> str:
        from edgemed.cuda.device import query_device

        return query_device(0).arch

    choice = choose_preprocess(
        opts.preprocess,
        bundle.preprocess,
        backend=backend,
        device_io=device_io,
        cubin_dir=EngineCache.for_bundle(bundle, opts.engine_cache).kernel_dir,
        arch=arch,
    )
    return choice.device, choice.reason


#: What INT8 on the CPU means, measured (README "CPU backends and INT8"): the bundle's
#: INT8 is TensorRT-style Q/DQ (Q/DQ on each convolution's inputs, int8 symmetric
#: activations); ONNX Runtime's CPU provider fuses none of it into integer kernels and
#: runs it slower than FP32, while OpenVINO runs it as integer kernels.
CPU_INT8 = (
    "OpenVINO only: ONNX Runtime's CPU provider fuses none of the bundle's Q/DQ "
    "(TensorRT placement) into integer kernels and runs int8 slower than fp32; check "
    "OpenVINO's int8 here first (edgemed check BUNDLE --backend openvino --precision int8)"
)


def openvino_facts() -> dict[str, Any]:
    """The openvino module, its devices and what the CPU offers (BF16, INT8), and what
    int8 on the CPU means here (:data:`CPU_INT8`)."""
    facts = module_facts("openvino")
    if facts.get("installed"):
        try:
            from edgemed.backends.openvino import ov_core

            core = ov_core()
            facts["devices"] = {
                d: list(core.get_property(d, "OPTIMIZATION_CAPABILITIES"))
                for d in core.available_devices
            }
        except Exception as exc:  # a broken install is a fact
            facts["error"] = f"{exc.__class__.__name__}: {exc}"
    facts["cpu_int8"] = CPU_INT8
    return facts


def gather(bundle: Any | None = None, options: Any | None = None) -> dict[str, Any]:
    """Every fact, as JSON-able data (``edgemed doctor --json`` prints it)."""
    ort = module_facts("onnxruntime")
    if ort.get("installed"):
        try:
            import onnxruntime

            ort["providers"] = list(onnxruntime.get_available_providers())
        except Exception:  # pragma: no cover - a broken install
            pass
    return {
        "platform": platform_facts(),
        "gpu": gpu_facts(),
        "cuda": cuda_facts(),
        "tensorrt": module_facts("tensorrt"),
        "pycuda": module_facts("pycuda"),
        "onnxruntime": ort,
        "openvino": openvino_facts(),
        "extras": extras_facts(),
        "backends": backend_facts(bundle, options),
    }


def _module_line(facts: dict[str, Any]) -> str:
    if facts.get("installed"):
        return str(facts.get("version"))
    return "not installed" + (f" ({facts['error']})" if facts.get("error") else "")


def format_report(facts: dict[str, Any]) -> str:
    """The facts as aligned lines for a terminal."""
    p, g, c, b = facts["platform"], facts["gpu"], facts["cuda"], facts["backends"]
    if g.get("present"):
        kind = {True: ", integrated", False: ", discrete"}.get(g.get("integrated"), "")
        cc = f"cc {g['compute_capability']}" if g.get("compute_capability") else "cc unknown"
        gpu = f"{g['name']} ({cc}{kind}; via {g['source']})"
        if g.get("note"):
            gpu += f" [{g['note']}]"
    elif g.get("present") is False:
        gpu = f"none ({g.get('reason', '')})"
    else:
        gpu = f"unknown ({g.get('reason', 'could not check')})"
    ort = _module_line(facts["onnxruntime"])
    if facts["onnxruntime"].get("providers"):
        ort += f" ({', '.join(facts['onnxruntime']['providers'])})"
    lines = [
        f"edgemed {p['edgemed']} on Python {p['python']}, {p['system']} {p['machine']}",
        f"  jetson       {p['jetson_l4t'] or 'no'}",
        f"  gpu          {gpu}",
        f"  cuda driver  {c.get('driver') or 'not found'}",
        f"  pycuda cuda  {c.get('pycuda_built_for') or '-'} (the CUDA pycuda was built for)",
        f"  nvcc         {c.get('nvcc') or 'not found'}",
        f"  tensorrt     {_module_line(facts['tensorrt'])}",
        f"  pycuda       {_module_line(facts['pycuda'])}",
        f"  onnxruntime  {ort}",
    ]
    ov = facts.get("openvino")
    if ov is not None:
        line = _module_line(ov)
        if ov.get("devices"):
            line += " (" + "; ".join(f"{d}: {' '.join(c)}" for d, c in ov["devices"].items()) + ")"
        lines += [f"  openvino     {line}", f"  int8 on cpu  {ov['cpu_int8']}"]
    extras = facts.get("extras") or {}
    if extras:
        lines.append("  extras")
        for name, e in extras.items():
            state = (
                "installed"
                if e["installed"]
                else (f'missing {", ".join(e["missing"])} (pip install "edgemed[{name}]")')
            )
            lines.append(f"    {name:12s} {state}")
    if "error" in b:
        lines.append(f"  backends     {b['error']}")
    else:
        lines.append(f"  backends     for {b['bundle']} ({b['precision']}):")
        for name, why in b["backends"].items():
            lines.append(f"    {name:12s} {'ok' if not why else 'no: ' + why}")
        lines.append(f"  auto picks   {b['auto'] or 'nothing'} ({b['auto_reason']})")
        lines.append(f"  preprocess   {b['preprocess']} ({b['preprocess_reason']})")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(format_report(gather()))
    sys.exit(0)
