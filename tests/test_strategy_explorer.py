"""Issue 15's strategies and checks: lp-ft (a linear probe to convergence, then full fine-tuning from its
head), top-all and top-BLOCK, the freeze-integrity check of the saved checkpoint, and the summary's
trained blocks and CPU time."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from ftlab import backbones, catalogue, engine, events, explore, freeze
from ftlab.config import DEFAULT_LR, TrainConfig, resolved_lr, validate
from ftlab.freeze import IntegrityCheck, Strategy, backbone_blocks, make_plan
from ftlab.runs import RunStore

SMALL_CNN_BLOCKS = ("stem", "stage1", "stage2", "stage3", "head")
TINY = dict(dataset="digits", backbone="small_cnn", weights="random", image_size=16, batch_size=64, epochs=1)


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "home")


def collect(config, store):
    seen = []
    summary = engine.run(config, store=store, emit=seen.append)
    return summary, seen


def said(seen) -> list[str]:
    return [e.message for e in seen if isinstance(e, events.Preparing)]


# --- parsing and plans ------------------------------------------------------------------

@pytest.mark.parametrize("text, block, label", [("top-all", "all", "top-all"), ("top-stage2", "stage2", "top-stage2"),
                                               ("top-layer3", "layer3", "top-layer3"), ("top-stem", "stem", "top-stem")])
def test_named_tops_parse_as_top_n_and_read_back(text, block, label):
    s = Strategy.parse(text)
    assert (s.kind, s.block, str(s), s.label) == ("top-N", block, text, label)
    assert Strategy.parse(str(s)) == s and explore.strategy_label(text) == label
    assert resolved_lr(TrainConfig(strategy=text)) == DEFAULT_LR["top-N"]


def test_top_all_trains_every_backbone_block_and_top_block_that_block_and_above():
    assert make_plan(SMALL_CNN_BLOCKS, "top-all").frozen_at_start == frozenset()
    assert make_plan(SMALL_CNN_BLOCKS, "top-stage2").frozen_at_start == {"stem", "stage1"}
    top_1 = make_plan(SMALL_CNN_BLOCKS, "top-1").frozen_at_start
    assert make_plan(SMALL_CNN_BLOCKS, "top-stage3").frozen_at_start == top_1
    assert make_plan(SMALL_CNN_BLOCKS, "top-stem").frozen_at_start == frozenset()
    # adapters are new blocks: top-BLOCK counts the backbone's blocks only, and adapters always train
    with_adapter = ("stem", "stage1", "adapter_stage1", "stage2", "stage3", "head")
    assert make_plan(with_adapter, "top-stage2").frozen_at_start == {"stem", "stage1"}
    assert Strategy.parse("top-all").describe(2).startswith("Top-all: every backbone block")
    assert Strategy.parse("top-stage2").describe(2) == "Top-stage2: stage2, every block above it and the head train."


def test_a_block_the_model_lacks_gets_a_sentence_listing_its_blocks():
    with pytest.raises(ValueError) as info:
        make_plan(SMALL_CNN_BLOCKS, "top-stage6")
    message = str(info.value)
    assert "no backbone block 'stage6'" in message and "stem, stage1, stage2, stage3" in message
    assert "top-all" in message
    problems = validate(TrainConfig(**{**TINY, "strategy": "top-stage6"}))
    assert any("stage6" in p and "stem, stage1, stage2, stage3" in p for p in problems)
    # a word that names no block of any backbone is an unknown strategy, with the choices
    with pytest.raises(ValueError, match="unknown strategy 'top-x'; choose one of: .*top-all.*lp-ft"):
        Strategy.parse("top-x")


def test_every_registered_backbones_blocks_can_be_named_in_top_block():
    for facts in catalogue.CATALOGUE:
        for block in backbone_blocks(backbones.freezable_blocks(facts.name)):
            assert Strategy.parse(f"top-{block}").block == block, (facts.name, block)


def test_lp_ft_plan_freezes_the_backbone_until_the_switch_then_nothing():
    plan = make_plan(SMALL_CNN_BLOCKS, "lp-ft")
    assert plan.strategy == "lp-ft" and plan.switch_at is None
    assert all(plan.frozen_at(e) == {"stem", "stage1", "stage2", "stage3"} for e in range(50))
    switched = dataclasses.replace(plan, switch_at=3)
    assert switched.frozen_at(2) == {"stem", "stage1", "stage2", "stage3"}
    assert switched.frozen_at(3) == frozenset() and switched.frozen_at(9) == frozenset()
    assert switched.first_trainable(2) == 4 and switched.first_trainable(3) == 0
    assert resolved_lr(TrainConfig(strategy="lp-ft")) == DEFAULT_LR["lp-ft"] == DEFAULT_LR["linear-probe"]
    assert "Kumar et al. 2022" in Strategy.parse("lp-ft").describe(2)


def test_lp_ft_needs_an_epoch_to_fine_tune_in():
    assert any("lp-ft" in p for p in validate(TrainConfig(**{**TINY, "strategy": "lp-ft", "epochs": 1})))
    assert any("lp_epochs" in p for p in validate(TrainConfig(**{**TINY, "strategy": "lp-ft", "epochs": 3,
                                                                 "lp_epochs": 3})))
    assert validate(TrainConfig(**{**TINY, "strategy": "lp-ft", "epochs": 3, "lp_epochs": 2})) == []
    # the backbone trains after the probe, so L2-SP has something to pull
    assert validate(TrainConfig(**{**TINY, "strategy": "lp-ft", "epochs": 3, "l2sp": 0.01})) == []


def test_the_model_page_takes_a_named_top_as_its_n():
    from ui.session import top_count

    config = TrainConfig(backbone="small_cnn")
    assert top_count(Strategy.parse("top-stage2"), config, 1) == 2
    assert top_count(Strategy.parse("top-all"), config, 1) == 4
    assert top_count(Strategy.parse("top-layer3"), config, 1) == 1  # not a small_cnn block: N stays
    assert top_count(Strategy.parse("top-3"), config, 1) == 3


@pytest.mark.parametrize("schedule", ["none", "cosine", "onecycle", "step"])
def test_scaling_the_rates_scales_the_schedule_from_then_on(schedule):
    """lp-ft's switch: every group's rate times the factor, and the schedule goes on from the scaled rates."""
    config = TrainConfig(schedule=schedule, step_size=2, gamma=0.5, epochs=4)

    def optimiser():
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))]
        opt = engine.make_optimizer(config, [{"params": [params[0]], "lr": 1e-2}, {"params": [params[1]], "lr": 3e-3}])
        return opt, engine.make_scheduler(config, opt, steps_per_epoch=5)[0]

    (a, sa), (b, sb) = optimiser(), optimiser()
    for step in range(12):
        if step == 4:
            engine._scale_rates(b, sb, 0.1)
        for opt, sched in ((a, sa), (b, sb)):
            opt.step()
            if sched is not None:
                sched.step()
        if step >= 4:
            assert [g["lr"] for g in b.param_groups] == pytest.approx([0.1 * g["lr"] for g in a.param_groups])


# --- lp-ft in a run -----------------------------------------------------------------------

def test_lp_ft_probes_on_cached_features_until_it_converges_then_fine_tunes_from_its_best_head(store, monkeypatch):
    # val accuracy scripted: best at epoch 2, not better at 3 and 4 -> with lp_patience 2 the probe ends after 4
    script = iter([0.5, 0.6, 0.6, 0.6, 0.55, 0.55])
    real_evaluate, real_train = engine.evaluate, engine.train_one_epoch
    starts, heads = [], []

    def scripted(*a, **k):
        return dataclasses.replace(real_evaluate(*a, **k), accuracy=next(script))

    def recording(model, *a, **k):
        starts.append(k["start"])
        heads.append({n: p.detach().clone() for n, p in model.head.named_parameters()})
        return real_train(model, *a, **k)

    monkeypatch.setattr(engine, "evaluate", scripted)
    monkeypatch.setattr(engine, "train_one_epoch", recording)
    config = TrainConfig(**{**TINY, "strategy": "lp-ft", "epochs": 6, "lp_epochs": 5, "lp_patience": 2})
    summary, seen = collect(config, store)
    assert summary["stopped_reason"] == "completed", said(seen)
    assert starts[:4] == [starts[0]] * 4 and starts[0] > 0 and starts[4:] == [0, 0]  # cached features, then images
    switch = [m for m in said(seen) if m.startswith("lp-ft:")]
    assert len(switch) == 1 and "ends after epoch 4" in switch[0] and "not improved for 2 epochs" in switch[0]
    assert "from epoch 5" in switch[0]
    records = store.epochs(summary["run_id"])
    assert [r["lr"] for r in records] == pytest.approx([3e-3] * 4 + [3e-4] * 2)  # DEFAULT_LR["lp-ft"] x 0.1
    _, total = summary["trainable_params"], summary["total_params"]
    assert len({r["trainable_params"] for r in records[:4]}) == 1 and records[0]["trainable_params"] < total
    assert [r["trainable_params"] for r in records[4:]] == [total, total]
    # the fine-tuning starts from the best probe head (epoch 2's), not from the last one (epoch 4's)
    best = store.load_checkpoint(summary["run_id"])
    assert best["epoch"] == 2
    kept = {k[len("head."):]: v for k, v in best["model"].items() if k.startswith("head.")}
    assert all(torch.equal(heads[4][n], kept[n]) for n in heads[4])
    assert not all(torch.equal(heads[3][n], kept[n]) for n in heads[3])
    assert summary["trained_blocks"] == 4
    # nothing was frozen through the whole run: the check says so
    assert summary["frozen_check"] == "no block was frozen in every epoch: nothing to check"


def test_lp_ft_ends_the_probe_after_lp_epochs_when_it_keeps_improving(store):
    config = TrainConfig(**{**TINY, "strategy": "lp-ft", "epochs": 3, "lp_epochs": 1, "lp_patience": 5,
                            "lr": 1e-2, "lp_ft_factor": 0.5})
    summary, seen = collect(config, store)
    switch = [m for m in said(seen) if m.startswith("lp-ft:")]
    assert len(switch) == 1 and "ends after epoch 1" in switch[0] and "lp_epochs 1" in switch[0]
    assert [r["lr"] for r in store.epochs(summary["run_id"])] == pytest.approx([1e-2, 5e-3, 5e-3])


# --- the freeze-integrity check -------------------------------------------------------------

def _frozen_tensor_count(blocks: tuple[str, ...], buffers: bool = True) -> int:
    model = backbones.create_model("small_cnn", 10, "random", image_size=16)
    modules = dict(model.named_children())
    return sum(len(modules[b].state_dict()) if buffers else len(list(modules[b].parameters())) for b in blocks)


def test_the_check_passes_on_a_normal_top_n_run_and_says_what_it_compared(store):
    summary, seen = collect(TrainConfig(**{**TINY, "strategy": "top-1"}), store)
    assert summary["stopped_reason"] == "completed"
    n = _frozen_tensor_count(("stem", "stage1", "stage2"))
    assert summary["frozen_check"] == f"3 frozen blocks, {n} tensors unchanged" and n > 3 * 5
    assert store.get(summary["run_id"]).summary["frozen_check"] == summary["frozen_check"]
    assert summary["trained_blocks"] == 1 and summary["cpu_seconds"] > 0


def test_with_bn_frozen_off_only_the_weights_are_checked_and_the_sentence_says_so(store):
    summary, _ = collect(TrainConfig(**{**TINY, "strategy": "top-1", "bn_frozen": False}), store)
    n = _frozen_tensor_count(("stem", "stage1", "stage2"), buffers=False)
    assert summary["stopped_reason"] == "completed"
    assert summary["frozen_check"].startswith(f"3 frozen blocks, {n} weight tensors unchanged")
    assert "BatchNorm statistics were not checked" in summary["frozen_check"]


def _perturbing(monkeypatch, change):
    """After each epoch (before its checkpoint is taken), ``change(model)``: a bug that moves a frozen block."""
    real = engine._Trainer._end_epoch

    def end_epoch(self, *a, **k):
        with torch.no_grad():
            change(self.model)
        return real(self, *a, **k)
    monkeypatch.setattr(engine._Trainer, "_end_epoch", end_epoch)


@pytest.mark.parametrize("what, change", [
    ("stage1.0.0.weight", lambda m: next(m.stage1.parameters()).add_(1e-6)),
    ("running_mean", lambda m: next(b for n, b in m.stem.named_buffers() if n.endswith("running_mean")).add_(1e-6)),
])
def test_a_frozen_tensor_changed_mid_run_fails_the_run(store, monkeypatch, what, change):
    _perturbing(monkeypatch, change)
    summary, seen = collect(TrainConfig(**{**TINY, "strategy": "top-1"}), store)
    assert summary["stopped_reason"] == "error"
    failed = [e for e in seen if isinstance(e, events.RunFailed)]
    assert len(failed) == 1 and not any(isinstance(e, events.RunFinished) for e in seen)
    message = failed[0].message
    assert message.startswith("The freeze-integrity check failed: 1 of the") and what in message
    assert "do not use it" in message
    record = store.get(summary["run_id"])
    assert record.status == "failed" and record.message == message
    assert summary["frozen_check"] == message and summary["cpu_seconds"] > 0


def test_a_moved_batchnorm_statistic_passes_when_bn_frozen_is_off(store, monkeypatch):
    # with bn_frozen off, frozen blocks' statistics move by design: only weights are compared
    _perturbing(monkeypatch, lambda m: next(b for n, b in m.stem.named_buffers()
                                            if n.endswith("running_mean")).add_(1e-6))
    summary, _ = collect(TrainConfig(**{**TINY, "strategy": "top-1", "bn_frozen": False}), store)
    assert summary["stopped_reason"] == "completed" and "weight tensors unchanged" in summary["frozen_check"]


def test_integrity_check_compares_bits_not_values():
    model = backbones.create_model("small_cnn", 10, "random", image_size=16)
    check = IntegrityCheck(backbone_blocks(tuple(model.param_blocks())))
    check.take(model, frozenset({"stem"}))
    check.ran(frozenset({"stem", "stage1"}))
    check.ran(frozenset({"stem"}))
    assert check.trained == {"stage1", "stage2", "stage3"} and check.frozen == {"stem"}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert check.verify(state).startswith("1 frozen blocks, ")
    key = next(k for k in state if k.startswith("stem.") and state[k].is_floating_point())
    state[key] = state[key].double()  # equal values, another type: not the same bits
    with pytest.raises(freeze.FrozenBlocksChanged, match=key.replace(".", r"\.")):
        check.verify(state)


# --- trained blocks, CPU time -----------------------------------------------------------------

@pytest.mark.parametrize("strategy, extra, trained", [("linear-probe", {}, 0), ("top-2", {}, 2), ("top-all", {}, 4),
                                                      ("full", {}, 4), ("top-stage2", {}, 2),
                                                      ("gradual", {"epochs": 2, "gradual_every": 1}, 1)])
def test_trained_blocks_counts_the_backbone_blocks_that_trained(store, strategy, extra, trained):
    summary, seen = collect(TrainConfig(**{**TINY, "strategy": strategy, **extra}), store)
    assert summary["stopped_reason"] == "completed", said(seen)
    assert summary["trained_blocks"] == trained and summary["cpu_seconds"] > 0
    frozen = 4 - (trained if strategy != "gradual" else 1)
    assert summary["frozen_check"].startswith(f"{frozen} frozen blocks" if frozen else "no block was frozen")


def test_the_model_page_has_an_lp_ft_preset_with_its_caption_and_options(app_env):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from ui import keys as K

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120).run()
    at.switch_page("app_pages/model.py").run()
    at.button(key=K.PRESET_BUTTON.format("lp_ft")).click().run()
    assert not at.exception
    assert at.session_state[K.PRESET] == "lp-ft"
    assert any(c.value.startswith("LP-FT (Kumar et al. 2022)") for c in at.caption)
    at.number_input(key=K.cfg("lp_patience")).set_value(3).run()
    from ui.session import current_config

    config = current_config({k: at.session_state[k] for k in at.session_state})
    assert (config.strategy, config.lp_patience) == ("lp-ft", 3)


def test_the_block_table_says_how_lp_ft_goes_on_after_the_probe():
    table = explore.block_table(TrainConfig(backbone="small_cnn", strategy="lp-ft"), 4)
    assert table.columns()["train"] == [False, False, False, False, True]  # the probe: the head alone
    assert table.schedule.startswith("The table shows the probe;") and "lp_ft_factor" in table.schedule
