"""Hostile faults of the run store, checkpoints and predict: each is a sentence (a StoreError or a
CheckpointError), never a traceback, and a damaged store or a kept checkpoint is never lost."""
from __future__ import annotations

import errno
import io
import os
import pickle
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from PIL import Image

from ftlab import backbones, checkpoints, events, runs
from ftlab.cli import main
from ftlab.config import TrainConfig
from ftlab.checkpoints import CheckpointError, build as checkpoint_dict
from ftlab.engine import run
from ftlab.transforms import Preprocessing
from ftlab.predict import Predictor
from ftlab.runs import RunStore, StoreError, new_run_id

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"dataset": "digits", "backbone": "small_cnn", "strategy": "full"}
TINY = dict(dataset="digits", backbone="small_cnn", weights="random", strategy="full", epochs=1, image_size=16,
            batch_size=256, feature_cache=False)


def _checkpoint(num_classes: int = 3, epoch: int = 1) -> dict:
    torch.manual_seed(0)
    model = backbones.create_model("small_cnn", num_classes, "random")
    return checkpoint_dict(model, TrainConfig(backbone="small_cnn", weights="random"),
                           tuple("abcdefgh"[:num_classes]), Preprocessing.for_backbone("small_cnn", 16), epoch,
                           0.5)


def _kept_run(store: RunStore) -> str:
    rid = new_run_id()
    store.create(rid, CONFIG)
    store.save_checkpoint(rid, _checkpoint())
    store.finish(rid, "finished", {"best_val_accuracy": 0.5})
    return rid


def _image(tmp_path: Path) -> str:
    path = tmp_path / "red.png"
    Image.new("RGB", (20, 20), (200, 20, 20)).save(path)
    return str(path)


def _training(home: Path) -> tuple[RunStore, str]:
    """A store holding one run that this process is training."""
    store = RunStore(home)
    rid = new_run_id()
    store.create(rid, CONFIG)
    return store, rid


@contextmanager
def _db(home: Path):
    """The store's database opened by hand, committed and closed (an open connection keeps its -wal file)."""
    con = sqlite3.connect(home / "runs.db")
    try:
        with con:
            yield con
    finally:
        con.close()


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("FTLAB_HOME", str(path))
    return path


