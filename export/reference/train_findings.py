"""Train the findings classifier and the similar-case embedding on findings phantoms.

Usage (from the repository root, the ``export`` extra installed)::

    python -m edgemed.export.reference.train_findings all --cache /tmp/findings-cache

Stages (each seeded; ``all`` runs them in order, one at a time):

``data``
    Findings phantoms (:mod:`.findings`, 256 px whole-body slices) from two separate
    random streams, training and held-out, put through the runtime's own preprocessing
    (:func:`edgemed.preprocess.preprocess` with :data:`PREPROCESS`) and cached as uint8,
    with where each present finding lies (:data:`CELL` px cells).
``classifier``
    :func:`.findings_net.classifier`, multi-label (one sigmoid per finding), binary
    cross-entropy on the slice's logits and on every cell's; the decision thresholds
    shipped in the bundle are chosen on the held-out stream (the largest Youden index per
    finding). Writes
    ``findings_classifier.pt`` + ``.json``.
``embedding``
    :func:`.findings_net.embedder`, its trunk started from the classifier's, trained
    with the supervised contrastive loss (Khosla et al. 2020) on classes "finding type x
    anatomical level", so that slices with the same findings at the same level lie
    close. Writes ``findings_embedding.pt`` + ``.json``.

The bundles are built from the weights by :mod:`.build_findings_demo`. Demonstration
models, never clinical ones.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgemed.export.reference.findings import FINDINGS, LEVELS, make_findings_phantom
from edgemed.export.reference.findings_net import classifier, embedder
from edgemed.preprocess import PreprocessSpec, preprocess

__all__ = [
    "CLASSIFIER_WEIGHTS",
    "EMBEDDING_WEIGHTS",
    "PREPROCESS",
    "auc",
    "main",
    "phantom_stream",
    "retrieval_metrics",
]

HERE = Path(__file__).resolve().parent
CLASSIFIER_WEIGHTS = HERE / "findings_classifier.pt"
EMBEDDING_WEIGHTS = HERE / "findings_embedding.pt"

#: Both bundles' preprocessing: a lung window (nodules, effusion against lung) and a
#: narrow soft-tissue window (liver lesions differ from the parenchyma by 25-70 HU).
PREPROCESS: dict[str, Any] = {
    "size": [256, 256],
    "windows": [{"center": -600, "width": 1500}, {"center": 60, "width": 300}],
    "scale": "unit",
    "resize": "letterbox",
    "pad_value": 0.0,
    "dtype": "float32",
}

#: The classifier's cells (px): its trunk's output stride (see :mod:`.findings_net`).
CELL = 32

#: Seeds of the phantom streams (training, held-out for thresholds; the bundle report
#: uses a third, :data:`build_findings_demo.TEST_SEED`).
TRAIN_SEED, HELDOUT_SEED = 31001, 31002


def _log(msg: str) -> None:
    print(msg, flush=True)


def phantom_stream(seed: int, n: int, size: int = 256) -> list[Any]:
    """``n`` findings phantoms from one seeded stream (each from its own child seed, so
    phantom ``i`` does not depend on how many come before it)."""
    seqs = np.random.SeedSequence(seed).spawn(n)
    return [make_findings_phantom(np.random.default_rng(s), size) for s in seqs]


def _encode(phantoms: list[Any], spec: PreprocessSpec) -> dict[str, np.ndarray]:
    xs = np.empty((len(phantoms), spec.num_channels, spec.height, spec.width), np.uint8)
    for i, ph in enumerate(phantoms):
        x, _ = preprocess([ph.hu], spec)
        xs[i] = np.clip(np.rint(x[0] * 255), 0, 255).astype(np.uint8)
    types = sorted({ph.finding_type() for ph in phantoms})
    return {
        "x": xs,
        "cells": np.stack([ph.cells(CELL) for ph in phantoms]),
        "y": np.stack([ph.target() for ph in phantoms]),
        "level": np.array([LEVELS.index(ph.level) for ph in phantoms], np.int64),
        "type": np.array([ph.finding_type() for ph in phantoms]),
        "types": np.array(types),
    }


def _data(args: argparse.Namespace) -> None:
    spec = PreprocessSpec.from_dict(PREPROCESS)
    args.cache.mkdir(parents=True, exist_ok=True)
    for name, seed, n in (("train", TRAIN_SEED, args.train), ("heldout", HELDOUT_SEED, args.val)):
        t0 = time.perf_counter()
        data = _encode(phantom_stream(seed, n), spec)
        np.savez(args.cache / f"{name}.npz", **data)
        counts = {k: int(v) for k, v in zip(FINDINGS, data["y"].sum(0), strict=True)}
        _log(f"{name}: {n} phantoms in {time.perf_counter() - t0:.0f} s; positives {counts}")


def _load(cache: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(cache / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


def _batch(
    data: dict[str, np.ndarray], idx: np.ndarray, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 inputs -> float, and their cell targets, flipped alike (the phantom views
    flip and rotate already)."""
    b = data["x"][idx].astype(np.float32) / 255.0
    c = data["cells"][idx].astype(np.float32)
    if rng.random() < 0.5:
        b, c = b[:, :, :, ::-1], c[:, :, :, ::-1]
    if rng.random() < 0.2:
        b, c = b[:, :, ::-1, :], c[:, :, ::-1, :]
    return torch.from_numpy(np.ascontiguousarray(b)), torch.from_numpy(np.ascontiguousarray(c))


