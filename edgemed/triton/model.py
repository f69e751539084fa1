"""The edgemed model inside Triton's Python backend.

The ``model.py`` that ``edgemed triton-repo`` writes is three lines: it imports
Triton's ``triton_python_backend_utils`` and subclasses :class:`EdgemedModel`. All the
work is edgemed's own code: :meth:`edgemed.Pipeline.from_bundle` loads and verifies the
bundle copied into the model's version folder, the readers read the request's bytes,
:meth:`edgemed.Pipeline.run_batch` runs every image of every request Triton's dynamic
batcher put into one ``execute`` call through shared backend calls, and the result is
``Result.to_dict()`` as ``edgemed run`` writes it (:mod:`edgemed.triton.wire`).

Errors: a request that cannot be read (``INPUT_*``) gets an error response carrying
edgemed's code (``INPUT_UNSUPPORTED_FORMAT: ...``) and the others in the batch go on; a
failure of the shared backend call fails the requests of that call only. The instance
keeps serving either way. A bundle that fails verification raises from
:meth:`EdgemedModel.initialize`, so Triton marks the model as failed to load.

Model parameters (``config.pbtxt``; written by :mod:`edgemed.triton.repo`):
``precision``, ``backend``, ``batch_size``, ``threads``, ``engine_cache``,
``build_engine`` (``gpu``: build a missing TensorRT engine at load, progress in the
server log), ``trusted_key`` (a public key path outside the repository; else
``EDGEMED_TRUSTED_KEY`` of the server's environment) and ``bundle_manifest_sha256``
(the manifest the repository was generated from: another ``bundle.json`` is refused).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgemed.errors import BundleError, EdgemedError, InputError
from edgemed.fsutil import sha256_file
from edgemed.triton import wire

__all__ = ["VERSION_BUNDLE", "EdgemedModel", "model_parameters"]

log = logging.getLogger("edgemed.triton")

#: The bundle's folder inside the model's version folder.
VERSION_BUNDLE = "bundle"


def model_parameters(config: dict[str, Any]) -> dict[str, str]:
    """The ``parameters`` block of a model config (as Triton passes it) as plain strings."""
    params = config.get("parameters") or {}
    return {k: str(v.get("string_value", "")) for k, v in params.items()}


def _verify_manifest(bundle_dir: Path, expected: str) -> None:
    """The copied ``bundle.json`` is the one the repository was generated from."""
    if not expected:
        return
    manifest = bundle_dir / "bundle.json"
    if not manifest.is_file():
        raise BundleError("bundle.json is missing", code="BUNDLE_NOT_FOUND", path=bundle_dir)
    if sha256_file(manifest) != expected:
        raise BundleError(
            "bundle.json is not the manifest this repository was generated from",
            code="BUNDLE_INTEGRITY",
            path=manifest,
        )


def load_pipeline(bundle_dir: Path, params: dict[str, str], kind: str) -> Any:
    """Verify and load the bundle the way ``edgemed run`` does (sha256 of every
    artifact, the signature when a key is configured), with the model's parameters."""
    from edgemed.pipeline import Pipeline
    from edgemed.settings import Options

    _verify_manifest(bundle_dir, params.get("bundle_manifest_sha256", ""))
    options = Options.resolve(
        backend=params.get("backend") or None,
        precision=params.get("precision") or None,
        batch_size=int(params["batch_size"]) if params.get("batch_size") else None,
        threads=int(params["threads"]) if params.get("threads") else None,
        engine_cache=params.get("engine_cache") or None,
        trusted_key=params.get("trusted_key") or None,
    )
    if kind == "GPU" and params.get("build_engine") == "true" and options.backend == "tensorrt":
        return _pipeline_building_engine(bundle_dir, options)
    return Pipeline.from_bundle(bundle_dir, options=options)


def _pipeline_building_engine(bundle_dir: Path, options: Any) -> Any:
    """TensorRT with an engine built now when none fits this GPU (minutes: the
    builder's progress lines go to the server log)."""
    from edgemed.backends.tensorrt.backend import TensorRTBackend
    from edgemed.bundle import Bundle
    from edgemed.pipeline import Pipeline

    bundle = Bundle.load(bundle_dir, trusted_key=options.trusted_key)
    backend = TensorRTBackend.from_bundle(
        bundle,
        options.precision,
        cache_dir=options.engine_cache,
        build=True,
        cuda_graphs=options.cuda_graphs,
    )
    try:
        return Pipeline(bundle, backend, options)
    except BaseException:
        backend.close()
        raise


