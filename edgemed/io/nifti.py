"""NIfTI-1/NIfTI-2 reader (``.nii``, ``.nii.gz``) on top of nibabel.

nibabel indexes the data ``[i, j, k]`` with ``i`` fastest in the file and maps indices
to RAS+ millimetres through the affine. edgemed wants ``(Z, Y, X)`` arrays in DICOM LPS,
so the data is transposed (``k, j, i``), the zooms are reversed to match, and the affine
is turned from RAS into LPS by negating its first two rows. Scaling (``scl_slope`` /
``scl_inter``) is applied by nibabel's ``get_fdata``.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from edgemed.errors import InputError
from edgemed.io.image import MedicalImage

__all__ = ["read_nifti"]

_MAX_ELEMENTS = 2**31
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
# xyzt_units spatial codes -> factor to millimetres (unknown is taken as mm, as nibabel does).
_TO_MM = {"meter": 1000.0, "mm": 1.0, "micron": 0.001, "unknown": 1.0}


def _error(code: str, problem: str, path: object) -> InputError:
    return InputError(problem, code=code, path=path)


def _load(path: Path) -> Any:
    """nibabel image; files without a NIfTI name are parsed from their bytes."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return nib.load(str(path))
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    klass = nib.Nifti2Image if data[4:8] == b"n+2\x00" else nib.Nifti1Image
    return klass.from_bytes(data)


def _gzip_ends_early(path: Path) -> bool:
    """True when ``path`` is a gzip stream that stops inside the first 540 bytes."""
    try:
        with gzip.open(path, "rb") as handle:
            handle.read(540)  # the NIfTI-2 header size
    except EOFError:
        return True
    except (OSError, zlib.error):  # not gzip at all, or damaged rather than short
        return False
    return False


def _check_complete(image: Any, path: Path) -> None:
    """An uncompressed single file must hold every byte its header describes."""
    if not path.name.lower().endswith(".nii"):
        return  # gzip streams report their end themselves (EOFError while reading)
    header = image.header
    # The loaded header's vox_offset is reset by nibabel; the array proxy keeps the real one.
    offset = int(getattr(image.dataobj, "offset", header.get_data_offset()))
    expected = offset + int(
        np.prod(header.get_data_shape(), dtype=object) * header.get_data_dtype().itemsize
    )
    if path.stat().st_size < expected:
        raise _error("INPUT_TRUNCATED", "NIfTI file is shorter than its header describes", path)


