"""Export-stage parts that need no torch: options, the calibration split, gate arithmetic,
and the error a missing ``export`` extra gives."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgemed.errors import AccuracyGateError, ExportError, UsageError
from edgemed.export.calibration import collect, split_by_hash
from edgemed.export.config import ExportConfig, Thresholds, dynamic_axes, parse_shape
from edgemed.export.gates import format_table
from edgemed.heads import create_head
from edgemed.preprocess import PreprocessSpec


def test_error_families_have_their_exit_codes():
    assert AccuracyGateError("x").exit_code == 6 and AccuracyGateError("x").code == "ACCURACY_GATE"
    assert ExportError("x").exit_code == 8 and ExportError("x").code.startswith("EXPORT_")


def test_shapes_and_axes():
    assert parse_shape("1x3x256x256") == (1, 3, 256, 256)
    assert dynamic_axes((1, 3, 64, 64), ["batch", "height", "width"]) == {
        0: "batch",
        2: "height",
        3: "width",
    }
    for bad in ("1x3x256", "1x3x0x4", "axbxcxd"):
        with pytest.raises(UsageError):
            parse_shape(bad)
    with pytest.raises(UsageError):
        dynamic_axes((1, 3, 8, 8), ["channels"])


def test_config_refuses_bad_options(tmp_path):
    base = dict(
        model="m:f",
        input_shape="1x1x8x8",
        task="segmentation",
        calibration=tmp_path,
        out=tmp_path / "o",
    )
    cfg = ExportConfig(**base, precisions="int8")
    assert cfg.precisions == ("fp32", "int8")  # FP32, the reference, is always built
    for change in (
        {"task": "detection"},
        {"precisions": "fp8"},
        {"opset": 16},
        {"calibration_method": "percentile"},
        {"calibration": tmp_path / "missing"},
        {"labels": "a,a"},
    ):
        with pytest.raises(UsageError):
            ExportConfig(**{**base, **change})
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "bundle.json").write_text("{}")
    with pytest.raises(UsageError):  # never overwrite without being asked
        ExportConfig(**base)
    with pytest.raises(UsageError):
        Thresholds(max_dice_drop=-0.1)


class _Src:
    def __init__(self, sha: str) -> None:
        self.sha256 = sha


def test_split_is_by_content_hash_every_fifth():
    items = [_Src(hashlib.sha256(str(i).encode()).hexdigest()) for i in range(12)]
    calib, val = split_by_hash(list(reversed(items)))
    order = sorted(s.sha256 for s in items)
    assert [s.sha256 for s in val] == [order[4], order[9]]
    assert len(calib) == 10 and not {s.sha256 for s in calib} & {s.sha256 for s in val}
    assert split_by_hash(items[:3])[1][0].sha256 == sorted(s.sha256 for s in items[:3])[-1]
    with pytest.raises(UsageError):
        split_by_hash(items[:1])


def test_calibration_records_hashes_not_names(tmp_path, ct_small_path):
    folder = tmp_path / "patient-DOE^JOHN"
    folder.mkdir()
    for i in range(3):
        np.save(folder / f"DOE_JOHN_{i}.npy", np.full((20, 30), -500.0 + 100 * i, np.float32))
    (folder / "notes.txt").write_text("not an image")
    (folder / "ct.dcm").write_bytes(Path(ct_small_path).read_bytes())
    spec = PreprocessSpec.from_dict({"size": [16, 16], "clip": [-1000, 1000], "scale": "unit"})
    calib, val, split = collect(folder, None, spec, max_slices=64)
    assert len(calib.inputs) + len(val.inputs) == 4 and len(val.inputs) == 1
    assert calib.skipped == 1 and "sha256" in split["split"]
    text = repr(calib.summary()) + repr(val.summary()) + repr(split)
    assert "DOE" not in text and "ct.dcm" not in text
    hashes = {hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    assert {i["sha256"] for i in calib.images + val.images} <= hashes
    assert calib.inputs.dtype == np.float32 and calib.inputs.shape[1:] == (1, 16, 16)


def gate_failures(task: str, metrics: dict, t: Thresholds) -> list[str]:
    """The task head's gate, as the export applies it (thresholds from the dataclass)."""
    head = create_head(task, {}, [], [("out", ("batch", 3))])
    return head.gate(metrics, dataclasses.asdict(t))


def _seg_report(drops: dict[str, float | None], mean_drop: float) -> dict:
    classes = {n: {"dice": None if d is None else 1 - d, "drop": d} for n, d in drops.items()}
    metrics = {"mean_dice": 1 - mean_drop, "mean_dice_drop": mean_drop, "classes": classes}
    t = Thresholds()
    fails = gate_failures("segmentation", metrics, t)
    return {
        "thresholds": {"max_dice_drop": t.max_dice_drop, "max_class_dice_drop": 0.02},
        "variants": {"int8": {"passed": not fails, "failures": fails, **metrics}},
    }


def test_gate_arithmetic_and_table():
    ok = _seg_report({"bg": 0.0, "lung": 0.019, "bone": None}, 0.009)
    assert ok["variants"]["int8"]["passed"]
    bad = _seg_report({"bg": 0.0, "lung": 0.021, "bone": None}, 0.007)
    assert bad["variants"]["int8"]["failures"] == ["lung: Dice drop 0.0210 > 0.02"]
    table = format_table("segmentation", bad)
    assert "absent" in table and "int8: FAIL" in table
    lung_row = next(line for line in table.splitlines() if line.startswith("lung"))
    assert lung_row.rstrip().endswith("!")
    assert gate_failures("segmentation", _seg_report({}, 0.011)["variants"]["int8"], Thresholds())
    cls = {"top1_agreement": 0.98, "max_prob_diff": 0.01}
    assert gate_failures("classification", cls, Thresholds()) == ["top-1 agreement 0.9800 < 0.99"]
    assert gate_failures("embedding", {"min_cosine": 0.995}, Thresholds()) == []


