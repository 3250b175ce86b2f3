"""Classification figures over labels and predictions (scikit-learn), and what they show."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def classification_figures(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> dict:
    """Confusion matrix and per-class precision, recall, F1 and support, as plain lists.

    >>> f = classification_figures([0, 0, 1, 1], [0, 1, 1, 1], 2)
    >>> f["confusion"], f["recall"], [round(p, 3) for p in f["precision"]]
    ([[1, 1], [0, 2]], [0.5, 1.0], [1.0, 0.667])
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support  # 1.5 s: only when used

    labels = list(range(num_classes))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    p, r, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {"confusion": cm.tolist(), "precision": p.tolist(), "recall": r.tolist(), "f1": f1.tolist(),
            "support": support.tolist()}


def normalise_rows(confusion: Sequence[Sequence[int]]) -> list[list[float]]:
    """Each row divided by its total: the share of each true class predicted as each class.

    >>> normalise_rows([[3, 1], [0, 0]])
    [[0.75, 0.25], [0.0, 0.0]]
    """
    cm = np.asarray(confusion, dtype=float)
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0).tolist()


def most_confused(confusion: Sequence[Sequence[int]], k: int = 5) -> list[tuple[int, int, int]]:
    """The k largest off-diagonal cells as (true class, predicted class, count).

    >>> most_confused([[5, 2, 0], [4, 6, 1], [0, 0, 9]], k=2)
    [(1, 0, 4), (0, 1, 2)]
    """
    cm = np.asarray(confusion)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    i, j = np.nonzero(off > 0)  # row-major: already in (true, predicted) order
    order = np.argsort(-off[i, j], kind="stable")[:k]  # numpy, not a loop: 2,000 classes are 4M cells
    return [(int(i[o]), int(j[o]), int(off[i[o], j[o]])) for o in order]
