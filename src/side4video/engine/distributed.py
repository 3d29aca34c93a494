"""Process-group set-up for ``torchrun`` (gloo on CPU, NCCL on CUDA) and the few collectives the engine uses."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
    return torch.device(name)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment, if any (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank, dev)


@contextmanager
def distributed_context(device: str = "auto") -> Iterator[DistInfo]:
    """``init_distributed`` for the duration of the block; a group created here is destroyed at its end
    (one that already existed, e.g. the caller's, is left alone)."""
    owns_group = not dist.is_initialized()
    try:
        yield init_distributed(device)
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


def all_reduce(tensor: torch.Tensor, info: DistInfo, op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce (a no-op in a single process); returns ``tensor``."""
    if info.enabled:
        dist.all_reduce(tensor, op=op)
    return tensor


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def sharded_loader(
    dataset: Dataset,
    info: DistInfo,
    batch_size: int,
    num_workers: int,
    seed: int,
    train: bool,
    collate_fn: Callable[[list], dict[str, Any]],
    drop_last: bool = False,
) -> DataLoader:
    """Sharded over ranks by a ``DistributedSampler`` (also with one process: it shuffles with (seed, epoch)).

    ``drop_last`` drops each rank's last incomplete batch (the sampler itself pads to equal shards).
    """
    sampler = DistributedSampler(
        dataset, num_replicas=info.world_size, rank=info.rank, shuffle=train, seed=seed, drop_last=False
    )
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_fn, drop_last=drop_last, pin_memory=info.device.type == "cuda")
