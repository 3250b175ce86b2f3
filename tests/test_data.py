"""Tests for ftlab.data: loading, splitting, long tails and decoding, all offline on temporary folders."""
from __future__ import annotations

import doctest
import io
import json
import stat
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ftlab.data.splits
import ftlab.diversity
from ftlab.data import (
    DataError,
    DatasetUnavailable,
    ShapesOptions,
    Split,
    decode,
    decode_image,
    list_datasets,
    load_dataset,
    long_tail_indices,
    make_split,
)
from ftlab.data.dataset import make_dataset

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 160, 0)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch, tmp_path):
    """Every test is offline and writes only under tmp_path, whatever the environment says."""
    monkeypatch.setenv("FTLAB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FTLAB_DATA", raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to use the network")

    monkeypatch.setattr("urllib.request.urlopen", refuse)


def _pixel(decoded_image: torch.Tensor, y: int, x: int) -> np.ndarray:
    return decoded_image[:, y, x].numpy().astype(int)


# ---------------------------------------------------------------- registry


def test_list_datasets_names_the_builtins_and_downloads():
    infos = {i.name: i for i in list_datasets()}
    assert set(infos) == {"digits", "shapes", "hymenoptera", "cifar10", "mnist", "fashion-mnist", "flowers102", "pets"}
    assert infos["digits"].kind == "builtin" and infos["digits"].num_classes == 10
    assert infos["cifar10"].kind == "download"


def test_unknown_name_lists_valid_choices(tmp_path):
    with pytest.raises(DataError, match="digits") as e:
        load_dataset("no-such-set", data_dir=tmp_path)
    assert "hymenoptera" in str(e.value) and "shapes" in str(e.value)


# ---------------------------------------------------------------- digits


def test_digits_matches_scikit_learn():
    from sklearn.datasets import load_digits

    ref = load_digits()
    ds = load_dataset("DIGITS")  # names are case-insensitive
    assert len(ds) == 1797 and ds.classes == tuple("0123456789")
    assert ds.labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(ds.labels), np.bincount(ref.target))
    assert set(ds.given_split) == {""}


def test_digits_decode_keeps_the_strokes():
    from sklearn.datasets import load_digits

    source = load_digits().images  # 0..16 ink, drawn dark on white
    ds = load_dataset("digits")
    d = decode(ds, np.arange(10), 32)
    assert d.images.shape == (10, 3, 32, 32) and d.images.dtype == torch.uint8
    assert torch.equal(d.images[:, 0], d.images[:, 1]) and torch.equal(d.images[:, 0], d.images[:, 2])
    for i in range(10):
        # Average each 4x4 block back to 8x8: it must follow the source digit.
        blocks = d.images[i, 0].float().reshape(8, 4, 8, 4).mean((1, 3)).numpy()
        assert np.corrcoef(blocks.ravel(), source[i].ravel())[0, 1] < -0.9
        y, x = np.unravel_index(np.argmax(source[i]), (8, 8))  # a source pixel of 16: full ink
        assert d.images[i, 0, 4 * y + 2, 4 * x + 2] < 105
        y, x = np.unravel_index(np.argmin(source[i]), (8, 8))  # a source pixel of 0: paper
        assert d.images[i, 0, 4 * y + 2, 4 * x + 2] > 150
    assert torch.equal(d.labels, torch.from_numpy(ds.labels[:10]))


# ---------------------------------------------------------------- shapes


def test_shapes_deterministic_with_counts_as_asked():
    opts = ShapesOptions(num_classes=3, per_class=(5, 7, 9), size=32, seed=3)
    a, b = load_dataset("shapes", shapes=opts), load_dataset("shapes", shapes=opts)
    assert a.classes == ("circle", "square", "triangle")
    assert np.bincount(a.labels).tolist() == [5, 7, 9]
    np.testing.assert_array_equal(a.labels, b.labels)
    da, db = decode(a, np.arange(len(a)), 32), decode(b, np.arange(len(b)), 32)
    assert da.images.shape == (21, 3, 32, 32)
    assert torch.equal(da.images, db.images)
    other = decode(load_dataset("shapes", shapes=ShapesOptions(3, (5, 7, 9), 32, seed=4)), np.arange(21), 32)
    assert (other.images != da.images).float().mean() > 0.5


