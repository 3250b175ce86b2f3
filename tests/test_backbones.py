"""Tests for ftlab.backbones: one contract over every registered backbone, the blocks against the
original models, the offline ImageNet weights, weights files and the registry."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.transforms.v2 import functional as TF

from ftlab import backbones
from ftlab.backbones import (
    BackboneSpec,
    BlockModel,
    WeightsUnavailable,
    create_model,
    get_spec,
    imagenet_categories,
    imagenet_classifier,
    list_backbones,
    register,
    weights_available_offline,
)

K = 3
NAMES = list_backbones()
PRETRAINED = [n for n in NAMES if get_spec(n).has_imagenet]
RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision's ResNet18_Weights.IMAGENET1K_V1, by its published URL


def size(name: str) -> int:
    return get_spec(name).fixed_size or 64


def batch(name: str) -> int:
    # ViT has no BatchNorm, so one 224 px image is enough and halves the slowest forward pass here
    return 1 if get_spec(name).fixed_size else 2


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_registry_has_the_backbones_the_spec_promises():
    promised = {"resnet18", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
                "convnext_tiny", "regnet_y_400mf", "densenet121", "vit_b_16", "efficientnet_lite0", "small_cnn"}
    assert promised <= set(NAMES)
    assert len(NAMES) == len(set(NAMES))


# --- the contract every backbone honours ------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_backbone_contract(name):
    spec = get_spec(name)
    assert spec.name == name
    assert spec.min_size <= spec.default_size
    torch.manual_seed(0)
    model = create_model(name, K, "random")
    assert isinstance(model, BlockModel) and model.backbone == name and model.num_classes == K

    names = model.block_names
    assert names[-2:] == ["pool", "head"]
    blocks = model.param_blocks()
    assert blocks[0] == "stem" and blocks[-1] == "head"
    # the freezable blocks are the blocks with parameters, in model order; the others have none
    assert [n for n in names if n in blocks] == blocks
    assert all(n_params(getattr(model, n)) == 0 for n in names if n not in blocks)
    assert all(n_params(getattr(model, n)) > 0 for n in blocks)
    # every parameter belongs to exactly one block (shared ones would be counted twice here)
    counts = model.block_params()
    assert list(counts) == names
    assert sum(counts.values()) == n_params(model)

    # a new head for K classes on the backbone's features
    linears = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
    assert linears[-1].out_features == K
    assert linears[0].in_features == spec.head_in_features

    # blocks run in the order of block_names, each exactly once, and the pool hands the head
    # a flat (batch, head_in_features) feature
    calls = []
    hooks = [getattr(model, n).register_forward_hook(lambda m, i, o, n=n: calls.append((n, tuple(o.shape))))
             for n in names]
    x = torch.randn(batch(name), 3, size(name), size(name))
    model.eval()
    with torch.no_grad():
        out = model(x)
    for h in hooks:
        h.remove()
    assert [n for n, _ in calls] == names
    assert dict(calls)["pool"] == (len(x), spec.head_in_features)
    assert out.shape == (len(x), K) and torch.isfinite(out).all()

    # the smallest size the spec allows also runs
    if spec.min_size != size(name):
        with torch.no_grad():
            assert model(torch.randn(1, 3, spec.min_size, spec.min_size)).shape == (1, K)


def _drop_last_linear(model: nn.Module) -> nn.Linear:
    """Replace the model's final classifier Linear by Identity, so that it returns features."""
    path, last = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, nn.Identity())
    return last


@pytest.mark.parametrize("name", PRETRAINED)
def test_blocks_compute_what_the_original_model_computes(name, monkeypatch):
    """Loaded with the same weights, the blocks up to the pool compute the original model's
    features (its output with the final classifier removed), and no parameter is lost."""
    spec = get_spec(name)
    torch.manual_seed(0)
    if name == "efficientnet_lite0":
        import timm

        reference = timm.create_model("tf_efficientnet_lite0", pretrained=False)  # the network ftlab builds
    else:
        reference = torchvision.models.get_model(name, weights=None)
    with torch.no_grad():  # BatchNorm statistics other than 0/1, so a misplaced norm layer shows
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    if name == "efficientnet_lite0":
        monkeypatch.setattr(backbones, "_lite0_state_dict", lambda model: state)
    else:
        monkeypatch.setattr(backbones, "_torchvision_state_dict", lambda arch: state)
    model = create_model(name, K, "imagenet").eval()

    classifier = _drop_last_linear(reference)
    assert (classifier.in_features, classifier.out_features) == (spec.head_in_features, 1000)
    reference.eval()
    x = torch.randn(batch(name), 3, size(name), size(name))
    with torch.no_grad():
        expected, got = reference(x), model[:-1](x)
    torch.testing.assert_close(got, expected)
    # the original's parameters (less its classifier) plus the new head, nothing dropped
    assert n_params(model) == n_params(reference) + spec.head_in_features * K + K


