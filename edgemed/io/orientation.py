r"""One voxel order for every image before it reaches a model, and the way back.

Readers keep each file's own voxel order (a mask must overlay its input in the input's
own grid). A 2D model, though, sees whatever order its slices arrive in: a CT saved as
RAS NIfTI reaches it upside down and mirrored. So the pipeline brings every image into
one **canonical orientation** before preprocessing, and maps the result back afterwards.

The canonical orientation, ``LPS``, is what edgemed's DICOM reader yields for a
standard axial image (ImageOrientationPatient ``1\\0\\0\\0\\1\\0``) and an axial series
sorted along its normal, the order the demo model was trained on. Array axes
``(Z, Y, X)``:

* ``X`` (columns) increases towards the patient's left (L): the patient's right is on
  the left of the picture, as radiologists read;
* ``Y`` (rows) increases towards posterior (P): the face is at the top;
* ``Z`` (slices) increases towards superior (S): the first slice is the lowest.

In nibabel's terms the ``(X, Y, Z)`` index axes have the axis codes ``('L', 'P', 'S')``.

A volume is reoriented by nibabel's orientation tools (:func:`io_orientation`,
:func:`ornt_transform`, :func:`apply_orientation`): flips and axis swaps, never
resampling. An oblique volume goes to the *closest* canonical axes (``oblique`` says
so). A sagittal or coronal volume therefore reaches a 2D model as axial slices.

A 2D image keeps its plane (the patient axis closest to its normal) and is laid out as
DICOM's standard views store it (ImageOrientationPatient ``1\\0\\0\\0\\1\\0`` axial,
``1\\0\\0\\0\\0\\-1`` coronal, ``0\\1\\0\\0\\0\\-1`` sagittal): ``X`` towards L (axial,
coronal) or P (sagittal), ``Y`` towards P (axial) or I (coronal, sagittal: the head at
the top). For an axial slice that is exactly the canonical volume's slice.

Images without geometry (PNG, JPEG, TIFF, NPY, arrays, DICOM without
ImageOrientationPatient) cannot be placed in the patient and are taken as they are
(``input_axes`` None).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt2axcodes,
    ornt_transform,
)

from edgemed.io.image import MedicalImage

__all__ = ["CANONICAL", "Orientation", "canonical", "orientation"]

#: The canonical orientation's axis codes for the ``(X, Y, Z)`` index axes.
CANONICAL = "LPS"

# nibabel's axis codes name the RAS world; LPS is its first two axes negated.
_LPS = np.diag([-1.0, -1.0, 1.0])
_TARGET = axcodes2ornt(tuple(CANONICAL))  # world axis and sense for X, Y, Z
# Sense (+1: towards R, A or S) of the canonical code for each RAS world axis.
_SENSE = {int(axis): float(sense) for axis, sense in _TARGET}
# A 2D image's rows (Y) run towards P (axial) or towards I (coronal, sagittal: DICOM's
# standard views show the head at the top).
_SENSE_2D_ROWS = {1: _SENSE[1], 2: -_SENSE[2]}
_IDENTITY = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])
# An index axis further than this from every patient axis (a direction cosine
# component off the nearest axis, about 0.06 degrees) makes the image oblique.
_OBLIQUE_TOLERANCE = 1e-3


@dataclass(frozen=True, eq=False)  # eq=False: the fields hold arrays
class Orientation:
    """How an image's own voxel order relates to the canonical one.

    Attributes:
        input_axes: nibabel axis codes of the input's ``(X, Y, Z)`` index axes (``"RAS"``,
            ``"LPS"``, ...; for a 2D image ``Z`` is its normal), or None when the image
            has no geometry.
        reoriented: whether the canonical array differs from the input's (flips or
            swapped axes).
        oblique: whether an index axis is off the patient axes (it was then taken to the
            closest one, not resampled).
        transform: nibabel orientation ``(3, 2)`` from the input's ``(X, Y, Z)`` axes to
            the canonical ones, or None without geometry.
        volume: whether the image is a volume (else 2D, one plane).
        inverse: the orientation back, from the canonical axes to the input's.
    """

    input_axes: str | None
    reoriented: bool
    oblique: bool
    transform: np.ndarray | None
    volume: bool
    inverse: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``result.json``'s ``input.orientation``)."""
        return {
            "canonical": CANONICAL,
            "input_axes": self.input_axes,
            "reoriented": self.reoriented,
            "oblique": self.oblique,
        }

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """``array``, laid out as the input image (spatial axes first, then any channel
        axis), in canonical order: a view, no copy."""
        return self._apply(array, self.transform)

    def to_input(self, array: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`to_canonical`: canonical order back to the input's
        own voxel grid (a view)."""
        return self._apply(array, self.inverse)

    def _apply(self, array: np.ndarray, transform: np.ndarray | None) -> np.ndarray:
        if transform is None or not self.reoriented:
            return array
        spatial = 3 if self.volume else 2
        if array.ndim < spatial:
            raise ValueError(f"array of shape {array.shape} has fewer than {spatial} axes")
        grid = array if self.volume else array[np.newaxis]
        # (Z, Y, X, ...) -> nibabel's (X, Y, Z, ...), reoriented, and back.
        order = (2, 1, 0, *range(3, grid.ndim))
        out = apply_orientation(grid.transpose(order), transform).transpose(order)
        return out if self.volume else out[0]


_NONE = Orientation(None, False, False, None, False)


def _ras_affine(image: MedicalImage) -> np.ndarray:
    """A voxel (X, Y, Z) -> RAS mm affine from the image's direction, spacing and origin
    (a 2D image gets a unit step along its normal)."""
    assert image.direction is not None
    spacing = list(image.spacing)
    dz = float(spacing[0]) if image.is_volume else 1.0
    dy, dx = image.pixel_spacing
    affine = np.eye(4)
    affine[:3, :3] = _LPS @ np.asarray(image.direction, float) * np.array([dx, dy, dz])
    affine[:3, 3] = _LPS @ np.asarray(image.origin if image.origin is not None else (0, 0, 0))
    return affine


def orientation(image: MedicalImage) -> Orientation:
    """How ``image`` relates to the canonical orientation (from its direction alone:
    cheap, nothing is copied)."""
    direction = image.direction
    if direction is None or not np.all(np.isfinite(direction)):
        return dataclasses.replace(_NONE, volume=image.is_volume)
    start = io_orientation(_ras_affine(image))
    if np.isnan(start).any():  # a degenerate direction: nothing to go by
        return dataclasses.replace(_NONE, volume=image.is_volume)
    if image.is_volume:
        target = _TARGET
    else:
        # Keep the plane: the in-plane axes take the patient axes they lie along, the
        # lower one (R-L, then A-P, then S-I) as X, in DICOM's standard view senses;
        # the normal stays the third axis as it is (flipping a single slice along it
        # would change nothing but the sign).
        low, high = sorted(int(a) for a in start[:2, 0])
        target = np.array([[low, _SENSE[low]], [high, _SENSE_2D_ROWS[high]], start[2]])
    transform = ornt_transform(start, target)
    # Each index axis's second-largest direction cosine: 0 when it lies on a patient axis.
    off_axis = np.sort(np.abs(np.asarray(direction, float)), axis=0)[-2]
    return Orientation(
        input_axes="".join(str(code) for code in ornt2axcodes(start)),
        reoriented=not np.array_equal(transform, _IDENTITY),
        oblique=bool(np.any(off_axis > _OBLIQUE_TOLERANCE)),
        transform=transform,
        volume=image.is_volume,
        inverse=ornt_transform(target, start),
    )


def canonical(image: MedicalImage) -> tuple[MedicalImage, Orientation]:
    """``image`` in the canonical orientation, and how it relates to the input.

    An image already canonical (a standard axial DICOM, an image without geometry) is
    returned as it is. Otherwise the result holds a C-contiguous copy of the pixels
    (preprocessing reads slices) with spacing, origin and direction describing the same
    voxels in their new order: the same patient space, the same pixel values.
    """
    how = orientation(image)
    if not how.reoriented:
        return image, how
    assert how.transform is not None
    array = np.ascontiguousarray(how.to_canonical(image.array))
    # inv_ornt_aff takes the shape *before* the transform, in nibabel's (X, Y, Z) order.
    shape = image.array.shape[: 3 if how.volume else 2]
    ijk_shape = tuple(reversed(shape)) if how.volume else (shape[1], shape[0], 1)
    new = _ras_affine(image) @ inv_ornt_aff(how.transform, ijk_shape)
    columns = _LPS @ new[:3, :3]
    steps = np.linalg.norm(columns, axis=0)
    spacing = tuple(float(s) for s in (steps[::-1] if how.volume else steps[1::-1]))
    origin = tuple(float(v) for v in _LPS @ new[:3, 3])
    return (
        dataclasses.replace(
            image,
            array=array,
            spacing=spacing,
            origin=None if image.origin is None else origin,  # type: ignore[arg-type]
            direction=columns / steps,
            metadata=dict(image.metadata),
        ),
        how,
    )
