"""Hostile data entry (issue 11): what decoding leaves of each split, files that are not files, folders
beside the layout, names that are not UTF-8, archives that cannot be written, bombs spread thin,
leftover partial files, uploads at once. Each test names the guard that makes it pass."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ftlab import data, engine, events
from ftlab.config import TrainConfig
from ftlab.data import DataError, decode, load_dataset, make_split
from ftlab.data import decoding, folders
from ftlab.runs import RunStore

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(backbone="small_cnn", weights="random", strategy="full", image_size=16, batch_size=16, epochs=1)


def png(value: int, size: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (value % 256, (3 * value) % 256, 90)).save(buf, "PNG")
    return buf.getvalue()


def write_set(root: Path, layout: dict[str, int | bytes]) -> Path:
    """``{"train/a": 4, "val/a/x.png": b"junk"}``: a count of valid PNGs in a folder, or one file's bytes."""
    for rel, what in layout.items():
        target = root / rel
        if isinstance(what, int):
            target.mkdir(parents=True, exist_ok=True)
            for i in range(what):
                (target / f"{i}.png").write_bytes(png(40 * i + len(rel)))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(what)
    return root


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return path


def two_classes() -> dict[str, bytes]:
    return {f"{c}/{i}.png": png(30 * i + (100 if c == "b" else 0)) for c in "ab" for i in range(3)}


def cli(*args: str, env: dict | None = None, timeout: float = 120, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "ftlab", *args], capture_output=True, text=True, cwd=cwd,
                          env=environment, timeout=timeout, encoding="utf-8", errors="strict")


def train(dataset: Path, store: RunStore, **kw) -> tuple[dict, list]:
    seen = []
    summary = engine.run(TrainConfig(dataset=str(dataset), **{**TINY, **kw}), store=store, emit=seen.append)
    return summary, seen


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "home")


# --- 1. what decoding leaves of each split ---------------------------------------------------

def test_a_class_whose_files_all_fail_stops_the_run_naming_it_and_the_files(tmp_path, store):
    """Guard: decode(split=...) -> check_decoded. Before, the class vanished and the run 'completed'."""
    root = write_set(tmp_path / "set", {"ants": 6, "bees": 6, **{f"bad/{i}.png": b"not a png" for i in range(6)}})
    summary, seen = train(root, store)
    assert summary["stopped_reason"] == "error" and isinstance(seen[-1], events.RunFailed)
    message = seen[-1].message
    assert "1 class(es): 'bad'" in message and "ants" not in message and "bad/" in message.replace(os.sep, "/")
    assert "could not be decoded" in message and len(message) < 1000


def test_no_decodable_file_at_all_is_a_message_not_an_index_error(tmp_path, store):
    """Guard: check_decoded's empty-split message. Before: IndexError from the cache, or a nan loss."""
    root = write_set(tmp_path / "set", {f"{c}/{i}.png": b"\0" * 10 for c in "ab" for i in range(4)})
    for strategy in ("linear-probe", "full"):
        summary, seen = train(root, store, strategy=strategy)
        assert isinstance(seen[-1], events.RunFailed), strategy
        assert seen[-1].message.startswith("None of the") and "could not be decoded" in seen[-1].message


def test_a_given_val_whose_files_all_fail_is_a_message(tmp_path, store):
    """Guard: check_decoded on the val split. Before: IndexError, or scikit-learn's 'Found empty input array'."""
    layout = {"train/a": 4, "train/b": 4, **{f"val/{c}/{i}.png": b"broken" for c in "ab" for i in range(2)}}
    summary, seen = train(write_set(tmp_path / "set", layout), store)
    assert isinstance(seen[-1], events.RunFailed)
    assert "None of the 4 val images could be decoded" in seen[-1].message


def test_decode_names_lost_classes_briefly_among_many(tmp_path):
    """Guard: messages.some() keeps the message short when many classes lose their images."""
    layout = {"ok": 3, **{f"c{k:04d}/{i}.png": b"x" for k in range(300) for i in range(2)}}
    ds = load_dataset(str(write_set(tmp_path / "set", layout)))
    with pytest.raises(DataError) as e:
        decode(ds, np.arange(len(ds)), 8, split="train")
    assert "300 class(es)" in str(e.value) and "more" in str(e.value) and len(str(e.value)) < 1000
    # without a split named, decoding stays lenient (sample grids, the hardest images)
    assert len(decode(ds, np.arange(len(ds)), 8).labels) == 3


