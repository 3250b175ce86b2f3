"""Hostile input to the freeze-strategy explorer: every option of sweep, probe and lr-find given a bad
value on the CLI, data sets a sweep cannot compare on, a sweep whose member fails, and the Sweep page
given the same. Each is a sentence that says what to do, exit code 2 for a usage error, no traceback,
and no sweep record unless one ran (a failed one kept as failed, with its reason)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ftlab import cli, sweep
from ftlab.config import TrainConfig
from ftlab.runs import RunStore

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--backbone", "small_cnn", "--weights", "random", "--image-size", "16", "--epochs", "2"]


def folder(root: Path, classes: list[str], per_class: int) -> Path:
    """A folder data set of ``per_class`` random 20 px PNGs in each class."""
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def refused(capsys, argv: list[str], words: str) -> str:
    """``argv`` exits 2 with ``words`` in a line on stderr, no traceback, and keeps no sweep."""
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert words in err and "Traceback" not in err, err
    assert RunStore().sweeps() == []
    return err


def usage_error(capsys, argv: list[str], words: str) -> None:
    """argparse refuses ``argv`` itself (a value of the wrong type): exit 2 and its sentence."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and words in err and "Traceback" not in err, err


# --- sweep ----------------------------------------------------------------------------------

@pytest.mark.parametrize("option, words", [
    (["--strategies", ""], "name at least one strategy"),
    (["--strategies", " , "], "name at least one strategy"),
    (["--strategies", "linear-probe,top3"], "unknown strategy 'top3'"),
    (["--strategies", "top-99"], "top-99 asks for more blocks than the 4 below the head"),
    (["--strategies", "top-stage9"], "no backbone block 'stage9'"),
    (["--seeds", "a,b"], "--seeds takes whole numbers separated by commas"),
    (["--seeds", " "], "name at least one seed"),
    (["--seeds", "-1"], "seeds run from 0 to 2147483647"),
    (["--seeds", "99999999999"], "seeds run from 0 to 2147483647"),
    (["--seeds", ",".join(map(str, range(201)))], "a sweep takes at most 200"),
    (["--per-class", "0"], "images per class start at 1"),
    (["--per-class", "-1"], "images per class start at 1"),
    (["--per-class", "all,all"], "--per-class takes whole numbers"),
    (["--per-class", "two"], "--per-class takes whole numbers"),
    (["--workers", "-1"], "from 0 (one per core) to 64"),
    (["--workers", "999"], "from 0 (one per core) to 64"),
    (["--strategies", "lp-ft", "--lp-epochs", "2"], "leave no epoch to fine-tune in"),
])
def test_sweep_refuses_a_bad_value_in_a_sentence(capsys, option, words):
    refused(capsys, ["sweep", "--dataset", "digits", *SMALL, *option], words)


def test_sweep_refuses_a_value_of_the_wrong_type_as_usage(capsys):
    usage_error(capsys, ["sweep", "--dataset", "digits", "--workers", "two"], "invalid int value")


@pytest.mark.parametrize("classes, per_class, words", [
    (["a"], 6, "found only the class 'a'; at least 2 classes are needed"),
    (["a", "b"], 1, "each class needs at least 2 images"),
])
def test_a_sweep_on_data_it_cannot_compare_on_is_refused_before_it_is_kept(tmp_path, capsys, classes, per_class,
                                                                          words):
    data = folder(tmp_path / "data", classes, per_class)
    refused(capsys, ["sweep", "--dataset", str(data), *SMALL, "--strategies", "linear-probe"], words)


def test_a_sweep_whose_members_fail_is_kept_as_failed_with_the_reason(tmp_path):
    data = folder(tmp_path / "data", ["a", "b"], 6)
    base = TrainConfig(dataset=str(data), backbone="small_cnn", weights="random", image_size=16, epochs=1)
    plan, problems = sweep.checked_plan(base, "linear-probe,top-1", "0", workers=1)
    assert problems == []
    shutil.rmtree(data / "b")  # the data change under the sweep: every member fails as it loads them
    store = RunStore()
    outcome = sweep.run(plan, store=store)
    kept = store.sweep(plan.sweep_id)
    assert outcome.status == kept["status"] == "failed"
    assert kept["message"].startswith("2 of 2 runs failed: ") and "found only the class 'a'" in kept["message"]
    report = sweep.report(plan.sweep_id, store)
    assert [m["status"] for m in report["members"]] == ["failed", "failed"]
    assert "failed (2 of 2 runs failed" in sweep.report_text(report)


