"""L2-SP toward the pretrained weights: the penalty and its gradient, the param groups it changes,
the adaptive rule, the "which layers moved" figures of every run, and their charts on the Train
and Runs pages. Runs are digits at 16 px on small_cnn."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from ftlab import backbones, engine, freeze
from ftlab.config import TrainConfig, validate
from ftlab.objectives import L2SP, Anchor, Batch, CrossEntropy, adapt_beta, beta_bounds
from ftlab.runs import RunStore

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(dataset="digits", backbone="small_cnn", weights="random", strategy="top-1", image_size=16,
            batch_size=64, epochs=2, lr=3e-3, device="cpu")


def tiny_model() -> backbones.BlockModel:
    torch.manual_seed(0)
    return backbones.create_model("small_cnn", 3, "random", image_size=16)


def batch_of(model: backbones.BlockModel) -> tuple[torch.Tensor, Batch]:
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    return model(x), Batch(x, y, torch.arange(4))


# --- the penalty ---------------------------------------------------------------------------------

def test_the_penalty_is_zero_at_theta0_and_its_gradient_is_beta_times_the_distance():
    model = tiny_model()
    anchor = Anchor(model)
    objective = L2SP(CrossEntropy(), anchor.pairs(freeze.backbone_blocks(tuple(model.param_blocks()))), beta=0.3)
    assert objective.penalty().item() == 0.0
    outputs, batch = batch_of(model)
    plain, step = CrossEntropy()(outputs, batch), objective(outputs, batch)
    assert step.loss.item() == pytest.approx(plain.loss.item())

    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.zero_grad()
    objective.penalty().backward()
    for (p, p0) in objective.pairs:
        torch.testing.assert_close(p.grad, 0.3 * (p.detach() - p0))
    assert all(p.grad is None for p in model.head.parameters())  # the new head is not pulled toward its start
    expected = 0.15 * sum(((p.detach() - p0) ** 2).sum() for p, p0 in objective.pairs)
    assert objective.penalty().item() == pytest.approx(expected.item(), rel=1e-5)


def test_the_penalty_counts_its_part_and_the_base_loss_and_covers_only_blocks_that_train():
    model = tiny_model()
    blocks = freeze.backbone_blocks(tuple(model.param_blocks()))
    objective = L2SP(CrossEntropy(), Anchor(model).pairs(blocks), beta=1.0)
    with torch.no_grad():
        model.stem[0].weight.add_(1.0)  # stem moved ...
        model.stage3[0][0].weight.add_(1.0)
    freeze.apply_freeze(model, frozenset(blocks) - {"stage3"})  # ... but only stage3 trains now
    moved_stage3 = 0.5 * model.stage3[0][0].weight.numel()
    assert objective.penalty().item() == pytest.approx(moved_stage3)
    outputs, batch = batch_of(model)
    step = objective(outputs, batch)
    assert step.counts["loss:l2sp"] == pytest.approx(4 * moved_stage3)
    assert step.counts["loss:ce"] == pytest.approx(4 * CrossEntropy()(outputs, batch).loss.item(), rel=1e-5)
    assert step.counts["correct"] == CrossEntropy()(outputs, batch).counts["correct"]


def test_l2sp_turns_off_the_weight_decay_of_the_backbone_and_keeps_the_heads():
    model = tiny_model()
    blocks = freeze.backbone_blocks(tuple(model.param_blocks()))
    groups = freeze.param_groups(model, 1e-3, weight_decay=0.01, anchored=frozenset(blocks))
    decay = {}
    for g in groups:
        decay[g["name"]] = max(decay.get(g["name"], 0.0), g["weight_decay"])
    assert decay["head"] == 0.01 and all(decay[b] == 0.0 for b in blocks)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))  # every parameter, once
    plain = freeze.param_groups(model, 1e-3, weight_decay=0.01)
    assert {g["name"] for g in plain if g["weight_decay"]} == set(model.param_blocks())  # as before without L2-SP


def test_a_run_with_l2sp_gives_the_optimiser_no_backbone_decay(store, monkeypatch):
    seen = []
    real = engine.make_optimizer
    monkeypatch.setattr(engine, "make_optimizer", lambda c, groups: seen.append(groups) or real(c, groups))
    engine.run(TrainConfig(**{**FAST, "epochs": 1, "l2sp": 0.1, "weight_decay": 0.01}), store=store)
    decayed = {g["name"] for g in seen[0] if g["weight_decay"]}
    assert decayed == {"head"}


# --- the adaptive rule -----------------------------------------------------------------------------

def test_the_adaptive_rule_on_a_scripted_sequence_of_gaps():
    lo, hi = beta_bounds(0.1)
    assert (lo, hi) == pytest.approx((0.01, 1.0))
    script = [  # (gap, val accuracy improved on its best) per epoch -> beta for the next epoch
        (0.10, True, 0.1),    # first epoch: no previous gap, beta stays
        (0.20, False, 0.2),   # the gap grew, val did not improve: up
        (0.30, False, 0.4),   # again
        (0.35, False, 0.8),
        (0.40, False, 1.0),   # at the upper bound
        (0.20, True, 0.5),    # val improved, the gap shrank: down
        (0.25, True, 0.5),    # both at once: stays
        (0.25, False, 0.5),   # neither (the gap did not grow): stays
        (0.10, True, 0.25),
        (0.05, True, 0.125),
        (0.04, True, 0.0625),
        (0.03, True, 0.03125),
        (0.02, True, 0.015625),
        (0.01, True, 0.01),   # at the lower bound
    ]
    beta, previous = 0.1, None
    for gap, improved, expected in script:
        beta = adapt_beta(beta, gap, previous, improved, lo, hi)
        previous = gap
        assert beta == pytest.approx(expected), (gap, improved)


def test_adaptive_l2sp_needs_a_beta_to_start_from_and_l2sp_needs_a_trained_backbone_block():
    problems = validate(TrainConfig(**{**FAST, "l2sp_adaptive": True}))
    assert any("give --l2sp BETA above 0" in p for p in problems)
    problems = validate(TrainConfig(**{**FAST, "strategy": "linear-probe", "l2sp": 0.1}))
    assert any("trains none of them" in p for p in problems)
    assert not validate(TrainConfig(**{**FAST, "strategy": "gradual", "l2sp": 0.1, "l2sp_adaptive": True}))
    assert any("l2sp must be between 0 and 10" in p for p in validate(TrainConfig(**{**FAST, "l2sp": 11.0})))


# --- which layers moved, end to end --------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "home")


def test_every_run_records_how_far_each_block_moved_and_l2sp_its_beta_and_parts(store):
    seen = []
    summary = engine.run(TrainConfig(**{**FAST, "l2sp": 0.5, "l2sp_adaptive": True}), store=store, emit=seen.append)
    assert summary["stopped_reason"] == "completed", summary
    epochs = store.epochs(summary["run_id"])
    assert len(epochs) == 2
    for e in epochs:
        moved = e["moved"]
        assert set(moved) == {"stem", "stage1", "stage2", "stage3", "head"}
        assert moved["stem"] == moved["stage1"] == moved["stage2"] == 0.0  # frozen under top-1
        assert moved["stage3"] > 0 and moved["head"] > 0
        assert set(e["parts"]) == {"ce", "l2sp"} and e["parts"]["l2sp"] > 0
        assert e["parts"]["ce"] + e["parts"]["l2sp"] == pytest.approx(e["train_loss"], rel=1e-4)
    assert epochs[1]["moved"]["stage3"] > epochs[0]["moved"]["stage3"] * 0.5
    assert [e["l2sp_beta"] for e in epochs] == [0.5, 0.5]  # the first epoch leaves beta as it was
    ended = [ev for ev in seen if type(ev).__name__ == "EpochEnded"]
    assert [ev.moved for ev in ended] == [e["moved"] for e in epochs]
    assert [ev.l2sp_beta for ev in ended] == [0.5, 0.5]


def test_a_run_without_l2sp_records_the_moved_figures_and_no_beta(store):
    summary = engine.run(TrainConfig(**{**FAST, "epochs": 1, "strategy": "linear-probe"}), store=store)
    (epoch,) = store.epochs(summary["run_id"])
    assert epoch["l2sp_beta"] is None and "l2sp" not in epoch["parts"]
    assert epoch["moved"]["head"] > 0 and all(epoch["moved"][b] == 0.0 for b in ("stem", "stage1", "stage2",
                                                                                   "stage3"))


def test_the_moved_figure_is_the_relative_distance_from_the_start():
    model = tiny_model()
    anchor = Anchor(model)
    anchor.take(["stage3", "head"])
    w0 = torch.cat([p.detach().flatten().clone() for p in model.stage3.parameters()])
    with torch.no_grad():
        model.stage3[0][0].weight.mul_(1.5)
        model.stem[0].weight.add_(1.0)  # never taken: it has not trained, so it reads 0 whatever it holds
    w = torch.cat([p.detach().flatten() for p in model.stage3.parameters()])
    moved = anchor.moved()
    assert moved["stage3"] == pytest.approx(((w - w0).norm() / w0.norm()).item(), rel=1e-5)
    assert moved["head"] == 0.0 and moved["stem"] == 0.0


# --- the pages -----------------------------------------------------------------------------------------

def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def moved_heatmap(at: AppTest) -> dict:
    (trace,) = [t for s in charts(at) for t in s["data"] if t["type"] == "heatmap" and "θ₀" in t["hovertemplate"]]
    return trace


def beta_trace(at: AppTest) -> dict:
    (trace,) = [t for s in charts(at) for t in s["data"] if t.get("name") == "beta"]
    return trace


def test_the_train_and_runs_pages_draw_the_moved_heatmap_and_the_beta_trace(app_env):
    from test_app import app, goto, poll

    at = goto(app(), "app_pages/model.py")
    at.selectbox(key="cfg.backbone").select("small_cnn").run()
    at.button(key="model.preset.top_n").click().run()
    goto(at, "app_pages/train.py")
    for name, value in (("image_size", 16), ("epochs", 2), ("batch_size", 64), ("l2sp", 0.2)):
        at.number_input(key=f"cfg.{name}").set_value(value)
    at.checkbox(key="cfg.l2sp_adaptive").check()
    at.button(key="train.start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    poll(at, lambda a: a.success or a.error or a.warning)
    assert "finished" in at.success[0].value, [e.value for e in [*at.error, *at.warning]]
    run_id = at.session_state["train.job"]
    stored = RunStore().epochs(run_id)
    heat = moved_heatmap(at)
    assert heat["x"] == [1, 2] and heat["y"][0] == "stem" and heat["y"][-1].startswith("head (new")
    assert heat["z"] == [[e["moved"][b] for e in stored] for b in ("stem", "stage1", "stage2", "stage3", "head")]
    assert heat["z"][0] == [0.0, 0.0] and heat["z"][3][0] > 0  # frozen stem, trained stage3
    assert beta_trace(at)["y"] == [0.2, 0.2]

    goto(at, "app_pages/runs.py")
    heat = moved_heatmap(at)
    assert heat["z"] == [[e["moved"][b] for e in stored] for b in ("stem", "stage1", "stage2", "stage3", "head")]
    assert beta_trace(at)["y"] == [e["l2sp_beta"] for e in stored]


def test_a_run_without_l2sp_draws_the_heatmap_and_no_beta_chart(app_env):
    from test_app import app, goto

    store = RunStore()
    summary = engine.run(TrainConfig(**{**FAST, "epochs": 1}), store=store)
    at = goto(app(), "app_pages/runs.py")
    assert at.session_state  # the page ran
    heat = moved_heatmap(at)
    assert heat["z"][0] == [0.0] and heat["z"][-1][0] > 0
    assert not [t for s in charts(at) for t in s["data"] if t.get("name") == "beta"]
    assert store.epochs(summary["run_id"])[0]["moved"]["head"] == heat["z"][-1][0]


def test_the_options_are_in_train_help_with_their_default_and_range(capsys):
    import re

    from ftlab import cli

    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert "--l2sp L2SP L2-SP: add beta/2" in text and "(default: 0.0; range 0 to 10)" in text
    assert "--l2sp-adaptive, --no-l2sp-adaptive L2-SP: move beta" in text and "tenth to ten times" in text
