"""How balanced and diverse a data set's classes are: pure functions over counts.

Nothing here imports torch or streamlit, so the figures can be checked by hand.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# Past this max/min ratio an unweighted loss mostly learns the big classes.
IMBALANCE_WARN_RATIO = 3.0
# Normalised entropy above this reads as "diverse" for the learning-rate advice.
DIVERSE_NORMALISED_ENTROPY = 0.9


@dataclass(frozen=True)
class Distribution:
    """Figures for one set of class counts."""

    counts: tuple[int, ...]
    total: int
    entropy_nats: float
    entropy_bits: float
    normalised_entropy: float  # H / log K, 1.0 for perfectly balanced classes
    effective_classes: float  # e^H: how many equally common classes carry as much entropy
    imbalance_ratio: float  # largest / smallest non-empty class (inf when a class is empty)


def counts_of(labels: Sequence[int] | np.ndarray, num_classes: int) -> list[int]:
    """Count of each class label 0..num_classes-1.

    >>> counts_of([0, 2, 2, 1, 2], 4)
    [1, 1, 3, 0]
    """
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).tolist()


def entropy(counts: Sequence[int], base: float = math.e) -> float:
    """Shannon entropy H = -sum p_k log p_k of the class distribution (empty classes add 0).

    >>> round(entropy([5, 5]), 6) == round(math.log(2), 6)
    True
    >>> entropy([5, 5], base=2)
    1.0
    >>> entropy([7, 0])
    0.0
    """
    from scipy.stats import entropy as scipy_entropy  # 1 s to import: not for a command that lists names

    if sum(counts) == 0:
        return 0.0
    return float(scipy_entropy(np.asarray(counts, dtype=float), base=base))


def distribution(counts: Sequence[int]) -> Distribution:
    """Every figure for one set of class counts.

    >>> d = distribution([10, 10, 10, 10])
    >>> d.normalised_entropy, round(d.effective_classes, 6), d.imbalance_ratio
    (1.0, 4.0, 1.0)
    >>> distribution([90, 10]).imbalance_ratio
    9.0
    """
    counts = tuple(int(c) for c in counts)
    h = entropy(counts)
    k = len(counts)
    nonzero = [c for c in counts if c > 0]
    if not nonzero:
        ratio = float("nan")
    elif len(nonzero) < k:
        ratio = float("inf")
    else:
        ratio = max(nonzero) / min(nonzero)
    return Distribution(
        counts=counts,
        total=sum(counts),
        entropy_nats=h,
        entropy_bits=h / math.log(2),
        normalised_entropy=h / math.log(k) if k > 1 else 0.0,
        effective_classes=math.exp(h),
        imbalance_ratio=ratio,
    )


def long_tail_counts(counts: Sequence[int], ratio: float) -> list[int]:
    """Per-class counts after subsampling to a long tail whose max/min is ``ratio``.

    Classes are ranked by their current size and the k-th of K keeps
    ``n_top * ratio ** (-k / (K - 1))`` (an exponential tail, the shape of CIFAR-LT).
    ``n_top`` is the largest head count that no class runs short of, so the ratio holds
    exactly up to rounding; every class keeps at least one item.

    >>> long_tail_counts([100, 100, 100], 10)
    [100, 32, 10]
    >>> long_tail_counts([50, 100], 4)
    [25, 100]
    >>> long_tail_counts([30, 40], 1)
    [30, 30]
    """
    if ratio < 1:
        raise ValueError(f"imbalance ratio must be at least 1, got {ratio}")
    k = len(counts)
    order = sorted(range(k), key=lambda i: (-counts[i], i))
    decay = [ratio ** (-rank / (k - 1)) if k > 1 else 1.0 for rank in range(k)]
    n_top = min((counts[cls] / decay[rank] for rank, cls in enumerate(order)), default=0)
    out = [0] * k
    for rank, cls in enumerate(order):
        out[cls] = max(1, min(counts[cls], int(round(n_top * decay[rank]))))
    return out


@dataclass(frozen=True)
class Suggestion:
    """Advice that follows from the figures, with the reasoning; never applied silently."""

    title: str
    reason: str
    setting: Mapping[str, object]  # what the user would change, e.g. {"class_weighting": "balanced"}


def describe_setting(setting: Mapping[str, object]) -> str:
    """A suggestion's setting in words, for its button.

    >>> describe_setting({"lr_factor": 2.0, "epochs_factor": 0.75})
    'learning rate ×2, epochs ×0.75'
    >>> describe_setting({"strategy": "top-2", "flip": True})
    'strategy top-2, flip True'
    """
    words = {"lr_factor": "learning rate ×{:g}", "epochs_factor": "epochs ×{:g}"}
    return ", ".join(words[k].format(v) if k in words else f"{k.replace('_', ' ')} {v}" for k, v in setting.items())


def setting_values(setting: Mapping[str, object], config) -> dict[str, object]:
    """The option values a suggestion's ``setting`` gives ``config`` (a `TrainConfig`): factors
    applied (the learning rate to three figures) and kept inside each option's range, since a
    widget given a value outside its range silently shows its minimum (a learning rate of 8
    doubled became 1e-07).

    >>> from ftlab.config import TrainConfig
    >>> setting_values({"lr_factor": 2.0, "epochs_factor": 0.5, "flip": True}, TrainConfig(epochs=5))
    {'lr': 0.006, 'epochs': 2, 'flip': True}
    >>> setting_values({"lr_factor": 2.0}, TrainConfig(lr=8.0))
    {'lr': 10.0}
    """
    import dataclasses

    from ftlab.config import TrainConfig, resolved_lr

    meta = {f.name: f.metadata for f in dataclasses.fields(TrainConfig)}

    def within(name: str, value):
        return type(value)(min(max(value, meta[name]["lo"]), meta[name]["hi"]))

    values: dict[str, object] = {}
    for name, value in setting.items():
        if name == "lr_factor":
            values["lr"] = within("lr", float(f"{resolved_lr(config) * value:.3g}"))
        elif name == "epochs_factor":
            values["epochs"] = within("epochs", round(config.epochs * value))
        else:
            values[name] = value
    return values


def suggestions(train_counts: Sequence[int]) -> list[Suggestion]:
    """What the class distribution of the training split suggests.

    >>> [s.setting for s in suggestions([100, 10])][0]
    {'class_weighting': 'balanced'}
    >>> any("learning rate" in s.title for s in suggestions([50] * 10))
    True
    """
    d = distribution(train_counts)
    out: list[Suggestion] = []
    if d.imbalance_ratio > IMBALANCE_WARN_RATIO:
        out.append(Suggestion(
            title="Weight the loss by class (or sample classes evenly)",
            reason=(f"The largest class is {d.imbalance_ratio:.1f}× the smallest. An unweighted "
                    "loss is lowest when the model favours the big classes, so small classes get "
                    "few correct predictions; weighting each class by 1/count evens that out."),
            setting={"class_weighting": "balanced"},
        ))
    if d.normalised_entropy >= DIVERSE_NORMALISED_ENTROPY and len(train_counts) > 2:
        out.append(Suggestion(
            title="A larger learning rate and fewer epochs should do",
            reason=(f"Normalised entropy is {d.normalised_entropy:.2f}: the classes are evenly "
                    "represented, so each batch's gradient points in a representative direction "
                    "and tolerates larger steps; a diverse set also overfits later, so fewer "
                    "epochs reach the best validation accuracy."),
            setting={"lr_factor": 2.0, "epochs_factor": 0.75},
        ))
    elif d.normalised_entropy < DIVERSE_NORMALISED_ENTROPY:
        out.append(Suggestion(
            title="Keep the learning rate small and watch the validation curve",
            reason=(f"Normalised entropy is {d.normalised_entropy:.2f}: few classes dominate, so "
                    "batch gradients are noisy estimates for the rare classes; large steps chase "
                    "the common ones, and the model memorises the rare examples quickly."),
            setting={"lr_factor": 0.5},
        ))
    if min(train_counts, default=0) < 10:
        out.append(Suggestion(
            title="Prefer a linear probe or few trainable blocks",
            reason=(f"The smallest class has {min(train_counts)} training images. Training many "
                    "parameters on so few examples overfits; frozen pretrained features generalise."),
            setting={"strategy": "linear-probe"},
        ))
    return out
