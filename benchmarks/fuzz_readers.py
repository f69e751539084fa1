"""Mutation fuzzer for edgemed's image readers (DICOM file and series, NIfTI).

Seeds are real files: pydicom's bundled test corpus and nibabel's test data, plus a
few files derived from them (a Modality LUT, a small palette image, a 3D NIfTI-2, a
scaled ``.nii.gz``, a three-slice series). Each input is one seed with one to four
mutations: bit flips, byte sets, insertions, deletions, truncations, chunk splices,
and splices of header fields (Rows, Columns, BitsAllocated, NumberOfFrames, the
transfer syntax, LUT descriptors, NIfTI dims, datatype, vox_offset, scl_slope, ...)
set to extreme values.

Every input must either read (an image that keeps :class:`~edgemed.io.image.MedicalImage`'s
conventions: finite float32, positive spacing, ...) or be refused with an
:class:`~edgemed.errors.EdgemedError`. Reads run in worker subprocesses with a per-file
timeout, so a hang or a native crash is counted, not fatal. Workers call the layer
*below* ``read_image``'s catch-all boundary (:func:`edgemed.io.read._read`): an
exception that only the boundary would have caught counts as a failure.

Usage::

    python benchmarks/fuzz_readers.py --iterations 20000 --seconds 300
    python benchmarks/fuzz_readers.py --reproduce 1234      # one input, in-process

The CI test ``tests/io/test_io_fuzz.py`` drives the same mutations with hypothesis.
Exit status: 0 when every input was read or refused, 1 otherwise.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import resource
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------- seeds

#: pydicom test files used as seeds: every transfer syntax edgemed reads, big endian,
#: deflate, multi-frame, 1-bit, palette, YBR, MONOCHROME1, RT dose, and non-images.
DICOM_SEEDS = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEG2000.dcm",
    "693_J2KI.dcm",
    "JPEGLSNearLossless_08.dcm",
    "JPEGLSNearLossless_16.dcm",
    "JPGExtended.dcm",
    "JPEG-lossy.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "SC_rgb_dcmtk_+eb+cy+s2.dcm",
    "SC_rgb_jls_lossy_line.dcm",
    "SC_rgb_rle.dcm",
    "SC_rgb_rle_16bit_2frame.dcm",
    "SC_rgb_rle_32bit.dcm",
    "SC_rgb_small_odd.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "ExplVR_BigEnd.dcm",
    "image_dfl.dcm",
    "liver_1frame.dcm",
    "rtdose.dcm",
    "rtdose_rle.dcm",
    "rtplan.dcm",
    "no_meta_group_length.dcm",
    "ExplVR_LitEndNoMeta.dcm",
    "badVR.dcm",
    "dicomdirtests/77654033/CR1/6154",
)

#: nibabel test files used as seeds (4D, NIfTI-2, CIFTI and gzip included).
NIFTI_SEEDS = (
    "anatomical.nii",
    "functional.nii",
    "reoriented_anat_moved.nii",
    "resampled_anat_moved.nii",
    "standard.nii.gz",
    "example_nifti2.nii.gz",
    "row_major.dconn.nii",
)


@dataclass(frozen=True)
class Seed:
    """One starting point: a file (or, for a series, several) and the name to write."""

    name: str
    kind: str  # "dicom", "nifti" or "series"
    files: tuple[bytes, ...]

    @property
    def gzipped(self) -> bool:
        return self.files[0][:2] == b"\x1f\x8b"


def _derived_dicom() -> list[Seed]:
    """Seeds made from corpus files to reach code the corpus alone does not."""
    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.sequence import Sequence as DicomSequence

    def dump(ds: Any) -> bytes:
        buffer = DicomBytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    seeds = []
    # Modality LUT Sequence: stored 0..4095 mapped through a 4096-entry LUT.
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        if keyword in ds:
            delattr(ds, keyword)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.ModalityLUTType = "US"
    item.add_new(0x00283006, "US", [i // 2 for i in range(4096)])  # LUT Data
    ds.ModalityLUTSequence = DicomSequence([item])
    seeds.append(Seed("mlut.dcm", "dicom", (dump(ds),)))

    # Small 8-bit PALETTE COLOR image with a 256-entry 16-bit LUT.
    ds = pydicom.dcmread(get_testdata_file("examples_palette.dcm"))
    ds.PixelData = np.asarray(ds.pixel_array[:24, :32]).tobytes()
    ds.Rows, ds.Columns = 24, 32
    seeds.append(Seed("palette_small.dcm", "dicom", (dump(ds),)))

    # A three-slice series of CT_small (z = 0, 5, 10).
    slices = []
    for i in range(3):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * i]
        ds.InstanceNumber = i + 1
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{i + 1}"
        slices.append(dump(ds))
    seeds.append(Seed("series", "series", tuple(slices)))
    return seeds


def _derived_nifti(nib_data: Path) -> list[Seed]:
    import nibabel as nib
    import numpy as np

    seeds = []
    with tempfile.TemporaryDirectory() as scratch:
        volume = np.asarray(nib.load(nib_data / "example_nifti2.nii.gz").dataobj[..., 0])
        path = Path(scratch) / "nifti2_3d.nii"
        nib.Nifti2Image(volume[:8, :8, :4], np.diag([2.0, 2.0, 3.0, 1.0])).to_filename(path)
        seeds.append(Seed(path.name, "nifti", (path.read_bytes(),)))
        stored = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
        image = nib.Nifti1Image(stored, np.diag([0.5, 0.7, 2.0, 1.0]))
        image.header.set_slope_inter(2.0, -5.0)
        path = Path(scratch) / "scaled.nii.gz"
        image.to_filename(path)
        seeds.append(Seed(path.name, "nifti", (path.read_bytes(),)))
    return seeds


def load_seeds(kinds: Sequence[str] = ("dicom", "nifti")) -> list[Seed]:
    """The seeds of the given kinds ("dicom" includes the derived series)."""
    seeds: list[Seed] = []
    if "dicom" in kinds:
        from pydicom.data import get_testdata_file

        corpus = Path(get_testdata_file("CT_small.dcm")).parent
        for name in DICOM_SEEDS:
            data = (corpus / name).read_bytes()
            seeds.append(Seed(Path(name).name if "/" not in name else "cr.dcm", "dicom", (data,)))
        seeds.extend(_derived_dicom())
    if "nifti" in kinds:
        import nibabel as nib

        nib_data = Path(nib.__file__).parent / "tests" / "data"
        for name in NIFTI_SEEDS:
            seeds.append(Seed(name, "nifti", ((nib_data / name).read_bytes(),)))
        seeds.extend(_derived_nifti(nib_data))
    return seeds


# ------------------------------------------------------------------ header fields

_LONG_VRS = set(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_SHORT_VRS = set(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())
_EXTREME_US = (0, 1, 2, 3, 0x7FFF, 0x8000, 0xFFFF)
_LISTED = (b"2", b"2.1", b"2.1.99", b"2.2", b"2.4.50", b"2.4.51", b"2.4.57", b"2.4.70", b"2.4.80")
_LISTED += (b"2.4.81", b"2.4.90", b"2.4.91", b"2.5")  # edgemed's list, then others:
# HTJ2K (decodable by pydicom, not on edgemed's list), MPEG-2, encapsulated uncompressed.
_OFF_LIST = (b"2.4.201", b"2.4.100", b"2.1.98")
_SYNTAXES = tuple(b"1.2.840.10008.1." + s for s in _LISTED + _OFF_LIST) + (b"1.2.3.4", b"")
_DS_EXTREMES = (b"0", b"-1", b"1e38", b"-1e38", b"1e308", b"NaN", b"inf", b"1e-45", b"abc")
_FRAMES = (b"0", b"-1", b"1", b"2", b"3", b"1000", b"65536", b"2147483648", b"9" * 12, b"1e9")
_PHOTOMETRIC = (b"MONOCHROME1", b"MONOCHROME2", b"RGB", b"PALETTE COLOR", b"YBR_FULL")
_PHOTOMETRIC += (b"YBR_FULL_422", b"YBR_ICT", b"YBR_RCT", b"YBR_PARTIAL_420", b"ARGB", b"", b"??")
_ORIENTATIONS = (b"0\\0\\0\\0\\0\\0", b"1\\0\\0\\1\\0\\0", b"NaN\\0\\0\\0\\1\\0")
_ORIENTATIONS += (b"1e308\\0\\0\\0\\1\\0",)
_PALETTE_DESCRIPTORS = ((0, 0, 8), (0, 0, 16), (1, 0, 8), (256, 255, 8), (0xFFFF, 0xFFFF, 16))
_PALETTE_DESCRIPTORS += ((16, 0, 8), (256, 0, 12), (256, 0x8000, 16), (2, 0, 0))

#: (keyword, group, element, kind, values): DICOM elements the "field" mutation sets.
DICOM_FIELDS: tuple[tuple[str, int, int, str, tuple[Any, ...]], ...] = (
    ("Rows", 0x0028, 0x0010, "us", _EXTREME_US),
    ("Columns", 0x0028, 0x0011, "us", _EXTREME_US),
    ("SamplesPerPixel", 0x0028, 0x0002, "us", (0, 1, 2, 3, 4, 0xFFFF)),
    ("BitsAllocated", 0x0028, 0x0100, "us", (0, 1, 7, 8, 12, 16, 24, 32, 33, 64, 128, 0xFFFF)),
    ("BitsStored", 0x0028, 0x0101, "us", (0, 1, 7, 8, 12, 16, 17, 32, 64, 0xFFFF)),
    ("HighBit", 0x0028, 0x0102, "us", (0, 7, 11, 15, 16, 31, 63, 0xFFFF)),
    ("PixelRepresentation", 0x0028, 0x0103, "us", (0, 1, 2, 0xFFFF)),
    ("PlanarConfiguration", 0x0028, 0x0006, "us", (0, 1, 2)),
    ("NumberOfFrames", 0x0028, 0x0008, "str", _FRAMES),
    ("PhotometricInterpretation", 0x0028, 0x0004, "str", _PHOTOMETRIC),
    ("TransferSyntaxUID", 0x0002, 0x0010, "uid", _SYNTAXES),
    ("RescaleSlope", 0x0028, 0x1053, "str", _DS_EXTREMES),
    ("RescaleIntercept", 0x0028, 0x1052, "str", _DS_EXTREMES),
    ("DoseGridScaling", 0x3004, 0x000E, "str", _DS_EXTREMES),
    ("WindowCenter", 0x0028, 0x1050, "str", _DS_EXTREMES),
    ("PixelSpacing", 0x0028, 0x0030, "str", (b"0\\0", b"-1\\1", b"NaN\\1", b"1e308\\1", b"1")),
    ("ImageOrientationPatient", 0x0020, 0x0037, "str", _ORIENTATIONS),
    ("ImagePositionPatient", 0x0020, 0x0032, "str", (b"NaN\\0\\0", b"1e308\\0\\0", b"1\\2")),
    ("GridFrameOffsetVector", 0x3004, 0x000C, "str", (b"0", b"0\\0", b"NaN", b"0\\1e308")),
    ("SpacingBetweenSlices", 0x0018, 0x0088, "str", _DS_EXTREMES),
    ("RedPaletteColorLookupTableDescriptor", 0x0028, 0x1101, "us", _PALETTE_DESCRIPTORS),
    ("GreenPaletteColorLookupTableDescriptor", 0x0028, 0x1102, "us", ((1, 0, 8), (0, 0, 16))),
    ("LUTDescriptor", 0x0028, 0x3002, "us", ((0, 0, 16), (1, 0, 16), (16, 0xFFFF, 16))),
    ("PixelData", 0x7FE0, 0x0010, "length", (0, 1, 2, 0xFFFFFFFF, 0x7FFFFFFF, 0xFFFFFFFE)),
    ("RedPaletteColorLookupTableData", 0x0028, 0x1201, "length", (0, 2, 3, 511, 0xFFFFFFFF)),
    ("LUTData", 0x0028, 0x3006, "length", (0, 2, 3, 0xFFFFFFFF)),
)

#: (field, index, values): NIfTI header fields the "field" mutation sets.
NIFTI_FIELDS: tuple[tuple[str, int | None, tuple[Any, ...]], ...] = (
    ("sizeof_hdr", None, (0, 1, -1, 347, 348, 540, 0x5C010000)),
    ("magic", None, (b"n+1\0", b"ni1\0", b"n+2\0", b"\0\0\0\0", b"n+3\0")),
    ("dim", 0, (0, 1, 2, 3, 4, 5, 7, 8, -1, 32767)),
    ("dim", 1, (0, -1, 1, 2, 32767, -32768, 2**31, 2**62)),
    ("dim", 2, (0, -1, 1, 32767, 2**40)),
    ("dim", 3, (0, -1, 1, 32767, 2**62)),
    ("dim", 4, (0, -1, 1, 2, 32767)),
    ("datatype", None, (0, 1, 2, 4, 8, 16, 32, 64, 128, 255, 256, 512, 768, 1024, 1280, 1536)),
    ("datatype", None, (1792, 2048, 2304, 9999, -1)),
    ("bitpix", None, (0, 1, 8, 16, 64, -8, 255)),
    ("vox_offset", None, (0, 1, 347, 348, 351, 352, 352.5, 1e9, 1e30, -352, math.nan, math.inf)),
    ("vox_offset", None, (2**31, 2**62, 544, 540)),
    ("scl_slope", None, (0.0, math.nan, math.inf, -math.inf, 1e38, -1e38, 1e-45, -1.0, 2.0)),
    ("scl_inter", None, (math.nan, math.inf, -math.inf, 1e38, 0.0)),
    ("pixdim", 0, (0.0, -1.0, math.nan)),
    ("pixdim", 1, (0.0, -1.0, math.nan, math.inf, 1e38, 1e-45)),
    ("pixdim", 3, (0.0, -1.0, math.nan, math.inf)),
    ("qform_code", None, (0, 1, 2, 4, -1, 32767)),
    ("sform_code", None, (0, 1, 2, 4, -1, 32767)),
    ("quatern_b", None, (math.nan, 2.0, -2.0, 0.9999, 1.0)),
    ("quatern_d", None, (math.nan, 2.0, 1.0)),
    ("qoffset_x", None, (math.nan, math.inf, 1e38)),
    ("srow_x", 0, (math.nan, math.inf, 0.0, 1e38)),
    ("srow_z", 3, (math.nan, math.inf, 1e38)),
    ("xyzt_units", None, (0, 1, 2, 3, 255)),
    ("intent_code", None, (0, 1, 1007, 2001, 3001, 3006)),
    ("extension", None, (0, 1)),
    ("esize", None, (0, 8, 15, 16, 32, -16, 2**31 - 1)),
)


def _find_tag(data: bytes, group: int, element: int, occurrence: int) -> tuple[int, str] | None:
    """Offset of the ``occurrence``-th (modulo the count) tag, and its byte order."""
    for order in ("<", ">"):
        pattern = struct.pack(f"{order}HH", group, element)
        hits, start = [], 0
        while len(hits) < 16:
            at = data.find(pattern, start)
            if at < 0:
                break
            hits.append(at)
            start = at + 1
        if hits:
            return hits[occurrence % len(hits)], order
    return None


def _element_layout(data: bytes, at: int, order: str) -> tuple[int, int, int] | None:
    """(offset of the length field, its size, offset of the value) of an element."""
    vr = data[at + 4 : at + 6]
    if vr in _LONG_VRS:
        return at + 8, 4, at + 12
    if vr in _SHORT_VRS:
        return at + 6, 2, at + 8
    if at + 8 <= len(data):  # implicit VR
        return at + 4, 4, at + 8
    return None


def _encode(kind: str, value: Any, order: str) -> bytes:
    if kind == "us":
        values = value if isinstance(value, tuple) else (value,)
        return b"".join(struct.pack(f"{order}H", v & 0xFFFF) for v in values)
    text = bytes(value)
    pad = b"\0" if kind == "uid" else b" "
    return text + pad * (len(text) % 2)


def _set_dicom_field(data: bytes, index: int, pick: int) -> bytes:
    _, group, element, kind, values = DICOM_FIELDS[index % len(DICOM_FIELDS)]
    found = _find_tag(data, group, element, pick >> 8)
    if found is None:
        return data
    at, order = found
    layout = _element_layout(data, at, order)
    if layout is None:
        return data
    length_at, length_size, value_at = layout
    fmt = f"{order}{'I' if length_size == 4 else 'H'}"
    if length_at + length_size > len(data):
        return data
    (old_length,) = struct.unpack_from(fmt, data, length_at)
    value = values[pick % len(values)]
    if kind == "length":
        new_length = value & (0xFFFFFFFF if length_size == 4 else 0xFFFF)
        return data[:length_at] + struct.pack(fmt, new_length) + data[length_at + length_size :]
    if old_length == 0xFFFFFFFF:
        return data
    new = _encode(kind, value, order)
    if len(new) >= 1 << (8 * length_size):
        return data
    head = data[:length_at] + struct.pack(fmt, len(new))
    return head + data[length_at + length_size : value_at] + new + data[value_at + old_length :]


def _set_nifti_field(data: bytes, index: int, pick: int) -> bytes:
    import nibabel as nib
    import numpy as np

    name, item, values = NIFTI_FIELDS[index % len(NIFTI_FIELDS)]
    value = values[pick % len(values)]
    version2 = data[4:7] == b"n+2"
    header_dtype = (nib.nifti2 if version2 else nib.nifti1).header_dtype
    size = header_dtype.itemsize
    if len(data) < size + 8:
        return data
    order = "<" if struct.unpack_from("<i", data, 0)[0] in (348, 540) else ">"
    if name in ("extension", "esize"):
        offset = size if name == "extension" else size + 4
        fmt = f"{order}i" if name == "esize" else "4B"
        packed = struct.pack(fmt, value) if name == "esize" else bytes([value, 0, 0, 0])
        return data[:offset] + packed + data[offset + len(packed) :]
    base, offset = header_dtype.fields[name][0], header_dtype.fields[name][1]
    if base.subdtype is not None:
        base, offset = base.subdtype[0], offset + (item or 0) * base.subdtype[0].itemsize
    if base.kind == "S":
        packed = bytes(value)[: base.itemsize].ljust(base.itemsize, b"\0")
    elif name == "sizeof_hdr":
        packed = struct.pack("<i", value)
    else:
        with np.errstate(invalid="ignore"):  # NaN into an integer field: garbage is fine
            scalar = np.array(value).astype(base.newbyteorder(order))
        if base.kind in "iu":  # wrap out-of-range integers as a hostile writer would
            number = int(value) if math.isfinite(value) else (1 << (8 * base.itemsize - 1)) - 1
            unsigned = np.dtype(f"u{base.itemsize}").newbyteorder(order)
            scalar = np.array(number % (1 << (8 * base.itemsize))).astype(unsigned)
        packed = scalar.tobytes()
    return data[:offset] + packed + data[offset + len(packed) :]


# ---------------------------------------------------------------------- mutations

#: One mutation: (name, *params). Positions are taken modulo the data length
#: (or modulo the first 2 KiB when ``near_start`` is true: most parsing is there).
Op = tuple[Any, ...]
OPS = ("flip", "set", "insert", "delete", "truncate", "splice", "field")


def _position(data: bytes, pos: int, near_start: bool) -> int:
    span = min(len(data), 2048) if near_start else len(data)
    return pos % span if span else 0


def apply_op(data: bytes, op: Op, kind: str) -> bytes:
    """``data`` with one mutation applied (``kind`` picks the header field table)."""
    name = op[0]
    if name == "field":
        if kind == "nifti":
            return _set_nifti_field(data, op[1], op[2])
        return _set_dicom_field(data, op[1], op[2])
    if not data:
        return data
    at = _position(data, op[1], op[2])
    if name == "flip":
        return data[:at] + bytes([data[at] ^ (op[3] or 1)]) + data[at + 1 :]
    if name == "set":
        return data[:at] + bytes([op[3] & 0xFF]) + data[at + 1 :]
    if name == "insert":
        return data[:at] + bytes(op[3]) + data[at:]
    if name == "delete":
        return data[:at] + data[at + op[3] :]
    if name == "truncate":
        return data[:at]
    if name == "splice":  # copy a chunk of the file over another place of it
        source = _position(data, op[3], False)
        chunk = data[source : source + op[4]]
        return data[:at] + chunk + data[at + len(chunk) :]
    raise ValueError(f"unknown mutation {name!r}")


@dataclass(frozen=True)
class Case:
    """One fuzz input: a seed, which file of it to change, the mutations, the layer."""

    seed: int
    ops: tuple[Op, ...]
    target: int = 0  # which file of a series
    inner: bool = True  # gzip seeds: mutate the decompressed bytes (else the gzip bytes)


def materialise(case: Case, seeds: Sequence[Seed], directory: Path) -> Path:
    """Write the mutated input under ``directory`` (overwriting) and return its path."""
    seed = seeds[case.seed % len(seeds)]
    target = case.target % len(seed.files)
    files = list(seed.files)
    data = files[target]
    unpacked = seed.gzipped and case.inner
    if unpacked:
        data = gzip.decompress(data)
    for op in case.ops:
        data = apply_op(data, op, seed.kind)
    if unpacked:
        data = gzip.compress(data, compresslevel=1, mtime=0)
    files[target] = data
    directory.mkdir(parents=True, exist_ok=True)
    if seed.kind == "series":
        folder = directory / "series"
        folder.mkdir(exist_ok=True)
        for i, content in enumerate(files):
            (folder / f"{i}.dcm").write_bytes(content)
        return folder
    path = directory / seed.name
    path.write_bytes(data)
    return path


def random_case(rng: random.Random, n_seeds: int) -> Case:
    """A case drawn from ``rng`` (the script's generator; the test uses hypothesis)."""
    ops = []
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        name = rng.choice(OPS + ("field", "field", "flip"))
        pos, near = rng.randrange(1 << 24), rng.random() < 0.6
        if name in ("flip", "set"):
            ops.append((name, pos, near, rng.randrange(256)))
        elif name == "insert":
            ops.append((name, pos, near, rng.randbytes(rng.randint(1, 16))))
        elif name == "delete":
            ops.append((name, pos, near, rng.randint(1, 64)))
        elif name == "truncate":
            ops.append((name, pos, near))
        elif name == "splice":
            ops.append((name, pos, near, rng.randrange(1 << 24), rng.randint(1, 256)))
        else:
            ops.append(("field", rng.randrange(64), rng.randrange(1 << 12)))
    return Case(rng.randrange(n_seeds), tuple(ops), rng.randrange(3), rng.random() < 0.8)


# ------------------------------------------------------------------------- worker


def check_image(image: Any) -> str | None:
    """What breaks MedicalImage's conventions in ``image``, or None when nothing does."""
    import numpy as np

    array = image.array
    if array.dtype != np.float32 or not array.flags.c_contiguous:
        return "array is not C-contiguous float32"
    if not np.isfinite(array).all():
        return "array holds non-finite values"
    spatial = array.ndim - (1 if image.is_color else 0)
    if spatial not in (2, 3) or len(image.spacing) != spatial:
        return f"array of shape {array.shape} does not match spacing {image.spacing}"
    if image.is_color and array.shape[-1] != 3:
        return "colour image without 3 samples"
    if not all(math.isfinite(s) and s > 0 for s in image.spacing):
        return "spacing is not finite and positive"
    if image.origin is not None and not all(math.isfinite(v) for v in image.origin):
        return "origin is not finite"
    if image.direction is not None:
        d = np.asarray(image.direction)
        if d.shape != (3, 3) or not np.isfinite(d).all():
            return "direction is not a finite 3x3 matrix"
    for key, value in image.metadata.items():
        if isinstance(value, float) and not math.isfinite(value):
            return f"metadata {key} is not finite"
    return None


def classify(read: Callable[[], Any]) -> tuple[dict[str, Any], Any]:
    """Run ``read()`` (a read below read_image's boundary) and classify the outcome.

    Returns:
        The outcome (``status`` ok, bad, refused or crash, with ``seconds``) and what the
        read gave: the image, the EdgemedError that refused it, or None after a crash.
    """
    import warnings

    from edgemed.errors import EdgemedError

    started = time.perf_counter()
    result: Any = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about every oddity it meets
        try:
            result = read()
        except EdgemedError as exc:
            outcome: dict[str, Any] = {"status": "refused", "code": exc.code}
            result = exc
        except BaseException as exc:  # the point of the exercise
            if isinstance(exc, KeyboardInterrupt):
                raise
            frames = traceback.format_exception(type(exc), exc, exc.__traceback__)
            outcome = {
                "status": "crash",
                "error": f"{type(exc).__name__}: {str(exc)[:200]}",
                "traceback": "".join(frames[-6:]),
            }
        else:
            problem = check_image(result)
            outcome = {"status": "bad", "error": problem} if problem else {"status": "ok"}
    outcome["seconds"] = time.perf_counter() - started
    return outcome, result


def read_one(path: Path) -> dict[str, Any]:
    """Read ``path`` below read_image's boundary and classify the outcome."""
    from edgemed.io.read import _read
    from edgemed.limits import DEFAULT_LIMITS

    outcome, _ = classify(lambda: _read(path, DEFAULT_LIMITS))
    outcome["rss_kb"] = _peak_rss_kb()
    return outcome


def _peak_rss_kb() -> int:
    """This process's own RSS high-water mark.

    Not ``getrusage().ru_maxrss``: Linux carries that across fork+exec, so a worker
    started by a big parent (pytest after the torch tests) would report the parent's
    peak. ``VmHWM`` belongs to the process's own address space, new at exec.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def worker_main(memory_limit_mb: int, read: Callable[[Path], dict[str, Any]] = read_one) -> None:
    """Read one path per stdin line with ``read``; one JSON outcome per stdout line."""
    if memory_limit_mb > 0:  # a safety net for a shared machine, far above the caps
        limit = memory_limit_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the protocol
    import edgemed.io.dicom  # noqa: F401 - imported before the first timed read
    import edgemed.io.nifti  # noqa: F401
    import edgemed.io.series  # noqa: F401

    for line in sys.stdin:
        outcome = read(Path(line.rstrip("\n")))
        protocol.write(json.dumps(outcome) + "\n")
        protocol.flush()


@dataclass
class Worker:
    """A worker subprocess; restarted after a timeout or a crash."""

    timeout: float
    memory_limit_mb: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    job: Any = None

    def command(self) -> list[str]:
        """The worker process's command line (run from the repository root)."""
        limit = str(self.memory_limit_mb)
        return [sys.executable, __file__, "--worker", "--memory-limit-mb", limit]

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parents[1],
        )

    def submit(self, path: Path, job: Any) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(f"{path}\n".encode())
        self.proc.stdin.flush()
        self.started, self.job = time.perf_counter(), job

    def collect(self) -> dict[str, Any]:
        """The outcome of the submitted job (blocks up to the timeout)."""
        assert self.proc is not None and self.proc.stdout is not None
        left = self.timeout - (time.perf_counter() - self.started)
        ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0.0))
        if not ready:
            self.stop()
            return {"status": "timeout", "seconds": self.timeout, "rss_kb": 0}
        line = self.proc.stdout.readline()
        if not line:  # the worker died: a native crash (segfault, abort) or killed
            code = self.proc.wait()
            self.proc = None
            return {"status": "crash", "error": f"worker died with status {code}", "rss_kb": 0}
        return dict(json.loads(line))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # our own child, by its handle
            self.proc.wait()
            self.proc = None


