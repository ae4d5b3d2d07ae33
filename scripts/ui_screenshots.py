"""Screenshots of `nst-jax serve` at every stage of a real run, for a person to look at.

Starts the page with the real weights, drives the system's chromium (Selenium, chromium-driver)
through: empty page, images chosen, a run forming, the run done, a small sweep, and the same
on a phone-width window. Writes PNGs to --out. Without --content and --style it uses the built-in village and swirls
(nst_jax.samples), which is how docs/serve.png was made:

    python scripts/ui_screenshots.py --out /tmp/ui   # then cp /tmp/ui/3-running.png docs/serve.png
    python scripts/ui_screenshots.py --content ../shared/images/tubingen.jpg \
        --style ../shared/images/starry_night.jpg --out /tmp/ui
"""

from __future__ import annotations

import argparse
import shutil
import threading
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--content", help="content image (default: the built-in village)")
    parser.add_argument("--style", nargs="+", help="style image(s) (default: the built-in swirls)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, default=256, help="the run's size (default 256)")
    parser.add_argument("--sweep", default="style_weight=10,36,100", help="the sweep's axis and values")
    parser.add_argument("--sweep-size", type=int, default=128)
    args = parser.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from nst_jax import serve
    from nst_jax.jobs import Limits
    from nst_jax.weights import load_params

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.content is None or args.style is None:
        import tempfile

        from nst_jax import samples
        from nst_jax.io import save_image

        folder = Path(tempfile.mkdtemp())
        args.content = args.content or str(save_image(folder / "village.png", samples.village(384, 512)))
        args.style = args.style or [str(save_image(folder / "swirls.png", samples.swirls(384, 512)))]
    params, _ = load_params()
    holder, started = [], threading.Event()
    sock = serve.bind("127.0.0.1", 0)
    thread = threading.Thread(
        target=serve.serve,
        args=(params, "127.0.0.1", 0, Limits()),
        kwargs={"sock": sock, "ready": lambda r: (holder.append(r), started.set())},
        daemon=True,
    )
    thread.start()
    started.wait(120)
    running = holder[0]

    options = Options()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    by_id = lambda name: driver.find_element(By.ID, name)

    def wait(condition, timeout=1800, what=""):
        end = time.time() + timeout
        while time.time() < end:
            if condition():
                return
            time.sleep(0.2)
        raise SystemExit(f"timed out: {what}")

    def shot(name, width=1280, height=800, full=False):
        driver.set_window_size(width, height)
        time.sleep(0.4)
        if full:
            driver.set_window_size(width, driver.execute_script("return document.documentElement.scrollHeight") + 120)
            time.sleep(0.4)
        driver.save_screenshot(str(out / f"{name}.png"))
        driver.set_window_size(1280, 800)
        print("wrote", out / f"{name}.png", flush=True)

    def field(name, value):
        element = by_id(f"opt-{name}")
        element.clear()
        element.send_keys(str(value))

    try:
        driver.set_window_size(1280, 800)
        driver.get(running.url)
        wait(lambda: driver.execute_script("return document.body.dataset.ready === '1'"), 60, "page")
        shot("1-empty")
        shot("1-empty-phone", 390, 844)
        by_id("content-file").send_keys(str(Path(args.content).resolve()))
        by_id("style-file").send_keys("\n".join(str(Path(s).resolve()) for s in args.style))
        wait(lambda: by_id("start").get_attribute("disabled") is None, 120, "uploads")
        field("size", args.size)
        shot("2-inputs", full=True)
        by_id("start").click()
        stats = lambda: by_id("stats").text
        wait(lambda: "stage 2/" in stats() and "ETA" in stats() and "compiling" not in stats(), what="stage 2")
        driver.execute_script("window.scrollTo(0, 0)")
        shot("3-running")
        shot("3-running-phone", 390, 844, full=True)
        wait(lambda: by_id("stage-badge").text == "done", what="run done")
        driver.execute_script("window.scrollTo(0, 0)")
        shot("4-done", full=True)
        by_id("mode-sweep").click()
        axis, values = args.sweep.split("=", 1)
        driver.execute_script(f"document.getElementById('sweep-axis').value = '{axis}'")
        by_id("sweep-values").send_keys(values)
        field("size", args.sweep_size)
        by_id("start").click()
        cells = lambda: driver.find_elements(By.CSS_SELECTOR, "#grid .cell img:not([hidden])")
        wait(lambda: len(cells()) > 0 and by_id("stage-badge").text != "done", what="sweep forming")
        driver.execute_script("window.scrollTo(0, 0)")
        shot("5-sweep-running")
        wait(lambda: by_id("stage-badge").text == "done", what="sweep done")
        driver.execute_script("window.scrollTo(0, 0)")
        shot("6-sweep-done", full=True)
        shot("6-sweep-done-phone", 390, 844, full=True)
    finally:
        driver.quit()
        running.stop()
        thread.join(30)


if __name__ == "__main__":
    main()
