"""The Inspect page's new sections through AppTest: class activation maps of a val image and of an
upload under two kept runs, the shift test, and prediction flips. Two digits runs (full and linear
probe, the same val split) trained once for the module."""
from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from ftlab import flips
from ftlab.config import TrainConfig
from ftlab.runs import RunStore

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TINY = dict(dataset="digits", backbone="small_cnn", weights="random", image_size=16, batch_size=64, epochs=1,
            lr=3e-3)
PAGE = "app_pages/inspect_run.py"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, list[str]]:
    from ftlab.engine import run

    home = tmp_path_factory.mktemp("inspect-home")
    old = os.environ.get("FTLAB_HOME")
    os.environ["FTLAB_HOME"] = str(home)
    try:
        ids = [run(TrainConfig(**TINY, strategy=s), store=RunStore(home))["run_id"] for s in ("full", "linear-probe")]
    finally:
        os.environ.pop("FTLAB_HOME") if old is None else os.environ.__setitem__("FTLAB_HOME", old)
    return home, ids


@pytest.fixture
def page(app_env, monkeypatch, two_runs) -> tuple[AppTest, list[str]]:
    home, ids = two_runs
    monkeypatch.setenv("FTLAB_HOME", str(home))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page(PAGE).run()
    assert not at.exception, [e.value for e in at.exception]
    at.selectbox(key="inspect.run").set_value(ids[0]).run()
    return at, ids


def _captions(at: AppTest) -> list[str]:
    return [img.caption for el in at.get("image") for img in el.proto.imgs]


def _draw(at: AppTest) -> None:
    """Click "Draw the maps": the page draws none until asked (each run's model is loaded for them)."""
    at.button(key="inspect.cam_draw").click().run()
    assert not at.exception, [e.value for e in at.exception]


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_maps_of_a_val_image_side_by_side(page):
    at, ids = page
    subheaders = [s.value for s in at.subheader]
    assert subheaders[-3:] == ["What the model sees", "Shift test", "Prediction flips"]
    assert not any(c.startswith("Grad-CAM") for c in _captions(at))  # no map until asked
    _draw(at)
    assert sum(c.startswith("Grad-CAM, predicted") for c in _captions(at)) == 1  # val image #0, the run alone
    assert not [b for b in at.button if b.key == "inspect.cam_draw"]  # asked once: the button is gone
    at.number_input(key="inspect.cam_val").set_value(5).run()
    at.multiselect(key="inspect.cam_runs").set_value([ids[1]]).run()
    assert not at.exception and not at.error
    caps = _captions(at)
    assert caps.count("val image #5") == 2  # the input under each run
    assert sum(c.startswith("Grad-CAM, predicted") for c in caps) == 2
    assert sum(c.startswith("Grad-CAM, true") for c in caps) == 2
    assert caps.count("EigenCAM (no gradients)") == 2
    record = RunStore(Path(os.environ["FTLAB_HOME"])).get(ids[0])
    truth = record.classes[record.final["val"]["labels"][5]]
    assert any(c.startswith(f"Grad-CAM, true {truth} (") for c in caps)


def test_maps_of_an_upload_with_its_true_class(page):
    at, _ = page
    at.radio(key="inspect.cam_source").set_value("upload").run()
    at.file_uploader(key="inspect.cam_upload").upload("noise.png", _png(), "image/png").run()
    at.selectbox(key="inspect.cam_true").set_value("3").run()
    _draw(at)
    assert not at.exception and not at.error
    caps = _captions(at)
    assert "noise.png" in caps and any(c.startswith("Grad-CAM, true 3 (") for c in caps)
    at.selectbox(key="inspect.cam_true").set_value("").run()
    assert any(c.startswith("Grad-CAM, 2nd ") for c in _captions(at))


def test_an_upload_that_is_not_an_image_gets_a_sentence(page):
    at, _ = page
    at.radio(key="inspect.cam_source").set_value("upload").run()
    at.file_uploader(key="inspect.cam_upload").upload("fake.png", b"not an image", "image/png").run()
    _draw(at)
    assert not at.exception
    assert any("Not a readable image" in e.value for e in at.error)


def test_prediction_flips_of_two_runs(page, two_runs):
    at, ids = page
    home, _ = two_runs
    store = RunStore(home)
    found = flips.flips(store.get(ids[0]), store.get(ids[1]))
    assert at.selectbox(key="inspect.flips_other").value == ids[1]
    table = at.dataframe[-1].value
    cells = table.drop(columns=[""]).to_numpy()
    assert cells.sum() == len(store.get(ids[0]).final["val"]["indices"])
    assert cells[0, 1] == len(found.only_a) and cells[1, 0] == len(found.only_b)
    caps = _captions(at)
    grid = [c for c in caps if " · A: " in c]
    assert len(grid) == min(len(found.only_a), flips.SHOWN) + min(len(found.only_b), flips.SHOWN)
    assert any("McNemar's test" in m.value for m in at.markdown)


@pytest.mark.slow
def test_the_shift_test_on_the_page(page):
    at, ids = page
    at.multiselect(key="inspect.shift_runs").set_value(ids).run()
    at.button(key="inspect.shift_start").click().run()
    deadline = time.monotonic() + 900
    from ui import resources

    owner = at.session_state["session.owner"]
    while resources.background(owner, "shift").alive():
        assert time.monotonic() < deadline, "the shift test did not end"
        time.sleep(0.5)
    at.run()
    assert not at.exception and not at.error
    table = at.dataframe[-2].value  # the shift table, before the flips' McNemar table
    assert len(table) == 14 and table.shape[1] == 4  # corruption, severity, a column per run
    chart = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert any(fig["layout"]["title"]["text"] == "Val accuracy under shift" and len(fig["data"]) == 2
               for fig in chart)
