"""What each training objective costs per epoch against plain cross-entropy, side by side.

    nice -n 10 python bench/bench_objectives.py                     # L2-SP, adaptive L2-SP: Lite0 full, ants/bees
    python bench/bench_objectives.py --image-size 224 --epochs 4 --rounds 3 --out bench/objectives.md
    python bench/bench_objectives.py --dataset digits --backbone small_cnn --weights random --image-size 32

Every row of ``CONFIGS`` is a named set of options on top of one base configuration (data,
backbone, strategy, image size, epochs, seed: the command line's). All rows run in one process,
one run each per round and the rounds one after the other, so that whatever else loads the
machine falls on every row alike. A row's figure is the median of its epochs' training seconds
(``EpochRecord.seconds``: the training passes alone, without evaluation or caching) over the
epochs after each run's first (which warms the kernels up), and its ratio to the first row's.

A row's value is a dict of options, or a function ``(store, base) -> dict`` that prepares what
the row needs first (a teacher run to distil from, say) and returns the options. Rows for
distillation (teacher logits cached, or the teacher run on every batch: what the cache saves) and
for two tasks (a second head, on a copy of the data with a labels.csv) are in the same table.

Last, the cost of the "which layers moved" figures that every run records: one
``Anchor.moved()`` over the whole model (every block copied, as after full fine-tuning), the
median of a few, against the plain row's seconds per epoch.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ftlab import backbones, engine  # noqa: E402
from ftlab.config import TrainConfig, validate  # noqa: E402
from ftlab.data.folders import is_image_file  # noqa: E402
from ftlab.objectives import Anchor  # noqa: E402
from ftlab.runs import RunStore  # noqa: E402

HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera"
Options = dict | Callable[[RunStore, TrainConfig], dict]
RECOMPUTE = "recompute teacher"  # an option of this bench alone: run the teacher on every batch


def teacher_run(store: RunStore, base: TrainConfig) -> dict:
    """A Lite0 ImageNet linear probe on the base's data (2 epochs) to distil from."""
    teacher = engine.run(replace(base, backbone="efficientnet_lite0", weights="imagenet", strategy="linear-probe",
                                 epochs=2, name="teacher"), store=store)
    if teacher["stopped_reason"] != "completed":
        sys.exit(f"the teacher run ended {teacher['stopped_reason']}")
    return {"teacher": teacher["run_id"]}


def second_task(store: RunStore, base: TrainConfig) -> dict:
    """A copy of the base's data folder with a labels.csv of a second task every image has: its
    orientation (landscape or portrait, read from the file), so that two heads train."""
    from PIL import Image

    source = Path(base.dataset)
    if not source.is_dir():
        return {"tasks": "all"}  # a registered set: shapes carries its colour
    copy = Path(store.home) / "two-tasks"
    shutil.copytree(source, copy, dirs_exist_ok=True)
    rows = ["file,orientation"]
    for path in sorted(p for p in copy.rglob("*") if is_image_file(p.name)):
        try:
            with Image.open(path) as im:
                wide = im.width >= im.height
        except OSError:  # the loader skips it as undecodable, but labels.csv still needs its row
            wide = True
        rows.append(f"{path.relative_to(copy).as_posix()},{'landscape' if wide else 'portrait'}")
    (copy / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {"dataset": str(copy), "tasks": "all"}


# name -> options over the base; the first row is the reference of the ratios
CONFIGS: dict[str, Options] = {
    "cross-entropy": {},
    "L2-SP (beta 0.01)": {"l2sp": 0.01},
    "adaptive L2-SP (from beta 0.01)": {"l2sp": 0.01, "l2sp_adaptive": True},
    "distillation, teacher logits cached": teacher_run,
    "distillation, teacher recomputed each batch": lambda store, base: {**teacher_run(store, base), RECOMPUTE: True},
    "two tasks (fixed weights)": second_task,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default=str(HYMENOPTERA), help="data set name or folder (default: ants/bees)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--strategy", default="full")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3, help="per run; the first is left out of the figures")
    p.add_argument("--rounds", type=int, default=2, help="runs of every row, interleaved")
    p.add_argument("--precision", default="auto")
    p.add_argument("--only", nargs="*", help="run only these rows (names as in the table), besides the first")
    p.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be at least 2: the first epoch of every run is left out")
    return args


