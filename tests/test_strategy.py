"""Tests for ftlab.freeze.Strategy: a strategy string parsed once, given back, described, and
read the same way by the config, the freeze plan, the labels and the session."""
from __future__ import annotations

import pytest

from ftlab import explore
from ftlab.config import DEFAULT_LR, TrainConfig, resolved_lr, validate
from ftlab.freeze import Strategy, make_plan

SMALL_CNN_BLOCKS = ("stem", "stage1", "stage2", "stage3", "head")
UNKNOWN = ("unknown strategy {!r}; choose one of: linear-probe, top-N (e.g. top-2, top-all, top-stage6), full, gradual, "
           "lp-ft")


@pytest.mark.parametrize("text, kind, n", [("linear-probe", "linear-probe", 0), ("top-1", "top-N", 1),
                                           ("top-12", "top-N", 12), ("full", "full", 0),
                                           ("gradual", "gradual", 0), ("custom", "custom", 0)])
def test_parse_gives_the_kind_and_n_and_str_gives_the_text_back(text, kind, n):
    s = Strategy.parse(text)
    assert (s.kind, s.n, s.frozen_blocks) == (kind, n, None)
    assert str(s) == text and Strategy.parse(str(s)) == s


@pytest.mark.parametrize("bad", ["bogus", "top-", "top-x", "top3", "", "Full", " full", "top-2 ", None, 3])
def test_unknown_text_raises_the_message_that_lists_the_choices(bad):
    with pytest.raises(ValueError) as info:
        Strategy.parse(bad)
    assert str(info.value) == UNKNOWN.format(bad)


def test_frozen_blocks_make_it_custom_but_the_text_is_still_checked():
    s = Strategy.parse("gradual", frozen_blocks=["stem", "stage1"])
    assert (s.kind, s.frozen_blocks, str(s), s.label) == ("custom", ("stem", "stage1"), "custom", "custom (2 frozen)")
    assert Strategy.parse("top-2", frozen_blocks=()).label == "custom (0 frozen)"
    with pytest.raises(ValueError, match="unknown strategy 'bogus'"):
        Strategy.parse("bogus", frozen_blocks=("stem",))
    with pytest.raises(ValueError, match="unknown strategy"):
        make_plan(SMALL_CNN_BLOCKS, "bogus", frozen_blocks=("stem",))


def test_a_strategy_cannot_be_made_of_an_unknown_kind():
    with pytest.raises(ValueError, match="unknown strategy 'top-2'"):
        Strategy("top-2")  # the kind is "top-N"; the text is for `parse`


def test_describe_says_what_trains():
    # the Model page's sentences, as the page wrote them before they moved here
    assert Strategy.parse("linear-probe").describe(2) == "Linear probe: only the new head trains."
    assert Strategy.parse("top-3").describe(2) == "Top-3: the last 3 blocks and the head train."
    assert Strategy.parse("full").describe(2) == "Full fine-tuning: every block trains."
    assert Strategy.parse("gradual").describe(4) == ("Gradual: starts as a linear probe and unfreezes one more "
                                                     "block from the top every 4 epoch(s).")
    assert Strategy.parse("full", ("stem",)).describe(2) == "Custom: the blocks ticked in the table train."


@pytest.mark.parametrize("config, lr", [
    (TrainConfig(strategy="linear-probe"), 3e-3), (TrainConfig(strategy="top-3"), 1e-3),
    (TrainConfig(strategy="gradual"), 1e-3), (TrainConfig(strategy="full"), 3e-4),
    # explicit frozen blocks are custom whatever the text says: a full fine-tune's rate would be too small
    (TrainConfig(strategy="linear-probe", frozen_blocks=("stem",)), 1e-3),
    (TrainConfig(strategy="full", lr=0.05), 0.05)])
def test_the_default_learning_rate_follows_the_kind(config, lr):
    assert resolved_lr(config) == lr
    if config.lr is None:
        assert DEFAULT_LR[Strategy.parse(config.strategy, config.frozen_blocks).kind] == lr


def test_validate_reports_an_unknown_strategy_in_the_parsers_words():
    problems = validate(TrainConfig(backbone="small_cnn", strategy="top3"))
    assert UNKNOWN.format("top3") + "." in problems


def test_labels_name_the_strategy_and_never_raise_for_a_stored_one():
    assert explore.run_label(TrainConfig(strategy="top-2")).split(" · ")[2] == "top-2"
    assert explore.run_label(TrainConfig(frozen_blocks=("stem", "stage1", "stage2"))).split(" · ")[2] == \
        "custom (3 frozen)"
    assert explore.run_label({"dataset": "digits", "backbone": "x", "strategy": "top 2 (old)"}).split(" · ")[2] == \
        "top 2 (old)"


def test_the_session_reads_and_writes_strategies_through_the_type():
    from ui import keys as K, session

    state: dict = {}
    session.init_state(state)
    for config in (TrainConfig(strategy="top-3"), TrainConfig(strategy="gradual"),
                   TrainConfig(strategy="full", frozen_blocks=("stem",))):
        session.adopt_config(state, config)
        assert session.strategy_of(state) == Strategy.parse(config.strategy, config.frozen_blocks)
    # a suggestion of a top-N strategy sets the preset and its N (not a preset named "top-2")
    session.apply_suggestion(state, {"strategy": "top-2"}, TrainConfig())
    assert (state[K.PRESET], state[K.TOP_N], state[K.FROZEN]) == ("top-N", 2, None)
    assert session.current_config(state).strategy == "top-2"


def test_the_session_fits_its_strategy_to_the_backbone_before_the_page_draws_it():
    from ui import keys as K, session

    state: dict = {}
    session.init_state(state)
    session.adopt_config(state, TrainConfig(strategy="top-9"))
    session.fit_to_backbone(state, SMALL_CNN_BLOCKS)  # four blocks below the head
    assert state[K.TOP_N] == 4 and session.current_config(state).strategy == "top-4"
    session.choose_frozen(state, {"stage1", "stem"}, SMALL_CNN_BLOCKS)
    assert session.current_config(state).frozen_blocks == ("stem", "stage1")  # in the model's order
    version = state[K.EDITOR_VERSION]
    session.fit_to_backbone(state, ("conv_stem", "blocks", "head"))  # another backbone: no block named stem
    assert session.strategy_of(state) == Strategy("linear-probe") and state[K.EDITOR_VERSION] == version + 1
