"""``edgemed demo --task classification|embedding|all``: the findings and similar-case
demo bundles on real CT slices and on findings phantoms with known ground truth.

Inputs: pydicom's real CT test slices (``CT_small.dcm``; ``693_J2KI.dcm`` where a JPEG
2000 decoder is installed) and a few seeded findings phantoms
(:mod:`edgemed.export.reference.findings`), whose ground truth is printed beside the
model's answer. Real slices have no ground truth: what the model says about them is
shown as it is.

``--out`` receives (one complete set, published at the end like ``run``'s)::

    classification/input-0001/{result.json, findings.png} ...
    embedding/gallery/                       the gallery the queries are matched against
    embedding/input-0001/{result.json, matches.json, matches.png} ...
    index.json                               what was run, in order

Entry ids and folder names are positional or phantom numbers, never file names.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from edgemed.cli.outdir import OutputDir
from edgemed.errors import EdgemedError, InputError

__all__ = ["DEMO_GALLERY_SEED", "DEMO_QUERY_SEED", "findings_bundle", "run_demo_tasks"]

DEMO_GALLERY_SEED = 41001  # the demo gallery's phantoms
DEMO_QUERY_SEED = 41002  # the synthetic query / classification phantoms
GALLERY_SIZE = 60
K = 5


def findings_bundle() -> Path:
    """The findings classifier demo bundle shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "data" / "findings"


def _real_slices() -> list[tuple[str, str]]:
    """``(title, path)`` of pydicom's real CT slices usable here."""
    from pydicom.data import get_testdata_file

    out = []
    ct = get_testdata_file("CT_small.dcm")
    if not isinstance(ct, str):
        raise InputError(
            "pydicom's CT_small.dcm test file is not installed", code="INPUT_NOT_FOUND"
        )
    out.append(("CT_small.dcm (real CT, pydicom)", ct))
    j2k = get_testdata_file("693_J2KI.dcm")  # a 512x512 CT, lossy JPEG 2000
    if isinstance(j2k, str):
        try:
            from edgemed.io import read_image

            read_image(j2k)
            out.append(
                ("693_J2KI.dcm (real head CT, pydicom: an anatomy the model never saw)", j2k)
            )
        except EdgemedError:  # no JPEG 2000 decoder installed: skip it
            pass
    return out


def _phantoms(seed: int, kinds: list[tuple[str, tuple[str, ...]]]) -> list[Any]:
    """Findings phantoms of the asked kinds (``(region, kinds)``), seeded; each is drawn
    again with the next child seed until its slice shows all of them."""
    from edgemed.export.reference.findings import make_findings_phantom

    seqs = iter(np.random.SeedSequence(seed).spawn(400))
    out = []
    for region, want in kinds:
        for s in seqs:
            ph = make_findings_phantom(np.random.default_rng(s), 384, region, want or None,
                                       p_none=1.0 if not want else 0.3)  # fmt: skip
            if set(ph.present) == set(want):
                out.append(ph)
                break
    return out


def _image(ph: Any) -> Any:
    """A phantom as the CT image it stands for (HU, its spacing), not a bare array."""
    from edgemed.io.image import MedicalImage

    return MedicalImage(
        np.ascontiguousarray(ph.hu),
        spacing=tuple(float(s) for s in ph.phantom.spacing_mm),
        modality="CT",
        metadata={"format": "array", "spacing_source": "user"},
    )


def _truth_text(ph: Any) -> str:
    if not ph.findings:
        return "no finding"
    return ", ".join(f"{f.kind} {f.size_mm:.0f} mm" for f in ph.findings if f.kind in ph.present)


def _classification(args: argparse.Namespace, options: Any, out: Path) -> list[dict[str, Any]]:
    from edgemed.pipeline import Pipeline
    from edgemed.render import summary, write_result
    from edgemed.report_images import canonical_slice, render_findings, write_png

    phantoms = _phantoms(
        DEMO_QUERY_SEED,
        [("thorax", ("lung_nodule_solid", "pleural_effusion")),
         ("abdomen", ("liver_lesion_hypodense",)), ("thorax", ("lung_nodule_ground_glass",)),
         ("pelvis", ())],
    )  # fmt: skip
    inputs: list[tuple[str, Any, str | None]] = [(t, p, None) for t, p in _real_slices()]
    inputs += [(f"findings phantom {i + 1} (synthetic)", _image(ph), _truth_text(ph))
               for i, ph in enumerate(phantoms)]  # fmt: skip
    entries = []
    with Pipeline.from_bundle(findings_bundle(), options=options) as pipe:
        cuts = list(getattr(pipe.bundle.postprocess, "decision_thresholds", ()))
        for n, (title, item, truth) in enumerate(inputs, 1):
            result = pipe(item)
            target = out / "classification" / f"input-{n:04d}"
            written = write_result(result, target)
            image = render_findings(
                canonical_slice(result.image), result.classes[0], result.labels, cuts,
                title=title.split(" (")[0],
            )  # fmt: skip
            written.append(write_png(target / "findings.png", image))
            shown = [Path(args.out) / p.relative_to(out) for p in written]
            print(summary(result, shown, f"classification {n}/{len(inputs)}: {title}"))
            if truth is not None:
                print(f"  truth    {truth}")
            entries.append({"task": "classification", "input": n, "title": title,
                            "dir": str(target.relative_to(out)), "truth": truth})  # fmt: skip
    return entries


