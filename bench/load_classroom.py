"""A classroom on one server: many browser sessions press Start within a few seconds of each other.

    PYTHONPATH=. FTLAB_OFFLINE=1 python bench/load_classroom.py      # 30 sessions, every 5th leaves the queue
    python bench/load_classroom.py --sessions 10 --leave-every 3 --window 5

Each session is a Streamlit AppTest of app.py in this one process, as a server holds its browsers' sessions:
it opens the Model page (the backbone's blocks, as a student looks before training), then the Train page,
sets a 1-epoch digits run at 32 px (efficientnet_lite0, linear probe) and presses
Start; the Starts are spread evenly over ``--window`` seconds. The server trains FTLAB_MAX_CONCURRENT runs
at once (its default: one per CUDA GPU, one on a CPU), the others wait in line; every ``--leave-every``-th
session presses Leave the queue once all have started. While runs train, the sessions' pages are drawn in
turn (a browser polls its page while its run waits or trains) and each draw must say what the registry says.

At the end it checks that every run finished or was left by its session, none lost (every Start is a job
that ended) and none duplicated (one record per finished run, none for a left one), the store whole, and
the peak memory of the process (``resource.getrusage`` ru_maxrss: resident set, torch's allocations
included) within ``--bound-mb``. It reports the time from the last in line's Start to its first curve (its
first EpochEnded, seen by a monitor thread within 50 ms; a browser's page shows it at its next poll, within
1 s more), and the wait its page estimated against the wait it had. Runs are kept in a temporary
FTLAB_HOME, removed afterwards. Exit status 1 when a check fails.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
BOUND_MB = 3000  # peak resident memory of the whole process, 30 sessions: measured 1.6 GB on 2 cores (README)
HANG_S = 1800  # bounds a hang only: 30 runs on a loaded 2-core machine took about 3 min
QUEUED = re.compile(r"is queued: (\d+)(st|nd|rd|th) in line, (about \d+(\.\d)? (min|h)|under a minute|about to "
                    r"start|wait unknown)")


@dataclass
class Figures:
    sessions: int
    max_concurrent: int
    start_spread_s: float  # first Start to last Start
    asked: list[str] = field(default_factory=list)  # run ids whose session pressed to leave (every k-th in line)
    left: list[str] = field(default_factory=list)  # of those, the ones still queued then: they left the queue
    finished: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # every check that failed, in words
    last_in_line: str = ""
    last_first_curve_s: float | None = None  # its Start to its first EpochEnded
    last_estimate_s: float | None = None  # the wait its page said right after all had started
    last_wait_s: float | None = None  # the wait it had: its Start to its start
    # once a run like it had finished (the estimates' source): the wait its page said then, and the wait it had
    later_estimate_s: float | None = None
    later_wait_s: float | None = None
    peak_mb: float = 0.0
    bound_mb: float = BOUND_MB
    wall_s: float = 0.0
    page_draws: int = 0

    def lines(self) -> list[str]:
        est = "unknown" if self.last_estimate_s is None else f"{self.last_estimate_s:.0f} s"
        return [
            f"{self.sessions} sessions pressed Start within {self.start_spread_s:.1f} s; the server trains "
            f"{self.max_concurrent} at a time",
            f"{len(self.finished)} finished, {len(self.left)} left the queue, {self.sessions - len(self.finished) - len(self.left)} "
            f"lost; {self.page_draws} page draws while they waited and trained",
            f"last in line ({self.last_in_line}): first curve {self.last_first_curve_s:.1f} s after its Start "
            f"(waited {self.last_wait_s:.1f} s; its page estimated {est} once all had started)"
            if self.last_first_curve_s is not None else "last in line: no first curve",
            f"after the first run ended, its page estimated {self.later_estimate_s:.0f} s; it started "
            f"{self.later_wait_s:.0f} s later" if self.later_estimate_s is not None and self.later_wait_s is not None
            else "no estimate once the first run had ended",
            f"peak memory (ru_maxrss, the whole process): {self.peak_mb:,.0f} MB, bound {self.bound_mb:,.0f} MB",
            f"all {self.sessions} done in {self.wall_s:.0f} s",
            "checks: " + ("all passed" if not self.problems else "FAILED: " + "; ".join(self.problems)),
        ]


class Monitor(threading.Thread):
    """When each job left the queue and when its first epoch ended, seen every 50 ms."""

    def __init__(self, registry):
        super().__init__(daemon=True)
        self.registry, self.ids, self.began, self.first_curve = registry, [], {}, {}
        self.last, self.estimate = "", None  # the last in line; (when, its wait estimate) once a run has ended
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            now = time.monotonic()
            for run_id in list(self.ids):
                job = self.registry.get(run_id)
                snap = job.snapshot() if job is not None else None
                if snap is None:
                    continue
                if snap.status != "queued":
                    self.began.setdefault(run_id, now)
                if snap.epochs:
                    self.first_curve.setdefault(run_id, now)
                if self.last and self.estimate is None and snap.status == "finished" and \
                        self.registry.position(self.last) is not None:
                    self.estimate = (time.monotonic(), self.registry.wait(self.last))
            time.sleep(0.05)


def _open(at_class, image_size: int):
    at = at_class.from_file(APP, default_timeout=120).run()
    at.switch_page("app_pages/model.py").run()  # as a student goes: the backbone's blocks, then the options
    at.switch_page("app_pages/train.py").run()
    for name, value in (("image_size", image_size), ("epochs", 1), ("batch_size", 64)):
        at.session_state[f"cfg.{name}"] = value  # the form's options, as a student would set them
    return at


def _messages(at) -> list[str]:
    return [m.value for m in (*at.info, *at.success, *at.warning, *at.error)]


def simulate(sessions: int = 30, leave_every: int = 5, window: float = 10.0, bound_mb: float = BOUND_MB,
             image_size: int = 32, say=print) -> Figures:
    """The load test in this process (FTLAB_HOME and FTLAB_DATA as the environment has them)."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from ftlab import jobs
    from ftlab.runs import RunStore
    from ui import resources

    st.cache_resource.clear()
    registry, store = resources.registry(), RunStore()
    figures = Figures(sessions, jobs.max_concurrent(), 0.0, bound_mb=bound_mb)
    problems = figures.problems
    say(f"opening {sessions} sessions on the Train page…")
    pages = [_open(AppTest, image_size) for _ in range(sessions)]
    monitor = Monitor(registry)
    monitor.start()
    began, clicked, page_of = time.monotonic(), {}, {}

    for i, at in enumerate(pages):  # one after another: AppTest runs one script at a time per process
        time.sleep(max(0.0, began + i * window / sessions - time.monotonic()))
        clicked_at = time.monotonic()
        at.button(key="train.start").click().run()
        run_id = at.session_state["train.job"] if "train.job" in at.session_state else None
        if at.exception or at.error or run_id is None:
            problems.append(f"session {i}'s Start: {[e.value for e in (*at.exception, *at.error)]}")
            continue
        clicked[run_id], page_of[run_id] = clicked_at, at
        monitor.ids.append(run_id)
    ids = [j.run_id for j in registry.jobs() if j.run_id in page_of]  # in the order the registry took them
    started = [(page_of[r], r) for r in ids]
    figures.start_spread_s = max(clicked.values()) - min(clicked.values()) if clicked else 0.0
    say(f"{len(ids)} Starts in {figures.start_spread_s:.1f} s")

    staying = [run_id for k, run_id in enumerate(ids) if (k + 1) % leave_every]
    last = figures.last_in_line = staying[-1] if staying else ""
    figures.last_estimate_s = registry.wait(last) if last else None
    monitor.last = last
    for i, (at, run_id) in enumerate(started):
        _check_page(at, run_id, registry, problems)
        if (i + 1) % leave_every:
            continue
        figures.asked.append(run_id)  # one already training by now has no Leave button: it trains to the end
        if registry.position(run_id) is not None:
            at.button(key="train.leave").click().run()
            if any(f"Run `{run_id}` left the queue" in m for m in _messages(at)):
                figures.left.append(run_id)
            elif registry.get(run_id).snapshot().status == "cancelled" or registry.position(run_id) is not None:
                problems.append(f"{run_id}: Leave the queue did not say it left: {_messages(at)}")
            # else it began training between the look and the click: it trains to the end like any other

    deadline = time.monotonic() + HANG_S
    while any(registry.get(r).pending for r in ids) and time.monotonic() < deadline:
        for at, run_id in started:  # each waiting or training session's page, drawn in turn
            if registry.get(run_id).pending:
                _check_page(at, run_id, registry, problems)
                figures.page_draws += 1
    monitor.done.set()
    figures.wall_s = time.monotonic() - began
    _check_end(started, registry, store, figures)
    if last in monitor.first_curve:
        figures.last_first_curve_s = monitor.first_curve[last] - clicked[last]
        figures.last_wait_s = monitor.began[last] - clicked[last]
        if monitor.estimate is not None:
            figures.later_estimate_s = monitor.estimate[1]
            figures.later_wait_s = monitor.began[last] - monitor.estimate[0]
    figures.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    if figures.peak_mb > bound_mb:
        problems.append(f"peak memory {figures.peak_mb:,.0f} MB is over the bound {bound_mb:,.0f} MB")
    assert registry.stop_all(timeout=60)
    return figures


