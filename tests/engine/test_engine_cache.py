"""The engine cache: keys, sidecars, verification before deserialization, atomic 0600."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat

import pytest

from edgemed.backends.tensorrt.cache import KEY_FIELDS, EngineCache, EngineKey
from edgemed.backends.tensorrt.profiles import derive_profile
from edgemed.errors import BackendError, OutputError
from edgemed.fsutil import write_private

PLAN = bytes(range(256)) * 64 + b"plain TensorRT plan bytes"


class Spy:
    """Stands in for ``runtime.deserialize_cuda_engine``: records what reaches it."""

    def __init__(self):
        self.calls: list[bytes] = []

    def __call__(self, plan: bytes) -> str:
        self.calls.append(bytes(plan))
        return "engine"


@pytest.fixture
def profile(demo):
    return derive_profile(demo.input)


@pytest.fixture
def key(demo, profile):
    return EngineKey(
        onnx_sha256=demo.artifact("onnx", "fp16").sha256,
        gpu_name="Orin",
        compute_capability="8.7",
        multiprocessors=16,
        memory_gib=61,
        platform="Linux-aarch64-igpu",
        trt_version="10.3.0.30",
        precision="fp16",
        profile=profile.canonical(),
    )


@pytest.fixture
def server_key(key):
    """The same model on a discrete server GPU (hardware compatibility applies there)."""
    return dataclasses.replace(key, platform="Linux-x86_64-dgpu")


@pytest.fixture
def cache(demo_copy):
    return EngineCache(demo_copy / "engines")


@pytest.fixture
def stored(cache, key, profile):
    cache.store(key, PLAN, profile, extra={"workspace_mib": 256})
    return cache


# -- keys ------------------------------------------------------------------------------


CHANGED = {
    "onnx_sha256": "0" * 64,
    "gpu_name": "NVIDIA H100 80GB HBM3",
    "compute_capability": "9.0",
    "multiprocessors": 8,  # an Orin NX 16GB: "Orin", 8.7 too
    "memory_gib": 15,
    "platform": "Linux-aarch64-dgpu",
    "trt_version": "11.0.0.1",
    "precision": "int8",
    "tf32": True,
    "profile": "image:1x3x256x256/4x3x256x256/16x3x256x256",
    "hardware_compat": "ampere_plus",
}


def test_changed_fields_cover_the_whole_key():
    assert set(CHANGED) == set(KEY_FIELDS) == {f.name for f in dataclasses.fields(EngineKey)}


@pytest.mark.parametrize("field", KEY_FIELDS)
def test_every_key_field_changes_the_key_and_file_names(key, cache, field):
    other = dataclasses.replace(key, **{field: CHANGED[field]})
    assert other.digest != key.digest
    assert cache.plan_path(other) != cache.plan_path(key)
    assert key.differences(other) == [field]


def test_key_is_stable_and_names_the_precision(key):
    again = EngineKey(**key.to_dict())
    assert again.digest == key.digest
    assert len(key.digest) == 64
    assert key.stem == f"fp16-{key.digest[:32]}"


# -- writing ---------------------------------------------------------------------------


def test_store_writes_plain_plan_and_sidecar_mode_0600(stored, key, profile, demo):
    plan_path, sidecar_path = stored.plan_path(key), stored.sidecar_path(key)
    assert plan_path.read_bytes() == PLAN  # no header: a plain TensorRT plan
    for path in (plan_path, sidecar_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    side = json.loads(sidecar_path.read_text())
    assert side["onnx_sha256"] == demo.artifact("onnx", "fp16").sha256
    assert side["gpu_name"] == "Orin" and side["compute_capability"] == "8.7"
    assert side["trt_version"] == "10.3.0.30" and side["precision"] == "fp16"
    assert side["profile"] == {
        "input": "image",
        "min": [1, 3, 256, 256],
        "opt": [8, 3, 256, 256],
        "max": [8, 3, 256, 256],
    }
    assert side["plan_sha256"] == hashlib.sha256(PLAN).hexdigest()
    assert side["plan_bytes"] == len(PLAN)
    assert side["plan"] == plan_path.name
    assert side["created"].endswith("Z") and side["workspace_mib"] == 256
    assert not [p for p in plan_path.parent.iterdir() if p.name.startswith(".tmp-")]


def test_write_private_is_0600_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        path = write_private(tmp_path / "x" / "a.plan", b"abc")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"abc"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_write_private_replaces_atomically_and_fails_typed(tmp_path):
    target = tmp_path / "a.plan"
    write_private(target, b"old")
    write_private(target, b"new")
    assert target.read_bytes() == b"new"
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(OutputError):
        write_private(blocker / "a.plan", b"x")  # parent is a file


# -- verification before deserialization ---------------------------------------------------


def test_verified_plan_reaches_the_deserializer_once_exactly(stored, key):
    spy = Spy()
    assert stored.open(key, spy) == "engine"
    assert spy.calls == [PLAN]


def _expect(cache, key, code):
    spy = Spy()
    with pytest.raises(BackendError) as e:
        cache.open(key, spy)
    assert e.value.code == code
    assert spy.calls == []  # not one byte reached the deserializer
    return e.value


def test_tampered_byte_is_refused(stored, key):
    path = stored.plan_path(key)
    data = bytearray(path.read_bytes())
    data[1000] ^= 0x01
    path.write_bytes(bytes(data))
    _expect(stored, key, "ENGINE_INTEGRITY")


def test_truncated_plan_is_refused(stored, key):
    path = stored.plan_path(key)
    path.write_bytes(path.read_bytes()[:-100])
    _expect(stored, key, "ENGINE_INTEGRITY")


def test_plan_replaced_by_same_size_other_bytes_is_refused(stored, key):
    path = stored.plan_path(key)
    path.write_bytes(bytes(len(PLAN)))
    _expect(stored, key, "ENGINE_INTEGRITY")


def _rewrite_sidecar(cache, key, **changes):
    path = cache.sidecar_path(key)
    side = json.loads(path.read_text())
    side.update(changes)
    path.write_text(json.dumps(side))


@pytest.mark.parametrize(
    ("field", "value"),
    [("gpu_name", "NVIDIA A100"), ("trt_version", "10.13.0.35"), ("precision", "fp32")],
)
def test_plan_built_for_another_setup_is_incompatible(stored, key, field, value):
    # Another setup's engine (sidecar and all) placed under this key's file names.
    _rewrite_sidecar(stored, key, **{field: value})
    err = _expect(stored, key, "ENGINE_INCOMPATIBLE")
    assert value in err.message


def test_sidecar_naming_another_model_is_an_integrity_failure(stored, key):
    _rewrite_sidecar(stored, key, onnx_sha256="ab" * 32)
    _expect(stored, key, "ENGINE_INTEGRITY")


def test_sidecar_with_edited_hash_of_other_plan_is_refused(stored, key):
    _rewrite_sidecar(stored, key, plan_sha256=hashlib.sha256(b"other").hexdigest())
    _expect(stored, key, "ENGINE_INTEGRITY")


@pytest.mark.parametrize("broken", ["{not json", json.dumps({"schema": 99}), json.dumps([])])
def test_unreadable_sidecar_is_an_integrity_failure(stored, key, broken):
    stored.sidecar_path(key).write_text(broken)
    _expect(stored, key, "ENGINE_INTEGRITY")


def test_group_writable_plan_is_not_loaded(stored, key):
    os.chmod(stored.plan_path(key), 0o620)
    _expect(stored, key, "ENGINE_INTEGRITY")


def test_cache_dir_is_created_0700_and_must_not_be_group_writable(stored, key):
    assert stat.S_IMODE(stored.root.stat().st_mode) == 0o700
    os.chmod(stored.root, 0o770)
    _expect(stored, key, "ENGINE_INTEGRITY")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_plan_owned_by_another_user_is_not_loaded(stored, key):
    os.chown(stored.plan_path(key), 4242, -1)
    err = _expect(stored, key, "ENGINE_INTEGRITY")
    assert "owned by another user" in err.message


def test_plan_without_sidecar_is_missing(stored, key):
    stored.sidecar_path(key).unlink()
    _expect(stored, key, "ENGINE_MISSING")


# -- selecting the engine for this GPU and TensorRT --------------------------------------


def test_select_finds_the_exact_key(stored, key):
    assert stored.select(key) == key


def test_select_with_nothing_cached_is_missing(cache, key):
    with pytest.raises(BackendError) as e:
        cache.select(key)
    assert e.value.code == "ENGINE_MISSING"
    assert "edgemed build" in e.value.message and "--precision fp16" in e.value.message


@pytest.mark.parametrize(
    "field",
    ["gpu_name", "compute_capability", "multiprocessors", "memory_gib", "platform", "trt_version"],
)
def test_select_never_reuses_another_gpu_platform_or_tensorrt(stored, key, field):
    other = dataclasses.replace(key, **{field: CHANGED[field]})
    with pytest.raises(BackendError) as e:
        stored.select(other)
    assert e.value.code == "ENGINE_INCOMPATIBLE"
    assert "Orin" in e.value.message and "10.3.0.30" in e.value.message


def test_orin_modules_are_told_apart(stored, key):
    """AGX Orin 64GB, Orin NX 16GB and Orin Nano 8GB all report "Orin", cc 8.7: the
    multiprocessor count and memory keep one's engine from running on another."""
    for sms, gib in ((8, 15), (8, 7), (16, 30)):
        other = dataclasses.replace(key, multiprocessors=sms, memory_gib=gib)
        assert other.digest != key.digest
        with pytest.raises(BackendError) as e:
            stored.select(other)
        assert e.value.code == "ENGINE_INCOMPATIBLE"
        assert "16 SMs, 61 GiB" in e.value.message  # what the cache holds, in words


