"""The recipe: typed configuration dataclasses (one docstring per field) and their checks.

OmegaConf validates against the dataclasses: an unknown key or a value of the wrong type is
an error naming the key. Lists index with numbers: `stages.1.steps=500`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, make_dataclass


from resforce.flow import TimestepSampler
from resforce.history import HistoryConfig
from resforce.model.dit import DiTConfig
from resforce.model.attention.config import HistoryAttentionConfig
from resforce.device import PRECISIONS
from resforce.model.config import checkpoint_mode
from resforce.model.lora import LoraConfig
from resforce.rollout import SampleConfig
from resforce.text_context import TextConfig
from resforce.worlds import WORLDS, known_kinds, world_of


GRAD_SYNCS = ("auto", "every", "last")
"""optim.grad_sync: when gradient-accumulation micro-batches reduce their gradients."""
CHECKPOINT_FORMATS = ("full", "sharded")
"""checkpoint_format: how a checkpoint lays out the weights, EMA and optimizer state."""


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message names the key."""


def _data_config() -> type:
    """DataConfig: `kind` plus one section per registered world (its World.config_class), so a
    new world is one folder and one registry line, never an edit here."""
    fields = [("kind", str, field(default="bouncing_balls"))]
    fields += [(k, w.config_class, field(default_factory=w.config_class)) for k, w in WORLDS.items()]
    cls = make_dataclass("DataConfig", fields, namespace={"__module__": __name__})
    cls.__doc__ = ("Where training clips come from. kind: the world (resforce.worlds registry: "
                   + known_kinds() + "); one section per world: "
                   + "; ".join(f"{k}: {w.config_doc}" for k, w in WORLDS.items()))
    return cls


DataConfig = _data_config()


@dataclass
class OptimConfig:
    """AdamW, learning-rate schedule, batch, EMA."""

    lr: float = 1e-3
    """Peak learning rate (the paper: 5e-5 on Wan2.1-1.3B)."""
    betas: tuple[float, float] = (0.9, 0.99)
    """AdamW's (beta1, beta2): decay rates of the gradient's first and second moments."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay (0 = none)."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up from 0 at the start of training."""
    schedule: str = "constant"
    """'constant' or 'cosine' (to 10% of lr at the last step) after warm-up."""
    grad_clip: float = 1.0
    """Max global gradient norm; 0 disables clipping."""
    batch_size: int = 16
    """Clips per optimizer step (summed over accumulation micro-batches)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; batch_size must be a multiple of it."""
    grad_sync: str = "auto"
    """When gradients are reduced over the ranks with grad_accum > 1: 'every' micro-batch
    (FSDP2 reduce-scatters each one and keeps only its gradient shard between them), 'last'
    (only the last micro-batch syncs: less communication, but FSDP2 then holds the full fp32
    gradients of every block between micro-batches: +5.3 GiB per GPU for Wan2.1-1.3B) or
    'auto' ('every' under fsdp, 'last' under ddp, where gradients are full anyway)."""
    ema_decay: float = 0.995
    """EMA of the weights, used for sampling; warmed up as min(decay, (1+step)/(10+step))."""


@dataclass
class StageConfig:
    """One stage of a recipe: e.g. teacher-forcing warm-up, then Resampling Forcing."""

    name: str = "stage"
    """Logged with every step of the stage (metrics.jsonl `stage`)."""
    steps: int = 1000
    """Optimizer steps of this stage; stages run one after the other (0 skips it)."""
    history: HistoryConfig = field(default_factory=HistoryConfig)
    """How the history the noisy chunks see is built (teacher forcing, resampling, ...)."""
    clip_chunks: int = 8
    """Training clip length in chunks."""
    lr: float | None = None
    """Learning rate for this stage (None: optim.lr)."""
    attention: HistoryAttentionConfig = field(default_factory=HistoryAttentionConfig)
    """History attention during this stage: dense, routed top-k, or window."""
    history_grad: bool = True
    """true: the paper's two-stream pass, gradients through the history stream and the noisy
    stream. false: detached history: the noisy stream attends to history keys/values computed
    without gradient (self-resampling's own KV cache, or one no-grad block-causal pass for the
    other strategies) and only the noisy stream runs with autograd; same loss value, about
    half the trained tokens (resforce.training.detached_history)."""
    loss_motion_weight: float | None = None
    """This stage's loss_motion_weight (the extra loss weight of what moves); None: the run's."""


