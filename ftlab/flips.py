"""Prediction flips: the val images one kept run gets right and another gets wrong, both ways.

Read from the per-image predictions each run stored at its final evaluation (the pairing the
sweep's McNemar test uses, `ftlab.compare`), so the counts cost nothing; the probabilities shown
with the flipped images are each run's model run again on those images only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ftlab import compare, data
from ftlab.explore import record_label

SHOWN = 24  # images per grid; the counts cover every one


@dataclass(frozen=True)
class Flips:
    """Two runs on the same val images: the McNemar table and the images of its two discordant cells."""

    a_id: str
    b_id: str
    a_label: str
    b_label: str
    classes: tuple[str, ...]
    both_right: int
    both_wrong: int
    only_a: tuple[dict, ...]  # A right, B wrong: {"index", "label", "a", "b"} (class indices)
    only_b: tuple[dict, ...]
    test: compare.McNemar

    def table(self) -> list[dict]:
        """The 2 x 2 table of counts, rows A right / A wrong, columns B right / B wrong."""
        return [{"": f"{self.a_label}: right", f"{self.b_label}: right": self.both_right,
                 f"{self.b_label}: wrong": len(self.only_a)},
                {"": f"{self.a_label}: wrong", f"{self.b_label}: right": len(self.only_b),
                 f"{self.b_label}: wrong": self.both_wrong}]

    def to_dict(self) -> dict:
        return {"a": self.a_id, "b": self.b_id, "both_right": self.both_right, "both_wrong": self.both_wrong,
                "only_a": len(self.only_a), "only_b": len(self.only_b), "p_value": self.test.p_value,
                "sentence": self.test.sentence}


def _val(record) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    val = record.final.get("val") if isinstance(record.final, dict) else None
    if not isinstance(val, dict) or "labels" not in val or "predictions" not in val:
        raise ValueError(f"run {record.id} kept no per-image val predictions with their labels (it stopped before "
                         "its final evaluation, or was kept before val labels were stored)")
    return (np.asarray(val["indices"], dtype=np.int64), np.asarray(val["labels"], dtype=np.int64),
            np.asarray(val["predictions"], dtype=np.int64))


def flips(a, b) -> Flips:
    """The flips between kept runs ``a`` and ``b`` (`ftlab.runs.RunRecord`s). A ValueError in words
    when they were not scored on the same val images with the same classes."""
    (ia, ya, pa), (ib, yb, pb) = _val(a), _val(b)
    if list(a.classes) != list(b.classes) or not np.array_equal(ia, ib) or not np.array_equal(ya, yb):
        raise ValueError(f"runs {a.id} and {b.id} were not scored on the same val images with the same classes: "
                         "compare runs of one data set and split (a sweep holds the split fixed with --split-seed)")
    ra, rb = pa == ya, pb == yb
    rows = [{"index": int(i), "label": int(y), "a": int(p), "b": int(q)} for i, y, p, q in zip(ia, ya, pa, pb)]
    names = (record_label(a, with_id=False), record_label(b, with_id=False))
    if names[0] == names[1]:
        names = (f"{names[0]} ({a.id})", f"{names[1]} ({b.id})")
    return Flips(a.id, b.id, names[0], names[1], tuple(a.classes), int(np.sum(ra & rb)), int(np.sum(~ra & ~rb)),
                 tuple(r for r, x, y in zip(rows, ra, rb) if x and not y),
                 tuple(r for r, x, y in zip(rows, ra, rb) if y and not x),
                 compare.mcnemar(ra, rb, ("A", "B")))


def grid(found: Flips, which: str, ds: data.Dataset, a_predictor, b_predictor, size: int = 96,
         limit: int = SHOWN) -> tuple[list[np.ndarray], list[str]]:
    """The first ``limit`` images of one discordant cell (``which``: "a" for A right and B wrong,
    "b" the other way), decoded at ``size`` for a page, each captioned with its true class and
    each run's prediction and probability (the two `ftlab.predict.Predictor`s run on it)."""
    rows = list(found.only_a if which == "a" else found.only_b)[:limit]
    if not rows:
        return [], []
    if [str(c) for c in ds.classes] != list(found.classes) or max(r["index"] for r in rows) >= len(ds):
        raise data.DataError(f"the data set ({ds.source or ds.name}) is not the one the runs were trained on any "
                             "more: its classes or images have changed")
    idx = np.asarray([r["index"] for r in rows])
    shown = data.decode(ds, idx, size)
    probs = [_probabilities(p, ds, idx) for p in (a_predictor, b_predictor)]
    by_index = dict(zip(shown.indices.tolist(), shown.images.permute(0, 2, 3, 1).numpy()))
    images, captions, c = [], [], found.classes
    for k, r in enumerate(rows):
        if r["index"] not in by_index:
            continue
        images.append(by_index[r["index"]])
        captions.append(f"{c[r['label']]} · A: {c[r['a']]} {probs[0][k, r['a']]:.0%} · "
                        f"B: {c[r['b']]} {probs[1][k, r['b']]:.0%}")
    return images, captions


def _probabilities(predictor, ds: data.Dataset, idx: np.ndarray) -> np.ndarray:
    """``predictor``'s class probabilities of ``ds[idx]``, decoded as its run's evaluation did
    (an image that cannot be read gets none: NaN)."""
    prep = predictor.preprocessing
    decoded = data.decode(ds, idx, prep.size, resize=prep.resize)
    out = np.full((len(idx), len(predictor.classes)), np.nan)
    if len(decoded.indices):
        found = predictor.probabilities(decoded.images).numpy()
        where = {int(i): k for k, i in enumerate(idx)}
        for row, i in zip(found, decoded.indices.tolist()):
            out[where[int(i)]] = row
    return out
