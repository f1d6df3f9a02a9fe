"""The training loop, readable top to bottom.

step: pick the stage -> set lr -> for each micro-batch: draw clips (and their text context,
text_context.py), build the history with the stage's strategy (no grad), one two-stream
forward (or, with `history_grad: false`, a forward of the noisy stream over history
keys/values made without gradient: detached_history.py), velocity MSE, backward -> clip ->
AdamW -> EMA -> log -> checkpoint. Resume = model + EMA + optimizer + step + RNG states +
data-stream position, so a stopped-and-resumed run ends with the same weights, bit for bit.

Safety (resforce issue 9): one trainer per run_dir (runlock.py; rank 0 holds the lock);
`resume=False` on a directory that already holds a run is refused unless `overwrite`, which
moves the old run aside first (run_dir.old-<time>); leftovers of a crash mid-save are cleaned
up at start; resume takes the newest checkpoint that loads, moving damaged ones aside with a
warning; a step whose loss or gradient is NaN/inf is skipped (weights, optimizer and EMA
untouched), and more than `max_nonfinite_skips` in a row stop the run with an error naming the
step; checkpoints are never written with NaN/inf in them (checkpoint.py).

Under torchrun (cfg.parallel, see parallel.py) every rank runs this loop on its share of the
global batch (optim.batch_size / ranks per step) with its own data and noise streams (seeds
offset by rank * parallel.RANK_SEED_STRIDE; rank 0's are the single-process streams). A
checkpoint holds the full (unsharded) weights, EMA and optimizer state, written by rank 0,
plus every rank's stream state (state["ranks"]), so resuming on the same number of ranks is
exact; on a different number the weights and optimizer resume exactly and the streams are
re-derived from (seed, step, rank). The EMA is kept in the layout of the online weights: full
on every rank (none/ddp), sharded like the model (fsdp), so its update is local.

Starting points: random weights (seeded), a checkpoint (resume, --init-from), or a local Wan
folder (init.wan; wan.py). When the weights will be loaded, the model and EMA are built on the
meta device, sharded (fsdp), and only then allocated, so under fsdp no rank ever holds them in
full on its device; rank 0 alone reads the checkpoint or Wan folder (on the CPU) and each
tensor is broadcast, every rank keeping its shard (parallel.load_full_state_dict). A noise
generator state saved on another device type (CPU vs CUDA) cannot be loaded: that stream is
re-derived from (seed, step, rank), with a warning.
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

from resforce.training import distributed as parallel

from resforce import device as precision
from resforce.training.checkpoint import (CheckpointDamaged, CheckpointError, check_fits, checkpoint_dirs, latest_checkpoint,
                         load_checkpoint, move_aside, recover_interrupted_saves, save_checkpoint)
from resforce.config import TrainConfig, to_yaml
from resforce.worlds import world_of
from resforce.io.fileio import write_text_atomic
from resforce.training.detached_history import history_kv
from resforce.history import build_history, build_history_and_cache
from resforce.loss import flow_matching_loss
from resforce.training.calibration import Calibration
from resforce.training.previous_step_history import PreviousStepHistory
from resforce.model.dit import CausalVideoDiT
from resforce.model.attention.policy import AttentionPolicy
from resforce.training.rundir import METRICS, open_run_dir, read_metrics
from resforce.actions import training_actions
from resforce.text_context import context_of, training_context


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
def copy_weights(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    """dst's parameters := src's, tensor by tensor in the layout both share (under fsdp each
    rank copies its own shards: no communication, nothing gathered)."""
    for d, s in zip(dst.parameters(), src.parameters()):
        d.copy_(s.detach())


def _meta_model(cfg: TrainConfig) -> CausalVideoDiT:
    """The run's model on the meta device: shapes only, no memory, no random numbers drawn."""
    with torch.device("meta"):
        return CausalVideoDiT(copy.deepcopy(cfg.model))


