"""Low-rank adapters (LoRA, via peft) on the transformer blocks' linear layers.

`apply_lora(model, cfg)` injects peft's LoRA layers into a CausalVideoDiT in place (peft's
`inject_adapter_in_model`: no PeftModel wrapper), so the model keeps its class and its methods
(forward, forward_chunk, write_cache): every history strategy, the KV-cached rollout and FSDP
see the same model. Only the adapters (lora_A, lora_B) stay trainable; every base weight is
frozen. Parameter names gain peft's infixes: `blocks.0.attn1.to_q.weight` becomes
`blocks.0.attn1.to_q.base_layer.weight`, plus `...to_q.lora_A.default.weight` (rank x in) and
`...to_q.lora_B.default.weight` (out x rank, zero at the start: the model starts as its base).

`merge_lora_state_dict` folds the adapters into the base weights (W + alpha / rank * B A) and
gives back the plain model's names, so a LoRA run's weights load into a plain CausalVideoDiT
(generation, `resforce export --merge-lora`); `adapter_state_dict` keeps the adapters alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

DEFAULT_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                   "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
                   "ffn.net.0.proj", "ffn.net.2")
"""Every linear layer of a transformer block: self- and cross-attention projections and the FFN."""
BASE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
KEEP_IN_FP32 = ("time_embedder", "scale_shift_table", "norm1", "norm2", "norm3", "norm_q", "norm_k")
"""Frozen parameters that stay float32 under base_dtype 'bf16' (a component of the name)."""
ADAPTER = "default"
"""peft's adapter name (one adapter per model)."""


@dataclass
class LoraConfig:
    """Low-rank adapters on the transformer blocks (peft); rank 0 trains the full model."""

    rank: int = 0
    """Rank r of every adapter; 0: no adapters, every weight is trained (the paper's recipe)."""
    alpha: float = 16.0
    """Scale numerator: an adapter adds (alpha / rank) * B A x to its layer's output."""
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    """Linear layers that get an adapter, as suffixes of their module names inside a block
    ('attn1.to_q' matches blocks.N.attn1.to_q); default: all of a block's linear layers."""
    dropout: float = 0.0
    """Dropout on an adapter's input during training (peft's lora_dropout)."""
    base_dtype: str = "fp32"
    """Storage of the frozen base weights: 'fp32', or 'bf16' (half their memory: 2.7 GiB
    instead of 5.4 for Wan2.1-1.3B; needs precision=bf16). Norms, the AdaLN tables and the
    time embedder stay float32 either way (Wan's KEEP_IN_FP32); the adapters are float32."""

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    def validate(self) -> None:
        if self.rank < 0:
            raise ValueError(f"lora.rank must be >= 0 (0: no adapters), got {self.rank}")
        if self.enabled:
            if not (math.isfinite(self.alpha) and self.alpha > 0):
                raise ValueError(f"lora.alpha must be a finite number > 0, got {self.alpha}")
            if not 0.0 <= self.dropout < 1.0:
                raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
            if not self.targets:
                raise ValueError("lora.targets: at least one linear layer (e.g. attn1.to_q)")
        if self.base_dtype not in BASE_DTYPES:
            raise ValueError(f"lora.base_dtype must be one of {tuple(BASE_DTYPES)}, got {self.base_dtype!r}")


def _peft_config(cfg: LoraConfig):
    try:
        from peft import LoraConfig as PeftLoraConfig
    except ImportError as e:  # pragma: no cover - the extra is installed with the tests
        raise ImportError("lora.rank > 0 needs peft: pip install -e '.[lora]'") from e
    return PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=list(cfg.targets), bias="none")


