"""The learning-rate finder (Smith 2015, "Cyclical learning rates for training neural networks";
fastai's ``lr_find``): train for a few hundred steps while the learning rate grows exponentially
from tiny to huge, record the loss at each rate, and read a good rate off the curve.

It trains exactly what a run of the same options trains: it builds the run's `_Trainer`, whose
``_setup`` makes the data, the model, the freeze plan, the objective, the optimiser and its
param groups, and whose ``_inputs`` gives the cached features of the frozen prefix where the
strategy allows them. Every step goes through `engine.train_one_epoch`, the run's one optimiser
step path. The ramp scales all param groups together, so discriminative rates (``lr_decay``)
keep their ratios and the rate it reports is the head's: the ``lr`` option.

``at_epoch`` E picks the blocks that train: those the run's freeze plan trains in epoch E (a
gradual run's unfrozen by then; lp-ft's every block after its last possible probe epoch, see
`frozen_at`), ramped from the run's initial weights — the pretrained backbone and a new head, as
the run starts; no epoch is trained before the ramp, so E changes which blocks train, not where
their weights stand.

The finder leaves no trace: the model's weights and buffers, its trainability and BatchNorm rule,
the optimiser's and the scheduler's state and the random state are restored when it ends, however
it ends, and nothing is written to the run store.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from ftlab import cache, config as cfg, engine, events, freeze
from ftlab.jobs import Background
from ftlab.config import TrainConfig
from ftlab.errors import NonFiniteLoss, StopRequested
from ftlab.runs import RunStore
from ftlab.explore_options import RULE, FinderOptions  # noqa: F401

BETA = 0.98  # fastai's smoothing of the loss: the curve of a few hundred noisy batches must be read
DIVERGED = 4.0  # stop once the smoothed loss is this many times its minimum: past that nothing is learnt
LR_LO, LR_HI = (next(f for f in cfg.options() if f.name == "lr").metadata[k] for k in ("lo", "hi"))


def ramp(start_lr: float, end_lr: float, steps: int) -> np.ndarray:
    """``steps`` rates from ``start_lr`` to ``end_lr``, each the last times the same factor.

    >>> ramp(1e-3, 1e-1, 3).tolist()
    [0.001, 0.01, 0.1]
    """
    return np.geomspace(start_lr, end_lr, steps)


def smooth(losses: list[float] | np.ndarray, beta: float = BETA) -> np.ndarray:
    """The exponentially weighted mean of the losses so far, bias-corrected as fastai does: the
    running mean starts at 0, so each value is divided by 1 - beta^(i+1).

    >>> smooth([2.0, 2.0, 2.0]).round(6).tolist()
    [2.0, 2.0, 2.0]
    >>> smooth([1.0, 3.0], beta=0.5).tolist()  # (0.5*1)/0.5, (0.25*1 + 0.5*3)/0.75
    [1.0, 2.3333333333333335]
    """
    out, mean = [], 0.0
    for i, loss in enumerate(losses):
        mean = beta * mean + (1 - beta) * loss
        out.append(mean / (1 - beta ** (i + 1)))
    return np.array(out)


def has_diverged(smoothed: float, lowest: float) -> bool:
    """The smoothed loss is past ``DIVERGED`` times its minimum (or not a number). Written as the
    distance above the minimum, 3 x |minimum|, so a loss that can go negative (learned task
    weights) is judged the same way.

    >>> has_diverged(4.1, 1.0), has_diverged(3.9, 1.0), has_diverged(float("nan"), 1.0)
    (True, False, True)
    """
    return not math.isfinite(smoothed) or smoothed - lowest > (DIVERGED - 1) * abs(lowest)


@dataclass(frozen=True)
class Suggestion:
    rate: float | None  # `RULE`'s rate, within the lr option's range; None when the loss never fell
    minimum: float | None  # the rate at the lowest smoothed loss
    steepest: float | None  # the rate where the smoothed loss fell fastest (per decade of rate), before its minimum
    note: str  # "", why there is no suggestion, or what to be wary of in it


def suggest(lrs: list[float] | np.ndarray, smoothed: list[float] | np.ndarray) -> Suggestion:
    """`RULE` applied to a smoothed loss curve; the steepest descent is reported beside it.

    >>> s = suggest([1e-4, 1e-3, 1e-2, 1e-1, 1.0], [2.0, 1.9, 1.0, 0.5, 3.0])
    >>> round(s.rate, 6), s.minimum, s.steepest
    (0.01, 0.1, 0.001)
    """
    lrs, smoothed = np.asarray(lrs, float), np.asarray(smoothed, float)
    if len(lrs) < 2:
        return Suggestion(None, None, None, "the ramp ended before two steps: nothing to read off")
    best = int(np.nanargmin(smoothed))
    if best == 0:
        return Suggestion(None, float(lrs[0]), None, "the smoothed loss never fell below its first value: start "
                          "the ramp lower (start_lr), or check the data and the options")
    steepest, skip = None, max(1, len(lrs) // 10)  # as fastai skips the start: a mean of a few batches is noise
    if best - skip >= 2:  # the slope over log10(rate) of the falling part
        slope = np.gradient(smoothed[skip:best + 1], np.log10(lrs[skip:best + 1]))
        steepest = float(lrs[skip + int(np.argmin(slope))])
    rate = float(min(max(lrs[best] / 10, LR_LO), LR_HI))
    # the lowest loss at the last rate: the ramp never reached the blow-up that the rule reads the rate from
    end = "the smoothed loss was still at its lowest at the last rate: raise end_lr to see where it rises" \
        if best == len(lrs) - 1 else ""
    return Suggestion(rate, float(lrs[best]), steepest, end)


@dataclass(frozen=True)
class LRFindResult:
    """One ramp: the head's rate, the loss and the smoothed loss at each step taken."""

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    smoothed: tuple[float, ...]
    suggestion: float | None  # the rate `rule` picks (None: see `note`)
    rule: str
    minimum_lr: float | None
    steepest_lr: float | None
    steps: int  # steps taken
    planned_steps: int
    start_lr: float
    end_lr: float
    stopped: str  # completed | diverged | non_finite | user
    why: str  # where and why the ramp ended: "The ramp " + why is a sentence
    note: str  # "", why there is no suggestion, or what to be wary of in it
    at_epoch: int
    strategy: str
    trained_blocks: tuple[str, ...]
    inputs: str  # what the trained blocks read: cached features of the frozen ones, or the images
    group_rates: dict  # block -> its rate as a fraction of the head's (lr_decay), for the blocks that train
    seconds: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lrs"], d["losses"], d["smoothed"] = list(self.lrs), list(self.losses), list(self.smoothed)
        d["trained_blocks"] = list(self.trained_blocks)
        return d

    def lines(self) -> list[str]:
        """What the CLI prints."""
        shown = "none" if self.suggestion is None else f"{self.suggestion:.3g}"
        out = [f"suggested learning rate: {shown}" + (f" ({self.note})" if self.note else ""),
               f"rule: {self.rule}"]
        if self.minimum_lr is not None:
            out.append(f"lowest smoothed loss at {self.minimum_lr:.3g}"
                       + ("" if self.steepest_lr is None else f"; steepest descent at {self.steepest_lr:.3g}"))
        out.append(f"the ramp {self.why}; {self.strategy} at epoch {self.at_epoch} trains "
                   f"{', '.join(self.trained_blocks)} ({self.inputs}); {self.seconds:.1f} s")
        return out


