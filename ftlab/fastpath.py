"""The frozen prefix as the fastest equivalent function.

A cached prefix is frozen and runs in eval mode, so it is a fixed function of its input: its
BatchNorm layers can be folded into the convolutions before them and the graph run through a
faster executor. ``torch.jit.freeze`` folds conv+BN and constants into a TorchScript graph of
its own; on a CPU, oneDNN graph fusion then runs it as fused oneDNN kernels. Measured with
``bench/bench_fastpath.py`` (2 shared cores, batch 64, 224 px, against eager fp32 channels-last):
EfficientNet-Lite0 1.5x frozen, 1.7-1.9x fused; in bf16 autocast 2.4x frozen, 2.4-2.7x fused;
ResNet-18 1.1-1.2x frozen, 1.4-1.7x fused, 2.2x / 3.5x in bf16. ``optimize_for_inference``
(oneDNN weight prepacking) measured slower than the frozen graph alone for Lite0 (1.0-1.1x);
``torch.fx`` conv-BN fusion cannot trace timm's "same"-padded convolutions; casting the weights
to bf16 was slower and less accurate than autocast traced into the graph; ``torch.compile``
takes about a minute to compile: too slow for a lab.

:func:`accelerate` builds the fast function on a trace of the caller's module, which it
leaves as it was (the frozen graph holds its own folded tensors; parameters, buffers, training
flags and ``requires_grad`` are untouched), checks it against the eager fp32 prefix on a few
images, and falls back to the plain frozen graph, then the eager prefix, saying why, when a
build or a check fails.
"""
from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Relative error is max |fast - eager fp32| / max |eager fp32| over the whole output (the
# output's scale). Folding BN into the convolutions re-associates fp32 sums: measured up to
# 5e-6 of the scale for Lite0 and 1e-6 for ResNet-18, so 1e-4 leaves room and still catches a
# wrong graph (whose errors are of the order of the output). bf16 keeps 8 bits of mantissa:
# through Lite0's 16 blocks its rounding measured 4e-2 (224 px) to 9e-2 (96 px) in eager
# autocast, 5e-3 for ResNet-18; fp16 (11 bits) 5e-3 to 8e-3 for Lite0. TOLERANCE is what an
# asked-for precision may cost. `--precision auto` asks for AUTO_TOLERANCE: the frozen Lite0
# graph in bf16 measured 6e-2 to 1.1e-1 at 224 px, and a linear probe on ants/bees on its
# features lost one val image of 153 against fp32 in two of four splits (and gained none), so
# auto takes bf16 only where the prefix keeps within 3e-2 (ResNet-18: 4e-3).
TOLERANCE = {"fp32": 1e-4, "bf16": 1.5e-1, "fp16": 3e-2}
AUTO_TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2, "fp16": 3e-2}
CHECK_IMAGES = 8  # images the check runs on: enough to see a wrong graph, cheap in eager fp32


@dataclass(frozen=True)
class Check:
    """The fast function's output against the eager fp32 prefix on ``images`` images."""

    max_abs: float
    max_rel: float  # max |fast - eager| / max |eager|
    tolerance: float  # on max_rel
    images: int

    @property
    def passed(self) -> bool:
        return self.max_rel <= self.tolerance

    def describe(self) -> str:
        return (f"max error {self.max_rel:.1e} of the output's scale (max abs {self.max_abs:.1e}; "
                f"tolerance {self.tolerance:.2g}) on a batch of {self.images}")


@dataclass(frozen=True)
class Accelerated:
    """A frozen prefix as a function of a batch, how it runs and how it compared with eager."""

    fn: Callable[[torch.Tensor], torch.Tensor]  # batch -> features, float32 or the compute dtype
    how: str  # e.g. "TorchScript, conv+BN folded (torch.jit.freeze), channels-last, bf16 autocast"
    check: Check
    precision: str  # what ``fn`` computes in: fp32, bf16 or fp16
    build_seconds: float  # the eager reference, trace, freeze, first call and the check, all together
    fallback: str = ""  # why a faster path is not used: oneDNN fusion, the frozen graph ("" when both are)

    @property
    def fast(self) -> bool:
        """Whether ``fn`` runs the frozen graph (it holds its own folded copy of the prefix's
        weights: drop this object when the caching pass is done)."""
        return self.how.startswith("TorchScript")

    def as_module(self) -> nn.Module:
        """``fn`` as a module without parameters, for code that takes the prefix as a module
        (`ftlab.cache.compute`: its ``eval()`` and channels-last ``to()`` change nothing here;
        pass ``amp=False``, ``fn`` autocasts itself)."""
        return _Function(self.fn)

    def note(self) -> str:
        """One sentence for the run's notes."""
        why = f" ({self.fallback})" if self.fallback else ""
        return (f"the frozen prefix ran as {self.how}{why}; its output matched the eager fp32 prefix "
                f"within {self.check.describe()}; built and checked in {self.build_seconds:.1f} s")


