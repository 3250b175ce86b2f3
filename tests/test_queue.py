"""The training queue of a classroom server (`ftlab.jobs.JobRegistry`): at most FTLAB_MAX_CONCURRENT runs
train at once, later Starts wait first come first served, a session has at most FTLAB_RUNS_PER_SESSION runs
queued or training, a queued run can leave, and a slot frees whichever way a run ends."""
from __future__ import annotations

import threading
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest
from training_gate import hold_training

from ftlab import jobs
from ftlab.config import TrainConfig
from ftlab.jobs import JobBusy, JobRegistry, estimate_seconds
from ftlab.paths import SettingError
from ftlab.runs import RunStore

QUICK = TrainConfig(dataset="digits", backbone="small_cnn", weights="random", image_size=16, epochs=1, batch_size=256)
BAD = TrainConfig(dataset="/no/such/folder")  # fails at once, in its thread, before any record


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "home")


@pytest.fixture
def gate():
    """Runs wait after each step until the test sets this: the first in line keeps its slot."""
    opened = threading.Event()
    undo = hold_training(opened.is_set)
    yield opened
    opened.set()
    undo()


@pytest.fixture
def registry(gate):  # after `gate`: its teardown opens the gate before this one stops the jobs
    reg = JobRegistry()
    yield reg
    gate.set()
    assert reg.stop_all(timeout=120)


