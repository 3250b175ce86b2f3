"""Export a kept run's best model as one file that needs only torch or onnxruntime to use.

The file takes RGB uint8 images, (N, 3, H, W), and returns class probabilities (softmax, in
the order of ``labels.json``'s classes). Normalisation is inside it, and so is the resize and
centre crop: an image of exactly the model's size is taken as already prepared and goes
straight to normalisation (bit for bit what ftlab evaluates); any other size is resized inside
the model the way ftlab's PIL decoding does it (PIL's bilinear filter, widened when shrinking,
on the centre crop's box), to within `RAW_TOLERANCE`. ``labels.json`` beside the file names the
classes and the preprocessing.

Every export is checked before it is kept: the exported file, loaded back, classifies the
run's validation images as ftlab does (`check`). The files are written under temporary names
and renamed only once the check passed, so a failed export leaves nothing behind.

Only the checkpoint format (`ftlab.checkpoints`) rebuilds the model, never the engine: an
edited model (a bigger head, a truncated backbone, adapters) exports as it was trained.
"""
from __future__ import annotations

import json
import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ftlab import checkpoints, data
from ftlab import tasks as task_options
from ftlab.checkpoints import CheckpointError
from ftlab.export_formats import (  # noqa: F401  (the names and words, re-exported)
    FILE_SUFFIXES, FORMAT_HELP, FORMATS, QUANTIZATIONS, QUANTIZE_HELP, SUFFIX)
from ftlab.runs import RunStore
from ftlab.transforms import Preprocess, Preprocessing

TOLERANCE = 1e-4  # max |Δ probability| allowed for an fp32 export on images at the model's size
INT8_POINTS = 0.01  # an int8 export may lose at most this much validation accuracy
# Max |Δ probability| for raw photos resized inside the model, against ftlab's PIL decoding of the
# same files. Measured on the 153 ants/bees validation photos (Lite0 linear probe): 0.007 for the
# 131 decoded in full (mean pixel difference 0.01 levels: PIL rounds its filter to fixed point),
# 0.049 for the 22 JPEGs at least twice the model's size, which PIL decodes at half scale (draft
# mode) before resizing while the model sees every pixel (mean pixel difference 1.5 levels).
RAW_TOLERANCE = 0.05
INPUT_LAYOUT = "RGB uint8 NCHW"
OPSET = 17
WORKING = "Exporting, then checking the file against ftlab's predictions on the run's validation images…"


class ExportError(ValueError):
    """An export that cannot be made or did not pass its check, with what to do."""


# --- the model file's contents --------------------------------------------------------------

def _filter_weights(in_size: int, start: torch.Tensor, length: torch.Tensor, out_size: int) -> torch.Tensor:
    """(out_size, in_size) weights of PIL's bilinear resampling of ``[start, start + length)`` of an
    axis of ``in_size`` pixels onto ``out_size``: a triangle widened by the scale when shrinking
    (so every source pixel counts: antialiased), each row normalised to sum 1. Scalars are float32
    tensors, not Python floats: ONNX would carry those as doubles."""
    scale = length / out_size
    support = scale.clamp(min=1.0)
    centre = start + (torch.arange(out_size, dtype=torch.float32) + 0.5) * scale
    position = torch.arange(in_size, dtype=torch.float32) + 0.5
    w = (1.0 - ((position.unsqueeze(0) - centre.unsqueeze(1)) / support).abs()).clamp(min=0.0)
    return w / w.sum(1, keepdim=True)


