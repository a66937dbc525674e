"""Process-group set-up for `torchrun` and the data sharding shared by every trainer call.

One code path: with ``WORLD_SIZE`` unset or 1 nothing is initialised and rank = 0.
Under ``torchrun --nproc_per_node N`` the group is created with gloo on CPU and NCCL on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "shutdown_distributed", "epoch_batches",
           "broadcast_object", "gather_objects", "barrier"]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # True when init_distributed created the process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _pick_device(device: str, local_rank: int) -> torch.device:
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but torch sees no CUDA GPU; use device='cpu' or 'auto'")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def init_distributed(device: str = "auto") -> DistInfo:
    """Read torchrun's environment; create the process group when WORLD_SIZE > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = _pick_device(device, local_rank)
    if world_size <= 1:
        return DistInfo(0, 1, 0, dev, False)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise RuntimeError(f"WORLD_SIZE={world_size} but {', '.join(missing)} not set; "
                               "launch with `torchrun --nproc_per_node N ...`")
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world_size)
        owns = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns)


def shutdown_distributed(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (identity when not distributed)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                  shuffle: bool = True, drop_last: bool = False) -> list[list[int]]:
    """This rank's batches of dataset indices for one epoch, a pure function of its arguments.

    The epoch's permutation comes from ``(seed, epoch)`` only, so a resumed run sees the same
    order. A global batch of ``batch_size * world_size`` consecutive permuted indices is split
    between ranks (rank r takes positions r, r+W, ...), so the union over ranks of one step's
    batches equals the single-process batch of the same global size. A short last global batch
    is dropped (``drop_last``) or padded from the start of the permutation to a multiple of the
    world size, as torch's DistributedSampler does, so that every rank takes the same number of steps.
    """
    if n <= 0:
        raise ValueError("the training dataset is empty")
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad sharding: batch_size={batch_size}, rank={rank}, world_size={world_size}")
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    glob = batch_size * world_size
    out = []
    for start in range(0, n, glob):
        chunk = order[start:start + glob]
        if len(chunk) < glob:
            if drop_last:
                break
            short = -len(chunk) % world_size
            if short:
                chunk = np.concatenate([chunk, np.resize(order, short)])
        out.append(chunk[rank::world_size].tolist())
    if not out:
        raise ValueError(f"drop_last leaves no batch: {n} examples < global batch {glob}")
    return out
