"""The training run on a CPU: order of events, checkpoints, stop, faults, the run store."""
import threading
from collections import OrderedDict

import pytest
import torch
from torch import nn

from ftlab import backbones, data, engine, events, objectives, transforms
from ftlab.jobs import Job
from ftlab.config import TrainConfig
from ftlab.runs import RunStore

HANG = 600  # seconds: bounds a hang only; a loaded 2-core machine took over 60 s for one of these runs
FAST = dict(dataset="digits", backbone="small_cnn", weights="random", strategy="full", image_size=16,
            batch_size=64, epochs=2, lr=3e-3)


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "home")


def collect(config, store, **kw):
    seen = []
    summary = engine.run(config, store=store, emit=seen.append, **kw)
    return summary, seen


def kinds(seen):
    return [type(e).__name__ for e in seen]


def test_a_run_reports_events_in_order_and_keeps_its_record(store):
    summary, seen = collect(TrainConfig(**FAST, test_fraction=0.2), store)
    names = kinds(seen)
    assert names[0] == "Preparing" and "RunStarted" in names and names[-1] == "RunFinished"
    started = names.index("RunStarted")
    assert set(names[:started]) == {"Preparing"}
    epoch_ends = [i for i, n in enumerate(names) if n == "EpochEnded"]
    assert len(epoch_ends) == 2
    # steps come before the epoch they belong to ends, and each epoch has all its steps
    steps = [e for e in seen if isinstance(e, events.Step)]
    assert [s.step for s in steps if s.epoch == 1] == list(range(1, steps[0].steps + 1))
    assert names.index("Step") > started and max(i for i, n in enumerate(names) if n == "Step") < epoch_ends[-1]

    for key in ("run_id", "dataset", "backbone", "strategy", "epochs_run", "best_val_accuracy", "test_accuracy",
                "train_seconds", "images_per_second", "trainable_params", "total_params", "device",
                "stopped_reason"):
        assert key in summary
    assert summary["epochs_run"] == 2 and summary["stopped_reason"] == "completed"
    # the device the run chose (a CUDA machine trains there), the same one it announced
    assert summary["test_accuracy"] is not None and summary["device"] == engine.pick_device("auto").type
    assert next(e for e in seen if isinstance(e, events.RunStarted)).device == summary["device"]
    ends = [e for e in seen if isinstance(e, events.EpochEnded)]
    assert summary["best_val_accuracy"] == max(e.val_accuracy for e in ends)
    assert len(ends[-1].confusion) == 10

    record = store.get(summary["run_id"])
    assert record.status == "finished" and len(record.classes) == 10
    assert [m["epoch"] for m in store.epochs(summary["run_id"])] == [1, 2]
    assert len(record.final["test"]["confusion"]) == 10
    checkpoint = store.load_checkpoint(summary["run_id"])
    assert checkpoint["epoch"] == summary["best_epoch"] and checkpoint["backbone"] == "small_cnn"


def test_confusion_matrix_counts_every_validation_image(store):
    summary, seen = collect(TrainConfig(**FAST), store)
    split = store.get(summary["run_id"]).split
    end = [e for e in seen if isinstance(e, events.EpochEnded)][-1]
    assert sum(map(sum, end.confusion)) == len(split["val"])
    assert sum(end.report["support"]) == len(split["val"])


def test_images_are_decoded_once_per_split(store, monkeypatch):
    calls = []
    real = data.decode
    monkeypatch.setattr(data.prepared, "decode", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    collect(TrainConfig(**{**FAST, "epochs": 3}), store)
    assert len(calls) == 2  # train and val, not once per epoch


def test_the_background_job_stops_within_a_batch(store):
    """Guard: the stop flag is checked before every batch. The worker is held after its first step
    until this thread has called stop(), so however fast it trains the stop must land before step 2."""
    job = Job(TrainConfig(**{**FAST, "epochs": 50}), store)
    asked = threading.Event()
    real = job._on_event

    def on_event(event):
        real(event)
        if isinstance(event, events.Step) and (event.epoch, event.step) == (1, 1):
            asked.wait(timeout=HANG)

    job._on_event = on_event
    job.start()
    while not isinstance(job.events.get(timeout=HANG), events.Step):
        pass
    job.stop()
    asked.set()
    assert job.join(timeout=HANG), "the job did not stop"
    snap = job.snapshot()
    assert snap.status == "stopped" and isinstance(snap.end, events.RunStopped) and snap.end.reason == "user"
    assert (snap.end.phase, snap.end.step, snap.end.summary["epochs_run"]) == ("training", 2, 0)
    assert store.get(job.run_id).status == "stopped"


def _nan_after(calls: int) -> "OrderedDict[str, nn.Module]":
    class NanAfter(nn.Module):
        """Passes its input through until it has run ``calls`` times in training, then gives NaN."""

        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))
            self.seen = 0

        def forward(self, x):
            if self.training:
                self.seen += 1
            return x * self.scale * (float("nan") if self.seen > calls else 1.0)

    return OrderedDict(stem=NanAfter(), pool=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)))


