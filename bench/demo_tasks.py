"""Does a second task help the first? Shape-only against shape+colour training on the generated
shapes, with the same backbone, freezing, epochs and seed, over several seeds.

    python bench/demo_tasks.py                  # 3 seeds, Lite0 (ImageNet) frozen to its top 2 blocks
    python bench/demo_tasks.py --quick          # a smoke run: tiny images, 1 epoch, 2 seeds
    python bench/demo_tasks.py --weighting uncertainty --out bench/tasks.md

Each seed draws its own shapes set (the seed is the generator's too) and both settings train on
it: the table gives each setting's best val accuracy on the shape task per seed, their mean and
spread, the colour task's accuracy where it trains, and the paired difference (two tasks minus
one) per seed. The verdict says "helps" or "hurts" only when every seed agrees; otherwise "no
consistent effect". Nothing is tuned for the answer: the settings are the flags below.

The shapes set must carry its colour task (`ftlab.data.shapes`); the script says so if it does not.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def base_config(args: argparse.Namespace):
    from ftlab.config import TrainConfig

    return TrainConfig(dataset="shapes", backbone=args.backbone, weights="imagenet", strategy=args.strategy,
                       shapes_classes=args.classes, shapes_per_class=args.per_class, shapes_noise=args.noise,
                       image_size=args.image_size, epochs=args.epochs, batch_size=32, task_weighting="fixed")


def second_task(config) -> tuple[str, str]:
    """The shapes set's first task and its colour task (or its first further task); SystemExit
    with what to do where the set carries no further task."""
    from ftlab import data

    ds = data.load_for(config, download=False)
    names = [t.name for t in ds.tasks]
    if not names:
        raise SystemExit("the shapes data set carries only one task here (its shape): this demonstration needs "
                         "its colour task, which the data side of several tasks adds to ftlab.data.shapes")
    return ds.task, "colour" if "colour" in names else names[0]


def train(config, store) -> dict:
    from ftlab import engine

    summary = engine.run(config, store=store)
    if summary["stopped_reason"] != "completed":
        raise SystemExit(f"a run did not complete ({summary['stopped_reason']}): {config}")
    return summary


def verdict(diffs: list[float]) -> str:
    """ "helps" / "hurts" only when every seed agrees, else "no consistent effect".

    >>> verdict([0.01, 0.02]), verdict([-0.01, -0.03]), verdict([0.02, -0.01]), verdict([0.0, 0.01])
    ('helps', 'hurts', 'no consistent effect', 'no consistent effect')
    """
    if all(d > 0 for d in diffs):
        return "helps"
    if all(d < 0 for d in diffs):
        return "hurts"
    return "no consistent effect"


def spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {sd:.3f}"


def table(rows: dict[str, list[float]], colour: list[float], seeds: list[int], first: str, other: str) -> str:
    head = "| setting | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |"
    lines = [head, "|" + "---|" * (len(seeds) + 2)]
    for name, values in rows.items():
        lines.append(f"| {name}: best val {first} accuracy | " + " | ".join(f"{v:.3f}" for v in values)
                     + f" | {spread(values)} |")
    lines.append(f"| {first}+{other}: best val {other} accuracy | " + " | ".join(f"{v:.3f}" for v in colour)
                 + f" | {spread(colour)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny: 32 px, 1 epoch, 2 seeds, 20 images per class")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--strategy", default="top-2")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--classes", type=int, default=8, help="shape classes (8: the hardest the generator makes)")
    p.add_argument("--per-class", type=int, default=60)
    p.add_argument("--noise", type=float, default=0.5, help="background noise: high enough that shape is not solved")
    p.add_argument("--weighting", choices=("fixed", "uncertainty"), default="fixed")
    p.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.image_size, args.per_class = args.seeds[:2], 1, 32, 20

    from ftlab.runs import RunStore

    config = base_config(args)
    first, other = second_task(config)
    rows: dict[str, list[float]] = {first: [], f"{first}+{other}": []}
    colour: list[float] = []
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as home:
        store = RunStore(Path(home))
        for seed in args.seeds:
            one = train(replace(config, seed=seed), store)
            two = train(replace(config, seed=seed, tasks=f"{first},{other}", task_weighting=args.weighting), store)
            rows[first].append(one["best_val_accuracy"])
            rows[f"{first}+{other}"].append(two["best_val_accuracy"])
            colour.append(two["tasks"][other])
            print(f"seed {seed}: {first} only {one['best_val_accuracy']:.3f}, with {other} "
                  f"{two['best_val_accuracy']:.3f} ({other} {two['tasks'][other]:.3f})", file=sys.stderr)
    diffs = [b - a for a, b in zip(rows[first], rows[f"{first}+{other}"])]
    text = "\n".join([
        f"shapes ({args.classes} classes, {args.per_class} per class, noise {args.noise:g}), {args.backbone} "
        f"ImageNet, {args.strategy}, {args.image_size} px, {args.epochs} epoch{'' if args.epochs == 1 else 's'}, "
        f"{args.weighting} task weighting",
        "", table(rows, colour, args.seeds, first, other), "",
        f"paired difference ({first}+{other} minus {first} only), per seed: "
        + ", ".join(f"{d:+.3f}" for d in diffs) + f"; mean {statistics.mean(diffs):+.3f}",
        f"{other} as a second task, for {first} accuracy: {verdict(diffs)} ({time.perf_counter() - began:.0f} s)"])
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
