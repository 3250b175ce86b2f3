"""The teacher of a distillation run: a kept run's best model, refused in words when it cannot
teach this run, rebuilt as `predict` rebuilds it, and run once per image.

The teacher is frozen and evaluates un-augmented images prepared its own way (its checkpoint's
resize, crop, mean and std, which may differ from the student's backbone and size), so its
logits are a fixed function of each image: the engine computes them once per split and keeps
them in the feature cache beside the student's cached inputs.
"""
from __future__ import annotations

import zipfile
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ftlab.messages import printable, some
from ftlab.runs import RunRecord, RunStore, StoreError, check_run_id

if TYPE_CHECKING:
    import torch

    from ftlab.backbones import BlockModel
    from ftlab.transforms import Preprocessing


def _teaching_record(run_id: str, store: RunStore) -> RunRecord:
    """The teacher's record, or a ValueError that says why this run cannot teach."""
    run_id = run_id.strip()
    try:
        check_run_id(run_id)
    except KeyError as err:
        raise ValueError(f"teacher: {err.args[0]}: choose a finished run as the teacher.") from None
    try:
        record = store.get(run_id)
    except KeyError as err:
        raise ValueError(f"teacher: {err.args[0]} (it may have been deleted): choose a finished run as the "
                         "teacher.") from None
    except StoreError as err:
        raise ValueError(f"teacher: the run store cannot be read ({err}).") from None
    if record.status == "running":
        # a run whose process died (killed, a crash) reads as running until someone lists the runs: ask now,
        # so that its kept checkpoint can teach rather than the user waiting for an end that never comes
        with suppress(StoreError, KeyError):
            if store.mark_interrupted():
                record = store.get(run_id)
    if record.status == "running":
        raise ValueError(f"teacher run {run_id} is still training: wait until it ends, or choose a finished run.")
    checkpoint = store.checkpoint_path(run_id)
    if not checkpoint.is_file():
        why = f" ({printable(record.message)})" if record.message else ""
        raise ValueError(f"teacher run {run_id} has no checkpoint: it {record.status} before its first epoch"
                         f"{why}. Choose a run that trained at least one epoch.")
    # torch saves a zip, whose directory is at its end: a file cut short or replaced is found without loading it
    if not zipfile.is_zipfile(checkpoint):
        raise ValueError(f"teacher run {run_id}'s checkpoint ({printable(str(checkpoint))}) is damaged: it is cut "
                         "short or is not a file saved by torch. Choose another teacher.")
    return record


def self_taught(run_id: str, teacher: str) -> str:
    """The sentence refusing a run named as its own teacher ("" for another teacher)."""
    if teacher.strip() != run_id:
        return ""
    return (f"run {run_id} is named as its own teacher: a run cannot distil from itself (it has no checkpoint before "
            "it trains). Choose a finished run as the teacher.")


def class_problem(run_id: str, teacher_classes: list, classes: list) -> str:
    """The sentence refusing a teacher trained on another class list ("" when the lists hold the
    same names; their order may differ, the teacher's outputs are reordered)."""
    if set(map(str, teacher_classes)) == set(map(str, classes)):
        return ""
    missing = [c for c in classes if c not in teacher_classes]
    extra = [c for c in teacher_classes if c not in classes]
    words = "; ".join(w for w in ((f"it lacks {some(missing)}" if missing else ""),
                                  (f"it has {some(extra)} that this data set lacks" if extra else "")) if w)
    return (f"teacher run {run_id} was trained on other classes than this run's data ({words}): choose a teacher "
            "trained on the same classes.")


def problems(config, store: RunStore | None = None) -> list[str]:
    """What keeps ``config.teacher`` (a `TrainConfig`'s) from teaching, a sentence each: an id that
    is not a kept run's, a run still training or without a checkpoint, another class list (when the
    data set can be listed without a download; the engine checks again on the decoded data)."""
    store = store or RunStore()
    try:
        record = _teaching_record(config.teacher, store)
    except ValueError as err:
        return [str(err)]
    from ftlab import data

    try:
        classes = list(data.load_for(config, download=False).classes)
    except Exception:  # noqa: BLE001 - the data set's own check says what is wrong with it
        return []
    problem = class_problem(record.id, record.classes, classes)
    return [problem] if problem else []


