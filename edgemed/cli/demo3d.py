"""``edgemed demo --3d``: the 3D demo bundle (a small 3D U-Net run by sliding window) on
a CT volume.

Without ``--input`` the volume is a seeded synthetic CT phantom of the chest and upper
abdomen (:mod:`edgemed.export.reference.phantoms3d`, 512 x 512 pixels of about 1 mm,
2.5 mm slices), written as a NIfTI file into a temporary folder and read back like any
user's file; nothing is downloaded and nothing large ships. ``--input`` takes a NIfTI
volume or a DICOM series folder instead (``edgemed run --bundle <demo3d>`` does the same
without the extra views).

``--out`` receives (one complete set, published at the end like ``run``'s)::

    result.json  mask.nii.gz  overlay.png               as edgemed run writes them
    axial.png  coronal.png  sagittal.png                the three planes through the centre

and the per-label volumes (mm3) are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path
from typing import Any

from edgemed.cli.outdir import OutputDir
from edgemed.cli.progress import Progress
from edgemed.errors import EdgemedError, OutputError

__all__ = ["DEMO3D_SEED", "demo3d_bundle", "demo_phantom", "run_demo_3d", "write_phantom"]

DEMO3D_SEED = 30301  # the demo phantom's seed
#: The part of the trunk the demo phantom covers (mm of a scale-1 body; 0 = the top of
#: the right diaphragm dome): lung bases, heart, liver, stomach, spine and ribs.
DEMO3D_SPAN = (-130.0, 110.0)
PLANE_FILES = {"axial": "axial.png", "coronal": "coronal.png", "sagittal": "sagittal.png"}


def demo3d_bundle() -> Path:
    """The 3D demo bundle shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "data" / "demo3d"


def demo_phantom(seed: int = DEMO3D_SEED) -> Any:
    """The demo's phantom volume (a :class:`~edgemed.export.reference.phantoms3d.Phantom3D`:
    HU, true labels, spacing): 512 x 512 pixels, 2.5 mm slices, as a CT scanner
    reconstructs a chest."""
    import numpy as np

    from edgemed.export.reference.phantoms3d import make_volume

    return make_volume(np.random.default_rng(seed), DEMO3D_SPAN, matrix=512, slice_mm=2.5)


def write_phantom(path: Path, seed: int = DEMO3D_SEED) -> Path:
    """:func:`demo_phantom` as a NIfTI file (int16 HU, LPS-aligned) at ``path``."""
    from edgemed.export.reference.phantom_files import write_nifti_volume

    ph = demo_phantom(seed)
    return write_nifti_volume(path, ph.hu, ph.spacing)


def _views(result: Any, out: Path) -> list[Path]:
    from edgemed.io.writers import write_overlay_png

    return [
        write_overlay_png(out / name, result.image, result.mask, result.labels, result.stats, plane)
        for plane, name in PLANE_FILES.items()
    ]


def _volume_lines(result: Any) -> list[str]:
    background = result.labels[0] if result.labels else None
    lines = ["  volumes"]
    for name, entry in result.stats.items():
        if name == background:
            continue
        if "volume_mm3" in entry:
            lines.append(f"    {name:<12} {entry['volume_mm3']:>14,.0f} mm3")
        else:  # the input states no spacing: voxels only, never made-up millimetres
            lines.append(f"    {name:<12} {int(entry.get('pixels', 0)):>14,} voxels")
    return lines


def run_demo_3d(args: argparse.Namespace, options: Any) -> int:
    """``edgemed demo --3d [--input PATH]``."""
    from edgemed.pipeline import Pipeline
    from edgemed.render import summary, write_result

    progress = Progress(1, unit="window")
    with tempfile.TemporaryDirectory(prefix="edgemed-demo3d-") as tmp:
        if args.input is not None:
            item, title = str(args.input), "edgemed demo --3d: input 1/1"
        else:
            item = str(write_phantom(Path(tmp) / "phantom.nii.gz"))
            title = (
                f"edgemed demo --3d: a synthetic CT phantom volume (seed {DEMO3D_SEED}; "
                "export/reference/phantoms3d.py)"
            )
        try:
            with (
                OutputDir(args.out, overwrite=args.overwrite) as out,
                Pipeline.from_bundle(demo3d_bundle(), options=options) as pipe,
            ):
                progress.begin(1)
                try:
                    result = pipe.run_batch([item], progress=progress.slices)[0]
                    written = write_result(result, out.path) + _views(result, out.path)
                except EdgemedError as exc:
                    progress.end(1, f"failed {exc.code}")
                    out.clear()
                    with contextlib.suppress(OutputError):
                        out.publish()
                    raise
                progress.end(1, "ok")
                final = out.publish()
        finally:
            progress.close()
    shown = [final / p.relative_to(out.path) for p in written]
    print(summary(result, shown, title))
    print("\n".join(_volume_lines(result)))
    print("  note     demonstration model trained on synthetic phantoms; not for clinical use")
    return 0
