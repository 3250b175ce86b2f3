"""What the pages draw comes from ftlab: the Model page's block table against the optimiser's own
param groups and counts, and the one run picker and run title the pages share."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
from streamlit.testing.v1 import AppTest

from ftlab import backbones, explore, freeze
from ftlab.config import TrainConfig, resolved_lr

APP = str(Path(__file__).resolve().parents[1] / "app.py")
CONFIGS = [TrainConfig(backbone="small_cnn"),
           TrainConfig(backbone="small_cnn", strategy="top-2", lr_decay=0.5, hidden=16),
           TrainConfig(backbone="small_cnn", strategy="gradual", lr_decay=0.3, lr=0.02, weight_decay=0.01),
           TrainConfig(backbone="small_cnn", frozen_blocks=("stem", "stage2"), lr_decay=0.7, dropout=0.2),
           TrainConfig(backbone="resnet18", strategy="top-3", lr_decay=0.8),
           TrainConfig(backbone="regnet_y_400mf", strategy="full", lr_decay=0.9)]  # no meta build: the CPU one


def trained_model(config: TrainConfig, num_classes: int):
    """The model as the engine sets it up for training (random weights: the counts do not depend on them)."""
    model = backbones.create_model(config.backbone, num_classes, "random", hidden=config.hidden,
                                   dropout=config.dropout)
    plan = freeze.make_plan(model.param_blocks(), config.strategy, gradual_every=config.gradual_every,
                            frozen_blocks=config.frozen_blocks)
    freeze.apply_freeze(model, plan.frozen_at(0), config.bn_frozen)
    return model, plan


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.backbone}-{c.strategy}-{c.frozen_blocks}")
def test_the_block_table_is_the_optimisers_groups_and_counts(config):
    table = explore.block_table(config, num_classes=7)
    model, plan = trained_model(config, 7)
    groups = freeze.param_groups(model, resolved_lr(config), config.weight_decay, config.lr_decay)
    # a block's groups (two with weight decay: its 1-D parameters undecayed) share its rate
    rate = {g["name"]: g["lr"] for g in groups}
    assert all(g["lr"] == rate[g["name"]] for g in groups)
    params = {name: sum(p.numel() for g in groups if g["name"] == name for p in g["params"]) for name in rate}
    assert [r.block for r in table.rows] == list(rate) == model.param_blocks()
    assert [r.lr_factor for r in table.rows] == [rate[r.block] / groups[-1]["lr"] for r in table.rows]
    assert [r.parameters for r in table.rows] == [params[r.block] for r in table.rows]
    assert {r.block for r in table.rows if not r.train} == plan.frozen_at(0) == table.frozen
    assert (table.trainable, table.total) == freeze.count_params(model)
    assert table.percent == pytest.approx(100 * table.trainable / table.total)
    assert all(r.note == "" for r in table.rows) and "note" not in table.columns()


def test_the_block_table_by_hand_for_a_linear_probe_and_discriminative_rates():
    table = explore.block_table(TrainConfig(lr_decay=0.5), num_classes=10)  # efficientnet_lite0
    assert table.trainable == 1280 * 10 + 10  # the head alone: 1280 features × 10 classes + 10 biases
    depth = len(table.rows) - 1
    assert [r.lr_factor for r in table.rows] == pytest.approx([0.5 ** (depth - i) for i in range(depth + 1)])
    assert table.rows[-1] == explore.BlockRow("head", 12810, True, 1.0)
    assert [r.train for r in table.rows] == [False] * depth + [True]


def test_only_a_gradual_plan_has_a_schedule_sentence():
    gradual = explore.block_table(TrainConfig(backbone="small_cnn", strategy="gradual", gradual_every=3), 4)
    assert gradual.schedule == ("The table shows the first epochs; then every 3 epoch(s) one more block trains: "
                                "stage3 → stage2 → stage1 → stem.")
    assert explore.block_table(TrainConfig(backbone="small_cnn", strategy="top-1"), 4).schedule == ""


def test_a_strategy_the_backbone_cannot_take_is_a_value_error():
    with pytest.raises(ValueError, match="top-5"):
        explore.block_table(TrainConfig(backbone="small_cnn", strategy="top-5"), 4)


def test_a_note_column_appears_when_a_row_has_a_note():
    table = explore.BlockTable((explore.BlockRow("stem", 10, False, 0.5), explore.BlockRow("adapter", 4, True, 1.0,
                                                                                           "added")), 4, 14)
    assert table.columns() == {"block": ["stem", "adapter"], "parameters": [10, 4], "train": [False, True],
                               "learning rate ×": [0.5, 1.0], "note": ["", "added"]}


def test_the_model_page_draws_the_block_table(app_env):
    """The page's table, trainable metric and chart are ftlab's table for the session's config."""
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("app_pages/model.py").run()
    at.selectbox(key="cfg.backbone").set_value("small_cnn").run()
    at.button(key="model.preset.top_n").click().run()
    at.slider(key="cfg.lr_decay").set_value(0.5).run()
    assert not at.exception, [e.value for e in at.exception]
    from ui import session

    config = session.current_config(at.session_state)
    assert config.strategy == "top-2" and config.lr_decay == 0.5
    table = explore.block_table(config, num_classes=10)  # digits
    shown = at.data_editor[0].value
    assert list(shown["block"]) == [r.block for r in table.rows]
    assert list(shown["learning rate ×"]) == [r.lr_factor for r in table.rows]
    assert list(shown["train"]) == [r.train for r in table.rows]
    trainable = next(m for m in at.metric if m.label == "Trainable parameters")
    assert trainable.value == f"{table.trainable:,}"
    assert "Top-2: the last 2 blocks and the head train." in [c.value for c in at.caption]


