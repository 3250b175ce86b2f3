"""How images become a model's input: a backbone's evaluation preprocessing as a value, and the
on-device steps that apply it (with optional augmentation) to decoded uint8 images.

Decoding (``ftlab.data``) already resized and cropped each image; what is left runs on the
device, batch by batch: augmentation, scaling to 0..1 and normalisation. A checkpoint carries
its ``Preprocessing``, so prediction and export rebuild exactly what evaluation saw.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Preprocessing:
    """Shorter side resized to ``resize``, the centre ``size`` x ``size`` cropped, then
    ``(x / 255 - mean) / std`` per channel: what a backbone's weights were evaluated with."""

    size: int
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def for_backbone(cls, name: str, image_size: int | None = None) -> "Preprocessing":
        """``name``'s own: its weights' crop ratio at ``image_size`` (default: the backbone's size)."""
        from ftlab import backbones

        spec = backbones.get_spec(name)
        size = image_size or spec.fixed_size or spec.default_size
        return cls(size, max(size, round(size / spec.crop_pct)), tuple(spec.mean), tuple(spec.std))

    @property
    def crop_pct(self) -> float:
        return self.size / self.resize

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(int(d["size"]), int(d["resize"]), tuple(float(v) for v in d["mean"]),
                   tuple(float(v) for v in d["std"]))

    def identity(self) -> str:
        """Everything that changes the tensors, for cache keys."""
        return f"resize {self.resize} crop {self.size} mean {self.mean} std {self.std}"


class Preprocess:
    """uint8 images -> normalised float on the device, with optional per-image augmentation."""

    def __init__(self, preprocessing: Preprocessing, device: torch.device, *, random_crop: bool = False,
                 flip: bool = False, color_jitter: float = 0.0):
        from torchvision.transforms import v2

        self.preprocessing, self.device = preprocessing, device
        self.mean = torch.tensor(preprocessing.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocessing.std, device=device).view(1, 3, 1, 1)
        ops = []
        if random_crop:
            ops.append(v2.RandomResizedCrop(preprocessing.size, scale=(0.5, 1.0), antialias=True))
        if flip:
            ops.append(v2.RandomHorizontalFlip())
        if color_jitter:
            ops.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
        self.augment = v2.Compose(ops) if ops else None

    @classmethod
    def for_config(cls, config, preprocessing: Preprocessing, device: torch.device) -> "Preprocess":
        """A run's: ``config``'s augmentation (a `TrainConfig`) on top of ``preprocessing``."""
        return cls(preprocessing, device, random_crop=config.random_crop, flip=config.flip,
                   color_jitter=config.color_jitter)

    def identity(self, train: bool) -> str:
        """What determines this step's output tensors, for cache keys: the preprocessing and,
        for augmented views, every op with its parameters (torchvision's own repr names them)."""
        ops = " ".join(repr(self.augment).split()) if train and self.augment is not None else "no augmentation"
        return f"{self.preprocessing.identity()}; {ops}"

    def __call__(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True)
        if train and self.augment is not None:
            # one draw of crop / flip / jitter per image, not one for the whole batch
            x = torch.stack([self.augment(img) for img in x])
        return (x.float().div_(255) - self.mean) / self.std


class FeaturePrep:
    """Cached features -> float on the device (they were normalised and augmented before)."""

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, features: torch.Tensor, train: bool) -> torch.Tensor:
        return features.to(self.device, non_blocking=True).float()
