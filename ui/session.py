"""The session's choices and the run configuration they add up to, both ways.

Widgets bound to a `TrainConfig` field use the key ``cfg.<field>`` (`ui.keys.cfg`) and start
from the dataclass default, so each default lives once. A few fields are derived from other
choices (the data set from the Data page's source, the strategy from the Model page's presets
and block table); `current_config` puts them together and `adopt_config` takes them apart.
"""
from __future__ import annotations

import dataclasses
import uuid
from collections.abc import MutableMapping

from ftlab import tasks
from ftlab.backbones import Weights
from ftlab.config import TrainConfig
from ftlab.edits import ModelEdits, editable_blocks, parse_widths
from ftlab.freeze import Strategy, backbone_blocks
from ui.keys import (BUILTIN, CM_NORMALISED, DATASET, DOWNLOAD, EDITOR_VERSION, FOLDER, FROZEN, HEAD_ERROR,
                     HEAD_TEXT, INSPECT_CM_NORMALISED, INSPECT_TOP_K, OWNER, PRESET, SIM_APPLY, SIM_RATIO, SOURCE, SOURCES,
                     TOP_N, WEIGHTS, WEIGHTS_FILE, cfg)
from ui.keys import FEATURE_MAP_METHOD, LR_FIND_OPTION, TORCHRUN_NPROC

# Fields that come from other choices rather than from a widget of their own.
DERIVED = frozenset({"dataset", "imbalance_ratio", "weights", "strategy", "frozen_blocks", "sweep"})


def _defaults() -> dict:
    d = TrainConfig()
    values = {cfg(f.name): getattr(d, f.name) for f in dataclasses.fields(TrainConfig) if f.name not in DERIVED}
    values[cfg("tasks")] = tasks.as_choice(d.tasks)  # a multiselect of the data set's tasks holds a list
    values.update({
        DATASET: d.dataset, SOURCE: SOURCES[0], BUILTIN: d.dataset, FOLDER: "", SIM_RATIO: 10.0,
        SIM_APPLY: False, WEIGHTS: d.weights, WEIGHTS_FILE: "", PRESET: d.strategy, TOP_N: 2, FROZEN: None,
        EDITOR_VERSION: 0, TORCHRUN_NPROC: 2, FEATURE_MAP_METHOD: "pca", HEAD_TEXT: "", CM_NORMALISED: False, INSPECT_CM_NORMALISED: False, INSPECT_TOP_K: 5,
    })
    from ftlab.lr_find import FinderOptions

    values.update({LR_FIND_OPTION.format(f.name): f.default for f in dataclasses.fields(FinderOptions)})
    return values


def init_state(state: MutableMapping) -> None:
    """Fill in every key a page reads, once per session (widgets then take their value from here)."""
    for key, value in _defaults().items():
        state.setdefault(key, value)
    state.setdefault(OWNER, uuid.uuid4().hex)


def strategy_of(state: MutableMapping) -> Strategy:
    """The strategy the Model page's preset, N and block table stand at."""
    frozen = state[FROZEN] if state[PRESET] == "custom" else None
    return Strategy(state[PRESET], state[TOP_N] if state[PRESET] == "top-N" else 0,
                    tuple(frozen) if frozen is not None else None)


def current_config(state: MutableMapping) -> TrainConfig:
    """The run configuration the session's choices add up to (nothing is checked here)."""
    direct = {f.name: state[cfg(f.name)] for f in dataclasses.fields(TrainConfig) if f.name not in DERIVED}
    direct["adapter_after"] = tuple(direct["adapter_after"])  # a multiselect keeps a list
    direct["tasks"] = tasks.as_text(direct["tasks"])  # the chosen tasks' names, as --tasks lists them
    weights = str(Weights(state[WEIGHTS], state[WEIGHTS_FILE].strip() if state[WEIGHTS] == "file" else ""))
    strategy = strategy_of(state)
    return TrainConfig(dataset=state[DATASET], imbalance_ratio=float(state[SIM_RATIO]) if state[SIM_APPLY] else 1.0,
                       weights=weights, strategy=str(strategy), frozen_blocks=strategy.frozen_blocks, **direct)


def adopt_config(state: MutableMapping, config: TrainConfig) -> None:
    """Make a run's settings the session's choices: the inverse of `current_config`, for a
    refreshed browser (a new session) that finds its run still going."""
    from ftlab import data

    for f in dataclasses.fields(TrainConfig):
        if f.name not in DERIVED:
            state[cfg(f.name)] = getattr(config, f.name)
    state[cfg("tasks")] = tasks.as_choice(config.tasks)
    kinds = {d.name: d.kind for d in data.list_datasets()}
    state[DATASET] = config.dataset
    if kinds.get(config.dataset) == "builtin":
        state[SOURCE], state[BUILTIN] = SOURCES[0], config.dataset
    elif config.dataset in kinds:
        state[SOURCE], state[DOWNLOAD] = SOURCES[1], config.dataset
    else:
        state[SOURCE], state[FOLDER] = SOURCES[3], config.dataset
    state[SIM_APPLY] = config.imbalance_ratio > 1
    if config.imbalance_ratio > 1:
        state[SIM_RATIO] = config.imbalance_ratio
    weights = Weights.parse(config.weights)
    state[WEIGHTS] = weights.kind
    if weights.kind == "file":
        state[WEIGHTS_FILE] = weights.path
    # the page sets the head by its widths: a config's old hidden option becomes them
    state[cfg("head")], state[cfg("hidden")] = config.edits().head, 0
    state[HEAD_TEXT] = ",".join(map(str, config.edits().head))
    state.pop(HEAD_ERROR, None)
    strategy = Strategy.parse(config.strategy, config.frozen_blocks)
    state[PRESET], state[FROZEN] = strategy.kind, strategy.frozen_blocks
    if strategy.kind == "top-N":
        state[TOP_N] = top_count(strategy, config, state[TOP_N])
    state[EDITOR_VERSION] += 1


