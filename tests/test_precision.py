"""--precision: what `auto` picks and why, that it measures once per machine, model and size,
that the measurement leaves a run as it was, and that every part of a run computes in it."""
import json
import time

import pytest
import torch

from ftlab import cache, engine, events, explore, precision
from ftlab.config import TrainConfig, validate
from ftlab.runs import RunStore

FAST = dict(dataset="digits", backbone="small_cnn", weights="random", image_size=16, batch_size=64, epochs=1,
            lr=3e-3)
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_memory():
    precision.forget()
    yield
    precision.forget()


class Timer:
    """A measurement with fixed answers, counting its calls."""

    def __init__(self, fp32: float, bf16: float):
        self.seconds, self.calls = {"fp32": fp32, "bf16": bf16}, []

    def __call__(self, name: str) -> float:
        self.calls.append(name)
        return self.seconds[name]


def test_asked_for_is_taken_as_asked():
    for name in ("fp32", "bf16", "fp16"):
        choice = precision.resolve(name, CPU, part="training", key="k", measure=Timer(1, 1))
        assert choice.name == name and choice.reason.startswith("asked for")


def test_auto_without_native_bf16_is_fp32_and_measures_nothing(monkeypatch):
    monkeypatch.setenv("FTLAB_CPU_BF16", "0")
    timer = Timer(1.0, 0.1)
    choice = precision.resolve("auto", CPU, part="caching", key="k", measure=timer)
    assert choice.name == "fp32" and "switched off" in choice.reason
    assert timer.calls == []


