"""Preprocessing per backbone: each backbone's weights bring their evaluation resize and crop,
decoding applies them as torchvision does, and a checkpoint's predictions decode with its own."""
import numpy as np
import pytest
import torch
from PIL import Image

from ftlab import backbones, checkpoints, data, engine
from ftlab.config import TrainConfig
from ftlab.data import decoding
from ftlab.predict import Predictor
from ftlab.runs import RunStore
from ftlab.transforms import Preprocess, Preprocessing

CPU = torch.device("cpu")


def _torchvision_transforms(name: str):
    import torchvision

    try:
        return torchvision.models.get_model_weights(name).DEFAULT.transforms()
    except ValueError:  # not a torchvision model (Lite0 comes from timm, small_cnn from ftlab)
        return None


# --- each backbone's own resize and crop ------------------------------------------------------

def test_every_torchvision_backbone_preprocesses_as_its_weights_transforms_say():
    compared = []
    for name in backbones.list_backbones():
        t = _torchvision_transforms(name)
        if t is None:
            continue
        p = Preprocessing.for_backbone(name, t.crop_size[0])
        assert (p.size, p.resize) == (t.crop_size[0], t.resize_size[0]), name
        assert p.mean == pytest.approx(tuple(t.mean)) and p.std == pytest.approx(tuple(t.std)), name
        compared.append(name)
    assert len(compared) == 9  # resnet18 ... vit_b_16: every torchvision backbone was compared
    # the figures differ between weights: not one ratio for all
    assert {Preprocessing.for_backbone(n, 224).resize for n in compared} == {256, 232, 236}


def test_lite0_crops_as_timm_says_for_the_tensorflow_lite0_weights():
    import timm

    cfg = timm.models.get_pretrained_cfg("tf_efficientnet_lite0")
    p = Preprocessing.for_backbone("efficientnet_lite0")
    assert p.size == 224 and p.resize == round(224 / cfg.crop_pct) == 256
    # ImageNet's mean and std, measured better in the network ftlab builds (ftlab.backbones._timm_crop_pct)
    assert (p.mean, p.std) == (backbones.IMAGENET_MEAN, backbones.IMAGENET_STD)
    # at another image size the crop ratio holds
    assert Preprocessing.for_backbone("efficientnet_lite0", 128).resize == round(128 / 0.875)


def test_small_cnn_has_no_weights_to_follow_and_keeps_the_whole_shorter_side():
    p = Preprocessing.for_backbone("small_cnn")
    assert (p.size, p.resize) == (64, 64)


# --- decoding applies it, as torchvision does -------------------------------------------------

def _photos(root, count: int = 12) -> list:
    """Real photos of every shape: the smallest, portrait, landscape, and the rest in order."""
    files = sorted(root.glob("*/*/*.jpg"))
    by_side = sorted(files, key=lambda f: min(Image.open(f).size))
    portrait = [f for f in files if Image.open(f).size[1] > Image.open(f).size[0]][:2]
    return list(dict.fromkeys(by_side[:2] + portrait + files[:count]))[:count + 4]


@pytest.mark.parametrize("size, resize", [(224, 256), (224, 224), (160, 183)])
def test_decoding_equals_torchvision_resize_then_centre_crop_on_real_photos(hymenoptera, size, resize):
    from torchvision import transforms

    reference = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(size)])
    photos = _photos(hymenoptera)
    assert min(min(Image.open(f).size) for f in photos) < size  # one is enlarged, not only reduced
    for path in photos:
        ours = data.decode_image(path, size, resize).permute(1, 2, 0).numpy().astype(np.float32)
        with Image.open(path) as image:
            theirs = np.asarray(reference(image.convert("RGB")), dtype=np.float32)
        assert ours.shape == theirs.shape == (size, size, 3)
        assert np.abs(ours - theirs).mean() < 2.0, path  # grey levels, of 255
    # the cropped images are not the whole-frame ones: the crop is applied, not ignored
    if resize != size:
        whole = data.decode_image(photos[-1], size, size).float()
        assert (data.decode_image(photos[-1], size, resize).float() - whole).abs().mean() > 10


def test_a_data_set_decodes_as_its_images_one_by_one(hymenoptera):
    ds = data.load_dataset(str(hymenoptera))
    indices = np.array([0, 7, len(ds) - 1])
    decoded = data.decode(ds, indices, 96, resize=110)
    for image, i in zip(decoded.images, indices):
        assert torch.equal(image, data.decode_image(ds._files[i], 96, 110))


def test_in_memory_images_are_resized_and_cropped_like_files():
    """digits are arrays, not files: the same resize and crop, by torchvision's functional ops."""
    from torchvision.transforms.v2 import functional as F

    ds = data.load_dataset("digits")
    decoded = data.decode(ds, np.arange(4), 28, resize=32)
    grey = torch.from_numpy(ds._pixels[:4]).unsqueeze(1)
    expected = F.center_crop(F.resize(grey, 32, antialias=True), [28, 28]).expand(-1, 3, -1, -1)
    assert torch.equal(decoded.images, expected)
    assert not torch.equal(decoded.images, data.decode(ds, np.arange(4), 28).images)


