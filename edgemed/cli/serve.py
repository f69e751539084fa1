"""``serve``: the resident HTTP service and its page (``edgemed[serve]``)."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

from edgemed.cli.options import runtime, runtime_options
from edgemed.errors import UsageError

__all__ = ["register"]

_EPILOG = """\
API: POST /v1/infer (body: one image file, or multipart/form-data with 'file' parts;
several DICOM parts are one series) -> result.json + id + links; GET /v1/results/ID/
{result.json,mask.nii.gz,overlay.png}; GET /v1/model; GET /healthz, /readyz, /metrics;
GET / is the page. Errors: {"error": {"code", "message"}} with 400, 401, 404, 408, 413,
415, 429 (+Retry-After), 503.

Binding anything but a loopback address needs --token-file (clients then send
"Authorization: Bearer TOKEN"). TLS: run it on 127.0.0.1 behind a TLS-terminating
proxy (deploy/nginx/edgemed.conf). As a systemd service: deploy/systemd/
edgemed-serve.service. SIGTERM finishes the requests in progress, then exits 0.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sp = sub.add_parser(
        "serve",
        help="run the HTTP service and its web page (resident, warm model)",
        description="Serve a bundle over HTTP: an API, a web page, health and metrics.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sp.add_argument("--bundle", default=None, help="bundle directory (default: the demo)")
    sp.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free)")
    sp.add_argument(
        "--token-file",
        default=None,
        metavar="FILE",
        help="file holding the bearer token (>= 16 characters; required off loopback)",
    )
    sp.add_argument(
        "--max-upload-mb", type=float, default=256, help="largest request body (default 256)"
    )
    sp.add_argument(
        "--max-parts", type=int, default=1024, help="most files in one multipart request"
    )
    sp.add_argument(
        "--queue", type=int, default=16, help="requests that may wait for a worker (default 16)"
    )
    sp.add_argument(
        "--workers", type=int, default=1, help="pipelines, one inference at a time each"
    )
    sp.add_argument(
        "--batch-window-ms",
        type=float,
        default=2.0,
        help="how long a 2D slice waits for others to share its backend call (0: never)",
    )
    sp.add_argument(
        "--body-timeout-s", type=float, default=60.0, help="time a body may take to arrive"
    )
    sp.add_argument("--store-results", type=int, default=64, help="results kept for GET")
    sp.add_argument("--store-mb", type=float, default=512, help="memory for kept results")
    sp.add_argument(
        "--drain-timeout-s",
        type=float,
        default=30.0,
        help="on SIGTERM, how long requests in progress may take to finish",
    )
    runtime_options(sp)
    sp.set_defaults(handler=_cmd_serve)


def read_token(path: str) -> str:
    """The token in ``path`` (whitespace around it ignored); refused when empty, short,
    or readable by others than its owner."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        text = p.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"cannot read --token-file ({exc.strerror or exc})", path=p) from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError("--token-file must be readable by its owner only (chmod 600)", path=p)
    if len(text) < 16:
        raise UsageError("--token-file must hold a token of at least 16 characters", path=p)
    return text


def _cmd_serve(args: argparse.Namespace) -> int:
    if args.threads is None:  # N pipelines share the cores instead of each taking all
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        args.threads = max(1, min(8, cores) // max(1, args.workers))
    options = runtime(args)
    from edgemed.bundle import Bundle
    from edgemed.serve import load
    from edgemed.serve.config import MIB, ServeConfig

    serve = load().serve  # a missing extra: one line naming pip install "edgemed[serve]"

    token = read_token(args.token_file) if args.token_file else None
    config = ServeConfig(
        bundle=args.bundle,
        options=options,
        workers=args.workers,
        queue=args.queue,
        max_upload_bytes=int(args.max_upload_mb * MIB),
        max_parts=args.max_parts,
        body_timeout_s=args.body_timeout_s,
        batch_window_ms=args.batch_window_ms,
        store_count=args.store_results,
        store_bytes=int(args.store_mb * MIB),
        token=token,
    )
    # A wrong --bundle or --precision is an error before anything listens.
    Bundle.load(config.bundle_path, trusted_key=options.trusted_key).artifact(
        "onnx", options.precision
    )
    return serve(
        config,
        args.host,
        args.port,
        drain_timeout_s=args.drain_timeout_s,
        access_log=bool(args.verbose or args.debug),
    )