class ImageClassifier(nn.Module):
    """RGB uint8 images (N, 3, H, W) -> class probabilities (N, K), with the preprocessing inside.

    An image of exactly ``size`` x ``size`` is taken as prepared already (resized and cropped as
    ftlab decodes): it is only normalised. Any other size is resized so its shorter side is
    ``resize`` and its centre ``size`` x ``size`` is kept, in one resampling of the crop's box as
    ftlab's decoding does (columns first, rounded to whole levels between and after the passes,
    as PIL's 8-bit resampling does: PIL's pixels but for a few off by one level; for images much
    taller than wide Pillow resamples the rows first, and about a quarter differ by one level)."""

    def __init__(self, model: nn.Module, preprocessing: Preprocessing, sizes: tuple[int, ...] = ()):
        super().__init__()
        self.model = model
        # several tasks: each task's columns, its probabilities summing to 1 within them; one task: [0]
        # (a list TorchScript can type: it cannot an empty one)
        self.sizes = [int(n) for n in sizes] if len(sizes) > 1 else [0]
        self.size = int(preprocessing.size)
        self.resize = int(preprocessing.resize)
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[2] != self.size or x.shape[3] != self.size:
            x = self.resize_and_crop(x)
        logits = self.model((x - self.mean) / self.std)
        if len(self.sizes) < 2:
            return logits.softmax(1)
        return torch.cat([part.softmax(1) for part in torch.split(logits, self.sizes, 1)], 1)

    def resize_and_crop(self, x: torch.Tensor) -> torch.Tensor:
        # the box of `ftlab.data.decoding.crop_box`: torchvision's Resize(resize) + CenterCrop(size)
        # with their rounding (the longer side truncated, the crop's offset rounded half to even)
        h, w = x.shape[2], x.shape[3]
        height, width = torch.tensor(h, dtype=torch.float32), torch.tensor(w, dtype=torch.float32)
        short, long = torch.minimum(height, width), torch.maximum(height, width)
        new_long = torch.floor(self.resize * long / short)
        resized = torch.tensor(float(self.resize), dtype=torch.float32)
        new_w = torch.where(width <= height, resized, new_long)
        new_h = torch.where(width <= height, new_long, resized)
        left, top = torch.round((new_w - self.size) / 2.0), torch.round((new_h - self.size) / 2.0)
        sx, sy = width / new_w, height / new_h
        rows = _filter_weights(h, top * sy, self.size * sy, self.size)
        cols = _filter_weights(w, left * sx, self.size * sx, self.size)
        x = torch.floor(torch.matmul(x, cols.t()) + 0.5)
        return torch.floor(torch.matmul(rows, x) + 0.5)


def wrap(checkpoint: dict, quantize: str = "none") -> ImageClassifier:
    """The checkpoint's model (as `checkpoints.load_model` rebuilds it) inside `ImageClassifier`,
    its Linear layers dynamically quantized for a TorchScript int8 export."""
    model = checkpoints.load_model(checkpoint)
    if quantize == "int8":
        from torch.ao.quantization import quantize_dynamic

        model = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    return ImageClassifier(model, checkpoints.preprocessing(checkpoint), checkpoints.task_sizes(checkpoint)).eval()


def script(wrapper: ImageClassifier) -> torch.jit.ScriptModule:
    """TorchScript of the wrapper: the model traced at its size (eval mode has one path through
    it), the wrapper scripted around it, so the size test and the resize stay in the file."""
    example = torch.zeros(2, 3, wrapper.size, wrapper.size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notes and tracer hints, not faults
        wrapper.model = torch.jit.trace(wrapper.model, example, check_trace=False)
        return torch.jit.script(wrapper)


def _write_torchscript(wrapper: ImageClassifier, path: Path) -> None:
    torch.jit.save(script(wrapper), str(path))


def _write_onnx(wrapper: ImageClassifier, path: Path, quantize: str) -> None:
    """The TorchScript-based exporter (``dynamo=False``): the torch.export one needs onnxscript,
    which the pinned requirements do not hold, and could not keep the size test without torch.cond."""
    scripted = script(wrapper)
    example = torch.zeros(1, 3, wrapper.size, wrapper.size, dtype=torch.uint8)
    fp32 = path if quantize == "none" else path.with_name(path.name + ".fp32")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(scripted, (example,), str(fp32), dynamo=False, opset_version=OPSET,
                              input_names=["images"], output_names=["probabilities"],
                              dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                            "probabilities": {0: "batch"}})
        if quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # Convolutions stay float32: quantizing them too (dynamically, or statically per channel on 64
            # calibration images) cost the ants/bees Lite0 probe 1.3 and 2 points of validation accuracy.
            logging.disable(logging.WARNING)  # its advice to pre-process, printed on every call
            try:
                quantize_dynamic(str(fp32), str(path), op_types_to_quantize=["MatMul", "Gemm"],
                                 weight_type=QuantType.QInt8)
            finally:
                logging.disable(logging.NOTSET)
    finally:
        if fp32 != path:
            with suppress(OSError):
                fp32.unlink()


