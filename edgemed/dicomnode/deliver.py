"""Forwarding results by C-STORE, with retries and back-off, surviving restarts.

Each outbox folder is one delivery: its files go over one association; a file the
destination accepted is marked ``delivered`` in ``delivery.json`` at once, so a restart
resends only what was not acknowledged. A destination that cannot be reached delays the
delivery (back-off doubling from ``base_seconds`` up to ``max_seconds``) and never drops
it; one that answers a failure status for a file ``max_attempts`` times marks the
delivery ``failed`` with the status in its code (``edgemed spool --retry`` re-queues it).

Exactly once: a file counts as delivered only on the destination's Success (or Warning);
if the node dies between that answer and its note, the file goes again with the same SOP
Instance UID, and the destination keeps one copy.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from edgemed._lazy import require
from edgemed.dicomnode.spool import Delivery, Spool
from edgemed.errors import UsageError

__all__ = ["Destination", "Forwarder", "parse_destination"]

log = logging.getLogger("edgemed.dicomnode")


@dataclass(frozen=True)
class Destination:
    """Where results go: ``AET@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """``AET@HOST:PORT`` as a :class:`Destination`.

    Raises:
        UsageError: not of that form.
    """
    m = re.fullmatch(r"([^@]{1,16})@([^:@]+):(\d{1,5})", text.strip())
    if not m or not 0 < int(m.group(3)) < 65536:
        raise UsageError(f"--forward must be AET@HOST:PORT, got {text!r}")
    return Destination(m.group(1).strip(), m.group(2), int(m.group(3)))


class Forwarder:
    """Delivers the outbox to one destination from a background thread.

    Args:
        spool: the spool whose outbox is delivered.
        destination: the receiving AE.
        ae_title: our calling AE title.
        base_seconds, max_seconds: back-off after a failed attempt.
        max_attempts: failure statuses for one delivery before it is ``failed``.
        ssl_context: a client TLS context, for a destination that speaks DICOM TLS.
    """

    def __init__(
        self,
        spool: Spool,
        destination: Destination,
        *,
        ae_title: str = "EDGEMED",
        base_seconds: float = 1.0,
        max_seconds: float = 60.0,
        max_attempts: int = 5,
        ssl_context: Any = None,
    ) -> None:
        self.spool = spool
        self.destination = destination
        self.ae_title = ae_title
        self.base_seconds = base_seconds
        self.max_seconds = max_seconds
        self.max_attempts = max_attempts
        self.ssl_context = ssl_context
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="edgemed-forward", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self, _rid: str | None = None) -> None:
        """Look at the outbox now (a new result is there)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # never let one bad entry stop delivery
                log.exception("delivery pass failed")
            self._wake.wait(0.5)
            self._wake.clear()

    def run_once(self) -> int:
        """One pass over the outbox: attempt every pending delivery that is due.
        Returns how many were delivered in this pass."""
        done = 0
        for delivery in self.spool.deliveries():
            if self._stop.is_set():
                break
            if delivery.state != "pending" or delivery.next_try > time.time():
                continue
            if self.attempt(delivery):
                done += 1
        return done

    def _backoff(self, attempts: int) -> float:
        return min(self.max_seconds, self.base_seconds * 2 ** max(0, attempts - 1))

    def attempt(self, delivery: Delivery) -> bool:
        """Send what is left of one delivery; True when it is complete."""
        from pydicom import dcmread

        pynetdicom = require("pynetdicom", "listen", "forwarding results")
        from edgemed.dicomnode.scp import quiet_pynetdicom

        quiet_pynetdicom()
        folder = self.spool.outbox(delivery.rid)
        pending = [name for name, st in delivery.files.items() if st != "delivered"]
        datasets = {name: dcmread(folder / name) for name in pending}
        ae = pynetdicom.AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        for ds in datasets.values():
            ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        dest = self.destination
        tls = (self.ssl_context, dest.host) if self.ssl_context is not None else None
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls)
        delivery.attempts += 1
        rejected = None
        if not assoc.is_established:
            delivery.code = "DELIVERY_UNREACHABLE"
        else:
            try:
                for name, ds in datasets.items():
                    status = assoc.send_c_store(ds)
                    value = getattr(status, "Status", None)
                    # Success 0x0000, Warning 0xB000/0xB006/0xB007: stored.
                    if value is not None and (value == 0 or (value & 0xF000) == 0xB000):
                        delivery.files[name] = "delivered"
                        self.spool.write_delivery(delivery)  # noted at once
                    elif value is None:
                        delivery.code = "DELIVERY_NO_RESPONSE"
                        break
                    else:
                        rejected = f"DELIVERY_REJECTED_0x{value:04X}"
                        delivery.code = rejected
                        break
            finally:
                if assoc.is_established:
                    assoc.release()
        if all(st == "delivered" for st in delivery.files.values()):
            delivery.state, delivery.code = "delivered", None
            self.spool.write_delivery(delivery)
            log.info("result %s: delivered to %s", delivery.rid, dest.ae_title)
            return True
        if rejected is not None and delivery.attempts >= self.max_attempts:
            delivery.state = "failed"
        else:
            delivery.next_try = time.time() + self._backoff(delivery.attempts)
        self.spool.write_delivery(delivery)
        log.info(
            "result %s: attempt %d to %s: %s",
            delivery.rid,
            delivery.attempts,
            dest.ae_title,
            delivery.code,
        )
        return False