def test_small_cnn_parameter_count_by_hand():
    # 3x3 convolutions without bias, each followed by BatchNorm (weight and bias)
    def conv_bn(cin, cout):
        return 9 * cin * cout + 2 * cout

    expected = {"stem": conv_bn(3, 32), "stage1": conv_bn(32, 64) + conv_bn(64, 64),
                "stage2": conv_bn(64, 128) + conv_bn(128, 128), "stage3": conv_bn(128, 256) + conv_bn(256, 256),
                "pool": 0, "head": 256 * K + K}
    assert expected["stem"] == 928 and sum(expected.values()) == 1_164_707
    assert create_model("small_cnn", K, "random").block_params() == expected


def test_head_options_give_the_requested_structure():
    model = create_model("small_cnn", 5, "random", hidden=16, dropout=0.25)
    layers = list(model.head)
    linears = [(i, m) for i, m in enumerate(layers) if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for _, m in linears] == [(256, 16), (16, 5)]
    between = layers[linears[0][0] + 1:linears[1][0]]
    assert any(isinstance(m, nn.ReLU) for m in between)
    assert any(isinstance(m, nn.Dropout) for m in between)
    assert isinstance(layers[0], nn.Dropout)
    assert [m.p for m in layers if isinstance(m, nn.Dropout)] == [0.25, 0.25]
    features = torch.randn(8, 256)
    model.head.train()
    assert not torch.equal(model.head(features), model.head(features))  # dropout is live in training
    model.head.eval()
    assert torch.equal(model.head(features), model.head(features))
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 5)

    plain = create_model("small_cnn", 5, "random")
    plain_linears = [m for m in plain.head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in plain_linears] == [(256, 5)]
    plain.head.train()
    assert torch.equal(plain.head(features), plain.head(features))  # no dropout unless asked for

    dropped = create_model("small_cnn", 5, "random", dropout=0.5)
    assert [m.p for m in dropped.head.modules() if isinstance(m, nn.Dropout)] == [0.5]
    assert len([m for m in dropped.head.modules() if isinstance(m, nn.Linear)]) == 1


# --- EfficientNet-Lite0's offline ImageNet weights ------------------------------------------

def test_imagenet_categories():
    categories = imagenet_categories()
    assert len(categories) == 1000
    assert categories[0] == "tench" and categories[1] == "goldfish" and categories[999] == "toilet tissue"


def test_efficientnet_lite0_recognises_the_china_photo():
    from sklearn.datasets import load_sample_image

    image = torch.from_numpy(load_sample_image("china.jpg").copy()).permute(2, 0, 1)  # (3, 427, 640) uint8
    assert image.shape == (3, 427, 640)
    x = TF.resize(image.float() / 255, [224, 224], antialias=True)  # the whole photo, squashed
    x = TF.normalize(x, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert weights_available_offline("efficientnet_lite0")
    model = imagenet_classifier("efficientnet_lite0").eval()
    with torch.no_grad():
        probs = model(x[None]).softmax(1)[0]
    categories = imagenet_categories()
    top5 = [categories[i] for i in probs.topk(5).indices]
    assert top5[0] == "bell cote"
    # SPEC.md's five were measured in timm's PyTorch-padded efficientnet_lite0; in the network these
    # TensorFlow weights were trained in (tf_efficientnet_lite0: "same" padding, BatchNorm eps 1e-3)
    # castle takes boathouse's place
    assert set(top5) == {"bell cote", "church", "palace", "dome", "castle"}

    # the classifier is the file's own `_fc`, the stem its `_conv_stem` (EfficientNet-PyTorch naming)
    source = torch.load(backbones._lite0_file(), map_location="cpu", weights_only=True)
    assert torch.equal(model.head[-1].weight, source["_fc.weight"])
    assert torch.equal(model.head[-1].bias, source["_fc.bias"])
    assert torch.equal(model.stem[0].weight, source["_conv_stem.weight"])
    assert torch.equal(model.conv_head[0].weight, source["_conv_head.weight"])


def test_efficientnet_lite0_state_dict_pairs_247_tensors_of_equal_shape():
    import timm

    source = torch.load(backbones._lite0_file(), map_location="cpu", weights_only=True)
    assert len(source) == 296
    target = timm.create_model("efficientnet_lite0", pretrained=False)
    mapped = backbones._lite0_state_dict(target)
    assert len(mapped) == 247
    src = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target.state_dict() if not k.endswith("num_batches_tracked")]
    assert list(mapped) == dst
    for tensor, key in zip(src, dst):
        assert torch.equal(mapped[key], tensor)
        assert target.state_dict()[key].shape == tensor.shape


