"""Multi-process data-parallel training under torchrun: DDP or FSDP2, applied from outside.

The model code (model/dit.py) knows nothing of this module; the trainer asks it to

1. `setup(mode, device)`: detect torchrun (WORLD_SIZE / RANK / LOCAL_RANK in the
   environment), initialise the default process group - NCCL when the device is CUDA (each
   rank takes the GPU of its LOCAL_RANK), Gloo on the CPU - and resolve the mode;
2. after activation checkpointing (activation_checkpoint.py) is applied,
   `apply_data_parallel(model, mode, device)`, in place, torchtitan's composable way: "none"
   leaves the model as it is; "ddp" applies `replicate` (DDP's gradient all-reduce as hooks on
   the module itself); "fsdp" applies FSDP2 `fully_shard` to every transformer block and then
   to the root. A model built on the meta device (weights to be loaded) is allocated after
   sharding (`allocate`), so each rank only ever allocates its shards;
3. save and load *full* (unsharded) state dicts, so a checkpoint of a 2-rank FSDP run is the
   same file a single-process run writes (`full_state_dict`, `load_full_state_dict`,
   `full_optim_state_dict`, `load_full_optim_state_dict`). Under fsdp only rank 0 holds the
   full state, on the CPU: saving gathers to it (cpu_offload), loading broadcasts from it
   tensor by tensor (broadcast_from_rank0), each rank keeping its shard on its own device.

One model handle. Both APIs change the module in place, so the trainer holds one object, the
CausalVideoDiT itself, for the training forward, the history passes, `.config` and state
dicts; no wrapper, no module prefix in parameter names. The history strategies call
`model.forward_chunk(...)`, `model.write_cache(...)` and `model(...)` under no_grad:
- ddp: the parameters are plain and identical on every rank; DDP's hooks do nothing without
  gradient, so nothing is synchronised in these passes.
- fsdp: `apply_data_parallel` registers forward_chunk, write_cache and write_history with
  `register_fsdp_forward_method`, so they run FSDP's pre/post-forward hooks like `forward`
  does: the root's parameters (patch embedding, condition embedder, head) are all-gathered
  before the call, each block all-gathers its own as it is entered (its own hooks) and
  reshards after it. Without this the root-level layers would see sharded DTensor
  parameters and fail.

Gradient averaging: DDP all-reduces and FSDP2 reduce-scatters the *mean* gradient over ranks;
with the same local batch on every rank that is the gradient of the mean loss over the global
batch, as a single process with the whole batch would compute (up to float summation order).

CUDA / NCCL: the code paths exist (backend choice, `torch.cuda.set_device(LOCAL_RANK)`,
`device_ids` for DDP, a CUDA device mesh for FSDP2) but are UNTESTED here; the tests run
2 CPU processes with Gloo.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn

# this process's place among torchrun's ranks: shared with prepare (worlds/latents), re-exported
# here for the trainer (parallel.rank(), parallel.shutdown(), ...)
from resforce.process_group import (barrier, env_world_size, is_distributed, is_main,  # noqa: F401
                                    launched_by_torchrun, local_rank, open_group, rank, shutdown,
                                    world_size)


MODES = ("auto", "none", "ddp", "fsdp")
RANK_SEED_STRIDE = 1_000_000_007
"""Rank r draws its data and noise from seed + r * RANK_SEED_STRIDE (rank 0: the single-process
streams)."""


def resolve_mode(mode: str) -> str:
    """'auto' -> 'ddp' when torchrun launched more than one process, else 'none'."""
    if mode not in MODES:
        raise ValueError(f"parallel must be one of {MODES}, got {mode!r}")
    n = env_world_size()
    if mode == "auto":
        return "ddp" if n > 1 else "none"
    if mode == "none" and n > 1:
        raise ValueError(f"parallel=none but torchrun started {n} processes: they would train "
                         f"separate copies into one run directory; use parallel=ddp or fsdp")
    if mode in ("ddp", "fsdp") and not launched_by_torchrun():
        raise ValueError(f"parallel={mode} needs a torchrun launch (WORLD_SIZE, RANK and "
                         f"LOCAL_RANK unset); e.g. torchrun --nproc_per_node=2 -m resforce.cli.main train ...")
    return mode


def setup(mode: str, device: torch.device, timeout_minutes: float = 60.0) -> tuple[str, torch.device]:
    """(resolved mode, this rank's device). For ddp/fsdp: initialise the default process group
    once (NCCL for CUDA - untested here -, Gloo otherwise) with a collective timeout of
    `timeout_minutes` (TrainConfig.dist_timeout_minutes); on CUDA the device becomes
    cuda:LOCAL_RANK and is made current."""
    mode = resolve_mode(mode)
    if mode == "none":
        return mode, device
    if device.type == "cuda":  # UNTESTED here (CPU-only machine)
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if not is_distributed():
        import datetime

        open_group("nccl" if device.type == "cuda" else "gloo", datetime.timedelta(minutes=timeout_minutes))
    return mode, device


# ----------------------------------------------------------------------------- collectives
def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks, on its device (no host sync); x itself without a group."""
    if not is_distributed():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / world_size()


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s obj on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def to_floats(*xs) -> list[float]:
    """Python floats of scalar tensors (DTensors too), read with ONE device-to-host copy."""
    xs = [x.full_tensor() if hasattr(x, "full_tensor") else x for x in xs]
    return torch.stack([x.detach().reshape(()).to(torch.float64) for x in xs]).tolist()


# ----------------------------------------------------------------------------- wrapping
FORWARD_METHODS = ("forward_chunk", "write_cache", "write_history")
"""Methods other than forward that run the model; FSDP2 must unshard around them."""


def apply_data_parallel(model: nn.Module, mode: str, device: torch.device | None = None,
                        forward_methods=FORWARD_METHODS, mesh=None) -> nn.Module:
    """Make `model` train data-parallel, in place; returns `model` itself (one handle).

    none: nothing. ddp: composable `replicate` (DDP as hooks on the module: gradients are
    all-reduced in backward; the parameters are broadcast from rank 0 at the first forward).
    fsdp: FSDP2 on a 1-D mesh of all ranks, `fully_shard` per block of `model.blocks`, then
    the root; `forward_methods` are registered as FSDP forward methods. Build the optimizer
    AFTER this: fully_shard replaces the parameters by sharded DTensors. `mesh`: a device
    mesh built beforehand (memory_estimate builds it outside FakeTensorMode); default: all ranks."""
    if mode not in ("none", "ddp", "fsdp"):
        raise ValueError(f"apply_data_parallel mode must be none, ddp or fsdp, got {mode!r}")
    device = device or next(model.parameters()).device
    if mode == "none":
        return allocate(model, device)
    if mode == "ddp":
        from torch.distributed._composable.replicate import replicate  # torchtitan's DDP

        return replicate(allocate(model, device), device_id=device)  # cuda: untested here
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    mesh = mesh if mesh is not None else init_device_mesh(device.type, (world_size(),))
    for block in getattr(model, "blocks", []):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    allocate(model, device)  # after sharding: a meta model takes only this rank's shards
    for name in forward_methods:
        if hasattr(model, name):
            register_fsdp_forward_method(model, name)
    return model


def allocate(module: nn.Module, device: torch.device) -> nn.Module:
    """A module built on the meta device gets (uninitialised) storage on `device`, in its
    current layout (its shards, once fully_shard has run); a real module is left as it is.
    Load its values next. In place; returns the module."""
    if any(t.is_meta for t in [*module.parameters(), *module.buffers()]):
        module.to_empty(device=device)
    return module




def shard_like_model(module: nn.Module, mode: str, device: torch.device | None = None, mesh=None) -> nn.Module:
    """Lay out a copy of the model (the EMA) like the trained one: sharded the same way under
    fsdp (so `ema_p.lerp_(p)` is a local, shard-by-shard update and costs no communication),
    full otherwise (DDP / none: every rank holds the full, identical EMA). A module on the
    meta device is allocated after sharding, so under fsdp no rank ever holds it in full."""
    if mode == "fsdp":
        return apply_data_parallel(module, "fsdp", device, forward_methods=(), mesh=mesh)
    return allocate(module, device or next(module.parameters()).device)


@contextlib.contextmanager
def unsharded(model: nn.Module):
    """FSDP2: all-gather the model's parameters ONCE for everything inside, instead of once per
    call and module. For passes without gradient that call the model many times: the
    self-resampling pass makes 2N - 1 calls (N = 21 chunks at 15 s: 41), and FSDP2 otherwise
    gathers the root and every block on each (41 x 31 all-gathers for Wan2.1-1.3B, each
    block's weights crossing the network 41 times). Costs the unsharded model on every rank
    meanwhile (its fp32 weights: 5.3 GiB for Wan2.1-1.3B; 53 GiB for 14B, too many there).

    Every FSDP module is unsharded up front and told not to reshard after its forward; on
    exit all are resharded and get back fully_shard's default as apply_data_parallel applies it
    (reshard_after_forward=None: the root keeps its parameters after forward, every block
    reshards). The gathered values are the ones each call would gather, so outputs are
    bitwise those of the per-call gathers. Any other model (none / ddp): nothing happens."""
    from torch.distributed.fsdp import FSDPModule

    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not modules:
        yield
        return
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        for m in modules:
            m.unshard()
        yield
    finally:
        for m in modules:
            m.reshard()
            m.set_reshard_after_forward(m is not model, recurse=False)


from resforce.config.recipe import GRAD_SYNCS  # noqa: E402  (the recipe owns the choices)


def skips_grad_sync(mode: str, grad_sync: str, micro: int, grad_accum: int) -> bool:
    """Whether micro-batch `micro` (0-based) of `grad_accum` skips the gradient reduction.
    The last one always syncs. 'every': none skips (FSDP2 reduce-scatters each micro-batch and
    keeps only sharded gradients); 'last': all others skip (FSDP2 then keeps every block's
    unsharded gradient until the last); 'auto': 'every' under fsdp, 'last' otherwise (DDP's
    gradients are full on every rank anyway, so skipping only saves communication)."""
    if grad_sync not in GRAD_SYNCS:
        raise ValueError(f"grad_sync must be one of {GRAD_SYNCS}, got {grad_sync!r}")
    if grad_sync == "auto":
        grad_sync = "every" if mode == "fsdp" else "last"
    return grad_sync == "last" and micro < grad_accum - 1


@contextlib.contextmanager
def no_grad_sync(model: nn.Module, skip: bool):
    """Skip the gradient all-reduce / reduce-scatter inside (gradient-accumulation micro-batches
    but the last); the gradients still accumulate locally and sync on the last one. Both
    replicate (ddp) and fully_shard (fsdp) give the module `set_requires_gradient_sync`."""
    if not skip or not hasattr(model, "set_requires_gradient_sync"):
        yield
        return
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


# ----------------------------------------------------------------------------- state dicts
def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state_dict(module: nn.Module, mode: str) -> dict:
    """The full state dict of the raw module. fsdp: a collective (every rank must call it); the
    gathered tensors (on the CPU) are on rank 0 only, other ranks get {}. none/ddp: the
    module's own state dict (full on every rank)."""
    if mode != "fsdp":
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    return get_model_state_dict(module, options=_options())


def _from_rank0():
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)


