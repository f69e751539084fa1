"""``edgemed export`` of 3D models: MONAI networks with ``spatial_dims=3`` and random
(seeded) weights, exported at ``1x1x32x32x32`` (NCDHW, dynamic batch) to FP32, FP16 and
INT8, calibrated on ROI windows of NIfTI volumes and gated on whole volumes run through
:class:`edgemed.Pipeline` (3D Dice per label against FP32).

The volumes are small CT-like phantoms (air, body, lungs, spine; seeded noise) written as
NIfTI with anisotropic spacing, so every volume is resampled to the bundle's spacing and
none is a multiple of the ROI. Random weights make the gates' thresholds meaningless:
they are lenient here, and the tests check that the figures are the Pipeline's own.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")
pytest.importorskip("modelopt.onnx.quantization")
pytest.importorskip("monai")

import edgemed  # noqa: E402
from edgemed.errors import InputError, UsageError  # noqa: E402
from edgemed.export import ExportConfig, RandomWeightsWarning, export_bundle  # noqa: E402
from edgemed.export.config import parse_shape, parse_spacing  # noqa: E402
from edgemed.export.load import load_model  # noqa: E402
from edgemed.export.onnx_export import max_errors, run_onnx, session  # noqa: E402
from edgemed.export.precision import op_counts  # noqa: E402
from edgemed.export.reference.phantom_files import write_nifti_volume  # noqa: E402
from edgemed.export.volumes import windows_at  # noqa: E402
from edgemed.io import read_image  # noqa: E402
from edgemed.io.orientation import canonical  # noqa: E402
from edgemed.sliding_window import sliding_window  # noqa: E402
from edgemed.volume import count_windows, prepare  # noqa: E402
from tests.export.support import LENIENT, cli  # noqa: E402

PRECISIONS = ("fp32", "fp16", "int8")
LABELS = ("background", "lung", "bone")
ROI = 32
SHAPE = f"1x1x{ROI}x{ROI}x{ROI}"
#: The validation volume (Z, Y, X) and its spacing (z, y, x) mm: not a multiple of the
#: ROI in the source grid nor, at 1.5 x 1.5 x 2 mm, in the model's (40 x 47 x 40).
VAL_SHAPE = (40, 70, 60)
SPEC = {
    "preprocess": {
        "size": [ROI, ROI, ROI],
        "windows": [{"center": 40, "width": 400}],
        "scale": "unit",
        "dtype": "float32",
    },
    "volume": {
        "spacing": [1.5, 1.5, 2.0],
        "sliding_window": {"overlap": 0.25, "mode": "constant", "sigma_scale": 0.2},
    },
}
UNET = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3,
        "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1}  # fmt: skip
SEGRESNET = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "init_filters": 8,
             "blocks_down": [1, 1, 1], "blocks_up": [1, 1]}  # fmt: skip
LENIENT_CLI = ("--max-dice-drop", "1", "--max-class-dice-drop", "1")


def phantom(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A CT-like volume in HU: air, an elliptic body, two lungs, a spine; seeded noise."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    v = np.full(shape, -1000.0)
    v[(y / 0.8) ** 2 + (x / 0.9) ** 2 < 1] = 40.0
    for cx in (-0.4, 0.4):
        v[((x - cx) / 0.3) ** 2 + (y / 0.45) ** 2 + (z / 0.9) ** 2 < 1] = -800.0
    v[(x / 0.12) ** 2 + ((y - 0.55) / 0.12) ** 2 < 1] = 700.0
    return v + np.random.default_rng(seed).normal(0.0, 15.0, shape)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("export3d")
    (root / "calib").mkdir()
    (root / "val").mkdir()
    write_nifti_volume(root / "calib" / "a.nii.gz", phantom((36, 64, 56), 1), (2.0, 1.0, 1.0))
    write_nifti_volume(root / "calib" / "b.nii.gz", phantom((44, 72, 64), 2), (2.5, 0.8, 0.8))
    (root / "calib" / "notes.txt").write_text("not an image: skipped and counted")
    write_nifti_volume(root / "val" / "c.nii.gz", phantom(VAL_SHAPE, 3), (2.0, 1.0, 1.0))
    (root / "spec.json").write_text(json.dumps(SPEC))
    return root


@pytest.fixture(scope="module")
def unet(data):
    """MONAI's UNet through the real CLI; the sliding window's overlap, mode and batch and
    the spacing from options, overriding the spec JSON's volume block (sigma_scale stays
    the JSON's); fewer calibration windows than the volumes hold."""
    out = data / "unet"
    proc = cli(
        "export",
        "--model", "monai.networks.nets:UNet",
        "--model-kwargs", json.dumps(UNET),
        "--input-shape", SHAPE,
        "--task", "segmentation",
        "--labels", ",".join(LABELS),
        "--preprocess", str(data / "spec.json"),
        "--calibration", str(data / "calib"),
        "--validation", str(data / "val"),
        "--spacing", "1.5,1.5,2",
        "--roi-overlap", "0.5",
        "--sw-mode", "gaussian",
        "--sw-batch", "3",
        "--max-calibration-windows", "12",
        *LENIENT_CLI,
        "--out", str(out),
        cwd=data,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc.stdout


@pytest.fixture(scope="module")
def segresnet(data):
    """MONAI's SegResNet through the Python API; the volume block from the spec JSON."""
    config = ExportConfig(
        model="monai.networks.nets:SegResNet",
        model_kwargs=SEGRESNET,
        input_shape=SHAPE,
        task="segmentation",
        labels=LABELS,
        preprocess=str(data / "spec.json"),
        calibration=data / "calib",
        validation=data / "val",
        thresholds=LENIENT,
        out=data / "segresnet",
    )
    with pytest.warns(RandomWeightsWarning):
        result = export_bundle(config)
    return result.bundle_dir, result.accuracy_table


BUNDLES = {
    "unet": ("monai.networks.nets:UNet", UNET),
    "segresnet": ("monai.networks.nets:SegResNet", SEGRESNET),
}


def test_volume_bundle_manifest(unet, segresnet):
    for out, window in (
        (unet[0], {"overlap": [0.5] * 3, "mode": "gaussian", "sw_batch_size": 3}),
        (segresnet[0], {"overlap": [0.25] * 3, "mode": "constant", "sw_batch_size": 4}),
    ):
        b = edgemed.Bundle.load(out)  # the runtime's loader, every sha256 verified
        assert b.precisions == list(PRECISIONS)
        raw = json.loads((out / "bundle.json").read_text())
        want = {"name": "image", "layout": "NCDHW", "shape": ["batch", 1, ROI, ROI, ROI]}
        assert raw["input"] == {**want, "dtype": "float32"}
        assert raw["outputs"][0]["shape"] == ["batch", 3, ROI, ROI, ROI]
        assert raw["preprocess"]["size"] == [ROI, ROI, ROI]
        assert raw["volume"]["spacing"] == [1.5, 1.5, 2.0]
        sw = raw["volume"]["sliding_window"]
        assert sw["roi_size"] == [ROI] * 3 and sw["rule"] == "monai"
        assert sw["sigma_scale"] == [0.2] * 3  # the JSON's, under the options
        assert {k: sw[k] for k in window} == window
        assert b.volume is not None and b.volume.window.roi_size == (ROI, ROI, ROI)
        for path in (out / "model.onnx", out / "model.fp16.onnx", out / "model.int8.onnx"):
            dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
            assert [d.dim_param or d.dim_value for d in dims] == ["batch", 1, ROI, ROI, ROI]
        report = (out / "report.md").read_text()
        assert "volume (3D)" in report and "3D Dice" in report


def test_cli_progress_and_calibration_record(unet):
    out, stdout = unet
    assert "data        12 calibration windows from 2 volume(s) / 1 validation volume(s)" in (
        stdout
    )
    calib = edgemed.Bundle.load(out).provenance["calibration"]
    c, v = calib["calibration"], calib["validation"]
    assert c["images"] == 2 and c["windows"] == 12 and c["skipped_non_image_files"] == 1
    # Overlap 0.5 (step 16) at 1.5 x 1.5 x 2 mm: 2x2x2 + 3x2x2 windows.
    assert [r["windows"] for r in c["inputs"]] == [8, 12]
    assert c["windows_available"] == 20 and c["subsampled_randomly"] and c["seed"] == 0
    assert sum(r["windows_used"] for r in c["inputs"]) == 12
    assert [r["model_shape"] for r in c["inputs"]] == [[36, 43, 37], [55, 38, 34]]
    assert v["inputs"][0]["shape"] == list(VAL_SHAPE)
    assert v["inputs"][0]["model_shape"] == [40, 47, 40]
    assert "a.nii.gz" not in (out / "bundle.json").read_text()  # sha256 only, never names


def test_calibration_windows_are_the_runtime_windows(data, unet):
    """The export cuts calibration windows where the runtime's sliding window does, with
    its padding: the windows a recording predictor receives, bit for bit."""
    b = edgemed.Bundle.load(unet[0])
    image = canonical(read_image(data / "val" / "c.nii.gz"))[0]
    prepared = prepare(image, b.preprocess, b.volume)
    seen: list[np.ndarray] = []

    def record(windows: np.ndarray) -> np.ndarray:
        seen.append(windows.copy())
        return np.zeros((len(windows), 1, *windows.shape[2:]), np.float32)

    sliding_window(prepared, record, b.volume.window)
    fed = np.concatenate(seen)
    n = count_windows(prepared.shape[1:], b.volume.window)
    assert len(fed) == n == 8
    np.testing.assert_array_equal(windows_at(prepared, b.volume.window, range(n)), fed)
    # A volume smaller than the ROI is padded as the runtime pads it.
    small = prepared[:, :20, :10, :]
    seen.clear()
    sliding_window(small, record, b.volume.window)
    fed = np.concatenate(seen)
    assert len(fed) == 2  # 20 x 10 x 40 padded to 32 x 32 x 40: two windows along x
    np.testing.assert_array_equal(windows_at(small, b.volume.window, range(2)), fed)


@pytest.mark.parametrize("name", list(BUNDLES))
@pytest.mark.parametrize("precision", PRECISIONS)
def test_bundle_runs_through_the_pipeline(name, precision, data, request):
    out = request.getfixturevalue(name)[0]
    with edgemed.Pipeline.from_bundle(out, backend="onnxruntime", precision=precision) as pipe:
        result = pipe(str(data / "val" / "c.nii.gz"))
    mask = result.output.mask
    assert mask.shape == VAL_SHAPE and mask.dtype == np.uint8
    assert int(mask.max()) < len(LABELS)
    facts = result.output.volume
    assert facts["model_shape"] == [40, 47, 40] and facts["roi_size"] == [ROI] * 3
    window = edgemed.Bundle.load(out).volume.window
    assert facts["windows"] == count_windows((40, 47, 40), window)
    stats = result.output.stats
    assert sum(s["pixels"] for s in stats.values()) == mask.size
    assert all("volume_mm3" in s for s in stats.values())


@pytest.mark.parametrize("name", list(BUNDLES))
def test_fp32_onnx_matches_torch_on_a_window(name, data, request):
    out = request.getfixturevalue(name)[0]
    b = edgemed.Bundle.load(out)
    image = canonical(read_image(data / "val" / "c.nii.gz"))[0]
    window = windows_at(prepare(image, b.preprocess, b.volume), b.volume.window, [5])
    model, kwargs = BUNDLES[name]
    torch_out = load_model(model, None, kwargs, seed=0).run(window)
    onnx_out = run_onnx(session(out / "model.onnx"), window)
    assert onnx_out.shape == (1, 3, ROI, ROI, ROI)
    errors = max_errors(torch_out, onnx_out)
    assert errors["range"] > 0 and errors["max_abs_over_range"] < 1e-4, errors


@pytest.mark.parametrize("name", list(BUNDLES))
@pytest.mark.parametrize("precision", PRECISIONS)
def test_dynamic_batch_of_three_windows(name, precision, data, request):
    out = request.getfixturevalue(name)[0]
    b = edgemed.Bundle.load(out)
    image = canonical(read_image(data / "val" / "c.nii.gz"))[0]
    windows = windows_at(prepare(image, b.preprocess, b.volume), b.volume.window, [0, 4, 7])
    path = (
        out
        / {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}[precision]
    )
    sess = session(path)
    together = run_onnx(sess, windows, batch=3)
    assert together.shape == (3, 3, ROI, ROI, ROI)
    alone = np.concatenate([run_onnx(sess, w[None], batch=1) for w in windows])
    assert max_errors(alone, together)["max_abs_over_range"] < 1e-4


def _dice(a: np.ndarray, b: np.ndarray, label: int) -> float | None:
    denom = int((a == label).sum() + (b == label).sum())
    return None if denom == 0 else 2.0 * int(((a == label) & (b == label)).sum()) / denom


@pytest.mark.parametrize("name", list(BUNDLES))
def test_gates_report_the_pipelines_3d_dice(name, data, request):
    """The accuracy record holds each variant's 3D Dice per label against FP32, as the
    Pipeline's masks give it (recomputed here with numpy)."""
    out = request.getfixturevalue(name)[0]
    accuracy = edgemed.Bundle.load(out).provenance["accuracy"]
    assert accuracy["validation"]["volumes"] == 1
    masks = {}
    for precision in PRECISIONS:
        with edgemed.Pipeline.from_bundle(out, backend="onnxruntime", precision=precision) as p:
            masks[precision] = p(str(data / "val" / "c.nii.gz")).output.mask
    assert accuracy["validation"]["windows"] == int(
        count_windows((40, 47, 40), edgemed.Bundle.load(out).volume.window)
    )
    for precision in ("fp16", "int8"):
        got = accuracy["variants"][precision]
        dices = []
        for label, cls in enumerate(LABELS):
            want = _dice(masks["fp32"], masks[precision], label)
            entry = got["classes"][cls]
            assert entry["pixels_reference"] == int((masks["fp32"] == label).sum())
            assert entry["pixels_other"] == int((masks[precision] == label).sum())
            if want is None:
                assert entry["dice"] is None
                continue
            assert entry["dice"] == pytest.approx(want, abs=1e-6)
            dices.append(want)
        assert dices and got["mean_dice"] == pytest.approx(np.mean(dices), abs=1e-6)
        assert got["pixel_agreement"] == pytest.approx(
            float((masks["fp32"] == masks[precision]).mean()), abs=1e-6
        )
    # The table (printed by the CLI, returned by the API) is the head's: a row per label.
    table = request.getfixturevalue(name)[1]
    assert "fp16 Dice" in table and "int8 Dice" in table
    rows = {line.split()[0] for line in table.splitlines() if line.strip()}
    assert set(LABELS) <= rows


def test_int8_quantizes_the_3d_convolutions(unet):
    int8 = onnx.load(str(unet[0] / "model.int8.onnx"))
    ops = op_counts(int8)
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    producer = {o: n for n in int8.graph.node for o in n.output}
    weights = {t.name: t for t in int8.graph.initializer}
    convs = [n for n in int8.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    # ModelOpt leaves convolutions it judges too small for INT8 in FP32 (its own
    # heuristics); the rest get Q/DQ on the activation and an INT8 5-D weight behind a
    # DequantizeLinear: what TensorRT's explicit quantization runs in INT8.
    quantized = [
        n for n in convs if all(producer.get(i) and producer[i].op_type == "DequantizeLinear"
                                for i in n.input[:2])
    ]  # fmt: skip
    assert len(quantized) >= 2 and {n.op_type for n in quantized} >= {"Conv"}
    for conv in quantized:
        w = weights[producer[conv.input[1]].input[0]]
        assert w.data_type == onnx.TensorProto.INT8 and len(w.dims) == 5


def test_calibration_reads_a_dicom_series_folder(tmp_path):
    """pydicom's real 5-slice CT series as a calibration entry (a subfolder is a series):
    read, resampled and windowed by the runtime, padded into one ROI window; a modality
    the model is not made for is refused, as the runtime refuses it."""
    import shutil

    from pydicom.data import get_testdata_file

    from edgemed.export.volumes import collect
    from edgemed.preprocess import PreprocessSpec
    from edgemed.volume import VolumeSpec

    first = get_testdata_file("dicomdirtests/98892001/CT5N/2062")
    if first is None:
        pytest.skip("pydicom's dicomdirtests series is not installed")
    calib, val = tmp_path / "calib", tmp_path / "val"
    shutil.copytree(Path(first).parent, calib / "series")
    shutil.copytree(Path(first).parent, val / "series")
    spec = PreprocessSpec.from_dict(SPEC["preprocess"])
    vol = VolumeSpec.from_dict(SPEC["volume"], spec.size)
    got, v, how = collect(calib, val, spec, vol, 8, ("CT",))
    image = canonical(read_image(calib / "series"))[0]
    assert image.array.shape == (5, 16, 16)  # 2.5 x 0.49 x 0.49 mm
    prepared = prepare(image, spec, vol)
    assert prepared.shape == (1, 6, 5, 5)  # at 2 x 1.5 x 1.5 mm
    np.testing.assert_array_equal(got.inputs, windows_at(prepared, vol.window, [0]))
    assert got.summary()["inputs"][0]["format"] == "dicom-series"
    assert (
        len(v.images) == 1
        and how["split"]
        == "separate validation folder (1 volume(s) also in the calibration folder)"
    )
    with pytest.raises(InputError) as exc:
        collect(calib, val, spec, vol, 8, ("MR",))
    assert exc.value.code == "INPUT_MODALITY"


# -- options ------------------------------------------------------------------------------


def test_shape_and_volume_options_are_checked(data, tmp_path):
    assert parse_shape("1x1x96x96x96") == (1, 1, 96, 96, 96)
    assert parse_spacing("1.5,1.5,2") == (1.5, 1.5, 2.0)
    assert parse_spacing("none") is None
    base = dict(
        model="monai.networks.nets:UNet",
        model_kwargs=UNET,
        task="segmentation",
        labels=LABELS,
        preprocess=str(data / "spec.json"),
        calibration=data / "calib",
        out=tmp_path / "never",
    )
    for bad in (
        dict(input_shape="1x1x32x32x32x2"),
        dict(input_shape=SHAPE, dynamic="batch,height"),  # a volume's ROI is fixed
        dict(input_shape="1x1x32x32", spacing="1,1,1"),  # 3D options on a 2D model
        dict(input_shape="1x1x32x32", sw_mode="gaussian"),
        dict(input_shape=SHAPE, spacing="1,1"),
        dict(input_shape=SHAPE, max_calibration_windows=0),
    ):
        with pytest.raises(UsageError):
            ExportConfig(**{**base, **bad})
    for bad in (
        dict(input_shape="1x1x16x32x32"),  # not the spec's ROI
        dict(input_shape="1x1x32x32x32", preprocess="demo"),  # a 2D spec
        dict(input_shape=SHAPE, roi_overlap=1.0),  # out of range for the runtime
        dict(input_shape=SHAPE, task="classification"),
    ):
        with pytest.raises(UsageError):
            export_bundle(ExportConfig(**{**base, **bad}))
    mismatch = dict(SPEC, volume={"sliding_window": {"roi_size": [16, 16, 16]}})
    with pytest.raises(UsageError, match="roi_size"):
        export_bundle(ExportConfig(**{**base, "input_shape": SHAPE, "preprocess": mismatch}))


def test_volume_without_spacing_is_refused_when_the_bundle_resamples(data, tmp_path):
    """A .npy volume states no spacing: a resampling bundle cannot calibrate on it
    (the runtime refuses it the same way)."""
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "v.npy", phantom((36, 40, 40), 5).astype(np.float32))
    np.save(folder / "w.npy", phantom((36, 40, 40), 6).astype(np.float32))
    config = ExportConfig(
        model="monai.networks.nets:UNet",
        model_kwargs=UNET,
        input_shape=SHAPE,
        task="segmentation",
        labels=LABELS,
        preprocess=str(data / "spec.json"),
        calibration=folder,
        out=tmp_path / "never",
    )
    with pytest.raises(InputError) as exc:
        export_bundle(config)
    assert exc.value.code == "INPUT_SPACING_UNKNOWN"
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_swin_unetr_exports_and_runs(data, tmp_path):
    """MONAI's SwinUNETR (a transformer encoder; its bottleneck needs a 64^3 ROI): all
    three precisions, then each through the Pipeline. About 3 minutes on 2 CPU cores,
    most of it the dynamo exporter tracing the attention blocks."""
    pytest.importorskip("einops")  # SwinUNETR's dependency, not MONAI's
    spec = {**SPEC, "preprocess": {**SPEC["preprocess"], "size": [64, 64, 64]}}
    kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "feature_size": 12,
              "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}  # fmt: skip
    config = ExportConfig(
        model="monai.networks.nets:SwinUNETR",
        model_kwargs=kwargs,
        input_shape="1x1x64x64x64",
        task="segmentation",
        labels=LABELS,
        preprocess=spec,
        calibration=data / "calib",
        validation=data / "val",
        thresholds=LENIENT,
        out=tmp_path / "swin",
    )
    with pytest.warns(RandomWeightsWarning):
        result = export_bundle(config)
    parity = result.manifest["provenance"]["parity"]["cases"]
    assert max(c["max_abs_over_range"] for c in parity.values()) < 1e-3
    for precision in PRECISIONS:
        with edgemed.Pipeline.from_bundle(
            result.bundle_dir, backend="onnxruntime", precision=precision
        ) as pipe:
            mask = pipe(str(data / "val" / "c.nii.gz")).output.mask
        assert mask.shape == VAL_SHAPE and int(mask.max()) < len(LABELS)
