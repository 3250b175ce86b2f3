"""Session-state keys, in one place, and the run configuration they add up to.

Widgets bound to a `TrainConfig` field use the key ``cfg.<field>`` and start from the
dataclass default, so each default lives once. A few fields are derived from other choices
(the data set from the Data page's source, the strategy from the Model page's presets and
block table); `current_config` puts them together.
"""
from __future__ import annotations

import dataclasses
import uuid
from collections.abc import MutableMapping

from ftlab.config import TrainConfig

PERSIST = "session"  # persist_state of every keyed widget: values survive page switches

# the session
OWNER = "session.owner"  # who starts jobs in the registry: one running job per browser session
JOB = "train.job"  # run id of the job this session shows

# Data page
DATASET = "data.dataset"  # chosen data set: a registered name, or a folder / .zip path
SOURCE = "data.source"
BUILTIN = "data.builtin"
DOWNLOAD = "data.download"
FOLDER = "data.folder"
UPLOAD = "data.upload"
UPLOAD_SAVED = "data.upload_saved"  # (file id, path) of the upload last kept in the data folder
SIM_RATIO = "data.sim_ratio"
SIM_APPLY = "data.sim_apply"

# Model page
WEIGHTS = "model.weights"  # imagenet | random | file
WEIGHTS_FILE = "model.weights_file"
PRESET = "model.preset"  # linear-probe | top-N | full | gradual | custom
TOP_N = "model.top_n"
FROZEN = "model.frozen_blocks"  # tuple of block names when PRESET is custom
EDITOR_VERSION = "model.editor_version"  # bumped by a preset, so the block table starts afresh

# Train, Runs and Inspect pages
CM_NORMALISED = "train.cm_normalised"
RUNS_COMPARE = "runs.compare"
RUNS_SELECTED = "runs.selected"
RUNS_CONFIRM = "runs.confirm_delete"
INSPECT_RUN = "inspect.run"
INSPECT_CM_NORMALISED = "inspect.cm_normalised"
INSPECT_IMAGE = "inspect.image"
INSPECT_TOP_K = "inspect.top_k"

# Buttons and other widgets whose value no page reads back: keys only, stable for browser
# tests (Streamlit marks each keyed element with the CSS class st-key-<key>).
DOWNLOAD_BUTTON = "data.download_button"
USE_FOLDER = "data.use_folder"
SUGGESTION = "data.suggestion.{}"  # .format(index)
PRESET_BUTTON = "model.preset.{}"  # .format(linear_probe | top_n | full | gradual)
BLOCK_TABLE = "model.blocks.{}"  # .format(EDITOR_VERSION)
HEAD_WARNING = "model.head_warning"
TRAIN_FORM = "train.options"
START = "train.start"
STOP = "train.stop"
WATCH = "train.watch.{}"  # .format(run id): watch a run another session started
DELETE = "runs.delete"
DELETE_CONFIRM = "runs.delete_confirm"
DELETE_CANCEL = "runs.delete_cancel"
DOWNLOAD_CHECKPOINT = "runs.download_checkpoint"
DOWNLOAD_METRICS = "runs.download_metrics"
EXPORT_FORMAT = "runs.export_format"  # torchscript | onnx
EXPORT_INT8 = "runs.export_int8"
EXPORT = "runs.export"
EXPORT_RESULT = "runs.export_result"  # (run id, the last export's `ftlab.export.Exported` or its error)
DOWNLOAD_EXPORT = "runs.download_export"
DOWNLOAD_LABELS = "runs.download_labels"
RUNS_FLASH = "runs.flash"  # a message for the next run of the Runs page
STORE_FLASH = "store.flash"  # (kind, message) of moving a damaged run store aside, for the next page run
MOVE_ASIDE = "store.move_aside"

# Fields that come from other choices rather than from a widget of their own.
DERIVED = frozenset({"dataset", "imbalance_ratio", "weights", "strategy", "frozen_blocks"})
SOURCES = ("Built-in", "Download", "Upload a .zip", "Folder on this machine")
WEIGHT_KINDS = ("imagenet", "random", "file")


def cfg(name: str) -> str:
    """Key of the widget bound to ``TrainConfig.<name>``."""
    return f"cfg.{name}"


