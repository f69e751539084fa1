"""3D segmentation end to end: edgemed vs MONAI's ``sliding_window_inference`` (issue #15).

Usage (needs torch and MONAI: the export venv, ``pip install "edgemed[export-test]"``)::

    python benchmarks/volume_compare.py --out benchmarks/results
    python benchmarks/volume_compare.py --quick --out /tmp/vc     # a smoke run (~1 min)

One 3D model, one volume, the same sliding window, three (or four) pipelines:

* the model: MONAI's ``UNet(spatial_dims=3, in_channels=1, out_channels=5,
  channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2)`` (MONAI's defaults
  otherwise: instance norm, PReLU) with seeded random weights, exported once to ONNX
  (``torch.onnx.export``, dynamic batch) and wrapped in a volume bundle (``volume``
  block: ``spacing`` null, so the model runs on the source grid and nothing is
  resampled; ROI 96^3, overlap 0.25, Gaussian, ``sw_batch_size`` 4);
* the volume: a 160 x 256 x 256 (Z, Y, X) CT phantom in HU
  (``export/reference/phantoms3d.py``; a simple synthetic body where that module is
  missing), stored as an int16 NIfTI in the canonical LPS orientation;
* the pipelines, each from the NIfTI file on disk to a mask file written:

  - **edgemed**: ``Pipeline.from_bundle(bundle, backend="onnxruntime")(path)`` and
    ``edgemed.render.write_result`` (what ``edgemed run`` writes: ``mask.nii.gz``,
    ``overlay.png``, ``result.json``);
  - **MONAI + PyTorch eager**: the usual MONAI script: ``LoadImage`` ->
    ``Orientation("LPS")`` -> ``ScaleIntensityRange`` (clip) -> ``Transpose`` to the
    model's (Z, Y, X) -> ``sliding_window_inference`` with the torch module (eval,
    ``torch.inference_mode``) as predictor -> ``Activations(softmax)`` ->
    ``AsDiscrete(argmax)`` -> ``Transpose`` back -> ``SaveImage`` (uint8 NIfTI);
  - **MONAI + ONNX Runtime**: the same script with an ONNX Runtime session on the
    bundle's ``model.onnx`` as predictor;
  - **edgemed OpenVINO fp32** (only where the ``openvino`` extra is installed): edgemed
    on its OpenVINO backend, for reference.

Each pipeline runs in its **own subprocesses**, so its peak RSS (``VmHWM``) is its own:
imports, model, inputs, buffers and outputs together. Every engine gets the same intra-op
threads (``--threads``, default 2; ``OMP_NUM_THREADS`` likewise). In each process the
first run is a warm-up, reported separately (``first_run_s``) and not in the median, then
``--repeats`` timed runs; ``startup_s`` is imports plus model or session creation. The
processes alternate: ``--rounds`` rounds of one process per pipeline, so that the
machine's drift (on a shared 2-core machine one pipeline's time moved by 25 % between
runs minutes apart) falls on every pipeline alike; ``end_to_end_s`` is the median over
all timed runs of all rounds. Phases per run (read, preprocess, model calls, blending and
decision, write) come from each pipeline's own clock.

The masks are read back from the files written and compared voxel by voxel with
edgemed's. The intensity window is [-1024, 1024] HU: a width of 2048 makes MONAI's
``(x - lo) / (hi - lo)`` and edgemed's ``(x - lo) * (1 / (hi - lo))`` the same floats,
so both feed the model identical windows and any difference left comes from the sliding
window, the blending or the decision (the goal: none against MONAI + ONNX Runtime).

Goals (issue #15): edgemed at least 2x faster than MONAI + PyTorch end to end and at most
half its peak memory, with masks identical to MONAI + ONNX Runtime.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: `python benchmarks/<name>.py` imports `benchmarks.*`
    sys.path.append(str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks._common import REPO, dice, environment, write_results

__all__ = ["GOALS", "VARIANTS", "main", "make_volume", "write_bundle"]

EDGEMED = "edgemed"
TORCH = "MONAI + PyTorch eager"
ORT = "MONAI + ONNX Runtime"
OPENVINO = "edgemed OpenVINO fp32"
#: Pipeline names, in the order they run and appear in the table.
VARIANTS = (EDGEMED, TORCH, ORT, OPENVINO)

#: The issue's goals: speed-up over MONAI + PyTorch, peak RSS as a share of its peak.
GOALS = {"speedup_vs_torch": 2.0, "memory_ratio_vs_torch": 0.5, "identical_to": ORT}

LABELS = ["background", "lung", "fat", "soft_tissue", "bone"]
CLIP = (-1024.0, 1024.0)  # width 2048: division and multiplication by 1/2048 agree exactly
ROI = (96, 96, 96)
OVERLAP = 0.25
SW_BATCH = 4

#: Full run and ``--quick``: volume (Z, Y, X) and the UNet's channels and residual units.
SIZES = {
    "full": {"shape": (160, 256, 256), "channels": (16, 32, 64, 128), "res_units": 2},
    "quick": {"shape": (64, 128, 128), "channels": (8, 16, 32), "res_units": 1},
}


# -- inputs (parent) --------------------------------------------------------------------


def _simple_body(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A fallback CT-like volume in HU: an elliptic body (fat rim, soft tissue), two lungs,
    a spine, noise; used only where ``export/reference/phantoms3d.py`` is missing."""
    nz, ny, nx = shape
    z, y, x = np.meshgrid(
        np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij"
    )
    hu = np.full(shape, -1000.0, dtype=np.float32)
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2
    hu[body < 1.0] = -100.0  # fat
    hu[body < 0.8] = 40.0  # soft tissue
    for side in (-1, 1):
        lung = ((x - side * 0.38) / 0.28) ** 2 + ((y + 0.05) / 0.4) ** 2 + (z / 1.3) ** 2
        hu[lung < 1.0] = -820.0
    hu[(x / 0.1) ** 2 + ((y - 0.45) / 0.1) ** 2 < 1.0] = 700.0  # spine
    hu += rng.normal(0.0, 15.0, shape).astype(np.float32)
    return np.clip(np.round(hu), -1024, 3071).astype(np.float32)


