"""User data in class-subfolder layout: a folder, or a .zip unpacked safely into the data folder.

Layouts: ``root/<class>/*.jpg`` or ``root/{train,val,test}/<class>/*.jpg``; a root whose only
entry is one folder is descended into (how most zips and downloads are packed).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from ftlab import paths
from ftlab.messages import some
from ftlab.data.dataset import DataError, Dataset, make_dataset

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
# Folder names read as given splits (lower-cased), and the split each one means.
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}
LAYOUT_HELP = "Expected root/<class>/<images> or root/train|val|test/<class>/<images>."


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


def _scan(root: Path) -> list[tuple[str, str, str]]:
    """(file, class, given split) for every image in the layout."""
    split_dirs = [d for d in _subdirs(root) if d.name.lower() in SPLIT_FOLDERS]
    if not split_dirs:
        return [(f, d.name, "") for d in _subdirs(root) for f in _image_files(d)]
    return [(f, d.name, SPLIT_FOLDERS[s.name.lower()])
            for s in split_dirs for d in _subdirs(s) for f in _image_files(d)]


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
    if not path.is_dir():
        raise DataError(f"{path} is not a folder. {LAYOUT_HELP}")
    items = _scan(_data_root(path))
    classes = tuple(sorted({c for _, c, _ in items}))
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[c] for _, c, _ in items], dtype=np.int64)
    check_classes(classes, labels, str(path))
    return make_dataset(name, classes, labels, source or str(path),
                        given_split=[s for _, _, s in items], files=tuple(f for f, _, _ in items))


def load_zip(path: Path, data_dir: Path, name: str) -> Dataset:
    """Unpack ``path`` once into ``data_dir/uploads/<sha256 prefix>/`` and read it as a folder."""
    dest = data_dir / "uploads" / _sha256(path)[:16]
    if not dest.is_dir():
        extract_zip(path, dest)
    return load_folder(dest, name, source=f"{path} (unpacked in {dest})")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unsafe_reason(member: zipfile.ZipInfo) -> str | None:
    name = member.filename.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "a '..' path that points outside the archive"
    if stat.S_ISLNK(member.external_attr >> 16):
        return "a symbolic link"
    return None


def extract_zip(archive: Path, dest: Path) -> None:
    """Unpack ``archive`` into ``dest`` (created), refusing it whole if any member could escape.

    Unpacking goes to a temporary sibling that is renamed at the end, so ``dest`` either is
    complete or does not exist, also when two sessions unpack the same upload at once.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for m in members:
                reason = _unsafe_reason(m)
                if reason:
                    raise DataError(f"{archive}: refused, member {m.filename!r} is {reason}. "
                                    "Re-create the zip from the data folder itself.")
            _check_bomb(archive, members)
            dest.parent.mkdir(parents=True, exist_ok=True)
            _check_space(archive, members, dest.parent)
            tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.partial-"))
            try:
                _write_members(zf, members, tmp)
                tmp.rename(dest)
            except OSError:
                if not dest.is_dir():  # a concurrent unpack of the same archive that won the rename is fine
                    raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise DataError(f"{archive} is not a readable .zip file ({e}). Re-create it and try again.") from e


def _check_bomb(archive: Path, members: list[zipfile.ZipInfo]) -> None:
    limits = zip_limits()
    if len(members) > limits["max_members"]:
        raise DataError(f"{archive} has {len(members):,} files; the limit is {limits['max_members']:,.0f} "
                        "(setting FTLAB_ZIP_MAX_FILES). Upload a smaller selection.")
    total = sum(m.file_size for m in members)
    if total > limits["max_total_mb"] * 2**20:
        raise DataError(f"{archive} unpacks to {total / 2**20:,.0f} MB; the limit is {limits['max_total_mb']:,.0f} MB "
                        "(setting FTLAB_ZIP_MAX_MB). Upload fewer or smaller images.")
    for m in members:
        # a member that is small either way is harmless whatever its ratio (a README of spaces)
        if m.file_size > 1 << 20 and m.file_size > limits["max_ratio"] * max(m.compress_size, 1):
            raise DataError(f"{archive}: refused, member {m.filename!r} unpacks {m.file_size / max(m.compress_size, 1):,.0f} "
                            f"times larger than it is packed (limit {limits['max_ratio']:,.0f}, setting "
                            "FTLAB_ZIP_MAX_RATIO): that is how zip bombs look, not images.")


def _check_space(archive: Path, members: list[zipfile.ZipInfo], folder: Path) -> None:
    needed = sum(m.file_size for m in members)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DataError(f"{archive} unpacks to {needed / 1e9:.1f} GB but {folder} has {free / 1e9:.1f} GB free.")


def _write_members(zf: zipfile.ZipFile, members: list[zipfile.ZipInfo], root: Path) -> None:
    budget = zip_limits()["max_total_mb"] * 2**20
    for m in members:
        parts = PurePosixPath(m.filename.replace("\\", "/")).parts
        if any(is_junk(p) for p in parts):
            continue
        target = root.joinpath(*parts)
        if m.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(m) as src, open(target, "wb") as dst:
            # zipfile checks each member's size against its header, but count too: the
            # headers are what a crafted archive lies in
            while block := src.read(1 << 20):
                budget -= len(block)
                if budget < 0:
                    raise DataError(f"{zf.filename} unpacks to more than its limit "
                                    f"({zip_limits()['max_total_mb']:,.0f} MB, setting FTLAB_ZIP_MAX_MB).")
                dst.write(block)


def save_upload(filename: str, content: bytes, data_dir: Path) -> Path:
    """Keep an uploaded .zip as ``data_dir/uploads/<name>-<sha256 prefix>.zip`` and return its path.

    The same bytes always land in the same file, so uploading a file again reuses it.
    """
    if not filename.lower().endswith(".zip"):
        raise DataError(f"{filename} is not a .zip file. {LAYOUT_HELP}")
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(filename).stem)[:60] or "upload"
    target = Path(data_dir) / "uploads" / f"{stem}-{hashlib.sha256(content).hexdigest()[:12]}.zip"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
        tmp.write_bytes(content)
        os.replace(tmp, target)
    return target
