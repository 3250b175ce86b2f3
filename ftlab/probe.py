"""Where the class information lives: a linear probe at every block boundary of a backbone, and
how many images per class that probe needs (data-efficiency).

The backbone runs once over the train and val images, in eval mode, block by block; after each
backbone block (the blocks a freeze strategy counts, the head left out) its output is pooled
over the spatial positions and kept. A logistic regression (scikit-learn) on the standardised
pooled features of the train split is scored on val at each boundary: accuracy per depth with a
95% percentile-bootstrap interval over the val images. It shows why freezing the early blocks
costs little: if a shallow boundary already separates the classes, training the blocks after it
has little to add. The data-efficiency probe fits the same regression at one boundary on k
training images per class (several seeded draws per k), from the same features.

Measured with ``bench/bench_probe.py`` (2 cores shared, load average about 2): every boundary of
EfficientNet-Lite0 (ImageNet) on ants/bees at 224 px in 28 s with ``--precision auto``, which keeps
fp32 here (bf16's pooled features were off by 5.3e-2 of the output's scale, beyond auto's 3e-2), its
first measurement included; 19 s with ``--precision bf16``. The forward pass dominates (10-18 s);
decoding took 3-4 s, the nine fits and the data-efficiency fits 1-3 s.

    result = run_probe(TrainConfig(dataset="hymenoptera", backbone="efficientnet_lite0"))
    for d in result.depths:
        print(d.block, d.accuracy, d.low, d.high)
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ftlab import backbones, cache, data, fastpath, freeze
from ftlab.compare import bootstrap_draws_interval, bootstrap_interval
from ftlab.config import TrainConfig, resolved_image_size, validate
from ftlab.errors import StopRequested
from ftlab.messages import some
from ftlab.precision import Choice
from ftlab.transforms import Preprocess, Preprocessing
from ftlab.explore_options import CONFIG_FIELDS, ProbeOptions, option_problems, parse_per_class  # noqa: F401

Say = Callable[[str], None]
MAX_ITER = 2000  # lbfgs iterations: ample for standardised features (every Lite0 boundary on ants/bees converged)
_SAMPLE = 8  # images: the batch the fast forward pass is checked and timed on, as in the engine

# --- results ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Depth:
    """The probe at one block boundary."""

    block: str
    depth: int  # the block's place among the backbone blocks, from 1
    features: int  # the width of its pooled output
    accuracy: float  # on val
    low: float  # the 95% bootstrap interval over the val images
    high: float
    train_accuracy: float
    converged: bool  # lbfgs converged within MAX_ITER iterations


@dataclass(frozen=True)
class Efficiency:
    """The probe at one boundary on ``per_class`` training images per class (None: all of them)."""

    per_class: int | None
    images_per_class: float  # the mean over the classes (all: the split's own, which may be unbalanced)
    train_images: int
    accuracies: tuple[float, ...]  # on val, one per draw
    mean: float
    low: float  # the 95% bootstrap interval of the mean, over the val images and the draws
    high: float

    @property
    def label(self) -> str:
        return "all" if self.per_class is None else str(self.per_class)


@dataclass(frozen=True)
class ProbeResult:
    dataset: str
    backbone: str
    weights: str  # in words
    image_size: int
    classes: tuple[str, ...]
    train_images: int
    val_images: int
    majority: float  # the val accuracy of always answering the commonest training class
    depths: tuple[Depth, ...]
    at: str  # the boundary of the data-efficiency probe ("" without one)
    efficiency: tuple[Efficiency, ...]
    skipped: tuple[str, ...]  # a sentence per requested number of images per class that could not be probed
    precision: Choice  # what the forward pass computed in, and why
    forward: str  # how it ran (`ftlab.fastpath.Accelerated.note`)
    seconds: dict  # decode, forward, fits, efficiency
    notes: tuple[str, ...] = ()  # the data set's warnings, a fit that did not converge

    def to_dict(self) -> dict:
        out = asdict(self)
        out["precision"] = self.precision.to_dict()
        for e, d in zip(self.efficiency, out["efficiency"]):
            d["label"] = e.label
        return out

    def lines(self) -> list[str]:
        """The result as a table in text, for the CLI."""
        out = [f"probe of {self.backbone} ({self.weights}) at {self.image_size} px on {self.dataset}: "
               f"{len(self.classes)} classes, {self.train_images} train / {self.val_images} val images; "
               f"always the commonest class scores {self.majority:.3f}",
               f"{'block':<14}{'depth':>6}{'features':>10}{'val acc':>9}  {'95% interval':<14}{'train acc':>9}"]
        for d in self.depths:
            flag = "" if d.converged else "  (not converged)"
            out.append(f"{d.block:<14}{d.depth:>6}{d.features:>10}{d.accuracy:>9.3f}  "
                       f"{d.low:.3f}-{d.high:.3f}   {d.train_accuracy:>9.3f}{flag}")
        if self.efficiency:
            out.append(f"data efficiency at {self.at}:")
            out.append(f"{'per class':>9}{'images':>8}{'draws':>6}{'val acc':>9}  {'95% interval':<14}")
            for e in self.efficiency:
                out.append(f"{e.label:>9}{e.train_images:>8}{len(e.accuracies):>6}{e.mean:>9.3f}  "
                           f"{e.low:.3f}-{e.high:.3f}")
        out += [f"skipped: {s}" for s in self.skipped] + [f"note: {n}" for n in self.notes]
        out.append(f"forward pass in {self.precision.name} ({self.precision.reason}); " +
                   ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()))
        return out


# --- the statistics ---------------------------------------------------------------------

def fit(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, *, c: float = 1.0,
        seed: int = 0) -> tuple[np.ndarray, float, bool]:
    """A logistic regression on standardised features: (its val predictions, its train accuracy,
    whether lbfgs converged). Standardising puts every channel on one scale, so one C suits
    every boundary (raw channels of shallow blocks differ in scale by orders of magnitude)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=MAX_ITER, random_state=seed))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(train_x, train_y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in said)
    return model.predict(val_x), float(model.score(train_x, train_y)), converged


