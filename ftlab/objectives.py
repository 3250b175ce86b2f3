"""What training minimises. An objective takes the model's outputs and the batch and returns
the loss and the figures it counted on the batch; the loop calls it and never looks inside,
so another objective (distillation, several tasks) needs no change to the loop.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ftlab.config import L2SP_MAX


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
