"""Device info, peak RSS and sensor parsing (tegrastats, nvidia-smi, thermal zones)."""

from __future__ import annotations

import numpy as np
import pytest

from edgemed.bench.monitor import (
    PeakRss,
    Sensors,
    device_info,
    parse_nvidia_smi,
    parse_tegrastats,
    read_thermal_zones,
)

ORIN = (
    "11-25-2026 10:00:00 RAM 2448/30536MB (lfb 6x4MB) SWAP 0/15268MB (cached 0MB) "
    "CPU [3%@729,1%@729,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 47%@[305,305] "
    "cpu@45.5C soc2@44.4C soc0@43.3C gpu@44.1C tj@46.2C soc1@43.9C "
    "VDD_GPU_SOC 2388mW/2388mW VDD_CPU_CV 398mW/398mW VIN_SYS_5V0 3012mW/3012mW"
)
XAVIER = (
    "RAM 1838/7763MB (lfb 1x4MB) CPU [2%@1190,1%@1190] EMC_FREQ 0% GR3D_FREQ 0% "
    "AO@38C GPU@38.5C Tdiode@39.25C PMIC@100C VDD_IN 3822/3822 VDD_CPU_GPU_CV 534/534"
)


def test_tegrastats_lines():
    o = parse_tegrastats(ORIN)
    assert o["ram_used_mib"] == 2448 and o["ram_total_mib"] == 30536
    assert o["gpu_load_percent"] == 47
    assert o["temperature_c"]["gpu"] == 44.1 and o["temperature_c"]["tj"] == 46.2
    assert o["power_w"] == {"VDD_GPU_SOC": 2.388, "VDD_CPU_CV": 0.398, "VIN_SYS_5V0": 3.012}
    x = parse_tegrastats(XAVIER)
    assert x["power_w"] == {"VDD_IN": 3.822, "VDD_CPU_GPU_CV": 0.534}  # RAM 1838/7763MB is not
    assert x["temperature_c"]["Tdiode"] == 39.25


def test_nvidia_smi_rows():
    rows = parse_nvidia_smi(
        "NVIDIA H100 80GB HBM3, 1234, 81559, 41, 71.50\nOrin, 100, [N/A], [N/A], [N/A]\n"
    )
    assert rows[0] == {
        "name": "NVIDIA H100 80GB HBM3",
        "memory_used_mib": 1234.0,
        "memory_total_mib": 81559.0,
        "temperature_c": 41.0,
        "power_w": 71.5,
    }
    assert rows[1]["memory_total_mib"] is None and rows[1]["power_w"] is None


def test_thermal_zones(tmp_path):
    for i, (kind, milli) in enumerate([("cpu-thermal", "45500"), ("gpu-thermal", "41000")]):
        z = tmp_path / f"thermal_zone{i}"
        z.mkdir()
        (z / "type").write_text(kind + "\n")
        (z / "temp").write_text(milli + "\n")
    (tmp_path / "thermal_zone9").mkdir()  # unreadable zone: skipped
    assert read_thermal_zones(tmp_path) == {"cpu-thermal": 45.5, "gpu-thermal": 41.0}


def test_sensors_absent_with_reasons_when_nothing_is_exposed():
    s = Sensors(nvidia_smi=None, thermal=dict, tegrastats="")
    assert not s.active
    s.start()
    out = s.stop()
    assert out["gpu"] is None and out["temperature_c_max"] is None and out["power_w_mean"] is None
    assert set(out["absent"]) == {"gpu", "temperature_c_max", "power_w_mean"}
    assert out["samples"] == 0


def test_sensors_summarise_injected_readings():
    readings = iter(
        [
            [
                {
                    "name": "G",
                    "memory_used_mib": m,
                    "memory_total_mib": 8000.0,
                    "temperature_c": t,
                    "power_w": p,
                }
            ]
            for m, t, p in [(100.0, 40.0, 10.0), (300.0, 45.0, 20.0)] + [(200.0, 42.0, 30.0)] * 50
        ]
    )
    temps = iter([{"cpu": 50.0}, {"cpu": 55.0}] + [{"cpu": 51.0}] * 50)
    s = Sensors(60.0, nvidia_smi=lambda: next(readings), thermal=lambda: next(temps), tegrastats="")
    s.start()
    out = s.stop()  # one sample at start, one at stop (the 60 s period never elapses)
    (gpu,) = out["gpu"]
    assert gpu["memory_used_mib_max"] == 300.0 and gpu["temperature_c_max"] == 45.0
    assert gpu["power_w_mean"] == 15.0
    assert out["temperature_c_max"]["cpu"] >= 51.0
    assert "gpu" not in out["absent"] and "temperature_c_max" not in out["absent"]


def test_peak_rss_sees_a_temporary_allocation():
    rss = PeakRss()
    rss.start()
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB, touched
    del block
    out = rss.stop()
    assert out["peak_rss_mib"] >= 64
    assert out["method"]
    assert out["process_peak_rss_mib"] is None or out["process_peak_rss_mib"] >= 64


def test_device_info_fields():
    d = device_info()
    for key in ("cpu", "cores_logical", "cores_usable", "os", "python", "numpy", "opencv"):
        assert d[key], key
    assert d["onnxruntime"]
    if d["gpus"] is None:
        assert "nvidia-smi" in d["gpus_reason"]


@pytest.mark.parametrize("text", ["", "garbage", "a, b"])
def test_nvidia_smi_garbage(text):
    assert parse_nvidia_smi(text) == []