def draw_per_class(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` indices of each class in ``labels``, without replacement, in ascending order."""
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == cls), k, replace=False)
                                   for cls in np.unique(labels)]))


def efficiency_plan(train_labels: np.ndarray, per_class: Sequence[int | None],
                    classes: Sequence[str]) -> tuple[tuple[int | None, ...], tuple[str, ...]]:
    """The numbers of images per class that can be probed, and a sentence for each that cannot
    (a class has fewer training images than that)."""
    counts = np.bincount(train_labels, minlength=len(classes))
    smallest = int(np.argmin(counts))
    kept, skipped = [], []
    for k in per_class:
        if k is not None and k > counts[smallest]:
            skipped.append(f"{k} images per class: the class {classes[smallest]!r} has only {counts[smallest]} "
                           "training images")
        else:
            kept.append(k)
    return tuple(kept), tuple(skipped)


def data_efficiency(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                    per_class: Sequence[int | None], *, draws: int = 5, c: float = 1.0, seed: int = 0,
                    resamples: int = 2000, should_stop: Callable[[], bool] = lambda: False) -> tuple[Efficiency, ...]:
    """The probe on ``k`` training images per class for each ``k`` (None: all, one fit), each
    ``k`` drawn ``draws`` times from generators seeded by (seed, k, draw)."""
    out, n_classes = [], len(np.unique(train_y))
    for k in per_class:
        rows = []
        for draw in range(1 if k is None else draws):
            if should_stop():
                raise StopRequested("data efficiency", len(out) + 1)
            idx = np.arange(len(train_y)) if k is None else \
                draw_per_class(train_y, k, np.random.default_rng([seed, k, draw]))
            predictions, _, _ = fit(train_x[idx], train_y[idx], val_x, c=c, seed=seed)
            rows.append(predictions == val_y)
        correct = np.array(rows)
        low, high = bootstrap_draws_interval(correct, resamples=resamples, seed=seed)
        used = len(train_y) if k is None else k * n_classes
        out.append(Efficiency(k, used / n_classes, used, tuple(float(r.mean()) for r in correct),
                              float(correct.mean()), low, high))
    return tuple(out)


# --- the features -----------------------------------------------------------------------

def boundaries(model: backbones.BlockModel) -> tuple[str, ...]:
    """The probed boundaries: the backbone blocks a freeze strategy counts (those with parameters,
    less the head and adapters), in order; a block without parameters (a pool) adds nothing to
    the one before it."""
    return freeze.backbone_blocks(tuple(model.param_blocks()))


def pool(x: torch.Tensor) -> torch.Tensor:
    """One vector per image: a feature map (N, C, H, W) averaged over H and W, tokens (N, L, D)
    over the tokens; a flat output (N, D) as it is. In fp32: a bf16 mean over 12,544 positions
    (a 112 x 112 map) would lose digits."""
    x = x.float()
    return x.mean((2, 3)) if x.dim() == 4 else x.mean(1) if x.dim() == 3 else x.flatten(1)


class Pooled(nn.Module):
    """The blocks up to the last probed boundary, returning the pooled output of each probed
    block side by side (N, sum of widths): one tensor, so the fast path traces it as one graph."""

    def __init__(self, model: backbones.BlockModel, probed: Sequence[str]):
        super().__init__()
        names = model.block_names
        last = max(names.index(b) for b in probed)
        self.blocks = nn.ModuleList(model[i] for i in range(last + 1))
        self.keep = tuple(name in probed for name in names[:last + 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for block, keep in zip(self.blocks, self.keep):
            x = block(x)
            if keep:
                out.append(pool(x))
        return torch.cat(out, 1)


def widths(model: backbones.BlockModel, probed: Sequence[str], sample: torch.Tensor) -> list[int]:
    """Each probed block's pooled width, from one image."""
    with torch.no_grad(), fastpath.evaluating(model):
        return [pool(f).shape[1] for f in _outputs(model, probed, sample[:1])]


def _outputs(model: backbones.BlockModel, probed: Sequence[str], x: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for name, block in model.named_children():
        if len(out) == len(probed):
            break
        x = block(x)
        if name in probed:
            out.append(x)
    return out


def accelerated(model: backbones.BlockModel, probed: Sequence[str], sample: torch.Tensor, config: TrainConfig,
                device: torch.device) -> tuple[fastpath.Accelerated, Choice]:
    """The pooled forward pass as the fastest checked function (`ftlab.fastpath.accelerate`), in the
    precision ``config.precision`` resolves to, as the engine decides its caching pass's: ``auto``
    measures fp32 against bf16 on ``sample`` once per machine, model and size, and takes bf16 only
    where it keeps within `fastpath.AUTO_TOLERANCE` of fp32."""
    key = (f"{config.backbone} {backbones.Weights.parse(config.weights).identity(config.seed)} "
           f"[probe of {', '.join(probed)}] at {sample.shape[-1]} px")
    fast, choice = fastpath.fastest(Pooled(model, probed), sample, precision=config.precision,
                                    graph=config.fast_prefix, device=device, part="probe", key=key,
                                    what="the probed blocks")
    return fast, choice


def pooled_features(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, prep: Preprocess,
                    sizes: Sequence[int], probed: Sequence[str], *, batch_size: int = 64,
                    should_stop: Callable[[], bool] = lambda: False) -> dict[str, torch.Tensor]:
    """Every probed block's pooled output for ``images`` (uint8, decoded): block -> (N, width) fp32."""
    joined = cache.compute(fn, images, lambda x: prep(x, train=False), batch_size=batch_size,
                           dtype=torch.float32, should_stop=should_stop)
    return dict(zip(probed, joined.split(list(sizes), 1)))


# --- the whole probe --------------------------------------------------------------------

def run_probe(config: TrainConfig, options: ProbeOptions = ProbeOptions(), *, say: Say = lambda m: None,
              should_stop: Callable[[], bool] = lambda: False) -> ProbeResult:
    """The probe at every boundary of ``config.backbone`` on ``config.dataset``'s train and val
    splits, then the data-efficiency probe. Bad options or data raise ValueError (`data.DataError`
    is one) with a sentence; a stop raises `StopRequested` between batches and between fits."""
    from ftlab.engine import pick_device

    problems = validate(config) + option_problems(options)
    if problems:
        raise ValueError(" ".join(["the probe cannot start:"] + problems))
    size = resolved_image_size(config)
    _check_at(options.at, freeze.backbone_blocks(backbones.freezable_blocks(config.backbone, config.edits(), size)),
              config.backbone)
    seconds, began = {}, time.perf_counter()
    torch.manual_seed(config.seed)
    say("loading data")
    preprocessing = Preprocessing.for_backbone(config.backbone, size)
    prepared = data.prepare(config, preprocessing.size, preprocessing.resize, say, should_stop)
    seconds["decode"] = time.perf_counter() - began
    classes = prepared.dataset.classes
    device = pick_device(config.device)
    weights = backbones.Weights.parse(config.weights)
    say(f"building {config.backbone} ({weights.describe()})")
    try:
        model = backbones.create_model(config.backbone, len(classes), config.weights, edits=config.edits(),
                                       image_size=preprocessing.size).to(device).eval()
    except backbones.WeightsUnavailable as err:  # offline without the file, or a file that does not fit
        raise ValueError(str(err)) from None
    model.to(memory_format=torch.channels_last)
    probed = boundaries(model)
    at = _check_at(options.at, probed, config.backbone)
    began = time.perf_counter()
    train, val = prepared.train, prepared.val
    images = torch.cat([train.images, val.images])  # one pass over both splits
    prep = Preprocess(preprocessing, device)
    sample = prep(images[:_SAMPLE], train=False)
    fast, choice = accelerated(model, probed, sample, config, device)
    say(f"forward pass in {choice.name} ({choice.reason}) over {len(images):,} images, keeping the pooled output "
        f"of {len(probed)} blocks")
    features = pooled_features(fast.fn, images, prep, widths(model, probed, sample), probed,
                               batch_size=max(64, 2 * config.batch_size), should_stop=should_stop)
    seconds["forward"] = time.perf_counter() - began
    n = len(train.labels)
    split = {b: (f[:n].numpy(), f[n:].numpy()) for b, f in features.items()}
    fitted = fit_features(split, train.labels.numpy(), val.labels.numpy(), classes, options, at=at,
                          seed=config.seed, say=say, should_stop=should_stop)
    return ProbeResult(prepared.dataset.name, config.backbone, weights.describe(), preprocessing.size,
                       tuple(classes), n, len(val.labels), fitted.majority, fitted.depths, fitted.at,
                       fitted.efficiency, fitted.skipped, choice, fast.note(), {**seconds, **fitted.seconds},
                       tuple(f"warning: {w}" for w in prepared.dataset.notes) + fitted.notes)


@dataclass(frozen=True)
class Fitted:
    """The probes fitted on pooled features (`fit_features`)."""

    depths: tuple[Depth, ...]
    at: str  # "" without a data-efficiency probe
    efficiency: tuple[Efficiency, ...]
    skipped: tuple[str, ...]
    majority: float
    notes: tuple[str, ...]
    seconds: dict  # fits, efficiency


def fit_features(split: dict[str, tuple[np.ndarray, np.ndarray]], train_y: np.ndarray, val_y: np.ndarray,
                 classes: Sequence[str], options: ProbeOptions = ProbeOptions(), *, at: str = "", seed: int = 0,
                 say: Say = lambda m: None, should_stop: Callable[[], bool] = lambda: False) -> Fitted:
    """The probe at every boundary of ``split`` (block -> its pooled (train, val) features, in block
    order), then the data-efficiency probe at ``at`` (default the last): from features computed
    once, here or by a sweep's feature cache."""
    seconds = {}
    at = at or list(split)[-1]
    depths, notes = _depths(split, train_y, val_y, options, seed, say, should_stop, seconds)
    ks, skipped = efficiency_plan(train_y, parse_per_class(options.per_class), classes)
    began = time.perf_counter()
    if ks:
        say(f"data efficiency at {at}: {', '.join('all' if k is None else str(k) for k in ks)} images per class")
    train_x, val_x = split[at]
    efficiency = data_efficiency(train_x, train_y, val_x, val_y, ks, draws=options.draws, c=options.c, seed=seed,
                                 resamples=options.resamples, should_stop=should_stop) if ks else ()
    seconds["efficiency"] = time.perf_counter() - began
    majority = float((val_y == np.bincount(train_y).argmax()).mean())
    return Fitted(depths, at if ks else "", efficiency, skipped, majority, notes, seconds)


def _check_at(at: str, probed: Sequence[str], backbone: str) -> str:
    """The data-efficiency probe's boundary: ``at``, or the last one when it is empty."""
    at = at.strip() or probed[-1]
    if at not in probed:
        raise ValueError(f"no block {at!r} to probe at in {backbone}: choose one of {some(probed)}.")
    return at


def _depths(split: dict, train_y: np.ndarray, val_y: np.ndarray, options: ProbeOptions, seed: int, say: Say,
            should_stop: Callable[[], bool], seconds: dict) -> tuple[tuple[Depth, ...], tuple[str, ...]]:
    began, depths = time.perf_counter(), []
    for i, (block, (train_x, val_x)) in enumerate(split.items(), 1):
        if should_stop():
            raise StopRequested("probing", i)
        say(f"fitting the probe at {block} ({i} of {len(split)}, {train_x.shape[1]:,} features)")
        predictions, train_acc, converged = fit(train_x, train_y, val_x, c=options.c, seed=seed)
        correct = predictions == val_y
        low, high = bootstrap_interval(correct, resamples=options.resamples, seed=seed)
        depths.append(Depth(block, i, train_x.shape[1], float(correct.mean()), low, high, train_acc, converged))
    seconds["fits"] = time.perf_counter() - began
    unconverged = [d.block for d in depths if not d.converged]
    notes = (f"the logistic regression did not converge within {MAX_ITER} iterations at {some(unconverged)}; "
             "a smaller C regularises more and converges sooner",) if unconverged else ()
    return tuple(depths), notes