@dataclass
class Tally:
    """What the fuzz run found."""

    tried: int = 0
    ok: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[Any, dict[str, Any]]] = field(default_factory=list)
    timeouts: int = 0
    max_seconds: float = 0.0
    slowest: Any = None
    peak_rss_kb: int = 0
    peak_rss_job: Any = None

    def add(self, job: Any, outcome: dict[str, Any]) -> None:
        self.tried += 1
        status = outcome["status"]
        if status == "ok":
            self.ok += 1
        elif status == "refused":
            self.codes[outcome["code"]] += 1
        else:
            self.timeouts += status == "timeout"
            self.failures.append((job, outcome))
        seconds = float(outcome.get("seconds", 0.0))
        if seconds > self.max_seconds:
            self.max_seconds, self.slowest = seconds, job
        rss = int(outcome.get("rss_kb", 0))
        if rss > self.peak_rss_kb:  # the input that first took a worker this high
            self.peak_rss_kb, self.peak_rss_job = rss, job


def run_jobs(
    jobs: int,
    make: Callable[[int, int], tuple[Any, Path] | None],
    tally: Tally,
    *,
    timeout: float,
    memory_limit_mb: int,
) -> None:
    """Feed inputs to ``jobs`` workers until ``make(index, slot)`` returns None.

    ``make`` returns a job id and the path of the input; ``slot`` is the worker that
    will read it, so inputs can be written to one folder per worker and overwritten.
    """
    workers = [Worker(timeout, memory_limit_mb) for _ in range(max(jobs, 1))]
    index, exhausted = 0, False
    try:
        while True:
            for slot, worker in enumerate(workers):
                if worker.job is None and not exhausted:
                    made = make(index, slot)
                    if made is None:
                        exhausted = True
                        continue
                    index += 1
                    worker.submit(made[1], made[0])
            busy = [w for w in workers if w.job is not None]
            if not busy:
                return
            streams = [w.proc.stdout for w in busy if w.proc is not None]
            soonest = min(w.started + w.timeout for w in busy) - time.perf_counter()
            ready, _, _ = select.select(streams, [], [], max(soonest, 0.0))
            now = time.perf_counter()
            for worker in busy:
                assert worker.proc is not None
                if worker.proc.stdout in ready or now - worker.started >= worker.timeout:
                    tally.add(worker.job, worker.collect())
                    worker.job = None
    finally:
        for worker in workers:
            worker.stop()


