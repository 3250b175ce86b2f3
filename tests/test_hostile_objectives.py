"""Hostile input to the objectives of issue 14 (distillation, several tasks, L2-SP), as a teacher
running a demo and a student trying to break it would give it: every option's nonsense, teachers
that cannot teach (a garbage id, a run of several tasks, one deleted between the checks and the
run, a checkpoint cut short or replaced, the run itself), labels.csv files of every bad kind, and a
loss that becomes nan. Each must end in a sentence that says what to do (exit 2 in the CLI for bad
input, before any run record), never a traceback or a half-written record.

Also the objectives' arithmetic where a hostile value would show it: the KD part's T² at T ≠ 1 and
batchmean over a batch (against scipy), the learned task weights bounded, and the L2-SP gradient
on the trained backbone blocks only (not the head, not an adapter) in a real run.

Runs are tiny: shapes of 3 classes x 16 images at 16 px on small_cnn, random weights."""
from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import entropy

from ftlab import cli, engine, events, freeze
from ftlab import teacher as teachers
from ftlab.config import TrainConfig, validate
from ftlab.data import labels_csv, load_dataset
from ftlab.data.dataset import DataError
from ftlab.edit_options import ADAPTER_PREFIX
from ftlab.objectives import LOG_VAR_LIMIT, Batch, CrossEntropy, Distillation, MultiTask, divergence_advice
from ftlab.runs import RunStore
from ftlab.tasks import MAX_WEIGHT
from task_fixtures import two_task_files, two_task_folder

ROOT = Path(__file__).resolve().parents[1]
SHAPES = dict(dataset="shapes", shapes_classes=3, shapes_per_class=16, backbone="small_cnn", weights="random",
              strategy="full", image_size=16, batch_size=16, epochs=1, lr=3e-3)
CLI = ["train", "--dataset", "shapes", "--shapes-classes", "3", "--shapes-per-class", "16", "--backbone",
       "small_cnn", "--weights", "random", "--image-size", "16", "--epochs", "1", "--strategy", "full"]


@pytest.fixture
def store() -> RunStore:
    return RunStore()  # under this test's FTLAB_HOME (conftest)


def no_runs(store: RunStore) -> bool:
    return not (store.home / "runs.db").exists() or store.list() == []


def train(store: RunStore, run_id: str | None = None, **options) -> tuple[dict, list]:
    seen: list = []
    summary = engine.run(TrainConfig(**{**SHAPES, **options}), store=store, emit=seen.append, run_id=run_id)
    return summary, seen


def failure(seen: list) -> str:
    ends = [e for e in seen if isinstance(e, events.RunFailed)]
    assert ends, [type(e).__name__ for e in seen]
    return ends[-1].message


