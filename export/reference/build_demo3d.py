"""Build the 3D demo bundle from the trained weights through the export stage.

Usage (from a checkout with the ``export`` extra installed)::

    python -m edgemed.export.reference.build_demo3d --out edgemed/data/demo3d --overwrite

It writes phantom calibration and validation volumes (NIfTI, from
:mod:`.phantoms3d`, each seeded) into a temporary folder, adds pydicom's real 5-slice CT
series ``dicomdirtests/98892001/CT5N`` to the validation set as a DICOM series folder,
and runs :func:`edgemed.export.export_bundle` on
:class:`~edgemed.export.reference.unet3d.UNet3D` with ``demo_unet3d.pt`` (the state dict
:mod:`.train_3d` saves) at the input shape ``1x3x32x64x64`` -- FP32, FP16 and INT8,
gated against FP32 on the validation volumes by per-label 3D Dice. Then each precision
runs through :class:`edgemed.Pipeline` (the runtime's sliding window, back to the
source grid) on held-out phantom volumes with known labels (per-label Dice in the
source grid) and on CT5N (against plain HU thresholds), and those results are added to
``bundle.json`` and ``report.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEMO3D",
    "PREPROCESS3D",
    "VOLUME3D",
    "WEIGHTS3D",
    "build_demo3d",
    "ct5n_series",
    "main",
    "write_volume_sets",
]

HERE = Path(__file__).resolve().parent
#: The trained 3D demo weights (state dict) and the record of their training.
WEIGHTS3D = HERE / "demo_unet3d.pt"
TRAINING_RECORD3D = HERE / "demo_unet3d.json"

#: The ROI ``[D, H, W]`` the model sees: 96 x 128 x 128 mm at the target spacing.
ROI = [32, 64, 64]
PREPROCESS3D: dict[str, Any] = {
    "size": ROI,
    # The 2D demo's lung, soft-tissue and bone windows: one channel each.
    "windows": [
        {"center": -600, "width": 1500},
        {"center": 40, "width": 400},
        {"center": 400, "width": 1800},
    ],
    "scale": "unit",
    "dtype": "float32",
}
#: Target spacing (x, y, z) mm and MONAI's sliding window. 2 x 2 x 3 mm keeps ribs and
#: vertebrae several voxels wide while a chest CT is a few dozen windows.
VOLUME3D: dict[str, Any] = {
    "spacing": [2.0, 2.0, 3.0],
    "sliding_window": {
        "rule": "monai",
        "roi_size": ROI,
        "overlap": 0.25,
        "mode": "gaussian",
        "sigma_scale": 0.125,
        "sw_batch_size": 4,
        "padding_mode": "constant",
        "cval": 0.0,
    },
}

DEMO3D: dict[str, Any] = {
    "name": "edgemed-demo3d-ct-tissue",
    "version": "0.1.0",
    "description": (
        "DEMONSTRATION MODEL, NOT FOR CLINICAL USE. A small 3D U-Net run by sliding window "
        "that labels CT volumes (HU) as background/air, lung, fat, soft tissue or bone. "
        "Trained only on synthetic CT phantom volumes whose labels follow HU rules plus "
        "anatomy; it has never seen patient data and has not been validated for any "
        "medical purpose."
    ),
}

_SEED = 20264  # the calibration / validation phantoms
_CHECK_SEED = 7  # the held-out phantoms of the real checks


def ct5n_series() -> Path:
    """pydicom's real 5-slice CT series (16 x 16 pixels of 0.49 mm, 2.5 mm slices)."""
    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm")
    if ct is None:
        raise FileNotFoundError("pydicom's test files are not installed")
    return Path(ct).parent / "dicomdirtests" / "98892001" / "CT5N"


def _write(folder: Path, name: str, ph: Any) -> str:
    from edgemed.export.reference.phantom_files import write_nifti_volume

    write_nifti_volume(folder / name, ph.hu, ph.spacing)
    z, y, x = ph.hu.shape
    return f"{name}: {ph.span} span, {x}x{y}x{z}, {ph.spacing[1]:.2f} mm, {ph.spacing[0]} mm slices"