# --- torchvision's ImageNet weights, offline ---------------------------------------------------

@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache and FTLAB_OFFLINE=1; returns the checkpoints folder."""
    monkeypatch.setenv("FTLAB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert Path(torch.hub.get_dir()) == tmp_path / "torch" / "hub"  # torch.hub follows TORCH_HOME
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_offline_imagenet_weights_name_the_file_and_the_cache_folder(empty_torch_home):
    cache = empty_torch_home
    assert get_spec("resnet18").weights_file == RESNET18_FILE
    assert not weights_available_offline("resnet18")
    with pytest.raises(WeightsUnavailable) as info:
        create_model("resnet18", K, "imagenet")
    message = str(info.value)
    assert RESNET18_FILE in message and str(cache) in message
    assert f"https://download.pytorch.org/models/{RESNET18_FILE}" in message
    assert not cache.exists() or not any(cache.iterdir())  # nothing half-downloaded left behind

    # a file of that name in the cache folder is what the offline check and the loader look for
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(reference.state_dict(), cache / RESNET18_FILE)
    assert weights_available_offline("resnet18")
    model = create_model("resnet18", K, "imagenet")
    assert torch.equal(model.stem[0].weight, reference.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    assert model.head[-1].out_features == K
    classifier = imagenet_classifier("resnet18")
    assert torch.equal(classifier.head[-1].weight, reference.fc.weight)
    assert torch.equal(classifier.head[-1].bias, reference.fc.bias)


def test_a_cache_file_for_another_model_is_refused(empty_torch_home):
    empty_torch_home.mkdir(parents=True)
    torch.save(create_model("small_cnn", K, "random").state_dict(), empty_torch_home / RESNET18_FILE)
    with pytest.raises(WeightsUnavailable, match="resnet18"):
        create_model("resnet18", K, "imagenet")


def test_backbones_without_imagenet_weights_say_so():
    assert not weights_available_offline("small_cnn")
    with pytest.raises(WeightsUnavailable, match="random"):
        create_model("small_cnn", K, "imagenet")


# --- weights files -------------------------------------------------------------------------

class _Payload:
    """Unpickling this creates ``marker``: what a malicious weights file would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious_files(tmp_path: Path, tag: str) -> tuple[list[Path], Path]:
    marker = tmp_path / f"pwned-{tag}"
    raw, zipped = tmp_path / f"{tag}-raw.pth", tmp_path / f"{tag}-zip.pth"
    raw.write_bytes(pickle.dumps({"stem.0.weight": _Payload(marker)}, protocol=2))
    torch.save({"model": {"stem.0.weight": _Payload(marker)}}, zipped)
    return [raw, zipped], marker


def test_the_malicious_payload_is_live_when_unpickled(tmp_path):
    # the control for the next tests: loading these files without weights_only runs the payload
    (raw, zipped), marker = _malicious_files(tmp_path, "control")
    with open(raw, "rb") as f:
        pickle.load(f)["stem.0.weight"].close()
    assert marker.exists()
    marker.unlink()
    torch.load(zipped, weights_only=False)["model"]["stem.0.weight"].close()
    assert marker.exists()


