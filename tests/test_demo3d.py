"""The 3D demo: its bundle on pydicom's real CT series CT5N, ``edgemed demo --3d`` on the
seeded phantom (mask, three orthogonal views, volumes in mm3) and with ``--input``, and
the orthogonal overlay views themselves."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgemed.bundle import Bundle
from edgemed.cli.demo3d import DEMO3D_SEED, demo3d_bundle, demo_phantom
from edgemed.export.reference.check_real import hu_rule_labels
from edgemed.io import MedicalImage, read_image
from edgemed.io.writers import PALETTE, render_overlay
from edgemed.pipeline import Pipeline
from edgemed.settings import Options
from tests.cli_run import cli

LABELS = ["background", "lung", "fat", "soft_tissue", "bone"]


def _ct5n() -> Path:
    from pydicom.data import get_testdata_file

    path = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests/98892001/CT5N"
    if not path.is_dir():
        pytest.skip("pydicom's dicomdirtests/98892001/CT5N is not installed")
    return path


def _dice(a: np.ndarray, b: np.ndarray, k: int) -> float:
    x, y = a == k, b == k
    return 2 * float((x & y).sum()) / max(1, int(x.sum() + y.sum()))


def test_the_bundle_is_a_small_3d_bundle() -> None:
    bundle = Bundle.load(demo3d_bundle())
    assert bundle.volume is not None and list(bundle.labels) == LABELS
    assert list(bundle.preprocess.size) == list(bundle.volume.window.roi_size)
    assert bundle.volume.spacing is not None
    size = sum(p.stat().st_size for p in demo3d_bundle().rglob("*") if p.is_file())
    assert size < 8e6  # a few MB, shipped in the wheel


def test_ct5n_real_series_gets_body_tissue_labels() -> None:
    """pydicom's 5-slice CT series: 16 x 16 pixels of 0.49 mm (an 8 x 8 mm field of view
    of muscle, some fat, one darker edge) is 4 x 4 voxels at the model's 2 mm, padded
    into a 64 x 64 window: far less context than the model was made for. The mask has the
    series' shape and grid; most of it is soft tissue, as plain HU thresholds say; no
    bone (all below 100 HU). Measured: 42 % voxel agreement with the thresholds, the
    darker edge called soft tissue (README: "3D demo")."""
    image = read_image(_ct5n())
    assert image.array.shape == (5, 16, 16)
    options = Options.resolve(backend="onnxruntime", precision="fp32", threads=1)
    with Pipeline.from_bundle(demo3d_bundle(), options=options) as pipe:
        result = pipe(image)
    mask = result.mask
    assert mask.shape == image.array.shape and mask.dtype == np.uint8
    stats = result.stats
    assert stats["soft_tissue"]["pixels"] > 0.5 * mask.size
    assert stats["soft_tissue"]["volume_mm3"] > 0
    assert stats["bone"]["pixels"] == 0
    rules = np.stack([hu_rule_labels(s, 0.0) for s in image.array])
    assert _dice(mask, rules, LABELS.index("soft_tissue")) > 0.5
    assert float((mask == rules).mean()) > 0.35
    facts = result.to_dict()["outputs"]["volume"]
    assert facts["windows"] == 1 and facts["roi_size"] == [32, 64, 64]


def test_demo_3d_writes_mask_views_and_volumes(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    run = cli("demo", "--3d", "--out", str(out), timeout=600)
    assert run.returncode == 0, run.stderr
    ph = demo_phantom(DEMO3D_SEED)  # the same seeded volume the demo wrote and read
    import nibabel as nib

    mask = np.asarray(nib.load(str(out / "mask.nii.gz")).dataobj)
    # In the input file's own voxel order, (x, y, z): the phantom's (Z, Y, X) transposed.
    mask = mask.transpose(2, 1, 0)
    assert mask.shape == ph.labels.shape
    for k in range(1, 5):  # every tissue is found where the phantom has it
        assert _dice(mask, ph.labels, k) > 0.75, LABELS[k]
    result = json.loads((out / "result.json").read_text())
    stats = result["outputs"]["labels"]
    voxel = float(np.prod(ph.spacing))
    for k, name in enumerate(LABELS[1:], 1):
        true_mm3 = float((ph.labels == k).sum()) * voxel
        assert stats[name]["volume_mm3"] > 0
        assert abs(stats[name]["volume_mm3"] - true_mm3) < 0.3 * true_mm3, name
        assert f"{name}" in run.stdout and "mm3" in run.stdout
    z, y, x = ph.labels.shape
    dz, dy, dx = ph.spacing
    pngs = {n: cv2.imread(str(out / f"{n}.png")) for n in ("axial", "coronal", "sagittal")}
    assert all(p is not None and p.ndim == 3 for p in pngs.values())
    assert cv2.imread(str(out / "overlay.png")) is not None
    # Two panels (image, overlay) beside the 300-pixel legend, at the true aspect ratio.
    panel = (pngs["axial"].shape[1] - 300) // 2
    assert abs(pngs["axial"].shape[0] / panel - (y * dy) / (x * dx)) < 0.02
    for name, width_mm in (("coronal", x * dx), ("sagittal", y * dy)):
        panel = (pngs[name].shape[1] - 300) // 2
        assert abs(pngs[name].shape[0] / panel - (z * dz) / width_mm) < 0.02, name


def test_demo_3d_on_an_input_series(tmp_path: Path) -> None:
    out = tmp_path / "ct5n"
    run = cli("demo", "--3d", "--input", str(_ct5n()), "--out", str(out), timeout=300)
    assert run.returncode == 0, run.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["result.json", "mask.nii.gz", "overlay.png", "axial.png", "coronal.png", "sagittal.png"]
    )
    import nibabel as nib

    assert nib.load(str(out / "mask.nii.gz")).shape == (16, 16, 5)
    assert "fat" in run.stdout and "mm3" in run.stdout


def test_input_without_3d_is_a_usage_error(tmp_path: Path) -> None:
    run = cli("demo", "--input", str(tmp_path), "--out", str(tmp_path / "o"))
    assert run.returncode == 2 and "--3d" in run.stderr


def test_orthogonal_views_orientation_and_aspect() -> None:
    """A volume with one label at the top slice (superior), one at the front (anterior)
    and one at the patient's right: coronal and sagittal views put the head up, the
    sagittal view the front on the left, the coronal view the patient's right on the
    left, stretched to square millimetres, in the overlay colours."""
    z, y, x = 6, 20, 30
    arr = np.zeros((z, y, x), np.float32)
    mask = np.zeros((z, y, x), np.uint8)
    mask[-1] = 1  # most superior slice
    mask[:-1, 0, :] = 2  # anterior row
    mask[:-1, 1:, 0] = 3  # patient's right column (x towards the left)
    image = MedicalImage(arr, (4.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    coronal = render_overlay(image, mask, LABELS, min_size=1, alpha=1.0, plane="coronal")
    sagittal = render_overlay(image, mask, LABELS, min_size=1, alpha=1.0, plane="sagittal")
    # Coronal: rows z (4 mm) over columns x (2 mm): 6 slices -> 12 rows of 2 mm.
    assert coronal.shape[:2] == (12, 2 * 30 + 300)
    over = coronal[:, 30:60]
    assert tuple(over[0, 10]) == PALETTE[1]  # the superior slice on top
    assert tuple(over[-1, 0]) == PALETTE[3]  # the patient's right on the left
    # Sagittal: rows z (4 mm) over columns y (1 mm): 6 slices -> 24 rows.
    assert sagittal.shape[:2] == (24, 2 * 20 + 300)
    over = sagittal[:, 20:40]
    assert tuple(over[0, 10]) == PALETTE[1]
    assert tuple(over[-1, 0]) == PALETTE[2]  # anterior on the left
    with pytest.raises(Exception, match="plane"):
        render_overlay(MedicalImage(arr[0], (1.0, 2.0)), mask[0], LABELS, plane="coronal")
