"""Build the demo bundle from the trained weights through the export stage.

Usage (from a checkout with the ``export`` extra installed)::

    python -m edgemed.export.reference.build_demo --out edgemed/data/demo --overwrite

It writes phantom calibration and validation images as DICOM / NIfTI files (plus
pydicom's real ``CT_small.dcm``) into a temporary folder, runs
:func:`edgemed.export.export_bundle` on :class:`~edgemed.export.reference.unet.UNet2D`
with ``demo_unet.pt`` (the state dict :mod:`.train_demo` saves) -- FP32, FP16 and INT8,
gated against FP32 -- and then checks each precision on the real CT slice (against HU
rules) and on two whole-body phantoms (against their known labels), adding those to
``bundle.json`` and ``report.md``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from edgemed.bundle import Bundle, write_manifest
from edgemed.export import ExportConfig, export_bundle
from edgemed.export.reference.check_real import check_ct_small, check_phantom
from edgemed.export.reference.phantom_files import write_demo_sets
from edgemed.export.reference.phantoms import LABELS

__all__ = ["DEMO", "PREPROCESS", "WEIGHTS", "add_validation_set", "build_demo", "main"]

HERE = Path(__file__).resolve().parent
#: The trained demo weights (state dict, ~1.9 MB) and the record of their training.
WEIGHTS = HERE / "demo_unet.pt"
TRAINING_RECORD = HERE / "demo_unet.json"

PREPROCESS: dict[str, Any] = {
    "size": [256, 256],
    # Lung, soft-tissue and bone windows: each separates a different pair of classes.
    "windows": [
        {"center": -600, "width": 1500},
        {"center": 40, "width": 400},
        {"center": 400, "width": 1800},
    ],
    "scale": "unit",
    "resize": "letterbox",
    "pad_value": 0.0,
    "dtype": "float32",
}

DEMO: dict[str, Any] = {
    "name": "edgemed-demo-ct-tissue",
    "version": "0.2.1",  # 0.2.1: declares its modality (CT); same models as 0.2.0
    "description": (
        "DEMONSTRATION MODEL, NOT FOR CLINICAL USE. A small 2D U-Net that labels axial "
        "CT slices (HU) as background/air, lung, fat, soft tissue or bone. Trained only "
        "on synthetic CT phantoms whose labels follow HU rules plus anatomy; it has never "
        "seen patient data and has not been validated for any medical purpose."
    ),
}


def _real_checks(bundle: Bundle) -> dict[str, Any]:
    """Each precision on CT_small (vs HU rules) and two whole-body phantoms (vs truth)."""
    out: dict[str, Any] = {}
    for precision in bundle.precisions:
        path = bundle.root / bundle.artifact("onnx", precision).path
        out[precision] = {
            "ct_small_vs_hu_rules": check_ct_small(path, bundle.preprocess)["vs_hu_rules"],
            "whole_body_phantoms_vs_truth": [
                check_phantom(path, bundle.preprocess, 7, region)
                for region in ("thorax", "abdomen")
            ],
        }
    return out


def _checks_markdown(checks: dict[str, Any]) -> str:
    lines = [
        "## Each precision on a real CT slice and on whole-body phantoms",
        "",
        "CT_small.dcm has no ground truth: it is compared with plain HU thresholds, which",
        "are themselves wrong in places (trabecular bone, partial volume). The phantoms",
        "(seed 7, 512 px at 0.8 mm) have known labels.",
        "",
        "| precision | image | pixel agreement | " + " | ".join(LABELS) + " |",
        "|---|---|---|" + "---|" * len(LABELS),
    ]
    for precision, c in checks.items():
        rows = [("CT_small vs HU rules", c["ct_small_vs_hu_rules"])]
        rows += [
            (f"phantom {p['phantom']['region']} vs truth", p)
            for p in c["whole_body_phantoms_vs_truth"]
        ]
        for title, r in rows:
            dice = " | ".join("-" if (d := r["dice"][n]) is None else f"{d:.4f}" for n in LABELS)
            lines.append(f"| {precision} | {title} | {r['pixel_agreement']:.4f} | {dice} |")
    return "\n".join(lines) + "\n"


def build_demo(
    out: Path,
    weights: Path = WEIGHTS,
    *,
    overwrite: bool = False,
    training: dict[str, Any] | None = None,
) -> Path:
    """Export the demo model to ``out`` (all precisions, gated) and add the real checks."""
    if training is None and TRAINING_RECORD.is_file():
        training = json.loads(TRAINING_RECORD.read_text())
    with tempfile.TemporaryDirectory(prefix="edgemed-demo-data-") as tmp:
        data = write_demo_sets(Path(tmp))
        config = ExportConfig(
            model="edgemed.export.reference.unet:UNet2D",
            weights=weights,
            input_shape=(1, 3, 256, 256),
            dynamic=("batch",),  # the spec fixes 256x256: TensorRT profiles vary the batch only
            task="segmentation",
            labels=LABELS,
            modalities=("CT",),  # HU windows: MR/NM/... DICOM is refused at run time
            preprocess=PREPROCESS,
            postprocess={"activation": "softmax", "decision": "argmax"},
            calibration=Path(tmp) / "calibration",
            validation=Path(tmp) / "validation",
            out=out,
            overwrite=overwrite,
            name=DEMO["name"],
            version=DEMO["version"],
            description=DEMO["description"],
            extra_provenance={
                "trained_on": "synthetic CT phantoms (export/reference/phantoms.py); no patient "
                "data",
                "built_by": "python -m edgemed.export.reference.build_demo",
                "training": training or {},
                "demo_data": data,
            },
        )
        result = export_bundle(config, progress=print)
    t0 = time.perf_counter()
    bundle = Bundle.load(out)
    checks = _real_checks(bundle)
    manifest = bundle.to_dict()
    manifest["provenance"]["real_image_checks"] = checks
    write_manifest(out, manifest)
    with open(out / "report.md", "a", encoding="utf-8") as f:
        f.write("\n" + _checks_markdown(checks))
    print(f"real-image checks ({time.perf_counter() - t0:.1f} s)")
    print(result.accuracy_table)
    return out


def add_validation_set(out: Path) -> Path:
    """Ship the demo's validation set (:mod:`edgemed.export.validation_set`) into the
    existing bundle at ``out`` without exporting again: the same seeded validation
    images :func:`build_demo` gates with, the limits its export recorded. The models
    are untouched (their hashes are checked as the manifest is rewritten)."""
    from edgemed.export.validation_set import ship

    # The validation files are the ones being replaced (they may be gone or stale); the
    # models are verified against the manifest before it is rewritten.
    bundle = Bundle.load(out, verify=False)
    for art in bundle.artifacts:
        bundle.read_artifact(art)
    thresholds = bundle.provenance["accuracy"]["thresholds"]
    with tempfile.TemporaryDirectory(prefix="edgemed-demo-data-") as tmp:
        write_demo_sets(Path(tmp))
        block = ship(Path(tmp) / "validation", out, thresholds)
    # The manifest as it stands (not to_dict(): that rewrites older blocks in today's
    # form), with the validation block replaced.
    manifest = json.loads((out / "bundle.json").read_text(encoding="utf-8"))
    manifest.pop("validation", None)
    if block is not None:
        manifest["validation"] = block
    write_manifest(out, manifest)
    print(f"validation set: {len(block['files']) if block else 0} file(s) in {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build the demo bundle through edgemed export.")
    ap.add_argument("--out", type=Path, required=True, help="bundle directory")
    ap.add_argument("--weights", type=Path, default=WEIGHTS, help="state dict (demo_unet.pt)")
    ap.add_argument("--overwrite", action="store_true", help="replace --out")
    ap.add_argument(
        "--validation-only",
        action="store_true",
        help="only (re)ship the validation set into the existing bundle at --out "
        "(edgemed check's images); no export",
    )
    args = ap.parse_args(argv)
    if args.validation_only:
        add_validation_set(args.out)
        return 0
    build_demo(args.out, args.weights, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