# ---------------------------------------------------------------------------- main


def _report(tally: Tally, wall: float, seeds: Sequence[Seed]) -> None:
    failures = [f for f in tally.failures if f[1]["status"] != "timeout"]
    print(f"inputs tried        {tally.tried} in {wall:.1f} s ({tally.tried / wall:.0f}/s)")
    print(f"read OK             {tally.ok}")
    print(f"refused             {sum(tally.codes.values())}")
    for code, count in tally.codes.most_common():
        print(f"  {code:<34}{count}")
    print(f"other exceptions    {len(failures)}")
    print(f"timeouts            {tally.timeouts}")
    slowest = f" (seed {tally.slowest})" if tally.slowest is not None else ""
    print(f"max time per file   {tally.max_seconds * 1000:.1f} ms{slowest}")
    print(f"peak RSS (worker)   {tally.peak_rss_kb / 1024:.0f} MiB (seed {tally.peak_rss_job})")
    # One example per distinct failure (exception type and where it was raised).
    distinct: dict[str, list[tuple[Any, dict[str, Any]]]] = {}
    for job, outcome in tally.failures:
        distinct.setdefault(_signature(outcome), []).append((job, outcome))
    for signature, examples in list(distinct.items())[:10]:
        job, outcome = examples[0]
        print(f"\n{signature}: {len(examples)} inputs, first seed {job}")
        print(f"  reproduce: python benchmarks/fuzz_readers.py --reproduce {job}")
        if "traceback" in outcome:
            print("  " + outcome["traceback"].rstrip().replace("\n", "\n  "))


