"""What the app shows of a data set, a model and a kept run: reads over ftlab's data, models and records.

The steps from a config to its data (``ftlab.data.load_for``, ``split_for``) live with the data;
this module holds only what pages show of them.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import numpy as np

from ftlab import data, diversity, freeze, tasks
from ftlab.catalogue import Weights
from ftlab.config import TrainConfig, resolved_image_size, resolved_lr
from ftlab.edit_options import ModelEdits, is_new_block  # not ftlab.edits: it imports torch
from ftlab.messages import printable
from ftlab.metrics import most_confused

SPLITS = ("train", "val", "test")
CONFUSION_CLASSES = 30  # classes a confusion matrix shows legibly; beyond, the most confused ones
REPORT_ROWS = 200  # rows of a per-class table; beyond, the classes with the lowest F1
# options a run's default label names when they differ from the defaults (epochs always)
# (a head with hidden layers, truncation and adapters are named by `edits_text`)
LABEL_OPTIONS = ("weights", "lr", "image_size", "imbalance_ratio", "optimizer", "schedule", "batch_size",
                 "dropout", "label_smoothing", "class_weighting", "balanced_sampling", "random_crop", "flip",
                 "color_jitter", "early_stopping")


def split_counts(ds: data.Dataset, split: data.Split, task: str | None = None) -> dict[str, list[int]]:
    """Images per class of ``task`` (default: the first task) in each non-empty split."""
    classes, labels = {name: (c, y) for name, c, y in data_tasks(ds)}[ds.task if task is None else task]
    counts = {name: diversity.counts_of(labels[getattr(split, name)], len(classes)) for name in SPLITS}
    return {name: c for name, c in counts.items() if sum(c)}


def data_tasks(ds: data.Dataset) -> list[tuple[str, tuple[str, ...], np.ndarray]]:
    """Every task of ``ds`` as (name, classes, one label per item), the first task first.

    >>> [(name, classes) for name, classes, _ in data_tasks(data.load_dataset("shapes", shapes=data.ShapesOptions(2, 2, 8)))]
    [('shape', ('circle', 'square')), ('colour', ('red', 'green', 'blue', 'yellow'))]
    """
    return [(ds.task, ds.classes, ds.labels), *((t.name, t.classes, t.labels) for t in ds.tasks)]


def tasks_text(ds: data.Dataset) -> str:
    """A data set's tasks in words, for a caption: "" when it has only its classes.

    >>> tasks_text(data.load_dataset("shapes", shapes=data.ShapesOptions(2, 2, 8)))
    'Two tasks: shape (2 classes), colour (4 classes).'
    """
    if not ds.tasks:
        return ""
    count = {2: "Two", 3: "Three", 4: "Four"}.get(len(ds.tasks) + 1, f"{len(ds.tasks) + 1}")
    named = ", ".join(f"{printable(name)} ({len(classes):,} classes)" for name, classes, _ in data_tasks(ds))
    return f"{count} tasks: {named}."


def format_duration(seconds: float) -> str:
    """Seconds under a minute (two figures under ten, so a sub-second run is not "0 s"), then
    m:ss, or h:mm:ss from an hour on.

    >>> format_duration(0.0613), format_duration(4.26), format_duration(42.4)
    ('0.061 s', '4.3 s', '42 s')
    >>> format_duration(75.4), format_duration(3725), format_duration(float("nan"))
    ('1:15', '1:02:05', 'unknown')
    """
    if not math.isfinite(seconds) or seconds < 0:
        return "unknown"
    if seconds < 9.95:
        return f"{seconds:.2g} s"
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def progress(snapshot, epochs: int, ended: bool) -> tuple[float, str]:
    """How far a job (an `engine.JobSnapshot` of a run of ``epochs`` epochs) has come: the share done,
    for a progress bar, and its words. ``ended``: the job finished, stopped or failed.

    >>> from types import SimpleNamespace as S
    >>> step = S(epoch=2, step=5, steps=10, images_per_second=812.4, seconds_left=75)
    >>> progress(S(epochs=[1], last_step=step, message=""), 4, ended=False)
    (0.375, 'Epoch 2/4 · batch 5/10 · 812 images/s · 1:15 left')
    >>> progress(S(epochs=[1, 2], last_step=step, message="stopped"), 4, ended=True)
    (0.5, '2 of 4 epoch(s) done')
    >>> progress(S(epochs=[], last_step=None, message="decoding images"), 4, ended=False)
    (0.0, 'Decoding images…')
    """
    step = snapshot.last_step
    if ended:
        return min(len(snapshot.epochs) / epochs, 1.0), f"{len(snapshot.epochs)} of {epochs} epoch(s) done"
    if step is None:
        return 0.0, f"{snapshot.message[:1].upper()}{snapshot.message[1:]}…"
    done = ((step.epoch - 1) * step.steps + step.step) / (epochs * step.steps)
    return min(done, 1.0), (f"Epoch {step.epoch}/{epochs} · batch {step.step}/{step.steps} · "
                            f"{step.images_per_second:.0f} images/s · {format_duration(step.seconds_left)} left")


def val_accuracy_change(epochs: list) -> float | None:
    """The last epoch's val accuracy against the one before, to the three places shown; None after one
    epoch, and 0.0 (never -0.0, which shows as a fall) when it did not change at those places.

    >>> from types import SimpleNamespace as S
    >>> val_accuracy_change([S(val_accuracy=0.5), S(val_accuracy=0.6254)]), val_accuracy_change([S(val_accuracy=0.5)])
    (0.125, None)
    >>> str(val_accuracy_change([S(val_accuracy=0.5001), S(val_accuracy=0.5)]))
    '0.0'
    """
    if len(epochs) < 2:
        return None
    return round(epochs[-1].val_accuracy - epochs[-2].val_accuracy, 3) + 0.0  # + 0.0: -0.0 becomes 0.0


def best_val_accuracy(epochs: list) -> float:
    return max(e.val_accuracy for e in epochs)


def long_tail_text(ratio: float) -> str:
    """A long-tail subsampling in words, as the labels and summaries name it.

    >>> long_tail_text(10.0), long_tail_text(2.5)
    ('long tail ×10', 'long tail ×2.5')
    """
    return f"long tail ×{ratio:g}"


# the figures of the imbalance simulator: label, Distribution field, format of the value and of its change
TAIL_FIGURES = (("Entropy after (bits)", "entropy_bits", "{:.3f}", "{:+.3f}"),
                ("Normalised entropy after", "normalised_entropy", "{:.3f}", "{:+.3f}"),
                ("Effective classes after", "effective_classes", "{:.2f}", "{:+.2f}"),
                ("Training images after", "total", "{:,}", "{:+,}"))


def long_tail_figures(before: list[int], ratio: float) -> tuple[list[int], list[tuple[str, str, str]]]:
    """What a long tail of ``ratio`` would make of the training split's class counts ``before``: the
    counts after, and (label, value after, change) of each figure a user compares.

    >>> after, figures = long_tail_figures([100, 100], 4.0)
    >>> after, figures[-1]
    ([100, 25], ('Training images after', '125', '-75'))
    """
    after = diversity.long_tail_counts(before, ratio)
    now, sim = diversity.distribution(before), diversity.distribution(after)
    return after, [(label, value.format(getattr(sim, name)), change.format(getattr(sim, name) - getattr(now, name)))
                   for label, name, value, change in TAIL_FIGURES]


def final_split(final: dict) -> str:
    """The split a run's final figures are shown for: test when the run has one, else val."""
    return "test" if "test" in final else "val"


