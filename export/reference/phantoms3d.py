"""Seeded synthetic CT volumes of the trunk in Hounsfield units, with tissue labels.

The 3D counterpart of :mod:`edgemed.export.reference.phantoms`, with the same tissue
classes (:data:`LABELS`: background/air, lung, fat, soft_tissue, bone), the same tissues
and HU rules (:data:`edgemed.export.reference.anatomy.TISSUES`: each object's base HU is
drawn from its tissue's range, textured and clipped to the tissue's clip range by
:mod:`.phantoms`' own functions) and the same scanner model (PSF, correlated noise,
streaks, reconstruction circle). What is new is the geometry: organs are 3D shapes in
millimetres, so neighbouring slices belong to one body.

How a volume is made:

1. :func:`build_trunk` draws a trunk from the lung apices to the hips: a body whose
   cross-section (an elliptic cylinder, flattened at the back, wider at the pelvis)
   varies along ``z``, with subcutaneous fat, a muscle wall and the body cavity; lungs
   (ellipsoids cut by the domes of the diaphragm, with vessel trees and bronchi),
   trachea, heart, aorta and vena cava; liver, spleen, stomach (with gas), kidneys,
   bowel loops, bladder; a spine of stacked vertebrae with discs and canal, twelve pairs
   of ribs sloping down from the spine, sternum, iliac wings, sacrum and femoral heads;
   sometimes arms beside the body, often the table under it.
2. A :class:`Grid` places a ``(Z, Y, X)`` voxel grid on it (spacing in mm, origin).
3. :func:`render_labels` rasterises the anatomy at voxel centres (later shapes paint
   over earlier ones, optionally only over given objects); :func:`render_clean` gives
   the noise-free HU there, so labels and clean HU agree voxel by voxel with the HU rules.
4. :func:`acquire` simulates the scanner: partial volume across thick slices (the clean
   volume rendered on sub-slices and averaged), an in-plane Gaussian PSF, per-slice
   correlated noise (sometimes streaky), integer HU clipped to ``[-1024, 3071]``.

World coordinates (mm) are the canonical LPS axes of :mod:`edgemed.io.orientation`:
``x`` towards the patient's left (the image's right), ``y`` posterior (down in the
image), ``z`` superior; arrays are ``(Z, Y, X)`` with the first slice the lowest. The
body is centred at ``x = y = 0``; ``z = 0`` is the top of the right diaphragm dome.

Everything is a pure function of the ``numpy.random.Generator`` passed in. Needs only
NumPy and OpenCV. A demonstration data set, not an anatomical atlas.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from edgemed.export.reference.anatomy import LABELS, Scene, _Builder
from edgemed.export.reference.phantoms import (
    _HU_MAX,
    _HU_MIN,
    Scanner,
    _clean_from_objects,
    _field,
    _label_lut,
    sample_scanner,
)
from edgemed.export.reference.regions import _phase

__all__ = [
    "LABELS",
    "SPANS",
    "Grid",
    "Phantom3D",
    "Trunk",
    "acquire",
    "build_trunk",
    "make_volume",
    "render_clean",
    "render_labels",
]

#: Named z ranges of the trunk (mm, for an adult of scale 1; ``z = 0`` is the right
#: diaphragm dome): what a chest, abdomen, ... scan covers.
SPANS: dict[str, tuple[float, float]] = {
    "chest": (-70.0, 210.0),
    "abdomen": (-250.0, 20.0),
    "pelvis": (-390.0, -170.0),
    "chest-abdomen": (-250.0, 210.0),
    "abdomen-pelvis": (-390.0, 20.0),
    "trunk": (-390.0, 210.0),
}

Vec = tuple[float, float, float]
# Slice spacings scanners reconstruct (mm) and how often a random volume has each.
_SLICES = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
_SLICE_P = (0.08, 0.1, 0.12, 0.15, 0.25, 0.2, 0.1)


# -- grids ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """A ``(Z, Y, X)`` voxel grid in world millimetres.

    Attributes:
        shape: ``(Z, Y, X)`` voxels.
        spacing: ``(dz, dy, dx)`` mm (the order of :attr:`edgemed.io.MedicalImage.spacing`).
        origin: world ``(z, y, x)`` of the centre of voxel ``(0, 0, 0)``.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def axes(self) -> list[np.ndarray]:
        """World coordinates of the voxel centres along z, y and x (float32)."""
        return [
            np.float32(o) + np.float32(s) * np.arange(n, dtype=np.float32)
            for o, s, n in zip(self.origin, self.spacing, self.shape, strict=True)
        ]

    def resampled(self, shape: Sequence[int]) -> Grid:
        """The grid a half-pixel-centre resampling to ``shape`` yields (same field of view:
        voxel ``j`` sits at source index ``(j + 0.5) * n_in / n_out - 0.5``), which is
        where :func:`edgemed.volume.resample` puts its output voxels."""
        sp, org = [], []
        for o, s, n, m in zip(self.origin, self.spacing, self.shape, shape, strict=True):
            s_out = s * n / m
            sp.append(s_out)
            org.append(o - 0.5 * s + 0.5 * s_out)
        return Grid(tuple(int(m) for m in shape), tuple(sp), tuple(org))  # type: ignore[arg-type]

    def refined_z(self, factor: int) -> Grid:
        """The same slab with ``factor`` sub-slices per slice (for partial volume)."""
        dz = self.spacing[0] / factor
        z0 = self.origin[0] - self.spacing[0] / 2 + dz / 2
        return Grid(
            (self.shape[0] * factor, self.shape[1], self.shape[2]),
            (dz, self.spacing[1], self.spacing[2]),
            (z0, self.origin[1], self.origin[2]),
        )


# -- shapes (implicit, world mm) ----------------------------------------------------------


