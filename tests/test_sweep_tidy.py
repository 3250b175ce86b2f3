"""The explorer tidied: one check of a sweep for the CLI and the page (`sweep.checked_plan`), per-class
points that ask for more than a class has, the Runs table's sweep column, the cost warning of members
that train every block, one bootstrap for the probe and the comparison, the jobs' shared thread, and
what lr-find --at-epoch ramps."""
from __future__ import annotations

import json
import subprocess
import sys
import inspect
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ftlab import cli, compare, engine, explore, freeze, jobs, probe, sweep
from ftlab.config import TrainConfig
from ftlab.data import prepared, splits
from ftlab.runs import RunStore

ROOT = Path(__file__).resolve().parents[1]
BASE = TrainConfig(dataset="digits", backbone="small_cnn", weights="random", image_size=16, batch_size=64, epochs=1,
                   precision="fp32")
DIGITS_TRAIN = 1437  # digits' default split: 1,437 train and 360 val images, 10 classes


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "home")


# --- 1. one check, used by the CLI and the page ---------------------------------------------

def test_checked_plan_gives_every_reason_in_sentences_and_no_plan():
    plan, problems = sweep.checked_plan(replace(BASE, backbone="nope"), "linear-probe,top-1", "0")
    assert plan is None and len(problems) == 1 and problems[0].startswith("unknown backbone 'nope'")
    plan, problems = sweep.checked_plan(BASE, "lp-ft", "0")  # one epoch leaves lp-ft nothing to fine-tune
    assert plan is None and "lp-ft probes and then fine-tunes" in problems[0]
    plan, problems = sweep.checked_plan(BASE, "top-1", "0", workers=65)
    assert plan is None and "from 0 (one per core) to 64" in problems[0]
    plan, problems = sweep.checked_plan(BASE, "top-1", "0", workers=0)
    assert problems == [] and isinstance(plan, sweep.Plan)


def test_the_page_asks_ftlab_and_holds_no_rule_of_its_own():
    page = (ROOT / "app_pages" / "sweep.py").read_text()
    assert "sweep.checked_plan(" in page and "validate" not in page
    assert "sweep.cost_text(" in page and "sweep.plan_lines(" in page


# --- 2. per-class points that ask for more than a class has -----------------------------------

def test_per_class_words_say_what_a_class_with_fewer_keeps():
    assert splits.per_class_words(3, [3, 7], ["a", "b"]) == "3"
    assert splits.per_class_words(5, [3, 7], ["a", "b"]) == "5 (the class 'a' has only 3)"
    assert splits.per_class_words(7, [3, 7], ["a", "b"]) == "all 10 (7 per class asked; the largest class has 7)"
    assert splits.per_class_words(5, [3, 4, 9], ["a", "b", "c"]) == "5 (2 classes have fewer: 'a' has only 3, 'b' " \
                                                                     "has only 4)"


def test_a_point_at_or_above_every_class_count_is_not_a_mislabelled_copy_of_the_whole_data():
    counts = prepared.train_counts(BASE, prepared.load_for(BASE))
    assert sum(counts) == DIGITS_TRAIN and max(counts) == 146 and min(counts) == 139 and counts[8] == 139
    plan = sweep.make_plan(BASE, "linear-probe", "0", workers=1, per_class="2,140,146,1000")
    points = sorted(m.per_class for m in plan.members)
    assert points == [0, 2, 140]  # 146 and 1000 are the whole split: no member carries their label
    (note,) = plan.notes
    assert note.startswith("no members for 146, 1000 images per class") and "all 1437 of them" in note
    words = {m.per_class: m.images for m in plan.members}
    assert words[2] == "2" and words[140] == "140 (the class '8' has only 139)"
    assert "140 (the class '8' has only 139) per class" in plan.groups[0].describe()
    assert plan.to_dict()["notes"] == [note]


def test_train_per_class_above_every_class_is_said_when_the_run_prepares(store):
    said = []
    summary = engine.run(replace(BASE, strategy="linear-probe", train_per_class=500), store=store,
                         emit=lambda e: said.append(getattr(e, "message", "")))
    assert any("train_per_class 500 is at least every class's training images" in m and "all 1437" in m
               for m in said), said
    assert len(store.get(summary["run_id"]).split["train"]) == DIGITS_TRAIN
    assert prepared.per_class_note(replace(BASE, train_per_class=100), prepared.load_for(BASE)) == ""


# --- 3. the Runs table names each run's sweep -----------------------------------------------------

