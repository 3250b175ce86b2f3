"""Background training jobs: ``Job`` runs ``engine.run`` in a thread; a registry keeps one
process's jobs by run id and queues them.

The app keeps one registry per server process (under ``st.cache_resource``), so a run outlives
reruns, page switches and browser refreshes: a page finds its job by the id in its session,
and a new session (a refreshed browser) finds the newest job still running. Nothing here
imports Streamlit.

A classroom server: at most ``FTLAB_MAX_CONCURRENT`` runs train at once (default one per CUDA
GPU, one on a machine without); a later Start is a queued `Job` that starts, first come first
served, when a slot frees. A session (an ``owner``) has at most ``FTLAB_RUNS_PER_SESSION`` runs
queued or training (default 1). A queued run has no record in the run store: the engine makes
its record when it starts, so the Runs page never lists a run that has not begun, and a run left
in the queue leaves nothing behind. The queue lives in the server process: a restart empties it
(the pages then say the run is not kept here).
"""
from __future__ import annotations

import queue
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ftlab import events
from ftlab.config import TrainConfig
from ftlab.engine import run, user_message
from ftlab.native import release_idle_openmp_threads
from ftlab.paths import SettingError, number
from ftlab.runs import RunStore, StoreError, new_run_id

# "cancelled": left the queue before it started (it never trained and has no record)
END_STATUSES = frozenset({"finished", "stopped", "failed", "cancelled"})
KEEP_ENDED = 20  # ended jobs kept for their snapshots; their records are in the RunStore anyway
ESTIMATE_FROM = 5  # the newest finished runs like a queued one whose durations estimate it
ESTIMATE_TTL_S = 30.0  # how long an estimate is reused: thirty polling pages must not each read the store
# what makes two runs take about as long: the config fields an estimate matches on
ALIKE = ("dataset", "backbone", "weights", "strategy", "image_size", "batch_size", "feature_cache", "precision",
         "device")


