"""What an edit of the model is, without torch: the options (:class:`ModelEdits`), their checks
and words, and the names of the blocks an edit adds.

They live apart from `ftlab.edits`, which builds the edited blocks with torch, so that a config,
a run's label and the command line's listings need no torch (`ftlab.edits` re-exports them all).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

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


def adapter_name(block: str) -> str:
    return ADAPTER_PREFIX + block


def is_new_block(name: str) -> bool:
    """Blocks an edit adds (adapters) or that are always new (the head): they have no
    pretrained weights, always train, and a weights file need not hold them."""
    return name == "head" or name.startswith(ADAPTER_PREFIX)
