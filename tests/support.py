"""Small helpers shared by test modules (import as ``tests.support``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from edgemed.errors import EdgemedError


def error_code(
    call: Callable[..., Any],
    *args: Any,
    kind: type[EdgemedError] | tuple[type[EdgemedError], ...] = EdgemedError,
    **kwargs: Any,
) -> str:
    """The stable code of the ``kind`` error that ``call(*args, **kwargs)`` raises (the
    test fails if it raises nothing or something else)."""
    with pytest.raises(kind) as excinfo:
        call(*args, **kwargs)
    return excinfo.value.code
