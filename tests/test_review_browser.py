"""One review end to end in a real browser (headless Chromium through Selenium): on a tumor
slide with two predicted lesions the reviewer clicks one and confirms it, clicks the other and
rejects it, draws a missed lesion by clicking its vertices on the slide (double-click closes
it), names themself, comments and saves; after a reload the page shows the same statuses,
polygon, comment and name; then the tiling stage, pointed at the review folder, labels the
patches under the drawn lesion tumor and under the rejected one normal. A save over a
colleague's newer review is refused (409) and the page says why.

Skipped like tests/test_viewer_browser.py without Chromium, its driver or Selenium.
"""

from __future__ import annotations

import http.client
import json
import threading
import time

import numpy as np
import pytest
from shapely.geometry import Polygon

from vistumor.viewer.server import ViewerApp, ViewerServer

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
import test_viewer_browser  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from test_review import DRAWN, assert_reviewed_labels, build_review_run, predicted, tile_with_reviews  # noqa: E402
from test_viewer_browser import CHROMIUM, DRIVER, wait_loaded  # noqa: E402

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="Chromium or chromedriver not found; install: apt-get install -y chromium chromium-driver")
browser = test_viewer_browser.browser  # the headless-Chromium fixture, one per module
REVIEWER, COMMENT = "A. Pathologist", "one missed focus above the second lesion"
#: level-0 px per screen px at the home view is about 2.2: a click lands within ~3 px
VERTEX_PX = 4.0

