"""FP32 vs FP16 vs INT8 variants of the demo bundle on the CPU: speed next to accuracy.

Usage (runtime dependencies only)::

    python benchmarks/precision_compare.py --out benchmarks/results

Each precision runs through the same pipeline (ONNX Runtime CPU, batch 1). Speed: end to
end and model time on a 512x512 synthetic CT slice and on pydicom's real
``CT_small.dcm``, in alternating blocks of calls. Accuracy: the variant's masks against the
FP32 masks (per-label Dice, mean over labels present, pixel agreement) on ``--phantoms``
synthetic slices (256-512 px, three body regions, seeds disjoint from the ones the model
was trained with) plus ``CT_small.dcm``; and each precision against the phantoms' true
labels. ONNX Runtime's CPU provider computes most FP16 operators in FP32 (with casts
around them) and INT8 Q/DQ graphs with its own kernels, so CPU speed says little about
a GPU: the same variants on TensorRT are measured by ``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: `python benchmarks/<name>.py` imports `benchmarks.*`
    sys.path.append(str(Path(__file__).resolve().parents[1]))

import numpy as np

import edgemed
from benchmarks._common import (
    arguments,
    ct_small,
    dice,
    environment,
    phantom,
    stats,
    timed_rounds,
    write_results,
)
from edgemed import MedicalImage, Pipeline

__all__ = ["main"]

PRECISIONS = ("fp32", "fp16", "int8")


def _accuracy_inputs(n: int) -> list[tuple[str, MedicalImage, np.ndarray | None]]:
    regions = ("thorax", "abdomen", "pelvis")
    sizes = (256, 384, 512)
    out = []
    for i in range(n):
        size, region = sizes[i % 3], regions[(i // 3 + i) % 3]
        hu, spacing, labels = phantom(size, seed=9000 + i, region=region)
        out.append(
            (f"phantom {i} ({region}, {size} px)", MedicalImage(hu, spacing=spacing), labels)
        )
    hu, spacing = ct_small()
    out.append(("CT_small.dcm", MedicalImage(hu, spacing=spacing, modality="CT"), None))
    return out


def _markdown(data: dict[str, Any]) -> str:
    env = data["environment"]
    lines = [
        "# Precision variants on the CPU (demo bundle, ONNX Runtime, batch 1)",
        "",
        f"{env['date']}; {env['machine']['cpu']}, {env['machine']['cores']} cores; "
        f"ONNX Runtime {env['versions']['onnxruntime']}.",
        f"Command: `{env['command']}`",
        "",
        "| precision | end to end p50 ms (512 px) | infer p50 ms (512 px) | end to end p50 ms "
        "(CT_small) | mean Dice vs FP32 | worst slice Dice vs FP32 | pixel agreement vs "
        "FP32 | mean Dice vs phantom truth |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p, r in data["precisions"].items():
        lines.append(
            f"| {p} | {r['speed']['phantom 512x512']['end_to_end']['p50_ms']:.2f} | "
            f"{r['speed']['phantom 512x512']['infer']['p50_ms']:.2f} | "
            f"{r['speed']['CT_small.dcm']['end_to_end']['p50_ms']:.2f} | "
            f"{r['dice_vs_fp32_mean']:.5f} | {r['dice_vs_fp32_worst']:.5f} | "
            f"{100 * r['pixel_agreement_vs_fp32']:.3f} % | {r['dice_vs_truth_mean']:.4f} |"
        )
    lines += [
        "",
        f"Accuracy over {data['accuracy_inputs']} slices ({data['phantoms']} phantoms + "
        "CT_small.dcm; truth: phantoms only).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = arguments(__doc__, iterations=200, warmup=10, budget_s=40.0)
    ap.add_argument("--phantoms", type=int, default=6)
    args = ap.parse_args(argv)
    pipes = {
        p: Pipeline.from_bundle(edgemed.demo_bundle(), "onnxruntime", precision=p)
        for p in PRECISIONS
    }
    n_labels = len(pipes["fp32"].bundle.labels)
    hu512, sp512, _ = phantom(512)
    hu128, sp128 = ct_small()
    speed_inputs = {
        "phantom 512x512": MedicalImage(hu512, spacing=sp512, modality="CT"),
        "CT_small.dcm": MedicalImage(hu128, spacing=sp128, modality="CT"),
    }
    speed: dict[str, dict[str, Any]] = {p: {} for p in PRECISIONS}
    for name, image in speed_inputs.items():
        cases = {p: (lambda p=p, image=image: pipes[p](image).timings["infer"]) for p in PRECISIONS}
        infer: dict[str, list[float]] = {}
        samples = timed_rounds(
            cases,
            warmup=args.warmup,
            iterations=args.iterations,
            budget_s=args.budget_s,
            returned=infer,
        )
        for p in PRECISIONS:
            speed[p][name] = {
                "end_to_end": stats(samples[p]),
                "infer": stats(infer[p]),
            }
        print(
            name, {p: speed[p][name]["end_to_end"]["p50_ms"] for p in PRECISIONS}, file=sys.stderr
        )
    acc_inputs = _accuracy_inputs(args.phantoms)
    masks = {p: [pipes[p](img).mask for _, img, _ in acc_inputs] for p in PRECISIONS}
    data: dict[str, Any] = {
        "benchmark": "precision_compare",
        "environment": environment("precision_compare.py"),
        "phantoms": args.phantoms,
        "accuracy_inputs": len(acc_inputs),
        "precisions": {},
    }
    for p in PRECISIONS:
        vs32 = [dice(m, ref, n_labels) for m, ref in zip(masks[p], masks["fp32"], strict=True)]
        truth = [
            dice(m, labels, n_labels)
            for m, (_, _, labels) in zip(masks[p], acc_inputs, strict=True)
            if labels is not None
        ]
        data["precisions"][p] = {
            "artifact": pipes[p].bundle.artifact("onnx", p).path,
            "speed": speed[p],
            "dice_vs_fp32_mean": round(float(np.mean([d["mean_dice"] for d in vs32])), 6),
            "dice_vs_fp32_worst": round(float(min(d["mean_dice"] for d in vs32)), 6),
            "pixel_agreement_vs_fp32": round(
                float(np.mean([d["pixel_agreement"] for d in vs32])), 6
            ),
            "dice_vs_truth_mean": round(float(np.mean([d["mean_dice"] for d in truth])), 6),
            "per_input": {
                name: {"vs_fp32": d} for (name, _, _), d in zip(acc_inputs, vs32, strict=True)
            },
        }
    for pipe in pipes.values():
        pipe.close()
    write_results(args.out, "precision_compare", data, _markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
