"""Data-parallel training under torchrun: the processes of one run, and what they share.

``torchrun --nproc-per-node N -m ftlab train …`` starts N copies of the CLI; torchrun tells each
its rank in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and does the rendezvous,
on one machine or several (``--nnodes``, ``--rdzv-endpoint``). This module is what ftlab adds:

- `Ranks`: which process this is; `start` joins the process group (gloo on the CPU, NCCL on CUDA)
  with a bounded timeout, so a process that dies or hangs ends the run with a message, never a hang;
- `shard_positions`: each rank's share of a split. The training split is dealt out once, in a seeded
  order, as torch's DistributedSampler deals its first epoch (padded with repeats to equal shares, so
  every rank takes the same number of steps); each rank then caches its own shard's frozen features
  and shuffles its shard every epoch. Validation and test are dealt without padding and gathered;
- `Parallel`: the model as the training loop sees it, wrapped in DistributedDataParallel (which
  all-reduces the gradients), with BatchNorm statistics summed over the ranks (`sync_batchnorm`:
  torch's SyncBatchNorm runs on CUDA only; this one is the same computation over any backend);
- `agree`, `any_rank`, `gather_rows`, `sums`, `broadcast`: the few collectives the loop needs so that
  every rank decides alike (the loss it checks, a stop, the best epoch, the precision).

One process (``WORLD_SIZE`` 1 or unset) uses none of it. Rank 0 alone writes the run store
(`Follower` stands in for the store on the others) and prints; the others print only errors.
"""
from __future__ import annotations

import datetime
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ftlab.paths import SettingError, number

TIMEOUT_S = 300.0  # a collective that waits longer than this ends the run (FTLAB_DDP_TIMEOUT_S)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def leader(self) -> bool:
        return self.rank == 0


SINGLE = Ranks()


def from_env(env: dict | None = None) -> Ranks:
    """The ranks torchrun set in the environment (one process when ``WORLD_SIZE`` is unset or 1)."""
    env = os.environ if env is None else env
    values = {}
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        raw = env.get(name, "").strip()
        if not raw:
            values[name] = default
            continue
        if not raw.isdigit():
            raise SettingError(f"{name}={raw!r} cannot be used: torchrun sets it to a whole number; start ftlab "
                               "with torchrun, or unset it for one process")
        values[name] = int(raw)
    ranks = Ranks(values["RANK"], max(values["WORLD_SIZE"], 1), values["LOCAL_RANK"])
    if ranks.rank >= ranks.world:
        raise SettingError(f"RANK={ranks.rank} is not below WORLD_SIZE={ranks.world}: start ftlab with torchrun")
    return ranks


MAX_TIMEOUT_S = 86_400.0  # a day: beyond it a wait is a hang (and timedelta overflows near 1e14 s)


def timeout_s() -> float:
    value = number("FTLAB_DDP_TIMEOUT_S", TIMEOUT_S, "seconds a process of a torchrun run waits for the others")
    if value > MAX_TIMEOUT_S:
        raise SettingError(f"FTLAB_DDP_TIMEOUT_S={value:g} cannot be used: it takes at most {MAX_TIMEOUT_S:,.0f} "
                           f"seconds (default {TIMEOUT_S:g}). Change it or unset it.")
    return value


def device_for(ranks: Ranks, device: torch.device) -> torch.device:
    """Each process its own GPU (``LOCAL_RANK``) on CUDA; the device as it is otherwise."""
    if ranks.active and device.type == "cuda":
        return torch.device("cuda", ranks.local_rank % max(torch.cuda.device_count(), 1))
    return device


def problems(ranks: Ranks, device: torch.device) -> list[str]:
    if ranks.active and device.type not in ("cpu", "cuda"):
        return [f"torchrun runs train on the CPU (gloo) or on CUDA GPUs (NCCL), not on {device.type}: "
                "add --device cpu"]
    return []


