"""Wall time of the command line's quick commands, from a cold process, side by side.

    python bench/bench_startup.py                  # median of 3 per command, this checkout
    python bench/bench_startup.py --repeats 5 --against /path/to/other/checkout

Each command runs as ``python -m ftlab ...`` in a process of its own (Python's start, ftlab's
imports and the command's work: what a user waits for), with FTLAB_HOME in a temporary folder,
and the heavy libraries each one imported are named (the target: <= 1.5 s, and none of torch,
torchvision, timm for the listings and --help; tests/test_startup.py checks the imports).
``--against`` adds a column for another checkout (the same commands, its own code).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (["runs"], ["datasets"], ["backbones"], ["--help"], ["train", "--help"])
HEAVY = ("torch", "torchvision", "timm", "scipy", "sklearn")


def wall(checkout: Path, args: list[str], home: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout), "FTLAB_HOME": home}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ftlab", *args], cwd=checkout, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def heavy_imports(checkout: Path, args: list[str], home: str) -> list[str]:
    """The heavy libraries the command imported, from ``python -X importtime``."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "FTLAB_HOME": home}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "ftlab", *args], cwd=checkout, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    names = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return [h for h in HEAVY if h in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--against", type=Path, default=None, help="another checkout, measured beside this one")
    args = parser.parse_args()
    checkouts = [ROOT] + ([args.against.resolve()] if args.against else [])
    with tempfile.TemporaryDirectory() as home:
        header = f"{'command':<14}" + "".join(f"{'wall s (' + c.name + ')':>22}" for c in checkouts)
        print(header + "   heavy imports (this checkout)")
        for command in COMMANDS:
            cells = [statistics.median(wall(c, command, home) for _ in range(args.repeats)) for c in checkouts]
            heavy = ", ".join(heavy_imports(ROOT, command, home)) or "none"
            print(f"{' '.join(command):<14}" + "".join(f"{s:>22.2f}" for s in cells) + f"   {heavy}", flush=True)


if __name__ == "__main__":
    main()
