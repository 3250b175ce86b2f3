"""Small pieces of page that more than one page draws."""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import pandas as pd
import streamlit as st

from ftlab import explore
from ftlab.config import TrainConfig
from ui import charts, keys


# enough to stop links, emphasis, code, HTML, maths, and Streamlit's :colour[...] and :emoji: directives;
# a bare URL may still autolink, but then the text of the link is the URL itself
_MARKDOWN = re.compile(r"([\\`*_\[\]<>|~:$])")


def plain(text: str) -> str:
    """User-typed text (a run's name, a folder path) for markdown: shown as typed, never as a link,
    emphasis, colour or emoji directive (a run's name is seen by every session of the server)."""
    return _MARKDOWN.sub(r"\\\1", str(text))


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


def config_summary(config: TrainConfig) -> str:
    """One line of what a run would use: data, backbone, weights, strategy."""
    strategy = config.strategy if config.frozen_blocks is None else f"custom ({len(config.frozen_blocks)} frozen)"
    extra = f", long tail ×{config.imbalance_ratio:g}" if config.imbalance_ratio > 1 else ""
    weights = (f"{config.weights} weights" if config.weights in ("imagenet", "random")
               else f"weights from {plain(explore.display_name(config.weights)) or 'a file not named yet'}")
    name = f"**Run** {plain(config.name.strip())} · " if config.name.strip() else ""
    return (f"{name}**Data** {plain(explore.display_name(config.dataset))}{extra} · **backbone** {config.backbone} "
            f"({weights}) · **freezing** {strategy}")
