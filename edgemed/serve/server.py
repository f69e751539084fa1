"""Running the app under uvicorn: one listening socket, graceful SIGTERM.

SIGTERM (systemd's stop, ``docker stop``) or Ctrl-C: ``/readyz`` turns 503 at once
(``SERVICE_DRAINING``), uvicorn stops accepting connections and waits for the requests
in progress, queued ones included, to be answered (up to ``drain_timeout_s``); then the
workers stop and the pipelines close, and :func:`serve` returns normally (exit 0).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
import sys
from typing import Any

from edgemed.errors import UsageError
from edgemed.serve.app import Service, create_app
from edgemed.serve.config import ServeConfig

__all__ = ["bind", "is_loopback", "serve"]

log = logging.getLogger("edgemed.serve")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost`` counts)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: one the OS picks)."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        # The protocol number matters: asyncio sets TCP_NODELAY only on sockets whose
        # proto is IPPROTO_TCP, and without it every keep-alive response stalls ~40 ms
        # (Nagle against the client's delayed ACK).
        sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from exc
    sock.set_inheritable(True)
    return sock


def serve(
    config: ServeConfig,
    host: str,
    port: int,
    *,
    drain_timeout_s: float = 30.0,
    access_log: bool = False,
) -> int:
    """Serve until SIGTERM/SIGINT; returns 0 after a clean drain.

    Prints ``edgemed serve: listening on http://HOST:PORT`` once the socket is bound
    (with ``--port 0`` that line says which port the OS picked).
    """
    import uvicorn

    if config.token is None and not is_loopback(host):
        raise UsageError(
            f"binding {host} (not a loopback address) needs --token-file: anyone on the "
            "network could otherwise send images and read results"
        )
    service = Service(config)
    app = create_app(config, service)

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            service.drain()  # /readyz says so at once; in-flight requests still finish
            super().handle_exit(sig, frame)

    uconfig = uvicorn.Config(
        app,
        log_config=None,  # the CLI's logging stays as it is
        access_log=access_log,
        timeout_graceful_shutdown=math.ceil(drain_timeout_s),
        timeout_keep_alive=5,
        server_header=False,
        lifespan="on",
    )
    sock = bind(host, port)
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    print(f"edgemed serve: listening on http://{shown}:{bound[1]}", flush=True)
    server = _Server(uconfig)
    from edgemed.cli.signals import ignored

    # uvicorn handles SIGINT/SIGTERM while it serves and re-raises the signal after a
    # clean shutdown; with them ignored around it, that re-raise ends nothing and a
    # drained service exits 0.
    with ignored():
        server.run(sockets=[sock])
    sock.close()
    if server.started is False:
        print("edgemed serve: the server did not start", file=sys.stderr)
        return 1
    return 0
