"""Several tasks on the pages: the Train page's choice of the data set's tasks (and its round trip
through the session), one head row per task in the Model page's block table, the Runs page's
overlay of one task over several runs, the Inspect page's per-task curves, and what balanced
sampling balances with several tasks. Offline, on temporary folders; runs are digits at 16 px."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ftlab import engine, explore, tasks
from ftlab.config import TrainConfig
from ftlab.runs import RunStore
from test_multitask import TINY, with_parity
from ui import keys as K, session

APP = str(Path(__file__).resolve().parents[1] / "app.py")
SHAPES = {K.DATASET: "shapes", K.BUILTIN: "shapes", K.cfg("shapes_classes"): 2, K.cfg("shapes_per_class"): 8}


def app(**state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    for key, value in state.items():
        at.session_state[key] = value
    return at


def goto(at: AppTest, page: str) -> AppTest:
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def chart_specs(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def titled(at: AppTest, title: str) -> list[dict]:
    return [s for s in chart_specs(at) if s["layout"].get("title", {}).get("text") == title]


# --- the Train page's task choice and the session ------------------------------------------

@pytest.mark.parametrize("text, held", [("", []), ("shape,colour", ["shape", "colour"]), ("all", ["all"])])
def test_the_task_choice_goes_from_a_config_to_the_session_and_back(text, held):
    state: dict = {}
    session.init_state(state)
    assert state[K.cfg("tasks")] == []  # the default, the first task only, as the multiselect holds it
    config = TrainConfig(dataset="shapes", tasks=text, task_weights="1,0.5" if "," in text else "")
    session.adopt_config(state, config)
    assert state[K.cfg("tasks")] == held
    assert session.current_config(state) == config


def test_fitting_the_choice_to_a_data_set_keeps_its_tasks_and_puts_the_first_first():
    state: dict = {}
    session.init_state(state)
    state[K.cfg("tasks")] = ["colour"]
    session.fit_tasks(state, ("shape", "colour"))
    assert session.current_config(state).tasks == "shape,colour"  # the first task always trains
    state[K.cfg("tasks")] = ["all"]
    session.fit_tasks(state, ("shape", "colour"))
    assert state[K.cfg("tasks")] == ["shape", "colour"]
    session.fit_tasks(state, ("class",))  # another data set: none of its tasks were chosen
    assert state[K.cfg("tasks")] == [] and session.current_config(state).tasks == ""
    state[K.cfg("tasks")] = ["shape", "colour"]
    session.fit_tasks(state, ())  # the data cannot be read now: the choice stays as it was
    assert state[K.cfg("tasks")] == ["shape", "colour"]


def test_the_train_page_offers_the_data_sets_tasks_and_says_what_none_trains(app_env):
    at = goto(app(**SHAPES), "app_pages/train.py")
    choice = at.multiselect(key=K.cfg("tasks"))
    assert choice.options == ["shape", "colour"] and choice.value == []
    assert "Empty: the first task only (shape)" in choice.help
    assert choice.placeholder == "shape only (choose colour to add it)"
    at.session_state[K.cfg("tasks")] = ["colour"]  # as if ticked in the form; the page fits it when it draws
    at.run()
    assert at.multiselect(key=K.cfg("tasks")).value == ["shape", "colour"]
    assert session.current_config(at.session_state).tasks == "shape,colour"
    at.session_state[K.DATASET] = at.session_state[K.BUILTIN] = "digits"
    at.run()
    choice = at.multiselect(key=K.cfg("tasks"))
    assert choice.options == ["class"] and choice.value == []  # digits has one task: shape and colour are gone
    assert not at.exception and not at.error


def test_a_run_started_on_the_train_page_trains_the_chosen_tasks(app_env):
    at = goto(app(**SHAPES), "app_pages/train.py")
    for key, value in {"backbone": "small_cnn", "weights": "random", "image_size": 16, "epochs": 1}.items():
        at.session_state[K.WEIGHTS if key == "weights" else K.cfg(key)] = value
    at.run()
    at.multiselect(key=K.cfg("tasks")).set_value(["shape", "colour"])
    at.button(key=K.START).click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    from ui import resources

    job = resources.registry().get(at.session_state[K.JOB])
    assert job.config.tasks == "shape,colour"
    assert job.join(timeout=600), "the run did not end"
    record = RunStore().get(job.run_id)
    assert record.config["tasks"] == "shape,colour" and list(record.summary["tasks"]) == ["shape", "colour"]


# --- the Model page: a head per task --------------------------------------------------------

def test_the_block_table_has_a_head_row_per_task_built_by_the_head_builder():
    config = TrainConfig(dataset="shapes", backbone="small_cnn", head=(8,), tasks="shape,colour")
    table = explore.block_table(config, (("shape", 2), ("colour", 4)))
    one = explore.block_table(config, 2)
    # small_cnn's pooled feature is 256 wide; the head builder's 256 -> 8 -> classes (weights and biases)
    shape_head, colour_head = 256 * 8 + 8 + 8 * 2 + 2, 256 * 8 + 8 + 8 * 4 + 4
    columns = table.columns()
    assert columns["block"][-2:] == ["head", "head"]
    assert columns["parameters"][-2:] == [shape_head, colour_head]
    assert columns["task"][-2:] == ["shape (2 classes)", "colour (4 classes)"]
    assert [r.outputs for r in table.rows[-2:]] == [2, 4]
    assert table.total == one.total + colour_head and one.columns()["parameters"][-1] == shape_head
    assert table.labels[-2:] == ["head · shape", "head · colour"] and table.blocks == one.blocks
    frozen, why = table.unticked(columns["block"], [True] * (len(columns["block"]) - 1) + [False])
    assert "head" in frozen and "The new head always trains" in why  # a task's head cannot be frozen either
    assert "task" not in one.columns()


def test_the_heads_follow_the_task_choice_and_say_when_it_does_not_fit_the_data():
    from ftlab import data

    ds = data.load_dataset("shapes", shapes=data.ShapesOptions(2, 4, 16))
    assert tasks.heads(TrainConfig(dataset="shapes"), ds) == ((("shape", 2),), "")
    assert tasks.heads(TrainConfig(dataset="shapes", tasks="all"), ds) == ((("shape", 2), ("colour", 4)), "")
    heads, note = tasks.heads(TrainConfig(dataset="shapes", tasks="shape,size"), ds)
    assert heads == (("shape", 2),) and "has no task size" in note and "first task's head only" in note


def test_the_model_page_draws_a_head_row_per_chosen_task(app_env):
    at = app(**SHAPES, **{K.cfg("tasks"): ["shape", "colour"]})
    goto(at, "app_pages/model.py")
    at.selectbox(key=K.cfg("backbone")).set_value("small_cnn").run()
    assert not at.exception, [e.value for e in at.exception]
    shown = at.data_editor[0].value
    heads = shown[shown["block"] == "head"]
    assert list(heads["task"]) == ["shape (2 classes)", "colour (4 classes)"]
    assert list(heads["parameters"]) == [256 * 2 + 2, 256 * 4 + 4]  # linear heads on small_cnn's 256 features
    assert "one new head per task: shape 2 classes, colour 4 classes" in at.metric[0].help
    bars = next(s for s in chart_specs(at) if s["data"][0]["type"] == "bar")
    assert bars["data"][0]["x"][-2:] == ["head · shape", "head · colour"]
    at.session_state[K.cfg("tasks")] = []
    at.run()
    assert list(at.data_editor[0].value["block"]).count("head") == 1


# --- Runs and Inspect: one task's curves -----------------------------------------------------

@pytest.fixture(scope="module")
def kept_runs(tmp_path_factory):
    """A two-task run (digit, parity; 2 epochs) and a one-task run on digits, in one home."""
    mp = pytest.MonkeyPatch()
    with_parity(mp)
    home = tmp_path_factory.mktemp("tasks-pages-home")
    try:
        two = engine.run(TrainConfig(**dict(TINY, epochs=2), tasks="digit,parity"), store=RunStore(home))
        one = engine.run(TrainConfig(**TINY), store=RunStore(home))
    finally:
        mp.undo()
    assert two["stopped_reason"] == one["stopped_reason"] == "completed"
    return home, two["run_id"], one["run_id"]


def test_the_overlay_curves_of_a_task_come_from_the_runs_that_trained_it(kept_runs):
    home, two, one = kept_runs
    store = RunStore(home)
    runs = [store.get(two), store.get(one)]
    epochs = {r.id: store.epochs(r.id) for r in runs}
    assert tasks.overlay_choices(runs) == [tasks.FIRST, "digit", "parity"]
    curves, lacking = tasks.overlay_curves(runs, epochs, "parity")
    assert list(curves) == [two] and lacking == [one]
    assert [r["val_accuracy"] for r in curves[two]] == [e["tasks"]["parity"]["val_accuracy"] for e in epochs[two]]
    curves, lacking = tasks.overlay_curves(runs, epochs, "digit")  # the one-task run trained digits' first task
    assert list(curves) == [two, one] and lacking == [] and curves[one] == epochs[one]
    assert tasks.overlay_curves(runs, epochs, tasks.FIRST) == (epochs, [])


def test_the_runs_page_overlays_the_chosen_task_and_names_the_runs_without_it(app_env, kept_runs, monkeypatch):
    home, two, one = kept_runs
    monkeypatch.setenv("FTLAB_HOME", str(home))
    at = goto(app(), "app_pages/runs.py")
    assert set(at.multiselect(key=K.RUNS_COMPARE).value) == {two, one}
    choice = at.selectbox(key=K.RUNS_OVERLAY_TASK)
    assert choice.options == ["each run's first task (its classes)", "digit", "parity"]
    epochs = RunStore(home).epochs(two)
    choice.select("parity").run()
    assert not at.exception, [e.value for e in at.exception]
    [accuracy] = titled(at, "Accuracy per epoch: parity")
    assert [t["name"] for t in accuracy["data"]] == [f"{two} val", f"{two} train"]
    assert accuracy["data"][0]["y"] == [e["tasks"]["parity"]["val_accuracy"] for e in epochs]
    [loss] = titled(at, "Loss per epoch: parity")
    assert loss["data"][0]["y"] == [e["tasks"]["parity"]["val_loss"] for e in epochs]
    captions = [c.value for c in at.caption]
    assert any(one in c and "did not train parity" in c for c in captions), captions
    at.selectbox(key=K.RUNS_OVERLAY_TASK).select("digit").run()
    [accuracy] = titled(at, "Accuracy per epoch: digit")
    assert {t["name"] for t in accuracy["data"]} == {f"{two} val", f"{two} train", f"{one} val", f"{one} train"}
    assert not any("did not train" in c.value for c in at.caption)


def test_the_inspect_page_draws_the_chosen_tasks_curves(app_env, kept_runs, monkeypatch):
    home, two, _ = kept_runs
    monkeypatch.setenv("FTLAB_HOME", str(home))
    at = app(**{K.INSPECT_RUN: two})
    goto(at, "app_pages/inspect_run.py")
    at.selectbox(key=K.TASK_SHOWN.format("inspect")).select("parity").run()
    assert not at.exception, [e.value for e in at.exception]
    epochs = RunStore(home).epochs(two)
    [accuracy] = titled(at, "Accuracy")
    val = next(t for t in accuracy["data"] if t["name"] == "val")
    assert val["x"] == [1, 2] and val["y"] == [e["tasks"]["parity"]["val_accuracy"] for e in epochs]
    [loss] = titled(at, "Loss")
    assert next(t for t in loss["data"] if t["name"] == "train")["y"] == [e["tasks"]["parity"]["loss"] for e in epochs]


# --- balanced sampling with several tasks ------------------------------------------------------

def test_balanced_sampling_balances_the_first_tasks_classes_and_says_so(monkeypatch, tmp_path, capsys):
    """Digits with parity on a long tail: each training image is drawn with weight 1 / the count of
    its digit in the training split, whatever its parity (the counts of the two tasks differ)."""
    import numpy as np

    from ftlab import cli, data
    from ftlab.config import options

    help_text = next(f.metadata["help"] for f in options() if f.name == "balanced_sampling")
    assert "several tasks: the first task's classes" in help_text
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "several tasks: the first task's classes" in " ".join(capsys.readouterr().out.split())
    with_parity(monkeypatch)
    drawn: list = []
    original = engine.batches

    def batches(n, batch_size, *, generator=None, sample_weights=None):
        drawn.append(sample_weights)
        return original(n, batch_size, generator=generator, sample_weights=sample_weights)
    monkeypatch.setattr(engine, "batches", batches)
    config = TrainConfig(**TINY, tasks="digit,parity", balanced_sampling=True, imbalance_ratio=4.0)
    store = RunStore(tmp_path / "home")
    summary = engine.run(config, store=store)
    assert summary["stopped_reason"] == "completed", summary
    train = np.asarray(store.get(summary["run_id"]).split["train"])
    digits = data.load_dataset("digits").labels[train]
    weights = drawn[0].numpy()
    assert np.allclose(weights, 1.0 / np.bincount(digits)[digits])
    parity = digits % 2
    assert not np.allclose(weights, 1.0 / np.bincount(parity)[parity])  # not the second task's balance


# --- distillation: what precision the teacher runs in (README's distillation bullet) ---------------

def test_the_teachers_logits_are_computed_in_fp32_when_the_student_trains_in_bf16(monkeypatch, tmp_path):
    import torch

    from ftlab import teacher as teachers

    store = RunStore(tmp_path / "home")
    taught = engine.run(TrainConfig(**TINY), store=store)
    calls: list = []
    load = teachers.load

    def watched(*args, **kwargs):
        t = load(*args, **kwargs)
        t.model.register_forward_hook(lambda m, i, out: calls.append((torch.is_autocast_enabled("cpu"), out.dtype)))
        return t
    monkeypatch.setattr(teachers, "load", watched)
    summary = engine.run(TrainConfig(**TINY, teacher=taught["run_id"], precision="bf16"), store=store)
    assert summary["stopped_reason"] == "completed" and summary["precision"]["training"] == "bf16", summary
    assert calls and set(calls) == {(False, torch.float32)}  # every teacher batch: no autocast, fp32 out
