"""Edits to a pretrained model: replace its head, remove its top blocks, add adapter blocks.

A :class:`ModelEdits` says what to change; :func:`build_blocks` applies it to a backbone's
blocks in a fixed order (truncate, then adapters, then the head), so the same edits always
give the same block names and the same state-dict keys, which is what lets a checkpoint of
an edited model be rebuilt and loaded. Every edit keeps the model a plain sequence of named
blocks, so freezing, the feature cache and per-block learning rates work on it unchanged.

- **Head**: hidden layers as a list of widths, an activation, dropout before each linear
  layer and, optionally, BatchNorm between a linear layer and its activation.
- **Truncate**: drop the blocks after one block (and the backbone's pool) and put a
  parameter-free pool on that block's output: a smaller, faster model on mid-level features.
- **Adapters**: a small residual bottleneck after a block, ``x + up(act(down(x)))`` with
  ``up`` zero-initialised, so the edited model starts as exactly the pretrained one.
"""
from __future__ import annotations

import functools
import itertools
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ftlab.edit_options import (  # noqa: F401  (the torch-free part, re-exported)
    ACTIVATIONS, ADAPTER_PREFIX, MAX_DROPOUT, MAX_LAYERS, MAX_WIDTH, NOT_EDITABLE, ModelEdits, _editable, adapter_name,
    is_new_block, parse_blocks, parse_widths)
from ftlab.messages import some


# --- the head ---------------------------------------------------------------------------

class HeadBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d that takes a training batch of one image, which has no variance to
    normalise by (torch raises): it uses the running statistics for it, as evaluation does.
    Training splits into batches in order, so a last batch of one is common."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


def activation_layer(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)  # in place, as the head before edits had it
    layers = {"gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
    if name not in layers:
        raise ValueError(f"unknown activation {name!r}; choose one of: {some(ACTIVATIONS)}")
    return layers[name]()


def make_head(in_features: int, num_classes: int, widths: Sequence[int] = (), activation: str = "relu",
              dropout: float = 0.0, batchnorm: bool = False) -> nn.Sequential:
    """A fresh classifier: dropout before each linear layer; between two linear layers an
    optional BatchNorm and the activation.

    With no widths it is ``backbones.make_head(in, n, 0, dropout)`` and with one width, ReLU
    and no BatchNorm ``backbones.make_head(in, n, h, dropout)``, layer for layer, so the
    checkpoints written before edits existed load into it.

    >>> [type(m).__name__ for m in make_head(8, 2, (4,), "gelu", batchnorm=True)]
    ['Dropout', 'Linear', 'HeadBatchNorm', 'GELU', 'Dropout', 'Linear']
    """
    layers: list[nn.Module] = []
    width = in_features
    for hidden in widths:
        layers += [nn.Dropout(dropout), nn.Linear(width, hidden)]
        layers += [HeadBatchNorm(hidden)] if batchnorm else []
        layers.append(activation_layer(activation))
        width = hidden
    return nn.Sequential(*layers, nn.Dropout(dropout), nn.Linear(width, num_classes))


class TaskHeads(nn.ModuleList):
    """One head per task on the same feature; the output is the heads' logits side by side,
    ``sizes[0]`` columns of the first task, then the next task's, so that the model still
    returns one tensor (prediction, TorchScript and ONNX export take it as it is) and whatever
    reads it splits it with ``sizes`` (`ftlab.tasks.split`)."""

    def __init__(self, heads: Sequence[nn.Module], sizes: Sequence[int]):
        super().__init__(heads)
        self.sizes = [int(n) for n in sizes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(x) for head in self], 1)


def make_heads(in_features: int, num_classes: int | Sequence[int], edits: ModelEdits) -> nn.Module:
    """The head ``edits`` ask for: one classifier for ``num_classes`` classes, or, for a tuple
    of class counts (several tasks), one such classifier per task (`TaskHeads`)."""
    def one(n: int) -> nn.Sequential:
        return make_head(in_features, n, edits.head, edits.activation, edits.dropout, edits.head_batchnorm)

    if isinstance(num_classes, int):
        return one(num_classes)
    if len(num_classes) == 1:
        return one(num_classes[0])
    return TaskHeads([one(n) for n in num_classes], num_classes)