@pytest.mark.parametrize(
    ("compat", "built_on", "here", "portable"),
    [
        ("ampere_plus", ("NVIDIA A100-SXM4-80GB", "8.0"), ("NVIDIA H100 80GB HBM3", "9.0"), True),
        ("ampere_plus", ("NVIDIA A100-SXM4-80GB", "8.0"), ("Tesla T4", "7.5"), False),
        ("same_compute_capability", ("NVIDIA L4", "8.9"), ("NVIDIA L40S", "8.9"), True),
        ("same_compute_capability", ("NVIDIA L4", "8.9"), ("NVIDIA H100 80GB HBM3", "9.0"), False),
        ("none", ("NVIDIA L4", "8.9"), ("NVIDIA L40S", "8.9"), False),
    ],
)
def test_hardware_compatible_plans_serve_the_gpus_tensorrt_allows(
    cache, server_key, profile, compat, built_on, here, portable
):
    built = dataclasses.replace(
        server_key,
        gpu_name=built_on[0],
        compute_capability=built_on[1],
        multiprocessors=108,
        memory_gib=80,
        hardware_compat=compat,
    )
    cache.store(built, PLAN, profile)
    want = dataclasses.replace(
        server_key, gpu_name=here[0], compute_capability=here[1], multiprocessors=132
    )
    if portable:
        assert cache.select(want) == built
        return
    with pytest.raises(BackendError) as e:
        cache.select(want)
    assert e.value.code == "ENGINE_INCOMPATIBLE"


