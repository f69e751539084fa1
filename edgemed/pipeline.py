"""The pipeline: read -> preprocess -> infer -> postprocess, timed, with provenance.

Example::

    import edgemed
    with edgemed.Pipeline.from_bundle(edgemed.demo_bundle()) as pipe:
        result = pipe("CT_small.dcm")
    print(result.stats["lung"]["area_mm2"], result.timings)

Every input is brought into the canonical orientation (:mod:`edgemed.io.orientation`:
LPS, what a standard axial DICOM gives) before preprocessing, so a model sees one
voxel order whatever the file stored; a segmentation mask comes back in the input's own
voxel grid. Per-slice outputs (classification, embedding) follow the canonical slices.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgemed._version import __version__
from edgemed.backends import Backend, create_backend
from edgemed.backends.tensorrt.cache import EngineCache
from edgemed.bundle import Bundle
from edgemed.cuda.choice import PreprocessChoice, choose_preprocess
from edgemed.errors import BackendError, BundleError, InputError, UsageError
from edgemed.heads import create_head
from edgemed.ids import salted_id
from edgemed.io import MedicalImage, read_image
from edgemed.io.series_rules import SeriesRules
from edgemed.preprocess import allocate, preprocess
from edgemed.result import STAGES, Result
from edgemed.settings import PREPROCESS_DEVICES, Options, artifact_precision

if TYPE_CHECKING:
    from edgemed.cuda.stages import CudaStages
    from edgemed.io.orientation import Orientation
    from edgemed.signing import PublicKeySource

__all__ = [
    "Pipeline",
    "Result",
    "apply_spacing",
    "check_modality",
    "demo_bundle",
    "input_id",
    "PREPROCESS_DEVICES",
    "STAGES",
]

log = logging.getLogger("edgemed.pipeline")


# bytes: a file's bytes (the readers take them as they take a path).
Input = str | os.PathLike | bytes | MedicalImage | np.ndarray


def demo_bundle() -> Path:
    """Path of the demo bundle shipped inside the package (a demonstration model
    trained on synthetic CT phantoms; not for clinical use)."""
    return Path(__file__).resolve().parent / "data" / "demo"


class Pipeline:
    """A bundle bound to a backend, ready to run on images.

    The stages are chosen once, here: preprocessing (CPU, or the CUDA kernels writing
    into the host buffer or, with a device-I/O backend, into the model's input on the
    device), inference (host arrays, or device inputs), and decoding (the task head, or
    the CUDA mask kernel reading the outputs where the engine left them). Running is
    then the same straight line for every combination.

    Thread-safe: calls are serialised (the backend reuses its buffers). For parallel
    throughput, use one pipeline per thread.

    Args:
        bundle: the loaded bundle.
        backend: the backend running its artifact. The pipeline owns it from here:
            :meth:`close` closes it (a backend reuses its buffers per call, so it is
            never shared between pipelines).
        options: how to run (default :meth:`Options.resolve`: ``EDGEMED_*``). Its
            ``batch_size``, ``preprocess``, ``check_modality``, ``id_salt`` and
            ``limits`` apply here; backend, precision, threads, engine cache and CUDA
            graphs were the backend's to apply.
        batch_size, preprocess, check_modality: override the options' fields.
        cubin_dir: compiled CUDA kernels (default: the engine cache's).
    """

    def __init__(
        self,
        bundle: Bundle,
        backend: Backend,
        options: Options | None = None,
        *,
        batch_size: int | None = None,
        preprocess: str | None = None,
        cubin_dir: str | os.PathLike[str] | None = None,
        check_modality: bool | None = None,
    ) -> None:
        options = (options or Options.resolve()).replace(
            batch_size=batch_size, preprocess=preprocess, check_modality=check_modality
        )
        self.options = options
        self.bundle = bundle
        self.backend = backend
        #: DICOM modalities this pipeline accepts (empty: any); see :func:`check_modality`.
        self.modalities = bundle.modalities if options.check_modality else ()
        if len(backend.inputs) != 1:
            raise BackendError(
                f"edgemed runs single-input models; this one has {len(backend.inputs)}",
                code="BACKEND_IO_MISMATCH",
            )
        self._input = backend.inputs[0]
        #: The task head: decodes the outputs by name, assembles, serialises, compares.
        self.head = create_head(bundle.task, bundle.postprocess, bundle.labels, backend.outputs)
        # The model's own input dtype decides the buffer dtype (an FP16-IO variant takes
        # float16): the spec's arithmetic is the same, only the final cast differs.
        self.spec = dataclasses.replace(bundle.preprocess, dtype=str(self._input.dtype))
        fixed_batch = self._input.shape[0]
        if isinstance(fixed_batch, int):
            self.batch_size = fixed_batch
        else:  # an engine built for at most N slices per call gets at most N
            self.batch_size = min(options.batch_size, backend.max_batch or options.batch_size)
        # The host input buffer grows to the largest chunk actually run and is reused:
        # sizing it by batch_size would take batch_size slices' memory for a single
        # slice (a large --batch-size was a MemoryError before any input was read).
        self._buffer = allocate(self.spec, 0)
        if cubin_dir is None:
            cubin_dir = EngineCache.for_bundle(bundle, options.engine_cache).kernel_dir
        if bundle.volume is not None and bundle.task != "segmentation":
            raise BundleError(
                f"3D (volume) bundles are segmentation models; this one's task is {bundle.task}",
                code="BUNDLE_INVALID",
            )
        #: Where preprocessing runs and why (:func:`edgemed.cuda.choice.choose_preprocess`).
        self.preprocess_choice = (
            _preprocess_choice(options.preprocess, self.spec, backend, cubin_dir)
            if bundle.volume is None
            else _volume_preprocess_choice(
                options.preprocess, self.spec, backend, cubin_dir, self.head.output
            )
        )
        self._gpu: CudaStages | None = None
        # 3D on the GPU: the volume kernels cut windows into the engine's input and blend
        # and decide its outputs there (loaded at the first volume, freed by close()).
        self._volume_gpu = bundle.volume is not None and self.preprocess_choice.device == "cuda"
        self._volume_cubins = cubin_dir
        self._volume_kernels: Any = None
        if self.preprocess_choice.device == "cuda" and bundle.volume is None:
            from edgemed.cuda.stages import CudaStages

            self._gpu = CudaStages(self.head, self.spec, backend, self.batch_size, cubin_dir)
        self._pre, self._infer, self._decode = self._stages()
        self._lock = threading.Lock()
        self._fatal: BackendError | None = None
        self._volume_facts: list[dict[str, Any]] = []
        self._salt = options.id_salt or secrets.token_bytes(16)
        # The readers' one-time imports (pydicom, nibabel: a few hundred ms) happen here,
        # so they count as start-up and never as the first input's read time.
        t0 = time.perf_counter()
        from edgemed.io.read import preload_readers

        preload_readers()
        #: One-time costs of building this pipeline in ms, apart from every input's
        #: timings: ``readers`` (their imports) and, through :meth:`from_bundle`,
        #: ``bundle`` (loading and verifying it) and ``backend`` (creating the session
        #: or deserialising the engine); ``total`` is their sum.
        self.startup_ms: dict[str, float] = {"readers": (time.perf_counter() - t0) * 1e3}
        self.startup_ms["total"] = self.startup_ms["readers"]
        #: Milliseconds per stage of the last :meth:`run_batch` (all its inputs
        #: together), with the backend's own copy/device timings where it has them.
        self.last_stage_ms: dict[str, float] = {}
        artifact = bundle.artifact("onnx", artifact_precision(backend.precision))
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
        backend: str | None = None,
        *,
        options: Options | None = None,
        precision: str | None = None,
        threads: int | None = None,
        batch_size: int | None = None,
        trusted_key: PublicKeySource | None = None,
        preprocess: str | None = None,
        engine_cache: str | os.PathLike[str] | None = None,
        check_modality: bool | None = None,
        cuda_graphs: bool | None = None,
        spacing: tuple[float, ...] | None = None,
    ) -> Pipeline:
        """Load and verify the bundle at ``path`` and create its backend.

        Settings come from ``options`` (default :meth:`Options.resolve`: the
        ``EDGEMED_*`` variables, as the CLI reads them); the keyword arguments, where
        given, override its fields.

        Args:
            path: bundle directory.
            backend: ``auto`` or a registered backend (``onnxruntime``, ``tensorrt``).
            options: everything below in one object.
            precision: which artifact runs (``fp32``, ``fp16``, ``int8``); a precision
                the bundle lacks is an error, never a silent substitute.
            threads: CPU threads for ONNX Runtime (default: cores, at most 8).
            batch_size: most slices per backend call.
            trusted_key: an ed25519 public key (PEM path or bytes, or a key object);
                the bundle must carry a valid signature by it. ``None`` uses
                ``EDGEMED_TRUSTED_KEY`` if set, else signatures are not required.
            preprocess: where preprocessing runs: ``cpu``, ``cuda`` (the CUDA kernels;
                an error where they cannot run or cannot honour the spec), or ``auto``
                (``cuda`` beside a device-I/O backend (TensorRT) when the kernels support
                the spec and can be loaded, else ``cpu``).
            engine_cache: TensorRT engine cache (default ``<bundle>/engines``), where
                ``edgemed build`` also stores the compiled kernels.
            check_modality: refuse DICOM inputs whose Modality the bundle does not
                list (``INPUT_MODALITY``); False runs them anyway.
            cuda_graphs: TensorRT: replay a captured CUDA graph while consecutive calls
                have one shape (less launch overhead for small models; no effect when
                ``auto`` picks ONNX Runtime).
            spacing: ``(x, y)`` or ``(x, y, z)`` mm for inputs whose files do not state
                their spacing (see :attr:`Options.spacing`); without it they get pixel
                counts only.
        """
        opts = (options or Options.resolve()).replace(
            backend=backend,
            precision=precision,
            threads=threads,
            batch_size=batch_size,
            trusted_key=trusted_key,
            preprocess=preprocess,
            engine_cache=engine_cache,  # Options makes it a Path
            check_modality=check_modality,
            cuda_graphs=cuda_graphs,
            spacing=spacing,
        )
        t0 = time.perf_counter()
        bundle = Bundle.load(path, trusted_key=opts.trusted_key)
        t1 = time.perf_counter()
        chosen = create_backend(None, bundle, options=opts)
        t2 = time.perf_counter()
        try:
            pipe = cls(bundle, chosen, opts)
        except BaseException:
            chosen.close()
            raise
        startup = pipe.startup_ms
        startup.update(bundle=(t1 - t0) * 1e3, backend=(t2 - t1) * 1e3)
        startup["total"] = (time.perf_counter() - t0) * 1e3
        return pipe

    @property
    def preprocess_device(self) -> str:
        """``cuda`` when the CUDA kernels preprocess (3D: cut the windows into the
        engine and blend and decide its outputs), else ``cpu``."""
        return "cuda" if self._gpu is not None or self._volume_gpu else "cpu"

    def _stages(self) -> tuple[Any, Any, Any]:
        """The preprocess, infer and decode steps for this backend and device, chosen once.

        ``pre(slices) -> (batch | None, placements)``: ``None`` when the batch was written
        into the model's input on the device; ``infer(batch) -> raw outputs by name``;
        ``decode(raw, placements) -> one value per slice``.
        """
        gpu, backend, head, buffer = self._gpu, self.backend, self.head, self._host_buffer
        name = self._input.name

        def infer_host(batch: np.ndarray) -> dict[str, np.ndarray]:
            return backend.infer({name: batch})

        if gpu is None:
            return (
                (lambda slices: preprocess(slices, self.spec, out=buffer(len(slices)))),
                infer_host,
                head.decode,
            )
        if not gpu.on_engine:  # kernels into the host buffer; the backend as usual
            return (
                (lambda slices: gpu.preprocess(slices, buffer(len(slices)))),
                infer_host,
                head.decode,
            )
        # The kernels write the engine's input on the device (no host buffer); with
        # masks decided on the GPU the outputs stay there and only masks come back.
        decode = (
            (lambda _raw, placements: gpu.segment(placements)) if gpu.masks_on_gpu else head.decode
        )
        return (lambda slices: gpu.preprocess(slices, buffer(0))), (lambda _b: gpu.infer()), decode

    def _host_buffer(self, slices: int) -> np.ndarray:
        """The reused host input buffer, grown (never shrunk) to hold ``slices``."""
        if self._buffer.shape[0] < slices:
            self._buffer = allocate(self.spec, slices)
        return self._buffer

    # -- running -----------------------------------------------------------------------

    def __call__(self, item: Input) -> Result:
        """Run one input: a path (file or series directory), file bytes, a MedicalImage,
        or an array in physical units (``(Y, X)``, ``(Z, Y, X)``; spacing unknown unless
        the options give one)."""
        return self.run_batch([item])[0]

    def run_batch(
        self, items: Sequence[Input], *, progress: Callable[[int, int], None] | None = None
    ) -> list[Result]:
        """Run several inputs; their 2D slices share backend calls of up to
        ``batch_size`` slices (a volume's slices are batched the same way).

        ``progress(slices_done, slices_total)`` is called after each backend call (a
        front-end's progress bar for series and volumes)."""
        from edgemed.io.orientation import canonical  # imported by preload_readers

        t_start = [time.perf_counter() for _ in items]
        images, views, read_ms = [], [], []
        for item in items:
            t0 = time.perf_counter()
            image = self._as_image(item)
            check_modality(image, self.modalities, item)
            # What the model sees: the canonical orientation (a copy only where the
            # file's order differs); results go back to the input's own grid.
            view, how = canonical(image)
            images.append((image, how))
            views.append(view)
            read_ms.append((time.perf_counter() - t0) * 1e3)
        with self._lock:
            if self._fatal is not None:
                raise BackendError(
                    f"pipeline refuses work after a fatal GPU error ({self._fatal.message})",
                    code="GPU_FATAL",
                )
            try:
                if self.bundle.volume is not None:
                    outputs, stage_ms = self._run_volumes(views, progress)
                else:
                    outputs, stage_ms = self._run_slices([v.slices() for v in views], progress)
            except BackendError as exc:
                # A fatal CUDA error leaves the context unusable: every later result
                # would be garbage, so the pipeline stops here (health checks see it).
                # Any other backend failure affects this call only.
                if exc.code == "GPU_FATAL":
                    self._fatal = exc
                raise
        results = []
        assembled = 0.0
        for i, ((image, how), out) in enumerate(zip(images, outputs, strict=True)):
            t0 = time.perf_counter()
            result = self._result(image, how, out)
            own_post = (time.perf_counter() - t0) * 1e3
            assembled += own_post
            timings = {
                "read": read_ms[i],
                "preprocess": stage_ms["preprocess"],
                "infer": stage_ms["infer"],
                "postprocess": stage_ms["postprocess"] + own_post,
            }
            timings["total"] = (time.perf_counter() - t_start[i]) * 1e3
            result.timings = timings
            results.append(result)
        stage_ms["postprocess"] += assembled
        self.last_stage_ms = stage_ms
        return results

    def _run_slices(
        self, per_image: list[np.ndarray], progress: Callable[[int, int], None] | None = None
    ) -> tuple[list[list[Any]], dict[str, float]]:
        """All slices of all images through the chosen stages in chunks.

        Returns per image the list of per-slice values (masks, class dicts or embedding
        rows) and the summed stage times (plus the backend's own timings, if any).
        """
        flat = [(i, s) for i, slices in enumerate(per_image) for s in slices]
        out: list[list[Any]] = [[] for _ in per_image]
        ms = {"preprocess": 0.0, "infer": 0.0, "postprocess": 0.0}
        pre, infer, decode = self._pre, self._infer, self._decode
        backend_ms = self.backend.last_stage_ms
        clock = time.perf_counter
        for start in range(0, len(flat), self.batch_size):
            chunk = flat[start : start + self.batch_size]
            t0 = clock()
            batch, placements = pre([s for _, s in chunk])
            t1 = clock()
            raw = infer(batch)
            t2 = clock()
            values = decode(raw, placements)
            t3 = clock()
            ms["preprocess"] += (t1 - t0) * 1e3
            ms["infer"] += (t2 - t1) * 1e3
            ms["postprocess"] += (t3 - t2) * 1e3
            for k, v in backend_ms().items():
                ms[k] = ms.get(k, 0.0) + float(v)
            for (i, _), v in zip(chunk, values, strict=True):
                out[i].append(v)
            if progress is not None:
                progress(start + len(chunk), len(flat))
        return out, ms

    def _run_volumes(
        self, views: list[MedicalImage], progress: Callable[[int, int], None] | None = None
    ) -> tuple[list[list[Any]], dict[str, float]]:
        """3D models: each volume through :func:`edgemed.volume.prepare` (on the CPU) and
        the sliding window, windows batched into backend calls (see ``per_call``): on the
        CPU (:func:`edgemed.volume.segment_volume`), or, where the choice is ``cuda``
        (a device-I/O engine), in the CUDA volume kernels (:meth:`_segment_volume_gpu`).

        Returns per image its canonical planes' masks (the head assembles them as it
        does a 2D model's slices) and the summed stage times; each volume's window
        facts are kept for :meth:`_result` (``outputs.volume``).
        """
        from edgemed.volume import count_windows, prepare, segment_volume

        vol = self.bundle.volume
        assert vol is not None
        name, dtype = self._input.name, np.dtype(self.spec.dtype)
        fixed = self._input.shape[0] if isinstance(self._input.shape[0], int) else None
        # Windows per backend call: an engine's whole batch (TensorRT: as many windows as
        # it was built for, the GPU's best use). On the CPU one window a call: the
        # runtime's threads already share one window, and a batch multiplies the
        # activations held (ONNX Runtime, a 96^3 MONAI UNet: peak RSS 254 MB at 1 window
        # a call, 528 MB at 4, no faster). The bundle's sw_batch_size stays a GPU hint.
        per_call = (
            fixed
            or self.backend.max_batch
            or (vol.window.sw_batch_size if self.backend.device_io else 1)
        )
        window = dataclasses.replace(vol.window, sw_batch_size=per_call)
        run_vol = dataclasses.replace(vol, window=window)
        output_name = self.head.output
        ms = {"preprocess": 0.0, "infer": 0.0, "postprocess": 0.0}
        backend_ms = self.backend.last_stage_ms
        clock = time.perf_counter

        def predictor(windows: np.ndarray) -> np.ndarray:
            n = len(windows)
            batch = windows.astype(dtype, copy=False)
            if fixed is not None and n < fixed:  # a fixed-batch engine takes full batches
                pad = np.zeros((fixed - n, *batch.shape[1:]), dtype=dtype)
                batch = np.concatenate([batch, pad])
            t0 = clock()
            raw = self.backend.infer({name: batch})[output_name]
            ms["infer"] += (clock() - t0) * 1e3
            for k, v in backend_ms().items():
                ms[k] = ms.get(k, 0.0) + float(v)
            return np.asarray(raw[:n], dtype=np.float32)

        out: list[list[Any]] = []
        self._volume_facts = []
        total = [0, 0]  # windows done before this volume, windows of all volumes
        shapes = []
        for view in views:
            t0 = clock()
            prepared = prepare(view, self.spec, vol)
            ms["preprocess"] += (clock() - t0) * 1e3
            shapes.append(prepared)
            total[1] += count_windows(prepared.shape[1:], window)
        for view, prepared in zip(views, shapes, strict=True):
            before = total[0]

            def step(done: int, _n: int, before: int = before) -> None:
                total[0] = before + done
                if progress is not None:
                    progress(total[0], total[1])

            t0 = clock()
            infer_before = ms["infer"]
            shape = view.array.shape if view.array.ndim == 3 else (1, *view.array.shape)
            if self._volume_gpu:
                # Cutting, the engine, blending and deciding interleave on one stream:
                # their time is the device's, counted as infer.
                mask = self._segment_volume_gpu(prepared, run_vol, shape, step, fixed)
                ms["infer"] += (clock() - t0) * 1e3
            else:
                mask = segment_volume(
                    prepared, predictor, run_vol, self.head.spec, shape, self.bundle.labels, step
                )
            ms["postprocess"] += (clock() - t0) * 1e3 - (ms["infer"] - infer_before)
            out.append(list(mask) if view.array.ndim == 3 else [mask[0]])
            self._volume_facts.append(
                {
                    "windows": total[0] - before,
                    "windows_per_call": per_call,
                    "roi_size": list(window.roi_size),
                    "model_shape": list(prepared.shape[1:]),
                    "model_spacing_mm": list(vol.spacing) if vol.spacing else None,
                    "overlap": list(window.overlap),
                    "mode": window.mode,
                    "peak_rss_mb": round(_peak_rss_mb(), 1),
                }
            )
            del prepared
        return out, ms

    def _segment_volume_gpu(
        self,
        prepared: np.ndarray,
        vol: Any,
        shape: tuple[int, ...],
        step: Callable[[int, int], None],
        fixed: int | None,
    ) -> np.ndarray:
        """One prepared volume through the CUDA volume kernels beside a device-I/O
        engine (:func:`edgemed.cuda.volume.segment_volume_device`): uploaded once, each
        batch of windows cut into the engine's input, its outputs blended and decided
        where it left them; only the mask comes back. CUDA failures become ``GPU_*``
        errors (``GPU_FATAL`` stops the pipeline, see :meth:`run_batch`)."""
        from edgemed.cuda.device import cuda_errors
        from edgemed.cuda.volume import BackendEngine, CudaVolumeKernels, segment_volume_device

        backend = self.backend
        with backend.gpu.active(), cuda_errors("3D inference on the GPU"):
            if self._volume_kernels is None:  # loaded once, on the engine's stream
                self._volume_kernels = CudaVolumeKernels(
                    device=backend.gpu, cubin_dir=self._volume_cubins
                )
            engine = BackendEngine(backend, self.head.output, batch=fixed)
            return segment_volume_device(
                prepared,
                engine,
                vol,
                self.head.spec,
                shape,
                self.bundle.labels,
                step,
                kernels=self._volume_kernels,
            )

    def _close_volume_kernels(self) -> None:
        """Drop the volume kernels' module inside the engine's context while it lives
        (pycuda skips a release in a detached context)."""
        kernels, self._volume_kernels = self._volume_kernels, None
        gpu = self.backend.gpu
        if kernels is None or gpu is None or gpu.closed:
            return
        with gpu.active():
            del kernels

    def _result(self, image: MedicalImage, how: Orientation, values: list[Any]) -> Result:
        prov = dict(self._provenance)
        prov["startup_ms"] = {k: round(v, 3) for k, v in self.startup_ms.items()}
        prov["timestamp"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        prov["input_id"] = input_id(image, self._salt)
        log.debug(
            "input %s: %s %s, %d slice(s)",
            prov["input_id"],
            image.metadata.get("format", "array"),
            image.modality,
            image.num_slices,
        )
        # The head gets the input image (its own grid) and the values of its canonical
        # slices: a segmentation head maps its mask back (see heads.segmentation).
        output = self.head.assemble(image, values, how)
        if self.bundle.volume is not None and self._volume_facts:
            output.volume = self._volume_facts.pop(0)
        return Result(
            self.bundle.task,
            image,
            list(self.bundle.labels),
            {},
            prov,
            output,
            self.head,
            orientation=how,
        )

    def read_series(
        self, instances: Sequence[Any], *, check_modality: bool | None = None
    ) -> tuple[MedicalImage, list[int]]:
        """One DICOM series from its instances (bytes, file objects or paths, e.g. received
        or uploaded) as this pipeline reads a folder: its caps, the bundle's series rules
        (modalities included unless ``check_modality`` is off), ids under its salt, and
        ``input.series`` recorded. Front-ends that receive a series (serve, listen,
        Triton) read it here, so their results match ``edgemed run DIR``.

        Returns:
            ``(image, order)``: as :func:`edgemed.io.series.read_series_ordered`.
        """
        from edgemed.io.series import read_series_ordered

        check = self.options.check_modality if check_modality is None else check_modality
        rules = SeriesRules.for_pipeline(self.bundle.series_rules, self.bundle.modalities, check)
        image, order = read_series_ordered(
            instances, limits=self.options.limits, rules=rules, salt=self._salt
        )
        return image, order  # (the spacing option applies when the image is run)

    def _as_image(self, item: Input) -> MedicalImage:
        if isinstance(item, MedicalImage):
            return self._with_spacing(item)
        if isinstance(item, np.ndarray):
            if item.ndim not in (2, 3) or item.size == 0:
                raise UsageError(f"arrays must be (Y, X) or (Z, Y, X), got shape {item.shape}")
            return self._with_spacing(
                MedicalImage(
                    np.ascontiguousarray(item, dtype=np.float32),
                    spacing=(1.0,) * item.ndim,
                    metadata={"format": "array", "spacing_source": "unknown"},
                )
            )
        if isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(
            item, "read"
        ):
            image = read_image(
                item,
                limits=self.options.limits,
                # A folder or DICOMDIR may hold several series: the bundle's rules (its
                # modalities where they name none) or the user's UID choose one.
                rules=SeriesRules.for_pipeline(
                    self.bundle.series_rules, self.modalities, self.options.check_modality
                ),
                series_uid=self.options.series,
                salt=self._salt,
            )
            return self._with_spacing(image)
        raise UsageError(
            f"cannot run on a {type(item).__name__}; give a path, bytes, MedicalImage or array"
        )

    def _with_spacing(self, image: MedicalImage) -> MedicalImage:
        return apply_spacing(image, self.options.spacing)

    def close(self) -> None:
        try:
            if self._gpu is not None:
                self._gpu.close()
            self._close_volume_kernels()
        finally:
            self.backend.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _preprocess_choice(
    mode: str, spec: Any, backend: Backend, cubin_dir: str | os.PathLike[str] | None
) -> PreprocessChoice:
    """:func:`choose_preprocess` for this backend, logged; raises when ``cuda`` was asked
    for and cannot be honoured."""

    def arch() -> str:
        if backend.gpu is not None:  # the engine's own GPU
            return str(backend.gpu.info.arch)
        from edgemed.cuda.device import query_device

        return query_device(0).arch

    choice = choose_preprocess(
        mode,
        spec,
        backend=backend.name,
        device_io=backend.device_io,
        cubin_dir=cubin_dir,
        arch=arch,
    )
    if choice.error is not None:
        raise choice.error
    if mode == "auto" and choice.device == "cpu" and backend.device_io:
        (log.warning if choice.warn else log.info)("preprocessing on the CPU: %s", choice.reason)
    return choice


def _volume_preprocess_choice(
    mode: str,
    spec: Any,
    backend: Backend,
    cubin_dir: str | os.PathLike[str] | None,
    output: str,
) -> PreprocessChoice:
    """Where a 3D model's windows are cut, blended and decided: the CUDA volume kernels
    (:func:`edgemed.cuda.volume.segment_volume_device`) beside a device-I/O backend
    (TensorRT), else the CPU (:func:`edgemed.volume.segment_volume`).

    The 2D rule decides (:func:`_preprocess_choice`: the mode, device I/O, cubins or
    nvcc for the GPU's architecture), then what the volume kernels need of the engine
    (float32 or float16 input and output). ``cuda`` that cannot be honoured is refused,
    never ignored; without device I/O it always is (the kernels feed an engine's input on
    the device). :func:`edgemed.volume.prepare` (resampling to the model's spacing and
    the intensity steps) stays on the CPU either way: the resampling kernel agrees with
    it within 1e-5, not bit for bit, and masks must not depend on the device.
    """
    if mode == "cuda" and not backend.device_io:
        raise UsageError(
            f"--preprocess cuda for a 3D model needs a backend with device I/O (TensorRT); "
            f"beside {backend.name} use auto or cpu",
            code="USAGE_GPU_UNSUPPORTED",
        )
    choice = _preprocess_choice(mode, spec, backend, cubin_dir)
    if choice.device != "cuda":
        return choice
    from edgemed.cuda.volume import check_engine_io

    outputs = {o.name: o.dtype for o in backend.outputs}
    try:
        check_engine_io(backend.inputs[0].dtype, outputs.get(output))
    except UsageError as exc:
        if mode == "cuda":
            raise
        log.info("3D windows on the CPU: %s", exc.message)
        return PreprocessChoice("cpu", exc.message, (("cuda", exc.message),))
    return PreprocessChoice(
        "cuda",
        "the CUDA volume kernels cut the windows into the engine's input and blend and "
        "decide its outputs on the device (resampling and intensity steps on the CPU)",
    )


def _peak_rss_mb() -> float:
    """The process's peak resident memory so far, MiB: Linux's ``VmHWM``, else getrusage.

    Not ``ru_maxrss`` on Linux: it survives ``exec``, so a process started by a large
    parent (a test runner, a benchmark that imported torch) would report the parent's
    peak as its own.
    """
    import resource
    import sys

    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def apply_spacing(image: MedicalImage, given: Sequence[float] | None) -> MedicalImage:
    """``image`` with the spacing ``given`` as ``(x, y[, z])`` mm where its own is
    unknown (a new image: the caller's is never changed). The file's own spacing always
    wins; a volume needs all three values (with two it stays unknown). What
    :attr:`Options.spacing` does to every input; a front-end applies a per-request
    spacing with it."""
    if given is None or image.spacing_source != "unknown":
        return image
    axes = 3 if image.is_volume else 2
    if len(given) < axes:
        return image
    spacing = tuple(float(v) for v in reversed(given[:axes]))  # (x, y[, z]) -> ([dz,] dy, dx)
    metadata = {**image.metadata, "spacing_source": "user"}
    return dataclasses.replace(image, spacing=spacing, metadata=metadata)


def input_id(image: MedicalImage, salt: bytes) -> str:
    """How results and logs refer to an input: the salted id (:func:`edgemed.ids.salted_id`)
    of its pixel bytes, 32 hex digits."""
    pixels = np.ascontiguousarray(image.array).reshape(-1).view(np.uint8)
    return salted_id(salt, pixels.data)


def check_modality(image: MedicalImage, modalities: Sequence[str], source: object = None) -> None:
    """Refuse a DICOM image whose Modality is not in ``modalities`` (empty: any).

    Only DICOM declares a modality: every image read from DICOM (a file, its bytes, a
    series directory, in-memory instances) is checked; NIfTI, raster files and arrays
    cannot be and pass. Raises ``InputError`` ``INPUT_MODALITY`` (the code is not
    patient data).
    """
    if not modalities or not image.is_dicom:
        return
    if image.modality not in modalities:
        raise InputError(
            f"DICOM modality {image.modality} is not one this model is made for "
            f"({', '.join(modalities)}); --any-modality (check_modality=False) runs it anyway",
            code="INPUT_MODALITY",
            path=source if isinstance(source, (str, os.PathLike)) else None,
        )
