"""The Sweep page in AppTest: start a sweep, see its members fill in, the comparison (pick, intervals,
McNemar) and the layer-wise probe."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ui import keys as K

APP = str(Path(__file__).resolve().parents[1] / "app.py")
HANG = 600


@pytest.fixture(autouse=True)
def _isolated(app_env):
    yield
    from ui import resources

    for job in resources._background().values():  # a sweep or probe left running would outlive the test
        job.stop()
        assert job.join(HANG)


def _small(at: AppTest) -> AppTest:
    at.switch_page("app_pages/model.py").run()
    at.selectbox(key="cfg.backbone").select("small_cnn").run()
    # the Train page's options are a form (they reach the session on its submit): set them as it would
    at.session_state["cfg.image_size"], at.session_state["cfg.epochs"] = 16, 1
    at.session_state["cfg.batch_size"] = 64
    at.switch_page("app_pages/sweep.py").run()
    assert "small_cnn" in at.markdown[0].value and "1 epoch at 16 px" in at.caption[0].value, at.caption[0].value
    assert not at.exception, [e.value for e in at.exception]
    return at


def _wait(at: AppTest, kind: str) -> AppTest:
    from ui import resources

    job = resources.background(at.session_state[K.OWNER], kind)
    assert job is not None and job.join(HANG), f"the {kind} did not end"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_a_sweep_started_on_the_page_fills_in_its_comparison():
    at = _small(AppTest.from_file(APP, default_timeout=120).run())
    assert "No sweep yet" in " ".join(c.value for c in at.caption)
    at.multiselect(key=K.SWEEP_STRATEGIES).set_value(["linear-probe", "top-1", "top-3"])
    at.text_input(key=K.SWEEP_SEEDS).set_value("0")
    at.number_input(key=K.SWEEP_WORKERS).set_value(1)
    at.button(key=K.SWEEP_START).click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    _wait(at, "sweep")
    plan = at.dataframe[0].value
    assert sorted(plan["strategy"]) == ["linear-probe", "top-1", "top-3"] and set(plan["status"]) == {"finished"}
    members = at.dataframe[1].value
    assert all(members["95% interval"].str.match(r"\d\.\d{3}-\d\.\d{3}"))
    assert "pick" in at.success[0].value or "within" in at.success[0].value, at.success[0].value
    specs = {c.proto.id: json.loads(c.proto.spec) for c in at.get("plotly_chart")}
    names = [{t.get("name") for t in spec["data"]} for spec in specs.values()]
    assert any({"top-3", "top-1", "linear-probe"} <= n for n in names)  # the accuracy chart, one trace each
    assert any("Pareto front" in n for n in names)
    text = " ".join(m.value for m in at.markdown)
    assert "Are the differences real?" in text and "McNemar" in text
    # another x: the chart follows
    at.radio(key=K.SWEEP_X).set_value("trainable_params").run()
    assert not at.exception
    # the members are ordinary runs
    at.switch_page("app_pages/runs.py").run()
    assert not at.exception


def test_a_bad_seed_list_is_said_and_starts_nothing():
    at = _small(AppTest.from_file(APP, default_timeout=120).run())
    at.text_input(key=K.SWEEP_SEEDS).set_value("zero")
    at.button(key=K.SWEEP_START).click().run()
    assert any("whole numbers" in e.value for e in at.error), [e.value for e in at.error]
    from ui import resources

    assert resources.background(at.session_state[K.OWNER], "sweep") is None


def test_the_layer_wise_probe_runs_from_the_page():
    at = _small(AppTest.from_file(APP, default_timeout=120).run())
    at.text_input(key=K.PROBE_PER_CLASS).set_value("2,all")
    at.button(key=K.PROBE_START).click().run()
    _wait(at, "probe")
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert any("Linear probe per block" in t for t in titles), titles
    assert any("Data efficiency" in t for t in titles), titles
