"""What an export is asked to do: :class:`ExportConfig` and the parsing of its options.

Everything here is plain Python (no torch), so a bad option is a
:class:`~edgemed.errors.UsageError` (exit 2) before anything heavy is imported.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgemed.bundle import MODALITY_CODE, PRECISIONS
from edgemed.errors import BundleError, UsageError
from edgemed.heads import HeadSpec, head_class, tasks
from edgemed.preprocess.spec import PreprocessSpec

__all__ = [
    "AXIS_NAMES",
    "DEFAULT_PARITY_TOLERANCE",
    "ExportConfig",
    "SLIDING_WINDOW_DEFAULTS",
    "Thresholds",
    "dynamic_axes",
    "load_specs",
    "parse_list",
    "parse_shape",
    "parse_spacing",
    "VOLUME_AXIS_NAMES",
    "volume_block",
]

#: Named axes of ``--dynamic`` and their position in the NCHW input. ``channels`` is never
#: dynamic: the preprocessing spec fixes it.
AXIS_NAMES = {"batch": 0, "height": 2, "width": 3}
#: A volume model's (NCDHW) dynamic axes: the batch of windows only. Depth, height and
#: width are the sliding window's ROI, which the bundle fixes.
VOLUME_AXIS_NAMES = {"batch": 0}

#: The sliding window an export writes when neither the options nor the spec's JSON
#: name a value (MONAI's rule; Gaussian blending, as nnU-Net-style models are trained for).
SLIDING_WINDOW_DEFAULTS: dict[str, Any] = {
    "overlap": 0.25,
    "mode": "gaussian",
    "sigma_scale": 0.125,
    "sw_batch_size": 4,
    "padding_mode": "constant",
    "cval": 0.0,
}

CALIBRATION_METHODS = ("entropy", "max")

#: Largest allowed ``max |ONNX - PyTorch| / (max - min of PyTorch's output)``. Why this
#: value, from measurements on stock models: :mod:`edgemed.export.onnx_export`.
DEFAULT_PARITY_TOLERANCE = 1e-3


def parse_shape(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"1x3x256x256"`` (NCHW, a 2D model) or ``"1x1x96x96x96"`` (NCDHW, a 3D model
    run by sliding window), or a sequence of ints -> the tuple of sizes."""
    try:
        dims = tuple(int(d) for d in (text.lower().split("x") if isinstance(text, str) else text))
    except (TypeError, ValueError) as exc:
        raise UsageError(
            f"--input-shape must look like 1x3x256x256 or 1x1x96x96x96, got {text!r}"
        ) from exc
    if len(dims) not in (4, 5) or any(d < 1 for d in dims):
        raise UsageError(
            f"--input-shape must be 4 (NCHW) or 5 (NCDHW) positive sizes, got {text!r}"
        )
    return dims


def parse_spacing(text: str | Sequence[float] | None) -> tuple[float, float, float] | None:
    """``"1.5,1.5,2"`` (x, y, z in mm; or a sequence) -> ``(1.5, 1.5, 2.0)``; ``None`` or
    ``"none"``: no resampling."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "none")):
        return None
    try:
        items = text.split(",") if isinstance(text, str) else list(text)
        values = tuple(float(v) for v in items)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--spacing must look like 1.5,1.5,2.0 (x,y,z mm), got {text!r}") from exc
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise UsageError(f"--spacing must be three positive sizes in mm (x,y,z), got {text!r}")
    return (values[0], values[1], values[2])


def parse_list(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"a,b,c"`` (or a sequence) -> ``("a", "b", "c")``; empty items dropped."""
    if text is None:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    return tuple(s.strip() for s in items if s.strip())


def dynamic_axes(shape: tuple[int, ...], names: Sequence[str]) -> dict[int, str]:
    """``--dynamic`` names -> ``{axis index: name}`` for an input of ``shape``.

    A volume's (5 sizes) depth, height and width are fixed: only ``batch`` may vary."""
    known = VOLUME_AXIS_NAMES if len(shape) == 5 else AXIS_NAMES
    unknown = [n for n in names if n not in known]
    if unknown:
        if len(shape) == 5:
            raise UsageError(
                f"--dynamic: {unknown} cannot vary in a 3D model: its depth, height and width "
                "are the sliding window's ROI (use batch)"
            )
        raise UsageError(f"--dynamic: unknown axes {unknown} (use {sorted(AXIS_NAMES)})")
    return {known[n]: n for n in names}