def make_volume(shape: tuple[int, int, int], seed: int = 7) -> tuple[np.ndarray, tuple, str]:
    """A seeded CT volume of ``shape`` (Z, Y, X) in integer HU (float32), its spacing
    ``(dz, dy, dx)`` mm and where it came from.

    From ``export/reference/phantoms3d.py``: the trunk it draws, on a grid of exactly
    ``shape`` voxels (2 mm slices centred on the diaphragm, the field of view 1.1 x the
    body); else :func:`_simple_body` at 2 x 1.5 x 1.5 mm.
    """
    rng = np.random.default_rng(seed)
    try:
        from edgemed.export.reference import phantoms3d as p3
        from edgemed.export.reference.phantoms import sample_scanner

        trunk = p3.build_trunk(rng)
        x0, y0, x1, y1 = trunk.extent
        nz, ny, nx = shape
        d = max(x1 - x0, y1 - y0) * 1.1 / max(ny, nx)
        dz = 2.0
        origin = (
            -(nz - 1) / 2 * dz,
            (y0 + y1) / 2 - (ny - 1) / 2 * d,
            (x0 + x1) / 2 - (nx - 1) / 2 * d,
        )
        grid = p3.Grid(shape, (dz, d, d), origin)
        hu = p3.acquire(trunk, grid, sample_scanner(rng), rng)
        return hu.astype(np.float32), (dz, d, d), f"export/reference/phantoms3d.py (seed {seed})"
    except ImportError:
        return _simple_body(shape, rng), (2.0, 1.5, 1.5), f"simple synthetic body (seed {seed})"


