"""Comparing runs: the bootstrap interval, McNemar's test, the Pareto front, the pick, members
read from the run store, and the charts the Sweep page draws. Expected values are computed by
hand or by scipy, never by the code under test."""
import json
import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from ftlab import compare
from ftlab.compare import (bootstrap_interval, by_strategy, chart_points, cheapest_adequate, mcnemar, members,
                           pair_matrix, pairs_text, pairwise, pareto_front, pick_text)
from ftlab.runs import RunStore, new_run_id
from ui import charts


# --- the bootstrap interval -----------------------------------------------------------------
def test_degenerate_vectors_give_a_point_interval():
    assert bootstrap_interval(np.ones(37, bool)) == (1.0, 1.0)
    assert bootstrap_interval(np.zeros(12, bool)) == (0.0, 0.0)


def test_small_vectors_match_their_hand_computed_bootstrap_distributions():
    # [1, 0]: resampled means 0, 1/2, 1 with chances 1/4, 1/2, 1/4: the 2.5th and 97.5th percentiles are 0 and 1
    assert bootstrap_interval(np.array([1, 0])) == (0.0, 1.0)
    # [1, 1, 1, 0]: ones ~ Binomial(4, 3/4), P(<=0) = 1/256 < 0.025 <= P(<=1) = 13/256, P(4) = 81/256 > 0.025
    assert bootstrap_interval(np.array([1, 1, 1, 0])) == (0.25, 1.0)


def test_interval_agrees_with_scipy_percentile_bootstrap():
    rng = np.random.default_rng(3)
    correct = rng.permutation(np.r_[np.ones(47), np.zeros(13)]).astype(bool)
    ours = bootstrap_interval(correct, resamples=20_000, seed=1)
    theirs = stats.bootstrap((correct.astype(float),), np.mean, method="percentile", n_resamples=20_000,
                             rng=np.random.default_rng(2)).confidence_interval
    # both are Monte Carlo estimates of the same percentiles of a distribution on multiples of 1/60
    assert ours[0] == pytest.approx(theirs.low, abs=1 / 60 + 1e-9)
    assert ours[1] == pytest.approx(theirs.high, abs=1 / 60 + 1e-9)
    # and of the exact bootstrap distribution, Binomial(60, 47/60) / 60
    exact = stats.binom.ppf([0.025, 0.975], 60, 47 / 60) / 60
    assert ours == pytest.approx(tuple(exact), abs=1 / 60 + 1e-9)


def test_fractional_scores_agree_with_scipy_too():
    """Per-image means over seeds (the pooled interval) take the values 0, 1/3, 2/3, 1."""
    rng = np.random.default_rng(5)
    scores = rng.choice([0, 1 / 3, 2 / 3, 1], size=80, p=[0.1, 0.1, 0.2, 0.6])
    ours = bootstrap_interval(scores, resamples=20_000)
    theirs = stats.bootstrap((scores,), np.mean, method="percentile", n_resamples=20_000,
                             rng=np.random.default_rng(0)).confidence_interval
    assert ours == pytest.approx((theirs.low, theirs.high), abs=0.01)


def test_many_distinct_scores_resample_images_and_agree_with_scipy():
    scores = np.random.default_rng(8).random(300)  # 300 distinct values: the index-resampling path
    ours = bootstrap_interval(scores, resamples=20_000)
    theirs = stats.bootstrap((scores,), np.mean, method="percentile", n_resamples=20_000,
                             rng=np.random.default_rng(0)).confidence_interval
    assert ours == pytest.approx((theirs.low, theirs.high), abs=0.004)  # the mean's standard error is 0.017


def test_interval_is_seeded_and_narrows_with_the_level():
    correct = np.r_[np.ones(30), np.zeros(10)]
    assert bootstrap_interval(correct, seed=4) == bootstrap_interval(correct, seed=4)
    wide, narrow = bootstrap_interval(correct, 0.95), bootstrap_interval(correct, 0.5)
    assert wide[0] < narrow[0] <= 0.75 <= narrow[1] < wide[1]


@pytest.mark.parametrize("bad, match", [(np.array([]), "non-empty"), (np.ones((2, 2)), "1-D"),
                                        (np.array([0, 2]), "between 0 and 1"), (np.array(["a"]), "between 0 and 1")])
