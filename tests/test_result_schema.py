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


def test_input_facts_validate_and_the_schema_holds_them_to_their_meaning(tmp_path):
    from pydicom.data import get_testdata_file

    with Pipeline.from_bundle(edgemed.demo_bundle(), "onnxruntime", threads=1) as pipe:
        lossy = json.loads(json.dumps(pipe(get_testdata_file("693_J2KI.dcm")).to_dict()))
        unknown = json.loads(json.dumps(pipe(np.zeros((20, 20), np.float32)).to_dict()))
    for doc in (lossy, unknown):
        _validate(doc)
    assert lossy["input"]["lossy"] is True and unknown["input"]["spacing_mm"] is None
    assert lossy["provenance"]["startup_ms"]["readers"] >= 0
    # Millimetres beside an unknown spacing, or none beside a known one, are invalid.
    bad = json.loads(json.dumps(unknown))
    bad["input"]["spacing_mm"] = [1.0, 1.0]
    with pytest.raises(jsonschema.ValidationError):
        _validate(bad)
    bad = json.loads(json.dumps(lossy))
    bad["input"]["spacing_mm"] = None
    with pytest.raises(jsonschema.ValidationError):
        _validate(bad)
    bad = json.loads(json.dumps(lossy))
    bad["input"]["orientation"]["canonical"] = "RAS"
    with pytest.raises(jsonschema.ValidationError):
        _validate(bad)
    bad = json.loads(json.dumps(lossy))
    del bad["provenance"]["startup_ms"]
    with pytest.raises(jsonschema.ValidationError):
        _validate(bad)
