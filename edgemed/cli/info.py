"""``info``: describe a bundle."""

from __future__ import annotations

import argparse
import json

__all__ = ["register"]


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
        f"  postprocess  {bundle.postprocess.activation}, {bundle.postprocess.decision}",
        f"  signature    {bundle.describe_signature()}",
        "  artifacts    (sha256 verified)",
        *(
            f"    {a.precision:5s} {a.kind:6s} {a.path}  {a.sha256[:16]}…  "
            f"{(a.bytes or 0) / 1e6:.2f} MB"
            for a in bundle.artifacts
        ),
    ]
    if bundle.provenance:
        lines.append("  provenance")
        lines += [
            f"    {k}: {v}" for k, v in bundle.provenance.items() if not isinstance(v, (dict, list))
        ]
    print("\n".join(line for line in lines if line is not None))
    return 0
