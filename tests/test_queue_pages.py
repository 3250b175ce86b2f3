"""The classroom server's pages through AppTest: a Start beyond FTLAB_MAX_CONCURRENT waits in line on the Train
page (its place, its wait, Leave the queue, its URL), the server's limits in a caption, a bad setting in a
sentence, the torchrun command of the options, and a run started outside the app (the CLI in another
process, same FTLAB_HOME) watched live from the store on the Train and Runs pages."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from test_app import APP, TIMEOUT, app, charts, goto, held_runs, metrics, poll, start_run, wait_for  # noqa: F401

from ftlab.runs import RunStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated(app_env):
    """conftest's app_env: its own data, no cache or job left over."""


def has_button(at: AppTest, key: str) -> bool:
    return any(b.key == key for b in at.button)


def texts(at: AppTest) -> list[str]:
    return [m.value for m in (*at.info, *at.success, *at.warning, *at.error)]


def test_a_start_beyond_the_limit_waits_in_line_and_can_leave(held_runs, monkeypatch):
    monkeypatch.setenv("FTLAB_MAX_CONCURRENT", "1")
    first, second = app(), app()
    start_run(first)
    start_run(second)
    a, b = first.session_state["train.job"], second.session_state["train.job"]
    assert second.query_params["run"] == b  # the session keeps its run while it waits
    queued = [t for t in texts(second) if b in t]
    assert queued and "is queued: 1st in line, " in queued[0], texts(second)
    assert has_button(second, "train.leave") and not has_button(second, "train.stop")
    assert second.button(key="train.start").proto.disabled  # one run per session: no second Start
    caption = " ".join(c.value for c in second.caption)
    assert "This server trains 1 run at a time (1 training now); 1 waiting." in caption
    assert "Each session may have 1 run queued or training." in caption

    refreshed = AppTest.from_file(APP, default_timeout=TIMEOUT)  # a refreshed browser: its URL names the run
    refreshed.query_params["run"] = b
    refreshed.run()
    goto(refreshed, "app_pages/train.py")
    assert refreshed.session_state["train.job"] == b and has_button(refreshed, "train.leave")

    second.button(key="train.leave").click().run()
    assert not second.exception
    assert any(f"Run `{b}` left the queue before it started" in t for t in texts(second)), texts(second)
    assert not has_button(second, "train.leave") and not second.button(key="train.start").proto.disabled
    goto(second, "app_pages/runs.py")  # it never started: no record, nothing listed but the first run
    assert list(second.dataframe[0].value["run"]) == [a]
    held_runs.set()


def test_a_queued_run_starts_when_the_run_ahead_stops(held_runs, monkeypatch):
    monkeypatch.setenv("FTLAB_MAX_CONCURRENT", "1")
    first, second = app(), app()
    start_run(first, epochs=3)
    start_run(second)
    b = second.session_state["train.job"]
    from ui import resources

    wait_for(lambda: resources.registry().get(first.session_state["train.job"]).snapshot().last_step,
             "the first run's first step")
    first.button(key="train.stop").click().run()
    held_runs.set()
    poll(second, lambda at: has_button(at, "train.stop") or at.success)  # it left the queue by itself
    poll(second, lambda at: at.success)
    assert any(f"Run `{b}` finished" in t for t in texts(second))
    assert RunStore().get(b).status == "finished"


def test_a_bad_server_setting_is_a_sentence_on_the_train_page(monkeypatch):
    monkeypatch.setenv("FTLAB_MAX_CONCURRENT", "lots")
    at = app()
    goto(at, "app_pages/train.py")
    message = "FTLAB_MAX_CONCURRENT='lots' cannot be used: it takes a whole number of at least 1"
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    at.number_input(key="cfg.image_size").set_value(32)
    at.button(key="train.start").click().run()
    assert not at.exception and "train.job" not in at.session_state
    assert sum(message in e.value for e in at.error) == 2  # the caption's and the refused Start's


def test_the_torchrun_command_follows_the_options():
    at = app()
    goto(at, "app_pages/train.py")
    at.session_state["cfg.epochs"], at.session_state["cfg.image_size"] = 7, 48  # the form's options
    at.number_input(key="train.torchrun_nproc").set_value(3).run()
    assert not at.exception
    code = [c.value for c in at.code]
    assert len(code) == 1 and code[0].startswith("torchrun --nproc-per-node 3 -m ftlab train ")
    assert "--epochs 7" in code[0] and "--image-size 48" in code[0]
    at.number_input(key="train.torchrun_nproc").set_value(1).run()
    assert at.code[0].value.startswith("python -m ftlab train ")


HOLD = """
import sys, time
from pathlib import Path
from ftlab import engine
from ftlab.cli import main

real, calls = engine.train_one_epoch, []
def held(*args, **kwargs):  # the second epoch waits for the test's file: the run is still going while it looks
    calls.append(1)
    while len(calls) > 1 and not Path(sys.argv[1]).exists():
        time.sleep(0.05)
    return real(*args, **kwargs)
engine.train_one_epoch = held
sys.exit(main(["train", "--dataset", "digits", "--backbone", "small_cnn", "--weights", "random",
               "--image-size", "16", "--epochs", "2", "--batch-size", "256"]))
"""


@pytest.mark.slow
def test_a_run_started_outside_the_app_is_watched_live_from_the_store(tmp_path):
    gate = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    trainer = subprocess.Popen([sys.executable, "-c", HOLD, str(gate)], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        store = RunStore()
        wait_for(lambda: any(store.epochs(r.id) for r in store.list()), "the CLI run's first epoch", 300)
        run_id = store.list()[0].id

        at = app()
        goto(at, "app_pages/runs.py")
        assert list(at.dataframe[0].value["status"]) == ["running, started outside the app"]
        headline = [i.value for i in at.info if run_id in i.value]
        assert headline and f"started outside the app (by process {trainer.pid} on " in headline[0]
        assert "1 of 2 epoch(s) done" in headline[0]

        goto(at, "app_pages/train.py")
        notice = [i.value for i in at.info if run_id in i.value]
        assert notice and "is training, started outside the app" in notice[0]
        at.button(key=f"train.watch_outside.{run_id}").click().run()
        assert any("Watching a run started outside the app" in h.value for h in at.subheader)
        assert metrics(at)["Epoch"] == "1/2"
        curves = [s for s in charts(at) if {t.get("name") for t in s["data"]} == {"train", "val"}]
        assert len(curves) == 2 and all(len(t["x"]) == 1 for s in curves for t in s["data"])

        gate.touch()
        assert trainer.wait(timeout=300) == 0, trainer.stderr.read()
        poll(at, lambda a: a.success)  # the page polls the store: the end arrives without a click
        assert any(f"Run `{run_id}`, started outside the app, finished: best val accuracy" in s.value
                   for s in at.success)
        assert metrics(at)["Epoch"] == "2/2"
        assert any(t["type"] == "heatmap" for s in charts(at) for t in s["data"])  # the best model's confusion
        goto(at, "app_pages/runs.py")
        assert list(at.dataframe[0].value["status"]) == ["finished"]
    finally:
        gate.touch()
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()
