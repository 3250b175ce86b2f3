"""What a run records: its summary and one record per epoch, as dataclasses whose ``to_dict``
is the JSON contract (`python -m ftlab train --json`, the run store, the events)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class RunSummary:
    """A run's figures so far; the last one is the run's result."""

    run_id: str
    dataset: str
    backbone: str
    strategy: str
    epochs_run: int = 0
    best_val_accuracy: float | None = None
    best_epoch: int | None = None
    test_accuracy: float | None = None
    train_seconds: float = 0.0  # the training passes alone: not decoding, caching or evaluation
    images_per_second: float = 0.0
    trainable_params: int = 0
    total_params: int = 0
    device: str = "cpu"
    stopped_reason: str | None = None  # completed, early_stopping, user, non_finite_loss, error
    skipped_files: int = 0
    image_size: int | None = None
    feature_cache: str | None = None  # what the feature cache did, in words
    cache_seconds: float = 0.0  # computing cached features, reported apart from training
    # the number format of each part and why: {"training": "bf16", "training_reason": "auto: ...",
    # "caching": ..., "caching_reason": ...} (no caching keys where nothing was cached)
    precision: dict = field(default_factory=dict)
    prefix: str | None = None  # how the frozen prefix ran for the cache, and its check against eager fp32
    tasks: dict = field(default_factory=dict)  # several tasks: {task: its best val accuracy}, the first task's first
    teacher: dict = field(default_factory=dict)  # distillation: {"run_id", "label", "val_accuracy"} ({}: none)
    cpu_seconds: float = 0.0  # CPU time of the whole run (decoding, caching, training, evaluation), all threads
    trained_blocks: int | None = None  # backbone blocks that trained at some epoch (the freeze depth's other side)
    frozen_check: str = ""  # the freeze-integrity check: the frozen blocks' weights and buffers unchanged, in words

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's figures, as the run store keeps them and the curves draw them."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    images_per_second: float
    seconds: float
    trainable_params: int
    parts: dict = field(default_factory=dict)  # the mean of each named part of the training loss ({} for plain CE)
    # several tasks: {task: {train_accuracy, val_accuracy, val_loss, loss (its training CE), weight}} ({}: one task)
    tasks: dict = field(default_factory=dict)
    # per block, ||theta - theta0|| / ||theta0|| at the epoch's end: how far training moved it from where the run
    # began (the pretrained weights; the new head's and adapters' initialisation); 0 for a block not yet trained
    moved: dict = field(default_factory=dict)
    l2sp_beta: float | None = None  # the L2-SP beta this epoch trained with (None: no L2-SP)

    def to_dict(self) -> dict:
        return asdict(self)
