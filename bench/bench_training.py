"""ftlab against a tutorial-style training loop, side by side, on the same data and settings.

    python bench/bench_training.py                       # everything, 10 epochs (long on a CPU)
    python bench/bench_training.py --quick               # a smoke run: digits, 2 epochs, small images
    python bench/bench_training.py --datasets hymenoptera --backbones efficientnet_lite0 \\
        --strategies linear-probe top-1 full --out bench/results.md

For each (data set, backbone, strategy) three programs run, one after the other and each in
its own process (so that peak RSS is each one's own and no cache survives between them):

* the reference: the loop of PyTorch's transfer-learning tutorial. ``ImageFolder`` over the
  class folders, PIL transforms (Resize, CenterCrop, ToTensor, Normalize) in a ``DataLoader``
  every epoch, frozen blocks by ``requires_grad=False``, the whole forward pass every epoch,
  ``model.train()`` for the training phase and an evaluation on val after each epoch;
* ftlab's ``engine.run`` with the feature cache emptied first, so it pays for decoding and
  caching; then, in the same process, a second run that finds the features cached;
* for full fine-tuning, the compute ceiling: the same model's forward, backward and optimiser
  step on random tensors already in memory, at the same batch shape, in the precision ftlab
  trained in.

ftlab runs once per ``--precisions`` entry (fp32 and auto by default), a table row each.

Both build the model with ``ftlab.backbones.create_model`` (same architecture, weights and
seed) and train it with the same optimiser, learning rate, batch size and epochs. Wall time
is end to end: from nothing loaded (after the imports) to the best val accuracy known.
Finally the same configuration runs through the background runner (``jobs.Job``, polled
the way the app polls it) and in the foreground, alternately, to compare their images/s.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera"
DEFAULT_SIZE = {"hymenoptera": 224, "digits": 64}
# A tutorial sets num_workers to the machine's cores (the transfer-learning tutorial uses 4;
# on a 2-core machine the DataLoader warns above 2).
REFERENCE_WORKERS = min(4, os.cpu_count() or 1)


# --- the programs measured, each run in a child process ----------------------------------

def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def reference(job: dict) -> dict:
    """The tutorial's loop (https://pytorch.org/tutorials/beginner/transfer_learning_tutorial.html),
    without augmentation and StepLR so that it trains exactly what ftlab trains."""
    import torch
    from torch import nn
    from torchvision import datasets, transforms

    from ftlab import backbones, freeze
    from ftlab.transforms import Preprocessing

    began = time.perf_counter()
    size, prep = job["image_size"], Preprocessing.for_backbone(job["backbone"], job["image_size"])
    # the images ftlab's run sees: the backbone's resize and crop, mean and std
    tf = transforms.Compose([transforms.Resize(prep.resize), transforms.CenterCrop(size), transforms.ToTensor(),
                             transforms.Normalize(prep.mean, prep.std)])
    image_datasets = {x: datasets.ImageFolder(os.path.join(job["folder"], x), tf) for x in ("train", "val")}
    loaders = {x: torch.utils.data.DataLoader(image_datasets[x], batch_size=job["batch_size"], shuffle=x == "train",
                                              num_workers=REFERENCE_WORKERS)
               for x in ("train", "val")}
    torch.manual_seed(job["seed"])
    model = backbones.create_model(job["backbone"], len(image_datasets["train"].classes), job["weights"])
    plan = freeze.make_plan(model.param_blocks(), job["strategy"])
    for name, block in model.named_children():
        if name in plan.frozen_at_start:
            for param in block.parameters():
                param.requires_grad = False
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(job, params, torch)
    criterion = nn.CrossEntropyLoss()
    best_acc, best_wts, train_seconds, images = 0.0, None, 0.0, 0
    for epoch in range(job["epochs"]):
        for phase in ("train", "val"):
            model.train() if phase == "train" else model.eval()
            correct, t0 = 0, time.perf_counter()
            for inputs, labels in loaders[phase]:
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    outputs = model(inputs)
                    loss = criterion(outputs, labels)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
                correct += (outputs.argmax(1) == labels).sum().item()
            if phase == "train":
                train_seconds += time.perf_counter() - t0
                images += len(image_datasets["train"])
            else:
                acc = correct / len(image_datasets["val"])
                if acc > best_acc:
                    best_acc, best_wts = acc, copy.deepcopy(model.state_dict())
    wall = time.perf_counter() - began
    return {"wall_s": wall, "best_val_accuracy": best_acc, "images_per_second": images / train_seconds,
            "peak_rss_mb": peak_rss_mb(),
            "workers_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def make_optimizer(job: dict, params, torch):
    """The optimiser and settings ftlab uses for the same config, on the trainable parameters, written
    as the tutorial writes it: ftlab's ``engine.make_optimizer`` also fuses the step into one kernel."""
    if job["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=job["lr"], momentum=job["momentum"], weight_decay=job["weight_decay"])
    cls = torch.optim.Adam if job["optimizer"] == "adam" else torch.optim.AdamW
    return cls(params, lr=job["lr"], weight_decay=job["weight_decay"])


def ftlab_config(job: dict):
    from ftlab.config import TrainConfig

    return TrainConfig(dataset=job["dataset"], backbone=job["backbone"], weights=job["weights"],
                       strategy=job["strategy"], optimizer=job["optimizer"], lr=job["lr"],
                       weight_decay=job["weight_decay"], epochs=job["epochs"], batch_size=job["batch_size"],
                       image_size=job["image_size"], seed=job["seed"], precision=job.get("precision", "auto"))


def ftlab_runs(job: dict) -> dict:
    """A cold run (empty cache: it decodes and caches), then a warm one that reuses the cache."""
    from ftlab import cache, engine
    from ftlab.runs import RunStore

    config = ftlab_config(job)
    out = {}
    with tempfile.TemporaryDirectory() as home:
        store = RunStore(Path(home))
        for label in ("cold", "warm")[:1 + job["warm"]]:
            if label == "cold":
                cache.SHARED.clear()
            began = time.perf_counter()
            summary = engine.run(config, store=store)
            wall = time.perf_counter() - began
            if summary["stopped_reason"] != "completed":
                raise RuntimeError(f"ftlab run ended with {summary['stopped_reason']}: "
                                   f"{store.get(summary['run_id']) if hasattr(store, 'get') else ''}")
            out[label] = {"wall_s": wall, "best_val_accuracy": summary["best_val_accuracy"],
                          "images_per_second": summary["images_per_second"],
                          "train_seconds": summary["train_seconds"], "peak_rss_mb": peak_rss_mb(),
                          "feature_cache": summary.get("feature_cache", ""),
                          "cache_seconds": summary.get("cache_seconds", 0.0), "precision": summary.get("precision", {})}
        out["cache_peak_mb"] = cache.SHARED.peak_bytes / 2**20
        out["cache_budget_mb"] = cache.SHARED.budget / 2**20
    return out


def ceiling(job: dict) -> dict:
    """The same model's training step on random in-memory tensors: what the arithmetic allows, in
    the precision the ftlab run trained in (bf16/fp16 by autocast, as the engine does)."""
    import torch
    from torch import nn

    from ftlab import backbones
    from ftlab.precision import Choice

    torch.manual_seed(job["seed"])
    model = backbones.create_model(job["backbone"], job["num_classes"], job["weights"]).train()
    optimizer = make_optimizer(job, model.parameters(), torch)
    x = torch.randn(job["batch_size"], 3, job["image_size"], job["image_size"])
    y = torch.randint(0, job["num_classes"], (job["batch_size"],))

    autocast = Choice(job["ceiling_precision"], "").autocast

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast("cpu"):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    for _ in range(2):  # warm-up: allocator, oneDNN primitives
        step()
    steps, began = 0, time.perf_counter()
    while steps < job["ceiling_steps"]:
        step()
        steps += 1
    seconds = time.perf_counter() - began
    return {"images_per_second": steps * job["batch_size"] / seconds, "steps": steps}


def foreground_background(job: dict) -> dict:
    """The same config in the foreground (``engine.run``) and through ``engine.Job``, alternately."""
    from ftlab import cache, engine, jobs
    from ftlab.runs import RunStore

    config = ftlab_config(job)
    rates = {"foreground": [], "background": []}
    with tempfile.TemporaryDirectory() as home:
        store = RunStore(Path(home))
        for _ in range(job["repeats"]):
            for mode in ("foreground", "background"):
                cache.SHARED.clear()
                if mode == "foreground":
                    summary = engine.run(config, store=store)
                else:
                    j = jobs.Job(config, store).start()
                    while j.alive:  # the app's page reads a snapshot about once a second
                        j.snapshot()
                        j.join(1.0)
                    summary = j.snapshot().end.summary
                rates[mode].append(summary["images_per_second"])
    fg, bg = statistics.median(rates["foreground"]), statistics.median(rates["background"])
    return {"foreground_ips": fg, "background_ips": bg, "ratio": bg / fg, "rates": rates}


PROGRAMS = {"reference": reference, "ftlab": ftlab_runs, "ceiling": ceiling, "fgbg": foreground_background}


def child(kind: str, job: dict) -> dict:
    """Run one program in a fresh Python process and return what it reports."""
    proc = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(job)], capture_output=True,
                          text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- data the reference can read: class folders -----------------------------------------

