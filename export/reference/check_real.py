"""Sanity checks of the demo model on a real CT slice and a whole-body phantom.

The real slice is pydicom's ``CT_small.dcm`` (128x128, 0.66 mm, a thoracic vertebra
with the aorta, both lung bases, back muscles and subcutaneous fat). It has no ground
truth, so the model is compared with a plain HU-threshold labelling
(:func:`hu_rule_labels`); the two are expected to differ where thresholds are wrong
(trabecular bone below 200 HU, partial-volume rims between lung and soft tissue).

Run standalone on a bundle::

    python -m edgemed.export.reference.check_real --bundle edgemed/data/demo --overlay /tmp/ct.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from edgemed.export.reference.phantoms import LABELS, make_phantom
from edgemed.preprocess import PreprocessSpec, preprocess

__all__ = [
    "HU_RULES",
    "check_ct_small",
    "check_phantom",
    "hu_rule_labels",
    "load_ct_small",
    "segment",
]

# Upper HU bound of each label for the plain threshold labelling (bone: the rest).
HU_RULES = {"background": -950.0, "lung": -400.0, "fat": -30.0, "soft_tissue": 200.0}
_COLORS = np.array(  # BGR: background none, lung blue, fat yellow, soft red, bone white
    [[0, 0, 0], [255, 150, 40], [0, 215, 255], [50, 50, 230], [255, 255, 255]], np.uint8
)


def hu_rule_labels(hu: np.ndarray, sigma_px: float = 1.0) -> np.ndarray:
    """Label each pixel by HU alone, after a light Gaussian smoothing against noise."""
    s = cv2.GaussianBlur(hu.astype(np.float32), (0, 0), sigma_px) if sigma_px > 0 else hu
    edges = np.array(list(HU_RULES.values()), np.float32)
    return np.digitize(s, edges).astype(np.uint8)


def load_ct_small() -> tuple[np.ndarray, tuple[float, float]]:
    """``CT_small.dcm`` in HU (float32) and its pixel spacing (mm)."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return hu, (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]))