def device_text(device) -> str:
    """A ``torch.device`` for a person: the GPU's name, Apple MPS, or the CPU and its cores."""
    if device.type == "cuda":
        import torch

        return f"CUDA · {torch.cuda.get_device_name(device)}"
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU · {os.cpu_count()} cores"


def display_name(dataset: str) -> str:
    r"""A registered name as it is; a folder or .zip path by its last part, printable (a byte that
    is not UTF-8 as ``\xff``).

    >>> display_name("/data/bienen" + chr(0xDCFF) + "/"), display_name("digits")
    ('bienen\\xff', 'digits')
    """
    return printable(os.path.basename(dataset.rstrip("/\\")) or dataset)


def strategy_label(strategy: object, frozen_blocks: object = None) -> str:
    """A config's freezing for labels and summaries: `freeze.Strategy.label`. Never raises: a stored
    run's odd or old strategy text is shown as it is, so the run still lists.

    >>> strategy_label("top-2"), strategy_label("gradual", ["stem", "stage1"]), strategy_label("top3")
    ('top-2', 'custom (2 frozen)', 'top3')
    """
    frozen = tuple(frozen_blocks) if isinstance(frozen_blocks, (list, tuple)) else None
    try:
        return freeze.Strategy.parse(strategy, frozen).label
    except ValueError:
        return freeze.Strategy("custom", frozen_blocks=frozen).label if frozen is not None else str(strategy)


