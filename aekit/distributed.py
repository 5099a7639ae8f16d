"""Data-parallel training on several processes: `aekit train --nproc N`, or launched by torchrun.

    aekit train DATA --out runs/x --nproc 2 --batch-size 64          # 2 processes x 32 images a step
    torchrun --nproc-per-node 4 -m aekit.cli train DATA --out runs/x --batch-size 256   # same, by torchrun
gloo on CPU, NCCL on CUDA (one GPU per process). Every rank draws the same shuffled global batch and
keeps its slice, so a step sees --batch-size images in all; DistributedDataParallel averages the
gradients and BatchNorm statistics cover the global batch; rank 0 alone validates, logs and saves.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from aekit.machine import usable_cores


class DistributedError(Exception):
    """A distributed launch that cannot work (batch size not divisible, backend missing)."""


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group when launched as one of several ranks (env WORLD_SIZE > 1); the device
    of this rank (cuda:LOCAL_RANK on GPUs)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch of all ranks, on any backend.

    torch's SyncBatchNorm runs on GPUs only; this one all-reduces (sum, sum of squares, count)
    with autograd support, so gloo on CPU trains as one process with the whole batch would.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        if not self.training or world()[1] == 1:
            return super().forward(x)
        import warnings

        from torch.distributed.nn.functional import all_reduce  # differentiable: gradients are all-reduced too

        c = x.shape[1]
        count = torch.full((1,), x.numel() / c, dtype=x.dtype, device=x.device)
        with warnings.catch_warnings():  # deprecated for _functional_collectives, which lacks this autograd
            warnings.simplefilter("ignore", FutureWarning)
            stats = all_reduce(torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), count]))  # summed over ranks
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)  # biased, as BatchNorm normalises
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked + 1)
            self.num_batches_tracked += 1
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)  # unbiased, as torch
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None] if self.affine else y


def sync_batchnorm(module: nn.Module, cuda: bool) -> nn.Module:
    """BatchNorm2d -> SyncBatchNorm (CUDA) or GlobalBatchNorm (CPU), keeping the same parameter
    objects (an optimizer built before stays valid) and the running statistics."""
    if cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if type(module) is nn.BatchNorm2d:
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, sync_batchnorm(child, cuda))
    return out


def wrap(model: nn.Module, device: torch.device, seed: int, find_unused: bool = True) -> nn.Module:
    """The module the training step calls: the model itself, or under a process group the model
    with synchronised BatchNorm (converted in place) inside DistributedDataParallel."""
    rank, size = world()
    if size == 1:
        return model
    for name, child in list(model.named_children()):
        setattr(model, name, sync_batchnorm(child, device.type == "cuda"))
    import warnings

    # 1-channel convolutions have ambiguous strides; DDP warns about it, harmlessly
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    if rank:
        torch.manual_seed(seed * 1009 + rank)  # each rank its own quantisation/denoising noise
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused)  # the rate prior trains only with --rate-weight


def shard(batches: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """This rank's slice of each global batch (every rank draws the same order and crops). A last
    batch smaller than the world size is dropped by all ranks alike, so no rank waits alone."""
    rank, size = world()
    for b in batches:
        if size == 1:
            yield b
        elif len(b) >= size:
            _step_batch[0] = len(b)
            yield np.array_split(b, size)[rank]  # equal contiguous slices (sizes differ by <= 1 at the end)


_step_batch = [0]  # images in the current global batch (set by shard)


def loss_weight(n: int) -> float:
    """Factor on this rank's mean loss over its n images so that DDP's average of the ranks'
    gradients is the gradient of the mean over the global batch, also when slices differ in size."""
    size = world()[1]
    return 1.0 if size == 1 or not _step_batch[0] else size * n / _step_batch[0]


def all_sum(*values: float) -> tuple[float, ...]:
    """Sums of per-rank values (epoch loss totals) over all ranks."""
    if world()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return tuple(float(v) for v in t.cpu())


def agree(flag: bool) -> bool:
    """Rank 0's decision (e.g. the time budget is spent) on every rank."""
    if world()[1] == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.broadcast(t, 0)
    return bool(t.item())


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ---- launcher ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check(nproc: int, batch_size: int) -> None:
    if nproc < 1:
        raise DistributedError(f"--nproc must be at least 1, got {nproc}")
    if batch_size % nproc:
        raise DistributedError(f"--batch-size {batch_size} is not divisible by --nproc {nproc}: the global "
                               f"batch is split evenly ({batch_size // nproc or 1} x {nproc} = ...)")
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed")


def _rank_main(rank: int, nproc: int, port: int, tcfg: Any, mcfg: Any, resume: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(nproc),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(nproc))
    if rank:
        sys.stderr = open(os.devnull, "w")  # rank 0 speaks for the run
    from aekit.train import train

    try:
        train(tcfg, mcfg, resume=resume)
        if dist.is_initialized():  # rank 0 finishes alone (prior refit, best.pt): tear down together, after it;
            dist.barrier()  # a rank leaving first aborted now and then ("terminate called ..." from gloo)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(nproc: int, tcfg: Any, mcfg: Any, resume: bool = False) -> dict[str, Any]:
    """Train with nproc processes on this machine (torch.multiprocessing spawn); the summary of
    rank 0's run (read back from best.pt)."""
    import dataclasses
    from pathlib import Path

    import torch.multiprocessing as mp

    from aekit.checkpoint import load_checkpoint

    check(nproc, tcfg.batch_size)
    if tcfg.threads <= 0:  # share the cores instead of oversubscribing them
        tcfg = dataclasses.replace(tcfg, threads=max(1, usable_cores() // nproc))
    mp.spawn(_rank_main, args=(nproc, free_port(), tcfg, mcfg, resume), nprocs=nproc, join=True)
    return load_checkpoint(Path(tcfg.out) / "best.pt")["summary"]
