"""edgemed's CPU preprocessing vs MONAI transforms and a plain OpenCV chain.

Usage (MONAI and torch needed for the MONAI column: the export venv; without them that
column is skipped)::

    python benchmarks/preprocess_compare.py --out benchmarks/results

The demo bundle's preprocessing (three CT windows, clip and scale to [0, 1], bilinear
resize to 256x256, NCHW float32) from in-memory HU slices to the model's input batch:

* **edgemed**: ``edgemed.preprocess.preprocess(slices, spec, out=buffer)`` (the buffer
  is reused, as the pipeline does);
* **MONAI**: per slice ``EnsureChannelFirst`` -> ``ScaleIntensityRange`` per window
  (clip) -> concatenation -> ``Resize`` (bilinear) -> ``ToTensor``; ``torch.stack`` for
  the batch (MONAI's transforms work on one item; batching is its collate step);
* **OpenCV (plain)**: the chain written the obvious way:
  ``np.stack([cv2.resize(((np.clip(x, lo, hi) - lo) / (hi - lo)), size) ...])``.

Slices of 256x256 and 512x512 (synthetic CT from ``export/reference/phantoms.py``),
batches of 1 and 8. The outputs are compared (max absolute difference) so that the
arithmetic is the same. Cases alternate in blocks of calls (see ``_common.timed_rounds``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: `python benchmarks/<name>.py` imports `benchmarks.*`
    sys.path.append(str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np

import edgemed
from benchmarks._common import (
    arguments,
    environment,
    figure,
    phantom,
    stats,
    timed_rounds,
    write_results,
)
from edgemed.preprocess import allocate, preprocess

__all__ = ["main", "monai_preprocess", "monai_slice", "opencv_preprocess"]

TARGET_SPEEDUP = 3.0


def opencv_preprocess(slices: list[np.ndarray], spec: edgemed.PreprocessSpec) -> np.ndarray:
    """The window/scale/resize chain as one would write it with NumPy + OpenCV."""
    out = []
    for hu in slices:
        channels = []
        for lo, hi in spec.ranges:
            x = (np.clip(hu, lo, hi) - lo) / (hi - lo)
            channels.append(cv2.resize(x, (spec.width, spec.height)))
        out.append(np.stack(channels))
    return np.stack(out).astype(np.float32)


def monai_slice(spec: edgemed.PreprocessSpec):
    """A function ``hu (H, W) -> (C, h, w) torch tensor`` from MONAI transforms: the
    windows, their concatenation and the resize to the model input."""
    import torch
    from monai.transforms import EnsureChannelFirst, Resize, ScaleIntensityRange, ToTensor

    first = EnsureChannelFirst(channel_dim="no_channel")
    windows = [
        ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)
        for lo, hi in spec.ranges
    ]
    resize = Resize(spatial_size=spec.size, mode="bilinear", align_corners=False)
    tensor = ToTensor(dtype=torch.float32, track_meta=False)

    def run(hu: np.ndarray):
        x = first(hu)
        return tensor(resize(torch.cat([w(x) for w in windows], dim=0)))

    return run


def monai_preprocess(spec: edgemed.PreprocessSpec):
    """A function ``slices -> (N, C, H, W) torch tensor`` from MONAI transforms."""
    import torch

    one = monai_slice(spec)
    return lambda slices: torch.stack([one(hu) for hu in slices])


def _markdown(data: dict[str, Any]) -> str:
    env = data["environment"]
    lines = [
        "# CPU preprocessing: edgemed vs MONAI transforms vs plain OpenCV",
        "",
        f"{env['date']}; {env['machine']['cpu']}, {env['machine']['cores']} cores; "
        f"OpenCV {env['versions']['opencv']}, MONAI {env['versions'].get('monai')}, "
        f"torch {env['versions'].get('torch')} ({data['torch_threads']} threads).",
        f"Command: `{env['command']}`",
        "",
        "| slice | batch | implementation | p50 ms | p90 ms | p99 ms | edgemed speedup (p50) "
        "| max abs diff vs edgemed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case in data["cases"]:
        for impl, t in case["implementations"].items():
            speed = case["speedup_p50"][impl]
            diff = case["max_abs_diff_vs_edgemed"].get(impl)
            lines.append(
                f"| {case['slice']} | {case['batch']} | {impl} | {t['p50_ms']:.3f} | "
                f"{figure(t['p90_ms'], 3)} | {figure(t['p99_ms'], 3)} | {speed:.2f}x | "
                f"{'-' if diff is None else f'{diff:.2g}'} |"
            )
    lines += ["", f"Target: edgemed >= {TARGET_SPEEDUP:.0f}x faster than MONAI and OpenCV."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = arguments(__doc__, iterations=300, warmup=10, budget_s=15.0, per="case")
    args = ap.parse_args(argv)
    spec = edgemed.Bundle.load(edgemed.demo_bundle()).preprocess
    try:
        import torch

        monai = monai_preprocess(spec)
        torch_threads = torch.get_num_threads()
    except ImportError:
        print("MONAI/torch absent: MONAI column skipped", file=sys.stderr)
        monai, torch_threads = None, 0
    extra = ("torch", "monai") if monai is not None else ()
    data: dict[str, Any] = {
        "benchmark": "preprocess_compare",
        "environment": environment("preprocess_compare.py", extra),
        "torch_threads": torch_threads,
        "target_speedup": TARGET_SPEEDUP,
        "cases": [],
    }
    for size in (256, 512):
        pool = [phantom(size, seed=s)[0] for s in range(8)]
        for batch in (1, 8):
            slices = pool[:batch]
            buf = allocate(spec, batch)
            impls = {
                "edgemed": lambda s=slices, b=buf: preprocess(s, spec, out=b),
                "OpenCV (plain)": lambda s=slices: opencv_preprocess(s, spec),
            }
            if monai is not None:
                impls["MONAI"] = lambda s=slices: monai(s)
            samples = timed_rounds(
                impls, warmup=args.warmup, iterations=args.iterations, budget_s=args.budget_s
            )
            summary = {k: stats(v, batch) for k, v in samples.items()}
            ours = preprocess(slices, spec)[0]
            diffs = {
                k: float(np.abs(np.asarray(f()) - ours).max())
                for k, f in impls.items()
                if k != "edgemed"
            }
            case = {
                "slice": f"{size}x{size}",
                "batch": batch,
                "implementations": summary,
                "speedup_p50": {
                    k: round(v["p50_ms"] / summary["edgemed"]["p50_ms"], 3)
                    for k, v in summary.items()
                },
                "max_abs_diff_vs_edgemed": diffs,
            }
            data["cases"].append(case)
            print(size, batch, {k: v["p50_ms"] for k, v in summary.items()}, file=sys.stderr)
    write_results(args.out, "preprocess_compare", data, _markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
