"""The closed list of things a training run reports, in the order it reports them.

RunStarted, then Preparing / Step / EpochEnded / CheckpointSaved while it trains, then
exactly one of RunFinished, RunStopped or RunFailed. Events are frozen: a listener reads
them and cannot change the run.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preparing:
    run_id: str
    message: str  # what is being done now: "decoding 1,797 images at 64 px"


@dataclass(frozen=True)
class RunStarted:
    run_id: str
    config: dict
    device: str
    classes: tuple[str, ...]
    split_sizes: dict  # {"train": n, "val": n, "test": n}
    trainable_params: int
    total_params: int
    skipped: tuple[str, ...] = ()  # files that failed to decode, with the reason
    tasks: dict = field(default_factory=dict)  # several tasks: {task: its classes}, the first task's first
    teacher: dict = field(default_factory=dict)  # distillation: the teacher's run_id, label, val_accuracy


@dataclass(frozen=True)
class Step:
    run_id: str
    epoch: int  # 1-based
    step: int  # 1-based within the epoch
    steps: int  # steps in this epoch
    loss: float
    images_per_second: float  # this epoch's training so far; the caching pass before it is left out
    seconds_left: float  # estimate for the whole run, from its time so far less the caching passes


@dataclass(frozen=True)
class EpochEnded:
    run_id: str
    epoch: int  # 1-based
    epochs: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float  # the head's learning rate during the epoch
    images_per_second: float
    seconds: float
    trainable_params: int
    confusion: list  # val confusion matrix, rows true, columns predicted
    report: dict  # per-class precision, recall, f1, support
    is_best: bool = False
    parts: dict = field(default_factory=dict)  # the mean of each named part of the training loss
    # several tasks: {task: the EpochRecord's figures of it, plus its val confusion and report} ({}: one task)
    tasks: dict = field(default_factory=dict)
    moved: dict = field(default_factory=dict)  # per block, ||theta - theta0|| / ||theta0|| (EpochRecord.moved)
    l2sp_beta: float | None = None  # the L2-SP beta of the epoch (None: no L2-SP)


@dataclass(frozen=True)
class CheckpointSaved:
    run_id: str
    epoch: int
    val_accuracy: float


@dataclass(frozen=True)
class RunFinished:
    run_id: str
    summary: dict


@dataclass(frozen=True)
class RunStopped:
    run_id: str
    reason: str  # "user", "early_stopping", "non_finite_loss"
    message: str
    summary: dict
    # where a user's stop landed: the phase (preparing, caching, training, evaluating) and its batch
    # (1-based) that did not begin; "" and 0 for the other reasons
    phase: str = ""
    step: int = 0


@dataclass(frozen=True)
class RunFailed:
    run_id: str
    message: str  # in words, for the user
    summary: dict = field(default_factory=dict)


Event = Preparing | RunStarted | Step | EpochEnded | CheckpointSaved | RunFinished | RunStopped | RunFailed
END_EVENTS = (RunFinished, RunStopped, RunFailed)
