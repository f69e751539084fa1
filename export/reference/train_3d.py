"""Train the 3D demo tissue-segmentation model on CT phantom volumes.

Usage (from the repository root)::

    python -m edgemed.export.reference.train_3d

Every training volume goes through the runtime's own preprocessing
(:func:`edgemed.volume.prepare` with the bundle's preprocess and volume blocks:
resampled to the model's voxel size, then one channel per intensity window), so the
model learns from exactly what a device feeds it. The labels are rendered from the
phantom's geometry directly on the model grid (:meth:`Grid.resampled
<edgemed.export.reference.phantoms3d.Grid.resampled>`: where the resampled voxels sit),
not resampled from a label volume.

Training crops are windows of ``32 x 48 x 48`` voxels at 3 x 2 x 2 mm (the ROI is
``32 x 64 x 64``; the network is fully convolutional); some are cut from short or narrow
stretches of a volume with the rest padded as the sliding window pads (``cval`` 0), so a
series of a few slices still gets sensible labels. Loss: class-weighted cross-entropy +
soft Dice. It writes the state dict (``demo_unet3d.pt``) and a record of the run
(``demo_unet3d.json``) beside this file; :mod:`.build_demo3d` exports the bundle.

The run is seeded and uses deterministic algorithms, with two CPU threads. The result is
a demonstration model, never a clinical one.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

# On a shared machine, OpenMP threads that spin at every barrier while their partner is
# descheduled cost 3x the wall time (measured here at a load of 12 on 2 cores); passive
# waiting keeps two threads as fast as one at worst. Read when torch starts OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from edgemed.export.reference.build_demo3d import PREPROCESS3D, VOLUME3D, WEIGHTS3D
from edgemed.export.reference.phantoms3d import LABELS, SPANS, make_volume, render_labels
from edgemed.export.reference.unet3d import UNet3D
from edgemed.preprocess import PreprocessSpec
from edgemed.volume import VolumeSpec, prepare

__all__ = ["main", "training_volume"]

_NUM_CLASSES = len(LABELS)
_TRUNK = SPANS["trunk"]


def _log(msg: str) -> None:
    print(msg, flush=True)


def _specs() -> tuple[PreprocessSpec, VolumeSpec]:
    spec = PreprocessSpec.from_dict(PREPROCESS3D)
    return spec, VolumeSpec.from_dict(VOLUME3D, spec.size)


def training_volume(
    rng: np.random.Generator, spec: PreprocessSpec, vol: VolumeSpec
) -> tuple[np.ndarray, np.ndarray]:
    """One phantom volume in model space ``(C, Z, Y, X)`` (via :func:`prepare`) and its
    labels ``(Z, Y, X)`` on the same grid.

    A stretch of the trunk 12-26 cm long, at slice spacings from 1.25 to 5 mm and
    384-512 matrices (about 0.6-1.3 mm pixels), so the model sees the resampling of
    every common reconstruction.
    """
    dz = float(rng.choice([1.25, 1.5, 2.0, 2.5, 3.0, 5.0], p=[0.1, 0.15, 0.2, 0.25, 0.2, 0.1]))
    length = min(rng.uniform(120, 260), 110 * dz)  # at most ~110 slices: bounded cost
    z0 = rng.uniform(_TRUNK[0] - 20, _TRUNK[1] - length + 20)
    matrix = int(rng.choice([384, 448, 512], p=[0.4, 0.3, 0.3]))
    ph = make_volume(rng, (z0, z0 + length), matrix=matrix, slice_mm=dz)
    x = prepare(ph.to_image(), spec, vol)
    y = render_labels(ph.trunk, ph.grid.resampled(x.shape[1:]))
    return x, y


def _soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over the classes present in the batch."""
    prob = logits.softmax(1)
    onehot = F.one_hot(target, _NUM_CLASSES).permute(0, 4, 1, 2, 3).to(prob.dtype)
    dims = (0, 2, 3, 4)
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    present = onehot.sum(dims) > 0
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return 1.0 - dice[present].mean()


