"""Time the CUDA preprocessing and segmentation kernels next to the CPU reference.

For each source slice size (128, 256, 512, 1024 pixels square) and batch (1, 8):

* GPU (default): CUDA events around the H2D upload of raw int16 pixels and around the
  fused preprocessing kernel writing the demo bundle's input (3 windows, unit scale,
  letterbox 256 x 256, float32), and around the segmentation kernel turning 5-class
  256 x 256 logits into source-size masks;
* CPU: :func:`edgemed.preprocess.cpu.preprocess` on the same slices (rescaled to HU,
  as the CPU path receives them) and :func:`edgemed.postprocess.segment` on the same
  logits, wall-clock medians;
* the ratios CPU / GPU.

Then the 3D path (``kernels/volume.cu``), per model-space volume (ROI 96^3, overlap 0.25,
Gaussian, 4 windows per call, 5 classes; the model itself left out: its outputs are fixed
arrays): the sliding-window blending, activation, back-to-source resampling and decision
of :func:`edgemed.cuda.volume.segment_volume_device` (windows cut on the device, outputs
blended where they lie, the mask copied back) against :func:`edgemed.volume.segment_volume`
on the CPU, on the model grid and back to a finer source grid; and the input resampling
(int16 source to the model grid, transfers included) against :func:`edgemed.volume.resample`.

``--host`` runs the kernels through the g++ host build instead (host_shim.h: one
simulated thread after another on one core), so the script can be exercised on a
machine without a GPU. Those numbers say nothing about GPU speed; the output says so.

Usage::

    python benchmarks/kernel_bench.py                 # on a GPU machine (pycuda)
    python benchmarks/kernel_bench.py --host --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edgemed.heads.segmentation import SegmentationSpec
from edgemed.postprocess import segment
from edgemed.preprocess import PreprocessSpec, Window, place, preprocess

LABELS = ["background", "lung", "fat", "soft_tissue", "bone"]


def demo_like_spec() -> PreprocessSpec:
    return PreprocessSpec(
        size=(256, 256),
        windows=(Window(-600.0, 1500.0), Window(40.0, 400.0), Window(400.0, 1800.0)),
        resize="letterbox",
    )


def slices_for(size: int, batch: int, seed: int = 0) -> list[np.ndarray]:
    """Raw int16 CT-like slices (stored values; HU = raw - 1024)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    body = ((y - size / 2) / (0.45 * size)) ** 2 + ((x - size / 2) / (0.4 * size)) ** 2 < 1
    out = []
    for _ in range(batch):
        img = np.where(body, 1064, 24) + rng.normal(0, 20, size=(size, size))
        out.append(np.clip(img, 0, 4095).astype(np.int16))
    return out


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up (allocations, OpenCV/IPP dispatch)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def cpu_times(raw: list[np.ndarray], logits: np.ndarray, repeat: int) -> tuple[float, float]:
    spec = demo_like_spec()
    hu = [r.astype(np.float32) * np.float32(1.0) + np.float32(-1024.0) for r in raw]
    out = np.empty((len(raw), 3, 256, 256), np.float32)
    placements = [place(r.shape, spec) for r in raw]
    pre = median_ms(lambda: preprocess(hu, spec, out), repeat)
    post = median_ms(lambda: segment(logits, placements, SegmentationSpec(), LABELS), repeat)
    return pre, post


def host_times(raw: list[np.ndarray], logits: np.ndarray, repeat: int, lib: Any) -> dict:
    spec = demo_like_spec()
    n = len(raw)
    placements = [place(r.shape, spec) for r in raw]
    pre = median_ms(lambda: lib.preprocess(raw, spec, [1.0] * n, [-1024.0] * n), repeat)
    post = median_ms(lambda: lib.segment(logits, placements, SegmentationSpec(), LABELS), repeat)
    return {"upload": float("nan"), "pre": pre, "post": post}


