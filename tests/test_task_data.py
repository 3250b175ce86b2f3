"""Data sets with several tasks: shapes' colour, a folder's or zip's labels.csv and its errors, the
figures of each task in `stats` and on the Data page."""
import dataclasses
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from ftlab import cli, explore
from ftlab.config import TrainConfig
from ftlab.data import DataError, ShapesOptions, decode, identity, load_dataset, make_split
from ftlab.data import labels_csv
from ftlab.data.shapes import COLOURS, MIN_CONTRAST
from task_fixtures import CLASSES, pixel, png, two_task_folder, two_task_zip

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- shapes


def _nearest_colour(rgb: np.ndarray) -> int:
    return int(np.argmin([np.linalg.norm(rgb - np.array(c)) for _, c in COLOURS]))


def test_shapes_carry_the_shape_and_the_colour_it_is_drawn_in():
    opts = ShapesOptions(num_classes=3, per_class=(6, 8, 10), size=32, seed=5)
    ds = load_dataset("shapes", shapes=opts)
    assert ds.task == "shape" and ds.task_names() == ("shape", "colour")
    colour = ds.tasks[0]
    assert colour.classes == ("red", "green", "blue", "yellow") and colour.labels.dtype == np.int64
    for k in range(3):  # every colour about equally often within each shape: colour says nothing of the shape
        per_shape = np.bincount(colour.labels[ds.labels == k], minlength=4)
        assert per_shape.max() - per_shape.min() <= 1, per_shape
    # the label is the colour drawn: the mean of the shape's pixels (where the noise-free image is not the
    # background, the most common colour) is nearest the label's colour, with the noise on too
    clean = load_dataset("shapes", shapes=dataclasses.replace(opts, noise=0.0))
    for i in range(len(ds)):
        flat = clean._pixels[i].reshape(-1, 3).astype(int)
        values, counts = np.unique(flat, axis=0, return_counts=True)
        background = values[np.argmax(counts)]
        shape = np.linalg.norm(flat - background, axis=1) > MIN_CONTRAST / 2
        assert shape.sum() > 20, i
        assert _nearest_colour(flat[shape].mean(0)) == colour.labels[i], i
        noisy = ds._pixels[i].reshape(-1, 3).astype(float)
        assert _nearest_colour(noisy[shape].mean(0)) == colour.labels[i], i
        # the shape stays visible: its background is far from its colour
        assert np.linalg.norm(background - np.array(COLOURS[colour.labels[i]][1])) >= MIN_CONTRAST - 2, i


def test_shapes_colours_are_deterministic_and_every_colour_is_there_in_the_smallest_set():
    smallest = load_dataset("shapes", shapes=ShapesOptions(num_classes=2, per_class=2, size=16, seed=9))
    assert sorted(smallest.tasks[0].labels.tolist()) == [0, 1, 2, 3]
    a = load_dataset("shapes", shapes=ShapesOptions(3, (5, 7, 9), 32, seed=3))
    b = load_dataset("shapes", shapes=ShapesOptions(3, (5, 7, 9), 32, seed=3))
    np.testing.assert_array_equal(a.tasks[0].labels, b.tasks[0].labels)
    other_seed = load_dataset("shapes", shapes=ShapesOptions(3, (5, 7, 9), 32, seed=4))
    assert not np.array_equal(a.tasks[0].labels, other_seed.tasks[0].labels)
    # another count for the last shape leaves the other shapes' images and colours as they were
    more = load_dataset("shapes", shapes=ShapesOptions(3, (5, 7, 12), 32, seed=3))
    np.testing.assert_array_equal(more._pixels[:12], a._pixels[:12])
    np.testing.assert_array_equal(more.tasks[0].labels[:12], a.tasks[0].labels[:12])


def test_a_decoded_split_finds_its_colour_labels_by_its_indices():
    ds = load_dataset("shapes", shapes=ShapesOptions(num_classes=2, per_class=6, size=16))
    split = make_split(ds, val_fraction=0.5, seed=0)
    val = decode(ds, split.val, 16)
    assert np.array_equal(val.labels.numpy(), ds.labels[val.indices])
    colours = ds.tasks[0].labels[val.indices]
    assert len(colours) == len(split.val) and set(colours.tolist()) <= {0, 1, 2, 3}


# ---------------------------------------------------------------- labels.csv: what it gives


def _labels_of(ds, path: str) -> tuple[str, str]:
    i = next(i for i, f in enumerate(ds._files) if f.replace(os.sep, "/").endswith("/" + path))
    return ds.classes[ds.labels[i]], ds.tasks[0].classes[ds.tasks[0].labels[i]]


