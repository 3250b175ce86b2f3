"""Runs: every kept run in a table; compare curves and strategies; download or delete a run."""
import pandas as pd
import streamlit as st

from ftlab import explore, export, outside, tasks
from ftlab.checkpoints import CheckpointError
from ftlab.runs import StoreError
from ui import charts, keys as K, parts, resources, watch

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


def export_model(run_id: str, fmt: str, int8: bool) -> None:
    try:
        with st.spinner(export.WORKING):
            state[K.EXPORT_RESULT] = (run_id, export.export_run(run_id, fmt, "int8" if int8 else "none", store=store))
    except (KeyError, CheckpointError, export.ExportError, StoreError) as err:
        state[K.EXPORT_RESULT] = (run_id, err.args[0] if err.args else str(err))


st.title("Runs")
if flash := state.pop(K.RUNS_FLASH, None):
    st.info(flash)
store.mark_interrupted()  # runs whose process died while training
records = store.list()
if not records:
    st.info("No runs yet: start one on the Train page. Every run is kept here, with its curves and checkpoint.")
    st.stop()

app_runs = {j.run_id for j in registry.running()}
rows = explore.runs_table(records, app_runs)
st.dataframe(pd.DataFrame(rows).style.format(FORMATS, na_rep="–"), hide_index=True, key="runs.table")
# while runs train (here or outside the app), the page is drawn again when one has a new epoch or ends
watch.poll(store, [r.id for r in records if r.status == "running"])

ids = [r.id for r in records]
label = {r.id: explore.record_label(r) for r in records}

st.subheader("Compare")
if K.RUNS_COMPARE in state:
    state[K.RUNS_COMPARE] = [i for i in state[K.RUNS_COMPARE] if i in ids]
else:
    state[K.RUNS_COMPARE] = [r.id for r in records if r.summary.get("epochs_run")][:3]
chosen = st.multiselect("Runs to overlay", ids, key=K.RUNS_COMPARE, format_func=label.get, persist_state=K.PERSIST)
if chosen:
    picked = [next(r for r in records if r.id == i) for i in chosen]
    choices, task = tasks.overlay_choices(picked), tasks.FIRST
    if len(choices) > 1:  # a run of several tasks among them: the task to overlay
        if state.get(K.RUNS_OVERLAY_TASK) not in choices:
            state[K.RUNS_OVERLAY_TASK] = tasks.FIRST
        task = st.selectbox("Task to overlay", choices, key=K.RUNS_OVERLAY_TASK, format_func=tasks.overlay_label,
                            persist_state=K.PERSIST, help="A task's train and val curves for each run that trained it.")
    curves, lacking = tasks.overlay_curves(picked, {i: store.epochs(i) for i in chosen}, task)
    if lacking:
        st.caption(parts.plain(tasks.lacking_text([label[i] for i in lacking], task)))
    c = st.columns(2)
    c[0].plotly_chart(charts.overlay(curves, "accuracy", task), key="runs.overlay_accuracy")
    c[1].plotly_chart(charts.overlay(curves, "loss", task), key="runs.overlay_loss")
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
if run.status == "running" and run_id not in app_runs:  # started outside the app: what the store knows of it
    outside_run = outside.watch(store, run_id)
    st.info(outside_run.headline())
    st.progress(*outside_run.progress())
if run.message:
    st.caption(f"{run.status}: {run.message}")
for note in explore.run_notes(run.summary):
    st.caption(parts.plain(note))
if run_epochs := store.epochs(run_id):  # the loss with its parts, the accuracy with the teacher's line
    teacher = explore.teacher_of(run.summary)
    c = st.columns(2)
    c[0].plotly_chart(charts.curves(run_epochs, "loss"), key="runs.run_loss")
    c[1].plotly_chart(charts.curves(run_epochs, "accuracy", teacher), key="runs.run_accuracy")
with st.expander("Configuration"):
    st.json(run.config)
if run.summary.get("tasks"):  # several tasks: each task's curves and its best model's val figures
    final_tasks = (run.final.get("val") or {}).get("tasks", {}) if run.final else {}
    st.caption(f"Best val accuracy per task: {tasks.summary_text(run.summary['tasks'])}")
    parts.task_figures("runs", store.epochs(run_id), tasks.record_classes(run), final_tasks,
                       "Validation confusion matrix of the best model")
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

if any(e.get("moved") for e in epochs):
    beta = any(e.get("l2sp_beta") is not None for e in epochs)
    c = st.columns([3, 2]) if beta else [st.container()]
    c[0].plotly_chart(charts.moved(epochs), key="runs.moved_chart")
    if beta:
        c[1].plotly_chart(charts.l2sp_beta(epochs), key="runs.l2sp_beta_chart")

st.subheader("Export")
c = st.columns([2, 2, 1])
fmt = c[0].radio("Format", export.FORMATS, key=K.EXPORT_FORMAT, horizontal=True, persist_state=K.PERSIST,
                 help=export.FORMAT_HELP)
int8 = c[1].toggle("int8", key=K.EXPORT_INT8, persist_state=K.PERSIST, help=export.QUANTIZE_HELP[fmt])
c[2].button("Export", key=K.EXPORT, disabled=not checkpoint.is_file(), on_click=export_model, args=(run_id, fmt, int8),
            help=None if checkpoint.is_file() else "This run stopped before its first checkpoint.")
done_for, result = state.get(K.EXPORT_RESULT, (None, None))
if done_for == run_id and isinstance(result, str):
    st.error(parts.plain(result))
elif done_for == run_id and result is not None:
    (st.success if result.check.ran else st.warning)("\n\n".join(parts.plain(line) for line in result.lines()))
    e = st.columns(2)
    for col, path, key, label in ((e[0], result.model_path, K.DOWNLOAD_EXPORT, f"Download {result.model_path.name}"),
                                  (e[1], result.labels_path, K.DOWNLOAD_LABELS, "Download labels.json")):
        col.download_button(label, data=path.read_bytes if path.is_file() else b"", file_name=path.name,
                            mime="application/octet-stream", key=key, disabled=not path.is_file(), on_click="ignore")
