"""This process's place among torchrun's ranks (WORLD_SIZE / RANK / LOCAL_RANK in the
environment; rank 0 of 1 without torchrun) and the end of its default process group. Shared by
training (training/distributed.py, which opens the group and applies DDP/FSDP) and by prepare
(worlds/latents/ranks.py), so neither imports the other."""

from __future__ import annotations

import gc
import os
from datetime import timedelta

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


def open_group(backend: str, timeout: timedelta) -> None:
    """Open the default process group of a torchrun job (environment rendezvous).

    torch._dynamo is imported first, on purpose: imported while a group is open (FSDP2,
    diffusers and transformers import it on the way) it keeps that group alive past
    destroy_process_group (torch 2.13), so the group's Gloo threads outlive the call and run on
    into interpreter shutdown, where a thread that still releases a collective's tensors
    aborts the rank ("terminate called without an active exception", SIGABRT) after all its
    work is done. Imported before, the group and its threads end in `shutdown`."""
    import torch._dynamo  # noqa: F401

    dist.init_process_group(backend=backend, timeout=timeout)


def shutdown(synchronize: bool = True) -> None:
    """Destroy the default process group (if any); call once at the end of a torchrun job.
    synchronize: wait for every rank first (a barrier), so no rank tears down its Gloo pairs
    while another still has a collective in flight; False on an error path, where the others
    may be gone. Whether the group's threads end here too: see `open_group`."""
    if is_distributed():
        if synchronize:
            dist.barrier()
        gc.collect()  # reference cycles of a finished model (DDP's) still hold the group
        dist.destroy_process_group()
