"""Small pieces of page that more than one page draws."""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pandas as pd
import streamlit as st

from ftlab import backbones, explore, tasks
from ftlab.config import TrainConfig
from ftlab.messages import printable
from ui import charts, keys, resources

if TYPE_CHECKING:
    from ftlab.runs import RunRecord


def store_error(err: Exception) -> None:
    """A fault of the run store, as its sentence; a damaged store gets the button that moves it aside."""
    st.error(str(err))
    if getattr(err, "kind", "") in ("damaged", "layout"):
        st.button("Move the damaged store aside and start an empty one", key=keys.MOVE_ASIDE, on_click=_move_aside,
                  help="Renames runs.db to runs.db.damaged-<time> (kept for recovery); nothing is deleted.")


def _move_aside() -> None:
    from ftlab.runs import StoreError

    try:
        moved = resources.store().move_aside()
        st.session_state[keys.STORE_FLASH] = ("success", f"The damaged run store was moved to {moved}; the next "
                                                         "run starts an empty one.")
    except StoreError as err:
        st.session_state[keys.STORE_FLASH] = ("error", str(err))


# enough to stop links, emphasis, code, HTML, maths, and Streamlit's :colour[...] and :emoji: directives;
# a bare URL may still autolink, but then the text of the link is the URL itself
_MARKDOWN = re.compile(r"([\\`*_\[\]<>|~:$])")


def plain(text: str) -> str:
    """User-typed text (a run's name, a folder path) for markdown: shown as typed, never as a link,
    emphasis, colour or emoji directive, and on one line (`printable`: a newline as ``\\n``, so a name
    typed with one cannot start a heading or a list in the sidebar; a run's name is seen by every session)."""
    return _MARKDOWN.sub(r"\\\1", printable(str(text)))


def problems(title: str, items: Sequence[str]) -> None:
    st.error(title + "\n" + "\n".join(f"- {p}" for p in items))


def confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str, toggle_key: str) -> None:
    """The confusion matrix with a counts / normalised switch; many classes: the most confused."""
    normalised = st.toggle("Normalise rows (share of each true class)", key=toggle_key, persist_state=keys.PERSIST)
    shown, labels, note = explore.confusion_view(matrix, list(classes), normalised)
    st.plotly_chart(charts.confusion(shown, labels, title, normalised), key=f"{toggle_key}.chart")
    if note:
        st.caption(note)


def report(report: Mapping[str, Sequence[float]], classes: Sequence[str]) -> None:
    """Per-class precision, recall, F1 and support as a table; many classes: the weakest."""
    columns, note = explore.report_rows(report, list(classes))
    st.dataframe(pd.DataFrame(columns), hide_index=True, column_config={
        c: st.column_config.NumberColumn(format="%.3f") for c in ("precision", "recall", "F1")})
    if note:
        st.caption(note)


def task_figures(page: str, epochs: Sequence[Mapping], classes: Mapping[str, Sequence[str]],
                 figures: Mapping[str, Mapping], what: str) -> None:
    """Several tasks: the learned (or fixed) task weights per epoch, then one task at a time (a
    selector): its accuracy and loss curves, and its confusion matrix and per-class table from
    ``figures`` ({task: {"confusion", "report"-like columns}}), titled with ``what``."""
    st.markdown("**Several tasks**")
    trace = tasks.weight_trace(list(epochs))
    name = st.selectbox("Task", list(classes), key=keys.TASK_SHOWN.format(page), persist_state=keys.PERSIST,
                        help="Each task has its own head on the shared backbone; the first task's figures are "
                             "the run's.")
    if name not in classes:
        return
    rows = tasks.task_curves(list(epochs), name)
    if rows:  # a run stopped before its first epoch has none
        c = st.columns(3 if trace else 2)
        c[0].plotly_chart(charts.curves(rows, "accuracy"), key=f"{page}.task_accuracy_chart")
        c[1].plotly_chart(charts.curves(rows, "loss"), key=f"{page}.task_loss_chart")
        if trace:
            c[2].plotly_chart(charts.task_weights(trace), key=f"{page}.task_weights_chart")
    if name in figures:
        c = st.columns([3, 2])
        with c[0]:
            confusion(figures[name]["confusion"], classes[name], f"{what}: {name}", keys.TASK_CM_NORMALISED.format(page))
        with c[1]:
            st.markdown(f"**Per class of {name}**")
            report(figures[name].get("report", figures[name]), classes[name])


def config_summary(config: TrainConfig) -> str:
    """One line of what a run would use: data, backbone, weights, strategy."""
    strategy = explore.strategy_label(config.strategy, config.frozen_blocks)
    extra = f", {explore.long_tail_text(config.imbalance_ratio)}" if config.imbalance_ratio > 1 else ""
    weights = plain(backbones.Weights.parse(config.weights).describe())
    name = f"**Run** {plain(config.name.strip())} · " if config.name.strip() else ""
    return (f"{name}**Data** {plain(explore.display_name(config.dataset))}{extra} · **backbone** {config.backbone} "
            f"({weights}) · **freezing** {strategy}")


def run_picker(records: Sequence[RunRecord], key: str) -> RunRecord:
    """A select box over kept runs, each by its `explore.record_label`; returns the chosen run as
    listed (another session may delete it meanwhile). A choice no longer listed (a deleted run, a
    list filtered on another page) falls back to the first run."""
    by_id = {r.id: r for r in records}
    if st.session_state.get(key) not in by_id:
        st.session_state[key] = records[0].id
    chosen = st.selectbox("Run", list(by_id), key=key, format_func=lambda i: explore.record_label(by_id[i]),
                          persist_state=keys.PERSIST)
    return by_id[chosen]


def run_title(run_id: str, run: RunRecord | TrainConfig) -> str:
    """A run for a sentence or a caption: its id as code, then its label (`explore.record_label` of a kept
    run, `explore.run_label` of a job's config), as markdown that shows a typed name as typed."""
    label = explore.run_label(run) if isinstance(run, TrainConfig) else explore.record_label(run, with_id=False)
    return f"`{run_id}` · {plain(label)}"


def background_result(owner: str, kind: str, polling: bool, doing: str, name: str):
    """The result of the session's background ``kind`` job (a probe, a shift test) once it has
    ended; while it runs, or when it failed or was stopped, says so and gives None. ``polling``:
    the page is polling it, so its end redraws the page without the Stop button."""
    current = resources.background(owner, kind)
    if current is None:
        return None
    if current.alive():
        st.info(f"{doing}: {current.message}")
        return None
    if polling:
        st.rerun()  # it ended: the page again, without the Stop button and the polling
    if current.error:
        st.error(f"The {name} failed: {current.error}")
        return None
    if current.result is None:
        st.caption(f"The {name} was stopped.")
    return current.result