@dataclass
class InitConfig:
    """Where a new run's weights come from (a resumed run takes its own checkpoint instead)."""

    wan: str | None = None
    """A local diffusers Wan2.1 transformer folder (config.json + diffusion_pytorch_model*
    .safetensors) or a Wan pipeline folder (its transformer/ subfolder): the model and its EMA
    start from these weights. The model's shape comes from the folder's config.json when the
    config loads; model.* may set what the weights do not fix (frames_per_chunk, default 3,
    attention_backend, gradient_checkpointing), and a YAML value of a field the weights fix
    (WAN_FIXED_FIELDS) that differs from the folder's is an error. Never downloads."""


@dataclass
class TrainConfig:
    """A whole training run."""

    model: DiTConfig = field(default_factory=DiTConfig)
    """The network (shapes, prediction target); `model.preset: tiny` starts from a preset."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where the training clips come from (the run's world)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer, learning-rate schedule, batch and EMA."""
    timesteps: TimestepSampler = field(default_factory=TimestepSampler)
    """Distribution of the training timesteps t^i of the noisy chunks."""
    loss_space: str = "velocity"
    """'velocity' (the paper's velocity MSE) or 'x0' (the same error measured on the clean
    video: velocity MSE weighted by t^2; steadier for x0-predicting models)."""
    loss_motion_weight: float = 0.0
    """Extra loss weight of what moves in the ground truth (resforce.loss.weigh_motion): each
    element's squared error times 1 + w where the frame differs from the clip's previous frame
    (grown by one pixel), 1 elsewhere. 0 (default): the plain loss. For worlds whose moving
    objects are a tiny share of the frame (Atari: a ball, paddles). A stage may set its own
    (stages.N.loss_motion_weight)."""
    loss_motion_threshold: float = 0.1
    """What counts as moving for loss_motion_weight: a change larger than this in any channel
    between consecutive frames (data values in [-1, 1])."""
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    """The recipe: stages run in order (e.g. teacher-forcing warm-up, then resampling)."""
    sample: SampleConfig = field(default_factory=SampleConfig)
    """Defaults for `resforce generate` / `eval` with this run."""
    text: TextConfig = field(default_factory=TextConfig)
    """The text context of a model with cross-attention (model.text_dim > 0): the empty-prompt
    stand-in for worlds without text, caption dropout (resforce.text_context)."""
    init: InitConfig = field(default_factory=InitConfig)
    """Where a new run's weights come from: init.wan (a local Wan folder), else random."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Low-rank adapters (peft) on the transformer blocks; lora.rank > 0 trains the adapters
    alone, the base weights frozen (resforce.model.lora). rank 0 (default): full fine-tuning."""
    run_dir: str = "runs/default"
    """Directory of the run: checkpoints/, metrics.jsonl, config.yaml (one trainer at a time)."""
    seed: int = 0
    """Seed of the initial weights, the data stream and the training noise."""
    device: str = "auto"
    """'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ..."""
    precision: str = "fp32"
    """'fp32', or 'bf16': the model's forward passes (training, self-resampling, generation on
    CUDA) run under bf16 autocast with float32 master weights and optimizer (resforce.device).
    For CUDA: on the CPU bf16 autocast measured ~29x slower (a warning says so)."""
    parallel: str = "auto"
    """Multi-process data parallelism (resforce.training.distributed): 'auto' (ddp when launched by
    torchrun with WORLD_SIZE > 1, else none), 'none', 'ddp' or 'fsdp' (FSDP2, per block).
    optim.batch_size is the global batch, split evenly across the ranks."""
    compile: bool = False
    """torch.compile each transformer block of the trained model (regional compilation,
    resforce.training.compile); the layouts, history passes and EMA stay eager."""
    dist_timeout_minutes: float = 60.0
    """Under torchrun: how long a collective may wait before the process group fails it
    (init_process_group's timeout). Long, because the other ranks wait at a barrier while rank
    0 writes a checkpoint gathered to it (minutes for 14B on a slow disk); torch's default
    (10 min for NCCL) would kill a healthy run."""
    log_every: int = 10
    """Write a metrics.jsonl line every N steps (and at the end, and for skipped steps)."""
    ckpt_every: int = 250
    """Save a checkpoint every N steps (and at the end and at every stage change)."""
    keep_last: int = 3
    """Checkpoints kept in run_dir/checkpoints (0 keeps all); the newest is never removed."""
    checkpoint_format: str = "full"
    """'full': the full weights, EMA and optimizer state, gathered to rank 0 and written by it
    (model.safetensors, ema.safetensors, state.*: one file generates). 'sharded': every rank
    writes its own pieces with torch.distributed.checkpoint, nothing is gathered (for large
    models under fsdp); it resumes on any number of ranks, and `resforce export RUN` merges it
    into one weights file for generate / eval / play (resforce.training.sharded_checkpoint).
    Both layouts resume either kind of checkpoint."""
    max_nonfinite_skips: int = 3
    """Steps in a row whose loss or gradient is NaN/inf that are skipped (no update of the
    weights, optimizer or EMA) before training stops with an error naming the step; 0 stops at
    the first. A finite step resets the count."""

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid key and what it expects."""
        if not self.stages:
            raise ConfigError("stages: a recipe needs at least one stage")
        _check_numbers(self)
        if self.optim.batch_size % self.optim.grad_accum:
            raise ConfigError(f"optim.batch_size={self.optim.batch_size} must be a multiple of "
                              f"optim.grad_accum={self.optim.grad_accum}")
        try:
            self.lora.validate()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.lora.enabled and self.lora.base_dtype != "fp32" and self.precision != "bf16":
            raise ConfigError(f"lora.base_dtype={self.lora.base_dtype} needs precision=bf16 (the base "
                              f"weights' matmuls run under bf16 autocast), got precision={self.precision}")
        if not (math.isfinite(self.dist_timeout_minutes) and self.dist_timeout_minutes > 0):
            raise ConfigError(f"dist_timeout_minutes must be a number > 0, got {self.dist_timeout_minutes!r}")
        if self.checkpoint_format not in CHECKPOINT_FORMATS:
            raise ConfigError(f"checkpoint_format must be one of {CHECKPOINT_FORMATS} ('full': one set of files "
                              f"gathered to rank 0; 'sharded': each rank writes its own pieces), got "
                              f"{self.checkpoint_format!r}")
        if self.optim.grad_sync not in GRAD_SYNCS:
            raise ConfigError(f"optim.grad_sync must be one of {GRAD_SYNCS}, got {self.optim.grad_sync!r}")
        if self.optim.schedule not in ("constant", "cosine"):
            raise ConfigError(f"optim.schedule must be 'constant' or 'cosine', got {self.optim.schedule!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.data.kind not in WORLDS:
            raise ConfigError(f"data.kind must be {known_kinds()}, got {self.data.kind!r}")
        for i, s in enumerate(self.stages):
            if s.steps < 0 or s.clip_chunks < 1:
                raise ConfigError(f"stages.{i}: steps must be >= 0 and clip_chunks >= 1")
            if s.lr is not None and not (math.isfinite(s.lr) and s.lr > 0):
                raise ConfigError(f"stages.{i}.lr={s.lr!r}: expected a finite number > 0 (or null: optim.lr)")
            if s.loss_motion_weight is not None and not (math.isfinite(s.loss_motion_weight) and s.loss_motion_weight >= 0):
                raise ConfigError(f"stages.{i}.loss_motion_weight={s.loss_motion_weight!r}: expected a finite number "
                                  f">= 0 (or null: loss_motion_weight)")
            if not isinstance(s.history_grad, bool):
                raise ConfigError(f"stages.{i}.history_grad={s.history_grad!r}: expected true (two-stream) "
                                  f"or false (detached history)")
            try:  # every stage's attention now, not when its stage starts
                s.attention.validate()
            except (ValueError, NotImplementedError) as e:
                raise ConfigError(f"stages.{i}.attention: {e}") from None
        self.model.validate()
        try:
            self.text.validate()
            checkpoint_mode(self.model.gradient_checkpointing)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        _check_data_fits_model(self)


_RULES = [  # (key, test, what is expected)
    ("log_every", lambda v: v >= 1, "an integer >= 1 (log every N steps)"),
    ("ckpt_every", lambda v: v >= 1, "an integer >= 1 (checkpoint every N steps)"),
    ("keep_last", lambda v: v >= 0, "an integer >= 0 (0 keeps every checkpoint)"),
    ("max_nonfinite_skips", lambda v: v >= 0, "an integer >= 0"),
    ("seed", lambda v: v >= 0, "an integer >= 0"),
    ("optim.lr", lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    ("optim.betas", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    ("optim.weight_decay", lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    ("optim.warmup_steps", lambda v: v >= 0, "an integer >= 0"),
    ("optim.grad_clip", lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0 (0 disables clipping)"),
    ("optim.batch_size", lambda v: v >= 1, "an integer >= 1 (clips per optimizer step)"),
    ("optim.grad_accum", lambda v: v >= 1, "an integer >= 1 (micro-batches per step)"),
    ("optim.ema_decay", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    ("loss_motion_weight", lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0 (0: no motion weighting)"),
    ("loss_motion_threshold", lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    ("sample.chunks", lambda v: v >= 1, "an integer >= 1"),
    ("sample.steps", lambda v: v >= 1, "an integer >= 1 (Euler steps per chunk)"),
    ("sample.shift", lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    ("sample.history_noise", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
]


def motion_weight(cfg: "TrainConfig", stage: StageConfig) -> float:
    """The loss_motion_weight a stage trains with: its own, else the run's."""
    return cfg.loss_motion_weight if stage.loss_motion_weight is None else stage.loss_motion_weight