@dataclass(frozen=True)
class Thresholds:
    """Accuracy gates: how far a precision variant may stray from the FP32 model.

    Attributes:
        max_dice_drop: segmentation: largest allowed ``1 - mean Dice`` (variant mask vs
            FP32 mask, mean over the classes either mask contains).
        max_class_dice_drop: segmentation: largest allowed ``1 - Dice`` of any class.
        min_top1_agreement: classification: smallest fraction of inputs whose top-1 class
            matches FP32's.
        max_prob_diff: classification: largest allowed absolute difference of any class
            probability.
        min_cosine: embedding: smallest allowed cosine similarity with FP32's vector.
    """

    max_dice_drop: float = 0.01
    max_class_dice_drop: float = 0.02
    min_top1_agreement: float = 0.99
    max_prob_diff: float = 0.05
    min_cosine: float = 0.99

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise UsageError(f"accuracy threshold {name} must be in [0, 1], got {value}")


@dataclass
class ExportConfig:
    """One export: model in, bundle out. Field names follow the CLI options.

    Attributes:
        model: ``package.module:factory`` (a callable returning an ``nn.Module``, or an
            ``nn.Module`` instance), or a TorchScript file, or a ``torch.export`` ``.pt2``.
        weights: a state-dict file loaded into the factory's model (strictly).
        model_kwargs: keyword arguments for the factory.
        input_shape: the example input, e.g. ``(1, 3, 256, 256)``.
        dynamic: named dynamic axes (``batch``, ``height``, ``width``).
        task: ``segmentation``, ``classification`` or ``embedding``.
        labels: class names (segmentation: one per output channel).
        modalities: DICOM Modality codes the model is made for (e.g. ``CT``); the
            runtime refuses DICOM inputs of others, and so does calibration. Empty: any.
        preprocess: ``"demo"`` (the demo bundle's spec), a JSON file holding a
            preprocessing spec, or a bundle.json-like file with ``preprocess`` (and
            optionally ``postprocess``) keys; or the same JSON data as a dict.
        postprocess: postprocessing spec as JSON data; default per task.
        calibration: folder of calibration images (DICOM files, DICOM series folders,
            NIfTI, PNG/JPEG/TIFF, NPY).
        validation: folder of validation images; without it the calibration images are
            split (see :func:`edgemed.export.calibration.split_by_hash`).
        precisions: variants to build; ``fp32`` is always built (it is the reference).
        thresholds: the accuracy gates.
        calibration_method: INT8 PTQ calibration: ``entropy`` or ``max``.
        exclude_nodes: node-name regular expressions kept in FP32 in the FP16 and INT8
            variants.
        exclude_op_types: op types kept in FP32 in the FP16 and INT8 variants.
        int8_fp32_ends: the first and last compute layers (next to the inputs and the
            outputs) stay FP32 in the INT8 variant (:func:`~.precision.end_layers`).
        max_calibration_slices: most 2D slices used for calibration (and, separately, for
            validation); more are subsampled evenly.
        max_calibration_windows: 3D: most ROI windows (at the runtime's sliding-window
            positions) used for INT8/FP16 calibration; more are a seeded random subset.
        spacing: 3D: the target voxel spacing ``(x, y, z)`` mm every volume is resampled
            to before the sliding window (``"1.5,1.5,2"``); ``"none"``: no resampling;
            None: the spec JSON's ``volume.spacing``, else none.
        roi_overlap, sw_mode, sw_batch: 3D: the sliding window's ``overlap``, ``mode``
            (``gaussian`` or ``constant``) and ``sw_batch_size``; None: the spec JSON's
            ``volume.sliding_window`` value, else :data:`SLIDING_WINDOW_DEFAULTS`.
        opset: ONNX opset of the FP32 model (>= 17; default 18, which the dynamo exporter
            writes natively; the INT8 variant needs 19 and ModelOpt raises it).
        parity_tolerance: largest allowed ``max |ONNX - PyTorch|`` relative to the range
            (max - min) of PyTorch's output, on every parity case (default
            :data:`DEFAULT_PARITY_TOLERANCE`). The decoded results on the real images
            must also meet ``thresholds`` against PyTorch's, whatever this is.
        simplify: try onnxslim (kept only when the result matches).
        seed: seeds the factory's random initialisation and the random parity inputs.
            Without ``weights``, a factory whose weights depend on the seed is exported
            with its random initialisation: a :class:`RandomWeightsWarning`, recorded in
            the bundle's ``provenance.export.source.weights``.
        name, version, description: the bundle's.
        out: bundle directory to write.
        overwrite: replace an existing ``out`` (only after everything passed).
        extra_provenance: more entries for the bundle's ``provenance`` (e.g. training).
    """

    model: str
    input_shape: tuple[int, ...]
    task: str
    calibration: Path
    out: Path
    labels: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    weights: Path | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dynamic: tuple[str, ...] = ("batch",)
    preprocess: str | dict[str, Any] = "demo"
    postprocess: dict[str, Any] | None = None
    validation: Path | None = None
    precisions: tuple[str, ...] = PRECISIONS
    thresholds: Thresholds = field(default_factory=Thresholds)
    calibration_method: str = "entropy"
    exclude_nodes: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    int8_fp32_ends: bool = False
    max_calibration_slices: int = 64
    max_calibration_windows: int = 32
    spacing: tuple[float, float, float] | str | None = None
    roi_overlap: float | None = None
    sw_mode: str | None = None
    sw_batch: int | None = None
    opset: int = 18
    parity_tolerance: float = DEFAULT_PARITY_TOLERANCE
    simplify: bool = True
    seed: int = 0
    name: str | None = None
    version: str = "0.1.0"
    description: str = ""
    overwrite: bool = False
    extra_provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.input_shape = parse_shape(self.input_shape)
        self.dynamic = parse_list(self.dynamic)
        self.labels = parse_list(self.labels)
        self.modalities = tuple(m.upper() for m in parse_list(self.modalities))
        self.precisions = parse_list(self.precisions)
        self.exclude_nodes = parse_list(self.exclude_nodes)
        self.exclude_op_types = parse_list(self.exclude_op_types)
        self.calibration = Path(self.calibration)
        self.out = Path(self.out)
        self.validation = None if self.validation is None else Path(self.validation)
        self.weights = None if self.weights is None else Path(self.weights)
        if self.task not in tasks():
            raise UsageError(f"--task must be one of {tasks()}, got {self.task!r}")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions:
            raise UsageError(f"--precision takes a list from {PRECISIONS}, got {self.precisions}")
        # FP32 is the reference every gate compares with: it is always in the bundle.
        self.precisions = tuple(p for p in PRECISIONS if p in {"fp32", *self.precisions})
        if self.calibration_method not in CALIBRATION_METHODS:
            raise UsageError(f"--calibration-method must be one of {CALIBRATION_METHODS}")
        if self.opset < 17:
            raise UsageError(f"--opset must be >= 17, got {self.opset}")
        if not (self.parity_tolerance > 0 and math.isfinite(self.parity_tolerance)):
            raise UsageError("--parity-tolerance must be a positive number")
        if self.max_calibration_slices < 2:
            raise UsageError("--max-calibration-slices must be >= 2")
        dynamic_axes(self.input_shape, self.dynamic)  # validates the names
        if self.spacing is not None and not (
            isinstance(self.spacing, str) and self.spacing.strip().lower() == "none"
        ):
            self.spacing = parse_spacing(self.spacing)
        if not self.is_volume:
            options = {
                "--spacing": self.spacing,
                "--roi-overlap": self.roi_overlap,
                "--sw-mode": self.sw_mode,
                "--sw-batch": self.sw_batch,
            }
            given = [name for name, value in options.items() if value is not None]
            if given:
                raise UsageError(
                    f"{', '.join(given)} apply to 3D models (a 5-value --input-shape NxCxDxHxW)"
                )
        if self.max_calibration_windows < 1:
            raise UsageError("--max-calibration-windows must be >= 1")
        if len(set(self.labels)) != len(self.labels):
            raise UsageError("--labels must be distinct")
        odd = [m for m in self.modalities if not MODALITY_CODE.fullmatch(m)]
        if odd:
            raise UsageError(f"--modalities takes DICOM Modality codes (CT, MR, ...), got {odd}")
        for folder, option in (
            (self.calibration, "--calibration"),
            (self.validation, "--validation"),
        ):
            if folder is not None and not folder.is_dir():
                raise UsageError(f"{option} must be a folder of images", path=folder)
        if self.weights is not None and not self.weights.is_file():
            raise UsageError("--weights file not found", path=self.weights)
        if self.out.exists() and not self.overwrite and any(self.out.iterdir()):
            raise UsageError("--out exists and is not empty (pass --overwrite)", path=self.out)

    @property
    def is_volume(self) -> bool:
        """A 3D model (NCDHW input), run by sliding window."""
        return len(self.input_shape) == 5


