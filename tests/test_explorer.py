"""The explorer page (service/http/explorer/) in a real browser: Debian's headless Chromium, driven by
Selenium through Debian's ChromeDriver (`make test` installs both when missing), against the session's
real server on loopback. For every demo model it uploads a generated scene and checks the prediction
shown against the gRPC API's for the same bytes, and one drawn overlay (or channel chart) per attention
output the model has. Screenshots go to test-artifacts/explorer/ (docs/service.md shows one)."""

import base64
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from attnserve.client import VisionClient
from attnserve.demo.samples import FOLDER as SAMPLES
from attnserve.demo.samples import samples
from attnserve.manifest import CLASSIFICATION

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("ATTNSERVE_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "explorer"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Flags for a root user on a machine with no network: without the background-networking ones Chromium
# keeps trying Google's hosts.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",  # a laptop screen
)
WAIT_S = 60  # a prediction takes well under a second here; a loaded CI machine gets room
MODELS = {  # demo model: the sample uploaded
    "cbam_classifier": "one_shape.png",
    "eca_classifier": "shifted_style.png",
    "vit_classifier": "one_shape.png",
    "harnet_detector": "several_shapes.png",
    "fcos_detector": "wide.png",
}


def test_the_shipped_samples_are_the_generators():
    """The page's samples are what `python -m attnserve.demo.samples` draws (pixels, not PNG bytes, so a
    zlib release does not matter)."""
    for name, image in samples().items():
        np.testing.assert_array_equal(np.asarray(Image.open(SAMPLES / name).convert("RGB")), image, name)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    assert not missing, f"{missing} not found: `make test` installs Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def client(server):
    with VisionClient(server.target) as c:
        yield c


def open_page(browser, server, model: str) -> None:
    browser.get(f"http://127.0.0.1:{server.http_port}/?model={model}")
    WebDriverWait(browser, WAIT_S).until(lambda b: body(b).get_attribute("data-state") in ("idle", "error"))
    assert body(browser).get_attribute("data-state") == "idle", status(browser)
    assert browser.find_element(By.ID, "model").get_attribute("value") == model


def body(browser):
    return browser.find_element(By.TAG_NAME, "body")


def status(browser) -> str:
    return browser.find_element(By.ID, "status").text


def rendered(browser) -> int:
    return int(body(browser).get_attribute("data-rendered") or 0)


def until_rendered(browser, count: int) -> None:
    """Wait for the page's render number ``count`` (or an error, reported)."""
    WebDriverWait(browser, WAIT_S).until(
        lambda b: rendered(b) >= count or body(b).get_attribute("data-state") == "error"
    )
    assert rendered(browser) >= count, status(browser)


def drawn(browser, figure) -> dict:
    """What one map figure shows: its canvas's size, class and distinct colours, or its bars."""
    return browser.execute_script(
        """const figure = arguments[0], canvas = figure.querySelector("canvas.heat");
        if (!canvas) return {bars: figure.querySelectorAll("svg.channels rect").length};
        const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        const colours = new Set();
        for (let i = 0; i < pixels.length; i += 4) {
          colours.add(pixels[i] * 65536 + pixels[i + 1] * 256 + pixels[i + 2]);
        }
        return {width: canvas.width, height: canvas.height, className: canvas.className,
                colours: colours.size, opacity: getComputedStyle(canvas).opacity};""",
        figure,
    )


def screenshot(browser, path: Path) -> None:
    """The whole page, below the window too (Chromium's DevTools protocol)."""
    size = browser.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = browser.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


def severe_console_messages(browser) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


@pytest.mark.parametrize("model", MODELS)
def test_the_page_shows_the_prediction_and_every_map(browser, server, client, model):
    open_page(browser, server, model)
    sample = SAMPLES / MODELS[model]
    browser.find_element(By.ID, "file").send_keys(str(sample))
    until_rendered(browser, 1)

    info = client.model_info(model)
    encoded = sample.read_bytes()
    shown = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#labels li.label .name")]
    if info.task == CLASSIFICATION:
        (expected,) = client.classify([encoded], model).results
        assert shown == [s.label for s in expected.labels]  # the same labels, best first
    else:
        (expected,) = client.detect([encoded], model).results
        assert expected.detections, "the sample has objects the detector finds"
        assert shown == [d.label for d in expected.detections]
        assert len(browser.find_elements(By.CSS_SELECTOR, "#picture svg rect")) == len(expected.detections)

    figures = browser.find_elements(By.CSS_SELECTOR, "#maps figure.map")
    assert sorted(f.get_attribute("data-map") for f in figures) == sorted(a.name for a in info.attention)
    width, height = Image.open(sample).size
    for figure in figures:
        output = next(a for a in info.attention if a.name == figure.get_attribute("data-map"))
        seen = drawn(browser, figure)
        if output.kind == "channel":
            assert seen == {"bars": output.shape[1]}, output.name
        else:  # the server's original-geometry heatmap (max_map_side, 2048, leaves these sizes), coloured
            assert (seen["width"], seen["height"]) == (width, height), output.name
            assert seen["colours"] > 3, f"{output.name} is drawn in {seen['colours']} colours"
    timing = browser.find_element(By.ID, "timing").text
    assert "inference" in timing and "round trip" in timing
    screenshot(browser, ARTIFACTS / f"{model}.png")
    assert severe_console_messages(browser) == []


def test_geometry_toggle_opacity_and_samples(browser, server):
    """The model-grid view draws each map at its grid size, pixelated, over the image as the model sees
    it; the slider sets the overlays' opacity; a sample button runs a prediction."""
    open_page(browser, server, "fcos_detector")
    browser.find_element(By.CSS_SELECTOR, "button.sample[data-src$='wide.png']").click()
    until_rendered(browser, 1)
    browser.find_element(By.CSS_SELECTOR, "input[value=MAP_GEOMETRY_MODEL_GRID]").click()
    until_rendered(browser, 2)
    grids = {"level4_spatial": 32, "level8_spatial": 16, "level16_spatial": 8}
    for name, side in grids.items():
        seen = drawn(browser, browser.find_element(By.CSS_SELECTOR, f"figure[data-map={name}]"))
        assert (seen["width"], seen["height"], seen["className"]) == (side, side, "heat grid"), name
    backdrop = browser.find_element(By.CSS_SELECTOR, "figure[data-map=level4_spatial] .stack img")
    fitted = backdrop.get_attribute("src")
    assert fitted.startswith("data:image/png")  # the letterboxed 128×128 input, drawn by the page
    letterboxed = Image.open(io.BytesIO(base64.b64decode(fitted.split(",", 1)[1])))
    assert letterboxed.size == (128, 128)
    assert letterboxed.convert("RGB").getpixel((64, 2)) == (114, 114, 114)  # the grey band above

    slider = browser.find_element(By.ID, "opacity")
    slider.send_keys(Keys.HOME)
    overlay = browser.find_element(By.CSS_SELECTOR, "figure[data-map=level8_spatial]")
    assert drawn(browser, overlay)["opacity"] == "0"
    slider.send_keys(Keys.END)
    assert drawn(browser, overlay)["opacity"] == "1"
    assert browser.find_element(By.ID, "opacity-value").text == "100 %"
    assert severe_console_messages(browser) == []


def test_a_broken_image_gets_the_servers_message(browser, server, tmp_path):
    open_page(browser, server, "eca_classifier")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    browser.find_element(By.ID, "file").send_keys(str(broken))
    WebDriverWait(browser, WAIT_S).until(lambda b: body(b).get_attribute("data-state") == "error")
    assert "HTTP 400" in status(browser) and "image 0" in status(browser)