def _write(wrapper: ImageClassifier, path: Path, fmt: str, quantize: str) -> None:
    try:
        if fmt == "torchscript":
            _write_torchscript(wrapper, path)
        else:
            _write_onnx(wrapper, path, quantize)
    except OSError:
        raise
    except Exception as err:  # noqa: BLE001 - a tracer or exporter fault is this model's, said in one line
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        raise ExportError(f"{fmt} could not export this model ({type(err).__name__}: {first}); nothing was kept") \
            from None


# --- loading an exported file back --------------------------------------------------------------

Runner = Callable[[np.ndarray], np.ndarray]  # uint8 (N, 3, H, W) -> probabilities (N, K)


def load(path: Path) -> Runner:
    """An exported file ready to run on the CPU, as a user would load it."""
    if path.suffix == ".onnx" or path.name.endswith(".onnx.tmp"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its notes on unused initializers are not faults
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda images: session.run(None, {"images": np.ascontiguousarray(images)})[0]
    module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(images))).numpy()
    return run


def probabilities(run: Runner, images: torch.Tensor, batch: int = 32) -> np.ndarray:
    return np.concatenate([run(images[i:i + batch].numpy()) for i in range(0, len(images), batch)])


# --- the check -----------------------------------------------------------------------------------

@dataclass
class Check:
    """How the exported file compares with ftlab on the run's validation images."""

    ran: bool
    reason: str = ""  # why it could not run
    images: int = 0
    max_delta: float | None = None  # max |Δ probability| against ftlab's own predictions
    tolerance: float | None = None  # the max_delta allowed (fp32 only)
    accuracy: float | None = None  # the exported file's validation accuracy
    reference_accuracy: float | None = None  # ftlab's own (fp32) on the same images
    latency_ms: dict = field(default_factory=dict)  # per image, CPU, by batch size ("1", "32")

    def failure(self, quantize: str) -> str:
        """What makes the export unfit to keep ('' when it passed or could not run)."""
        if not self.ran:
            return ""
        if self.tolerance is not None and self.max_delta > self.tolerance:
            return (f"the exported model's probabilities differ from ftlab's by up to {self.max_delta:.2e} on the "
                    f"{self.images} validation images, more than the tolerance {self.tolerance:g}")
        if quantize == "int8" and self.accuracy < self.reference_accuracy - INT8_POINTS - 1e-9:
            return (f"int8 quantization lowers validation accuracy from {self.reference_accuracy:.3f} to "
                    f"{self.accuracy:.3f}, more than {INT8_POINTS * 100:.0f} point: export in float32 instead")
        return ""


def validation_images(record, checkpoint: dict, pp: Preprocessing) -> tuple[data.Decoded | None, str]:
    """The run's validation images decoded as ftlab decodes them, or None and why they cannot be."""
    from ftlab.config import TrainConfig

    indices = record.split.get("val") if isinstance(record.split, dict) else None
    if not indices or not all(isinstance(i, int) and i >= 0 for i in indices):
        return None, "the run has no validation split"
    try:
        ds = data.load_for(TrainConfig.from_dict(record.config), download=False)
    except (data.DataError, KeyError, TypeError, ValueError) as err:
        return None, f"its data set cannot be loaded ({err.args[0] if err.args else err})"
    if list(ds.classes) != list(checkpoint["classes"]):
        return None, "its data set's classes are no longer the ones the run was trained on"
    if max(indices) >= len(ds):
        return None, "its data set holds fewer images than when the run was trained"
    # the one place images are decoded for the check: as the run decoded them (resize, then crop)
    try:
        decoded = data.decode(ds, np.asarray(indices), pp.size, resize=pp.resize)
    except data.DataError as err:
        return None, f"its validation images cannot be decoded ({err.args[0] if err.args else err})"
    if len(decoded.indices) == 0:
        return None, "none of its validation images can be decoded any more"
    return decoded, ""


