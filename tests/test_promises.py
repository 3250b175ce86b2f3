"""What README promises, each held by a test that can fail: the training options through an actual run
(early stopping, class weighting, balanced sampling, gradient clipping, label smoothing, random crop and
colour jitter), `runs --delete`, `train --help`, FTLAB_MAX_PIXELS, and in the app the Runs page downloads,
the imbalance simulator and suggestions (applied only on click), the Watch button, the normalised confusion
matrix and the top-N and gradual presets. Every run is digits (or a few generated images) on small_cnn."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ftlab import backbones, cli, data, engine, events, transforms
from ftlab import config as cfg
from ftlab.config import TrainConfig
from ftlab.runs import RunStore

ROOT = Path(__file__).resolve().parents[1]
# on the CPU wherever the tests run: exact comparisons (a checkpoint's predictions against the run's) hold there
FAST = dict(dataset="digits", backbone="small_cnn", weights="random", strategy="full", image_size=16,
            batch_size=64, epochs=1, lr=3e-3, device="cpu")


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "home")


def collect(config: TrainConfig, store: RunStore) -> tuple[dict, list]:
    seen: list = []
    return engine.run(config, store=store, emit=seen.append), seen


def spy_epochs(monkeypatch) -> list[dict]:
    """The arguments of every `engine.train_one_epoch` call of the runs that follow."""
    calls: list[dict] = []
    real = engine.train_one_epoch

    def spy(model, images, labels, order, **kw):
        calls.append({"labels": labels.clone(), **kw})
        return real(model, images, labels, order, **kw)

    monkeypatch.setattr(engine, "train_one_epoch", spy)
    return calls


def train_labels_of(store: RunStore, run_id: str) -> np.ndarray:
    """The labels of the run's training split, from its record and the data set (not from the engine)."""
    split = store.get(run_id).split
    return data.load_dataset("digits").labels[np.asarray(split["train"], dtype=np.int64)]


# --- early stopping -----------------------------------------------------------------------

@pytest.mark.parametrize("patience, stops_after, reason", [(2, 4, "early_stopping"), (3, 6, "completed")])
def test_early_stopping_stops_at_the_epoch_its_patience_predicts(store, monkeypatch, patience, stops_after, reason):
    """Val accuracy scripted per epoch: best at epoch 2; epoch 3 only equals it (not better), epoch 4 is worse,
    epoch 5 is better again. Patience 2 stops after epoch 4; patience 3 reaches epoch 5 and runs to the end."""
    script = [0.5, 0.7, 0.7, 0.6, 0.9, 0.9]
    real = engine.evaluate
    epoch = iter(range(len(script)))

    def scripted(*a, **kw):
        return dataclasses.replace(real(*a, **kw), accuracy=script[next(epoch)])

    monkeypatch.setattr(engine, "evaluate", scripted)
    config = TrainConfig(**{**FAST, "epochs": 6, "strategy": "linear-probe"}, early_stopping=patience)
    summary, seen = collect(config, store)
    assert summary["epochs_run"] == stops_after and summary["stopped_reason"] == reason
    assert [e.epoch for e in seen if isinstance(e, events.EpochEnded)] == list(range(1, stops_after + 1))
    record = store.get(summary["run_id"])
    assert record.status == "finished" and len(store.epochs(summary["run_id"])) == stops_after
    if reason == "early_stopping":
        assert summary["best_epoch"] == 2 and "no better val accuracy for 2 epochs" in record.message
        assert store.load_checkpoint(summary["run_id"])["epoch"] == 2  # the best checkpoint, not the last


# --- class weighting, balanced sampling -------------------------------------------------

def test_class_weighting_weights_the_loss_by_inverse_class_frequency(store, monkeypatch):
    calls = spy_epochs(monkeypatch)
    probe = {**FAST, "strategy": "linear-probe"}  # the loss is the same whichever blocks train
    summary, _ = collect(TrainConfig(**probe, imbalance_ratio=8.0, class_weighting="balanced"), store)
    assert summary["stopped_reason"] == "completed"
    labels = train_labels_of(store, summary["run_id"])
    counts = np.bincount(labels, minlength=10)
    assert counts.max() / counts.min() >= 7  # a long tail, so the weights are far from equal
    by_formula = len(labels) / (10 * counts)  # N / (K n_k)
    weight = calls[0]["objective"].class_weights
    assert weight is not None
    np.testing.assert_allclose(weight.cpu().numpy(), by_formula, rtol=1e-6)

    summary, _ = collect(TrainConfig(**probe, imbalance_ratio=8.0), store)
    assert calls[-1]["objective"].class_weights is None  # off by default


