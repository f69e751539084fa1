"""Similar-case galleries (edgemed.gallery): store, integrity, bundle binding, search.

The CLI half (``edgemed gallery build/add``, ``edgemed match``) with the shipped
similar-case bundle is in tests/test_gallery_cli.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from edgemed.errors import GalleryError, UsageError
from edgemed.gallery import SIDECAR, Gallery


@dataclass
class _Ref:  # what check_bundle reads of a Bundle
    name: str
    version: str
    manifest_sha256: str


A = _Ref("model-a", "1.0", "a" * 64)
B = _Ref("model-a", "1.0", "b" * 64)  # same name and version, another manifest


def _gallery(n: int = 50, d: int = 16, seed: int = 0) -> tuple[Gallery, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    g = Gallery.create(A, d)
    g.add(
        x, [f"case-{i}" for i in range(n)], [("nodule" if i % 3 == 0 else None) for i in range(n)]
    )
    return g, x


def _data_file(folder):
    (path,) = folder.glob("entries-*.npz")
    return path


def test_add_save_load_and_match_itself(tmp_path):
    g, x = _gallery()
    g.save(tmp_path / "g")
    back = Gallery.load(tmp_path / "g", bundle=A)
    assert len(back) == 50 and back.ids == g.ids and back.labels == g.labels
    assert back.labels[0] == "nodule" and back.labels[1] is None
    np.testing.assert_allclose(np.linalg.norm(back.embeddings, axis=1), 1.0, atol=1e-6)
    # Each stored vector (any length) finds itself first, with cosine 1.
    for i in (0, 7, 49):
        best = back.search(x[i] * 3.5, k=3)[0]
        assert best[0].id == f"case-{i}" and best[0].similarity == pytest.approx(1.0, abs=1e-6)
        assert best[1].similarity < 0.999
    meta = json.loads((tmp_path / "g" / SIDECAR).read_text())
    assert meta["bundle"] == {"name": "model-a", "version": "1.0", "manifest_sha256": "a" * 64}
    assert meta["entries"] == 50 and meta["dimensions"] == 16


def test_add_to_a_saved_gallery_keeps_one_data_file(tmp_path):
    g, _ = _gallery(10)
    g.save(tmp_path)
    first = _data_file(tmp_path)
    g2 = Gallery.load(tmp_path, bundle=A)
    g2.add(np.ones((2, 16), np.float32), ["new-1", "new-2"], ["effusion", None])
    g2.save(tmp_path)
    assert not first.exists() and len(list(tmp_path.glob("entries-*.npz"))) == 1
    g3 = Gallery.load(tmp_path)
    assert len(g3) == 12 and g3.ids[-2:] == ["new-1", "new-2"] and g3.labels[-2] == "effusion"
    assert g3.search(np.ones(16), k=2)[0][0].id == "new-1"  # tie: gallery order


def test_another_bundle_is_refused(tmp_path):
    g, _ = _gallery(5)
    g.save(tmp_path)
    with pytest.raises(GalleryError) as e:
        Gallery.load(tmp_path, bundle=B)
    assert e.value.code == "GALLERY_BUNDLE_MISMATCH"
    with pytest.raises(GalleryError) as e:
        Gallery.load(tmp_path).check_bundle(_Ref("model-a", "1.1", "a" * 64))
    assert e.value.code == "GALLERY_BUNDLE_MISMATCH"


def test_truncated_or_edited_data_is_refused(tmp_path):
    g, _ = _gallery(20)
    g.save(tmp_path)
    data = _data_file(tmp_path)
    good = data.read_bytes()
    data.write_bytes(good[:-100])  # truncated
    with pytest.raises(GalleryError) as e:
        Gallery.load(tmp_path)
    assert e.value.code == "GALLERY_INTEGRITY"
    edited = bytearray(good)
    edited[len(edited) // 2] ^= 0x01  # one bit of one embedding, same size
    data.write_bytes(bytes(edited))
    with pytest.raises(GalleryError) as e:
        Gallery.load(tmp_path)
    assert e.value.code == "GALLERY_INTEGRITY"
    data.unlink()
    with pytest.raises(GalleryError) as e:
        Gallery.load(tmp_path)
    assert e.value.code == "GALLERY_INTEGRITY"


def test_bad_sidecars(tmp_path):
    with pytest.raises(GalleryError) as e:
        Gallery.load(tmp_path)
    assert e.value.code == "GALLERY_NOT_FOUND"
    g, _ = _gallery(3)
    g.save(tmp_path)
    side = tmp_path / SIDECAR
    meta = json.loads(side.read_text())
    for edit in ({"format": "other"}, {"data": {"path": "../x.npz", "sha256": "0", "bytes": 1}}):
        side.write_text(json.dumps({**meta, **edit}))
        with pytest.raises(GalleryError) as e:
            Gallery.load(tmp_path)
        assert e.value.code == "GALLERY_INVALID"
    side.write_text("{not json")
    with pytest.raises(GalleryError) as e:
        Gallery.load(tmp_path)
    assert e.value.code == "GALLERY_INVALID"
    side.write_text(json.dumps({**meta, "entries": 4}))  # data says 3
    with pytest.raises(GalleryError) as e:
        Gallery.load(tmp_path)
    assert e.value.code == "GALLERY_INVALID"


def test_ids_and_rows_are_checked():
    g, _ = _gallery(3)
    with pytest.raises(UsageError) as e:
        g.add(np.ones((1, 16)), ["case-1"])
    assert e.value.code == "USAGE_GALLERY_ID"
    for bad in ("", "a\nb", "x" * 201):
        with pytest.raises(UsageError) as e:
            g.add(np.ones((1, 16)), [bad])
        assert e.value.code == "USAGE_GALLERY_ID"
    with pytest.raises(UsageError):
        g.add(np.ones((1, 8)), ["short"])
    with pytest.raises(UsageError):
        g.add(np.full((1, 16), np.nan), ["nan"])
    with pytest.raises(UsageError):
        g.add(np.zeros((1, 16)), ["zero"])
    with pytest.raises(UsageError):
        g.search(np.ones(8))
    assert len(g) == 3  # nothing half-added


def _brute_force(emb: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """The whole gallery sorted by cosine, in float64, stable (ties: gallery order)."""
    e = emb.astype(np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    qq = q.astype(np.float64)
    qq /= np.linalg.norm(qq, axis=1, keepdims=True)
    return np.argsort(-(qq @ e.T), axis=1, kind="stable")[:, :k]


@pytest.fixture(scope="module")
def big():
    rng = np.random.default_rng(18)
    x = rng.standard_normal((100_000, 64)).astype(np.float32)
    g = Gallery.create(A, 64)
    g.add(x, [str(i) for i in range(len(x))])
    q = rng.standard_normal((25, 64)).astype(np.float32)
    q[:5] = x[[3, 99_999, 50_000, 65_536, 65_535]]  # stored rows, across chunk borders
    return g, x, q


def test_100k_random_entries_match_brute_force(big):
    g, x, q = big
    want = _brute_force(x, q, 10)
    got = g.search(q, k=10)
    assert [[m.row for m in ms] for ms in got] == want.tolist()
    assert [ms[0].id for ms in got[:5]] == ["3", "99999", "50000", "65536", "65535"]
    e = x / np.linalg.norm(x, axis=1, keepdims=True)
    for ms, qi in zip(got, q, strict=True):
        exact = e[[m.row for m in ms]] @ (qi / np.linalg.norm(qi))
        np.testing.assert_allclose([m.similarity for m in ms], exact, atol=2e-6)


def test_ties_keep_gallery_order():
    g = Gallery.create(A, 4)
    v = np.array([1.0, 2.0, 0.0, 0.0], np.float32)
    g.add(np.stack([-v, v, v * 2, v, [0, 0, 1, 0]]), ["a", "b", "c", "d", "e"])
    assert [m.id for m in g.search(v, k=3)[0]] == ["b", "c", "d"]
    assert [m.id for m in g.search(v, k=9)[0]] == ["b", "c", "d", "e", "a"]


def test_faiss_indexes_agree_with_exact(big):
    pytest.importorskip("faiss")
    g, x, q = big
    exact = [[m.row for m in ms] for ms in g.search(q, k=10)]
    flat = [[m.row for m in ms] for ms in g.search(q, k=10, index="faiss")]
    assert flat == exact


def test_faiss_hnsw_finds_most_neighbours():
    pytest.importorskip("faiss")
    g, x = _gallery(10_000, 64, seed=5)  # an HNSW build of 10^5 takes minutes on 2 cores
    q = np.concatenate([x[:5], np.random.default_rng(6).standard_normal((20, 64))])
    exact = [[m.row for m in ms] for ms in g.search(q, k=10)]
    hnsw = g.search(q, k=10, index="faiss-hnsw")
    found = [len({m.row for m in h} & set(e)) / 10 for h, e in zip(hnsw, exact, strict=True)]
    # Approximate by design, and i.i.d. Gaussian vectors in 64-d (no clusters) are HNSW's
    # hardest case; stored vectors themselves are always found first.
    assert np.mean(found) > 0.8
    assert [ms[0].row for ms in hnsw[:5]] == [0, 1, 2, 3, 4]


def test_faiss_missing_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)
    g, _ = _gallery(3)
    from edgemed.errors import MissingDependencyError

    with pytest.raises(MissingDependencyError) as e:
        g.search(np.ones(16), index="faiss")
    assert "edgemed[faiss]" in str(e.value)


def test_benchmark_table_renders_the_numbers():
    from benchmarks import readme_tables as tables

    data = {
        "environment": {
            "date": "2026-12-07 04:00 UTC",
            "machine": {"cpu": "Test CPU", "cores": 2},
            "command": "python benchmarks/gallery_search.py",
        },
        "k": 10,
        "sizes": [
            {
                "entries": 100000,
                "dims": 64,
                "backends": {
                    "exact": {"build_s": 0.05, "batch100_ms": 40.0, "recall_at_10_vs_exact": 1.0,
                              "query": {"p50_ms": 3.25}},
                    "faiss-hnsw": {"build_s": 12.5, "batch100_ms": 4.0,
                                   "recall_at_10_vs_exact": 0.912, "query": {"p50_ms": 0.12}},
                },
            }
        ],
    }  # fmt: skip
    text = tables.render({"gallery_search": data})
    assert "| 100,000 | exact | 0.05 s | 3.25 ms | 40.0 ms | 1.000 |" in text
    assert "| 100,000 | faiss-hnsw | 12.50 s | 0.12 ms | 4.0 ms | 0.912 |" in text
    assert "python benchmarks/gallery_search.py" in text
