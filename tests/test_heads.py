"""The task heads' metrics (one definition for export gates, edgemed bench and the
benchmarks), their specs, and decoding by output name."""

from __future__ import annotations

import numpy as np
import pytest

from edgemed import MedicalImage, Result
from edgemed.errors import BundleError
from edgemed.heads import create_head, head_class, tasks
from edgemed.heads.segmentation import SegmentationSpec
from edgemed.io.orientation import orientation


def _head(task, labels=(), outputs=(("logits", ("batch", 3, 4, 4)),), spec=None):
    return create_head(task, spec or {}, list(labels), list(outputs))


def test_dice_per_label_on_known_masks():
    ref = np.zeros((4, 4), np.uint8)
    ref[0, :] = 1  # 4 pixels of label 1
    cand = np.zeros((4, 4), np.uint8)
    cand[0, :2] = 1  # 2 of them
    m = _head("segmentation", ["bg", "one", "two"]).metric([ref], [cand])
    assert m["metric"] == "dice"
    assert m["pixel_agreement"] == pytest.approx(14 / 16)
    assert m["classes"]["one"]["dice"] == pytest.approx(2 * 2 / (4 + 2), abs=1e-6)
    assert m["classes"]["bg"]["dice"] == pytest.approx(2 * 12 / (14 + 12), abs=1e-6)
    assert m["classes"]["two"]["dice"] is None  # in neither mask: no evidence either way
    assert m["classes"]["one"]["pixels_reference"] == 4 and m["classes"]["one"]["pixels_other"] == 2
    mean = (m["classes"]["one"]["dice"] + m["classes"]["bg"]["dice"]) / 2
    assert m["mean_dice"] == pytest.approx(mean, abs=1e-6)
    assert m["mean_dice_drop"] == pytest.approx(1 - mean, abs=1e-6)
    # Over several slices the counts add up (a volume's Dice, not a mean of slices).
    both = _head("segmentation", ["bg", "one"]).metric([ref, ref], [cand, ref])
    assert both["classes"]["one"]["dice"] == pytest.approx(2 * 6 / (8 + 6), abs=1e-6)


def test_classification_and_embedding_metrics():
    def cls(*rows):
        return [{"probabilities": r} for r in rows]

    head = _head("classification", outputs=[("logits", ("batch", 2))])
    m = head.metric(cls([0.4, 0.6], [0.1, 0.9]), cls([0.6, 0.4], [0.2, 0.8]))
    assert m["top1_agreement"] == 0.5 and m["max_prob_diff"] == pytest.approx(0.2)
    assert head.gate(m, {}) == [
        "top-1 agreement 0.5000 < 0.99",
        "max probability diff 0.2000 > 0.05",
    ]
    emb = _head("embedding", outputs=[("features", ("batch", 2))])
    m = emb.metric([np.array([1.0, 1.0]), np.array([0.0, 1.0])], [[1.0, 0.0], [0.0, 2.0]])
    assert m["min_cosine"] == pytest.approx(2**-0.5, abs=1e-6)
    assert m["mean_cosine"] == pytest.approx((2**-0.5 + 1) / 2, abs=1e-6)
    assert emb.gate(m, {"min_cosine": 0.5}) == []


def test_decoding_is_by_output_name():
    outputs = [("aux", ("batch", 2)), ("logits", ("batch", 3))]
    head = _head("classification", ["a", "b", "c"], outputs, {"output": "logits"})
    raw = {"aux": np.array([[9.0, 0.0]]), "logits": np.array([[0.0, 0.0, 5.0]])}
    (got,) = head.decode(raw, [None])
    assert got["top_k"][0]["label"] == "c"
    assert _head("classification", ["a", "b"], outputs).output == "aux"  # default: first
    with pytest.raises(BundleError):
        _head("classification", [], outputs, {"output": "nope"})


def test_embedding_rows_are_copies_not_views_of_backend_buffers():
    head = _head("embedding", outputs=[("features", ("batch", 2))], spec={"normalize": "none"})
    buffer = np.array([[1.0, 2.0]], dtype=np.float32)  # a backend's reused output buffer
    (row,) = head.decode({"features": buffer}, [None])
    buffer[...] = 0  # the next call overwrites it
    assert row.tolist() == [1.0, 2.0]


def test_specs_reject_typos_and_accept_schema_1_shared_keys():
    assert set(tasks()) >= {"segmentation", "classification", "embedding"}
    with pytest.raises(BundleError):
        SegmentationSpec.from_dict({"activaton": "softmax"})
    with pytest.raises(BundleError):
        head_class("embedding").parse_spec({"normalize": "l3"})
    # schema-1 bundles carried every task's keys in one block
    spec = head_class("embedding").parse_spec({"activation": "softmax", "top_k": 5})
    assert spec.to_dict() == {"normalize": "l2"}
    with pytest.raises(BundleError):
        head_class("nonsense")


def test_segmentation_assembles_canonical_slices_into_the_inputs_own_grid():
    # The model saw the canonical (LPS) picture; the mask comes back in the file's
    # order. An image stored RAS (x towards R, y towards A) is mirrored both ways.
    head = _head("segmentation", ["bg", "one"], outputs=[("logits", ("batch", 2, 4, 4))])
    seen = np.zeros((3, 4), np.uint8)
    seen[0, 0] = 1  # top-left as the model saw it: patient's right, anterior
    ras = MedicalImage(np.zeros((3, 4), np.float32), (0.5, 2.0), origin=(0.0, 0.0, 0.0),
                       direction=np.diag([-1.0, -1.0, 1.0]),
                       metadata={"spacing_source": "nifti"})  # fmt: skip
    out = head.assemble(ras, [seen], orientation(ras))
    assert out.mask.shape == (3, 4) and out.mask[2, 3] == 1 and out.mask.sum() == 1
    assert out.stats["one"] == {"pixels": 1, "area_mm2": 1.0}
    # Unknown spacing: pixel counts only, no millimetres from the 1.0 placeholder.
    plain = MedicalImage(np.zeros((3, 4), np.float32), (1.0, 1.0),
                         metadata={"spacing_source": "unknown"})  # fmt: skip
    out = head.assemble(plain, [seen], orientation(plain))
    assert out.mask[0, 0] == 1 and out.stats["one"] == {"pixels": 1}
    assert head.summary(Result("segmentation", plain, ["bg", "one"], {}, {}, out, head)) == [
        "  labels   one 1 px"
    ]
