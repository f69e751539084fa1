"""``edgemed demo --task all``: the findings and similar-case demos end to end, in a real
subprocess: results, report images, the gallery, and answers that fit the phantoms'
ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import jsonschema
import pytest

import edgemed
from edgemed.gallery import Gallery
from tests.cli_run import cli


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    r = cli("demo", "--task", "all", "--out", str(out), timeout=600)
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def test_outputs_are_complete(demo):
    out, stdout = demo
    index = json.loads((out / "index.json").read_text())
    assert index["complete"] and index["demo"] == ["classification", "embedding"]
    schema = json.loads((Path(edgemed.__file__).parent / "data" / "result.schema.json").read_text())
    for entry in index["results"]:
        folder = out / entry["dir"]
        result = json.loads((folder / "result.json").read_text())
        jsonschema.validate(result, schema)
        png = "findings.png" if entry["task"] == "classification" else "matches.png"
        img = cv2.imread(str(folder / png))
        assert img is not None and img.shape[0] >= 300 and img.shape[1] >= 900
        assert "CT_small" not in str(folder)  # positional folders, never file names
    titles = [e["title"] for e in index["results"]]
    assert any("CT_small.dcm (real CT" in t for t in titles)
    assert "not for clinical use" in stdout


def test_classification_answers_fit_the_truth(demo):
    out, stdout = demo
    index = json.loads((out / "index.json").read_text())
    got = {}
    for e in index["results"]:
        if e["task"] == "classification" and e["truth"] is not None:
            res = json.loads((out / e["dir"] / "result.json").read_text())
            got[e["truth"]] = {c["label"] for c in res["outputs"]["classification"][0]["present"]}
    effusion = [v for k, v in got.items() if "pleural_effusion" in k]
    assert effusion and "pleural_effusion" in effusion[0]
    assert got["no finding"] == set()  # the pelvis slice
    assert "present  " in stdout and "truth    " in stdout


def test_embedding_matches_against_the_gallery(demo):
    out, stdout = demo
    gallery = Gallery.load(out / "embedding" / "gallery")
    assert len(gallery) == 60 and all(i.startswith("phantom-") for i in gallery.ids)
    index = json.loads((out / "index.json").read_text())
    same_region, effusion = 0, None
    for e in index["results"]:
        if e["task"] == "embedding" and e["truth"] is not None:
            m = json.loads((out / e["dir"] / "matches.json").read_text())["matches"]
            assert len(m) == 5 and m[0]["similarity"] >= m[-1]["similarity"]
            region = e["truth"].split(" @ ")[1].split("-")[0]
            same_region += sum(x["label"].split(" @ ")[1].startswith(region) for x in m)
            if e["truth"].startswith("pleural_effusion"):
                effusion = sum("pleural_effusion" in x["label"] for x in m)
    # The nearest slices are of the query's body region, and the effusion query's
    # neighbours mostly show effusion too (nodules are the models' weak point).
    assert same_region >= 12  # of 15
    assert effusion is not None and effusion >= 3
    assert "match 1  cosine" in stdout
