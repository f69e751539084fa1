"""Load the PyTorch model to export, and say exactly which bytes it came from.

Three sources:

* ``package.module:factory`` -- imported and called with the factory keyword arguments
  (an ``nn.Module`` instance is used as it is), then optionally loaded with a state
  dict (``--weights``; strict: missing or unexpected keys are an error);
* a TorchScript file (``torch.jit.save``);
* a ``torch.export`` program (``torch.export.save``, usually ``.pt2``).

The source hash (``sha256``) is of the weights file when one is given, of the model file
for TorchScript / ``.pt2``, and otherwise of the state dict in a canonical form (each
entry's name, dtype, shape and raw bytes, in sorted name order), so two factories that
build the same weights get the same hash however ``torch.save`` would lay them out.

Where the weights came from is said in words (:attr:`LoadedModel.weights`). A factory
called without ``--weights`` is built a second time under another seed: weights that
change with the seed are a random initialisation (:attr:`LoadedModel.random_init`; the
export warns and the bundle records it), weights that do not are the factory's own
(it loads trained weights itself).
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgemed._lazy import require
from edgemed.errors import ExportError, UsageError
from edgemed.fsutil import sha256_file

__all__ = ["LoadedModel", "RandomWeightsWarning", "load_model", "state_dict_sha256"]

_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


class RandomWeightsWarning(UserWarning):
    """The exported model has randomly initialised weights (no ``--weights``, and the
    factory's weights change with the seed). A category of its own, so that a build
    script can make it an error: ``warnings.simplefilter("error", RandomWeightsWarning)``.
    """


@dataclass
class LoadedModel:
    """A model ready to export.

    Attributes:
        module: what runs in PyTorch (an ``nn.Module``, a ``ScriptModule`` or an exported
            program's module), in eval mode.
        program: the ``torch.export.ExportedProgram`` when the source was one.
        kind: ``factory``, ``torchscript`` or ``exported_program``.
        source: the ``--model`` text (a factory path or the file's name).
        sha256: hash of the source (see the module docstring).
        sha256_of: what ``sha256`` hashes, in words.
        weights: where the weights came from, in words (the bundle's provenance).
        random_init: the weights are a random initialisation (see the module docstring).
    """

    module: Any
    program: Any
    kind: str
    source: str
    sha256: str
    sha256_of: str
    weights: str = ""
    random_init: bool = False

    def run(self, x: np.ndarray) -> np.ndarray:
        """PyTorch's output for ``x`` (float32 NumPy in, float32 NumPy out)."""
        torch = require("torch", "export", "edgemed export")
        with torch.inference_mode():
            y = self.module(torch.from_numpy(np.ascontiguousarray(x)))
        if isinstance(y, (tuple, list)):
            y = y[0]
        if isinstance(y, dict):
            y = next(iter(y.values()))
        return y.detach().float().cpu().numpy()


def state_dict_sha256(state: dict[str, Any]) -> str:
    """Canonical sha256 of a state dict: name, dtype, shape and bytes of each entry."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        # Through uint8 so bfloat16 and bool hash as raw bytes too (NumPy lacks bfloat16).
        h.update(t.reshape(-1).view(require("torch", "export").uint8).numpy().tobytes())
    return h.hexdigest()


def _factory(spec: str, kwargs: dict[str, Any]) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"--model must be package.module:factory or a model file, got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ExportError(
            f"cannot import {module_name!r} ({exc.__class__.__name__}: {exc})",
            code="EXPORT_MODEL_LOAD",
        ) from exc
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise ExportError(f"{module_name} has no {attr!r}", code="EXPORT_MODEL_LOAD") from exc
    torch = require("torch", "export", "edgemed export")
    if isinstance(obj, torch.nn.Module):
        if kwargs:
            raise UsageError(f"{spec} is a module instance: it takes no --model-kwargs")
        return obj
    if not callable(obj):
        raise ExportError(f"{spec} is neither callable nor a module", code="EXPORT_MODEL_LOAD")
    try:
        model = obj(**kwargs)
    except Exception as exc:  # the user's factory: report its failure as a load error
        raise ExportError(
            f"{spec}(**{kwargs}) failed ({exc.__class__.__name__}: {exc})",
            code="EXPORT_MODEL_LOAD",
        ) from exc
    if not isinstance(model, torch.nn.Module):
        raise ExportError(
            f"{spec} returned a {type(model).__name__}, not a torch.nn.Module",
            code="EXPORT_MODEL_LOAD",
        )
    return model


def _load_weights(model: Any, path: Path) -> None:
    torch = require("torch", "export", "edgemed export")
    try:
        # weights_only: a state dict is data; never unpickle arbitrary objects from it.
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ExportError(
            f"cannot read the weights as a state dict ({exc.__class__.__name__})",
            code="EXPORT_WEIGHTS",
            path=path,
        ) from exc
    if isinstance(data, dict):
        for key in _STATE_DICT_KEYS:  # common checkpoint wrappers
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(torch.is_tensor(v) for v in data.values()):
        raise ExportError(
            "the weights file holds no state dict (name -> tensor)",
            code="EXPORT_WEIGHTS",
            path=path,
        )
    result = model.load_state_dict(data, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ExportError(
            f"the weights do not fit the model: {len(result.missing_keys)} missing "
            f"(e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected "
            f"(e.g. {result.unexpected_keys[:3]})",
            code="EXPORT_WEIGHTS",
            path=path,
        )


def _load_file(path: Path) -> tuple[Any, Any, str]:
    """A TorchScript file or a torch.export program -> (module, program, kind)."""
    torch = require("torch", "export", "edgemed export")
    errors = []
    loaders = ["program", "torchscript"]
    if path.suffix != ".pt2":
        loaders.reverse()
    for kind in loaders:
        try:
            if kind == "program":
                program = torch.export.load(str(path))
                return program.module(), program, "exported_program"
            return torch.jit.load(str(path), map_location="cpu"), None, "torchscript"
        except Exception as exc:  # try the other format before giving up
            errors.append(f"{kind}: {exc.__class__.__name__}")
    raise ExportError(
        f"not a TorchScript file nor a torch.export program ({'; '.join(errors)})",
        code="EXPORT_MODEL_LOAD",
        path=path,
    )


def load_model(
    spec: str,
    weights: Path | None = None,
    kwargs: dict[str, Any] | None = None,
    *,
    seed: int = 0,
) -> LoadedModel:
    """Load the model named by ``spec`` (see the module docstring), in eval mode.

    Raises:
        UsageError: ``spec`` is malformed, or ``weights`` given with a model file.
        ExportError: ``EXPORT_MODEL_LOAD`` or ``EXPORT_WEIGHTS``.
        MissingDependencyError: torch is not installed (``edgemed[export]``).
    """
    torch = require("torch", "export", "edgemed export")
    path = Path(spec)
    if path.is_file():
        if weights is not None or kwargs:
            raise UsageError("--weights and --model-kwargs apply to a factory, not a model file")
        module, program, kind = _load_file(path)
        if kind != "exported_program":
            module.eval()
        digest = sha256_file(path)
        return LoadedModel(
            module, program, kind, path.name, digest, "model file", "in the model file"
        )
    # Seeded: a factory that initialises randomly builds the same weights every time.
    torch.manual_seed(seed)
    model = _factory(spec, kwargs or {})
    random_init = False
    if weights is not None:
        _load_weights(model, weights)
        digest, of, said = sha256_file(weights), "weights file", "state dict file (--weights)"
    else:
        digest, of = state_dict_sha256(model.state_dict()), "state dict (canonical)"
        random_init, said = _initial_weights(spec, kwargs or {}, seed, digest, model)
    model.eval()
    return LoadedModel(model, None, "factory", spec, digest, of, said, random_init)


def _initial_weights(
    spec: str, kwargs: dict[str, Any], seed: int, digest: str, model: Any
) -> tuple[bool, str]:
    """Whether the weights the factory built under ``seed`` (hashed as ``digest``) are a
    random initialisation, and where they came from in words: random when another seed
    builds other weights."""
    torch = require("torch", "export", "edgemed export")
    if not model.state_dict():
        return False, "none (the model has no parameters or buffers)"
    # fork_rng: the second build must not move the global RNG the first one left behind.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        other = _factory(spec, kwargs)
    if other is model:  # a module instance, built once when its module was imported
        return False, "the module instance's own (no --weights)"
    if state_dict_sha256(other.state_dict()) != digest:
        return True, f"random initialisation (torch seed {seed}; no --weights)"
    return False, "the factory's own, the same under any seed (no --weights)"
