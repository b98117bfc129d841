"""Multi-process training with torch.distributed, the same code path for 1 and N processes.

Launched by ``torchrun`` (``python -m icd_pipeline.misc.launch --nproc N MODULE ...`` does it for
the Snakemake rules), every process reads RANK / WORLD_SIZE / LOCAL_RANK from the environment:
NCCL and one GPU per process when CUDA is present, gloo on CPU (how the tests run it). Without
those variables everything here is a no-op and training runs as a single process.

The global batch is what the config says; each of the N processes takes ``batch_size / N`` of
it. DistributedSampler with ``drop_last`` makes the union of the N local batches of iteration i
exactly the global batch i of a single-process run with the same seed, so losses that are means
over the batch (ICD's are all sums divided by N) give the same gradients once DDP averages them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class DistContext:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group torchrun set up (if any). ``device`` is the single-process choice
    (``misc.runtime.select_device``); under torchrun on CUDA each process takes GPU LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible: "
                               "launch at most one process per GPU")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(world_size=world, rank=rank, local_rank=local_rank, device=device)


def cleanup(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def local_batch_size(global_batch: int, ctx: DistContext, key: str) -> int:
    if global_batch % ctx.world_size:
        raise ValueError(f"{key}={global_batch} is not divisible by the {ctx.world_size} training processes: "
                         "the global batch is split evenly between them")
    return global_batch // ctx.world_size


def sampler(dataset, ctx: DistContext, seed: int, epoch: int) -> torch.utils.data.DistributedSampler:
    """Shuffled order seeded by (seed, epoch); with one process it is RandomSampler's order for a
    generator seeded with ``seed + epoch``."""
    s = torch.utils.data.DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                            seed=seed, drop_last=True)
    s.set_epoch(epoch)
    return s


def _multi_process() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over processes (in place and returned; no gradient); a no-op in a single process."""
    if _multi_process():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_cat(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate equally shaped tensors of every process along dim 0 (rank order)."""
    if not ctx.distributed:
        return t
    parts = [torch.empty_like(t) for _ in range(ctx.world_size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes with a gradient: each process's input affects every process's output,
    so the incoming gradients are summed too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        g = grad.clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        return g


class DistributedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch, through a
    differentiable all-reduce that works with gloo on CPU as well (torch's SyncBatchNorm is
    GPU-only). Same parameters and buffers as BatchNorm2d, so checkpoints are interchangeable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _multi_process()):
            return super().forward(x)
        xf = x.float()
        n = torch.tensor([x.shape[0] * x.shape[2] * x.shape[3]], dtype=torch.float32, device=x.device)
        stats = _AllReduceSum.apply(torch.cat([xf.sum(dim=(0, 2, 3)), (xf * xf).sum(dim=(0, 2, 3)), n]))
        C = x.shape[1]
        count = stats[-1]
        mean = stats[:C] / count
        var = (stats[C:2 * C] / count - mean * mean).clamp(min=0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * unbiased.detach())
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm2d for DistributedBatchNorm2d in place (parameters, buffers and
    train/eval state kept), so BN layers that train see global-batch statistics."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = DistributedBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                         child.track_running_stats).to(next(iter(child.buffers())).device)
            new.load_state_dict(child.state_dict())
            for p_new, p_old in zip(new.parameters(), child.parameters()):
                p_new.requires_grad_(p_old.requires_grad)
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_sync_batchnorm(child)
    return module


def wrap_ddp(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DistributedDataParallel over ``model`` when distributed, else ``model`` itself."""
    if not ctx.distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


__all__ = ["DistContext", "init_distributed", "cleanup", "local_batch_size", "sampler", "all_reduce_sum",
           "all_gather_cat", "DistributedBatchNorm2d", "convert_sync_batchnorm", "wrap_ddp"]
