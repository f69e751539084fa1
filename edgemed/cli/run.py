"""``demo`` and ``run``: a bundle on inputs, results written and summarised.

Outputs go through :class:`edgemed.cli.outdir.OutputDir`: ``--out`` is checked before
the first input is read, filled in a staging directory beside it and renamed into place
at the end, so it holds one run's complete set of files. With several inputs,
``index.json`` lists every input by position with its status and error code, also when
the run was interrupted (then marked incomplete).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from edgemed.cli.options import runtime, runtime_options
from edgemed.cli.outdir import OutputDir
from edgemed.cli.progress import Progress
from edgemed.cli.signals import ignored
from edgemed.errors import EdgemedError, InputError, OutputError, UsageError
from edgemed.render import summary, write_result

__all__ = ["register"]


def _overwrite_option(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an --out that holds earlier results (as a whole, at the end)",
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser("demo", help="run the demo model on a real CT slice")
    demo.add_argument("--out", default="edgemed-demo", help="output directory")
    demo.add_argument(
        "--task",
        default=None,
        choices=["classification", "embedding", "all"],
        help="instead of the segmentation demo: the findings classifier, similar-case "
        "matching against a gallery, or both, on real CT slices and findings phantoms",
    )
    demo.add_argument(
        "--3d",
        dest="volume",
        action="store_true",
        help="the 3D demo: a small 3D U-Net by sliding window on a CT volume (a synthetic "
        "phantom, or --input); writes the mask, three orthogonal views and the volumes",
    )
    demo.add_argument(
        "--input",
        default=None,
        metavar="PATH",
        help="with --3d: a NIfTI volume or DICOM series folder instead of the phantom",
    )
    _overwrite_option(demo)
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
    run.add_argument(
        "--out",
        required=True,
        help="output directory: new, empty, or earlier results with --overwrite",
    )
    _overwrite_option(run)
    run.add_argument("--quiet", action="store_true", help="no progress display on a terminal")
    run.add_argument(
        "--dicom",
        action="store_true",
        help="segmentation of DICOM input: also write seg.dcm (a multi-frame DICOM "
        "Segmentation referencing the source slices) and sr.dcm (the per-label areas or "
        "volumes as a TID 1500 report); needs the listen extra",
    )
    runtime_options(run)
    run.set_defaults(handler=_cmd_run)


def _cmd_demo(args: argparse.Namespace) -> int:
    options = runtime(args)
    if args.volume or args.input is not None:
        if not args.volume or args.task is not None:
            raise UsageError("--input goes with --3d, and --3d not with --task")
        from edgemed.cli.demo3d import run_demo_3d

        return run_demo_3d(args, options)
    if args.task is not None:
        from edgemed.cli.demo_tasks import run_demo_tasks

        return run_demo_tasks(args, options)
    from pydicom.data import get_testdata_file

    from edgemed.pipeline import Pipeline, demo_bundle

    ct = get_testdata_file("CT_small.dcm")  # ships inside pydicom; nothing is downloaded
    if not isinstance(ct, str):
        raise InputError(
            "pydicom's CT_small.dcm test file is not installed", code="INPUT_NOT_FOUND"
        )
    title = "edgemed demo: CT_small.dcm (pydicom's real CT test slice)"
    with (
        OutputDir(args.out, overwrite=args.overwrite) as out,
        Pipeline.from_bundle(demo_bundle(), options=options) as pipe,
    ):
        pipe(ct)  # warm-up: the first call pays one-time allocation costs
        _run_one(args, pipe, ct, out, Progress(1, quiet=True), title)
    print("  note     demonstration model trained on synthetic phantoms; not for clinical use")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    options = runtime(args)
    from edgemed.pipeline import Pipeline, demo_bundle

    progress = Progress(len(args.inputs), quiet=args.quiet)
    try:  # the live line is cleared before main() prints an error or interruption
        # --out first: a bad one is refused before the model loads or any input is read.
        with (
            OutputDir(args.out, overwrite=args.overwrite) as out,
            Pipeline.from_bundle(args.bundle or demo_bundle(), options=options) as pipe,
        ):
            if pipe.bundle.volume is not None:  # a 3D model counts sliding windows
                progress.unit = "window"
            if args.dicom and pipe.bundle.task != "segmentation":
                raise UsageError(f"--dicom needs a segmentation bundle, not {pipe.bundle.task}")
            if len(args.inputs) == 1:
                _run_one(args, pipe, args.inputs[0], out, progress, "input 1/1")
                return 0
            return _run_several(args, pipe, out, progress)
    finally:
        progress.close()


def _infer(pipe: Any, item: str, position: int, progress: Progress) -> Any:
    progress.begin(position)
    return pipe.run_batch([item], progress=progress.slices)[0]


def _written_at(written: list[Path], staging: Path, final: Path) -> list[Path]:
    """Where the files written into ``staging`` are once it has become ``final``."""
    return [final / p.relative_to(staging) for p in written]


def _run_one(
    args: argparse.Namespace, pipe: Any, item: str, out: OutputDir, progress: Progress, title: str
) -> None:
    """One input, its files directly in ``--out``. When it fails, ``--out`` is published
    empty: nothing from an earlier run (``--overwrite``) survives to look like this
    run's result."""
    try:
        result = _infer(pipe, item, 1, progress)
        written = write_result(result, out.path, dicom=getattr(args, "dicom", False))
    except EdgemedError as exc:
        progress.end(1, f"failed {exc.code}")
        out.clear()
        with contextlib.suppress(OutputError):  # the input's error is the one to report
            out.publish()
        raise
    progress.end(1, "ok")
    final = out.publish()
    progress.close()
    print(summary(result, _written_at(written, out.path, final), title))


