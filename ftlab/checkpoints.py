"""The checkpoint format: what a kept model is made of, how it is checked, and how it is rebuilt.

A checkpoint is one dict of plain types (``torch.load(weights_only=True)`` accepts it): the
weights, the backbone and class names, the run's config, and the preprocessing its images
had, so that prediction and export rebuild the model and its inputs without the engine. The
run store (`ftlab.runs`) only writes and reads the file.
"""
from __future__ import annotations

import math
import typing
from pathlib import Path

import torch
from torch import nn

from ftlab import backbones, safeload
from ftlab.edits import ModelEdits, block_names
from ftlab.errors import CheckpointError  # noqa: F401  (raised here; callers import it from here)
from ftlab.transforms import Preprocessing


def build(model: backbones.BlockModel, config, classes: tuple[str, ...], preprocessing: Preprocessing,
          epoch: int, val_accuracy: float, tasks: dict[str, tuple[str, ...]] | None = None) -> dict:
    """Everything needed to rebuild and use ``model`` (trained with ``config``, a `TrainConfig`).
    With several tasks, ``tasks`` names each task's classes in the order of the model's heads
    (the first is ``classes``); ``num_classes`` and ``classes`` stay the first task's."""
    checkpoint = {"model": weights_only_dict(model), "backbone": model.backbone, "num_classes": model.num_classes,
                  "classes": list(classes), "image_size": preprocessing.size, "preprocessing": preprocessing.to_dict(),
                  "hidden": config.hidden, "dropout": config.dropout, "edits": config.edits().to_dict(),
                  "config": config.to_dict(), "epoch": epoch, "val_accuracy": val_accuracy}
    if tasks and len(tasks) > 1:
        checkpoint["tasks"] = [{"name": name, "classes": list(names)} for name, names in tasks.items()]
    return checkpoint


def tasks(checkpoint: dict) -> list[tuple[str, list[str]]]:
    """Each task the checkpoint's model predicts, as (name, classes), its first task first; a
    checkpoint of one task (every one before several tasks existed) has one, named after its config."""
    if isinstance(checkpoint.get("tasks"), list) and len(checkpoint["tasks"]) > 1:
        return [(t["name"], list(t["classes"])) for t in checkpoint["tasks"]]
    return [("class", list(checkpoint["classes"]))]


def task_sizes(checkpoint: dict) -> tuple[int, ...]:
    """Each task's class count where the model has several heads (one task: ())."""
    found = tasks(checkpoint)
    return tuple(len(classes) for _, classes in found) if len(found) > 1 else ()


