"""``edgemed triton-repo`` and the wire format, without a server: the repository's
layout and config text (cpu and gpu), refusals, and packing round trips."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import edgemed
from edgemed.cli import main
from edgemed.errors import BundleError, InputError, OutputError, UsageError
from edgemed.triton import wire
from edgemed.triton.repo import RepoOptions, model_name, render_config, write_repository


def test_cli_writes_repository(tmp_path, capsys):
    out = tmp_path / "repo"
    code = main(
        [
            "triton-repo",
            str(edgemed.demo_bundle()),
            str(out),
            "--max-batch",
            "4",
            "--instances",
            "3",
            "--max-queue-delay-us",
            "500",
            "--precision",
            "fp16",
        ]
    )
    assert code == 0
    model = out / "edgemed-demo-ct-tissue"
    assert "edgemed-demo-ct-tissue" in capsys.readouterr().out
    config = (model / "config.pbtxt").read_text()
    assert 'name: "edgemed-demo-ct-tissue"' in config
    assert 'backend: "python"' in config
    assert "max_batch_size: 4" in config
    assert "preferred_batch_size: [ 4 ]" in config
    assert "max_queue_delay_microseconds: 500" in config
    assert "instance_group [ { count: 3 kind: KIND_CPU } ]" in config
    assert '{ name: "INPUT" data_type: TYPE_UINT8 dims: [ -1 ] allow_ragged_batch: true }' in config
    assert '{ name: "RESULT" data_type: TYPE_STRING dims: [ 1 ] }' in config
    assert '{ name: "MASK" data_type: TYPE_UINT8 dims: [ -1, -1, -1 ] }' in config
    assert '{ key: "precision" value: { string_value: "fp16" } }' in config
    assert '{ key: "backend" value: { string_value: "onnxruntime" } }' in config
    # The manifest the repository was made from is recorded and checked at load.
    bundle = edgemed.Bundle.load(edgemed.demo_bundle())
    assert f'string_value: "{bundle.manifest_sha256}"' in config
    # The model file is the template: Triton's utils + edgemed's model, nothing else.
    code_text = (model / "1" / "model.py").read_text()
    assert "from edgemed.triton.model import EdgemedModel" in code_text
    assert "class TritonPythonModel(EdgemedModel):" in code_text
    # The bundle travels whole (and still verifies there).
    copied = edgemed.Bundle.load(model / "1" / "bundle")
    assert copied.manifest_sha256 == bundle.manifest_sha256


def test_gpu_config_text():
    opts = RepoOptions(kind="gpu", instances=2, max_batch=16, preferred_batch=(4, 16))
    text = render_config("m", "segmentation", "ab" * 32, opts)
    assert "instance_group [ { count: 2 kind: KIND_GPU } ]" in text
    assert '{ key: "backend" value: { string_value: "tensorrt" } }' in text
    assert '{ key: "build_engine" value: { string_value: "true" } }' in text
    assert "preferred_batch_size: [ 4, 16 ]" in text
    no_build = render_config("m", "segmentation", "", RepoOptions(kind="gpu", build_engine=False))
    assert '{ key: "build_engine" value: { string_value: "false" } }' in no_build
    # A classification bundle has no MASK output.
    cls = render_config("m", "classification", "", RepoOptions())
    assert "MASK" not in cls and "RESULT" in cls
    env = render_config("m", "segmentation", "", RepoOptions(python_env='/opt/"env"'))
    assert '{ key: "EXECUTION_ENV_PATH" value: { string_value: "/opt/\\"env\\"" } }' in env


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("edgemed-demo-ct-tissue", "edgemed-demo-ct-tissue"),
        ("my model/v2", "my_model_v2"),
        ("..", "edgemed"),
        ("Lung CT (beta)", "Lung_CT_beta"),
    ],
)
def test_model_name(given, expected):
    assert model_name(given) == expected


@pytest.mark.parametrize(
    "opts",
    [
        RepoOptions(kind="tpu"),
        RepoOptions(max_batch=0),
        RepoOptions(instances=0),
        RepoOptions(max_queue_delay_us=-1),
        RepoOptions(max_batch=4, preferred_batch=(8,)),
        RepoOptions(threads=0),
    ],
)
def test_bad_options_are_usage_errors(tmp_path, opts):
    with pytest.raises(UsageError):
        write_repository(edgemed.demo_bundle(), tmp_path / "r", opts)
    assert not (tmp_path / "r").exists()


def test_refuses_tampered_bundle_and_existing_model(tmp_path):
    bad = tmp_path / "bundle"
    shutil.copytree(edgemed.demo_bundle(), bad)
    data = bytearray((bad / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (bad / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError) as err:
        write_repository(bad, tmp_path / "r", RepoOptions())
    assert err.value.code == "BUNDLE_INTEGRITY"
    write_repository(edgemed.demo_bundle(), tmp_path / "r2", RepoOptions())
    with pytest.raises(OutputError) as err:
        write_repository(edgemed.demo_bundle(), tmp_path / "r2", RepoOptions())
    assert err.value.code == "OUTPUT_EXISTS"


def test_cli_precision_missing(tmp_path, tiny_bundle, capsys):
    bundle = tiny_bundle("segmentation")
    assert main(["triton-repo", str(bundle), str(tmp_path / "r"), "--precision", "int8"]) == 2
    assert "USAGE_PRECISION_MISSING" in capsys.readouterr().err


def test_pack_unpack_round_trip():
    files = [b"\x00\x01\x02", b"abcdef", b"", b"\x00\x00"]
    rows, lengths = wire.pack(files)
    assert rows.shape == (4, 6) and rows.dtype == np.uint8
    assert lengths is not None and lengths.tolist() == [[3], [6], [0], [2]]
    # Trailing zero bytes are kept: the lengths, not the padding, decide.
    assert wire.unpack(rows, lengths) == files
    same, none = wire.pack([b"xy", b"zw"])
    assert none is None and wire.unpack(same, None) == [b"xy", b"zw"]


@pytest.mark.parametrize("lengths", [np.array([[1]]), np.array([[-1], [2]]), np.array([[7], [2]])])
def test_unpack_refuses_bad_lengths(lengths):
    rows = np.zeros((2, 6), dtype=np.uint8)
    with pytest.raises(InputError) as err:
        wire.unpack(rows, lengths)
    assert err.value.code == "INPUT_INVALID"


def test_masks_padded_and_cropped_back():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    b = np.ones((2, 5, 2), dtype=np.uint8)
    stacked = wire.stack_masks([wire.mask_zyx(a), wire.mask_zyx(b)])
    assert stacked.shape == (2, 2, 5, 4)
    ra = {"input": {"shape": [3, 4]}}
    rb = {"input": {"shape": [2, 5, 2]}}
    assert np.array_equal(wire.crop_mask(stacked[0], ra), a)
    assert np.array_equal(wire.crop_mask(stacked[1], rb), b)


def test_result_text_is_what_edgemed_run_writes(tmp_path, ct_small_path):
    from edgemed.render import write_result

    with edgemed.Pipeline.from_bundle(edgemed.demo_bundle(), backend="onnxruntime") as pipe:
        result = pipe(ct_small_path)
    write_result(result, tmp_path)
    assert wire.result_text(result.to_dict()) == (tmp_path / "result.json").read_bytes()
    assert wire.parse_result(wire.result_text(result.to_dict())) == json.loads(
        (tmp_path / "result.json").read_text()
    )


def test_kubernetes_example_is_wired_to_triton():
    """The Deployment's probes use Triton's health endpoints, its ports match the
    Service's targets, and the image's repository path is the one it serves."""
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
    docs = {d["kind"]: d for d in yaml.safe_load_all((folder / "edgemed-triton.yaml").read_text())}
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    ports = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in docs["Service"]["spec"]["ports"]} <= ports
    selector = docs["Service"]["spec"]["selector"]
    assert docs["Deployment"]["spec"]["template"]["metadata"]["labels"] == selector
    assert "--model-repository=/models" in container["args"]
    assert "COPY models /models" in (folder / "Dockerfile").read_text()