def top_count(strategy: Strategy, config: TrainConfig, otherwise: int) -> int:
    """The Model page's N for a top-N strategy: a named one (top-all, top-stage6) as the number of blocks it
    trains on the config's backbone (the same plan), ``otherwise`` where the backbone has no such block."""
    if not strategy.block:
        return strategy.n
    from ftlab.backbones import freezable_blocks
    from ftlab.config import resolved_image_size

    try:
        return strategy.top_count(backbone_blocks(freezable_blocks(config.backbone, config.edits(),
                                                                   resolved_image_size(config))))
    except ValueError:
        return otherwise


def set_preset(state: MutableMapping, preset: str) -> None:
    """A freezing preset replaces any hand-made block selection (and the table shows it afresh)."""
    state[PRESET] = preset
    state[FROZEN] = None
    state[EDITOR_VERSION] += 1


def choose_frozen(state: MutableMapping, frozen: set[str] | frozenset[str], blocks: tuple[str, ...]) -> None:
    """The blocks the user unticked in the block table become the custom strategy (in the model's order)."""
    state[PRESET], state[FROZEN] = "custom", tuple(b for b in blocks if b in frozen)


def fit_to_backbone(state: MutableMapping, blocks: tuple[str, ...] | list[str]) -> None:
    """Keep the freezing choices possible for a backbone with these blocks (``head`` last), before
    the Model page draws them: N within the blocks below the head, and a hand-made selection
    that names another backbone's blocks replaced by the linear probe."""
    state[TOP_N] = min(max(1, state[TOP_N]), len(backbone_blocks(tuple(blocks))))
    if state[PRESET] == "custom" and not set(state[FROZEN] or ()) <= set(blocks):
        set_preset(state, "linear-probe")


def fit_edits(state: MutableMapping, backbone: str) -> None:
    """Keep the model edits possible for ``backbone``, before the Model page draws them: a cut at
    one of its blocks (else none), adapters only after blocks the cut keeps."""
    if state[cfg("truncate_after")] not in editable_blocks(backbone):
        state[cfg("truncate_after")] = ""
    kept = editable_blocks(backbone, state[cfg("truncate_after")])
    state[cfg("adapter_after")] = [b for b in state[cfg("adapter_after")] if b in kept]


def fit_tasks(state: MutableMapping, names: tuple[str, ...]) -> None:
    """Keep the task choice to the data set's tasks (``names``, from `ftlab.data.Dataset.task_names`;
    () when it cannot be read), before a page builds the config or draws the choice: `tasks.fit_choice`."""
    state[cfg("tasks")] = tasks.fit_choice(tasks.as_choice(tasks.as_text(state[cfg("tasks")])), names)


def clear_edits(state: MutableMapping) -> None:
    """No model edits: the backbone as it is with a linear head (dropout stays, an option of its own)."""
    for name in ("head", "activation", "head_batchnorm", "truncate_after", "adapter_after", "adapter_dim", "hidden"):
        state[cfg(name)] = getattr(TrainConfig(), name)
    state[HEAD_TEXT] = ""
    state.pop(HEAD_ERROR, None)


def take_head_text(state: MutableMapping) -> None:
    """The head widths typed on the Model page (``512,128``) become the config's head, or a
    sentence saying why not (the head stays as it was)."""
    try:
        widths = parse_widths(state[HEAD_TEXT])
        problems = ModelEdits(head=widths).shape_problems(())
    except ValueError as err:
        problems = [str(err)]
    if problems:
        state[HEAD_ERROR] = " ".join(problems)
        return
    state[cfg("head")], state[cfg("hidden")] = widths, 0
    state.pop(HEAD_ERROR, None)


def finder_options(state: MutableMapping):
    """The learning-rate finder's options as the Train page's controls stand."""
    from ftlab.lr_find import FinderOptions

    return FinderOptions(**{f.name: state[LR_FIND_OPTION.format(f.name)] for f in dataclasses.fields(FinderOptions)})


def use_rate(state: MutableMapping, rate: float) -> None:
    """The learning-rate finder's suggestion becomes the learning rate (before the form draws it)."""
    state[cfg("lr")] = rate


def apply_suggestion(state: MutableMapping, setting: dict, config: TrainConfig) -> None:
    """Apply a `ftlab.diversity.Suggestion`'s setting when the user asks for it."""
    from ftlab.diversity import setting_values

    for name, value in setting_values(setting, config).items():
        if name == "strategy":
            strategy = Strategy.parse(value)
            set_preset(state, strategy.kind)
            if strategy.kind == "top-N":
                state[TOP_N] = top_count(strategy, config, state[TOP_N])
        elif cfg(name) in state:
            state[cfg(name)] = value
