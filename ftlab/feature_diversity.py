"""How the images of a data set spread in a backbone's feature space: pure functions over pooled features.

`ftlab.diversity` counts classes; this module looks at the images themselves, as a frozen pretrained
backbone sees them (``ftlab.features`` computes and caches the features; nothing here imports torch):

- the **Vendi score** (Friedman & Dieng 2023): ``exp`` of the Shannon entropy of the eigenvalues of
  ``K / n``, ``K`` the cosine-similarity matrix of the ``n`` images. It is an effective number of
  distinct images: ``n`` identical images score 1, ``k`` mutually orthogonal ones score ``k``;
- **near-duplicates**: pairs whose cosine similarity, of their features less the set's mean (`centred`),
  is at least `DUPLICATE_THRESHOLD`, within the training split and across splits (a validation image
  that nearly copies a training image is scored on what the model memorised, which inflates
  validation accuracy);
- each class's **spread** (mean distance of its L2-normalised features to their centroid) and the
  **nearest class pairs** (how often an image's nearest neighbour is of the other class);
- a 2-D **map** (PCA, or t-SNE) of the training images.

Why the threshold is 0.75 (measured with ``bench/bench_feature_diversity.py --threshold-report``:
EfficientNet-Lite0, ImageNet weights, features at 128 px, `ftlab.features.FEATURE_SIZE` says why):
among the 398 photos of ants/bees the most alike two distinct photos scored 0.691 (centred); copies of
12 of its photos planted among them scored 1.000 (exact copies) and 0.831 to 0.989 (halved in size and
re-encoded as JPEG at quality 60). 0.75 lies between the two groups: every planted copy is found, no
pair of distinct photos. A copy cropped to its centre 90% is another picture to the backbone: such
crops scored 0.779 to 0.842 among all the photos (the six found), but one scored 0.719 among 43 of
them (the centring follows the set): crops are found often, not always. On the generated sets 0.75 flags what is nearly the same picture: 124
pairs among the 480 shapes and 2,454 among the 1,797 digits (8 x 8 pixels of 17 grey levels: many are
near-identical), which the Data page lists.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ftlab.diversity import Suggestion

DUPLICATE_THRESHOLD = 0.75  # cosine similarity of centred pooled features; see the module's docstring
MAX_PAIRS = 200  # pairs listed per kind: a folder of copies should not fill a page (the count stays exact)
_CHUNK = 2048  # rows of the similarity matrix at once: 2048 x 50,000 fp32 is 400 MB
# suggestions: a class whose share of distinct images is below this fraction of the others' median
LOW_VENDI_SHARE = 0.6
# suggestions: two classes overlap when more than this share of their images has its nearest neighbour in the other
OVERLAP_MIXED = 0.2
MAP_METHODS = ("pca", "tsne")


# --- the figures ------------------------------------------------------------------------

def normalised(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), in float64.

    >>> normalised(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
    [[0.6, 0.8], [0.0, 0.0]]
    """
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def vendi_score(x: np.ndarray) -> float:
    """The Vendi score of the rows of ``x`` under cosine similarity: exp(-sum l log l) over the
    eigenvalues l of K / n, K = X X^T of the L2-normalised rows (the eigenvalues sum to 1). The
    nonzero eigenvalues of X X^T / n are those of X^T X / n, so the smaller of the two is
    decomposed: (d, d) for many images, (n, n) for few.

    >>> round(vendi_score(np.ones((5, 3))), 9)  # five identical images
    1.0
    >>> round(vendi_score(np.eye(4)), 6)  # four orthogonal ones
    4.0
    """
    z = normalised(x)
    n = len(z)
    if n == 0:
        return 0.0
    gram = z.T @ z if z.shape[1] < n else z @ z.T
    eig = np.clip(np.linalg.eigvalsh(gram / n), 0.0, None)
    eig = eig[eig > 1e-12]
    return float(np.exp(-(eig * np.log(eig)).sum()))


@dataclass(frozen=True)
class Pair:
    """Two images (dataset indices) whose features are nearly the same."""

    split_a: str
    index_a: int
    split_b: str
    index_b: int
    similarity: float