def run_label(config: TrainConfig | dict) -> str:
    """What tells a run apart: its name, or data · backbone · strategy · key options.

    >>> run_label({"dataset": "/d/pets.zip", "backbone": "resnet18", "strategy": "top-2", "epochs": 3, "lr": 0.01})
    'pets.zip · resnet18 · top-2 · 3 epochs, lr 0.01'
    >>> run_label({"name": "my first run", "dataset": "digits"})
    'my first run'
    """
    c = config.to_dict() if isinstance(config, TrainConfig) else dict(config)
    if str(c.get("name") or "").strip():
        return printable(str(c["name"]).strip())
    default = TrainConfig().to_dict()
    strategy = strategy_label(c.get("strategy", "?"), c.get("frozen_blocks"))
    epochs = c.get("epochs", default["epochs"])
    options = [f"{epochs} epoch{'' if epochs == 1 else 's'}"]
    for name in LABEL_OPTIONS:
        value = c.get(name, default[name])
        if value == default[name] or value is None:
            continue
        if name == "weights":
            options.append(Weights.parse(str(value)).describe())
        elif name == "image_size":
            options.append(f"{value} px")
        elif name == "imbalance_ratio":
            options.append(long_tail_text(value) if isinstance(value, (int, float)) else f"long tail {value}")
        elif isinstance(value, bool):
            options.append(name.replace("_", " "))
        else:
            options.append(f"{name.replace('_', ' ')} {value:g}" if isinstance(value, float)
                           else f"{name.replace('_', ' ')} {value}")
    edited = edits_text(c)
    return " · ".join([display_name(str(c.get("dataset", "?"))), str(c.get("backbone", "?")), strategy,
                       ", ".join(options)] + ([edited] if edited else []))


def edits_text(config: dict) -> str:
    """A run's model edits in words (`ModelEdits.describe`), "" for none; a config from before
    edits names its hidden layer. A config whose edit options are not of their types says so.

    >>> edits_text({"head": [512, 128], "activation": "gelu", "truncate_after": "stage5"})
    'head 512,128 gelu; truncated after stage5'
    >>> edits_text({"hidden": 64}), edits_text({"dropout": 0.2})
    ('head 64 relu', '')
    """
    try:
        return ModelEdits.from_dict(config).describe()
    except ValueError:
        return "edits unreadable"


def record_label(record, with_id: bool = True) -> str:
    """A kept run (`ftlab.runs.RunRecord`) for a list: its `run_label`, then its id."""
    label = run_label(_config_of(record))
    return f"{label} — {record.id}" if with_id else label


def _config_of(record) -> dict:
    config = record.config if isinstance(record.config, dict) else {}
    return {**config, "dataset": record.dataset, "backbone": record.backbone, "strategy": record.strategy}


@dataclass(frozen=True)
class BlockRow:
    """One block of a model as the Model page's table shows it."""

    block: str
    parameters: int
    train: bool  # trains from the first epoch (a gradual plan adds blocks later: `BlockTable.schedule`)
    lr_factor: float | None  # the block's learning rate over the head's, as its param group has it (None: removed)
    note: str = ""  # how an edit of the model changed the block ("added", "removed"); "" for the backbone's own
    task: str = ""  # several tasks: the task this row's head classifies (one row per task's head, each "head")
    outputs: int | None = None  # several tasks: that head's out features (its last layer's), the task's classes