def test_shapes_one_count_for_all_and_options_checked():
    ds = load_dataset("shapes", shapes=ShapesOptions(num_classes=8, per_class=3, size=16))
    assert np.bincount(ds.labels).tolist() == [3] * 8 and len(ds.classes) == 8
    with pytest.raises(DataError, match="num_classes"):
        load_dataset("shapes", shapes=ShapesOptions(num_classes=9))
    with pytest.raises(DataError, match="per_class"):
        load_dataset("shapes", shapes=ShapesOptions(num_classes=3, per_class=(5, 5)))


# ---------------------------------------------------------------- user folders


def _save(path: Path, image: Image.Image, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


def _half_and_half(size=(32, 32), left=RED, right=BLUE) -> Image.Image:
    image = Image.new("RGB", size, right)
    image.paste(left, (0, 0, size[0] // 2, size[1]))
    return image


def _write_messy_folder(root: Path) -> dict[str, str]:
    """Three classes of images in many modes, plus things that are not images. Returns name -> class."""
    _save(root / "cats" / "a.jpg", Image.new("RGB", (40, 30), RED), quality=95)
    _save(root / "cats" / "B.JPG", Image.new("RGB", (30, 40), BLUE), quality=95)  # upper-case extension
    _save(root / "cats" / "grey.png", Image.new("L", (32, 32), 200))
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 16, 32))  # left half opaque red, right half transparent
    _save(root / "dogs" / "rgba.png", rgba)
    _save(root / "dogs" / "palette.png", Image.new("RGB", (32, 32), GREEN).convert("P"))
    _save(root / "dogs" / "deep.png", Image.fromarray(np.full((32, 32), 128 * 257, dtype=np.uint16)))  # I;16
    _save(root / "dogs" / "cmyk.jpg", Image.new("RGB", (32, 32), GREEN).convert("CMYK"), quality=95)
    (root / "dogs" / "notes.txt").write_text("not an image")
    (root / "dogs" / ".DS_Store").write_bytes(b"\0\1\2")
    (root / "dogs" / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    (root / "dogs" / "empty.png").write_bytes(b"")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    _save(root / "birds" / "rotated.jpg", _half_and_half((40, 20)), exif=exif.tobytes(), quality=95)
    _save(root / "birds" / "deeper" / "nested.gif", Image.new("RGB", (32, 32), BLUE).convert("P"))
    (root / "__MACOSX" / "cats").mkdir(parents=True)
    (root / "__MACOSX" / "cats" / "._a.jpg").write_bytes(b"resource fork")
    return {"a.jpg": "cats", "B.JPG": "cats", "grey.png": "cats", "rgba.png": "dogs", "palette.png": "dogs",
            "deep.png": "dogs", "cmyk.jpg": "dogs", "corrupt.jpg": "dogs", "empty.png": "dogs",
            "rotated.jpg": "birds", "nested.gif": "birds"}


def _by_name(ds) -> dict[str, int]:
    return {Path(f).name: i for i, f in enumerate(ds._files)}


def test_folder_classes_labels_and_ignored_files(tmp_path):
    expected = _write_messy_folder(tmp_path / "messy")
    ds = load_dataset(str(tmp_path / "messy"), data_dir=tmp_path / "data")
    assert ds.name == str(tmp_path / "messy")
    assert ds.classes == ("birds", "cats", "dogs")  # __MACOSX is not a class
    names = _by_name(ds)
    assert set(names) == set(expected)  # no .txt, no .DS_Store, no resource forks
    for name, cls in expected.items():
        assert ds.classes[ds.labels[names[name]]] == cls


def test_folder_decode_skips_broken_files_and_converts_modes(tmp_path):
    _write_messy_folder(tmp_path / "messy")
    ds = load_dataset(str(tmp_path / "messy"))
    d = decode(ds, np.arange(len(ds)), 16, workers=2)
    assert d.images.shape == (len(ds) - 2, 3, 16, 16) and d.images.dtype == torch.uint8
    assert sorted(Path(s.split(":")[0]).name for s in d.skipped) == ["corrupt.jpg", "empty.png"]
    assert len(d.labels) == len(d.indices) == len(ds) - 2
    at = {Path(ds._files[i]).name: d.images[j] for j, i in enumerate(d.indices)}
    assert np.abs(_pixel(at["a.jpg"], 8, 8) - RED).max() < 12
    assert np.abs(_pixel(at["grey.png"], 8, 8) - 200).max() <= 1
    assert np.abs(_pixel(at["rgba.png"], 8, 2) - RED).max() <= 2  # opaque part
    assert np.abs(_pixel(at["rgba.png"], 8, 14) - 255).max() <= 2  # transparent part on white
    assert np.abs(_pixel(at["palette.png"], 8, 8) - GREEN).max() <= 2
    assert np.abs(_pixel(at["deep.png"], 8, 8) - 128).max() <= 1  # 16-bit scaled, not clipped to 255
    assert np.abs(_pixel(at["cmyk.jpg"], 8, 8) - GREEN).max() < 12
    assert np.abs(_pixel(at["nested.gif"], 8, 8) - BLUE).max() <= 2
    # EXIF orientation 6 turns the red-left/blue-right 40x20 picture into red-top/blue-bottom.
    rotated = at["rotated.jpg"]
    assert rotated[0, 2, 8] > 200 and rotated[2, 2, 8] < 60
    assert rotated[2, 13, 8] > 200 and rotated[0, 13, 8] < 60


def test_decode_resizes_shorter_side_and_centre_crops(tmp_path):
    # 60x20: thirds red | green | blue; the centre square is the green third.
    image = Image.new("RGB", (60, 20), RED)
    image.paste(GREEN, (20, 0, 40, 20))
    image.paste(BLUE, (40, 0, 60, 20))
    out = decode_image(image, 10)
    assert out.shape == (3, 10, 10) and out.dtype == torch.uint8
    assert np.abs(_pixel(out, 5, 5) - GREEN).max() <= 2
    assert np.abs(_pixel(out, 5, 0) - GREEN).max() <= 40  # the edge only blends a little with red


def test_decode_image_accepts_bytes_and_paths_and_refuses_non_images(tmp_path):
    buffer = io.BytesIO()
    Image.new("LA", (50, 30), (90, 255)).save(buffer, format="PNG")
    from_bytes = decode_image(buffer.getvalue(), 24)
    assert from_bytes.shape == (3, 24, 24) and int(from_bytes.float().mean().round()) == 90
    (tmp_path / "x.png").write_bytes(buffer.getvalue())
    assert torch.equal(decode_image(tmp_path / "x.png", 24), from_bytes)
    with pytest.raises(DataError, match="image"):
        decode_image(b"this is text", 24)


def test_decode_empty_selection():
    d = decode(load_dataset("digits"), np.array([], dtype=np.int64), 16)
    assert d.images.shape == (0, 3, 16, 16) and d.labels.shape == (0,) and d.skipped == ()


# ---------------------------------------------------------------- splits


def _tiny_images(root: Path, counts: dict[str, int], colour=(120, 80, 40)) -> None:
    for cls, n in counts.items():
        for i in range(n):
            _save(root / cls / f"{i}.png", Image.new("RGB", (8, 8), colour))


def test_given_train_val_layout_is_kept(tmp_path):
    _tiny_images(tmp_path / "set" / "train", {"a": 10, "b": 6})
    _tiny_images(tmp_path / "set" / "val", {"a": 3, "b": 2})
    ds = load_dataset(str(tmp_path / "set"))
    assert ds.classes == ("a", "b") and len(ds) == 21
    assert (ds.given_split == "train").sum() == 16 and (ds.given_split == "val").sum() == 5
    split = make_split(ds, val_fraction=0.3, seed=5)
    np.testing.assert_array_equal(split.val, np.flatnonzero(ds.given_split == "val"))
    np.testing.assert_array_equal(split.train, np.flatnonzero(ds.given_split == "train"))
    assert split.test.size == 0  # no test/ folder and none asked for
    carved = make_split(ds, test_fraction=0.25, seed=5)
    np.testing.assert_array_equal(carved.val, split.val)  # still the given val
    assert len(carved.test) == 4 and set(carved.test) <= set(split.train)
    # Stratified: a quarter of the 10:6 pool is 2.5:1.5 items.
    assert np.all(np.abs(np.bincount(ds.labels[carved.test], minlength=2) - [2.5, 1.5]) <= 0.5)


def test_given_test_and_missing_val_are_handled(tmp_path):
    _tiny_images(tmp_path / "set" / "train", {"a": 10, "b": 10})
    _tiny_images(tmp_path / "set" / "test", {"a": 4, "b": 4})
    ds = load_dataset(str(tmp_path / "set"))
    split = make_split(ds, val_fraction=0.2, seed=0)
    np.testing.assert_array_equal(split.test, np.flatnonzero(ds.given_split == "test"))
    assert len(split.val) == 4 and set(split.val) <= set(np.flatnonzero(ds.given_split == "train"))
    assert np.bincount(ds.labels[split.val]).tolist() == [2, 2]


def test_flat_split_is_stratified_seeded_and_disjoint():
    ds = load_dataset("digits")
    a, b = make_split(ds, val_fraction=0.2, seed=1), make_split(ds, val_fraction=0.2, seed=1)
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.val, b.val)
    assert a.test.size == 0 and a.train.dtype == np.int64
    assert not np.array_equal(make_split(ds, seed=2).val, a.val)
    assert sorted(np.concatenate([a.train, a.val]).tolist()) == list(range(len(ds)))
    counts, val_counts = np.bincount(ds.labels), np.bincount(ds.labels[a.val], minlength=10)
    assert np.all(np.abs(val_counts - 0.2 * counts) <= 1)
    three = make_split(ds, val_fraction=0.2, test_fraction=0.1, seed=1)
    assert abs(len(three.val) - 0.2 * len(ds)) <= 2 and abs(len(three.test) - 0.1 * len(ds)) <= 2
    assert not set(three.val) & set(three.test) and not set(three.train) & set(three.val)
    assert np.all(np.abs(np.bincount(ds.labels[three.test], minlength=10) - 0.1 * counts) <= 1)


def test_split_of_tiny_classes_falls_back_to_one_per_class():
    labels = np.repeat(np.arange(5), 2)  # 10 items: sklearn cannot give 5 classes 2 val items
    ds = make_dataset("tiny", tuple("abcde"), labels, "test", pixels=np.zeros((10, 4, 4), np.uint8))
    split = make_split(ds, val_fraction=0.2, seed=0)
    assert sorted(labels[split.val].tolist()) == [0, 1, 2, 3, 4]
    assert sorted(labels[split.train].tolist()) == [0, 1, 2, 3, 4]
    with pytest.raises(DataError, match="fraction"):
        make_split(ds, val_fraction=0.7, test_fraction=0.4)


def test_split_round_trips_through_json():
    split = make_split(load_dataset("digits"), test_fraction=0.1, seed=3)
    again = Split.from_dict(json.loads(json.dumps(split.to_dict())))
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(again, part), getattr(split, part))
        assert getattr(again, part).dtype == np.int64
    assert again.seed == 3


