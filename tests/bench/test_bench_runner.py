"""The measuring loop on a scripted clock and sample sequence, accuracy comparison, and
real runs of tiny bundles (2D, batched, volume, device-copy hook)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time

import jsonschema
import numpy as np
import pytest

import edgemed.bench.runner as runner
from edgemed.bench.inputs import from_path, synthetic
from edgemed.bench.report import csv_text, load_schema, markdown, table
from edgemed.bench.runner import STAGES, BenchOptions, measure, run_bench
from edgemed.bench.stats import PERCENTILES, min_samples, nearest_rank
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


def test_warmup_counts_against_the_time_cap():
    # 1 s per call, cap 4 s: warm-up stops after the call that reaches half the cap (2 of
    # the 5 asked), measuring gets the rest (2 calls). Before, 5 warm-up calls ran
    # outside the cap: 9 s for a 4 s cap.
    s = Script([10.0] * 100)
    m = measure(s.step, iterations=30, warmup=5, windows=3, time_cap_s=4, clock=s.clock)
    assert s.calls == 4 and (m.warmup_calls, m.warmup_s) == (2, 2.0)
    assert m.iterations == 2 and m.elapsed_s == 2.0 and not m.stable
    assert m.reason == (
        "time cap of 4 s reached after 2 of the 30 minimum calls; "
        "warm-up stopped after 2 of 5 calls (2 s, 50% of the cap)"
    )
    # A fast model keeps its whole warm-up and still stops at the cap.
    s = Script([10.0 * 1.1**k for k in range(1000)], seconds_per_call=0.1)
    m = measure(s.step, iterations=6, warmup=5, windows=3, time_cap_s=3, clock=s.clock)
    assert m.warmup_calls == 5 and m.warmup_s == pytest.approx(0.5)
    assert m.warmup_s + m.elapsed_s == pytest.approx(3.0) and s.calls == 30
    assert "warm-up stopped" not in m.reason


def test_a_call_longer_than_the_cap_makes_one_warmup_and_one_measured_call():
    s = Script([5000.0] * 10, seconds_per_call=5.0)
    m = measure(s.step, iterations=30, warmup=5, windows=3, time_cap_s=3, clock=s.clock)
    assert s.calls == 2 and m.warmup_calls == 1 and m.iterations == 1
    s = Script([5000.0] * 10, seconds_per_call=5.0)
    m = measure(s.step, iterations=30, warmup=0, windows=3, time_cap_s=3, clock=s.clock)
    assert s.calls == 1 and m.iterations == 1 and m.warmup_s == 0


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
    n = config["stability"]["iterations"]
    for stage in STAGES:
        s = config["stages"][stage]
        if s is None:
            assert config["absent"][stage]
            continue
        # A percentile is there exactly when there are enough calls for it.
        for p in PERCENTILES:
            assert (s[f"p{p}_ms"] is None) == (n < min_samples(p)), (stage, p, n)
        figures = [s[k] for k in ("min_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms")]
        figures = [v for v in figures if v is not None]
        assert figures == sorted(figures)
        assert s["min_ms"] <= s["mean_ms"] <= s["max_ms"]
        assert s["count"] == n
    assert ("percentiles" in config["absent"]) == (n < 100)
    e2e = config["stages"]["end_to_end"]
    assert config["throughput_ips"] == pytest.approx(
        config["images_per_call"] * 1000 / e2e["mean_ms"], rel=1e-3
    )
    # The overhead share is per call, from the two timings of each call.
    e, i = (np.asarray(config["samples_ms"][k]) for k in ("end_to_end", "infer"))
    shares = np.sort((e - i) / e)
    ovh = config["overhead"]
    assert ovh["count"] == n == e.size == i.size and (shares >= 0).all() and (shares < 1).all()
    assert ovh["min"] == pytest.approx(shares[0], abs=1e-3)
    assert ovh["max"] == pytest.approx(shares[-1], abs=1e-3)
    for p in PERCENTILES:
        want = nearest_rank(shares, p) if n >= min_samples(p) else None
        assert ovh[f"p{p}"] == (None if want is None else pytest.approx(want, abs=1e-3))


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
    doc = run_bench(seg_bundle, [synthetic("32")], opts)
    (c,) = doc["configs"]
    st = c["stages"]
    assert st["infer"]["min_ms"] >= 30 and st["end_to_end"]["min_ms"] >= 30
    n = c["stability"]["iterations"] + c["stability"]["warmup"]
    # No extra reference call: the fp32 configuration's own result is the reference.
    assert len(calls) == n and doc["reference"]["extra_calls"] == 0
    assert c["accuracy"]["is_reference"] and c["accuracy"]["pixel_agreement"] == 1.0
    assert st["end_to_end"]["min_ms"] >= st["infer"]["min_ms"]


def _slow_backend(monkeypatch, delays_s, calls=None):
    """Every backend created by bench sleeps ``delays_s[k % len]`` in its k-th infer call
    (sleep never returns early: a floor on infer, and so on end_to_end)."""
    real = runner.create_backend
    calls = [] if calls is None else calls

    def slow(*args, **kw):
        backend = real(*args, **kw)
        inner = backend.infer

        def infer(feeds):
            time.sleep(delays_s[len(calls) % len(delays_s)])
            calls.append(1)
            return inner(feeds)

        backend.infer = infer
        return backend

    monkeypatch.setattr(runner, "create_backend", slow)
    return calls


def test_time_cap_bounds_a_slow_configuration_warmup_included(seg_bundle, monkeypatch):
    # 50 ms per call, 50 warm-up calls asked for, cap 0.6 s: before, warm-up alone took
    # 2.5 s outside the cap. Now warm-up stops at 0.3 s and the whole configuration
    # takes the cap plus at most the call in flight.
    calls = _slow_backend(monkeypatch, [0.05])
    opts = BenchOptions(iterations=1000, warmup=50, windows=3, time_cap_s=0.6, threads=1)
    doc = run_bench(seg_bundle, [synthetic("32")], opts)
    (c,) = doc["configs"]
    st = c["stability"]
    assert 1 <= st["warmup"] <= 7 and "warm-up stopped after" in st["reason"]
    assert 0.3 <= st["warmup_s"] < 0.3 + 0.2
    assert 0.6 <= st["warmup_s"] + st["elapsed_s"] < 0.6 + 0.2
    assert len(calls) == st["warmup"] + st["iterations"]  # and nothing outside the cap
    assert doc["elapsed_s"] < 0.6 + 0.2 + 1.0  # + loading a 1 KB model, generously
    _check_consistent(c)
    # About 5 measured calls: a median, no p90..p99 (they would be the maximum).
    assert 2 <= st["iterations"] < 10
    assert c["stages"]["end_to_end"]["p50_ms"] >= 50 and c["stages"]["end_to_end"]["p90_ms"] is None
    assert c["absent"]["percentiles"].startswith(f"{st['iterations']} calls measured: too few")
    jsonschema.Draft202012Validator(load_schema()).validate(json.loads(json.dumps(doc)))


def test_one_measured_call_reports_no_percentile(seg_bundle, monkeypatch, tmp_path):
    _slow_backend(monkeypatch, [0.05])
    opts = BenchOptions(iterations=30, warmup=5, windows=3, time_cap_s=0.02, threads=1)
    doc = run_bench(seg_bundle, [synthetic("32")], opts)
    (c,) = doc["configs"]
    assert (c["stability"]["warmup"], c["stability"]["iterations"]) == (1, 1)
    for s in (v for v in c["stages"].values() if v is not None):
        assert s["count"] == 1 and s["min_ms"] == s["max_ms"]
        assert [s[f"p{p}_ms"] for p in PERCENTILES] == [None] * 4
    assert c["overhead"]["p50"] is None and c["overhead"]["min"] == c["overhead"]["max"]
    assert c["absent"]["percentiles"].startswith("1 call measured: too few for p50, p90")
    jsonschema.Draft202012Validator(load_schema()).validate(json.loads(json.dumps(doc)))
    # The reports say "—", never a number, for what was not measured.
    row = table(doc).splitlines()[2]
    assert row.split()[8:12] == ["—", "—", "—", "1"]  # e2e p50, p90, p99, calls
    assert f"| {c['name']} | 1 | — | — | — |" in markdown(doc)
    rows = csv.DictReader(io.StringIO(csv_text(doc)))
    (e2e_row,) = [r for r in rows if r["stage"] == "end_to_end"]
    assert e2e_row["count"] == "1" and float(e2e_row["min_ms"]) >= 50
    assert [e2e_row[f"p{p}_ms"] for p in PERCENTILES] == [""] * 4
    assert e2e_row["overhead_p50"] == "" and "too few" in e2e_row["absent_reason"]


def test_overhead_is_each_calls_own_share(seg_bundle, monkeypatch):
    # Calls alternate a 2 ms and a 40 ms model: the per-call share outside infer differs
    # a lot between them, and its distribution is of those shares (checked against the
    # raw per-call samples in _check_consistent), never a ratio of two averages.
    _slow_backend(monkeypatch, [0.002, 0.04])
    opts = BenchOptions(iterations=12, warmup=1, windows=2, time_cap_s=30, threads=1)
    (c,) = run_bench(seg_bundle, [synthetic("32")], opts)["configs"]
    _check_consistent(c)
    ovh = c["overhead"]
    assert ovh["count"] >= 12 and ovh["p90"] is not None and ovh["p99"] is None
    assert 0 <= ovh["min"] <= ovh["p50"] <= ovh["p90"] <= ovh["max"] < 1
    assert ovh["definition"].startswith("per measured call")
    assert "overhead_fraction" not in c


def test_the_reference_is_fp32s_own_result_or_one_call_per_input(two_precisions, monkeypatch):
    calls = _slow_backend(monkeypatch, [0.0])
    opts = BenchOptions(iterations=2, warmup=1, windows=2, time_cap_s=10, threads=1)
    # fp32 is not measured: one separate fp32 call per input, outside the cap, reported.
    only16 = dataclasses.replace(opts, precisions=("fp16",))
    doc = run_bench(two_precisions, [synthetic("32"), synthetic("20x24")], only16)
    ref = doc["reference"]
    assert ref["extra_calls"] == 2 and ref["source"].startswith("a separate fp32 run")
    measured = sum(c["stability"]["warmup"] + c["stability"]["iterations"] for c in doc["configs"])
    assert len(calls) == measured + 2
    for c in doc["configs"]:  # other weights under the fp16 name: a real comparison
        assert not c["accuracy"]["is_reference"] and c["accuracy"]["pixel_agreement"] < 1.0
    # Both asked for, fp16 first: fp32 (the reference) runs first, no extra call.
    calls.clear()
    both = dataclasses.replace(opts, precisions=("fp16", "fp32"))
    doc = run_bench(two_precisions, [synthetic("32")], both)
    assert [c["precision"] for c in doc["configs"]] == ["fp32", "fp16"]
    assert doc["reference"]["extra_calls"] == 0
    measured = sum(c["stability"]["warmup"] + c["stability"]["iterations"] for c in doc["configs"])
    assert len(calls) == measured
    fp32, fp16 = doc["configs"]
    assert fp32["accuracy"]["pixel_agreement"] == 1.0 and fp16["accuracy"]["pixel_agreement"] < 1


@pytest.mark.parametrize(
    ("task", "metric"), [("classification", "top1_agreement"), ("embedding", "cosine")]
)
def test_other_tasks_run_and_compare(tiny_bundle, tiny_opts, task, metric):
    doc = run_bench(tiny_bundle(task), [synthetic("24x20")], tiny_opts)
    for c in doc["configs"]:
        _check_consistent(c)
        assert c["accuracy"]["metric"] == metric and c["accuracy"]["is_reference"]
    assert doc["bundle"]["task"] == task
