"""Distillation, measured (issue 14): does a strong teacher help a small student?

On digits and on ants/bees, two small students train from nothing (``small_cnn``, and
``mobilenet_v3_small`` with random weights), each with and without a teacher, with the same
epochs, options and seed; three seeds each. The teacher is a fine-tuned EfficientNet-Lite0
(ImageNet weights) at its own size, trained first with the seed of the students it teaches (a
data set without its own val split is carved by the seed, so the teacher never trained on the
students' val images). Everything else is ftlab's defaults for a run; nothing is tuned here.

    python bench/demo_distill.py --quick        # digits only, one seed, one epoch: a smoke run
    nice -n 10 python bench/demo_distill.py     # everything; prints a markdown table

Each row: best val accuracy, mean ± sample standard deviation over the seeds, without and with
the teacher, and the paired difference (with - without, per seed). Runs are kept in a temporary
FTLAB_HOME (or ``--home``) and the numbers also go to ``--out`` as JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera"

from ftlab import engine  # noqa: E402
from ftlab.config import TrainConfig  # noqa: E402
from ftlab.runs import RunStore  # noqa: E402

# data set -> (what --dataset takes, the students' image size, the teacher's image size, whether the
# seed carves the split: then each seed gets its own teacher, trained on that seed's training split)
DATASETS = {"digits": ("digits", 32, 64, True), "ants/bees": (str(HYMENOPTERA), 64, 224, False)}
STUDENTS = ("small_cnn", "mobilenet_v3_small")


def train(store: RunStore, **options) -> dict:
    began = time.perf_counter()
    summary = engine.run(TrainConfig(**options), store=store)
    if summary["stopped_reason"] not in ("completed", "early_stopping"):
        raise SystemExit(f"run failed: {store.get(summary['run_id']).message if store.exists(summary['run_id']) else summary}")
    summary["wall_seconds"] = time.perf_counter() - began
    return summary


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {sd:.3f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="digits only, one seed, one epoch each")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=6, help="student epochs (the same with and without a teacher)")
    p.add_argument("--teacher-epochs", type=int, default=6)
    p.add_argument("--teacher-strategy", default="top-2")
    p.add_argument("--temperature", type=float, default=TrainConfig().distill_temperature)
    p.add_argument("--alpha", type=float, default=TrainConfig().distill_alpha)
    p.add_argument("--lr", type=float, default=3e-3, help="the students' learning rate (both ways)")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS))
    p.add_argument("--student-px", action="append", default=[], metavar="DATA:PX",
                   help="the students' image size on a data set, e.g. digits:16 (default: digits 32, ants/bees 64)")
    p.add_argument("--skip", action="append", default=[], metavar="DATA:STUDENT",
                   help="leave a student out on a data set, e.g. digits:mobilenet_v3_small")
    p.add_argument("--home", type=Path, default=None, help="where the runs are kept (default: a temporary folder)")
    p.add_argument("--out", type=Path, default=None, help="write every figure as JSON here")
    a = p.parse_args()
    if a.quick:
        a.seeds, a.epochs, a.teacher_epochs, a.datasets = a.seeds[:1], 1, 1, ["digits"]
    if "ants/bees" in a.datasets and not HYMENOPTERA.is_dir():
        raise SystemExit(f"{HYMENOPTERA} is missing (the shared ants/bees photos); run with --datasets digits")
    sizes = {k: int(v) for k, v in (x.rsplit(":", 1) for x in a.student_px)}
    store = RunStore(a.home or Path(tempfile.mkdtemp(prefix="ftlab-distill-")))
    rows, began = [], time.perf_counter()
    for name in a.datasets:
        dataset, student_size, teacher_size, carved = DATASETS[name]
        student_size = sizes.get(name, student_size)
        students = [s for s in a.students if f"{name}:{s}" not in a.skip]
        results = {s: {"without": [], "with": []} for s in students}
        teachers = []
        for seed in a.seeds:
            if carved or not teachers:  # a given split: one teacher (its logits are computed once for all seeds)
                teacher = train(store, dataset=dataset, backbone="efficientnet_lite0", weights="imagenet",
                                strategy=a.teacher_strategy, epochs=a.teacher_epochs, image_size=teacher_size,
                                seed=seed)
                teachers.append(teacher)
                print(f"[demo] {name} seed {seed}: teacher {teacher['run_id']} best val "
                      f"{teacher['best_val_accuracy']:.3f} ({teacher['wall_seconds']:.0f} s)", file=sys.stderr)
            for student in students:
                common = dict(dataset=dataset, backbone=student, weights="random", strategy="full",
                              epochs=a.epochs, image_size=student_size, lr=a.lr, seed=seed)
                for how, extra in (("without", {}), ("with", dict(teacher=teacher["run_id"],
                                                                  distill_temperature=a.temperature,
                                                                  distill_alpha=a.alpha))):
                    s = train(store, **common, **extra)
                    results[student][how].append(s)
                    print(f"[demo] {name} seed {seed} {student} {how} teacher: best val {s['best_val_accuracy']:.3f} "
                          f"({s['wall_seconds']:.0f} s)", file=sys.stderr)
        for student in students:
            without = [s["best_val_accuracy"] for s in results[student]["without"]]
            with_ = [s["best_val_accuracy"] for s in results[student]["with"]]
            rows.append({"data": name, "student": student, "student_px": student_size, "teacher_px": teacher_size,
                         "teacher_val": [t["best_val_accuracy"] for t in teachers],
                         "without": without, "with": with_, "difference": [w - o for w, o in zip(with_, without)],
                         "seconds_without": [s["wall_seconds"] for s in results[student]["without"]],
                         "seconds_with": [s["wall_seconds"] for s in results[student]["with"]]})
    print(f"\nstudents: {a.epochs} epochs, full training from random weights, lr {a.lr:g}, seeds "
          f"{','.join(map(str, a.seeds))}; teacher: efficientnet_lite0 ImageNet, {a.teacher_strategy}, "
          f"{a.teacher_epochs} epochs (one per seed where the seed carves the split, else one); skipped: "
          f"{', '.join(a.skip) or 'none'}; T {a.temperature:g}, alpha {a.alpha:g}; "
          f"{time.perf_counter() - began:.0f} s in all\n")
    print("| data | student (px) | teacher's best val (px) | without teacher | with teacher | with − without (paired) "
          "| per seed without / with |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        seeds = "; ".join(f"{o:.3f} / {w:.3f}" for o, w in zip(r["without"], r["with"]))
        print(f"| {r['data']} | {r['student']} ({r['student_px']}) | {spread(r['teacher_val'])} ({r['teacher_px']}) | "
              f"{spread(r['without'])} | {spread(r['with'])} | {spread(r['difference'])} | {seeds} |")
    if a.out:
        a.out.write_text(json.dumps({"options": {k: str(v) for k, v in vars(a).items()}, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