# --- shapes, found without weights ---------------------------------------------------------

def block_shapes(blocks: OrderedDict[str, nn.Module], image_size: int) -> dict[str, tuple[int, ...]]:
    """The output shape of each block for one image (no batch dimension), blocks run in order.

    Run on the meta device with the blocks' tensors swapped for meta ones, so it costs no
    compute and no memory whatever the blocks hold; where an op has no meta kernel, one real
    image runs through blocks that have real weights, in eval mode, without gradients.
    """
    try:
        return _shapes(blocks, torch.empty(2, 3, image_size, image_size, device="meta"), _meta_call)
    except (RuntimeError, NotImplementedError, ValueError, TypeError) as err:
        meta_error = err
    if any(t.is_meta for block in blocks.values() for t in itertools.chain(block.parameters(), block.buffers())):
        raise ValueError(f"cannot find the block shapes at {image_size} px: {meta_error}") from None
    try:
        with torch.no_grad(), _eval_mode(blocks.values()):
            return _shapes(blocks, torch.zeros(1, 3, image_size, image_size), lambda block, x: block(x))
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"cannot run the blocks on {image_size} px images: {err}") from None


def _shapes(blocks, x, call) -> dict[str, tuple[int, ...]]:
    out = {}
    for name, block in blocks.items():
        x = call(block, x)
        out[name] = tuple(x.shape[1:])
    return out