def test_bad_scores_are_refused_in_a_sentence(bad, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_interval(bad)


def test_bad_level_and_resamples_are_refused():
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval(np.ones(3), level=95)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_interval(np.ones(3), resamples=0)


# --- McNemar's test ---------------------------------------------------------------------------
def _paired(both: int, only_a: int, only_b: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness of A and B with the given 2x2 table."""
    a = np.r_[np.ones(both), np.ones(only_a), np.zeros(only_b), np.zeros(neither)].astype(bool)
    b = np.r_[np.ones(both), np.zeros(only_a), np.ones(only_b), np.zeros(neither)].astype(bool)
    return a, b


def test_mcnemar_on_agrestis_textbook_table():
    """Agresti, Categorical Data Analysis, presidential approval: 794, 150, 86, 570. 236 discordant
    pairs: chi-square with continuity correction, (|150 - 86| - 1)^2 / 236 = 3969 / 236."""
    a, b = _paired(794, 150, 86, 570)
    t = mcnemar(a, b)
    assert (t.n, t.only_a, t.only_b, t.exact) == (1600, 150, 86, False)
    assert t.statistic == pytest.approx(3969 / 236)
    # the chi-square survival function on 1 degree of freedom is erfc(sqrt(x / 2))
    assert t.p_value == pytest.approx(math.erfc(math.sqrt(3969 / 236 / 2)), rel=1e-9)
    assert t.distinguishable and t.sentence.startswith("A is more accurate on these 1,600 images")


def test_mcnemar_is_exact_below_25_discordant_images():
    a, b = _paired(40, 1, 6, 3)
    t = mcnemar(a, b, names=("top-1", "top-4"))
    # two-sided binomial, 7 discordant: 2 * P(X <= 1) = 2 * (1 + 7) / 128
    assert t.exact and t.statistic == 1 and t.p_value == pytest.approx(16 / 128)
    assert t.p_value == pytest.approx(stats.binomtest(1, 7, 0.5).pvalue)
    assert not t.distinguishable
    assert t.sentence == ("not distinguishable on these 50 images (p = 0.12; 1 image only top-1 got right, "
                          "6 only top-4)")
    assert mcnemar(*_paired(10, 12, 12, 0)).exact and not mcnemar(*_paired(10, 13, 12, 0)).exact


def test_mcnemar_exact_p_matches_binomtest_where_it_tells_apart():
    t = mcnemar(*_paired(100, 2, 15, 5))
    assert t.p_value == pytest.approx(stats.binomtest(2, 17, 0.5).pvalue) and t.p_value < 0.05
    assert t.distinguishable and t.sentence.startswith("B is more accurate on these 122 images")


def test_mcnemar_with_no_discordant_images_tells_nothing():
    t = mcnemar(*_paired(20, 0, 0, 4))
    assert t.p_value == 1.0 and not t.distinguishable and "not distinguishable on these 24 images" in t.sentence


def test_mcnemar_refuses_unpaired_inputs():
    with pytest.raises(ValueError, match="paired predictions: A has 3 images and B 4"):
        mcnemar([1, 0, 1], [1, 0, 1, 1])


# --- the Pareto front and the pick --------------------------------------------------------------
def test_holm_keeps_what_survives_the_step_down_correction():
    # sorted 0.005 < 0.05/4 and 0.01 < 0.05/3 are kept; 0.03 >= 0.05/2 stops, so 0.04 goes too
    assert compare.holm([0.01, 0.04, 0.03, 0.005]) == [True, False, False, True]
    assert compare.holm([0.04]) == [True] and compare.holm([0.06, 0.001]) == [False, True] and compare.holm([]) == []


def test_pareto_front_keeps_the_undominated_cheapest_first():
    assert pareto_front([4, 1, 3, 2], [0.9, 0.5, 0.6, 0.7]) == [1, 3, 0]  # 3 (0.6) is beaten by 2 (0.7)
    assert pareto_front([1, 1], [0.5, 0.6]) == [1]  # as costly and less accurate
    assert pareto_front([1, 2], [0.6, 0.6]) == [0]  # costlier and no more accurate
    assert pareto_front([1, 1], [0.6, 0.6]) == [0, 1]  # equal: neither dominates
    assert pareto_front([], []) == []


def test_pareto_front_refuses_what_it_cannot_order():
    with pytest.raises(ValueError, match="one cost per accuracy"):
        pareto_front([1, 2], [0.5])
    with pytest.raises(ValueError, match="known costs"):
        pareto_front([1, float("nan")], [0.5, 0.6])


def _m(label, accuracy, interval, cpu, params):
    return SimpleNamespace(label=label, accuracy=accuracy, interval=interval, cpu_seconds=cpu, trainable_params=params)


SWEEP = [_m("linear-probe", 0.880, (0.83, 0.93), 3.1, 1_281), _m("top-1", 0.928, (0.889, 0.961), 9.0, 200_000),
         _m("top-4", 0.941, (0.902, 0.967), 41.0, 3_000_000), _m("full", 0.935, (0.90, 0.96), 55.0, 3_400_000)]


def test_the_pick_is_the_cheapest_within_the_best_members_interval():
    pick = cheapest_adequate(SWEEP)
    assert (pick.index, pick.best) == (1, 2)
    assert pick.reason == ("top-1 is the pick: it is within the best member's (top-4, 0.941) interval 0.902-0.967 "
                           "at 0.928, at 9 CPU-s against 41 CPU-s.")
    # by trainable parameters too: the linear probe (0.880) is below 0.902 either way
    assert cheapest_adequate(SWEEP, "trainable_params").index == 1


def test_the_best_member_is_the_pick_when_nothing_cheaper_is_close():
    ms = [_m("linear-probe", 0.70, (0.6, 0.8), 3.0, 10), _m("full", 0.95, (0.92, 0.98), 50.0, 100)]
    pick = cheapest_adequate(ms)
    assert pick.index == 1 and "most accurate member (0.950, interval 0.920-0.980)" in pick.reason


def test_the_pick_leaves_out_members_without_the_cost_or_an_accuracy():
    ms = [_m("a", 0.93, (0.9, 0.96), None, 5), _m("b", None, None, 1.0, 1), _m("c", 0.94, (0.91, 0.97), 20.0, 50)]
    assert cheapest_adequate(ms).index == 2  # a is within c's interval but its CPU time is unknown
    assert cheapest_adequate(ms, "trainable_params").index == 0
    with pytest.raises(ValueError, match="no member has a val accuracy"):
        cheapest_adequate([ms[1]])
    with pytest.raises(ValueError, match="unknown cost"):
        cheapest_adequate(ms, "watts")
    assert pick_text([ms[1]]) == "No member has a val accuracy yet: the pick comes once a member has finished."


# --- members from the run store ------------------------------------------------------------------
LABELS = [0, 1, 0, 1, 1, 0, 1, 0, 0, 1]
INDICES = list(range(100, 110))


def _run(store, strategy, seed, predictions, *, status="finished", labels=LABELS, indices=INDICES, **summary):
    rid = new_run_id()
    store.create(rid, {"dataset": "digits", "backbone": "small_cnn", "strategy": strategy, "seed": seed,
                       "split_seed": 0, "sweep": "s1"})
    store.set_data(rid, ["a", "b"], {"train": [0, 1], "val": indices, "test": [], "seed": 0})
    if status == "running":
        return rid
    val = {"indices": indices, "predictions": predictions, "accuracy": 0.0}
    if labels is not None:
        val["labels"] = labels
    store.finish(rid, status, {"best_val_accuracy": 0.5, "trainable_params": 1000, **summary}, {"val": val})
    return rid


def _flip(wrong: list[int]) -> list[int]:
    return [1 - y if i in wrong else y for i, y in enumerate(LABELS)]


def test_members_read_per_image_correctness_costs_and_depth(tmp_path):
    store = RunStore(tmp_path)
    probe = _run(store, "linear-probe", 0, _flip([0, 1, 2]), cpu_seconds=3.5, frozen_check="frozen blocks unchanged")
    top = _run(store, "top-2", 0, _flip([4]), cpu_seconds=12.0, trained_blocks=2, trainable_params=5000)
    old = _run(store, "full", 0, _flip([]), labels=None)
    running = _run(store, "full", 0, None, status="running")
    ms = members(store, [probe, store.get(top), old, running])  # ids and records both
    assert [m.run_id for m in ms] == [probe, top, old, running]
    p, t, o, r = ms
    assert p.label == "linear-probe" and p.seed == 0 and p.depth == 0 and p.trained_blocks is None
    assert p.correct.tolist() == [False] * 3 + [True] * 7 and p.best_val == pytest.approx(0.7)
    assert p.interval == bootstrap_interval(p.correct) and p.interval[0] < 0.7 < p.interval[1]
    assert p.cpu_seconds == 3.5 and p.frozen_check == "frozen blocks unchanged" and p.indices == tuple(INDICES)
    assert (t.depth, t.trainable_params, t.best_val) == (2, 5000, pytest.approx(0.9))
    assert o.correct is None and o.best_val == 0.5 and "val labels" in o.note and o.cpu_seconds is None
    assert r.status == "running" and r.correct is None and r.interval is None and r.note == "still training"
    failed = new_run_id()
    store.create(failed, {"dataset": "digits", "backbone": "small_cnn", "strategy": "top-1", "seed": 0})
    store.finish(failed, "failed", {}, {}, "the freeze-integrity check failed: stage1 changed")
    (f,) = members(store, [failed])
    assert f.correct is None and f.note == "failed: the freeze-integrity check failed: stage1 changed"
    with pytest.raises(KeyError):
        members(store, ["20000101-000000-dead00"])


def test_depth_of_a_full_run_without_trained_blocks_comes_from_what_it_moved(tmp_path):
    store = RunStore(tmp_path)
    rid = _run(store, "full", 0, _flip([]))
    store.add_epoch(rid, 1, {"epoch": 1, "moved": {"stem": 0.01, "stage1": 0.03, "stage2": 0.0, "head": 1.2}})
    assert members(store, [rid])[0].depth == 2  # stem and stage1 moved; the head is new, not counted
    assert compare.depth_of("top-3") == 3 and compare.depth_of("full") is None


def test_several_seeds_label_members_and_pool_per_strategy(tmp_path):
    store = RunStore(tmp_path)
    ids = [_run(store, "top-1", 0, _flip([0])), _run(store, "top-1", 1, _flip([0, 5, 6])),
           _run(store, "linear-probe", 0, _flip([1, 2, 3, 4])), _run(store, "linear-probe", 1, _flip([1, 2]))]
    ms = members(store, ids)
    assert [m.label for m in ms] == ["top-1 · seed 0", "top-1 · seed 1", "linear-probe · seed 0",
                                     "linear-probe · seed 1"]
    rows = by_strategy(ms)
    assert [r.strategy for r in rows] == ["top-1", "linear-probe"]
    top = rows[0]
    assert top.accuracy == pytest.approx(0.8) and (top.low, top.high) == (pytest.approx(0.7), pytest.approx(0.9))
    assert top.std == pytest.approx(math.sqrt(((0.9 - 0.8) ** 2 + (0.7 - 0.8) ** 2) / 1))  # sample std, ddof 1
    assert top.seeds == (0, 1) and top.depth == 1
    pooled = np.mean([ms[0].correct, ms[1].correct], axis=0)  # per image: 1, 0.5 or 0
    assert top.interval == bootstrap_interval(pooled)
    assert top.text == "0.800 ± 0.141 (2 seeds, 0.700-0.900)"


def test_the_pick_and_the_chart_work_on_strategy_rows(tmp_path):
    """With several seeds the page picks among strategies (mean across seeds, pooled interval)."""
    store = RunStore(tmp_path)
    ids = [_run(store, "linear-probe", s, _flip(w), cpu_seconds=2.0) for s, w in ((0, [0, 1, 2, 3, 4, 5]),
                                                                                    (1, [1]))]
    ids += [_run(store, "full", s, _flip([]), cpu_seconds=30.0, trained_blocks=4) for s in (0, 1)]
    rows = by_strategy(members(store, ids))
    assert [r.accuracy for r in rows] == [pytest.approx((0.4 + 0.9) / 2), 1.0] and rows[1].interval == (1.0, 1.0)
    pick = cheapest_adequate(rows)
    assert pick.index == 1 and pick.reason.startswith("full is the pick: it is the most accurate strategy (1.000")
    points = chart_points(rows, "depth").points
    assert [(p["label"], p["x"], p["front"], p["pick"]) for p in points] == [("linear-probe", 0, True, False),
                                                                             ("full", 4, True, True)]


def test_one_seed_rows_carry_the_members_interval(tmp_path):
    store = RunStore(tmp_path)
    ms = members(store, [_run(store, "top-1", 0, _flip([0]))])
    (row,) = by_strategy(ms)
    assert row.std is None and row.interval == ms[0].interval and row.text.startswith("0.900 (1 seed, interval")


def test_pairwise_compares_members_of_one_seed_on_the_same_images(tmp_path):
    store = RunStore(tmp_path)
    ids = [_run(store, "linear-probe", 0, _flip([0, 1, 2, 3])), _run(store, "top-1", 0, _flip([3])),
           _run(store, "top-2", 1, _flip([])),
           _run(store, "full", 0, _flip([]), indices=list(range(200, 210)))]  # another split
    ms = members(store, ids)
    pairs = pairwise(ms)
    assert [(p.a, p.b) for p in pairs] == [("linear-probe · seed 0", "top-1 · seed 0"),
                                           ("linear-probe · seed 0", "full · seed 0"),
                                           ("top-1 · seed 0", "full · seed 0")]  # top-2 is the only seed-1 member
    tested = pairs[0].test
    assert (tested.only_a, tested.only_b, tested.n) == (0, 3, 10)
    assert tested.p_value == pytest.approx(0.25) and not tested.distinguishable  # 2 * (1/2)^3
    assert pairs[1].test is None and "not paired" in pairs[1].sentence
    lines = pairs_text(pairs)
    assert lines[0] == ("The pair is not distinguishable by McNemar's test (p < 0.05): neither member is ranked "
                        "above the other on these val images.")
    assert "linear-probe · seed 0 vs top-1 · seed 0: not distinguishable on these 10 images (p = 0.25" in lines[1]
    two = pairwise([SimpleNamespace(label=n, run_id=n, seed=0, correct=x, indices=())
                    for n, x in zip("ABC", (*_paired(100, 2, 15, 5), _paired(100, 2, 15, 5)[0]))])
    assert pairs_text(two)[0] == ("2 of 3 pairs are distinguishable by McNemar's test (p < 0.05); the others are "
                                  "not ranked, whatever their accuracies. Of 3 tests about 0.15 would fall below "
                                  "0.05 by chance alone: 2 stay distinguishable after Holm's correction.")
    assert pairs_text(two)[1].startswith("A vs B: B is more accurate")  # the distinguishable first
    assert pairs_text([]) == ["No two finished members of the same seed to compare yet."]


def test_pair_matrix_is_symmetric_and_says_nd_where_p_is_large():
    a, b = _paired(30, 1, 6, 3)
    c = a.copy()
    c[:20] = False  # C gets 20 of A's right answers wrong
    ms = [SimpleNamespace(label=n, run_id=n, seed=0, correct=x, indices=(1,)) for n, x in (("A", a), ("B", b),
                                                                                              ("C", c))]
    pairs = pairwise(ms)
    matrix = pair_matrix(pairs)
    assert matrix["labels"] == ["A", "B", "C"] and matrix["seed"] == 0
    p = matrix["p"]
    assert p[0][0] is None and p[0][1] == p[1][0] == pytest.approx(16 / 128)
    assert matrix["text"][0][1] == "n.d. (p = 0.12)" and matrix["text"][0][0] == "—"
    assert p[0][2] == pytest.approx(stats.binomtest(0, 20, 0.5).pvalue)
    assert matrix["text"][2][0] == "p < 0.001"


# --- the page's text and the charts ------------------------------------------------------------------
def test_member_and_strategy_tables(tmp_path):
    store = RunStore(tmp_path)
    ms = members(store, [_run(store, "top-1", 0, _flip([0]), cpu_seconds=9.04)])
    (row,) = compare.member_table(ms)
    assert row["member"] == "top-1" and row["CPU-s"] == 9.0 and row["best val"] == 0.9 and row["val images"] == 10
    lo, hi = ms[0].interval
    assert row["95% interval"] == f"{lo:.3f}-{hi:.3f}"
    (srow,) = compare.strategy_table(by_strategy(ms))
    assert srow["seeds"] == 1 and srow["mean val"] == 0.9 and srow["std"] is None


def test_report_is_json_ready_and_picks_among_strategies_with_several_seeds(tmp_path):
    store = RunStore(tmp_path)
    ids = [_run(store, "linear-probe", s, _flip([0, 1, 2, 3, 4, 5]), cpu_seconds=2.0) for s in (0, 1)]
    ids += [_run(store, "full", s, _flip([]), cpu_seconds=30.0, trained_blocks=4) for s in (0, 1)]
    out = json.loads(json.dumps(compare.report(members(store, ids))))
    assert [m["member"] for m in out["members"]] == ["linear-probe · seed 0", "linear-probe · seed 1",
                                                     "full · seed 0", "full · seed 1"]
    assert out["members"][2]["interval"] == [1.0, 1.0] and out["pick"]["label"] == "full"
    assert [s["strategy"] for s in out["strategies"]] == ["linear-probe", "full"]
    (p0, p1) = out["pairs"]  # one per seed: linear-probe against full
    assert compare.pair_seeds(pairwise(members(store, ids))) == [0, 1]
    assert (p0["seed"], p0["only_a"], p0["only_b"], p0["exact"]) == (0, 0, 6, True)
    assert p0["p_value"] == pytest.approx(2 / 64) and p0["distinguishable"]  # 2 x (1/2)^6
    assert compare.report([])["pick"] == {"label": None, "reason": "No member has a val accuracy yet: the pick "
                                                                    "comes once a member has finished."}


def test_chart_points_mark_the_front_and_the_pick():
    ms = [SimpleNamespace(strategy=m.label, depth=d, **vars(m)) for m, d in zip(SWEEP, (0, 1, 4, 7))]
    ms.append(SimpleNamespace(label="gradual", strategy="gradual", accuracy=None, interval=None, depth=None,
                              cpu_seconds=None, trainable_params=None))
    data = chart_points(ms, "cpu_seconds")
    assert [p["label"] for p in data.points] == ["linear-probe", "top-1", "top-4", "full"]
    assert [p["front"] for p in data.points] == [True, True, True, False]  # full: costlier and less accurate
    assert [p["pick"] for p in data.points] == [False, True, False, False]
    assert "gradual" in data.note and data.x_title == "CPU-seconds" and not data.log_x
    assert chart_points(ms, "trainable_params").log_x
    with pytest.raises(ValueError, match="unknown x"):
        chart_points(ms, "colour")

    fig = charts.sweep_accuracy(data.points, data.x_title, data.log_x)
    names = [t.name for t in fig.data]
    assert names == ["linear-probe", "top-1", "top-4", "full", "Pareto front", "pick: top-1"]
    top4 = fig.data[2]
    assert list(top4.error_y.array) == [pytest.approx(0.967 - 0.941)]
    assert list(top4.error_y.arrayminus) == [pytest.approx(0.941 - 0.902)]
    front = fig.data[4]
    assert list(front.x) == [3.1, 9.0, 41.0] and list(front.y) == [0.880, 0.928, 0.941]
    assert list(fig.data[5].x) == [9.0] and fig.layout.xaxis.title.text == "CPU-seconds"
    log = chart_points(ms, "trainable_params")
    assert charts.sweep_accuracy(log.points, log.x_title, log.log_x).layout.xaxis.type == "log"


def test_mcnemar_matrix_chart_draws_the_p_values_and_their_text():
    a, b = _paired(30, 1, 6, 3)
    ms = [SimpleNamespace(label=n, run_id=n, seed=0, correct=x, indices=()) for n, x in (("A", a), ("B", b))]
    m = pair_matrix(pairwise(ms))
    fig = charts.mcnemar_matrix(m["labels"], m["p"], m["text"])
    (heat,) = fig.data
    assert list(heat.x) == ["A", "B"] and heat.z[0][1] == pytest.approx(0.125) and heat.z[0][0] is None
    assert heat.text[1][0] == "n.d. (p = 0.12)" and heat.texttemplate == "%{text}"


def test_compare_imports_no_torch():
    code = "import sys, ftlab.compare; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
