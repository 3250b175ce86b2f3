"""Plotly figures from plain data (lists, dicts); no Streamlit here, so each is easy to check."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from ftlab.edit_options import is_new_block

TRAIN, VAL = "#1f77b4", "#ff7f0e"
TRAINABLE, FROZEN = "#2ca02c", "#c7c7c7"
SPLIT_COLOURS = {"train": TRAIN, "val": VAL, "test": "#9467bd"}


def _layout(fig: go.Figure, title: str, **kw) -> go.Figure:
    fig.update_layout(title=title, margin=dict(l=10, r=10, t=40, b=10), height=kw.pop("height", 320),
                      legend=dict(orientation="h", y=-0.2), **kw)
    return fig


def class_counts(classes: Sequence[str], counts: Mapping[str, Sequence[int]]) -> go.Figure:
    """Grouped bars: images per class, one bar per split."""
    fig = go.Figure([go.Bar(name=split, x=list(classes), y=list(c), marker_color=SPLIT_COLOURS.get(split))
                     for split, c in counts.items()])
    return _layout(fig, "Images per class and split", barmode="group", xaxis_title="class",
                   yaxis_title="images", xaxis_type="category")


def long_tail(classes: Sequence[str], before: Sequence[int], after: Sequence[int], ratio: float) -> go.Figure:
    fig = go.Figure([go.Bar(name="training split now", x=list(classes), y=list(before), marker_color=FROZEN),
                     go.Bar(name=f"long tail, ratio {ratio:g}", x=list(classes), y=list(after), marker_color=TRAIN)])
    return _layout(fig, "Training images per class: now and with the long tail", barmode="overlay",
                   xaxis_type="category", yaxis_title="images")


def block_params(blocks: Sequence[str], params: Sequence[int], trainable: Sequence[bool], title: str) -> go.Figure:
    """Stacked bars per block: the trainable and the frozen parameters; ``title`` from ftlab."""
    fig = go.Figure([
        go.Bar(name="trainable", x=list(blocks), y=[p if t else 0 for p, t in zip(params, trainable)],
               marker_color=TRAINABLE),
        go.Bar(name="frozen", x=list(blocks), y=[0 if t else p for p, t in zip(params, trainable)],
               marker_color=FROZEN),
    ])
    return _layout(fig, title, barmode="stack", yaxis_title="parameters", xaxis_type="category")


# the legend of a part of the training loss an objective counted (`EpochRecord.parts`), as it contributes
PART_LABELS = {"kd": "train: KD part, a·T²·KL", "ce": "train: CE part, (1−a)·CE"}
TEACHER = "#7f7f7f"


def curves(epochs: Sequence[Mapping], metric: str, teacher: Mapping | None = None) -> go.Figure:
    """Train and val ``metric`` ("loss" or "accuracy") per epoch; for the loss also each part of the
    training loss the objective counted (dashed); for the accuracy the distillation teacher's val
    accuracy (``teacher``: `ftlab.explore.teacher_of`) as a horizontal line."""
    x = [e["epoch"] for e in epochs]
    fig = go.Figure([
        go.Scatter(name="train", x=x, y=[e[f"train_{metric}"] for e in epochs], mode="lines+markers",
                   line_color=TRAIN),
        go.Scatter(name="val", x=x, y=[e[f"val_{metric}"] for e in epochs], mode="lines+markers", line_color=VAL),
    ])
    if metric == "loss":
        for name in dict.fromkeys(k for e in epochs for k in (e.get("parts") or {})):
            fig.add_trace(go.Scatter(name=PART_LABELS.get(name, f"train: {name} part"), x=x,
                                     y=[(e.get("parts") or {}).get(name) for e in epochs], mode="lines",
                                     line_dash="dash"))
    if metric == "accuracy" and teacher and teacher.get("val_accuracy") is not None and x:
        fig.add_trace(go.Scatter(name=f"teacher val ({teacher['val_accuracy']:.3f})", x=[min(x) - 0.5, max(x) + 0.5],
                                 y=[teacher["val_accuracy"]] * 2, mode="lines", line_dash="dot", line_color=TEACHER))
    extra = {"yaxis_range": [0, 1.02]} if metric == "accuracy" else {}
    return _layout(fig, metric.capitalize(), xaxis_title="epoch", yaxis_title=metric, xaxis_dtick=1, **extra)


def task_weights(trace: Mapping[str, Sequence[tuple[int, float]]]) -> go.Figure:
    """Each task's weight in the loss per epoch (several tasks; learned by uncertainty weighting)."""
    fig = go.Figure([go.Scatter(name=name, x=[e for e, _ in points], y=[w for _, w in points], mode="lines+markers")
                     for name, points in trace.items()])
    return _layout(fig, "Task weights in the loss", xaxis_title="epoch", yaxis_title="weight", xaxis_dtick=1)


