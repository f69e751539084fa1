"""``demo`` and ``run``: a bundle on inputs, results written and summarised."""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from edgemed.cli.options import check_runtime_options, open_pipeline, runtime_options
from edgemed.errors import InputError
from edgemed.render import summary, write_result

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser("demo", help="run the demo model on a real CT slice")
    demo.add_argument("--out", default="edgemed-demo", help="output directory")
    runtime_options(demo)
    demo.set_defaults(handler=_cmd_demo)

    run = sub.add_parser("run", help="run a bundle on images, DICOM series or volumes")
    run.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="DICOM/NIfTI/PNG/JPEG/TIFF/NPY file or DICOM series directory",
    )
    run.add_argument("--bundle", default=None, help="bundle directory (default: the demo)")
    run.add_argument("--out", required=True, help="output directory")
    runtime_options(run)
    run.set_defaults(handler=_cmd_run)


def _cmd_demo(args: argparse.Namespace) -> int:
    check_runtime_options(args)
    from pydicom.data import get_testdata_file

    from edgemed.pipeline import demo_bundle

    ct = get_testdata_file("CT_small.dcm")  # ships inside pydicom; nothing is downloaded
    if ct is None:
        raise InputError(
            "pydicom's CT_small.dcm test file is not installed", code="INPUT_NOT_FOUND"
        )
    out = Path(args.out)
    with open_pipeline(args, demo_bundle()) as pipe:
        pipe(ct)  # warm-up: the first call pays one-time allocation costs
        result = pipe(ct)
    written = write_result(result, out)
    print(summary(result, written, "edgemed demo: CT_small.dcm (pydicom's real CT test slice)"))
    print("  note     demonstration model trained on synthetic phantoms; not for clinical use")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    check_runtime_options(args)
    from edgemed.fsutil import write_json
    from edgemed.pipeline import demo_bundle

    out = Path(args.out)
    several = len(args.inputs) > 1
    failures, index = 0, []
    with open_pipeline(args, args.bundle or demo_bundle()) as pipe:
        # Input by input, so each result's timings are its own (the API's run_batch
        # shares backend calls between inputs instead).
        for i, path in enumerate(args.inputs):
            try:
                result = pipe(path)
            except InputError as exc:  # one bad file must not stop the others
                failures += 1
                if args.debug:
                    traceback.print_exc()
                print(f"edgemed: error {exc}", file=sys.stderr)
                continue
            # Output names are positional, never derived from file names (which may
            # carry patient names or UIDs).
            target = out / f"input-{i + 1:04d}" if several else out
            written = write_result(result, target)
            print(summary(result, written, f"input {i + 1}/{len(args.inputs)}"))
            index.append({"input": i + 1, "dir": target.name if several else "."})
    if several:
        write_json(out / "index.json", {"results": index, "failed": failures})
    return InputError.exit_code if failures else 0