# --- the ramp on a run's trainer --------------------------------------------------------------

class _Ramp:
    """Sets every param group's rate to the ramp's, times the group's share of the head's rate.
    `train_one_epoch` calls ``step()`` after each optimiser step, as it would a scheduler's."""

    def __init__(self, optimizer: torch.optim.Optimizer, lrs: np.ndarray):
        self.optimizer, self.lrs, self.done = optimizer, lrs, 0
        # a scheduler may have moved `lr` already (one-cycle starts low): its `initial_lr` is the base rate
        base = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        self.shares = [b / base[-1] for b in base]  # the last group is the head's
        self._set(0)

    def _set(self, i: int) -> None:
        for group, share in zip(self.optimizer.param_groups, self.shares):
            group["lr"] = float(self.lrs[i]) * share

    def step(self) -> None:
        self.done += 1
        if self.done < len(self.lrs):
            self._set(self.done)


@dataclass
class _Snapshot:
    """What the finder changes, copied before it starts."""

    state: dict
    outside: list  # (parameter, copy): the optimiser's parameters outside the model (learned task weights)
    grads: list
    flags: list
    frozen: frozenset
    bn_frozen: bool
    training: bool
    optimizer: dict
    scheduler: dict | None

    @classmethod
    def take(cls, trainer: "engine._Trainer") -> "_Snapshot":
        model = trainer.model
        inside = {id(p) for p in model.parameters()}
        params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
        every = list(model.parameters()) + params
        return cls({k: v.detach().clone() for k, v in model.state_dict().items()},
                   [(p, p.detach().clone()) for p in params if id(p) not in inside],
                   [(p, None if p.grad is None else p.grad.detach().clone()) for p in every],
                   [p.requires_grad for p in model.parameters()], model.frozen_blocks, model.bn_frozen, model.training,
                   copy.deepcopy(trainer.optimizer.state_dict()),
                   copy.deepcopy(trainer.scheduler.state_dict()) if trainer.scheduler is not None else None)

    def restore(self, trainer: "engine._Trainer") -> None:
        model = trainer.model
        with torch.no_grad():
            model.load_state_dict(self.state)
            for p, saved in self.outside:
                p.copy_(saved)
        freeze.apply_freeze(model, self.frozen, self.bn_frozen)
        for p, flag in zip(model.parameters(), self.flags):
            p.requires_grad_(flag)
        for p, grad in self.grads:
            p.grad = grad
        model.train(self.training)
        trainer.optimizer.load_state_dict(copy.deepcopy(self.optimizer))
        if self.scheduler is not None:
            trainer.scheduler.load_state_dict(self.scheduler)


