"""``edgemed export`` end to end on the demo U-Net: real torch, ModelOpt, ONNX Runtime.

Inputs are 64x64 so that each export takes seconds on a 2-core CPU. The trained demo
weights (``export/reference/demo_unet.pt``) make the accuracy gates meaningful: a model
with random weights labels almost everything one class, which any variant matches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("torch")
pytest.importorskip("modelopt.onnx.quantization")

import edgemed  # noqa: E402
from edgemed.errors import ExportError  # noqa: E402
from edgemed.export import ExportConfig, RandomWeightsWarning, export_bundle  # noqa: E402
from edgemed.export.api import REAL_CASE  # noqa: E402
from edgemed.export.calibration import collect  # noqa: E402
from edgemed.export.config import DEFAULT_PARITY_TOLERANCE, Thresholds  # noqa: E402
from edgemed.export.gates import TaskCheck  # noqa: E402
from edgemed.export.load import load_model  # noqa: E402
from edgemed.export.onnx_export import (  # noqa: E402
    OnnxModel,
    max_errors,
    parity,
    run_onnx,
    session,
)
from edgemed.export.reference.build_demo import PREPROCESS, WEIGHTS  # noqa: E402
from edgemed.export.reference.phantom_files import (  # noqa: E402
    write_ct_dicom,
    write_nifti_volume,
)
from edgemed.export.reference.phantoms import LABELS, make_phantom  # noqa: E402
from edgemed.heads import create_head  # noqa: E402
from edgemed.preprocess import PreprocessSpec  # noqa: E402
from tests.export.support import cli  # noqa: E402

SIZE = 64
FACTORY = "edgemed.export.reference.unet:UNet2D"


def _write_images(folder: Path, seed: int, n: int, ct_small: str) -> None:
    """``n`` phantom DICOM slices, a 3-slice NIfTI volume and the real CT_small.dcm."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        ph = make_phantom(rng, 96 + 16 * (i % 3), 0.9, ("thorax", "abdomen", "pelvis")[i % 3])
        write_ct_dicom(folder / f"ph{i}.dcm", ph.hu, ph.spacing_mm, rng)
    vol = np.stack([make_phantom(rng, 80, 1.0, "abdomen").hu for _ in range(3)])
    write_nifti_volume(folder / "vol.nii.gz", vol, (2.0, 1.0, 1.0))
    (folder / "ct.dcm").write_bytes(Path(ct_small).read_bytes())
    (folder / "README.txt").write_text("not an image: skipped and counted")


@pytest.fixture(scope="module")
def data(tmp_path_factory, ct_small_path):
    root = tmp_path_factory.mktemp("export-data")
    _write_images(root / "calib", 11, 6, ct_small_path)
    _write_images(root / "val", 12, 4, ct_small_path)
    spec = dict(PREPROCESS, size=[SIZE, SIZE])
    (root / "spec.json").write_text(json.dumps({"preprocess": spec}))
    # Calibration that sees nothing but air: INT8 ranges far too narrow for real CT.
    (root / "air").mkdir()
    for i in range(2):
        np.save(root / "air" / f"air{i}.npy", np.full((SIZE, SIZE), -1000.0, np.float32))
    return root


def _export_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "export",
        "--model", FACTORY,
        "--weights", str(WEIGHTS),
        "--input-shape", f"1x3x{SIZE}x{SIZE}",
        "--dynamic", "batch,height,width",
        "--task", "segmentation",
        "--labels", ",".join(LABELS),
        "--preprocess", str(data / "spec.json"),
        "--calibration", str(data / "calib"),
        "--validation", str(data / "val"),
        "--out", str(out),
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def bundle(data):
    out = data / "bundle"
    proc = cli(*_export_args(data, out, "--precision", "fp32,fp16,int8"), cwd=data)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc


