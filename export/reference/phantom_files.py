"""Phantoms written as real files, so the export reads them the way a user's data is read.

The demo bundle's calibration and validation images go through
:func:`edgemed.read_image` like anyone's: 2D CT DICOM files, a DICOM series folder and
a NIfTI volume, rendered here from :func:`~edgemed.export.reference.phantoms.make_phantom`,
plus pydicom's real ``CT_small.dcm``. Pixel values are integer HU (int16, rescale
slope 1, intercept 0), as a scanner stores them. No PNG: an 8/16-bit raster holds no
HU, so a CT model would see something else than on a device.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgemed.export.reference.phantoms import make_phantom

__all__ = ["write_ct_dicom", "write_demo_sets", "write_nifti_volume"]

_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _uid(rng: np.random.Generator) -> str:
    """A syntactically valid DICOM UID under the 2.25 (UUID-derived) root."""
    return "2.25." + str(int.from_bytes(rng.bytes(15), "big"))


def write_ct_dicom(
    path: Path,
    hu: np.ndarray,
    spacing: Sequence[float],
    rng: np.random.Generator,
    *,
    series_uid: str | None = None,
    z_mm: float = 0.0,
    instance: int = 1,
) -> Path:
    """One axial CT slice as an uncompressed DICOM file (integer HU in int16)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(_CT_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(_uid(rng))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = _CT_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = _uid(rng)
    ds.SeriesInstanceUID = series_uid or _uid(rng)
    ds.Modality = "CT"
    ds.PatientName = "PHANTOM^SYNTHETIC"
    ds.PatientID = "PHANTOM"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [0.0, 0.0, float(z_mm)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
    ds.SliceThickness = 1.0
    ds.Rows, ds.Columns = int(hu.shape[0]), int(hu.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.PixelData = np.clip(np.rint(hu), -1024, 3071).astype("<i2").tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def write_nifti_volume(path: Path, volume_zyx: np.ndarray, spacing_zyx: Sequence[float]) -> Path:
    """A ``(Z, Y, X)`` HU volume as NIfTI-1 (int16), axial slices in DICOM orientation."""
    import nibabel as nib

    sz, sy, sx = (float(s) for s in spacing_zyx)
    # RAS affine of an LPS-aligned grid: x -> patient left, y -> posterior, z -> superior.
    affine = np.diag([-sx, -sy, sz, 1.0])
    data = np.clip(np.rint(volume_zyx), -1024, 3071).astype(np.int16).transpose(2, 1, 0)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), str(path))
    return path


def _ct_small() -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")  # ships inside pydicom: nothing is downloaded
    if path is None:
        raise FileNotFoundError("pydicom's CT_small.dcm test file is not installed")
    return Path(path)


_REGIONS = ("thorax", "abdomen", "pelvis")


def _phantoms(
    rng: np.random.Generator, n: int, sizes: Sequence[int]
) -> list[tuple[np.ndarray, float]]:
    out = []
    for i in range(n):
        size = int(sizes[i % len(sizes)])
        spacing = float(rng.uniform(0.55, 0.95))
        ph = make_phantom(rng, size, spacing, _REGIONS[i % len(_REGIONS)])
        out.append((ph.hu, spacing))
    return out


def _write_set(folder: Path, rng: np.random.Generator, n_files: int, series: int) -> list[str]:
    """``n_files`` 2D DICOM files, a series folder of ``series`` slices and a NIfTI volume of
    ``series`` slices; returns what was written, in words."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (hu, sp) in enumerate(_phantoms(rng, n_files, (512, 384, 256, 320))):
        write_ct_dicom(folder / f"phantom-{i:02d}.dcm", hu, (sp, sp), rng)
    # A series: slices of one size and spacing, evenly spaced along z.
    sdir = folder / "series-01"
    sdir.mkdir()
    uid = _uid(rng)
    spacing = float(rng.uniform(0.6, 0.9))
    for k in range(series):
        hu = make_phantom(rng, 384, spacing, _REGIONS[k % len(_REGIONS)]).hu
        write_ct_dicom(sdir / f"slice-{k:03d}.dcm", hu, (spacing, spacing), rng,
                       series_uid=uid, z_mm=2.5 * k, instance=k + 1)  # fmt: skip
    vol = np.stack([make_phantom(rng, 320, 0.7, "abdomen").hu for _ in range(series)])
    write_nifti_volume(folder / "volume-01.nii.gz", vol, (2.5, 0.7, 0.7))
    shutil.copyfile(_ct_small(), folder / "ct-small.dcm")
    return [
        f"{n_files} synthetic 2D CT phantom slices as DICOM (256-512 px, 0.55-0.95 mm)",
        f"1 DICOM series folder of {series} phantom slices (384 px)",
        f"1 NIfTI volume of {series} phantom slices (320 px, 0.7 mm)",
        "pydicom's real CT_small.dcm (128 px, 0.66 mm)",
    ]


def write_demo_sets(root: Path, seed: int = 20242) -> dict[str, Any]:
    """Write ``root/calibration`` and ``root/validation`` (different phantom streams; the
    one real slice, CT_small.dcm, is in both) and describe them."""
    calib_rng, val_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    return {
        "seed": seed,
        "calibration": _write_set(root / "calibration", calib_rng, n_files=16, series=6),
        "validation": _write_set(root / "validation", val_rng, n_files=10, series=4),
        "note": (
            "phantoms from export/reference/phantoms.py (labels known, no patient data); "
            "CT_small.dcm is the only real CT slice available here, so it is in both sets"
        ),
    }