@dataclass(frozen=True)
class BlockTable:
    """A config's model, block by block, with what trains and at what rate, and the totals."""

    rows: tuple[BlockRow, ...]
    trainable: int  # parameters that train from the first epoch
    total: int
    schedule: str = ""  # how the plan goes on from the first epochs, in a sentence ("" when it does not change)

    @property
    def percent(self) -> float:
        """Trainable parameters as a percentage of all of them."""
        return 100 * self.trainable / self.total if self.total else 0.0

    @property
    def frozen(self) -> frozenset[str]:
        """The model's frozen blocks (a block an edit removed is not in the model)."""
        return frozenset(r.block for r in self.rows if not r.train and r.note != "removed")

    @property
    def blocks(self) -> tuple[str, ...]:
        """The model's blocks with parameters, in order: what a plan freezes (the heads of several tasks
        are one block, ``head``)."""
        return tuple(dict.fromkeys(r.block for r in self.rows if r.note != "removed"))

    @property
    def labels(self) -> list[str]:
        """Each row's name for the block chart, which needs them apart: a task's head as "head · task"."""
        return [f"{r.block} · {r.task}" if r.task else r.block for r in self.rows]

    @property
    def title(self) -> str:
        """The block chart's title: the model's trainable and total parameters (removed blocks not counted)."""
        return f"Trainable {self.trainable:,} of {self.total:,} parameters ({self.percent:.1f}%)"

    def unticked(self, blocks: list[str], train: list[bool]) -> tuple[frozenset[str], str]:
        """What a user's edit of the table's ``train`` column asks for: the model's blocks left
        unticked, and why it asked for what cannot be ("" when it did not): a new block (the head
        or an adapter) frozen — they start untrained and always train; a removed block ticked."""
        removed = {r.block for r in self.rows if r.note == "removed"}
        frozen = frozenset(b for b, t in zip(blocks, train) if not t and b not in removed)
        if any(is_new_block(b) for b in frozen) or any(t and b in removed for b, t in zip(blocks, train)):
            return frozen, ("The new head always trains: it starts from random weights. So do adapters (they start "
                            "as the identity), and removed blocks are not in the model.")
        return frozen, ""

    def columns(self) -> dict[str, list]:
        """The rows as the table's columns; ``note`` only when some row has one."""
        columns = {"block": [r.block for r in self.rows], "parameters": [r.parameters for r in self.rows],
                   "train": [r.train for r in self.rows], "learning rate ×": [r.lr_factor for r in self.rows]}
        if any(r.note for r in self.rows):
            columns["note"] = [r.note for r in self.rows]
        if any(r.task for r in self.rows):  # several tasks: which task each head classifies, into how many classes
            columns["task"] = [f"{r.task} ({r.outputs} classes)" if r.task else "" for r in self.rows]
        return columns


def block_table(config: TrainConfig, num_classes: int | tuple[tuple[str, int], ...]) -> BlockTable:
    """``config``'s model with a head for ``num_classes``, as training will freeze it and set its rates:
    the freeze plan, `freeze.apply_freeze`, `freeze.param_groups` and `freeze.count_params` on the
    model's architecture (built without weights). ``num_classes`` may be (task, classes) pairs
    (`ftlab.tasks.heads`): with several, the model has one head per task and the table a row for
    each. Raises ValueError for a strategy the backbone cannot take."""
    heads = () if isinstance(num_classes, int) or len(num_classes) < 2 else num_classes
    if not isinstance(num_classes, int):
        num_classes = tuple(n for _, n in heads) if heads else num_classes[0][1]
    model = _architecture(config, num_classes)
    plan = freeze.make_plan(model.param_blocks(), config.strategy, gradual_every=config.gradual_every,
                            frozen_blocks=config.frozen_blocks)
    freeze.apply_freeze(model, plan.frozen_at(0), config.bn_frozen)
    groups = freeze.param_groups(model, resolved_lr(config), config.weight_decay, config.lr_decay)
    head_lr = groups[-1]["lr"]
    counts = model.block_params()
    rates = {g["name"]: g["lr"] for g in groups}  # with weight decay a block has two groups at one rate
    notes = _edit_notes(config, num_classes)
    rows = [BlockRow(name, counts[name], name not in plan.frozen_at(0), lr / head_lr, notes.get(name, ""))
            for name, lr in rates.items()]
    trainable, total = freeze.count_params(model)
    rows = _with_removed(_task_heads(rows, model, heads), config, num_classes)
    return BlockTable(tuple(rows), trainable, total, _schedule(plan))