def test_a_labels_csv_adds_its_columns_as_tasks(tmp_path):
    root, expected = two_task_folder(tmp_path / "pics", per_class=4)
    ds = load_dataset(str(root))
    assert ds.task == "class" and ds.task_names() == ("class", "colour")
    assert ds.classes == CLASSES and ds.tasks[0].classes == ("blue", "red")
    assert len(ds) == 8  # labels.csv is no image
    assert not any(f.endswith(".csv") for f in ds._files)
    for path, pair in expected.items():
        assert _labels_of(ds, path) == pair
    assert "labels.csv" in ds.source and "colour" in ds.source
    # the pixels agree with the labels (the fixture's promise to other tests)
    d = decode(ds, np.arange(len(ds)), 8)
    for j, i in enumerate(d.indices.tolist()):
        cls, colour = ds.classes[ds.labels[i]], ds.tasks[0].classes[ds.tasks[0].labels[i]]
        assert np.abs(d.images[j, :, 4, 4].numpy().astype(int) - pixel(cls, colour)).max() <= 2


def test_a_spreadsheets_labels_csv_is_read_as_meant(tmp_path):
    """A byte-order mark, CRLF lines, quoted cells with commas, the file column not first, blank and empty
    rows, Windows separators, './', spaces around cells, another case of the file name: all as meant."""
    root, expected = two_task_folder(tmp_path / "pics", per_class=2)
    (root / "labels.csv").unlink()
    # (each class of a task labels 2 images: a class of one image is refused, as a class folder of one is)
    rows = ['size,File,"where, exactly"', "", 'big,ants\\0.png,"garden, north"', 'big, ./ants/1.png , house ',
            ',,', 'small,bees/0.png,"garden, north"', 'small,bees/1.png,house', '']
    (root / "Labels.CSV").write_bytes(("\ufeff" + "\r\n".join(rows)).encode())
    ds = load_dataset(str(root))
    assert ds.task_names() == ("class", "size", "where, exactly")
    size, where = ds.tasks
    assert size.classes == ("big", "small")
    assert where.classes == ("garden, north", "house")
    by_name = {f.replace(os.sep, "/").split("/pics/")[1]: i for i, f in enumerate(ds._files)}
    assert where.classes[where.labels[by_name["ants/0.png"]]] == "garden, north"
    assert size.classes[size.labels[by_name["bees/1.png"]]] == "small"


def test_a_zip_carries_its_labels_csv_inside_a_wrapping_folder_or_at_its_top(tmp_path):
    path, expected = two_task_zip(tmp_path / "pics.zip", per_class=3)
    ds = load_dataset(str(path), data_dir=tmp_path / "data")
    assert ds.task_names() == ("class", "colour")
    for p, pair in expected.items():
        assert _labels_of(ds, p) == pair
    # labels.csv at the top of the zip, beside the wrapping folder: its paths start with the wrapper
    top = tmp_path / "top.zip"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(top, "w") as dst:
        for m in src.infolist():
            if not m.filename.endswith("labels.csv"):
                dst.writestr(m.filename, src.read(m))
        dst.writestr("labels.csv", "file,colour\n" + "".join(f"pics/{p},{c}\n" for p, (_, c) in expected.items()))
    ds = load_dataset(str(top), data_dir=tmp_path / "data")
    for p, pair in expected.items():
        assert _labels_of(ds, p) == pair


def test_split_folders_are_part_of_the_paths(tmp_path):
    root = tmp_path / "split"
    rows = ["file,colour"]
    for split in ("train", "val"):
        for cls in CLASSES:
            for i, colour in enumerate(("red", "blue")):
                (root / split / cls).mkdir(parents=True, exist_ok=True)
                (root / split / cls / f"{i}.png").write_bytes(png(pixel(cls, colour)))
                rows.append(f"{split}/{cls}/{i}.png,{colour}")
    (root / "labels.csv").write_text("\n".join(rows))
    ds = load_dataset(str(root))
    assert ds.tasks[0].classes == ("blue", "red") and set(ds.given_split.tolist()) == {"train", "val"}
    assert _labels_of(ds, "val/bees/0.png") == ("bees", "red")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_labels_csv_that_is_not_a_regular_file_is_never_opened(tmp_path):
    """A named pipe could block for ever; a folder named labels.csv is no file. Neither gives tasks."""
    root, _ = two_task_folder(tmp_path / "pics")
    (root / "labels.csv").unlink()
    os.mkfifo(root / "labels.csv")
    assert load_dataset(str(root)).tasks == ()
    (root / "labels.csv").unlink()
    (root / "labels.csv").mkdir()
    assert load_dataset(str(root)).tasks == ()


