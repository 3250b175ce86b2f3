"""``python -m ftlab`` as a user runs it: the contract of SPEC.md, bad input, real training."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ftlab import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FTLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FTLAB_OFFLINE", "1")
    return tmp_path / "home"


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The CLI in its own process, as a user starts it."""
    return subprocess.run([sys.executable, "-m", "ftlab", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=os.environ.copy())


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def image_folder(root: Path, counts: dict[str, int], size: int = 24) -> Path:
    rng = np.random.default_rng(0)
    for k, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            pixels = np.full((size, size, 3), 40 + 150 * k, np.uint8) + rng.integers(0, 30, (size, size, 3), np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_listings(capsys):
    assert cli.main(["datasets", "--json"]) == 0
    names = {d["name"] for d in json.loads(capsys.readouterr().out)}
    assert {"digits", "shapes", "hymenoptera", "cifar10", "mnist", "fashion-mnist", "flowers102", "pets"} <= names
    assert cli.main(["backbones", "--json"]) == 0
    rows = {b["name"]: b for b in json.loads(capsys.readouterr().out)}
    assert rows["efficientnet_lite0"]["imagenet_offline"] is True
    assert {"resnet18", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny",
            "regnet_y_400mf", "densenet121", "vit_b_16", "small_cnn"} <= set(rows)


@pytest.mark.parametrize("flag, value, valid", [("--dataset", "imagenette", "digits"),
                                                ("--backbone", "resnet9000", "efficientnet_lite0"),
                                                ("--strategy", "freeze-half", "linear-probe")])
def test_unknown_names_exit_non_zero_listing_the_valid_ones(capsys, flag, value, valid):
    assert cli.main(["train", flag, value]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert value in err and valid in err


def test_out_of_range_numbers_say_the_range(capsys):
    assert cli.main(["train", "--lr", "50", "--epochs", "0"]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "lr must be between" in err and "epochs must be between 1" in err


def test_stats_of_digits_and_of_a_long_tail(capsys):
    assert cli.main(["stats", "--dataset", "digits", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_classes"] == 10 and out["figures"]["all"]["normalised_entropy"] > 0.99
    assert sum(out["counts"]["all"]) == 1797

    assert cli.main(["stats", "--dataset", "digits", "--imbalance-ratio", "10", "--json"]) == 0
    tail = json.loads(capsys.readouterr().out)
    counts = np.array(tail["counts"]["train"])
    assert counts.max() / counts.min() == pytest.approx(10, rel=0.05)
    p = counts / counts.sum()
    by_hand = -(p * np.log(p)).sum() / math.log(10)
    assert tail["figures"]["train"]["normalised_entropy"] == pytest.approx(by_hand)
    assert by_hand < out["figures"]["train"]["normalised_entropy"]


def test_a_folder_with_one_class_is_refused(tmp_path, capsys):
    folder = image_folder(tmp_path / "one", {"cats": 5})
    assert cli.main(["stats", "--dataset", str(folder)]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"{folder}: found only the class 'cats'; at least 2 classes are needed. " \
           "Expected root/<class>/<images> or root/train|val|test/<class>/<images>." in err
    assert "Traceback" not in err


def test_a_class_with_one_image_is_named(tmp_path, capsys):
    folder = image_folder(tmp_path / "few", {"cats": 5, "dogs": 1})
    assert cli.main(["stats", "--dataset", str(folder)]) == cli.EXIT_BAD_INPUT
    assert "dogs" in capsys.readouterr().err


def test_a_corrupt_image_is_skipped_and_counted(tmp_path):
    folder = image_folder(tmp_path / "pets", {"cats": 12, "dogs": 12})
    (folder / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff this is not a jpeg")
    result = run_cli("train", "--dataset", str(folder), "--backbone", "small_cnn", "--weights", "random",
                     "--strategy", "full", "--epochs", "1", "--image-size", "16", "--json")
    assert result.returncode == 0, result.stderr
    summary = last_json(result.stdout)
    assert summary["skipped_files"] == 1 and summary["epochs_run"] == 1
    assert "skipped 1 file" in result.stderr and "broken.jpg" in result.stderr


@pytest.mark.slow
def test_digits_linear_probe_on_lite0_then_runs_and_predict(tmp_path):
    """SPEC's first check: the offline pretrained backbone learns digits in 5 epochs at 64 px."""
    result = run_cli("train", "--dataset", "digits", "--backbone", "efficientnet_lite0", "--weights", "imagenet",
                     "--strategy", "linear-probe", "--epochs", "5", "--image-size", "64", "--json")
    assert result.returncode == 0, result.stderr
    summary = last_json(result.stdout)
    assert summary["best_val_accuracy"] >= 0.85, summary
    assert summary["epochs_run"] == 5 and summary["stopped_reason"] == "completed"
    assert summary["trainable_params"] == 1280 * 10 + 10  # the linear head alone
    assert "epoch 5/5" in result.stderr  # progress goes to stderr, not stdout
    assert len(result.stdout.strip().splitlines()) == 1

    runs = run_cli("runs", "--json")
    assert [r["id"] for r in json.loads(runs.stdout)] == [summary["run_id"]]

    from sklearn.datasets import load_digits
    digit = load_digits().images[3]  # a 3, drawn as the data set draws it: dark ink on white
    path = tmp_path / "three.png"
    Image.fromarray(np.uint8(255 - digit * 255 / 16)).resize((64, 64)).save(path)
    pred = run_cli("predict", "--run", summary["run_id"], str(path), "--json")
    assert pred.returncode == 0, pred.stderr
    top = last_json(pred.stdout)["top"]
    assert len(top) == 5 and sum(p for _, p in top) <= 1.0001
    assert top[0][0] == "3"


@pytest.mark.slow
def test_pretrained_weights_transfer_to_ants_and_bees(hymenoptera):
    """SPEC's second check: ImageNet weights make the linear probe >= 0.90; random weights are
    at least 0.20 lower. One val image is 0.65 points."""
    accuracy = {}
    for weights in ("imagenet", "random"):
        result = run_cli("train", "--dataset", str(hymenoptera), "--backbone", "efficientnet_lite0", "--weights",
                         weights, "--strategy", "linear-probe", "--epochs", "10", "--image-size", "224", "--json")
        assert result.returncode == 0, result.stderr
        summary = last_json(result.stdout)
        assert summary["epochs_run"] == 10
        accuracy[weights] = summary["best_val_accuracy"]
    assert accuracy["imagenet"] >= 0.90, accuracy
    assert accuracy["imagenet"] - accuracy["random"] >= 0.20, accuracy


def test_an_image_size_the_backbone_cannot_take_is_explained(capsys):
    assert cli.main(["train", "--backbone", "vit_b_16", "--weights", "random", "--image-size", "64"]) == 2
    assert "vit_b_16 takes only 224 px images (got 64)" in capsys.readouterr().err
    assert cli.main(["train", "--backbone", "resnet18", "--weights", "random", "--image-size", "20"]) == 2
    assert "needs images of at least 32 px (got 20)" in capsys.readouterr().err
