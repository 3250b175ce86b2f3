"""Inspect & predict: a run's mistakes, its hardest validation images, and a prediction for an image."""
import streamlit as st

from ftlab import data, explore, predict, tasks
from ftlab.config import TrainConfig
from ftlab.checkpoints import CheckpointError
from ui import charts, keys as K, parts, resources

state = st.session_state
store = resources.store()
HARDEST, HARD_PX = 12, 96
PREVIEW_WIDTH = 200  # px of the uploaded image beside its prediction

st.title("Inspect & predict")
records = [r for r in store.list() if r.final]
if not records:
    st.info("No run with a final evaluation yet: train one on the Train page (a run stopped before its first "
            "epoch has nothing to inspect).")
    st.stop()
run = parts.run_picker(records, K.INSPECT_RUN)
run_id = run.id
split = explore.final_split(run.final)
ev = run.final[split]

m = st.columns(3)
m[0].metric(f"{split.capitalize()} accuracy", f"{ev['accuracy']:.3f}")
m[1].metric(f"{split.capitalize()} loss", f"{ev['loss']:.3f}")
m[2].metric(f"{split.capitalize()} images", f"{len(ev['indices']):,}")
c = st.columns([3, 2])
with c[0]:
    parts.confusion(ev["confusion"], run.classes, f"{split.capitalize()} confusion matrix of the best model",
                    K.INSPECT_CM_NORMALISED)
with c[1]:
    st.markdown("**Most confused pairs**")
    pairs = explore.confused_pairs(ev["confusion"], run.classes)
    if pairs:
        st.dataframe(pairs, hide_index=True, column_config={
            "share of true class": st.column_config.NumberColumn(format="percent")})
    else:
        st.caption("No mistakes on this split.")
    st.markdown("**Per class**")
    parts.report(ev, run.classes)
if ev.get("tasks"):  # several tasks: each task's curves, and its figures of the best model on this split
    parts.task_figures("inspect", store.epochs(run_id), tasks.record_classes(run), ev["tasks"],
                       f"{split.capitalize()} confusion matrix of the best model")

st.subheader("Validation images with the highest loss")
hard = explore.hardest(run.final["val"], run.classes, HARDEST)
config = TrainConfig.from_dict(run.config)
try:
    images, captions, note = explore.hardest_images(resources.dataset(config), run.classes, hard, HARD_PX)
except data.DataError as err:
    images, captions, note = [], [], explore.data_gone_note(err)
if note:
    st.warning(f"{note} The run's data set: {config.dataset}.")
if images:
    st.image(images, width=HARD_PX, caption=captions)
    st.caption("Each image: true class → predicted class (loss).")

st.subheader("Predict")
upload = st.file_uploader("An image to classify", type=["jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp"],
                          key=K.INSPECT_IMAGE, max_upload_size=50)
state[K.INSPECT_TOP_K] = min(state[K.INSPECT_TOP_K], len(run.classes))
k = st.slider("How many classes to show", 1, max(2, min(10, len(run.classes))), key=K.INSPECT_TOP_K,
              persist_state=K.PERSIST)
if upload is not None:
    try:
        image = predict.open_image(upload.getvalue(), upload.name)
        prediction = resources.predictor(run_id, str(store.home)).predict(image, k)
    except (data.DataError, CheckpointError, KeyError) as err:  # KeyError: the run was deleted meanwhile
        st.error(err.args[0] if isinstance(err, KeyError) else str(err))
    else:
        c = st.columns([1, 2])
        # the preview at the width it is shown: Streamlit shrinking a wider one makes a 20000 × 1 image 0 px high
        c[0].image(predict.preview(image, PREVIEW_WIDTH), width=PREVIEW_WIDTH, caption=upload.name)
        c[0].metric("Prediction", prediction.label, f"{prediction.probability:.1%}", delta_color="off",
                    delta_arrow="off")
        c[1].plotly_chart(charts.top_k(prediction.top), key="inspect.top_k_chart")
        for name, top in list(prediction.tasks.items())[1:]:  # several tasks: every further task's classes
            c = st.columns([1, 2])
            c[0].metric(f"Prediction: {name}", top[0][0], f"{top[0][1]:.1%}", delta_color="off", delta_arrow="off")
            c[1].plotly_chart(charts.top_k(top), key=f"inspect.top_k_chart.{name}")

