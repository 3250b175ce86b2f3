"""Several tasks on one backbone: which of a data set's tasks a run trains, with what weights,
and the model's outputs split per task.

A data set's first task (`ftlab.data.Dataset.task`) is always trained and stays the run's task:
its classes are the run's classes, its val accuracy picks the best epoch and is the run's
``best_val_accuracy``. ``--tasks`` adds further tasks; each gets its own head on the shared
trunk (`ftlab.edits.TaskHeads`), and the model returns their logits side by side.

This module imports torch only where it splits logits, so the configuration can check the
options without it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ftlab.messages import printable, some

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

    from ftlab.data import Dataset

WEIGHTINGS = ("fixed", "uncertainty")
ALL = "all"
# A task's weight scales its gradients as the learning rate does: past a thousand times another's the
# sum is that one task (and 1e308 overflows the loss), so the weights stop there
MAX_WEIGHT = 1000.0


@dataclass(frozen=True, eq=False)  # eq=False: a numpy field makes == ambiguous
class TrainedTask:
    """A task a run trains: its name, classes, one label per item of the data set, and its
    fixed weight in the loss (1 where not given; unused by uncertainty weighting)."""

    name: str
    classes: tuple[str, ...]
    labels: np.ndarray  # int64, (N,), over the whole data set
    weight: float = 1.0


def names_asked(text: str) -> tuple[str, ...] | None:
    """The task names ``--tasks`` lists: () for the first task only (the default), None for all.

    >>> names_asked(""), names_asked("all"), names_asked(" shape, colour ")
    ((), None, ('shape', 'colour'))
    """
    if text.strip().lower() == ALL:
        return None
    return tuple(name.strip() for name in text.split(",") if name.strip())


def weights_asked(text: str) -> tuple[float, ...]:
    """The numbers ``--task-weights`` lists (() when none); ValueError names one that is not a
    positive number of at most `MAX_WEIGHT`.

    >>> weights_asked("1, 0.5")
    (1.0, 0.5)
    """
    weights = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        try:
            w = float(item)
        except ValueError:
            w = float("nan")
        if not 0 < w <= MAX_WEIGHT:  # also refuses nan
            shown = item if len(item) <= 40 else item[:40] + "…"
            raise ValueError(f"task_weights must be positive numbers of at most {MAX_WEIGHT:g} separated by commas, "
                             f"e.g. 1,0.5 (got {shown!r}).")
        weights.append(w)
    return tuple(weights)


def _find(name: str, names: tuple[str, ...]) -> str | None:
    """``name`` as the data spells it (task names are compared ignoring case, as labels.csv's are)."""
    return next((n for n in names if n.casefold() == name.casefold()), None)


def config_problems(config) -> list[str]:
    """What is wrong with a config's task options on their own (a `TrainConfig`); the task names
    are checked against the data by `data_problems` (before the run, where the data can be listed
    without a download) and `select` (at the start of the run, where the data is loaded)."""
    problems = []
    names = names_asked(config.tasks)
    if names and any(n.lower() == ALL for n in names):
        return [f"tasks takes {ALL} alone or a list of task names, not both (got {config.tasks[:80]!r}): give "
                f"--tasks {ALL}, or list the tasks (e.g. shape,colour)."]
    if names and len({n.casefold() for n in names}) < len(names):
        problems.append(f"tasks names a task twice ({config.tasks[:80]!r}; names are compared ignoring case): list "
                        "each task once.")
    try:
        weights = weights_asked(config.task_weights)
    except ValueError as err:
        return problems + [str(err)]
    if weights and config.task_weighting == "uncertainty":
        problems.append("task_weights are for fixed weighting; uncertainty weighting learns each task's weight: "
                        "leave task_weights empty or choose task_weighting fixed.")
    elif weights and names is None:
        problems.append("task_weights need the tasks named in order: give --tasks as a list (e.g. shape,colour) "
                        "instead of all.")
    elif weights and len(weights) != max(len(names), 1):
        problems.append(f"task_weights gives {len(weights)} weights for {max(len(names), 1)} tasks "
                        f"({config.tasks or 'the first task only'}): give one weight per task in --tasks.")
    if getattr(config, "teacher", "").strip() and (names is None or len(names) > 1):
        problems.append("a teacher distils one task (its classes are the first task's): train one task with a "
                        "teacher, or several tasks without one.")
    if names == () and config.task_weighting == "uncertainty":
        problems.append("uncertainty weighting balances several tasks: name them with --tasks (e.g. shape,colour "
                        "or all).")
    return problems


def data_problems(config) -> list[str]:
    """What keeps a config's ``--tasks`` from the data set, checked before a run begins when the data
    set can be listed without a download (a registered set not downloaded yet is checked by the run,
    `select`): a task it does not carry, a list without its first task, uncertainty weighting of one
    task, or what is wrong with the folder itself (a labels.csv's rows, its header...). Nothing is
    listed for a run of the first task only: its data are checked where the run reads them."""
    names = names_asked(config.tasks)
    if names == () and config.task_weighting != "uncertainty":
        return []
    from ftlab import data
    from ftlab.data import prepared

    try:
        ds = prepared.load_for(config, download=False)  # as the run will load it (`ftlab.data.prepare`)
    except data.DatasetUnavailable:  # to be downloaded: the run checks the tasks once it has the data
        return []
    except data.DataError as err:
        return [str(err)]
    try:
        select(config, ds)
    except ValueError as err:
        return [str(err)]
    return []


def select(config, ds: "Dataset") -> tuple[TrainedTask, ...]:
    """The tasks of ``ds`` that ``config`` trains, the data set's first task first; ValueError in
    words (listing the data's tasks) for a name the data does not carry, a list without the
    first task, or uncertainty weighting with one task."""
    first = TrainedTask(ds.task, tuple(ds.classes), np.asarray(ds.labels))
    further = {t.name: TrainedTask(t.name, tuple(t.classes), np.asarray(t.labels)) for t in ds.tasks}
    asked = names_asked(config.tasks)
    asked = ds.task_names() if asked is None else asked or (ds.task,)
    unknown = [n for n in asked if _find(n, ds.task_names()) is None]
    names = tuple(_find(n, ds.task_names()) or n for n in asked)
    if unknown:
        raise ValueError(f"{ds.name} has no task {some(unknown)}: its tasks are {some(ds.task_names())} "
                         f"(the first, {ds.task!r}, is its class). Choose --tasks from them, or all.")
    if ds.task not in names:
        raise ValueError(f"tasks must include the data set's first task, {ds.task!r}: its classes are the run's "
                         f"classes. Give e.g. --tasks {','.join((ds.task, *names))}.")
    weights = dict(zip(names, weights_asked(config.task_weights)))
    ordered = [first] + [further[n] for n in names if n != ds.task]
    chosen = tuple(TrainedTask(t.name, t.classes, t.labels, weights.get(t.name, 1.0)) for t in ordered)
    if len(chosen) == 1 and config.task_weighting == "uncertainty":
        raise ValueError(f"uncertainty weighting balances several tasks, and this run trains only {ds.task!r}: "
                         f"add a task with --tasks (the data's tasks are {some(ds.task_names())}) or choose "
                         "task_weighting fixed.")
    return chosen


def split(logits: "torch.Tensor", sizes: tuple[int, ...]) -> tuple["torch.Tensor", ...]:
    """The model's output, each task's logits apart (one task: the output as it is)."""
    return (logits,) if len(sizes) < 2 else tuple(logits.split(list(sizes), 1))


def probabilities(logits: "torch.Tensor", sizes: tuple[int, ...]) -> "torch.Tensor":
    """Softmax within each task's columns, side by side as the logits are."""
    import torch

    return torch.cat([part.softmax(1) for part in split(logits, sizes)], 1)


# --- what the pages and the CLI show of several tasks (plain data, no torch) ----------------

def task_curves(epochs: list[dict], name: str) -> list[dict]:
    """One task's rows for the train/val curves (``epoch``, ``train_accuracy``, ``val_accuracy``,
    ``train_loss``, ``val_loss``), from epoch records (dicts) that carry ``tasks``.

    >>> task_curves([{"epoch": 1, "tasks": {"colour": {"train_accuracy": 0.5, "val_accuracy": 0.6,
    ...                                                 "loss": 0.7, "val_loss": 0.8}}}], "colour")
    [{'epoch': 1, 'train_accuracy': 0.5, 'val_accuracy': 0.6, 'train_loss': 0.7, 'val_loss': 0.8}]
    """
    rows = []
    for e in epochs:
        f = (e.get("tasks") or {}).get(name)
        if f:
            rows.append({"epoch": e["epoch"], "train_accuracy": f.get("train_accuracy"),
                         "val_accuracy": f.get("val_accuracy"), "train_loss": f.get("loss"),
                         "val_loss": f.get("val_loss")})
    return rows


def weight_trace(epochs: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """Each task's weight in the loss at the end of each epoch: (epoch, weight) pairs per task.

    >>> weight_trace([{"epoch": 1, "tasks": {"shape": {"weight": 1.0}, "colour": {"weight": 0.5}}}])
    {'shape': [(1, 1.0)], 'colour': [(1, 0.5)]}
    """
    trace: dict[str, list[tuple[int, float]]] = {}
    for e in epochs:
        for name, f in (e.get("tasks") or {}).items():
            if f.get("weight") is not None:
                trace.setdefault(name, []).append((e["epoch"], f["weight"]))
    return trace


def summary_text(best: dict | None) -> str:
    """Each task's best val accuracy in a few words ("" for a run of one task).

    >>> summary_text({"shape": 0.95, "colour": 1.0})
    'shape 0.950 · colour 1.000'
    """
    return " · ".join(f"{name} {acc:.3f}" for name, acc in (best or {}).items() if acc is not None)


def record_classes(run) -> dict[str, list[str]]:
    """Each task of a kept run (a `ftlab.runs.RunRecord`) and its classes, the first task's first,
    from its final evaluation ({} for a run of one task; a task's classes are [] where the run
    stopped before its final evaluation)."""
    final = ((run.final or {}).get("val") or {}).get("tasks") or {}
    if final:
        return {name: list(f.get("classes", [])) for name, f in final.items()}
    names = list((run.summary or {}).get("tasks") or {})
    return {name: list(run.classes) if i == 0 else [] for i, name in enumerate(names)}


def placeholder(ds: "Dataset") -> str:
    """What the Train page's empty task choice says: the first task only, and what else there is.

    >>> from ftlab.data.dataset import Task, make_dataset
    >>> placeholder(make_dataset("s", ("a", "b"), [0, 1], "", pixels=np.zeros((2, 4, 4), np.uint8), task="shape",
    ...                          tasks=(Task("colour", ("red", "blue"), [0, 1]),)))
    'shape only (choose colour to add it)'
    """
    if not ds.tasks:
        return f"{ds.task} only: this data set has one task"
    further = [t.name for t in ds.tasks]
    return f"{ds.task} only (choose {some(further)} to add {'it' if len(further) == 1 else 'them'})"


# --- the Train page's task choice: a list of names, as ``--tasks`` is a comma list ------------

def as_choice(text: str) -> list[str]:
    """``--tasks`` as the Train page's multiselect holds it: the names it lists ([] for the first
    task only; ["all"] for all, which `fit_choice` makes the data set's names).

    >>> as_choice(""), as_choice("shape,colour"), as_choice("all")
    ([], ['shape', 'colour'], ['all'])
    """
    names = names_asked(text)
    return [ALL] if names is None else list(names)


def as_text(chosen: "Sequence[str] | str") -> str:
    """The multiselect's names as ``--tasks`` (the inverse of `as_choice`; a string is taken as it is).

    >>> as_text(["shape", "colour"]), as_text([]), as_text("all")
    ('shape,colour', '', 'all')
    """
    return chosen if isinstance(chosen, str) else ",".join(chosen)


def fit_choice(chosen: "Sequence[str]", names: "Sequence[str]") -> list[str]:
    """The task choice kept to a data set's task ``names`` (its first task first): "all" becomes
    every name, names the data set does not carry are dropped (another data set was chosen), and
    the first task is put first where further tasks are chosen without it: it always trains, its
    classes are the run's. ``names`` empty (the data cannot be read now): the choice as it is.

    >>> fit_choice(["colour"], ("shape", "colour")), fit_choice(["all"], ("shape", "colour"))
    (['shape', 'colour'], ['shape', 'colour'])
    >>> fit_choice(["shape", "colour"], ("digit",)), fit_choice(["x"], ())
    ([], ['x'])
    """
    if not names:
        return list(chosen)
    if ALL in chosen:
        return list(names)
    kept = [n for n in dict.fromkeys(chosen) if n in names]
    return [names[0]] + [n for n in kept if n != names[0]] if kept else []


def choice_help(ds: "Dataset") -> str:
    """The Train page's help on the task choice of data set ``ds``."""
    return (f"The tasks to train, one head each on the shared backbone (--tasks). Empty: the first task only "
            f"({ds.task}). The first task always trains: its classes are the run's, its val accuracy picks the best "
            f"epoch. This data set's tasks: {some(ds.task_names())}.")


def heads(config, ds: "Dataset") -> tuple[tuple[tuple[str, int], ...], str]:
    """The heads ``config`` puts on the model for data set ``ds``: (task, class count) per trained
    task, the first task first, and "" — or, where the task options do not fit the data
    (`select`'s sentence), the first task's head alone and that sentence."""
    try:
        chosen = select(config, ds)
    except ValueError as err:
        return ((ds.task, len(ds.classes)),), f"{err} The table shows the first task's head only."
    return tuple((t.name, len(t.classes)) for t in chosen), ""


def heads_text(num_classes: "int | tuple[tuple[str, int], ...]") -> str:
    """The new head(s) of a model in words: a class count, or `heads`' (task, classes) pairs.

    >>> heads_text(10), heads_text((("shape", 4),))
    ('a new head for 10 classes', 'a new head for 4 classes')
    >>> heads_text((("shape", 4), ("colour", 3)))
    'one new head per task: shape 4 classes, colour 3 classes'
    """
    if isinstance(num_classes, int) or len(num_classes) == 1:
        n = num_classes if isinstance(num_classes, int) else num_classes[0][1]
        return f"a new head for {n} classes"
    return "one new head per task: " + ", ".join(f"{name} {n} classes" for name, n in num_classes)


# --- the Runs page's overlay of several runs, one task at a time ----------------------------

FIRST = ""  # the overlay's choice of each run's own first task (the run's classes), whatever its name


def overlay_choices(runs) -> list[str]:
    """The tasks the overlay of ``runs`` (`ftlab.runs.RunRecord`s) can draw: `FIRST`, then each task a
    run of several trained, in the order they first appear."""
    return [FIRST, *dict.fromkeys(name for r in runs for name in (r.summary or {}).get("tasks") or {})]


def overlay_label(name: str) -> str:
    """A choice of `overlay_choices` for its select box."""
    return name or "each run's first task (its classes)"


def overlay_curves(runs, epochs: dict[str, list[dict]], name: str) -> tuple[dict[str, list[dict]], list[str]]:
    """Each run's curves of task ``name`` for the overlay (run id -> rows with ``epoch``, ``train_/val_``
    accuracy and loss; `FIRST`: the runs' own epochs) and the ids of the runs that lack the task.
    A run of one task trained its data set's first task, so it has ``name`` where a run of several
    on the same data set has ``name`` first; a run of several has it when it trained it."""
    if name == FIRST:
        return {r.id: epochs[r.id] for r in runs}, []
    firsts = {r.dataset: next(iter(r.summary["tasks"])) for r in runs if (r.summary or {}).get("tasks")}
    curves, lacking = {}, []
    for r in runs:
        trained = (r.summary or {}).get("tasks") or {}
        if name in trained:
            curves[r.id] = task_curves(epochs[r.id], name)
        elif not trained and firsts.get(r.dataset) == name:
            curves[r.id] = epochs[r.id]
        else:
            lacking.append(r.id)
    return curves, lacking


def lacking_text(lacking: "Sequence[str]", name: str) -> str:
    """Which runs the overlay of task ``name`` leaves out, in a sentence ("" when none).

    >>> lacking_text(["r1"], "colour")
    'Not drawn: r1 did not train colour.'
    """
    if not lacking:
        return ""
    return f"Not drawn: {some(lacking)} did not train {printable(name)}."
