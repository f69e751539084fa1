"""CT phantoms with findings, each with its ground truth: lung nodules (solid and
ground-glass), liver lesions (hypo- and hyperdense to the parenchyma), pleural effusion.

The findings are drawn into the anatomy of :func:`~.regions.build_scene` as extra vector
shapes, painted last and only over the organ they belong to (``Op.within``), then the
slice is rasterised and acquired by :mod:`.phantoms` exactly as the tissue phantoms are.
Every random choice comes from the ``numpy.random.Generator`` passed in.

Appearance, from the published facts (values the code below uses):

* **Lung nodules, 3-30 mm.** The Fleischner Society glossary (Hansell et al., Radiology
  2008;246:697) defines a nodule as a rounded opacity up to 3 cm; larger is a *mass*,
  and the 2017 Fleischner guidelines (MacMahon et al., Radiology 2017;284:228) grade
  nodules from under 6 mm up. *Solid* nodules have soft-tissue attenuation (unenhanced
  roughly 10-60 HU; here 10-60, seen lower when small through partial volume), round to
  lobulated, larger ones sometimes spiculated (fine strands radiating from the margin).
  *Ground-glass* (pure, non-solid) nodules are "hazy increased attenuation with
  preservation of bronchial and vascular margins" (glossary): mean attenuation in
  reported series about -750 to -450 HU (here -720 to -460, aerated lung being about
  -880 to -740), drawn over the parenchyma only so that vessels stay visible through them.
* **Liver lesions, 6-40 mm.** Simple cysts have water attenuation (0-20 HU) and sharp
  margins; metastases are mostly hypoattenuating to the enhanced parenchyma in the
  portal venous phase (here 25-60 HU below it); hypervascular lesions (hepatocellular
  carcinoma, focal nodular hyperplasia, hypervascular metastases, haemangioma) are
  hyperattenuating, most of all in the arterial phase (here 25-70 HU above the
  parenchyma). Normal liver is about 55-65 HU unenhanced, 100-130 HU portal venous.
* **Pleural effusion.** Free fluid collects in the dependent (posterior, in a supine
  patient) pleural space as a crescent along the chest wall whose anterior border is a
  meniscus that climbs laterally; transudates measure about 0-20 HU, exudates up to
  ~30 HU (haemothorax, 35-70 HU, is not modelled). Thickness here 8-70 mm.

Ground truth: each :class:`FindingsPhantom` lists its :class:`Finding` objects (kind,
size, centre in mm and in pixels, HU, side, visible area) and the set of kinds
``present`` in the image (visible over at least half their area; whole-body views keep
that true for almost all). Nothing here is patient data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from edgemed.export.reference.anatomy import Scene, _blob
from edgemed.export.reference.phantoms import (
    Phantom,
    View,
    # Private helpers: object ownership per pixel (findings are placed inside the final
    # organs and their visible area is measured) and render_clean's two halves.
    _clean_from_objects,
    _label_lut,
    _rasterize,
    acquire,
    sample_scanner,
    sample_view,
)
from edgemed.export.reference.regions import build_scene

__all__ = [
    "FINDINGS",
    "LEVELS",
    "Finding",
    "FindingsPhantom",
    "applicable",
    "make_findings_phantom",
]

#: The finding kinds, in the classifier's output order.
FINDINGS = (
    "lung_nodule_solid",
    "lung_nodule_ground_glass",
    "liver_lesion_hypodense",
    "liver_lesion_hyperdense",
    "pleural_effusion",
)
#: Anatomical levels the scenes are drawn at (see :mod:`.regions`).
LEVELS = (
    "thorax-upper",
    "thorax-mid",
    "thorax-lower",
    "abdomen-upper",
    "abdomen-lower",
    "pelvis-iliac",
    "pelvis-hip",
)
_GRID_MM = 1.0  # the world grid findings are placed on
_MIN_LUNG_MM2 = 1500.0  # a lung smaller than this (a thin base) holds no nodule
_MIN_LIVER_MM2 = 2500.0


@dataclass(frozen=True)
class Finding:
    """One finding's ground truth.

    Attributes:
        kind: one of :data:`FINDINGS`.
        size_mm: nodules and liver lesions: diameter; effusion: greatest thickness.
        center_mm: centre in the scene's world coordinates (mm).
        hu: the finding's base attenuation (HU, before texture and noise).
        side: ``right`` or ``left`` (the patient's: negative world x is the right).
        objects: the scene objects that draw it.
        area_mm2: its area in the slice (world grid).
    """

    kind: str
    size_mm: float
    center_mm: tuple[float, float]
    hu: float
    side: str
    objects: tuple[int, ...]
    area_mm2: float


@dataclass
class FindingsPhantom:
    """A phantom slice with findings.

    Attributes:
        phantom: the slice (``hu``, tissue ``labels``, ``clean``, ``scene``, ``view``).
        findings: every finding drawn, visible or not.
        level: the anatomical level (:data:`LEVELS`).
        visible_mm2: per finding (same order), its area inside the image.
        present: the kinds visible over at least 30% of their area, in :data:`FINDINGS`
            order: the classifier's targets.
    """

    phantom: Phantom
    findings: list[Finding]
    level: str
    visible_mm2: list[float] = field(default_factory=list)
    present: tuple[str, ...] = ()

    @property
    def hu(self) -> np.ndarray:
        return self.phantom.hu

    def target(self) -> np.ndarray:
        """Multi-label target: 1.0 per kind of :data:`FINDINGS` present."""
        return np.array([k in self.present for k in FINDINGS], np.float32)

    def cells(self, stride: int) -> np.ndarray:
        """Where the present findings lie: ``(len(FINDINGS), H // stride, W // stride)``
        uint8, 1 in a ``stride`` x ``stride`` cell that holds a pixel of a present finding
        of that kind (the classifier's dense training target). The object map is drawn
        again from the scene and view: no random draw, the same pixels as the image."""
        h, w = self.hu.shape
        if h % stride or w % stride:
            raise ValueError(f"a {h}x{w} slice does not split into {stride} px cells")
        owner = _rasterize(self.phantom.scene, self.phantom.view, (h, w))
        out = np.zeros((len(FINDINGS), h // stride, w // stride), np.uint8)
        for f in self.findings:
            if f.kind in self.present:
                pixels = np.isin(owner, f.objects).reshape(h // stride, stride, w // stride, stride)
                out[FINDINGS.index(f.kind)] |= pixels.any(axis=(1, 3))
        return out

    def finding_type(self) -> str:
        """The retrieval class: ``none``, one kind, or kinds joined by ``+``."""
        return "+".join(self.present) or "none"

    def label(self) -> str:
        """``finding type @ level``: how a gallery of phantoms labels its entries."""
        return f"{self.finding_type()} @ {self.level}"

    def truth(self) -> dict[str, Any]:
        """JSON-able ground truth, with centres also in pixel coordinates ``(x, y)``."""
        m = self.phantom.view.matrix(self.phantom.hu.shape)
        out = []
        for f, vis in zip(self.findings, self.visible_mm2, strict=True):
            px = m[:, :2] @ np.asarray(f.center_mm) + m[:, 2]
            out.append(
                {
                    "kind": f.kind,
                    "size_mm": round(f.size_mm, 2),
                    "center_mm": [round(c, 2) for c in f.center_mm],
                    "center_px": [round(float(c), 1) for c in px],
                    "hu": round(f.hu, 1),
                    "side": f.side,
                    "area_mm2": round(f.area_mm2, 1),
                    "visible_mm2": round(vis, 1),
                }
            )
        return {
            "level": self.level,
            "present": list(self.present),
            "findings": out,
            "spacing_mm": list(self.phantom.spacing_mm),
        }


# -- where the organs are ---------------------------------------------------------------


@dataclass
class _Organs:
    """Organ masks on a world grid (``_GRID_MM`` per pixel) and the objects behind them."""

    view: View
    shape: tuple[int, int]
    owner: np.ndarray
    lungs: dict[str, int]  # side -> the lung parenchyma object
    lung_vessels: tuple[int, ...]
    liver: int | None

    def to_world(self, rc: tuple[int, int]) -> tuple[float, float]:
        (cx, cy), (h, w) = self.view.center, self.shape
        return (cx + (rc[1] - (w - 1) / 2) * _GRID_MM, cy + (rc[0] - (h - 1) / 2) * _GRID_MM)

    def mask(self, objs: tuple[int, ...]) -> np.ndarray:
        return np.isin(self.owner, objs)


def _poly_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _organs(scene: Scene) -> _Organs:
    x0, y0, x1, y1 = scene.extent
    view = View(((x0 + x1) / 2, (y0 + y1) / 2), (_GRID_MM, _GRID_MM), whole=True)
    shape = (int((y1 - y0) / _GRID_MM) + 8, int((x1 - x0) / _GRID_MM) + 8)
    owner = _rasterize(scene, view, shape)
    lungs: dict[str, int] = {}
    lung_ids = [i for i, t in enumerate(scene.tissues) if t == "lung"]
    for op in scene.ops:
        if op.obj in lung_ids and op.within is not None:
            side = "right" if float(np.mean(op.polys[0][:, 0])) < 0 else "left"
            lungs.setdefault(side, op.obj)
    # Vessels drawn inside the lungs: blood painted only over lung parenchyma.
    vessels = tuple(
        op.obj
        for op in scene.ops
        if op.within is not None
        and set(op.within) <= set(lung_ids)
        and scene.tissues[op.obj] == "blood"
    )
    # The liver: the largest organ drawn on the patient's right (the spleen, kidneys and
    # bowel content are smaller or on the left); regions.py draws it first there.
    liver, best = None, 0.0
    for op in scene.ops:
        if scene.tissues[op.obj] != "organ" or op.width_mm is not None:
            continue
        p = op.polys[0]
        area = _poly_area(p)
        if float(np.mean(p[:, 0])) < 0 and area > best:
            liver, best = op.obj, area
    if liver is not None and best < 8000.0:  # a kidney, not a liver
        liver = None
    return _Organs(view, shape, owner, lungs, vessels, liver)


def applicable(scene: Scene, organs: _Organs | None = None) -> tuple[str, ...]:
    """The finding kinds this scene has room for (lungs: nodules and effusion; liver:
    liver lesions), in :data:`FINDINGS` order."""
    organs = organs or _organs(scene)
    px = _GRID_MM**2
    kinds: list[str] = []
    lung_mm2 = max(
        (float(np.sum(organs.owner == obj)) * px for obj in organs.lungs.values()), default=0.0
    )
    if lung_mm2 >= _MIN_LUNG_MM2:
        kinds += ["lung_nodule_solid", "lung_nodule_ground_glass"]
    if organs.liver is not None and np.sum(organs.owner == organs.liver) * px >= _MIN_LIVER_MM2:
        kinds += ["liver_lesion_hypodense", "liver_lesion_hyperdense"]
    if lung_mm2 >= _MIN_LUNG_MM2:
        kinds.append("pleural_effusion")
    return tuple(k for k in FINDINGS if k in kinds)


# -- drawing the findings ---------------------------------------------------------------


def _pick_centre(
    rng: np.random.Generator, organs: _Organs, mask: np.ndarray, inside_mm: float
) -> tuple[float, float] | None:
    """A random world point of ``mask`` at least ``inside_mm`` from its border."""
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5) * _GRID_MM
    rows, cols = np.nonzero(dist >= inside_mm)
    if rows.size == 0:
        return None
    i = int(rng.integers(rows.size))
    return organs.to_world((int(rows[i]), int(cols[i])))


def _add(scene: Scene, tissue: str, hu: float) -> int:
    scene.tissues.append(tissue)
    scene.hu.append(float(hu))
    return len(scene.hu) - 1


def _fill(scene: Scene, obj: int, poly: np.ndarray, within: tuple[int, ...], width=None) -> None:
    from edgemed.export.reference.anatomy import Op

    scene.ops.append(Op(obj, (np.asarray(poly, float),), width, within))


def _nodule(rng: np.random.Generator, scene: Scene, organs: _Organs, kind: str) -> Finding | None:
    side = str(rng.choice(sorted(organs.lungs)))
    lung = organs.lungs[side]
    parenchyma = (lung,)
    # Sizes uniform over 3-30 mm (Fleischner: a nodule is at most 3 cm).
    d = float(rng.uniform(3.0, 30.0))
    solid = kind == "lung_nodule_solid"
    # Solid nodules may touch the pleura (juxtapleural); ground-glass ones sit inside.
    centre = _pick_centre(rng, organs, organs.owner == lung, d / 2 * (0.6 if solid else 1.0))
    if centre is None:
        d = max(3.0, d / 3)
        centre = _pick_centre(rng, organs, organs.owner == lung, d / 2)
        if centre is None:
            return None
    r = d / 2
    wobble = float(rng.uniform(0.03, 0.15 if solid else 0.1))  # lobulation
    outline = _blob(rng, centre[0], centre[1], r, r * rng.uniform(0.8, 1.0), rng.uniform(0, 180),
                    wobble)  # fmt: skip
    if solid:
        hu = float(rng.uniform(10, 60))
        obj = _add(scene, "nodule_solid", hu)
        # Solid: covers the vessels it meets. Ground glass: over parenchyma only.
        within = (lung, *organs.lung_vessels)
        _fill(scene, obj, outline, within)
        if d > 10 and rng.random() < 0.5:  # spiculated margin
            for _ in range(int(rng.integers(4, 10))):
                a = rng.uniform(0, 2 * math.pi)
                length = r * rng.uniform(0.4, 0.9)
                pts = np.array(
                    [
                        [centre[0] + r * 0.8 * math.cos(a), centre[1] + r * 0.8 * math.sin(a)],
                        [
                            centre[0] + (r + length) * math.cos(a + rng.normal(0, 0.1)),
                            centre[1] + (r + length) * math.sin(a + rng.normal(0, 0.1)),
                        ],
                    ]
                )
                _fill(scene, obj, pts, within, width=float(rng.uniform(0.6, 1.2)))
    else:
        hu = float(rng.uniform(-720, -460))
        obj = _add(scene, "nodule_ground_glass", hu)
        _fill(scene, obj, outline, parenchyma)
    return Finding(kind, d, centre, hu, side, (obj,), 0.0)


def _liver_lesion(
    rng: np.random.Generator, scene: Scene, organs: _Organs, kind: str
) -> Finding | None:
    assert organs.liver is not None
    liver = organs.liver
    parenchyma = scene.hu[liver]
    d = float(rng.uniform(6.0, 40.0))
    centre = _pick_centre(rng, organs, organs.owner == liver, d / 2 * 0.9)
    if centre is None:
        d = max(6.0, d / 3)
        centre = _pick_centre(rng, organs, organs.owner == liver, d / 2 * 0.9)
        if centre is None:
            return None
    r = d / 2
    if kind == "liver_lesion_hypodense":
        if rng.random() < 0.3:  # simple cyst: water attenuation, sharp round margin
            hu, tissue, wobble = float(rng.uniform(0, 20)), "fluid", 0.02
        else:  # metastasis-like: 25-60 HU below the parenchyma, irregular
            hu = max(float(parenchyma - rng.uniform(25, 60)), 5.0)
            tissue, wobble = ("fluid" if hu <= 28 else "organ"), float(rng.uniform(0.05, 0.15))
    else:  # hypervascular: 25-70 HU above the parenchyma
        hu = float(parenchyma + rng.uniform(25, 70))
        tissue, wobble = "blood", float(rng.uniform(0.03, 0.1))
    obj = _add(scene, tissue, hu)
    outline = _blob(rng, centre[0], centre[1], r, r * rng.uniform(0.75, 1.0), rng.uniform(0, 180),
                    wobble)  # fmt: skip
    _fill(scene, obj, outline, (liver,))
    side = "right" if centre[0] < 0 else "left"
    return Finding(kind, d, centre, hu, side, (obj,), 0.0)


def _effusion(rng: np.random.Generator, scene: Scene, organs: _Organs, side: str) -> Finding | None:
    lung = organs.lungs[side]
    rows, cols = np.nonzero(organs.owner == lung)
    if rows.size == 0:
        return None
    (x_lo, y_lo), (x_hi, y_hi) = (organs.to_world((int(rows.min()), int(cols.min()))),
                                  organs.to_world((int(rows.max()), int(cols.max()))))  # fmt: skip
    depth = float(rng.uniform(8, 70))
    depth = min(depth, 0.8 * (y_hi - y_lo))
    top = y_hi - depth
    # The meniscus: the fluid's anterior border climbs towards the lateral chest wall.
    xs = np.linspace(x_lo - 5, x_hi + 5, 24)
    lateral = xs if side == "left" else -xs
    t = (lateral - lateral.min()) / max(float(np.ptp(lateral)), 1.0)
    climb = depth * float(rng.uniform(0.3, 0.8)) * t**2
    border = np.stack([xs, top - climb], 1)
    poly = np.concatenate([border, [[x_hi + 5, y_hi + 60], [x_lo - 5, y_hi + 60]]])
    hu = float(rng.uniform(0, 20) if rng.random() < 0.75 else rng.uniform(20, 30))
    obj = _add(scene, "fluid", hu)
    _fill(scene, obj, poly, (lung, *organs.lung_vessels))
    centre = (float(xs.mean()), float(y_hi - depth / 2))
    return Finding("pleural_effusion", depth, centre, hu, side, (obj,), 0.0)


def _draw(rng: np.random.Generator, scene: Scene, organs: _Organs, kind: str) -> list[Finding]:
    if kind.startswith("lung_nodule"):
        f = _nodule(rng, scene, organs, kind)
        return [f] if f else []
    if kind.startswith("liver_lesion"):
        f = _liver_lesion(rng, scene, organs, kind)
        return [f] if f else []
    sides = sorted(organs.lungs)
    if len(sides) > 1 and rng.random() > 0.3:  # bilateral in about a third
        sides = [str(rng.choice(sides))]
    return [f for s in sides if (f := _effusion(rng, scene, organs, s))]


def make_findings_phantom(
    rng: np.random.Generator,
    size: int = 256,
    region: str | None = None,
    kinds: tuple[str, ...] | None = None,
    max_findings: int = 2,
    p_none: float = 0.3,
) -> FindingsPhantom:
    """One whole-body axial slice with findings and its ground truth.

    Args:
        rng: all randomness comes from here (same state, same phantom).
        size: pixels per side; the spacing is chosen so that the body fits (as a
            clinical reconstruction field of view does).
        region: ``thorax``, ``abdomen`` or ``pelvis`` (random, mostly thorax, if None).
        kinds: which findings to draw (those the slice has room for); None: a random
            choice of up to ``max_findings`` applicable kinds, none with ``p_none``.
        max_findings: most kinds drawn when ``kinds`` is None.
        p_none: chance of a slice without findings when ``kinds`` is None.
    """
    if region is None:
        region = str(rng.choice(("thorax", "abdomen", "pelvis"), p=[0.55, 0.33, 0.12]))
    scene = build_scene(rng, region)
    organs = _organs(scene)
    room = applicable(scene, organs)
    if kinds is None:
        n = 0 if (not room or rng.random() < p_none) else int(rng.integers(1, max_findings + 1))
        chosen = [str(k) for k in rng.permutation(np.array(room, dtype=object))[:n]] if n else []
    else:
        chosen = [k for k in kinds if k in room]
    findings: list[Finding] = []
    for kind in sorted(chosen, key=FINDINGS.index):
        findings += _draw(rng, scene, organs, kind)
    if findings:  # areas once all are drawn (a later finding may cover an earlier one)
        owner = _rasterize(scene, organs.view, organs.shape)
        findings = [
            replace(f, area_mm2=float(np.isin(owner, f.objects).sum()) * _GRID_MM**2)
            for f in findings
        ]
        findings = [f for f in findings if f.area_mm2 > 0]
    x0, y0, x1, y1 = scene.extent
    spacing = max(x1 - x0, y1 - y0) / size * float(rng.uniform(1.05, 1.3))
    shape = (size, size)
    view = sample_view(rng, scene, shape, spacing)
    scanner = sample_scanner(rng)
    # render_clean's steps with its object map kept (the findings' visible areas).
    owner = _rasterize(scene, view, shape)
    clean = _clean_from_objects(scene, owner, float(min(view.spacing)), rng)
    labels = _label_lut(scene)[owner]
    hu = acquire(scene, view, shape, scanner, rng)
    phantom = Phantom(hu, labels, clean, view.spacing, scene, view)
    visible = [float(np.isin(owner, f.objects).sum()) * spacing**2 for f in findings]
    # Visible over at least 30% of its area on this grid (a 3 mm nodule on 1.6 mm pixels
    # owns one or two pixel centres, or none: then it is not counted as present).
    present = {
        f.kind for f, v in zip(findings, visible, strict=True) if v > 0 and v >= 0.3 * f.area_mm2
    }
    return FindingsPhantom(
        phantom,
        findings,
        scene.level,
        visible,
        tuple(k for k in FINDINGS if k in present),
    )
