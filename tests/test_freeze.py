"""Tests for ftlab.freeze: presets over every backbone, the BatchNorm rule, gradual plans, and
param groups built up front that survive unfreezing with every optimiser and schedule."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ftlab import engine
from ftlab.backbones import create_model, get_spec, list_backbones
from ftlab.config import OPTIMIZERS, SCHEDULES, TrainConfig
from ftlab.freeze import (
    Strategy,
    apply_freeze,
    count_params,
    make_plan,
    param_groups,
)

K = 3
NAMES = list_backbones()
PRESETS = ("linear-probe", "top-1", "top-2", "full", "gradual")
SMALL_CNN_BLOCKS = ["stem", "stage1", "stage2", "stage3", "head"]


@pytest.fixture(scope="module")
def built() -> dict[str, nn.Module]:
    """Each backbone built once (random weights) and shared by the tests of this module."""
    return {}


@pytest.fixture
def models(built):
    """The shared models, handed back after each test as they were built: every block trainable,
    no gradients, in train mode, whether the test passed or failed half-way."""
    def get(name: str) -> nn.Module:
        if name not in built:
            torch.manual_seed(0)
            built[name] = create_model(name, K, "random")
        return built[name]
    yield get
    for model in built.values():
        apply_freeze(model, frozen=set())
        model.zero_grad(set_to_none=True)
        model.train()


def trainable_by_hand(blocks: list[str], preset: str) -> set[str]:
    """What each preset means, written out: the head, plus the top N blocks below it."""
    below_head = len(blocks) - 1
    n = {"linear-probe": 0, "gradual": 0, "full": below_head, "top-1": 1, "top-2": 2}[preset]
    return {blocks[i] for i in range(below_head - n, below_head)} | {"head"}


def batch_for(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    size = get_spec(name).fixed_size or 64
    n = 1 if get_spec(name).fixed_size else 2  # ViT has no BatchNorm: one 224 px image will do
    torch.manual_seed(1)
    return torch.randn(n, 3, size, size), torch.arange(n) % K


def batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def bn_state(module: nn.Module) -> list[torch.Tensor]:
    return [t.clone() for bn in batchnorms(module) for t in (bn.running_mean, bn.running_var)]


def test_presets_by_hand_on_small_cnn(models):
    blocks = models("small_cnn").param_blocks()
    assert blocks == SMALL_CNN_BLOCKS
    frozen = {p: make_plan(blocks, p).frozen_at(0) for p in PRESETS}
    assert frozen["linear-probe"] == {"stem", "stage1", "stage2", "stage3"}
    assert frozen["top-1"] == {"stem", "stage1", "stage2"}
    assert frozen["top-2"] == {"stem", "stage1"}
    assert frozen["full"] == set()
    assert frozen["gradual"] == {"stem", "stage1", "stage2", "stage3"}
    assert make_plan(blocks, "top-4").frozen_at(0) == set()
    for preset in PRESETS:
        assert trainable_by_hand(blocks, preset) == set(blocks) - frozen[preset]


@pytest.mark.parametrize("name", NAMES)
def test_presets_freeze_exactly_the_intended_blocks(name, models):
    model = models(name)
    blocks = model.param_blocks()
    x, y = batch_for(name)
    for preset in PRESETS:
        plan = make_plan(blocks, preset)
        frozen = plan.frozen_at(0)
        trainable = trainable_by_hand(blocks, preset)
        assert set(blocks) - frozen == trainable, preset
        apply_freeze(model, frozen)

        for block in blocks:
            assert all(p.requires_grad == (block in trainable) for p in getattr(model, block).parameters())
        total = sum(p.numel() for p in model.parameters())
        assert count_params(model) == (sum(p.numel() for b in trainable for p in getattr(model, b).parameters()),
                                       total), preset
        if preset == "full":
            assert count_params(model) == (total, total)

        # BatchNorm rule (bn_frozen by default): frozen blocks run in eval mode, the rest trains
        model.train()
        for block in blocks:
            assert all(m.training == (block in trainable) for m in getattr(model, block).modules()), (preset, block)
        before = {b: bn_state(getattr(model, b)) for b in blocks}

        model.zero_grad(set_to_none=True)
        logits = model(x)
        assert logits.shape == (len(x), K)
        F.cross_entropy(logits, y).backward()
        for block in blocks:
            for pname, p in getattr(model, block).named_parameters():
                if block in trainable:
                    assert p.grad is not None and torch.isfinite(p.grad).all(), (preset, block, pname)
                else:
                    assert p.grad is None, (preset, block, pname)
            after = bn_state(getattr(model, block))
            if block in trainable:  # a training forward pass moves the running statistics
                assert all(not torch.equal(a, b) for a, b in zip(before[block], after)), (preset, block)
            else:
                assert all(torch.equal(a, b) for a, b in zip(before[block], after)), (preset, block)
        assert model.head[-1].weight.grad.abs().sum() > 0


def test_frozen_blocks_compute_what_they_compute_at_evaluation(models):
    model = models("resnet18")
    plan = make_plan(model.param_blocks(), "top-1")
    apply_freeze(model, plan.frozen_at(0))
    prefix = model[:plan.first_trainable(0)]  # stem, layer1..layer3
    assert [n for n, _ in prefix.named_children()] == ["stem", "layer1", "layer2", "layer3"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model.eval()
        expected = prefix(x)
        model.train()
        assert model.training and model.layer4.training and not model.layer3.training
        assert torch.equal(prefix(x), expected)


def test_bn_frozen_false_lets_frozen_blocks_update_their_statistics():
    torch.manual_seed(0)
    model = create_model("small_cnn", K, "random")
    plan = make_plan(model.param_blocks(), "linear-probe")
    apply_freeze(model, plan.frozen_at(0), bn_frozen=False)
    model.train()
    assert all(m.training for m in model.modules())
    before = bn_state(model.stem) + bn_state(model.stage3)
    weights = {n: p.clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(param_groups(model, 0.1), momentum=0.9)
    F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1])).backward()
    optimizer.step()
    after = bn_state(model.stem) + bn_state(model.stage3)
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
    # the statistics move, the frozen weights still do not
    for n, p in model.named_parameters():
        assert torch.equal(p, weights[n]) != n.startswith("head."), n


def test_gradual_plan_on_efficientnet_lite0(models):
    blocks = models("efficientnet_lite0").param_blocks()
    stages = [f"stage{i}" for i in range(1, 8)]
    assert blocks == ["stem", *stages, "conv_head", "head"]
    plan = make_plan(blocks, "gradual", gradual_every=2)
    everything_below_head = {"stem", *stages, "conv_head"}
    expected = {0: everything_below_head, 1: everything_below_head,
                2: everything_below_head - {"conv_head"}, 3: everything_below_head - {"conv_head"},
                4: everything_below_head - {"conv_head", "stage7"}, 5: everything_below_head - {"conv_head", "stage7"}}
    for epoch, frozen in expected.items():
        assert plan.frozen_at(epoch) == frozen, epoch
    # the first block that trains: head (9) at epochs 0-1, conv_head (8) at 2-3, stage7 (7) at 4-5
    assert [plan.first_trainable(e) for e in range(6)] == [9, 9, 8, 8, 7, 7]
    assert plan.frozen_at(16) == {"stem"} and plan.first_trainable(16) == 1
    assert plan.frozen_at(18) == set() and plan.first_trainable(18) == 0
    assert plan.frozen_at(1000) == set()
    assert all("head" not in plan.frozen_at(e) for e in range(40))
    # the other presets do not change over the epochs
    top2 = make_plan(blocks, "top-2", gradual_every=2)
    assert all(top2.frozen_at(e) == everything_below_head - {"conv_head", "stage7"} for e in range(10))


# --- the key property: groups built up front survive unfreezing ------------------------------

def lr_by_hand(schedule: str, lr: float, step: int, steps: int, epochs: int) -> float:
    """The rate during optimiser step ``step`` (0-based, over the whole run), from the formulas."""
    total = steps * epochs
    if schedule == "none":
        return lr
    if schedule == "step":  # step_size=1, gamma=0.5, stepped once an epoch
        return lr * 0.5 ** (step // steps)
    if schedule == "cosine":
        return lr * (1 + math.cos(math.pi * step / total)) / 2
    # one-cycle: cosine warm-up from lr/25 over the first 30% of the steps, then down to lr/25/1e4
    peak = 0.3 * total - 1
    if step <= peak:
        start, end, pct = lr / 25, lr, step / peak
    else:
        start, end, pct = lr, lr / 25 / 1e4, (step - peak) / (total - 1 - peak)
    return end + (start - end) * (1 + math.cos(math.pi * pct)) / 2


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("optimizer_name", OPTIMIZERS)
def test_gradual_unfreezing_keeps_groups_and_schedule(optimizer_name, schedule):
    torch.manual_seed(0)
    model = create_model("small_cnn", K, "random")
    blocks = model.param_blocks()
    assert blocks == SMALL_CNN_BLOCKS
    plan = make_plan(blocks, "gradual", gradual_every=1)
    epochs, steps, lr = len(blocks), 2, 0.05  # the last epoch trains every block
    config = TrainConfig(backbone="small_cnn", weights="random", strategy="gradual", gradual_every=1,
                         optimizer=optimizer_name, schedule=schedule, epochs=epochs, lr=lr, weight_decay=0.01,
                         lr_decay=0.5, step_size=1, gamma=0.5)
    apply_freeze(model, plan.frozen_at(0))
    optimizer = engine.make_optimizer(config, param_groups(model, lr, config.weight_decay, config.lr_decay))
    scheduler, per_step = engine.make_scheduler(config, optimizer, steps)
    assert (scheduler is None) == (schedule == "none")
    assert per_step == (schedule in ("cosine", "onecycle"))
    n_groups = len(optimizer.param_groups)
    assert list(dict.fromkeys(g["name"] for g in optimizer.param_groups)) == blocks

    start = {b: [p.detach().clone() for p in getattr(model, b).parameters()] for b in blocks}
    start_bn = {b: bn_state(getattr(model, b)) for b in blocks}
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    trained: set[str] = set()
    step = 0
    for epoch in range(epochs):
        frozen = plan.frozen_at(epoch)
        apply_freeze(model, frozen)
        model.train()
        trainable = set(blocks) - frozen
        new = trainable - trained
        assert len(new) == 1 and trained < trainable, epoch  # one more block each epoch, from the top
        (new_block,) = new
        assert new_block == blocks[len(blocks) - 1 - epoch]
        before = [p.detach().clone() for p in getattr(model, new_block).parameters()]
        for i in range(steps):
            rates = [g["lr"] for g in optimizer.param_groups]
            assert rates[-1] == pytest.approx(lr_by_hand(schedule, lr, step, steps, epochs), rel=1e-6), step
            # the discriminative ratio between the groups survives every schedule
            depth = {b: len(blocks) - 1 - j for j, b in enumerate(blocks)}
            assert rates == pytest.approx([rates[-1] * 0.5 ** depth[g["name"]] for g in optimizer.param_groups])
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            if per_step:
                scheduler.step()
            step += 1
            if i == 0:  # the newly unfrozen block moves at its first step
                now = list(getattr(model, new_block).parameters())
                assert all(not torch.equal(a, b) for a, b in zip(before, now)), (epoch, new_block)
            for block in frozen:  # frozen blocks never move, not even by weight decay or momentum
                assert all(torch.equal(a, b) for a, b in zip(start[block], getattr(model, block).parameters()))
                assert all(torch.equal(a, b) for a, b in zip(start_bn[block], bn_state(getattr(model, block))))
                assert all(p not in optimizer.state or not optimizer.state[p] for p in getattr(model, block).parameters())
            assert len(optimizer.param_groups) == n_groups
        if scheduler is not None and not per_step:
            scheduler.step()
        trained = trainable
    assert trained == set(blocks)
    assert all(not torch.equal(a, b) for a, b in zip(start["stem"], model.stem.parameters()))


# --- param groups -----------------------------------------------------------------------------

def test_discriminative_rates_by_hand(models):
    model = models("small_cnn")
    groups = param_groups(model, 0.1, weight_decay=0.01, lr_decay=0.5)
    assert list(dict.fromkeys(g["name"] for g in groups)) == SMALL_CNN_BLOCKS
    rates = dict(zip(SMALL_CNN_BLOCKS, [0.00625, 0.0125, 0.025, 0.05, 0.1]))
    assert [g["lr"] for g in groups] == pytest.approx([rates[g["name"]] for g in groups])
    # weight decay on weight matrices and kernels only; biases and norm scales are not decayed
    assert all(g["weight_decay"] == (0.01 if all(p.ndim > 1 for p in g["params"]) else 0.0) for g in groups)
    assert all(len({p.ndim > 1 for p in g["params"]}) == 1 for g in groups)
    # every parameter in exactly one group, the group of its own block
    for name in SMALL_CNN_BLOCKS:
        mine = [id(p) for g in groups if g["name"] == name for p in g["params"]]
        assert sorted(mine) == sorted(id(p) for p in getattr(model, name).parameters())
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert [g["lr"] for g in param_groups(model, 0.1)] == [0.1] * 5


def test_a_pool_with_parameters_gets_its_own_rate(models):
    # MobileNetV3 keeps its pretrained hidden layer after the pooling: a block like any other
    model = models("mobilenet_v3_small")
    groups = param_groups(model, 1.0, lr_decay=0.5)
    assert [g["name"] for g in groups][-3:] == ["conv_head", "pool", "head"]
    assert [g["lr"] for g in groups][-3:] == [0.25, 0.5, 1.0]
    assert groups[0]["name"] == "stem" and groups[0]["lr"] == pytest.approx(0.5 ** (len(groups) - 1))


def test_param_groups_change_nothing(models):
    model = models("small_cnn")
    apply_freeze(model, make_plan(model.param_blocks(), "top-1").frozen_at(0))
    model.train()
    grads = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    frozen, counts = model.frozen_blocks, count_params(model)
    param_groups(model, 0.1, 0.01, 0.5)
    assert [p.requires_grad for p in model.parameters()] == grads
    assert [m.training for m in model.modules()] == modes
    assert model.frozen_blocks == frozen and count_params(model) == counts
    assert grads.count(False) > 0 and grads.count(True) > 0


# --- custom plans and errors --------------------------------------------------------------------

def test_custom_frozen_blocks(models):
    model = models("small_cnn")
    plan = make_plan(model.param_blocks(), "custom", frozen_blocks=("stem", "stage2"))
    assert plan.frozen_at(0) == plan.frozen_at(7) == {"stem", "stage2"}
    assert plan.first_trainable(0) == 1  # stage1 trains, so nothing before it is a frozen prefix but stem
    apply_freeze(model, plan.frozen_at(0))
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert not any(p.requires_grad for p in model.stage2.parameters())
    assert all(p.requires_grad for b in ("stage1", "stage3", "head") for p in getattr(model, b).parameters())
    apply_freeze(model, frozen=set())
    # explicit blocks override any preset, gradual included: nothing else freezes, ever
    for strategy in ("gradual", "linear-probe", "top-2"):
        plan = make_plan(SMALL_CNN_BLOCKS, strategy, gradual_every=1, frozen_blocks=("stem",))
        assert all(plan.frozen_at(e) == {"stem"} for e in range(6)), strategy

    with pytest.raises(ValueError) as info:
        make_plan(SMALL_CNN_BLOCKS, "custom", frozen_blocks=("stem", "layer9"))
    message = str(info.value)
    assert "layer9" in message and all(b in message for b in SMALL_CNN_BLOCKS)


def test_top_n_beyond_the_blocks_raises():
    make_plan(SMALL_CNN_BLOCKS, "top-4")  # every block below the head: allowed
    with pytest.raises(ValueError, match="top-5"):
        make_plan(SMALL_CNN_BLOCKS, "top-5")


def test_parse_strategy():
    def parse_strategy(text: str) -> tuple[str, int]:
        s = Strategy.parse(text)
        return s.kind, s.n

    assert parse_strategy("top-3") == ("top-N", 3)
    assert parse_strategy("top-12") == ("top-N", 12)
    assert parse_strategy("linear-probe") == ("linear-probe", 0)
    assert parse_strategy("gradual") == ("gradual", 0)
    for bad in ("bogus", "top-", "top-x", "top3", "", "Full"):
        with pytest.raises(ValueError) as info:
            parse_strategy(bad)
        message = str(info.value)
        assert all(s in message for s in ("linear-probe", "top-N", "full", "gradual")), bad
    with pytest.raises(ValueError):
        make_plan(SMALL_CNN_BLOCKS, "bogus")
