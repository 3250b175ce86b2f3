"""The classic contrast under shift: a linear probe against a fine-tune, on corrupted val copies.

    FTLAB_HOME=$(mktemp -d) nice -n 15 python bench/demo_shift.py        # ants/bees, Lite0, top-4, 4 epochs
    python bench/demo_shift.py --fine-tune full --epochs 3 --image-size 160

Kumar et al. (2022, "Fine-Tuning can Distort Pretrained Features and Underperform
Out-of-Distribution") report fine-tuning ahead of a linear probe on the training distribution
and behind it under distribution shift. This trains both on the same data (EfficientNet-Lite0,
ImageNet weights, the same seed, split, epochs and image size; each strategy at ftlab's default
learning rate) and runs `ftlab.shift` on each: the same corrupted copies of the same val images
(seeded). It prints a markdown table: the clean accuracy and the accuracy under each corruption
and severity, both runs, and fine-tune minus probe. Nothing is tuned here. The runs are kept in
the run store (FTLAB_HOME), so the Inspect page shows them too.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ftlab import engine, events, shift  # noqa: E402
from ftlab.config import TrainConfig, validate  # noqa: E402
from ftlab.runs import RunStore  # noqa: E402

HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default=str(HYMENOPTERA), help="data set name or folder (default: ants/bees)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--fine-tune", default="top-4", help="the fine-tune's strategy: top-N or full (default top-4)")
    p.add_argument("--epochs", type=int, default=4, help="epochs of each run")
    p.add_argument("--image-size", type=int, default=None, help="default: the backbone's own (224 for Lite0)")
    p.add_argument("--seed", type=int, default=0, help="the runs' seed and the corruptions' seed")
    p.add_argument("--json", type=Path, default=None, help="also write both shift results here as JSON")
    return p.parse_args(argv)


def configs(args: argparse.Namespace) -> dict[str, TrainConfig]:
    base = TrainConfig(dataset=args.dataset, backbone=args.backbone, weights="imagenet", epochs=args.epochs,
                       image_size=args.image_size, seed=args.seed)
    return {"linear probe": replace(base, strategy="linear-probe", name="demo shift: linear probe"),
            f"fine-tune ({args.fine_tune})": replace(base, strategy=args.fine_tune,
                                                    name=f"demo shift: {args.fine_tune}")}


def progress(label: str):
    def emit(event: events.Event) -> None:
        if isinstance(event, events.EpochEnded):
            print(f"  {label}: epoch {event.epoch}/{event.epochs}: train acc {event.train_accuracy:.3f}, "
                  f"val acc {event.val_accuracy:.3f}", flush=True)
        elif isinstance(event, events.RunFailed):
            print(f"  {label}: failed: {event.message}", flush=True)
    return emit


def report(labels: list[str], results: list[shift.ShiftResult]) -> str:
    """Markdown: a row per setting (clean first, the mean under shift last), both runs and the difference."""
    probe, tuned = results
    head = [f"| corruption | severity | setting | {labels[0]} | {labels[1]} | difference (fine-tune − probe) |",
            "|---|---|---|---|---|---|"]
    rows = [("none (clean)", "", "", probe.clean, tuned.clean)]
    rows += [(a.corruption, str(a.severity), a.setting, a.accuracy, b.accuracy) for a, b in zip(probe.rows, tuned.rows)]
    rows.append(("mean under shift", "", "", probe.mean_shifted, tuned.mean_shifted))
    body = [f"| {c} | {s} | {setting} | {p:.3f} | {t:.3f} | {t - p:+.3f} |" for c, s, setting, p, t in rows]
    return "\n".join(head + body)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = configs(args)
    for label, config in runs.items():
        if problems := validate(config):
            sys.exit(f"{label}: " + " ".join(problems))
    store, ids = RunStore(), []
    for label, config in runs.items():
        began = time.perf_counter()
        print(f"{label}: {config.name}", flush=True)
        summary = engine.run(config, store=store, emit=progress(label))
        if summary["stopped_reason"] not in ("completed", "early_stopping"):
            sys.exit(f"{label}: the run ended {summary['stopped_reason']}; see `python -m ftlab runs`")
        print(f"  {label}: run {summary['run_id']}, best val accuracy {summary['best_val_accuracy']:.3f} "
              f"(epoch {summary['best_epoch']}), {time.perf_counter() - began:.0f} s", flush=True)
        ids.append(summary["run_id"])
    began = time.perf_counter()
    results = shift.run_many(ids, store, seed=args.seed, say=lambda m: print(f"  shift: {m}", flush=True))
    print(f"  shift test of both runs: {time.perf_counter() - began:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps([r.to_dict() for r in results], indent=1))
    print(f"\n{results[0].images} val images, seed {args.seed}; runs {', '.join(ids)}\n")
    print(report(list(runs), results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
