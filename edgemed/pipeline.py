"""The pipeline: read -> preprocess -> infer -> postprocess, timed, with provenance.

Example::

    import edgemed
    with edgemed.Pipeline.from_bundle(edgemed.demo_bundle()) as pipe:
        result = pipe("CT_small.dcm")
    print(result.stats["lung"]["area_mm2"], result.timings)
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgemed import postprocess as post
from edgemed._version import __version__
from edgemed.backends import Backend, create_backend
from edgemed.backends.tensorrt.cache import EngineCache
from edgemed.bundle import Bundle
from edgemed.errors import BackendError, InputError, UsageError
from edgemed.io import MedicalImage, read_image
from edgemed.preprocess import Placement, allocate, preprocess
from edgemed.settings import load_settings

if TYPE_CHECKING:
    from edgemed.cuda.stages import CudaStages
    from edgemed.preprocess import PreprocessSpec
    from edgemed.signing import PublicKeySource

__all__ = [
    "Pipeline",
    "Result",
    "check_modality",
    "demo_bundle",
    "input_id",
    "PREPROCESS_DEVICES",
    "STAGES",
]

log = logging.getLogger("edgemed.pipeline")

#: Timing keys of every result, in milliseconds.
STAGES = ("read", "preprocess", "infer", "postprocess", "total")
#: Where preprocessing may run (``Pipeline(preprocess=...)``).
PREPROCESS_DEVICES = ("auto", "cpu", "cuda")

Input = str | os.PathLike | MedicalImage | np.ndarray


def demo_bundle() -> Path:
    """Path of the demo bundle shipped inside the package (a demonstration model
    trained on synthetic CT phantoms; not for clinical use)."""
    return Path(__file__).resolve().parent / "data" / "demo"


@dataclass
class Result:
    """What one input produced.

    Attributes:
        task: the bundle's task.
        image: the input image (kept for writers such as the overlay; not serialised).
        labels: label names from the bundle.
        mask: segmentation: uint8 label mask in the input's geometry, ``(Y, X)`` or
            ``(Z, Y, X)``.
        stats: segmentation: per-label ``pixels`` and ``area_mm2`` / ``volume_mm3``.
        classes: classification: per slice ``{"probabilities", "top_k"}``.
        embedding: embedding: ``(N, D)`` vectors, one per slice.
        timings: milliseconds per stage (:data:`STAGES`); when several inputs share one
            backend call, ``preprocess``/``infer``/``postprocess`` are that batch's.
        provenance: versions, bundle, artifact sha256, backend, precision, device.
    """

    task: str
    image: MedicalImage
    labels: list[str]
    timings: dict[str, float]
    provenance: dict[str, Any]
    mask: np.ndarray | None = None
    stats: dict[str, dict[str, float]] = field(default_factory=dict)
    classes: list[dict[str, Any]] = field(default_factory=list)
    embedding: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (the mask itself is not inlined; writers save it)."""
        img = self.image
        outputs: dict[str, Any] = {}
        if self.mask is not None:
            outputs["mask"] = {"shape": list(self.mask.shape), "dtype": str(self.mask.dtype)}
            outputs["labels"] = self.stats
        if self.classes:
            outputs["classification"] = self.classes
        if self.embedding is not None:
            outputs["embedding"] = [[float(v) for v in row] for row in self.embedding]
        return {
            "task": self.task,
            "input": {
                "shape": list(img.array.shape),
                "spacing_mm": [float(s) for s in img.spacing],
                "modality": img.modality,
                "format": img.metadata.get("format", "array"),
            },
            "outputs": outputs,
            "timings_ms": {k: round(v, 3) for k, v in self.timings.items()},
            "provenance": self.provenance,
        }


