"""Hostile options and settings: every command's options, every environment variable, the
checks that must come before any work, long lists in messages, and honest progress."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ftlab import backbones, cache, cli, data, engine, events, explore, paths
from ftlab.config import PredictOptions, TrainConfig, validate
from ftlab.data import decoding
from ftlab.messages import some
from ftlab.runs import RunStore

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "digits", "--backbone", "small_cnn", "--weights", "random", "--image-size", "16", "--epochs", "1"]
FAST = dict(dataset="digits", backbone="small_cnn", weights="random", strategy="full", image_size=16, batch_size=64,
            epochs=1, lr=3e-3)


@pytest.fixture
def home():
    return Path(os.environ["FTLAB_HOME"])


def no_runs_kept(home: Path) -> bool:
    return not (home / "runs.db").exists() or RunStore(home).list() == []


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftlab", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONIOENCODING": "utf-8:strict", **(env or {})})


# --- 1. every command's options through the one validate ---------------------------------

@pytest.mark.parametrize("args, words", [
    (["--seed", "-1"], "seed must be between 0"),
    (["--val-fraction", "0.9"], "val_fraction must be between"),
    (["--imbalance-ratio", "nan"], "imbalance_ratio must be between"),
    (["--dataset", "shapes", "--shapes-noise", "inf"], "shapes_noise must be between"),
    (["--dataset", "shapes", "--shapes-per-class", "0"], "shapes_per_class must be between"),
])
def test_stats_validates_its_options(capsys, args, words):
    """Before: `stats --seed -1` was a traceback from numpy's seeding."""
    assert cli.main(["stats", *args]) == cli.EXIT_BAD_INPUT
    assert words in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("predict-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("FTLAB_HOME", str(home))
    mp.setenv("FTLAB_OFFLINE", "1")
    try:  # a tiny run: 2 shapes, 6 images each
        config = TrainConfig(**{**FAST, "dataset": "shapes", "shapes_classes": 2, "shapes_per_class": 6})
        summary = engine.run(config, store=RunStore(home))
    finally:
        mp.undo()
    image = home / "digit.png"
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(image)
    return home, summary["run_id"], image


@pytest.mark.parametrize("k", ["0", "-1"])
def test_predict_refuses_a_top_k_below_one(tiny_run, monkeypatch, capsys, k):
    """Before: top-k 0 was an IndexError, -1 torch's "selected index k out of range"."""
    home, run_id, image = tiny_run
    monkeypatch.setenv("FTLAB_HOME", str(home))
    assert cli.main(["predict", "--run", run_id, "--top-k", k, str(image)]) == cli.EXIT_BAD_INPUT
    assert "top_k must be between 1" in capsys.readouterr().err
    assert cli.main(["predict", "--run", run_id, "--top-k", "3", "--json", str(image)]) == 0
    assert len(json.loads(capsys.readouterr().out)["top"]) == 2  # both classes: k is at most their number


def test_predict_options_are_validated_like_train_options():
    assert validate(PredictOptions("r1", "a.png", 5)) == []
    assert any("no run given" in p for p in validate(PredictOptions(" ", "a.png", 5)))
    assert any("top_k" in p for p in validate(PredictOptions("r1", "a.png", 0)))


def test_a_config_of_the_wrong_types_gets_sentences_not_a_type_error():
    """A config from a dict or the API with strings for numbers: before, a TypeError from `<=`."""
    problems = validate(TrainConfig(epochs="5", lr=True, flip=1, dataset=3.5))
    assert "epochs must be a whole number (got '5')." in problems
    assert "lr must be a number (got True)." in problems
    assert any(p.startswith("flip must be true or false") for p in problems)
    assert any(p.startswith("dataset must be a text") for p in problems)


# --- 2. environment settings: lazy, one parser, messages that name them -----------------

def test_a_bad_setting_does_not_break_the_import_or_commands_that_do_not_use_it():
    """Before: FTLAB_MAX_PIXELS=abc raised ValueError when ftlab.data was imported, in every command."""
    result = run_cli("stats", "--dataset", "shapes", "--shapes-classes", "2", "--shapes-per-class", "2",
                     env={"FTLAB_MAX_PIXELS": "abc"})
    assert result.returncode == cli.EXIT_BAD_INPUT and "Traceback" not in result.stderr
    assert "FTLAB_MAX_PIXELS='abc'" in result.stderr and "whole number" in result.stderr
    result = subprocess.run([sys.executable, "-c", "import ftlab.data, ftlab.cli, ftlab.engine"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "FTLAB_MAX_PIXELS": "abc"})
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name, value, words", [
    ("FTLAB_MAX_PIXELS", "abc", "whole number of at least 1"),
    ("FTLAB_MAX_PIXELS", "-5", "whole number of at least 1"),
    ("FTLAB_MAX_PIXELS", "1.5", "whole number"),
    ("FTLAB_MAX_PIXELS", "inf", "whole number"),
    ("FTLAB_ZIP_MAX_MB", "nan", "number greater than 0"),
    ("FTLAB_ZIP_MAX_MB", "0", "number greater than 0"),
    ("FTLAB_ZIP_MAX_FILES", "lots", "whole number of at least 1"),
    ("FTLAB_ZIP_MAX_RATIO", "0.5", "number of at least 1"),
    ("FTLAB_OFFLINE", "maybe", "neither on nor off"),
])
def test_every_setting_is_checked_before_a_run_with_its_name_and_value(capsys, home, monkeypatch, name, value,
                                                                        words):
    """Before: the zip limits fell back to their defaults silently, and FTLAB_OFFLINE=maybe meant on."""
    monkeypatch.setenv(name, value)
    assert cli.main(["stats", "--dataset", "digits"]) == cli.EXIT_BAD_INPUT
    assert cli.main(["train", *TINY]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"{name}={value!r}" in err and words in err
    assert no_runs_kept(home)


def test_a_data_folder_setting_that_is_a_file_is_named(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("FTLAB_DATA", str(tmp_path / "file"))
    problems = validate(TrainConfig(**FAST))
    assert any("FTLAB_DATA=" in p and "is not a folder" in p for p in problems)


def test_settings_are_read_when_used(monkeypatch):
    monkeypatch.setenv("FTLAB_ZIP_MAX_FILES", "1e3")
    assert paths.zip_limits()["max_members"] == 1000
    monkeypatch.setenv("FTLAB_MAX_PIXELS", "2_000")
    assert decoding.max_pixels() == 2000
    monkeypatch.delenv("FTLAB_MAX_PIXELS")
    assert decoding.max_pixels() == 100_000_000


def _folder_with_one_big_image(root: Path, side: int) -> data.Dataset:
    for c in "ab":
        (root / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (90 * i, 0, 0)).save(root / c / f"{i}.png")
    Image.new("L", (side, side), 128).save(root / "a" / "big.png")
    return data.load_dataset(str(root))


def test_a_pixel_limit_above_pils_own_takes_effect(tmp_path, monkeypatch):
    """PIL refuses images over twice its own MAX_IMAGE_PIXELS by itself; a larger FTLAB_MAX_PIXELS
    must still let them through. PIL's default (89 million) is lowered here so that the image can
    be small: 300 x 300 is more than twice the 1,000 of this PIL and less than our 100,000.
    Before: the image was skipped with PIL's DecompressionBombError."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setenv("FTLAB_MAX_PIXELS", "100000")
    ds = _folder_with_one_big_image(tmp_path / "set", 300)
    out = decoding.decode(ds, np.arange(len(ds)), 16)
    assert out.skipped == () and len(out.labels) == 5
    assert data.decode_image(tmp_path / "set" / "a" / "big.png", 16).shape == (3, 16, 16)


def test_a_pixel_limit_set_in_the_environment_refuses_larger_images_by_name(tmp_path, monkeypatch):
    """Before: the setting was read once at import, so setting it later did nothing."""
    monkeypatch.setenv("FTLAB_MAX_PIXELS", "10000")
    ds = _folder_with_one_big_image(tmp_path / "set", 300)
    out = decoding.decode(ds, np.arange(len(ds)), 16)
    assert len(out.skipped) == 1 and "big.png" in out.skipped[0] and "FTLAB_MAX_PIXELS" in out.skipped[0]
    # over twice PIL's limit too: PIL's own refusal is reported as ours
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setenv("FTLAB_MAX_PIXELS", "1500")
    out = decoding.decode(ds, np.arange(len(ds)), 16)
    assert len(out.skipped) == 1 and "FTLAB_MAX_PIXELS" in out.skipped[0]


# --- 3. what can be checked is checked before any work ----------------------------------

@pytest.mark.parametrize("args, words", [
    (["--strategy", "top-999"], "choose top-1 to top-4"),
    (["--frozen-blocks", "stem,nope"], "no block named nope"),
    (["--frozen-blocks", "stem,stage1,stage2,stage3,head"], "nothing would train"),
    (["--val-fraction", "0.5", "--test-fraction", "0.5"], "leave nothing to train on"),
])
def test_freeze_plans_that_cannot_work_are_refused_before_decoding(capsys, home, args, words):
    """Before: caught after decoding with a failed run record, or torch's "element 0 of tensors
    does not require grad" when every block was frozen."""
    assert cli.main(["train", *TINY, *args]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert words in err and "decoding" not in err
    assert no_runs_kept(home)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused_before_decoding(capsys, home):
    """Before: a raw torch error after decoding."""
    assert cli.main(["train", *TINY, "--device", "cuda"]) == cli.EXIT_BAD_INPUT
    assert "sees no CUDA GPU here; choose auto or cpu" in capsys.readouterr().err
    assert no_runs_kept(home)


@pytest.mark.skipif(bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
                    reason="this machine has MPS")
def test_mps_without_mps_is_refused(capsys):
    assert cli.main(["train", *TINY, "--device", "mps"]) == cli.EXIT_BAD_INPUT
    assert "MPS is not available here" in capsys.readouterr().err


def test_the_engine_refuses_a_bad_config_without_a_record(tmp_path):
    store = RunStore(tmp_path / "home")
    seen = []
    summary = engine.run(TrainConfig(**{**FAST, "strategy": "top-999"}), store=store, emit=seen.append)
    assert [type(e) for e in seen] == [events.RunFailed] and "top-999" in seen[0].message
    assert summary["stopped_reason"] == "error" and store.list() == []


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "mobilenet_v3_small", "regnet_y_400mf",
                                  "efficientnet_lite0"])
def test_the_blocks_known_without_weights_are_the_blocks_of_the_model(name):
    """The early check reads the blocks from the architecture on the meta device (RegNet, whose
    builder computes with tensors, is built for real); they must be what training freezes."""
    assert backbones.freezable_blocks(name) == tuple(backbones.create_model(name, 3, "random").param_blocks())


def test_images_that_cannot_fit_in_memory_are_refused_before_decoding(tmp_path, monkeypatch):
    """Before: decoding digits at 1024 px (5.6 GB) was ended by the OS (killed), not a message."""
    monkeypatch.setattr(cache, "free_memory_bytes", lambda: 1 << 20)
    seen = []
    engine.run(TrainConfig(**FAST), store=RunStore(tmp_path / "home"), emit=seen.append)
    assert isinstance(seen[-1], events.RunFailed) and "GB free here: choose an image size below" in seen[-1].message
    assert not any(isinstance(e, events.Preparing) and e.message.startswith("decoding") for e in seen)


# --- 4. lists in messages ---------------------------------------------------------------

def test_a_message_about_2000_classes_names_a_few_and_the_count(tmp_path, capsys):
    """Before: 26 KB naming every class."""
    for i in range(2000):
        (tmp_path / "many" / f"class{i:04d}").mkdir(parents=True)
        (tmp_path / "many" / f"class{i:04d}" / "only.png").write_bytes(b"")
    assert cli.main(["stats", "--dataset", str(tmp_path / "many")]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert len(err) < 1000 and "'class0000' (1)" in err and "and 1,990 more" in err


def test_some_names_few_items_whole_and_many_by_count():
    assert some(["a", "b"]) == "a, b"
    assert some(map(str, range(11))) == ", ".join(map(str, range(11)))  # "and 1 more" would be longer
    assert some(map(str, range(2000)), shown=3) == "0, 1, 2, … and 1,997 more"
    assert some(["caf\udce9"]) == "caf\\xe9"  # a file name that is not UTF-8 still prints


# --- 5. progress without the caching pass; sub-second durations -------------------------

def test_progress_and_time_left_leave_the_caching_pass_out(tmp_path, monkeypatch):
    """Caching is made to take 3 s. Before: the first epoch's rate and time left counted it
    (at most 64 images / 3 s, and at least 3 s per step for the steps left)."""
    compute = cache.compute

    def slow_compute(*args, **kw):
        time.sleep(3)
        return compute(*args, **kw)

    monkeypatch.setattr(cache, "compute", slow_compute)
    seen = []
    config = TrainConfig(**{**FAST, "strategy": "linear-probe", "epochs": 2})
    summary = engine.run(config, store=RunStore(tmp_path / "home"), emit=seen.append)
    steps = [e for e in seen if isinstance(e, events.Step)]
    first = steps[0]
    assert first.images_per_second > 64 / 3
    assert first.seconds_left < 3 * (2 * first.steps - 1)
    assert summary["cache_seconds"] >= 6  # train and val were cached: reported apart


def test_time_left_leaves_out_all_of_preparing_the_inputs(tmp_path, monkeypatch):
    """Preparing an epoch's inputs does more than the caching pass (finding features, putting them
    in the shared cache): 3.5 s of it on Lite0 and digits counted as training, and the first step
    said "3:54 left" for a run of one second. Here 3 s of it happens outside cache.compute."""
    real = engine._Trainer._inputs

    def slow_inputs(self, epoch):
        time.sleep(3)
        return real(self, epoch)

    monkeypatch.setattr(engine._Trainer, "_inputs", slow_inputs)
    seen = []
    engine.run(TrainConfig(**{**FAST, "strategy": "linear-probe", "epochs": 2}), store=RunStore(tmp_path / "home"),
               emit=seen.append)
    first = next(e for e in seen if isinstance(e, events.Step))
    assert first.images_per_second > 64 / 3
    assert first.seconds_left < 3 * (2 * first.steps - 1)


def test_durations_under_a_second_are_not_zero(capsys):
    assert explore.format_duration(0.06) == "0.06 s"
    cli._print_summary({"run_id": "r", "stopped_reason": "completed", "epochs_run": 1, "best_val_accuracy": 0.5,
                        "test_accuracy": None, "train_seconds": 0.06, "images_per_second": 9000.0,
                        "cache_seconds": 0.4})
    out = capsys.readouterr().out
    assert "0.06 s training (and 0.4 s caching)" in out


# --- the hostile pass: options, twice, and --help under a strict UTF-8 stdout ------------

@pytest.mark.parametrize("args", [
    ["--lr", "nan"], ["--lr", "inf"], ["--lr", "1e-400"], ["--epochs", "1000000000"], ["--image-size", "1"],
    ["--batch-size", "0"], ["--momentum", "1.5"], ["--dropout", "nan"], ["--seed", "2147483648"],
    ["--augment-views", "65"], ["--grad-clip", "inf"], ["--dataset", ""], ["--dataset", "\udcff"],
    ["--backbone", "\udcff"], ["--weights", "/"],
])
def test_hostile_numbers_and_names_are_sentences(capsys, home, args):
    """Guards: all but the empty data set name were refused before this pass too."""
    rest = [x for flag, value in zip(TINY[::2], TINY[1::2]) if flag not in args for x in (flag, value)]
    assert cli.main(["train", *rest, *args]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: the run cannot start:") and no_runs_kept(home)
    err.encode("utf-8")  # printable under a strict UTF-8 stream


def test_whole_numbers_in_range_messages_are_shown_in_full(capsys):
    assert cli.main(["train", "--seed", "2147483648"]) == cli.EXIT_BAD_INPUT
    assert "seed must be between 0 and 2,147,483,647 (got 2,147,483,648)" in capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    (["--strategy", "full", "--strategy", "top-2"], "--strategy is given twice ('full', then 'top-2')"),
    (["--flip", "--no-flip"], "--flip and --no-flip are both given"),
])
def test_an_option_given_twice_with_different_values_is_refused(capsys, args, words):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", *TINY, *args])
    assert exit_.value.code == 2 and words in capsys.readouterr().err


def test_an_option_repeated_with_the_same_value_is_fine(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "_train", lambda args: seen.append(args.epochs) or 0)
    assert cli.main(["train", "--epochs", "2", "--epochs", "2"]) == 0 and seen == [2]


def test_runs_delete_of_an_empty_id_is_not_a_listing(capsys):
    assert cli.main(["runs", "--delete", ""]) != 0
    assert "deleted" not in capsys.readouterr().out


HELP_OF_EVERY_COMMAND = """
import sys
from ftlab import cli
for command in ([], ["train"], ["stats"], ["predict"], ["runs"], ["datasets"], ["backbones"]):
    try:
        cli.main([*command, "--help"])
    except SystemExit as done:
        assert done.code == 0, command
    print("HELP-DONE", *command)
"""


def test_help_works_under_a_strict_utf8_stdout():
    """Guard: it worked before this pass, and the issue asks that it keep working."""
    result = subprocess.run([sys.executable, "-c", HELP_OF_EVERY_COMMAND], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("HELP-DONE") == 7 and result.stdout.count("usage: python -m ftlab") == 7


def test_the_app_names_a_setting_it_cannot_use_instead_of_raising(monkeypatch, tmp_path):
    """Before: FTLAB_MAX_PIXELS=abc was a ValueError in the app's first import of ftlab.data."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FTLAB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("FTLAB_ZIP_MAX_RATIO", "lots")
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    assert any("FTLAB_ZIP_MAX_RATIO='lots'" in e.value for e in at.error)


@pytest.mark.parametrize("name", ["FTLAB_HOME", "FTLAB_DATA"])
@pytest.mark.parametrize("value", ["/tmp/" + "x" * 5000, "~nobody-ftlab-test/runs"])
def test_a_folder_setting_the_os_cannot_look_up_is_named_not_a_traceback(capsys, tmp_path, monkeypatch, name, value):
    monkeypatch.setenv("FTLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(name, value)
    assert cli.main(["runs" if name == "FTLAB_HOME" else "stats"]) in (1, 2)
    err = capsys.readouterr().err
    assert f"{name} (" in err and "cannot be used as a path" in err and "Traceback" not in err


@pytest.mark.parametrize("name, shown", [("a" * 81, repr("a" * 60) + "…"), ("a\nb", repr("a\nb"))])
def test_a_refused_name_is_quoted_whole_or_cut_with_an_ellipsis(name, shown):
    problems = validate(TrainConfig(**{**FAST, "name": name}))
    assert any(p.startswith("name must be at most 80") and p.endswith(f"(got {shown}).") for p in problems)
