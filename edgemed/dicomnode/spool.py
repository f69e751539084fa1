"""The durable spool: what the node received, what it made of it, what it still owes.

Everything that matters is on disk, so a ``kill -9`` loses nothing acknowledged::

    SPOOL/salt                          16 random bytes (0600): the key of every hashed UID
    SPOOL/series/<sid>/state.json       waiting | processing | done | skipped | failed
    SPOOL/series/<sid>/i/<iid>.dcm      one received instance (as sent, with file meta)
    SPOOL/outbox/<rid>/seg.dcm, sr.dcm  the results of one processing of a series
    SPOOL/outbox/<rid>/delivery.json    pending | delivered | failed, attempts, per file

``sid``, ``iid`` and ``rid`` are HMAC-SHA256 digests (under the spool's salt) of the
Study + Series Instance UIDs, the SOP Instance UID, and the series' instance set: the
same hashing as a result's ``input_id``, so names on disk and log lines never carry a
UID, yet they are stable across restarts. An instance is written to a temporary name,
fsynced, renamed, and its directory fsynced before :meth:`Spool.store` returns (only
then does the SCP answer Success); a second copy of one SOP Instance UID is acknowledged
without a second write. A result folder is complete before its name appears (built
under a temporary name, fsynced, renamed), and its ``rid`` is fixed by the instances it
came from: a series processed again after a crash finds its results already there
instead of making a second set.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgemed.errors import OutputError, UsageError
from edgemed.fsutil import atomic_write, write_json
from edgemed.ids import salted_id

__all__ = ["SERIES_STATES", "Delivery", "SeriesState", "Spool"]

#: A series' states: ``waiting`` for more instances (or its turn), ``processing``,
#: ``done`` (results in the outbox), ``skipped`` (the bundle cannot use it; code says
#: why), ``failed`` (an error while processing; ``edgemed spool --retry`` re-queues).
SERIES_STATES = ("waiting", "processing", "done", "skipped", "failed")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: Path, parts: Sequence[bytes | memoryview], fsync: bool) -> None:
    """Create ``path`` (which must not exist) holding ``parts`` back to back, synced to
    disk when ``fsync``: the receiving hot path, so one ``open``, one ``writev`` and one
    ``fsync`` on the same descriptor (no second open to sync, no joined copy)."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        views = [memoryview(p).cast("B") for p in parts]
        while views:
            written = os.writev(fd, views) if hasattr(os, "writev") else os.write(fd, views[0])
            if not written:  # never for a regular file; no endless loop if it were
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            # A short write (a filling disk) goes on where it stopped; ENOSPC raises.
            while views and written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            if views and written:
                views[0] = views[0][written:]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _bytes_writer(data: bytes) -> Callable[[str], object]:
    return lambda path: Path(path).write_bytes(data)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class SeriesState:
    """One received series as the spool holds it."""

    sid: str
    state: str = "waiting"
    code: str | None = None
    result: str | None = None
    instances: int = 0
    updated: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "code": self.code,
            "result": self.result,
            "updated": self.updated,
        }


@dataclass
class Delivery:
    """One result folder's delivery state."""

    rid: str
    series: str
    files: dict[str, str]  # file name -> pending | delivered
    state: str = "pending"
    attempts: int = 0
    next_try: float = 0.0
    code: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "series": self.series,
            "files": self.files,
            "state": self.state,
            "attempts": self.attempts,
            "next_try": self.next_try,
            "code": self.code,
        }


