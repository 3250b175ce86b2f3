"""The shift test: a kept run's best model on corrupted copies of its own val images.

Six corruptions at two severities each (in the spirit of Hendrycks & Dietterich's ImageNet-C),
applied with torchvision to the uint8 crop the model is given; inference only, the run is not
changed. Every random draw (noise, jitter factors, the direction of a rotation) comes from a
generator seeded by the seed, the corruption, its severity and the image's index in the data set,
so a copy is the same whatever the batch it falls in, and the whole test repeats exactly.

A linear probe against a full fine-tune is the classic contrast: Kumar et al. (2022) found
fine-tuning ahead on the training distribution and behind the probe under shift.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ftlab import data
from ftlab.errors import StopRequested

BATCH = 64


@dataclass(frozen=True)
class Corruption:
    name: str
    levels: tuple[float, float]  # severity 1 and 2
    unit: str  # how a level reads: "quality {:g}", "{:g}°"...

    def setting(self, severity: int) -> str:
        return self.unit.format(self.levels[severity - 1])


# severity 1 is the setting where it names one (JPEG quality 20, rotation 15°), 2 harsher.
# Blur is in pixels of a 224-px image, scaled to the run's size; noise in shares of the 0..255 range.
CORRUPTIONS: tuple[Corruption, ...] = (
    Corruption("gaussian blur", (2.0, 4.0), "sigma {:g} px at 224"),
    Corruption("jpeg", (20, 10), "quality {:g}"),
    Corruption("colour jitter", (0.4, 0.8), "brightness, contrast, saturation ×(1 ± {:g})"),
    Corruption("greyscale", (0.5, 1.0), "{:.0%} grey"),
    Corruption("rotation", (15, 30), "{:g}°"),
    Corruption("noise", (0.08, 0.18), "Gaussian, sd {:g} of the range"),
)
NAMES = tuple(c.name for c in CORRUPTIONS)


def _rng(seed: int, name: str, severity: int, index: int) -> np.random.Generator:
    """The generator of one image's copy: the same for the same four, whatever else runs."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), severity, int(index)])


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """``ratio * a + (1 - ratio) * b`` per image (ratio (N,)), as torchvision's adjust_* blend."""
    r = ratio.view(-1, 1, 1, 1)
    return (r * a + (1 - r) * b).clamp(0, 255)


def _jitter(images: torch.Tensor, factors: np.ndarray) -> torch.Tensor:
    """Brightness, contrast and saturation, each image by its own three factors (N, 3): the formulas
    of torchvision's adjust_brightness, adjust_contrast and adjust_saturation, on the whole batch."""
    f = torch.from_numpy(factors.astype(np.float32))
    x = (images.float() * f[:, 0].view(-1, 1, 1, 1)).clamp(0, 255)
    grey = F.rgb_to_grayscale(x)
    x = _blend(x, grey.mean(dim=(1, 2, 3), keepdim=True), f[:, 1])
    x = _blend(x, F.rgb_to_grayscale(x), f[:, 2])
    return x.round().to(torch.uint8)


def _apply(images: torch.Tensor, c: Corruption, level: float, rngs: list[np.random.Generator]) -> torch.Tensor:
    """``images`` (N, 3, S, S) uint8 with corruption ``c`` at ``level``, image i drawing from ``rngs[i]``:
    one batched call per kind, so a copy costs no Python loop over images beyond the draws."""
    size = images.shape[-1]
    if c.name == "gaussian blur":
        sigma = level * size / 224
        kernel = 2 * math.ceil(3 * sigma) + 1
        return F.gaussian_blur(images, [kernel, kernel], [sigma, sigma])
    if c.name == "jpeg":
        return F.jpeg(images, int(level))
    if c.name == "colour jitter":  # each image's factors drawn in [1 - level, 1 + level]
        return _jitter(images, np.stack([r.uniform(1 - level, 1 + level, 3) for r in rngs]))
    if c.name == "greyscale":
        return F.adjust_saturation(images, 1 - level)
    if c.name == "rotation":  # clockwise or anticlockwise by a draw per image, black corners
        clockwise = torch.tensor([r.random() < 0.5 for r in rngs], dtype=torch.bool)
        out = images.clone()
        for mask, angle in ((clockwise, -level), (~clockwise, level)):
            if mask.any():
                out[mask] = F.rotate(images[mask], angle, interpolation=InterpolationMode.BILINEAR, fill=[0.0])
        return out
    if c.name == "noise":
        noise = np.stack([r.normal(0.0, level * 255, images.shape[1:]) for r in rngs]).astype(np.float32)
        return (images.float() + torch.from_numpy(noise)).round().clamp(0, 255).to(torch.uint8)
    raise ValueError(f"unknown corruption {c.name!r}; choose one of {', '.join(NAMES)}")


def corrupt(images: torch.Tensor, name: str, severity: int, indices: Sequence[int], seed: int = 0) -> torch.Tensor:
    """Copies of ``images`` (N, 3, S, S) uint8, image i (data-set index ``indices[i]``) corrupted
    by ``name`` at ``severity`` (1 or 2)."""
    c = next((c for c in CORRUPTIONS if c.name == name), None)
    if c is None:
        raise ValueError(f"unknown corruption {name!r}; choose one of {', '.join(NAMES)}")
    if severity not in (1, 2):
        raise ValueError(f"severity {severity} is not 1 or 2")
    if len(indices) != len(images):
        raise ValueError(f"{len(images)} images and {len(indices)} indices")
    return _apply(images, c, c.levels[severity - 1], [_rng(seed, name, severity, i) for i in indices])


# --- the test -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShiftRow:
    corruption: str
    severity: int
    setting: str
    accuracy: float

    @property
    def label(self) -> str:
        return f"{self.corruption} {self.severity}"


