"""Wan's VAE (diffusers' AutoencoderKLWan): normalised latents in, pixels out, and a streaming
decoder that turns a rollout into video chunk by chunk.

Normalisation is Wan's: the model sees (mu - latents_mean) / latents_std per channel, with mu
the posterior mean and the two vectors from the VAE's config (WanPipeline undoes it before
decoding). Pixels are RGB in [-1, 1], (B, 3, F, H, W).

Streaming. AutoencoderKLWan.decode already runs its decoder one latent frame at a time, every
causal 3D convolution keeping the last frames of its input in a feature cache (`feat_cache`,
one slot per WanCausalConv3d) that the next frame's call reads. `decode` clears that cache at
the start and end of every call, so decoding a long video chunk by chunk through it would
either re-decode everything before or restart the cache (a seam at every chunk).
StreamingDecoder keeps its own feature cache across calls and calls the VAE's decoder exactly
as `_decode` does, so decoding chunk after chunk gives the same frames as one full decode
(tests/wan/test_latents.py) in constant memory, without re-decoding what came before.
"""

from __future__ import annotations

from pathlib import Path

import torch

from resforce.wan.geometry import SPATIAL, latent_frames
from resforce.wan.local import weights_folder


def load_vae(path: str | Path, device="cpu", dtype=torch.float32, flag: str = "--vae"):
    """AutoencoderKLWan from a local folder (a vae folder or a Wan pipeline folder), in eval mode."""
    from diffusers import AutoencoderKLWan

    folder = weights_folder(path, "vae", "diffusers AutoencoderKLWan (Wan VAE)", flag)
    vae = AutoencoderKLWan.from_pretrained(str(folder), local_files_only=True, torch_dtype=dtype)
    return vae.to(device).eval().requires_grad_(False)


def _stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, -1, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, dtype=like.dtype, device=like.device).view(shape)
    std = torch.tensor(vae.config.latents_std, dtype=like.dtype, device=like.device).view(shape)
    if mean.numel() != like.shape[1] or std.numel() != like.shape[1]:
        raise ValueError(f"the VAE config's latents_mean/latents_std have {mean.numel()}/{std.numel()} "
                         f"entries; its latents have {like.shape[1]} channels")
    return mean, std


def normalise(vae, mu: torch.Tensor) -> torch.Tensor:
    """Wan's normalised latents (mu - latents_mean) / latents_std of raw latents (B, C, T, h, w)."""
    mean, std = _stats(vae, mu)
    return (mu - mean) / std


def denormalise(vae, latents: torch.Tensor) -> torch.Tensor:
    """The VAE's raw latents of normalised ones: latents * latents_std + latents_mean."""
    mean, std = _stats(vae, latents)
    return latents * std + mean


def check_pixels(video: torch.Tensor, what: str = "video") -> None:
    """(B, 3, 1 + 4k, H, W) with H and W multiples of the VAE's spatial factor, else ValueError."""
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"{what} must be (batch, 3, frames, height, width), got {tuple(video.shape)}")
    latent_frames(video.shape[2])
    if video.shape[3] % SPATIAL or video.shape[4] % SPATIAL:
        raise ValueError(f"{what}: height and width must be multiples of {SPATIAL} (Wan's VAE), "
                         f"got {video.shape[3]}x{video.shape[4]}")


@torch.no_grad()
def encode(vae, video: torch.Tensor) -> torch.Tensor:
    """Normalised latents (B, C, 1 + k, H/8, W/8) of pixels (B, 3, 1 + 4k, H, W) in [-1, 1]."""
    check_pixels(video)
    dtype = next(vae.parameters()).dtype
    mu = vae.encode(video.to(dtype)).latent_dist.mode()
    return normalise(vae, mu.float())


@torch.no_grad()
def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Pixels (B, 3, 1 + 4 (T - 1), 8h, 8w) in [-1, 1] of normalised latents (B, C, T, h, w):
    the VAE's own full decode (the reference of StreamingDecoder)."""
    dtype = next(vae.parameters()).dtype
    return vae.decode(denormalise(vae, latents.float()).to(dtype)).sample.float()


class StreamingDecoder:
    """Decodes a video's normalised latents a chunk at a time, keeping the VAE's causal
    feature cache between chunks: `decode(chunk)` returns that chunk's new frames only
    (1 + 4 (T - 1) for the first chunk of T latent frames, 4 T for later ones)."""

    def __init__(self, vae) -> None:
        if getattr(vae, "use_tiling", False):
            raise ValueError("StreamingDecoder does not support a VAE with tiling enabled")
        self.vae = vae
        self.dtype = next(vae.parameters()).dtype
        self.feat_cache = [None] * vae._cached_conv_counts["decoder"]  # one slot per causal conv
        self.first = True

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        with torch.autocast(latents.device.type, enabled=False):  # the VAE in its own dtype, inside a bf16 rollout too
            return self._decode(latents)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.vae.post_quant_conv(denormalise(self.vae, latents.float()).to(self.dtype))  # a 1x1x1 conv: per frame
        frames = []
        for i in range(x.shape[2]):  # as AutoencoderKLWan._decode: one latent frame per decoder call
            frames.append(self.vae.decoder(x[:, :, i:i + 1], feat_cache=self.feat_cache, feat_idx=[0],
                                           first_chunk=self.first))
            self.first = False
        out = torch.cat(frames, dim=2)
        if self.vae.config.patch_size is not None:  # Wan2.2's VAE patchifies pixels
            from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify
            out = unpatchify(out, patch_size=self.vae.config.patch_size)
        return out.clamp(-1, 1).float()

    @staticmethod
    def video_frames(latent: int) -> int:
        """Pixel frames of a video of `latent` latent frames."""
        from resforce.wan.geometry import video_frames
        return video_frames(latent)
