"""Decode a data set once into memory as uint8 tensors, at the size the model will see.

Every item gets the same treatment: EXIF orientation applied, any PIL mode made RGB (16-bit
scaled, transparency composited on white), shorter side resized to ``resize`` (antialiased),
the centre ``image_size`` square kept: a backbone's evaluation resize and crop (256 -> 224 for
most ImageNet weights; ``resize`` == ``image_size`` keeps the whole shorter side). Decoding is
the slow part of a small fine-tuning run on a CPU, so it happens once per run, not once per epoch.
"""
from __future__ import annotations

import io
import os
import stat
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ftlab import paths
from ftlab.messages import printable, some
from ftlab.data.dataset import DataError, Dataset

if TYPE_CHECKING:
    import torch

HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
EXIF_ORIENTATION = 0x0112
CHUNK = 512  # in-memory arrays are resized this many at a time, to bound the float copies
# Pixels one image may have (setting FTLAB_MAX_PIXELS, read when used). A 40 kB PNG can declare
# 50,000 x 50,000 pixels and take 7.5 GB to decode: such a decompression bomb is refused before
# decoding. A number here overrides the setting.
MAX_PIXELS: int | None = None


def max_pixels() -> int:
    """The pixel limit, with PIL's own bomb check raised to it: PIL refuses images over twice its
    ``Image.MAX_IMAGE_PIXELS`` (89 million by default) itself, so a larger limit would not hold."""
    limit = MAX_PIXELS or paths.max_pixels()
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit
    return limit
# The pixel limit is ours (checked before decoding): PIL's own warning for images under it would
# only repeat, on stderr, what we decided to allow.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class DecodingStopped(Exception):
    """``should_stop`` said stop; raised between files."""


@dataclass(frozen=True, eq=False)
class Decoded:
    images: torch.Tensor  # uint8, (N, 3, S, S), RGB
    labels: torch.Tensor  # int64, (N,)
    indices: np.ndarray  # dataset indices decoded, in order (skipped ones removed)
    skipped: tuple[str, ...]  # "<file>: <reason>" for each item that could not be decoded


def decode(ds: Dataset, indices: np.ndarray, image_size: int, *, resize: int | None = None,
           workers: int | None = None, should_stop: Callable[[], bool] | None = None,
           split: str | None = None) -> Decoded:
    """Decode ``ds[indices]`` to (N, 3, image_size, image_size) uint8; unreadable files are skipped and listed.

    Each image's shorter side is resized to ``resize`` (default ``image_size``: the whole shorter
    side) and the centre ``image_size`` square kept.

    ``should_stop`` is asked before each file (`DecodingStopped` when it says stop). With ``split``
    named, every class of ``ds[indices]`` must survive decoding, else a `DataError` names the
    classes that lost every image and the files skipped.
    """
    import torch

    resize = _check_sizes(image_size, resize)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    max_pixels()  # a setting it cannot use fails the call here, not every file in it
    if ds._pixels is not None:
        images, kept, skipped = _resize_array(ds._pixels[indices], image_size, resize), indices, []
    else:
        images, kept, skipped = _decode_files(ds, indices, image_size, resize, workers, should_stop)
    if split is not None and skipped:
        check_decoded(ds, indices, kept, skipped, split)
    labels = torch.from_numpy(ds.labels[kept].copy())
    return Decoded(images, labels, kept, tuple(skipped))


def _check_sizes(image_size: int, resize: int | None) -> int:
    if image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    if resize is None:
        return image_size
    if resize < image_size:
        raise ValueError(f"resize ({resize}) must be at least the image size ({image_size}): the crop is taken "
                         "from the resized image")
    return resize


def check_decoded(ds: Dataset, indices: np.ndarray, kept: np.ndarray, skipped: list[str], split: str) -> None:
    """Refuse a split that decoding emptied, or that lost every image of a class."""
    examples = f"{len(skipped):,} file(s) could not be decoded, e.g. {'; '.join(skipped[:3])}"
    if len(kept) == 0:
        raise DataError(f"None of the {len(indices):,} {split} images could be decoded: {examples}. "
                        "Replace these files with JPEG, PNG, BMP, GIF, TIFF or WebP images.")
    lost = sorted(set(ds.labels[indices].tolist()) - set(ds.labels[kept].tolist()))
    if lost:
        names = some([repr(ds.classes[k]) for k in lost])
        raise DataError(f"The {split} split has no readable image left of {len(lost):,} class(es): {names}; "
                        f"{examples}. Replace these files, or remove the class folders.")