def test_balanced_sampling_draws_classes_about_equally_from_a_long_tail(store, monkeypatch):
    drawn: list[list[torch.Tensor]] = []
    real = engine.batches

    def spy(n, batch_size, *, generator=None, sample_weights=None):
        out = list(real(n, batch_size, generator=generator, sample_weights=sample_weights))
        if generator is not None:  # the training batches (evaluation goes in order, without a generator)
            drawn.append(out)
        return iter(out)

    monkeypatch.setattr(engine, "batches", spy)
    calls = spy_epochs(monkeypatch)
    config = TrainConfig(**{**FAST, "strategy": "linear-probe"}, imbalance_ratio=10.0, balanced_sampling=True, seed=3)
    summary, _ = collect(config, store)
    labels = calls[0]["labels"].numpy()
    data_counts = np.bincount(labels, minlength=10)
    assert data_counts.max() / data_counts.min() >= 9
    sampled = np.bincount(labels[torch.cat(drawn[0]).numpy()], minlength=10)
    assert sampled.sum() == len(labels)  # as many draws per epoch as training images
    assert sampled.max() / sampled.min() < 1.8, sampled  # the data's 10x tail is gone
    first = [i.clone() for i in drawn[0]]

    drawn.clear()
    collect(config, store)  # seeded: the same draws again
    assert all(torch.equal(a, b) for a, b in zip(first, drawn[0])) and len(first) == len(drawn[0])

    drawn.clear()
    collect(dataclasses.replace(config, balanced_sampling=False), store)
    plain = np.bincount(labels[torch.cat(drawn[0]).numpy()], minlength=10)
    assert np.array_equal(plain, data_counts)  # without it, each image once per epoch: the tail stays


# --- gradient clipping, label smoothing -------------------------------------------------

def grad_norms_at_each_step(monkeypatch) -> list[float]:
    """The total gradient norm the optimiser steps with (after any clipping), step by step."""
    norms: list[float] = []
    real = engine.make_optimizer

    def spy(config, groups):
        optimizer = real(config, groups)

        def before_step(opt, args, kwargs):
            grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
            norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

        optimizer.register_step_pre_hook(before_step)
        return optimizer

    monkeypatch.setattr(engine, "make_optimizer", spy)
    return norms


def test_gradient_clipping_bounds_the_norm_the_optimiser_steps_with(store, monkeypatch):
    norms = grad_norms_at_each_step(monkeypatch)
    collect(TrainConfig(**FAST), store)
    unclipped = list(norms)
    assert len(unclipped) == 23 and min(unclipped) > 0.2  # 1437 training images / 64; every step well above
    norms.clear()
    summary, _ = collect(TrainConfig(**FAST, grad_clip=0.2), store)
    assert summary["stopped_reason"] == "completed" and len(norms) == len(unclipped)
    assert max(norms) <= 0.2 * (1 + 1e-5), max(norms)
    assert min(norms) >= 0.2 * 0.999  # clipped to the limit, not zeroed


def test_label_smoothing_is_the_loss_the_run_optimises(store, monkeypatch):
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    real = engine.train_one_epoch

    def spy(model, images, labels, order, *, objective, **kw):
        def recorded(logits, batch):
            step = objective(logits, batch)
            seen.append((logits.detach().float().clone(), batch.labels.clone(), step.loss.detach().clone()))
            return step
        return real(model, images, labels, order, objective=recorded, **kw)

    monkeypatch.setattr(engine, "train_one_epoch", spy)
    summary, _ = collect(TrainConfig(**FAST, label_smoothing=0.3), store)
    assert summary["stopped_reason"] == "completed" and len(seen) == 23
    for step, (logits, y, loss) in enumerate(seen):
        assert torch.allclose(loss, F.cross_entropy(logits, y, label_smoothing=0.3), rtol=1e-5, atol=1e-6)
        if step:  # at the random start the logits are nearly uniform, where smoothing changes nothing
            assert loss - F.cross_entropy(logits, y) > 0.1  # confident, right predictions cost more with it


