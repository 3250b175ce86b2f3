"""How fast each way of running a frozen prefix is, and how far its output is from eager fp32.

    python bench/bench_fastpath.py                      # Lite0 (ImageNet) and ResNet-18 (random), batch 64, 224 px
    python bench/bench_fastpath.py --batch 16 --size 128 --repeats 2   # a quicker look
    python bench/bench_fastpath.py --precisions fp32 bf16 --repeats 1 --pass-batches 3   # + a caching pass

The prefix is every block but the head, in eval mode, under ``torch.inference_mode()``, on
real images (ants/bees, decoded as the backbone's weights were evaluated) where the shared
data are here, else on random ones. For each path: the build (trace, freeze, optimise), the
first call (oneDNN's warm-up), the steady images/s (median of ``--repeats`` batches, the paths
taken in turn so that a load that drifts slows them alike) and the
error of the features and of the logits (the head applied to them) relative to the output's
scale, max |x - eager| / max |eager| (`ftlab.fastpath.relative_error`). The row marked ``*``
is the one `ftlab.fastpath.accelerate` builds for that precision.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from ftlab import backbones, fastpath  # noqa: E402

HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera"
Builder = Callable[[nn.Module, torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def images(name: str, batch: int, size: int) -> torch.Tensor:
    """``batch`` ants/bees images decoded for ``name``, or random ones where the data are not here."""
    files = sorted(HYMENOPTERA.glob("train/*/*.jpg"))[::3][:batch]
    if len(files) < batch:
        return torch.randn(batch, 3, size, size)
    from PIL import Image
    from torchvision.transforms import v2

    spec = backbones.get_spec(name)
    t = v2.Compose([v2.ToImage(), v2.Resize(round(size / spec.crop_pct), antialias=True), v2.CenterCrop(size),
                    v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)])
    return torch.stack([t(Image.open(f).convert("RGB")) for f in files])


def fx_fused(prefix: nn.Module, sample: torch.Tensor, precision: str) -> Callable[[torch.Tensor], torch.Tensor]:
    from torch.fx.experimental.optimization import fuse

    with fastpath.evaluating(prefix):
        fused = fuse(prefix)  # a copy with conv+BN folded
    return fastpath.eager(fused, precision)


def cast(prefix: nn.Module, sample: torch.Tensor, precision: str,
         script: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """A copy with its weights cast to the low precision (BatchNorm too), then run or traced."""
    dtype = fastpath._DTYPES[precision]
    low = copy.deepcopy(prefix).eval().to(dtype)
    run = fastpath.frozen_script(low, sample.to(dtype)) if script else fastpath.eager(low)
    return lambda x: run(x.to(dtype))


def onednn(prefix: nn.Module, sample: torch.Tensor, precision: str) -> Callable[[torch.Tensor], torch.Tensor]:
    fn = fastpath.frozen_script(prefix, sample, precision, onednn=True)
    fn(sample), fn(sample)  # the profiling calls
    return fn


def paths(precision: str) -> dict[str, Builder]:
    low = precision != "fp32"
    out: dict[str, Builder] = {
        f"eager{', autocast' if low else ''}": lambda p, s: fastpath.eager(p, precision),
        "jit.freeze": lambda p, s: fastpath.frozen_script(p, s, precision),
        "jit.freeze + optimize_for_inference": lambda p, s: fastpath.frozen_script(p, s, precision, optimize=True),
        "fx fuse": lambda p, s: fx_fused(p, s, precision),
        "jit.freeze + oneDNN graph *": lambda p, s: onednn(p, s, precision),
    }
    if low:
        out["eager, weights cast"] = lambda p, s: cast(p, s, precision, False)
        out["jit.freeze, weights cast"] = lambda p, s: cast(p, s, precision, True)
    return out


def build(make: Builder, prefix: nn.Module, x: torch.Tensor, reference: torch.Tensor, head: nn.Module,
          logits: torch.Tensor) -> dict:
    """Build one path and call it once: build and first-call seconds, and its errors."""
    began = time.perf_counter()
    try:
        fn = make(prefix, x[:2])
    except Exception as err:
        return {"error": fastpath._why(err)[:70]}
    built = time.perf_counter() - began
    began = time.perf_counter()
    out = fn(x)
    return {"fn": fn, "build": built, "first": time.perf_counter() - began,
            "feat": fastpath.relative_error(out, reference)[1],
            "logits": fastpath.relative_error(head(out.float()), logits)[1]}


def time_round_robin(rows: dict[str, dict], x: torch.Tensor, repeats: int) -> None:
    """Each path once per round, ``repeats`` rounds: a machine whose load drifts (2 shared cores)
    slows every path alike. Adds each one's median images/s."""
    times: dict[str, list[float]] = {k: [] for k, r in rows.items() if "fn" in r}
    for _ in range(repeats):
        for label in times:
            began = time.perf_counter()
            rows[label]["fn"](x)
            times[label].append(time.perf_counter() - began)
    for label, t in times.items():
        rows[label]["ips"] = len(x) / statistics.median(t)