def refused(capsys, *args: str) -> str:
    """The CLI's refusal of ``args``: exit 2 and the message, never a traceback."""
    assert cli.main([*CLI, *args]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "the run cannot start" in err and "Traceback" not in err, err
    return err


# --- 1. the numbers of the objectives ---------------------------------------------------------

@pytest.mark.parametrize("option, value, words", [
    ("distill_temperature", 0.0, "distill_temperature must be between 0.05 and 100 (got 0)"),
    ("distill_temperature", -1.0, "(got -1)"),
    ("distill_temperature", math.nan, "(got nan)"),
    ("distill_temperature", math.inf, "(got inf)"),
    ("distill_temperature", 1e30, "(got 1e+30)"),
    ("distill_alpha", -0.1, "distill_alpha must be between 0 and 1 (got -0.1)"),
    ("distill_alpha", 1.1, "(got 1.1)"),
    ("distill_alpha", math.nan, "distill_alpha must be between 0 and 1 (got nan)"),
    ("l2sp", -1.0, "l2sp must be between 0 and 10 (got -1)"),
    ("l2sp", math.nan, "l2sp must be between 0 and 10 (got nan)"),
    ("l2sp", math.inf, "(got inf)"),
    ("l2sp", 1e30, "(got 1e+30)"),
])
def test_each_objectives_number_out_of_range_is_one_sentence(option, value, words):
    problems = validate(TrainConfig(**{**SHAPES, "strategy": "linear-probe", option: value}))
    assert any(words in p for p in problems), problems
    # a beta that is refused is not also told that a linear probe trains no backbone block
    assert not any("trains none of them" in p for p in problems), problems


def test_the_cli_refuses_a_nan_temperature_and_adaptive_l2sp_without_a_beta(capsys, store):
    assert "distill_temperature must be between" in refused(capsys, "--distill-temperature", "nan")
    assert "give --l2sp BETA above 0" in refused(capsys, "--l2sp-adaptive")
    assert no_runs(store)


def test_the_kd_part_is_t_squared_times_the_batchmean_kl_at_t_3_against_scipy():
    """Two images, three classes, T = 3: KL summed over classes, averaged over the images (batchmean,
    not a mean over every element), times T² and alpha; the CE part (1 - alpha) times the mean CE."""
    s = np.array([[2.0, -1.0, 0.5], [0.0, 1.5, -0.5]])
    t = np.array([[3.0, 0.0, -2.0], [-1.0, 0.5, 2.5]])
    y, T, a = np.array([0, 2]), 3.0, 0.7
    kl = np.mean([entropy(softmax(t[i] / T), softmax(s[i] / T)) for i in range(2)])  # scipy: sum p log(p/q)
    ce = np.mean([-np.log(softmax(s[i])[y[i]]) for i in range(2)])
    batch = Batch(torch.zeros(2, 1), torch.tensor(y), torch.tensor([0, 1]))
    step = Distillation(torch.tensor(t, dtype=torch.float32), T, a)(torch.tensor(s, dtype=torch.float32), batch)
    assert step.counts["loss:kd"] / 2 == pytest.approx(a * T * T * kl, rel=1e-5)
    assert step.counts["loss:ce"] / 2 == pytest.approx((1 - a) * ce, rel=1e-5)
    assert step.loss.item() == pytest.approx(a * T * T * kl + (1 - a) * ce, rel=1e-5)
    # without T² the KD part would be 9 times smaller: the factor is there
    assert step.counts["loss:kd"] / 2 / (a * kl) == pytest.approx(9.0, rel=1e-5)


def test_learned_task_weights_stay_finite_when_a_task_is_learnt_to_zero_loss():
    """Uncertainty weighting's optimum weight is 1/(2 CE): a task the model gets right with certainty
    (CE about 1e-13) would drive its weight past float range. Adam at a large rate for 2,000 steps:
    the weights stop at the bound, the loss stays finite."""
    mt = MultiTask(("easy", "hard"), (2, 2), [CrossEntropy(), CrossEntropy()], weighting="uncertainty")
    optimizer = torch.optim.Adam(mt.parameters(), lr=0.5)
    logits = torch.tensor([[30.0, -0.0, 0.3, -0.3]] * 4)  # easy: certain and right; hard: a coin toss
    batch = Batch(torch.zeros(4, 1), torch.tensor([[0, 0], [0, 1], [0, 0], [0, 1]]), torch.arange(4))
    for _ in range(2000):
        step = mt(logits, batch)
        assert torch.isfinite(step.loss)
        optimizer.zero_grad()
        step.loss.backward()
        optimizer.step()
    weights = mt.weights()
    assert all(math.isfinite(w) for w in weights.values()), weights
    assert weights["easy"] == pytest.approx(MAX_WEIGHT, rel=1e-4)  # at the bound, not past it
    assert 0.5 < weights["hard"] < 2.0  # 1/(2 CE) with CE = log 2 + a little: about 0.7
    mt(logits, batch)  # each use projects the log-variances back within the bounds the last step may have left
    assert mt.log_vars.abs().max().item() <= LOG_VAR_LIMIT + 1e-6


def test_l2sp_pulls_only_the_trained_backbone_blocks_in_a_real_run(store, monkeypatch):
    """The L2SP the engine builds: its pairs are the backbone blocks' parameters (the head and an adapter
    are not pulled: they get plain weight decay), and the penalty's gradient is beta (theta - theta0)."""
    trainers = []
    real = engine._Trainer._with_l2sp
    monkeypatch.setattr(engine._Trainer, "_with_l2sp", lambda self, base: trainers.append(self) or real(self, base))
    summary, _ = train(store, strategy="top-2", l2sp=0.5, adapter_after=("stage2",), epochs=2, lr=1e-2)
    assert summary["stopped_reason"] == "completed", summary
    (trainer,) = trainers
    model, l2sp = trainer.model, trainer.l2sp
    pulled = {id(p) for p, _ in l2sp.pairs}
    new = [name for name, _ in model.named_children() if name == "head" or name.startswith(ADAPTER_PREFIX)]
    assert "head" in new and any(n.startswith(ADAPTER_PREFIX) for n in new), new
    for name, module in model.named_children():
        ids = {id(p) for p in module.parameters()}
        assert not ids & pulled if name in new else ids <= pulled, name
    blocks = dict(model.named_children())
    assert pulled == {id(p) for n in freeze.backbone_blocks(trainer.plan.blocks) for p in blocks[n].parameters()}
    # the penalty's gradient on the blocks that train (top-2) is beta x their distance from theta0
    model.zero_grad()
    l2sp.penalty().backward()
    trained = [(p, p0) for p, p0 in l2sp.pairs if p.requires_grad]
    assert trained and all(p.grad is None for p, _ in l2sp.pairs if not p.requires_grad)
    assert any((p.detach() - p0).abs().sum() > 0 for p, p0 in trained)  # training moved them
    for p, p0 in trained:
        torch.testing.assert_close(p.grad, 0.5 * (p.detach() - p0))
    assert all(p.grad is None for name in new for p in blocks[name].parameters())


def test_a_loss_that_becomes_nan_under_l2sp_stops_the_run_saying_what_to_lower(store, capsys):
    """beta 10 at rate 1 (SGD): each step overshoots theta0 by more than it corrects, until inf/nan.
    The run stops (not fails silently, not goes on) with a sentence that names the learning rate, the
    L2-SP beta and gradient clipping; the CLI exits 1."""
    code = cli.main(["train", "--dataset", "digits", "--backbone", "small_cnn", "--weights", "random",
                     "--image-size", "16", "--epochs", "2", "--batch-size", "64", "--strategy", "full",
                     "--l2sp", "10", "--lr", "1", "--optimizer", "sgd"])
    out = capsys.readouterr()
    assert code == 1
    assert "Stopped in epoch 1: the loss became" in out.out + out.err
    assert "Lower the learning rate (now 1), lower --l2sp (beta now 10" in out.out + out.err
    assert "--grad-clip 1" in out.out + out.err and "Traceback" not in out.out + out.err
    (record,) = store.list()
    assert record.status == "stopped" and "lower --l2sp" in record.message
    assert not store.checkpoint_path(record.id).exists()  # no epoch ended: nothing half-written


def test_the_advice_after_a_nan_follows_the_objective():
    plain = divergence_advice(TrainConfig(), 0.001)
    assert plain == "Lower the learning rate (now 0.001) or turn on gradient clipping (e.g. --grad-clip 1)."
    weighted = divergence_advice(TrainConfig(tasks="shape,colour", task_weights="1,900", grad_clip=1.0), 0.01)
    assert weighted == "Lower the learning rate (now 0.01) or lower the largest of --task-weights (1,900)."


# --- 2. the task options -----------------------------------------------------------------------

@pytest.mark.parametrize("options, words", [
    (dict(tasks="nosuch"), "shapes has no task nosuch: its tasks are shape, colour"),
    (dict(tasks="colour"), "tasks must include the data set's first task, 'shape'"),
    (dict(tasks="shape,shape"), "names a task twice"),
    (dict(tasks="shape,SHAPE"), "names a task twice"),
    (dict(tasks="all,shape"), "tasks takes all alone or a list of task names, not both"),
    (dict(tasks="shape,colour", task_weights="1"), "1 weights for 2 tasks"),
    (dict(tasks="shape,colour", task_weights="1,-1"), "(got '-1')"),
    (dict(tasks="shape,colour", task_weights="0,0"), "(got '0')"),
    (dict(tasks="shape,colour", task_weights="nan,1"), "(got 'nan')"),
    (dict(tasks="shape,colour", task_weights="1,inf"), "(got 'inf')"),
    (dict(tasks="shape,colour", task_weights="heavy,light"), "(got 'heavy')"),
    (dict(tasks="shape,colour", task_weights="1e308,1"), f"at most {MAX_WEIGHT:g}"),
    (dict(task_weighting="magic"), "task_weighting must be one of fixed, uncertainty"),
    (dict(task_weighting="uncertainty"), "name them with --tasks"),
])
def test_task_options_are_refused_in_sentences_before_the_run(options, words):
    problems = validate(TrainConfig(**{**SHAPES, **options}))
    assert any(words in p for p in problems), problems


def test_an_unknown_task_is_exit_2_before_any_record_and_a_bad_weighting_is_argparses(capsys, store):
    err = refused(capsys, "--tasks", "shape,texture")
    assert "shapes has no task texture" in err and "Choose --tasks from them, or all" in err
    assert no_runs(store)
    with pytest.raises(SystemExit) as exit_:
        cli.main([*CLI, "--task-weighting", "magic"])
    assert exit_.value.code == 2 and "invalid choice: 'magic'" in capsys.readouterr().err


def test_task_names_in_another_case_and_empty_items_are_taken_as_meant(store):
    """--tasks ' Shape,,COLOUR ' is shape and colour (task names are compared ignoring case, as labels.csv's
    header is); the run records the data's spelling."""
    assert validate(TrainConfig(**{**SHAPES, "tasks": " Shape,,COLOUR ", "task_weights": "1,,0.5"})) == []
    summary, _ = train(store, tasks=" Shape,,COLOUR ", task_weights="1,,0.5")
    assert summary["stopped_reason"] == "completed", summary
    assert list(summary["tasks"]) == ["shape", "colour"]
    weights = {n: f["weight"] for n, f in store.epochs(summary["run_id"])[0]["tasks"].items()}
    assert weights == {"shape": 1.0, "colour": 0.5}


# --- 3. teachers that cannot teach -------------------------------------------------------------

@pytest.fixture
def teacher_run(store) -> dict:
    summary, _ = train(store)
    assert summary["stopped_reason"] == "completed", summary
    return summary


def test_a_garbage_teacher_id_is_not_said_to_be_deleted(capsys, store):
    err = refused(capsys, "--teacher", "../../etc/passwd")
    assert "'../../etc/passwd' is not a run id" in err and "deleted" not in err
    assert no_runs(store)


def test_a_run_cannot_be_its_own_teacher(store):
    run_id = "20261202-120000-abcdef"
    summary, seen = train(store, run_id=run_id, teacher=run_id)
    assert summary["stopped_reason"] == "error"
    assert "is named as its own teacher" in failure(seen)
    assert no_runs(store)  # refused before its record


@pytest.mark.parametrize("spoil", ["cut short", "empty", "junk"])
def test_a_damaged_teacher_checkpoint_is_refused_before_any_record(store, teacher_run, capsys, spoil):
    path = store.checkpoint_path(teacher_run["run_id"])
    good = path.read_bytes()
    path.write_bytes({"cut short": good[: len(good) // 2], "empty": b"", "junk": os.urandom(4096)}[spoil])
    kept = len(store.list())
    err = refused(capsys, "--teacher", teacher_run["run_id"])
    assert f"teacher run {teacher_run['run_id']}'s checkpoint" in err and "is damaged" in err
    assert "Choose another teacher" in err
    assert len(store.list()) == kept  # no record for the refused run


def test_a_checkpoint_replaced_by_another_zip_fails_the_run_in_one_sentence(store, teacher_run):
    path = store.checkpoint_path(teacher_run["run_id"])
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("notes.txt", "not a model")
    summary, seen = train(store, teacher=teacher_run["run_id"])
    message = failure(seen)
    assert summary["stopped_reason"] == "error"
    assert message.startswith(f"teacher run {teacher_run['run_id']}'s checkpoint")
    assert "Choose another teacher" in message
    assert message.count("cannot be used") == 1 and "Traceback" not in message, message
    record = store.get(summary["run_id"])
    assert record.status == "failed" and record.message == message
    assert not store.checkpoint_path(summary["run_id"]).exists()


def test_a_teacher_deleted_between_validation_and_training_fails_the_run_in_a_sentence(store, teacher_run,
                                                                                      monkeypatch):
    real = teachers.load

    def deleted_first(run_id, st, classes):
        st.delete(run_id)  # another session deletes it on the Runs page while this run decodes
        return real(run_id, st, classes)
    monkeypatch.setattr(teachers, "load", deleted_first)
    summary, seen = train(store, teacher=teacher_run["run_id"])
    message = failure(seen)
    assert f"unknown run {teacher_run['run_id']}" in message and "may have been deleted" in message, message
    record = store.get(summary["run_id"])
    assert record.status == "failed" and record.message == message  # a whole record of a failed run
    assert not store.checkpoint_path(summary["run_id"]).exists()


def test_a_teacher_of_several_tasks_teaches_its_first_task(store):
    """A two-task teacher (shape, colour) outputs 3 + 4 columns; the student (shape only) learns from the
    shape columns, in the student's class order."""
    two, _ = train(store, tasks="shape,colour")
    assert two["stopped_reason"] == "completed", two
    from ftlab import data

    config = TrainConfig(**SHAPES)
    ds = data.load_for(config)
    images = data.decode(ds, data.split_for(config, ds).val, 16).images
    classes = list(reversed(ds.classes))
    teacher = teachers.load(two["run_id"], store, classes)
    full = teacher.model(teachers_prep(teacher)(images))
    assert full.shape[1] == 3 + 4
    torch.testing.assert_close(teacher.logits(images, torch.device("cpu")), full[:, :3].flip(1), atol=1e-5, rtol=1e-5)
    summary, seen = train(store, teacher=two["run_id"])
    assert summary["stopped_reason"] == "completed", failure(seen) if summary["stopped_reason"] == "error" else ""
    assert summary["teacher"]["val_accuracy"] == pytest.approx(two["tasks"]["shape"])


def teachers_prep(teacher: teachers.Teacher):
    from ftlab.transforms import Preprocess

    prep = Preprocess(teacher.preprocessing, torch.device("cpu"))
    return lambda x: prep(x, train=False)


# --- 4. labels.csv -----------------------------------------------------------------------------

GOOD = two_task_files()[0]["labels.csv"].decode()  # file,colour with the 8 images' rows


def folder_with(tmp_path: Path, text: str | bytes) -> Path:
    root, _ = two_task_folder(tmp_path / "pics")
    (root / "labels.csv").write_bytes(text if isinstance(text, bytes) else text.encode())
    return root


def refusal(root: Path) -> str:
    with pytest.raises(DataError) as err:
        load_dataset(str(root))
    message = str(err.value)
    assert "Traceback" not in message
    return message


@pytest.mark.parametrize("text", [
    "\ufeff" + GOOD.replace("\n", "\r\n"),  # a spreadsheet's: a byte-order mark and CRLF
    GOOD.replace("ants/", "ants\\"),  # Windows separators
    GOOD.replace("ants/", "./ants/"),
])
def test_a_spreadsheets_or_windows_labels_csv_reads_as_meant(tmp_path, text):
    ds = load_dataset(str(folder_with(tmp_path, text)))
    assert [(t.name, t.classes) for t in ds.tasks] == [("colour", ("blue", "red"))]


def test_quoted_cells_with_commas_quotes_and_newlines_are_labels(tmp_path):
    quoted = {0: '"deep, dark ""blue"""', 1: '"red\nish"'}  # as CSV writes them: quotes doubled, a newline inside
    rows = ["file,colour"] + [f"{c}/{i}.png,{quoted[i % 2]}" for c in ("ants", "bees") for i in range(4)]
    ds = load_dataset(str(folder_with(tmp_path, "\n".join(rows))))
    # the newline is shown escaped (a class name is one line everywhere)
    assert ds.tasks[0].classes == ('deep, dark "blue"', "red\\nish")


@pytest.mark.parametrize("header, words", [
    ("file,colour,colour", "'colour', 'colour' name one task twice"),
    ("file,colour,Colour", "'colour', 'Colour' name one task twice"),
    ("file,colour,", "column(s) 3 have no name"),
    ("file,class", "'class' is the name of the first task, the class folders"),
    ("file,CLASS", "'CLASS' is the name of the first task"),
    ("file," + "x" * 100_000, "column(s) 2 (100,000 characters) is longer than a task's name may be (80"),
])
def test_a_bad_header_gets_a_sentence(tmp_path, header, words):
    cells = header.count(",")
    rows = [header] + [line + ",x" * (cells - 1) for line in GOOD.splitlines()[1:]]
    message = refusal(folder_with(tmp_path, "\n".join(rows)))
    assert words in message and "A labels.csv has a header" in message, message
    assert len(message) < 2000  # a 100,000-character name is not repeated back


def test_a_task_of_one_class_or_of_a_value_per_image_is_refused(tmp_path):
    one = refusal(folder_with(tmp_path / "a", GOOD.replace("red", "blue")))
    assert "the task 'colour' has only the value 'blue' for every image" in one
    # a value per image, as in an id column: 10,000 images, 10,000 values (read_tasks needs no image files)
    path = tmp_path / "labels.csv"
    files = [str(tmp_path / "photos" / f"{i}.jpg") for i in range(10_000)]
    path.write_text("file,photo_id\n" + "".join(f"photos/{i}.jpg,id{i:05d}\n" for i in range(10_000)))
    with pytest.raises(DataError) as err:
        labels_csv.read_tasks(path, files, "class")
    message = str(err.value)
    assert "10,000 of its 10,000 classes label one image only ('id00000'" in message
    assert "is it a column of ids or notes" in message and len(message) < 1000


def test_a_label_longer_than_a_class_name_may_be_is_named_by_row(tmp_path):
    message = refusal(folder_with(tmp_path, GOOD.replace("ants/2.png,blue", "ants/2.png," + "b" * 5000)))
    assert "1 row(s) have a label longer than 255 characters: row 4 (colour: 5,000 characters)" in message


@pytest.mark.parametrize("path, shown", [
    ("../ants/0.png", "'../ants/0.png'"),
    ("ants/../ants/0.png", "'ants/../ants/0.png'"),
    ("/etc/passwd", "'/etc/passwd'"),
])
def test_paths_outside_the_folder_or_absolute_are_not_images_of_the_set(tmp_path, path, shown):
    message = refusal(folder_with(tmp_path, GOOD.replace("ants/0.png", path)))
    assert f"1 row(s) name a file that is not an image of the data set: row 2 ({shown})" in message
    assert "'ants/0.png'; add a row for each" in message  # and the image it meant has no row


def test_a_nul_byte_names_its_row(tmp_path):
    message = refusal(folder_with(tmp_path, GOOD.replace("ants/2.png,blue", "ants/2.png,bl\x00ue")))
    assert message.endswith("labels.csv holds a NUL byte (in row 4): it is not a text file, or it was damaged. "
                            "Save it again as 'CSV UTF-8'."), message


def test_a_labels_csv_that_is_not_utf8_names_its_byte_and_row(tmp_path):
    message = refusal(folder_with(tmp_path, GOOD.replace("ants/2.png,blue", "ants/2.png,bleu\xe9").encode("latin-1")))
    assert "is not UTF-8 text (byte 0xe9 in row 4)" in message and "CSV UTF-8" in message


def test_a_50_mb_labels_csv_is_refused_without_being_read(tmp_path, monkeypatch):
    root, _ = two_task_folder(tmp_path / "pics")
    with open(root / "labels.csv", "r+b") as f:
        f.truncate(50 * 2**20)  # sparse: 50 MB on paper, nothing on the disk
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"{self} was read"))
    message = refusal(root)
    assert "labels.csv is 50.0 MB, more than a labels file of 8 images needs (at most 16 MB are read)" in message


def test_a_labels_csv_below_the_class_folders_is_not_silently_ignored(tmp_path):
    root, _ = two_task_folder(tmp_path / "pics")
    (root / "labels.csv").rename(root / "ants" / "labels.csv")
    message = refusal(root)
    assert message.startswith("'ants/labels.csv' is in a folder below the class (or split) folders, where a labels "
                              "file is not read. Move it up beside them (to the top folder)"), message


def test_a_zips_labels_csv_in_a_subfolder_is_named_as_the_zip_has_it(tmp_path):
    files, _ = two_task_files()
    path = tmp_path / "pics.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in files.items():
            zf.writestr(("pics/meta/" if name == "labels.csv" else "pics/") + name, content)
    with pytest.raises(DataError) as err:
        load_dataset(str(path), data_dir=tmp_path / "data")
    message = str(err.value)
    assert message.startswith("'pics/meta/labels.csv' is in a folder below the class (or split) folders")
    assert "(into 'pics/')" in message and str(tmp_path / "data") not in message  # not the unpacked copy's path


def test_a_bad_labels_csv_with_tasks_is_exit_2_before_a_record_and_without_a_failed_run(tmp_path, capsys, store):
    root = folder_with(tmp_path, GOOD + "ants/99.png,red\n")
    args = ["train", "--dataset", str(root), "--backbone", "small_cnn", "--weights", "random", "--image-size", "16",
            "--epochs", "1"]
    assert cli.main([*args, "--tasks", "all"]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "row 10 ('ants/99.png')" in err and "Traceback" not in err
    assert no_runs(store)
    # without --tasks the folder is read by the run: a failed run with the same sentence (exit 1)
    assert cli.main(args) == 1
    (record,) = store.list()
    assert record.status == "failed" and "row 10 ('ants/99.png')" in record.message


@pytest.mark.usefixtures("app_env")
def test_the_train_page_offers_only_the_data_sets_tasks_and_drops_a_stale_choice():
    """The page chooses tasks from a list of the data set's own, so an unknown task cannot be typed;
    a choice left from another data set (parity is not digits') is dropped before it is drawn, and
    the command line's --tasks is where an unknown name is refused (tests above)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("app_pages/train.py").run()
    at.session_state["cfg.tasks"] = ["class", "parity"]  # the session's data set is digits: one task, class
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (choice,) = [m for m in at.multiselect if m.key == "cfg.tasks"]
    assert list(choice.options) == ["class"]
    assert "parity" not in choice.value


def test_a_teacher_whose_process_died_mid_run_can_teach_from_its_kept_checkpoint(store, teacher_run):
    """A run left 'running' by a process that ended (killed: its record was never finished) is not still
    training: the check finds it interrupted, and its best checkpoint teaches."""
    import sqlite3

    with sqlite3.connect(store.db) as con:  # as a kill -9 leaves it: the record of this (now idle) process
        con.execute("UPDATE runs SET status = 'running' WHERE id = ?", (teacher_run["run_id"],))
    assert validate(TrainConfig(**{**SHAPES, "teacher": teacher_run["run_id"]})) == []
    assert store.get(teacher_run["run_id"]).status == "interrupted"
    summary, _ = train(store, teacher=teacher_run["run_id"])
    assert summary["stopped_reason"] == "completed" and summary["teacher"]["run_id"] == teacher_run["run_id"]


def test_a_teacher_whose_logits_overflow_fails_the_run_blaming_the_teacher_not_the_rate(store, teacher_run):
    """Finite weights of 1e38 in the head (the checkpoint check refuses only inf and nan) give inf logits."""
    path = store.checkpoint_path(teacher_run["run_id"])
    checkpoint = torch.load(path, weights_only=True)
    head = next(k for k in checkpoint["model"] if k.startswith("head") and k.endswith("weight"))
    checkpoint["model"][head] = torch.full_like(checkpoint["model"][head], 1e38)
    torch.save(checkpoint, path)
    summary, seen = train(store, teacher=teacher_run["run_id"])
    message = failure(seen)
    assert summary["stopped_reason"] == "error"
    assert f"teacher run {teacher_run['run_id']} gives logits that are not finite numbers" in message, message
    assert "for 38 of 38 images" in message and "learning rate" not in message


def test_a_teacher_on_other_classes_is_exit_2_naming_the_classes(capsys, store, teacher_run):
    kept = len(store.list())
    args = [a if a != "3" else "4" for a in CLI] + ["--teacher", teacher_run["run_id"]]  # 4 shape classes
    assert cli.main(args) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"teacher run {teacher_run['run_id']} was trained on other classes" in err and "(it lacks cross)" in err
    assert len(store.list()) == kept
