"""prepare's ranks: this process's place among torchrun's ranks and the few collectives a
prepare needs (broadcast, barrier, sums), over Gloo whatever the training backend, plus the
device each rank encodes on. Without torchrun: rank 0 of 1, no group."""

from __future__ import annotations

from datetime import timedelta

import torch

from resforce import process_group

RANK_TIMEOUT = timedelta(days=2)
"""How long a rank waits for the others at the end: the slowest rank's share of the videos,
which can be hours (torchrun stops every rank as soon as one fails, so a long wait never hides
a failure)."""


def rank_device(name: str, world: int) -> torch.device:
    from resforce.device import resolve_device

    device = resolve_device(name)
    if device.type == "cuda" and device.index is None and world > 1:  # one GPU per rank
        device = torch.device("cuda", process_group.local_rank())
        torch.cuda.set_device(device)
    return device


class Ranks:
    """This process's place among torchrun's ranks (rank 0 of 1 without torchrun), and the few
    collectives prepare needs, over Gloo. A process group that is not there is made (and
    destroyed at the end); under one with another backend a Gloo group is added."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist, self.group, self.owns = dist, None, False
        if process_group.env_world_size() > 1 and not process_group.is_distributed():
            process_group.open_group("gloo", RANK_TIMEOUT)
            self.owns = True
        if process_group.is_distributed() and dist.get_backend() != "gloo":
            self.group = dist.new_group(backend="gloo", timeout=RANK_TIMEOUT)
        self.rank, self.world = process_group.rank(), process_group.world_size()

    def broadcast(self, obj):
        """Rank 0's obj on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        self.dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            self.dist.barrier(group=self.group)

    def total(self, counts: list[int], seconds: float) -> tuple:
        """(*counts summed over the ranks, the largest seconds); waits for every rank."""
        if self.world == 1:
            return (*counts, seconds)
        x = torch.tensor(counts, dtype=torch.float64)
        s = torch.tensor([seconds], dtype=torch.float64)
        self.dist.all_reduce(x, group=self.group)
        self.dist.all_reduce(s, op=self.dist.ReduceOp.MAX, group=self.group)
        return (*(int(v) for v in x.tolist()), float(s))

    def close(self, synchronize: bool = True) -> None:
        """Destroy the group this made (process_group.shutdown: after a barrier unless on an
        error path)."""
        if self.owns:
            process_group.shutdown(synchronize)
