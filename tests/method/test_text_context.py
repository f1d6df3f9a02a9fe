"""The text context of a model with cross-attention (model.text_dim > 0) through training,
resampling and generation: the data's context (info.context) or the empty-prompt stand-in
reaches the loss, the history and the rollout, and changing it changes each of them."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "support"))
from tiny import tiny  # noqa: E402

RECIPE = str(ROOT / "configs" / "bb_resampling.yaml")
TEXT_DIM, TEXT_LEN = 8, 3


def text_cfg(run_dir, *extra):
    from resforce.config import load_config
    return load_config(RECIPE, tiny(run_dir, f"model.text_dim={TEXT_DIM}", f"text.text_len={TEXT_LEN}",
                                    "stages.0.steps=1", "stages.1.steps=1", "stages.0.clip_chunks=3",
                                    "stages.1.clip_chunks=3", "device=cpu", *extra))


def text_model(randomize, seed=0):
    from resforce.model.dit import build_model
    return randomize(build_model(preset="test", text_dim=TEXT_DIM), seed)


def contexts(batch=2, seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, TEXT_LEN, TEXT_DIM, generator=g), torch.randn(batch, TEXT_LEN, TEXT_DIM, generator=g)


class TextStream:
    """A training stream whose batches carry a text context (as a text world's would)."""

    def __init__(self, inner, context):
        self.inner, self.context = inner, context

    def batch(self, n, frames=None):
        videos, _ = self.inner.batch(n, frames)
        return videos, SimpleNamespace(context=self.context[:n])

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


# ----------------------------------------------------------------------------- through the trainer
@pytest.mark.parametrize("strategy", ["teacher", "resampling", "parallel_resampling"])
def test_a_text_model_trains_two_steps_on_a_world_without_text(tmp_path, strategy):
    """TF then RF (self- or parallel resampling): no error, the empty-prompt warning once,
    finite losses, cross-attention weights that moved; generation uses the same stand-in."""
    from resforce.io.weights import load_model
    from resforce.training.checkpoint import latest_checkpoint, load_checkpoint
    from resforce.model.attention.policy import AttentionPolicy
    from resforce.model.dit import build_model
    from resforce.rollout import rollout
    from resforce.generation.generate import SampleOverrides, generate
    from resforce.text_context import empty_prompt
    from resforce.training.loop import train

    cfg = text_cfg(tmp_path / "r", f"stages.1.history.strategy={strategy}")
    with pytest.warns(UserWarning, match=r"empty-prompt stand-in, zeros of \(text.text_len=3, 8\)") as w:
        train(cfg, progress=False)
    assert sum("empty-prompt" in str(x.message) for x in w) == 1
    model_sd, _, state = load_checkpoint(latest_checkpoint(tmp_path / "r"))
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in model_sd.values())
    fresh = build_model(cfg.model).state_dict()
    assert not torch.equal(model_sd["blocks.0.attn2.to_k.weight"], fresh["blocks.0.attn2.to_k.weight"])
    g = generate(tmp_path / "r", SampleOverrides(chunks=2, steps=2), progress=False)
    model, _ = load_model(tmp_path / "r")
    s = dataclasses.replace(cfg.sample, chunks=2, steps=2, context=3)
    want = rollout(model, 1, 8, 8, s, text=empty_prompt(TEXT_DIM, TEXT_LEN, 1),
                   attention=AttentionPolicy(cfg.stages[-1].attention)).clamp(-1, 1)
    assert torch.equal(g.videos, want)


@pytest.mark.parametrize("strategy", ["teacher", "resampling"])
def test_the_data_context_reaches_the_history_and_the_loss(tmp_path, monkeypatch, randomize, strategy):
    """A stream whose batches carry a context: build_history gets exactly that tensor; another
    context changes the loss (teacher forcing: through the loss's own pass alone, the history
    being the clean clip) and the resampled history; the same context changes nothing."""
    import resforce.training.loop as train_mod
    from resforce.training.loop import Trainer

    seen = []
    real = train_mod.build_history

    def spy(*a, **k):
        out = real(*a, **k)
        seen.append((k["context"], out[0]))
        return out

    monkeypatch.setattr(train_mod, "build_history", spy)
    ctx_a, ctx_b = contexts(4)
    losses = {}
    for name, ctx in (("a", ctx_a), ("a_again", ctx_a), ("b", ctx_b)):
        cfg = text_cfg(tmp_path / name, "stages.0.steps=0", f"stages.1.history.strategy={strategy}")
        t = Trainer(cfg, progress=False)
        randomize(t.model)  # zero-init output layers would hide the context
        t.data = TextStream(t.data, ctx)
        losses[name] = t.train_step()["loss"]
        t.close()
    (ca, ha), (ca2, ha2), (cb, hb) = seen
    assert torch.equal(ca, ctx_a) and torch.equal(cb, ctx_b)
    assert torch.equal(ha, ha2) and losses["a"] == losses["a_again"]
    assert abs(losses["a"] - losses["b"]) > 1e-4 * abs(losses["a"])
    if strategy == "resampling":
        assert (ha - hb).abs().max() > 1e-4