def decode_image(image: Image.Image | str | Path | bytes, image_size: int, resize: int | None = None) -> torch.Tensor:
    """One image (a PIL image, a file path or the file's bytes) as uint8 (3, S, S), as `decode` does it."""
    import torch

    resize = _check_sizes(image_size, resize)
    max_pixels()
    try:
        if isinstance(image, Image.Image):
            pixels = _prepare(image, image_size, resize)
        else:
            pixels = _decode_file(io.BytesIO(image) if isinstance(image, bytes) else image, image_size, resize)
    except Exception as e:  # noqa: BLE001 - whatever PIL raises, for the user it means "not an image"
        raise DataError(f"Not a readable image ({_reason(e)}). Use a JPEG, PNG, BMP, GIF, TIFF or WebP file.") from e
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def _decode_files(ds: Dataset, indices: np.ndarray, size: int, resize: int, workers: int | None,
                  should_stop: Callable[[], bool] | None) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    import torch

    files = [ds._files[i] for i in indices]
    images = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    ok = np.zeros(len(files), dtype=bool)
    skipped = []
    stop = should_stop or (lambda: False)

    def one(file: str) -> tuple[np.ndarray | None, str]:
        if stop():  # each worker asks before each file: a stop waits for the files in hand only
            raise DecodingStopped
        return _try_decode(file, size, resize)

    # PIL releases the GIL while decoding and resizing, so threads use every core without pickling;
    # two per core also overlap file reads (measured: 4 threads beat 2 on a 2-core machine).
    pool = ThreadPoolExecutor(max_workers=workers or 2 * (os.cpu_count() or 1))
    try:
        for j, (pixels, error) in enumerate(pool.map(one, files)):
            if pixels is None:
                skipped.append(printable(f"{files[j]}: {error}"))
            else:
                images[j] = torch.from_numpy(pixels).permute(2, 0, 1)
                ok[j] = True
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if not ok.all():
        images = images[torch.from_numpy(ok)]
    return images, indices[ok], skipped


def _try_decode(path: str, size: int, resize: int) -> tuple[np.ndarray | None, str]:
    try:
        return _decode_file(path, size, resize), ""
    except Exception as e:  # noqa: BLE001 - one bad file in a user's folder must not end the run
        return None, _reason(e)


def _reason(e: Exception) -> str:
    if isinstance(e, UnidentifiedImageError):  # its text names the open file object, not the file
        return f"{type(e).__name__}: not an image file that PIL can read"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


class TooManyPixels(ValueError):
    """An image larger than MAX_PIXELS."""


def _decode_file(file: str | Path | io.BytesIO, size: int, resize: int) -> np.ndarray:
    limit = max_pixels()
    with (file if isinstance(file, io.BytesIO) else _open_regular(file)) as fp:
        try:
            opened = Image.open(fp)
        except Image.DecompressionBombError as e:  # over twice PIL's limit, which is at least ours
            raise TooManyPixels(f"{e} (the limit is {limit:,}, setting FTLAB_MAX_PIXELS)") from None
        with opened as image:
            w, h = image.size
            if w * h > limit:
                raise TooManyPixels(f"{w} x {h} pixels is more than the limit of {limit:,} "
                                    "(setting FTLAB_MAX_PIXELS)")
            # JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale while keeping both sides >= twice
            # the resize: most of the time on large photos is saved here. Twice, so that PIL's
            # antialiased resize still reduces: a draft just above the resize, resized almost 1:1,
            # kept the DCT's aliasing (5 grey levels from torchvision's full decode on a 500 x 375
            # photo at 183 px).
            image.draft("RGB", (2 * resize, 2 * resize))
            return _prepare(image, size, resize)


