"""DiTConfig: the shape and behaviour of the CausalVideoDiT, and the named presets."""

from __future__ import annotations

from dataclasses import dataclass

from resforce.model.action_embedding import ACTION_KINDS
from resforce.model.attention.layouts import check_backend

@dataclass
class DiTConfig:
    """Shape and behaviour of the CausalVideoDiT (field names follow Wan's config)."""

    in_channels: int = 3
    """Channels of the (latent) video: 3 for RGB pixels, 16 for Wan's VAE latents."""
    out_channels: int = 3
    """Channels the model predicts (same as in_channels for velocity / x0 prediction)."""
    patch_size: tuple[int, int, int] = (1, 4, 4)
    """(pt, ph, pw) patch of the Conv3d patch embedding; pt must divide frames_per_chunk."""
    num_attention_heads: int = 4
    """Attention heads per layer."""
    attention_head_dim: int = 32
    """Per-head width; hidden size = heads * head_dim. Must be even (RoPE)."""
    ffn_dim: int = 512
    """Hidden width of each block's feed-forward network."""
    num_layers: int = 4
    """Transformer blocks."""
    freq_dim: int = 256
    """Width of the sinusoidal timestep features."""
    text_dim: int = 0
    """Width of condition tokens for cross-attention (4096 for Wan's umT5); 0 = no attn2."""
    cross_attn_norm: bool = True
    """LayerNorm (with affine) before the text cross-attention, as in Wan."""
    eps: float = 1e-6
    """Epsilon of the layer and RMS norms."""
    rope_theta: float = 10000.0
    """Base of the rotary position embedding's frequencies."""
    frames_per_chunk: int = 1
    """Latent frames per autoregressive chunk (the paper: 3)."""
    prediction: str = "velocity"
    """What the network outputs: 'velocity' (v = eps - x, Wan) or 'x0' (the clean video,
    converted to velocity as v = (x_t - x0) / t). x0 trains better for tiny pixel-space
    models with wide patches (a width-128 model with patch 8 stalled in velocity prediction on 32x32 bouncing balls and trained in x0)."""
    attention_backend: str = "chunked"
    """Backend of the full-sequence (two-stream / block-causal) attention, see attention.py:
    'chunked' (block-sparse flash tiles merged by log-sum-exp, no S x S tensor; CPU and
    CUDA), 'sdpa' (the naive reference: dense (S, S) boolean mask; what checkpoints written
    before 'chunked' existed carry) or 'flex' (FlexAttention BlockMask, compiled on CUDA;
    forward only on the CPU). All three compute the same numbers."""
    gradient_checkpointing: str = "none"
    """Activation checkpointing of each block: 'none', 'full' (recompute the whole block in
    the backward pass) or 'selective' (keep the attention outputs, recompute the rest: the
    memory of 'full' without re-running attention). true / false mean full / none. Applied
    from outside the model, by the trainer (parallel.apply_activation_checkpointing)."""
    init: str = "zero_adaln"
    """'zero_adaln' (DiT: gates and output projection start at zero, for training from
    scratch) or 'wan' (Wan's random scale_shift_table, before loading weights)."""
    action_kind: str = "none"
    """Per-frame action conditioning (model/action_embedding.py): 'none' (off: Wan's layout,
    no extra weights), 'discrete' (an index per frame, nn.Embedding) or 'continuous' (a
    vector per frame, nn.Linear); the embedding joins the chunk's timestep embedding."""
    action_dim: int = 0
    """Discrete: the number of actions (buttons; may exceed what the game uses). Continuous:
    the width of the action vector. Must match the world's action space."""
    action_dropout: float = 0.0
    """Training: probability that a clip's actions are all replaced by the null action, so
    the model also learns the action-free distribution (guidance over actions)."""
    preset: str | None = None
    """A named preset (PRESETS: tiny, test, wan2.1-1.3b, wan2.1-14b) whose fields are the
    defaults of this config; fields set in the YAML or by overrides win (config.py applies
    it when the config loads)."""

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def validate(self) -> None:
        pt = self.patch_size[0]
        if len(self.patch_size) != 3:
            raise ValueError(f"model.patch_size must be (pt, ph, pw), got {self.patch_size}")
        if self.frames_per_chunk % pt:
            raise ValueError(f"model.frames_per_chunk={self.frames_per_chunk} must be a multiple "
                             f"of the temporal patch size {pt}")
        if self.prediction not in ("velocity", "x0"):
            raise ValueError(f"model.prediction must be 'velocity' or 'x0', got {self.prediction!r}")
        if self.attention_head_dim % 2:
            raise ValueError(f"model.attention_head_dim must be even, got {self.attention_head_dim}")
        check_backend(self.attention_backend, "model.attention_backend")
        if self.action_kind not in ACTION_KINDS:
            raise ValueError(f"model.action_kind must be one of {ACTION_KINDS}, got {self.action_kind!r}")
        if (self.action_kind == "none") != (self.action_dim == 0) or self.action_dim < 0:
            raise ValueError(f"model.action_dim={self.action_dim}: expected > 0 with action_kind "
                             f"'discrete'/'continuous' and 0 with 'none' (got action_kind={self.action_kind!r})")
        if not 0.0 <= self.action_dropout <= 1.0:
            raise ValueError(f"model.action_dropout must be in [0, 1], got {self.action_dropout}")


PRESETS: dict[str, dict] = {
    # 1.3M-parameter pixel-space model for 32x32 bouncing balls on the CPU
    "tiny": dict(in_channels=3, out_channels=3, patch_size=(1, 4, 4), num_attention_heads=4,
                 attention_head_dim=32, ffn_dim=512, num_layers=4),
    # for unit tests: 2 layers, 2 heads
    "test": dict(in_channels=3, out_channels=3, patch_size=(1, 2, 2), num_attention_heads=2,
                 attention_head_dim=12, ffn_dim=48, num_layers=2),
    # Wan2.1-T2V-1.3B shapes (latent space of Wan's VAE); for GPU users
    "wan2.1-1.3b": dict(in_channels=16, out_channels=16, patch_size=(1, 2, 2),
                        num_attention_heads=12, attention_head_dim=128, ffn_dim=8960,
                        num_layers=30, text_dim=4096, frames_per_chunk=3, init="wan",
                        attention_backend="chunked", gradient_checkpointing="selective"),
    "wan2.1-14b": dict(in_channels=16, out_channels=16, patch_size=(1, 2, 2),
                       num_attention_heads=40, attention_head_dim=128, ffn_dim=13824,
                       num_layers=40, text_dim=4096, frames_per_chunk=3, init="wan",
                       attention_backend="chunked", gradient_checkpointing="selective"),
}


CHECKPOINT_MODES = ("none", "full", "selective")


def checkpoint_mode(value) -> str:
    """model.gradient_checkpointing -> 'none' | 'full' | 'selective'. Booleans (and their YAML
    spellings, which a str field receives as 'True'/'False') keep their old meaning:
    true = full, false = none."""
    text = str(value).strip().lower()
    mode = {"true": "full", "false": "none", "off": "none", "": "none"}.get(text, text)
    if mode not in CHECKPOINT_MODES:
        raise ValueError(f"model.gradient_checkpointing must be one of {CHECKPOINT_MODES} (or true = full, "
                         f"false = none), got {value!r}")
    return mode
