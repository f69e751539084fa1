"""Synthetic axial CT anatomy as vector shapes in millimetres (no pixels here).

A :class:`Scene` is a list of objects (each one tissue with one base HU value) and an
ordered list of drawing operations (filled polygons or thick polylines, each optionally
restricted to pixels already owned by given objects). Later operations paint over
earlier ones, as anatomy is layered: body fat, then the muscle wall, then the cavity,
organs, spine, ribs. :mod:`edgemed.export.reference.regions` builds the anatomy of each body region
from these parts; :mod:`edgemed.export.reference.phantoms` rasterises a scene at any field
of view, spacing and rotation, so labels and image can be rendered on different grids
from the same geometry.

World coordinates: ``x`` to the image's right (the patient's left, radiological
convention), ``y`` to the image's bottom (posterior); the body is centred at the origin.

Labelling rules (what each tissue counts as):

* ``background``: air outside the body, the table, and *gas inside the body that is not
  in the respiratory tract* (stomach and bowel gas). The label means "air or outside",
  which is what HU plus morphology can tell apart.
* ``lung``: lung parenchyma, and air in the airways (trachea, bronchi).
* ``fat``: subcutaneous, visceral, mediastinal, intermuscular fat.
* ``soft_tissue``: muscle, organs, blood and vessels (also those inside the lungs),
  fluid (CSF in the spinal canal, bladder, bowel content), skin, cartilage.
* ``bone``: cortical and cancellous bone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "LABELS",
    "REGIONS",
    "TISSUES",
    "Op",
    "Scene",
    "Tissue",
]

LABELS = ("background", "lung", "fat", "soft_tissue", "bone")
BACKGROUND, LUNG, FAT, SOFT, BONE = range(5)
REGIONS = ("thorax", "abdomen", "pelvis")


@dataclass(frozen=True)
class Tissue:
    """A tissue class: its label, the range its base HU is drawn from, the range its
    textured clean HU is clipped to, and texture amplitudes (HU) at a fine (~0.7 mm,
    trabecular) and a medium (~3 mm) scale."""

    label: int
    base: tuple[float, float]
    clip: tuple[float, float]
    fine: float = 0.0
    medium: float = 0.0


# The clip ranges are the HU rules the labels obey on the clean phantom.
TISSUES: dict[str, Tissue] = {
    "air": Tissue(BACKGROUND, (-1000, -1000), (-1000, -1000)),
    "gas": Tissue(BACKGROUND, (-1000, -970), (-1000, -950)),
    "table_core": Tissue(BACKGROUND, (-960, -880), (-1000, -850), 0, 10),
    "table_shell": Tissue(BACKGROUND, (0, 250), (0, 250)),
    "lung": Tissue(LUNG, (-880, -740), (-950, -650), 12, 25),
    "airway": Tissue(LUNG, (-1000, -990), (-1000, -950)),
    "fat": Tissue(FAT, (-115, -85), (-120, -80), 4, 5),
    "muscle": Tissue(SOFT, (35, 60), (20, 80), 4, 6),
    "organ": Tissue(SOFT, (45, 130), (20, 140), 3, 5),
    "blood": Tissue(SOFT, (35, 250), (30, 260), 2, 2),
    "fluid": Tissue(SOFT, (0, 20), (-5, 30), 2, 2),
    "canal": Tissue(SOFT, (10, 40), (0, 50), 3, 3),
    "cartilage": Tissue(SOFT, (80, 130), (60, 140), 4, 4),
    "cortical": Tissue(BONE, (800, 1300), (700, 1500), 60, 40),
    # Trabecular bone: marrow spaces dip below 200 HU in older patients (CT_small does).
    "cancellous": Tissue(BONE, (190, 330), (160, 400), 55, 20),
    # Findings (placed by findings.py, which cites the HU facts): a solid lung nodule has
    # soft-tissue attenuation; a pure ground-glass nodule is hazy, well above aerated lung
    # and below -400 HU, so it keeps the lung label.
    "nodule_solid": Tissue(SOFT, (10, 60), (-10, 80), 3, 4),
    "nodule_ground_glass": Tissue(LUNG, (-720, -460), (-760, -420), 15, 20),
}


@dataclass(frozen=True)
class Op:
    """One drawing operation.

    Attributes:
        obj: object index painted.
        polys: ``(N, 2)`` float arrays in mm: filled polygons, or polylines when
            ``width_mm`` is set.
        width_mm: polyline width; ``None`` for filled polygons.
        within: paint only pixels currently owned by these objects (``None``: all).
    """

    obj: int
    polys: tuple[np.ndarray, ...]
    width_mm: float | None = None
    within: tuple[int, ...] | None = None


@dataclass
class Scene:
    """A phantom's geometry: objects (tissue, base HU), drawing operations, landmarks.

    ``extent`` is the body's bounding box ``(x0, y0, x1, y1)`` in mm (arms included);
    ``spine`` the vertebral body centre, used to aim zoomed crops. ``level`` names the
    anatomical level within the region (``thorax-upper``, ..., ``pelvis-hip``).
    """

    region: str
    tissues: list[str] = field(default_factory=lambda: ["air"])
    hu: list[float] = field(default_factory=lambda: [-1000.0])
    ops: list[Op] = field(default_factory=list)
    extent: tuple[float, float, float, float] = (-200.0, -150.0, 200.0, 150.0)
    spine: tuple[float, float] = (0.0, 100.0)
    level: str = ""


# -- geometry helpers -------------------------------------------------------------------


def _rot(pts: np.ndarray, deg: float, about: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    t = math.radians(deg)
    c, s = math.cos(t), math.sin(t)
    p = pts - np.asarray(about)
    return np.stack([c * p[:, 0] - s * p[:, 1], s * p[:, 0] + c * p[:, 1]], 1) + np.asarray(about)


def _blob(
    rng: np.random.Generator,
    cx: float,
    cy: float,
    a: float,
    b: float,
    deg: float = 0.0,
    wobble: float = 0.04,
    power: float = 2.0,
    n: int = 64,
) -> np.ndarray:
    """A superellipse (``power`` 2 is an ellipse) with a smooth random radial wobble."""
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    r = np.ones(n)
    for k in range(2, 5):  # a few low harmonics: organic, never self-intersecting
        r += wobble / (k - 1) * rng.uniform(-1, 1) * np.cos(k * t + rng.uniform(0, 2 * math.pi))
    e = 2.0 / power
    x = a * np.sign(np.cos(t)) * np.abs(np.cos(t)) ** e * r
    y = b * np.sign(np.sin(t)) * np.abs(np.sin(t)) ** e * r
    return _rot(np.stack([x, y], 1), deg) + np.array([cx, cy])


def _offset(pts: np.ndarray, d: np.ndarray | float) -> np.ndarray:
    """Move a closed polygon's vertices along their outward normals by ``d`` mm.

    Good for smooth, gently curved outlines (all this module makes); ``d < 0`` shrinks.
    """
    tangent = np.roll(pts, -1, 0) - np.roll(pts, 1, 0)
    normal = np.stack([tangent[:, 1], -tangent[:, 0]], 1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-9
    centre = pts.mean(0)
    # Orientation-independent: make the normals point away from the centroid.
    if np.sum((pts - centre) * normal) < 0:
        normal = -normal
    return pts + normal * np.asarray(d, dtype=np.float64).reshape(-1, 1)


def _arc(cx: float, cy: float, rx: float, ry: float, t0: float, t1: float, n: int = 24):
    t = np.radians(np.linspace(t0, t1, n))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _ray_hit(poly: np.ndarray, deg: float, centre: tuple[float, float] = (0.0, 0.0)) -> int:
    """Index of the polygon vertex whose direction from ``centre`` is closest to ``deg``."""
    ang = np.degrees(np.arctan2(poly[:, 1] - centre[1], poly[:, 0] - centre[0]))
    return int(np.argmin(np.abs((ang - deg + 180) % 360 - 180)))


# -- the builder ------------------------------------------------------------------------


class _Builder:
    def __init__(self, rng: np.random.Generator, region: str) -> None:
        self.rng = rng
        self.scene = Scene(region=region)

    def obj(self, tissue: str, hu: float | None = None) -> int:
        t = TISSUES[tissue]
        if hu is None:
            hu = float(self.rng.uniform(*t.base))
        self.scene.tissues.append(tissue)
        self.scene.hu.append(float(np.clip(hu, *t.clip)))
        return len(self.scene.hu) - 1

    def fill(self, obj: int, *polys: np.ndarray, within: tuple[int, ...] | None = None) -> int:
        self.scene.ops.append(Op(obj, tuple(np.asarray(p, float) for p in polys), None, within))
        return obj

    def line(
        self, obj: int, width: float, *lines: np.ndarray, within: tuple[int, ...] | None = None
    ) -> int:
        polys = tuple(np.asarray(p, float) for p in lines)
        self.scene.ops.append(Op(obj, polys, float(width), within))
        return obj

    def bone(self, outline: np.ndarray, cortex: float, marrow_hu: float | None = None) -> None:
        """A bone: cortical outline, cancellous interior ``cortex`` mm inside it."""
        self.fill(self.obj("cortical"), outline)
        inner = _offset(outline, -cortex)
        if np.ptp(inner[:, 0]) > 1.0 and np.ptp(inner[:, 1]) > 1.0:
            self.fill(self.obj("cancellous", marrow_hu), inner)

    def rod(self, pts: np.ndarray, width: float, cortex: float) -> None:
        """A bone seen lengthwise (rib arc, scapular blade): a thick cortical polyline."""
        self.line(self.obj("cortical"), width, pts)
        if width - 2 * cortex > 0.8:
            self.line(self.obj("cancellous"), width - 2 * cortex, pts)

    def streaks(self, obj: int, within: tuple[int, ...], box, n: int, length: float) -> None:
        """Thin curved lines (fat planes in muscle, vessels) inside ``box``."""
        rng = self.rng
        x0, y0, x1, y1 = box
        lines = []
        for _ in range(n):
            p = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])
            ang = rng.uniform(0, 2 * math.pi)
            pts = [p.copy()]
            for _ in range(4):
                ang += rng.normal(0, 0.35)
                p = p + length / 4 * np.array([math.cos(ang), math.sin(ang)])
                pts.append(p.copy())
            lines.append(np.array(pts))
        self.line(obj, rng.uniform(0.6, 1.8), *lines, within=within)


def _vessel_tree(
    rng: np.random.Generator, root: np.ndarray, ang: float, length: float, width: float
) -> list[tuple[float, np.ndarray]]:
    """Branching vessel centre lines ``(width, polyline)`` growing from ``root``."""
    out: list[tuple[float, np.ndarray]] = []
    stack = [(root, ang, length, width)]
    while stack:
        p, a, ln, w = stack.pop()
        pts = [p]
        for _ in range(3):
            a += rng.normal(0, 0.15)
            p = p + ln / 3 * np.array([math.cos(a), math.sin(a)])
            pts.append(p)
        out.append((w, np.array(pts)))
        if w > 1.4 and len(out) < 30:
            for sgn in (-1, 1):
                stack.append(
                    (p, a + sgn * rng.uniform(0.3, 0.8), ln * rng.uniform(0.55, 0.8), w * 0.7)
                )
    return out
