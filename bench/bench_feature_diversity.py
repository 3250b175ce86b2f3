"""How long the feature-space figures of a data set take from a cold start, and where the duplicate
threshold comes from.

    python bench/bench_feature_diversity.py                      # Lite0 (ImageNet) on ants/bees at 224 px
    python bench/bench_feature_diversity.py --threshold-report   # planted copies: what each kind scores
    python bench/bench_feature_diversity.py --backbone resnet18 --dataset digits --no-tsne

The default run uses a fresh FTLAB_HOME (no features on disk): it loads and decodes the train and
val photos of ../shared/data/hymenoptera, runs the backbone's forward pass once, and computes every
figure (`ftlab.features.figures`: Vendi scores, near-duplicates, spreads, nearest class pairs) and
the PCA map; then the same again warm (the features from the disk). It prints the seconds of each
phase and the total against the 20 s target.

``--threshold-report`` copies the photos into a temporary folder and plants copies of some of them:
exact copies in val, halved-and-re-encoded JPEGs (quality 60) in train, and 90% centre crops re-encoded
(quality 75) in val, which the threshold does not promise to find; it prints the lowest similarity of
each kind of planted copy, the highest of any two distinct photos, and which pairs the threshold finds
(of the exact and resized copies, which it must all find, and of the crops).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera"
if not HYMENOPTERA.is_dir():  # a worktree beside the main checkout: the shared folder one level up
    HYMENOPTERA = ROOT.parents[1] / "shared" / "data" / "hymenoptera"


def plant(source: Path, dest: Path, per_kind: int = 6, seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """A copy of the class folders of ``source`` (train/ and val/) in ``dest`` with planted copies of
    ``per_kind`` training photos of each kind; returns kind -> [(copy, original)] as paths under ``dest``."""
    import random

    from PIL import Image

    shutil.copytree(source, dest)
    rng = random.Random(seed)
    originals = sorted(p for p in (dest / "train").rglob("*.jpg"))
    picked = rng.sample(originals, 3 * per_kind)
    planted: dict[str, list[tuple[str, str]]] = {"exact": [], "resized": [], "cropped": []}
    for n, original in enumerate(picked):
        kind = ("exact", "resized", "cropped")[n // per_kind]
        split = "train" if kind == "resized" else "val"
        copy = dest / split / original.parent.name / f"planted_{kind}_{original.name}"
        if kind == "exact":
            shutil.copyfile(original, copy)
        else:
            with Image.open(original) as im:
                im = im.convert("RGB")
                w, h = im.size
                if kind == "resized":
                    im.resize((max(1, w // 2), max(1, h // 2)), Image.BICUBIC).save(copy, quality=60)
                else:
                    im.crop((w // 20, h // 20, w - w // 20, h - h // 20)).save(copy, quality=75)
        planted[kind].append((str(copy), str(original)))
    return planted


def cold_start(args: argparse.Namespace) -> None:
    from ftlab import feature_diversity as fd, features
    from ftlab.config import TrainConfig

    config = TrainConfig(dataset=args.dataset, backbone=args.backbone, image_size=args.size)
    began, cpu = time.perf_counter(), time.process_time()
    report, embedded = features.figures(config, say=lambda m: print(m, file=sys.stderr))
    t_figures = time.perf_counter()
    _, labels, vectors = embedded.train()
    fd.feature_map(vectors, "pca")
    t_map = time.perf_counter() - t_figures
    total, cpu = time.perf_counter() - began, time.process_time() - cpu
    split = {**report.seconds, "pca map": t_map}
    loading = total - sum(split.values())
    print(f"{report.dataset}: {report.train_images} train images, Vendi {report.vendi:.1f} "
          f"({', '.join(f'{c.name} {c.vendi:.1f}' for c in report.classes)}), "
          f"{report.within_count} near-duplicate pairs within train, {report.across_count} across splits")
    print(f"cold start {total:.1f} s (target 20 s), {cpu:.1f} CPU-seconds of this process: load and split "
          f"{loading:.1f} s, " + ", ".join(f"{k} {v:.1f} s" for k, v in split.items()))
    began = time.perf_counter()
    features.figures(config)
    print(f"warm (features from disk) {time.perf_counter() - began:.2f} s")
    if args.no_tsne:
        return
    began = time.perf_counter()
    fd.feature_map(vectors, "tsne")
    print(f"t-SNE map of the {len(vectors)} training images {time.perf_counter() - began:.1f} s")


def threshold_report(args: argparse.Namespace) -> None:
    import numpy as np

    from ftlab import data, feature_diversity as fd, features
    from ftlab.config import TrainConfig

    dest = Path(tempfile.mkdtemp(prefix="bench-planted-")) / "planted"
    planted = plant(Path(args.dataset), dest)
    config = TrainConfig(dataset=str(dest), backbone=args.backbone, image_size=args.size)
    ds = data.load_for(config)
    report, embedded = features.figures(config, ds, say=lambda m: print(m, file=sys.stderr))
    index = {f: i for i, f in enumerate(ds._files)}
    z = fd.normalised(fd.centred(embedded.vectors))  # as `ftlab.feature_diversity.duplicate_pairs` compares them
    row = {int(i): r for r, i in enumerate(embedded.indices)}
    copies = {index[c] for pairs in planted.values() for c, _ in pairs}
    for kind, pairs in planted.items():
        sims = [float(z[row[index[c]]] @ z[row[index[o]]]) for c, o in pairs]
        print(f"{kind:>8} copies: similarity to their original {min(sims):.4f} (lowest) to {max(sims):.4f}")
    distinct = np.array([r for i, r in row.items() if i not in copies])
    sims = z[distinct] @ z[distinct].T
    np.fill_diagonal(sims, -1)
    top = np.sort(sims[np.triu_indices(len(distinct), 1)])[::-1][:5]
    print(f"distinct photos: the five highest similarities {', '.join(f'{s:.4f}' for s in top)}")
    found = {frozenset((p.index_a, p.index_b)) for p in report.within + report.across}
    promised = {frozenset((index[c], index[o])) for kind in ("exact", "resized") for c, o in planted[kind]}
    crops = {frozenset((index[c], index[o])) for c, o in planted["cropped"]}
    print(f"at {report.threshold}: {len(found & promised)} of {len(promised)} exact and resized copies found, "
          f"{len(found & crops)} of {len(crops)} crops, {len(found - promised - crops)} other pairs")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default=str(HYMENOPTERA))
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--threshold-report", action="store_true")
    p.add_argument("--no-tsne", action="store_true", help="leave out the t-SNE map's timing")
    args = p.parse_args()
    os.environ["FTLAB_HOME"] = tempfile.mkdtemp(prefix="bench-feature-diversity-")
    os.environ.setdefault("FTLAB_OFFLINE", "1")
    (threshold_report if args.threshold_report else cold_start)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
