from __future__ import annotations

import pytest

from edgemed.errors import UsageError
from edgemed.settings import load_settings


def test_defaults_and_values():
    assert load_settings({}).backend == "auto"
    s = load_settings(
        {"EDGEMED_ORT_THREADS": "3", "EDGEMED_LOG_LEVEL": "debug", "EDGEMED_BACKEND": "onnxruntime"}
    )
    assert (s.ort_threads, s.log_level, s.backend) == (3, "DEBUG", "onnxruntime")


@pytest.mark.parametrize(
    "env",
    [{"EDGEMED_ORT_THREADS": "0"}, {"EDGEMED_ORT_THREADS": "x"}, {"EDGEMED_LOG_LEVEL": "LOUD"}],
)
def test_bad_values_are_usage_errors(env):
    with pytest.raises(UsageError):
        load_settings(env)
