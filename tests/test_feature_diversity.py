"""Diversity in feature space: the Vendi score against hand-computed cases, near-duplicates found (and
only they) among planted copies, spreads and nearest classes, the features kept on disk, the split
without duplicates, the suggestions, and `stats --feature-diversity`."""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ftlab import cli, data, feature_diversity as fd, features
from ftlab.config import TrainConfig, validate

# --- the Vendi score --------------------------------------------------------------------


def test_identical_items_score_one():
    x = np.tile([0.3, -1.2, 2.0, 0.5], (9, 1))
    assert fd.vendi_score(x) == pytest.approx(1.0, abs=1e-9)
    assert fd.vendi_score(x * np.arange(1, 10)[:, None]) == pytest.approx(1.0, abs=1e-9)  # lengths do not count


@pytest.mark.parametrize("k", [2, 3, 7])
def test_k_orthogonal_items_score_k(k):
    rng = np.random.default_rng(k)
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))  # orthonormal columns, then scaled: still orthogonal
    x = (q[:, :k] * rng.uniform(0.5, 3, k)).T
    assert fd.vendi_score(x) == pytest.approx(k, rel=1e-9)


def test_two_items_at_cosine_one_half():
    # K = [[1, .5], [.5, 1]]; K/2 has eigenvalues 3/4 and 1/4:
    # H = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.215762 + 0.346574 = 0.562335, e^H = 1.754765
    x = np.array([[1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    assert fd.vendi_score(x) == pytest.approx(1.754765, abs=1e-6)


def test_two_copies_and_one_other_image():
    # K = [[1,1,0],[1,1,0],[0,0,1]]; K/3 has eigenvalues 2/3, 1/3, 0: e^H = 1.889882
    x = np.array([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1.0]])
    assert fd.vendi_score(x) == pytest.approx(1.889882, abs=1e-6)


def test_many_images_decompose_the_small_matrix_to_the_same_score():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5))  # n > d: the (d, d) Gram matrix
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    eig = np.clip(np.linalg.eigvalsh(z @ z.T / 40), 0, None)  # the (n, n) definition itself
    eig = eig[eig > 1e-12]
    assert fd.vendi_score(x) == pytest.approx(math.exp(-(eig * np.log(eig)).sum()), rel=1e-9)


# --- near-duplicates --------------------------------------------------------------------

