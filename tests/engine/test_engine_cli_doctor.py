"""``edgemed build`` and ``edgemed doctor`` as users meet them here (no GPU, no
TensorRT), the ``auto`` probe's reasons, and the builder's checks before TensorRT."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgemed._lazy import available
from edgemed.backends import create_backend, probe
from edgemed.backends.tensorrt.builder import BuildOptions, _elapsed_lines, build_engine
from edgemed.backends.tensorrt.compat import TENSORRT_INSTALL
from edgemed.bundle import Bundle
from edgemed.doctor import (
    EXTRAS,
    backend_facts,
    extras_facts,
    format_report,
    gather,
    gpu_facts,
)
from edgemed.errors import MissingDependencyError, UsageError
from tests.support import one_error_line

BLOCK = "import sys\nfor m in ('tensorrt', 'pycuda', 'pycuda.driver'): sys.modules[m] = None\n"


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI in a subprocess with tensorrt and pycuda blocked (as on CI machines)."""
    code = BLOCK + "from edgemed.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env or dict(os.environ),
        timeout=120,
    )


# -- edgemed build ----------------------------------------------------------------------------


def test_build_without_tensorrt_exits_5_with_one_line(demo_copy):
    proc = cli("build", str(demo_copy), "--precision", "fp16")
    assert proc.returncode == 5
    line = one_error_line(proc, "DEPENDENCY_MISSING")
    assert "'tensorrt'" in line and TENSORRT_INSTALL in line  # how to get it, in words
    assert not (demo_copy / "engines").exists()  # nothing written


@pytest.mark.parametrize(
    "args",
    [
        ["--batch", "8:1:4"],
        ["--batch", "1:x:4"],
        ["--dim", "height=1:2:3"],  # the demo has no such dynamic axis
        ["--dim", "nonsense"],
        ["--workspace", "0"],
    ],
)
def test_build_usage_errors_exit_2_before_tensorrt(demo_copy, args):
    proc = cli("build", str(demo_copy), *args)
    assert proc.returncode == 2, proc.stderr
    one_error_line(proc, "USAGE")


def test_build_bad_choice_and_missing_bundle(demo_copy, tmp_path):
    assert cli("build", str(demo_copy), "--precision", "fp8").returncode == 2
    proc = cli("build", str(tmp_path / "nowhere"))
    assert proc.returncode == 4
    one_error_line(proc, "BUNDLE_NOT_FOUND")


def test_build_missing_precision_is_refused_naming_the_code(tiny_bundle):
    bundle = Bundle.load(tiny_bundle("segmentation"))  # fp32 only
    with pytest.raises(UsageError) as e:  # the bundle is valid; the precision is the ask
        build_engine(bundle, BuildOptions(precision="int8"))
    assert e.value.code == "USAGE_PRECISION_MISSING"


def test_build_checks_ranges_before_importing_tensorrt(demo):
    with pytest.raises(UsageError):
        build_engine(demo, BuildOptions(precision="fp16", ranges={"batch": "4:2:1"}))
    with pytest.raises(UsageError):
        build_engine(demo, BuildOptions(hardware_compat="kepler_plus"))
    with pytest.raises(MissingDependencyError) as e:
        build_engine(demo, BuildOptions(precision="fp16"))
    assert e.value.module == "tensorrt" and e.value.extra == "gpu"


def test_elapsed_lines_while_tensorrt_builds_silently():
    lines = []
    with _elapsed_lines(lines.append, interval=0.02):
        time.sleep(0.15)
    assert len(lines) >= 2
    assert all(line.startswith("  building... ") and line.endswith(" s") for line in lines)
    assert not [t for t in threading.enumerate() if t.name == "edgemed-build-progress"]


# -- edgemed doctor -----------------------------------------------------------------------------

#: What auto picks on a machine without TensorRT: OpenVINO where installed, else ORT.
_CPU_BACKEND = "openvino" if available("openvino") else "onnxruntime"


def _nvidia_on_pci_here() -> bool | None:
    """This machine's answer, read independently of doctor: None if /sys has no bus."""
    bus = Path("/sys/bus/pci/devices")
    if not bus.is_dir():
        return None
    return any(
        (d / "vendor").read_text().strip() == "0x10de"
        and (d / "class").read_text().strip().startswith("0x03")
        for d in bus.iterdir()
    )


