"""What the model sees: class activation maps of a kept run's best model for one image.

Grad-CAM (Selvaraju et al. 2017) for the predicted class and for the true one, and EigenCAM
(Muhammad & Yeasin 2020: the first principal component of the activations, no gradients) for
comparison, all from the maintained ``grad-cam`` package (``pytorch_grad_cam``) on each
backbone's last spatial block, which the catalogue declares (``BackboneFacts.cam_block``).

The model is rebuilt from the checkpoint (`ftlab.checkpoints`), never by the engine; nothing is
written. Its parameters are set not to need gradients, so a frozen backbone and a trained one are
explained the same way: a forward hook makes the target block's *output* a leaf that needs a
gradient, which is all Grad-CAM reads (a frozen model otherwise gives grad-cam no gradient at all).
"""
from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from ftlab import backbones, checkpoints, data
from ftlab.edit_options import ADAPTER_PREFIX
from ftlab.predict import Predictor, open_image
from ftlab.runs import RunStore

PANEL_PX = 224  # the side of each map in a saved strip: small inputs (digits at 16 px) are scaled up
METHODS = ("gradcam", "eigencam")


@dataclass(frozen=True)
class Map:
    """One class activation map of an image: ``cam`` (S, S) in [0, 1], and it over the image."""

    method: str  # gradcam | eigencam
    title: str  # in words, for a caption
    class_index: int | None  # the class Grad-CAM explains (EigenCAM: None, it explains no class)
    cam: np.ndarray
    overlay: np.ndarray  # (S, S, 3) uint8


@dataclass(frozen=True)
class Explanation:
    """An image as the run's model saw it, its probabilities, and its maps."""

    run_id: str
    image: np.ndarray  # (S, S, 3) uint8: the crop the model was given
    classes: tuple[str, ...]
    probabilities: tuple[float, ...]  # of the first task's classes
    predicted: int
    true: int | None  # None: not known (an upload whose class was not given)
    target_block: str
    maps: tuple[Map, ...]
    seconds: float  # the maps' compute time, model already loaded
    name: str = ""  # the image's file name or "val image #k"
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "image": self.name, "predicted": self.classes[self.predicted],
                "probability": self.probabilities[self.predicted],
                "true": None if self.true is None else self.classes[self.true],
                "target_block": self.target_block, "maps": [m.title for m in self.maps],
                "seconds": round(self.seconds, 4), "notes": list(self.notes)}

    def strip(self, side: int = PANEL_PX) -> Image.Image:
        """The image and its maps side by side, each captioned: what ``explain --out`` saves."""
        panels = [("input: " + self.name if self.name else "input", self.image)]
        panels += [(m.title, m.overlay) for m in self.maps]
        caption_h = 28
        out = Image.new("RGB", (side * len(panels), side + caption_h), "white")
        draw = ImageDraw.Draw(out)
        for i, (title, pixels) in enumerate(panels):
            tile = Image.fromarray(pixels).resize((side, side), Image.Resampling.NEAREST)
            out.paste(tile, (i * side, 0))
            draw.text((i * side + 4, side + 4), _fit(title, side), fill="black")
        return out