class _Volume:
    """A model-space training volume, its labels and where each label's voxels are."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y
        flat = y.ravel()
        self.where = [np.flatnonzero(flat == k) for k in range(_NUM_CLASSES)]


def _crop(
    rng: np.random.Generator, v: _Volume, roi: tuple[int, int, int], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """One ROI window of a volume, centred on a voxel of label ``k`` (present in it) and
    jittered. One in six keeps only a short or narrow stretch (a
    few slices, a small field of view) with the rest padded with 0 and labelled
    background, as the sliding window pads inputs smaller than the ROI. Half are
    mirrored left-right."""
    x, y = v.x, v.y
    xc = np.zeros((x.shape[0], *roi), np.float32)
    yc = np.zeros(roi, np.int64)
    keep = [min(n, r) for n, r in zip(y.shape, roi, strict=True)]
    if rng.random() < 1 / 6:
        keep[0] = min(keep[0], int(rng.integers(1, 13)))
        if rng.random() < 0.5:
            keep[1] = min(keep[1], int(rng.integers(3, 40)))
            keep[2] = min(keep[2], int(rng.integers(3, 40)))
    centre = np.unravel_index(v.where[k][int(rng.integers(0, len(v.where[k])))], y.shape)
    src = [
        int(np.clip(c - kk // 2 + rng.integers(-kk // 4, kk // 4 + 1), 0, n - kk))
        for c, n, kk in zip(centre, y.shape, keep, strict=True)
    ]
    dst = [(r - k) // 2 for r, k in zip(roi, keep, strict=True)]  # centred, like the padding
    s_sl = tuple(slice(a, a + k) for a, k in zip(src, keep, strict=True))
    d_sl = tuple(slice(a, a + k) for a, k in zip(dst, keep, strict=True))
    xc[(slice(None), *d_sl)] = x[(slice(None), *s_sl)]
    yc[d_sl] = y[s_sl]
    if rng.random() < 0.5:
        xc, yc = xc[..., ::-1], yc[..., ::-1]
    return xc, yc


def _batch(
    rng: np.random.Generator, pool: list[_Volume], n: int, roi
) -> tuple[torch.Tensor, torch.Tensor]:
    # Each crop's centre label is drawn uniformly over the labels, then a volume holding
    # it: the lungs (in the chest stretches only, ~1 % of voxels) are centred as often as
    # the background. Drawn per volume instead, the model called the lungs air.
    crops = []
    for _ in range(n):
        k = int(rng.integers(0, _NUM_CLASSES))
        having = [v for v in pool if len(v.where[k])] or pool
        v = having[int(rng.integers(0, len(having)))]
        if not len(v.where[k]):
            k = next(j for j in range(_NUM_CLASSES) if len(v.where[j]))
        crops.append(_crop(rng, v, roi, k))
    xb = np.stack([np.ascontiguousarray(c[0]) for c in crops])
    yb = np.stack([np.ascontiguousarray(c[1]) for c in crops])
    return torch.from_numpy(xb), torch.from_numpy(yb)


def _pad8(a: np.ndarray) -> np.ndarray:
    pads = [(0, 0)] * (a.ndim - 3) + [(0, -n % 8) for n in a.shape[-3:]]
    return np.pad(a, pads)


def _evaluate(model: torch.nn.Module, val: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Voxel accuracy and per-class Dice over whole held-out volumes (model grid; one
    forward pass per volume, padded to a multiple of 8)."""
    model.eval()
    conf = np.zeros((_NUM_CLASSES, _NUM_CLASSES), np.int64)
    with torch.no_grad():
        for x, y in val:
            logits = model(torch.from_numpy(_pad8(x)[None]))
            pred = logits[0].argmax(0).numpy()[: y.shape[0], : y.shape[1], : y.shape[2]]
            conf += np.bincount(
                y.ravel().astype(np.int64) * _NUM_CLASSES + pred.ravel(),
                minlength=_NUM_CLASSES**2,
            ).reshape(_NUM_CLASSES, _NUM_CLASSES)
    model.train()
    tp = np.diag(conf)
    dice = 2 * tp / np.maximum(conf.sum(0) + conf.sum(1), 1)
    return {
        "voxel_accuracy": round(float(tp.sum() / conf.sum()), 4),
        "dice": {name: round(float(d), 4) for name, d in zip(LABELS, dice, strict=True)},
        "mean_dice": round(float(dice.mean()), 4),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=str(WEIGHTS3D), help="state dict to write")
    ap.add_argument("--seed", type=int, default=20263)
    ap.add_argument("--steps", type=int, default=1100)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument(
        "--crop", default="32x48x48", help="training window DxHxW (the ROI is 32x64x64)"
    )
    ap.add_argument("--pool", type=int, default=16, help="volumes held for sampling crops")
    ap.add_argument("--refresh", type=int, default=25, help="steps between new volumes")
    ap.add_argument("--val", type=int, default=4, help="held-out volumes")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    t_start, cpu_start = time.perf_counter(), time.process_time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    spec, vol = _specs()
    roi = tuple(int(r) for r in args.crop.lower().split("x"))
    # Separate streams: training volumes, validation volumes, crop positions.
    train_rng, val_rng, crop_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(args.seed).spawn(3)
    )
    _log(f"generating {args.pool} training and {args.val} validation volumes ...")
    pool = [_Volume(*training_volume(train_rng, spec, vol)) for _ in range(args.pool)]
    val = [training_volume(val_rng, spec, vol) for _ in range(args.val)]
    t_data = time.perf_counter() - t_start
    freq = np.array([sum(len(p.where[k]) for p in pool) for k in range(_NUM_CLASSES)])
    _log(f"  done in {t_data:.0f} s; class fractions {np.round(freq / freq.sum(), 3)}")

    # Cross-entropy weighted by class fraction ** -1/4: lung and background differ by
    # ~0.1 in one channel, and unweighted, the rare lungs were called air.
    class_w = (freq.sum() / np.maximum(freq, 1)) ** 0.25
    class_w = torch.tensor(class_w / class_w.mean(), dtype=torch.float32)
    _log(f"  cross-entropy class weights {np.round(class_w.numpy(), 2)}")
    model = UNet3D(in_channels=spec.num_channels, num_classes=_NUM_CLASSES)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1
    )
    model.train()
    t_train = time.perf_counter()
    t_gen = 0.0
    ema = None
    slot, seen = 0, args.pool
    for step in range(1, args.steps + 1):
        if step % args.refresh == 0:  # a steady trickle of new volumes into the pool
            t0 = time.perf_counter()
            pool[slot] = _Volume(*training_volume(train_rng, spec, vol))
            slot, seen = (slot + 1) % len(pool), seen + 1
            t_gen += time.perf_counter() - t0
        xb, yb = _batch(crop_rng, pool, args.batch, roi)
        logits = model(xb)
        loss = F.cross_entropy(logits, yb, weight=class_w) + _soft_dice_loss(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        v = loss.item()
        ema = v if ema is None else 0.97 * ema + 0.03 * v
        if step % 25 == 0 or step == args.steps:
            el = time.perf_counter() - t_train
            _log(
                f"step {step:5d}/{args.steps}  loss {ema:.4f}  lr {sched.get_last_lr()[0]:.2e}"
                f"  {el:.0f} s (eta {el / step * (args.steps - step):.0f} s)"
            )
    train_s = time.perf_counter() - t_train
    metrics = _evaluate(model, val)
    _log(f"validation on {args.val} held-out volumes (model grid): {metrics}")
    total_s = time.perf_counter() - t_start
    _log(f"CPU time of this process: {time.process_time() - cpu_start:.0f} s")

    record = {
        "command": "python -m edgemed.export.reference.train_3d "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "seed": args.seed,
        "steps": args.steps,
        "batch": args.batch,
        "crop": list(roi),
        "roi": list(spec.size),
        "volumes_seen": seen,
        "preprocessing": "edgemed.volume.prepare (the runtime's own), "
        f"target spacing {VOLUME3D['spacing']} mm (x, y, z)",
        "optimizer": f"AdamW, OneCycle max lr {args.lr}, weight decay 1e-4",
        "loss": "cross-entropy weighted by class fraction ** -1/4 + soft Dice",
        "crop_centres": "a label drawn uniformly, then a voxel of it in a pool volume holding it",
        "architecture": "UNet3D(base=8, levels=3), BatchNorm+ReLU, transposed-conv upsampling",
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "final_training_loss": round(ema or float("nan"), 4),
        "validation": {"volumes": args.val, "grid": "model (2 x 2 x 3 mm)", **metrics},
        "seconds": {
            "total": round(total_s),
            "cpu_process": round(time.process_time() - cpu_start),
            "initial_data": round(t_data),
            "training_loop": round(train_s),
            "of_which_new_volumes": round(t_gen),
        },
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {args.threads} CPU threads (shared)",
        "date": _dt.date.today().isoformat(),
    }
    weights = Path(args.weights)
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights)
    weights.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    _log(f"weights written: {weights} ({weights.stat().st_size / 1e6:.2f} MB)")
    _log(f"done in {total_s:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
