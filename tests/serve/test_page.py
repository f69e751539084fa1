"""The page in a real browser: Playwright driving Debian's chromium (launched by
path: Playwright's own browser download cannot reach its host). CT_small.dcm is dropped
on the page and picked by keyboard; the overlay appears, and the label names and sizes
shown are the API's. A screenshot is saved to /tmp/serve-page.png for people to look at."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest

from tests.serve.conftest import SHARED_ARGS

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = Path("/tmp/serve-page.png")

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not shutil.which("chromium"),
    reason="Debian's chromium is not installed (apt-get install chromium)",
)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            headless=True,
            timeout=120_000,  # chromium's start on a loaded 2-core machine
            args=["--no-sandbox"],  # CI runs as root, where chromium's sandbox refuses
        )
        yield b
        b.close()


def _shown_labels(page) -> dict[str, tuple[str, str]]:
    rows = page.locator("#labels tbody tr")
    return {
        rows.nth(i).get_attribute("data-label"): (
            rows.nth(i).locator("td.size").inner_text(),
            rows.nth(i).locator("td.pixels").inner_text(),
        )
        for i in range(rows.count())
    }


def _expected(answer: dict) -> dict[str, tuple[str, str]]:
    return {
        name: (f"{entry['area_mm2']:,.1f} mm²", f"{entry['pixels']:,}")
        for name, entry in answer["outputs"]["labels"].items()
    }


def test_page_drop_and_pick(server, browser, ct_small_path, ct_bytes):
    assert "--max-upload-mb" in SHARED_ARGS
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(120_000)  # a loaded 2-core CI machine is slow, not broken
    requests_elsewhere = []
    page.on(
        "request",
        lambda r: (
            None
            if r.url.startswith((server.url, "blob:" + server.url))  # blob: the overlay's bytes
            else requests_elsewhere.append(r.url)
        ),
    )
    answers = []
    page.on(
        "response",
        lambda r: answers.append(r) if r.url.endswith("/v1/infer") else None,
    )
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('card-name').textContent !== '…'")
    assert page.locator("#card-name").inner_text() == "edgemed-demo-ct-tissue"
    assert page.locator("#card-precision").inner_text() == "fp32"
    assert page.locator("#card-use").inner_text() == "not for clinical use"
    assert "Not for clinical use" in page.locator("header").inner_text()

    # Drop: a real DataTransfer holding the file's bytes, dropped on the drop zone.
    data = base64.b64encode(ct_bytes).decode()
    page.evaluate(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "CT_small.dcm", {type: "application/dicom"}));
            const zone = document.getElementById("drop");
            for (const kind of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(kind, {dataTransfer: dt, bubbles: true,
                                                        cancelable: true}));
            }
        }""",
        data,
    )
    page.wait_for_selector("#overlay[data-loaded='1']")
    answer = answers[-1].json()
    assert _shown_labels(page) == _expected(answer)
    assert set(_shown_labels(page)) == {"background", "lung", "fat", "soft_tissue", "bone"}
    width = page.evaluate("document.getElementById('overlay').naturalWidth")
    assert width > 128  # the slice plus its legend panel
    stages = page.locator("#timings tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.stage)"
    )
    assert stages == ["read", "preprocess", "infer", "postprocess", "total"]
    # Readable at 1280x800: nothing wider than the window.
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    page.screenshot(path=str(SCREENSHOT), full_page=False)

    # Pick with the keyboard: "Choose files…" is in the tab order (Shift+Tab from the
    # token box reaches it) and Enter opens the picker.
    page.evaluate("document.getElementById('overlay').removeAttribute('data-loaded')")
    page.locator("#token-box summary").focus()
    page.keyboard.press("Shift+Tab")
    assert page.evaluate("document.activeElement.id") == "pick"
    chooser = None
    for _ in range(3):  # a chooser can be missed on a loaded machine: press again
        try:
            with page.expect_file_chooser(timeout=30_000) as waiting:
                page.keyboard.press("Enter")
            chooser = waiting.value
            break
        except sync_api.TimeoutError:
            continue
    assert chooser is not None, "Enter on 'Choose files…' never opened the file picker"
    chooser.set_files(ct_small_path)
    page.wait_for_selector("#overlay[data-loaded='1']")
    assert _shown_labels(page) == _expected(answers[-1].json())
    assert len(answers) == 2

    # An error is shown as its code and message.
    page.evaluate(
        """() => {
            const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array([1, 2, 3, 4])], "x.bin"));
            document.getElementById("drop").dispatchEvent(
                new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
        }"""
    )
    page.wait_for_selector("#error:not([hidden])")
    assert page.locator("#error-code").inner_text().startswith("INPUT_")
    assert page.locator("#error-message").inner_text()
    assert requests_elsewhere == []  # nothing fetched from anywhere but the service
    page.close()


def test_page_downloads_on_a_token_protected_server(tmp_path, browser, ct_bytes):
    """Links cannot carry the bearer token: the page fetches the file with it and hands
    the browser a blob, so the download is the service's file, not a 401 page."""
    import httpx

    from tests.serve.server import start

    token = "page-download-token-0123456789abcdef"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    server = start(["--threads", "2", "--token-file", str(token_file)], tmp_path, "page-auth")
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(120_000)
        page.goto(server.url + "/")
        page.locator("#token-box summary").click()
        page.fill("#token", token)
        page.dispatch_event("#token", "change")
        page.wait_for_function("document.getElementById('card-name').textContent !== '…'")
        data = base64.b64encode(ct_bytes).decode()
        page.evaluate(
            """(b64) => {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                const dt = new DataTransfer();
                dt.items.add(new File([bytes], "CT_small.dcm"));
                document.getElementById("drop").dispatchEvent(
                    new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
            }""",
            data,
        )
        page.wait_for_selector("#overlay[data-loaded='1']")
        link = page.locator("#links a", has_text="mask.nii.gz")
        href = link.get_attribute("href")
        with page.expect_download() as waiting:
            link.click()
        downloaded = Path(waiting.value.path()).read_bytes()
        auth = {"Authorization": f"Bearer {token}"}
        expected = httpx.get(server.url + href, headers=auth, timeout=60).content
        assert httpx.get(server.url + href, timeout=60).status_code == 401
        assert downloaded == expected
        assert downloaded[:2] == b"\x1f\x8b"  # gzip: the NIfTI, not an error page
        page.close()
    finally:
        assert server.stop() == 0
