"""One orientation for the model, whatever order the file stored (edgemed.io.orientation).

The same CT as DICOM, as LPS NIfTI and as RAS NIfTI (written here with nibabel from the
DICOM's own tags, independently of edgemed's geometry code) must give the same mask in
world space, and each mask.nii.gz must overlay its own input voxel for voxel. The demo
model is a real 2D U-Net, not symmetric: a slice fed upside down gives another mask
(about 1.7 % of CT_small's pixels), so these tests fail without the reorientation.
"""

from __future__ import annotations

import itertools
import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform
from pydicom.data import get_testdata_file

import edgemed
from edgemed import MedicalImage, Pipeline
from edgemed.io import read_image
from edgemed.io.orientation import CANONICAL, canonical, orientation
from edgemed.render import summary, write_result
from tests.io.conftest import CORPUS

SERIES = CORPUS / "dicomdirtests/98892001/CT5N"  # a real 5-slice axial CT series


@pytest.fixture(scope="module")
def demo():
    with Pipeline.from_bundle(edgemed.demo_bundle(), "onnxruntime", threads=1) as pipe:
        yield pipe


def _hu(ds) -> np.ndarray:
    return (ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).astype(np.float32)


def _lps_nifti(datasets: list, step: float) -> nib.Nifti1Image:
    """A NIfTI whose voxel axes are LPS (i along DICOM columns, j along rows, k along the
    normal), built from the DICOM tags by hand: the independent reference."""
    first = datasets[0]
    iop = np.array([float(v) for v in first.ImageOrientationPatient])
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    dy, dx = (float(v) for v in first.PixelSpacing)
    lps = np.eye(4)
    lps[:3, :3] = np.column_stack([row_dir * dx, col_dir * dy, normal * step])
    lps[:3, 3] = [float(v) for v in first.ImagePositionPatient]
    data = np.stack([_hu(ds).T for ds in datasets], axis=-1)  # (i, j, k)
    return nib.Nifti1Image(data, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps)