class EdgemedModel:
    """Triton's ``TritonPythonModel`` protocol around one :class:`edgemed.Pipeline`.

    The generated ``model.py`` sets :attr:`pb_utils` to Triton's
    ``triton_python_backend_utils`` (only importable inside the server).
    """

    pb_utils: Any = None

    def initialize(self, args: dict[str, str]) -> None:
        """Load and verify the bundle; any failure fails the model's load."""
        config = json.loads(args["model_config"])
        params = model_parameters(config)
        kind = args.get("model_instance_kind", "CPU")
        if kind == "GPU":
            # Each instance is its own stub process: pinning it to the GPU Triton gave
            # it makes that GPU device 0 for edgemed (before any CUDA initialisation).
            os.environ["CUDA_VISIBLE_DEVICES"] = args.get("model_instance_device_id", "0")
        version_dir = Path(args["model_repository"]) / args["model_version"]
        t0 = time.perf_counter()
        try:
            self.pipe = load_pipeline(version_dir / VERSION_BUNDLE, params, kind)
        except EdgemedError as exc:
            # The message reaches the server log and the load_model error: the code first.
            raise RuntimeError(f"edgemed: {exc}") from exc
        self.outputs = {o["name"] for o in config.get("output", [])}
        prov = self.pipe.backend.info()
        print(
            f"edgemed: {args.get('model_name')} instance {args.get('model_instance_name')} "
            f"ready in {(time.perf_counter() - t0) * 1e3:.0f} ms: "
            f"{prov.get('backend')} {prov.get('precision')} on {prov.get('device')}",
            flush=True,
        )

    def _error(self, exc: BaseException) -> Any:
        pb = self.pb_utils
        if isinstance(exc, EdgemedError):
            bad_request = exc.exit_code in (2, 3)  # usage and input: the caller's to fix
            code = pb.TritonError.INVALID_ARG if bad_request else pb.TritonError.INTERNAL
            # str(exc) is "CODE: message": the client matches on the code.
            return pb.InferenceResponse(error=pb.TritonError(str(exc), code))
        return pb.InferenceResponse(
            error=pb.TritonError(f"INTERNAL: {type(exc).__name__}", pb.TritonError.INTERNAL)
        )

    def _read(self, request: Any) -> tuple[list[Any], list[float]]:
        """A request's images (read by edgemed's readers, modality checked) and each
        one's read time in ms."""
        from edgemed.io import read_image
        from edgemed.pipeline import check_modality

        pb = self.pb_utils
        rows = pb.get_input_tensor_by_name(request, wire.INPUT)
        if rows is None:
            raise InputError(f"the request has no {wire.INPUT}")
        lengths = pb.get_input_tensor_by_name(request, wire.LENGTH)
        items = wire.unpack(rows.as_numpy(), None if lengths is None else lengths.as_numpy())
        try:
            params = json.loads(request.parameters() or "{}")
        except ValueError:
            params = {}
        limits = self.pipe.options.limits
        images, read_ms = [], []
        groups = [items] if params.get(wire.SERIES) is True else [[b] for b in items]
        for group in groups:
            t0 = time.perf_counter()
            if params.get(wire.SERIES) is True:  # rules and id salt as `edgemed run DIR`
                image, _ = self.pipe.read_series(group)
            else:
                image = read_image(group[0], limits=limits)
            check_modality(image, self.pipe.modalities)
            images.append(image)
            read_ms.append((time.perf_counter() - t0) * 1e3)
        return images, read_ms

    def execute(self, requests: list[Any]) -> list[Any]:
        """Every image of every request through one :meth:`Pipeline.run_batch`."""
        pb = self.pb_utils
        responses: list[Any] = [None] * len(requests)
        work: list[tuple[int, list[Any], list[float]]] = []
        for i, request in enumerate(requests):
            try:
                images, read_ms = self._read(request)
            except Exception as exc:  # one bad request: its own error response only
                responses[i] = self._error(exc)
                continue
            work.append((i, images, read_ms))
        flat = [image for _, images, _ in work for image in images]
        if not flat:
            return responses
        try:
            results = self.pipe.run_batch(flat)
        except Exception as exc:  # the shared call failed: its requests fail, none else
            for i, _, _ in work:
                responses[i] = self._error(exc)
            return responses
        k = 0
        for i, images, read_ms in work:
            mine = results[k : k + len(images)]
            k += len(images)
            try:
                responses[i] = self._response(pb, mine, read_ms)
            except Exception as exc:
                responses[i] = self._error(exc)
        return responses

    def _response(self, pb: Any, results: list[Any], read_ms: list[float]) -> Any:
        texts = []
        for result, ms in zip(results, read_ms, strict=True):
            # The reading happened here, before run_batch (which got images): count it
            # as the input's read time, as `edgemed run` does.
            result.timings["read"] += ms
            result.timings["total"] += ms
            texts.append(wire.result_text(result.to_dict()))
        tensors = [pb.Tensor(wire.RESULT, np.array(texts, dtype=np.object_).reshape(-1, 1))]
        if wire.MASK in self.outputs:
            masks = [wire.mask_zyx(r.mask) for r in results]
            tensors.append(pb.Tensor(wire.MASK, wire.stack_masks(masks)))
        return pb.InferenceResponse(output_tensors=tensors)

    def finalize(self) -> None:
        pipe = getattr(self, "pipe", None)
        if pipe is not None:
            pipe.close()
