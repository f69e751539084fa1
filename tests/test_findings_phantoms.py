"""Findings phantoms (export/reference/findings.py): determinism, ground truth, and the
published HU and shape facts the findings are drawn from (no torch)."""

from __future__ import annotations

import numpy as np
import pytest

from edgemed.export.reference.findings import (
    FINDINGS,
    LEVELS,
    make_findings_phantom,
)
from edgemed.export.reference.phantoms import _rasterize

BACKGROUND, LUNG, FAT, SOFT, BONE = range(5)


def _one(seed: int, region: str, kinds: tuple[str, ...], size: int = 256):
    """The first phantom from ``seed`` on whose slice all ``kinds`` are present."""
    for s in np.random.SeedSequence(seed).spawn(60):
        ph = make_findings_phantom(np.random.default_rng(s), size, region, kinds)
        if set(kinds) <= set(ph.present):
            return ph
    raise AssertionError(f"no phantom with {kinds} in 60 tries")


def _pixels(ph, finding) -> np.ndarray:
    owner = _rasterize(ph.phantom.scene, ph.phantom.view, ph.hu.shape)
    return np.isin(owner, finding.objects)


def test_deterministic_per_seed():
    a = make_findings_phantom(np.random.default_rng(7), 128)
    b = make_findings_phantom(np.random.default_rng(7), 128)
    np.testing.assert_array_equal(a.hu, b.hu)
    assert a.truth() == b.truth()
    c = make_findings_phantom(np.random.default_rng(8), 128)
    assert not np.array_equal(a.hu, c.hu)


def test_truth_is_complete_and_consistent():
    seen = set()
    for s in np.random.SeedSequence(3).spawn(30):
        ph = make_findings_phantom(np.random.default_rng(s), 192)
        t = ph.truth()
        assert t["level"] in LEVELS and t["level"].split("-")[0] == ph.phantom.region
        assert set(t["present"]) <= {f["kind"] for f in t["findings"]}
        assert ph.target().tolist() == [float(k in ph.present) for k in FINDINGS]
        for f in t["findings"]:
            assert f["kind"] in FINDINGS and f["side"] in ("right", "left")
            assert f["area_mm2"] > 0 and f["visible_mm2"] >= 0
            x, y = f["center_px"]
            if f["kind"] in ph.present and f["kind"] != "pleural_effusion":
                assert 0 <= x < 192 and 0 <= y < 192  # the centre lies in the image
        seen |= set(ph.present)
        # Findings sit only where their organ is: nodules/effusion in the chest (or the
        # lung bases of an upper abdomen), liver lesions in a liver slice.
        if any(k.startswith("lung") or k == "pleural_effusion" for k in ph.present):
            assert ph.level.startswith("thorax") or ph.level == "abdomen-upper"
        if any(k.startswith("liver") for k in ph.present):
            assert ph.level in ("thorax-lower", "abdomen-upper")
        assert not (ph.level.startswith("pelvis") and ph.present)
    assert len(seen) >= 4  # the mix covers the kinds


def test_nodules_follow_the_published_facts():
    solid = _one(11, "thorax", ("lung_nodule_solid",))
    ggo = _one(12, "thorax", ("lung_nodule_ground_glass",))
    for ph, kind, lo, hi in (
        (solid, "lung_nodule_solid", -10, 80),  # soft-tissue attenuation
        (ggo, "lung_nodule_ground_glass", -760, -420),  # hazy, above aerated lung
    ):
        (f,) = [f for f in ph.findings if f.kind == kind]
        assert 3.0 <= f.size_mm <= 30.0  # Fleischner: a nodule is at most 3 cm
        clean = ph.phantom.clean[_pixels(ph, f)]
        assert clean.size > 0 and lo <= clean.min() and clean.max() <= hi
        # Well above the surrounding lung (-950..-650 clean) on the acquired image too.
        lung = ph.phantom.clean[ph.phantom.labels == LUNG]
        assert clean.mean() > np.median(lung) + 150
    # A ground-glass nodule keeps the lung label (< -400 HU); a solid one is soft tissue.
    (f,) = [f for f in ggo.findings if f.kind == "lung_nodule_ground_glass"]
    assert np.all(ggo.phantom.labels[_pixels(ggo, f)] == LUNG)