def _task_heads(rows: list[BlockRow], model, heads: tuple[tuple[str, int], ...]) -> list[BlockRow]:
    """Several tasks: the one ``head`` row (their `ftlab.edits.TaskHeads`) as a row per task's head,
    each with that head's parameters and out features, read from the built model."""
    if not heads:
        return rows
    from torch import nn

    at = next(i for i, r in enumerate(rows) if r.block == "head")
    head = rows[at]
    each = [replace(head, parameters=sum(p.numel() for p in module.parameters()), task=name,
                    outputs=[m for m in module.modules() if isinstance(m, nn.Linear)][-1].out_features)
            for (name, _), module in zip(heads, model.head)]
    return rows[:at] + each + rows[at + 1:]


def _edit_notes(config: TrainConfig, num_classes: int | tuple[int, ...]) -> dict[str, str]:
    """What the edits added ("added": adapters). The head is new in every model, so it has no note."""
    from ftlab import edits

    e = config.edits()
    if not e.adapter_after:
        return {}
    return {r.name: r.mark for r in edits.edited_blocks(config.backbone, num_classes, e, resolved_image_size(config))
            if r.mark == "added"}


def _with_removed(rows: list[BlockRow], config: TrainConfig, num_classes: int | tuple[int, ...]) -> list[BlockRow]:
    """``rows`` with the blocks a truncation removed (what they held), before the pool and head."""
    from ftlab import edits

    e = config.edits()
    if not e.truncate_after:
        return rows
    removed = [BlockRow(r.name, r.params, False, None, "removed")
               for r in edits.edited_blocks(config.backbone, num_classes, e, resolved_image_size(config))
               if r.mark == "removed"]
    cut = next((i for i, r in enumerate(rows) if r.block in ("pool", "head")), len(rows))
    return rows[:cut] + removed + rows[cut:]


def _architecture(config: TrainConfig, num_classes: int | tuple[int, ...]):
    """The model's blocks and head on the meta device: shapes and counts, no weights, no memory."""
    import torch

    from ftlab import backbones

    build = lambda: backbones.create_model(config.backbone, num_classes, "random", edits=config.edits(),  # noqa: E731
                                           image_size=resolved_image_size(config))
    try:
        with torch.device("meta"):
            return build()
    except (NotImplementedError, RuntimeError):  # a builder that computes with tensors (RegNet's widths)
        return build()


def _schedule(plan: freeze.FreezePlan) -> str:
    """How a gradual or lp-ft plan goes on from the first epochs, in a sentence; "" for a plan that stays as it
    starts."""
    if plan.strategy == "lp-ft":
        return ("The table shows the probe; once its val accuracy stops improving (lp_patience, at most lp_epochs), "
                "its best head is restored and every block trains at lp_ft_factor times these rates.")
    if plan.strategy != "gradual":
        return ""
    order = " → ".join(reversed(freeze.backbone_blocks(plan.blocks)))  # adapters train from the start
    return f"The table shows the first epochs; then every {plan.gradual_every} epoch(s) one more block trains: {order}."