def load_full_state_dict(module: nn.Module, sd: dict | None, mode: str) -> None:
    """Load a full state dict into the raw module. none/ddp: every rank passes it. fsdp: only
    rank 0's is read (the others pass None): tensor by tensor, rank 0 broadcasts it and every
    rank keeps its shard (copied, cast, into its own device's storage), so only rank 0 ever
    holds the full state, and on the CPU. A collective under fsdp."""
    if mode != "fsdp":
        module.load_state_dict(sd)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict
    set_model_state_dict(module, dict(sd) if is_main() else {}, options=_from_rank0())


def full_optim_state_dict(model: nn.Module, opt: torch.optim.Optimizer, mode: str) -> dict:
    """The optimizer state in torch's own format (`opt.state_dict()`: parameters numbered in
    `model.parameters()` order), full tensors, whatever the mode: checkpoints stay
    interchangeable between none, ddp and fsdp. fsdp: a collective; {} on ranks > 0."""
    if mode != "fsdp":
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    sd = get_optimizer_state_dict(model, opt, options=_options())
    if not sd:
        return {}
    index = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    return {"state": {index[k]: v for k, v in sd["state"].items()},
            "param_groups": [{**g, "params": [index[k] for k in g["params"]]} for g in sd["param_groups"]]}


def load_full_optim_state_dict(model: nn.Module, opt: torch.optim.Optimizer, sd: dict | None, mode: str) -> None:
    """Inverse of `full_optim_state_dict`. none/ddp: every rank passes the full state (torch moves
    each tensor to its parameter's device). fsdp: only rank 0's is read (the others pass None);
    each tensor is broadcast from rank 0 and every rank keeps its shard on its own device."""
    if mode != "fsdp":
        opt.load_state_dict(sd)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
    fqn = {}
    if is_main():
        names = [name for name, _ in model.named_parameters()]
        fqn = {"state": {names[i]: v for i, v in sd["state"].items()},
               "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]]}
    set_optimizer_state_dict(model, opt, fqn, options=_from_rank0())


__all__ = ["MODES", "RANK_SEED_STRIDE", "launched_by_torchrun", "env_world_size", "is_distributed",
           "world_size", "rank", "local_rank", "is_main", "barrier", "resolve_mode", "setup",
           "shutdown", "gather_objects", "broadcast_object", "to_floats",
           "mean_over_ranks", "apply_data_parallel", "allocate", "shard_like_model", "unsharded", "GRAD_SYNCS",
           "skips_grad_sync", "no_grad_sync", "full_state_dict",
           "load_full_state_dict", "full_optim_state_dict", "load_full_optim_state_dict"]
