"""``listen``: the DICOM node (C-STORE in; DICOM SEG and SR out, forwarded by C-STORE).

Runs until Ctrl-C or SIGTERM (exit 0 after a clean stop). The line
``edgemed listen: ready AE@HOST:PORT`` on stdout says it accepts associations.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading

from edgemed.cli.options import runtime, runtime_options
from edgemed.errors import UsageError

__all__ = ["register"]


def _ae_title(text: str) -> str:
    title = text.strip()
    if not 0 < len(title) <= 16 or not title.isascii() or "\\" in title:
        raise argparse.ArgumentTypeError("an AE title is 1 to 16 ASCII characters")
    return title


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "listen",
        help="DICOM node: receive series (C-STORE), send back DICOM SEG and SR",
        description="A C-ECHO/C-STORE SCP: every acknowledged instance is on disk in "
        "--spool; a series quiet for --stable-seconds goes through the bundle, its DICOM "
        "SEG and SR go to the spool's outbox and, with --forward, to a PACS by C-STORE.",
    )
    p.add_argument("--bundle", default=None, help="bundle directory (default: the demo)")
    p.add_argument("--ae-title", type=_ae_title, default="EDGEMED", help="our AE title")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=11112, help="DICOM port (0: any free port)")
    p.add_argument("--spool", required=True, metavar="DIR", help="spool directory")
    p.add_argument(
        "--allow-ae",
        default=None,
        metavar="AET,...",
        help="calling AE titles allowed (default: any)",
    )
    p.add_argument(
        "--forward", default=None, metavar="AET@HOST:PORT", help="send results there by C-STORE"
    )
    p.add_argument(
        "--stable-seconds",
        type=float,
        default=5.0,
        help="a series is complete when no instance arrived for this long (default 5)",
    )
    p.add_argument("--workers", type=int, default=1, help="series processed in parallel")
    p.add_argument(
        "--retry-max-seconds",
        type=float,
        default=60.0,
        help="longest wait between delivery attempts (default 60)",
    )
    p.add_argument("--tls-cert", default=None, help="PEM certificate for DICOM TLS")
    p.add_argument("--tls-key", default=None, help="PEM private key for DICOM TLS")
    p.add_argument(
        "--tls-ca", default=None, help="PEM CA: TLS clients must present a certificate it signed"
    )
    p.add_argument(
        "--tls-port", type=int, default=2762, help="DICOM TLS port (default 2762; 0: any free)"
    )
    p.add_argument(
        "--no-fsync",
        action="store_true",
        help="acknowledge before the disk has synced (benchmarks only: a power cut "
        "may lose acknowledged instances)",
    )
    runtime_options(p)
    p.set_defaults(handler=_cmd_listen)


def _cmd_listen(args: argparse.Namespace) -> int:
    options = runtime(args)
    from edgemed.dicomnode.deliver import parse_destination
    from edgemed.dicomnode.node import Node, NodeConfig
    from edgemed.dicomnode.scp import server_tls
    from edgemed.pipeline import Pipeline, demo_bundle

    if args.workers < 1:
        raise UsageError("--workers must be >= 1")
    if args.stable_seconds < 0:
        raise UsageError("--stable-seconds must be >= 0")
    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_ca and not args.tls_cert):
        raise UsageError("--tls-cert and --tls-key go together (--tls-ca needs them)")
    allow = [_ae_title(a) for a in args.allow_ae.split(",")] if args.allow_ae else []
    forward = parse_destination(args.forward) if args.forward else None
    tls = server_tls(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None
    # The node's one line per association/series/result is its log: INFO by default.
    node_log = logging.getLogger("edgemed.dicomnode")
    if node_log.getEffectiveLevel() > logging.INFO:
        node_log.setLevel(logging.INFO)

    pipelines = []
    try:
        for _ in range(args.workers):
            pipelines.append(Pipeline.from_bundle(args.bundle or demo_bundle(), options=options))
        config = NodeConfig(
            spool=args.spool,
            ae_title=args.ae_title,
            host=args.host,
            port=args.port,
            allow_ae=allow,
            forward=forward,
            stable_seconds=args.stable_seconds,
            tls_port=args.tls_port if tls is not None else None,
            tls_context=tls,
            fsync=not args.no_fsync,
            retry_max_seconds=args.retry_max_seconds,
        )
        node = Node(config, pipelines)
        node.start()
        try:
            where = f"{args.ae_title}@{args.host}:{node.port}"
            if node.tls_port is not None:
                where += f" tls:{node.tls_port}"
            print(f"edgemed listen: ready {where}", flush=True)
            threading.Event().wait()  # until Ctrl-C / SIGTERM
        except KeyboardInterrupt:
            print("edgemed listen: stopping", file=sys.stderr, flush=True)
        finally:
            node.stop()
    finally:
        for pipe in pipelines:
            pipe.close()
    return 0
