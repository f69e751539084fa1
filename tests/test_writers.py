from __future__ import annotations

import cv2
import nibabel as nib
import numpy as np
import pytest

from edgemed import MedicalImage
from edgemed.errors import OutputError
from edgemed.fsutil import write_json
from edgemed.io.writers import (
    PALETTE,
    nifti_affine,
    render_overlay,
    write_mask_nifti,
    write_overlay_png,
)


def test_mask_nifti_round_trip_keeps_values_and_geometry(tmp_path):
    mask = np.zeros((3, 4, 5), np.uint8)
    mask[1, 2, 3] = 4
    direction = np.eye(3)
    img = MedicalImage(
        np.zeros((3, 4, 5), np.float32),
        spacing=(2.5, 0.7, 0.6),
        origin=(-10.0, 20.0, 30.0),
        direction=direction,
        modality="CT",
    )
    path = write_mask_nifti(tmp_path / "mask.nii.gz", mask, img)
    nii = nib.load(path)
    data = np.asarray(nii.dataobj)
    assert data.shape == (5, 4, 3) and data[3, 2, 1] == 4 and data.sum() == 4
    # voxel (x=3, y=2, z=1) in RAS: LPS origin + index*spacing, then x,y negated
    ras = nii.affine @ np.array([3, 2, 1, 1.0])
    lps = np.array([-10 + 3 * 0.6, 20 + 2 * 0.7, 30 + 1 * 2.5])
    np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1])
    assert nii.header.get_zooms() == pytest.approx((0.6, 0.7, 2.5))


def test_2d_mask_nifti_uses_slice_thickness():
    img = MedicalImage(
        np.zeros((4, 5), np.float32), spacing=(0.5, 0.4), metadata={"slice_thickness": 5.0}
    )
    assert np.diag(nifti_affine(img))[:3] == pytest.approx([-0.4, -0.5, 5.0])


def test_overlay_colours_mask_and_has_legend(tmp_path):
    arr = np.tile(np.linspace(-1000, 1000, 64, dtype=np.float32), (64, 1))
    img = MedicalImage(
        arr, spacing=(1.0, 1.0), modality="CT", metadata={"window_center": 0, "window_width": 2000}
    )
    mask = np.zeros((64, 64), np.uint8)
    mask[10:20, 10:20] = 1
    rgb = render_overlay(img, mask, ["bg", "lung"], stats={"lung": {"area_mm2": 100.0}})
    assert rgb.shape[0] == 512 and rgb.shape[1] == 2 * 512 + 300  # x8: image, overlay, legend
    ov = rgb[:, 512:1024]
    inside, outside = ov[15 * 8, 15 * 8].astype(int), ov[40 * 8, 15 * 8].astype(int)
    assert (rgb[15 * 8, 15 * 8] == rgb[40 * 8, 15 * 8]).all()  # left panel: the plain image
    assert inside[2] > inside[0]  # blue tint from PALETTE[1]
    assert abs(outside[0] - outside[2]) <= 1  # untouched gray
    legend = rgb[40:60, 1024 + 10 : 1024 + 28]  # the swatch of label 1
    assert (legend.reshape(-1, 3) == PALETTE[1]).all(axis=1).mean() > 0.8
    path = write_overlay_png(tmp_path / "o.png", img, mask, ["bg", "lung"])
    assert cv2.imread(str(path)).shape == (512, 1324, 3)


def test_writes_are_atomic_and_errors_typed(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError) as e:
        write_json(blocker / "sub" / "result.json", {"a": 1})  # parent is a file
    assert e.value.code == "OUTPUT_WRITE_FAILED"
    write_json(tmp_path / "r.json", {"a": 1})
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