def _planted(seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """60 random directions in 256-d (any two have |cosine| < 0.4) and 6 copies of some of them, each
    with noise of a tenth of its length (cosine to the original about 0.99)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(60, 256))
    originals = [3, 10, 11, 25, 40, 59]
    copies = base[originals] + rng.normal(size=(6, 256)) * 0.1 * np.linalg.norm(base[originals], axis=1,
                                                                                   keepdims=True) / 16
    return np.vstack([base, copies]), [(o, 60 + i) for i, o in enumerate(originals)]


def test_planted_copies_are_all_found_and_nothing_else():
    x, planted = _planted()
    found = [(i, j) for i, j, _ in fd.similar_pairs(x)]
    assert sorted(found) == sorted(planted)


def test_copies_across_splits_name_the_held_out_image_first():
    x, planted = _planted(1)
    train, held = x[:60], x[60:]
    found = {(i, j) for i, j, _ in fd.similar_pairs(held, train)}
    assert found == {(i, o) for i, (o, _) in enumerate(planted)}
    splits = np.array(["train"] * 60 + ["val"] * 6)
    indices = np.arange(100, 166)
    within, across = fd.duplicate_pairs(x, splits, indices)
    assert within == [] and {(p.split_a, p.index_a, p.index_b) for p in across} == \
        {("val", 160 + i, 100 + o) for i, (o, _) in enumerate(planted)}
    train_out, held_out = fd.to_drop(within, across)
    assert train_out == set() and held_out == set(range(160, 166))


def test_a_group_of_training_copies_keeps_its_first():
    x = np.array([[1.0, 0, 0], [0, 1.0, 0], [0.999, 0.01, 0], [1.0, 0.02, 0], [0, 0, 1.0]])
    within, across = fd.duplicate_pairs(x, np.array(["train"] * 5), np.arange(5))
    assert {(p.index_a, p.index_b) for p in within} == {(0, 2), (0, 3), (2, 3)}
    assert fd.to_drop(within, across) == ({2, 3}, set())


def test_chunks_find_the_same_pairs_as_one_matrix(monkeypatch):
    x, planted = _planted(2)
    monkeypatch.setattr(fd, "_CHUNK", 7)
    assert sorted((i, j) for i, j, _ in fd.similar_pairs(x)) == sorted(planted)


# --- spread, nearest classes, the map ---------------------------------------------------

def test_spread_and_nearest_classes_by_hand():
    # class 0: (1, 0) and (0.6, 0.8), centroid (0.8, 0.4), each sqrt(0.04 + 0.16) = 0.4472 away;
    # class 1: (1, 0.05) alone, normalised (0.998752, 0.049938)
    z = np.array([[1.0, 0], [0.6, 0.8], [1.0, 0.05]])
    labels = np.array([0, 0, 1])
    centroids, spreads = fd.class_spread(z, labels, 2)
    assert spreads.tolist() == pytest.approx([math.sqrt(0.2), 0.0])
    # nearest others: row 0 -> row 2 (cosine 0.9988 against 0.6), row 1 -> row 2 (0.639 against 0.6),
    # row 2 -> row 0: all three images have their nearest neighbour in the other class
    pairs = fd.nearest_class_pairs(z, labels, centroids, ("a", "b"))
    assert len(pairs) == 1 and pairs[0].mixed == pytest.approx(1.0)
    assert pairs[0].distance == pytest.approx(math.hypot(0.998752 - 0.8, 0.049938 - 0.4), abs=1e-5)


@pytest.mark.parametrize("method", fd.MAP_METHODS)
def test_the_map_has_a_point_per_image(method):
    rng = np.random.default_rng(0)
    xy = fd.feature_map(rng.normal(size=(30, 16)), method)
    assert xy.shape == (30, 2) and np.isfinite(xy).all()


def test_an_unknown_map_method_is_refused():
    with pytest.raises(ValueError, match="pca, tsne"):
        fd.feature_map(np.ones((5, 2)), "umap")


# --- suggestions ------------------------------------------------------------------------

def _report(classes, across=0, mixed=0.05) -> fd.FeatureReport:
    return fd.FeatureReport("d", "b", "imagenet weights", 128, fd.DUPLICATE_THRESHOLD, 30, 10.0, 0.33,
                            tuple(classes), (), (), 0, across, 0, across,
                            (fd.ClassPair("a", "b", mixed, 0.3),))


def test_a_class_of_near_copies_is_told_to_vary_or_augment():
    classes = [fd.ClassFigures("a", 10, 8.0, 0.8, 0.5), fd.ClassFigures("b", 10, 7.0, 0.7, 0.5),
               fd.ClassFigures("c", 10, 1.5, 0.15, 0.1)]
    tips = fd.suggestions(_report(classes))
    assert len(tips) == 1 and "'c'" in tips[0].title and "collect more varied" in tips[0].title
    assert "1.5 distinct of 10" in tips[0].reason and "75%" in tips[0].reason  # the others' median share
    assert tips[0].setting == {"random_crop": True, "flip": True}


def test_copies_across_splits_and_overlapping_classes_are_suggestions():
    classes = [fd.ClassFigures("a", 10, 8.0, 0.8, 0.5), fd.ClassFigures("b", 10, 7.0, 0.7, 0.5)]
    assert fd.suggestions(_report(classes)) == []
    tips = fd.suggestions(_report(classes, across=3, mixed=0.4))
    assert [t.setting for t in tips] == [{"drop_duplicates": True}, {"strategy": "top-2"}]
    assert "3 held-out" in tips[0].title and "40%" in tips[1].reason


# --- the features on disk, and the split without duplicates -----------------------------

def _shapes(**kw) -> TrainConfig:
    return TrainConfig(**{"dataset": "shapes", "shapes_classes": 2, "shapes_per_class": 8, "image_size": 32, **kw})


@pytest.mark.slow  # three forward passes of Lite0: 85 s on the loaded 2-core machine
def test_features_are_computed_once_and_kept_on_disk(tmp_path):
    config = _shapes()
    ds = data.load_for(config)
    info = {}
    first = features.pooled(config, ds, np.arange(10), info=info)
    assert info["computed"] == 10 and first[1].shape == (10, 1280) and first[1].dtype == np.float32
    files = list((tmp_path / "ftlab-home" / "features").glob("*.npz"))
    assert len(files) == 1
    again = {}
    second = features.pooled(config, ds, np.arange(16), info=again)  # six more: only they are computed
    assert again["computed"] == 6
    np.testing.assert_array_equal(second[1][:10], first[1])
    assert features.cached(config, np.arange(16)) and not features.cached(replace(config, image_size=48),
                                                                            np.arange(16))
    files[0].write_bytes(b"not a numpy file")  # damaged: recomputed, never trusted
    damaged = {}
    third = features.pooled(config, ds, np.arange(16), info=damaged)
    assert damaged["computed"] == 16
    # the same images in other batches (16 at once, not 10 then 6): kernels may sum in another order
    np.testing.assert_allclose(third[1], second[1], rtol=1e-4, atol=1e-5)


def test_random_weights_are_judged_by_the_reference_backbone():
    config = _shapes(backbone="small_cnn", weights="random")
    source = features.source_for(config, reference_if_random=True)
    assert (source.backbone, source.weights, source.image_size) == ("efficientnet_lite0", "imagenet", 32)
    assert features.source_for(_shapes(image_size=None)).image_size == features.FEATURE_SIZE


def test_drop_duplicates_is_an_option_with_a_flag_and_is_checked():
    assert TrainConfig().drop_duplicates is False
    args = cli._parser().parse_args(["train", "--drop-duplicates"])
    assert args.drop_duplicates is True
    assert any("drop_duplicates must be true or false" in p for p in validate(TrainConfig(drop_duplicates="yes")))


def _copy_photos(source: Path, dest: Path, per_class: int) -> None:
    for split in ("train", "val"):
        for cls in ("ants", "bees"):
            (dest / split / cls).mkdir(parents=True)
            for f in sorted((source / split / cls).glob("*.jpg"))[:per_class]:
                shutil.copyfile(f, dest / split / cls / f.name)


def _plant(dest: Path) -> list[tuple[str, str]]:
    """An exact copy of a training ant in val, a halved copy of a training bee re-encoded at JPEG quality 60 in
    train, a three-quarter-size copy of a training ant re-encoded at quality 40 in val: (copy, original) paths."""
    from PIL import Image

    ants, bees = sorted((dest / "train" / "ants").glob("*.jpg")), sorted((dest / "train" / "bees").glob("*.jpg"))
    exact = dest / "val" / "ants" / f"zz_copy_{ants[0].name}"
    shutil.copyfile(ants[0], exact)
    planted = [(str(exact), str(ants[0]))]
    for original, copy, scale, quality in ((bees[1], dest / "train" / "bees" / f"zz_small_{bees[1].name}", 0.5, 60),
                                           (ants[2], dest / "val" / "ants" / f"zz_small_{ants[2].name}", 0.75, 40)):
        with Image.open(original) as im:
            size = (round(im.width * scale), round(im.height * scale))
            im.convert("RGB").resize(size, Image.BICUBIC).save(copy, quality=quality)
        planted.append((str(copy), str(original)))
    return planted


@pytest.mark.slow
def test_planted_copies_of_real_photos_are_found_and_dropped(hymenoptera, tmp_path):
    folder = tmp_path / "photos"
    _copy_photos(hymenoptera, folder, per_class=20)
    planted = _plant(folder)
    config = TrainConfig(dataset=str(folder))
    ds = data.load_for(config)
    index = {f: i for i, f in enumerate(ds._files)}
    report, embedded = features.figures(config, ds)
    found = {frozenset((p.index_a, p.index_b)) for p in report.within + report.across}
    assert found == {frozenset((index[c], index[o])) for c, o in planted}  # all found, none spurious
    assert (report.within_count, report.across_count, report.drop_train, report.drop_held) == (1, 2, 1, 2)
    assert report.computed == len(embedded.indices) == len(ds) and len(report.classes) == 2
    assert 1 < report.vendi < report.train_images
    split = data.split_for(replace(config, drop_duplicates=True), ds)
    whole = data.split_for(config, ds)
    assert set(whole.val) - set(split.val) == {index[planted[0][0]], index[planted[2][0]]}
    assert set(whole.train) - set(split.train) == {index[planted[1][0]]}  # the copy goes, its original stays


# --- stats ------------------------------------------------------------------------------

def test_stats_adds_the_feature_figures_when_asked(capsys):
    assert cli.main(["stats", "--dataset", "shapes", "--shapes-classes", "2", "--shapes-per-class", "8",
                     "--json"]) == 0
    assert "feature_diversity" not in json.loads(capsys.readouterr().out)  # off by default: stats stays fast
    assert cli.main(["stats", "--dataset", "shapes", "--shapes-classes", "2", "--shapes-per-class", "8",
                     "--feature-diversity", "--image-size", "32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    f = out["feature_diversity"]
    assert f["backbone"] == "efficientnet_lite0" and f["image_size"] == 32 and f["train_images"] == 12
    assert set(f["per_class_vendi"]) == {"circle", "square"} and 1 <= f["vendi"] <= 12
    assert {"within", "across", "within_count", "across_count", "nearest"} <= set(f)
    assert all(1 <= c["vendi"] <= c["images"] + 1e-9 for c in f["classes"])


def test_stats_says_what_is_wrong_with_the_backbone(capsys):
    assert cli.main(["stats", "--dataset", "shapes", "--feature-diversity", "--backbone", "nope"]) == \
        cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err