def write_volume_sets(root: Path, seed: int = _SEED) -> dict[str, Any]:
    """Write ``root/calibration`` and ``root/validation`` (different phantom streams) and
    describe them. The smallest validation volume (a coarse 128-pixel pelvis) is the one
    shipped in the bundle for ``edgemed check``."""
    from edgemed.export.reference.phantoms3d import make_volume

    calib_rng, val_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    cal, val = root / "calibration", root / "validation"
    cal.mkdir(parents=True)
    val.mkdir(parents=True)
    calibration = [
        _write(cal, f"volume-{i}.nii.gz", make_volume(calib_rng, span, matrix=m, slice_mm=dz))
        for i, (span, m, dz) in enumerate(
            [
                ("chest", 320, 3.0),
                ("abdomen", 320, 5.0),
                ("pelvis", 256, 5.0),
                ((-80, 60), 384, 2.5),
            ]
        )
    ]
    validation = [
        _write(val, f"volume-{i}.nii.gz", make_volume(val_rng, span, matrix=m, slice_mm=5.0))
        for i, (span, m) in enumerate([((-120, 100), 256), ((-330, -200), 128)])
    ]
    shutil.copytree(ct5n_series(), val / "ct5n")
    validation.append("ct5n/: pydicom's real CT series dicomdirtests/98892001/CT5N (16x16x5)")
    return {
        "seed": seed,
        "calibration": calibration,
        "validation": validation,
        "note": "phantoms from export/reference/phantoms3d.py (labels known, no patient data)",
    }