# ---------------------------------------------------------------- long tail


def test_long_tail_doctests_run_and_pass():
    """testmod of a module without doctests passes too: require that the examples ran."""
    for module in (ftlab.diversity, ftlab.data.splits):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, (module.__name__, result)


def test_long_tail_indices_follow_the_ratio():
    ds = load_dataset("digits")
    train = make_split(ds, seed=0).train
    kept = long_tail_indices(ds.labels, train, ratio=10, seed=0)
    assert set(kept) <= set(train) and np.all(np.diff(kept) > 0)
    before, after = np.bincount(ds.labels[train]), np.bincount(ds.labels[kept], minlength=10)
    assert np.all(after <= before) and after.max() > 0.9 * before.min()  # the head keeps what it can
    assert 9.5 <= after.max() / after.min() <= 10.5
    # Counts decay monotonically along the original ranking.
    assert np.all(np.diff(after[np.argsort(-before, kind="stable")]) <= 0)
    np.testing.assert_array_equal(kept, long_tail_indices(ds.labels, train, ratio=10, seed=0))
    assert not np.array_equal(kept, long_tail_indices(ds.labels, train, ratio=10, seed=1))
    balanced = np.bincount(ds.labels[long_tail_indices(ds.labels, train, ratio=1)], minlength=10)
    assert np.all(balanced == before.min())  # ratio 1 evens every class down to the smallest
    with pytest.raises(DataError):
        long_tail_indices(ds.labels, train, ratio=0.5)