# --- augmentation through a run ---------------------------------------------------------

@pytest.mark.parametrize("augment", [{"random_crop": True}, {"color_jitter": 0.5}])
def test_augmentation_changes_what_the_model_sees_and_bypasses_the_feature_cache(store, monkeypatch, augment):
    """A linear probe would train on cached features; with random augmentation it cannot (each epoch's images
    differ), and the run says why. The training batches the model sees are not the undisturbed images."""
    seen: list[tuple[torch.Tensor, bool, torch.Tensor]] = []
    real = transforms.Preprocess.__call__

    def spy(self, images, train):
        out = real(self, images, train)
        seen.append((images.clone(), train, out.clone()))
        return out

    monkeypatch.setattr(transforms.Preprocess, "__call__", spy)
    spec = backbones.get_spec("small_cnn")
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    undisturbed = lambda x: (x.float() / 255 - mean) / std  # noqa: E731 - what Preprocess does without augmentation

    config = TrainConfig(**{**FAST, "strategy": "linear-probe"}, **augment)
    summary, emitted = collect(config, store)
    assert summary["stopped_reason"] == "completed"
    reason = "not caching: augmentation changes every image every epoch and augment_views is 0"
    assert summary["feature_cache"].startswith(reason)
    assert any(isinstance(e, events.Preparing) and e.message.startswith(reason) for e in emitted)
    train_batches = [(x, out) for x, train, out in seen if train]
    assert len(train_batches) == 23  # every training batch went through the augmentation, none from a cache
    changed = [not torch.allclose(out[i], undisturbed(x[i:i + 1])[0], atol=1e-5)
               for x, out in train_batches for i in range(len(x))]
    assert sum(changed) / len(changed) > 0.95
    for x, train, out in seen:
        if not train:  # validation images are not augmented
            assert torch.allclose(out, undisturbed(x), atol=1e-5)

    seen.clear()
    summary, _ = collect(TrainConfig(**{**FAST, "strategy": "linear-probe"}), store)
    assert "on cached features" in summary["feature_cache"]  # the same run without augmentation caches
    assert not [s for s in seen if s[1]]


# --- the command line: runs --delete, train --help ------------------------------------

