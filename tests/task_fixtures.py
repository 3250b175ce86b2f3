"""Tiny data sets with two tasks, for any test that needs one: a folder of class folders with a
labels.csv, and the same as a .zip.

    from task_fixtures import two_task_folder
    root, expected = two_task_folder(tmp_path / "pics")   # expected: {"ants/0.png": ("ants", "red"), ...}

Both tasks can be learnt from the pixels: the class sets the brightness (ants bright, bees dark),
the second task ``colour`` the hue (red or blue), every pair equally often.
"""
from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

from PIL import Image

CLASSES = ("ants", "bees")
COLOURS = ("blue", "red")  # sorted: the task's classes as a labels.csv column gives them
BRIGHTNESS = {"ants": 230, "bees": 110}


def pixel(cls: str, colour: str) -> tuple[int, int, int]:
    level = BRIGHTNESS[cls]
    return (level, 20, 20) if colour == "red" else (20, 20, level)


def png(colour: tuple[int, int, int], size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "PNG")
    return buf.getvalue()


def two_task_files(per_class: int = 4, size: int = 16, task: str = "colour") -> tuple[dict[str, bytes], dict]:
    """The images (path -> PNG bytes) and the labels.csv of the set, with each path's (class, colour)."""
    files, expected = {}, {}
    for cls in CLASSES:
        for i in range(per_class):
            colour = COLOURS[i % 2]
            path = f"{cls}/{i}.png"
            files[path] = png(pixel(cls, colour), size)
            expected[path] = (cls, colour)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["file", task])
    writer.writerows([path, colour] for path, (_, colour) in expected.items())
    files["labels.csv"] = text.getvalue().encode()
    return files, expected


def two_task_folder(root: Path, per_class: int = 4, size: int = 16, task: str = "colour") -> tuple[Path, dict]:
    """``root`` with ants/ and bees/ of ``per_class`` PNGs each and a labels.csv giving the task ``task``;
    returns ``root`` and each image's path (as labels.csv names it) -> (class, colour)."""
    files, expected = two_task_files(per_class, size, task)
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root, expected


def two_task_zip(path: Path, per_class: int = 4, size: int = 16, wrapper: str = "pics") -> tuple[Path, dict]:
    """The same set as a .zip, inside one wrapping folder ``wrapper`` (as most zips are packed; "" for none)."""
    files, expected = two_task_files(per_class, size)
    prefix = f"{wrapper}/" if wrapper else ""
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in files.items():
            zf.writestr(prefix + name, content)
    return path, expected
