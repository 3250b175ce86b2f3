"""Train: the training options, Start and Stop, and a live view of the run."""
import dataclasses
import math
from dataclasses import replace

import streamlit as st

from ftlab import commands, data, explore, outside, tasks
from ftlab.config import MAX_NAME, TrainConfig, option_type, options, resolved_image_size, resolved_lr, validate
from ftlab.jobs import Job
from ftlab.jobs import END_STATUSES, JobBusy
from ftlab.lr_find import RULE, Finder, FinderOptions
from ftlab.paths import SettingError
from ftlab.runs import StoreError
from ui import charts, keys as K, parts, resources, session as S, watch as W

state = st.session_state
LABELS = {"lr": "Learning rate", "random_crop": "Random resized crop", "flip": "Horizontal flip",
          "grad_clip": "Gradient clipping (max norm)", "step_size": "Step schedule: every",
          "gamma": "Step schedule: factor", "early_stopping": "Early stopping (patience)", "precision": "Precision",
          "feature_cache": "Feature cache", "fast_prefix": "Folded frozen blocks (TorchScript)",
          "augment_views": "Augmented views to cache", "cache_memory_mb": "Cache memory (MB, 0: auto)",
          "teacher": "Teacher (distil from a kept run)", "distill_temperature": "Distillation temperature T",
          "distill_alpha": "Distillation weight a (KD part)",
          "l2sp": "L2-SP beta (0: off)", "l2sp_adaptive": "Adaptive L2-SP beta", "tasks": "Tasks (one head each)"}
STEPS = {"lr": 1e-4, "weight_decay": 1e-4, "momentum": 0.01, "grad_clip": 0.5, "label_smoothing": 0.05,
         "color_jitter": 0.1, "gamma": 0.05, "l2sp": 0.01}


def option_widget(f: dataclasses.Field, placeholders: dict[str, str], task_names: tuple[str, ...] = (),
                  task_help: str | None = None) -> None:
    """One form widget, made from the field's type and metadata; its key binds it to the config.
    ``task_names``: the chosen data set's tasks, which the task choice offers (with ``task_help``)."""
    meta, key = f.metadata, K.cfg(f.name)
    label, kind = LABELS.get(f.name, f.name.replace("_", " ").capitalize()), option_type(f)
    common = {"key": key, "help": meta["help"], "persist_state": K.PERSIST}
    if f.name == "teacher":  # a kept run, chosen from a list rather than typed
        choices = explore.teacher_options(resources.store(), state.get(key, ""))
        st.selectbox(label, list(choices), format_func=choices.get, **common)
    elif f.name == "tasks":  # the data set's tasks, chosen from a list (what is chosen stays offered: data unread)
        offered = list(dict.fromkeys([*task_names, *state.get(key, [])]))
        st.multiselect(label, offered, placeholder=placeholders.get(f.name),
                       **(common | {"help": task_help or meta["help"]}))
    elif kind is bool:
        st.checkbox(label, **common)
    elif meta["choices"]:
        st.selectbox(label, meta["choices"], **common)
    elif kind is str:
        st.text_input(label, placeholder=placeholders.get(f.name), **common)
    elif kind is int:
        st.number_input(label, int(meta["lo"]), int(meta["hi"]), step=1, placeholder=placeholders.get(f.name),
                        **common)
    else:
        st.number_input(label, float(meta["lo"]), float(meta["hi"]), step=STEPS.get(f.name, 0.01), format="%g",
                        placeholder=placeholders.get(f.name), **common)


def find_job() -> Job | None:
    """This session's job, or the one named in the URL: a refreshed browser is a new session,
    but it keeps its URL, and the URL names the run (``?run=<id>``). Another session's job is
    never taken over by accident: two people on one server each see their own."""
    registry = resources.registry()
    job = registry.get(state.get(K.JOB))
    if job is None and (named := registry.get(st.query_params.get("run"))) is not None:
        state[K.JOB], job = named.run_id, named
        S.adopt_config(state, named.config)  # the form and the summary show the run's settings, not defaults
    if job is not None and st.query_params.get("run") != job.run_id:
        st.query_params["run"] = job.run_id
    return job


def watch(run_id: str) -> None:
    state[K.JOB] = run_id
    st.query_params["run"] = run_id
    S.adopt_config(state, resources.registry().get(run_id).config)