@pytest.mark.slow
def test_the_runs_table_has_a_sweep_column(app_env):
    from streamlit.testing.v1 import AppTest

    store = RunStore()  # FTLAB_HOME's, which the app reads
    plan = sweep.make_plan(BASE, "linear-probe", "0", workers=1)
    assert sweep.run(plan, store=store).status == "finished"
    alone = engine.run(replace(BASE, strategy="linear-probe"), store=store)
    rows = {r["run"]: r for r in explore.runs_table(store.list())}
    assert rows[plan.members[0].run_id]["sweep"] == plan.sweep_id
    assert rows[alone["run_id"]]["sweep"] == ""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("app_pages/runs.py").run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    assert dict(zip(table["run"], table["sweep"])) == {plan.members[0].run_id: plan.sweep_id, alone["run_id"]: ""}


# --- 4. what the plan will do, and which members take the time ----------------------------------

def test_the_cost_warning_names_the_members_that_train_every_block():
    base = replace(BASE, epochs=4)
    plan = sweep.make_plan(base, "linear-probe,top-1,full,gradual,lp-ft", "0", workers=1)
    text = sweep.cost_text(plan)
    # small_cnn has 4 backbone blocks; gradual (one more every 2 epochs) trains stage3 alone in 4 epochs
    assert text.startswith("full, lp-ft (2 of 5 runs) train every backbone block")
    assert "1,437 training images x 4 epochs = 5,748 image passes" in text
    assert "the other 3 runs train on features of the frozen blocks" in text
    assert {m.strategy for m in plan.members if m.every_block} == {"full", "lp-ft"}
    assert sweep.plan_lines(plan)[-1] == f"warning: {text}"
    assert plan.to_dict()["cost"] == text
    assert sweep.cost_text(sweep.make_plan(base, "linear-probe,top-2", "0", workers=1)) == ""
    every = sweep.make_plan(replace(BASE, epochs=9), "gradual", "0", workers=1)  # its 9th epoch trains the stem
    assert sweep.cost_text(every).startswith("gradual (1 of 1 runs) trains every backbone block")


@pytest.mark.slow
def test_the_page_shows_the_plan_and_its_warning_before_it_starts(app_env):
    from test_hostile_explorer import sweep_page
    from ui import keys as K, resources

    at = sweep_page(epochs=4)
    at.button(key=K.SWEEP_START).click().run()  # the default list: full, gradual and lp-ft among them
    assert not at.exception and not at.error, [e.value for e in at.error]
    warning = " ".join(w.value for w in at.warning)
    assert "top-4, full, lp-ft (3 of 7 runs) train every backbone block" in warning, warning  # small_cnn: 4 blocks
    assert "The plan" in " ".join(m.value for m in at.markdown)
    assert resources.background(at.session_state[K.OWNER], "sweep") is None  # nothing started, nothing kept
    assert RunStore().sweeps() == []
    at.button(key=K.SWEEP_CANCEL).click().run()
    assert not at.warning and K.SWEEP_PENDING not in at.session_state
    # one member that trains every block, at one epoch: said, then started when asked
    at.session_state["cfg.epochs"] = 1
    at.multiselect(key=K.SWEEP_STRATEGIES).set_value(["full"])
    at.number_input(key=K.SWEEP_WORKERS).set_value(1)
    at.button(key=K.SWEEP_START).click().run()
    assert "full (1 of 1 runs) trains every backbone block" in at.warning[0].value
    at.button(key=K.SWEEP_CONFIRM).click().run()
    job = resources.background(at.session_state[K.OWNER], "sweep")
    assert job is not None and job.join(600)
    at.run()
    assert not at.exception and [s["status"] for s in RunStore().sweeps()] == ["finished"]
    shown = [c.value.replace("\\", "") for c in at.caption]  # drawn as plain text: markdown escaped
    assert any(c.startswith("Cost: full (1 of 1 runs) trains every backbone block") for c in shown), shown


# --- 5. one bootstrap -------------------------------------------------------------------------

def test_the_probe_uses_the_comparisons_bootstrap():
    assert not hasattr(probe, "_interval")
    # two draws, one all right and one all wrong: a resample's rows are both the first (1/4), both the second
    # (1/4) or one of each (1/2), so its mean is 1, 0 or 1/2; the 30th and 70th percentiles are 1/2
    rows = np.array([[1.0, 1.0], [0.0, 0.0]])
    assert compare.bootstrap_draws_interval(rows, level=0.4) == (0.5, 0.5)
    assert compare.bootstrap_draws_interval(rows) == (0.0, 1.0)
    one = np.r_[np.ones(8), np.zeros(2)]
    assert compare.bootstrap_draws_interval(one[None]) == compare.bootstrap_interval(one)
    (e,) = probe.data_efficiency(np.eye(4)[[0, 1, 2, 3] * 3], np.array([0, 1, 0, 1] * 3), np.eye(4)[[0, 1]],
                                 np.array([0, 1]), [None], resamples=200)
    assert (e.low, e.high) == compare.bootstrap_interval(np.array([1.0, 1.0]), resamples=200)


