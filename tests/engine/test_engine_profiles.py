"""Optimisation profiles from the bundle's dynamic axes, with overrides."""

from __future__ import annotations

import pytest

from edgemed.backends.tensorrt.profiles import DEFAULT_BATCH, Profile, derive_profile, parse_range
from edgemed.bundle import TensorInfo
from edgemed.errors import UsageError


def test_demo_bundle_default_profile(demo):
    assert demo.input.shape == ("batch", 3, 256, 256)
    p = derive_profile(demo.input)
    assert p.input == "image"
    assert p.min == (DEFAULT_BATCH[0], 3, 256, 256)
    assert p.opt == (DEFAULT_BATCH[1], 3, 256, 256)
    assert p.max == (DEFAULT_BATCH[2], 3, 256, 256)
    assert p.canonical() == "image:1x3x256x256/8x3x256x256/8x3x256x256"


def test_batch_override(demo):
    p = derive_profile(demo.input, {"batch": "1:4:16"})
    assert (p.min[0], p.opt[0], p.max[0]) == (1, 4, 16)
    assert p.min[1:] == p.opt[1:] == p.max[1:] == (3, 256, 256)


def test_single_number_fixes_an_axis(demo):
    p = derive_profile(demo.input, {"batch": "1"})
    assert p.min == p.opt == p.max == (1, 3, 256, 256)
    p = derive_profile(TensorInfo("x", (1, 1, "h", "w")), {"h": "64", "w": "32:64:128"})
    assert (p.min, p.max) == ((1, 1, 64, 32), (1, 1, 64, 128))


def test_all_dynamic_axes_need_ranges_beyond_the_first():
    t = TensorInfo("x", ("n", 1, "height", "width"))
    with pytest.raises(UsageError, match="height"):
        derive_profile(t)
    p = derive_profile(t, {"batch": "1:2:4", "height": "64:128:256", "width": "64:128:512"})
    assert p.min == (1, 1, 64, 64) and p.opt == (2, 1, 128, 128) and p.max == (4, 1, 256, 512)
    assert p.axes == ("n", None, "height", "width")


@pytest.mark.parametrize(
    "overrides",
    [
        {"batch": "8:1:4"},  # opt below min
        {"batch": "1:8:4"},  # opt above max
        {"batch": "0:1:2"},  # zero
        {"batch": "2:4:8"},  # the pipeline sends single images: the batch starts at 1
        {"batch": "8"},  # 8:8:8, the same
        {"batch": "-1:1:2"},
        {"batch": "1:2"},  # two parts
        {"batch": "a:b:c"},
        {"batch": ""},
        {"channels": "1:2:3"},  # no such axis
        {"3": "1:1:1"},
    ],
)
def test_bad_overrides_are_usage_errors(demo, overrides):
    with pytest.raises(UsageError):
        derive_profile(demo.input, overrides)


def test_fixed_batch_has_no_range():
    t = TensorInfo("x", (1, 3, 32, 32))
    assert derive_profile(t).min == (1, 3, 32, 32)
    with pytest.raises(UsageError, match="fixed"):
        derive_profile(t, {"batch": "1:2:4"})


def test_parse_range():
    assert parse_range(" 1:4:8 ", "b") == (1, 4, 8)
    assert parse_range("3", "b") == (3, 3, 3)


def test_profile_round_trip_and_contains(demo):
    p = derive_profile(demo.input, {"batch": "1:2:4"})
    q = Profile.from_dict(p.to_dict())
    assert q.canonical() == p.canonical()
    assert p.contains((3, 3, 256, 256)) and p.contains((1, 3, 256, 256))
    assert not p.contains((5, 3, 256, 256)) and not p.contains((1, 3, 256))
    with pytest.raises(ValueError):
        Profile.from_dict({"input": "x", "min": [1.5], "opt": [1], "max": [1]})