def _source_data(source: str | dict[str, Any]) -> dict[str, Any] | None:
    """The JSON object of ``--preprocess`` (None for ``"demo"``)."""
    if isinstance(source, dict):
        return source
    if source == "demo":
        return None
    path = Path(source)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(
            f"--preprocess: cannot read a JSON spec ({exc.__class__.__name__})", path=path
        ) from exc
    if not isinstance(data, dict):
        raise UsageError("--preprocess: the JSON must be an object", path=path)
    return data


def load_specs(
    source: str | dict[str, Any], task: str, postprocess: dict[str, Any] | None
) -> tuple[PreprocessSpec, HeadSpec]:
    """The preprocessing and postprocessing specs an export writes into the bundle.

    ``source`` is ``"demo"`` (the shipped demo bundle's specs) or a JSON file (or its
    data as a dict): a bare preprocessing spec, or an object with a ``preprocess`` key
    (a ``bundle.json`` works) whose ``postprocess`` is used too unless ``postprocess``
    is given.
    """
    pre_data: dict[str, Any]
    data = _source_data(source)
    if data is None:  # "demo"
        from edgemed.bundle import Bundle
        from edgemed.pipeline import demo_bundle

        demo = Bundle.load(demo_bundle())
        pre_data = demo.preprocess.to_dict()
        demo_post = demo.postprocess.to_dict() if task == demo.task else {}
        post_data = postprocess if postprocess is not None else demo_post
    else:
        pre_data = data.get("preprocess", data)
        post_data = postprocess if postprocess is not None else data.get("postprocess", {})
    try:
        return PreprocessSpec.from_dict(pre_data), head_class(task).parse_spec(post_data)
    except BundleError as exc:  # a user's spec file: a usage problem, not a bundle's
        raise UsageError(f"--preprocess: {exc.message}", path=source) from exc


