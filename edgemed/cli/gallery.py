"""``gallery build``, ``gallery add`` and ``match``: similar-case retrieval from the CLI.

``edgemed gallery build INPUT... --bundle B --out G`` runs an embedding bundle on the
inputs and stores one L2-normalised embedding per slice in the gallery folder ``G``
(:mod:`edgemed.gallery`); ``gallery add`` adds to an existing one (made by the same
bundle, else ``GALLERY_BUNDLE_MISMATCH``); ``edgemed match INPUT --gallery G -k 5``
prints the k nearest entries by cosine similarity for each slice of the input.

Entry ids: ``--id`` per input (user-chosen), else the pipeline's salted input id
(``EDGEMED_ID_SALT``; random per run without it); a volume's slices get ``#1``, ``#2``,
... Never a file name. ``--label`` is optional free text (one for all inputs, or one
per input).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgemed.cli.options import runtime, runtime_options
from edgemed.errors import OutputError, UsageError

__all__ = ["register", "similar_bundle"]


def similar_bundle() -> Path:
    """The similar-case demo bundle shipped inside the package (a demonstration model
    trained on synthetic phantoms; not for clinical use)."""
    return Path(__file__).resolve().parent.parent / "data" / "similar"


def _entry_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("inputs", nargs="+", metavar="INPUT", help="image file or DICOM series folder")
    sp.add_argument(
        "--bundle", default=None, help="embedding bundle (default: the similar-case demo)"
    )
    sp.add_argument(
        "--id",
        dest="ids",
        action="append",
        default=None,
        metavar="ID",
        help="entry id of each input, in order (default: the salted input id)",
    )
    sp.add_argument(
        "--label",
        dest="labels",
        action="append",
        default=None,
        metavar="TEXT",
        help="label stored with the entries: once for all inputs, or once per input",
    )
    runtime_options(sp)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    g = sub.add_parser("gallery", help="build or extend a similar-case gallery of embeddings")
    gsub = g.add_subparsers(dest="gallery_command", metavar="ACTION")
    gsub.required = True
    build = gsub.add_parser("build", help="a new gallery from images (embedding bundle)")
    _entry_options(build)
    build.add_argument("--out", required=True, metavar="G", help="gallery folder to write")
    build.add_argument("--overwrite", action="store_true", help="replace an existing gallery")
    build.set_defaults(handler=_cmd_build)
    add = gsub.add_parser("add", help="add images to a gallery (same bundle)")
    _entry_options(add)
    add.add_argument("--gallery", required=True, metavar="G", help="gallery folder")
    add.set_defaults(handler=_cmd_add)

    match = sub.add_parser("match", help="the k most similar gallery entries for an image")
    match.add_argument("input", metavar="INPUT", help="image file or DICOM series folder")
    match.add_argument("--gallery", required=True, metavar="G", help="gallery folder")
    match.add_argument(
        "--bundle", default=None, help="the bundle that made the gallery (default: the demo)"
    )
    match.add_argument("-k", type=int, default=5, help="how many matches (default 5)")
    match.add_argument(
        "--index",
        default="exact",
        choices=["exact", "faiss", "faiss-hnsw"],
        help="exact NumPy search (default), or faiss-cpu: exact or HNSW (approximate)",
    )
    match.add_argument("--json", action="store_true", help="print the matches as JSON")
    runtime_options(match)
    match.set_defaults(handler=_cmd_match)


def _pipeline(args: argparse.Namespace) -> Any:
    from edgemed.pipeline import Pipeline

    pipe = Pipeline.from_bundle(args.bundle or similar_bundle(), options=runtime(args))
    if pipe.bundle.task != "embedding":
        pipe.close()
        raise UsageError(
            f"galleries hold embeddings; {pipe.bundle.name} is a {pipe.bundle.task} bundle",
            code="USAGE_TASK",
        )
    return pipe


def _labels(args: argparse.Namespace) -> list[str | None]:
    n = len(args.inputs)
    given = args.labels or []
    if len(given) not in (0, 1, n):
        raise UsageError(f"--label: give one for all inputs or one per input ({n})")
    return [None] * n if not given else (given * n if len(given) == 1 else list(given))


def _ids(args: argparse.Namespace) -> list[str | None]:
    n = len(args.inputs)
    if args.ids is None:
        return [None] * n
    if len(args.ids) != n:
        raise UsageError(f"--id: give one per input ({n}), in order")
    return list(args.ids)


def _fill(args: argparse.Namespace, pipe: Any, gallery: Any) -> int:
    """Embed every input and add its slices; returns the entries added."""
    from edgemed.gallery import entry_ids

    ids, labels, added = _ids(args), _labels(args), 0
    for item, base, label in zip(args.inputs, ids, labels, strict=True):
        result = pipe(item)
        rows = result.embedding
        names = entry_ids(base or result.provenance["input_id"], len(rows))
        gallery.add(rows, names, [label] * len(rows), precision=result.provenance["precision"])
        added += len(rows)
    return added


def _cmd_build(args: argparse.Namespace) -> int:
    from edgemed.gallery import SIDECAR, Gallery

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise OutputError("--out must be a folder", code="OUTPUT_NOT_A_DIRECTORY", path=out)
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        what = "a gallery" if (out / SIDECAR).is_file() else "files"
        raise OutputError(
            f"--out holds {what}; pass --overwrite to replace it", code="OUTPUT_EXISTS", path=out
        )
    with _pipeline(args) as pipe:
        dims = int(pipe.backend.outputs[0].shape[-1])
        gallery = Gallery.create(pipe.bundle, dims)
        added = _fill(args, pipe, gallery)
    gallery.save(out)
    print(
        f"gallery  {out}/ ({added} entries, {gallery.dimensions} dims, "
        f"{pipe.bundle.name} {pipe.bundle.version})"
    )
    return 0


def _cmd_add(args: argparse.Namespace) -> int:
    from edgemed.gallery import Gallery

    with _pipeline(args) as pipe:
        gallery = Gallery.load(args.gallery, bundle=pipe.bundle)
        added = _fill(args, pipe, gallery)
    gallery.save(args.gallery)
    print(f"gallery  {args.gallery}/ (+{added}, {len(gallery)} entries)")
    return 0


def _cmd_match(args: argparse.Namespace) -> int:
    from edgemed.gallery import Gallery

    if args.k < 1:
        raise UsageError("-k must be at least 1")
    with _pipeline(args) as pipe:
        gallery = Gallery.load(args.gallery, bundle=pipe.bundle)  # before any input is read
        result = pipe(args.input)
    found = gallery.search(result.embedding, args.k, index=args.index)
    if args.json:
        doc = {
            "gallery": {"entries": len(gallery), **gallery.bundle},
            "index": args.index,
            "slices": [
                {"slice": i + 1, "matches": [m.to_dict() for m in ms]} for i, ms in enumerate(found)
            ],  # fmt: skip
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(f"match    {len(gallery)} gallery entries, {args.index} search, k={args.k}")
    for i, ms in enumerate(found):
        if len(found) > 1:
            print(f"  slice {i + 1}")
        for rank, m in enumerate(ms, 1):
            label = f"  [{m.label}]" if m.label else ""
            print(f"  {rank:2d}. {m.similarity:+.4f}  {m.id}{label}")
    return 0
