"""Which blocks train: freeze plans, the one function that applies them, and param groups.

A plan names the frozen blocks at each epoch. ``apply_freeze`` is the only function that
changes a model's trainability; ``param_groups`` and the counters only read.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from typing import TYPE_CHECKING

from torch import nn

from ftlab.edits import ADAPTER_PREFIX, is_new_block
from ftlab.messages import some

if TYPE_CHECKING:
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


def parse_strategy(strategy: str) -> tuple[str, int]:
    """``"top-3"`` -> ``("top-N", 3)``; the other presets -> ``(name, 0)``.

    >>> parse_strategy("top-2"), parse_strategy("full")
    (('top-N', 2), ('full', 0))
    """
    match = _TOP_N.match(strategy)
    if match:
        return "top-N", int(match.group(1))
    if strategy in ("linear-probe", "full", "gradual", "custom"):
        return strategy, 0
    raise ValueError(f"unknown strategy {strategy!r}; choose one of: linear-probe, top-N (e.g. top-2), "
                     "full, gradual")


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
    kind, n = parse_strategy(strategy)
    if frozen_blocks is not None:
        unknown = set(frozen_blocks) - set(blocks)
        if unknown:
            raise ValueError(f"no block named {some(sorted(unknown))}; blocks are: {some(blocks)}")
        # explicit blocks override the preset: a gradual schedule would otherwise ignore them
        kind, frozen = "custom", frozenset(b for b in frozen_blocks if not b.startswith(ADAPTER_PREFIX))
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
                 lr_decay: float = 1.0) -> list[dict]:
    """One optimiser param group per block, built up front with every parameter.

    Frozen parameters are included too: they have no gradient, so every optimiser skips
    them, and when a block is unfrozen mid-run its group is already there with its own
    learning rate. Adding a group mid-run is what breaks schedulers elsewhere.
    With ``lr_decay < 1`` (discriminative rates) each block's rate is ``lr_decay`` times
    the rate of the block above it; the head gets ``lr``.
    Weight decay skips 1-D parameters (biases, norm scales and shifts), as timm and nanoGPT
    do: shrinking them towards 0 regularises nothing and moves what BatchNorm learned. With
    ``weight_decay`` a block with both kinds gets two groups of the same name and rate.
    """
    named = [(n, list(b.parameters())) for n, b in model.named_children()]
    named = [(n, ps) for n, ps in named if ps]
    groups = []
    for depth, (name, params) in enumerate(reversed(named)):
        rate = lr * lr_decay ** depth
        kinds = ([p for p in params if p.ndim > 1], [p for p in params if p.ndim <= 1]) if weight_decay else (params,)
        for decay, members in zip((weight_decay, 0.0), kinds):
            if members:
                groups.append({"params": members, "lr": rate, "weight_decay": decay, "name": name})
    return groups[::-1]


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
