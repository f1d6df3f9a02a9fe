"""The text context a model with cross-attention (model.text_dim > 0) is conditioned on.

Where it comes from. A data stream's `batch(n, frames)` returns (videos, info); a world with
text puts the clips' prompt embeddings in `info.context`, a (n, text_len, text_dim) tensor
(the latents world: umT5 embeddings, padded to Wan's 512 tokens with
zeros, as Wan pads them). `context_of(info)` reads it; every other world gives None.

The empty prompt. A text model trained on a world without text (bouncing balls, a folder of
videos) sees `empty_prompt(...)`: zeros of (text_len, text_dim). It is a STAND-IN until real
umT5 embeddings arrive with the latents data: Wan's own unconditional input is the umT5
embedding of "" (one end-of-sequence token, then zero padding), which only a text encoder
can make. The stand-in is used the same way in training and in generation (generation/generate.py), so
a run trained on it generates with what it was trained on. Why not an error: today's worlds
have no text at all, and a text model fine-tuned without prompts is a real use (Wan knows an
empty prompt from its caption dropout); the trainer warns once, naming the fields.

Caption dropout (classifier-free guidance training) replaces a clip's context by the empty
prompt with probability `text.caption_dropout`. A world that knows the real empty-prompt
embedding passes it as `info.empty_context` (1 or n, text_len, text_dim); otherwise the zero
stand-in is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TextConfig:
    """The text context of a model with cross-attention (model.text_dim > 0)."""

    text_len: int = 512
    """Tokens of the empty-prompt stand-in (zeros) used when the data gives no text (Wan's
    umT5 length: 512)."""
    caption_dropout: float = 0.0
    """Probability that a training clip's text is replaced by the empty prompt (for
    classifier-free guidance; Wan-style recipes: about 0.1). 0 = never; draws nothing."""

    def validate(self) -> None:
        if self.text_len < 1:
            raise ValueError(f"text.text_len must be >= 1, got {self.text_len}")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"text.caption_dropout must be in [0, 1], got {self.caption_dropout}")


def context_of(info) -> torch.Tensor | None:
    """The text context a data stream's batch info carries (`info.context`), or None."""
    return getattr(info, "context", None)


def empty_prompt(text_dim: int, text_len: int, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The empty-prompt stand-in: zeros of (batch, text_len, text_dim) (see the module doc)."""
    return torch.zeros(batch, text_len, text_dim, device=device, dtype=dtype)


def check_context(context: torch.Tensor, text_dim: int, batch: int, what: str = "context") -> torch.Tensor:
    """`context` as (batch, L, text_dim), a batch-1 context expanded; ValueError naming `what`
    and the expected shape otherwise."""
    if context.ndim != 3 or context.shape[-1] != text_dim or context.shape[0] not in (1, batch):
        raise ValueError(f"{what} must be (batch={batch} or 1, tokens, text_dim={text_dim}) to fit "
                         f"model.text_dim={text_dim}, got shape {tuple(context.shape)}")
    return context.expand(batch, -1, -1)


def drop_captions(context: torch.Tensor, empty: torch.Tensor, p: float, generator=None) -> torch.Tensor:
    """Each clip's context replaced by `empty` with probability p (one draw per clip)."""
    if empty.shape[1:] != context.shape[1:]:
        raise ValueError(f"the empty prompt {tuple(empty.shape)} must have the context's tokens and width "
                         f"{tuple(context.shape[1:])} (pad both to the same number of tokens)")
    keep = torch.rand(context.shape[0], generator=generator, device=context.device) >= p
    return torch.where(keep[:, None, None], context, empty.expand_as(context).to(context.dtype))


def training_text(info, text_dim: int, cfg: TextConfig, batch: int, device, generator=None) -> torch.Tensor | None:
    """The context of one training micro-batch: the data's (with caption dropout), the empty
    prompt for a text model on a world without text, None for a model without text."""
    given = context_of(info)
    if text_dim == 0:
        if given is not None:
            raise ValueError(f"the data gives a text context of shape {tuple(given.shape)} but "
                             f"model.text_dim=0 (no cross-attention): set model.text_dim="
                             f"{given.shape[-1]}, or use data without text")
        return None
    if given is None:
        return empty_prompt(text_dim, cfg.text_len, batch, device)
    context = check_context(given.to(device), text_dim, batch, "the data's text context (info.context)")
    if cfg.caption_dropout > 0:
        empty = getattr(info, "empty_context", None)
        empty = (empty_prompt(text_dim, context.shape[1], 1, device) if empty is None
                 else check_context(empty.to(device), text_dim, batch, "info.empty_context"))
        context = drop_captions(context, empty, cfg.caption_dropout, generator)
    return context


@dataclass
class PromptOptions:
    """The prompts of one generation (`resforce generate --prompt`): the run's world encodes
    them (worlds.base.World.text_embeddings); None everywhere: the run's defaults."""

    text: str | None = None
    """The prompt; None: the empty prompt."""
    negative: str | None = None
    """The unconditional branch of guidance; None: the world's configured negative prompt."""
    text_encoder: str | None = None
    """A local text-encoder folder overriding the one the run's data records."""
