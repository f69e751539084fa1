"""``report.md``: the bundle's export record in words and tables.

Everything in it also lies in ``bundle.json`` under ``provenance`` (``export``,
``parity``, ``calibration``, ``accuracy``); this is the readable form.
"""

from __future__ import annotations

from typing import Any

from edgemed.export.gates import format_table

__all__ = ["render_report"]


def _kv(rows: dict[str, Any]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows.items())]


def render_report(manifest: dict[str, Any], artifacts: dict[str, dict[str, Any]]) -> str:
    """Markdown for ``manifest`` (as written) and its artifacts (path -> sha256, bytes)."""
    prov = manifest["provenance"]
    exp, parity, calib = prov["export"], prov["parity"], prov["calibration"]
    acc = prov["accuracy"]
    task = manifest["task"]
    lines = [f"# {manifest['name']} {manifest['version']}: export report", ""]
    if manifest.get("description"):
        lines += [manifest["description"], ""]
    lines += [
        "## Model",
        "",
        *_kv(
            {
                "task": task,
                "labels": ", ".join(manifest["labels"]) or "(none)",
                "source": f"`{exp['source']['model']}` ({exp['source']['kind']})",
                "source sha256": f"`{exp['source']['sha256']}` ({exp['source']['sha256_of']})",
                "weights": exp["source"]["weights"],
                "input": f"`{manifest['input']['name']}` {manifest['input']['shape']} float32",
                "output": f"`{manifest['outputs'][0]['name']}` {manifest['outputs'][0]['shape']}",
                **_volume_row(manifest),
                "ONNX exporter": exp["onnx"]["exporter"],
                "dynamo fallback reason": exp["onnx"].get("fallback_reason") or "(not needed)",
                "opset": exp["onnx"]["opset"],
                "simplification": _simplify_text(exp["onnx"]["simplify"]),
            }
        ),
        "",
        "## Artifacts",
        "",
        "| precision | file | sha256 | bytes | made by |",
        "|---|---|---|---|---|",
    ]
    for art in manifest["artifacts"]:
        info = artifacts[art["path"]]
        made = "PyTorch export" if art["precision"] == "fp32" else exp[art["precision"]]["tool"]
        lines.append(
            f"| {art['precision']} | `{art['path']}` | `{info['sha256']}` | {info['bytes']} "
            f"| {made} |"
        )
    lines += [
        "",
        "## Parity: FP32 ONNX (ONNX Runtime) vs PyTorch",
        "",
        f"Measure: {parity['measure']}; tolerance {parity['tolerance']:g}.",
        "",
        "| case | shape | max abs error | output range | max error / range | task results |",
        "|---|---|---|---|---|---|",
        *(
            f"| {name} | {'x'.join(map(str, c['shape']))} | {c['max_abs']:.3g} "
            f"| {c['range']:.3g} | {c['max_abs_over_range']:.3g} | {_task_text(c.get('task'))} |"
            for name, c in parity["cases"].items()
        ),
        "",
        "## Calibration and validation data",
        "",
        calib["split"] + ".",
        "",
        *_kv(
            {
                "calibration": _set_text(calib["calibration"]),
                "validation": _set_text(calib["validation"]),
                "INT8 calibration method": exp.get("int8", {}).get("calibration_method", "-"),
                "FP16 (AutoCast) calibration samples": exp.get("fp16", {}).get(
                    "calibration_samples", "-"
                ),
            }
        ),
        "",
        "Images are identified by the sha256 of their bytes (a DICOM series folder: of its",
        "files' `name:sha256` lines), never by file name. Per image: "
        "`bundle.json` → `provenance.calibration`.",
        "",
        "## Accuracy gates: each variant vs FP32 (ONNX Runtime, CPU)",
        "",
        f"Reference: {acc['reference']}. Passed: **{'yes' if acc['passed'] else 'no'}**.",
        "",
        "```",
        format_table(task, acc),
        "```",
        "",
    ]
    if "volume" in manifest:
        lines += [
            "Dice of label c = 2|V∩F| / (|V|+|F|), voxels the variant (V) and FP32 (F) label c,",
            "over all validation volumes together (3D Dice), each volume run by edgemed.Pipeline",
            "(full sliding window) and its mask compared in the volume's own grid; drop =",
            "1 − Dice; mean over the labels present in either mask. ONNX Runtime's CPU provider",
            "computes many FP16 ops in FP32: repeat the check on the device after the engine",
            "is built.",
            "",
        ]
    elif task == "segmentation":
        lines += [
            "Dice of class c = 2|V∩F| / (|V|+|F|), pixels the variant (V) and FP32 (F) label c,",
            "over all validation slices at their source size; drop = 1 − Dice; mean over",
            "the classes present in either mask. ONNX Runtime's CPU provider computes many",
            "FP16 ops in FP32: repeat the check on the device after the engine is built.",
            "",
        ]
    lines += [
        "## Environment",
        "",
        *_kv({k: v for k, v in exp["versions"].items()}),
        "",
        f"Export took {exp['seconds']['total']:.1f} s "
        f"({', '.join(f'{k} {v:.1f} s' for k, v in exp['seconds'].items() if k != 'total')}).",
        "",
    ]
    return "\n".join(lines)


def _simplify_text(s: dict[str, Any]) -> str:
    if s.get("applied"):
        return (
            f"{s['tool']}: {s['nodes_before']} → {s['nodes_after']} nodes, max difference "
            f"{s['max_abs_over_range_vs_unsimplified']:.2g} of the output's range (kept: "
            f"≤ {s['tolerance']:g})"
        )
    return f"not applied: {s.get('reason', 'disabled')}"


def _task_text(task: dict[str, Any] | None) -> str:
    """The head's headline figure of ONNX Runtime's decoded results against PyTorch's."""
    if task is None:
        return "(not decoded)"
    figures = [f"{k} {v:.4g}" for k, v in task.items() if isinstance(v, float)][:2]
    verdict = "fail: " + "; ".join(task["failures"]) if task["failures"] else "pass"
    return f"{', '.join(figures)} ({verdict})" if figures else verdict


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _volume_row(manifest: dict[str, Any]) -> dict[str, str]:
    """The Model table's row for a 3D model's ``volume`` block (none for 2D)."""
    if "volume" not in manifest:
        return {}
    v = manifest["volume"]
    sw = v["sliding_window"]
    spacing = "source grid" if v["spacing"] is None else f"{v['spacing']} mm (x, y, z)"
    return {
        "volume (3D)": f"spacing {spacing}; sliding window {sw.get('rule', 'monai')}, ROI "
        f"{sw['roi_size']}, overlap {sw['overlap']}, {sw['mode']}, {sw['sw_batch_size']} "
        "windows per call"
    }


def _set_text(s: dict[str, Any]) -> str:
    if "windows" in s:  # 3D: volumes and their ROI windows
        text = f"{_n(s['images'], 'volume')}, {_n(s['windows'], 'window')}"
        if s.get("subsampled_randomly"):
            text += f" (a seeded random subset of {s['windows_available']})"
        if s["skipped_non_image_files"]:
            text += f"; {s['skipped_non_image_files']} non-image files skipped"
        return text
    text = f"{_n(s['images'], 'image')}, {_n(s['slices'], 'slice')}"
    if s["subsampled_evenly"]:
        text += f" (evenly chosen from {s['slices_available']})"
    if s["skipped_non_image_files"]:
        text += f"; {s['skipped_non_image_files']} non-image files skipped"
    return text
