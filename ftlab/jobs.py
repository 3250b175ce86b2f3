"""Background training jobs of one process, by run id.

The app keeps one registry per server process (under ``st.cache_resource``), so a run outlives
reruns, page switches and browser refreshes: a page finds its job by the id in its session,
and a new session (a refreshed browser) finds the newest job still running. Nothing here
imports Streamlit.
"""
from __future__ import annotations

import threading

from ftlab.config import TrainConfig
from ftlab.engine import Job
from ftlab.runs import RunStore

END_STATUSES = frozenset({"finished", "stopped", "failed"})
KEEP_ENDED = 20  # ended jobs kept for their snapshots; their records are in the RunStore anyway


class JobBusy(RuntimeError):
    """The owner already has a job running; the message names it."""


class JobRegistry:
    """Start jobs, look them up by run id, list the running ones, stop them.

    ``owner`` (a browser session, say) may run one job at a time, so a double click or a
    rerun never starts the same run twice.
    """

    def __init__(self, keep_ended: int = KEEP_ENDED):
        self._jobs: dict[str, Job] = {}  # in start order
        self._owners: dict[str, str] = {}  # run id -> owner
        self._lock = threading.Lock()
        self._keep_ended = keep_ended

    def start(self, config: TrainConfig, store: RunStore, owner: str | None = None) -> Job:
        with self._lock:  # the check and the start together: two clicks cannot both pass the check
            if owner is not None:
                busy = [j for j in self._jobs.values() if self._owners.get(j.run_id) == owner and j.alive]
                if busy:
                    raise JobBusy(f"Run {busy[-1].run_id} is still running; stop it before starting another.")
            job = Job(config, store)
            self._jobs[job.run_id] = job
            if owner is not None:
                self._owners[job.run_id] = owner
            job.start()
            self._prune()
        return job

    def get(self, run_id: str | None) -> Job | None:
        with self._lock:
            return self._jobs.get(run_id) if run_id else None

    def running(self) -> list[Job]:
        """Jobs whose thread is still alive, newest first."""
        with self._lock:
            return [j for j in reversed(self._jobs.values()) if j.alive]

    def latest_running(self) -> Job | None:
        jobs = self.running()
        return jobs[0] if jobs else None

    def is_running(self, run_id: str) -> bool:
        job = self.get(run_id)
        return job is not None and job.alive

    def stop(self, run_id: str) -> bool:
        """Ask a job to stop (it ends within one batch); False when no such job is running."""
        job = self.get(run_id)
        if job is None or not job.alive:
            return False
        job.stop()
        return True

    def stop_all(self, timeout: float | None = None) -> bool:
        """Stop every job and wait for them; True when all ended within ``timeout`` each."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.stop()
        return all([job.join(timeout) for job in jobs])

    def _prune(self) -> None:
        ended = [rid for rid, j in self._jobs.items() if not j.alive]
        for rid in ended[:max(0, len(ended) - self._keep_ended)]:
            del self._jobs[rid]
            self._owners.pop(rid, None)
