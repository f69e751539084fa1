"""The synthetic CT phantom generator: determinism, HU rules, geometry (no torch)."""

from __future__ import annotations

import numpy as np
import pytest

from edgemed.export.reference.anatomy import TISSUES
from edgemed.export.reference.phantoms import (
    LABELS,
    View,
    make_phantom,
    render_labels,
)

BACKGROUND, LUNG, FAT, SOFT, BONE = range(5)


def _phantoms(n: int, **kw):
    return [make_phantom(np.random.default_rng(1000 + i), **kw) for i in range(n)]


def test_label_names_are_the_bundle_labels():
    assert LABELS == ("background", "lung", "fat", "soft_tissue", "bone")
    assert {t.label for t in TISSUES.values()} == set(range(len(LABELS)))


def test_deterministic_per_seed():
    a = make_phantom(np.random.default_rng(5), (96, 80))
    b = make_phantom(np.random.default_rng(5), (96, 80))
    c = make_phantom(np.random.default_rng(6), (96, 80))
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.clean, b.clean)
    assert a.spacing_mm == b.spacing_mm
    assert not (np.array_equal(a.hu, c.hu) and np.array_equal(a.labels, c.labels))


def test_outputs_are_ct_like():
    ph = make_phantom(np.random.default_rng(1), (64, 96), spacing_mm=0.7)
    assert ph.hu.shape == ph.labels.shape == ph.clean.shape == (64, 96)
    assert ph.hu.dtype == ph.clean.dtype == np.float32
    assert ph.labels.dtype == np.uint8
    assert ph.spacing_mm == (0.7, 0.7)
    assert ph.hu.min() >= -1024 and ph.hu.max() <= 3071
    np.testing.assert_array_equal(ph.hu, np.round(ph.hu))  # CT stores integer HU


@pytest.mark.parametrize("region", ["thorax", "abdomen", "pelvis"])
def test_clean_hu_obeys_label_rules(region):
    for ph in _phantoms(2, size=96, spacing_mm=4.0, region=region) + _phantoms(
        2, size=96, spacing_mm=0.5, region=region
    ):
        hu, lab = ph.clean, ph.labels
        assert np.all(hu[lab == BONE] > 150)
        assert np.all(hu[lab == LUNG] < -400)
        assert np.all((hu[lab == FAT] >= -120) & (hu[lab == FAT] <= -80))
        assert np.all((hu[lab == SOFT] >= -10) & (hu[lab == SOFT] <= 260))
        bg = hu[lab == BACKGROUND]
        if bg.size:  # air, plus the odd table shell
            assert np.mean(bg < -800) > 0.9
        means = {i: hu[lab == i].mean() for i in range(5) if np.any(lab == i)}
        if BONE in means:
            assert 200 <= means[BONE] <= 1500
        if LUNG in means:
            assert -1000 <= means[LUNG] <= -650
        if SOFT in means:
            assert 0 <= means[SOFT] <= 250


def test_all_labels_appear_in_whole_body_slices():
    seen = set()
    for ph in _phantoms(3, size=128, spacing_mm=3.5, region="thorax"):
        seen |= set(np.unique(ph.labels).tolist())
    assert seen == set(range(len(LABELS)))


def test_acquired_image_follows_the_clean_one():
    ph = make_phantom(np.random.default_rng(3), 128, spacing_mm=3.5, region="abdomen")
    # Noise (sigma 10-40 HU) and blur only: tissue means stay near their clean means.
    for i in (FAT, SOFT):
        core = ph.labels == i
        if core.sum() > 200:
            assert abs(float(ph.hu[core].mean() - ph.clean[core].mean())) < 60
    air = ph.labels == BACKGROUND
    assert ph.hu[air].mean() < -900


def test_labels_render_consistently_on_a_finer_grid():
    ph = make_phantom(np.random.default_rng(9), 64, spacing_mm=3.0)
    fine = render_labels(ph.scene, ph.view.refined(4), (256, 256))
    # Pixel centres of the coarse grid sit between fine pixels 4k+1 and 4k+2.
    agree = np.mean(fine[1::4, 1::4] == ph.labels)
    assert agree > 0.85


def test_view_maps_centre_to_grid_centre():
    v = View((12.0, -30.0), (0.5, 0.5), angle=37.0, flip=True)
    m = v.matrix((100, 60))
    u = m[:, :2] @ np.array([12.0, -30.0]) + m[:, 2]
    np.testing.assert_allclose(u, [29.5, 49.5])


def test_unet_is_fully_convolutional():
    torch = pytest.importorskip("torch")
    from edgemed.export.reference.unet import UNet2D

    model = UNet2D().eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 96))
    assert out.shape == (1, 5, 64, 96)
