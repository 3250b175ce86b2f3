"""Export: the TorchScript and ONNX files classify as ftlab does, raw images are resized inside them
as ftlab's PIL decoding does, int8 keeps its accuracy, bad input is refused with nothing written,
and the Runs page exports. Tiny runs: digits, small_cnn, random weights, 16 px, 1 epoch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from ftlab import checkpoints, data, export
from ftlab.config import TrainConfig
from ftlab.predict import Predictor
from ftlab.runs import RunStore, new_run_id
from ftlab.transforms import Preprocessing

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(dataset="digits", backbone="small_cnn", weights="random", strategy="full", image_size=16,
            batch_size=64, epochs=1, lr=3e-3)


def _train(home: Path, **options) -> str:
    from ftlab.engine import run  # the test trains; export itself never imports the engine

    summary = run(TrainConfig(**{**TINY, **options}), store=RunStore(home))
    assert summary["stopped_reason"] == "completed", summary
    return summary["run_id"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, str]:
    """One digits run for the module (its own home: conftest gives each test another FTLAB_HOME)."""
    home = tmp_path_factory.mktemp("export-home")
    old = os.environ.get("FTLAB_HOME")
    os.environ["FTLAB_HOME"] = str(home)
    try:
        return home, _train(home)
    finally:
        os.environ.pop("FTLAB_HOME") if old is None else os.environ.__setitem__("FTLAB_HOME", old)


def _val(home: Path, run_id: str) -> tuple[dict, data.Decoded]:
    store = RunStore(home)
    record, checkpoint = store.get(run_id), store.load_checkpoint(run_id)
    decoded, why = export.validation_images(record, checkpoint, checkpoints.preprocessing(checkpoint))
    assert decoded is not None, why
    return checkpoint, decoded


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_the_exported_file_loads_back_and_classifies_as_ftlab(tiny_run, tmp_path, fmt):
    """Loaded as a user would (torch.jit.load, onnxruntime), on the run's validation images at the
    model's size, against Predictor: the probabilities agree within 1e-4 and sum to 1."""
    home, run_id = tiny_run
    result = export.export_run(run_id, fmt, out=tmp_path / "out", store=RunStore(home))
    assert result.model_path == tmp_path / "out" / f"model{export.SUFFIX[fmt]}"
    assert _files(tmp_path / "out") == sorted(["labels.json", result.model_path.name])  # no temp file left
    checkpoint, val = _val(home, run_id)
    expected = Predictor(checkpoint).probabilities(val.images).numpy()
    if fmt == "onnx":
        session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["images"]
        got = np.concatenate([session.run(None, {"images": val.images[i:i + 50].numpy()})[0]
                              for i in range(0, len(val.images), 50)])
    else:
        module = torch.jit.load(str(result.model_path))
        with torch.no_grad():
            got = torch.cat([module(val.images[i:i + 50]) for i in range(0, len(val.images), 50)]).numpy()
    assert got.shape == expected.shape == (len(val.images), 10)
    assert np.abs(got - expected).max() <= 1e-4
    assert np.allclose(got.sum(1), 1, atol=1e-5)
    c = result.check
    assert c.ran and c.images == len(val.images) and c.max_delta <= export.TOLERANCE
    assert c.accuracy == pytest.approx(float((expected.argmax(1) == val.labels.numpy()).mean()), abs=1 / len(got))
    assert result.size_bytes == result.model_path.stat().st_size > 0
    assert set(c.latency_ms) == {"1", "32"} and all(v > 0 for v in c.latency_ms.values())


