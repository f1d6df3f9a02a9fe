"""This process's place among torchrun's ranks (WORLD_SIZE / RANK / LOCAL_RANK in the
environment; rank 0 of 1 without torchrun) and the end of its default process group. Shared by
training (training/distributed.py, which opens the group and applies DDP/FSDP) and by prepare
(worlds/latents/ranks.py), so neither imports the other."""

from __future__ import annotations

import os

import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1")) if launched_by_torchrun() else 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shutdown(synchronize: bool = True) -> None:
    """Destroy the default process group (if any); call once at the end of a torchrun job.
    synchronize: wait for every rank first (a barrier), so no rank tears down its Gloo pairs
    while another still has a collective in flight (a rank then dies with "terminate called
    without an active exception", SIGABRT); False on an error path, where the others may be gone."""
    if is_distributed():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()
