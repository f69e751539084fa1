"""``build`` and ``doctor``: TensorRT engines and the GPU stack (``gpu`` extra)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgemed.errors import UsageError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser(
        "build", help="build the TensorRT engine of a bundle's ONNX for this GPU (cached)"
    )
    a = b.add_argument
    a("bundle", help="bundle directory")
    a("--precision", default="fp32", choices=["fp32", "fp16", "int8"], help="ONNX variant")
    a("--batch", default=None, help="batch range MIN:OPT:MAX (default 1:8:8)")
    a(
        "--dim",
        action="append",
        default=[],
        metavar="AXIS=MIN:OPT:MAX",
        help="range of another dynamic axis (repeatable)",
    )
    a("--workspace", type=int, default=None, metavar="MIB", help="builder workspace cap (MiB)")
    a(
        "--hardware-compat",
        nargs="?",
        const="ampere_plus",
        default="none",
        choices=["none", "ampere_plus", "same_compute_capability"],
        help="let the engine run on other GPUs too (no value: ampere_plus)",
    )
    a(
        "--tf32",
        action="store_true",
        help="allow TF32 for float32 math (faster; off by default so FP32 engines compute "
        "what ONNX Runtime and the export's gates did; recorded in the provenance)",
    )
    a(
        "--cache",
        default=None,
        metavar="DIR",
        help="engine cache (default BUNDLE/engines or EDGEMED_ENGINE_CACHE)",
    )
    a("--no-timing-cache", action="store_true", help="neither read nor update the timing cache")
    a("--force", action="store_true", help="rebuild even if a verified engine exists")
    a("--device", type=int, default=0, help="CUDA device ordinal (default 0)")
    b.set_defaults(handler=_cmd_build)
    d = sub.add_parser("doctor", help="show GPU, CUDA, TensorRT and which backend auto picks")
    d.add_argument("--bundle", default=None, help="bundle to probe backends for (default demo)")
    d.add_argument("--json", action="store_true", help="print the facts as JSON")
    d.set_defaults(handler=_cmd_doctor)


def _cmd_build(args: argparse.Namespace) -> int:
    from edgemed.backends.tensorrt.builder import BuildOptions, build_engine
    from edgemed.backends.tensorrt.cache import EngineCache
    from edgemed.bundle import Bundle

    ranges: dict[str, str] = {}
    for item in args.dim:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--dim takes AXIS=MIN:OPT:MAX, got {item!r}")
        ranges[name.strip()] = value
    if args.batch is not None:
        ranges["batch"] = args.batch
    if args.workspace is not None and args.workspace < 1:
        raise UsageError("--workspace must be at least 1 MiB")
    bundle = Bundle.load(args.bundle)
    options = BuildOptions(
        precision=args.precision,
        ranges=ranges,
        workspace_mib=args.workspace,
        hardware_compat=args.hardware_compat,
        tf32=args.tf32,
        timing_cache=not args.no_timing_cache,
        force=args.force,
        device=args.device,
    )
    cache = EngineCache.for_bundle(bundle, args.cache or args.settings.engine_cache)
    result = build_engine(bundle, options, cache)
    if not result.built:
        print(f"up to date: {result.plan_path} (use --force to rebuild)")
    print(f"  key      {result.key.describe()}, profile {result.key.profile}")
    print(f"  sidecar  {result.plan_path.with_suffix('.json')}")
    print(f"  kernels  {_build_kernels(cache.kernel_dir, args.device)}")
    return 0


def _build_kernels(out: Path, device: int) -> str:
    """The CUDA kernels as cubins for this GPU beside the engines, so the runtime needs
    no compiler; without nvcc, pycuda compiles them at first use instead (and caches)."""
    import shutil

    from edgemed.cuda.build import build_cubin
    from edgemed.cuda.device import query_device

    if shutil.which("nvcc") is None:
        return "nvcc not found: compiled by pycuda at first use (needs nvcc then)"
    paths = build_cubin(out, query_device(device).arch)
    return ", ".join(str(p) for p in paths)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from edgemed.doctor import format_report, gather

    bundle = None
    if args.bundle:
        from edgemed.bundle import Bundle

        bundle = Bundle.load(args.bundle)
    facts = gather(bundle)
    print(json.dumps(facts, indent=2) if args.json else format_report(facts))
    return 0
