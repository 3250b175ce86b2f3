"""Background training jobs: ``Job`` runs ``engine.run`` in a thread; a registry keeps one
process's jobs by run id.

The app keeps one registry per server process (under ``st.cache_resource``), so a run outlives
reruns, page switches and browser refreshes: a page finds its job by the id in its session,
and a new session (a refreshed browser) finds the newest job still running. Nothing here
imports Streamlit.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, replace

from ftlab import events
from ftlab.config import TrainConfig
from ftlab.engine import run, user_message
from ftlab.native import release_idle_openmp_threads
from ftlab.runs import RunStore, new_run_id

END_STATUSES = frozenset({"finished", "stopped", "failed"})
KEEP_ENDED = 20  # ended jobs kept for their snapshots; their records are in the RunStore anyway


@dataclass
class JobSnapshot:
    """What a page shows of a job, copied under the job's lock."""

    run_id: str
    status: str  # preparing, running, finished, stopped, failed
    message: str
    started: events.RunStarted | None
    last_step: events.Step | None
    epochs: list[events.EpochEnded]
    end: events.Event | None


class _Threaded:
    """A piece of work in a daemon thread named ``ftlab-<name>``, with the stop flag it reads and the
    lock its state is read under; a subclass gives ``_main``. What `Job` and `Background` share."""

    def __init__(self, name: str):
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._main, name=f"ftlab-{name}", daemon=True)

    def _main(self) -> None:
        raise NotImplementedError

    def start(self):
        """Start the thread (idle OpenMP threads released first: the work starts its own) and return self."""
        release_idle_openmp_threads()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds; True when the thread has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


class Job(_Threaded):
    """``run`` in a daemon thread. Events go onto ``events`` (a queue) and fold into a
    snapshot that a page can read at any time; ``stop()`` ends the run within one batch."""

    def __init__(self, config: TrainConfig, store: RunStore, run_id: str | None = None):
        self.config, self.store = config, store
        self.run_id = run_id or new_run_id()
        self.events: queue.Queue[events.Event] = queue.Queue()
        self._snap = JobSnapshot(self.run_id, "preparing", "starting", None, None, [], None)
        super().__init__(self.run_id)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def active(self) -> bool:
        """Still preparing or training: its thread alive and no end event yet (the thread outlives
        its end event by the moment it takes to return)."""
        return self.alive and self.snapshot().status not in END_STATUSES

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            s = self._snap
            return replace(s, epochs=list(s.epochs))

    def _main(self) -> None:
        try:
            run(self.config, store=self.store, emit=self._on_event, stop=self._stop, run_id=self.run_id)
        except BaseException as err:  # run() reports its own failures; this is the last guard
            self._on_event(events.RunFailed(self.run_id, user_message(err)))

    def _on_event(self, event: events.Event) -> None:
        with self._lock:
            s = self._snap
            if isinstance(event, events.Preparing):
                s.message = event.message
            elif isinstance(event, events.RunStarted):
                s.started, s.status, s.message = event, "running", "training"
            elif isinstance(event, events.Step):
                s.last_step = event
            elif isinstance(event, events.EpochEnded):
                s.epochs.append(event)
            elif isinstance(event, events.RunFinished):
                s.status, s.end, s.message = "finished", event, "finished"
            elif isinstance(event, events.RunStopped):
                s.status, s.end, s.message = "stopped", event, event.message
            elif isinstance(event, events.RunFailed):
                s.status, s.end, s.message = "failed", event, event.message
        self.events.put(event)


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


class Background(_Threaded):
    """Work other than one run (a sweep, a probe) in a daemon thread: its progress message, its
    result, or what went wrong in words. ``work(say, stop)`` reports with ``say`` and ends soon
    after ``stop`` (a threading.Event) is set."""

    def __init__(self, work, name: str, batch_size: int | None = None):
        self.name, self._work, self._batch_size = name, work, batch_size
        self.status, self.message, self.result, self.error = "running", "starting", None, ""
        super().__init__(name)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def alive(self) -> bool:  # a method here, a property on Job: the pages and the finder call it so
        return self._thread.is_alive()

    def say(self, message: str) -> None:
        with self._lock:
            self.message = message

    def _main(self) -> None:
        try:
            result = self._work(self.say, self._stop)
        except BaseException as err:  # the app lives on: the page shows the sentence
            with self._lock:
                self.status, self.error = "failed", user_message(err, self._batch_size)
            return
        with self._lock:
            self.result, self.status = result, "stopped" if self._stop.is_set() else "finished"