STATE = """
const app = window.vistumorApp;
return {
  marked: Array.from(document.querySelectorAll('#vt-lesions path')).map((p) =>
    ['confirmed', 'rejected'].find((s) => p.classList.contains(s)) || 'unreviewed'),
  drawn: app.review.current.drawn, comment: document.getElementById('comment').value,
  reviewer: document.getElementById('reviewer').value, drawing: app.review.drawing,
  paths: document.querySelectorAll('#vt-drawn path').length, state: document.getElementById('review-state').textContent,
};
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    run = build_review_run(tmp_path_factory.mktemp("review_browser"))
    server = ViewerServer(ViewerApp(run), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.url, run
    server.shutdown()
    server.server_close()


def click_at(driver, x: float, y: float, double: bool = False) -> None:
    """Click (or double-click) the slide at level-0 ``(x, y)``, where OpenSeadragon shows it."""
    px, py = driver.execute_script(
        "const p = window.vistumorApp.slide.imageToViewerElementCoordinates(new OpenSeadragon.Point(...arguments));"
        "return [p.x, p.y];", x, y)
    viewer = driver.find_element(By.ID, "osd")
    size = viewer.size
    chain = ActionChains(driver).move_to_element_with_offset(
        viewer, int(round(px - size["width"] / 2)), int(round(py - size["height"] / 2)))
    (chain.double_click() if double else chain.click()).perform()


def wait_for(driver, script: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {script}")


def review_lesion(driver, polygon: Polygon, status: str) -> None:
    inside = polygon.representative_point()
    click_at(driver, inside.x, inside.y)
    selector = f"#lesion button[data-status='{status}']"
    driver.find_element(By.CSS_SELECTOR, selector).click()
    assert driver.find_element(By.CSS_SELECTOR, selector).get_attribute("aria-pressed") == "true"  # redrawn


def test_a_review_made_in_the_browser_is_saved_reloaded_and_tiled(served, browser, tmp_path):
    base, run = served
    first, second = predicted(run)
    browser.get(base + "view/tumor_001#model=oracle&show=probability,truth,lesions&probability=0.3")
    wait_loaded(browser)
    assert "2 predicted lesion(s)" in browser.find_element(By.ID, "review-summary").text

    review_lesion(browser, first, "confirmed")
    review_lesion(browser, second, "rejected")
    assert browser.execute_script(STATE)["marked"] == ["confirmed", "rejected"]

    browser.find_element(By.ID, "draw").click()
    assert browser.execute_script(STATE)["drawing"] is True
    centre = "return window.vistumorApp.viewer.viewport.getCenter(true).toString()"
    before = browser.execute_script(centre)
    ActionChains(browser).drag_and_drop_by_offset(browser.find_element(By.ID, "osd"), 120, 80).perform()
    assert browser.execute_script(centre) == before  # no panning while drawing, and a drag is no vertex
    assert browser.execute_script("return window.vistumorApp.review.points.length") == 0
    for x, y in DRAWN[:3]:
        click_at(browser, x, y)
    click_at(browser, *DRAWN[3], double=True)  # its two clicks add one vertex; the double-click closes
    state = browser.execute_script(STATE)
    assert state["drawing"] is False and state["paths"] == 1 and len(state["drawn"]) == 1
    assert np.abs(np.array(state["drawn"][0]) - DRAWN).max() <= VERTEX_PX, state["drawn"]

    name = browser.find_element(By.ID, "reviewer")
    name.clear()
    name.send_keys(REVIEWER)
    browser.find_element(By.ID, "comment").send_keys(COMMENT)
    assert "unsaved changes" in browser.execute_script(STATE)["state"]
    browser.find_element(By.ID, "save-review").click()
    wait_for(browser, "return window.vistumorApp.saved")
    record = json.loads((run / "reviews" / "oracle" / "tumor_001.review.json").read_text())
    assert list(record["lesions"].values()) == ["confirmed", "rejected"]
    assert (record["reviewer"], record["comment"], len(record["drawn"])) == (REVIEWER, COMMENT, 1)
    assert f"saved by {REVIEWER}" in browser.execute_script(STATE)["state"]

    browser.refresh()
    wait_loaded(browser)
    after = browser.execute_script(STATE)
    assert after["marked"] == ["confirmed", "rejected"]
    assert after["paths"] == 1 and after["drawn"] == [record["drawn"][0]["points"]]
    assert (after["comment"], after["reviewer"]) == (COMMENT, REVIEWER)
    assert f"saved by {REVIEWER}" in after["state"]
    errors = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors

    summary, tables = tile_with_reviews(run, tmp_path / "tiling", {"tumor_001": "tumor"})
    assert summary["done"] == 1
    assert_reviewed_labels(run, tables["tumor_001"], Polygon(after["drawn"][0]).buffer(-2 * VERTEX_PX))


def colleague_saves(base: str, comment: str) -> int:
    """Another page saves the review (based on the saved version, over HTTP); its version."""
    host = base.split("//")[1].rstrip("/")
    connection = http.client.HTTPConnection(host, timeout=10)
    connection.request("GET", "/api/review/oracle/tumor_001")
    saved = json.loads(connection.getresponse().read())
    version = saved["review"]["version"] if saved["saved"] else 0
    body = json.dumps({"reviewer": "B. Colleague", "comment": comment, "based_on": version})
    connection.request("POST", "/api/review/oracle/tumor_001", body,
                       {"Content-Type": "application/json", "Origin": base.rstrip("/")})
    answer = connection.getresponse()
    assert answer.status == 200, answer.read()
    version = json.loads(answer.read())["review"]["version"]
    connection.close()
    return version


def test_a_save_over_a_colleagues_newer_review_shows_the_409_reason(served, browser):
    """The page loads the review; a colleague saves meanwhile; the page's save is refused and
    says why; reloaded, the page shows the colleague's review and saves on top of it."""
    base, run = served
    browser.get(base + "view/tumor_001#model=oracle")
    wait_loaded(browser)
    version = colleague_saves(base, "saved meanwhile")
    name = browser.find_element(By.ID, "reviewer")
    name.clear()
    name.send_keys(REVIEWER)
    browser.find_element(By.ID, "comment").send_keys(" and more")
    browser.find_element(By.ID, "save-review").click()
    state = wait_for(browser, "const s = document.getElementById('review-state').textContent;"
                              "return s.startsWith('not saved') && s;")
    assert f"the saved one is version {version} by B. Colleague" in state and "reload the page" in state, state
    saved = run / "reviews" / "oracle" / "tumor_001.review.json"
    assert json.loads(saved.read_text())["comment"] == "saved meanwhile"

    browser.refresh()
    wait_loaded(browser)
    assert browser.execute_script(STATE)["comment"] == "saved meanwhile"
    browser.find_element(By.ID, "comment").send_keys(", confirmed")
    browser.find_element(By.ID, "save-review").click()
    wait_for(browser, "return window.vistumorApp.saved")
    record = json.loads(saved.read_text())
    assert (record["version"], record["comment"]) == (version + 1, "saved meanwhile, confirmed")