def start(ranks: Ranks, device: torch.device) -> None:
    """Join the run's process group; a collective that waits past `timeout_s` raises instead of hanging."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            timeout=datetime.timedelta(seconds=timeout_s()),
                            **({"device_id": device} if device.type == "cuda" else {}))


def end() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed_error(err: BaseException) -> bool:
    """A collective that failed: another process died, hung past the timeout, or left the group."""
    kinds = tuple(k for k in (getattr(dist, "DistError", None),) if k is not None)
    text = str(err)
    return isinstance(err, kinds) or any(s in text for s in ("Connection closed by peer", "Connection reset by peer",
                                                              "Timed out waiting", "timeout caused pair closure", "gloo",
                                                              "NCCL"))


def failure_message(err: BaseException) -> str:
    """A failed collective in words: gloo's "[…pair.cc:561] Connection closed by peer [127.0.0.1]:20707.
    This is typically…" becomes its middle sentence."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    text = text.split("] ", 1)[1] if text.startswith("[") and "] " in text else text
    text = text.split(". This is typically")[0].rstrip(".")
    return (f"another process of this torchrun run failed, was killed or stopped answering ({text}), so this one "
            f"cannot go on; the best checkpoint so far is kept. That process's own error, and torchrun's report, "
            f"are printed with this message (a process that hangs is given up on after {timeout_s():g} s: "
            "FTLAB_DDP_TIMEOUT_S)")


# --- shares of a split -------------------------------------------------------------------

def shard_positions(n: int, ranks: Ranks, *, seed: int | None = None) -> torch.Tensor:
    """Rank ``ranks.rank``'s positions in a split of ``n`` items. With ``seed`` (the training split)
    they are dealt from a seeded permutation padded with its first items to a multiple of the ranks,
    as DistributedSampler deals an epoch: equal shares. Without, every ``world``-th item from the
    rank's: the shares of val and test, each item in exactly one."""
    if seed is None:
        return torch.arange(ranks.rank, n, ranks.world)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    padded = torch.cat([order, order[:(-n) % ranks.world]]) if n else order
    return padded[ranks.rank::ranks.world]


def shard(decoded, positions: torch.Tensor):
    """A decoded split (`ftlab.data.Decoded`) cut to ``positions``."""
    p = positions.numpy()
    return replace(decoded, images=decoded.images[positions], labels=decoded.labels[positions],
                   indices=decoded.indices[p])


def local_batch(batch_size: int, ranks: Ranks) -> int:
    """Each rank's batch: the global batch dealt out (rounded up where it does not divide)."""
    return -(-batch_size // ranks.world)


# --- collectives -------------------------------------------------------------------------

def agree(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over the ranks: what every rank sees of the loss, so that all stop alike."""
    out = value.detach().float().reshape(1).clone()
    dist.all_reduce(out)
    return out[0] / dist.get_world_size()


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether any rank says yes (a Stop asked in one terminal stops them all at the same step)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def sums(values: list[float], device: torch.device) -> list[float]:
    """Each value summed over the ranks."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast(obj):
    """Rank 0's ``obj`` on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_rows(arrays: list, positions: torch.Tensor, n: int) -> list:
    """Each rank's rows of some arrays (numpy, first axis = its ``positions``) put together in the
    split's order on every rank."""
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (positions.numpy(), list(arrays)))
    out = []
    for k, first in enumerate(arrays):
        whole = np.empty((n,) + first.shape[1:], dtype=first.dtype)
        for where, rows in parts:
            whole[where] = rows[k]
        out.append(whole)
    return out


# --- BatchNorm over the ranks --------------------------------------------------------------

_syncing = threading.local()


@contextmanager
def syncing() -> Iterator[None]:
    """BatchNorm layers in train mode sum their statistics over the ranks inside this block: the
    forward pass DDP runs. Elsewhere (measuring a precision, caching, evaluating) they are local."""
    was = getattr(_syncing, "on", False)
    _syncing.on = True
    try:
        yield
    finally:
        _syncing.on = was


class _SyncedNorm(torch.autograd.Function):
    """Batch normalisation with the mean and variance of the global batch (all ranks' images), and
    its gradient: the two per-channel sums the backward pass needs are summed over the ranks too."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        dims = [0] + list(range(2, x.dim()))
        xf = x.float()
        c = x.shape[1]
        stats = torch.cat([xf.sum(dims), (xf * xf).sum(dims), xf.new_tensor([xf.numel() / c])])
        dist.all_reduce(stats)
        n = stats[2 * c]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_(min=0)
        invstd = torch.rsqrt(var + eps)
        shape = [1, c] + [1] * (x.dim() - 2)
        xhat = (xf - mean.view(shape)) * invstd.view(shape)
        y = xhat if weight is None else xhat * weight.float().view(shape) + bias.float().view(shape)
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.n, ctx.shape, ctx.dims = n, shape, dims
        unbiased = var * n / (n - 1).clamp(min=1)
        ctx.mark_non_differentiable(mean, unbiased)
        return y.to(x.dtype), mean, unbiased

    @staticmethod
    def backward(ctx, dy, _mean, _var):
        xhat, invstd, weight = ctx.saved_tensors
        shape, dims, c = ctx.shape, ctx.dims, xhat.shape[1]
        dyf = dy.float()
        dweight = (dyf * xhat).sum(dims) if weight is not None else None
        dbias = dyf.sum(dims) if weight is not None else None
        g = dyf if weight is None else dyf * weight.float().view(shape)
        both = torch.cat([g.sum(dims), (g * xhat).sum(dims)])
        dist.all_reduce(both)
        mean_g, mean_gx = both[:c] / ctx.n, both[c:] / ctx.n
        dx = (g - mean_g.view(shape) - xhat * mean_gx.view(shape)) * invstd.view(shape)
        return (dx.to(dy.dtype), None if dweight is None else dweight.to(weight.dtype),
                None if dbias is None else dbias.to(weight.dtype), None)


class _Synced:
    """Mixed in before a BatchNorm class (torch's, or timm's BatchNormAct2d with its dropout and
    activation after the norm): in train mode inside `syncing`, the global batch's statistics."""

    def forward(self, x):
        if not (self.training and getattr(_syncing, "on", False)):
            return super().forward(x)
        y, mean, var = _SyncedNorm.apply(x, self.weight, self.bias, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - f).add_(mean.to(self.running_mean.dtype), alpha=f)
                self.running_var.mul_(1 - f).add_(var.to(self.running_var.dtype), alpha=f)
        for after in ("drop", "act"):  # BatchNormAct2d's; plain BatchNorm has neither
            if isinstance(getattr(self, after, None), nn.Module):
                y = getattr(self, after)(y)
        return y


_SYNCED: dict[type, type] = {}


def sync_batchnorm(model: nn.Module) -> int:
    """Make every BatchNorm layer of ``model`` a synced one, in place (the same parameters, buffers
    and state-dict keys); returns how many."""
    count = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, _Synced):
            cls = type(m)
            m.__class__ = _SYNCED.setdefault(cls, type(f"Synced{cls.__name__}", (_Synced, cls), {}))
            count += 1
    return count


