"""The page of `captioner serve` in a real browser: Debian's chromium, driven by selenium through
/usr/bin/chromedriver (nothing downloaded). Skipped where they are not installed
(`apt-get install chromium chromium-driver`)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import unicodedata
from pathlib import Path

import pytest

from captioner.serving.app import create_app
from tests import bilingual
from tests.conftest import CHELSEA
from tests.test_serve import free_port, wait_for_health

webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev extra)")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=800,600"]  # fmt: skip

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason="needs Debian's chromium and chromedriver: apt-get install chromium chromium-driver",
)


@pytest.fixture(scope="module")
def server(shipped_captioner):
    """The app on a real socket, served by uvicorn in a thread (the model is the session's)."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(create_app(shipped_captioner), "127.0.0.1", port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)


DONE = (By.CSS_SELECTOR, "figure[data-state=done] .caption")  # a photo's caption, once it came


def wait_for_caption(driver, text: str | None = None, seconds: float = 60) -> str:
    """The first caption on the page once there is one (`text`, if given)."""
    WebDriverWait(driver, seconds).until(
        lambda d: d.find_elements(*DONE) and text in (None, d.find_element(*DONE).text)
    )
    return driver.find_element(*DONE).text


def test_a_photo_chosen_in_the_page_gets_the_apis_caption(server, browser, shipped_captioner):
    # Expected captions first: the server's model thread uses the same Captioner, which is for
    # one thread at a time.
    expected, greedy = (shipped_captioner.caption(CHELSEA, beam=b) for b in (None, 1))
    assert greedy != expected  # so that changing the beam shows
    browser.get(server)
    assert browser.title == "captioner"
    browser.find_element(By.ID, "files").send_keys(str(CHELSEA))
    assert wait_for_caption(browser) == expected
    assert browser.find_element(By.ID, "model").text.startswith("shipped Flickr8k model")
    # Changing a decoding option captions the photo again with it.
    Select(browser.find_element(By.NAME, "beam")).select_by_value("1")
    assert wait_for_caption(browser, greedy) == greedy


@pytest.fixture(scope="module")
def bilingual_run(tmp_path_factory):
    """tests/bilingual.py's run: Arabic captions for photos whose top shape is red or green,
    Chinese for blue or yellow; 12 epochs of the tiny model (10 to 20 s on 2 cores)."""
    return bilingual.train(tmp_path_factory.mktemp("bilingual"))


def scripts_of(text: str) -> set[str]:
    """The scripts of the letters in `text`, by their Unicode names' first word."""
    return {unicodedata.name(c).split()[0] for c in text if unicodedata.category(c)[0] == "L"}


@pytest.mark.slow
def test_arabic_reads_from_the_right_and_chinese_from_the_left_in_one_page(
    bilingual_run, browser, tmp_path
):
    from captioner import Captioner

    run = bilingual_run
    # Most training captions are Chinese, so `auto` split them into characters; the Arabic
    # words stay one token each and come back whole, joined by spaces.
    assert bilingual.tokenizer_of(run) == "characters"
    arabic, chinese = bilingual.write_photos(tmp_path / "photos")
    expected = Captioner.load(run).caption([arabic, chinese])
    assert scripts_of(expected[0]) == {"ARABIC"} and " " in expected[0]
    assert scripts_of(expected[1]) == {"CJK"}

    # `captioner serve --run` in its own process, the tiny encoder registered (SERVE_LAUNCHER).
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    command = [sys.executable, "-c", bilingual.SERVE_LAUNCHER, "serve", "--run", str(run),
               "--port", str(port)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    with open(log, "wb") as output:
        server = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        assert wait_for_health(url, server, log, timeout=120)["status"] == "ok"
        browser.set_page_load_timeout(30)
        browser.get(url)
        # Both photos chosen at once (one request); their cards keep the order chosen.
        browser.find_element(By.ID, "files").send_keys(f"{arabic}\n{chinese}")
        WebDriverWait(browser, 60).until(lambda d: len(d.find_elements(*DONE)) == 2)
        captions = browser.find_elements(*DONE)
        texts = [caption.get_attribute("textContent") for caption in captions]
        direction = "return getComputedStyle(arguments[0]).direction"
        directions = [browser.execute_script(direction, caption) for caption in captions]
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
    assert texts == expected, log.read_text()[-2000:]
    assert [caption.text for caption in captions] == expected  # as shown, in logical order
    assert directions == ["rtl", "ltr"]
    assert " " not in texts[1]
