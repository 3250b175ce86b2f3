"""What training minimises. An objective takes the model's outputs and the batch and returns
the loss and the figures it counted on the batch; the loop calls it and never looks inside,
so another objective (distillation, several tasks) needs no change to the loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F


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