def test_a_val_class_that_train_lacks_is_named_not_imbalance_inf(tmp_path):
    """Guard: make_split refuses val/test classes with no training images. Before: 'imbalance inf'."""
    root = write_set(tmp_path / "set", {"train/a": 3, "train/b": 3, "val/a": 2, "val/b": 2, "val/c": 2})
    with pytest.raises(DataError, match=r"no training images: 'c'"):
        make_split(load_dataset(str(root)))
    out = cli("stats", "--dataset", str(root))
    assert out.returncode == 2 and "'c'" in out.stderr and "inf" not in out.stdout + out.stderr


# --- 2. empty names --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", "   "], ids=["empty", "blank"])
def test_an_empty_dataset_name_is_an_error_not_the_current_folder(tmp_path, monkeypatch, name):
    """Guard: load_dataset refuses an empty name. Before, Path('') read the current directory."""
    write_set(tmp_path, {"a": 3, "b": 3})  # a data set in the current folder: before, it was read
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="empty"):
        load_dataset(name)
    out = cli("stats", "--dataset", name, cwd=tmp_path)
    assert out.returncode == 2 and "empty" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("name", ["x" * 5000, "~no_such_user_ftlab/x"], ids=["too-long", "unknown-user"])
def test_a_path_that_cannot_be_a_path_is_a_message(name):
    """Guard: load_dataset turns OSError (name too long) and RuntimeError (~user) into DataError."""
    with pytest.raises(DataError, match="not a usable path"):
        load_dataset(name)


# --- 3. files that are not files, and stop during decoding -----------------------------------

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_named_like_an_image_is_skipped_without_opening(tmp_path):
    """Guard: _open_regular (os.stat, S_ISREG). Before, opening the pipe blocked forever."""
    root = write_set(tmp_path / "set", {"a": 3, "b": 3})
    os.mkfifo(root / "a" / "pipe.png")
    os.symlink("/dev/zero", root / "b" / "zero.jpg")
    script = ("import numpy as np, sys; from ftlab.data import load_dataset, decode; "
              "ds = load_dataset(sys.argv[1]); d = decode(ds, np.arange(len(ds)), 8); "
              "print(len(d.labels)); print('\\n'.join(d.skipped))")
    out = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True, text=True, cwd=ROOT,
                         timeout=90)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "6" and len(lines) == 3
    assert any("pipe.png" in s and "named pipe" in s for s in lines) and any("zero.jpg" in s and "device" in s
                                                                          for s in lines)


def test_stop_is_honoured_between_files_while_decoding(tmp_path, monkeypatch):
    """Guard: decode(should_stop=...) asks before each file. Before, decoding always ran to the end."""
    ds = load_dataset(str(write_set(tmp_path / "set", {"a": 30, "b": 30})))
    stop, opened = threading.Event(), []
    real = decoding._decode_file

    def decode_and_stop(file, *sizes):  # the crop's size and resize
        opened.append(file)
        stop.set()
        return real(file, *sizes)

    monkeypatch.setattr(decoding, "_decode_file", decode_and_stop)
    with pytest.raises(data.DecodingStopped):
        decode(ds, np.arange(len(ds)), 8, workers=2, should_stop=stop.is_set)
    assert 1 <= len(opened) <= 2  # the files already in the two workers' hands, no more


def test_stop_during_decoding_stops_the_run(tmp_path, store, monkeypatch):
    """Guard: prepare_data passes the stop flag to decode and turns DecodingStopped into StopRequested."""
    root = write_set(tmp_path / "set", {"a": 20, "b": 20})
    stop = threading.Event()
    real, opened = decoding._decode_file, []

    def decode_and_stop(file, *sizes):  # the crop's size and resize
        opened.append(file)
        stop.set()  # what Ctrl-C (the CLI's SIGINT handler) or the Stop button does
        return real(file, *sizes)

    monkeypatch.setattr(decoding, "_decode_file", decode_and_stop)
    seen = []
    summary = engine.run(TrainConfig(dataset=str(root), **TINY), store=store, emit=seen.append, stop=stop)
    assert summary["stopped_reason"] == "user" and isinstance(seen[-1], events.RunStopped)
    assert "before training began" in seen[-1].message and len(opened) < 10


# --- 4. folders the layout leaves out --------------------------------------------------------

