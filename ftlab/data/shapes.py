"""Generated data: coloured shapes on noisy coloured backgrounds, deterministic by seed."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ftlab.data.dataset import DataError, Dataset, make_dataset

SHAPE_KINDS = ("circle", "square", "triangle", "cross", "star", "ring", "diamond", "hexagon")
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
    # One generator per image: changing one class's count leaves every other image as it was.
    pixels = np.stack([_shape_image(SHAPE_KINDS[k], options.size, options.noise,
                                    np.random.default_rng([options.seed, k, i]))
                       for k, n in enumerate(counts) for i in range(n)])
    source = (f"generated shapes ({options.num_classes} classes, {counts} per class, "
              f"{options.size} px, noise {options.noise}, seed {options.seed})")
    return make_dataset("shapes", SHAPE_KINDS[:options.num_classes], labels, source, pixels=pixels)


def _shape_image(kind: str, size: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """One (size, size, 3) uint8 image: a random shape, colour, position, scale and rotation."""
    background = rng.integers(0, 256, 3)
    # Each channel at least 96 levels away (mod 256) keeps the shape visible on any background.
    colour = (background + rng.integers(96, 161, 3)) % 256
    big = size * SUPERSAMPLE
    radius = rng.uniform(0.22, 0.36) * big
    cx, cy = rng.uniform(radius, big - radius, 2)
    angle = rng.uniform(0, 2 * math.pi)
    image = Image.new("RGB", (big, big), tuple(int(c) for c in background))
    _draw(ImageDraw.Draw(image), kind, cx, cy, radius, angle, tuple(int(c) for c in colour))
    image = image.resize((size, size), Image.Resampling.BOX)
    noisy = np.asarray(image, dtype=np.float32) + rng.standard_normal((size, size, 3), np.float32) * (noise * 255)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


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
