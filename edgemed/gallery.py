"""Similar-case galleries: stored embeddings of earlier images, matched by cosine.

A gallery is a folder of two files (plain, documented formats; nothing pickled):

``gallery.json``
    ``{"format": "edgemed-gallery", "format_version": 1, "bundle": {"name", "version",
    "manifest_sha256"}, "dimensions": D, "entries": N, "data": {"path":
    "entries-<sha256[:16]>.npz", "sha256": ..., "bytes": ...}, "precisions": [...],
    "updated": ...}``
``entries-<sha256[:16]>.npz``
    NumPy arrays ``embeddings`` (float32 ``(N, D)``, unit length), ``ids`` (unicode
    ``(N,)``) and ``labels`` (unicode ``(N,)``, ``""`` where none was given); loaded with
    ``allow_pickle=False``.

Writes are atomic and ordered (:func:`edgemed.fsutil.atomic_write`): a new data file
under its own content-derived name first, then ``gallery.json`` naming it, then the old
data file is removed, so a crash leaves the previous gallery or the new one, never a mix.
Loading checks the data file's size and sha256 before NumPy parses a byte
(``GALLERY_INTEGRITY``).

Embeddings of two models are not comparable, so a gallery records the bundle that made
it, and :meth:`Gallery.check_bundle` refuses any other (``GALLERY_BUNDLE_MISMATCH``), a
rebuilt bundle included (its manifest differs). Precisions of one bundle are comparable
(their export gate holds the cosine to FP32 >= 0.99) and are only recorded.

Entry ids are the user's (``--id``) or the pipeline's salted input id (an HMAC of the
pixels, :func:`edgemed.pipeline.input_id`), never a file name or a DICOM field; labels
are optional free text the user gives.

Search is exact by default: one float32 matrix product with NumPy, fine up to
:data:`EXACT_LIMIT` entries (a 10^6 x 64 gallery is 256 MB and answers a query in tens of
milliseconds; ``benchmarks/gallery_search.py`` measures it). The ``faiss`` extra
(``pip install "edgemed[faiss]"``, faiss-cpu) adds ``index="faiss"`` (exact inner product,
faster on many queries) and ``index="faiss-hnsw"`` (approximate HNSW graph, sublinear
queries for very large galleries); those indexes are built in memory on first use.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgemed._lazy import require
from edgemed.errors import GalleryError, UsageError
from edgemed.fsutil import atomic_write, write_json

if TYPE_CHECKING:
    from edgemed.bundle import Bundle

__all__ = [
    "EXACT_LIMIT",
    "FORMAT",
    "FORMAT_VERSION",
    "INDEXES",
    "SIDECAR",
    "Gallery",
    "Match",
    "entry_ids",
]

FORMAT = "edgemed-gallery"
FORMAT_VERSION = 1
SIDECAR = "gallery.json"
#: Entries up to which exact NumPy search is the documented default (beyond, use faiss).
EXACT_LIMIT = 1_000_000
INDEXES = ("exact", "faiss", "faiss-hnsw")
_ID = re.compile(r"[^\x00-\x1f\x7f]{1,200}")
_CHUNK = 65536  # gallery rows per matrix product: bounds the (Q, chunk) similarity block


@dataclass(frozen=True)
class Match:
    """One gallery entry found for a query: its ``id``, ``label`` (None: none given),
    cosine ``similarity`` and ``row`` in the gallery."""

    id: str
    label: str | None
    similarity: float
    row: int

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "similarity": round(self.similarity, 6)}


def entry_ids(base: str, count: int) -> list[str]:
    """Ids for the ``count`` slices of one input: ``base`` for one slice, else
    ``base#1``, ``base#2``, ... in the order the model saw them."""
    return [base] if count == 1 else [f"{base}#{k + 1}" for k in range(count)]


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(norms > 0):
        raise UsageError("an embedding of length 0 cannot be matched by cosine")
    return (x / norms).astype(np.float32)


