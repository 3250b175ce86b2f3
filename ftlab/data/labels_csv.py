"""Further tasks of a folder or .zip: a ``labels.csv`` beside the class folders.

    file,colour,size
    ants/first.jpg,red,small
    train/bees/other.jpg,yellow,large

One row per image, the path relative to the folder that holds labels.csv (class folder, and split
folder if any, included); the class folders stay the first task, each further column is a task
whose classes are its sorted distinct values. Every problem found is named in one message, with
the rows it is in, so that a user fixes the file once.
"""
from __future__ import annotations

import csv
import io
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ftlab.messages import printable
from ftlab.data.dataset import DataError, Task

LABELS_FILE = "labels.csv"
SHOWN = 5  # rows (or files) a message names before it says how many more
# A labels file is read whole: refuse one far larger than a row per image can make (a row of 1 KB is long)
MAX_BYTES_BASE, MAX_BYTES_PER_IMAGE = 16 * 2**20, 1024
MAX_NAME = 80  # characters of a task's name (a column's header), as of a run's name: a label for charts
MAX_LABEL = 255  # characters of a label: a class name, at most what a class folder's name can be
SPELLINGS = ("labels.csv", "Labels.csv", "LABELS.csv", "LABELS.CSV")  # looked for where labels.csv is not read
LABELS_HELP = (f"A {LABELS_FILE} has a header 'file,task_a,task_b,…' and one row per image: its path relative to "
               f"the folder that holds {LABELS_FILE} (e.g. 'ants/first.jpg'), then its label in each task.")


def find_labels(top: Path, root: Path) -> Path | None:
    """The labels.csv (any case) in the data root ``root``, else in a folder between it and ``top``
    (the folder given, which the root was descended from); None when there is none."""
    rel = root.relative_to(top).parts
    for depth in range(len(rel), -1, -1):
        folder = top.joinpath(*rel[:depth])
        found = [p for p in folder.iterdir() if p.name.lower() == LABELS_FILE and p.is_file()]
        if len(found) > 1:
            raise DataError(f"{printable(str(folder))} holds {len(found)} labels files that differ only in case "
                            f"({', '.join(sorted(repr(printable(p.name)) for p in found))}). Keep one.")
        if found:
            return found[0]
    if stray := _stray_labels(root):
        # named from the folder given (a zip's unpacked copy is a folder the user never saw)
        shown = ", ".join(repr(printable(p.relative_to(top).as_posix())) for p in stray[:SHOWN])
        more = f" and {len(stray) - SHOWN:,} more" if len(stray) > SHOWN else ""
        beside = f"into {printable(root.relative_to(top).as_posix() + '/')!r}" if root != top else "to the top folder"
        raise DataError(f"{shown}{more} is in a folder below the class (or split) folders, where a labels file is not "
                        f"read. Move it up beside them ({beside}), its paths relative to that folder (one file for "
                        f"all splits), or delete it. {LABELS_HELP}")
    return None


def _stray_labels(root: Path) -> list[Path]:
    """labels.csv files one or two folders below the data root (in a class, split or other folder), where
    they are not read: a user who put one there meant its tasks to be used. Looked up by name in each
    folder (a few stats each: a class folder may hold a million files)."""
    from ftlab.data.folders import SPLIT_FOLDERS, is_junk  # folders reads labels.csv with this module

    found, folders = [], [d for d in root.iterdir() if d.is_dir() and not is_junk(d.name)]
    for d in list(folders):
        if d.name.lower() in SPLIT_FOLDERS:
            folders += [c for c in d.iterdir() if c.is_dir() and not is_junk(c.name)]
    for d in sorted(folders):
        found += [d / name for name in SPELLINGS if (d / name).is_file()][:1]
    return found


def read_tasks(path: Path, files: list[str], first_task: str, where: str | None = None) -> tuple[Task, ...]:
    """The further tasks that ``path`` (a labels.csv) gives the images ``files`` (their full paths, in
    the data set's order). Raises `DataError` naming every problem and the rows it is in; messages
    call the file ``where`` (default: its path; a zip's is in an unpacked copy the user never saw)."""
    where = where or printable(str(path))
    rows = _rows(path, where, len(files))
    header = next(rows, None)
    if header is None:
        raise DataError(f"{where} is empty. {LABELS_HELP}")
    file_at, names = _columns(header[1], where, first_task)
    relative = _relative(files, path.parent)
    found = _Found({_key(r): i for i, r in enumerate(relative)}, names, file_at)
    for number, cells in rows:
        found.add(number, cells)
    problems = found.problems(relative)
    if problems:
        raise DataError(f"{where}: " + " ".join(problems) + f" {LABELS_HELP}")
    return _tasks(names, found.values, where)


