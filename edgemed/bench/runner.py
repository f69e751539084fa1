"""``edgemed bench``: per-stage latency of a bundle, measured until it is stable.

Every measured iteration of a configuration (backend x precision x batch x input) is
``read`` (:func:`edgemed.io.read_image` of the input file, when there is one) and then
one :meth:`Pipeline.run_batch` on the decoded image(s): ``end_to_end`` is that call,
in-memory image in, result out, and ``preprocess`` / ``infer`` / ``postprocess`` are the
pipeline's own timings of the same call (:attr:`Pipeline.last_stage_ms`), so they are
of the stages it really ran (CUDA preprocessing where it chose the GPU). Nothing here
copies the pipeline's loop.

A *call* processes ``batch`` copies of a 2D input as one backend call, or every slice
of a volume in chunks of ``batch``; latencies are per call, throughput is images (2D
slices) per second: ``images_per_call * 1000 / mean_ms``.

Host/device copies. ``h2d`` and ``d2h`` exist only where a backend moves data to a
device. Such a backend reports :meth:`Backend.last_stage_ms` (summed over the call's
chunks by the pipeline) with ``h2d`` and ``d2h`` (host wall-clock ms of the copies,
which are part of the ``infer`` call) and, timed by CUDA events, ``device_h2d``,
``device_infer`` and ``device_d2h`` (reported under ``device_stages``). A backend
without it (ONNX Runtime on the CPU) gets ``null`` for those stages and the reason in
``absent``: never a fake zero.

Overhead is per call: each measured call's own ``(end_to_end - infer) / end_to_end``
(both timings of that one call), reported as a distribution (``overhead``: p50, p90,
...). A ratio of two means (or medians) of different calls can come out negative.

Stability (perf_analyzer's rule): the minimum ``iterations`` are split into ``windows``
windows of ``ceil(iterations / windows)`` calls; measuring goes on window by window
until the mean ``end_to_end`` of the last ``windows`` windows agree within
``stability_percent`` (:func:`edgemed.bench.stats.windows_agree`), or until the time
cap; then the result says ``"stable": false`` and why.

Time cap. ``time_cap_s`` bounds each configuration's warm-up and measuring together,
even before the minimum has run (a slow model or a busy machine): warm-up stops early
once it has used half the cap, and measuring stops after the call during which the cap
passes. Every configuration still makes at least one warm-up call (if ``warmup`` > 0)
and one measured call, so one whose single call outlasts the cap takes two calls. Not
in the cap: loading each precision's model (once per precision; a TensorRT engine
build is ``edgemed build``'s job) and, only when fp32 is not among the precisions
measured, the FP32 reference for accuracy: one call per input, timed in
``reference.elapsed_s``. When fp32 is measured, its first configuration's result on each
input is the reference: no extra call. So a run takes about ``configurations x cap``
plus model loading.
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgemed._version import __version__
from edgemed.backends import Backend, create_backend
from edgemed.bench.inputs import BenchInput
from edgemed.bench.monitor import PeakRss, Sensors, device_info
from edgemed.bench.stats import distribution, summarize, too_few, windows_agree
from edgemed.bundle import Bundle
from edgemed.errors import UsageError
from edgemed.io import read_image
from edgemed.pipeline import Pipeline
from edgemed.settings import Options

__all__ = [
    "SCHEMA_VERSION",
    "STAGES",
    "STAGE_DEFINITIONS",
    "WARMUP_SHARE",
    "BenchOptions",
    "Measurement",
    "compare_outputs",
    "measure",
    "run_bench",
]

#: bench.json's schema version (2: ``overhead`` per call replaced ``overhead_fraction``;
#: percentiles from too few calls are null; warm-up counts against the time cap).
SCHEMA_VERSION = 2

#: The most of a configuration's time cap its warm-up may use (it stops after the call
#: that reaches it), so that measuring always keeps the rest.
WARMUP_SHARE = 0.5

#: Stages of every configuration, in pipeline order.
STAGES = ("read", "preprocess", "h2d", "infer", "d2h", "postprocess", "end_to_end")

#: What each stage times (copied into bench.json).
STAGE_DEFINITIONS = {
    "read": "edgemed.io.read_image of the input file or series (OS page cache warm)",
    "preprocess": "the pipeline's preprocessing of the call's slices (CPU or CUDA, as it chose)",
    "h2d": "host-to-device copy of the model input (device backends only)",
    "infer": "Backend.infer: the whole backend call (includes h2d/d2h where they exist)",
    "d2h": "device-to-host copy of the model outputs (device backends only)",
    "postprocess": "the task head: decoding (masks/classes/embeddings) and result assembly",
    "end_to_end": "Pipeline.run_batch on the decoded image(s): in-memory image in, "
    "result out (preprocess + infer + postprocess); the stages are its own timings",
}

_NO_COPY = {
    "h2d": "{backend} computes in host memory: there is no host-to-device copy",
    "d2h": "{backend} computes in host memory: there is no device-to-host copy",
}


@dataclass(frozen=True)
class BenchOptions:
    """What to measure and when to stop.

    Attributes:
        backend: ``auto``, ``onnxruntime`` or ``tensorrt``.
        precisions: artifacts to run; ``None`` means every precision in the bundle.
        batches: batch sizes (slices per backend call).
        iterations: minimum measured calls per configuration (unless the time cap
            comes first).
        warmup: unmeasured calls first (at most, see ``time_cap_s``).
        windows: how many consecutive windows must agree.
        stability_percent: how closely their mean end-to-end latencies must agree.
        time_cap_s: seconds of warm-up and measuring together after which a
            configuration stops, reported unstable (warm-up stops at half of it); see
            the module doc for what it does not cover.
        threads: ONNX Runtime threads (``None``: the backend's default).
        engine_cache: TensorRT engine cache (``None``: ``<bundle>/engines``).
        cuda_graphs: TensorRT: replay a CUDA graph while calls keep one shape.
        check_modality: refuse DICOM inputs whose Modality the bundle does not list
            (``INPUT_MODALITY``); ``False`` runs them anyway (``--any-modality``);
            ``None``: as ``runtime`` says (by default, refuse).
        runtime: the pipeline options the rest come from (default
            :meth:`Options.resolve`, i.e. ``EDGEMED_*``); ``backend``, ``threads``,
            ``engine_cache``, ``cuda_graphs`` and ``check_modality`` above override
            its fields.
    """

    backend: str = "auto"
    precisions: tuple[str, ...] | None = None
    batches: tuple[int, ...] = (1,)
    iterations: int = 30
    warmup: int = 5
    windows: int = 3
    stability_percent: float = 10.0
    time_cap_s: float = 6.0
    threads: int | None = None
    engine_cache: str | os.PathLike[str] | None = None
    cuda_graphs: bool = False
    check_modality: bool | None = None
    runtime: Options | None = None

    @functools.cached_property
    def _runtime(self) -> Options:
        # Resolved once (EDGEMED_*), not per configuration.
        return self.runtime or Options.resolve()

    def options(self, precision: str, batch: int = 1) -> Options:
        """The pipeline options of one configuration."""
        return self._runtime.replace(
            backend=self.backend,
            precision=precision,
            threads=self.threads,
            engine_cache=None if self.engine_cache is None else Path(self.engine_cache),
            cuda_graphs=self.cuda_graphs or None,
            batch_size=batch,
            check_modality=self.check_modality,
        )

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise UsageError("--iterations must be >= 1")
        if self.warmup < 0:
            raise UsageError("--warmup must be >= 0")
        if self.windows < 2:
            raise UsageError("--windows must be >= 2")
        if not (math.isfinite(self.stability_percent) and self.stability_percent > 0):
            raise UsageError("--stability must be a percentage > 0")
        if not (math.isfinite(self.time_cap_s) and self.time_cap_s > 0):
            raise UsageError("--time-cap must be > 0 seconds")
        if not self.batches or any(b < 1 for b in self.batches):
            raise UsageError("--batch sizes must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise UsageError("--threads must be >= 1")
        if self.precisions is not None and not self.precisions:
            raise UsageError("--precision needs at least one precision")

    @property
    def window_size(self) -> int:
        """Calls per window: the minimum iterations split into ``windows`` windows."""
        return max(1, math.ceil(self.iterations / self.windows))

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "engine_cache": None if self.engine_cache is None else str(self.engine_cache),
            "cuda_graphs": self.cuda_graphs,
            "precisions": list(self.precisions) if self.precisions else None,
            "batches": list(self.batches),
            "iterations": self.iterations,
            "warmup": self.warmup,
            "windows": self.windows,
            "window_size": self.window_size,
            "stability_percent": self.stability_percent,
            "time_cap_s": self.time_cap_s,
            "warmup_share_of_cap": WARMUP_SHARE,
            "threads": self.threads,
            "check_modality": self.options("fp32").check_modality,
        }


@dataclass
class Measurement:
    """The samples of one configuration and whether they settled.

    Attributes:
        samples: per stage, one latency (ms) per measured call.
        stable: whether the last windows agreed before the time cap.
        reason: why measuring stopped, in words.
        spread_percent: (max - min) / min of the last windows' means, ``None`` if
            there were not enough windows.
        window_means_ms: means of the last windows (oldest first).
        window_size: calls per window.
        elapsed_s: measuring time (warm-up excluded).
        warmup_calls: warm-up calls made (fewer than asked when the cap cut it short).
        warmup_s: warm-up time; ``warmup_s + elapsed_s`` is what the cap bounds.
    """

    samples: dict[str, list[float]]
    stable: bool
    reason: str
    spread_percent: float | None
    window_means_ms: list[float] = field(default_factory=list)
    window_size: int = 1
    elapsed_s: float = 0.0
    warmup_calls: int = 0
    warmup_s: float = 0.0

    @property
    def iterations(self) -> int:
        return max((len(v) for v in self.samples.values()), default=0)


def measure(
    step: Callable[[], Mapping[str, float]],
    *,
    iterations: int,
    warmup: int = 0,
    windows: int = 3,
    tolerance_percent: float = 10.0,
    time_cap_s: float = 6.0,
    key: str = "end_to_end",
    clock: Callable[[], float] = time.perf_counter,
    on_step: Callable[[int, int], None] | None = None,
) -> Measurement:
    """Call ``step`` until the ``key`` latencies are stable or the time cap is reached.

    Args:
        step: one call; returns milliseconds per stage (``key`` among them).
        iterations: minimum measured calls (split into ``windows`` windows).
        warmup: calls made first and not recorded; warm-up stops early after the call
            that reaches ``WARMUP_SHARE`` of the cap (at least one is made).
        windows: consecutive windows that must agree.
        tolerance_percent: how closely (see :func:`windows_agree`).
        time_cap_s: once warm-up and measuring together have taken this long, stop
            (unstable) after the current call; the verdict is made on the complete
            windows. At least one call is measured.
        key: the stage the rule watches.
        clock: seconds, monotonic (injectable so that tests control time).
        on_step: ``on_step(done, planned)`` after each measured call (progress bars).

    Returns:
        The samples and the verdict.
    """
    begin = clock()
    warmed = 0
    while warmed < warmup:
        step()
        warmed += 1
        if clock() - begin >= WARMUP_SHARE * time_cap_s:
            break  # a slow call: the rest of the cap is for measuring
    start = clock()
    warmup_s = start - begin
    cap = time_cap_s - warmup_s  # what is left of the cap for measuring
    size = max(1, math.ceil(iterations / windows))
    minimum = size * windows  # >= iterations
    samples: dict[str, list[float]] = {}
    n = 0

    def capped(m: Measurement) -> Measurement:
        m.warmup_calls, m.warmup_s = warmed, warmup_s
        if warmed < warmup:
            m.reason += (
                f"; warm-up stopped after {warmed} of {warmup} calls ({warmup_s:.2g} s, "
                f"{100 * WARMUP_SHARE:g}% of the cap)"
            )
        return m

    while True:
        for stage, ms in step().items():
            samples.setdefault(stage, []).append(float(ms))
        n += 1
        if key not in samples:
            raise UsageError(f"the measured step reported no '{key}' time")
        if on_step is not None:
            on_step(n, max(minimum, n + (-n) % size))
        elapsed = clock() - start
        if n < minimum:
            if elapsed < cap:
                continue
            # The cap bounds the run even below the minimum (a slow model, a busy
            # machine): the figures stand, but the run is not called stable. The spread
            # of the calls made, in windows as long as they allow, is still reported.
            cut = max(1, n // windows)
            verdict = windows_agree(samples[key], cut, windows, tolerance_percent)
            spread = verdict.spread_percent if math.isfinite(verdict.spread_percent) else None
            reason = (
                f"time cap of {time_cap_s:g} s reached after {n} of the {minimum} minimum calls"
            )
            if spread is not None:
                reason += (
                    f"; the last {windows} windows of {cut} call{'s' if cut > 1 else ''} "
                    f"differ by {spread:.1f}%"
                )
            return capped(
                Measurement(
                    samples, False, reason, spread, list(verdict.window_means_ms), cut, elapsed
                )
            )
        partial = (n - minimum) % size
        if partial and elapsed < cap:
            continue  # verdicts at window boundaries, or when the cap cuts a window short
        # The rule looks at complete windows only; a cut window's calls still count in
        # the statistics.
        verdict = windows_agree(samples[key][: n - partial], size, windows, tolerance_percent)
        shape = f"last {windows} windows of {size} call{'s' if size > 1 else ''}"
        if verdict.stable:
            reason = (
                f"{shape} agree within {verdict.spread_percent:.1f}% (<= {tolerance_percent:g}%)"
            )
        elif elapsed >= cap:
            reason = (
                f"time cap of {time_cap_s:g} s reached; {shape} differ by "
                f"{verdict.spread_percent:.1f}% (> {tolerance_percent:g}%)"
            )
        else:
            continue
        spread = verdict.spread_percent if math.isfinite(verdict.spread_percent) else None
        return capped(
            Measurement(
                samples,
                verdict.stable,
                reason,
                spread,
                list(verdict.window_means_ms),
                size,
                elapsed,
            )
        )


# -- accuracy ------------------------------------------------------------------------


def compare_outputs(pipe: Pipeline, result: Any, reference: Any) -> dict[str, Any]:
    """How one precision's result agrees with the FP32 result on the same input: the
    task head's own metric (the one the export gates use)."""
    head = pipe.head
    return head.metric(head.values(reference.output), head.values(result.output))


def _bundle_accuracy(bundle: Bundle, precision: str) -> dict[str, Any] | None:
    """The export's own gate figures for ``precision`` (validation set vs FP32)."""
    acc = bundle.provenance.get("accuracy") if isinstance(bundle.provenance, dict) else None
    if not isinstance(acc, dict):
        return None
    variant = (acc.get("variants") or {}).get(precision)
    if not isinstance(variant, dict):
        return None
    # The head's scalar figures, whatever the head (per-class tables and the failure
    # lines stay in the bundle).
    keep: dict[str, Any] = {k: v for k, v in variant.items() if isinstance(v, (bool, int, float))}
    validation = acc.get("validation")
    if isinstance(validation, dict):
        keep["validation"] = validation
    keep["source"] = "bundle provenance.accuracy (export-time gate vs FP32)"
    return keep


# -- one configuration ---------------------------------------------------------------


def _progress(desc: str, total: int, enabled: bool):
    if not enabled:
        return None
    from edgemed._lazy import require

    tqdm = require("tqdm", "bench", "edgemed bench (progress bar)")
    # stderr, cleared when done (leave=False): the table on stdout is what stays.
    return tqdm.tqdm(desc=desc, total=total, unit="call", leave=False, file=sys.stderr)


def _staged_step(
    pipe: Pipeline, inp: BenchInput, batch: int
) -> tuple[Callable[[], dict[str, float]], list[Any]]:
    """The per-iteration work of one configuration and a list holding the last results."""
    image = inp.image
    items: list[Any] = [image] if image.is_volume else [image] * batch
    last: list[Any] = []

    def step() -> dict[str, float]:
        out: dict[str, float] = {}
        clock = time.perf_counter
        if inp.path is not None:
            t0 = clock()
            read_image(inp.path, limits=pipe.options.limits)
            out["read"] = (clock() - t0) * 1e3
        t0 = clock()
        results = pipe.run_batch(items)
        out["end_to_end"] = (clock() - t0) * 1e3
        out.update(pipe.last_stage_ms)  # this very call's stages, as the pipeline ran them
        last[:] = results
        return out

    return step, last


def _summaries(
    m: Measurement, images: int, backend: Backend
) -> tuple[dict[str, Any], dict[str, str], dict[str, Any] | None]:
    stages: dict[str, Any] = {}
    absent: dict[str, str] = {}
    for stage in STAGES:
        samples = m.samples.get(stage)
        if not samples:
            stages[stage] = None
            if stage in ("h2d", "d2h"):
                absent[stage] = _NO_COPY[stage].format(
                    backend=f"{backend.name} on {backend.device}"
                )
            elif stage == "read":
                absent[stage] = "synthetic input is generated in memory: there is no file to read"
            else:
                absent[stage] = "not measured"
            continue
        stages[stage] = _round_summary(summarize(samples, items_per_sample=images))
    device = {k[len("device_") :]: v for k, v in m.samples.items() if k.startswith("device_")}
    device_stages = (
        {k: _round_summary(summarize(v, items_per_sample=images)) for k, v in device.items()}
        if device
        else None
    )
    if device_stages is None:
        absent["device_stages"] = (
            f"{backend.name} has no device timer (CUDA events exist only on a GPU backend)"
        )
    return stages, absent, device_stages


def _round_summary(s: Mapping[str, float | None]) -> dict[str, Any]:
    # A stage that took no measurable time (a device copy of 0 bytes) has no throughput:
    # null, not Infinity (which is not JSON). A percentile from too few calls is null.
    out: dict[str, Any] = {}
    for k, v in s.items():
        if v is None or not math.isfinite(v):
            out[k] = None
        else:
            out[k] = int(v) if k == "count" else round(v, 4)
    return out


#: What ``overhead`` is (copied into bench.json).
OVERHEAD_DEFINITION = (
    "per measured call: (end_to_end - infer) / end_to_end of that same call, i.e. the "
    "share of the call spent outside the model (preprocess, postprocess, glue)"
)


def _overhead(m: Measurement) -> dict[str, Any] | None:
    """The distribution of the per-call overhead share; ``None`` without infer times."""
    e2e, infer = m.samples["end_to_end"], m.samples.get("infer")
    if not infer or len(infer) != len(e2e):
        return None
    # Each call against itself: the two timings of one call, never a mean of some calls
    # against a mean of others (which can come out negative).
    shares = [(e - i) / e if e > 0 else 0.0 for e, i in zip(e2e, infer, strict=True)]
    return {"definition": OVERHEAD_DEFINITION, **_round_summary(distribution(shares))}


def _run_config(
    pipe: Pipeline,
    inp: BenchInput,
    batch: int,
    opts: BenchOptions,
    *,
    progress: bool,
    clock: Callable[[], float],
) -> tuple[dict[str, Any], Any]:
    backend = pipe.backend
    images = inp.image.num_slices if inp.image.is_volume else batch
    name = f"{backend.precision} b{batch} {inp.label}"
    step, last = _staged_step(pipe, inp, batch)
    bar = _progress(name, opts.window_size * opts.windows, progress)

    def on_step(done: int, planned: int) -> None:
        if bar is not None:
            bar.total = planned
            bar.update(done - bar.n)

    rss, sensors = PeakRss(), Sensors()
    rss.start()
    sensors.start()
    try:
        m = measure(
            step,
            iterations=opts.iterations,
            warmup=opts.warmup,
            windows=opts.windows,
            tolerance_percent=opts.stability_percent,
            time_cap_s=opts.time_cap_s,
            clock=clock,
            on_step=on_step,
        )
    finally:
        sensor_summary = sensors.stop()
        memory = rss.stop()
        if bar is not None:
            bar.close()
    stages, absent, device_stages = _summaries(m, images, backend)
    e2e = stages["end_to_end"]
    overhead = _overhead(m)
    if overhead is None:
        absent["overhead"] = "the pipeline reported no infer time for the measured calls"
    few = too_few(m.iterations)
    if few is not None:
        absent["percentiles"] = few
    memory["gpu"] = sensor_summary.pop("gpu")
    if "gpu" in sensor_summary["absent"]:
        absent["memory.gpu"] = sensor_summary["absent"].pop("gpu")
    for key, why in sensor_summary.pop("absent").items():
        absent[f"sensors.{key}"] = why
    info = backend.info()
    config = {
        "name": name,
        "backend": info["backend"],
        "backend_version": info["backend_version"],
        "backend_device": info["device"],
        "backend_reason": info["backend_reason"],
        "preprocess_device": pipe.preprocess_device,
        "cuda_graphs": bool(info.get("cuda_graphs", False)),
        "precision": info["precision"],
        "batch": batch,
        "images_per_call": images,
        "input": inp.describe(),
        "stages": stages,
        "device_stages": device_stages,
        "absent": absent,
        "throughput_ips": e2e["throughput_ips"],
        "overhead": overhead,
        "stability": {
            "stable": m.stable,
            "reason": m.reason,
            "rule": f"mean end_to_end of the last {opts.windows} windows within "
            f"{opts.stability_percent:g}%",
            "tolerance_percent": opts.stability_percent,
            "spread_percent": None if m.spread_percent is None else round(m.spread_percent, 3),
            "windows": opts.windows,
            "window_size": m.window_size,
            "window_means_ms": [round(v, 4) for v in m.window_means_ms],
            "iterations": m.iterations,
            "warmup": m.warmup_calls,
            "warmup_s": round(m.warmup_s, 3),
            "elapsed_s": round(m.elapsed_s, 3),
            "time_cap_s": opts.time_cap_s,
        },
        "memory": memory,
        "sensors": sensor_summary,
        # Raw per-call times in measuring order (CDFs; the per-call overhead pairs them).
        "samples_ms": {
            k: [round(v, 4) for v in m.samples[k]]
            for k in ("end_to_end", "infer")
            if k in m.samples
        },
    }
    return config, last[0]  # measure() makes at least one call


def _precisions(bundle: Bundle, wanted: Sequence[str] | None) -> list[str]:
    """The precisions to measure, fp32 (the accuracy reference) first."""
    if wanted is None:
        return bundle.precisions
    for p in wanted:
        bundle.artifact("onnx", p)  # USAGE_PRECISION_MISSING, as run and build say it
    unique = list(dict.fromkeys(wanted))
    return sorted(unique, key=lambda p: p != "fp32")  # stable: the rest keep their order


def _separate_reference(
    bundle: Bundle, inputs: Sequence[BenchInput], opts: BenchOptions, clock: Callable[[], float]
) -> tuple[list[Any], dict[str, Any]]:
    """FP32 results of every input when fp32 itself is not measured: one call each."""
    t0 = clock()
    ref_opts = opts.options("fp32", 1).replace(cuda_graphs=False)
    with Pipeline(bundle, create_backend(None, bundle, options=ref_opts), ref_opts) as ref:
        results = [ref(inp.image) for inp in inputs]
    return results, {
        "source": "a separate fp32 run (fp32 is not among the precisions measured): one "
        "call per input, outside the time cap",
        "extra_calls": len(inputs),
        "elapsed_s": round(clock() - t0, 3),
    }


def run_bench(
    bundle_path: Any,
    inputs: Sequence[BenchInput],
    opts: BenchOptions,
    *,
    command: str = "",
    progress: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Measure every configuration; returns the ``bench.json`` document.

    Raises:
        UsageError: a precision the bundle lacks (``USAGE_PRECISION_MISSING``), a batch
            the model cannot take (``USAGE_BATCH_FIXED``).
        BundleError, BackendError, InputError: as the pipeline raises them.
    """
    if not inputs:
        raise UsageError("nothing to benchmark: no inputs")
    t_start = clock()
    bundle = Bundle.load(bundle_path)
    precisions = _precisions(bundle, opts.precisions)
    # FP32 results per input, the reference for every precision's accuracy. When fp32 is
    # measured (it runs first), its first configuration's result on each input is the
    # reference, so accuracy costs no call and no second model load outside the cap.
    references: dict[int, Any] = {}
    reference: dict[str, Any]
    if "fp32" in precisions:
        reference = {
            "source": f"the first measured fp32 configuration (batch {opts.batches[0]}) on "
            "each input: no extra call",
            "extra_calls": 0,
            "elapsed_s": 0.0,
        }
    elif "fp32" in bundle.precisions:
        results, reference = _separate_reference(bundle, inputs, opts, clock)
        references = dict(enumerate(results))
    else:
        reference = {
            "source": "none: the bundle has no fp32 model",
            "extra_calls": 0,
            "elapsed_s": 0.0,
        }
    configs: list[dict[str, Any]] = []
    for precision in precisions:
        backend = create_backend(None, bundle, options=opts.options(precision))
        try:
            for batch in opts.batches:
                pipe = Pipeline(bundle, backend, opts.options(precision, batch))
                if pipe.batch_size != batch:
                    takes = (
                        f"at most {pipe.batch_size} (its engine's profile: rebuild with "
                        "`edgemed build --batch 1:OPT:MAX`)"
                        if backend.max_batch is not None
                        else f"exactly {pipe.batch_size}"
                    )
                    raise UsageError(
                        f"the model takes batches of {takes}, not {batch}",
                        code="USAGE_BATCH_FIXED",
                    )
                for i, inp in enumerate(inputs):
                    config, result = _run_config(
                        pipe, inp, batch, opts, progress=progress, clock=clock
                    )
                    if precision == "fp32":
                        references.setdefault(i, result)
                    accuracy: dict[str, Any] = {
                        "reference": "fp32 on the same input and backend",
                        "is_reference": precision == "fp32",
                    }
                    if i in references:
                        accuracy.update(compare_outputs(pipe, result, references[i]))
                    else:
                        accuracy["reason"] = "the bundle has no fp32 model to compare with"
                    accuracy["bundle_reported"] = _bundle_accuracy(bundle, precision)
                    config["accuracy"] = accuracy
                    configs.append(config)
        finally:
            backend.close()
    return {
        "schema_version": SCHEMA_VERSION,
        "edgemed_version": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "bundle": {
            "name": bundle.name,
            "version": bundle.version,
            "task": bundle.task,
            "manifest_sha256": bundle.manifest_sha256,
        },
        "settings": opts.to_dict(),
        "device": device_info(),
        "stage_definitions": dict(STAGE_DEFINITIONS),
        "reference": reference,
        "elapsed_s": round(clock() - t_start, 3),
        "configs": configs,
    }
