"""Helpers shared by the export tests: the CLI with an export's time limit, images made
from CT_small.dcm, and an API export with lenient gates (for models with random weights).

Imported by the test modules only after they ``importorskip`` torch and ModelOpt.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgemed.export import ExportConfig, RandomWeightsWarning, export_bundle
from edgemed.export.config import Thresholds
from edgemed.export.reference.phantom_files import write_nifti_volume
from tests import cli_run

__all__ = ["LENIENT", "SIZE", "api_export", "cli", "write_real_images"]

#: Input height and width of the models that :func:`api_export` exports.
SIZE = 64
# Random weights: agreement is measured and reported, not demanded.
LENIENT = Thresholds(
    max_dice_drop=1.0,
    max_class_dice_drop=1.0,
    min_top1_agreement=0.0,
    max_prob_diff=1.0,
    min_cosine=0.0,
)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # cwd outside the checkout: the installed edgemed (with edgemed.export) runs.
    return cli_run.cli(*args, cwd=cwd, timeout=300)


def write_real_images(folder: Path, ct_small_path: str, hu: np.ndarray, flip: bool) -> None:
    """CT_small.dcm itself, a 16-bit PNG and a 2-slice NIfTI volume made from its pixels."""
    folder.mkdir(parents=True)
    (folder / "ct.dcm").write_bytes(Path(ct_small_path).read_bytes())
    img = hu[:, ::-1] if flip else hu
    # PNG has no rescale: the spec windows the stored values as they are, so they are HU
    # (negatives clipped to 0). HU+1024 here saturated the soft-tissue window to 1.0 on
    # 84% of the slice, a near-blank image no real calibration set holds.
    ok, png = cv2.imencode(".png", np.clip(img, 0, 65535).astype(np.uint16))
    assert ok
    (folder / "ct.png").write_bytes(png.tobytes())
    vol = np.stack([img, np.ascontiguousarray(img.T)])
    write_nifti_volume(folder / "ct.nii.gz", vol, (2.0, 0.7, 0.7))


def api_export(
    data: Path,
    out: Path,
    model: str,
    kwargs: dict,
    task: str,
    labels,
    channels: int = 1,
) -> Path:
    """Export with LENIENT gates, from ``data``'s spec.json, calib/ and val/. The
    models have random weights: the export must say so (a RandomWeightsWarning)."""
    config = ExportConfig(
        model=model,
        model_kwargs=kwargs,
        input_shape=(1, channels, SIZE, SIZE),
        task=task,
        labels=labels,
        preprocess=str(data / "spec.json"),
        calibration=data / "calib",
        validation=data / "val",
        thresholds=LENIENT,
        seed=0,
        out=out,
    )
    with pytest.warns(RandomWeightsWarning, match=r"random initialisation \(torch seed 0\)"):
        export_bundle(config)
    return out