def _rows(path: Path, where: str, images: int):
    """(row number, cells) of every row that is not blank; the header is row 1, as a spreadsheet counts."""
    limit = MAX_BYTES_BASE + MAX_BYTES_PER_IMAGE * images
    try:
        size = path.stat().st_size
        if size > limit:
            raise DataError(f"{where} is {size / 2**20:,.1f} MB, more than a labels file of {images:,} images "
                            f"needs (at most {limit / 2**20:,.0f} MB are read). {LABELS_HELP}")
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{where} cannot be read ({e.strerror or e}).") from e
    try:
        text = raw.decode("utf-8-sig")  # a spreadsheet's UTF-8 export starts with a byte-order mark
    except UnicodeDecodeError as e:
        row = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{where} is not UTF-8 text (byte 0x{raw[e.start]:02x} in row {row}). Save it as "
                        "'CSV UTF-8' (in a spreadsheet: Save as, CSV UTF-8).") from e
    if (nul := text.find("\x00")) >= 0:  # the csv module reads it as a character; no label holds one
        raise DataError(f"{where} holds a NUL byte (in row {text.count(chr(10), 0, nul) + 1}): it is not a text file, "
                        "or it was damaged. Save it again as 'CSV UTF-8'.")
    reader = csv.reader(io.StringIO(text, newline=""))
    number = 0
    try:
        for number, cells in enumerate(reader, start=1):
            if any(c.strip() for c in cells):  # a blank line, or a spreadsheet's empty row ",,,"
                yield number, cells
    except csv.Error as e:  # a field over the csv module's limit, a NUL byte, a stray quote
        raise DataError(f"{where}: row {number + 1} cannot be read as CSV ({e}). {LABELS_HELP}") from e


def _columns(header: list[str], where: str, first_task: str) -> tuple[int, list[str]]:
    """Where the ``file`` column is, and the names of the tasks (the other columns). Refused with a
    sentence: a header with no file column, no task, a task twice, a task without a name, or the
    first task (the class folders)."""
    names = [printable(unicodedata.normalize("NFC", h.strip())) for h in header]
    lowered = [n.casefold() for n in names]
    if "file" not in lowered:
        hint = ""
        if len(names) == 1 and any(sep in names[0] for sep in ";\t|"):
            hint = " Its columns look separated by something else than commas: separate them with commas."
        shown = ",".join(names)
        raise DataError(f"{where}: the header has no 'file' column: it reads {shown[:200]!r}.{hint} "
                        f"{LABELS_HELP}")
    if lowered.count("file") > 1:
        raise DataError(f"{where}: the header has {lowered.count('file')} 'file' columns; keep one. "
                        f"{LABELS_HELP}")
    at = lowered.index("file")
    tasks = names[:at] + names[at + 1:]
    if not tasks:
        raise DataError(f"{where}: the header names no task beside 'file': add a column per task. "
                        f"{LABELS_HELP}")
    problems = []
    unnamed = [str(i + 1) for i, n in enumerate(names) if not n]
    if unnamed:
        problems.append(f"column(s) {', '.join(unnamed)} have no name")
    long = [f"{i + 1} ({len(n):,} characters)" for i, n in enumerate(names) if len(n) > MAX_NAME]
    if long:
        problems.append(f"the name of column(s) {', '.join(long[:SHOWN])} is longer than a task's name may be "
                        f"({MAX_NAME} characters)")
    alike: dict[str, list[str]] = {}
    for n in tasks:
        alike.setdefault(n.casefold(), []).append(n)
    for key, group in alike.items():
        if key and len(group) > 1:
            problems.append(f"{', '.join(_shown(n) for n in group)} name one task twice (names are compared ignoring "
                            "case)")
    clash = [n for n in tasks if n.casefold() == first_task.casefold()]
    if clash:
        problems.append(f"{_shown(clash[0])} is the name of the first task, the class folders; name the column "
                        "otherwise")
    if problems:
        raise DataError(f"{where}: in the header, " + "; ".join(problems) + f". {LABELS_HELP}")
    return at, tasks


def _relative(files: list[str], root: Path) -> list[str]:
    """Each of ``files`` (found under ``root``) relative to it, with '/' between parts, as labels.csv names
    them (a prefix cut: `os.path.relpath` takes seconds for a million files)."""
    prefix = os.path.join(str(root), "")
    return [(f[len(prefix):] if f.startswith(prefix) else os.path.relpath(f, root)).replace(os.sep, "/")
            for f in files]


def _key(path: str) -> str:
    """A path as labels.csv and the folder both spell it: '/' between parts, no leading './', composed
    accents (a zip made on a Mac decomposes them), no spaces around it."""
    key = unicodedata.normalize("NFC", path.replace("\\", "/").strip())
    while key.startswith("./"):
        key = key[2:]
    return key


@dataclass
class _Listed:
    """A kind of problem: the first rows it is in (for the message), and how many rows in all."""

    shown: list[str] = field(default_factory=list)
    total: int = 0

    def add(self, text: str) -> None:
        self.total += 1
        if len(self.shown) < SHOWN:
            self.shown.append(text)

    def words(self) -> str:
        more = f", … and {self.total - len(self.shown):,} more" if self.total > len(self.shown) else ""
        return ", ".join(self.shown) + more


