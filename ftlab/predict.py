"""Use a kept run: rebuild its best model and classify an image."""
from __future__ import annotations

import math
import io
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ftlab import backbones, data
from ftlab.config import TrainConfig, option_type, options
from ftlab.engine import Preprocess
from ftlab.runs import CheckpointError, RunStore, load_checkpoint_file


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float
    top: list[tuple[str, float]]  # the k most likely classes, most likely first


def _option_problems(values: dict) -> list[str]:
    """Options of a checkpoint whose type or range TrainConfig would not allow."""
    problems = []
    for f in options():
        if f.name not in values or (values[f.name] is None and f.default is None):
            continue
        value, kind, meta = values[f.name], option_type(f), f.metadata
        if f.name == "frozen_blocks":
            ok = isinstance(value, (list, tuple)) and all(isinstance(b, str) for b in value)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else:
            ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if not ok:
            problems.append(f"{f.name} is {type(value).__name__} {str(value)[:40]!r}, not {kind.__name__}")
        elif meta["choices"] and value not in meta["choices"]:
            problems.append(f"{f.name} {value!r} is not one of {', '.join(meta['choices'])}")
        elif meta["lo"] is not None and kind is not bool and not meta["lo"] <= value <= meta["hi"]:
            problems.append(f"{f.name} {value:g} is outside {meta['lo']:g}..{meta['hi']:g}")
    return problems


def checkpoint_problems(checkpoint: dict) -> list[str]:
    """What in a checkpoint's metadata does not describe a usable model, in words (none: usable).
    The metadata is checked before anything is built from it: a crafted file must neither
    crash a page nor yield outputs cut to a shorter class list."""
    name = checkpoint.get("backbone")
    if not isinstance(name, str) or name not in backbones.list_backbones():
        return [f"names no usable model: unknown backbone {str(name)[:40]!r}"]
    problems = _option_problems({k: checkpoint.get(k, 0) for k in ("hidden", "dropout")}
                                | {"image_size": checkpoint.get("image_size")})
    if checkpoint.get("image_size") is None:
        problems.append("it states no image size")
    config = checkpoint.get("config", {})
    if isinstance(config, dict):
        problems += [f"its config: {p}" for p in _option_problems(config)]
    else:
        problems.append(f"its config is {type(config).__name__}, not a mapping of options")
    state = checkpoint["model"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        return problems + ["its model holds something other than named tensors"]
    n, classes = checkpoint.get("num_classes"), checkpoint.get("classes")
    heads = [v for k, v in state.items() if k.startswith("head.") and k.endswith(".weight") and v.dim() == 2]
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        problems.append(f"its class count {str(n)[:20]!r} is not a whole number of at least 2")
    elif not heads or heads[-1].shape[0] != n:  # before building: a crafted count must not size a huge head
        problems.append(f"does not fit {name} with {n} classes (its head has "
                        f"{heads[-1].shape[0] if heads else 'no'} outputs)")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        problems.append("its class list is not a list of names")
    elif isinstance(n, int) and len(classes) != n:
        problems.append(f"it names {len(classes)} classes for a model with {n} outputs")
    elif len(set(classes)) != len(classes):
        problems.append("its class list names a class twice")
    if any(v.is_floating_point() and not torch.isfinite(v).all() for v in state.values()):
        problems.append("its weights hold NaN or infinite values")
    return problems


def model_from_checkpoint(checkpoint: dict) -> backbones.BlockModel:
    """The checkpoint's model, refusing one whose metadata or tensors do not fit its stated architecture."""
    if problems := checkpoint_problems(checkpoint):
        raise CheckpointError(f"the checkpoint cannot be used: {'; '.join(problems)}")
    try:
        model = backbones.create_model(checkpoint["backbone"], int(checkpoint["num_classes"]), "random",
                                       hidden=int(checkpoint.get("hidden", 0)),
                                       dropout=float(checkpoint.get("dropout", 0.0)))
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"the checkpoint names no usable model: {err}") from None
    state = checkpoint["model"]
    own = model.state_dict()
    wrong = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if wrong:
        raise CheckpointError(f"the checkpoint does not fit {checkpoint['backbone']} with "
                              f"{checkpoint['num_classes']} classes ({len(wrong)} tensors missing or of another "
                              f"shape, first {wrong[0]})")
    model.load_state_dict(state)
    return model.eval()


