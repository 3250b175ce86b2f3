"""Runs started outside the app: ``python -m ftlab train`` or ``torchrun … -m ftlab train`` in another
terminal with the same ``FTLAB_HOME`` (or another app server on it). The app did not start them, so it has no
job and no events of theirs: what it shows comes from the run store, which their trainer (rank 0) writes as
it goes — the record, whose ``owner`` is the trainer's host:pid, and one epoch record per epoch.

Nothing here imports Streamlit; the Runs and Train pages draw what these functions return.
"""
from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from ftlab.runs import RunRecord, RunStore

MARK = "started outside the app"
POLL_S = 2.0  # how often a page looks at the store for a watched run's next epoch (it changes once an epoch)


@dataclass(frozen=True)
class OutsideRun:
    """A run the app did not start, as the store has it now."""

    record: RunRecord
    owner: str  # host:pid[:start] of the process training it ("" when the store does not say)
    epochs: list[dict]  # its epoch records in order, as `ui.charts.curves` takes them

    @property
    def running(self) -> bool:
        return self.record.status == "running"

    @property
    def planned_epochs(self) -> int | None:
        value = self.record.config.get("epochs")
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    def process_text(self) -> str:
        """Who trains it: "process 4242 on lab-pc" ("another process" when the store does not say)."""
        host, pid = (self.owner.split(":") + [""])[:2]
        return f"process {pid} on {host}" if host and pid else "another process"

    def progress(self) -> tuple[float, str]:
        """The share of its epochs done, for a progress bar, and its words.

        >>> from types import SimpleNamespace as R
        >>> run = OutsideRun(R(status="running", config={"epochs": 4}), "h:1", [{"epoch": 1}, {"epoch": 2}])
        >>> run.progress()
        (0.5, '2 of 4 epoch(s) done')
        >>> OutsideRun(R(status="running", config={}), "", []).progress()
        (0.0, '0 epoch(s) done (of a number the store does not say)')
        """
        done, planned = len(self.epochs), self.planned_epochs
        if planned is None:
            return 0.0, f"{done} epoch(s) done (of a number the store does not say)"
        return min(done / planned, 1.0), f"{done} of {planned} epoch(s) done"

    def headline(self) -> str:
        """One sentence for the page: what it is, who trains it, how far it is, or how it ended."""
        r = self.record
        if self.running:
            return (f"Run `{r.id}` is training, {MARK} (by {self.process_text()}): "
                    f"{self.progress()[1]}. Its curves follow the run store.")
        best = r.summary.get("best_val_accuracy")
        best = f": best val accuracy {best:.3f}" if isinstance(best, (int, float)) else ""
        why = f" ({r.message})" if r.message else ""
        return f"Run `{r.id}`, {MARK}, {r.status}{best}{why}."


def owners(store: RunStore) -> dict[str, str]:
    """run id -> owner (host:pid of its trainer) of the runs the store has as running (`RunStore.running_owners`)."""
    return store.running_owners()


def running_outside(store: RunStore, app_runs: Collection[str], records: Sequence[RunRecord] | None = None
                    ) -> list[RunRecord]:
    """The runs training now that the app did not start (``app_runs``: the ids of the app's own jobs),
    newest first. Runs whose process has died are marked interrupted first, so none shows as training.
    ``records``: the store's list, where the caller has it already."""
    store.mark_interrupted()
    records = store.list() if records is None else records
    return [r for r in records if r.status == "running" and r.id not in app_runs]


def watch(store: RunStore, run_id: str) -> OutsideRun:
    """A run as the store has it now (KeyError for one that is not kept)."""
    record = store.get(run_id)
    return OutsideRun(record, owners(store).get(run_id, ""), store.epochs(run_id))


def signature(store: RunStore, run_ids: Sequence[str]) -> tuple:
    """What changes when a watched run moves on: each run's status and epoch count. A page polls this
    and redraws itself when it differs, so the curves grow once an epoch and the final figures come at
    the end, without redrawing every chart every second."""
    out = []
    for run_id in run_ids:
        try:
            out.append((run_id, store.get(run_id).status, len(store.epochs(run_id))))
        except KeyError:
            out.append((run_id, "deleted", 0))
    return tuple(out)
