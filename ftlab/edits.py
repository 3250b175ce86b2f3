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
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ftlab.messages import some

ACTIVATIONS = ("relu", "gelu", "silu", "tanh")
MAX_WIDTH = 8192  # hidden units of a head layer, channels of an adapter's bottleneck
MAX_LAYERS = 8  # hidden layers in a head: more is a network of its own, not a classifier
MAX_DROPOUT = 0.9
ADAPTER_PREFIX = "adapter_"
NOT_EDITABLE = ("pool", "head")  # blocks that an edit cannot cut at or add after


@dataclass(frozen=True)
class ModelEdits:
    """Everything an edit of the model is. The defaults are no edit: today's linear head.

    >>> ModelEdits(head=(512, 128), activation="gelu").describe()
    'head 512,128 gelu'
    >>> ModelEdits.from_dict(ModelEdits(truncate_after="stage4").to_dict()) == ModelEdits(truncate_after="stage4")
    True
    """

    head: tuple[int, ...] = ()  # hidden widths of the new head; () is a single linear layer
    activation: str = "relu"  # between the head's hidden layers
    dropout: float = 0.0  # before each of the head's linear layers
    head_batchnorm: bool = False  # BatchNorm1d between each hidden linear layer and its activation
    truncate_after: str = ""  # the last block kept; "" keeps them all
    adapter_after: tuple[str, ...] = ()  # blocks each followed by a new adapter block
    adapter_dim: int = 64  # channels of each adapter's bottleneck

    def to_dict(self) -> dict[str, Any]:
        """The edits in JSON types, for a run's config and its checkpoint."""
        out = asdict(self)
        out["head"], out["adapter_after"] = list(self.head), list(self.adapter_after)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelEdits:
        """Edits from :meth:`to_dict`'s dict, or from a checkpoint or config written before edits
        existed: its ``hidden`` (0 or h units) is the head ``()`` or ``(h,)``. Keys of other
        options are ignored; a value of the wrong type is a ``ValueError`` saying which."""
        head = d.get("head")
        if head is None:
            hidden = _typed(d, "hidden", int, 0)
            head = [hidden] if hidden else []
        default = cls()
        return cls(head=_int_tuple(head, "head"),
                   activation=_typed(d, "activation", str, default.activation),
                   dropout=float(_typed(d, "dropout", (int, float), default.dropout)),
                   head_batchnorm=_typed(d, "head_batchnorm", bool, default.head_batchnorm),
                   truncate_after=_typed(d, "truncate_after", str, default.truncate_after),
                   adapter_after=_str_tuple(d.get("adapter_after", []), "adapter_after"),
                   adapter_dim=_typed(d, "adapter_dim", int, default.adapter_dim))

    @property
    def edited(self) -> bool:
        """Whether the model differs in structure from a backbone with a linear head."""
        return bool(self.head or self.truncate_after or self.adapter_after)

    def describe(self) -> str:
        """A short text for run labels; "" for no edit. Dropout is left out: run labels show it
        already, as an option that predates edits.

        >>> ModelEdits(head=(256,), head_batchnorm=True, truncate_after="layer3").describe()
        'head 256 relu batchnorm; truncated after layer3'
        >>> ModelEdits(adapter_after=("stage5", "stage6")).describe()
        'adapters after stage5,stage6 (64)'
        """
        parts = []
        if self.head:
            parts.append(f"head {','.join(map(str, self.head))} {self.activation}"
                         + (" batchnorm" if self.head_batchnorm else ""))
        if self.truncate_after:
            parts.append(f"truncated after {self.truncate_after}")
        if self.adapter_after:
            parts.append(f"adapters after {','.join(self.adapter_after)} ({self.adapter_dim})")
        return "; ".join(parts)

    def problems(self, blocks: Sequence[str]) -> list[str]:
        """Every problem of these edits, in words, against a backbone's block names in order
        (``BlockModel.block_names`` of the unedited model: ..., ``pool``, ``head``)."""
        return self._value_problems() + self.shape_problems(blocks)

    def shape_problems(self, blocks: Sequence[str]) -> list[str]:
        """The problems of the head's widths and of the blocks named: what a `TrainConfig`'s
        own option ranges (dropout, activation, adapter_dim) do not already check."""
        return self._head_problems() + self._block_problems(list(blocks))

    def _head_problems(self) -> list[str]:
        problems = []
        bad = [w for w in self.head if not 1 <= w <= MAX_WIDTH]
        if bad:
            problems.append(f"head: each hidden width must be from 1 to {MAX_WIDTH:,} (got {some(bad)}); "
                            "leave head empty for a single linear layer.")
        if len(self.head) > MAX_LAYERS:
            problems.append(f"head: at most {MAX_LAYERS} hidden layers (got {len(self.head)}).")
        return problems

    def _value_problems(self) -> list[str]:
        problems = []
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation must be one of {some(ACTIVATIONS)} (got {self.activation!r}).")
        if not 0.0 <= self.dropout <= MAX_DROPOUT:  # also false for nan
            problems.append(f"dropout must be between 0 and {MAX_DROPOUT:g} (got {self.dropout:g}).")
        if not 1 <= self.adapter_dim <= MAX_WIDTH:
            problems.append(f"adapter_dim must be from 1 to {MAX_WIDTH:,} (got {self.adapter_dim:,}).")
        return problems

    def _block_problems(self, blocks: list[str]) -> list[str]:
        editable = _editable(blocks)
        choose = f"choose one of {some(editable)}"
        problems = []
        cut = self.truncate_after
        if cut in NOT_EDITABLE or (cut in blocks and cut not in editable):
            problems.append(f"truncate_after: the head cannot sit on {cut}, which is not a backbone block before "
                            f"the pool; {choose}, or leave it empty to keep every block.")
        elif cut and cut not in blocks:
            problems.append(f"truncate_after: no block named {cut!r}; {choose}.")
        for name in dict.fromkeys(self.adapter_after):  # each name once, in order
            if name in NOT_EDITABLE or (name in blocks and name not in editable):
                problems.append(f"adapter_after: an adapter cannot follow {name}; adapters go after backbone blocks "
                                f"before the pool: {choose}.")
            elif name not in blocks:
                problems.append(f"adapter_after: no block named {name!r}; {choose}.")
            elif cut in editable and editable.index(name) > editable.index(cut):
                problems.append(f"adapter_after: {name} comes after {cut}, where the model is truncated, so it is "
                                f"removed; put the adapter at or before {cut}, or truncate later.")
        repeated = [n for n, k in _counts(self.adapter_after).items() if k > 1]
        if repeated:
            problems.append(f"adapter_after names {some(repeated)} more than once; one adapter per block.")
        return problems


