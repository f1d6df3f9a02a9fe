"""The training loop, readable top to bottom.

step: pick the stage -> set lr -> for each micro-batch: draw clips (and their text context,
text_context.py), build the history with the stage's strategy (no grad), one two-stream
forward (or, with `history_grad: false`, a forward of the noisy stream over history
keys/values made without gradient: detached_history.py), velocity MSE, backward -> clip ->
AdamW -> EMA -> log -> checkpoint. Resume = model + EMA + optimizer + step + RNG states +
data-stream position, so a stopped-and-resumed run ends with the same weights, bit for bit.

Safety: one trainer per run_dir (runlock.py; rank 0 holds the lock);
`resume=False` on a directory that already holds a run is refused unless `overwrite`, which
moves the old run aside first (run_dir.old-<time>); leftovers of a crash mid-save are cleaned
up at start; resume takes the newest checkpoint that loads, moving damaged ones aside with a
warning; a step whose loss or gradient is NaN/inf is skipped (weights, optimizer and EMA
untouched), and more than `max_nonfinite_skips` in a row stop the run with an error naming the
step; checkpoints are never written with NaN/inf in them (checkpoint.py).

Under torchrun (cfg.parallel, see training/distributed.py) every rank runs this loop on its share of the
global batch (optim.batch_size / ranks per step) with its own data and noise streams (seeds
offset by rank * parallel.RANK_SEED_STRIDE; rank 0's are the single-process streams). A
checkpoint holds the full (unsharded) weights, EMA and optimizer state, written by rank 0,
plus every rank's stream state (state["ranks"]), so resuming on the same number of ranks is
exact; on a different number the weights and optimizer resume exactly and the streams are
re-derived from (seed, step, rank). The EMA is kept in the layout of the online weights: full
on every rank (none/ddp), sharded like the model (fsdp), so its update is local.

Starting points: random weights (seeded), a checkpoint (resume, --init-from), or a local Wan
folder (init.wan; wan/transformer.py). When the weights will be loaded, the model and EMA are built on the
meta device, sharded (fsdp), and only then allocated, so under fsdp no rank ever holds them in
full on its device; rank 0 alone reads the checkpoint or Wan folder (on the CPU) and each
tensor is broadcast, every rank keeping its shard (parallel.load_full_state_dict). A noise
generator state saved on another device type (CPU vs CUDA) cannot be loaded: that stream is
re-derived from (seed, step, rank), with a warning.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from resforce.training import distributed as parallel

from resforce import device as precision
from resforce.training.checkpoint import latest_checkpoint
from resforce.config import TrainConfig
from resforce.config.recipe import motion_weight
from resforce.training.detached_history import history_kv
from resforce.history import build_history, build_history_and_cache
from resforce.loss import flow_matching_loss
from resforce.model.attention.policy import AttentionPolicy
from resforce.training.rundir import METRICS, open_run_dir
from resforce.actions import training_actions
from resforce.text_context import context_of, training_text


from resforce.training.state import RunState, check_start, on_main


class NonFiniteError(ValueError):
    """Training produced NaN/inf more often in a row than cfg.max_nonfinite_skips allows."""


def stage_at(cfg: TrainConfig, step: int) -> tuple[int, object]:
    """(index, stage) that owns global step `step` (0-based)."""
    end = 0
    for i, s in enumerate(cfg.stages):
        end += s.steps
        if step < end:
            return i, s
    return len(cfg.stages) - 1, cfg.stages[-1]


def learning_rate(cfg: TrainConfig, step: int) -> float:
    stage_lr = stage_at(cfg, step)[1].lr
    peak = cfg.optim.lr if stage_lr is None else stage_lr
    o = cfg.optim
    if step < o.warmup_steps:
        return peak * (step + 1) / o.warmup_steps
    if o.schedule == "cosine":
        total = sum(s.steps for s in cfg.stages)
        p = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
        return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))
    return peak


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        if p.requires_grad:  # frozen (LoRA base) weights never change
            e.lerp_(p.detach(), 1 - decay)


class Trainer(RunState):
    """Holds the state of a run; `run()` trains until the recipe ends (or `stop_at`).

    The run directory is locked from construction to the end of run() (or close())."""

    def __init__(self, cfg: TrainConfig, resume: bool = True, progress: bool = True,
                 init_from: str | Path | None = None, overwrite: bool = False):
        self.cfg = cfg
        self.parallel, self.device = parallel.setup(cfg.parallel, precision.resolve_device(cfg.device),
                                                    cfg.dist_timeout_minutes)
        precision.enable_tf32(self.device)
        self.rank, self.world, self.main = parallel.rank(), parallel.world_size(), parallel.is_main()
        o = cfg.optim
        if o.batch_size % (o.grad_accum * self.world):
            raise ValueError(f"optim.batch_size={o.batch_size} is the global batch: it must be a multiple "
                             f"of optim.grad_accum={o.grad_accum} x {self.world} ranks")
        self.run_dir = Path(cfg.run_dir)
        self.progress = progress and self.main
        check_start(cfg, init_from, resume)  # before the run_dir is created or a model built
        self.lock = on_main(lambda: open_run_dir(self.run_dir, resume, overwrite))
        try:
            self._build(resume, init_from)
        except BaseException:
            self.close()
            raise

    def train_step(self) -> dict:
        """One optimizer step. A non-finite loss or gradient norm (the same on every rank:
        both are reduced) skips the update: weights, optimizer and EMA stay as they were."""
        cfg, o = self.cfg, self.cfg.optim
        stage_idx, stage = stage_at(cfg, self.step)
        stage = self.calibration.stage(self, stage_idx, stage)  # calibrated resample_shift (calibration.py)
        lr = learning_rate(cfg, self.step)
        for g in self.opt.param_groups:
            g["lr"] = lr
        attention = AttentionPolicy(stage.attention)  # routed / windowed stages: passed to every pass
        frames = stage.clip_chunks * cfg.model.frames_per_chunk
        micro = o.batch_size // o.grad_accum // self.world
        t0 = time.perf_counter()
        resample_time, loss_sum = 0.0, 0.0
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        forward = lambda: precision.autocast(cfg.precision, self.device)  # noqa: E731 (forward passes only)
        for k in range(o.grad_accum):
            if stage.history.history_from_previous_step:  # no resampling pass: previous_step_history.py
                loss_sum = loss_sum + self.previous.micro_step(self, k, micro, frames, attention, forward,
                                                                       motion_weight(cfg, stage)) / o.grad_accum
                continue
            clean, info = self.data.batch(micro, frames)
            clean = clean.to(self.device)
            context = self._text_context(info, micro)
            actions = training_actions(info, cfg.model, self.device, self.gen)
            t1 = time.perf_counter()
            with forward():
                if stage.history_grad:
                    history, t_hist = build_history(stage.history, self.model, clean, self.gen, context=context,
                                                    attention=attention, actions=actions,
                                                    gather_weights=parallel.unsharded)
                    kv = None
                else:  # detached history: the noisy stream reads history keys/values made without gradient
                    history, t_hist, cache = build_history_and_cache(stage.history, self.model, clean, self.gen,
                                                                     context=context, attention=attention,
                                                                     skip_last=True, actions=actions,
                                                                     gather_weights=parallel.unsharded)
                    kv = history_kv(stage.history, self.model, history, t_hist, cache, attention, context, actions)
            resample_time += time.perf_counter() - t1
            with parallel.no_grad_sync(self.model, parallel.skips_grad_sync(self.parallel, o.grad_sync, k, o.grad_accum)):
                with forward():
                    loss = flow_matching_loss(self.model, clean, history, t_hist, cfg.timesteps, self.gen,
                                              context=context, space=cfg.loss_space, attention=attention,
                                              history_kv=kv, actions=actions, motion_weight=motion_weight(cfg, stage),
                                              motion_threshold=cfg.loss_motion_threshold)
                (loss / o.grad_accum).backward()
            loss_sum = loss_sum + loss.detach() / o.grad_accum  # on the device: no sync per micro-batch
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip if o.grad_clip > 0 else float("inf"))
        # the step's one host sync: loss and grad norm read together (the skip decision needs them)
        loss_mean, grad_norm = parallel.to_floats(parallel.mean_over_ranks(loss_sum), grad_norm)
        finite = math.isfinite(loss_mean) and math.isfinite(grad_norm)
        if finite:
            self.opt.step()
            self.nonfinite_streak = 0
        else:
            self.opt.zero_grad(set_to_none=True)
            self.nonfinite_streak += 1
        self.step += 1
        if finite:
            ema_update(self.ema, self.model, min(o.ema_decay, (1 + self.step) / (10 + self.step)))
        m = {"step": self.step, "stage": stage.name, "loss": loss_mean, "lr": lr, "grad_norm": grad_norm,
             "step_time": time.perf_counter() - t0, "resample_time": resample_time,
             **self.calibration.metrics(stage)}
        if not finite:
            m["skipped"] = True
        return m

    def _text_context(self, info, batch: int) -> torch.Tensor | None:
        """The text context of a micro-batch (text_context.training_text): the data's, or
        the empty-prompt stand-in for a text model on a world without text (warned once)."""
        text_dim = self.cfg.model.text_dim
        context = training_text(info, text_dim, self.cfg.text, batch, self.device, self.gen)
        if context is not None and context_of(info) is None and not self._warned_empty_prompt:
            self._warned_empty_prompt = True
            if self.main:
                warnings.warn(f"data.kind={self.cfg.data.kind} gives no text context, and model.text_dim="
                              f"{text_dim} > 0: the model is trained on the empty-prompt stand-in, zeros "
                              f"of (text.text_len={self.cfg.text.text_len}, {text_dim}), and generates with "
                              f"it (resforce.text_context)", stacklevel=2)
        return context

    def _check_finite(self, m: dict) -> None:
        if not m.get("skipped"):
            return
        limit, n = self.cfg.max_nonfinite_skips, self.nonfinite_streak
        if n > limit:
            raise NonFiniteError(
                f"step {self.step}: loss {m['loss']}, grad norm {m['grad_norm']}: {n} non-finite steps in a row "
                f"(steps {self.step - n + 1}-{self.step}), more than max_nonfinite_skips={limit}; training "
                f"stopped. Those steps changed nothing; the last checkpoint is "
                f"{latest_checkpoint(self.run_dir) or '(none)'}. Lower optim.lr or check the data")
        if self.main:
            warnings.warn(f"step {self.step}: loss {m['loss']}, grad norm {m['grad_norm']} is not finite; "
                          f"step skipped ({n} in a row, max_nonfinite_skips={limit})", stacklevel=2)

    # -- the loop ---------------------------------------------------------------------
    def run(self, stop_at: int | None = None) -> Path:
        """Train to the end of the recipe (or to global step `stop_at`); returns run_dir.
        Releases the run directory's lock when it returns or fails."""
        if self.main and self.lock is None:  # run() again after an earlier run() released it
            self.lock = open_run_dir(self.run_dir, resume=True)
        end = self.total if stop_at is None else min(stop_at, self.total)
        bar = tqdm(total=self.total, initial=self.step, disable=not self.progress,
                   desc=f"train {self.run_dir.name}", dynamic_ncols=True)
        try:
            with open(self.run_dir / METRICS, "a") if self.main else contextlib.nullcontext() as log:
                while self.step < end:
                    stage_before = stage_at(self.cfg, self.step)[0]
                    m = self.train_step()
                    bar.update(1)
                    bar.set_postfix(stage=m["stage"], loss=f"{m['loss']:.4f}")
                    if self.main and (self.step % self.cfg.log_every == 0 or self.step == end or m.get("skipped")):
                        log.write(json.dumps(m) + "\n")
                        log.flush()
                    self._check_finite(m)
                    stage_changes = self.step < self.total and stage_at(self.cfg, self.step)[0] != stage_before
                    if self.step % self.cfg.ckpt_every == 0 or self.step == end or stage_changes:
                        self.save()
        finally:
            bar.close()
            self.close()
        return self.run_dir


def train(cfg: TrainConfig, resume: bool = True, stop_at: int | None = None, progress: bool = True,
          init_from: str | Path | None = None, overwrite: bool = False) -> Path:
    """Train (see Trainer). resume=False starts over; in a directory that already holds a run
    that needs overwrite=True, which moves the old run aside (run_dir.old-<time>)."""
    owns_group = not parallel.is_distributed()  # torchrun: set up by the Trainer, shut down here
    finished = False
    try:
        run_dir = Trainer(cfg, resume=resume, progress=progress, init_from=init_from,
                          overwrite=overwrite).run(stop_at)
        finished = True
        return run_dir
    finally:
        if owns_group:
            parallel.shutdown(synchronize=finished)