class Gallery:
    """Embeddings with ids and labels, tied to the bundle that made them.

    Create with :meth:`create` (empty) or :meth:`load`; :meth:`add`, :meth:`save`,
    :meth:`search`.
    """

    def __init__(
        self,
        bundle: dict[str, str],
        dimensions: int,
        embeddings: np.ndarray | None = None,
        ids: Sequence[str] = (),
        labels: Sequence[str | None] = (),
        precisions: Sequence[str] = (),
    ) -> None:
        self.bundle = {k: str(bundle[k]) for k in ("name", "version", "manifest_sha256")}
        self.dimensions = int(dimensions)
        self.embeddings = (
            np.zeros((0, self.dimensions), np.float32) if embeddings is None else embeddings
        )
        self.ids = list(ids)
        self.labels: list[str | None] = list(labels) if labels else [None] * len(self.ids)
        self.precisions = sorted(set(precisions))
        self._index: dict[str, Any] = {}

    @classmethod
    def create(cls, bundle: Bundle, dimensions: int) -> Gallery:
        """An empty gallery for ``bundle``'s embeddings of ``dimensions`` values."""
        return cls(
            {"name": bundle.name, "version": bundle.version,
             "manifest_sha256": bundle.manifest_sha256},
            dimensions,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.ids)

    # -- bundle ------------------------------------------------------------------------

    def check_bundle(self, bundle: Bundle) -> None:
        """Refuse ``bundle`` unless it is the one that made this gallery.

        Raises:
            GalleryError: ``GALLERY_BUNDLE_MISMATCH``.
        """
        got = {"name": bundle.name, "version": bundle.version,
               "manifest_sha256": bundle.manifest_sha256}  # fmt: skip
        if got != self.bundle:
            raise GalleryError(
                f"the gallery was made by {self.bundle['name']} {self.bundle['version']} "
                f"(manifest {self.bundle['manifest_sha256'][:12]}), not by {bundle.name} "
                f"{bundle.version} (manifest {bundle.manifest_sha256[:12]}): embeddings of "
                "different models cannot be compared; build the gallery again with this bundle",
                code="GALLERY_BUNDLE_MISMATCH",
            )

    # -- adding --------------------------------------------------------------------------

    def add(
        self,
        embeddings: np.ndarray,
        ids: Sequence[str],
        labels: Sequence[str | None] | None = None,
        precision: str | None = None,
    ) -> None:
        """Add rows (normalised to unit length here) with their ids and labels.

        Raises:
            UsageError: ``USAGE_GALLERY_ID`` (an empty, too long, control-character or
                duplicate id), or rows of another dimension, or not finite.
        """
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.dimensions:
            raise UsageError(f"embeddings must be (N, {self.dimensions}), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise UsageError("embeddings must be finite")
        labels = [None] * len(ids) if labels is None else list(labels)
        if len(ids) != len(x) or len(labels) != len(x):
            raise UsageError(f"{len(x)} embeddings, {len(ids)} ids, {len(labels)} labels")
        seen = set(self.ids)
        for i in ids:
            if not isinstance(i, str) or not _ID.fullmatch(i):
                raise UsageError(
                    "gallery ids are 1-200 printable characters", code="USAGE_GALLERY_ID"
                )
            if i in seen:
                raise UsageError(f"id {i!r} is already in the gallery", code="USAGE_GALLERY_ID")
            seen.add(i)
        self.embeddings = np.concatenate([self.embeddings, _unit(x)]) if len(x) else self.embeddings
        self.ids += list(ids)
        self.labels += [None if lab in (None, "") else str(lab) for lab in labels]
        if precision:
            self.precisions = sorted({*self.precisions, precision})
        self._index.clear()

    # -- storing -------------------------------------------------------------------------

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the gallery into ``folder`` (created if needed), atomically."""
        folder = Path(folder)
        buf = io.BytesIO()
        labels = [lab or "" for lab in self.labels]
        np.savez(
            buf,
            embeddings=self.embeddings,
            ids=np.array(self.ids, dtype=str) if self.ids else np.zeros(0, "<U1"),
            labels=np.array(labels, dtype=str) if labels else np.zeros(0, "<U1"),
        )
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        name = f"entries-{digest[:16]}.npz"
        atomic_write(folder / name, lambda tmp: Path(tmp).write_bytes(data))
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "bundle": self.bundle,
            "dimensions": self.dimensions,
            "entries": len(self),
            "data": {"path": name, "sha256": digest, "bytes": len(data)},
            "precisions": self.precisions,
            "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(folder / SIDECAR, meta)
        for old in folder.glob("entries-*.npz"):  # superseded data files
            if old.name != name:
                old.unlink(missing_ok=True)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str], bundle: Bundle | None = None) -> Gallery:
        """Read and verify the gallery in ``folder``; with ``bundle``, also check it is
        the bundle that made it.

        Raises:
            GalleryError: ``GALLERY_NOT_FOUND``, ``GALLERY_INVALID``,
                ``GALLERY_INTEGRITY`` (data file missing, truncated or changed),
                ``GALLERY_BUNDLE_MISMATCH``.
        """
        folder = Path(folder)
        side = folder / SIDECAR
        if not side.is_file():
            raise GalleryError("no gallery.json here", code="GALLERY_NOT_FOUND", path=folder)

        def bad(msg: str, code: str = "GALLERY_INVALID") -> GalleryError:
            return GalleryError(f"gallery: {msg}", code=code, path=side)

        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
            if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
                raise bad(f"not an {FORMAT} version {FORMAT_VERSION} file")
            ref = meta["data"]
            name, digest, size = str(ref["path"]), str(ref["sha256"]), int(ref["bytes"])
            dims, count = int(meta["dimensions"]), int(meta["entries"])
            owner = {k: str(meta["bundle"][k]) for k in ("name", "version", "manifest_sha256")}
        except GalleryError:
            raise
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise bad(f"gallery.json is malformed ({exc.__class__.__name__})") from exc
        if not re.fullmatch(r"entries-[0-9a-f]{16}\.npz", name):
            raise bad("data path must be entries-<hex>.npz inside the gallery")
        data_path = folder / name
        if not data_path.is_file():
            raise bad(f"{name} is missing", "GALLERY_INTEGRITY")
        # Size, then sha256, of the bytes NumPy will parse (read once).
        if data_path.stat().st_size != size:
            raise bad(f"{name} is not the size gallery.json records", "GALLERY_INTEGRITY")
        raw = data_path.read_bytes()
        if len(raw) != size or hashlib.sha256(raw).hexdigest() != digest:
            raise bad(f"{name} does not match its sha256", "GALLERY_INTEGRITY")
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                emb = np.asarray(z["embeddings"], dtype=np.float32)
                ids = [str(i) for i in z["ids"]]
                labels = [str(lab) or None for lab in z["labels"]]
        except (OSError, ValueError, KeyError) as exc:
            raise bad(f"{name} cannot be read ({exc.__class__.__name__})") from exc
        if emb.shape != (count, dims) or len(ids) != count or len(labels) != count:
            raise bad(f"{name} holds {emb.shape}, gallery.json says ({count}, {dims})")
        gallery = cls(owner, dims, emb, ids, labels, meta.get("precisions", []))
        if bundle is not None:
            gallery.check_bundle(bundle)
        return gallery

    # -- searching -----------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int = 5, index: str = "exact") -> list[list[Match]]:
        """The ``k`` most similar entries (cosine) for each query row, most similar first;
        equal similarities keep gallery order (exact search).

        Args:
            queries: ``(D,)`` or ``(Q, D)`` embeddings (normalised here).
            k: how many per query (fewer when the gallery is smaller).
            index: ``exact`` (NumPy), ``faiss`` (exact, faiss-cpu) or ``faiss-hnsw``
                (approximate).
        """
        if index not in INDEXES:
            raise UsageError(f"index must be one of {INDEXES}, got {index!r}")
        q = np.asarray(queries, dtype=np.float32)
        q = q[None] if q.ndim == 1 else q
        if q.ndim != 2 or q.shape[1] != self.dimensions:
            raise UsageError(f"queries must be (Q, {self.dimensions}), got {q.shape}")
        if k < 1:
            raise UsageError("k must be at least 1")
        k = min(k, len(self))
        if k == 0:
            return [[] for _ in q]
        q = _unit(q)
        if index == "exact":
            rows, sims = self._exact(q, k)
        else:
            sims, rows = self._faiss(index).search(q, k)
        return [
            [
                Match(self.ids[r], self.labels[r], float(s), int(r))
                for r, s in zip(rr, ss, strict=True)
                if r >= 0
            ]
            for rr, ss in zip(rows, sims, strict=True)
        ]

    def _exact(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Brute force: every similarity, then the k largest, ties by row (what a stable
        sort of the whole gallery gives), chunk by chunk."""
        best_r = [np.zeros(0, np.int64) for _ in q]
        best_s = [np.zeros(0, np.float32) for _ in q]
        for start in range(0, len(self), _CHUNK):
            s = q @ self.embeddings[start : start + _CHUNK].T
            kk = min(k, s.shape[1])
            part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            kth = np.take_along_axis(s, part, 1).min(1)
            # Rows where the k-th value is tied beyond the k picked: keep every tie.
            tied = (s >= kth[:, None]).sum(1) > kk
            for i in range(len(q)):
                idx = np.nonzero(s[i] >= kth[i])[0] if tied[i] else part[i]
                r = np.concatenate([best_r[i], idx + start])
                v = np.concatenate([best_s[i], s[i, idx]])
                order = np.lexsort((r, -v))[:k]
                best_r[i], best_s[i] = r[order], v[order]
        return np.stack(best_r), np.stack(best_s)

    def _faiss(self, kind: str) -> Any:
        if kind not in self._index:
            faiss = require("faiss", "faiss", "faiss gallery indexes")
            if kind == "faiss":
                idx = faiss.IndexFlatIP(self.dimensions)
            else:
                idx = faiss.IndexHNSWFlat(self.dimensions, 32, faiss.METRIC_INNER_PRODUCT)
                idx.hnsw.efConstruction = 80
                idx.hnsw.efSearch = 128
            idx.add(np.ascontiguousarray(self.embeddings))
            self._index[kind] = idx
        return self._index[kind]
