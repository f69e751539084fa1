"""Writers for results: ``result.json``, ``mask.nii.gz``, ``overlay.png``.

The target is a path or a binary file object. A path is written to a temporary name in
the target directory and renamed into place, so a crash or a full disk never leaves a
file that looks complete. A file object (an HTTP response body, a ``BytesIO``) is handed
the encoded bytes, written until it has taken them all; nothing touches the disk.
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, overload

import cv2
import numpy as np

from edgemed.errors import OutputError, UsageError
from edgemed.fsutil import atomic_write
from edgemed.io.image import MedicalImage

__all__ = [
    "PALETTE",
    "PLANES",
    "nifti_affine",
    "render_overlay",
    "size_text",
    "write_mask_nifti",
    "write_overlay_png",
]

#: RGB colour per label value (0 = background, drawn transparent).
PALETTE = [
    (0, 0, 0),
    (64, 160, 255),  # 1 blue
    (250, 210, 50),  # 2 yellow
    (230, 60, 60),  # 3 red
    (90, 230, 110),  # 4 green
    (200, 90, 230),  # 5 purple
    (255, 140, 0),  # 6 orange
    (0, 220, 220),  # 7 cyan
    (255, 105, 180),  # 8 pink
]


#: Views of a volume :func:`render_overlay` draws through its centre.
PLANES = ("axial", "coronal", "sagittal")


def _plane(
    pixels: np.ndarray, masks: np.ndarray, spacing: Sequence[float], plane: str
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The centre ``plane`` of a canonical ``(Z, Y, X)`` volume and its mask, laid out as
    DICOM's standard views (axial: anterior up; coronal and sagittal: head up, patient's
    right / anterior on the left; those two stretched to square millimetres, as slices
    are often thicker than pixels are wide); with the index of the plane and how many
    there are."""
    dz, dy, dx = (float(s) for s in spacing)
    if plane == "axial":
        k, n = pixels.shape[0] // 2, pixels.shape[0]
        img, m, rows, cols = pixels[k], masks[k], dy, dx
    elif plane == "coronal":
        k, n = pixels.shape[1] // 2, pixels.shape[1]
        img, m, rows, cols = pixels[::-1, k], masks[::-1, k], dz, dx
    else:
        k, n = pixels.shape[2] // 2, pixels.shape[2]
        img, m, rows, cols = pixels[::-1, :, k], masks[::-1, :, k], dz, dy
    img, m = np.ascontiguousarray(img), np.ascontiguousarray(m)
    if plane != "axial" and rows > 0 and cols > 0 and abs(rows / cols - 1) > 1e-3:
        size = (img.shape[1], max(1, round(img.shape[0] * rows / cols)))
        img = cv2.resize(img.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
        m = cv2.resize(m, size, interpolation=cv2.INTER_NEAREST)
    return img, m, k, n


def _canonical_spacing(image: MedicalImage, transform: np.ndarray | None) -> list[float]:
    """A volume's ``(dz, dy, dx)`` in canonical axis order (axes may have been swapped)."""
    xyz = [float(v) for v in image.spacing[::-1]]
    if transform is not None:
        out = list(xyz)
        for i, (axis, _) in enumerate(transform):
            out[int(axis)] = xyz[i]
        xyz = out
    return xyz[::-1]


def nifti_affine(image: MedicalImage) -> np.ndarray:
    """The NIfTI (RAS) voxel-to-world affine for an array stored as (x, y, z) indices.

    Built from ``image.direction`` (LPS columns for x, y, z), spacing and origin; the
    identity direction and a zero origin where the image has none.
    """
    sp = list(image.spacing)
    dz = float(sp[0]) if image.is_volume else float(image.metadata.get("slice_thickness") or 1.0)
    dy, dx = image.pixel_spacing
    direction = np.eye(3) if image.direction is None else np.asarray(image.direction, float)
    origin = np.zeros(3) if image.origin is None else np.asarray(image.origin, float)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.array([dx, dy, dz])  # scale each index axis's column
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS


def _write_to(target: BinaryIO, data: bytes) -> None:
    """Hand ``data`` to a binary file object; its failures become OutputError."""
    write = getattr(target, "write", None)
    if not callable(write):
        raise UsageError(
            f"a writer's target must be a path or a binary file object, not {type(target).__name__}"
        )
    view = memoryview(data)
    try:
        while view:
            written = write(view)
            if written is None:  # a writer that reports nothing has taken it all
                break
            if written <= 0:  # a non-blocking stream that is full: do not spin
                raise OutputError("the file object accepted no data")
            view = view[written:]  # raw (unbuffered) files may take part of it
    except TypeError as exc:  # a text-mode file
        raise UsageError("a writer's file object must be binary (opened with 'wb')") from exc
    except OSError as exc:
        raise OutputError(f"cannot write to the file object ({exc.strerror or exc})") from exc


@overload
def write_mask_nifti(
    target: str | os.PathLike[str], mask: np.ndarray, image: MedicalImage
) -> Path: ...
@overload
def write_mask_nifti(target: BinaryIO, mask: np.ndarray, image: MedicalImage) -> None: ...
def write_mask_nifti(
    target: str | os.PathLike[str] | BinaryIO, mask: np.ndarray, image: MedicalImage
) -> Path | None:
    """Save a uint8 label mask in the image's geometry as NIfTI-1.

    The mask is in ``image``'s own voxel grid (the input file's order, not the
    canonical one), so the file overlays its input voxel for voxel; its affine is the
    input's (for a NIfTI input: the same affine, from direction, spacing and origin).

    Args:
        target: a path (``.nii.gz`` gzip-compressed, ``.nii`` plain, written
            atomically) or a binary file object, which receives gzip-compressed NIfTI-1:
            the same bytes a ``.nii.gz`` path gets.
        mask: ``(Y, X)`` or ``(Z, Y, X)`` labels.
        image: the image the mask belongs to (its geometry becomes the affine).

    Returns:
        The path written, or None for a file object.

    Raises:
        OutputError: ``OUTPUT_WRITE_FAILED`` when the target cannot be written.
    """
    import nibabel as nib

    vol = mask if mask.ndim == 3 else mask[np.newaxis]
    data = np.ascontiguousarray(vol.transpose(2, 1, 0))  # (Z, Y, X) -> (x, y, z)
    img = nib.Nifti1Image(data.astype(np.uint8), nifti_affine(image))
    img.header.set_xyzt_units("mm")
    img.header.set_intent("label")
    if isinstance(target, (str, os.PathLike)):
        return atomic_write(target, lambda tmp: nib.save(img, tmp))
    # Exactly what nib.save writes for .nii.gz: nibabel's GzipFile (level 1, mtime 0, no
    # file name). gzip.compress would differ in the header's OS byte.
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=1, fileobj=packed, mtime=0) as gz:
        gz.write(img.to_bytes())
    _write_to(target, packed.getvalue())
    return None