@pytest.fixture
def nan_backbone():
    spec = backbones.BackboneSpec("nan_at_step_60", "fault injection", lambda pretrained: _nan_after(60), 3,
                                  default_size=16, min_size=8, mean=(0.5,) * 3, std=(0.25,) * 3, has_imagenet=False)
    backbones._REGISTRY[spec.name] = spec
    yield spec.name
    del backbones._REGISTRY[spec.name]


def test_a_non_finite_loss_stops_the_run_and_keeps_the_best_checkpoint(store, nan_backbone):
    # 1,437 training digits in batches of 64: 23 steps an epoch, so NaN arrives in epoch 3 (in fp32:
    # `auto` would first time a few forward passes of each precision, and those count as steps here)
    config = TrainConfig(**{**FAST, "backbone": nan_backbone, "epochs": 5, "precision": "fp32"})
    summary, seen = collect(config, store)
    stopped = seen[-1]
    assert isinstance(stopped, events.RunStopped) and stopped.reason == "non_finite_loss"
    assert "learning rate" in stopped.message and "epoch 3" in stopped.message
    assert summary["epochs_run"] == 2
    assert store.get(summary["run_id"]).status == "stopped"
    assert store.load_checkpoint(summary["run_id"])["epoch"] == summary["best_epoch"] in (1, 2)


def test_bad_data_fails_with_a_message_and_a_failed_record(store, tmp_path):
    folder = tmp_path / "one_class" / "cats"
    folder.mkdir(parents=True)
    from PIL import Image
    for i in range(3):
        Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(folder / f"{i}.png")
    summary, seen = collect(TrainConfig(**{**FAST, "dataset": str(folder.parent)}), store)
    assert isinstance(seen[-1], events.RunFailed)
    # what is wrong (the folder, the one class found) and what to do (the layout that works)
    assert seen[-1].message == (f"{folder.parent}: found only the class 'cats'; at least 2 classes are needed. "
                                "Expected root/<class>/<images> or root/train|val|test/<class>/<images>.")
    record = store.get(summary["run_id"])
    assert record.status == "failed" and record.message == seen[-1].message


def test_an_exception_in_a_data_step_reaches_the_job_as_a_failure(store, monkeypatch):
    def broken(self, images, train):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(transforms.Preprocess, "__call__", broken)
    job = Job(TrainConfig(**FAST), store).start()
    assert job.join(timeout=HANG)
    snap = job.snapshot()
    assert snap.status == "failed" and "disk on fire" in snap.message
    assert store.get(job.run_id).status == "failed"


def test_gradual_unfreezing_reaches_every_block_and_trains(store):
    config = TrainConfig(**{**FAST, "strategy": "gradual", "gradual_every": 1, "epochs": 5})
    summary, seen = collect(config, store)
    trainable = [e.trainable_params for e in seen if isinstance(e, events.EpochEnded)]
    assert trainable == sorted(trainable) and trainable[0] < trainable[-1]
    assert trainable[-1] == summary["total_params"]  # small_cnn has 4 blocks below the head


def assert_same_run(ea: list[dict], eb: list[dict], device: str) -> None:
    """Two runs of one seed, epoch by epoch: the same predictions on the CPU. CUDA's kernels are
    not deterministic (atomic adds in backward passes, cuDNN's choice of algorithm), so there
    the figures agree within a few validation images and a percent of the loss."""
    va, vb = [e["val_accuracy"] for e in ea], [e["val_accuracy"] for e in eb]
    if device == "cpu":
        assert va == vb
        assert ea[-1]["train_loss"] == pytest.approx(eb[-1]["train_loss"], rel=1e-5)
    else:
        assert va == pytest.approx(vb, abs=0.02)
        assert ea[-1]["train_loss"] == pytest.approx(eb[-1]["train_loss"], rel=1e-2)


def test_same_seed_same_run(store):
    a, _ = collect(TrainConfig(**FAST), store)
    b, _ = collect(TrainConfig(**FAST), store)
    assert_same_run(store.epochs(a["run_id"]), store.epochs(b["run_id"]), a["device"])


def test_the_background_job_trains_what_the_foreground_trains(store):
    """Job.start() releases the caller's idle OpenMP threads; the foreground run that came
    first and the job after it must still compute the same run."""
    fg, _ = collect(TrainConfig(**FAST), store)
    job = Job(TrainConfig(**FAST), store).start()
    assert job.join(timeout=HANG)
    bg = job.snapshot().end.summary
    assert_same_run(store.epochs(fg["run_id"]), store.epochs(bg["run_id"]), fg["device"])


def test_class_weights_even_out_the_loss():
    labels = torch.tensor([0] * 90 + [1] * 10)
    w = objectives.class_weights(labels, 2)
    # N / (K n_k): 100 / (2 * 90) and 100 / (2 * 10)
    assert w.tolist() == pytest.approx([100 / 180, 100 / 20])


