"""Which blocks train: freeze plans, the one function that applies them, and param groups.

A plan names the frozen blocks at each epoch. ``apply_freeze`` is the only function that
changes a model's trainability; ``param_groups`` and the counters only read.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

from ftlab.edit_options import ADAPTER_PREFIX, is_new_block
from ftlab.messages import some

if TYPE_CHECKING:  # plans and strategies need no torch: a run's label is made without it
    from torch import nn

    from ftlab.backbones import BlockModel

STRATEGIES = ("linear-probe", "top-N", "full", "gradual", "lp-ft")
_TOP_N = re.compile(r"^top-(\d+)$")
# top-all, or top-BLOCK: the names ftlab's backbones give their blocks (tests/test_strategy_explorer.py checks
# every registered backbone's against it), so that a typo such as top-x is an unknown strategy at once, while a
# real block name the chosen backbone lacks gets the list of its blocks from `make_plan`
_TOP_BLOCK = re.compile(r"^top-(all|stem|conv_head|pool|(?:layer|stage|block|dense|encoder)\d+)$")


@dataclass(frozen=True)
class FreezePlan:
    """Frozen blocks over training; ``blocks`` are the model's blocks with parameters, in order."""

    strategy: str
    blocks: tuple[str, ...]  # ends with "head"
    frozen_at_start: frozenset[str]
    gradual_every: int = 0  # gradual: unfreeze one more block from the top every k epochs
    # lp-ft: the first epoch of full fine-tuning, set by the trainer (`dataclasses.replace`) when the probe has
    # converged; None while it probes, so that every backbone block stays frozen and its features cached
    switch_at: int | None = None

    def frozen_at(self, epoch: int) -> frozenset[str]:
        """Blocks frozen during ``epoch`` (0-based)."""
        if self.strategy == "lp-ft":
            return self.frozen_at_start if self.switch_at is None or epoch < self.switch_at else frozenset()
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


_KINDS = ("linear-probe", "top-N", "full", "gradual", "lp-ft", "custom")


@dataclass(frozen=True)
class Strategy:
    """A freezing strategy, parsed once from its config string (``"top-2"``) and the config's
    explicit ``frozen_blocks``, which make it ``custom`` whatever the string says.

    >>> s = Strategy.parse("top-2")
    >>> s.kind, s.n, str(s)
    ('top-N', 2, 'top-2')
    >>> s = Strategy.parse("top-stage6")  # stage6 and every block above it train; top-all: every block
    >>> s.kind, s.block, str(s), str(Strategy.parse("top-all"))
    ('top-N', 'stage6', 'top-stage6', 'top-all')
    >>> Strategy.parse("lp-ft").kind  # a linear probe to convergence, then full fine-tuning from its head
    'lp-ft'
    >>> str(Strategy.parse("full")), Strategy.parse("gradual", frozen_blocks=("stem",)).label
    ('full', 'custom (1 frozen)')
    >>> Strategy.parse("top-3").describe(gradual_every=2)
    'Top-3: the last 3 blocks and the head train.'
    >>> Strategy.parse("top3")
    Traceback (most recent call last):
    ...
    ValueError: unknown strategy 'top3'; choose one of: linear-probe, top-N (e.g. top-2, top-all, top-stage6), full, gradual, lp-ft
    """

    kind: str  # linear-probe | top-N | full | gradual | lp-ft | custom: also the key of config.DEFAULT_LR
    n: int = 0  # top-N: blocks below the head that train
    frozen_blocks: tuple[str, ...] | None = None  # custom: the blocks that stay frozen, when known
    block: str = ""  # top-N by name: "all" (every backbone block trains) or the lowest block that trains

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(_unknown(self.kind))

    @classmethod
    def parse(cls, text: str, frozen_blocks: tuple[str, ...] | list[str] | None = None) -> "Strategy":
        """The strategy of a config. The text is checked even when ``frozen_blocks`` override it, so a
        misspelt strategy is reported rather than silently ignored."""
        match = _TOP_N.match(text) if isinstance(text, str) else None
        named = _TOP_BLOCK.match(text) if isinstance(text, str) else None
        if match:
            parsed = cls("top-N", int(match.group(1)))
        elif named:
            parsed = cls("top-N", block=named.group(1))
        elif text in _KINDS:
            parsed = cls(text)
        else:
            raise ValueError(_unknown(text))
        return parsed if frozen_blocks is None else cls("custom", frozen_blocks=tuple(frozen_blocks))

    def __str__(self) -> str:
        """The config string: ``top-2``, ``full``, ``custom`` (its blocks are the config's ``frozen_blocks``)."""
        return f"top-{self.block or self.n}" if self.kind == "top-N" else self.kind

    def top_count(self, body: tuple[str, ...]) -> int:
        """top-N: how many of the backbone blocks ``body`` (bottom first) train. Raises ``ValueError``
        with the choices for an N beyond them or a block name that is not one of them."""
        if self.block == "all":
            return len(body)
        if self.block:
            if self.block not in body:
                raise ValueError(f"top-{self.block}: this model has no backbone block {self.block!r}; its blocks "
                                 f"are {some(body)}: choose top-BLOCK with one of them, top-1 to top-{len(body)}, "
                                 "or top-all")
            return len(body) - body.index(self.block)
        if self.n > len(body):
            raise ValueError(f"top-{self.n} asks for more blocks than the {len(body)} below the head: choose top-1 to "
                             f"top-{len(body)}, or full")
        return self.n

    @property
    def label(self) -> str:
        """For lists and summaries: the config string, and how many blocks a custom choice freezes."""
        if self.kind == "custom" and self.frozen_blocks is not None:
            return f"custom ({len(self.frozen_blocks)} frozen)"
        return str(self)

    def describe(self, gradual_every: int) -> str:
        """What the strategy trains, in a sentence (the Model page's caption of the presets)."""
        return {"linear-probe": "Linear probe: only the new head trains.",
                "top-N": self._describe_top(),
                "full": "Full fine-tuning: every block trains.",
                "gradual": f"Gradual: starts as a linear probe and unfreezes one more block from the top every "
                           f"{gradual_every} epoch(s).",
                "lp-ft": "LP-FT (Kumar et al. 2022): a linear probe until its val accuracy stops improving, then "
                         "every block fine-tunes from that head at a lower rate.",
                "custom": "Custom: the blocks ticked in the table train."}[self.kind]


    def _describe_top(self) -> str:
        if self.block == "all":
            return "Top-all: every backbone block and the head train (as full fine-tuning, at the top-N rate)."
        if self.block:
            return f"Top-{self.block}: {self.block}, every block above it and the head train."
        return f"Top-{self.n}: the last {self.n} blocks and the head train."