def caching_pass(name: str, precision: str, prefix: nn.Module, acc: fastpath.Accelerated, x: torch.Tensor,
                 built: float, batches: int) -> None:
    """A caching pass of ``batches`` batches like ``x`` and a last one of half the size: eager
    fp32 against `accelerate`'s function, its build and check included."""
    data = [x] * batches + [x[:len(x) // 2]]
    times = {}
    for label, fn in (("eager fp32", fastpath.eager(prefix)), ("accelerated", acc.fn)):
        began = time.perf_counter()
        for b in data:
            fn(b)
        times[label] = time.perf_counter() - began
    total = times["accelerated"] + built
    print(f"caching pass, {name}, {precision}, {sum(len(b) for b in data)} images: eager fp32 "
          f"{times['eager fp32']:.1f} s; accelerated {times['accelerated']:.1f} s + build and check {built:.1f} s "
          f"= {total:.1f} s ({times['eager fp32'] / total:.2f}x)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "resnet18"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=fastpath.PRECISIONS)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pass-batches", type=int, default=0,
                    help="also time a caching pass of this many batches (and a half one), build included")
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, batch {a.batch}, {a.size} px, inference_mode")
    print("| backbone (weights) | precision | path | build s | first call s | img/s | x eager fp32 | "
          "feature err | logits err |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in a.backbones:
        weights = "imagenet" if backbones.weights_available_offline(name) else "random"
        torch.manual_seed(0)
        model = backbones.create_model(name, 1000, weights).eval()
        prefix, head = model[:-1], model[-1]
        x = images(name, a.batch, a.size)
        with torch.inference_mode():
            reference = fastpath.eager(prefix)(x)
            logits = head(reference)
            rows = {(p, label): build(make, prefix, x, reference, head, logits)
                    for p in a.precisions for label, make in paths(p).items()}
            time_round_robin(rows, x, a.repeats)
            base = next((r["ips"] for r in rows.values() if "ips" in r), 1.0)
            for (precision, label), r in rows.items():
                if "error" in r:
                    print(f"| {name} ({weights}) | {precision} | {label} | failed: {r['error']} | | | | | |")
                    continue
                print(f"| {name} ({weights}) | {precision} | {label} | {r['build']:.2f} | {r['first']:.2f} | "
                      f"{r['ips']:.1f} | {r['ips'] / base:.2f}x | {r['feat']:.1e} | {r['logits']:.1e} |",
                      flush=True)
            del rows
            for precision in a.precisions:
                began = time.perf_counter()
                acc = fastpath.accelerate(prefix, x, precision=precision)
                built = time.perf_counter() - began
                print(f"accelerate({name}, {precision}) in {built:.2f} s: {acc.note()}")
                if a.pass_batches:
                    caching_pass(name, precision, prefix, acc, x, built, a.pass_batches)


if __name__ == "__main__":
    main()
