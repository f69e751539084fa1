"""Mutation fuzzing of the DICOM and NIfTI readers over real test files (hypothesis).

Seeds are pydicom's and nibabel's own test files (and a few files derived from them,
see ``benchmarks/fuzz_readers.py``); each input is a seed with one to four mutations:
byte flips and sets, insertions, deletions, truncations, splices, and header fields
(Rows, Columns, BitsAllocated, NumberOfFrames, the transfer syntax, LUT descriptors,
NIfTI dim, datatype, vox_offset, scl_slope...) set to extreme values.

Each input must be read (an image that keeps MedicalImage's conventions) or refused with
an EdgemedError, from its path and from its bytes alike: the bytes give the same image
(digest) or the same code, and their errors name no path (see tests/io/fuzz_forms.py).
Reads run in a worker subprocess with a per-file time cap, below read_image's catch-all
boundary: any other exception, a native crash of the worker and a timeout all fail the
test, and hypothesis then shrinks the input to a minimal one.

Deterministic for CI: hypothesis derandomized, no example database. Together the two
fuzz tests try DICOM_EXAMPLES + NIFTI_EXAMPLES (>= 2,000) inputs in well under a
minute. The long run is ``python benchmarks/fuzz_readers.py --seconds 300``.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.io.fuzz_forms import FormsWorker, fuzz

DICOM_EXAMPLES = 2400
NIFTI_EXAMPLES = 1000
PER_FILE_TIMEOUT = 10.0  # seconds; the slowest mutated input seen so far reads in < 1 s


_POSITION = st.integers(0, 2**24)
_OP = st.one_of(
    st.tuples(st.just("flip"), _POSITION, st.booleans(), st.integers(1, 255)),
    st.tuples(st.just("set"), _POSITION, st.booleans(), st.integers(0, 255)),
    st.tuples(st.just("insert"), _POSITION, st.booleans(), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), _POSITION, st.booleans(), st.integers(1, 64)),
    st.tuples(st.just("truncate"), _POSITION, st.booleans()),
    st.tuples(st.just("splice"), _POSITION, st.booleans(), _POSITION, st.integers(1, 256)),
    # Header fields twice as often: they reach the checks behind the parsers.
    st.tuples(st.just("field"), st.integers(0, 63), st.integers(0, 4095)),
    st.tuples(st.just("field"), st.integers(0, 63), st.integers(0, 4095)),
)


def _cases(n_seeds: int) -> st.SearchStrategy:
    return st.builds(
        fuzz.Case,
        seed=st.integers(0, n_seeds - 1),
        ops=st.lists(_OP, min_size=1, max_size=4).map(tuple),
        target=st.integers(0, 2),
        inner=st.booleans(),
    )


@pytest.fixture(scope="module")
def worker():
    reader = FormsWorker(timeout=PER_FILE_TIMEOUT, memory_limit_mb=8192)
    yield reader
    reader.stop()


def _verdict(outcome: dict) -> tuple:
    """What must agree between forms: read (and the image's digest) or the error code."""
    return outcome["status"], outcome.get("code"), outcome.get("digest")


def _fuzz(kind: str, examples: int, worker, directory: Path) -> None:
    seeds = fuzz.load_seeds([kind])
    tally = fuzz.Tally()
    compared: Counter[str] = Counter()  # what the bytes read was held to

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(case=_cases(len(seeds)))
    def read_or_refuse(case) -> None:
        path = fuzz.materialise(case, seeds, directory)
        worker.submit(path, case)
        outcome = worker.collect()
        tally.add(case, outcome)
        seed = seeds[case.seed % len(seeds)].name
        assert outcome["status"] in ("ok", "refused"), f"{seed}: {outcome}"
        # The same input from bytes: the path read's outcome, or where the path read went
        # by the file's extension, that of a file without one (bytes have no name).
        expected = outcome if outcome["bytes_expected"] == "path" else outcome["noext"]
        got = outcome["bytes"]
        assert _verdict(got) == _verdict(expected), f"{seed} {case}: {expected} vs bytes {got}"
        assert got.get("named") is None, f"{seed}: an error about bytes named a path"
        compared[outcome["bytes_expected"]] += 1

    started = time.perf_counter()
    read_or_refuse()
    wall = time.perf_counter() - started
    print(
        f"\n{kind}: {tally.tried} inputs in {wall:.1f} s: {tally.ok} read, "
        f"refused {dict(tally.codes)}, slowest {tally.max_seconds * 1000:.0f} ms, "
        f"worker peak RSS {tally.peak_rss_kb // 1024} MiB; bytes read compared with "
        f"{dict(compared)}"
    )
    assert tally.tried >= examples
    assert tally.ok > examples // 20 and sum(tally.codes.values()) > examples // 2
    assert tally.peak_rss_kb < 1 << 20  # KiB: no input made the worker reach 1 GiB
    assert compared["path"] > examples // 2  # mostly held to the path read itself


def test_mutated_dicom_is_read_or_refused(worker, tmp_path):
    _fuzz("dicom", DICOM_EXAMPLES, worker, tmp_path)


def test_mutated_nifti_is_read_or_refused(worker, tmp_path):
    _fuzz("nifti", NIFTI_EXAMPLES, worker, tmp_path)


def test_ci_budget_is_at_least_two_thousand_inputs():
    assert DICOM_EXAMPLES + NIFTI_EXAMPLES >= 2000


# ----------------------------------------------------- the fuzzer is not vacuous


def _field_index(keyword: str) -> int:
    return next(i for i, f in enumerate(fuzz.DICOM_FIELDS) if f[0] == keyword)


@pytest.mark.parametrize(
    ("keyword", "pick", "expected"),
    [
        ("Rows", 6, 0xFFFF),
        ("BitsAllocated", 0, 0),
        ("NumberOfFrames", 7, 2147483648),
        ("TransferSyntaxUID", 13, "1.2.840.10008.1.2.4.201"),
    ],
)
def test_field_splices_land_on_the_element(corpus, keyword, pick, expected):
    seed = "rtdose.dcm" if keyword == "NumberOfFrames" else "CT_small.dcm"
    data = (corpus / seed).read_bytes()
    mutated = fuzz.apply_op(data, ("field", _field_index(keyword), pick), "dicom")
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(mutated), force=True)
    holder = ds.file_meta if keyword == "TransferSyntaxUID" else ds
    assert getattr(holder, keyword) == expected