def write_nifti(path: Path, hu: np.ndarray, spacing: tuple[float, float, float]) -> Path:
    """``hu`` (Z, Y, X) as an int16 NIfTI-1 in LPS (nibabel's x, y, z index axes; the
    affine negates x and y of RAS), the orientation edgemed's model sees unchanged."""
    import nibabel as nib

    dz, dy, dx = spacing
    affine = np.diag([-dx, -dy, dz, 1.0])
    img = nib.Nifti1Image(np.ascontiguousarray(hu.transpose(2, 1, 0)).astype(np.int16), affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return path


def export_model(work: Path, channels: tuple[int, ...], res_units: int, seed: int = 0) -> Path:
    """The seeded MONAI UNet: its state dict (``model.pt``) for the PyTorch pipeline and
    ``model.onnx`` (dynamic batch) for the others; returns the ONNX path."""
    import torch

    torch.manual_seed(seed)
    net = _unet(channels, res_units).eval()
    torch.save(net.state_dict(), work / "model.pt")
    path = work / "model.onnx"
    torch.onnx.export(
        net,
        (torch.zeros(1, 1, *ROI),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return path


def _unet(channels: tuple[int, ...], res_units: int) -> Any:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=len(LABELS),
        channels=tuple(channels),
        strides=(2,) * (len(channels) - 1),
        num_res_units=res_units,
    )


def write_bundle(root: Path, onnx_path: Path) -> Path:
    """A volume bundle around ``onnx_path`` (made by hand with ``write_manifest``)."""
    from edgemed.bundle import write_manifest

    root.mkdir(parents=True, exist_ok=True)
    (root / "model.onnx").write_bytes(onnx_path.read_bytes())
    k = len(LABELS)
    write_manifest(
        root,
        {
            "name": "volume-compare-unet3d",
            "version": "0.0.1",
            "task": "segmentation",
            "labels": LABELS,
            "input": {
                "name": "image",
                "shape": ["batch", 1, *ROI],
                "dtype": "float32",
                "layout": "NCDHW",
            },
            "outputs": [{"name": "logits", "shape": ["batch", k, *ROI], "dtype": "float32"}],
            "preprocess": {"size": list(ROI), "clip": list(CLIP), "scale": "unit"},
            "postprocess": {"activation": "softmax", "decision": "argmax"},
            "artifacts": [{"path": "model.onnx", "kind": "onnx", "precision": "fp32"}],
            "volume": {
                "spacing": None,
                "sliding_window": {
                    "overlap": OVERLAP,
                    "mode": "gaussian",
                    "sw_batch_size": SW_BATCH,
                },
            },
        },
    )
    return root


# -- the pipelines (each in its own child process) ----------------------------------------


def _rss_now_mb() -> float | None:
    """The current resident set (MiB) from /proc, None elsewhere."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    """This child's own peak (Linux ``VmHWM``). Not ``ru_maxrss``: Linux carries it over
    ``exec``, so every child would start at the parent's peak (the parent imported torch
    and built the volume: about 1.3 GB) and the memory column would compare nothing."""
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _edgemed_runner(work: Path, cfg: dict[str, Any], backend: str, out: Path):
    from edgemed import Pipeline
    from edgemed.render import write_result

    pipe = Pipeline.from_bundle(
        work / "bundle", backend=backend, precision="fp32", threads=cfg["threads"]
    )
    source = work / "input.nii.gz"

    def run() -> dict[str, float]:
        t0 = time.perf_counter()
        result = pipe(source)
        t1 = time.perf_counter()
        write_result(result, out)
        t2 = time.perf_counter()
        tm = result.timings
        return {
            "read_s": tm["read"] / 1e3,
            "preprocess_s": tm["preprocess"] / 1e3,
            "model_s": tm["infer"] / 1e3,
            # Blending, activation, decision and the head's assembly (stats, mapping back).
            "blend_decide_s": tm["postprocess"] / 1e3,
            "write_s": t2 - t1,
            "total_s": t2 - t0,
        }

    return run, out / "mask.nii.gz"


def _monai_runner(work: Path, cfg: dict[str, Any], engine: str, out: Path):
    import torch
    from monai.data import MetaTensor
    from monai.inferers import sliding_window_inference
    from monai.transforms import (
        Activations,
        AsDiscrete,
        LoadImage,
        Orientation,
        SaveImage,
        ScaleIntensityRange,
        Transpose,
    )

    threads = cfg["threads"]
    torch.set_num_threads(threads)
    if engine == "torch":
        net = _unet(tuple(cfg["channels"]), cfg["res_units"])
        net.load_state_dict(torch.load(work / "model.pt", weights_only=True))
        net.eval()

        def model(x: torch.Tensor) -> torch.Tensor:
            return net(x)
    else:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        session = ort.InferenceSession(
            str(work / "bundle" / "model.onnx"), opts, providers=["CPUExecutionProvider"]
        )

        def model(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {"image": x.numpy()})[0])

    load = LoadImage(image_only=True, ensure_channel_first=True)
    orient = Orientation(axcodes="LPS")
    scale = ScaleIntensityRange(a_min=CLIP[0], a_max=CLIP[1], b_min=0.0, b_max=1.0, clip=True)
    to_model = Transpose((0, 3, 2, 1))  # (C, x, y, z) -> (C, Z, Y, X): the model's order
    softmax = Activations(softmax=True, dim=0)
    argmax = AsDiscrete(argmax=True, dim=0)
    out.mkdir(parents=True, exist_ok=True)
    save = SaveImage(
        output_dir=str(out),
        output_postfix="mask",
        output_ext=".nii.gz",
        output_dtype=np.uint8,
        resample=False,
        separate_folder=False,
        print_log=False,
    )
    source = work / "input.nii.gz"
    model_s = [0.0]

    def predictor(x: torch.Tensor) -> torch.Tensor:
        t = time.perf_counter()
        y = model(x)
        model_s[0] += time.perf_counter() - t
        return y

    def run() -> dict[str, float]:
        model_s[0] = 0.0
        with torch.inference_mode():
            t0 = time.perf_counter()
            image = load(str(source))
            t1 = time.perf_counter()
            x = to_model(scale(orient(image)))
            t2 = time.perf_counter()
            logits = sliding_window_inference(
                torch.as_tensor(x)[None],
                list(ROI),
                SW_BATCH,
                predictor,
                overlap=OVERLAP,
                mode="gaussian",
            )
            labels = argmax(softmax(logits[0]))
            mask = MetaTensor(to_model(labels).to(torch.uint8), meta=image.meta)
            t3 = time.perf_counter()
            save(mask, meta_data=image.meta)
            t4 = time.perf_counter()
        return {
            "read_s": t1 - t0,
            "preprocess_s": t2 - t1,
            "model_s": model_s[0],
            "blend_decide_s": t3 - t2 - model_s[0],
            "write_s": t4 - t3,
            "total_s": t4 - t0,
        }

    return run, out / "input_mask.nii.gz"


def child(variant: str, work: Path) -> dict[str, Any]:
    """Run one pipeline ``warmup + repeats`` times in this process; its raw figures
    (:func:`merge_rounds` summarises them over the rounds)."""
    t0 = time.perf_counter()
    cfg = json.loads((work / "config.json").read_text())
    out = work / f"out-{VARIANTS.index(variant)}"
    if variant == EDGEMED:
        run, mask = _edgemed_runner(work, cfg, "onnxruntime", out)
    elif variant == OPENVINO:
        run, mask = _edgemed_runner(work, cfg, "openvino", out)
    else:
        run, mask = _monai_runner(work, cfg, "torch" if variant == TORCH else "onnxruntime", out)
    startup = time.perf_counter() - t0
    rss_ready = _rss_now_mb()
    first = [run() for _ in range(cfg["warmup"])]
    runs = [run() for _ in range(cfg["repeats"])]
    return {
        "runs": runs,
        "first_run_s": first[0]["total_s"] if first else None,
        "startup_s": startup,
        "rss_after_startup_mb": rss_ready,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "mask": str(mask),
    }


# -- the parent: inputs, children, comparison ---------------------------------------------


def _spawn(variant: str, work: Path, threads: int, timeout: float) -> dict[str, Any]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--variant", variant, "--work", str(work)]
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def merge_rounds(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One pipeline's figures over its processes (rounds): medians over all timed runs,
    the median first run and startup, the largest peak RSS, the last round's mask."""
    runs = [run for part in parts for run in part["runs"]]
    firsts = [p["first_run_s"] for p in parts if p["first_run_s"] is not None]
    ready = [p["rss_after_startup_mb"] for p in parts if p["rss_after_startup_mb"] is not None]
    phases = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return {
        "end_to_end_s": round(phases.pop("total_s"), 4),
        "runs_s": [round(r["total_s"], 4) for r in runs],
        "rounds": len(parts),
        "first_run_s": round(statistics.median(firsts), 4) if firsts else None,
        "phases_median_s": {k: round(v, 4) for k, v in phases.items()},
        "startup_s": round(statistics.median(p["startup_s"] for p in parts), 3),
        "rss_after_startup_mb": round(statistics.median(ready), 1) if ready else None,
        "peak_rss_mb": max(p["peak_rss_mb"] for p in parts),
        "mask": parts[-1]["mask"],
    }


def _read_mask(path: str) -> np.ndarray:
    import nibabel as nib

    data = np.asanyarray(nib.load(path).dataobj)
    return np.squeeze(data).astype(np.uint8)


def compare(reference: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """``other`` against edgemed's mask: differing voxels and the head's Dice."""
    if reference.shape != other.shape:
        return {"identical": False, "shape": list(other.shape), "differing_voxels": None}
    differ = int(np.count_nonzero(reference != other))
    return {
        "identical": differ == 0,
        "differing_voxels": differ,
        "voxels": int(reference.size),
        "dice": dice(other, reference, LABELS),
    }


def _ratios(data: dict[str, Any]) -> None:
    """Speed-up and memory ratio of edgemed against each other pipeline, and the goals."""
    p = data["pipelines"]
    ours = p[EDGEMED]
    for r in p.values():
        r["edgemed_speedup"] = round(r["end_to_end_s"] / ours["end_to_end_s"], 3)
        r["edgemed_memory_ratio"] = round(ours["peak_rss_mb"] / r["peak_rss_mb"], 3)
    torch_row, masks = p[TORCH], data["masks_vs_edgemed"]
    speed, memory = torch_row["edgemed_speedup"], torch_row["edgemed_memory_ratio"]
    data["goals"] = {
        "speedup_vs_torch": {
            "goal": GOALS["speedup_vs_torch"],
            "measured": speed,
            "met": speed >= GOALS["speedup_vs_torch"],
        },
        "memory_ratio_vs_torch": {
            "goal": GOALS["memory_ratio_vs_torch"],
            "measured": memory,
            "met": memory <= GOALS["memory_ratio_vs_torch"],
        },
        "identical_to_monai_ort": {
            "differing_voxels": masks[ORT]["differing_voxels"],
            "met": masks[ORT]["identical"],
        },
    }


def _markdown(data: dict[str, Any]) -> str:
    """The table README shows (one renderer: ``benchmarks/readme_tables.py``'s)."""
    from benchmarks.readme_tables import volume_table

    return "\n".join(volume_table(data)) + "\n"


def _variants(wanted: str | None) -> list[str]:
    if wanted:
        names = [v.strip() for v in wanted.split(",") if v.strip()]
        unknown = sorted(set(names) - set(VARIANTS))
        if unknown:
            raise SystemExit(f"unknown pipelines {unknown}; known: {list(VARIANTS)}")
        return [v for v in VARIANTS if v in names]
    from edgemed._lazy import available

    return [v for v in VARIANTS if v != OPENVINO or available("openvino")]


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--quick", action="store_true", help="64x128x128 volume, smaller UNet")
    ap.add_argument("--rounds", type=int, default=3, help="processes per pipeline, alternating")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per process")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first runs per pipeline")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7, help="the phantom's seed")
    ap.add_argument("--pipelines", default=None, help=f"comma-separated subset of {VARIANTS}")
    ap.add_argument("--timeout-s", type=float, default=1800.0, help="per pipeline process")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.variant:
        print(json.dumps(child(args.variant, Path(args.work))))
        return 0
    try:
        import monai  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        print("volume_compare needs torch and MONAI (pip install 'edgemed[export-test]')")
        return 2
    if args.repeats < 1 or args.rounds < 1 or args.warmup < 0:
        raise SystemExit("--rounds and --repeats must be >= 1 and --warmup >= 0")
    size = SIZES["quick" if args.quick else "full"]
    variants = _variants(args.pipelines)
    for needed in (EDGEMED, TORCH, ORT):
        if needed not in variants:
            raise SystemExit(f"--pipelines must include {needed!r} (the ratios need it)")
    with tempfile.TemporaryDirectory(prefix="volume_compare-") as tmp:
        work = Path(tmp)
        hu, spacing, made_by = make_volume(size["shape"], args.seed)
        write_nifti(work / "input.nii.gz", hu, spacing)
        write_bundle(work / "bundle", export_model(work, size["channels"], size["res_units"]))
        cfg = {
            "threads": args.threads,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "channels": list(size["channels"]),
            "res_units": size["res_units"],
        }
        (work / "config.json").write_text(json.dumps(cfg))
        data: dict[str, Any] = {
            "benchmark": "volume_compare",
            "environment": environment("volume_compare.py", ("torch", "monai")),
            "quick": args.quick,
            "threads": args.threads,
            "rounds": args.rounds,
            "repeats": args.repeats,
            "warmup_runs": args.warmup,
            "warmup": "excluded: the first run of each process is reported as first_run_s",
            "volume": {
                "shape_zyx": list(hu.shape),
                "spacing_mm_zyx": [round(s, 4) for s in spacing],
                "source": made_by,
                "file": "int16 NIfTI-1 (gzip), LPS",
            },
            "model": {
                "network": "monai.networks.nets.UNet",
                "spatial_dims": 3,
                "channels": list(size["channels"]),
                "strides": [2] * (len(size["channels"]) - 1),
                "num_res_units": size["res_units"],
                "labels": len(LABELS),
                "weights": "random, torch.manual_seed(0)",
            },
            "sliding_window": {
                "roi_size": list(ROI),
                "overlap": OVERLAP,
                "mode": "gaussian",
                "sw_batch_size": SW_BATCH,
                "clip_hu": list(CLIP),
                "spacing": None,
            },
            "goals": {},
            "pipelines": {},
            "masks_vs_edgemed": {},
        }
        rounds: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for k in range(args.rounds):  # alternating: the machine's drift falls on all alike
            for v in variants:
                rounds[v].append(_spawn(v, work, args.threads, args.timeout_s))
                r = merge_rounds(rounds[v][-1:])
                print(
                    f"round {k + 1}: {v}: {r['end_to_end_s']:.2f} s end to end (first run "
                    f"{r['first_run_s']} s), peak RSS {r['peak_rss_mb']:.0f} MiB",
                    file=sys.stderr,
                )
        for v in variants:
            data["pipelines"][v] = merge_rounds(rounds[v])
        reference = _read_mask(data["pipelines"][EDGEMED]["mask"])
        for v in variants[1:]:
            other = _read_mask(data["pipelines"][v]["mask"])
            data["masks_vs_edgemed"][v] = compare(reference, other)
        data["labels_found"] = [LABELS[i] for i in np.unique(reference)]
        for r in data["pipelines"].values():
            r.pop("mask")
    _ratios(data)
    print(json.dumps(data["goals"]), file=sys.stderr)
    write_results(args.out, "volume_compare", data, _markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
