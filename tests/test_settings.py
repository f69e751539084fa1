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


def test_the_api_honours_edgemed_variables_as_the_cli_does(monkeypatch, ct_small_path, tmp_path):
    """Pipeline.from_bundle resolves EDGEMED_* through the same function as the CLI
    (Options.resolve); explicit arguments still win."""
    from edgemed.errors import InputError, UsageError
    from edgemed.pipeline import Pipeline, demo_bundle
    from edgemed.settings import Options

    monkeypatch.setenv("EDGEMED_ORT_THREADS", "1")
    monkeypatch.setenv("EDGEMED_ID_SALT", "ab" * 16)
    monkeypatch.setenv("EDGEMED_ENGINE_CACHE", str(tmp_path / "cache"))
    opts = Options.resolve()
    assert (opts.threads, opts.id_salt, opts.engine_cache) == (
        1,
        bytes.fromhex("ab" * 16),
        tmp_path / "cache",
    )
    assert Options.resolve(threads=2).threads == 2
    with Pipeline.from_bundle(demo_bundle()) as a, Pipeline.from_bundle(demo_bundle()) as b:
        assert "1 threads" in a.backend.device
        # one salt from the environment: the same input gets the same id in both
        assert a(ct_small_path).provenance["input_id"] == b(ct_small_path).provenance["input_id"]
        assert a.options.engine_cache == tmp_path / "cache"
    monkeypatch.setenv("EDGEMED_MAX_FILE_BYTES", "1000")  # CT_small.dcm is ~39 kB
    with Pipeline.from_bundle(demo_bundle()) as pipe, pytest.raises(InputError) as exc:
        pipe(ct_small_path)
    assert exc.value.code == "INPUT_INVALID"
    monkeypatch.setenv("EDGEMED_BACKEND", "nonsense")
    with pytest.raises(UsageError):
        Pipeline.from_bundle(demo_bundle())
    with Pipeline.from_bundle(demo_bundle(), backend="onnxruntime") as pipe:
        assert pipe.backend.name == "onnxruntime"


def test_reading_an_image_ignores_unrelated_bad_variables(monkeypatch, ct_small_path):
    """read_image resolves only the reader caps: a typo in EDGEMED_LOG_LEVEL must not stop
    a device from reading images; a bad cap still does."""
    from edgemed.errors import UsageError
    from edgemed.io import read_image
    from edgemed.settings import load_limits

    monkeypatch.setenv("EDGEMED_LOG_LEVEL", "LOUD")
    assert read_image(ct_small_path).array.shape == (128, 128)
    monkeypatch.setenv("EDGEMED_MAX_FRAMES", "zero")
    with pytest.raises(UsageError):
        load_limits()
    with pytest.raises(UsageError):
        read_image(ct_small_path)
