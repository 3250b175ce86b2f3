"""The frozen-prefix feature cache: run frozen blocks once per image, not once per epoch.

When the first k blocks of a model are frozen and run in eval mode, and the images are not
randomly augmented, block k-1's output is a fixed function of each image: computing it
once and training blocks k.. on the stored tensors gives the same logits, loss and
gradients as running the whole model every epoch, at a fraction of the cost. Entries are
kept per process and keyed by everything that determines them, so a second run on the
same data and backbone (another freeze strategy, another learning rate) reuses them.
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ftlab.errors import StopRequested


def free_memory_bytes() -> int | None:
    """Physical memory free now, or None where the OS does not say."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_budget_bytes() -> int:
    """A quarter of the memory free now, at most 8 GiB (2 GiB where free memory is unknown)."""
    free = free_memory_bytes()
    return 2 << 30 if free is None else int(min(free // 4, 8 << 30))


@dataclass(frozen=True)
class CacheKey:
    """Everything that determines a cached tensor: two keys are equal only when their tensors are."""

    backbone: str
    weights: str  # `Weights.identity`: imagenet, the seed of random weights, a file's content hash
    boundary: str  # the first block that is NOT cached (it reads the cached tensors)
    inputs: str  # `Preprocess.identity`: resize, crop, mean, std, every augmentation op and its strength
    dataset: str  # `ftlab.data.identity`: the data set's files or generating options
    split: str
    indices: str  # digest of the dataset indices, in order
    view: int  # 0: the image as decoded; v > 0: the v-th augmented view


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def digest(indices: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]


class FeatureCache:
    """Tensors by key within a memory budget; the least recently used go first."""

    def __init__(self, budget_bytes: int | None = None):
        self.budget = default_budget_bytes() if budget_bytes is None else budget_bytes
        self._entries: OrderedDict[CacheKey, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.peak_bytes = 0

    def _used(self) -> int:
        return sum(_nbytes(t) for t in self._entries.values())

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return self._used()

    def get(self, key: CacheKey) -> torch.Tensor | None:
        with self._lock:
            tensor = self._entries.get(key)
            if tensor is not None:
                self._entries.move_to_end(key)
            return tensor

    def fits(self, nbytes: int, budget: int | None = None) -> bool:
        return nbytes <= (self.budget if budget is None else budget)

    def put(self, key: CacheKey, tensor: torch.Tensor, budget: int | None = None) -> None:
        """Keep ``tensor``, dropping the least recently used entries until all fit in ``budget``
        (a run's own; default the cache's)."""
        budget = self.budget if budget is None else budget
        with self._lock:
            self._entries.pop(key, None)
            while self._entries and self._used() + _nbytes(tensor) > budget:
                self._entries.popitem(last=False)
            self._entries[key] = tensor
            self.peak_bytes = max(self.peak_bytes, self._used())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.peak_bytes = 0


# One per process: runs in the app's threads and in the benchmark share it.
SHARED = FeatureCache()


@torch.no_grad()
def compute(prefix: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
            prep: Callable[[torch.Tensor], torch.Tensor], *, batch_size: int, dtype: torch.dtype,
            should_stop: Callable[[], bool] = lambda: False) -> torch.Tensor:
    """``prefix`` over every image, stored on the CPU in ``dtype``. ``prefix`` is the frozen
    blocks as `ftlab.fastpath.accelerate` built them (in the run's precision), or a module."""
    if isinstance(prefix, nn.Module):
        # channels-last convolutions measured 1.6x faster for EfficientNet-Lite0's forward pass on
        # a 2-core CPU (4.2 s against 6.8 s for 64 images at 224 px); training steps showed no
        # steady gain, so only this inference pass uses them
        prefix.eval().to(memory_format=torch.channels_last)
    out = []
    for start in range(0, len(images), batch_size):
        if should_stop():
            raise StopRequested("caching", start // batch_size + 1)
        x = prep(images[start:start + batch_size])
        x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
        out.append(prefix(x).to("cpu", dtype).contiguous())
    features = torch.cat(out)
    # page-locked on a CUDA machine, so each batch's copy to the GPU overlaps the compute
    return features.pin_memory() if out and x.device.type == "cuda" else features


def storage_dtype(bytes_fp32: int, budget: int, free_bytes: int | None,
                  computed: torch.dtype = torch.float32) -> torch.dtype | None:
    """The dtype to keep features in that take ``bytes_fp32`` in fp32 and were computed in
    ``computed``: as computed when they fit; fp32 features else in fp16 (features of pretrained
    blocks lose ~3 decimal digits, far below what changes a prediction); else ``None``:
    recompute instead. bf16/fp16 features are kept as they are (in fp32 they would take twice
    the memory and hold no more digits)."""
    room = budget if free_bytes is None else min(budget, free_bytes)
    if bytes_fp32 // 4 * computed.itemsize <= room:
        return computed
    if computed == torch.float32 and bytes_fp32 // 2 <= room:
        return torch.float16
    return None
