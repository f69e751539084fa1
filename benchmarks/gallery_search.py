"""Gallery search: exact NumPy against faiss-cpu (flat and HNSW), build and query time.

For 10^4, 10^5 and 10^6 random unit vectors of 64 dimensions (the similar-case demo
model's size), times per backend:

* build: :meth:`edgemed.gallery.Gallery.add` (normalise, store) for NumPy; that plus the
  faiss index for faiss (``IndexFlatIP``: exact; ``IndexHNSWFlat``, M 32, efConstruction
  80, efSearch 128: approximate);
* query: one query (k = 10), p50 over repeated calls in alternating blocks, and a batch
  of 100 queries;
* recall@10 of HNSW against the exact answer (flat faiss must agree exactly).

Usage::

    python benchmarks/gallery_search.py [--sizes 10000,100000,1000000] [--hnsw-max 100000]

HNSW builds are the slow part on a small CPU (minutes at 10^6): ``--hnsw-max`` skips
them above that size. Writes ``benchmarks/results/gallery_search.json`` and ``.md``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import arguments, environment, stats, timed_rounds, write_results  # noqa: E402
from edgemed.gallery import Gallery  # noqa: E402

DIMS = 64
K = 10


class _Ref:
    name, version, manifest_sha256 = "benchmark", "0", "0" * 64


def _one(n: int, rng: np.random.Generator, args) -> dict:
    x = rng.standard_normal((n, DIMS)).astype(np.float32)
    q = rng.standard_normal((100, DIMS)).astype(np.float32)
    ids = [str(i) for i in range(n)]
    out: dict = {"entries": n, "dims": DIMS, "backends": {}}
    t0 = time.perf_counter()
    g = Gallery.create(_Ref(), DIMS)  # type: ignore[arg-type]
    g.add(x, ids)
    base_build = time.perf_counter() - t0
    exact = [[m.row for m in ms] for ms in g.search(q, K)]
    kinds = ["exact"]
    try:
        import faiss  # noqa: F401

        kinds.append("faiss")
        if n <= args.hnsw_max:
            kinds.append("faiss-hnsw")
    except ImportError:
        print("faiss-cpu not installed: NumPy only", file=sys.stderr)
    cases = {}
    for kind in kinds:
        t0 = time.perf_counter()
        if kind != "exact":
            g._index.pop(kind, None)
            g._faiss(kind)  # build the index
        build = base_build + (time.perf_counter() - t0)
        t0 = time.perf_counter()
        got = g.search(q, K, index=kind)
        batch_ms = (time.perf_counter() - t0) * 1e3
        rows = [[m.row for m in ms] for ms in got]
        recall = float(
            np.mean([len(set(a) & set(b)) / K for a, b in zip(rows, exact, strict=True)])
        )
        out["backends"][kind] = {
            "build_s": round(build, 4),
            "batch100_ms": round(batch_ms, 3),
            "recall_at_10_vs_exact": round(recall, 4),
        }
        cases[kind] = lambda kind=kind: g.search(q[0], K, index=kind)
    iters = max(20, args.iterations if n < 1_000_000 else args.iterations // 4)
    times = timed_rounds(cases, warmup=args.warmup, iterations=iters, budget_s=args.budget_s)
    for kind, samples in times.items():
        out["backends"][kind]["query"] = stats(samples)
    ref = out["backends"]["exact"]["query"]["p50_ms"]
    for kind in kinds:
        q50 = out["backends"][kind]["query"]["p50_ms"]
        out["backends"][kind]["query_speedup_vs_exact"] = round(ref / q50, 3) if q50 else None
    return out


def _markdown(data: dict) -> str:
    """The table README shows (one renderer: ``benchmarks/readme_tables.py``'s)."""
    from benchmarks.readme_tables import gallery_table

    return "\n".join(gallery_table(data))


def main() -> int:
    ap = arguments(__doc__, iterations=100, warmup=3, budget_s=20.0, per="gallery size")
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--hnsw-max", type=int, default=100_000, help="largest HNSW build")
    ap.add_argument("--seed", type=int, default=18)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    sizes = [int(s) for s in args.sizes.split(",")]
    data = {
        "environment": environment("gallery_search.py", ["faiss"]),
        "k": K,
        "sizes": [],
    }
    for n in sizes:
        print(f"{n} entries ...", flush=True)
        data["sizes"].append(_one(n, rng, args))
        print(_markdown({**data, "sizes": data["sizes"][-1:]}), flush=True)
    path = write_results(args.out, "gallery_search", data, _markdown(data))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
