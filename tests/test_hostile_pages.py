"""Pages and rough edges a first-time user meets (issue 11), and a hostile pass over every page.

Runs are fabricated in the store (a record, and a checkpoint of an untrained small_cnn where
one is needed), so no test here trains.
"""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from test_app import APP, _isolated, app, goto, metrics, png  # noqa: F401 - _isolated is the autouse fixture

from ftlab import paths
from ftlab.config import TrainConfig
from ftlab.runs import RunStore, new_run_id


def fabricate_run(classes: list[str], *, config: TrainConfig | None = None, status: str = "finished",
                  final: bool = True, checkpoint: bool = False, summary: dict | None = None,
                  val_indices: list[int] | None = None, epochs: int = 1) -> str:
    """A kept run as training leaves it, without training: a record, its epochs, a final evaluation."""
    store = RunStore(paths.home())
    config = config or TrainConfig(dataset="digits", backbone="small_cnn", weights="random")
    run_id = new_run_id()
    store.create(run_id, config.to_dict())
    k = len(classes)
    idx = list(range(2 * k)) if val_indices is None else val_indices
    labels = [i % k for i in range(len(idx))]
    rng = np.random.default_rng(0)
    predictions = [lab if rng.random() < 0.6 else int(rng.integers(k)) for lab in labels]
    store.set_data(run_id, classes, {"train": [], "val": idx, "test": []})
    for e in range(epochs):
        store.add_epoch(run_id, e + 1, {"epoch": e + 1, "train_loss": 1.0, "val_loss": 1.0, "train_accuracy": 0.5,
                                        "val_accuracy": 0.5})
    ev = {}
    if final:
        cm = np.zeros((k, k), dtype=np.int64)
        np.add.at(cm, (labels, predictions), 1)
        support = cm.sum(1)
        recall = np.divide(np.diag(cm), support, out=np.zeros(k), where=support > 0)
        ev = {"val": {"accuracy": float(np.trace(cm) / cm.sum()), "loss": 1.0, "indices": idx,
                      "losses": rng.random(len(idx)).tolist(), "predictions": predictions, "confusion": cm.tolist(),
                      "precision": recall.tolist(), "recall": recall.tolist(), "f1": recall.tolist(),
                      "support": support.tolist()}}
    base = {"run_id": run_id, "best_val_accuracy": 0.5 if final else None, "epochs_run": epochs if final else 0,
            "trainable_params": 1000, "total_params": 2000, "train_seconds": 0.5}
    store.finish(run_id, status, {**base, **(summary or {})}, ev, "" if status == "finished" else "it went wrong")
    if checkpoint:
        from ftlab import backbones
        from ftlab import checkpoints
        from ftlab.transforms import Preprocessing

        model = backbones.create_model(config.backbone, k, "random")
        store.save_checkpoint(run_id, checkpoints.build(model, config, tuple(classes),
                                                        Preprocessing.for_backbone(config.backbone, 32), 1, 0.5))
    return run_id


def inspect(at: AppTest) -> AppTest:
    return goto(at, "app_pages/inspect_run.py")


def image_bytes(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


# --- item 1: odd image modes and file names on Inspect's predict ------------------------------------

@pytest.mark.parametrize("name, content", [
    ("deep.png", lambda: image_bytes(Image.fromarray(np.linspace(0, 65535, 40 * 40, dtype=np.uint16).reshape(40, 40)),
                                     "PNG")),
    ("float.tif", lambda: image_bytes(Image.fromarray(np.linspace(0, 1, 40 * 40, dtype=np.float32).reshape(40, 40)),
                                      "TIFF")),
    ("signed.tif", lambda: image_bytes(Image.fromarray(np.linspace(-5e5, 5e5, 1600).astype(np.int32).reshape(40, 40)),
                                       "TIFF")),
])
def test_a_16_bit_or_float_image_is_shown_and_classified(name, content):
    data = content()
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "F", "I")
    fabricate_run(["a", "b"], checkpoint=True)
    at = inspect(app())
    at.file_uploader(key="inspect.image").upload(name, data, "image/png").run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    assert metrics(at)["Prediction"] in ("a", "b")


