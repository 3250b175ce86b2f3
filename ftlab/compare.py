"""Comparing fine-tuning runs without over-reading small validation sets.

Each member of a comparison is a kept run; its figures come from the best model's stored
per-image predictions on val (``final["val"]``), so every accuracy carries a 95% percentile
bootstrap interval over the val images, and two members scored on the same images are
compared by McNemar's test on their paired predictions rather than ranked by their
accuracies. The pick is the cheapest member whose accuracy lies within the best member's
interval: what you lose by taking it is within the noise of the measurement.

Pure numpy (scipy.stats where used, imported there); no torch. Pages call the text
helpers (`pick_text`, `pairs_text`, `member_table`, `strategy_table`) and the chart data
(`chart_points`, `pair_matrix`) and only draw them.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from itertools import combinations

import numpy as np

from ftlab.explore import strategy_label
from ftlab.freeze import Strategy, backbone_blocks
from ftlab.messages import printable

LEVEL = 0.95  # the bootstrap interval's coverage
ALPHA = 0.05  # McNemar's test: p below this tells two members apart
EXACT_BELOW = 25  # discordant pairs under which McNemar's test is the exact binomial one
RESAMPLES = 10_000
_CHUNK = 2**21  # draws (resamples x distinct values, or x images) held at once by the bootstrap
_LEVELS = 64  # distinct scores up to which the bootstrap draws multinomial counts (0/1, means over a few seeds)
# how a member's cost is read and written: attribute -> (axis title, unit in sentences, log axis)
COSTS = {"cpu_seconds": ("CPU-seconds", "CPU-s", False),
         "trainable_params": ("trainable parameters", "trainable parameters", True)}
X_AXES = {"depth": ("backbone blocks that train (freeze depth)", False), **{k: (v[0], v[2]) for k, v in COSTS.items()}}


# --- the interval ---------------------------------------------------------------------------
def bootstrap_interval(correct: np.ndarray, level: float = LEVEL, resamples: int = RESAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``correct`` (one score per val image: 0/1
    correctness, or a per-image mean over seeds), seeded.

    A resample of n images is described completely by how often it draws each distinct score,
    and those counts are multinomial(n, shares of the scores): drawing the counts is the same
    bootstrap as drawing image indices (`scipy.stats.bootstrap`'s percentile method), without
    holding n x resamples indices; for 0/1 scores it is a binomial draw per resample. Scores with
    many distinct values (more than 64) are resampled by index, in chunks.

    >>> bootstrap_interval(np.ones(20, bool))
    (1.0, 1.0)
    >>> bootstrap_interval(np.array([1, 0]))  # resampled means 0, 1/2, 1 with chances 1/4, 1/2, 1/4
    (0.0, 1.0)
    """
    values = _scores(correct, "bootstrap_interval")
    _check_interval(level, resamples)
    n = len(values)
    levels, counts = np.unique(values, return_counts=True)
    rng = np.random.default_rng(seed)
    if len(levels) <= _LEVELS:
        step = max(1, _CHUNK // len(levels))
        means = np.concatenate([rng.multinomial(n, counts / n, size=min(step, resamples - start)) @ levels / n
                                for start in range(0, resamples, step)])
    else:  # many distinct scores: drawing image indices is cheaper than a multinomial over each score
        step = max(1, _CHUNK // n)
        means = np.concatenate([values[rng.integers(0, n, (min(step, resamples - start), n))].mean(axis=1)
                                for start in range(0, resamples, step)])
    return _interval_of(means, level)


def bootstrap_draws_interval(rows: np.ndarray, level: float = LEVEL, resamples: int = RESAMPLES,
                             seed: int = 0) -> tuple[float, float]:
    """`bootstrap_interval` of several fitted draws scored on the same images, ``rows`` (draws, images)
    (the probe's data-efficiency points): each resample draws the rows too, then the images of their
    per-image mean, so the interval holds the spread between draws as well as that of the images.
    One row is `bootstrap_interval` of it.

    >>> bootstrap_draws_interval(np.ones((3, 20)))
    (1.0, 1.0)
    """
    rows = np.atleast_2d(np.asarray(rows))
    if rows.ndim != 2 or len(rows) == 0:
        raise ValueError(f"bootstrap_draws_interval needs (draws, images) scores, got shape {np.shape(rows)}")
    if len(rows) == 1:
        return bootstrap_interval(rows[0], level, resamples, seed)
    rows = np.array([_scores(row, "bootstrap_draws_interval") for row in rows])
    _check_interval(level, resamples)
    return _interval_of(_draws_and_images(rows, resamples, seed), level)


def _check_interval(level: float, resamples: int) -> None:
    if not 0 < level < 1:
        raise ValueError(f"the interval's level must lie between 0 and 1 (0.95 for 95%), not {level!r}")
    if not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be a whole number of at least 1 (10,000 is usual), not {resamples!r}")


def _interval_of(means: np.ndarray, level: float) -> tuple[float, float]:
    low, high = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def _draws_and_images(rows: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Resampled means of (draws, images) scores: rows drawn with replacement, averaged per image, then
    the images drawn with replacement; in chunks that keep resamples x draws x images bounded."""
    d, n = rows.shape
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK // (d * n))
    means = []
    for start in range(0, resamples, step):
        b = min(step, resamples - start)
        picked = rows[rng.integers(0, d, (b, d))].mean(axis=1)  # (b, images): each resample's draws, averaged
        means.append(np.take_along_axis(picked, rng.integers(0, n, (b, n)), axis=1).mean(axis=1))
    return np.concatenate(means)


def _scores(values: object, what: str) -> np.ndarray:
    """``values`` as a 1-D float array of per-image scores in [0, 1]; a sentence otherwise."""
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{what} needs one score per val image (a non-empty 1-D array), got shape {arr.shape}")
    if arr.dtype.kind not in "biuf" or not np.all((arr >= 0) & (arr <= 1)):
        raise ValueError(f"{what} needs per-image scores between 0 and 1 (1: correct, 0: wrong)")
    return arr.astype(float)


# --- McNemar's test --------------------------------------------------------------------------
@dataclass(frozen=True)
class McNemar:
    """McNemar's test of two classifiers on the same images: only the images where they
    disagree (one right, the other wrong) tell them apart."""

    n: int  # images both were scored on
    only_a: int  # images A got right and B wrong
    only_b: int
    statistic: float  # exact: the smaller discordant count; else chi-square with continuity correction
    p_value: float
    exact: bool  # the exact binomial test (fewer than 25 discordant images)
    names: tuple[str, str] = ("A", "B")

    @property
    def distinguishable(self) -> bool:
        return self.p_value < ALPHA

    @property
    def method(self) -> str:
        return ("exact binomial test on the discordant images" if self.exact
                else "chi-square with continuity correction")

    @property
    def sentence(self) -> str:
        """The result in words: a ranking only where the test supports one.

        >>> mcnemar([1] * 7 + [0] * 5 + [1] * 141, [0] * 7 + [1] * 5 + [1] * 141).sentence
        'not distinguishable on these 153 images (p = 0.77; 7 images only A got right, 5 only B)'
        """
        a, b = self.names
        counts = (f"{_p_text(self.p_value)}; {self.only_a:,} image{'s' * (self.only_a != 1)} only {a} got right, "
                  f"{self.only_b:,} only {b}")
        if not self.distinguishable:
            return f"not distinguishable on these {self.n:,} images ({counts})"
        better = a if self.only_a > self.only_b else b
        return f"{better} is more accurate on these {self.n:,} images ({counts})"


def mcnemar(a_correct: Sequence | np.ndarray, b_correct: Sequence | np.ndarray,
            names: tuple[str, str] = ("A", "B")) -> McNemar:
    """McNemar's test on paired per-image correctness (the same val images, in the same order),
    computed as statsmodels' ``contingency_tables.mcnemar``: the exact two-sided binomial test
    (p = 0.5) on the discordant images when there are fewer than 25 of them, else chi-square with
    continuity correction, (|b - c| - 1)² / (b + c) on 1 degree of freedom.

    >>> t = mcnemar([1, 1, 1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0, 1, 0])  # 6 images only A got right, 0 only B
    >>> t.only_a, t.only_b, t.exact, t.p_value  # 2 x (1/2)**6
    (6, 0, True, 0.03125)
    """
    a, b = (np.asarray(x) for x in (a_correct, b_correct))
    if a.shape != b.shape:
        raise ValueError(f"McNemar's test needs paired predictions: {names[0]} has {a.size:,} images and "
                         f"{names[1]} {b.size:,}; compare runs scored on the same val images (a sweep holds the "
                         "split fixed with --split-seed)")
    a, b = (_scores(x, "McNemar's test") > 0.5 for x in (a, b))
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    discordant = only_a + only_b
    if discordant == 0:  # they agree on every image: nothing tells them apart
        statistic, p, exact = 0.0, 1.0, True
    elif discordant < EXACT_BELOW:
        from scipy.stats import binomtest  # 1.5 s: only when used
        statistic, exact = float(min(only_a, only_b)), True
        p = binomtest(min(only_a, only_b), discordant, 0.5).pvalue
    else:
        from scipy.stats import chi2
        statistic, exact = (abs(only_a - only_b) - 1) ** 2 / discordant, False
        p = chi2.sf(statistic, 1)
    return McNemar(len(a), only_a, only_b, float(statistic), float(min(1.0, p)), exact, tuple(names))


def holm(p_values: Sequence[float], alpha: float = ALPHA) -> list[bool]:
    """Which of several tests stay significant after Holm's step-down correction: the k-th smallest
    p-value must lie below alpha / (m - k + 1), and the first that does not stops the rest. With
    many pairs some p-values fall below 0.05 by chance alone; this says which survive that.

    >>> holm([0.01, 0.04, 0.03, 0.005])  # 0.005 < 0.05/4, 0.01 < 0.05/3, 0.03 >= 0.05/2: stop
    [True, False, False, True]
    """
    m = len(p_values)
    kept = [False] * m
    for k, i in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        if p_values[i] >= alpha / (m - k):
            break
        kept[i] = True
    return kept


def _p_text(p: float) -> str:
    """A p-value to two figures, or below 0.001.

    >>> _p_text(0.4213), _p_text(0.0312), _p_text(0.00004)
    ('p = 0.42', 'p = 0.031', 'p < 0.001')
    """
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


# --- the front and the pick ------------------------------------------------------------------
def pareto_front(costs: Sequence[float], accuracies: Sequence[float]) -> list[int]:
    """Indices of the members no other member dominates (at most as costly and more accurate, or
    cheaper and at least as accurate), cheapest first; equal members are all kept.

    >>> pareto_front([9, 20, 41, 30], [0.90, 0.93, 0.94, 0.92])
    [0, 1, 2]
    """
    c, acc = np.asarray(costs, dtype=float), np.asarray(accuracies, dtype=float)
    if c.shape != acc.shape or c.ndim != 1:
        raise ValueError(f"pareto_front needs one cost per accuracy: {c.size} costs, {acc.size} accuracies")
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(acc))):
        raise ValueError("pareto_front needs known costs and accuracies: leave members without them out")
    dominated = ((c[None, :] <= c[:, None]) & (acc[None, :] > acc[:, None])) | \
                ((c[None, :] < c[:, None]) & (acc[None, :] >= acc[:, None]))
    kept = np.flatnonzero(~dominated.any(axis=1))
    return [int(i) for i in sorted(kept, key=lambda i: (c[i], -acc[i], i))]


@dataclass(frozen=True)
class Pick:
    index: int  # into the members given
    reason: str  # one sentence
    best: int  # the most accurate member, whose interval decides


def cheapest_adequate(members: Sequence, cost: str = "cpu_seconds") -> Pick:
    """The cheapest member (by ``cost``: "cpu_seconds" or "trainable_params") whose accuracy lies
    within the best member's interval. Members are `Member`s or `StrategyRow`s (anything with
    ``label``, ``accuracy``, ``interval`` and the cost); those without an accuracy are left out, and
    so are those without the cost from the choice (a best member without it still sets the bar)."""
    unit = _cost_unit(cost)
    measured = [i for i, m in enumerate(members) if m.accuracy is not None and m.interval is not None]
    if not measured:
        raise ValueError("no member has a val accuracy yet: the pick comes once a member has finished")
    best = max(measured, key=lambda i: (members[i].accuracy, -_cost_or_inf(members[i], cost)))
    low, high = members[best].interval
    priced = [i for i in measured if _cost(members[i], cost) is not None]
    if not priced:
        raise ValueError(f"no member has its {unit} recorded (runs from before ftlab measured it): "
                         "pick by trainable parameters instead")
    adequate = [i for i in priced if low <= members[i].accuracy <= high] or [best]
    pick = min(adequate, key=lambda i: (_cost(members[i], cost), -members[i].accuracy, i))
    return Pick(pick, _pick_reason(members, pick, best, cost), best)


def _pick_reason(members: Sequence, pick: int, best: int, cost: str) -> str:
    p, b = members[pick], members[best]
    low, high = b.interval
    noun = getattr(b, "noun", "member")  # a StrategyRow is a strategy over its seeds
    if pick == best:
        cheaper = "no cheaper member is" if _cost(b, cost) is not None else "no member with its cost recorded is"
        cheaper = cheaper.replace("member", noun)
        return (f"{p.label} is the pick: it is the most accurate {noun} ({p.accuracy:.3f}, interval "
                f"{low:.3f}-{high:.3f}) and {cheaper} within that interval, at {cost_text(_cost(p, cost), cost)}.")
    return (f"{p.label} is the pick: it is within the best {noun}'s ({b.label}, {b.accuracy:.3f}) interval "
            f"{low:.3f}-{high:.3f} at {p.accuracy:.3f}, at {cost_text(_cost(p, cost), cost)} against "
            f"{cost_text(_cost(b, cost), cost)}.")


def _cost_unit(cost: str) -> str:
    if cost not in COSTS:
        raise ValueError(f"unknown cost {cost!r}: choose one of {', '.join(COSTS)}")
    return COSTS[cost][0]


def _cost(member: object, cost: str) -> float | None:
    value = getattr(member, cost, None)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) and value > 0 else None


def _cost_or_inf(member: object, cost: str) -> float:
    value = _cost(member, cost)
    return math.inf if value is None else value


def cost_text(value: float | None, cost: str) -> str:
    """A cost in words: seconds to two figures below 10, whole above; parameters with separators.

    >>> cost_text(9.2, "cpu_seconds"), cost_text(41.4, "cpu_seconds"), cost_text(12800, "trainable_params")
    ('9.2 CPU-s', '41 CPU-s', '12,800 trainable parameters')
    """
    unit = COSTS[cost][1]
    if value is None:
        return f"unknown {unit}"
    if cost == "trainable_params":
        return f"{int(value):,} {unit}"
    return f"{value:.2g} {unit}" if value < 9.95 else f"{value:,.0f} {unit}"


# --- members: kept runs ----------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Member:
    """One run of a comparison, as the run store keeps it (`members`)."""

    run_id: str
    label: str  # the strategy, and its seed when the members have several seeds
    strategy: str  # as the config names it (top-2, linear-probe, ...; `explore.strategy_label`)
    seed: int | None
    trained_blocks: int | None  # from the summary (runs before it was recorded: None)
    trainable_params: int | None
    cpu_seconds: float | None  # None: not recorded
    best_val: float | None  # the best model's val accuracy (the mean of ``correct``)
    interval: tuple[float, float] | None  # 95% bootstrap interval of best_val over the val images
    correct: np.ndarray | None  # per val image: did the best model get it right (None: not stored)
    status: str
    frozen_check: str
    indices: tuple[int, ...] = ()  # the val images' indices in the data set: paired members share them
    depth: int | None = None  # backbone blocks that train (the freeze depth, `depth_of`)
    note: str = ""  # why there is no accuracy, when there is none

    @property
    def accuracy(self) -> float | None:
        return self.best_val


def members(store, runs: Iterable) -> list[Member]:
    """The members for ``runs`` (run ids, or `ftlab.runs.RunRecord`s) from ``store`` (a `RunStore`),
    in the order given. A run still training, failed, or kept before val labels were stored is a
    member without an accuracy, and its ``note`` says why."""
    records = [store.get(r) if isinstance(r, str) else r for r in runs]
    several_seeds = len({r.config.get("seed") for r in records}) > 1
    out = [_member(store, r, several_seeds) for r in records]
    return _distinct_labels(out)


def _member(store, record, several_seeds: bool) -> Member:
    config, summary = record.config, record.summary
    strategy = strategy_label(config.get("strategy", "?"), config.get("frozen_blocks"))
    seed = config.get("seed") if isinstance(config.get("seed"), int) else None
    label = strategy
    if several_seeds and seed is not None:
        label = f"{label} · seed {seed}"
    correct, indices, note = _correctness(record)
    trained = summary.get("trained_blocks")
    trained = trained if isinstance(trained, int) and not isinstance(trained, bool) else None
    best = float(correct.mean()) if correct is not None else _number(summary.get("best_val_accuracy"))
    params = summary.get("trainable_params")
    depth = depth_of(strategy, trained)
    if depth is None:  # full, gradual, lp-ft kept before trained_blocks was recorded: what the run moved
        depth = depth_of(strategy, None, _last_moved(store, record.id))
    return Member(
        run_id=record.id, label=label, strategy=strategy, seed=seed, trained_blocks=trained,
        trainable_params=params if isinstance(params, int) and params > 0 else None,
        cpu_seconds=_positive(summary.get("cpu_seconds")), best_val=best,
        interval=bootstrap_interval(correct) if correct is not None else None, correct=correct,
        status=record.status, frozen_check=str(summary.get("frozen_check") or ""), indices=indices,
        depth=depth, note=note)


def _correctness(record) -> tuple[np.ndarray | None, tuple[int, ...], str]:
    """Per-image correctness of the best model on val, its val indices, and why not when absent."""
    val = record.final.get("val") if isinstance(record.final, dict) else None
    if not isinstance(val, dict) or "predictions" not in val:
        if record.status == "running":
            return None, (), "still training"
        message = printable(str(record.message or "")).strip()
        return None, (), f"{record.status}: {message}" if message else f"{record.status}, no val predictions kept"
    if "labels" not in val:
        return None, (), "kept before runs stored their val labels: no per-image comparison"
    try:
        predictions, labels = np.asarray(val["predictions"], dtype=int), np.asarray(val["labels"], dtype=int)
        indices = tuple(int(i) for i in val.get("indices", []))
    except (TypeError, ValueError):
        return None, (), "its stored val predictions are unreadable"
    if predictions.shape != labels.shape or predictions.ndim != 1 or not predictions.size:
        return None, (), "its stored val predictions do not match its val labels"
    return predictions == labels, indices, ""


def _last_moved(store, run_id: str) -> dict:
    """The last epoch's per-block weight change (`EpochRecord.moved`), {} when not recorded."""
    try:
        epochs = store.epochs(run_id)
    except (KeyError, ValueError):
        return {}
    moved = [e.get("moved") for e in epochs if isinstance(e, dict) and isinstance(e.get("moved"), dict)]
    return moved[-1] if moved else {}


def depth_of(strategy: str, trained_blocks: int | None = None, moved: dict | None = None) -> int | None:
    """The freeze depth: how many backbone blocks train. The summary's ``trained_blocks`` when
    recorded; else linear-probe 0 and top-N N; else the pretrained blocks the run moved
    (``moved``: the last epoch's `EpochRecord.moved`); else None.

    >>> depth_of("top-2"), depth_of("linear-probe"), depth_of("full", 7)
    (2, 0, 7)
    >>> depth_of("full", moved={"stem": 0.01, "stage1": 0.02, "head": 0.9}), depth_of("full")
    (2, None)
    """
    if trained_blocks is not None:
        return trained_blocks
    try:
        parsed = Strategy.parse(strategy)
    except ValueError:
        parsed = None
    if parsed is not None and parsed.kind == "linear-probe":
        return 0
    if parsed is not None and parsed.kind == "top-N":
        return parsed.n
    if moved:
        return sum(1 for b in backbone_blocks(tuple(moved)) if (_number(moved[b]) or 0) > 0)
    return None


def _distinct_labels(ms: list[Member]) -> list[Member]:
    """Members whose labels clash (two runs of one strategy and seed) get their run id's tail."""
    seen: dict[str, int] = {}
    for m in ms:
        seen[m.label] = seen.get(m.label, 0) + 1
    return [m if seen[m.label] == 1 else _relabel(m, f"{m.label} ({m.run_id[-6:]})") for m in ms]


def _relabel(m: Member, label: str) -> Member:
    return replace(m, label=label)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) else None


def _positive(value: object) -> float | None:
    v = _number(value)
    return v if v is not None and v > 0 else None


# --- per strategy, across seeds --------------------------------------------------------------
@dataclass(frozen=True)
class StrategyRow:
    """A strategy's members together: the mean across seeds and its spread."""

    noun = "strategy"  # what the pick's sentence calls it (a class attribute, not a field)

    strategy: str
    label: str
    depth: int | None
    seeds: tuple[int | None, ...]
    runs: tuple[str, ...]
    accuracy: float  # mean best val accuracy across seeds
    std: float | None  # sample standard deviation across seeds (None: one seed)
    low: float  # min and max across seeds
    high: float
    interval: tuple[float, float] | None  # one seed: its interval; several on the same images: pooled
    trainable_params: float | None  # mean across seeds
    cpu_seconds: float | None

    @property
    def text(self) -> str:
        """The mean, its spread across seeds and their range (one seed: its interval).

        >>> StrategyRow("top-1", "top-1", 1, (0, 1), ("a", "b"), 0.9, 0.0141, 0.89, 0.91, None, None, None).text
        '0.900 ± 0.014 (2 seeds, 0.890-0.910)'
        """
        if self.std is None:
            interval = f", interval {self.interval[0]:.3f}-{self.interval[1]:.3f}" if self.interval else ""
            return f"{self.accuracy:.3f} (1 seed{interval})"
        return f"{self.accuracy:.3f} ± {self.std:.3f} ({len(self.seeds)} seeds, {self.low:.3f}-{self.high:.3f})"


def by_strategy(ms: Sequence[Member]) -> list[StrategyRow]:
    """One row per strategy over its members with an accuracy, in the order strategies first appear.
    With several seeds the pooled interval resamples the val images of the per-image mean
    correctness across seeds (when all were scored on the same images; else None)."""
    groups: dict[str, list[Member]] = {}
    for m in ms:
        if m.accuracy is not None and m.correct is not None:
            groups.setdefault(m.strategy, []).append(m)
    return [_row(strategy, group) for strategy, group in groups.items()]


def _row(strategy: str, group: list[Member]) -> StrategyRow:
    acc = np.array([m.accuracy for m in group])
    paired = all(m.indices == group[0].indices and len(m.correct) == len(group[0].correct) for m in group)
    if len(group) == 1:
        interval = group[0].interval
    else:
        interval = bootstrap_interval(np.mean([m.correct for m in group], axis=0)) if paired else None
    depths = {m.depth for m in group}
    return StrategyRow(
        strategy=strategy, label=strategy, depth=depths.pop() if len(depths) == 1 else None,
        seeds=tuple(m.seed for m in group), runs=tuple(m.run_id for m in group), accuracy=float(acc.mean()),
        std=float(acc.std(ddof=1)) if len(group) > 1 else None, low=float(acc.min()), high=float(acc.max()),
        interval=interval, trainable_params=_mean(m.trainable_params for m in group),
        cpu_seconds=_mean(m.cpu_seconds for m in group))


def _mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


# --- pairs -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    """Two members of the same seed, and McNemar's test between them when they are paired."""

    a: str  # labels
    b: str
    a_run: str
    b_run: str
    seed: int | None
    test: McNemar | None  # None: not scored on the same val images
    sentence: str

    @property
    def distinguishable(self) -> bool:
        return self.test is not None and self.test.distinguishable


def pairwise(ms: Sequence[Member]) -> list[Pair]:
    """McNemar's test between every two members with an accuracy and the same seed, paired on
    their val images: members whose stored val indices differ are said not to be paired."""
    done = [m for m in ms if m.correct is not None]
    pairs = []
    for a, b in combinations(done, 2):
        if a.seed != b.seed:
            continue
        if a.indices != b.indices or len(a.correct) != len(b.correct):
            pairs.append(Pair(a.label, b.label, a.run_id, b.run_id, a.seed, None,
                              f"{a.label} and {b.label} are not paired: they were scored on different val images "
                              "(a different split), so McNemar's test does not apply"))
            continue
        test = mcnemar(a.correct, b.correct, names=(a.label, b.label))
        pairs.append(Pair(a.label, b.label, a.run_id, b.run_id, a.seed, test,
                          f"{a.label} vs {b.label}: {test.sentence}"))
    return pairs


def pairs_text(pairs: Sequence[Pair]) -> list[str]:
    """A summary line, then one sentence per pair (the distinguishable ones first)."""
    tested = [p for p in pairs if p.test is not None]
    if not pairs:
        return ["No two finished members of the same seed to compare yet."]
    if not tested:
        return [f"None of the {len(pairs)} pairs was scored on the same val images, so none is compared.",
                *(p.sentence for p in pairs)]
    told = [p for p in tested if p.test.distinguishable]
    test = f"McNemar's test (p < {ALPHA:g})"
    if len(tested) == 1:
        head = (f"The pair is distinguishable by {test}." if told else f"The pair is not distinguishable by {test}: "
                "neither member is ranked above the other on these val images.")
    elif not told:
        head = (f"None of the {len(tested)} pairs is distinguishable by {test}: no member is ranked above another "
                "on these val images.")
    else:
        head = (f"{len(told)} of {len(tested)} pairs {'is' if len(told) == 1 else 'are'} distinguishable by {test}"
                + ("." if len(told) == len(tested) else "; the others are not ranked, whatever their accuracies."))
        survive = sum(holm([p.test.p_value for p in tested]))
        head += (f" Of {len(tested)} tests about {len(tested) * ALPHA:.2g} would fall below {ALPHA:g} by chance "
                 f"alone: {survive} {'stays' if survive == 1 else 'stay'} distinguishable after Holm's correction.")
    ordered = sorted(pairs, key=lambda p: (p.test is None, not p.distinguishable))
    return [head, *(p.sentence for p in ordered)]


def pair_seeds(pairs: Sequence[Pair]) -> list[int | None]:
    """The seeds that have pairs, in order (the page's choice of which matrix to show)."""
    return sorted({p.seed for p in pairs}, key=lambda s: (s is None, s or 0))


def pair_matrix(pairs: Sequence[Pair], seed: int | None = None) -> dict:
    """McNemar's p-values between the members of ``seed`` (default: the first pair's) as a square
    matrix for a heatmap: {"labels", "p" (None on the diagonal and where not paired), "text"}."""
    if seed is None and pairs:
        seed = pairs[0].seed
    chosen = [p for p in pairs if p.seed == seed]
    labels = list(dict.fromkeys(x for p in chosen for x in (p.a, p.b)))
    at = {label: i for i, label in enumerate(labels)}
    p_values: list[list[float | None]] = [[None] * len(labels) for _ in labels]
    text = [["—" if i == j else "" for j in range(len(labels))] for i in range(len(labels))]
    for pair in chosen:
        i, j = at[pair.a], at[pair.b]
        cell = "not paired" if pair.test is None else (
            _p_text(pair.test.p_value) if pair.test.distinguishable else f"n.d. ({_p_text(pair.test.p_value)})")
        for r, c in ((i, j), (j, i)):
            p_values[r][c] = None if pair.test is None else pair.test.p_value
            text[r][c] = cell
    return {"labels": labels, "p": p_values, "text": text, "seed": seed}


# --- what the page shows -----------------------------------------------------------------------
def pick_text(ms: Sequence, cost: str = "cpu_seconds") -> str:
    """The pick's sentence, or why there is none yet."""
    try:
        return cheapest_adequate(ms, cost).reason
    except ValueError as err:
        return _sentence(err)


def _sentence(err: Exception) -> str:
    text = str(err)
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def member_table(ms: Sequence[Member]) -> list[dict]:
    """One row per member for a table (the page draws it)."""
    return [{"member": m.label, "strategy": m.strategy, "seed": m.seed, "blocks trained": m.depth,
             "trainable params": m.trainable_params,
             "CPU-s": None if m.cpu_seconds is None else round(m.cpu_seconds, 1),
             "best val": None if m.best_val is None else round(m.best_val, 4),
             "95% interval": "" if m.interval is None else f"{m.interval[0]:.3f}-{m.interval[1]:.3f}",
             "val images": 0 if m.correct is None else len(m.correct), "status": m.status,
             "frozen check": m.frozen_check, "note": m.note, "run": m.run_id} for m in ms]


def strategy_table(rows: Sequence[StrategyRow]) -> list[dict]:
    """One row per strategy: mean ± std across seeds, min-max, the interval."""
    return [{"strategy": r.label, "blocks trained": r.depth, "seeds": len(r.seeds),
             "mean val": round(r.accuracy, 4), "std": None if r.std is None else round(r.std, 4),
             "min-max": f"{r.low:.3f}-{r.high:.3f}",
             "95% interval": "" if r.interval is None else f"{r.interval[0]:.3f}-{r.interval[1]:.3f}",
             "trainable params": None if r.trainable_params is None else int(r.trainable_params),
             "CPU-s": None if r.cpu_seconds is None else round(r.cpu_seconds, 1), "summary": r.text} for r in rows]


@dataclass(frozen=True)
class ChartData:
    """Points for the accuracy chart (`ui.charts.sweep_accuracy`), each a dict: label, strategy,
    x, accuracy, low, high, front (on the Pareto front along this x), pick."""

    points: list[dict]
    x_title: str
    log_x: bool
    note: str = ""  # members left off the chart and why
    front: list[int] = field(default_factory=list)  # indices into points, along x


def chart_points(ms: Sequence, x: str = "depth", cost: str = "cpu_seconds") -> ChartData:
    """The accuracy chart's data against ``x`` ("depth", "trainable_params", "cpu_seconds") for
    members or strategy rows: the Pareto front along that x, and the pick by ``cost``."""
    if x not in X_AXES:
        raise ValueError(f"unknown x {x!r}: choose one of {', '.join(X_AXES)}")
    x_title, log_x = X_AXES[x]
    shown, left = [], []
    for i, m in enumerate(ms):
        value = getattr(m, x, None) if x == "depth" else _cost(m, x)
        if m.accuracy is None or m.interval is None or value is None:
            left.append(m.label)
        else:
            shown.append((i, float(value)))
    try:
        pick = cheapest_adequate(ms, cost).index
    except ValueError:
        pick = None
    front = pareto_front([v for _, v in shown], [ms[i].accuracy for i, _ in shown]) if shown else []
    points = [{"label": ms[i].label, "strategy": getattr(ms[i], "strategy", ms[i].label), "x": v,
               "accuracy": ms[i].accuracy, "low": ms[i].interval[0], "high": ms[i].interval[1],
               "front": k in front, "pick": i == pick} for k, (i, v) in enumerate(shown)]
    note = f"Not on this chart (no accuracy or no {x_title} recorded): {', '.join(left)}." if left else ""
    return ChartData(points, x_title, log_x, note, front)


def report(ms: Sequence[Member], cost: str = "cpu_seconds") -> dict:
    """The comparison as JSON-ready data (`ftlab sweep --json`): the members, the strategies across
    seeds, the pick with its reason, and McNemar's test between every paired two of one seed."""
    rows = by_strategy(ms)
    several = len({m.seed for m in ms}) > 1
    try:
        pick = cheapest_adequate(rows if several else ms, cost)
        chosen = {"label": (rows if several else ms)[pick.index].label, "reason": pick.reason}
    except ValueError as err:
        chosen = {"label": None, "reason": _sentence(err)}
    return {"members": [{**row, "interval": list(m.interval) if m.interval else None}
                        for row, m in zip(member_table(ms), ms)],
            "strategies": strategy_table(rows), "pick": chosen, "cost": cost,
            "pairs": [{"a": p.a, "b": p.b, "seed": p.seed, "paired": p.test is not None,
                       "p_value": None if p.test is None else p.test.p_value,
                       "only_a": None if p.test is None else p.test.only_a,
                       "only_b": None if p.test is None else p.test.only_b,
                       "exact": None if p.test is None else p.test.exact,
                       "distinguishable": p.distinguishable, "sentence": p.sentence} for p in pairwise(ms)]}
