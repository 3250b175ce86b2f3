"""The training loop: ``train_one_epoch``, ``evaluate``, and ``run``, which ties them to data,
a freeze plan, checkpoints and events. ``ftlab.jobs.Job`` runs the same ``run`` in a background
thread.

Images live in memory as decoded uint8 tensors; each batch is indexed, moved to the
device, augmented and normalised there, so no epoch decodes a file again.
"""
from __future__ import annotations

import hashlib
import math
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ftlab import backbones, cache, checkpoints, data, distributed, events, fastpath, freeze, metrics
from ftlab import tasks as task_options
from ftlab import precision as precisions
from ftlab import teacher as teachers
from ftlab.config import TrainConfig, resolved_image_size, resolved_lr, validate
from ftlab.errors import NonFiniteLoss, StopRequested
from ftlab.objectives import (L2SP, Anchor, Batch, CrossEntropy, Distillation, MultiTask, Objective, adapt_beta,
                              beta_bounds, class_weights, divergence_advice)
from ftlab.precision import FP32, Choice
from ftlab.records import EpochRecord, RunSummary
from ftlab.runs import RunStore, StoreError, new_run_id
from ftlab.transforms import FeaturePrep, Preprocess, Preprocessing

Emit = Callable[[events.Event], None]
_SAMPLE = 8  # images: the batch that checks the fast prefix and times each precision


def pick_device(preference: str = "auto") -> torch.device:
    """CUDA, then Apple's MPS, then the CPU; or the one asked for."""
    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# --- batches ---------------------------------------------------------------------------

def batches(n: int, batch_size: int, *, generator: torch.Generator | None = None,
            sample_weights: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """Index batches over n items: in order, shuffled, or drawn by weight with replacement."""
    if sample_weights is not None:
        order = torch.multinomial(sample_weights, n, replacement=True, generator=generator)
    elif generator is not None:
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.arange(n)
    yield from order.split(batch_size)


# --- one epoch, one evaluation ----------------------------------------------------------

@dataclass(frozen=True)
class EpochInputs:
    train: torch.Tensor
    val: torch.Tensor
    start: int  # the first block to run on them
    prep: Callable
    val_prep: Callable


@dataclass
class EpochResult:
    loss: float
    accuracy: float
    images: int
    seconds: float
    parts: dict = field(default_factory=dict)  # the mean of each part of the loss an objective counted
    accuracies: dict = field(default_factory=dict)  # several tasks: each task's training accuracy


def train_one_epoch(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, order: Iterator[torch.Tensor], *,
                    optimizer: torch.optim.Optimizer, objective: Objective, prep: Preprocess,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, precision: Choice = FP32,
                    scaler: torch.amp.GradScaler | None = None, grad_clip: float = 0.0, start: int = 0,
                    should_stop: Callable[[], bool] = lambda: False,
                    on_step: Callable[[int, float, int], None] = lambda step, loss, n: None,
                    agree: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss) -> EpochResult:
    """One pass over the training batches; ``scheduler`` (if given) steps after every batch.

    ``images`` are the inputs of block ``start``: decoded images when ``start`` is 0, the
    cached output of the frozen blocks before it otherwise. ``objective`` turns the model's
    outputs and the batch into the loss (and the correct predictions it counted). The forward
    pass and the loss run in ``precision`` (autocast); the weights and the optimiser stay fp32.
    Under torchrun ``agree`` is the loss every process sees (the mean over their batches), so that
    all of them stop alike on a loss that is not finite; in one process it is the loss itself.
    """
    model.train()  # a BlockModel keeps its frozen blocks in eval mode where its BatchNorm rule says so
    trainable = [p for p in model.parameters() if p.requires_grad]
    device_type = prep.device.type
    total_loss, counts, seen, began = 0.0, {}, 0, time.perf_counter()
    for step, idx in enumerate(order, 1):
        if should_stop():
            raise StopRequested("training", step)
        batch = Batch(prep(images[idx], train=True), labels[idx].to(prep.device, non_blocking=True), idx)
        with precision.autocast(device_type):
            result = objective(model.forward_from(batch.inputs, start), batch)
        loss = result.loss
        seen_loss = agree(loss.detach())
        if not torch.isfinite(seen_loss):
            raise NonFiniteLoss(f"the loss became {seen_loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # so that clipping sees the true gradient norm
        else:
            loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(trainable, grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        n = len(batch.labels)
        total_loss += loss.item() * n
        for name, value in result.counts.items():
            counts[name] = counts.get(name, 0.0) + value
        seen += n
        on_step(step, seen_loss.item(), seen)
    parts = {name[5:]: value / max(seen, 1) for name, value in counts.items() if name.startswith("loss:")}
    accuracies = {name[8:]: value / max(seen, 1) for name, value in counts.items() if name.startswith("correct:")}
    return EpochResult(total_loss / max(seen, 1), counts.get("correct", 0) / max(seen, 1), seen,
                       time.perf_counter() - began, parts, accuracies)


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    predictions: np.ndarray
    losses: np.ndarray  # per image: which validation images the model gets most wrong
    probabilities: np.ndarray
    tasks: tuple["Evaluation", ...] = ()  # several tasks: each task's own (the first is this one's figures)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, prep: Preprocess,
             batch_size: int = 128, precision: Choice = FP32, start: int = 0,
             should_stop: Callable[[], bool] = lambda: False, sizes: tuple[int, ...] = ()) -> Evaluation:
    """The model's figures on ``images``. With several tasks (``sizes``: each task's class count)
    ``labels`` has one column per task and the model's output each task's logits side by side:
    the result is the first task's, with every task's in ``tasks``."""
    model.eval()
    columns = labels[:, None] if labels.dim() == 1 else labels
    preds, losses, probs = [[] for _ in columns.T], [[] for _ in columns.T], [[] for _ in columns.T]
    for step, idx in enumerate(batches(len(labels), batch_size), 1):
        if should_stop():
            raise StopRequested("evaluating", step)
        x, y = prep(images[idx], train=False), columns[idx].to(prep.device)
        with precision.autocast(prep.device.type):
            output = model.forward_from(x, start).float()
        for t, logits in enumerate(task_options.split(output, sizes)):
            losses[t].append(F.cross_entropy(logits, y[:, t], reduction="none").cpu())
            probs[t].append(logits.softmax(1).cpu())
            preds[t].append(logits.argmax(1).cpu())
    each = []
    for t in range(columns.shape[1]):
        pred, loss = torch.cat(preds[t]).numpy(), torch.cat(losses[t]).numpy()
        each.append(Evaluation(float(loss.mean()), float((pred == columns[:, t].numpy()).mean()), pred, loss,
                               torch.cat(probs[t]).numpy()))
    return replace(each[0], tasks=tuple(each)) if len(each) > 1 else each[0]


# --- optimiser and schedule -------------------------------------------------------------

def make_optimizer(config: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """The optimiser over ``groups``, fused where torch has the kernels (CPU and CUDA): one pass
    over all parameters instead of a loop over them. AdamW's step for ResNet-18's last stage
    took 6 ms fused and 36 ms as a loop on 2 cores, a fifth of a `top-1` training step."""
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=config.momentum, fused=fused)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, fused=fused)
    return torch.optim.AdamW(groups, fused=fused)


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """(scheduler, stepped per batch?). Per-batch schedules see the whole run up front."""
    total = config.epochs * steps_per_epoch
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total), True
    if config.schedule == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total), True
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma), False
    return None, False


