"""export/reference/train_findings.py end to end on a handful of phantoms: the cached cell
targets match the phantoms, the classifier's slice logit is its largest cell's, and both
stages write weights and records (needs torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgemed.export.reference import train_findings as tf  # noqa: E402
from edgemed.export.reference.findings import FINDINGS  # noqa: E402
from edgemed.export.reference.findings_net import classifier  # noqa: E402
from tests.cli_run import python_env  # noqa: E402


def test_all_stages_on_a_few_phantoms(tmp_path):
    cls_w, emb_w = tmp_path / "cls.pt", tmp_path / "emb.pt"
    args = ["all", "--cache", str(tmp_path / "cache"), "--train", "24", "--val", "12"]
    args += ["--cycles", "3", "--embed-steps", "3", "--batch", "4", "--threads", "1"]
    args += ["--classifier-weights", str(cls_w), "--embedding-weights", str(emb_w)]
    # In its own process (the script sets torch's threads and deterministic mode
    # globally), importing the installed edgemed.export as a user's would (python_env).
    run = subprocess.run(
        [sys.executable, "-m", "edgemed.export.reference.train_findings", *args],
        cwd=Path(__file__).resolve().parents[1],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    cache = np.load(tmp_path / "cache" / "train.npz")
    assert cache["cells"].shape == (24, len(FINDINGS), 256 // tf.CELL, 256 // tf.CELL)
    first = tf.phantom_stream(tf.TRAIN_SEED, 1)[0]
    np.testing.assert_array_equal(cache["cells"][0], first.cells(tf.CELL))
    # A slice's finding is marked in some cell exactly when it is a label of the slice.
    np.testing.assert_array_equal(cache["cells"].any(axis=(2, 3)), cache["y"] > 0.5)
    record = json.loads(cls_w.with_suffix(".json").read_text())
    assert record["cycles"] == [3] and record["data"]["cell_px"] == tf.CELL
    assert "cell" in record["loss"] and len(record["thresholds"]) == len(FINDINGS)
    assert emb_w.is_file() and json.loads(emb_w.with_suffix(".json").read_text())["steps"] == 3
    model = classifier(2, len(FINDINGS)).eval()
    model.load_state_dict(torch.load(cls_w, weights_only=True))
    x = torch.from_numpy(cache["x"][:3].astype(np.float32) / 255.0)
    with torch.no_grad():
        cells = model.cells(x)
        assert cells.shape == (3, len(FINDINGS), 8, 8)
        assert torch.equal(model(x), cells.amax(dim=(2, 3)))