st.subheader("What the model sees")
st.caption("Grad-CAM shows which parts of the image raised a class's score (its gradient at the backbone's last "
           "spatial block, weighting that block's channels); EigenCAM, the first principal component of the same "
           "block's activations, needs no gradient and explains no class. Red: most, blue: least.")
from ftlab import explain  # noqa: E402  (the section's own module, imported where it is used)

CAM_SOURCES = {"val": "A validation image", "upload": "An image you upload"}
CAM_PX = 180  # px of each map on the page
source = st.radio("Image", list(CAM_SOURCES), format_func=CAM_SOURCES.get, key=K.CAM_SOURCE, horizontal=True,
                  persist_state=K.PERSIST)
val_rows = explain.val_images(run)
cam_upload, cam_true, position = None, None, 0
if source == "val":
    if val_rows:
        state[K.CAM_VAL] = min(state.get(K.CAM_VAL, 0), len(val_rows) - 1)
        position = st.number_input(f"Val image (0 to {len(val_rows) - 1})", 0, len(val_rows) - 1, key=K.CAM_VAL,
                                   persist_state=K.PERSIST)
        st.caption(explain.val_caption(run, position))
    else:
        st.info("This run kept no val images to explain (it was kept before val labels were stored): upload one.")
else:
    c = st.columns(2)
    cam_upload = c[0].file_uploader("An image to explain", type=["jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff",
                                                                 "webp"], key=K.CAM_UPLOAD, max_upload_size=50)
    if state.get(K.CAM_TRUE) not in ["", *run.classes]:
        state[K.CAM_TRUE] = ""
    cam_true = c[1].selectbox("Its true class", ["", *run.classes], key=K.CAM_TRUE, persist_state=K.PERSIST,
                              format_func=lambda n: n or "not known (the second map: the second most likely class)")
alike = {r.id: r for r in explain.same_val_split(records, run)[1:]}
state[K.CAM_RUNS] = [i for i in state.get(K.CAM_RUNS, []) if i in alike]
beside = st.multiselect("Beside it, the same image under these kept runs (scored on the same val images: a linear "
                        "probe next to a fine-tune shows where fine-tuning moved the attention)", list(alike),
                        key=K.CAM_RUNS, format_func=lambda i: explore.record_label(alike[i]), persist_state=K.PERSIST)
if not alike:
    st.caption("No other kept run was scored on this run's val images with its classes.")
shown = [run, *(alike[i] for i in beside)]
has_image = (source == "val" and val_rows) or cam_upload is not None
if has_image and not state.get(K.CAM_DRAWN):  # drawn on request: the maps load each run's model
    st.button("Draw the maps", key=K.CAM_DRAW, on_click=lambda: state.__setitem__(K.CAM_DRAWN, True))
    st.caption(f"Loads the model of each run shown ({len(shown)}) and runs it on the image: a few seconds each. "
               "Once drawn, the maps follow the image and runs you choose.")
elif has_image:
    for record in shown:
        try:
            if source == "val":
                result = resources.val_explanation(record.id, str(store.home), int(position))
            else:
                result = resources.file_explanation(record.id, str(store.home), cam_upload.getvalue(),
                                                    cam_upload.name, cam_true or None)
        except (data.DataError, CheckpointError, KeyError, ValueError) as err:
            st.error(f"{parts.run_title(record.id, record)}: {err.args[0] if isinstance(err, KeyError) else err}")
            continue
        st.markdown(f"{parts.run_title(record.id, record)} · maps of block `{result.target_block}`")
        cols = st.columns(1 + len(result.maps))
        cols[0].image(explain.enlarged(result.image, CAM_PX), width=CAM_PX, caption=result.name)
        for col, m in zip(cols[1:], result.maps):
            col.image(explain.enlarged(m.overlay, CAM_PX), width=CAM_PX, caption=m.title)
        for note in result.notes:
            st.caption(note.capitalize() + ".")

st.subheader("Shift test")
st.caption("The best model on corrupted copies of the run's val images: Gaussian blur, JPEG, colour jitter, greyscale, "
           "rotation and noise, two severities each, every draw seeded. Inference only: the runs are not changed. "
           "Kumar et al. (2022) found full fine-tuning ahead of a linear probe on the training distribution and "
           "behind it under shift: test both to see it here.")
