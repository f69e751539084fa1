"""Bundles: a directory with ``bundle.json`` and the artifacts it lists.

``bundle.json`` (schema version 1)::

    {"schema_version": 1, "name": "...", "version": "...", "description": "...",
     "task": "segmentation" | "classification" | "embedding",
     "labels": ["background", ...],
     "input": {"name": "image", "layout": "NCHW", "shape": ["batch", 3, 256, 256],
               "dtype": "float32"},
     "outputs": [{"name": "logits", "shape": ["batch", 5, 256, 256], "dtype": "float32"}],
     "preprocess": {...PreprocessSpec...}, "postprocess": {...PostprocessSpec...},
     "modalities": ["CT"],   # optional: the DICOM Modality codes the model is made for
     "artifacts": [{"path": "model.onnx", "kind": "onnx", "precision": "fp32",
                    "sha256": "...", "bytes": 123}],
     "validation": {"thresholds": {"max_dice_drop": 0.01, ...},   # optional
                    "files": [{"path": "validation/ct_small.dcm", "sha256": "...",
                               "bytes": 123}]},
     "provenance": {...free-form: how it was made...},
     "volume": {...},   # 3D models only: target spacing and sliding window (edgemed.volume)
     "series": {...}}   # optional: which series of a folder to take (io.series_rules)

``validation`` (optional) is the bundle's validation gate for the device: a few of the
export's validation images shipped in the bundle (hashed like the artifacts) and the
gate limits the export applied; ``edgemed check`` runs a backend and precision on them
against the FP32 ONNX on ONNX Runtime, as the export's gate did.

String entries in a shape are named dynamic axes. ``modalities`` (absent or empty:
any) lets the pipeline refuse a DICOM input of another modality (``INPUT_MODALITY``):
a CT model's HU windows make nonsense of MR signal. Every artifact's sha256 is checked
when the bundle loads, and :meth:`Bundle.read_artifact` hashes the very bytes it hands
to a backend, so nothing unverified is ever parsed.

The hashes protect the artifacts, not the manifest's other fields (labels, windows,
thresholds): without a signature, an edited ``bundle.json`` whose hashes still match
loads. With a trusted public key configured (``trusted_key=`` or
``EDGEMED_TRUSTED_KEY``), ``bundle.json`` must carry a valid ed25519 ``bundle.sig``
over its exact bytes, checked before the manifest is parsed; see
:mod:`edgemed.signing`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgemed import signing
from edgemed.errors import BundleError, UsageError
from edgemed.fsutil import atomic_write, sha256_file, write_json
from edgemed.heads import HeadSpec, head_class, tasks
from edgemed.io.series_rules import SeriesRules
from edgemed.preprocess.spec import PreprocessSpec
from edgemed.settings import trusted_key_path
from edgemed.volume import VolumeSpec

__all__ = [
    "MODALITY_CODE",
    "SCHEMA_VERSION",
    "Artifact",
    "Bundle",
    "TensorInfo",
    "ValidationSet",
    "sign_bundle",
    "write_manifest",
]

SCHEMA_VERSION = 1
KINDS = ("onnx", "engine")
PRECISIONS = ("fp32", "fp16", "int8")
MANIFEST = "bundle.json"
_TOP_LEVEL_KEYS = frozenset(
    {
        "schema_version",
        "name",
        "version",
        "description",
        "task",
        "labels",
        "input",
        "outputs",
        "preprocess",
        "postprocess",
        "modalities",
        "artifacts",
        "validation",
        "provenance",
        "volume",
        "series",
    }
)


_HEX = frozenset("0123456789abcdef")
#: A DICOM Modality value (VR CS): upper-case letters, digits and underscores, at most 16.
MODALITY_CODE = re.compile(r"[A-Z0-9_]{1,16}")


def _stays_inside(path: str) -> bool:
    """True for a relative artifact path that cannot leave the bundle directory."""
    rel = Path(path)
    return not rel.is_absolute() and ".." not in rel.parts


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output as the bundle declares it (str dims are dynamic axes)."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"
    layout: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorInfo:
        shape = tuple(s if isinstance(s, str) else int(s) for s in d["shape"])
        return cls(str(d["name"]), shape, str(d.get("dtype", "float32")), d.get("layout"))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.layout:
            d["layout"] = self.layout
        return d


@dataclass(frozen=True)
class Artifact:
    path: str
    kind: str
    precision: str
    sha256: str
    bytes: int | None = None


@dataclass(frozen=True)
class ValidationSet:
    """The validation gate a bundle ships for the device (``edgemed check``).

    Attributes:
        thresholds: the gate limits the export applied (the head's keys).
        files: the shipped validation images, hashed like artifacts (``kind`` is
            ``validation``, ``precision`` empty).
    """

    thresholds: dict[str, float]
    files: tuple[Artifact, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "thresholds": dict(self.thresholds),
            "files": [
                {
                    k: v
                    for k, v in (("path", f.path), ("sha256", f.sha256), ("bytes", f.bytes))
                    if v is not None
                }
                for f in self.files
            ],
        }


@dataclass
class Bundle:
    """A loaded, verified bundle. Use :meth:`load`."""

    root: Path
    name: str
    version: str
    task: str
    labels: list[str]
    input: TensorInfo
    outputs: list[TensorInfo]
    preprocess: PreprocessSpec
    #: The task head's spec (:mod:`edgemed.heads`), from the ``postprocess`` block.
    postprocess: HeadSpec
    artifacts: list[Artifact]
    description: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    #: DICOM Modality codes the model is made for (empty: any); see the module doc.
    modalities: tuple[str, ...] = ()
    #: The shipped validation gate, or None (see the module doc).
    validation: ValidationSet | None = None
    #: A 3D model's target spacing and sliding window (:mod:`edgemed.volume`); None: 2D.
    volume: VolumeSpec | None = None
    #: Which series of a folder the model takes (:mod:`edgemed.io.series_rules`); None:
    #: a folder must hold one series (or the user names one).
    series_rules: SeriesRules | None = None
    schema_version: int = SCHEMA_VERSION
    #: sha256 of the exact ``bundle.json`` bytes loaded (results cite it as provenance).
    manifest_sha256: str = ""
    #: ``verified`` (bundle.sig checked against a trusted key), ``unverified``
    #: (bundle.sig present, no trusted key configured) or ``unsigned``.
    signature: str = "unsigned"
    #: Fingerprint (:func:`edgemed.signing.key_fingerprint`) of the key that verified it.
    signed_by: str | None = None

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        verify: bool = True,
        trusted_key: signing.PublicKeySource | None = None,
    ) -> Bundle:
        """Read ``bundle.json`` from ``path`` and (by default) verify every artifact.

        Args:
            path: the bundle directory.
            verify: hash every artifact now (with False, :meth:`read_artifact` still
                does when a backend reads one). The signature is checked either way.
            trusted_key: an ed25519 public key (PEM path, PEM bytes or key object).
                When given, or when ``EDGEMED_TRUSTED_KEY`` is set and this is None,
                ``bundle.sig`` must verify over the exact ``bundle.json`` bytes before
                they are parsed or any artifact is hashed. There is deliberately no way
                to switch a configured environment key off from here.

        Raises:
            BundleError: ``BUNDLE_NOT_FOUND``, ``BUNDLE_UNSIGNED``, ``BUNDLE_SIGNATURE``,
                ``BUNDLE_INVALID``, ``BUNDLE_SCHEMA_VERSION``,
                ``BUNDLE_ARTIFACT_MISSING`` or ``BUNDLE_INTEGRITY``.
            UsageError: ``USAGE_KEY_INVALID``: the trusted key cannot be read or is
                not an ed25519 public key (a configuration error, not the bundle's).
            MissingDependencyError: a key is configured but ``cryptography`` is not
                installed (``pip install "edgemed[signing]"``).
        """
        key: Any
        if trusted_key is not None:
            key = signing.load_public_key(trusted_key)
        else:
            env_key = trusted_key_path()
            key = (
                None
                if env_key is None
                else signing.load_public_key(env_key, origin="EDGEMED_TRUSTED_KEY")
            )
        return cls._load(Path(path), key, verify)

    @classmethod
    def _load(cls, root: Path, key: Any, verify: bool) -> Bundle:
        """Load with ``key`` (a loaded public key, or None: no signature required)."""
        raw = cls._read_manifest(root)
        if key is not None:
            # Before json.loads: with a key, unverified bytes reach no parser at all.
            signing.verify_manifest(root, raw, key)
        bundle = cls._from_bytes(root, raw)
        if key is not None:
            bundle.signature, bundle.signed_by = "verified", signing.key_fingerprint(key)
        elif (root / signing.SIGNATURE).is_file():
            bundle.signature = "unverified"  # present; not read, as nothing asked for it
        if verify:
            for art in bundle.artifacts:
                bundle._verify_file(art)
            for art in bundle.validation.files if bundle.validation else ():
                bundle._verify_file(art)
        return bundle

    @staticmethod
    def _read_manifest(root: Path) -> bytes:
        """The bytes of ``bundle.json``, read once: what is verified is what is parsed."""
        manifest = root / MANIFEST
        if not manifest.is_file():
            raise BundleError("no bundle.json here", code="BUNDLE_NOT_FOUND", path=root)
        try:
            return manifest.read_bytes()
        except OSError as exc:
            raise BundleError(
                f"bundle.json cannot be read ({exc.__class__.__name__})",
                code="BUNDLE_INVALID",
                path=manifest,
            ) from exc

    @classmethod
    def _from_bytes(cls, root: Path, raw: bytes) -> Bundle:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(
                f"bundle.json is not valid JSON ({exc.__class__.__name__})",
                code="BUNDLE_INVALID",
                path=root / MANIFEST,
            ) from exc
        bundle = cls._from_dict(root, data)
        bundle.manifest_sha256 = hashlib.sha256(raw).hexdigest()
        return bundle

    def describe_signature(self) -> str:
        """One line for ``edgemed info``: whether the bundle is signed and verified."""
        if self.signature == "verified":
            return f"verified (ed25519 key {(self.signed_by or '')[:16]})"
        if self.signature == "unverified":
            return f"{signing.SIGNATURE} present, not checked (no trusted key configured)"
        return "none (not required: no trusted key configured)"

    @classmethod
    def _from_dict(cls, root: Path, data: Any) -> Bundle:
        def bad(msg: str, code: str = "BUNDLE_INVALID") -> BundleError:
            return BundleError(f"bundle.json: {msg}", code=code, path=root / MANIFEST)

        if not isinstance(data, dict):
            raise bad("top level must be an object")
        version = data.get("schema_version")
        # type(), not ==: JSON true (a bool, so an int) and 1.0 must not pass for 1.
        if type(version) is not int or version != SCHEMA_VERSION:
            raise bad(
                f"schema_version {version!r} is not supported (this edgemed reads "
                f"{SCHEMA_VERSION})",
                "BUNDLE_SCHEMA_VERSION",
            )
        try:
            task = str(data["task"])
            if task not in tasks():  # the registered heads
                raise bad(f"task must be one of {tasks()}, got {task!r}")
            unknown = set(data) - _TOP_LEVEL_KEYS
            if unknown:  # a typo ("postprocesss") must not silently fall back to defaults
                raise bad(f"unknown keys {sorted(unknown)}")
            labels = data.get("labels", [])
            if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
                raise bad("labels must be a list of strings")
            modalities = data.get("modalities", [])
            if not isinstance(modalities, list) or not all(
                isinstance(m, str) and MODALITY_CODE.fullmatch(m) for m in modalities
            ):
                raise bad("modalities must be a list of DICOM Modality codes such as 'CT'")
            artifacts = []
            for a in data["artifacts"]:
                art = Artifact(
                    path=str(a["path"]),
                    kind=str(a["kind"]),
                    precision=str(a["precision"]),
                    sha256=str(a["sha256"]).lower(),
                    bytes=a.get("bytes"),
                )
                if art.kind not in KINDS or art.precision not in PRECISIONS:
                    raise bad(f"artifact {art.path}: bad kind/precision")
                if not _stays_inside(art.path):
                    raise bad(f"artifact path {art.path!r} must stay inside the bundle")
                if len(art.sha256) != 64 or not _HEX.issuperset(art.sha256):
                    raise bad(f"artifact {art.path}: sha256 must be 64 hex digits")
                if art.bytes is not None and (type(art.bytes) is not int or art.bytes < 0):
                    raise bad(f"artifact {art.path}: bytes must be a non-negative integer")
                artifacts.append(art)
            if not artifacts:
                raise bad("no artifacts")
            preprocess = PreprocessSpec.from_dict(data["preprocess"])
            volume = None
            if "volume" in data:
                if not preprocess.is_volume:
                    raise bad("a volume block needs preprocess.size [depth, height, width]")
                volume = VolumeSpec.from_dict(data["volume"], preprocess.size)
            elif preprocess.is_volume:
                raise bad("a three-value preprocess.size needs a volume block (3D model)")
            return cls(
                root=root,
                name=str(data["name"]),
                version=str(data["version"]),
                task=task,
                labels=labels,
                input=TensorInfo.from_dict(data["input"]),
                outputs=[TensorInfo.from_dict(o) for o in data["outputs"]],
                preprocess=preprocess,
                postprocess=_head_spec(task, data.get("postprocess", {}), root),
                artifacts=artifacts,
                description=str(data.get("description", "")),
                provenance=dict(data.get("provenance", {})),
                modalities=tuple(modalities),
                validation=_validation(data.get("validation"), bad),
                volume=volume,
                series_rules=(
                    None if data.get("series") is None else SeriesRules.from_dict(data["series"])
                ),
            )
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise bad(f"malformed ({exc.__class__.__name__}: {exc})") from exc

    # -- artifacts ---------------------------------------------------------------------

    @property
    def precisions(self) -> list[str]:
        """Precisions with an ONNX artifact, in preference order fp32, fp16, int8."""
        have = {a.precision for a in self.artifacts if a.kind == "onnx"}
        return [p for p in PRECISIONS if p in have]

    def artifact(self, kind: str = "onnx", precision: str = "fp32") -> Artifact:
        """The artifact of ``kind`` and ``precision`` (``bf16`` is none: see
        :func:`edgemed.settings.artifact_precision`).

        Raises:
            UsageError: ``USAGE_PRECISION_MISSING``: no ONNX model of that precision.
                The bundle is valid; the precision is the caller's choice (``run``,
                ``bench``, ``build`` and the API all refuse it here, with one code), and
                the message names the precisions it has.
            BundleError: ``BUNDLE_ARTIFACT_MISSING``: no artifact of another kind (an
                engine) at that precision. A file the manifest lists but that is not
                there is also ``BUNDLE_ARTIFACT_MISSING``, from :meth:`load`.
        """
        for a in self.artifacts:
            if a.kind == kind and a.precision == precision:
                return a
        if kind == "onnx":
            raise UsageError(
                f"the bundle has no {precision} model (it has "
                f"{', '.join(self.precisions) or 'no ONNX model'})",
                code="USAGE_PRECISION_MISSING",
                path=self.root,
            )
        have = ", ".join(f"{a.kind}/{a.precision}" for a in self.artifacts)
        raise BundleError(
            f"no {kind} artifact of precision {precision} (bundle has: {have})",
            code="BUNDLE_ARTIFACT_MISSING",
            path=self.root,
        )

    def _verify_file(self, art: Artifact) -> None:
        p = self.root / art.path
        if not p.is_file():
            raise BundleError(
                f"artifact {art.path} is missing", code="BUNDLE_ARTIFACT_MISSING", path=p
            )
        # The size first: a truncated multi-GB engine fails without being hashed.
        if art.bytes is not None and p.stat().st_size != art.bytes:
            raise BundleError(
                f"artifact {art.path} is not the size the manifest records",
                code="BUNDLE_INTEGRITY",
                path=p,
            )
        if sha256_file(p) != art.sha256:
            raise BundleError(
                f"artifact {art.path} does not match its sha256", code="BUNDLE_INTEGRITY", path=p
            )

    def read_artifact(self, art: Artifact) -> bytes:
        """The artifact's bytes, verified against the manifest's sha256 after reading.

        Backends parse these bytes, never the path, so a file swapped after
        :meth:`load` cannot slip through.
        """
        p = self.root / art.path
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise BundleError(
                f"artifact {art.path} cannot be read", code="BUNDLE_ARTIFACT_MISSING", path=p
            ) from exc
        if art.bytes is not None and len(data) != art.bytes:
            raise BundleError(
                f"artifact {art.path} is not the size the manifest records",
                code="BUNDLE_INTEGRITY",
                path=p,
            )
        if hashlib.sha256(data).hexdigest() != art.sha256:
            raise BundleError(
                f"artifact {art.path} does not match its sha256", code="BUNDLE_INTEGRITY", path=p
            )
        return data

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON-able data (what ``bundle.json`` holds)."""
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "task": self.task,
            "labels": list(self.labels),
            "input": self.input.to_dict(),
            "outputs": [o.to_dict() for o in self.outputs],
            "preprocess": self.preprocess.to_dict(),
            "postprocess": self.postprocess.to_dict(),
            **({"modalities": list(self.modalities)} if self.modalities else {}),
            "artifacts": [
                {k: v for k, v in a.__dict__.items() if v is not None} for a in self.artifacts
            ],
            **({"validation": self.validation.to_dict()} if self.validation else {}),
            **({"volume": self.volume.to_dict()} if self.volume else {}),
            **({"series": self.series_rules.to_dict()} if self.series_rules else {}),
            "provenance": self.provenance,
        }


