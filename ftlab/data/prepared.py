"""From a run's configuration to its data: the data set it names, its split, its identity for
caches, and the images decoded once for training. The app's pages and the engine both call
these, so the figures a user sees before a run are the figures of the run.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from ftlab import paths
from ftlab.data.dataset import DataError, Dataset
from ftlab.data.decoding import Decoded, DecodingStopped, decode
from ftlab.data.registry import list_datasets, load_dataset
from ftlab.data.shapes import ShapesOptions
from ftlab.data.splits import Split, long_tail_indices, make_split, per_class_indices, per_class_words
from ftlab.errors import StopRequested


def data_seed(config) -> int:
    """The seed of everything data: the generated shapes, the split, the long tail. It is the run's
    seed unless ``split_seed`` holds it apart (a sweep does: its seeds then vary training alone)."""
    return config.seed if getattr(config, "split_seed", None) is None else config.split_seed


def shapes_options(config) -> ShapesOptions:
    """The generated shapes set a config (a `TrainConfig`) asks for (its seed is `data_seed`)."""
    return ShapesOptions(num_classes=config.shapes_classes, per_class=config.shapes_per_class,
                         noise=config.shapes_noise, seed=data_seed(config))


def is_shapes(dataset: str) -> bool:
    """Whether ``dataset`` names the generated shapes set (in any case, as the loader reads it)."""
    return dataset.strip().lower() == "shapes"


def load_for(config, *, download: bool = True) -> Dataset:
    return load_dataset(config.dataset, shapes=shapes_options(config), download=download)


def split_for(config, ds: Dataset) -> Split:
    """The seeded, stratified split, less its near-duplicates with ``drop_duplicates`` (`ftlab.features`:
    the backbone's features, computed once and kept on disk), then the long tail when ``imbalance_ratio`` > 1."""
    split = make_split(ds, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                       seed=data_seed(config))
    if getattr(config, "drop_duplicates", False):  # before the long tail: it then draws from distinct images
        from ftlab import features

        split = features.drop_duplicates(config, ds, split)
    if config.imbalance_ratio > 1:
        split = replace(split, train=long_tail_indices(ds.labels, split.train, config.imbalance_ratio, data_seed(config)))
    if getattr(config, "train_per_class", 0):  # a data-efficiency point: the same val images, fewer to train on
        split = replace(split, train=per_class_indices(ds.labels, split.train, config.train_per_class,
                                                       data_seed(config)))
    return split


def train_counts(config, ds: Dataset) -> list[int]:
    """Training images per class of ``config``'s split before ``train_per_class`` draws from it."""
    import numpy as np

    train = split_for(replace(config, train_per_class=0), ds).train
    return np.bincount(ds.labels[train], minlength=len(ds.classes)).tolist()


def per_class_note(config, ds: Dataset) -> str:
    """A sentence when ``config.train_per_class`` asks for more images than some class has ("" else):
    those classes train on all of theirs, and when every class has fewer the run trains on the whole
    training split, which its label must not hide."""
    k = getattr(config, "train_per_class", 0)
    if not k:
        return ""
    counts = train_counts(config, ds)
    words = per_class_words(k, counts, ds.classes)
    if words == str(k):
        return ""
    if k >= max(counts):
        return (f"train_per_class {k} is at least every class's training images: this run trains on {words}, "
                f"the whole training split; give fewer than {max(counts)} for a data-efficiency point.")
    return f"train_per_class {k}: {words}; those classes train on all their images."


def identity(config, data_dir: Path | None = None) -> str:
    """What determines the images and labels ``config.dataset`` loads, for every cache key: a
    registered name in the loader's case, with the shapes options for the generated set; a
    folder by its files (names, sizes and modification times, so an edited folder is new
    data); a file (a .zip) by its size and modification time."""
    name = config.dataset.strip().lower()
    if name in {d.name for d in list_datasets()}:
        if is_shapes(name):
            return f"shapes {shapes_options(config)}"
        return f"{name} in {Path(data_dir or paths.data_dir()).resolve()}"
    try:
        path = Path(config.dataset).expanduser().resolve()
        if path.is_dir():
            return f"folder {path} {_folder_digest(path)}"
        st = path.stat()
        return f"file {path} {st.st_size} {st.st_mtime_ns}"
    except (OSError, ValueError, RuntimeError):
        return f"unreadable {config.dataset!r}"  # the loader says what is wrong; nothing gets cached


def split_identity(config, data_dir: Path | None = None) -> str:
    """What determines ``split_for``'s split before any long tail: the data set's identity and
    the split's fractions and seed."""
    return (f"{identity(config, data_dir)} val {config.val_fraction} test {config.test_fraction} "
            f"seed {data_seed(config)}" + (" without near-duplicates" if getattr(config, "drop_duplicates", False)
                                           else ""))


def _folder_digest(root: Path) -> str:
    h = hashlib.sha1()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            try:
                st = os.stat(os.path.join(folder, name), follow_symlinks=False)
            except OSError:
                continue
            h.update(f"{os.path.relpath(os.path.join(folder, name), root)}\0{st.st_size}\0{st.st_mtime_ns}\n"
                     .encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Prepared:
    """A run's data, decoded once."""

    dataset: Dataset
    split: Split
    train: Decoded
    val: Decoded
    test: Decoded | None
    image_size: int
    resize: int


_reuse = {"depth": 0, "last": None}  # inside `reusing_decoded`: the last prepared data, by `_prepared_key`
_reuse_lock = threading.Lock()


@contextlib.contextmanager
def reusing_decoded() -> Iterator[None]:
    """Within this block `prepare` decodes each data set once: a run asking for the data the previous
    run decoded (same files, split, long tail and image size) gets the same tensors. A sweep's members
    run in it; outside it every run decodes its own, and nothing is held after the last block ends."""
    with _reuse_lock:
        _reuse["depth"] += 1
    try:
        yield
    finally:
        with _reuse_lock:
            _reuse["depth"] -= 1
            if not _reuse["depth"]:
                _reuse["last"] = None


def _prepared_key(config, size: int, resize: int) -> tuple:
    return (identity(config), config.val_fraction, config.test_fraction, data_seed(config), config.imbalance_ratio,
            getattr(config, "train_per_class", 0), getattr(config, "drop_duplicates", False) and
            features_key(config), size, resize)


def features_key(config) -> str:
    """Which features judge duplicates for ``drop_duplicates``: two configs drop the same images only when equal."""
    from ftlab import features

    return features.source_for(config, reference_if_random=True).key


def prepare(config, size: int, resize: int, say: Callable[[str], None] = lambda msg: None,
            should_stop: Callable[[], bool] = lambda: False) -> Prepared:
    """`_prepare`, or the data the previous run decoded when `reusing_decoded` is on and they are the same."""
    if not _reuse["depth"]:
        return _prepare(config, size, resize, say, should_stop)
    key = _prepared_key(config, size, resize)
    last = _reuse["last"]
    if last is not None and last[0] == key:
        ready = last[1]
        say(f"reusing the {len(ready.train.labels) + len(ready.val.labels) + (len(ready.test.labels) if ready.test else 0):,} "
            f"images decoded at {size} px for an earlier run of this sweep")
        return ready
    ready = _prepare(config, size, resize, say, should_stop)
    with _reuse_lock:
        if _reuse["depth"]:
            _reuse["last"] = (key, ready)
    return ready


def _prepare(config, size: int, resize: int, say: Callable[[str], None] = lambda msg: None,
             should_stop: Callable[[], bool] = lambda: False) -> Prepared:
    """Load, split and decode ``config``'s data: the shorter side of each image resized to
    ``resize``, the centre ``size`` x ``size`` kept.

    Every data set gets the backbone's crop, small images too: digits (8 px), MNIST, CIFAR and
    the generated shapes are enlarged anyway, and keeping their full frame was measured no better
    (linear probe on Lite0, 5 epochs, best val, crop against full frame: digits at 64 px 0.892
    against 0.889; with a mean and std of 0.5 also digits at 224 px 0.928 against 0.919, shapes
    1.000 both, 8 noisy shape classes 0.281 against 0.240). One rule for all keeps what a
    checkpoint records, what prediction and export rebuild, and torchvision's transforms the same."""
    ds = load_for(config)
    for note in ds.notes + ((per_class_note(config, ds),) if getattr(config, "train_per_class", 0) else ()):
        if note:
            say(f"warning: {note}")
    split = split_for(config, ds)
    check_memory(sum(len(getattr(split, name)) for name in ("train", "val", "test")), size)
    decoded = {}
    for name in ("train", "val", "test"):
        indices = getattr(split, name)
        if len(indices) == 0:
            decoded[name] = None
            continue
        if should_stop():
            raise StopRequested("preparing")
        say(f"decoding {len(indices):,} {name} images at {size} px"
            + (f" (shorter side to {resize}, the centre kept)" if resize != size else ""))
        try:  # stops between files; refuses a split that lost a class to undecodable files
            decoded[name] = decode(ds, indices, size, resize=resize, should_stop=should_stop, split=name)
        except DecodingStopped:
            raise StopRequested from None
    return Prepared(ds, split, decoded["train"], decoded["val"], decoded["test"], size, resize)


def check_memory(images: int, size: int) -> None:
    """Refuse before decoding when the decoded images alone would not fit in the memory free
    now: decoding 1,797 images at 1024 px (5.6 GB) was ended by the OS, not by a message."""
    from ftlab.cache import free_memory_bytes  # torch: loaded by then, and not on importing ftlab.data

    need, free = images * 3 * size * size, free_memory_bytes()
    if free is not None and need > 0.8 * free:
        fits = int(math.sqrt(0.8 * free / max(images * 3, 1)))
        raise DataError(f"decoded at {size} px, the {images:,} images take {need / 2**30:,.1f} GB of memory, "
                        f"more than the {free / 2**30:,.1f} GB free here: choose an image size below {fits} px "
                        "(or fewer images).")
