"""nst-jax serve in a real browser: the system's chromium, driven by Selenium through chromium-driver.

Skipped, with the reason, where there is no browser (`.ci/run` installs Debian's chromium and
chromium-driver; nothing is downloaded). Screenshots of every stage go to
``$NST_JAX_SCREENSHOTS`` when it is set (else the test's temporary folder).
"""

import io
import os
import shutil
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="the ui extra (starlette, uvicorn) is not installed")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")

from test_serve import start_server  # noqa: E402

from nst_jax import samples, vgg  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="no chromium and chromedriver on PATH (apt-get install chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    options = Options()
    options.binary_location = CHROMIUM
    flags = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900")
    for flag in flags:
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)  # no Selenium Manager: the system's driver
    driver.set_window_size(1280, 900)
    running, thread = start_server(vgg.init_params(jax.random.key(0)))
    driver.downloads = downloads
    yield driver, running
    driver.quit()
    running.stop()
    thread.join(30)


def _shots(tmp_path) -> Path:
    folder = Path(os.environ.get("NST_JAX_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wait(condition, timeout=90, what="condition"):
    end = time.time() + timeout
    while time.time() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _screenshot(driver, path: Path) -> None:
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.2)
    driver.save_screenshot(str(path))


def _save(path: Path, image: np.ndarray) -> Path:
    Image.fromarray((image * 255).astype(np.uint8)).save(path)
    return path


def test_upload_watch_cancel_and_download_in_a_browser(page, tmp_path):
    from selenium.webdriver.common.by import By

    driver, running = page
    shots = _shots(tmp_path)
    content = _save(tmp_path / "village.png", samples.village(48, 64))
    style = _save(tmp_path / "swirls.png", samples.swirls(48, 48))
    driver.get(running.url)
    _wait(lambda: driver.execute_script("return document.body.dataset.ready === '1'"), what="the page")
    by_id = lambda name: driver.find_element(By.ID, name)
    assert by_id("start").get_attribute("disabled") is not None  # nothing to start before both images
    _screenshot(driver, shots / "1-empty.png")

    by_id("content-file").send_keys(str(content))
    by_id("style-file").send_keys(str(style))
    thumbs = lambda zone: driver.find_elements(By.CSS_SELECTOR, f"#{zone}-thumbs .thumb:not(.loading) img")
    _wait(lambda: thumbs("content") and thumbs("style"), what="the thumbnails")
    decoded = "const i = document.querySelector('#content-thumbs img'); return i.complete && i.naturalWidth > 0"
    _wait(lambda: driver.execute_script(decoded), timeout=30, what="the thumbnail decoded")  # not just attached
    _wait(lambda: by_id("start").get_attribute("disabled") is None, what="Start enabled")

    # A bad upload: a clear message on the page, nothing added.
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    by_id("style-file").send_keys(str(text))
    _wait(lambda: by_id("upload-message").is_displayed(), what="the upload message")
    assert "notes.txt" in by_id("upload-message").text and "not a readable image" in by_id("upload-message").text
    assert len(thumbs("style")) == 1

    # A file name is text, never markup; the × takes an image back out.
    hostile = _save(tmp_path / "<img src=x onerror=document.title='pwned'>.png", samples.swirls(40, 40))
    by_id("style-file").send_keys(str(hostile))
    _wait(lambda: len(thumbs("style")) == 2, what="the second style")
    names = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#style-thumbs .name")]
    assert names[1] == hostile.name and driver.title.startswith("nst-jax")
    driver.find_elements(By.CSS_SELECTOR, "#style-thumbs .remove")[1].click()
    _wait(lambda: len(thumbs("style")) == 1, what="the second style removed")

    def set_field(name, value):
        field = by_id(f"opt-{name}")
        field.clear()
        field.send_keys(str(value))

    # A long run: the preview changes between chunks, then it is cancelled.
    set_field("size", 32)
    set_field("num_steps", 100000)
    by_id("start").click()
    preview_url = lambda: by_id("preview").get_attribute("src") or ""
    first = _wait(lambda: "preview.png?v=" in preview_url() and preview_url(), what="a first preview")
    _wait(lambda: preview_url() != first, what="the preview to change")
    assert "step" in by_id("stats").text and "loss" in by_id("stats").text
    _screenshot(driver, shots / "2-running.png")
    by_id("cancel").click()
    _wait(lambda: by_id("stage-badge").text == "cancelled", what="the run cancelled")
    unfinished = by_id("download")  # offered, but said to be unfinished, and not the result
    assert unfinished.text == "Download the unfinished image" and "preview.png" in unfinished.get_attribute("href")

    # A short run to the end, then its PNG downloaded.
    set_field("num_steps", 20)
    by_id("start").click()
    _wait(lambda: by_id("stage-badge").text == "done", what="the run done")
    _screenshot(driver, shots / "3-done.png")
    runs = driver.find_elements(By.CSS_SELECTOR, "#runs .run")
    assert [r.get_attribute("data-state") for r in runs] == ["done", "cancelled"]
    by_id("download").click()
    saved = _wait(lambda: [p for p in driver.downloads.glob("*.png")], what="the download")
    assert Image.open(io.BytesIO(saved[0].read_bytes())).size == (32, 24)

    # The cancelled run is still there to look at: select it.
    runs[1].click()
    _wait(lambda: by_id("stage-badge").text == "cancelled", what="the earlier run shown")

    # A small sweep fills its grid.
    by_id("mode-sweep").click()
    by_id("sweep-values").send_keys("1, 100")
    by_id("start").click()
    cells = lambda: driver.find_elements(By.CSS_SELECTOR, "#grid .cell img:not([hidden])")
    _wait(lambda: len(cells()) == 2 and by_id("stage-badge").text == "done", what="the sweep's grid")
    labels = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#grid .cell figcaption")]
    assert labels == ["1", "100"] and by_id("stage-title").text == "Sweep of style weight"
    _screenshot(driver, shots / "4-sweep.png")

    # A phone-width window: one column, nothing wider than the screen.
    driver.set_window_size(390, 844)
    time.sleep(0.3)
    assert driver.execute_script("return document.documentElement.scrollWidth") <= 390
    _screenshot(driver, shots / "5-phone.png")
    driver.set_window_size(1280, 900)
    # The page's own errors; the refused upload above is the one expected.
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert [m for m in errors if "/api/uploads - " not in m or "400" not in m] == [], errors
