"""Watching a run started outside the app (`ftlab.outside`): the notices with their Watch buttons, the
run's view from the store, and the polling that redraws a page when a watched run moves on."""
from __future__ import annotations

from collections.abc import Collection, Sequence

import streamlit as st

from ftlab import explore, outside
from ftlab.runs import RunStore
from ui import charts, keys, parts


def notices(store: RunStore, app_runs: Collection[str]) -> None:
    """One line per run training outside the app, with a button that watches it in this session."""
    for record in outside.running_outside(store, app_runs):
        run = outside.watch(store, record.id)
        cols = st.columns([4, 1])
        cols[0].info(f"Run {parts.run_title(record.id, record)} is training, {outside.MARK} (by "
                     f"{run.process_text()}): {run.progress()[1]}.")
        cols[1].button("Watch it", key=keys.WATCH_OUTSIDE.format(record.id), on_click=_watch, args=(record.id,),
                       help="Shows its curves here as its trainer writes them to the run store.")


def _watch(run_id: str) -> None:
    st.session_state[keys.OUTSIDE] = run_id


def poll(store: RunStore, run_ids: Sequence[str]) -> None:
    """While any of ``run_ids`` trains, look at the store every `outside.POLL_S` seconds and redraw the
    page when one of them has a new epoch or has ended (nothing is polled when none trains)."""
    shown = outside.signature(store, run_ids)
    if not any(status == "running" for _, status, _ in shown):
        return

    @st.fragment(run_every=outside.POLL_S)
    def check() -> None:
        if outside.signature(store, run_ids) != shown:
            st.rerun()

    check()


def view(store: RunStore, run_id: str, page: str) -> None:
    """A run from the store as the Train page shows a job: its headline, progress, figures and curves
    while it trains, its best model's val figures once it has ended; polled while it trains."""
    try:
        run = outside.watch(store, run_id)
    except KeyError:
        st.info(f"Run `{run_id}` is no longer kept here (it was deleted).")
        return
    (st.info if run.running else st.success if run.record.status == "finished" else st.warning)(run.headline())
    done, text = run.progress()
    st.progress(done, text=text)
    if run.epochs:
        last = run.epochs[-1]
        m = st.columns(4)
        m[0].metric("Epoch", f"{last['epoch']}/{run.planned_epochs or '?'}")
        m[1].metric("Train loss", f"{last['train_loss']:.3f}")
        m[2].metric("Val accuracy", f"{last['val_accuracy']:.3f}")
        m[3].metric("Best val accuracy", f"{max(e['val_accuracy'] for e in run.epochs):.3f}")
        c = st.columns(2)
        teacher = explore.teacher_of(run.record.summary)
        c[0].plotly_chart(charts.curves(run.epochs, "loss"), key=f"{page}.outside_loss")
        c[1].plotly_chart(charts.curves(run.epochs, "accuracy", teacher), key=f"{page}.outside_accuracy")
    elif run.running:
        st.caption("The curves appear when its first epoch ends.")
    val = (run.record.final or {}).get("val")
    if not run.running and val and run.record.classes:
        c = st.columns([3, 2])
        with c[0]:
            parts.confusion(val["confusion"], run.record.classes, "Validation confusion matrix of the best model",
                            keys.OUTSIDE_CM.format(page))
        with c[1]:
            st.markdown("**Per class, on the validation split**")
            parts.report(val, run.record.classes)
    poll(store, [run_id])