def segment(sess: ort.InferenceSession, hu: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Labels for one HU slice at its own resolution: preprocess with the runtime's code,
    run, take the letterbox box out of the logits, resize them to the slice, argmax."""
    x, (p,) = preprocess([hu], spec)
    logits = sess.run(["logits"], {"image": x})[0][0]
    box = logits[:, p.top : p.top + p.height, p.left : p.left + p.width]
    h, w = p.source
    shrink = h < p.height or w < p.width
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    back = np.stack([cv2.resize(c, (w, h), interpolation=interp) for c in box])
    return back.argmax(0).astype(np.uint8)


def _agreement(pred: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Pixel agreement and per-class Dice of ``pred`` against ``ref``. A class absent
    from ``ref`` has no Dice (``None``); its stray predicted pixels are counted."""
    dice: dict[str, float | None] = {}
    stray: dict[str, int] = {}
    for i, name in enumerate(LABELS):
        n_ref = int((ref == i).sum())
        if n_ref == 0:
            dice[name] = None
            if (n := int((pred == i).sum())) > 0:
                stray[name] = n
            continue
        inter = int(((pred == i) & (ref == i)).sum())
        dice[name] = round(2 * inter / (n_ref + int((pred == i).sum())), 4)
    out: dict[str, Any] = {"pixel_agreement": round(float((pred == ref).mean()), 4), "dice": dice}
    if stray:
        out["pixels_of_absent_classes"] = stray
    return out


def _fractions(lab: np.ndarray) -> dict[str, float]:
    return {name: round(float((lab == i).mean()), 4) for i, name in enumerate(LABELS)}


def _overlay(hu: np.ndarray, panels: list[tuple[str, np.ndarray]], scale: int) -> np.ndarray:
    img = np.clip((hu + 160.0) / 400.0, 0, 1)  # soft-tissue window
    img = (img * 255).astype(np.uint8)
    h, w = hu.shape
    size = (w * scale, h * scale)
    gray = cv2.cvtColor(cv2.resize(img, size, interpolation=cv2.INTER_LINEAR), cv2.COLOR_GRAY2BGR)
    tiles = [gray.copy()]
    cv2.putText(tiles[0], "CT (W400/L40)", (5, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1)
    for title, lab in panels:
        lab = cv2.resize(lab, size, interpolation=cv2.INTER_NEAREST)
        tile = gray.copy()
        m = lab > 0
        tile[m] = (0.45 * gray[m] + 0.55 * _COLORS[lab[m]]).astype(np.uint8)
        cv2.putText(tile, title, (5, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1)
        tiles.append(tile)
    legend = np.zeros((22, size[0] * len(tiles), 3), np.uint8)
    x = 5
    for i, name in enumerate(LABELS):
        cv2.rectangle(legend, (x, 5), (x + 12, 17), _COLORS[i].tolist(), -1)
        cv2.putText(legend, name, (x + 16, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (220, 220, 220), 1)
        x += 30 + 9 * len(name)
    return np.vstack([np.hstack(tiles), legend])


def check_ct_small(
    onnx_path: str | Path, spec: PreprocessSpec, overlay: str | Path | None = None
) -> dict[str, Any]:
    """Model vs HU rules on ``CT_small.dcm``; optionally write an overlay PNG."""
    hu, spacing = load_ct_small()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    pred = segment(sess, hu, spec)
    rules = hu_rule_labels(hu)
    if overlay is not None:
        png = _overlay(hu, [("model", pred), ("HU rules", rules)], 4)
        cv2.imwrite(str(overlay), png)
    return {
        "image": "pydicom test file CT_small.dcm (128x128, 0.66 mm)",
        "hu_rules": {"upper_bounds": HU_RULES, "smoothing_sigma_px": 1.0},
        "vs_hu_rules": _agreement(pred, rules),
        "fractions_model": _fractions(pred),
        "fractions_hu_rules": _fractions(rules),
    }


def check_phantom(
    onnx_path: str | Path,
    spec: PreprocessSpec,
    seed: int = 7,
    region: str | None = None,
    size: int = 512,
    spacing_mm: float = 0.8,
    overlay: str | Path | None = None,
) -> dict[str, Any]:
    """Model vs ground truth on one phantom of ``size`` pixels (by default a whole
    body: 512 px at 0.8 mm is a 410 mm field of view)."""
    ph = make_phantom(np.random.default_rng(seed), size, spacing_mm, region)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    pred = segment(sess, ph.hu, spec)
    if overlay is not None:
        panels = [("model", pred), ("truth", ph.labels)]
        cv2.imwrite(str(overlay), _overlay(ph.hu, panels, 1))
    about = {"seed": seed, "size": size, "spacing_mm": spacing_mm, "region": ph.region}
    return {"phantom": about, **_agreement(pred, ph.labels)}


def main(argv: list[str] | None = None) -> int:
    from edgemed.bundle import Bundle

    ap = argparse.ArgumentParser(description="Check the demo model on CT_small and a phantom.")
    ap.add_argument("--bundle", type=Path, default=Path("edgemed/data/demo"))
    ap.add_argument("--overlay", type=Path, default=None, help="CT_small overlay PNG")
    ap.add_argument("--phantom-overlay", type=Path, default=None)
    ap.add_argument("--phantom-seed", type=int, default=7)
    ap.add_argument("--phantom-region", default=None, choices=["thorax", "abdomen", "pelvis"])
    args = ap.parse_args(argv)
    bundle = Bundle.load(args.bundle)
    onnx_path = bundle.root / bundle.artifact("onnx", "fp32").path
    out = {
        "ct_small": check_ct_small(onnx_path, bundle.preprocess, args.overlay),
        "phantom_512": check_phantom(
            onnx_path,
            bundle.preprocess,
            args.phantom_seed,
            args.phantom_region,
            overlay=args.phantom_overlay,
        ),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
