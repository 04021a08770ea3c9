"""The viewer in a real browser (headless Chromium through Selenium): the slide view draws the
slide and both heatmap layers, and the outlines sit where OpenSeadragon itself puts their
level-0 vertices, at the home view and zoomed in; a click on a lesion shows it; the URL keeps
the model and the layers; switching the model keeps the slide layer; the index sorts.

Skipped (with the reason) without Chromium, its driver or Selenium:
``apt-get install chromium chromium-driver`` and ``pip install selenium``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image

from vistumor.viewer.server import ViewerApp, ViewerServer

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402
from test_viewer import build_run  # noqa: E402

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="Chromium or chromedriver not found; install: apt-get install -y chromium chromium-driver")
OPTIONS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
           "--window-size=1280,800")
TOLERANCE_PX = 2.0

#: per vertex: where the SVG draws it (its path's screen matrix, relative to the viewer element)
#: and where OpenSeadragon puts that level-0 point (the slide's TiledImage and the viewport)
WHERE = """
const [selector, points] = arguments;
const app = window.vistumorApp, path = document.querySelector(selector);
const svg = path.ownerSVGElement, ctm = path.getScreenCTM();
const origin = app.viewer.element.getBoundingClientRect();
return points.map(([x, y]) => {
  const p = svg.createSVGPoint(); p.x = x; p.y = y;
  const drawn = p.matrixTransform(ctm);
  const image = app.slide.imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
  const viewport = app.viewer.viewport.imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
  return [drawn.x - origin.left, drawn.y - origin.top, image.x, image.y, viewport.x, viewport.y];
});
"""
BOX = """
const box = document.querySelector(arguments[0]).getBoundingClientRect();
const origin = window.vistumorApp.viewer.element.getBoundingClientRect();
return [box.left - origin.left, box.top - origin.top, box.right - origin.left, box.bottom - origin.top];
"""
PIXELS = """
const app = window.vistumorApp;
const canvas = app.viewer.drawer.canvas || document.querySelector('#osd canvas');
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
const grey = [];
for (let i = 0; i < data.length; i += 4 * 97) grey.push((data[i] + data[i + 1] + data[i + 2]) / 3);
return [canvas.width, canvas.height, grey];
"""


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    run = build_run(tmp_path_factory.mktemp("viewer_browser"))
    server = ViewerServer(ViewerApp(run), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.url, run
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for option in OPTIONS:
        options.add_argument(option)
    profile = tempfile.mkdtemp(prefix="vistumor-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    driver.set_script_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait_loaded(driver, timeout: float = 30.0) -> None:
    """Until every visible layer is fully loaded and the outlines are drawn."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if driver.execute_script("return !!(window.vistumorApp && window.vistumorApp.loaded())"):
            time.sleep(0.3)  # the frame after the last tile
            return
        time.sleep(0.1)
    message = driver.execute_script("const m = document.getElementById('message'); return m && m.textContent")
    raise AssertionError(f"the slide view did not load in {timeout} s ({message!r})")


def lesion_polygons(run: Path) -> list[shapely.Polygon]:
    features = json.loads((run / "models" / "oracle" / "lesions" / "tumor_001.geojson").read_text())["features"]
    return [shapely.Polygon(f["geometry"]["coordinates"][0], f["geometry"]["coordinates"][1:]) for f in features]


def assert_aligned(driver, selector: str, points: list[list[float]]) -> None:
    where = np.array(driver.execute_script(WHERE, selector, points))
    assert np.abs(where[:, :2] - where[:, 2:4]).max() <= TOLERANCE_PX, where
    assert np.abs(where[:, 2:4] - where[:, 4:6]).max() <= TOLERANCE_PX, where
    left, top, right, bottom = driver.execute_script(BOX, selector)
    drawn = where[:, 2:4]
    assert np.allclose([left, top, right, bottom], [*drawn.min(0), *drawn.max(0)], atol=TOLERANCE_PX)