def _validation(data: Any, bad: Any) -> ValidationSet | None:
    """The ``validation`` block (None when absent); ``bad(msg)`` makes the error."""
    if data is None:
        return None
    if not isinstance(data, dict) or set(data) - {"thresholds", "files"}:
        raise bad("validation must be an object with thresholds and files")
    thresholds = data.get("thresholds", {})
    if not isinstance(thresholds, dict) or not all(
        isinstance(k, str) and type(v) in (int, float) for k, v in thresholds.items()
    ):
        raise bad("validation.thresholds must map names to numbers")
    files = []
    for f in data.get("files", []):
        art = Artifact(str(f["path"]), "validation", "", str(f["sha256"]).lower(), f.get("bytes"))
        if not _stays_inside(art.path):
            raise bad(f"validation file {art.path!r} must stay inside the bundle")
        if len(art.sha256) != 64 or not _HEX.issuperset(art.sha256):
            raise bad(f"validation file {art.path}: sha256 must be 64 hex digits")
        files.append(art)
    if not files:
        raise bad("validation lists no files")
    return ValidationSet({k: float(v) for k, v in thresholds.items()}, tuple(files))


def _head_spec(task: str, data: Any, root: Path) -> HeadSpec:
    try:
        return head_class(task).parse_spec(data)
    except BundleError as exc:  # the head's words, located in this manifest
        raise BundleError(
            f"bundle.json: {exc.message}", code=exc.code, path=root / MANIFEST
        ) from exc