def others_running(job: Job | None) -> None:
    """Jobs of other sessions (or of this browser before it lost its URL), and runs started outside the
    app (the CLI or torchrun with this FTLAB_HOME), to watch on purpose."""
    running = resources.registry().running()
    for other in running:
        if job is None or other.run_id != job.run_id:
            cols = st.columns([4, 1])
            cols[0].info(f"Run {parts.run_title(other.run_id, other.config)} is training in another session.")
            cols[1].button("Watch it", key=K.WATCH.format(other.run_id), on_click=watch, args=(other.run_id,))
    try:
        W.notices(resources.store(), {j.run_id for j in running})
    except StoreError:
        pass  # the store cannot be read now: the Runs page says why; this page still trains


def is_running(job: Job | None) -> bool:
    return job is not None and job.active


def is_waiting(job: Job | None) -> bool:
    return job is not None and job.queued


def server_caption() -> None:
    """The server's limits and its queue, or why a limit cannot be read."""
    try:
        text = resources.registry().server_text()
    except SettingError as err:
        st.error(str(err))
        return
    st.caption(text, help="The teacher (whoever runs the server) sets these in the server's environment: "
                          "FTLAB_MAX_CONCURRENT runs train at once (default: one per GPU, one on a machine "
                          "without), and a session may have FTLAB_RUNS_PER_SESSION runs queued or training "
                          "(default 1). A later Start waits in line and begins by itself when a run ahead ends.")


def torchrun_command(config: TrainConfig) -> None:
    """The command that trains these options on several processes, for a terminal beside the app."""
    with st.expander("Run on several processes (torchrun)"):
        nproc = st.number_input("Processes per node", 1, commands.MAX_PROCESSES, step=1, key=K.TORCHRUN_NPROC,
                                persist_state=K.PERSIST,
                                help="torchrun starts this many processes on this machine (one per GPU, or a share "
                                     "of the CPU's cores each); DistributedDataParallel averages their gradients.")
        st.code(commands.train_command(config, int(nproc)), language="bash", wrap_lines=True)
        st.caption(f"Run it in a terminal with this server's FTLAB_HOME: the run then shows on this page and the "
                   f"Runs page, marked {outside.MARK}, its curves following the run store. Only the options "
                   "that differ from the defaults are written.")


def start() -> None:
    """Start's callback: it runs before the page is drawn, so the page that follows shows the run (training
    or in line) with Start already off, in one script run; why it did not start is drawn below the form."""
    config = S.current_config(state)
    problems = validate(config)
    if problems:
        state[K.START_REFUSED] = ("The run cannot start:", problems)
        return
    try:
        job = resources.registry().start(config, resources.store(), owner=state[K.OWNER])
    except (JobBusy, StoreError, SettingError) as err:
        state[K.START_REFUSED] = (str(err), [])
        return
    state[K.JOB] = job.run_id
    st.query_params["run"] = job.run_id  # so that a refresh finds it


def refused() -> None:
    """Why the last Start did not start a run, once."""
    if (why := state.pop(K.START_REFUSED, None)) is not None:
        title, problems = why
        parts.problems(title, problems) if problems else st.error(title)


def deleted(job: Job, snap) -> bool:
    """An ended run whose record is gone: deleted on the Runs page, in this session or another."""
    if snap.status not in END_STATUSES or snap.status == "cancelled" or (snap.status == "failed" and
                                                                         snap.started is None):
        return False  # a run that left the queue, or failed before its data was read, may never have had a record
    try:
        return not resources.store().exists(job.run_id)
    except StoreError:
        return False  # the store cannot tell now: the banner says what the job knows


