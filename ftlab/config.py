"""A run's configuration: one frozen dataclass, every default in one place.

Making a ``TrainConfig`` does no work and checks nothing; ``validate`` returns every
problem at once, in words a user understands. The CLI and the app build their options
from the fields and their metadata, so a default or a range is written only here.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftlab import paths
from ftlab.edit_options import ACTIVATIONS, ModelEdits
from ftlab.messages import some
from ftlab.tasks import WEIGHTINGS as TASK_WEIGHTINGS
from ftlab import tasks as task_options

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "cosine", "onecycle", "step")
CLASS_WEIGHTING = ("none", "balanced")
DEVICES = ("auto", "cuda", "mps", "cpu")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # ftlab.precision says what each does
L2SP_MAX = 10.0  # beta: at 10 the pull dominates any classification loss; Li et al. use 0.01 to 1
MAX_NAME = 80  # characters of a run's name: a label for lists, not a description


def _opt(default: Any, help: str, *, lo: float | None = None, hi: float | None = None,
         choices: tuple[str, ...] | None = None, section: str = "training") -> Any:
    meta = {"help": help, "lo": lo, "hi": hi, "choices": choices, "section": section}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    # the run
    name: str = _opt("", "a name for the run in listings (default: data · backbone · strategy · key options)",
                     section="run")
    sweep: str = _opt("", "the sweep this run is a member of (`python -m ftlab sweep` sets it; empty: none)",
                      section="run")
    # data
    dataset: str = _opt("digits", "registered data set name, or a folder / .zip in class-subfolder layout",
                        section="data")
    val_fraction: float = _opt(0.2, "share of the data carved out for validation when the source has no val split",
                               lo=0.05, hi=0.5, section="data")
    test_fraction: float = _opt(0.0, "share carved out for a test split when the source has none (0: no test)",
                                lo=0.0, hi=0.5, section="data")
    imbalance_ratio: float = _opt(1.0, "subsample the training split to a long tail with this max/min ratio "
                                  "(1: leave it as it is)", lo=1.0, hi=1000.0, section="data")
    shapes_classes: int = _opt(4, "shapes data set: number of shape classes", lo=2, hi=8, section="data")
    shapes_per_class: int = _opt(120, "shapes data set: images per class", lo=2, hi=5000, section="data")
    shapes_noise: float = _opt(0.15, "shapes data set: background noise level", lo=0.0, hi=1.0, section="data")
    # model
    backbone: str = _opt("efficientnet_lite0", "backbone name (see `python -m ftlab backbones`)", section="model")
    weights: str = _opt("imagenet", "imagenet, random, or the path of a weights file", section="model")
    hidden: int = _opt(0, "hidden units in the new head (0: a single linear layer); the same as --head H",
                       lo=0, hi=8192, section="model")
    head: tuple[int, ...] = _opt((), "hidden layer widths of the new head, e.g. 512,128 (none: a single linear "
                                 "layer)", section="model")
    activation: str = _opt("relu", "activation between the head's hidden layers", choices=ACTIVATIONS,
                           section="model")
    dropout: float = _opt(0.0, "dropout before the new head's linear layers", lo=0.0, hi=0.9, section="model")
    head_batchnorm: bool = _opt(False, "BatchNorm between each hidden layer of the head and its activation",
                                section="model")
    truncate_after: str = _opt("", "remove the blocks after this one and put the head on its pooled output: a "
                               "smaller, faster model on mid-level features (a block name, e.g. stage5; a "
                               "wrong name lists the backbone's blocks)", section="model")
    adapter_after: tuple[str, ...] = _opt((), "insert a small residual bottleneck (zero-initialised, always "
                                          "trains) after each of these blocks, e.g. stage5,stage6",
                                          section="model")
    adapter_dim: int = _opt(64, "channels of each adapter's bottleneck", lo=1, hi=8192, section="model")
    # freezing
    strategy: str = _opt("linear-probe", "linear-probe, top-N (e.g. top-2; top-all: every block; top-BLOCK, e.g. "
                         "top-stage6: that block and every block above it), full, gradual, or lp-ft (a linear probe "
                         "to convergence, then full fine-tuning from its head)", section="freezing")
    gradual_every: int = _opt(2, "gradual: unfreeze one more block from the top every k epochs", lo=1, hi=100,
                              section="freezing")
    lp_patience: int = _opt(2, "lp-ft: the probe has converged when its val accuracy has not improved for this many "
                            "epochs", lo=1, hi=1000, section="freezing")
    lp_epochs: int = _opt(0, "lp-ft: the most epochs the probe takes (0: half the epochs)", lo=0, hi=1000,
                          section="freezing")
    lp_ft_factor: float = _opt(0.1, "lp-ft: after the probe every block trains at this factor times the probe's rate "
                               "(each group's; 0.1 makes the probe's 0.003 full fine-tuning's 0.0003)",
                               lo=0.001, hi=1.0, section="freezing")
    frozen_blocks: tuple[str, ...] | None = _opt(None, "freeze exactly these blocks (overrides --strategy)",
                                                 section="freezing")
    lr_decay: float = _opt(1.0, "discriminative rates: each block's learning rate is this factor times the "
                           "rate of the block above it (1: one rate for all)", lo=0.01, hi=1.0,
                           section="freezing")
    bn_frozen: bool = _opt(True, "frozen blocks keep their BatchNorm statistics (eval mode)", section="freezing")
    # training
    optimizer: str = _opt("adamw", "optimiser", choices=OPTIMIZERS)
    lr: float | None = _opt(None, "learning rate of the head (default: 0.003 for a linear probe and lp-ft's probe, "
                            "0.001 for top-N and gradual, 0.0003 for full fine-tuning)", lo=1e-7, hi=10.0)
    momentum: float = _opt(0.9, "SGD momentum", lo=0.0, hi=0.999)
    weight_decay: float = _opt(1e-4, "weight decay of weight matrices and kernels (biases and norm scales are "
                               "not decayed, as in timm and nanoGPT)", lo=0.0, hi=1.0)
    epochs: int = _opt(5, "epochs", lo=1, hi=1000)
    batch_size: int = _opt(32, "images per batch", lo=1, hi=4096)
    image_size: int | None = _opt(None, "image side in pixels (default: the backbone's own)", lo=16, hi=1024)
    grad_clip: float = _opt(0.0, "clip the gradient norm to this value (0: off)", lo=0.0, hi=1000.0)
    label_smoothing: float = _opt(0.0, "label smoothing", lo=0.0, hi=0.5)
    random_crop: bool = _opt(False, "augment: random resized crop")
    flip: bool = _opt(False, "augment: random horizontal flip")
    color_jitter: float = _opt(0.0, "augment: colour jitter strength (0: off)", lo=0.0, hi=1.0)
    schedule: str = _opt("none", "learning-rate schedule", choices=SCHEDULES)
    step_size: int = _opt(7, "step schedule: epochs between decays", lo=1, hi=1000)
    gamma: float = _opt(0.1, "step schedule: decay factor", lo=0.001, hi=1.0)
    early_stopping: int = _opt(0, "stop after this many epochs without a better val accuracy (0: off)", lo=0,
                               hi=1000)
    class_weighting: str = _opt("none", "weight the loss by inverse class frequency", choices=CLASS_WEIGHTING)
    balanced_sampling: bool = _opt(False, "draw training batches with every class equally likely (several tasks: "
                                   "the first task's classes; --class-weighting balanced weights each task's loss by "
                                   "its own classes)")
    seed: int = _opt(0, "random seed (split, initialisation, batches)", lo=0, hi=2**31 - 1)
    train_per_class: int = _opt(0, "train on at most this many images per class, drawn from the training split "
                                "(0: all of them); the val split stays whole: a data-efficiency point",
                                lo=0, hi=1_000_000, section="data")
    split_seed: int | None = _opt(None, "seed of the train/val/test split alone (default: --seed); a sweep holds it "
                                  "fixed, so every member is scored on the same val images", lo=0, hi=2**31 - 1,
                                  section="data")
    drop_duplicates: bool = _opt(False, "leave near-duplicate images out of the run: each validation (and test) image "
                                 "that nearly copies a training image, and all but the first of each group of "
                                 "training images that nearly copy each other (cosine similarity of the backbone's "
                                 "centred, pooled features at least 0.75; random weights: EfficientNet-Lite0's "
                                 "ImageNet features judge)", section="data")
    # several tasks (ftlab.tasks): the data set's first task always trains; these add its further tasks
    tasks: str = _opt("", "several tasks: the data set's tasks to train, one head each on the shared backbone, a "
                      "comma list (e.g. shape,colour) or all (default: the first task only)", section="objective")
    task_weighting: str = _opt("fixed", "several tasks: fixed weights per task (--task-weights), or uncertainty "
                               "weighting, which learns them (Kendall et al. 2018)", choices=TASK_WEIGHTINGS,
                               section="objective")
    task_weights: str = _opt("", "several tasks, fixed weighting: each task's weight in the loss, in the order of "
                             "--tasks, e.g. 1,0.5 (default: 1 each)", section="objective")
    feature_cache: bool = _opt(True, "compute the frozen blocks once per image and train the rest on the stored "
                               "features (needs frozen BatchNorm, and no augmentation or --augment-views)",
                               section="speed")
    augment_views: int = _opt(0, "with augmentation and the feature cache: store this many augmented views per "
                              "image (0: run the frozen blocks every epoch instead)", lo=0, hi=64, section="speed")
    fast_prefix: bool = _opt(True, "run the cached frozen blocks as one TorchScript graph with BatchNorm folded into "
                             "the convolutions, checked against the blocks as they are first (off: as they are)",
                             section="speed")
    cache_memory_mb: int = _opt(0, "memory budget of the feature cache in MB (0: a quarter of the free memory)",
                                lo=0, hi=1_000_000, section="speed")
    device: str = _opt("auto", "auto picks CUDA, then MPS, then CPU", choices=DEVICES)
    # objective: L2-SP (Li et al. 2018) pulls the trained backbone blocks toward their pretrained weights
    l2sp: float = _opt(0.0, "L2-SP: add beta/2 * ||theta - theta0||^2 toward the pretrained weights of the backbone "
                       "blocks that train (their weight decay toward 0 is then off; the new head keeps its weight "
                       "decay); 0: off", lo=0.0, hi=L2SP_MAX, section="objective")
    l2sp_adaptive: bool = _opt(False, "L2-SP: move beta each epoch with the generalisation gap (train - val accuracy), "
                               "from --l2sp's beta and within a tenth to ten times it", section="objective")
    precision: str = _opt("auto", "number format of the caching pass and of training: auto takes bf16 (or fp16) "
                          "autocast where the device has it and, on a CPU, a short measurement shows it faster; "
                          "else fp32", choices=PRECISIONS, section="speed")
    # objective: distillation from a kept run (Hinton et al. 2015)
    teacher: str = _opt("", "distil from this kept run (its id, see `python -m ftlab runs`): a finished run on the "
                        "same classes, usually another backbone; empty: no teacher", section="objective")
    distill_temperature: float = _opt(4.0, "distillation: the temperature T that softens both models' logits "
                                      "(the KD part is scaled by T^2)", lo=0.05, hi=100.0, section="objective")
    distill_alpha: float = _opt(0.5, "distillation: the weight a of the KD part; the cross-entropy on the labels "
                                "gets 1 - a", lo=0.0, hi=1.0, section="objective")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["frozen_blocks"] = list(self.frozen_blocks) if self.frozen_blocks is not None else None
        d["head"], d["adapter_after"] = list(self.head), list(self.adapter_after)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        if "amp" in d and "precision" not in d:  # a record from before --precision: amp was CUDA autocast
            d = {**d, "precision": "auto" if d["amp"] else "fp32"}
        d = {k: v for k, v in d.items() if k in names}
        for name in ("frozen_blocks", "head", "adapter_after"):  # JSON lists back to tuples
            if isinstance(d.get(name), list):
                d[name] = tuple(d[name])
        return cls(**d)

    def edits(self) -> ModelEdits:
        """The model edits these options ask for. ``hidden`` is the option from before edits:
        ``hidden=h`` is the head ``(h,)`` (``validate`` refuses both given and different)."""
        head = self.head or ((self.hidden,) if self.hidden else ())
        return ModelEdits(head=tuple(head), activation=self.activation, dropout=self.dropout,
                          head_batchnorm=self.head_batchnorm, truncate_after=self.truncate_after,
                          adapter_after=tuple(self.adapter_after), adapter_dim=self.adapter_dim)


@dataclass(frozen=True)
class PredictOptions:
    """What ``python -m ftlab predict`` and the Inspect page's prediction take."""

    run: str = _opt("", "run id (see `python -m ftlab runs`)", section="predict")
    image: str = _opt("", "image file", section="predict")
    top_k: int = _opt(5, "how many of the most likely classes to list (at most the run's classes)", lo=1,
                      hi=100_000, section="predict")