from ftlab import shift  # noqa: E402

owner = state[K.OWNER]
by_id = {r.id: r for r in records}
state[K.SHIFT_RUNS] = [i for i in state.get(K.SHIFT_RUNS, [run.id]) if i in by_id] or [run.id]
shift_runs = st.multiselect("Runs to test", list(by_id), key=K.SHIFT_RUNS, persist_state=K.PERSIST,
                            format_func=lambda i: explore.record_label(by_id[i]))
shift_seed = st.number_input("Seed of the corruptions", 0, 2 ** 31 - 1, key=K.SHIFT_SEED, persist_state=K.PERSIST)
shift_job = resources.background(owner, "shift")
shifting = shift_job is not None and shift_job.alive()
c = st.columns([1, 1, 3])
c[0].button("Run the shift test", key=K.SHIFT_START, disabled=shifting or not shift_runs,
            # the runs and seed as the widgets hold them at the click (a choice made just before it may not
            # have reached this script run yet)
            on_click=lambda: resources.start_background(owner, "shift", lambda say, stop, runs=list(
                state[K.SHIFT_RUNS]), seed=int(state[K.SHIFT_SEED]): shift.run_many(
                runs, store, seed=seed, say=say, should_stop=stop.is_set), "shift"))
if shifting:
    c[1].button("Stop the shift test", key=K.SHIFT_STOP, on_click=shift_job.stop)


@st.fragment(run_every=1.0 if shifting else None)
def shift_view() -> None:
    results = parts.background_result(owner, "shift", shifting, "Shift test", "shift test")
    if results is None:
        return
    for result in results:
        st.caption(result.lines()[0])
    rows = shift.table(results)
    accuracy = st.column_config.NumberColumn(format="%.3f")  # every run's column alike, whatever its digits
    st.dataframe(rows, hide_index=True,
                 column_config={n: accuracy for n in rows[0] if n not in ("corruption", "severity")})
    st.caption("Severity 1 and 2: " + "; ".join(f"{c.name} {c.setting(1)} and {c.setting(2)}"
                                                   for c in shift.CORRUPTIONS) + ".")
    st.plotly_chart(charts.shift_accuracy(shift.chart_series(results)), key="inspect.shift_chart")


shift_view()

st.subheader("Prediction flips")
from ftlab import flips  # noqa: E402

flip_runs = {r.id: r for r in explain.same_val_split(records, run)[1:]}
if not flip_runs:
    st.caption("No other kept run was scored on this run's val images with its classes: train another strategy on "
               "the same data and split to compare the images each gets right.")
else:
    if state.get(K.FLIPS_OTHER) not in flip_runs:
        state[K.FLIPS_OTHER] = next(iter(flip_runs))
    other_id = st.selectbox("Against", list(flip_runs), key=K.FLIPS_OTHER, persist_state=K.PERSIST,
                            format_func=lambda i: explore.record_label(flip_runs[i]))
    try:
        found = flips.flips(run, flip_runs[other_id])
    except ValueError as err:
        st.error(str(err))
    else:
        st.markdown(f"**A** {parts.run_title(run.id, run)} · **B** {parts.run_title(other_id, flip_runs[other_id])}")
        st.markdown(f"McNemar's test: {found.test.sentence}.")
        st.dataframe(found.table(), hide_index=True)
        st.caption("Under each image: its true class · A's prediction and its probability · B's.")
        for which, count, title in (("a", len(found.only_a), "A right, B wrong"),
                                    ("b", len(found.only_b), "B right, A wrong")):
            st.markdown(f"**{title}** ({count:,} image{'s' * (count != 1)}"
                        + (f", the first {flips.SHOWN} shown)" if count > flips.SHOWN else ")"))
            try:
                images, captions = flips.grid(found, which, resources.dataset(config),
                                              resources.predictor(run.id, str(store.home)),
                                              resources.predictor(other_id, str(store.home)))
            except (data.DataError, CheckpointError, KeyError) as err:
                st.warning(f"The images cannot be shown: {err.args[0] if isinstance(err, KeyError) else err}")
                continue
            if images:
                st.image(images, width=HARD_PX, caption=captions)
