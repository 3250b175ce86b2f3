"""A sweep against the same runs one by one: wall time and each member's accuracy, side by side.

    python bench/bench_sweep.py                                   # ants/bees, Lite0 ImageNet, 10 epochs
    python bench/bench_sweep.py --dataset digits --backbone small_cnn --weights random --image-size 32 --epochs 3

Both sides are what a user types, each command in its own fresh process and its own empty
FTLAB_HOME, measured back to back in this one run: first ``python -m ftlab train`` once per
strategy, one after another (each pays for starting Python, importing torch, decoding the
data and caching its own frozen prefix), then one ``python -m ftlab sweep --strategies ...``
(one start, one decoding, the frozen prefix computed once at the shallowest boundary and each
deeper one derived from it). Wall time is the whole command, from launch to exit. The figure
the issue asks for: sweep wall <= 0.5 x the sum of the runs one by one, with the same best val
accuracy per member (within the cached-vs-uncached tolerance: the derived features differ from
directly computed ones by float rounding only).
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
HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera"


def _command(args: argparse.Namespace) -> list[str]:
    opts = ["--dataset", args.dataset, "--backbone", args.backbone, "--weights", args.weights,
            "--epochs", str(args.epochs), "--seed", str(args.seed)]
    if args.image_size:
        opts += ["--image-size", str(args.image_size)]
    return opts


def _timed(cmd: list[str], home: Path) -> tuple[float, dict]:
    env = {**os.environ, "FTLAB_HOME": str(home), "FTLAB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    began = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return wall, json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=str(HYMENOPTERA))
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--weights", default="imagenet")
    ap.add_argument("--image-size", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strategies", default="linear-probe,top-1,top-2,top-4")
    ap.add_argument("--out", type=Path, default=None, help="also write the table and the figures (JSON) here")
    args = ap.parse_args()
    strategies = args.strategies.split(",")
    py = [sys.executable, "-m", "ftlab"]
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        one_by_one = {}
        for s in strategies:
            wall, summary = _timed(py + ["train", *_command(args), "--strategy", s, "--json"], Path(tmp) / f"home-{s}")
            one_by_one[s] = (wall, summary)
            print(f"train --strategy {s}: {wall:.1f} s wall, best val {summary['best_val_accuracy']:.3f}", flush=True)
        wall, rep = _timed(py + ["sweep", *_command(args), "--strategies", args.strategies, "--json"],
                           Path(tmp) / "home-sweep")
    print(f"sweep: {wall:.1f} s wall", flush=True)
    total = sum(w for w, _ in one_by_one.values())
    by_strategy = {m["strategy"]: m for m in rep["members"]}
    lines = [f"{args.backbone} ({args.weights}) on {Path(args.dataset).name}, {args.epochs} epochs, seed {args.seed}, "
             f"{os.cpu_count()} cores",
             "", "| strategy | one by one: wall s | best val | sweep: best val | CPU-s in the sweep |",
             "|---|---|---|---|---|"]
    for s in strategies:
        w, summary = one_by_one[s]
        member = by_strategy[s].get("summary", {})
        lines.append(f"| {s} | {w:.1f} | {summary['best_val_accuracy']:.3f} | {member.get('best_val_accuracy', 0):.3f} "
                     f"| {member.get('cpu_seconds', 0):.1f} |")
    lines += ["", f"sum of the runs one by one: {total:.1f} s; the sweep: {wall:.1f} s; "
                  f"sweep / one by one = {wall / total:.2f} (asked: <= 0.5)",
              "where the sweep ran: " + "; ".join(rep["groups"]),
              "pick: " + rep["comparison"]["pick"]["reason"]] + [
              "McNemar: " + p["sentence"] for p in rep["comparison"]["pairs"]]
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n\n```json\n" + json.dumps(
            {"one_by_one": {s: {"wall": w, "summary": sm} for s, (w, sm) in one_by_one.items()},
             "sweep": {"wall": wall, "report": rep}}, indent=1) + "\n```\n", encoding="utf-8")


if __name__ == "__main__":
    main()