def test_two_labels_files_that_differ_in_case_are_refused(tmp_path):
    root, _ = two_task_folder(tmp_path / "pics")
    (root / "LABELS.CSV").write_text("file,size\n")
    if len([p for p in root.iterdir() if p.name.lower() == "labels.csv"]) < 2:
        pytest.skip("a file system that ignores case keeps one of the two")
    with pytest.raises(DataError, match="2 labels files that differ only in case"):
        load_dataset(str(root))


def test_the_identity_of_a_folder_and_a_zip_follows_their_labels_csv(tmp_path):
    root, _ = two_task_folder(tmp_path / "pics")
    before = identity(TrainConfig(dataset=str(root)))
    text = (root / "labels.csv").read_text()
    (root / "labels.csv").write_text(text.replace("red", "crimson") + "\n")
    assert identity(TrainConfig(dataset=str(root))) != before
    path, _ = two_task_zip(tmp_path / "pics.zip")
    zipped = identity(TrainConfig(dataset=str(path)))
    first = load_dataset(str(path), data_dir=tmp_path / "data")
    with zipfile.ZipFile(path) as src:
        members = {m.filename: src.read(m) for m in src.infolist()}
    members["pics/labels.csv"] = members["pics/labels.csv"].replace(b"red", b"crimson")
    with zipfile.ZipFile(path, "w") as dst:
        for name, content in members.items():
            dst.writestr(name, content)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    assert identity(TrainConfig(dataset=str(path))) != zipped
    again = load_dataset(str(path), data_dir=tmp_path / "data")  # unpacked afresh: another sha256
    assert first.tasks[0].classes == ("blue", "red") and again.tasks[0].classes == ("blue", "crimson")


# ---------------------------------------------------------------- labels.csv: what it refuses, row by row


def _with_csv(tmp_path: Path, text: str | bytes, per_class: int = 4) -> str:
    root, _ = two_task_folder(tmp_path / "pics", per_class=per_class)
    (root / "labels.csv").write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(root)


def _refusal(tmp_path: Path, text: str | bytes, per_class: int = 4) -> str:
    with pytest.raises(DataError) as err:
        load_dataset(_with_csv(tmp_path, text, per_class))
    message = str(err.value)
    assert "labels.csv" in message
    return message


GOOD = ["file,colour", "ants/0.png,blue", "ants/1.png,red", "ants/2.png,blue", "ants/3.png,red",
        "bees/0.png,blue", "bees/1.png,red", "bees/2.png,blue", "bees/3.png,red"]


def test_files_that_are_not_images_of_the_set_are_named_by_row(tmp_path):
    rows = GOOD + ["ants/9.png,red", "wasps/0.png,red", "ants/notes.txt,red"]
    message = _refusal(tmp_path, "\n".join(rows))
    assert "3 row(s) name a file that is not an image of the data set" in message
    assert "row 10 ('ants/9.png')" in message and "row 11 ('wasps/0.png')" in message
    assert "row 12 ('ants/notes.txt')" in message
    assert "e.g. 'ants/0.png'" in message  # the form a path takes


def test_many_bad_rows_are_named_a_few_and_counted(tmp_path):
    rows = GOOD + [f"ants/x{i}.png,red" for i in range(40)]
    message = _refusal(tmp_path, "\n".join(rows))
    assert "40 row(s)" in message and "row 10 ('ants/x0.png')" in message and "row 14 ('ants/x4.png')" in message
    assert "row 15" not in message and f"and {40 - labels_csv.SHOWN} more" in message


def test_images_without_a_row_are_named(tmp_path):
    message = _refusal(tmp_path, "\n".join(GOOD[:1] + GOOD[3:]))
    assert "2 of the 8 images have no row: 'ants/0.png', 'ants/1.png'; add a row for each" in message


def test_empty_cells_are_named_by_row_and_task(tmp_path):
    rows = ["file,colour,size"] + [r + ",big" for r in GOOD[1:]]
    rows[2] = "ants/1.png,,big"
    rows[5] = "bees/0.png,red,  "
    rows[6] = ",red,big"
    message = _refusal(tmp_path, "\n".join(rows))
    assert "3 row(s) have empty cells: row 3 (colour), row 6 (size), row 7 (file)" in message


