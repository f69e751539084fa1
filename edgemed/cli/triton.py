"""``triton-repo``: a Triton Inference Server model repository for a bundle
(:mod:`edgemed.triton.repo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgemed.settings import PRECISIONS

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "triton-repo",
        help="write a Triton Inference Server model repository that serves a bundle",
        description="Write OUT/NAME/{config.pbtxt,1/model.py,1/bundle/}: a Python-backend "
        "model running edgemed's pipeline on the bundle, with dynamic batching.",
    )
    p.add_argument("bundle", metavar="BUNDLE", help="bundle directory")
    p.add_argument("out", metavar="OUT", help="model repository folder (created if missing)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--max-batch", type=int, default=8, help="max_batch_size (default 8)")
    p.add_argument("--instances", type=int, default=1, help="instance_group count (default 1)")
    p.add_argument(
        "--kind",
        default="cpu",
        choices=["cpu", "gpu"],
        help="cpu: ONNX Runtime on CPU instances; gpu: edgemed's TensorRT backend, "
        "instances on every GPU (default cpu)",
    )
    p.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=2000,
        help="how long the dynamic batcher waits to fill a batch (default 2000)",
    )
    p.add_argument("--name", default=None, help="model name (default: the bundle's name)")
    p.add_argument("--backend", default=None, help="edgemed backend inside the model")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per instance")
    p.add_argument(
        "--python-env",
        default=None,
        metavar="DIR",
        help="virtual/conda environment with edgemed and numpy<2 for the model "
        "(Triton's EXECUTION_ENV_PATH); default: the server's own Python",
    )
    p.add_argument(
        "--trusted-key",
        default=None,
        metavar="PEM",
        help="public key the bundle must be signed with, checked now and at every load "
        "(its path is recorded; keep it outside the repository)",
    )
    p.add_argument(
        "--engine-cache", default=None, metavar="DIR", help="gpu: TensorRT engine folder"
    )
    p.set_defaults(handler=_cmd_triton_repo)


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


def _cmd_triton_repo(args: argparse.Namespace) -> int:
    from edgemed.triton.repo import RepoOptions, write_repository

    opts = RepoOptions(
        precision=args.precision,
        max_batch=args.max_batch,
        instances=args.instances,
        kind=args.kind,
        max_queue_delay_us=args.max_queue_delay_us,
        backend=args.backend,
        threads=args.threads,
        python_env=_absolute(args.python_env),
        trusted_key=_absolute(args.trusted_key),
        engine_cache=_absolute(args.engine_cache),
        name=args.name,
    )
    model_dir = write_repository(args.bundle, args.out, opts)
    print(f"wrote {model_dir}/ (config.pbtxt, 1/model.py, 1/bundle/)")
    print(
        f"  serve    tritonserver --model-repository {Path(args.out).resolve()}  "
        f"(ready: GET /v2/health/ready; model: {model_dir.name})"
    )
    return 0
