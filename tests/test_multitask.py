"""Several tasks on one backbone: the loss (fixed weights against a hand computation, uncertainty
weighting learning its weights), one head per task, per-task figures of a tiny two-task run, the
refusals, the checkpoint, prediction, export and the pages.

The two-task data are digits with a second task, the digit's parity (even/odd), given to the
loader here: the tests do not depend on any data set carrying tasks natively.
Tiny runs: small_cnn, random weights, 16 px, 1 epoch."""
from __future__ import annotations

import io
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ftlab import backbones, checkpoints, cli, engine, events, export, freeze, tasks
from ftlab.config import TrainConfig, validate
from ftlab.data import prepared
from ftlab.data.dataset import Task
from ftlab.objectives import Batch, CrossEntropy, MultiTask
from ftlab.predict import Predictor
from ftlab.runs import RunStore

TINY = dict(dataset="digits", backbone="small_cnn", weights="random", strategy="full", image_size=16,
            batch_size=64, epochs=1, lr=3e-3)
TWO = dict(TINY, tasks="digit,parity")


def with_parity(monkeypatch) -> None:
    """Digits, its first task named "digit", with a second task "parity" (even / odd)."""
    original = prepared.load_for

    def load_for(config, *, download: bool = True):
        ds = original(config, download=download)
        return replace(ds, task="digit", tasks=(Task("parity", ("even", "odd"), ds.labels % 2),))
    monkeypatch.setattr(prepared, "load_for", load_for)


@pytest.fixture(scope="module")
def two_task_run(tmp_path_factory):
    """One two-task run for the module (its own home), with every event it emitted."""
    mp = pytest.MonkeyPatch()
    with_parity(mp)
    home = tmp_path_factory.mktemp("multitask-home")
    seen: list = []
    try:
        summary = engine.run(TrainConfig(**TWO, task_weights="1,0.5"), store=RunStore(home), emit=seen.append)
    finally:
        mp.undo()
    assert summary["stopped_reason"] == "completed", summary
    return home, summary, seen


# --- the loss ------------------------------------------------------------------------------

def _ce(row: list[float], label: int) -> float:
    """Cross-entropy of one image by hand: log(sum(exp(z))) - z[label]."""
    return math.log(sum(math.exp(z) for z in row)) - row[label]


def test_fixed_weights_give_the_weighted_sum_of_each_tasks_cross_entropy():
    # two images; task a has 3 classes (columns 0-2), task b 2 (columns 3-4)
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.3, 1.2], [0.1, 0.2, 3.0, -0.4, -0.9]])
    labels = torch.tensor([[0, 1], [1, 0]])
    objective = MultiTask(("a", "b"), (3, 2), [CrossEntropy(), CrossEntropy()], weights=(1.0, 0.5))
    step = objective(logits, Batch(logits, labels, torch.arange(2)))
    rows = logits.tolist()
    ce_a = (_ce(rows[0][:3], 0) + _ce(rows[1][:3], 1)) / 2
    ce_b = (_ce(rows[0][3:], 1) + _ce(rows[1][3:], 0)) / 2
    assert step.loss.item() == pytest.approx(1.0 * ce_a + 0.5 * ce_b, rel=1e-6)
    assert step.counts["loss:a"] == pytest.approx(2 * ce_a, rel=1e-6)  # a part times the batch's images
    assert step.counts["loss:b"] == pytest.approx(2 * ce_b, rel=1e-6)
    # image 0: a predicts 0 (right), b predicts 1 (right); image 1: a predicts 2 (wrong), b predicts 0 (right)
    assert (step.counts["correct"], step.counts["correct:a"], step.counts["correct:b"]) == (1, 1, 2)
    assert objective.parameters() == [] and objective.weights() == {"a": 1.0, "b": 0.5}


