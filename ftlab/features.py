"""A backbone's frozen, globally pooled features of a data set's images, kept on disk under FTLAB_HOME.

The feature-space figures (`ftlab.feature_diversity`) and the near-duplicate filter of a run's split
(``drop_duplicates``) read the same vectors: the output of the backbone's last block before the head,
averaged over its spatial positions (what a linear probe reads), from the backbone's own evaluation
preprocessing at the run's image size or `FEATURE_SIZE`, whichever is smaller, in fp32. They depend on the data set's items, the backbone, its weights and the
preprocessing, and on nothing of a run: one file per (data set identity, backbone, weights,
preprocessing) holds them by dataset index, so another split, seed, long tail or run finds them
computed, and only items not seen before are decoded and run through the backbone.

    features = pooled(config, ds, indices)       # (len(indices), width) float32, by dataset index
    report = figures(config)                     # `ftlab.feature_diversity.FeatureReport`
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ftlab import paths
from ftlab import feature_diversity as fd

Say = Callable[[str], None]
REFERENCE = ("efficientnet_lite0", "imagenet")  # judges duplicates when the run's own weights are not pretrained
# The features are computed at the run's image size, at most this. A copy saved smaller, then enlarged to the
# backbone's size, is blurred; at 224 px Lite0's features of such copies of ants/bees photos scored as low as
# 0.735 against their originals while two distinct photos reached 0.835, so no threshold told them apart; at
# 128 px both are reduced to the same detail (copies 0.875 or more, distinct photos 0.779 at most). It also
# takes a third of the pixels, which keeps the first measurement of ants/bees near 20 s on 2 cores. The cost:
# class figures of 128 px features (a linear probe on them scores 0.83 on ants/bees, against 0.93 at 224 px).
FEATURE_SIZE = 128
_VERSION = 1  # of the file layout and of what is computed; a change makes every kept file stale


@dataclass(frozen=True)
class Source:
    """Which backbone's features, at which size: the key of a features file."""

    backbone: str
    weights: str
    image_size: int
    key: str  # everything that determines the vectors, in words

    @property
    def file(self) -> Path:
        return paths.home() / "features" / (hashlib.sha1(self.key.encode("utf-8", "surrogateescape"))
                                            .hexdigest()[:24] + ".npz")


def source_for(config, *, reference_if_random: bool = False) -> Source:
    """The features ``config`` reads: its backbone, weights and image size (``reference_if_random``: the
    `REFERENCE` backbone where its weights are not pretrained, since features of random weights do not
    tell two photos apart)."""
    from ftlab import backbones, data
    from ftlab.catalogue import Weights
    from ftlab.config import resolved_image_size
    from ftlab.transforms import Preprocessing

    backbone, weights = config.backbone, config.weights
    if reference_if_random and not Weights.parse(weights).pretrained:
        backbone, weights = REFERENCE
    spec = backbones.get_spec(backbone)
    size = spec.fixed_size or max(spec.min_size, min(resolved_image_size(replace(config, backbone=backbone)),
                                                     FEATURE_SIZE))
    prep = Preprocessing.for_backbone(backbone, size)
    key = (f"v{_VERSION} {backbone} {Weights.parse(weights).identity(config.seed)} {prep.identity()} pooled "
           f"last block; data {data.identity(config)}")
    return Source(backbone, weights, size, key)


def _load(source: Source) -> tuple[np.ndarray, np.ndarray]:
    """(indices, vectors) kept for ``source``, empty when there is no file or it is unreadable or stale."""
    try:
        with np.load(source.file, allow_pickle=False) as f:
            if str(f["key"]) == source.key:
                return f["indices"].astype(np.int64), f["vectors"].astype(np.float32)
    except (OSError, KeyError, ValueError):
        pass  # a damaged file is recomputed, never trusted
    return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)


def _save(source: Source, indices: np.ndarray, vectors: np.ndarray) -> None:
    """Write atomically: a reader sees the old file or the new, never half of one."""
    source.file.parent.mkdir(parents=True, exist_ok=True)
    part = source.file.with_suffix(f".{os.getpid()}.part.npz")
    try:
        np.savez(part, key=np.array(source.key), indices=indices, vectors=vectors)
        os.replace(part, source.file)
    finally:
        part.unlink(missing_ok=True)


