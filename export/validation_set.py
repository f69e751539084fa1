"""The validation set a bundle ships for the device (``edgemed check``).

The export's gate compares each variant with FP32 on the validation images at export
time; a device runs other kernels (a TensorRT engine built there, OpenVINO, bf16), so the
same gate has to be run again there. The bundle carries what it needs: a few of the
validation images themselves (single files, smallest first, within a byte budget, so the
bundle stays small) and the gate limits, in ``bundle.json``'s ``validation`` block; the
files are hashed like artifacts by :func:`edgemed.bundle.write_manifest`.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgemed.io.read import detect_format

__all__ = ["FOLDER", "MAX_BYTES", "MAX_FILES", "ship"]

#: Where the images go inside the bundle.
FOLDER = "validation"
#: Default budget: the demo's set (CT_small and three 256 px phantom slices) is ~0.45 MB.
MAX_BYTES = 1 << 20
MAX_FILES = 8


#: Suffixes kept on shipped files (a reader of the bundle sees what a file is).
_SUFFIXES = (".nii.gz", ".dcm", ".nii", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in _SUFFIXES if name.endswith(s)), "")


def ship(
    source: Path,
    bundle_dir: Path,
    thresholds: Mapping[str, float],
    *,
    max_bytes: int = MAX_BYTES,
    max_files: int = MAX_FILES,
) -> dict[str, Any] | None:
    """Copy validation images from ``source`` into ``bundle_dir/validation`` and return
    the manifest's ``validation`` block (hashes are filled by ``write_manifest``).

    Single image files only (series folders would need a folder hash), smallest first
    (name order on ties) until ``max_files`` or ``max_bytes``; ``None`` when none fits.
    Shipped as ``validation/NN<suffix>``: file names may carry patient data and never
    enter a bundle (the export records images by sha256 only).
    """
    candidates = sorted(
        (p.stat().st_size, p.name, p)
        for p in source.iterdir()
        if p.is_file() and not p.name.startswith(".") and detect_format(p) is not None
    )
    chosen: list[Path] = []
    total = 0
    for size, _, path in candidates:
        if len(chosen) >= max_files or total + size > max_bytes:
            break
        chosen.append(path)
        total += size
    if not chosen:
        return None
    target = bundle_dir / FOLDER
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    files = []
    for i, path in enumerate(chosen, 1):
        name = f"{i:02d}{_suffix(path)}"
        shutil.copyfile(path, target / name)
        files.append({"path": f"{FOLDER}/{name}"})
    return {"thresholds": {k: float(v) for k, v in thresholds.items()}, "files": files}
