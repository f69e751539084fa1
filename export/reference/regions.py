"""Body regions built from :mod:`edgemed.export.reference.anatomy`'s parts: :func:`build_scene`.

Thorax (upper, mid and lower levels), abdomen (upper and lower) and pelvis (iliac and
hip levels). Sizes are in millimetres for an adult, scaled per body (children too);
positions of organs are given relative to the body or the muscle-wall cavity so that
they stay inside whatever shape the body takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgemed.export.reference.anatomy import (
    REGIONS,
    Scene,
    _arc,
    _blob,
    _Builder,
    _offset,
    _ray_hit,
    _vessel_tree,
)

__all__ = ["build_scene"]


# -- body and regions -------------------------------------------------------------------


@dataclass
class _Body:
    """Sizes and outlines shared by the region builders (mm)."""

    scale: float
    a: float  # half width
    b: float  # half depth (anterior-posterior)
    outline: np.ndarray
    muscle: np.ndarray  # outer boundary of the muscle wall
    cavity: np.ndarray  # inner boundary of the muscle wall
    cavity_obj: int
    muscle_obj: int
    back: float  # y of the skin at the back midline
    back_fat: float
    blood: dict[str, float]
    spine: dict[str, float]


def _phase(rng: np.random.Generator) -> dict[str, float]:
    """HU of blood and enhancing organs for a contrast phase (none, venous, arterial)."""
    phase = rng.choice(["none", "venous", "arterial"], p=[0.3, 0.45, 0.25])
    if phase == "none":
        blood = rng.uniform(35, 55)
        return {"artery": blood, "vein": blood, "organ": rng.uniform(45, 65), "kidney": 35.0}
    if phase == "venous":
        return {
            "artery": rng.uniform(120, 190),
            "vein": rng.uniform(110, 170),
            "organ": rng.uniform(90, 130),
            "kidney": rng.uniform(140, 200),
        }
    return {
        "artery": rng.uniform(180, 250),
        "vein": rng.uniform(50, 110),
        "organ": rng.uniform(60, 90),
        "kidney": rng.uniform(150, 220),
    }


def _table(B: _Builder, y_top: float, scale: float) -> None:
    rng = B.rng
    half = rng.uniform(200, 250)
    sag = rng.uniform(0, 25)
    thick = rng.uniform(25, 50)
    shell = rng.uniform(1.5, 3.0)
    x = np.linspace(-half, half, 33)
    top = y_top - sag * (x / half) ** 2  # edges curve up around the patient
    outer = np.concatenate([np.stack([x, top], 1), np.stack([x[::-1], top[::-1] + thick], 1)])
    xi = np.linspace(-half + shell, half - shell, 33)
    ti = y_top - sag * (xi / half) ** 2 + shell
    inner = np.concatenate(
        [np.stack([xi, ti], 1), np.stack([xi[::-1], ti[::-1] + thick - 2 * shell], 1)]
    )
    B.fill(B.obj("table_shell"), outer)
    B.fill(B.obj("table_core"), inner)


def _arms(B: _Builder, a: float, b: float, scale: float) -> float:
    """Arms down beside the body; returns how far they reach in x."""
    rng = B.rng
    r = rng.uniform(32, 48) * scale
    gap = rng.uniform(5, 30)
    cy = rng.uniform(-0.2, 0.3) * b
    for sgn in (-1, 1):
        cx = sgn * (a + gap + r)
        arm = _blob(rng, cx, cy, r, r * rng.uniform(0.9, 1.2), rng.uniform(0, 180), 0.05)
        B.fill(B.obj("fat"), arm)
        B.fill(B.obj("muscle"), _offset(arm, -rng.uniform(4, 12) * scale))
        hx = cx + rng.uniform(-0.2, 0.2) * r
        B.bone(_blob(rng, hx, cy, 11 * scale, 11 * scale, 0, 0.02), rng.uniform(1.5, 3.0))
    return a + gap + 2 * r


def _body(B: _Builder, region: str) -> _Body:
    rng = B.rng
    scale = rng.uniform(0.55, 0.8) if rng.random() < 0.08 else rng.uniform(0.85, 1.15)
    a = rng.uniform(130, 175) * scale * (1.08 if region == "pelvis" else 1.0)
    b = a * rng.uniform(0.62, 0.85 if region == "thorax" else 0.78)
    # Front rounder than the flattened back (the patient lies on it).
    t = np.linspace(0, 2 * math.pi, 128, endpoint=False)
    r = np.ones_like(t)
    for k in range(2, 6):
        r += 0.025 / (k - 1) * rng.uniform(-1, 1) * np.cos(k * t + rng.uniform(0, 2 * math.pi))
    pb, pf = rng.uniform(2.6, 3.4), rng.uniform(2.0, 2.4)
    ey = np.where(np.sin(t) > 0, 2 / pb, 2 / pf)
    x = a * np.sign(np.cos(t)) * np.abs(np.cos(t)) ** (2 / 2.3) * r
    y = b * np.sign(np.sin(t)) * np.abs(np.sin(t)) ** ey * r
    outline = np.stack([x, y], 1)
    back = float(y.max())

    if rng.random() < 0.6:
        _table(B, back + rng.uniform(0.5, 3), scale)
    reach = a
    if region != "pelvis" and rng.random() < 0.25:
        reach = _arms(B, a, b, scale)

    obese = rng.random() ** 1.6
    ang = np.arctan2(y, x)
    fat_t = (3 + 32 * obese) * scale * (1 + 0.3 * np.cos(2 * ang + rng.uniform(0, 2 * math.pi)))
    if region != "thorax":  # abdominal fat bulges anteriorly
        fat_t += 15 * obese * scale * np.clip(-np.sin(ang), 0, None)
    fat_t = np.minimum(fat_t, 0.3 * b)
    wall = rng.uniform(7, 13) * scale * (1 + 0.25 * np.cos(3 * ang + rng.uniform(0, 6.3)))
    if region == "thorax":  # pectoral muscles
        wall += rng.uniform(3, 15) * scale * np.clip(-np.sin(ang), 0, None) ** 2
    wall = np.minimum(wall, 0.15 * b)
    back_i = int(np.argmax(y))
    back_fat = float(fat_t[back_i])
    spine: dict[str, float] = {}
    if region != "pelvis":
        # Behind the cavity, beside the spine, lie the paraspinal muscles: the cavity's
        # back wall reaches forward to the transverse processes (thorax) or the
        # vertebral body (abdomen), so lungs and kidneys sit beside the spine.
        spine = _spine_xy(scale, back, back_fat, region, rng)
        if region == "thorax":
            target = spine["canal_y"] - rng.uniform(0, 6) * scale
        else:
            target = spine["vb_y"] + spine["vb_ry"] * rng.uniform(0.2, 0.9)
        need = (back - back_fat) - target - wall[back_i]
        bump = np.exp(-(((ang - math.pi / 2) / math.radians(rng.uniform(22, 32))) ** 2))
        wall = wall + max(need, 0.0) * bump

    B.fill(B.obj("fat"), outline)
    skin = B.obj("muscle", rng.uniform(20, 60))
    muscle_outline = _offset(outline, -fat_t)
    muscle = B.fill(B.obj("muscle"), muscle_outline)
    cavity = _offset(muscle_outline, -wall)
    # Fat planes between muscles of the wall.
    box = (-a, -b, a, b)
    B.streaks(B.obj("fat"), (muscle,), box, int(rng.integers(4, 14)), 30 * scale)
    B.line(skin, rng.uniform(1.2, 2.5), np.vstack([outline, outline[:1]]))
    cavity_obj = B.fill(B.obj("fat"), cavity)
    B.scene.extent = (-reach, -b, reach, b)
    return _Body(
        scale,
        a,
        b,
        outline,
        muscle_outline,
        cavity,
        cavity_obj,
        muscle,
        back,
        back_fat,
        _phase(rng),
        spine,
    )


def _inner_ids(B: _Builder, first: int) -> tuple[int, ...]:
    return tuple(range(first, len(B.scene.hu)))


def _vessel(B: _Builder, cx: float, cy: float, rx: float, ry: float, hu: float, deg=0.0):
    rng = B.rng
    out = _blob(rng, cx, cy, rx, ry, deg, 0.02)
    B.fill(B.obj("muscle", rng.uniform(35, 55)), out)  # the wall
    return B.fill(B.obj("blood", hu), _offset(out, -min(1.5, 0.2 * rx)))


def _lungs(B: _Builder, body: _Body, level: str, within: tuple[int, ...]) -> tuple[int, ...]:
    rng = B.rng
    ac = np.ptp(body.cavity[:, 0]) / 2
    bc = np.ptp(body.cavity[:, 1]) / 2
    cyc = float(body.cavity[:, 1].mean())
    ids = []
    for sgn in (-1, 1):
        rx, ry = ac * rng.uniform(0.58, 0.7), bc * rng.uniform(0.95, 1.1)
        cy = cyc + bc * rng.uniform(-0.05, 0.1)
        if level == "lower":  # lung bases: posterior crescents behind the diaphragm
            rx, ry, cy = rx * 0.85, ry * 0.6, cyc + bc * rng.uniform(0.3, 0.45)
        if sgn > 0:
            rx *= rng.uniform(0.85, 1.0)  # the heart takes room on the left
        cx = sgn * ac * rng.uniform(0.4, 0.5)
        blob = _blob(rng, cx, cy, rx, ry, rng.uniform(-10, 10), 0.05)
        ids.append(B.fill(B.obj("lung"), blob, within=within))
    lungs = tuple(ids)
    # The mediastinum between the lungs (fat; the heart and vessels go on top).
    med = _blob(rng, ac * rng.uniform(-0.05, 0.1), cyc, ac * rng.uniform(0.08, 0.2), bc, 0, 0.1)
    B.fill(B.obj("fat"), med, within=lungs)
    # Vessels: a few trees from the hila; elsewhere short branches cut obliquely, and
    # vessels cut across (dots). Axial slices show far more dots than long trees.
    by_width: dict[float, list[np.ndarray]] = {}
    for sgn in (-1, 1):
        hilum = np.array([sgn * ac * rng.uniform(0.12, 0.22), cyc + bc * rng.uniform(-0.15, 0.1)])
        for i in range(int(rng.integers(3, 8))):
            if i < 2:
                root, ang = hilum, (0.0 if sgn > 0 else math.pi) + rng.uniform(-1.3, 1.3)
            else:
                root = np.array(
                    [sgn * ac * rng.uniform(0.2, 0.9), cyc + bc * rng.uniform(-0.8, 0.8)]
                )
                ang = rng.uniform(0, 2 * math.pi)
            length = rng.uniform(10, 25) * body.scale
            width = rng.uniform(2.5, 4.5) if i < 2 else rng.uniform(1.2, 3.0)
            for w, pts in _vessel_tree(rng, root, ang, length, width * body.scale):
                by_width.setdefault(round(w * 2) / 2, []).append(pts)
    hu = rng.uniform(30, 60) if rng.random() < 0.5 else body.blood["artery"]
    for w, lines in sorted(by_width.items(), reverse=True):
        B.line(B.obj("blood", hu), max(w, 0.6), *lines, within=lungs)
    dots = []
    for _ in range(int(rng.integers(30, 120))):
        r = rng.uniform(0.5, 2.5) * body.scale
        p = (rng.uniform(-ac, ac), cyc + rng.uniform(-bc, bc))
        dots.append(
            _blob(rng, p[0], p[1], r, r * rng.uniform(0.7, 1.4), rng.uniform(0, 180), 0, n=12)
        )
    B.fill(B.obj("blood", hu), *dots, within=lungs)
    return lungs


def _heart(B: _Builder, body: _Body, level: str) -> None:
    rng = B.rng
    ac = np.ptp(body.cavity[:, 0]) / 2
    bc = np.ptp(body.cavity[:, 1]) / 2
    cyc = float(body.cavity[:, 1].mean())
    shrink = 0.7 if level == "lower" else 1.0
    cx, cy = ac * rng.uniform(0.05, 0.2), cyc - bc * rng.uniform(0.15, 0.35)
    rx, ry = ac * rng.uniform(0.3, 0.4) * shrink, bc * rng.uniform(0.4, 0.55) * shrink
    deg = rng.uniform(-40, -15)
    heart = _blob(rng, cx, cy, rx, ry, deg, 0.04)
    B.fill(B.obj("fat"), _offset(heart, rng.uniform(2, 8)))  # pericardial fat
    myo = B.fill(B.obj("muscle"), heart)
    for _ in range(int(rng.integers(1, 4))):
        px, py = cx + rng.uniform(-0.4, 0.4) * rx, cy + rng.uniform(-0.4, 0.4) * ry
        ch = _blob(
            rng, px, py, rx * rng.uniform(0.25, 0.45), ry * rng.uniform(0.25, 0.45), deg, 0.08
        )
        B.fill(B.obj("blood", body.blood["vein"]), ch, within=(myo,))


def _spine_xy(
    scale: float, back: float, back_fat: float, region: str, rng: np.random.Generator
) -> dict[str, float]:
    """Vertebra sizes and positions (mm): body, canal, spinous process tip."""
    s = scale**0.8
    thoracic = region == "thorax"
    d = {
        "vb_rx": rng.uniform(14, 18) * s if thoracic else rng.uniform(19, 25) * s,
        "vb_ry": rng.uniform(12, 15) * s if thoracic else rng.uniform(14, 18) * s,
        "canal_rx": rng.uniform(7, 9) * s if thoracic else rng.uniform(9, 12) * s,
        "canal_ry": rng.uniform(6.5, 8.5) * s,
        "sp_len": rng.uniform(16, 32) * s if thoracic else rng.uniform(16, 28) * s,
        "lamina": rng.uniform(4.5, 7) * s,
    }
    tip = back - back_fat - rng.uniform(4, 10) * scale
    d["tip"] = tip
    d["canal_y"] = tip - d["sp_len"] - d["lamina"] - d["canal_ry"]
    d["vb_y"] = d["canal_y"] - d["canal_ry"] - rng.uniform(1.5, 4) - d["vb_ry"]
    return d


def _spine(B: _Builder, body: _Body, region: str, sp: dict[str, float], inner: tuple[int, ...]):
    """Paraspinal muscles, vertebra, spinal canal, transverse processes (and rib heads)."""
    rng = B.rng
    s = body.scale
    cy, tip = sp["canal_y"], sp["tip"]
    # Paraspinal muscles with intramuscular fat streaks.
    ps = []
    for sgn in (-1, 1):
        rx = rng.uniform(20, 30) * s
        ry = (tip - cy) / 2 + rng.uniform(6, 14) * s
        cx = sgn * (rx + rng.uniform(1, 5) * s)
        blob = _blob(rng, cx, (cy + tip) / 2 + rng.uniform(0, 4), rx, ry, sgn * rng.uniform(0, 20))
        ps.append(B.fill(B.obj("muscle"), blob, within=inner))
    box = (-60 * s, cy - 10 * s, 60 * s, tip + 10 * s)
    B.streaks(B.obj("fat"), tuple(ps), box, int(rng.integers(3, 14)), rng.uniform(10, 30) * s)
    if region != "thorax":  # psoas muscles beside the lumbar vertebral body
        r = rng.uniform(8, 22) * s
        for sgn in (-1, 1):
            c = (sgn * (sp["vb_rx"] + 0.8 * r), sp["vb_y"] + rng.uniform(-4, 6))
            B.fill(B.obj("muscle"), _blob(rng, c[0], c[1], r, r * rng.uniform(0.9, 1.4), 0, 0.05))
    # Transverse processes (thoracic: angled back towards the rib tubercles), tapering
    # from a broad base at the lamina.
    cortex = rng.uniform(1.0, 2.0)
    tp_deg = rng.uniform(15, 35) if region == "thorax" else rng.uniform(-5, 10)
    tp_len = rng.uniform(14, 24) * s if region == "thorax" else rng.uniform(25, 40) * s
    tips = []
    for sgn in (-1, 1):
        p0 = np.array([sgn * (sp["canal_rx"] * 0.6), cy + sp["canal_ry"] * 0.3])
        t = math.radians(tp_deg)
        d = np.array([sgn * math.cos(t), math.sin(t)])
        n = np.array([-d[1], d[0]])
        tips.append(p0 + d * (tp_len + sp["canal_rx"] * 0.6))
        w0, w1 = rng.uniform(9, 14) * s / 2, rng.uniform(5, 9) * s / 2
        B.bone(np.array([p0 - n * w0, tips[-1] - n * w1, tips[-1] + n * w1, p0 + n * w0]), cortex)
    # Posterior arch and spinous process, then the vertebral body, then the canal on top.
    arch = _blob(rng, 0, cy, sp["canal_rx"] + sp["lamina"], sp["canal_ry"] + sp["lamina"], 0, 0.03)
    B.bone(arch, cortex, rng.uniform(300, 400))
    y0 = cy + sp["canal_ry"]
    wb, wt = rng.uniform(8, 13) * s / 2, rng.uniform(3, 6) * s / 2
    dx = rng.uniform(-2, 2)
    B.bone(np.array([[-wb, y0], [wb, y0], [dx + wt, tip], [dx - wt, tip]]), cortex)
    vb = _blob(rng, 0, sp["vb_y"], sp["vb_rx"], sp["vb_ry"], 0, 0.03, rng.uniform(2.0, 2.6))
    B.bone(vb, rng.uniform(1.0, 2.2))
    canal = _blob(rng, 0, cy, sp["canal_rx"], sp["canal_ry"], 0, 0.04, n=32)
    B.fill(B.obj("canal"), canal)
    return tips


def _around_vb(sp: dict[str, float], deg: float, r: float, gap: float) -> tuple[float, float]:
    t = math.radians(deg)
    rv = math.hypot(sp["vb_rx"] * math.cos(t), sp["vb_ry"] * math.sin(t))
    return ((rv + r + gap) * math.cos(t), sp["vb_y"] + (rv + r + gap) * math.sin(t))


def _ribs(B: _Builder, body: _Body, tips, n_range=(4, 9), sternum=True) -> None:
    rng = B.rng
    s = body.scale
    cav = body.cavity
    c = (0.0, float(cav[:, 1].mean()))
    for sgn in (-1, 1):
        side = (lambda d: d) if sgn > 0 else (lambda d: 180.0 - d)
        # The posterior arc: from the transverse process along the back of the chest.
        if tips is not None and rng.random() < 0.75:
            start = np.degrees(math.atan2(tips[(sgn + 1) // 2][1] - c[1], tips[(sgn + 1) // 2][0]))
            span = rng.uniform(5, 30)
            degs = np.linspace(start, start - sgn * span, 8)
            pts = [tips[(sgn + 1) // 2]]
            w = rng.uniform(6, 9) * s
            for d in degs[1:]:
                i = _ray_hit(cav, d, c)
                pts.append(_offset(cav, w / 2 + 1)[i])
            B.rod(np.array(pts), w, rng.uniform(1.0, 1.8))
        # Ribs cut across along the chest wall.
        out = _offset(cav, rng.uniform(4, 7) * s)
        for d in np.sort(rng.uniform(-75, 55, int(rng.integers(*n_range)))):
            i = _ray_hit(out, side(d), c)
            tan = out[(i + 1) % len(out)] - out[i - 1]
            deg = math.degrees(math.atan2(tan[1], tan[0]))
            rib = _blob(rng, *out[i], rng.uniform(5, 9) * s, rng.uniform(3.5, 5.5) * s, deg, 0.04)
            B.bone(rib, rng.uniform(1.0, 1.6))
    if sternum and rng.random() < 0.9:
        i = _ray_hit(body.cavity, -90, c)
        p = _offset(body.cavity, rng.uniform(3, 6) * s)[i]
        B.bone(_blob(rng, p[0], p[1], rng.uniform(9, 16) * s, rng.uniform(4, 7) * s), 1.2)
        for sgn in (-1, 1):  # costal cartilage beside the sternum
            if rng.random() < 0.5:
                q = p + np.array([sgn * rng.uniform(18, 30) * s, rng.uniform(0, 6)])
                B.fill(B.obj("cartilage"), _blob(rng, q[0], q[1], 7 * s, 4 * s, sgn * 20))


def _thorax(B: _Builder, body: _Body) -> None:
    rng = B.rng
    s = body.scale
    level = str(rng.choice(["upper", "mid", "lower"], p=[0.3, 0.4, 0.3]))
    B.scene.level = f"thorax-{level}"
    sp = body.spine
    if level == "lower":
        liver = _blob(rng, -0.35 * body.a, -0.1 * body.b, 0.5 * body.a, 0.6 * body.b, 0, 0.05)
        B.fill(B.obj("organ", body.blood["organ"]), liver, within=(body.cavity_obj,))
    _lungs(B, body, level, (body.cavity_obj,))
    if level != "upper":
        _heart(B, body, level)
    else:
        for _ in range(int(rng.integers(2, 5))):  # great vessels
            r = rng.uniform(6, 15) * s
            _vessel(
                B,
                rng.uniform(-0.25, 0.25) * body.a,
                rng.uniform(-0.45, -0.1) * body.b,
                r,
                r,
                body.blood[str(rng.choice(["artery", "vein"]))],
            )
        tr = (rng.uniform(-4, 4), sp["vb_y"] - sp["vb_ry"] - rng.uniform(14, 22) * s)
        r = rng.uniform(7, 10) * s
        B.fill(B.obj("cartilage", rng.uniform(60, 100)), _blob(rng, tr[0], tr[1], r + 2, r + 2))
        B.fill(B.obj("airway"), _blob(rng, tr[0], tr[1], r, r * rng.uniform(0.8, 1.1), 0, 0.04))
    if level == "mid" and rng.random() < 0.5:  # main bronchi
        for sgn in (-1, 1):
            p = (sgn * rng.uniform(12, 25) * s, sp["vb_y"] - sp["vb_ry"] - rng.uniform(10, 25) * s)
            r = rng.uniform(4, 7) * s
            B.fill(B.obj("muscle"), _blob(rng, p[0], p[1], r + 1.5, r + 1.5))
            B.fill(B.obj("airway"), _blob(rng, p[0], p[1], r, r))
    r = rng.uniform(9, 15) * s
    _vessel(
        B,
        *_around_vb(sp, rng.uniform(-75, -35), r, rng.uniform(0.5, 4)),
        r,
        r,
        body.blood["artery"],
    )
    r = rng.uniform(5, 8) * s
    B.fill(B.obj("muscle"), _blob(rng, *_around_vb(sp, rng.uniform(-110, -80), r, 2), r, r * 0.8))
    r = rng.uniform(2.5, 5) * s
    _vessel(B, *_around_vb(sp, rng.uniform(-150, -115), r, 1), r, r, body.blood["vein"])
    inner = _inner_ids(B, body.muscle_obj)
    tips = _spine(B, body, "thorax", sp, inner)
    _ribs(B, body, tips)
    if level == "upper" and rng.random() < 0.7:  # scapulae outside the rib cage
        for sgn in (-1, 1):
            d0 = rng.uniform(20, 45)
            d1 = d0 + rng.uniform(25, 45)
            pts = []
            for d in np.linspace(d0, d1, 5):
                i = _ray_hit(body.muscle, d if sgn > 0 else 180 - d)
                pts.append(_offset(body.muscle, -rng.uniform(6, 10) * s)[i])
            pts = np.array(pts)
            mid = pts.mean(0)
            B.fill(
                B.obj("muscle"),
                _blob(rng, *mid, np.ptp(pts[:, 0]) / 2 + 12, 16 * s, 0, 0.05),
                within=inner,
            )
            B.rod(pts, rng.uniform(3, 7) * s, 1.0)
    B.scene.spine = (0.0, sp["vb_y"])


def _bowel(B: _Builder, body: _Body, n: int, within: tuple[int, ...], box) -> None:
    rng = B.rng
    x0, y0, x1, y1 = box
    for _ in range(n):
        r = rng.uniform(7, 18) * body.scale
        c = (rng.uniform(x0, x1), rng.uniform(y0, y1))
        loop = _blob(rng, c[0], c[1], r, r * rng.uniform(0.6, 1.3), rng.uniform(0, 180), 0.08)
        wall = B.fill(B.obj("muscle", rng.uniform(30, 60)), loop, within=within)
        kind = rng.choice(["fluid", "organ", "gas"], p=[0.35, 0.35, 0.3])
        hu = rng.uniform(15, 45) if kind == "organ" else None
        B.fill(B.obj(str(kind), hu), _offset(loop, -rng.uniform(1.5, 3)), within=(wall,))


def _abdomen(B: _Builder, body: _Body) -> None:
    rng = B.rng
    s = body.scale
    a, b = body.a, body.b
    upper = rng.random() < 0.55
    B.scene.level = "abdomen-upper" if upper else "abdomen-lower"
    sp = body.spine
    cav = (body.cavity_obj,)
    first = body.cavity_obj
    if upper:
        liver = _blob(rng, -0.3 * a, -0.05 * b, 0.65 * a, 0.85 * b, rng.uniform(-15, 15), 0.06)
        lv = B.fill(B.obj("organ", body.blood["organ"] + rng.uniform(-10, 10)), liver, within=cav)
        for _ in range(int(rng.integers(0, 6))):  # hepatic / portal veins
            r = rng.uniform(2, 6) * s
            p = (rng.uniform(-0.7, 0.1) * a, rng.uniform(-0.5, 0.5) * b)
            B.fill(B.obj("blood", body.blood["vein"]), _blob(rng, p[0], p[1], r, r), within=(lv,))
        if rng.random() < 0.3:
            B.fill(B.obj("fluid"), _blob(rng, -0.3 * a, -0.4 * b, 14 * s, 10 * s, 30), within=(lv,))
        spleen = _blob(rng, 0.6 * a, 0.35 * b, 0.22 * a, 0.35 * b, 30, 0.08)
        B.fill(B.obj("organ", body.blood["organ"] - rng.uniform(0, 15)), spleen, within=cav)
        st = _blob(rng, 0.3 * a, -0.35 * b, 0.3 * a, 0.3 * b, rng.uniform(0, 60), 0.08)
        wall = B.fill(B.obj("muscle"), st, within=cav)
        content = B.fill(
            B.obj(str(rng.choice(["fluid", "organ"]))), _offset(st, -3 * s), within=(wall,)
        )
        if rng.random() < 0.6:
            gas = _blob(rng, 0.3 * a, -0.5 * b, 0.2 * a, 0.12 * b, 0, 0.05)
            B.fill(B.obj("gas"), gas, within=(content,))
        if rng.random() < 0.35:  # lung bases in the posterior costophrenic recesses
            for sgn in (-1, 1):
                blob = _blob(rng, sgn * 0.68 * a, 0.5 * b, 0.2 * a, 0.28 * b, sgn * 20, 0.06)
                B.fill(B.obj("lung"), blob, within=_inner_ids(B, first))
        _bowel(B, body, int(rng.integers(2, 8)), cav, (-0.6 * a, -0.8 * b, 0.6 * a, 0.3 * b))
    else:
        _bowel(B, body, int(rng.integers(10, 26)), cav, (-0.8 * a, -0.8 * b, 0.8 * a, 0.5 * b))
    if rng.random() < 0.75:  # kidneys
        for sgn in (-1, 1):
            c = (sgn * rng.uniform(48, 68) * s, sp["vb_y"] + rng.uniform(-8, 8) * s)
            k = _blob(
                rng,
                c[0],
                c[1],
                rng.uniform(20, 28) * s,
                rng.uniform(28, 38) * s,
                sgn * rng.uniform(-35, -15),
                0.05,
            )
            kid = B.fill(B.obj("organ", body.blood["kidney"]), k)
            sinus = _blob(rng, c[0] - sgn * 8 * s, c[1], 8 * s, 12 * s, 0, 0.1)
            B.fill(B.obj(str(rng.choice(["fat", "fluid"]))), sinus, within=(kid,))
    r = rng.uniform(8, 13) * s
    _vessel(
        B,
        *_around_vb(sp, rng.uniform(-80, -55), r, rng.uniform(0.5, 3)),
        r,
        r,
        body.blood["artery"],
    )
    r = rng.uniform(8, 13) * s
    _vessel(B, *_around_vb(sp, rng.uniform(-125, -100), r, 2), r * 1.3, r * 0.8, body.blood["vein"])
    _spine(B, body, "abdomen", sp, _inner_ids(B, body.muscle_obj))
    if upper:
        _ribs(B, body, None, (2, 6), sternum=False)
    B.scene.spine = (0.0, sp["vb_y"])


def _pelvis(B: _Builder, body: _Body) -> None:
    rng = B.rng
    s = body.scale
    a, b = body.a, body.b
    cav = (body.cavity_obj,)
    first = body.cavity_obj
    back = body.back - body.back_fat
    if rng.random() < 0.6:  # iliac level: sacrum and iliac wings
        B.scene.level = "pelvis-iliac"
        _bowel(B, body, int(rng.integers(8, 20)), cav, (-0.7 * a, -0.8 * b, 0.7 * a, 0.2 * b))
        sy = back - rng.uniform(30, 45) * s
        srx, sry = rng.uniform(40, 55) * s, rng.uniform(15, 22) * s
        for sgn in (-1, 1):
            g = _blob(rng, sgn * 0.65 * a, sy - 0.1 * b, 0.3 * a, 0.35 * b, sgn * 30, 0.05)
            B.fill(B.obj("muscle"), g)  # gluteal and iliacus muscles around the wing
            p0 = np.array([sgn * (srx - 6 * s), sy])
            p2 = np.array([sgn * rng.uniform(95, 125) * s, sy - rng.uniform(45, 80) * s])
            p1 = (p0 + p2) / 2 + np.array([sgn * 15 * s, 10 * s])
            t = np.linspace(0, 1, 9)[:, None]
            curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
            B.rod(curve, rng.uniform(8, 15) * s, rng.uniform(1.2, 2.2))
        B.bone(_blob(rng, 0, sy, srx, sry, 0, 0.04, 2.4), rng.uniform(1.2, 2.0))
        B.fill(B.obj("canal"), _blob(rng, 0, sy + sry * 0.4, 8 * s, 4 * s))
        B.scene.spine = (0.0, sy)
    else:  # hip level: femoral heads, bladder, rectum
        B.scene.level = "pelvis-hip"
        bl = _blob(rng, 0, -0.35 * b, rng.uniform(25, 45) * s, rng.uniform(20, 35) * s, 0, 0.05)
        B.fill(B.obj("fluid"), bl, within=cav)
        _bowel(B, body, int(rng.integers(0, 5)), cav, (-0.5 * a, -0.2 * b, 0.5 * a, 0.5 * b))
        fy = rng.uniform(-0.1, 0.15) * b
        for sgn in (-1, 1):
            fx = sgn * rng.uniform(0.5, 0.62) * a
            r = rng.uniform(21, 26) * s
            B.fill(
                B.obj("muscle"),
                _blob(rng, fx, fy + 0.2 * b, 0.35 * a, 0.45 * b, 0, 0.05),
                within=_inner_ids(B, first),
            )
            acet = (
                _arc(fx, fy, r + 5 * s, r + 5 * s, 90, 270)
                if sgn > 0
                else _arc(fx, fy, r + 5 * s, r + 5 * s, -90, 90)
            )
            B.rod(acet, rng.uniform(6, 10) * s, 1.5)
            B.bone(_blob(rng, fx, fy, r, r, 0, 0.02), rng.uniform(1.2, 2.0))
        sy = back - rng.uniform(15, 30) * s
        B.bone(_blob(rng, 0, sy, rng.uniform(15, 25) * s, rng.uniform(8, 12) * s), 1.5)
        rect = _blob(rng, 0, sy - 25 * s, 14 * s, 12 * s)
        B.fill(B.obj("muscle"), rect)
        B.fill(B.obj(str(rng.choice(["gas", "organ"]))), _offset(rect, -3 * s))
        B.scene.spine = (0.0, fy)


def build_scene(rng: np.random.Generator, region: str | None = None) -> Scene:
    """Build one random axial slice's anatomy.

    Args:
        rng: the source of all randomness (the scene is a pure function of its state).
        region: ``thorax``, ``abdomen`` or ``pelvis``; random (mostly thorax) if ``None``.
    """
    if region is None:
        region = str(rng.choice(REGIONS, p=[0.5, 0.32, 0.18]))
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    B = _Builder(rng, region)
    body = _body(B, region)
    {"thorax": _thorax, "abdomen": _abdomen, "pelvis": _pelvis}[region](B, body)
    return B.scene