def test_the_sweep_cli_exits_1_and_says_why_when_its_members_fail(tmp_path, capsys, monkeypatch):
    data = folder(tmp_path / "data", ["a", "b"], 6)
    real = sweep.checked_plan

    def then_remove(*args, **kwargs):  # the real check passes; the data go before the first member starts
        out = real(*args, **kwargs)
        shutil.rmtree(data / "b")
        return out
    monkeypatch.setattr(sweep, "checked_plan", then_remove)
    code = cli.main(["sweep", "--dataset", str(data), *SMALL, "--strategies", "linear-probe",
                     "--workers", "1"])
    out = capsys.readouterr()
    assert code == 1 and "Traceback" not in out.err
    assert "failed (1 of 1 runs failed: linear-probe (seed 0): " in out.out
    assert RunStore().sweeps()[0]["status"] == "failed"


# --- probe ------------------------------------------------------------------------------------

@pytest.mark.parametrize("option, words", [
    (["--at", "nope"], "no block 'nope' to probe at in small_cnn"),
    (["--per-class", "0"], "per_class takes whole numbers of at least 1 and all"),
    (["--per-class", "-1"], "per_class takes whole numbers of at least 1 and all"),
    (["--per-class", "two,all"], "per_class takes whole numbers of at least 1 and all"),
    (["--draws", "0"], "draws must be between 1 and 100"),
    (["--draws", "1000000000"], "draws must be between 1 and 100"),
    (["--c", "nan"], "c must be between 1e-06 and 1e+06"),
    (["--c", "inf"], "c must be between 1e-06 and 1e+06"),
    (["--c", "-1"], "c must be between 1e-06 and 1e+06"),
    (["--resamples", "0"], "resamples must be between 100 and 100000"),
])
def test_probe_refuses_a_bad_value_in_a_sentence(capsys, option, words):
    refused(capsys, ["probe", "--dataset", "digits", "--backbone", "small_cnn", "--weights", "random",
                     "--image-size", "16", *option], words)


def test_probe_refuses_data_with_one_class(tmp_path, capsys):
    data = folder(tmp_path / "data", ["a"], 6)
    refused(capsys, ["probe", "--dataset", str(data), "--backbone", "small_cnn", "--weights", "random"],
            "at least 2 classes are needed")


def test_probe_refuses_a_value_of_the_wrong_type_as_usage(capsys):
    usage_error(capsys, ["probe", "--dataset", "digits", "--draws", "1e9"], "invalid int value")


# --- lr-find ----------------------------------------------------------------------------------

@pytest.mark.parametrize("option, words", [
    (["--steps", "0"], "steps must be between 10 and 2000 (got 0)"),
    (["--steps", "1"], "steps must be between 10 and 2000 (got 1)"),
    (["--steps", "1000000000"], "steps must be between 10 and 2000 (got 1000000000)"),
    (["--start-lr", "1", "--end-lr", "0.1"], "start_lr (1) must be below end_lr (0.1)"),
    (["--start-lr", "0.1", "--end-lr", "0.1"], "start_lr (0.1) must be below end_lr (0.1)"),
    (["--start-lr", "nan"], "start_lr must be between 1e-10 and 1 (got nan)"),
    (["--end-lr", "inf"], "end_lr must be between 1e-06 and 100 (got inf)"),
    (["--end-lr=-inf"], "end_lr must be between 1e-06 and 100 (got -inf)"),
    (["--at-epoch", "3"], "at_epoch (3) is after the run's last epoch (2)"),
    (["--at-epoch", "0"], "at_epoch must be between 1 and 1000 (got 0)"),
])
def test_lr_find_refuses_a_bad_value_in_a_sentence(capsys, option, words):
    refused(capsys, ["lr-find", "--dataset", "digits", *SMALL, *option], words)


