"""The Data page's "Diversity in feature space" in a real browser (Debian's Chromium, Playwright): a small
generated data set, the measurement on a click, its figures, the map with a point per training image, and
the drop toggle. (Selecting points on the map is not driven here: a mouse click on a plotly point did not
register a selection in headless Chromium; `ui.charts.selected_items` is tested on Streamlit's selection state.)
A screenshot of the section goes to ``$FTLAB_SCREENSHOTS`` (default ``screenshots/``)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from appdriver import CHROMIUM, CHROMIUM_ARGS, ROOT, choose, fill, keyed, nav, serve, shown, stop
from conftest import under_ci
from playwright.sync_api import expect, sync_playwright

WAIT_MS = 240_000  # torch's import and the first forward pass, on a loaded 2-core machine
expect.set_options(timeout=WAIT_MS)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not CHROMIUM.exists():
        if under_ci():
            pytest.fail(f"{CHROMIUM} is missing: CI must install Debian's chromium (see .ci/run)", pytrace=False)
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium chromium-driver)")
    tmp = tmp_path_factory.mktemp("browser")
    env = {**os.environ, "FTLAB_HOME": str(tmp / "home"), "FTLAB_DATA": str(tmp / "data"), "FTLAB_OFFLINE": "1"}
    log = (tmp / "streamlit.log").open("w")
    try:
        proc, url = serve(env, log)
    except RuntimeError as err:
        log.close()
        pytest.fail(f"{err}:\n{(tmp / 'streamlit.log').read_text()[-3000:]}")
    try:
        yield url
    finally:
        stop(proc)
        log.close()


@pytest.fixture()
def page(server):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(WAIT_MS)
        yield context.new_page()
        context.close()
        browser.close()


def metric(page, label: str):
    label = page.get_by_test_id("stMetricLabel").get_by_text(label, exact=True)
    return shown(page.get_by_test_id("stMetric").filter(has=label)).get_by_test_id("stMetricValue")


def test_the_feature_space_section_in_a_browser(server, page):
    page.goto(server)
    nav(page, "Data")
    choose(page, "data.builtin", "shapes")
    fill(page, {"cfg.shapes_per_class": 10})
    expect(page.get_by_role("heading", name=re.compile(r"shapes: 4 classes, 40 images"))).to_be_visible()
    keyed(page, "data.features_measure").get_by_role("button").click()
    expect(metric(page, "Vendi score (training split)")).to_have_text(re.compile(r"^\d+\.\d$"))
    expect(metric(page, "Near-duplicates across splits")).to_have_text(re.compile(r"^\d+$"))
    expect(keyed(page, "data.features_measure")).to_have_count(0)
    expect(keyed(page, "data.vendi_chart").locator(".js-plotly-plot")).to_be_visible()
    points = keyed(page, "data.feature_map").locator(".scatterlayer .point")
    expect(points.first).to_be_visible()
    assert points.count() == 32  # the 32 training images (8 of each shape)
    expect(shown(page.get_by_text("Select points on the map"))).to_be_visible()
    expect(keyed(page, "cfg.drop_duplicates")).to_be_visible()
    section = page.get_by_role("heading", name="Diversity in feature space")
    section.scroll_into_view_if_needed()
    folder = Path(os.environ.get("FTLAB_SCREENSHOTS") or ROOT / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / "data_feature_diversity.png"), full_page=True)
