"""What training minimises. An objective takes the model's outputs and the batch and returns
the loss and the figures it counted on the batch; the loop calls it and never looks inside,
so another objective (distillation, several tasks) needs no change to the loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable
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


class MultiTask:
    """Several tasks on one backbone: the model's output holds each task's logits side by side
    (``sizes`` columns each, `ftlab.edits.TaskHeads`) and ``batch.labels`` one column of labels
    per task. Each task has its own cross-entropy (``losses``, with its class weights and
    smoothing); the loss combines them:

    - ``fixed``: Σ wₜ·CEₜ with the user's weights;
    - ``uncertainty`` (Kendall, Gal and Cipolla 2018): Σ exp(−sₜ)·CEₜ + sₜ/2 with a learned
      sₜ = log σₜ² per task, so a task the model finds noisy (large CE) is weighted down; the
      sₜ/2 term keeps the weights from all falling to zero. Its ``parameters()`` go into the
      optimiser; ``weights()`` are the exp(−sₜ) the loss uses now.

    It counts ``loss:<task>`` (each task's unweighted CE), ``correct`` of the first task (the
    run's training accuracy) and ``correct:<task>`` of every task.
    """

    def __init__(self, names: tuple[str, ...], sizes: tuple[int, ...], losses: list[CrossEntropy], *,
                 weighting: str = "fixed", weights: tuple[float, ...] | None = None,
                 device: torch.device | str = "cpu"):
        self.names, self.sizes, self.losses, self.weighting = tuple(names), tuple(sizes), losses, weighting
        self.fixed = torch.tensor(weights if weights is not None else [1.0] * len(names), device=device)
        # s_t = log sigma_t^2, 0 at the start: every task weighted 1, as fixed weighting starts
        self.log_vars = torch.zeros(len(names), device=device, requires_grad=weighting == "uncertainty")

    def parameters(self) -> list[torch.Tensor]:
        """What the optimiser trains beside the model: the log-variances of uncertainty weighting."""
        return [self.log_vars] if self.weighting == "uncertainty" else []

    def weights(self) -> dict[str, float]:
        """Each task's weight in the loss now."""
        w = torch.exp(-self.log_vars.detach()) if self.weighting == "uncertainty" else self.fixed
        return {name: float(v) for name, v in zip(self.names, w)}

    def __call__(self, logits: torch.Tensor, batch: Batch) -> Step:
        parts = logits.float().split(list(self.sizes), 1)
        n, loss, counts = len(batch.labels), 0.0, {}
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
