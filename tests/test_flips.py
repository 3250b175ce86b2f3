"""Prediction flips (ftlab.flips) on stored per-image predictions counted by hand."""
from types import SimpleNamespace as S

import pytest

from ftlab import flips

CLASSES = ["cat", "dog", "fox"]
INDICES = [4, 9, 2, 7, 5, 1]
LABELS = [0, 1, 2, 0, 1, 2]


def _record(rid, predictions, indices=INDICES, labels=LABELS, classes=CLASSES, strategy="full"):
    return S(id=rid, classes=classes, config={"dataset": "digits", "backbone": "small_cnn", "strategy": strategy},
             dataset="digits", backbone="small_cnn", strategy=strategy, final={"val": {"indices": indices, "labels": labels, "predictions": predictions}})


def test_the_table_and_the_two_cells():
    # A right on images 0, 1, 2, 3; B right on 0, 4, 5 (by position): both 1 (pos 0), only A 3, only B 2, neither 0
    a = _record("a", [0, 1, 2, 0, 0, 0], strategy="full")
    b = _record("b", [0, 0, 0, 1, 1, 2], strategy="linear-probe")
    found = flips.flips(a, b)
    assert (found.both_right, len(found.only_a), len(found.only_b), found.both_wrong) == (1, 3, 2, 0)
    assert [r["index"] for r in found.only_a] == [9, 2, 7] and [r["index"] for r in found.only_b] == [5, 1]
    assert found.only_b[0] == {"index": 5, "label": 1, "a": 0, "b": 1}
    table = found.table()
    assert [list(row.values())[1:] for row in table] == [[1, 3], [2, 0]]
    # 5 discordant images: the exact binomial test, 2 * P(X <= 2 | n = 5, p = 1/2) = 2 * 16/32 = 1.0
    assert found.test.exact and found.test.p_value == pytest.approx(1.0)
    assert found.to_dict()["only_a"] == 3 and "not distinguishable" in found.test.sentence


def test_runs_on_other_images_are_refused():
    a = _record("a", [0] * 6)
    with pytest.raises(ValueError, match="not scored on the same val images"):
        flips.flips(a, _record("b", [0] * 6, indices=INDICES[::-1]))
    with pytest.raises(ValueError, match="not scored on the same val images"):
        flips.flips(a, _record("b", [0] * 6, classes=["a", "b", "c"]))
    with pytest.raises(ValueError, match="kept no per-image val predictions"):
        flips.flips(a, S(id="c", classes=CLASSES, config={}, dataset="digits", backbone="small_cnn", strategy="full",
                         final={}))


def test_the_same_label_twice_is_told_apart_by_id():
    found = flips.flips(_record("a", [0] * 6), _record("b", [1] * 6))
    assert found.a_label.endswith("(a)") and found.b_label.endswith("(b)")