# ---------------------------------------------------------------- zips


def _zip_folder(folder: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, prefix + f.relative_to(folder).as_posix())
    return archive


def test_zip_with_single_top_folder_reads_like_the_folder(tmp_path):
    expected = _write_messy_folder(tmp_path / "messy")
    archive = _zip_folder(tmp_path / "messy", tmp_path / "upload.zip", prefix="my data/")
    with zipfile.ZipFile(archive, "a") as zf:  # a README beside the top folder does not stop the descent
        zf.writestr("README.txt", "my photos")
    data_dir = tmp_path / "data"
    ds = load_dataset(str(archive), data_dir=data_dir)
    assert ds.name == str(archive) and ds.classes == ("birds", "cats", "dogs")
    assert set(_by_name(ds)) == set(expected)
    unpacked = list((data_dir / "uploads").iterdir())
    assert len(unpacked) == 1 and len(unpacked[0].name) == 16
    assert all(f.startswith(str(unpacked[0])) for f in ds._files)
    assert len(decode(ds, np.arange(len(ds)), 8).skipped) == 2
    marker = unpacked[0] / "marker"
    marker.write_text("unpacked once")
    again = load_dataset(str(archive), data_dir=data_dir)  # same bytes -> same folder, not unpacked again
    assert marker.exists() and again.classes == ds.classes


