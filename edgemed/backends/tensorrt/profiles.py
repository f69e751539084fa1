"""Optimisation profiles: the shape ranges a TensorRT engine is built for.

A bundle declares its input shape with named dynamic axes, e.g.
``["batch", 3, 256, 256]``. An engine needs, for every dynamic axis, a minimum, an
optimum (what TensorRT tunes its kernels for) and a maximum. The first axis, when it
is dynamic, defaults to :data:`DEFAULT_BATCH` (the pipeline sends up to 8 slices per
call by default); every other dynamic axis must be given explicitly, as there is no
sensible guess for an image height.

Overrides are ``MIN:OPT:MAX`` strings (or one number for a fixed size), keyed by axis
name, e.g. ``{"batch": "1:4:8"}``. Anything malformed is a :class:`UsageError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgemed.errors import UsageError

if TYPE_CHECKING:
    from edgemed.bundle import TensorInfo

__all__ = ["DEFAULT_BATCH", "Profile", "derive_profile", "parse_range"]

#: min, opt, max of a dynamic first (batch) axis when not overridden.
DEFAULT_BATCH = (1, 8, 8)


@dataclass(frozen=True)
class Profile:
    """One optimisation profile for one input tensor.

    Attributes:
        input: the input tensor's name.
        min: smallest shape the engine accepts.
        opt: the shape TensorRT tunes for.
        max: largest shape the engine accepts.
        axes: the bundle's axis names (``None`` for fixed axes), for messages.
    """

    input: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]
    axes: tuple[str | None, ...] = ()

    def canonical(self) -> str:
        """A stable text form used in cache keys, e.g. ``image:1x3x8x8/8x3x8x8/8x3x8x8``."""

        def dims(shape: tuple[int, ...]) -> str:
            return "x".join(str(d) for d in shape)

        return f"{self.input}:{dims(self.min)}/{dims(self.opt)}/{dims(self.max)}"

    def contains(self, shape: tuple[int, ...]) -> bool:
        """True when ``shape`` lies within ``min``..``max`` on every axis."""
        return len(shape) == len(self.min) and all(
            lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max, strict=True)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as stored in an engine's sidecar."""
        return {
            "input": self.input,
            "min": list(self.min),
            "opt": list(self.opt),
            "max": list(self.max),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        """Inverse of :meth:`to_dict`; ``ValueError``/``KeyError``/``TypeError`` if malformed."""
        shapes = []
        for field in ("min", "opt", "max"):
            values = data[field]
            if not isinstance(values, list) or not all(type(v) is int for v in values):
                raise ValueError(f"profile {field} must be a list of integers")
            shapes.append(tuple(values))
        if not isinstance(data["input"], str):
            raise TypeError("profile input must be a string")
        return cls(str(data["input"]), shapes[0], shapes[1], shapes[2])


def parse_range(text: str, axis: str) -> tuple[int, int, int]:
    """Parse ``MIN:OPT:MAX`` (or ``N`` for a fixed size) for ``axis``.

    Raises:
        UsageError: not three positive integers in order ``min <= opt <= max``.
    """
    parts = text.strip().split(":")
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3:
        raise UsageError(f"range for '{axis}' must be MIN:OPT:MAX (or one number), got {text!r}")
    try:
        lo, opt, hi = (int(p) for p in parts)
    except ValueError:
        raise UsageError(f"range for '{axis}' must be integers, got {text!r}") from None
    if lo < 1:
        raise UsageError(f"range for '{axis}': sizes must be >= 1, got {text!r}")
    if not lo <= opt <= hi:
        raise UsageError(f"range for '{axis}' must satisfy MIN <= OPT <= MAX, got {text!r}")
    return lo, opt, hi


def derive_profile(tensor: TensorInfo, overrides: Mapping[str, str] | None = None) -> Profile:
    """The profile for ``tensor`` (the bundle's input) with ``overrides`` applied.

    Args:
        tensor: the bundle's input description; string dimensions are dynamic axes.
        overrides: ``MIN:OPT:MAX`` per dynamic axis name. The key ``"batch"`` also
            addresses a dynamic first axis of any name.

    Raises:
        UsageError: an override names no dynamic axis of the input (a fixed axis
            included), a range is malformed, or a dynamic axis other than the first
            has no range.
    """
    overrides = dict(overrides or {})
    names = [d if isinstance(d, str) else None for d in tensor.shape]
    dynamic = [n for n in names if n is not None]
    if "batch" in overrides and "batch" not in dynamic:
        if names and names[0] is not None:
            overrides[names[0]] = overrides.pop("batch")
        else:
            first = tensor.shape[0] if tensor.shape else "absent"
            raise UsageError(f"the model's batch size is fixed ({first}); it has no batch range")
    for name in overrides:
        if name not in dynamic:
            fixed = [str(i) for i, n in enumerate(names) if n is None]
            raise UsageError(
                f"'{name}' is not a dynamic axis of input '{tensor.name}' "
                f"(dynamic: {', '.join(dynamic) or 'none'}; fixed axes {', '.join(fixed)})"
            )
    lo, opt, hi = [], [], []
    for i, dim in enumerate(tensor.shape):
        if isinstance(dim, int):
            lo.append(dim)
            opt.append(dim)
            hi.append(dim)
            continue
        if dim in overrides:
            r = parse_range(overrides[dim], dim)
            if i == 0 and r[0] != 1:
                # The pipeline sends what it has: one image, or a volume's last few slices.
                raise UsageError(
                    f"the batch range of '{dim}' must start at 1 (1:OPT:MAX), got "
                    f"{overrides[dim]!r}: single images and the last slices of a volume "
                    "come in smaller batches"
                )
        elif i == 0:
            r = DEFAULT_BATCH
        else:
            raise UsageError(
                f"dynamic axis '{dim}' of input '{tensor.name}' needs a range: "
                f"--dim {dim}=MIN:OPT:MAX"
            )
        lo.append(r[0])
        opt.append(r[1])
        hi.append(r[2])
    return Profile(tensor.name, tuple(lo), tuple(opt), tuple(hi), tuple(names))