def load_file(path: Path) -> dict:
    """A checkpoint file, unpickled safely; its contents are checked by `load_model`."""
    try:
        checkpoint = safeload.load(path)
    except safeload.RefusedFile as err:
        raise CheckpointError(f"{path} could not be loaded safely: {err}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict) \
            or "backbone" not in checkpoint:
        raise CheckpointError(f"{path} is not an ftlab checkpoint")
    return checkpoint


def preprocessing(checkpoint: dict) -> Preprocessing:
    """The preprocessing the checkpoint's model was trained and evaluated with. Checkpoints
    written before it was recorded resized the shorter side straight to the image size."""
    if isinstance(checkpoint.get("preprocessing"), dict):
        return Preprocessing.from_dict(checkpoint["preprocessing"])
    spec = backbones.get_spec(checkpoint["backbone"])
    size = int(checkpoint["image_size"])
    return Preprocessing(size, size, tuple(spec.mean), tuple(spec.std))


def _option_problems(values: dict) -> list[str]:
    """Options of a checkpoint whose type or range TrainConfig would not allow."""
    from ftlab.config import option_type, options

    problems = []
    for f in options():
        if f.name not in values or (values[f.name] is None and f.default is None):
            continue
        value, kind, meta = values[f.name], option_type(f), f.metadata
        if typing.get_origin(kind) is tuple:  # frozen_blocks, head, adapter_after: lists in JSON
            item = typing.get_args(kind)[0]
            ok = isinstance(value, (list, tuple)) and all(isinstance(v, item) and not isinstance(v, bool)
                                                          for v in value)
            wanted = "a list of whole numbers" if item is int else "a list of names"
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            wanted = kind.__name__
        else:
            ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
            wanted = kind.__name__
        if not ok:
            problems.append(f"{f.name} is {type(value).__name__} {str(value)[:40]!r}, not {wanted}")
        elif meta["choices"] and value not in meta["choices"]:
            problems.append(f"{f.name} {value!r} is not one of {', '.join(meta['choices'])}")
        elif meta["lo"] is not None and kind is not bool and not meta["lo"] <= value <= meta["hi"]:
            problems.append(f"{f.name} {value:g} is outside {meta['lo']:g}..{meta['hi']:g}")
    return problems


def _preprocessing_problems(checkpoint: dict) -> list[str]:
    d = checkpoint.get("preprocessing")
    if d is None:
        return []
    try:
        p = Preprocessing.from_dict(d)
    except (KeyError, TypeError, ValueError):
        return ["its preprocessing is not a size, a resize, a mean and a std"]
    if len(p.mean) != 3 or len(p.std) != 3 or not all(math.isfinite(v) for v in p.mean + p.std) \
            or min(p.std) <= 0:
        return ["its preprocessing's mean and std are not three finite numbers each (std above 0)"]
    if not 16 <= p.size <= p.resize <= 8 * p.size or p.size != checkpoint.get("image_size"):
        return [f"its preprocessing (resize {p.resize}, crop {p.size}) does not fit its image size "
                f"{checkpoint.get('image_size')!r}"]
    return []


def edits(checkpoint: dict) -> ModelEdits:
    """The model edits the checkpoint's model was built with. Checkpoints written before edits
    existed name only ``hidden`` and ``dropout``: the head ``()`` or ``(hidden,)``."""
    d = checkpoint.get("edits")
    if d is None:
        d = {"hidden": checkpoint.get("hidden", 0), "dropout": float(checkpoint.get("dropout", 0.0))}
    if not isinstance(d, dict):
        raise ValueError(f"edits must be a mapping of edit options (got {type(d).__name__})")
    return ModelEdits.from_dict(d)


def _edits_problems(checkpoint: dict) -> list[str]:
    try:
        found = edits(checkpoint).problems(block_names(checkpoint["backbone"]))
    except ValueError as err:  # a value of the wrong type
        return [f"its model edits do not describe a model: {err}"]
    return [f"its model edits: {p}" for p in found]


def problems(checkpoint: dict) -> list[str]:
    """What in a checkpoint's metadata does not describe a usable model, in words (none: usable).
    The metadata is checked before anything is built from it: a crafted file must neither
    crash a page nor yield outputs cut to a shorter class list."""
    name = checkpoint.get("backbone")
    if not isinstance(name, str) or name not in backbones.list_backbones():
        return [f"names no usable model: unknown backbone {str(name)[:40]!r}"]
    found = _option_problems({k: checkpoint.get(k, 0) for k in ("hidden", "dropout")}
                             | {"image_size": checkpoint.get("image_size")})
    if checkpoint.get("image_size") is None:
        found.append("it states no image size")
    config = checkpoint.get("config", {})
    if isinstance(config, dict):
        found += [f"its config: {p}" for p in _option_problems(config)]
    else:
        found.append(f"its config is {type(config).__name__}, not a mapping of options")
    if not found:
        found += _preprocessing_problems(checkpoint) + _edits_problems(checkpoint)
    state = checkpoint["model"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        return found + ["its model holds something other than named tensors"]
    n, classes = checkpoint.get("num_classes"), checkpoint.get("classes")
    if "tasks" in checkpoint:
        return found + _tasks_problems(checkpoint, state)
    heads = [v for k, v in state.items() if k.startswith("head.") and k.endswith(".weight") and v.dim() == 2]
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        found.append(f"its class count {str(n)[:20]!r} is not a whole number of at least 2")
    elif not heads or heads[-1].shape[0] != n:  # before building: a crafted count must not size a huge head
        found.append(f"does not fit {name} with {n} classes (its head has "
                     f"{heads[-1].shape[0] if heads else 'no'} outputs)")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        found.append("its class list is not a list of names")
    elif isinstance(n, int) and len(classes) != n:
        found.append(f"it names {len(classes)} classes for a model with {n} outputs")
    elif len(set(classes)) != len(classes):
        found.append("its class list names a class twice")
    if any(v.is_floating_point() and not torch.isfinite(v).all() for v in state.values()):
        found.append("its weights hold NaN or infinite values")
    return found


def _tasks_problems(checkpoint: dict, state: dict) -> list[str]:
    """What in a several-task checkpoint's task list does not fit its heads or its class list."""
    listed = checkpoint["tasks"]
    if not isinstance(listed, list) or len(listed) < 2 or not all(
            isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("classes"), list)
            and all(isinstance(c, str) for c in t["classes"]) and len(t["classes"]) >= 2 for t in listed):
        return ["its task list is not two or more tasks, each a name and a list of at least 2 class names"]
    found = []
    if len({t["name"] for t in listed}) < len(listed):
        found.append("its task list names a task twice")
    if listed[0]["classes"] != checkpoint.get("classes") or checkpoint.get("num_classes") != len(listed[0]["classes"]):
        found.append("its first task's classes are not its class list")
    for i, t in enumerate(listed):  # before building: a crafted count must not size a huge head
        heads = [v for k, v in state.items() if k.startswith(f"head.{i}.") and k.endswith(".weight") and v.dim() == 2]
        if not heads or heads[-1].shape[0] != len(t["classes"]):
            found.append(f"its head for task {t['name'][:40]!r} does not have {len(t['classes'])} outputs")
        elif len(set(t["classes"])) != len(t["classes"]):
            found.append(f"its task {t['name'][:40]!r} names a class twice")
    if any(v.is_floating_point() and not torch.isfinite(v).all() for v in state.values()):
        found.append("its weights hold NaN or infinite values")
    return found


def load_model(checkpoint: dict) -> backbones.BlockModel:
    """The checkpoint's model in eval mode, refusing one whose metadata or tensors do not fit its
    stated architecture."""
    if found := problems(checkpoint):
        raise CheckpointError(f"the checkpoint cannot be used: {'; '.join(found)}")
    try:
        model = backbones.create_model(checkpoint["backbone"], task_sizes(checkpoint) or int(checkpoint["num_classes"]),
                                       "random",
                                       edits=edits(checkpoint), image_size=int(checkpoint["image_size"]))
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"the checkpoint names no usable model: {err}") from None
    state = checkpoint["model"]
    own = model.state_dict()
    # both ways: tensors of blocks the edits do not build (an adapter left out) are a misfit too
    wrong = [k for k in own if k not in state or state[k].shape != own[k].shape] + [k for k in state if k not in own]
    if wrong:
        raise CheckpointError(f"the checkpoint does not fit {checkpoint['backbone']} with "
                              f"{checkpoint['num_classes']} classes ({len(wrong)} tensors missing or of another "
                              f"shape, first {wrong[0]})")
    model.load_state_dict(state)
    return model.eval()


def weights_only_dict(model: nn.Module) -> dict:
    """A model's tensors as a checkpoint holds them: detached copies on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