def digits_folder(root: Path, seed: int) -> Path:
    """ftlab's digits split written as PNG files in train/ and val/ class folders, drawn as ftlab
    draws them (dark ink on white, 255 - v * 255/16, greyscale; ImageFolder makes them RGB)."""
    from PIL import Image

    from ftlab import data

    ds = data.load_dataset("digits")
    split = data.make_split(ds, val_fraction=0.2, seed=seed)
    for name in ("train", "val"):
        for i in getattr(split, name):
            folder = root / name / ds.classes[ds.labels[i]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ds._pixels[i], mode="L").save(folder / f"{i:04d}.png")
    return root


# --- the benchmark ----------------------------------------------------------------------

def measure(dataset: str, backbone: str, strategy: str, args, folder: Path) -> dict:
    size = args.image_size or DEFAULT_SIZE[dataset]
    if backbone == "resnet18" and strategy == "full" and dataset == "hymenoptera":
        size = args.resnet_full_size or size
    epochs = args.full_epochs if strategy == "full" and args.full_epochs else args.epochs
    from ftlab import backbones
    from ftlab.config import DEFAULT_LR
    from ftlab.freeze import Strategy

    # ResNet-18's ImageNet weights are a download, and this machine is offline
    weights = "imagenet" if backbones.weights_available_offline(backbone) else "random"
    job = {"dataset": str(HYMENOPTERA) if dataset == "hymenoptera" else dataset, "folder": str(folder),
           "backbone": backbone, "weights": weights, "strategy": strategy, "optimizer": "adamw",
           "lr": DEFAULT_LR[Strategy.parse(strategy).kind], "momentum": 0.9, "weight_decay": 1e-4,
           "epochs": epochs, "batch_size": args.batch_size, "image_size": size, "seed": 0,
           "warm": strategy != "full", "num_classes": 2 if dataset == "hymenoptera" else 10}
    base = {"dataset": dataset, "backbone": backbone, "weights": weights, "strategy": strategy,
            "image_size": size, "epochs": epochs, "batch_size": args.batch_size}
    say(f"{dataset} / {backbone} ({weights}) / {strategy} at {size} px, {epochs} epochs: reference ...")
    reference_figures = child("reference", job)
    say(f"  reference {reference_figures['wall_s']:.1f} s, acc {reference_figures['best_val_accuracy']:.3f}")
    rows = []
    for precision in args.precisions:  # a row each: the reference (the tutorial's fp32 loop) is the same
        row = {**base, "precision": precision, "load_before": os.getloadavg()[0], "reference": reference_figures}
        say(f"  ftlab --precision {precision} ...")
        row["ftlab"] = child("ftlab", {**job, "precision": precision})
        cold = row["ftlab"]["cold"]
        say(f"  ftlab {cold['wall_s']:.1f} s, acc {cold['best_val_accuracy']:.3f}, {cold['precision']}")
        if strategy == "full":
            steps = max(4, -(-len_train(dataset) // args.batch_size) // (1 if not args.quick else 4))
            trained_in = cold["precision"].get("training", "fp32")
            row["ceiling"] = child("ceiling", {**job, "ceiling_steps": steps, "ceiling_precision": trained_in})
            say(f"  ceiling ({trained_in}) {row['ceiling']['images_per_second']:.1f} img/s, "
                f"ftlab {cold['images_per_second']:.1f} img/s")
        row["load_after"] = os.getloadavg()[0]
        rows.append(row)
    return rows


def len_train(dataset: str) -> int:
    return 245 if dataset == "hymenoptera" else 1438


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def table(rows: list[dict]) -> str:
    head = ("| data | backbone (weights) | strategy | px | epochs | precision | wall ref s | wall ftlab s | ref/ftlab | "
            "ftlab warm s | caching s | val acc ref | val acc ftlab | peak RSS ref / ftlab MB | cache peak / budget MB | "
            "train img/s ref / ftlab / ceiling | load |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ref, cold, warm = r["reference"], r["ftlab"]["cold"], r["ftlab"].get("warm")
        ips = f"{ref['images_per_second']:.0f} / {cold['images_per_second']:.0f}"
        if "ceiling" in r:
            c = r["ceiling"]["images_per_second"]
            ips += f" / {c:.0f} (ftlab {cold['images_per_second'] / c:.2f} of it)"
        used = cold.get("precision") or {}
        shown = used.get("training", "?") if used.get("caching") in (None, used.get("training")) else \
            f"train {used.get('training')}, cache {used['caching']}"
        cells = [r["dataset"], f"{r['backbone']} ({r['weights']})", r["strategy"], r["image_size"], r["epochs"],
                 f"{r.get('precision', '?')}: {shown}",
                 f"{ref['wall_s']:.1f}", f"{cold['wall_s']:.1f}", f"**{ref['wall_s'] / cold['wall_s']:.1f}x**",
                 f"{warm['wall_s']:.1f}" if warm else "–", f"{cold.get('cache_seconds', 0):.1f}",
                 f"{ref['best_val_accuracy']:.3f}", f"{cold['best_val_accuracy']:.3f}",
                 f"{ref['peak_rss_mb']:.0f} / {cold['peak_rss_mb']:.0f}",
                 f"{r['ftlab']['cache_peak_mb']:.1f} / {r['ftlab']['cache_budget_mb']:.0f}", ips,
                 f"{r['load_before']:.1f}–{r['load_after']:.1f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=["hymenoptera", "digits"], choices=list(DEFAULT_SIZE))
    p.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "resnet18"])
    p.add_argument("--strategies", nargs="*", default=["linear-probe", "top-1", "full"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--full-epochs", type=int, default=0, help="epochs for full fine-tuning (0: --epochs)")
    p.add_argument("--image-size", type=int, default=0, help="one size for all (0: 224 for hymenoptera, 64 digits)")
    p.add_argument("--resnet-full-size", type=int, default=0,
                   help="image size for ResNet-18 full fine-tuning on hymenoptera (0: as the others)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precisions", nargs="+", default=["fp32", "auto"], choices=["auto", "fp32", "bf16", "fp16"],
                   help="a row per precision for each configuration (the ceiling too, in what ftlab trained in)")
    p.add_argument("--fgbg", default="digits:efficientnet_lite0:full:2:64,hymenoptera:resnet18:full:1:224",
                   help="comma-separated data:backbone:strategy:epochs:px configurations to run in the background "
                        "and the foreground ('' skips)")
    p.add_argument("--repeats", type=int, default=3, help="alternating foreground/background pairs per configuration")
    p.add_argument("--quick", action="store_true", help="a smoke run: digits, 2 epochs, 32 px")
    p.add_argument("--out", type=Path, help="write the table here (markdown), and every figure next to it (.json)")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, job = args.child
        print(json.dumps(PROGRAMS[kind](json.loads(job))))
        return
    if args.quick:
        args.datasets, args.epochs, args.image_size = ["digits"], 2, args.image_size or 32
        args.fgbg, args.repeats = args.fgbg and "digits:resnet18:top-1:1:32", min(args.repeats, 2)
    rows, fgbg, started = [], [], time.perf_counter()
    for spec in filter(None, args.fgbg.split(",")):
        fgbg.append(background_against_foreground(spec, args))
        report(rows, fgbg, args, started)
    with tempfile.TemporaryDirectory() as tmp:
        folders = {"hymenoptera": HYMENOPTERA, "digits": Path(tmp) / "digits"}
        if "digits" in args.datasets:
            digits_folder(folders["digits"], seed=0)
        for dataset in args.datasets:
            for backbone in args.backbones:
                for strategy in args.strategies:
                    rows.extend(measure(dataset, backbone, strategy, args, folders[dataset]))
                    report(rows, fgbg, args, started)
    print(report(rows, fgbg, args, started))


def background_against_foreground(spec: str, args) -> dict:
    dataset, backbone, strategy, epochs, size = spec.split(":")
    job = {"dataset": str(HYMENOPTERA) if dataset == "hymenoptera" else dataset, "backbone": backbone,
           "weights": "imagenet" if backbone == "efficientnet_lite0" else "random", "strategy": strategy,
           "optimizer": "adamw", "lr": None, "weight_decay": 1e-4, "epochs": int(epochs),
           "batch_size": args.batch_size, "image_size": int(size), "seed": 0, "repeats": args.repeats}
    say(f"background against foreground: {spec} ...")
    return {"config": f"{dataset}, {backbone}, {strategy}, {epochs} epochs, {size} px", **child("fgbg", job)}


def report(rows: list[dict], fgbg: list[dict], args, started: float) -> str:
    """The table and the background figures so far; written to --out after every row."""
    text = table(rows) if rows else ""
    for f in fgbg:
        rates = ", ".join(f"{r:.0f}" for r in f["rates"]["background"])
        fg_rates = ", ".join(f"{r:.0f}" for r in f["rates"]["foreground"])
        text += (f"\n\nBackground runner ({f['config']}; alternating runs): {f['background_ips']:.1f} img/s "
                 f"(median of {rates}) against {f['foreground_ips']:.1f} in the foreground ({fg_rates}): "
                 f"**{f['ratio']:.3f}** of it.")
    from ftlab import precision

    text += f"\n\nMachine: {precision.describe_machine()}"
    text += (f"\n\nElapsed {time.perf_counter() - started:.0f} s; load average now {os.getloadavg()[0]:.1f} "
             f"on {os.cpu_count()} cores; reference DataLoader num_workers={REFERENCE_WORKERS}.")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "background": fgbg}, indent=1))
    return text


if __name__ == "__main__":
    main()