def options() -> list[dataclasses.Field]:
    return list(dataclasses.fields(TrainConfig))


def option_type(f: dataclasses.Field, options_class: type = TrainConfig) -> type:
    """The value type of an option: ``int`` for ``int | None``, for building widgets and flags."""
    t = typing.get_type_hints(options_class)[f.name]
    if isinstance(t, types.UnionType):
        return next(a for a in typing.get_args(t) if a is not type(None))
    return t


_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a text"}


def _wrong_type(value: Any, kind: type) -> str:
    """What ``value`` should have been, or "" when it is of ``kind`` (a config from a dict or the API)."""
    if typing.get_origin(kind) is tuple:
        if typing.get_args(kind)[0] is int:
            ok = isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            return "" if ok else "a tuple of whole numbers"
        return "" if isinstance(value, tuple) and all(isinstance(v, str) for v in value) else "a tuple of block names"
    ok = isinstance(value, bool) if kind is bool else \
        isinstance(value, (int, float) if kind is float else kind) and not isinstance(value, bool)
    return "" if ok else _WORDS.get(kind, kind.__name__)


def validate(config: TrainConfig | PredictOptions, only: tuple[str, ...] | None = None, store=None) -> list[str]:
    """Every problem with a command's options (a ``TrainConfig`` for ``train``, ``PredictOptions``
    for ``predict``; ``only`` the fields a command takes, as ``stats`` does), each a sentence
    that says what is allowed. A whole ``TrainConfig`` is also checked against the backbone's
    blocks and the devices here, and every config against the environment settings, so that a
    run fails before any work rather than after decoding. A teacher is looked up in ``store`` (a
    `RunStore`; default the one under FTLAB_HOME); ``--tasks`` are looked up in the data set where
    it can be listed without a download (`ftlab.tasks.data_problems`)."""
    problems, mistyped = [], []
    for f in dataclasses.fields(config):
        if only is not None and f.name not in only:
            continue
        value = getattr(config, f.name)
        lo, hi, choices = f.metadata["lo"], f.metadata["hi"], f.metadata["choices"]
        if value is None:
            continue
        if expected := _wrong_type(value, option_type(f, type(config))):
            mistyped.append(f"{f.name} must be {expected} (got {repr(value)[:80]}).")
            continue
        if choices and value not in choices:
            problems.append(f"{f.name} must be one of {some(choices)} (got {value!r}).")
        if lo is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value) or not lo <= value <= hi:
                problems.append(f"{f.name} must be between {_shown(lo)} and {_shown(hi)} (got {_shown(value)}).")
    if mistyped:  # the checks below read the values
        return mistyped + problems
    if isinstance(config, PredictOptions):
        problems += [f"no {name} given: {what}." for name, what in (("run", "give a run id (see `python -m ftlab "
                     "runs`)"), ("image", "give the path of an image file")) if not getattr(config, name).strip()]
    if isinstance(config, TrainConfig):
        if config.val_fraction + config.test_fraction >= 1:
            problems.append(f"val_fraction ({config.val_fraction:g}) and test_fraction ({config.test_fraction:g}) "
                            "leave nothing to train on: together they must be less than 1.")
        dataset_problems = _check_dataset(config.dataset)
        task_problems = task_options.config_problems(config)
        problems += dataset_problems + task_problems
        if config.l2sp_adaptive and not config.l2sp:
            problems.append("l2sp_adaptive moves the L2-SP beta from the one --l2sp gives, and --l2sp is 0 (off): "
                            "give --l2sp BETA above 0 to start from (e.g. 0.01), or leave --l2sp-adaptive off.")
        if len(config.name) > MAX_NAME or not config.name.isprintable():
            shown = repr(config.name[:60]) + ("…" if len(config.name) > 60 else "")
            problems.append(f"name must be at most {MAX_NAME} printable characters on one line (got {shown}).")
        if only is None:
            problems += _check_names(config) + _check_device(config.device)
            if not dataset_problems and not task_problems:  # the task names against the data, where it is here
                problems += task_options.data_problems(config)
            if config.teacher.strip():
                from ftlab import teacher

                problems += teacher.problems(config, store)
    return problems + paths.setting_problems()