def frozen_at(plan: freeze.FreezePlan, config: TrainConfig, epoch: int) -> frozenset[str]:
    """The blocks frozen in ``epoch`` (0-based) of a run of ``config``, as far as they are known before it
    trains: lp-ft switches when its probe has converged, which only training tells; the finder takes its
    latest switch (after ``lp_epochs``, 0: half the epochs), so the epochs after it fine-tune every block."""
    if plan.strategy == "lp-ft" and plan.switch_at is None:
        plan = replace(plan, switch_at=config.lp_epochs or max(1, config.epochs // 2))
    return plan.frozen_at(epoch)


def ramp_lr(trainer: "engine._Trainer", options: FinderOptions = FinderOptions(), *,
            say: Callable[[str], None] = lambda m: None,
            should_stop: Callable[[], bool] = lambda: False) -> LRFindResult:
    """The ramp on a trainer that ``_setup`` has prepared, with the freeze plan of
    ``options.at_epoch``; the trainer is left as it was found (see the module's docstring)."""
    c, began = trainer.config, time.perf_counter()
    lrs = ramp(options.start_lr, options.end_lr, options.steps)
    epoch = options.at_epoch - 1
    snapshot = _Snapshot.take(trainer)
    cuda = [trainer.device.index or 0] if trainer.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):  # the run after it draws the batches it would have drawn
            frozen = frozen_at(trainer.plan, c, epoch)
            freeze.apply_freeze(trainer.model, frozen, c.bn_frozen)
            inputs = trainer._inputs(epoch)
            trainer._teach_view(epoch, inputs)
            with engine._threads_for(trainer.model, inputs.start):
                precision = trainer._training_precision(inputs)
                scaler = copy.deepcopy(trainer.scaler.state_dict()) if trainer.scaler is not None else None
                try:
                    record = _run_ramp(trainer, inputs, lrs, precision, say, should_stop)
                finally:
                    if scaler is not None:
                        trainer.scaler.load_state_dict(scaler)
    finally:
        snapshot.restore(trainer)
    losses, (stopped, why) = record
    trained = tuple(b for b in trainer.plan.blocks if b not in frozen)
    return _result(lrs[:len(losses)], losses, stopped, why, options, trainer, trained, inputs,
                   time.perf_counter() - began)


def _run_ramp(trainer, inputs, lrs: np.ndarray, precision, say, should_stop) -> tuple[list[float], tuple[str, str]]:
    """The steps of the ramp; the losses of those taken and (why it ended, in a word and a sentence)."""
    c, n = trainer.config, len(trainer.data.train.labels)
    losses, lowest, ended = [], math.inf, []
    ema = 0.0

    def order() -> Iterator[torch.Tensor]:
        generator = torch.Generator().manual_seed(c.seed)
        while True:  # as many passes over the training split as the ramp's steps take
            for idx in engine.batches(n, c.batch_size, generator=generator, sample_weights=trainer.sample_weights):
                if len(losses) >= len(lrs) or ended:
                    return
                yield idx

    def on_step(step: int, loss: float, seen: int) -> None:
        nonlocal ema, lowest
        losses.append(loss)
        ema = BETA * ema + (1 - BETA) * loss
        smoothed = ema / (1 - BETA ** len(losses))
        lowest = min(lowest, smoothed)
        if has_diverged(smoothed, lowest):
            ended.append(("diverged", f"stopped at step {step} of {len(lrs)} (rate {lrs[step - 1]:.3g}): the smoothed "
                                      f"loss passed {DIVERGED:g} times its minimum"))
        if step % 20 == 0:
            say(f"learning-rate finder: step {step} of {len(lrs)}, rate {lrs[step - 1]:.3g}, loss {loss:.3f}")

    try:
        engine.train_one_epoch(trainer.model, inputs.train, trainer.labels["train"], order(),
                               optimizer=trainer.optimizer, objective=trainer.objective, prep=inputs.prep,
                               scheduler=_Ramp(trainer.optimizer, lrs), precision=precision, scaler=trainer.scaler,
                               grad_clip=c.grad_clip, start=inputs.start, should_stop=should_stop, on_step=on_step)
    except NonFiniteLoss as err:
        at = len(losses)
        return losses, ("non_finite", f"stopped at step {at + 1} of {len(lrs)} (rate {lrs[at]:.3g}): {err}")
    except StopRequested:
        return losses, ("user", f"was stopped by the user after {len(losses)} of {len(lrs)} steps")
    return losses, ended[0] if ended else ("completed", f"ran all {len(lrs)} steps, {lrs[0]:.3g} to {lrs[-1]:.3g}")


def _result(lrs, losses, stopped, why, options, trainer, trained, inputs, seconds) -> LRFindResult:
    smoothed = smooth(losses)
    s = suggest(lrs, smoothed)
    groups = trainer.optimizer.param_groups
    head = groups[-1].get("initial_lr", groups[-1]["lr"])
    rates = {g["name"]: g.get("initial_lr", g["lr"]) / head for g in groups if g.get("name") in trained}
    what = (f"on cached features of {', '.join(trainer.model.block_names[:inputs.start])}" if inputs.start
            else "on the images, every block running")
    return LRFindResult(tuple(map(float, lrs)), tuple(map(float, losses)), tuple(map(float, smoothed)), s.rate, RULE,
                        s.minimum, s.steepest, len(losses), options.steps, options.start_lr, options.end_lr,
                        stopped, why, s.note, options.at_epoch, trainer.config.strategy, trained, what, rates, seconds)


# --- from options to a result ----------------------------------------------------------------

class _ReadOnly:
    """The run store for reading (a teacher, the options' checks); the finder keeps no run, so
    the one write a trainer's setup makes (the split of its record) goes nowhere."""

    def __init__(self, store: RunStore):
        self._store = store

    def set_data(self, run_id: str, classes: list, split: dict) -> None:
        pass

    def __getattr__(self, name: str):
        if name in ("create", "add_epoch", "finish", "save_checkpoint", "delete", "move_aside"):
            raise AttributeError(f"the learning-rate finder keeps no run: {name} is not for it")
        return getattr(self._store, name)


class _Flag:
    """``should_stop`` where the trainer asks a `threading.Event`."""

    def __init__(self, should_stop: Callable[[], bool]):
        self.is_set = should_stop


def prepared_trainer(config: TrainConfig, store: RunStore | None = None, *, say: Callable[[str], None] = lambda m: None,
                     should_stop: Callable[[], bool] = lambda: False,
                     shared_cache: cache.FeatureCache = cache.SHARED) -> "engine._Trainer":
    """A run's trainer, set up as the run would be (data, model, plan, objective, optimiser),
    reading ``store`` but writing nothing to it."""
    def emit(event: events.Event) -> None:
        if isinstance(event, events.Preparing):
            say(event.message)

    from ftlab.records import RunSummary

    trainer = engine._Trainer(config, _ReadOnly(store or RunStore()), emit, _Flag(should_stop), "lr-find",
                              shared_cache)
    trainer.device = engine.pick_device(config.device)
    trainer.summary = RunSummary("lr-find", config.dataset, config.backbone, config.strategy,
                                 device=trainer.device.type)
    trainer._setup()
    return trainer


def find_lr(config: TrainConfig, options: FinderOptions = FinderOptions(), *, store: RunStore | None = None,
            say: Callable[[str], None] = lambda m: None, should_stop: Callable[[], bool] = lambda: False,
            shared_cache: cache.FeatureCache = cache.SHARED) -> LRFindResult:
    """The learning-rate finder for ``config``: its rule is `RULE`. Raises ValueError (every
    problem with the options, in words) before any work, `ftlab.data.DataError` for the data;
    a user's stop ends the ramp early with the steps taken so far."""
    store = store or RunStore()
    problems = cfg.validate(config, store=store) + options.problems(config)
    if problems:
        raise ValueError("the learning-rate finder cannot start: " + " ".join(problems))
    try:
        trainer = prepared_trainer(config, store, say=say, should_stop=should_stop, shared_cache=shared_cache)
        return ramp_lr(trainer, options, say=say, should_stop=should_stop)
    except StopRequested:  # while the data were read or the features cached
        return _nothing(config, options, "was stopped by the user before it began")


def _nothing(config: TrainConfig, options: FinderOptions, why: str) -> LRFindResult:
    return LRFindResult((), (), (), None, RULE, None, None, 0, options.steps, options.start_lr, options.end_lr,
                        "user", why, "the ramp did not run", options.at_epoch, config.strategy, (), "nothing ran",
                        {}, 0.0)


class Finder(Background):
    """`find_lr` in a daemon thread, for the app (`ftlab.jobs.Background`): ``message`` says what it
    does now; when it is done, ``result`` holds its result or ``error`` why it has none. ``stop()``
    ends the ramp within one step (the steps taken so far are the result)."""

    def __init__(self, config: TrainConfig, options: FinderOptions = FinderOptions(), store: RunStore | None = None):
        super().__init__(lambda say, stop: find_lr(config, options, store=store, say=say, should_stop=stop.is_set),
                         "lr-find", batch_size=config.batch_size)
        self.config, self.options, self.store = config, options, store

    @property
    def running(self) -> bool:
        return self.alive()