@pytest.mark.parametrize("option", [["--steps", "1e9"], ["--start-lr", ""], ["--at-epoch", " "]])
def test_lr_find_refuses_a_value_of_the_wrong_type_as_usage(capsys, option):
    usage_error(capsys, ["lr-find", "--dataset", "digits", *option], "invalid")


def test_lr_find_refuses_data_with_one_image_per_class(tmp_path, capsys):
    data = folder(tmp_path / "data", ["a", "b"], 1)
    refused(capsys, ["lr-find", "--dataset", str(data), *SMALL], "each class needs at least 2 images")


# --- the Sweep page -------------------------------------------------------------------------------

def sweep_page(epochs: int = 1):
    """The app on the Sweep page with small_cnn at 16 px for ``epochs`` (the Train form's options set as
    its submit would)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("app_pages/model.py").run()
    at.selectbox(key="cfg.backbone").select("small_cnn").run()
    at.session_state["cfg.image_size"], at.session_state["cfg.epochs"] = 16, epochs
    return at.switch_page("app_pages/sweep.py").run()


@pytest.fixture
def page(app_env):
    yield sweep_page()
    from ui import resources

    for job in resources._background().values():  # a sweep started by mistake would outlive the test
        job.stop()
        assert job.join(600)


def _start(at, strategies=("linear-probe",), seeds="0", per_class="") -> str:
    from ui import keys as K, resources

    at.multiselect(key=K.SWEEP_STRATEGIES).set_value(list(strategies))
    at.text_input(key=K.SWEEP_SEEDS).set_value(seeds)
    at.text_input(key=K.SWEEP_PER_CLASS).set_value(per_class)
    at.button(key=K.SWEEP_START).click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert resources.background(at.session_state[K.OWNER], "sweep") is None and RunStore().sweeps() == []
    return " ".join(e.value for e in at.error)


@pytest.mark.slow
def test_the_sweep_page_says_each_bad_value_and_keeps_nothing(page):
    assert "name at least one strategy" in _start(page, strategies=())
    assert "unknown strategy 'top3'" in _start(page, strategies=("top3",))
    assert "--seeds takes whole numbers" in _start(page, seeds="a,b")
    assert "name at least one seed" in _start(page, seeds="  ")
    assert "images per class start at 1" in _start(page, per_class="0,2")
    assert "--per-class takes whole numbers" in _start(page, per_class="all,all")
    assert "a sweep takes at most 200" in _start(page, seeds=",".join(map(str, range(201))))


def test_the_sweep_page_refuses_data_with_one_class(page, tmp_path):
    data = folder(tmp_path / "one", ["a"], 6)
    # the Data page refuses such a folder; a choice kept from before the folder lost a class is not checked there
    page.session_state["data.dataset"] = str(data)
    page.run()
    assert "found only the class 'a'" in _start(page)


def test_a_sweep_on_data_not_downloaded_checks_nothing_away_and_fails_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("FTLAB_DATA", str(tmp_path / "empty"))  # offline (conftest) and nothing downloaded
    base = TrainConfig(dataset="hymenoptera", backbone="small_cnn", weights="random", image_size=16, epochs=1)
    plan, problems = sweep.checked_plan(base, "linear-probe", "0", workers=1)
    assert problems == [] and plan.train_images == 0  # the check downloads nothing: the member would
    outcome = sweep.run(plan, store=RunStore())
    assert outcome.status == "failed" and "1 of 1 runs failed: linear-probe (seed 0): " in outcome.message
    assert RunStore().sweep(plan.sweep_id)["message"] == outcome.message


def test_the_sweep_pages_probe_says_a_bad_images_per_class(page):
    from ui import keys as K, resources

    page.text_input(key=K.PROBE_PER_CLASS).set_value("0,all")
    page.button(key=K.PROBE_START).click().run()
    job = resources.background(page.session_state[K.OWNER], "probe")
    assert job is not None and job.join(120)
    page.run()
    assert not page.exception, [e.value for e in page.exception]
    shown = " ".join(e.value for e in page.error)
    assert "The probe failed: the probe cannot start: per_class takes whole numbers of at least 1" in shown, shown