def moved(epochs: Sequence[Mapping]) -> go.Figure:
    """Which layers moved: per block (rows, input to output) and epoch (columns), how far training
    took its weights from where the run began, ‖θ − θ₀‖ / ‖θ₀‖ (``EpochRecord.moved``). A frozen
    block reads 0. The new blocks (head, adapters) are measured from their initialisation and move
    far more than pretrained ones, so the colour scale is set by the pretrained blocks and a new
    block's cells saturate; every cell's text and hover give its value."""
    kept = [e for e in epochs if isinstance(e.get("moved"), Mapping) and e["moved"]]
    blocks = list(dict.fromkeys(str(b) for e in kept for b in e["moved"]))
    z = [[_number(e["moved"].get(b)) for e in kept] for b in blocks]
    pretrained = [v for b, row in zip(blocks, z) if not is_new_block(b) for v in row if v is not None]
    top = max(pretrained, default=0.0) or max((v for row in z for v in row if v is not None), default=0.0) or 1.0
    labels = [f"{b} (new: from its initialisation)" if is_new_block(b) else b for b in blocks]
    fig = go.Figure(go.Heatmap(z=z, x=[e["epoch"] for e in kept], y=labels, colorscale="Viridis", zmin=0, zmax=top,
                               text=[[_short(v) for v in row] for row in z],
                               texttemplate="%{text}" if len(blocks) * len(kept) <= 300 else None,
                               hovertemplate="%{y}, epoch %{x}: ||θ−θ₀||/||θ₀|| = %{z:.3g}<extra></extra>",
                               colorbar=dict(title="moved")))
    return _layout(fig, "Which layers moved: ||θ − θ₀|| / ||θ₀|| per block", height=min(700, 140 + 26 * len(blocks)),
                   xaxis_title="epoch", xaxis_dtick=1, yaxis_type="category", yaxis_autorange="reversed")