def _check_page(at, run_id: str, registry, problems: list[str]) -> None:
    """One draw of a session's Train page: no exception, and a queued run's banner as the registry has it."""
    at.run()
    if at.exception:
        problems.append(f"{run_id}'s page raised {[e.value for e in at.exception]}")
        return
    place = registry.position(run_id)
    banner = next((m for m in _messages(at) if f"Run `{run_id}`" in m), "")
    if place is not None and "is queued" in banner:
        shown = QUEUED.search(banner)
        # the run ahead may have ended between the draw and this look: one place less, never more
        if shown is None or int(shown.group(1)) not in (place, place + 1):
            problems.append(f"{run_id}'s page said {banner!r} with {place} in line")
        if not any(b.key == "train.leave" for b in at.button):
            problems.append(f"{run_id}'s page has no Leave the queue button while queued")


def _check_end(started: list, registry, store, figures: Figures) -> None:
    problems, ids = figures.problems, [run_id for _, run_id in started]
    statuses = {r: registry.get(r).snapshot().status for r in ids}
    figures.finished = [r for r in ids if statuses[r] == "finished"]
    if len(set(ids)) != len(ids):
        problems.append("a Start made a run id twice")
    if len(ids) != figures.sessions:
        problems.append(f"{figures.sessions - len(ids)} Start(s) made no run")
    if wrong := {r: s for r, s in statuses.items() if s not in ("finished", "cancelled")}:
        problems.append(f"runs neither finished nor left: {wrong}")
    if {r for r, s in statuses.items() if s == "cancelled"} != set(figures.left):
        problems.append("cancelled runs other than those whose session left")
    records = store.list()
    if sorted(r.id for r in records) != sorted(figures.finished):
        problems.append(f"records {len(records)} for {len(figures.finished)} finished runs (left ones must have none)")
    if bad := [(r.id, r.status, len(store.epochs(r.id))) for r in records
               if r.status != "finished" or len(store.epochs(r.id)) != 1]:
        problems.append(f"records not finished with one epoch: {bad}")
    if (fault := store.problem()) is not None:
        problems.append(f"the store: {fault}")
    for at, run_id in started:
        at.run()
        said = " ".join(_messages(at))
        want = f"Run `{run_id}` finished" if statuses[run_id] == "finished" else f"Run `{run_id}` left the queue"
        if want not in said:
            problems.append(f"{run_id}'s page at the end: {said[:200]!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=30)
    p.add_argument("--leave-every", type=int, default=5, help="every k-th session leaves the queue (default 5)")
    p.add_argument("--window", type=float, default=10.0, help="seconds over which the Starts come (default 10)")
    p.add_argument("--bound-mb", type=float, default=BOUND_MB, help=f"peak memory allowed (default {BOUND_MB})")
    args = p.parse_args(argv)
    sys.path[:0] = [str(ROOT)]
    with tempfile.TemporaryDirectory(prefix="ftlab-classroom-") as tmp:
        os.environ["FTLAB_HOME"], os.environ["FTLAB_DATA"] = f"{tmp}/home", f"{tmp}/data"
        os.environ.setdefault("FTLAB_OFFLINE", "1")
        figures = simulate(args.sessions, args.leave_every, args.window, args.bound_mb,
                           say=lambda m: print(m, file=sys.stderr, flush=True))
    print("\n".join(figures.lines()))
    return 1 if figures.problems else 0


if __name__ == "__main__":
    sys.exit(main())
