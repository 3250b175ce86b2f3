"""Use a kept run: rebuild its best model and classify an image."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ftlab import checkpoints, data
from ftlab import tasks as task_options
from ftlab.checkpoints import CheckpointError
from ftlab.runs import RunStore
from ftlab.transforms import Preprocess


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float
    top: list[tuple[str, float]]  # the k most likely classes, most likely first
    # several tasks: each task's k most likely classes, the first task's (``top``) first ({}: one task)
    tasks: dict[str, list[tuple[str, float]]] = field(default_factory=dict)


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
        self.model = checkpoints.load_model(checkpoint)
        self.classes = list(checkpoint["classes"])
        self.tasks = checkpoints.tasks(checkpoint)  # (name, classes) of each task, the first task's first
        self.sizes = checkpoints.task_sizes(checkpoint)
        # the training run's own preprocessing, so a prediction sees what evaluation saw
        self.preprocessing = checkpoints.preprocessing(checkpoint)
        self.image_size = self.preprocessing.size
        self.prep = Preprocess(self.preprocessing, torch.device("cpu"))

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
        return cls(checkpoints.load_file(path))

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) -> class probabilities (N, K) of the first task."""
        return self.task_probabilities(images)[0]

    @torch.no_grad()
    def task_probabilities(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """uint8 (N, 3, S, S) -> each task's class probabilities, the first task's first."""
        return tuple(p.softmax(1) for p in task_options.split(self.model(self.prep(images, train=False)), self.sizes))

    def predict(self, image, top_k: int = 5, name: str | None = None) -> Prediction:
        """``image``: a path, bytes, or a PIL image; ``name`` names it in messages."""
        pixels = data.decode_image(open_image(image, name), self.image_size, self.preprocessing.resize)
        each = []
        for (_, classes), probs in zip(self.tasks, self.task_probabilities(pixels[None])):
            values, idx = probs[0].topk(min(top_k, len(classes)))
            each.append([(classes[i], float(v)) for v, i in zip(values, idx)])
        top = each[0]
        tasks = {name: found for (name, _), found in zip(self.tasks, each)} if self.sizes else {}
        return Prediction(top[0][0], top[0][1], top, tasks)