class _Replica(nn.Module):
    """What DDP wraps: ``forward(x, start)`` is the model's ``forward_from``, with BatchNorm synced;
    ``extra`` holds what the objective learns beside the model, so its gradients are all-reduced too."""

    def __init__(self, model: nn.Module, extra: list[nn.Parameter]):
        super().__init__()
        self.model = model
        self.extra = nn.ParameterList(extra)

    def forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        with syncing():
            return self.model.forward_from(x, start)


class Parallel:
    """A `BlockModel` as `ftlab.engine.train_one_epoch` sees it under DDP: ``forward_from`` goes
    through DistributedDataParallel, which all-reduces the gradients of the blocks that train. Made
    again whenever the blocks that train change (gradual unfreezing, lp-ft's switch)."""

    def __init__(self, model: nn.Module, device: torch.device, extra: list[nn.Parameter] = ()):
        from torch.nn.parallel import DistributedDataParallel

        self.module = model
        # the buffers need no broadcast before each forward pass: synced BatchNorm keeps every rank's
        # statistics equal (torch 2.15 names the option forward_sync_buffers; broadcast_buffers warns)
        self.ddp = DistributedDataParallel(_Replica(model, list(extra)), forward_sync_buffers=False,
                                           device_ids=[device] if device.type == "cuda" else None)

    def train(self, mode: bool = True) -> "Parallel":
        self.module.train(mode)
        return self

    def parameters(self):
        return self.module.parameters()

    def forward_from(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        return self.ddp(x, start)


class Follower:
    """The run store as a rank other than 0 sees it: it reads (a teacher's checkpoint, the runs that
    validation looks up) and writes nothing; rank 0 keeps the record."""

    _WRITES = frozenset({"create", "set_data", "add_epoch", "finish", "release", "save_checkpoint",
                         "mark_interrupted", "create_sweep", "finish_sweep", "delete"})

    def __init__(self, store):
        self._store = store

    def __getattr__(self, name: str):
        if name in self._WRITES:
            return lambda *args, **kwargs: None
        return getattr(self._store, name)


class Interrupted(Exception):
    """torchrun stopped this process (SIGTERM): another rank failed or was killed."""
