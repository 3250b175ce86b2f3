"""User data in class-subfolder layout: a folder, or a .zip unpacked safely into the data folder.

Layouts: ``root/<class>/*.jpg`` or ``root/{train,val,test}/<class>/*.jpg``; a root whose only
entry is one folder is descended into (how most zips and downloads are packed). A ``labels.csv``
beside the class (or split) folders gives further tasks (`ftlab.data.labels_csv`).
"""
from __future__ import annotations

import errno
import hashlib
import importlib.util
import os
import re
import shutil
import socket
import stat
import tempfile
import time
import unicodedata
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from ftlab import paths
from ftlab.messages import printable, some
from ftlab.data.dataset import DataError, Dataset, make_dataset
from ftlab.data.labels_csv import LABELS_FILE, find_labels, read_tasks

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
# Folder names read as given splits (lower-cased), and the split each one means.
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}
LAYOUT_HELP = "Expected root/<class>/<images> or root/train|val|test/<class>/<images>."
FIRST_TASK = "class"  # the name of the task the class folders give, beside a labels.csv's tasks


def zip_limits() -> dict[str, float]:
    """What an uploaded .zip may unpack to; each a setting (environment variable) with a default.

    A zip bomb claims little and unpacks to a lot, so the total, the member count and each
    member's compression ratio are bounded before anything is written, and the bytes
    actually written are counted again while unpacking (the sizes in a zip can lie).
    """
    return paths.zip_limits()  # read when used; a value it cannot use raises paths.SettingError


def is_junk(name: str) -> bool:
    """Hidden files and folders (.DS_Store, ._x) and macOS zip resource forks are never data."""
    return name.startswith(".") or name == "__MACOSX"


def is_image_file(name: str) -> bool:
    return not is_junk(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_junk(p.name))


def _data_root(root: Path) -> Path:
    """Descend through single wrapping folders (``data.zip -> data/ -> ants/, bees/``).

    Non-image files beside the wrapper (a README) do not count. A lone split folder stays a
    split, and a lone class folder is left for the class-count check to explain.
    """
    while True:
        dirs = _subdirs(root)
        if len(dirs) != 1 or any(is_image_file(p.name) for p in root.iterdir()):
            return root
        only = dirs[0]
        if only.name.lower() in SPLIT_FOLDERS or not _subdirs(only):
            return root
        root = only


def _image_files(folder: Path) -> list[str]:
    """Image files under ``folder`` at any depth (as torchvision's ImageFolder), sorted for determinism."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not is_junk(d)]
        found.extend(os.path.join(dirpath, f) for f in filenames if is_image_file(f))
    return sorted(found)


def _loose_images(folder: Path) -> list[str]:
    return sorted(printable(p.name) for p in folder.iterdir() if not p.is_dir() and is_image_file(p.name))


def _scan(root: Path) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(file, class, given split) for every image in the layout, and notes on what was left out.

    Class names are the folder names made `printable`: a name with bytes that are not UTF-8
    shows them as escapes, so every message, table and page can show it.
    """
    split_dirs = [d for d in _subdirs(root) if d.name.lower() in SPLIT_FOLDERS]
    notes, empty = [], []
    if not split_dirs:
        class_dirs = [("", d) for d in _subdirs(root)]
        loose = [(root, _loose_images(root))]
    else:
        beside = [repr(printable(d.name)) for d in _subdirs(root) if d not in split_dirs]
        if beside:
            notes.append(f"{len(beside):,} folder(s) beside {', '.join(d.name + '/' for d in split_dirs)} "
                         f"are not read: {some(beside)}. Move them into a split folder to use them.")
        class_dirs = [(SPLIT_FOLDERS[s.name.lower()], d) for s in split_dirs for d in _subdirs(s)]
        loose = [(root, _loose_images(root))] + [(s, _loose_images(s)) for s in split_dirs]
    for folder, files in loose:
        if files:
            notes.append(f"{len(files):,} image file(s) directly in {printable(str(folder))} are in no class "
                         f"folder and are not read: {some(files)}.")
    items, names = [], {}
    for split, d in class_dirs:
        files = _image_files(d)
        name = printable(d.name)
        # two folders that look alike: one name not UTF-8 and one with its escape, or é composed and decomposed
        first = names.setdefault(unicodedata.normalize("NFC", name), d.name)
        if first != d.name:
            raise DataError(f"{printable(str(root))}: the class folders {printable(first)!r} and "
                            f"{printable(d.name)!r} look the same. Rename one of them.")
        if not files:
            empty.append(repr(printable(f"{d.parent.name}/{d.name}" if split else d.name)))
        items.extend((f, name, split) for f in files)
    if empty:
        notes.append(f"{len(empty):,} folder(s) hold no image files and are not classes: {some(empty)}.")
    return items, notes