# ------------------------------------------------------------------ the run picker and run title

def record(i: int, name: str = "") -> SimpleNamespace:
    """Enough of a `ftlab.runs.RunRecord` for the picker: its id, its config and the columns it lists."""
    return SimpleNamespace(id=f"run{i}", dataset="digits", backbone="small_cnn", strategy="top-2",
                           config={"name": name, "epochs": i + 1})


def _picker_page() -> None:
    from types import SimpleNamespace

    import streamlit as st

    from ui import parts

    records = [SimpleNamespace(id=f"run{i}", dataset="digits", backbone="small_cnn", strategy="top-2",
                               config={"name": "", "epochs": i + 1}) for i in range(st.session_state.get("n", 3))]
    st.markdown(f"chosen {parts.run_picker(records, 'pick').id}")


def test_the_run_picker_lists_each_run_by_its_label_and_returns_the_chosen_one():
    at = AppTest.from_function(_picker_page).run()
    box = at.selectbox(key="pick")
    assert box.options == [explore.record_label(record(i)) for i in range(3)]
    assert at.markdown[0].value == "chosen run0"  # nothing chosen yet: the first run
    box.set_value("run2").run()
    assert at.markdown[0].value == "chosen run2"
    at.session_state["n"] = 2  # run2 deleted meanwhile: the first run again, not an error
    at.run()
    assert not at.exception and at.markdown[0].value == "chosen run0"


def test_the_run_title_is_the_id_and_the_one_label_as_plain_markdown():
    from ui import parts

    config = TrainConfig(name="cats_v2 *best*")
    assert parts.run_title("abc", config) == "`abc` · " + parts.plain(explore.run_label(config))
    assert parts.run_title("abc", config) == r"`abc` · cats\_v2 \*best\*"
    kept = record(4, name="")
    assert parts.run_title("run4", kept) == "`run4` · " + parts.plain(explore.record_label(kept, with_id=False))


# ------------------------------------------------------------------ other figures the pages draw

def test_the_imbalance_simulator_figures_are_the_distributions_after_and_their_change():
    from ftlab import diversity

    before = [300, 200, 120, 40]
    after, figures = explore.long_tail_figures(before, 10.0)
    assert after == diversity.long_tail_counts(before, 10.0) and max(after) / min(after) == pytest.approx(10, rel=0.1)
    now, sim = diversity.distribution(before), diversity.distribution(after)
    shown = {label: (value, change) for label, value, change in figures}
    assert shown["Training images after"] == (f"{sum(after):,}", f"{sum(after) - 660:+,}")
    assert shown["Entropy after (bits)"] == (f"{sim.entropy_bits:.3f}", f"{sim.entropy_bits - now.entropy_bits:+.3f}")
    assert float(shown["Effective classes after"][1]) < 0  # a long tail takes diversity away


def test_the_final_split_shown_is_test_when_there_is_one_and_the_device_in_words():
    import os

    import torch

    assert explore.final_split({"val": {}, "test": {}}) == "test" and explore.final_split({"val": {}}) == "val"
    assert explore.device_text(torch.device("cpu")) == f"CPU · {os.cpu_count()} cores"
    assert explore.device_text(torch.device("mps")) == "Apple MPS"


def test_the_sample_grid_key_names_the_split_seed_and_fractions():
    """The Data page keys its sample grid by the split's identity: another seed is another split
    (for digits the data set's identity alone does not name the seed)."""
    from ftlab import data

    base = TrainConfig(dataset="digits")
    assert data.identity(dataclasses.replace(base, seed=1)) == data.identity(base)
    keys = {data.split_identity(c) for c in (base, dataclasses.replace(base, seed=1),
                                              dataclasses.replace(base, val_fraction=0.3),
                                              dataclasses.replace(base, test_fraction=0.1))}
    assert len(keys) == 4
    assert data.split_identity(dataclasses.replace(base, epochs=9)) == data.split_identity(base)


def test_the_block_chart_title_counts_the_model_not_its_removed_blocks():
    table = explore.block_table(TrainConfig(backbone="small_cnn", truncate_after="stage2"), 4)
    removed = sum(r.parameters for r in table.rows if r.note == "removed")
    assert removed > 0 and table.total == freeze_total(table) - removed
    assert table.title == f"Trainable {table.trainable:,} of {table.total:,} parameters ({table.percent:.1f}%)"


def freeze_total(table) -> int:
    return sum(r.parameters for r in table.rows)


def test_unticking_the_head_is_refused_with_the_reason():
    table = explore.block_table(TrainConfig(backbone="small_cnn"), 4)
    blocks = [r.block for r in table.rows]
    frozen, why = table.unticked(blocks, [False] * len(blocks))
    assert "head always trains" in why and "head" in frozen
    assert table.unticked(blocks, [b == "head" for b in blocks])[1] == ""
