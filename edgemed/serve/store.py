"""The bounded in-memory result store behind ``GET /v1/results/{id}/...``.

Results are never written to disk. The store holds at most ``max_count`` results and
``max_bytes`` of them (the answer JSON plus the arrays a result keeps for its files:
mask and input image); the oldest are evicted first. A result larger than the whole
byte cap is answered but not kept.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

__all__ = ["ID_PATTERN", "ResultStore", "StoredResult"]

#: What a result id looks like (anything else is 404 without a look-up).
ID_PATTERN = re.compile(r"[0-9a-f]{32}")


@dataclass
class StoredResult:
    """One answered request: its JSON body and the result it came from (whose head
    renders the files on demand)."""

    id: str
    body: bytes
    result: Any
    nbytes: int


def _result_bytes(result: Any) -> int:
    """Memory a stored result keeps alive: the arrays of its input and its output."""
    total = int(getattr(result.image.array, "nbytes", 0))
    output = result.output
    for value in (
        vars(output).values() if output is not None and hasattr(output, "__dict__") else ()
    ):
        total += int(getattr(value, "nbytes", 0))
    return total


class ResultStore:
    """Results by id, count- and byte-capped, oldest evicted first. Thread-safe.

    Args:
        max_count: most results kept.
        max_bytes: most bytes kept (see the module docstring for what counts).
    """

    def __init__(self, max_count: int, max_bytes: int) -> None:
        if max_count < 1 or max_bytes < 1:
            raise ValueError("store caps must be positive")
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, StoredResult] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def new_id() -> str:
        """A fresh random id (never derived from the input)."""
        return secrets.token_hex(16)

    def put(self, rid: str, body: bytes, result: Any) -> bool:
        """Keep ``body`` and ``result`` under ``rid``; returns False when the result alone
        is over the byte cap (then nothing is kept)."""
        entry = StoredResult(rid, body, result, len(body) + _result_bytes(result))
        if entry.nbytes > self.max_bytes:
            return False
        with self._lock:
            self._items[rid] = entry
            self._bytes += entry.nbytes
            while len(self._items) > self.max_count or self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes
        return True

    def get(self, rid: str) -> StoredResult | None:
        """The entry for ``rid``, or None (also for anything not shaped like an id)."""
        if not ID_PATTERN.fullmatch(rid):
            return None
        with self._lock:
            return self._items.get(rid)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return self._bytes
