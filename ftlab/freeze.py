"""Which blocks train: freeze plans, the one function that applies them, and param groups.

A plan names the frozen blocks at each epoch. ``apply_freeze`` is the only function that
changes a model's trainability; ``param_groups`` and the counters only read.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from typing import TYPE_CHECKING

from ftlab.edit_options import ADAPTER_PREFIX, is_new_block
from ftlab.messages import some

if TYPE_CHECKING:  # plans and strategies need no torch: a run's label is made without it
    from torch import nn

    from ftlab.backbones import BlockModel

STRATEGIES = ("linear-probe", "top-N", "full", "gradual")
_TOP_N = re.compile(r"^top-(\d+)$")


@dataclass(frozen=True)
class FreezePlan:
    """Frozen blocks over training; ``blocks`` are the model's blocks with parameters, in order."""

    strategy: str
    blocks: tuple[str, ...]  # ends with "head"
    frozen_at_start: frozenset[str]
    gradual_every: int = 0  # gradual: unfreeze one more block from the top every k epochs

    def frozen_at(self, epoch: int) -> frozenset[str]:
        """Blocks frozen during ``epoch`` (0-based)."""
        if self.strategy != "gradual" or self.gradual_every <= 0:
            return self.frozen_at_start
        body = backbone_blocks(self.blocks)
        unfrozen = min(len(body), epoch // self.gradual_every)
        return frozenset(body[:len(body) - unfrozen])

    def first_trainable(self, epoch: int) -> int:
        """Index in ``blocks`` of the first block that trains: everything before it is frozen.
        New blocks (adapters, the head) always train, so it is at or before the first of them."""
        frozen = self.frozen_at(epoch)
        return next(i for i, name in enumerate(self.blocks) if name not in frozen or name == "head")


_KINDS = ("linear-probe", "top-N", "full", "gradual", "custom")


@dataclass(frozen=True)
class Strategy:
    """A freezing strategy, parsed once from its config string (``"top-2"``) and the config's
    explicit ``frozen_blocks``, which make it ``custom`` whatever the string says.

    >>> s = Strategy.parse("top-2")
    >>> s.kind, s.n, str(s)
    ('top-N', 2, 'top-2')
    >>> str(Strategy.parse("full")), Strategy.parse("gradual", frozen_blocks=("stem",)).label
    ('full', 'custom (1 frozen)')
    >>> Strategy.parse("top-3").describe(gradual_every=2)
    'Top-3: the last 3 blocks and the head train.'
    >>> Strategy.parse("top3")
    Traceback (most recent call last):
    ...
    ValueError: unknown strategy 'top3'; choose one of: linear-probe, top-N (e.g. top-2), full, gradual
    """

    kind: str  # linear-probe | top-N | full | gradual | custom: also the key of config.DEFAULT_LR
    n: int = 0  # top-N: blocks below the head that train
    frozen_blocks: tuple[str, ...] | None = None  # custom: the blocks that stay frozen, when known

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(_unknown(self.kind))

    @classmethod
    def parse(cls, text: str, frozen_blocks: tuple[str, ...] | list[str] | None = None) -> "Strategy":
        """The strategy of a config. The text is checked even when ``frozen_blocks`` override it, so a
        misspelt strategy is reported rather than silently ignored."""
        match = _TOP_N.match(text) if isinstance(text, str) else None
        if match:
            parsed = cls("top-N", int(match.group(1)))
        elif text in _KINDS:
            parsed = cls(text)
        else:
            raise ValueError(_unknown(text))
        return parsed if frozen_blocks is None else cls("custom", frozen_blocks=tuple(frozen_blocks))

    def __str__(self) -> str:
        """The config string: ``top-2``, ``full``, ``custom`` (its blocks are the config's ``frozen_blocks``)."""
        return f"top-{self.n}" if self.kind == "top-N" else self.kind

    @property
    def label(self) -> str:
        """For lists and summaries: the config string, and how many blocks a custom choice freezes."""
        if self.kind == "custom" and self.frozen_blocks is not None:
            return f"custom ({len(self.frozen_blocks)} frozen)"
        return str(self)

    def describe(self, gradual_every: int) -> str:
        """What the strategy trains, in a sentence (the Model page's caption of the presets)."""
        return {"linear-probe": "Linear probe: only the new head trains.",
                "top-N": f"Top-{self.n}: the last {self.n} blocks and the head train.",
                "full": "Full fine-tuning: every block trains.",
                "gradual": f"Gradual: starts as a linear probe and unfreezes one more block from the top every "
                           f"{gradual_every} epoch(s).",
                "custom": "Custom: the blocks ticked in the table train."}[self.kind]


def _unknown(text: object) -> str:
    return f"unknown strategy {text!r}; choose one of: linear-probe, top-N (e.g. top-2), full, gradual"


def backbone_blocks(blocks: tuple[str, ...]) -> tuple[str, ...]:
    """The pretrained blocks below the head: what presets freeze and count. New blocks (the
    head, adapters: `ftlab.edits.is_new_block`) start untrained and always train."""
    return tuple(b for b in blocks if not is_new_block(b))


def make_plan(blocks: list[str] | tuple[str, ...], strategy: str, *, gradual_every: int = 1,
              frozen_blocks: tuple[str, ...] | None = None) -> FreezePlan:
    """The plan for a preset, or for an explicit set of frozen blocks (``strategy="custom"``).
    Adapters train under every plan, an explicit one too: only backbone blocks can be frozen."""
    blocks = tuple(blocks)
    body = backbone_blocks(blocks)
    # explicit blocks override the preset: a gradual schedule would otherwise ignore them
    parsed = Strategy.parse(strategy, frozen_blocks)
    kind, n = parsed.kind, parsed.n
    if parsed.frozen_blocks is not None:
        unknown = set(parsed.frozen_blocks) - set(blocks)
        if unknown:
            raise ValueError(f"no block named {some(sorted(unknown))}; blocks are: {some(blocks)}")
        frozen = frozenset(b for b in parsed.frozen_blocks if not b.startswith(ADAPTER_PREFIX))
    elif kind in ("linear-probe", "gradual"):
        frozen = frozenset(body)
    elif kind == "top-N":
        if n > len(body):
            raise ValueError(f"top-{n} asks for more blocks than the {len(body)} below the head: choose top-1 to "
                             f"top-{len(body)}, or full")
        frozen = frozenset(body[:len(body) - n])
    else:
        frozen = frozenset()
    return FreezePlan(kind, blocks, frozen, gradual_every if kind == "gradual" else 0)


def apply_freeze(model: BlockModel, frozen: frozenset[str] | set[str], bn_frozen: bool = True) -> None:
    """Make ``frozen`` blocks untrainable and every other block trainable, and give the model
    its BatchNorm rule.

    With ``bn_frozen`` the frozen blocks also run in eval mode during training (``model.train()``
    leaves them so), so their BatchNorm layers keep the running statistics they were pretrained
    with (and dropout in them is off): a frozen block then computes exactly what it computes at
    evaluation.
    """
    for name, block in model.named_children():
        for p in block.parameters():
            p.requires_grad_(name not in frozen)
    model.frozen_blocks = frozenset(frozen)
    model.bn_frozen = bn_frozen
    model.train(model.training)  # the rule holds from now, not only from the next train()


def param_groups(model: nn.Sequential, lr: float, weight_decay: float = 0.0,
                 lr_decay: float = 1.0, anchored: frozenset[str] | set[str] = frozenset()) -> list[dict]:
    """One optimiser param group per block, built up front with every parameter.

    Frozen parameters are included too: they have no gradient, so every optimiser skips
    them, and when a block is unfrozen mid-run its group is already there with its own
    learning rate. Adding a group mid-run is what breaks schedulers elsewhere.
    With ``lr_decay < 1`` (discriminative rates) each block's rate is ``lr_decay`` times
    the rate of the block above it; the head gets ``lr``.
    Weight decay skips 1-D parameters (biases, norm scales and shifts), as timm and nanoGPT
    do: shrinking them towards 0 regularises nothing and moves what BatchNorm learned. With
    ``weight_decay`` a block with both kinds gets two groups of the same name and rate.
    The ``anchored`` blocks get no weight decay: L2-SP pulls them toward their pretrained weights
    instead (`ftlab.objectives.L2SP`), and decay toward 0 would pull them away again.
    """
    named = [(n, list(b.parameters())) for n, b in model.named_children()]
    named = [(n, ps) for n, ps in named if ps]
    groups = []
    for depth, (name, params) in enumerate(reversed(named)):
        rate = lr * lr_decay ** depth
        block_decay = 0.0 if name in anchored else weight_decay
        kinds = ([p for p in params if p.ndim > 1], [p for p in params if p.ndim <= 1]) if block_decay else (params,)
        for decay, members in zip((block_decay, 0.0), kinds):
            if members:
                groups.append({"params": members, "lr": rate, "weight_decay": decay, "name": name})
    return groups[::-1]


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