def test_class_folders_beside_train_are_named_in_stats_and_train(tmp_path, store):
    """Guard: _scan's notes (Dataset.notes), printed by stats and train. Before: silently ignored."""
    layout = {"train/a": 3, "train/b": 3, "dogs": 3, "cats": 2, "train/loose.png": png(1), "train/empty/x.txt": b""}
    root = write_set(tmp_path / "set", layout)
    ds = load_dataset(str(root))
    notes = " ".join(ds.notes)
    assert "2 folder(s) beside train/" in notes and "'cats'" in notes and "'dogs'" in notes
    assert "loose.png" in notes and "'train/empty'" in notes
    out = cli("stats", "--dataset", str(root), "--json")
    assert out.returncode == 0 and "'dogs'" in out.stderr and "warning" in out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["notes"] == list(ds.notes)
    said = []
    data.prepare(TrainConfig(dataset=str(root), **TINY), 32, 32, said.append)
    assert any(s.startswith("warning:") and "'dogs'" in s for s in said)


# --- 5. archive members that cannot be written -----------------------------------------------

def _patched(path: Path, member: str, local_offset: int, central_offset: int, value: bytes) -> Path:
    """Overwrite a field of ``member``'s local and central headers (what zipfile will not write)."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    raw[info.header_offset + local_offset:info.header_offset + local_offset + len(value)] = value
    central = raw.rfind(b"PK\x01\x02")  # the member written last has the last central record
    raw[central + central_offset:central + central_offset + len(value)] = value
    path.write_bytes(bytes(raw))
    return path


def _encrypted(path: Path) -> Path:
    make_zip(path, {**two_classes(), "a/secret.png": png(7)})
    return _patched(path, "a/secret.png", 6, 8, (0x1).to_bytes(2, "little"))  # flag bit 0: encrypted


def _unknown_method(path: Path) -> Path:
    make_zip(path, {**two_classes(), "a/odd.png": png(7)})
    return _patched(path, "a/odd.png", 8, 10, (97).to_bytes(2, "little"))  # method 97 (WavPack)


def _damaged(path: Path) -> Path:
    make_zip(path, {**two_classes(), "a/zz.png": bytes(range(256)) * 64})
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("a/zz.png")
    start = info.header_offset + 30 + len(info.filename)
    raw[start:start + 40] = b"\xff" * 40  # the deflate stream itself: zlib.error on reading
    path.write_bytes(bytes(raw))
    return path


ARCHIVES = {
    "file and folder of one name": (lambda p: make_zip(p, {**two_classes(), "a/x": b"1", "a/x/y.png": png(1)}),
                                    "a file and a folder of the same name"),
    "a folder member over a file": (lambda p: make_zip(p, {**two_classes(), "c": b"1", "c/": b""}),
                                    "a file and a folder of the same name"),
    "name too long": (lambda p: make_zip(p, {**two_classes(), "a/" + "n" * 300 + ".png": png(2)}),
                      "longer than the file system allows"),
    "encrypted": (_encrypted, "encrypted"),
    "unknown method": (_unknown_method, "compression method"),
    "damaged data": (_damaged, "damaged"),
}


@pytest.mark.parametrize("case", list(ARCHIVES))
def test_an_archive_member_that_cannot_be_written_is_refused_with_a_sentence(tmp_path, case):
    """Guard: _check_members and _write_members turn each into DataError; nothing is left behind.
    Before: FileExistsError, OSError, RuntimeError, NotImplementedError or zlib.error tracebacks."""
    build, words = ARCHIVES[case]
    archive = build(tmp_path / "x.zip")
    with pytest.raises(DataError, match=words) as e:
        load_dataset(str(archive), data_dir=tmp_path / "data")
    assert "x.zip" in str(e.value) and len(str(e.value)) < 600
    uploads = tmp_path / "data" / "uploads"
    assert not uploads.exists() or list(uploads.iterdir()) == []
    out = cli("stats", "--dataset", str(archive), env={"FTLAB_DATA": str(tmp_path / "data")})
    assert out.returncode == 2 and words in out.stderr and "Traceback" not in out.stderr


def test_a_member_called_dot_is_skipped(tmp_path):
    """Guard: _parts() == () skips a member that names nothing. Before: IsADirectoryError."""
    archive = make_zip(tmp_path / "dot.zip", {**two_classes(), ".": b"x", "./": b""})
    assert load_dataset(str(archive), data_dir=tmp_path / "data").classes == ("a", "b")


def test_a_member_name_that_is_not_utf8_though_flagged_so_is_a_message(tmp_path):
    """Guard: UnicodeDecodeError from zipfile's reading of the names is 'not a readable .zip'."""
    archive = make_zip(tmp_path / "names.zip", {**two_classes(), "a/\u00e9.png": png(3)})
    raw = archive.read_bytes().replace("\u00e9".encode(), b"\xff\xfe")
    archive.write_bytes(raw)
    with pytest.raises(DataError, match="not a readable .zip"):
        load_dataset(str(archive), data_dir=tmp_path / "data")


