"""The 3D CT phantoms: seeded, labels that obey the 2D phantoms' HU rules, a grid that
matches the runtime's resampling."""

from __future__ import annotations

import numpy as np
import pytest

from edgemed.export.reference.anatomy import TISSUES
from edgemed.export.reference.phantoms3d import (
    LABELS,
    SPANS,
    Grid,
    build_trunk,
    make_volume,
    render_clean,
    render_labels,
)
from edgemed.volume import resample

SMALL = {"spacing": (5.0, 3.0, 3.0), "matrix": 160}  # a coarse grid: fast tests


def test_same_seed_same_volume_other_seed_another() -> None:
    a = make_volume(np.random.default_rng(5), "chest", **SMALL)
    b = make_volume(np.random.default_rng(5), "chest", **SMALL)
    c = make_volume(np.random.default_rng(6), "chest", **SMALL)
    assert a.hu.dtype == np.float32 and a.labels.dtype == np.uint8
    assert a.hu.shape == a.labels.shape == a.grid.shape
    assert a.hu.shape[1:] == (160, 160) and a.spacing == (5.0, 3.0, 3.0)
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.hu.shape != c.hu.shape or not np.array_equal(a.hu, c.hu)
    assert np.all(a.hu == np.round(a.hu)) and a.hu.min() >= -1024 and a.hu.max() <= 3071


def test_spans_show_their_anatomy() -> None:
    rng = np.random.default_rng(11)
    chest = make_volume(rng, "chest", **SMALL)
    pelvis = make_volume(rng, "pelvis", **SMALL)
    frac = [np.bincount(v.labels.ravel(), minlength=5) / v.labels.size for v in (chest, pelvis)]
    assert all(f[i] > 0.002 for f in frac for i in (2, 3, 4))  # fat, soft tissue, bone
    assert frac[0][1] > 0.03  # the chest has lungs ...
    assert frac[1][1] < 0.002  # ... the pelvis (almost) none
    # z spans the named range (scaled with the body), first slice the lowest.
    lo, hi = SPANS["chest"]
    s = chest.trunk.scale
    z = chest.grid.axes()[0]
    assert z[0] < z[-1]
    assert abs((z[-1] - z[0] + chest.spacing[0]) - (hi - lo) * s) <= chest.spacing[0]


def test_labels_obey_the_hu_rules_on_the_clean_volume() -> None:
    """Every voxel's noise-free HU lies in the clip range of a tissue of its label (the
    2D phantoms' rules, applied by the 2D code)."""
    rng = np.random.default_rng(3)
    trunk = build_trunk(rng)
    grid = Grid((40, 96, 96), (4.0, 4.0, 4.0), (-120.0, -190.0, -190.0))
    clean, labels = render_clean(trunk, grid, rng)
    np.testing.assert_array_equal(labels, render_labels(trunk, grid))
    seen = set(np.unique(labels).tolist())
    assert seen == set(range(len(LABELS)))
    for label in seen:
        values = clean[labels == label]
        ranges = [t.clip for t in TISSUES.values() if t.label == label]
        ok = np.zeros(values.shape, bool)
        for lo, hi in ranges:
            ok |= (values >= lo) & (values <= hi)
        assert ok.all(), LABELS[label]


def test_acquired_hu_order_by_label() -> None:
    ph = make_volume(np.random.default_rng(8), "chest-abdomen", **SMALL)
    med = [float(np.median(ph.hu[ph.labels == k])) for k in range(len(LABELS))]
    bg, lung, fat, soft, bone = med
    assert bg < -900 and -950 < lung < -600 and -130 < fat < -60 and 0 < soft < 150
    assert bone > 150


def test_resampled_grid_is_where_the_runtime_resamples_to() -> None:
    """A volume holding each voxel's world z, y and x, resampled by the runtime's
    trilinear rule, gives the coordinates Grid.resampled says (linear data: exact
    inside the edge voxels)."""
    grid = Grid((17, 30, 26), (2.5, 0.8, 0.9), (-40.0, -12.0, 7.0))
    out = (7, 13, 11)
    zs, ys, xs = grid.axes()
    zz, yy, xx = np.meshgrid(zs, ys, xs, indexing="ij")
    got = resample(np.stack([zz, yy, xx]).astype(np.float32), out)
    want = np.meshgrid(*grid.resampled(out).axes(), indexing="ij")
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g[1:-1, 1:-1, 1:-1], w[1:-1, 1:-1, 1:-1], atol=1e-3)


def test_bad_span_is_refused() -> None:
    with pytest.raises(ValueError, match="span"):
        make_volume(np.random.default_rng(0), "head")