def _meta_call(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # a batch of two: BatchNorm in training mode refuses one value per channel, even on meta
    state = {name: torch.empty_like(t, device="meta")
             for name, t in itertools.chain(block.named_parameters(), block.named_buffers())}
    return torch.func.functional_call(block, state, (x,))


class _eval_mode:
    """Eval mode for some modules for a while, each module's own mode back afterwards."""

    def __init__(self, modules: Iterable[nn.Module]):
        self.modes = [(m, m.training) for top in modules for m in top.modules()]

    def __enter__(self):
        for m, _ in self.modes:
            m.training = False

    def __exit__(self, *exc):
        for m, mode in self.modes:
            m.training = mode


# --- remove blocks -----------------------------------------------------------------------

class TokenPool(nn.Module):
    """The class token of a token sequence (N, L, D) as the image's feature, layer-normalised
    without a learned scale: ViT's own final LayerNorm was fitted to the last layer's tokens, and
    mid-level tokens differ in scale from layer to layer, so the head gets them normalised."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        token = x[:, 0]
        return F.layer_norm(token, token.shape[-1:])


def pool_for(shape: tuple[int, ...]) -> nn.Module:
    """A parameter-free pool from a block's output (one image's shape) to a feature vector."""
    if len(shape) == 3:  # feature maps (C, H, W)
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    if len(shape) == 2:  # tokens (L, D)
        return TokenPool()
    if len(shape) == 1:
        return nn.Identity()
    raise ValueError(f"no pool for block outputs of shape {shape}")


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def truncate(blocks: OrderedDict[str, nn.Module], after: str, image_size: int,
             shapes: dict[str, tuple[int, ...]] | None = None) -> tuple[OrderedDict[str, nn.Module], int]:
    """Blocks up to and including ``after``, then a parameter-free ``pool``; and the width of
    the pooled feature. The backbone's own pool is kept where it fits: when nothing but the
    pool follows ``after`` and the pool has no parameters (it was built for that output)."""
    names = list(blocks)
    if after not in names or after in NOT_EDITABLE:
        raise ValueError(f"cannot truncate after {after!r}; choose one of {some(_editable(names))}")
    kept = OrderedDict(itertools.takewhile(lambda item: item[0] != after, blocks.items()))
    kept[after] = blocks[after]
    rest = names[names.index(after) + 1:]
    if rest and rest[0] == "pool" and not _has_params(blocks["pool"]):
        kept["pool"] = blocks["pool"]
    else:
        shapes = shapes or block_shapes(kept, image_size)
        kept["pool"] = pool_for(shapes[after])
    return kept, block_shapes(kept, image_size)["pool"][0]


# --- add blocks --------------------------------------------------------------------------

class Adapter(nn.Module):
    """A residual bottleneck, ``x + up(act(down(x)))``: 1x1 convolutions on feature maps
    (N, C, H, W), linear layers over the last dimension of tokens (N, L, D).

    ``up`` starts at zero, so the adapter starts as the identity and the model as the
    pretrained one; its first gradient is not zero (it is ``act(down(x))`` times the gradient
    of the output), so it learns from the first step while the blocks around it stay frozen.
    """

    def __init__(self, channels: int, dim: int, tokens: bool = False):
        super().__init__()
        self.tokens = tokens
        if tokens:  # transformer blocks use GELU; convolutional ones ReLU
            self.down, self.act, self.up = nn.Linear(channels, dim), nn.GELU(), nn.Linear(dim, channels)
        else:
            self.down, self.act = nn.Conv2d(channels, dim, 1), nn.ReLU(inplace=True)
            self.up = nn.Conv2d(dim, channels, 1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))

    def extra_repr(self) -> str:
        return "tokens" if self.tokens else "feature maps"


def adapter_for(shape: tuple[int, ...], dim: int) -> Adapter:
    """An adapter for a block whose output (one image) has ``shape``."""
    if len(shape) == 3:
        return Adapter(shape[0], dim)
    if len(shape) in (1, 2):
        return Adapter(shape[-1], dim, tokens=True)
    raise ValueError(f"no adapter for block outputs of shape {shape}")


def insert_adapters(blocks: OrderedDict[str, nn.Module], after: Sequence[str], dim: int, image_size: int,
                    shapes: dict[str, tuple[int, ...]] | None = None) -> OrderedDict[str, nn.Module]:
    """``blocks`` with a new block ``adapter_<block>`` right after each block in ``after``."""
    unknown = [name for name in after if name not in blocks or name in NOT_EDITABLE]
    if unknown:
        raise ValueError(f"no block {some(unknown)} to put an adapter after; "
                         f"choose from {some(_editable(list(blocks)))}")
    if not after:
        return OrderedDict(blocks)
    shapes = shapes or block_shapes(blocks, image_size)
    out = OrderedDict()
    for name, block in blocks.items():
        out[name] = block
        if name in after:
            out[adapter_name(name)] = adapter_for(shapes[name], dim)
    return out


# --- the whole edited model --------------------------------------------------------------

def apply(blocks: OrderedDict[str, nn.Module], edits: ModelEdits, num_classes: int | Sequence[int], in_features: int,
          image_size: int, shapes: dict[str, tuple[int, ...]] | None = None) -> OrderedDict[str, nn.Module]:
    """A backbone's blocks (without a head) edited: truncated, then adapters, then the head.
    ``in_features`` is the width of the backbone's own pooled feature (used when not truncated);
    ``shapes`` the blocks' :func:`block_shapes`, where they are known already; a tuple of class
    counts builds one head per task."""
    problems = edits.problems([*blocks, "head"])
    if problems:
        raise ValueError(" ".join(problems))
    if shapes is None and (edits.truncate_after or edits.adapter_after):
        shapes = block_shapes(blocks, image_size)
    if edits.truncate_after:
        blocks, in_features = truncate(blocks, edits.truncate_after, image_size, shapes)
    blocks = insert_adapters(blocks, edits.adapter_after, edits.adapter_dim, image_size, shapes)
    blocks["head"] = make_heads(in_features, num_classes, edits)
    return blocks


def _spec(backbone: str):
    from ftlab import backbones  # backbones will build through this module: import it late

    return backbones.get_spec(backbone)


def resolved_size(backbone: str, image_size: int | None) -> int:
    spec = _spec(backbone)
    return image_size or spec.fixed_size or spec.default_size


def build_blocks(backbone: str, num_classes: int | Sequence[int], weights: str, edits: ModelEdits,
                 image_size: int | None = None) -> OrderedDict[str, nn.Module]:
    """The edited model's blocks, head included, for ``BlockModel(backbone, blocks, num_classes)``.

    ``weights="imagenet"`` builds the pretrained blocks, anything else random ones: a weights
    file is loaded into the finished model, as ``create_model`` does.
    """
    from ftlab.backbones import WeightsUnavailable

    spec = _spec(backbone)
    if weights == "imagenet" and not spec.has_imagenet:
        raise WeightsUnavailable(f"{backbone} has no ImageNet weights; use --weights random or a file.")
    blocks = spec.blocks(weights == "imagenet")
    return apply(blocks, edits, num_classes, spec.head_in_features, resolved_size(backbone, image_size))


def editable_blocks(backbone: str, truncate_after: str = "") -> tuple[str, ...]:
    """The blocks of ``backbone`` an edit may cut at or put an adapter after: those before its
    pool; with ``truncate_after`` (a block of them) only those up to it, which the cut keeps.

    >>> editable_blocks("small_cnn"), editable_blocks("small_cnn", "stage1")
    (('stem', 'stage1', 'stage2', 'stage3'), ('stem', 'stage1'))
    """
    blocks = _editable(list(block_names(backbone)))
    if truncate_after in blocks:
        blocks = blocks[:blocks.index(truncate_after) + 1]
    return tuple(blocks)


@functools.cache
def block_names(backbone: str) -> tuple[str, ...]:
    """Every block of the unedited ``backbone``, ``pool`` and ``head`` last: what
    :meth:`ModelEdits.problems` checks against. From the architecture alone (meta device)."""
    return tuple(_meta_blocks(backbone)) + ("head",)


@functools.cache
def _meta_blocks(backbone: str) -> OrderedDict[str, nn.Module]:
    """The unedited blocks without weights, built once per process: edits only read them (a
    copy of the dict, never the modules, is what changes), so every table shares them."""
    spec = _spec(backbone)
    try:
        with torch.device("meta"):
            return spec.blocks(False)
    except (NotImplementedError, RuntimeError):  # a builder that computes with tensors (RegNet's widths)
        return spec.blocks(False)


@dataclass(frozen=True)
class BlockRow:
    """One row of an edited model's block table."""

    name: str
    params: int
    mark: str  # "" a backbone block kept; "added" an adapter; "new" the head or a pool put in; "removed"
    output: tuple[int, ...]  # one image's output shape (C, H, W), (L, D) or (F,)