def banner(job: Job, snap) -> None:
    if deleted(job, snap):
        st.warning(f"Run `{job.run_id}` was deleted on the Runs page: its record, curves and checkpoint are gone.")
        return
    if snap.status == "queued":
        st.info(f"Run `{job.run_id}` is {resources.registry().queue_text(job.run_id) or 'starting'}. It starts "
                "by itself when a run ahead of it ends; this page (or its address) follows it.")
    elif snap.status == "cancelled":
        st.info(f"Run `{job.run_id}` {snap.message}.")
    elif snap.status == "preparing":
        st.info(f"Run `{job.run_id}` is getting ready: {snap.message}…")
    elif snap.status == "running" and snap.started:
        s = snap.started
        sizes = ", ".join(f"{v:,} {k}" for k, v in s.split_sizes.items() if v)
        st.info(f"Run `{job.run_id}` is training on {s.device.upper()}: {len(s.classes)} classes ({sizes} images); "
                f"{s.trainable_params:,} of {s.total_params:,} parameters train.")
    elif snap.status == "finished":
        summary = snap.end.summary
        test = summary.get("test_accuracy")
        test = "" if test is None else f", test accuracy {test:.3f}"
        st.success(f"Run `{job.run_id}` finished: best val accuracy {summary['best_val_accuracy']:.3f} "
                   f"(epoch {summary['best_epoch']}){test}, "
                   f"{explore.format_duration(summary['train_seconds'])} of training. It is kept on the Runs page.")
    elif snap.status == "stopped":
        st.warning(f"Run `{job.run_id}` stopped: {snap.message}. The best checkpoint so far is kept on the Runs page.")
    elif snap.status == "failed":
        st.error(f"Run `{job.run_id}` failed: {snap.message}")
    if snap.started and snap.started.skipped:
        st.warning(f"{len(snap.started.skipped)} file(s) could not be decoded and were left out, e.g. "
                   f"{snap.started.skipped[0]}")


def progress(job: Job, snap) -> None:
    if snap.status in ("queued", "cancelled"):
        return  # nothing has begun: the banner says where it stands
    done, text = explore.progress(snap, job.config.epochs, ended=snap.status in END_STATUSES)
    st.progress(done, text=text)


def figures(job: Job, snap) -> None:
    if not snap.epochs:
        if snap.status not in END_STATUSES and snap.status != "queued":
            st.caption("The curves and the confusion matrix appear when the first epoch ends.")
        return
    last, epochs = snap.epochs[-1], [dataclasses.asdict(e) for e in snap.epochs]
    m = st.columns(5)
    m[0].metric("Epoch", f"{last.epoch}/{last.epochs}")
    m[1].metric("Train loss", f"{last.train_loss:.3f}")
    change = explore.val_accuracy_change(snap.epochs)
    m[2].metric("Val accuracy", f"{last.val_accuracy:.3f}", None if change is None else f"{change:+.3f}",
                delta_color="normal" if change else "off", delta_arrow="auto" if change else "off")  # 0: no green ↑
    m[3].metric("Best val accuracy", f"{explore.best_val_accuracy(snap.epochs):.3f}")
    m[4].metric("Images/s", f"{last.images_per_second:.0f}")
    l2sp = any(e["l2sp_beta"] is not None for e in epochs)
    c = st.columns(3 if l2sp else 2)
    c[0].plotly_chart(charts.curves(epochs, "loss"), key="train.loss_chart")
    teacher = explore.teacher_of({"teacher": snap.started.teacher}) if snap.started else None
    c[1].plotly_chart(charts.curves(epochs, "accuracy", teacher), key="train.accuracy_chart")
    if l2sp:
        c[2].plotly_chart(charts.l2sp_beta(epochs), key="train.l2sp_beta_chart")
    classes = snap.started.classes if snap.started else [str(i) for i in range(len(last.confusion))]
    c = st.columns([3, 2])
    with c[0]:
        parts.confusion(last.confusion, classes, f"Validation confusion matrix, epoch {last.epoch}", K.CM_NORMALISED)
    with c[1]:
        st.markdown("**Per class, on the validation split**")
        parts.report(last.report, classes)
    if last.tasks:  # several tasks: each task's curves, confusion matrix and table
        names = snap.started.tasks if snap.started and snap.started.tasks else \
            {name: [str(i) for i in range(len(f["confusion"]))] for name, f in last.tasks.items()}
        parts.task_figures("train", epochs, names, last.tasks, f"Validation confusion matrix, epoch {last.epoch}")
    if any(e["moved"] for e in epochs):
        st.plotly_chart(charts.moved(epochs), key="train.moved_chart")


FINDER_LABELS = {"steps": "Finder: steps", "start_lr": "Finder: first rate", "end_lr": "Finder: last rate",
                 "at_epoch": "Finder: freeze plan of epoch"}


