"""Series chosen by a pipeline (the bundle's rules, its modalities, ``Options.series``)
and by ``edgemed run FOLDER --series UID`` in a real subprocess."""

from __future__ import annotations

import json

import pytest

import edgemed
from edgemed.errors import InputError
from edgemed.io.series_rules import SeriesRules
from edgemed.pipeline import Pipeline
from edgemed.settings import Options
from tests.cli_run import cli
from tests.support import error_code


@pytest.fixture
def study(make_series, tmp_path):
    """A folder with two CT series (3 and 5 slices) and an MR one (7 slices)."""
    _, three = make_series("study/three", 3)
    _, five = make_series("study/five", 5)
    _, mr = make_series("study/mr", 7, Modality="MR")
    return tmp_path / "study", {"three": three, "five": five, "mr": mr}


def _pipe(**options):
    return Pipeline.from_bundle(
        edgemed.demo_bundle(), "onnxruntime", options=Options.resolve({}, threads=1, **options)
    )


def test_pipeline_rules_skip_other_modalities_and_take_the_largest(study, caplog):
    folder, uids = study
    with _pipe() as pipe:
        result = pipe(folder)
        assert result.mask.shape == (5, 128, 128)  # the CT bundle: the MR series is skipped
        record = result.image.metadata["series_selection"]
        assert (record["candidates"], record["matching"], record["reason"]) == (3, 2, "most_slices")
        assert "2 series match the rules" in caplog.text
        assert not any(uid in caplog.text for uid in uids.values())
        # The bundle's own block (what Bundle.series_rules carries) decides over the default.
        pipe.bundle.series_rules = SeriesRules(min_slices=6)
        assert error_code(pipe, folder, kind=InputError) == "INPUT_NO_SERIES_MATCH"
        # Its modalities left unset, the bundle's (CT) apply: one match, no warning.
        pipe.bundle.series_rules = SeriesRules(min_slices=4, orientation="axial")
        caplog.clear()
        result = pipe(folder)
        assert result.image.metadata["series_selection"]["reason"] == "only_match"
        assert result.mask.shape == (5, 128, 128) and "series match" not in caplog.text


def test_pipeline_series_option_wins(study):
    folder, uids = study
    with _pipe(series=uids["three"]) as pipe:
        result = pipe(folder)
        assert result.mask.shape == (3, 128, 128)
        assert result.image.metadata["series_selection"]["reason"] == "series_uid"
    # A chosen series of another modality is still refused by the modality check.
    with _pipe(series=uids["mr"]) as pipe:
        assert error_code(pipe, folder, kind=InputError) == "INPUT_MODALITY"
    with _pipe(series=uids["mr"], check_modality=False) as pipe:
        assert pipe(folder).image.modality == "MR"


def test_cli_run_with_series(study, tmp_path):
    folder, uids = study
    proc = cli("run", str(folder), "--series", uids["three"], "--out", str(tmp_path / "a"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert result["input"]["shape"] == [3, 128, 128]
    assert result["input"]["series"]["reason"] == "series_uid"
    assert uids["three"] not in proc.stderr + proc.stdout
    # Without it: the largest CT series, and a warning that says so (ids hashed).
    proc = cli("run", str(folder), "--out", str(tmp_path / "b"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "b" / "result.json").read_text())["input"]["shape"] == [
        5,
        128,
        128,
    ]
    warning = [line for line in proc.stderr.splitlines() if "series match the rules" in line]
    assert len(warning) == 1 and warning[0].startswith("edgemed WARNING edgemed.io.series:")
    assert not any(uid in proc.stderr for uid in uids.values())


def test_instances_read_by_the_pipeline_as_its_folder(study):
    """A series received as instances (serve's parts, Triton's rows, the listener's
    files) passes the same rules and gets the same record, id included, as the folder
    holding just it; one failing the rules is refused with the folder's code."""
    folder, _ = study
    five = sorted((folder / "five").iterdir())
    mr = [p.read_bytes() for p in sorted((folder / "mr").iterdir())]
    with _pipe(id_salt=b"s" * 16) as pipe:
        image, order = pipe.read_series([p.read_bytes() for p in reversed(five)])
        assert image.array.shape == (5, 128, 128) and order == [4, 3, 2, 1, 0]
        record = image.metadata["series_selection"]
        assert record == pipe(folder / "five").image.metadata["series_selection"]
        assert record["reason"] == "only_match" and record["slices"] == 5
        assert error_code(pipe.read_series, mr, kind=InputError) == "INPUT_MODALITY"
        assert pipe.read_series(mr, check_modality=False)[0].modality == "MR"
