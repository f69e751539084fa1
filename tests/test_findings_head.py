"""The classification head's multi-label decisions (``decision_thresholds``)."""

from __future__ import annotations

import numpy as np
import pytest

from edgemed.errors import BundleError
from edgemed.heads import create_head
from edgemed.heads.classification import ClassificationSpec

LABELS = ["nodule", "lesion", "effusion"]
OUT = [("logits", ("batch", 3))]


def _head(**post):
    return create_head("classification", {"activation": "sigmoid", **post}, LABELS, OUT)


def _logit(p):
    p = np.asarray(p, np.float64)
    return np.log(p / (1 - p)).astype(np.float32)


def test_spec_round_trip_and_checks():
    spec = ClassificationSpec.from_dict(
        {"activation": "sigmoid", "decision_thresholds": [0.3, 0.5, 0.7]}
    )
    assert spec.decision_thresholds == (0.3, 0.5, 0.7)
    assert spec.to_dict()["decision_thresholds"] == [0.3, 0.5, 0.7]
    assert "decision_thresholds" not in ClassificationSpec().to_dict()  # old bundles unchanged
    assert ClassificationSpec.from_dict({"decision_thresholds": 0.4}).decision_thresholds == (0.4,)
    with pytest.raises(BundleError):
        ClassificationSpec.from_dict({"decision_thresholds": [1.5]})
    with pytest.raises(BundleError):
        _head(decision_thresholds=[0.5, 0.5])  # 2 values, 3 classes


def test_decode_lists_present_labels():
    head = _head(decision_thresholds=[0.3, 0.5, 0.7])
    (v,) = head.decode({"logits": _logit([[0.35, 0.9, 0.6]])}, [None])
    assert [c["label"] for c in v["present"]] == ["lesion", "nodule"]  # most probable first
    assert v["present"][0]["probability"] == pytest.approx(0.9, abs=1e-6)
    (v,) = _head(decision_thresholds=0.95).decode({"logits": _logit([[0.35, 0.9, 0.6]])}, [None])
    assert v["present"] == []
    (v,) = _head().decode({"logits": _logit([[0.35, 0.9, 0.6]])}, [None])
    assert "present" not in v  # no thresholds: no decisions


def test_gate_compares_decisions_not_top1():
    head = _head(decision_thresholds=[0.5, 0.5, 0.5])
    # Two slices without findings whose tiny probabilities swap order, one real change.
    ref = head.decode({"logits": _logit([[0.02, 0.03, 0.01], [0.9, 0.1, 0.1]])}, [None, None])
    same = head.decode({"logits": _logit([[0.03, 0.02, 0.01], [0.9, 0.1, 0.1]])}, [None, None])
    m = head.metric(ref, same)
    assert m["metric"] == "decision_agreement" and m["decision_agreement"] == 1.0
    assert m["top1_agreement"] == 0.5  # reported, but not what decides
    assert head.gate(m, {}) == []
    flipped = head.decode({"logits": _logit([[0.02, 0.03, 0.01], [0.45, 0.1, 0.1]])}, [None, None])
    m = head.metric(ref, flipped)
    assert m["decision_agreement"] == 0.5
    assert head.gate(m, {"max_prob_diff": 1.0}) and "decision agreement" in head.gate(m, {})[0]
    # Without thresholds the top-1 gate applies, as before.
    plain = _head()
    m = plain.metric(ref, same)
    assert "decision_agreement" not in m and plain.gate(m, {})