@dataclass(frozen=True)
class Teacher:
    """A kept run's best model, ready to run on images prepared its way."""

    run_id: str
    label: str  # the run's label in listings
    model: "BlockModel"  # eval mode, no gradients
    preprocessing: "Preprocessing"  # the teacher's own: what its images must be decoded with
    order: "torch.Tensor"  # teacher output index of each of the run's classes, in the run's order
    identity: str  # what determines its outputs, for cache keys: the run and its checkpoint's epoch

    def logits(self, images: "torch.Tensor", device: "torch.device", batch_size: int = 128,
               should_stop: Callable[[], bool] = lambda: False) -> "torch.Tensor":
        """uint8 images (N, 3, S, S) at the teacher's size -> its logits (N, K) in the run's class
        order, in fp32 on the CPU: un-augmented, in eval mode, without gradients."""
        import torch

        from ftlab import cache
        from ftlab.transforms import Preprocess

        prep = Preprocess(self.preprocessing, device)
        with torch.no_grad():
            out = cache.compute(self.model.to(device), images, lambda x: prep(x, train=False),
                                batch_size=batch_size, dtype=torch.float32, should_stop=should_stop)
        out = out.float()[:, self.order]
        # finite weights can still overflow (the checkpoint check refuses inf and nan ones); inf logits would make
        # every student step nan, and the run would then blame its own learning rate
        if bad := int((~torch.isfinite(out)).any(1).sum()):
            raise ValueError(f"teacher run {self.run_id} gives logits that are not finite numbers (inf or nan) for "
                             f"{bad:,} of {len(out):,} images: its weights are too large to compute with. Choose "
                             "another teacher.")
        return out

    def recomputing(self, images: "torch.Tensor", device: "torch.device") -> Callable[["torch.Tensor"], "torch.Tensor"]:
        """The teacher run again on each batch, for `ftlab.objectives.Distillation` (``images``: the
        training split at the teacher's size): what the precomputed table saves, for benchmarks."""
        import torch

        from ftlab.transforms import Preprocess

        prep, model = Preprocess(self.preprocessing, device), self.model.to(device)

        def logits(index: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return model(prep(images[index], train=False)).float()[:, self.order.to(device)]
        return logits


def load(run_id: str, store: RunStore, classes: list) -> Teacher:
    """The teacher named by ``run_id``, for a run on ``classes``; a ValueError that says why not."""
    import torch

    from ftlab import checkpoints, explore

    run_id = run_id.strip()
    record = _teaching_record(run_id, store)
    try:
        checkpoint = store.load_checkpoint(run_id)
        model = checkpoints.load_model(checkpoint)
    except (checkpoints.CheckpointError, StoreError, OSError) as err:
        why = str(err).removeprefix("the checkpoint cannot be used: ")  # said once is enough
        raise ValueError(f"teacher run {run_id}'s checkpoint ({printable(str(store.checkpoint_path(run_id)))}) cannot "
                         f"be used: {why}. Choose another teacher.") from None
    taught = [str(c) for c in checkpoint["classes"]]
    if problem := class_problem(run_id, taught, list(classes)):
        raise ValueError(problem)
    for p in model.parameters():
        p.requires_grad_(False)
    order = torch.tensor([taught.index(str(c)) for c in classes])
    identity = f"run {run_id} epoch {checkpoint.get('epoch')} {Path(store.checkpoint_path(run_id)).stat().st_mtime_ns}"
    return Teacher(run_id, explore.record_label(record, with_id=False), model.eval(),
                   checkpoints.preprocessing(checkpoint), order, identity)


def accuracy(logits: "torch.Tensor", labels: "torch.Tensor") -> float:
    """The share of ``labels`` the logits' top class gets right."""
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else 0.0
