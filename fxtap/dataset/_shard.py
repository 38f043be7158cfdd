"""Which rank computes which chunks, and the few collective steps a distributed job needs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Ranks", "chunks_of", "join"]


@dataclass(frozen=True)
class Ranks:
    """The process group a job runs in: one process (``world_size == 1``) or torchrun's ranks.

    Attributes:
        rank: this process's rank (0 on a single process).
        world_size: number of ranks.
        local_rank: rank on this node, used to pick ``cuda:LOCAL_RANK``.
        owned: True when this job created the process group (and destroys it at the end).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owned: bool = False

    def barrier(self) -> None:
        """Wait until every rank reaches this point (nothing to do on one process)."""
        if self.world_size > 1:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value``, on every rank."""
        if self.world_size == 1:
            return value
        box = [value if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if self.world_size == 1:
            return [value]
        box: list[Any] = [None] * self.world_size
        dist.all_gather_object(box, value)
        return box

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Overwrite ``module``'s parameters and buffers with rank 0's, in place."""
        if self.world_size == 1:
            return
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                data = tensor.data if tensor.data.is_contiguous() else tensor.data.contiguous()
                dist.broadcast(data, src=0)
                if data is not tensor.data:
                    tensor.data.copy_(data)

    def close(self) -> None:
        """Destroy the process group if this job created it."""
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()


def join(device: torch.device | None) -> Ranks:
    """Join torchrun's process group, or run alone when torchrun did not start this process.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as torchrun sets them; initialises the
    default group with gloo on CPU and nccl on CUDA unless the caller already did.
    """
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return Ranks(dist.get_rank(), dist.get_world_size(), local, owned=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return Ranks()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device is not None and device.type == "cuda"
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), local, owned=True)


def chunks_of(num_chunks: int, ranks: Ranks) -> list[int]:
    """The chunks one rank computes: every ``world_size``-th, starting at its rank.

    Disjoint across ranks, together all chunks, and the same on every run with the same
    world size; a resumed job may use another world size because chunks are independent.

    >>> chunks_of(5, Ranks(rank=1, world_size=2))
    [1, 3]
    """
    return list(range(ranks.rank, num_chunks, ranks.world_size))
