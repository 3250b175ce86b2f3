"""Generated data: coloured shapes on noisy coloured backgrounds, deterministic by seed.

Two tasks: the shape (the first task, ``classes``) and the colour it is drawn in, one of `COLOURS`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ftlab.data.dataset import DataError, Dataset, Task, make_dataset

SHAPE_KINDS = ("circle", "square", "triangle", "cross", "star", "ring", "diamond", "hexagon")
# The second task's classes: the colour a shape is drawn in, far apart in RGB and named as a person would.
COLOURS = (("red", (220, 40, 40)), ("green", (40, 170, 60)), ("blue", (40, 90, 220)), ("yellow", (235, 205, 40)))
# A background at least this far (RGB distance) from the shape's colour: the least that the rule before the
# palette (each channel 96..160 levels away, mod 256) allowed, 96 * sqrt 3, so a shape stays as visible as it was.
MIN_CONTRAST = 166.0
_BACKGROUND_TRIES = 64  # candidate backgrounds drawn at once; about half of them contrast with any colour
MAX_BYTES = 2 * 10**9  # generated pixels are held in memory
SUPERSAMPLE = 3  # drawn at 3x and reduced, so edges are antialiased like a photo's


@dataclass(frozen=True)
class ShapesOptions:
    num_classes: int = 4  # 2..8 shape kinds, taken in the order of SHAPE_KINDS
    per_class: int | tuple[int, ...] = 120  # one count for all classes, or one per class
    size: int = 64  # side length in px
    noise: float = 0.15  # std of the pixel noise as a fraction of the 0..255 range
    seed: int = 0

    def counts(self) -> tuple[int, ...]:
        """Images per class, one entry per class."""
        if isinstance(self.per_class, int):
            return (self.per_class,) * self.num_classes
        return tuple(self.per_class)

    def validate(self) -> list[str]:
        """Every problem with these options, in words; empty when they are usable."""
        problems = []
        if not 2 <= self.num_classes <= len(SHAPE_KINDS):
            problems.append(f"num_classes must be 2..{len(SHAPE_KINDS)}, got {self.num_classes}")
        elif len(self.counts()) != self.num_classes:
            problems.append(f"per_class has {len(self.counts())} counts for {self.num_classes} classes")
        if any(n < 2 for n in self.counts()):
            problems.append(f"every class needs at least 2 images, got per_class={self.per_class}")
        if not 8 <= self.size <= 512:
            problems.append(f"size must be 8..512 px, got {self.size}")
        if not 0.0 <= self.noise <= 1.0:
            problems.append(f"noise must be 0..1, got {self.noise}")
        if not problems and sum(self.counts()) * self.size**2 * 3 > MAX_BYTES:
            problems.append(f"{sum(self.counts())} images of {self.size} px would take over "
                            f"{MAX_BYTES // 10**9} GB; ask for fewer or smaller images")
        return problems


def make_shapes(options: ShapesOptions) -> Dataset:
    problems = options.validate()
    if problems:
        raise DataError("shapes: " + "; ".join(problems) + ".")
    counts = options.counts()
    labels = np.repeat(np.arange(options.num_classes), counts)
    colours = np.concatenate([shape_colours(options.seed, k, n) for k, n in enumerate(counts)])
    items = [(k, i) for k, n in enumerate(counts) for i in range(n)]
    # Generators per image: changing one class's count leaves every other class's images as they were.
    pixels = np.stack([_shape_image(SHAPE_KINDS[k], options.size, options.noise, COLOURS[c][1],
                                    np.random.default_rng([options.seed, k, i]),
                                    np.random.default_rng([options.seed, k, i, 1]))
                       for (k, i), c in zip(items, colours)])
    source = (f"generated shapes ({options.num_classes} classes, {counts} per class, "
              f"{options.size} px, noise {options.noise}, seed {options.seed}; second task: the colour)")
    colour = Task("colour", tuple(name for name, _ in COLOURS), colours)
    return make_dataset("shapes", SHAPE_KINDS[:options.num_classes], labels, source, pixels=pixels,
                        task="shape", tasks=(colour,))


def shape_colours(seed: int, kind: int, n: int) -> np.ndarray:
    """The colour (an index into `COLOURS`) of each of the ``n`` images of shape ``kind``: every colour
    equally often (to one image), in an order drawn from ``seed``, so colour says nothing of the shape.
    Shape ``kind`` starts two colours on, so that the two smallest classes allowed (two images each)
    already hold every colour.

    >>> sorted(shape_colours(0, 1, 6).tolist())
    [0, 1, 2, 2, 3, 3]
    >>> sorted(shape_colours(0, 0, 2).tolist() + shape_colours(0, 1, 2).tolist())
    [0, 1, 2, 3]
    """
    tiled = (np.arange(n) + 2 * kind) % len(COLOURS)
    return np.random.default_rng([seed, kind, 2**40]).permutation(tiled)  # 2**40: no image index is that


def _shape_image(kind: str, size: int, noise: float, colour: tuple[int, int, int], rng: np.random.Generator,
                 backgrounds: np.random.Generator) -> np.ndarray:
    """One (size, size, 3) uint8 image: a random shape, position, scale and rotation in ``colour``.

    ``rng`` draws what it drew before the colours had names, in the same order, so each image keeps its
    position, scale, rotation, noise and (where it contrasts with the colour) its background;
    ``backgrounds`` draws another background where the old one is too close to the colour."""
    background = rng.integers(0, 256, 3)
    rng.integers(96, 161, 3)  # the draw that made the colour before the palette: kept so the draws after it stay
    if np.linalg.norm(background - np.asarray(colour)) < MIN_CONTRAST:
        background = _background(colour, backgrounds)
    big = size * SUPERSAMPLE
    radius = rng.uniform(0.22, 0.36) * big
    cx, cy = rng.uniform(radius, big - radius, 2)
    angle = rng.uniform(0, 2 * math.pi)
    image = Image.new("RGB", (big, big), tuple(int(c) for c in background))
    _draw(ImageDraw.Draw(image), kind, cx, cy, radius, angle, tuple(int(c) for c in colour))
    image = image.resize((size, size), Image.Resampling.BOX)
    noisy = np.asarray(image, dtype=np.float32) + rng.standard_normal((size, size, 3), np.float32) * (noise * 255)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _background(colour: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A random background at least `MIN_CONTRAST` from ``colour``: the first of a batch of uniform draws
    that is (the farthest of them if none is: with about half of all backgrounds far enough, a chance
    under 1e-18)."""
    candidates = rng.integers(0, 256, (_BACKGROUND_TRIES, 3))
    distance = np.linalg.norm(candidates - np.asarray(colour), axis=1)
    far = np.flatnonzero(distance >= MIN_CONTRAST)
    return candidates[far[0] if len(far) else int(np.argmax(distance))]


