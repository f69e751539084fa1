"""Hostile DICOM: transfer-syntax allowlist, geometry bounds, caps, deflate bombs, LUTs.

Also the regression tests for what the mutation fuzzer (test_io_fuzz.py,
benchmarks/fuzz_readers.py) found in the DICOM reader.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.pixels import apply_color_lut, apply_modality_lut
from pydicom.uid import DeflatedExplicitVRLittleEndian

import edgemed.io.dicom as dicom_module
from edgemed.errors import InputError
from edgemed.io.read import read_image
from edgemed.limits import DEFAULT_LIMITS, ReaderLimits
from tests.support import error_code

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ allowlist

ALLOWED = {
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit VR big endian
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE lossless
}


def test_allowlist_is_exactly_the_documented_syntaxes():
    assert {str(uid) for uid in dicom_module.SUPPORTED_TRANSFER_SYNTAXES} == ALLOWED


@pytest.fixture
def decoder_calls(monkeypatch):
    """Records (and forbids) every request for a pixel decoder."""
    calls: list[str] = []

    def refuse(uid):
        calls.append(str(uid))
        raise AssertionError("a pixel decoder was consulted")

    monkeypatch.setattr(dicom_module, "get_decoder", refuse)
    return calls


@pytest.mark.parametrize(
    "uid",
    [
        "1.2.840.10008.1.2.4.201",  # HTJ2K lossless: pydicom has a decoder, we do not list it
        "1.2.840.10008.1.2.4.203",  # HTJ2K
        "1.2.840.10008.1.2.4.100",  # MPEG-2
        "1.2.840.10008.1.2.1.98",  # encapsulated uncompressed
    ],
)
def test_syntaxes_off_the_list_are_refused_before_any_decoder(dicom_copy, decoder_calls, uid):
    def edit(ds):
        ds.file_meta.TransferSyntaxUID = uid

    path = dicom_copy("MR_small_jp2klossless.dcm", edit)  # encapsulated pixel data
    assert error_code(read_image, path, kind=InputError) == "INPUT_UNSUPPORTED_TRANSFER_SYNTAX"
    assert decoder_calls == []


# ------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    "values",
    [
        {"SamplesPerPixel": 0},
        {"BitsAllocated": 0},
        {"BitsStored": 0},
        {"BitsStored": 17},
        {"HighBit": 3},
        {"HighBit": 16},
        {"NumberOfFrames": 0},
        {"NumberOfFrames": -1},
        {"Columns": 0},
    ],
)
def test_geometry_out_of_bounds_is_invalid(dicom_copy, values):
    def edit(ds):
        for keyword, value in values.items():
            setattr(ds, keyword, value)

    assert (
        error_code(read_image, dicom_copy("CT_small.dcm", edit), kind=InputError) == "INPUT_INVALID"
    )


def _peak_bytes(call) -> int:
    """Peak traced allocation while ``call()`` runs (numpy buffers included)."""
    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_sizes_are_computed_without_overflow(dicom_copy, form):
    # 65535 x 65535 x (2**31 - 1) x 3 samples is past 2**64: a wrapped 64-bit product
    # could look small. Python integers do not wrap; the element cap refuses it.
    limits = ReaderLimits(max_frames=2**62)

    def edit(ds):
        ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 65535, 2**31 - 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0

    path = dicom_copy("CT_small.dcm", edit)
    source = form(path)  # bytes are read before the measurement: only parsing counts
    peak = _peak_bytes(lambda: pytest.raises(InputError, read_image, source, limits=limits))
    assert error_code(read_image, form(path), limits=limits, kind=InputError) == "INPUT_INVALID"
    assert peak < 16 << 20


def test_native_length_is_checked_before_allocation(dicom_copy, form):
    def edit(ds):  # 16384 x 16384 x 16 bits = 512 MiB: inside every cap, far past the data
        ds.Rows, ds.Columns = 16384, 16384

    path = dicom_copy("CT_small.dcm", edit)
    source = form(path)
    peak = _peak_bytes(lambda: pytest.raises(InputError, read_image, source))
    assert error_code(read_image, form(path), kind=InputError) == "INPUT_TRUNCATED"
    assert peak < 16 << 20


# ----------------------------------------------------------------------- caps


def test_frame_cap(corpus, form):
    path = corpus / "rtdose.dcm"
    assert read_image(form(path), limits=ReaderLimits(max_frames=15)).array.shape[0] == 15
    code = error_code(read_image, form(path), limits=ReaderLimits(max_frames=14), kind=InputError)
    assert code == "INPUT_INVALID"


def test_decoded_bytes_cap_is_checked_before_decoding(corpus, form, decoder_calls):
    limits = ReaderLimits(max_decompressed_bytes=1024 * 256 * 2 - 1)  # JPEG2000.dcm
    path = corpus / "JPEG2000.dcm"
    assert error_code(read_image, form(path), limits=limits, kind=InputError) == "INPUT_INVALID"
    assert decoder_calls == []


def test_file_size_cap(corpus, dicom_copy, tmp_path, form):
    folder = tmp_path / "series"
    dicom_copy("CT_small.dcm", dest=folder / "a.dcm")
    limits = ReaderLimits(max_file_bytes=1000)
    path = corpus / "CT_small.dcm"
    assert error_code(read_image, form(path), limits=limits, kind=InputError) == "INPUT_INVALID"
    assert error_code(read_image, folder, limits=limits, kind=InputError) == "INPUT_INVALID"
    with pytest.raises(InputError) as excinfo:
        dicom_module.read_dicom(path, limits=limits)  # the reader checks it too
    assert excinfo.value.code == "INPUT_INVALID"


# --------------------------------------------------------------- deflate bombs


def _deflate_bomb(path: Path, inflated: int) -> Path:
    """A Deflated Explicit VR Little Endian file whose dataset inflates to ``inflated``.

    CT_small's header elements, then a Pixel Data element, then zeros. The zeros are
    one fully flushed 1 MiB deflate segment repeated, so the bomb costs nothing to build.
    """
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(body, ds)
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, 0xFFFFFFFE)

    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = head.compress(body.getvalue() + pixel_header) + head.flush(zlib.Z_FULL_FLUSH)
    zeros = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = zeros.compress(bytes(1 << 20)) + zeros.flush(zlib.Z_FULL_FLUSH)
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # an empty last block

    meta = DicomBytesIO()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    pydicom.filewriter.write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    with open(path, "wb") as out:
        out.write(b"\0" * 128 + b"DICM" + meta.getvalue() + stream)
        for _ in range(inflated >> 20):
            out.write(segment)
        out.write(final)
    return path


def _bomb_in_subprocess(bomb: Path, cap: int | None, *, as_bytes: bool = False) -> dict:
    """Read ``bomb`` in a fresh interpreter; the code and its peak RSS growth in KiB.

    ``as_bytes``: the file is read into memory first (before the measurement starts)
    and handed to read_image as bytes.
    """
    code = (
        "import json, pathlib, resource, sys\n"
        "from edgemed.io.read import read_image\n"
        "from edgemed.limits import DEFAULT_LIMITS, ReaderLimits\n"
        f"cap = {cap!r}\n"
        "limits = DEFAULT_LIMITS if cap is None else ReaderLimits(max_decompressed_bytes=cap)\n"
        "from pydicom.data import get_testdata_file\n"
        "from edgemed.errors import InputError\n"
        "read_image(get_testdata_file('image_dfl.dcm'))  # warm: imports, decoders\n"
        f"source = pathlib.Path(sys.argv[1]).read_bytes() if {as_bytes!r} else sys.argv[1]\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    read_image(source, limits=limits)\n"
        "    code = 'READ'\n"
        "except InputError as exc:\n"
        "    code = exc.code\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'code': code, 'growth_kib': after - before}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(bomb)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize("as_bytes", [False, True], ids=["path", "bytes"])
def test_deflate_bomb_is_refused_in_bounded_memory(tmp_path, as_bytes):
    cap = 64 << 20
    bomb = _deflate_bomb(tmp_path / "bomb.dcm", 1 << 30)  # 1 GiB from a 1 MiB file
    assert bomb.stat().st_size < 2 << 20
    result = _bomb_in_subprocess(bomb, cap, as_bytes=as_bytes)
    assert result["code"] == "INPUT_INVALID"
    assert result["growth_kib"] * 1024 < cap // 4  # it never held the inflated data


def test_deflate_bomb_beyond_the_default_cap(tmp_path):
    # Twice the default cap (8 GiB from 8.5 MB): counted up to the cap, then refused.
    bomb = _deflate_bomb(tmp_path / "bomb.dcm", 2 * DEFAULT_LIMITS.max_decompressed_bytes)
    result = _bomb_in_subprocess(bomb, None)
    assert result["code"] == "INPUT_INVALID"
    assert result["growth_kib"] < 64 << 10  # under 64 MiB, against a 4 GiB cap


def test_deflated_file_under_the_cap_reads(corpus, form):
    path = corpus / "image_dfl.dcm"
    roomy = ReaderLimits(max_decompressed_bytes=1 << 20)
    assert read_image(form(path), limits=roomy).array.shape == (512, 512)
    tight = ReaderLimits(max_decompressed_bytes=100 << 10)  # it inflates to ~260 KiB
    assert error_code(read_image, form(path), limits=tight, kind=InputError) == "INPUT_INVALID"


# ------------------------------------------------------------- palette colour


def _palette(dicom_copy, edit):
    return dicom_copy("examples_palette.dcm", edit)


def test_palette_reference_values(corpus):
    ds = pydicom.dcmread(corpus / "examples_palette.dcm")
    assert list(ds.RedPaletteColorLookupTableDescriptor) == [256, 0, 16]
    assert ds.pixel_array.min() == 0 and ds.pixel_array.max() == 255  # the tests rely on it


@pytest.mark.parametrize(
    "damage",
    [
        "fewer_entries",  # stored values beyond the last entry
        "first_mapped",  # stored values before the first entry
        "short_data",  # data shorter than the descriptor says
        "disagree",  # channels with different descriptors
        "bits",  # 12-bit entries
        "missing",  # no table data at all
    ],
)
def test_palette_tables_are_checked(dicom_copy, damage):
    def edit(ds):
        if damage == "fewer_entries":
            ds.RedPaletteColorLookupTableDescriptor = [128, 0, 16]
            ds.GreenPaletteColorLookupTableDescriptor = [128, 0, 16]
            ds.BluePaletteColorLookupTableDescriptor = [128, 0, 16]
            for c in ("Red", "Green", "Blue"):
                data = getattr(ds, f"{c}PaletteColorLookupTableData")
                setattr(ds, f"{c}PaletteColorLookupTableData", data[:256])
        elif damage == "first_mapped":
            for c in ("Red", "Green", "Blue"):
                setattr(ds, f"{c}PaletteColorLookupTableDescriptor", [256, 10, 16])
        elif damage == "short_data":
            ds.RedPaletteColorLookupTableData = ds.RedPaletteColorLookupTableData[:510]
        elif damage == "disagree":
            ds.GreenPaletteColorLookupTableDescriptor = [255, 0, 16]
        elif damage == "bits":
            for c in ("Red", "Green", "Blue"):
                setattr(ds, f"{c}PaletteColorLookupTableDescriptor", [256, 0, 12])
        elif damage == "missing":
            del ds.BluePaletteColorLookupTableData

    assert error_code(read_image, _palette(dicom_copy, edit), kind=InputError) == "INPUT_INVALID"


def _segmented(words: list[int]):
    data = struct.pack(f"<{len(words)}H", *words)

    def edit(ds):
        for c in ("Red", "Green", "Blue"):
            delattr(ds, f"{c}PaletteColorLookupTableData")
            setattr(ds, f"Segmented{c}PaletteColorLookupTableData", data)

    return edit


def test_segmented_palette_reads_like_pydicom(dicom_copy):
    path = _palette(dicom_copy, _segmented([0, 1, 0, 1, 255, 65535]))  # a 256-entry ramp
    image = read_image(path)
    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(image.array, apply_color_lut(ds.pixel_array, ds))


def test_segmented_palette_bomb_is_refused_before_expansion(dicom_copy):
    # 20,000 linear segments of 65,535 entries: 1.3 billion entries if expanded.
    path = _palette(dicom_copy, _segmented([0, 1, 0] + [1, 65535, 65535] * 20000))
    assert error_code(read_image, path, kind=InputError) == "INPUT_INVALID"


def test_segmented_palette_that_points_at_itself_is_refused(dicom_copy):
    # An indirect segment at word 3 whose target is word 3: endless recursion.
    assert (
        error_code(
            read_image, _palette(dicom_copy, _segmented([0, 1, 0, 2, 1, 3, 0])), kind=InputError
        )
        == "INPUT_INVALID"
    )


# ------------------------------------------------------------------ Modality LUT


def _modality_lut(dicom_copy, entries=4096, first=0, bits=16, data_entries=None):
    def edit(ds):
        for keyword in ("RescaleSlope", "RescaleIntercept"):
            if keyword in ds:
                delattr(ds, keyword)
        item = pydicom.Dataset()
        item.LUTDescriptor = [entries % 65536, first, bits]
        item.ModalityLUTType = "US"
        count = entries if data_entries is None else data_entries
        item.add_new(0x00283006, "US", [i // 2 for i in range(count)])  # LUT Data
        ds.ModalityLUTSequence = pydicom.Sequence([item])

    return dicom_copy("MR_small.dcm", edit)  # stored values 127..2145


def test_modality_lut_reads_like_pydicom(dicom_copy):
    path = _modality_lut(dicom_copy)
    ds = pydicom.dcmread(path)
    image = read_image(path)
    np.testing.assert_array_equal(image.array, apply_modality_lut(ds.pixel_array, ds))
    assert image.metadata["modality_lut"] == "sequence"


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"entries": 1000}, "INPUT_INVALID"),  # stored values up to 2145 beyond the table
        ({"first": 200}, "INPUT_INVALID"),  # stored values from 127 before it
        ({"data_entries": 100}, "INPUT_INVALID"),  # data shorter than the descriptor
        ({"bits": 12}, "INPUT_UNSUPPORTED_FORMAT"),
    ],
)
def test_modality_lut_indices_are_checked(dicom_copy, kwargs, code):
    assert error_code(read_image, _modality_lut(dicom_copy, **kwargs), kind=InputError) == code


# --------------------------------------------------------------------- series


def _series(dicom_copy, tmp_path, tweak=None, count=3):
    uid = pydicom.uid.generate_uid()
    for i in range(count):

        def edit(ds, i=i):
            ds.SeriesInstanceUID = uid
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
            x, y, _ = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y, 2.5 * i]
            if tweak is not None:
                tweak(i, ds)

        dicom_copy("CT_small.dcm", edit, dest=tmp_path / "series" / f"{i}.dcm")
    return tmp_path / "series"


def test_series_with_mixed_columns_is_inconsistent(dicom_copy, tmp_path):
    def tweak(i, ds):
        if i == 1:
            ds.PixelData = np.ascontiguousarray(ds.pixel_array[:, :64]).tobytes()
            ds.Columns = 64

    assert (
        error_code(read_image, _series(dicom_copy, tmp_path, tweak), kind=InputError)
        == "INPUT_SERIES_INCONSISTENT"
    )


def test_series_with_a_multiframe_file_is_inconsistent(dicom_copy, tmp_path):
    def tweak(i, ds):
        if i == 2:
            ds.PixelData = ds.PixelData * 2
            ds.NumberOfFrames = 2

    assert (
        error_code(read_image, _series(dicom_copy, tmp_path, tweak), kind=InputError)
        == "INPUT_SERIES_INCONSISTENT"
    )


def test_series_file_count_cap(dicom_copy, tmp_path):
    folder = _series(dicom_copy, tmp_path)
    assert read_image(folder, limits=ReaderLimits(max_frames=3)).array.shape == (3, 128, 128)
    limits = ReaderLimits(max_frames=2)
    assert error_code(read_image, folder, limits=limits, kind=InputError) == "INPUT_INVALID"


# ------------------------------------------------- regressions found by fuzzing


def test_rescale_that_overflows_float32_is_invalid(dicom_copy):
    # Fuzz seed 103457 (693_J2KI.dcm, RescaleSlope -1e38): finite header values whose
    # product is not finite in float32 came back as an image full of -inf.
    def edit(ds):
        ds.RescaleSlope = "-1e38"

    assert (
        error_code(read_image, dicom_copy("CT_small.dcm", edit), kind=InputError) == "INPUT_INVALID"
    )


def test_orientation_with_huge_components_is_invalid(dicom_copy):
    # Fuzz seed 101610 (CT_small.dcm): the norm of (1e308, 0, 0) overflows to inf and the
    # direction matrix came back full of NaN.
    def edit(ds):
        ds.ImageOrientationPatient = [1e308, 0, 0, 0, 1, 0]

    assert (
        error_code(read_image, dicom_copy("CT_small.dcm", edit), kind=InputError) == "INPUT_INVALID"
    )


def test_slice_steps_that_overflow_are_not_a_spacing(dicom_copy, tmp_path):
    # The same overflow class through slice positions: z = +1.7e308 and -1.7e308 are
    # finite, their difference is inf, and an infinite step passed every comparison.
    def tweak(i, ds):
        x, y, _ = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, 1.7e308 * (1 - 2 * i)]

    folder = _series(dicom_copy, tmp_path, tweak, count=2)
    # Refused at the first slice now: a position beyond 10 km is invalid in itself.
    assert error_code(read_image, folder, kind=InputError) == "INPUT_INVALID"


def test_rle_data_too_short_for_its_geometry_is_refused_before_decoding(dicom_copy, tmp_path):
    # Found by benchmarks/fuzz_readers.py (seed 1133521: MR_small_RLE.dcm with Rows 32767,
    # Columns 32768): inside every cap, and pydicom's RLE decoder filled all 2 GiB of the
    # claimed frame before noticing the 7 KB of data could not hold it.
    def edit(ds):
        ds.Rows, ds.Columns = 32767, 32768

    result = _bomb_in_subprocess(dicom_copy("MR_small_RLE.dcm", edit), None)
    assert result["code"] == "INPUT_TRUNCATED"
    assert result["growth_kib"] < 64 << 10


def _patch_after(data: bytes, marker: bytes, offset: int, new: bytes) -> bytes:
    at = data.index(marker) + offset
    return data[:at] + new + data[at + len(new) :]


def test_jpeg2000_frame_claiming_another_size_is_refused_before_decoding(corpus, tmp_path):
    # Found by benchmarks/fuzz_readers.py (seed 2083943: JPEG2000.dcm, one byte of the
    # codestream's SIZ marker changed): Ysiz 1024 -> 394240 made OpenJPEG allocate about
    # 600 MB for a 3 KB file before failing.
    data = (corpus / "JPEG2000.dcm").read_bytes()
    path = tmp_path / "siz.dcm"
    path.write_bytes(_patch_after(data, b"\xff\x4f\xff\x51", 12, (394240).to_bytes(4, "big")))
    result = _bomb_in_subprocess(path, None)
    assert result["code"] == "INPUT_CORRUPT"
    assert result["growth_kib"] < 64 << 10


@pytest.fixture
def decodes(monkeypatch):
    """Records every time a pixel decoder is asked to decode (and lets it)."""
    calls: list[str] = []
    real = dicom_module.get_decoder

    class Spy:
        def __init__(self, uid):
            self.uid, self.decoder = str(uid), real(uid)
            self.is_native, self.is_available = self.decoder.is_native, self.decoder.is_available

        def as_array(self, ds, **kwargs):
            calls.append(self.uid)
            return self.decoder.as_array(ds, **kwargs)

    monkeypatch.setattr(dicom_module, "get_decoder", Spy)
    return calls


@pytest.mark.parametrize(
    ("name", "marker", "offset", "value"),
    [
        ("JPEG2000.dcm", b"\xff\x4f\xff\x51", 12, (394240).to_bytes(4, "big")),  # SIZ Ysiz
        ("SC_rgb_jpeg_dcmtk.dcm", b"\xff\xc0", 5, (65535).to_bytes(2, "big")),  # SOF0 Y
        ("MR_small_jpeg_ls_lossless.dcm", b"\xff\xf7", 5, (65535).to_bytes(2, "big")),  # SOF55
    ],
)
def test_frame_header_is_checked_before_decoding(
    corpus, tmp_path, decodes, name, marker, offset, value
):
    read_image(corpus / name)
    assert len(decodes) == 1  # the spy sees a normal read
    path = tmp_path / name
    path.write_bytes(_patch_after((corpus / name).read_bytes(), marker, offset, value))
    assert error_code(read_image, path, kind=InputError) == "INPUT_CORRUPT"
    assert len(decodes) == 1  # refused before the decoder ran