@pytest.mark.parametrize("content, words", [
    (b"", "empty"),
    (b"these are words, not pixels", "not a kind of image PIL knows"),
    (png((1, 2, 3))[:60], "Not a readable image"),  # truncated: PIL opens it lazily, then fails to load
])
def test_an_upload_that_is_not_an_image_is_named_in_the_message(content, words):
    fabricate_run(["a", "b"], checkpoint=True)
    at = inspect(app())
    at.file_uploader(key="inspect.image").upload("holiday photo.png", content, "image/png").run()
    assert not at.exception
    message = at.error[0].value
    assert "holiday photo.png" in message and words in message and "BytesIO" not in message


def test_a_huge_image_is_refused_with_the_limit(monkeypatch):
    from ftlab.data import decoding

    monkeypatch.setattr(decoding, "MAX_PIXELS", 50 * 50)
    fabricate_run(["a", "b"], checkpoint=True)
    at = inspect(app())
    at.file_uploader(key="inspect.image").upload("big.png", png((9, 9, 9), size=60), "image/png").run()
    assert not at.exception and "big.png" in at.error[0].value and "FTLAB_MAX_PIXELS" in at.error[0].value


def test_predict_on_the_cli_names_the_file_and_reads_a_16_bit_png(tmp_path, capsys):
    from ftlab import cli

    run_id = fabricate_run(["a", "b"], checkpoint=True)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((30, 30), 40000, dtype=np.uint16)).save(deep)
    assert cli.main(["predict", "--run", run_id, str(deep), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] in ("a", "b")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"junk")
    assert cli.main(["predict", "--run", run_id, str(junk)]) == 1
    err = capsys.readouterr().err
    assert str(junk) in err and "BytesIO" not in err and "Traceback" not in err
    assert cli.main(["predict", "--run", run_id, "x" * 5000 + ".png"]) == 1
    assert "File name too long" in capsys.readouterr().err


# --- item 2: run names and labels -------------------------------------------------------------------

def test_a_run_label_names_data_backbone_strategy_and_key_options():
    from ftlab import explore

    label = explore.run_label(TrainConfig(dataset="/data/pets.zip", backbone="resnet18", strategy="top-2",
                                          epochs=3, lr=0.01, image_size=64, flip=True, weights="random"))
    assert label == "pets.zip · resnet18 · top-2 · 3 epochs, random weights, lr 0.01, 64 px, flip"
    assert explore.run_label(TrainConfig(name="  cats v2 ")) == "cats v2"
    # a record written by hand or by an older version: missing or odd fields do not raise
    assert explore.run_label({}) == "? · ? · ? · 5 epochs"


def test_a_name_is_an_option_of_the_cli_and_is_validated():
    from ftlab import cli
    from ftlab.config import validate

    args = cli._parser().parse_args(["train", "--name", "my run"])
    assert args.name == "my run"
    assert not [p for p in validate(TrainConfig(name="my run")) if "name" in p]
    assert any("name must be" in p for p in validate(TrainConfig(name="x" * 200)))
    assert any("name must be" in p for p in validate(TrainConfig(name="two\nlines")))