def _unknown(text: object) -> str:
    return (f"unknown strategy {text!r}; choose one of: linear-probe, top-N (e.g. top-2, top-all, top-stage6), full, "
            "gradual, lp-ft")


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
    kind = parsed.kind
    if parsed.frozen_blocks is not None:
        unknown = set(parsed.frozen_blocks) - set(blocks)
        if unknown:
            raise ValueError(f"no block named {some(sorted(unknown))}; blocks are: {some(blocks)}")
        frozen = frozenset(b for b in parsed.frozen_blocks if not b.startswith(ADAPTER_PREFIX))
    elif kind in ("linear-probe", "gradual", "lp-ft"):
        frozen = frozenset(body)
    elif kind == "top-N":
        frozen = frozenset(body[:len(body) - parsed.top_count(body)])
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


class FrozenBlocksChanged(Exception):
    """The freeze-integrity check failed: a block frozen throughout the run ended different from how it began."""


@dataclass
class IntegrityCheck:
    """The freeze-integrity check: every backbone block frozen in every epoch that ran must end the run with
    its parameters and buffers (BatchNorm's running statistics and batch count) bit for bit as they began.

    ``take`` copies the blocks frozen at the start, ``ran`` narrows them to those frozen in each epoch that
    began (and counts the backbone blocks that trained), ``verify`` compares a state dict (the saved best
    checkpoint's) with the copies. With ``bn_frozen`` off the frozen blocks' BatchNorm layers run in train
    mode and move their statistics by design: then only the parameters are compared, and the sentence says so.
    """

    body: tuple[str, ...]  # the backbone blocks
    bn_frozen: bool = True
    start: dict = field(default_factory=dict)  # block -> {state-dict key: (copy, is a buffer)}
    frozen: set = field(default_factory=set)  # frozen in every epoch so far
    trained: set = field(default_factory=set)  # backbone blocks that trained in some epoch

    def take(self, model: BlockModel, frozen: frozenset[str]) -> None:
        """Copy the frozen backbone blocks' tensors (on the CPU: the device's memory is the run's)."""
        modules = dict(model.named_children())
        for name in (b for b in self.body if b in frozen):
            buffers = {k for k, _ in modules[name].named_buffers()}
            self.start[name] = {f"{name}.{k}": (v.detach().cpu().clone(), k in buffers)
                                for k, v in modules[name].state_dict().items()}
        self.frozen = set(self.start)

    def ran(self, frozen: frozenset[str]) -> None:
        """An epoch began with ``frozen`` frozen."""
        self.frozen &= frozen
        self.trained |= set(self.body) - frozen

    def verify(self, state: dict) -> str:
        """The check's sentence for ``state`` (model state-dict keys to tensors); raises
        ``FrozenBlocksChanged`` naming the blocks and tensors that changed."""
        blocks = [b for b in self.body if b in self.frozen]
        compared = {k: v for b in blocks for k, (v, buffer) in self.start[b].items() if self.bn_frozen or not buffer}
        changed = [k for k, v in compared.items() if k not in state or not _same(state[k], v)]
        if changed:
            which = [b for b in blocks if any(k.startswith(b + ".") for k in changed)]
            raise FrozenBlocksChanged(
                f"The freeze-integrity check failed: {len(changed)} of the {len(compared)} tensors of the blocks "
                f"frozen in every epoch changed during the run ({some(changed)}, in {some(which)}), so the best "
                "checkpoint is not what the strategy promised; do not use it, and report this as a bug in ftlab.")
        if not blocks:
            return "no block was frozen in every epoch: nothing to check"
        if self.bn_frozen:
            return f"{len(blocks)} frozen blocks, {len(compared)} tensors unchanged"
        return (f"{len(blocks)} frozen blocks, {len(compared)} weight tensors unchanged (their BatchNorm statistics "
                "were not checked: with bn_frozen off they move by design)")


def _same(a, b) -> bool:
    """Bit for bit: same shape, dtype and bytes (NaN included, unlike ``torch.equal``)."""
    a = a.detach().cpu()
    return a.shape == b.shape and a.dtype == b.dtype and bool((_flat(a) == _flat(b)).all())


def _flat(t):
    return t.contiguous().reshape(-1).view(_bits(t))


def _bits(t):
    import torch

    return {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