def _editable(blocks: list[str]) -> list[str]:
    """The blocks an edit may cut at or add after: those before the pool (and the head)."""
    end = next((i for i, name in enumerate(blocks) if name in NOT_EDITABLE), len(blocks))
    return blocks[:end]


def _counts(names: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return counts


def _typed(d: dict[str, Any], key: str, kind, default):
    value = d.get(key, default)
    # bool is an int to Python: a width of "true" is a mistake, not 1
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ValueError(f"{key} must be {_kind_name(kind)} (got {repr(value)[:60]})")
    return value


def _kind_name(kind) -> str:
    return {int: "a whole number", str: "text", bool: "true or false"}.get(kind, "a number")


def _int_tuple(value: Any, key: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                       for v in value):
        raise ValueError(f"{key} must be a list of whole numbers (got {repr(value)[:60]})")
    return tuple(value)


def _str_tuple(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key} must be a list of block names (got {repr(value)[:60]})")
    return tuple(value)


def parse_widths(text: str) -> tuple[int, ...]:
    """``"512,128"`` -> ``(512, 128)``; an empty text (or ``0``, the old "no hidden layer") -> ``()``.

    >>> parse_widths("512, 128"), parse_widths(""), parse_widths("0")
    ((512, 128), (), ())
    >>> parse_widths("512;128")
    Traceback (most recent call last):
    ...
    ValueError: head widths are whole numbers separated by commas, e.g. 512,128 (got '512;128')
    """
    text = text.strip()
    if text in ("", "0"):
        return ()
    items = [item.strip() for item in text.split(",")]
    if not all(item.isascii() and item.isdigit() for item in items):
        raise ValueError(f"head widths are whole numbers separated by commas, e.g. 512,128 (got {text[:60]!r})")
    return tuple(int(item) for item in items)


def parse_blocks(text: str) -> tuple[str, ...]:
    """``"stage5, stage6"`` -> ``("stage5", "stage6")``: block names separated by commas.

    >>> parse_blocks("stage5, stage6"), parse_blocks(" ")
    (('stage5', 'stage6'), ())
    """
    return tuple(name.strip() for name in text.split(",")) if text.strip() else ()


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


def adapter_name(block: str) -> str:
    return ADAPTER_PREFIX + block


def is_new_block(name: str) -> bool:
    """Blocks an edit adds (adapters) or that are always new (the head): they have no
    pretrained weights, always train, and a weights file need not hold them."""
    return name == "head" or name.startswith(ADAPTER_PREFIX)


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

def apply(blocks: OrderedDict[str, nn.Module], edits: ModelEdits, num_classes: int, in_features: int,
          image_size: int, shapes: dict[str, tuple[int, ...]] | None = None) -> OrderedDict[str, nn.Module]:
    """A backbone's blocks (without a head) edited: truncated, then adapters, then the head.
    ``in_features`` is the width of the backbone's own pooled feature (used when not truncated);
    ``shapes`` the blocks' :func:`block_shapes`, where they are known already."""
    problems = edits.problems([*blocks, "head"])
    if problems:
        raise ValueError(" ".join(problems))
    if shapes is None and (edits.truncate_after or edits.adapter_after):
        shapes = block_shapes(blocks, image_size)
    if edits.truncate_after:
        blocks, in_features = truncate(blocks, edits.truncate_after, image_size, shapes)
    blocks = insert_adapters(blocks, edits.adapter_after, edits.adapter_dim, image_size, shapes)
    blocks["head"] = make_head(in_features, num_classes, edits.head, edits.activation, edits.dropout,
                               edits.head_batchnorm)
    return blocks


def _spec(backbone: str):
    from ftlab import backbones  # backbones will build through this module: import it late

    return backbones.get_spec(backbone)


def resolved_size(backbone: str, image_size: int | None) -> int:
    spec = _spec(backbone)
    return image_size or spec.fixed_size or spec.default_size


def build_blocks(backbone: str, num_classes: int, weights: str, edits: ModelEdits,
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
def edited_blocks(backbone: str, num_classes: int, edits: ModelEdits,
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
