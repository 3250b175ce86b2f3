"""Data sets fetched once into the data folder: hymenoptera (a zip) and torchvision's classics.

Nothing here touches the network when the data (or its archive) is already in the data folder,
when ``download`` is False, or when ``FTLAB_OFFLINE`` is set; a failed download is a
`DatasetUnavailable` whose message says how else to get going.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftlab.data.dataset import Dataset, DatasetUnavailable, make_dataset
from ftlab.data.folders import clean_partials, extract_zip, load_folder, partial_prefix

HYMENOPTERA_URL = "https://download.pytorch.org/tutorial/hymenoptera_data.zip"
TIMEOUT_S = 60  # per network read; a silent network should fail in a minute, not hang the app


def unavailable(name: str, url: str, reason: str, archives: tuple[str, ...], folder: Path) -> DatasetUnavailable:
    files = " and ".join(archives)
    return DatasetUnavailable(
        f"Could not download {name} from {url} ({reason}). Pick a built-in data set (digits, shapes), "
        f"upload a folder or .zip in class-subfolder layout, or put {files} into {folder} and retry.")


def load_hymenoptera(data_dir: Path, may_download: bool, offline_reason: str) -> Dataset:
    """The ants/bees photos of PyTorch's transfer-learning tutorial, with their train/ and val/ splits."""
    folder, archive = data_dir / "hymenoptera", data_dir / "hymenoptera_data.zip"
    if not folder.is_dir():
        if not archive.is_file():
            if not may_download:
                raise unavailable("hymenoptera", HYMENOPTERA_URL, offline_reason, (archive.name,), data_dir)
            _fetch(HYMENOPTERA_URL, archive, "hymenoptera")
        extract_zip(archive, folder)
    return load_folder(folder, "hymenoptera", source=HYMENOPTERA_URL)


def _fetch(url: str, target: Path, name: str) -> None:
    """Stream ``url`` to ``target`` through a .part file, so an interrupted download is never taken as whole."""
    part = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_partials(target.parent)
        # a temporary name of this process's own: two downloads at once never write one file
        fd, part = tempfile.mkstemp(dir=target.parent, prefix=partial_prefix(target.name))
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            shutil.copyfileobj(response, out, 1 << 20)
        os.replace(part, target)
    except (urllib.error.URLError, OSError) as e:  # URLError, HTTPError, timeouts, resets
        raise unavailable(name, url, str(getattr(e, "reason", e)), (target.name,), target.parent) from e
    finally:
        if part:
            Path(part).unlink(missing_ok=True)


@dataclass(frozen=True)
class TorchvisionSource:
    """How one torchvision data set class maps onto ours."""

    cls: str  # attribute of torchvision.datasets
    splits: tuple[tuple[str, dict], ...]  # (our split name, constructor keyword arguments)
    folder: str  # where torchvision keeps the archives, relative to the data folder
    archives: tuple[str, ...]  # file names a user can put there by hand
    url: str  # shown in messages


_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
_TRAIN_TEST = (("train", {"train": True}), ("test", {"train": False}))

TORCHVISION_SOURCES = {
    "cifar10": TorchvisionSource("CIFAR10", _TRAIN_TEST, ".", ("cifar-10-python.tar.gz",),
                                 "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "mnist": TorchvisionSource("MNIST", _TRAIN_TEST, "MNIST/raw", _MNIST_FILES,
                               "https://ossci-datasets.s3.amazonaws.com/mnist/"),
    "fashion-mnist": TorchvisionSource("FashionMNIST", _TRAIN_TEST, "FashionMNIST/raw", _MNIST_FILES,
                                       "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
    "flowers102": TorchvisionSource(
        "Flowers102", tuple((s, {"split": s}) for s in ("train", "val", "test")), "flowers-102",
        ("102flowers.tgz", "imagelabels.mat", "setid.mat"), "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"),
    "pets": TorchvisionSource(
        "OxfordIIITPet", (("train", {"split": "trainval"}), ("test", {"split": "test"})), "oxford-iiit-pet",
        ("images.tar.gz", "annotations.tar.gz"), "https://www.robots.ox.ac.uk/~vgg/data/pets/data/"),
}


def load_torchvision(name: str, data_dir: Path, may_download: bool, offline_reason: str) -> Dataset:
    """One of TORCHVISION_SOURCES, every split of it, as one `Dataset` with its given splits."""
    import torchvision.datasets

    src = TORCHVISION_SOURCES[name]
    cls = getattr(torchvision.datasets, src.cls)
    archive_dir = (data_dir / src.folder).resolve()
    # torchvision's download step only unpacks archives already in place: allowed offline too.
    may_unpack = may_download or all((archive_dir / a).is_file() for a in src.archives)
    parts = []
    for split, kwargs in src.splits:
        try:
            parts.append((split, cls(str(data_dir), download=False, **kwargs)))
            continue
        except RuntimeError:  # torchvision's "Dataset not found"
            if not may_unpack:
                raise unavailable(name, src.url, offline_reason, src.archives, archive_dir) from None
        try:
            parts.append((split, cls(str(data_dir), download=True, **kwargs)))
        except (urllib.error.URLError, OSError, RuntimeError) as e:
            raise unavailable(name, src.url, str(e).strip().splitlines()[0] if str(e) else type(e).__name__,
                              src.archives, archive_dir) from e
    return _combine(name, src.url, parts)


def _combine(name: str, url: str, parts: list[tuple[str, object]]) -> Dataset:
    classes = tuple(parts[0][1].classes)
    labels = np.concatenate([_labels(d) for _, d in parts])
    given = np.concatenate([np.full(len(_labels(d)), s) for s, d in parts])
    if hasattr(parts[0][1], "data"):  # CIFAR (numpy N,H,W,3) and MNIST-likes (tensor N,H,W) are in memory
        pixels = np.concatenate([np.asarray(d.data, dtype=np.uint8) for _, d in parts])
        return make_dataset(name, classes, labels, url, given_split=given, pixels=pixels)
    # Flowers102 and OxfordIIITPet keep file lists only in private attributes; reading them avoids
    # decoding every image through __getitem__ just to learn its path.
    files = tuple(str(f) for _, d in parts for f in getattr(d, "_image_files", None) or d._images)
    return make_dataset(name, classes, labels, url, given_split=given, files=files)


def _labels(d: object) -> np.ndarray:
    targets = getattr(d, "targets", None)
    return np.asarray(targets if targets is not None else d._labels, dtype=np.int64)