def similar_pairs(a: np.ndarray, b: np.ndarray | None = None, threshold: float = DUPLICATE_THRESHOLD
                  ) -> list[tuple[int, int, float]]:
    """(i, j, cosine similarity) of every row i of ``a`` and j of ``b`` at least ``threshold`` alike;
    without ``b``, the pairs i < j within ``a``. Most similar first; computed in row chunks so a
    large split never holds its whole similarity matrix.

    >>> similar_pairs(np.array([[1.0, 0], [2.0, 0], [0, 1.0]]))
    [(0, 1, 1.0)]
    >>> similar_pairs(np.array([[0, 1.0]]), np.array([[1.0, 0], [0, 3.0]]))
    [(0, 1, 1.0)]
    """
    za = normalised(a).astype(np.float32)
    zb = za if b is None else normalised(b).astype(np.float32)
    found = []
    for start in range(0, len(za), _CHUNK):
        sims = za[start:start + _CHUNK] @ zb.T
        if b is None:  # each unordered pair once, never an image with itself
            sims = np.where(np.arange(len(zb))[None, :] > np.arange(start, start + len(sims))[:, None], sims, -2.0)
        rows, cols = np.nonzero(sims >= threshold)
        found += [(int(start + r), int(c), float(min(sims[r, c], 1.0))) for r, c in zip(rows, cols)]
    return sorted(found, key=lambda p: (-p[2], p[0], p[1]))