def base_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(dataset=args.dataset, backbone=args.backbone, weights=args.weights, strategy=args.strategy,
                       image_size=args.image_size, batch_size=args.batch_size, epochs=args.epochs,
                       precision=args.precision, seed=0)


def rows_to_run(args: argparse.Namespace, store: RunStore, base: TrainConfig) -> dict[str, TrainConfig]:
    """Each row's configuration, its preparation done; a row whose options do not validate stops the bench."""
    names = list(CONFIGS)
    if args.only:
        unknown = set(args.only) - set(names)
        if unknown:
            sys.exit(f"unknown rows {sorted(unknown)}; rows are: {names}")
        names = [names[0]] + [n for n in names[1:] if n in args.only]
    configs = {}
    for name in names:
        options = CONFIGS[name]
        options = dict(options(store, base) if callable(options) else options)
        if options.pop(RECOMPUTE, False):
            RECOMPUTING.add(name[:80])
        config = replace(base, **options, name=name[:80])
        if problems := validate(config):
            sys.exit(f"row {name!r}: " + " ".join(problems))
        configs[name] = config
    return configs


RECOMPUTING: set[str] = set()  # rows whose teacher runs on every batch instead of once per image


def _recomputing_teacher(self) -> "torch.Tensor":
    """`engine._Trainer._teacher_logits` for the recomputing rows: the teacher is loaded and its
    summary kept as usual, but the objective gets a function that runs it on every batch."""
    _cached_teacher(self)
    return self.teacher.recomputing(self._teacher_images(self.data.train, self.teacher.preprocessing, "train"),
                                    self.device)


_cached_teacher = engine._Trainer._teacher_logits


def epoch_seconds(config: TrainConfig, store: RunStore) -> list[float]:
    """The training seconds of each epoch of one run, its first left out."""
    engine._Trainer._teacher_logits = _recomputing_teacher if config.name in RECOMPUTING else _cached_teacher
    summary = engine.run(config, store=store)
    if summary["stopped_reason"] != "completed":
        sys.exit(f"{config.name}: the run ended {summary['stopped_reason']}")
    return [e["seconds"] for e in store.epochs(summary["run_id"])][1:]


def moved_seconds(base: TrainConfig, repeats: int = 5) -> tuple[float, int]:
    """Median seconds of one ``Anchor.moved()`` over every block of the base's model, and its parameters."""
    model = backbones.create_model(base.backbone, 2, base.weights, image_size=base.image_size)
    anchor = Anchor(model)
    anchor.take(model.param_blocks())
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        anchor.moved()
        times.append(time.perf_counter() - began)
    return statistics.median(times), sum(p.numel() for p in model.parameters())


def table(results: dict[str, list[float]], base: TrainConfig, rounds: int, moved: tuple[float, int]) -> str:
    reference = statistics.median(next(iter(results.values())))
    lines = [f"{base.backbone} ({base.weights}), {base.strategy}, {Path(base.dataset).name} at {base.image_size} px, "
             f"batch {base.batch_size}, precision {base.precision}: {rounds} round(s) of {base.epochs} epochs per row, "
             "the first epoch of each run left out", "",
             "| objective | s/epoch (median) | min-max | x cross-entropy |", "|---|---|---|---|"]
    for name, seconds in results.items():
        median = statistics.median(seconds)
        lines.append(f"| {name} | {median:.2f} | {min(seconds):.2f}-{max(seconds):.2f} | {median / reference:.3f} |")
    took, params = moved
    lines += ["", f"which layers moved: one Anchor.moved() over all {params:,} parameters took {took * 1000:.1f} ms "
              f"(median of 5), {took / reference:.2%} of a cross-entropy epoch"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = base_config(args)
    with tempfile.TemporaryDirectory() as home:
        os.environ["FTLAB_HOME"] = home  # the runs and what `auto` precision measured go with the folder
        store = RunStore(Path(home))
        configs = rows_to_run(args, store, base)
        results: dict[str, list[float]] = {name: [] for name in configs}
        for round_ in range(args.rounds):
            for name, config in configs.items():
                seconds = epoch_seconds(config, store)
                results[name] += seconds
                print(f"round {round_ + 1}: {name}: {', '.join(f'{s:.2f}' for s in seconds)} s/epoch", flush=True)
        text = table(results, base, args.rounds, moved_seconds(base))
    print("\n" + text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