def write_manifest(root: str | os.PathLike[str], manifest: dict[str, Any]) -> Bundle:
    """Write ``bundle.json`` into ``root``, filling each artifact's sha256 and size.

    ``manifest`` is the JSON form without hashes; artifact files must already be in
    ``root``. The file is written atomically. A ``bundle.sig`` that the new bytes
    invalidate is removed (the bundle is then unsigned: sign it again). Returns the
    loaded, verified bundle; a configured trusted key is not required here, as a bundle
    being written cannot be signed yet.
    """
    root = Path(root)
    data = json.loads(json.dumps(manifest))  # deep copy, and proves it is JSON-able
    data["schema_version"] = SCHEMA_VERSION
    manifest_path = root / MANIFEST
    try:
        for a in [*data["artifacts"], *(data.get("validation") or {}).get("files", [])]:
            # Checked before anything is opened: nothing outside the bundle is ever read.
            if not _stays_inside(str(a["path"])):
                raise BundleError(
                    f"bundle.json: artifact path {a['path']!r} must stay inside the bundle",
                    code="BUNDLE_INVALID",
                    path=manifest_path,
                )
            p = root / str(a["path"])
            if not p.is_file():
                raise BundleError(
                    f"artifact {a['path']} is missing", code="BUNDLE_ARTIFACT_MISSING", path=p
                )
            a["sha256"] = sha256_file(p)
            a["bytes"] = p.stat().st_size
    except (KeyError, TypeError) as exc:
        raise BundleError(
            f"bundle.json: malformed artifacts ({exc.__class__.__name__}: {exc})",
            code="BUNDLE_INVALID",
            path=manifest_path,
        ) from exc
    Bundle._from_dict(root, data)  # validate before anything is written
    old = manifest_path.read_bytes() if manifest_path.is_file() else None
    write_json(manifest_path, data)
    sig = root / signing.SIGNATURE
    if os.path.lexists(sig) and manifest_path.read_bytes() != old:
        sig.unlink()
    return Bundle._load(root, None, verify=True)


def sign_bundle(bundle_dir: str | os.PathLike[str], key: str | os.PathLike[str] | Any) -> Path:
    """Verify the bundle, then write ``bundle.sig`` over the exact manifest bytes verified.

    The manifest is read once: the bytes that were validated, and whose artifacts were
    hashed, are the bytes signed, so a file changed meanwhile cannot be blessed. Any
    configured trusted key is not consulted (the bundle is being signed, so it is
    unsigned or re-signed). An existing ``bundle.sig`` is replaced.

    Returns:
        The path of ``bundle.sig``.

    Raises:
        UsageError: ``USAGE_KEY_INVALID`` for a bad private key.
        BundleError: the bundle itself is invalid or its artifacts do not match.
        OutputError: ``bundle.sig`` cannot be written.
    """
    private = signing.load_private_key(key)
    root = Path(bundle_dir)
    raw = Bundle._read_manifest(root)
    bundle = Bundle._from_bytes(root, raw)
    for art in (*bundle.artifacts, *(bundle.validation.files if bundle.validation else ())):
        bundle._verify_file(art)
    sig = private.sign(raw)
    return atomic_write(root / signing.SIGNATURE, lambda tmp: Path(tmp).write_bytes(sig))