def _dice(pred: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    from edgemed.export.reference.check_real import _agreement

    return _agreement(pred, ref)


def check_phantoms(pipe: Any, tmp: Path) -> list[dict[str, Any]]:
    """The pipeline on two held-out phantom volumes (chest and abdomen-pelvis, 384 px,
    2.5 mm slices) against their true labels, in the source grid."""
    from edgemed.export.reference.phantom_files import write_nifti_volume
    from edgemed.export.reference.phantoms3d import make_volume

    out = []
    for i, span in enumerate(("chest", "abdomen-pelvis")):
        rng = np.random.default_rng([_CHECK_SEED, i])
        ph = make_volume(rng, span, matrix=384, slice_mm=2.5)
        path = write_nifti_volume(tmp / f"check-{i}.nii.gz", ph.hu, ph.spacing)
        result = pipe(str(path))
        z, y, x = ph.hu.shape
        about = {
            "seed": [_CHECK_SEED, i],
            "span": span,
            "shape_xyz": [x, y, z],
            "spacing_mm": [round(ph.spacing[2], 3), round(ph.spacing[1], 3), ph.spacing[0]],
        }
        out.append({"phantom": about, **_dice(result.mask, ph.labels)})
    return out


def check_ct5n(pipe: Any) -> dict[str, Any]:
    """The pipeline on CT5N against plain HU thresholds (no ground truth exists)."""
    from edgemed.export.reference.check_real import HU_RULES, hu_rule_labels
    from edgemed.io import read_image

    image = read_image(ct5n_series())
    result = pipe(image)
    rules = np.stack([hu_rule_labels(s, 0.0) for s in image.array])
    return {
        "image": "pydicom dicomdirtests/98892001/CT5N (real CT, 16x16x5, 0.49 mm, 2.5 mm)",
        "hu_rules": {"upper_bounds": HU_RULES},
        "vs_hu_rules": _dice(result.mask, rules),
    }


def _real_checks(bundle: Any) -> dict[str, Any]:
    from edgemed.pipeline import Pipeline
    from edgemed.settings import Options

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgemed-demo3d-check-") as tmp:
        for precision in bundle.precisions:
            options = Options.resolve(backend="onnxruntime", precision=precision)
            with Pipeline.from_bundle(bundle.root, options=options) as pipe:
                out[precision] = {
                    "phantoms_vs_truth": check_phantoms(pipe, Path(tmp)),
                    "ct5n_vs_hu_rules": check_ct5n(pipe)["vs_hu_rules"],
                }
    return out


def _checks_markdown(checks: dict[str, Any]) -> str:
    from edgemed.export.reference.phantoms3d import LABELS

    lines = [
        "## Each precision on held-out phantom volumes and a real CT series",
        "",
        "Through the runtime (resampling, sliding window, back to the source grid). The",
        f"phantoms (seed {_CHECK_SEED}, 384 px, 2.5 mm slices) have known labels. CT5N (16x16x5",
        "voxels of real CT) has none: it is compared with plain HU thresholds.",
        "",
        "| precision | volume | voxel agreement | " + " | ".join(LABELS) + " |",
        "|---|---|---|" + "---|" * len(LABELS),
    ]
    for precision, c in checks.items():
        rows = [(f"phantom {p['phantom']['span']} vs truth", p) for p in c["phantoms_vs_truth"]]
        rows.append(("CT5N vs HU rules", c["ct5n_vs_hu_rules"]))
        for title, r in rows:
            dice = " | ".join("-" if (d := r["dice"][n]) is None else f"{d:.4f}" for n in LABELS)
            lines.append(f"| {precision} | {title} | {r['pixel_agreement']:.4f} | {dice} |")
    return "\n".join(lines) + "\n"


def build_demo3d(
    out: Path,
    weights: Path = WEIGHTS3D,
    *,
    overwrite: bool = False,
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8"),
) -> Path:
    """Export the 3D demo model to ``out`` (``precisions``, gated against FP32), ship the
    smallest validation volume, and add the real checks."""
    from edgemed.bundle import Bundle, write_manifest
    from edgemed.export import ExportConfig, export_bundle
    from edgemed.export.reference.phantoms3d import LABELS

    training = json.loads(TRAINING_RECORD3D.read_text()) if TRAINING_RECORD3D.is_file() else {}
    with tempfile.TemporaryDirectory(prefix="edgemed-demo3d-data-") as tmp:
        data = write_volume_sets(Path(tmp))
        config = ExportConfig(
            model="edgemed.export.reference.unet3d:UNet3D",
            weights=weights,
            input_shape=(1, 3, *ROI),
            dynamic=("batch",),  # the ROI is fixed; windows are batched
            task="segmentation",
            labels=LABELS,
            modalities=("CT",),
            preprocess={"preprocess": PREPROCESS3D, "volume": VOLUME3D},
            # The lungs and airways are one 3D component; air-filled look-alikes (a
            # couch core, bowel gas) are not: only the largest lung component is kept.
            postprocess={
                "activation": "softmax",
                "decision": "argmax",
                "largest_component": ["lung"],
            },
            precisions=precisions,
            calibration=Path(tmp) / "calibration",
            validation=Path(tmp) / "validation",
            out=out,
            overwrite=overwrite,
            name=DEMO3D["name"],
            version=DEMO3D["version"],
            description=DEMO3D["description"],
            extra_provenance={
                "trained_on": "synthetic CT phantom volumes (export/reference/phantoms3d.py); "
                "no patient data",
                "built_by": "python -m edgemed.export.reference.build_demo3d",
                "training": training,
                "demo_data": data,
            },
        )
        result = export_bundle(config, progress=print)
    t0 = time.perf_counter()
    bundle = Bundle.load(out)
    checks = _real_checks(bundle)
    manifest = json.loads((out / "bundle.json").read_text(encoding="utf-8"))
    manifest["provenance"]["real_image_checks"] = checks
    write_manifest(out, manifest)
    with open(out / "report.md", "a", encoding="utf-8") as f:
        f.write("\n" + _checks_markdown(checks))
    print(f"real-image checks ({time.perf_counter() - t0:.1f} s)")
    print(_checks_markdown(checks))
    print(result.accuracy_table)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build the 3D demo bundle through edgemed export.")
    ap.add_argument("--out", type=Path, required=True, help="bundle directory")
    ap.add_argument("--weights", type=Path, default=WEIGHTS3D, help="state dict (demo_unet3d.pt)")
    ap.add_argument("--overwrite", action="store_true", help="replace --out")
    ap.add_argument(
        "--precisions", default="fp32,fp16,int8", help="comma-separated (fp32 always first)"
    )
    args = ap.parse_args(argv)
    precisions = tuple(p for p in args.precisions.split(",") if p)
    build_demo3d(args.out, args.weights, overwrite=args.overwrite, precisions=precisions)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
