"""What training minimises. An objective takes the model's outputs and the batch and returns
the loss and the figures it counted on the batch; the loop calls it and never looks inside,
so another objective needs no change to the loop: `CrossEntropy`, `MultiTask` (a head per
task), `Distillation` (from a teacher's logits) and `L2SP` (a pull toward the pretrained
weights, over any of them).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ftlab.config import L2SP_MAX
from ftlab.tasks import MAX_WEIGHT

# Uncertainty weighting learns s_t = log sigma_t^2, weighting its task by exp(-s_t). Its optimum is
# exp(-s_t) = 1 / (2 CE_t): a task learnt to a cross-entropy near 0 would get a weight without bound
# (and exp overflows to inf past s = -88), so s_t is kept where the weights stay within the fixed ones'
# range, 1/MAX_WEIGHT to MAX_WEIGHT.
LOG_VAR_LIMIT = math.log(MAX_WEIGHT)


@dataclass(frozen=True)
class Batch:
    """One training batch on the device: the inputs of the first block that runs, the labels,
    and the images' places in the training split (for objectives that look up per-image data)."""

    inputs: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor


@dataclass(frozen=True)
class Step:
    """An objective's result on one batch: the loss to minimise and what it counted (sums over
    the batch, so that the loop adds them up over an epoch). ``counts["correct"]`` gives the
    training accuracy; each ``counts["loss:NAME"]`` (a part of the loss times the batch's
    images) becomes the epoch's mean of that part, drawn as its own curve."""

    loss: torch.Tensor
    counts: dict[str, float]


class CrossEntropy:
    """Cross-entropy on the class labels, with optional label smoothing and class weights;
    it counts the correct predictions, from which the loop reports the training accuracy."""

    def __init__(self, class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0):
        self.class_weights, self.label_smoothing = class_weights, label_smoothing

    def __call__(self, logits: torch.Tensor, batch: Batch) -> Step:
        logits = logits.float()
        loss = F.cross_entropy(logits, batch.labels, weight=self.class_weights, label_smoothing=self.label_smoothing)
        return Step(loss, {"correct": (logits.argmax(1) == batch.labels).sum().item()})


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """N / (K * n_k): each class contributes equally to the loss."""
    counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
    return len(labels) / (num_classes * counts)


class Objective(Protocol):
    """Anything the loop can minimise: ``objective(outputs, batch) -> Step``."""

    def __call__(self, outputs: torch.Tensor, batch: Batch) -> Step: ...


class MultiTask:
    """Several tasks on one backbone: the model's output holds each task's logits side by side
    (``sizes`` columns each, `ftlab.edits.TaskHeads`) and ``batch.labels`` one column of labels
    per task. Each task has its own cross-entropy (``losses``, with its class weights and
    smoothing); the loss combines them:

    - ``fixed``: Σ wₜ·CEₜ with the user's weights;
    - ``uncertainty`` (Kendall, Gal and Cipolla 2018): Σ exp(−sₜ)·CEₜ + sₜ/2 with a learned
      sₜ = log σₜ² per task, so a task the model finds noisy (large CE) is weighted down; the
      sₜ/2 term keeps the weights from all falling to zero. Its ``parameters()`` go into the
      optimiser; ``weights()`` are the exp(−sₜ) the loss uses now. sₜ is kept within
      ±`LOG_VAR_LIMIT` (projected back before each use), so that a task learnt to a cross-entropy
      near 0 cannot take a weight that overflows the loss.

    It counts ``loss:<task>`` (each task's unweighted CE), ``correct`` of the first task (the
    run's training accuracy) and ``correct:<task>`` of every task.
    """

    def __init__(self, names: tuple[str, ...], sizes: tuple[int, ...], losses: list[CrossEntropy], *,
                 weighting: str = "fixed", weights: tuple[float, ...] | None = None,
                 device: torch.device | str = "cpu"):
        self.names, self.sizes, self.losses, self.weighting = tuple(names), tuple(sizes), losses, weighting
        self.fixed = torch.tensor(weights if weights is not None else [1.0] * len(names), device=device)
        # s_t = log sigma_t^2, 0 at the start: every task weighted 1, as fixed weighting starts
        # a Parameter, so that under torchrun DDP all-reduces its gradient with the model's
        self.log_vars = torch.nn.Parameter(torch.zeros(len(names), device=device),
                                           requires_grad=weighting == "uncertainty")

    def parameters(self) -> list[torch.Tensor]:
        """What the optimiser trains beside the model: the log-variances of uncertainty weighting."""
        return [self.log_vars] if self.weighting == "uncertainty" else []

    def weights(self) -> dict[str, float]:
        """Each task's weight in the loss now (the next batch's, where the last step left the bounds)."""
        w = torch.exp(-self.log_vars.detach().clamp(-LOG_VAR_LIMIT, LOG_VAR_LIMIT)) \
            if self.weighting == "uncertainty" else self.fixed
        return {name: float(v) for name, v in zip(self.names, w)}

    def __call__(self, logits: torch.Tensor, batch: Batch) -> Step:
        parts = logits.float().split(list(self.sizes), 1)
        n, loss, counts = len(batch.labels), 0.0, {}
        if self.weighting == "uncertainty":
            with torch.no_grad():  # projected gradient descent: the optimiser's step may have left the bounds
                self.log_vars.clamp_(-LOG_VAR_LIMIT, LOG_VAR_LIMIT)
        for t, (name, part, ce) in enumerate(zip(self.names, parts, self.losses)):
            step = ce(part, Batch(batch.inputs, batch.labels[:, t], batch.index))
            if self.weighting == "uncertainty":
                loss = loss + torch.exp(-self.log_vars[t]) * step.loss + self.log_vars[t] / 2
            else:
                loss = loss + self.fixed[t] * step.loss
            counts[f"loss:{name}"] = step.loss.item() * n
            counts[f"correct:{name}"] = step.counts["correct"]
        counts["correct"] = counts[f"correct:{self.names[0]}"]
        return Step(loss, counts)