def confusion_view(confusion, classes: list[str], normalised: bool = False,
                   limit: int = CONFUSION_CLASSES) -> tuple[list[list], list[str], str]:
    """What a confusion matrix can show legibly: every class up to ``limit``, else the ``limit``
    classes with the most mistakes (as true or as predicted class), and a sentence saying so.
    ``normalised``: each row as shares of its true class (of the whole row, shown or not).

    >>> shown, labels, note = confusion_view([[5, 1, 0], [0, 6, 0], [3, 0, 2]], ["a", "b", "c"], limit=2)
    >>> shown, labels
    ([[5, 0], [3, 2]], ['a', 'c'])
    >>> note
    'The 2 classes with the most mistakes, of 3 (1 left out: 1 of the 4 mistakes are not in the matrix).'
    """
    cm = np.asarray(confusion, dtype=np.int64).reshape(len(classes), len(classes))
    diag = np.diag(cm)
    keep = np.arange(len(classes))
    if len(classes) > limit:
        mistakes = cm.sum(0) + cm.sum(1) - 2 * diag
        keep = np.sort(np.argsort(-mistakes, kind="stable")[:limit])
    shown = cm[np.ix_(keep, keep)]
    note = ""
    if len(classes) > limit:
        total = int(cm.sum() - diag.sum())
        hidden = total - int(shown.sum() - np.trace(shown))
        note = (f"The {limit} classes with the most mistakes, of {len(classes):,} ({len(classes) - limit:,} left out: "
                f"{hidden:,} of the {total:,} mistakes are not in the matrix).")
    if normalised:
        totals = cm[keep].sum(axis=1, keepdims=True).astype(float)
        shown = np.divide(shown, totals, out=np.zeros(shown.shape), where=totals > 0)
    return shown.tolist(), [str(classes[i]) for i in keep], note


def report_rows(report: dict, classes: list[str], limit: int = REPORT_ROWS) -> tuple[dict[str, list], str]:
    """Per-class precision, recall, F1 and support as columns: every class up to ``limit``, else
    the ``limit`` with the lowest F1, and a sentence saying so."""
    columns = {"class": [str(c) for c in classes], "precision": list(report["precision"]),
               "recall": list(report["recall"]), "F1": list(report["f1"]), "support": list(report["support"])}
    if len(classes) <= limit:
        return columns, ""
    order = np.argsort(np.asarray(report["f1"], dtype=float), kind="stable")[:limit]
    return ({k: [v[i] for i in order] for k, v in columns.items()},
            f"The {limit} classes with the lowest F1, of {len(classes):,}.")


def hardest_images(ds: data.Dataset, run_classes: list[str], hard: list[dict],
                   size: int) -> tuple[list[np.ndarray], list[str], str]:
    """The images of `hardest`'s rows, decoded from the run's data set, with captions, and a
    sentence for what cannot be shown (a data set changed since the run, files gone)."""
    if not hard:
        return [], [], ""
    where = ds.source or ds.name
    if [str(c) for c in ds.classes] != [str(c) for c in run_classes] or max(h["index"] for h in hard) >= len(ds):
        return [], [], (f"The data set ({where}) is not the one the run was trained on any more: its classes or "
                        "images have changed, so the run's images cannot be found in it.")
    decoded = data.decode(ds, [h["index"] for h in hard], size)
    by_index = dict(zip(decoded.indices.tolist(), decoded.images.permute(0, 2, 3, 1).numpy()))
    shown = [h for h in hard if h["index"] in by_index]
    captions = [f"{ds.classes[ds.labels[h['index']]]} → {h['predicted']} ({h['loss']:.2f})" for h in shown]
    note = ""
    if decoded.skipped:
        note = (f"{len(decoded.skipped)} of the {len(hard)} images could not be read from {where} "
                f"(e.g. {decoded.skipped[0]}). If the data folder was moved or deleted, put it back there to see "
                "them.")
    return [by_index[h["index"]] for h in shown], captions, note


def data_gone_note(err: Exception) -> str:
    """Why a run's images cannot be shown when its data set cannot be loaded at all (its folder is
    gone: the app's data cache follows the folder's files, so it is not served from memory)."""
    return (f"The run's images could not be read: its data set cannot be loaded now ({err}) If the data folder "
            "was moved or deleted, put it back there to see them.")


