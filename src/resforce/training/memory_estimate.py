"""Peak memory of one training step, measured on the CPU with fake tensors (torchtitan's
scripts/estimate/estimation.py, applied to resforce's own training step).

Under `FakeTensorMode` every tensor has its shape, dtype and storage size but no data, so
the whole model (Wan2.1-1.3B or 14B) and a 196k-token step fit on a laptop. torch's
`MemTracker` (one GPU) / `FSDPMemTracker` (FSDP2, one rank of a fake process group of
`gpus` ranks simulated in this process) watch every storage the step allocates and frees,
and keep the peak, broken down into parameters, gradients, optimizer state, activations,
temporaries (backward) and FSDP's all-gather / reduce-scatter buffers.

The step is the trainer's (training/loop.py `train_step`), built from the same functions, so a
change to the model, the attention layouts, checkpointing or FSDP wrapping shows up here:
  model (fp32 master weights) + EMA (fp32, sharded like the model under FSDP)
  -> parallel.apply_activation_checkpointing(model, mode) -> parallel.apply_data_parallel
  -> AdamW (foreach, as torch picks on CUDA; its state exists: this is step >= 2)
  -> per micro-batch: history.build_history (teacher: the clip; resampling: the no-grad
     self-resampling pass, under FSDP with the weights gathered once for it:
     parallel.unsharded) -> loss.flow_matching_loss (the two-stream pass) -> backward, with
     the gradient reduction skipped or not as the trainer does (parallel.skips_grad_sync)
  -> clip_grad_norm_ -> AdamW step -> EMA update,
with the clip, its text context and all activations under bf16 autocast (precision='bf16'),
and the stage's history attention (dense, routed top-k or window: AttentionPolicy) in every
pass. Gradient accumulation: with grad_accum > 1 two micro-batches are measured, the first
as the trainer runs every micro-batch but the last (under optim.grad_sync='last' it skips the
reduction, so FSDP2 keeps the unsharded fp32 gradients), then the last; micro-batches 2 ..
grad_accum - 1 hold exactly what the first leaves behind, so two give the step's peak.

What it is not: fake tensors live on the CPU (this torch has no CUDA; fake CUDA factories
fail here), so dispatch follows CPU rules. Differences that matter, all small next to the
totals: CPU autocast keeps rms_norm in the input dtype; SDPA runs the CPU flash kernel
(which, like CUDA's flash / memory-efficient kernels, saves the output and an fp32 LSE and,
given a mask, turns a boolean mask into an additive one of the query dtype); kernel
workspaces and the CUDA caching allocator's fragmentation are invisible (budget ~5-10%
headroom; torchtitan reports the tracker within a few % of the real peak *active* memory).
The EMA is a constant resident and is added to the tracker's peak (FSDPMemTracker does not
track modules other than the one it wraps). Under selective checkpointing the chunked
attention's forward is one op (chunk_attention.as_one_op): the tracker sees its outputs but
not the tile temporaries inside it (a float32 accumulator of the output and one tile's
output, ~1.7 GiB at 15 s for 1.3B), which live only during that op in the forward and are
not part of the peak (in the backward, where the recomputed block and its gradients are).
The routed attention's forward is one op there too (routing_function.py; its temporaries
are one head group's routes); its backward, per head group, is plain ops the tracker sees.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import warnings
from dataclasses import replace

import torch

from resforce.training import distributed as parallel
from resforce.training.activation_checkpoint import apply_activation_checkpointing
from resforce.model.config import checkpoint_mode
from resforce.flow import TimestepSampler
from resforce.history import HistoryConfig, build_history
from resforce.loss import flow_matching_loss
from resforce.model.attention.policy import AttentionPolicy
from resforce.model.dit import CausalVideoDiT, DiTConfig
from resforce.model.lora import LoraConfig, apply_lora, tie_frozen
from resforce.training.step_arithmetic import GIB, ClipGeometry
from resforce.training.loop import ema_update
from resforce.training.memory_plan import MemoryPlan


# ----------------------------------------------------------------------------- set-up
@contextlib.contextmanager
def fake_process_group(world_size: int):
    """A fake process group of `world_size` ranks in this process (rank 0): collectives are
    no-ops with the right output shapes, so FSDP2 shards and gathers as on rank 0 of a job."""
    if world_size == 1:
        yield
        return
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("a process group is already initialised; run the memory estimate on its own")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


class _NoHook:
    @staticmethod
    def remove() -> None:
        pass


_NO_HOOK = _NoHook()


def _lean(tracker_cls):
    """The tracker, keeping only what this report uses: the global peak and its breakdown.

    - MemTracker updates every tracked module's own peak on every op (O(modules) per op),
      which makes a 30-block model ~10x slower; only the global peak is kept here.
    - Both trackers refuse a module that runs forward twice outside the backward ("multiple
      iterative calls"): the resampling pass runs every block 2N - 1 times, through
      forward_chunk / write_cache. The module-wise stats of the earlier call are dropped
      instead; the global accounting (every storage, allocated or freed) is untouched."""

    class Lean(tracker_cls):
        def _update_peak_stats(self, peak_state) -> None:
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap["Total"]:
                    self._peak_mem[dev] = snap["Total"]
                    self._peak_mem_snap[dev] = dict(snap)

        def _track_module_params_and_buffers(self, module, *args, **kwargs):
            # frozen parameters (a LoRA base) take no gradient hooks (torch refuses them):
            # a handle that removes nothing stands in for theirs
            for p in module.parameters():
                if not p.requires_grad:
                    self._param_to_grad_hook_handles.setdefault(p, (_NO_HOOK, _NO_HOOK))
            return super()._track_module_params_and_buffers(module, *args, **kwargs)

        def _forget_earlier_call(self, module) -> None:
            if not self._mod_tracker.is_bw and module in self.memory_tracking:
                del self.memory_tracking[module]

        def _pre_fw_hook(self, module, inputs) -> None:  # MemTracker
            self._forget_earlier_call(module)
            super()._pre_fw_hook(module, inputs)

        def _fsdp_state_pre_forward(self, fsdp_mod, orig):  # FSDPMemTracker
            inner = super()._fsdp_state_pre_forward(fsdp_mod, orig)

            def pre_forward(*args, **kwargs):
                self._forget_earlier_call(fsdp_mod)
                return inner(*args, **kwargs)

            return pre_forward

    Lean.__name__ = f"Lean{tracker_cls.__name__}"
    return Lean


def _tracker(model, opt, sharded: bool):
    if sharded:
        from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

        return _lean(FSDPMemTracker)(model, opt)
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = _lean(MemTracker)()
    tracker.track_external(model, opt)
    return tracker


def _fill_optimizer_state(model, opt) -> None:
    """Create AdamW's moments, as after a first step (torchtitan measures a second
    iteration for the same reason): zero gradients, one step, gradients freed. Frozen
    parameters (a LoRA base) never get a gradient, so AdamW keeps no state for them."""
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)


def _autocast(precision: str):
    # CUDA training autocasts to bf16 (torchtitan's train_context); the fake tensors here are
    # CPU tensors, so CPU autocast stands in for it
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _train_step(plan: MemoryPlan, cfg: DiTConfig, geom: ClipGeometry, model, opt, tracker) -> int:
    """training/loop.py's step: per micro-batch history, two-stream loss, backward (gradient sync as
    the trainer does it), then clip and AdamW. (The EMA update that follows is in place and
    allocates nothing: see _measure.) Returns the peak while the history was built (the
    resampling pass and its KV cache)."""
    b = plan.batch
    history_cfg = HistoryConfig(strategy=plan.strategy, resample_steps=plan.resample_steps,
                                resample_unsharded=plan.resample_unsharded)
    attention = AttentionPolicy(plan.attention())
    mode = "fsdp" if plan.gpus > 1 else "none"
    micro_batches = min(plan.grad_accum, 2)  # see the module docstring
    history_peak = 0
    for k in range(micro_batches):
        # the first of two stands for every micro-batch but the last
        skip = parallel.skips_grad_sync(mode, plan.grad_sync, k, micro_batches)
        clean = torch.randn(b, cfg.in_channels, geom.latent_frames, geom.latent_height, geom.latent_width)
        context = torch.randn(b, plan.text_tokens, cfg.text_dim) if cfg.text_dim > 0 else None
        with _autocast(plan.precision):
            history, t_hist = build_history(history_cfg, model, clean, None, context=context, attention=attention,
                                            gather_weights=parallel.unsharded)
            if k == 0:  # (the tracker's peak is cumulative: later micro-batches include earlier passes)
                history_peak = _sum_devices(tracker.get_tracker_snapshot("peak")).get("Total", 0)
        with parallel.no_grad_sync(model, skip):
            with _autocast(plan.precision):
                loss = flow_matching_loss(model, clean, history, t_hist, TimestepSampler(), None, context=context,
                                          attention=attention)
            del history, t_hist
            (loss / plan.grad_accum).backward()
        del loss, clean, context
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return history_peak


def _build(cfg: DiTConfig, lora: LoraConfig) -> CausalVideoDiT:
    """The model (with its LoRA adapters) under the active FakeTensorMode. With adapters it is
    built on the meta device (peft moves new adapters with module.to, which cannot swap meta
    parameters for fake ones) and every tensor is then replaced by an empty one on the CPU."""
    if not lora.enabled:
        return CausalVideoDiT(cfg)
    with torch.device("meta"):
        model = apply_lora(CausalVideoDiT(cfg), lora)
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[name] = torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype),
                                                              requires_grad=p.requires_grad)
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = torch.empty(b.shape, dtype=b.dtype)
    return model


def _local_ids(module) -> set:
    return {id(p) for p in module.parameters()}


def _local_bytes(module, exclude: set = frozenset()) -> int:
    """Bytes of this rank's parameters (a DTensor's local shard under FSDP), less those in
    `exclude` (ids of parameters held by another module: a LoRA EMA's shared base)."""
    total = 0
    for p in module.parameters():
        if id(p) in exclude:
            continue
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.numel() * local.element_size()
    return total


# ----------------------------------------------------------------------------- the estimate
def estimate_memory(plan: MemoryPlan, fake: bool = True) -> dict:
    """Peak memory per GPU of one training step (see the module docstring): a JSON-able
    dict with the plan, the clip's tokens, the peak in bytes and GiB and its breakdown.
    fake=False runs the same step on real CPU tensors (tests: tiny models, one GPU), as
    torchtitan's estimation.py does to check the tracker against the allocator."""
    plan.check()
    cfg = plan.model_config()
    geom = plan.geometry(cfg)
    mode = checkpoint_mode(cfg.gradient_checkpointing)
    if not fake and plan.gpus > 1:
        raise ValueError("fake=False measures one GPU only (FSDP needs the fake process group's fake tensors)")
    from torch._subclasses.fake_tensor import FakeTensorMode

    gc.collect()
    with fake_process_group(plan.gpus), warnings.catch_warnings():
        # CPU autocast leaves rms_norm's input in bf16 and says so on every call
        warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
        mesh = _device_mesh(plan.gpus)
        with FakeTensorMode() if fake else contextlib.nullcontext():
            return _measure(plan, cfg, geom, mode, mesh)


def _device_mesh(gpus: int):
    """The FSDP mesh, built outside FakeTensorMode (as torchtitan does); None for one GPU."""
    if gpus == 1:
        return None
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (gpus,))