def apply_lora(model: nn.Module, cfg: LoraConfig | None) -> nn.Module:
    """Inject the adapters into `model` in place (nothing if cfg is None or rank 0) and freeze
    every other parameter. On the meta device the adapters are meta too (loaded later); else
    peft initialises them (lora_A Kaiming-uniform from torch's generator, lora_B zero).
    A target that matches no layer is an error naming it (a block layer the model lacks, such
    as attn2.* without text, is skipped)."""
    if cfg is None or not cfg.enabled:
        return model
    cfg.validate()
    from peft import inject_adapter_in_model

    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    matched = [t for t in cfg.targets if any(n == t or n.endswith("." + t) for n in names)]
    unmatched = [t for t in cfg.targets if t not in matched and t not in DEFAULT_TARGETS]
    if unmatched or not matched:
        raise ValueError(f"lora.targets {unmatched or cfg.targets} match no linear layer of the model "
                         f"(e.g. {', '.join(DEFAULT_TARGETS[:3])})")
    cfg = LoraConfig(cfg.rank, cfg.alpha, matched, cfg.dropout, cfg.base_dtype)
    # adapters made on the meta device, then given storage next to their base weight here
    inject_adapter_in_model(_peft_config(cfg), model, adapter_name=ADAPTER, low_cpu_mem_usage=True)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and (".lora_A." in name + "." or ".lora_B." in name + "."):
            owner = model.get_submodule(name.rsplit(".lora_", 1)[0])
            base = owner.base_layer.weight
            if module.weight.is_meta and not base.is_meta:
                module.weight = nn.Parameter(torch.empty(module.weight.shape, device=base.device,
                                                         dtype=base.dtype))
                with torch.no_grad():
                    if ".lora_A." in name + ".":
                        nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))  # peft's init
                    else:
                        nn.init.zeros_(module.weight)
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter(name))
    if cfg.base_dtype != "fp32":
        cast_base(model, BASE_DTYPES[cfg.base_dtype])
    return model


def cast_base(model: nn.Module, dtype: torch.dtype) -> None:
    """Frozen base weights to `dtype` in place, except KEEP_IN_FP32 ones (and adapters)."""
    for name, p in list(model.named_parameters()):
        if is_adapter(name) or p.dtype == dtype or any(m in name.split(".") for m in KEEP_IN_FP32):
            continue
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        module._parameters[leaf] = nn.Parameter(p.detach().to(dtype), requires_grad=False)


def is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def has_adapters(sd) -> bool:
    return any(is_adapter(k) for k in sd)


def adapter_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapters alone (lora_A / lora_B tensors) of a LoRA model's state dict."""
    return {k: v for k, v in sd.items() if is_adapter(k)}


def base_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A plain model's state dict for a LoRA one's base weights (adapters dropped, unmerged)."""
    return {k.replace(".base_layer.", "."): v for k, v in sd.items() if not is_adapter(k)}


def merge_lora_state_dict(sd: dict[str, torch.Tensor], cfg: LoraConfig) -> dict[str, torch.Tensor]:
    """The plain model's state dict with every adapter folded into its base weight:
    W + (alpha / rank) * B @ A, computed in float32 and stored in W's dtype."""
    scale = cfg.alpha / cfg.rank
    out = base_names(sd)
    suffix = f".lora_A.{ADAPTER}.weight"
    for key in sd:
        if not key.endswith(suffix):
            continue
        layer = key[: -len(suffix)]
        a, b = sd[key].float(), sd[f"{layer}.lora_B.{ADAPTER}.weight"].float()
        w = out[f"{layer}.weight"]
        out[f"{layer}.weight"] = (w.float() + scale * (b @ a)).to(w.dtype)
    return out


def lora_state_dict_from_base(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A LoRA model's full state dict from a plain one (Wan's weights): base weights renamed to
    peft's base_layer names, adapters at peft's initial values (lora_A Kaiming-uniform from
    torch's global generator, lora_B zero) so every rank, seeded alike, starts alike. `model`
    (meta is enough) gives the names and shapes."""
    out = {}
    for name, t in model.state_dict().items():
        if ".lora_A." in name:
            a = torch.empty(t.shape)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # peft's init_lora_weights=True
            out[name] = a
        elif ".lora_B." in name:
            out[name] = torch.zeros(t.shape)
        else:
            out[name] = sd[name.replace(".base_layer.", ".")]
    return out


def tie_frozen(ema: nn.Module, model: nn.Module) -> None:
    """The EMA's frozen (base) parameters become the model's own: the base is never trained,
    so its EMA is itself and costs no memory. For unsharded models (none / ddp) only."""
    params = dict(model.named_parameters())
    for name, p in list(ema.named_parameters()):
        src = params[name]
        if not src.requires_grad:
            owner, _, leaf = name.rpartition(".")
            ema.get_submodule(owner)._parameters[leaf] = src
