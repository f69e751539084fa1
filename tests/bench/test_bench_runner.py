"""The measuring loop on a scripted clock and sample sequence, accuracy comparison, and
real runs of tiny bundles (2D, batched, volume, device-copy hook)."""

from __future__ import annotations

import json
import time

import jsonschema
import numpy as np
import pytest

import edgemed.bench.runner as runner
from edgemed.bench.inputs import from_path, synthetic
from edgemed.bench.report import load_schema
from edgemed.bench.runner import STAGES, BenchOptions, measure, run_bench
from edgemed.errors import UsageError


class Script:
    """A step returning scripted end_to_end times; each call advances a fake clock."""

    def __init__(self, e2e, seconds_per_call=1.0):
        self.e2e = list(e2e)
        self.calls = 0
        self.now = 0.0
        self.dt = seconds_per_call

    def step(self):
        value = self.e2e[min(self.calls, len(self.e2e) - 1)]
        self.calls += 1
        self.now += self.dt
        return {"end_to_end": value, "infer": value / 2}

    def clock(self):
        return self.now


def test_steady_samples_stop_at_the_minimum():
    s = Script([10.0] * 100)
    m = measure(s.step, iterations=6, warmup=2, windows=3, clock=s.clock, time_cap_s=1e9)
    assert m.stable and m.iterations == 6 and s.calls == 8  # warm-up calls not recorded
    assert m.window_size == 2 and m.window_means_ms == [10.0, 10.0, 10.0]
    assert m.samples["infer"] == [5.0] * 6
    assert "last 3 windows of 2 calls agree within 0.0%" in m.reason


def test_measuring_goes_on_until_the_last_windows_agree():
    seq = [10, 10, 30, 30, 50, 50, 20, 20, 20, 20, 20, 20, 99]
    s = Script([float(v) for v in seq])
    m = measure(s.step, iterations=6, windows=3, tolerance_percent=10, clock=s.clock, time_cap_s=99)
    # At 6 calls the windows are 10/30/50, at 8 30/50/20, at 10 50/20/20: unstable.
    assert m.stable and m.iterations == 12
    assert m.window_means_ms == [20.0, 20.0, 20.0] and m.spread_percent == 0.0


def test_time_cap_stops_an_unstable_run_at_a_window_boundary():
    s = Script([10.0 * 1.1**k for k in range(100)])  # drifts 21% per window of 2
    m = measure(s.step, iterations=6, windows=3, time_cap_s=10, clock=s.clock)
    # Verdicts at 6 and 8 calls (6 s, 8 s < 10 s), then 10 calls at 10 s: capped.
    assert not m.stable and m.iterations == 10 and m.elapsed_s == 10
    assert m.reason.startswith("time cap of 10 s reached; last 3 windows of 2 calls differ by")
    assert m.spread_percent == pytest.approx(100 * (1.1**4 - 1), rel=1e-9)
    # A cap inside a window stops there; the verdict uses the complete windows (1-8).
    s = Script([10.0 * 1.1**k for k in range(100)])
    m = measure(s.step, iterations=6, windows=3, time_cap_s=9, clock=s.clock)
    assert not m.stable and m.iterations == 9 and len(m.samples["end_to_end"]) == 9
    assert m.window_means_ms == pytest.approx([10 * 1.1**k * 1.05 for k in (2, 4, 6)])


def test_time_cap_also_bounds_the_minimum():
    s = Script([float(k) for k in range(1, 100)], seconds_per_call=2.0)
    m = measure(s.step, iterations=30, windows=3, time_cap_s=5, clock=s.clock)
    assert m.iterations == 3 and not m.stable  # 6 s >= 5 s
    assert m.reason == (
        "time cap of 5 s reached after 3 of the 30 minimum calls; "
        "the last 3 windows of 1 call differ by 200.0%"
    )
    assert m.window_size == 1 and m.window_means_ms == [1.0, 2.0, 3.0]
    s = Script([7.0] * 10, seconds_per_call=2.0)  # too few calls for 3 windows at all
    m = measure(s.step, iterations=30, windows=3, time_cap_s=3, clock=s.clock)
    assert m.iterations == 2 and m.spread_percent is None and not m.stable
    assert m.reason == "time cap of 3 s reached after 2 of the 30 minimum calls"


def test_progress_callback_and_missing_key():
    s = Script([10.0] * 20)
    seen = []
    measure(
        s.step, iterations=4, windows=2, clock=s.clock, on_step=lambda d, p: seen.append((d, p))
    )
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    with pytest.raises(UsageError):
        measure(lambda: {"infer": 1.0}, iterations=2, windows=2)


@pytest.mark.parametrize(
    "kw",
    [
        {"iterations": 0},
        {"warmup": -1},
        {"windows": 1},
        {"stability_percent": 0},
        {"stability_percent": float("nan")},
        {"time_cap_s": 0},
        {"batches": ()},
        {"batches": (1, 0)},
        {"threads": 0},
        {"precisions": ()},
    ],
)
def test_bad_options_are_usage_errors(kw):
    with pytest.raises(UsageError):
        BenchOptions(**kw)


def test_window_size_splits_the_minimum():
    assert BenchOptions(iterations=30, windows=3).window_size == 10
    assert BenchOptions(iterations=31, windows=3).window_size == 11
    assert BenchOptions(iterations=1, windows=3).window_size == 1


