"""docs/serve.png: the page of `captioner serve` with a captioned photo, in headless chromium.

Starts the server (the shipped model, or --run's, on a free port on 127.0.0.1), opens the page
in Debian's chromium through /usr/bin/chromedriver, chooses the photos (--photo, once per photo;
tests/data/chelsea.jpg, scikit-image's cat photo, by default) all at once, waits for their
captions, and saves an 800 x 600 (--height) screenshot reduced to 64 colours. With --attention
it first ticks "Show attention" (a model with attention, as the shipped one is): each caption
comes with the photo drawn once per word.

    python scripts/screenshot_serve.py --attention --height 700     # -> docs/serve.png

docs/serve-scripts.png: one page, one run, two scripts. --bilingual-demo DIR trains (in DIR,
once; a later call reuses it) tests/bilingual.py's run, the one tests/test_browser.py serves:
the synthetic shapes captioned in Arabic when the top shape is red or green, in Chinese when it
is blue or yellow, on the tiny test encoder (text.tokenizer auto picks characters: most
captions are Chinese). It trains 20 epochs (--epochs), where the test's 12 already give each
photo its script but not always the right shapes. Then it captions that module's two photos,
drawn 8 times larger (nearest neighbour) so that the page does not blur them, with that run:

    python scripts/screenshot_serve.py --bilingual-demo /tmp/bilingual --height 520
    # -> docs/serve-scripts.png; the same as
    python scripts/screenshot_serve.py --run /tmp/bilingual/run --output docs/serve-scripts.png \\
        --photo /tmp/bilingual/photos/red-circle-over-yellow.png \\
        --photo /tmp/bilingual/photos/blue-square-over-green.png --height 520

A run on a test encoder (tiny_test, tiny_conv_test) is served with them registered: the server
runs `python -c "import tests.conftest; ..." serve` with the repository on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import io
import json
import os
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
TEST_ENCODERS = ("tiny_test", "tiny_conv_test")  # registered by tests/conftest.py
SERVE_LAUNCHER = "import tests.conftest; from captioner.cli import main; main()"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", help="the run to serve [default: the shipped model]")
    photo_help = "a photo to caption; once per photo [default: tests/data/chelsea.jpg]"
    parser.add_argument("--photo", action="append", help=photo_help)
    output_help = "[default: docs/serve.png; docs/serve-scripts.png with --bilingual-demo]"
    parser.add_argument("--output", help=output_help)
    parser.add_argument("--attention", action="store_true", help='tick "Show attention" first')
    parser.add_argument("--height", type=int, default=600)
    parser.add_argument("--bilingual-demo", metavar="DIR",
                        help="train tests/bilingual.py's run in DIR (or reuse it) and serve it "
                        "with its Arabic and its Chinese photo")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=20, help="--bilingual-demo's epochs")
    args = parser.parse_args()
    output = args.output or str(ROOT / "docs" / "serve.png")
    if args.bilingual_demo:
        if args.run:
            parser.error("--bilingual-demo serves the run it trains: leave out --run")
        run, photos = bilingual_demo(Path(args.bilingual_demo), args.epochs)
        args.run, args.photo = str(run), args.photo or [str(photo) for photo in photos]
        output = args.output or str(ROOT / "docs" / "serve-scripts.png")
    photos = [Path(photo).resolve() for photo in args.photo or [ROOT / "tests/data/chelsea.jpg"]]

    from PIL import Image
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command, env = [sys.executable, "-m", "captioner"], dict(os.environ)
    if args.run:
        encoder = json.loads((Path(args.run) / "run.json").read_text())["encoder"]["name"]
        if encoder in TEST_ENCODERS:  # a test encoder: registered in the server's process too
            command = [sys.executable, "-c", SERVE_LAUNCHER]
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        command += ["serve", "--run", str(args.run)]
    else:
        command += ["serve"]
    log = tempfile.TemporaryFile()
    server = subprocess.Popen([*command, "--port", str(port)], env=env, stdout=log,
                              stderr=subprocess.STDOUT)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            if server.poll() is not None:
                log.seek(0)
                sys.exit(f"the server exited ({server.returncode}):\n{log.read().decode()[-3000:]}")
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
                driver.set_page_load_timeout(60)
                driver.get(url)
                if args.attention:  # shown once /api/health has said the model attends
                    toggle = (By.CSS_SELECTOR, "#attention-option:not([hidden]) input")
                    try:
                        WebDriverWait(driver, 60).until(lambda d: d.find_elements(*toggle))
                    except TimeoutException:
                        sys.exit("--attention: the model served has no attention to show")
                    driver.find_element(*toggle).click()
                # All at once, as a user choosing several files: one card each, in this order.
                files = driver.find_element(By.ID, "files")
                files.send_keys("\n".join(map(str, photos)))
                done = (By.CSS_SELECTOR, "figure[data-state=done] .caption")
                WebDriverWait(driver, 120).until(
                    lambda d: len(d.find_elements(*done)) == len(photos)
                )
                captions = [element.text for element in driver.find_elements(*done)]
                if args.attention:  # a panel per word, drawn once the photo has decoded
                    maps = (By.CSS_SELECTOR, "figure .maps")
                    WebDriverWait(driver, 60).until(
                        lambda d: all(
                            m.find_elements(By.TAG_NAME, "canvas") for m in d.find_elements(*maps)
                        )
                    )
                png = driver.get_screenshot_as_png()
            finally:
                driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(64, dither=Image.Dither.NONE)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    image.save(output, optimize=True)
    print(f"{output}: {image.width} x {image.height}, {Path(output).stat().st_size:,} bytes")
    for photo, caption in zip(photos, captions):
        print(f"{photo.name}\t{caption}")


def bilingual_demo(folder: Path, epochs: int) -> tuple[Path, tuple[Path, Path]]:
    """tests/bilingual.py's run, trained in folder/ for `epochs` (or the one already there,
    trained for as many), and its two photos drawn 8 times larger in folder/photos."""
    sys.path.insert(0, str(ROOT))
    from tests import bilingual

    run = folder / "run"
    if (run / "model.keras").is_file():
        trained = json.loads((run / "run.json").read_text())["config"]["train"]["epochs"]
        if trained != epochs:
            sys.exit(f"{run} was trained for {trained} epochs, not {epochs}: remove {folder} "
                     f"or pass --epochs {trained}")  # fmt: skip
        print(f"reusing {run}")
    elif folder.exists() and any(folder.iterdir()):
        sys.exit(f"{folder} holds no finished run: remove it, or name an empty folder")
    else:
        print(f"training {run} ({epochs} epochs)...")
        bilingual.train(folder, epochs)
    print(f"{run}: tokenizer {bilingual.tokenizer_of(run)}")
    return run, bilingual.write_photos(folder / "photos", scale=8)


if __name__ == "__main__":
    main()