def test_doctor_prints_facts_and_exits_0_with_nothing_installed(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))  # no nvcc, no nvidia-smi either
    proc = cli("doctor", env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    # pycuda and nvidia-smi absent: the PCI bus still answers "is there a GPU?"
    expected = {
        False: "gpu          none (no NVIDIA display or 3D controller on the PCI bus",
        True: "(cc unknown, discrete; via pci) [pycuda not installed; no nvidia-smi]",
        None: "gpu          unknown (could not check: pycuda not installed, no nvidia-smi",
    }[_nvidia_on_pci_here()]
    assert expected in out
    assert "No module named" not in out.split("gpu", 1)[1].splitlines()[0]
    assert "nvcc         not found" in out
    assert "tensorrt     not installed" in out
    assert "pycuda       not installed" in out
    cpu = _CPU_BACKEND
    assert f"auto picks   {cpu} (tensorrt not used: the tensorrt module is not installed" in out
    assert f"preprocess   cpu (beside {cpu} the CPU path is used (no device I/O))" in out


def test_doctor_json_is_complete(tmp_path):
    proc = cli("doctor", "--json", env=dict(os.environ, PATH=str(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    assert set(facts) == {
        "platform",
        "gpu",
        "cuda",
        "tensorrt",
        "pycuda",
        "onnxruntime",
        "openvino",
        "extras",
        "backends",
    }
    assert facts["gpu"]["present"] is _nvidia_on_pci_here()
    assert facts["extras"]["gpu"]["installed"] is False
    assert "pycuda" in facts["extras"]["gpu"]["missing"]
    assert facts["extras"]["dicom"]["installed"] is True  # the test extra brings it
    assert facts["tensorrt"]["installed"] is False and facts["pycuda"]["installed"] is False
    assert facts["cuda"]["nvcc"] is None and facts["cuda"]["driver"] is None
    assert facts["onnxruntime"]["installed"] is True
    assert "CPUExecutionProvider" in facts["onnxruntime"]["providers"]
    assert facts["backends"]["auto"] == _CPU_BACKEND
    assert facts["backends"]["backends"]["onnxruntime"] == ""
    assert facts["backends"]["preprocess"] == "cpu"
    assert _CPU_BACKEND in facts["backends"]["preprocess_reason"]


def test_doctor_preprocess_choice_follows_the_pipeline_rule(demo):
    import dataclasses

    from edgemed.doctor import _preprocess_choice
    from edgemed.settings import Options

    opts = Options.resolve()
    assert _preprocess_choice(demo, opts, "onnxruntime", False)[0] == "cpu"
    if not available("pycuda"):  # the demo's spec has kernels, but no GPU answers here
        where, why = _preprocess_choice(demo, opts, "tensorrt", True)  # (stand-in tests: rest)
        assert where == "cpu" and "pycuda" in why
    demo.preprocess = dataclasses.replace(demo.preprocess, edges=True)
    where, why = _preprocess_choice(demo, opts, "tensorrt", True)
    assert where == "cpu" and "edge" in why


def test_doctor_without_any_backend_says_so(tmp_path):
    code = (
        BLOCK + "sys.modules['onnxruntime'] = sys.modules['openvino'] = None\n"
        "from edgemed.doctor import gather\nimport json\n"
        "print(json.dumps(gather()['backends']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    assert facts["auto"] is None
    assert facts["auto_reason"].startswith("no backend can run here: tensorrt not used")
    assert "onnxruntime is not installed" in facts["auto_reason"]


def test_doctor_reports_nvcc_when_present():
    import shutil

    if shutil.which("nvcc") is None:
        pytest.skip("no nvcc on this machine")
    facts = gather()
    out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout
    assert facts["cuda"]["nvcc"] and f"release {facts['cuda']['nvcc']}" in out
    assert f"nvcc         {facts['cuda']['nvcc']}" in format_report(facts)


def _no_smi(_name: str) -> None:
    return None


def _pci_device(root: Path, address: str, vendor: str, klass: str) -> None:
    dev = root / "sys" / "bus" / "pci" / "devices" / address
    dev.mkdir(parents=True)
    (dev / "vendor").write_text(vendor + "\n")
    (dev / "class").write_text(klass + "\n")


@pytest.fixture
def no_pycuda(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)


def test_gpu_none_and_could_not_check_are_different_answers(tmp_path, no_pycuda):
    # a PCI bus with only a virtio NIC and a host bridge: looked, and there is no GPU
    _pci_device(tmp_path / "a", "0000:00:00.0", "0x8086", "0x060000")
    _pci_device(tmp_path / "a", "0000:00:03.0", "0x1af4", "0x020000")
    none = gpu_facts(_no_smi, root=tmp_path / "a")
    assert none["present"] is False and none["source"] == "pci"
    # an NVIDIA 3D controller (an H100's class) without driver tools: present
    _pci_device(tmp_path / "b", "0000:01:00.0", "0x10de", "0x030200")
    seen = gpu_facts(_no_smi, root=tmp_path / "b")
    assert seen["present"] is True and seen["name"] == "NVIDIA device at PCI 0000:01:00.0"
    assert seen["note"] == "pycuda not installed; no nvidia-smi"
    # an NVIDIA audio function (class 0x0403) is no GPU
    _pci_device(tmp_path / "c", "0000:01:00.1", "0x10de", "0x040300")
    assert gpu_facts(_no_smi, root=tmp_path / "c")["present"] is False
    # nothing to read at all: could not check, and says what was missing
    unknown = gpu_facts(_no_smi, root=tmp_path / "empty")
    assert unknown["present"] is None
    assert unknown["reason"] == (
        "could not check: pycuda not installed, no nvidia-smi, no PCI bus to read"
    )
    # a Jetson (L4T release file): its GPU is integrated, not on the PCI bus
    (tmp_path / "j" / "etc").mkdir(parents=True)
    (tmp_path / "j" / "etc" / "nv_tegra_release").write_text("# R36 (release), REVISION: 4.3\n")
    jetson = gpu_facts(_no_smi, root=tmp_path / "j")
    assert jetson["present"] is True and jetson["integrated"] is True
    lines = {
        k: format_report({**gather(), "gpu": g}).splitlines()[2]
        for k, g in (("none", none), ("seen", seen), ("unknown", unknown))
    }
    assert lines["none"].startswith("  gpu          none (no NVIDIA display or 3D controller")
    assert lines["seen"].startswith("  gpu          NVIDIA device at PCI 0000:01:00.0 (cc unknown")
    assert lines["unknown"].startswith("  gpu          unknown (could not check: pycuda")


def _fake_nvidia_smi(tmp_path: Path, output: str, status: int) -> Path:
    """An executable answering as nvidia-smi does (its real wording and exit status)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\nprintf '%s\\n' {json.dumps(output)}\nexit {status}\n")
    smi.chmod(0o755)
    return smi


def test_gpu_from_nvidia_smi_answers(tmp_path, no_pycuda):
    smi = _fake_nvidia_smi(tmp_path, "NVIDIA H100 80GB HBM3, 9.0, 81559 MiB", 0)
    found = gpu_facts(lambda name: str(smi) if name == "nvidia-smi" else None, root=tmp_path)
    assert found["present"] is True and found["source"] == "nvidia-smi"
    assert (found["name"], found["compute_capability"]) == ("NVIDIA H100 80GB HBM3", "9.0")
    smi = _fake_nvidia_smi(tmp_path, "No devices were found", 6)
    none = gpu_facts(lambda name: str(smi) if name == "nvidia-smi" else None, root=tmp_path)
    assert none == {
        "present": False,
        "source": "nvidia-smi",
        "reason": "nvidia-smi finds no device",
    }
    smi = _fake_nvidia_smi(
        tmp_path,
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
        9,
    )
    broken = gpu_facts(lambda name: str(smi) if name == "nvidia-smi" else None, root=tmp_path)
    assert broken["present"] is None  # no /sys under tmp_path either: could not check
    assert "nvidia-smi failed: NVIDIA-SMI has failed" in broken["reason"]


def test_extras_table_matches_pyproject():
    import tomllib

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    development = {"test", "dev", "export-test"}  # tools for working on edgemed itself
    assert set(EXTRAS) == set(extras) - development
    for name, parts in EXTRAS.items():
        listed = [re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0] for r in extras[name]]
        assert [dist for dist, _ in parts] == listed, name


def test_extras_report_what_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if the bench extra lacked tqdm
    facts = extras_facts()
    assert facts["bench"] == {"installed": False, "missing": ["tqdm"]}
    assert facts["signing"] == {"installed": True, "missing": []}
    report = format_report({**gather(), "extras": facts})
    assert '    bench        missing tqdm (pip install "edgemed[bench]")' in report
    assert "    signing      installed" in report


# -- auto ---------------------------------------------------------------------------------------


def test_tensorrt_probe_reason_here(demo):
    why = probe("tensorrt", demo, "fp16")
    assert why == f"the tensorrt module is not installed ({TENSORRT_INSTALL})"
    facts = backend_facts(demo)
    assert facts["backends"]["tensorrt"] == why and facts["auto"] == _CPU_BACKEND


def test_auto_names_the_tensorrt_reason_and_falls_back(demo):
    with create_backend("auto", demo, "fp16") as be:
        assert be.name == _CPU_BACKEND and be.precision == "fp16"
        assert be.reason == f"auto: tensorrt not used: {probe('tensorrt', demo, 'fp16')}"


def test_probe_with_tensorrt_but_no_pycuda_names_pycuda(demo, monkeypatch):
    # The reason order: tensorrt, then pycuda. A stand-in module object makes the first
    # check pass; what is tested is the probe's own ordering and wording.
    import types

    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setitem(sys.modules, "pycuda", None)
    assert probe("tensorrt", demo, "fp32") == 'pycuda is not installed (pip install "edgemed[gpu]")'