def _spatial_shape(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    """(i, j, k) of a 2D/3D image; a 4th or later axis is allowed only with length 1."""
    if len(shape) < 2 or any(n < 1 for n in shape):
        raise _error("INPUT_UNSUPPORTED_FORMAT", "NIfTI image is not 2D or 3D", path)
    extra = shape[3:]
    if any(n != 1 for n in extra):
        raise _error(
            "INPUT_UNSUPPORTED_FORMAT",
            f"NIfTI image has {int(np.prod(extra))} volumes; edgemed reads 2D and 3D images",
            path,
        )
    i, j = shape[0], shape[1]
    k = shape[2] if len(shape) > 2 else 1
    if i * j * k > _MAX_ELEMENTS:
        raise _error("INPUT_INVALID", f"image has more than {_MAX_ELEMENTS} elements", path)
    return i, j, k


def read_nifti(path: str | Path) -> MedicalImage:
    """Read a NIfTI-1 or NIfTI-2 image.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file (other names are read from their bytes).

    Returns:
        ``(Z, Y, X)`` for 3D data, ``(Y, X)`` when the third axis has length 1;
        ``spacing`` from the header zooms in the same order (mm), ``origin`` and
        ``direction`` from the affine in LPS.

    Raises:
        InputError: ``INPUT_TRUNCATED``, ``INPUT_CORRUPT``, ``INPUT_UNSUPPORTED_FORMAT``
            (4D, complex or RGB data), ``INPUT_INVALID`` (non-finite values, too large).
    """
    path = Path(path)
    try:
        image = _load(path)
    except FileNotFoundError as exc:
        raise _error("INPUT_NOT_FOUND", "file does not exist", path) from exc
    except (EOFError, zlib.error) as exc:
        raise _error("INPUT_TRUNCATED", "compressed NIfTI file ends early", path) from exc
    except (ImageFileError, HeaderDataError) as exc:
        if _gzip_ends_early(path):  # nibabel cannot even sniff a header cut short
            raise _error("INPUT_TRUNCATED", "compressed NIfTI file ends early", path) from exc
        raise _error(
            "INPUT_CORRUPT", f"NIfTI header is invalid ({type(exc).__name__})", path
        ) from exc
    except OSError as exc:
        raise _error("INPUT_UNREADABLE", "file cannot be opened or read", path) from exc
    except Exception as exc:  # nibabel raises ValueError, struct errors... on bad headers
        raise _error(
            "INPUT_CORRUPT", f"NIfTI header is invalid ({type(exc).__name__})", path
        ) from exc
    if not isinstance(image, nib.Nifti1Image):  # also Nifti2Image; not CIFTI, not pairs
        raise _error("INPUT_UNSUPPORTED_FORMAT", "not a NIfTI image", path)

    header = image.header
    dtype = header.get_data_dtype()
    if dtype.kind not in "biuf":  # complex, RGB (structured) ...
        raise _error("INPUT_UNSUPPORTED_FORMAT", f"NIfTI data type {dtype} is not read", path)
    i, j, k = _spatial_shape(tuple(int(n) for n in image.shape), path)
    _check_complete(image, path)
    try:
        data = image.get_fdata(dtype=np.float32).reshape((i, j, k))
    except (EOFError, zlib.error, OSError) as exc:  # nibabel: OSError "Expected N bytes"
        raise _error("INPUT_TRUNCATED", "NIfTI data ends early", path) from exc
    except MemoryError as exc:
        raise _error("INPUT_INVALID", "NIfTI image too large to read here", path) from exc
    except Exception as exc:
        raise _error(
            "INPUT_CORRUPT", f"NIfTI data unreadable ({type(exc).__name__})", path
        ) from exc
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise _error("INPUT_INVALID", f"NIfTI data holds {bad} non-finite values", path)

    spatial_unit = header.get_xyzt_units()[0]
    to_mm = _TO_MM.get(spatial_unit, 1.0)
    zooms = [float(z) * to_mm for z in header.get_zooms()[:3]] + [1.0] * 3
    # pixdim 0 (or NaN) means the file does not say: 1.0, as everywhere in edgemed.
    zi, zj, zk = (abs(z) if math.isfinite(z) and z != 0 else 1.0 for z in zooms[:3])

    affine = np.asarray(image.affine, dtype=float)
    ox, oy, oz = (float(v) for v in _RAS_TO_LPS @ affine[:3, 3] * to_mm)
    axes = _RAS_TO_LPS @ affine[:3, :3]
    norms = np.linalg.norm(axes, axis=0)
    direction = axes / norms if np.all(norms > 1e-12) and np.all(np.isfinite(axes)) else None

    spacing: tuple[float, ...]
    if k == 1:
        array, spacing = data[:, :, 0].T, (zj, zi)
    else:
        array, spacing = data.transpose(2, 1, 0), (zk, zj, zi)
    # nibabel moves scl_slope/scl_inter from the loaded header into the array proxy.
    slope = getattr(image.dataobj, "slope", None)
    inter = getattr(image.dataobj, "inter", None)
    metadata: dict[str, Any] = {
        "format": "nifti",
        "nifti_version": 2 if isinstance(header, nib.Nifti2Header) else 1,
        "dtype": str(dtype),
        "scl_slope": None if slope is None else float(slope),
        "scl_inter": None if inter is None else float(inter),
        "qform_code": int(header["qform_code"]),
        "sform_code": int(header["sform_code"]),
        "spatial_unit": spatial_unit,
    }
    return MedicalImage(
        array=np.ascontiguousarray(array, dtype=np.float32),
        spacing=tuple(float(s) for s in spacing),
        modality="OT",
        photometric="MONOCHROME2",
        origin=(ox, oy, oz),
        direction=direction,
        metadata=metadata,
    )
