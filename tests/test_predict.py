"""Using a kept checkpoint: predictions, and checkpoints that do not fit are refused."""
import io

import pytest
import torch
from PIL import Image

from ftlab import backbones
from ftlab.data import DataError
from ftlab.checkpoints import CheckpointError, build as checkpoint_dict
from ftlab.config import TrainConfig
from ftlab.predict import Predictor
from ftlab.runs import RunStore, new_run_id
from ftlab.transforms import Preprocessing


def _checkpoint(num_classes: int = 3) -> dict:
    torch.manual_seed(0)
    model = backbones.create_model("small_cnn", num_classes, "random")
    return checkpoint_dict(model, TrainConfig(backbone="small_cnn", weights="random"),
                           tuple("abc"[:num_classes]), Preprocessing.for_backbone("small_cnn", 16), 1, 0.5)


def _kept(store: RunStore) -> str:
    """A run in the store with a checkpoint: Predictor.for_run finds runs by their record."""
    rid = new_run_id()
    store.create(rid, {"dataset": "digits", "backbone": "small_cnn", "strategy": "full"})
    store.save_checkpoint(rid, _checkpoint())
    return rid


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (30, 20), (200, 20, 20)).save(buf, "PNG")
    return buf.getvalue()


def test_a_prediction_ranks_every_class(tmp_path):
    """Against the model's softmax computed here: the checkpoint's weights on the image's pixels,
    normalised by hand, so a wrong class order, preprocessing or ranking shows."""
    store = RunStore(tmp_path)
    rid = _kept(store)
    checkpoint = _checkpoint()  # the same weights as the kept one: _checkpoint seeds its model
    predictor = Predictor.for_run(rid, store)
    prediction = predictor.predict(_png(), top_k=5)

    model = backbones.create_model("small_cnn", 3, "random")
    model.load_state_dict(checkpoint["model"])
    # the PNG is one colour at any size; small_cnn normalises with mean 0.5 and std 0.25
    pixel = (torch.tensor([200.0, 20.0, 20.0]) / 255 - 0.5) / 0.25
    with torch.no_grad():
        probs = model.eval()(pixel.view(1, 3, 1, 1).expand(1, 3, 16, 16)).softmax(1)[0].tolist()
    expected = sorted(zip("abc", probs), key=lambda t: -t[1])
    assert min(abs(a[1] - b[1]) for a, b in zip(expected, expected[1:])) > 1e-4  # the order is not a tie
    assert [c for c, _ in prediction.top] == [c for c, _ in expected]
    assert [p for _, p in prediction.top] == pytest.approx([p for _, p in expected], abs=1e-5)
    assert (prediction.label, prediction.probability) == prediction.top[0]
    assert predictor.predict(_png(), top_k=2).top == prediction.top[:2]


def test_a_checkpoint_for_another_class_count_is_refused(tmp_path):
    """Guard: model_from_checkpoint compares every tensor's shape. Without it load_state_dict
    fails with PyTorch's size-mismatch traceback instead of a message."""
    checkpoint = _checkpoint(3)
    checkpoint["num_classes"] = 5  # says 5 classes, holds a 3-class head
    with pytest.raises(CheckpointError, match="does not fit small_cnn with 5 classes"):
        Predictor(checkpoint)


def test_a_checkpoint_for_another_architecture_is_refused():
    checkpoint = _checkpoint(3)
    checkpoint["backbone"] = "resnet18"
    with pytest.raises(CheckpointError, match="does not fit resnet18"):
        Predictor(checkpoint)
    checkpoint["backbone"] = "no_such_net"
    with pytest.raises(CheckpointError, match="no usable model"):
        Predictor(checkpoint)


def test_a_file_that_is_not_an_image_says_so(tmp_path):
    store = RunStore(tmp_path)
    rid = _kept(store)
    with pytest.raises(DataError, match="Not a readable image"):
        Predictor.for_run(rid, store).predict(b"%PDF-1.4 not a picture")
