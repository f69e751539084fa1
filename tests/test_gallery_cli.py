"""``edgemed gallery build/add`` and ``edgemed match`` with the shipped similar-case bundle,
in a real subprocess, on DICOM files (findings phantoms and pydicom's CT_small.dcm)."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from edgemed.bundle import Bundle, write_manifest
from edgemed.cli.demo_tasks import findings_bundle
from edgemed.cli.gallery import similar_bundle
from edgemed.export.reference.findings import make_findings_phantom
from edgemed.export.reference.phantom_files import write_ct_dicom
from edgemed.gallery import SIDECAR, Gallery
from edgemed.pipeline import demo_bundle
from tests.cli_run import cli
from tests.support import one_error_line


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Five DICOM slices: nodule, nodule, effusion, liver lesion, no finding."""
    root = tmp_path_factory.mktemp("gallery-inputs")
    wanted = [
        ("thorax", ("lung_nodule_solid",)),
        ("thorax", ("lung_nodule_solid",)),
        ("thorax", ("pleural_effusion",)),
        ("abdomen", ("liver_lesion_hypodense",)),
        ("pelvis", ()),
    ]
    seqs = iter(np.random.SeedSequence(77).spawn(300))
    paths = []
    rng = np.random.default_rng(0)
    for i, (region, kinds) in enumerate(wanted):
        for s in seqs:
            ph = make_findings_phantom(np.random.default_rng(s), 256, region, kinds or None,
                                       p_none=1.0)  # fmt: skip
            if set(ph.present) == set(kinds):
                break
        sp = ph.phantom.spacing_mm
        paths.append(str(write_ct_dicom(root / f"slice-{i}.dcm", ph.hu, sp, rng)))
    return paths


def test_build_match_add(tmp_path, images):
    g = tmp_path / "gallery"
    ids = ["--id", "n1", "--id", "n2", "--id", "eff", "--id", "liver"]
    labels = ["--label", "nodule", "--label", "nodule", "--label", "effusion", "--label", "liver"]
    r = cli("gallery", "build", *images[:4], "--out", str(g), *ids, *labels)
    assert r.returncode == 0, r.stderr
    assert "4 entries" in r.stdout
    meta = json.loads((g / SIDECAR).read_text())
    b = Bundle.load(similar_bundle())
    assert meta["bundle"] == {"name": b.name, "version": b.version,
                              "manifest_sha256": b.manifest_sha256}  # fmt: skip
    # An image in the gallery finds itself first (cosine 1); JSON for scripts.
    r = cli("match", images[0], "--gallery", str(g), "-k", "3", "--json")
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)["slices"][0]["matches"]
    assert [m["id"] for m in found][0] == "n1" and found[0]["similarity"] > 0.999
    assert found[1]["id"] == "n2"  # the other nodule before effusion and liver
    assert found[0]["label"] == "nodule"
    # Added without --id: the salted input id (never the file name).
    salt = {"EDGEMED_ID_SALT": "00112233445566778899aabbccddeeff"}
    ct = str(get_testdata_file("CT_small.dcm"))
    r = cli("gallery", "add", images[4], ct, "--gallery", str(g), env=salt)
    assert r.returncode == 0, r.stderr
    gal = Gallery.load(g, bundle=b)
    assert len(gal) == 6 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in gal.ids[4:])
    assert not any("slice" in i or "CT_small" in i for i in gal.ids)
    assert gal.labels[4:] == [None, None]
    r = cli("match", images[4], "--gallery", str(g), "-k", "2")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if re.match(r"\s+\d+\.", ln)]
    assert len(lines) == 2 and gal.ids[4] in lines[0] and "+1.0000" in lines[0]


def test_refusals(tmp_path, images):
    g = tmp_path / "gallery"
    assert cli("gallery", "build", images[0], "--out", str(g)).returncode == 0
    # Another embedding bundle (same model, another manifest): refused.
    other = tmp_path / "other-bundle"
    shutil.copytree(similar_bundle(), other)
    manifest = Bundle.load(other).to_dict()
    manifest["version"] = "9.9.9"
    write_manifest(other, manifest)
    r = cli("match", images[1], "--gallery", str(g), "--bundle", str(other))
    assert r.returncode == 3
    one_error_line(r, "GALLERY_BUNDLE_MISMATCH")
    r = cli("gallery", "add", images[1], "--gallery", str(g), "--bundle", str(other))
    assert r.returncode == 3
    one_error_line(r, "GALLERY_BUNDLE_MISMATCH")
    # Not an embedding model.
    for bundle in (findings_bundle(), demo_bundle()):
        r = cli("match", images[1], "--gallery", str(g), "--bundle", str(bundle))
        assert r.returncode == 2
        one_error_line(r, "USAGE_TASK")
    # An existing gallery is not replaced without --overwrite.
    r = cli("gallery", "build", images[1], "--out", str(g))
    assert r.returncode == 7
    one_error_line(r, "OUTPUT_EXISTS")
    # Edited data file: refused by sha256.
    (data,) = g.glob("entries-*.npz")
    raw = bytearray(data.read_bytes())
    raw[-30] ^= 0xFF
    data.write_bytes(bytes(raw))
    r = cli("match", images[1], "--gallery", str(g))
    assert r.returncode == 3
    one_error_line(r, "GALLERY_INTEGRITY")
    r = cli("match", images[1], "--gallery", str(tmp_path / "nowhere"))
    assert r.returncode == 3
    one_error_line(r, "GALLERY_NOT_FOUND")
    r = cli("gallery", "build", images[0], images[1], "--out", str(tmp_path / "g2"),
            "--id", "only-one")  # fmt: skip
    assert r.returncode == 2