def test_the_app_shows_a_refused_archive_as_an_error_not_an_exception(tmp_path, monkeypatch):
    at = _app(monkeypatch, tmp_path)
    at.radio(key="data.source").set_value("Upload a .zip").run()
    at.file_uploader(key="data.upload").upload("locked.zip", _encrypted(tmp_path / "l.zip").read_bytes(),
                                               "application/zip").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.error and "encrypted" in at.error[0].value


# --- 6. zip bombs however spread -------------------------------------------------------------

def test_a_bomb_spread_over_many_small_members_is_refused(tmp_path):
    """Guard: the archive-wide ratio in _check_bomb. Before, members of at most 1 MiB escaped the ratio rule
    and 48 MB of zeros (ratio 1000) were unpacked."""
    members = {**two_classes(), **{f"a/pad{i}.png": bytes(1 << 20) for i in range(48)}}
    archive = make_zip(tmp_path / "spread.zip", members)
    assert archive.stat().st_size < 1 << 20
    with pytest.raises(DataError, match="zip bombs"):
        load_dataset(str(archive), data_dir=tmp_path / "data")
    uploads = tmp_path / "data" / "uploads"
    assert not uploads.exists() or list(uploads.iterdir()) == []


def test_headers_that_overstate_the_packed_size_do_not_hide_a_bomb(tmp_path):
    """Guard: the ratio is taken against the archive's size on disk. Before, a member claiming 1 GB
    packed passed the per-member ratio rule with 8 MB of zeros in 8 kB."""
    archive = make_zip(tmp_path / "liar.zip", {**two_classes(), "a/zeros.png": bytes(8 << 20)})
    _patched(archive, "a/zeros.png", 18, 20, (1 << 30).to_bytes(4, "little"))
    with pytest.raises(DataError):  # refused whole (a bomb), or as damaged: never unpacked
        load_dataset(str(archive), data_dir=tmp_path / "data")
    with zipfile.ZipFile(archive) as zf:
        assert zf.getinfo("a/zeros.png").compress_size == 1 << 30
    with pytest.raises(DataError, match="zip bombs"):
        folders._check_bomb("liar.zip", zipfile.ZipFile(archive).infolist(), archive.stat().st_size,
                            folders.zip_limits())


def test_bytes_actually_written_are_counted_against_the_budget(tmp_path):
    """Guard: _write_members counts what it writes (the budget _check_bomb returns), not the headers."""
    archive = make_zip(tmp_path / "ok.zip", two_classes())
    with zipfile.ZipFile(archive) as zf, pytest.raises(DataError, match="more than it may"):
        folders._write_members(zf, "ok.zip", zf.infolist(), tmp_path / "out", budget=10, max_mb=4096)


# --- 7. partial files and folders ------------------------------------------------------------

def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_partials_are_cleaned_and_a_live_writers_are_kept(tmp_path):
    """Guard: clean_partials at the start of each unpack and upload. Before, they stayed forever."""
    uploads = tmp_path / "data" / "uploads"
    files = uploads / "files"
    files.mkdir(parents=True)
    host, dead = folders._HOST, _dead_pid()
    stale_dir = uploads / f".abc{folders.PARTIAL}{host}-{dead}-xyz"
    live_dir = uploads / f".abc{folders.PARTIAL}{host}-{os.getppid()}-xyz"  # pytest's parent shell: alive
    old_legacy = uploads / ".0123456789abcdef.partial-k2j3h4"  # an older ftlab's, no writer to ask
    new_legacy = uploads / ".fedcba9876543210.partial-q9w8e7"
    stale_file = files / f".x.zip{folders.PARTIAL}{host}-{dead}-abc"
    old_file = files / ".x-0123.zip.4242.partial"
    for d in (stale_dir, live_dir, old_legacy, new_legacy):
        (d / "a").mkdir(parents=True)
    for f in (stale_file, old_file):
        f.write_bytes(b"half")
    two_days_ago = time.time() - 2 * 86400
    for p in (old_legacy, old_file):
        os.utime(p, (two_days_ago, two_days_ago))
    load_dataset(str(make_zip(tmp_path / "ok.zip", two_classes())), data_dir=tmp_path / "data")
    assert not stale_dir.exists() and not old_legacy.exists()
    assert live_dir.exists() and new_legacy.exists()
    data.save_upload("ok.zip", b"PK\5\6" + bytes(18), tmp_path / "data")
    assert not stale_file.exists() and not old_file.exists()


