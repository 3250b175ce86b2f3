"""Train/val/test index splits (stratified, seeded) and long-tail subsampling."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ftlab import diversity
from ftlab.messages import some
from ftlab.data.dataset import DataError, Dataset


@dataclass(frozen=True, eq=False)
class Split:
    train: np.ndarray  # int64 indices into the dataset
    val: np.ndarray
    test: np.ndarray  # may be empty: then there is no test evaluation
    seed: int

    def to_dict(self) -> dict:
        """JSON-serialisable form, saved with each run."""
        return {"train": self.train.tolist(), "val": self.val.tolist(), "test": self.test.tolist(), "seed": self.seed}

    @classmethod
    def from_dict(cls, d: dict) -> Split:
        return cls(*(np.asarray(d[k], dtype=np.int64).reshape(-1) for k in ("train", "val", "test")), int(d["seed"]))


def make_split(ds: Dataset, *, val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0) -> Split:
    """Splits the source gives are kept; a missing val (and test, when ``test_fraction`` > 0) is carved
    from the training pool, stratified by class and seeded. Fractions are of the training pool
    (everything, for sources without given splits). Items the source leaves unassigned count as training pool.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be "
                        "between 0 and 1 and leave something to train on.")
    given = ds.given_split
    pool = np.flatnonzero((given == "train") | (given == ""))
    val, test = np.flatnonzero(given == "val"), np.flatnonzero(given == "test")
    carved_test = 0.0
    if test.size == 0 and test_fraction > 0:
        pool, test = _carve(ds.labels, pool, test_fraction, seed, "test")
        carved_test = test_fraction
    if val.size == 0 and val_fraction > 0:
        # Relative to what is left, so that val is val_fraction of the original pool.
        pool, val = _carve(ds.labels, pool, val_fraction / (1 - carved_test), seed, "validation")
    if pool.size == 0:
        raise DataError(f"{ds.name}: no training images (only val/test given). Add a train/ folder.")
    untrained = sorted(set(ds.labels[np.concatenate([val, test])].tolist()) - set(ds.labels[pool].tolist()))
    if untrained:
        names = some([repr(ds.classes[k]) for k in untrained])
        raise DataError(f"{ds.name}: {len(untrained):,} class(es) have val/test images but no training images: "
                        f"{names}. Add them to train/, or remove them from val/ and test/.")
    return Split(np.sort(pool), np.sort(val), np.sort(test), seed)


def _carve(labels: np.ndarray, pool: np.ndarray, fraction: float, seed: int,
           what: str) -> tuple[np.ndarray, np.ndarray]:
    """(rest, carved): ``fraction`` of ``pool``, class proportions kept."""
    from sklearn.model_selection import train_test_split

    if pool.size < 2:
        raise DataError(f"Only {pool.size} training image(s): too few to set aside a {what} set.")
    try:
        rest, carved = train_test_split(pool, test_size=fraction, stratify=labels[pool], random_state=seed)
    except ValueError:
        # scikit-learn refuses classes of one item, and fewer carved items than classes.
        rest, carved = _carve_per_class(labels, pool, fraction, seed)
    return np.asarray(rest, dtype=np.int64), np.asarray(carved, dtype=np.int64)


def _carve_per_class(labels: np.ndarray, pool: np.ndarray, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fallback for tiny classes: every class of >= 2 items gives round(fraction * n) items, at least
    one and never its last; a class of one item stays in training. Small sets so get a carved
    item of every class they can spare, even if that carves more than ``fraction`` overall."""
    rng = np.random.default_rng(seed)
    rest, carved = [], []
    for k in np.unique(labels[pool]):
        members = rng.permutation(pool[labels[pool] == k])
        n = min(len(members) - 1, max(1, round(fraction * len(members))))
        carved.append(members[:n])
        rest.append(members[n:])
    return np.concatenate(rest), np.concatenate(carved)


def long_tail_indices(labels: np.ndarray, indices: np.ndarray, ratio: float, seed: int = 0) -> np.ndarray:
    """Subsample ``indices`` so that class counts decay exponentially to max/min ~= ``ratio``.

    Classes are ranked by their current count; the largest is kept whole, each class keeps at
    least one item, and no class can grow. Returns sorted indices.

    >>> labels = np.repeat([0, 1, 2], 10)
    >>> kept = long_tail_indices(labels, np.arange(30), ratio=10)
    >>> np.bincount(labels[kept]).tolist(), bool(np.all(np.diff(kept) > 0))
    ([10, 3, 1], True)
    """
    if ratio < 1:
        raise DataError(f"The imbalance ratio is max/min class count, so at least 1; got {ratio}.")
    indices = np.asarray(indices, dtype=np.int64)
    present, counts = np.unique(labels[indices], return_counts=True)
    targets = diversity.long_tail_counts(counts.tolist(), ratio)
    rng = np.random.default_rng(seed)
    kept = [rng.choice(indices[labels[indices] == k], n, replace=False) for k, n in zip(present, targets)]
    return np.sort(np.concatenate(kept)) if kept else indices[:0]


def per_class_indices(labels: np.ndarray, indices: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """At most ``per_class`` of ``indices`` from each class, drawn with ``seed``; sorted. A class with
    fewer keeps them all (the caller says so).

    >>> labels = np.repeat([0, 1], [5, 2])
    >>> np.bincount(labels[per_class_indices(labels, np.arange(7), 3)]).tolist()
    [3, 2]
    """
    if per_class < 1:
        raise DataError(f"images per class must be at least 1; got {per_class}.")
    indices = np.asarray(indices, dtype=np.int64)
    rng = np.random.default_rng(seed)
    kept = []
    for k in np.unique(labels[indices]):
        members = indices[labels[indices] == k]
        kept.append(members if len(members) <= per_class else rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(kept)) if kept else indices[:0]


def per_class_words(per_class: int, counts: "list[int] | np.ndarray", classes: "list[str] | tuple[str, ...]") -> str:
    """What ``per_class`` images per class means against the training split's ``counts`` per class,
    in words a label can carry: the number itself when every class has that many, else what the
    classes that have fewer keep (`per_class_indices` keeps all of them).

    >>> per_class_words(5, [9, 9], ["a", "b"])
    '5'
    >>> per_class_words(50, [9, 12], ["a", "b"])
    'all 21 (50 per class asked; the largest class has 12)'
    >>> per_class_words(10, [9, 12], ["a", "b"])
    "10 (the class 'a' has only 9)"
    """
    counts = [int(c) for c in counts]
    if not counts or per_class <= min(counts):
        return str(per_class)
    if per_class >= max(counts):
        return f"all {sum(counts)} ({per_class} per class asked; the largest class has {max(counts)})"
    fewer = [f"{classes[i]!r} has only {c}" for i, c in enumerate(counts) if c < per_class]
    return f"{per_class} (the class {some(fewer, 2)})" if len(fewer) == 1 else \
        f"{per_class} ({len(fewer)} classes have fewer: {some(fewer, 2)})"
