"""How long the layer-wise probe takes, phase by phase, and what it finds.

    python bench/bench_probe.py                                  # Lite0 (ImageNet) on ants/bees at 224 px
    python bench/bench_probe.py --precision fp32                 # the forward pass in fp32
    python bench/bench_probe.py --backbone resnet18 --size 160 --per-class 2,5,all

It runs `ftlab.probe.run_probe` once, in this process, on the shared ants/bees photos
(../shared/data/hymenoptera beside the repository; give --dataset for another), with FTLAB_HOME
in a fresh temporary folder unless --keep-home: so ``--precision auto`` measures fp32 against bf16
as a first use on a machine does. It prints the seconds of each phase (decode: loading and
decoding the images; forward: building the checked fast forward pass, with auto's measurement,
and running it over train+val; fits: one logistic regression per boundary; efficiency: the
data-efficiency fits), the total, and the accuracies.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default=str(HYMENOPTERA))
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--per-class", default="2,5,10,20,all")
    p.add_argument("--keep-home", action="store_true", help="use FTLAB_HOME as it is (auto's earlier measurement)")
    args = p.parse_args()
    if not args.keep_home:
        os.environ["FTLAB_HOME"] = tempfile.mkdtemp(prefix="bench-probe-")
    os.environ.setdefault("FTLAB_OFFLINE", "1")
    began = time.perf_counter()
    import torch

    from ftlab.config import TrainConfig
    from ftlab.probe import ProbeOptions, run_probe

    imported = time.perf_counter() - began
    config = TrainConfig(dataset=args.dataset, backbone=args.backbone, weights=args.weights, image_size=args.size,
                         precision=args.precision)
    began = time.perf_counter()
    result = run_probe(config, ProbeOptions(per_class=args.per_class),
                       say=lambda m: print(f"[{time.perf_counter() - began:6.1f} s] {m}", file=sys.stderr))
    total = time.perf_counter() - began
    print("\n".join(result.lines()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; imports {imported:.1f} s (not counted)")
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()) + f"; total {total:.1f}")
    print(result.forward)
    return 0


if __name__ == "__main__":
    sys.exit(main())