def _shown(x: float) -> str:
    """A bound or a value as a user typed it: whole numbers in full, others in the shortest form.

    >>> _shown(2**31 - 1), _shown(1e-7), _shown(0.5), _shown(float("nan"))
    ('2,147,483,647', '1e-07', '0.5', 'nan')
    """
    return f"{x:,}" if isinstance(x, int) else f"{x:g}"


def _check_device(device: str) -> list[str]:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        return [f"device cuda: this torch ({torch.__version__}) sees no CUDA GPU here; choose auto or cpu."]
    mps = getattr(torch.backends, "mps", None)
    if device == "mps" and not (mps and mps.is_available()):
        return ["device mps: Apple's MPS is not available here; choose auto or cpu."]
    return []


def _check_dataset(dataset: str) -> list[str]:
    from ftlab import data

    names = [d.name for d in data.list_datasets()]
    if not dataset.strip():
        return [f"no data set given (the name is empty): choose one of {some(names)}, or give the path of a folder or .zip in "
                "class-subfolder layout."]
    if dataset.lower() not in names and not _path_is(dataset, Path.exists):
        return [f"unknown data set {dataset!r}: choose one of {some(names)}, or give the path of a folder or .zip "
                "in class-subfolder layout."]
    return []


def _check_names(config: TrainConfig) -> list[str]:
    from ftlab import backbones, freeze

    problems = []
    try:
        freeze.Strategy.parse(config.strategy)
        strategy_known = True
    except ValueError as err:
        problems.append(str(err) + ".")
        strategy_known = False
    try:
        spec = backbones.get_spec(config.backbone)
    except ValueError as err:
        return problems + [str(err) + "."]
    edit_problems = _check_edits(config)
    problems += edit_problems
    if strategy_known and not edit_problems:
        problems += _check_blocks(config)
    weights = backbones.Weights.parse(config.weights)
    if weights.kind == "file" and not _path_is(weights.path, Path.is_file):
        problems.append(f"weights file {weights.path!r} does not exist: give the path of a weights file, or "
                        "choose imagenet or random.")
    if weights.pretrained and not spec.has_imagenet:
        problems.append(f"{spec.name} has no ImageNet weights: choose weights random (or a file).")
    size = config.image_size
    if size is not None and spec.fixed_size and size != spec.fixed_size:
        problems.append(f"{spec.name} takes only {spec.fixed_size} px images (got {size}).")
    elif size is not None and size < spec.min_size:
        problems.append(f"{spec.name} needs images of at least {spec.min_size} px (got {size}).")
    return problems