def samples_per_class(ds: data.Dataset, indices: np.ndarray, per_class: int, image_size: int,
                      seed: int = 0, max_classes: int = 20) -> dict[str, list[np.ndarray]]:
    """A few decoded images (H, W, 3 uint8) of each of the first ``max_classes`` classes."""
    rng = np.random.default_rng(seed)
    indices = np.asarray(indices, dtype=np.int64)
    chosen = []
    for k in range(min(len(ds.classes), max_classes)):
        members = indices[ds.labels[indices] == k]
        chosen.append(np.sort(rng.choice(members, min(per_class, len(members)), replace=False)))
    decoded = data.decode(ds, np.concatenate(chosen) if chosen else indices[:0], image_size)
    images = decoded.images.permute(0, 2, 3, 1).numpy()
    out: dict[str, list[np.ndarray]] = {ds.classes[k]: [] for k in range(len(chosen))}
    for image, label in zip(images, decoded.labels.tolist()):
        out[ds.classes[label]].append(image)
    return out


def hardest(evaluation: dict, classes: list[str], k: int = 12) -> list[dict]:
    """The ``k`` images of a final evaluation (``RunRecord.final["val"]``) with the highest loss.

    >>> ev = {"indices": [7, 8, 9], "losses": [0.1, 2.5, 0.9], "predictions": [0, 0, 1]}
    >>> [(h["index"], h["predicted"]) for h in hardest(ev, ["a", "b"], 2)]
    [(8, 'a'), (9, 'b')]
    """
    losses = np.asarray(evaluation.get("losses", []), dtype=float)
    order = np.argsort(-losses, kind="stable")[:k]
    idx, preds = evaluation["indices"], evaluation["predictions"]
    return [{"index": int(idx[i]), "loss": float(losses[i]), "predicted": classes[int(preds[i])]} for i in order]


def confused_pairs(confusion: list[list[int]], classes: list[str], k: int = 10) -> list[dict]:
    """The most frequent mistakes as rows: true class, predicted class, count, share of the true class.

    >>> confused_pairs([[5, 3], [0, 4]], ["cat", "dog"])
    [{'true': 'cat', 'predicted': 'dog', 'count': 3, 'share of true class': 0.375}]
    """
    totals = np.asarray(confusion).sum(axis=1)
    return [{"true": classes[i], "predicted": classes[j], "count": n, "share of true class": n / int(totals[i])}
            for i, j, n in most_confused(confusion, k)]


def runs_table(records: list, running: set[str] = frozenset()) -> list[dict]:
    """One row per kept run for the runs table (``records``: `ftlab.runs.RunRecord`)."""
    rows = []
    for r in records:
        s = r.summary
        status = r.status
        if status == "running" and r.id not in running:
            status = "running, started outside the app"  # the CLI, torchrun, or another app process
        rows.append({"run": r.id, "label": record_label(r, with_id=False), "data": display_name(r.dataset),
                     "backbone": r.backbone, "strategy": r.strategy,
                     "edits": edits_text(r.config if isinstance(r.config, dict) else {}),
                     "trainable params": _number(s.get("trainable_params")),
                     "total params": _number(s.get("total_params")),
                     "best val accuracy": _number(s.get("best_val_accuracy")),
                     "tasks": tasks.summary_text(s.get("tasks")),  # several tasks: each one's best val accuracy
                     "test accuracy": _number(s.get("test_accuracy")), "epochs": _number(s.get("epochs_run")),
                     "train seconds": _number(s.get("train_seconds")), "precision": precision_text(s),
                     "teacher": (teacher_of(s) or {}).get("run_id", ""),
                     "sweep": sweep_of(r),
                     "status": status,
                     "message": r.message})
    return rows


def sweep_of(record) -> str:
    """The id of the sweep a kept run is a member of (its config's ``sweep``), "" for a run of its own.

    >>> from types import SimpleNamespace as R
    >>> sweep_of(R(config={"sweep": "20261202-150000-ab12cd"})), sweep_of(R(config={})), sweep_of(R(config=None))
    ('20261202-150000-ab12cd', '', '')
    """
    config = record.config if isinstance(record.config, dict) else {}
    return printable(config["sweep"]) if isinstance(config.get("sweep"), str) else ""