@contextmanager
def read_only(path: Path):
    """``path`` read-only for this process: chmod where permissions bind, a read-only bind mount for root."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    made = subprocess.run(f"mount --bind '{path}' '{path}' && mount -o remount,ro,bind '{path}'", shell=True,
                          capture_output=True, text=True)
    if made.returncode:
        subprocess.run(["umount", str(path)], capture_output=True)
        pytest.skip(f"root without mount: cannot make a read-only folder ({made.stderr.strip()})")
    try:
        yield
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)  # busy: detach it anyway


# --- item 1: every store fault is a sentence -------------------------------------------------

def test_a_file_that_is_not_a_database_is_named_and_never_rewritten(home, capsys):
    home.mkdir()
    db = home / "runs.db"
    db.write_bytes(b"these are not the runs you are looking for" * 100)
    before = db.read_bytes()
    for argv in (["runs"], ["runs", "--json"], ["runs", "--delete", new_run_id()],
                 ["train", "--backbone", "small_cnn", "--weights", "random", "--epochs", "1"]):
        code, out, err = _cli(capsys, *argv)
        assert code == 1 and "damaged" in err and "--move-aside" in err, (argv, err)
    assert db.read_bytes() == before  # never "repaired" or overwritten

    code, out, err = _cli(capsys, "runs", "--move-aside")
    assert code == 0 and "runs.db.damaged-" in out
    kept = list(home.glob("runs.db.damaged-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == before
    code, out, err = _cli(capsys, "runs")
    assert code == 0 and "no runs yet" in out


def test_a_malformed_database_is_named(home, capsys):
    store = RunStore(home)
    for _ in range(40):
        store.create(new_run_id(), {**CONFIG, "padding": "x" * 3000})
    raw = bytearray((home / "runs.db").read_bytes())
    assert len(raw) > 8 * 4096
    raw[4096:len(raw) - 4096] = b"\xff" * (len(raw) - 8192)  # every page but the first and the last
    (home / "runs.db").write_bytes(bytes(raw))
    code, out, err = _cli(capsys, "runs")
    assert code == 1 and "damaged" in err and "malformed" in err


def test_move_aside_refuses_a_healthy_store(home, capsys):
    rid = _kept_run(RunStore(home))
    code, out, err = _cli(capsys, "runs", "--move-aside")
    assert code == 1 and "not damaged" in err
    assert RunStore(home).get(rid).status == "finished"


def test_a_record_that_does_not_parse_is_listed_as_damaged_and_deletable(home, capsys):
    store = RunStore(home)
    good, bad = _kept_run(store), _kept_run(store)
    with _db(home) as con:
        con.execute("UPDATE runs SET config = '{not json', summary = '[1, 2]', status = 7 WHERE id = ?", (bad,))
        con.execute("INSERT INTO epochs (run_id, epoch, metrics) VALUES (?, 2, 'nan nan')", (bad,))
    records = {r.id: r for r in store.list()}
    assert records[good].config == CONFIG and not records[good].message
    assert records[bad].config == {} and records[bad].summary == {} and "damaged" in records[bad].message
    assert store.epochs(bad) == []
    code, out, err = _cli(capsys, "runs")
    assert code == 0 and good in out and bad in out
    code, out, err = _cli(capsys, "runs", "--delete", bad)
    assert code == 0 and [r.id for r in store.list()] == [good]


def test_an_extra_column_is_read_by_name(home, capsys):
    store = RunStore(home)
    rid = _kept_run(store)
    with _db(home) as con:
        con.execute("ALTER TABLE runs ADD COLUMN note TEXT DEFAULT 'added by a newer version'")
    assert store.get(rid).summary == {"best_val_accuracy": 0.5}
    code, out, err = _cli(capsys, "runs")
    assert code == 0 and rid in out


def test_a_store_of_another_layout_is_named(home, capsys):
    home.mkdir()
    with _db(home) as con:
        con.execute("CREATE TABLE runs (name TEXT, score REAL)")
    code, out, err = _cli(capsys, "runs")
    assert code == 1 and "not laid out as ftlab's run store" in err and "--move-aside" in err


def test_a_read_only_home_lists_and_predicts_but_refuses_writes(home, tmp_path, capsys):
    store = RunStore(home)
    rid = _kept_run(store)
    dead = "20000101-000000-dead00"
    with _db(home) as con:  # a run whose process is long gone
        con.execute("INSERT INTO runs (id, created, updated, status, dataset, backbone, strategy, config, classes, "
                    "split, owner) VALUES (?, 0, 0, 'running', 'digits', 'small_cnn', 'full', '{}', '[]', '{}', "
                    "?)", (dead, f"{socket.gethostname()}:999999999"))
    image = _image(tmp_path)
    assert not (home / "runs.db-shm").exists()  # no shared-memory file: reading must not need to make one
    with read_only(home):
        code, out, err = _cli(capsys, "runs")
        assert code == 0 and rid in out and dead in out
        code, out, err = _cli(capsys, "predict", "--run", rid, image, "--json")
        assert code == 0, err
        code, out, err = _cli(capsys, "runs", "--delete", rid)
        assert code == 1 and "cannot be written" in err
        code, out, err = _cli(capsys, "train", "--backbone", "small_cnn", "--weights", "random", "--epochs", "1")
        assert code == 1 and "cannot be written" in err
    assert RunStore(home).get(rid).status == "finished"


def test_a_home_that_is_a_file_or_empty_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a folder")
    for value, words in ((str(tmp_path / "a-file"), "is a file"), ("", "is set but empty"),
                         ("  ", "is set but empty"), (str(tmp_path / "a-file" / "below"), "is a file")):
        monkeypatch.setenv("FTLAB_HOME", value)
        for argv in (["runs"], ["predict", "--run", new_run_id(), "x.png"],
                     ["train", "--backbone", "small_cnn", "--weights", "random", "--epochs", "1"]):
            code, out, err = _cli(capsys, *argv)
            assert code == 1 and "FTLAB_HOME" in err and words in err, (value, argv, err)
    assert not (tmp_path / "runs.db").exists()  # an empty FTLAB_HOME never puts the store in the cwd


def test_a_locked_store_says_so(home):
    store = RunStore(home)
    rid = _kept_run(store)
    other = sqlite3.connect(home / "runs.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        store.timeout = 0.2
        with pytest.raises(StoreError, match="locked by another process") as caught:
            store.delete(rid)
        assert caught.value.kind == "locked"
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.delete(rid)


# --- item 1 and 7: a full disk ------------------------------------------------------------------

def _fake_torch_save_that_fills_the_disk(obj, fh, *args, **kwargs):
    fh.write(b"PK\x03\x04 half a checkpoint")
    raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 1234 vs 1200")


@pytest.mark.parametrize("where", ["torch.save", "os.replace"])
def test_a_full_disk_keeps_the_previous_checkpoint(home, monkeypatch, where):
    store = RunStore(home)
    rid = new_run_id()
    store.save_checkpoint(rid, _checkpoint(epoch=1))
    if where == "torch.save":
        monkeypatch.setattr(torch, "save", _fake_torch_save_that_fills_the_disk)
    else:
        def replace(*a):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(runs.os, "replace", replace)
    with pytest.raises(StoreError) as caught:
        store.save_checkpoint(rid, _checkpoint(epoch=2))
    message = str(caught.value)
    assert "disk is full" in message and "MB free" in message and "previous checkpoint is kept" in message
    assert "epoch 2" in message and "enforce fail" not in message and "inline_container" not in message
    monkeypatch.undo()
    assert store.load_checkpoint(rid)["epoch"] == 1
    assert [p.name for p in store.run_dir(rid).iterdir()] == ["best.pt"]  # no half-written temporary file


def test_a_full_disk_fails_the_run_cleanly_even_when_the_failure_cannot_be_recorded(home, monkeypatch, capsys):
    store = RunStore(home)
    seen = []

    def save(obj, fh, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def finish(*a, **k):
        runs.RunStore.release(a[0])
        raise store._fault(sqlite3.OperationalError("database or disk is full"), True)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(store, "finish", finish)
    summary = run(TrainConfig(**TINY), store=store, emit=seen.append)
    failed = [e for e in seen if isinstance(e, events.RunFailed)]
    assert summary["stopped_reason"] == "error" and len(failed) == 1
    assert "disk is full" in failed[0].message and "could not be recorded" in failed[0].message
    assert "Traceback" not in failed[0].message and "OSError" not in failed[0].message
    monkeypatch.undo()
    # the record the full disk left 'running' is not stuck: this process no longer trains it
    assert store.mark_interrupted() == 1 and store.get(summary["run_id"]).status == "interrupted"


# --- item 2: no delete from under a training run ---------------------------------------------------

@contextmanager
def _training_elsewhere(home: Path, rid: str):
    """Another process that has created run ``rid`` in ``home`` and trains it (holds it) until the block ends."""
    trainer = subprocess.Popen(
        [sys.executable, "-c", f"import sys; from ftlab.runs import RunStore; "
                               f"RunStore({str(home)!r}).create({rid!r}, {CONFIG!r}); print('made', flush=True); "
                               "sys.stdin.read()"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert trainer.stdout.readline().strip() == "made"
        yield
    finally:
        trainer.kill()
        trainer.wait()


def test_a_run_training_in_another_process_cannot_be_deleted(home, capsys):
    rid = new_run_id()
    with _training_elsewhere(home, rid):
        with pytest.raises(StoreError, match=f"run {rid} is still training; stop it first"):
            RunStore(home).delete(rid)
        code, out, err = _cli(capsys, "runs", "--delete", rid)
        assert code == 1 and "still training" in err
        assert RunStore(home).get(rid).status == "running"
    code, out, err = _cli(capsys, "runs", "--delete", rid)  # its process is gone: interrupted, then deletable
    assert code == 0 and f"deleted {rid}" in out


def test_a_run_of_this_process_is_deletable_once_its_trainer_ended(home):
    store, rid = _training(home)
    with pytest.raises(StoreError, match="still training"):
        store.delete(rid)
    store.release(rid)  # the trainer ended without recording it (a crash): not undeletable forever
    store.delete(rid)


def test_a_reused_pid_does_not_keep_a_run_undeletable(home):
    store, rid = _training(home)
    with _db(home) as con:  # pid 1 is alive, but it started long before this owner
        con.execute("UPDATE runs SET owner = ? WHERE id = ?", (f"{socket.gethostname()}:1:1", rid))
    store.delete(rid)


@pytest.mark.parametrize("pid", ["0", "99999999999999999999", "\u00b2", "-1", " 1", "1.0", ""])
def test_an_odd_owner_pid_on_this_machine_is_not_alive(home, pid):
    store, rid = _training(home)
    store.release(rid)
    with _db(home) as con:  # pid 0 would ask this process's own group; the others are no pid at all
        con.execute("UPDATE runs SET owner = ? WHERE id = ?", (f"{socket.gethostname()}:{pid}:1", rid))
    assert store.mark_interrupted() == 1
    store.delete(rid)


def test_a_huge_run_id_is_named_short_and_quoted(home):
    with pytest.raises(KeyError) as caught:
        RunStore(home).get("x" * 100_000)
    shown = str(caught.value.args[0]).split(" is not a run id")[0]
    assert shown == "'" + "x" * 55 + "...'"


def test_deleting_an_unknown_run_makes_no_store(home):
    with pytest.raises(KeyError, match="unknown run"):
        RunStore(home).delete("20250101-120000-a1b2c3")
    assert not (home / "runs.db").exists()


def test_a_run_deleted_anyway_fails_with_a_sentence(home):
    store, rid = _training(home)
    with _db(home) as con:
        con.execute("DELETE FROM runs WHERE id = ?", (rid,))
    with pytest.raises(StoreError, match="deleted from the store"):
        store.add_epoch(rid, 1, {"epoch": 1})


# --- item 3 and 6: runs are found by id, in the store ------------------------------------------------

@pytest.mark.parametrize("given", ["..", "../..", "runs/../..", "OUTSIDE", "20250101-120000-a1b2c3/../x"])
def test_predict_takes_only_run_ids(home, tmp_path, capsys, given):
    outside = tmp_path / "elsewhere"
    (outside / "runs" / "x").mkdir(parents=True)
    for folder in (outside, outside / "runs" / "x", home / "runs"):
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(_checkpoint(), folder / "best.pt")
    given = str(outside) if given == "OUTSIDE" else given
    code, out, err = _cli(capsys, "predict", "--run", given, _image(tmp_path))
    assert code == 1 and "is not a run id" in err and not out


def test_predict_for_an_unknown_run_says_unknown(home, tmp_path, capsys):
    _kept_run(RunStore(home))
    code, out, err = _cli(capsys, "predict", "--run", "20250101-120000-a1b2c3", _image(tmp_path))
    assert code == 1 and "unknown run 20250101-120000-a1b2c3" in err and "no checkpoint" not in err


# --- item 4: crafted checkpoint metadata -----------------------------------------------------------

CRAFTED = {
    "no classes": lambda c: c.update(classes=[]),
    "short class list": lambda c: c.update(classes=["a", "b"]),
    "classes not names": lambda c: c.update(classes=[1, 2, 3]),
    "classes twice": lambda c: c.update(classes=["a", "a", "b"]),
    "config a string": lambda c: c.update(config="full fine-tuning"),
    "config a list": lambda c: c.update(config=[1, 2]),
    "config of the wrong type": lambda c: c["config"].update(color_jitter="lots"),
    "config out of range": lambda c: c["config"].update(color_jitter=1e9),
    "image size huge": lambda c: c.update(image_size=10**6),
    "image size text": lambda c: c.update(image_size="16"),
    "image size missing": lambda c: c.pop("image_size"),
    "hidden huge": lambda c: c.update(hidden=10**9),
    "dropout out of range": lambda c: c.update(dropout=5.0),
    "class count huge": lambda c: c.update(num_classes=10**9),
    "class count a bool": lambda c: c.update(num_classes=True),
    "model holds text": lambda c: c["model"].update({"head.1.bias": "zeros"}),
    "weights not finite": lambda c: c["model"]["head.1.bias"].fill_(float("nan")),
    "backbone not a name": lambda c: c.update(backbone=["small_cnn"]),
}


@pytest.mark.parametrize("craft", CRAFTED, ids=list(CRAFTED))
def test_a_checkpoint_with_crafted_metadata_is_refused_with_a_sentence(home, tmp_path, capsys, craft):
    checkpoint = _checkpoint()
    CRAFTED[craft](checkpoint)
    with pytest.raises(CheckpointError):
        Predictor(checkpoint)
    store = RunStore(home)
    rid = _kept_run(store)
    torch.save(checkpoint, store.checkpoint_path(rid))
    code, out, err = _cli(capsys, "predict", "--run", rid, _image(tmp_path))
    assert code == 1 and f"run {rid}'s checkpoint" in err and not out, err


# --- item 8 and more: files torch refuses --------------------------------------------------------

class Exploit:
    def __reduce__(self):
        return (os.system, ("touch EXPLOITED",))


def _evil(path: Path) -> Path:
    with open(path, "wb") as fh:
        pickle.dump({"model": Exploit(), "backbone": "small_cnn"}, fh)
    return path


def test_refused_files_never_advise_weights_only_false(home, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    store = RunStore(home)
    rid = _kept_run(store)
    _evil(store.checkpoint_path(rid))
    code, out, err = _cli(capsys, "predict", "--run", rid, _image(tmp_path))
    assert code == 1 and "refused" in err
    evil = _evil(tmp_path / "evil.pt")
    code, out, err = _cli(capsys, "train", "--backbone", "small_cnn", "--weights", str(evil), "--epochs", "1",
                          "--image-size", "16")
    assert code == 1 and "refused" in err
    with pytest.raises(backbones.WeightsUnavailable, match="refused") as caught:
        backbones.create_model("small_cnn", 2, str(evil))
    for text in (err, str(caught.value)):
        assert "weights_only" not in text and "Re-running" not in text and "trust" not in text
    assert not (tmp_path / "EXPLOITED").exists()


def test_a_file_in_the_hub_cache_that_holds_code_is_refused_without_the_advice(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    _evil(tmp_path / "hub" / "checkpoints" / Path(url).name)
    with pytest.raises(backbones.WeightsUnavailable) as caught:
        backbones.create_model("resnet18", 2, "imagenet")
    assert "refused" in str(caught.value) and "weights_only" not in str(caught.value)


def test_a_checkpoint_cut_short_replaced_by_a_folder_or_empty_says_so(home, tmp_path, capsys):
    store = RunStore(home)
    image = _image(tmp_path)
    cases = {"cut short": lambda p: p.write_bytes(p.read_bytes()[:200]),
             "empty or cut short": lambda p: p.write_bytes(b""),
             "is a folder": lambda p: (p.unlink(), p.mkdir())}
    for words, spoil in cases.items():
        rid = _kept_run(store)
        spoil(store.checkpoint_path(rid))
        code, out, err = _cli(capsys, "predict", "--run", rid, image)
        assert code == 1 and words in err, (words, err)


def test_a_checkpoint_path_that_is_a_folder_fails_the_save_with_a_sentence(home):
    store = RunStore(home)
    rid = new_run_id()
    store.checkpoint_path(rid).mkdir(parents=True)
    with pytest.raises(StoreError, match="is a folder, not a checkpoint file"):
        store.save_checkpoint(rid, _checkpoint())


def test_concurrent_writers_lose_no_epoch(home):
    store = RunStore(home)
    ids = [new_run_id() for _ in range(3)]
    code = ("import sys; from ftlab.runs import RunStore; s = RunStore(sys.argv[1]); rid = sys.argv[2]; "
            "s.create(rid, {'dataset': 'digits', 'backbone': 'small_cnn', 'strategy': 'full'}); "
            "[s.add_epoch(rid, e, {'epoch': e}) for e in range(1, 41)]; s.finish(rid, 'finished', {})")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(home), rid], cwd=ROOT) for rid in ids]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    for rid in ids:
        assert [e["epoch"] for e in store.epochs(rid)] == list(range(1, 41))
        assert store.get(rid).status == "finished"


# --- the pages: store faults as sentences, a deleted run said so --------------------------------------

@pytest.fixture
def app_home(tmp_path, monkeypatch):
    """The app with its runs under tmp_path, offline, and no job or cache left for the next test."""
    import streamlit as st

    home = tmp_path / "app-home"
    monkeypatch.setenv("FTLAB_HOME", str(home))
    monkeypatch.setenv("FTLAB_DATA", str(tmp_path / "data"))
    st.cache_resource.clear()
    st.cache_data.clear()
    yield home
    from ui import resources

    assert resources.registry().stop_all(timeout=60)
    st.cache_resource.clear()
    st.cache_data.clear()


def _page(page: str, **query):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.query_params.update(query)
    at.run()
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_pages_name_a_damaged_store_and_move_it_aside_only_on_request(app_home):
    app_home.mkdir()
    (app_home / "runs.db").write_bytes(b"not sqlite at all " * 200)
    before = (app_home / "runs.db").read_bytes()
    for page in ("app_pages/runs.py", "app_pages/inspect_run.py"):
        at = _page(page)
        assert any("damaged" in e.value for e in at.error), page
    assert (app_home / "runs.db").read_bytes() == before
    at.button(key="store.move_aside").click().run()
    assert not at.exception and any("moved" in s.value for s in at.success)
    assert [p.read_bytes() for p in app_home.glob("runs.db.damaged-*")] == [before]
    at.switch_page("app_pages/runs.py").run()
    assert not at.exception and not at.error and any("No runs yet" in i.value for i in at.info)


def test_the_pages_name_a_home_that_is_a_file(app_home):
    app_home.write_text("a file")
    for page in ("app_pages/runs.py", "app_pages/inspect_run.py"):
        at = _page(page)
        assert any("is a file" in e.value for e in at.error), page


def test_a_deleted_run_opened_by_its_url_says_it_was_deleted(app_home):
    from ui import resources

    job = resources.registry().start(TrainConfig(**TINY), RunStore(app_home))
    assert job.join(timeout=240)
    RunStore(app_home).delete(job.run_id)
    at = _page("app_pages/train.py", run=job.run_id)
    assert any("was deleted" in w.value for w in at.warning), [m.value for m in (*at.success, *at.warning)]
    assert not any("kept" in m.value for m in (*at.success, *at.warning, *at.info))


def test_the_runs_page_refuses_to_delete_a_run_training_in_another_process(app_home):
    rid = new_run_id()
    with _training_elsewhere(app_home, rid):
        at = _page("app_pages/runs.py")
        at.button(key="runs.delete").click().run()
        at.button(key="runs.delete_confirm").click().run()
        assert not at.exception
        assert any("still training" in i.value for i in at.info), [i.value for i in at.info]
        assert RunStore(app_home).get(rid).status == "running"


def test_the_train_page_says_a_read_only_home_cannot_be_written(app_home):
    app_home.mkdir()
    with read_only(app_home):
        at = _page("app_pages/train.py")
        at.number_input(key="cfg.epochs").set_value(1)
        at.button(key="train.start").click().run()
        from ui import resources

        assert resources.registry().get(at.session_state["train.job"]).join(timeout=60)
        at.run()
        assert not at.exception
        assert any("cannot be written" in e.value for e in at.error), [e.value for e in at.error]


# --- more of the same, found by the second pass ---------------------------------------------------------

def test_a_store_from_before_runs_named_their_process_is_upgraded_not_refused(home, capsys):
    home.mkdir()
    rid = new_run_id()
    with _db(home) as con:
        con.executescript(runs._SCHEMA.replace(",\n    owner TEXT NOT NULL DEFAULT ''   -- host:pid of the process "
                                               "training it", ""))
        con.execute("INSERT INTO runs (id, created, updated, status, dataset, backbone, strategy, config, classes, "
                    "split) VALUES (?, 0, 0, 'finished', 'digits', 'small_cnn', 'full', '{}', '[]', '{}')", (rid,))
        assert "owner" not in {row[1] for row in con.execute("PRAGMA table_info(runs)")}
    code, out, err = _cli(capsys, "runs")
    assert code == 0 and rid in out
    store = RunStore(home)
    store.create(new_run_id(), CONFIG)  # the first write adds the column
    assert len(store.list()) == 2


def test_a_checkpoint_that_is_a_pipe_does_not_hang(home, tmp_path, capsys):
    import threading

    fifo = tmp_path / "best.pt"
    os.mkfifo(fifo)
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(pytest.raises(CheckpointError, checkpoints.load_file,
                                                                          fifo)), daemon=True)
    reader.start()
    reader.join(timeout=20)
    if reader.is_alive():  # unblock the reader so the test run can end
        with open(fifo, "wb"):
            pass
        pytest.fail("loading a pipe as a checkpoint blocked")
    assert "not a regular file" in str(outcome[0].value)
    store = RunStore(home)
    rid = _kept_run(store)
    store.checkpoint_path(rid).unlink()
    os.mkfifo(store.checkpoint_path(rid))
    code, out, err = _cli(capsys, "predict", "--run", rid, _image(tmp_path))
    assert code == 1 and "not a regular file" in err


def test_the_runs_listing_prints_under_a_strict_utf8_stdout(home):
    store = RunStore(home)
    rid = new_run_id()
    store.create(rid, {**CONFIG, "dataset": "/data/caf\udce9"})  # a folder name that is not UTF-8
    store.finish(rid, "finished", {"best_val_accuracy": "n/a"})
    done = subprocess.run([sys.executable, "-m", "ftlab", "runs"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8:strict", "FTLAB_HOME": str(home)})
    assert done.returncode == 0 and rid in done.stdout and "Traceback" not in done.stderr, done.stderr
    assert "caf\\xe9" in done.stdout  # the byte that is not UTF-8, as an escape


def test_another_machines_run_is_deletable_once_its_heartbeat_stops(home):
    store, rid = _training(home)
    with _db(home) as con:
        con.execute("UPDATE runs SET owner = 'another-machine:4242:1', updated = ? WHERE id = ?", (time.time(), rid))
    with pytest.raises(StoreError, match="still training"):
        store.delete(rid)
    assert store.mark_interrupted() == 0
    with _db(home) as con:  # its process was killed: no heartbeat for longer than STALE_S
        con.execute("UPDATE runs SET updated = ? WHERE id = ?", (time.time() - runs.STALE_S - 60, rid))
    assert store.mark_interrupted() == 1
    store.delete(rid)


def test_a_training_process_marks_its_runs_alive(home):
    store, rid = _training(home)
    with _db(home) as con:
        con.execute("UPDATE runs SET updated = 0 WHERE id = ?", (rid,))
    runs.beat()
    assert time.time() - store.get(rid).updated < 60
    store.finish(rid, "finished", {})
    with _db(home) as con:
        con.execute("UPDATE runs SET updated = 0 WHERE id = ?", (rid,))
    runs.beat()  # an ended run is not marked
    assert store.get(rid).updated == 0


def test_predict_prints_a_non_utf8_class_name_under_a_strict_utf8_stdout(home, tmp_path):
    store, rid = _training(home)
    checkpoint = _checkpoint()
    checkpoint["classes"] = ["caf\udce9", "b", "c"]  # a class folder whose name is not UTF-8
    store.save_checkpoint(rid, checkpoint)
    store.finish(rid, "finished", {})
    done = subprocess.run([sys.executable, "-m", "ftlab", "predict", "--run", rid, _image(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8:strict", "FTLAB_HOME": str(home)})
    assert done.returncode == 0 and "caf\\xe9" in done.stdout, done.stderr
