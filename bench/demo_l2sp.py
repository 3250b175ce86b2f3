"""What L2-SP does to full fine-tuning: no regulariser, fixed L2-SP and adaptive L2-SP, side by side.

    nice -n 10 python bench/demo_l2sp.py --out /tmp/demo-l2sp        # ants/bees, Lite0, full, 10 epochs
    python bench/demo_l2sp.py --beta 1 --epochs 5 --image-size 160 --out /tmp/demo-l2sp

Three runs of the same configuration (EfficientNet-Lite0 with ImageNet weights, ``--strategy
full``, the same seed, epochs and learning rate), differing only in the objective:

* no regulariser: cross-entropy, plain weight decay on every block;
* fixed L2-SP: ``--l2sp BETA``, the backbone pulled toward its pretrained weights (its weight
  decay off), the new head with plain weight decay;
* adaptive L2-SP: ``--l2sp BETA --l2sp-adaptive``, beta moved every epoch by the generalisation gap.

It prints each run's best val accuracy, the adaptive run's beta per epoch and, per block, how
far each run moved it from the pretrained weights at the last epoch (||θ − θ₀|| / ||θ₀||), and
saves each run's "which layers moved" heatmap under ``--out`` (HTML; PNG too where kaleido is
installed). The runs are kept in the run store (FTLAB_HOME), so the Runs page shows them too.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ftlab import engine, events  # noqa: E402
from ftlab.config import TrainConfig, validate  # noqa: E402
from ftlab.runs import RunStore  # noqa: E402
from ui import charts  # noqa: E402

HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the heatmaps and results.json (not in git)")
    p.add_argument("--dataset", default=str(HYMENOPTERA), help="data set name or folder (default: ants/bees)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--image-size", type=int, default=None, help="default: the backbone's own (224 for Lite0)")
    p.add_argument("--beta", type=float, default=0.1, help="L2-SP beta of the fixed run, and the adaptive run's start")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def configs(args: argparse.Namespace) -> dict[str, TrainConfig]:
    base = TrainConfig(dataset=args.dataset, backbone=args.backbone, weights="imagenet", strategy="full",
                       epochs=args.epochs, image_size=args.image_size, seed=args.seed)
    return {"no regulariser": replace(base, name="demo: no regulariser"),
            "fixed L2-SP": replace(base, l2sp=args.beta, name=f"demo: L2-SP beta {args.beta:g}"),
            "adaptive L2-SP": replace(base, l2sp=args.beta, l2sp_adaptive=True,
                                      name=f"demo: adaptive L2-SP from beta {args.beta:g}")}


def progress(label: str):
    def emit(event: events.Event) -> None:
        if isinstance(event, events.EpochEnded):
            beta = "" if event.l2sp_beta is None else f", beta {event.l2sp_beta:g}"
            print(f"  {label}: epoch {event.epoch}/{event.epochs}: train acc {event.train_accuracy:.3f}, "
                  f"val acc {event.val_accuracy:.3f}{beta}", flush=True)
        elif isinstance(event, events.RunFailed):
            print(f"  {label}: failed: {event.message}", flush=True)
    return emit


def save_heatmap(epochs: list[dict], title: str, path: Path) -> list[str]:
    """The run's heatmap as HTML, and as PNG where plotly can write images (kaleido); the files written."""
    fig = charts.moved(epochs)
    fig.update_layout(title=f"{title}: which layers moved, ||θ − θ₀|| / ||θ₀||")
    fig.write_html(path.with_suffix(".html"), include_plotlyjs=True)
    written = [str(path.with_suffix(".html"))]
    try:
        fig.write_image(path.with_suffix(".png"), width=900, height=520)
        written.append(str(path.with_suffix(".png")))
    except (ImportError, ValueError, RuntimeError):  # no kaleido here: the HTML is the figure
        pass
    return written


def report(results: dict[str, dict]) -> str:
    lines = ["| run | best val accuracy | best epoch | last train accuracy | last val accuracy |",
             "|---|---|---|---|---|"]
    for label, r in results.items():
        last = r["epochs"][-1]
        lines.append(f"| {label} | {r['best_val_accuracy']:.4f} | {r['best_epoch']} | {last['train_accuracy']:.4f} | "
                     f"{last['val_accuracy']:.4f} |")
    adaptive = results.get("adaptive L2-SP")
    if adaptive:
        lines += ["", "adaptive beta per epoch: " + ", ".join(f"{e['l2sp_beta']:g}" for e in adaptive["epochs"])]
    blocks = list(next(iter(results.values()))["epochs"][-1]["moved"])
    lines += ["", "moved from the start at the last epoch, ||θ − θ₀|| / ||θ₀|| (the head from its initialisation):", "",
              "| block | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    for block in blocks:
        lines.append(f"| {block} | " + " | ".join(f"{r['epochs'][-1]['moved'].get(block, 0.0):.4f}"
                                                   for r in results.values()) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = configs(args)
    for label, config in runs.items():
        if problems := validate(config):
            sys.exit(f"{label}: " + " ".join(problems))
    args.out.mkdir(parents=True, exist_ok=True)
    store, results = RunStore(), {}
    for label, config in runs.items():
        print(f"{label}: {config.name}", flush=True)
        summary = engine.run(config, store=store, emit=progress(label))
        if summary["stopped_reason"] != "completed":
            sys.exit(f"{label}: the run ended {summary['stopped_reason']}; see `python -m ftlab runs`")
        epochs = store.epochs(summary["run_id"])
        files = save_heatmap(epochs, label, args.out / label.replace(" ", "-"))
        results[label] = {"run_id": summary["run_id"], "best_val_accuracy": summary["best_val_accuracy"],
                          "best_epoch": summary["best_epoch"], "train_seconds": summary["train_seconds"],
                          "epochs": epochs, "heatmaps": files}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print("\n" + report(results))
    print(f"\nheatmaps and results.json in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
