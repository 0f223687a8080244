"""The viewer and the demo in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by
selenium. Each test waits for the 3D canvas, checks that the screenshot is not blank, changes a control in the page
(the viewer's confidence percentile, the demo's camera by a mouse drag), checks that
the screenshot changes, and checks that the page made no request beyond 127.0.0.1. Screenshots are kept under the
test's tmp folder, in artifacts/."""

import glob
import io
import json
import os
import shutil
import socket
import time
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from fast3r_jax.app import demo, viewer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIEWS = sorted(glob.glob(os.path.join(ROOT, "examples", "synthetic_room", "*.png")))[:3]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--window-size=1280,900",
                  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser(tmp_path):
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        pytest.fail("the browser tests need Debian's chromium and chromium-driver: "
                    "apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    chrome = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver))
    chrome.set_page_load_timeout(60)
    yield chrome
    chrome.quit()


def outside_requests(browser) -> list[str]:
    """Every network URL (http, https, ws, wss) the browser asked for so far whose host is not 127.0.0.1
    (Chromium's network log; its own chrome:// pages and data: URLs are not network requests)."""
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
            urls.append(message["params"].get("request", message["params"]).get("url"))
    return [u for u in urls
            if urlsplit(u).scheme in ("http", "https", "ws", "wss") and urlsplit(u).hostname != "127.0.0.1"]


def screenshot(element, path) -> np.ndarray:
    """(H, W, 3) pixels of an element's screenshot, also saved to `path`."""
    png = element.screenshot_as_png
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float32)


def wait_for_drawing(element, path, timeout: float = 60) -> np.ndarray:
    """Screenshots of the element until it is not blank (pixel standard deviation above 5 of 255)."""
    end = time.time() + timeout
    while True:
        pixels = screenshot(element, path)
        if pixels.std() > 5 or time.time() > end:
            return pixels
        time.sleep(1)


def wait_for_change(element, before: np.ndarray, path, timeout: float = 30) -> np.ndarray:
    end = time.time() + timeout
    while True:
        pixels = screenshot(element, path)
        if pixels.shape != before.shape or np.abs(pixels - before).mean() > 1 or time.time() > end:
            return pixels
        time.sleep(1)


def test_viewer_in_chromium(browser, tmp_path):
    glb, _, _ = demo.Demo().run(VIEWS)  # the demo's pipeline (model kept loaded for the demo's test)
    view = viewer.Viewer(viewer.load_scene(os.path.dirname(glb)), port=free_port())
    try:
        browser.get(view.address)
        canvas = WebDriverWait(browser, 60).until(lambda b: b.find_element(By.TAG_NAME, "canvas"))
        WebDriverWait(browser, 60).until(lambda b: view.server.get_clients())
        first = wait_for_drawing(canvas, tmp_path / "artifacts" / "viewer.png")
        assert first.std() > 5, "the viewer's canvas stayed blank"
        percentile = next(e for e in browser.find_elements(By.CSS_SELECTOR, "input[type=text]")
                          if e.get_attribute("value") == "10" and e.is_displayed())  # the percentile's number box
        percentile.send_keys(Keys.CONTROL, "a")
        percentile.send_keys("90", Keys.ENTER)
        WebDriverWait(browser, 30).until(lambda _: view.percentile.value == 90)
        second = wait_for_change(canvas, first, tmp_path / "artifacts" / "viewer_percentile_90.png")
        assert np.abs(second - first).mean() > 1, "raising the confidence percentile did not change the picture"
        outside = outside_requests(browser)
        assert not outside, f"the viewer requested {outside}"
    finally:
        view.stop()


def test_demo_in_chromium(browser, tmp_path):
    port = free_port()
    blocks = demo.Demo().launch(port=port, block=False)
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        upload = WebDriverWait(browser, 60).until(
            lambda b: b.find_element(By.CSS_SELECTOR, "input[type=file][multiple]"))
        upload.send_keys("\n".join(VIEWS))
        WebDriverWait(browser, 60).until(lambda b: all(os.path.basename(p) in b.page_source for p in VIEWS))
        browser.find_element(By.XPATH, "//button[normalize-space()='Reconstruct']").click()
        canvas = WebDriverWait(browser, 240).until(lambda b: b.find_element(By.TAG_NAME, "canvas"))
        first = wait_for_drawing(canvas, tmp_path / "artifacts" / "demo.png")
        assert first.std() > 5, "the demo's 3D canvas stayed blank"
        ActionChains(browser).move_to_element(canvas).click_and_hold().move_by_offset(120, 40).release().perform()
        second = wait_for_change(canvas, first, tmp_path / "artifacts" / "demo_rotated.png")
        assert np.abs(second - first).mean() > 1, "dragging on the 3D canvas did not turn the view"
        browser.set_window_size(1280, 1400)
        screenshot(browser.find_element(By.TAG_NAME, "body"), tmp_path / "artifacts" / "demo_page.png")
        outside = outside_requests(browser)
        assert not outside, f"the demo requested {outside}"
    finally:
        blocks.close()
