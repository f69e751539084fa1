"""Runtime options shared by the commands that run a pipeline (demo, run)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from edgemed.errors import UsageError

if TYPE_CHECKING:
    from edgemed.settings import Options

__all__ = ["check_runtime_options", "open_pipeline", "runtime_options"]


def runtime_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--backend", default=None, help="auto (default), onnxruntime or tensorrt")
    sp.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "fp16", "int8"],
        help="which model variant of the bundle runs (default fp32)",
    )
    sp.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for ONNX Runtime (default: cores, at most 8)",
    )
    sp.add_argument(
        "--batch-size", type=int, default=8, help="most 2D slices per backend call (default 8)"
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
        "--any-modality",
        action="store_true",
        help="run DICOM inputs whose Modality the bundle does not list (refused, "
        "INPUT_MODALITY, by default)",
    )


def check_runtime_options(args: argparse.Namespace) -> None:
    """Usage errors first, before any input is read or model loaded."""
    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be >= 1")


def runtime(args: argparse.Namespace) -> Options:
    """The options the runtime flags give, resolved as the library resolves them (what
    was given, then ``EDGEMED_*``, then defaults): one function for CLI and API."""
    from edgemed.settings import Options

    return Options.resolve(
        backend=args.backend,
        precision=args.precision,
        threads=args.threads,
        batch_size=args.batch_size,
        preprocess=args.preprocess,
        engine_cache=args.engine_cache,
        check_modality=False if args.any_modality else None,
        cuda_graphs=args.cuda_graphs or None,
    )


def open_pipeline(args: argparse.Namespace, bundle: str | Path):
    """The Pipeline for ``bundle`` from the runtime flags (see :func:`runtime`)."""
    from edgemed.pipeline import Pipeline

    return Pipeline.from_bundle(bundle, options=runtime(args))