def _draw(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, angle: float,
          colour: tuple[int, ...]) -> None:
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif kind == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=colour, width=max(1, round(r * 0.35)))
    else:
        draw.polygon(_polygon(kind, cx, cy, r, angle), fill=colour)


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices as (radius fraction, angle) around the centre, rotated by ``angle``."""
    if kind == "square":
        points = [(1.0, math.pi / 4 + k * math.pi / 2) for k in range(4)]
    elif kind == "triangle":
        points = [(1.0, k * 2 * math.pi / 3) for k in range(3)]
    elif kind == "hexagon":
        points = [(1.0, k * math.pi / 3) for k in range(6)]
    elif kind == "star":
        points = [(1.0 if k % 2 == 0 else 0.42, k * math.pi / 5) for k in range(10)]
    elif kind == "diamond":  # a rhombus, so that a rotated square never looks like one
        xy = [(0.0, -1.0), (0.55, 0.0), (0.0, 1.0), (-0.55, 0.0)]
        points = [(math.hypot(x, y), math.atan2(y, x)) for x, y in xy]
    elif kind == "cross":  # a plus sign with arms a third of the width
        t = 1 / 3
        xy = [(t, 1), (t, t), (1, t), (1, -t), (t, -t), (t, -1),
              (-t, -1), (-t, -t), (-1, -t), (-1, t), (-t, t), (-t, 1)]
        points = [(math.hypot(x, y) * 0.85, math.atan2(y, x)) for x, y in xy]
    else:
        raise ValueError(f"unknown shape kind {kind!r}")
    return [(cx + f * r * math.cos(a + angle), cy + f * r * math.sin(a + angle)) for f, a in points]