def _check_consistent(config):
    for stage in STAGES:
        s = config["stages"][stage]
        if s is None:
            assert config["absent"][stage]
            continue
        assert (
            s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["p95_ms"] <= s["p99_ms"] <= s["max_ms"]
        )
        assert s["min_ms"] <= s["mean_ms"] <= s["max_ms"]
        assert s["count"] == config["stability"]["iterations"]
    e2e = config["stages"]["end_to_end"]
    assert config["throughput_ips"] == pytest.approx(
        config["images_per_call"] * 1000 / e2e["mean_ms"], rel=1e-3
    )


def test_tiny_run_2d_batches(tiny_doc):
    configs = tiny_doc["configs"]
    assert [(c["precision"], c["batch"], c["images_per_call"]) for c in configs] == [
        ("fp32", 1, 1),
        ("fp32", 2, 2),
    ]
    for c in configs:
        _check_consistent(c)
        assert c["stages"]["h2d"] is None and c["stages"]["d2h"] is None
        assert "no host-to-device copy" in c["absent"]["h2d"]
        assert c["stages"]["read"] is None and "synthetic" in c["absent"]["read"]
        assert c["device_stages"] is None and c["absent"]["device_stages"]
        assert c["accuracy"]["is_reference"] and c["accuracy"]["pixel_agreement"] == 1.0
        assert c["memory"]["peak_rss_mib"] > 10
        assert c["input"]["shape"] == [40, 48] and c["input"]["kind"] == "synthetic"


def test_volume_input_is_one_call_and_read_is_timed(seg_bundle, tmp_path):
    vol = np.random.default_rng(0).normal(0, 300, (3, 20, 24)).astype(np.float32)
    np.save(tmp_path / "vol.npy", vol)
    opts = BenchOptions(iterations=2, warmup=0, windows=2, time_cap_s=0.2, batches=(2,), threads=1)
    doc = run_bench(seg_bundle, [from_path(tmp_path / "vol.npy", 1)], opts)
    (c,) = doc["configs"]
    _check_consistent(c)
    assert c["images_per_call"] == 3 and c["input"]["label"] == "input 1"
    assert c["stages"]["read"]["count"] >= 2
    assert "vol.npy" not in str(doc)  # file names may identify patients: never reported


def test_precision_the_bundle_lacks_is_a_usage_error(seg_bundle):
    with pytest.raises(UsageError) as err:
        run_bench(seg_bundle, [synthetic("32")], BenchOptions(precisions=("int8",)))
    assert err.value.code == "USAGE_PRECISION_MISSING"


def test_device_copy_hook_fills_h2d_d2h_and_device_stages(seg_bundle, monkeypatch, tiny_opts):
    # A stand-in for a GPU backend: same model, plus the documented last_stage_ms hook.
    real = runner.create_backend

    def with_hook(*args, **kw):
        backend = real(*args, **kw)
        backend.last_stage_ms = lambda: {
            "h2d": 0.25,
            "d2h": 0.5,
            "device_infer": 0.125,
            "device_h2d": 0.0,  # too fast for the timer: no throughput, no Infinity
        }
        return backend

    monkeypatch.setattr(runner, "create_backend", with_hook)
    doc = run_bench(seg_bundle, [synthetic("32")], tiny_opts)
    c = doc["configs"][0]
    assert c["stages"]["h2d"]["p50_ms"] == 0.25 and c["stages"]["d2h"]["max_ms"] == 0.5
    assert c["device_stages"]["infer"]["mean_ms"] == 0.125
    assert c["device_stages"]["h2d"]["throughput_ips"] is None
    jsonschema.Draft202012Validator(load_schema()).validate(json.loads(json.dumps(doc)))
    assert "h2d" not in c["absent"] and "device_stages" not in c["absent"]


def test_end_to_end_contains_an_infer_call(seg_bundle, monkeypatch, tiny_opts):
    # A backend whose infer takes at least 30 ms (sleep never returns early): both the
    # infer stage and end_to_end (which runs the pipeline, infer included) must too,
    # and every iteration calls infer exactly once: the stages are the pipeline's own
    # timings of the end_to_end call, not a second pass through a copy of its loop.
    real = runner.create_backend
    calls = []

    def slow(*args, **kw):
        backend = real(*args, **kw)
        inner = backend.infer

        def infer(feeds):
            calls.append(1)
            time.sleep(0.03)
            return inner(feeds)

        backend.infer = infer
        return backend

    monkeypatch.setattr(runner, "create_backend", slow)
    opts = BenchOptions(iterations=2, warmup=1, windows=2, time_cap_s=10, threads=1)
    (c,) = run_bench(seg_bundle, [synthetic("32")], opts)["configs"]
    st = c["stages"]
    assert st["infer"]["min_ms"] >= 30 and st["end_to_end"]["min_ms"] >= 30
    n = c["stability"]["iterations"] + c["stability"]["warmup"]
    assert len(calls) == 1 + n  # + the fp32 reference run for accuracy
    assert st["end_to_end"]["min_ms"] >= st["infer"]["min_ms"]


@pytest.mark.parametrize(
    ("task", "metric"), [("classification", "top1_agreement"), ("embedding", "cosine")]
)
def test_other_tasks_run_and_compare(tiny_bundle, tiny_opts, task, metric):
    doc = run_bench(tiny_bundle(task), [synthetic("24x20")], tiny_opts)
    for c in doc["configs"]:
        _check_consistent(c)
        assert c["accuracy"]["metric"] == metric and c["accuracy"]["is_reference"]
    assert doc["bundle"]["task"] == task