class Pipeline:
    """A bundle bound to a backend, ready to run on images.

    Thread-safe: calls are serialised (the backend reuses its buffers). For parallel
    throughput, use one pipeline per thread.
    """

    def __init__(
        self,
        bundle: Bundle,
        backend: Backend,
        *,
        batch_size: int = 8,
        preprocess: str = "auto",
        cubin_dir: str | os.PathLike[str] | None = None,
        check_modality: bool = True,
    ) -> None:
        if batch_size < 1:
            raise UsageError("batch_size must be >= 1")
        if preprocess not in PREPROCESS_DEVICES:
            raise UsageError(f"preprocess must be one of {PREPROCESS_DEVICES}, got {preprocess!r}")
        self.bundle = bundle
        self.backend = backend
        #: DICOM modalities this pipeline accepts (empty: any); see :func:`check_modality`.
        self.modalities = bundle.modalities if check_modality else ()
        if len(backend.inputs) != 1:
            raise BackendError(
                f"edgemed runs single-input models; this one has {len(backend.inputs)}",
                code="BACKEND_IO_MISMATCH",
            )
        self._input = backend.inputs[0]
        # The model's own input dtype decides the buffer dtype (an FP16-IO variant takes
        # float16): the spec's arithmetic is the same, only the final cast differs.
        self.spec = dataclasses.replace(bundle.preprocess, dtype=str(self._input.dtype))
        fixed_batch = self._input.shape[0]
        if isinstance(fixed_batch, int):
            self.batch_size = fixed_batch
        else:  # an engine built for at most N slices per call gets at most N
            self.batch_size = min(batch_size, backend.max_batch or batch_size)
        self._buffer = allocate(self.spec, self.batch_size)
        self._gpu = _gpu_stages(bundle, self.spec, backend, self.batch_size, preprocess, cubin_dir)
        self._lock = threading.Lock()
        self._fatal: BackendError | None = None
        self._salt = load_settings().id_salt or secrets.token_bytes(16)
        artifact = bundle.artifact("onnx", backend.precision)
        self._provenance = {
            "edgemed_version": __version__,
            "bundle": {
                "name": bundle.name,
                "version": bundle.version,
                "manifest_sha256": bundle.manifest_sha256,
                "signature": bundle.signature,
            },
            "artifact": {"path": artifact.path, "sha256": artifact.sha256},
            **backend.info(),
            "preprocess_device": self.preprocess_device,
        }

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike[str],
        backend: str = "auto",
        *,
        precision: str = "fp32",
        threads: int | None = None,
        batch_size: int = 8,
        trusted_key: PublicKeySource | None = None,
        preprocess: str = "auto",
        engine_cache: str | os.PathLike[str] | None = None,
        check_modality: bool = True,
        cuda_graphs: bool = False,
    ) -> Pipeline:
        """Load and verify the bundle at ``path`` and create its backend.

        Args:
            path: bundle directory.
            backend: ``auto``, ``onnxruntime`` or ``tensorrt``.
            precision: which artifact runs (``fp32``, ``fp16``, ``int8``); a precision
                the bundle lacks is an error, never a silent substitute.
            threads: CPU threads for ONNX Runtime (default: cores, at most 8).
            batch_size: most slices per backend call.
            trusted_key: an ed25519 public key (PEM path or bytes, or a key object);
                the bundle must carry a valid signature by it. ``None`` uses
                ``EDGEMED_TRUSTED_KEY`` if set, else signatures are not required.
            preprocess: where preprocessing runs: ``cpu``, ``cuda`` (the CUDA kernels;
                an error where they cannot run or cannot honour the spec), or ``auto``
                (``cuda`` with the TensorRT backend when the kernels support the spec,
                else ``cpu``).
            engine_cache: TensorRT engine cache (default ``<bundle>/engines``), where
                ``edgemed build`` also stores the compiled kernels.
            check_modality: refuse DICOM inputs whose Modality the bundle does not
                list (``INPUT_MODALITY``); False runs them anyway.
            cuda_graphs: TensorRT: replay a captured CUDA graph while consecutive calls
                have one shape (less launch overhead for small models; no effect when
                ``auto`` picks ONNX Runtime).
        """
        bundle = Bundle.load(path, trusted_key=trusted_key)
        chosen = create_backend(
            backend,
            bundle,
            precision,
            threads,
            engine_cache=engine_cache,
            cuda_graphs=cuda_graphs,
        )
        try:
            return cls(
                bundle,
                chosen,
                batch_size=batch_size,
                preprocess=preprocess,
                cubin_dir=EngineCache.for_bundle(bundle, engine_cache).kernel_dir,
                check_modality=check_modality,
            )
        except BaseException:
            chosen.close()
            raise

    @property
    def preprocess_device(self) -> str:
        """``cuda`` when the CUDA kernels preprocess, else ``cpu``."""
        return "cuda" if self._gpu is not None else "cpu"

    # -- running -----------------------------------------------------------------------

    def __call__(self, item: Input) -> Result:
        """Run one input: a path (file or series directory), a MedicalImage, or an array
        in physical units (``(Y, X)``, ``(Z, Y, X)``; spacing 1 mm)."""
        return self.run_batch([item])[0]

    def run_batch(self, items: Sequence[Input]) -> list[Result]:
        """Run several inputs; their 2D slices share backend calls of up to
        ``batch_size`` slices (a volume's slices are batched the same way)."""
        t_start = [time.perf_counter() for _ in items]
        images, read_ms = [], []
        for item in items:
            t0 = time.perf_counter()
            image = _as_image(item)
            check_modality(image, self.modalities, item)
            images.append(image)
            read_ms.append((time.perf_counter() - t0) * 1e3)
        with self._lock:
            if self._fatal is not None:
                raise BackendError(
                    f"pipeline refuses work after a fatal GPU error ({self._fatal.message})",
                    code="GPU_FATAL",
                )
            try:
                outputs, stage_ms = self._run_slices([im.slices() for im in images])
            except BackendError as exc:
                # A fatal CUDA error leaves the context unusable: every later result
                # would be garbage, so the pipeline stops here (health checks see it).
                # Any other backend failure affects this call only.
                if exc.code == "GPU_FATAL":
                    self._fatal = exc
                raise
        results = []
        for i, (image, out) in enumerate(zip(images, outputs, strict=True)):
            t0 = time.perf_counter()
            result = self._result(image, out)
            own_post = (time.perf_counter() - t0) * 1e3
            timings = {
                "read": read_ms[i],
                "preprocess": stage_ms["preprocess"],
                "infer": stage_ms["infer"],
                "postprocess": stage_ms["postprocess"] + own_post,
            }
            timings["total"] = (time.perf_counter() - t_start[i]) * 1e3
            result.timings = timings
            results.append(result)
        return results

    def _run_slices(self, per_image: list[np.ndarray]) -> tuple[list[list[Any]], dict[str, float]]:
        """All slices of all images through preprocess/infer/postprocess in chunks.

        Returns per image the list of per-slice outputs (masks, class dicts or
        embedding rows) and the summed stage times.
        """
        flat = [(i, s) for i, slices in enumerate(per_image) for s in slices]
        out: list[list[Any]] = [[] for _ in per_image]
        ms = {"preprocess": 0.0, "infer": 0.0, "postprocess": 0.0}
        name = self._input.name
        gpu = self._gpu
        for start in range(0, len(flat), self.batch_size):
            chunk = flat[start : start + self.batch_size]
            slices = [s for _, s in chunk]
            t0 = time.perf_counter()
            batch: np.ndarray | None
            if gpu is None:
                batch, placements = preprocess(slices, self.spec, out=self._buffer)
            else:
                batch, placements = gpu.preprocess(slices, self._buffer)
            t1 = time.perf_counter()
            if batch is not None:
                raw = self.backend.infer({name: batch})
            else:  # only the GPU stages leave the batch on the device (the engine's input)
                assert gpu is not None
                raw = gpu.infer()
            t2 = time.perf_counter()
            if gpu is not None and gpu.masks_on_gpu and batch is None:
                per_slice: list[Any] = gpu.segment(placements)
            else:
                per_slice = self._postprocess(raw, placements)
            t3 = time.perf_counter()
            ms["preprocess"] += (t1 - t0) * 1e3
            ms["infer"] += (t2 - t1) * 1e3
            ms["postprocess"] += (t3 - t2) * 1e3
            for (i, _), o in zip(chunk, per_slice, strict=True):
                out[i].append(o)
        return out, ms

    def _postprocess(self, raw: dict[str, np.ndarray], placements: list[Placement]) -> list[Any]:
        first = raw[self.backend.outputs[0].name]
        spec, labels = self.bundle.postprocess, self.bundle.labels
        task = self.bundle.task
        if task == "segmentation":
            return post.segment(first, placements, spec, labels)
        if task == "classification":
            return post.classify(first, spec, labels)
        return list(post.embed(first, spec))

    def _result(self, image: MedicalImage, per_slice: list[Any]) -> Result:
        prov = dict(self._provenance)
        prov["timestamp"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        prov["input_id"] = input_id(image, self._salt)
        result = Result(self.bundle.task, image, list(self.bundle.labels), {}, prov)
        log.debug(
            "input %s: %s %s, %d slice(s)",
            prov["input_id"],
            image.metadata.get("format", "array"),
            image.modality,
            image.num_slices,
        )
        if self.bundle.task == "segmentation":
            mask = np.stack(per_slice) if image.is_volume else per_slice[0]
            result.mask = mask
            n_labels = max(len(self.bundle.labels), int(mask.max()) + 1)
            names = post.label_names(self.bundle.labels, n_labels)
            result.stats = post.segmentation_stats(mask, image.spacing, names)
        elif self.bundle.task == "classification":
            result.classes = per_slice
        else:
            result.embedding = np.stack(per_slice)
        return result

    def close(self) -> None:
        try:
            if self._gpu is not None:
                self._gpu.close()
        finally:
            self.backend.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def input_id(image: MedicalImage, salt: bytes) -> str:
    """How results and logs refer to an input: HMAC-SHA256 of its pixels under ``salt``.

    Unsalted, a hash of a known image could confirm that a given patient's scan was
    processed; salted (``EDGEMED_ID_SALT``, else random per process), it only links
    results made under the same salt.
    """
    pixels = np.ascontiguousarray(image.array)
    return hmac.new(salt, pixels.data, hashlib.sha256).hexdigest()[:32]


def check_modality(image: MedicalImage, modalities: Sequence[str], source: object = None) -> None:
    """Refuse a DICOM image whose Modality is not in ``modalities`` (empty: any).

    Only DICOM declares a modality; NIfTI, raster files and arrays cannot be checked
    and pass. Raises ``InputError`` ``INPUT_MODALITY`` (the code is not patient data).
    """
    if not modalities or image.metadata.get("format") != "dicom":
        return
    if image.modality not in modalities:
        raise InputError(
            f"DICOM modality {image.modality} is not one this model is made for "
            f"({', '.join(modalities)}); --any-modality (check_modality=False) runs it anyway",
            code="INPUT_MODALITY",
            path=source if isinstance(source, (str, os.PathLike)) else None,
        )


def _as_image(item: Input) -> MedicalImage:
    if isinstance(item, MedicalImage):
        return item
    if isinstance(item, np.ndarray):
        if item.ndim not in (2, 3) or item.size == 0:
            raise UsageError(f"arrays must be (Y, X) or (Z, Y, X), got shape {item.shape}")
        return MedicalImage(
            np.ascontiguousarray(item, dtype=np.float32),
            spacing=(1.0,) * item.ndim,
            metadata={"format": "array"},
        )
    if isinstance(item, (str, os.PathLike)):
        return read_image(item)
    raise UsageError(f"cannot run on a {type(item).__name__}; give a path, MedicalImage or array")


def _gpu_stages(
    bundle: Bundle,
    spec: PreprocessSpec,
    backend: Backend,
    batch_size: int,
    mode: str,
    cubin_dir: str | os.PathLike[str] | None,
) -> CudaStages | None:
    """The CUDA stages for ``mode`` (``None``: preprocessing on the CPU).

    ``cuda`` is honoured or refused, never quietly replaced; ``auto`` takes the GPU only
    beside TensorRT (with ONNX Runtime on the CPU, GPU preprocessing would add copies)
    and only where the kernels can be loaded (cubins stored by ``edgemed build``, or
    nvcc to compile them), else the CPU with one warning saying why.
    """
    if mode == "cpu" or (mode == "auto" and backend.name != "tensorrt"):
        return None
    # Imported here: edgemed.cuda imports pycuda lazily, but only GPU runs need it at all.
    from edgemed.cuda.packing import check_preprocess_spec
    from edgemed.cuda.stages import CudaStages
    from edgemed.errors import EdgemedError

    if mode == "auto":
        try:
            check_preprocess_spec(spec)
        except EdgemedError as exc:
            log.info("preprocessing on the CPU: %s", exc.message)
            return None
    gpu = getattr(backend, "gpu", None)
    if gpu is not None:  # the engine's GPU: can its kernels be loaded at all?
        from edgemed.cuda.launchers import kernels_unavailable

        missing = kernels_unavailable(cubin_dir, gpu.info.arch)
        if missing and mode == "auto":
            log.warning("preprocessing on the CPU: %s", missing)
            return None
        if missing:
            raise BackendError(missing, code="GPU_TOOLCHAIN")
    return CudaStages(bundle, spec, backend, batch_size, cubin_dir)