def check_classes(classes: tuple[str, ...], labels: np.ndarray, where: str) -> None:
    """At least two classes, each with two images (one to train on, one to validate)."""
    if len(classes) < 2:
        found = f"only the class {classes[0]!r}" if classes else "no class folders with images"
        raise DataError(f"{where}: found {found}; at least 2 classes are needed. {LAYOUT_HELP}")
    counts = np.bincount(labels, minlength=len(classes))
    small = [f"{c!r} ({n})" for c, n in zip(classes, counts) if n < 2]
    if small:
        raise DataError(f"{where}: each class needs at least 2 images; too few in {some(small)}. "
                        "Add images to these classes or remove their folders.")


def load_folder(path: Path, name: str, source: str | None = None) -> Dataset:
    """Read a folder in class-subfolder layout; nothing is decoded (that is `decode`'s job)."""
    where = printable(str(path))
    if not path.is_dir():
        raise DataError(f"{where} is not a folder. {LAYOUT_HELP}")
    try:
        root = _data_root(path)
        items, notes = _scan(root)
        labels_file = find_labels(path, root)
    except OSError as e:  # a folder that cannot be listed
        raise DataError(f"{where} cannot be read ({e.strerror or e}). Check that the folder and its "
                        "subfolders can be read by this user.") from e
    classes = tuple(sorted({c for _, c, _ in items}))
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[c] for _, c, _ in items], dtype=np.int64)
    check_classes(classes, labels, printable(name))  # the name as given: a zip's, not its unpacked folder's
    files = tuple(f for f, _, _ in items)
    # the class folders are the first task; a labels.csv (never an image: not an image's extension) adds the others
    shown = printable(str(labels_file)) if source is None else f"{LABELS_FILE} in {printable(name)}"
    tasks = read_tasks(labels_file, list(files), FIRST_TASK, shown) if labels_file else ()
    source = printable(source or str(path)) + (f"; further tasks from {LABELS_FILE}: "
                                               f"{', '.join(t.name for t in tasks)}" if tasks else "")
    return make_dataset(printable(name), classes, labels, source, notes=tuple(notes),
                        given_split=[s for _, _, s in items], files=files, task=FIRST_TASK, tasks=tasks)


def load_zip(path: Path, data_dir: Path, name: str) -> Dataset:
    """Unpack ``path`` once into ``data_dir/uploads/<sha256 prefix>/`` and read it as a folder."""
    try:
        digest = _sha256(path)
    except OSError as e:
        raise DataError(f"{printable(str(path))} cannot be read ({e.strerror or e}).") from e
    dest = data_dir / "uploads" / digest[:16]
    if not dest.is_dir():
        extract_zip(path, dest)
    return load_folder(dest, name, source=f"{path} (unpacked in {dest})")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- files being written: a marked temporary name, renamed into place when complete -----------

PARTIAL = ".partial-"
STALE_AFTER_S = 24 * 3600  # a partial whose writer cannot be asked (another host, an older ftlab) is stale after a day
_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"
_OURS = re.compile(re.escape(PARTIAL) + r"(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-")


def partial_prefix(name: str) -> str:
    """The temporary name prefix of ``name`` while this process writes it: hidden, and naming its writer
    (host and process id), so that `clean_partials` can tell a dead writer's leftovers from a live one's."""
    return f".{name}{PARTIAL}{_HOST}-{os.getpid()}-"


def clean_partials(folder: Path) -> None:
    """Remove what interrupted writes left in ``folder``: partials of a process of this host that is gone,
    and any partial older than a day. Another process's write in progress is left alone."""
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(".") and ".partial" in e.name]
    except OSError:
        return
    for entry in entries:
        if not _stale(entry):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            _unlink(entry.path)


def _stale(entry: os.DirEntry) -> bool:
    mine = _OURS.search(entry.name)
    if mine and mine["host"] == _HOST:
        return not _alive(int(mine["pid"]))
    try:
        return time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
    except OSError:
        return False


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but is not ours to signal
        return True
    return True


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# --- unpacking ------------------------------------------------------------------------------

RATIO_FLOOR = 1 << 20  # an archive (or member) that unpacks to less is harmless whatever its ratio
_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED} | {m for m, module in
                                                          ((zipfile.ZIP_BZIP2, "bz2"), (zipfile.ZIP_LZMA, "lzma"))
                                                          if importlib.util.find_spec(module)}
RECREATE = "Re-create the zip from the data folder itself (plain deflate compression, no password)."