class _Shape:
    """A solid: a world bounding box ``(lo_xyz, hi_xyz)`` and a voxel-centre test."""

    lo: np.ndarray
    hi: np.ndarray

    def inside(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Boolean ``(nz, ny, nx)`` for coordinate vectors shaped to broadcast."""
        raise NotImplementedError


class Ellipsoid(_Shape):
    """An ellipsoid with semi-axes ``radii`` along the columns of ``rot`` (world axes
    when None)."""

    def __init__(self, center: Vec, radii: Vec, rot: np.ndarray | None = None) -> None:
        self.c = np.asarray(center, np.float64)
        self.r = np.asarray(radii, np.float64)
        self.rot = np.eye(3) if rot is None else np.asarray(rot, np.float64)
        half = np.sqrt(((self.rot * self.r) ** 2).sum(1))  # extent along each world axis
        self.lo, self.hi = self.c - half, self.c + half

    def inside(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        d = (x - np.float32(self.c[0]), y - np.float32(self.c[1]), z - np.float32(self.c[2]))
        acc = None
        for i in range(3):
            u = sum(np.float32(self.rot[j, i] / self.r[i]) * d[j] for j in range(3))
            acc = u * u if acc is None else acc + u * u
        return acc <= 1.0


class Capsule(_Shape):
    """A segment ``a -> b`` thickened to a radius that goes linearly from ``ra`` to ``rb``."""

    def __init__(self, a: Vec, b: Vec, ra: float, rb: float) -> None:
        self.a, self.b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        self.ra, self.rb = float(ra), float(rb)
        r = max(self.ra, self.rb)
        self.lo = np.minimum(self.a, self.b) - r
        self.hi = np.maximum(self.a, self.b) + r

    def inside(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        ab = self.b - self.a
        den = float(ab @ ab) or 1.0
        px, py, pz = x - np.float32(self.a[0]), y - np.float32(self.a[1]), z - np.float32(self.a[2])
        t = np.clip(
            (px * np.float32(ab[0]) + py * np.float32(ab[1]) + pz * np.float32(ab[2]))
            / np.float32(den),
            0,
            1,
        )
        dx, dy, dz = (
            px - t * np.float32(ab[0]),
            py - t * np.float32(ab[1]),
            pz - t * np.float32(ab[2]),
        )
        r = np.float32(self.ra) + t * np.float32(self.rb - self.ra)
        return dx * dx + dy * dy + dz * dz <= r * r


class Section(_Shape):
    """A solid whose axial cross-section at each ``z`` in ``[z0, z1]`` is a superellipse
    centred at ``(cx, cy)`` with half width ``a`` and half depths ``bf`` (anterior,
    ``y < cy``) and ``bb`` (posterior); ``params(z)`` gives ``(cx, cy, a, bf, bb)``."""

    def __init__(
        self,
        z0: float,
        z1: float,
        params: Callable[[np.ndarray], tuple[np.ndarray, ...]],
        power: float = 2.0,
    ) -> None:
        self.z0, self.z1, self.params, self.power = float(z0), float(z1), params, float(power)
        zs = np.linspace(z0, z1, 64)
        cx, cy, a, bf, bb = (
            np.broadcast_to(np.asarray(v, np.float64), zs.shape) for v in params(zs)
        )
        self.lo = np.array([(cx - a).min(), (cy - bf).min(), z0])
        self.hi = np.array([(cx + a).max(), (cy + bb).max(), z1])

    def inside(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        cx, cy, a, bf, bb = (
            np.broadcast_to(np.asarray(v, np.float32), z.shape)
            for v in self.params(z.astype(np.float64))
        )
        dy = y - cy  # (nz, ny, 1): the two terms are computed on the plane's edges only
        b = np.maximum(np.where(dy < 0, bf, bb), np.float32(1e-3))
        ty = np.abs(dy / b) ** np.float32(self.power)
        tx = np.abs((x - cx) / np.maximum(a, np.float32(1e-3))) ** np.float32(self.power)
        return (tx + ty <= 1.0) & (z >= self.z0) & (z <= self.z1)


class Cut(_Shape):
    """``shape`` restricted to the side of the surface ``z = surface(x, y)`` given by
    ``above`` (the diaphragm separates the lungs above it from the liver below it)."""

    def __init__(
        self, shape: _Shape, surface: Callable[[np.ndarray, np.ndarray], np.ndarray], above: bool
    ) -> None:
        self.shape, self.surface, self.above = shape, surface, above
        self.lo, self.hi = shape.lo, shape.hi

    def inside(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        s = self.surface(x, y)
        side = z >= s if self.above else z < s
        return self.shape.inside(z, y, x) & side


@dataclass(frozen=True)
class Op3:
    """Paint ``obj`` where ``shape`` is, only over voxels owned by ``within`` if given."""

    obj: int
    shape: _Shape
    within: tuple[int, ...] | None = None


@dataclass
class Trunk:
    """A phantom's anatomy: the objects (tissue and base HU, as in a 2D
    :class:`~edgemed.export.reference.anatomy.Scene`) and the painting operations.

    ``extent`` is the bounding box of the body, arms and table ``(x0, y0, x1, y1)`` in mm;
    ``z_range`` the trunk's length covered by anatomy; ``scale`` the body size factor.
    """

    scene: Scene
    ops: list[Op3] = field(default_factory=list)
    extent: tuple[float, float, float, float] = (-200.0, -150.0, 200.0, 150.0)
    z_range: tuple[float, float] = (-390.0, 210.0)
    scale: float = 1.0


# -- rendering ---------------------------------------------------------------------------


def _rasterize(trunk: Trunk, grid: Grid) -> np.ndarray:
    """Object index per voxel (uint16), painting the operations in order."""
    zs, ys, xs = grid.axes()
    objs = np.zeros(grid.shape, np.uint16)
    for op in trunk.ops:
        sl = []
        for axis, lo, hi in zip((xs, ys, zs), op.shape.lo, op.shape.hi, strict=True):
            i0 = int(np.searchsorted(axis, lo, "left"))
            i1 = int(np.searchsorted(axis, hi, "right"))
            sl.append(slice(i0, i1))
        sx, sy, sz = sl
        if sx.start >= sx.stop or sy.start >= sy.stop or sz.start >= sz.stop:
            continue
        sel = op.shape.inside(zs[sz, None, None], ys[None, sy, None], xs[None, None, sx])
        region = objs[sz, sy, sx]
        if op.within is not None:
            sel &= np.isin(region, op.within)
        region[sel] = op.obj
    return objs


def render_labels(trunk: Trunk, grid: Grid) -> np.ndarray:
    """Labels (uint8, ``(Z, Y, X)``) of ``trunk`` at the voxel centres of ``grid``."""
    return _label_lut(trunk.scene)[_rasterize(trunk, grid)]


def _clean(trunk: Trunk, objs: np.ndarray, spacing: float, rng: np.random.Generator) -> np.ndarray:
    # Slice by slice through the 2D phantom's own texture and HU clipping (the HU rules):
    # slices are >= ~1 mm apart, about the fine texture's correlation length.
    out = np.empty(objs.shape, np.float32)
    for k in range(objs.shape[0]):
        out[k] = _clean_from_objects(trunk.scene, objs[k], spacing, rng)
    return out


def render_clean(
    trunk: Trunk, grid: Grid, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free HU (float32) and labels (uint8) at the voxel centres of ``grid``."""
    objs = _rasterize(trunk, grid)
    return _clean(trunk, objs, float(min(grid.spacing[1:])), rng), _label_lut(trunk.scene)[objs]