def test_the_slide_view_draws_the_layers_and_aligned_outlines(url, browser, tmp_path):
    base, run = url
    browser.get(base + "view/tumor_001#model=oracle&show=probability,cam,truth,lesions&probability=0.6&cam=0.5")
    wait_loaded(browser)
    sources = browser.execute_script(
        "const w = window.vistumorApp.viewer.world; const out = [];"
        "for (let i = 0; i < w.getItemCount(); i++) out.push(w.getItemAt(i).source.tilesUrl); return out;")
    assert len(sources) == 3 and sources[0].endswith("/slide/tumor_001_files/")
    assert sorted(s.split("/heat/")[1] for s in sources[1:]) == ["oracle/cam/tumor_001_files/",
                                                                 "oracle/probability/tumor_001_files/"]
    width, height, grey = browser.execute_script(PIXELS)
    assert width > 500 and height > 500 and np.std(grey) > 10  # tissue, nuclei and heat, not a blank canvas

    polygons = lesion_polygons(run)
    assert browser.execute_script("return document.querySelectorAll('#vt-lesions path').length") == len(polygons)
    assert browser.execute_script("return document.querySelectorAll('#vt-truth path').length") == 1
    lesion = max(polygons, key=lambda p: p.area)
    index = polygons.index(lesion)
    selector = f"#vt-lesions path[data-index='{index}']"
    vertices = [list(v) for v in lesion.exterior.coords[:-1]]
    assert_aligned(browser, selector, vertices)
    truth = browser.execute_script("return window.vistumorApp.truth[0]")
    assert_aligned(browser, "#vt-truth path", truth)
    browser.save_screenshot(str(tmp_path / "slide_view.png"))
    shot = np.asarray(Image.open(tmp_path / "slide_view.png").convert("L"))
    assert shot.std() > 10

    x0, y0, x1, y1 = lesion.bounds  # zoomed in: the lesion fills the view
    browser.execute_script(
        "const [x, y, w, h] = arguments, app = window.vistumorApp;"
        "app.viewer.viewport.fitBounds(app.slide.imageToViewportRectangle(x, y, w, h), true);",
        x0, y0, x1 - x0, y1 - y0)
    wait_loaded(browser)
    assert_aligned(browser, selector, vertices)
    browser.save_screenshot(str(tmp_path / "slide_view_zoomed.png"))

    inside = lesion.representative_point()
    px, py = browser.execute_script(
        "const p = window.vistumorApp.slide.imageToViewerElementCoordinates(new OpenSeadragon.Point(...arguments));"
        "return [p.x, p.y];", inside.x, inside.y)
    viewer = browser.find_element(By.ID, "osd")
    size = viewer.size
    ActionChains(browser).move_to_element_with_offset(
        viewer, int(px - size["width"] / 2), int(py - size["height"] / 2)).click().perform()
    time.sleep(0.3)
    shown = browser.find_element(By.ID, "lesion").text
    measured = json.loads((run / "models" / "oracle" / "lesions" / "tumor_001.geojson").read_text())
    expected = measured["features"][index]["properties"]["measurements"]["tumor_probability"]
    assert "tumor probability" in shown and f"{expected:.3f}" in shown, shown
    assert browser.execute_script(f"return document.querySelector(\"{selector}\").classList.contains('selected')")
    errors = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"
              and "multi-image" not in entry["message"]]  # the test's own viewport.imageTo... call
    assert not errors


def test_the_url_keeps_the_view_and_a_model_switch_keeps_the_slide(url, browser):
    base, _ = url
    browser.get("about:blank")  # a new document, not a hash change
    browser.get(base + "view/tumor_001#model=oracle_b&show=cam&cam=0.8")
    wait_loaded(browser)
    state = browser.execute_script(
        "const a = window.vistumorApp; return [document.getElementById('model').value, a.heat.cam.getOpacity(),"
        "a.heat.probability.getOpacity(), a.heat.cam.source.tilesUrl,"
        "getComputedStyle(document.getElementById('vt-lesions')).display];")
    assert state[:3] == ["oracle_b", 0.8, 0] and "/heat/oracle_b/cam/" in state[3] and state[4] == "none"
    browser.execute_script("window.slideBefore = window.vistumorApp.slide;")
    Select(browser.find_element(By.ID, "model")).select_by_value("oracle")
    wait_loaded(browser)
    same, count, cam_url = browser.execute_script(
        "const a = window.vistumorApp; return [a.viewer.world.getItemAt(0) === window.slideBefore,"
        "a.viewer.world.getItemCount(), a.heat.cam.source.tilesUrl];")
    assert same and count == 3 and "/heat/oracle/cam/" in cam_url
    browser.execute_script(
        "const s = document.querySelector('#layers input[type=range]');"  # the probability's slider
        "s.value = 0.3; s.dispatchEvent(new Event('input'));")
    assert "model=oracle&" in browser.current_url and "probability=0.30" in browser.current_url
    browser.refresh()
    wait_loaded(browser)
    assert browser.execute_script("return [document.getElementById('model').value,"
                                  "window.vistumorApp.heat.cam.getOpacity()]") == ["oracle", 0.8]


def test_the_index_sorts_by_score_and_shows_thumbnails(url, browser):
    base, _ = url
    browser.get(base)
    names = lambda: [row.find_element(By.TAG_NAME, "a").text  # noqa: E731
                     for row in browser.find_elements(By.CSS_SELECTOR, "#slides tbody tr")]
    assert sorted(names()) == ["normal_001", "tumor_001"]
    header = browser.find_elements(By.CSS_SELECTOR, "#slides th[data-sort]")[0]
    header.click()
    assert names() == ["tumor_001", "normal_001"]
    header.click()
    assert names() == ["normal_001", "tumor_001"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not browser.execute_script(
            "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"):
        time.sleep(0.1)
    assert browser.execute_script("return Array.from(document.images).every(i => i.naturalWidth > 0)")