def _measure(plan: MemoryPlan, cfg: DiTConfig, geom: ClipGeometry, mode: str, mesh) -> dict:
    """Build, wrap and step the model under the active FakeTensorMode; the report."""
    fsdp = "fsdp" if mesh is not None else "none"
    cpu = torch.device("cpu")
    lora = LoraConfig(rank=plan.lora_rank, base_dtype=plan.lora_base_dtype)
    model = _build(copy.deepcopy(cfg), lora)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ema = _build(replace(cfg, gradient_checkpointing="none"), lora).eval().requires_grad_(False)
    if lora.enabled and mesh is None:
        tie_frozen(ema, model)
    apply_activation_checkpointing(model, mode)
    parallel.apply_data_parallel(model, fsdp, cpu, mesh=mesh)
    parallel.shard_like_model(ema, fsdp, cpu, mesh=mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
    _fill_optimizer_state(model, opt)
    tracker = _tracker(model, opt, sharded=mesh is not None)
    with tracker:
        history_peak = _train_step(plan, cfg, geom, model, opt, tracker)
    # the EMA is resident from the start and its update (lerp_) is in place: outside the
    # tracker, which would count the first in-place write to an untracked storage as new
    ema_update(ema, model, 0.99)
    peak = _sum_devices(tracker.get_tracker_snapshot("peak"))
    after = _sum_devices(tracker.get_tracker_snapshot("current"))
    ema_bytes = _local_bytes(ema, exclude=_local_ids(model))
    total = peak.pop("Total") + ema_bytes
    breakdown = {**{str(k): v for k, v in peak.items() if v}, "EMA": ema_bytes}
    return {
        "plan": {"preset": plan.preset, "strategy": plan.strategy, "gpus": plan.gpus, "batch": plan.batch,
                 "chunks": geom.chunks, "seconds": plan.seconds if plan.chunks is None else None,
                 "height": plan.height, "width": plan.width, "text_tokens": plan.text_tokens if cfg.text_dim else 0,
                 "checkpointing": mode, "attention_backend": cfg.attention_backend, "precision": plan.precision,
                 "resample_steps": plan.resample_steps, "resample_unsharded": plan.resample_unsharded,
                 "history_attention": _attention_name(plan), "grad_accum": plan.grad_accum,
                 "grad_sync": _grad_sync_name(plan), "lora_rank": plan.lora_rank,
                 "lora_base_dtype": plan.lora_base_dtype},
        "parameters": params,
        "trainable_parameters": trainable,
        "tokens": {"per_chunk": geom.tokens_per_chunk, "clip": geom.clip_tokens,
                   "two_stream": geom.two_stream_tokens},
        "peak_bytes": total,
        "peak_gib": total / GIB,
        "peak_breakdown_bytes": breakdown,
        "history_peak_bytes": history_peak + ema_bytes,
        "resident_after_step_bytes": after.get("Total", 0) + ema_bytes,
        "resident_breakdown": {str(k): v for k, v in after.items() if v},
        "tracker": "FSDPMemTracker" if mesh is not None else "MemTracker",
        "device": "fake cpu tensors (CPU dispatch rules; see resforce.training.memory_estimate)",
    }


def _attention_name(plan: MemoryPlan) -> str:
    if plan.history_attention == "topk":
        return f"topk (k={plan.topk})"
    if plan.history_attention == "window":
        return f"window (w={plan.window}, sink={plan.sink})"
    return "dense"


def _grad_sync_name(plan: MemoryPlan) -> str:
    if plan.grad_accum == 1:
        return "every"
    if plan.grad_sync == "auto":
        return "every" if plan.gpus > 1 else "last"
    return plan.grad_sync


def _sum_devices(snapshot: dict) -> dict:
    out: dict = {}
    for dev_snap in snapshot.values():
        for k, v in dev_snap.items():
            key = getattr(k, "value", k)
            out[key] = out.get(key, 0) + v
    return out


def format_report(r: dict) -> str:
    """A few human lines for the CLI."""
    p, t = r["plan"], r["tokens"]
    where = f"FSDP over {p['gpus']} GPUs (per GPU)" if p["gpus"] > 1 else "one GPU"
    lines = [f"{p['preset']} ({r['parameters'] / 1e9:.2f}B params), {p['strategy']}, {p['chunks']} chunks "
             f"x {t['per_chunk']} tokens, two-stream sequence {t['two_stream']} tokens, batch {p['batch']}, "
             f"{where}, checkpointing {p['checkpointing']}, attention {p['attention_backend']}, {p['precision']}",
             f"history attention {p['history_attention']}, grad_accum {p['grad_accum']} "
             f"(gradient sync: {p['grad_sync']})"
             + (f", LoRA rank {p['lora_rank']} ({r['trainable_parameters'] / 1e6:.1f}M trainable, "
                f"{p['lora_base_dtype']} base)"
                if p["lora_rank"] else ""),
             f"peak {r['peak_gib']:.2f} GiB ({r['tracker']} under FakeTensorMode; {r['device']})",
             f"  (peak while building the history, {p['strategy']}: {r['history_peak_bytes'] / GIB:.2f} GiB)"]
    for k, v in sorted(r["peak_breakdown_bytes"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {k:<16} {v / GIB:8.2f} GiB")
    return "\n".join(lines)
