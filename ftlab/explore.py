"""What the app shows of a data set and of a kept run: reads over ftlab's data and records.

The steps from a config to its data (``ftlab.data.load_for``, ``split_for``) live with the data;
this module holds only what pages show of them.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ftlab import backbones, data, diversity
from ftlab.config import TrainConfig
from ftlab.edits import ModelEdits
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


def split_counts(ds: data.Dataset, split: data.Split) -> dict[str, list[int]]:
    """Images per class in each non-empty split."""
    k = len(ds.classes)
    counts = {name: diversity.counts_of(ds.labels[getattr(split, name)], k) for name in SPLITS}
    return {name: c for name, c in counts.items() if sum(c)}


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


def display_name(dataset: str) -> str:
    r"""A registered name as it is; a folder or .zip path by its last part, printable (a byte that
    is not UTF-8 as ``\xff``).

    >>> display_name("/data/bienen" + chr(0xDCFF) + "/"), display_name("digits")
    ('bienen\\xff', 'digits')
    """
    return printable(os.path.basename(dataset.rstrip("/\\")) or dataset)


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
    frozen = c.get("frozen_blocks")
    strategy = f"custom ({len(frozen)} frozen)" if isinstance(frozen, (list, tuple)) else str(c.get("strategy", "?"))
    epochs = c.get("epochs", default["epochs"])
    options = [f"{epochs} epoch{'' if epochs == 1 else 's'}"]
    for name in LABEL_OPTIONS:
        value = c.get(name, default[name])
        if value == default[name] or value is None:
            continue
        if name == "weights":
            options.append(backbones.Weights.parse(str(value)).describe())
        elif name == "image_size":
            options.append(f"{value} px")
        elif name == "imbalance_ratio":
            options.append(f"long tail ×{value:g}" if isinstance(value, (int, float)) else f"long tail {value}")
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
            status = "running elsewhere"  # the CLI, or another app process (`RunStore.mark_interrupted` tells)
        rows.append({"run": r.id, "label": record_label(r, with_id=False), "data": display_name(r.dataset),
                     "backbone": r.backbone, "strategy": r.strategy,
                     "edits": edits_text(r.config if isinstance(r.config, dict) else {}),
                     "trainable params": _number(s.get("trainable_params")),
                     "total params": _number(s.get("total_params")),
                     "best val accuracy": _number(s.get("best_val_accuracy")),
                     "test accuracy": _number(s.get("test_accuracy")), "epochs": _number(s.get("epochs_run")),
                     "train seconds": _number(s.get("train_seconds")), "status": status,
                     "message": r.message})
    return rows


def _number(value) -> float | int | None:
    """A figure of a run's summary as a number, or None where it is missing or is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value