def _photo(w: int, h: int, seed: int) -> Image.Image:
    """A smooth picture with detail at every scale (a resampling fault shows, unlike a flat colour)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([np.sin(xx * 7 + c) * np.cos(yy * 5 - c) for c in range(3)], -1) * 100 + 128
    return Image.fromarray(np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8))


def _pil_reference(image: Image.Image, pp: Preprocessing) -> torch.Tensor:
    """What the preprocessing means, computed by PIL as ftlab decodes: shorter side to ``resize``,
    centre ``size`` crop (torchvision's rounding: `decoding.crop_box`), in one bilinear resampling
    of the crop's box."""
    from ftlab.data import decoding

    box = decoding.crop_box(*image.size, pp.size, pp.resize)
    return torch.from_numpy(np.array(image.resize((pp.size, pp.size), Image.Resampling.BILINEAR, box=box)))\
        .permute(2, 0, 1)


@pytest.mark.parametrize("resize", [16, 20])
@pytest.mark.parametrize("w,h", [(40, 30), (23, 61), (16, 12), (300, 200)])
def test_raw_images_are_resized_inside_the_model_as_pil_does(w, h, resize):
    """Pixels within one level of PIL's, for shrinking and enlarging, portrait and landscape, with
    and without a crop margin; all but a few equal where PIL, like the model, resamples the columns
    first (landscape and square images; for tall ones Pillow 13 runs the rows first, so the
    rounding between the passes falls elsewhere)."""
    pp = Preprocessing(16, resize, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    image = _photo(w, h, seed=w * h)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()
    ours = export.ImageClassifier(torch.nn.Identity(), pp).resize_and_crop(x)[0]
    diff = (ours - _pil_reference(image, pp).float()).abs()
    # a box at fractional offsets (torchvision's rounding of the resized size) puts one pixel in 20
    # on the other side of a rounding on a 16 x 12 image (mean 0.051 there, 0.003 at 40 x 30)
    assert diff.max() <= 1 and diff.mean() < (0.06 if w >= h else 0.35)


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_raw_images_of_other_sizes_go_through_within_the_stated_tolerance(tiny_run, tmp_path, fmt):
    """A batch of one raw image of another size (dynamic H, W) against ftlab's decoding of it."""
    home, run_id = tiny_run
    result = export.export_run(run_id, fmt, out=tmp_path, store=RunStore(home))
    run = export.load(result.model_path)
    predictor = Predictor.for_run(run_id, RunStore(home))
    for i, (w, h) in enumerate([(40, 30), (23, 61), (120, 90)]):
        image = _photo(w, h, seed=i)
        raw = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].contiguous()
        expected = predictor.probabilities(data.decode_image(image, predictor.image_size, predictor.preprocessing.resize)[None]).numpy()
        assert np.abs(run(raw.numpy()) - expected).max() <= export.RAW_TOLERANCE
    two = torch.from_numpy(np.stack([np.array(_photo(40, 30, s)) for s in (0, 1)])).permute(0, 3, 1, 2).contiguous()
    assert run(two.numpy()).shape == (2, 10)


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_int8_keeps_accuracy_within_one_point(tiny_run, tmp_path, fmt):
    home, run_id = tiny_run
    result = export.export_run(run_id, fmt, "int8", out=tmp_path, store=RunStore(home))
    assert result.model_path.name == f"model.int8{export.SUFFIX[fmt]}"
    c = result.check
    assert c.ran and c.tolerance is None
    checkpoint, val = _val(home, run_id)
    expected = Predictor(checkpoint).probabilities(val.images).numpy()
    got = export.probabilities(export.load(result.model_path), val.images)
    labels = val.labels.numpy()
    assert c.reference_accuracy == pytest.approx(float((expected.argmax(1) == labels).mean()))
    assert c.accuracy == pytest.approx(float((got.argmax(1) == labels).mean()))
    assert c.accuracy >= c.reference_accuracy - 0.01
    assert 0 < c.max_delta == pytest.approx(float(np.abs(got - expected).max()), abs=1e-6)  # quantized: not identical
    assert "int8" in result.lines()[0]


def test_labels_json_names_classes_preprocessing_and_the_file(tiny_run, tmp_path):
    home, run_id = tiny_run
    result = export.export_run(run_id, "onnx", out=tmp_path, store=RunStore(home))
    saved = json.loads((tmp_path / "labels.json").read_text(encoding="utf-8"))
    checkpoint = RunStore(home).load_checkpoint(run_id)
    pp = checkpoints.preprocessing(checkpoint)
    assert saved["classes"] == checkpoint["classes"] == [str(d) for d in range(10)]
    assert saved["preprocessing"]["size"] == pp.size == 16 and saved["preprocessing"]["resize"] == pp.resize
    assert saved["preprocessing"]["mean"] == pytest.approx(list(pp.mean))
    assert saved["preprocessing"]["std"] == pytest.approx(list(pp.std))
    assert saved["input"]["layout"] == "RGB uint8 NCHW"
    assert (saved["backbone"], saved["run_id"], saved["format"], saved["quantization"], saved["model_file"]) == \
        ("small_cnn", run_id, "onnx", "none", result.model_path.name)


def test_a_run_whose_data_set_is_gone_still_exports_and_says_why_it_was_not_checked(tmp_path, monkeypatch):
    folder = tmp_path / "pics"
    for c, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        (folder / c).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (20 + i, 18), colour).save(folder / c / f"{i}.png")
    home = tmp_path / "home"
    monkeypatch.setenv("FTLAB_HOME", str(home))
    run_id = _train(home, dataset=str(folder))
    for p in sorted(folder.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    folder.rmdir()
    result = export.export_run(run_id, "torchscript", store=RunStore(home))
    assert not result.check.ran and "cannot be loaded" in result.check.reason and result.check.max_delta is None
    assert result.model_path == RunStore(home).run_dir(run_id) / "export" / "model.pt" and result.model_path.is_file()
    assert any("not checked against ftlab's predictions" in line for line in result.lines())
    assert set(result.check.latency_ms) == {"1", "32"}


def test_an_export_that_fails_its_check_keeps_nothing(tiny_run, tmp_path, monkeypatch):
    home, run_id = tiny_run
    monkeypatch.setattr(export, "TOLERANCE", 0.0)  # no float export is bit-identical through onnxruntime
    with pytest.raises(export.ExportError, match="was not kept: .*more than the tolerance 0"):
        export.export_run(run_id, "onnx", out=tmp_path / "out", store=RunStore(home))
    assert _files(tmp_path / "out") == []


def run_cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FTLAB_HOME": str(home), "PYTHONIOENCODING": "utf-8:strict"}
    return subprocess.run([sys.executable, "-m", "ftlab", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=600)


def test_cli_export_prints_the_check_and_json_on_the_last_line(tiny_run, tmp_path):
    home, run_id = tiny_run
    r = run_cli("export", "--run", run_id, "--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--json", home=home)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["model_path"] == str(tmp_path / "m.onnx") and out["check"]["max_delta"] <= 1e-4
    assert "[ftlab] comparing with ftlab's predictions" in r.stderr
    r = run_cli("export", "--run", run_id, "--format", "torchscript", "--out", str(tmp_path), home=home)
    assert r.returncode == 0, r.stderr
    assert "max |Δ probability| against ftlab" in r.stdout and "ms at batch 32" in r.stdout
    assert sorted(_files(tmp_path)) == ["labels.json", "m.onnx", "model.pt"]


@pytest.mark.parametrize("case", ["unknown run", "not an id", "no checkpoint", "other kind", "out is a file",
                                  "out under a file", "unknown format"])
def test_cli_export_refuses_bad_input_with_a_message_and_writes_nothing(tiny_run, tmp_path, case):
    home, run_id = tiny_run
    plain = tmp_path / "notes.txt"
    plain.write_text("x")
    store = RunStore(home)
    bare = new_run_id()
    if case == "no checkpoint":  # a run that stopped before its first checkpoint
        store.create(bare, {"dataset": "digits", "backbone": "small_cnn", "strategy": "full"})
        store.finish(bare, "stopped", {})
    args, code, says = {
        "unknown run": (["--run", "20250101-120000-ffffff", "--format", "onnx"], 1, "unknown run"),
        "not an id": (["--run", "../etc", "--format", "onnx"], 1, "is not a run id"),
        "no checkpoint": (["--run", bare, "--format", "onnx"], 1, "has no checkpoint"),
        "other kind": (["--run", run_id, "--format", "onnx", "--out", str(tmp_path / "m.pt")], 1,
                       "names a torchscript file, but the format is onnx"),
        "out is a file": (["--run", run_id, "--format", "onnx", "--out", str(plain)], 1, "is a file, not a folder"),
        "out under a file": (["--run", run_id, "--format", "onnx", "--out", str(plain / "sub")], 1,
                             "cannot make the folder"),
        "unknown format": (["--run", run_id, "--format", "tflite"], 2, "invalid choice: 'tflite'"),
    }[case]
    before = _files(tmp_path), _files(home / "runs")
    r = run_cli("export", *args, home=home)
    assert r.returncode == code and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert (_files(tmp_path), _files(home / "runs")) == before


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_is_refused_and_left_empty(tiny_run, tmp_path):
    home, run_id = tiny_run
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        r = run_cli("export", "--run", run_id, "--format", "onnx", "--out", str(locked), home=home)
        assert r.returncode == 1 and "cannot write into" in r.stderr and not list(locked.iterdir())
    finally:
        locked.chmod(0o755)


def test_export_never_imports_the_engine(tiny_run, tmp_path):
    home, run_id = tiny_run
    code = ("import sys\nfrom ftlab import export, cli\n"
            f"export.export_run({run_id!r}, 'onnx', out={str(tmp_path)!r})\n"
            "assert cli.main(['export', '--run', " + repr(run_id) + ", '--format', 'torchscript', '--out', "
            + repr(str(tmp_path)) + "]) == 0\n"
            "print(sorted(m for m in sys.modules if m.startswith('ftlab')))\n"
            "assert 'ftlab.engine' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env={**os.environ, "FTLAB_HOME": str(home)})
    assert r.returncode == 0, r.stderr
    assert "ftlab.export" in r.stdout and "ftlab.engine" not in r.stdout


@pytest.mark.slow
def test_an_efficientnet_lite0_probe_exports_within_tolerance(tmp_path, monkeypatch):
    """The real backbone (batch norm, depthwise convolutions) through both exporters."""
    home = tmp_path / "home"
    monkeypatch.setenv("FTLAB_HOME", str(home))
    run_id = _train(home, backbone="efficientnet_lite0", strategy="linear-probe", image_size=64)
    for fmt in export.FORMATS:
        result = export.export_run(run_id, fmt, store=RunStore(home))
        assert result.check.ran and result.check.max_delta <= export.TOLERANCE


def test_the_runs_page_exports_the_selected_run_and_offers_the_files(app_env, monkeypatch):
    from test_app import app, goto

    home = Path(os.environ["FTLAB_HOME"])
    run_id = _train(home)
    at = goto(app(), "app_pages/runs.py")
    assert at.button(key="runs.export").disabled is False
    at.radio(key="runs.export_format").set_value("onnx").run()
    at.toggle(key="runs.export_int8").set_value(True).run()
    assert "MatMul and Gemm" in at.toggle(key="runs.export_int8").help  # ftlab's words for what is quantized
    at.button(key="runs.export").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    shown = at.success[0].value
    assert f"exported run {run_id} as onnx int8" in shown and "validation accuracy" in shown and "ms at batch 32" in shown
    exported = RunStore(home).run_dir(run_id) / "export" / "model.int8.onnx"
    assert exported.is_file() and (exported.parent / "labels.json").is_file()
    labels = {b.proto.label: b for b in at.get("download_button")}
    assert "Download model.int8.onnx" in labels and "Download labels.json" in labels
    assert not labels["Download model.int8.onnx"].proto.disabled


def test_a_write_that_fails_keeps_nothing_and_says_so(tiny_run, tmp_path, monkeypatch):
    """A folder that refuses the final rename (read-only, full: root ignores permission bits, so the
    refusal is made here) leaves neither the temporary files nor a half export."""
    home, run_id = tiny_run

    def refuse(*_):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(export.os, "replace", refuse)
    with pytest.raises(export.ExportError, match="could not write the export into .*Permission denied.*nothing was kept"):
        export.export_run(run_id, "torchscript", out=tmp_path / "out", store=RunStore(home))
    assert _files(tmp_path / "out") == []


def test_a_model_with_a_hidden_layer_head_exports_as_trained(tmp_path, monkeypatch):
    """The model comes from `checkpoints.load_model`, so a head edited at training exports unchanged."""
    home = tmp_path / "home"
    monkeypatch.setenv("FTLAB_HOME", str(home))
    run_id = _train(home, hidden=32, dropout=0.2)
    for fmt in export.FORMATS:
        result = export.export_run(run_id, fmt, store=RunStore(home))
        assert result.check.ran and result.check.max_delta <= export.TOLERANCE
