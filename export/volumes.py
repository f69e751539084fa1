"""Calibration and validation volumes of a 3D export, seen as the runtime sees them.

Each entry of a folder is one image, as for 2D exports (:mod:`.calibration`: a subfolder
is a DICOM series, a file a NIfTI/NPY volume or a single DICOM image; files that are not
images are skipped and counted; images are recorded by sha256, never by name).

Calibration: each volume is read by the runtime's readers, brought into the canonical
orientation (:func:`edgemed.io.orientation.canonical`) and turned into the model-space
volume by :func:`edgemed.volume.prepare` -- the function every backend's input comes
from -- and the ROI windows are cut at the sliding window's own positions
(:func:`edgemed.sliding_window.window_starts` with its padding), so INT8 calibration sees
exactly the windows a device feeds the model. With more windows than the cap, a seeded
random subset (over all volumes together) is used.

Validation: the images as read; the gates (:func:`edgemed.export.gates.compare_volumes`)
run each one through :class:`edgemed.Pipeline`, which does the rest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgemed.errors import ExportError, UsageError
from edgemed.export.calibration import VALIDATION_EVERY, _Source, _sources, split_by_hash
from edgemed.io import MedicalImage, read_image
from edgemed.io.orientation import canonical
from edgemed.pipeline import check_modality
from edgemed.preprocess import PreprocessSpec
from edgemed.sliding_window import (
    PADDING_MODES,
    SlidingWindow,
    pad_widths,
    scan_interval,
    window_starts,
)
from edgemed.volume import VolumeSpec, count_windows, model_shape, prepare

__all__ = ["VolumeSet", "collect", "window_grid", "windows_at"]


@dataclass
class VolumeSet:
    """Volumes of one role and what was taken from them.

    Attributes:
        inputs: calibration: ``(N, C, D, H, W)`` float32 ROI windows; validation: empty.
        images: validation: the images as read (the gates' Pipeline reorients them);
            calibration: empty.
        records: per image ``{"sha256", "format", "shape", "model_shape", "windows",
            "windows_used"}`` (shapes ``[Z, Y, X]``, canonical).
        skipped: files that are not images (not read).
        subsampled: ``True`` when windows were dropped to stay under the cap.
        seed: the seed of that subset.
    """

    inputs: np.ndarray
    images: list[MedicalImage] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    subsampled: bool = False
    seed: int | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-able description for the bundle (no file names)."""
        return {
            "images": len(self.records),
            "windows": int(sum(r["windows_used"] for r in self.records)),
            "windows_available": int(sum(r["windows"] for r in self.records)),
            "subsampled_randomly": self.subsampled,
            **({"seed": self.seed} if self.subsampled else {}),
            "skipped_non_image_files": self.skipped,
            "inputs": [dict(r) for r in self.records],
        }


def window_grid(
    shape: Sequence[int], window: SlidingWindow
) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The padding and the window start positions (``(n, 3)``, the runtime's order) of a
    model-space volume of spatial ``shape`` (:mod:`edgemed.sliding_window`'s rules)."""
    roi = tuple(window.roi_size)
    pads = pad_widths(shape, roi)
    size = [n + lo + hi for n, (lo, hi) in zip(shape, pads, strict=True)]
    axes = window_starts(size, roi, scan_interval(size, roi, window.overlap))
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(roi))
    return pads, grid


def windows_at(prepared: np.ndarray, window: SlidingWindow, which: Sequence[int]) -> np.ndarray:
    """The windows number ``which`` (in the runtime's order) of a prepared ``(C, Z, Y, X)``
    volume, padded as the sliding window pads it: ``(len(which), C, *roi)`` float32."""
    pads, grid = window_grid(prepared.shape[1:], window)
    if any(lo or hi for lo, hi in pads):
        mode = PADDING_MODES[window.padding_mode]
        kwargs: dict[str, Any] = {"constant_values": window.cval} if mode == "constant" else {}
        prepared = np.pad(prepared, [(0, 0), *pads], mode=mode, **kwargs)  # type: ignore[call-overload]
    roi = tuple(window.roi_size)
    out = np.empty((len(which), prepared.shape[0], *roi), dtype=np.float32)
    for k, i in enumerate(which):
        box = tuple(slice(s, s + r) for s, r in zip(grid[i], roi, strict=True))
        out[k] = prepared[(slice(None),) + box]
    return out


def _read(sources: list[_Source], role: str, modalities: Sequence[str]) -> list[MedicalImage]:
    if not sources:
        raise UsageError(f"no {role} volumes found (DICOM series, NIfTI or NPY)")
    images = [read_image(s.path) for s in sources]
    for src, image in zip(sources, images, strict=True):
        check_modality(image, modalities, src.path)
    return images


def _record(
    src: _Source, image: MedicalImage, grid: tuple[int, ...], windows: int
) -> dict[str, Any]:
    return {
        "sha256": src.sha256,
        "format": image.metadata.get("format", "unknown"),
        "shape": [int(n) for n in image.array.shape[:3]],
        "model_shape": [int(n) for n in grid],
        "windows": int(windows),
        "windows_used": 0,
    }


def _calibration(
    sources: list[_Source],
    spec: PreprocessSpec,
    vol: VolumeSpec,
    max_windows: int,
    modalities: Sequence[str],
    seed: int,
) -> VolumeSet:
    images = [canonical(im)[0] for im in _read(sources, "calibration", modalities)]
    # The model takes float32 (the exported FP32 graph); the spec's arithmetic is the same.
    spec32 = dataclasses.replace(spec, dtype="float32")
    grids = [model_shape(_zyx(im), _spacing(im), vol.spacing) for im in images]
    counts = [count_windows(g, vol.window) for g in grids]
    total = sum(counts)
    chosen = np.arange(total)
    if total > max_windows:
        chosen = np.sort(np.random.default_rng(seed).choice(total, max_windows, replace=False))
    records, parts, start = [], [], 0
    for src, image, grid, n in zip(sources, images, grids, counts, strict=True):
        record = _record(src, image, grid, n)
        which = [int(i) - start for i in chosen if start <= i < start + n]
        start += n
        if which:
            prepared = prepare(image, spec32, vol)
            if tuple(prepared.shape[1:]) != tuple(grid):  # the core's two rules disagree
                raise ExportError(
                    f"edgemed.volume.prepare made a {list(prepared.shape[1:])} volume where "
                    f"model_shape says {list(grid)}",
                    code="EXPORT_FAILED",
                )
            parts.append(windows_at(prepared, vol.window, which))
            record["windows_used"] = len(which)
        records.append(record)
    return VolumeSet(
        np.concatenate(parts),
        records=records,
        subsampled=total > max_windows,
        seed=seed,
    )


def _zyx(image: MedicalImage) -> tuple[int, ...]:
    shape = tuple(int(n) for n in image.array.shape[:3])
    return shape if image.is_volume else (1, *shape[:2])


def _spacing(image: MedicalImage) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in image.spacing)
    return spacing if image.is_volume else (1.0, *spacing[-2:])


def _validation(
    sources: list[_Source], spec: PreprocessSpec, vol: VolumeSpec, modalities: Sequence[str]
) -> VolumeSet:
    images = _read(sources, "validation", modalities)
    records = []
    for src, image in zip(sources, images, strict=True):
        view = canonical(image)[0]
        grid = model_shape(_zyx(view), _spacing(view), vol.spacing)
        record = _record(src, view, grid, count_windows(grid, vol.window))
        record["windows_used"] = record["windows"]  # the gates run every window
        records.append(record)
    empty = np.zeros((0, spec.num_channels, *vol.window.roi_size), dtype=np.float32)
    return VolumeSet(empty, images=images, records=records)


def collect(
    calibration: Path,
    validation: Path | None,
    spec: PreprocessSpec,
    vol: VolumeSpec,
    max_windows: int,
    modalities: Sequence[str] = (),
    seed: int = 0,
) -> tuple[VolumeSet, VolumeSet, dict[str, Any]]:
    """Calibration windows and validation volumes, and how they were chosen.

    Raises:
        InputError: a volume cannot be read, is of a modality outside ``modalities``
            (``INPUT_MODALITY``) or lacks the spacing a resampling bundle needs
            (``INPUT_SPACING_UNKNOWN``).
        UsageError: no volumes, or too few to split.
    """
    calib_src, skipped = _sources(calibration)
    if validation is None:
        calib_src, val_src = split_by_hash(calib_src)
        how = (
            f"no validation folder: the calibration folder's {len(calib_src) + len(val_src)} "
            f"volumes were sorted by sha256 and every {VALIDATION_EVERY}th (at least one) "
            "was held out for validation"
        )
        val_skipped = 0
    else:
        val_src, val_skipped = _sources(validation)
        how = "separate validation folder"
        overlap = {s.sha256 for s in calib_src} & {s.sha256 for s in val_src}
        if overlap:
            how += f" ({len(overlap)} volume(s) also in the calibration folder)"
    calib = _calibration(calib_src, spec, vol, max_windows, modalities, seed)
    calib.skipped = skipped
    val = _validation(val_src, spec, vol, modalities)
    val.skipped = val_skipped
    return calib, val, {"split": how}
