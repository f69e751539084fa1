from __future__ import annotations

from pathlib import Path

import pytest

from edgemed.errors import UsageError
from edgemed.limits import ReaderLimits
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


def test_reader_caps_parse_and_reject_bad_values():
    s = load_settings({"EDGEMED_MAX_FILE_BYTES": "1000", "EDGEMED_MAX_FRAMES": "8"})
    assert (s.limits.max_file_bytes, s.limits.max_frames) == (1000, 8)
    assert s.limits.max_elements == ReaderLimits().max_elements
    assert load_settings({}).limits == ReaderLimits()
    with pytest.raises(UsageError):
        load_settings({"EDGEMED_MAX_ELEMENTS": "-1"})


def test_salt_cache_and_trusted_key():
    s = load_settings(
        {
            "EDGEMED_ID_SALT": "00" * 16,
            "EDGEMED_ENGINE_CACHE": " /var/cache/edgemed ",
            "EDGEMED_TRUSTED_KEY": "keys/public_key.pem",
        }
    )
    assert s.id_salt == bytes(16)
    assert s.engine_cache == Path("/var/cache/edgemed")
    assert s.trusted_key == Path("keys/public_key.pem")
    blank = load_settings(
        {"EDGEMED_ID_SALT": " ", "EDGEMED_ENGINE_CACHE": "", "EDGEMED_TRUSTED_KEY": " "}
    )
    assert (blank.id_salt, blank.engine_cache, blank.trusted_key) == (None, None, None)


@pytest.mark.parametrize("salt", ["00" * 15, "zz" * 16, "0" * 33])
def test_short_or_non_hex_salt_is_a_usage_error(salt):
    with pytest.raises(UsageError, match="EDGEMED_ID_SALT"):
        load_settings({"EDGEMED_ID_SALT": salt})
