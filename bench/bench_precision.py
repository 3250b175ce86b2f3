"""--precision auto against fp32, side by side in one run: the caching pass, end-to-end wall time
from a cold process, training images/s and best val accuracy, each pair in a fresh process.

    python bench/bench_precision.py                 # every figure of issue 13 (about 15 minutes here)
    python bench/bench_precision.py --only caching  # one group: caching, training, no-bf16, accuracy
    python bench/bench_precision.py --out /tmp/precision.md

Groups:

* caching: ants/bees, EfficientNet-Lite0 (ImageNet), linear probe, 10 epochs at 224 px. fp32,
  then auto twice in one FTLAB_HOME: the first auto run measures fp32 against bf16 on this
  machine, the second finds the answer remembered (as every later run on this machine does);
  then bf16 asked for (held to the looser accuracy check that auto does not accept), and fp32
  with the eager blocks (``--no-fast-prefix``: the caching pass as it was before the folded graph).
* training: ResNet-18 (random weights) full fine-tuning at 224 px, 3 epochs on ants/bees.
* no-bf16: the caching group's configuration with the CPU's bf16 switched off
  (``FTLAB_CPU_BF16=0``, as on a CPU without it): auto must equal fp32 and cost nothing more.
* accuracy: best val accuracy of auto against fp32 for a linear probe on ants/bees and on
  digits, top-2 and full fine-tuning on digits (Lite0 ImageNet, 64 px for digits).

Every run is ``python -m ftlab train ... --json`` in its own process; wall time is from the
process's start to its exit (imports, decoding, caching, training, the final evaluation).
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
LITE0 = ["--backbone", "efficientnet_lite0", "--weights", "imagenet"]
ANTS = ["--dataset", str(HYMENOPTERA), "--image-size", "224"]
DIGITS = ["--dataset", "digits", "--image-size", "64"]


def train(args: list[str], home: Path, env: dict | None = None) -> dict:
    """One cold process; its summary with the wall time added."""
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ftlab", "train", *args, "--json"], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "FTLAB_HOME": str(home), "FTLAB_OFFLINE": "1", **(env or {})})
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        raise RuntimeError(f"ftlab train {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    if summary["stopped_reason"] != "completed":
        raise RuntimeError(f"ftlab train {' '.join(args)} ended with {summary['stopped_reason']}")
    return {**summary, "wall_s": wall}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _precisions(s: dict) -> str:
    p = s.get("precision") or {}
    return f"train {p.get('training', '?')}, cache {p.get('caching', '–')}"


def caching(tmp: Path, env: dict | None = None, label: str = "caching") -> list[dict]:
    args = [*ANTS, *LITE0, "--strategy", "linear-probe", "--epochs", "10"]
    rows = []
    fp32 = train([*args, "--precision", "fp32"], tmp / f"{label}-fp32", env)
    rows.append({"run": "fp32", **fp32})
    if not env:  # the caching pass as it ran before the folded graph
        rows.append({"run": "fp32, eager blocks (--no-fast-prefix)",
                     **train([*args, "--precision", "fp32", "--no-fast-prefix"], tmp / f"{label}-eager")})
    for i, when in enumerate(("auto, first run on this machine (measures)", "auto, answer remembered")):
        rows.append({"run": when, **train([*args, "--precision", "auto"], tmp / f"{label}-auto", env)})
    if not env:  # bf16 asked for: held to the looser check (what auto refuses to trade)
        rows.append({"run": "bf16 (asked for)", **train([*args, "--precision", "bf16"], tmp / f"{label}-bf16")})
    for r in rows:
        say(f"  {label} {r['run']}: caching {r['cache_seconds']:.1f} s, wall {r['wall_s']:.1f} s, "
            f"acc {r['best_val_accuracy']:.3f}, {_precisions(r)}")
    return rows


def training(tmp: Path) -> list[dict]:
    args = [*ANTS, "--backbone", "resnet18", "--weights", "random", "--strategy", "full", "--epochs", "3"]
    rows = []
    for name in ("fp32", "auto"):
        r = train([*args, "--precision", name], tmp / f"training-{name}")
        rows.append({"run": name, **r})
        say(f"  training {name}: {r['images_per_second']:.1f} img/s, acc {r['best_val_accuracy']:.3f}, "
            f"{_precisions(r)}")
    return rows


def accuracy(tmp: Path) -> list[dict]:
    cases = [("ants/bees linear probe, 10 epochs", [*ANTS, *LITE0, "--strategy", "linear-probe", "--epochs", "10"]),
             ("digits linear probe, 10 epochs", [*DIGITS, *LITE0, "--strategy", "linear-probe", "--epochs", "10"]),
             ("digits top-2, 10 epochs", [*DIGITS, *LITE0, "--strategy", "top-2", "--epochs", "10"]),
             ("digits full, 3 epochs", [*DIGITS, *LITE0, "--strategy", "full", "--epochs", "3"])]
    rows = []
    for i, (label, args) in enumerate(cases):
        pair = {name: train([*args, "--precision", name], tmp / f"accuracy-{i}") for name in ("fp32", "auto")}
        rows.append({"case": label, **pair})
        say(f"  {label}: fp32 {pair['fp32']['best_val_accuracy']:.3f}, auto {pair['auto']['best_val_accuracy']:.3f} "
            f"({_precisions(pair['auto'])})")
    return rows


def report(results: dict) -> str:
    from ftlab import precision

    lines = [f"Machine: {precision.describe_machine()}", ""]
    for group in ("caching", "no-bf16"):
        if group not in results:
            continue
        rows = results[group]
        fp32 = rows[0]
        lines += [f"**{group}** (ants/bees, Lite0 ImageNet, linear probe, 10 epochs, 224 px"
                  f"{', FTLAB_CPU_BF16=0' if group == 'no-bf16' else ''})", "",
                  "| run | precision | caching s | caching fp32/this | wall s | wall fp32/this | best val acc |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['run']} | {_precisions(r)} | {r['cache_seconds']:.1f} | "
                         f"{fp32['cache_seconds'] / r['cache_seconds']:.2f}x | {r['wall_s']:.1f} | "
                         f"{fp32['wall_s'] / r['wall_s']:.2f}x | {r['best_val_accuracy']:.3f} |")
        lines.append("")
    if "training" in results:
        fp32, auto = results["training"]
        lines += ["**training** (ResNet-18, random weights, full fine-tuning, 3 epochs, 224 px, ants/bees)", "",
                  "| run | precision | train img/s | auto/fp32 | best val acc | wall s |", "|---|---|---|---|---|---|"]
        for r in (fp32, auto):
            lines.append(f"| {r['run']} | {_precisions(r)} | {r['images_per_second']:.1f} | "
                         f"{r['images_per_second'] / fp32['images_per_second']:.2f}x | {r['best_val_accuracy']:.3f} | "
                         f"{r['wall_s']:.1f} |")
        lines.append("")
    if "accuracy" in results:
        lines += ["**accuracy** (best val accuracy; Lite0 ImageNet; digits at 64 px)", "",
                  "| case | fp32 | auto | auto's precision | difference (points) |", "|---|---|---|---|---|"]
        for r in results["accuracy"]:
            a, b = r["fp32"]["best_val_accuracy"], r["auto"]["best_val_accuracy"]
            lines.append(f"| {r['case']} | {a:.3f} | {b:.3f} | {_precisions(r['auto'])} | {100 * (b - a):+.1f} |")
        lines.append("")
    lines.append(f"Load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", choices=["caching", "training", "no-bf16", "accuracy"],
                   default=["caching", "no-bf16", "training", "accuracy"])
    p.add_argument("--out", type=Path, help="write the tables here (markdown) and the figures next to it (.json)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for group in args.only:
            say(f"{group} ...")
            if group == "caching":
                results[group] = caching(Path(tmp))
            elif group == "no-bf16":
                results[group] = caching(Path(tmp), {"FTLAB_CPU_BF16": "0"}, "no-bf16")
            elif group == "training":
                results[group] = training(Path(tmp))
            else:
                results[group] = accuracy(Path(tmp))
            text = report(results)
            if args.out:
                args.out.write_text(text + "\n")
                args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(text)


if __name__ == "__main__":
    main()
