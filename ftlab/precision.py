"""Which number format a run computes in: fp32, or bf16/fp16 autocast where that is faster.

``--precision auto`` decides twice per run, once for the caching pass (the frozen prefix,
inference) and once for training (the blocks that train, forward and backward), because the
answer differs: on a 2-core Sapphire Rapids CPU bf16 autocast ran EfficientNet-Lite0's
frozen prefix about 2x faster, and trained ResNet-18 about 2x faster, but trained Lite0 no
faster at all (its depthwise convolutions gain nothing). So on a CPU, ``auto`` takes bf16 only
where the CPU has native bf16 *and* a short measurement shows it faster for that model at that
size; the answer is remembered per machine, model and size (``FTLAB_HOME/precision.json``).
On CUDA ``auto`` is autocast: bf16 where the GPU has it, else fp16 with loss scaling.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ftlab import paths
from ftlab.config import PRECISIONS  # noqa: F401  (the choices, where the option is declared)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MEASURE_BUDGET_S = 2.0  # the most one measurement may take (it stops early once it is)
FASTER_BY = 1.1  # bf16 must be this much faster: a tie is not worth its rounding
_FORCE_OFF = "FTLAB_CPU_BF16"  # "0": behave as on a CPU without bf16 (the benchmark and tests)


@dataclass(frozen=True)
class Choice:
    """The precision a part of a run computes in, and why, in words the run's record shows."""

    name: str  # fp32, bf16 or fp16
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def autocast(self, device_type: str) -> AbstractContextManager:
        """fp32: nothing; bf16/fp16: torch's autocast (matrix products and convolutions in the
        low precision, reductions and the loss in fp32)."""
        if self.name == "fp32":
            return nullcontext()
        return torch.autocast(device_type, dtype=self.dtype)

    def scaler(self, device: torch.device) -> "torch.amp.GradScaler | None":
        """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
        return torch.amp.GradScaler(device.type) if self.name == "fp16" else None

    def to_dict(self) -> dict:
        return asdict(self)


FP32 = Choice("fp32", "the default")


def cpu_bf16() -> tuple[bool, str]:
    """(whether this CPU computes bf16 natively, the instructions torch reports as words)."""
    if os.environ.get(_FORCE_OFF, "").strip().lower() in ("0", "off", "false", "no"):
        return False, f"native bf16 switched off ({_FORCE_OFF}=0)"
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    have = [name for name in ("amx_bf16", "avx512_bf16") if caps.get(name)]
    if have:
        return True, f"the CPU has native bf16 ({', '.join(have).replace('_', '-').upper()})"
    return False, "the CPU has no native bf16 (neither AMX-BF16 nor AVX512-BF16)"


def capabilities() -> dict:
    """What torch reports of this machine's number formats: README and the run record quote it."""
    native, words = cpu_bf16()
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    out = {"cpu": caps.get("cpu_name", platform.processor() or platform.machine()),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_bf16": native, "cpu_bf16_words": words,
           "cpu_fp16": bool(caps.get("avx512_fp16") or caps.get("amx_fp16")), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        out.update(cuda=torch.cuda.get_device_name(), cuda_bf16=torch.cuda.is_bf16_supported())
    return out


def describe_machine() -> str:
    """The machine's number formats in a sentence or two, as torch reports them."""
    c = capabilities()
    gpu = (f" GPU: {c['cuda']}, bf16 {'yes' if c['cuda_bf16'] else 'no (fp16 with loss scaling)'}."
           if "cuda" in c else " No GPU.")
    return (f"{c['cpu']}, {c['cpu_capability']} kernels, {c['threads']} threads; {c['cpu_bf16_words']}; "
            f"AVX512-FP16 {'yes' if c['cpu_fp16'] else 'no'}.{gpu}")


def machine() -> str:
    """This machine, as far as speed goes: the processor, its instruction set, the threads torch
    uses and torch's version (another torch may pick other kernels)."""
    c = capabilities()
    return f"{c['cpu']} {c['cpu_capability']} x{c['threads']}, torch {torch.__version__}"


class Unusable(Exception):
    """Raised by a measurement whose low precision failed its accuracy check: auto keeps fp32 and
    says why, and remembers it like a measurement (the caller's key names the weights too)."""


def resolve(requested: str, device: torch.device, *, part: str, key: str,
            measure: Callable[[str], float] | None) -> Choice:
    """The precision for ``part`` ("caching" or "training") of a run on ``device``.

    ``requested`` is the run's ``--precision``. For ``auto`` on a CPU with native bf16,
    ``measure(name)`` returns the seconds of one representative call in that precision (the
    caller builds the call; see `compare`); its answer is remembered under ``key`` (the model,
    its boundary and the image size) with this machine, so it runs once."""
    if requested != "auto":
        slow = requested == "bf16" and device.type == "cpu" and not cpu_bf16()[0]
        return Choice(requested, "asked for" + (" (this CPU has no native bf16: it is emulated, and slow)"
                                                if slow else ""))
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Choice("bf16", "auto: CUDA autocast in bf16 (the GPU supports it)")
        return Choice("fp16", "auto: CUDA autocast in fp16 with loss scaling (the GPU has no bf16)")
    if device.type != "cpu":
        return Choice("fp32", f"auto: fp32 on {device.type} (no measured gain from autocast there)")
    native, words = cpu_bf16()
    if not native:
        return Choice("fp32", f"auto: {words}")
    if measure is None:
        return Choice("fp32", f"auto: {words}, but nothing to measure")
    remembered = _usable(_memory().get(f"{machine()} | {key} | {part}"))
    when = "measured earlier on this machine"
    if remembered is None:
        try:
            remembered = compare(measure)
        except Unusable as err:
            remembered = {"unusable": str(err)}
        _remember(f"{machine()} | {key} | {part}", remembered)
        when = "measured now"
    if "unusable" in remembered:
        return Choice("fp32", f"auto: {words}, but in bf16 {remembered['unusable']} ({when})")
    fp32, bf16 = remembered["fp32_s"], remembered["bf16_s"]
    ratio = fp32 / max(bf16, 1e-12)
    if ratio >= FASTER_BY:
        return Choice("bf16", f"auto: {words}, and bf16 ran {ratio:.2f}x as fast as fp32 ({when})")
    return Choice("fp32", f"auto: {words}, but bf16 ran {ratio:.2f}x as fast as fp32, not {FASTER_BY}x ({when})")


def _usable(answer: object) -> dict | None:
    """A remembered answer as `resolve` reads it, or None (measure again) for anything else: a
    hand-edited or damaged file must not fail a run."""
    if not isinstance(answer, dict):
        return None
    if isinstance(answer.get("unusable"), str):
        return answer
    times = [answer.get(k) for k in ("fp32_s", "bf16_s")]
    ok = all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < float("inf") for t in times)
    return answer if ok else None