def _world(path) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI file's data and affine in nibabel's closest canonical (RAS) voxel order:
    two files with equal results here hold the same values at the same world points."""
    img = nib.as_closest_canonical(nib.load(path))
    return np.asarray(img.dataobj), img.affine


def _run_and_write(pipe, source, out):
    result = pipe(str(source))
    write_result(result, out)
    return result, json.loads((out / "result.json").read_text())


def test_the_dicom_reader_yields_the_canonical_orientation():
    # What edgemed's DICOM reader gives for a standard axial image (IOP 1\0\0\0\1\0):
    # columns towards the patient's left, rows towards posterior, slices (a series
    # sorted along the normal) towards superior: that order is canonical, untouched.
    ct = read_image(get_testdata_file("CT_small.dcm"))
    np.testing.assert_allclose(ct.direction, np.eye(3))  # x -> L, y -> P, normal -> S
    how = orientation(ct)
    assert (how.input_axes, how.reoriented, how.oblique) == ("LPS", False, False)
    assert canonical(ct)[0] is ct  # nothing copied
    series = read_image(SERIES)
    how = orientation(series)
    assert (CANONICAL, how.input_axes, how.reoriented) == ("LPS", "LPS", False)
    z = [float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in SERIES.iterdir()]
    assert series.origin[2] == pytest.approx(min(z))  # slice 0 is the lowest


def test_ct_as_dicom_lps_and_ras_nifti_gives_one_mask_in_world_space(demo, tmp_path):
    ct = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(ct)
    lps = _lps_nifti([ds], float(ds.SliceThickness))
    ras = nib.as_closest_canonical(lps)
    assert "".join(nib.aff2axcodes(ras.affine)) == "RAS"
    nib.save(lps, tmp_path / "lps.nii.gz")
    nib.save(ras, tmp_path / "ras.nii.gz")

    results = {}
    for name, source in (("dicom", ct), ("lps", tmp_path / "lps.nii.gz"),
                         ("ras", tmp_path / "ras.nii.gz")):  # fmt: skip
        results[name] = _run_and_write(demo, source, tmp_path / name)
    # The model saw one picture: the masks are the same in world space...
    mask, affine = _world(tmp_path / "dicom" / "mask.nii.gz")
    for name in ("lps", "ras"):
        other, other_affine = _world(tmp_path / name / "mask.nii.gz")
        np.testing.assert_array_equal(other, mask)
        np.testing.assert_allclose(other_affine, affine, atol=1e-4)
    # ... and each mask is in its input's own voxel grid, with the input's affine.
    for name, img in (("lps", lps), ("ras", ras)):
        written = nib.load(tmp_path / name / "mask.nii.gz")
        assert written.shape == img.shape
        np.testing.assert_allclose(written.affine, img.affine, atol=1e-4)
    ras_result, ras_doc = results["ras"]
    np.testing.assert_array_equal(ras_result.mask, results["dicom"][0].mask[::-1, ::-1])
    assert ras_doc["input"]["orientation"] == {
        "canonical": "LPS",
        "input_axes": "RAS",
        "reoriented": True,
        "oblique": False,
    }
    assert results["lps"][1]["input"]["orientation"]["reoriented"] is False
    # The overlay shows the canonical picture whatever the file order.
    lps_png = (tmp_path / "lps" / "overlay.png").read_bytes()
    assert (tmp_path / "ras" / "overlay.png").read_bytes() == lps_png
    assert "RAS -> LPS" in summary(ras_result, [], "t")


@pytest.mark.parametrize("codes", ["RAS", "ASR", "PIL"])
def test_a_real_series_as_nifti_in_any_axis_order_gives_the_series_mask(demo, tmp_path, codes):
    datasets = sorted(
        (pydicom.dcmread(p) for p in SERIES.iterdir()),
        key=lambda ds: float(ds.ImagePositionPatient[2]),
    )
    step = float(datasets[1].ImagePositionPatient[2]) - float(datasets[0].ImagePositionPatient[2])
    lps = _lps_nifti(datasets, step)
    img = lps.as_reoriented(ornt_transform(io_orientation(lps.affine), axcodes2ornt(codes)))
    assert "".join(nib.aff2axcodes(img.affine)) == codes
    nib.save(img, tmp_path / "vol.nii.gz")

    series, doc = _run_and_write(demo, SERIES, tmp_path / "dicom")
    volume, vol_doc = _run_and_write(demo, tmp_path / "vol.nii.gz", tmp_path / "nifti")
    assert doc["input"]["orientation"]["reoriented"] is False
    assert vol_doc["input"]["orientation"]["input_axes"] == codes
    assert vol_doc["input"]["orientation"]["reoriented"] is True
    assert volume.mask.shape == img.shape[::-1]  # the file's own (k, j, i) grid
    mask, affine = _world(tmp_path / "dicom" / "mask.nii.gz")
    other, other_affine = _world(tmp_path / "nifti" / "mask.nii.gz")
    np.testing.assert_array_equal(other, mask)
    np.testing.assert_allclose(other_affine, affine, atol=1e-3)
    np.testing.assert_allclose(nib.load(tmp_path / "nifti" / "mask.nii.gz").affine, img.affine,
                               atol=1e-3)  # fmt: skip
    # Same counts, same physical volume (the voxel size does not depend on the order).
    for label, entry in doc["outputs"]["labels"].items():
        assert vol_doc["outputs"]["labels"][label]["pixels"] == entry["pixels"]
        assert vol_doc["outputs"]["labels"][label]["volume_mm3"] == pytest.approx(
            entry["volume_mm3"], rel=1e-5
        )


def test_an_oblique_image_goes_to_the_closest_axes_without_resampling(demo, tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ras = nib.as_closest_canonical(_lps_nifti([ds], 5.0))
    angle = np.deg2rad(12.0)  # about the S axis: still closest to R, A, S
    turn = np.eye(4)
    turn[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    nib.save(nib.Nifti1Image(np.asarray(ras.dataobj), turn @ ras.affine), tmp_path / "o.nii.gz")
    image = read_image(tmp_path / "o.nii.gz")
    view, how = canonical(image)
    assert (how.input_axes, how.reoriented, how.oblique) == ("RAS", True, True)
    np.testing.assert_array_equal(view.array, image.array[::-1, ::-1])  # flips, no resampling
    result = demo(str(tmp_path / "o.nii.gz"))
    straight = demo(get_testdata_file("CT_small.dcm"))
    np.testing.assert_array_equal(result.mask, straight.mask[::-1, ::-1])
    facts = result.to_dict()["input"]["orientation"]
    assert facts["oblique"] is True and facts["reoriented"] is True
    assert "oblique" in summary(result, [], "t")


@pytest.mark.parametrize(
    ("iop", "axes", "flip"),
    [
        ([0, 1, 0, 0, 0, -1], "PIR", (1, 1)),  # standard sagittal: as stored
        ([1, 0, 0, 0, 0, -1], "LIP", (1, 1)),  # standard coronal: as stored
        ([0, -1, 0, 0, 0, 1], "ASR", (-1, -1)),  # sagittal stored head down, face right
        ([1, 0, 0, 0, 0, 1], "LSA", (-1, 1)),  # coronal stored head down
        ([-1, 0, 0, 0, 1, 0], "RPI", (1, -1)),  # axial stored mirrored
    ],
)
def test_a_2d_image_keeps_its_plane_in_dicoms_standard_view(demo, iop, axes, flip):
    # A single slice keeps its plane and is laid out as DICOM's standard views store
    # it: X towards L (P for sagittal), Y towards P (axial) or I (head at the top).
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.ImageOrientationPatient = iop
    image = read_image(ds_bytes(ds))
    view, how = canonical(image)
    rows, cols = flip
    assert (how.input_axes, how.reoriented) == (axes, flip != (1, 1))
    np.testing.assert_array_equal(view.array, image.array[::rows, ::cols])
    result = demo(ds_bytes(ds))
    as_seen = demo(MedicalImage(image.array[::rows, ::cols].copy(), spacing=image.spacing))
    np.testing.assert_array_equal(result.mask, as_seen.mask[::rows, ::cols])


def test_colour_and_channels_follow_the_spatial_axes():
    rgb = np.arange(2 * 3 * 4 * 3, dtype=np.float32).reshape(2, 3, 4, 3)
    image = MedicalImage(rgb, (2.0, 1.0, 1.0), photometric="RGB",
                         origin=(0.0, 0.0, 0.0), direction=np.diag([-1.0, 1.0, -1.0]))  # fmt: skip
    view, how = canonical(image)
    np.testing.assert_array_equal(view.array, rgb[::-1, :, ::-1])
    np.testing.assert_array_equal(how.to_input(view.array), rgb)
    # The same voxels in patient space: the new first voxel is the input's voxel
    # (x, y, z) = (3, 0, 1), at origin + direction @ (3 * dx, 0, 1 * dz).
    assert view.origin == pytest.approx((-3.0, 0.0, -2.0))
    np.testing.assert_allclose(view.direction, np.eye(3))


def _world_of(image: MedicalImage, zyx) -> np.ndarray:
    z, y, x = zyx
    dz, dy, dx = image.spacing
    return np.asarray(image.origin) + image.direction @ np.array([x * dx, y * dy, z * dz])


@pytest.mark.parametrize("seed", range(48))
def test_every_axis_order_comes_back_whole_and_in_place(seed):
    # All 48 axis orders (6 permutations x 8 flips): the canonical image holds the same
    # values at the same patient positions, its axes are L, P, S, and the way back is
    # exact.
    rng = np.random.default_rng(seed)
    perm, signs = list(itertools.permutations(range(3)))[seed % 6], seed // 6
    direction = np.zeros((3, 3))
    for col, axis in enumerate(perm):
        direction[axis, col] = -1.0 if signs >> col & 1 else 1.0
    array = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    image = MedicalImage(array, (2.0, 0.5, 0.75), origin=tuple(rng.normal(0, 50, 3)),
                         direction=direction)  # fmt: skip
    view, how = canonical(image)
    np.testing.assert_allclose(view.direction, np.eye(3), atol=1e-12)
    np.testing.assert_array_equal(how.to_input(view.array), array)
    for _ in range(5):
        where = tuple(int(rng.integers(n)) for n in view.array.shape)
        source = np.argwhere(array == view.array[where])[0]
        np.testing.assert_allclose(_world_of(view, where), _world_of(image, source), atol=1e-9)


def test_images_without_geometry_are_taken_as_they_are(demo):
    arr = np.random.default_rng(0).normal(0, 300, (20, 30)).astype(np.float32)
    how = orientation(MedicalImage(arr, (1.0, 1.0)))
    assert (how.input_axes, how.reoriented) == (None, False)
    facts = demo(arr).to_dict()["input"]["orientation"]
    assert facts == {"canonical": "LPS", "input_axes": None, "reoriented": False, "oblique": False}


def ds_bytes(ds) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()
