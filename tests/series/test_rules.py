"""The ``series`` block: parsing, round trip, refusals; which descriptions may be shown."""

from __future__ import annotations

import pytest

from edgemed.errors import BundleError, UsageError
from edgemed.io.series_rules import RULES, SeriesRules, safe_description
from edgemed.settings import Options


def test_block_round_trips():
    block = {
        "modalities": ["CT"],
        "image_type": ["ORIGINAL", "PRIMARY"],
        "orientation": "axial",
        "orientation_tolerance_deg": 10,
        "min_slices": 20,
        "slice_thickness": [0.5, 3.0],
    }
    rules = SeriesRules.from_dict(block)
    assert rules.modalities == ("CT",) and rules.image_type == ("ORIGINAL", "PRIMARY")
    assert (rules.orientation, rules.min_slices, rules.slice_thickness) == ("axial", 20, (0.5, 3))
    assert rules.to_dict() == block
    assert SeriesRules.from_dict(rules.to_dict()) == rules
    assert SeriesRules.from_dict({}).to_dict() == {}  # nothing set: nothing written
    assert SeriesRules.from_dict({"orientation": None, "slice_thickness": None}) == SeriesRules()


@pytest.mark.parametrize(
    "block",
    [
        {"orientaton": "axial"},  # a typo must not drop the rule silently
        {"orientation": "transverse"},
        {"modalities": ["ct"]},
        {"modalities": "CT"},
        {"image_type": ["ORIGINAL", 1]},
        {"image_type": ["original"]},
        {"min_slices": 0},
        {"min_slices": 2.5},
        {"min_slices": True},
        {"slice_thickness": [3.0, 1.0]},
        {"slice_thickness": [1.0]},
        {"slice_thickness": [-1.0, 1.0]},
        {"slice_thickness": [1.0, float("nan")]},
        {"orientation_tolerance_deg": 60},
        [],
    ],
)
def test_bad_blocks_are_bundle_invalid(block):
    with pytest.raises(BundleError) as excinfo:
        SeriesRules.from_dict(block)
    assert excinfo.value.code == "BUNDLE_INVALID"
    assert "series" in excinfo.value.message


def test_constructor_refuses_bad_values_as_usage():
    with pytest.raises(UsageError):
        SeriesRules(orientation="oblique")


def test_pipeline_rules_take_the_bundles_modalities_unless_any_modality():
    plain = SeriesRules.for_pipeline(None, ("CT",))
    assert plain == SeriesRules(modalities=("CT",))
    own = SeriesRules(modalities=("MR",), min_slices=3)
    assert SeriesRules.for_pipeline(own, ("CT",)) == own  # the block's own list wins
    assert SeriesRules.for_pipeline(own, ("CT",), check_modality=False).modalities == ()
    assert set(RULES) == {"modality", "image_type", "orientation", "min_slices", "slice_thickness"}


@pytest.mark.parametrize(
    "text",
    ["Routine Brain", "AX T2 FLAIR", "Scout", "CHEST 5MM B30f", "Cervical OBLI 1", "0.5 sec SOFT"],
)
def test_protocol_descriptions_show(text):
    assert safe_description(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "Doe^Archibald",  # a name
        "SMITH JOHN CHEST",  # a name among protocol words
        "CT 20240101",  # a date
        "ACC 123456",  # an accession number
        "SmartScore - Gated 0.5 sec",  # a word outside the vocabulary
        "Brain J",  # an initial
        "Brain " * 20,  # too long
        "Thorax Müller",  # not ASCII
        "",
        None,
        5,
    ],
)
def test_anything_else_is_withheld(text):
    assert safe_description(text) is None


def test_options_take_a_series_uid_from_the_environment():
    uid = "1.2.826.0.1.3680043.8.498.1"
    assert Options.resolve({"EDGEMED_SERIES": uid}).series == uid
    assert Options.resolve({"EDGEMED_SERIES": uid}, series="1.2.3").series == "1.2.3"
    assert Options.resolve({}).series is None
    with pytest.raises(UsageError):
        Options(series="1.2.3 4")
    with pytest.raises(UsageError):
        Options.resolve({"EDGEMED_SERIES": "x" * 65})