PREVIEW_PX = 400  # longest side of the copy of an image a page shows


def open_image(source: bytes | str | Path | Image.Image, name: str | None = None) -> Image.Image:
    """An image to show and to classify: decoded, upright and RGB (16-bit, float and other modes
    scaled as training data are). Raises `ftlab.data.DataError` naming ``name`` (the file's
    name; a path names itself) and what is wrong."""
    from ftlab.data import decoding

    if isinstance(source, Image.Image):
        return decoding._to_rgb(ImageOps.exif_transpose(source))
    file = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    name = name or (str(source) if isinstance(source, (str, Path)) else "")
    why = ""
    if isinstance(source, (str, Path)):
        try:
            if not Path(source).is_file():  # a FIFO or a device would block the read
                why = "no such file" if not Path(source).exists() else "not a regular file"
        except (OSError, ValueError) as err:  # too long a name, a NUL byte
            why = f"not a path this system can look up: {getattr(err, 'strerror', None) or err}"
    elif isinstance(source, (bytes, bytearray)) and not source:
        why = "the file is empty"
    if why:
        raise data.DataError(f"Not a readable image: {name or 'the file'} ({why}).")
    try:
        with Image.open(file) as image:
            w, h = image.size
            if w * h > (limit := decoding.max_pixels()):
                raise decoding.TooManyPixels(f"{w} x {h} pixels is more than the limit of {limit:,} "
                                             "(setting FTLAB_MAX_PIXELS)")
            image.load()
            return decoding._to_rgb(ImageOps.exif_transpose(image))
    except Exception as e:  # noqa: BLE001 - whatever PIL raises, for the user it means "not an image"
        # PIL names the file in its message, and a buffer by its repr (<_io.BytesIO object at 0x…>)
        reason = ("not a kind of image PIL knows" if isinstance(e, UnidentifiedImageError) else
                  decoding._reason(e).replace(repr(file), "the upload"))
        raise data.DataError(f"Not a readable image{': ' + name if name else ''} ({reason}). Use a JPEG, PNG, "
                             "BMP, GIF, TIFF or WebP file.") from None


def preview(image: Image.Image, side: int = PREVIEW_PX) -> Image.Image:
    """A copy of an `open_image` result small enough to send to a browser."""
    small = image.copy()
    small.thumbnail((side, side))
    return small


class Predictor:
    """A run's best model, ready to classify images the way its training data was prepared."""

    def __init__(self, checkpoint: dict):
        self.checkpoint = checkpoint
        self.model = model_from_checkpoint(checkpoint)
        self.classes = list(checkpoint["classes"])
        self.image_size = int(checkpoint["image_size"])
        # the training run's own preprocessing, so a prediction sees what evaluation saw
        config = TrainConfig.from_dict({**checkpoint.get("config", {}), "backbone": checkpoint["backbone"]})
        try:
            self.prep = Preprocess(config, self.image_size, torch.device("cpu"))
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"the checkpoint's preprocessing cannot be rebuilt: {err}") from None

    @classmethod
    def for_run(cls, run_id: str, store: RunStore | None = None) -> "Predictor":
        """The best model of a run in the store, found by its id (never by a path): an unknown
        run is a KeyError that says so."""
        store = store or RunStore()
        store.get(run_id)
        checkpoint = store.load_checkpoint(run_id)
        try:
            return cls(checkpoint)
        except CheckpointError as err:
            raise CheckpointError(f"run {run_id}'s checkpoint ({store.checkpoint_path(run_id)}): {err}") from None

    @classmethod
    def from_file(cls, path: Path) -> "Predictor":
        return cls(load_checkpoint_file(path))

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) -> class probabilities (N, K)."""
        return self.model(self.prep(images, train=False)).softmax(1)

    def predict(self, image, top_k: int = 5, name: str | None = None) -> Prediction:
        """``image``: a path, bytes, or a PIL image; ``name`` names it in messages."""
        probs = self.probabilities(data.decode_image(open_image(image, name), self.image_size)[None])[0]
        values, idx = probs.topk(min(top_k, len(self.classes)))
        top = [(self.classes[i], float(v)) for v, i in zip(values, idx)]
        return Prediction(top[0][0], top[0][1], top)
