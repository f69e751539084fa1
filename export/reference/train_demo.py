"""Train the demo tissue-segmentation model on CT phantoms, then build its bundle.

Usage (from the repository root)::

    python -m edgemed.export.reference.train_demo --out edgemed/data/demo

Every training input goes through the runtime's own preprocessing
(:func:`edgemed.preprocess.preprocess` with the bundle's :class:`PreprocessSpec`), so
the model learns from exactly what the runtime will feed it. The labels are rendered
from the phantom's geometry directly on the letterboxed model grid (not resampled from
a label image), so they stay sharp when a small slice is enlarged.

Training writes the state dict (``demo_unet.pt``) and a record of the run
(``demo_unet.json``) beside this file; with ``--out`` it then builds the bundle through
the export stage (:mod:`.build_demo`: ONNX, FP16, INT8, accuracy gates).

The run is seeded and uses deterministic algorithms; on a 2-core CPU it takes about
eleven minutes (see ``export/reference/README.md``). The result is a demonstration model,
never a clinical one.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgemed.export.reference.build_demo import PREPROCESS, WEIGHTS, build_demo
from edgemed.export.reference.phantoms import LABELS, make_phantom, render_labels
from edgemed.export.reference.unet import UNet2D
from edgemed.preprocess import PreprocessSpec, preprocess

__all__ = ["main", "training_sample"]

_NUM_CLASSES = len(LABELS)


def _log(msg: str) -> None:
    print(msg, flush=True)


def _sample_geometry(
    rng: np.random.Generator, spec: PreprocessSpec
) -> tuple[tuple[int, int], float]:
    """A native slice shape and spacing such that the model grid spacing spans about
    0.28-2 mm/px: whole bodies at 512, crops of all sizes, and many small zoomed slices
    that letterboxing enlarges (a 128 px crop at 0.66 mm becomes 0.33 mm/px)."""
    if rng.random() < 0.35:
        s_in = rng.uniform(0.28, 0.5)
    else:
        s_in = math.exp(rng.uniform(math.log(0.28), math.log(2.0)))
    s_native = rng.uniform(0.45, 0.95)
    side = spec.height
    long = int(np.clip(round(side * s_in / s_native), 64, 512))
    if rng.random() < 0.6:
        shape = (long, long)
    else:
        short = max(48, int(round(long * rng.uniform(0.55, 1.0))))
        shape = (short, long) if rng.random() < 0.5 else (long, short)
    # Letterboxing scales the long side to the model size: this keeps s_in exact.
    return shape, s_in * side / long


def training_sample(
    rng: np.random.Generator, spec: PreprocessSpec
) -> tuple[np.ndarray, np.ndarray]:
    """One ``(C, H, W)`` model input (via the runtime's preprocessing) and its labels."""
    shape, spacing = _sample_geometry(rng, spec)
    ph = make_phantom(rng, shape, spacing)
    x, (p,) = preprocess([ph.hu], spec)
    h, w = shape
    box_view = replace(ph.view, spacing=(spacing * h / p.height, spacing * w / p.width))
    y = np.zeros((spec.height, spec.width), np.uint8)  # padding is air: background
    y[p.top : p.top + p.height, p.left : p.left + p.width] = render_labels(
        ph.scene, box_view, (p.height, p.width)
    )
    return x[0], y


def _soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over the classes present in the batch (thin bone and small
    lung regions count as much as the large fat and soft-tissue areas)."""
    prob = logits.softmax(1)
    onehot = F.one_hot(target, _NUM_CLASSES).permute(0, 3, 1, 2).to(prob.dtype)
    inter = (prob * onehot).sum((0, 2, 3))
    denom = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    present = onehot.sum((0, 2, 3)) > 0
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return 1.0 - dice[present].mean()


def _crop_batch(
    rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, batch: int, crop: int
) -> tuple[torch.Tensor, torch.Tensor]:
    idx = rng.integers(0, len(xs), batch)
    side = xs.shape[-1]
    xb = np.empty((batch, xs.shape[1], crop, crop), np.float32)
    yb = np.empty((batch, crop, crop), np.int64)
    for k, i in enumerate(idx):
        t, left = rng.integers(0, side - crop + 1, 2)
        xb[k] = xs[i, :, t : t + crop, left : left + crop]
        yb[k] = ys[i, t : t + crop, left : left + crop]
    return torch.from_numpy(xb), torch.from_numpy(yb)


def _evaluate(model: torch.nn.Module, xs: np.ndarray, ys: np.ndarray) -> dict[str, Any]:
    """Pixel accuracy and per-class Dice over whole held-out inputs."""
    model.eval()
    conf = np.zeros((_NUM_CLASSES, _NUM_CLASSES), np.int64)
    with torch.no_grad():
        for i in range(0, len(xs), 8):
            pred = model(torch.from_numpy(xs[i : i + 8])).argmax(1).numpy()
            conf += np.bincount(
                ys[i : i + 8].ravel().astype(np.int64) * _NUM_CLASSES + pred.ravel(),
                minlength=_NUM_CLASSES**2,
            ).reshape(_NUM_CLASSES, _NUM_CLASSES)
    model.train()
    tp = np.diag(conf)
    dice = 2 * tp / np.maximum(conf.sum(0) + conf.sum(1), 1)
    return {
        "pixel_accuracy": round(float(tp.sum() / conf.sum()), 4),
        "dice": {name: round(float(d), 4) for name, d in zip(LABELS, dice, strict=True)},
        "mean_dice": round(float(dice.mean()), 4),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out", type=Path, default=None, help="bundle directory to build (none: weights only)"
    )
    ap.add_argument("--weights", type=Path, default=WEIGHTS, help="state dict to write")
    ap.add_argument("--seed", type=int, default=20241)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=128, help="training crop side (model px)")
    ap.add_argument("--pool", type=int, default=400, help="phantoms held for sampling crops")
    ap.add_argument("--refresh", type=int, default=1, help="new phantoms per step")
    ap.add_argument("--val", type=int, default=48, help="held-out phantoms")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    spec = PreprocessSpec.from_dict(PREPROCESS)
    # Separate streams: training data, validation data, crop positions.
    train_rng, val_rng, crop_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(args.seed).spawn(3)
    )

    _log(f"generating {args.pool} training and {args.val} validation phantoms ...")
    pool = [training_sample(train_rng, spec) for _ in range(args.pool)]
    xs = np.stack([p[0] for p in pool])
    ys = np.stack([p[1] for p in pool])
    val = [training_sample(val_rng, spec) for _ in range(args.val)]
    vx = np.stack([v[0] for v in val])
    vy = np.stack([v[1] for v in val])
    freq = np.bincount(ys.ravel(), minlength=_NUM_CLASSES) / ys.size
    _log(f"  done in {time.perf_counter() - t_start:.0f} s; class fractions {np.round(freq, 3)}")

    model = UNet2D(in_channels=spec.num_channels, num_classes=_NUM_CLASSES)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1
    )
    model.train()
    t_train = time.perf_counter()
    ema = None
    next_slot = 0
    for step in range(1, args.steps + 1):
        for _ in range(args.refresh):  # a steady trickle of new phantoms into the pool
            xs[next_slot], ys[next_slot] = training_sample(train_rng, spec)
            next_slot = (next_slot + 1) % len(xs)
        xb, yb = _crop_batch(crop_rng, xs, ys, args.batch, args.crop)
        logits = model(xb)
        loss = F.cross_entropy(logits, yb) + _soft_dice_loss(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        val = loss.item()
        ema = val if ema is None else 0.97 * ema + 0.03 * val
        if step % 50 == 0 or step == args.steps:
            el = time.perf_counter() - t_train
            _log(
                f"step {step:5d}/{args.steps}  loss {ema:.4f}  lr {sched.get_last_lr()[0]:.2e}"
                f"  {el:.0f} s (eta {el / step * (args.steps - step):.0f} s)"
            )
        if step % 500 == 0 and step < args.steps:
            _log(f"  validation: {_evaluate(model, vx, vy)}")
    train_s = time.perf_counter() - t_train
    metrics = _evaluate(model, vx, vy)
    _log(f"validation on {args.val} held-out phantoms: {metrics}")

    record = {
        "command": "python -m edgemed.export.reference.train_demo "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "seed": args.seed,
        "steps": args.steps,
        "batch": args.batch,
        "crop": args.crop,
        "phantoms_seen": args.pool + args.steps * args.refresh,
        "optimizer": f"AdamW, OneCycle max lr {args.lr}, weight decay 1e-4",
        "loss": "cross-entropy + soft Dice",
        "architecture": "UNet2D(base=16, levels=3), BatchNorm+ReLU, transposed-conv upsampling",
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "final_training_loss": round(ema or float("nan"), 4),
        "validation": {"phantoms": args.val, **metrics},
        "training_seconds": round(train_s),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {args.threads} CPU threads",
        "date": _dt.date.today().isoformat(),
    }
    # The state dict is the export stage's input (and small: ~1.9 MB); the record of how
    # it was made travels into the bundle's provenance.
    args.weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.weights)
    args.weights.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    _log(f"weights written: {args.weights} ({args.weights.stat().st_size / 1e6:.2f} MB)")
    if args.out is not None:
        build_demo(args.out, args.weights, overwrite=True, training=record)
    _log(f"done in {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