def test_pick_device_prefers_what_is_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert engine.pick_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert engine.pick_device().type == "cpu"
    assert engine.pick_device("cpu").type == "cpu"


def test_out_of_memory_names_the_batch_size_to_try(store, monkeypatch):
    """Guard: user_message's OutOfMemoryError branch. Without it the message is a bare exception."""
    def oom(self, images, train):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(transforms.Preprocess, "__call__", oom)
    summary, seen = collect(TrainConfig(**{**FAST, "batch_size": 64}), store)
    assert isinstance(seen[-1], events.RunFailed)
    assert "batch size 64" in seen[-1].message and "Try batch size 32" in seen[-1].message
    assert store.get(summary["run_id"]).status == "failed"


def _stop_when(store, config, trigger):
    """Run ``config`` in the background and set its stop flag from inside the phase ``trigger`` picks."""
    job = Job(config, store)
    real = job._on_event

    def on_event(event):
        real(event)
        if trigger(event):
            job.stop()

    job._on_event = on_event
    began = __import__("time").perf_counter()
    job.start()
    assert job.join(timeout=HANG), "the job did not stop"
    return job, __import__("time").perf_counter() - began


@pytest.mark.parametrize("phase, step, trigger", [
    ("caching", 1, lambda e: isinstance(e, events.Preparing) and e.message.startswith("caching")),
    ("training", 3, lambda e: isinstance(e, events.Step) and e.epoch == 1 and e.step == 2),
])
def test_stop_in_each_phase_ends_with_a_consistent_record(store, phase, step, trigger):
    """Guard: the stop flag is checked in cache.compute and between batches. The flag is set from
    inside the phase, so the stop lands at the next batch of that phase: without the check in
    cache.compute it would land in training instead, without any the run would go on to 50 epochs."""
    config = TrainConfig(**{**FAST, "strategy": "top-1", "epochs": 50})
    job, _ = _stop_when(store, config, trigger)
    snap = job.snapshot()
    assert snap.status == "stopped", (phase, snap.message)
    assert (snap.end.phase, snap.end.step) == (phase, step)
    record = store.get(job.run_id)
    assert record.status == "stopped" and record.summary["epochs_run"] == 0
    assert store.epochs(job.run_id) == []


def test_stop_during_evaluation(store, monkeypatch):
    """Guard: evaluate checks the stop flag between batches."""
    real = engine.evaluate
    jobs = []

    def evaluate_then_stop(*args, **kwargs):
        jobs[0].stop()
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "evaluate", evaluate_then_stop)
    job = Job(TrainConfig(**{**FAST, "epochs": 50}), store)
    jobs.append(job)
    job.start()
    assert job.join(timeout=HANG)
    snap = job.snapshot()
    assert snap.status == "stopped" and "evaluating" in snap.message
    assert (snap.end.phase, snap.end.step) == ("evaluating", 1)
    assert store.get(job.run_id).status == "stopped"


@pytest.mark.parametrize("when", ["after the first epoch", "during the final evaluation"])
def test_a_stop_is_a_stopped_run_never_a_failed_one(store, monkeypatch, when):
    """Guard: the final evaluation caches the test split's frozen features, and that caching honours
    the stop flag. A Stop after an epoch (flag still set) or during the final evaluation raised
    there, inside the run's last step, and the run was recorded as failed with a StopRequested."""
    stop = threading.Event()
    if when == "during the final evaluation":
        real = engine._Trainer._final_evaluation

        def stop_then_evaluate(self):
            stop.set()
            return real(self)

        monkeypatch.setattr(engine._Trainer, "_final_evaluation", stop_then_evaluate)

    def emit(event):
        if when == "after the first epoch" and isinstance(event, events.EpochEnded):
            stop.set()

    config = TrainConfig(**{**FAST, "strategy": "linear-probe", "epochs": 3, "test_fraction": 0.2})
    summary = engine.run(config, store=store, emit=emit, stop=stop)
    record = store.get(summary["run_id"])
    assert (summary["stopped_reason"], record.status) == ("user", "stopped"), record.message
    assert summary["epochs_run"] >= 1 and store.checkpoint_path(summary["run_id"]).is_file()
    assert summary["test_accuracy"] is None  # not evaluated, and not claimed


def test_a_batch_larger_than_the_training_set_is_explained_not_fatal(store, tmp_path):
    from PIL import Image
    for k, name in enumerate(["ants", "bees"]):
        (tmp_path / "tiny" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (20, 20), (200 * k, 30 * i, 90)).save(tmp_path / "tiny" / name / f"{i}.png")
    config = TrainConfig(**{**FAST, "dataset": str(tmp_path / "tiny"), "batch_size": 256, "epochs": 1})
    summary, seen = collect(config, store)
    assert summary["stopped_reason"] == "completed"
    notes = [e.message for e in seen if isinstance(e, events.Preparing)]
    assert any("batch size 256 is larger than the" in n for n in notes)
