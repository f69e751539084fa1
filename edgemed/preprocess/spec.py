"""The declarative preprocessing spec stored in a bundle's ``bundle.json``.

Example (the demo bundle)::

    {"size": [256, 256],
     "windows": [{"center": -600, "width": 1500}, {"center": 40, "width": 400},
                 {"center": 400, "width": 1800}],
     "scale": "unit", "edges": false, "resize": "stretch", "dtype": "float32"}

Each window gives one output channel; ``clip`` gives one channel from a value range;
with neither, the source values pass through unchanged. The exact arithmetic of each
step is documented in :mod:`edgemed.preprocess.cpu`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edgemed.errors import BundleError

__all__ = ["Window", "PreprocessSpec"]

_SCALES = ("unit", "zscore", "none")
_RESIZES = ("stretch", "letterbox")
_DTYPES = ("float32", "float16")
_COLORS = ("gray", "rgb")


@dataclass(frozen=True)
class Window:
    """An intensity window: values are clipped to ``[center - width/2, center + width/2]``."""

    center: float
    width: float

    @property
    def low(self) -> float:
        return self.center - self.width / 2.0

    @property
    def high(self) -> float:
        return self.center + self.width / 2.0


@dataclass(frozen=True)
class PreprocessSpec:
    """How a slice becomes one model input (``C x H x W``), or a volume the model-space
    volume a 3D model's windows come from.

    Attributes:
        size: model input ``(height, width)``; for a 3D model (a bundle with a ``volume``
            block, :mod:`edgemed.volume`) the ROI ``(depth, height, width)``, and then
            ``edges``, ``letterbox`` and ``rgb`` do not apply.
        windows: one channel per window (multi-window stacking).
        clip: a value range giving one channel; mutually exclusive with ``windows``.
        scale: ``unit`` maps the window/clip range to [0, 1]; ``zscore`` subtracts the
            slice mean and divides by its standard deviation; ``none`` keeps values.
        edges: append a Sobel edge-magnitude channel computed on channel 0.
        resize: ``stretch`` to ``size``, or ``letterbox`` keeping the aspect ratio.
        pad_value: value of letterbox padding, in output units.
        dtype: ``float32`` or ``float16`` output.
        color: ``gray`` converts RGB input to luma first; ``rgb`` keeps three channels.
    """

    size: tuple[int, ...]
    windows: tuple[Window, ...] = ()
    clip: tuple[float, float] | None = None
    scale: str = "unit"
    edges: bool = False
    resize: str = "stretch"
    pad_value: float = 0.0
    dtype: str = "float32"
    color: str = "gray"

    def __post_init__(self) -> None:
        def bad(msg: str) -> BundleError:
            return BundleError(f"preprocessing spec: {msg}", code="BUNDLE_INVALID")

        if len(self.size) not in (2, 3) or any(int(s) < 1 for s in self.size):
            raise bad(f"size must be two (or, for 3D, three) positive integers, got {self.size!r}")
        if len(self.size) == 3 and (self.edges or self.resize != "stretch" or self.color != "gray"):
            raise bad("a 3D (three-value size) spec takes no edges, letterbox or rgb")
        if self.windows and self.clip is not None:
            raise bad("give either windows or clip, not both")
        for w in self.windows:
            if not w.width > 0:
                raise bad(f"window width must be positive, got {w.width}")
        if self.clip is not None and not self.clip[1] > self.clip[0]:
            raise bad(f"clip range must be increasing, got {self.clip}")
        if self.scale not in _SCALES:
            raise bad(f"scale must be one of {_SCALES}, got {self.scale!r}")
        if self.scale == "unit" and not self.windows and self.clip is None:
            raise bad("scale 'unit' needs windows or a clip range")
        if self.resize not in _RESIZES:
            raise bad(f"resize must be one of {_RESIZES}, got {self.resize!r}")
        if self.dtype not in _DTYPES:
            raise bad(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.color not in _COLORS:
            raise bad(f"color must be one of {_COLORS}, got {self.color!r}")
        if self.color == "rgb" and self.windows:
            raise bad("windows apply to grayscale data; use clip with color 'rgb'")

    @property
    def height(self) -> int:
        return int(self.size[-2])

    @property
    def width(self) -> int:
        return int(self.size[-1])

    @property
    def is_volume(self) -> bool:
        """A 3D model's spec: ``size`` is the ROI ``(depth, height, width)``."""
        return len(self.size) == 3

    @property
    def ranges(self) -> list[tuple[float, float] | None]:
        """One ``(low, high)`` (or ``None`` for pass-through) per intensity channel."""
        if self.windows:
            return [(w.low, w.high) for w in self.windows]
        n = 3 if self.color == "rgb" else 1
        return [self.clip] * n

    @property
    def num_channels(self) -> int:
        """Channels of the model input: intensity channels plus the edge channel."""
        return len(self.ranges) + (1 if self.edges else 0)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        """Build from the JSON form; unknown keys are an error (typos must not pass)."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise BundleError(
                f"preprocessing spec: unknown keys {sorted(unknown)}", code="BUNDLE_INVALID"
            )
        try:
            kw = dict(data)
            kw["size"] = tuple(int(s) for s in data["size"])
            kw["windows"] = tuple(
                Window(float(w["center"]), float(w["width"])) for w in data.get("windows", ())
            )
            if data.get("clip") is not None:
                lo, hi = data["clip"]
                kw["clip"] = (float(lo), float(hi))
            if "pad_value" in data:
                kw["pad_value"] = float(data["pad_value"])
            if "edges" in data:
                kw["edges"] = bool(data["edges"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(
                f"preprocessing spec: malformed ({exc.__class__.__name__}: {exc})",
                code="BUNDLE_INVALID",
            ) from exc
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        d["windows"] = [asdict(w) for w in self.windows]
        d["clip"] = list(self.clip) if self.clip is not None else None
        return d
