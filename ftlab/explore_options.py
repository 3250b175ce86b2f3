"""The options of the probe and the learning-rate finder, and their words, without torch: the CLI builds
its flags from them at every start (`python -m ftlab --help` imports no torch). `ftlab.probe` and
`ftlab.lr_find` re-export them."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np

from ftlab.config import TrainConfig

# the TrainConfig fields the probe reads: the data, the backbone, and how the forward pass runs
CONFIG_FIELDS = ("dataset", "val_fraction", "test_fraction", "imbalance_ratio", "shapes_classes",
                 "shapes_per_class", "shapes_noise", "seed", "split_seed", "backbone", "weights", "image_size",
                 "batch_size", "device", "precision", "fast_prefix")


def _opt(default, help: str, *, lo: float | None = None, hi: float | None = None):
    return field(default=default, metadata={"help": help, "lo": lo, "hi": hi})


@dataclass(frozen=True)
class ProbeOptions:
    """The probe's own options (the data and model are a `TrainConfig`'s; see ``CONFIG_FIELDS``)."""

    per_class: str = _opt("2,5,10,20,all", "data-efficiency: training images per class, a comma list of whole "
                          "numbers and/or all (empty: no data-efficiency probe)")
    at: str = _opt("", "data-efficiency: the block boundary to probe at (empty: the last backbone block)")
    draws: int = _opt(5, "data-efficiency: seeded draws of the training subset for each number of images per "
                      "class (all: one)", lo=1, hi=100)
    c: float = _opt(1.0, "the logistic regression's inverse regularisation strength C (smaller: stronger)",
                    lo=1e-6, hi=1e6)
    resamples: int = _opt(2000, "bootstrap resamples of the val images for each 95% interval", lo=100, hi=100_000)


def parse_per_class(text: str) -> tuple[int | None, ...]:
    """``"2,5,all"`` -> ``(2, 5, None)``: ascending, each once, None (all images) last.

    >>> parse_per_class("10, 2,all,2")
    (2, 10, None)
    >>> parse_per_class("")
    ()
    """
    ks, everything = set(), False
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        if part == "all":
            everything = True
        elif part.isdigit() and int(part) >= 1:
            ks.add(int(part))
        else:
            raise ValueError(f"per_class takes whole numbers of at least 1 and all, separated by commas, e.g. "
                             f"2,5,10,20,all (got {part!r}).")
    return tuple(sorted(ks)) + ((None,) if everything else ())


def option_problems(options: ProbeOptions) -> list[str]:
    """Every problem with ``options``, each a sentence that says what is allowed."""
    problems = []
    for f in fields(options):
        value, lo, hi = getattr(options, f.name), f.metadata["lo"], f.metadata["hi"]
        if lo is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                   and np.isfinite(value) and lo <= value <= hi):
            problems.append(f"{f.name} must be between {lo:g} and {hi:g} (got {value!r}).")
    try:
        parse_per_class(options.per_class)
    except ValueError as err:
        problems.append(str(err))
    return problems



RULE = ("The suggested rate is one tenth of the rate at which the smoothed loss was lowest: at the minimum "
        "the loss is about to blow up, and a tenth of it is still on the steep, falling part of the curve.")


AT_EPOCH_HELP = ("ramp the blocks that train in this epoch (1: the first), starting from the run's initial weights "
                 "(the pretrained backbone and a new head: no epoch is trained first): gradual, the blocks unfrozen by "
                 "then; lp-ft, the head alone up to its last probe epoch (lp_epochs, 0: half the epochs), every block "
                 "after it, whose rate the run reaches as lr x lp_ft_factor")


@dataclass(frozen=True)
class FinderOptions:
    """The ramp: ``steps`` rates from ``start_lr`` to ``end_lr``, spaced evenly on a log scale,
    training the blocks that train in epoch ``at_epoch`` (1-based, as epochs are shown) from the
    run's initial weights (`AT_EPOCH_HELP`)."""

    steps: int = field(default=100, metadata={"help": "steps of the ramp (batches; the training split is cycled "
                                                      "through as often as it takes)", "lo": 10, "hi": 2000})
    start_lr: float = field(default=1e-7, metadata={"help": "the ramp's first learning rate", "lo": 1e-10, "hi": 1.0})
    end_lr: float = field(default=10.0, metadata={"help": "the ramp's last learning rate", "lo": 1e-6, "hi": 100.0})
    at_epoch: int = field(default=1, metadata={"help": AT_EPOCH_HELP, "lo": 1, "hi": 1000})

    def problems(self, config: TrainConfig | None = None) -> list[str]:
        """Every problem with the options, each a sentence saying what is allowed."""
        out, bad = [], set()
        for f in self.__dataclass_fields__.values():
            value, lo, hi = getattr(self, f.name), f.metadata["lo"], f.metadata["hi"]
            kind = int if f.type in ("int", int) else float
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
                out.append(f"{f.name} must be {'a whole number' if kind is int else 'a number'} (got {value!r}).")
                bad.add(f.name)
            elif not (math.isfinite(value) and lo <= value <= hi):
                got = value if kind is int else f"{value:g}"
                out.append(f"{f.name} must be between {lo:g} and {hi:g} (got {got}).")
                bad.add(f.name)
        if not bad & {"start_lr", "end_lr"} and self.start_lr >= self.end_lr:
            out.append(f"start_lr ({self.start_lr:g}) must be below end_lr ({self.end_lr:g}): the ramp rises.")
        if "at_epoch" not in bad and config is not None and self.at_epoch > config.epochs:
            out.append(f"at_epoch ({self.at_epoch}) is after the run's last epoch ({config.epochs}): choose 1 to "
                       f"{config.epochs}, or more epochs.")
        return out
