"""Seeded synthetic axial CT phantoms in Hounsfield units, with tissue labels.

Labels (index: name): 0 background, 1 lung, 2 fat, 3 soft_tissue, 4 bone. What counts
as which is documented in :mod:`edgemed.export.reference.anatomy` (in short: gas outside the
respiratory tract is *background*, airways are *lung*, vessels inside the lungs and
the spinal canal are *soft_tissue*).

How a phantom is made:

1. :func:`edgemed.export.reference.regions.build_scene` draws the anatomy as vector shapes in
   millimetres (body, fat, muscles, organs, vertebra, ribs, lungs, vessels, ...).
2. A :class:`View` places a ``H x W`` pixel grid on it: centre, spacing, rotation, flip.
   Whole-body views and zoomed crops come from the same scene.
3. :func:`render_labels` rasterises the scene at pixel centres: each pixel's label is
   the tissue class of the shape on top there. :func:`render_clean` gives the noise-free
   HU on the same grid (tissue base value + texture, clipped to the tissue's HU range),
   so labels and clean HU agree pixel by pixel with the HU rules in
   :data:`edgemed.export.reference.anatomy.TISSUES`.
4. :func:`acquire` simulates the scanner: the clean image (2x supersampled when pixels
   are coarse, for partial volume), a Gaussian point-spread function, correlated
   Gaussian noise (sometimes streaky), integer HU clipped to ``[-1024, 3071]``.

Everything is a pure function of the ``numpy.random.Generator`` passed in. Needs only
NumPy and OpenCV.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from edgemed.export.reference.anatomy import LABELS, TISSUES, Scene
from edgemed.export.reference.regions import build_scene

__all__ = [
    "LABELS",
    "Phantom",
    "Scanner",
    "View",
    "acquire",
    "make_phantom",
    "render_clean",
    "render_labels",
    "sample_scanner",
    "sample_view",
]

_SHIFT = 4  # fixed-point bits for sub-pixel polygon vertices in OpenCV drawing
_HU_MIN, _HU_MAX = -1024.0, 3071.0


@dataclass(frozen=True)
class View:
    """A pixel grid placed on a scene.

    Attributes:
        center: the world point (mm) at the centre of the grid.
        spacing: ``(row, column)`` pixel spacing in mm.
        angle: rotation of the anatomy in the image, degrees.
        flip: mirror left-right (applied after the rotation).
        whole: the grid holds the whole body (a full reconstruction, not a crop).
    """

    center: tuple[float, float]
    spacing: tuple[float, float]
    angle: float = 0.0
    flip: bool = False
    whole: bool = False

    def matrix(self, shape: tuple[int, int]) -> np.ndarray:
        """The 2x3 affine map from world mm to pixel coordinates (pixel centres are
        integers, the convention of OpenCV's drawing functions)."""
        h, w = shape
        t = math.radians(self.angle)
        c, s = math.cos(t), math.sin(t)
        rot = np.array([[c, -s], [s, c]])
        if self.flip:
            rot = np.array([[-1.0, 0.0], [0.0, 1.0]]) @ rot
        lin = np.diag([1.0 / self.spacing[1], 1.0 / self.spacing[0]]) @ rot
        off = np.array([(w - 1) / 2.0, (h - 1) / 2.0]) - lin @ np.asarray(self.center)
        return np.hstack([lin, off[:, None]])

    def refined(self, factor: int) -> View:
        """The same field of view with ``factor`` times finer pixels."""
        return replace(self, spacing=(self.spacing[0] / factor, self.spacing[1] / factor))


@dataclass(frozen=True)
class Scanner:
    """Acquisition settings: PSF sigma and noise (sigma, correlation length, streaks)."""

    psf_mm: float
    noise_hu: float
    noise_mm: float
    streaks: float
    fov_circle: bool


@dataclass
class Phantom:
    """One synthetic slice.

    Attributes:
        hu: the acquired image, float32 HU, shape ``(H, W)``.
        labels: uint8 label per pixel (see :data:`LABELS`).
        clean: float32 noise-free HU on the same grid (what the labels obey).
        spacing_mm: pixel spacing ``(row, column)`` in mm.
        scene: the geometry, to render labels on other grids (:func:`render_labels`).
        view: where the grid sits on the scene.
    """

    hu: np.ndarray
    labels: np.ndarray
    clean: np.ndarray
    spacing_mm: tuple[float, float]
    scene: Scene
    view: View

    @property
    def region(self) -> str:
        return self.scene.region


_LABEL_OF = {name: t.label for name, t in TISSUES.items()}


def _rasterize(scene: Scene, view: View, shape: tuple[int, int]) -> np.ndarray:
    """Object index per pixel (uint16), painting the scene's operations in order."""
    h, w = shape
    m = view.matrix(shape)
    objs = np.zeros(shape, np.uint16)
    scale = 1 << _SHIFT
    sx = 1.0 / view.spacing[1]
    for op in scene.ops:
        pts = [np.round((p @ m[:, :2].T + m[:, 2]) * scale).astype(np.int32) for p in op.polys]
        lo = np.min([p.min(0) for p in pts], 0) // scale - 2
        hi = np.max([p.max(0) for p in pts], 0) // scale + 2
        if op.width_mm is not None:
            thick = max(1, int(round(op.width_mm * sx)))
            lo, hi = lo - thick, hi + thick
        x0, y0 = max(int(lo[0]), 0), max(int(lo[1]), 0)
        x1, y1 = min(int(hi[0]) + 1, w), min(int(hi[1]) + 1, h)
        if x0 >= x1 or y0 >= y1:
            continue
        # Draw into a mask over the bounding box only: most shapes are small.
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        origin = np.array([x0 * scale, y0 * scale], np.int32)
        pts = [p - origin for p in pts]
        if op.width_mm is None:
            for p in pts:  # one by one: fillPoly of several polygons is even-odd
                cv2.fillPoly(mask, [p], 1, cv2.LINE_8, _SHIFT)
        else:
            cv2.polylines(mask, pts, False, 1, thick, cv2.LINE_8, _SHIFT)
        sel = mask.astype(bool)
        region = objs[y0:y1, x0:x1]
        if op.within is not None:
            sel &= np.isin(region, op.within)
        region[sel] = op.obj
    return objs


def _label_lut(scene: Scene) -> np.ndarray:
    return np.array([_LABEL_OF[t] for t in scene.tissues], np.uint8)


def render_labels(scene: Scene, view: View, shape: tuple[int, int]) -> np.ndarray:
    """Labels (uint8) of ``scene`` on the ``shape`` grid of ``view``, at pixel centres."""
    return _label_lut(scene)[_rasterize(scene, view, shape)]


def _field(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Gaussian random field with unit standard deviation and correlation ``sigma_px``."""
    h, w = shape
    # Smooth fields are drawn coarse and interpolated up: same look, a fraction of the cost.
    d = max(1, int(sigma_px / 2))
    f = rng.standard_normal((-(-h // d), -(-w // d)), dtype=np.float32)
    if sigma_px / d > 0.3:
        f = cv2.GaussianBlur(f, (0, 0), sigma_px / d, borderType=cv2.BORDER_REFLECT)
    if d > 1:
        f = cv2.resize(f, (f.shape[1] * d, f.shape[0] * d), interpolation=cv2.INTER_LINEAR)
        f = np.ascontiguousarray(f[:h, :w])
    if sigma_px > 0.3:
        f /= max(float(f.std()), 1e-6)
    return f


def _clean_from_objects(
    scene: Scene, objs: np.ndarray, spacing: float, rng: np.random.Generator
) -> np.ndarray:
    tissues = [TISSUES[t] for t in scene.tissues]
    base = np.array(scene.hu, np.float32)[objs]
    fine = np.array([t.fine for t in tissues], np.float32)[objs]
    medium = np.array([t.medium for t in tissues], np.float32)[objs]
    lo = np.array([t.clip[0] for t in tissues], np.float32)[objs]
    hi = np.array([t.clip[1] for t in tissues], np.float32)[objs]
    hu = base + fine * _field(rng, objs.shape, 0.7 / spacing)
    hu += medium * _field(rng, objs.shape, 3.0 / spacing)
    return np.clip(hu, lo, hi)


def render_clean(
    scene: Scene, view: View, shape: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free HU (float32) and labels (uint8) on the ``shape`` grid of ``view``.

    The texture is random (drawn from ``rng``); the labels are not.
    """
    objs = _rasterize(scene, view, shape)
    spacing = float(min(view.spacing))
    return _clean_from_objects(scene, objs, spacing, rng), _label_lut(scene)[objs]


def sample_scanner(rng: np.random.Generator) -> Scanner:
    """Random acquisition settings within the ranges of clinical CT."""
    return Scanner(
        psf_mm=float(rng.uniform(0.3, 0.75)),
        noise_hu=float(rng.uniform(10, 40)),
        noise_mm=float(rng.uniform(0.3, 0.9)),
        streaks=float(rng.uniform(0.2, 0.6)) if rng.random() < 0.3 else 0.0,
        fov_circle=bool(rng.random() < 0.2),
    )


def acquire(
    scene: Scene,
    view: View,
    shape: tuple[int, int],
    scanner: Scanner,
    rng: np.random.Generator,
) -> np.ndarray:
    """Simulate the scanner's image of ``scene`` on the ``shape`` grid (float32 HU)."""
    h, w = shape
    spacing = float(min(view.spacing))
    # Coarse pixels average what they cover (partial volume): render 2x finer, area-reduce.
    factor = 2 if spacing > 0.6 else 1
    fine_shape = (h * factor, w * factor)
    fine_view = view.refined(factor)
    objs = _rasterize(scene, fine_view, fine_shape)
    hu = _clean_from_objects(scene, objs, spacing / factor, rng)
    psf_px = scanner.psf_mm / (spacing / factor)
    if psf_px > 0.2:
        hu = cv2.GaussianBlur(hu, (0, 0), psf_px, borderType=cv2.BORDER_REPLICATE)
    if factor > 1:
        hu = cv2.resize(hu, (w, h), interpolation=cv2.INTER_AREA)
    noise = _field(rng, shape, scanner.noise_mm / spacing)
    if scanner.streaks > 0:
        # Row-correlated noise, like the streaks of some reconstructions.
        k = max(3, int(6.0 / spacing) | 1)
        streak = cv2.blur(rng.standard_normal(shape, dtype=np.float32), (k, 1))
        streak /= max(float(streak.std()), 1e-6)
        noise = (1 - scanner.streaks) * noise + scanner.streaks * streak
        noise /= max(float(noise.std()), 1e-6)
    hu = hu + scanner.noise_hu * noise
    if scanner.fov_circle and view.whole:
        # Pixels outside the reconstruction circle are stored at the minimum value; only
        # when the body lies inside the circle, so labels stay true.
        r = min(h, w) / 2.0
        x0, y0, x1, y1 = scene.extent
        m = view.matrix(shape)
        corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) @ m[:, :2].T + m[:, 2]
        c = np.array([(w - 1) / 2, (h - 1) / 2])
        if np.all(np.hypot(*(corners - c).T) < r):
            yy, xx = np.mgrid[0:h, 0:w]
            hu[(yy - c[1]) ** 2 + (xx - c[0]) ** 2 > r * r] = _HU_MIN
    return np.clip(np.round(hu), _HU_MIN, _HU_MAX).astype(np.float32)


def sample_view(
    rng: np.random.Generator,
    scene: Scene,
    shape: tuple[int, int],
    spacing_mm: float,
) -> View:
    """A random view of ``scene``: whole body when the field of view holds it, else a
    crop (about a third of them aimed at the spine). Mostly anterior-up with a small
    tilt; one in six at any angle. Left-right flips half the time.
    """
    h, w = shape
    fov_x, fov_y = w * spacing_mm, h * spacing_mm
    x0, y0, x1, y1 = scene.extent
    whole = fov_x >= 0.9 * (x1 - x0) and fov_y >= 0.9 * (y1 - y0)
    if whole:
        jitter = np.array([fov_x, fov_y]) * 0.08
        center = np.array([(x0 + x1) / 2, (y0 + y1) / 2]) + rng.uniform(-1, 1, 2) * jitter
    elif rng.random() < 0.35:
        sx, sy = scene.spine
        center = np.array([sx, sy]) + rng.uniform(-0.35, 0.35, 2) * np.array([fov_x, fov_y])
    else:
        center = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)]) * 0.85
    angle = rng.normal(0, 6) if rng.random() < 5 / 6 else rng.uniform(-180, 180)
    return View(
        (float(center[0]), float(center[1])),
        (spacing_mm, spacing_mm),
        float(angle),
        bool(rng.random() < 0.5),
        whole,
    )


def make_phantom(
    rng: np.random.Generator,
    size: int | tuple[int, int] = 256,
    spacing_mm: float | None = None,
    region: str | None = None,
) -> Phantom:
    """One random phantom slice.

    Args:
        rng: all randomness comes from here (same state, same phantom).
        size: ``H`` (square) or ``(H, W)`` pixels.
        spacing_mm: pixel spacing; random in about 0.3-2 mm (log-uniform) if ``None``.
        region: ``thorax``, ``abdomen`` or ``pelvis``; random if ``None``.

    Returns:
        A :class:`Phantom` with the acquired ``hu``, ``labels`` and the ``clean`` image.
    """
    shape = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if spacing_mm is None:
        spacing_mm = float(np.exp(rng.uniform(math.log(0.3), math.log(2.0))))
    scene = build_scene(rng, region)
    view = sample_view(rng, scene, shape, spacing_mm)
    scanner = sample_scanner(rng)
    clean, labels = render_clean(scene, view, shape, rng)
    hu = acquire(scene, view, shape, scanner, rng)
    return Phantom(hu, labels, clean, view.spacing, scene, view)