def _defaults() -> dict:
    d = TrainConfig()
    values = {cfg(f.name): getattr(d, f.name) for f in dataclasses.fields(TrainConfig) if f.name not in DERIVED}
    values.update({
        DATASET: d.dataset, SOURCE: SOURCES[0], BUILTIN: d.dataset, FOLDER: "", SIM_RATIO: 10.0,
        SIM_APPLY: False, WEIGHTS: d.weights, WEIGHTS_FILE: "", PRESET: d.strategy, TOP_N: 2, FROZEN: None,
        EDITOR_VERSION: 0, CM_NORMALISED: False, INSPECT_CM_NORMALISED: False, INSPECT_TOP_K: 5,
    })
    return values


def init_state(state: MutableMapping) -> None:
    """Fill in every key a page reads, once per session (widgets then take their value from here)."""
    for key, value in _defaults().items():
        state.setdefault(key, value)
    state.setdefault(OWNER, uuid.uuid4().hex)


def strategy_of(state: MutableMapping) -> str:
    preset = state[PRESET]
    return f"top-{state[TOP_N]}" if preset == "top-N" else preset


def current_config(state: MutableMapping) -> TrainConfig:
    """The run configuration the session's choices add up to (nothing is checked here)."""
    direct = {f.name: state[cfg(f.name)] for f in dataclasses.fields(TrainConfig) if f.name not in DERIVED}
    weights = state[WEIGHTS_FILE].strip() if state[WEIGHTS] == "file" else state[WEIGHTS]
    frozen = state[FROZEN] if state[PRESET] == "custom" else None
    return TrainConfig(dataset=state[DATASET], imbalance_ratio=float(state[SIM_RATIO]) if state[SIM_APPLY] else 1.0,
                       weights=weights, strategy=strategy_of(state),
                       frozen_blocks=tuple(frozen) if frozen is not None else None, **direct)


def adopt_config(state: MutableMapping, config: TrainConfig) -> None:
    """Make a run's settings the session's choices: the inverse of `current_config`, for a
    refreshed browser (a new session) that finds its run still going."""
    from ftlab import data, freeze

    for f in dataclasses.fields(TrainConfig):
        if f.name not in DERIVED:
            state[cfg(f.name)] = getattr(config, f.name)
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
    if config.weights in ("imagenet", "random"):
        state[WEIGHTS] = config.weights
    else:
        state[WEIGHTS], state[WEIGHTS_FILE] = "file", config.weights
    if config.frozen_blocks is not None:
        state[PRESET], state[FROZEN] = "custom", tuple(config.frozen_blocks)
    else:
        kind, n = freeze.parse_strategy(config.strategy)
        state[PRESET], state[FROZEN] = kind, None
        if kind == "top-N":
            state[TOP_N] = n
    state[EDITOR_VERSION] += 1


def set_preset(state: MutableMapping, preset: str) -> None:
    """A freezing preset replaces any hand-made block selection (and the table shows it afresh)."""
    state[PRESET] = preset
    state[FROZEN] = None
    state[EDITOR_VERSION] += 1


def apply_suggestion(state: MutableMapping, setting: dict, config: TrainConfig) -> None:
    """Apply a `ftlab.diversity.Suggestion`'s setting when the user asks for it."""
    from ftlab.config import resolved_lr

    for name, value in setting.items():
        if name == "strategy":
            set_preset(state, value)
        elif name == "lr_factor":
            state[cfg("lr")] = _within("lr", float(f"{resolved_lr(config) * value:.3g}"))
        elif name == "epochs_factor":
            state[cfg("epochs")] = _within("epochs", round(config.epochs * value))
        elif cfg(name) in state:
            state[cfg(name)] = value


def _within(name: str, value: float) -> float:
    """``value`` moved into the option's range: a widget given a value outside it silently shows its minimum
    instead (a learning rate of 8 doubled became 1e-07)."""
    meta = next(f.metadata for f in dataclasses.fields(TrainConfig) if f.name == name)
    return type(value)(min(max(value, meta["lo"]), meta["hi"]))


def describe_setting(setting: dict) -> str:
    """A suggestion's setting in words, for its button.

    >>> describe_setting({"lr_factor": 2.0, "epochs_factor": 0.75})
    'learning rate ×2, epochs ×0.75'
    >>> describe_setting({"strategy": "top-2", "flip": True})
    'strategy top-2, flip True'
    """
    words = {"lr_factor": "learning rate ×{:g}", "epochs_factor": "epochs ×{:g}"}
    return ", ".join(words[k].format(v) if k in words else f"{k.replace('_', ' ')} {v}" for k, v in setting.items())