class _Function(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """max |out - ref| and that over max |ref|: the error relative to the output's scale (a
    per-element ratio would blow up where a feature is near zero, as after a ReLU).

    >>> relative_error(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 2.0, 3.0]))
    (1.0, 0.3333333333333333)
    """
    out, ref = out.detach().float().cpu(), ref.detach().float().cpu()
    if out.shape != ref.shape:
        return float("inf"), float("inf")
    err = (out - ref).abs().max().item() if out.numel() else 0.0
    scale = ref.abs().max().item() if ref.numel() else 0.0
    return err, (err / scale if scale > 0 else (0.0 if err == 0 else float("inf")))


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode for the block, every submodule's training flag restored after."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in flags:
            m.training = training


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    # measured 1.6x faster for Lite0's eager forward on a 2-core CPU; the frozen graph too
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _autocast(device_type: str, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=_DTYPES[precision])


def eager(prefix: nn.Module, precision: str = "fp32") -> Callable[[torch.Tensor], torch.Tensor]:
    """The prefix as it is, in eval mode on channels-last input (autocast for bf16/fp16)."""
    def fn(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), evaluating(prefix), _autocast(x.device.type, precision):
            return prefix(_channels_last(x))
    return fn


class UntraceableError(RuntimeError):
    """A module whose trace would be right only for the sample it was traced on."""


def frozen_script(prefix: nn.Module, sample: torch.Tensor, precision: str = "fp32", *,
                  optimize: bool = False, onednn: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """The prefix traced on ``sample`` (autocast traced in for bf16/fp16) and frozen (conv+BN and
    constants folded into new tensors of its own). ``optimize`` adds ``optimize_for_inference``
    (oneDNN weight prepacking on a CPU): it measured slower for Lite0 (0.8-1.1x eager fp32 against
    1.2-1.5x for the frozen graph alone), faster for ResNet-18 (1.3-1.4x against 1.1-1.2x), and
    oneDNN graph fusion beat both, so it is off.
    ``onednn`` runs the graph with oneDNN graph fusion (CPU only): its first two calls at a batch
    shape profile the graph, the next ones run fused kernels."""
    with torch.no_grad(), evaluating(prefix), warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")  # TorchScript's deprecation notices are dropped below
        with _autocast(sample.device.type, precision):
            # the batch size is not baked in (checked on another size); the image size may be,
            # by shape arithmetic such as timm's "same" padding, so fn is only used at that size
            traced = torch.jit.trace(prefix, _channels_last(sample), check_trace=False)
        # a tensor turned into a Python bool or number (data-dependent control flow) is traced
        # as a constant, right only for the sample: refuse it (no registered backbone does this)
        refused = [w for w in said if issubclass(w.category, torch.jit.TracerWarning)]
        if refused:
            raise UntraceableError(f"TracerWarning: {refused[0].message}")
        graph = torch.jit.freeze(traced.eval())
        if optimize:
            graph = torch.jit.optimize_for_inference(graph)

    def fn(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return graph(_channels_last(x))
    return _with_onednn(fn) if onednn else fn


_ONEDNN = threading.Lock()  # the switch is the process's: one fused call at a time, left as found


def _with_onednn(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    def fused(x: torch.Tensor) -> torch.Tensor:
        with _ONEDNN:
            was = torch.jit.onednn_fusion_enabled()
            torch.jit.enable_onednn_fusion(True)
            try:
                return fn(x)
            finally:
                torch.jit.enable_onednn_fusion(was)
    return fused


def onednn_available(device: torch.device) -> bool:
    """Whether oneDNN graph fusion can run the frozen graph on ``device`` (a CPU with oneDNN)."""
    return device.type == "cpu" and torch.backends.mkldnn.is_available() and hasattr(torch.jit, "enable_onednn_fusion")


def _what(precision: str, script: bool, onednn: bool = False) -> str:
    runs = (f"TorchScript, conv+BN folded (torch.jit.freeze){', oneDNN graph fusion' if onednn else ''}, "
            "channels-last" if script else "the eager prefix, channels-last")
    return runs + {"fp32": "", "bf16": ", bf16 autocast", "fp16": ", fp16 autocast"}[precision]


def _why(err: Exception) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:160]}" if text else type(err).__name__


def _check(fn: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, reference: torch.Tensor,
           tolerance: float) -> Check:
    with torch.no_grad():
        return Check(*relative_error(fn(batch), reference), tolerance, len(batch))


def accelerate(prefix: nn.Module, sample: torch.Tensor, *, precision: str = "fp32",
               tolerance: float | None = None, check_images: int = CHECK_IMAGES,
               onednn: bool | None = None, graph: bool = True) -> Accelerated:
    """The fastest function equal to ``prefix`` (frozen, run in eval mode) on batches like ``sample``.

    ``sample`` is one preprocessed batch (float, NCHW, on the target device); the function
    takes any batch size at its image size (at another it runs the eager prefix). ``precision``
    is what it computes in (bf16/fp16 by autocast). The frozen TorchScript graph (`frozen_script`),
    fused by oneDNN graph on a CPU, is traced on two images of ``sample`` and its output on the
    first ``check_images`` (after its two profiling calls) is checked against the eager fp32
    prefix: error relative to the output's scale (`relative_error`) within ``tolerance`` (default
    `TOLERANCE`). When it cannot be built or fails the check, the frozen graph without oneDNN
    fusion is tried, then the eager prefix (in ``precision`` if that passes the check, else fp32),
    with the reasons in ``fallback`` and the note; this never raises for that. ``prefix`` is
    left as it was: parameters, buffers, training flags, requires_grad. ``onednn=False`` skips the
    oneDNN fusion (None: wherever it is available); a whole caching pass measured the same either
    way on a quiet machine (Lite0, 352 images: 2.1x eager fp32 in bf16, 1.2-1.5x in fp32, build
    and check included), the fused graph ahead under load. ``graph=False`` (``--no-fast-prefix``)
    goes straight to the eager prefix, checked the same way.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    tolerance = TOLERANCE[precision] if tolerance is None else tolerance
    began = time.perf_counter()
    batch = sample[:max(1, check_images)]
    reference = eager(prefix)(batch)
    why = "" if graph else "the frozen graph is switched off (--no-fast-prefix)"
    fusing = onednn_available(sample.device) if onednn is None else onednn and onednn_available(sample.device)
    for onednn in ((True, False) if fusing else (False,)) if graph else ():
        try:
            # traced on two images, checked on more: a batch size baked into the graph would show
            fn = _same_size(frozen_script(prefix, sample[:2], precision, onednn=onednn), eager(prefix, precision),
                            sample)
            for _ in range(2 if onednn else 0):  # the profiling calls: the check is on the fused graph
                fn(batch)
            check = _check(fn, batch, reference, tolerance)
            if check.passed:
                return Accelerated(fn, _what(precision, True, onednn), check, precision,
                                   time.perf_counter() - began, why.lstrip("; "))
            why += f"; the frozen graph{' fused by oneDNN' if onednn else ''} was off by {check.max_rel:.1e} " \
                   "of the output's scale"
        except Exception as err:  # tracing or freezing a custom module can fail in many ways: run it eager
            why += f"; the frozen graph{' fused by oneDNN' if onednn else ''} could not be built: {_why(err)}"
    why = why.lstrip("; ")
    if precision != "fp32":
        try:
            fn = eager(prefix, precision)
            check = _check(fn, batch, reference, tolerance)
            if check.passed:
                return Accelerated(fn, _what(precision, False), check, precision, time.perf_counter() - began, why)
            why += f"; eager {precision} was off by {check.max_rel:.1e} of the output's scale, so fp32"
        except Exception as err:  # an op without a kernel in this precision on this device
            why += f"; eager {precision} failed ({_why(err)}), so fp32"
    return Accelerated(eager(prefix), _what("fp32", False), Check(0.0, 0.0, TOLERANCE["fp32"], len(batch)),
                       "fp32", time.perf_counter() - began, why)


def _same_size(fast: Callable[[torch.Tensor], torch.Tensor], slow: Callable[[torch.Tensor], torch.Tensor],
               sample: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fast`` on batches whose images are shaped as ``sample``'s, ``slow`` on any other."""
    shape = tuple(sample.shape[1:])

    def fn(x: torch.Tensor) -> torch.Tensor:
        return fast(x) if tuple(x.shape[1:]) == shape else slow(x)
    return fn


def fastest(module: nn.Module, sample: torch.Tensor, *, precision: str, graph: bool, device: torch.device,
            part: str, key: str, what: str):
    """``module`` (frozen) as `accelerate` builds it, in the precision ``precision`` resolves to for
    ``part`` (`ftlab.precision.resolve`: ``auto`` measures fp32 against bf16 on ``sample`` once per
    ``key`` and machine, and holds the low precision to `AUTO_TOLERANCE`). Returns the function
    and the `Choice`; a precision whose check fails falls back to fp32, the reason saying so.
    ``what`` names the module in that reason ("the frozen blocks")."""
    from ftlab import precision as precisions

    built: dict[str, Accelerated] = {}
    tolerance = AUTO_TOLERANCE if precision == "auto" else TOLERANCE

    def build(name: str) -> Accelerated:
        if name not in built:
            built[name] = accelerate(module, sample, precision=name, graph=graph, tolerance=tolerance[name])
        return built[name]

    def measure(name: str) -> float:
        fast = build(name)
        if fast.precision != name:
            raise precisions.Unusable(f"{what} failed their accuracy check ({fast.fallback})")
        with torch.no_grad():
            return precisions.timed(lambda: fast.fn(sample))

    choice = precisions.resolve(precision, device, part=part, key=key, measure=measure)
    fast = build(choice.name)
    if fast.precision != choice.name:  # it failed its check in that precision: fp32 it is
        choice = precisions.Choice(fast.precision, f"{choice.reason}; but {fast.fallback}")
    return fast, choice