def test_uncertainty_weighting_starts_at_the_plain_sum_and_learns_its_weights():
    """Kendall et al.: exp(-s)·CE + s/2 per task, s = 0 at first. Its gradient in s is 1/2 - exp(-s)·CE:
    a task the model gets badly wrong (CE > 1/2) is weighted down, one it gets right (CE < 1/2) up."""
    logits = torch.tensor([[6.0, -6.0, 0.0, 0.0], [-6.0, 6.0, 0.0, 0.0]])  # task a: right and sure; b: a coin
    labels = torch.tensor([[0, 0], [1, 1]])
    objective = MultiTask(("a", "b"), (2, 2), [CrossEntropy(), CrossEntropy()], weighting="uncertainty")
    batch = Batch(logits, labels, torch.arange(2))
    ce_a, ce_b = _ce([6.0, -6.0], 0), _ce([0.0, 0.0], 0)
    assert objective(logits, batch).loss.item() == pytest.approx(ce_a + ce_b, rel=1e-6)
    (log_vars,) = objective.parameters()
    optimizer = torch.optim.SGD([log_vars], lr=0.5)
    for _ in range(20):
        optimizer.zero_grad()
        objective(logits, batch).loss.backward()
        optimizer.step()
    w = objective.weights()
    assert w["a"] > 1.5 and w["b"] < 1.0
    # at its optimum exp(-s) = 1 / (2 CE): b's weight heads for 1 / (2 ln 2) = 0.72
    assert w["b"] == pytest.approx(1 / (2 * ce_b), abs=0.05)


def test_an_uncertainty_run_puts_the_log_variances_in_the_optimiser_and_records_the_weights(monkeypatch, tmp_path):
    with_parity(monkeypatch)
    made = []
    real = engine.make_optimizer
    monkeypatch.setattr(engine, "make_optimizer", lambda c, groups: made.append(real(c, groups)) or made[-1])
    seen: list = []
    summary = engine.run(TrainConfig(**{**TWO, "epochs": 2, "task_weighting": "uncertainty"}),
                         store=RunStore(tmp_path / "home"), emit=seen.append)
    assert summary["stopped_reason"] == "completed", summary
    groups = made[0].param_groups
    assert groups[0]["name"] == "task weights" and groups[0]["params"][0].shape == (2,)
    assert groups[0]["weight_decay"] == 0.0 and groups[-1]["name"] == "head"
    records = RunStore(tmp_path / "home").epochs(summary["run_id"])
    weights = [[r["tasks"][t]["weight"] for t in ("digit", "parity")] for r in records]
    assert all(w != pytest.approx(1.0, abs=1e-4) for row in weights for w in row)  # they moved
    assert weights[0] != weights[1]  # and kept moving, epoch by epoch
    ended = [e for e in seen if isinstance(e, events.EpochEnded)]
    assert [e.tasks["parity"]["weight"] for e in ended] == [w[1] for w in weights]


# --- the model ------------------------------------------------------------------------------

def test_each_task_gets_its_own_head_built_with_the_head_edits():
    from ftlab.edits import ModelEdits, TaskHeads

    model = backbones.create_model("small_cnn", (10, 2), "random", edits=ModelEdits(head=(8,), dropout=0.2),
                                   image_size=16)
    assert isinstance(model.head, TaskHeads) and model.task_sizes == (10, 2) and model.num_classes == 10
    for head, n in zip(model.head, (10, 2)):
        linears = [m for m in head if isinstance(m, nn.Linear)]
        assert [lin.out_features for lin in linears] == [8, n]
        assert [m.p for m in head if isinstance(m, nn.Dropout)] == [0.2, 0.2]
    assert model.eval()(torch.zeros(3, 3, 16, 16)).shape == (3, 12)
    freeze.apply_freeze(model, freeze.make_plan(model.param_blocks(), "linear-probe").frozen_at(0), True)
    assert all(p.requires_grad for p in model.head.parameters())  # every head trains in a linear probe
    one = backbones.create_model("small_cnn", 10, "random", image_size=16)
    assert isinstance(one.head, nn.Sequential) and one.task_sizes == ()  # one task: the head as before


# --- a two-task run ----------------------------------------------------------------------------