class GpuTimer:
    """The launchers on one stream, timed with CUDA events (median of ``repeat``)."""

    def __init__(self, max_batch: int, max_pixels: int) -> None:
        import pycuda.driver as cuda

        from edgemed.cuda.device import CudaDevice, DeviceBuffer
        from edgemed.cuda.launchers import CudaPreprocessor, CudaSegmentPostprocessor

        self.cuda = cuda
        self.device = CudaDevice.open(0)
        self._ctx = self.device.active()
        self._ctx.__enter__()
        spec = demo_like_spec()
        self.pre = CudaPreprocessor(spec, max_batch, max_pixels)
        self.post = CudaSegmentPostprocessor(SegmentationSpec(), LABELS, max_batch, max_pixels)
        self.input = DeviceBuffer(max_batch * 3 * 256 * 256 * 4)
        self.logits = DeviceBuffer(max_batch * 5 * 256 * 256 * 4)
        self.events = [cuda.Event() for _ in range(4)]

    def times(self, raw: list[np.ndarray], logits: np.ndarray, repeat: int) -> dict:
        stream = self.device.stream
        n = len(raw)
        self.logits.upload(np.ascontiguousarray(logits), stream)
        e0, e1, e2, e3 = self.events
        ups, pres, posts = [], [], []
        for i in range(repeat + 1):  # the first round warms up (module load, caches)
            e0.record(stream)
            launch = self.pre.upload(raw, [1.0] * n, [-1024.0] * n, stream)
            e1.record(stream)
            self.pre.launch(launch, self.input.ptr, stream)
            e2.record(stream)
            seg = self.post.launch(self.logits.ptr, logits.shape, launch.placements, stream)
            e3.record(stream)
            self.post.fetch(seg, stream)  # D2H of the masks, then waits for the stream
            if i:
                ups.append(e1.time_since(e0))
                pres.append(e2.time_since(e1))
                posts.append(e3.time_since(e2))
        return {
            "upload": statistics.median(ups),
            "pre": statistics.median(pres),
            "post": statistics.median(posts),
        }