def acquire(trunk: Trunk, grid: Grid, scanner: Scanner, rng: np.random.Generator) -> np.ndarray:
    """Simulate the scanner's volume of ``trunk`` on ``grid`` (float32 integer HU)."""
    nz, ny, nx = grid.shape
    dz, dy, dx = grid.spacing
    spacing = float(min(dy, dx))
    # A slice integrates over its thickness: thick slices blur what crosses them (the
    # diaphragm, lung bases, rib edges). Render sub-slices and average them.
    factor = 1 if dz <= 1.25 else (2 if dz <= 3.0 else 3)
    fine = _clean(trunk, _rasterize(trunk, grid.refined_z(factor)), spacing, rng)
    hu = fine.reshape(nz, factor, ny, nx).mean(1, dtype=np.float32)
    del fine
    psf_px = scanner.psf_mm / spacing
    fov = None
    if scanner.fov_circle:
        # Outside the reconstruction circle a scanner stores its minimum value; only when
        # the body lies inside the circle, so labels stay true.
        r = min(ny, nx) / 2.0
        x0, y0, x1, y1 = trunk.extent
        zc, yc, xc = (
            o + s * (n - 1) / 2
            for o, s, n in zip(grid.origin, grid.spacing, grid.shape, strict=True)
        )
        corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) - [xc, yc]
        if np.all(np.hypot(corners[:, 0] / dx, corners[:, 1] / dy) < r):
            yy, xx = np.mgrid[0:ny, 0:nx]
            fov = (yy - (ny - 1) / 2) ** 2 + (xx - (nx - 1) / 2) ** 2 > r * r
    for k in range(nz):
        plane = hu[k]
        if psf_px > 0.2:
            plane = cv2.GaussianBlur(plane, (0, 0), psf_px, borderType=cv2.BORDER_REPLICATE)
        noise = _field(rng, (ny, nx), scanner.noise_mm / spacing)
        if scanner.streaks > 0:
            kk = max(3, int(6.0 / spacing) | 1)
            streak = cv2.blur(rng.standard_normal((ny, nx), dtype=np.float32), (kk, 1))
            streak /= max(float(streak.std()), 1e-6)
            noise = (1 - scanner.streaks) * noise + scanner.streaks * streak
            noise /= max(float(noise.std()), 1e-6)
        plane = plane + np.float32(scanner.noise_hu) * noise
        if fov is not None:
            plane[fov] = _HU_MIN
        hu[k] = plane
    return np.clip(np.round(hu), _HU_MIN, _HU_MAX).astype(np.float32)


# -- the trunk ---------------------------------------------------------------------------


def _smooth(z: np.ndarray, knots: Sequence[tuple[float, float]]) -> np.ndarray:
    """Piecewise smoothstep interpolation through ``(z, value)`` knots (constant outside)."""
    kz = np.array([k[0] for k in knots])
    kv = np.array([k[1] for k in knots])
    z = np.asarray(z, np.float64)
    i = np.clip(np.searchsorted(kz, z) - 1, 0, len(kz) - 2)
    t = np.clip((z - kz[i]) / (kz[i + 1] - kz[i]), 0, 1)
    t = t * t * (3 - 2 * t)
    return kv[i] + (kv[i + 1] - kv[i]) * t


def _rot_z(deg: float) -> np.ndarray:
    t = math.radians(deg)
    c, s = math.cos(t), math.sin(t)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_x(deg: float) -> np.ndarray:
    t = math.radians(deg)
    c, s = math.cos(t), math.sin(t)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