TeacherLogits = Callable[[torch.Tensor], torch.Tensor]  # a batch's places in the training split -> logits


class Distillation:
    """Knowledge distillation (Hinton et al. 2015): the student matches the teacher's softened
    outputs as well as the labels,

        loss = a * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - a) * CE(s, y).

    T^2 keeps the soft targets' gradients on the scale of the hard ones as T grows. The parts are
    counted as they contribute to the loss, weights included: ``loss:kd`` is a * T^2 * KL and
    ``loss:ce`` is (1 - a) * CE (the run's cross-entropy, with its label smoothing and class
    weights), so the two curves add up to the training loss. ``correct`` counts the student's.

    ``teacher`` gives the teacher's logits of a batch from its ``index``: a tensor (N, K) of
    logits precomputed once per training image (the table is indexed), or a function that
    computes them (to compare cached against recomputed teacher logits)."""

    def __init__(self, teacher: torch.Tensor | TeacherLogits, temperature: float = 4.0, alpha: float = 0.5,
                 cross_entropy: CrossEntropy | None = None):
        self.teacher, self.temperature, self.alpha = teacher, temperature, alpha
        self.cross_entropy = cross_entropy or CrossEntropy()

    def teacher_logits(self, index: torch.Tensor) -> torch.Tensor:
        return self.teacher[index] if isinstance(self.teacher, torch.Tensor) else self.teacher(index)

    def __call__(self, logits: torch.Tensor, batch: Batch) -> Step:
        logits, T, a = logits.float(), self.temperature, self.alpha
        hard = self.cross_entropy(logits, batch)
        teacher = self.teacher_logits(batch.index).to(logits.device, torch.float32)
        kl = F.kl_div(F.log_softmax(logits / T, 1), F.log_softmax(teacher / T, 1), log_target=True,
                      reduction="batchmean")
        kd, ce = a * T * T * kl, (1 - a) * hard.loss
        n = len(batch.labels)
        return Step(kd + ce, {**hard.counts, "loss:kd": kd.item() * n, "loss:ce": ce.item() * n})


# --- L2-SP: toward the pretrained weights -----------------------------------------------------

class Anchor:
    """θ₀: each block's parameters as the run found them, kept on the model's device, to measure
    how far training moved each block and for L2-SP to pull toward. A block is copied when it
    first trains (`take`): until then it still holds its starting weights, so a linear probe
    copies its head alone. For the pretrained blocks θ₀ is the pretrained weights; for the new
    ones (the head, adapters) it is their initialisation."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.start: dict[str, list[torch.Tensor]] = {}  # block -> copies of its parameters, in order

    def take(self, blocks: Iterable[str]) -> None:
        """Copy the parameters of ``blocks`` not copied yet; call it before they train."""
        modules = dict(self.model.named_children())
        with torch.no_grad():
            for name in blocks:
                if name not in self.start:
                    self.start[name] = [p.detach().clone() for p in modules[name].parameters()]

    def pairs(self, blocks: Iterable[str]) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(parameter, its θ₀) over ``blocks``: what `L2SP` pulls together."""
        blocks = list(blocks)
        self.take(blocks)
        modules = dict(self.model.named_children())
        return [pair for name in blocks for pair in zip(modules[name].parameters(), self.start[name])]

    @torch.no_grad()
    def moved(self) -> dict[str, float]:
        """Per block with parameters, ‖θ − θ₀‖ / ‖θ₀‖ over all its parameters: 0 for a block
        that has not trained. One pass over the copied blocks and one transfer from the device.
        (A block whose θ₀ is all zeros reports ‖θ − θ₀‖ itself.)"""
        names, measured = [], []
        for name, module in self.model.named_children():
            if name in self.start:
                params = list(module.parameters())
                distance = torch.stack(torch._foreach_norm(torch._foreach_sub(params, self.start[name]))).norm()
                names.append(name)
                measured.append(torch.stack([distance, torch.stack(torch._foreach_norm(self.start[name])).norm()]))
        figures = dict(zip(names, torch.stack(measured).float().tolist())) if names else {}
        return {name: _relative(*figures[name]) if name in figures else 0.0
                for name, module in self.model.named_children() if any(True for _ in module.parameters())}