@dataclass(frozen=True)
class ShiftResult:
    """A run's val accuracy on clean and corrupted copies of its val images."""

    run_id: str
    label: str  # the run in words (`explore.record_label`)
    images: int
    seed: int
    clean: float
    rows: tuple[ShiftRow, ...]
    skipped: tuple[str, ...] = field(default_factory=tuple)

    @property
    def mean_shifted(self) -> float:
        return float(np.mean([r.accuracy for r in self.rows]))

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "label": self.label, "images": self.images, "seed": self.seed,
                "clean_accuracy": self.clean, "mean_shifted_accuracy": self.mean_shifted,
                "rows": [{"corruption": r.corruption, "severity": r.severity, "setting": r.setting,
                          "accuracy": r.accuracy, "drop": self.clean - r.accuracy} for r in self.rows],
                "skipped": list(self.skipped)}

    def lines(self) -> list[str]:
        out = [f"run {self.run_id} ({self.label}): {self.images} val images, seed {self.seed}; clean accuracy "
               f"{self.clean:.3f}, mean under shift {self.mean_shifted:.3f}"]
        out += [f"  {r.label:<16} {r.accuracy:.3f} ({r.accuracy - self.clean:+.3f})  {r.setting}" for r in self.rows]
        return out


def table(results: Sequence[ShiftResult]) -> list[dict]:
    """One row per corruption and severity (and one for the clean images), a column per run."""
    if not results:
        return []
    names = _column_names(results)
    rows = [{"corruption": "none (clean)", "severity": 0, **{n: r.clean for n, r in zip(names, results)}}]
    for i, row in enumerate(results[0].rows):
        rows.append({"corruption": row.corruption, "severity": row.severity,
                     **{n: r.rows[i].accuracy for n, r in zip(names, results)}})
    rows.append({"corruption": "mean under shift", "severity": 0,
                 **{n: r.mean_shifted for n, r in zip(names, results)}})
    return rows


def _column_names(results: Sequence[ShiftResult]) -> list[str]:
    labels = [r.label for r in results]
    return [f"{r.label} ({r.run_id})" if labels.count(r.label) > 1 else r.label for r in results]


def chart_series(results: Sequence[ShiftResult]) -> dict[str, list[dict]]:
    """For `ui.charts.shift_accuracy`: each run's accuracy at each setting, clean first."""
    return {name: [{"setting": "clean", "accuracy": r.clean}] + [{"setting": row.label, "accuracy": row.accuracy}
                                                                 for row in r.rows]
            for name, r in zip(_column_names(results), results)}


def run_shift(run_id: str, store=None, *, seed: int = 0, say: Callable[[str], None] = lambda m: None,
              should_stop: Callable[[], bool] = lambda: False) -> ShiftResult:
    """The shift test of a kept run (by id). Raises KeyError for an unknown run, `ftlab.data.DataError`
    when its val images cannot be read, `ftlab.errors.StopRequested` when ``should_stop``."""
    from ftlab import explore
    from ftlab.config import TrainConfig
    from ftlab.predict import Predictor
    from ftlab.runs import RunStore

    store = store or RunStore()
    record = store.get(run_id)
    val = record.final.get("val") if isinstance(record.final, dict) else None
    if not isinstance(val, dict) or "labels" not in val:
        raise data.DataError(f"run {run_id} kept no val images with their labels (it stopped before its final "
                             "evaluation, or was kept before val labels were stored): nothing to test")
    predictor = Predictor.for_run(run_id, store)
    say("decoding the val images")
    ds = data.load_for(TrainConfig.from_dict(record.config), download=False)
    if [str(c) for c in ds.classes] != [str(c) for c in record.classes] or max(val["indices"]) >= len(ds):
        raise data.DataError(f"the data set ({ds.source or ds.name}) is not the one run {run_id} was trained on any "
                             "more: its classes or images have changed")
    prep = predictor.preprocessing
    decoded = data.decode(ds, np.asarray(val["indices"]), prep.size, resize=prep.resize)
    labels = dict(zip(val["indices"], val["labels"]))
    y = torch.tensor([labels[int(i)] for i in decoded.indices])
    images, indices = decoded.images, decoded.indices.tolist()

    def accuracy(batch_of: Callable[[slice], torch.Tensor]) -> float:
        right = 0
        for start in range(0, len(images), BATCH):
            if should_stop():
                raise StopRequested("stopped")
            part = slice(start, start + BATCH)
            right += int((predictor.probabilities(batch_of(part)).argmax(1) == y[part]).sum())
        return right / max(len(images), 1)

    clean = accuracy(lambda part: images[part])
    rows = []
    settings = [(c, s) for c in CORRUPTIONS for s in (1, 2)]
    for done, (c, s) in enumerate(settings, 1):
        say(f"{done}/{len(settings)}: {c.name}, severity {s} ({c.setting(s)})")
        acc = accuracy(lambda part: corrupt(images[part], c.name, s, indices[part], seed))
        rows.append(ShiftRow(c.name, s, c.setting(s), acc))
    return ShiftResult(run_id, explore.record_label(record, with_id=False), len(images), seed, clean, tuple(rows),
                       decoded.skipped)


def run_many(run_ids: Sequence[str], store=None, *, seed: int = 0, say: Callable[[str], None] = lambda m: None,
             should_stop: Callable[[], bool] = lambda: False) -> list[ShiftResult]:
    """`run_shift` of each run in turn, each run's progress prefixed with its place in the list."""
    results = []
    for k, run_id in enumerate(dict.fromkeys(run_ids), 1):
        results.append(run_shift(run_id, store, seed=seed, should_stop=should_stop,
                                 say=lambda m, k=k: say(f"run {k} of {len(run_ids)} ({run_id}): {m}")))
    return results
