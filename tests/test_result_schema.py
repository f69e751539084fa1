"""Every result validates against the published JSON schema (edgemed/data)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import edgemed
from edgemed import Pipeline

SCHEMA = json.loads((Path(edgemed.__file__).parent / "data" / "result.schema.json").read_text())


def _validate(doc):
    jsonschema.Draft202012Validator(SCHEMA).validate(doc)


@pytest.mark.parametrize("task", ["segmentation", "classification", "embedding"])
def test_api_results_validate(tiny_bundle, task):
    pipe = Pipeline.from_bundle(tiny_bundle(task))
    vol = np.random.default_rng(0).normal(0, 300, (3, 20, 24)).astype(np.float32)
    for item in (vol[0], vol):
        _validate(json.loads(json.dumps(pipe(item).to_dict())))


def test_cli_result_json_validates_and_schema_can_fail(tmp_path, ct_small_path):
    proc = subprocess.run(
        [sys.executable, "-m", "edgemed.cli", "run", ct_small_path, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "result.json").read_text())
    _validate(doc)
    del doc["provenance"]["input_id"]
    with pytest.raises(jsonschema.ValidationError):
        _validate(doc)
    doc = json.loads((tmp_path / "result.json").read_text())
    doc["input"]["patient_name"] = "x"  # nothing unexpected may creep in
    with pytest.raises(jsonschema.ValidationError):
        _validate(doc)
