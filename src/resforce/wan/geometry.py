"""How a clip of video frames maps to latent frames and to chunks.

Wan's VAE is causal in time: it encodes the first frame alone and every following group of 4
frames into one latent frame, so 1 + 4k video frames give 1 + k latent frames (81 -> 21, the
paper's 5 s at 16 fps). A chunk is `frames_per_chunk` latent frames (3, the paper's setting),
so a clip of N chunks is 3N latent frames, which is 1 + 4 (3N - 1) = 12N - 3 video frames:
N = 7 is 81 frames (5 s), N = 21 is 249 frames (15.6 s; the paper's "15 s").

The first latent frame of a clip is the image-alone latent of the clip's first video frame.
That is why clips are encoded from their own first frame (never cut out of the middle of a
longer latent sequence), and why a shorter training clip is the FIRST 3n latent frames of a
prepared clip: because the encoder is causal, those are exactly the latents of the first
12n - 3 video frames encoded on their own (tests/wan/test_latents.py checks this).
"""

from __future__ import annotations

TEMPORAL = 4
"""Wan's temporal compression: 4 video frames per latent frame after the first."""
SPATIAL = 8
"""Wan2.1's spatial compression (the VAE config's scale_factor_spatial)."""
FRAMES_PER_CHUNK = 3
"""Latent frames per chunk (the paper's setting; model.frames_per_chunk of the Wan presets)."""


def latent_frames(video_frames: int, temporal: int = TEMPORAL) -> int:
    """Latent frames of 1 + 4k video frames (ValueError for another count)."""
    if video_frames < 1 or (video_frames - 1) % temporal:
        raise ValueError(f"a Wan VAE encodes 1 + {temporal}k video frames, got {video_frames}")
    return 1 + (video_frames - 1) // temporal


def video_frames(latent: int, temporal: int = TEMPORAL) -> int:
    """Video frames that `latent` latent frames decode to: 1 + 4 (latent - 1)."""
    if latent < 1:
        raise ValueError(f"expected at least 1 latent frame, got {latent}")
    return 1 + temporal * (latent - 1)


def clip_video_frames(chunks: int, frames_per_chunk: int = FRAMES_PER_CHUNK, temporal: int = TEMPORAL) -> int:
    """Video frames of a clip of `chunks` chunks: 12N - 3 for 3 latent frames per chunk."""
    if chunks < 1:
        raise ValueError(f"a clip needs at least 1 chunk, got {chunks}")
    return video_frames(chunks * frames_per_chunk, temporal)