@functools.lru_cache(maxsize=64)
def edited_blocks(backbone: str, num_classes: int | tuple[int, ...], edits: ModelEdits,
                  image_size: int | None = None) -> tuple[BlockRow, ...]:
    """The edited model as the Model page draws it: its blocks in order, the removed ones (with
    what they held) where the model was cut, before the pool put in their place. Built on the
    meta device: no weights, no memory. Raises ``ValueError`` with every problem of ``edits``."""
    size = resolved_size(backbone, image_size)
    original = OrderedDict(_meta_blocks(backbone))
    before = _meta_shapes(backbone, size)
    with torch.device("meta"):
        edited = apply(OrderedDict(original), edits, num_classes, _spec(backbone).head_in_features, size, before)
    after = block_shapes(edited, size)
    rows = [BlockRow(name, _count(block), _mark(name, block, original), after[name])
            for name, block in edited.items()]
    # a parameter-free pool replaced by another is no news; a pool with pretrained layers is
    removed = [BlockRow(name, _count(block), "removed", before[name])
               for name, block in original.items()
               if edited.get(name) is not block and (name != "pool" or _count(block))]
    cut = next((i for i, row in enumerate(rows) if row.name == "pool"), len(rows) - 1)
    return tuple(rows[:cut] + removed + rows[cut:])


@functools.lru_cache(maxsize=32)
def _meta_shapes(backbone: str, image_size: int) -> dict[str, tuple[int, ...]]:
    return block_shapes(_meta_blocks(backbone), image_size)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _mark(name: str, block: nn.Module, original: OrderedDict[str, nn.Module]) -> str:
    if name.startswith(ADAPTER_PREFIX):
        return "added"
    return "" if original.get(name) is block else "new"