def _fit(text: str, px: int) -> str:
    """``text`` cut to what PIL's default 6-px-wide font fits into ``px``."""
    room = max(4, px // 6)
    return text if len(text) <= room else text[:room - 1] + "…"


# --- the target layer --------------------------------------------------------------------------

def target_block(model: backbones.BlockModel) -> str:
    """The block whose output the maps are taken from: the backbone's declared ``cam_block``;
    where the run's edits cut the backbone before it, the last block kept before the pool; and
    where an adapter follows that block, the adapter (its output is what the head sees)."""
    spec = backbones.get_spec(model.backbone)
    if not spec.cam_block:
        raise ValueError(f"backbone {model.backbone!r} declares no cam_block in the catalogue")
    names = model.block_names
    body = names[:names.index("pool")] if "pool" in names else names[:-1]
    own = [n for n in body if not n.startswith(ADAPTER_PREFIX)]
    name = spec.cam_block if spec.cam_block in own else own[-1]
    adapter = ADAPTER_PREFIX + name
    return adapter if adapter in body else name


class _Tokens(nn.Module):
    """Feature maps (N, D, g, g) back to ViT's tokens (N, 1 + g*g, D), the class token the
    blocks before gave put in front: the maps are what the maps are taken of, the tokens what the
    blocks after take."""

    def __init__(self, class_token: torch.Tensor):
        super().__init__()
        self.class_token = class_token  # (1, 1, D)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        tokens = maps.flatten(2).transpose(1, 2)
        return torch.cat([self.class_token.expand(len(tokens), -1, -1), tokens], dim=1)


def _tokens_to_maps(x: torch.Tensor) -> torch.Tensor:
    """ViT's tokens (N, 1 + g*g, D) as feature maps (N, D, g, g), the class token left out;
    feature maps pass unchanged."""
    if x.dim() != 3:
        return x
    n, length, d = x.shape
    g = int(round((length - 1) ** 0.5))
    return x[:, 1:, :].reshape(n, g, g, d).permute(0, 3, 1, 2)


def _needs_grad(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the target's output as a leaf that needs a gradient, whatever the blocks
    before it are (frozen, or set not to need gradients here)."""
    return output.detach().requires_grad_(True)


# --- the maps ----------------------------------------------------------------------------------

def overlay(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """``cam`` (S, S) in [0, 1] as a jet heat map over ``image`` (S, S, 3) uint8, half and half."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(image.astype(np.float32) / 255, cam.astype(np.float32), use_rgb=True, image_weight=0.5)


class _Rank:
    """A grad-cam target: the ``rank``-th largest score among the first ``k`` logits (0: the
    predicted class's), so one pass explains classes not known before it."""

    def __init__(self, k: int, rank: int):
        self.k, self.rank = k, rank

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:self.k].topk(self.rank + 1).values[self.rank]


class Explainer:
    """A kept checkpoint's model, ready to draw class activation maps for images prepared the
    way its training data were. One map at a time (a lock): the hooks are the model's own.

    The blocks up to the target run once per image, without gradients; grad-cam then runs the
    blocks after it (the pool and the head, cheap) on that output, so Grad-CAM for two classes
    and EigenCAM cost one forward pass of the backbone (Lite0 at 224 px: under a second on 2 cores).
    """

    def __init__(self, checkpoint: dict, run_id: str = ""):
        self.run_id = run_id
        self.predictor = Predictor(checkpoint)
        self.model = self.predictor.model.eval()
        # no parameter gradient is ever needed: the maps read the target block's activation
        # gradients only, so no weight can change and the backward pass stops at that block
        self.model.requires_grad_(False)
        self.classes = tuple(self.predictor.classes)
        self.block = target_block(self.model)
        at = self.model.block_names.index(self.block)
        self.prefix, self.rest = self.model[:at + 1], list(self.model[at + 1:])
        self._lock = threading.Lock()

    @classmethod
    def for_run(cls, run_id: str, store: RunStore | None = None) -> "Explainer":
        """The best model of a kept run, by its id: an unknown run is a KeyError that says so."""
        store = store or RunStore()
        store.get(run_id)
        checkpoint = store.load_checkpoint(run_id)
        try:
            return cls(checkpoint, run_id)
        except checkpoints.CheckpointError as err:
            raise checkpoints.CheckpointError(f"run {run_id}'s checkpoint: {err}") from None

    def pixels(self, source, name: str | None = None) -> torch.Tensor:
        """An image (bytes, a path or a PIL image) as the model's uint8 (3, S, S) input: resized
        and cropped as its evaluation did. Raises `ftlab.data.DataError` for what is not an image."""
        prep = self.predictor.preprocessing
        return data.decode_image(open_image(source, name), prep.size, prep.resize)

    def explain(self, pixels: torch.Tensor, true: int | None = None, name: str = "") -> Explanation:
        """The maps of one image (uint8 (3, S, S)): Grad-CAM for the predicted class and for
        ``true`` (not known: for the second most likely class), and EigenCAM."""
        from pytorch_grad_cam import EigenCAM, GradCAM
        from pytorch_grad_cam.utils.image import scale_cam_image
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        from threadpoolctl import threadpool_limits

        if true is not None and not 0 <= true < len(self.classes):
            raise ValueError(f"class index {true} is not one of the run's {len(self.classes)} classes")
        k, size = len(self.classes), pixels.shape[-1]
        with self._lock:
            start = time.perf_counter()
            with torch.no_grad():
                found = self.prefix(self.predictor.prep(pixels[None], train=False))
            maps = _tokens_to_maps(found)  # grad-cam takes (N, C, h, w) inputs
            target = nn.Identity()
            after = [_Tokens(found[:, :1])] if found.dim() == 3 else []
            suffix = nn.Sequential(target, *after, *self.rest).eval()
            hook = target.register_forward_hook(_needs_grad)  # before grad-cam's hooks: they run in order
            try:
                with torch.enable_grad(), GradCAM(suffix, [target]) as cam:
                    second = _Rank(k, 1) if true is None else ClassifierOutputTarget(true)
                    grads = cam(maps.expand(2, -1, -1, -1), [_Rank(k, 0), second])
                    probs = cam.outputs[0, :k].detach().softmax(0)  # several tasks: the first task's columns
                # one BLAS thread for EigenCAM's SVD (of the h*w x C activations, with C x C factors):
                # several spin against the app's other threads, 8x slower on a loaded 2-core machine
                with EigenCAM(suffix, [target]) as cam, threadpool_limits(1, "blas"):
                    eigen = cam(maps, None)
            finally:
                hook.remove()
            # to the input's size, then to [0, 1] again: the order grad-cam keeps for its own inputs
            cams = scale_cam_image(scale_cam_image(np.concatenate([grads, eigen]), (size, size)))
            seconds = time.perf_counter() - start
        predicted = int(probs.argmax())
        other = true if true is not None else int(probs.topk(2).indices[1])
        image = pixels.permute(1, 2, 0).numpy()
        notes = () if true is not None else ("the true class is not known: the second map explains the second most "
                                             "likely class",)
        # Grad-CAM keeps the positive evidence only: a class nothing in the image speaks for has a flat map
        notes += tuple(f"no part of the image raises the score of {self.classes[c]}: its Grad-CAM is zero everywhere"
                       for c, cam in zip((predicted, other), cams[:2]) if cam.max() < 1e-6)
        return Explanation(self.run_id, image, self.classes, tuple(float(p) for p in probs), predicted, true,
                           self.block, self._maps(image, probs, predicted, other, true is not None, cams), seconds,
                           name, notes)

    def _maps(self, image, probs, predicted: int, other: int, known: bool, cams: np.ndarray) -> tuple[Map, ...]:
        name = self.classes
        which = "true" if known else "2nd"
        return (Map("gradcam", f"Grad-CAM, predicted {name[predicted]} ({probs[predicted]:.0%})", predicted,
                    cams[0], overlay(image, cams[0])),
                Map("gradcam", f"Grad-CAM, {which} {name[other]} ({probs[other]:.0%})", other, cams[1],
                    overlay(image, cams[1])),
                Map("eigencam", "EigenCAM (no gradients)", None, cams[2], overlay(image, cams[2])))


# --- images of a run ---------------------------------------------------------------------------

def val_images(record) -> list[dict]:
    """The run's stored val images, in its order: the data-set index, true and predicted class
    indices and loss of each (`ftlab.runs.RunRecord.final`); [] when none were kept."""
    val = record.final.get("val") if isinstance(record.final, dict) else None
    if not isinstance(val, dict) or "labels" not in val:
        return []
    return [{"index": int(i), "label": int(y), "predicted": int(p), "loss": float(l)}
            for i, y, p, l in zip(val["indices"], val["labels"], val["predictions"], val.get("losses", val["labels"]))]


def val_pixels(ds: data.Dataset, record, position: int, explainer: Explainer) -> tuple[torch.Tensor, int, str]:
    """The run's ``position``-th val image decoded for ``explainer``'s model, its true class and
    its name. Raises `ftlab.data.DataError` when the data set no longer holds the run's images."""
    rows = val_images(record)
    if not rows:
        raise data.DataError(f"run {record.id} kept no val images (a run stopped before its final evaluation, or "
                             "one kept before val labels were stored)")
    if not 0 <= position < len(rows):
        raise data.DataError(f"there is no val image #{position}: run {record.id} has {len(rows)} "
                             f"(choose 0 to {len(rows) - 1})")
    row = rows[position]
    if [str(c) for c in ds.classes] != list(explainer.classes) or row["index"] >= len(ds):
        raise data.DataError(f"the data set ({ds.source or ds.name}) is not the one run {record.id} was trained on "
                             "any more: its classes or images have changed")
    prep = explainer.predictor.preprocessing
    decoded = data.decode(ds, np.asarray([row["index"]]), prep.size, resize=prep.resize)
    if decoded.skipped:
        raise data.DataError(f"val image #{position} cannot be read: {decoded.skipped[0]}")
    return decoded.images[0], row["label"], f"val image #{position}"


def class_index(classes: tuple[str, ...], name: str | None) -> int | None:
    """The index of class ``name`` (None: not given); a ValueError naming the choices otherwise."""
    if name is None:
        return None
    if name not in classes:
        from ftlab.messages import printable, some

        raise ValueError(f"{printable(name)!r} is not one of the run's classes: {some(classes)}")
    return classes.index(name)


def of_val_image(explainer: Explainer, record, ds: data.Dataset, position: int) -> Explanation:
    """The maps of the run's ``position``-th val image, for its true class."""
    pixels, label, name = val_pixels(ds, record, position, explainer)
    return explainer.explain(pixels, label, name)


def of_file(explainer: Explainer, source, name: str, true_class: str | None = None) -> Explanation:
    """The maps of an image file (bytes or a path), for ``true_class`` where it is given."""
    return explainer.explain(explainer.pixels(source, name), class_index(explainer.classes, true_class), name)


def val_caption(record, position: int) -> str:
    """The run's ``position``-th val image in words: its true and predicted class and loss."""
    rows, classes = val_images(record), record.classes
    if not 0 <= position < len(rows):
        return ""
    r = rows[position]
    verdict = "right" if r["label"] == r["predicted"] else "wrong"
    return (f"val image #{position}: true class {classes[r['label']]}, predicted {classes[r['predicted']]} "
            f"({verdict}; loss {r['loss']:.2f})")


def enlarged(pixels: np.ndarray, side: int = PANEL_PX) -> np.ndarray:
    """A small (S, S, 3) image scaled up to ``side`` with its pixels kept square, for a page."""
    if pixels.shape[0] >= side:
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((side, side), Image.Resampling.NEAREST))


def same_val_split(records, run) -> list:
    """The kept runs (``records``) scored on ``run``'s val images with its classes, ``run`` first:
    the ones whose maps of a val image can stand side by side."""
    mine = val_images(run)
    key = ([r["index"] for r in mine], list(run.classes))
    found = [r for r in records if r.id != run.id and mine
             and ([v["index"] for v in val_images(r)], list(r.classes)) == key]
    return [run, *found]


def save(explanation: Explanation, path: Path) -> Path:
    """The strip as a PNG at ``path``, written whole or not at all (a temporary file renamed)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"--out {path} must name a .png file")
    if not path.parent.is_dir():
        raise ValueError(f"the folder {path.parent} does not exist: create it or choose another --out")
    buf = io.BytesIO()
    explanation.strip().save(buf, "PNG")
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    return path