@dataclass
class _Found:
    """What the rows say: each image's labels, and the problems of the rows, kept as they are read so that
    a huge file is never held twice."""

    keys: dict[str, int]  # an image's path as `_key` spells it -> its index in the data set
    names: list[str]  # the tasks' names, in the order of their columns
    file_at: int  # the file column's place among the cells
    values: dict[int, list[str]] = field(default_factory=dict)  # image index -> its labels, one per task
    first_row: dict[int, int] = field(default_factory=dict)  # image index -> the row that labelled it
    unknown: _Listed = field(default_factory=_Listed)
    repeated: _Listed = field(default_factory=_Listed)
    empty: _Listed = field(default_factory=_Listed)
    ragged: _Listed = field(default_factory=_Listed)
    long: _Listed = field(default_factory=_Listed)

    def add(self, number: int, cells: list[str]) -> None:
        if len(cells) != len(self.names) + 1:
            self.ragged.add(f"row {number} ({len(cells)} cells)")
            return
        name = cells[self.file_at]
        labels = [printable(unicodedata.normalize("NFC", c.strip())) for j, c in enumerate(cells) if j != self.file_at]
        if not name.strip():
            self.empty.add(f"row {number} (file)")
            return
        i = self.keys.get(_key(name))
        if i is None:
            self.unknown.add(f"row {number} ({_shown(name)})")
            return
        if i in self.first_row:
            self.repeated.add(f"row {number} (as row {self.first_row[i]}: {_shown(name)})")
            return
        self.first_row[i] = number
        blank = [task for task, label in zip(self.names, labels) if not label]
        if blank:
            self.empty.add(f"row {number} ({', '.join(blank)})")
        long = [f"{task}: {len(label):,} characters" for task, label in zip(self.names, labels)
                if len(label) > MAX_LABEL]
        if long:
            self.long.add(f"row {number} ({', '.join(long)})")
        self.values[i] = labels

    def problems(self, relative: list[str]) -> list[str]:
        """A sentence for each kind of problem, naming its rows (the images without a row by their paths)."""
        out = []
        if self.ragged.total:
            out.append(f"{self.ragged.total:,} row(s) do not have the header's {len(self.names) + 1} cells: "
                       f"{self.ragged.words()}.")
        if self.unknown.total:
            example = _shown(relative[0]) if relative else "''"
            out.append(f"{self.unknown.total:,} row(s) name a file that is not an image of the data set: "
                       f"{self.unknown.words()}; remove them or correct the paths (relative to the folder "
                       f"that holds {LABELS_FILE}, e.g. {example}).")
        if self.repeated.total:
            out.append(f"{self.repeated.total:,} row(s) repeat a file of an earlier row: {self.repeated.words()}; "
                       "keep one row per image.")
        if self.empty.total:
            out.append(f"{self.empty.total:,} row(s) have empty cells: {self.empty.words()}; give every image a "
                       "label in every task.")
        if self.long.total:
            out.append(f"{self.long.total:,} row(s) have a label longer than {MAX_LABEL} characters: "
                       f"{self.long.words()}; a label is a class's name: shorten it.")
        missing = _Listed()
        for i, f in enumerate(relative):
            if i not in self.first_row:
                missing.add(_shown(f))
        if missing.total:
            out.append(f"{missing.total:,} of the {len(relative):,} images have no row: {missing.words()}; add a row "
                       "for each.")
        return out


def _shown(name: str) -> str:
    """A path for a message: printable, quoted, cut short (a cell can be longer than a page)."""
    name = printable(name)
    return repr(name if len(name) <= 80 else name[:80] + "…")


def _tasks(names: list[str], values: dict[int, list[str]], where: str) -> tuple[Task, ...]:
    """One `Task` per column, its classes the column's sorted distinct values; refused when a column has
    only one value (there is nothing to learn in it), or classes of one image (as a class folder is:
    one image cannot be both trained on and validated; a column of ids or notes has nothing else)."""
    order = sorted(values)
    tasks = []
    for j, name in enumerate(names):
        column = [values[i][j] for i in order]
        classes = tuple(sorted(set(column)))
        if len(classes) < 2:
            raise DataError(f"{where}: the task {_shown(name)} has only the value {_shown(classes[0])} for every "
                            "image; a task needs at least 2 classes. Remove the column or label the images.")
        index = {c: k for k, c in enumerate(classes)}
        labels = np.array([index[c] for c in column], dtype=np.int64)
        counts = np.bincount(labels, minlength=len(classes))
        if (counts < 2).any():
            lone = [classes[k] for k in np.flatnonzero(counts < 2)]
            shown = ", ".join(_shown(c) for c in lone[:SHOWN]) + (f", … and {len(lone) - SHOWN:,} more"
                                                                   if len(lone) > SHOWN else "")
            looks = (" Its values are nearly all different: is it a column of ids or notes rather than a task?"
                     if len(classes) > len(column) / 2 else "")
            raise DataError(f"{where}: in the task {_shown(name)}, {len(lone):,} of its {len(classes):,} classes label "
                            f"one image only ({shown}); each class needs at least 2 images, one to train on and one "
                            f"to validate.{looks} Give each such class more images, merge the rare classes, or remove "
                            "the column.")
        tasks.append(Task(name, classes, labels))
    return tuple(tasks)