def cached(config, indices: np.ndarray, *, reference_if_random: bool = False) -> bool:
    """Whether every item of ``indices`` has its features on disk already (no torch, no decoding)."""
    have, _ = _load(source_for(config, reference_if_random=reference_if_random))
    return bool(np.isin(np.asarray(indices, dtype=np.int64), have).all())


def pooled(config, ds, indices: np.ndarray, *, reference_if_random: bool = False, say: Say = lambda m: None,
           should_stop: Callable[[], bool] = lambda: False, info: dict | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """(kept indices, their features (n, width) float32): ``indices`` in their order less the files that
    failed to decode, from the disk where they are, computed (decoded and run through the backbone once)
    where not. ``info`` gets the seconds of decoding and of the forward pass, and ``computed``: how many."""
    source = source_for(config, reference_if_random=reference_if_random)
    indices = np.asarray(indices, dtype=np.int64)
    have, vectors = _load(source)
    missing = np.setdiff1d(indices, have)
    info = {} if info is None else info
    info["computed"] = info.get("computed", 0) + len(missing)
    if len(missing):
        new_idx, new_vec = _compute(config, source, ds, missing, say, should_stop, info)
        dead = np.setdiff1d(missing, new_idx)  # undecodable: kept as NaN rows, so they are not tried again
        rows = np.concatenate([new_vec, np.full((len(dead), new_vec.shape[1] if new_vec.size else
                                                vectors.shape[1] if vectors.size else 0), np.nan, np.float32)])
        have = np.concatenate([have, new_idx, dead])
        vectors = rows if not vectors.size else np.concatenate([vectors, rows])
        order = np.argsort(have)
        have, vectors = have[order], vectors[order]
        _save(source, have, vectors)
    pos = np.searchsorted(have, indices)
    got = vectors[pos]
    ok = ~np.isnan(got).any(1) if got.size else np.zeros(len(indices), bool)
    return indices[ok], got[ok]


def _compute(config, source: Source, ds, indices: np.ndarray, say: Say, should_stop: Callable[[], bool],
             seconds: dict) -> tuple[np.ndarray, np.ndarray]:
    from ftlab import backbones, data, fastpath, probe
    from ftlab.data.prepared import check_memory
    from ftlab.engine import pick_device
    from ftlab.transforms import Preprocess, Preprocessing

    began = time.perf_counter()
    prep_values = Preprocessing.for_backbone(source.backbone, source.image_size)
    say(f"decoding {len(indices):,} images at {prep_values.size} px for {source.backbone}'s features")
    check_memory(len(indices), prep_values.size)  # a sentence, not the OS ending the process
    try:
        decoded = data.decode(ds, indices, prep_values.size, resize=prep_values.resize, should_stop=should_stop)
    except data.DecodingStopped:
        from ftlab.errors import StopRequested

        raise StopRequested("decoding") from None
    seconds["decode"] = seconds.get("decode", 0.0) + time.perf_counter() - began
    began = time.perf_counter()
    device = pick_device(config.device)
    try:
        model = backbones.create_model(source.backbone, len(ds.classes), source.weights,
                                       image_size=prep_values.size).to(device).eval()
    except backbones.WeightsUnavailable as err:
        raise ValueError(str(err)) from None
    last = probe.boundaries(model)[-1]
    prep = Preprocess(prep_values, device)
    if not len(decoded.indices):
        return decoded.indices, np.zeros((0, 0), np.float32)
    sample = prep(decoded.images[:8], train=False)
    # fp32 always: the duplicate threshold was measured on fp32 features, and bf16 put Lite0's pooled
    # features 5.3e-2 of their scale off fp32 on ants/bees (ftlab.probe), the size of the threshold's margins
    fast = fastpath.accelerate(probe.Pooled(model, [last]), sample, precision="fp32", graph=config.fast_prefix)
    say(f"forward pass over {len(decoded.indices):,} images ({fast.how})")
    vectors = probe.pooled_features(fast.fn, decoded.images, prep, [probe.widths(model, [last], sample)[0]], [last],
                                    batch_size=64, should_stop=should_stop)[last]
    seconds["forward"] = seconds.get("forward", 0.0) + time.perf_counter() - began
    return decoded.indices, vectors.numpy().astype(np.float32)


def _split_rows(split) -> tuple[np.ndarray, np.ndarray]:
    names = [(n, getattr(split, n)) for n in ("train", "val", "test")]
    return (np.concatenate([ix for _, ix in names]).astype(np.int64),
            np.concatenate([np.full(len(ix), n, dtype="<U5") for n, ix in names]))


def figures(config, ds=None, *, say: Say = lambda m: None, should_stop: Callable[[], bool] = lambda: False,
            threshold: float = fd.DUPLICATE_THRESHOLD) -> tuple[fd.FeatureReport, "Embedded"]:
    """Every feature-space figure of ``config``'s data (its split as a run would see it, duplicates
    kept: they are what is measured) with ``config``'s backbone (`REFERENCE` where its weights are not
    pretrained: random features measure nothing of the photos), and the features themselves."""
    from ftlab import data
    from ftlab.catalogue import Weights

    ds = data.load_for(config) if ds is None else ds
    split = data.split_for(replace(config, drop_duplicates=False), ds)
    indices, names = _split_rows(split)
    info: dict = {}
    kept, z = pooled(config, ds, indices, reference_if_random=True, say=say, should_stop=should_stop, info=info)
    names = names[np.isin(indices, kept)]  # `pooled` keeps the order of ``indices``, less undecodable files
    indices = kept
    began = time.perf_counter()
    source = source_for(config, reference_if_random=True)
    report = fd.build_report(z, ds.labels[indices], names, indices, ds.classes, dataset=ds.name,
                             backbone=source.backbone, weights=Weights.parse(source.weights).describe(),
                             image_size=source.image_size, threshold=threshold)
    info["figures"] = time.perf_counter() - began
    computed = info.pop("computed", 0)
    return replace(report, seconds=info, computed=computed), Embedded(indices, names, ds.labels[indices], z)


@dataclass(frozen=True, eq=False)
class Embedded:
    """The features of a split's items, row by row."""

    indices: np.ndarray  # dataset indices
    splits: np.ndarray  # "train" | "val" | "test" per row
    labels: np.ndarray
    vectors: np.ndarray  # (n, width) float32

    def train(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indices, labels, vectors) of the training rows."""
        t = self.splits == "train"
        return self.indices[t], self.labels[t], self.vectors[t]


def drop_duplicates(config, ds, split):
    """``split`` without its near-duplicates (`ftlab.feature_diversity.to_drop`), judged on the features of
    ``config``'s backbone (or of `REFERENCE` where its weights are not pretrained)."""
    from ftlab.data import DataError

    indices, names = _split_rows(split)
    try:
        kept, z = pooled(config, ds, indices, reference_if_random=True)
    except DataError:
        raise
    except ValueError as err:  # the backbone's weights cannot be had here: a sentence, as for bad data
        raise DataError(f"near-duplicates cannot be judged: {err} Or turn drop_duplicates off.") from None
    names, indices = names[np.isin(indices, kept)], kept
    within, across = fd.duplicate_pairs(z, names, indices)
    train_out, held_out = fd.to_drop(within, across)
    return replace(split, train=np.setdiff1d(split.train, list(train_out)),
                   val=np.setdiff1d(split.val, list(held_out)), test=np.setdiff1d(split.test, list(held_out)))


def ready(config, ds) -> bool:
    """Whether `figures` would find every feature of ``config``'s split on disk (and so take well under a second)."""
    from ftlab import data

    indices, _ = _split_rows(data.split_for(replace(config, drop_duplicates=False), ds))
    return cached(config, indices, reference_if_random=True)


def thumbnails(ds, indices, size: int = 96) -> list:
    """The images of ``indices`` (dataset items) as (size, size, 3) uint8 arrays, the centre square of each."""
    from ftlab import data

    decoded = data.decode(ds, np.asarray(indices, dtype=np.int64), size)
    return list(decoded.images.permute(0, 2, 3, 1).numpy())


def item_name(ds, index: int) -> str:
    """An item in words: its file's name within its class folder, or its number in a built-in set."""
    files = getattr(ds, "_files", ())
    if files:
        path = Path(files[index])
        return f"{path.parent.name}/{path.name}"
    return f"#{index}"


def latest_confused_pairs(records, dataset: str, classes, k: int = 5) -> tuple[str, list[dict]]:
    """The most confused pairs of the latest finished run on ``dataset`` with these classes, beside the
    nearest class pairs in feature space: (the run's id, `ftlab.explore.confused_pairs`), or ("", [])."""
    from ftlab import explore

    for r in records:  # newest first, as the store lists them
        confusion = ((r.final or {}).get("val") or {}).get("confusion")
        if r.dataset == dataset and r.status == "finished" and confusion and list(r.classes) == list(classes):
            return r.id, explore.confused_pairs(confusion, list(classes), k)
    return "", []