def _input_dir(position: int) -> str:
    # Positional, never derived from file names (which may carry patient names or UIDs).
    return f"input-{position:04d}"


def _run_several(args: argparse.Namespace, pipe: Any, out: OutputDir, progress: Progress) -> int:
    """Input by input (so each result's timings are its own; the API's ``run_batch``
    shares backend calls between inputs instead) into ``input-0001/``, ...; one failure
    does not stop the others. Returns the exit code of the first failure (0 if none)."""
    n = len(args.inputs)
    entries: list[dict[str, Any]] = [{"input": k + 1, "status": "not_run"} for k in range(n)]
    exit_code, stopped = 0, None
    try:
        for k, item in enumerate(args.inputs):
            target = out.path / _input_dir(k + 1)
            entries[k]["status"] = "interrupted"  # until it has finished either way
            try:
                result = _infer(pipe, item, k + 1, progress)
                written = write_result(result, target, dicom=args.dicom)
                # Its status says whether its folder stays: an interrupt from here on
                # keeps both, one before this line removes both.
                entries[k] = {"input": k + 1, "status": "ok", "dir": target.name}
            except EdgemedError as exc:
                shutil.rmtree(target, ignore_errors=True)  # no partial result left
                entries[k] = {"input": k + 1, "status": "failed", "error": exc.code}
                exit_code = exit_code or exc.exit_code
                progress.end(k + 1, f"failed {exc.code}")
                with progress.paused():
                    if args.debug:
                        traceback.print_exc()
                    print(f"edgemed: error {exc} [input {k + 1}/{n}]", file=sys.stderr)
                if exc.code == "GPU_FATAL":  # the pipeline refuses all further work
                    stopped = exc.code
                    break
                continue
            progress.end(k + 1, "ok")
            shown = _written_at(written, out.path, out.target)
            with progress.paused():
                print(summary(result, shown, f"input {k + 1}/{n}"), flush=True)
    except KeyboardInterrupt as exc:
        with ignored():  # a second Ctrl-C must not cut the index short
            for e in entries:  # the one being worked on: its folder may be partial
                if e["status"] == "interrupted":
                    shutil.rmtree(out.path / _input_dir(e["input"]), ignore_errors=True)
            # Inputs finished before the interrupt are kept, listed in an index marked
            # incomplete; with none finished, --out is left as it was.
            if any(e["status"] in ("ok", "failed") for e in entries):
                name = signal.Signals(getattr(exc, "signum", signal.SIGINT)).name
                _publish_index(out, entries, stopped=name)
        raise
    _publish_index(out, entries, stopped=stopped)
    return exit_code


def _publish_index(out: OutputDir, entries: list[dict[str, Any]], *, stopped: str | None) -> None:
    from edgemed.fsutil import write_json

    index: dict[str, Any] = {
        # complete: every input was attempted (each is "ok" or "failed").
        "complete": stopped is None,
        "inputs": len(entries),
        "ok": sum(e["status"] == "ok" for e in entries),
        "failed": sum(e["status"] == "failed" for e in entries),
    }
    if stopped is not None:
        index["stopped_by"] = stopped
    index["results"] = entries
    write_json(out.path / "index.json", index)  # written last: it marks the set complete
    out.publish()
