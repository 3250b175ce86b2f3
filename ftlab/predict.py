"""Use a kept run: rebuild its best model and classify an image."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ftlab import backbones, data
from ftlab.config import TrainConfig
from ftlab.engine import Preprocess
from ftlab.runs import CheckpointError, RunStore, load_checkpoint_file


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float
    top: list[tuple[str, float]]  # the k most likely classes, most likely first


def model_from_checkpoint(checkpoint: dict) -> backbones.BlockModel:
    """The checkpoint's model, refusing one whose tensors do not fit its stated architecture."""
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


class Predictor:
    """A run's best model, ready to classify images the way its training data was prepared."""

    def __init__(self, checkpoint: dict):
        self.checkpoint = checkpoint
        self.model = model_from_checkpoint(checkpoint)
        self.classes = list(checkpoint["classes"])
        self.image_size = int(checkpoint["image_size"])
        # the training run's own preprocessing, so a prediction sees what evaluation saw
        config = TrainConfig.from_dict({**checkpoint.get("config", {}), "backbone": checkpoint["backbone"]})
        self.prep = Preprocess(config, self.image_size, torch.device("cpu"))

    @classmethod
    def for_run(cls, run_id: str, store: RunStore | None = None) -> "Predictor":
        return cls((store or RunStore()).load_checkpoint(run_id))

    @classmethod
    def from_file(cls, path: Path) -> "Predictor":
        return cls(load_checkpoint_file(path))

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) -> class probabilities (N, K)."""
        return self.model(self.prep(images, train=False)).softmax(1)

    def predict(self, image, top_k: int = 5) -> Prediction:
        """``image``: a path, bytes, or a PIL image."""
        probs = self.probabilities(data.decode_image(image, self.image_size)[None])[0]
        values, idx = probs.topk(min(top_k, len(self.classes)))
        top = [(self.classes[i], float(v)) for v, i in zip(values, idx)]
        return Prediction(top[0][0], top[0][1], top)