def test_missing_export_extra_exits_5_naming_it(tmp_path):
    """torch absent: a one-line DEPENDENCY_MISSING error naming edgemed[export]."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "from edgemed.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = ["export", "--model", "edgemed.export.reference.unet:UNet2D", "--input-shape",
            "1x3x256x256", "--task", "segmentation", "--labels", "a,b,c,d,e",
            "--calibration", str(tmp_path), "--out", str(tmp_path / "b")]  # fmt: skip
    # cwd elsewhere: the installed edgemed (with edgemed.export), not the checkout's folder.
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 5, proc.stderr
    assert "DEPENDENCY_MISSING" in proc.stderr and 'pip install "edgemed[export]"' in proc.stderr
    assert not (tmp_path / "b").exists()


def test_volumes_give_slices_and_the_cap_subsamples_evenly(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):  # two 5-slice volumes, each slice a different constant
        vol = np.stack([np.full((12, 12), 100.0 * (5 * i + k), np.float32) for k in range(5)])
        np.save(folder / f"v{i}.npy", vol)
    spec = PreprocessSpec.from_dict({"size": [8, 8], "clip": [0, 1000], "scale": "unit"})
    validation = tmp_path / "val"
    validation.mkdir()
    np.save(validation / "x.npy", np.zeros((12, 12), np.float32))
    calib, _, _ = collect(folder, validation, spec, max_slices=4)
    assert calib.subsampled and len(calib.inputs) == 4
    # Evenly over the 10 slices in name order: indices 0, 3, 6, 9.
    assert calib.inputs[:, 0, 0, 0] == pytest.approx([0.0, 0.3, 0.6, 0.9])
    assert [i["slices_used"] for i in calib.images] == [2, 2]
    assert calib.summary()["slices_available"] == 10


def test_run_onnx_pads_the_last_run_of_a_fixed_batch(tmp_path):
    from onnx import TensorProto, helper

    from edgemed.export.onnx_export import run_onnx, session

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [2, 1, 4, 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 1, 4, 4])
    graph = helper.make_graph([helper.make_node("Neg", ["image"], ["logits"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "fixed.onnx"
    path.write_bytes(model.SerializeToString())
    data = np.arange(5 * 16, dtype=np.float32).reshape(5, 1, 4, 4)
    out = run_onnx(session(path), data, batch=8)
    assert out.shape == (5, 1, 4, 4) and np.array_equal(out, -data)


def test_parity_measure_is_relative_to_the_output_range():
    from edgemed.export.onnx_export import max_errors

    ref = np.array([[100.0, 101.0, 102.0, 104.0]], np.float32)  # range 4, max |ref| 104
    got = ref + np.array([[0.0, 0.002, -0.004, 0.0]], np.float32)
    e = max_errors(ref, got)
    assert e["range"] == 4.0
    assert e["max_abs"] == pytest.approx(0.004, rel=1e-3)
    # Against the range: the old measure (/ max |ref|) called this 3.8e-5 and let an
    # error that moves values by 1/1000 of their spread pass a 1e-4 tolerance.
    assert e["max_abs_over_range"] == pytest.approx(1e-3, rel=1e-3)
    # An offset changes no decision and no measure.
    assert max_errors(ref - 100, got - 100)["max_abs_over_range"] == pytest.approx(1e-3, rel=1e-3)
    const = np.full((1, 4), 2.0, np.float32)
    assert max_errors(const, const + 0.001)["max_abs_over_range"] == pytest.approx(5e-4, rel=1e-3)
    zero = np.zeros((1, 4), np.float32)
    assert max_errors(zero, zero + 0.25)["max_abs_over_range"] == 0.25
    nan = got.copy()
    nan[0, 1] = np.nan
    assert max_errors(ref, nan)["max_abs_over_range"] == float("inf")  # never a pass
    assert max_errors(ref, got[:, :3])["max_abs_over_range"] == float("inf")


def test_parity_tolerance_default_is_one_number(tmp_path):
    from edgemed.export.config import DEFAULT_PARITY_TOLERANCE

    cfg = ExportConfig(
        model="m:f", input_shape="1x1x8x8", task="segmentation", calibration=tmp_path,
        out=tmp_path / "o",
    )  # fmt: skip
    assert cfg.parity_tolerance == DEFAULT_PARITY_TOLERANCE == 1e-3
    for bad in (0.0, -1e-3, float("nan")):
        with pytest.raises(UsageError):
            ExportConfig(**{**cfg.__dict__, "parity_tolerance": bad, "overwrite": True})


def test_cli_help_states_the_config_default(capsys):
    from edgemed.cli import main
    from edgemed.export.config import DEFAULT_PARITY_TOLERANCE

    with pytest.raises(SystemExit):
        main(["export", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    stated = re.search(r"relative to the output's range \(default ([0-9.e+-]+)\)", help_text)
    assert stated and float(stated.group(1)) == DEFAULT_PARITY_TOLERANCE