def test_a_resize_below_the_crop_is_refused():
    with pytest.raises(ValueError, match="resize .* must be at least the image size"):
        data.decode_image(Image.new("RGB", (40, 30)), 32, 24)


# --- a checkpoint carries it, and the Predictor decodes with it -------------------------------

def _photo_folder(root, per_class: int = 8):
    """Two classes of non-uniform photos larger than the crop: the crop changes what a model sees."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(("left", "right")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            x = np.linspace(0, 255, 60)[None, :, None] * (1 if k == 0 else -1) % 256
            pixels = (x + rng.normal(0, 40, (48, 60, 3))).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory):
    """One tiny run of resnet18 (random weights, 32 px: resize 37) on a folder of photos."""
    tmp = tmp_path_factory.mktemp("photo-run")
    folder = _photo_folder(tmp / "photos")
    store = RunStore(tmp / "home")
    config = TrainConfig(dataset=str(folder), backbone="resnet18", weights="random", strategy="linear-probe",
                         image_size=32, epochs=1, batch_size=8, val_fraction=0.25)
    summary = engine.run(config, store=store)
    assert summary["stopped_reason"] == "completed", summary
    return folder, store.load_checkpoint(summary["run_id"])


def _probabilities(checkpoint: dict, pixels: torch.Tensor, p: Preprocessing) -> torch.Tensor:
    model = checkpoints.load_model(checkpoint)
    with torch.no_grad():
        return model(Preprocess(p, CPU)(pixels[None], train=False)).softmax(1)[0]


def test_a_new_checkpoint_records_its_resize_and_predictions_decode_with_it(photo_run):
    folder, checkpoint = photo_run
    p = checkpoints.preprocessing(checkpoint)
    assert p == Preprocessing.for_backbone("resnet18", 32) and (p.size, p.resize) == (32, 37)
    assert checkpoint["preprocessing"]["resize"] == 37

    image = folder / "left" / "0.png"
    predictor = Predictor(checkpoint)
    predicted = dict(predictor.predict(image, top_k=2).top)
    cropped = _probabilities(checkpoint, data.decode_image(image, 32, 37), p)
    whole = _probabilities(checkpoint, data.decode_image(image, 32, 32), p)
    assert [predicted[c] for c in checkpoint["classes"]] == pytest.approx(cropped.tolist(), abs=1e-6)
    assert not torch.allclose(cropped, whole, atol=1e-4)  # decoding with the resize is what made them equal


def test_an_old_checkpoint_without_preprocessing_predicts_as_before(photo_run):
    """Written before checkpoints carried their preprocessing: the whole shorter side, ImageNet's mean and std."""
    folder, checkpoint = photo_run
    old = {k: v for k, v in checkpoint.items() if k != "preprocessing"}
    p = checkpoints.preprocessing(old)
    assert p == Preprocessing(32, 32, backbones.IMAGENET_MEAN, backbones.IMAGENET_STD)
    image = folder / "right" / "3.png"
    predicted = dict(Predictor(old).predict(image, top_k=2).top)
    expected = _probabilities(old, data.decode_image(image, 32), p)
    assert [predicted[c] for c in old["classes"]] == pytest.approx(expected.tolist(), abs=1e-6)


def test_an_old_checkpoint_keeps_its_backbones_mean_and_std():
    assert checkpoints.preprocessing({"backbone": "small_cnn", "image_size": 16}) == \
        Preprocessing(16, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert checkpoints.preprocessing({"backbone": "efficientnet_lite0", "image_size": 96}) == \
        Preprocessing(96, 96, backbones.IMAGENET_MEAN, backbones.IMAGENET_STD)


# --- small images get the crop too ------------------------------------------------------------

def test_small_in_memory_images_get_the_backbones_crop_like_photos():
    """The rule (ftlab.data.prepare): one crop for every data set. digits (8 px arrays) decoded for
    resnet18 at 32 px are its 37 -> 32 crop, the same as decoding them with that resize by hand."""
    config = TrainConfig(dataset="digits", backbone="resnet18", weights="random", image_size=32)
    p = Preprocessing.for_backbone(config.backbone, config.image_size)
    prepared = data.prepare(config, p.size, p.resize)
    assert (prepared.image_size, prepared.resize) == (32, 37)
    by_hand = data.decode(prepared.dataset, prepared.split.val, 32, resize=37)
    assert torch.equal(prepared.val.images, by_hand.images)
    assert not torch.equal(prepared.val.images, data.decode(prepared.dataset, prepared.split.val, 32).images)


def test_a_digits_run_records_the_crop_it_was_trained_with(tmp_path):
    store = RunStore(tmp_path / "home")
    config = TrainConfig(dataset="digits", backbone="resnet18", weights="random", strategy="linear-probe",
                         image_size=32, epochs=1, batch_size=256)
    summary = engine.run(config, store=store)
    assert summary["stopped_reason"] == "completed", summary
    p = checkpoints.preprocessing(store.load_checkpoint(summary["run_id"]))
    assert (p.size, p.resize) == (32, 37)
