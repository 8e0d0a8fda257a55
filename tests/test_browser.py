"""The page of `captioner serve` in a real browser: Debian's chromium, driven by selenium through
/usr/bin/chromedriver (nothing downloaded). Skipped where they are not installed
(`apt-get install chromium chromium-driver`)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from captioner.serving.app import create_app
from tests.conftest import CHELSEA

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
