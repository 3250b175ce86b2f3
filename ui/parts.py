"""Small pieces of page that more than one page draws."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import streamlit as st

from ftlab import explore
from ftlab.config import TrainConfig
from ftlab.metrics import normalise_rows
from ui import charts, keys


def problems(title: str, items: Sequence[str]) -> None:
    st.error(title + "\n" + "\n".join(f"- {p}" for p in items))


def confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str, toggle_key: str) -> None:
    """The confusion matrix with a counts / normalised switch."""
    normalised = st.toggle("Normalise rows (share of each true class)", key=toggle_key, persist_state=keys.PERSIST)
    shown = normalise_rows(matrix) if normalised else matrix
    st.plotly_chart(charts.confusion(shown, classes, title, normalised), key=f"{toggle_key}.chart")


def report(report: Mapping[str, Sequence[float]], classes: Sequence[str]) -> None:
    """Per-class precision, recall, F1 and support as a table."""
    frame = pd.DataFrame({"class": [str(c) for c in classes], "precision": report["precision"],
                          "recall": report["recall"], "F1": report["f1"], "support": report["support"]})
    st.dataframe(frame, hide_index=True, column_config={
        c: st.column_config.NumberColumn(format="%.3f") for c in ("precision", "recall", "F1")})


def config_summary(config: TrainConfig) -> str:
    """One line of what a run would use: data, backbone, weights, strategy."""
    strategy = config.strategy if config.frozen_blocks is None else f"custom ({len(config.frozen_blocks)} frozen)"
    extra = f", long tail ×{config.imbalance_ratio:g}" if config.imbalance_ratio > 1 else ""
    weights = (f"{config.weights} weights" if config.weights in ("imagenet", "random")
               else f"weights from {explore.display_name(config.weights) or 'a file not named yet'}")
    return (f"**Data** {explore.display_name(config.dataset)}{extra} · **backbone** {config.backbone} "
            f"({weights}) · **freezing** {strategy}")
