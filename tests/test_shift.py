"""The shift test (ftlab.shift): corruptions deterministic by seed and per image, checked against
torchvision's own functions, and a kept run re-evaluated through the library and the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from ftlab import shift
from ftlab.config import TrainConfig
from ftlab.errors import StopRequested
from ftlab.runs import RunStore

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(dataset="digits", backbone="small_cnn", weights="random", strategy="full", image_size=16,
            batch_size=64, epochs=1, lr=3e-3)


def _images(n: int = 6, size: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("name", shift.NAMES)
def test_a_corruption_is_deterministic_by_seed_and_per_image(name):
    x, idx = _images(), [10, 11, 12, 13, 14, 15]
    a = shift.corrupt(x, name, 2, idx, seed=3)
    assert torch.equal(a, shift.corrupt(x, name, 2, idx, seed=3))  # the same seed: the same copies
    # an image's copy does not depend on the batch it is in
    assert torch.equal(a[2:4], shift.corrupt(x[2:4], name, 2, idx[2:4], seed=3))
    assert a.dtype == torch.uint8 and a.shape == x.shape and not torch.equal(a, x)
    if name in ("colour jitter", "rotation", "noise"):  # the ones that draw: another seed, other copies
        others = [shift.corrupt(x, name, 2, idx, seed=s) for s in (4, 5, 6)]
        assert any(not torch.equal(a, o) for o in others)


def test_severity_two_is_further_from_the_image_than_one():
    x = _images(8, 64)
    for name in shift.NAMES:
        d1, d2 = ((shift.corrupt(x, name, s, range(8)).float() - x.float()).abs().mean() for s in (1, 2))
        assert d2 > d1, name


def test_corruptions_match_torchvision():
    """Blur, JPEG and greyscale are torchvision's functions at the stated settings; the batched jitter
    is torchvision's brightness, contrast and saturation in that order (within their uint8 rounding
    between steps); the rotation is 15 degrees one way or the other."""
    x = _images(3, 224)
    assert torch.equal(shift.corrupt(x, "gaussian blur", 1, range(3)), F.gaussian_blur(x, [13, 13], [2.0, 2.0]))
    assert torch.equal(shift.corrupt(x, "jpeg", 1, range(3)), F.jpeg(x, 20))
    assert torch.equal(shift.corrupt(x, "greyscale", 2, range(3)), F.rgb_to_grayscale(x, 3))
    b, k, s = 1.3, 0.7, 1.6
    mine = shift._jitter(x, np.array([[b, k, s]] * 3))
    theirs = F.adjust_saturation(F.adjust_contrast(F.adjust_brightness(x, b), k), s)
    diff = (mine.int() - theirs.int()).abs()
    assert diff.max() <= 5 and diff.float().mean() < 1
    rotated = shift.corrupt(x, "rotation", 1, range(3))
    each = [F.rotate(x[i], a, interpolation=F.InterpolationMode.BILINEAR, fill=[0.0]) for i in range(3)
            for a in (15, -15)]
    assert all(any(torch.equal(rotated[i], e) for e in each[2 * i:2 * i + 2]) for i in range(3))


def test_noise_has_the_stated_spread():
    x = torch.full((4, 3, 64, 64), 128, dtype=torch.uint8)
    noisy = shift.corrupt(x, "noise", 1, range(4)).float() - 128
    assert noisy.std().item() == pytest.approx(0.08 * 255, rel=0.05) and abs(noisy.mean().item()) < 1


def test_unknown_corruption_or_severity_is_refused():
    with pytest.raises(ValueError, match="choose one of"):
        shift.corrupt(_images(), "fog", 1, range(6))
    with pytest.raises(ValueError, match="not 1 or 2"):
        shift.corrupt(_images(), "jpeg", 3, range(6))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, str]:
    from ftlab.engine import run

    home = tmp_path_factory.mktemp("shift-home")
    old = os.environ.get("FTLAB_HOME")
    os.environ["FTLAB_HOME"] = str(home)
    try:
        summary = run(TrainConfig(**TINY), store=RunStore(home))
    finally:
        os.environ.pop("FTLAB_HOME") if old is None else os.environ.__setitem__("FTLAB_HOME", old)
    assert summary["stopped_reason"] == "completed", summary
    return home, summary["run_id"]


def test_the_shift_test_of_a_kept_run(tiny_run):
    home, rid = tiny_run
    store = RunStore(home)
    said = []
    result = shift.run_shift(rid, store, seed=0, say=said.append)
    record = store.get(rid)
    # the clean accuracy is the run's own stored val accuracy: the same images, the same model
    assert result.clean == pytest.approx(record.final["val"]["accuracy"], abs=1e-9)
    assert result.images == len(record.final["val"]["indices"])
    assert [(r.corruption, r.severity) for r in result.rows] == [(n, s) for n in shift.NAMES for s in (1, 2)]
    assert all(0 <= r.accuracy <= 1 for r in result.rows)
    assert said[-1].startswith("12/12: noise, severity 2")
    again = shift.run_shift(rid, store, seed=0)
    assert [r.accuracy for r in again.rows] == [r.accuracy for r in result.rows]
    rows = shift.table([result, again])
    assert rows[0]["corruption"] == "none (clean)" and len(rows) == 14
    assert rows[-1][f"{result.label} ({rid})"] == pytest.approx(result.mean_shifted)
    with pytest.raises(StopRequested):
        shift.run_shift(rid, store, should_stop=lambda: True)


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FTLAB_HOME": str(home), "FTLAB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "ftlab", "shift", *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.mark.slow
def test_cli_shift(tiny_run):
    home, rid = tiny_run
    r = _cli(home, "--run", rid, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["runs"][0]["run_id"] == rid and len(out["runs"][0]["rows"]) == 12 and len(out["table"]) == 14
    assert "12/12" in r.stderr  # progress on stderr


@pytest.mark.parametrize("run_id", ["nope", "20250101-120000-a1b2c3"])
def test_cli_shift_unknown_run(tiny_run, run_id):
    r = _cli(tiny_run[0], "--run", run_id)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
