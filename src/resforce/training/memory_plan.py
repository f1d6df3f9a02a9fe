"""MemoryPlan: what `resforce memory` sizes (model preset, clip length, strategy, history
attention, accumulation, GPUs, precision, checkpointing, LoRA), checked before anything is built."""

from __future__ import annotations

from dataclasses import dataclass, field


from resforce.training import distributed as parallel
from resforce.model.attention.config import MODES as ATTENTION_MODES
from resforce.model.attention.config import HistoryAttentionConfig
from resforce.model.dit import PRESETS, DiTConfig
from resforce.training.step_arithmetic import ClipGeometry, chunks_for_seconds, clip_geometry


STRATEGIES = ("teacher", "resampling")
VAE_SPATIAL = 8
"""Wan's VAE: 8x spatial compression (480x832 pixels -> 60x104 latents)."""


@dataclass
class MemoryPlan:
    """One training step to measure."""

    preset: str = "wan2.1-1.3b"
    """Model preset (model/dit.py PRESETS)."""
    seconds: float = 5.0
    """Clip length; 16 fps, Wan's VAE (step_arithmetic.chunks_for_seconds). Ignored if chunks is set."""
    chunks: int | None = None
    """Clip length in chunks, instead of seconds."""
    strategy: str = "teacher"
    """'teacher' (history = the clip) or 'resampling' (the self-resampling pass, then training)."""
    gpus: int = 1
    """1: one GPU, no sharding; > 1: FSDP2 over that many ranks (one simulated)."""
    batch: int = 1
    """Clips per GPU."""
    height: int = 480
    """Video height in pixels (latents: / 8)."""
    width: int = 832
    """Video width in pixels (latents: / 8)."""
    text_tokens: int = 512
    """Length of the text context (umT5: 512 x 4096); ignored by models without text."""
    checkpointing: str | None = None
    """Activation checkpointing mode ('none', 'full', 'selective'); None: the preset's."""
    attention_backend: str | None = None
    """Model attention backend; None: the preset's (model default)."""
    precision: str = "bf16"
    """'bf16' (autocast over fp32 master weights) or 'fp32'."""
    resample_steps: int = 1
    """Euler steps of the resampling pass (the paper: 1)."""
    resample_unsharded: bool = True
    """Under FSDP, gather the weights once for the resampling pass (history.HistoryConfig)."""
    history_attention: str = "dense"
    """The stage's history attention (StageConfig.attention.mode): 'dense', 'topk' (routed) or
    'window'."""
    topk: int = 5
    """topk: history chunks selected per query token and head (the recipe's routed stage: 5)."""
    window: int = 5
    """window: the most recent history chunks kept."""
    sink: int = 0
    """window: the first chunks always kept."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (optim.grad_accum); `batch` clips each."""
    grad_sync: str = "auto"
    """optim.grad_sync: 'every', 'last' or 'auto' (every under FSDP, last on one GPU)."""
    lora_rank: int = 0
    """LoRA adapters of this rank on every block's linear layers (resforce.model.lora); 0: full
    fine-tuning. With adapters only they have gradients and AdamW state; on one GPU the EMA
    shares the frozen base with the model (the trainer's tie_frozen)."""
    lora_base_dtype: str = "fp32"
    """lora.base_dtype: storage of the frozen base weights ('fp32' or 'bf16')."""
    model_overrides: dict = field(default_factory=dict)
    """Any other DiTConfig fields (tests: tiny shapes)."""

    def attention(self) -> HistoryAttentionConfig:
        cfg = HistoryAttentionConfig(mode=self.history_attention, topk=self.topk, window=self.window,
                                     sink=self.sink)
        cfg.validate()
        return cfg

    def model_config(self) -> DiTConfig:
        if self.preset not in PRESETS:
            raise ValueError(f"--preset {self.preset!r}: expected one of {sorted(PRESETS)}")
        fields = {**PRESETS[self.preset], **self.model_overrides}
        if self.checkpointing is not None:
            fields["gradient_checkpointing"] = self.checkpointing
        if self.attention_backend is not None:
            fields["attention_backend"] = self.attention_backend
        cfg = DiTConfig(**fields)
        cfg.validate()
        return cfg

    def geometry(self, cfg: DiTConfig) -> ClipGeometry:
        if self.height % VAE_SPATIAL or self.width % VAE_SPATIAL:
            raise ValueError(f"--height/--width {self.height}x{self.width}: expected multiples of {VAE_SPATIAL}")
        n = self.chunks if self.chunks is not None else chunks_for_seconds(self.seconds, cfg.frames_per_chunk)
        return clip_geometry(cfg, n, self.height // VAE_SPATIAL, self.width // VAE_SPATIAL)

    def check(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"--strategy {self.strategy!r}: expected one of {STRATEGIES}")
        if self.gpus < 1 or self.batch < 1:
            raise ValueError(f"--gpus {self.gpus} / --batch {self.batch}: expected integers >= 1")
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"--precision {self.precision!r}: expected 'bf16' or 'fp32'")
        if self.chunks is not None and self.chunks < 1:
            raise ValueError(f"--chunks {self.chunks}: expected an integer >= 1")
        if self.history_attention not in ATTENTION_MODES:
            raise ValueError(f"--history-attention {self.history_attention!r}: expected one of {ATTENTION_MODES}")
        if self.grad_accum < 1:
            raise ValueError(f"--grad-accum {self.grad_accum}: expected an integer >= 1")
        if self.grad_sync not in parallel.GRAD_SYNCS:
            raise ValueError(f"--grad-sync {self.grad_sync!r}: expected one of {parallel.GRAD_SYNCS}")
        self.attention()
