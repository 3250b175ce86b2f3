"""Sweep: one click trains a run per freeze strategy (and seed), then compares them honestly:
intervals, McNemar's test, the Pareto front and a named pick; and the layer-wise probe."""
import pandas as pd
import streamlit as st

from ftlab import compare, ray_sweep, sweep
from ui import charts, keys as K, parts, resources, session as S

state = st.session_state
store = resources.store()
owner = state[K.OWNER]
config = S.current_config(state)
X_AXES = {"depth": "freeze depth", "trainable_params": "trainable parameters", "cpu_seconds": "CPU-seconds"}


def start_sweep() -> None:
    plan, problems = sweep.checked_plan(config, state.get(K.SWEEP_STRATEGIES) or [], state.get(K.SWEEP_SEEDS, ""),
                                        per_class=state.get(K.SWEEP_PER_CLASS, ""),
                                        workers=state.get(K.SWEEP_WORKERS) or None)
    if plan is not None and (state.get(K.SWEEP_RAY) or "").strip():
        plan, problems = ray_sweep.checked(plan, state[K.SWEEP_RAY], state.get(K.SWEEP_RAY_CPUS, 1),
                                           state.get(K.SWEEP_RAY_GPUS, 0.0))
    if plan is None:
        state[K.SWEEP_FLASH] = ("error", "The sweep cannot start: " + " ".join(problems))
        return
    if sweep.cost_text(plan):  # members that train every block: the plan and its warning first, then a choice
        state[K.SWEEP_PENDING] = plan
        return
    launch(plan)


def launch(plan: sweep.Plan) -> None:
    state.pop(K.SWEEP_PENDING, None)
    home = store.home
    sweep.record(plan, store)  # listed, with its members waiting, from this rerun on
    resources.start_background(owner, "sweep", lambda say, stop: sweep.start(
        plan, store=type(store)(home), stop=stop, emit=sweep.progress_sayer(plan, say)), f"sweep-{plan.sweep_id}")
    state[K.SWEEP_PICKED] = plan.sweep_id


def start_probe() -> None:
    from ftlab import probe

    options = probe.ProbeOptions(per_class=state.get(K.PROBE_PER_CLASS, "2,5,10,20,all"))
    resources.start_background(owner, "probe", lambda say, stop: probe.run_probe(
        config, options, say=say, should_stop=stop.is_set), "probe")


st.title("Sweep freeze strategies")
st.markdown(parts.config_summary(config))
st.caption(sweep.base_text(config) + " Each member is an ordinary run with the options of the Data, Model and "
           "Train pages, its strategy and seed replaced; all are scored on the same val images.")
if flash := state.pop(K.SWEEP_FLASH, None):
    getattr(st, flash[0])(flash[1])
job = resources.background(owner, "sweep")
running = job is not None and job.alive()
with st.form(K.SWEEP_FORM, border=True):
    cols = st.columns([3, 1, 1, 1])
    cols[0].multiselect("Strategies", sweep.STRATEGY_CHOICES, default=list(sweep.DEFAULT_STRATEGIES),
                        key=K.SWEEP_STRATEGIES, accept_new_options=True,
                        help="Type another to add it: top-N for any N, top-all, or top-BLOCK (that block and "
                             "every one above it train).")
    cols[1].text_input("Seeds", "0", key=K.SWEEP_SEEDS, help="A comma list, e.g. 0,1,2: each strategy runs once "
                       "per seed, and the table shows the mean and spread across seeds.")
    cols[2].text_input("Images per class", "", key=K.SWEEP_PER_CLASS, placeholder="e.g. 2,5,10,20",
                       help="Data efficiency: also train the probe and top-N members on this many images per class.")
    cols[3].number_input("Processes", 0, 64, 0, key=K.SWEEP_WORKERS,
                         help="At most this many processes (0: one per core). Members that share cached features "
                              "run one after another in one; on a GPU all run in this one.")
    cols = st.columns([3, 1, 1])
    cols[0].text_input("Ray cluster", "", key=K.SWEEP_RAY, placeholder="empty: this machine; auto, local or HOST:PORT",
                       help="Run the members as Ray tasks: auto finds the cluster `ray start --head` made here, "
                            "HOST:PORT is its head node, local starts Ray on this machine for the sweep. The runs "
                            "come back to this app's store.")
    cols[1].number_input("CPUs per Ray task", 1, ray_sweep.MAX_CPUS, 1, key=K.SWEEP_RAY_CPUS,
                         help="With a Ray cluster: the cores each task asks for (its torch threads).")
    cols[2].number_input("GPUs per Ray task", 0.0, 64.0, 0.0, 0.5, key=K.SWEEP_RAY_GPUS,
                         help="With a Ray cluster: the GPUs each task asks for (0: CPU only; 0.5 shares one).")
    st.form_submit_button("Start the sweep", type="primary", disabled=running, key=K.SWEEP_START,
                          on_click=start_sweep)

pending = state.get(K.SWEEP_PENDING)
if pending is not None and not running:
    lines = sweep.plan_lines(pending)
    st.markdown("**The plan**\n\n" + "\n".join(f"- {parts.plain(line)}" for line in lines
                                                 if not line.startswith("warning: ")))
    st.warning(sweep.cost_text(pending))
    cols = st.columns(2)
    cols[0].button("Start it anyway", type="primary", key=K.SWEEP_CONFIRM, on_click=launch, args=(pending,))
    cols[1].button("Cancel", key=K.SWEEP_CANCEL, on_click=state.pop, args=(K.SWEEP_PENDING, None),
                   help="Nothing is kept: change the strategies above and start again.")