class _T:
    """Builder: objects through the 2D :class:`_Builder` (base HU from the tissue rules),
    operations as 3D shapes."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.b = _Builder(rng, "trunk")
        self.trunk = Trunk(self.b.scene)

    def obj(self, tissue: str, hu: float | None = None) -> int:
        return self.b.obj(tissue, hu)

    def paint(self, obj: int, *shapes: _Shape, within: tuple[int, ...] | None = None) -> int:
        for s in shapes:
            self.trunk.ops.append(Op3(obj, s, within))
        return obj

    def tube(self, obj: int, pts: np.ndarray, radii: Sequence[float] | float, within=None) -> int:
        pts = np.asarray(pts, np.float64)
        r = np.broadcast_to(np.asarray(radii, np.float64), (len(pts),))
        caps = [
            Capsule(tuple(pts[i]), tuple(pts[i + 1]), r[i], r[i + 1]) for i in range(len(pts) - 1)
        ]
        return self.paint(obj, *caps, within=within)

    def bone_tube(self, pts: np.ndarray, radius: float, cortex: float, marrow: float | None = None):
        self.tube(self.obj("cortical"), pts, radius)
        if radius - cortex > 0.8:
            self.tube(self.obj("cancellous", marrow), pts, radius - cortex)

    def bone_ellipsoid(self, c: Vec, r: Vec, cortex: float, rot: np.ndarray | None = None):
        self.paint(self.obj("cortical"), Ellipsoid(c, r, rot))
        inner = tuple(max(v - cortex, 0.5) for v in r)
        self.paint(self.obj("cancellous"), Ellipsoid(c, inner, rot))  # type: ignore[arg-type]

    def ids_from(self, first: int) -> tuple[int, ...]:
        return tuple(range(first, len(self.b.scene.hu)))


def _tree(
    rng: np.random.Generator, root: np.ndarray, d: np.ndarray, length: float, width: float
) -> list[tuple[float, np.ndarray]]:
    """Branching centre lines ``(radius, polyline)`` growing from ``root`` along ``d``."""
    out: list[tuple[float, np.ndarray]] = []
    stack = [(root, d / np.linalg.norm(d), length, width)]
    while stack and len(out) < 40:
        p, d, ln, w = stack.pop()
        pts = [p]
        for _ in range(3):
            d = d + rng.normal(0, 0.15, 3)
            d /= np.linalg.norm(d)
            p = p + ln / 3 * d
            pts.append(p)
        out.append((w, np.array(pts)))
        if w > 0.9:
            for _ in range(2):
                nd = d + rng.normal(0, 0.6, 3)
                stack.append((p, nd / np.linalg.norm(nd), ln * rng.uniform(0.6, 0.85), w * 0.7))
    return out


def build_trunk(rng: np.random.Generator) -> Trunk:
    """One random adult (sometimes child-sized) trunk from above the lung apices to below
    the femoral heads."""
    T = _T(rng)
    s = rng.uniform(0.62, 0.8) if rng.random() < 0.06 else rng.uniform(0.88, 1.12)
    T.trunk.scale = s
    blood = _phase(rng)
    zlo, zhi = SPANS["trunk"][0] * s - 20, SPANS["trunk"][1] * s + 40
    T.trunk.z_range = (zlo, zhi)

    # Body cross-section along z: half width a, anterior / posterior half depths.
    a0 = rng.uniform(135, 170) * s
    depth = rng.uniform(0.62, 0.78)
    obese = rng.random() ** 1.6
    a_knots = [(-390 * s, 1.1), (-250 * s, 1.02), (-60 * s, 1.0), (120 * s, 0.97), (230 * s, 0.9)]
    belly = [
        (-390 * s, 0.0),
        (-300 * s, 0.05),
        (-150 * s, 0.12 * obese),
        (-40 * s, 0.05),
        (30 * s, 0.0),
    ]

    def body(z: np.ndarray) -> tuple[np.ndarray, ...]:
        a = a0 * _smooth(z, a_knots)
        b = (
            a0
            * depth
            * _smooth(z, [(-390 * s, 0.92), (-200 * s, 1.0), (100 * s, 1.0), (230 * s, 0.85)])
        )
        bf = b * (1 + _smooth(z, belly))
        bb = b * 0.93
        return np.zeros_like(z), np.zeros_like(z) + 0.0, a, bf, bb

    back = float(body(np.array([0.0]))[4][0])
    f_lat = (4 + 28 * obese) * s
    f_front = (4 + 35 * obese) * s
    f_back = (4 + 18 * obese) * s
    wall = rng.uniform(8, 14) * s
    # The cavity reaches back beside the spine (paraspinal muscles are painted later).
    cav_back = rng.uniform(30, 40) * s

    # The table under the patient (background label: it is not the patient).
    if rng.random() < 0.6:
        top = back + rng.uniform(1, 4)
        half, thick, shell = rng.uniform(200, 240), rng.uniform(25, 45), rng.uniform(1.5, 3.0)
        z0, z1 = zlo - 50, zhi + 50

        def slab(d: float) -> Callable[[np.ndarray], tuple[np.ndarray, ...]]:
            return lambda z: (
                0 * z,
                0 * z + top + thick / 2,
                0 * z + half - d,
                0 * z + thick / 2 - d,
                0 * z + thick / 2 - d,
            )

        T.paint(T.obj("table_shell"), Section(z0, z1, slab(0.0), 8.0))
        T.paint(T.obj("table_core"), Section(z0, z1, slab(shell), 8.0))
        extent_y1 = top + thick
    else:
        extent_y1 = back

    reach = a0 * 1.1
    if rng.random() < 0.25:  # arms down beside the body
        r = rng.uniform(32, 46) * s
        gap = rng.uniform(5, 25)
        for sgn in (-1, 1):
            cx = sgn * (a0 * 1.0 + gap + r)
            cy = rng.uniform(-0.2, 0.3) * a0 * depth
            p0 = np.array([cx, cy, 200 * s])
            p1 = np.array([cx + sgn * rng.uniform(0, 20), cy + rng.uniform(-10, 10), -260 * s])
            T.tube(T.obj("fat"), np.stack([p0, p1]), r)
            T.tube(T.obj("muscle"), np.stack([p0, p1]), r - rng.uniform(4, 10) * s)
            T.bone_tube(np.stack([p0, p1]), 11 * s, rng.uniform(2, 3))
        reach = a0 + gap + 2 * r
    T.trunk.extent = (-reach, -a0 * depth * 1.2, reach, extent_y1)

    def shrink(dl: float, df: float, db: float) -> Callable[[np.ndarray], tuple[np.ndarray, ...]]:
        def f(z: np.ndarray) -> tuple[np.ndarray, ...]:
            cx, cy, a, bf, bb = body(z)
            return cx, cy, a - dl, bf - df, bb - db

        return f

    T.paint(T.obj("muscle", rng.uniform(20, 60)), Section(zlo, zhi, body, 2.3))  # skin
    skin = rng.uniform(1.2, 2.2)
    T.paint(T.obj("fat"), Section(zlo, zhi, shrink(skin, skin, skin), 2.3))
    muscle = T.paint(T.obj("muscle"), Section(zlo, zhi, shrink(f_lat, f_front, f_back), 2.3))
    cavity = T.paint(
        T.obj("fat"),
        Section(zlo, zhi, shrink(f_lat + wall, f_front + wall, f_back + cav_back), 2.2),
        within=(muscle,),
    )
    cav = (cavity,)
    a_c = a0 - f_lat - wall  # cavity half width (at z = 0)
    b_cf = a0 * depth - f_front - wall
    b_cb = a0 * depth * 0.93 - f_back - cav_back

    # Spine geometry: vertebral body centre y, canal behind it.
    y_tip = back - f_back - rng.uniform(4, 10) * s  # spinous process tips

    def vb_y(z: np.ndarray | float) -> np.ndarray:
        # Kyphosis in the chest, lordosis in the lumbar spine: y of the body centre.
        return y_tip - _smooth(
            z, [(-330 * s, 75 * s), (-150 * s, 58 * s), (100 * s, 68 * s), (230 * s, 62 * s)]
        )

    # -- diaphragm domes: z of the surface under the lungs / over the liver
    zl = -rng.uniform(10, 25) * s  # left dome lower than the right
    xr, xl = -0.45 * a_c, 0.45 * a_c
    rx, ry = rng.uniform(90, 130) * s, rng.uniform(70, 100) * s

    def diaphragm(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        yy = (y + 0.1 * b_cf) ** 2 / (2 * ry)
        right = -((x - xr) ** 2) / (2 * rx) - yy
        left = zl - (x - xl) ** 2 / (2 * rx) - yy
        return np.maximum(right, left).astype(np.float32)

    # -- abdomen: liver, spleen, stomach, kidneys, bowel, bladder
    first_abd = len(T.b.scene.hu)
    liver = T.paint(
        T.obj("organ", blood["organ"] + rng.uniform(-10, 10)),
        Cut(
            Ellipsoid(
                (-0.35 * a_c, -0.05 * b_cf, -45 * s),
                (0.7 * a_c, 0.95 * b_cf, 95 * s),
                _rot_z(rng.uniform(-10, 10)),
            ),
            diaphragm,
            above=False,
        ),
        within=cav,
    )
    for _ in range(int(rng.integers(3, 7))):  # hepatic and portal veins
        p = np.array(
            [
                rng.uniform(-0.7, 0.0) * a_c,
                rng.uniform(-0.5, 0.5) * b_cf,
                rng.uniform(-110, -10) * s,
            ]
        )
        for r, pts in _tree(rng, p, rng.normal(0, 1, 3), 30 * s, rng.uniform(2, 4.5) * s):
            T.tube(T.obj("blood", blood["vein"]), pts, r, within=(liver,))
    T.paint(
        T.obj("organ", blood["organ"] - rng.uniform(0, 15)),
        Cut(
            Ellipsoid(
                (0.62 * a_c, 0.45 * b_cb, -55 * s), (0.22 * a_c, 0.4 * b_cb, 50 * s), _rot_z(30)
            ),
            diaphragm,
            above=False,
        ),
        within=cav,
    )
    st_c = (0.35 * a_c, -0.3 * b_cf, -60 * s)
    st_r = (0.3 * a_c, 0.35 * b_cf, 55 * s)
    stomach = T.paint(
        T.obj("muscle"),
        Cut(Ellipsoid(st_c, st_r, _rot_z(rng.uniform(0, 40))), diaphragm, above=False),
        within=cav,
    )
    content = T.paint(
        T.obj(str(rng.choice(["fluid", "organ"]))),
        Ellipsoid(st_c, tuple(v - 3 * s for v in st_r), _rot_z(20)),  # type: ignore[arg-type]
        within=(stomach,),
    )
    if rng.random() < 0.7:  # gas rises to the anterior (upper, patient supine) side
        T.paint(
            T.obj("gas"),
            Ellipsoid(
                (st_c[0], st_c[1] - 0.7 * st_r[1], st_c[2] + 10 * s),
                (0.6 * st_r[0], 0.35 * st_r[1], 0.6 * st_r[2]),
            ),
            within=(content,),
        )
    if rng.random() < 0.8:  # kidneys beside the spine
        for sgn in (-1, 1):
            zc = rng.uniform(-150, -110) * s - (10 * s if sgn < 0 else 0)
            c = (sgn * rng.uniform(55, 70) * s, float(vb_y(zc)) + rng.uniform(-5, 10) * s, zc)
            rot = _rot_z(sgn * rng.uniform(15, 35)) @ _rot_x(rng.uniform(-15, 15))
            kid = T.paint(
                T.obj("organ", blood["kidney"]), Ellipsoid(c, (25 * s, 30 * s, 55 * s), rot)
            )
            T.paint(
                T.obj(str(rng.choice(["fat", "fluid"]))),
                Ellipsoid((c[0] - sgn * 8 * s, c[1], c[2]), (8 * s, 12 * s, 25 * s), rot),
                within=(kid,),
            )
    # Bowel: loops (random walks) in the lower abdomen and pelvis, wall and content.
    for _ in range(int(rng.integers(30, 50))):
        p = np.array(
            [
                rng.uniform(-0.75, 0.75) * a_c,
                rng.uniform(-0.8, 0.3) * b_cf,
                rng.uniform(-330, -80) * s,
            ]
        )
        d = rng.normal(0, 1, 3)
        pts = [p]
        for _ in range(int(rng.integers(3, 7))):
            d = d + rng.normal(0, 0.7, 3)
            d /= np.linalg.norm(d)
            p = p + d * rng.uniform(15, 30) * s
            pts.append(p)
        r = rng.uniform(8, 17) * s
        wall_o = T.tube(T.obj("muscle", rng.uniform(30, 60)), np.array(pts), r, within=cav)
        kind = str(rng.choice(["fluid", "organ", "gas"], p=[0.35, 0.35, 0.3]))
        T.tube(
            T.obj(kind, rng.uniform(15, 45) if kind == "organ" else None),
            np.array(pts),
            r - rng.uniform(1.5, 3),
            within=(wall_o,),
        )
    T.paint(
        T.obj("fluid"),
        Ellipsoid(
            (0, -0.45 * b_cf, -335 * s),
            (rng.uniform(25, 45) * s, rng.uniform(20, 35) * s, rng.uniform(20, 35) * s),
        ),
        within=T.ids_from(first_abd) + cav,
    )

    # -- chest: lungs, mediastinum, heart, great vessels, airways
    lungs = []
    apex = rng.uniform(175, 200) * s
    for sgn in (-1, 1):
        rxl = a_c * rng.uniform(0.5, 0.6) * (rng.uniform(0.85, 0.97) if sgn > 0 else 1.0)
        ryl = (b_cf + b_cb) / 2 * rng.uniform(0.95, 1.1)
        c = (
            sgn * a_c * rng.uniform(0.42, 0.52),
            (b_cb - b_cf) / 2 + rng.uniform(-5, 10) * s,
            apex / 2 - 35 * s,
        )
        rz = apex / 2 + 95 * s
        lungs.append(
            T.paint(
                T.obj("lung"),
                Cut(
                    Ellipsoid(c, (rxl, ryl, rz), _rot_z(sgn * rng.uniform(-8, 8))),
                    diaphragm,
                    above=True,
                ),
                within=cav,
            )
        )
    lung_ids = tuple(lungs)
    hc = (a_c * rng.uniform(0.08, 0.2), -b_cf * rng.uniform(0.2, 0.35), rng.uniform(35, 50) * s)
    hr = (a_c * rng.uniform(0.33, 0.42), b_cf * rng.uniform(0.45, 0.6), rng.uniform(50, 62) * s)
    hrot = _rot_z(-rng.uniform(20, 40)) @ _rot_x(rng.uniform(10, 25))
    T.paint(T.obj("fat"), Ellipsoid(hc, tuple(v + rng.uniform(3, 8) for v in hr), hrot))  # type: ignore[arg-type]
    heart = T.paint(T.obj("muscle"), Ellipsoid(hc, hr, hrot))
    for _ in range(int(rng.integers(2, 4))):
        off = np.array(hc) + rng.uniform(-0.35, 0.35, 3) * np.array(hr)
        T.paint(
            T.obj("blood", blood["vein"]),
            Ellipsoid(tuple(off), tuple(np.array(hr) * rng.uniform(0.25, 0.45)), hrot),
            within=(heart,),
        )  # type: ignore[arg-type]
    # Aorta: ascending, arch, descending beside the spine to the iliac bifurcation.
    ra = rng.uniform(10, 14) * s
    y_desc = float(vb_y(100 * s)) - rng.uniform(20, 28) * s
    asc = np.array([hc[0] - 10 * s, hc[1] + 10 * s, hc[2] + 30 * s])
    arch_top = np.array([0.25 * ra, (asc[1] + y_desc) / 2, 135 * s])
    desc = [
        asc,
        np.array([asc[0], asc[1], 110 * s]),
        arch_top,
        np.array([0.3 * ra + 12 * s, y_desc, 115 * s]),
        np.array([14 * s, y_desc + 3 * s, 0.0]),
        np.array([6 * s, float(vb_y(-120 * s)) - 22 * s, -120 * s]),
        np.array([2 * s, float(vb_y(-230 * s)) - 22 * s, -230 * s]),
    ]
    T.tube(T.obj("muscle", rng.uniform(35, 55)), np.array(desc), ra + 1.5)
    T.tube(T.obj("blood", blood["artery"]), np.array(desc), ra)
    for sgn in (-1, 1):  # common iliac arteries
        p = np.array(
            [
                [2 * s, float(vb_y(-230 * s)) - 22 * s, -230 * s],
                [sgn * 75 * s, -0.1 * b_cf, -330 * s],
                [sgn * 85 * s, -0.4 * b_cf, -400 * s],
            ]
        )
        T.tube(T.obj("blood", blood["artery"]), p, ra * 0.6)
    ivc = np.array(
        [
            [-25 * s, float(vb_y(-230 * s)) - 22 * s, -230 * s],
            [-25 * s, float(vb_y(-100 * s)) - 25 * s, -100 * s],
            [-30 * s, -0.05 * b_cf, -5 * s],
            [hc[0] - 25 * s, hc[1], hc[2] - 25 * s],
        ]
    )
    T.tube(T.obj("blood", blood["vein"]), ivc, rng.uniform(9, 13) * s)
    # Trachea and main bronchi (airway lumen counts as lung), cartilage wall.
    tr_y = float(vb_y(150 * s)) - rng.uniform(28, 36) * s
    carina = np.array([0.0, tr_y + 5 * s, rng.uniform(105, 125) * s])
    trachea = np.array([[0.0, tr_y - 8 * s, zhi + 10], [0.0, tr_y, 180 * s], carina])
    rt = rng.uniform(7, 10) * s
    T.tube(T.obj("cartilage", rng.uniform(60, 100)), trachea, rt + 2)
    T.tube(T.obj("airway"), trachea, rt)
    for sgn in (-1, 1):
        hilum = np.array([sgn * 0.3 * a_c, carina[1] + 10 * s, carina[2] - 25 * s])
        T.tube(T.obj("muscle"), np.stack([carina, hilum]), rt * 0.75 + 1.5)
        T.tube(T.obj("airway"), np.stack([carina, hilum]), rt * 0.75)
        for _ in range(int(rng.integers(3, 6))):  # bronchi (air) and vessel trees in the lung
            d = np.array([sgn * 1.0, 0.0, 0.0]) + rng.normal(0, 0.6, 3)
            for r, pts in _tree(rng, hilum, d, 45 * s, rng.uniform(2.0, 3.5) * s):
                T.tube(T.obj("airway"), pts, r * 0.8, within=lung_ids)
        vhu = rng.uniform(30, 60) if rng.random() < 0.5 else blood["artery"]
        vessel = T.obj("blood", vhu)
        for _ in range(int(rng.integers(5, 9))):
            d = np.array([sgn * 1.0, 0.0, 0.0]) + rng.normal(0, 0.8, 3)
            for r, pts in _tree(rng, hilum, d, 50 * s, rng.uniform(2.5, 4.5) * s):
                T.tube(vessel, pts, r, within=lung_ids + (vessel,))

    # -- skeleton: sternum, spine, ribs, pelvis
    st_top = rng.uniform(170, 195) * s
    st_bot = rng.uniform(20, 50) * s
    ys = -b_cf - wall * 0.5
    T.paint(
        T.obj("cortical"),
        Section(
            st_bot,
            st_top,
            lambda z: (0 * z, 0 * z + ys, 0 * z + 13 * s, 0 * z + 6 * s, 0 * z + 6 * s),
        ),
    )
    T.paint(
        T.obj("cancellous"),
        Section(
            st_bot,
            st_top,
            lambda z: (0 * z, 0 * z + ys, 0 * z + 11 * s, 0 * z + 4.5 * s, 0 * z + 4.5 * s),
        ),
    )
    # Vertebrae from the sacrum up: 5 lumbar, 12 thoracic (T12..T1).
    first_bone = len(T.b.scene.hu)
    z = -255 * s
    levels = []
    for i in range(17):
        lumbar = i < 5
        h = (rng.uniform(25, 30) if lumbar else rng.uniform(18, 23) - 0.25 * (i - 5)) * s
        disc = (rng.uniform(8, 11) if lumbar else rng.uniform(4, 6)) * s
        zc = z + h / 2
        if zc - h / 2 > zhi:
            break
        y = float(vb_y(zc))
        rxv = (rng.uniform(20, 25) if lumbar else rng.uniform(14, 18) + 0.3 * (16 - i)) * s
        ryv = (rng.uniform(15, 18) if lumbar else rng.uniform(12, 15)) * s
        T.bone_ellipsoid((0.0, y, zc), (rxv, ryv, h / 2 * 1.15), rng.uniform(1.0, 2.0))
        T.paint(
            T.obj("cartilage", rng.uniform(80, 120)),
            Ellipsoid((0.0, y, z + h + disc / 2), (rxv * 0.95, ryv * 0.95, disc / 2 + 0.5)),
        )
        levels.append((zc, y, ryv, lumbar, h))
        z += h + disc
    for zc, y, ryv, lumbar, h in levels:  # posterior arch, processes; canal painted after
        canal_r = (rng.uniform(9, 12) if lumbar else rng.uniform(7, 9)) * s
        cy = y + ryv + canal_r + rng.uniform(1.5, 3.5)
        lam = rng.uniform(4.5, 7) * s
        T.bone_ellipsoid((0.0, cy, zc), (canal_r + lam, canal_r + lam, h * 0.45), 1.2)
        # Spinous process: back and down.
        T.bone_tube(
            np.array([[0.0, cy + canal_r, zc], [0.0, y_tip, zc - rng.uniform(5, 20) * s]]),
            rng.uniform(3.5, 5.5) * s,
            1.2,
            rng.uniform(300, 400),
        )
        tp = (rng.uniform(28, 40) if lumbar else rng.uniform(18, 26)) * s
        for sgn in (-1, 1):  # transverse processes
            end = np.array([sgn * (canal_r + tp), cy + (0 if lumbar else 8 * s), zc])
            T.bone_tube(np.array([[sgn * canal_r * 0.6, cy, zc], end]), rng.uniform(4, 6) * s, 1.2)
    # Paraspinal muscles behind the transverse processes (over the cavity's back).
    for sgn in (-1, 1):
        rx_p = rng.uniform(22, 30) * s

        def para(zz: np.ndarray, sgn: float = sgn, rx_p: float = rx_p) -> tuple[np.ndarray, ...]:
            yc = (vb_y(zz) + y_tip) / 2 + 12 * s
            ry = (y_tip - vb_y(zz)) / 2 - 4 * s
            return 0 * zz + sgn * (rx_p + 5 * s), yc, 0 * zz + rx_p, ry, ry

        T.paint(T.obj("muscle"), Section(zlo, zhi, para), within=(muscle, cavity) + lung_ids)
    canal = T.obj("canal")
    for zc, y, ryv, lumbar, h in levels:
        canal_r = (10.5 if lumbar else 8.0) * s
        T.paint(
            canal,
            Ellipsoid((0.0, y + ryv + canal_r + 2.5, zc), (canal_r, canal_r * 0.85, h)),
            within=T.ids_from(first_bone),
        )
    # Ribs: from each thoracic transverse process, around the cavity, sloping down.
    for zc, y, ryv, lumbar, h in levels[5:]:
        k = levels.index((zc, y, ryv, lumbar, h)) - 4  # 1 = T12 ... 12 = T1
        t_end = 12 - k  # T1..T12 as 1..12
        reach_deg = {1: 250, 2: 250, 11: 90, 12: 60}.get(t_end, 230 if t_end < 8 else 180)
        r_rib = rng.uniform(3.5, 5.0) * s
        for sgn in (-1, 1):
            degs = np.linspace(0, reach_deg, 12)
            pts = []
            for j, dgr in enumerate(degs):
                # Angle from posterior (y+) towards lateral, then anterior.
                ang = math.pi / 2 - sgn * math.radians(dgr * 0.72)
                ex = (a_c + 6 * s) * math.cos(ang)
                ey_b = b_cb + 8 * s if math.sin(ang) > 0 else b_cf + 6 * s
                ey = ey_b * math.sin(ang)
                dz = -((j / (len(degs) - 1)) ** 1.3) * rng.uniform(0.25, 0.35) * reach_deg * s
                if j == 0:
                    ex, ey = sgn * 25 * s, y + 12 * s
                pts.append((ex, ey, zc + dz))
            T.bone_tube(np.array(pts), r_rib, rng.uniform(1.0, 1.5))
    # Pelvis: sacrum, iliac wings, femoral heads in their sockets, femora.
    sac_z = -255 * s - rng.uniform(30, 40) * s
    T.bone_ellipsoid(
        (0.0, float(vb_y(sac_z)) + 5 * s, sac_z), (45 * s, 16 * s, 40 * s), 1.5, _rot_x(-25)
    )
    for sgn in (-1, 1):
        wing_c = (sgn * 80 * s, float(vb_y(-260 * s)) - 10 * s, -265 * s)
        rot = _rot_z(sgn * rng.uniform(25, 40)) @ _rot_x(rng.uniform(-10, 10))
        T.paint(
            T.obj("muscle"),
            Ellipsoid(
                (wing_c[0] * 1.1, wing_c[1] + 20 * s, wing_c[2] - 20 * s),
                (35 * s, 55 * s, 60 * s),
                rot,
            ),
        )
        T.bone_ellipsoid(
            wing_c, (rng.uniform(7, 11) * s, 60 * s, 45 * s), rng.uniform(1.5, 2.2), rot
        )
        fh = (
            sgn * rng.uniform(0.5, 0.62) * a0 * 1.08,
            rng.uniform(-0.1, 0.15) * a0 * depth,
            -340 * s,
        )
        r = rng.uniform(21, 26) * s
        T.bone_ellipsoid(fh, (r + 7 * s, r + 7 * s, r + 7 * s), 2.0)  # acetabulum
        T.paint(T.obj("cartilage"), Ellipsoid(fh, (r + 2, r + 2, r + 2)))
        T.bone_ellipsoid(fh, (r, r, r), rng.uniform(1.2, 2.0))
        neck = np.array(
            [
                fh,
                (fh[0] + sgn * 35 * s, fh[1] + 5 * s, fh[2] - 30 * s),
                (fh[0] + sgn * 40 * s, fh[1], zlo - 30),
            ]
        )
        T.bone_tube(neck, rng.uniform(13, 16) * s, rng.uniform(3, 5))
    return T.trunk


@dataclass
class Phantom3D:
    """One synthetic CT volume.

    Attributes:
        hu: the acquired volume, float32 integer HU, ``(Z, Y, X)``.
        labels: uint8 label per voxel (see :data:`LABELS`).
        spacing: ``(dz, dy, dx)`` in mm.
        trunk: the geometry, to render labels on other grids (:func:`render_labels`).
        grid: where the voxels sit in the world.
        span: the named part of the trunk covered (:data:`SPANS`) or ``custom``.
    """

    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    trunk: Trunk
    grid: Grid
    span: str

    def to_image(self):  # noqa: ANN201 (edgemed.io imported lazily)
        """The volume as an :class:`edgemed.io.MedicalImage` in the canonical (LPS)
        orientation, as a reader would give it."""
        from edgemed.io import MedicalImage

        oz, oy, ox = self.grid.origin
        return MedicalImage(
            self.hu,
            self.spacing,
            modality="CT",
            origin=(ox, oy, oz),
            direction=np.eye(3),
        )


def _grid_for(
    trunk: Trunk,
    z_range: tuple[float, float],
    spacing: tuple[float, float, float] | None,
    matrix: int | tuple[int, int] | None,
    rng: np.random.Generator,
    slice_mm: float | None = None,
) -> Grid:
    x0, y0, x1, y1 = trunk.extent
    need = max(x1 - x0, y1 - y0) * rng.uniform(1.04, 1.2)  # the reconstruction FOV
    if spacing is None:
        n = 512 if matrix is None else (matrix if isinstance(matrix, int) else max(matrix))
        d = need / n
        if slice_mm is None:
            slice_mm = float(rng.choice(_SLICES, p=_SLICE_P))
        spacing = (float(slice_mm), d, d)
    dz, dy, dx = spacing
    if matrix is None:
        ny = nx = int(math.ceil(need / min(dy, dx)))
    else:
        ny, nx = (matrix, matrix) if isinstance(matrix, int) else matrix
    nz = max(1, int(round((z_range[1] - z_range[0]) / dz)))
    cx = (x0 + x1) / 2 + rng.uniform(-0.04, 0.04) * need
    cy = (y0 + y1) / 2 + rng.uniform(-0.04, 0.04) * need
    origin = (z_range[0] + dz / 2, cy - (ny - 1) / 2 * dy, cx - (nx - 1) / 2 * dx)
    return Grid((nz, ny, nx), (float(dz), float(dy), float(dx)), origin)


def make_volume(
    rng: np.random.Generator,
    span: str | tuple[float, float] | None = None,
    spacing: Sequence[float] | None = None,
    matrix: int | tuple[int, int] | None = None,
    slice_mm: float | None = None,
) -> Phantom3D:
    """One random phantom volume.

    Args:
        rng: all randomness comes from here (same state, same volume).
        span: a name in :data:`SPANS`, or ``(z_low, z_high)`` in mm of a scale-1 trunk
            (scaled with the body); random among the names if None.
        spacing: ``(dz, dy, dx)`` mm; if None, in-plane from the field of view and the
            matrix (512: about 0.6-1 mm) and slices of 1-5 mm as scanners reconstruct.
        matrix: in-plane ``(Y, X)`` voxels (or one number for both); if None, 512 when
            ``spacing`` is None, else as many as the field of view needs.
        slice_mm: the slice spacing when ``spacing`` is None (random if None too).

    Returns:
        A :class:`Phantom3D` (``hu`` and ``labels`` of shape ``(Z, Y, X)``).
    """
    if span is None:
        span = str(rng.choice(list(SPANS)))
    name = span if isinstance(span, str) else "custom"
    if isinstance(span, str) and span not in SPANS:
        raise ValueError(f"span must be one of {tuple(SPANS)} or (z0, z1), got {span!r}")
    z0, z1 = SPANS[span] if isinstance(span, str) else span
    trunk = build_trunk(rng)
    z_range = (z0 * trunk.scale, z1 * trunk.scale)
    sp = None if spacing is None else tuple(float(v) for v in spacing)
    grid = _grid_for(trunk, z_range, sp, matrix, rng, slice_mm)  # type: ignore[arg-type]
    scanner = sample_scanner(rng)
    hu = acquire(trunk, grid, scanner, rng)
    labels = render_labels(trunk, grid)
    return Phantom3D(hu, labels, grid.spacing, trunk, grid, name)
