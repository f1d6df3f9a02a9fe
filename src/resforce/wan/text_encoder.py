"""umT5 prompt embeddings, made as diffusers' WanPipeline makes them.

WanPipeline._get_t5_prompt_embeds: clean the prompt (ftfy where installed, HTML unescape,
whitespace), tokenize padded to max_length with truncation and the end-of-sequence token,
run UMT5EncoderModel with the attention mask, keep each prompt's own tokens and pad the rest
with ZEROS to the text length (512 for Wan: WanPipeline's max_sequence_length). `encode`
returns the trimmed embeddings (what the dataset stores: a 10-word caption is 12 rows, not
512); `pad` makes the zero-padded (B, 512, D) context the model sees.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import torch

from resforce.wan.local import MissingWeightsError, component_folder, weights_folder

WAN_TEXT_LEN = 512
"""Wan's text length (WanPipeline's max_sequence_length)."""


def clean_prompt(text: str) -> str:
    """WanPipeline's prompt_clean: ftfy (if installed), HTML unescape twice, collapse whitespace."""
    try:
        import ftfy
        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class TextEncoder:
    """A local UMT5EncoderModel and its tokenizer."""

    def __init__(self, model, tokenizer, text_len: int = WAN_TEXT_LEN, folder: str = "", tokenizer_folder: str = ""):
        self.model, self.tokenizer, self.text_len = model, tokenizer, text_len
        self.folder, self.tokenizer_folder = folder, tokenizer_folder

    @classmethod
    def load(cls, path: str | Path, tokenizer: str | Path | None = None, device="cpu", dtype=torch.float32,
             text_len: int = WAN_TEXT_LEN, flag: str = "--text-encoder") -> "TextEncoder":
        """From a text-encoder folder (or a Wan pipeline folder: its text_encoder/ and tokenizer/);
        the tokenizer from `tokenizer`, else the encoder folder, else its sibling tokenizer/."""
        from transformers import AutoTokenizer, UMT5EncoderModel

        folder = weights_folder(path, "text_encoder", "transformers UMT5EncoderModel (umT5)", flag)
        tok_folder = _tokenizer_folder(path, folder, tokenizer, flag)
        model = UMT5EncoderModel.from_pretrained(str(folder), local_files_only=True, torch_dtype=dtype)
        tok = AutoTokenizer.from_pretrained(str(tok_folder), local_files_only=True)
        return cls(model.to(device).eval().requires_grad_(False), tok, text_len, str(folder), str(tok_folder))

    @property
    def dim(self) -> int:
        return int(self.model.config.d_model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        """Each prompt's embeddings (its own tokens, end-of-sequence included): (L_i, D) float32."""
        inputs = self.tokenizer([clean_prompt(p) for p in prompts], padding="max_length", max_length=self.text_len,
                                truncation=True, add_special_tokens=True, return_attention_mask=True,
                                return_tensors="pt")
        mask = inputs.attention_mask.to(self.device)
        hidden = self.model(inputs.input_ids.to(self.device), mask).last_hidden_state.float()
        lengths = mask.gt(0).sum(dim=1).tolist()
        return [h[:n].cpu() for h, n in zip(hidden, lengths)]

    def encode_padded(self, prompts: list[str]) -> torch.Tensor:
        """(B, text_len, D): the embeddings zero-padded as Wan pads them."""
        return pad(self.encode(prompts), self.text_len)


def pad(embeddings: list[torch.Tensor], text_len: int) -> torch.Tensor:
    """Stack (L_i, D) embeddings into (B, text_len, D), zeros after each one's tokens."""
    dim = embeddings[0].shape[-1]
    out = torch.zeros(len(embeddings), text_len, dim, dtype=embeddings[0].dtype)
    for i, e in enumerate(embeddings):
        if e.shape[0] > text_len or e.shape[-1] != dim:
            raise ValueError(f"text embedding {i} has shape {tuple(e.shape)}; expected at most {text_len} rows of {dim}")
        out[i, :e.shape[0]] = e
    return out


def _tokenizer_folder(given: str | Path, encoder: Path, tokenizer: str | Path | None, flag: str) -> Path:
    files = ("tokenizer_config.json",)
    if tokenizer is not None:
        return component_folder(tokenizer, "tokenizer", "tokenizer", "--tokenizer", files)
    for candidate in (encoder, Path(given) / "tokenizer", encoder.parent / "tokenizer"):
        if (candidate / files[0]).is_file():
            return candidate
    raise MissingWeightsError(f"{flag} {str(given)!r}: no tokenizer (tokenizer_config.json) in {encoder}, in "
                              f"{Path(given) / 'tokenizer'} or beside it; pass --tokenizer DIR (nothing is downloaded)")