def reference_probabilities(checkpoint: dict, images: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """ftlab's own predictions: the checkpoint's model after the run's preprocessing."""
    model = checkpoints.load_model(checkpoint)
    prep = Preprocess(checkpoints.preprocessing(checkpoint), torch.device("cpu"))
    with torch.no_grad():
        sizes = checkpoints.task_sizes(checkpoint)
        return torch.cat([task_options.probabilities(model(prep(images[i:i + batch], train=False)), sizes)
                          for i in range(0, len(images), batch)])


def latency_ms(run: Runner, images: torch.Tensor, batch: int, repeats: int = 5) -> float:
    """Median CPU time per image over ``repeats`` batches of ``batch``, after warm-up batches."""
    x = images[:batch].numpy()
    if len(x) < batch:
        x = np.concatenate([x] * (batch // max(len(x), 1) + 1))[:batch]
    for _ in range(5 if batch == 1 else 2):  # TorchScript's profiling executor optimises a new shape's first calls
        run(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) / batch * 1000


def check(path: Path, checkpoint: dict, record, quantize: str, say: Callable[[str], None]) -> Check:
    pp = checkpoints.preprocessing(checkpoint)
    say("decoding the run's validation images")
    decoded, why = validation_images(record, checkpoint, pp)
    run = load(path)
    if decoded is None:
        sample = torch.randint(0, 256, (32, 3, pp.size, pp.size), dtype=torch.uint8)
        return Check(False, why, latency_ms={str(b): latency_ms(run, sample, b) for b in (1, 32)})
    say(f"comparing with ftlab's predictions on {len(decoded.indices)} validation images")
    ours = reference_probabilities(checkpoint, decoded.images).numpy()
    theirs = probabilities(run, decoded.images)
    labels = decoded.labels.numpy()
    # the first task's columns: its accuracy is the run's (with several tasks the others follow them)
    first = len(checkpoint["classes"])
    say("timing on the CPU")
    return Check(True, images=len(labels), max_delta=float(np.abs(ours - theirs).max()),
                 tolerance=TOLERANCE if quantize == "none" else None,
                 accuracy=float((theirs[:, :first].argmax(1) == labels).mean()),
                 reference_accuracy=float((ours[:, :first].argmax(1) == labels).mean()),
                 latency_ms={str(b): latency_ms(run, decoded.images, b) for b in (1, 32)})


# --- where the files go ---------------------------------------------------------------------------

def model_name(fmt: str, quantize: str) -> str:
    return f"model{'.int8' if quantize == 'int8' else ''}{SUFFIX[fmt]}"


def target(out: Path | str | None, run_dir: Path, fmt: str, quantize: str) -> Path:
    """The model file's path: ``out`` when it names a file of ``fmt``'s kind, else a file in the
    folder ``out`` (by default the run's own ``export`` folder). Refuses what cannot be used."""
    if out is None or not str(out).strip():  # an empty --out (a blank page field) is the default, not "."
        return run_dir / "export" / model_name(fmt, quantize)
    out = Path(out).expanduser()
    if out.suffix.lower() in FILE_SUFFIXES:
        if out.suffix.lower() not in ((".pt", ".pth") if fmt == "torchscript" else (".onnx",)):
            other = "onnx" if fmt == "torchscript" else "torchscript"
            raise ExportError(f"--out {out} names a {other} file, but the format is {fmt}: end it in "
                              f"{SUFFIX[fmt]} or give a folder")
        if out.is_dir():
            raise ExportError(f"--out {out} is a folder: give a file name ending in {SUFFIX[fmt]} or the folder's parent")
        return out
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a folder: give a folder, or a file name ending in {SUFFIX[fmt]}")
    return out / model_name(fmt, quantize)


def _writable_folder(folder: Path) -> None:
    """Make ``folder`` (and its parents), and refuse one this process cannot write into."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ExportError(f"{folder} is a file, not a folder: give another --out") from None
    except OSError as err:
        raise ExportError(f"cannot make the folder {folder} ({err.strerror}): give a writable --out") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write into {folder} (permission denied): give a writable --out")


# --- the export ------------------------------------------------------------------------------------

@dataclass
class Exported:
    run_id: str
    format: str
    quantization: str
    model_path: Path
    labels_path: Path
    size_bytes: int
    check: Check

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model_path"], d["labels_path"] = str(self.model_path), str(self.labels_path)
        return d

    def lines(self) -> list[str]:
        """The result in words, for the CLI and the Runs page."""
        c = self.check
        kind = f"{self.format}{' int8' if self.quantization == 'int8' else ''}"
        out = [f"exported run {self.run_id} as {kind}: {self.model_path} ({self.size_bytes / 2**20:.1f} MB), "
               f"classes and preprocessing in {self.labels_path.name}"]
        if c.ran:
            limit = f" (tolerance {c.tolerance:g})" if c.tolerance is not None else ""
            out.append(f"max |Δ probability| against ftlab on {c.images} validation images: {c.max_delta:.2e}{limit}")
            out.append(f"validation accuracy: {c.accuracy:.3f} exported, {c.reference_accuracy:.3f} ftlab (float32)")
        else:
            out.append(f"not checked against ftlab's predictions: {c.reason}")
        out.append("CPU latency per image: " + ", ".join(f"{v:.2f} ms at batch {b}" for b, v in c.latency_ms.items()))
        return out


def _output(checkpoint: dict) -> dict:
    """What ``labels.json`` says of the model's output: one task's probabilities, or several
    tasks' side by side with each task's columns."""
    found = checkpoints.tasks(checkpoint)
    if len(found) < 2:
        return {"name": "probabilities", "shape": ["N", len(checkpoint["classes"])],
                "meaning": "class probabilities (softmax), in the order of classes"}
    columns, start = [], 0
    for name, classes in found:
        columns.append({"task": name, "classes": classes, "columns": [start, start + len(classes)]})
        start += len(classes)
    return {"name": "probabilities", "shape": ["N", start], "tasks": columns,
            "meaning": "each task's class probabilities (softmax within its columns [start, end)), side by "
                       "side in the order of tasks; the first task's classes are classes"}


def labels(checkpoint: dict, run_id: str, fmt: str, quantize: str, model_file: str) -> dict:
    """What ``labels.json`` says: everything a user needs beside the model file."""
    pp = checkpoints.preprocessing(checkpoint)
    return {"classes": list(checkpoint["classes"]), "run_id": run_id, "backbone": checkpoint["backbone"],
            "format": fmt, "quantization": quantize, "model_file": model_file,
            "input": {"name": "images", "layout": INPUT_LAYOUT, "dtype": "uint8", "shape": ["N", 3, "H", "W"],
                      "note": f"upright RGB images; exactly {pp.size} x {pp.size} is taken as already resized and "
                              f"cropped, any other size is resized inside the model (shorter side to {pp.resize}, "
                              f"centre {pp.size} x {pp.size} crop)"},
            "output": _output(checkpoint),
            "preprocessing": {"size": pp.size, "resize": pp.resize, "mean": list(pp.mean), "std": list(pp.std),
                              "normalise": "(x / 255 - mean) / std per channel", "layout": INPUT_LAYOUT}}


def export_run(run_id: str, fmt: str, quantize: str = "none", out: Path | str | None = None,
               store: RunStore | None = None, say: Callable[[str], None] = lambda _: None) -> Exported:
    """Export run ``run_id``'s best model, check it, and keep it with its ``labels.json``.
    Raises KeyError (unknown run), CheckpointError or ExportError, leaving no file written."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"unknown quantization {quantize!r}: use one of {', '.join(QUANTIZATIONS)}")
    store = store or RunStore()
    record = store.get(run_id)
    checkpoint = store.load_checkpoint(run_id)
    try:
        wrapper = wrap(checkpoint, quantize if fmt == "torchscript" else "none")
    except CheckpointError as err:
        raise CheckpointError(f"run {run_id}'s checkpoint ({store.checkpoint_path(run_id)}): {err}") from None
    path = target(out, store.run_dir(run_id), fmt, quantize)
    _writable_folder(path.parent)
    labels_path = path.parent / "labels.json"
    tmp_model = path.with_name(f".{path.name}.{os.getpid()}.tmp{SUFFIX[fmt]}")
    tmp_labels = labels_path.with_name(f".{labels_path.name}.{os.getpid()}.tmp")
    try:
        say(f"writing {fmt}{' int8' if quantize == 'int8' else ''}")
        _write(wrapper, tmp_model, fmt, quantize)
        tmp_labels.write_text(json.dumps(labels(checkpoint, run_id, fmt, quantize, path.name), indent=2) + "\n",
                              encoding="utf-8")
        result = check(tmp_model, checkpoint, record, quantize, say)
        if why := result.failure(quantize):
            raise ExportError(f"the export was not kept: {why}")
        size = tmp_model.stat().st_size
        os.replace(tmp_model, path)
        os.replace(tmp_labels, labels_path)
    except OSError as err:
        raise ExportError(f"could not write the export into {path.parent} ({err.strerror or err}): "
                          "nothing was kept; give a writable --out with free space") from None
    finally:
        for tmp in (tmp_model, tmp_labels):
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
    return Exported(run_id, fmt, quantize, path, labels_path, size, result)