def _check_start(cfg: TrainConfig, init_from) -> None:
    """A new run starts from one place: --init-from (a resforce run or checkpoint) or init.wan."""
    if init_from is None:
        return
    from resforce.wan.transformer import is_wan_folder

    if is_wan_folder(init_from):
        raise ValueError(f"--init-from {init_from} is a Wan (diffusers) folder: set init.wan={init_from} "
                         f"in the config instead (`resforce train --init-from` does it for you), so the "
                         f"model's shape is read from the folder when the config loads")
    if cfg.init.wan is not None:
        raise ValueError(f"init.wan={cfg.init.wan} and --init-from {init_from} both give the starting "
                         f"weights: keep one")
    if not Path(init_from).exists():
        raise FileNotFoundError(f"--init-from {init_from} does not exist (expected a run directory "
                                f"or a checkpoint directory)")


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - decay)


def on_main(fn):
    """fn() on rank 0 (the only process without torchrun). Under torchrun its error reaches
    every rank, so a failure on rank 0 (a locked run_dir, a full disk) stops all ranks instead of
    leaving them waiting in the next collective. Returns fn()'s result on rank 0, None elsewhere."""
    if not parallel.is_distributed():
        return fn()
    result = error = None
    if parallel.is_main():
        try:
            result = fn()
        except Exception as e:
            error = e
    message = parallel.broadcast_object(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if message is not None:
        raise RankZeroError(f"rank 0 failed: {message}")
    return result


class RankZeroError(ValueError):
    """Raised on ranks > 0 when rank 0 failed in on_main."""


class Trainer:
    """Holds the state of a run; `run()` trains until the recipe ends (or `stop_at`).

    The run directory is locked from construction to the end of run() (or close())."""

    def __init__(self, cfg: TrainConfig, resume: bool = True, progress: bool = True,
                 init_from: str | Path | None = None, overwrite: bool = False):
        self.cfg = cfg
        self.parallel, self.device = parallel.setup(cfg.parallel, parallel.resolve_device(cfg.device))
        precision.enable_tf32(self.device)
        self.rank, self.world, self.main = parallel.rank(), parallel.world_size(), parallel.is_main()
        o = cfg.optim
        if o.batch_size % (o.grad_accum * self.world):
            raise ValueError(f"optim.batch_size={o.batch_size} is the global batch: it must be a multiple "
                             f"of optim.grad_accum={o.grad_accum} x {self.world} ranks")
        self.run_dir = Path(cfg.run_dir)
        self.progress = progress and self.main
        _check_start(cfg, init_from)  # before the run_dir is created
        self.lock = on_main(lambda: open_run_dir(self.run_dir, resume, overwrite))
        try:
            self._build(resume, init_from)
        except BaseException:
            self.close()
            raise

    def _build(self, resume: bool, init_from) -> None:
        cfg, o = self.cfg, self.cfg.optim
        self.config_yaml = to_yaml(cfg)
        self._loaded = None  # (checkpoint, its contents) read by rank 0 while choosing it
        ckpt = on_main(lambda: self._pick_checkpoint(resume, init_from))
        ckpt = parallel.broadcast_object(ckpt)  # every rank resumes from rank 0's choice
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        # weights that will be loaded (a checkpoint, Wan) are never initialised: the model is
        # built on the meta device and each rank allocates only what it holds (its shards)
        self._new_models(random_init=ckpt is None and cfg.init.wan is None)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=tuple(o.betas),
                                     weight_decay=o.weight_decay)
        seed = cfg.seed + parallel.RANK_SEED_STRIDE * self.rank
        self.data = world_of(cfg.data).stream(seed)
        self.gen = torch.Generator(device=self.device).manual_seed(seed + 1)
        self.step = 0
        self.nonfinite_streak = 0
        """Non-finite steps in a row so far (checkpointed, so a resume stops where a run would)."""
        self.total = sum(s.steps for s in cfg.stages)
        self._warned_empty_prompt = False
        self.calibration, self.previous = Calibration(), PreviousStepHistory()  # history variants' state
        if ckpt is not None:
            self._restore(ckpt)
            if ckpt.parent.parent != self.run_dir:
                self._reseed()
        elif cfg.init.wan is not None:
            self._start_from_wan()
        if self.main:
            write_text_atomic(self.run_dir / "config.yaml", self.config_yaml)
            self._trim_metrics()

    def _new_models(self, random_init: bool) -> None:
        """self.model (and self.wrapped, the module of the training forward) and self.ema, laid
        out for the parallel mode. random_init: the seeded initial weights, built in full on
        every rank (a run from scratch); else the model is built on the meta device, sharded
        (fsdp) and only then allocated, its values left for a checkpoint or Wan to fill. The
        EMA is always built on the meta device, laid out like the model and filled from the
        model's own (local) tensors, so it is never held in full under fsdp."""
        cfg, mode, device = self.cfg, self.parallel, self.device
        if random_init:
            self.model = CausalVideoDiT(copy.deepcopy(cfg.model)).to(self.device)
        else:
            self.model = _meta_model(cfg)
        # self.model stays the raw model (history strategies, state dicts); the training
        # forward goes through self.wrapped (DDP wrapper; the model itself under fsdp/none)
        # the online model only: the EMA never runs a backward (a no-op for 'none')
        parallel.apply_activation_checkpointing(self.model, cfg.model.gradient_checkpointing)
        self.wrapped = parallel.wrap_model(self.model, mode, device)
        self.ema = parallel.shard_like_model(_meta_model(cfg).eval().requires_grad_(False), mode, device)
        copy_weights(self.ema, self.model)

    def _start_from_wan(self) -> None:
        """Model and EMA from the Wan folder of init.wan (a new run: optimizer fresh, step 0).
        fsdp: rank 0 alone reads the folder and each tensor is broadcast, every rank keeping
        its shard; none/ddp: every rank reads it (each holds the full model anyway)."""
        from resforce.wan.transformer import read_wan_state_dict

        def read():
            return read_wan_state_dict(self.cfg.init.wan, self.cfg.model)

        sd = on_main(read) if self.parallel == "fsdp" else read()
        parallel.load_full_state_dict(self.model, sd, self.parallel)
        del sd
        copy_weights(self.ema, self.model)

    def close(self) -> None:
        """Release the run directory (idempotent; run() calls it when it ends)."""
        if getattr(self, "lock", None) is not None:
            self.lock.release()
            self.lock = None

    # -- state ------------------------------------------------------------------------
    def _pick_checkpoint(self, resume: bool, init_from) -> Path | None:
        """Rank 0: the newest checkpoint of this run that loads (resume), else `init_from`'s.
        Damaged newer ones are moved aside with a warning saying why; if none loads, an error
        lists them all and nothing is moved. A checkpoint of another model is an error."""
        expected = _meta_model(self.cfg).state_dict()  # names and shapes only
        damaged = []
        for ckpt in reversed(checkpoint_dirs(self.run_dir) if resume else []):
            try:
                data = load_checkpoint(ckpt)
            except CheckpointDamaged as e:
                damaged.append((ckpt, e))
                continue
            check_fits(ckpt, data[0], expected)
            for bad, why in damaged:
                warnings.warn(f"skipped checkpoint {bad.name} ({why}); moved it to "
                              f"{move_aside(bad).name}; resuming from {ckpt.name}", stacklevel=2)
            self._loaded = (ckpt, data)
            return ckpt
        if damaged:
            raise CheckpointError(f"no checkpoint of {self.run_dir} loads: "
                                  + "; ".join(str(why) for _, why in damaged)
                                  + ". Repair them, or start over with --no-resume --overwrite "
                                    "(moves this run aside)")
        if init_from is None:
            return None
        init = Path(init_from)
        if not init.exists():
            raise FileNotFoundError(f"--init-from {init} does not exist (expected a run directory "
                                    f"or a checkpoint directory)")
        ckpt = latest_checkpoint(init) if (init / "checkpoints").is_dir() else init
        if ckpt is None:
            raise FileNotFoundError(f"--init-from {init}: that run has no checkpoints yet")
        data = load_checkpoint(ckpt)
        check_fits(ckpt, data[0], expected)
        self._loaded = (ckpt, data)
        return ckpt

    def _restore(self, ckpt: Path) -> None:
        """Resume from `ckpt` (a full-state checkpoint, read on the CPU). fsdp: rank 0 alone
        holds it (it read it while choosing it); every tensor is broadcast from rank 0 and each
        rank keeps its shard, on its own device (weights, EMA, optimizer moments), and the rest
        of the state is broadcast as data. none/ddp: every rank reads it (each holds the full
        model); optimizer tensors go to each parameter's own device."""
        mode = self.parallel
        loaded, self._loaded = self._loaded, None
        if mode == "fsdp" and not self.main:
            model_sd = ema_sd = state = None
        else:
            model_sd, ema_sd, state = loaded[1] if loaded and loaded[0] == ckpt else load_checkpoint(ckpt)
        del loaded
        parallel.load_full_state_dict(self.model, model_sd, mode)
        parallel.load_full_state_dict(self.ema, ema_sd, mode)
        del model_sd, ema_sd
        parallel.load_full_optim_state_dict(self.model, self.opt, None if state is None else state["optimizer"], mode)
        if mode == "fsdp":
            state = parallel.broadcast_object(None if state is None else
                                              {k: v for k, v in state.items() if k != "optimizer"})
        self.step = state["step"]
        self.nonfinite_streak = int(state.get("nonfinite_streak", 0))
        self.calibration.load_state_dict(state.get("calibration"))
        self.previous.load_state_dict(state.get("previous_step"), self.device)
        if state.get("world_size", 1) != self.world:
            warnings.warn(f"{ckpt} was written by {state.get('world_size', 1)} rank(s), this run has "
                          f"{self.world}: weights and optimizer resume exactly, the data and noise "
                          f"streams are re-derived from (seed, step, rank)")
            self._reseed()
            return
        streams = state["ranks"][self.rank] if self.world > 1 else state
        self._restore_noise(ckpt, streams)
        torch.set_rng_state(streams["torch_rng"])
        self.data.load_state_dict(streams["data"])

    def _restore_noise(self, ckpt: Path, streams: dict) -> None:
        """The noise generator from its saved state; a state saved by a generator of another
        device type (a CPU state on a CUDA run or back: they cannot be converted) re-derives
        the noise stream from (seed, step, rank) instead, with a warning."""
        saved, here = streams.get("generator_device"), self.gen.device.type
        try:
            if saved is not None and saved != here:
                raise ValueError(f"it was saved by a {saved} generator")
            self.gen.set_state(streams["generator"])
        except (RuntimeError, ValueError, TypeError) as e:
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            warnings.warn(f"{ckpt}: the noise generator state does not load into this run's {here} "
                          f"generator ({why}); the training noise is re-derived from (seed, step, rank), "
                          f"the weights, optimizer and data stream resume exactly")
            self._reseed_noise()

    def _branch_offset(self) -> int:
        return 1_000_003 * self.step + parallel.RANK_SEED_STRIDE * self.rank

    def _reseed(self) -> None:
        """A branch (init_from) keeps the weights and optimizer of the run it starts from but
        draws its own data and noise, from this run's seed and the branch step, so branches
        with different seeds differ and branches with the same seed see the same stream."""
        self.data = world_of(self.cfg.data).stream(self.cfg.seed + self._branch_offset())
        self._reseed_noise()

    def _reseed_noise(self) -> None:
        self.gen.manual_seed(self.cfg.seed + 1 + self._branch_offset())

    def save(self) -> Path | None:
        """Write a checkpoint (rank 0; every rank must call it: gathering is collective).
        Returns its directory on rank 0, None on the other ranks. Refuses NaN/inf weights
        (NonFiniteCheckpoint) and reports a failed write (CheckpointWriteError) on every rank."""
        mode = self.parallel
        model_sd = parallel.full_state_dict(self.model, mode)
        ema_sd = parallel.full_state_dict(self.ema, mode)
        streams = {"generator": self.gen.get_state(), "generator_device": self.gen.device.type,
                   "torch_rng": torch.get_rng_state(), "data": self.data.state_dict()}
        state = {"optimizer": parallel.full_optim_state_dict(self.model, self.opt, mode),
                 "step": self.step, "nonfinite_streak": self.nonfinite_streak, **streams}
        if self.calibration.shifts or self.previous.clean:  # history variants (calibration.py, previous_step_history.py)
            state.update(calibration=self.calibration.state_dict(), previous_step=self.previous.state_dict())
        if self.world > 1:
            state.update(world_size=self.world, ranks=parallel.gather_objects(streams))
        path = on_main(lambda: save_checkpoint(self.run_dir, self.step, model_sd, ema_sd, state,
                                               self.config_yaml, self.cfg.keep_last))
        parallel.barrier()
        return path

    def _trim_metrics(self) -> None:
        """After a resume, drop logged lines past the checkpoint (they will be re-done), and
        lines that are not JSON (a half-written last line; read_metrics warns)."""
        path = self.run_dir / METRICS
        if not path.exists():
            return
        keep = [r for r in read_metrics(path) if isinstance(r.get("step", 0), int) and r.get("step", 0) <= self.step]
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in keep))

    # -- one optimizer step -----------------------------------------------------------
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
        self.wrapped.train()
        self.opt.zero_grad(set_to_none=True)
        forward = lambda: precision.autocast(cfg.precision, self.device)  # noqa: E731 (forward passes only)
        for k in range(o.grad_accum):
            if stage.history.history_from_previous_step:  # no resampling pass: previous_step_history.py
                loss_sum = loss_sum + self.previous.micro_step(self, k, micro, frames, attention, forward) / o.grad_accum
                continue
            clean, info = self.data.batch(micro, frames)
            clean = clean.to(self.device)
            context = self._text_context(info, micro)
            actions = training_actions(info, cfg.model, self.device, self.gen)
            t1 = time.perf_counter()
            with forward():
                if stage.history_grad:
                    history, t_hist = build_history(stage.history, self.model, clean, self.gen, context=context,
                                                    attention=attention, actions=actions)
                    kv = None
                else:  # detached history: the noisy stream reads history keys/values made without gradient
                    history, t_hist, cache = build_history_and_cache(stage.history, self.model, clean, self.gen,
                                                                     context=context, attention=attention,
                                                                     skip_last=True, actions=actions)
                    kv = history_kv(stage.history, self.model, history, t_hist, cache, attention, context, actions)
            resample_time += time.perf_counter() - t1
            with parallel.no_grad_sync(self.wrapped, skip=k < o.grad_accum - 1):
                with forward():
                    loss = flow_matching_loss(self.wrapped, clean, history, t_hist, cfg.timesteps, self.gen,
                                              context=context, space=cfg.loss_space, attention=attention,
                                              history_kv=kv, actions=actions)
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
        """The text context of a micro-batch (text_context.training_context): the data's, or
        the empty-prompt stand-in for a text model on a world without text (warned once)."""
        text_dim = self.cfg.model.text_dim
        context = training_context(info, text_dim, self.cfg.text, batch, self.device, self.gen)
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
    try:
        return Trainer(cfg, resume=resume, progress=progress, init_from=init_from,
                       overwrite=overwrite).run(stop_at)
    finally:
        if owns_group:
            parallel.shutdown()
