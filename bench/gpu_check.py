"""The CUDA paths ftlab has and no test exercises, measured on a GPU in one run of at most 8 minutes.

    python bench/gpu_check.py                  # on a CUDA machine; elsewhere it says so and exits 0
    python bench/gpu_check.py --json out.json  # also keep every figure
    python bench/gpu_check.py --allow-cpu --quick   # the same checks on this CPU, tiny: the script's own test

What it runs, each part timed against the budget (a part that would not fit is skipped and
named, never half-measured):

1. the compute ceiling: Lite0's training step (forward, backward, optimiser) on random tensors
   already on the GPU, in fp32 and in the precision ``--precision auto`` picks there (bf16
   autocast, or fp16 with loss scaling on a GPU without bf16);
2. ftlab's own full fine-tuning run (``engine.run``: page-locked images, non-blocking copies,
   augmentation on the GPU, the fused optimiser) in fp32 and in auto, images/s against that
   ceiling, peak GPU memory, best val accuracy;
3. the feature cache on the GPU: a ``top-2`` run with the cache cold, warm, and without it —
   the same accuracy all three ways;
4. the same run on the GPU and on this machine's CPU (a linear probe on digits): the same best
   val accuracy within ``--tolerance``;
5. host-to-GPU copies, pageable against page-locked and non-blocking; the optimiser step fused
   against torch's foreach and for-loop implementations;
6. data-parallel training with NCCL when there is more than one GPU: the full fine-tuning run under
   ``torchrun --nproc-per-node <GPUs>`` against one GPU, images/s and best val accuracy (with
   ``--allow-cpu`` and no GPU: two gloo processes on the CPU, the same comparison).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera"

import torch  # noqa: E402

from ftlab import backbones, cache, engine  # noqa: E402
from ftlab.config import TrainConfig  # noqa: E402
from ftlab.precision import FP32, resolve  # noqa: E402
from ftlab.runs import RunStore  # noqa: E402


class Budget:
    """Seconds left of the whole check; a part asks before it starts."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds
        self.skipped: list[str] = []

    def fits(self, part: str, needs_s: float) -> bool:
        left = self.end - time.perf_counter()
        if left < needs_s:
            self.skipped.append(f"{part}: needs about {needs_s:.0f} s, {max(left, 0):.0f} s left")
            print(f"skipped {part}: needs about {needs_s:.0f} s, {max(left, 0):.0f} s of the budget left", flush=True)
            return False
        return True


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def ceiling(device: torch.device, precision: str, size: int, batch: int, seconds: float) -> dict:
    """Images/s of Lite0's whole training step on random tensors already on ``device``."""
    choice = FP32 if precision == "fp32" else resolve(precision, device, part="training", key="", measure=None)
    torch.manual_seed(0)
    model = backbones.create_model("efficientnet_lite0", 2, "imagenet").to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cpu", "cuda"))
    scaler = choice.scaler(device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 2, (batch,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with choice.autocast(device.type):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    for _ in range(3):  # warm-up: cuDNN's algorithm search, the allocator
        step()
    sync(device)
    peak_reset(device)
    steps, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds or steps < 3:
        step()
        steps += 1
        if steps % 5 == 0:
            sync(device)
    sync(device)
    took = time.perf_counter() - began
    return {"precision": choice.name, "images_per_second": steps * batch / took, "steps": steps,
            "peak_gpu_mb": peak_mb(device)}


def ftlab_run(config: TrainConfig, store: RunStore, device: torch.device) -> dict:
    """One ``engine.run`` and the figures of its summary, with its peak GPU memory."""
    peak_reset(device)
    began = time.perf_counter()
    summary = engine.run(config, store=store)
    wall = time.perf_counter() - began
    if summary["stopped_reason"] not in ("completed", "early_stopping"):
        raise SystemExit(f"the ftlab run ended '{summary['stopped_reason']}': {store.get(summary['run_id']).message}")
    return {"wall_s": round(wall, 2), "best_val_accuracy": summary["best_val_accuracy"],
            "images_per_second": summary["images_per_second"], "precision": summary.get("precision", {}),
            "feature_cache": summary.get("feature_cache", ""), "peak_gpu_mb": peak_mb(device)}


def copies(device: torch.device, batch: int, size: int, repeats: int = 20) -> dict:
    """GB/s of one batch of decoded images (uint8, as ftlab keeps them) copied to the GPU."""
    if device.type != "cuda":
        return {"note": "no GPU: host-to-device copies are not measured on a CPU"}
    out = {}
    for name, host in (("pageable", torch.zeros(batch, 3, size, size, dtype=torch.uint8)),
                       ("page-locked, non-blocking", torch.zeros(batch, 3, size, size, dtype=torch.uint8).pin_memory())):
        host.to(device, non_blocking=True)
        sync(device)
        began = time.perf_counter()
        for _ in range(repeats):
            host.to(device, non_blocking=True)
        sync(device)
        out[name] = round(repeats * host.numel() / (time.perf_counter() - began) / 1e9, 2)
    return {"gb_per_second": out}


def optimiser_steps(device: torch.device, repeats: int = 20) -> dict:
    """Milliseconds of one AdamW step over Lite0's parameters, fused against foreach and a loop."""
    model = backbones.create_model("efficientnet_lite0", 2, "imagenet").to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    out = {}
    for name, kwargs in (("fused", {"fused": True}), ("foreach", {"foreach": True}), ("for-loop", {"foreach": False})):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **kwargs)
        opt.step()
        sync(device)
        began = time.perf_counter()
        for _ in range(repeats):
            opt.step()
        sync(device)
        out[name] = round((time.perf_counter() - began) / repeats * 1000, 2)
    return {"ms_per_step": out}


def data_parallel(base: dict, processes: int, home: str, timeout: float) -> dict:
    """The full fine-tuning run of ``base`` under torchrun over ``processes`` processes (NCCL on GPUs, gloo
    on the CPU), from rank 0's JSON summary."""
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
            "-m", "ftlab", "train", "--json", "--strategy", "full"]
    for name, value in base.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    env = {**os.environ, "FTLAB_HOME": home, "PYTHONPATH": str(ROOT)}
    began = time.perf_counter()
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    wall = round(time.perf_counter() - began, 1)
    summaries = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not summaries:
        return {"processes": processes, "failed": (out.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    s = summaries[-1]
    return {"processes": processes, "images_per_second": round(s["images_per_second"], 1),
            "best_val_accuracy": s["best_val_accuracy"], "wall_s": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-s", type=float, default=480.0, help="the whole check's seconds (default 8 minutes)")
    ap.add_argument("--allow-cpu", action="store_true", help="run the checks on the CPU when there is no GPU")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and one epoch: the script's own smoke test")
    ap.add_argument("--tolerance", type=float, default=0.02, help="accuracy difference allowed between devices")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = ap.parse_args()

    if not torch.cuda.is_available() and not args.allow_cpu:
        print(f"No CUDA GPU here (torch {torch.__version__}, built for CUDA {torch.version.cuda}; "
              "torch.cuda.is_available() is False): nothing to measure, the CUDA paths stay unmeasured. "
              "Run this on a machine with a GPU.")
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    budget = Budget(args.budget_s)
    size, batch, epochs, secs = (32, 8, 1, 1.0) if args.quick else (224, 64, 3, 10.0)
    few = {"train_per_class": 4} if args.quick else {}  # quick: 40 digits to train on, the val split whole
    ants = HYMENOPTERA.is_dir() and not args.quick
    dataset = str(HYMENOPTERA) if ants else "digits"
    found: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   "gpus": torch.cuda.device_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
                   "dataset": "ants/bees" if ants else "digits", "image_size": size, "batch_size": batch,
                   "epochs": epochs}
    print(f"{found['device']} · torch {found['torch']} · CUDA {found['cuda']} · {found['gpus']} GPU(s)", flush=True)

    with tempfile.TemporaryDirectory() as home:
        store = RunStore(Path(home))
        base = dict(dataset=dataset, backbone="efficientnet_lite0", weights="imagenet", image_size=size,
                    batch_size=batch, epochs=epochs, seed=0, device=device.type, **few)
        found["ceiling"], found["full"] = {}, {}
        for precision in ("fp32", "auto"):
            if budget.fits(f"ceiling {precision}", secs + 20):
                c = found["ceiling"][precision] = ceiling(device, precision, size, batch, secs)
                print(f"ceiling, {c['precision']}: {c['images_per_second']:.1f} img/s, peak {c['peak_gpu_mb']} MB",
                      flush=True)
            if budget.fits(f"full fine-tuning {precision}", 60 if device.type == "cuda" else 30):
                r = found["full"][precision] = ftlab_run(
                    TrainConfig(**base, strategy="full", precision=precision), store, device)
                top = found["ceiling"].get(precision, {}).get("images_per_second")
                r["of_ceiling"] = round(r["images_per_second"] / top, 3) if top else None
                print(f"ftlab full fine-tuning, {precision}: {r['images_per_second']:.1f} img/s "
                      f"({r['of_ceiling']} of the ceiling), best val {r['best_val_accuracy']:.3f}, "
                      f"peak {r['peak_gpu_mb']} MB, {r['wall_s']} s", flush=True)

        found["cache"] = {}
        for label, cfg in (("cold", dict(feature_cache=True)), ("warm", dict(feature_cache=True)),
                           ("no cache", dict(feature_cache=False))):
            if label == "cold":
                cache.SHARED.clear()
            if budget.fits(f"top-2 {label}", 40 if device.type == "cuda" else 20):
                r = found["cache"][label] = ftlab_run(TrainConfig(**base, strategy="top-2", **cfg), store, device)
                print(f"top-2, cache {label}: {r['wall_s']} s, best val {r['best_val_accuracy']:.3f}, "
                      f"{r['feature_cache'] or 'no cache'}", flush=True)
        accs = [r["best_val_accuracy"] for r in found["cache"].values()]
        found["cache_same_accuracy"] = bool(accs) and max(accs) - min(accs) <= args.tolerance

        found["devices"] = {}
        probe = dict(dataset="digits", backbone="efficientnet_lite0", weights="imagenet", strategy="linear-probe",
                     image_size=32 if args.quick else 64, epochs=1 if args.quick else 5, seed=0, **few)
        for dev in dict.fromkeys((device.type, "cpu")):
            if budget.fits(f"linear probe on {dev}", 30 if dev == "cuda" else 90):
                cache.SHARED.clear()
                found["devices"][dev] = ftlab_run(TrainConfig(**probe, device=dev), store, torch.device(dev))
        if len(found["devices"]) == 2:
            gpu, cpu = (found["devices"][d]["best_val_accuracy"] for d in ("cuda", "cpu"))
            found["devices_within_tolerance"] = abs(gpu - cpu) <= args.tolerance
            print(f"linear probe, digits: GPU {gpu:.3f}, CPU {cpu:.3f} "
                  f"({'within' if found['devices_within_tolerance'] else 'OUTSIDE'} {args.tolerance:.2f})", flush=True)

    if budget.fits("copies and optimiser steps", 10):
        found["copies"] = copies(device, batch, size)
        found["optimiser"] = optimiser_steps(device)
        print(f"copies: {found['copies']}; AdamW over Lite0: {found['optimiser']}", flush=True)
    gpus = torch.cuda.device_count()
    processes = gpus if gpus > 1 else 2 if device.type == "cpu" else 0
    if not processes:
        found["ddp"] = "one GPU: NCCL data-parallel not measured"
    elif budget.fits(f"data-parallel over {processes} processes", 120 if device.type == "cuda" else 60):
        with tempfile.TemporaryDirectory() as home:
            base = dict(dataset=dataset, backbone="efficientnet_lite0", weights="imagenet", image_size=size,
                        batch_size=batch, epochs=epochs, seed=0, device=device.type, **few)
            found["ddp"] = data_parallel(base, processes, home, max(budget.end - time.perf_counter(), 30))
        one = found["full"].get("auto") or found["full"].get("fp32")
        if one and "images_per_second" in found["ddp"]:
            found["ddp"]["speedup"] = round(found["ddp"]["images_per_second"] / one["images_per_second"], 2)
            found["ddp"]["accuracy_gap"] = round(found["ddp"]["best_val_accuracy"] - one["best_val_accuracy"], 4)
    print(f"data-parallel: {found.get('ddp')}", flush=True)
    found["skipped"] = budget.skipped
    if args.json:
        args.json.write_text(json.dumps(found, indent=1))
    print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
