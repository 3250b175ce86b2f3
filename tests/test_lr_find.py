"""The learning-rate finder: the ramp, the smoothing, the rule, stopping on divergence, and the
state it restores (a linear probe on cached features, and after gradual unfreezing with
discriminative rates and a scheduler); the CLI and the Train page's button. Digits at 16 px on
small_cnn with random weights: each test takes seconds."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ftlab import cli, engine, lr_find
from ftlab.config import TrainConfig
from ftlab.lr_find import FinderOptions
from ftlab.runs import RunStore

# fp32: auto's measurement of the alternatives would take longer than the ramp
TINY = dict(dataset="digits", backbone="small_cnn", weights="random", image_size=16, batch_size=64, epochs=3,
            precision="fp32")
APP = str(Path(__file__).resolve().parents[1] / "app.py")


# --- the pure parts ---------------------------------------------------------------------------

def test_the_ramp_is_exponential_from_start_to_end():
    lrs = lr_find.ramp(1e-7, 10.0, 100)
    assert len(lrs) == 100 and lrs[0] == pytest.approx(1e-7) and lrs[-1] == pytest.approx(10.0)
    ratios = lrs[1:] / lrs[:-1]
    assert np.allclose(ratios, (10.0 / 1e-7) ** (1 / 99))  # one factor from each rate to the next
    assert np.allclose(np.diff(np.log10(lrs)), 8 / 99)


def test_the_smoothed_loss_is_fastais_bias_corrected_mean():
    losses = [3.0, 1.0, 2.0]
    beta = 0.98
    by_hand, mean = [], 0.0
    for i, x in enumerate(losses):
        mean = beta * mean + (1 - beta) * x
        by_hand.append(mean / (1 - beta ** (i + 1)))
    assert lr_find.smooth(losses).tolist() == pytest.approx(by_hand)
    assert lr_find.smooth(losses)[0] == pytest.approx(3.0)  # corrected: the first value is the first loss
    assert lr_find.smooth(losses)[1] == pytest.approx((0.98 * 0.02 * 3 + 0.02 * 1) / (1 - 0.98 ** 2))


def test_the_rule_on_a_scripted_curve():
    lrs = lr_find.ramp(1e-6, 1.0, 61)  # ten steps a decade
    # flat, falling from 1e-4 to its lowest at 1e-2, then blowing up
    logs = np.log10(lrs)
    curve = np.where(logs < -4, 2.3, np.where(logs <= -2, 2.3 - 1.0 * (logs + 4), 0.3 + 5 * (logs + 2) ** 2))
    s = lr_find.suggest(lrs, curve)
    lowest = int(np.argmin(curve))
    assert lrs[lowest] == pytest.approx(1e-2)
    assert s.minimum == pytest.approx(1e-2) and s.rate == pytest.approx(1e-3)  # a tenth of it
    assert 1e-4 <= s.steepest <= 1e-2  # on the falling part
    assert "one tenth of the rate at which the smoothed loss was lowest" in lr_find.RULE
    # a loss that only rises has no suggestion, and says why
    rising = lr_find.suggest(lrs, np.linspace(1, 5, len(lrs)))
    assert rising.rate is None and "never fell" in rising.note
    # a suggestion below the lr option's range is raised to its bound, not offered as a rate the field refuses
    assert lr_find.suggest([1e-9, 1e-8, 1e-7], [2, 1, 3]).rate == pytest.approx(lr_find.LR_LO)
    assert s.note == ""
    # the lowest loss at the last rate: a rate, and a note that the ramp never reached the blow-up
    still = lr_find.suggest(lrs, np.linspace(5, 1, len(lrs)))
    assert still.rate == pytest.approx(0.1) and "raise end_lr" in still.note


def test_divergence_is_four_times_the_minimum():
    assert lr_find.has_diverged(4.01, 1.0) and not lr_find.has_diverged(3.99, 1.0)
    assert lr_find.has_diverged(math.inf, 1.0) and lr_find.has_diverged(math.nan, 1.0)
    assert lr_find.has_diverged(2.5, -1.0) and not lr_find.has_diverged(1.5, -1.0)  # negative: 3 x |min| above it


def test_bad_options_are_sentences():
    assert FinderOptions().problems(TrainConfig(**TINY)) == []
    problems = FinderOptions(steps=3, start_lr=1.0, end_lr=0.1, at_epoch=9).problems(TrainConfig(**TINY))
    text = " ".join(problems)
    assert "steps must be between 10 and 2000" in text and "start_lr (1) must be below end_lr (0.1)" in text
    assert "at_epoch (9) is after the run's last epoch (3)" in text
    with pytest.raises(ValueError, match="cannot start"):
        lr_find.find_lr(TrainConfig(**TINY), FinderOptions(steps=5))


# --- on a run's trainer -----------------------------------------------------------------------

def state_of(trainer) -> dict:
    """Everything the finder must leave as it found it, copied."""
    model = trainer.model
    return {"weights": {k: v.clone() for k, v in model.state_dict().items()},
            "flags": [p.requires_grad for p in model.parameters()],
            "frozen": model.frozen_blocks, "training": model.training,
            "optimizer": _copy(trainer.optimizer.state_dict()),
            "scheduler": _copy(trainer.scheduler.state_dict()) if trainer.scheduler is not None else None,
            "rng": torch.get_rng_state().clone()}


def _copy(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copy(v) for v in value)
    return value


def assert_same(a, b, where="") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where  # bit for bit
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_a_linear_probe_ramps_on_cached_features_and_restores_everything():
    trainer = lr_find.prepared_trainer(TrainConfig(**TINY, strategy="linear-probe"))
    before = state_of(trainer)
    result = lr_find.ramp_lr(trainer, FinderOptions(steps=30))
    after = state_of(trainer)
    assert_same(before, after)
    assert not before["optimizer"]["state"]  # a fresh optimiser stays fresh: no moment left behind
    assert result.steps == len(result.lrs) == len(result.losses) == len(result.smoothed) > 0
    assert result.lrs[0] == pytest.approx(1e-7) and "cached features" in result.inputs
    assert result.trained_blocks == ("head",)
    # the loss moved: the head really trained during the ramp, and was then put back
    assert max(result.losses) - min(result.losses) > 1e-3


def test_after_gradual_unfreezing_with_discriminative_rates_the_state_is_restored():
    config = TrainConfig(**TINY, strategy="gradual", gradual_every=1, lr_decay=0.5, schedule="onecycle",
                         optimizer="sgd")
    trainer = lr_find.prepared_trainer(config)
    # the optimiser has state, as it would mid-run: two real training steps first
    inputs = trainer._inputs(0)
    engine.train_one_epoch(trainer.model, inputs.train, trainer.labels["train"],
                           iter(list(engine.batches(len(trainer.labels["train"]), 64))[:2]),
                           optimizer=trainer.optimizer, objective=trainer.objective, prep=inputs.prep,
                           start=inputs.start, scheduler=trainer.scheduler)
    assert trainer.optimizer.state  # momentum buffers
    before = state_of(trainer)
    result = lr_find.ramp_lr(trainer, FinderOptions(steps=20, at_epoch=3))
    assert_same(before, state_of(trainer))
    assert trainer.model.frozen_blocks == trainer.plan.frozen_at(0)  # the freeze it started from
    # epoch 3 of gradual-every-1 trains the top two backbone blocks and the head, at halving rates
    trained = result.trained_blocks
    assert trained[-1] == "head" and len(trained) == 3
    assert [result.group_rates[b] for b in trained] == pytest.approx([0.25, 0.5, 1.0])
    assert result.stopped in ("completed", "diverged", "non_finite")


def test_a_full_fine_tune_stops_early_when_the_loss_diverges():
    trainer = lr_find.prepared_trainer(TrainConfig(**{**TINY, "batch_size": 16}, strategy="full"))
    before = state_of(trainer)
    result = lr_find.ramp_lr(trainer, FinderOptions(steps=40, start_lr=1.0, end_lr=1e6))
    assert result.stopped in ("diverged", "non_finite") and result.steps < 40, result.why
    assert "stopped at step" in result.why
    assert "on the images" in result.inputs  # every block trains: nothing to cache
    assert_same(before, state_of(trainer))
    if result.stopped == "diverged":
        s = lr_find.smooth(result.losses)
        assert lr_find.has_diverged(s[-1], min(s))


def test_a_stop_ends_the_ramp_with_the_steps_taken():
    trainer = lr_find.prepared_trainer(TrainConfig(**TINY, strategy="linear-probe"))
    calls = []
    result = lr_find.ramp_lr(trainer, FinderOptions(steps=100), should_stop=lambda: calls.append(1) or len(calls) > 5)
    assert result.stopped == "user" and result.steps == 5


# --- the CLI and the page ---------------------------------------------------------------------

def test_the_cli_prints_json_and_keeps_no_run(capsys):
    code = cli.main(["lr-find", "--dataset", "digits", "--backbone", "small_cnn", "--weights", "random",
                     "--image-size", "16", "--batch-size", "64", "--steps", "30", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out.strip().splitlines()[-1])
    assert result["steps"] == len(result["lrs"]) == len(result["losses"]) == len(result["smoothed"]) > 0
    assert result["planned_steps"] == 30 and result["rule"] == lr_find.RULE
    assert result["suggestion"] is None or result["suggestion"] == pytest.approx(result["minimum_lr"] / 10)
    assert RunStore().list() == []  # no run kept


def test_the_cli_refuses_bad_options_in_a_sentence(capsys):
    assert cli.main(["lr-find", "--steps", "3", "--at-epoch", "9"]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "steps must be between" in err and "at_epoch (9)" in err and "Traceback" not in err


def test_the_train_page_finds_a_rate_and_uses_it(app_env):
    from streamlit.testing.v1 import AppTest

    from ui import keys as K

    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("app_pages/train.py").run()
    for name, value in (("backbone", "small_cnn"), ("image_size", 16), ("batch_size", 64)):
        at.session_state[K.cfg(name)] = value
    at.session_state[K.WEIGHTS] = "random"
    at.run()
    at.number_input(key=K.LR_FIND_OPTION.format("steps")).set_value(30)
    at.button(key=K.LR_FIND).click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    finder = at.session_state[K.LR_FIND_JOB]
    assert finder.join(120) and finder.error == "", finder.error
    at.run()
    assert not at.exception
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    curve = next(s for s in specs if "Learning-rate finder" in s["layout"]["title"]["text"])
    assert {t["name"] for t in curve["data"]} >= {"loss per step", "smoothed loss"}
    assert lr_find.RULE in " ".join(c.value for c in at.caption)
    assert finder.options.steps == 30  # the page's control reached the finder
    assert RunStore().list() == []
    if finder.result.suggestion is None:
        assert any("No suggestion" in w.value for w in at.warning)
        return
    at.button(key=K.LR_FIND_USE).click().run()
    assert at.session_state[K.cfg("lr")] == pytest.approx(finder.result.suggestion)
    assert at.number_input(key=K.cfg("lr")).value == pytest.approx(finder.result.suggestion)