def _relative(distance: float, norm: float) -> float:
    return distance / norm if norm > 0 else distance


class L2SP:
    """L2-SP (Li et al. 2018): ``base``'s loss plus β/2·‖θ − θ₀‖² over ``pairs`` of
    (parameter, pretrained value), counting that penalty as the part ``l2sp``. Only the
    parameters that train now count (``requires_grad``): under gradual unfreezing the pull
    covers the blocks unfrozen so far. ``beta`` may change between epochs (`adapt_beta`).
    A base that counts no parts of its own has its whole loss counted as ``base_part``."""

    def __init__(self, base: Objective, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], beta: float,
                 base_part: str = "ce"):
        self.base, self.pairs, self.beta, self.base_part = base, list(pairs), beta, base_part

    def penalty(self) -> torch.Tensor:
        """β/2·‖θ − θ₀‖² over the parameters that train, in fp32 (autocast leaves these ops alone)."""
        trained = [(p, p0) for p, p0 in self.pairs if p.requires_grad]
        if not trained:
            return torch.zeros((), device=self.pairs[0][1].device if self.pairs else None)
        return 0.5 * self.beta * sum(((p - p0) ** 2).sum() for p, p0 in trained)

    def __call__(self, outputs: torch.Tensor, batch: Batch) -> Step:
        step = self.base(outputs, batch)
        penalty, n = self.penalty(), len(batch.labels)
        counts = dict(step.counts)
        if not any(name.startswith("loss:") for name in counts):
            counts[f"loss:{self.base_part}"] = step.loss.item() * n
        counts["loss:l2sp"] = penalty.item() * n
        return Step(step.loss + penalty, counts)


ADAPTIVE_RANGE = 10.0  # adaptive L2-SP keeps beta within a tenth to ten times the one the run started with
ADAPTIVE_FACTOR = 2.0  # and moves it by this factor per epoch


def beta_bounds(beta: float) -> tuple[float, float]:
    """Where adaptive L2-SP keeps beta: a tenth to ten times the start (and at most `L2SP_MAX`).

    >>> beta_bounds(0.01)
    (0.001, 0.1)
    """
    return beta / ADAPTIVE_RANGE, min(beta * ADAPTIVE_RANGE, L2SP_MAX)


def adapt_beta(beta: float, gap: float, previous_gap: float | None, val_improved: bool, lo: float, hi: float,
               factor: float = ADAPTIVE_FACTOR) -> float:
    """The L2-SP beta for the next epoch, from this epoch's generalisation gap (train accuracy −
    val accuracy) and whether val accuracy beat its best so far.

    The gap grew and val accuracy did not improve: the model fits the training images at the cost
    of the others, so beta goes up by ``factor`` (a stronger pull toward the pretrained weights).
    Val accuracy improved and the gap did not grow: what it learns carries over, so beta goes down
    by ``factor``. Neither, or both at once: beta stays. After the first epoch (no previous gap)
    it stays too. The result is clipped to [``lo``, ``hi``].

    >>> adapt_beta(0.1, gap=0.30, previous_gap=0.10, val_improved=False, lo=0.01, hi=1.0)
    0.2
    >>> adapt_beta(0.1, gap=0.05, previous_gap=0.10, val_improved=True, lo=0.01, hi=1.0)
    0.05
    >>> adapt_beta(0.8, gap=0.30, previous_gap=0.10, val_improved=False, lo=0.01, hi=1.0)
    1.0
    """
    if previous_gap is None:
        return beta
    grew = gap > previous_gap
    if grew and not val_improved:
        beta *= factor
    elif val_improved and not grew:
        beta /= factor
    return min(max(beta, lo), hi)


def divergence_advice(config, lr: float, beta: float | None = None) -> str:
    """What to change when a run's loss became inf or nan, by what its objective weighs (a sentence):
    the learning rate and gradient clipping always; the L2-SP beta (``beta``, now) when L2-SP is on,
    whose pull overshoots when the step times beta is large; the task weights when given."""
    tips = [f"lower the learning rate (now {lr:g})"]
    if beta is not None:
        tips.append(f"lower --l2sp (beta now {beta:g}; a pull that strong overshoots the pretrained weights at "
                    "this rate)")
    if getattr(config, "task_weights", "").strip():
        tips.append(f"lower the largest of --task-weights ({config.task_weights})")
    if not getattr(config, "grad_clip", 0):
        tips.append("turn on gradient clipping (e.g. --grad-clip 1)")
    text = ", ".join(tips[:-1]) + " or " + tips[-1] if len(tips) > 1 else tips[0]
    return text[0].upper() + text[1:] + "."