@pytest.mark.parametrize("compat", ["ampere_plus", "same_compute_capability"])
@pytest.mark.parametrize(
    "here", ["Linux-aarch64-dgpu", "Windows-x86_64-dgpu", "Linux-aarch64-igpu"]
)
def test_a_plan_from_another_platform_is_never_selected(cache, server_key, profile, compat, here):
    """Whatever its compatibility flags: TensorRT plans are not portable across
    platforms, and JetPack's TensorRT has no hardware compatibility at all."""
    built = dataclasses.replace(server_key, hardware_compat=compat)  # Linux-x86_64-dgpu
    cache.store(built, PLAN, profile)
    assert cache.select(server_key) == built  # the same platform: portable
    want = dataclasses.replace(server_key, platform=here)
    with pytest.raises(BackendError) as e:
        cache.select(want)
    assert e.value.code == "ENGINE_INCOMPATIBLE" and "Linux-x86_64-dgpu" in e.value.message
    with pytest.raises(BackendError) as e:
        cache.read_verified(dataclasses.replace(built, platform=here))
    assert e.value.code in ("ENGINE_MISSING", "ENGINE_INCOMPATIBLE")


def test_tf32_is_a_preference_that_the_provenance_reports(stored, key, profile):
    """The runtime wants float32 math; an engine the operator built with --tf32 is used
    when it is the only one (its key says so), and the float32 one wins when both exist."""
    want = dataclasses.replace(key, profile="")
    tf32 = dataclasses.replace(key, tf32=True)
    stored.remove([key])
    stored.store(tf32, PLAN, profile)
    assert stored.select(want).tf32 is True
    stored.store(key, PLAN, profile)
    assert stored.select(want) == key  # neither has the wanted profile: float32 first
    side = json.loads(stored.sidecar_path(tf32).read_text())
    assert side["tf32"] is True and side["schema"] == 2