def test_a_failed_upload_write_leaves_no_partial_file(tmp_path, monkeypatch):
    """Guard: save_upload removes its temporary file on failure, and says what failed."""
    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(DataError, match="No space left"):
        data.save_upload("pics.zip", b"PK" + bytes(100), tmp_path / "data")
    left = [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
    assert left == []


def test_a_failed_unpack_leaves_no_partial_folder(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "x.zip", two_classes())

    def fails(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(folders, "_write_member", fails)
    with pytest.raises(DataError, match="No space left"):
        load_dataset(str(archive), data_dir=tmp_path / "data")
    assert list((tmp_path / "data" / "uploads").iterdir()) == []


# --- 8. two uploads of one name at once ------------------------------------------------------

def test_two_sessions_uploading_one_name_at_once_each_keep_their_bytes(tmp_path, monkeypatch):
    """Guard: save_upload writes a tempfile of its own and renames it. Before, both wrote the one
    partial file named by the process id, and the second rename found it gone (FileNotFoundError).
    The second upload runs inside the first's rename, so the interleaving is certain, not a race."""
    real_replace, results = os.replace, {}

    def replace_after_the_other_session(src, dst):
        if not results:
            results["started"] = True
            results["second"] = data.save_upload("pics.zip", same, tmp_path / "data")
        real_replace(src, dst)

    same = make_zip(tmp_path / "a.zip", two_classes()).read_bytes()
    monkeypatch.setattr(os, "replace", replace_after_the_other_session)
    first = data.save_upload("pics.zip", same, tmp_path / "data")
    assert first.read_bytes() == same and results["second"].read_bytes() == same
    other = make_zip(tmp_path / "b.zip", {**two_classes(), "b/9.png": png(9)}).read_bytes()
    results.clear()

    def other_session_other_bytes(src, dst):
        if not results:
            results["started"] = True
            results["second"] = data.save_upload("pics.zip", other, tmp_path / "data")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", other_session_other_bytes)
    mine = data.save_upload("pics.zip", b"PK" + bytes(50), tmp_path / "data")
    assert mine.read_bytes() == b"PK" + bytes(50) and results["second"].read_bytes() == other
    assert mine != results["second"]


# --- 9. names that are not UTF-8, or hold control characters ---------------------------------

@pytest.fixture
def odd_names(tmp_path) -> Path:
    """Given splits (so that which file lands where is certain): a class folder whose name is not UTF-8,
    one with a newline, and a broken file whose name is not UTF-8 either."""
    root = tmp_path / "odd"
    write_set(root, {"train/plain": 3, "train/new\nline": 3, "val/plain": 2, "val/new\nline": 2})
    for split, n in (("train", 3), ("val", 2)):
        weird = os.path.join(os.fsencode(root / split), b"caf\xff")
        os.mkdir(weird)
        for i in range(n):
            with open(os.path.join(weird, f"{i}.png".encode()), "wb") as f:
                f.write(png(60 + i))
    with open(os.path.join(os.fsencode(root / "train"), b"caf\xff", b"\xfe.png"), "wb") as f:
        f.write(b"broken")
    return root


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="file names there are always Unicode")
def test_a_class_name_that_is_not_utf8_is_shown_escaped_by_stats(odd_names):
    """Guard: _scan makes class names printable. Before: UnicodeEncodeError under a strict UTF-8 stdout."""
    out = cli("stats", "--dataset", str(odd_names))
    assert out.returncode == 0, out.stderr
    assert "caf\\xff" in out.stdout and "new\\nline" in out.stdout
    js = cli("stats", "--dataset", str(odd_names), "--json")
    assert json.loads(js.stdout.splitlines()[-1])["classes"] == ["caf\\xff", "new\\nline", "plain"]


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="file names there are always Unicode")
def test_a_run_and_predict_on_such_names_work_under_strict_utf8(odd_names, tmp_path):
    """Guard: the same; the class names reach the run store, the checkpoint and predict as valid UTF-8."""
    home = tmp_path / "strict-home"
    run = cli("train", "--dataset", str(odd_names), "--backbone", "small_cnn", "--weights", "random",
              "--image-size", "16", "--epochs", "1", "--json", env={"FTLAB_HOME": str(home)}, timeout=240)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.splitlines()[-1])
    assert summary["stopped_reason"] == "completed" and "\\xfe.png" in run.stderr
    image = tmp_path / "one.png"
    image.write_bytes(png(61))
    out = cli("predict", "--run", summary["run_id"], str(image), "--top-k", "3", env={"FTLAB_HOME": str(home)})
    assert out.returncode == 0, out.stderr
    assert {line.split(maxsplit=1)[1] for line in out.stdout.splitlines()} == {"caf\\xff", "new\\nline", "plain"}


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="file names there are always Unicode")
def test_the_data_page_shows_such_names(odd_names, tmp_path, monkeypatch):
    """Guard: the same, on the Data page. Before: UnicodeEncodeError drawing the page."""
    at = _app(monkeypatch, tmp_path)
    at.radio(key="data.source").set_value("Folder on this machine").run()
    at.text_input(key="data.folder").input(str(odd_names)).run()
    at.button(key="data.use_folder").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert any("3 classes" in h.value for h in at.subheader)
    shown = " ".join(m.value for m in at.markdown)
    assert "caf\\xff" in shown and "new\\nline" in shown


