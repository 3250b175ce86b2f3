"""Run by tests/test_ddp.py under ``torchrun --nproc-per-node 2``: synced BatchNorm on two ranks, each
with half of a batch, against plain BatchNorm on the whole batch in one process. Rank 0 prints the
largest differences as JSON."""
import json
import sys

import torch
import torch.distributed as dist
from torch import nn

from ftlab import distributed


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    x = torch.randn(12, 5, 6, 6) * 3 + 1
    up = torch.randn(12, 5, 6, 6)  # a fixed upstream gradient: the loss is sum(y * up)
    kind = sys.argv[1] if len(sys.argv) > 1 else "torch"
    if kind == "timm":
        from timm.layers import BatchNormAct2d
        make = lambda: BatchNormAct2d(5, act_layer=nn.ReLU)  # noqa: E731
    else:
        make = lambda: nn.BatchNorm2d(5)  # noqa: E731
    plain, synced = make(), make()
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
        plain.bias.uniform_(-0.5, 0.5)
    synced.load_state_dict(plain.state_dict())
    distributed.sync_batchnorm(synced)

    whole = x.clone().requires_grad_()
    y = plain(whole)
    (y * up).sum().backward()

    half = x[rank * 6:(rank + 1) * 6].clone().requires_grad_()
    with distributed.syncing():
        ys = synced(half)
    (ys * up[rank * 6:(rank + 1) * 6]).sum().backward()
    grads = [half.grad, synced.weight.grad, synced.bias.grad]
    for g in grads[1:]:
        dist.all_reduce(g)  # the sum over the ranks' halves, as DDP would (before its division by the ranks)
    pieces = [torch.empty_like(ys) for _ in range(2)]
    dist.all_gather(pieces, ys.detach())
    dx = [torch.empty_like(half.grad) for _ in range(2)]
    dist.all_gather(dx, half.grad)
    if rank == 0:
        print(json.dumps({
            "output": float((torch.cat(pieces) - y.detach()).abs().max()),
            "input_grad": float((torch.cat(dx) - whole.grad).abs().max()),
            "weight_grad": float((grads[1] - plain.weight.grad).abs().max()),
            "bias_grad": float((grads[2] - plain.bias.grad).abs().max()),
            "running_mean": float((synced.running_mean - plain.running_mean).abs().max()),
            "running_var": float((synced.running_var - plain.running_var).abs().max()),
            "moved": float((synced.running_mean - torch.zeros(5)).abs().max()),
        }))
    dist.barrier()  # both ranks leave together: a rank that tears down its pairs first can abort the other in gloo
    dist.destroy_process_group()


if __name__ == "__main__":  # torchrun runs it; pytest's collection only imports it
    main()