def test_a_file_given_twice_is_named_with_both_rows(tmp_path):
    message = _refusal(tmp_path, "\n".join(GOOD + ["ants/1.png,blue"]))
    assert "1 row(s) repeat a file of an earlier row: row 10 (as row 3: 'ants/1.png')" in message


def test_rows_of_another_length_are_named(tmp_path):
    rows = list(GOOD)
    rows[4] = "ants/3.png,red,extra"
    message = _refusal(tmp_path, "\n".join(rows))
    assert "do not have the header's 2 cells: row 5 (3 cells)" in message


def test_every_problem_is_in_one_message(tmp_path):
    rows = GOOD[:2] + ["ants/1.png,", "ants/1.png,red", "nowhere.png,red"] + GOOD[4:]
    message = _refusal(tmp_path, "\n".join(rows))
    for words in ("name a file that is not an image", "repeat a file", "empty cells", "have no row: 'ants/2.png'"):
        assert words in message, words


@pytest.mark.parametrize("header, words", [
    ("path,colour", "the header has no 'file' column: it reads 'path,colour'"),
    ("file;colour", "separated by something else than commas"),
    ("file", "names no task beside 'file'"),
    ("file,colour,Colour", "'colour', 'Colour' name one task twice"),
    ("file,class", "'class' is the name of the first task, the class folders"),
    ("file,,colour", "column(s) 2 have no name"),
    ("file,colour,FILE", "2 'file' columns"),
])
def test_a_bad_header_is_explained(tmp_path, header, words):
    assert words in _refusal(tmp_path, "\n".join([header] + GOOD[1:]))


def test_an_empty_labels_csv_is_refused(tmp_path):
    assert "is empty" in _refusal(tmp_path, "\n\n")


def test_a_labels_csv_that_is_not_utf8_names_its_row(tmp_path):
    text = "\n".join(GOOD[:4]) + "\n" + "ants/3.png,r\xe9d\n"
    message = _refusal(tmp_path, text.encode("latin-1"))
    assert "is not UTF-8 text (byte 0xe9 in row 5)" in message and "CSV UTF-8" in message


def test_a_huge_labels_csv_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(labels_csv, "MAX_BYTES_BASE", 1000)
    monkeypatch.setattr(labels_csv, "MAX_BYTES_PER_IMAGE", 10)
    rows = GOOD + [f"ants/x{i}.png,red" for i in range(100)]
    message = _refusal(tmp_path, "\n".join(rows))
    assert "more than a labels file of 8 images needs" in message


def test_a_cell_longer_than_csv_reads_is_refused_with_its_row(tmp_path):
    rows = GOOD[:3] + ["ants/2.png," + "x" * 200_000] + GOOD[4:]
    message = _refusal(tmp_path, "\n".join(rows))
    assert "row 4 cannot be read as CSV" in message


def test_a_task_with_one_value_is_refused(tmp_path):
    rows = ["file,colour"] + [r.split(",")[0] + ",red" for r in GOOD[1:]]
    assert "the task 'colour' has only the value 'red'" in _refusal(tmp_path, "\n".join(rows))


def test_a_zip_s_labels_csv_is_named_by_the_zip_not_its_unpacked_copy(tmp_path):
    path, _ = two_task_zip(tmp_path / "pics.zip")
    with zipfile.ZipFile(path) as src:
        members = {m.filename: src.read(m) for m in src.infolist()}
    members["pics/labels.csv"] += b"ants/99.png,red\n"
    with zipfile.ZipFile(path, "w") as dst:
        for name, content in members.items():
            dst.writestr(name, content)
    with pytest.raises(DataError) as err:
        load_dataset(str(path), data_dir=tmp_path / "data")
    assert str(err.value).startswith(f"labels.csv in {path}: ") and "'ants/99.png'" in str(err.value)


# ---------------------------------------------------------------- figures per task