def test_export_writes_a_verified_three_precision_bundle(bundle):
    out, proc = bundle
    b = edgemed.Bundle.load(out)  # verifies every sha256
    assert b.precisions == ["fp32", "fp16", "int8"]
    assert [a.path for a in b.artifacts] == ["model.onnx", "model.fp16.onnx", "model.int8.onnx"]
    assert b.input.shape == ("batch", 3, "height", "width") and b.labels == list(LABELS)
    assert b.preprocess.size == (SIZE, SIZE)
    exp = b.provenance["export"]
    assert exp["onnx"]["exporter"].startswith("dynamo") and exp["onnx"]["opset"] >= 17
    assert exp["source"]["sha256"] == hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()
    for name in ("torch", "onnx", "onnxruntime", "nvidia-modelopt", "onnxslim"):
        assert exp["versions"][name] != "not installed"
    assert (out / "report.md").read_text().count("fp16 Dice") == 1
    assert "int8: PASS" in proc.stdout
    # Trained weights given: nothing to warn about, and the bundle says where they came from.
    assert "warning" not in proc.stderr
    assert exp["source"]["weights"] == "state dict file (--weights)"
    assert "| weights | state dict file (--weights) |" in (out / "report.md").read_text()


def test_parity_report_on_random_and_real_inputs(bundle):
    parity = edgemed.Bundle.load(bundle[0]).provenance["parity"]
    cases = parity["cases"]
    assert {"random", "random-2x3x32x32", REAL_CASE} == set(cases)
    assert cases[REAL_CASE]["shape"][0] == 8
    assert parity["tolerance"] == DEFAULT_PARITY_TOLERANCE
    for c in cases.values():
        assert c["range"] > 0 and c["max_abs"] == pytest.approx(
            c["max_abs_over_range"] * c["range"], rel=1e-3
        )
        # Measured 4.4e-7 (2 CPUs): float32 reordering, far below the tolerance.
        assert c["max_abs_over_range"] <= parity["tolerance"] / 100
    # The real images, decoded by the segmentation head: the same masks as PyTorch's.
    task = cases[REAL_CASE]["task"]
    assert task["metric"] == "dice" and task["failures"] == []
    assert task["pixel_agreement"] >= 0.9999
    assert "task" not in cases["random"]  # random inputs have no meaningful results
    report = (bundle[0] / "report.md").read_text()
    assert "| max error / range | task results |" in report
    assert "| mean_dice 1, mean_dice_drop 0 (pass) |" in report


def test_calibration_metadata_hashes_without_names(bundle, data):
    prov = edgemed.Bundle.load(bundle[0]).provenance
    cal = prov["calibration"]
    assert cal["calibration"]["images"] == 8 and cal["calibration"]["slices"] == 10
    assert cal["calibration"]["skipped_non_image_files"] == 1
    assert cal["validation"]["images"] == 6 and cal["validation"]["slices"] == 8
    assert "1 image(s) also in the calibration folder" in cal["split"]  # ct.dcm in both
    on_disk = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (data / "calib").iterdir()}
    assert {i["sha256"] for i in cal["calibration"]["inputs"]} <= on_disk
    assert prov["export"]["int8"]["calibration_method"] == "entropy"
    text = (bundle[0] / "bundle.json").read_text() + (bundle[0] / "report.md").read_text()
    assert "ph0.dcm" not in text and "vol.nii" not in text and "README" not in text


def test_accuracy_report_per_variant_per_class(bundle):
    acc = edgemed.Bundle.load(bundle[0]).provenance["accuracy"]
    assert acc["passed"] and set(acc["variants"]) == {"fp16", "int8"}
    for v in acc["variants"].values():
        assert set(v["classes"]) == set(LABELS)
        present = [c for c in v["classes"].values() if c["dice"] is not None]
        assert len(present) >= 4  # CT with lungs, fat, soft tissue, bone
        assert v["mean_dice_drop"] <= 0.01
        assert all(c["drop"] <= 0.02 for c in present)