def _predict(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), 32):
            out.append(model(torch.from_numpy(x[i : i + 32].astype(np.float32) / 255.0)).numpy())
    model.train()
    return np.concatenate(out)


def auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN with one class."""
    pos, neg = scores[truth > 0.5], scores[truth <= 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="stable")
    ranks = np.empty(len(order))
    allv = np.concatenate([pos, neg])[order]
    # Average ranks over ties.
    i = 0
    while i < len(allv):
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    r_pos = ranks[: len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def classification_metrics(
    probs: np.ndarray, truth: np.ndarray, thresholds: list[float]
) -> dict[str, Any]:
    """Per finding: AUC, and sensitivity/specificity at its threshold."""
    out: dict[str, Any] = {}
    for k, name in enumerate(FINDINGS):
        p, t = probs[:, k], truth[:, k] > 0.5
        dec = p >= thresholds[k]
        out[name] = {
            "auc": round(auc(p, t.astype(np.float32)), 4),
            "threshold": round(float(thresholds[k]), 4),
            "sensitivity": round(float(dec[t].mean()) if t.any() else float("nan"), 4),
            "specificity": round(float((~dec[~t]).mean()) if (~t).any() else float("nan"), 4),
            "positives": int(t.sum()),
            "negatives": int((~t).sum()),
        }
    return out


def _youden(p: np.ndarray, t: np.ndarray) -> float:
    best, thr = -1.0, 0.5
    for c in np.unique(np.round(p, 4)):
        dec = p >= c
        j = dec[t].mean() + (~dec[~t]).mean() - 1 if t.any() and (~t).any() else 0.0
        if j > best:
            best, thr = float(j), float(c)
    return thr


def retrieval_metrics(emb: np.ndarray, types: np.ndarray, k: int = 5) -> dict[str, float]:
    """Leave-one-out retrieval among ``emb`` (L2-normalised rows): precision@1, recall@k
    (share of queries with at least one item of the same type in the k nearest) and
    mean average precision over all items of the same type (queries with none skipped)."""
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")
    same = types[order] == types[:, None]
    same = same[:, :-1]  # the query itself sorts last (-inf)
    has = same.any(1)
    hits = np.cumsum(same, 1)
    ranks = np.arange(1, same.shape[1] + 1)
    ap = (same * hits / ranks).sum(1)[has] / same.sum(1)[has]
    return {
        "precision_at_1": round(float(same[:, 0].mean()), 4),
        f"recall_at_{k}": round(float(same[:, :k].any(1).mean()), 4),
        "mean_average_precision": round(float(ap.mean()), 4),
        "queries": int(len(emb)),
    }


def _record(args: argparse.Namespace, model: torch.nn.Module, extra: dict[str, Any]) -> dict:
    return {
        "command": "python -m edgemed.export.reference.train_findings "
        + " ".join(sys.argv[1:] if args.argv is None else args.argv),
        "seed": args.seed,
        "data": {
            "train_seed": TRAIN_SEED,
            "heldout_seed": HELDOUT_SEED,
            "train": args.train,
            "heldout": args.val,
            "size": 256,
            "cell_px": CELL,
        },  # fmt: skip
        "parameters": int(sum(p.numel() for p in model.parameters())),
        **extra,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {args.threads} CPU threads",
        "date": _dt.date.today().isoformat(),
    }


def _save(model: torch.nn.Module, path: Path, record: dict[str, Any]) -> None:
    torch.save(model.state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    _log(f"weights written: {path} ({path.stat().st_size / 1e3:.0f} kB)")


def _train_classifier(args: argparse.Namespace) -> None:
    """Training in cycles, each a one-cycle schedule of its steps (``--cycles``); cycle
    ``c`` seeds its own batch stream, so a run resumed at a cycle (``--resume-cycle``,
    from the weights the earlier cycles wrote) is the same run."""
    tr, ho = _load(args.cache, "train"), _load(args.cache, "heldout")
    model = classifier(len(PREPROCESS["windows"]), len(FINDINGS))
    earlier_s = 0
    if args.resume_cycle:
        state = torch.load(args.classifier_weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        record = json.loads(args.classifier_weights.with_suffix(".json").read_text())
        earlier_s = int(record.get("training_seconds", 0))
    prevalence = tr["y"].mean(0)
    # Rare findings weigh more: positives count as much as negatives per finding, per
    # slice (at most 8x) and per cell (a finding fills a few of a slice's 64: at most 30x).
    pos_weight = torch.tensor(np.clip((1 - prevalence) / np.maximum(prevalence, 1e-3), 1, 8))
    in_cells = tr["cells"].mean((0, 2, 3))
    cell_weight = torch.tensor(np.clip((1 - in_cells) / np.maximum(in_cells, 1e-4), 1, 30))
    cell_weight = cell_weight.float()[:, None, None]
    t0, ema = time.perf_counter(), None
    for c, steps in enumerate(args.cycles):
        if c < args.resume_cycle:
            continue
        torch.manual_seed(args.seed + c)
        rng = np.random.default_rng(args.seed + 1000 * c)
        lr = args.lr if c == 0 else args.lr * 2 / 3
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=steps, pct_start=0.15
        )
        for step in range(1, steps + 1):
            idx = rng.integers(0, len(tr["x"]), args.batch)
            x, cells = _batch(tr, idx, rng)
            cell_logits = model.cells(x)
            # The slice's logit (its largest cell's, as the exported model computes it)
            # against the slice's labels, plus every cell against where the findings lie.
            loss = F.binary_cross_entropy_with_logits(
                cell_logits.amax(dim=(2, 3)),
                torch.from_numpy(tr["y"][idx]),
                pos_weight=pos_weight.float(),
            ) + F.binary_cross_entropy_with_logits(cell_logits, cells, pos_weight=cell_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
            if step % 25 == 0 or step == steps:
                el = time.perf_counter() - t0
                _log(f"cycle {c} step {step}/{steps} loss {ema:.4f} {el:.0f} s")
    train_s = time.perf_counter() - t0
    probs = 1 / (1 + np.exp(-_predict(model, ho["x"])))
    thresholds = [_youden(probs[:, k], ho["y"][:, k] > 0.5) for k in range(len(FINDINGS))]
    metrics = classification_metrics(probs, ho["y"], thresholds)
    _log(json.dumps(metrics, indent=1))
    record = _record(
        args,
        model,
        {
            "model": "edgemed.export.reference.findings_net:classifier",
            "cycles": list(args.cycles),
            "batch": args.batch,
            "optimizer": f"AdamW, one OneCycle schedule per cycle (max lr {args.lr}, later "
            f"cycles {args.lr * 2 / 3:.2g}), weight decay 1e-4",
            "loss": "binary cross-entropy per finding on the slice's logit (its largest "
            "cell's), positives weighted by (1-p)/p (<= 8), plus binary cross-entropy per "
            f"finding and {CELL} px cell against the cells its pixels lie in (<= 30)",
            "labels": list(FINDINGS),
            "thresholds": [round(t, 4) for t in thresholds],
            "thresholds_chosen_by": "largest Youden index per finding on the held-out stream",
            "heldout": metrics,
            "training_seconds": round(train_s) + earlier_s,
        },
    )
    _save(model, args.classifier_weights, record)


def _supcon(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., NeurIPS 2020, the "L_out" form)."""
    z = F.normalize(z, dim=1)
    sim = z @ z.T / temperature
    n = len(z)
    eye = torch.eye(n, dtype=torch.bool)
    sim = sim.masked_fill(eye, -1e9)
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    count = pos.sum(1)
    keep = count > 0
    mean_pos = (log_prob * pos).sum(1)[keep] / count[keep]
    return -mean_pos.mean()


