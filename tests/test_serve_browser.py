"""The upload page in a real browser: Playwright drives Debian's chromium (headless, no download).

Uploads a real photo through the page and checks that the reconstruction, latent size, score and
verdict appear; keyboard access, type refusal and a phone-width layout are checked too. The
screenshot goes to $AEKIT_ARTIFACTS (default: pytest's tmp dir; its path is printed).
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e \".[serve]\")")
playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")

from aekit.serve.app import create_app, serve_in_thread  # noqa: E402
from aekit.serve.config import ServeConfig  # noqa: E402

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "")
                 if p and Path(p).is_file()), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary: apt-get install -y chromium")


@pytest.fixture(scope="module")
def site(tiny_model, photos_dir):
    """A live server on loopback with the tiny RGB model, calibrated on the bundled photos."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        app = create_app(ServeConfig(model=str(tiny_model(3, 4)), calibration=str(photos_dir), alpha=0.1,
                                     learn=True, swap_every_s=3600))
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        yield b
        b.close()


def artifacts(tmp_path: Path) -> Path:
    out = Path(os.environ.get("AEKIT_ARTIFACTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_upload_a_photo_shows_reconstruction_and_score(site, browser, photos_dir, tmp_path):
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.goto(site)
    page.set_input_files("#file", str(photos_dir / "chelsea.png"))
    page.wait_for_selector("#results:not([hidden])", timeout=60_000)
    assert "done" in page.inner_text("#message")
    page.wait_for_function("document.getElementById('reconstruction').naturalWidth > 0")
    assert page.eval_on_selector("#reconstruction", "i => [i.naturalWidth, i.naturalHeight]") == [451, 300]
    assert page.eval_on_selector("#original", "i => i.naturalWidth") == 451
    assert "bytes" in page.inner_text("#latent-size") and ": 1" in page.inner_text("#ratio")
    assert page.inner_text("#verdict") in ("normal", "anomaly")
    assert float(page.inner_text("#pvalue")) > 0 and "α = 0.1" in page.inner_text("#threshold")
    assert page.get_attribute("#download", "download") == "chelsea.ael"
    assert page.get_attribute("#download", "href").startswith("blob:")
    page.wait_for_function("document.getElementById('learning').textContent.startsWith('on')")
    shot = artifacts(tmp_path) / "serve-page.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000


def test_keyboard_only_and_refused_type(site, browser, tmp_path):
    page = browser.new_page()
    page.goto(site, wait_until="networkidle")  # the page's script has run (a loaded machine is slow)
    page.keyboard.press("Tab")  # the first stop is the file chooser
    assert page.evaluate("document.activeElement.id") == "file"
    for attempt in range(2):  # headless Chromium now and then drops the first key's dialog on a busy CPU
        try:
            with page.expect_file_chooser(timeout=10_000) as fc:
                page.keyboard.press("Space")  # what a keyboard user presses on a focused file chooser
            break
        except playwright.TimeoutError:
            if attempt:
                raise
            assert page.evaluate("document.activeElement.id") == "file"
    gif = tmp_path / "anim.gif"
    gif.write_bytes(b"GIF89a" + bytes(64))
    fc.value.set_files(str(gif))
    page.wait_for_selector("#message.error")
    assert "only JPEG and PNG" in page.inner_text("#message")
    assert page.is_hidden("#results")


def test_phone_width_has_no_horizontal_scroll(site, browser, photos_dir):
    page = browser.new_page(viewport={"width": 360, "height": 740})
    page.goto(site)
    page.set_input_files("#file", str(photos_dir / "coffee.png"))
    page.wait_for_selector("#results:not([hidden])", timeout=60_000)
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    box = page.locator("#reconstruction").bounding_box()
    assert box["width"] <= 360
