"""``check``: the bundle's validation gate on this machine's backend and precision.

The export gated each precision variant against FP32 on its validation images; a device
runs other kernels (an engine ``edgemed build`` made there, OpenVINO, bf16 arithmetic), so
before a variant is trusted there, ``edgemed check`` runs the same gate there: the
bundle's shipped validation images (``bundle.json`` ``validation``) through the whole
pipeline on the chosen backend and precision, against the FP32 ONNX on ONNX Runtime (the
export's reference), with the task head's metric and the limits the export recorded.
Outside them: the per-label table and exit 6 (``ACCURACY_DEVICE``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgemed.errors import AccuracyGateError, BundleError, UsageError

__all__ = ["check_bundle", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    from edgemed.cli.options import runtime_options

    p = sub.add_parser(
        "check",
        help="run the bundle's validation gate on this machine's backend and precision",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("bundle", help="bundle directory")
    runtime_options(p)
    p.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a stricter gate limit than the bundle's (e.g. max_dice_drop=0.001); "
        "limits can only be tightened",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_cmd_check)


def _limits(bundle_limits: Mapping[str, float], given: list[str]) -> dict[str, float]:
    """The bundle's limits with ``NAME=VALUE`` tightenings (``max_*`` lower, ``min_*``
    higher); a looser or unknown one is a usage error (a gate is not loosened here)."""
    limits = dict(bundle_limits)
    for text in given:
        name, sep, value = text.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not sep or name not in limits or number != number:
            raise UsageError(
                f"--threshold takes NAME=VALUE for one of {', '.join(limits) or 'none'}, "
                f"got {text!r}"
            )
        old = limits[name]
        looser = number > old if name.startswith("max_") else number < old
        if looser:
            raise UsageError(f"--threshold {name}={number:g} is looser than the bundle's {old:g}")
        limits[name] = number
    return limits


def check_bundle(
    path: str | Path, options: Any, thresholds: list[str] | None = None
) -> dict[str, Any]:
    """Run the validation gate; returns the report (``passed``, ``failures``, the head's
    metric, what ran). Raises ``BundleError`` ``BUNDLE_NO_VALIDATION`` when the bundle
    ships no validation set."""
    from edgemed.bundle import Bundle
    from edgemed.pipeline import Pipeline

    bundle = Bundle.load(path, trusted_key=options.trusted_key)
    if bundle.validation is None:
        raise BundleError(
            "the bundle ships no validation set (bundle.json 'validation'); export it "
            "with --validation to include one",
            code="BUNDLE_NO_VALIDATION",
            path=bundle.root,
        )
    limits = _limits(bundle.validation.thresholds, thresholds or [])
    # The validation images are read from their verified bytes: a file swapped after
    # the bundle loaded is BUNDLE_INTEGRITY, never a silently different gate.
    items = [bundle.read_artifact(f) for f in bundle.validation.files]
    reference = options.replace(backend="onnxruntime", precision="fp32", device="CPU")
    with Pipeline(bundle, _backend(bundle, reference), reference) as ref:
        want = [ref.head.values(r.output) for r in ref.run_batch(items)]
    with Pipeline(bundle, _backend(bundle, options), options) as dev:
        got = [dev.head.values(r.output) for r in dev.run_batch(items)]
        ran = dev.backend.info()
        head = dev.head
    flat_want = [v for values in want for v in values]
    flat_got = [v for values in got for v in values]
    metric = head.metric(flat_want, flat_got)
    failures = head.gate(metric, limits)
    return {
        "bundle": bundle.name,
        "backend": ran,
        "reference": "FP32 ONNX on ONNX Runtime (CPU), as the export's gate",
        "images": len(items),
        "slices": len(flat_want),
        "thresholds": limits,
        "passed": not failures,
        "failures": failures,
        "metric": metric,
        "table": head.gate_table({ran["precision"]: metric}, limits),
    }


def _backend(bundle: Any, options: Any) -> Any:
    from edgemed.backends import create_backend

    return create_backend(None, bundle, options=options)


def _cmd_check(args: argparse.Namespace) -> int:
    from edgemed.cli.options import runtime

    options = runtime(args)
    report = check_bundle(args.bundle, options, args.threshold)
    ran = report["backend"]
    what = f"{ran['backend']} {ran['precision']} on {ran['device']}"
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "table"}, indent=2))
    else:
        print(
            f"check {report['bundle']}: {what}, {report['images']} validation image(s), "
            f"{report['slices']} slice(s), against {report['reference']}"
        )
        print("\n".join(report["table"]))
    if not report["passed"]:
        raise AccuracyGateError(
            f"{what} is outside the bundle's validation gate: " + "; ".join(report["failures"]),
            code="ACCURACY_DEVICE",
            report=report,
            table="\n".join(report["table"]),
        )
    if not args.json:
        print(f"PASS: {what} is within the bundle's validation gate")
    return 0
