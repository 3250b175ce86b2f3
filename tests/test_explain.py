"""Class activation maps (ftlab.explain): the target block of every backbone, Grad-CAM against a
computation by hand, frozen backbones, a kept run left byte for byte as it was, and the CLI."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ftlab import backbones, checkpoints, edits, explain, freeze
from ftlab.config import TrainConfig
from ftlab.edit_options import ModelEdits
from ftlab.runs import RunStore
from ftlab.transforms import Preprocessing

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(dataset="digits", backbone="small_cnn", weights="random", strategy="full", image_size=16,
            batch_size=64, epochs=1, lr=3e-3)


def _checkpoint(name: str = "small_cnn", size: int = 16, classes: str = "abc", model=None, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = model or backbones.create_model(name, len(classes), "random", image_size=size)
    return checkpoints.build(model, TrainConfig(backbone=name, weights="random", image_size=size), tuple(classes),
                             Preprocessing.for_backbone(name, size), 1, 0.5)


def _png(size=(40, 30), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, str]:
    """One digits run for the module, in its own home."""
    from ftlab.engine import run

    home = tmp_path_factory.mktemp("explain-home")
    old = os.environ.get("FTLAB_HOME")
    os.environ["FTLAB_HOME"] = str(home)
    try:
        summary = run(TrainConfig(**TINY), store=RunStore(home))
    finally:
        os.environ.pop("FTLAB_HOME") if old is None else os.environ.__setitem__("FTLAB_HOME", old)
    assert summary["stopped_reason"] == "completed", summary
    return home, summary["run_id"]


# --- the target block ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", backbones.list_backbones())
def test_every_backbone_declares_its_last_spatial_block(name):
    """The contract over the registry: the declared block exists and its output is spatial: feature
    maps, with only the pool after it; or ViT's class token and a square of patch tokens, with one
    block after it (the last block's patch tokens reach nothing: only its class token is read)."""
    spec = backbones.get_spec(name)
    shapes = edits._meta_shapes(name, spec.fixed_size or spec.default_size)
    order = list(shapes)
    assert spec.cam_block in order
    shape = shapes[spec.cam_block]
    after = order[order.index(spec.cam_block) + 1:]
    if len(shape) == 3:
        assert shape[1] > 1 and shape[2] > 1 and after == ["pool"]
    else:
        assert len(shape) == 2 and round((shape[0] - 1) ** 0.5) ** 2 == shape[0] - 1
        assert len(after) == 2 and after[-1] == "pool" and len(shapes[after[0]]) == 2


def test_the_target_follows_the_edits():
    """Cut before the declared block: the last block kept; an adapter after it: the adapter."""
    plain = backbones.create_model("small_cnn", 3, "random")
    cut = backbones.create_model("small_cnn", 3, "random", edits=ModelEdits(truncate_after="stage2"), image_size=16)
    adapted = backbones.create_model("small_cnn", 3, "random", edits=ModelEdits(adapter_after=("stage3",)),
                                     image_size=16)
    assert [explain.target_block(m) for m in (plain, cut, adapted)] == ["stage3", "stage2", "adapter_stage3"]


def test_vit_tokens_become_a_square_of_maps():
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)  # a class token and 2 x 2 patches
    maps = explain._tokens_to_maps(tokens)
    assert maps.shape == (2, 3, 2, 2)
    assert maps[1, 2, 1, 0].item() == tokens[1, 1 + 2 * 1 + 0, 2].item()  # patch (row 1, col 0), channel 2
    assert explain._tokens_to_maps(maps) is maps  # feature maps pass unchanged


# --- the maps ----------------------------------------------------------------------------------