def _number(value: object) -> float | None:
    """A figure from a record, or None (a gap in the chart) for anything else a hand-edited record holds."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _short(value: float | None) -> str:
    return "" if value is None else "0" if value == 0 else f"{value:.2g}"


def l2sp_beta(epochs: Sequence[Mapping]) -> go.Figure:
    """The L2-SP beta each epoch trained with (adaptive L2-SP moves it), on a log axis."""
    kept = [e for e in epochs if _number(e.get("l2sp_beta")) is not None]
    fig = go.Figure(go.Scatter(name="beta", x=[e["epoch"] for e in kept], y=[e["l2sp_beta"] for e in kept],
                               mode="lines+markers", line_shape="hv", line_color=TRAINABLE))
    return _layout(fig, "L2-SP beta per epoch", xaxis_title="epoch", yaxis_title="beta", xaxis_dtick=1,
                   yaxis_type="log")


def confusion(matrix: Sequence[Sequence[float]], classes: Sequence[str], title: str, normalised: bool) -> go.Figure:
    """Rows are the true classes, columns the predicted ones."""
    labels = [str(c) for c in classes]
    text = [[f"{v:.2f}" if normalised else f"{int(v)}" for v in row] for row in matrix]
    fig = go.Figure(go.Heatmap(z=[list(r) for r in matrix], x=labels, y=labels, colorscale="Blues",
                               text=text, texttemplate="%{text}" if len(labels) <= 20 else None,
                               hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>",
                               zmin=0, zmax=1 if normalised else None))
    side = min(700, 260 + 28 * len(labels))
    return _layout(fig, title, height=side, xaxis_title="predicted", yaxis_title="true", xaxis_type="category",
                   yaxis_type="category", yaxis_autorange="reversed")


def overlay(runs: Mapping[str, Sequence[Mapping]], metric: str, task: str = "") -> go.Figure:
    """Val ``metric`` per epoch (solid) and train (dotted) for several runs (of one ``task``, named in the title)."""
    traces = []
    for label, epochs in runs.items():
        x = [e["epoch"] for e in epochs]
        traces.append(go.Scatter(name=f"{label} val", x=x, y=[e[f"val_{metric}"] for e in epochs],
                                 mode="lines+markers", legendgroup=label))
        traces.append(go.Scatter(name=f"{label} train", x=x, y=[e[f"train_{metric}"] for e in epochs],
                                 mode="lines", line_dash="dot", legendgroup=label, opacity=0.6))
    title = f"{metric.capitalize()} per epoch" + (f": {task}" if task else "")
    return _layout(go.Figure(traces), title, xaxis_title="epoch", yaxis_title=metric, height=380)


def scatter(rows: Sequence[Mapping], x: str, y: str, title: str, log_x: bool = False) -> go.Figure:
    """One point per run, coloured by strategy, labelled by run id on hover."""
    fig = go.Figure()
    for strategy in sorted({r["strategy"] for r in rows}):
        pts = [r for r in rows if r["strategy"] == strategy]
        fig.add_trace(go.Scatter(name=strategy, x=[r[x] for r in pts], y=[r[y] for r in pts], mode="markers",
                                 marker_size=11, text=[f"{r['run']} · {r['backbone']}" for r in pts],
                                 hovertemplate="%{text}<br>" + x + " %{x}<br>" + y + " %{y:.3f}<extra></extra>"))
    return _layout(fig, title, xaxis_title=x, yaxis_title=y, xaxis_type="log" if log_x else None)


def top_k(top: Sequence[tuple[str, float]]) -> go.Figure:
    labels = [str(label) for label, _ in top][::-1]
    fig = go.Figure(go.Bar(x=[p for _, p in top][::-1], y=labels, orientation="h", marker_color=TRAIN,
                           text=[f"{p:.1%}" for _, p in top][::-1], textposition="auto"))
    return _layout(fig, "Top classes", xaxis_title="probability", xaxis_range=[0, 1], yaxis_type="category",
                   height=max(220, 60 + 36 * len(top)))


PICK, FRONT = "#d62728", "#7f7f7f"


def sweep_accuracy(points: Sequence[Mapping], x_title: str, log_x: bool = False,
                   title: str = "Best val accuracy with its 95% interval") -> go.Figure:
    """A sweep's members (`ftlab.compare.chart_points`): accuracy with its bootstrap interval as
    error bars, one trace per strategy; the Pareto front along x as a line; the pick as a star."""
    fig = go.Figure()
    for strategy in dict.fromkeys(p["strategy"] for p in points):
        pts = [p for p in points if p["strategy"] == strategy]
        fig.add_trace(go.Scatter(
            name=str(strategy), x=[p["x"] for p in pts], y=[p["accuracy"] for p in pts], mode="markers",
            marker_size=10, text=[p["label"] for p in pts],
            error_y=dict(type="data", symmetric=False, array=[p["high"] - p["accuracy"] for p in pts],
                         arrayminus=[p["accuracy"] - p["low"] for p in pts]),
            customdata=[[p["low"], p["high"]] for p in pts],
            hovertemplate="%{text}<br>" + x_title + " %{x}<br>val %{y:.3f} (95%: %{customdata[0]:.3f}-"
                          "%{customdata[1]:.3f})<extra></extra>"))
    front = sorted((p for p in points if p.get("front")), key=lambda p: (p["x"], -p["accuracy"]))
    if front:
        fig.add_trace(go.Scatter(name="Pareto front", x=[p["x"] for p in front], y=[p["accuracy"] for p in front],
                                 mode="lines", line=dict(color=FRONT, dash="dash", shape="hv"), hoverinfo="skip"))
    for p in (p for p in points if p.get("pick")):
        fig.add_trace(go.Scatter(name=f"pick: {p['label']}", x=[p["x"]], y=[p["accuracy"]], mode="markers",
                                 marker=dict(symbol="star", size=18, color=PICK, line=dict(width=1, color="black")),
                                 hovertemplate=f"pick: {p['label']}<extra></extra>"))
    return _layout(fig, title, height=400, xaxis_title=x_title, yaxis_title="best val accuracy",
                   xaxis_type="log" if log_x else None)


def mcnemar_matrix(labels: Sequence[str], p: Sequence[Sequence[float | None]], text: Sequence[Sequence[str]],
                   title: str = "McNemar's test between members: p-values") -> go.Figure:
    """p-values of McNemar's test between members (`ftlab.compare.pair_matrix`), each cell annotated
    with its text ("n.d." where p ≥ 0.05: not distinguishable). The colour changes sharply at 0.05,
    so the pairs the test tells apart stand out; empty cells (the diagonal, unpaired members) are blank."""
    names = [str(x) for x in labels]
    scale = [[0.0, "#08306b"], [0.0499, "#6baed6"], [0.05, "#f0f0f0"], [1.0, "#ffffff"]]
    fig = go.Figure(go.Heatmap(z=[list(r) for r in p], x=names, y=names, zmin=0, zmax=1, colorscale=scale,
                               text=[list(r) for r in text], texttemplate="%{text}",
                               hovertemplate="%{y} vs %{x}: %{text}<extra></extra>",
                               colorbar=dict(title="p", tickvals=[0, 0.05, 0.5, 1])))
    side = min(700, 260 + 40 * len(names))
    return _layout(fig, title, height=side, xaxis_type="category", yaxis_type="category", yaxis_autorange="reversed")

def sweep_efficiency(series: Mapping[str, Sequence[Mapping]]) -> go.Figure:
    """A sweep's data-efficiency members (`ftlab.sweep.View.efficiency`): per strategy, best val accuracy
    (the mean over its seeds, with the 95% interval as error bars) against training images per class."""
    fig = go.Figure()
    for strategy, pts in series.items():
        fig.add_trace(go.Scatter(
            name=str(strategy), x=[p["images_per_class"] for p in pts], y=[p["mean"] for p in pts],
            mode="lines+markers", text=[p["label"] for p in pts],
            error_y=dict(type="data", symmetric=False, array=[p["high"] - p["mean"] for p in pts],
                         arrayminus=[p["mean"] - p["low"] for p in pts]),
            hovertemplate="%{text} per class: %{y:.3f}<extra>" + str(strategy) + "</extra>"))
    return _layout(fig, "Data efficiency: best val accuracy against training images per class", height=380,
                   xaxis_title="training images per class", yaxis_title="best val accuracy", xaxis_type="log")


# --- where the class information lives (`ftlab.probe`) ----------------------------------

BAND = "rgba(255, 127, 14, 0.2)"  # the 95% interval around the val curve (VAL's colour)


def _band(x: Sequence[float], low: Sequence[float], high: Sequence[float]) -> go.Scatter:
    """The region between ``low`` and ``high`` over ``x``, one closed shape."""
    return go.Scatter(name="95% interval", x=list(x) + list(x)[::-1], y=list(high) + list(low)[::-1],
                      fill="toself", fillcolor=BAND, line_width=0, hoverinfo="skip", mode="lines")


def probe_depths(depths: Sequence[Mapping], majority: float | None = None) -> go.Figure:
    """Val accuracy of the linear probe at each block boundary, input to output, with its 95%
    bootstrap interval as a band (``depths``: `ftlab.probe.ProbeResult.to_dict`'s), and the
    accuracy of always answering the commonest class (``majority``) as a dotted line."""
    x = [d["depth"] for d in depths]
    fig = go.Figure([_band(x, [d["low"] for d in depths], [d["high"] for d in depths]),
                     go.Scatter(name="val accuracy", x=x, y=[d["accuracy"] for d in depths], mode="lines+markers",
                                line_color=VAL, customdata=[[d["block"], d["low"], d["high"], d["features"]]
                                                            for d in depths],
                                hovertemplate="%{customdata[0]}: %{y:.3f} (95%: %{customdata[1]:.3f}–"
                                              "%{customdata[2]:.3f}), %{customdata[3]} features<extra></extra>")])
    if majority is not None and x:
        fig.add_trace(go.Scatter(name=f"always the commonest class ({majority:.3f})", x=[min(x), max(x)],
                                 y=[majority] * 2, mode="lines", line_dash="dot", line_color=TEACHER))
    return _layout(fig, "Linear probe per block: where the class information lives", xaxis_title="block (depth)",
                   yaxis_title="val accuracy", yaxis_range=[0, 1.02], xaxis_tickvals=x,
                   xaxis_ticktext=[d["block"] for d in depths])


def data_efficiency(points: Sequence[Mapping], at: str) -> go.Figure:
    """Val accuracy of the probe at block ``at`` against training images per class (log axis):
    the mean over the draws with its 95% interval as a band, and each draw as a faint dot
    (``points``: `ftlab.probe.ProbeResult.to_dict`'s ``efficiency``)."""
    x = [p["images_per_class"] for p in points]
    draws_x = [p["images_per_class"] for p in points for _ in p["accuracies"]]
    fig = go.Figure([_band(x, [p["low"] for p in points], [p["high"] for p in points]),
                     go.Scatter(name="each draw", x=draws_x, y=[a for p in points for a in p["accuracies"]],
                                mode="markers", marker=dict(color=VAL, opacity=0.35, size=6),
                                hovertemplate="%{x:.4g} per class: %{y:.3f}<extra></extra>"),
                     go.Scatter(name="val accuracy (mean of the draws)", x=x, y=[p["mean"] for p in points],
                                mode="lines+markers", line_color=VAL, text=[p["label"] for p in points],
                                customdata=[[p["low"], p["high"], len(p["accuracies"])] for p in points],
                                hovertemplate="%{text} per class: %{y:.3f} (95%: %{customdata[0]:.3f}–"
                                              "%{customdata[1]:.3f}, %{customdata[2]} draws)<extra></extra>")])
    return _layout(fig, f"Data efficiency: the probe at {at}", xaxis_title="training images per class",
                   yaxis_title="val accuracy", xaxis_type="log", yaxis_range=[0, 1.02])


def lr_find(result: Mapping) -> go.Figure:
    """The learning-rate finder's curve (``LRFindResult.to_dict()``): the loss per step (faint) and
    its smoothed value against the rate on a log axis, the suggested rate marked by a dashed line."""
    lrs = list(result.get("lrs") or [])
    fig = go.Figure([
        go.Scatter(name="loss per step", x=lrs, y=list(result.get("losses") or []), mode="lines", line_color=FROZEN),
        go.Scatter(name="smoothed loss", x=lrs, y=list(result.get("smoothed") or []), mode="lines", line_color=TRAIN),
    ])
    if (rate := _number(result.get("suggestion"))) is not None:
        fig.add_vline(x=rate, line_dash="dash", line_color=VAL)
        fig.add_trace(go.Scatter(name=f"suggested {rate:.3g}", x=[rate, rate], y=[None, None], mode="lines",
                                 line=dict(color=VAL, dash="dash")))  # the line's legend entry
    smoothed = [v for v in result.get("smoothed") or [] if _number(v) is not None]
    # from the lowest loss to the divergence threshold (or the start, if higher): the blow-up past it is off the chart
    extra = {"yaxis_range": [min(smoothed) * 0.9, max(smoothed[0], min(smoothed) * 4.0)]} \
        if smoothed and min(smoothed) > 0 else {}
    return _layout(fig, "Learning-rate finder: loss against the rate", xaxis_title="learning rate (head)",
                   xaxis_type="log", yaxis_title="loss", **extra)


def shift_accuracy(series: Mapping[str, Sequence[Mapping]]) -> go.Figure:
    """The shift test: each run's val accuracy on the clean images and at each corruption and
    severity (`ftlab.shift.chart_series`), one line of markers per run."""
    fig = go.Figure([go.Scatter(name=name, x=[p["setting"] for p in points], y=[p["accuracy"] for p in points],
                                mode="lines+markers") for name, points in series.items()])
    return _layout(fig, "Val accuracy under shift", xaxis_title="corruption and severity",
                   yaxis_title="val accuracy", yaxis_range=[0, 1.02], xaxis_type="category", height=380)


# --- diversity in feature space (the Data page) ------------------------------------------

CLASS_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf")


def vendi_per_class(classes: Sequence[str], images: Sequence[int], vendi: Sequence[float]) -> go.Figure:
    """Per class, its training images and the Vendi score (the effective number of distinct images) over them."""
    fig = go.Figure([
        go.Bar(name="training images", x=list(classes), y=list(images), marker_color=FROZEN),
        go.Bar(name="Vendi score: distinct images", x=list(classes), y=list(vendi), marker_color=TRAIN,
               text=[f"{v:.1f}" for v in vendi], textposition="outside"),
    ])
    return _layout(fig, "Images and distinct images per class (Vendi score)", barmode="overlay",
                   xaxis_type="category", yaxis_title="images")


def feature_map(xy: Sequence[Sequence[float]], labels: Sequence[int], classes: Sequence[str],
                items: Sequence[int], method: str) -> go.Figure:
    """The training images on a 2-D map of their features, a trace (and a colour) per class; each point's
    ``customdata`` is its dataset index, which a selection hands back (`selected_items`)."""
    fig = go.Figure()
    for k, name in enumerate(classes):
        rows = [i for i, label in enumerate(labels) if label == k]
        if not rows:
            continue
        fig.add_trace(go.Scatter(  # SVG points: a click selects one (WebGL points are not elements)
            name=name, x=[xy[i][0] for i in rows], y=[xy[i][1] for i in rows], mode="markers",
            marker=dict(size=7, color=CLASS_COLOURS[k % len(CLASS_COLOURS)], opacity=0.8),
            customdata=[items[i] for i in rows], hovertemplate=f"{name} · image #%{{customdata}}<extra></extra>"))
    axis = {"pca": "principal component", "tsne": "t-SNE"}[method]
    return _layout(fig, "The training images in feature space (select points to see them)", height=460,
                   xaxis_title=f"{axis} 1", yaxis_title=f"{axis} 2", dragmode="lasso")


def selected_items(selection: Mapping | None) -> list[int]:
    """The dataset indices of the points selected on `feature_map` (Streamlit's plotly selection state).

    >>> selected_items({"selection": {"points": [{"customdata": 7}, {"customdata": [3]}, {"x": 1}]}})
    [7, 3]
    >>> selected_items(None)
    []
    """
    points = ((selection or {}).get("selection") or {}).get("points") or []
    out = []
    for p in points:
        value = p.get("customdata")
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if isinstance(value, (int, float)):
            out.append(int(value))
    return out