def test_a_malicious_weights_file_is_refused_and_not_run(tmp_path):
    files, marker = _malicious_files(tmp_path, "attack")
    for file in files:
        with pytest.raises(WeightsUnavailable, match="not a loadable weights file"):
            create_model("small_cnn", K, str(file))
        assert not marker.exists()


def test_a_malicious_file_in_the_torch_cache_is_refused_and_not_run(tmp_path, empty_torch_home):
    (_, zipped), marker = _malicious_files(tmp_path, "cache")
    empty_torch_home.mkdir(parents=True)
    zipped.rename(empty_torch_home / RESNET18_FILE)
    with pytest.raises(WeightsUnavailable, match="not a loadable weights file"):
        create_model("resnet18", K, "imagenet")
    assert not marker.exists()


def test_a_weights_file_of_the_same_backbone_loads(tmp_path):
    torch.manual_seed(2)
    source = create_model("small_cnn", K, "random")
    file = tmp_path / "small.pth"
    torch.save(source.state_dict(), file)
    model = create_model("small_cnn", K, str(file))
    own = model.state_dict()
    assert own.keys() == source.state_dict().keys()
    assert all(torch.equal(own[k], v) for k, v in source.state_dict().items())  # head included

    # an ftlab checkpoint ({"model": state, ...}) for another class count: body loads, head is new
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"model": source.state_dict(), "backbone": "small_cnn", "classes": ["a", "b", "c"]}, checkpoint)
    other = create_model("small_cnn", 5, str(checkpoint))
    assert other.head[-1].weight.shape == (5, 256)
    for key, value in source.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(other.state_dict()[key], value), key


def test_a_weights_file_of_another_backbone_is_refused(tmp_path):
    small, resnet = tmp_path / "small.pth", tmp_path / "resnet.pth"
    torch.save(create_model("small_cnn", K, "random").state_dict(), small)
    torch.save(create_model("resnet18", K, "random").state_dict(), resnet)
    with pytest.raises(WeightsUnavailable, match="does not fit resnet18"):
        create_model("resnet18", K, str(small))
    with pytest.raises(WeightsUnavailable, match="does not fit small_cnn"):
        create_model("small_cnn", K, str(resnet))


def test_weights_files_that_are_no_state_dict_are_refused(tmp_path):
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        create_model("small_cnn", K, str(tmp_path / "missing.pth"))
    tensors = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], tensors)
    with pytest.raises(WeightsUnavailable):
        create_model("small_cnn", K, str(tensors))
    good = tmp_path / "good.pth"
    torch.save(create_model("small_cnn", K, "random").state_dict(), good)
    text, empty, truncated = tmp_path / "notes.pth", tmp_path / "empty.pth", tmp_path / "truncated.pth"
    text.write_text("not weights")
    empty.write_bytes(b"")  # torch.load raises an EOFError with an empty message here
    truncated.write_bytes(good.read_bytes()[:1000])
    for file in (text, empty, truncated):
        with pytest.raises(WeightsUnavailable, match="not a loadable weights file"):
            create_model("small_cnn", K, str(file))
    odd = tmp_path / "odd.pth"
    torch.save({"stem.0.weight": 3, "epoch": 7}, odd)
    with pytest.raises(WeightsUnavailable, match="does not fit small_cnn"):
        create_model("small_cnn", K, str(odd))


# --- the registry ------------------------------------------------------------------------------

def test_registering_a_name_twice_raises(monkeypatch):
    monkeypatch.setattr(backbones, "_REGISTRY", dict(backbones._REGISTRY))
    original = get_spec("resnet18")
    with pytest.raises(ValueError, match="resnet18"):
        register(BackboneSpec("resnet18", "an impostor", backbones._small_cnn, 256, has_imagenet=False))
    assert get_spec("resnet18") is original

    spec = register(BackboneSpec("tiny_test", "a test entry", backbones._small_cnn, 256, has_imagenet=False))
    assert list_backbones()[-1] == "tiny_test" and get_spec("tiny_test") is spec
    assert create_model("tiny_test", 2, "random").backbone == "tiny_test"
    with pytest.raises(ValueError):
        register(spec)


def test_unknown_backbone_names_list_the_valid_ones():
    for call in (lambda: get_spec("resnet19"), lambda: create_model("resnet19", K, "random")):
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert "resnet19" in message
        assert all(name in message for name in NAMES)