class Spool:
    """A spool directory (created when missing).

    Thread-safe: state changes are serialised by one lock; instance writes of different
    associations run in parallel.

    Args:
        root: the spool directory.
        salt: key of the UID hashes (default: the spool's own ``salt`` file, made once).
        fsync: fsync each instance before it is acknowledged (turning it off is for
            benchmarks only: a power cut may then lose acknowledged instances).
    """

    def __init__(
        self, root: str | os.PathLike[str], *, salt: bytes | None = None, fsync: bool = True
    ) -> None:
        self.root = Path(root)
        self.fsync = fsync
        try:
            for sub in ("series", "outbox"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the spool ({exc.strerror})", path=root) from exc
        self.salt = salt or self._salt()
        self.lock = threading.RLock()
        self._known: set[str] = set()  # series directories known to exist (and fsynced)
        # Each series' state as this process last wrote or read it: receiving an instance
        # of a series known to be waiting needs no read of its state file. (Another
        # process only moves failed/skipped series to waiting: never stale in a way that
        # matters here.)
        self._states: dict[str, str] = {}

    # -- names -----------------------------------------------------------------------

    def _salt(self) -> bytes:
        path = self.root / "salt"
        if not path.exists():
            from edgemed.fsutil import write_private

            write_private(path, secrets.token_bytes(16))
        return path.read_bytes()

    def hash(self, *parts: str) -> str:
        """The spool's name for UIDs: their salted id under its salt (as a result's
        input_id), 32 hex digits."""
        return salted_id(self.salt, "\x1f".join(parts).encode())

    def series_dir(self, sid: str) -> Path:
        return self.root / "series" / sid

    def instances(self, sid: str) -> list[Path]:
        """The received instances of a series (sorted by name)."""
        folder = self.series_dir(sid) / "i"
        try:
            return sorted(p for p in folder.iterdir() if p.suffix == ".dcm")
        except OSError:
            return []

    # -- receiving -------------------------------------------------------------------

    def store(
        self,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        data: bytes | Sequence[bytes | memoryview],
    ) -> tuple[str, bool]:
        """Write one instance durably; returns ``(sid, new)``. ``new`` is False when this
        SOP Instance UID was already held (nothing is written again).

        ``data`` is the file's bytes, or its parts in order (file meta, then the dataset
        as received: written as they are, never joined into one copy). With ``fsync`` the
        file is synced, renamed to its name and its directory synced before this returns.

        Raises:
            OutputError: the instance could not be written and synced (disk full...).
        """
        sid = self.hash(study_uid, series_uid)
        folder = self.series_dir(sid) / "i"
        target = folder / f"{self.hash(sop_uid)}.dcm"
        if target.exists():
            return sid, False
        parts = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
        tmp = folder / f".tmp-{secrets.token_hex(8)}.dcm"
        try:
            if sid not in self._known:
                self._make_series(sid)
            _write_new(tmp, parts, self.fsync)  # the bytes are on disk before the name
            os.replace(tmp, target)
            tmp = target  # from here a failure removes the name again
            if self.fsync:
                _fsync_dir(folder)  # and the name is, before the SCP answers Success
        except OSError as exc:
            # Not acknowledged, so not kept: a kept name would read as "already held"
            # when the peer sends it again.
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise OutputError(f"cannot spool an instance ({exc.strerror})") from exc
        with self.lock:  # a series finished earlier gets new work
            if self._states.get(sid) != "waiting":
                state = self.read_series(sid)
                if state.state in ("done", "skipped", "failed"):
                    try:
                        self.write_series(SeriesState(sid, "waiting"))
                    except OutputError:
                        # Not acknowledged, and not kept: the peer's retry stores it again
                        # (a kept file would read as "already held" while its series
                        # stayed finished).
                        target.unlink(missing_ok=True)
                        raise
        return sid, True

    def _make_series(self, sid: str) -> None:
        folder = self.series_dir(sid)
        with self.lock:
            created = not folder.exists()
            (folder / "i").mkdir(parents=True, exist_ok=True)
            if created and self.fsync:  # the new names survive a power cut
                _fsync_dir(folder)
                _fsync_dir(folder.parent)
            if not (folder / "state.json").exists():
                self.write_series(SeriesState(sid, "waiting"))
            self._known.add(sid)

    # -- series state ----------------------------------------------------------------

    def read_series(self, sid: str) -> SeriesState:
        data = _read_json(self.series_dir(sid) / "state.json") or {}
        state = data.get("state")
        series = SeriesState(
            sid,
            state if state in SERIES_STATES else "waiting",
            data.get("code"),
            data.get("result"),
            updated=float(data.get("updated") or 0.0),
        )
        self._states[sid] = series.state
        return series

    def write_series(self, state: SeriesState) -> None:
        state.updated = time.time()
        write_json(self.series_dir(state.sid) / "state.json", state.to_dict())
        self._states[state.sid] = state.state

    def known_states(self) -> dict[str, str]:
        """Series states as this process last wrote or read them (a copy)."""
        with self.lock:
            return dict(self._states)

    def series_ids(self) -> list[str]:
        try:
            return sorted(p.name for p in (self.root / "series").iterdir() if p.is_dir())
        except OSError:
            return []

    def last_received(self, sid: str) -> float:
        """Wall-clock time the series' last instance arrived: the mtime of its instance
        folder, which each new name updates (and which survives a restart)."""
        try:
            return (self.series_dir(sid) / "i").stat().st_mtime
        except OSError:
            return 0.0

    def series(self) -> Iterator[SeriesState]:
        """Every series with its state and instance count."""
        for sid in self.series_ids():
            state = self.read_series(sid)
            state.instances = len(self.instances(sid))
            yield state

    def recover(self) -> None:
        """After a restart: series caught mid-processing wait again, and temporary files
        of interrupted writes are removed (their instances were never acknowledged)."""
        for sid in self.series_ids():
            folder = self.series_dir(sid)
            for tmp in list(folder.glob(".tmp-*")) + list((folder / "i").glob(".tmp-*")):
                tmp.unlink(missing_ok=True)
            with self.lock:
                if self.read_series(sid).state == "processing":
                    self.write_series(SeriesState(sid, "waiting"))
            self._known.add(sid)
        for tmp in (self.root / "outbox").glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)

    # -- results and deliveries ------------------------------------------------------

    def result_id(self, sid: str, instances: list[Path]) -> str:
        """The name of the results of ``sid`` made from exactly ``instances``."""
        return self.hash("result", sid, *sorted(p.stem for p in instances))

    def outbox(self, rid: str) -> Path:
        return self.root / "outbox" / rid

    def has_result(self, rid: str) -> bool:
        return (self.outbox(rid) / "delivery.json").exists()

    def add_result(self, rid: str, sid: str, files: dict[str, bytes]) -> None:
        """Publish one result folder (complete before its name appears)."""
        final = self.outbox(rid)
        tmp = self.root / "outbox" / f".tmp-{secrets.token_hex(8)}"
        try:
            tmp.mkdir()
            for name, data in files.items():
                atomic_write(tmp / name, _bytes_writer(data))
            delivery = Delivery(rid, sid, dict.fromkeys(files, "pending"))
            write_json(tmp / "delivery.json", delivery.to_dict())
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            raise OutputError(f"cannot write results ({exc.strerror})") from exc
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def read_delivery(self, rid: str) -> Delivery | None:
        data = _read_json(self.outbox(rid) / "delivery.json")
        if data is None:
            return None
        return Delivery(
            rid,
            str(data.get("series", "")),
            dict(data.get("files") or {}),
            str(data.get("state", "pending")),
            int(data.get("attempts", 0)),
            float(data.get("next_try", 0.0)),
            data.get("code"),
        )

    def write_delivery(self, delivery: Delivery) -> None:
        write_json(self.outbox(delivery.rid) / "delivery.json", delivery.to_dict())

    def deliveries(self) -> Iterator[Delivery]:
        try:
            names = sorted(
                p.name for p in (self.root / "outbox").iterdir() if not p.name.startswith(".")
            )
        except OSError:
            names = []
        for rid in names:
            delivery = self.read_delivery(rid)
            if delivery is not None:
                yield delivery

    # -- operator actions ------------------------------------------------------------

    def retry(self, ident: str) -> str:
        """Re-queue a failed (or skipped) series or a failed delivery by its id (or a
        unique prefix of it); returns what was re-queued, ``series`` or ``delivery``.

        Raises:
            UsageError: no such id, or it names something that has not failed.
        """
        series = [s for s in self.series_ids() if s.startswith(ident)]
        results = [d.rid for d in self.deliveries() if d.rid.startswith(ident)]
        if len(series) + len(results) != 1:
            raise UsageError(f"{ident!r} names {len(series) + len(results)} series/deliveries")
        with self.lock:
            if series:
                state = self.read_series(series[0])
                if state.state not in ("failed", "skipped"):
                    raise UsageError(f"series {series[0]} is {state.state}, not failed")
                self.write_series(SeriesState(series[0], "waiting"))
                return "series"
            delivery = self.read_delivery(results[0])
            assert delivery is not None
            if delivery.state == "delivered":
                raise UsageError(f"delivery {delivery.rid} is already delivered")
            delivery.state, delivery.attempts, delivery.next_try = "pending", 0, 0.0
            delivery.code = None
            self.write_delivery(delivery)
            return "delivery"
