"""The training loop, readable top to bottom.

step: pick the stage -> set lr -> for each micro-batch: draw clips, build the history with
the stage's strategy (no grad), one two-stream forward, velocity MSE, backward -> clip ->
AdamW -> EMA -> log -> checkpoint. Resume = model + EMA + optimizer + step + RNG states +
data-stream position, so a stopped-and-resumed run ends with the same weights, bit for bit.

Under torchrun (cfg.parallel, see parallel.py) every rank runs this loop on its share of the
global batch (optim.batch_size / ranks per step) with its own data and noise streams (seeds
offset by rank * parallel.RANK_SEED_STRIDE; rank 0's are the single-process streams). A
checkpoint holds the full (unsharded) weights, EMA and optimizer state, written by rank 0,
plus every rank's stream state (state["ranks"]), so resuming on the same number of ranks is
exact; on a different number the weights and optimizer resume exactly and the streams are
re-derived from (seed, step, rank). The EMA is kept in the layout of the online weights: full
on every rank (none/ddp), sharded like the model (fsdp), so its update is local.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from . import parallel
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig, to_yaml
from .data import make_dataset
from .fileio import write_text_atomic
from .history import build_history
from .loss import flow_matching_loss
from .model.dit import CausalVideoDiT
from .model.routing import apply_history_attention, make_layout_fn


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
        e.lerp_(p.detach(), 1 - decay)


class Trainer:
    """Holds the state of a run; `run()` trains until the recipe ends (or `stop_at`)."""

    def __init__(self, cfg: TrainConfig, resume: bool = True, progress: bool = True,
                 init_from: str | Path | None = None):
        self.cfg = cfg
        self.parallel, self.device = parallel.setup(cfg.parallel, resolve_device(cfg.device))
        self.rank, self.world, self.main = parallel.rank(), parallel.world_size(), parallel.is_main()
        o = cfg.optim
        if o.batch_size % (o.grad_accum * self.world):
            raise ValueError(f"optim.batch_size={o.batch_size} is the global batch: it must be a multiple "
                             f"of optim.grad_accum={o.grad_accum} x {self.world} ranks")
        self.run_dir = Path(cfg.run_dir)
        self.progress = progress and self.main
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.model = CausalVideoDiT(copy.deepcopy(cfg.model)).to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        # self.model stays the raw model (history strategies, state dicts); the training
        # forward goes through self.wrapped (DDP wrapper; the model itself under fsdp/none)
        self.wrapped = parallel.wrap_model(self.model, self.parallel, self.device)
        parallel.shard_like_model(self.ema, self.parallel, self.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=tuple(o.betas),
                                     weight_decay=o.weight_decay)
        seed = cfg.seed + parallel.RANK_SEED_STRIDE * self.rank
        self.data = make_dataset(cfg.data, seed=seed)
        self.gen = torch.Generator(device=self.device).manual_seed(seed + 1)
        self.step = 0
        self.total = sum(s.steps for s in cfg.stages)
        self.config_yaml = to_yaml(cfg)
        ckpt = latest_checkpoint(self.run_dir) if resume else None
        if ckpt is None and init_from is not None:
            # branch from another run's checkpoint (e.g. a shared teacher-forcing warm-up):
            # its full state, step included, so the recipe continues where that run stood
            init = Path(init_from)
            ckpt = latest_checkpoint(init) if (init / "checkpoints").is_dir() else init
        ckpt = parallel.broadcast_object(ckpt)  # every rank resumes from rank 0's choice
        if ckpt is not None:
            self._restore(ckpt)
            if ckpt.parent.parent != self.run_dir:
                self._reseed()
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.run_dir / "config.yaml", self.config_yaml)
            self._trim_metrics()

    # -- state ------------------------------------------------------------------------
    def _restore(self, ckpt: Path) -> None:
        model_sd, ema_sd, state = load_checkpoint(ckpt)
        parallel.load_full_state_dict(self.model, model_sd, self.parallel)
        parallel.load_full_state_dict(self.ema, ema_sd, self.parallel)
        parallel.load_full_optim_state_dict(self.model, self.opt, state["optimizer"], self.parallel)
        self.step = state["step"]
        if state.get("world_size", 1) != self.world:
            warnings.warn(f"{ckpt} was written by {state.get('world_size', 1)} rank(s), this run has "
                          f"{self.world}: weights and optimizer resume exactly, the data and noise "
                          f"streams are re-derived from (seed, step, rank)")
            self._reseed()
            return
        streams = state["ranks"][self.rank] if self.world > 1 else state
        self.gen.set_state(streams["generator"])
        torch.set_rng_state(streams["torch_rng"])
        self.data.load_state_dict(streams["data"])

    def _reseed(self) -> None:
        """A branch (init_from) keeps the weights and optimizer of the run it starts from but
        draws its own data and noise, from this run's seed and the branch step, so branches
        with different seeds differ and branches with the same seed see the same stream."""
        offset = 1_000_003 * self.step + parallel.RANK_SEED_STRIDE * self.rank
        self.data = make_dataset(self.cfg.data, seed=self.cfg.seed + offset)
        self.gen.manual_seed(self.cfg.seed + 1 + offset)

    def save(self) -> Path | None:
        """Write a checkpoint (rank 0; every rank must call it: gathering is collective).
        Returns its directory on rank 0, None on the other ranks."""
        mode = self.parallel
        model_sd = parallel.full_state_dict(self.model, mode)
        ema_sd = parallel.full_state_dict(self.ema, mode)
        streams = {"generator": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
                   "data": self.data.state_dict()}
        state = {"optimizer": parallel.full_optim_state_dict(self.model, self.opt, mode),
                 "step": self.step, **streams}
        if self.world > 1:
            state.update(world_size=self.world, ranks=parallel.gather_objects(streams))
        path = None
        if self.main:
            path = save_checkpoint(self.run_dir, self.step, model_sd, ema_sd, state,
                                   self.config_yaml, self.cfg.keep_last)
        parallel.barrier()
        return path

    def _trim_metrics(self) -> None:
        """After a resume, drop logged lines past the checkpoint (they will be re-done)."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        keep = [ln for ln in path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) <= self.step]
        write_text_atomic(path, "".join(ln + "\n" for ln in keep))

    # -- one optimizer step -----------------------------------------------------------
    def train_step(self) -> dict:
        cfg, o = self.cfg, self.cfg.optim
        stage_idx, stage = stage_at(cfg, self.step)
        lr = learning_rate(cfg, self.step)
        for g in self.opt.param_groups:
            g["lr"] = lr
        apply_history_attention(self.model, stage.attention)
        layout_fn = make_layout_fn(stage.attention)
        frames = stage.clip_chunks * cfg.model.frames_per_chunk
        micro = o.batch_size // o.grad_accum // self.world
        t0 = time.perf_counter()
        resample_time, loss_sum = 0.0, 0.0
        self.wrapped.train()
        self.opt.zero_grad(set_to_none=True)
        for k in range(o.grad_accum):
            clean = self.data.batch(micro, frames)[0].to(self.device)
            t1 = time.perf_counter()
            history, t_hist = build_history(stage.history, self.model, clean, self.gen, layout_fn=layout_fn)
            resample_time += time.perf_counter() - t1
            with parallel.no_grad_sync(self.wrapped, skip=k < o.grad_accum - 1):
                loss = flow_matching_loss(self.wrapped, clean, history, t_hist, cfg.timesteps, self.gen,
                                          space=cfg.loss_space)
                (loss / o.grad_accum).backward()
            loss_sum += loss.item() / o.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip if o.grad_clip > 0 else float("inf"))
        self.opt.step()
        self.step += 1
        ema_update(self.ema, self.model, min(o.ema_decay, (1 + self.step) / (10 + self.step)))
        return {"step": self.step, "stage": stage.name, "loss": parallel.all_reduce_mean(loss_sum),
                "lr": lr, "grad_norm": parallel.to_float(grad_norm), "step_time": time.perf_counter() - t0,
                "resample_time": resample_time}

    # -- the loop ---------------------------------------------------------------------
    def run(self, stop_at: int | None = None) -> Path:
        """Train to the end of the recipe (or to global step `stop_at`); returns run_dir."""
        end = self.total if stop_at is None else min(stop_at, self.total)
        bar = tqdm(total=self.total, initial=self.step, disable=not self.progress,
                   desc=f"train {self.run_dir.name}", dynamic_ncols=True)
        with open(self.run_dir / "metrics.jsonl", "a") if self.main else contextlib.nullcontext() as log:
            while self.step < end:
                stage_before = stage_at(self.cfg, self.step)[0]
                m = self.train_step()
                bar.update(1)
                bar.set_postfix(stage=m["stage"], loss=f"{m['loss']:.4f}")
                if self.main and (self.step % self.cfg.log_every == 0 or self.step == end):
                    log.write(json.dumps(m) + "\n")
                    log.flush()
                stage_changes = self.step < self.total and stage_at(self.cfg, self.step)[0] != stage_before
                if self.step % self.cfg.ckpt_every == 0 or self.step == end or stage_changes:
                    self.save()
        bar.close()
        return self.run_dir


def train(cfg: TrainConfig, resume: bool = True, stop_at: int | None = None, progress: bool = True,
          init_from: str | Path | None = None) -> Path:
    owns_group = not parallel.is_distributed()  # torchrun: set up by the Trainer, shut down here
    try:
        return Trainer(cfg, resume=resume, progress=progress, init_from=init_from).run(stop_at)
    finally:
        if owns_group:
            parallel.shutdown()