def _embedding(args: argparse.Namespace, options: Any, out: Path) -> list[dict[str, Any]]:
    from edgemed.cli.gallery import similar_bundle
    from edgemed.export.reference.findings import make_findings_phantom
    from edgemed.fsutil import write_json
    from edgemed.gallery import Gallery
    from edgemed.pipeline import Pipeline
    from edgemed.render import summary, write_result
    from edgemed.report_images import canonical_slice, render_matches, write_png

    seqs = np.random.SeedSequence(DEMO_GALLERY_SEED).spawn(GALLERY_SIZE)
    gallery_ph = [make_findings_phantom(np.random.default_rng(s), 256) for s in seqs]
    queries = _phantoms(
        DEMO_QUERY_SEED + 1,
        [("thorax", ("lung_nodule_solid",)), ("abdomen", ("liver_lesion_hyperdense",)),
         ("thorax", ("pleural_effusion",))],
    )  # fmt: skip
    inputs: list[tuple[str, Any, str | None]] = [(t, p, None) for t, p in _real_slices()]
    inputs += [(f"findings phantom {i + 1} (synthetic)", _image(ph), ph.label())
               for i, ph in enumerate(queries)]  # fmt: skip
    entries = []
    with Pipeline.from_bundle(similar_bundle(), options=options) as pipe:
        results = pipe.run_batch([_image(ph) for ph in gallery_ph])
        gallery = Gallery.create(pipe.bundle, results[0].embedding.shape[1])
        gallery.add(
            np.concatenate([r.embedding for r in results]),
            [f"phantom-{i + 1:03d}" for i in range(len(gallery_ph))],
            [ph.label() for ph in gallery_ph],
            precision=results[0].provenance["precision"],
        )
        gallery.save(out / "embedding" / "gallery")
        print(f"gallery    {len(gallery)} findings phantoms (synthetic, seed {DEMO_GALLERY_SEED}), "
              f"embedded by {pipe.bundle.name} {pipe.bundle.version}")  # fmt: skip
        for n, (title, item, truth) in enumerate(inputs, 1):
            result = pipe(item)
            target = out / "embedding" / f"input-{n:04d}"
            written = write_result(result, target)
            (matches,) = gallery.search(result.embedding[:1], K)
            written.append(write_json(target / "matches.json", {
                "gallery": {"entries": len(gallery), **gallery.bundle},
                "matches": [m.to_dict() for m in matches]}))  # fmt: skip
            tiles = [(gallery_ph[m.row].hu, m.label or m.id, m.similarity) for m in matches]
            image = render_matches(canonical_slice(result.image), tiles,
                                   title=truth or title.split(" (")[0])  # fmt: skip
            written.append(write_png(target / "matches.png", image))
            shown = [Path(args.out) / p.relative_to(out) for p in written]
            print(summary(result, shown, f"embedding {n}/{len(inputs)}: {title}"))
            if truth is not None:
                print(f"  truth    {truth}")
            for rank, m in enumerate(matches, 1):
                print(f"  match {rank}  cosine {m.similarity:.3f}  {m.id}  [{m.label}]")
            entries.append({"task": "embedding", "input": n, "title": title,
                            "dir": str(target.relative_to(out)), "truth": truth})  # fmt: skip
    return entries


def run_demo_tasks(args: argparse.Namespace, options: Any) -> int:
    """The demo for ``args.task`` (``classification``, ``embedding`` or ``all``)."""
    from edgemed.fsutil import write_json

    tasks = ("classification", "embedding") if args.task == "all" else (args.task,)
    with OutputDir(args.out, overwrite=args.overwrite) as out:
        entries: list[dict[str, Any]] = []
        for task in tasks:
            run = _classification if task == "classification" else _embedding
            entries += run(args, options, out.path)
        index = {"complete": True, "demo": list(tasks), "inputs": len(entries)}
        write_json(out.path / "index.json", {**index, "results": entries})
        final = out.publish()
    print(f"  wrote    {final}/ (index.json)")
    print("  note     demonstration models trained on synthetic phantoms; not for clinical use")
    return 0
