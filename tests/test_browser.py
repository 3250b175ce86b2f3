"""The app in a real browser: Debian's Chromium driven by Playwright against `streamlit run app.py`.

One walk through the main path, by clicking: `digits` on the Data page and its figures, efficientnet_lite0
with a linear probe on the Model page, a short run on the Train page; a browser refresh while it runs (the
new session finds the run still going, and follows it live: curves and confusion matrix), another refresh
once the curves are drawn, the finished run, the run on the Runs page, and a sweep of two strategies. Screenshots of the Data and Train
pages go to ``$FTLAB_SCREENSHOTS`` (default ``screenshots/`` in the repository, which git ignores).

Chromium comes from Debian (`apt-get install chromium chromium-driver`; `.ci/run` installs it when it is
missing), never from `playwright install`. Without it the test is skipped, except under CI, where it fails.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from appdriver import CHROMIUM, CHROMIUM_ARGS, ROOT, RUN_ID, choose, fill, key, keyed, nav, serve, shown, stop
from conftest import under_ci
from playwright.sync_api import expect, sync_playwright

EPOCHS, IMAGE_SIZE = 10, 64  # a linear probe at 64 px: the curves have some shape, and digits reach about 0.9
WAIT_MS = 120_000  # torch's import and the first run are slow on a 2-core machine
expect.set_options(timeout=WAIT_MS)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gate(tmp_path_factory) -> Path:
    """The server's training runs wait after their first step until this file exists."""
    return tmp_path_factory.mktemp("gate") / "open"


@pytest.fixture(scope="module")
def server(chromium, gate, tmp_path_factory):  # no browser, no server
    """`streamlit run app.py` on 127.0.0.1, offline, with its runs and data in a temporary folder."""
    tmp = tmp_path_factory.mktemp("browser")
    env = {**os.environ, "FTLAB_HOME": str(tmp / "home"), "FTLAB_DATA": str(tmp / "data"), "FTLAB_OFFLINE": "1"}
    log = (tmp / "streamlit.log").open("w")
    try:
        proc, url = serve(env, log, hold=gate)
    except RuntimeError as err:
        log.close()
        pytest.fail(f"{err}:\n{(tmp / 'streamlit.log').read_text()[-3000:]}")
    try:
        yield url
    finally:
        stop(proc)
        log.close()
        print(f"\nstreamlit log ({tmp / 'streamlit.log'}), its end:\n{(tmp / 'streamlit.log').read_text()[-2000:]}")


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's Chromium; without it the test is skipped, but not under CI, where it must run."""
    if not CHROMIUM.exists():
        if under_ci():
            pytest.fail(f"{CHROMIUM} is missing: CI must install Debian's chromium (see .ci/run)", pytrace=False)
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium chromium-driver)")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium):
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(WAIT_MS)
    pg = context.new_page()
    yield pg
    context.close()


def metric(page, label: str):
    """The value of the metric labelled ``label``."""
    label = page.get_by_test_id("stMetricLabel").get_by_text(label, exact=True)
    return shown(page.get_by_test_id("stMetric").filter(has=label)).get_by_test_id("stMetricValue")


def plotted(page, chart_key: str, check: str) -> None:
    """Wait until the plotly figure on screen under ``chart_key`` satisfies ``check``, JS over its traces ``d``."""
    page.wait_for_function(
        f"() => [...document.querySelectorAll('{key(chart_key)} .js-plotly-plot')]"
        f".some(el => el.getClientRects().length > 0 && Array.isArray(el.data) && (d => {check})(el.data))",
        timeout=WAIT_MS)


def screenshot(page, name: str) -> Path:
    """The whole page: the viewport is stretched to the main area's height for the shot."""
    folder = Path(os.environ.get("FTLAB_SCREENSHOTS") or ROOT / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    height = page.evaluate("() => Math.max(...[...document.querySelectorAll('section, div')]"
                           ".map(e => e.scrollHeight))")
    page.set_viewport_size({"width": size["width"], "height": min(max(size["height"], height + 50), 12000)})
    page.wait_for_timeout(1000)  # let the charts redraw at the new size
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)
    print(f"\nscreenshot: {path}")
    return path