def test_zip_with_split_folders(tmp_path):
    _tiny_images(tmp_path / "set" / "train", {"x": 4, "y": 4})
    _tiny_images(tmp_path / "set" / "val", {"x": 2, "y": 2})
    ds = load_dataset(str(_zip_folder(tmp_path / "set", tmp_path / "set.zip")), data_dir=tmp_path / "data")
    assert np.bincount(ds.labels[ds.given_split == "val"]).tolist() == [2, 2]


@pytest.mark.parametrize("evil", ["../evil.png", "/tmp/abs-evil.png", "a/../../evil.png", "link"])
def test_unsafe_zip_is_refused_and_writes_nothing(tmp_path, evil):
    archive = tmp_path / "evil.zip"
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    with zipfile.ZipFile(archive, "w") as zf:
        for cls in ("a", "b"):
            for i in range(2):
                zf.writestr(f"{cls}/{i}.png", buffer.getvalue())
        info = zipfile.ZipInfo(evil)
        if evil == "link":
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd" if evil == "link" else buffer.getvalue())
    data_dir = tmp_path / "deep" / "data"
    with pytest.raises(DataError, match="refused"):
        load_dataset(str(archive), data_dir=data_dir)
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "deep" / "evil.png").exists()
    assert not Path("/tmp/abs-evil.png").exists()
    assert not (data_dir / "uploads").exists() or not any((data_dir / "uploads").iterdir())


def test_zip_with_one_class_is_refused(tmp_path):
    _tiny_images(tmp_path / "one", {"only": 5})
    with pytest.raises(DataError, match="2 classes") as e:
        load_dataset(str(_zip_folder(tmp_path / "one", tmp_path / "one.zip")), data_dir=tmp_path / "data")
    assert "'only'" in str(e.value)


def test_class_with_one_image_is_named(tmp_path):
    _tiny_images(tmp_path / "set", {"big": 5, "lonely": 1, "fine": 2})
    with pytest.raises(DataError, match="lonely") as e:
        load_dataset(str(_zip_folder(tmp_path / "set", tmp_path / "set.zip")), data_dir=tmp_path / "data")
    assert "big" not in str(e.value) and "fine" not in str(e.value)


def test_not_a_zip_and_broken_zip(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="not a .zip"):
        load_dataset(str(tmp_path / "notes.txt"), data_dir=tmp_path / "data")
    (tmp_path / "broken.zip").write_bytes(b"PK\3\4 garbage")
    with pytest.raises(DataError, match="not a readable .zip"):
        load_dataset(str(tmp_path / "broken.zip"), data_dir=tmp_path / "data")


# ---------------------------------------------------------------- downloads, offline


def test_offline_download_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("FTLAB_OFFLINE", "1")
    with pytest.raises(DatasetUnavailable) as e:
        load_dataset("hymenoptera", data_dir=tmp_path / "data")
    message = str(e.value)
    for part in ("https://download.pytorch.org/tutorial/hymenoptera_data.zip", "hymenoptera_data.zip",
                 str(tmp_path / "data"), "digits", "shapes", "offline"):
        assert part in message
    assert isinstance(e.value, DataError)


def test_offline_torchvision_download_names_archive_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("FTLAB_OFFLINE", "1")
    with pytest.raises(DatasetUnavailable) as e:
        load_dataset("cifar10", data_dir=tmp_path / "data")
    assert "cifar-10-python.tar.gz" in str(e.value) and str(tmp_path / "data") in str(e.value)
    with pytest.raises(DatasetUnavailable, match="train-images-idx3-ubyte.gz"):
        load_dataset("mnist", data_dir=tmp_path / "data", download=False)


def test_failed_download_is_dataset_unavailable(tmp_path, monkeypatch):
    def fail(url, timeout=None):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("urllib.request.urlopen", fail)
    monkeypatch.delenv("FTLAB_OFFLINE", raising=False)  # conftest sets it; here the failing network is the point
    with pytest.raises(DatasetUnavailable, match="Name or service not known"):
        load_dataset("hymenoptera", data_dir=tmp_path / "data")
    assert not list((tmp_path / "data").glob("*.part"))