def test_runs_are_listed_by_name_or_label_on_every_page_and_the_cli(capsys):
    from ftlab import cli

    named = fabricate_run(["a", "b"], config=TrainConfig(name="baseline", backbone="small_cnn", weights="random"))
    plain = fabricate_run(["a", "b"], config=TrainConfig(backbone="small_cnn", weights="random", epochs=2))
    at = goto(app(), "app_pages/runs.py")
    table = at.dataframe[0].value
    labels = dict(zip(table["run"], table["label"]))
    assert labels[named] == "baseline"
    assert labels[plain] == "digits · small_cnn · linear-probe · 2 epochs, random weights"
    options = at.selectbox(key="runs.selected").options
    assert f"baseline — {named}" in options
    inspect(at)
    assert f"baseline — {named}" in at.selectbox(key="inspect.run").options
    assert cli.main(["runs"]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "digits · small_cnn · linear-probe · 2 epochs" in out


def test_the_train_page_has_a_name_field_that_reaches_the_config():
    at = goto(app(), "app_pages/train.py")
    field = at.text_input(key="cfg.name")
    assert field.placeholder.startswith("digits · efficientnet_lite0 · linear-probe · 5 epochs")
    field.input("first try")
    at.number_input(key="cfg.image_size").set_value(16)  # so that Start refuses: nothing trains
    at.button(key="train.start").click().run()
    assert not at.exception and "cannot start" in at.error[0].value
    from ui import session

    assert session.current_config(at.session_state).name == "first try"
    assert "first try" in at.sidebar.caption[0].value


# --- item 3: missing figures in the Runs table ------------------------------------------------------

def _displayed(at: AppTest) -> list[list[str]]:
    """The Runs table's cells as the browser shows them (the Styler's display values)."""
    import pyarrow as pa

    styler = at.dataframe[0].proto.arrow_data.styler
    table = pa.ipc.open_stream(styler.display_values).read_all().to_pandas()
    return table


def test_the_runs_table_shows_a_dash_for_a_missing_test_accuracy():
    fabricate_run(["a", "b"])  # no test split: no test accuracy
    fabricate_run(["a", "b"], status="failed", final=False)
    at = goto(app(), "app_pages/runs.py")
    shown = _displayed(at)
    test = list(shown["test accuracy"])
    assert test == ["–", "–"] and "None" not in shown.to_string()
    assert sorted(shown["best val accuracy"]) == ["0.500", "–"]


# --- item 4: the sidebar is current on the same script run ------------------------------------------

def test_the_sidebar_follows_a_data_choice_at_once():
    at = goto(app(), "app_pages/data.py")
    at.selectbox(key="data.builtin").select("shapes").run()
    assert "**Data** shapes" in at.sidebar.caption[0].value


def test_the_sidebar_is_drawn_when_a_page_stops_early():
    at = inspect(app())  # no runs: the page stops after its message
    assert "No run with a final evaluation" in at.info[0].value
    assert "**Data** digits" in at.sidebar.caption[0].value


# --- item 5: small_cnn has no ImageNet weights ------------------------------------------------------

def test_small_cnn_says_it_has_no_imagenet_weights(capsys):
    from ftlab import cli

    at = goto(app(), "app_pages/model.py")
    at.selectbox(key="cfg.backbone").select("small_cnn").run()
    assert metrics(at)["ImageNet weights"] == "none (trained from scratch)"
    assert cli.main(["backbones"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("small_cnn"))
    assert "none (trained from scratch)" in line and "download" not in line
    assert cli.main(["backbones", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["small_cnn"]["imagenet"] is False and rows["resnet18"]["imagenet"] is True


# --- item 6: a 2,000-class run ----------------------------------------------------------------------

def test_inspect_draws_a_2000_class_run_legibly_and_says_what_it_summarised(tmp_path):
    classes = [f"class {i:04d}" for i in range(2000)]
    fabricate_run(classes, config=TrainConfig(dataset=str(tmp_path / "gone"), backbone="small_cnn",
                                              weights="random"))
    at = inspect(app())  # within AppTest's 60 s (it took 47 s to draw the whole matrix on a quiet machine)
    assert not at.exception
    heatmap = next(t for c in at.get("plotly_chart") for t in json.loads(c.proto.spec)["data"]
                   if t["type"] == "heatmap")
    assert len(heatmap["z"]) == 30 and len(heatmap["x"]) == 30
    captions = [c.value for c in at.caption]
    assert any("The 30 classes with the most mistakes, of 2,000" in c for c in captions), captions
    assert any("The 200 classes with the lowest F1, of 2,000" in c for c in captions), captions
    assert len(at.dataframe[-1].value) == 200


def test_the_confusion_view_keeps_the_most_confused_classes_and_full_row_shares():
    from ftlab import explore

    cm = np.diag([10] * 40)
    cm[5, 7] = cm[7, 5] = 4
    cm[39, 0] = 6
    shown, labels, note = explore.confusion_view(cm.tolist(), [str(i) for i in range(40)], normalised=True, limit=4)
    assert labels == ["0", "5", "7", "39"]
    assert shown[3] == [pytest.approx(6 / 16), 0, 0, pytest.approx(10 / 16)]  # shares of the whole row
    assert note == ("The 4 classes with the most mistakes, of 40 (36 left out: 0 of the 14 mistakes are not in the "
                    "matrix).")


# --- item 7: the hardest images when the data are gone ---------------------------------------------

def _folder(root: Path) -> Path:
    for name, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (root / name).mkdir(parents=True)
        for i in range(4):
            (root / name / f"{i}.png").write_bytes(png(colour))
    return root


def test_the_hardest_images_say_why_they_are_gone_when_the_data_folder_is(tmp_path):
    import shutil

    from ftlab import data

    folder = _folder(tmp_path / "pics")
    ds = data.load_dataset(str(folder))
    fabricate_run(list(ds.classes), config=TrainConfig(dataset=str(folder), backbone="small_cnn", weights="random"),
                  val_indices=list(range(len(ds))))
    at = inspect(app())
    assert len(at.get("image")[0].proto.imgs) == len(ds)
    shutil.rmtree(folder)
    at.run()  # the data set is still in the app's cache: its files are not
    assert not at.exception
    assert not at.get("image")
    warning = at.warning[0].value
    assert "could not be read" in warning and str(folder) in warning and "put it back" in warning

    fresh = inspect(app())  # a new server process: the folder itself cannot be found
    assert not fresh.exception and str(folder) in fresh.warning[0].value


def test_the_hardest_images_are_not_drawn_from_a_data_set_that_changed(tmp_path):
    import shutil

    from ftlab import data

    folder = _folder(tmp_path / "pics")
    ds = data.load_dataset(str(folder))
    fabricate_run(list(ds.classes), config=TrainConfig(dataset=str(folder), backbone="small_cnn", weights="random"),
                  val_indices=list(range(len(ds))))
    shutil.rmtree(folder / "blue")
    (folder / "green").mkdir()
    for i in range(2):
        (folder / "green" / f"{i}.png").write_bytes(png((0, 255, 0)))
    at = inspect(app())
    assert not at.exception and not at.get("image")
    assert "is not the one the run was trained on" in at.warning[0].value


# --- hostile pass -------------------------------------------------------------------------------------

def test_pages_with_a_failed_run_a_zero_epoch_run_and_a_stopped_one():
    failed = fabricate_run(["a", "b"], status="failed", final=False, epochs=0)
    fabricate_run(["a", "b"], status="stopped", final=False, epochs=0)
    at = app()
    for page in ("app_pages/home.py", "app_pages/runs.py", "app_pages/inspect_run.py", "app_pages/train.py"):
        goto(at, page)
        assert not at.error, (page, [e.value for e in at.error])
    goto(at, "app_pages/runs.py")
    assert at.multiselect(key="runs.compare").value == []  # nothing to overlay by default
    at.multiselect(key="runs.compare").select(failed).run()
    assert not at.exception


@pytest.mark.parametrize("kind", ["failed", "unknown"])
def test_a_url_naming_a_run_that_is_not_training_says_where_it_stands(kind):
    run_id = fabricate_run(["a", "b"], status="failed", final=False, epochs=0) if kind == "failed" else "nope`**x**"
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["run"] = run_id
    at.run()
    goto(at, "app_pages/train.py")
    assert not at.error and at.session_state["train.job"] is None if "train.job" in at.session_state else True
    message = at.info[0].value
    if kind == "failed":
        assert run_id in message and "failed: it went wrong" in message and "Runs page" in message
    else:
        assert "not kept here" in message and "nope" not in message


@pytest.mark.parametrize("field, value", [("weights_file", "w" * 5000), ("weights_file", "~nobody-here/w.pt"),
                                          ("weights_file", "a\x00b.pt")], ids=["too-long", "no-such-user", "nul"])
def test_start_with_a_path_the_os_cannot_look_up_says_so(field, value):
    at = goto(app(), "app_pages/model.py")
    at.selectbox(key="cfg.backbone").select("small_cnn").run()
    at.radio(key="model.weights").set_value("file").run()
    at.text_input(key=f"model.{field}").input(value).run()
    goto(at, "app_pages/train.py")
    at.button(key="train.start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "cannot start" in at.error[0].value and "weights file" in at.error[0].value


def test_predict_on_the_cli_refuses_a_fifo_named_like_an_image_instead_of_hanging(tmp_path):
    import os
    import subprocess
    import sys

    run_id = fabricate_run(["a", "b"], checkpoint=True)
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    env = {**os.environ, "FTLAB_HOME": str(paths.home())}
    done = subprocess.run([sys.executable, "-m", "ftlab", "predict", "--run", run_id, str(fifo)], env=env,
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 1 and "not a regular file" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("folder", ["x" * 5000, "~nobody-here/pics", "a\x00b"], ids=["too-long", "no-such-user", "nul"])
def test_a_folder_path_the_os_cannot_look_up_is_an_error_on_the_data_page(folder):
    at = goto(app(), "app_pages/data.py")
    at.radio(key="data.source").set_value("Folder on this machine").run()
    at.text_input(key="data.folder").input(folder).run()
    at.button(key="data.use_folder").click().run()
    assert not at.exception, [e.value[:200] for e in at.exception]
    shown = at.error[0].value
    assert ("Unknown data set" in shown or "is not a usable path" in shown) and at.session_state["data.dataset"] == "digits"


def test_the_sidebar_follows_a_run_adopted_from_the_url(tmp_path):
    """A refreshed browser adopts the run its ?run= names; the sidebar says that run's settings at once."""
    from ui import resources

    notes = tmp_path / "notes.pt"
    notes.write_text("not weights")  # the job fails at once: what matters is that it is the registry's
    config = TrainConfig(dataset="shapes", backbone="small_cnn", weights=str(notes), epochs=1)
    job = resources.registry().start(config, resources.store())
    deadline = time.monotonic() + 120
    while job.alive and time.monotonic() < deadline:
        time.sleep(0.2)
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["run"] = job.run_id
    at.run()
    goto(at, "app_pages/train.py")
    assert at.session_state["train.job"] == job.run_id
    summary = at.sidebar.caption[0].value
    assert "**Data** shapes" in summary and "small_cnn" in summary, summary


def test_a_run_named_on_the_cli_is_listed_by_its_name(capsys):
    from ftlab import cli

    assert cli.main(["train", "--name", "tiny baseline", "--dataset", "digits", "--backbone", "small_cnn",
                     "--weights", "random", "--epochs", "1", "--image-size", "16", "--json"]) == 0
    run_id = json.loads(capsys.readouterr().out.splitlines()[-1])["run_id"]
    assert cli.main(["runs"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(run_id))
    assert line.endswith("tiny baseline")
    assert cli.main(["runs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["label"] == "tiny baseline"


def test_the_runs_table_shows_a_dash_for_a_figure_that_is_not_a_number():
    """A summary written by hand or an older version: text, NaN or true where a figure belongs."""
    fabricate_run(["a", "b"], summary={"test_accuracy": "n/a", "best_val_accuracy": float("nan"),
                                       "train_seconds": True, "trainable_params": [1]})
    at = goto(app(), "app_pages/runs.py")
    assert not at.exception, [e.value for e in at.exception]
    shown = _displayed(at)
    for column in ("test accuracy", "best val accuracy", "train seconds", "trainable params"):
        assert list(shown[column]) == ["–"], column


def test_a_run_name_is_shown_as_typed_never_as_markdown():
    """Every session of a server sees the others' runs: a name must not become a link or emphasis."""
    at = goto(app(), "app_pages/train.py")
    at.text_input(key="cfg.name").input("[log in again](http://evil.example) **now**")
    at.number_input(key="cfg.image_size").set_value(16)  # Start refuses: the name is still the session's
    at.button(key="train.start").click().run()
    summary = at.sidebar.caption[0].value
    assert r"\[log in again\](http\://evil.example) \*\*now\*\*" in summary
    assert "[log in again](" not in summary


def test_a_run_name_typed_with_a_newline_stays_on_one_line_in_the_sidebar():
    """The field refuses a newline at Start, but the sidebar shows the session's name before that:
    "x\\n# Heading" must not start a heading (or a list) there."""
    at = goto(app(), "app_pages/train.py")
    at.text_input(key="cfg.name").input("x\n# Heading\n- item")
    at.button(key="train.start").click().run()
    assert not at.exception and "printable characters on one line" in at.error[0].value
    summary = at.sidebar.caption[0].value
    assert "\n" not in summary and r"x\\n# Heading\\n- item" in summary


def test_a_very_wide_upload_is_shown_and_classified():
    """A 20000 × 1 image: Streamlit shrinking a preview wider than its display width made it 0 px high
    ("height and width must be > 0")."""
    fabricate_run(["a", "b"], checkpoint=True)
    at = inspect(app())
    buf = io.BytesIO()
    Image.new("RGB", (20000, 1), (200, 10, 10)).save(buf, "PNG")
    at.file_uploader(key="inspect.image").upload("panorama.png", buf.getvalue(), "image/png").run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    assert metrics(at)["Prediction"] in ("a", "b")
