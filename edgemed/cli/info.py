"""``info``: describe a bundle."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["provenance_lines", "register"]

_WIDTH = 120  # a provenance line longer than this is cut (the whole is in --json)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    info = sub.add_parser("info", help="describe a bundle")
    info.add_argument("bundle", nargs="?", default=None, help="bundle directory (default: demo)")
    info.add_argument("--json", action="store_true", help="print the manifest as JSON")
    info.set_defaults(handler=_cmd_info)


def _cmd_info(args: argparse.Namespace) -> int:
    from edgemed.bundle import Bundle
    from edgemed.pipeline import demo_bundle

    bundle = Bundle.load(args.bundle or demo_bundle())
    if args.json:
        print(json.dumps(bundle.to_dict(), indent=2))
        return 0
    pre = bundle.preprocess
    intensity = ", ".join(f"window {w.center:g}/{w.width:g}" for w in pre.windows) or (
        f"clip {pre.clip[0]:g}..{pre.clip[1]:g}" if pre.clip else "values as stored"
    )
    lines = [
        f"{bundle.name} {bundle.version}  ({bundle.task})",
        f"  {bundle.description}" if bundle.description else None,
        f"  path         {bundle.root}",
        f"  labels       {', '.join(f'{i}:{n}' for i, n in enumerate(bundle.labels))}",
        f"  modalities   {', '.join(bundle.modalities) or 'any'} (DICOM inputs)",
        f"  input        {bundle.input.name} {bundle.input.layout or ''} "
        f"[{', '.join(str(s) for s in bundle.input.shape)}] {bundle.input.dtype}",
        *(
            f"  output       {o.name} [{', '.join(str(s) for s in o.shape)}] {o.dtype}"
            for o in bundle.outputs
        ),
        f"  preprocess   {intensity}; scale {pre.scale}; {pre.resize} to "
        f"{pre.height}x{pre.width}; {pre.num_channels} channels{' + edges' if pre.edges else ''}"
        f"; {pre.dtype}",
        # Each head has its own spec (segmentation: activation, decision; embedding:
        # normalize): its fields, not one head's names.
        "  postprocess  "
        + (", ".join(f"{k} {v}" for k, v in bundle.postprocess.to_dict().items()) or "none"),
        f"  signature    {bundle.describe_signature()}",
        "  artifacts    (sha256 verified)",
        *(
            f"    {a.precision:5s} {a.kind:6s} {a.path}  {a.sha256[:16]}…  "
            f"{(a.bytes or 0) / 1e6:.2f} MB"
            for a in bundle.artifacts
        ),
    ]
    provenance = provenance_lines(bundle.provenance)
    if provenance:
        lines += ["  provenance   (edgemed info --json has all of it)", *provenance]
    print("\n".join(line for line in lines if line is not None))
    return 0


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _cut(text: str, width: int = _WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _brief(value: Any) -> str:
    """One short phrase for any JSON value: scalars as they are, short lists of scalars
    joined, everything else counted."""
    if _scalar(value):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, list):
        if value and len(value) <= 4 and all(_scalar(v) for v in value):
            return ", ".join(_brief(v) for v in value)
        return f"{len(value)} entries"
    return f"{len(value)} fields" if isinstance(value, Mapping) else type(value).__name__


def _generic(value: Any) -> str:
    if isinstance(value, Mapping):
        parts = [f"{k} {_brief(v)}" for k, v in value.items() if v not in (None, [], {})]
        return "; ".join(parts) or "(empty)"
    return _brief(value)


def _exported(e: Mapping[str, Any]) -> str:
    source, onnx, versions = e.get("source") or {}, e.get("onnx") or {}, e.get("versions") or {}
    parts = [f"{source.get('model')} ({source.get('kind')})" if source.get("model") else None]
    if onnx.get("opset"):
        exporter = str(onnx.get("exporter") or "").split(" ")[0]
        parts.append(f"ONNX opset {onnx['opset']}" + (f" ({exporter})" if exporter else ""))
    made = [p for p in ("fp16", "int8") if isinstance(e.get(p), Mapping)]
    if made:
        parts.append("+".join(made))
    parts += [f"{k} {versions[k]}" for k in ("torch",) if k in versions]
    if source.get("weights"):
        parts.append(f"weights: {source['weights']}")
    return ", ".join(p for p in parts if p)


def _parity(p: Mapping[str, Any]) -> str:
    cases = [c for c in (p.get("cases") or {}).values() if isinstance(c, Mapping)]
    # max_abs_over_range: bundles exported since the range-relative metric; max_rel: older
    # ones (the shipped demo among them).
    for key, words in (
        ("max_abs_over_range", "max error / output range"),
        ("max_rel", "max relative error"),
    ):
        worst = max((float(c[key]) for c in cases if key in c), default=None)
        if worst is not None:
            return f"{words} {worst:.1e} over {len(cases)} cases (tolerance {p.get('tolerance')})"
    return _generic(p)


def _calibration(c: Mapping[str, Any]) -> str:
    parts = []
    for key in ("calibration", "validation"):
        part = c.get(key)
        if isinstance(part, Mapping) and "images" in part:
            parts.append(f"{key} {part['images']} images ({part.get('slices', '?')} slices)")
    return "; ".join(parts) or _generic(c)


def _accuracy(a: Mapping[str, Any]) -> str:
    parts = []
    for name, v in (a.get("variants") or {}).items():
        if not isinstance(v, Mapping):
            continue
        passed = v.get("passed")
        verdict = "passed" if passed is True else "FAILED" if passed is False else ""
        metric = next(
            (f"{k} {x:g}" for k, x in v.items() if isinstance(x, float) and k != "passed"), ""
        )
        parts.append(f"{name} {verdict}" + (f" ({metric})" if metric else ""))
    return ", ".join(parts) or _generic(a)


#: What ``edgemed export`` records, summarised by meaning; any other entry generically.
_KNOWN = {
    "export": _exported,
    "parity": _parity,
    "calibration": _calibration,
    "accuracy": _accuracy,
}


def provenance_lines(provenance: Mapping[str, Any]) -> list[str]:
    """``edgemed info``'s provenance lines: one per entry, nested entries summarised (an
    exported bundle's provenance is all nested: export, parity, calibration, accuracy);
    empty when there is nothing to say."""
    lines = []
    for key, value in provenance.items():
        if value in (None, "", [], {}):
            continue
        try:
            text = _KNOWN[key](value) if key in _KNOWN and isinstance(value, Mapping) else None
        except (TypeError, ValueError, KeyError, AttributeError):  # another tool's shape
            text = None
        lines.append(_cut(f"    {key}: {text or _generic(value)}"))
    return lines
