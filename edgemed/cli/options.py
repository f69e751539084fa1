"""Runtime options shared by the commands that run a pipeline (demo, run)."""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

from edgemed.errors import UsageError
from edgemed.settings import COMPUTED_FROM, PRECISIONS

if TYPE_CHECKING:
    from edgemed.settings import Options

__all__ = ["parse_spacing", "runtime", "runtime_options"]


def runtime_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--backend", default=None, help="auto (default), onnxruntime, openvino or tensorrt"
    )
    sp.add_argument(
        "--precision",
        default="fp32",
        choices=[*PRECISIONS, *COMPUTED_FROM],
        help="which model variant of the bundle runs (default fp32; bf16: the FP32 model "
        "in bf16 arithmetic, OpenVINO on a BF16 CPU only; check it with edgemed check)",
    )
    sp.add_argument(
        "--device",
        default=None,
        help="OpenVINO device: CPU (default), GPU or NPU",
    )
    sp.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for ONNX Runtime (default: cores, at most 8)",
    )
    sp.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="most 2D slices per backend call, 1 to 1024 (default 8)",
    )
    sp.add_argument(
        "--preprocess",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where preprocessing runs (auto: CUDA beside TensorRT, else CPU)",
    )
    sp.add_argument(
        "--engine-cache",
        default=None,
        metavar="DIR",
        help="TensorRT engine cache (default BUNDLE/engines or EDGEMED_ENGINE_CACHE)",
    )
    sp.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="TensorRT: replay a CUDA graph while calls keep one shape",
    )
    sp.add_argument(
        "--spacing",
        default=None,
        metavar="X,Y[,Z]",
        help="pixel spacing in mm for inputs that do not state it (PNG, JPEG, TIFF, NPY, "
        "DICOM without PixelSpacing), e.g. 0.7,0.7 or 0.7,0.7,2.5; without it they get "
        "pixel counts only. A file's own spacing is never overridden",
    )
    sp.add_argument(
        "--any-modality",
        action="store_true",
        help="run DICOM inputs whose Modality the bundle does not list (refused, "
        "INPUT_MODALITY, by default)",
    )
    sp.add_argument(
        "--series",
        default=None,
        metavar="UID",
        help="for a folder or DICOMDIR holding several DICOM series: the SeriesInstanceUID "
        "(or the id an error listed) of the one to run, over the bundle's series rules "
        "(default: EDGEMED_SERIES, else chosen by the rules)",
    )


def parse_spacing(text: str | None) -> tuple[float, ...] | None:
    """``--spacing X,Y[,Z]`` as millimetres (None when not given).

    Raises:
        UsageError: not 2 or 3 positive numbers.
    """
    if text is None:
        return None
    problem = f"--spacing must be X,Y or X,Y,Z in mm, positive numbers (got {text!r})"
    try:
        numbers = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise UsageError(problem) from None
    if len(numbers) not in (2, 3) or not all(math.isfinite(v) and v > 0 for v in numbers):
        raise UsageError(problem)
    return numbers


def runtime(args: argparse.Namespace) -> Options:
    """The options the runtime flags give, resolved as the library resolves them (what
    was given, then ``EDGEMED_*``, then defaults): one function for CLI and API. Called
    first, before ``--out`` is looked at, any input read or the model loaded: a bad flag
    is a usage error naming the flag.
    """
    from edgemed.settings import MAX_BATCH_SIZE, Options

    if not 1 <= args.batch_size <= MAX_BATCH_SIZE:
        raise UsageError(f"--batch-size must be between 1 and {MAX_BATCH_SIZE}")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be >= 1")
    return Options.resolve(
        backend=args.backend,
        precision=args.precision,
        threads=args.threads,
        batch_size=args.batch_size,
        preprocess=args.preprocess,
        engine_cache=args.engine_cache,
        check_modality=False if args.any_modality else None,
        cuda_graphs=args.cuda_graphs or None,
        spacing=parse_spacing(args.spacing),
        device=getattr(args, "device", None),
        series=getattr(args, "series", None),
    )
