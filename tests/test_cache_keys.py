"""The feature cache's key names everything that determines a cached tensor: change any one
input alone and the key changes; change nothing that matters and it stays. And two runs in one
process with different augmentation compute their own augmented views."""
from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ftlab import backbones, cache, engine
from ftlab.config import TrainConfig
from ftlab.runs import RunStore, new_run_id
from ftlab.transforms import Preprocess, Preprocessing

BASE = dict(dataset="digits", backbone="small_cnn", weights="random", strategy="linear-probe", image_size=16,
            batch_size=64, epochs=1, flip=True, augment_views=2)


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "home")


def key_of(config: TrainConfig, store: RunStore, split: str = "train", view: int = 1) -> cache.CacheKey:
    """The key a run of ``config`` gives its cached ``split`` features (view ``view``), after the
    run's own setup: data decoded, model built, preprocessing made."""
    trainer = engine._Trainer(config, store, lambda e: None, threading.Event(), new_run_id())
    trainer.device = torch.device("cpu")
    trainer.summary = engine.RunSummary(trainer.run_id, config.dataset, config.backbone, config.strategy)
    store.create(trainer.run_id, config.to_dict())
    trainer._setup()
    start, why_not = trainer._cache_boundary(0)
    assert not why_not and start > 0
    return trainer._cache_key(split, start, view)


def image_folder(root: Path, colours: dict[str, list[int]]) -> Path:
    for cls, values in colours.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i, v in enumerate(values):
            Image.fromarray(np.full((20, 20, 3), v, np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_each_input_alone_changes_the_key(store, tmp_path):
    base = TrainConfig(**BASE)
    reference = key_of(base, store)
    assert key_of(base, store) == reference  # the same inputs: the same key (a run reuses what it computed)
    changes = {
        "augmentation op": dict(random_crop=True),
        "augmentation strength": dict(color_jitter=0.2),
        "another strength": dict(color_jitter=0.4),
        "image size (resize and crop)": dict(image_size=20),
        "seed (random weights, views)": dict(seed=1),
        "split": dict(val_fraction=0.3),
        "data set": dict(dataset="shapes", shapes_per_class=20),
    }
    keys = {what: key_of(dataclasses.replace(base, **change), store) for what, change in changes.items()}
    keys["view"] = key_of(base, store, view=2)
    keys["split name"] = key_of(base, store, split="val", view=0)
    for what, key in keys.items():
        assert key != reference, what
    assert len(set(keys.values())) == len(keys)  # and each differs from every other
    shapes = dataclasses.replace(base, dataset="shapes", shapes_per_class=20)
    assert key_of(dataclasses.replace(shapes, shapes_noise=0.3), store) != keys["data set"]
    # the loader reads registered names in any case; so does the key
    assert key_of(dataclasses.replace(shapes, dataset="Shapes"), store) == keys["data set"]


def test_a_weights_file_is_keyed_by_its_content_not_its_time(store, tmp_path):
    torch.manual_seed(0)
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(backbones.create_model("small_cnn", 10, "random").state_dict(), a)
    torch.save(backbones.create_model("small_cnn", 10, "random").state_dict(), b)
    config = TrainConfig(**{**BASE, "weights": str(a)})
    first = key_of(config, store)
    os.utime(a, ns=(1_000_000_000, 1_000_000_000))  # touched, not changed
    assert key_of(config, store) == first
    b.replace(a)  # other tensors under the same name
    assert key_of(config, store) != first


def test_a_folder_is_keyed_by_its_files(store, tmp_path):
    root = image_folder(tmp_path / "set", {"dark": [10, 20, 30, 40, 50], "light": [200, 210, 220, 230, 240]})
    config = TrainConfig(**{**BASE, "dataset": str(root), "val_fraction": 0.4})
    first = key_of(config, store, split="val", view=0)
    assert key_of(config, store, split="val", view=0) == first
    Image.fromarray(np.full((20, 20, 3), 99, np.uint8)).save(root / "dark" / "2.png")  # one image replaced
    os.utime(root / "dark" / "2.png", ns=(5_000_000_000, 5_000_000_000))
    assert key_of(config, store, split="val", view=0) != first


def test_preprocessing_and_augmentation_identities_name_what_changes_the_tensors():
    cpu = torch.device("cpu")
    p = Preprocessing(224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    variants = [dataclasses.replace(p, resize=232), dataclasses.replace(p, size=192),
                dataclasses.replace(p, mean=(0.5, 0.5, 0.5)), dataclasses.replace(p, std=(0.25, 0.25, 0.25))]
    assert len({q.identity() for q in [p, *variants]}) == 5
    plain = Preprocess(p, cpu)
    assert plain.identity(train=True) == plain.identity(train=False) == Preprocess(p, cpu).identity(True)
    augmented = [Preprocess(p, cpu, flip=True), Preprocess(p, cpu, random_crop=True),
                 Preprocess(p, cpu, color_jitter=0.2), Preprocess(p, cpu, color_jitter=0.3),
                 Preprocess(p, cpu, flip=True, random_crop=True)]
    assert len({a.identity(train=True) for a in augmented} | {plain.identity(True)}) == 6
    # evaluation inputs are never augmented: their identity is the plain one
    assert {a.identity(train=False) for a in augmented} == {plain.identity(False)}


def test_a_second_run_with_other_augmentation_computes_its_own_views(store):
    """Before: a run with --flip --augment-views 4 followed by one with --flip --random-crop
    --augment-views 4 reused the first run's views."""
    stored: list[tuple[cache.CacheKey, torch.Tensor]] = []
    shared = cache.FeatureCache(1 << 30)
    real_put = shared.put
    shared.put = lambda key, tensor, budget=None: stored.append((key, tensor)) or real_put(key, tensor, budget)

    def train(**change) -> dict:
        config = TrainConfig(**{**BASE, "epochs": 2, **change})
        trainer = engine._Trainer(config, store, lambda e: None, threading.Event(), new_run_id(), shared_cache=shared)
        try:
            return trainer.run()
        finally:
            store.release(trainer.run_id)

    first = train()
    views_first = {k: t for k, t in stored if k.view}
    assert first["stopped_reason"] == "completed" and len(views_first) == 2
    again = train()  # the same augmentation: the views are reused, nothing new is computed
    assert {k for k, _ in stored if k.view} == set(views_first) and "earlier run" in again["feature_cache"]
    second = train(random_crop=True)
    assert second["stopped_reason"] == "completed"
    views_second = {k: t for k, t in stored if k.view and k not in views_first}
    assert len(views_second) == 2  # its own views (the val features, never augmented, are shared)
    for (k1, t1), (k2, t2) in zip(sorted(views_first.items(), key=lambda kv: kv[0].view),
                                  sorted(views_second.items(), key=lambda kv: kv[0].view)):
        assert k1.view == k2.view and not torch.equal(t1, t2)  # other crops: other features
