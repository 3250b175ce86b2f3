"""Tests for ftlab.edits: the head builder against the head it replaces, truncation and adapters on
every backbone, the edited block table, and every problem ModelEdits reports in words."""
from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
from torch import nn

from ftlab import backbones, edits, freeze
from ftlab.backbones import BlockModel, get_spec, list_backbones
from ftlab.edits import Adapter, ModelEdits, build_blocks, edited_blocks, make_head, parse_widths

K = 3
NAMES = list_backbones()


def size(name: str) -> int:
    return get_spec(name).fixed_size or 64


def editable(name: str) -> list[str]:
    """The backbone's blocks before its pool, read from the unedited model (not from edits.py)."""
    model_blocks = get_spec(name).blocks
    with torch.device("meta"):
        try:
            names = list(model_blocks(False))
        except (NotImplementedError, RuntimeError):
            names = None
    names = names or list(model_blocks(False))
    return names[:names.index("pool")]


def middle(name: str) -> str:
    blocks = editable(name)
    return blocks[len(blocks) // 2]


def model(name: str, e: ModelEdits, weights: str = "random") -> BlockModel:
    return BlockModel(name, build_blocks(name, K, weights, e, size(name)), K)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- the head ----------------------------------------------------------------------------

@pytest.mark.parametrize("hidden", [0, 48])
def test_head_matches_the_head_it_replaces_layer_for_layer(hidden):
    old = backbones.make_head(20, K, hidden, 0.3)
    new = make_head(20, K, (hidden,) if hidden else (), "relu", 0.3)
    assert [type(m) for m in new] == [type(m) for m in old]
    assert [getattr(m, "p", None) for m in new] == [getattr(m, "p", None) for m in old]
    old_state, new_state = old.state_dict(), new.state_dict()
    assert {k: v.shape for k, v in new_state.items()} == {k: v.shape for k, v in old_state.items()}
    expected = {"1.weight", "1.bias"} | ({"4.weight", "4.bias"} if hidden else set())
    assert set(new_state) == expected
    # a checkpoint written before edits loads strictly and computes the same logits
    new.load_state_dict(old_state, strict=True)
    x = torch.randn(5, 20)
    assert torch.equal(new.eval()(x), old.eval()(x))


@pytest.mark.parametrize("activation,layer", [("relu", nn.ReLU), ("gelu", nn.GELU), ("silu", nn.SiLU),
                                              ("tanh", nn.Tanh)])
def test_head_has_its_widths_activation_and_batchnorm(activation, layer):
    head = make_head(32, K, (16, 8), activation, 0.1, batchnorm=True)
    linears = [m for m in head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 16), (16, 8), (8, K)]
    assert sum(isinstance(m, layer) for m in head) == 2
    norms = [m for m in head if isinstance(m, nn.BatchNorm1d)]
    assert [m.num_features for m in norms] == [16, 8]
    # BatchNorm sits between each hidden Linear and its activation; dropout before every Linear
    kinds = [type(m) for m in head]
    for i, m in enumerate(head):
        if isinstance(m, nn.BatchNorm1d):
            assert isinstance(head[i - 1], nn.Linear) and isinstance(head[i + 1], layer)
        if isinstance(m, nn.Linear):
            assert kinds[i - 1] is nn.Dropout and head[i - 1].p == 0.1
    assert not any(isinstance(m, nn.BatchNorm1d) for m in make_head(32, K, (16,), activation))


def test_a_batchnorm_head_trains_on_a_last_batch_of_one_image():
    head = make_head(6, K, (4,), batchnorm=True).train()
    head(torch.randn(8, 6))  # running statistics move off their start
    norm = head[2]
    before = norm.running_mean.clone()
    out = head(torch.randn(1, 6))
    assert out.shape == (1, K)
    assert torch.equal(norm.running_mean, before)  # one image: nothing to update the statistics with
    with pytest.raises(ValueError):  # what torch's own BatchNorm1d does with it
        nn.BatchNorm1d(4).train()(torch.randn(1, 4))


# --- remove blocks -----------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_truncated_model_puts_the_head_on_the_pooled_output_of_a_middle_block(name):
    torch.manual_seed(0)
    e = ModelEdits(truncate_after=middle(name))
    m = model(name, e).eval()
    kept = m.block_names
    assert kept[-2:] == ["pool", "head"] and kept[-3] == middle(name)
    x = torch.rand(2, 3, size(name), size(name))
    with torch.no_grad():
        features = m[:-1](x)
        logits = m(x)
    assert features.shape == (2, m.head[-1].in_features)
    assert logits.shape == (2, K)
    assert n_params(m.pool) == 0
    full = edited_blocks(name, K, ModelEdits(), size(name))  # the unedited model, on the meta device
    assert n_params(m) < sum(r.params for r in full)
    assert set(kept) < {r.name for r in full}


