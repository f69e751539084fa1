"""Calibration and validation images: read and preprocessed by the runtime's own code.

Each entry of a folder (sorted by name; hidden entries skipped) is one image: a
subfolder is one DICOM series, a file is whatever :func:`edgemed.read_image` reads
(DICOM, NIfTI, PNG/JPEG/TIFF, NPY). Files ``read_image`` does not recognise as images
(a README, a DICOMDIR without pixels is still an error) are skipped and counted. Every
slice of a volume is a 2D sample. Samples go through
:func:`edgemed.preprocess.preprocess` with the bundle's spec -- the function the
runtime calls, not a copy -- so calibration sees exactly what a device will see.

Identification: an image is recorded by the sha256 of its bytes (a series: of the
sorted ``name:sha256`` lines of its files), never by its file name, since names of
medical images often carry patient names or IDs and the bundle travels to devices.
Hash a file to find it in the report.

Without a validation folder the images are split by :func:`split_by_hash`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgemed.errors import UsageError
from edgemed.fsutil import sha256_file
from edgemed.io import read_image
from edgemed.io.orientation import canonical
from edgemed.io.read import detect_format
from edgemed.pipeline import check_modality
from edgemed.preprocess import Placement, PreprocessSpec, preprocess

__all__ = ["ImageSet", "load_images", "split_by_hash", "VALIDATION_EVERY"]

#: Without ``--validation``, every VALIDATION_EVERY-th image (in sha256 order) validates.
VALIDATION_EVERY = 5


@dataclass
class _Source:
    path: Path
    sha256: str


@dataclass
class ImageSet:
    """Preprocessed 2D samples and where they came from.

    Attributes:
        inputs: ``(N, C, H, W)`` float32 model inputs.
        placements: per sample, where the source slice landed in the model input.
        images: per image ``{"sha256", "format", "slices", "slices_used"}``.
        skipped: files that are not images (not read).
        subsampled: ``True`` when slices were dropped to stay under the cap.
    """

    inputs: np.ndarray
    placements: list[Placement]
    images: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    subsampled: bool = False

    def summary(self) -> dict[str, Any]:
        """JSON-able description for the bundle (no file names)."""
        return {
            "images": len(self.images),
            "slices": int(len(self.inputs)),
            "slices_available": sum(i["slices"] for i in self.images),
            "subsampled_evenly": self.subsampled,
            "skipped_non_image_files": self.skipped,
            "inputs": [dict(i) for i in self.images],
        }


def _series_sha256(folder: Path) -> str:
    lines = sorted(
        f"{p.relative_to(folder).as_posix()}:{sha256_file(p)}"
        for p in folder.rglob("*")
        if p.is_file()
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _sources(folder: Path) -> tuple[list[_Source], int]:
    """The images in ``folder`` (by name) and the number of non-image files skipped."""
    out, skipped = [], 0
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            out.append(_Source(entry, _series_sha256(entry)))
        elif detect_format(entry) is None:
            skipped += 1
        else:
            out.append(_Source(entry, sha256_file(entry)))
    return out, skipped


def split_by_hash(sources: list[Any], every: int = VALIDATION_EVERY) -> tuple[list[Any], list[Any]]:
    """Deterministic split: sorted by sha256, every ``every``-th item validates.

    Sorting by content hash makes the split independent of file names and listing
    order. With fewer than ``every`` items the last one (in hash order) validates.

    Raises:
        UsageError: fewer than two items (nothing left to calibrate on).
    """
    ordered = sorted(sources, key=lambda s: s.sha256)
    if len(ordered) < 2:
        raise UsageError(
            "splitting calibration images into calibration and validation needs at least "
            "two images; add images or pass --validation"
        )
    val_idx = {i for i in range(len(ordered)) if i % every == every - 1} or {len(ordered) - 1}
    calib = [s for i, s in enumerate(ordered) if i not in val_idx]
    val = [s for i, s in enumerate(ordered) if i in val_idx]
    return calib, val


def _even_subset(total: int, cap: int) -> np.ndarray:
    """Indices of at most ``cap`` of ``total`` items, evenly spread, first and last kept."""
    if total <= cap:
        return np.arange(total)
    return np.unique(np.round(np.linspace(0, total - 1, cap)).astype(np.int64))


def load_images(
    sources: list[_Source],
    spec: PreprocessSpec,
    max_slices: int,
    *,
    role: str,
    modalities: Sequence[str] = (),
) -> ImageSet:
    """Read and preprocess ``sources``; at most ``max_slices`` slices, evenly chosen.

    Raises:
        InputError: an image cannot be read (its file named; it is not skipped: a
            calibration set that silently shrinks would change the model), or is a
            DICOM image of a modality outside ``modalities`` (``INPUT_MODALITY``: the
            runtime would refuse it, so it must not shape the model either).
        UsageError: no images at all.
    """
    if not sources:
        raise UsageError(f"no {role} images found (DICOM, NIfTI, PNG/JPEG/TIFF or NPY)")
    # The runtime's own orientation: calibration sees the slices the model will see.
    images = [canonical(read_image(s.path))[0] for s in sources]
    for src, image in zip(sources, images, strict=True):
        check_modality(image, modalities, src.path)
    counts = [im.num_slices for im in images]
    keep = set(_even_subset(sum(counts), max_slices).tolist())
    # The model takes float32 (the exported FP32 graph); the spec's arithmetic is
    # unchanged, as in the runtime's Pipeline.
    spec32 = dataclasses.replace(spec, dtype="float32")
    batches, placements, records = [], [], []
    start = 0
    for src, image, n in zip(sources, images, counts, strict=True):
        chosen = [k for k in range(n) if start + k in keep]
        start += n
        if chosen:
            slices = image.slices()
            x, places = preprocess([slices[k] for k in chosen], spec32)
            batches.append(x.copy())
            placements += places
        records.append(
            {
                "sha256": src.sha256,
                "format": image.metadata.get("format", "unknown"),
                "slices": n,
                "slices_used": len(chosen),
            }
        )
    return ImageSet(
        np.concatenate(batches), placements, records, subsampled=len(keep) < sum(counts)
    )


def collect(
    calibration: Path,
    validation: Path | None,
    spec: PreprocessSpec,
    max_slices: int,
    modalities: Sequence[str] = (),
) -> tuple[ImageSet, ImageSet, dict[str, Any]]:
    """Calibration and validation sets, and how they were chosen (for the report)."""
    calib_src, skipped = _sources(calibration)
    if validation is None:
        calib_src, val_src = split_by_hash(calib_src)
        how = (
            f"no validation folder: the calibration folder's {len(calib_src) + len(val_src)} "
            f"images were sorted by sha256 and every {VALIDATION_EVERY}th (at least one) "
            "was held out for validation"
        )
        val_skipped = 0
    else:
        val_src, val_skipped = _sources(validation)
        how = "separate validation folder"
        overlap = {s.sha256 for s in calib_src} & {s.sha256 for s in val_src}
        if overlap:
            how += f" ({len(overlap)} image(s) also in the calibration folder)"
    calib = load_images(calib_src, spec, max_slices, role="calibration", modalities=modalities)
    calib.skipped = skipped
    val = load_images(val_src, spec, max_slices, role="validation", modalities=modalities)
    val.skipped = val_skipped
    return calib, val, {"split": how}
