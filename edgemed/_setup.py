"""Library-wide setup, applied when ``edgemed`` is imported (API, CLI and services
alike): third-party libraries edgemed drives must not print patient data.

pydicom warns and logs about odd files in its own words, which can quote element values
(names, IDs); edgemed's typed one-line errors say what matters. So its logger is silenced
and its warnings ignored, unless :func:`quiet_libraries` is called with ``debug=True``
(``edgemed --debug``), for a developer looking at a file of their own.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, cast

__all__ = ["QUIET_LOGGERS", "quiet_libraries"]

#: Loggers of libraries edgemed drives that can log element values.
QUIET_LOGGERS = ("pydicom",)


def quiet_libraries(debug: bool = False) -> None:
    """Silence (or, with ``debug``, restore) the loggers and warnings of
    :data:`QUIET_LOGGERS`."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.CRITICAL)
        pattern = rf"{name}(\.|$)"
        if debug:
            filters = cast("list[Any]", warnings.filters)
            filters[:] = [
                f
                for f in warnings.filters
                if not (f[0] == "ignore" and getattr(f[3], "pattern", None) == pattern)
            ]
        else:
            warnings.filterwarnings("ignore", module=pattern)