def test_nifti_field_splices_land_on_the_header():
    import nibabel as nib
    import numpy as np

    seed = fuzz.load_seeds(["nifti"])[0]  # anatomical.nii
    index = next(
        i for i, f in enumerate(fuzz.NIFTI_FIELDS) if f[0] == "dim" and f[1] == 0
    )  # dim[0]
    mutated = fuzz.apply_op(seed.files[0], ("field", index, 6), "nifti")  # values[6] == 7
    order = "<" if int.from_bytes(mutated[:4], "little") == 348 else ">"  # it is big endian
    header = np.frombuffer(mutated[:348], nib.nifti1.header_dtype.newbyteorder(order))[0]
    assert header["dim"][0] == 7


@pytest.mark.parametrize("name", ["flip", "set", "insert", "delete", "truncate", "splice"])
def test_byte_mutations_change_the_bytes(corpus, name):
    data = (corpus / "CT_small.dcm").read_bytes()
    op = {
        "flip": ("flip", 200, True, 0x10),
        "set": ("set", 200, True, (data[200] + 1) % 256),
        "insert": ("insert", 200, True, b"xy"),
        "delete": ("delete", 200, True, 3),
        "truncate": ("truncate", 200, True),
        "splice": ("splice", 200, True, 1000, 16),
    }[name]
    assert fuzz.apply_op(data, op, "dicom") != data
