"""Series chosen by rules in folders built from CT_small.dcm with edited headers: each
rule, the tie-break, the geometry codes, a DICOMDIR written by pydicom, privacy."""

from __future__ import annotations

import math

import numpy as np
import pydicom
import pytest
from pydicom.fileset import FileSet

from edgemed.errors import InputError
from edgemed.io.read import read_image
from edgemed.io.series_rules import SeriesRules
from edgemed.io.series_select import list_series
from edgemed.limits import ReaderLimits
from tests.series.conftest import SALT
from tests.support import error_code

ANY = SeriesRules()


def _chosen(folder, rules=ANY, **kw):
    image = read_image(folder, rules=rules, salt=SALT, **kw)
    return image, image.metadata["series_selection"]


def test_several_series_in_subfolders_take_the_largest(make_series, tmp_path, caplog):
    make_series("study/a", 3)
    _, big = make_series("study/b/c", 6)
    (tmp_path / "study" / "notes.txt").write_text("not DICOM")
    image, record = _chosen(tmp_path / "study")
    assert image.array.shape == (6, 128, 128)
    assert (record["reason"], record["candidates"], record["matching"]) == ("most_slices", 2, 2)
    assert image.metadata["ignored_files"] == 3 + 1
    assert "2 series match the rules" in caplog.text and record["id"] in caplog.text
    assert big not in caplog.text


def test_a_tie_takes_the_smaller_uid_whatever_the_salt(make_series, tmp_path):
    uids = [make_series(f"t/{name}", 4)[1] for name in ("x", "y")]
    first = min(uids)
    for salt in (SALT, b"another salt 16b"):
        image = read_image(tmp_path / "t", rules=ANY, salt=salt)
        ids = {c.id: c for c in list_series(tmp_path / "t", salt=salt)}
        assert image.metadata["series_selection"]["id"] in ids
        assert (
            read_image(tmp_path / "t", series_uid=first, salt=salt).metadata["series_selection"][
                "id"
            ]
            == image.metadata["series_selection"]["id"]
        )


def test_too_few_slices_is_no_match_with_the_failed_rule(make_series, tmp_path):
    make_series("few", 3)
    with pytest.raises(InputError) as excinfo:
        read_image(tmp_path / "few", rules=SeriesRules(min_slices=4), salt=SALT)
    assert excinfo.value.code == "INPUT_NO_SERIES_MATCH"
    assert "CT 3 slice(s) axial fails min_slices" in excinfo.value.message


def test_image_type_takes_the_original_series(make_series, tmp_path):
    make_series("it/derived", 6, ImageType=["DERIVED", "SECONDARY", "MPR"])
    make_series("it/original", 3)
    image, record = _chosen(tmp_path / "it", SeriesRules(image_type=("ORIGINAL", "PRIMARY")))
    assert image.num_slices == 3 and record["reason"] == "only_match"
    _, record = _chosen(tmp_path / "it", SeriesRules(image_type=("DERIVED",)))
    assert record["slices"] == 6


def test_slice_thickness_range(make_series, tmp_path):
    make_series("th/thick", 6, SliceThickness=5.0)
    make_series("th/thin", 3, SliceThickness=1.25)
    make_series("th/none", 5, edit=lambda ds, k: delattr(ds, "SliceThickness"))
    image, _ = _chosen(tmp_path / "th", SeriesRules(slice_thickness=(0.5, 2.0)))
    assert image.num_slices == 3
    _, record = _chosen(tmp_path / "th", SeriesRules(slice_thickness=(5.0, 5.0)))  # inclusive
    assert record["slices"] == 6
    with pytest.raises(InputError) as excinfo:
        read_image(tmp_path / "th", rules=SeriesRules(slice_thickness=(2.0, 3.0)), salt=SALT)
    assert excinfo.value.message.count("fails slice_thickness") == 3  # none: fails too


def _tilted(degrees: float):
    """Rows along x, columns tilted about x by ``degrees``; slices stacked along the
    tilted normal (a real oblique grid, not a shear)."""
    t = math.radians(degrees)
    col = [0.0, math.cos(t), math.sin(t)]
    normal = np.cross([1.0, 0.0, 0.0], col)

    def edit(ds, k):
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, *col]
        ds.ImagePositionPatient = [float(v) for v in normal * 2.5 * k]

    return edit


def test_orientation_by_the_normal_with_a_tolerance(make_series, tmp_path):
    def coronal(ds, k):
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.ImagePositionPatient = [0.0, 3.0 * k, 0.0]

    make_series("o/coronal", 6, edit=coronal)
    make_series("o/axial", 3)
    make_series("o/angled", 4, edit=_tilted(15.0))
    image, record = _chosen(tmp_path / "o", SeriesRules(orientation="coronal"))
    assert image.num_slices == 6 and record["reason"] == "only_match"
    _, record = _chosen(tmp_path / "o", SeriesRules(orientation="axial"))
    assert (record["slices"], record["matching"]) == (4, 2)  # 15 degrees is axial at 20
    _, record = _chosen(
        tmp_path / "o", SeriesRules(orientation="axial", orientation_tolerance_deg=10)
    )
    assert (record["slices"], record["matching"]) == (3, 1)
    planes = {
        c.slices: c.orientation
        for c in list_series(tmp_path / "o", rules=SeriesRules(orientation_tolerance_deg=10))
    }
    assert planes == {6: "coronal", 3: "axial", 4: "oblique"}