def test_auto_with_native_bf16_takes_it_only_where_measured_faster(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16", lambda: (True, "the CPU has native bf16 (test)"))
    faster = precision.resolve("auto", CPU, part="caching", key="model A at 224 px", measure=Timer(1.0, 0.4))
    assert faster.name == "bf16" and "2.50x" in faster.reason and "measured now" in faster.reason
    slower = precision.resolve("auto", CPU, part="training", key="model A at 224 px", measure=Timer(1.0, 1.05))
    assert slower.name == "fp32" and "1.1x" in slower.reason  # a tie is not worth bf16's rounding


def test_the_answer_is_remembered_per_machine_model_and_size(monkeypatch, tmp_path):
    monkeypatch.setattr(precision, "cpu_bf16", lambda: (True, "native (test)"))
    first = Timer(1.0, 0.5)
    precision.resolve("auto", CPU, part="caching", key="resnet18 at 224 px", measure=first)
    assert first.calls  # measured
    stored = json.loads((tmp_path / "ftlab-home" / "precision.json").read_text())
    (key,) = stored
    assert "resnet18 at 224 px | caching" in key and precision.machine() in key
    assert stored[key]["fp32_s"] == 1.0 and stored[key]["bf16_s"] == 0.5
    precision.forget()  # another process: only the file remembers
    again = Timer(9.0, 9.0)
    choice = precision.resolve("auto", CPU, part="caching", key="resnet18 at 224 px", measure=again)
    assert again.calls == [] and choice.name == "bf16" and "measured earlier" in choice.reason
    other_size = Timer(1.0, 2.0)
    assert precision.resolve("auto", CPU, part="caching", key="resnet18 at 96 px", measure=other_size).name == "fp32"
    assert other_size.calls


def test_a_damaged_or_unwritable_memory_still_decides(monkeypatch, tmp_path):
    monkeypatch.setattr(precision, "cpu_bf16", lambda: (True, "native (test)"))
    home = tmp_path / "ftlab-home"
    home.mkdir()
    (home / "precision.json").write_text("{not json")
    assert precision.resolve("auto", CPU, part="training", key="k", measure=Timer(1.0, 0.5)).name == "bf16"
    assert json.loads((home / "precision.json").read_text())  # rewritten whole
    assert not list(home.glob("*.tmp"))


def test_the_measurement_stops_within_its_budget():
    calls = []

    def slow(name):
        calls.append(name)
        time.sleep(0.1)
        return 0.1

    result = precision.compare(slow, budget_s=0.5)
    # one warm-up each, then at least one timed call each; never a third round past the budget
    assert calls[:2] == ["fp32", "bf16"] and 4 <= len(calls) <= 8
    assert result["fp32_s"] == result["bf16_s"] == 0.1 and result["seconds"] < 1.0


def test_cuda_auto_is_bf16_where_the_gpu_has_it_else_fp16_with_a_scaler(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.resolve("auto", cuda, part="training", key="k", measure=None).name == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    fp16 = precision.resolve("auto", cuda, part="training", key="k", measure=None)
    assert fp16.name == "fp16" and "loss scaling" in fp16.reason
    assert isinstance(fp16.scaler(CPU), torch.amp.GradScaler)
    assert precision.Choice("bf16", "").scaler(CPU) is None


def test_a_record_from_before_precision_keeps_what_amp_meant():
    old = {k: v for k, v in TrainConfig().to_dict().items() if k != "precision"}
    assert TrainConfig.from_dict({**old, "amp": False}).precision == "fp32"
    assert TrainConfig.from_dict({**old, "amp": True}).precision == "auto"
    assert any("precision" in p for p in validate(TrainConfig(precision="int4")))


def test_storage_keeps_bf16_features_as_computed():
    assert cache.storage_dtype(400, budget=1000, free_bytes=None, computed=torch.bfloat16) == torch.bfloat16
    assert cache.storage_dtype(4000, budget=1000, free_bytes=None, computed=torch.bfloat16) is None  # 2000 B
    assert cache.storage_dtype(1500, budget=1000, free_bytes=None) == torch.float16  # fp32 features: halved


def _run(tmp_path, **overrides):
    seen = []
    summary = engine.run(TrainConfig(**{**FAST, **overrides}), store=RunStore(tmp_path / "runs"), emit=seen.append)
    assert summary["stopped_reason"] == "completed", summary
    return summary, [e.message for e in seen if isinstance(e, events.Preparing)]


def test_a_bf16_run_computes_and_caches_in_bf16_and_says_so(tmp_path, monkeypatch):
    calls = []
    real = torch.autocast.__init__

    def spy(self, device_type, dtype=None, *args, **kw):
        calls.append(dtype)
        real(self, device_type, dtype, *args, **kw)

    monkeypatch.setattr(torch.autocast, "__init__", spy)
    summary, notes = _run(tmp_path, strategy="top-1", epochs=2, precision="bf16")
    said = summary["precision"]
    assert said["caching"] == said["training"] == "bf16"
    # "asked for", and on a CPU without native bf16 (an AMD EPYC without AVX512-BF16) what that costs
    assert all(said[k].startswith("asked for") for k in ("caching_reason", "training_reason")), said
    assert any("float16" in n or "bfloat16" in n for n in notes if n.startswith("caching the output"))
    stored = [t for t in cache.SHARED._entries.values()]
    assert stored and all(t.dtype == torch.bfloat16 for t in stored)
    assert torch.bfloat16 in calls
    # it learns what fp32 learns: the training loss of each epoch within 5% (it falls 10-fold)
    plain, _ = _run(tmp_path, strategy="top-1", epochs=2, precision="fp32")
    store = RunStore(tmp_path / "runs")
    losses = [e["train_loss"] for e in store.epochs(summary["run_id"])]
    assert losses == pytest.approx([e["train_loss"] for e in store.epochs(plain["run_id"])], rel=0.05)
    assert losses[-1] < losses[0] / 3
    assert "bf16" in explore.precision_text(summary)
    assert any(n.startswith("Trained in bf16") for n in explore.run_notes(summary))
    assert summary["prefix"] and "matched the eager fp32 prefix" in summary["prefix"]


def test_an_fp32_run_never_enters_autocast(tmp_path, monkeypatch):
    entered = []
    real = torch.autocast.__enter__
    monkeypatch.setattr(torch.autocast, "__enter__", lambda self: entered.append(self) or real(self))
    summary, _ = _run(tmp_path, strategy="top-1", precision="fp32")
    assert summary["precision"]["training"] == summary["precision"]["caching"] == "fp32"
    assert not [a for a in entered if a._enabled and a.fast_dtype != torch.float32]


def test_measuring_auto_leaves_the_run_as_fp32_would_have_run(tmp_path, monkeypatch):
    """auto measures a forward and backward pass in each precision before training; here it must
    then choose fp32, and the run must equal the fp32 run to the last bit: the measurement left the
    random state, BatchNorm's running statistics and the gradients as they were."""
    monkeypatch.setattr(precision, "cpu_bf16", lambda: (True, "native (test)"))
    monkeypatch.setattr(precision, "FASTER_BY", float("inf"))  # never fast enough: fp32 after measuring
    for strategy in ("full", "top-1"):  # full: no cache, BatchNorm in train mode; top-1: from the cache
        cache.SHARED.clear()
        plain, _ = _run(tmp_path, strategy=strategy, epochs=2, precision="fp32", flip=strategy == "full")
        auto, notes = _run(tmp_path, strategy=strategy, epochs=2, precision="auto", flip=strategy == "full")
        assert "measured now" in auto["precision"]["training_reason"] and auto["precision"]["training"] == "fp32"
        for key in ("best_val_accuracy", "best_epoch", "epochs_run"):
            assert auto[key] == plain[key], (strategy, key)
        store = RunStore(tmp_path / "runs")
        a, b = store.epochs(auto["run_id"]), store.epochs(plain["run_id"])
        assert [e["train_loss"] for e in a] == [e["train_loss"] for e in b], strategy
        assert [e["val_loss"] for e in a] == [e["val_loss"] for e in b], strategy


def test_the_fast_prefix_is_checked_and_can_be_switched_off(tmp_path):
    """The cached features of the folded graph equal the eager blocks' to rounding (fp32), and with
    --no-fast-prefix the eager blocks run, the record saying so; the two never share a cache entry."""
    fast, _ = _run(tmp_path, strategy="top-1", precision="fp32")
    assert "TorchScript, conv+BN folded" in fast["prefix"] and "matched the eager fp32 prefix" in fast["prefix"]
    graph_entries = dict(cache.SHARED._entries)
    plain, notes = _run(tmp_path, strategy="top-1", precision="fp32", fast_prefix=False)
    assert "the eager prefix" in plain["prefix"] and "switched off" in plain["prefix"]
    assert not any("cached by an earlier run" in n for n in notes)
    eager_entries = {k: v for k, v in cache.SHARED._entries.items() if k not in graph_entries}
    assert len(eager_entries) == len(graph_entries) == 2  # train and val, each computed both ways
    for key, features in eager_entries.items():
        (twin,) = [v for k, v in graph_entries.items() if k.split == key.split]
        scale = features.abs().max()
        assert (twin - features).abs().max() <= 1e-4 * scale


def test_auto_keeps_fp32_where_bf16_fails_its_stricter_check_and_bf16_asked_for_does_not(tmp_path, monkeypatch):
    """auto's bf16 must keep the frozen blocks within AUTO_TOLERANCE of fp32 (here: exactly, which
    bf16 never does); asked for, bf16 is held only to the looser TOLERANCE."""
    monkeypatch.setattr(precision, "cpu_bf16", lambda: (True, "native (test)"))
    from ftlab import fastpath

    monkeypatch.setattr(fastpath, "AUTO_TOLERANCE", {**fastpath.AUTO_TOLERANCE, "bf16": 0.0})
    auto, _ = _run(tmp_path, strategy="top-1", precision="auto")
    assert auto["precision"]["caching"] == "fp32"
    assert "failed their accuracy check" in auto["precision"]["caching_reason"]
    remembered = json.loads((tmp_path / "ftlab-home" / "precision.json").read_text())
    (failed,) = [v for k, v in remembered.items() if k.endswith("| caching")]  # keyed by the weights too
    assert "failed their accuracy check" in failed["unusable"]
    asked, _ = _run(tmp_path, strategy="top-1", precision="bf16")
    assert asked["precision"]["caching"] == "bf16" and "bf16 autocast" in asked["prefix"]


def test_an_unusable_measurement_is_fp32_and_remembered(monkeypatch, tmp_path):
    monkeypatch.setattr(precision, "cpu_bf16", lambda: (True, "native (test)"))

    def refuses(name):
        raise precision.Unusable("its output was off")

    choice = precision.resolve("auto", CPU, part="caching", key="k", measure=refuses)
    assert choice.name == "fp32" and choice.reason.endswith("in bf16 its output was off (measured now)")
    again = precision.resolve("auto", CPU, part="caching", key="k", measure=Timer(1.0, 0.1))
    assert again.name == "fp32" and "its output was off (measured earlier" in again.reason  # not rebuilt


@pytest.mark.parametrize("entry", ["bf16", None, [], {"fp32_s": "1", "bf16_s": 0.5}, {"fp32_s": 1.0},
                                   {"fp32_s": float("nan"), "bf16_s": 1.0}, {"fp32_s": 0, "bf16_s": 0},
                                   {"unusable": 3}, {"fp32_s": True, "bf16_s": 0.5}])
def test_a_hand_edited_memory_entry_is_measured_again(monkeypatch, tmp_path, entry):
    """Before: a remembered answer that was not two positive times failed the run (KeyError,
    TypeError, ZeroDivisionError) or, as the string "bf16", read as "unusable"."""
    monkeypatch.setattr(precision, "cpu_bf16", lambda: (True, "native (test)"))
    home = tmp_path / "ftlab-home"
    home.mkdir()
    key = f"{precision.machine()} | k | caching"
    (home / "precision.json").write_text(json.dumps({key: entry}))
    timer = Timer(1.0, 0.5)
    choice = precision.resolve("auto", CPU, part="caching", key="k", measure=timer)
    assert timer.calls and choice.name == "bf16" and "measured now" in choice.reason
    assert json.loads((home / "precision.json").read_text())[key]["bf16_s"] == 0.5  # replaced whole