def volume_rows(kernels: Any, host: bool, repeat: int) -> None:
    """The 3D table: the kernels (``kernels``, a VolumeKernels) against the CPU path."""
    from edgemed.cuda.volume import segment_volume_device
    from edgemed.cuda.volume_plan import DeviceArray
    from edgemed.sliding_window import SlidingWindow
    from edgemed.volume import VolumeSpec, count_windows, resample, segment_volume

    roi, k = ((16, 16, 16), 3) if host else ((96, 96, 96), 5)
    shapes = [(24, 40, 40)] if host else [(128, 192, 192), (160, 256, 256)]
    window = SlidingWindow(roi, (0.25,) * 3, "gaussian", (0.125,) * 3, sw_batch_size=4)
    vs = VolumeSpec(spacing=None, window=window)
    head = SegmentationSpec()
    rng = np.random.default_rng(2)
    outputs = rng.normal(0, 2, size=(4, k, *roi)).astype(np.float32)
    out_buf = kernels.alloc(outputs.nbytes)
    kernels.upload(out_buf, outputs)
    in_buf = kernels.alloc(4 * int(np.prod(roi)) * 4)
    out_ptr = kernels.address(out_buf)

    class FixedEngine:  # an engine whose outputs are already in place (no model)
        def input(self, shape: tuple[int, ...]) -> tuple[int, Any]:
            self.n = shape[0]
            return kernels.address(in_buf), np.dtype(np.float32)

        def run(self) -> DeviceArray:
            return DeviceArray(out_ptr, (self.n, k, *roi), np.dtype(np.float32))

    engine = FixedEngine()

    where = "host" if host else "GPU"
    head_line = (
        f"{'model grid':>14} {'source grid':>14} {'windows':>7} | {where + ' ms':>9} "
        f"{'CPU ms':>9} {'ratio':>7}"
    )
    print(f"\n3D: sliding window + activation + back to source + decision ({k} classes)")
    print(head_line)
    print("-" * len(head_line))
    for shape in shapes:
        vol = rng.normal(size=(1, *shape)).astype(np.float32)
        for out in (shape, (shape[0] * 5 // 4, shape[1] * 2, shape[2] * 2)):

            def gpu_run(vol: np.ndarray = vol, out: tuple[int, ...] = out) -> np.ndarray:
                return segment_volume_device(vol, engine, vs, head, out, kernels=kernels)

            def cpu_run(vol: np.ndarray = vol, out: tuple[int, ...] = out) -> np.ndarray:
                return segment_volume(vol, lambda w: outputs[: len(w)], vs, head, out)

            n = count_windows(shape, window)
            g = median_ms(gpu_run, repeat)
            c = median_ms(cpu_run, max(1, repeat // 4))
            print(
                f"{'x'.join(map(str, shape)):>14} {'x'.join(map(str, out)):>14} {n:>7} | "
                f"{g:>9.1f} {c:>9.1f} {c / g:>6.2f}x",
                flush=True,
            )
    kernels.free(out_buf)
    kernels.free(in_buf)
    print(f"\n3D: input resampling, int16 source -> float32 model grid ({where} incl. copies)")
    cases = [((20, 48, 48), (30, 32, 32))] if host else [((160, 512, 512), (200, 256, 256))]
    for src, dst in cases:
        raw = rng.integers(-1024, 3000, size=src).astype(np.int16)
        g = median_ms(lambda raw=raw, dst=dst: kernels.resample(raw, dst), repeat)
        c = median_ms(lambda raw=raw, dst=dst: resample(raw.astype(np.float32), dst), repeat)
        print(
            f"{'x'.join(map(str, src)):>14} -> {'x'.join(map(str, dst)):>14} | "
            f"{where} {g:.1f} ms, CPU {c:.1f} ms, {c / g:.2f}x",
            flush=True,
        )


def _ms(value: float) -> str:
    return "n/a" if value != value else f"{value:.3f}"  # NaN: not measured (host build)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", action="store_true", help="run the g++ host build (no GPU)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512, 1024])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeat", type=int, default=None, help="timed runs (median reported)")
    ap.add_argument("--skip-volume", action="store_true", help="leave out the 3D kernels")
    args = ap.parse_args(argv)
    repeat = args.repeat or (3 if args.host else 20)

    if args.host:
        from edgemed.cuda.build import build_host_library
        from edgemed.cuda.host import HostKernels

        lib = HostKernels(build_host_library(tempfile.mkdtemp(prefix="edgemed-bench-")))
        print(
            "HOST SHIM BUILD (--host): the kernel bodies run on ONE CPU core, one simulated\n"
            "CUDA thread after another. These numbers exercise the code path only and say\n"
            "NOTHING about GPU speed; run without --host on a GPU machine for real timings.\n"
        )
        timer: Any = None
    else:
        timer = GpuTimer(max(args.batches), max(args.sizes) ** 2)
        print(f"GPU: {timer.device.name} (sm_{''.join(map(str, timer.device.compute_capability))})")
        print("GPU times from CUDA events; CPU times wall-clock; medians of", repeat, "runs\n")

    where = "host" if args.host else "GPU"
    head = (
        f"{'source':>7} {'batch':>5} | {'H2D ms':>7} {where + ' pre ms':>11} "
        f"{'CPU pre ms':>10} {'ratio':>7} | {where + ' post ms':>12} {'CPU post ms':>11} "
        f"{'ratio':>7}"
    )
    print(head)
    print("-" * len(head))
    rng = np.random.default_rng(1)
    for size in args.sizes:
        for batch in args.batches:
            raw = slices_for(size, batch)
            logits = rng.normal(0, 2, size=(batch, 5, 256, 256)).astype(np.float32)
            k = (
                host_times(raw, logits, repeat, lib)
                if args.host
                else timer.times(raw, logits, repeat)
            )
            cpu_pre, cpu_post = cpu_times(raw, logits, repeat)
            print(
                f"{size:>7} {batch:>5} | {_ms(k['upload']):>7} {k['pre']:>11.3f} "
                f"{cpu_pre:>10.3f} {cpu_pre / k['pre']:>6.2f}x | {k['post']:>12.3f} "
                f"{cpu_post:>11.3f} {cpu_post / k['post']:>6.2f}x",
                flush=True,
            )
    print(
        "\nratio = CPU time / kernel time (>1: the kernel is faster). 'pre' is the fused "
        "preprocessing kernel alone\n(H2D upload of raw int16 pixels apart); 'post' is the "
        "segmentation kernel (D2H of the masks apart);\nthe CPU columns include everything "
        "(they have no transfers)."
    )
    if not args.skip_volume:
        if args.host:
            from edgemed.cuda.volume import HostVolumeKernels

            volume_rows(HostVolumeKernels(lib), True, repeat)
        else:
            from edgemed.cuda.volume import CudaVolumeKernels

            volume_rows(CudaVolumeKernels(stream=timer.device.stream), False, repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