def _open_regular(path: str | Path) -> io.BufferedReader:
    """Open ``path`` for reading only if it is a regular file: a named pipe, socket or device named
    like an image would block the read (or never end), so it is refused from its metadata, unopened."""
    kind = _kind(os.stat(path).st_mode)
    if kind:
        raise OSError(f"{kind}, not a regular file")
    # non-blocking, and checked again on the open file: a pipe swapped in since the stat cannot block
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        kind = _kind(os.fstat(fd).st_mode)
        if kind:
            raise OSError(f"{kind}, not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _kind(mode: int) -> str:
    """'' for a regular file, else what it is."""
    if stat.S_ISREG(mode):
        return ""
    for test, name in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "a special file"


def _prepare(image: Image.Image, size: int, resize: int) -> np.ndarray:
    """Orientation, RGB, resize and centre crop of one image: (size, size, 3) uint8."""
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    image = _to_rgb(image)
    # Resizing just the crop's box is the same as resize-then-crop (PIL's filter reads the pixels
    # around the box too), in one antialiased pass. Bilinear for every backbone, also where the
    # weights were evaluated bicubic (EfficientNet-B0, Lite0): on ants/bees, 256 -> 224, a Lite0
    # linear probe reached the same best val accuracy either way in 7 of 8 runs (two seeds, two
    # rates, two means), one image apart in the eighth; one filter keeps decoding, the feature
    # cache and export alike.
    box = crop_box(*image.size, size, resize)
    return np.array(image.resize((size, size), Image.Resampling.BILINEAR, box=box))  # a writable copy for torch


def crop_box(width: int, height: int, size: int, resize: int) -> tuple[float, float, float, float]:
    """The region of a ``width`` x ``height`` image that torchvision's ``Resize(resize)`` then
    ``CenterCrop(size)`` keep, in the image's own pixels, with their rounding (the longer side
    truncated, the crop's offset rounded): resizing this box once equals the two steps. The
    exact central box, without that rounding, was 6 grey levels off on a 200 x 137 photo.

    >>> [round(v, 2) for v in crop_box(500, 375, 224, 256)]  # 500 x 375 -> 341 x 256, its centre 224
    [85.04, 23.44, 413.49, 351.56]
    >>> crop_box(640, 480, 224, 224)  # resize == size: the central square, within the rounding
    (79.46308724832215, 0.0, 560.5369127516778, 480.0)
    """
    short, long = sorted((width, height))
    new_long = int(resize * long / short)
    new_w, new_h = (resize, new_long) if width <= height else (new_long, resize)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    sx, sy = width / new_w, height / new_h
    return (left * sx, top * sy, (left + size) * sx, (top + size) * sy)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in HIGH_DEPTH_MODES:
        return Image.fromarray(_to_uint8(np.asarray(image), image.mode)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """16-bit, 32-bit integer and float pixels to 0..255 (PIL's own convert clips them instead)."""
    values = values.astype(np.float32)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode.startswith("I;16") or (lo >= 0 and 255 < hi <= 65535):
        values = values / 257
    elif mode == "F" and lo >= 0 and hi <= 1:
        values = values * 255
    elif lo < 0 or hi > 255:
        values = (values - lo) * (255 / max(hi - lo, 1e-12))
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _resize_array(pixels: np.ndarray, size: int, resize: int | None = None) -> torch.Tensor:
    """(N, H, W) grey or (N, H, W, 3) uint8 -> (N, 3, size, size) uint8: shorter side to
    ``resize`` (default ``size``), then the centre crop."""
    import torch
    from torchvision.transforms.v2 import functional as F

    out = torch.empty((len(pixels), 3, size, size), dtype=torch.uint8)
    for start in range(0, len(pixels), CHUNK):
        chunk = torch.from_numpy(np.ascontiguousarray(pixels[start:start + CHUNK]))
        chunk = chunk.unsqueeze(1).expand(-1, 3, -1, -1) if chunk.ndim == 3 else chunk.permute(0, 3, 1, 2)
        if tuple(chunk.shape[-2:]) != (size, size) or (resize or size) != size:
            chunk = F.center_crop(F.resize(chunk, resize or size, antialias=True), [size, size])
        out[start:start + len(chunk)] = chunk
    return out