def finder_options_widgets() -> None:
    """The learning-rate finder's options, in the form: its button applies them with the rest."""
    st.caption(f"Trains what this run would train for a few batches while the rate grows exponentially, and "
               f"keeps no run (Smith 2015). {RULE}")
    cols = st.columns(4)
    for col, f in zip(cols, dataclasses.fields(FinderOptions)):
        meta, key = f.metadata, K.LR_FIND_OPTION.format(f.name)
        common = {"key": key, "help": meta["help"], "persist_state": K.PERSIST}
        if f.type == "int":
            col.number_input(FINDER_LABELS[f.name], int(meta["lo"]), int(meta["hi"]), step=1, **common)
        else:
            col.number_input(FINDER_LABELS[f.name], float(meta["lo"]), float(meta["hi"]), format="%g", **common)


def start_finder(config: TrainConfig) -> None:
    options = S.finder_options(state)
    problems = validate(config) + options.problems(config)
    if problems:
        parts.problems("The learning-rate finder cannot start:", problems)
        return
    state[K.LR_FIND_JOB] = Finder(config, options, resources.store()).start()


def finder_progress(finder: Finder) -> None:
    cols = st.columns([4, 1])
    cols[0].info(f"Finding a learning rate: {finder.message}…")
    cols[1].button("Stop the finder", key=K.LR_FIND_STOP, on_click=finder.stop)


def finder_view(finder: Finder) -> None:
    """The finder's curve, its rule and the rate to use (or why there is none)."""
    if finder.error:
        st.error(f"The learning-rate finder failed: {finder.error}")
        return
    r = finder.result
    st.plotly_chart(charts.lr_find(r.to_dict()), key="train.lr_find_chart")
    st.caption(f"{r.rule} The ramp {r.why}; {r.strategy} at epoch {r.at_epoch} trained "
               f"{', '.join(r.trained_blocks) or 'nothing'} ({r.inputs}).")
    if r.suggestion is None:
        st.warning(f"No suggestion: {r.note}.")
        return
    cols = st.columns([3, 1])
    steep = "" if r.steepest_lr is None else f"; the loss fell fastest at {r.steepest_lr:.3g}"
    cols[0].success(f"Suggested learning rate: {r.suggestion:.3g} (lowest smoothed loss at {r.minimum_lr:.3g}{steep}).")
    if r.note:
        st.info(f"Note: {r.note}.")
    cols[1].button("Use this rate", key=K.LR_FIND_USE, on_click=S.use_rate, args=(state, r.suggestion),
                   help="Puts the suggested rate in the Learning rate field above.")


st.title("Train")
job = find_job()
others_running(job)
running, waiting = is_running(job), is_waiting(job)
config = S.current_config(state)
st.markdown(parts.config_summary(config))
links = st.columns(3)
links[0].page_link("app_pages/data.py", label="Change the data", icon="🗂️")
links[1].page_link("app_pages/model.py", label="Change the model or freezing", icon="🧊")

try:  # placeholders of the fields left empty: what the run will use instead
    auto = {"lr": f"auto: {resolved_lr(replace(config, lr=None)):g}",
            "image_size": f"auto: {resolved_image_size(replace(config, image_size=None))} px"}
except ValueError:
    auto = {}
try:  # several tasks: the choice offers the data set's tasks, and says what an empty one trains
    ds = resources.dataset(config)
    task_names, task_help = ds.task_names(), tasks.choice_help(ds)
    auto |= {"tasks": tasks.placeholder(ds), "task_weights": "1 each"}
except data.DataError:
    task_names, task_help = (), None