def test_main_path_in_a_browser(server, gate, page):
    t0 = time.monotonic()

    def lap(what: str) -> None:
        print(f"\n{time.monotonic() - t0:6.1f} s  {what}")

    page.goto(server)
    expect(page.get_by_test_id("stApp")).to_be_visible()
    expect(page.get_by_test_id("stSidebarNav")).to_be_visible()

    # Data: digits and its figures
    nav(page, "Data")
    expect(page).to_have_url(re.compile(r"/data$"))
    choose(page, "data.builtin", "digits")
    expect(page.get_by_role("heading", name=re.compile(r"digits: 10 classes, 1,797 images"))).to_be_visible()
    expect(metric(page, "Effective classes")).to_have_text(re.compile(r"^(9\.9\d|10\.00)$"))
    expect(metric(page, "Normalised entropy")).to_have_text(re.compile(r"^(0\.99\d|1\.000)$"))
    expect(keyed(page, "data.counts_chart").locator(".js-plotly-plot")).to_be_visible()
    expect(page.get_by_test_id("stImage").first).to_be_visible()
    lap("Data page: digits and its figures")
    data_shot = screenshot(page, "data")

    # Model & freezing: efficientnet_lite0, linear probe
    nav(page, "Model & freezing")
    expect(page).to_have_url(re.compile(r"/model$"))
    choose(page, "cfg.backbone", "efficientnet_lite0")
    keyed(page, "model.preset.linear_probe").get_by_role("button").click()
    expect(shown(page.get_by_text("Linear probe: only the new head trains."))).to_be_visible()
    expect(metric(page, "Trainable parameters")).to_have_text("12,810")  # 1280 features × 10 classes + 10
    lap("Model page: efficientnet_lite0, linear probe")

    # Train: a short run, its live curves and confusion matrix
    nav(page, "Train")
    expect(page).to_have_url(re.compile(r"/train$"))
    expect(shown(page.get_by_text("No run in this session yet"))).to_be_visible()
    fill(page, {"cfg.image_size": IMAGE_SIZE, "cfg.epochs": EPOCHS})
    # the objectives' options: a teacher (none kept yet), several tasks, L2-SP
    shown(page.get_by_text("Objective: distillation, several tasks")).click()
    for option in ("cfg.teacher", "cfg.tasks", "cfg.l2sp", "cfg.l2sp_adaptive"):
        expect(keyed(page, option)).to_be_visible()
    expect(keyed(page, "cfg.teacher").get_by_role("combobox")).to_have_value(re.compile(r"^none"))
    keyed(page, "train.start").get_by_role("button").click()
    caption = shown(page.get_by_text(RUN_ID))
    expect(caption).to_be_visible()
    run_id = RUN_ID.search(caption.inner_text()).group(1)
    lap(f"Train page: run {run_id} started")
    expect(keyed(page, "train.stop")).to_be_visible()

    # A refresh while it runs: a new browser session, which finds the run still going. The server holds the
    # run after its first step until the gate opens (tests/training_gate.py), so on any machine it is.
    page.reload()
    expect(shown(page.get_by_text(RUN_ID))).to_contain_text(run_id)
    expect(keyed(page, "train.stop")).to_be_visible()
    expect(keyed(page, "train.start").get_by_role("button")).to_be_disabled()
    expect(shown(page.get_by_test_id("stProgress"))).to_be_visible()
    going = re.compile(rf"Run {run_id} is (getting ready|training)")
    still = shown(page.get_by_test_id("stAlert")).filter(has_text=going)
    expect(still).to_be_visible()
    lap(f"refreshed: the run is still going ({still.inner_text()[:60]}…)")
    gate.touch()

    # the refreshed page follows the run live: curves and confusion matrix from its first epoch on
    curves = "d.length === 2 && d.every(t => t.x.length >= 1)"  # train and val
    plotted(page, "train.loss_chart", curves)
    plotted(page, "train.accuracy_chart", curves)
    plotted(page, "train.cm_normalised.chart", "d[0].type === 'heatmap' && d[0].z.length === 10")
    expect(shown(page.get_by_text(re.compile(r"Validation confusion matrix, epoch \d+")))).to_be_visible()
    lap("live curves and confusion matrix")
    page.reload()  # once more with curves drawn (running still, or just finished): the new session shows them
    expect(shown(page.get_by_text(RUN_ID))).to_contain_text(run_id)
    plotted(page, "train.loss_chart", curves)
    plotted(page, "train.cm_normalised.chart", "d[0].type === 'heatmap' && d[0].z.length === 10")
    lap("refreshed again: the same run, its curves and confusion matrix")

    expect(shown(page.get_by_text(re.compile(rf"Run {run_id} finished: best val accuracy")))).to_be_visible()
    lap("finished")
    expect(keyed(page, "train.stop")).to_have_count(0)
    expect(metric(page, "Epoch")).to_have_text(f"{EPOCHS}/{EPOCHS}")
    plotted(page, "train.loss_chart", f"d.every(t => t.x.length === {EPOCHS})")
    plotted(page, "train.cm_normalised.chart", "d[0].z.flat().reduce((a, b) => a + b, 0) === 360")  # val images
    # which layers moved: a linear probe moves its head alone (from its initialisation); the rest reads 0
    plotted(page, "train.moved_chart", "d[0].type === 'heatmap' && d[0].z.length > 2 && "
                                       "d[0].z.slice(0, -1).every(row => row.every(v => v === 0))")
    train_shot = screenshot(page, "train")

    # Runs: the run is kept
    nav(page, "Runs")
    expect(page).to_have_url(re.compile(r"/runs$"))
    expect(page.get_by_test_id("stDataFrame")).to_be_visible()
    expect(keyed(page, "runs.selected").get_by_role("combobox")).to_have_value(re.compile(re.escape(run_id)))  # label — id
    expect(keyed(page, "runs.compare")).to_contain_text(run_id)  # overlaid on the compare charts
    expect(keyed(page, "runs.overlay_accuracy").locator(".js-plotly-plot")).to_be_visible()
    plotted(page, "runs.moved_chart", "d[0].type === 'heatmap' && d[0].z.length > 2")  # the selected run's
    lap("Runs page lists the run")

    # Sweep: two strategies by hand in the list, one click; the members fill in and are compared
    nav(page, "Sweep strategies")
    expect(page).to_have_url(re.compile(r"/sweep$"))
    expect(shown(page.get_by_text("No sweep yet"))).to_be_visible()
    strategies = keyed(page, "sweep.strategies").locator("input")
    strategies.click()
    for _ in range(12):  # Backspace takes the last chosen one off, as in any tag list
        strategies.press("Backspace")
    for name in ("linear-probe", "top-1"):
        strategies.fill(name)
        strategies.press("Enter")
    strategies.press("Escape")
    expect(keyed(page, "sweep.strategies")).to_contain_text("top-1")
    expect(keyed(page, "sweep.strategies")).not_to_contain_text("lp-ft")
    keyed(page, "sweep.start").get_by_role("button").click()
    plotted(page, "sweep.accuracy_chart", "d.some(t => t.name === 'Pareto front') && "
                                          "d.some(t => t.name === 'top-1') && d.some(t => t.name === 'linear-probe')")
    expect(shown(page.get_by_text(re.compile(r"Are the differences real\?")))).to_be_visible()
    expect(keyed(page, "sweep.probe_start")).to_be_visible()
    sweep_shot = screenshot(page, "sweep")
    lap("Sweep page: two members compared")
    assert data_shot.stat().st_size > 10_000 and train_shot.stat().st_size > 10_000
    assert sweep_shot.stat().st_size > 10_000
