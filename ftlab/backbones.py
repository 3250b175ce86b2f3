"""Backbones as ordered blocks: a registry of pretrained image classifiers.

Every backbone is rebuilt as a :class:`BlockModel`, an ``nn.Sequential`` of named blocks
(``stem``, stages, a parameter-light ``pool`` and a new ``head``), so that freezing a
prefix, caching its output and giving each block its own learning rate all work on one
uniform structure whatever the architecture.
"""
from __future__ import annotations

import functools
import urllib.error
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ftlab import catalogue, paths
from ftlab.catalogue import (  # noqa: F401  (the torch-free facts, re-exported)
    IMAGENET_MEAN, IMAGENET_STD, Weights, _file_digest, lite0_file as _lite0_file)
from ftlab.messages import some

if TYPE_CHECKING:
    from ftlab.edits import ModelEdits


class WeightsUnavailable(RuntimeError):
    """Pretrained weights that cannot be had here, with a message that says what to do."""


@dataclass(frozen=True)
class BackboneSpec:
    """What ftlab knows about one backbone: its `catalogue.BackboneFacts` and how to build its blocks."""

    name: str
    description: str
    blocks: Callable[[bool], "OrderedDict[str, nn.Module]"]  # pretrained? -> blocks without the head
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
    cam_block: str = ""  # the last block with a spatial output: class activation maps are taken there


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones() -> list[str]:
    return list(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {some(_REGISTRY)}") from None


@functools.cache
def freezable_blocks(name: str, edits: "ModelEdits | None" = None, image_size: int | None = None) -> tuple[str, ...]:
    """The blocks of ``name`` (edited by ``edits``, at ``image_size`` where shapes matter) that
    have parameters, ``head`` last, as ``BlockModel.param_blocks`` names them: truncated blocks
    gone, adapters in place. Read from the architecture alone, built on the meta device (no
    weights, no memory), so that options can be checked before any data or weights are loaded.
    Raises ``ValueError`` for edits that do not fit the backbone."""
    from ftlab import edits as model_edits

    if edits is not None and edits.edited:
        rows = model_edits.edited_blocks(name, 2, edits, image_size)
        return tuple(r.name for r in rows if r.mark != "removed" and r.params > 0)
    spec = get_spec(name)
    try:
        with torch.device("meta"):
            blocks = spec.blocks(False)
    except (NotImplementedError, RuntimeError):  # a builder that computes with tensors (RegNet's widths)
        blocks = spec.blocks(False)
    blocks["head"] = make_head(spec.head_in_features, 2)
    return tuple(n for n, m in blocks.items() if any(True for _ in m.parameters()))


class BlockModel(nn.Sequential):
    """A classifier as named blocks run in order; the last one is ``head``.

    It declares which blocks are frozen and its BatchNorm rule (`ftlab.freeze.apply_freeze`
    sets both): with ``bn_frozen``, ``train()`` leaves the frozen blocks in eval mode, so their
    BatchNorm layers keep their pretrained statistics and compute what they compute at evaluation.
    """

    def __init__(self, backbone: str, blocks: "OrderedDict[str, nn.Module]", num_classes: int,
                 task_sizes: tuple[int, ...] = ()):
        super().__init__(blocks)
        self.backbone = backbone
        self.num_classes = num_classes  # of the first task
        # several tasks: each task's class count, the columns of its logits in that order (one task: ())
        self.task_sizes = tuple(task_sizes)
        self.frozen_blocks: frozenset[str] = frozenset()
        self.bn_frozen = True

    def train(self, mode: bool = True) -> "BlockModel":
        super().train(mode)
        if mode and self.bn_frozen:
            for name, block in self.named_children():
                if name in self.frozen_blocks:
                    block.eval()
        return self

    def __getitem__(self, idx):
        # a slice of blocks is a plain Sequential: a prefix to cache, or the part that trains
        if isinstance(idx, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)

    def forward_from(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Run blocks ``start``.. on ``x``, the output of block ``start - 1`` (a cached one)."""
        for block in list(self._modules.values())[start:]:
            x = block(x)
        return x

    @property
    def block_names(self) -> list[str]:
        return [name for name, _ in self.named_children()]

    def param_blocks(self) -> list[str]:
        """Blocks that have parameters, in order: the ones a user can freeze or train."""
        return [n for n, m in self.named_children() if any(True for _ in m.parameters())]

    def block_params(self) -> dict[str, int]:
        return {n: sum(p.numel() for p in m.parameters()) for n, m in self.named_children()}


def make_head(in_features: int, num_classes: int, hidden: int = 0, dropout: float = 0.0) -> nn.Sequential:
    """A fresh classifier: dropout and a linear layer, or a hidden ReLU layer in between. The
    head before model edits existed, as `ftlab.edits.make_head` builds it (the same state-dict
    keys, so old checkpoints load)."""
    from ftlab import edits

    return edits.make_head(in_features, num_classes, (hidden,) if hidden else (), "relu", dropout)


def create_model(name: str, num_classes: int | tuple[int, ...], weights: str = "imagenet", *, hidden: int = 0,
                 dropout: float = 0.0, edits: "ModelEdits | None" = None,
                 image_size: int | None = None) -> BlockModel:
    """Build ``name`` with ``weights`` ("imagenet", "random" or a file path) and a new head.

    ``edits`` (`ftlab.edits.ModelEdits`) replace the head, truncate the backbone or add adapters;
    ``image_size`` is the size the edited shapes are found at (the backbone's own by default).
    ``hidden`` and ``dropout`` are the head options from before edits, for calls without ``edits``.
    A tuple of class counts (several tasks) builds one head per task (`ftlab.edits.TaskHeads`).
    """
    from ftlab import edits as model_edits

    if edits is None:
        edits = model_edits.ModelEdits(head=(hidden,) if hidden else (), dropout=dropout)
    elif hidden or dropout:
        raise ValueError("give the head's hidden layers and dropout in edits, not also as hidden and dropout")
    source = Weights.parse(weights)
    # a file is loaded into the finished model: its blocks are built with random weights first
    blocks = model_edits.build_blocks(name, num_classes, "imagenet" if source.pretrained else "random", edits,
                                      image_size)
    sizes = tuple(num_classes) if not isinstance(num_classes, int) and len(num_classes) > 1 else ()
    first = num_classes if isinstance(num_classes, int) else num_classes[0]
    model = BlockModel(name, blocks, first, sizes)
    if source.kind == "file":
        load_weights_file(model, Path(source.path))
    return model


def load_weights_file(model: BlockModel, path: Path) -> None:
    """Load a state dict saved from a model of the same backbone (an ftlab checkpoint or a
    plain state dict in ftlab's block naming); the new blocks (the head, adapters) keep their fresh
    weights where the file has none of their name and shape."""
    if not path.is_file():
        raise WeightsUnavailable(f"weights file {path} does not exist")
    from ftlab import safeload

    try:
        state = safeload.load(path)
    except safeload.RefusedFile as err:  # a pickle with code in it, a truncated file, not a torch file
        raise WeightsUnavailable(f"{path} is not a loadable weights file ({err})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise WeightsUnavailable(f"{path} holds a {type(state).__name__}, not a state dict")
    from ftlab.edits import is_new_block

    own = model.state_dict()
    usable = {k: v for k, v in state.items()
              if k in own and isinstance(v, torch.Tensor) and own[k].shape == v.shape}
    # the new blocks (the head, adapters) start fresh where the file has none of their shape
    body = [k for k in own if not is_new_block(k.split(".", 1)[0])]
    if sum(k in usable for k in body) < len(body):
        missing = len(body) - sum(k in usable for k in body)
        raise WeightsUnavailable(f"{path} does not fit {model.backbone}: {missing} of {len(body)} "
                                 "tensors are missing or have another shape")
    model.load_state_dict(usable, strict=False)


def _why(err: Exception) -> str:
    """Why torch refused a file, never with torch's advice to load it with weights_only=False."""
    from ftlab import safeload

    return safeload.reason(err)


# --- ImageNet weights -------------------------------------------------------------------

def _torchvision_state_dict(arch: str) -> "OrderedDict[str, torch.Tensor]":
    """Torchvision's own download and cache, with an offline message naming the file."""
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    file = cache / Path(weights.url).name
    if paths.offline() and not file.exists():
        raise WeightsUnavailable(_offline_message(arch, weights.url, file))
    try:
        # torch.hub unpickles with weights_only=False unless told otherwise, and the cache is
        # a folder users drop files into by hand: load it like any other untrusted file
        with warnings.catch_warnings():  # torch's notes on pickle protocols, for a file refused or not
            warnings.simplefilter("ignore")
            return weights.get_state_dict(progress=False, check_hash=False, weights_only=True)
    except (urllib.error.URLError, OSError) as err:
        raise WeightsUnavailable(_offline_message(arch, weights.url, file, err)) from None
    except Exception as err:  # a file in the cache that is not a plain state dict (or is corrupt)
        raise WeightsUnavailable(f"{file} is not a loadable weights file ({_why(err)}); "
                                 "delete it and try again") from None


def _offline_message(arch: str, url: str, file: Path, err: Exception | None = None) -> str:
    why = f" ({err.__class__.__name__}: {err})" if err else " (offline mode)"
    return (f"ImageNet weights for {arch} are not on this machine and could not be downloaded{why}. "
            f"Put {file.name} (from {url}) into {file.parent}, choose --weights random, or pick "
            "efficientnet_lite0, whose ImageNet weights ship with ftlab's requirements.")


def imagenet_classifier(name: str) -> BlockModel:
    """``name`` with its ImageNet weights and its original 1,000-class classifier, for
    checking that the weights load right and for showing what the backbone already sees."""
    spec = get_spec(name)
    model = create_model(name, 1000, "imagenet")
    source = (torch.load(_lite0_file(), map_location="cpu", weights_only=True) if name == "efficientnet_lite0"
              else _torchvision_state_dict(name))
    # the final classifier's weight and bias are the last (1000, F) and (1000,) tensors
    weight = [v for v in source.values() if tuple(v.shape) == (1000, spec.head_in_features)][-1]
    bias = [v for v in source.values() if tuple(v.shape) == (1000,)][-1]
    model.head[-1].load_state_dict({"weight": weight, "bias": bias})
    return model


def imagenet_categories() -> list[str]:
    """The 1,000 ImageNet class names, from torchvision's weight metadata (offline)."""
    import torchvision

    return list(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _torchvision(arch: str, pretrained: bool) -> nn.Module:
    import torchvision

    model = torchvision.models.get_model(arch, weights=None)
    if pretrained:
        state = _torchvision_state_dict(arch)  # WeightsUnavailable is a RuntimeError: keep it out of the try
        try:
            model.load_state_dict(state)
        except RuntimeError as err:  # a file of the right name holding another model's tensors
            raise WeightsUnavailable(f"{_weights_file(arch)} in {Path(torch.hub.get_dir()) / 'checkpoints'} "
                                     f"does not fit {arch} ({_why(err)}); delete it and try again") from None
    return model


def _weights_file(arch: str) -> str:
    import torchvision

    return Path(torchvision.models.get_model_weights(arch).DEFAULT.url).name


def weights_available_offline(name: str) -> bool:
    """Whether ``name``'s ImageNet weights can be loaded right now without a download."""
    return catalogue.weights_here(get_spec(name))


def download_note(name: str) -> str:
    """What a user should know before choosing ``name``'s ImageNet weights when they are not here."""
    return (f"{name}'s ImageNet weights ({get_spec(name).weights_file}) are not on this machine: the run will try "
            "torchvision's download. Offline, choose random weights or efficientnet_lite0, whose weights "
            "come with ftlab.")


def weights_status(name: str) -> str:
    """Where ``name``'s ImageNet weights stand, in words for a listing."""
    return catalogue.weights_words(get_spec(name))


# --- block decompositions ---------------------------------------------------------------

def _seq(*modules: nn.Module) -> nn.Sequential:
    return nn.Sequential(*modules)


def _resnet(arch: str) -> Callable[[bool], "OrderedDict[str, nn.Module]"]:
    def blocks(pretrained: bool) -> "OrderedDict[str, nn.Module]":
        m = _torchvision(arch, pretrained)
        return OrderedDict(stem=_seq(m.conv1, m.bn1, m.relu, m.maxpool), layer1=m.layer1, layer2=m.layer2,
                           layer3=m.layer3, layer4=m.layer4, pool=_seq(m.avgpool, nn.Flatten(1)))
    return blocks


def _features(arch: str, groups: dict[str, list[int]], neck: Callable[[nn.Module], list[nn.Module]]):
    """Models with a ``features`` Sequential, grouped into stages by index; ``neck`` gives
    what runs after average pooling up to the replaced final Linear."""
    def blocks(pretrained: bool) -> "OrderedDict[str, nn.Module]":
        m = _torchvision(arch, pretrained)
        out = OrderedDict((name, _seq(*(m.features[i] for i in idx))) for name, idx in groups.items())
        out["pool"] = _seq(m.avgpool, *neck(m))
        return out
    return blocks


def _mobilenet_neck(m: nn.Module) -> list[nn.Module]:
    # torchvision's MobileNetV3 classifier has a pretrained hidden layer; keep it, replace the last Linear
    return [nn.Flatten(1), *m.classifier[:-1]]


def _regnet(pretrained: bool) -> "OrderedDict[str, nn.Module]":
    m = _torchvision("regnet_y_400mf", pretrained)
    t = m.trunk_output
    return OrderedDict(stem=m.stem, block1=t.block1, block2=t.block2, block3=t.block3, block4=t.block4,
                       pool=_seq(m.avgpool, nn.Flatten(1)))


def _densenet(pretrained: bool) -> "OrderedDict[str, nn.Module]":
    m = _torchvision("densenet121", pretrained)
    f = m.features
    return OrderedDict(
        stem=_seq(f.conv0, f.norm0, f.relu0, f.pool0),
        dense1=_seq(f.denseblock1, f.transition1), dense2=_seq(f.denseblock2, f.transition2),
        dense3=_seq(f.denseblock3, f.transition3), dense4=_seq(f.denseblock4, f.norm5),
        pool=_seq(nn.ReLU(inplace=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)))


class ViTStem(nn.Module):
    """Patch embedding, class token and position embedding of torchvision's ViT."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.conv_proj, self.class_token = vit.conv_proj, vit.class_token
        self.pos_embedding, self.dropout = vit.encoder.pos_embedding, vit.encoder.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.dropout(x + self.pos_embedding)


class ClassToken(nn.Module):
    """The final LayerNorm of ViT's encoder, then the class token as the image's feature."""

    def __init__(self, ln: nn.Module):
        super().__init__()
        self.ln = ln

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x)[:, 0]


def _vit(pretrained: bool) -> "OrderedDict[str, nn.Module]":
    m = _torchvision("vit_b_16", pretrained)
    layers = list(m.encoder.layers)
    out = OrderedDict(stem=ViTStem(m))
    for i in range(4):  # 12 encoder layers as 4 stages of 3
        out[f"encoder{i + 1}"] = _seq(*layers[3 * i:3 * i + 3])
    out["pool"] = ClassToken(m.encoder.ln)
    return out


def _lite0_state_dict(model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """Map the EfficientNet-PyTorch state dict onto timm's architecture.

    The two namings differ but the tensors come in the same order with equal shapes once
    the ``num_batches_tracked`` counters are left out, so they are paired by position.
    """
    source = torch.load(_lite0_file(), map_location="cpu", weights_only=True)
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise WeightsUnavailable(f"{_lite0_file().name} has {len(src)} tensors, timm's model {len(dst)}")
    own = model.state_dict()
    for (src_key, tensor), key in zip(src, dst):
        if own[key].shape != tensor.shape:
            raise WeightsUnavailable(f"{src_key} {tuple(tensor.shape)} does not fit {key} {tuple(own[key].shape)}")
    return OrderedDict(zip(dst, (t for _, t in src)))


def _lite0(pretrained: bool) -> "OrderedDict[str, nn.Module]":
    import timm

    # the file holds TensorFlow-trained weights: timm's tf_ variant is the same network with
    # TensorFlow's "same" padding and BatchNorm eps 1e-3, the ones they were trained with (in the
    # PyTorch-padded efficientnet_lite0 a linear probe on ants/bees reached 0.941 best val, 0.948 here)
    m = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        m.load_state_dict(_lite0_state_dict(m), strict=False)
    out = OrderedDict(stem=_seq(m.conv_stem, m.bn1))
    for i, block in enumerate(m.blocks):
        out[f"stage{i + 1}"] = block
    out["conv_head"] = _seq(m.conv_head, m.bn2)
    out["pool"] = m.global_pool  # SelectAdaptivePool2d with flatten
    return out


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return _seq(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _small_cnn(pretrained: bool) -> "OrderedDict[str, nn.Module]":
    """A four-block CNN trained from scratch: the baseline that shows what pretraining adds."""
    return OrderedDict(stem=_conv_bn(3, 32, 1), stage1=_seq(_conv_bn(32, 64, 2), _conv_bn(64, 64, 1)),
                       stage2=_seq(_conv_bn(64, 128, 2), _conv_bn(128, 128, 1)),
                       stage3=_seq(_conv_bn(128, 256, 2), _conv_bn(256, 256, 1)),
                       pool=_seq(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)))


_BUILDERS: dict[str, Callable[[bool], "OrderedDict[str, nn.Module]"]] = {
    "resnet18": _resnet("resnet18"),
    "resnet50": _resnet("resnet50"),
    "mobilenet_v3_small": _features("mobilenet_v3_small", {"stem": [0], "stage1": [1], "stage2": [2, 3],
                                                           "stage3": [4, 5, 6], "stage4": [7, 8],
                                                           "stage5": [9, 10, 11], "conv_head": [12]}, _mobilenet_neck),
    "mobilenet_v3_large": _features("mobilenet_v3_large", {"stem": [0], "stage1": [1], "stage2": [2, 3],
                                                           "stage3": [4, 5, 6], "stage4": [7, 8, 9, 10],
                                                           "stage5": [11, 12], "stage6": [13, 14, 15],
                                                           "conv_head": [16]}, _mobilenet_neck),
    "efficientnet_b0": _features("efficientnet_b0", {"stem": [0], **{f"stage{i}": [i] for i in range(1, 8)},
                                                     "conv_head": [8]}, lambda m: [nn.Flatten(1)]),
    "convnext_tiny": _features("convnext_tiny", {"stem": [0], "stage1": [1], "stage2": [2, 3], "stage3": [4, 5],
                                                 "stage4": [6, 7]}, lambda m: list(m.classifier[:-1])),
    "regnet_y_400mf": _regnet,
    "densenet121": _densenet,
    "vit_b_16": _vit,
    "efficientnet_lite0": _lite0,
    "small_cnn": _small_cnn,
}
for _facts in catalogue.CATALOGUE:  # the facts are the catalogue's, written out: no torchvision at import
    register(BackboneSpec(blocks=_BUILDERS[_facts.name], **vars(_facts)))
