"""The readers' caps: a ReaderLimits passed to read_image (or resolved from EDGEMED_MAX_*),
per format and for every form of input; no module globals."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest

import edgemed.io
import edgemed.io.read as read_module
from edgemed.errors import InputError, UsageError
from edgemed.io.read import read_image
from edgemed.limits import DEFAULT_LIMITS, ReaderLimits
from tests.support import error_code

IO_PACKAGE = Path(edgemed.io.__file__).parent
OLD_GLOBALS = ("MAX_FILE_BYTES", "MAX_DECOMPRESSED_BYTES", "MAX_FRAMES", "MAX_ELEMENTS")


def test_caps_are_a_documented_frozen_object_not_module_globals():
    assert DEFAULT_LIMITS.max_file_bytes == 2**32 + 2**24
    assert DEFAULT_LIMITS.max_decompressed_bytes == 2**32
    assert DEFAULT_LIMITS.max_frames == 2**14
    assert DEFAULT_LIMITS.max_elements == 2**31
    for name in OLD_GLOBALS:
        assert name not in read_module.__all__
        assert not hasattr(read_module, name)
    assert ":class:`~edgemed.limits.ReaderLimits`" in read_module.__doc__
    with pytest.raises(AttributeError):  # frozen: nothing can change them in place
        DEFAULT_LIMITS.max_frames = 1  # type: ignore[misc]


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import statement in a source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return found


def test_no_reader_imports_the_read_module_and_no_private_names_cross_modules():
    modules = sorted(IO_PACKAGE.glob("*.py"))
    assert len(modules) >= 10
    for path in modules:
        for module, names in _imports(path):
            if path.name not in ("read.py", "__init__.py"):
                assert module != "edgemed.io.read", path.name  # the old import cycle
            if module.startswith("edgemed."):
                assert not [n for n in names if n.startswith("_")], (path.name, module)
    repo = IO_PACKAGE.parents[1]
    for path in [*repo.glob("edgemed/**/*.py"), *repo.glob("tests/**/*.py")]:
        for module, names in _imports(path):
            if module == "edgemed.io.dicom":
                assert not [n for n in names if n.startswith("_")], path


def test_setting_the_old_globals_changes_nothing(corpus, monkeypatch):
    # The CLI once set the caps with setattr(read, "MAX_...", value): no cap comes from
    # such attributes any more, so setting them is harmless.
    for name in OLD_GLOBALS:
        monkeypatch.setattr(read_module, name, 1, raising=False)
    assert read_image(corpus / "CT_small.dcm", limits=DEFAULT_LIMITS).array.shape == (128, 128)


@pytest.fixture
def one_of_each(corpus, tmp_path) -> list[Path]:
    nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)).to_filename(tmp_path / "v.nii")
    cv2.imwrite(str(tmp_path / "p.png"), np.zeros((64, 64), np.uint8) + 7)
    np.save(tmp_path / "a.npy", np.zeros((64, 64), np.float32))
    return [corpus / "CT_small.dcm", tmp_path / "v.nii", tmp_path / "p.png", tmp_path / "a.npy"]


def test_file_size_cap_applies_to_every_format_and_form(one_of_each, form):
    small = ReaderLimits(max_file_bytes=80)  # every file here is larger
    for path in one_of_each:
        exact = ReaderLimits(max_file_bytes=path.stat().st_size)
        assert read_image(form(path), limits=exact).array.size > 0, path
        code = error_code(read_image, form(path), limits=small, kind=InputError)
        assert code == "INPUT_INVALID", path
        one_less = ReaderLimits(max_file_bytes=path.stat().st_size - 1)
        code = error_code(read_image, form(path), limits=one_less, kind=InputError)
        assert code == "INPUT_INVALID", path


def test_caps_come_from_the_environment_when_no_limits_are_given(one_of_each, monkeypatch):
    monkeypatch.setenv("EDGEMED_MAX_FILE_BYTES", "80")
    for path in one_of_each:
        assert error_code(read_image, path, kind=InputError) == "INPUT_INVALID", path
        data = path.read_bytes()
        assert error_code(read_image, data, kind=InputError) == "INPUT_INVALID", path
        assert read_image(data, limits=DEFAULT_LIMITS).array.size > 0  # given wins
    monkeypatch.setenv("EDGEMED_MAX_FILE_BYTES", "lots")
    assert error_code(read_image, one_of_each[0], kind=UsageError) == "USAGE"


def test_limits_must_be_a_reader_limits(corpus):
    with pytest.raises(UsageError):
        read_image(corpus / "CT_small.dcm", limits={"max_file_bytes": 80})


class _Stream:
    """A binary stream that cannot seek (a socket, a pipe) and counts what it hands out."""

    def __init__(self, data: bytes) -> None:
        self._data, self.given = io.BytesIO(data), 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._data.read(size)
        self.given += len(chunk)
        return chunk


def test_a_stream_is_read_only_one_byte_past_the_cap(corpus):
    data = (corpus / "CT_small.dcm").read_bytes()
    stream = _Stream(data)
    limits = ReaderLimits(max_file_bytes=1000)
    assert error_code(read_image, stream, limits=limits, kind=InputError) == "INPUT_INVALID"
    assert stream.given == 1001
    image = read_image(_Stream(data), limits=DEFAULT_LIMITS)
    np.testing.assert_array_equal(image.array, read_image(corpus / "CT_small.dcm").array)


def test_a_seekable_file_beyond_the_cap_is_refused_unread(corpus):
    class Counting(io.BytesIO):
        given = 0

        def read(self, size=-1):
            chunk = super().read(size)
            Counting.given += len(chunk)
            return chunk

    handle = Counting((corpus / "CT_small.dcm").read_bytes())
    limits = ReaderLimits(max_file_bytes=1000)
    assert error_code(read_image, handle, limits=limits, kind=InputError) == "INPUT_INVALID"
    assert Counting.given == 0


def _png_claiming(width: int, height: int) -> bytes:
    data = bytearray(cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1].tobytes())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")  # IHDR; CRC not redone
    return bytes(data)


def test_png_header_size_is_capped_before_decoding(tmp_path, form):
    (tmp_path / "claim.png").write_bytes(_png_claiming(2**31 - 1, 2**31 - 1))
    code = error_code(read_image, form(tmp_path / "claim.png"), kind=InputError)
    assert code == "INPUT_INVALID"


def test_png_decoded_bytes_cap(tmp_path, form):
    cv2.imwrite(str(tmp_path / "p.png"), np.zeros((64, 64), np.uint16))
    exact = ReaderLimits(max_decompressed_bytes=64 * 64 * 2)
    assert read_image(form(tmp_path / "p.png"), limits=exact).array.shape == (64, 64)
    tight = ReaderLimits(max_decompressed_bytes=64 * 64 * 2 - 1)
    code = error_code(read_image, form(tmp_path / "p.png"), limits=tight, kind=InputError)
    assert code == "INPUT_INVALID"


def test_npy_element_cap(tmp_path, form):
    np.save(tmp_path / "a.npy", np.zeros((64, 64), np.float32))
    exact = ReaderLimits(max_elements=64 * 64)
    assert read_image(form(tmp_path / "a.npy"), limits=exact).array.shape == (64, 64)
    tight = ReaderLimits(max_elements=64 * 64 - 1)
    code = error_code(read_image, form(tmp_path / "a.npy"), limits=tight, kind=InputError)
    assert code == "INPUT_INVALID"