# --- 10. PIL's warning -----------------------------------------------------------------------

def test_pils_decompression_bomb_warning_does_not_reach_stderr(tmp_path):
    """Guard: the warnings filter in ftlab.data.decoding. Our own limit (FTLAB_MAX_PIXELS) decides; an
    image between PIL's limit and ours used to print PIL's DecompressionBombWarning."""
    image = tmp_path / "big.png"
    image.write_bytes(png(5, size=20))
    script = ("import sys; from PIL import Image; from ftlab.data import decode_image; "
              "Image.MAX_IMAGE_PIXELS = 300; print(tuple(decode_image(sys.argv[1], 8).shape))")
    out = subprocess.run([sys.executable, "-c", script, str(image)], capture_output=True, text=True, cwd=ROOT,
                         timeout=90)
    assert out.returncode == 0 and out.stdout.strip() == "(3, 8, 8)", out.stderr
    assert "DecompressionBombWarning" not in out.stderr


# --- 11. the user's file name ----------------------------------------------------------------

def test_an_uploaded_zip_is_shown_by_the_users_file_name(tmp_path, monkeypatch):
    """Guard: save_upload keeps the file under its own name in a folder named by its hash. Before, the
    Data page said 'My_Photos-<hash>.zip'."""
    at = _app(monkeypatch, tmp_path)
    at.radio(key="data.source").set_value("Upload a .zip").run()
    at.file_uploader(key="data.upload").upload("My Photos.zip", make_zip(tmp_path / "p.zip", two_classes()).read_bytes(),
                                               "application/zip").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(h.value.startswith("My Photos.zip: 2 classes") for h in at.subheader), [h.value for h in at.subheader]


@pytest.mark.parametrize("name, kept", [("../../etc/x.zip", "x.zip"), (".hidden.zip", "hidden.zip"),
                                        ("a\nb.zip", "a\\nb.zip"), ("é" * 200 + ".zip", None)],
                         ids=["a-path", "hidden", "newline", "too-long"])
def test_an_odd_upload_name_is_kept_safely(tmp_path, name, kept):
    path = data.save_upload(name, b"PK" + bytes(20), tmp_path / "data")
    assert path.parent.parent == tmp_path / "data" / "uploads" / "files" and path.suffix == ".zip"
    assert kept is None or path.name == kept
    assert len(path.name.encode()) < 255