def wait_until(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def stepped(job) -> bool:
    return job.snapshot().last_step is not None


def test_a_second_start_waits_and_starts_when_the_first_ends(registry, store, gate, monkeypatch):
    monkeypatch.setenv("FTLAB_MAX_CONCURRENT", "1")
    first = registry.start(QUICK, store, owner="alice")
    second = registry.start(QUICK, store, owner="bob")
    wait_until(lambda: stepped(first), "the first run's first step")
    assert second.queued and not second.alive and second.snapshot().status == "queued"
    assert registry.position(second.run_id) == 1 and registry.position(first.run_id) is None
    assert [j.run_id for j in registry.waiting()] == [second.run_id]
    assert [j.run_id for j in registry.running()] == [first.run_id]
    # a queued run has no record: the Runs page cannot list it as running or interrupted
    assert [r.id for r in store.list()] == [first.run_id]
    assert store.mark_interrupted() == 0
    gate.set()
    assert first.join(timeout=120) and second.join(timeout=120)
    assert {r.id: r.status for r in store.list()} == {first.run_id: "finished", second.run_id: "finished"}
    a, b = store.get(first.run_id), store.get(second.run_id)
    assert b.created >= a.updated - 1e-3, "the queued run started before the first one ended"


def test_the_queue_is_first_come_first_served_with_two_slots(registry, store, gate, monkeypatch):
    monkeypatch.setenv("FTLAB_MAX_CONCURRENT", "2")
    a, b, c, d = (registry.start(QUICK, store, owner=o) for o in "abcd")
    wait_until(lambda: stepped(a) and stepped(b), "both slots to train")
    assert {j.run_id for j in registry.running()} == {a.run_id, b.run_id}
    assert [registry.position(j.run_id) for j in (c, d)] == [1, 2]
    assert "2 runs at a time (2 training now); 2 waiting" in registry.server_text()
    gate.set()
    for job in (a, b, c, d):
        assert job.join(timeout=180)
    records = store.list()
    assert sorted(r.id for r in records) == sorted(j.run_id for j in (a, b, c, d))  # each once
    assert {r.status for r in records} == {"finished"}
    started = {r.id: r.created for r in records}
    assert started[c.run_id] <= started[d.run_id]  # c was in line before d


def test_one_session_may_have_one_run_queued_or_training(registry, store, monkeypatch):
    monkeypatch.setenv("FTLAB_MAX_CONCURRENT", "1")
    registry.start(QUICK, store, owner="alice")
    queued = registry.start(QUICK, store, owner="bob")
    with pytest.raises(JobBusy, match=rf"Run {queued.run_id} is queued \(1st in line\); leave the queue"):
        registry.start(QUICK, store, owner="bob")
    assert len(registry.waiting()) == 1  # the refused Start left nothing in the queue
    monkeypatch.setenv("FTLAB_RUNS_PER_SESSION", "2")
    again = registry.start(QUICK, store, owner="bob")
    assert registry.position(again.run_id) == 2
    with pytest.raises(JobBusy, match="allows 2 runs per session"):
        registry.start(QUICK, store, owner="bob")


def test_leaving_the_queue_frees_the_place_and_leaves_nothing_behind(registry, store, gate, monkeypatch):
    monkeypatch.setenv("FTLAB_MAX_CONCURRENT", "1")
    first = registry.start(QUICK, store, owner="a")
    second, third, fourth = (registry.start(QUICK, store, owner=o) for o in "bcd")
    assert not registry.leave(third.run_id, owner="someone else")  # only its own session takes it out
    assert registry.leave(third.run_id, owner="c")
    assert not registry.leave(third.run_id, owner="c")  # once
    assert third.snapshot().status == "cancelled" and not third.pending and third.join(timeout=1)
    assert [registry.position(j.run_id) for j in (second, fourth)] == [1, 2]
    again = registry.start(QUICK, store, owner="c")  # its place is free: the session may queue again, at the end
    assert registry.position(again.run_id) == 3
    assert not registry.leave(first.run_id)  # a training run is stopped, not left
    gate.set()
    for job in (first, second, fourth, again):
        assert job.join(timeout=180)
    ids = {r.id for r in store.list()}
    assert third.run_id not in ids and len(ids) == 4
    assert third.snapshot().status == "cancelled"  # never started afterwards


@pytest.mark.parametrize("ending", ["stopped", "failed"])
def test_a_run_that_is_stopped_or_fails_frees_its_slot(registry, store, gate, monkeypatch, ending):
    monkeypatch.setenv("FTLAB_MAX_CONCURRENT", "1")
    first = registry.start(QUICK if ending == "stopped" else BAD, store, owner="a")
    second = registry.start(QUICK, store, owner="b")
    if ending == "stopped":
        wait_until(lambda: stepped(first), "the first run's first step")
        assert second.queued
        assert registry.stop(first.run_id)
        gate.set()  # after the stop: the held step returns and the run finds the stop at the next batch
    assert first.join(timeout=120) and first.snapshot().status == ending
    wait_until(lambda: not second.queued, "the queued run to start")
    assert registry.position(second.run_id) is None
    gate.set()
    assert second.join(timeout=120) and store.get(second.run_id).status == "finished"
    if ending == "stopped":
        assert store.get(first.run_id).status == "stopped"
        assert store.get(second.run_id).created >= store.get(first.run_id).updated - 1e-3


def test_stop_takes_a_queued_run_out_and_stop_all_empties_the_queue(registry, store, monkeypatch):
    monkeypatch.setenv("FTLAB_MAX_CONCURRENT", "1")
    registry.start(QUICK, store, owner="a")
    b, c = registry.start(QUICK, store, owner="b"), registry.start(QUICK, store, owner="c")
    assert registry.stop(b.run_id) and b.snapshot().status == "cancelled"
    assert registry.stop_all(timeout=120)
    assert c.snapshot().status == "cancelled" and registry.waiting() == []
    assert c.run_id not in {r.id for r in store.list()}


def test_simultaneous_starts_are_each_started_once(registry, store, gate, monkeypatch):
    """Twelve sessions press Start at the same moment on a two-slot server: twelve jobs, two training,
    ten in line, positions 1..10; then every one trains once."""
    monkeypatch.setenv("FTLAB_MAX_CONCURRENT", "2")
    barrier, made = threading.Barrier(12), []
    def press(owner: str) -> None:
        barrier.wait()
        made.append(registry.start(QUICK, store, owner=owner))
    threads = [threading.Thread(target=press, args=(f"s{i}",)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({j.run_id for j in made}) == 12
    assert sorted(registry.position(j.run_id) or 0 for j in made) == [0, 0, *range(1, 11)]
    gate.set()
    for job in made:
        assert job.join(timeout=300)
    records = store.list()
    assert len(records) == 12 and {r.status for r in records} == {"finished"}


@pytest.mark.parametrize("name, value", [("FTLAB_MAX_CONCURRENT", "0"), ("FTLAB_MAX_CONCURRENT", "two"),
                                         ("FTLAB_MAX_CONCURRENT", "1.5"), ("FTLAB_RUNS_PER_SESSION", "-1")])
def test_a_bad_setting_is_refused_with_a_sentence(registry, store, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingError) as err:
        registry.start(QUICK, store, owner="a")
    assert f"{name}={value!r} cannot be used: it takes a whole number of at least 1" in str(err.value)
    assert registry.waiting() == [] and registry.running() == [] and store.list() == []
    with pytest.raises(SettingError, match=name):
        registry.server_text()


def test_the_default_is_one_run_at_a_time_on_a_machine_without_cuda(monkeypatch):
    monkeypatch.delenv("FTLAB_MAX_CONCURRENT", raising=False)
    monkeypatch.delenv("FTLAB_RUNS_PER_SESSION", raising=False)
    monkeypatch.setattr(jobs, "_gpus", lambda: 0)
    assert jobs.limits() == jobs.Limits(1, 1)
    monkeypatch.setattr(jobs, "_gpus", lambda: 4)  # one per GPU
    assert jobs.max_concurrent() == 4


def record(run_id: str, wall: float, **config) -> SimpleNamespace:
    return SimpleNamespace(id=run_id, status=config.pop("status", "finished"), created=1000.0, updated=1000.0 + wall,
                           config=QUICK.to_dict() | config)


def test_a_queued_runs_duration_comes_from_finished_runs_like_it():
    runs = [record("a", 100.0), record("b", 80.0), record("c", 500.0, backbone="resnet18"),
            record("d", 900.0, status="stopped"), record("e", 70.0)]
    passes = {"a": [20.0, 20.0], "b": [10.0, 30.0], "e": [30.0]}
    # a: 60 s outside its passes + 3 x 20; b: 40 + 3 x 20; e: 40 + 3 x 30; c and d are not like it
    three = replace(QUICK, epochs=3)
    assert estimate_seconds(three, runs, lambda i: [{"seconds": s} for s in passes.get(i, [])]) == 120.0
    assert estimate_seconds(TrainConfig(), runs, lambda i: []) is None  # nothing like it: unknown


def test_the_wait_counts_the_running_run_and_those_ahead(registry, store, gate, monkeypatch):
    monkeypatch.setenv("FTLAB_MAX_CONCURRENT", "1")
    first = registry.start(QUICK, store, owner="a")
    second, third = registry.start(QUICK, store, owner="b"), registry.start(QUICK, store, owner="c")
    wait_until(lambda: stepped(first), "the first run's first step")
    left = first.snapshot().last_step.seconds_left
    assert registry.wait(second.run_id) == pytest.approx(left)
    assert registry.queue_text(second.run_id) == f"queued: 1st in line, {jobs.wait_words(left)}"
    # nothing like the second has finished here yet: the third's wait is not invented
    assert registry.queue_text(third.run_id) == "queued: 2nd in line, wait unknown"
    assert registry.queue_text(first.run_id) == ""


def test_an_estimate_kept_from_before_a_run_ended_is_dropped_when_it_ends(registry, store, gate, monkeypatch):
    monkeypatch.setenv("FTLAB_MAX_CONCURRENT", "1")
    first = registry.start(QUICK, store, owner="a")
    wait_until(lambda: stepped(first), "the first run's first step")
    assert registry.run_seconds(QUICK, store) is None  # nothing like it has finished: unknown, and kept a while
    gate.set()
    assert first.join(120) and store.get(first.run_id).status == "finished"
    # the kept "unknown" is dropped at the first run's end: the next wait is figured from it, not unknown
    # for the rest of `ESTIMATE_TTL_S`
    assert registry.run_seconds(QUICK, store) is not None