def _parts(member: zipfile.ZipInfo) -> tuple[str, ...]:
    """The path of a member inside the archive; () for one that names nothing ("." or "")."""
    return PurePosixPath(member.filename.replace("\\", "/")).parts


def _shown(member: zipfile.ZipInfo) -> str:
    """A member's name for a message: printable, and cut short (a name can be longer than a page)."""
    name = printable(member.filename)
    return repr(name if len(name) <= 100 else name[:100] + "…")


def _unsafe_reason(member: zipfile.ZipInfo) -> str | None:
    name = member.filename.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "a '..' path that points outside the archive"
    if stat.S_ISLNK(member.external_attr >> 16):
        return "a symbolic link"
    if member.flag_bits & 0x1:
        return "encrypted (the zip has a password)"
    if member.compress_type not in _METHODS:
        return f"packed with a compression method ftlab cannot unpack (method {member.compress_type})"
    return None


def _check_members(archive: str, members: list[zipfile.ZipInfo]) -> None:
    """Refuse, before anything is written, an archive with a member that could escape or cannot be read,
    or with a file and a folder of the same name."""
    for m in members:
        reason = _unsafe_reason(m)
        if reason:
            raise DataError(f"{archive}: refused, member {_shown(m)} is {reason}. {RECREATE}")
    files, folders = set(), set()
    for m in members:
        parts = _parts(m)
        if not parts:
            continue
        folders.update(parts[:i] for i in range(1, len(parts)))
        (folders if m.is_dir() else files).add(parts)
    both = sorted("/".join(p) for p in files & folders)
    if both:
        raise DataError(f"{archive}: refused, it holds a file and a folder of the same name: "
                        f"{some([repr(printable(b)) for b in both])}. {RECREATE}")


def extract_zip(archive: Path, dest: Path) -> None:
    """Unpack ``archive`` into ``dest`` (created), refusing it whole if any member could escape.

    Unpacking goes to a temporary sibling that is renamed at the end, so ``dest`` either is
    complete or does not exist, also when two sessions unpack the same upload at once.
    """
    name = printable(str(archive))
    try:  # before the archive is opened: a setting it cannot use is not a damaged zip
        limits = zip_limits()
    except paths.SettingError as e:
        raise DataError(str(e)) from e
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            _check_members(name, members)
            budget = _check_bomb(name, members, archive.stat().st_size, limits)
            dest.parent.mkdir(parents=True, exist_ok=True)
            clean_partials(dest.parent)
            _check_space(name, members, dest.parent)
            tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=partial_prefix(dest.name)))
            try:
                _write_members(zf, name, members, tmp, budget, limits["max_total_mb"])
                try:
                    tmp.rename(dest)
                except OSError:
                    if not dest.is_dir():  # a concurrent unpack of the same archive that won the rename is fine
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, UnicodeDecodeError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{name} is not a readable .zip file ({e}). Re-create it and try again.") from e
    except OSError as e:
        raise DataError(f"{name} could not be unpacked into {printable(str(dest.parent))} "
                        f"({e.strerror or e}). Free some space or choose a data folder this user can "
                        "write to (setting FTLAB_DATA).") from e


def _check_bomb(archive: str, members: list[zipfile.ZipInfo], packed: int, limits: dict[str, float]) -> float:
    """Refuse what the headers show to be too much; return how many bytes unpacking may write."""
    if len(members) > limits["max_members"]:
        raise DataError(f"{archive} has {len(members):,} files; the limit is {limits['max_members']:,.0f} "
                        "(setting FTLAB_ZIP_MAX_FILES). Upload a smaller selection.")
    total, max_total = sum(m.file_size for m in members), limits["max_total_mb"] * 2**20
    if total > max_total:
        raise DataError(f"{archive} unpacks to {total / 2**20:,.0f} MB; the limit is {limits['max_total_mb']:,.0f} MB "
                        "(setting FTLAB_ZIP_MAX_MB). Upload fewer or smaller images.")
    ratio = limits["max_ratio"]
    bomb = ("times larger than it is packed (limit {:,.0f}, setting FTLAB_ZIP_MAX_RATIO): that is how zip bombs "
            "look, not images.").format(ratio)
    for m in members:
        # a member that is small either way is harmless whatever its ratio (a README of spaces)
        if m.file_size > RATIO_FLOOR and m.file_size > ratio * max(m.compress_size, 1):
            raise DataError(f"{archive}: refused, member {_shown(m)} unpacks "
                            f"{m.file_size / max(m.compress_size, 1):,.0f} {bomb}")
    # the same rule over the whole archive and its size on disk: spreading the bytes over many small
    # members, or headers that lie about the packed sizes, do not get round it
    if total > RATIO_FLOOR and total > ratio * max(packed, 1):
        raise DataError(f"{archive}: refused, it unpacks {total / max(packed, 1):,.0f} {bomb}")
    return min(max_total, max(RATIO_FLOOR, ratio * packed))  # a float: huge limits make it inf, not an OverflowError