@pytest.mark.parametrize("kind", ["liver_lesion_hypodense", "liver_lesion_hyperdense"])
def test_liver_lesions_differ_from_the_parenchyma(kind):
    ph = _one(21, "abdomen", (kind,))
    (f,) = [f for f in ph.findings if f.kind == kind]
    assert 6.0 <= f.size_mm <= 40.0
    lesion = ph.phantom.clean[_pixels(ph, f)]
    # The parenchyma: the liver object's own pixels (the lesion is drawn inside it).
    scene = ph.phantom.scene
    owner = _rasterize(scene, ph.phantom.view, ph.hu.shape)
    liver_obj = scene.ops[[op.obj for op in scene.ops].index(f.objects[0])].within[0]
    liver = ph.phantom.clean[owner == liver_obj]
    diff = lesion.mean() - liver.mean()
    if kind == "liver_lesion_hypodense":
        assert diff < -15
    else:
        assert diff > 15
    # Visible on the acquired image too (noise 10-40 HU, averaged over the lesion).
    acquired = ph.hu[_pixels(ph, f)].mean() - ph.hu[owner == liver_obj].mean()
    assert np.sign(acquired) == np.sign(diff) and abs(acquired) > 10


def test_effusion_is_dependent_fluid():
    ph = _one(31, "thorax", ("pleural_effusion",))
    effusions = [f for f in ph.findings if f.kind == "pleural_effusion"]
    for f in effusions:
        clean = ph.phantom.clean[_pixels(ph, f)]
        assert clean.min() >= -5 and clean.max() <= 30  # transudate/exudate water HU
        assert 8.0 <= f.size_mm <= 70.0
        # Posterior (dependent, supine): below the body centre in world y.
        x0, y0, x1, y1 = ph.phantom.scene.extent
        assert f.center_mm[1] > (y0 + y1) / 2
        assert np.all(ph.phantom.labels[_pixels(ph, f)] == SOFT)


def test_tissue_label_rules_still_hold():
    """The segmentation phantoms' HU rules (tests/export/test_phantoms.py) hold with
    findings drawn in."""
    for s in np.random.SeedSequence(5).spawn(8):
        ph = make_findings_phantom(np.random.default_rng(s), 128, "thorax", FINDINGS)
        hu, lab = ph.phantom.clean, ph.phantom.labels
        assert np.all(hu[lab == LUNG] < -400)
        assert np.all((hu[lab == SOFT] >= -10) & (hu[lab == SOFT] <= 260))
        assert np.all(hu[lab == BONE] > 150)


def test_cells_mark_where_present_findings_lie():
    """The classifier's dense target: a cell is 1 exactly where a present finding of that
    kind owns a pixel, 0 for kinds not present; the image's own pixels, not a redraw."""
    ph = _one(5, "thorax", ("lung_nodule_solid",))
    cells = ph.cells(32)
    assert cells.shape == (len(FINDINGS), 8, 8) and cells.dtype == np.uint8
    expect = np.zeros_like(cells)
    for f in ph.findings:
        if f.kind in ph.present:
            hit = _pixels(ph, f).reshape(8, 32, 8, 32).any(axis=(1, 3))
            expect[FINDINGS.index(f.kind)] |= hit
    np.testing.assert_array_equal(cells, expect)
    for k, kind in enumerate(FINDINGS):
        assert cells[k].any() == (kind in ph.present)
    # A nodule fills a few cells of 64, not the slice.
    assert 1 <= cells[FINDINGS.index("lung_nodule_solid")].sum() <= 4
    assert ph.cells(16).shape == (len(FINDINGS), 16, 16)
    with pytest.raises(ValueError, match="cells"):
        ph.cells(48)