def _pooled(model: torch.nn.Module, x: np.ndarray) -> torch.Tensor:
    """The trunk's pooled features of every input (uint8), no gradients."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), 32):
            out.append(model.pooled(torch.from_numpy(x[i : i + 32].astype(np.float32) / 255.0)))
    return torch.cat(out)


def _train_embedding(args: argparse.Namespace) -> None:
    """The embedding model: the trained classifier's trunk, frozen (it already sees the
    findings and the anatomy), under a projection head trained with the supervised
    contrastive loss on "finding type x anatomical level". The trunk's pooled features
    are computed once (plain and left-right flipped), so the metric learning itself
    takes seconds."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed + 1)
    tr, ho = _load(args.cache, "train"), _load(args.cache, "heldout")
    model = embedder(len(PREPROCESS["windows"]), args.dim)
    state = torch.load(args.classifier_weights, map_location="cpu", weights_only=True)
    model.trunk.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("trunk.")})
    for p in model.trunk.parameters():
        p.requires_grad_(False)
    t0 = time.perf_counter()
    feats = torch.cat([_pooled(model, tr["x"]), _pooled(model, tr["x"][:, :, :, ::-1].copy())])
    keys = np.array([f"{t}|{lv}" for t, lv in zip(tr["type"], tr["level"], strict=True)] * 2)
    classes, cls = np.unique(keys, return_inverse=True)
    _log(f"trunk features of {len(feats)} inputs in {time.perf_counter() - t0:.0f} s")
    members = [np.nonzero(cls == c)[0] for c in range(len(classes))]
    usable = [c for c, m in enumerate(members) if len(m) >= 2]
    head = model.head
    head.train()
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.embed_steps, pct_start=0.1
    )
    per, batch = 4, 128
    ema = None
    for step in range(1, args.embed_steps + 1):
        pick = rng.choice(usable, size=batch // per, replace=len(usable) < batch // per)
        idx = np.concatenate(
            [rng.choice(members[c], per, replace=len(members[c]) < per) for c in pick]
        )
        loss = _supcon(head(feats[idx]), torch.from_numpy(cls[idx]), 0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 250 == 0 or step == args.embed_steps:
            _log(f"step {step}/{args.embed_steps} loss {ema:.4f} {time.perf_counter() - t0:.0f} s")
    per = f"{batch} ({batch // per} classes x {per})"
    train_s = time.perf_counter() - t0
    emb = _predict(model, ho["x"])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    metrics = {
        "same_finding_type": retrieval_metrics(emb, ho["type"]),
        "same_finding_type_and_level": retrieval_metrics(
            emb, np.array([f"{t}|{lv}" for t, lv in zip(ho["type"], ho["level"], strict=True)])
        ),
    }
    _log(json.dumps(metrics, indent=1))
    record = _record(
        args,
        model,
        {
            "model": "edgemed.export.reference.findings_net:embedder",
            "trunk": "the trained classifier's (findings_classifier.pt), frozen",
            "steps": args.embed_steps,
            "batch": per,
            "classes": int(len(classes)),
            "optimizer": f"AdamW, OneCycle max lr {args.lr}, weight decay 1e-4",
            "loss": "supervised contrastive (Khosla et al. 2020), temperature 0.1, on finding "
            "type x anatomical level; the projection head only, on the frozen trunk's pooled "
            "features (inputs plain and flipped left-right)",
            "dimensions": args.dim,
            "heldout": metrics,
            "training_seconds": round(train_s),
        },
    )
    _save(model, args.embedding_weights, record)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", choices=("data", "classifier", "embedding", "all"))
    ap.add_argument("--cache", type=Path, required=True, help="folder for the encoded phantoms")
    ap.add_argument("--train", type=int, default=1600, help="training phantoms")
    ap.add_argument("--val", type=int, default=300, help="held-out phantoms")
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--cycles", default="2000", help="classifier steps per one-cycle schedule")
    ap.add_argument("--resume-cycle", type=int, default=0, help="continue at this cycle")
    ap.add_argument("--embed-steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dim", type=int, default=64, help="embedding dimensions")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--classifier-weights", type=Path, default=CLASSIFIER_WEIGHTS)
    ap.add_argument("--embedding-weights", type=Path, default=EMBEDDING_WEIGHTS)
    args = ap.parse_args(argv)
    args.argv = argv
    args.cycles = [int(c) for c in str(args.cycles).split(",")]
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()
    if args.stage in ("data", "all"):
        _data(args)
    if args.stage in ("classifier", "all"):
        _train_classifier(args)
    if args.stage in ("embedding", "all"):
        _train_embedding(args)
    _log(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
