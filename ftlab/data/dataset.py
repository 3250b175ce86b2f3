"""What a loaded data set is: class names, labels, given splits, and where the pixels come from."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


SPLIT_NAMES = ("train", "val", "test")


class DataError(ValueError):
    """A problem with the user's data, with a message that says what to do."""


class DatasetUnavailable(DataError):
    """A download that failed (or was not allowed); the message says how to get the data in another way."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    kind: str  # "builtin" (offline, always there) | "download" (fetched once into the data folder)
    description: str
    num_classes: int | None  # None where it depends on options (shapes)


@dataclass(frozen=True, eq=False)  # eq=False: numpy fields make == ambiguous
class Task:
    """A further label of every image (the shapes' colour, a column of a folder's labels.csv)."""

    name: str
    classes: tuple[str, ...]
    labels: np.ndarray  # int64, (N,): an index into ``classes`` for every item of the data set


@dataclass(frozen=True, eq=False)  # eq=False: numpy fields make == ambiguous
class Dataset:
    """A labelled image set. Item i is decoded by `ftlab.data.decode`; nothing is decoded here.

    Exactly one of ``_files`` (image file paths) and ``_pixels`` (uint8 array, (N, H, W) grey or
    (N, H, W, 3) RGB) holds the items.
    """

    name: str  # registered name, or the folder/zip path as given
    classes: tuple[str, ...]
    labels: np.ndarray  # int64, (N,)
    given_split: np.ndarray  # str, (N,): "train" | "val" | "test" where the source says, "" elsewhere
    source: str  # human-readable origin
    _files: tuple[str, ...] = field(default=(), repr=False)
    _pixels: np.ndarray | None = field(default=None, repr=False)
    notes: tuple[str, ...] = ()  # what the loader left out of the layout and why, for the user to read
    # several tasks: the first task is ``classes``/``labels`` under the name ``task``; ``tasks`` are the others
    task: str = "class"
    tasks: tuple[Task, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.labels)
        held = len(self._files) if self._pixels is None else len(self._pixels)
        if len(self.given_split) != n or held != n:
            raise ValueError(f"inconsistent dataset: {n} labels, {len(self.given_split)} split tags, {held} items")
        if any(len(t.labels) != n for t in self.tasks):
            raise ValueError(f"inconsistent dataset: a task has not one label for each of the {n} items")

    def task_names(self) -> tuple[str, ...]:
        """Every task's name, the first task's first."""
        return (self.task, *(t.name for t in self.tasks))

    def __len__(self) -> int:
        return len(self.labels)


def make_dataset(
    name: str,
    classes: tuple[str, ...],
    labels: np.ndarray | list[int],
    source: str,
    *,
    given_split: np.ndarray | list[str] | None = None,
    files: tuple[str, ...] = (),
    pixels: np.ndarray | None = None,
    notes: tuple[str, ...] = (),
    task: str = "class",
    tasks: tuple[Task, ...] = (),
) -> Dataset:
    """Build a `Dataset` with the array dtypes fixed in one place; no given split means all ""."""
    labels = np.asarray(labels, dtype=np.int64)
    if given_split is None:
        given_split = np.full(len(labels), "", dtype="<U5")
    tasks = tuple(Task(t.name, tuple(t.classes), np.asarray(t.labels, dtype=np.int64)) for t in tasks)
    return Dataset(name, tuple(classes), labels, np.asarray(given_split, dtype="<U5"), source, files, pixels,
                   tuple(notes), task, tasks)
