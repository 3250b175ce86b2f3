"""What a loaded data set is: class names, labels, given splits, and where the pixels come from."""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

import numpy as np

SPLIT_NAMES = ("train", "val", "test")
NAMED = 5  # how many names a message lists before it gives only the count


def printable(text: str) -> str:
    """``text`` as valid UTF-8 that any terminal or page can show: bytes of a file name that are not
    UTF-8 become ``\\xff`` escapes, control characters (newlines, ESC) ``\\n``, ``\\x1b``.

    >>> printable("caf\\udcff"), printable("a\\nb"), printable("Bienen 🐝")
    ('caf\\\\xff', 'a\\\\nb', 'Bienen 🐝')
    """
    # On POSIX the bytes of a name that are not UTF-8 arrive as lone surrogates (surrogateescape)
    try:
        decoded = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name makes: shown as its escape
        decoded = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if decoded.isprintable():
        return decoded
    return "".join(c.encode("unicode_escape").decode("ascii") if _hidden(c) else c for c in decoded)


def _hidden(c: str) -> bool:
    """Control and format characters (newline, ESC, right-to-left override), the emoji joiner excepted."""
    return unicodedata.category(c) in ("Cc", "Cf", "Cs") and c not in (" ", "\u200d")


def few(names: list[str] | tuple[str, ...], n: int = NAMED) -> str:
    """The first ``n`` of ``names`` and how many more, for a message that stays short.

    >>> few(["a", "b"]), few([str(i) for i in range(9)], 3)
    ('a, b', '0, 1, 2 and 6 more')
    """
    names = list(names)
    shown = ", ".join(names[:n])
    return shown if len(names) <= n else f"{shown} and {len(names) - n:,} more"


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

    def __post_init__(self) -> None:
        n = len(self.labels)
        held = len(self._files) if self._pixels is None else len(self._pixels)
        if len(self.given_split) != n or held != n:
            raise ValueError(f"inconsistent dataset: {n} labels, {len(self.given_split)} split tags, {held} items")

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
) -> Dataset:
    """Build a `Dataset` with the array dtypes fixed in one place; no given split means all ""."""
    labels = np.asarray(labels, dtype=np.int64)
    if given_split is None:
        given_split = np.full(len(labels), "", dtype="<U5")
    return Dataset(name, tuple(classes), labels, np.asarray(given_split, dtype="<U5"), source, files, pixels,
                   tuple(notes))
