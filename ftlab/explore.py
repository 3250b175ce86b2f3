"""What the app shows of a data set and of a kept run: reads over ftlab's data and records.

`load_for` and `split_for` are the steps training takes too (`ftlab.engine.prepare_data` calls
them): the seeded, stratified split, then the long tail when ``imbalance_ratio`` > 1, so the
figures a user sees before a run are the figures of the run.
"""
from __future__ import annotations

import math
import os
from dataclasses import replace

import numpy as np

from ftlab import data, diversity
from ftlab.config import TrainConfig
from ftlab.metrics import most_confused

SPLITS = ("train", "val", "test")


def shapes_options(config: TrainConfig) -> data.ShapesOptions:
    """The generated shapes set a config asks for (its seed is the run's seed)."""
    return data.ShapesOptions(num_classes=config.shapes_classes, per_class=config.shapes_per_class,
                              noise=config.shapes_noise, seed=config.seed)


def load_for(config: TrainConfig, *, download: bool = True) -> data.Dataset:
    return data.load_dataset(config.dataset, shapes=shapes_options(config), download=download)


def split_for(config: TrainConfig, ds: data.Dataset) -> data.Split:
    split = data.make_split(ds, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                            seed=config.seed)
    if config.imbalance_ratio > 1:
        split = replace(split, train=data.long_tail_indices(ds.labels, split.train, config.imbalance_ratio,
                                                            config.seed))
    return split


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
    """A registered name as it is; a folder or .zip path by its last part."""
    return os.path.basename(dataset.rstrip("/\\")) or dataset


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
        rows.append({"run": r.id, "data": display_name(r.dataset), "backbone": r.backbone, "strategy": r.strategy,
                     "trainable params": s.get("trainable_params"), "total params": s.get("total_params"),
                     "best val accuracy": s.get("best_val_accuracy"), "test accuracy": s.get("test_accuracy"),
                     "epochs": s.get("epochs_run"), "train seconds": s.get("train_seconds"), "status": status,
                     "message": r.message})
    return rows