def test_a_two_task_run_reports_each_tasks_figures(two_task_run):
    home, summary, seen = two_task_run
    assert list(summary["tasks"]) == ["digit", "parity"]
    assert summary["best_val_accuracy"] == summary["tasks"]["digit"]  # the first task's stays the run's
    started = next(e for e in seen if isinstance(e, events.RunStarted))
    assert started.tasks == {"digit": tuple(str(d) for d in range(10)), "parity": ("even", "odd")}
    (ended,) = [e for e in seen if isinstance(e, events.EpochEnded)]
    assert set(ended.parts) == {"digit", "parity"}
    parity = ended.tasks["parity"]
    assert np.asarray(parity["confusion"]).shape == (2, 2)
    assert np.asarray(parity["confusion"]).sum() == np.asarray(ended.confusion).sum()  # every val image
    assert ended.tasks["digit"]["val_accuracy"] == ended.val_accuracy
    assert parity["weight"] == 0.5 and parity["loss"] == ended.parts["parity"]
    record = RunStore(home).get(summary["run_id"])
    (epoch,) = RunStore(home).epochs(summary["run_id"])
    assert epoch["tasks"]["parity"]["val_accuracy"] == parity["val_accuracy"]
    assert "confusion" not in epoch["tasks"]["parity"]  # the record keeps figures, the event the matrices
    # the final evaluation's parity accuracy, counted here from its predictions and the digits' labels
    final = record.final["val"]["tasks"]["parity"]
    truth = prepared.load_for(TrainConfig(**TINY)).labels[record.final["val"]["indices"]] % 2
    assert final["accuracy"] == pytest.approx(float((np.asarray(final["predictions"]) == truth).mean()))
    assert final["classes"] == ["even", "odd"] and np.asarray(final["confusion"]).shape == (2, 2)
    assert summary["tasks"]["parity"] == final["accuracy"]  # one epoch: its best is the checkpoint's


def test_a_one_task_run_is_unchanged(tmp_path):
    summary = engine.run(TrainConfig(**TINY), store=RunStore(tmp_path / "home"))
    assert summary["tasks"] == {}
    (epoch,) = RunStore(tmp_path / "home").epochs(summary["run_id"])
    assert epoch["tasks"] == {} and epoch["parts"] == {}
    checkpoint = RunStore(tmp_path / "home").load_checkpoint(summary["run_id"])
    assert "tasks" not in checkpoint and checkpoints.task_sizes(checkpoint) == ()


def test_the_json_summary_carries_each_tasks_best_val_accuracy(monkeypatch, capsys):
    with_parity(monkeypatch)
    argv = ["train", "--dataset", "digits", "--backbone", "small_cnn", "--weights", "random", "--strategy", "full",
            "--image-size", "16", "--epochs", "1", "--batch-size", "64", "--tasks", "digit,parity", "--json"]
    assert cli.main(argv) == 0
    out = capsys.readouterr()
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert set(summary["tasks"]) == {"digit", "parity"}
    assert summary["best_val_accuracy"] == summary["tasks"]["digit"]
    assert "val acc per task: digit" in out.err


# --- refusals --------------------------------------------------------------------------------

def test_a_task_the_data_does_not_carry_fails_the_run_naming_its_tasks(monkeypatch, tmp_path):
    with_parity(monkeypatch)
    seen: list = []
    summary = engine.run(TrainConfig(**{**TINY, "tasks": "digit,colour"}), store=RunStore(tmp_path / "h"),
                         emit=seen.append)
    assert summary["stopped_reason"] == "error"
    (failed,) = [e for e in seen if isinstance(e, events.RunFailed)]
    assert "no task colour" in failed.message and "digit, parity" in failed.message
    assert "Traceback" not in failed.message


@pytest.mark.parametrize("options, words", [
    (dict(tasks="parity"), "must include the data set's first task, 'digit'"),
    (dict(tasks="all", task_weighting="uncertainty", dataset="digits", plain=True), "trains only 'class'"),
])
def test_the_run_refuses_tasks_that_leave_out_the_first_or_balance_one_task(monkeypatch, tmp_path, options, words):
    if not options.pop("plain", False):
        with_parity(monkeypatch)
    seen: list = []
    engine.run(TrainConfig(**{**TINY, **options}), store=RunStore(tmp_path / "h"), emit=seen.append)
    (failed,) = [e for e in seen if isinstance(e, events.RunFailed)]
    assert words in failed.message, failed.message