def precision_text(summary: dict) -> str:
    """The number formats a run computed in, short: "bf16", or "train fp32, cache bf16" where
    the two parts differ; "" for a run from before --precision (or one that never got that far).

    >>> precision_text({"precision": {"training": "fp32", "caching": "bf16"}})
    'train fp32, cache bf16'
    >>> precision_text({"precision": {"training": "bf16"}}), precision_text({})
    ('bf16', '')
    """
    p = summary.get("precision")
    p = p if isinstance(p, dict) else {}
    train, caching = (p.get(k) if isinstance(p.get(k), str) else "" for k in ("training", "caching"))
    if not caching or caching == train:
        return printable(train)
    return printable(f"train {train or '?'}, cache {caching}")


def machine_text() -> str:
    """This machine's number formats as torch reports them, for the Train page's precision control."""
    from ftlab import precision

    return (f"This machine: {precision.describe_machine()} Precision auto takes bf16 where it measures faster, "
            "else fp32; the run's record says which it used and why.")


def run_notes(summary: dict) -> list[str]:
    """What a run's record says of how it computed, a sentence each: the precision of each part
    and why, what the feature cache did, and how the frozen prefix ran with its check."""
    p = summary.get("precision")
    p = p if isinstance(p, dict) else {}
    notes = [f"{what} in {p[part]}: {p.get(part + '_reason', '')}" for part, what in
             (("training", "Trained"), ("caching", "Cached features computed")) if isinstance(p.get(part), str)]
    for key, what in (("feature_cache", "Feature cache"), ("prefix", "Frozen prefix")):
        if isinstance(summary.get(key), str) and summary[key]:
            notes.append(f"{what}: {summary[key]}")
    if (t := teacher_of(summary)) is not None:
        acc = "" if t["val_accuracy"] is None else f"; its val accuracy on this run's val split {t['val_accuracy']:.3f}"
        notes.append(f"Distilled from run {t['run_id']} ({t['label']}){acc}")
    return [printable(n) for n in notes]


def _number(value) -> float | int | None:
    """A figure of a run's summary as a number, or None where it is missing or is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def teacher_of(summary: dict) -> dict | None:
    """A distilled run's teacher as its summary records it, {"run_id", "label", "val_accuracy"} (the
    accuracy a number or None), or None for a run without one (or a record that does not say).

    >>> teacher_of({"teacher": {"run_id": "20250101-120000-a1b2c3", "label": "x", "val_accuracy": 0.9}})["val_accuracy"]
    0.9
    >>> teacher_of({}), teacher_of({"teacher": {}}), teacher_of({"teacher": "junk"})
    (None, None, None)
    """
    t = summary.get("teacher") if isinstance(summary, dict) else None
    if not isinstance(t, dict) or not isinstance(t.get("run_id"), str) or not t["run_id"]:
        return None
    return {"run_id": printable(t["run_id"]), "label": printable(str(t.get("label") or "")),
            "val_accuracy": _number(t.get("val_accuracy"))}


def teacher_choices(records: list, current: str = "") -> dict[str, str]:
    """The runs the Train page offers as a distillation teacher, id -> what the list shows: "" (no
    teacher) first, then every kept run that ended with a checkpoint (finished or stopped after an
    epoch), newest first, with its best val accuracy. Whether one fits the data's classes is
    checked when the run starts (`ftlab.teacher.problems`). A ``current`` choice that is no longer
    among them (deleted since) stays listed as such, so the run's check names it.

    >>> teacher_choices([], "20250101-120000-a1b2c3")
    {'': 'none (no distillation)', '20250101-120000-a1b2c3': '20250101-120000-a1b2c3 (not a kept run with a checkpoint)'}
    """
    choices = {"": "none (no distillation)"}
    for r in records:
        best = _number(r.summary.get("best_val_accuracy")) if isinstance(r.summary, dict) else None
        if r.status in ("finished", "stopped") and best is not None:
            choices[r.id] = f"{record_label(r)} · val {best:.3f}"
    if current and current not in choices:
        choices[current] = f"{printable(current)} (not a kept run with a checkpoint)"
    return choices


def teacher_options(store, current: str = "") -> dict[str, str]:
    """`teacher_choices` over the runs of ``store`` (a `RunStore`); a store that cannot be read now
    offers no run (the Runs page says what is wrong with it), so the Train page still draws."""
    from ftlab.runs import StoreError

    try:
        records = store.list()
    except StoreError:
        records = []
    return teacher_choices(records, current)