def test_gantry_tilt_is_its_own_code(make_series, tmp_path):
    # Planes stay axial but each slice is shifted in y: a sheared stack (tilted gantry).
    make_series(
        "tilt", 5, edit=lambda ds, k: setattr(ds, "ImagePositionPatient", [0.0, 1.5 * k, 2.5 * k])
    )
    assert error_code(read_image, tmp_path / "tilt", rules=ANY) == "INPUT_GANTRY_TILT"


def test_a_missing_slice_is_a_gap(make_series, tmp_path):
    z = [0.0, 2.5, 7.5, 10.0, 12.5]
    make_series("gap", 5, edit=lambda ds, k: setattr(ds, "ImagePositionPatient", [0.0, 0.0, z[k]]))
    with pytest.raises(InputError) as excinfo:
        read_image(tmp_path / "gap", rules=ANY)
    assert excinfo.value.code == "INPUT_SLICE_GAP"
    assert "1 of 4 steps" in excinfo.value.message


def test_mixed_orientation_in_one_series(make_series, tmp_path):
    def edit(ds, k):
        if k == 2:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]

    make_series("mixed", 4, edit=edit)
    assert error_code(read_image, tmp_path / "mixed", rules=ANY) == "INPUT_MIXED_ORIENTATION"
    [candidate] = list_series(tmp_path / "mixed")
    assert candidate.orientation == "mixed"


def test_a_written_dicomdir_limits_the_choice_to_its_records(make_series, tmp_path):
    small, small_uid = make_series("src/small", 3)
    large, _ = make_series("src/large", 5)
    fileset = FileSet()
    for folder in (small, large):
        for path in sorted(folder.iterdir()):
            fileset.add(pydicom.dcmread(path))
    media = tmp_path / "media"
    fileset.write(media)
    assert (media / "DICOMDIR").is_file()
    # A larger series beside the DICOMDIR but not in it is not read.
    extra, _ = make_series("media/EXTRA", 7)
    image, record = _chosen(media)
    assert image.num_slices == 5 and record["candidates"] == 2
    np.testing.assert_array_equal(image.array, read_image(large).array)
    image, record = _chosen(media / "DICOMDIR", series_uid=small_uid)
    assert image.num_slices == 3 and record["reason"] == "series_uid"


def test_hidden_folders_are_not_read(make_series, tmp_path):
    make_series("h/series", 3)
    make_series("h/.staging", 6)
    _, record = _chosen(tmp_path / "h")
    assert (record["slices"], record["candidates"]) == (3, 1)


def test_the_file_cap_holds_for_the_tree(make_series, tmp_path):
    make_series("cap/a", 2)
    make_series("cap/b/c", 2)
    limits = ReaderLimits(max_frames=3)
    with pytest.raises(InputError) as excinfo:
        read_image(tmp_path / "cap", rules=ANY, limits=limits)
    assert excinfo.value.code == "INPUT_INVALID" and "max_frames" in excinfo.value.message


def test_descriptions_that_may_be_patient_data_never_show(make_series, tmp_path, caplog):
    make_series("d/named", 2, SeriesDescription="Doe^Jane 1970")
    make_series("d/protocol", 2, SeriesDescription="AX 2.5MM SOFT")
    with pytest.raises(InputError) as excinfo:
        read_image(tmp_path / "d", rules=SeriesRules(min_slices=3), salt=SALT)
    message = str(excinfo.value)
    assert "'AX 2.5MM SOFT'" in message
    assert "Doe" not in message and "1970" not in message and "Jane" not in caplog.text


def test_no_image_at_all_is_an_empty_series(tmp_path):
    (tmp_path / "e" / "sub").mkdir(parents=True)
    (tmp_path / "e" / "sub" / "a.txt").write_text("text")
    assert error_code(read_image, tmp_path / "e", rules=ANY) == "INPUT_EMPTY_SERIES"


def test_a_dicomdir_may_not_reach_outside_its_folder(make_series, tmp_path):
    series, _ = make_series("src/s", 2)
    fileset = FileSet()
    for path in sorted(series.iterdir()):
        fileset.add(pydicom.dcmread(path))
    fileset.write(tmp_path / "media")
    # The records' first folder becomes a link to a folder elsewhere on the disk.
    patient = next(p for p in (tmp_path / "media").iterdir() if p.is_dir())
    patient.rename(tmp_path / "elsewhere")
    patient.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(InputError) as excinfo:
        read_image(tmp_path / "media", rules=ANY)
    assert excinfo.value.code == "INPUT_INVALID" and "outside" in excinfo.value.message


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # pydicom, writing the file
def test_a_modality_that_is_not_a_code_is_not_shown(make_series, tmp_path):
    make_series("m", 2, Modality="Doe Jane")
    with pytest.raises(InputError) as excinfo:
        read_image(tmp_path / "m", rules=SeriesRules(modalities=("CT",)), salt=SALT)
    assert excinfo.value.code == "INPUT_MODALITY"
    assert "? 2 slice(s) axial fails modality" in excinfo.value.message
    assert "Doe" not in str(excinfo.value)
