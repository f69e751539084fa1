"""Bearer-token authentication and the ``serve`` command's refusals."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.cli_run import cli
from tests.serve.conftest import good
from tests.serve.server import start
from tests.support import one_error_line

TOKEN = "s3cret-token-for-the-kiosk-0123456789"


def _serve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return cli("serve", *args, timeout=timeout)


def test_token_is_required_and_checked(tmp_path, ct_bytes):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    server = start(["--threads", "2", "--token-file", str(token_file)], tmp_path, "auth")
    try:
        with server.client() as c:
            # Probes and the page need no token (they reveal nothing).
            assert c.get("/healthz").status_code == 200
            assert c.get("/readyz").status_code == 200
            assert c.get("/").status_code == 200
            for headers, code in (
                ({}, "AUTH_REQUIRED"),
                ({"authorization": "Basic " + TOKEN}, "AUTH_REQUIRED"),
                ({"authorization": "Bearer " + TOKEN[:-1]}, "AUTH_INVALID"),
                ({"authorization": "Bearer " + TOKEN + "x"}, "AUTH_INVALID"),
            ):
                for method, path in (
                    ("POST", "/v1/infer"),
                    ("GET", "/v1/model"),
                    ("GET", "/metrics"),
                    ("GET", "/v1/results/" + "0" * 32 + "/result.json"),
                ):
                    r = c.request(
                        method,
                        path,
                        headers=headers,
                        content=ct_bytes if method == "POST" else None,
                    )
                    assert r.status_code == 401, (method, path, r.text)
                    assert r.json()["error"]["code"] == code
                    assert r.headers["www-authenticate"] == "Bearer"
        with server.client(headers={"authorization": "Bearer " + TOKEN}) as c:
            answer = good(c, ct_bytes)
            assert c.get(answer["links"]["overlay.png"]).status_code == 200
            assert "edgemed_requests_total" in c.get("/metrics").text
            text = c.get("/metrics").text
        assert 'code="AUTH_INVALID"' in text and 'code="AUTH_REQUIRED"' in text
    finally:
        assert server.stop() == 0
    assert TOKEN not in server.read_log()


def test_non_loopback_needs_a_token(tmp_path):
    proc = _serve("--host", "0.0.0.0", "--port", "0")
    assert proc.returncode == 2
    one_error_line(proc, "USAGE")
    assert "--token-file" in proc.stderr


@pytest.mark.parametrize(
    ("content", "mode", "problem"),
    [("short", 0o600, "at least 16"), (TOKEN, 0o644, "owner only"), ("", 0o600, "at least 16")],
)
def test_bad_token_files_are_refused(tmp_path, content, mode, problem):
    token_file = tmp_path / "token"
    token_file.write_text(content)
    os.chmod(token_file, mode)
    proc = _serve("--host", "0.0.0.0", "--port", "0", "--token-file", str(token_file))
    assert proc.returncode == 2
    assert problem in one_error_line(proc, "USAGE")
    assert TOKEN not in proc.stderr


def test_a_bad_bundle_or_precision_fails_before_listening(tmp_path, tiny_bundle):
    proc = _serve("--bundle", str(tmp_path / "missing"), "--port", "0")
    assert proc.returncode == 4 and "listening" not in proc.stdout
    one_error_line(proc, "BUNDLE")
    proc = _serve(
        "--bundle", str(tiny_bundle("segmentation")), "--precision", "int8", "--port", "0"
    )
    assert proc.returncode == 2 and "listening" not in proc.stdout
    one_error_line(proc, "USAGE_PRECISION_MISSING")


def test_help_says_how_to_deploy():
    proc = _serve("--help")
    assert proc.returncode == 0
    for words in ("--token-file", "--max-upload-mb", "--queue", "--workers", "systemd", "TLS"):
        assert words in proc.stdout, words


def test_missing_extra_names_the_pip_command():
    code = (
        "import sys\n"
        "sys.modules['fastapi'] = None\n"
        "from edgemed.cli import main\n"
        "sys.exit(main(['serve', '--port', '0']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 5
    assert 'pip install "edgemed[serve]"' in one_error_line(proc, "DEPENDENCY_MISSING")
