"""The readers' caps, as one frozen object passed down to every reader.

Hostile or broken files must not make a reader allocate, inflate or loop without
bound, so every reader checks these caps *before* the work they limit and refuses with
``INPUT_INVALID`` beyond them. A small device lowers them (``EDGEMED_MAX_*``, resolved
by :func:`edgemed.settings.load_limits`, or ``ReaderLimits(...)`` passed to
``read_image`` / the pipeline options); nothing is changed globally.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from edgemed.errors import UsageError

__all__ = ["DEFAULT_LIMITS", "ReaderLimits"]


@dataclass(frozen=True)
class ReaderLimits:
    """Caps every reader honours (positive integers).

    Attributes:
        max_file_bytes: size of one file (a DICOM file, a NIfTI file, a raster or NPY
            file, or the bytes handed to ``read_image``). Default 4 GiB + 16 MiB: the
            largest 16-bit native pixel data the element cap allows, plus headers.
        max_decompressed_bytes: bytes produced by decompression or decoding: an
            inflated Deflated DICOM dataset (measured while inflating), decoded DICOM
            pixel data (from the header, before decoding), NIfTI data and PNG pixels.
            Default 4 GiB: 2**31 16-bit samples.
        max_frames: frames of one multi-frame DICOM file, and files (or instances) in
            one DICOM series, counted before any is parsed. Default 2**14: cine loops,
            tomosynthesis and CT/MR series stay in the low thousands.
        max_elements: array elements (rows x columns x frames x samples) of any image;
            the float32 result takes four bytes each. Default 2**31 (8 GiB as float32).
    """

    max_file_bytes: int = 2**32 + 2**24
    max_decompressed_bytes: int = 2**32
    max_frames: int = 2**14
    max_elements: int = 2**31

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value <= 0:
                raise UsageError(f"reader limit {f.name} must be a positive integer, got {value!r}")

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """``EDGEMED_MAX_*`` variable -> field name."""
        return {"EDGEMED_" + f.name.upper(): f.name for f in fields(cls)}


#: The caps when nothing lowers them.
DEFAULT_LIMITS = ReaderLimits()