S.fit_tasks(state, task_names)  # before the choice is drawn: another data set's tasks are not offered
fields = [f for f in options() if f.metadata["section"] == "training" and f.name != "seed"]
with st.form(K.TRAIN_FORM, border=True):
    st.markdown(f"**Training options** · seed {config.seed} (set on the Data page)")
    st.text_input("Run name (optional)", key=K.cfg("name"), max_chars=MAX_NAME, persist_state=K.PERSIST,
                  placeholder=explore.run_label(replace(config, name="")),
                  help="Tells the run apart on the Runs and Inspect pages; empty: the label shown here.")
    cols, per_col = st.columns(3), math.ceil(len(fields) / 3)
    for i, f in enumerate(fields):
        with cols[i // per_col]:
            option_widget(f, auto)
    with st.expander("Speed: precision and the feature cache"):
        st.caption(explore.machine_text())
        cols = st.columns(2)
        for i, f in enumerate(f for f in options() if f.metadata["section"] == "speed"):
            with cols[i % 2]:
                option_widget(f, auto)
    if objective := [f for f in options() if f.metadata["section"] == "objective"]:
        with st.expander("Objective: distillation, several tasks, regularisation toward the pretrained weights"):
            cols = st.columns(2)
            for i, f in enumerate(objective):
                with cols[i % 2]:
                    option_widget(f, auto, task_names, task_help)
    finder = state.get(K.LR_FIND_JOB)
    with st.expander("Find a learning rate", expanded=finder is not None):
        finder_options_widgets()
        find = st.form_submit_button("Find a learning rate", key=K.LR_FIND,
                                     disabled=running or waiting or (finder is not None and finder.running))
    st.form_submit_button("Start training", type="primary", disabled=running or waiting, key=K.START, on_click=start)
server_caption()
torchrun_command(config)
if find:
    start_finder(S.current_config(state))
if (finder := state.get(K.LR_FIND_JOB)) is not None and finder.running:
    @st.fragment(run_every=0.5)
    def finder_live(finder: Finder) -> None:
        if not finder.running:
            st.rerun()  # the whole page: the curve, and the form's button back
        finder_progress(finder)

    finder_live(finder)
elif finder is not None:  # outside a fragment: "Use this rate" reruns the page, so the form shows the rate
    finder_view(finder)
refused()

if job is None and (asked := st.query_params.get("run")):  # an address kept from a run this server no longer trains
    try:
        kept = resources.store().get(asked)
    except KeyError:
        st.info("The address names a run that is not kept here (it may have been deleted). Start a new one above.")
    else:
        why = f": {kept.message}" if kept.message else ""
        st.info(f"Run {parts.run_title(kept.id, kept)} is not training here: it {kept.status}{why}. It is on the "
                "Runs page.")
if job is None:
    st.caption("No run in this session yet: set the options and press Start training.")
else:
    stop = st.empty()  # a slot either way: the live view below keeps its place when the run ends and Stop goes,
    if running:        # so the rerun replaces it instead of showing it twice (the old copy stale) until it ends
        stop.button("Stop", key=K.STOP, on_click=resources.registry().stop, args=(job.run_id,),
                    help="Ends the run after the current batch; the best checkpoint so far is kept.")
    elif waiting:
        stop.button("Leave the queue", key=K.LEAVE, on_click=resources.registry().leave,
                    args=(job.run_id, state[K.OWNER]), help="Takes the run out of the queue: it never starts, "
                    "and this session may start another.")

    # Only the banner and the progress bar redraw each second. The figures (curves, confusion matrix,
    # per-class table) change once an epoch, so they are drawn with the page and the fragment reruns
    # the page when an epoch ends: the server and the browser share the cores the run trains on.
    # A queued run polls as a running one does: its place and wait change, and when it starts the page
    # is drawn again with Stop in place of Leave the queue.
    @st.fragment(run_every=1.0 if running or waiting else None)
    def live(job: Job, was_running: bool, was_waiting: bool, epochs_shown: int) -> None:
        snap = job.snapshot()
        banner(job, snap)
        progress(job, snap)
        ended = snap.status in END_STATUSES or not job.alive
        if was_running and (ended or len(snap.epochs) != epochs_shown) or was_waiting and snap.status != "queued":
            st.rerun()  # the whole page again: new figures; at the end Start comes back and polling stops

    snap = job.snapshot()
    live(job, running, waiting, len(snap.epochs))
    figures(job, snap)
    st.caption(f"Run {parts.run_title(job.run_id, job.config)}")
if (outside_run := state.get(K.OUTSIDE)) is not None:  # a run started outside the app, watched from the store
    st.subheader("Watching a run started outside the app")
    st.button("Stop watching", key=K.OUTSIDE_STOP, on_click=state.pop, args=(K.OUTSIDE, None),
              help="Only this view goes; the run goes on in its terminal.")
    W.view(resources.store(), outside_run, "train")