def size_text(entry: dict[str, float]) -> str:
    """A label's size for people: mm2 / mm3 where the spacing is known, else its pixel
    (or voxel) count as ``px``, never millimetres made up from a placeholder spacing."""
    if "area_mm2" in entry:
        return f"{entry['area_mm2']:,.0f} mm2"
    if "volume_mm3" in entry:
        return f"{entry['volume_mm3']:,.0f} mm3"
    return f"{int(entry.get('pixels', 0)):,} px"


def _display(slice_: np.ndarray, image: MedicalImage) -> np.ndarray:
    """A uint8 grayscale (or RGB) rendering: the file's window if it has one, else the
    1st-99th percentile range."""
    center, width = image.metadata.get("window_center"), image.metadata.get("window_width")
    if center is not None and width:
        lo, hi = float(center) - float(width) / 2, float(center) + float(width) / 2
    else:
        lo, hi = (float(v) for v in np.percentile(slice_, [1, 99]))
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip((slice_ - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def render_overlay(
    image: MedicalImage,
    mask: np.ndarray,
    labels: Sequence[str],
    *,
    stats: dict[str, dict[str, float]] | None = None,
    alpha: float = 0.45,
    min_size: int = 512,
    plane: str = "axial",
) -> np.ndarray:
    """The image, the same image with the coloured mask, and a legend, side by side, as
    an RGB uint8 array.

    ``image`` and ``mask`` are in the input's own voxel grid; the picture shows them in
    the canonical orientation (:mod:`edgemed.io.orientation`: patient's right on the
    left, anterior at the top for an axial slice), whatever order the file stored.
    Volumes show their middle slice, or with ``plane`` (one of :data:`PLANES`) the
    middle coronal or sagittal plane, head up, in square millimetres. Small images
    are enlarged (nearest neighbour for the mask, linear for the image) so the legend
    stays readable.
    """
    from edgemed.io.orientation import orientation  # nibabel: imported when drawing

    if plane not in PLANES or (plane != "axial" and not image.is_volume):
        raise UsageError(f"plane must be one of {PLANES} (a 2D image: axial), got {plane!r}")
    how = orientation(image)
    pixels, masks = how.to_canonical(image.array), how.to_canonical(mask)  # views
    if image.is_volume:
        src, m, k, n = _plane(pixels, masks, _canonical_spacing(image, how.transform), plane)
    else:
        src, m, k, n = pixels, np.ascontiguousarray(masks), 0, 1
    gray = _display(src, image)
    rgb = gray if gray.ndim == 3 else cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    scale = max(1, int(np.ceil(min_size / max(1, min(m.shape)))))
    if scale > 1:
        size = (m.shape[1] * scale, m.shape[0] * scale)
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
        m = cv2.resize(m, size, interpolation=cv2.INTER_NEAREST)
    colours = np.array([PALETTE[i % len(PALETTE)] for i in range(256)], dtype=np.float32)
    out = rgb.astype(np.float32)
    fg = m > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * colours[m[fg]]
    out = out.astype(np.uint8)
    # Legend panel on the right: a swatch, the name, and the measured size per label.
    row_h, panel_w = 26, 300
    present = [i for i in range(1, len(labels)) if stats is None or labels[i] in stats]
    panel = np.full((out.shape[0], panel_w, 3), 24, dtype=np.uint8)
    where = "slice" if plane == "axial" else plane
    title = "edgemed" + (f"  {where} {k + 1}/{n}" if image.is_volume else "")
    cv2.putText(
        panel, title, (10, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA
    )
    for row, i in enumerate(present):
        y = 40 + row * row_h
        if y + row_h > panel.shape[0]:
            break
        colour = tuple(int(c) for c in PALETTE[i % len(PALETTE)])
        cv2.rectangle(panel, (10, y), (28, y + 18), colour, -1)
        text = labels[i]
        if stats and labels[i] in stats:
            text += f"  {size_text(stats[labels[i]])}"
        cv2.putText(
            panel,
            text,
            (36, y + 15),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            (235, 235, 235),
            1,
            cv2.LINE_AA,
        )
    return np.hstack([rgb, out, panel])


@overload
def write_overlay_png(
    target: str | os.PathLike[str],
    image: MedicalImage,
    mask: np.ndarray,
    labels: Sequence[str],
    stats: dict[str, dict[str, float]] | None = None,
    plane: str = "axial",
) -> Path: ...
@overload
def write_overlay_png(
    target: BinaryIO,
    image: MedicalImage,
    mask: np.ndarray,
    labels: Sequence[str],
    stats: dict[str, dict[str, float]] | None = None,
    plane: str = "axial",
) -> None: ...
def write_overlay_png(
    target: str | os.PathLike[str] | BinaryIO,
    image: MedicalImage,
    mask: np.ndarray,
    labels: Sequence[str],
    stats: dict[str, dict[str, float]] | None = None,
    plane: str = "axial",
) -> Path | None:
    """Render :func:`render_overlay` and save it as PNG.

    Args:
        target: a path (written atomically) or a binary file object (gets the PNG bytes).
        image: the image under the mask.
        mask: labels in the image's shape.
        labels: label names, index = label value.
        stats: per-label measurements shown in the legend.
        plane: a volume's view through its centre (:data:`PLANES`).

    Returns:
        The path written, or None for a file object.

    Raises:
        OutputError: the PNG cannot be encoded or the target cannot be written.
    """
    rgb = render_overlay(image, mask, labels, stats=stats, plane=plane)
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    where = target if isinstance(target, (str, os.PathLike)) else None
    if not ok:
        raise OutputError("PNG encoding failed", path=where)
    if where is None:
        _write_to(target, data.tobytes())  # type: ignore[arg-type]
        return None
    return atomic_write(where, lambda tmp: Path(tmp).write_bytes(data.tobytes()))
