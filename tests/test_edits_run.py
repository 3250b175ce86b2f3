"""Model edits end to end: the options and their flags, a run with each edit, its record, Runs table
and checkpoint, prediction from that checkpoint, freeze plans with adapters, the feature cache with
edits, and checkpoints written before edits existed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ftlab import backbones, checkpoints, cli, data, explore, freeze
from ftlab.checkpoints import CheckpointError
from ftlab.config import TrainConfig, validate
from ftlab.edits import ModelEdits, edited_blocks
from ftlab.engine import run
from ftlab.predict import Predictor
from ftlab.runs import RunStore
from ftlab.transforms import Preprocessing

SMALL_CNN = ["stem", "stage1", "stage2", "stage3"]  # small_cnn's blocks before its pool


def tiny(**options) -> TrainConfig:
    """A run of seconds: 24 generated images of 3 shapes, small_cnn from random weights at 32 px."""
    base = dict(dataset="shapes", shapes_classes=3, shapes_per_class=8, backbone="small_cnn", weights="random",
                image_size=32, epochs=1, batch_size=8, seed=3)
    return TrainConfig(**{**base, **options})


def train(config: TrainConfig, store: RunStore) -> dict:
    summary = run(config, store=store)
    assert summary["stopped_reason"] == "completed", store.get(summary["run_id"]).message
    return summary


def parsed(*argv: str) -> TrainConfig:
    args = cli._parser().parse_args(["train", *argv])
    return TrainConfig(**{name: getattr(args, name) for name in TrainConfig.__dataclass_fields__})


# --- options and flags -------------------------------------------------------------------

def test_edit_flags_parse_into_the_config_and_its_edits():
    config = parsed("--head", "512, 128", "--activation", "gelu", "--head-batchnorm", "--dropout", "0.2",
                    "--truncate-after", "stage6", "--adapter-after", "stage3,stage5", "--adapter-dim", "16")
    assert config.head == (512, 128) and config.adapter_after == ("stage3", "stage5")
    assert config.edits() == ModelEdits(head=(512, 128), activation="gelu", dropout=0.2, head_batchnorm=True,
                                        truncate_after="stage6", adapter_after=("stage3", "stage5"), adapter_dim=16)
    assert validate(config) == []
    assert parsed().edits() == ModelEdits() and not parsed().edits().edited


def test_hidden_is_a_one_layer_head_and_disagreeing_with_head_is_a_problem():
    assert TrainConfig(hidden=64).edits().head == (64,)
    assert validate(TrainConfig(hidden=64, head=(64,))) == []
    problems = validate(TrainConfig(hidden=64, head=(32,)))
    assert len(problems) == 1 and "give only head" in problems[0]


def test_the_config_round_trips_through_json_with_its_edits():
    config = TrainConfig(head=(256, 32), activation="silu", head_batchnorm=True, truncate_after="stage4",
                         adapter_after=("stage2", "stage3"), adapter_dim=8, frozen_blocks=("stem",))
    d = json.loads(json.dumps(config.to_dict()))
    assert d["head"] == [256, 32] and d["adapter_after"] == ["stage2", "stage3"]
    assert TrainConfig.from_dict(d) == config


@pytest.mark.parametrize("argv, words", [
    (["--head", "512;128"], "head widths are whole numbers separated by commas"),
    (["--head", "12.5"], "head widths are whole numbers"),
    (["--activation", "swish"], "invalid choice: 'swish'"),
    (["--adapter-dim", "lots"], "invalid int value: 'lots'"),
    (["--head-batchnorm", "--no-head-batchnorm"], "are both given"),
])
def test_bad_edit_flags_are_usage_errors_that_say_what_to_give(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and words in err and "Traceback" not in err


@pytest.mark.parametrize("argv, words", [
    (["--truncate-after", "layer3"], "truncate_after: no block named 'layer3'; choose one of stem, stage1"),
    (["--truncate-after", "pool"], "the head cannot sit on pool"),
    (["--adapter-after", "stage2,stage9"], "adapter_after: no block named 'stage9'"),
    (["--adapter-after", "stage6", "--truncate-after", "stage4"], "stage6 comes after stage4"),
    (["--adapter-after", "stage2,stage2"], "names stage2 more than once"),
    (["--head", "64,0"], "each hidden width must be from 1 to 8,192 (got 0)"),
    (["--head", "1,2,3,4,5,6,7,8,9"], "at most 8 hidden layers"),
    (["--adapter-dim", "0"], "adapter_dim must be between 1 and 8,192 (got 0)"),
    (["--hidden", "32", "--head", "64"], "give only head"),
    (["--adapter-after", "stage6", "--frozen-blocks", "stem,adapter_stage6"], "an adapter is a new block"),
])
def test_edits_that_do_not_fit_the_backbone_stop_the_run_before_any_work(argv, words, capsys):
    assert cli.main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert "the run cannot start" in err and words in err and "Traceback" not in err
    assert RunStore().list() == []


# --- freeze plans with adapters ----------------------------------------------------------

BLOCKS = ("stem", "stage1", "adapter_stage1", "stage2", "stage3", "adapter_stage3", "head")


def test_adapters_train_under_every_plan_and_presets_count_only_backbone_blocks():
    assert freeze.make_plan(BLOCKS, "linear-probe").frozen_at(0) == {"stem", "stage1", "stage2", "stage3"}
    assert freeze.make_plan(BLOCKS, "top-1").frozen_at(0) == {"stem", "stage1", "stage2"}
    assert freeze.make_plan(BLOCKS, "top-4").frozen_at(0) == set()  # four backbone blocks, not six
    with pytest.raises(ValueError, match="top-5 asks for more blocks than the 4 below the head"):
        freeze.make_plan(BLOCKS, "top-5")
    gradual = freeze.make_plan(BLOCKS, "gradual", gradual_every=1)
    assert [gradual.frozen_at(e) for e in range(5)] == [{"stem", "stage1", "stage2", "stage3"},
                                                         {"stem", "stage1", "stage2"}, {"stem", "stage1"},
                                                         {"stem"}, set()]
    custom = freeze.make_plan(BLOCKS, "linear-probe", frozen_blocks=("stem", "stage1", "adapter_stage1", "stage3"))
    assert custom.frozen_at(0) == {"stem", "stage1", "stage3"}
    # the feature cache ends at the first block that trains: at or before the first adapter
    assert [BLOCKS[freeze.make_plan(BLOCKS, s).first_trainable(0)] for s in ("linear-probe", "top-1", "full")] == \
        ["adapter_stage1", "adapter_stage1", "stem"]
    assert BLOCKS[custom.first_trainable(0)] == "adapter_stage1"  # stage1 frozen, its adapter not


def test_edited_models_have_the_edited_freezable_blocks():
    e = ModelEdits(truncate_after="stage2", adapter_after=("stage1",), adapter_dim=4)
    assert backbones.freezable_blocks("small_cnn", e, 32) == ("stem", "stage1", "adapter_stage1", "stage2", "head")
    model = backbones.create_model("small_cnn", 3, "random", edits=e, image_size=32)
    assert tuple(model.param_blocks()) == backbones.freezable_blocks("small_cnn", e, 32)
    assert backbones.freezable_blocks("small_cnn") == ("stem", *SMALL_CNN[1:], "head")


# --- runs with each edit -----------------------------------------------------------------

EDITS = {
    "head": dict(head=(16, 8), activation="gelu", head_batchnorm=True, dropout=0.1),
    "truncate": dict(truncate_after="stage2"),
    "adapters": dict(adapter_after=("stage1", "stage3"), adapter_dim=8),
    "all": dict(head=(12,), activation="tanh", truncate_after="stage2", adapter_after=("stage2",), adapter_dim=4),
}


def val_images(config: TrainConfig) -> data.Prepared:
    pre = Preprocessing.for_backbone(config.backbone, config.image_size)
    return data.prepare(config, pre.size, pre.resize)


@pytest.mark.parametrize("name", list(EDITS))
def test_a_run_with_each_edit_records_it_and_its_checkpoint_predicts_as_the_run_evaluated(name):
    store = RunStore()
    # fp32 and the eager prefix: the run's cached features are then the checkpoint's own arithmetic, to
    # 1e-5 below; the folded graph's rounding (1e-4 of the scale) is tested in tests/test_fastpath.py
    config = tiny(strategy="top-1", precision="fp32", fast_prefix=False, **EDITS[name])
    summary = train(config, store)
    record = store.get(summary["run_id"])
    assert TrainConfig.from_dict(record.config) == config
    (row,) = explore.runs_table([record])
    assert row["edits"] == config.edits().describe() != ""
    assert config.edits().describe() in explore.record_label(record)

    checkpoint = store.load_checkpoint(record.id)
    assert ModelEdits.from_dict(checkpoint["edits"]) == config.edits()
    predictor = Predictor.for_run(record.id, store)
    rows = {r.name for r in edited_blocks("small_cnn", 3, config.edits(), 32) if r.mark != "removed"}
    assert set(predictor.model.block_names) == rows
    # the kept model's probabilities are the ones the run's final evaluation saw: its per-image losses
    val = val_images(config).val
    probs = predictor.probabilities(val.images)
    losses = F.nll_loss(probs.log(), val.labels, reduction="none")
    assert np.allclose(losses.numpy(), record.final["val"]["losses"], atol=1e-5)
    assert probs.argmax(1).tolist() == record.final["val"]["predictions"]


def test_a_truncated_model_is_smaller_than_the_whole_one():
    store = RunStore()
    whole, cut = train(tiny(), store), train(tiny(truncate_after="stage1"), store)
    assert cut["total_params"] < whole["total_params"] and cut["trainable_params"] < whole["trainable_params"]


def test_adapters_train_while_the_frozen_blocks_around_them_do_not_change(tmp_path):
    """From a weights file without adapter tensors (a plain small_cnn): the adapters start new."""
    torch.manual_seed(0)
    start = backbones.create_model("small_cnn", 3, "random")
    file = tmp_path / "start.pt"
    torch.save(start.state_dict(), file)
    store = RunStore()
    config = tiny(weights=str(file), adapter_after=("stage1", "stage2"), adapter_dim=8, epochs=2,
                  frozen_blocks=("stem", "stage1", "stage2", "stage3"), lr=0.01)
    summary = train(config, store)
    assert summary["trainable_params"] == sum(
        p.numel() for name in ("adapter_stage1", "adapter_stage2", "head")
        for p in getattr(Predictor.for_run(summary["run_id"], store).model, name).parameters())
    trained = store.load_checkpoint(summary["run_id"])["model"]
    for key, value in start.state_dict().items():
        if not key.startswith("head."):  # every backbone tensor, BatchNorm statistics too
            assert torch.equal(trained[key], value), key
    for adapter in ("adapter_stage1", "adapter_stage2"):
        assert trained[f"{adapter}.up.weight"].abs().sum() > 0  # started at zero


# --- the feature cache with edits --------------------------------------------------------

def test_a_linear_probe_with_a_late_adapter_trains_it_on_cached_features_as_without_the_cache():
    store = RunStore()
    config = tiny(adapter_after=("stage2",), adapter_dim=8, epochs=2)
    cached = train(config, store)
    assert cached["feature_cache"] == ("training blocks adapter_stage2, stage3, pool, head on cached features of "
                                       "the frozen blocks (stem, stage1, stage2)")
    plain = train(tiny(adapter_after=("stage2",), adapter_dim=8, epochs=2, feature_cache=False), store)
    assert "feature cache is off" in plain["feature_cache"]
    first, second = (store.get(s["run_id"]).final["val"] for s in (cached, plain))
    assert first["predictions"] == second["predictions"]
    assert np.allclose(first["losses"], second["losses"], atol=1e-4)


def test_the_cache_key_tells_a_truncated_prefix_from_the_whole_one():
    """A linear probe caches everything before the head whether or not the model is truncated:
    the truncated run must compute its own features, while a repeat of a run reuses them."""
    store = RunStore()
    train(tiny(), store)
    again = train(tiny(), store)
    assert "cached by an earlier run" in again["feature_cache"]
    cut = train(tiny(truncate_after="stage2"), store)
    assert "cached by an earlier run" not in cut["feature_cache"]
    assert cut["feature_cache"].endswith("(stem, stage1, stage2, pool)")
    with_adapter = train(tiny(adapter_after=("stage1",), adapter_dim=4), store)  # caches only stem, stage1
    assert with_adapter["feature_cache"].endswith("(stem, stage1)")


# --- checkpoints -------------------------------------------------------------------------

def _checkpoint(config: TrainConfig, num_classes: int = 3) -> tuple[dict, backbones.BlockModel]:
    torch.manual_seed(0)
    model = backbones.create_model("small_cnn", num_classes, "random", edits=config.edits(), image_size=32)
    torch.nn.init.normal_(model.head[-1].weight)
    pre = Preprocessing.for_backbone("small_cnn", 32)
    return checkpoints.build(model, config, tuple("abc"[:num_classes]), pre, 1, 0.5), model.eval()


def test_an_old_checkpoint_without_edits_loads_as_before():
    config = tiny(hidden=16)
    checkpoint, model = _checkpoint(config)
    del checkpoint["edits"]  # as written before edits existed: only hidden and dropout
    for key in ("head", "activation", "head_batchnorm", "truncate_after", "adapter_after", "adapter_dim"):
        del checkpoint["config"][key]
    assert checkpoints.problems(checkpoint) == []
    loaded = checkpoints.load_model(checkpoint)
    assert [type(m) for m in loaded.head] == [type(m) for m in backbones.make_head(256, 3, 16)]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("edits, words", [
    ([1, 2], "edits must be a mapping"),
    ({"head": "big"}, "head must be a list of whole numbers"),
    ({"head": [10**9]}, "each hidden width must be from 1 to 8,192"),
    ({"truncate_after": "layer9"}, "no block named 'layer9'"),
    ({"adapter_after": ["stage1"], "adapter_dim": True}, "adapter_dim must be a whole number"),
    ({"activation": "swish"}, "activation must be one of"),
])
def test_crafted_edits_in_a_checkpoint_are_refused_in_words(edits, words):
    checkpoint, _ = _checkpoint(tiny())
    checkpoint["edits"] = edits
    found = "; ".join(checkpoints.problems(checkpoint))
    assert words in found
    with pytest.raises(CheckpointError, match="cannot be used"):
        checkpoints.load_model(checkpoint)


def test_a_checkpoint_whose_edits_do_not_fit_its_weights_is_refused():
    checkpoint, _ = _checkpoint(tiny(adapter_after=("stage1",), adapter_dim=4))
    checkpoint["edits"]["adapter_after"] = []
    with pytest.raises(CheckpointError, match="does not fit small_cnn"):
        checkpoints.load_model(checkpoint)


# --- the Model page ----------------------------------------------------------------------

def test_the_model_page_edits_the_model_and_shows_the_edited_block_table(app_env):
    from streamlit.testing.v1 import AppTest

    from ui import session

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120).run()
    at.switch_page("app_pages/model.py").run()
    assert "note" not in at.data_editor[0].value.columns  # the backbone as it is: nothing to mark
    at.text_input(key="model.head_text").input("64, 32").run()
    at.selectbox(key="cfg.activation").set_value("gelu").run()
    at.checkbox(key="cfg.head_batchnorm").check().run()
    at.selectbox(key="cfg.truncate_after").set_value("stage5").run()
    at.multiselect(key="cfg.adapter_after").select("stage3").run()
    at.number_input(key="cfg.adapter_dim").set_value(16).run()
    assert not at.exception, [e.value for e in at.exception]
    config = session.current_config(at.session_state)
    assert config.edits() == ModelEdits(head=(64, 32), activation="gelu", head_batchnorm=True,
                                        truncate_after="stage5", adapter_after=("stage3",), adapter_dim=16)
    assert validate(config) == []
    table = at.data_editor[0].value
    notes = dict(zip(table["block"], table["note"]))
    assert notes["adapter_stage3"] == "added" and notes["head"] == "" and notes["stem"] == ""
    assert [b for b, n in notes.items() if n == "removed"] == ["stage6", "stage7", "conv_head"]
    expected = explore.block_table(config, 10)
    assert list(table["parameters"]) == expected.columns()["parameters"]
    assert at.metric[0].value == f"{expected.total:,}"
    # adapters after blocks a new cut removes are dropped; a bad width is refused in words
    at.selectbox(key="cfg.truncate_after").set_value("stage2").run()
    assert session.current_config(at.session_state).adapter_after == ()
    at.text_input(key="model.head_text").input("64;x").run()
    assert "whole numbers separated by commas" in at.error[0].value
    assert session.current_config(at.session_state).head == (64, 32)
    # an adapter cannot be frozen: the table starts afresh and says why
    at.multiselect(key="cfg.adapter_after").select("stage1").run()
    editor = at.data_editor[0]
    row = list(editor.value["block"]).index("adapter_stage1")
    at.session_state[editor.key] = {"edited_rows": {row: {"train": False}}, "added_rows": [], "deleted_rows": []}
    at.run()
    assert not at.exception and "always train" in at.warning[0].value
    assert session.current_config(at.session_state).frozen_blocks is None
