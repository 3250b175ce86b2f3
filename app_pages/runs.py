"""Runs: every kept run in a table; compare curves and strategies; download or delete a run."""
import pandas as pd
import streamlit as st

from ftlab import explore
from ftlab.runs import StoreError
from ui import charts, keys as K, parts, resources

state = st.session_state
store, registry = resources.store(), resources.registry()
# a figure a run does not have (no test split, stopped before an epoch) shows as a dash, not "None"
FORMATS = {"trainable params": "{:,.0f}", "total params": "{:,.0f}", "best val accuracy": "{:.3f}",
           "test accuracy": "{:.3f}", "epochs": "{:.0f}", "train seconds": "{:.1f}"}


def delete(run_id: str) -> None:
    state.pop(K.RUNS_CONFIRM, None)
    if registry.is_running(run_id):
        state[K.RUNS_FLASH] = f"Run {run_id} is still running: stop it on the Train page first."
        return
    try:
        store.delete(run_id)
        state[K.RUNS_FLASH] = f"Deleted run {run_id}."
    except (KeyError, StoreError) as err:  # gone already, still training elsewhere, or a store fault
        state[K.RUNS_FLASH] = err.args[0]


st.title("Runs")
if flash := state.pop(K.RUNS_FLASH, None):
    st.info(flash)
store.mark_interrupted()  # runs whose process died while training
records = store.list()
if not records:
    st.info("No runs yet: start one on the Train page. Every run is kept here, with its curves and checkpoint.")
    st.stop()

rows = explore.runs_table(records, {j.run_id for j in registry.running()})
st.dataframe(pd.DataFrame(rows).style.format(FORMATS, na_rep="–"), hide_index=True, key="runs.table")

ids = [r.id for r in records]
label = {r.id: explore.record_label(r) for r in records}

st.subheader("Compare")
if K.RUNS_COMPARE in state:
    state[K.RUNS_COMPARE] = [i for i in state[K.RUNS_COMPARE] if i in ids]
else:
    state[K.RUNS_COMPARE] = [r.id for r in records if r.summary.get("epochs_run")][:3]
chosen = st.multiselect("Runs to overlay", ids, key=K.RUNS_COMPARE, format_func=label.get, persist_state=K.PERSIST)
if chosen:
    curves = {i: store.epochs(i) for i in chosen}
    c = st.columns(2)
    c[0].plotly_chart(charts.overlay(curves, "accuracy"), key="runs.overlay_accuracy")
    c[1].plotly_chart(charts.overlay(curves, "loss"), key="runs.overlay_loss")
scored = [r for r in rows if r["best val accuracy"] is not None]
if scored:
    c = st.columns(2)
    c[0].plotly_chart(charts.scatter(scored, "trainable params", "best val accuracy",
                                     "Accuracy against trainable parameters", log_x=True), key="runs.vs_params")
    c[1].plotly_chart(charts.scatter(scored, "train seconds", "best val accuracy", "Accuracy against training time"),
                      key="runs.vs_time")

st.subheader("One run")
run = parts.run_picker(records, K.RUNS_SELECTED)
run_id = run.id
if run.message:
    st.caption(f"{run.status}: {run.message}")
with st.expander("Configuration"):
    st.json(run.config)
d = st.columns(3)
checkpoint = store.checkpoint_path(run_id)
d[0].download_button("Download checkpoint (best.pt)", data=checkpoint.read_bytes if checkpoint.is_file() else b"",
                     file_name=f"{run_id}-best.pt", mime="application/octet-stream", key=K.DOWNLOAD_CHECKPOINT,
                     disabled=not checkpoint.is_file(), on_click="ignore",
                     help=None if checkpoint.is_file() else "This run stopped before its first checkpoint.")
epochs = store.epochs(run_id)
d[1].download_button("Download metrics (CSV)", data=pd.DataFrame(epochs).to_csv(index=False),
                     file_name=f"{run_id}-metrics.csv", mime="text/csv", key=K.DOWNLOAD_METRICS,
                     disabled=not epochs, on_click="ignore")
if d[2].button("Delete this run…", key=K.DELETE):
    state[K.RUNS_CONFIRM] = run_id
if state.get(K.RUNS_CONFIRM) == run_id:
    st.warning(f"Delete run {run_id}, its metrics and its checkpoint? This cannot be undone.")
    c = st.columns(2)
    c[0].button("Yes, delete it", key=K.DELETE_CONFIRM, type="primary", on_click=delete, args=(run_id,))
    c[1].button("Cancel", key=K.DELETE_CANCEL, on_click=state.pop, args=(K.RUNS_CONFIRM, None))