def _by_hand(model, x: torch.Tensor, block: str, target: int) -> np.ndarray:
    """Grad-CAM as Selvaraju et al. define it, with torch's autograd: the block's activations A,
    their gradient of the class score, channel weights the gradient's spatial mean, ReLU of the
    weighted sum, scaled to [0, 1], upsampled bilinearly to the input and scaled again."""
    model = model.eval()
    names = model.block_names
    a = model[:names.index(block) + 1](x).detach().requires_grad_(True)
    score = model.forward_from(a, names.index(block) + 1)[0, target]
    (g,) = torch.autograd.grad(score, a)
    cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1)).detach()[0]
    cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
    up = F.interpolate(cam[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    return ((up - up.min()) / (up.max() - up.min() + 1e-7)).numpy()


def test_gradcam_equals_a_computation_by_hand():
    ex = explain.Explainer(_checkpoint(size=32))
    pixels = ex.pixels(_png())
    result = ex.explain(pixels, true=2)
    reference = backbones.create_model("small_cnn", 3, "random")
    reference.load_state_dict(_checkpoint(size=32)["model"])
    x = ex.predictor.prep(pixels[None], train=False)
    for m in result.maps[:2]:
        expected = _by_hand(reference, x, "stage3", m.class_index)
        assert np.abs(m.cam - expected).max() < 0.02, m.title  # OpenCV's bilinear against torch's
    with torch.no_grad():
        probs = reference(x).softmax(1)[0]
    assert result.predicted == int(probs.argmax()) and result.maps[0].class_index == result.predicted
    assert result.maps[1].class_index == 2 and result.true == 2
    assert result.probabilities == pytest.approx(probs.tolist(), abs=1e-6)


def test_map_shapes_and_ranges():
    ex = explain.Explainer(_checkpoint(size=32))
    result = ex.explain(ex.pixels(_png((50, 70))))
    assert result.image.shape == (32, 32, 3) and result.image.dtype == np.uint8
    assert [m.method for m in result.maps] == ["gradcam", "gradcam", "eigencam"]
    for m in result.maps:
        assert m.cam.shape == (32, 32) and 0 <= m.cam.min() and m.cam.max() <= 1 + 1e-6
        assert m.overlay.shape == (32, 32, 3) and m.overlay.dtype == np.uint8
    # no true class given: the second map is the second most likely class's
    second = int(np.argsort(result.probabilities)[-2])
    assert result.true is None and result.maps[1].class_index == second and result.notes
    assert result.strip().size == (4 * explain.PANEL_PX, explain.PANEL_PX + 28)


def test_a_frozen_backbone_still_gets_its_maps():
    """grad-cam alone on a model whose parameters need no gradient finds no gradient (what users of
    the library meet on frozen models); the Explainer's maps of the same model are not empty and are
    the same as those of the model not frozen."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = backbones.create_model("small_cnn", 3, "random")
    frozen_all = backbones.create_model("small_cnn", 3, "random")
    frozen_all.load_state_dict(model.state_dict())
    frozen_all.requires_grad_(False)
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(Exception):
        with GradCAM(frozen_all.eval(), [frozen_all.stage3]) as cam:
            cam(x, [ClassifierOutputTarget(0)])

    probe = backbones.create_model("small_cnn", 3, "random")
    probe.load_state_dict(model.state_dict())
    freeze.apply_freeze(probe, freeze.make_plan(probe.param_blocks(), "linear-probe").frozen_at(0))
    assert not any(p.requires_grad for p in probe.stage3.parameters())
    pixels = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    a = explain.Explainer(_checkpoint(size=32, model=probe)).explain(pixels, true=1)
    b = explain.Explainer(_checkpoint(size=32, model=model)).explain(pixels, true=1)
    for ma, mb in zip(a.maps, b.maps):
        assert ma.cam.max() > 0.99 and ma.cam.std() > 0.01
        np.testing.assert_allclose(ma.cam, mb.cam, atol=1e-5)


def test_explaining_changes_nothing_of_the_kept_run(tiny_run):
    home, rid = tiny_run
    store = RunStore(home)
    path = store.checkpoint_path(rid)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    ex = explain.Explainer.for_run(rid, store)
    weights = {k: v.clone() for k, v in ex.model.state_dict().items()}
    record = store.get(rid)
    from ftlab import data

    ds = data.load_for(TrainConfig.from_dict(record.config))
    result = explain.of_val_image(ex, record, ds, 4)
    explain.of_file(ex, _png(), "noise.png", record.classes[1])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert all(torch.equal(v, ex.model.state_dict()[k]) for k, v in weights.items())
    assert all(p.grad is None for p in ex.model.parameters())
    row = explain.val_images(record)[4]
    assert result.true == row["label"] and result.predicted == row["predicted"]
    assert result.image.shape == (16, 16, 3) and result.name == "val image #4"


def test_runs_on_the_same_val_images_are_found(tiny_run):
    home, rid = tiny_run
    record = RunStore(home).get(rid)
    from types import SimpleNamespace as S

    other = S(id="x", classes=record.classes, final=record.final)
    moved = S(id="y", classes=record.classes, final={"val": {**record.final["val"],
                                                             "indices": record.final["val"]["indices"][::-1]}})
    assert [r.id for r in explain.same_val_split([record, other, moved], record)] == [rid, "x"]


def test_lite0_maps_cost_one_forward_pass_of_the_backbone():
    """EfficientNet-Lite0 with its ImageNet weights at 224 px: two Grad-CAMs and EigenCAM run the
    blocks up to the target once (the time is bench/bench_explain.py's: a loaded machine makes it vary)."""
    model = backbones.create_model("efficientnet_lite0", 2, "imagenet")
    ex = explain.Explainer(_checkpoint("efficientnet_lite0", 224, "ab", model=model))
    pixels = ex.pixels(_png((300, 260)))
    calls = {"stem": 0, "conv_head": 0, "head": 0}
    for name in calls:
        ex.model.get_submodule(name).register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    result = ex.explain(pixels, true=0)
    assert ex.block == "conv_head" and result.maps[0].cam.shape == (224, 224)
    assert calls["stem"] == 1 and calls["conv_head"] == 1  # the backbone once, without gradients
    assert calls["head"] == 2  # the head: once for Grad-CAM (both classes in one batch), once for EigenCAM


# --- the command line ---------------------------------------------------------------------------

def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FTLAB_HOME": str(home), "FTLAB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "ftlab", "explain", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_writes_the_strip(tiny_run, tmp_path):
    home, rid = tiny_run
    out = tmp_path / "maps.png"
    r = _cli(home, "--run", rid, "--val-image", "2", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["image"] == "val image #2" and summary["target_block"] == "stage3" and len(summary["maps"]) == 3
    assert Image.open(out).size == (4 * explain.PANEL_PX, explain.PANEL_PX + 28)


@pytest.mark.parametrize("case", ["unknown run", "not an image", "huge image", "unknown class", "no image",
                                  "no folder", "no such val image"])
def test_cli_hostile_inputs_get_a_sentence(tiny_run, tmp_path, case):
    home, rid = tiny_run
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    huge = tmp_path / "huge.png"
    Image.new("L", (12000, 12000)).save(huge)  # 144 M pixels: over the default limit
    good = tmp_path / "ok.png"
    good.write_bytes(_png())
    args = {"unknown run": ["--run", "20250101-120000-a1b2c3", str(good)],
            "not an image": ["--run", rid, str(junk)],
            "huge image": ["--run", rid, str(huge)],
            "unknown class": ["--run", rid, str(good), "--class", "zebra"],
            "no image": ["--run", rid],
            "no folder": ["--run", rid, str(good), "--out", str(tmp_path / "nope" / "m.png")],
            "no such val image": ["--run", rid, "--val-image", "99999"]}[case]
    r = _cli(home, *args, "--out", str(tmp_path / "m.png")) if case != "no folder" else _cli(home, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert not (tmp_path / "m.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", backbones.list_backbones())
def test_every_backbone_gets_maps_that_are_not_empty(name):
    """Random weights, the smallest size each takes: Grad-CAM for two classes and EigenCAM vary over
    the image (a target whose gradient never reaches the head, as ViT's last block, would be flat)."""
    spec = backbones.get_spec(name)
    size = spec.fixed_size or max(spec.min_size, 64)
    ex = explain.Explainer(_checkpoint(name, size))
    result = ex.explain(torch.randint(0, 256, (3, size, size), dtype=torch.uint8), true=1)
    assert ex.block == spec.cam_block
    assert all(m.cam.shape == (size, size) for m in result.maps)
    assert result.maps[0].cam.std() > 1e-3 and result.maps[2].cam.std() > 1e-3
    # random weights: a class with no positive evidence anywhere has a flat Grad-CAM, and a note says so
    assert result.maps[1].cam.std() > 1e-3 or any("zero everywhere" in n for n in result.notes)