@pytest.mark.parametrize("name", ["", ".", "..", "a/", "x.zip.png"])
def test_an_upload_name_without_zip_is_refused_by_a_sentence(tmp_path, name):
    """Guard: save_upload's suffix check; an empty name is said to be one (the message began with a space)."""
    with pytest.raises(DataError, match=r"^\S.* is not a \.zip file"):
        data.save_upload(name, b"PK" + bytes(20), tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_a_huge_upload_name_is_cut_at_once(tmp_path):
    """Guard: _upload_name cuts the encoded name once. Before, it dropped one character per encode, so a
    name of 500,000 characters took minutes."""
    start = time.monotonic()
    path = data.save_upload("é" * 500_000 + ".zip", b"PK" + bytes(20), tmp_path / "data")
    assert time.monotonic() - start < 5
    assert path.name == "é" * 90 + ".zip"


# --- the app, as tests/test_app.py drives it -------------------------------------------------

def _app(monkeypatch, tmp_path):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FTLAB_HOME", str(tmp_path / "app-home"))
    monkeypatch.setenv("FTLAB_DATA", str(tmp_path / "app-data"))
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("app_pages/data.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


# --- the hostile pass: names that look alike, more layouts ------------------------------------

@pytest.mark.parametrize("other", ["caf\\xff", "cafe\u0301"], ids=["escape-of-a-byte", "decomposed"])
def test_two_class_folders_that_look_the_same_are_refused(tmp_path, other):
    """Guard: _scan compares the shown (printable, NFC) names. Otherwise two classes would look alike."""
    root = tmp_path / "set"
    write_set(root, {other: 2, "plain": 2})
    mine = os.path.join(os.fsencode(root), b"caf\xff" if "xff" in other else "caf\u00e9".encode())
    os.mkdir(mine)
    for i in range(2):
        with open(os.path.join(mine, f"{i}.png".encode()), "wb") as f:
            f.write(png(i))
    with pytest.raises(DataError, match="look the same"):
        load_dataset(str(root))


def test_a_data_folder_that_cannot_be_written_is_a_message(tmp_path):
    """Guard: extract_zip and save_upload turn OSError into DataError naming FTLAB_DATA. Before:
    FileExistsError / NotADirectoryError tracebacks (a data folder that is a file, read-only, full)."""
    blocker = tmp_path / "data"
    blocker.write_text("a file where the data folder should be")
    archive = make_zip(tmp_path / "ok.zip", two_classes())
    with pytest.raises(DataError, match="FTLAB_DATA"):
        load_dataset(str(archive), data_dir=blocker)
    with pytest.raises(DataError, match="FTLAB_DATA"):
        data.save_upload("ok.zip", archive.read_bytes(), blocker)


@pytest.mark.parametrize("value", ["abc", "nan", "-5"])
def test_a_zip_limit_setting_that_is_not_a_number_is_named(tmp_path, monkeypatch, value):
    """Guard: paths.number, read by extract_zip before the archive is opened, refuses what is not a number > 0. Before, 'abc' was silently the default and 'nan'
    turned the total-size guard off."""
    monkeypatch.setenv("FTLAB_ZIP_MAX_MB", value)
    with pytest.raises(DataError, match="FTLAB_ZIP_MAX_MB") as caught:
        load_dataset(str(make_zip(tmp_path / "ok.zip", two_classes())), data_dir=tmp_path / "data")
    assert "not a readable .zip" not in str(caught.value)  # the setting is at fault, not the archive


def test_huge_zip_limits_unpack_as_no_limit(tmp_path, monkeypatch):
    """Guard: _check_bomb's budget is a float. Before, FTLAB_ZIP_MAX_MB=1e308 with as large a ratio made it
    infinite and int() raised OverflowError."""
    for name in ("FTLAB_ZIP_MAX_MB", "FTLAB_ZIP_MAX_RATIO", "FTLAB_ZIP_MAX_FILES"):
        monkeypatch.setenv(name, "1e308")
    ds = load_dataset(str(make_zip(tmp_path / "ok.zip", two_classes())), data_dir=tmp_path / "data")
    assert len(ds.classes) == 2


def test_the_data_page_warns_of_folders_beside_train(tmp_path, monkeypatch):
    """Guard: the Data page draws Dataset.notes as warnings."""
    root = write_set(tmp_path / "set", {"train/a": 3, "train/b": 3, "val/a": 1, "val/b": 1, "dogs": 3})
    at = _app(monkeypatch, tmp_path)
    at.radio(key="data.source").set_value("Folder on this machine").run()
    at.text_input(key="data.folder").input(str(root)).run()
    at.button(key="data.use_folder").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("'dogs'" in w.value and "not read" in w.value for w in at.warning), [w.value for w in at.warning]
