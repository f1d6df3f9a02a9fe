"""A run's state: build (random, a checkpoint, a Wan folder), resume and restore exactly,
reseed the streams, save; the rank-0 helpers. Trainer (loop.py) holds it; see loop.py's
docstring for what a checkpoint holds and how resume stays exact."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch

from resforce.training import distributed as parallel
from resforce.training.activation_checkpoint import apply_activation_checkpointing

from resforce.training.checkpoint import CheckpointDamaged, CheckpointError, check_fits, checkpoint_dirs, latest_checkpoint, load_checkpoint, move_aside, save_checkpoint
from resforce.io.sharded_weights import is_sharded
from resforce.training.sharded_checkpoint import (PARAM_GROUPS, inspect_for_resume, load_sharded_checkpoint,
                                                  save_sharded_checkpoint, verify_sharded_checkpoint)
from resforce.config import TrainConfig, to_yaml
from resforce.worlds import world_of
from resforce.io.fileio import write_text_atomic
from resforce.training.calibration import Calibration
from resforce.training.previous_step_history import PreviousStepHistory
from resforce.model.dit import CausalVideoDiT
from resforce.model.lora import apply_lora, lora_state_dict_from_base, tie_frozen
from resforce.training.rundir import METRICS, read_metrics



@torch.no_grad()
def copy_weights(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    """dst's parameters := src's, tensor by tensor in the layout both share (under fsdp each
    rank copies its own shards: no communication, nothing gathered)."""
    for d, s in zip(dst.parameters(), src.parameters()):
        d.copy_(s.detach())


def _meta_model(cfg: TrainConfig) -> CausalVideoDiT:
    """The run's model on the meta device (with its LoRA adapters when cfg.lora.rank > 0):
    shapes only, no memory, no random numbers drawn."""
    with torch.device("meta"):
        return apply_lora(CausalVideoDiT(copy.deepcopy(cfg.model)), cfg.lora)


def check_start(cfg: TrainConfig, init_from, resume: bool = True) -> None:
    """A new run starts from one place: --init-from (a resforce run or checkpoint) or init.wan.
    A new run from init.wan has its weights checked here, from the safetensors headers only
    (present, complete, keys and shapes fit the config), before any model is built or the run
    directory is created; a run that will resume from its own checkpoint does not read them.
    Called on every rank (after the process group is up); rank 0 reads the folder."""
    from resforce.wan.folder import is_wan_folder
    from resforce.wan.transformer import check_wan_weights

    if init_from is None:
        if cfg.init.wan is not None and not (resume and checkpoint_dirs(cfg.run_dir)):
            on_main(lambda: check_wan_weights(cfg.init.wan, cfg.model))
        return

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


def _read_for_resume(ckpt: Path) -> tuple:
    """What rank 0 reads of a checkpoint while choosing it: (model_sd, ema_sd, state) of a full
    one; (model tensor shapes, None, state.json's state) of a sharded one, whose shards are
    read later by every rank, each its own pieces. CheckpointDamaged if it does not load."""
    if is_sharded(ckpt):
        shapes, state = inspect_for_resume(ckpt)
        return shapes, None, state
    return load_checkpoint(ckpt)


class RunState:
    """The state half of Trainer: what a run holds and how it is built, restored and saved."""

    def _build(self, resume: bool, init_from) -> None:
        cfg, o = self.cfg, self.cfg.optim
        self.config_yaml = to_yaml(cfg)
        self._loaded = None  # (checkpoint, its contents) read by rank 0 while choosing it
        ckpt = self._choose_checkpoint(resume, init_from)  # every rank resumes from rank 0's choice
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
        """self.model and self.ema, laid out for the parallel mode (in place: one handle for
        the training forward, the history passes and the state dicts). random_init: the seeded initial weights, built in full on
        every rank (a run from scratch); else the model is built on the meta device, sharded
        (fsdp) and only then allocated, its values left for a checkpoint or Wan to fill. The
        EMA is always built on the meta device, laid out like the model and filled from the
        model's own (local) tensors, so it is never held in full under fsdp."""
        cfg, mode, device = self.cfg, self.parallel, self.device
        if random_init:
            self.model = apply_lora(CausalVideoDiT(copy.deepcopy(cfg.model)), cfg.lora).to(self.device)
        else:
            self.model = _meta_model(cfg)
        # the online model only: the EMA never runs a backward (a no-op for 'none')
        apply_activation_checkpointing(self.model, cfg.model.gradient_checkpointing)
        if cfg.compile:  # regional: each block, after checkpointing, before FSDP (torchtitan's order)
            from resforce.training.compile import compile_blocks

            compile_blocks(self.model)
        parallel.apply_data_parallel(self.model, mode, device)
        self.ema = parallel.shard_like_model(_meta_model(cfg).eval().requires_grad_(False), mode, device)
        copy_weights(self.ema, self.model)
        if cfg.lora.enabled and mode != "fsdp":  # LoRA: the frozen base is its own EMA, held once
            tie_frozen(self.ema, self.model)

    def _start_from_wan(self) -> None:
        """Model and EMA from the Wan folder of init.wan (a new run: optimizer fresh, step 0).
        fsdp: rank 0 alone reads the folder and each tensor is broadcast, every rank keeping
        its shard; none/ddp: every rank reads it (each holds the full model anyway)."""
        from resforce.wan.folder import read_wan_state_dict

        def read():
            sd = read_wan_state_dict(self.cfg.init.wan, self.cfg.model)
            if self.cfg.lora.enabled:  # peft's names, adapters at their initial values
                sd = lora_state_dict_from_base(sd, _meta_model(self.cfg))
            return sd

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
    def _choose_checkpoint(self, resume: bool, init_from) -> Path | None:
        """The checkpoint to start from, the same on every rank. Rank 0 picks it
        (_pick_checkpoint); a sharded one is then verified by all ranks together, each hashing
        its share of the shards, and a damaged one is skipped like any other. Only then are the
        damaged newer ones moved aside (if none loads, nothing is)."""
        failed: dict[Path, CheckpointDamaged] = {}

        def pick():
            ckpt = self._pick_checkpoint(resume, init_from, failed)
            return ckpt, ckpt is not None and is_sharded(ckpt)

        while True:
            ckpt, self._sharded = parallel.broadcast_object(on_main(pick))
            why = verify_sharded_checkpoint(ckpt) if self._sharded else None
            if why is None:
                on_main(lambda: self._move_damaged_aside(ckpt))
                return ckpt
            failed[ckpt] = CheckpointDamaged(f"checkpoint {ckpt}: {why}")
            if ckpt.parent.parent != self.run_dir:  # --init-from's checkpoint: no fallback
                raise failed[ckpt]

    def _pick_checkpoint(self, resume: bool, init_from, failed: dict) -> Path | None:
        """Rank 0: the newest checkpoint of this run that loads (resume), else `init_from`'s.
        Damaged newer ones (and those in `failed`) are noted for _move_damaged_aside; if none
        loads, an error lists them all. A checkpoint of another model is an error. A sharded
        checkpoint gets every check that reads no tensor here (its shards are hashed next, by
        all ranks)."""
        expected = _meta_model(self.cfg).state_dict()  # names and shapes only
        damaged = []
        for ckpt in reversed(checkpoint_dirs(self.run_dir) if resume else []):
            try:
                if ckpt in failed:
                    raise failed[ckpt]
                data = _read_for_resume(ckpt)
            except CheckpointDamaged as e:
                damaged.append((ckpt, e))
                failed[ckpt] = e
                continue
            check_fits(ckpt, data[0], expected)
            self._damaged = damaged
            self._loaded = (ckpt, data)
            return ckpt
        if damaged:
            raise CheckpointError(f"no checkpoint of {self.run_dir} loads: "
                                  + "; ".join(str(why) for _, why in damaged)
                                  + ". Repair them, or start over with --no-resume --overwrite "
                                    "(moves this run aside)")
        self._damaged = []
        if init_from is None:
            return None
        init = Path(init_from)
        if not init.exists():
            raise FileNotFoundError(f"--init-from {init} does not exist (expected a run directory "
                                    f"or a checkpoint directory)")
        ckpt = latest_checkpoint(init) if (init / "checkpoints").is_dir() else init
        if ckpt is None:
            raise FileNotFoundError(f"--init-from {init}: that run has no checkpoints yet")
        data = _read_for_resume(ckpt)
        check_fits(ckpt, data[0], expected)
        self._loaded = (ckpt, data)
        return ckpt

    def _move_damaged_aside(self, chosen: Path | None) -> None:
        """Rank 0, once `chosen` is known to load: the damaged newer checkpoints go aside, each
        with a warning saying why."""
        for bad, why in getattr(self, "_damaged", []):
            warnings.warn(f"skipped checkpoint {bad.name} ({why}); moved it to "
                          f"{move_aside(bad).name}; resuming from {chosen.name}", stacklevel=3)
        self._damaged = []

    def _restore(self, ckpt: Path) -> None:
        """Resume from `ckpt`. A full checkpoint (read on the CPU) under fsdp: rank 0 alone
        holds it (it read it while choosing it); every tensor is broadcast from rank 0 and each
        rank keeps its shard, on its own device (weights, EMA, optimizer moments), and the rest
        of the state is broadcast as data. none/ddp: every rank reads it (each holds the full
        model); optimizer tensors go to each parameter's own device. A sharded checkpoint (any
        mode): each rank reads its own pieces (sharded_checkpoint.load_sharded_checkpoint), and
        rank 0's state.json is broadcast."""
        mode = self.parallel
        loaded, self._loaded = self._loaded, None
        if self._sharded:  # rank 0's finding, on every rank (_choose_checkpoint)
            state = None
            if self.main:
                state = (loaded[1] if loaded and loaded[0] == ckpt else _read_for_resume(ckpt))[2]
            del loaded
            state = parallel.broadcast_object(state)
            load_sharded_checkpoint(ckpt, self.model, self.ema, self.opt, state[PARAM_GROUPS])
            self._restore_streams(ckpt, state)
            return
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
        self._restore_streams(ckpt, state)

    def _restore_streams(self, ckpt: Path, state: dict) -> None:
        """Everything but the weights and optimizer: step, counters, history variants' state,
        and this rank's data and noise streams (re-derived when the rank count changed)."""
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
        """Write a checkpoint (every rank must call it: gathering, or under
        checkpoint_format=sharded every rank's own write, is collective). Returns its directory
        on rank 0, None on the other ranks. Refuses NaN/inf weights (NonFiniteCheckpoint) and
        reports a failed write (CheckpointWriteError) on every rank."""
        mode, sharded = self.parallel, self.cfg.checkpoint_format == "sharded"
        if not sharded:
            model_sd = parallel.full_state_dict(self.model, mode)
            ema_sd = parallel.full_state_dict(self.ema, mode)
        streams = {"generator": self.gen.get_state(), "generator_device": self.gen.device.type,
                   "torch_rng": torch.get_rng_state(), "data": self.data.state_dict()}
        state = {"step": self.step, "nonfinite_streak": self.nonfinite_streak, **streams}
        if not sharded:
            state = {"optimizer": parallel.full_optim_state_dict(self.model, self.opt, mode), **state}
        if self.calibration.shifts or self.previous.clean:  # history variants (calibration.py, previous_step_history.py)
            state.update(calibration=self.calibration.state_dict(), previous_step=self.previous.state_dict())
        if self.world > 1:
            state.update(world_size=self.world, ranks=parallel.gather_objects(streams))
        if sharded:
            path = save_sharded_checkpoint(self.run_dir, self.step, self.model, self.ema, self.opt, state,
                                           self.config_yaml, self.cfg.keep_last)
        else:
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