# --- a whole run ------------------------------------------------------------------------

def run(config: TrainConfig, *, store: RunStore, emit: Emit = lambda e: None,
        stop: threading.Event | None = None, run_id: str | None = None,
        ranks: distributed.Ranks = distributed.SINGLE) -> dict:
    """Train ``config`` to the end, a stop, or a failure; return the summary. Never raises for
    problems with the user's data or settings: those end in ``RunFailed`` with a message.

    Under torchrun (``ranks`` active, the process group started) every process calls this with
    the same ``run_id``; rank 0 alone writes ``store``, and a ``stop`` set in any process stops
    them all at the same step."""
    run_id = run_id or new_run_id()
    stop = stop or threading.Event()
    if ranks.active:  # the work between steps never reads a stop: the ranks agree on it at each step
        trainer = _Trainer(config, store if ranks.leader else distributed.Follower(store), emit, threading.Event(),
                           run_id, ranks=ranks, asked=stop)
    else:
        trainer = _Trainer(config, store, emit, stop, run_id)
    try:
        return trainer.run()
    finally:
        store.release(run_id)  # however it ended: a record still 'running' now reads as interrupted


@dataclass
class _Trainer:
    """One run, from its options to its record. The fields after ``shared_cache`` are the run's
    state: ``_setup`` sets them, the loop and the final evaluation read them."""

    config: TrainConfig
    store: RunStore
    emit: Emit
    stop: threading.Event
    run_id: str
    shared_cache: cache.FeatureCache = cache.SHARED
    ranks: distributed.Ranks = distributed.SINGLE  # under torchrun: this process's rank (`ftlab.distributed`)
    asked: threading.Event | None = None  # under torchrun: the user's stop, read at each step by every rank
    summary: RunSummary = field(init=False)
    device: torch.device = field(init=False)
    data: data.Prepared = field(init=False)  # this process's data: under torchrun, its shares of the splits
    whole: data.Prepared = field(init=False)  # every image of each split (the same as ``data`` in one process)
    positions: dict = field(default_factory=dict)  # under torchrun: split -> this rank's positions in it
    batch: int = field(init=False)  # this process's batch: the global batch size dealt out over the ranks
    classes: tuple[str, ...] = field(init=False)
    tasks: tuple[task_options.TrainedTask, ...] = field(init=False)  # the first is the run's task
    labels: dict = field(init=False)  # split -> its labels: (N,), or (N, tasks) with several tasks
    whole_labels: dict = field(init=False)  # the same of ``whole``: what the figures are computed against
    parallel: "distributed.Parallel | None" = None  # under torchrun: the DDP-wrapped model of these trained blocks
    parallel_for: frozenset | None = None
    preprocessing: Preprocessing = field(init=False)  # what the checkpoint records of the inputs
    model: backbones.BlockModel = field(init=False)
    plan: freeze.FreezePlan = field(init=False)
    prep: Preprocess = field(init=False)
    cache_budget: int = field(init=False)  # this run's: the shared cache is not changed by it
    data_identity: str = field(init=False)  # what the cache keys say of the data and the weights
    weights_identity: str = field(init=False)
    precision: Choice = FP32  # what the blocks that train compute in this epoch (`_training_precision`)
    objective: Objective = field(init=False)
    anchor: Anchor = field(init=False)  # each block's weights at the start: how far it moved, what L2-SP pulls to
    l2sp: L2SP | None = None  # the L2-SP wrapper of the objective, when --l2sp asks for one
    gap: float | None = None  # the last epoch's train - val accuracy (adaptive L2-SP)
    sample_weights: torch.Tensor | None = field(init=False)
    optimizer: torch.optim.Optimizer = field(init=False)
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = field(init=False)
    per_step: bool = field(init=False)  # the scheduler steps after every batch (else every epoch)
    scaler: torch.amp.GradScaler | None = field(init=False)
    steps: int = field(init=False)  # batches per epoch
    best_state: dict | None = None  # the best epoch's weights, on the CPU
    teacher: "teachers.Teacher | None" = None  # distillation: the frozen teacher (`_teacher_logits`)
    teacher_views: dict = field(default_factory=dict)  # view (0: un-augmented) -> its logits of the train split
    best_val: "Evaluation | None" = None  # its val figures: the final evaluation need not recompute them
    computed: set = field(default_factory=set)  # cache keys this run computed itself
    training_choices: dict = field(default_factory=dict)  # first trained block -> its precision Choice
    prefixes: dict = field(default_factory=dict)  # first block after the cached ones -> (Choice, Accelerated)
    caching_precision: Choice = FP32  # of the prefix `_cached` computes now
    stopped_at: StopRequested | None = None  # where a user's stop landed
    integrity: freeze.IntegrityCheck | None = None  # the frozen blocks as they began (`_check_frozen`)
    cpu_began: float = 0.0  # time.process_time() when the run began

    def run(self) -> dict:
        c = self.config
        self.cpu_began = time.process_time()
        problems = validate(c, store=self.store)
        if own := teachers.self_taught(self.run_id, c.teacher):  # validate found no such run: its record comes next
            problems = [own] + [p for p in problems if not p.startswith("teacher")]
        self.device = distributed.device_for(self.ranks, pick_device(c.device)) if not problems \
            else torch.device("cpu")
        self.summary = RunSummary(self.run_id, c.dataset, c.backbone, c.strategy, device=self.device.type)
        if problems:  # before any work and before a record: nothing ran, so nothing is kept
            self.summary.stopped_reason = "error"
            self.emit(events.RunFailed(self.run_id, " ".join(problems), self.summary.to_dict()))
            return self.summary.to_dict()
        self.store.create(self.run_id, c.to_dict())
        try:
            self._setup()
            reason, message = self._train()
        except StopRequested as where:
            self.stopped_at = where
            reason, message = "user", "stopped before training began"
        except Exception as err:  # the run fails, the app and the CLI live on
            return self._fail(err)
        return self._finish(reason, message)

    def _say(self, message: str) -> None:
        self.emit(events.Preparing(self.run_id, message))

    def _setup(self) -> None:
        c = self.config
        torch.manual_seed(c.seed)
        self._say("loading data")
        self.preprocessing = Preprocessing.for_backbone(c.backbone, resolved_image_size(c))
        self.data = self.whole = data.prepare(c, self.preprocessing.size, self.preprocessing.resize, self._say,
                                              self.stop.is_set)
        if self.ranks.active:
            self.data = self._shares(self.whole)
        if self.device.type == "cuda":  # page-locked memory: batches copy to the GPU asynchronously
            self.data = replace(self.data, **{name: replace(d, images=d.images.pin_memory()) for name in
                                              ("train", "val", "test") if (d := getattr(self.data, name))})
        self.classes = self.data.dataset.classes
        self.tasks = task_options.select(c, self.data.dataset)
        self.labels = {name: self._split_labels(split) for name in ("train", "val", "test")
                       if (split := getattr(self.data, name)) is not None}
        self.whole_labels = self.labels if self.whole is self.data else \
            {name: self._split_labels(split) for name in ("train", "val", "test")
             if (split := getattr(self.whole, name)) is not None}
        if self.sizes:
            weighting = "learned weights (uncertainty)" if c.task_weighting == "uncertainty" else \
                "weights " + ", ".join(f"{t.weight:g}" for t in self.tasks)
            self._say(f"training {len(self.tasks)} tasks, one head each: " +
                      ", ".join(f"{t.name} ({len(t.classes)} classes)" for t in self.tasks) + f"; {weighting}")
        self.data_identity = data.identity(c)
        self.weights_identity = backbones.Weights.parse(c.weights).identity(c.seed)
        self.store.set_data(self.run_id, list(self.classes), self.data.split.to_dict())
        self._say(f"building {c.backbone} ({backbones.Weights.parse(c.weights).describe()})")
        self.model = backbones.create_model(c.backbone, self.sizes or len(self.classes), c.weights, edits=c.edits(),
                                            image_size=self.preprocessing.size).to(self.device)
        if self.ranks.active:  # BatchNorm in train mode sees the global batch, as one process would
            distributed.sync_batchnorm(self.model)
        self.plan = freeze.make_plan(self.model.param_blocks(), c.strategy, gradual_every=c.gradual_every,
                                     frozen_blocks=c.frozen_blocks)
        freeze.apply_freeze(self.model, self.plan.frozen_at(0), c.bn_frozen)
        self.integrity = freeze.IntegrityCheck(freeze.backbone_blocks(self.plan.blocks), c.bn_frozen)
        self.integrity.take(self.model, self.plan.frozen_at(0))
        self.summary.trained_blocks = 0
        self.prep = Preprocess.for_config(c, self.preprocessing, self.device)
        self.cache_budget = c.cache_memory_mb << 20 if c.cache_memory_mb else self.shared_cache.budget
        train_labels = self.data.train.labels
        self.anchor = Anchor(self.model)
        self.objective = self._objective()
        self.sample_weights = (1.0 / torch.bincount(self.whole.train.labels).float())[train_labels] \
            if c.balanced_sampling else None  # by each class's share of the whole split
        # L2-SP replaces the backbone's weight decay toward 0 by its pull toward the pretrained weights
        anchored = frozenset(freeze.backbone_blocks(self.plan.blocks)) if self.l2sp else frozenset()
        self.optimizer = make_optimizer(c, self._objective_groups() +
                                        freeze.param_groups(self.model, resolved_lr(c), c.weight_decay, c.lr_decay,
                                                            anchored))
        if c.batch_size > len(self.whole.train.labels):
            self._say(f"batch size {c.batch_size} is larger than the {len(self.whole.train.labels)} training images: "
                      f"each epoch is one batch of {len(self.whole.train.labels)}")
        self.batch = distributed.local_batch(c.batch_size, self.ranks)
        if self.ranks.active:
            self._say(f"process {self.ranks.rank} of {self.ranks.world}: {len(train_labels):,} training images, "
                      f"{self.batch} of each batch of {c.batch_size}")
        self.steps = math.ceil(len(train_labels) / self.batch)
        self.scheduler, self.per_step = make_scheduler(c, self.optimizer, self.steps)
        self.scaler = None  # fp16 training makes one (`_training_precision`)
        trainable, total = freeze.count_params(self.model)
        self.summary.trainable_params, self.summary.total_params = trainable, total
        self.summary.image_size = self.data.image_size
        self.summary.skipped_files = len(self.data.train.skipped) + len(self.data.val.skipped)
        skipped = self.data.train.skipped + self.data.val.skipped + (self.data.test.skipped if self.data.test else ())
        self.emit(events.RunStarted(self.run_id, c.to_dict(), self.device.type, tuple(self.classes),
                                    {k: len(v.labels) if v else 0 for k, v in
                                     (("train", self.whole.train), ("val", self.whole.val), ("test", self.whole.test))},
                                    trainable, total, tuple(skipped),
                                    {t.name: t.classes for t in self.tasks} if self.sizes else {},
                                    teacher=dict(self.summary.teacher)))

    def _objective(self) -> Objective:
        """What this run minimises: cross-entropy on the class labels, as its options weight and smooth it;
        with several tasks one such cross-entropy per task, weighted (`MultiTask`); with a teacher,
        distillation from the teacher's logits plus that cross-entropy."""
        c = self.config
        if self.sizes:
            losses = [self._cross_entropy(self.whole_labels["train"][:, t], len(task.classes))
                      for t, task in enumerate(self.tasks)]
            return self._with_l2sp(MultiTask(tuple(t.name for t in self.tasks), self.sizes, losses,
                                             weighting=c.task_weighting, weights=tuple(t.weight for t in self.tasks),
                                             device=self.device))
        cross_entropy = self._cross_entropy(self.whole.train.labels, len(self.classes))
        if not c.teacher.strip():
            return self._with_l2sp(cross_entropy)
        return self._with_l2sp(Distillation(self._teacher_logits(), c.distill_temperature, c.distill_alpha,
                                            cross_entropy))

    def _cross_entropy(self, labels: torch.Tensor, num_classes: int) -> CrossEntropy:
        c = self.config
        weight = class_weights(labels, num_classes).to(self.device) if c.class_weighting == "balanced" else None
        return CrossEntropy(weight, c.label_smoothing)

    def _base_objective(self) -> Objective:
        """The objective under the L2-SP penalty (the run's objective itself without L2-SP)."""
        return self.objective.base if isinstance(self.objective, L2SP) else self.objective

    def _with_l2sp(self, base: Objective) -> Objective:
        """``base`` with the L2-SP penalty on the pretrained blocks when --l2sp asks for it (their
        θ₀ copied now, on the device); the new head and adapters keep plain weight decay instead."""
        if not self.config.l2sp:
            return base
        self.l2sp = L2SP(base, self.anchor.pairs(freeze.backbone_blocks(self.plan.blocks)), self.config.l2sp)
        return self.l2sp

    def _adapt_l2sp(self, gap: float, val_improved: bool) -> None:
        """Adaptive L2-SP: the next epoch's beta from this epoch's generalisation gap (`adapt_beta`)."""
        if self.l2sp is not None and self.config.l2sp_adaptive:
            self.l2sp.beta = adapt_beta(self.l2sp.beta, gap, self.gap, val_improved, *beta_bounds(self.config.l2sp))
        self.gap = gap

    def _teacher_logits(self) -> torch.Tensor:
        """The teacher's logits of every training image, computed once before training (the
        teacher is frozen and sees un-augmented images, so they are the same in every epoch; with
        cached augmented views, `_teach_view` gives it the view the student sees), and its accuracy
        on this run's val split, kept in the summary for the accuracy chart."""
        teacher = self.teacher = teachers.load(self.config.teacher, self.store, list(self.classes))
        train, val = (self._teacher_split(teacher, name) for name in ("train", "val"))
        accuracy = teachers.accuracy(val, self.data.val.labels)
        if self.ranks.active:  # each rank's share of val: the accuracy on the whole split
            correct, n = distributed.sums([accuracy * len(self.data.val.labels), len(self.data.val.labels)],
                                          self.device)
            accuracy = correct / max(n, 1)
        self.teacher_views[0] = train
        self.summary.teacher = {"run_id": teacher.run_id, "label": teacher.label, "val_accuracy": accuracy}
        self._say(f"teacher {teacher.run_id} ({teacher.label}): val accuracy {accuracy:.3f} on this run's val split")
        return train

    def _teacher_split(self, teacher: teachers.Teacher, name: str) -> torch.Tensor:
        """The teacher's logits of split ``name``, from the feature cache or computed once now."""
        split, p = getattr(self.data, name), teacher.preprocessing
        key = cache.CacheKey(f"teacher {teacher.model.backbone}", teacher.identity, "logits",
                             f"{p.identity()}; no augmentation", self.data_identity, name,
                             cache.digest(split.indices), 0)
        if (found := self.shared_cache.get(key)) is not None:
            self._say(f"the teacher's logits for {len(split.labels):,} {name} images were computed by an earlier run")
            return found
        images = self._teacher_images(split, p, name)
        self._say(f"computing the teacher's logits for {len(split.labels):,} {name} images "
                  f"({teacher.model.backbone} at {p.size} px, once for the whole run)")
        began = time.perf_counter()
        try:
            logits = teacher.logits(images, self.device, max(64, 2 * self.config.batch_size), self.stop.is_set)
        finally:  # not training time, like the caching pass
            self.summary.cache_seconds += time.perf_counter() - began
        self.shared_cache.put(key, logits, self.cache_budget)
        return logits

    def _teach_view(self, epoch: int, inputs: "EpochInputs") -> None:
        """With augmented views cached, the student trains this epoch on one stored view of each
        image: the teacher's logits are then those of the same view (computed once per view, as the
        features are); otherwise (no augmentation, or fresh augmentation each epoch) those of the
        un-augmented image."""
        if not isinstance(self._base_objective(), Distillation) or self.teacher is None:
            return
        view = epoch % self.config.augment_views + 1 if inputs.start > 0 and self.prep.augment is not None else 0
        if view not in self.teacher_views:
            self.teacher_views[view] = self._teacher_view_logits(view)
        self._base_objective().teacher = self.teacher_views[view]

    def _teacher_view_logits(self, view: int) -> torch.Tensor:
        """The teacher's logits of the training split's augmented view ``view``: the very images the
        cached features of that view were computed from (the same seed, the same order of draws),
        resized to the teacher's size where it differs from the student's."""
        c, t, split = self.config, self.teacher, self.data.train
        p = t.preprocessing
        key = cache.CacheKey(f"teacher {t.model.backbone}", t.identity, "logits",
                             f"{p.identity()}; views of {self.prep.identity(train=True)} at "
                             f"{self.preprocessing.size} px of seed {c.seed}", self.data_identity, "train", cache.digest(split.indices), view)
        if (found := self.shared_cache.get(key)) is not None:
            return found
        self._say(f"computing the teacher's logits for {len(split.labels):,} train images, view {view} "
                  f"({t.model.backbone} at {p.size} px, once per view)")
        torch.manual_seed(c.seed * 1000 + view)  # as `_cached` drew this view
        views = torch.cat([torch.stack([self.prep.augment(img) for img in split.images[i:i + 256]])
                           for i in range(0, len(split.labels), 256)])
        if views.shape[-1] != p.size:
            views = F.interpolate(views.float(), size=(p.size, p.size), mode="bilinear", antialias=True,
                                  align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
        began = time.perf_counter()
        try:
            logits = t.logits(views, self.device, max(64, 2 * c.batch_size), self.stop.is_set)
        finally:
            self.summary.cache_seconds += time.perf_counter() - began
        self.shared_cache.put(key, logits, self.cache_budget)
        return logits

    def _teacher_images(self, split: data.Decoded, p: Preprocessing, name: str) -> torch.Tensor:
        """The split's images as the teacher's preprocessing decodes them: the student's own when the
        resize and crop are the same, else decoded again from the files at the teacher's size (an
        image enlarged from the student's smaller decoding would not be what the teacher learnt on)."""
        if (p.size, p.resize) == (self.preprocessing.size, self.preprocessing.resize):
            return split.images
        self._say(f"decoding {len(split.labels):,} {name} images at {p.size} px for the teacher")
        try:
            decoded = data.decode(self.data.dataset, split.indices, p.size, resize=p.resize,
                                  should_stop=self.stop.is_set)
        except data.DecodingStopped:
            raise StopRequested("preparing") from None
        if not np.array_equal(decoded.indices, split.indices):
            raise data.DataError(f"{len(decoded.skipped)} {name} image(s) could not be decoded at the teacher's "
                                 f"size, e.g. {decoded.skipped[0] if decoded.skipped else '?'}")
        return decoded.images

    def _objective_groups(self) -> list[dict]:
        """The optimiser's group for what the objective learns itself (uncertainty weighting's
        log-variances), first, so that the last group stays the head's, whose rate the records show."""
        params = self._base_objective().parameters() if isinstance(self._base_objective(), MultiTask) else []
        return [{"params": params, "lr": resolved_lr(self.config), "weight_decay": 0.0, "name": "task weights"}] \
            if params else []

    @property
    def sizes(self) -> tuple[int, ...]:
        """Each trained task's class count where several tasks train (one task: ())."""
        return tuple(len(t.classes) for t in self.tasks) if len(self.tasks) > 1 else ()

    def _split_labels(self, split: "data.Decoded") -> torch.Tensor:
        """A split's labels as the loop reads them: the first task's, or one column per trained task."""
        if len(self.tasks) < 2:
            return split.labels
        return torch.stack([torch.from_numpy(t.labels[split.indices]) for t in self.tasks], 1)

    def _train(self) -> tuple[str, str]:
        c, d = self.config, self.data
        # under torchrun each rank shuffles its own share, in an order of its own
        generator = torch.Generator().manual_seed(c.seed + 7919 * self.ranks.rank)
        best, since_best, images_seen, started = -1.0, 0, 0, time.perf_counter()
        for epoch in range(c.epochs):
            frozen = self.plan.frozen_at(epoch)
            if frozen != self.model.frozen_blocks:
                freeze.apply_freeze(self.model, frozen, c.bn_frozen)
                self._say(f"epoch {epoch + 1}: training {', '.join(b for b in self.plan.blocks if b not in frozen)}")
            self.integrity.ran(frozen)
            self.summary.trained_blocks = len(self.integrity.trained)
            self.anchor.take(b for b in self.plan.blocks if b not in frozen)  # before they first train
            lr = self.optimizer.param_groups[-1]["lr"]
            try:
                began = time.perf_counter()
                inputs = self._inputs(epoch)
                self._teach_view(epoch, inputs)
                # preparing the inputs (the caching pass, looking features up) is not training: the clocks
                # of progress and time left leave it out
                started += time.perf_counter() - began
                with _threads_for(self.model, inputs.start):
                    began = time.perf_counter()
                    self.precision = self._training_precision(inputs)
                    started += time.perf_counter() - began
                    on_step = self._step_reporter(epoch, started, images_seen)
                    result = self._across_ranks(train_one_epoch(
                        self._trained_model(frozen), inputs.train, self.labels["train"],
                        batches(len(d.train.labels), self.batch, generator=generator,
                                sample_weights=self.sample_weights),
                        optimizer=self.optimizer, objective=self.objective, prep=inputs.prep, start=inputs.start,
                        scheduler=self.scheduler if self.per_step else None, precision=self.precision,
                        scaler=self.scaler, grad_clip=c.grad_clip, should_stop=self._should_stop, on_step=on_step,
                        agree=distributed.agree if self.ranks.active else lambda loss: loss))
            except NonFiniteLoss as err:
                advice = divergence_advice(c, resolved_lr(c), self.l2sp.beta if self.l2sp else None)
                return "non_finite_loss", f"Stopped in epoch {epoch + 1}: {err}. {advice}"
            except StopRequested as where:
                self.stopped_at = where
                return "user", f"stopped by the user during epoch {epoch + 1}"
            if self.scheduler is not None and not self.per_step:
                self.scheduler.step()
            try:
                with _threads_for(self.model, inputs.start):
                    ev = self._gathered(evaluate(self.model, inputs.val, self.labels["val"], prep=inputs.val_prep,
                                                 start=inputs.start, batch_size=2 * c.batch_size,
                                                 precision=self.precision, should_stop=self.stop.is_set,
                                                 sizes=self.sizes), "val")
            except StopRequested as where:
                self.stopped_at = where
                return "user", f"stopped by the user while evaluating epoch {epoch + 1}"
            images_seen += result.images
            self.summary.train_seconds += result.seconds
            self.summary.epochs_run = epoch + 1
            self.summary.images_per_second = images_seen / max(self.summary.train_seconds, 1e-9)
            is_best = ev.accuracy > best
            self._end_epoch(epoch, result, ev, lr, is_best)
            self._adapt_l2sp(result.accuracy - ev.accuracy, is_best)
            if is_best:
                best, since_best = ev.accuracy, 0
            else:
                since_best += 1
            if why := self._probe_converged(epoch, since_best):
                self._switch_to_fine_tuning(epoch, why)
                since_best = 0  # fine-tuning gets its own patience before early stopping
            if c.early_stopping and since_best >= c.early_stopping:
                return "early_stopping", f"no better val accuracy for {since_best} epochs"
        return "completed", ""

    # --- under torchrun ------------------------------------------------------------------

    def _shares(self, whole: "data.Prepared") -> "data.Prepared":
        """This rank's shares of the splits (`distributed.shard_positions`): the training split dealt
        out in the run's seeded order, val and test dealt without repeats (their figures are gathered)."""
        for name in ("train", "val", "test"):
            if (split := getattr(whole, name)) is not None:
                self.positions[name] = distributed.shard_positions(len(split.labels), self.ranks,
                                                                   seed=self.config.seed if name == "train" else None)
        return replace(whole, **{name: distributed.shard(getattr(whole, name), p) for name, p in self.positions.items()})

    def _trained_model(self, frozen: frozenset):
        """The model the epoch trains: itself in one process; under torchrun, wrapped in DDP for the blocks
        that train now (made again when they change)."""
        if not self.ranks.active:
            return self.model
        if self.parallel is None or self.parallel_for != frozen:
            extra = self._base_objective().parameters() if isinstance(self._base_objective(), MultiTask) else []
            self.parallel, self.parallel_for = distributed.Parallel(self.model, self.device, extra), frozen
        return self.parallel

    def _should_stop(self) -> bool:
        """Whether to stop before the next step: under torchrun, whether any rank was asked to."""
        if not self.ranks.active:
            return self.stop.is_set()
        return distributed.any_rank(self.asked is not None and self.asked.is_set(), self.device)

    def _across_ranks(self, r: EpochResult) -> EpochResult:
        """An epoch's training figures over every rank's share (one process: as they are)."""
        if not self.ranks.active:
            return r
        parts, accs = sorted(r.parts), sorted(r.accuracies)
        s = distributed.sums([r.images, r.loss * r.images, r.accuracy * r.images, r.seconds]
                             + [r.parts[k] * r.images for k in parts]
                             + [(r.accuracies[k] or 0.0) * r.images for k in accs], self.device)
        n, at = max(s[0], 1), 4 + len(parts)
        return EpochResult(s[1] / n, s[2] / n, int(s[0]), s[3] / self.ranks.world,
                           {k: s[4 + i] / n for i, k in enumerate(parts)},
                           {k: s[at + i] / n for i, k in enumerate(accs)})

    def _gathered(self, ev: "Evaluation", split: str) -> "Evaluation":
        """Under torchrun, every rank's evaluation of its share of ``split`` put together: the figures
        of the whole split, the same on every rank (so all decide the best epoch alike)."""
        if not self.ranks.active:
            return ev
        each = ev.tasks or (ev,)
        rows = distributed.gather_rows([a for t in each for a in (t.predictions, t.losses, t.probabilities)],
                                       self.positions[split], len(getattr(self.whole, split).labels))
        labels = self.whole_labels[split]
        columns = (labels[:, None] if labels.dim() == 1 else labels).numpy()
        out = [Evaluation(float(loss.mean()), float((pred == columns[:, t]).mean()), pred, loss, prob)
               for t, (pred, loss, prob) in enumerate(zip(rows[0::3], rows[1::3], rows[2::3]))]
        return replace(out[0], tasks=tuple(out)) if len(out) > 1 else out[0]

    def _probe_converged(self, epoch: int, since_best: int) -> str:
        """lp-ft while it probes: why the probe ends after ``epoch`` ("" while it goes on, and after the
        last epoch, when nothing is left to fine-tune)."""
        c, plan = self.config, self.plan
        if plan.strategy != "lp-ft" or plan.switch_at is not None or epoch + 1 >= c.epochs:
            return ""
        if since_best >= c.lp_patience:
            return f"its val accuracy has not improved for {since_best} epochs (lp_patience {c.lp_patience})"
        limit = c.lp_epochs or max(1, c.epochs // 2)
        if epoch + 1 >= limit:
            why = f"lp_epochs {c.lp_epochs}" if c.lp_epochs else "lp_epochs 0: half the epochs"
            return f"it has had its {limit} epochs ({why})"
        return ""

    def _switch_to_fine_tuning(self, epoch: int, why: str) -> None:
        """lp-ft: the probe has converged. Its best head comes back (the backbone was frozen, so the best
        state holds it unchanged), every block trains from the next epoch, every group's rate becomes
        lp_ft_factor times its rate (the schedule goes on from there), and the optimiser forgets the probe's
        moments: they were gathered by the head alone at the probe's larger rate."""
        c = self.config
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.plan = replace(self.plan, switch_at=epoch + 1)
        _scale_rates(self.optimizer, self.scheduler, c.lp_ft_factor)
        self.optimizer.state.clear()
        self._say(f"lp-ft: the probe ends after epoch {epoch + 1}: {why}; its best head (val accuracy "
                  f"{self.summary.best_val_accuracy or 0:.3f}, epoch {self.summary.best_epoch}) is restored and every "
                  f"block fine-tunes from epoch {epoch + 2} at {self.optimizer.param_groups[-1]['lr']:.3g} "
                  f"({c.lp_ft_factor:g} x the probe's rate)")

    def _check_frozen(self) -> str:
        """The freeze-integrity check of the saved best checkpoint (`freeze.IntegrityCheck`); raises
        ``FrozenBlocksChanged`` when it fails."""
        if self.integrity is None or self.best_state is None:
            return "no checkpoint was saved: nothing to check"
        return self.integrity.verify(self.best_state)

    def _inputs(self, epoch: int) -> "EpochInputs":
        """What blocks ``start``.. read this epoch: cached features of the frozen prefix where
        the prefix is a fixed function of the image, the decoded images otherwise."""
        c, d = self.config, self.data
        plain = EpochInputs(d.train.images, d.val.images, 0, self.prep, self.prep)
        start, why_not = self._cache_boundary(epoch)
        if why_not:
            self._note_cache(f"not caching: {why_not}; the frozen blocks run every epoch")
            return plain
        augmenting = self.prep.augment is not None
        view = epoch % c.augment_views + 1 if augmenting else 0
        train = self._cached("train", start, view)
        val = self._cached("val", start, 0)
        if train is None or val is None:
            return plain
        return EpochInputs(train, val, start, FeaturePrep(self.device), FeaturePrep(self.device))

    def _cache_boundary(self, epoch: int) -> tuple[int, str]:
        """The first block that trains in ``epoch``, and why its inputs cannot be cached ("" if they can)."""
        c = self.config
        start = self.model.block_names.index(self.plan.blocks[self.plan.first_trainable(epoch)])
        why_not = ("the feature cache is off" if not c.feature_cache else
                   "every block trains" if start == 0 else
                   "frozen BatchNorm layers run in train mode (bn_frozen is off), so their output changes"
                   if not c.bn_frozen else
                   "augmentation changes every image every epoch and augment_views is 0"
                   if self.prep.augment is not None and not c.augment_views else "")
        return start, why_not

    def _note_cache(self, note: str) -> None:
        if self.summary.feature_cache != note:
            self.summary.feature_cache = note
            self._say(note)

    def _cache_key(self, split: str, start: int, view: int) -> cache.CacheKey:
        """Everything that determines the output of blocks ..``start`` on ``split`` (view ``view``)."""
        c = self.config
        # --precision as asked: `auto` resolves the same way for the same prefix throughout a process
        # (its measurement is remembered), and the cache lives in one process
        inputs = self.prep.identity(train=view > 0) + (f"; views of seed {c.seed}" if view else "") + \
            ("" if c.precision == "fp32" else f"; precision {c.precision}") + \
            ("" if c.fast_prefix else "; eager prefix")
        # Of the model edits only truncation changes the cached prefix: it removes the blocks after its
        # block and may put another pool in, so a linear probe's prefix (all but the head) differs while
        # its boundary is still "head". Adapters and the head always train, so they are never cached.
        boundary = self.model.block_names[start] + (f" (truncated after {c.truncate_after})"
                                                     if c.truncate_after else "")
        return cache.CacheKey(c.backbone, self.weights_identity, boundary, inputs,
                              self.data_identity, split, cache.digest(getattr(self.data, split).indices), view)

    def _cached(self, split: str, start: int, view: int) -> torch.Tensor | None:
        c, decoded = self.config, getattr(self.data, split)
        key = self._cache_key(split, start, view)
        blocks = ", ".join(self.model.block_names[:start])
        found = self.shared_cache.get(key)
        if found is not None:
            if key not in self.computed:
                self._note_cache(f"training blocks {', '.join(self.model.block_names[start:])} on features of the "
                                 f"frozen blocks ({blocks}) cached by an earlier run")
            return found
        if (derived := self._derived(split, start, view)) is not None:
            return derived
        sample = self.prep(decoded.images[:_SAMPLE], train=False)
        fast = self._fast_prefix(start, sample)
        with torch.no_grad():
            one = fast.fn(sample[:1])
        fp32_bytes = one[0].numel() * 4 * len(decoded.labels)
        dtype = cache.storage_dtype(fp32_bytes, self.cache_budget, cache.free_memory_bytes(),
                                    self.caching_precision.dtype)
        need = fp32_bytes // 4 * (dtype or self.caching_precision.dtype).itemsize
        if dtype is None:
            self._note_cache(f"not caching: the features of {split} would take {need / 2**20:,.0f} MB, more than "
                             f"the cache's {self.cache_budget / 2**20:,.0f} MB budget; the frozen blocks run "
                             "every epoch")
            return None
        what = f"{split} view {view}" if view else split
        self._say(f"caching the output of {blocks} for {len(decoded.labels):,} {what} images "
                  f"({need / 2**20:,.1f} MB, {str(dtype)[6:]})")
        if view:
            torch.manual_seed(c.seed * 1000 + view)  # the same views in every run with this seed
        began = time.perf_counter()
        try:
            features = cache.compute(fast.fn, decoded.images, lambda x: self.prep(x, train=view > 0),
                                     batch_size=max(64, 2 * c.batch_size), dtype=dtype,
                                     should_stop=self.stop.is_set)
        finally:  # not training time: progress and time left leave it out, the summary reports it apart
            self.summary.cache_seconds += time.perf_counter() - began
        self.shared_cache.put(key, features, self.cache_budget)
        self.computed.add(key)
        self._note_cache(f"training blocks {', '.join(self.model.block_names[start:])} on cached features of "
                         f"the frozen blocks ({blocks})")
        return features

    def _derived(self, split: str, start: int, view: int) -> torch.Tensor | None:
        """The output of blocks ..``start`` as the next blocks applied to a cached output of an earlier
        boundary of the same images and inputs (a sweep's shallower member computed it): the frozen
        prefix runs once at the shallowest boundary, each deeper one costs its extra blocks alone.
        None when no earlier boundary is cached. The extra blocks compute in the precision the earlier
        features were computed in (bf16 features: bf16 autocast; fp32 or fp16-stored ones: fp32)."""
        earlier = next(((s, t) for s in range(start - 1, 0, -1)
                        if (t := self.shared_cache.get(self._cache_key(split, s, view))) is not None), None)
        if earlier is None:
            return None
        s, shallow = earlier
        names = self.model.block_names
        precision = "bf16" if shallow.dtype == torch.bfloat16 else "fp32"
        sample = shallow[:_SAMPLE].to(self.device).float()
        fast = fastpath.accelerate(self.model[s:start], sample, precision=precision, graph=self.config.fast_prefix,
                                   tolerance=(fastpath.AUTO_TOLERANCE if self.config.precision == "auto"
                                              else fastpath.TOLERANCE)[precision])
        self.summary.precision["caching"] = precision
        self.summary.precision["caching_reason"] = f"as the cached output of {names[s - 1]} it extends"
        self.summary.prefix = fast.note()
        self._say(f"caching the output of {', '.join(names[:start])} for {len(shallow):,} {split} images from the "
                  f"cached output of {names[s - 1]}: {', '.join(names[s:start])} applied to it ({fast.note()})")
        began = time.perf_counter()
        try:
            features = cache.compute(fast.fn, shallow, lambda x: x.to(self.device).float(),
                                     batch_size=max(64, 2 * self.config.batch_size), dtype=shallow.dtype,
                                     should_stop=self.stop.is_set)
        finally:
            self.summary.cache_seconds += time.perf_counter() - began
        key = self._cache_key(split, start, view)
        self.shared_cache.put(key, features, self.cache_budget)
        self.computed.add(key)
        self._note_cache(f"training blocks {', '.join(names[start:])} on cached features of the frozen blocks "
                         f"({', '.join(names[:start])}), derived from the cached output of {names[s - 1]}")
        return features

    def _speed_key(self, start: int, part: str) -> str:
        """What the speed of a part of this model depends on: its blocks, their edits, the input size."""
        c, names = self.config, self.model.block_names
        blocks = f"{names[0]}..{names[start - 1]}" if part == "caching" else f"{names[start]}.."
        edits = repr(c.edits())
        edited = "" if edits == repr(TrainConfig().edits()) else f" edited {hashlib.sha1(edits.encode()).hexdigest()[:8]}"
        # the caching pass's answer may be its accuracy check's, which depends on the weights too
        weights = f" {self.weights_identity}" if part == "caching" else ""
        return f"{c.backbone}{weights}{edited} [{blocks}] at {self.preprocessing.size} px"

    def _fast_prefix(self, start: int, sample: torch.Tensor) -> "fastpath.Accelerated":
        """Blocks ..``start`` as the fastest equivalent function, in the run's caching precision
        (decided here, once per boundary; `auto` measures both candidates on ``sample``)."""
        if start in self.prefixes:
            self.caching_precision = self.prefixes[start][0]
            return self.prefixes[start][1]
        began = time.perf_counter()
        fast, choice = fastpath.fastest(self.model[:start], sample, precision=self.config.precision,
                                        graph=self.config.fast_prefix, device=self.device, part="caching",
                                        key=self._speed_key(start, "caching"), what="the frozen blocks")
        self.summary.cache_seconds += time.perf_counter() - began
        self.prefixes[start] = (choice, fast)
        self.caching_precision = choice
        self.summary.precision["caching"], self.summary.precision["caching_reason"] = choice.name, choice.reason
        self.summary.prefix = fast.note()
        self._say(f"caching in {choice.name}: {choice.reason}")
        self._say(fast.note())
        return fast

    def _training_precision(self, inputs: "EpochInputs") -> Choice:
        """The precision the blocks from ``inputs.start`` train in, decided once per boundary;
        `auto` on a CPU measures a forward and backward pass of a small batch in each."""
        if inputs.start not in self.training_choices:
            choice = precisions.resolve(self.config.precision, self.device, part="training",
                                        key=self._speed_key(inputs.start, "training"),
                                        measure=self._training_step_timer(inputs))
            if self.ranks.active:  # every rank trains in rank 0's choice (its loss scaling, its autocast)
                choice = Choice(*distributed.broadcast((choice.name, choice.reason)))
            self.training_choices[inputs.start] = choice
            self.summary.precision["training"], self.summary.precision["training_reason"] = choice.name, choice.reason
            self._say(f"training in {choice.name}: {choice.reason}")
            if choice.name == "fp16" and self.scaler is None:
                self.scaler = choice.scaler(self.device)
        return self.training_choices[inputs.start]

    def _training_step_timer(self, inputs: "EpochInputs") -> Callable[[str], float]:
        """Seconds of one forward and backward pass of the first training images in a precision.
        It leaves no trace: the random state, BatchNorm's running statistics and the gradients are
        as they were, and no optimiser step is taken."""
        n = min(_SAMPLE, self.config.batch_size, len(self.data.train.labels))
        idx = torch.arange(n)
        labels = self.labels["train"][idx].to(self.device)

        def measure(name: str) -> float:
            buffers = {k: v.clone() for k, v in self.model.named_buffers()}
            with torch.random.fork_rng(devices=[]):
                self.model.train()
                x = inputs.prep(inputs.train[idx], train=True)
                began = time.perf_counter()
                with Choice(name, "").autocast(self.device.type):
                    loss = self.objective(self.model.forward_from(x, inputs.start), Batch(x, labels, idx)).loss
                loss.backward()
                seconds = time.perf_counter() - began
            self.model.zero_grad(set_to_none=True)
            with torch.no_grad():
                for k, v in self.model.named_buffers():
                    v.copy_(buffers[k])
            return seconds
        return measure

    def _step_reporter(self, epoch: int, started: float, images_before: int):
        c, total_steps = self.config, self.config.epochs * self.steps
        done_before = epoch * self.steps
        epoch_start = time.perf_counter()

        def on_step(step: int, loss: float, seen: int) -> None:
            elapsed = time.perf_counter() - started
            rate = seen / max(time.perf_counter() - epoch_start, 1e-9)
            left = elapsed / (done_before + step) * (total_steps - done_before - step)
            self.emit(events.Step(self.run_id, epoch + 1, step, self.steps, loss, rate, left))
        return on_step

    def _end_epoch(self, epoch: int, result: EpochResult, ev: Evaluation, lr: float, is_best: bool) -> None:
        figures = metrics.classification_figures(self.whole.val.labels.numpy(), ev.predictions, len(self.classes))
        trainable, _ = freeze.count_params(self.model)
        self.summary.trainable_params = trainable
        per_task = self._task_figures(result, ev)
        record = EpochRecord(epoch + 1, result.loss, result.accuracy, ev.loss, ev.accuracy, lr,
                             result.images / max(result.seconds, 1e-9), result.seconds, trainable, result.parts,
                             {name: {k: v for k, v in f.items() if k not in ("confusion", "report")}
                              for name, f in per_task.items()},
                             moved=self.anchor.moved(), l2sp_beta=self.l2sp.beta if self.l2sp else None)
        self.store.add_epoch(self.run_id, epoch + 1, record.to_dict())
        if is_best:
            self.summary.best_val_accuracy, self.summary.best_epoch = ev.accuracy, epoch + 1
            self.best_state, self.best_val = checkpoints.weights_only_dict(self.model), ev
            if self.ranks.leader:
                self.store.save_checkpoint(self.run_id, checkpoints.build(
                    self.model, self.config, self.classes, self.preprocessing, epoch + 1, ev.accuracy,
                    tasks={t.name: t.classes for t in self.tasks} if self.sizes else None))
            self.emit(events.CheckpointSaved(self.run_id, epoch + 1, ev.accuracy))
        report = {k: figures[k] for k in ("precision", "recall", "f1", "support")}
        self.emit(events.EpochEnded(self.run_id, epoch + 1, self.config.epochs, result.loss, result.accuracy, ev.loss,
                                    ev.accuracy, lr, record.images_per_second, result.seconds, trainable,
                                    figures["confusion"], report, is_best, record.parts, per_task,
                                    record.moved, record.l2sp_beta))

    def _task_figures(self, result: EpochResult, ev: Evaluation) -> dict:
        """Several tasks: each task's figures of the epoch, the best val accuracy of each kept in
        the summary ({} for one task)."""
        if not self.sizes:
            return {}
        weights = self._base_objective().weights() if isinstance(self._base_objective(), MultiTask) else {}
        out = {}
        for t, (task, tev) in enumerate(zip(self.tasks, ev.tasks)):
            figures = metrics.classification_figures(self.whole_labels["val"][:, t].numpy(), tev.predictions,
                                                     len(task.classes))
            out[task.name] = {"train_accuracy": result.accuracies.get(task.name), "val_accuracy": tev.accuracy,
                              "val_loss": tev.loss, "loss": result.parts.get(task.name),
                              "weight": weights.get(task.name), "confusion": figures["confusion"],
                              "report": {k: figures[k] for k in ("precision", "recall", "f1", "support")}}
            best = self.summary.tasks.get(task.name)
            self.summary.tasks[task.name] = tev.accuracy if best is None else max(best, tev.accuracy)
        return out

    def _final_evaluation(self) -> dict:
        """The best model on val and test: the figures the Runs and Inspect pages show."""
        if self.best_state is None:
            return {}
        self.model.load_state_dict(self.best_state)
        final = {}
        for name in ("val", "test"):
            split = getattr(self.whole, name)
            if split is None:
                continue
            try:
                ev = self.best_val if name == "val" else self._evaluate_split(name)
            except StopRequested as where:  # a Stop, now or during training: the checkpoint is kept, unevaluated
                self.stopped_at = self.stopped_at or where
                self._say(f"stopped: the best checkpoint was not evaluated on the {name} split")
                break
            final[name] = {"accuracy": ev.accuracy, "loss": ev.loss, "indices": split.indices.tolist(),
                           "labels": split.labels.tolist(),  # the first task's: paired comparisons read them
                           "losses": ev.losses.tolist(), "predictions": ev.predictions.tolist(),
                           **metrics.classification_figures(split.labels.numpy(), ev.predictions, len(self.classes))}
            if ev.tasks:  # several tasks: each task's figures of the best model, the first task's too
                final[name]["tasks"] = {
                    task.name: {"classes": list(task.classes), "accuracy": tev.accuracy, "loss": tev.loss,
                                "predictions": tev.predictions.tolist(),
                                **metrics.classification_figures(self.whole_labels[name][:, t].numpy(), tev.predictions,
                                                                 len(task.classes))}
                    for t, (task, tev) in enumerate(zip(self.tasks, ev.tasks))}
        if "test" in final:
            self.summary.test_accuracy = final["test"]["accuracy"]
        return final

    def _evaluate_split(self, name: str) -> Evaluation:
        """On the frozen prefix's cached features where the last epoch trained on them: the
        blocks before that epoch's boundary never changed, so they hold for the best model too."""
        split = getattr(self.data, name)
        images, start, prep = split.images, 0, self.prep
        boundary, why_not = self._cache_boundary(max(self.summary.epochs_run - 1, 0))
        cached = None if why_not else self._cached(name, boundary, 0)
        if cached is not None:
            images, start, prep = cached, boundary, FeaturePrep(self.device)
        return self._gathered(evaluate(self.model, images, self.labels[name], prep=prep, start=start,
                                       batch_size=2 * self.config.batch_size, precision=self.precision,
                                       sizes=self.sizes), name)

    def _finish(self, reason: str, message: str) -> dict:
        self.summary.stopped_reason = reason
        try:
            self.summary.frozen_check = self._check_frozen()
            self._say(f"freeze-integrity check: {self.summary.frozen_check}")
            self._say("evaluating the best checkpoint")
            final = self._final_evaluation()
        except Exception as err:
            return self._fail(err)
        if self.stop.is_set() and reason in ("completed", "early_stopping"):  # Stop during the final evaluation
            reason, message = "user", "stopped during the final evaluation; the best checkpoint is kept"
            self.summary.stopped_reason = reason
        status = "finished" if reason in ("completed", "early_stopping") else "stopped"
        self.summary.cpu_seconds = time.process_time() - self.cpu_began
        try:
            self.store.finish(self.run_id, status, self.summary.to_dict(), final, message)
        except StoreError as err:  # a full disk at the very end: the run fails, its checkpoint is kept
            return self._fail(err)
        if status == "finished":
            self.emit(events.RunFinished(self.run_id, self.summary.to_dict()))
        else:
            at = self.stopped_at
            self.emit(events.RunStopped(self.run_id, reason, message, self.summary.to_dict(),
                                        phase=at.phase if at else "", step=at.step if at else 0))
        return self.summary.to_dict()

    def _fail(self, err: Exception) -> dict:
        message = distributed.failure_message(err) if self.ranks.active and distributed.is_distributed_error(err) \
            else user_message(err, self.config.batch_size)
        self.summary.stopped_reason = "error"
        self.summary.cpu_seconds = time.process_time() - self.cpu_began
        if isinstance(err, freeze.FrozenBlocksChanged):
            self.summary.frozen_check = message
        try:  # the failure handler must not fail: a store that broke the run may refuse this write too
            self.store.finish(self.run_id, "failed", self.summary.to_dict(), {}, message)
        except Exception as again:
            if str(again) != message:
                message += f" (the failure could not be recorded either: {user_message(again)})"
        self.emit(events.RunFailed(self.run_id, message, self.summary.to_dict()))
        return self.summary.to_dict()


def _scale_rates(optimizer: torch.optim.Optimizer, scheduler, factor: float) -> None:
    """Every group's rate times ``factor``, and the schedule's record of the rates too, so that it goes on
    from the new ones: cosine and step scale the current rate, one-cycle reads its max, initial and min."""
    for group in optimizer.param_groups:
        for key in ("lr", "initial_lr", "max_lr", "min_lr"):
            if key in group:
                group[key] *= factor
    if scheduler is not None:
        scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]


@contextmanager
def _threads_for(model: backbones.BlockModel, start: int) -> Iterator[None]:
    """One CPU thread while only the head runs (on cached features). Its matrices are too small
    to share between cores, and a second thread that the OS has descheduled makes every op
    wait: an epoch of a linear probe on digits took 0.2 s with one thread and 4-6 s with two
    on a busy 2-core machine."""
    if start < len(model) - 1 or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def user_message(err: Exception, batch_size: int | None = None) -> str:
    """An exception in words: ours carry their own message; others name what happened."""
    if isinstance(err, torch.cuda.OutOfMemoryError):  # before ValueError: it is a RuntimeError, but be sure
        if batch_size and batch_size > 1:
            return (f"The GPU ran out of memory at batch size {batch_size}. Try batch size {batch_size // 2} "
                    "(or a smaller image size); the best checkpoint so far is kept.")
        return "The GPU ran out of memory even at batch size 1. Try a smaller image size or backbone."
    if isinstance(err, (data.DataError, backbones.WeightsUnavailable, ValueError, StoreError,
                        freeze.FrozenBlocksChanged)):
        return str(err)
    where = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    place = f" (in {where.name}, {where.filename.rsplit('/', 1)[-1]}:{where.lineno})" if where else ""
    return f"Training failed: {err.__class__.__name__}: {err}{place}"