def test_stats_json_has_every_tasks_counts_and_figures(tmp_path, capsys):
    assert cli.main(["stats", "--dataset", "shapes", "--shapes-per-class", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["task"] == "shape" and list(out["tasks"]) == ["shape", "colour"]
    assert out["tasks"]["shape"]["counts"] == out["counts"]  # the first task also at the top, as before
    colour = out["tasks"]["colour"]
    assert colour["classes"] == ["red", "green", "blue", "yellow"] and colour["num_classes"] == 4
    assert colour["counts"]["all"] == [8, 8, 8, 8]
    assert sum(colour["counts"]["train"]) == sum(out["counts"]["train"])
    assert colour["figures"]["all"]["normalised_entropy"] == pytest.approx(1.0)
    root, _ = two_task_folder(tmp_path / "pics", per_class=4)
    assert cli.main(["stats", "--dataset", str(root)]) == 0
    text = capsys.readouterr().out
    assert "task class: 2 classes" in text and "task colour: 2 classes" in text


def test_stats_of_one_task_keep_their_form(capsys):
    assert cli.main(["stats", "--dataset", "digits", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["task"] == "class" and list(out["tasks"]) == ["class"]
    assert cli.main(["stats", "--dataset", "digits"]) == 0
    assert "task " not in capsys.readouterr().out


def test_stats_print_any_task_name_under_strict_utf8(tmp_path):
    root, _ = two_task_folder(tmp_path / "pics", task="Farbe 🐝")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "FTLAB_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "ftlab", "stats", "--dataset", str(root)], cwd=ROOT, env=env,
                          capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert done.returncode == 0, done.stderr
    assert "task Farbe 🐝: 2 classes" in done.stdout


def test_per_task_counts_for_pages():
    ds = load_dataset("shapes", shapes=ShapesOptions(num_classes=2, per_class=8, size=16))
    split = make_split(ds, val_fraction=0.25, seed=0)
    assert explore.split_counts(ds, split) == explore.split_counts(ds, split, "shape")
    colour = explore.split_counts(ds, split, "colour")
    assert sum(colour["train"]) == len(split.train) and len(colour["train"]) == 4
    assert colour["train"] == np.bincount(ds.tasks[0].labels[split.train], minlength=4).tolist()


# ---------------------------------------------------------------- the Data page


def _data_page(app_env) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("app_pages/data.py").run()
    assert not at.exception, at.exception
    return at


def _charts(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def test_the_data_page_shows_each_tasks_class_figures(app_env):
    at = _data_page(app_env)
    at.selectbox(key="data.builtin").select("shapes").run()
    assert not at.exception and not at.error
    assert any("tasks\\: shape (4 classes), colour (4 classes)." in c.value for c in at.caption)
    assert [m.value for m in at.markdown if m.value.startswith("**Task")] == ["**Task shape**", "**Task colour**"]
    charts = _charts(at)
    assert charts[0]["data"][0]["x"] == ["circle", "square", "triangle", "cross"]
    assert charts[1]["data"][0]["x"] == ["red", "green", "blue", "yellow"]
    entropies = [m.value for m in at.metric if m.label == "Normalised entropy"]
    assert len(entropies) == 2 and entropies[0] == "1.000" and 0.95 < float(entropies[1]) <= 1.0
    assert any("Balance of colour in the training split" in c.value for c in at.caption)


def test_the_data_page_shows_a_folders_labels_csv_task_and_its_errors(app_env, tmp_path):
    root, _ = two_task_folder(tmp_path / "pics", per_class=4)
    at = _data_page(app_env)
    at.radio(key="data.source").set_value("Folder on this machine").run()
    at.text_input(key="data.folder").input(str(root)).run()
    at.button(key="data.use_folder").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert [m.value for m in at.markdown if m.value.startswith("**Task")] == ["**Task class**", "**Task colour**"]
    assert _charts(at)[1]["data"][0]["x"] == ["blue", "red"]
    other, _ = two_task_folder(tmp_path / "other", per_class=4)
    with open(other / "labels.csv", "a") as f:
        f.write("ants/77.png,red\n")
    at.text_input(key="data.folder").input(str(other)).run()
    at.button(key="data.use_folder").click().run()
    assert not at.exception
    assert at.error and "row 10 ('ants/77.png')" in at.error[0].value
    assert at.session_state["data.dataset"] == str(root)  # the previous choice stays


def test_a_task_name_is_shown_as_typed_never_as_markdown(app_env, tmp_path):
    root, _ = two_task_folder(tmp_path / "pics", task="[see](http://evil.example) **now**")
    at = _data_page(app_env)
    at.radio(key="data.source").set_value("Folder on this machine").run()
    at.text_input(key="data.folder").input(str(root)).run()
    at.button(key="data.use_folder").click().run()
    assert not at.exception and not at.error
    shown = [m.value for m in at.markdown if m.value.startswith("**Task")][1]
    assert shown == r"**Task \[see\](http\://evil.example) \*\*now\*\***"


def test_a_data_set_of_one_task_shows_no_task_headings(app_env):
    at = _data_page(app_env)
    at.selectbox(key="data.builtin").select("digits").run()
    assert not [m for m in at.markdown if m.value.startswith("**Task")]
    assert len([m for m in at.metric if m.label == "Normalised entropy"]) == 1