# ----------------------------------------------------------------------------- the functions
@pytest.mark.parametrize("strategy", ["resampling", "parallel_resampling"])
def test_the_context_changes_the_resampled_history(randomize, strategy):
    from resforce.history import HistoryConfig, build_history

    model = text_model(randomize)
    clean = torch.rand(2, 3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ctx_a, ctx_b = contexts()
    cfg = HistoryConfig(strategy=strategy)

    def hist(ctx):
        return build_history(cfg, model, clean, torch.Generator().manual_seed(1), context=ctx)[0]

    assert torch.equal(hist(ctx_a), hist(ctx_a))
    assert (hist(ctx_a) - hist(ctx_b)).abs().max() > 1e-3


def test_the_context_reaches_every_cached_call_of_a_rollout(randomize):
    """The cached rollout with a context equals the cache-free reference with it (so the
    denoising calls and the cache writes all saw it), and another context changes it."""
    from resforce.rollout import SampleConfig, reference_rollout, rollout

    model = text_model(randomize)
    ctx_a, ctx_b = contexts()
    s = SampleConfig(chunks=3, steps=2, context=0)
    a = rollout(model, 2, 8, 8, s, text=ctx_a)
    assert torch.allclose(a, reference_rollout(model, 2, 8, 8, s, text=ctx_a), atol=1e-5)
    assert (a - rollout(model, 2, 8, 8, s, text=ctx_b)).abs().max() > 1e-3
    shared = rollout(model, 2, 8, 8, s, text=ctx_a[:1])  # one prompt for the whole batch
    assert torch.allclose(shared, rollout(model, 2, 8, 8, s, text=ctx_a[:1].expand(2, -1, -1)))
    with pytest.raises(ValueError, match=r"text_dim=8.*pass text embeddings"):
        rollout(model, 2, 8, 8, s)
    with pytest.raises(ValueError, match=r"text must be .*text_dim=8.*got shape \(2, 3, 5\)"):
        rollout(model, 2, 8, 8, s, text=torch.zeros(2, 3, 5))


def test_caption_dropout_swaps_in_the_empty_prompt():
    from resforce.text_context import TextConfig, training_text

    ctx, empty = contexts(64)
    info = SimpleNamespace(context=ctx, empty_context=empty[:1])
    g = torch.Generator().manual_seed(0)
    assert torch.equal(training_text(info, TEXT_DIM, TextConfig(caption_dropout=0.0), 64, "cpu", g), ctx)
    dropped = training_text(info, TEXT_DIM, TextConfig(caption_dropout=1.0), 64, "cpu", g)
    assert torch.equal(dropped, empty[:1].expand(64, -1, -1))
    half = training_text(info, TEXT_DIM, TextConfig(caption_dropout=0.5), 64, "cpu", g)
    kept = (half == ctx).flatten(1).all(1)
    assert torch.equal(half[~kept], empty[:1].expand(int((~kept).sum()), -1, -1))
    assert 16 < int(kept.sum()) < 48
    zeros = training_text(SimpleNamespace(context=ctx), TEXT_DIM, TextConfig(caption_dropout=1.0), 64, "cpu", g)
    assert not zeros.any()  # no empty_context given: the zero stand-in


def test_text_errors_name_the_fields():
    from resforce.config import ConfigError, load_config
    from resforce.text_context import TextConfig, training_text

    info = SimpleNamespace(context=torch.zeros(2, 3, 8))
    with pytest.raises(ValueError, match=r"model.text_dim=0.*set model.text_dim=8"):
        training_text(info, 0, TextConfig(), 2, "cpu")
    with pytest.raises(ValueError, match=r"info.context.*text_dim=4.*got shape \(2, 3, 8\)"):
        training_text(info, 4, TextConfig(), 2, "cpu")
    assert training_text(SimpleNamespace(), 0, TextConfig(), 2, "cpu") is None
    with pytest.raises(ConfigError, match="text.caption_dropout"):
        load_config(RECIPE, ["text.caption_dropout=1.5"])
    with pytest.raises(ConfigError, match="text.text_len"):
        load_config(RECIPE, ["text.text_len=0"])