def volume_block(config: ExportConfig) -> dict[str, Any]:
    """The bundle's ``volume`` block for a 3D export: ``spacing`` and ``sliding_window``.

    Each value comes from the export's option when given, else from the ``volume`` block
    of the ``--preprocess`` JSON (a 3D ``bundle.json`` works), else from
    :data:`SLIDING_WINDOW_DEFAULTS` (spacing: none). ``roi_size`` is the input shape's
    D, H, W; a JSON ``roi_size`` that differs is an error.

    Raises:
        UsageError: a malformed block, or values the runtime would refuse.
    """
    data = _source_data(config.preprocess) or {}
    given = data.get("volume") or {}
    if not isinstance(given, dict) or not isinstance(given.get("sliding_window", {}), dict):
        raise UsageError("--preprocess: 'volume' must be an object with a 'sliding_window' object")
    roi = [int(v) for v in config.input_shape[2:]]
    window = {**SLIDING_WINDOW_DEFAULTS, **given.get("sliding_window", {})}
    if "roi_size" in window and [int(v) for v in window["roi_size"]] != roi:
        raise UsageError(
            f"--preprocess: volume.sliding_window.roi_size {window['roi_size']} differs from "
            f"the --input-shape's D, H, W {roi}"
        )
    window["roi_size"] = roi
    window.setdefault("rule", "monai")
    for key, value in (
        ("overlap", config.roi_overlap),
        ("mode", config.sw_mode),
        ("sw_batch_size", config.sw_batch),
    ):
        if value is not None:
            window[key] = value
    if config.spacing is None:
        spacing = given.get("spacing")
        spacing = None if spacing is None else list(parse_spacing(spacing) or ())
    elif isinstance(config.spacing, str):  # "none"
        spacing = None
    else:
        spacing = [float(v) for v in config.spacing]
    block = {"spacing": spacing, "sliding_window": window}
    from edgemed.sliding_window import SlidingWindow

    try:
        SlidingWindow.from_dict(window)
    except BundleError as exc:
        raise UsageError(f"sliding window: {exc.message}") from exc
    return block