def _signature(outcome: dict[str, Any]) -> str:
    """Exception type and the last ``File ..., line ...`` of its traceback."""
    error = str(outcome.get("error", outcome["status"]))
    where = [line.strip() for line in outcome.get("traceback", "").splitlines()]
    frames = [line for line in where if line.startswith("File ")]
    return f"{error.split(':')[0]} at {frames[-1] if frames else '?'}"


def _case_for(seed: int, n_seeds: int) -> Case:
    return random_case(random.Random(seed), n_seeds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=10_000, help="inputs to try at most")
    parser.add_argument("--seconds", type=float, default=300.0, help="stop after this long")
    parser.add_argument("--seed", type=int, default=0, help="input i uses seed SEED + i")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-file time cap (s)")
    parser.add_argument("--memory-limit-mb", type=int, default=8192, help="worker RLIMIT_AS")
    parser.add_argument("--kinds", default="dicom,nifti", help="seed kinds: dicom,nifti")
    parser.add_argument("--reproduce", type=int, help="write and read one input in-process")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.memory_limit_mb)
        return 0

    seeds = load_seeds(args.kinds.split(","))
    scratch = Path(tempfile.mkdtemp(prefix="edgemed-fuzz-"))
    if args.reproduce is not None:
        case = _case_for(args.reproduce, len(seeds))
        path = materialise(case, seeds, scratch)
        print(f"seed {args.reproduce}: {seeds[case.seed % len(seeds)].name} {case}")
        print(f"input written to {path}")
        outcome = read_one(path)
        print(outcome.pop("traceback", ""))
        print(outcome)
        return 0 if outcome["status"] in ("ok", "refused") else 1

    deadline = time.perf_counter() + args.seconds
    tally = Tally()

    def make(i: int, slot: int) -> tuple[int, Path] | None:
        if i >= args.iterations or time.perf_counter() >= deadline:
            return None
        seed = args.seed + i
        return seed, materialise(_case_for(seed, len(seeds)), seeds, scratch / f"worker{slot}")

    started = time.perf_counter()
    run_jobs(
        args.jobs,
        make,
        tally,
        timeout=args.timeout,
        memory_limit_mb=args.memory_limit_mb,
    )
    _report(tally, time.perf_counter() - started, seeds)
    shutil.rmtree(scratch, ignore_errors=True)
    return 0 if not tally.failures else 1


if __name__ == "__main__":
    sys.exit(main())
