"""The run store: records survive, checkpoints are whole or absent, nothing is unpickled."""
import os
import pickle
import select
import subprocess
import sys
import textwrap

import pytest
import torch

from ftlab.checkpoints import CheckpointError, load_file as load_checkpoint_file
from ftlab.runs import RunStore, new_run_id

CONFIG = {"dataset": "digits", "backbone": "small_cnn", "strategy": "full"}
DEAD = "20000101-000000-dead00"  # a run id of the form the store makes


def test_records_round_trip_and_survive_a_new_store(tmp_path):
    store = RunStore(tmp_path)
    rid = new_run_id()
    store.create(rid, CONFIG)
    store.set_data(rid, ["a", "b"], {"train": [0, 2], "val": [1], "test": [], "seed": 0})
    store.add_epoch(rid, 1, {"epoch": 1, "val_accuracy": 0.5})
    store.add_epoch(rid, 2, {"epoch": 2, "val_accuracy": 0.75})
    store.finish(rid, "finished", {"best_val_accuracy": 0.75}, {"val": {"confusion": [[1, 0], [0, 1]]}})

    again = RunStore(tmp_path)  # as after a restart of the app
    record = again.get(rid)
    assert record.status == "finished" and record.classes == ["a", "b"]
    assert record.split["train"] == [0, 2] and record.summary["best_val_accuracy"] == 0.75
    assert [e["val_accuracy"] for e in again.epochs(rid)] == [0.5, 0.75]
    assert [r.id for r in again.list()] == [rid]


def test_delete_removes_record_epochs_and_checkpoint(tmp_path):
    store = RunStore(tmp_path)
    rid = new_run_id()
    store.create(rid, CONFIG)
    store.add_epoch(rid, 1, {"epoch": 1})
    store.save_checkpoint(rid, {"model": {"w": torch.ones(2)}, "backbone": "small_cnn"})
    store.finish(rid, "finished", {})  # a run still training is not deletable
    store.delete(rid)
    assert store.list() == [] and store.epochs(rid) == []
    assert not store.run_dir(rid).exists()
    with pytest.raises(KeyError, match="ftlab runs"):
        store.get(rid)


def test_a_restart_marks_runs_of_dead_processes_interrupted(tmp_path):
    """Guard: mark_interrupted checks the owner process. Without the status change a run whose
    process died would show 'running' forever; without the liveness check a run still training
    in another live process would be marked too."""
    store = RunStore(tmp_path)
    done, mine = new_run_id(), new_run_id()
    for rid in (done, mine):
        store.create(rid, CONFIG)
    store.finish(done, "finished", {})
    # a run created by a process that has since exited
    code = ("import sys; from ftlab.runs import RunStore; "
            f"RunStore({str(tmp_path)!r}).create({DEAD!r}, {CONFIG!r})")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert store.get(DEAD).status == "running"
    assert store.mark_interrupted() == 1
    assert store.get(DEAD).status == "interrupted" and "checkpoint is kept" in store.get(DEAD).message
    assert store.get(mine).status == "running" and store.get(done).status == "finished"


def test_checkpoint_replaced_whole(tmp_path):
    store = RunStore(tmp_path)
    rid = new_run_id()
    store.save_checkpoint(rid, {"model": {"w": torch.zeros(3)}, "backbone": "small_cnn", "epoch": 1})
    store.save_checkpoint(rid, {"model": {"w": torch.ones(3)}, "backbone": "small_cnn", "epoch": 2})
    loaded = store.load_checkpoint(rid)
    assert loaded["epoch"] == 2 and torch.equal(loaded["model"]["w"], torch.ones(3))
    assert [p.name for p in store.run_dir(rid).iterdir()] == ["best.pt"]  # no temporary files left


def test_a_killed_writer_leaves_the_previous_checkpoint(tmp_path):
    """Guard: save_checkpoint writes a temporary file and renames it. The writer is held half-way
    through torch.save (no race with the disk's speed) and killed there: the half-written bytes must
    be in a file of their own, and best.pt still the previous epoch. Writing in place would leave a
    truncated best.pt."""
    store = RunStore(tmp_path)
    rid = new_run_id()
    store.save_checkpoint(rid, {"model": {"w": torch.zeros(4)}, "backbone": "small_cnn", "epoch": 1})
    writer = textwrap.dedent(f"""
        import io, sys, torch
        from ftlab.runs import RunStore

        real_save = torch.save

        def half_then_hang(obj, fh):
            buf = io.BytesIO()
            real_save(obj, buf)
            fh.write(buf.getvalue()[:len(buf.getvalue()) // 2])
            fh.flush()
            print("half written", flush=True)
            sys.stdin.readline()  # until the test kills this process

        torch.save = half_then_hang
        store = RunStore({str(tmp_path)!r})
        store.save_checkpoint({rid!r}, {{"model": {{"w": torch.ones(100_000)}}, "backbone": "small_cnn", "epoch": 2}})
        print("done", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready and proc.stdout.readline().strip() == "half written", "the writer never reached torch.save"
        others = [p for p in store.run_dir(rid).iterdir() if p.name != "best.pt"]
        assert len(others) == 1 and others[0].stat().st_size > 0, "the half-written bytes went into best.pt"
        assert store.load_checkpoint(rid)["epoch"] == 1
    finally:
        proc.kill()
        proc.wait()
    loaded = store.load_checkpoint(rid)
    assert loaded["epoch"] == 1 and torch.equal(loaded["model"]["w"], torch.zeros(4))


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch EXPLOITED",))


def test_a_malicious_pickle_is_refused_without_running(tmp_path, monkeypatch):
    """Guard: torch.load(weights_only=True). With weights_only=False the payload would run."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"model": Exploit(), "backbone": "small_cnn"}, fh)
    with pytest.raises(CheckpointError, match="could not be loaded safely"):
        load_checkpoint_file(path)
    assert not (tmp_path / "EXPLOITED").exists()


def test_a_missing_checkpoint_says_why(tmp_path):
    store = RunStore(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        store.load_checkpoint(new_run_id())
