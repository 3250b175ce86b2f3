"""The Streamlit app through AppTest: every page loads, the main path trains and lists a run, freezing,
Stop, and data uploads. Offline, on temporary folders; training runs are digits at 32 px."""
from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from pathlib import Path

import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest
from training_gate import hold_training

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
PAGES = ["app_pages/home.py", "app_pages/data.py", "app_pages/model.py", "app_pages/train.py", "app_pages/runs.py",
         "app_pages/inspect_run.py"]
TIMEOUT = 60
HANG = 600  # seconds: polls bound a hang only (two runs on a loaded 2-core machine trained 5 images/s)


@pytest.fixture(autouse=True)
def _isolated(app_env):
    """Every test here runs the app: conftest's app_env (its own data, no cache or job left over)."""


@pytest.fixture
def held_runs():
    """Training runs wait after their first step until the test sets this event: a run is still
    going for as long as the test needs, however fast the machine trains. (Set up after
    `_isolated`, so it opens the gate before `_isolated` stops the jobs.)"""
    gate = threading.Event()
    undo = hold_training(gate.is_set)
    yield gate
    gate.set()
    undo()


def wait_for(condition, what: str, timeout: float = HANG) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    return at


def goto(at: AppTest, page: str) -> AppTest:
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def start_run(at: AppTest, epochs: int = 1) -> None:
    goto(at, "app_pages/train.py")
    at.number_input(key="cfg.image_size").set_value(32)
    at.number_input(key="cfg.epochs").set_value(epochs)
    at.number_input(key="cfg.batch_size").set_value(64)
    at.button(key="train.start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]


def poll(at: AppTest, done, timeout: float = HANG) -> AppTest:
    """Rerun (fragments do not rerun by themselves in AppTest) until ``done(at)``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(1)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        if done(at):
            return at
    raise AssertionError(f"timed out; progress {[p.proto.text for p in at.get('progress')]}")


def zip_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return buf.getvalue()


def png(colour: tuple[int, int, int], size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "PNG")
    return buf.getvalue()


def test_every_page_loads():
    at = app()
    assert "Training device" in metrics(at)
    for page in PAGES:
        goto(at, page)
        assert not at.error, (page, [e.value for e in at.error])


def test_main_path_trains_digits_and_lists_the_run():
    at = app()
    goto(at, "app_pages/data.py")
    at.selectbox(key="data.builtin").select("digits").run()
    figures = metrics(at)
    assert float(figures["Normalised entropy"]) > 0.99
    assert float(figures["Effective classes"]) == pytest.approx(10, abs=0.1)
    counts = charts(at)[0]
    assert {t["name"] for t in counts["data"]} == {"train", "val"} and len(counts["data"][0]["x"]) == 10

    goto(at, "app_pages/model.py")
    at.selectbox(key="cfg.backbone").select("efficientnet_lite0").run()
    at.button(key="model.preset.linear_probe").click().run()
    assert metrics(at)["Trainable parameters"] == f"{1280 * 10 + 10:,}"

    start_run(at)
    poll(at, lambda a: a.success or a.error or a.warning)
    assert not at.error and not at.warning, [e.value for e in [*at.error, *at.warning]]
    assert "finished" in at.success[0].value
    shown = metrics(at)
    assert shown["Epoch"] == "1/1" and 0 <= float(shown["Val accuracy"]) <= 1
    specs = charts(at)
    curves = [s for s in specs if {t.get("name") for t in s["data"]} == {"train", "val"}]
    assert len(curves) == 2  # loss and accuracy
    for spec in curves:
        assert all(len(t["x"]) == len(t["y"]) == 1 for t in spec["data"])
    heatmaps = [t for s in specs for t in s["data"] if t["type"] == "heatmap" and "predicted" in t["hovertemplate"]]
    assert len(heatmaps) == 1 and len(heatmaps[0]["z"]) == 10 and all(len(r) == 10 for r in heatmaps[0]["z"])
    run_id = at.session_state["train.job"]

    goto(at, "app_pages/runs.py")
    table = at.dataframe[0].value
    assert list(table["run"]) == [run_id] and list(table["status"]) == ["finished"]
    assert table["trainable params"][0] == 12810

    goto(at, "app_pages/inspect_run.py")
    assert "Val accuracy" in metrics(at)
    assert at.get("image") and len(at.get("image")[0].proto.imgs) == 12  # the hardest validation images
    at.file_uploader(key="inspect.image").upload("white.png", png((255, 255, 255)), "image/png").run()
    assert not at.exception and not at.error
    assert metrics(at)["Prediction"] in [str(d) for d in range(10)]

    goto(at, "app_pages/runs.py")
    at.button(key="runs.delete").click().run()
    assert "cannot be undone" in at.warning[0].value
    at.button(key="runs.delete_confirm").click().run()
    assert not at.exception and "No runs yet" in at.info[-1].value


def test_toggling_a_block_changes_the_trainable_parameters():
    at = app()
    goto(at, "app_pages/model.py")
    before_metric, before_chart = metrics(at)["Trainable parameters"], charts(at)[-1]
    editor = at.data_editor[0]
    blocks = list(editor.value["block"])
    row = blocks.index("conv_head")
    at.session_state[editor.key] = {"edited_rows": {row: {"train": True}}, "added_rows": [], "deleted_rows": []}
    at.run()
    assert not at.exception
    after_metric, after_chart = metrics(at)["Trainable parameters"], charts(at)[-1]
    assert after_metric != before_metric
    assert int(after_metric.replace(",", "")) > int(before_metric.replace(",", ""))
    trainable = next(t for t in after_chart["data"] if t["name"] == "trainable")
    assert trainable["y"][row] > 0 and after_chart != before_chart
    assert at.session_state["model.preset"] == "custom"
    assert "conv_head" not in at.session_state["model.frozen_blocks"]
    # a preset replaces the hand-made choice
    at.button(key="model.preset.linear_probe").click().run()
    assert metrics(at)["Trainable parameters"] == before_metric
    # the head cannot be frozen: the table starts afresh and says why
    editor = at.data_editor[0]
    at.session_state[editor.key] = {"edited_rows": {len(blocks) - 1: {"train": False}}, "added_rows": [],
                                    "deleted_rows": []}
    at.run()
    assert not at.exception and "always trains" in at.warning[0].value
    assert metrics(at)["Trainable parameters"] == before_metric and at.data_editor[0].key != editor.key


def test_stop_ends_the_run_and_a_new_session_finds_the_running_job(held_runs):
    """The run is held after its first step (``held_runs``) until Stop was clicked, so it is still
    going while two more sessions open, on any machine."""
    at = app()
    goto(at, "app_pages/model.py")
    at.button(key="model.preset.full").click().run()  # no feature caching before the first step
    start_run(at, epochs=3)
    run_id = at.session_state["train.job"]
    poll(at, lambda a: any(p.proto.text.startswith("Epoch") for p in a.get("progress")))

    # a refreshed browser: a new session with no job id of its own, but its URL names the run
    fresh = AppTest.from_file(APP, default_timeout=TIMEOUT)
    fresh.query_params["run"] = run_id
    fresh.run()
    goto(fresh, "app_pages/train.py")
    assert fresh.session_state["train.job"] == run_id
    assert fresh.button(key="train.stop")

    stranger = app()  # another person on the same server: sees the run, does not take it over
    goto(stranger, "app_pages/train.py")
    assert "train.job" not in stranger.session_state or stranger.session_state["train.job"] is None
    assert any(run_id in i.value for i in stranger.info) and stranger.button(key=f"train.watch.{run_id}")

    at.button(key="train.stop").click().run()
    held_runs.set()  # after the click: the run's next step must find the stop
    poll(at, lambda a: a.warning)
    assert "stopped" in at.warning[0].value
    goto(at, "app_pages/runs.py")
    table = at.dataframe[0].value
    assert list(table["run"]) == [run_id] and list(table["status"]) == ["stopped"]


def test_uploading_a_zip_makes_it_the_data_set():
    at = app()
    goto(at, "app_pages/data.py")
    at.radio(key="data.source").set_value("Upload a .zip").run()
    files = {f"pics/{name}/{i}.png": png(colour) for name, colour in
             (("red", (255, 0, 0)), ("green", (0, 160, 0)), ("blue", (0, 0, 255))) for i in range(5)}
    at.file_uploader(key="data.upload").upload("pics.zip", zip_of(files), "application/zip").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    chosen = at.session_state["data.dataset"]
    assert chosen.endswith(".zip") and Path(chosen).is_file()
    assert any("3 classes, 15 images" in h.value for h in at.subheader)
    assert len(charts(at)[0]["data"][0]["x"]) == 3


@pytest.mark.parametrize("files, words", [
    ({"readme.txt": b"no pictures here"}, "at least 2 classes"),
    ({f"only/{i}.png": png((9, 9, 9)) for i in range(4)}, "only the class"),
])
def test_a_zip_that_is_not_a_data_set_shows_why(files, words):
    at = app()
    goto(at, "app_pages/data.py")
    at.radio(key="data.source").set_value("Upload a .zip").run()
    at.file_uploader(key="data.upload").upload("bad.zip", zip_of(files), "application/zip").run()
    assert not at.exception
    assert at.error and words in at.error[0].value
    assert at.session_state["data.dataset"] == "digits"  # the previous choice stays


def test_a_download_offline_says_how_to_get_the_data():
    at = app()
    goto(at, "app_pages/data.py")
    at.radio(key="data.source").set_value("Download").run()
    at.selectbox(key="data.download").select("hymenoptera").run()
    assert at.warning and "Could not download hymenoptera" in at.warning[0].value
    at.button(key="data.download_button").click().run()
    assert not at.exception and at.error and "hymenoptera" in at.error[0].value
    assert at.session_state["data.dataset"] == "digits"


def test_start_shows_every_problem_of_the_config():
    at = app()
    goto(at, "app_pages/model.py")
    at.radio(key="model.weights").set_value("file").run()
    at.text_input(key="model.weights_file").input("/no/such/weights.pt").run()
    goto(at, "app_pages/train.py")
    at.number_input(key="cfg.image_size").set_value(16)
    at.button(key="train.start").click().run()
    assert not at.exception
    message = at.error[0].value
    assert "cannot start" in message and "weights file" in message and "at least 32 px" in message
    assert "train.job" not in at.session_state


def test_a_failed_run_says_why(tmp_path):
    not_weights = tmp_path / "notes.pt"
    not_weights.write_text("these are not weights")
    at = app()
    goto(at, "app_pages/model.py")
    at.radio(key="model.weights").set_value("file").run()
    at.text_input(key="model.weights_file").input(str(not_weights)).run()
    start_run(at)
    poll(at, lambda a: a.error)
    assert "failed" in at.error[0].value and "not a loadable weights file" in at.error[0].value


def test_choices_persist_across_pages():
    at = app()
    goto(at, "app_pages/data.py")
    at.slider(key="cfg.val_fraction").set_value(0.3).run()
    at.radio(key="data.source").set_value("Folder on this machine").run()
    goto(at, "app_pages/model.py")
    at.selectbox(key="cfg.backbone").select("small_cnn").run()
    assert at.radio(key="model.weights").value == "random"  # small_cnn has no ImageNet weights
    at.radio(key="model.weights").set_value("file").run()
    at.text_input(key="model.weights_file").input("/no/such/file.pt").run()  # so that Start refuses
    goto(at, "app_pages/train.py")
    assert "small_cnn (weights from file.pt)" in at.markdown[0].value
    at.number_input(key="cfg.epochs").set_value(7)
    at.button(key="train.start").click().run()
    assert "cannot start" in at.error[0].value
    goto(at, "app_pages/data.py")
    assert at.slider(key="cfg.val_fraction").value == 0.3
    assert at.radio(key="data.source").value == "Folder on this machine"
    goto(at, "app_pages/model.py")
    assert at.selectbox(key="cfg.backbone").value == "small_cnn"
    assert "small_cnn" in at.sidebar.caption[0].value
    goto(at, "app_pages/train.py")
    assert at.number_input(key="cfg.epochs").value == 7


def test_adopting_a_run_restores_its_settings_as_the_session_choices():
    """A refreshed browser that finds a run shows that run's settings, not the defaults."""
    from dataclasses import replace

    from ftlab.config import TrainConfig
    from ui import session

    state: dict = {}
    session.init_state(state)
    config = TrainConfig(dataset="shapes", backbone="resnet18", weights="random", strategy="top-2", epochs=9,
                         image_size=48, imbalance_ratio=5.0, lr=0.02, flip=True)
    session.adopt_config(state, config)
    assert session.current_config(state) == config
    custom = TrainConfig(dataset="/data/my photos.zip", frozen_blocks=("stem", "stage1"), weights="/w/x.pt")
    session.adopt_config(state, custom)
    # explicit frozen blocks are the "custom" preset, whatever strategy name came with them
    assert session.current_config(state) == replace(custom, strategy="custom")


def test_two_sessions_train_at_once_without_touching_each_other(held_runs, monkeypatch):
    """Guard: jobs are per session (the registry's owner, the session's job id, the URL's run).
    Fails if one session's Start, Stop or view reaches the other's run, or if one run waits for
    the other: both are held after their first step (``held_runs``) until both have taken it."""
    monkeypatch.setenv("FTLAB_MAX_CONCURRENT", "2")  # a CPU machine's default trains one at a time, the other queued
    first, second = app(), app()
    goto(second, "app_pages/model.py")
    second.button(key="model.preset.full").click().run()
    start_run(first, epochs=1)
    start_run(second, epochs=1)
    a, b = first.session_state["train.job"], second.session_state["train.job"]
    assert a != b
    from ui import resources
    registry = resources.registry()
    wait_for(lambda: all(registry.get(r).snapshot().last_step for r in (a, b)), "both runs to train a step")
    assert {j.run_id for j in registry.running()} == {a, b}
    held_runs.set()
    for at, run_id in ((first, a), (second, b)):
        poll(at, lambda x: not any(b.key == "train.stop" for b in x.button))
        assert at.session_state["train.job"] == run_id
    store = resources.store()
    assert {r.id: r.status for r in store.list()} == {a: "finished", b: "finished"}
    assert store.get(a).strategy == "linear-probe" and store.get(b).strategy == "full"
    ra, rb = store.get(a), store.get(b)
    assert ra.created < rb.updated and rb.created < ra.updated, "the two runs did not overlap"


def test_the_server_does_not_collect_garbage_after_every_rerun():
    """Streamlit's gc.collect() after each script run stalled a watched run to 0.53 of the CLI's speed
    (the Train page reruns once a second); the project's config turns it off, under a name Streamlit knows."""
    import tomllib

    from streamlit import config

    settings = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert settings["runner"]["postScriptGC"] is False
    assert "runner.postScriptGC" in config.get_config_options()


def test_the_app_loads_a_data_set_once_per_what_decides_it():
    """Guard: the shapes options are part of the data-set cache's key for the shapes set, and
    no other set is loaded again because a config's (unused) shapes options changed."""
    from ftlab.config import TrainConfig
    from ui import resources

    three = resources.dataset(TrainConfig(dataset="shapes", shapes_classes=3))
    assert resources.dataset(TrainConfig(dataset="shapes", shapes_classes=3)) is three
    five = resources.dataset(TrainConfig(dataset="shapes", shapes_classes=5))
    assert (len(three.classes), len(five.classes)) == (3, 5)
    digits = resources.dataset(TrainConfig(dataset="digits"))
    assert resources.dataset(TrainConfig(dataset="digits", shapes_classes=5, shapes_noise=0.3)) is digits
