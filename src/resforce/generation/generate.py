"""Generation from a trained run: load the model, pick the prefix, roll out, with progress.

Shared by `resforce generate`, `eval`, `compare` and `demo`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
from tqdm import tqdm

from resforce.actions import NULL_ACTION, commanded_actions
from resforce.generation.budget import check_rollout_fits
from resforce.io.weights import inspect_weights, load_model
from resforce.io.checks import check_counts, check_finite_output, check_prefix_fits, check_video_values
from resforce.model.attention.policy import AttentionPolicy
from resforce.model.attention.config import HistoryAttentionConfig
from resforce.model.attention.router_stats import RouterRecorder
from resforce.device import enable_tf32, resolve_device
from resforce.rollout import SampleConfig, rollout
from resforce.text_context import PromptOptions, empty_prompt
from resforce.generation.session import rolling_session, training_context_chunks
from resforce.worlds import world_of

@dataclass
class Generated:
    videos: torch.Tensor
    """(B, C, F, H, W) in [-1, 1]: prefix frames followed by generated ones."""
    prefix_frames: int
    train_frames: int
    """Frames of the longest training clip of the run (to mark the training length)."""
    ground_truth: torch.Tensor | None
    """(B, C, F, H, W) ground truth of the world for the same clips, or None (a world
    without ground truth)."""
    states: object | None
    """World states of the ground truth clips (whatever the world keeps), or None."""
    config: object
    recorder: RouterRecorder | None = None
    context_chunks: int = 0
    """Chunks the model saw at once (own chunk included); 0 = all history (dense)."""
    sink_chunks: int = 0
    """First chunks kept in view for good when the context rolls (runs trained with a sink)."""
    attention: HistoryAttentionConfig | None = None
    """Which history chunks each query attended to in the rollout (dense, top-k, window)."""
    actions: torch.Tensor | None = None
    """(B, F[, D]) the per-frame actions the rollout was commanded (given, else the world's
    ground truth's); None where none were (no action model, or the null action throughout)."""


def world_clips(cfg, batch: int, frames: int, seed: int):
    """(videos, states): ground-truth clips of the run's world from evaluation seed `seed` (not
    the training stream), or (None, None) where the world has no ground truth."""
    return world_of(cfg.data).clips(batch, frames, seed)


@dataclass
class SampleOverrides:
    """Changes to a run's `sample` config (rollout.SampleConfig) for one generation; None keeps
    the run's value."""

    chunks: int | None = None
    """Chunks to generate after the prefix."""
    seed: int | None = None
    """Seed of the initial noise (and of the world's evaluation clips)."""
    steps: int | None = None
    """Euler steps per chunk."""
    shift: float | None = None
    """Shift of the Euler grid."""
    cfg_scale: float | None = None
    """Classifier-free guidance scale."""
    history_noise: float | None = None
    """Re-noise cached history to this level."""
    context: int | None = None
    """Chunks seen at once (own chunk included; the KV cache rolls past it); None = the run's
    `sample.context`, which defaults to its training context; 0 = all history (dense,
    context extrapolation)."""

    def apply(self, s: SampleConfig) -> SampleConfig:
        """The run's sample config with these overrides."""
        return dataclasses.replace(s, **{k: v for k, v in dataclasses.asdict(self).items() if v is not None})


def _given_actions(actions, model, cfg, sample: SampleOverrides, batch: int, prefix, prefix_chunks: int):
    """Actions given for a whole rollout (frames[, D]) or (batch, frames[, D]), checked against
    the model's action space and the rollout's length (prefix + chunks frames; without --chunks
    the actions set it) -> ((batch, frames[, D]) tensor, the sample overrides)."""
    mc = model.config
    if mc.action_kind == "none":
        raise ValueError("--actions: this run's model takes no actions (model.action_kind='none')")
    a = torch.as_tensor(np.asarray(actions) if not isinstance(actions, torch.Tensor) else actions)
    per_video = 1 if mc.action_kind == "discrete" else 2
    if a.ndim == per_video:
        a = a[None].expand(batch, *a.shape)
    fpc = mc.frames_per_chunk
    given = prefix.shape[-3] if prefix is not None else prefix_chunks * fpc  # (C, F, H, W) or (B, C, F, H, W)
    frames = a.shape[1] if a.ndim > 1 else 0
    if a.ndim != per_video + 1 or a.shape[0] != batch:
        raise ValueError(f"--actions: expected one action per frame, ({'frames' if per_video == 1 else 'frames, D'}) or "
                         f"(batch={batch}, {'frames' if per_video == 1 else 'frames, D'}), got shape {tuple(a.shape)}")
    if sample.chunks is None:
        extra = frames - given
        if extra < fpc or extra % fpc:
            raise ValueError(f"--actions: {frames} actions for {given} given frame(s): expected the given frames plus "
                             f"a positive multiple of {fpc} generated frame(s) (one action per frame, prefix included)")
        sample = dataclasses.replace(sample, chunks=extra // fpc)
    elif frames != given + sample.chunks * fpc:
        raise ValueError(f"--actions: {frames} actions for {given} given + {sample.chunks * fpc} generated = "
                         f"{given + sample.chunks * fpc} frames (one action per frame, prefix included)")
    space = world_of(cfg.data).action_space
    if space.kind == "discrete" == mc.action_kind:  # the null action (-1) is allowed: "no action given"
        for row in a.numpy():
            space.check(np.where(row == NULL_ACTION, 0, row), frames, "--actions")
        a = a.long()
    elif space.kind == mc.action_kind:
        a = torch.as_tensor(np.stack([space.check(row, frames, "--actions") for row in a.numpy()]))
    return a, sample


def generate(path, sample: SampleOverrides | None = None, attention: HistoryAttentionConfig | None = None, *,
             batch: int = 1, prefix: torch.Tensor | None = None, prefix_chunks: int = 0,
             device: str = "auto", prefer_ema: bool = True, record_router: bool = False,
             progress: bool = True, with_ground_truth: bool = False,
             text: torch.Tensor | None = None, uncond_text: torch.Tensor | None = None,
             prompt: PromptOptions | None = None, vae: str | None = None,
             actions: torch.Tensor | None = None, batch_flag: str = "--batch") -> Generated:
    """Roll out a run's model with its `sample` config changed by `sample`. attention: None =
    the history attention of the run's last training stage (dense, top-k routing or a window).
    text / uncond_text: text embeddings (batch or 1, tokens, text_dim) of the prompt and
    of the unconditional branch (guidance) for a model with cross-attention; None: the
    empty-prompt stand-in the trainer uses (text_context.empty_prompt). prompt: prompts the
    run's world encodes (a world with a text encoder; its empty prompt when not given). A world
    whose model makes latents decodes each chunk to pixels as it is finished (its streaming
    decoder; `vae` overrides its weights folder): `videos` are pixels either way. actions: per-frame
    actions of the whole video (prefix included) for an action model; None: the actions of
    the world's ground-truth clips where it has them (so rollouts are scored against what
    they were commanded), else the null action."""
    sample = sample or SampleOverrides()
    check_counts(SimpleNamespace(batch=batch, chunks=sample.chunks, steps=sample.steps, prefix_chunks=prefix_chunks))
    dev = resolve_device(device)
    # the file checked against its header and the rollout against memory, before either is spent
    _, header, cfg = inspect_weights(path, prefer_ema)
    ahead = rolling_session(cfg, sample.apply(cfg.sample), attention).sample
    params = sum(math.prod(shape) for _, shape in header.tensors.values())
    check_rollout_fits(cfg, ahead, batch, prefix_chunks, with_ground_truth or bool(prefix_chunks), params, dev,
                       batch_flag=batch_flag)
    model, cfg = load_model(path, dev, prefer_ema)
    if actions is not None:
        actions, sample = _given_actions(actions, model, cfg, sample, batch, prefix, prefix_chunks)
    session = rolling_session(cfg, sample.apply(cfg.sample), attention)
    s, attention = session.sample, session.attention
    fpc = model.config.frames_per_chunk
    world = world_of(cfg.data)
    res = world.resolution
    decoder = world.pixel_decoder(vae, dev)
    if decoder is not None and (prefix is not None or prefix_chunks):
        raise ValueError(f"--prefix / --prefix-chunks: a data.kind={cfg.data.kind} run generates from its prompt "
                         f"only (a pixel prefix would need encoding to latents: not supported)")
    texts = world.text_embeddings(prompt or PromptOptions(), dev)
    if texts is not None and text is None:
        text, uncond_text = texts[0], texts[1] if uncond_text is None else uncond_text
    gt = states = None
    if prefix is None and (prefix_chunks or with_ground_truth):
        gt, states = world_clips(cfg, batch, (prefix_chunks + s.chunks) * fpc, s.seed)
        if gt is None and prefix_chunks:
            raise ValueError("--prefix-chunks needs a run trained on the built-in world; pass --prefix FILE")
        prefix = gt[:, :, :prefix_chunks * fpc] if prefix_chunks else None
    if prefix is not None:
        check_video_values(prefix, "prefix")
        check_prefix_fits(prefix, model.config.in_channels, res)
        if prefix.ndim == 4:
            prefix = prefix[None].expand(batch, -1, -1, -1, -1)
    recorder = RouterRecorder() if record_router else None
    policy = AttentionPolicy(attention, recorder)
    if model.config.text_dim > 0:  # no prompt: what training used without text
        empty = empty_prompt(model.config.text_dim, cfg.text.text_len, 1, dev)
        text = empty if text is None else text
        uncond_text = empty if uncond_text is None else uncond_text
    bar = tqdm(total=s.chunks, desc="generate", disable=not progress, dynamic_ncols=True)
    enable_tf32(dev)
    # the run's precision on CUDA; on the CPU fp32 (bf16 autocast is ~29x slower there, and the
    # checkpoint holds the fp32 master weights)
    prec = cfg.precision if dev.type == "cuda" else "fp32"
    if actions is None and (given := commanded_actions(model, states)) is not None:
        actions = given[:, :(prefix_chunks + s.chunks) * fpc]
    elif actions is not None and getattr(states, "actions", None) is not None:
        # scored against what was commanded: the given actions replace the ground truth's
        states = dataclasses.replace(states, actions=actions.numpy())
    pixels = []

    def finished(i, chunk):  # a latent world's chunks become pixels as they come: nothing re-decoded
        if decoder is not None:
            pixels.append(decoder.decode(chunk).cpu())
        bar.update(1)

    videos = rollout(model, batch, res[0], res[1], s, prefix=prefix, attention=policy, text=text,
                     uncond_text=uncond_text, callback=finished, device=dev,
                     precision=prec, return_video=decoder is None, actions=actions)
    bar.close()
    videos = videos if decoder is None else torch.cat(pixels, dim=2)
    check_finite_output(videos, path)
    train_frames = training_context_chunks(cfg) * fpc
    if decoder is not None:
        train_frames = decoder.video_frames(train_frames)
    n_prefix = 0 if prefix is None else prefix.shape[2]
    return Generated(videos.clamp(-1, 1).cpu(), n_prefix, train_frames, gt, states, cfg, recorder,
                     context_chunks=s.context, sink_chunks=s.sink, attention=attention,
                     actions=None if actions is None else actions.cpu())