def test_variants_are_what_they_claim(bundle):
    out = bundle[0]
    int8 = onnx.load(str(out / "model.int8.onnx"))
    ops = [n.op_type for n in int8.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    fp16 = onnx.load(str(out / "model.fp16.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)
    x = np.random.default_rng(0).random((2, 3, SIZE, SIZE), dtype=np.float32)
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx"):
        sess = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, {"image": x})
        assert y.shape == (2, len(LABELS), SIZE, SIZE) and np.isfinite(y).all()


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_runtime_runs_each_variant(bundle, ct_small_path, tmp_path, precision):
    out = tmp_path / precision
    proc = cli("run", ct_small_path, "--bundle", str(bundle[0]), "--precision", precision,
               "--out", str(out), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["provenance"]["precision"] == precision
    lung = result["outputs"]["labels"]["lung"]["pixels"]
    assert lung > 1000  # CT_small's two lung bases


def test_bad_calibration_fails_the_gate_with_exit_6_and_a_table(data, tmp_path):
    out = tmp_path / "never"
    args = _export_args(data, out, "--precision", "fp32,int8", "--calibration-method", "max")
    args[args.index("--calibration") + 1] = str(data / "air")
    proc = cli(*args, cwd=tmp_path)
    assert proc.returncode == 6, proc.stdout + proc.stderr
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 1 and "ACCURACY_GATE" in errors[0]
    assert "int8: FAIL" in proc.stdout and "class" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.split()[:1] in ([n] for n in LABELS)]
    assert len(rows) == len(LABELS) and any(r.rstrip().endswith("!") for r in rows)
    assert not out.exists() and not list(tmp_path.glob(".never*"))  # nothing left behind


def _config(data: Path, out: Path, **overrides) -> ExportConfig:
    """The demo U-Net on ``data``'s spec.json, calib/ and val/; ``overrides`` replace fields."""
    fields = dict(
        model=FACTORY,
        weights=WEIGHTS,
        input_shape=(1, 3, SIZE, SIZE),
        task="segmentation",
        labels=LABELS,
        preprocess=str(data / "spec.json"),
        calibration=data / "calib",
        validation=data / "val",
        out=out,
    )
    return ExportConfig(**{**fields, **overrides})


def test_torchscript_file_falls_back_with_the_reason(tmp_path, data):
    import torch

    from edgemed.export.reference.unet import UNet2D

    torch.manual_seed(0)
    model = UNet2D().eval()
    path = tmp_path / "unet.ts"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, SIZE, SIZE)), str(path))
    result = export_bundle(
        _config(
            data,
            tmp_path / "b",
            model=str(path),
            weights=None,
            validation=None,
            precisions=("fp32",),
        )  # fmt: skip
    )
    onnx_info = result.manifest["provenance"]["export"]["onnx"]
    assert onnx_info["exporter"].startswith("torchscript")
    assert onnx_info["fallback_reason"]  # why dynamo did not do it, recorded
    src = result.manifest["provenance"]["export"]["source"]
    assert src["kind"] == "torchscript"
    assert src["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [a["path"] for a in result.manifest["artifacts"]] == ["model.onnx"]


def test_parity_above_tolerance_fails_the_export_with_exit_8(data, tmp_path):
    args = _export_args(data, tmp_path / "b", "--precision", "fp32", "--parity-tolerance", "1e-12")
    proc = cli(*args, cwd=tmp_path)
    assert proc.returncode == 8, proc.stdout + proc.stderr
    assert "EXPORT_PARITY" in proc.stderr and not (tmp_path / "b").exists()


def test_shape_must_fit_the_preprocessing(data, tmp_path):
    args = _export_args(data, tmp_path / "b")
    args[args.index("--input-shape") + 1] = "1x1x64x64"
    proc = cli(*args, cwd=tmp_path)
    assert proc.returncode == 2 and "USAGE" in proc.stderr


def test_excluded_op_types_stay_unquantized(data, tmp_path):
    result = export_bundle(
        _config(data, tmp_path / "b", precisions=("int8",), exclude_op_types=("ConvTranspose",))
    )
    model = onnx.load(str(tmp_path / "b" / "model.int8.onnx"))
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    up = [n for n in model.graph.node if n.op_type == "ConvTranspose"]
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(up) == 3 and convs
    assert not any(producers.get(i) == "DequantizeLinear" for n in up for i in n.input)
    assert all(producers.get(n.input[1]) == "DequantizeLinear" for n in convs)
    assert result.manifest["provenance"]["export"]["int8"]["op_types_excluded"] == ["ConvTranspose"]


def _tiny_net(task: str):
    """A small CNN head: 3 classes (classification) or an 8-D vector (embedding)."""
    import torch
    from torch import nn

    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 3 if task == "classification" else 8),
    ).eval()  # fmt: skip