def test_runs_delete_removes_the_run_and_its_checkpoint_and_keeps_the_others(capsys):
    store = RunStore()  # FTLAB_HOME, as the CLI finds it
    ids = ["20260101-000000-aaaaaa", "20260101-000001-bbbbbb"]
    for n, run_id in enumerate(ids):
        store.create(run_id, TrainConfig(**FAST).to_dict())
        store.add_epoch(run_id, 1, {"epoch": 1, "val_accuracy": 0.5 + n})
        store.save_checkpoint(run_id, {"model": {"w": torch.full((2,), float(n))}, "backbone": "small_cnn"})
        store.finish(run_id, "finished", {"epochs_run": 1})
    gone, kept = ids
    assert cli.main(["runs", "--delete", gone]) == 0
    assert f"deleted {gone}" in capsys.readouterr().out
    with pytest.raises(KeyError):
        store.get(gone)
    assert store.epochs(gone) == [] and not store.run_dir(gone).exists()
    assert store.get(kept).status == "finished" and store.epochs(kept)[0]["val_accuracy"] == 1.5
    assert torch.equal(store.load_checkpoint(kept)["model"]["w"], torch.ones(2))
    assert cli.main(["runs", "--json"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [kept]
    assert cli.main(["runs", "--delete", gone]) == 1  # a second time: no such run, said so
    assert gone in capsys.readouterr().err and store.get(kept)


def _help_entries(text: str) -> dict[str, str]:
    """`--flag` -> the words of its entry in argparse's help (the entry's lines, joined)."""
    entries: dict[str, str] = {}
    name = None
    for line in text[text.index("options:"):].splitlines()[1:]:
        if re.match(r"^  -", line):
            name = re.match(r"^  (-[-\w]+)", line).group(1)
            entries[name] = line.strip()
        elif name:
            entries[name] += " " + line.strip()
    return entries


def test_train_help_lists_every_option_with_its_default_and_range(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as done:
        cli.main(["train", "--help"])
    assert done.value.code == 0
    entries = _help_entries(capsys.readouterr().out)
    for f in cfg.options():
        flag = "--" + f.name.replace("_", "-")
        assert flag in entries, f"{flag} is not in train --help"
        words = entries[flag]
        assert f.metadata["help"].split("(")[0].strip() in words
        if f.default is not None:
            assert f"default: {f.default}" in words, words
        else:
            assert "default" in words, words  # what leaving it out means
        if f.metadata["lo"] is not None:
            shown = re.search(r"range ([-\d.,e+]+) to ([-\d.,e+]+)", words)
            assert shown, words
            assert [float(v.replace(",", "")) for v in shown.groups()] == [f.metadata["lo"], f.metadata["hi"]]
        for choice in f.metadata["choices"] or ():
            assert choice in words
    # and the defaults the parser uses are the dataclass's own
    args = cli._parser().parse_args(["train"])
    assert TrainConfig(**{f.name: getattr(args, f.name) for f in cfg.options()}) == TrainConfig()


# --- FTLAB_MAX_PIXELS -----------------------------------------------------------------

def test_ftlab_max_pixels_skips_and_counts_an_image_over_it_and_keeps_one_under(tmp_path, monkeypatch):
    """The setting is read by a fresh process (`python -m ftlab train`), as a user sets it: this holds whether
    ftlab reads it at import or when it decodes."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "pics"
    for k, name in enumerate(("cats", "dogs")):
        (folder / name).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), np.uint8) // 2 + 100 * k).save(folder / name / f"{i}.png")
    Image.new("RGB", (101, 100), "white").save(folder / "cats" / "over.png")  # 10,100 pixels
    Image.new("RGB", (99, 100), "white").save(folder / "cats" / "under.png")  # 9,900 pixels

    monkeypatch.delenv("FTLAB_MAX_PIXELS", raising=False)  # the default limit keeps both
    ds = data.load_dataset(str(folder))
    assert len(ds) == 18 and data.decode(ds, np.arange(len(ds)), 16).skipped == ()

    monkeypatch.setenv("FTLAB_MAX_PIXELS", "10000")
    result = subprocess.run(
        [sys.executable, "-m", "ftlab", "train", "--dataset", str(folder), "--backbone", "small_cnn", "--weights",
         "random", "--strategy", "full", "--epochs", "1", "--image-size", "16", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["skipped_files"] == 1
    assert "over.png" in result.stderr and "limit of 10,000" in result.stderr and "FTLAB_MAX_PIXELS" in result.stderr
    sizes = re.search(r"2 classes \(train (\d+), val (\d+)\)", result.stderr)
    assert sizes and int(sizes[1]) + int(sizes[2]) == 17  # every image but over.png: under.png was kept


# --- the app ------------------------------------------------------------------------------

# the app's test helpers (test_app.py), not its autouse fixture: these tests ask for conftest's app_env
from test_app import TIMEOUT, app, charts, goto, metrics, poll  # noqa: E402


def config_of(at) -> TrainConfig:
    from ui import session

    return session.current_config(at.session_state)


# Runs page downloads ---------------------------------------------------------------------

@pytest.fixture
def media(monkeypatch) -> list:
    """The media file managers AppTest makes (one per script run): the store the download buttons' bytes go to."""
    from streamlit.runtime.media_file_manager import MediaFileManager
    from streamlit.testing.v1 import app_test

    made: list = []

    class Recording(MediaFileManager):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(app_test, "MediaFileManager", Recording)
    return made


def downloaded(at, media: list, key: str) -> bytes:
    """What the browser gets when the user clicks the download button ``key`` (a deferred one generates it now)."""
    proto = at.download_button(key=key).proto
    manager = media[-1]
    url = proto.url or manager.execute_deferred(proto.deferred_file_id)
    return manager._storage.get_file(url.rsplit("/", 1)[-1]).content


def test_runs_page_downloads_the_selected_runs_checkpoint_and_metrics(app_env, media):
    from ui import keys as K

    store = RunStore()
    runs = {}
    for seed, epochs in ((1, 2), (2, 3)):
        summary, seen = collect(TrainConfig(**{**FAST, "epochs": epochs, "strategy": "linear-probe"}, seed=seed), store)
        runs[summary["run_id"]] = (summary, [e for e in seen if isinstance(e, events.EpochEnded)])
    digits = data.load_dataset("digits")
    spec = backbones.get_spec("small_cnn")
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)

    at = goto(app(), "app_pages/runs.py")
    for run_id, (summary, ended) in runs.items():
        at.selectbox(key=K.RUNS_SELECTED).select(run_id).run()
        assert not at.exception

        checkpoint = torch.load(io.BytesIO(downloaded(at, media, K.DOWNLOAD_CHECKPOINT)), weights_only=True)
        record = store.get(run_id)
        assert checkpoint["epoch"] == summary["best_epoch"] and checkpoint["classes"] == record.classes
        model = backbones.create_model("small_cnn", 10, "random")
        model.load_state_dict(checkpoint["model"])
        val = data.decode(digits, np.asarray(record.split["val"]), 16)
        with torch.no_grad():
            logits = model.eval()((val.images.float() / 255 - mean) / std)
        # this run's best weights: each val image's loss is the one the run recorded for its best model
        losses = F.cross_entropy(logits, val.labels, reduction="none").numpy()
        recorded = np.asarray(record.final["val"]["losses"])
        np.testing.assert_allclose(losses, recorded, rtol=1e-3, atol=1e-4)

        table = pd.read_csv(io.BytesIO(downloaded(at, media, K.DOWNLOAD_METRICS)))
        assert list(table["epoch"]) == list(range(1, summary["epochs_run"] + 1)) == [e.epoch for e in ended]
        for column in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
            np.testing.assert_allclose(table[column], [getattr(e, column) for e in ended], rtol=1e-9)


# Data page: the imbalance simulator and the suggestions ----------------------------------

def test_the_imbalance_simulator_and_suggestions_change_the_run_only_when_clicked(app_env):
    from ftlab import diversity
    from ui import keys as K

    at = goto(app(), "app_pages/data.py")
    untouched = config_of(at)
    before = charts(at)[0]  # class counts per split
    train_before = next(t for t in before["data"] if t["name"] == "train")["y"]

    # balanced digits: the suggestion is a larger rate and fewer epochs; nothing changes until its button
    tips = diversity.suggestions(train_before)
    i = next(n for n, t in enumerate(tips) if "lr_factor" in t.setting)
    for _ in range(2):
        at.run()
    assert config_of(at) == untouched and untouched.lr is None and untouched.epochs == 5
    at.button(key=K.SUGGESTION.format(i)).click().run()
    applied = config_of(at)
    assert applied.lr == pytest.approx(2 * cfg.resolved_lr(untouched)) and applied.epochs == round(5 * 0.75)
    assert dataclasses.replace(applied, lr=None, epochs=5) == untouched  # that and nothing else

    # the simulator shows the tail before it is applied
    at.select_slider(key=K.SIM_RATIO).set_value(20.0).run()
    expected_tail = diversity.long_tail_counts(train_before, 20.0)
    tail = charts(at)[1]
    assert any(t["y"] == expected_tail for t in tail["data"]), tail["data"]
    assert float(metrics(at)["Entropy after (bits)"]) == pytest.approx(
        diversity.distribution(expected_tail).entropy_bits, abs=1e-3)
    assert config_of(at).imbalance_ratio == 1.0 and charts(at)[0] == before  # the run's data are unchanged
    assert float(metrics(at)["Imbalance ratio"]) == pytest.approx(max(train_before) / min(train_before), abs=0.01)

    at.toggle(key=K.SIM_APPLY).set_value(True).run()
    assert config_of(at).imbalance_ratio == 20.0
    train_after = next(t for t in charts(at)[0]["data"] if t["name"] == "train")["y"]
    assert train_after == expected_tail and float(metrics(at)["Imbalance ratio"]) == pytest.approx(20, rel=0.05)

    # now the skewed split suggests weighting the loss: applied on its click only
    tips = diversity.suggestions(train_after)
    i = next(n for n, t in enumerate(tips) if "class_weighting" in t.setting)
    at.run()
    assert config_of(at).class_weighting == "none"
    at.button(key=K.SUGGESTION.format(i)).click().run()
    assert config_of(at) == dataclasses.replace(applied, imbalance_ratio=20.0, class_weighting="balanced")


def start_small_cnn_run(at, epochs: int = 1, preset: str | None = None) -> str:
    """Start a small_cnn run on digits at 32 px from the Model and Train pages; returns its id."""
    from ui import keys as K

    goto(at, "app_pages/model.py")
    at.selectbox(key="cfg.backbone").select("small_cnn").run()
    if preset:
        at.button(key=K.PRESET_BUTTON.format(preset)).click().run()
    goto(at, "app_pages/train.py")
    at.number_input(key="cfg.image_size").set_value(32)
    at.number_input(key="cfg.epochs").set_value(epochs)
    at.number_input(key="cfg.batch_size").set_value(64)
    at.button(key=K.START).click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at.session_state[K.JOB]


# Train page: Watch ---------------------------------------------------------------------

def test_watch_opens_another_sessions_run_without_taking_it_over(app_env, monkeypatch):
    """The run waits in its data preparation until the test lets it go, so it is surely still going when the
    second session looks (no race with the training speed)."""
    from ui import keys as K, resources

    gate = threading.Event()
    real = data.prepare

    def held(*a, **kw):
        gate.wait(timeout=120)
        return real(*a, **kw)

    monkeypatch.setattr(data, "prepare", held)
    try:
        owner = app()
        run_id = start_small_cnn_run(owner)
        registry = resources.registry()
        assert registry.is_running(run_id)

        watcher = goto(app(), "app_pages/train.py")
        assert K.JOB not in watcher.session_state and "run" not in watcher.query_params
        assert any(run_id in i.value and "another session" in i.value for i in watcher.info)
        watcher.button(key=K.WATCH.format(run_id)).click().run()
        assert not watcher.exception
        assert watcher.session_state[K.JOB] == run_id and watcher.query_params["run"] in (run_id, [run_id])
        assert any(f"Run `{run_id}` is getting ready" in i.value for i in watcher.info)
        assert config_of(watcher).backbone == "small_cnn"  # it shows the run's settings

        # not taken over: the run still belongs to the session that started it, which still shows and stops it
        assert registry._owners[run_id] == owner.session_state[K.OWNER] != watcher.session_state[K.OWNER]
        owner.run()
        assert owner.session_state[K.JOB] == run_id and owner.button(key=K.STOP)
        assert not [i for i in owner.info if "another session" in i.value]
    finally:
        gate.set()
    owner.button(key=K.STOP).click().run()
    poll(owner, lambda a: not registry.is_running(run_id))
    poll(watcher, lambda a: a.warning or a.success)  # the watcher sees the end of the same run
    assert any(run_id in w.value for w in [*watcher.warning, *watcher.success])


# Confusion matrix, counts or normalised ---------------------------------------------------

def heatmap(at) -> list[list[float]]:
    return next(t["z"] for s in charts(at) for t in s["data"] if t["type"] == "heatmap")


def test_the_normalised_confusion_matrix_has_rows_that_sum_to_one(app_env):
    from ui import keys as K

    summary, _ = collect(TrainConfig(**{**FAST, "strategy": "linear-probe"}), RunStore())
    at = goto(app(), "app_pages/inspect_run.py")
    counts = np.asarray(heatmap(at))
    assert counts.tolist() == RunStore().get(summary["run_id"]).final["val"]["confusion"]
    at.toggle(key=K.INSPECT_CM_NORMALISED).set_value(True).run()
    shares = np.asarray(heatmap(at))
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, rtol=1e-9)  # every digit has val images
    np.testing.assert_allclose(shares, counts / counts.sum(axis=1, keepdims=True), rtol=1e-9)


def test_a_class_without_samples_is_a_row_of_zeros_when_normalised(monkeypatch):
    """The piece both pages draw, with a class that has no images in the split."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.syspath_prepend(str(ROOT))  # the function runs as a script of its own: `ui` is found from the root

    def page():
        from ui import parts

        parts.confusion([[3, 1, 0], [0, 0, 0], [2, 2, 4]], ["a", "b", "c"], "confusion", "cm")

    at = AppTest.from_function(page, default_timeout=TIMEOUT).run()
    assert heatmap(at) == [[3, 1, 0], [0, 0, 0], [2, 2, 4]]
    at.toggle(key="cm").set_value(True).run()
    assert not at.exception
    assert heatmap(at) == [[0.75, 0.25, 0.0], [0.0, 0.0, 0.0], [0.25, 0.25, 0.5]]


# Model page presets: top-N, gradual -----------------------------------------------------

def block_params() -> dict[str, int]:
    """small_cnn's parameters per block with a 10-class head, counted here on a fresh model."""
    model = backbones.create_model("small_cnn", 10, "random")
    return {name: sum(p.numel() for p in block.parameters()) for name, block in model.named_children()
            if any(True for _ in block.parameters())}


def test_the_top_n_preset_freezes_all_but_the_last_n_blocks_and_the_run_trains_those(app_env):
    from ui import keys as K

    params = block_params()
    assert list(params) == ["stem", "stage1", "stage2", "stage3", "head"]
    at = app()
    goto(at, "app_pages/model.py")
    at.selectbox(key="cfg.backbone").select("small_cnn").run()
    at.number_input(key=K.TOP_N).set_value(2).run()
    at.button(key=K.PRESET_BUTTON.format("top_n")).click().run()
    table = at.data_editor[0].value
    assert dict(zip(table["block"], table["train"])) == {"stem": False, "stage1": False, "stage2": True,
                                                         "stage3": True, "head": True}
    expected = params["stage2"] + params["stage3"] + params["head"]
    assert metrics(at)["Trainable parameters"] == f"{expected:,}"

    run_id = start_small_cnn_run(at)
    poll(at, lambda a: a.success or a.error or a.warning)
    assert at.success, [e.value for e in [*at.error, *at.warning]]
    record = RunStore().get(run_id)
    assert record.strategy == "top-2" and record.summary["trainable_params"] == expected
    assert store_epochs(run_id) == [expected]


def store_epochs(run_id: str) -> list[int]:
    return [m["trainable_params"] for m in RunStore().epochs(run_id)]


def test_the_gradual_preset_unfreezes_one_more_block_every_k_epochs(app_env):
    from ui import keys as K

    params = block_params()
    at = app()
    goto(at, "app_pages/model.py")
    at.selectbox(key="cfg.backbone").select("small_cnn").run()
    at.number_input(key="cfg.gradual_every").set_value(1).run()
    at.button(key=K.PRESET_BUTTON.format("gradual")).click().run()
    table = at.data_editor[0].value
    assert [b for b, t in zip(table["block"], table["train"]) if t] == ["head"]  # the first epoch: head only
    assert any("stage3 → stage2 → stage1 → stem" in c.value for c in at.caption)

    run_id = start_small_cnn_run(at, epochs=3)
    poll(at, lambda a: a.success or a.error or a.warning)
    assert at.success, [e.value for e in [*at.error, *at.warning]]
    assert RunStore().get(run_id).strategy == "gradual"
    head, stage3, stage2 = params["head"], params["stage3"], params["stage2"]
    assert store_epochs(run_id) == [head, head + stage3, head + stage3 + stage2]


def test_a_suggested_learning_rate_stays_in_the_options_range(app_env):
    """Doubling a learning rate of 8 gives 16, above the option's 10: the Train page's widget then silently
    showed (and a run would have used) its minimum, 1e-07. The suggestion stops at the limit instead."""
    from ui import keys as K

    at = app()
    at.session_state[K.cfg("lr")] = 8.0  # what the Train page's form commits
    goto(at, "app_pages/data.py")
    at.button(key=K.SUGGESTION.format(0)).click().run()  # balanced digits: learning rate x2, epochs x0.75
    hi = next(f.metadata["hi"] for f in cfg.options() if f.name == "lr")
    assert at.session_state[K.cfg("lr")] == hi
    goto(at, "app_pages/train.py")
    assert at.number_input(key=K.cfg("lr")).value == hi and config_of(at).lr == hi


@pytest.mark.parametrize("bad_id", ["", "\udcff\udcfe", "x'; DROP TABLE runs;--"])
def test_runs_delete_of_an_id_that_names_no_run_says_so_and_deletes_nothing(capsys, bad_id):
    """`--delete ""` listed the runs and exited 0 as if nothing was asked; an undecodable byte in the id (a str
    with surrogates, as Python passes it from argv) was a UnicodeEncodeError traceback from sqlite."""
    store = RunStore()
    store.create("20260101-000000-aaaaaa", TrainConfig(**FAST).to_dict())
    assert cli.main(["runs", "--delete", bad_id]) == 1
    assert "is not a run id" in capsys.readouterr().err  # none has the form the store gives its runs
    assert [r.id for r in store.list()] == ["20260101-000000-aaaaaa"]