@pytest.mark.parametrize("options, words", [
    (dict(task_weights="1,0"), "positive numbers"),
    (dict(tasks="a,b", task_weights="1,-2"), "positive numbers"),
    (dict(tasks="a,b", task_weights="1,x"), "(got 'x')"),
    (dict(tasks="a,b", task_weights="1"), "1 weights for 2 tasks"),
    (dict(tasks="all", task_weights="1,2"), "instead of all"),
    (dict(tasks="a,a"), "names a task twice"),
    (dict(task_weighting="uncertainty"), "name them with --tasks"),
    (dict(tasks="a,b", task_weighting="uncertainty", task_weights="1,2"), "learns each task's weight"),
    (dict(task_weighting="learned"), "task_weighting must be one of"),
])
def test_validation_refuses_bad_task_options_in_sentences(options, words):
    problems = validate(TrainConfig(**options))
    assert any(words in p for p in problems), problems


def test_good_task_options_pass_validation():
    # the tasks are looked up in the data set (shapes carries shape and colour) before the run
    assert validate(TrainConfig(dataset="shapes", tasks="shape,colour", task_weights="1,0.5")) == []
    assert validate(TrainConfig(dataset="shapes", tasks="all", task_weighting="uncertainty")) == []


# --- checkpoint, prediction, export -------------------------------------------------------------

def test_the_checkpoint_records_the_tasks_and_rebuilds_the_model(two_task_run, tmp_path):
    home, summary, _ = two_task_run
    path = RunStore(home).checkpoint_path(summary["run_id"])
    checkpoint = checkpoints.load_file(path)
    assert checkpoints.tasks(checkpoint) == [("digit", [str(d) for d in range(10)]), ("parity", ["even", "odd"])]
    assert checkpoint["classes"] == [str(d) for d in range(10)] and checkpoint["num_classes"] == 10
    model = checkpoints.load_model(checkpoint)
    assert model.task_sizes == (10, 2)
    assert all(torch.equal(v, checkpoint["model"][k]) for k, v in model.state_dict().items())
    # a crafted task list that does not fit the heads is refused before anything is built
    crafted = dict(checkpoint, tasks=[checkpoint["tasks"][0], {"name": "parity", "classes": ["a", "b", "c"]}])
    assert any("does not have 3 outputs" in p for p in checkpoints.problems(crafted))
    with pytest.raises(checkpoints.CheckpointError, match="task list"):
        checkpoints.load_model(dict(checkpoint, tasks=[{"name": "parity"}, 3]))


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (value,) * 3).save(buf, "PNG")
    return buf.getvalue()


def test_a_prediction_shows_every_tasks_top_classes(two_task_run, tmp_path, capsys, monkeypatch):
    home, summary, _ = two_task_run
    predictor = Predictor.for_run(summary["run_id"], RunStore(home))
    prediction = predictor.predict(_png(255), top_k=3)
    assert list(prediction.tasks) == ["digit", "parity"]
    assert prediction.tasks["digit"] == prediction.top and len(prediction.top) == 3
    assert [c for c, _ in prediction.tasks["parity"]] in (["even", "odd"], ["odd", "even"])  # 2 classes, not 3
    assert sum(p for _, p in prediction.tasks["parity"]) == pytest.approx(1.0, abs=1e-5)
    digit, parity = predictor.task_probabilities(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    assert digit.shape == (1, 10) and parity.shape == (1, 2)
    image = tmp_path / "white.png"
    image.write_bytes(_png(255))
    monkeypatch.setenv("FTLAB_HOME", str(home))
    assert cli.main(["predict", "--run", summary["run_id"], str(image)]) == 0
    out = capsys.readouterr().out
    assert "digit:" in out and "parity:" in out and ("even" in out and "odd" in out)


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_a_two_task_run_exports_and_the_file_gives_each_tasks_probabilities(two_task_run, tmp_path, fmt,
                                                                            monkeypatch):
    with_parity(monkeypatch)
    home, summary, _ = two_task_run
    result = export.export_run(summary["run_id"], fmt, out=tmp_path / "out", store=RunStore(home))
    assert result.check.ran and result.check.max_delta <= export.TOLERANCE, result.check
    checkpoint = RunStore(home).load_checkpoint(summary["run_id"])
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    got = export.load(result.model_path)(images.numpy())
    expected = torch.cat(Predictor(checkpoint).task_probabilities(images), 1).numpy()
    assert got.shape == expected.shape == (5, 12)
    assert np.abs(got - expected).max() <= 1e-4
    assert np.allclose(got[:, :10].sum(1), 1, atol=1e-5) and np.allclose(got[:, 10:].sum(1), 1, atol=1e-5)
    labels = json.loads(result.labels_path.read_text())
    assert labels["output"]["shape"] == ["N", 12]
    assert [(t["task"], t["columns"]) for t in labels["output"]["tasks"]] == [("digit", [0, 10]), ("parity", [10, 12])]


# --- pages ------------------------------------------------------------------------------------

def _app_test():
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=60).run()