@pytest.mark.parametrize("task", ["classification", "embedding"])
def test_other_tasks_get_their_gates(task, data, tmp_path):
    """A torch.export program (classification) and a TorchScript file (embedding)."""
    import torch

    from edgemed.export.config import Thresholds

    net, x = _tiny_net(task), torch.zeros(2, 3, SIZE, SIZE)
    if task == "classification":
        path = tmp_path / "net.pt2"
        batch = torch.export.Dim("batch", max=64)
        torch.export.save(torch.export.export(net, (x,), dynamic_shapes=({0: batch},)), path)
    else:
        path = tmp_path / "net.ts"
        torch.jit.save(torch.jit.trace(net, x), str(path))
    # Random weights: agreement is measured, not demanded (the gate logic has its own tests).
    lenient = Thresholds(min_top1_agreement=0.0, max_prob_diff=1.0, min_cosine=0.0)
    result = export_bundle(
        _config(
            data,
            tmp_path / "b",
            model=str(path),
            weights=None,
            task=task,
            labels=("a", "b", "c") if task == "classification" else (),
            thresholds=lenient,
        )  # fmt: skip
    )
    acc = result.manifest["provenance"]["accuracy"]
    assert set(acc["variants"]) == {"fp16", "int8"}
    for v in acc["variants"].values():
        if task == "classification":
            assert 0 <= v["top1_agreement"] <= 1 and 0 <= v["max_prob_diff"] <= 1
        else:
            assert -1 <= v["min_cosine"] <= v["mean_cosine"] <= 1
    b = edgemed.Bundle.load(tmp_path / "b")
    assert b.outputs[0].name == ("logits" if task == "classification" else "features")
    with edgemed.Pipeline.from_bundle(b.root, "onnxruntime", precision="int8") as pipe:
        r = pipe(np.full((40, 50), 30.0, np.float32))
    assert r.classes if task == "classification" else r.embedding.shape == (1, 8)


def test_fixed_batch_of_two(data, tmp_path):
    """No dynamic axes: calibration, parity and gates all feed exactly 2 inputs per run."""
    result = export_bundle(
        _config(data, tmp_path / "b", input_shape=(2, 3, SIZE, SIZE), dynamic=())
    )
    b = edgemed.Bundle.load(tmp_path / "b")
    assert b.input.shape == (2, 3, SIZE, SIZE) and b.precisions == ["fp32", "fp16", "int8"]
    assert result.manifest["provenance"]["parity"]["cases"]["real (calibration images)"][
        "shape"
    ] == [2, 3, SIZE, SIZE]
    assert result.manifest["provenance"]["export"]["int8"]["calibration_samples"] == 10
    assert result.manifest["provenance"]["accuracy"]["passed"]


# -- parity: a stock model passes at the default, a broken export fails -------------------


@pytest.fixture(scope="module")
def parity_setup(bundle, data):
    """The trained U-Net in PyTorch, the real and random cases an export compares on, and
    the task check on the real images (as the export builds them)."""
    loaded = load_model(FACTORY, WEIGHTS)
    spec = PreprocessSpec.from_dict(dict(PREPROCESS, size=[SIZE, SIZE]))
    calib, _, _ = collect(data / "calib", data / "val", spec, max_slices=64)
    rng = np.random.default_rng(0)
    cases = {
        "random": rng.uniform(0, 1, (2, 3, SIZE, SIZE)).astype(np.float32),
        REAL_CASE: np.ascontiguousarray(calib.inputs[:8]),
    }
    b = edgemed.Bundle.load(bundle[0])
    head = create_head("segmentation", b.postprocess, LABELS, [("logits", b.outputs[0].shape)])
    task = TaskCheck(head, REAL_CASE, calib.placements[:8], dataclasses.asdict(Thresholds()))
    return loaded, cases, task


def _onnx(path: Path) -> OnnxModel:
    return OnnxModel(path, "image", "logits", 18, "test")


def _one_weight_off(src: Path, dst: Path, factor: float) -> None:
    """A copy of ``src`` whose first convolution's largest weight is ``factor`` times
    what it was: one number of ~480k wrong, the size of fault a bad conversion or a
    corrupted copy leaves behind."""
    from onnx import numpy_helper

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits)
    init = inits[conv.input[1]]
    w = numpy_helper.to_array(init).copy()
    w[np.unravel_index(np.abs(w).argmax(), w.shape)] *= factor
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(dst))


