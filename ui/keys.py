"""Session-state keys, in one place.

Widgets bound to a `TrainConfig` field use the key ``cfg.<field>``; `ui.session` maps the
keys to the run configuration they add up to and back.
"""
from __future__ import annotations

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
FEATURES_MEASURE = "data.features_measure"  # the button that computes the feature-space figures
FEATURES_ERROR = "data.features_error"  # why they could not be computed, for the next page run
FEATURE_MAP = "data.feature_map"  # the 2-D map's chart (its selection state)
FEATURE_MAP_METHOD = "data.feature_map_method"  # pca | tsne

# Model page
WEIGHTS = "model.weights"  # imagenet | random | file
WEIGHTS_FILE = "model.weights_file"
PRESET = "model.preset"  # linear-probe | top-N | full | gradual | lp-ft | custom
TOP_N = "model.top_n"
FROZEN = "model.frozen_blocks"  # tuple of block names when PRESET is custom
EDITOR_VERSION = "model.editor_version"  # bumped by a preset, so the block table starts afresh
HEAD_TEXT = "model.head_text"  # the head's hidden widths as typed ("512,128"); cfg.head holds them parsed
HEAD_ERROR = "model.head_error"  # why the typed widths were not taken

# Train, Runs and Inspect pages
CM_NORMALISED = "train.cm_normalised"
RUNS_COMPARE = "runs.compare"
RUNS_OVERLAY_TASK = "runs.overlay_task"  # several tasks: the task the overlay of runs draws
RUNS_SELECTED = "runs.selected"
RUNS_CONFIRM = "runs.confirm_delete"
INSPECT_RUN = "inspect.run"
INSPECT_CM_NORMALISED = "inspect.cm_normalised"
INSPECT_IMAGE = "inspect.image"
INSPECT_TOP_K = "inspect.top_k"
TASK_SHOWN = "{}.task"  # .format(train | runs | inspect): the task whose figures a page shows (several tasks)
TASK_CM_NORMALISED = "{}.task_cm_normalised"  # .format(train | runs | inspect)

# Buttons and other widgets whose value no page reads back: keys only, stable for browser
# tests (Streamlit marks each keyed element with the CSS class st-key-<key>).
DOWNLOAD_BUTTON = "data.download_button"
USE_FOLDER = "data.use_folder"
SUGGESTION = "data.suggestion.{}"  # .format(index)
PRESET_BUTTON = "model.preset.{}"  # .format(linear_probe | top_n | full | gradual | lp_ft)
BLOCK_TABLE = "model.blocks.{}"  # .format(EDITOR_VERSION)
HEAD_WARNING = "model.head_warning"
UNDO_EDITS = "model.undo_edits"
TRAIN_FORM = "train.options"
START = "train.start"
START_REFUSED = "train.start_refused"  # (title, problems) of a Start that did not start a run, for the page to draw
STOP = "train.stop"
WATCH = "train.watch.{}"  # .format(run id): watch a run another session started
WATCH_OUTSIDE = "train.watch_outside.{}"  # .format(run id): watch a run started outside the app (CLI, torchrun)
OUTSIDE = "train.outside"  # run id of the run started outside the app that this session watches
OUTSIDE_STOP = "train.outside_stop"  # stop watching it
OUTSIDE_CM = "{}.outside_cm_normalised"  # .format(train | runs): its best model's confusion matrix
LEAVE = "train.leave"  # leave the training queue
TORCHRUN_NPROC = "train.torchrun_nproc"  # processes per node of the torchrun command the Train page shows
LR_FIND = "train.lr_find"  # the form's second button: run the learning-rate finder on the form's options
LR_FIND_JOB = "train.lr_find_job"  # this session's `ftlab.lr_find.Finder` (running, or done with its result)
LR_FIND_USE = "train.lr_find_use"
LR_FIND_STOP = "train.lr_find_stop"
LR_FIND_OPTION = "lrfind.{}"  # .format(a `ftlab.lr_find.FinderOptions` field)
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

# Sweep page
SWEEP_FORM = "sweep.form"
SWEEP_STRATEGIES = "sweep.strategies"
SWEEP_SEEDS = "sweep.seeds"
SWEEP_PER_CLASS = "sweep.per_class"
SWEEP_WORKERS = "sweep.workers"
SWEEP_RAY = "sweep.ray"  # the Ray cluster's address ("": this machine)
SWEEP_RAY_CPUS = "sweep.ray_cpus"
SWEEP_RAY_GPUS = "sweep.ray_gpus"
SWEEP_START = "sweep.start"
SWEEP_STOP = "sweep.stop"
SWEEP_PICKED = "sweep.picked"  # the sweep id the page shows
SWEEP_X = "sweep.x"  # the accuracy chart's x: depth | trainable_params | cpu_seconds
SWEEP_MOVED = "sweep.moved"  # the member whose "which layers moved" heatmap shows
SWEEP_FLASH = "sweep.flash"
SWEEP_PENDING = "sweep.pending"  # a checked plan whose cost warning waits for Start it anyway or Cancel
SWEEP_CONFIRM = "sweep.confirm"
SWEEP_CANCEL = "sweep.cancel"
PROBE_START = "sweep.probe_start"
PROBE_STOP = "sweep.probe_stop"
PROBE_PER_CLASS = "sweep.probe_per_class"

# Inspect page: what the model sees (class activation maps, the shift test, prediction flips)
CAM_SOURCE = "inspect.cam_source"  # a val image | an upload
CAM_VAL = "inspect.cam_val"  # the val image's position in the run's val list
CAM_UPLOAD = "inspect.cam_upload"
CAM_TRUE = "inspect.cam_true"  # the upload's true class ("" : not known)
CAM_RUNS = "inspect.cam_runs"  # further kept runs whose maps stand beside the run's
CAM_DRAW = "inspect.cam_draw"  # the button that draws the maps (each run's model is loaded for them)
CAM_DRAWN = "inspect.cam_drawn"  # True once asked: the maps then follow the chosen image and runs
SHIFT_RUNS = "inspect.shift_runs"  # the runs the shift test re-evaluates
SHIFT_SEED = "inspect.shift_seed"
SHIFT_START = "inspect.shift_start"
SHIFT_STOP = "inspect.shift_stop"
FLIPS_OTHER = "inspect.flips_other"  # the run whose predictions the run's are set against

SOURCES = ("Built-in", "Download", "Upload a .zip", "Folder on this machine")  # the Data page's choices


def cfg(name: str) -> str:
    """Key of the widget bound to ``TrainConfig.<name>``."""
    return f"cfg.{name}"
