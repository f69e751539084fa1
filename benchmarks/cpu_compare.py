"""edgemed end to end vs the tools people use today, same model, same input, same CPU.

Usage (needs torch and MONAI: the export venv, ``pip install "edgemed[export-test]"``)::

    python benchmarks/cpu_compare.py --out benchmarks/results

Three ways from an in-memory CT slice in HU to a label mask at the slice's own size:

* **edgemed**: ``Pipeline.from_bundle(demo_bundle(), "onnxruntime")(MedicalImage)``
  (which also computes label statistics, the input id and provenance);
* **MONAI + PyTorch eager**: ``EnsureChannelFirst`` -> ``ScaleIntensityRange`` per
  window (clip) + concatenation -> ``Resize`` to 256x256 (bilinear, the inputs are square
  so this is the bundle's letterbox) -> ``ToTensor`` -> the PyTorch ``UNet2D`` of
  ``export/reference`` with ``demo_unet.pt``, eval mode, ``torch.inference_mode`` ->
  ``Activations(softmax)`` -> ``Resize`` back to the slice size -> ``AsDiscrete(argmax)``;
* **MONAI + ONNX Runtime**: the same transforms around an ONNX Runtime session on the
  bundle's own ``model.onnx``.

Same arithmetic throughout (window, bilinear resize with half-pixel centres, softmax,
bilinear resize of the probabilities, argmax); the masks are compared with edgemed's
(Dice) so that the speed comparison is between equal results. torch and ONNX Runtime run
with the same number of intra-op threads (edgemed's default: the cores, at most 8).
Inputs: pydicom's real ``CT_small.dcm`` (128x128) and a 512x512 synthetic CT slice from
``export/reference/phantoms.py``. Cases alternate in blocks of calls (see ``_common.timed_rounds``).

With the ``openvino`` extra, edgemed on OpenVINO (fp32, int8, and bf16 on a BF16 CPU) runs
in the same rounds; each of those precisions is also put through the bundle's validation
gate (``edgemed check``), and the fastest one that passes is "edgemed (best gated)".
``model_calls`` times the model alone at 256x256, batch 1, per engine and precision,
including ONNX Runtime on an INT8 model quantized the way its CPU provider fuses (QDQ with
uint8 activations, ``onnxruntime.quantization.quantize_static`` on phantom slices): the
evidence for README's "INT8 on the CPU".
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: `python benchmarks/<name>.py` imports `benchmarks.*`
    sys.path.append(str(Path(__file__).resolve().parents[1]))

import numpy as np

import edgemed
from benchmarks._common import (
    REPO,
    arguments,
    ct_small,
    dice,
    environment,
    phantom,
    stats,
    timed_rounds,
    write_results,
)
from benchmarks.preprocess_compare import monai_slice
from edgemed import MedicalImage, Pipeline
from edgemed.backends import create_backend
from edgemed.backends.ort import default_threads

__all__ = ["main", "monai_chain"]

TARGET_SPEEDUP = 3.0


def monai_chain(bundle: edgemed.Bundle, model: Any, *, backend: str, model_ms: list[float]):
    """A function ``hu (H, W) -> uint8 mask (H, W)`` built from MONAI transforms around
    ``model``: a torch module (``backend="torch"``) or an ORT session (``"onnxruntime"``).
    Each call appends the time of the model call alone to ``model_ms``."""
    import torch
    from monai.transforms import Activations, AsDiscrete, Resize

    to_model = monai_slice(bundle.preprocess)
    softmax = Activations(softmax=True, dim=0)
    argmax = AsDiscrete(argmax=True, dim=0)
    name = bundle.input.name

    def run(hu: np.ndarray) -> np.ndarray:
        x = to_model(hu)[None]
        t0 = time.perf_counter()
        if backend == "torch":
            with torch.inference_mode():
                logits = model(x)[0]
        else:
            logits = torch.from_numpy(model.run(None, {name: x.numpy()})[0][0])
        model_ms.append((time.perf_counter() - t0) * 1e3)
        probs = softmax(logits)
        back = Resize(spatial_size=hu.shape, mode="bilinear", align_corners=False)(probs)
        return argmax(back)[0].numpy().astype(np.uint8)

    return run


def _torch_model(threads: int):
    import torch

    from edgemed.export.reference.unet import UNet2D

    torch.set_num_threads(threads)
    model = UNet2D(base=16, levels=3)
    state = torch.load(REPO / "export" / "reference" / "demo_unet.pt", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def _ort_session(bundle: edgemed.Bundle, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    path = bundle.root / bundle.artifact("onnx", "fp32").path
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def edgemed_variants(threads: int) -> dict[str, Pipeline]:
    """edgemed on OpenVINO per precision (where installed), named for the tables."""
    from edgemed._lazy import available

    if not available("openvino"):
        return {}
    from edgemed.backends.openvino import ov_core

    precisions = ["fp32", "int8"]
    if "BF16" in ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        precisions.append("bf16")
    return {
        f"edgemed OpenVINO {p}": Pipeline.from_bundle(
            edgemed.demo_bundle(), "openvino", precision=p, threads=threads
        )
        for p in precisions
    }


def _gates(variants: dict[str, Pipeline], threads: int) -> dict[str, dict[str, Any]]:
    """``edgemed check`` of each variant: passed, and the mean Dice drop it measured."""
    from edgemed.cli.check import check_bundle
    from edgemed.settings import Options

    out = {}
    for name, pipe in variants.items():
        opts = Options.resolve(
            backend=pipe.backend.name, precision=pipe.backend.precision, threads=threads
        )
        report = check_bundle(edgemed.demo_bundle(), opts)
        out[name] = {
            "passed": report["passed"],
            "mean_dice_drop": report["metric"]["mean_dice_drop"],
            "failures": report["failures"],
        }
    return out


def _ort_u8_model(bundle: edgemed.Bundle, path: Path) -> Path | None:
    """The FP32 model quantized for ONNX Runtime's CPU provider (QDQ, uint8 activations,
    int8 per-channel weights), calibrated on 8 phantom slices through edgemed's
    preprocessing; None when onnxruntime.quantization is missing."""
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError:
        return None
    from edgemed.preprocess import preprocess

    feeds = []
    for seed in range(8):
        hu, _, _ = phantom(384, seed=100 + seed, region=("thorax", "abdomen")[seed % 2])
        batch, _ = preprocess([hu], bundle.preprocess)
        feeds.append({bundle.input.name: batch})

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    quantize_static(
        str(bundle.root / bundle.artifact("onnx", "fp32").path),
        str(path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    return path


def model_calls(bundle: edgemed.Bundle, threads: int, args: Any) -> dict[str, Any]:
    """The model call alone (256x256, batch 1) per engine and precision, in one set of
    alternating rounds; times in ms."""
    import tempfile

    from edgemed.backends.ort import OnnxRuntimeBackend

    x = {bundle.input.name: np.random.default_rng(0).random((1, 3, 256, 256), np.float32)}
    engines: dict[str, Any] = {
        f"ONNX Runtime {p} (bundle)": create_backend("onnxruntime", bundle, p, threads)
        for p in ("fp32", "int8")
    }
    with tempfile.TemporaryDirectory() as tmp:
        u8 = _ort_u8_model(bundle, Path(tmp) / "model.u8.onnx")
        if u8 is not None:
            engines["ONNX Runtime int8 (QDQ, uint8 activations)"] = OnnxRuntimeBackend(
                u8.read_bytes(), precision="int8", threads=threads
            )
    for name, pipe in edgemed_variants(threads).items():
        engines[name.replace("edgemed ", "") + " (bundle)"] = pipe.backend
    samples = timed_rounds(
        {name: (lambda be=be: be.infer(x)) for name, be in engines.items()},
        warmup=args.warmup,
        iterations=min(args.iterations, 100),
        budget_s=args.budget_s,
    )
    base = float(np.median(samples["ONNX Runtime fp32 (bundle)"]))
    return {
        name: {**stats(s), "vs_ort_fp32": round(float(np.median(s)) / base, 3)}
        for name, s in samples.items()
    }


def _markdown(data: dict[str, Any]) -> str:
    """The table README shows (one renderer: ``benchmarks/readme_tables.py``'s)."""
    from benchmarks.readme_tables import _cpu_compare

    return "\n".join(_cpu_compare(data)) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = arguments(__doc__, iterations=300, warmup=10, budget_s=60.0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    try:
        import monai  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        print("cpu_compare needs torch and MONAI (pip install 'edgemed[export-test]')")
        return 2
    threads = args.threads or default_threads()
    bundle = edgemed.Bundle.load(edgemed.demo_bundle())
    pipe = Pipeline(bundle, create_backend("onnxruntime", bundle, "fp32", threads))
    model_ms: dict[str, list[float]] = {
        "MONAI + PyTorch eager": [],
        "MONAI + ONNX Runtime": [],
    }
    tools = {
        "MONAI + PyTorch eager": monai_chain(
            bundle,
            _torch_model(threads),
            backend="torch",
            model_ms=model_ms["MONAI + PyTorch eager"],
        ),
        "MONAI + ONNX Runtime": monai_chain(
            bundle,
            _ort_session(bundle, threads),
            backend="onnxruntime",
            model_ms=model_ms["MONAI + ONNX Runtime"],
        ),
    }
    variants = edgemed_variants(threads)
    gates = _gates(variants, threads)
    hu512, sp512, _ = phantom(512)
    hu128, sp128 = ct_small()
    inputs = {"CT_small.dcm 128x128": (hu128, sp128), "phantom 512x512": (hu512, sp512)}
    data: dict[str, Any] = {
        "benchmark": "cpu_compare",
        "environment": environment("cpu_compare.py", ("torch", "monai")),
        "threads": threads,
        "target_speedup": TARGET_SPEEDUP,
        "inputs": {},
        "gates": gates,
    }
    for name, (hu, spacing) in inputs.items():
        image = MedicalImage(hu, spacing=spacing, modality="CT")
        reference = pipe(image).mask
        # Each case returns its model-call time, so it pairs with its own sample.
        cases = {"edgemed": lambda image=image: pipe(image).timings["infer"]}
        cases.update(
            {
                name: (lambda image=image, v=v: v(image).timings["infer"])
                for name, v in variants.items()
            }
        )
        cases.update(
            {
                tool: (lambda f=f, hu=hu, ms=model_ms[tool]: (f(hu), ms[-1])[1])
                for tool, f in tools.items()
            }
        )
        returned: dict[str, list[Any]] = {}
        samples = timed_rounds(
            cases,
            warmup=args.warmup,
            iterations=args.iterations,
            budget_s=args.budget_s,
            returned=returned,
        )
        summary = {tool: stats(s) for tool, s in samples.items()}
        # Time outside the model call, per call (the model's share is the same network
        # for all three; this is what the code around it costs).
        outside = {
            tool: round(float(np.median(np.subtract(s, returned[tool]))), 4)
            for tool, s in samples.items()
        }
        model = {tool: round(float(np.median(returned[tool])), 4) for tool, s in samples.items()}
        ours = summary["edgemed"]["p50_ms"]
        data["inputs"][name] = {
            "shape": list(hu.shape),
            "tools": summary,
            "model_p50_ms": model,
            "outside_model_p50_ms": outside,
            "speedup_p50": {t: round(s["p50_ms"] / ours, 3) for t, s in summary.items()},
            "outside_model_ratio": {
                t: round(v / outside["edgemed"], 3) for t, v in outside.items()
            },
            "dice_vs_edgemed": {
                **{tool: dice(f(hu), reference, len(bundle.labels)) for tool, f in tools.items()},
                **{
                    name: dice(v(image).mask, reference, len(bundle.labels))
                    for name, v in variants.items()
                },
            },
        }
        passed = ["edgemed"] + [n for n in variants if gates[n]["passed"]]
        fastest = min(passed, key=lambda n: summary[n]["p50_ms"])
        torch_ms = summary["MONAI + PyTorch eager"]["p50_ms"]
        data["inputs"][name]["best_gated"] = {
            "tool": fastest,
            "p50_ms": summary[fastest]["p50_ms"],
            "speedup_vs_torch": round(torch_ms / summary[fastest]["p50_ms"], 3),
        }
        print(name, {t: s["p50_ms"] for t, s in summary.items()}, file=sys.stderr)
    pipe.close()
    for v in variants.values():
        v.close()
    data["model_calls"] = model_calls(bundle, threads, args)
    write_results(args.out, "cpu_compare", data, _markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
