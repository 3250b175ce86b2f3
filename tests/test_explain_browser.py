"""The Inspect page's "What the model sees", "Shift test" and "Prediction flips" in a real browser
(Debian's Chromium, Playwright), on two small kept digits runs scored on the same val images (a full
fine-tune and a linear probe of small_cnn, random weights, 16 px, one epoch): the maps drawn on request
for both runs side by side, the shift test run to its table and chart, and the flips' counts and grids.
A screenshot of the page goes to ``$FTLAB_SCREENSHOTS`` (default ``screenshots/``)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from appdriver import CHROMIUM, CHROMIUM_ARGS, ROOT, choose, keyed, nav, serve, shown, stop
from conftest import under_ci
from playwright.sync_api import expect, sync_playwright

from ftlab import flips
from ftlab.config import TrainConfig
from ftlab.runs import RunStore

WAIT_MS = 240_000  # torch's import, two model loads and 13 passes over the val images, on a loaded 2-core machine
expect.set_options(timeout=WAIT_MS)
pytestmark = pytest.mark.slow
TINY = dict(dataset="digits", backbone="small_cnn", weights="random", image_size=16, batch_size=64, epochs=1,
            lr=3e-3)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Two kept runs (full, then linear probe: the probe is the newest, the page's first run) and the app on them."""
    from ftlab.engine import run

    if not CHROMIUM.exists():
        if under_ci():
            pytest.fail(f"{CHROMIUM} is missing: CI must install Debian's chromium (see .ci/run)", pytrace=False)
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium chromium-driver)")
    tmp = tmp_path_factory.mktemp("explain-browser")
    store = RunStore(tmp / "home")
    ids = [run(TrainConfig(**TINY, strategy=s, name=f"walk {s}"), store=store)["run_id"]
           for s in ("full", "linear-probe")]
    env = {**os.environ, "FTLAB_HOME": str(tmp / "home"), "FTLAB_DATA": str(tmp / "data"), "FTLAB_OFFLINE": "1"}
    log = (tmp / "streamlit.log").open("w")
    try:
        proc, url = serve(env, log)
    except RuntimeError as err:
        log.close()
        pytest.fail(f"{err}:\n{(tmp / 'streamlit.log').read_text()[-3000:]}")
    try:
        yield url, store, ids
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


def pick(page, widget_key: str, option: str) -> None:
    """Add the option whose text starts with ``option`` to the multiselect with key ``widget_key``, typed
    into its search box as a user would, and wait until it shows as chosen."""
    box = keyed(page, widget_key)
    field = box.get_by_role("combobox")
    field.click()
    field.fill(option)
    page.get_by_role("option").filter(has_text=re.compile("^" + re.escape(option))).first.click()
    page.keyboard.press("Escape")
    expect(box.get_by_text(re.compile("^" + re.escape(option)))).to_have_count(1)


def screenshot(page, name: str) -> Path:
    """The whole page, the viewport stretched to the main area's height (as tests/test_browser.py does)."""
    folder = Path(os.environ.get("FTLAB_SCREENSHOTS") or ROOT / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    height = page.evaluate("() => Math.max(...[...document.querySelectorAll('section, div')].map(e => e.scrollHeight))")
    page.set_viewport_size({"width": 1400, "height": min(max(1000, height + 50), 12000)})
    page.wait_for_timeout(1000)  # let the charts redraw at the new size
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"\nscreenshot: {path}")
    return path


def captions(page, start: str):
    return shown(page.get_by_test_id("stImageCaption").filter(has_text=re.compile("^" + re.escape(start))))


def test_the_inspect_sections_in_a_browser(server, page):
    url, store, ids = server
    full, probe = ids
    page.goto(url)
    nav(page, "Inspect & predict")
    choose(page, "inspect.run", "walk linear-probe")
    expect(page.get_by_role("heading", name="What the model sees")).to_be_visible()
    # the maps: none until asked, then val image #0 under the run and, beside it, under the other run
    draw = keyed(page, "inspect.cam_draw").get_by_role("button")
    expect(draw).to_be_visible()
    expect(captions(page, "Grad-CAM")).to_have_count(0)
    expect(shown(page.get_by_text(re.compile(r"^val image #0: true class \d, predicted \d \((right|wrong); loss ")))
           ).to_be_visible()
    pick(page, "inspect.cam_runs", "walk full")
    draw.click()
    expect(captions(page, "EigenCAM (no gradients)")).to_have_count(2)
    expect(captions(page, "Grad-CAM, predicted")).to_have_count(2)
    expect(captions(page, "Grad-CAM, true")).to_have_count(2)
    expect(captions(page, "val image #0")).to_have_count(2)
    expect(keyed(page, "inspect.cam_draw")).to_have_count(0)

    # the shift test of both runs: it ends and draws its table (clean, 12 settings, the mean) and chart
    pick(page, "inspect.shift_runs", "walk full")
    keyed(page, "inspect.shift_start").get_by_role("button").click()
    chart = keyed(page, "inspect.shift_chart").locator(".js-plotly-plot")
    expect(chart).to_be_visible()
    assert chart.locator(".scatterlayer .trace").count() == 2  # a line per run
    lines = page.get_by_text(re.compile(r"clean accuracy \d\.\d{3}, mean under shift \d\.\d{3}"))
    expect(shown(lines)).to_have_count(2)
    expect(keyed(page, "inspect.shift_stop")).to_have_count(0)
    expect(shown(page.get_by_text(re.compile(r"^Severity 1 and 2: gaussian blur")))).to_be_visible()

    # the flips against the other run: the counts as the stored predictions give them, and both grids
    found = flips.flips(store.get(probe), store.get(full))
    for title, n in (("A right, B wrong", len(found.only_a)), ("B right, A wrong", len(found.only_b))):
        noun = "image" if n == 1 else "images"
        expect(shown(page.get_by_text(re.compile(rf"^{title} \({n:,} {noun}")))).to_be_visible()
    grid = min(len(found.only_a), flips.SHOWN) + min(len(found.only_b), flips.SHOWN)
    assert grid > 0  # two one-epoch models from different strategies disagree somewhere on 360 images
    expect(shown(page.get_by_test_id("stImageCaption").filter(has_text=" · A: "))).to_have_count(grid)
    expect(shown(page.get_by_text(re.compile("^McNemar's test")))).to_be_visible()
    screenshot(page, "inspect_explain")
