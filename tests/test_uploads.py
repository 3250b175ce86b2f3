"""Hostile and odd uploads: each test names the guard that makes it pass."""
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ftlab.data import DataError, decode, load_dataset
from ftlab.data import decoding


def png_bytes(color: int, size: int = 16, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (size, size), color if mode != "RGB" else (color, 255 - color, 0)).save(buf, "PNG")
    return buf.getvalue()


def make_zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return path


def two_classes(prefix: str = "") -> dict[str, bytes]:
    return {f"{prefix}{c}/{i}.png": png_bytes(40 * i + (100 if c == "b" else 0)) for c in "ab" for i in range(3)}


def uploads(data_dir: Path) -> list[Path]:
    folder = data_dir / "uploads"
    return [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []


def test_a_zip_bomb_member_is_refused_before_anything_is_written(tmp_path):
    """Guard: the per-member compression-ratio limit (FTLAB_ZIP_MAX_RATIO). Without it the
    64 MB of zeros would be unpacked."""
    members = {**two_classes(), "a/padding.png": bytes(64 << 20)}
    archive = make_zip(tmp_path / "bomb.zip", members)
    assert archive.stat().st_size < 1 << 20
    with pytest.raises(DataError, match="zip bombs"):
        load_dataset(str(archive), data_dir=tmp_path / "data")
    assert uploads(tmp_path / "data") == []


def test_too_many_members_are_refused(tmp_path, monkeypatch):
    """Guard: the member-count limit (FTLAB_ZIP_MAX_FILES)."""
    monkeypatch.setenv("FTLAB_ZIP_MAX_FILES", "4")
    archive = make_zip(tmp_path / "many.zip", two_classes())
    with pytest.raises(DataError, match="FTLAB_ZIP_MAX_FILES"):
        load_dataset(str(archive), data_dir=tmp_path / "data")


def test_too_much_unpacked_data_is_refused(tmp_path, monkeypatch):
    """Guard: the total-size limit (FTLAB_ZIP_MAX_MB), checked on the headers before writing."""
    monkeypatch.setenv("FTLAB_ZIP_MAX_MB", "1")
    noise = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "BMP")  # 1.5 MB that does not compress
    archive = make_zip(tmp_path / "big.zip", {**two_classes(), "a/big.bmp": buf.getvalue()})
    with pytest.raises(DataError, match="FTLAB_ZIP_MAX_MB"):
        load_dataset(str(archive), data_dir=tmp_path / "data")
    assert uploads(tmp_path / "data") == []


@pytest.mark.parametrize("name", ["../evil/x.png", "/abs/x.png", "a/../../x.png"])
def test_members_that_escape_are_refused(tmp_path, name):
    """Guard: _unsafe_reason (zip-slip). Without it the member lands outside the data folder."""
    archive = make_zip(tmp_path / "slip.zip", {**two_classes(), name: png_bytes(9)})
    with pytest.raises(DataError, match="refused"):
        load_dataset(str(archive), data_dir=tmp_path / "data" / "inner")
    assert not (tmp_path / "data" / "evil").exists() and not (tmp_path / "x.png").exists()


def test_a_symlink_member_is_refused(tmp_path):
    """Guard: _unsafe_reason refuses members whose mode says symbolic link."""
    archive = tmp_path / "link.zip"
    make_zip(archive, two_classes())
    with zipfile.ZipFile(archive, "a") as zf:
        info = zipfile.ZipInfo("a/link.png")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DataError, match="symbolic link"):
        load_dataset(str(archive), data_dir=tmp_path / "data")


def test_a_decompression_bomb_image_is_skipped_not_decoded(tmp_path, monkeypatch):
    """Guard: MAX_PIXELS is checked on the header before decoding. Without it the image is decoded."""
    monkeypatch.setattr(decoding, "MAX_PIXELS", 100 * 100)
    folder = tmp_path / "set"
    for c in "ab":
        (folder / c).mkdir(parents=True)
        for i in range(3):
            (folder / c / f"{i}.png").write_bytes(png_bytes(50 * i))
    Image.new("L", (400, 400)).save(folder / "a" / "huge.png")
    ds = load_dataset(str(folder))
    out = decode(ds, np.arange(len(ds)), 16)
    assert len(out.skipped) == 1 and "huge.png" in out.skipped[0] and "FTLAB_MAX_PIXELS" in out.skipped[0]
    assert len(out.labels) == 6


def test_odd_but_valid_uploads_are_accepted(tmp_path):
    """Unicode and spaces in names, upper-case extensions, a nested top folder, junk beside it,
    and every common pixel mode decode; the junk is not counted as an image."""
    buf16 = io.BytesIO()
    Image.fromarray(np.full((16, 16), 40000, np.uint16)).save(buf16, "PNG")
    members = {
        "Fotos 2024/Bienen 🐝/eins.PNG": png_bytes(200),
        "Fotos 2024/Bienen 🐝/zwei.JPG": _jpeg(),
        "Fotos 2024/Bienen 🐝/grau.png": png_bytes(90, mode="L"),
        "Fotos 2024/Ameisen é/rgba.png": png_bytes(30, mode="RGBA"),
        "Fotos 2024/Ameisen é/palette.png": png_bytes(3, mode="P"),
        "Fotos 2024/Ameisen é/sechzehn bit.png": buf16.getvalue(),
        "Fotos 2024/Ameisen é/.DS_Store": b"\0\0junk",
        "Fotos 2024/Ameisen é/notes.txt": b"not an image",
        "__MACOSX/Fotos 2024/._eins.PNG": b"resource fork",
        "Fotos 2024/Ameisen é/empty.png": b"",
    }
    archive = make_zip(tmp_path / "odd.zip", members)
    ds = load_dataset(str(archive), data_dir=tmp_path / "data")
    assert ds.classes == ("Ameisen é", "Bienen 🐝")
    assert np.bincount(ds.labels).tolist() == [4, 3]  # the zero-byte png is an image file that will not decode
    out = decode(ds, np.arange(len(ds)), 16)
    assert len(out.labels) == 6 and len(out.skipped) == 1 and "empty.png" in out.skipped[0]
    assert out.images.shape == (6, 3, 16, 16)


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 12), (10, 200, 30)).save(buf, "JPEG")
    return buf.getvalue()


def test_an_empty_class_and_a_single_class_are_named(tmp_path):
    one = make_zip(tmp_path / "one.zip", {f"only/{i}.png": png_bytes(i) for i in range(3)})
    with pytest.raises(DataError, match="at least 2 classes"):
        load_dataset(str(one), data_dir=tmp_path / "data")
    few = make_zip(tmp_path / "few.zip", {**two_classes(), "c/0.png": png_bytes(1)})
    with pytest.raises(DataError, match="'c'"):
        load_dataset(str(few), data_dir=tmp_path / "data")
    none = make_zip(tmp_path / "none.zip", {"readme.txt": b"hello", "x/notes.md": b"# no images"})
    with pytest.raises(DataError, match="no class folders with images"):
        load_dataset(str(none), data_dir=tmp_path / "data")