def _check_space(archive: str, members: list[zipfile.ZipInfo], folder: Path) -> None:
    needed = sum(m.file_size for m in members)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DataError(f"{archive} unpacks to {needed / 1e9:.1f} GB but {printable(str(folder))} has "
                        f"{free / 1e9:.1f} GB free.")


class _Unreadable(Exception):
    """A member whose packed bytes cannot be read back (damaged, or a form zipfile cannot read)."""


def _write_members(zf: zipfile.ZipFile, archive: str, members: list[zipfile.ZipInfo], root: Path,
                   budget: float, max_mb: float) -> None:
    """Write every member under ``root``, counting the bytes actually written against ``budget``
    (zipfile checks each member against its header, but the headers are what a crafted archive lies in)."""
    for m in members:
        parts = _parts(m)
        if not parts or any(is_junk(p) for p in parts):
            continue
        target = root.joinpath(*parts)
        try:
            if m.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            budget = _write_member(zf, m, target, budget)
        except _Unreadable as e:
            raise DataError(f"{archive}: member {_shown(m)} cannot be read "
                            f"({e.__cause__ or e}): the archive is damaged. {RECREATE}") from e
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise
            why = ("its name is longer than the file system allows" if e.errno == errno.ENAMETOOLONG else
                   "a file and a folder have its name" if e.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR)
                   else e.strerror or str(e))
            raise DataError(f"{archive}: refused, member {_shown(m)} cannot be unpacked: {why}. "
                            f"{RECREATE}") from e
        if budget < 0:
            raise DataError(f"{archive}: refused, it unpacks to more than it may ({max_mb:,.0f} "
                            "MB, setting FTLAB_ZIP_MAX_MB, and FTLAB_ZIP_MAX_RATIO times its size): that is how "
                            "zip bombs look, not images.")


def _write_member(zf: zipfile.ZipFile, m: zipfile.ZipInfo, target: Path, budget: float) -> float:
    """Copy one member to ``target``; return the budget left (negative: stopped, over it)."""
    try:
        src = zf.open(m)
    except Exception as e:  # noqa: BLE001 - whatever zipfile raises here, the member cannot be read
        raise _Unreadable() from e
    with src, open(target, "wb") as dst:
        while True:
            try:
                block = src.read(1 << 20)
            except Exception as e:  # noqa: BLE001 - bad CRC, zlib/lzma/bz2 errors, truncation
                raise _Unreadable() from e
            if not block:
                return budget
            budget -= len(block)
            if budget < 0:
                return budget
            dst.write(block)


def _upload_name(filename: str) -> str:
    """The browser's file name as a file name here: its last part, shown as given (`printable`), never
    hidden, and short enough for any file system."""
    name = printable(re.split(r"[\\/]", filename)[-1])  # its last part; NUL and newlines shown as escapes
    stem, suffix = name[:-4].lstrip(". "), name[-4:]  # the caller checked that it ends in .zip
    stem = stem.encode()[:180].decode(errors="ignore")  # at most 180 bytes, never half a character
    return (stem or "upload") + suffix


def save_upload(filename: str, content: bytes, data_dir: Path) -> Path:
    """Keep an uploaded .zip as ``data_dir/uploads/files/<sha256 prefix>/<its name>`` and return its path.

    The same bytes under the same name always land in the same file, so uploading a file again
    reuses it; the file keeps the user's name, which is what the pages show. Written under a
    temporary name of its own and renamed into place: two sessions uploading at once each keep
    their own bytes, and an interrupted write never looks like an upload.
    """
    if not filename.lower().endswith(".zip"):
        raise DataError(f"{printable(filename) or 'A file with no name'} is not a .zip file. {LAYOUT_HELP}")
    files = Path(data_dir) / "uploads" / "files"
    target = files / hashlib.sha256(content).hexdigest()[:16] / _upload_name(filename)
    if target.is_file():
        return target
    try:
        files.mkdir(parents=True, exist_ok=True)
        clean_partials(files)
        fd, tmp = tempfile.mkstemp(dir=files, prefix=partial_prefix(target.name))
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(content)
            target.parent.mkdir(exist_ok=True)
            os.replace(tmp, target)
        finally:
            _unlink(tmp)
    except OSError as e:
        raise DataError(f"The upload {printable(filename)} could not be kept in {printable(str(files))} "
                        f"({e.strerror or e}). Free some space or choose a data folder this user can write to "
                        "(setting FTLAB_DATA).") from e
    return target