def compare(measure: Callable[[str], float], budget_s: float = MEASURE_BUDGET_S) -> dict:
    """fp32 against bf16: one warm-up call each (the first call of a shape builds its kernels),
    then alternating timed calls while the budget lasts, at least one each; the fastest of
    each counts (the least disturbed by whatever else runs)."""
    began = time.perf_counter()
    for name in ("fp32", "bf16"):
        measure(name)
    best = {"fp32": float("inf"), "bf16": float("inf")}
    while True:
        for name in ("fp32", "bf16"):
            best[name] = min(best[name], measure(name))
        if time.perf_counter() - began + best["fp32"] + best["bf16"] > budget_s:
            break
    return {"fp32_s": best["fp32"], "bf16_s": best["bf16"], "seconds": time.perf_counter() - began}


def timed(call: Callable[[], object]) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


# --- what has been measured on this machine ---------------------------------------------

_lock = threading.Lock()
_in_process: dict[str, dict] = {}  # where the file cannot be written, the answers still hold for this process


def _file() -> Path:
    return paths.home() / "precision.json"


def _memory() -> dict[str, dict]:
    with _lock:
        try:
            stored = json.loads(_file().read_text(encoding="utf-8"))
        except (OSError, ValueError, paths.StoreError):
            stored = {}
        return {**(stored if isinstance(stored, dict) else {}), **_in_process}


def _remember(key: str, answer: dict) -> None:
    """Add one answer to the file, whole or not at all (written beside it, then renamed)."""
    with _lock:
        _in_process[key] = answer
        try:
            path = _file()
            try:
                stored = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                stored = {}
            stored = {**(stored if isinstance(stored, dict) else {}), key: answer}
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp",
                                             encoding="utf-8") as f:
                written = Path(f.name)
                json.dump(stored, f, indent=1)
            os.replace(written, path)
        except (OSError, paths.StoreError):
            pass  # a read-only home: measured again by the next process, nothing else is lost


def forget() -> None:
    """Drop what this process remembers (tests; the file is the home's)."""
    with _lock:
        _in_process.clear()
