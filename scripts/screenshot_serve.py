"""docs/serve.png: the page of `captioner serve` with a captioned photo, in headless chromium.

Starts the server (the shipped model, a free port on 127.0.0.1), opens the page in Debian's
chromium through /usr/bin/chromedriver, chooses tests/data/chelsea.jpg (scikit-image's cat
photo), waits for its caption, and saves an 800 x 600 (--height) screenshot reduced to 64
colours. With --attention it first ticks "Show attention" (a model with attention, as the
shipped one is): the caption comes with the photo drawn once per word.

    python scripts/screenshot_serve.py --attention --height 700     # -> docs/serve.png
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photo", default=str(ROOT / "tests" / "data" / "chelsea.jpg"))
    parser.add_argument("--output", default=str(ROOT / "docs" / "serve.png"))
    parser.add_argument("--attention", action="store_true", help='tick "Show attention" first')
    parser.add_argument("--height", type=int, default=600)
    args = parser.parse_args()

    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "captioner", "serve", "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/api/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        with tempfile.TemporaryDirectory() as profile:
            for flag in [*FLAGS, f"--user-data-dir={profile}"]:
                options.add_argument(flag)
            driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
            try:  # the page itself 800 x --height, whatever the window around it takes
                metrics = {"width": 800, "height": args.height, "deviceScaleFactor": 1,
                           "mobile": False}  # fmt: skip
                driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
                driver.get(url)
                if args.attention:  # shown once /api/health has said the model attends
                    toggle = (By.CSS_SELECTOR, "#attention-option:not([hidden]) input")
                    WebDriverWait(driver, 60).until(lambda d: d.find_elements(*toggle))
                    driver.find_element(*toggle).click()
                driver.find_element(By.ID, "files").send_keys(str(Path(args.photo).resolve()))
                done = (By.CSS_SELECTOR, "figure[data-state=done] .caption")
                WebDriverWait(driver, 120).until(lambda d: d.find_elements(*done))
                caption = driver.find_element(*done).text
                if args.attention:  # a panel per word, drawn once the photo has decoded
                    words = len(caption.split())
                    panels = (By.CSS_SELECTOR, "figure .maps .map canvas")
                    WebDriverWait(driver, 60).until(
                        lambda d: len(d.find_elements(*panels)) == words
                    )
                png = driver.get_screenshot_as_png()
            finally:
                driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=60)
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(64, dither=Image.Dither.NONE)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    image.save(args.output, optimize=True)
    print(f"{args.output}: {image.width} x {image.height}, {Path(args.output).stat().st_size:,} "
          f"bytes; caption: {caption}")  # fmt: skip


if __name__ == "__main__":
    main()