def _schema1_sidecar(cache, key, profile):
    """What edgemed wrote before this schema: no SMs, memory, platform or TF32 fields."""
    old = {
        "schema": 1,
        "onnx_sha256": key.onnx_sha256,
        "gpu_name": key.gpu_name,
        "compute_capability": key.compute_capability,
        "trt_version": key.trt_version,
        "precision": key.precision,
        "profile": profile.to_dict(),
        "hardware_compat": "none",
        "version_compat": False,
        "plan": "fp16-old.plan",
        "plan_sha256": hashlib.sha256(PLAN).hexdigest(),
        "plan_bytes": len(PLAN),
    }
    cache.ensure_root()
    write_private(cache.root / "fp16-old.plan", PLAN)
    write_private(cache.root / "fp16-old.json", json.dumps(old).encode())
    return old


def test_schema_1_sidecars_are_refused_with_a_rebuild_message(cache, key, profile):
    _schema1_sidecar(cache, key, profile)
    with pytest.raises(BackendError) as e:
        cache.select(key)
    assert e.value.code == "ENGINE_INCOMPATIBLE"
    assert "older edgemed" in e.value.message and "edgemed build" in e.value.message
    assert cache.entries() == []  # never a usable engine
    # one under the very file names of a new key (copied over): refused, not loaded
    write_private(cache.plan_path(key), PLAN)
    cache.sidecar_path(key).write_bytes((cache.root / "fp16-old.json").read_bytes())
    _expect(cache, key, "ENGINE_INCOMPATIBLE")
    # another model's old engine says nothing about this one: just missing
    with pytest.raises(BackendError) as e:
        cache.select(dataclasses.replace(key, onnx_sha256="0" * 64))
    assert e.value.code == "ENGINE_MISSING"


def test_select_ignores_other_models_and_precisions(stored, key):
    for field in ("onnx_sha256", "precision"):
        other = dataclasses.replace(key, **{field: CHANGED[field]})
        with pytest.raises(BackendError) as e:
            stored.select(other)
        assert e.value.code == "ENGINE_MISSING"


def test_select_accepts_another_profile_unless_exact_is_required(stored, key):
    other = dataclasses.replace(key, profile=CHANGED["profile"])
    assert stored.select(other) == key
    with pytest.raises(BackendError) as e:
        stored.select(other, any_profile=False)
    assert e.value.code == "ENGINE_INCOMPATIBLE"


def test_select_prefers_the_wanted_profile(stored, key, profile):
    from edgemed.backends.tensorrt.profiles import Profile

    p2 = Profile("image", (1, 3, 256, 256), (4, 3, 256, 256), (16, 3, 256, 256))
    k2 = dataclasses.replace(key, profile=p2.canonical())
    stored.store(k2, PLAN + b"2", p2)
    assert stored.select(key) == key
    assert stored.select(k2) == k2


def test_select_skips_a_sidecar_whose_plan_is_gone(stored, key):
    stored.plan_path(key).unlink()
    with pytest.raises(BackendError) as e:
        stored.select(key)
    assert e.value.code == "ENGINE_MISSING"


def test_timing_cache_path_is_per_gpu_and_version(cache):
    a = cache.timing_cache_path("NVIDIA H100 80GB HBM3", "9.0", "10.13.0.35")
    b = cache.timing_cache_path("Orin", "8.7", "10.3.0.30")
    assert a != b and a.parent == cache.root
    assert " " not in a.name and a.name.endswith(".cache")


def test_for_bundle_defaults_to_bundle_engines_dir(demo, tmp_path):
    assert EngineCache.for_bundle(demo).root == demo.root / "engines"
    assert EngineCache.for_bundle(demo, tmp_path / "c").root == tmp_path / "c"