# --- 6. the jobs share their thread ------------------------------------------------------------

def test_job_and_background_share_one_thread_of_their_own():
    assert issubclass(jobs.Job, jobs._Threaded) and issubclass(jobs.Background, jobs._Threaded)
    for name in ("start", "stop", "join"):
        assert name not in vars(jobs.Background)
    assert "stop" not in vars(jobs.Job)
    # the queue's Job.start and Job.join add what a queued job needs, then use the one shared thread
    assert "super().start()" in inspect.getsource(jobs.Job.start)
    assert "self._thread.join(" in inspect.getsource(jobs.Job.join)
    began = threading.Event()
    job = jobs.Background(lambda say, stop: began.set() or stop.wait(30), "tidy-test")
    assert job.start() is job and began.wait(10) and job.alive()
    job.stop()
    assert job.join(10) and job.status == "stopped" and not job.alive()


# --- 7. what lr-find --at-epoch ramps -----------------------------------------------------------

def test_lr_find_at_epoch_is_said_as_it_is_done():
    from ftlab import lr_find

    help_text = subprocess.run([sys.executable, "-m", "ftlab", "lr-find", "--help"], capture_output=True, text=True,
                               cwd=ROOT, timeout=120).stdout
    flat = " ".join(help_text.split())
    assert "ramp the blocks that train in this epoch" in flat and "from the run's initial weights" in flat
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Explore freeze strategies"):readme.index("## Export")]
    assert "initial weights" in section and "--at-epoch" in section
    # lp-ft: the probe's blocks frozen until its last possible probe epoch, every block after it
    blocks = ("stem", "stage1", "stage2", "stage3", "pool", "head")
    plan = freeze.make_plan(blocks, "lp-ft")
    config = replace(BASE, strategy="lp-ft", epochs=6)  # lp_epochs 0: half the epochs, 3
    assert lr_find.frozen_at(plan, config, 2) == plan.frozen_at_start != frozenset()
    assert lr_find.frozen_at(plan, config, 3) == frozenset()
    assert lr_find.frozen_at(plan, replace(config, lp_epochs=5), 4) == plan.frozen_at_start


def test_the_cli_prints_the_plan_before_the_first_member(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FTLAB_HOME", str(tmp_path / "cli"))
    code = cli.main(["sweep", "--dataset", "digits", "--backbone", "small_cnn", "--weights", "random", "--image-size",
                     "16", "--epochs", "1", "--strategies", "linear-probe,linear-probe", "--workers", "1",
                     "--per-class", "500", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    head = out.err.split("loading data")[0]
    assert "linear-probe is named twice in the strategies: it runs once." in head
    assert "no members for 500 images per class" in head
    rep = json.loads(out.out.strip().splitlines()[-1])
    assert len(rep["members"]) == 1 and any("named twice" in n for n in rep["notes"]) and rep["cost"] == ""


def test_why_a_strategy_has_no_data_efficiency_points_is_its_own():
    plan = sweep.make_plan(replace(BASE, epochs=2), "linear-probe,full,gradual,top-4", "0", per_class="2", workers=1)
    assert "every block trains at some epoch" in plan.skipped["full"] == plan.skipped["top-4"]  # top-4: all 4
    assert plan.skipped["gradual"].startswith("it unfreezes blocks as the epochs go on")
    assert "linear-probe" not in plan.skipped
    uncached = sweep.make_plan(replace(BASE, feature_cache=False), "linear-probe", "0", per_class="2", workers=1)
    assert "not cached under these options" in uncached.skipped["linear-probe"]


@pytest.mark.slow
def test_lr_find_past_lp_fts_probe_ramps_every_block_and_before_it_the_head(store):
    from ftlab import lr_find

    config = replace(BASE, strategy="lp-ft", epochs=4)  # the probe's last possible epoch: 2
    before = lr_find.find_lr(config, lr_find.FinderOptions(steps=20, at_epoch=2), store=store)
    after = lr_find.find_lr(config, lr_find.FinderOptions(steps=20, at_epoch=3), store=store)
    assert before.trained_blocks == ("head",)
    assert set(after.trained_blocks) >= {"stem", "stage1", "stage2", "stage3", "head"}
    assert store.list() == []  # the finder keeps no run