def _goto(at, page: str):
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _heatmaps(at) -> list[dict]:
    return [t for c in at.get("plotly_chart") for t in json.loads(c.proto.spec)["data"] if t["type"] == "heatmap"]


def test_runs_and_inspect_show_each_task(app_env, two_task_run, monkeypatch):
    home, summary, _ = two_task_run
    monkeypatch.setenv("FTLAB_HOME", str(home))
    at = _app_test()
    _goto(at, "app_pages/runs.py")
    assert list(at.dataframe[0].value["tasks"])[0].startswith("digit ")
    task = at.selectbox(key="runs.task")
    assert task.options == ["digit", "parity"]
    task.select("parity").run()
    assert not at.exception
    assert any(len(h["z"]) == 2 for h in _heatmaps(at))  # parity's confusion matrix of the best model
    assert any("Task weights" in json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart"))
    _goto(at, "app_pages/inspect_run.py")
    at.selectbox(key="inspect.task").select("parity").run()
    assert any(len(h["z"]) == 2 for h in _heatmaps(at))
    at.file_uploader(key="inspect.image").upload("white.png", _png(255), "image/png").run()
    assert not at.exception and not at.error
    shown = {m.label: m.value for m in at.metric}
    assert shown["Prediction"] in [str(d) for d in range(10)] and shown["Prediction: parity"] in ("even", "odd")


def test_the_live_view_shows_each_tasks_figures(app_env):
    import time

    from ui import keys as K

    at = _app_test()  # shapes carries its colour: the page offers the tasks of the data set it reads
    for key, value in {K.DATASET: "shapes", K.BUILTIN: "shapes", "cfg.shapes_classes": 2,
                       "cfg.shapes_per_class": 8}.items():
        at.session_state[key] = value
    _goto(at, "app_pages/train.py")
    at.number_input(key="cfg.image_size").set_value(32)
    at.number_input(key="cfg.epochs").set_value(1)
    at.multiselect(key="cfg.tasks").set_value(["shape", "colour"])
    at.selectbox(key="cfg.task_weighting").select("uncertainty")
    at.button(key="train.start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    deadline = time.monotonic() + 600
    while not (at.success or at.error) and time.monotonic() < deadline:
        time.sleep(1)
        at.run()
    assert at.success and not at.error, [e.value for e in at.error]
    task = at.selectbox(key="train.task")
    assert task.options == ["shape", "colour"]
    task.select("colour").run()
    assert any(len(h["z"]) == 4 for h in _heatmaps(at))  # the four colours
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert "Task weights in the loss" in titles


def test_a_teacher_with_several_tasks_is_refused_in_a_sentence():
    from ftlab.config import TrainConfig, validate

    problems = validate(TrainConfig(dataset="shapes", tasks="shape,colour", teacher="20250101-120000-a1b2c3"))
    assert any("a teacher distils one task" in p for p in problems), problems
    assert not any("distils one task" in p for p in validate(TrainConfig(dataset="shapes", tasks="shape,colour")))