def class_spread(z: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(centroids (K, d), spreads (K,)): each class's mean normalised feature and the mean Euclidean
    distance of its images to it (0 for a class of one image, nan for an empty class).

    >>> c, s = class_spread(np.array([[1.0, 0], [0, 1.0], [1.0, 0]]), np.array([0, 0, 1]), 2)
    >>> c.tolist(), [round(v, 6) for v in s.tolist()]
    ([[0.5, 0.5], [1.0, 0.0]], [0.707107, 0.0])
    """
    z = normalised(z)
    centroids = np.full((num_classes, z.shape[1]), np.nan)
    spreads = np.full(num_classes, np.nan)
    for k in range(num_classes):
        members = z[labels == k]
        if len(members):
            centroids[k] = members.mean(0)
            spreads[k] = np.linalg.norm(members - centroids[k], axis=1).mean()
    return centroids, spreads


def nearest_neighbours(z: np.ndarray) -> np.ndarray:
    """For each row, the index of the most cosine-similar other row (chunked like `similar_pairs`).

    >>> nearest_neighbours(np.array([[1.0, 0], [0.9, 0.1], [0, 1.0]])).tolist()
    [1, 0, 1]
    """
    z = normalised(z).astype(np.float32)
    out = np.zeros(len(z), dtype=np.int64)
    for start in range(0, len(z), _CHUNK):
        sims = z[start:start + _CHUNK] @ z.T
        sims[np.arange(len(sims)), np.arange(start, start + len(sims))] = -np.inf
        out[start:start + len(sims)] = sims.argmax(1)
    return out


@dataclass(frozen=True)
class ClassPair:
    """Two classes near each other in feature space."""

    a: str
    b: str
    mixed: float  # of the images of a and b, the share whose nearest other image is of the other class
    distance: float  # between their centroids (of normalised features)


def nearest_class_pairs(z: np.ndarray, labels: np.ndarray, centroids: np.ndarray, classes: Sequence[str],
                        top: int = 5) -> list[ClassPair]:
    """The ``top`` pairs of classes whose images are most often each other's nearest neighbour: the
    feature-space counterpart of a confusion matrix's most confused pairs (a 1-nearest-neighbour
    classifier's, leave-one-out). A centroid distance alone misleads in 1,280 dimensions: ants and
    bees lie 0.40 apart with spreads of 0.78, yet a linear probe separates 93% of them.

    >>> z = np.array([[1.0, 0, 0], [0.9, 0.1, 0], [0.8, 0.2, 0], [0, 0, 1.0], [0, 0.1, 1.0]])
    >>> c, _ = class_spread(z, np.array([0, 0, 1, 2, 2]), 3)
    >>> [(p.a, p.b, round(p.mixed, 3)) for p in nearest_class_pairs(z, np.array([0, 0, 1, 2, 2]), c, "xyz", 2)]
    [('x', 'y', 0.333), ('y', 'z', 0.0)]
    """
    if len(z) < 2:
        return []
    neighbour = labels[nearest_neighbours(z)]
    counts = np.bincount(labels, minlength=len(classes))
    out = []
    for i in range(len(classes)):
        for j in range(i + 1, len(classes)):
            if not counts[i] or not counts[j]:
                continue
            crossed = np.sum((labels == i) & (neighbour == j)) + np.sum((labels == j) & (neighbour == i))
            out.append(ClassPair(classes[i], classes[j], float(crossed / (counts[i] + counts[j])),
                                 float(np.linalg.norm(centroids[i] - centroids[j]))))
    return sorted(out, key=lambda p: (-p.mixed, p.distance))[:top]


def feature_map(x: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """A 2-D map (n, 2) of the normalised rows of ``x``: PCA (scikit-learn), or t-SNE (on the first
    50 principal components, as its authors advise; perplexity at most a third of the images)."""
    from sklearn.decomposition import PCA

    if method not in MAP_METHODS:
        raise ValueError(f"map method must be one of {', '.join(MAP_METHODS)} (got {method!r})")
    z = normalised(x)
    if len(z) < 3:
        return np.zeros((len(z), 2))
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(z)
    from sklearn.manifold import TSNE

    reduced = PCA(n_components=min(50, *z.shape), random_state=seed).fit_transform(z)
    perplexity = float(min(30.0, (len(z) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)


# --- the whole report -------------------------------------------------------------------

@dataclass(frozen=True)
class ClassFigures:
    name: str
    images: int  # in the training split
    vendi: float  # the effective number of distinct images of the class
    share: float  # vendi / images: 1 when every image differs, 1/images when all are the same
    spread: float  # the mean distance of the class's normalised features to their centroid


@dataclass(frozen=True)
class FeatureReport:
    """Every feature-space figure of a data set's split, as `ftlab.features.report` computes it."""

    dataset: str
    backbone: str
    weights: str  # in words
    image_size: int
    threshold: float
    train_images: int
    vendi: float  # of the whole training split
    share: float  # vendi / train_images
    classes: tuple[ClassFigures, ...]
    within: tuple[Pair, ...]  # near-duplicates within the training split (at most MAX_PAIRS)
    across: tuple[Pair, ...]  # a val or test image and a training image (at most MAX_PAIRS)
    within_count: int  # how many there are in all
    across_count: int
    drop_train: int  # training images ``drop_duplicates`` leaves out (`to_drop`)
    drop_held: int  # validation and test images it leaves out
    nearest: tuple[ClassPair, ...]
    seconds: dict = field(default_factory=dict)  # decode, forward, figures
    computed: int = 0  # images whose features were computed now (the rest came from the disk cache)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["per_class_vendi"] = {c.name: c.vendi for c in self.classes}
        return out


def centred(x: np.ndarray) -> np.ndarray:
    """The rows less their mean, so that a cosine similarity measures what two images share beyond what
    every image of the set shares (as copy detection does: Pizzi et al. 2022 centre and whiten). Raw
    cosines of a set's features are inflated by that common part: digits' white paper and black ink
    put 20,837 pairs of distinct digits above 0.85, their centred features 239.

    >>> centred(np.array([[1.0, 2.0], [3.0, 2.0]])).tolist()
    [[-1.0, 0.0], [1.0, 0.0]]
    """
    x = np.asarray(x, dtype=np.float64)
    return x - x.mean(0) if len(x) else x


def duplicate_pairs(z: np.ndarray, labels_split: np.ndarray, indices: np.ndarray,
                    threshold: float = DUPLICATE_THRESHOLD) -> tuple[list[Pair], list[Pair]]:
    """(within the training split, across splits) near-duplicate pairs of the features ``z``, whose
    rows are the dataset items ``indices`` of the splits ``labels_split`` ("train", "val", "test"):
    the cosine similarity of their `centred` features at least ``threshold``. An across pair names the
    held-out image first and the training image second."""
    z = centred(z)
    train = np.flatnonzero(labels_split == "train")
    within = [Pair("train", int(indices[train[i]]), "train", int(indices[train[j]]), s)
              for i, j, s in similar_pairs(z[train], None, threshold)]
    across = []
    for name in ("val", "test"):
        held = np.flatnonzero(labels_split == name)
        if len(held) and len(train):
            across += [Pair(name, int(indices[held[i]]), "train", int(indices[train[j]]), s)
                       for i, j, s in similar_pairs(z[held], z[train], threshold)]
    return within, sorted(across, key=lambda p: -p.similarity)


def to_drop(within: Sequence[Pair], across: Sequence[Pair]) -> tuple[set[int], set[int]]:
    """(training items, held-out items) to leave out so no near-duplicate is left: every held-out
    image that nearly copies a training image, and of each group of training images that nearly
    copy each other all but the first (the lowest index), so the group still trains once.

    >>> train, held = to_drop([Pair("train", 1, "train", 5, 0.99), Pair("train", 5, "train", 9, 0.98)],
    ...                       [Pair("val", 20, "train", 1, 0.97)])
    >>> sorted(train), sorted(held)
    ([5, 9], [20])
    """
    parent: dict[int, int] = {}

    def root(i: int) -> int:
        while parent.setdefault(i, i) != i:
            i = parent[i]
        return i

    for p in within:
        a, b = root(p.index_a), root(p.index_b)
        parent[max(a, b)] = min(a, b)
    train = {i for i in parent if root(i) != i}
    return train, {p.index_a for p in across}


def build_report(z: np.ndarray, labels: np.ndarray, splits: np.ndarray, indices: np.ndarray,
                 classes: Sequence[str], *, dataset: str, backbone: str, weights: str, image_size: int,
                 threshold: float = DUPLICATE_THRESHOLD) -> FeatureReport:
    """Every figure from the features ``z`` of the items ``indices`` (labels and split names per row)."""
    train = splits == "train"
    zt, yt = z[train], labels[train]
    centroids, spreads = class_spread(zt, yt, len(classes))
    per_class = []
    for k, name in enumerate(classes):
        members = zt[yt == k]
        v = vendi_score(members) if len(members) else 0.0
        per_class.append(ClassFigures(name, len(members), v, v / len(members) if len(members) else 0.0,
                                      float(spreads[k]) if len(members) else 0.0))
    within, across = duplicate_pairs(z, splits, indices, threshold)
    drop_train, drop_held = to_drop(within, across)
    vendi = vendi_score(zt)
    return FeatureReport(dataset, backbone, weights, image_size, threshold, int(train.sum()), vendi,
                         vendi / max(int(train.sum()), 1), tuple(per_class), tuple(within[:MAX_PAIRS]),
                         tuple(across[:MAX_PAIRS]), len(within), len(across), len(drop_train), len(drop_held),
                         tuple(nearest_class_pairs(zt, yt, centroids, classes)))


# --- what the figures suggest -----------------------------------------------------------

def suggestions(report: FeatureReport) -> list[Suggestion]:
    """What the feature-space figures suggest, each with its reasoning (applied only on request)."""
    out = []
    low = _low_vendi_classes(report.classes)
    if low:
        names = ", ".join(f"{c.name!r} ({c.vendi:.1f} distinct of {c.images}, {c.share:.0%})" for c in low)
        out.append(Suggestion(
            title="Many near-identical photos in " + ", ".join(repr(c.name) for c in low) +
                  ": collect more varied ones, or augment",
            reason=(f"The Vendi score counts how many distinct images a class holds, as the backbone sees them: "
                    f"{names}, against a median of {_median_share(report.classes, low):.0%} for the other classes. "
                    "A class of near-copies teaches one look of the class; varied photos, or random crops and "
                    "flips, show it more."),
            setting={"random_crop": True, "flip": True}))
    if report.across_count:
        out.append(Suggestion(
            title=f"Drop the {report.across_count} held-out image(s) that nearly copy a training image",
            reason=(f"{report.across_count} validation/test image(s) have a training image with cosine similarity "
                    f"at least {report.threshold:g} in feature space: the model is scored on what it saw, so the "
                    "validation accuracy reads higher than on new photos. Dropping them (and all but one of each "
                    "group of copies in training) leaves figures you can trust."),
            setting={"drop_duplicates": True}))
    if report.nearest and report.nearest[0].mixed > OVERLAP_MIXED:
        p = report.nearest[0]
        out.append(Suggestion(
            title=f"{p.a!r} and {p.b!r} overlap in the frozen features: train some blocks, not only the head",
            reason=(f"{p.mixed:.0%} of their training images have their nearest neighbour in the other class (the "
                    f"most of any pair; above {OVERLAP_MIXED:.0%}): the frozen features put many of their images "
                    "among the other class's, so a linear probe on them confuses the two; training the top blocks "
                    "lets the features move apart."),
            setting={"strategy": "top-2"}))
    return out


def _median_share(classes: Sequence[ClassFigures], leave_out: Sequence[ClassFigures]) -> float:
    others = [c.share for c in classes if c not in leave_out and c.images]
    return float(np.median(others)) if others else 0.0


def _low_vendi_classes(classes: Sequence[ClassFigures]) -> list[ClassFigures]:
    """Classes (of 4 images or more) whose share of distinct images is below `LOW_VENDI_SHARE` of the
    median share of the other classes: the share, not the score, since a score grows with the count.

    >>> cs = [ClassFigures("a", 10, 9.0, 0.9, 0.5), ClassFigures("b", 10, 8.0, 0.8, 0.5),
    ...       ClassFigures("c", 10, 2.0, 0.2, 0.1)]
    >>> [c.name for c in _low_vendi_classes(cs)]
    ['c']
    """
    out = []
    for c in classes:
        others = [o.share for o in classes if o is not c and o.images]
        if c.images >= 4 and others and c.share < LOW_VENDI_SHARE * float(np.median(others)):
            out.append(c)
    return out