@pytest.mark.parametrize("name", NAMES)
def test_every_block_before_the_pool_can_be_truncated_after(name):
    """On the meta device: a Linear refuses features of another width, so a wrong in_features fails."""
    for block in editable(name):
        rows = edited_blocks(name, K, ModelEdits(truncate_after=block), size(name))
        assert [r.name for r in rows if r.mark != "removed"][-3:] == [block, "pool", "head"]
        assert rows[-1].output == (K,)


def test_truncation_keeps_a_pretrained_pool_out_and_reuses_a_parameter_free_one():
    # MobileNetV3's pool holds a pretrained 576 -> 1024 layer: cut after conv_head, the head sits on 576 maps
    m = model("mobilenet_v3_small", ModelEdits(truncate_after="conv_head"))
    assert m.head[-1].in_features == 576 and n_params(m.pool) == 0
    # ResNet's pool has no parameters and was built for layer4's output: kept as it is
    blocks = get_spec("resnet18").blocks(False)
    kept, width = edits.truncate(blocks, "layer4", 64)
    assert kept["pool"] is blocks["pool"] and width == 512


def test_truncated_vit_pools_the_class_token():
    pool = edits.pool_for((197, 768))
    tokens = torch.randn(2, 197, 768) * 5 + 3
    out = pool(tokens)
    assert out.shape == (2, 768) and n_params(pool) == 0
    expected = (tokens[:, 0] - tokens[:, 0].mean(-1, keepdim=True)) / tokens[:, 0].var(-1, unbiased=False,
                                                                                       keepdim=True).add(1e-5).sqrt()
    torch.testing.assert_close(out, expected)


def test_truncated_pretrained_blocks_keep_their_weights():
    e = ModelEdits(truncate_after="stage3")
    m = model("efficientnet_lite0", e, "imagenet")
    full = backbones.create_model("efficientnet_lite0", K, "imagenet")
    body = {k: v for k, v in m.state_dict().items() if not k.startswith("head.")}
    assert body and all(torch.equal(v, full.state_dict()[k]) for k, v in body.items())


# --- add blocks --------------------------------------------------------------------------

@pytest.mark.parametrize("name,after", [("small_cnn", ("stem", "stage2")),
                                        ("efficientnet_lite0", ("stage2", "stage6", "conv_head"))])
def test_zero_initialised_adapters_leave_the_logits_as_they_were(name, after):
    torch.manual_seed(0)
    base = model(name, ModelEdits())
    adapted = model(name, ModelEdits(adapter_after=after, adapter_dim=16))
    missing, unexpected = adapted.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("adapter_") for k in missing)
    assert [n for n in adapted.block_names if n.startswith("adapter_")] == [f"adapter_{b}" for b in after]
    for b in after:
        assert adapted.block_names.index(f"adapter_{b}") == adapted.block_names.index(b) + 1
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(adapted.eval()(x), base.eval()(x))
    # a random-init up layer would change them: the zeros are what keeps the model as it was
    nn.init.normal_(getattr(adapted, f"adapter_{after[0]}").up.weight)
    with torch.no_grad():
        assert not torch.allclose(adapted(x), base(x))