kept = store.sweeps()
if not kept:
    st.caption("No sweep yet: choose the strategies and press Start the sweep.")
else:
    ids = [s["id"] for s in kept]
    if state.get(K.SWEEP_PICKED) not in ids:
        state[K.SWEEP_PICKED] = ids[0]
    labels = {s["id"]: f"{s['id']} · {s['status']} · {len(s['plan'].get('members', []))} runs" for s in kept}
    st.selectbox("Sweep", ids, key=K.SWEEP_PICKED, format_func=labels.get)

    @st.fragment(run_every=2.0 if running else None)
    def live() -> None:
        current = resources.background(owner, "sweep")
        if current is not None and current.alive():
            cols = st.columns([5, 1])
            cols[0].info(f"The sweep is running: {current.message}")
            cols[1].button("Stop", key=K.SWEEP_STOP, on_click=current.stop,
                           help="Ends the member training now (its best checkpoint is kept); the rest do not start.")
        elif current is not None and current.error:
            st.error(f"The sweep failed: {current.error}")
        if running and (current is None or not current.alive()):
            st.rerun()  # it ended: the whole page again, with Start enabled and the fragment no longer polling
        draw(sweep.view(store, state[K.SWEEP_PICKED]))

    def draw(v: sweep.View) -> None:
        if v.message:
            st.caption(f"Sweep {v.status}: {v.message}")
        st.caption("Where it ran: " + "; ".join(v.groups))
        for note in v.notes + ([f"Cost: {v.cost}"] if v.cost else []):
            st.caption(parts.plain(note))
        st.dataframe(pd.DataFrame(v.rows), hide_index=True, key="sweep.plan_table")
        if not v.members or all(m.best_val is None for m in v.members):
            st.caption("The comparison appears when the first member ends.")
            return
        st.subheader("Comparison")
        st.success(v.comparison["pick"]["reason"])
        st.dataframe(pd.DataFrame(compare.member_table(v.members)), hide_index=True, key="sweep.member_table")
        rows = compare.by_strategy(v.members)
        if any(len(r.seeds) > 1 for r in rows):
            st.markdown("**Across seeds**")
            st.dataframe(pd.DataFrame(compare.strategy_table(rows)), hide_index=True, key="sweep.strategy_table")
        x = st.radio("Accuracy against", list(X_AXES), format_func=X_AXES.get, horizontal=True, key=K.SWEEP_X)
        data = compare.chart_points(v.members, x)
        st.plotly_chart(charts.sweep_accuracy(data.points, data.x_title, data.log_x), key="sweep.accuracy_chart")
        if data.note:
            st.caption(data.note)
        pairs = compare.pairwise(v.members)
        lines = compare.pairs_text(pairs)
        st.markdown("**Are the differences real?** " + lines[0])
        if pairs:
            m = compare.pair_matrix(pairs)
            st.plotly_chart(charts.mcnemar_matrix(m["labels"], m["p"], m["text"]), key="sweep.mcnemar_chart")
            with st.expander(f"Each pair ({len(pairs)})"):
                for line in lines[1:]:
                    st.markdown(f"- {parts.plain(line)}")
        if v.efficiency:
            st.markdown("**Data efficiency of the members**")
            st.plotly_chart(charts.sweep_efficiency(v.efficiency), key="sweep.efficiency_chart")
        for strategy, why in v.skipped.items():
            st.caption(f"No data-efficiency points for {strategy}: {why}.")
        st.markdown("**Which layers moved, and did the frozen ones stay put**")
        finished = [m for m in v.members if m.best_val is not None]
        if finished:
            names = {m.run_id: m.label for m in finished}
            chosen = st.selectbox("Member", list(names), format_func=names.get, key=K.SWEEP_MOVED)
            picked = next(m for m in finished if m.run_id == chosen)
            if picked.frozen_check:
                st.caption(f"Freeze-integrity check: {picked.frozen_check}")
            epochs = store.epochs(chosen)
            if any(e.get("moved") for e in epochs):
                st.plotly_chart(charts.moved(epochs), key="sweep.moved_chart")

    live()

st.divider()
st.subheader("Where the class information lives")
st.caption("A logistic regression on the pooled output of each block (train split), scored on val: how much of "
           "the answer each depth already holds. Freezing the blocks before a high point costs little.")
probe_job = resources.background(owner, "probe")
probing = probe_job is not None and probe_job.alive()
cols = st.columns([2, 1, 1])
cols[0].text_input("Images per class (data efficiency)", "2,5,10,20,all", key=K.PROBE_PER_CLASS)
cols[1].button("Run the layer-wise probe", key=K.PROBE_START, on_click=start_probe, disabled=probing)
if probing:
    cols[2].button("Stop the probe", key=K.PROBE_STOP, on_click=probe_job.stop)


@st.fragment(run_every=1.0 if probing else None)
def probe_view() -> None:
    probed = parts.background_result(owner, "probe", probing, "Probing", "probe")
    if probed is None:
        return
    result = probed.to_dict()
    st.caption("\n".join(probed.lines()[:1]))
    st.plotly_chart(charts.probe_depths(result["depths"], result["majority"]), key="sweep.probe_chart")
    if result["efficiency"]:
        st.plotly_chart(charts.data_efficiency(result["efficiency"], result["at"]), key="sweep.probe_efficiency")
    for line in result["skipped"]:
        st.caption(f"Skipped: {line}")


probe_view()