def _check_edits(config: TrainConfig) -> list[str]:
    """The model edits against the backbone's blocks (the ranges of dropout, adapter_dim and the
    activation's choices are the fields' own, checked above)."""
    from ftlab import edits

    problems = []
    if config.hidden and config.head and tuple(config.head) != (config.hidden,):
        problems.append(f"hidden ({config.hidden}) and head ({','.join(map(str, config.head))}) both set the "
                        "head's hidden layers: give only head (hidden H is the same as head H).")
    return problems + config.edits().shape_problems(edits.block_names(config.backbone))


def _check_blocks(config: TrainConfig) -> list[str]:
    """The freeze plan against the (edited) model's blocks, known from its architecture alone."""
    from ftlab import backbones, edits, freeze

    try:
        blocks = backbones.freezable_blocks(config.backbone, config.edits(), resolved_image_size(config))
    except ValueError as err:  # edited shapes at an image size the blocks cannot take
        return [f"{config.backbone}: {err}."]
    try:
        plan = freeze.make_plan(blocks, config.strategy, gradual_every=config.gradual_every,
                                frozen_blocks=config.frozen_blocks)
    except ValueError as err:
        return [f"{config.backbone}: {err}."]
    adapters = [b for b in config.frozen_blocks or () if b.startswith(edits.ADAPTER_PREFIX)]
    if adapters:
        return [f"frozen_blocks names {some(adapters)}: an adapter is a new block and always trains (it starts as "
                "the identity, so frozen it would do nothing); leave it out."]
    if set(blocks) <= plan.frozen_at_start:
        return [f"frozen_blocks freezes every block of {config.backbone}, so nothing would train: leave at least "
                f"one of {some(blocks)} out (the head, usually)."]
    if plan.strategy == "lp-ft" and (config.epochs < 2 or config.lp_epochs >= config.epochs):
        return [f"lp-ft probes and then fine-tunes, and {config.epochs} epoch(s) with lp_epochs {config.lp_epochs} "
                "leave no epoch to fine-tune in: give at least 2 epochs, and lp_epochs below epochs (0: half)."]
    stays_frozen = plan.strategy != "lp-ft" and plan.gradual_every == 0  # lp-ft and gradual unfreeze later
    nothing_pulled = set(freeze.backbone_blocks(plan.blocks)) <= plan.frozen_at_start
    if 0 < config.l2sp <= L2SP_MAX and stays_frozen and nothing_pulled:  # a beta out of range has its own sentence
        return [f"l2sp pulls the backbone blocks that train toward their pretrained weights, and {plan.strategy} "
                "trains none of them (the new head gets plain weight decay): choose top-N, full or gradual, or set "
                "--l2sp 0."]
    return []


def _path_is(text: str, test) -> bool:
    """``test`` (Path.exists, Path.is_file) of a typed path; False for one the OS cannot even look up
    (too long, a NUL byte, ``~nobody``) rather than its exception."""
    try:
        return test(Path(text).expanduser())
    except (OSError, ValueError, RuntimeError):
        return False


# A linear probe trains one layer on fixed features and takes large steps well; the more
# pretrained layers train, the smaller the step that keeps their features intact.
# lp-ft's is its probe's: the fine-tuning phase takes lp_ft_factor times it.
DEFAULT_LR = {"linear-probe": 3e-3, "top-N": 1e-3, "gradual": 1e-3, "custom": 1e-3, "full": 3e-4, "lp-ft": 3e-3}


def resolved_lr(config: TrainConfig) -> float:
    from ftlab import freeze

    if config.lr is not None:
        return config.lr
    return DEFAULT_LR[freeze.Strategy.parse(config.strategy, config.frozen_blocks).kind]


def resolved_image_size(config: TrainConfig) -> int:
    from ftlab import backbones

    spec = backbones.get_spec(config.backbone)
    return config.image_size or spec.fixed_size or spec.default_size