def test_a_frozen_models_adapter_gets_a_gradient_from_the_first_step():
    torch.manual_seed(0)
    m = model("small_cnn", ModelEdits(adapter_after=("stage1",), adapter_dim=8))
    freeze.apply_freeze(m, frozenset(n for n in m.param_blocks() if n not in ("adapter_stage1", "head")))
    m.train()  # frozen blocks stay in eval mode (the BatchNorm rule)
    loss = nn.functional.cross_entropy(m(torch.rand(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert m.adapter_stage1.up.weight.grad.abs().sum() > 0
    assert all(p.grad is None for n in ("stem", "stage1", "stage2", "stage3") for p in getattr(m, n).parameters())


def test_token_adapter_starts_as_the_identity_and_learns():
    adapter = Adapter(12, 4, tokens=True)
    x = torch.randn(2, 5, 12, requires_grad=True)
    out = adapter(x)
    assert torch.equal(out, x)
    out.square().sum().backward()
    assert adapter.up.weight.grad.abs().sum() > 0
    assert isinstance(adapter.up, nn.Linear) and isinstance(Adapter(12, 4).up, nn.Conv2d)


def test_a_cached_prefix_and_forward_from_give_the_full_models_logits_with_adapters():
    torch.manual_seed(0)
    m = model("small_cnn", ModelEdits(adapter_after=("stage1",), head=(16,))).eval()
    nn.init.normal_(m.adapter_stage1.up.weight, std=0.1)  # an adapter that has trained
    start = m.block_names.index("adapter_stage1")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(m.forward_from(m[:start](x), start), m(x))


def test_an_edited_checkpoint_rebuilt_from_its_edits_loads_strictly():
    e = ModelEdits(head=(32, 16), activation="silu", head_batchnorm=True, truncate_after="stage5",
                   adapter_after=("stage3", "stage5"), adapter_dim=8)
    torch.manual_seed(1)
    first = model("mobilenet_v3_small", e)
    nn.init.normal_(first.adapter_stage3.up.weight)
    again = model("mobilenet_v3_small", ModelEdits.from_dict(json.loads(json.dumps(e.to_dict()))))
    again.load_state_dict(first.state_dict(), strict=True)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), first.eval()(x))


# --- the block table ---------------------------------------------------------------------

def test_edited_block_table_marks_added_new_and_removed_blocks_with_their_counts():
    e = ModelEdits(head=(64,), truncate_after="stage2", adapter_after=("stage1", "stage2"), adapter_dim=8)
    rows = edited_blocks("small_cnn", K, e, 64)
    marks = {r.name: r.mark for r in rows}
    assert [r.name for r in rows] == ["stem", "stage1", "adapter_stage1", "stage2", "adapter_stage2", "stage3",
                                      "pool", "head"]
    assert marks == {"stem": "", "stage1": "", "adapter_stage1": "added", "stage2": "", "adapter_stage2": "added",
                     "stage3": "removed", "pool": "new", "head": "new"}
    counts = {r.name: r.params for r in rows}
    real = model("small_cnn", e).block_params()
    assert {n: c for n, c in counts.items() if n != "stage3"} == real
    assert counts["stage3"] == backbones.create_model("small_cnn", K, "random").block_params()["stage3"]
    # by hand: 1x1 convs 64 -> 8 -> 64 with biases; a 128 -> 64 -> 3 head
    assert counts["adapter_stage1"] == 64 * 8 + 8 + 8 * 64 + 64
    assert counts["head"] == 128 * 64 + 64 + 64 * K + K
    assert dict((r.name, r.output) for r in rows)["stage2"] == (128, 16, 16)


def test_an_unedited_block_table_is_the_backbone_as_it_is():
    rows = edited_blocks("mobilenet_v3_small", K, ModelEdits())
    full = backbones.create_model("mobilenet_v3_small", K, "random").block_params()
    assert [(r.name, r.params) for r in rows] == list(full.items())
    assert [r.mark for r in rows] == [""] * (len(rows) - 1) + ["new"]


def test_a_removed_pool_with_pretrained_layers_is_listed():
    rows = edited_blocks("mobilenet_v3_small", K, ModelEdits(truncate_after="conv_head"))
    removed = [(r.name, r.params) for r in rows if r.mark == "removed"]
    assert removed == [("pool", 576 * 1024 + 1024)]


# --- what an edit is, and its problems ---------------------------------------------------

def test_edits_round_trip_through_json_and_read_the_old_hidden_option():
    e = ModelEdits(head=(512, 128), activation="gelu", dropout=0.2, head_batchnorm=True, truncate_after="stage4",
                   adapter_after=("stage2", "stage3"), adapter_dim=32)
    assert ModelEdits.from_dict(json.loads(json.dumps(e.to_dict()))) == e
    assert ModelEdits.from_dict({"hidden": 256, "dropout": 0.1}) == ModelEdits(head=(256,), dropout=0.1)
    assert ModelEdits.from_dict({"hidden": 0}) == ModelEdits()
    for bad in ({"head": "512"}, {"head": [512.0]}, {"adapter_dim": True}, {"head_batchnorm": 1},
                {"adapter_after": "stage2"}, {"hidden": "64"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ModelEdits.from_dict(bad)


def test_parse_widths():
    assert parse_widths("512,128") == (512, 128)
    assert parse_widths(" 64 ") == (64,)
    assert parse_widths("") == ()
    for bad in ("512,,128", "a,b", "-5", "1.5", "512,", "٣"):
        with pytest.raises(ValueError, match="whole numbers separated by commas"):
            parse_widths(bad)


def test_describe():
    assert ModelEdits().describe() == "" and not ModelEdits().edited
    assert ModelEdits(dropout=0.3).describe() == ""
    assert ModelEdits(head=(512, 128), activation="gelu").describe() == "head 512,128 gelu"
    assert ModelEdits(truncate_after="stage4").describe() == "truncated after stage4"
    assert (ModelEdits(adapter_after=("stage5", "stage6")).describe()
            == "adapters after stage5,stage6 (64)")


RESNET = ["stem", "layer1", "layer2", "layer3", "layer4", "pool", "head"]


@pytest.mark.parametrize("e,words", [
    (ModelEdits(truncate_after="layer9"), ["no block named 'layer9'", "stem, layer1, layer2, layer3, layer4"]),
    (ModelEdits(truncate_after="pool"), ["truncate_after", "cannot sit on pool"]),
    (ModelEdits(truncate_after="head"), ["truncate_after", "cannot sit on head"]),
    (ModelEdits(truncate_after="layer2", adapter_after=("layer3",)), ["layer3 comes after layer2", "removed"]),
    (ModelEdits(adapter_after=("head",)), ["cannot follow head"]),
    (ModelEdits(adapter_after=("pool",)), ["cannot follow pool"]),
    (ModelEdits(adapter_after=("lauer1",)), ["no block named 'lauer1'", "choose one of stem"]),
    (ModelEdits(adapter_after=("layer1", "layer1")), ["layer1 more than once"]),
    (ModelEdits(head=(0,)), ["from 1 to 8,192", "got 0"]),
    (ModelEdits(head=(512, 9000)), ["from 1 to 8,192", "got 9000"]),
    (ModelEdits(head=(8,) * 9), ["at most 8 hidden layers"]),
    (ModelEdits(activation="swish"), ["activation must be one of relu, gelu, silu, tanh", "'swish'"]),
    (ModelEdits(dropout=1.0), ["dropout must be between 0 and 0.9"]),
    (ModelEdits(dropout=float("nan")), ["dropout must be between 0 and 0.9"]),
    (ModelEdits(adapter_dim=0), ["adapter_dim must be from 1 to 8,192"]),
])
def test_problems_say_what_is_wrong(e, words):
    problems = e.problems(RESNET)
    assert len(problems) == 1, problems
    for w in words:
        assert w in problems[0]


def test_good_edits_have_no_problems_and_bad_ones_are_all_reported():
    good = ModelEdits(head=(512, 128), activation="tanh", head_batchnorm=True, truncate_after="layer3",
                      adapter_after=("layer1", "layer3"))
    assert good.problems(RESNET) == []
    assert ModelEdits().problems(RESNET) == []
    bad = ModelEdits(head=(0,), activation="x", truncate_after="pool", adapter_after=("nope",))
    assert len(bad.problems(RESNET)) == 4
    for name in NAMES:
        assert ModelEdits(truncate_after=middle(name), adapter_after=(editable(name)[0],)).problems(
            edits.block_names(name)) == []


def test_building_refuses_bad_edits_and_missing_weights():
    with pytest.raises(ValueError, match="no block named 'stage9'"):
        build_blocks("small_cnn", K, "random", ModelEdits(truncate_after="stage9"))
    with pytest.raises(backbones.WeightsUnavailable, match="no ImageNet weights"):
        build_blocks("small_cnn", K, "imagenet", ModelEdits())


def test_an_unedited_build_is_create_models_model():
    torch.manual_seed(0)
    old = backbones.create_model("small_cnn", K, "random", hidden=32, dropout=0.1)
    new = BlockModel("small_cnn", build_blocks("small_cnn", K, "random", ModelEdits(head=(32,), dropout=0.1)), K)
    assert new.block_names == old.block_names
    new.load_state_dict(old.state_dict(), strict=True)
    assert repr(new) == repr(old)


def test_edit_functions_do_not_change_the_blocks_they_are_given():
    blocks = get_spec("small_cnn").blocks(False)
    names = list(blocks)
    edits.truncate(blocks, "stage1", 64)
    edits.insert_adapters(blocks, ("stage1",), 8, 64)
    assert list(blocks) == names
    assert isinstance(edits.insert_adapters(blocks, (), 8, 64), OrderedDict)


def test_shapes_fall_back_to_one_real_image_where_the_meta_device_fails(monkeypatch):
    def no_meta(block, x):
        raise NotImplementedError("no meta kernel")

    monkeypatch.setattr(edits, "_meta_call", no_meta)
    blocks = get_spec("small_cnn").blocks(False)
    blocks["stage1"].train()
    blocks["stem"].eval()
    assert edits.block_shapes(blocks, 32)["stage2"] == (128, 8, 8)
    assert blocks["stage1"].training and not blocks["stem"].training  # each mode as it was
    with torch.device("meta"):
        meta_blocks = get_spec("small_cnn").blocks(False)
    with pytest.raises(ValueError, match="cannot find the block shapes at 32 px"):
        edits.block_shapes(meta_blocks, 32)
