"""Multi-process training with ``torch.distributed`` (``torchrun``), and the single-process default.

A run started by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) joins the process group
(NCCL on CUDA, gloo on the CPU) in :func:`join`; every rank trains on its share of each epoch's
batch list, validation probabilities and batch-norm statistics are combined across ranks, and
only rank 0 writes files or reports progress. Without ``torchrun`` nothing here changes anything.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` (1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process created the group and destroys it in :func:`leave`

    @property
    def enabled(self) -> bool:
        """Whether more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (which writes files and reports)."""
        return self.rank == 0


SINGLE = DistInfo()


def env_rank() -> int:
    """This process's rank as torchrun sets it (0 outside torchrun); usable before :func:`join`."""
    return int(os.environ.get("RANK", "0") or 0)


def launched_by_torchrun() -> bool:
    """Whether torchrun started this process with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def join(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (if any); the info and this rank's device.

    On CUDA each rank takes ``cuda:LOCAL_RANK`` and NCCL; elsewhere gloo.
    """
    if not launched_by_torchrun():
        return SINGLE, device
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                **({"device_id": device} if device.type == "cuda" else {}))
        owns = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, owns), device


def leave(info: DistInfo | None = None) -> None:
    """Destroy the process group if this process created it (also after errors)."""
    if dist.is_available() and dist.is_initialized() and (info is None or info.owns_group):
        dist.destroy_process_group()


def broadcast_object(info: DistInfo, obj: T) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_batches(info: DistInfo, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
    """This rank's batches of an epoch's global batch list (the same on every rank).

    The list is padded by wrapping around to a multiple of the world size, so every rank runs
    the same number of steps (as ``DistributedSampler`` does), then dealt out round-robin.
    """
    batches = list(batches)
    if not info.enabled or not batches:
        return batches
    pad = (-len(batches)) % info.world_size
    batches += [batches[i % len(batches)] for i in range(pad)]
    return batches[info.rank::info.world_size]


def shard_rows(info: DistInfo, n: int) -> np.ndarray:
    """Positions ``0..n-1`` this rank handles: a contiguous block (rank order = original order)."""
    if not info.enabled:
        return np.arange(n)
    return np.array_split(np.arange(n), info.world_size)[info.rank]


def sum_scalar(info: DistInfo, value: torch.Tensor) -> torch.Tensor:
    """Sum of a 0-d tensor over all ranks."""
    if not info.enabled:
        return value
    value = value.detach().clone().float()
    dist.all_reduce(value)
    return value


def any_rank(info: DistInfo, flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on one of them."""
    if not info.enabled:
        return flag
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_rows(info: DistInfo, rows: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``rows`` (first dimension may differ) in rank order."""
    if not info.enabled:
        return rows
    rows = rows.contiguous()
    n = torch.tensor([rows.shape[0]], device=rows.device)
    sizes = [torch.zeros_like(n) for _ in range(info.world_size)]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    top = max(counts)
    padded = torch.zeros((top, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    padded[:rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])


def average_batch_norm(info: DistInfo, layers: Sequence[nn.modules.batchnorm._BatchNorm]) -> None:
    """Combine per-rank cumulative batch-norm statistics, weighted by each rank's batch count."""
    if not info.enabled or not layers:
        return
    for m in layers:
        count = m.num_batches_tracked.detach().clone().float()
        w = count.clone()
        mean = m.running_mean * w
        var = m.running_var * w
        packed = torch.cat([w.view(1), mean, var])
        dist.all_reduce(packed)
        total = packed[0]
        if total > 0:
            c = m.running_mean.numel()
            m.running_mean.copy_(packed[1:1 + c] / total)
            m.running_var.copy_(packed[1 + c:] / total)
            m.num_batches_tracked.fill_(int(total.item()))


def wrap(info: DistInfo, model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` (its trainable parameters) when distributed."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids: Any = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def gather_objects(info: DistInfo, obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable, made by this program), in rank order."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
