"""Library-wide setup, applied when ``edgemed`` is imported (API, CLI and services
alike): third-party libraries edgemed drives must not print patient data.

pydicom warns and logs about odd files in its own words, which can quote element values
(names, IDs), and its pixel decoders log whole tracebacks when one decoder of several
fails; edgemed's typed one-line errors say what matters. So its records are kept from
the application's handlers and its warnings ignored, unless :func:`quiet_libraries` is
called with ``debug=True`` (``edgemed --debug``), for a developer looking at a file of
their own. A handler attached to the ``pydicom`` logger itself still receives them.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, cast

__all__ = ["QUIET_LOGGERS", "quiet_libraries"]

#: Loggers of libraries edgemed drives that can log element values.
QUIET_LOGGERS = ("pydicom",)


class _Silence(logging.NullHandler):
    """The handler edgemed adds to a quiet logger (found again to remove it)."""


def quiet_libraries(debug: bool = False) -> None:
    """Silence (or, with ``debug``, restore) the loggers and warnings of
    :data:`QUIET_LOGGERS`."""
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        # Not the level alone: pydicom imports lazily, and its import sets its logger's
        # level back to WARNING (pydicom.config.debug(False)), so a level set here before
        # that import is lost. Stopping propagation survives the import and covers the
        # child loggers (pydicom.pixels.decoders.base logs decoder tracebacks) too; the
        # NullHandler keeps logging's last-resort stderr handler away.
        logger.propagate = debug
        for handler in [h for h in logger.handlers if isinstance(h, _Silence)]:
            logger.removeHandler(handler)
        if not debug:
            logger.addHandler(_Silence())
        logger.setLevel(logging.NOTSET if debug else logging.CRITICAL)
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
