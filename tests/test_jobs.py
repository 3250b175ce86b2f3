"""The process-wide job registry: one running job per owner, lookup, the newest running job, stop."""
from __future__ import annotations

import time

import pytest

from ftlab.config import TrainConfig
from ftlab.jobs import Job, JobBusy, JobRegistry
from ftlab.runs import RunStore

LONG = TrainConfig(dataset="digits", backbone="small_cnn", weights="random", image_size=16, epochs=500,
                   batch_size=64)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("FTLAB_OFFLINE", "1")
    return RunStore(tmp_path / "home")


@pytest.fixture
def registry():
    reg = JobRegistry(keep_ended=1)
    yield reg
    assert reg.stop_all(timeout=60)


def test_one_running_job_per_owner(registry, store, monkeypatch):
    monkeypatch.setenv("FTLAB_MAX_CONCURRENT", "2")  # both train at once (a CPU machine's default queues bob's)
    first = registry.start(LONG, store, owner="alice")
    with pytest.raises(JobBusy, match=first.run_id):
        registry.start(LONG, store, owner="alice")
    second = registry.start(LONG, store, owner="bob")
    assert registry.get(first.run_id) is first and registry.get("nope") is None
    assert [j.run_id for j in registry.running()] == [second.run_id, first.run_id]
    assert registry.latest_running() is second


def test_stop_ends_the_job_and_frees_the_owner(registry, store):
    job = registry.start(LONG, store, owner="alice")
    assert registry.stop(job.run_id)
    assert job.join(timeout=60)
    assert job.snapshot().status == "stopped" and store.get(job.run_id).status == "stopped"
    assert not registry.is_running(job.run_id) and registry.latest_running() is None
    assert not registry.stop(job.run_id)  # nothing left to stop
    registry.start(LONG, store, owner="alice")  # the owner may start again


def test_ended_jobs_are_pruned_beyond_the_limit(registry, store):
    bad = TrainConfig(dataset="/no/such/folder")  # fails at once, in its thread
    jobs = [registry.start(bad, store) for _ in range(3)]
    for job in jobs:
        assert job.join(timeout=60) and job.snapshot().status == "failed"
    last = registry.start(bad, store)
    last.join(timeout=60)
    # the newest ended job is kept, the oldest are dropped ("<= 1" alone held for a registry that kept none)
    assert registry.get(last.run_id) is last
    assert registry.get(jobs[0].run_id) is None and registry.get(jobs[1].run_id) is None
    assert sum(registry.get(j.run_id) is not None for j in jobs) <= 1


def test_a_job_is_active_until_its_end_event_not_only_while_its_thread_lives(tmp_path):
    """`Job.active` (what the Train page's Start/Stop follow): preparing or training, not ended."""
    import threading

    from training_gate import hold_training

    gate = threading.Event()
    undo = hold_training(gate.is_set)
    try:
        job = Job(TrainConfig(dataset="digits", backbone="small_cnn", weights="random", image_size=16,
                              epochs=1, batch_size=256), RunStore(tmp_path / "home")).start()
        deadline = time.monotonic() + 120
        while job.snapshot().last_step is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job.snapshot().last_step is not None and job.active  # held after its first step
    finally:
        gate.set()
        undo()
    assert job.join(timeout=120)
    assert not job.active and job.snapshot().status == "finished"