def test_archive_already_in_data_dir_needs_no_network(tmp_path, monkeypatch):
    monkeypatch.setenv("FTLAB_OFFLINE", "1")
    _tiny_images(tmp_path / "src" / "train", {"ants": 3, "bees": 3})
    _tiny_images(tmp_path / "src" / "val", {"ants": 2, "bees": 2})
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _zip_folder(tmp_path / "src", data_dir / "hymenoptera_data.zip", prefix="hymenoptera_data/")
    ds = load_dataset("hymenoptera", data_dir=data_dir)
    assert ds.name == "hymenoptera" and ds.classes == ("ants", "bees") and len(ds) == 10
    assert (ds.given_split == "val").sum() == 4


# ---------------------------------------------------------------- the real photos


def test_real_hymenoptera_folder(hymenoptera):
    ds = load_dataset(str(hymenoptera))
    assert ds.classes == ("ants", "bees")

    def counts(split):
        return np.bincount(ds.labels[ds.given_split == split], minlength=2).tolist()

    assert counts("train") == [124, 121] and counts("val") == [70, 83]
    split = make_split(ds, seed=0)
    np.testing.assert_array_equal(split.val, np.flatnonzero(ds.given_split == "val"))
    assert len(split.train) == 245 and split.test.size == 0
    val = decode(ds, split.val, 64)
    assert val.images.shape == (153, 3, 64, 64) and val.skipped == ()
    assert 40 < val.images.float().mean() < 200  # real photos, not blank
    # The stray imageNotFound.gif is a real GIF: a light grey "we're sorry" placeholder, decoded as an ant.
    gif = [i for i, f in enumerate(ds._files) if f.endswith("imageNotFound.gif")]
    assert len(gif) == 1 and ds.classes[ds.labels[gif[0]]] == "ants"
    placeholder = decode(ds, np.array(gif), 64)
    assert placeholder.skipped == () and placeholder.images.float().mean() > 230
    again = Split.from_dict(json.loads(json.dumps(split.to_dict())))
    np.testing.assert_array_equal(again.val, split.val)
    np.testing.assert_array_equal(again.train, split.train)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The MNIST file format: big-endian magic (uint8 type, number of dimensions), sizes, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = np.array([0x800 + array.ndim, *array.shape], dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_already_unpacked_loads_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("FTLAB_OFFLINE", "1")
    raw = tmp_path / "data" / "MNIST" / "raw"
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 50), ("t10k", 10)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    ds = load_dataset("mnist", data_dir=tmp_path / "data")
    assert len(ds) == 60 and len(ds.classes) == 10
    assert (ds.given_split == "train").sum() == 50 and (ds.given_split == "test").sum() == 10
    split = make_split(ds, seed=0)
    assert len(split.test) == 10 and len(split.val) == 10  # val carved from the given train
    assert np.bincount(ds.labels[split.val]).tolist() == [1] * 10
    d = decode(ds, np.array([0, 55]), 28)
    expected = np.fromfile(raw / "train-images-idx3-ubyte", dtype=np.uint8, offset=16)[:784].reshape(28, 28)
    np.testing.assert_array_equal(d.images[0, 1].numpy(), expected)


def test_pets_already_unpacked_reads_files_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("FTLAB_OFFLINE", "1")
    base = tmp_path / "data" / "oxford-iiit-pet"
    lines = {"trainval": [], "test": []}
    for breed, label in (("Abyssinian", 1), ("basset_hound", 2)):
        for i in range(1, 5):
            _save(base / "images" / f"{breed}_{i}.jpg", Image.new("RGB", (20, 16), RED if label == 1 else BLUE))
            lines["trainval" if i <= 3 else "test"].append(f"{breed}_{i} {label} 1 1")
    for split, rows in lines.items():
        (base / "annotations").mkdir(parents=True, exist_ok=True)
        (base / "annotations" / f"{split}.txt").write_text("\n".join(rows) + "\n")
    ds = load_dataset("pets", data_dir=tmp_path / "data")
    assert ds.classes == ("Abyssinian", "Basset Hound") and len(ds) == 8
    assert np.bincount(ds.labels[ds.given_split == "test"]).tolist() == [1, 1]
    d = decode(ds, np.arange(8), 8)
    assert d.skipped == () and (d.images[:, 0].float().mean((1, 2)) > 200).tolist() == (ds.labels == 0).tolist()
