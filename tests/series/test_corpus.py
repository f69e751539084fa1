"""Series chosen by rules over pydicom's real ``dicomdirtests`` tree: 13 series (CT, CR,
MR) of three patients, listed by a DICOMDIR (also in big-endian, implicit, reordered and
offset-less variants)."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pydicom
import pytest

from edgemed.errors import InputError
from edgemed.ids import salted_id
from edgemed.io.read import read_image
from edgemed.io.series_rules import SeriesRules
from edgemed.io.series_select import list_series
from tests.series.conftest import CT2_UID, CT5N_UID, MR700_UID, SALT
from tests.support import error_code

CT = SeriesRules(modalities=("CT",))


def _id(tree, folder: str) -> str:
    ds = pydicom.dcmread(next((tree / folder).iterdir()), stop_before_pixels=True)
    return salted_id(SALT, f"{ds.StudyInstanceUID}\x1f{ds.SeriesInstanceUID}".encode())


def _uids(tree) -> set[str]:
    """Every UID and patient name in the tree's image files (none may leak)."""
    found = set()
    for path in tree.rglob("*"):
        if path.is_file() and path.parent.name[:2] in ("CT", "CR", "MR"):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            found |= {ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}
            found.add(str(ds.PatientName).split("^")[0])
    return found


def test_ct_rules_take_the_largest_ct_series_and_say_so(tree, caplog):
    caplog.set_level(logging.INFO, logger="edgemed")
    image = read_image(tree, rules=CT, salt=SALT)
    expected = read_image(tree / "98892001/CT5N")
    np.testing.assert_array_equal(image.array, expected.array)
    assert image.spacing == expected.spacing
    record = image.metadata["series_selection"]
    assert record == {
        "id": _id(tree, "98892001/CT5N"),
        "slices": 5,
        "candidates": 13,
        "matching": 3,  # CT5N, CT2 (4 slices) and the 2-slice scout
        "reason": "most_slices",
    }
    assert image.metadata["ignored_files"] == 31 - 5  # the DICOMDIR's other files
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and record["id"] in warned[0].getMessage()
    assert _id(tree, "77654033/CT2") in warned[0].getMessage()  # the others, hashed
    assert not any(uid in caplog.text for uid in _uids(tree))


def test_strict_rules_leave_one_match_without_a_warning(tree, caplog):
    rules = SeriesRules.from_dict(
        {
            "modalities": ["CT"],
            "image_type": ["ORIGINAL", "PRIMARY"],
            "orientation": "axial",
            "min_slices": 5,
            "slice_thickness": [2.0, 3.0],
        }
    )
    image = read_image(tree, rules=rules, salt=SALT)
    assert image.array.shape == (5, 16, 16)
    record = image.metadata["series_selection"]
    assert (record["reason"], record["matching"]) == ("only_match", 1)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    "name",
    ["DICOMDIR", "DICOMDIR-bigEnd", "DICOMDIR-implicit", "DICOMDIR-reordered", "DICOMDIR-nooffset"],
)
def test_every_dicomdir_variant_gives_the_same_choice(tree, name):
    image = read_image(tree / name, rules=CT, salt=SALT)
    assert image.metadata["series_selection"]["id"] == _id(tree, "98892001/CT5N")
    np.testing.assert_array_equal(image.array, read_image(tree / "98892001/CT5N").array)


def test_a_broken_dicomdir_is_corrupt_and_a_plain_read_is_unchanged(tree):
    assert error_code(read_image, tree / "DICOMDIR-nopatient", rules=CT) == "INPUT_CORRUPT"
    # Without rules or a UID a DICOMDIR is the file it always was; a folder, one series.
    assert error_code(read_image, tree / "DICOMDIR") == "INPUT_NO_PIXEL_DATA"
    assert error_code(read_image, tree / "98892003/MR2") == "INPUT_MULTIPLE_SERIES"


def test_a_folder_tree_without_dicomdir_is_walked(tree, tmp_path):
    for patient in ("77654033", "98892001"):
        shutil.copytree(tree / patient, tmp_path / "copy" / patient)
    image = read_image(tmp_path / "copy", rules=CT, salt=SALT)
    record = image.metadata["series_selection"]
    assert (record["id"], record["candidates"], record["matching"]) == (
        _id(tree, "98892001/CT5N"),
        6,  # 3 CR, CT2, the scout, CT5N
        3,
    )


@pytest.mark.parametrize(
    ("uid", "code"),
    [
        (CT2_UID, "INPUT_SLICE_GAP"),  # 202 mm between its first two slices
        (MR700_UID, "INPUT_MIXED_ORIENTATION"),  # projections in several planes
        ("1.2.3.4", "INPUT_SERIES_NOT_FOUND"),
    ],
)
def test_a_series_uid_wins_and_its_geometry_is_checked(tree, uid, code):
    assert error_code(read_image, tree, rules=CT, series_uid=uid, salt=SALT) == code


def test_a_series_uid_may_fail_the_rules_and_is_read_with_a_warning(tree, caplog):
    cr1 = pydicom.dcmread(next((tree / "77654033/CR1").iterdir())).SeriesInstanceUID
    image = read_image(tree, rules=CT, series_uid=cr1, salt=SALT)
    assert image.array.shape == (16, 16) and image.modality == "CR"
    record = image.metadata["series_selection"]
    assert (record["reason"], record["failed_rules"]) == ("series_uid", ["modality"])
    assert "fails the rules: modality" in caplog.text and cr1 not in caplog.text


def test_the_listed_id_chooses_as_the_uid_does(tree):
    ids = {c.id for c in list_series(tree, salt=SALT)}
    wanted = _id(tree, "98892001/CT5N")
    assert wanted in ids and len(ids) == 13
    by_id = read_image(tree, series_uid=wanted, salt=SALT)
    by_uid = read_image(tree, series_uid=CT5N_UID, salt=SALT)
    np.testing.assert_array_equal(by_id.array, by_uid.array)
    assert by_id.metadata["series_selection"]["reason"] == "series_uid"


def test_no_match_lists_every_series_hashed_and_nothing_identifying(tree):
    rules = SeriesRules(modalities=("MR",), orientation="axial", min_slices=2)
    with pytest.raises(InputError) as excinfo:
        read_image(tree, rules=rules, salt=SALT)
    err = excinfo.value
    assert err.code == "INPUT_NO_SERIES_MATCH"
    for candidate in list_series(tree, rules=rules, salt=SALT):
        assert candidate.id in err.message
    assert "13 series found" in err.message
    assert f"{_id(tree, '98892003/MR700')} MR 7 slice(s) mixed fails orientation" in err.message
    assert f"{_id(tree, '98892001/CT5N')} CT 5 slice(s) axial fails modality" in err.message
    assert "'Routine Brain'" in err.message  # protocol text shows
    assert "SmartScore" not in err.message  # a word outside the vocabulary does not
    assert not any(uid in str(err) for uid in _uids(tree))


def test_only_other_modalities_is_input_modality(tree):
    assert error_code(read_image, tree, rules=SeriesRules(modalities=("PT",))) == "INPUT_MODALITY"