def _measured(loaded, path: Path, cases) -> float:
    """Parity's measure, computed here from PyTorch's and ONNX Runtime's outputs."""
    sess = session(path)
    return max(
        max_errors(loaded.run(x), run_onnx(sess, x, len(x)))["max_abs_over_range"]
        for x in cases.values()
    )


def test_parity_passes_the_stock_model_at_the_default(bundle, parity_setup):
    loaded, cases, task = parity_setup
    report = parity(loaded, _onnx(bundle[0] / "model.onnx"), cases, DEFAULT_PARITY_TOLERANCE,
                    task=task)  # fmt: skip
    worst = max(c["max_abs_over_range"] for c in report["cases"].values())
    assert 0 < worst <= DEFAULT_PARITY_TOLERANCE / 100
    assert report["cases"][REAL_CASE]["task"]["mean_dice"] == 1.0


def test_parity_catches_one_weight_one_percent_off(bundle, parity_setup, tmp_path):
    loaded, cases, task = parity_setup
    bad = tmp_path / "bad.onnx"
    _one_weight_off(bundle[0] / "model.onnx", bad, 1.01)
    measured = _measured(loaded, bad, cases)
    assert measured > DEFAULT_PARITY_TOLERANCE  # measured 1.8e-3 when this was written
    with pytest.raises(ExportError) as err:
        parity(loaded, _onnx(bad), cases, DEFAULT_PARITY_TOLERANCE, task=task)
    assert err.value.code == "EXPORT_PARITY"
    message = err.value.message
    assert "--parity-tolerance 0.001" in message and f"max error {measured:.3g} " in message
    print(f"\none weight x1.01: {measured:.3g} of the output range; {message}")


def test_raised_tolerance_still_fails_results_that_differ(bundle, parity_setup, tmp_path):
    """--parity-tolerance 1 lets any number through; the decoded masks still must agree."""
    loaded, cases, task = parity_setup
    bad = tmp_path / "bad.onnx"
    _one_weight_off(bundle[0] / "model.onnx", bad, 2.0)
    assert _measured(loaded, bad, cases) < 1.0
    with pytest.raises(ExportError) as err:
        parity(loaded, _onnx(bad), cases, 1.0, task=task)
    assert err.value.code == "EXPORT_PARITY"
    assert "beyond the accuracy gates" in err.value.message
    assert "Dice drop" in err.value.message


# -- weights: where they came from, and a warning when they are random --------------------


def test_weights_provenance_says_where_they_came_from():
    import torch

    from edgemed.export.reference.unet import UNet2D

    torch.manual_seed(0)
    UNet2D()
    after_one_build = torch.rand(4)
    rnd = load_model(FACTORY, None, seed=0)
    # The second build (another seed, to tell random weights) leaves the RNG as one did.
    assert torch.equal(torch.rand(4), after_one_build)
    assert rnd.random_init and rnd.weights == "random initialisation (torch seed 0; no --weights)"
    own = load_model("tests.export.factories:trained_unet", seed=0)
    assert not own.random_init
    assert own.weights == "the factory's own, the same under any seed (no --weights)"
    inst = load_model("tests.export.factories:INSTANCE")
    assert not inst.random_init and inst.weights == "the module instance's own (no --weights)"
    given = load_model(FACTORY, WEIGHTS)
    assert not given.random_init and given.weights == "state dict file (--weights)"


def test_random_weights_warn_and_are_recorded(data, tmp_path):
    """No --weights: a RandomWeightsWarning (a category a build script can make an
    error), and the bundle's provenance and report say so."""
    config = _config(
        data, tmp_path / "b", model="torch.nn:Conv2d", weights=None, precisions=("fp32",),
        model_kwargs={"in_channels": 3, "out_channels": len(LABELS), "kernel_size": 1},
        seed=7,
    )  # fmt: skip
    with pytest.warns(RandomWeightsWarning, match=r"torch\.nn:Conv2d .*torch seed 7") as caught:
        result = export_bundle(config)
    assert len([w for w in caught if w.category is RandomWeightsWarning]) == 1
    src = result.manifest["provenance"]["export"]["source"]
    assert src["weights"] == "random initialisation (torch seed 7; no --weights)"
    assert src["weights"] in result.report_md
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)
        with pytest.raises(RandomWeightsWarning):
            export_bundle(dataclasses.replace(config, out=tmp_path / "never"))
    assert not (tmp_path / "never").exists()
