"""Soak: many short runs back to back through the background runner, stopped at random points."""
import gc
import random
import time

import pytest

from ftlab import engine, events, jobs
from ftlab.config import TrainConfig
from ftlab.runs import RunStore


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        import os
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# Memory is compared once every configuration of the loop (4 strategies x 3 seeds) has run: until
# then the feature cache legitimately gains entries (12, within its budget), and how much of that
# shows in the RSS depends on what earlier tests left free in the process (whole suite: 1.14 -> 1.39 GB
# over the 20 runs once, 1.44 -> 1.52 GB another time, flat from run 10 on; alone: 1.15 -> 1.22 GB).
# A leaked run (its decoded images, model, optimiser and features) adds its size again every run:
# keeping 8 MB a run failed this check with 72 MB.
WARM = 12
LEAK_MB = 32


@pytest.mark.slow
def test_twenty_runs_started_stopped_and_finished_leave_a_consistent_store(tmp_path):
    """Guard: every end of a run (finish, stop in any phase) writes exactly one final status.
    Fails if a stopped job leaves its record 'running', a run is lost or written twice, or
    memory grows run after run (a leaked thread, model or cache entry)."""
    store = RunStore(tmp_path)
    rng = random.Random(0)
    strategies = ["linear-probe", "top-1", "full", "gradual"]
    finished_ids, baseline = [], None
    for i in range(20):
        config = TrainConfig(dataset="digits", backbone="small_cnn", weights="random", image_size=16,
                             batch_size=128, epochs=2, strategy=strategies[i % 4], gradual_every=1, seed=i % 3)
        job = jobs.Job(config, store).start()
        stop_after = rng.choice([None, 0.0, 0.3, 1.0, 2.0])  # None: let it finish
        if stop_after is not None:
            time.sleep(stop_after)
            job.stop()
        assert job.join(timeout=120), f"run {i} did not end"
        snap = job.snapshot()
        assert snap.status in ("finished", "stopped"), snap.message
        assert isinstance(snap.end, events.END_EVENTS)

        records = store.list()
        assert len(records) == i + 1 and len({r.id for r in records}) == i + 1
        assert not [r for r in records if r.status == "running"]
        record = store.get(job.run_id)
        assert record.status == snap.status
        assert len(store.epochs(job.run_id)) == record.summary["epochs_run"]
        if record.summary["epochs_run"]:
            assert store.load_checkpoint(job.run_id)["epoch"] == record.summary["best_epoch"]
        finished_ids.append(job.run_id)
        gc.collect()
        if i == WARM - 1:
            baseline = rss_bytes()
    import threading
    grown = (rss_bytes() - baseline) / 2**20
    assert grown <= LEAK_MB, (f"{grown:.0f} MB more after the last {20 - WARM} runs", [t.name for t in threading.enumerate()])
    assert {r.id for r in store.list()} == set(finished_ids)
