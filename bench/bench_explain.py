"""How long the class activation maps of one image take (Grad-CAM for two classes and EigenCAM).

    python bench/bench_explain.py                       # EfficientNet-Lite0, ImageNet weights, 224 px
    python bench/bench_explain.py --backbone resnet18 --size 160 --repeat 20

It builds the backbone with its ImageNet weights and a fresh 2-class head as a checkpoint (what a
kept run holds), loads it the way `ftlab.explain.Explainer.for_run` does, and times
`Explainer.explain` on one photo-sized image: the first call (one-time set-up of grad-cam, OpenCV
and the kernels) and then the median of ``--repeat`` calls, with the machine's load average (the
machine may be shared: note it beside the figure), and a plain prediction of the image for scale. The model's loading is timed apart.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeat", type=int, default=10)
    args = p.parse_args()
    os.environ.setdefault("FTLAB_OFFLINE", "1")
    import numpy as np
    import torch

    from ftlab import backbones, checkpoints, explain
    from ftlab.config import TrainConfig
    from ftlab.transforms import Preprocessing

    start = time.perf_counter()
    model = backbones.create_model(args.backbone, 2, "imagenet", image_size=args.size)
    checkpoint = checkpoints.build(model, TrainConfig(backbone=args.backbone, image_size=args.size), ("a", "b"),
                                   Preprocessing.for_backbone(args.backbone, args.size), 1, 0.5)
    explainer = explain.Explainer(checkpoint)
    load = time.perf_counter() - start
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    pixels = explainer.pixels(__import__("PIL.Image", fromlist=["Image"]).fromarray(image))
    first = explainer.explain(pixels, true=1).seconds
    times = [explainer.explain(pixels, true=1).seconds for _ in range(args.repeat)]
    # a plain prediction of the same image, for scale: the maps cost about one forward pass more
    forward = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        explainer.predictor.probabilities(pixels[None])
        forward.append(time.perf_counter() - t)
    print(f"{args.backbone} at {args.size} px, {torch.get_num_threads()} torch threads, target block "
          f"{explainer.block}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    print(f"model built and loaded: {load:.2f} s; first map: {first:.3f} s; then median {statistics.median(times):.3f} s "
          f"(min {min(times):.3f}, max {max(times):.3f}) over {args.repeat}; a prediction alone: median "
          f"{statistics.median(forward):.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
