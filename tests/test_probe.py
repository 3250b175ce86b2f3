"""The layer-wise probe and the data-efficiency probe (`ftlab.probe`), its CLI and its charts."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ftlab import backbones, probe
from ftlab.cli import main
from ftlab.config import TrainConfig
from ftlab.errors import StopRequested
from ftlab.transforms import Preprocess, Preprocessing

SMALL = dict(backbone="small_cnn", weights="random", image_size=32, precision="fp32")
SHAPES = dict(dataset="shapes", shapes_per_class=16, **SMALL)  # 4 classes, 64 images: 51 train, 13 val


def _separable(root: Path, per_class: int = 10) -> Path:
    """Two classes that differ in brightness alone: dark noise and light noise."""
    rng = np.random.default_rng(0)
    for name, lo in (("dark", 0), ("light", 190)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(lo, lo + 60, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_one_accuracy_per_boundary_in_block_order():
    result = probe.run_probe(TrainConfig(**SHAPES), probe.ProbeOptions(per_class=""))
    # small_cnn's blocks with parameters, less the head (its pool has none)
    assert [d.block for d in result.depths] == ["stem", "stage1", "stage2", "stage3"]
    assert [d.depth for d in result.depths] == [1, 2, 3, 4]
    assert [d.features for d in result.depths] == [32, 64, 128, 256]
    for d in result.depths:
        assert 0 <= d.low <= d.accuracy <= d.high <= 1
        assert 0 <= d.train_accuracy <= 1
    assert (result.train_images, result.val_images) == (51, 13)  # a stratified 20% of 64
    assert result.efficiency == () and result.at == ""
    assert result.precision.name == "fp32"
    assert set(result.seconds) == {"decode", "forward", "fits", "efficiency"}


@pytest.mark.parametrize("graph", [True, False])
def test_pooled_features_are_the_block_outputs_pooled_by_hand(graph):
    torch.manual_seed(0)
    model = backbones.create_model("small_cnn", 3, "random").eval()
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    prep = Preprocess(Preprocessing.for_backbone("small_cnn", 32), torch.device("cpu"))
    probed = probe.boundaries(model)
    sample = prep(images[:8], train=False)
    fast, choice = probe.accelerated(model, probed, sample, TrainConfig(fast_prefix=graph, **SMALL),
                                     torch.device("cpu"))
    assert choice.name == "fp32"
    features = probe.pooled_features(fast.fn, images, prep, probe.widths(model, probed, sample), probed,
                                     batch_size=4)  # several batches
    expected, x = {}, prep(images, train=False)
    with torch.no_grad():
        for name, block in model.named_children():
            x = block(x)
            if name in probed:
                expected[name] = x.mean((2, 3))
    assert list(features) == list(expected) == ["stem", "stage1", "stage2", "stage3"]
    for name in expected:
        # the fast graph folds BatchNorm into the convolutions: equal up to fp32 re-association
        torch.testing.assert_close(features[name], expected[name], rtol=1e-4, atol=1e-5)


def test_pool_keeps_a_flat_output_and_averages_tokens():
    flat, tokens = torch.randn(2, 5), torch.randn(2, 7, 5)
    assert torch.equal(probe.pool(flat), flat)
    torch.testing.assert_close(probe.pool(tokens), tokens.mean(1))


def test_a_perfectly_separable_signal_scores_one_at_the_last_boundary(tmp_path):
    folder = _separable(tmp_path / "bright")
    result = probe.run_probe(TrainConfig(dataset=str(folder), **SMALL), probe.ProbeOptions(per_class="2,all"))
    last = result.depths[-1]
    assert last.block == "stage3"
    assert (last.accuracy, last.low, last.high) == (1.0, 1.0, 1.0)
    assert result.classes == ("dark", "light")
    assert [e.per_class for e in result.efficiency] == [2, None]
    assert result.efficiency[-1].mean == 1.0


def test_data_efficiency_ks_draws_and_the_skipped_k():
    result = probe.run_probe(TrainConfig(**SHAPES), probe.ProbeOptions(per_class="20,2,5,10,all", draws=3))
    assert result.at == "stage3"
    assert [e.per_class for e in result.efficiency] == [2, 5, 10, None]
    assert [e.label for e in result.efficiency] == ["2", "5", "10", "all"]
    assert [len(e.accuracies) for e in result.efficiency] == [3, 3, 3, 1]
    assert [e.train_images for e in result.efficiency] == [8, 20, 40, 51]
    assert result.efficiency[-1].images_per_class == 51 / 4
    for e in result.efficiency:
        assert e.mean == pytest.approx(np.mean(e.accuracies))
        assert 0 <= e.low <= e.mean <= e.high <= 1
    assert len(result.skipped) == 1 and result.skipped[0].startswith("20 images per class")
    assert "has only 12 training images" in result.skipped[0]


def test_draws_take_k_images_of_each_class_and_are_seeded():
    labels = np.repeat([0, 1, 2], [5, 7, 9])
    a = probe.draw_per_class(labels, 3, np.random.default_rng([0, 3, 1]))
    b = probe.draw_per_class(labels, 3, np.random.default_rng([0, 3, 1]))
    assert np.array_equal(a, b) and len(set(a)) == 9
    assert np.bincount(labels[a]).tolist() == [3, 3, 3]
    kept, skipped = probe.efficiency_plan(labels, (2, 5, 6, None), ("a", "b", "c"))
    assert kept == (2, 5, None) and len(skipped) == 1 and skipped[0].startswith("6 images per class")


def test_the_interval_against_scipy_and_by_hand():
    from scipy import stats

    from ftlab.compare import bootstrap_draws_interval, bootstrap_interval  # the probe's are the comparison's

    correct = np.r_[np.ones(70), np.zeros(30)]
    low, high = bootstrap_interval(correct, resamples=5000, seed=1)
    ref = stats.bootstrap((correct,), np.mean, n_resamples=5000, method="percentile", random_state=1,
                          confidence_level=0.95).confidence_interval
    assert low == pytest.approx(ref.low, abs=0.02) and high == pytest.approx(ref.high, abs=0.02)
    assert low < 0.7 < high
    assert bootstrap_interval(np.ones(5)) == (1.0, 1.0)
    # several draws: rows that disagree widen the interval beyond one row's
    rows = np.array([np.r_[np.ones(90), np.zeros(10)], np.r_[np.ones(50), np.zeros(50)]])
    wide = bootstrap_draws_interval(rows, seed=1)
    assert wide[0] < 0.55 and wide[1] > 0.85


def test_per_class_parsing_and_bad_options():
    assert probe.parse_per_class("all,3,1") == (1, 3, None)
    with pytest.raises(ValueError, match="per_class takes whole numbers"):
        probe.parse_per_class("0")
    problems = probe.option_problems(probe.ProbeOptions(draws=0, c=-1.0, per_class="two"))
    assert len(problems) == 3 and any("draws must be between 1 and 100" in p for p in problems)


def test_a_stop_ends_the_probe():
    with pytest.raises(StopRequested):
        probe.run_probe(TrainConfig(**SHAPES), should_stop=lambda: True)


def test_cli_json(capsys):
    code = main(["probe", "--dataset", "shapes", "--shapes-per-class", "16", "--backbone", "small_cnn",
                 "--weights", "random", "--image-size", "32", "--precision", "fp32", "--per-class", "2,all",
                 "--draws", "2", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [d["block"] for d in out["depths"]] == ["stem", "stage1", "stage2", "stage3"]
    assert set(out["depths"][0]) == {"block", "depth", "features", "accuracy", "low", "high", "train_accuracy",
                                     "converged"}
    assert [e["label"] for e in out["efficiency"]] == ["2", "all"]
    assert len(out["efficiency"][0]["accuracies"]) == 2
    assert out["precision"]["name"] == "fp32" and out["at"] == "stage3" and out["skipped"] == []
    assert len(out["classes"]) == 4 and out["train_images"] == 51 and out["val_images"] == 13


def test_cli_table(capsys):
    code = main(["probe", "--dataset", "shapes", "--shapes-per-class", "16", "--backbone", "small_cnn",
                 "--weights", "random", "--image-size", "32", "--precision", "fp32", "--per-class", "2,50"])
    assert code == 0
    out = capsys.readouterr().out
    assert "stage3" in out and "data efficiency at stage3" in out
    assert "skipped: 50 images per class" in out


@pytest.mark.parametrize("argv, words", [
    (["--dataset", "no-such-set"], "unknown data set 'no-such-set'"),
    (["--dataset", "shapes", "--per-class", "2,x"], "per_class takes whole numbers"),
    (["--dataset", "shapes", "--at", "stage9"],
     "no block 'stage9' to probe at in small_cnn: choose one of stem, stage1, stage2, stage3"),
    (["--dataset", "shapes", "--draws", "0"], "draws must be between 1 and 100"),
])
def test_cli_bad_input_is_a_sentence(capsys, argv, words):
    base = ["probe", "--backbone", "small_cnn", "--weights", "random", "--image-size", "32"]
    assert main(base + argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_cli_a_folder_with_one_class(tmp_path, capsys):
    folder = _separable(tmp_path / "one")
    for f in (folder / "light").iterdir():
        f.unlink()
    (folder / "light").rmdir()
    assert main(["probe", "--dataset", str(folder), "--backbone", "small_cnn", "--weights", "random"]) == 2
    assert "at least 2 classes are needed" in capsys.readouterr().err


def test_charts_draw_the_band_and_the_curve():
    from ui import charts

    depths = [{"block": "stem", "depth": 1, "features": 32, "accuracy": 0.6, "low": 0.5, "high": 0.7},
              {"block": "stage1", "depth": 2, "features": 64, "accuracy": 0.8, "low": 0.7, "high": 0.9}]
    fig = charts.probe_depths(depths, majority=0.5)
    band = next(t for t in fig.data if t.fill == "toself")
    assert list(band.y) == [0.7, 0.9, 0.7, 0.5]
    line = next(t for t in fig.data if t.name == "val accuracy")
    assert list(line.y) == [0.6, 0.8] and list(fig.layout.xaxis.ticktext) == ["stem", "stage1"]
    points = [{"label": "2", "images_per_class": 2, "mean": 0.6, "low": 0.5, "high": 0.7, "accuracies": [0.6, 0.6]},
              {"label": "all", "images_per_class": 120.5, "mean": 0.9, "low": 0.85, "high": 0.95,
               "accuracies": [0.9]}]
    fig = charts.data_efficiency(points, "conv_head")
    assert fig.layout.xaxis.type == "log"
    curve = next(t for t in fig.data if t.name == "val accuracy (mean of the draws)")
    assert list(curve.x) == [2, 120.5] and list(curve.y) == [0.6, 0.9]
    assert "conv_head" in fig.layout.title.text


def test_fit_features_from_given_features():
    """Features from elsewhere (a sweep's cache): a boundary whose features carry the class scores 1.0, one of
    pure noise about chance."""
    rng = np.random.default_rng(0)
    train_y, val_y = np.repeat([0, 1], 40), np.repeat([0, 1], 200)
    noise = (rng.normal(size=(80, 8)), rng.normal(size=(400, 8)))
    signal = tuple(rng.normal(size=(len(y), 4)) + 6 * y[:, None] for y in (train_y, val_y))
    fitted = probe.fit_features({"noise": noise, "signal": signal}, train_y, val_y, ("a", "b"),
                                probe.ProbeOptions(per_class="2,all", draws=3))
    assert [d.block for d in fitted.depths] == ["noise", "signal"]
    assert fitted.depths[1].accuracy == 1.0
    assert 0.35 < fitted.depths[0].accuracy < 0.65 and fitted.depths[0].low < 0.5 < fitted.depths[0].high
    assert fitted.at == "signal" and [e.label for e in fitted.efficiency] == ["2", "all"]
    assert fitted.majority == 0.5


def test_cli_a_weights_file_that_does_not_fit(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    torch.save({"stem.0.weight": torch.zeros(1)}, bad)
    assert main(["probe", "--dataset", "shapes", "--shapes-per-class", "8", "--backbone", "small_cnn",
                 "--weights", str(bad), "--image-size", "32"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "does not fit small_cnn" in err and "Traceback" not in err
