"""Distillation from a kept run: the loss against a hand-computed value, the teacher's logits
computed once per image, refused teachers, a run end to end, and the pages that show it."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ftlab import checkpoints, cli, engine, events, explore
from ftlab.config import TrainConfig, validate
from ftlab.objectives import Batch, CrossEntropy, Distillation
from ftlab.runs import RunStore

ROOT = Path(__file__).resolve().parents[1]
# a few images, so that each run takes seconds: 3 shape classes of 16 images, 16 px
SHAPES = dict(dataset="shapes", shapes_classes=3, shapes_per_class=16, backbone="small_cnn", weights="random",
              strategy="full", image_size=16, batch_size=16, epochs=1, lr=3e-3)


@pytest.fixture
def store() -> RunStore:
    return RunStore()  # under this test's FTLAB_HOME (conftest), where validate looks a teacher up too


def train(store: RunStore, **options) -> tuple[dict, list]:
    seen = []
    summary = engine.run(TrainConfig(**{**SHAPES, **options}), store=store, emit=seen.append)
    return summary, seen


def failure(seen: list) -> str:
    ends = [e for e in seen if isinstance(e, events.RunFailed)]
    assert ends, [type(e).__name__ for e in seen]
    return ends[-1].message


# --- the loss -----------------------------------------------------------------------------

def test_the_loss_is_hintons_against_a_value_computed_by_hand():
    s, t, y, T, a = [1.0, 0.0], [0.0, 2.0], 0, 2.0, 0.25

    def softmax(v):
        e = [math.exp(x) for x in v]
        return [x / sum(e) for x in e]

    p_t, p_s = softmax([x / T for x in t]), softmax([x / T for x in s])
    kl = sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
    ce = -math.log(softmax(s)[y])
    expected = a * T * T * kl + (1 - a) * ce

    batch = Batch(torch.zeros(1, 1), torch.tensor([y]), torch.tensor([0]))
    step = Distillation(torch.tensor([t]), temperature=T, alpha=a)(torch.tensor([s]), batch)
    assert step.loss.item() == pytest.approx(expected, rel=1e-6)
    # the parts as they contribute: they add up to the loss
    assert step.counts["loss:kd"] == pytest.approx(a * T * T * kl, rel=1e-6)
    assert step.counts["loss:ce"] == pytest.approx((1 - a) * ce, rel=1e-6)
    assert step.counts["correct"] == 1


def test_the_teacher_is_looked_up_by_place_and_a_function_teaches_alike():
    torch.manual_seed(0)
    table, student = torch.randn(10, 4), torch.randn(3, 4, requires_grad=True)
    batch = Batch(torch.zeros(3, 1), torch.tensor([1, 0, 3]), torch.tensor([7, 2, 5]))
    cached = Distillation(table, 4.0, 0.5)(student, batch)
    called = []
    recomputed = Distillation(lambda idx: called.append(idx) or table[idx], 4.0, 0.5)(student, batch)
    assert torch.equal(called[0], batch.index)
    assert cached.loss.item() == pytest.approx(recomputed.loss.item())
    # alpha 0 is the plain cross-entropy; the teacher then changes nothing
    plain = CrossEntropy()(student, batch).loss.item()
    assert Distillation(table, 4.0, 0.0)(student, batch).loss.item() == pytest.approx(plain)
    # a teacher that agrees with the student adds no KD loss
    assert Distillation(student.detach().clone().repeat(4, 1), 3.0, 1.0)(
        student, Batch(batch.inputs, batch.labels, torch.arange(3))).loss.item() == pytest.approx(0.0, abs=1e-6)
    cached.loss.backward()  # the gradient reaches the student only
    assert student.grad is not None and student.grad.abs().sum() > 0


# --- options ------------------------------------------------------------------------------

@pytest.mark.parametrize("options, words", [
    ({"distill_temperature": 0.0}, "distill_temperature must be between 0.05 and 100 (got 0)"),
    ({"distill_temperature": -1.0}, "distill_temperature must be between"),
    ({"distill_alpha": 1.5}, "distill_alpha must be between 0 and 1 (got 1.5)"),
    ({"distill_alpha": -0.1}, "distill_alpha must be between 0 and 1"),
    ({"teacher": "../../etc"}, "is not a run id"),
    ({"teacher": "20250101-120000-a1b2c3"}, "unknown run 20250101-120000-a1b2c3"),
])
def test_validation_refuses_nonsense_in_sentences(options, words):
    problems = validate(TrainConfig(**{**SHAPES, **options}))
    assert any(words in p for p in problems), problems


def test_train_help_shows_each_option_with_its_default_and_range():
    out = subprocess.run([sys.executable, "-m", "ftlab", "train", "--help"], capture_output=True, text=True,
                         cwd=ROOT, env={"COLUMNS": "400", "PATH": "/usr/bin:/bin"}).stdout
    text = " ".join(out.split())
    assert "--teacher RUN_ID distil from this kept run" in text
    assert "(default: 4.0; range 0.05 to 100)" in text.split("--distill-temperature T ", 1)[1][:300]
    assert "(default: 0.5; range 0 to 1)" in text.split("--distill-alpha A ", 1)[1][:300]


# --- the teacher --------------------------------------------------------------------------

@pytest.fixture
def teacher_run(store) -> dict:
    summary, _ = train(store)
    assert summary["stopped_reason"] == "completed", summary
    return summary


def count_teacher_forwards(monkeypatch) -> list:
    """Every forward pass of a teacher model the run loads, counted (one entry per batch)."""
    calls, real = [], checkpoints.load_model

    def counting(checkpoint):
        model = real(checkpoint)
        model.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
        return model
    monkeypatch.setattr(checkpoints, "load_model", counting)
    return calls


def test_the_teachers_logits_are_computed_once_per_image(store, teacher_run, monkeypatch):
    calls = count_teacher_forwards(monkeypatch)
    summary, seen = train(store, teacher=teacher_run["run_id"], epochs=3, seed=0, backbone="small_cnn")
    assert summary["stopped_reason"] == "completed" and summary["epochs_run"] == 3
    started = next(e for e in seen if isinstance(e, events.RunStarted))
    images = started.split_sizes["train"] + started.split_sizes["val"]
    assert sum(calls) == images  # every train and val image once, not once per epoch
    said = [e.message for e in seen if isinstance(e, events.Preparing)]
    assert f"computing the teacher's logits for {started.split_sizes['train']} train images" in " ".join(said)
    # a second run with this teacher on these data reuses them from the feature cache
    calls.clear()
    again, seen = train(store, teacher=teacher_run["run_id"], epochs=2, lr=1e-3)
    assert again["stopped_reason"] == "completed" and calls == []
    assert any("computed by an earlier run" in e.message for e in seen if isinstance(e, events.Preparing))


def test_with_cached_augmented_views_the_teacher_sees_each_view_once(store, teacher_run, monkeypatch):
    calls = count_teacher_forwards(monkeypatch)
    summary, seen = train(store, teacher=teacher_run["run_id"], strategy="linear-probe", flip=True,
                          color_jitter=0.3, augment_views=2, epochs=3)
    assert summary["stopped_reason"] == "completed", failure(seen) if summary["stopped_reason"] == "error" else ""
    assert "cached features" in summary["feature_cache"]  # the student trained on the stored views
    started = next(e for e in seen if isinstance(e, events.RunStarted))
    n_train, n_val = started.split_sizes["train"], started.split_sizes["val"]
    # the un-augmented train and val images, then views 1 and 2 once each (epoch 3 is view 1 again)
    assert sum(calls) == n_train + n_val + 2 * n_train
    said = " ".join(e.message for e in seen if isinstance(e, events.Preparing))
    assert "view 1" in said and "view 2" in said


def test_a_teacher_at_another_size_sees_its_own_decoding(store, teacher_run, monkeypatch):
    sizes = []
    calls = count_teacher_forwards(monkeypatch)
    real = engine.data.decode
    monkeypatch.setattr(engine.data, "decode",
                        lambda ds, idx, size, **k: sizes.append(size) or real(ds, idx, size, **k))
    summary, _ = train(store, teacher=teacher_run["run_id"], image_size=24)
    assert summary["stopped_reason"] == "completed"
    assert sizes == [16, 16] and sum(calls) > 0  # train and val decoded again at the teacher's 16 px
    # the same val images as the teacher's own run, decoded its way: the same accuracy
    assert summary["teacher"]["val_accuracy"] == pytest.approx(teacher_run["best_val_accuracy"])


def test_a_recomputing_teacher_gives_the_table_of_logits(store, teacher_run):
    from ftlab import data, teacher as teachers

    config = TrainConfig(**SHAPES)
    ds = data.load_for(config)
    classes = list(reversed(ds.classes))  # another order of the same classes: the outputs follow it
    teacher = teachers.load(teacher_run["run_id"], store, classes)
    images = data.decode(ds, data.split_for(config, ds).train, 16).images
    table = teacher.logits(images, torch.device("cpu"))
    index = torch.tensor([3, 0, 5])
    assert torch.allclose(teacher.recomputing(images, torch.device("cpu"))(index), table[index], atol=1e-5)
    plain = teachers.load(teacher_run["run_id"], store, list(ds.classes)).logits(images, torch.device("cpu"))
    assert torch.allclose(table, plain.flip(1), atol=1e-5)


def _delete(store, run_id):
    store.delete(run_id)


def _garble(store, run_id):
    store.checkpoint_path(run_id).write_bytes(b"not a checkpoint at all")


def _wrong_shapes(store, run_id):
    checkpoint = store.load_checkpoint(run_id)
    checkpoint["model"] = {k: v[..., :1] if v.dim() else v for k, v in checkpoint["model"].items()}
    torch.save(checkpoint, store.checkpoint_path(run_id))


@pytest.mark.parametrize("spoil, words", [
    (_delete, "unknown run"),
    (_garble, "checkpoint"),
    (_wrong_shapes, "cannot be used"),
])
def test_a_refused_teacher_ends_the_run_with_a_sentence(store, teacher_run, spoil, words):
    spoil(store, teacher_run["run_id"])
    summary, seen = train(store, teacher=teacher_run["run_id"])
    message = failure(seen)
    assert summary["stopped_reason"] == "error"
    assert words in message and teacher_run["run_id"] in message, message
    assert "Traceback" not in message and "Training failed" not in message, message


def test_a_teacher_on_other_classes_is_refused_before_any_work(store, teacher_run):
    problems = validate(TrainConfig(**{**SHAPES, "shapes_classes": 4, "teacher": teacher_run["run_id"]}))
    assert any("trained on other classes" in p and "it lacks" in p for p in problems), problems
    # the engine refuses it too (on the decoded data), with the same sentence and no record
    summary, seen = train(store, shapes_classes=4, teacher=teacher_run["run_id"])
    assert "trained on other classes" in failure(seen) and summary["stopped_reason"] == "error"


def test_a_run_still_training_or_without_a_checkpoint_cannot_teach(store):
    store.create("20250101-120000-a1b2c3", TrainConfig(**SHAPES).to_dict())
    problems = validate(TrainConfig(**{**SHAPES, "teacher": "20250101-120000-a1b2c3"}))
    assert any("is still training" in p for p in problems), problems
    store.finish("20250101-120000-a1b2c3", "failed", {}, {}, "the data folder was empty")
    problems = validate(TrainConfig(**{**SHAPES, "teacher": "20250101-120000-a1b2c3"}))
    assert any("has no checkpoint" in p and "the data folder was empty" in p for p in problems), problems


def test_the_cli_refuses_a_deleted_teacher_with_exit_code_2(store, teacher_run, capsys):
    store.delete(teacher_run["run_id"])
    argv = ["train", "--dataset", "shapes", "--backbone", "small_cnn", "--weights", "random",
            "--teacher", teacher_run["run_id"]]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "unknown run" in err and "Traceback" not in err


# --- end to end ---------------------------------------------------------------------------

def test_a_distilled_digits_run_records_its_teacher_and_both_parts(store, capsys):
    fast = dict(dataset="digits", backbone="small_cnn", weights="random", strategy="full", image_size=16,
                batch_size=64, lr=3e-3)
    teacher, _ = train(store, **fast, epochs=1)
    summary, seen = train(store, **fast, epochs=2, teacher=teacher["run_id"], distill_temperature=2.0,
                          distill_alpha=0.7)
    assert summary["stopped_reason"] == "completed", summary
    assert summary["teacher"]["run_id"] == teacher["run_id"]
    assert summary["teacher"]["val_accuracy"] == pytest.approx(teacher["best_val_accuracy"])  # same val split
    started = next(e for e in seen if isinstance(e, events.RunStarted))
    assert started.teacher == summary["teacher"]  # the live view draws its line from the start
    for e in store.epochs(summary["run_id"]):
        assert set(e["parts"]) == {"kd", "ce"}
        assert e["parts"]["kd"] + e["parts"]["ce"] == pytest.approx(e["train_loss"], rel=1e-4)
    ended = [e for e in seen if isinstance(e, events.EpochEnded)]
    assert len(ended) == 2 and all(set(e.parts) == {"kd", "ce"} for e in ended)
    # the Runs table names the teacher; the CLI's last line and the run's notes mention it
    rows = {r["run"]: r for r in explore.runs_table(store.list())}
    assert rows[summary["run_id"]]["teacher"] == teacher["run_id"] and rows[teacher["run_id"]]["teacher"] == ""
    cli._print_summary(summary)
    assert f"distilled from run {teacher['run_id']}" in capsys.readouterr().out
    assert any("Distilled from run" in n for n in explore.run_notes(summary))
    # the record's summary says the same in JSON
    assert json.loads(json.dumps(store.get(summary["run_id"]).summary))["teacher"] == summary["teacher"]


def test_the_curves_draw_the_parts_and_the_teachers_line():
    from ui import charts

    epochs = [{"epoch": i, "train_loss": 1.0 / i, "val_loss": 1.2 / i, "train_accuracy": 0.5, "val_accuracy": 0.6,
               "parts": {"kd": 0.6 / i, "ce": 0.4 / i}} for i in (1, 2)]
    loss = charts.curves(epochs, "loss").to_dict()["data"]
    assert [t["name"] for t in loss] == ["train", "val", charts.PART_LABELS["kd"], charts.PART_LABELS["ce"]]
    assert list(loss[2]["y"]) == [0.6, 0.3]
    accuracy = charts.curves(epochs, "accuracy", {"run_id": "x", "label": "", "val_accuracy": 0.9}).to_dict()["data"]
    line = accuracy[-1]
    assert line["name"] == "teacher val (0.900)" and list(line["y"]) == [0.9, 0.9]
    assert len(charts.curves(epochs, "accuracy").to_dict()["data"]) == 2  # no teacher, no line


# --- the pages ----------------------------------------------------------------------------

@pytest.mark.usefixtures("app_env")
def test_the_train_page_offers_kept_runs_as_teacher_and_runs_shows_it(store, teacher_run):
    from streamlit.testing.v1 import AppTest

    from ui import resources

    distilled, _ = train(store, teacher=teacher_run["run_id"])
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("app_pages/train.py").run()
    assert not at.exception, [e.value for e in at.exception]
    box = at.selectbox(key="cfg.teacher")
    assert box.options[0] == "none (no distillation)" and box.value == ""
    assert any(teacher_run["run_id"] in o for o in box.options), box.options
    # the session's data set is digits: Start takes the chosen teacher and refuses it in words
    box.set_value(teacher_run["run_id"])
    at.button(key="train.start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="cfg.teacher").value == teacher_run["run_id"]
    assert any("The run cannot start" in e.value and "trained on other classes" in e.value for e in at.error), \
        [e.value for e in at.error]
    assert resources.registry().running() == []
    at.switch_page("app_pages/runs.py").run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    assert dict(zip(table["run"], table["teacher"]))[distilled["run_id"]] == teacher_run["run_id"]
    at.selectbox(key="runs.selected").set_value(distilled["run_id"]).run()
    names = [t.get("name") for c in at.get("plotly_chart") for t in json.loads(c.proto.spec)["data"]]
    assert any(n.startswith("teacher val (") for n in names), names
    assert "train: KD part, a·T²·KL" in names and "train: CE part, (1−a)·CE" in names