def _check_numbers(cfg: "TrainConfig") -> None:
    for key, ok, expected in _RULES:
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if not ok(value):
            raise ConfigError(f"{key}={value!r}: expected {expected}")


def _check_data_fits_model(cfg: "TrainConfig") -> None:
    """The clips of the run's world must fit the model: channels, frames divisible into patches."""
    m, world = cfg.model, world_of(cfg.data)
    channels = world.channels
    if m.in_channels != channels or m.out_channels != m.in_channels:
        raise ConfigError(f"model.in_channels={m.in_channels}, model.out_channels={m.out_channels}: data.kind="
                          f"{cfg.data.kind} gives {channels}-channel {'RGB' if channels == 3 else 'latent'} clips, so both "
                          f"must be {channels}")
    for i, s in enumerate(cfg.stages):  # a stage of 0 steps (skipped) draws no clips
        if s.steps > 0:
            try:  # a world's check raises ValueError (worlds do not import the config)
                world.check_clip_frames(s.clip_chunks * m.frames_per_chunk, f"stages.{i}.clip_chunks={s.clip_chunks}")
            except ValueError as e:
                raise ConfigError(str(e)) from None
    space = world.action_space  # a model without actions may train on a world with them (ignored)
    if m.action_kind != "none" and (m.action_kind, m.action_dim) != (space.kind, space.width):
        raise ConfigError(f"model.action_kind={m.action_kind!r}, model.action_dim={m.action_dim}: data.kind="
                          f"{cfg.data.kind} gives actions of kind {space.kind!r} and width {space.width}, so set "
                          f"model.action_kind={space.kind} model.action_dim={space.width}")
    key, size = world.resolution_key, world.resolution
    ph, pw = m.patch_size[1], m.patch_size[2]
    if size[0] % ph or size[1] % pw:
        raise ConfigError(f"{key}={list(size)}: expected a multiple of the model's patch size "
                          f"{ph}x{pw} (model.patch_size={list(m.patch_size)})")
