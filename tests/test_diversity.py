"""Class-distribution figures against values computed by hand and by other libraries."""
import math

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy

from ftlab import diversity


def test_entropy_by_hand():
    # p = (0.5, 0.25, 0.25): H = 0.5 ln 2 + 2 * 0.25 ln 4 = 1.5 ln 2 nats = 1.5 bits
    d = diversity.distribution([4, 2, 2])
    assert d.entropy_nats == pytest.approx(1.5 * math.log(2))
    assert d.entropy_bits == pytest.approx(1.5)
    assert d.normalised_entropy == pytest.approx(1.5 * math.log(2) / math.log(3))
    assert d.effective_classes == pytest.approx(2 ** 1.5)
    assert d.imbalance_ratio == 2.0
    assert d.total == 8


def test_entropy_matches_a_direct_formula_on_random_counts():
    rng = np.random.default_rng(0)
    for _ in range(20):
        counts = rng.integers(1, 500, size=rng.integers(2, 12))
        p = counts / counts.sum()
        assert diversity.entropy(counts) == pytest.approx(-(p * np.log(p)).sum())
        assert diversity.entropy(counts, base=2) == pytest.approx(scipy_entropy(p, base=2))


def test_balanced_is_one_and_empty_class_is_infinite_imbalance():
    assert diversity.distribution([7] * 5).normalised_entropy == pytest.approx(1.0)
    d = diversity.distribution([5, 0, 5])
    assert d.imbalance_ratio == math.inf
    assert d.effective_classes == pytest.approx(2.0)


def test_long_tail_lowers_entropy_as_computed_by_hand():
    counts = [100] * 10
    tail = diversity.long_tail_counts(counts, 10)
    # n_k = round(100 * 10 ** (-k / 9)), k = 0..9
    assert tail == [round(100 * 10 ** (-k / 9)) for k in range(10)]
    assert max(tail) / min(tail) == 10
    p = np.array(tail) / sum(tail)
    by_hand = -(p * np.log(p)).sum() / math.log(10)
    assert diversity.distribution(tail).normalised_entropy == pytest.approx(by_hand)
    assert by_hand < 0.99


def test_long_tail_never_asks_for_more_than_a_class_has():
    counts = [10, 80, 40]
    tail = diversity.long_tail_counts(counts, 4)
    assert all(t <= c for t, c in zip(tail, counts))
    assert max(tail) / min(tail) == pytest.approx(4, rel=0.15)
    with pytest.raises(ValueError):
        diversity.long_tail_counts(counts, 0.5)


def test_suggestions_follow_the_figures():
    imbalanced = diversity.suggestions([200, 20, 20])
    assert any(s.setting.get("class_weighting") == "balanced" for s in imbalanced)
    assert all(s.reason for s in imbalanced)
    balanced = diversity.suggestions([50] * 10)
    assert not any("class_weighting" in s.setting for s in balanced)
    assert any(s.setting.get("lr_factor", 1) > 1 for s in balanced)
    tiny = diversity.suggestions([5, 6])
    assert any(s.setting.get("strategy") == "linear-probe" for s in tiny)
