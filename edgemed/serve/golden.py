"""The readiness check: a warm-up inference on a shipped golden input, compared with
the result expected of that exact model.

The golden input is pydicom's real ``CT_small.dcm`` (it ships inside pydicom, which
edgemed requires), read from its bytes as an upload is. The expected per-slice values
(a segmentation's mask, a classifier's probabilities, an embedding) are kept in
``golden/<artifact sha256[:16]>.json`` beside this module, one file per model file,
made by ``python -m edgemed.serve.golden`` on a machine where the results were checked.
The head compares them (:meth:`Head.metric`) and judges them with its own export
gate (:meth:`Head.gate`, default thresholds): what decides whether an FP16 variant is
good enough also decides whether this service is ready.

A model with no golden file (a user's own bundle) cannot be checked against an
expectation; its warm-up result is then compared with a second run of the same input
(the backend must be deterministic and produce a finite result), and the report says
that no expectation was shipped.
"""

from __future__ import annotations

import argparse
import base64
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from edgemed.errors import InputError
from edgemed.pipeline import Pipeline
from edgemed.serve.errors import NotReady

__all__ = ["GOLDEN_DIR", "check", "expected_path", "golden_input", "main"]

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
GOLDEN_NAME = "CT_small.dcm"
#: The backend whose values stand in for a backend that has none of its own.
REFERENCE_BACKEND = "onnxruntime"


def golden_input() -> bytes:
    """The golden input's bytes (pydicom's ``CT_small.dcm``)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(GOLDEN_NAME)
    if not isinstance(path, str):
        raise InputError(f"pydicom's {GOLDEN_NAME} is not installed", code="INPUT_NOT_FOUND")
    return Path(path).read_bytes()


def expected_path(pipe: Pipeline) -> Path:
    """Where the expected values for ``pipe``'s model file are kept."""
    return GOLDEN_DIR / f"{_artifact_sha(pipe)[:16]}.json"


def _artifact_sha(pipe: Pipeline) -> str:
    return pipe.bundle.artifact("onnx", pipe.backend.precision).sha256


def _encode(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        raw = zlib.compress(np.ascontiguousarray(value).tobytes(), 9)
        return {
            "ndarray": base64.b64encode(raw).decode(),
            "dtype": str(value.dtype),
            "shape": list(value.shape),
        }
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "ndarray" in value:
        raw = zlib.decompress(base64.b64decode(value["ndarray"]))
        return np.frombuffer(raw, dtype=value["dtype"]).reshape(value["shape"])
    return value


def _run(pipe: Pipeline, data: bytes) -> list[Any]:
    from edgemed.io import read_image

    result = pipe.run_batch([read_image(data, limits=pipe.options.limits)])[0]
    assert result.head is not None
    values = result.head.values(result.output)
    for v in values:
        arr = v if isinstance(v, np.ndarray) else np.asarray(v.get("probabilities", []))
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise NotReady(
                "the golden input's result holds non-finite values", code="SERVICE_GOLDEN_MISMATCH"
            )
    return values


def check(pipe: Pipeline) -> dict[str, Any]:
    """Run the golden input through ``pipe`` and judge the result.

    Returns:
        ``{"input", "expected", "ok", "metrics", "failures"}``: ``expected`` is
        ``shipped (BACKEND)`` (compared with the values stored for this backend, else
        the reference backend's) or ``self`` (no values shipped for this model:
        compared with a second run).

    Raises:
        EdgemedError: the golden input could not be run at all.
    """
    data = golden_input()
    got = _run(pipe, data)
    path = expected_path(pipe)
    stored = json.loads(path.read_text()).get("backends", {}) if path.is_file() else {}
    # The values this backend gave where it was checked, else the reference backend's:
    # backends may differ slightly (an INT8 model more than a float one), and the
    # head's gate says how much is too much.
    entry = stored.get(pipe.backend.name) or stored.get(REFERENCE_BACKEND)
    if entry is not None:
        reference = [_decode(v) for v in entry["values"]]
        expected = f"shipped ({entry['backend']})"
    else:
        reference = _run(pipe, data)
        expected = "self"
    head = pipe.head
    try:
        metrics = head.metric(reference, got)
        failures = head.gate(metrics, {})
    except (ValueError, KeyError) as exc:  # shapes or classes that do not match at all
        metrics, failures = {}, [f"the result does not match the expected one's form ({exc})"]
    return {
        "input": f"pydicom:{GOLDEN_NAME}",
        "expected": expected,
        "ok": not failures,
        "metrics": _scalars(metrics),
        "failures": failures,
    }


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline figures (the per-class breakdown stays out of /readyz)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}


def write_expected(pipe: Pipeline) -> Path:
    """Store ``pipe``'s golden values (run it on a machine where they were checked)."""
    values = _run(pipe, golden_input())
    path = expected_path(pipe)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = json.loads(path.read_text()) if path.is_file() else {}
    record.update(
        bundle={"name": pipe.bundle.name, "version": pipe.bundle.version},
        precision=pipe.backend.precision,
        artifact_sha256=_artifact_sha(pipe),
        input=f"pydicom:{GOLDEN_NAME}",
    )
    record.setdefault("backends", {})[pipe.backend.name] = {
        "backend": pipe.backend.name,
        "version": str(pipe.backend.info().get("backend_version", "")),
        "device": str(pipe.backend.info().get("device", "")),
        "values": [_encode(v) for v in values],
    }
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m edgemed.serve.golden [--bundle B] [--precision P ...]``: store the
    expected golden values for each precision of a bundle (default: the demo)."""
    from edgemed.pipeline import demo_bundle

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--precision", nargs="+", default=None)
    ap.add_argument("--backend", nargs="+", default=[REFERENCE_BACKEND])
    args = ap.parse_args(argv)
    bundle = args.bundle or demo_bundle()
    from edgemed.bundle import Bundle

    precisions = args.precision or Bundle.load(bundle).precisions
    for backend in args.backend:
        for precision in precisions:
            with Pipeline.from_bundle(
                bundle, backend, precision=precision, check_modality=False
            ) as pipe:
                print(backend, precision, write_expected(pipe))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
