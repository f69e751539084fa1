"""The DICOM node: SCP + spool + series processing + forwarding, started and stopped as
one. ``edgemed listen`` is this with flags."""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgemed._lazy import require
from edgemed.dicomnode.deliver import Destination, Forwarder
from edgemed.dicomnode.scp import StorageSCP
from edgemed.dicomnode.series import Processor
from edgemed.dicomnode.spool import Spool

__all__ = ["Node", "NodeConfig"]

log = logging.getLogger("edgemed.dicomnode")


@dataclass
class NodeConfig:
    """How the node runs (``edgemed listen``'s flags)."""

    spool: str | os.PathLike[str]
    ae_title: str = "EDGEMED"
    host: str = "127.0.0.1"
    port: int = 11112
    allow_ae: Sequence[str] = ()
    forward: Destination | None = None
    stable_seconds: float = 5.0
    tls_port: int | None = None
    tls_context: ssl.SSLContext | None = None
    fsync: bool = True
    retry_max_seconds: float = 60.0
    modalities: Sequence[str] = field(default_factory=tuple)


class Node:
    """A running DICOM node.

    Args:
        config: the settings.
        pipelines: one pipeline per worker (from the same bundle).
    """

    def __init__(self, config: NodeConfig, pipelines: Sequence[Any]) -> None:
        self.config = config
        salt = pipelines[0].options.id_salt if pipelines else None
        self.spool = Spool(config.spool, salt=salt, fsync=config.fsync)
        self.forwarder = (
            Forwarder(
                self.spool,
                config.forward,
                ae_title=config.ae_title,
                max_seconds=config.retry_max_seconds,
            )
            if config.forward is not None
            else None
        )
        self.processor = Processor(
            self.spool,
            pipelines,
            stable_seconds=config.stable_seconds,
            on_result=self.forwarder.wake if self.forwarder is not None else None,
        )
        modalities = config.modalities or (pipelines[0].modalities if pipelines else ())
        self.scp = StorageSCP(
            self.spool,
            ae_title=config.ae_title,
            modalities=modalities,
            allow_ae=config.allow_ae,
        )
        self.port: int | None = None
        self.tls_port: int | None = None

    def start(self) -> None:
        """Recover the spool, start processing and forwarding, then listen."""
        # highdicom's import (about 0.5 s) here, not in the first series' latency.
        require("highdicom", "listen", "DICOM SEG and SR")
        self.spool.recover()
        self.processor.start()
        if self.forwarder is not None:
            self.forwarder.start()
        cfg = self.config
        self.port = self.scp.start(cfg.host, cfg.port)
        if cfg.tls_context is not None and cfg.tls_port is not None:
            self.tls_port = self.scp.start(cfg.host, cfg.tls_port, cfg.tls_context)

    def stop(self) -> None:
        """Stop listening, then the workers (a series being processed when they stop
        waits again after the next start)."""
        self.scp.stop()
        self.processor.stop()
        if self.forwarder is not None:
            self.forwarder.stop()

    def __enter__(self) -> Node:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