@dataclass
class JobSnapshot:
    """What a page shows of a job, copied under the job's lock."""

    run_id: str
    status: str  # queued, preparing, running, finished, stopped, failed, cancelled
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
    snapshot that a page can read at any time; ``stop()`` ends the run within one batch.

    A job the registry queues waits, status "queued", until `start`; `cancel` ends it there
    instead (status "cancelled"). ``on_end(job)`` is called in the job's thread once the run has
    ended, before `join` returns: the registry frees the job's slot with it."""

    def __init__(self, config: TrainConfig, store: RunStore, run_id: str | None = None,
                 on_end: Callable[[Job], None] | None = None):
        self.config, self.store = config, store
        self.run_id = run_id or new_run_id()
        self.events: queue.Queue[events.Event] = queue.Queue()
        self._snap = JobSnapshot(self.run_id, "queued", "waiting for a free slot", None, None, [], None)
        self._on_end, self._done, self._started = on_end, threading.Event(), False
        self.began: float | None = None  # time.monotonic() when it started training
        self.slot: int | None = None  # the registry's slot it trains in (its GPU where there are several)
        super().__init__(self.run_id)

    def start(self, slot: int | None = None) -> Job:
        """Start the run (once: a second call does nothing); ``slot``: the registry's slot it takes."""
        with self._lock:
            if self._started or self._snap.status == "cancelled":
                return self
            self._started, self.slot, self.began = True, slot, time.monotonic()
            self._snap.status, self._snap.message = "preparing", "starting"
        return super().start()

    def cancel(self, message: str = "left the queue before it started; nothing was trained or kept") -> bool:
        """End a job that has not started (it never will); False when it already has."""
        with self._lock:
            if self._started or self._snap.status == "cancelled":
                return False
            self._snap.status, self._snap.message = "cancelled", message
        self._done.set()
        return True

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def queued(self) -> bool:
        """Waiting for a slot: not started and not cancelled."""
        return self.snapshot().status == "queued"

    @property
    def pending(self) -> bool:
        """Queued, preparing or training: what counts against its session's limit."""
        return not self._done.is_set()

    @property
    def active(self) -> bool:
        """Still preparing or training: its thread alive and no end event yet (the thread outlives
        its end event by the moment it takes to return)."""
        return self.alive and self.snapshot().status not in END_STATUSES

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for the run to end (a queued one: to start, then end, or be
        cancelled); True when it has."""
        began = time.monotonic()
        if not self._done.wait(timeout):
            return False
        if self._started:
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - began))
            self._thread.join(left)
        return not self.alive

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            s = self._snap
            return replace(s, epochs=list(s.epochs))

    def _main(self) -> None:
        try:
            self._use_slot_gpu()
            run(self.config, store=self.store, emit=self._on_event, stop=self._stop, run_id=self.run_id)
        except BaseException as err:  # run() reports its own failures; this is the last guard
            self._on_event(events.RunFailed(self.run_id, user_message(err)))
        finally:
            try:
                if self._on_end is not None:
                    self._on_end(self)  # the next queued run starts before join() returns
            finally:
                self._done.set()

    def _use_slot_gpu(self) -> None:
        """With several CUDA GPUs, slot k trains on GPU k (mod their count): "cuda" is the thread's
        current device, so each concurrent run gets a GPU of its own. One GPU or none: nothing to do."""
        if self.slot is None or self.config.device not in ("auto", "cuda"):
            return
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() > 1:
            torch.cuda.set_device(self.slot % torch.cuda.device_count())

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


# --- the server's limits ----------------------------------------------------------------------

def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def max_concurrent() -> int:
    """Runs the app trains at once (``FTLAB_MAX_CONCURRENT``; default one per CUDA GPU, one without)."""
    return number("FTLAB_MAX_CONCURRENT", max(1, _gpus()), "runs this server trains at once; later Starts "
                  "wait in a queue", lo=1, whole=True)


def runs_per_session() -> int:
    """Runs one browser session may have queued or training (``FTLAB_RUNS_PER_SESSION``, default 1)."""
    return number("FTLAB_RUNS_PER_SESSION", 1, "runs one browser session may have queued or training", lo=1,
                  whole=True)


@dataclass(frozen=True)
class Limits:
    max_concurrent: int
    per_session: int


def limits() -> Limits:
    """Both settings, read now; SettingError (a sentence naming the variable) for a value ftlab cannot use."""
    return Limits(max_concurrent(), runs_per_session())


# --- words for the pages ----------------------------------------------------------------------

def ordinal(n: int) -> str:
    """
    >>> [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 103)]
    ['1st', '2nd', '3rd', '4th', '11th', '12th', '13th', '21st', '22nd', '103rd']
    """
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def wait_words(seconds: float | None) -> str:
    """A wait as a queue says it: rounded to minutes, never more exact than an estimate is.

    >>> [wait_words(s) for s in (None, 0, 20, 50, 100, 150, 4000, 9000)]
    ['wait unknown', 'about to start', 'under a minute', 'about 1 min', 'about 2 min', 'about 2 min', 'about 67 min', 'about 2.5 h']
    """
    if seconds is None:
        return "wait unknown"
    if seconds < 1:
        return "about to start"
    if seconds < 45:
        return "under a minute"
    if seconds < 90 * 60:
        return f"about {max(1, round(seconds / 60))} min"
    return f"about {seconds / 3600:.1f} h"


# --- how long a run takes, from the runs this machine finished -------------------------------

def estimate_seconds(config: TrainConfig, records: Sequence, epochs: Callable[[str], list[dict]]) -> float | None:
    """How long ``config`` would train, start to end, from the newest finished runs like it (the same
    `ALIKE` fields) among ``records`` (`ftlab.runs.RunRecord`, newest first; ``epochs(id)`` gives a run's
    epoch records): each run's time outside its training passes (reading the data, caching,
    evaluating) plus its mean training pass times ``config.epochs``; the median of up to
    `ESTIMATE_FROM` of them. None when no finished run is like it: an unknown wait is said, not invented."""
    want = config.to_dict()
    alike = [r for r in records if r.status == "finished" and isinstance(r.config, dict)
             and all(r.config.get(k) == want[k] for k in ALIKE)][:ESTIMATE_FROM]
    guesses = []
    for r in alike:
        passes = [e["seconds"] for e in epochs(r.id) if isinstance(e.get("seconds"), (int, float))]
        wall = r.updated - r.created
        if passes and wall > 0:
            guesses.append(max(0.0, wall - sum(passes)) + config.epochs * sum(passes) / len(passes))
    return statistics.median(guesses) if guesses else None


def wait_seconds(left: Sequence[float | None], ahead: Sequence[float | None], slots: int) -> float | None:
    """When the next queued run starts: ``left``, the seconds each training run has left; ``ahead``,
    how long each run queued before it takes, in queue order; ``slots``, runs trained at once. Each
    run ahead takes the slot that frees first. None when a figure it needs is unknown.

    >>> wait_seconds([30], [60, 90], 1)  # one slot: 30 s, then the two ahead
    180
    >>> wait_seconds([30, 100], [60], 2)  # the first ahead takes the slot free at 30 s until 90 s
    90
    >>> wait_seconds([], [], 1), wait_seconds([None], [], 1), wait_seconds([10], [None], 1)
    (0.0, None, None)
    """
    free = list(left) + [0.0] * max(0, slots - len(left))
    for takes in ahead:
        if None in free or takes is None:
            return None
        first = free.index(min(free))
        free[first] += takes
    return None if not free or None in free else min(free)


class JobBusy(RuntimeError):
    """The owner already has as many runs queued or running as a session may; the message names one."""


class JobRegistry:
    """Start jobs (or queue them), look them up by run id, list the running and the waiting ones,
    stop them or take them out of the queue.

    ``owner`` (a browser session, say) may have `runs_per_session` jobs queued or running, so a
    double click or a rerun never starts the same run twice and one student cannot fill the queue.
    The check, the queueing and the start of a queued job when a slot frees all happen under one
    lock: a job is started once, and every queued job is started or cancelled, never lost.
    """

    def __init__(self, keep_ended: int = KEEP_ENDED):
        self._jobs: dict[str, Job] = {}  # in start order
        self._owners: dict[str, str] = {}  # run id -> owner
        self._waiting: list[Job] = []  # first come, first served
        self._holding: dict[str, int] = {}  # run id -> the slot it trains in, from its start to its end
        self._limit = 1  # runs at once, as last read (a job's end reads it again)
        self._lock = threading.Lock()
        self._keep_ended = keep_ended
        self._estimates: dict[tuple, tuple[float, float | None]] = {}  # ALIKE values -> (when, seconds)

    def start(self, config: TrainConfig, store: RunStore, owner: str | None = None) -> Job:
        """A new job: training now if a slot is free and nobody waits, else queued. Raises JobBusy
        (the owner's limit) or SettingError (a server setting ftlab cannot use)."""
        allowed = limits()
        with self._lock:  # the check and the start together: two clicks cannot both pass the check
            if owner is not None:
                mine = [j for j in self._jobs.values() if self._owners.get(j.run_id) == owner and j.pending]
                if len(mine) >= allowed.per_session:
                    raise JobBusy(self._busy_text(mine[-1], allowed.per_session))
            job = Job(config, store, on_end=self._release)
            self._jobs[job.run_id] = job
            if owner is not None:
                self._owners[job.run_id] = owner
            self._limit = allowed.max_concurrent
            self._waiting.append(job)
            self._dispatch()
            self._prune()
        return job

    def _busy_text(self, job: Job, per_session: int) -> str:
        if job in self._waiting:
            what, undo = f"is queued ({ordinal(self._waiting.index(job) + 1)} in line)", "leave the queue"
        else:
            what, undo = "is still running", "stop it"
        limit = "" if per_session == 1 else f" (this server allows {per_session} runs per session)"
        return f"Run {job.run_id} {what}; {undo} before starting another{limit}."

    def _dispatch(self) -> None:
        """Start queued jobs while slots are free (the caller holds the lock)."""
        while self._waiting and len(self._holding) < self._limit:
            job = self._waiting.pop(0)
            slot = min(set(range(self._limit)) - set(self._holding.values()))
            self._holding[job.run_id] = slot
            try:
                job.start(slot)
            except RuntimeError as err:  # no thread to be had: the job ends failed, its slot goes on
                self._holding.pop(job.run_id, None)
                job._on_event(events.RunFailed(job.run_id, f"the server could not start the run ({err})"))
                job._done.set()

    def _release(self, job: Job) -> None:
        """A job's end (in its thread): its slot goes to the first in line."""
        with self._lock:
            self._holding.pop(job.run_id, None)
            self._estimates.clear()  # a run that ended is a new figure for the waits: none kept from before it
            try:
                self._limit = max_concurrent()
            except SettingError:  # changed to a bad value meanwhile: the last good one keeps the queue going
                pass
            self._dispatch()

    def get(self, run_id: str | None) -> Job | None:
        with self._lock:
            return self._jobs.get(run_id) if run_id else None

    def jobs(self) -> list[Job]:
        """Every job kept (queued, training, and the newest ended ones), in the order they were started."""
        with self._lock:
            return list(self._jobs.values())

    def owner(self, run_id: str) -> str | None:
        with self._lock:
            return self._owners.get(run_id)

    def running(self) -> list[Job]:
        """Jobs whose thread is still alive, newest first."""
        with self._lock:
            return [j for j in reversed(self._jobs.values()) if j.alive]

    def waiting(self) -> list[Job]:
        """Queued jobs, first in line first."""
        with self._lock:
            return list(self._waiting)

    def latest_running(self) -> Job | None:
        jobs = self.running()
        return jobs[0] if jobs else None

    def is_running(self, run_id: str) -> bool:
        job = self.get(run_id)
        return job is not None and job.alive

    def position(self, run_id: str) -> int | None:
        """1 for the first in line; None for a job not queued."""
        with self._lock:
            ids = [j.run_id for j in self._waiting]
        return ids.index(run_id) + 1 if run_id in ids else None

    def leave(self, run_id: str, owner: str | None = None) -> bool:
        """Take a queued job out of the queue (cancelled; the ones behind it move up). False when it is
        not queued (it has started meanwhile, or ended), or ``owner`` is given and is not its owner."""
        with self._lock:
            job = self._jobs.get(run_id)
            if job is None or job not in self._waiting or (owner is not None and self._owners.get(run_id) != owner):
                return False
            self._waiting.remove(job)
            return job.cancel()

    def stop(self, run_id: str) -> bool:
        """Ask a job to stop (it ends within one batch), or take it out of the queue; False when no
        such job is queued or running."""
        if self.leave(run_id):
            return True
        job = self.get(run_id)
        if job is None or not job.alive:
            return False
        job.stop()
        return True

    def stop_all(self, timeout: float | None = None) -> bool:
        """Empty the queue, stop every job and wait for them; True when all ended within ``timeout`` each."""
        with self._lock:
            for job in self._waiting:
                job.cancel("the server stopped its runs")
            self._waiting.clear()
            jobs = list(self._jobs.values())
        for job in jobs:
            job.stop()
        return all([job.join(timeout) for job in jobs])

    # --- what a page says of the queue -------------------------------------------------------
    def run_seconds(self, config: TrainConfig, store: RunStore) -> float | None:
        """`estimate_seconds` of ``config`` from ``store``'s runs, kept for `ESTIMATE_TTL_S`."""
        key = tuple(str(config.to_dict()[k]) for k in ALIKE) + (str(config.epochs), str(store.db))
        now = time.monotonic()
        with self._lock:
            kept = self._estimates.get(key)
        if kept is not None and now - kept[0] < ESTIMATE_TTL_S:
            return kept[1]
        try:
            seconds = estimate_seconds(config, store.list(), store.epochs)
        except StoreError:
            seconds = None  # the store cannot tell now: unknown, not a broken page
        with self._lock:
            self._estimates[key] = (now, seconds)
        return seconds

    def seconds_left(self, job: Job) -> float | None:
        """A training job's time left: its last step's estimate; before its first step, the estimate
        of a run like it less the time it has had."""
        snap = job.snapshot()
        if snap.last_step is not None:
            return max(0.0, snap.last_step.seconds_left)
        whole = self.run_seconds(job.config, job.store)
        if whole is None or job.began is None:
            return None
        return max(0.0, whole - (time.monotonic() - job.began))

    def wait(self, run_id: str) -> float | None:
        """Seconds until the queued job ``run_id`` starts (`wait_seconds`); None when unknown or not queued."""
        with self._lock:
            queued = [j for j in self._waiting]
            holding = [self._jobs[r] for r in self._holding if r in self._jobs]
            slots = self._limit
        ids = [j.run_id for j in queued]
        if run_id not in ids:
            return None
        ahead = queued[:ids.index(run_id)]
        return wait_seconds([self.seconds_left(j) for j in holding],
                            [self.run_seconds(j.config, j.store) for j in ahead], slots)

    def queue_text(self, run_id: str) -> str:
        """"queued: 3rd in line, about 2 min" ("" for a job not queued)."""
        place = self.position(run_id)
        return "" if place is None else f"queued: {ordinal(place)} in line, {wait_words(self.wait(run_id))}"

    def server_text(self) -> str:
        """The server's limits and its queue now, in a sentence; SettingError for a setting ftlab cannot use."""
        allowed = limits()
        with self._lock:
            waiting, training = len(self._waiting), len(self._holding)
        runs = "1 run" if allowed.max_concurrent == 1 else f"{allowed.max_concurrent} runs"
        per = "1 run" if allowed.per_session == 1 else f"{allowed.per_session} runs"
        return (f"This server trains {runs} at a time ({training} training now); {waiting} waiting. "
                f"Each session may have {per} queued or training.")

    def _prune(self) -> None:
        ended = [rid for rid, j in self._jobs.items() if not j.pending and not j.alive]
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
